//! `WeightedBCEWithLogitsLoss` (deepml) and `BCEWithLogitsLoss` (PyTorch) (shaders/bce.wgsl):
//! one pass computing the loss partials and the gradient, the tree reduction, a finalize step.

use super::{want_dtype, GradOpts, Loss, Recorder, Slot, Tail};
use crate::config::{
    BCEWithLogitsLoss, Broadcast, HostTensor, Reduction, WeightedBCEWithLogitsLoss,
};
use crate::context::LossContext;
use crate::error::Result;
use crate::kernel::{lanes_for, with_accumulate_variants, Bind, ShaderSource, Window, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/bce.wgsl"));
/// Elements per workgroup tile (bce.wgsl `ITEMS * WG`).
const TILE: u64 = 32 * WG as u64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Weighted = 0,
    Torch = 1,
}

/// `broadcast`: weight or pos_weight varies; `exact`: the weighted loss's epsilon is 0.
fn source(kind: Kind, lanes: u32, broadcast: bool, exact: bool) -> ShaderSource {
    ShaderSource::new("bce", BODY)
        .with("KIND", kind as u32)
        .with("BROADCAST", broadcast as u32)
        .with("EXACT", exact as u32)
        .with_lanes(lanes)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for lanes in [1, 4] {
        v.push(source(Kind::Weighted, lanes, false, false));
        v.push(source(Kind::Weighted, lanes, false, true));
        v.push(source(Kind::Torch, lanes, false, false));
        v.push(source(Kind::Torch, lanes, true, false));
    }
    with_accumulate_variants(v)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    tile_base: u32,
    tiles: u32,
    flags: u32,
    w: [u32; 4],
    pw: [u32; 4],
    grad_scale: f32,
    loss_scale: f32,
    w_p: f32,
    w_n: f32,
    epsilon: f32,
    w_one: f32,
    pw_one: f32,
    pad: f32,
}

/// A broadcast argument on the device: its values (or a single 1.0) and how they repeat.
struct Arg {
    buf: Slot,
    b: Broadcast,
    /// The value of every element where it does not vary (period 1), passed as a uniform.
    one: f32,
}

impl Arg {
    fn new(
        ctx: &LossContext,
        rec: &mut Recorder,
        t: Option<(&HostTensor, Broadcast)>,
    ) -> Result<Arg> {
        let (data, b) = match t {
            Some((h, b)) => (h.data.clone(), b),
            None => (
                vec![1.0f32],
                Broadcast {
                    stride: 1,
                    period: 1,
                },
            ),
        };
        let buf = rec.buf_from(ctx, &data)?;
        Ok(Arg {
            buf,
            one: data.first().copied().unwrap_or(1.0),
            b: Broadcast {
                stride: b.stride.max(1),
                period: b.period.max(1),
            },
        })
    }
    /// `[stride, period, base_q, base_r]` for a window starting at element `first`.
    fn params(&self, first: u64) -> [u32; 4] {
        let (stride, period) = (self.b.stride as u64, self.b.period as u64);
        [
            stride as u32,
            period as u32,
            ((first / stride) % period) as u32,
            (first % stride) as u32,
        ]
    }
}

struct Setup<'a> {
    what: &'a str,
    kind: Kind,
    reduction: Reduction,
    w_p: f64,
    w_n: f64,
    epsilon: f64,
    weight: Option<(&'a HostTensor, Broadcast)>,
    pos_weight: Option<(&'a HostTensor, Broadcast)>,
    /// The shape of the `none` loss.
    none_shape: Vec<usize>,
}

fn build(
    ctx: &LossContext,
    s: Setup,
    x: &Tensor,
    t: &Tensor,
    opts: &GradOpts,
    rec: &mut Recorder,
) -> Result<(Tensor, Vec<Tensor>)> {
    want_dtype(s.what, "input", x, DType::F32)?;
    want_dtype(s.what, "target", t, DType::F32)?;
    let n = x.numel() as u64;
    let grad = opts.grad_for(ctx, 0, x)?;
    let weight = Arg::new(ctx, rec, s.weight)?;
    let pos_weight = Arg::new(ctx, rec, s.pos_weight)?;
    let broadcast = weight.b.period > 1 || pos_weight.b.period > 1;
    let exact = s.kind == Kind::Weighted && s.epsilon == 0.0;
    let src = source(s.kind, lanes_for(n), broadcast, exact).with_accumulate(opts.accumulate);
    let tiles = n.div_ceil(TILE);
    let scale = match s.reduction {
        Reduction::Mean => 1.0 / rec.count(n, super::per_row(x.shape())) as f64,
        Reduction::Sum | Reduction::None => 1.0,
    };
    let base = Params {
        n: 0,
        tile_base: 0,
        tiles: tiles as u32,
        flags: opts.flags(),
        w: [1, 1, 0, 0],
        pw: [1, 1, 0, 0],
        grad_scale: (opts.scale as f64 * scale) as f32,
        loss_scale: scale as f32,
        w_p: s.w_p as f32,
        w_n: s.w_n as f32,
        epsilon: s.epsilon as f32,
        w_one: weight.one,
        pw_one: pos_weight.one,
        pad: 0.0,
    };
    let windows = ctx.windows(n, 4, TILE)?;
    let per_window = |w: &Window| Params {
        n: w.count as u32,
        tile_base: (w.first / TILE) as u32,
        w: weight.params(w.first),
        pw: pos_weight.params(w.first),
        ..base
    };
    let io = |w: &Window| {
        vec![
            Bind::window(1, x, w.first, w.count),
            Bind::window(2, t, w.first, w.count),
            Bind::window(3, &grad, w.first, w.count),
            weight.buf.bind(8),
            pos_weight.buf.bind(9),
        ]
    };

    let loss = if s.reduction == Reduction::None {
        let elem = ctx.empty(&s.none_shape, DType::F32)?;
        for w in &windows {
            let mut binds = io(w);
            binds.push(Bind::window(7, &elem, w.first, w.count));
            let step = ctx.step(&src, "none", &per_window(w), binds, w.count.div_ceil(TILE))?;
            rec.prog.steps.push(step);
        }
        elem
    } else {
        let partials = rec.buf(ctx, tiles * 4)?;
        for w in &windows {
            let mut binds = io(w);
            binds.push(partials.bind(4));
            let step = ctx.step(
                &src,
                "stats_grad",
                &per_window(w),
                binds,
                w.count.div_ceil(TILE),
            )?;
            rec.prog.steps.push(step);
        }
        let loss = ctx.empty(&[], DType::F32)?;
        rec.reduce_finalize(
            ctx,
            &src,
            &base,
            Tail {
                partials,
                rows: 1,
                cols: tiles,
                totals: 5,
                loss: Bind::tensor(6, &loss),
                coef: None,
                extra: Vec::new(),
            },
        )?;
        loss
    };
    Ok((loss, vec![grad]))
}

impl Loss for WeightedBCEWithLogitsLoss {
    fn name(&self) -> &'static str {
        "WeightedBCEWithLogitsLoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["logits", "labels"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["logits"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let n = self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        let setup = Setup {
            what: "WeightedBCEWithLogitsLoss",
            kind: Kind::Weighted,
            reduction: self.reduction,
            w_p: self.w_p,
            w_n: self.w_n,
            epsilon: self.epsilon,
            weight: None,
            pos_weight: None,
            none_shape: vec![n],
        };
        build(ctx, setup, inputs[0], inputs[1], opts, rec)
    }
}

impl Loss for BCEWithLogitsLoss {
    fn name(&self) -> &'static str {
        "BCEWithLogitsLoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["input", "target"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["input"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let (_, wb, pwb) = self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        let setup = Setup {
            what: "BCEWithLogitsLoss",
            kind: Kind::Torch,
            reduction: self.reduction,
            w_p: 1.0,
            w_n: 1.0,
            epsilon: 0.0,
            weight: self.weight.as_ref().zip(wb),
            pos_weight: self.pos_weight.as_ref().zip(pwb),
            none_shape: inputs[0].shape().to_vec(),
        };
        build(ctx, setup, inputs[0], inputs[1], opts, rec)
    }
}
