//! `AngularPenaltySMLoss` (ArcFace, SphereFace, CosFace) on the GPU (shaders/angular.wgsl).
//!
//! Two forms:
//! - [`AngularPenaltySMConfig`] implements [`Loss`] statelessly: inputs `x [N, in]`,
//!   `labels [N]` (i32), `weight [out, in]`; gradients `x`, `weight`.
//! - [`AngularPenaltySMLoss`] owns the class weight `W` on the device (initialised like
//!   `nn.Linear(bias=False)` from a seed), takes `x`, `labels`, and updates `W` in place with
//!   [`AngularPenaltySMLoss::sgd_step`].
//!
//! Device memory beyond x, W and their gradients: one `rows x chunk` buffer of logits (the
//! classes in chunks of about `CHUNK_ELEMS / rows`, the logits recomputed per chunk for the
//! gradients unless one chunk holds them all), `9 N + out` floats of norms and row state, and
//! only with `normalize_weight` and an accumulated gradient one `chunk x in` scratch. The
//! three products run on the shared `crate::matmul`. Tensors larger than one storage binding
//! are processed in windows of rows and of classes.
//!
//! Labels on the device are never trusted for addressing: an out-of-range label is clamped,
//! that sample's loss is NaN (so a `mean`/`sum` is NaN), its gradient row is zero, and the
//! device error flag is set: the next read fails with `Error::LabelOutOfRange`.
//! Host-side labels are checked before any GPU work by
//! [`AngularPenaltySMLoss::compute_with_labels`] (`Error::LabelOutOfRange`).

use super::{want_dtype, GradOpts, Loss, LossOutput, Recorder, Tail};
use crate::config::{check_labels, AngularPenaltySMConfig, LossType, Reduction};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, Scratch, ShaderSource, Window, WG};
use crate::matmul::{MatmulSpec, Operand};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/angular.wgsl"));
/// Elements per workgroup of the SGD step (angular.wgsl `sgd`).
const SGD_TILE: u64 = 4 * WG as u64;
/// The most logits held at once (elements of the chunk buffer L, 48 MiB): the classes are
/// processed in chunks of about `CHUNK_ELEMS / rows` classes.
pub const CHUNK_ELEMS: u64 = 12 << 20;

/// Four lanes (`V = vec4<f32>`): `stats` folds four logits of L at a time through common.wgsl's
/// `fold_max`.
fn source() -> ShaderSource {
    ShaderSource::new("angular", BODY).with_lanes(4)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = vec![source()];
    v.extend(crate::matmul::shader_variants());
    v
}

#[repr(C)]
#[derive(Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    classes: u32,
    features: u32,
    out: u32,
    c0: u32,
    ld: u32,
    mode: u32,
    loss_type: u32,
    normw: u32,
    cbase: u32,
    labels_out: u32,
    woff: u32,
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
/// Floats of row state per sample (angular.wgsl `RS`).
const RS: u64 = 8;

/// Classes per chunk for row windows of up to `rows` rows: a multiple of 64 (so that every
/// chunk's bindings start aligned), at most `CHUNK_ELEMS / (rows + extra)`, and within one
/// storage binding for `rows x chunk` logits and `chunk x f` weights.
fn chunk_classes(ctx: &LossContext, rows: u64, f: u64, c: u64, extra: u64) -> u64 {
    let a = (ctx.limits.min_storage_buffer_offset_alignment.max(4) / 4) as u64;
    // chunk * f a multiple of the alignment (in elements): W's chunk windows start aligned.
    let g = a / gcd(f.max(1), a);
    let by_budget = CHUNK_ELEMS / (rows + extra).max(1);
    let by_window =
        (ctx.max_window_bytes / 4 / rows.max(1)).min(ctx.max_window_bytes / 4 / f.max(1));
    let q = by_budget.min(by_window) / g * g;
    q.max(g).min(c.max(1))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
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
    split: Option<ClassSplit>,
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
    to_u32(n * RS, "N x 8")?;

    if !opts.scale.is_finite() {
        return Err(Error::InvalidConfig(format!(
            "the upstream gradient scale must be finite, got {}",
            opts.scale
        )));
    }
    let accumulate = opts.flags() & ADD != 0;
    // Windows: whole rows of x (and of L), whole class rows of W. Their first units are
    // multiples of 64 elements, so every binding of a window starts aligned.
    let align = (ctx.limits.min_storage_buffer_offset_alignment.max(4) / 4) as u64;
    let rws = ctx.windows(n, f * 4, align)?;
    let max_rows = rws.iter().map(|w| w.count).max().unwrap_or(1).max(1);
    // dW^ of a chunk goes into its own scratch only with normalize_weight and an accumulated
    // weight gradient; else into the gradient itself (normalised there in place).
    let dwh_scratch = cfg.normalize_weight && accumulate;
    let extra = if dwh_scratch { f } else { 0 };
    let chunk = chunk_classes(ctx, max_rows, f, c, extra);
    if chunk * f * 4 > ctx.max_window_bytes || max_rows * chunk * 4 > ctx.max_window_bytes {
        return Err(Error::TooLarge(format!(
            "{WHAT}: one class row of {f} features does not fit a storage binding"
        )));
    }
    let chunks: Vec<Window> = (0..c.div_ceil(chunk))
        .map(|q| Window {
            first: q * chunk,
            count: chunk.min(c - q * chunk),
        })
        .collect();
    // The classes of wnorm and wgrad: windows of whole class rows.
    let cws = ctx.windows(c, f * 4, align)?;

    let (s, m) = (cfg.scale(), cfg.margin());
    let nf = rec.count(n, 1) as f64;
    let red = match cfg.reduction {
        Reduction::Mean => 1.0 / nf,
        Reduction::Sum | Reduction::None => 1.0,
    };
    let base = Params {
        features: f as u32,
        out: c as u32,
        cbase: split.map_or(0, |s| s.offset) as u32,
        labels_out: split.map_or(c, |s| s.total) as u32,
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

    // L: [rows, ld] with ld a multiple of 4 (aligned vec4 rows for the products).
    let ld = chunk.div_ceil(4) * 4;
    let lbuf = rec.buf(ctx, max_rows * ld * 4)?;
    let rstat = rec.buf(ctx, n * RS * 4)?;
    let xinv = rec.buf(ctx, n * 4)?;
    let winv = rec.buf(ctx, c * 4)?;
    let dwh = if dwh_scratch {
        Some(rec.buf(ctx, chunk * f * 4)?)
    } else {
        None
    };
    // The per-sample losses: the result with reduction none, else scratch for the reduction.
    let sloss = if cfg.reduction == Reduction::None {
        Ok(ctx.empty(&[n as usize], DType::F32)?)
    } else {
        Err(rec.buf(ctx, n * 4)?)
    };
    let sloss_bind = |w: &Window| match &sloss {
        Ok(t) => Bind::window(9, t, w.first, w.count),
        Err(b) => b.bind_window(9, w.first, w.count),
    };

    let src = source();
    let prog: &mut Program = &mut rec.prog;
    let x_rows = |b: u32, w: &Window| Bind::window(b, x, w.first * f, w.count * f);
    let w_rows = |b: u32, w: &Window| Bind::window(b, weight, w.first * f, w.count * f);
    let l_rows = |rows: u64| lbuf.bind_window(4, 0, rows * ld);
    let l4_rows = |rows: u64| lbuf.bind_window(17, 0, rows * ld);
    let rstat_rows = |w: &Window| rstat.bind_window(5, w.first * RS, w.count * RS);
    let xinv_rows = |b: u32, w: &Window| xinv.bind_window(b, w.first, w.count);
    let winv_rows = |b: u32, w: &Window| winv.bind_window(b, w.first, w.count);
    // The products read winv from an aligned window at an offset (chunks need not start
    // aligned for it).
    let winv_op = |cc: &Window| {
        let first = cc.first / align * align;
        Operand {
            bind: winv.bind_window(6, first, cc.first - first + cc.count),
            off: cc.first - first,
            stride: 1,
        }
    };
    let label_rows = |w: &Window| Bind::window(3, labels, w.first, w.count);
    let flag_bind = || Bind {
        binding: 10,
        buffer: flag.clone(),
        offset: flag_offset,
        size: 4,
    };
    let per_row = |rw: &Window, cc: &Window| Params {
        rows: rw.count as u32,
        classes: cc.count as u32,
        c0: cc.first as u32,
        ld: ld as u32,
        ..base
    };
    // L = x W_chunk^T for one row window and chunk (stats and grad scale it by xinv, winv:
    // the product's epilogue would scale every K block's partial sums on lavapipe).
    let forward = |prog: &mut Program, rw: &Window, cc: &Window| -> Result<()> {
        crate::matmul::record(
            ctx,
            prog,
            &MatmulSpec {
                m: rw.count,
                n: cc.count,
                k: f,
                a: Operand {
                    bind: x_rows(1, rw),
                    off: 0,
                    stride: f,
                },
                a_kc: true,
                b: Operand {
                    bind: w_rows(2, cc),
                    off: 0,
                    stride: f,
                },
                b_kc: true,
                c: Operand {
                    bind: l_rows(rw.count),
                    off: 0,
                    stride: ld,
                },
                rs: None,
                cs: None,
                ks: None,
                add: false,
            },
        )
    };

    // A class-row pass (wnorm, wgrad, wgrad_inplace) over `rows` rows: its entry point and
    // workgroups. A workgroup per row, or with the CPU kernels a thread per row (`_t`).
    let row_pass = |name: &str, rows: u64| {
        if ctx.cpu_kernels {
            (format!("{name}_t"), rows.div_ceil(WG as u64))
        } else {
            (name.to_string(), rows)
        }
    };

    // Norms.
    for cw in &cws {
        let p = Params {
            classes: cw.count as u32,
            ..base
        };
        let (entry, groups) = row_pass("wnorm", cw.count);
        prog.steps.push(ctx.step(
            &src,
            &entry,
            &p,
            vec![w_rows(2, cw), winv_rows(6, cw)],
            groups,
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
            vec![x_rows(1, rw), rstat_rows(rw), xinv_rows(16, rw)],
            rw.count,
        )?);
    }
    // A per-row pass over L (x W^T of one row window and chunk, which it scales by xinv_i
    // winv_j as it reads it): stats or grad.
    let over_l = |entry: &str, rw: &Window, cc: &Window| {
        let wo = winv_op(cc);
        let binds = vec![
            label_rows(rw),
            l4_rows(rw.count),
            rstat_rows(rw),
            xinv_rows(16, rw),
            wo.bind,
        ];
        let p = Params {
            woff: wo.off as u32,
            ..per_row(rw, cc)
        };
        ctx.step(&src, entry, &p, binds, rw.count)
    };
    // Pass 1: the row statistics, chunk by chunk (with the classes split across ranks, each
    // rank's (M, O, c) are merged before `finish`).
    let mut lse_cuts = Vec::new();
    for rw in &rws {
        for cc in &chunks {
            forward(prog, rw, cc)?;
            prog.steps.push(over_l("stats", rw, cc)?);
        }
        lse_cuts.push((prog.steps.len(), *rw));
        let binds = vec![label_rows(rw), rstat_rows(rw), sloss_bind(rw), flag_bind()];
        let p = per_row(rw, &chunks[0]);
        prog.steps
            .push(ctx.step(&src, "finish", &p, binds, rw.count.div_ceil(64))?);
    }
    // Pass 2: the gradients, chunk by chunk (the logits recomputed unless they are all still
    // in L).
    let reuse = chunks.len() == 1 && rws.len() == 1;
    for (qi, cc) in chunks.iter().enumerate() {
        for (ri, rw) in rws.iter().enumerate() {
            if !reuse {
                forward(prog, rw, cc)?;
            }
            // G'' = diag(xinv) G diag(winv) in L.
            prog.steps.push(over_l("grad", rw, cc)?);
            // dx_rw (+)= G'' W_chunk.
            crate::matmul::record(
                ctx,
                prog,
                &MatmulSpec {
                    m: rw.count,
                    n: f,
                    k: cc.count,
                    a: Operand {
                        bind: l_rows(rw.count),
                        off: 0,
                        stride: ld,
                    },
                    a_kc: true,
                    b: Operand {
                        bind: w_rows(2, cc),
                        off: 0,
                        stride: f,
                    },
                    b_kc: false,
                    c: Operand {
                        bind: Bind::window(3, &gx, rw.first * f, rw.count * f),
                        off: 0,
                        stride: f,
                    },
                    rs: None,
                    cs: None,
                    ks: None,
                    add: qi > 0 || accumulate,
                },
            )?;
            // P_chunk (+)= G''^T x_rw (= dW^_chunk diag(winv)).
            let (out, add) = match &dwh {
                Some(b) => (b.bind_window(3, 0, cc.count * f), ri > 0),
                None => (
                    Bind::window(3, &gw, cc.first * f, cc.count * f),
                    ri > 0 || (accumulate && !cfg.normalize_weight),
                ),
            };
            crate::matmul::record(
                ctx,
                prog,
                &MatmulSpec {
                    m: cc.count,
                    n: f,
                    k: rw.count,
                    a: Operand {
                        bind: l_rows(rw.count),
                        off: 0,
                        stride: ld,
                    },
                    a_kc: false,
                    b: x_operand(x, rw, f),
                    b_kc: false,
                    c: Operand {
                        bind: out,
                        off: 0,
                        stride: f,
                    },
                    rs: None,
                    cs: None,
                    ks: None,
                    add,
                },
            )?;
        }
        // Through the weight normalisation, for this chunk's classes.
        if cfg.normalize_weight {
            let p = Params {
                classes: cc.count as u32,
                mode: opts.flags() & ADD,
                ..base
            };
            let gw_rows = Bind::window(8, &gw, cc.first * f, cc.count * f);
            let (name, binds) = match &dwh {
                Some(b) => (
                    "wgrad",
                    vec![w_rows(2, cc), b.bind_window(13, 0, cc.count * f), gw_rows],
                ),
                None => ("wgrad_inplace", vec![w_rows(2, cc), gw_rows]),
            };
            let (entry, groups) = row_pass(name, cc.count);
            prog.steps.push(ctx.step(&src, &entry, &p, binds, groups)?);
        }
    }
    // dx -= r xinv^2 x (the projection through the normalisation of x).
    for rw in &rws {
        let p = Params {
            rows: rw.count as u32,
            ..base
        };
        let binds = vec![
            x_rows(1, rw),
            rstat_rows(rw),
            Bind::window(7, &gx, rw.first * f, rw.count * f),
            xinv_rows(16, rw),
        ];
        prog.steps
            .push(ctx.step(&src, "proj", &p, binds, rw.count)?);
    }
    if let (Some(_), Some(plan)) = (split, rec.shard.as_mut()) {
        for (at, rw) in lse_cuts {
            let merge = crate::shard::Merge::Lse {
                stride: RS,
                m: 1,
                o: 2,
                add: (3, 4),
            };
            plan.cut(
                at,
                rstat.buffer.clone(),
                rw.first * RS,
                rw.count * RS,
                merge,
            );
        }
    }
    // The loss.
    let loss = match sloss {
        Ok(t) => t,
        Err(b) => {
            let loss = ctx.empty(&[], DType::F32)?;
            rec.reduce_finalize(
                ctx,
                &src,
                &base,
                Tail {
                    partials: b,
                    rows: 1,
                    cols: n,
                    totals: 11,
                    loss: Bind::tensor(12, &loss),
                    coef: None,
                    extra: Vec::new(),
                },
            )?;
            loss
        }
    };
    Ok((loss, vec![gx, gw]))
}

impl AngularPenaltySMConfig {
    /// The loss of the whole batch when its classes are split across the ranks of
    /// `collective` (InsightFace's PartialFC): every rank holds the whole batch `x [N, in]`
    /// and its global `labels [N]`, and `weight [out_features, in]` holds this rank's classes
    /// `[class_offset, class_offset + out_features)` (the config's `out_features` is this
    /// rank's count). The slices of the ranks must tile the classes without overlap or gap; a
    /// label outside them is `Error::LabelOutOfRange` on every rank.
    ///
    /// Each row's running maximum and sum of exponentials over a rank's classes are merged
    /// across the ranks (one MAX and one SUM of `2 N` values, with the target logit), then
    /// every rank computes the same value and the gradient of its own weight rows; the
    /// gradient with respect to `x` is summed across the ranks (`N x in` values).
    #[cfg(not(target_arch = "wasm32"))]
    #[allow(clippy::too_many_arguments)]
    pub fn compute_class_sharded(
        &self,
        ctx: &LossContext,
        x: &Tensor,
        labels: &Tensor,
        weight: &Tensor,
        class_offset: usize,
        collective: &dyn crate::shard::Collective,
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        const WHAT: &str = "AngularPenaltySMLoss";
        let checked = (|| {
            for (name, t) in [("x", x), ("labels", labels), ("weight", weight)] {
                ctx.owns(WHAT, name, t)?;
            }
            self.check_shapes(x.shape(), labels.shape(), weight.shape())
        })();
        let local = AngularPenaltySMConfig {
            out_features: 0,
            ..self.clone()
        };
        let job = crate::shard::ClassJob {
            what: WHAT,
            config: format!("{local:?}|{:?}|{:?}", x.shape(), labels.shape()),
            slice: checked
                .as_ref()
                .map(|_| (class_offset as u64, self.out_features as u64))
                .map_err(Clone::clone),
            rows: x.shape().first().copied().unwrap_or(0) as u64,
            grads: vec![(Some(0), true), (Some(2), false)],
            build: Box::new(move |total, rec| {
                let n = checked?;
                let flag = rec.flag_bind(ctx, 10, WHAT)?.buffer;
                let split = ClassSplit {
                    offset: class_offset as u64,
                    total,
                };
                record(
                    ctx,
                    self,
                    n,
                    x,
                    labels,
                    weight,
                    &flag,
                    0,
                    opts,
                    Some(split),
                    rec,
                )
            }),
        };
        crate::shard::run_classes(ctx, collective, opts, job)
    }
}

/// This rank's classes when the classes are split across ranks (PartialFC): its weight rows
/// are the global classes `[offset, offset + out_features)` of `total`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClassSplit {
    pub offset: u64,
    pub total: u64,
}

/// The rows of x of a row window as the B operand of dW^ (B(k = row, n = feature)).
fn x_operand(x: &Tensor, rw: &Window, f: u64) -> Operand {
    Operand {
        bind: Bind::window(2, x, rw.first * f, rw.count * f),
        off: 0,
        stride: f,
    }
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
    /// The weight is the same on every rank; its gradient is summed across them.
    fn batched_input(&self, i: usize) -> bool {
        i != 2
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
            ctx, self, n, inputs[0], inputs[1], inputs[2], &flag, 0, opts, None, rec,
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

    /// The loss of the whole batch with this rank's weight holding the classes
    /// `[class_offset, class_offset + out_features)` of all the ranks' (PartialFC; see
    /// [`AngularPenaltySMConfig::compute_class_sharded`]). The weight's gradient is this
    /// rank's slice, ready for [`Self::sgd_step`]; the gradient of `x` is summed across ranks.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn compute_class_sharded(
        &self,
        ctx: &LossContext,
        x: &Tensor,
        labels: &Tensor,
        class_offset: usize,
        collective: &dyn crate::shard::Collective,
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let mut out = self.config.compute_class_sharded(
            ctx,
            x,
            labels,
            &self.weight,
            class_offset,
            collective,
            opts,
        )?;
        out.grad_inputs[1] = None;
        Ok(out)
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
            None,
            rec,
        )
    }
}
