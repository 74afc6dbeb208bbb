//! The browser bindings (wasm32 with the `web` feature), exported with wasm-bindgen.
//!
//! These are the low-level classes (`RawContext`, `RawTensor`, `RawLoss`, `RawOutput`); the
//! package's typed API (`web/js/deepml.js`, `web/js/deepml.d.ts`) wraps them: camelCase
//! options, `Loss` objects reused across calls, `dispose()`, and sharing the `GPUDevice`.
//!
//! Every error is a JavaScript `Error` whose `kind` property is the `deepml-cases/1` error kind
//! (`invalid_input`, `invalid_config`, `not_implemented`, ...).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use js_sys::{Array, Float32Array, Object, Promise, Reflect};
use serde_json::{Map, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use crate::bench;
use crate::cases::{self, Case, Evaluated, Expected, LossSpec, TensorData, Tolerance, Verdict};
use crate::config::check_labels;
use crate::context::{ContextOptions, LossContext};
use crate::error::Error;
use crate::losses::{self, GradOpts, Loss};
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
// Tensors. No registry and no id: a function that takes a tensor takes `&RawTensor`, which the
// generated glue checks with `instanceof` (any other object is refused before Rust runs).

/// A tensor on the GPU (the core of the package's `Tensor` class). `free()` releases this
/// handle; the buffer goes back to the pool when no handle and no output holds it.
#[wasm_bindgen]
pub struct RawTensor {
    tensor: Tensor,
    /// Integer labels keep a host copy so that they can be range-checked before a call.
    labels: Option<Rc<Vec<i64>>>,
    ctx: Rc<LossContext>,
}

impl std::fmt::Debug for RawTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawTensor")
            .field("tensor", &self.tensor)
            .field("labels", &self.labels.as_ref().map(|l| l.len()))
            .finish_non_exhaustive()
    }
}

impl RawTensor {
    fn new(ctx: &Rc<LossContext>, tensor: Tensor, labels: Option<Rc<Vec<i64>>>) -> RawTensor {
        RawTensor {
            tensor,
            labels,
            ctx: ctx.clone(),
        }
    }
}

fn shape_of(shape: &[u32]) -> Vec<usize> {
    shape.iter().map(|&d| d as usize).collect()
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "float32",
        DType::I32 => "int32",
        DType::F16 => "float16",
    }
}

fn dtype_of(name: &str) -> JsResult<DType> {
    match name {
        "float32" => Ok(DType::F32),
        "int32" => Ok(DType::I32),
        "float16" => Ok(DType::F16),
        _ => Err(js_error(
            "invalid_input",
            &format!("dtype must be \"float32\", \"int32\" or \"float16\", not {name:?}"),
        )),
    }
}

#[wasm_bindgen]
impl RawTensor {
    /// Another handle on the same tensor (the same device memory).
    pub fn share(&self) -> RawTensor {
        RawTensor {
            tensor: self.tensor.clone(),
            labels: self.labels.clone(),
            ctx: self.ctx.clone(),
        }
    }

    /// The shape, as an array of numbers.
    #[wasm_bindgen(getter)]
    pub fn shape(&self) -> Vec<u32> {
        self.tensor.shape().iter().map(|&d| d as u32).collect()
    }

    /// `"float32"`, `"int32"` or `"float16"`.
    #[wasm_bindgen(getter)]
    pub fn dtype(&self) -> String {
        dtype_name(self.tensor.dtype()).into()
    }

    /// The number of elements.
    #[wasm_bindgen(getter)]
    pub fn numel(&self) -> f64 {
        self.tensor.numel() as f64
    }

    /// The `GPUBuffer` that holds the values (on the context's `GPUDevice`).
    #[wasm_bindgen(getter)]
    pub fn buffer(&self) -> JsValue {
        self.tensor
            .buffer()
            .as_webgpu()
            .map(|b| JsValue::from(b.clone()))
            .unwrap_or(JsValue::NULL)
    }

    /// Where the values start in `buffer`, in bytes.
    #[wasm_bindgen(getter, js_name = byteOffset)]
    pub fn byte_offset(&self) -> f64 {
        self.tensor.offset() as f64
    }

    /// The bytes of the values (`numel` times the element size).
    #[wasm_bindgen(getter, js_name = byteLength)]
    pub fn byte_length(&self) -> f64 {
        self.tensor.byte_len() as f64
    }

    /// Reads the values back: `Float32Array` (float32, and float16 widened), `Int32Array`
    /// (int32).
    pub fn read(&self) -> Promise {
        let ctx = self.ctx.clone();
        let t = self.tensor.clone();
        future_to_promise(async move {
            let b = ctx.read_bytes_async(&t).await.map_err(to_js)?;
            Ok(match t.dtype() {
                DType::F32 => {
                    let v: Vec<f32> = bytemuck::pod_collect_to_vec(&b);
                    Float32Array::from(&v[..]).into()
                }
                DType::I32 => {
                    let v: Vec<i32> = bytemuck::pod_collect_to_vec(&b);
                    js_sys::Int32Array::from(&v[..]).into()
                }
                DType::F16 => {
                    let h: Vec<u16> = bytemuck::pod_collect_to_vec(&b);
                    let v: Vec<f32> = h
                        .iter()
                        .map(|&x| half::f16::from_bits(x).to_f32())
                        .collect();
                    Float32Array::from(&v[..]).into()
                }
            })
        })
    }

    /// Overwrites the values in place (same element count; float32 or float16 tensors).
    pub fn write(&self, data: &[f32]) -> JsResult<()> {
        let t = &self.tensor;
        if data.len() != t.numel() || t.dtype() == DType::I32 {
            return Err(js_error(
                "invalid_input",
                &format!(
                    "write needs {} numbers for a {} tensor, got {}",
                    t.numel(),
                    dtype_name(t.dtype()),
                    data.len()
                ),
            ));
        }
        let bytes: Vec<u8> = match t.dtype() {
            DType::F16 => data
                .iter()
                .flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes())
                .collect(),
            _ => bytemuck::cast_slice(data).to_vec(),
        };
        // write_buffer needs a multiple of 4 bytes: an odd f16 count keeps the padding half.
        let mut bytes = bytes;
        while !bytes.len().is_multiple_of(4) {
            bytes.push(0);
        }
        self.ctx
            .queue()
            .write_buffer(t.buffer(), t.offset(), &bytes);
        self.ctx.check().map_err(to_js)
    }
}

// ---------------------------------------------------------------------------------------------
// Losses.

/// A loss built once from its name and config, computed many times (the core of the
/// package's `Loss` class). Inputs and gradient targets are staged with `stage` and
/// `stageInto`, then consumed by `run` or `runRead`.
#[wasm_bindgen]
pub struct RawLoss {
    ctx: Rc<LossContext>,
    spec: LossSpec,
    loss: Box<dyn Loss>,
    staged: RefCell<Vec<Option<RawTensor>>>,
    into: RefCell<Vec<Option<Tensor>>>,
}

impl std::fmt::Debug for RawLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLoss")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

/// The outputs of a computation kept on the device.
#[wasm_bindgen]
pub struct RawOutput {
    ctx: Rc<LossContext>,
    loss: Tensor,
    grads: Vec<Tensor>,
}

impl std::fmt::Debug for RawOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grads: Vec<&[usize]> = self.grads.iter().map(Tensor::shape).collect();
        f.debug_struct("RawOutput")
            .field("loss", &self.loss)
            .field("grads", &grads)
            .finish_non_exhaustive()
    }
}

#[wasm_bindgen]
impl RawOutput {
    /// The loss tensor.
    pub fn loss(&self) -> RawTensor {
        RawTensor::new(&self.ctx, self.loss.clone(), None)
    }

    /// The number of gradients.
    #[wasm_bindgen(getter, js_name = gradCount)]
    pub fn grad_count(&self) -> u32 {
        self.grads.len() as u32
    }

    /// Gradient `i`.
    pub fn grad(&self, i: u32) -> JsResult<RawTensor> {
        let g = self
            .grads
            .get(i as usize)
            .ok_or_else(|| js_error("invalid_input", "no such gradient"))?;
        Ok(RawTensor::new(&self.ctx, g.clone(), None))
    }
}

impl RawLoss {
    /// Takes the staged inputs and gradient targets, checks them, and records the computation.
    fn take(&self, scale: f32, accumulate: bool) -> JsResult<(Vec<RawTensor>, GradOpts)> {
        let staged = std::mem::take(&mut *self.staged.borrow_mut());
        let into = std::mem::take(&mut *self.into.borrow_mut());
        let names = self.loss.input_names();
        if staged.len() != names.len() || staged.iter().any(Option::is_none) {
            return Err(js_error(
                "invalid_input",
                &format!(
                    "{} takes {} tensors ({}), got {}",
                    self.loss.name(),
                    names.len(),
                    names.join(", "),
                    staged.iter().flatten().count()
                ),
            ));
        }
        let inputs: Vec<RawTensor> = staged.into_iter().flatten().collect();
        check_labels_of(&self.spec, &inputs).map_err(to_js)?;
        Ok((
            inputs,
            GradOpts {
                scale,
                into,
                accumulate,
            },
        ))
    }
}

#[wasm_bindgen]
impl RawLoss {
    /// The class name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.loss.name().into()
    }

    /// The input names, in the order `compute` takes them.
    #[wasm_bindgen(getter, js_name = inputNames)]
    pub fn input_names(&self) -> Vec<String> {
        self.loss
            .input_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The gradient names, in the order of the outputs' gradients.
    #[wasm_bindgen(getter, js_name = gradNames)]
    pub fn grad_names(&self) -> Vec<String> {
        self.loss
            .grad_names()
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Stages input `i` for the next `run`.
    pub fn stage(&self, i: u32, t: &RawTensor) {
        let mut s = self.staged.borrow_mut();
        let i = i as usize;
        if s.len() <= i {
            s.resize_with(i + 1, || None);
        }
        s[i] = Some(t.share());
    }

    /// Stages the tensor gradient `i` is written into (`GradOpts.into`) for the next `run`.
    #[wasm_bindgen(js_name = stageInto)]
    pub fn stage_into(&self, i: u32, t: &RawTensor) {
        let mut s = self.into.borrow_mut();
        let i = i as usize;
        if s.len() <= i {
            s.resize_with(i + 1, || None);
        }
        s[i] = Some(t.tensor.clone());
    }

    /// Forgets whatever is staged.
    pub fn unstage(&self) {
        self.staged.borrow_mut().clear();
        self.into.borrow_mut().clear();
    }

    /// Computes the staged inputs' loss and gradients on the device.
    pub fn run(&self, scale: f32, accumulate: bool) -> JsResult<RawOutput> {
        let (inputs, opts) = self.take(scale, accumulate)?;
        let refs: Vec<&Tensor> = inputs.iter().map(|e| &e.tensor).collect();
        let out = self
            .loss
            .compute_with(&self.ctx, &refs, &opts)
            .map_err(to_js)?;
        Ok(RawOutput {
            ctx: self.ctx.clone(),
            loss: out.loss.clone(),
            grads: out.grads.clone(),
        })
    }
}

/// Host-side range checks of integer labels that have a host copy (the losses whose
/// `LossSpec::label_range` names one); on the device they cannot be checked before the call.
fn check_labels_of(spec: &LossSpec, inputs: &[RawTensor]) -> crate::Result<()> {
    let shapes: Vec<&[usize]> = inputs.iter().map(|t| t.tensor.shape()).collect();
    if let Some((i, classes, ignore)) = spec.label_range(&shapes)? {
        if let Some(l) = inputs.get(i).and_then(|t| t.labels.as_ref()) {
            check_labels(spec.name(), l, classes, ignore)?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The context.

/// A deepml context on the browser's WebGPU device (the core of the package's `DeepML`).
#[wasm_bindgen]
#[derive(Debug)]
pub struct RawContext {
    ctx: Rc<LossContext>,
}

/// A loss by its class name and a JSON object of constructor arguments (snake_case keys), as
/// in a case.
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
    cases::loss_spec(&case).map_err(|e| match e {
        // An unknown loss name is the caller's config, not a cases-file error.
        Error::Cases(m) => js_error("invalid_config", &m.replace("case \"js\": ", "")),
        e => to_js(e),
    })
}

fn gpu_loss_of(spec: &LossSpec, loss: &str) -> JsResult<Box<dyn Loss>> {
    losses::gpu_loss(spec).ok_or_else(|| {
        js_error(
            "not_implemented",
            &format!("{loss} is not implemented on the GPU in this build"),
        )
    })
}

#[wasm_bindgen]
impl RawContext {
    /// A context on the browser's WebGPU adapter; rejects with a `no_adapter` error where there
    /// is none.
    pub async fn create() -> JsResult<RawContext> {
        console_error_panic_hook::set_once();
        let ctx = LossContext::new_async(ContextOptions::default())
            .await
            .map_err(to_js)?;
        Ok(RawContext { ctx: Rc::new(ctx) })
    }

    /// The `GPUDevice` deepml computes on.
    #[wasm_bindgen(getter)]
    pub fn device(&self) -> JsValue {
        self.ctx
            .device()
            .as_webgpu()
            .map(|d| JsValue::from(d.clone()))
            .unwrap_or(JsValue::NULL)
    }

    /// The adapter: `{ name, backend, deviceType, driver, driverInfo, vendor, device, subgroups,
    /// shaderF16, timestampQuery, maxStorageBufferBindingSize, maxBufferSize,
    /// maxComputeWorkgroupsPerDimension, minStorageBufferOffsetAlignment, features: [...] }`.
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
            "timestampQuery",
            self.ctx
                .device()
                .features()
                .contains(wgpu::Features::TIMESTAMP_QUERY),
        );
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
        set(
            &o,
            "minStorageBufferOffsetAlignment",
            r.limits.min_storage_buffer_offset_alignment,
        );
        let features = Array::new();
        for (name, _) in r.features.iter_names() {
            features.push(&name.into());
        }
        set(&o, "features", features);
        o
    }

    /// An f32 tensor of `shape` from a Float32Array (or array of numbers).
    pub fn upload(&self, data: &[f32], shape: Vec<u32>) -> JsResult<RawTensor> {
        let t = self.ctx.upload(data, &shape_of(&shape)).map_err(to_js)?;
        Ok(RawTensor::new(&self.ctx, t, None))
    }

    /// An f16 tensor of `shape` from numbers (rounded to nearest even); needs `shader-f16`.
    #[wasm_bindgen(js_name = uploadF16)]
    pub fn upload_f16(&self, data: &[f32], shape: Vec<u32>) -> JsResult<RawTensor> {
        if !self.ctx.has_f16() {
            return Err(js_error(
                "not_implemented",
                "float16 tensors need the adapter's shader-f16 feature, which this one lacks",
            ));
        }
        let t = self
            .ctx
            .upload_f16(data, &shape_of(&shape))
            .map_err(to_js)?;
        Ok(RawTensor::new(&self.ctx, t, None))
    }

    /// An i32 tensor of class labels from an Int32Array; a host copy is kept for range checks.
    #[wasm_bindgen(js_name = uploadInt)]
    pub fn upload_int(&self, data: &[i32], shape: Vec<u32>) -> JsResult<RawTensor> {
        let t = self
            .ctx
            .upload_labels(data, &shape_of(&shape))
            .map_err(to_js)?;
        let host = data.iter().map(|&v| v as i64).collect();
        Ok(RawTensor::new(&self.ctx, t, Some(Rc::new(host))))
    }

    /// A zero-filled tensor of `shape` and `dtype`.
    pub fn zeros(&self, shape: Vec<u32>, dtype: &str) -> JsResult<RawTensor> {
        let dtype = dtype_of(dtype)?;
        if dtype == DType::F16 && !self.ctx.has_f16() {
            return Err(js_error(
                "not_implemented",
                "float16 tensors need the adapter's shader-f16 feature, which this one lacks",
            ));
        }
        let t = self.ctx.empty(&shape_of(&shape), dtype).map_err(to_js)?;
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        if t.padded_len() > 0 {
            enc.clear_buffer(t.buffer(), t.offset(), Some(t.padded_len()));
        }
        self.ctx.queue().submit(Some(enc.finish()));
        let labels = (dtype == DType::I32).then(|| Rc::new(vec![0i64; t.numel()]));
        Ok(RawTensor::new(&self.ctx, t, labels))
    }

    /// A copy of `t` (on the device).
    pub fn copy(&self, t: &RawTensor) -> JsResult<RawTensor> {
        let c = self.ctx.copy(&t.tensor).map_err(to_js)?;
        Ok(RawTensor::new(&self.ctx, c, t.labels.clone()))
    }

    /// A loss by its class name and a JSON object of its constructor arguments (snake_case).
    pub fn loss(&self, name: &str, config_json: &str) -> JsResult<RawLoss> {
        let spec = spec_of(name, config_json)?;
        let loss = gpu_loss_of(&spec, name)?;
        Ok(RawLoss {
            ctx: self.ctx.clone(),
            spec,
            loss,
            staged: RefCell::new(Vec::new()),
            into: RefCell::new(Vec::new()),
        })
    }

    /// Whether a loss (by class name) runs on the GPU in this build.
    #[wasm_bindgen(js_name = isImplemented)]
    pub fn is_implemented(&self, loss: &str, config_json: &str) -> bool {
        spec_of(loss, config_json)
            .ok()
            .and_then(|s| losses::gpu_loss(&s))
            .is_some()
    }

    /// `x += a * y` on the device (a gradient step: `axpy(w, -lr, grad)`).
    pub fn axpy(&self, x: &RawTensor, a: f32, y: &RawTensor) -> JsResult<()> {
        self.ctx.axpy(&x.tensor, a, &y.tensor).map_err(to_js)
    }

    /// Waits for the work submitted so far, and reports a device error captured since.
    pub fn flush(&self) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            wait_done(&ctx).await?;
            ctx.check().map_err(to_js)?;
            Ok(JsValue::UNDEFINED)
        })
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

/// Resolves when the queue has finished the work submitted so far.
async fn wait_done(ctx: &LossContext) -> JsResult<()> {
    let (tx, rx) = futures_channel::oneshot::channel();
    ctx.queue().on_submitted_work_done(move || {
        let _ = tx.send(());
    });
    rx.await
        .map_err(|_| js_error("device_lost", "the queue's work-done callback was dropped"))
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

async fn run_case(
    ctx: &LossContext,
    case: &Case,
    spec: &LossSpec,
    loss: &dyn Loss,
) -> crate::Result<Evaluated> {
    spec.check_case_labels(case)?;
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

// ---------------------------------------------------------------------------------------------
// The benchmark on the browser's adapter (`deepml bench` in src/bench/, made asynchronous):
// the same losses, inputs, copy roofline and per-operation baselines, timed with timestamp
// queries where the device has `timestamp-query` (written by empty compute passes around the
// recorded work: WebGPU has no timestamps between passes), wall time otherwise.

/// `performance.now()` in milliseconds.
fn now_ms() -> f64 {
    let perf = Reflect::get(&js_sys::global(), &"performance".into()).unwrap_or(JsValue::NULL);
    Reflect::get(&perf, &"now".into())
        .ok()
        .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
        .and_then(|f| f.call0(&perf).ok())
        .and_then(|v| v.as_f64())
        .unwrap_or_else(js_sys::Date::now)
}

/// Lets the page draw between measurements.
async fn yield_to_page() {
    let p = Promise::new(&mut |ok, _| {
        let _ = js_sys::global()
            .dyn_into::<Object>()
            .ok()
            .and_then(|g| Reflect::get(&g, &"setTimeout".into()).ok())
            .and_then(|f| f.dyn_into::<js_sys::Function>().ok())
            .map(|f| f.call2(&JsValue::NULL, &ok, &0.into()));
    });
    let _ = wasm_bindgen_futures::JsFuture::from(p).await;
}

struct WebTimer {
    query: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer, f64)>,
}

impl WebTimer {
    /// Timestamp queries where the device has them (unless `wall`), wall time otherwise.
    fn new(ctx: &LossContext, wall: bool) -> WebTimer {
        let device = ctx.device();
        if wall || !device.features().contains(wgpu::Features::TIMESTAMP_QUERY) {
            return WebTimer { query: None };
        }
        let qs = device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("deepml bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let period = ctx.queue().get_timestamp_period() as f64;
        WebTimer {
            query: Some((qs, resolve, read, period)),
        }
    }

    fn kind(&self) -> &'static str {
        if self.query.is_some() {
            "timestamp"
        } else {
            "wall"
        }
    }

    /// Milliseconds of the work `record` puts in one encoder.
    async fn once<K>(
        &self,
        ctx: &LossContext,
        record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> crate::Result<K>,
    ) -> crate::Result<f64> {
        let device = ctx.device();
        let mut enc = device.create_command_encoder(&Default::default());
        match &self.query {
            Some((qs, resolve, read, period)) => {
                let mark =
                    |enc: &mut wgpu::CommandEncoder, begin: Option<u32>, end: Option<u32>| {
                        drop(enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                            label: Some("deepml bench timestamp"),
                            timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                                query_set: qs,
                                beginning_of_pass_write_index: begin,
                                end_of_pass_write_index: end,
                            }),
                        }));
                    };
                mark(&mut enc, Some(0), None);
                let keep = record(&mut enc)?;
                mark(&mut enc, None, Some(1));
                enc.resolve_query_set(qs, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
                ctx.queue().submit(Some(enc.finish()));
                let (tx, rx) = futures_channel::oneshot::channel();
                read.map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = tx.send(r);
                });
                let mapped = rx.await;
                drop(keep);
                let mapped = mapped
                    .map_err(|_| Error::DeviceLost("timestamp read-back cancelled".into()))?;
                bench::timestamps_ms(mapped, read, *period)
            }
            None => {
                wait_done(ctx).await.map_err(js_message)?;
                let t0 = now_ms();
                let keep = record(&mut enc)?;
                ctx.queue().submit(Some(enc.finish()));
                wait_done(ctx).await.map_err(js_message)?;
                drop(keep);
                Ok(now_ms() - t0)
            }
        }
    }

    async fn median<K>(
        &self,
        ctx: &LossContext,
        opts: &bench::BenchOptions,
        mut record: impl FnMut(&mut wgpu::CommandEncoder) -> crate::Result<K>,
    ) -> crate::Result<f64> {
        let start = now_ms();
        let mut done = 0;
        while done < opts.warmup
            || (now_ms() - start < bench::WARMUP_SECONDS * 1e3 && done < bench::MAX_WARMUP_RUNS)
        {
            self.once(ctx, &mut record).await?;
            done += 1;
        }
        let mut t = Vec::new();
        for _ in 0..opts.runs.max(1) {
            t.push(self.once(ctx, &mut record).await?);
        }
        ctx.check()?;
        t.sort_by(|a, b| a.total_cmp(b));
        Ok(t[t.len() / 2])
    }
}

fn js_message(e: JsValue) -> Error {
    Error::DeviceLost(
        e.dyn_ref::<js_sys::Error>()
            .map(|e| String::from(e.message()))
            .unwrap_or_else(|| format!("{e:?}")),
    )
}

/// GB/s (read plus write) of the copy kernel with `lanes` floats per element.
async fn copy_gbps(
    ctx: &LossContext,
    roof: &bench::Roofline,
    timer: &WebTimer,
    opts: &bench::BenchOptions,
    lanes: u64,
) -> crate::Result<f64> {
    let ms = timer
        .median(ctx, opts, |enc| roof.record(ctx, enc, lanes))
        .await?;
    Ok(2.0 * 4.0 * roof.n as f64 / (ms * 1e6))
}

async fn web_bench(
    ctx: &LossContext,
    opts: &bench::BenchOptions,
    wall: bool,
    progress: &dyn Fn(&str),
) -> crate::Result<bench::BenchReport> {
    let timer = WebTimer::new(ctx, wall);
    progress(&format!(
        "timer: {}; workgroup reductions: {}; copy kernel over {} elements",
        timer.kind(),
        bench::reductions(ctx),
        opts.size
    ));
    let roof = bench::Roofline::new(ctx, opts)?;
    let copy1 = copy_gbps(ctx, &roof, &timer, opts, 1).await?;
    let copy4 = copy_gbps(ctx, &roof, &timer, opts, 4).await?;
    let lanes = if copy1 > copy4 { 1 } else { 4 };
    let copy = copy1.max(copy4);
    progress(&format!(
        "copy kernel: {copy1:.2} GB/s with 4-byte elements, {copy4:.2} GB/s with 16-byte elements"
    ));
    let mut results = Vec::new();
    let mut rng = bench::Lcg(7);
    for e in bench::entries(opts.size) {
        let Some(loss) = losses::gpu_loss(&e.spec) else {
            continue;
        };
        let name = e.label.as_deref().unwrap_or(loss.name());
        if !opts.only.is_empty()
            && !opts
                .only
                .iter()
                .any(|o| name.to_lowercase().contains(&o.to_lowercase()))
        {
            continue;
        }
        yield_to_page().await;
        let inputs: Vec<Tensor> = e
            .inputs
            .iter()
            .map(|(s, k)| bench::make_input(ctx, s, k, &mut rng))
            .collect::<crate::Result<_>>()?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let names = loss.input_names();
        let mut grads = Vec::new();
        for g in loss.grad_names() {
            let i = names
                .iter()
                .position(|n| n == g)
                .ok_or_else(|| Error::InvalidInput(format!("{name}: gradient {g} of no input")))?;
            grads.push(Some(ctx.empty(inputs[i].shape(), DType::F32)?));
        }
        let gopts = GradOpts {
            into: grads.clone(),
            ..Default::default()
        };
        let before = copy_gbps(ctx, &roof, &timer, opts, lanes).await?;
        let ms = timer
            .median(ctx, opts, |enc| loss.record(ctx, enc, &refs, &gopts))
            .await?;
        let local_copy = before.max(copy_gbps(ctx, &roof, &timer, opts, lanes).await?);
        let compulsory: u64 = inputs.iter().map(|t| t.byte_len()).sum::<u64>()
            + grads.iter().flatten().map(|g| g.byte_len()).sum::<u64>();
        let gbps = compulsory as f64 / (ms * 1e6);
        let (baseline_ms, speedup) = match e.baseline {
            Some(b) => {
                let n = inputs[0].numel() as u64;
                // The baseline must compute the same loss, or the comparison means nothing.
                let fused = ctx.read_async(&loss.compute(ctx, &refs)?.loss).await?[0];
                let check = {
                    let mut ops = bench::Ops::new(ctx, n)?;
                    let (l, _) = b(&mut ops, &refs)?;
                    let mut enc = ctx.device().create_command_encoder(&Default::default());
                    let keep = ops.finish(&mut enc)?;
                    ctx.queue().submit(Some(enc.finish()));
                    let v = ctx.read_async(&l).await?[0];
                    drop(keep);
                    v
                };
                if (check - fused).abs() > 1e-3 * fused.abs().max(1e-3) {
                    return Err(Error::InvalidInput(format!(
                        "{name}: the per-operation baseline gives {check}, the fused loss {fused}"
                    )));
                }
                let bms = timer
                    .median(ctx, opts, |enc| {
                        let mut ops = bench::Ops::new(ctx, n)?;
                        b(&mut ops, &refs)?;
                        ops.finish(enc)
                    })
                    .await?;
                (Some(bms), Some(bms / ms))
            }
            None => (None, None),
        };
        let r = bench::BenchResult {
            loss: name.to_string(),
            shape: inputs[0].shape().to_vec(),
            ms,
            compulsory_bytes: compulsory,
            gbps,
            copy_gbps: local_copy,
            of_copy: gbps / local_copy,
            baseline_ms,
            speedup,
            gflops: e.flops.map(|f| f / (ms * 1e6)),
            mse_ms: None,
            of_mse: None,
            // The products alone and the step profile are the native benchmark's only.
            products: Vec::new(),
            steps: Vec::new(),
        };
        progress(&format!(
            "{name}: {ms:.3} ms, {gbps:.2} GB/s, {:.0}% of the copy",
            100.0 * r.of_copy
        ));
        results.push(r);
    }
    let a = ctx.adapter();
    Ok(bench::BenchReport {
        adapter: a.name.clone(),
        backend: format!("{:?}", a.backend),
        device_type: format!("{:?}", a.device_type),
        driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
        timer: timer.kind().into(),
        reductions: bench::reductions(ctx),
        suite: "default".into(),
        size: opts.size,
        runs: opts.runs,
        copy_gbps: copy,
        results,
    })
}

#[wasm_bindgen]
impl RawContext {
    /// Runs the benchmark: `Promise<string>`, the report as the JSON of `deepml bench --json`.
    /// `only` is a comma-separated list of loss-name parts (all when empty); `wall` times with
    /// the host clock even where timestamp queries exist; `progress` is called with a line of
    /// text as it goes.
    pub fn bench(
        &self,
        size: u32,
        runs: u32,
        warmup: u32,
        only: String,
        wall: bool,
        progress: Option<js_sys::Function>,
    ) -> Promise {
        let ctx = self.ctx.clone();
        future_to_promise(async move {
            let opts = bench::BenchOptions {
                size: size.max(1) as usize,
                runs: runs.max(1) as usize,
                warmup: warmup as usize,
                only: only
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
                // The page runs the default suite, without step profiles.
                suite: bench::Suite::Default,
                steps: false,
            };
            let say = |line: &str| {
                if let Some(f) = &progress {
                    let _ = f.call1(&JsValue::NULL, &line.into());
                }
            };
            let report = web_bench(&ctx, &opts, wall, &say).await.map_err(to_js)?;
            let json = serde_json::to_string_pretty(&report)
                .map_err(|e| js_error("wgpu", &format!("the report as JSON: {e}")))?;
            Ok(json.into())
        })
    }

    /// Drops the memory deepml keeps pooled for reuse.
    #[wasm_bindgen(js_name = trimPool)]
    pub fn trim_pool(&self) {
        self.ctx.trim_pool();
    }
}
