//! `ContrastiveLoss` (shaders/contrastive.wgsl): Euclidean (PyTorch `pairwise_distance`) or
//! cosine (`1 - cosine_similarity`) distance of pairs of embeddings, soft labels in [0, 1].

use super::{want_dtype, GradOpts, Loss, Recorder, Tail};
use crate::config::{ContrastiveLoss, Distance, Reduction};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{lanes_for, with_accumulate_variants, Bind, ShaderSource, Window, WG};
use crate::tensor::{DType, Tensor};

/// The shader, after the row-segment reductions it shares with cross-entropy.
const BODY: &str = concat!(
    include_str!(concat!(env!("OUT_DIR"), "/shaders/segment.wgsl")),
    include_str!(concat!(env!("OUT_DIR"), "/shaders/contrastive.wgsl"))
);
const TPRS: [u32; 7] = [4, 8, 16, 32, 64, 128, 256];

/// `lanes` 4 where D is a multiple of 4 (rows then start 16-byte aligned).
fn source(tpr: u32, lanes: u32, cosine: bool) -> ShaderSource {
    ShaderSource::new("contrastive", BODY)
        .with("TPR", tpr)
        .with("COSINE", cosine as u32)
        .with_lanes(lanes)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for &tpr in &TPRS {
        for lanes in [1, 4] {
            for cosine in [false, true] {
                v.push(source(tpr, lanes, cosine));
            }
        }
    }
    with_accumulate_variants(v)
}

/// Threads per pair for embeddings of width D: a segment of one subgroup (or 32 threads) for
/// medium D, as cross_entropy.rs.
fn threads_per_row(dim: usize, subgroup: Option<u32>) -> u32 {
    if dim <= 32 {
        4
    } else if dim <= 1024 {
        super::segment_threads(subgroup)
    } else {
        256
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    dim: u32,
    flags: u32,
    part_base: u32,
    margin: f32,
    grad_scale: f32,
    loss_scale: f32,
    pairwise_eps: f32,
    label_base: u32,
    _pad: [u32; 3],
}

impl Loss for ContrastiveLoss {
    fn name(&self) -> &'static str {
        "ContrastiveLoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["embeddings1", "embeddings2", "label"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["embeddings1", "embeddings2"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        const WHAT: &str = "ContrastiveLoss";
        let (e1, e2, y) = (inputs[0], inputs[1], inputs[2]);
        let (n, d) = self.check_shapes(e1.shape(), e2.shape(), y.shape())?;
        for (name, t) in [("embeddings1", e1), ("embeddings2", e2), ("label", y)] {
            want_dtype(WHAT, name, t, DType::F32)?;
        }
        if d > u32::MAX as usize {
            return Err(Error::TooLarge(format!(
                "{WHAT}: D = {d} does not fit 32-bit indices"
            )));
        }
        let g1 = opts.grad_for(ctx, 0, e1)?;
        let g2 = opts.grad_for(ctx, 1, e2)?;
        if g1.same_buffer(&g2) && g1.offset() == g2.offset() {
            return Err(Error::InvalidInput(format!(
                "{WHAT}: the two gradients must be distinct tensors"
            )));
        }
        let (n, d) = (n as u64, d as u64);
        let tpr = threads_per_row(d as usize, ctx.subgroup_size());
        let cosine = self.distance == Distance::Cosine;
        let src = source(tpr, lanes_for(d), cosine).with_accumulate(opts.accumulate);
        let rpw = (WG / tpr) as u64;
        let mean_scale = match self.reduction {
            Reduction::Mean => 1.0 / rec.count(n, 1) as f64,
            Reduction::Sum | Reduction::None => 1.0,
        };
        let base = Params {
            rows: 0,
            dim: d as u32,
            flags: (opts.flags() & 1) | if cosine { 2 } else { 0 },
            part_base: 0,
            margin: self.margin as f32,
            grad_scale: (opts.scale as f64 * mean_scale) as f32,
            loss_scale: mean_scale as f32,
            pairwise_eps: 1e-6,
            label_base: 0,
            _pad: [0; 3],
        };
        // Windows over the pairs. The labels (and the `none` losses) are bound whole when they
        // fit one binding, else windowed too, with windows that keep their offsets aligned.
        let labels_whole = n * 4 <= ctx.max_window_bytes;
        let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let windows = ctx.windows(n, d * 4, if labels_whole { 1 } else { align / 4 })?;
        let label_bind = |binding: u32, w: &Window, tensor: &Tensor| {
            if labels_whole {
                Bind::tensor(binding, tensor)
            } else {
                Bind::window(binding, tensor, w.first, w.count)
            }
        };
        let window_params = |w: &Window| Params {
            rows: w.count as u32,
            label_base: if labels_whole { w.first as u32 } else { 0 },
            ..base
        };
        let io = |w: &Window| {
            vec![
                Bind::window(1, e1, w.first * d, w.count * d),
                Bind::window(2, e2, w.first * d, w.count * d),
                label_bind(3, w, y),
                Bind::window(4, &g1, w.first * d, w.count * d),
                Bind::window(5, &g2, w.first * d, w.count * d),
            ]
        };

        if self.reduction == Reduction::None {
            let elem = ctx.empty(&[n as usize], DType::F32)?;
            for w in &windows {
                let mut binds = io(w);
                binds.push(label_bind(7, w, &elem));
                rec.prog.steps.push(ctx.step(
                    &src,
                    "rows_none",
                    &window_params(w),
                    binds,
                    w.count.div_ceil(rpw),
                )?);
            }
            return Ok((elem, vec![g1, g2]));
        }

        let groups: u64 = windows.iter().map(|w| w.count.div_ceil(rpw)).sum();
        let partials = rec.buf(ctx, groups * 4)?;
        let mut part_base = 0u64;
        for w in &windows {
            let p = Params {
                part_base: part_base as u32,
                ..window_params(w)
            };
            let mut binds = io(w);
            binds.push(partials.bind(6));
            rec.prog
                .steps
                .push(ctx.step(&src, "rows_reduce", &p, binds, w.count.div_ceil(rpw))?);
            part_base += w.count.div_ceil(rpw);
        }
        let loss = ctx.empty(&[], DType::F32)?;
        rec.reduce_finalize(
            ctx,
            &src,
            &base,
            Tail {
                partials,
                rows: 1,
                cols: groups,
                totals: 8,
                loss: Bind::tensor(9, &loss),
                coef: None,
                extra: Vec::new(),
            },
        )?;
        Ok((loss, vec![g1, g2]))
    }
}
