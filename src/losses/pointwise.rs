//! `MSELoss`, `L1Loss` and `RMSELoss` (shaders/pointwise.wgsl).

use super::{float_inputs, GradOpts, Loss, Recorder, Tail};
use crate::config::{L1Loss, MSELoss, RMSELoss, Reduction};
use crate::context::LossContext;
use crate::error::Result;
use crate::kernel::{lanes_for, with_accumulate_variants, Bind, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/pointwise.wgsl"));
/// Elements per workgroup tile (pointwise.wgsl `ITEMS * WG`).
pub(crate) const TILE: u64 = 32 * WG as u64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mse = 0,
    L1 = 1,
    Rmse = 2,
}

fn source(kind: Kind, f16: bool, lanes: u32) -> ShaderSource {
    ShaderSource::new("pointwise", BODY)
        .with("KIND", kind as u32)
        .with_f16(f16)
        .with_lanes(lanes)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for f16 in [false, true] {
        for lanes in [1, 4] {
            for kind in [Kind::Mse, Kind::L1, Kind::Rmse] {
                v.push(source(kind, f16, lanes));
            }
        }
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
    grad_scale: f32,
    inv_n: f32,
    eps: f32,
    loss_scale: f32,
}

#[allow(clippy::too_many_arguments)]
fn build(
    ctx: &LossContext,
    what: &str,
    kind: Kind,
    reduction: Reduction,
    eps: f64,
    a: &Tensor,
    t: &Tensor,
    opts: &GradOpts,
    rec: &mut Recorder,
) -> Result<(Tensor, Vec<Tensor>)> {
    let f16 = float_inputs(ctx, what, &[("input", a), ("target", t)])?;
    let n = a.numel() as u64;
    let src = source(kind, f16, lanes_for(n)).with_accumulate(opts.accumulate);
    let grad = opts.grad_for(ctx, 0, a)?;
    let tiles = n.div_ceil(TILE);
    // The element count of the mean: of the whole batch when this is one shard of it.
    let big_n = rec.count(n, super::per_row(a.shape()));
    let (loss_scale, red_scale) = match reduction {
        // RMSE's gradient kernel divides by N itself.
        _ if kind == Kind::Rmse => (1.0, 1.0),
        Reduction::Mean => (1.0 / big_n as f64, 1.0 / big_n as f64),
        Reduction::Sum | Reduction::None => (1.0, 1.0),
    };
    let base = Params {
        n: 0,
        tile_base: 0,
        tiles: tiles as u32,
        flags: opts.flags(),
        grad_scale: (opts.scale as f64 * red_scale) as f32,
        inv_n: (1.0 / big_n as f64) as f32,
        eps: eps as f32,
        loss_scale: loss_scale as f32,
    };
    let windows = ctx.windows(n, 4, TILE)?;
    let per_window = |w: &crate::kernel::Window| Params {
        n: w.count as u32,
        tile_base: (w.first / TILE) as u32,
        ..base
    };
    let io = |w: &crate::kernel::Window| {
        vec![
            Bind::window(1, a, w.first, w.count),
            Bind::window(2, t, w.first, w.count),
            Bind::window(3, &grad, w.first, w.count),
        ]
    };

    if reduction == Reduction::None && kind != Kind::Rmse {
        let elem = ctx.empty(a.shape(), DType::F32)?;
        for w in &windows {
            let mut binds = io(w);
            binds.push(Bind::window(7, &elem, w.first, w.count));
            let step = ctx.step(&src, "none", &per_window(w), binds, w.count.div_ceil(TILE))?;
            rec.prog.steps.push(step);
        }
        return Ok((elem, vec![grad]));
    }

    let partials = rec.buf(ctx, tiles * 4)?;
    for w in &windows {
        let (entry, mut binds) = if kind == Kind::Rmse {
            ("stats", io(w)[..2].to_vec())
        } else {
            ("stats_grad", io(w))
        };
        binds.push(partials.bind(4));
        let step = ctx.step(&src, entry, &per_window(w), binds, w.count.div_ceil(TILE))?;
        rec.prog.steps.push(step);
    }
    let loss = ctx.empty(&[], DType::F32)?;
    let fin = rec.reduce_finalize(
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
    if kind == Kind::Rmse {
        for w in &windows {
            let mut binds = io(w);
            binds.push(fin.totals.bind(5));
            let step = ctx.step(
                &src,
                "rmse_grad",
                &per_window(w),
                binds,
                w.count.div_ceil(TILE),
            )?;
            rec.prog.steps.push(step);
        }
    }
    Ok((loss, vec![grad]))
}

impl Loss for RMSELoss {
    fn name(&self) -> &'static str {
        "RMSELoss"
    }
    fn input_names(&self) -> &'static [&'static str] {
        &["output", "target"]
    }
    fn grad_names(&self) -> &'static [&'static str] {
        &["output"]
    }
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        build(
            ctx,
            "RMSELoss",
            Kind::Rmse,
            Reduction::Mean,
            self.eps,
            inputs[0],
            inputs[1],
            opts,
            rec,
        )
    }
}

impl Loss for MSELoss {
    fn name(&self) -> &'static str {
        "MSELoss"
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
        self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        build(
            ctx,
            "MSELoss",
            Kind::Mse,
            self.reduction,
            0.0,
            inputs[0],
            inputs[1],
            opts,
            rec,
        )
    }
}

impl Loss for L1Loss {
    fn name(&self) -> &'static str {
        "L1Loss"
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
        self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        build(
            ctx,
            "L1Loss",
            Kind::L1,
            self.reduction,
            0.0,
            inputs[0],
            inputs[1],
            opts,
            rec,
        )
    }
}
