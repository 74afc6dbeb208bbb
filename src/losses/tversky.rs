//! `TverskyLoss`, exactly as segmentation_models_pytorch 0.6 defines it
//! (shaders/tversky.wgsl): a statistics pass (per class `I`, `sum p`, `sum t`), the
//! deterministic reduction and finalize (`Recorder::reduce_finalize`), and a gradient pass
//! through the sigmoid or the channel softmax.

use super::pixels::{pixel_windows, smp_inputs};
use super::{GradOpts, Loss, Recorder, Tail};
use crate::config::{check_smp, ChannelLayout, SmpMode};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{with_accumulate_variants, Bind, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/tversky.wgsl"));
const NAME: &str = "TverskyLoss";
/// Pixels per workgroup tile (tversky.wgsl `ITEMS * WG`).
const TILE: u64 = 16 * WG as u64;

/// `TverskyLoss(mode, alpha = 0.5, beta = 0.5, gamma = 1.0, smooth = 0.0, eps = 1e-7)` of
/// segmentation_models_pytorch, on logits `y_pred`.
///
/// `p = sigmoid(y_pred)` in `binary` and `multilabel` modes, the softmax over dimension 1 in
/// `multiclass` mode (whose `y_true` holds class indices, one-hot encoded). Per class `c`,
/// summed over the batch and the spatial positions (`binary`: one class over everything):
/// `I = sum p t`, `FP = sum p (1 - t)`, `FN = sum (1 - p) t`,
/// `score_c = (I + smooth) / max(I + alpha FP + beta FN + smooth, eps)`,
/// `loss_c = 1 - score_c`, 0 for a class absent from `y_true`; `loss = mean_c(loss_c)^gamma`.
/// With `alpha = beta = 0.5` it is the Dice loss.
///
/// A multiclass label outside `[0, C)` is `Error::LabelOutOfRange` (smp's one-hot raises too).
/// Where `mean_c(loss_c) = 0` and `gamma < 1` the gradient is 0 (PyTorch's is NaN there).
#[derive(Debug, Clone, PartialEq)]
pub struct TverskyLoss {
    /// `binary`, `multiclass` or `multilabel`.
    pub mode: SmpMode,
    /// The weight of the false positives.
    pub alpha: f64,
    /// The weight of the false negatives.
    pub beta: f64,
    /// The exponent of the mean loss (>= 0).
    pub gamma: f64,
    /// Added to the numerator and the denominator.
    pub smooth: f64,
    /// The floor of the denominator.
    pub eps: f64,
}

impl Default for TverskyLoss {
    fn default() -> Self {
        TverskyLoss::new(SmpMode::Binary)
    }
}

impl TverskyLoss {
    /// The loss of `mode` with smp's defaults.
    pub fn new(mode: SmpMode) -> Self {
        TverskyLoss {
            mode,
            alpha: 0.5,
            beta: 0.5,
            gamma: 1.0,
            smooth: 0.0,
            eps: 1e-7,
        }
    }

    /// The domain of the arguments: every one finite and >= 0.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("gamma", self.gamma),
            ("smooth", self.smooth),
            ("eps", self.eps),
        ] {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::InvalidConfig(format!(
                    "{NAME}: {name} must be finite and >= 0, got {v}"
                )));
            }
        }
        Ok(())
    }

    /// Checks the arguments and the shapes; returns the layout (`[numel, 1, 1]` in binary
    /// mode) and the number of classes.
    pub fn check_shapes(&self, y_pred: &[usize], y_true: &[usize]) -> Result<ChannelLayout> {
        self.validate()?;
        check_smp(NAME, self.mode, y_pred, y_true)
    }
}

fn source(mode: SmpMode, f16: bool) -> ShaderSource {
    let m = match mode {
        SmpMode::Binary => 0,
        SmpMode::Multiclass => 1,
        SmpMode::Multilabel => 2,
    };
    ShaderSource::new("tversky", BODY)
        .with("MODE", m)
        .with_f16(f16)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for mode in [SmpMode::Binary, SmpMode::Multiclass, SmpMode::Multilabel] {
        for f16 in [false, true] {
            for qw in [WG, 8] {
                v.push(source(mode, f16).with("QW", qw));
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
    label_base: u32,
    pad0: u32,
    alpha: f32,
    beta: f32,
    gamma: f32,
    smooth: f32,
    eps: f32,
    grad_scale: f32,
    pad1: [f32; 2],
}

impl Loss for TverskyLoss {
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
        let (windows, tiles) = pixel_windows(ctx, NAME, layout, x.dtype().size(), TILE)?;
        let base = Params {
            pixels: 0,
            inner: inner as u32,
            channels: c as u32,
            tile_base: 0,
            tiles: tiles as u32,
            groups: c as u32,
            label_base: 0,
            pad0: 0,
            alpha: self.alpha as f32,
            beta: self.beta as f32,
            gamma: self.gamma as f32,
            smooth: self.smooth as f32,
            eps: self.eps as f32,
            grad_scale: opts.scale,
            pad1: [0.0; 2],
        };
        let src = source(self.mode, f16)
            .with("QW", crate::kernel::simd_runs(ctx))
            .with_accumulate(opts.accumulate);
        let flag = rec.flag_bind(ctx, 9, NAME)?;
        let placeholder = rec.buf(ctx, 4)?;
        let partials = rec.buf(ctx, 3 * c * tiles * 4)?;
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
                flag.clone(),
            ];
            per_window.push((p, binds, w.elements(4, &grad), w.tiles));
        }
        for (p, binds, _, n_tiles) in &per_window {
            let mut b = binds.clone();
            b.push(partials.bind(5));
            rec.prog
                .steps
                .push(ctx.step(&src, "stats", p, b, *n_tiles)?);
        }
        let loss = ctx.empty(&[], DType::F32)?;
        let fin = rec.reduce_finalize(
            ctx,
            &src,
            &base,
            Tail {
                partials: partials.clone(),
                rows: 3 * c,
                cols: tiles,
                totals: 6,
                loss: Bind::tensor(7, &loss),
                coef: Some((8, 2 * c)),
                extra: Vec::new(),
            },
        )?;
        let coef = fin.coef.ok_or_else(|| {
            Error::InvalidInput(format!("{NAME}: the finalize step made no coefficients"))
        })?;
        for (p, binds, grad_bind, n_tiles) in per_window {
            let mut b = binds;
            b.extend([grad_bind, coef.bind(8)]);
            rec.prog
                .steps
                .push(ctx.step(&src, "grad_pass", &p, b, n_tiles)?);
        }
        Ok((loss, vec![grad]))
    }
}
