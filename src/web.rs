//! The browser API (wasm32 only), exported to JavaScript with wasm-bindgen.
//!
//! ```js
//! import init, { DeepML } from "./pkg/deepml.js";
//! await init();
//! const ml = await DeepML.create();           // WebGPU adapter and device
//! console.log(ml.adapter);                     // { name, backend, deviceType, limits, ... }
//! const x = ml.tensor(new Float32Array([...]), [1, 1, 64, 64]);  // stays on the device
//! const t = ml.tensor(mask, [1, 1, 64, 64]);
//! const r = await ml.compute("JaccardLoss", "{}", [x, t]);  // { loss: Float32Array, grads: [...] }
//! const o = ml.computeOnDevice("JaccardLoss", "{}", [x, t]); // { loss: GpuTensor, grads: [...] }
//! ml.axpy(x, -0.1, o.grads[0]);                // a training step, on the device
//! const v = await o.loss.read();               // Float32Array
//! o.free();                                    // releases the outputs' buffers
//! ```
//!
//! Every error is a JavaScript `Error` whose `kind` property is the `deepml-cases/1` error kind
//! (`invalid_input`, `invalid_config`, `not_implemented`, ...).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect};
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::cases::{self, Case, Evaluated, Expected, LossSpec, TensorData, Tolerance, Verdict};
use crate::config::check_labels;
use crate::context::{ContextOptions, LossContext};
use crate::error::Error;
use crate::losses::{self, Loss};
use crate::tensor::{DType, Tensor};

// ---------------------------------------------------------------------------------------------
// Errors.

/// A JavaScript `Error` with the message and a `kind` property.
fn js_error(kind: &str, msg: &str) -> JsValue {
    let e = js_sys::Error::new(msg);
    let _ = Reflect::set(&e, &"kind".into(), &kind.into());
    e.into()
}

fn to_js(e: Error) -> JsValue {
    js_error(e.kind(), &e.to_string())
}

type JsResult<T> = std::result::Result<T, JsValue>;

fn set(obj: &Object, key: &str, v: impl Into<JsValue>) {
    let _ = Reflect::set(obj, &key.into(), &v.into());
}

// ---------------------------------------------------------------------------------------------
// Tensors: a registry lets `compute` find the Rust tensor behind a JavaScript object without
// taking it over (wasm-bindgen would move a struct passed by value).

thread_local! {
    static REGISTRY: RefCell<HashMap<u32, Entry>> = RefCell::new(HashMap::new());
    static NEXT_ID: Cell<u32> = const { Cell::new(1) };
}

#[derive(Clone)]
struct Entry {
    tensor: Tensor,
    /// Integer labels keep a host copy so that they can be range-checked before a call.
    labels: Option<Rc<Vec<i64>>>,
}

/// A tensor on the GPU. Its buffer is released by `free()` (or when JavaScript collects it).
#[wasm_bindgen]
pub struct GpuTensor {
    id: u32,
    ctx: Rc<LossContext>,
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        REGISTRY.with(|r| r.borrow_mut().remove(&self.id));
    }
}

impl GpuTensor {
    fn register(ctx: &Rc<LossContext>, tensor: Tensor, labels: Option<Rc<Vec<i64>>>) -> GpuTensor {
        let id = NEXT_ID.with(|n| {
            let id = n.get();
            n.set(id.wrapping_add(1).max(1));
            id
        });
        REGISTRY.with(|r| r.borrow_mut().insert(id, Entry { tensor, labels }));
        GpuTensor {
            id,
            ctx: ctx.clone(),
        }
    }

    fn entry(&self) -> JsResult<Entry> {
        lookup(self.id)
    }
}

fn lookup(id: u32) -> JsResult<Entry> {
    REGISTRY
        .with(|r| r.borrow().get(&id).cloned())
        .ok_or_else(|| js_error("invalid_input", "this tensor has been freed"))
}

/// The tensors of a JavaScript array of `GpuTensor`s.
fn entries(tensors: &Array) -> JsResult<Vec<Entry>> {
    tensors
        .iter()
        .map(|v| {
            let id = Reflect::get(&v, &"id".into())
                .ok()
                .and_then(|i| i.as_f64())
                .ok_or_else(|| {
                    js_error("invalid_input", "the tensors must be GpuTensor objects")
                })?;
            lookup(id as u32)
        })
        .collect()
}

fn shape_of(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

#[wasm_bindgen]
impl GpuTensor {
    /// The registry id (what `compute` uses to find the tensor).
    #[wasm_bindgen(getter)]
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The shape, as an array of numbers.
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> JsResult<Vec<u32>> {
        Ok(self
            .entry()?
            .tensor
            .shape()
            .iter()
            .map(|&d| d as u32)
            .collect())
    }

    /// `"float32"`, `"int32"` or `"float16"`.
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> JsResult<String> {
        Ok(match self.entry()?.tensor.dtype() {
            DType::F32 => "float32",
            DType::I32 => "int32",
            DType::F16 => "float16",
        }
        .into())
    }

    /// The number of elements.
    #[wasm_bindgen(getter)]
    pub fn numel(&self) -> JsResult<u32> {
        Ok(self.entry()?.tensor.numel() as u32)
    }

    /// Reads the values back: `Promise<Float32Array>` (f32 tensors).
    pub fn read(&self) -> Promise {
        let ctx = self.ctx.clone();
        let e = self.entry();
        future_to_promise(async move {
            let v = ctx.read_async(&e?.tensor).await.map_err(to_js)?;
            Ok(Float32Array::from(&v[..]).into())
        })
    }

    /// Overwrites the values in place (same element count, f32 tensors).
    pub fn write(&self, data: &[f32]) -> JsResult<()> {
        let t = self.entry()?.tensor;
        if t.dtype() != DType::F32 || data.len() != t.numel() {
            return Err(js_error(
                "invalid_input",
                &format!(
                    "write needs {} float32 values, got {}",
                    t.numel(),
                    data.len()
                ),
            ));
        }
        self.ctx
            .queue()
            .write_buffer(t.buffer(), t.offset(), bytemuck::cast_slice(data));
        self.ctx.check().map_err(to_js)
    }
}

// ---------------------------------------------------------------------------------------------
// The context.

/// A deepml context on the browser's WebGPU device.
#[wasm_bindgen]
pub struct DeepML {
    ctx: Rc<LossContext>,
}

/// A loss by its class name and a JSON object of constructor arguments, as in a case.
fn spec_of(loss: &str, config_json: &str) -> JsResult<LossSpec> {
    let config: Map<String, Value> = if config_json.trim().is_empty() {
        Map::new()
    } else {
        serde_json::from_str(config_json).map_err(|e| {
            js_error(
                "invalid_config",
                &format!("the config is not a JSON object: {e}"),
            )
        })?
    };
    let case = Case {
        name: "js".into(),
        loss: loss.into(),
        config,
        inputs: BTreeMap::new(),
        grad_wrt: Vec::new(),
        expected: Expected::Error {
            kind: String::new(),
        },
        tolerance: Tolerance {
            rtol: 0.0,
            atol: 0.0,
        },
    };
    cases::loss_spec(&case).map_err(to_js)
}

fn gpu_loss_of(spec: &LossSpec, loss: &str) -> JsResult<Box<dyn Loss>> {
    losses::gpu_loss(spec).ok_or_else(|| {
        js_error(
            "not_implemented",
            &format!("{loss} is not implemented on the GPU in this build"),
        )
    })
}

/// Host-side range checks of integer labels that have a host copy (CrossEntropyLoss,
/// AngularPenaltySMLoss); on the device they cannot be checked before the call.
fn check_entry_labels(spec: &LossSpec, inputs: &[Entry]) -> crate::Result<()> {
    match spec {
        LossSpec::CrossEntropy(c) if inputs.len() == 2 => {
            let layout = c.check_shapes(inputs[0].tensor.shape(), inputs[1].tensor.shape())?;
            if let Some(l) = &inputs[1].labels {
                check_labels("CrossEntropyLoss", l, layout.channels, Some(c.ignore_index))?;
            }
            Ok(())
        }
        LossSpec::Angular(c) if inputs.len() == 3 => {
            c.validate()?;
            if let Some(l) = &inputs[1].labels {
                check_labels("AngularPenaltySMLoss", l, c.out_features, None)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

#[wasm_bindgen]
impl DeepML {
    /// A context on the browser's WebGPU adapter; rejects with a `no_adapter` error where there
    /// is none.
    pub async fn create() -> JsResult<DeepML> {
        console_error_panic_hook::set_once();
        let ctx = LossContext::new_async(ContextOptions::default())
            .await
            .map_err(to_js)?;
        Ok(DeepML { ctx: Rc::new(ctx) })
    }

    /// The adapter: `{ name, backend, deviceType, driver, driverInfo, vendor, device, subgroups,
    /// shaderF16, maxStorageBufferBindingSize, maxBufferSize, maxComputeWorkgroupsPerDimension,
    /// features: [...] }`.
    #[wasm_bindgen(getter)]
    pub fn adapter(&self) -> Object {
        let r = self.ctx.adapter();
        let o = Object::new();
        set(&o, "name", r.name.as_str());
        set(&o, "backend", format!("{:?}", r.backend));
        set(&o, "deviceType", format!("{:?}", r.device_type));
        set(&o, "driver", r.driver.as_str());
        set(&o, "driverInfo", r.driver_info.as_str());
        set(&o, "vendor", r.vendor);
        set(&o, "device", r.device);
        set(&o, "summary", r.summary());
        set(&o, "subgroups", self.ctx.uses_subgroups());
        set(&o, "shaderF16", self.ctx.has_f16());
        set(
            &o,
            "maxStorageBufferBindingSize",
            r.limits.max_storage_buffer_binding_size as f64,
        );
        set(&o, "maxBufferSize", r.limits.max_buffer_size as f64);
        set(
            &o,
            "maxComputeWorkgroupsPerDimension",
            r.limits.max_compute_workgroups_per_dimension,
        );
        let features = Array::new();
        for (name, _) in r.features.iter_names() {
            features.push(&name.into());
        }
        set(&o, "features", features);
        o
    }

    /// An f32 tensor of `shape` on the device, from a Float32Array (or array of numbers).
    pub fn tensor(&self, data: &[f32], shape: Vec<u32>) -> JsResult<GpuTensor> {
        let t = self.ctx.upload(data, &shape_of(&shape)).map_err(to_js)?;
        Ok(GpuTensor::register(&self.ctx, t, None))
    }

    /// An i32 tensor of class labels from an Int32Array; a host copy is kept for range checks.
    #[wasm_bindgen(js_name = tensorInt)]
    pub fn tensor_int(&self, data: &[i32], shape: Vec<u32>) -> JsResult<GpuTensor> {
        let t = self
            .ctx
            .upload_labels(data, &shape_of(&shape))
            .map_err(to_js)?;
        let host = data.iter().map(|&v| v as i64).collect();
        Ok(GpuTensor::register(&self.ctx, t, Some(Rc::new(host))))
    }

    /// A zero-filled f32 tensor of `shape`.
    pub fn zeros(&self, shape: Vec<u32>) -> JsResult<GpuTensor> {
        let shape = shape_of(&shape);
        let n = crate::tensor::checked_numel(&shape).map_err(to_js)?;
        self.tensor(&vec![0.0; n], shape.iter().map(|&d| d as u32).collect())
    }

    /// The input names of a loss, in the order `compute` takes them.
    #[wasm_bindgen(js_name = inputNames)]
    pub fn input_names(&self, loss: &str, config_json: &str) -> JsResult<Vec<String>> {
        let l = gpu_loss_of(&spec_of(loss, config_json)?, loss)?;
        Ok(l.input_names().iter().map(|s| s.to_string()).collect())
    }

    /// Whether a loss (by class name) runs on the GPU in this build.
    #[wasm_bindgen(js_name = isImplemented)]
    pub fn is_implemented(&self, loss: &str, config_json: &str) -> bool {
        spec_of(loss, config_json)
            .ok()
            .and_then(|s| losses::gpu_loss(&s))
            .is_some()
    }

    /// Computes a loss and its gradients and keeps them on the device:
    /// `{ loss: GpuTensor, grads: [GpuTensor, ...], gradNames: [...], free() }`.
    #[wasm_bindgen(js_name = computeOnDevice)]
    pub fn compute_on_device(
        &self,
        loss: &str,
        config_json: &str,
        tensors: &Array,
    ) -> JsResult<Object> {
        let spec = spec_of(loss, config_json)?;
        let l = gpu_loss_of(&spec, loss)?;
        let inputs = entries(tensors)?;
        check_entry_labels(&spec, &inputs).map_err(to_js)?;
        let refs: Vec<&Tensor> = inputs.iter().map(|e| &e.tensor).collect();
        let out = l.compute(&self.ctx, &refs).map_err(to_js)?;
        let o = Object::new();
        let loss_t = GpuTensor::register(&self.ctx, out.loss.clone(), None);
        let grads = Array::new();
        for g in &out.grads {
            grads.push(&GpuTensor::register(&self.ctx, g.clone(), None).into());
        }
        let names: Array = l.grad_names().iter().map(|n| JsValue::from(*n)).collect();
        set(&o, "loss", loss_t);
        set(&o, "grads", grads.clone());
        set(&o, "gradNames", names);
        // `free()` releases the loss and every gradient.
        let free = js_sys::Function::new_with_args(
            "",
            "this.loss.free(); for (const g of this.grads) g.free();",
        );
        set(&o, "free", free);
        Ok(o)
    }

    /// Computes a loss and its gradients and reads them back:
    /// `Promise<{ loss: Float32Array, grads: [Float32Array, ...], gradNames: [...] }>`.
    pub fn compute(&self, loss: &str, config_json: &str, tensors: &Array) -> Promise {
        let ctx = self.ctx.clone();
        let spec = spec_of(loss, config_json);
        let inputs = entries(tensors);
        let loss = loss.to_string();
        future_to_promise(async move {
            let spec = spec?;
            let l = gpu_loss_of(&spec, &loss)?;
            let inputs = inputs?;
            check_entry_labels(&spec, &inputs).map_err(to_js)?;
            let refs: Vec<&Tensor> = inputs.iter().map(|e| &e.tensor).collect();
            let out = l.compute(&ctx, &refs).map_err(to_js)?;
            let o = Object::new();
            let v = ctx.read_async(&out.loss).await.map_err(to_js)?;
            set(&o, "loss", Float32Array::from(&v[..]));
            let grads = Array::new();
            for g in &out.grads {
                let v = ctx.read_async(g).await.map_err(to_js)?;
                grads.push(&Float32Array::from(&v[..]).into());
            }
            let names: Array = l.grad_names().iter().map(|n| JsValue::from(*n)).collect();
            set(&o, "grads", grads);
            set(&o, "gradNames", names);
            Ok(o.into())
        })
    }

    /// `x += a * y` on the device (a gradient step: `axpy(w, -lr, grad)`).
    pub fn axpy(&self, x: &GpuTensor, a: f32, y: &GpuTensor) -> JsResult<()> {
        let (x, y) = (x.entry()?, y.entry()?);
        self.ctx.axpy(&x.tensor, a, &y.tensor).map_err(to_js)
    }

    /// Runs a `deepml-cases/1` file (its JSON text) on the GPU, case by case:
    /// `Promise<[{ name, loss, status: "pass" | "fail" | "skip", worst, detail }]>`.
    #[wasm_bindgen(js_name = runCases)]
    pub fn run_cases(&self, cases_json: String) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let file = cases::parse(&cases_json).map_err(to_js)?;
            let out = Array::new();
            for case in &file.cases {
                let got = eval_case(&ctx, case).await;
                let o = Object::new();
                set(&o, "name", case.name.as_str());
                set(&o, "loss", case.loss.as_str());
                match cases::check_case(case, got) {
                    Verdict::Pass { worst } => {
                        set(&o, "status", "pass");
                        set(&o, "worst", worst);
                    }
                    Verdict::Fail { worst, detail } => {
                        set(&o, "status", "fail");
                        set(&o, "worst", worst);
                        set(&o, "detail", detail);
                    }
                    Verdict::Skip { reason } => {
                        set(&o, "status", "skip");
                        set(&o, "detail", reason);
                    }
                }
                out.push(&o.into());
            }
            Ok(out.into())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The asynchronous conformance evaluator (the browser's counterpart of conformance.rs).

/// A case on the GPU; `None` where its loss is not implemented on the GPU in this build.
async fn eval_case(ctx: &LossContext, case: &Case) -> Option<crate::Result<Evaluated>> {
    let spec = match cases::loss_spec(case) {
        Ok(s) => s,
        Err(e) => return Some(Err(e)),
    };
    let loss = losses::gpu_loss(&spec)?;
    Some(run_case(ctx, case, &spec, loss.as_ref()).await)
}

fn check_case_labels(spec: &LossSpec, case: &Case) -> crate::Result<()> {
    match spec {
        LossSpec::CrossEntropy(c) => {
            let input = case.input("input")?;
            let target = case.input("target")?;
            let layout = c.check_shapes(&input.shape, &target.shape)?;
            check_labels(
                "CrossEntropyLoss",
                &target.to_i64("target")?,
                layout.channels,
                Some(c.ignore_index),
            )
        }
        LossSpec::Angular(c) => {
            c.validate()?;
            check_labels(
                "AngularPenaltySMLoss",
                &case.input("labels")?.to_i64("labels")?,
                c.out_features,
                None,
            )
        }
        _ => Ok(()),
    }
}

async fn run_case(
    ctx: &LossContext,
    case: &Case,
    spec: &LossSpec,
    loss: &dyn Loss,
) -> crate::Result<Evaluated> {
    check_case_labels(spec, case)?;
    let mut inputs = Vec::new();
    for name in loss.input_names() {
        let t = case.input(name)?;
        inputs.push(match t.dtype {
            cases::DType::I64 => ctx.upload_labels_i64(&t.to_i64(name)?, &t.shape)?,
            cases::DType::F32 => ctx.upload(&t.to_f32(), &t.shape)?,
        });
    }
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let out = loss.compute(ctx, &refs)?;
    let mut grads = BTreeMap::new();
    for (name, g) in loss.grad_names().iter().zip(&out.grads) {
        grads.insert(name.to_string(), download(ctx, g).await?);
    }
    Ok(Evaluated {
        loss: download(ctx, &out.loss).await?,
        grads,
    })
}

async fn download(ctx: &LossContext, t: &Tensor) -> crate::Result<TensorData> {
    let v = ctx.read_async(t).await?;
    Ok(TensorData {
        shape: t.shape().to_vec(),
        dtype: cases::DType::F32,
        data: v.iter().map(|&x| x as f64).collect(),
    })
}
