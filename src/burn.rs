//! deepml's losses on [Burn](https://burn.dev)'s tensors (the `burn` feature, native only).
//!
//! A [`BurnContext`] holds one wgpu device shared by Burn's wgpu runtime and a [`LossContext`]:
//! deepml makes it and Burn registers it ([`BurnContext::new`]), or Burn makes it and deepml
//! wraps it ([`BurnContext::from_burn`]), or the caller hands both the same setup
//! ([`BurnContext::from_setup`]). [`BurnContext::forward`] runs any loss of the library (or a
//! [`Combined`] one) on Burn tensors of that device, on the device, without a copy: each input's
//! storage is bound by deepml's kernels where it lies, the gradients are written straight into
//! new Burn tensors, and the loss into a Burn tensor.
//!
//! On an autodiff device (`ctx.autodiff_device()`), the loss is a node of Burn's graph:
//! `loss.backward()` delivers deepml's fused gradient of each differentiable input, multiplied
//! by the upstream gradient on the device, into Burn's gradients. The forward pass computes
//! the value and every gradient in one submission; the backward pass is one multiplication per
//! gradient.
//!
//! ```no_run
//! use burn::tensor::{Distribution, Tensor};
//! use deepml::burn::{BurnContext, Input};
//! use deepml::{BCEWithLogitsLoss, Combined, ContextOptions, JaccardLoss};
//!
//! let ctx = BurnContext::new(&ContextOptions::default())?;
//! let device = ctx.autodiff_device();
//! let logits = Tensor::<4>::random([2, 1, 8, 8], Distribution::Default, &device).require_grad();
//! let mask = Tensor::<4>::ones([2, 1, 8, 8], &device);
//! let loss = Combined::new()
//!     .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
//!     .term(0.5, JaccardLoss::binary(), &[0, 1]);
//! let out = ctx.forward(&loss, [Input::from(logits.clone()), Input::from(mask)])?;
//! let grads = out.loss.backward();
//! let d_logits = logits.grad(&grads).expect("logits require a gradient");
//! # Ok::<(), deepml::Error>(())
//! ```
//!
//! Ordering on the shared queue: Burn (cubecl) batches its kernels into its own command
//! encoder; [`BurnContext::forward`] flushes it before deepml submits, so Burn's pending
//! kernels that write an input run before the loss reads it, and deepml's submission comes
//! before any Burn kernel recorded afterwards, which therefore sees the loss and its
//! gradients. Use one context (and Burn's tensors of its device) from one thread at a time.
//!
//! Only Burn's `wgpu` runtime (the `Cube` backend without `fusion`, and `Autodiff` over it) is
//! served; a tensor of another backend or device is `Error::InvalidInput`. Float inputs must be
//! `f32`; integer inputs (class labels) may be `i32` or `i64` (converted on the device).
//! Class labels on the device are checked there: a label out of range sets the computation's
//! error flags, which [`BurnOutput::check`] reads (a read back of a few bytes, only when asked).

use std::sync::Arc;

use ::burn::backend::autodiff::checkpoint::base::Checkpointer;
use ::burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use ::burn::backend::autodiff::grads::Gradients;
use ::burn::backend::autodiff::ops::{Backward, NodeGuard, Ops, OpsKind};
use ::burn::backend::ops::{FloatTensorOps, IntTensorOps};
use ::burn::backend::wgpu::{CubeTensor, MemoryConfiguration, WgpuSetup};
use ::burn::backend::{
    BackendTensor, Cube, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, IntDType,
    Shape, TensorMetadata,
};
use ::burn::tensor::{Device, Tensor as BurnTensor};
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::CubeDevice;

use crate::context::{ContextOptions, LossContext};
use crate::error::{Error, Result};
use crate::losses::{combined::Combined, GradOpts, Loss, LossOutput};
use crate::tensor::{DType, Tensor};

type AdTensor = ::burn::backend::tensor::FloatTensor<::burn::backend::Autodiff<Cube>>;
type Server = WgpuServer<AutoCompiler>;

/// The most differentiable Burn inputs one loss call takes (a [`Combined`] loss over more is
/// refused).
pub const MAX_TRACKED_INPUTS: usize = 8;

/// One wgpu device shared by Burn and deepml. Cheap to clone.
#[derive(Clone)]
pub struct BurnContext {
    ctx: Arc<LossContext>,
    device: Device,
    cube: CubeDevice,
    copies: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for BurnContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BurnContext")
            .field("adapter", &self.ctx.adapter().summary())
            .field("device", &self.cube)
            .finish_non_exhaustive()
    }
}

fn burn_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::NoAdapter(format!("{what}: {e}"))
}

impl BurnContext {
    /// deepml makes the device (the adapter that `opts` choose, as [`LossContext::with_options`]
    /// does) and registers it with Burn's wgpu runtime.
    ///
    /// The device gets the adapter's limits and every feature the adapter has (but
    /// `MAPPABLE_PRIMARY_BUFFERS`), as Burn's runtime requests its own: the runtime chooses its
    /// kernels by the adapter's features (64-bit integers, for one).
    pub fn new(opts: &ContextOptions) -> Result<Self> {
        let (instance, adapter) = pollster::block_on(crate::adapter::pick_adapter(opts))?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(
            adapter.request_device(&wgpu::DeviceDescriptor {
                label: Some("deepml + burn"),
                required_features: adapter
                    .features()
                    .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
                required_limits: adapter.limits(),
                // SAFETY: what Burn's runtime enables on the devices it makes itself (cubecl-wgpu's
                // request_device), so that the adapter's experimental features may be requested.
                experimental_features: unsafe { wgpu::ExperimentalFeatures::enabled() },
                ..Default::default()
            }),
        )
        .map_err(|e| burn_err(&format!("{}: request_device", info.name), e))?;
        let setup = WgpuSetup {
            instance,
            backend: info.backend,
            adapter,
            device,
            queue,
        };
        Self::from_setup(setup, opts)
    }

    /// Burn makes the device (its default wgpu selection; `WGPU_BACKEND` does not apply, see
    /// [`Self::from_setup`] to choose) and deepml wraps it.
    ///
    /// Every constructor gives Burn's runtime `MemoryConfiguration::ExclusivePages` (a wgpu
    /// buffer per tensor), so that deepml can write a gradient into Burn's storage while it
    /// reads an input that Burn would otherwise have placed in the same buffer.
    pub fn from_burn(opts: &ContextOptions) -> Result<Self> {
        let (device, setup) = Device::wgpu_options()
            .memory_config(MemoryConfiguration::ExclusivePages)
            .init_with_setup()
            .map_err(|e| burn_err("Burn's wgpu runtime", e))?;
        Self::with_parts(setup, device, opts)
    }

    /// A caller's wgpu setup, registered once with Burn's runtime and wrapped by deepml
    /// ([`LossContext::from_device_with`]: the device's error handler and lost callback stay
    /// the caller's, or the runtime's). Register a setup once: Burn gives each registration a
    /// runtime of its own.
    pub fn from_setup(setup: WgpuSetup, opts: &ContextOptions) -> Result<Self> {
        let device = Device::wgpu_options()
            .setup(setup.clone())
            .memory_config(MemoryConfiguration::ExclusivePages)
            .init()
            .map_err(|e| burn_err("registering the device with Burn", e))?;
        Self::with_parts(setup, device, opts)
    }

    fn with_parts(setup: WgpuSetup, device: Device, opts: &ContextOptions) -> Result<Self> {
        let info = setup.adapter.get_info();
        let ctx = LossContext::from_device_with(setup.device, setup.queue, info, opts);
        // The runtime's own name for the device, from a tensor of it.
        let probe = BurnTensor::<1>::zeros([1], &device)
            .try_into_primitive::<Cube>()
            .map_err(|e| burn_err("Burn's wgpu device", format!("{e:?}")))?;
        Ok(BurnContext {
            ctx: Arc::new(ctx),
            device,
            cube: probe.device,
            copies: Arc::default(),
        })
    }

    /// How many gradients were copied on the device because Burn's runtime had placed them in
    /// a buffer that also held an input (never, with the memory configuration the constructors
    /// here give Burn: a buffer per tensor).
    pub fn gradient_copies(&self) -> u64 {
        self.copies.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The deepml context over the shared device.
    pub fn loss_context(&self) -> &LossContext {
        &self.ctx
    }

    /// The deepml context, shared.
    pub fn loss_context_arc(&self) -> Arc<LossContext> {
        self.ctx.clone()
    }

    /// Burn's device (no autodiff): tensors made on it can be given to [`Self::forward`].
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Burn's autodiff device over the same wgpu device: losses of its tracked tensors are
    /// nodes of Burn's graph.
    pub fn autodiff_device(&self) -> Device {
        self.device.clone().autodiff()
    }

    /// Runs `loss` on Burn tensors: value and every gradient in one deepml submission, after
    /// Burn's pending work; nothing is read back. `inputs` follow the loss's `input_names` (for
    /// a [`Combined`] loss, its combined inputs).
    ///
    /// Under autodiff, each tracked float input that the loss differentiates gets the gradient
    /// `upstream * d loss / d input`; the upstream gradient is a scalar for `mean` and `sum`,
    /// and per element or per sample for `reduction = "none"` (where the loss's gradient is
    /// separable per element or sample: not `AngularPenaltySMLoss`'s weight, which is refused
    /// with `Error::InvalidConfig`).
    pub fn forward<L: BurnLoss + ?Sized>(
        &self,
        loss: &L,
        inputs: impl IntoIterator<Item = Input>,
    ) -> Result<BurnOutput> {
        let inputs: Vec<Input> = inputs.into_iter().collect();
        let what = loss.loss_name();
        // 1. The primitives, contiguous, on this device.
        let mut parsed = Vec::with_capacity(inputs.len());
        let mut ad_ctx: Option<DispatchAutodiffContext> = None;
        for (i, input) in inputs.into_iter().enumerate() {
            let p = self.parse(&what, i, input)?;
            if let Some(c) = p.ad_ctx {
                match ad_ctx {
                    Some(prev) if prev != c => {
                        return Err(Error::InvalidInput(format!(
                            "{what}: input {i} is tracked with {c:?}, an earlier one with {prev:?}"
                        )))
                    }
                    _ => ad_ctx = Some(c),
                }
            }
            parsed.push(p);
        }
        // 2. deepml's views of their storage (the handles stay borrowed until submission).
        let mut resources = Vec::with_capacity(parsed.len() * 2);
        let mut views = Vec::with_capacity(parsed.len());
        for (i, p) in parsed.iter().enumerate() {
            let (t, r) = self.view(&what, &format!("input {i}"), &p.data, p.shape.as_deref())?;
            views.push(t);
            resources.push(r);
        }
        // 3. Gradient tensors, Burn's, for the tracked inputs the loss differentiates. deepml
        //    writes each straight into Burn's storage, unless the runtime placed it in a buffer
        //    that also holds an input (a kernel cannot bind one buffer both read-only and
        //    writable): that gradient is then written by deepml and copied on the device.
        //    The contexts made here ask Burn for a buffer per tensor, so that does not happen.
        let positions = loss.grad_positions();
        let mut grad_out: Vec<Option<(usize, CubeTensor)>> = vec![None; positions.len()];
        let mut into: Vec<Option<Tensor>> = vec![None; positions.len()];
        let mut copied: Vec<Option<Tensor>> = vec![None; positions.len()];
        for (k, pos) in positions.iter().enumerate() {
            let Some(p) = pos.and_then(|i| parsed.get(i).map(|p| (i, p))) else {
                continue;
            };
            let (i, input) = p;
            if input.ad.as_ref().is_none_or(|a| !a.is_tracked()) || input.data.dtype != F32 {
                continue;
            }
            let g = self.empty(input.data.shape().as_slice())?;
            let (t, r) = self.view(&what, &format!("gradient {k}"), &g, Some(views[i].shape()))?;
            if views.iter().any(|v| v.same_buffer(&t)) {
                copied[k] = Some(t);
                self.copies
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            } else {
                into[k] = Some(t);
            }
            resources.push(r);
            grad_out[k] = Some((i, g));
        }
        let opts = GradOpts {
            into,
            ..GradOpts::default()
        };
        // 4. Record deepml's work; Burn's tensors for the loss (and the terms' values).
        let ctx = &*self.ctx;
        let mut encoder = ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("deepml burn"),
            });
        let refs: Vec<&Tensor> = views.iter().collect();
        let out = loss.record_into(ctx, &mut encoder, &refs, &opts)?;
        let loss_shape = out.loss.shape().to_vec();
        let numel = out.loss.numel().max(1);
        let value = self.empty(&[numel])?;
        let (value_view, r) = self.view(&what, "the loss", &value, Some(&[numel]))?;
        resources.push(r);
        let terms_value = if !out.terms.is_empty() && out.terms.iter().all(|t| t.numel() == 1) {
            let t = self.empty(&[out.terms.len()])?;
            let (v, r) = self.view(&what, "the terms", &t, Some(&[out.terms.len()]))?;
            resources.push(r);
            Some((t, v))
        } else {
            None
        };
        ctx.scoped(|| {
            for (k, dst) in copied.iter().enumerate() {
                if let (Some(dst), Some(src)) = (dst, out.grads.get(k)) {
                    if dst.padded_len() > 0 {
                        encoder.copy_buffer_to_buffer(
                            src.buffer(),
                            src.offset(),
                            dst.buffer(),
                            dst.offset(),
                            dst.padded_len(),
                        );
                    }
                }
            }
            if out.loss.numel() > 0 {
                encoder.copy_buffer_to_buffer(
                    out.loss.buffer(),
                    out.loss.offset(),
                    value_view.buffer(),
                    value_view.offset(),
                    out.loss.padded_len(),
                );
            }
            if let Some((_, v)) = &terms_value {
                for (j, t) in out.terms.iter().enumerate() {
                    encoder.copy_buffer_to_buffer(
                        t.buffer(),
                        t.offset(),
                        v.buffer(),
                        v.offset() + 4 * j as u64,
                        4,
                    );
                }
            }
            Ok(())
        })?;
        // 5. Burn's pending kernels first, then the loss, on the one queue.
        self.flush()?;
        ctx.scoped(|| {
            ctx.queue.submit(Some(encoder.finish()));
            Ok(())
        })?;
        drop(resources);
        // 6. The loss as a Burn tensor: a node of Burn's graph where an input is tracked.
        let wrap = |t: CubeTensor| {
            BurnTensor::<1>::from_dispatch(DispatchTensor {
                kind: DispatchTensorKind::Cube(BackendTensor::Float(t)),
                autodiff: DispatchAutodiffContext::Disabled,
            })
        };
        let terms = terms_value.map(|(t, _)| wrap(t));
        let loss_t = match ad_ctx {
            None => wrap(value),
            Some(c) => {
                let mut guards = Vec::new();
                let mut state = Vec::new();
                for (i, p) in parsed.iter().enumerate() {
                    let Some(ad) = &p.ad else { continue };
                    guards.push(ad.node());
                    let mut grad = None;
                    for (k, g) in grad_out.iter().enumerate() {
                        if let Some((gi, g)) = g {
                            if *gi == i {
                                let view = upstream_view(&loss_shape, views[i].shape())
                                    .filter(|_| separable(loss.as_name(), positions[k], &loss_shape))
                                    .ok_or_else(|| {
                                        Error::InvalidConfig(format!(
                                            "{what}: a loss of shape {loss_shape:?} cannot pass a per-element upstream gradient to input {i} of shape {:?} (use reduction mean or sum under autodiff)",
                                            views[i].shape()
                                        ))
                                    })?;
                                grad = Some(GradState {
                                    grad: g.clone(),
                                    upstream: Shape::from(view),
                                    input: p.data.shape(),
                                });
                            }
                        }
                    }
                    state.push(grad);
                }
                let ad = finish_tracked(guards, state, value)?;
                BurnTensor::<1>::from_dispatch(DispatchTensor {
                    kind: DispatchTensorKind::Autodiff(Box::new(DispatchTensorKind::Cube(
                        BackendTensor::Autodiff(ad),
                    ))),
                    autodiff: c,
                })
            }
        };
        Ok(BurnOutput {
            loss: loss_t,
            shape: loss_shape,
            terms,
            result: out,
        })
    }

    /// Submits Burn's queued kernels to the shared queue.
    pub fn flush(&self) -> Result<()> {
        self.cube
            .client()
            .flush()
            .map_err(|e| Error::wgpu(format!("flushing Burn's queued work failed: {e:?}")))
    }

    fn parse(&self, what: &str, i: usize, input: Input) -> Result<Parsed> {
        let Input { tensor, shape } = input;
        let autodiff = tensor.autodiff;
        let wrong = |kind: &str| {
            Error::InvalidInput(format!(
                "{what}: input {i} is a {kind} tensor; deepml takes f32 and integer tensors of Burn's wgpu backend"
            ))
        };
        let (data, ad) = match tensor.kind {
            DispatchTensorKind::Cube(BackendTensor::Float(t)) => (t, None),
            DispatchTensorKind::Cube(BackendTensor::Int(t)) => (t, None),
            DispatchTensorKind::Cube(BackendTensor::Bool(_)) => return Err(wrong("bool")),
            DispatchTensorKind::Cube(BackendTensor::Quantized(_)) => {
                return Err(wrong("quantized"))
            }
            DispatchTensorKind::Cube(BackendTensor::Autodiff(ad)) => {
                (ad.primitive().clone(), Some(ad))
            }
            DispatchTensorKind::Autodiff(inner) => match *inner {
                DispatchTensorKind::Cube(BackendTensor::Autodiff(ad)) => {
                    (ad.primitive().clone(), Some(ad))
                }
                DispatchTensorKind::Cube(BackendTensor::Int(t)) => (t, None),
                DispatchTensorKind::Cube(BackendTensor::Float(t)) => (t, None),
                _ => return Err(wrong("non-wgpu autodiff")),
            },
            #[allow(unreachable_patterns)]
            _ => return Err(wrong("non-wgpu")),
        };
        if data.device != self.cube {
            return Err(Error::InvalidInput(format!(
                "{what}: input {i} lives on {:?}, this context's Burn device is {:?}",
                data.device, self.cube
            )));
        }
        let data = if data.dtype.is_float() {
            if data.dtype != F32 {
                return Err(Error::InvalidInput(format!(
                    "{what}: input {i} is {:?}; deepml's Burn inputs are f32",
                    data.dtype
                )));
            }
            burn_cubecl::kernel::into_contiguous(data)
        } else if data.dtype.is_int() || data.dtype.is_uint() {
            let t = if data.dtype == ::burn::backend::DType::I32 {
                data
            } else {
                <Cube as IntTensorOps<Cube>>::int_cast(data, IntDType::I32)
            };
            burn_cubecl::kernel::into_contiguous(t)
        } else {
            return Err(wrong(&format!("{:?}", data.dtype)));
        };
        let ad_ctx = match autodiff {
            DispatchAutodiffContext::Disabled => None,
            c => ad.as_ref().map(|_| c),
        };
        Ok(Parsed {
            data,
            ad,
            ad_ctx,
            shape,
        })
    }

    /// deepml's view of a Burn tensor's storage (shaped `shape`, or like the tensor), and the
    /// runtime's resource, which keeps the storage in place while held.
    fn view(
        &self,
        what: &str,
        name: &str,
        t: &CubeTensor,
        shape: Option<&[usize]>,
    ) -> Result<(Tensor, Box<dyn std::any::Any>)> {
        let dims = t.shape();
        let own: Vec<usize> = dims.as_slice().to_vec();
        let shape = shape.unwrap_or(&own);
        let n: usize = own.iter().product();
        if crate::tensor::checked_numel(shape)? != n {
            return Err(Error::ShapeMismatch(format!(
                "{what}: {name} has shape {own:?} ({n} elements), viewed as {shape:?}"
            )));
        }
        let dtype = if t.dtype == F32 {
            DType::F32
        } else {
            DType::I32
        };
        let res = t
            .client
            .get_resource::<Server>(t.handle.clone())
            .map_err(|e| Error::InvalidInput(format!("{what}: {name}'s storage: {e:?}")))?;
        let (buffer, offset) = {
            let r = res.resource();
            (r.buffer.clone(), r.offset)
        };
        let view = Tensor::from_buffer(&self.ctx, buffer, offset, shape, dtype)
            .map_err(|e| Error::InvalidInput(format!("{what}: {name}: {e}")))?;
        Ok((view, Box::new(res)))
    }

    /// A new f32 Burn tensor of `shape` on this device (contents undefined).
    fn empty(&self, shape: &[usize]) -> Result<CubeTensor> {
        let n: usize = crate::tensor::checked_numel(shape)?;
        let client = self.cube.client();
        let handle = client.empty((n * 4).max(4));
        Ok(CubeTensor::new_contiguous(
            client,
            self.cube.clone(),
            Shape::from(shape.to_vec()),
            handle,
            F32,
        ))
    }
}

const F32: ::burn::backend::DType = ::burn::backend::DType::F32;

/// One input of [`BurnContext::forward`]: a Burn tensor of any rank and kind (float or int),
/// optionally viewed under another shape with the same element count (deepml's shapes include
/// the scalar `[]`, which Burn's tensors do not).
#[derive(Debug)]
pub struct Input {
    tensor: DispatchTensor,
    shape: Option<Vec<usize>>,
}

impl Input {
    /// The tensor viewed as `shape` by deepml (same element count).
    #[must_use]
    pub fn shaped(mut self, shape: &[usize]) -> Self {
        self.shape = Some(shape.to_vec());
        self
    }
}

impl<const D: usize, K: ::burn::tensor::kind::Basic> From<BurnTensor<D, K>> for Input {
    fn from(t: BurnTensor<D, K>) -> Self {
        Input {
            tensor: t.into_dispatch(),
            shape: None,
        }
    }
}

struct Parsed {
    data: CubeTensor,
    ad: Option<AdTensor>,
    ad_ctx: Option<DispatchAutodiffContext>,
    shape: Option<Vec<usize>>,
}

/// What [`BurnContext::forward`] returns.
#[derive(Debug)]
pub struct BurnOutput {
    /// The loss, flattened: `[1]` for `mean` and `sum`, every element for `reduction = "none"`.
    /// Under autodiff, a node of Burn's graph: `loss.backward()` reaches the inputs.
    pub loss: BurnTensor<1>,
    /// deepml's shape of the loss (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// A [`Combined`] loss's terms, each one's own (unweighted) scalar value; `None` for a
    /// single loss.
    pub terms: Option<BurnTensor<1>>,
    result: LossOutput,
}

impl BurnOutput {
    /// Reads the computation's error flags back (a few bytes, blocking): `Error::LabelOutOfRange`
    /// where a class label on the device was out of range (those rows were skipped), and the
    /// first wgpu error of the device since the last check.
    pub fn check(&self, ctx: &BurnContext) -> Result<()> {
        pollster::block_on(ctx.ctx.read_bytes_async(&self.result.loss)).map(|_| ())
    }

    /// deepml's own result (its loss tensor and gradients, on the device).
    pub fn deepml(&self) -> &LossOutput {
        &self.result
    }
}

/// A loss [`BurnContext::forward`] can run: every [`Loss`] of the library (and `dyn Loss`), and
/// [`Combined`].
pub trait BurnLoss {
    /// The name errors use.
    fn loss_name(&self) -> String;
    /// The static name of the loss (`""` for a combined one).
    #[doc(hidden)]
    fn as_name(&self) -> &'static str;
    /// For each gradient the loss returns (in the order of `GradOpts::into`), the position of
    /// the input it differentiates (`None` for a parameter the loss owns).
    fn grad_positions(&self) -> Vec<Option<usize>>;
    /// Records value and gradients into `encoder`.
    fn record_into(
        &self,
        ctx: &LossContext,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput>;
}

impl<L: Loss + ?Sized> BurnLoss for L {
    fn loss_name(&self) -> String {
        self.name().to_string()
    }
    fn as_name(&self) -> &'static str {
        self.name()
    }
    fn grad_positions(&self) -> Vec<Option<usize>> {
        self.grad_inputs()
    }
    fn record_into(
        &self,
        ctx: &LossContext,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        self.record(ctx, encoder, inputs, opts)
    }
}

impl BurnLoss for Combined {
    fn loss_name(&self) -> String {
        let names: Vec<&str> = self.terms.iter().map(|t| t.loss.name()).collect();
        format!("Combined({})", names.join(" + "))
    }
    fn as_name(&self) -> &'static str {
        ""
    }
    fn grad_positions(&self) -> Vec<Option<usize>> {
        self.grad_inputs().into_iter().map(Some).collect()
    }
    fn record_into(
        &self,
        ctx: &LossContext,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        self.record(ctx, encoder, inputs, opts)
    }
}

/// Whether a loss of shape `loss` (not a scalar) passes a per-element upstream gradient to the
/// gradient at input `pos` by a broadcast product: the angular loss's class weight sums over
/// the samples, so it does not.
fn separable(name: &str, pos: Option<usize>, loss: &[usize]) -> bool {
    loss.iter().product::<usize>() <= 1 || !(name == "AngularPenaltySMLoss" && pos == Some(2))
}

/// The shape the upstream gradient (shaped like the loss) takes to multiply an input's gradient
/// by broadcasting: all ones for a scalar loss; the loss's own shape padded with ones where it
/// is the input's shape or a prefix of it (per element, per sample); with a one inserted at
/// dimension 1 where the input has a class dimension there (cross-entropy, focal).
fn upstream_view(loss: &[usize], input: &[usize]) -> Option<Vec<usize>> {
    let r = input.len().max(1);
    if loss.iter().product::<usize>() == 1 {
        return Some(vec![1; r]);
    }
    if loss.len() <= input.len() && input[..loss.len()] == *loss {
        let mut v = loss.to_vec();
        v.resize(input.len(), 1);
        return Some(v);
    }
    if input.len() >= 2
        && loss.len() + 1 == input.len()
        && loss[0] == input[0]
        && loss[1..] == input[2..]
    {
        let mut v = loss.to_vec();
        v.insert(1, 1);
        return Some(v);
    }
    None
}

/// The gradient of one tracked input, and how the upstream gradient multiplies it.
#[derive(Clone, Debug)]
struct GradState {
    grad: CubeTensor,
    upstream: Shape,
    input: Shape,
}

/// The backward step of a deepml loss: each tracked input's gradient, computed in the forward
/// pass, times the upstream gradient.
#[derive(Debug)]
struct DeepmlBackward<const N: usize>;

impl<const N: usize> Backward<Cube, N> for DeepmlBackward<N> {
    type State = Vec<Option<GradState>>;

    fn backward(self, ops: Ops<Self::State, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let upstream = grads.consume::<Cube>(&ops.node);
        for (parent, g) in ops.parents.iter().zip(ops.state) {
            let (Some(node), Some(g)) = (parent, g) else {
                continue;
            };
            let up = <Cube as FloatTensorOps<Cube>>::float_reshape(upstream.clone(), g.upstream);
            let mut d = <Cube as FloatTensorOps<Cube>>::float_mul(g.grad, up);
            if d.shape() != g.input {
                d = <Cube as FloatTensorOps<Cube>>::float_reshape(d, g.input);
            }
            grads.register::<Cube>(node.id, d);
        }
    }
}

fn finish_n<const N: usize>(
    guards: Vec<NodeGuard>,
    state: Vec<Option<GradState>>,
    output: CubeTensor,
) -> Result<AdTensor> {
    let nodes: [NodeGuard; N] = guards
        .try_into()
        .map_err(|_| Error::InvalidInput("internal: tracked input count".into()))?;
    Ok(
        match DeepmlBackward::<N>
            .prepare::<NoCheckpointing>(nodes)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
    )
}

fn finish_tracked(
    guards: Vec<NodeGuard>,
    state: Vec<Option<GradState>>,
    output: CubeTensor,
) -> Result<AdTensor> {
    match guards.len() {
        1 => finish_n::<1>(guards, state, output),
        2 => finish_n::<2>(guards, state, output),
        3 => finish_n::<3>(guards, state, output),
        4 => finish_n::<4>(guards, state, output),
        5 => finish_n::<5>(guards, state, output),
        6 => finish_n::<6>(guards, state, output),
        7 => finish_n::<7>(guards, state, output),
        8 => finish_n::<8>(guards, state, output),
        n => Err(Error::InvalidInput(format!(
            "{n} autodiff inputs in one loss call; at most {MAX_TRACKED_INPUTS}"
        ))),
    }
}

/// The class weight of an angular-penalty loss as a Burn parameter `[out_features,
/// in_features]`, initialised as [`crate::AngularPenaltySMLoss::new`] initialises deepml's own
/// (the same `seed` gives the same values), on `device` (an autodiff device for training).
/// Give it to the stateless loss, `ctx.forward(&config, [x, labels, weight.val()])`: Burn's
/// optimizer then updates it from the gradient deepml computes.
pub fn angular_weight(
    config: &crate::config::AngularPenaltySMConfig,
    seed: u64,
    device: &Device,
) -> Result<::burn::module::Param<BurnTensor<2>>> {
    let w = crate::AngularPenaltySMLoss::init_weight(config, seed)?;
    let data = ::burn::tensor::TensorData::new(w, [config.out_features, config.in_features]);
    Ok(::burn::module::Param::from_tensor(
        BurnTensor::<2>::from_data(data, device),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_views() {
        assert_eq!(upstream_view(&[], &[4, 3]), Some(vec![1, 1]));
        assert_eq!(upstream_view(&[1], &[4]), Some(vec![1]));
        assert_eq!(upstream_view(&[4, 3], &[4, 3]), Some(vec![4, 3]));
        assert_eq!(upstream_view(&[4], &[4, 3]), Some(vec![4, 1]));
        assert_eq!(
            upstream_view(&[2, 5, 6], &[2, 3, 5, 6]),
            Some(vec![2, 1, 5, 6])
        );
        assert_eq!(upstream_view(&[3], &[4, 3]), None);
    }
}
