//! The per-operation baseline (what autograd would run, one kernel per operation) and the copy
//! kernels of the roofline.

use super::*;

pub(crate) const OPS: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/ops.wgsl"));
pub(crate) const OPS_TILE: u64 = 4 * WG as u64;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    vec![ops_source(1), ops_source(4)]
}

pub(crate) fn ops_source(lanes: u32) -> ShaderSource {
    ShaderSource::new("ops", OPS).with_lanes(lanes)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct OpParams {
    n: u32,
    row: u32,
    i0: u32,
    i1: u32,
    c0: f32,
    c1: f32,
    tiles: u32,
    pad: u32,
}

/// Records the kernels of the per-operation baseline.
pub(crate) struct Ops<'a> {
    ctx: &'a LossContext,
    prog: Program,
    scratch: Scratch,
    temps: Vec<Tensor>,
    n: u64,
    src: ShaderSource,
}

impl<'a> Ops<'a> {
    pub(crate) fn new(ctx: &'a LossContext, n: u64) -> Result<Self> {
        if n * 4 > ctx.max_window_bytes {
            return Err(Error::TooLarge(
                "the per-operation baseline runs on tensors of one storage binding".into(),
            ));
        }
        Ok(Ops {
            ctx,
            prog: Program::default(),
            scratch: Scratch::default(),
            temps: Vec::new(),
            n,
            src: ops_source(crate::kernel::lanes_for(n)),
        })
    }

    fn params(&self, c0: f32, c1: f32) -> OpParams {
        OpParams {
            n: self.n as u32,
            row: 0,
            i0: 0,
            i1: 0,
            c0,
            c1,
            tiles: self.n.div_ceil(OPS_TILE) as u32,
            pad: 0,
        }
    }

    fn launch(&mut self, entry: &str, p: OpParams, binds: Vec<Bind>, groups: u64) -> Result<()> {
        let step = self.ctx.step(&self.src, entry, &p, binds, groups)?;
        self.prog.steps.push(step);
        Ok(())
    }

    fn temp(&mut self, len: usize) -> Result<Tensor> {
        let t = self.ctx.empty(&[len], DType::F32)?;
        self.temps.push(t.clone());
        Ok(t)
    }

    /// `out = op(a)` (c0 for add_c).
    fn un(&mut self, entry: &str, a: &Tensor, c0: f32) -> Result<Tensor> {
        let out = self.temp(self.n as usize)?;
        let p = self.params(c0, 0.0);
        self.launch(
            entry,
            p,
            vec![Bind::tensor(1, a), Bind::tensor(3, &out)],
            self.n.div_ceil(OPS_TILE),
        )?;
        Ok(out)
    }

    /// `out = op(a, b)` (c0, c1 for lin2).
    fn bin(&mut self, entry: &str, a: &Tensor, b: &Tensor, c0: f32, c1: f32) -> Result<Tensor> {
        let out = self.temp(self.n as usize)?;
        let p = self.params(c0, c1);
        self.launch(
            entry,
            p,
            vec![
                Bind::tensor(1, a),
                Bind::tensor(2, b),
                Bind::tensor(3, &out),
            ],
            self.n.div_ceil(OPS_TILE),
        )?;
        Ok(out)
    }

    /// `out = a * s[i0] (+ s[i1])`.
    fn scal(&mut self, entry: &str, a: &Tensor, s: &Tensor, i0: u32, i1: u32) -> Result<Tensor> {
        let out = self.temp(self.n as usize)?;
        let p = OpParams {
            i0,
            i1,
            ..self.params(0.0, 0.0)
        };
        self.launch(
            entry,
            p,
            vec![
                Bind::tensor(1, a),
                Bind::tensor(3, &out),
                Bind::tensor(4, s),
            ],
            self.n.div_ceil(OPS_TILE),
        )?;
        Ok(out)
    }

    /// The sums of `xs` (one kernel each, then one reduction), then the scalar tail `opcode`.
    fn sums_then_scalar(&mut self, xs: &[&Tensor], opcode: u32, c0: f32) -> Result<Tensor> {
        let tiles = self.n.div_ceil(OPS_TILE);
        let partials = self
            .ctx
            .alloc(xs.len() as u64 * tiles * 4, LossContext::storage_usage())?;
        for (row, x) in xs.iter().enumerate() {
            let p = OpParams {
                row: row as u32,
                ..self.params(0.0, 0.0)
            };
            self.launch(
                "sum_op",
                p,
                vec![Bind::tensor(1, x), Bind::scratch(5, &partials)],
                tiles,
            )?;
        }
        let totals: PoolBuf = self.ctx.reduce_rows(
            &mut self.prog,
            &mut self.scratch,
            &partials,
            xs.len() as u64,
            tiles,
        )?;
        self.scratch.keep(partials);
        let out = self.temp(4)?;
        let p = OpParams {
            row: opcode,
            ..self.params(c0, 0.0)
        };
        self.launch(
            "scalar_op",
            p,
            vec![Bind::scratch(4, &totals), Bind::tensor(8, &out)],
            1,
        )?;
        self.scratch.keep(totals);
        Ok(out)
    }

    pub(crate) fn finish(self, enc: &mut wgpu::CommandEncoder) -> Result<(Scratch, Vec<Tensor>)> {
        let mut scratch = self.scratch;
        self.ctx.encode(self.prog, enc, &mut scratch)?;
        Ok((scratch, self.temps))
    }
}

/// The per-operation baseline of a loss: (loss scalar tensor, gradient), recorded into `enc`.
pub(crate) type Baseline = fn(&mut Ops, &[&Tensor]) -> Result<(Tensor, Tensor)>;

pub(crate) fn baseline_rmse(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let q = o.bin("mul_op", &d, &d, 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&q], 0, 1e-6)?;
    let g = o.scal("mul_scalar_op", &d, &s, 1, 0)?;
    Ok((s, g))
}

pub(crate) fn baseline_mse(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let q = o.bin("mul_op", &d, &d, 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&q], 1, 2.0)?;
    let g = o.scal("mul_scalar_op", &d, &s, 1, 0)?;
    Ok((s, g))
}

pub(crate) fn baseline_l1(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let a = o.un("abs_op", &d, 0.0)?;
    let s = o.sums_then_scalar(&[&a], 1, 1.0)?;
    let sg = o.un("sign_op", &d, 0.0)?;
    let g = o.scal("mul_scalar_op", &sg, &s, 1, 0)?;
    Ok((s, g))
}

pub(crate) fn baseline_bce(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let sp = o.un("softplus_op", x[0], 0.0)?;
    let xt = o.bin("mul_op", x[0], x[1], 0.0, 0.0)?;
    let l = o.bin("sub_op", &sp, &xt, 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&l], 1, 1.0)?;
    let sg = o.un("sigmoid_op", x[0], 0.0)?;
    let d = o.bin("sub_op", &sg, x[1], 0.0, 0.0)?;
    let g = o.scal("mul_scalar_op", &d, &s, 1, 0)?;
    Ok((s, g))
}

/// deepml's weighted BCE with w_p = 3, w_n = 1, epsilon = 1e-7, as autograd would run it.
pub(crate) fn baseline_wbce(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let (w_p, w_n, eps) = (3.0, 1.0, 1e-7);
    let s = o.un("sigmoid_op", x[0], 0.0)?;
    let nx = o.un("neg_op", x[0], 0.0)?;
    let ns = o.un("sigmoid_op", &nx, 0.0)?;
    let a1 = o.un("add_c_op", &s, eps)?;
    let a2 = o.un("add_c_op", &ns, eps)?;
    let l1 = o.un("log_op", &a1, 0.0)?;
    let l2 = o.un("log_op", &a2, 0.0)?;
    let pos = o.bin("mul_op", x[1], &l1, 0.0, 0.0)?;
    let omt = o.un("one_minus_op", x[1], 0.0)?;
    let neg = o.bin("mul_op", &omt, &l2, 0.0, 0.0)?;
    let l = o.bin("lin2_op", &pos, &neg, -w_p, -w_n)?;
    let tot = o.sums_then_scalar(&[&l], 1, 1.0)?;
    // d/dx: -(w_p t s ns / (s + eps) - w_n (1 - t) s ns / (ns + eps)) / N
    let ds = o.bin("mul_op", &s, &ns, 0.0, 0.0)?;
    let q1 = o.bin("div_op", &ds, &a1, 0.0, 0.0)?;
    let q2 = o.bin("div_op", &ds, &a2, 0.0, 0.0)?;
    let p1 = o.bin("mul_op", x[1], &q1, 0.0, 0.0)?;
    let p2 = o.bin("mul_op", &omt, &q2, 0.0, 0.0)?;
    let g = o.bin("lin2_op", &p1, &p2, -w_p, w_n)?;
    let g = o.scal("mul_scalar_op", &g, &tot, 1, 0)?;
    Ok((tot, g))
}

pub(crate) fn baseline_jaccard(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let p = o.un("sigmoid_op", x[0], 0.0)?;
    let pt = o.bin("mul_op", &p, x[1], 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&pt, &p, x[1]], 2, 1e-7)?;
    let gp = o.scal("fma_scalar_op", x[1], &s, 1, 2)?;
    let omp = o.un("one_minus_op", &p, 0.0)?;
    let ds = o.bin("mul_op", &p, &omp, 0.0, 0.0)?;
    let g = o.bin("mul_op", &gp, &ds, 0.0, 0.0)?;
    Ok((s, g))
}

/// The copy kernels over two buffers of the benchmark's size: the adapter's own bandwidth.
pub(crate) struct Roofline {
    a: Tensor,
    b: Tensor,
    pub(crate) n: u64,
}

impl Roofline {
    pub(crate) fn new(ctx: &LossContext, opts: &BenchOptions) -> Result<Self> {
        let n = (opts.size as u64).min(ctx.max_window_bytes / 4) / 4 * 4;
        Ok(Roofline {
            a: ctx.empty(&[n as usize], DType::F32)?,
            b: ctx.empty(&[n as usize], DType::F32)?,
            n,
        })
    }

    /// Records the copy with `lanes` (1 or 4) floats per element; keep the result until the
    /// work is done.
    pub(crate) fn record(
        &self,
        ctx: &LossContext,
        enc: &mut wgpu::CommandEncoder,
        lanes: u64,
    ) -> Result<(Scratch, Vec<Tensor>)> {
        let n = self.n;
        let mut ops = Ops::new(ctx, n)?;
        // copy_op in the one-lane variant: 4-byte elements.
        ops.src = ops_source(1);
        let p = OpParams {
            n: (n / lanes) as u32,
            ..ops.params(0.0, 0.0)
        };
        let (entry, ia, ib) = if lanes == 1 {
            ("copy_op", 1, 3)
        } else {
            ("copy4_op", 6, 7)
        };
        let binds = vec![Bind::tensor(ia, &self.a), Bind::tensor(ib, &self.b)];
        ops.launch(entry, p, binds, (n / lanes).div_ceil(OPS_TILE))?;
        ops.finish(enc)
    }

    /// GB/s (read plus write) of the copy with `lanes` (1 or 4) floats per element.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn gbps(
        &self,
        ctx: &LossContext,
        timer: &Timer,
        opts: &BenchOptions,
        lanes: u64,
    ) -> Result<f64> {
        let ms = timer.median(ctx, opts, |enc| self.record(ctx, enc, lanes))?;
        Ok(2.0 * 4.0 * self.n as f64 / (ms * 1e6))
    }
}
