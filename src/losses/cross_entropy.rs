//! `CrossEntropyLoss` with class-index targets (shaders/cross_entropy.wgsl).
//!
//! Labels live on the device, so the host cannot check them before the work runs. A caller
//! that has them on the host checks them with [`CrossEntropyLoss::check_target_labels`]. On the
//! device an out-of-range label that is not `ignore_index` is never used as an index: its row
//! gets a zero gradient and a NaN loss (so a `mean` / `sum` is NaN too), and the context's
//! label flag is set: the next read of any tensor fails with `Error::LabelOutOfRange`.

use super::{want_dtype, GradOpts, Loss, Recorder, Tail};
use crate::config::{check_labels, CrossEntropyLoss, Reduction};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

/// The shader, after the row-segment reductions it shares with contrastive.
const BODY: &str = concat!(
    include_str!(concat!(env!("OUT_DIR"), "/shaders/segment.wgsl")),
    include_str!(concat!(env!("OUT_DIR"), "/shaders/cross_entropy.wgsl"))
);
/// Labels per workgroup of `weight_sum` (`ITEMS * WG`).
const TILE: u64 = 8 * WG as u64;
/// The threads-per-row variants.
const TPRS: [u32; 7] = [1, 8, 16, 32, 64, 128, 256];

/// `lanes` 4: rows of contiguous classes read four at a time (rows_*_c), or four positions of
/// `[N, C, K]` (rows_*_q). `held`: C where a position's logits are held in registers
/// (rows_*_q with at most [`held_classes`](super::held_classes) classes), else 0. `qpt`, `qw`:
/// rows_*_q's accesses per thread and runs of threads (common.wgsl `strip_at`).
fn source(tpr: u32, lanes: u32, held: u32, qpt: u32, qw: u32) -> ShaderSource {
    ShaderSource::new("cross_entropy", BODY)
        .with("TPR", tpr)
        .with("CC", held)
        .with("CN", held.max(1))
        .with("QPT", qpt)
        .with("QW", qw)
        .with_lanes(lanes)
}

/// Accesses of four positions per thread in rows_*_q (`QPT`). With few classes a workgroup of
/// one access per thread owns little work (2048 logits at 2 classes) and a CPU adapter pays
/// per workgroup: the CPU kernels give each thread about 16 logits' worth (measured on
/// lavapipe at [4, 2, 512, 1024]: 1, 4, 8, 16 accesses took 10.2, 8.6-9.3, 8.3, 8.0-9.0 ms).
/// A GPU keeps one, for many workgroups.
fn quads_per_thread(ctx: &LossContext, classes: u64) -> u32 {
    if ctx.cpu_kernels {
        (16 / classes.max(1)).clamp(1, 8) as u32
    } else {
        1
    }
}

/// The options the shader takes as constants: class weights, an `ignore_index` that fits in
/// i32, label smoothing, and adding to the gradient (each a pipeline variant).
fn with_options(
    s: ShaderSource,
    weighted: bool,
    ignore: bool,
    smooth: bool,
    accumulate: bool,
) -> ShaderSource {
    s.with("WEIGHTED", weighted as u32)
        .with("IGNORE", ignore as u32)
        .with("SMOOTH", smooth as u32)
        .with_accumulate(accumulate)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    #[allow(unused_mut)]
    // Every option off, and every option on.
    let mut v: Vec<ShaderSource> = TPRS
        .iter()
        .flat_map(|&t| [source(t, 1, 0, 1, WG), source(t, 4, 0, 1, 8)])
        .chain(
            [
                (2, 8, 8),
                (2, 1, WG),
                (19, 1, 8),
                (32, 1, WG),
                (0, 8, 8),
                (0, 16, 8),
            ]
            .map(|(c, q, w)| source(1, 4, c, q, w)),
        )
        .map(|s| s.with("TB", WG))
        // Blocks of half a workgroup's threads (block_threads).
        .chain([source(1, 4, 0, 8, 8).with("TB", WG / 2)])
        .flat_map(|s| {
            [
                with_options(s.clone(), false, false, false, false),
                with_options(s, true, true, true, true),
            ]
        })
        .collect();
    #[cfg(not(target_arch = "wasm32"))]
    v.extend(super::ce_sharded::shader_variants());
    v
}

/// Threads per row for C classes: a thread per row for small C (coalesced over the positions
/// of `[N, C, d...]`), a segment for medium C, the whole workgroup for large C. The segment is
/// one subgroup where the context uses them (its reductions then need no barrier), else 32.
fn threads_per_row(classes: usize, subgroup: Option<u32>) -> u32 {
    if classes <= 32 {
        1
    } else if classes <= 2048 {
        super::segment_threads(subgroup)
    } else {
        256
    }
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    inner: u32,
    classes: u32,
    flags: u32,
    ignore: i32,
    part_base: u32,
    nan_bits: u32,
    label_base: u32,
    ls: f32,
    ls_c: f32,
    wsum: f32,
    grad_scale: f32,
}

/// `Params::flags` bit 2: the mean reduction (the other options are shader constants).
const F_MEAN: u32 = 4;

impl CrossEntropyLoss {
    /// Checks host-side class labels: each in `[0, classes)` or equal to `ignore_index`.
    pub fn check_target_labels(&self, labels: &[i64], classes: usize) -> Result<()> {
        check_labels("CrossEntropyLoss", labels, classes, Some(self.ignore_index))
    }

    /// Records every pass; returns the loss and the gradient.
    fn record_all(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        const WHAT: &str = "CrossEntropyLoss";
        let (x, t) = (inputs[0], inputs[1]);
        let layout = self.check_shapes(x.shape(), t.shape())?;
        want_dtype(WHAT, "input", x, DType::F32)?;
        want_dtype(WHAT, "target", t, DType::I32)?;
        let grad = opts.grad_for(ctx, 0, x)?;
        let (n, c, k) = (
            layout.outer as u64,
            layout.channels as u64,
            layout.inner as u64,
        );
        let positions = n * k;
        if c > u32::MAX as u64 || k > u32::MAX as u64 {
            return Err(Error::TooLarge(format!(
                "{WHAT}: {c} classes x {k} positions do not fit 32-bit indices"
            )));
        }
        let tpr = threads_per_row(layout.channels, ctx.subgroup_size());
        // `[N, C]` logits with C a multiple of 4: each row's classes are contiguous and start
        // 16-byte aligned, so they are read and written four at a time. One thread per row
        // (small C) keeps the strided layout, whose accesses are coalesced across rows.
        let contiguous = k == 1 && c % 4 == 0 && tpr > 1;
        // `[N, C, K]` logits with K a multiple of 4 (any C): a thread owns four neighbouring
        // positions, read and written four at a time (rows_*_q).
        let quads = k > 1 && k % 4 == 0;
        let tpr = if quads { 1 } else { tpr };
        let held = if quads && c <= super::held_classes(ctx) {
            c as u32
        } else {
            0
        };
        let qpt = if !quads {
            1
        } else if held == 0 {
            super::swept_accesses(ctx, k / 4)
        } else {
            quads_per_thread(ctx, c)
        };
        let tb = if quads {
            let groups = n * (k / 4).div_ceil(WG as u64 * qpt as u64);
            super::block_threads(ctx, held == 0, groups)
        } else {
            WG
        };
        let ignore = i32::try_from(self.ignore_index).ok();
        let src = with_options(
            source(
                tpr,
                if contiguous || quads { 4 } else { 1 },
                held,
                qpt,
                crate::kernel::simd_runs(ctx),
            )
            .with("TB", tb),
            self.weight.is_some(),
            ignore.is_some(),
            self.label_smoothing > 0.0,
            opts.accumulate,
        );
        let (x_binding, grad_binding) = if contiguous || quads {
            (11, 12)
        } else {
            (1, 4)
        };
        let label_binding = if quads { 13 } else { 2 };
        let (rows_none, rows_reduce) = if contiguous {
            ("rows_none_c", "rows_reduce_c")
        } else if quads {
            ("rows_none_q", "rows_reduce_q")
        } else {
            ("rows_none", "rows_reduce")
        };

        // Class weights (a 4-byte placeholder without weight: the binding must exist).
        let wsum = match &self.weight {
            Some(w) => w.data.iter().map(|&v| v as f64).sum::<f64>(),
            None => c as f64,
        };
        let weight_buf = match &self.weight {
            Some(w) => rec.buf_from(ctx, &w.data)?,
            None => rec.buf(ctx, 4)?,
        };
        let flag = rec.flag_bind(ctx, 8, "CrossEntropyLoss")?;

        let mean = self.reduction == Reduction::Mean;
        let flags = if mean { F_MEAN } else { 0 };
        let ls = self.label_smoothing;
        let base = Params {
            rows: 0,
            inner: k as u32,
            classes: c as u32,
            flags,
            ignore: ignore.unwrap_or(0),
            part_base: 0,
            nan_bits: 0x7fc0_0000,
            label_base: 0,
            ls: ls as f32,
            ls_c: (ls / c as f64) as f32,
            wsum: wsum as f32,
            grad_scale: opts.scale,
        };

        // Pass 1 (mean): W, the summed weight of the non-ignored targets.
        let wtot = if mean {
            // With quads, four labels per access (windows of whole accesses, tiles of 4 TILE).
            let (windows, tile, weight_sum) = if quads {
                (ctx.windows(positions, 4, 4)?, 4 * TILE, "weight_sum_q")
            } else {
                (ctx.windows(positions, 4, 1)?, TILE, "weight_sum")
            };
            let tiles: u64 = windows.iter().map(|w| w.count.div_ceil(tile)).sum();
            let partials = rec.buf(ctx, tiles * 4)?;
            let mut part_base = 0;
            for w in windows {
                let p = Params {
                    rows: w.count as u32,
                    part_base: part_base as u32,
                    ..base
                };
                let binds = vec![
                    Bind::window(label_binding, t, w.first, w.count),
                    weight_buf.bind(3),
                    partials.bind(5),
                ];
                rec.prog.steps.push(ctx.step(
                    &src,
                    weight_sum,
                    &p,
                    binds,
                    w.count.div_ceil(tile),
                )?);
                part_base += w.count.div_ceil(tile);
            }
            let wtot = rec.reduce(ctx, &partials, 1, tiles)?;
            // In sharded work, the summed weight of the whole batch.
            rec.exchange(&wtot.buffer, 0, 1, crate::shard::Merge::Sum);
            Some(wtot)
        } else {
            None
        };

        // Pass 2: the rows, windowed over the samples. The labels (and the `none` losses) are
        // C times smaller than the logits: bound whole when they fit one binding (any window
        // then works), else windowed too, with windows that keep their offsets aligned.
        let labels_whole = positions * 4 <= ctx.max_window_bytes;
        let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let multiple = if labels_whole {
            1
        } else {
            align / gcd(k * 4, align)
        };
        let windows = ctx.windows(n, c * k * 4, multiple)?;
        // Workgroups over a window of `count` samples: rows of WG / TPR positions, or with
        // quads blocks of 4 QPT TB positions within each sample.
        let rpw = (WG / tpr) as u64;
        let wgs = |count: u64| {
            if quads {
                count * (k / 4).div_ceil(tb as u64 * qpt as u64)
            } else {
                (count * k).div_ceil(rpw)
            }
        };
        let label_bind = |binding: u32, w: &crate::kernel::Window, tensor: &Tensor| {
            if labels_whole {
                Bind::tensor(binding, tensor)
            } else {
                Bind::window(binding, tensor, w.first * k, w.count * k)
            }
        };
        let window_params = |w: &crate::kernel::Window| Params {
            rows: (w.count * k) as u32,
            label_base: if labels_whole {
                (w.first * k) as u32
            } else {
                0
            },
            ..base
        };
        let io = |w: &crate::kernel::Window| {
            vec![
                Bind::window(x_binding, x, w.first * c * k, w.count * c * k),
                label_bind(label_binding, w, t),
                weight_buf.bind(3),
                Bind::window(grad_binding, &grad, w.first * c * k, w.count * c * k),
                flag.clone(),
            ]
        };

        let loss = if self.reduction == Reduction::None {
            let elem = ctx.empty(t.shape(), DType::F32)?;
            for w in &windows {
                let mut binds = io(w);
                binds.push(label_bind(7, w, &elem));
                rec.prog.steps.push(ctx.step(
                    &src,
                    rows_none,
                    &window_params(w),
                    binds,
                    wgs(w.count),
                )?);
            }
            elem
        } else {
            let groups: u64 = windows.iter().map(|w| wgs(w.count)).sum();
            let partials = rec.buf(ctx, groups * 4)?;
            let mut part_base = 0u64;
            for w in &windows {
                let p = Params {
                    part_base: part_base as u32,
                    ..window_params(w)
                };
                let mut binds = io(w);
                binds.push(partials.bind(5));
                // `wtot` is only read for mean; any read-only buffer fills the binding otherwise.
                binds.push(wtot.as_ref().unwrap_or(&weight_buf).bind(6));
                rec.prog
                    .steps
                    .push(ctx.step(&src, rows_reduce, &p, binds, wgs(w.count))?);
                part_base += wgs(w.count);
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
                    totals: 9,
                    loss: Bind::tensor(10, &loss),
                    coef: None,
                    // `wtot` is only read for mean; the weights fill the binding otherwise.
                    extra: vec![wtot.as_ref().unwrap_or(&weight_buf).bind(6)],
                },
            )?;
            loss
        };
        Ok((loss, vec![grad]))
    }
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Loss for CrossEntropyLoss {
    fn name(&self) -> &'static str {
        "CrossEntropyLoss"
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
        self.record_all(ctx, inputs, opts, rec)
    }
}
