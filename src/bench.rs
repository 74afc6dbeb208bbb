//! `deepml bench`: value plus gradient of each loss, timed with timestamp queries (wall time
//! where the adapter has none), against two yardsticks measured in the same run: a copy kernel
//! (the adapter's own bandwidth, the roofline of memory-bound kernels) and a per-operation
//! baseline (one kernel per elementary operation, as an unfused tensor framework runs a loss).

#[cfg(not(target_arch = "wasm32"))]
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::cases::LossSpec;
use crate::config::*;
use crate::context::{LossContext, PoolBuf};
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, Scratch, ShaderSource, WG};
#[cfg(not(target_arch = "wasm32"))]
use crate::losses::{gpu_loss, GradOpts};
use crate::tensor::{DType, Tensor};

const OPS: &str = include_str!("../shaders/ops.wgsl");
const OPS_TILE: u64 = 4 * WG as u64;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    vec![ops_source(1), ops_source(4)]
}

fn ops_source(lanes: u32) -> ShaderSource {
    ShaderSource::new("ops", OPS).with_lanes(lanes)
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Elements per input tensor (default 16M).
    pub size: usize,
    /// Timed runs per measurement; the median is reported.
    pub runs: usize,
    /// Untimed runs first.
    pub warmup: usize,
    /// Only the losses whose name contains one of these (all when empty).
    pub only: Vec<String>,
    /// Which losses at which shapes: [`Suite::Default`] or [`Suite::Segmentation`].
    pub suite: Suite,
}

/// The sets of losses and shapes `deepml bench` can time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Suite {
    /// Every loss once, at shapes of `size` elements.
    #[default]
    Default,
    /// Segmentation losses over `[N, C, H, W]` logits, C in 2, 19, 21, 64 and 150, each also
    /// timed against MSELoss over the same number of elements.
    Segmentation,
}

impl std::str::FromStr for Suite {
    type Err = Error;
    fn from_str(s: &str) -> Result<Suite> {
        match s.to_lowercase().as_str() {
            "default" | "all" => Ok(Suite::Default),
            "segmentation" | "seg" => Ok(Suite::Segmentation),
            other => Err(Error::InvalidConfig(format!(
                "unknown bench suite {other:?} (default, segmentation)"
            ))),
        }
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            size: 1 << 24,
            runs: 7,
            warmup: 2,
            only: Vec::new(),
            suite: Suite::Default,
        }
    }
}

/// One loss's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    pub loss: String,
    pub shape: Vec<usize>,
    /// Median milliseconds of value plus gradient (one submission).
    pub ms: f64,
    /// Bytes that must move at least: every input read once, every gradient written once.
    pub compulsory_bytes: u64,
    /// `compulsory_bytes / ms`, in GB/s.
    pub gbps: f64,
    /// GB/s of the copy kernel timed right before and after this loss (the faster).
    #[serde(default)]
    pub copy_gbps: f64,
    /// `gbps` over `copy_gbps`.
    pub of_copy: f64,
    /// Median milliseconds of the per-operation baseline of the same loss, where there is one.
    pub baseline_ms: Option<f64>,
    /// `baseline_ms / ms`.
    pub speedup: Option<f64>,
    /// For matrix-product losses: GFLOP/s of the products.
    pub gflops: Option<f64>,
    /// Median milliseconds of MSELoss (value plus gradient) over as many elements as this
    /// loss's first input, timed in alternation with it (the segmentation suite).
    #[serde(default)]
    pub mse_ms: Option<f64>,
    /// This loss's time in units of MSELoss's on the same elements: the median of the ratios
    /// of the alternating runs (close to `ms / mse_ms`, steadier on a shared adapter).
    #[serde(default)]
    pub of_mse: Option<f64>,
    /// For matrix-product losses: each product alone at the loss's shapes (name, ms, GFLOP/s).
    #[serde(default)]
    pub products: Vec<(String, f64, f64)>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub adapter: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    /// `timestamp` (GPU timestamp queries) or `wall` (host clock around submit and wait).
    pub timer: String,
    /// The workgroup reductions: `subgroups of N` or `barrier tree`.
    #[serde(default)]
    pub reductions: String,
    /// The suite run (`default` or `segmentation`).
    #[serde(default)]
    pub suite: String,
    pub size: usize,
    pub runs: usize,
    /// GB/s of the copy kernel (bytes read plus bytes written) at the start of the run.
    pub copy_gbps: f64,
    pub results: Vec<BenchResult>,
}

/// The least wall time of the untimed runs before a measurement.
pub(crate) const WARMUP_SECONDS: f64 = 0.25;
pub(crate) const MAX_WARMUP_RUNS: usize = 5000;

#[cfg(not(target_arch = "wasm32"))]
struct Timer {
    query: Option<(wgpu::QuerySet, wgpu::Buffer, wgpu::Buffer, f64)>,
}

#[cfg(not(target_arch = "wasm32"))]
impl Timer {
    fn new(ctx: &LossContext) -> Timer {
        if !ctx.features.contains(
            wgpu::Features::TIMESTAMP_QUERY | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS,
        ) {
            return Timer { query: None };
        }
        let qs = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("deepml bench"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let read = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let period = ctx.queue.get_timestamp_period() as f64;
        Timer {
            query: Some((qs, resolve, read, period)),
        }
    }

    fn kind(&self) -> &'static str {
        if self.query.is_some() {
            "timestamp"
        } else {
            "wall"
        }
    }

    /// Milliseconds of the work `record` puts in one encoder.
    fn once<K>(
        &self,
        ctx: &LossContext,
        record: &mut dyn FnMut(&mut wgpu::CommandEncoder) -> Result<K>,
    ) -> Result<f64> {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        match &self.query {
            Some((qs, resolve, read, period)) => {
                enc.write_timestamp(qs, 0);
                let keep = record(&mut enc)?;
                enc.write_timestamp(qs, 1);
                enc.resolve_query_set(qs, 0..2, resolve, 0);
                enc.copy_buffer_to_buffer(resolve, 0, read, 0, 16);
                ctx.queue.submit(Some(enc.finish()));
                let (tx, rx) = std::sync::mpsc::channel();
                read.map_async(wgpu::MapMode::Read, .., move |r| {
                    let _ = tx.send(r);
                });
                ctx.synchronize()?;
                drop(keep);
                rx.recv()
                    .map_err(|_| Error::DeviceLost("timestamp read-back cancelled".into()))?
                    .map_err(|e| Error::wgpu(format!("timestamp read-back: {e}")))?;
                let ticks: Vec<u64> = {
                    let view = read
                        .get_mapped_range(..)
                        .map_err(|e| Error::wgpu(format!("{e:?}")))?;
                    bytemuck::pod_collect_to_vec(&view)
                };
                read.unmap();
                Ok(ticks[1].saturating_sub(ticks[0]) as f64 * period / 1e6)
            }
            None => {
                ctx.synchronize()?;
                let t0 = Instant::now();
                let keep = record(&mut enc)?;
                ctx.queue.submit(Some(enc.finish()));
                ctx.synchronize()?;
                drop(keep);
                Ok(t0.elapsed().as_secs_f64() * 1e3)
            }
        }
    }

    fn median<K>(
        &self,
        ctx: &LossContext,
        opts: &BenchOptions,
        mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<K>,
    ) -> Result<f64> {
        // At least `warmup` runs, and at least a quarter of a second: a fast GPU idles at a low
        // clock between the host-side preparations, and a few runs of a millisecond do not
        // bring it back up (seen on an H200: the same kernel 2.6 times slower after a long
        // preparation).
        let start = Instant::now();
        let mut done = 0;
        while done < opts.warmup
            || (start.elapsed().as_secs_f64() < WARMUP_SECONDS && done < MAX_WARMUP_RUNS)
        {
            self.once(ctx, &mut record)?;
            done += 1;
        }
        let mut t: Vec<f64> = (0..opts.runs.max(1))
            .map(|_| self.once(ctx, &mut record))
            .collect::<Result<_>>()?;
        t.sort_by(|a, b| a.total_cmp(b));
        Ok(t[t.len() / 2])
    }

    /// Two kernels timed in alternation (a, b, a, b, ...): the median of each and the median
    /// of the per-pair ratios a / b, so that a shared adapter's drift hits both alike.
    fn median_pair<K, L>(
        &self,
        ctx: &LossContext,
        opts: &BenchOptions,
        mut a: impl FnMut(&mut wgpu::CommandEncoder) -> Result<K>,
        mut b: impl FnMut(&mut wgpu::CommandEncoder) -> Result<L>,
    ) -> Result<(f64, f64, f64)> {
        let start = Instant::now();
        let mut done = 0;
        while done < opts.warmup
            || (start.elapsed().as_secs_f64() < WARMUP_SECONDS && done < MAX_WARMUP_RUNS)
        {
            self.once(ctx, &mut a)?;
            self.once(ctx, &mut b)?;
            done += 1;
        }
        let (mut ta, mut tb, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..opts.runs.max(1) {
            let x = self.once(ctx, &mut a)?;
            let y = self.once(ctx, &mut b)?;
            ta.push(x);
            tb.push(y);
            r.push(x / y);
        }
        let med = |mut v: Vec<f64>| {
            v.sort_by(|p, q| p.total_cmp(q));
            v[v.len() / 2]
        };
        Ok((med(ta), med(tb), med(r)))
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct OpParams {
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

fn baseline_rmse(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let q = o.bin("mul_op", &d, &d, 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&q], 0, 1e-6)?;
    let g = o.scal("mul_scalar_op", &d, &s, 1, 0)?;
    Ok((s, g))
}

fn baseline_mse(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let q = o.bin("mul_op", &d, &d, 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&q], 1, 2.0)?;
    let g = o.scal("mul_scalar_op", &d, &s, 1, 0)?;
    Ok((s, g))
}

fn baseline_l1(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let d = o.bin("sub_op", x[0], x[1], 0.0, 0.0)?;
    let a = o.un("abs_op", &d, 0.0)?;
    let s = o.sums_then_scalar(&[&a], 1, 1.0)?;
    let sg = o.un("sign_op", &d, 0.0)?;
    let g = o.scal("mul_scalar_op", &sg, &s, 1, 0)?;
    Ok((s, g))
}

fn baseline_bce(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
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
fn baseline_wbce(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
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

fn baseline_jaccard(o: &mut Ops, x: &[&Tensor]) -> Result<(Tensor, Tensor)> {
    let p = o.un("sigmoid_op", x[0], 0.0)?;
    let pt = o.bin("mul_op", &p, x[1], 0.0, 0.0)?;
    let s = o.sums_then_scalar(&[&pt, &p, x[1]], 2, 1e-7)?;
    let gp = o.scal("fma_scalar_op", x[1], &s, 1, 2)?;
    let omp = o.un("one_minus_op", &p, 0.0)?;
    let ds = o.bin("mul_op", &p, &omp, 0.0, 0.0)?;
    let g = o.bin("mul_op", &gp, &ds, 0.0, 0.0)?;
    Ok((s, g))
}

/// A benchmark entry: the loss, its inputs (host data and shapes), and its baseline.
pub(crate) struct Entry {
    pub(crate) spec: LossSpec,
    /// The name in the report when it is not the loss's own (a configuration of it).
    pub(crate) label: Option<String>,
    pub(crate) inputs: Vec<(Vec<usize>, Input)>,
    pub(crate) baseline: Option<Baseline>,
    pub(crate) flops: Option<f64>,
}

pub(crate) enum Input {
    F32 { lo: f32, hi: f32, binary: bool },
    Labels(usize),
}

pub(crate) fn entries(size: usize) -> Vec<Entry> {
    let f = |lo, hi| Input::F32 {
        lo,
        hi,
        binary: false,
    };
    let bin = Input::F32 {
        lo: 0.0,
        hi: 1.0,
        binary: true,
    };
    let flat = vec![size];
    let seg = vec![(size / 65536).max(1), 1, 256, 256];
    let rows = vec![(size / 1024).max(1), 1024];
    let pair = vec![(size / 128).max(1), 128];
    let mut v = vec![
        Entry {
            spec: LossSpec::of(JaccardLoss::new(false)),
            inputs: vec![(seg.clone(), f(-4.0, 4.0)), (seg.clone(), bin)],
            baseline: Some(baseline_jaccard),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(DiceLoss {
                is_multiclass: true,
                ..Default::default()
            }),
            inputs: vec![
                (vec![(size / 196608).max(1), 3, 256, 256], f(-4.0, 4.0)),
                (
                    vec![(size / 196608).max(1), 3, 256, 256],
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(BCEWithLogitsLoss::default()),
            inputs: vec![
                (rows.clone(), f(-6.0, 6.0)),
                (
                    rows.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: Some(baseline_bce),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(WeightedBCEWithLogitsLoss {
                w_p: 3.0,
                ..Default::default()
            }),
            inputs: vec![
                (flat.clone(), f(-6.0, 6.0)),
                (
                    flat.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: Some(baseline_wbce),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(RMSELoss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_rmse),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(MSELoss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_mse),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(L1Loss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_l1),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(CrossEntropyLoss::default()),
            inputs: vec![
                (rows.clone(), f(-4.0, 4.0)),
                (vec![rows[0]], Input::Labels(1024)),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(ContrastiveLoss::default()),
            inputs: vec![
                (pair.clone(), f(-1.0, 1.0)),
                (pair.clone(), f(-1.0, 1.0)),
                (
                    vec![pair[0]],
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
    ];
    // ArcFace: its cost is the matrix products, reported in GFLOP/s. 1024 x 512 -> 10000 at
    // the default size; --size scales the classes.
    let (n, d) = (1024usize, 512usize);
    let c = ((size as u64 * 10000) >> 24).max(1) as usize;
    v.push(Entry {
        spec: LossSpec::of(AngularPenaltySMConfig::new(d, c, LossType::ArcFace)),
        inputs: vec![
            (vec![n, d], f(-1.0, 1.0)),
            (vec![n], Input::Labels(c)),
            (vec![c, d], f(-0.044, 0.044)),
        ],
        baseline: None,
        flops: Some(3.0 * 2.0 * n as f64 * d as f64 * c as f64),
        label: None,
    });
    v
}

/// The class counts of the segmentation suite: binary, Cityscapes, Pascal VOC, a 64-class
/// label set, ADE20K.
pub const SEGMENTATION_CLASSES: [usize; 5] = [2, 19, 21, 64, 150];

/// The `[N, C, H, W]` shape of the segmentation suite for C classes: Cityscapes-like crops
/// (H:W = 1:2, from 512 x 1024 down) with at least two samples, about `size` logits in all.
pub fn segmentation_shape(size: usize, classes: usize) -> Vec<usize> {
    let pixels = (size / classes.max(1)).max(1);
    let (mut h, mut w) = (512usize, 1024usize);
    while h > 8 && pixels / (h * w) < 2 {
        h /= 2;
        w /= 2;
    }
    vec![(pixels / (h * w)).max(1), classes, h, w]
}

/// A loss of the segmentation suite: its name in the report, and its configuration for C
/// classes. One line per loss; the inputs follow from `SegTarget`.
#[cfg(not(target_arch = "wasm32"))]
type SegLoss = (&'static str, SegTarget, fn() -> LossSpec);

/// What a segmentation loss takes as its target.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
enum SegTarget {
    /// Class indices `[N, H, W]` (cross-entropy).
    Labels,
    /// A float mask of the logits' shape (Jaccard, Dice).
    Mask,
}

#[cfg(not(target_arch = "wasm32"))]
fn segmentation_losses() -> Vec<SegLoss> {
    vec![
        ("CrossEntropyLoss", SegTarget::Labels, || {
            LossSpec::of(CrossEntropyLoss::default())
        }),
        ("JaccardLoss", SegTarget::Mask, || {
            LossSpec::of(JaccardLoss::new(true))
        }),
        ("JaccardLoss per_class", SegTarget::Mask, || {
            LossSpec::of(JaccardLoss {
                per_class: true,
                ..JaccardLoss::new(true)
            })
        }),
        ("DiceLoss", SegTarget::Mask, || {
            LossSpec::of(DiceLoss::new(true))
        }),
        ("DiceLoss per_class", SegTarget::Mask, || {
            LossSpec::of(DiceLoss {
                per_class: true,
                ..DiceLoss::new(true)
            })
        }),
        ("FocalLoss", SegTarget::Labels, || {
            LossSpec::of(crate::FocalLoss::multiclass())
        }),
        ("TverskyLoss", SegTarget::Labels, || {
            LossSpec::of(crate::TverskyLoss::multiclass())
        }),
    ]
}

/// The segmentation suite: every loss of `segmentation_losses` at every class count.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn segmentation_entries(size: usize) -> Vec<Entry> {
    let mut v = Vec::new();
    for &c in &SEGMENTATION_CLASSES {
        let shape = segmentation_shape(size, c);
        let labels = vec![shape[0], shape[2], shape[3]];
        for (label, target, spec) in segmentation_losses() {
            let logits = (
                shape.clone(),
                Input::F32 {
                    lo: -4.0,
                    hi: 4.0,
                    binary: false,
                },
            );
            let target = match target {
                SegTarget::Labels => (labels.clone(), Input::Labels(c)),
                SegTarget::Mask => (
                    shape.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            };
            v.push(Entry {
                spec: spec(),
                label: Some(label.to_string()),
                inputs: vec![logits, target],
                baseline: None,
                flops: None,
            });
        }
    }
    v
}

pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

pub(crate) fn make_input(
    ctx: &LossContext,
    shape: &[usize],
    kind: &Input,
    rng: &mut Lcg,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    match *kind {
        Input::F32 { lo, hi, binary } => {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let u = rng.next();
                    if binary {
                        u.round()
                    } else {
                        lo + (hi - lo) * u
                    }
                })
                .collect();
            ctx.upload(&v, shape)
        }
        Input::Labels(c) => {
            let v: Vec<i32> = (0..n)
                .map(|_| ((rng.next() * c as f32) as i32).min(c as i32 - 1))
                .collect();
            ctx.upload_labels(&v, shape)
        }
    }
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
    fn gbps(
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

pub(crate) fn reductions(ctx: &LossContext) -> String {
    match ctx.subgroup_size() {
        Some(n) => format!("subgroups of {n}"),
        None => "barrier tree".into(),
    }
}

/// Runs the benchmark, reporting progress through `progress`.
#[cfg(not(target_arch = "wasm32"))]
pub fn run(
    ctx: &LossContext,
    opts: &BenchOptions,
    mut progress: impl FnMut(&str),
) -> Result<BenchReport> {
    let timer = Timer::new(ctx);
    progress(&format!(
        "timer: {}; workgroup reductions: {}; copy kernel over {} elements",
        timer.kind(),
        reductions(ctx),
        opts.size
    ));
    let roof = Roofline::new(ctx, opts)?;
    let (copy1, copy4) = (
        roof.gbps(ctx, &timer, opts, 1)?,
        roof.gbps(ctx, &timer, opts, 4)?,
    );
    // The 16-byte copy unless the 4-byte one is faster on this adapter.
    let lanes = if copy1 > copy4 { 1 } else { 4 };
    let copy = copy1.max(copy4);
    progress(&format!(
        "copy kernel: {copy1:.2} GB/s with 4-byte elements, {copy4:.2} GB/s with 16-byte elements"
    ));
    let mut results = Vec::new();
    let mut rng = Lcg(7);
    let (suite, list) = match opts.suite {
        Suite::Default => ("default", entries(opts.size)),
        Suite::Segmentation => ("segmentation", segmentation_entries(opts.size)),
    };
    let mse = LossSpec::of(MSELoss::default());
    let mse =
        gpu_loss(&mse).ok_or_else(|| Error::InvalidInput("MSELoss is not on the GPU".into()))?;
    for e in list {
        let Some(loss) = gpu_loss(&e.spec) else {
            progress(&format!("{:?}: not on the GPU yet, skipped", e.spec));
            continue;
        };
        let name = e.label.as_deref().unwrap_or(loss.name());
        if !opts.only.is_empty()
            && !opts
                .only
                .iter()
                .any(|o| name.to_lowercase().contains(&o.to_lowercase()))
        {
            continue;
        }
        let inputs: Vec<Tensor> = e
            .inputs
            .iter()
            .map(|(s, k)| make_input(ctx, s, k, &mut rng))
            .collect::<Result<_>>()?;
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let names = loss.input_names();
        let grads: Vec<Option<Tensor>> = loss
            .grad_names()
            .iter()
            .map(|g| {
                let i = names
                    .iter()
                    .position(|n| n == g)
                    .expect("a gradient of an input");
                ctx.empty(inputs[i].shape(), DType::F32).map(Some)
            })
            .collect::<Result<_>>()?;
        let gopts = GradOpts {
            into: grads.clone(),
            ..Default::default()
        };
        // The roofline of this loss: the faster of two copies timed right before and right
        // after it, so that a shared or throttling adapter (lavapipe on a busy host, a GPU
        // changing clocks) is compared with itself at the same time.
        let before = roof.gbps(ctx, &timer, opts, lanes)?;
        // The segmentation suite's yardstick: MSELoss over as many elements, timed in
        // alternation with the loss (its inputs and gradient allocated once, outside the timing).
        let (ms, mse_ms, of_mse) = if opts.suite == Suite::Segmentation {
            let n = inputs[0].numel();
            let unit = Input::F32 {
                lo: -1.0,
                hi: 1.0,
                binary: false,
            };
            let a = make_input(ctx, &[n], &unit, &mut rng)?;
            let b = make_input(ctx, &[n], &unit, &mut rng)?;
            let g = GradOpts {
                into: vec![Some(ctx.empty(&[n], DType::F32)?)],
                ..Default::default()
            };
            let (ms, mse_ms, ratio) = timer.median_pair(
                ctx,
                opts,
                |enc| loss.record(ctx, enc, &refs, &gopts),
                |enc| mse.record(ctx, enc, &[&a, &b], &g),
            )?;
            (ms, Some(mse_ms), Some(ratio))
        } else {
            let ms = timer.median(ctx, opts, |enc| loss.record(ctx, enc, &refs, &gopts))?;
            (ms, None, None)
        };
        let local_copy = before.max(roof.gbps(ctx, &timer, opts, lanes)?);
        let compulsory: u64 = inputs.iter().map(|t| t.byte_len()).sum::<u64>()
            + grads.iter().flatten().map(|g| g.byte_len()).sum::<u64>();
        let gbps = compulsory as f64 / (ms * 1e6);
        let (baseline_ms, speedup) = match e.baseline {
            Some(b) => {
                let n = inputs[0].numel() as u64;
                // The baseline must compute the same loss, or the comparison means nothing.
                let fused = ctx.read(&loss.compute(ctx, &refs)?.loss)?[0];
                let check = {
                    let mut ops = Ops::new(ctx, n)?;
                    let (l, _) = b(&mut ops, &refs)?;
                    let mut enc = ctx.device.create_command_encoder(&Default::default());
                    let keep = ops.finish(&mut enc)?;
                    ctx.queue.submit(Some(enc.finish()));
                    let v = ctx.read(&l)?[0];
                    drop(keep);
                    v
                };
                if (check - fused).abs() > 1e-3 * fused.abs().max(1e-3) {
                    return Err(Error::InvalidInput(format!(
                        "{name}: the per-operation baseline gives {check}, the fused loss {fused}"
                    )));
                }
                let bms = timer.median(ctx, opts, |enc| {
                    let mut ops = Ops::new(ctx, n)?;
                    b(&mut ops, &refs)?;
                    ops.finish(enc)
                })?;
                (Some(bms), Some(bms / ms))
            }
            None => (None, None),
        };
        let gflops = e.flops.map(|f| f / (ms * 1e6));
        let products = if e.spec.get::<AngularPenaltySMConfig>().is_some() {
            angular_products(ctx, &timer, opts, &inputs)?
        } else {
            Vec::new()
        };
        for (p, pms, g) in &products {
            progress(&format!(
                "  {name} product {p}: {pms:.3} ms, {g:.1} GFLOP/s"
            ));
        }
        let r = BenchResult {
            loss: name.to_string(),
            shape: inputs[0].shape().to_vec(),
            ms,
            compulsory_bytes: compulsory,
            gbps,
            copy_gbps: local_copy,
            of_copy: gbps / local_copy,
            baseline_ms,
            speedup,
            gflops,
            mse_ms,
            of_mse,
            products,
        };
        progress(&row(&r, r.mse_ms.is_some()));
        results.push(r);
    }
    let a = ctx.adapter();
    Ok(BenchReport {
        adapter: a.name.clone(),
        backend: format!("{:?}", a.backend),
        device_type: format!("{:?}", a.device_type),
        driver: format!("{} {}", a.driver, a.driver_info).trim().to_string(),
        timer: timer.kind().into(),
        reductions: reductions(ctx),
        suite: suite.into(),
        size: opts.size,
        runs: opts.runs,
        copy_gbps: copy,
        results,
    })
}

/// The angular loss's three products alone (src/matmul.rs), at its shapes: `x W^T`
/// (`[N, D] x [D, C]`), `G W` (`[N, C] x [C, D]`) and `G^T x` (`[C, N] x [N, D]`).
#[cfg(not(target_arch = "wasm32"))]
fn angular_products(
    ctx: &LossContext,
    timer: &Timer,
    opts: &BenchOptions,
    inputs: &[Tensor],
) -> Result<Vec<(String, f64, f64)>> {
    let (x, w) = (&inputs[0], &inputs[2]);
    let (n, d, c) = (x.shape()[0], x.shape()[1], w.shape()[0]);
    let g = ctx.upload(
        &(0..n * c)
            .map(|i| ((i % 97) as f32 - 48.0) * 1e-3)
            .collect::<Vec<_>>(),
        &[n, c],
    )?;
    let flops = 2.0 * (n * d * c) as f64;
    let mut out = Vec::new();
    for (name, a, b, a_t, b_t) in [
        ("x W^T", x, w, false, true),
        ("G W", &g, w, false, false),
        ("G^T x", &g, x, true, false),
    ] {
        let ms = timer.median(ctx, opts, |enc| {
            let mut prog = Program::default();
            let c = crate::matmul::record_matmul(ctx, &mut prog, a, b, a_t, b_t)?;
            let mut scratch = Scratch::default();
            ctx.encode(prog, enc, &mut scratch)?;
            Ok((scratch, c))
        })?;
        out.push((name.to_string(), ms, flops / (ms * 1e6)));
    }
    Ok(out)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

fn row(r: &BenchResult, with_mse: bool) -> String {
    let mut s = format!(
        "| {} | {:?} | {:.3} | {:.2} | {:.2} | {:.0}% |",
        r.loss,
        r.shape,
        r.ms,
        r.gbps,
        r.copy_gbps,
        100.0 * r.of_copy,
    );
    if with_mse {
        s.push_str(&format!(
            " {} | {} |",
            opt(r.mse_ms, 3),
            r.of_mse
                .map(|x| format!("{x:.2}x"))
                .unwrap_or_else(|| "-".into())
        ));
    }
    s.push_str(&format!(
        " {} | {} | {} |",
        opt(r.baseline_ms, 3),
        r.speedup
            .map(|s| format!("{s:.1}x"))
            .unwrap_or_else(|| "-".into()),
        opt(r.gflops, 1)
    ));
    s
}

/// The report as a Markdown table.
pub fn markdown(r: &BenchReport) -> String {
    let with_mse = r.results.iter().any(|x| x.mse_ms.is_some());
    let suite = if r.suite.is_empty() || r.suite == "default" {
        String::new()
    } else {
        format!("suite: {}; ", r.suite)
    };
    let mut s = format!(
        "{} ({}, {}, {}); {suite}timer: {}; reductions: {}; median of {} runs; copy kernel \
         {:.2} GB/s at the start, and around each loss (\"copy GB/s\")",
        r.adapter, r.backend, r.device_type, r.driver, r.timer, r.reductions, r.runs, r.copy_gbps
    );
    if with_mse {
        s.push_str(
            "; \"MSE ms\": MSELoss over as many elements, timed in alternation with the loss; \
             \"of MSE\": the median ratio of the alternating runs",
        );
    }
    s.push_str("\n\n| loss | shape | ms | GB/s | copy GB/s | of copy |");
    if with_mse {
        s.push_str(" MSE ms | of MSE |");
    }
    s.push_str(" per-op baseline ms | fused speedup | GFLOP/s |\n|---|---|---|---|---|---|");
    if with_mse {
        s.push_str("---|---|");
    }
    s.push_str("---|---|---|\n");
    for x in &r.results {
        s.push_str(&row(x, with_mse));
        s.push('\n');
    }
    for x in r.results.iter().filter(|x| !x.products.is_empty()) {
        s.push_str(&format!(
            "\n{} {:?}, each product alone:\n\n",
            x.loss, x.shape
        ));
        for (p, ms, g) in &x.products {
            s.push_str(&format!("- `{p}`: {ms:.3} ms, {g:.1} GFLOP/s\n"));
        }
    }
    s
}

/// The ratios between two reports (B over A): time and throughput per loss and shape.
pub fn compare(a: &BenchReport, b: &BenchReport) -> String {
    let with_mse = a
        .results
        .iter()
        .chain(&b.results)
        .any(|x| x.mse_ms.is_some());
    let mut s = format!(
        "A: {} ({})\nB: {} ({})\n\n",
        a.adapter, a.backend, b.adapter, b.backend
    );
    s.push_str("| loss | shape | A ms | B ms | B speedup over A | A of copy | B of copy |");
    if with_mse {
        s.push_str(" A of MSE | B of MSE |");
    }
    s.push_str("\n|---|---|---|---|---|---|---|");
    if with_mse {
        s.push_str("---|---|");
    }
    s.push('\n');
    s.push_str(&format!(
        "| copy kernel GB/s | | {:.2} | {:.2} | {:.2}x | | |{}\n",
        a.copy_gbps,
        b.copy_gbps,
        b.copy_gbps / a.copy_gbps,
        if with_mse { " | |" } else { "" }
    ));
    let x = |v: Option<f64>| v.map(|v| format!("{v:.2}x")).unwrap_or_else(|| "-".into());
    for ra in &a.results {
        // The same loss at the same shape (the segmentation suite has each loss at several).
        let Some(rb) = b
            .results
            .iter()
            .find(|r| r.loss == ra.loss && r.shape == ra.shape)
            .or_else(|| b.results.iter().find(|r| r.loss == ra.loss))
        else {
            continue;
        };
        s.push_str(&format!(
            "| {} | {:?} | {:.3} | {:.3} | {:.2}x | {:.0}% | {:.0}% |",
            ra.loss,
            ra.shape,
            ra.ms,
            rb.ms,
            ra.ms / rb.ms,
            100.0 * ra.of_copy,
            100.0 * rb.of_copy
        ));
        if with_mse {
            s.push_str(&format!(" {} | {} |", x(ra.of_mse), x(rb.of_mse)));
        }
        s.push('\n');
    }
    s
}
