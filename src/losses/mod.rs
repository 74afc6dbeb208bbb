//! The GPU losses. Each module implements [`Loss`] for one config type of `crate::config`:
//! validation on the host, then its kernels recorded into one program (value and gradient in
//! one submission).

use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, Scratch, ShaderSource};
use crate::tensor::{DType, Tensor};

pub mod angular;
pub mod bce;
#[cfg(not(target_arch = "wasm32"))]
pub mod ce_sharded;
pub mod combined;
pub mod contrastive;
pub mod cross_entropy;
pub mod focal;
mod pixels;
pub mod pointwise;
/// Threads of a row segment (cross-entropy's classes, contrastive's features) for medium rows:
/// one subgroup where the context's reductions use subgroups of 8 to 128 (the segment's sums are
/// then one subgroup operation), else 32.
pub(crate) fn segment_threads(subgroup: Option<u32>) -> u32 {
    match subgroup {
        Some(sg) if (8..=128).contains(&sg) => sg,
        _ => 32,
    }
}
pub mod segmentation;
pub mod tversky;
mod typed;

/// How the gradients are delivered.
#[derive(Debug, Clone)]
pub struct GradOpts {
    /// Upstream gradient: every gradient is multiplied by it (default 1).
    pub scale: f32,
    /// Where to write each differentiable input's gradient (same shape as the input); `None`
    /// makes a new tensor.
    pub into: Vec<Option<Tensor>>,
    /// Add to the values already in `into` instead of overwriting them.
    pub accumulate: bool,
}

impl Default for GradOpts {
    fn default() -> Self {
        GradOpts {
            scale: 1.0,
            into: Vec::new(),
            accumulate: false,
        }
    }
}

impl GradOpts {
    /// Scales every gradient by `scale`.
    pub fn scaled(scale: f32) -> Self {
        GradOpts {
            scale,
            ..Default::default()
        }
    }

    /// The gradient tensor of differentiable input `i`, shaped like `like`: the caller's, or new.
    pub(crate) fn grad_for(&self, ctx: &LossContext, i: usize, like: &Tensor) -> Result<Tensor> {
        if !self.scale.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "the upstream gradient scale must be finite, got {}",
                self.scale
            )));
        }
        match self.into.get(i).and_then(|t| t.as_ref()) {
            Some(t) => {
                if t.shape() != like.shape() || t.dtype() != DType::F32 {
                    return Err(Error::ShapeMismatch(format!(
                        "gradient tensor {i} has shape {:?} ({:?}), the input has {:?}",
                        t.shape(),
                        t.dtype(),
                        like.shape()
                    )));
                }
                Ok(t.clone())
            }
            None => {
                if self.accumulate {
                    return Err(Error::InvalidInput(format!(
                        "accumulate needs a gradient tensor for input {i}"
                    )));
                }
                ctx.empty(like.shape(), DType::F32)
            }
        }
    }

    pub(crate) fn flags(&self) -> u32 {
        self.accumulate as u32
    }
}

/// The result of a loss or of a [`combined::Combined`] loss: its value (a scalar for
/// `mean`/`sum`, per element or per sample for `none`) and one gradient per differentiable input,
/// all still on the device.
pub struct LossOutput {
    /// The loss (for a combined loss, the weighted total).
    pub loss: Tensor,
    /// The gradients, in the order of the loss's `grad_names` (for a combined loss, of the
    /// combined inputs that some term differentiates, in input order). [`Self::input_grad`]
    /// finds one by its input's position.
    pub grads: Vec<Tensor>,
    /// For each gradient, the position of the input it differentiates (`None` for a parameter
    /// the loss owns, such as [`crate::AngularPenaltySMLoss`]'s weight).
    pub grad_inputs: Vec<Option<usize>>,
    /// A combined loss's terms, each one's own (unweighted) value; empty for a single loss.
    pub terms: Vec<Tensor>,
    pub(crate) _scratch: Scratch,
}

impl std::fmt::Debug for LossOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let grads: Vec<&[usize]> = self.grads.iter().map(Tensor::shape).collect();
        f.debug_struct("LossOutput")
            .field("loss", &self.loss)
            .field("grads", &grads)
            .field("grad_inputs", &self.grad_inputs)
            .field("terms", &self.terms.len())
            .finish_non_exhaustive()
    }
}

impl LossOutput {
    /// The gradient with respect to input `i` (by its position among the inputs), if the loss
    /// differentiates it.
    pub fn input_grad(&self, i: usize) -> Option<&Tensor> {
        self.grad_inputs
            .iter()
            .position(|&g| g == Some(i))
            .map(|k| &self.grads[k])
    }

    /// The loss as a host scalar, blocking (native only). A loss with `reduction = "none"` has
    /// one value per element or sample: `value` refuses it (`Error::InvalidInput`); read
    /// `self.loss` with `ctx.read`.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn value(&self, ctx: &LossContext) -> Result<f32> {
        if !self.loss.shape().is_empty() {
            return Err(Error::InvalidInput(format!(
                "value() of a loss of shape {:?} (reduction none): read the tensor with ctx.read(&out.loss)",
                self.loss.shape()
            )));
        }
        ctx.read_scalar(&self.loss)
    }
    /// Gradient `i`, read back, blocking (native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn grad(&self, ctx: &LossContext, i: usize) -> Result<Vec<f32>> {
        let g = self.grads.get(i).ok_or_else(|| {
            Error::InvalidInput(format!(
                "this loss has {} gradients, not {}",
                self.grads.len(),
                i + 1
            ))
        })?;
        ctx.read(g)
    }
}

/// Work being recorded: the steps of a program, the scratch buffers they use, and the error
/// flags of the computation (made on first use; the result tensors hold them).
#[derive(Default)]
pub struct Recorder {
    pub(crate) prog: Program,
    pub(crate) scratch: Scratch,
    pub(crate) flag: Option<std::sync::Arc<crate::context::Flag>>,
    /// Set when the work is one shard of a batch split across ranks (`crate::shard`): the
    /// global batch size, and the points where the statistics are all-reduced.
    pub(crate) shard: Option<crate::shard::Plan>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("steps", &self.prog.steps.len())
            .field("scratch", &self.scratch)
            .field("flag", &self.flag.as_ref().map(|fl| fl.what.as_str()))
            .field("sharded", &self.shard.is_some())
            .finish()
    }
}

impl Recorder {
    /// The binding of this computation's error flags (`FLAG_BYTES` bytes), made zeroed on
    /// first use; `what` names the loss in the error a set flag becomes.
    pub(crate) fn flag_bind(
        &mut self,
        ctx: &LossContext,
        binding: u32,
        what: &str,
    ) -> Result<crate::kernel::Bind> {
        if self.flag.is_none() {
            self.flag = Some(std::sync::Arc::new(ctx.new_flag(what)?));
        }
        let f = self.flag.as_ref().expect("just made");
        Ok(crate::kernel::Bind {
            binding,
            buffer: f.buf.buffer.clone(),
            offset: 0,
            size: crate::context::FLAG_BYTES,
        })
    }

    /// The batch size a loss divides by: `local` for unsharded work; for one shard of a batch
    /// split along dimension 0, the global count, `per_row` (the count per row of dimension 0)
    /// times the global number of rows.
    pub(crate) fn count(&self, local: u64, per_row: u64) -> u64 {
        match &self.shard {
            Some(p) => per_row * p.rows,
            None => local,
        }
    }

    /// Marks `len` f32 statistics of `buffer` from element `first` as exchanged here: in
    /// sharded work they are all-reduced (merged by `merge`) across the ranks before the steps
    /// recorded after this point run; otherwise nothing happens.
    pub(crate) fn exchange(
        &mut self,
        buffer: &wgpu::Buffer,
        first: u64,
        len: u64,
        merge: crate::shard::Merge,
    ) {
        let at = self.prog.steps.len();
        if let Some(p) = &mut self.shard {
            p.cut(at, buffer.clone(), first, len, merge);
        }
    }

    /// A zeroed-or-not scratch buffer of `bytes` bytes that lives until the recorded work has
    /// run: the recorder keeps it, the caller binds its handle.
    pub(crate) fn buf(&mut self, ctx: &LossContext, bytes: u64) -> Result<Slot> {
        let b = ctx.alloc(bytes.max(4), LossContext::storage_usage())?;
        let s = Slot {
            buffer: b.buffer.clone(),
        };
        self.scratch.keep(b);
        Ok(s)
    }

    /// A scratch buffer holding `data` (written before the recorded work runs).
    pub(crate) fn buf_from(&mut self, ctx: &LossContext, data: &[f32]) -> Result<Slot> {
        let s = self.buf(ctx, data.len() as u64 * 4)?;
        if !data.is_empty() {
            ctx.queue
                .write_buffer(&s.buffer, 0, bytemuck::cast_slice(data));
        }
        Ok(s)
    }

    /// The deterministic reduction of `rows` rows of `cols` partials (row-major in
    /// `partials`) into `rows` totals, kept until the work has run.
    pub(crate) fn reduce(
        &mut self,
        ctx: &LossContext,
        partials: &Slot,
        rows: u64,
        cols: u64,
    ) -> Result<Slot> {
        let totals = ctx.reduce_rows_of(
            &mut self.prog,
            &mut self.scratch,
            &partials.buffer,
            rows,
            cols,
        )?;
        Ok(Slot {
            buffer: self.scratch.keep(totals).buffer.clone(),
        })
    }

    /// The tail shared by the losses that reduce per-tile statistics: the deterministic
    /// reduction of the partials of `tail`, then the one-invocation `finalize` entry of `src`
    /// with `params`, which reads the totals at binding
    /// `tail.totals`, writes the scalar loss to `tail.loss` and `tail.coef_len` coefficients to
    /// `tail.coef` (if any). Returns both, for the gradient pass.
    pub(crate) fn reduce_finalize<P: bytemuck::Pod>(
        &mut self,
        ctx: &LossContext,
        src: &ShaderSource,
        params: &P,
        tail: Tail,
    ) -> Result<Finalized> {
        let totals = self.reduce(ctx, &tail.partials, tail.rows, tail.cols)?;
        // With the classes split across ranks every rank holds every row: nothing to add up.
        if !self.shard.as_ref().is_some_and(|p| p.class_split) {
            self.exchange(&totals.buffer, 0, tail.rows, crate::shard::Merge::Sum);
        }
        let mut binds = vec![totals.bind(tail.totals), tail.loss];
        let coef = match tail.coef {
            Some((binding, len)) => {
                let c = self.buf(ctx, len * 4)?;
                binds.push(c.bind(binding));
                Some(c)
            }
            None => None,
        };
        binds.extend(tail.extra);
        let step = ctx.step(src, "finalize", params, binds, 1)?;
        self.prog.steps.push(step);
        Ok(Finalized { totals, coef })
    }

    /// Ties the flags (if any) to a result tensor.
    pub(crate) fn flagged(&self, t: Tensor) -> Tensor {
        t.with_flag(self.flag.clone())
    }
}

/// A scratch buffer kept alive by a [`Recorder`] (see [`Recorder::buf`]).
#[derive(Clone)]
pub(crate) struct Slot {
    pub(crate) buffer: wgpu::Buffer,
}

impl Slot {
    /// Its 4-byte elements `[first, first + count)` at `binding`.
    pub(crate) fn bind_window(&self, binding: u32, first: u64, count: u64) -> Bind {
        Bind {
            binding,
            buffer: self.buffer.clone(),
            offset: first * 4,
            size: (count * 4).max(4),
        }
    }
    /// The whole buffer at `binding`.
    pub(crate) fn bind(&self, binding: u32) -> Bind {
        Bind {
            binding,
            buffer: self.buffer.clone(),
            offset: 0,
            size: self.buffer.size(),
        }
    }
}

/// What [`Recorder::reduce_finalize`] made: the reduced totals (which some gradient passes read)
/// and the finalize step's coefficients.
pub(crate) struct Finalized {
    pub totals: Slot,
    pub coef: Option<Slot>,
}

/// The bindings of a `finalize` entry (see [`Recorder::reduce_finalize`]).
pub(crate) struct Tail {
    /// The per-tile partials: `rows` rows of `cols`, row-major.
    pub partials: Slot,
    pub rows: u64,
    pub cols: u64,
    pub totals: u32,
    /// The scalar loss (a tensor's binding, or a recorder's scratch where the loss returned is
    /// another tensor: it must live until the work has run).
    pub loss: Bind,
    /// The binding and length (in f32) of the coefficients the finalize step writes for the
    /// gradient pass, if it writes any.
    pub coef: Option<(u32, u64)>,
    /// Other bindings the entry reads (class weights, flags).
    pub extra: Vec<Bind>,
}

/// A loss that runs on the GPU. `inputs` follow the Python originals' forward arguments
/// (see `input_names`).
pub trait Loss: std::fmt::Debug {
    /// The deepml / PyTorch class name.
    fn name(&self) -> &'static str;
    /// The forward arguments, in order.
    fn input_names(&self) -> &'static [&'static str];
    /// The names of the gradients, in the order of `LossOutput::grads` (the differentiable
    /// inputs; for a loss that owns a parameter, that parameter too).
    fn grad_names(&self) -> &'static [&'static str];
    /// Validates and records the kernels; returns the loss tensor and the gradients.
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)>;

    /// For each gradient (in the order of `grad_names`), the position of the input it
    /// differentiates, `None` for a parameter the loss owns: [`LossOutput::grad_inputs`].
    fn grad_inputs(&self) -> Vec<Option<usize>> {
        let names = self.input_names();
        self.grad_names()
            .iter()
            .map(|g| names.iter().position(|n| n == g))
            .collect()
    }

    /// Whether input `i` holds rows of the batch, split along dimension 0 across the ranks of
    /// [`Self::compute_sharded`] (the default), rather than a value every rank holds whole.
    fn batched_input(&self, i: usize) -> bool {
        let _ = i;
        true
    }

    /// What ranks running this loss together must agree on (its name and config).
    fn config_key(&self) -> String {
        format!("{}:{:?}", self.name(), self)
    }

    /// The loss of the whole batch when this rank holds one shard of it: `inputs` are this
    /// rank's rows (dimension 0; a rank may hold none), and every rank of `collective` calls
    /// this with the same loss. The statistics are all-reduced (see [`crate::shard`]); the
    /// value is the whole batch's on every rank, the gradients are `dL/d(this rank's rows)`,
    /// and the gradient of a replicated input or owned weight is summed across the ranks.
    #[cfg(not(target_arch = "wasm32"))]
    fn compute_sharded(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        collective: &dyn crate::shard::Collective,
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        crate::shard::run_loss(self, ctx, inputs, collective, opts)
    }

    /// Value and gradients in one submission; nothing is read back.
    fn compute(&self, ctx: &LossContext, inputs: &[&Tensor]) -> Result<LossOutput> {
        self.compute_with(ctx, inputs, &GradOpts::default())
    }

    /// As `compute`, with an upstream scale and caller-owned gradient buffers.
    fn compute_with(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let (mut rec, out) = self.recorded(ctx, inputs, opts)?;
        ctx.submit(std::mem::take(&mut rec.prog), &mut rec.scratch)?;
        Ok(LossOutput {
            _scratch: rec.scratch,
            ..out
        })
    }

    /// Records value and gradients into the caller's encoder; the work runs when the caller
    /// submits it. Keep the returned output alive until then.
    #[must_use = "it holds the recorded work's buffers: keep it until the encoder is submitted"]
    fn record(
        &self,
        ctx: &LossContext,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let (mut rec, out) = self.recorded(ctx, inputs, opts)?;
        ctx.encode(std::mem::take(&mut rec.prog), encoder, &mut rec.scratch)?;
        Ok(LossOutput {
            _scratch: rec.scratch,
            ..out
        })
    }

    /// The steps of `compute_with` and `record` (with the finite scan where the context asks
    /// for it), and the result tensors holding the computation's error flags.
    #[doc(hidden)]
    fn recorded(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<(Recorder, LossOutput)> {
        self.check_arity(inputs)?;
        for (t, name) in inputs.iter().zip(self.input_names()) {
            ctx.owns(self.name(), name, t)?;
        }
        for (i, t) in opts.into.iter().enumerate() {
            if let Some(t) = t {
                ctx.owns(self.name(), &format!("GradOpts.into[{i}]"), t)?;
            }
        }
        let mut rec = Recorder::default();
        let (loss, grads) = ctx.scoped(|| {
            if ctx.check_finite {
                ctx.finite_steps(&mut rec, self.name(), inputs)?;
            }
            self.build(ctx, inputs, opts, &mut rec)
        })?;
        let out = LossOutput {
            loss: rec.flagged(loss),
            grads: grads.into_iter().map(|g| rec.flagged(g)).collect(),
            grad_inputs: self.grad_inputs(),
            terms: Vec::new(),
            _scratch: Scratch::default(),
        };
        Ok((rec, out))
    }

    #[doc(hidden)]
    fn check_arity(&self, inputs: &[&Tensor]) -> Result<()> {
        let names = self.input_names();
        if inputs.len() != names.len() {
            return Err(Error::InvalidInput(format!(
                "{} takes {} inputs ({}), got {}",
                self.name(),
                names.len(),
                names.join(", "),
                inputs.len()
            )));
        }
        Ok(())
    }
}

/// The elements per row of dimension 0 (the batch dimension a sharded batch is split along).
pub(crate) fn per_row(shape: &[usize]) -> u64 {
    shape.iter().skip(1).map(|&d| d as u64).product()
}

/// Checks float inputs that share one element type: all f32, or all f16 (which needs the
/// adapter's SHADER_F16). Returns whether they are f16.
pub(crate) fn float_inputs(
    ctx: &LossContext,
    what: &str,
    named: &[(&str, &Tensor)],
) -> Result<bool> {
    let first = named[0].1.dtype();
    for (name, t) in named {
        if !matches!(t.dtype(), DType::F32 | DType::F16) || t.dtype() != first {
            return Err(Error::InvalidInput(format!(
                "{what}: {name} is {:?}; the inputs must all be F32 or all F16",
                t.dtype()
            )));
        }
    }
    if first == DType::F16 && !ctx.has_f16() {
        return Err(Error::InvalidInput(format!(
            "{what}: f16 inputs need the SHADER_F16 feature, which {} does not have",
            ctx.adapter().name
        )));
    }
    Ok(first == DType::F16)
}

/// Refuses a tensor of the wrong element type.
pub(crate) fn want_dtype(what: &str, name: &str, t: &Tensor, dtype: DType) -> Result<()> {
    if t.dtype() != dtype {
        return Err(Error::InvalidInput(format!(
            "{what}: {name} must be {dtype:?}, got {:?}",
            t.dtype()
        )));
    }
    Ok(())
}

/// The GPU loss of a case's spec (every registered loss runs on the GPU; `Option` for the
/// callers that skip what a build does not implement).
#[cfg(feature = "cases")]
pub fn gpu_loss(spec: &crate::cases::LossSpec) -> Option<Box<dyn Loss>> {
    Some(spec.boxed_loss())
}

/// The most classes (channels) whose values a thread of the four-position kernels over
/// `[N, C, K]` (cross-entropy's rows_*_q, the segmentation losses' multi_*) holds in registers:
/// each value is then read once and exponentiated once, where the streaming sweeps read and
/// exponentiate it twice. With the CPU adapters' kernels (lavapipe, SwiftShader) they stay in
/// the stack's cache, a GPU keeps them in registers, where fewer leave room for more threads.
pub(crate) fn held_classes(ctx: &LossContext) -> u64 {
    if ctx.cpu_kernels {
        32
    } else {
        16
    }
}

/// Accesses per thread of a pass swept class by class over a thread's accesses together
/// (cross_entropy.wgsl `quads_swept`, segmentation.wgsl `swept_stats` and `swept_grad`), over
/// `per` accesses per sample: on the CPU kernels a SIMD group then reads runs of QPT * 128
/// contiguous bytes of a plane. Lavapipe's cross-entropy at [2, 64, 128, 256] took 16.5-17.0 ms
/// with 1 (C planes read as interleaved streams), 14.3 with 6, 11.3-12.5 with 8, 13.9 with 12
/// and 10.2-11.1 with 16. 16 only where a sample fills a workgroup of them (else half the
/// threads idle: [3, 150, 64, 128] took 17.7 ms with 16, 11.2-13.4 with 8). A GPU keeps one,
/// for many workgroups.
pub(crate) fn swept_accesses(ctx: &LossContext, per: u64) -> u32 {
    if !ctx.cpu_kernels {
        1
    } else if per >= 16 * crate::kernel::WG as u64 {
        16
    } else {
        8
    }
}

/// Threads of a workgroup that own a block (`TB`; the others idle) of cross-entropy's
/// rows_*_q or of segmentation's swept passes: the CPU kernels' swept blocks (`swept`) take
/// half a workgroup where whole-workgroup blocks, `groups` of them, would be fewer than two per
/// CPU thread (lavapipe runs a workgroup on one thread, and the idle SIMD groups' skipped code
/// for next to nothing). Cross-entropy at [3, 150, 64, 128], three blocks of 8 accesses per
/// thread for 2 threads: 9.4-10.5 ms; six blocks of half a workgroup 8.1-8.9 ms (of MSE
/// 2.2x -> 1.7x); a quarter 8.2-8.4 ms. With many blocks halving costs: at [2, 64, 128, 256]
/// (four blocks) no change; at 2 and 19 classes (held, a barrier per workgroup) 1.6x -> 2.4x
/// and 1.0x -> 1.5x.
pub(crate) fn block_threads(ctx: &LossContext, swept: bool, groups: u64) -> u32 {
    // Asked once: on Linux the answer reads the cgroup's CPU quota from files.
    static THREADS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let threads =
        *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()) as u64);
    if ctx.cpu_kernels && swept && groups < 2 * threads {
        crate::kernel::WG / 2
    } else {
        crate::kernel::WG
    }
}
