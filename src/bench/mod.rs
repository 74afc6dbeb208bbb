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

mod ops;
mod report;
mod suite;

pub(crate) use ops::*;
#[cfg(not(target_arch = "wasm32"))]
use report::row;
pub use report::{compare, markdown};
pub(crate) use suite::*;
pub use suite::{segmentation_shape, SEGMENTATION_CLASSES};

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
    /// Also time each step of each loss alone (a compute pass per step between timestamps;
    /// the least of three runs per step): where its time goes. Native adapters with timestamp
    /// queries only.
    pub steps: bool,
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
            steps: false,
        }
    }
}

/// One loss's result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchResult {
    /// The loss's name in the report (with its variant, such as `JaccardLoss per_class`).
    pub loss: String,
    /// The shape of its first input.
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
    /// With `--steps`: each step of the loss's program alone (its shader, constants and entry
    /// point; ms), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<(String, f64)>,
}

/// A whole run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    /// The adapter's name.
    pub adapter: String,
    /// Its back end (Vulkan, Metal, Dx12, Gl, BrowserWebGpu).
    pub backend: String,
    /// Its device type (DiscreteGpu, Cpu, ...).
    pub device_type: String,
    /// Its driver and driver version.
    pub driver: String,
    /// `timestamp` (GPU timestamp queries) or `wall` (host clock around submit and wait).
    pub timer: String,
    /// The workgroup reductions: `subgroups of N` or `barrier tree`.
    #[serde(default)]
    pub reductions: String,
    /// The suite run (`default` or `segmentation`).
    #[serde(default)]
    pub suite: String,
    /// `--size`: elements per input of the default suite, logits of the segmentation suite.
    pub size: usize,
    /// Timed runs per loss (the median is reported).
    pub runs: usize,
    /// GB/s of the copy kernel (bytes read plus bytes written) at the start of the run.
    pub copy_gbps: f64,
    /// One result per loss and shape, in the order they ran.
    pub results: Vec<BenchResult>,
}

/// Milliseconds between the two timestamps the benchmark resolved into `read` (ticks of
/// `period` nanoseconds), once its mapping has ended with `mapped`; unmaps it. The native and the
/// browser timers share it.
pub(crate) fn timestamps_ms(
    mapped: std::result::Result<(), wgpu::BufferAsyncError>,
    read: &wgpu::Buffer,
    period: f64,
) -> Result<f64> {
    mapped.map_err(|e| Error::wgpu(format!("timestamp read-back: {e}")))?;
    let ticks: Vec<u64> = {
        let view = read
            .get_mapped_range(..)
            .map_err(|e| Error::wgpu(format!("{e:?}")))?;
        bytemuck::pod_collect_to_vec(&view)
    };
    read.unmap();
    Ok(ticks[1].saturating_sub(ticks[0]) as f64 * period / 1e6)
}

/// The least wall time of the untimed runs before a measurement.
pub(crate) const WARMUP_SECONDS: f64 = 0.25;
pub(crate) const MAX_WARMUP_RUNS: usize = 5000;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) struct Timer {
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
                let mapped = rx
                    .recv()
                    .map_err(|_| Error::DeviceLost("timestamp read-back cancelled".into()))?;
                timestamps_ms(mapped, read, *period)
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
                let i = names.iter().position(|n| n == g).ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "{}: gradient {g} is not one of its inputs",
                        loss.name()
                    ))
                })?;
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
        let steps = if opts.steps {
            step_profile(ctx, |enc| loss.record(ctx, enc, &refs, &gopts))?
        } else {
            Vec::new()
        };
        for (label, sms) in &steps {
            progress(&format!("  {name} step {label}: {sms:.3} ms"));
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
            steps,
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

/// Each step of the program `record` puts into an encoder, timed alone: the least of three
/// profiled runs per step (the steps are the same each run); none on an adapter without
/// timestamp queries.
#[cfg(not(target_arch = "wasm32"))]
fn step_profile<K>(
    ctx: &LossContext,
    mut record: impl FnMut(&mut wgpu::CommandEncoder) -> Result<K>,
) -> Result<Vec<(String, f64)>> {
    let mut best: Vec<(String, f64)> = Vec::new();
    for _ in 0..3 {
        let run = ctx.profile_steps(2048, &mut record)?;
        if best.is_empty() {
            best = run;
        } else {
            for (b, (_, ms)) in best.iter_mut().zip(run) {
                b.1 = b.1.min(ms);
            }
        }
    }
    Ok(best)
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
