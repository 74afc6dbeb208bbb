//! `AngularPenaltySMLoss` (ArcFace, SphereFace, CosFace) on the GPU (shaders/angular.wgsl).
//!
//! Two forms:
//! - [`AngularPenaltySMConfig`] implements [`Loss`] statelessly: inputs `x [N, in]`,
//!   `labels [N]` (i32), `weight [out, in]`; gradients `x`, `weight`.
//! - [`AngularPenaltySMLoss`] owns the class weight `W` on the device (initialised like
//!   `nn.Linear(bias=False)` from a seed), takes `x`, `labels`, and updates `W` in place with
//!   [`AngularPenaltySMLoss::sgd_step`].
//!
//! Device memory: one `N x out_features` float buffer (the logits, overwritten in place by
//! `d loss / d wf`), `3 N + out` floats of norms and row statistics, and with
//! `normalize_weight` one `out x in` scratch for the gradient of the normalised weight.
//! Tensors larger than one storage binding are processed in windows of rows and of classes.
//!
//! Labels on the device are never trusted for addressing: an out-of-range label is clamped,
//! that sample's loss is NaN (so a `mean`/`sum` is NaN), its gradient row is zero, and the
//! device error flag is set: the next read fails with `Error::LabelOutOfRange`.
//! Host-side labels are checked before any GPU work by
//! [`AngularPenaltySMLoss::compute_with_labels`] (`Error::LabelOutOfRange`).

use super::{want_dtype, GradOpts, Loss, LossOutput, Recorder};
use crate::config::{check_labels, AngularPenaltySMConfig, LossType, Reduction};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, Scratch, ShaderSource, Window, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!("../../shaders/angular.wgsl");
/// Output tile edge of the matrix products (angular.wgsl `TILE`).
const TILE: u64 = 64;
/// The longest reduction range of one matrix-product dispatch (1024 slices of 16): llvmpipe
/// stops the loops of an invocation after 65535 iterations in total, so longer reductions
/// are split into dispatches that add up in order.
const K_CHUNK: u64 = 16384;
/// Elements per workgroup of the SGD step (angular.wgsl `sgd`).
const SGD_TILE: u64 = 4 * WG as u64;

fn source() -> ShaderSource {
    ShaderSource::new("angular", BODY)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    vec![source()]
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    features: u32,
    out: u32,
    c0: u32,
    tiles_m: u32,
    tiles_n: u32,
    mode: u32,
    loss_type: u32,
    normw: u32,
    kb: u32,
    ke: u32,
    s: f32,
    m: f32,
    cos_m: f32,
    sin_m: f32,
    lo: f32,
    hi: f32,
    gscale: f32,
    aux: f32,
    sqb: f32,
}

/// Bit 0 of `Params::mode`: add into the output.
const ADD: u32 = 1;
/// Bit 1 of `Params::mode`: the dx projection term (first class window only).
const PROJ: u32 = 2;

/// `[0, k)` in ranges of at most `K_CHUNK`.
fn k_chunks(k: u64) -> impl Iterator<Item = (u32, u32)> {
    (0..k.div_ceil(K_CHUNK).max(1))
        .map(move |q| ((q * K_CHUNK) as u32, ((q + 1) * K_CHUNK).min(k) as u32))
}

/// Records value and gradients of the loss for `x`, `labels`, `weight` (shapes checked by the
/// caller's `check_shapes`); `flag` is the one-word label error flag.
#[allow(clippy::too_many_arguments)]
fn record(
    ctx: &LossContext,
    cfg: &AngularPenaltySMConfig,
    n: usize,
    x: &Tensor,
    labels: &Tensor,
    weight: &Tensor,
    flag: &wgpu::Buffer,
    flag_offset: u64,
    opts: &GradOpts,
    rec: &mut Recorder,
) -> Result<(Tensor, Vec<Tensor>)> {
    const WHAT: &str = "AngularPenaltySMLoss";
    want_dtype(WHAT, "x", x, DType::F32)?;
    want_dtype(WHAT, "labels", labels, DType::I32)?;
    want_dtype(WHAT, "weight", weight, DType::F32)?;
    let gx = opts.grad_for(ctx, 0, x)?;
    let gw = opts.grad_for(ctx, 1, weight)?;
    let (n, f, c) = (n as u64, cfg.in_features as u64, cfg.out_features as u64);
    let to_u32 = |v: u64, what: &str| {
        u32::try_from(v)
            .map_err(|_| Error::TooLarge(format!("{WHAT}: {what} = {v} does not fit 32 bits")))
    };
    to_u32(n, "N")?;
    to_u32(c, "out_features")?;
    to_u32(f, "in_features")?;

    // Windows: whole rows of x, the logits and the row statistics; whole class rows of W.
    // Their first units are multiples of the storage-offset alignment (in 4-byte elements).
    let align = (ctx.limits.min_storage_buffer_offset_alignment.max(4) / 4) as u64;
    let row_unit = f.max(c).max(2) * 4;
    let rws = ctx.windows(n, row_unit, align)?;
    let cws = ctx.windows(c, f * 4, align)?;

    let (s, m) = (cfg.scale(), cfg.margin());
    let nf = n as f64;
    let red = match cfg.reduction {
        Reduction::Mean => 1.0 / nf,
        Reduction::Sum | Reduction::None => 1.0,
    };
    if !opts.scale.is_finite() {
        return Err(Error::InvalidConfig(format!(
            "the upstream gradient scale must be finite, got {}",
            opts.scale
        )));
    }
    let base = Params {
        features: f as u32,
        out: c as u32,
        loss_type: match cfg.loss_type {
            LossType::ArcFace => 0,
            LossType::SphereFace => 1,
            LossType::CosFace => 2,
        },
        normw: cfg.normalize_weight as u32,
        s: s as f32,
        m: m as f32,
        cos_m: m.cos() as f32,
        sin_m: m.sin() as f32,
        lo: (-1.0 + cfg.eps) as f32,
        hi: (1.0 - cfg.eps) as f32,
        sqb: (cfg.eps * (2.0 - cfg.eps)).max(0.0).sqrt() as f32,
        gscale: (opts.scale as f64 * red) as f32,
        aux: red as f32,
        ..Default::default()
    };
    let accum = opts.flags() & ADD;

    let logits_bytes = n
        .checked_mul(c)
        .and_then(|v| v.checked_mul(4))
        .ok_or_else(|| Error::TooLarge(format!("{WHAT}: {n} x {c} logits overflow")))?;
    let logits = ctx.alloc(logits_bytes, LossContext::storage_usage())?;
    let xstat = ctx.alloc(n * 8, LossContext::storage_usage())?;
    let winv = ctx.alloc(c * 4, LossContext::storage_usage())?;
    let dwh = if cfg.normalize_weight {
        Some(ctx.alloc(c * f * 4, LossContext::storage_usage())?)
    } else {
        None
    };
    let (sloss_t, sloss_b) = if cfg.reduction == Reduction::None {
        (Some(ctx.empty(&[n as usize], DType::F32)?), None)
    } else {
        (None, Some(ctx.alloc(n * 4, LossContext::storage_usage())?))
    };
    let sloss_bind = |w: &Window| match (&sloss_t, &sloss_b) {
        (Some(t), _) => Bind::window(9, t, w.first, w.count),
        (_, Some(b)) => Bind::scratch_window(9, b, w.first, w.count),
        _ => unreachable!("one of the two is set"),
    };

    let src = source();
    let prog: &mut Program = &mut rec.prog;
    let tiles = |v: u64| v.div_ceil(TILE);
    let x_rows = |b: u32, w: &Window| Bind::window(b, x, w.first * f, w.count * f);
    let w_rows = |b: u32, w: &Window| Bind::window(b, weight, w.first * f, w.count * f);
    let logit_rows = |w: &Window| Bind::scratch_window(4, &logits, w.first * c, w.count * c);
    let xstat_rows = |w: &Window| Bind::scratch_window(5, &xstat, w.first * 2, w.count * 2);
    let winv_rows = |w: &Window| Bind::scratch_window(6, &winv, w.first, w.count);

    // Norms.
    for cw in &cws {
        let p = Params {
            classes: cw.count as u32,
            ..base
        };
        prog.steps.push(ctx.step(
            &src,
            "wnorm",
            &p,
            vec![w_rows(2, cw), winv_rows(cw)],
            cw.count,
        )?);
    }
    for rw in &rws {
        let p = Params {
            rows: rw.count as u32,
            ..base
        };
        prog.steps.push(ctx.step(
            &src,
            "xnorm",
            &p,
            vec![x_rows(1, rw), xstat_rows(rw)],
            rw.count,
        )?);
    }
    // wf = x^ W^T.
    for rw in &rws {
        for cw in &cws {
            let (tm, tn) = (tiles(rw.count), tiles(cw.count));
            for (q, (kb, ke)) in k_chunks(f).enumerate() {
                let p = Params {
                    rows: rw.count as u32,
                    classes: cw.count as u32,
                    c0: cw.first as u32,
                    tiles_m: tm as u32,
                    tiles_n: tn as u32,
                    mode: if q == 0 { 0 } else { ADD },
                    kb,
                    ke,
                    ..base
                };
                let binds = vec![
                    x_rows(1, rw),
                    w_rows(2, cw),
                    logit_rows(rw),
                    xstat_rows(rw),
                    winv_rows(cw),
                ];
                prog.steps.push(ctx.step(&src, "fwd", &p, binds, tm * tn)?);
            }
        }
    }
    // Per sample: loss, d loss / d wf in place.
    for rw in &rws {
        let p = Params {
            rows: rw.count as u32,
            ..base
        };
        let binds = vec![
            Bind::window(3, labels, rw.first, rw.count),
            logit_rows(rw),
            xstat_rows(rw),
            sloss_bind(rw),
            Bind {
                binding: 10,
                buffer: flag.clone(),
                offset: flag_offset,
                size: 4,
            },
        ];
        prog.steps
            .push(ctx.step(&src, "rows", &p, binds, rw.count)?);
    }
    // d x: accumulated over the class windows (and reduction chunks), in order.
    for rw in &rws {
        let mut first = true;
        for cw in &cws {
            let (tm, tn) = (tiles(rw.count), tiles(f));
            for (kb, ke) in k_chunks(cw.count) {
                let mode = if first { accum | PROJ } else { ADD };
                first = false;
                let p = Params {
                    rows: rw.count as u32,
                    classes: cw.count as u32,
                    c0: cw.first as u32,
                    tiles_m: tm as u32,
                    tiles_n: tn as u32,
                    mode,
                    kb,
                    ke,
                    ..base
                };
                let binds = vec![
                    x_rows(1, rw),
                    w_rows(2, cw),
                    logit_rows(rw),
                    xstat_rows(rw),
                    winv_rows(cw),
                    Bind::window(7, &gx, rw.first * f, rw.count * f),
                ];
                prog.steps.push(ctx.step(&src, "dx", &p, binds, tm * tn)?);
            }
        }
    }
    // d W^ (into the gradient itself without normalize_weight): accumulated over the row
    // windows (and reduction chunks), in order.
    for cw in &cws {
        let mut first = true;
        for rw in &rws {
            let (tm, tn) = (tiles(cw.count), tiles(f));
            for (kb, ke) in k_chunks(rw.count) {
                let mode = match (first, &dwh) {
                    (true, Some(_)) => 0,
                    (true, None) => accum,
                    _ => ADD,
                };
                first = false;
                let p = Params {
                    rows: rw.count as u32,
                    classes: cw.count as u32,
                    c0: cw.first as u32,
                    tiles_m: tm as u32,
                    tiles_n: tn as u32,
                    mode,
                    kb,
                    ke,
                    ..base
                };
                let out = match &dwh {
                    Some(b) => Bind::scratch_window(8, b, cw.first * f, cw.count * f),
                    None => Bind::window(8, &gw, cw.first * f, cw.count * f),
                };
                let binds = vec![x_rows(1, rw), logit_rows(rw), xstat_rows(rw), out];
                prog.steps.push(ctx.step(&src, "dw", &p, binds, tm * tn)?);
            }
        }
    }
    // Through the weight normalisation.
    if let Some(b) = &dwh {
        for cw in &cws {
            let p = Params {
                classes: cw.count as u32,
                mode: accum,
                ..base
            };
            let binds = vec![
                w_rows(2, cw),
                Bind::scratch_window(13, b, cw.first * f, cw.count * f),
                Bind::window(8, &gw, cw.first * f, cw.count * f),
            ];
            prog.steps
                .push(ctx.step(&src, "wgrad", &p, binds, cw.count)?);
        }
    }
    // The loss.
    let loss = match (sloss_t, sloss_b) {
        (Some(t), _) => t,
        (_, Some(b)) => {
            let totals = ctx.reduce_rows(prog, &mut rec.scratch, &b, 1, n)?;
            let loss = ctx.empty(&[], DType::F32)?;
            let binds = vec![Bind::scratch(11, &totals), Bind::tensor(12, &loss)];
            rec.prog
                .steps
                .push(ctx.step(&src, "finalize", &base, binds, 1)?);
            rec.scratch.keep(totals);
            rec.scratch.keep(b);
            loss
        }
        _ => unreachable!("one of the two is set"),
    };
    rec.scratch.keep(logits);
    rec.scratch.keep(xstat);
    rec.scratch.keep(winv);
    if let Some(b) = dwh {
        rec.scratch.keep(b);
    }
    Ok((loss, vec![gx, gw]))
}

/// The stateless form: `inputs = [x, labels, weight]`, gradients `[x, weight]`. A label out of
/// range on the device makes the loss NaN (see the module documentation).
impl Loss for AngularPenaltySMConfig {
    fn name(&self) -> &'static str {
        "AngularPenaltySMLoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "labels", "weight"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["x", "weight"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = self.check_shapes(inputs[0].shape(), inputs[1].shape(), inputs[2].shape())?;
        let flag = rec.flag_bind(ctx, 10, "AngularPenaltySMLoss")?.buffer;
        record(
            ctx, self, n, inputs[0], inputs[1], inputs[2], &flag, 0, opts, rec,
        )
    }
}

/// `AngularPenaltySMLoss(in_features, out_features, loss_type, eps, s, m, normalize_weight,
/// reduction)` with its class weight `W [out_features, in_features]` on the device.
#[derive(Debug)]
pub struct AngularPenaltySMLoss {
    config: AngularPenaltySMConfig,
    weight: Tensor,
}

/// splitmix64: the seeded generator of the weight initialisation.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl AngularPenaltySMLoss {
    /// Validates `config` and initialises `W` like `nn.Linear(bias=False)`: uniform in
    /// `±1/sqrt(in_features)`, from `seed` (the same seed gives the same weight).
    pub fn new(ctx: &LossContext, config: AngularPenaltySMConfig, seed: u64) -> Result<Self> {
        config.validate()?;
        let w = Self::init_weight(&config, seed)?;
        let weight = ctx.upload(&w, &[config.out_features, config.in_features])?;
        Ok(AngularPenaltySMLoss { config, weight })
    }

    /// The host values `new` uploads: `out_features * in_features` values uniform in
    /// `[-1/sqrt(in), 1/sqrt(in))`, row-major, from splitmix64 seeded with `seed`.
    pub fn init_weight(config: &AngularPenaltySMConfig, seed: u64) -> Result<Vec<f32>> {
        config.validate()?;
        let count = config
            .out_features
            .checked_mul(config.in_features)
            .ok_or_else(|| {
                Error::TooLarge("AngularPenaltySMLoss: the weight's size overflows".into())
            })?;
        let bound = 1.0 / (config.in_features as f64).sqrt();
        let mut state = seed;
        Ok((0..count)
            .map(|_| {
                let u = (splitmix64(&mut state) >> 11) as f64 / (1u64 << 53) as f64;
                ((2.0 * u - 1.0) * bound) as f32
            })
            .collect())
    }

    /// The configuration.
    pub fn config(&self) -> &AngularPenaltySMConfig {
        &self.config
    }

    /// The class weight on the device, `[out_features, in_features]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The class weight, read back (blocking; native only).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read_weight(&self, ctx: &LossContext) -> Result<Vec<f32>> {
        ctx.read(&self.weight)
    }

    /// Overwrites the class weight with `values` (row-major `[out_features, in_features]`).
    pub fn set_weight(&mut self, ctx: &LossContext, values: &[f32]) -> Result<()> {
        ctx.owns(
            "AngularPenaltySMLoss set_weight",
            "the weight",
            &self.weight,
        )?;
        let want = self.weight.numel();
        if values.len() != want {
            return Err(Error::ShapeMismatch(format!(
                "AngularPenaltySMLoss: set_weight needs {want} values ({:?}), got {}",
                self.weight.shape(),
                values.len()
            )));
        }
        ctx.scoped(|| {
            ctx.queue.write_buffer(
                self.weight.buffer(),
                self.weight.offset(),
                bytemuck::cast_slice(values),
            );
            Ok(())
        })
    }

    /// `W -= lr * grad_w` on the device, in place (one submission).
    pub fn sgd_step(&mut self, ctx: &LossContext, grad_w: &Tensor, lr: f32) -> Result<()> {
        ctx.owns("AngularPenaltySMLoss sgd_step", "the weight", &self.weight)?;
        ctx.owns("AngularPenaltySMLoss sgd_step", "grad_w", grad_w)?;
        want_dtype(
            "AngularPenaltySMLoss sgd_step",
            "grad_w",
            grad_w,
            DType::F32,
        )?;
        if grad_w.shape() != self.weight.shape() {
            return Err(Error::ShapeMismatch(format!(
                "AngularPenaltySMLoss: sgd_step needs a gradient of shape {:?}, got {:?}",
                self.weight.shape(),
                grad_w.shape()
            )));
        }
        if !lr.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "AngularPenaltySMLoss: the learning rate must be finite, got {lr}"
            )));
        }
        if grad_w.same_buffer(&self.weight) {
            return Err(Error::InvalidInput(
                "AngularPenaltySMLoss: sgd_step's gradient is the weight itself".into(),
            ));
        }
        let total = self.weight.numel() as u64;
        let src = source();
        let mut prog = Program::default();
        let align = (ctx.limits.min_storage_buffer_offset_alignment.max(4) / 4) as u64;
        for w in ctx.windows(total, 4, align)? {
            let p = Params {
                rows: w.count as u32,
                aux: lr,
                ..Default::default()
            };
            let binds = vec![
                Bind::window(14, grad_w, w.first, w.count),
                Bind::window(15, &self.weight, w.first, w.count),
            ];
            prog.steps
                .push(ctx.step(&src, "sgd", &p, binds, w.count.div_ceil(SGD_TILE))?);
        }
        let mut scratch = Scratch::default();
        ctx.submit(prog, &mut scratch)
    }

    /// Checks `labels` on the host (`Error::LabelOutOfRange` before any GPU work), uploads them
    /// and computes value and gradients.
    pub fn compute_with_labels(
        &self,
        ctx: &LossContext,
        x: &Tensor,
        labels: &[i64],
    ) -> Result<LossOutput> {
        ctx.owns("AngularPenaltySMLoss", "x", x)?;
        self.config
            .check_shapes(x.shape(), &[labels.len()], self.weight.shape())?;
        check_labels(
            "AngularPenaltySMLoss",
            labels,
            self.config.out_features,
            None,
        )?;
        let y = ctx.upload_labels_i64(labels, &[labels.len()])?;
        self.compute(ctx, &[x, &y])
    }
}

/// The owning form: `inputs = [x, labels]`, gradients `[x, weight]`.
impl Loss for AngularPenaltySMLoss {
    fn name(&self) -> &'static str {
        "AngularPenaltySMLoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["x", "labels"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["x", "weight"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        ctx.owns("AngularPenaltySMLoss", "the weight", &self.weight)?;
        let n =
            self.config
                .check_shapes(inputs[0].shape(), inputs[1].shape(), self.weight.shape())?;
        let flag = rec.flag_bind(ctx, 10, "AngularPenaltySMLoss")?.buffer;
        record(
            ctx,
            &self.config,
            n,
            inputs[0],
            inputs[1],
            &self.weight,
            &flag,
            0,
            opts,
            rec,
        )
    }
}
