//! `JaccardLoss` and `DiceLoss` (shaders/segmentation.wgsl): a statistics pass computing the
//! activations once per element and reducing the overlap sums `I`, `S` (one pair per channel
//! with `per_class`), the deterministic tree reduction, a finalize step (loss and gradient
//! coefficients), and a gradient pass through the sigmoid or the channel softmax.

use super::{float_inputs, GradOpts, Loss, Recorder, Tail};
use crate::config::{ChannelLayout, DiceLoss, JaccardLoss};
use crate::context::LossContext;
use crate::error::Result;
use crate::kernel::{lanes_for, with_accumulate_variants, Bind, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/segmentation.wgsl"));
/// Pixels per workgroup tile (segmentation.wgsl `ITEMS * WG`).
const TILE: u64 = 16 * WG as u64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Jaccard = 0,
    Dice = 1,
}

/// The most channels for which the four-pixel softmax kernels keep no per-pixel record (`pix`)
/// between the passes (`LOCAL`): the gradient takes each pixel's softmax from its held channels
/// again, pixel by pixel (multi_grad, global ratio too). That saves 8 bytes per pixel written
/// and read again, a third of the traffic at two channels. With more channels a pixel's
/// strided planes are more streams than a CPU's cache sets hold, which plane_grad avoids.
const LOCAL_CLASSES: u32 = 4;

/// `held`: C where the four-pixel kernels hold a pixel's channels (at most
/// [`held_classes`](super::held_classes)), else 0.
fn source(
    kind: Kind,
    multi: bool,
    per_class: bool,
    f16: bool,
    lanes: u32,
    held: u32,
) -> ShaderSource {
    ShaderSource::new("segmentation", BODY)
        .with("KIND", kind as u32)
        .with("MULTI", multi as u32)
        .with("PER_CLASS", per_class as u32)
        .with("CC", held)
        .with("CN", held.max(1))
        .with(
            "LOCAL",
            (multi && held != 0 && held <= LOCAL_CLASSES) as u32,
        )
        .with_f16(f16)
        .with_lanes(lanes)
}

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    let mut v = Vec::new();
    for kind in [Kind::Jaccard, Kind::Dice] {
        for multi in [false, true] {
            for per_class in [false, true] {
                for f16 in [false, true] {
                    let part = |s: ShaderSource| {
                        s.with("TPART", 0)
                            .with("QW", WG)
                            .with("GQ", 1)
                            .with("TB", WG)
                    };
                    v.push(part(source(kind, multi, per_class, f16, 1, 0)));
                    v.push(part(source(kind, multi, per_class, f16, 4, 0)));
                    if multi || per_class {
                        for held in [2, 19] {
                            v.push(part(source(kind, multi, per_class, f16, 4, held)));
                        }
                        // The CPU kernels' runs of 8 threads.
                        v.push(
                            source(kind, multi, per_class, f16, 4, 19)
                                .with("TPART", 0)
                                .with("QW", 8)
                                .with("GQ", 1)
                                .with("TB", WG),
                        );
                        // The CPU kernels' swept passes, 8 and 16 accesses, blocks of half and
                        // whole workgroups.
                        if multi {
                            for (held, gq, tb) in [(0, 8, WG / 2), (19, 16, WG)] {
                                v.push(
                                    source(kind, multi, per_class, f16, 4, held)
                                        .with("TPART", per_class as u32)
                                        .with("QW", 8)
                                        .with("GQ", gq)
                                        .with("TB", tb),
                                );
                            }
                        }
                    }
                    // Per class: thread partials, with and without held channels.
                    if per_class {
                        for held in [0, 2, 19] {
                            v.push(
                                source(kind, multi, per_class, f16, 4, held)
                                    .with("TPART", 1)
                                    .with("QW", 8)
                                    .with("GQ", 1)
                                    .with("TB", WG),
                            );
                        }
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
    tps: u32,
    grad_scale: f32,
    eps: f32,
    smooth: f32,
    gtps: u32,
}

/// One dispatch window: `pixels` pixels starting at element `elem_first`, tiles from `tile_base`.
struct Win {
    elem_first: u64,
    elems: u64,
    pixels: u64,
    tile_base: u64,
    tiles: u64,
}

#[allow(clippy::too_many_arguments)]
fn build(
    ctx: &LossContext,
    what: &str,
    kind: Kind,
    multi: bool,
    per_class: bool,
    layout: ChannelLayout,
    eps: f64,
    smooth: f64,
    x: &Tensor,
    t: &Tensor,
    opts: &GradOpts,
    rec: &mut Recorder,
) -> Result<(Tensor, Vec<Tensor>)> {
    let f16 = float_inputs(ctx, what, &[("output", x), ("target", t)])?;
    let grad = opts.grad_for(ctx, 0, x)?;
    // Binary with one global ratio: every element is independent, so flatten to [numel, 1, 1].
    let layout = if !multi && !per_class {
        ChannelLayout {
            outer: layout.numel(),
            channels: 1,
            inner: 1,
        }
    } else {
        layout
    };
    let (c, inner) = (layout.channels as u64, layout.inner as u64);
    let groups = if per_class { c } else { 1 };
    // Windows of whole samples (all channels of a pixel in one binding); flat ones of tiles
    // when a sample is one element.
    // The four-pixel paths keep 8 bytes per pixel of scratch (`pix`), windowed with the
    // samples: windows whose pixel offsets stay aligned, small enough for both.
    let quads = !(!multi && !per_class) && inner % 4 == 0;
    let raw = if c == 1 && inner == 1 {
        ctx.windows(layout.outer as u64, 4, TILE)?
    } else if quads {
        let align = ctx.limits.min_storage_buffer_offset_alignment.max(4) as u64;
        let multiple = align / gcd(inner * 4, align);
        ctx.windows(layout.outer as u64, c.max(2) * inner * 4, multiple)?
    } else {
        ctx.windows(layout.outer as u64, c * inner * 4, 1)?
    };
    let mut wins = Vec::with_capacity(raw.len());
    let mut tiles = 0u64;
    for w in &raw {
        let pixels = w.count * inner;
        // The four-pixel paths: whole tiles per sample.
        let n = if quads {
            w.count * inner.div_ceil(TILE)
        } else {
            pixels.div_ceil(TILE)
        };
        wins.push(Win {
            elem_first: w.first * c * inner,
            elems: w.count * c * inner,
            pixels,
            tile_base: tiles,
            tiles: n,
        });
        tiles += n;
    }
    // The binary global case is flat (flat_stats, flat_grad: four elements per access where
    // the length allows). The others take four neighbouring pixels per access where the
    // spatial size is a multiple of 4 (multi_stats, multi_grad), else one pixel (stats,
    // grad_pass); either loops over the pixels' channels.
    let flat = !multi && !per_class;
    let lanes = if flat {
        lanes_for(layout.outer as u64)
    } else if quads {
        4
    } else {
        1
    };
    // Per class over four pixels per access on a CPU adapter, every thread's sums are
    // partials (WG columns per tile) where they fit one binding: no barriers, which cost a
    // CPU a switch between the workgroup's SIMD batches, for 1/16 more traffic. A GPU sums
    // each workgroup's channels through subgroups.
    let thread_cols = WG as u64;
    let thread_partials = quads
        && per_class
        && ctx.cpu_kernels
        && 2 * groups * tiles * thread_cols * 4 <= ctx.max_window_bytes;
    let held = if quads && !flat && c <= super::held_classes(ctx) {
        c as u32
    } else {
        0
    };
    // Few held channels of a softmax: no `pix` (LOCAL_CLASSES).
    let local = multi && held != 0 && held <= LOCAL_CLASSES;
    // Runs of threads over a tile's accesses (segmentation.wgsl's strip_at).
    let qw = crate::kernel::simd_runs(ctx);
    // Through a softmax with a per-pixel record the CPU kernels sweep a thread's GQ accesses
    // class by class for the gradient (swept_grad; `gtps` workgroups of GQ TB accesses per
    // sample; losses/mod.rs swept_accesses). Lavapipe, the gradient alone, against multi_grad or
    // plane_grad with four accesses per thread a pixel at a time: per class at
    // [2, 64, 128, 256] 16.3 -> 11.7 ms, at [6, 21, 128, 256] 15.1 -> 12.6, at [3, 150, 64, 128]
    // 14.1 -> 12.0; the global ratio 7.5-8.0 -> 6.9-7.3. At [6, 19, 128, 256] the global ratio
    // took 12.6-13.5 ms in all with 8 to 32 accesses per thread and 15.7-17.3 with 4; 2 and 4
    // at [3, 150, 64, 128] (more workgroups than its three) were slower too. Tried and
    // dropped: per class, the 19 channels' p and dL/dp held between the sweeps (no faster
    // within the noise, and an 8 s pipeline compile); the global ratio's statistics swept the
    // same way (2.3 -> 2.5x MSE at 19 classes, 2.4 -> 2.9x at 150, where the pixel-by-pixel
    // held or online sweep does better). A GPU keeps the plane and pixel passes, for many
    // workgroups.
    let gq = (quads && multi && !local && ctx.cpu_kernels)
        .then(|| super::swept_accesses(ctx, inner / 4));
    let gq1 = gq.unwrap_or(1) as u64;
    // Threads per swept workgroup (half a workgroup where whole ones would be too few).
    let tb = super::block_threads(
        ctx,
        gq.is_some(),
        layout.outer as u64 * (inner / 4).div_ceil(gq1 * WG as u64),
    );
    let gtps = (inner / 4).div_ceil(gq1 * tb as u64);
    // Per class beyond the held channels, where a sample fills workgroups of 16 accesses per
    // thread, the statistics too (swept_stats), with thread partials: WG columns per workgroup
    // of GQ TB accesses (zeros past TB). Lavapipe, of MSE: [2, 64, 128, 256] 3.5-3.9x ->
    // 3.0-3.5x; at [3, 150, 64, 128] (8 accesses, three workgroups for six tiles) 4.0-4.2x ->
    // 4.3-4.5x.
    let swept_stats = gq == Some(16) && per_class && held == 0 && thread_partials;
    // Workgroups of the statistics (tiles, or swept blocks), and the partials' columns.
    let stats_cols = if swept_stats {
        layout.outer as u64 * gtps
    } else {
        tiles
    };
    let cols = if thread_partials {
        stats_cols * thread_cols
    } else {
        stats_cols
    };
    let src = source(kind, multi, per_class, f16, lanes, held)
        .with("TPART", thread_partials as u32)
        .with("QW", qw)
        .with("GQ", gq1 as u32)
        .with("TB", tb)
        .with_accumulate(opts.accumulate);
    let (b_x, b_t, b_grad) = if flat || quads { (8, 9, 10) } else { (1, 2, 3) };
    let (stats, grad_pass) = if flat {
        ("flat_stats", "flat_grad")
    } else if swept_stats {
        ("swept_stats", "swept_grad")
    } else if quads {
        ("multi_stats", "multi_grad")
    } else {
        ("stats", "grad_pass")
    };
    let base = Params {
        pixels: 0,
        inner: inner as u32,
        channels: c as u32,
        tile_base: 0,
        tiles: stats_cols as u32,
        groups: groups as u32,
        flags: opts.flags(),
        tps: inner.div_ceil(TILE) as u32,
        grad_scale: opts.scale,
        eps: eps as f32,
        smooth: smooth as f32,
        gtps: gtps as u32,
    };
    // A window's first workgroup and workgroups of the statistics: tiles, or (swept_stats)
    // blocks of GQ TB accesses of its samples.
    let stats_groups = |w: &Win| {
        if swept_stats {
            (w.elem_first / (c * inner) * gtps, w.pixels / inner * gtps)
        } else {
            (w.tile_base, w.tiles)
        }
    };
    let per_window = |w: &Win| Params {
        pixels: w.pixels as u32,
        tile_base: stats_groups(w).0 as u32,
        ..base
    };

    let partials = rec.buf(ctx, 2 * groups * cols * 4)?;
    // `pix`: two floats per pixel (a placeholder where the kernels read none).
    let pixels: u64 = wins.iter().map(|w| w.pixels).sum();
    let pix = rec.buf(
        ctx,
        if quads && !local {
            8 * pixels.max(2)
        } else {
            16
        },
    )?;
    let pix_bind = |w: &Win| {
        if quads && !local {
            vec![pix.bind_window(11, 2 * (w.elem_first / c), 2 * w.pixels.max(2))]
        } else if quads {
            vec![pix.bind(11)]
        } else {
            Vec::new()
        }
    };
    for w in &wins {
        let mut binds = vec![
            Bind::window(b_x, x, w.elem_first, w.elems),
            Bind::window(b_t, t, w.elem_first, w.elems),
            partials.bind(4),
        ];
        binds.extend(pix_bind(w));
        let step = ctx.step(&src, stats, &per_window(w), binds, stats_groups(w).1)?;
        rec.prog.steps.push(step);
    }
    let loss = ctx.empty(&[], DType::F32)?;
    let fin = rec.reduce_finalize(
        ctx,
        &src,
        &base,
        Tail {
            partials,
            rows: 2 * groups,
            cols,
            totals: 5,
            loss: Bind::tensor(6, &loss),
            coef: Some((7, 2 * groups)),
            extra: Vec::new(),
        },
    )?;
    let coef = fin.coef.ok_or_else(|| {
        crate::Error::InvalidInput(format!("{what}: the finalize step made no coefficients"))
    })?;
    for w in &wins {
        let mut binds = vec![
            Bind::window(b_x, x, w.elem_first, w.elems),
            Bind::window(b_t, t, w.elem_first, w.elems),
            Bind::window(b_grad, &grad, w.elem_first, w.elems),
            coef.bind(7),
        ];
        binds.extend(pix_bind(w));
        // The four-pixel path's gradient through a softmax: with the CPU kernels swept class by
        // class over a thread's accesses (swept_grad), else plane by plane (plane_grad; binary
        // per class too) but per class, or with few channels, pixel by pixel (multi_grad).
        let step = if gq.is_some() {
            let groups = w.pixels / inner * gtps;
            ctx.step(&src, "swept_grad", &per_window(w), binds, groups)?
        } else if quads && !(multi && (per_class || local)) {
            ctx.step(&src, "plane_grad", &per_window(w), binds, w.tiles * c)?
        } else {
            ctx.step(&src, grad_pass, &per_window(w), binds, w.tiles)?
        };
        rec.prog.steps.push(step);
    }
    Ok((loss, vec![grad]))
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Loss for JaccardLoss {
    fn name(&self) -> &'static str {
        "JaccardLoss"
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
        let layout = self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        let (multi, per_class) = (self.is_multiclass, self.per_class);
        build(
            ctx,
            "JaccardLoss",
            Kind::Jaccard,
            multi,
            per_class,
            layout,
            self.eps,
            0.0,
            inputs[0],
            inputs[1],
            opts,
            rec,
        )
    }
}

impl Loss for DiceLoss {
    fn name(&self) -> &'static str {
        "DiceLoss"
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
        let layout = self.check_shapes(inputs[0].shape(), inputs[1].shape())?;
        let (multi, per_class) = (self.is_multiclass, self.per_class);
        build(
            ctx,
            "DiceLoss",
            Kind::Dice,
            multi,
            per_class,
            layout,
            self.eps,
            self.smooth,
            inputs[0],
            inputs[1],
            opts,
            rec,
        )
    }
}
