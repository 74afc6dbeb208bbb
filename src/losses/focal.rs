//! `FocalLoss`, exactly as segmentation_models_pytorch 0.6 defines it (shaders/focal.wgsl): a
//! statistics pass, the deterministic reduction and finalize (`Recorder::reduce_finalize`),
//! and a gradient pass.

use super::pixels::{pixel_windows, smp_inputs};
use super::{GradOpts, Loss, Recorder, Tail};
use crate::config::{check_smp, ChannelLayout, Reduction, SmpMode};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{with_accumulate_variants, Bind, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/focal.wgsl"));
const NAME: &str = "FocalLoss";
/// Pixels per workgroup tile (focal.wgsl `ITEMS * WG`).
const TILE: u64 = 16 * WG as u64;

/// `FocalLoss(mode, alpha = None, gamma = 2.0, ignore_index = None, reduction = "mean",
/// normalized = false)` of segmentation_models_pytorch, on logits `y_pred`.
///
/// Per element, with `y` the target (in `multiclass` mode, `y_true == c` for the logits of
/// class `c`): `l = BCEWithLogits(x, y)`, `pt = exp(-l)`, `f = (1 - pt)^gamma`, `term = f l`,
/// times `alpha y + (1 - alpha)(1 - y)` when `alpha` is set. `normalized` divides every term by
/// `max(sum f, 1e-6)` (per class in multiclass mode; the gradient flows through that sum). Then
/// `mean` over the kept elements, `sum`, or `none`. Elements whose `y_true` equals
/// `ignore_index` are dropped (their gradient is 0); in multiclass mode each class's focal loss
/// is reduced on its own, and the classes' losses are averaged (a sigmoid per class, not a
/// softmax; smp 0.6 divides their sum by `C`).
///
/// Differences from smp, both refusals of what it would silently accept: a multiclass label
/// outside `[0, C)` that is not `ignore_index` is `Error::LabelOutOfRange` (smp counts it as no
/// class), and `reduction = "none"` with `ignore_index` is `Error::InvalidConfig` (smp returns
/// a ragged vector of the kept elements). `none` gives shape `[numel]` in binary mode (smp
/// flattens) and `y_true`'s shape in multiclass mode. `multilabel` is binary on every element.
#[derive(Debug, Clone, PartialEq)]
pub struct FocalLoss {
    /// `binary`, `multiclass` or `multilabel`.
    pub mode: SmpMode,
    /// The weight of the positive targets (`None`: no weighting).
    pub alpha: Option<f64>,
    /// The focusing exponent (>= 0).
    pub gamma: f64,
    /// The `y_true` value (binary) or class index (multiclass) whose elements are dropped.
    pub ignore_index: Option<i64>,
    /// `mean`, `sum` or `none`.
    pub reduction: Reduction,
    /// Divide by the sum of the focal factors.
    pub normalized: bool,
}

impl Default for FocalLoss {
    fn default() -> Self {
        FocalLoss::new(SmpMode::Binary)
    }
}

impl FocalLoss {
    /// The loss of `mode` with smp's defaults.
    pub fn new(mode: SmpMode) -> Self {
        FocalLoss {
            mode,
            alpha: None,
            gamma: 2.0,
            ignore_index: None,
            reduction: Reduction::Mean,
            normalized: false,
        }
    }

    /// The domain of the arguments.
    pub fn validate(&self) -> Result<()> {
        if !self.gamma.is_finite() || self.gamma < 0.0 {
            return Err(Error::InvalidConfig(format!(
                "{NAME}: gamma must be finite and >= 0, got {}",
                self.gamma
            )));
        }
        if let Some(a) = self.alpha {
            if !a.is_finite() {
                return Err(Error::InvalidConfig(format!(
                    "{NAME}: alpha must be finite, got {a}"
                )));
            }
        }
        if self.reduction == Reduction::None && self.ignore_index.is_some() {
            return Err(Error::InvalidConfig(format!(
                "{NAME}: reduction 'none' with ignore_index would give a ragged result (smp drops the ignored elements); use 'mean' or 'sum'"
            )));
        }
        Ok(())
    }

    /// Checks the arguments and the shapes; returns the layout (`[numel, 1, 1]` in binary and
    /// multilabel modes, `[N, C, inner]` in multiclass mode).
    pub fn check_shapes(&self, y_pred: &[usize], y_true: &[usize]) -> Result<ChannelLayout> {
        self.validate()?;
        let mode = match self.mode {
            SmpMode::Multiclass => SmpMode::Multiclass,
            // smp flattens both in either mode.
            SmpMode::Multilabel if y_pred == y_true => SmpMode::Binary,
            m => m,
        };
        check_smp(NAME, mode, y_pred, y_true)
    }

    /// The shape of the loss with `reduction = "none"`.
    pub fn none_shape(&self, y_pred: &[usize], y_true: &[usize]) -> Vec<usize> {
        match self.mode {
            SmpMode::Multiclass => y_true.to_vec(),
            _ => vec![crate::config::numel(y_pred)],
        }
    }
}

fn source(multi: bool, norm: bool, none: bool, f16: bool) -> ShaderSource {
    ShaderSource::new("focal", BODY)
        .with("MULTI", multi as u32)
        .with("NORM", norm as u32)
        .with("NONE", none as u32)
        .with_f16(f16)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for multi in [false, true] {
        for norm in [false, true] {
            for none in [false, true] {
                for f16 in [false, true] {
                    for qw in [WG, 8] {
                        v.push(source(multi, norm, none, f16).with("QW", qw));
                    }
                }
            }
        }
    }
    with_accumulate_variants(v)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    pixels: u32,
    inner: u32,
    channels: u32,
    tile_base: u32,
    tiles: u32,
    groups: u32,
    flags: u32,
    label_base: u32,
    gamma: f32,
    alpha: f32,
    ignore_f: f32,
    grad_scale: f32,
    ignore_i: i32,
    pad: [u32; 3],
}

const F_ALPHA: u32 = 2;
const F_IGNORE: u32 = 4;
const F_MEAN: u32 = 8;

impl Loss for FocalLoss {
    fn name(&self) -> &'static str {
        NAME
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["y_pred", "y_true"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["y_pred"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (x, t) = (inputs[0], inputs[1]);
        let layout = self.check_shapes(x.shape(), t.shape())?;
        let multi = self.mode == SmpMode::Multiclass;
        let f16 = smp_inputs(ctx, NAME, self.mode, x, t)?;
        let grad = opts.grad_for(ctx, 0, x)?;
        let (c, inner) = (layout.channels as u64, layout.inner as u64);
        let groups = if self.normalized { c } else { 1 };
        let none = self.reduction == Reduction::None;
        let (windows, tiles) = pixel_windows(ctx, NAME, layout, x.dtype().size(), TILE)?;
        let mut flags = 0;
        if self.alpha.is_some() {
            flags |= F_ALPHA;
        }
        let ignore_i = self.ignore_index.and_then(|v| i32::try_from(v).ok());
        if (multi && ignore_i.is_some()) || (!multi && self.ignore_index.is_some()) {
            flags |= F_IGNORE;
        }
        if self.reduction == Reduction::Mean {
            flags |= F_MEAN;
        }
        let base = Params {
            pixels: 0,
            inner: inner as u32,
            channels: c as u32,
            tile_base: 0,
            tiles: tiles as u32,
            groups: groups as u32,
            flags,
            label_base: 0,
            gamma: self.gamma as f32,
            alpha: self.alpha.unwrap_or(0.0) as f32,
            ignore_f: self.ignore_index.unwrap_or(0) as f32,
            grad_scale: opts.scale,
            ignore_i: ignore_i.unwrap_or(0),
            pad: [0; 3],
        };
        let src = source(multi, self.normalized, none, f16)
            .with("QW", crate::kernel::simd_runs(ctx))
            .with_accumulate(opts.accumulate);
        let flag = rec.flag_bind(ctx, 9, NAME)?;
        // Placeholders for the bindings a variant does not use (one read-only, one written:
        // a buffer cannot be both in one dispatch).
        let placeholder = rec.buf(ctx, 4)?;
        let placeholder_rw = rec.buf(ctx, 4)?;
        let partials = rec.buf(ctx, (2 * groups + 1) * tiles * 4)?;
        let elem = if none {
            Some(ctx.empty(&self.none_shape(x.shape(), t.shape()), DType::F32)?)
        } else {
            None
        };

        // (params, binds of x, t, labels, the gradient, the per-pixel loss) of each window.
        let mut per_window = Vec::with_capacity(windows.len());
        for w in &windows {
            let p = Params {
                pixels: w.pixels as u32,
                tile_base: w.tile_base as u32,
                label_base: w.label_base as u32,
                ..base
            };
            let binds = vec![
                w.elements(1, x),
                if multi {
                    placeholder.bind(2)
                } else {
                    w.elements(2, t)
                },
                if multi {
                    w.per_pixel(3, t)
                } else {
                    placeholder.bind(3)
                },
            ];
            let elem_bind = match &elem {
                Some(e) => w.per_pixel(10, e),
                None => placeholder_rw.bind(10),
            };
            per_window.push((p, binds, w.elements(4, &grad), elem_bind, w.tiles));
        }
        for (p, binds, _, _, n_tiles) in &per_window {
            let mut b = binds.clone();
            b.push(partials.bind(5));
            b.push(flag.clone());
            rec.prog
                .steps
                .push(ctx.step(&src, "stats", p, b, *n_tiles)?);
        }
        // With `none` the scalar is scratch the recorder keeps until the work has run.
        let (loss, loss_bind) = match elem {
            Some(e) => (e, rec.buf(ctx, 4)?.bind(7)),
            None => {
                let l = ctx.empty(&[], DType::F32)?;
                let b = Bind::tensor(7, &l);
                (l, b)
            }
        };
        let fin = rec.reduce_finalize(
            ctx,
            &src,
            &base,
            Tail {
                partials: partials.clone(),
                rows: 2 * groups + 1,
                cols: tiles,
                totals: 6,
                loss: loss_bind,
                coef: Some((8, 3 * groups)),
                extra: Vec::new(),
            },
        )?;
        let coef = fin.coef.ok_or_else(|| {
            Error::InvalidInput(format!("{NAME}: the finalize step made no coefficients"))
        })?;
        for (p, binds, grad_bind, elem_bind, n_tiles) in per_window {
            let mut b = binds;
            b.extend([grad_bind, coef.bind(8), flag.clone(), elem_bind]);
            rec.prog
                .steps
                .push(ctx.step(&src, "grad_pass", &p, b, n_tiles)?);
        }
        Ok((loss, vec![grad]))
    }
}
