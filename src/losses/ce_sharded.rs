//! Class-sharded `CrossEntropyLoss` (shaders/ce_sharded.wgsl): each rank of a
//! [`Collective`] holds a slice of the classes of the logits (vocabulary-parallel, as in
//! Megatron-LM's parallel cross-entropy or PartialFC), every rank holds the whole batch and the
//! same global labels.
//!
//! # The run
//! 1. **Agreement** (one MAX all-reduce of `10 + 3 k` numbers for `k` ranks): a fingerprint of
//!    the config (the full class-weight vector included) and of the shapes past the class
//!    dimension, a fingerprint of the labels, the world size, whether each rank refused its
//!    input, and each rank's class slice `(offset, count)`. The slices must tile
//!    `[0, C_total)` with no overlap and no gap; `C_total` is their total.
//! 2. **Labels**: read back (every rank holds them); a label outside `[0, C_total)` that is not
//!    `ignore_index` is [`Error::LabelOutOfRange`] on every rank, before any exchange of
//!    statistics.
//! 3. **Local statistics** on the device, one thread per position: the local max `m_r`,
//!    `s_r = sum_c exp(x_c - m_r)`, the target logit where this rank owns the label, and with
//!    label smoothing `t_r = sum_c w_c (m_r - x_c)`.
//! 4. **Merge** on the host in float64: a MAX all-reduce of the `P` maxima (`M`, plus one word:
//!    whether a rank failed in step 3), then one SUM all-reduce of `2 P` numbers (`3 P` with
//!    label smoothing): `s_r exp(m_r - M)`, `M - x_y` (from the owner of the label) and
//!    `W_r (M - m_r) + t_r` (`W_r`: the rank's summed class weight). `lse = M + ln(sum s)`.
//! 5. **Value and gradient**: the loss of every position (and its `mean` / `sum`) on the host in
//!    float64, in position order, so it is the same on every rank; the mean's divisor (the
//!    summed `w_y` of the targets that are not ignored) comes from the labels and the weights
//!    every rank holds, without a further exchange. The gradient of this rank's logits runs on
//!    the device from the global `lse` and two coefficients per position.
//!
//! Traffic per step, `P` positions (`N d1 ...`): `8 (10 + 3 k)` bytes of agreement,
//! `8 (P + 1)` bytes of MAX and `16 P` bytes of SUM (`24 P` with label smoothing): about `24 P`
//! (`32 P`) bytes in three all-reduces, whatever the number of classes.

use super::{GradOpts, Recorder};
use crate::config::{CrossEntropyLoss, Reduction};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Program, ShaderSource, WG};
use crate::shard::{Collective, ReduceOp};
use crate::tensor::{DType, Tensor};
use crate::LossOutput;

const WHAT: &str = "CrossEntropyLoss (class-sharded)";

const BODY: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/ce_sharded.wgsl"));

fn source(accumulate: bool) -> ShaderSource {
    ShaderSource::new("ce_sharded", BODY).with_accumulate(accumulate)
}

/// Both variants (writing and accumulating the gradient).
pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    vec![source(false), source(true)]
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    positions: u32,
    inner: u32,
    classes: u32,
    offset: u32,
    flags: u32,
    wsum: f32,
    pad0: u32,
    pad1: u32,
}

const F_WEIGHTED: u32 = 2;
const F_SMOOTH: u32 = 16;

/// What a rank checked and read before the agreement.
struct Local {
    /// Samples, local classes, positions per sample.
    n: u64,
    classes: u64,
    inner: u64,
    labels: Vec<i32>,
}

fn halves(h: u64) -> (f64, f64) {
    ((h >> 32) as f64, (h & 0xffff_ffff) as f64)
}

impl CrossEntropyLoss {
    /// The loss of logits whose classes are split across the ranks of `collective`
    /// (vocabulary-parallel cross-entropy): exactly PyTorch's `CrossEntropyLoss` over the
    /// concatenated classes.
    ///
    /// * `input`: this rank's logits of the classes `[class_offset, class_offset + C_r)`,
    ///   `[N, C_r]`, `[N, C_r, d1, ...]` or `[C_r]` (F32); `C_r >= 1`.
    /// * `target`: the global class labels `[N]`, `[N, d1, ...]` or `[]` (I32), the same on
    ///   every rank; every rank holds the whole batch.
    /// * `self.weight`, if any, is the full class-weight vector of length `C_total` (the sum of
    ///   the ranks' `C_r`), the same on every rank.
    ///
    /// The ranks' slices must tile `[0, C_total)` without overlap or gap. The value (a scalar,
    /// or per position for `reduction = none`) is the same on every rank; the gradient is
    /// `dL / d(this rank's logits)`, times `opts.scale`. Bad input on one rank (shapes, types,
    /// other labels, overlapping or gapped slices, a label that no rank owns) is an error on
    /// every rank. The statistics are merged in float64 in a fixed order, so results are the
    /// same from run to run; a world of one agrees with [`crate::Loss::compute`] to float32
    /// rounding. The merge reads the per-position statistics back to the host (it blocks); the
    /// all-reduces carry about `24 P` bytes (`32 P` with label smoothing) for `P` positions,
    /// whatever the number of classes (see the module `deepml::losses::ce_sharded`). With the
    /// context's `check_finite`, logits holding NaN or infinity on one rank are an error on
    /// every rank.
    pub fn compute_class_sharded(
        &self,
        ctx: &LossContext,
        input: &Tensor,
        target: &Tensor,
        class_offset: usize,
        collective: &dyn Collective,
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let (w, r) = (collective.size(), collective.rank());
        if w == 0 || r >= w {
            return Err(Error::InvalidConfig(format!(
                "{WHAT}: rank {r} of a world of {w}"
            )));
        }
        let local = self.local_checks(ctx, input, target, opts).and_then(|l| {
            if class_offset as u64 + l.classes > u32::MAX as u64 {
                return Err(Error::TooLarge(format!(
                    "{WHAT}: classes [{class_offset}, {}) do not fit 32-bit indices",
                    class_offset as u64 + l.classes
                )));
            }
            Ok(l)
        });
        // The key: the config (full weight vector included) and the shapes past the classes.
        let mut key = format!("{self:?}|{:?}|{:?}", input.dtype(), target.dtype());
        let mut rest = input.shape().to_vec();
        if rest.len() >= 2 {
            rest.remove(1);
        } else {
            rest.clear();
        }
        key.push_str(&format!("|{rest:?}|{:?}", target.shape()));
        let (kh, kl) = halves(crate::shard::fingerprint(&key));
        let (lh, ll) = match &local {
            Ok(l) => halves(crate::shard::fingerprint_bytes(bytemuck::cast_slice(
                &l.labels,
            ))),
            Err(_) => (0.0, 0.0),
        };
        // [key hi, lo, -hi, -lo, labels hi, lo, -hi, -lo, world, -world,
        //  failed per rank, offset per rank, count per rank]
        let mut msg = vec![0.0; 10 + 3 * w];
        msg[..10].copy_from_slice(&[kh, kl, -kh, -kl, lh, ll, -lh, -ll, w as f64, -(w as f64)]);
        msg[10 + r] = local.is_err() as u32 as f64;
        if let Ok(l) = &local {
            msg[10 + w + r] = class_offset as f64;
            msg[10 + 2 * w + r] = l.classes as f64;
        }
        collective.all_reduce(&mut msg, ReduceOp::Max)?;
        let local = local?;
        let failed = &msg[10..10 + w];
        if failed.iter().any(|&f| f > 0.0) {
            return Err(Error::InvalidInput(format!(
                "{WHAT}: rank(s) {} refused their input (see the error there)",
                crate::shard::ranks_text(failed)
            )));
        }
        if msg[0] != -msg[2] || msg[1] != -msg[3] {
            return Err(Error::InvalidConfig(format!(
                "{WHAT}: the ranks disagree on the loss's config (weight included) or the shapes past the class dimension (rank {r}: {key})"
            )));
        }
        if msg[8] != -msg[9] {
            return Err(Error::InvalidConfig(format!(
                "{WHAT}: the ranks disagree on the world size"
            )));
        }
        if msg[4] != -msg[6] || msg[5] != -msg[7] {
            return Err(Error::InvalidInput(format!(
                "{WHAT}: the ranks hold different labels; every rank must hold the same global labels"
            )));
        }
        let slices: Vec<(u64, u64)> = (0..w)
            .map(|i| (msg[10 + w + i] as u64, msg[10 + 2 * w + i] as u64))
            .collect();
        let total = crate::shard::tiling(WHAT, &slices)?;
        // From here on every rank decides on the same data: the same errors everywhere.
        let weights: Vec<f64> = match &self.weight {
            Some(wt) => {
                if wt.data.len() as u64 != total || wt.shape.len() != 1 {
                    return Err(Error::InvalidInput(format!(
                        "{WHAT}: weight must be the full class-weight vector of length C_total = {total}, got shape {:?}",
                        wt.shape
                    )));
                }
                wt.data.iter().map(|&v| v as f64).collect()
            }
            None => vec![1.0; total as usize],
        };
        let ignore = self.ignore_index;
        for (p, &y) in local.labels.iter().enumerate() {
            if y as i64 != ignore && (y < 0 || y as u64 >= total) {
                return Err(Error::LabelOutOfRange(format!(
                    "{WHAT}: label {y} at position {p} is owned by no rank (classes [0, {total})) and is not ignore_index {ignore}"
                )));
            }
        }
        self.sharded_rest(
            ctx,
            input,
            target,
            class_offset as u64,
            collective,
            opts,
            local,
            &weights,
        )
    }

    /// The local checks, and the labels read back.
    fn local_checks(
        &self,
        ctx: &LossContext,
        input: &Tensor,
        target: &Tensor,
        opts: &GradOpts,
    ) -> Result<Local> {
        ctx.owns(WHAT, "input", input)?;
        ctx.owns(WHAT, "target", target)?;
        for (i, t) in opts.into.iter().enumerate() {
            if let Some(t) = t {
                ctx.owns(WHAT, &format!("GradOpts.into[{i}]"), t)?;
            }
        }
        self.validate()?;
        super::want_dtype(WHAT, "input", input, DType::F32)?;
        super::want_dtype(WHAT, "target", target, DType::I32)?;
        let (xs, ts) = (input.shape(), target.shape());
        let (n, classes, inner) = match xs.len() {
            0 => {
                return Err(Error::ShapeMismatch(format!(
                    "{WHAT}: input must be [C_r], [N, C_r] or [N, C_r, d1, ...], got a scalar"
                )))
            }
            1 => {
                if !ts.is_empty() {
                    return Err(Error::ShapeMismatch(format!(
                        "{WHAT}: an unbatched input {xs:?} needs a scalar target, got {ts:?}"
                    )));
                }
                (1u64, xs[0] as u64, 1u64)
            }
            _ => {
                let mut want = vec![xs[0]];
                want.extend_from_slice(&xs[2..]);
                if ts != want.as_slice() {
                    return Err(Error::ShapeMismatch(format!(
                        "{WHAT}: input {xs:?} needs target of shape {want:?}, got {ts:?}"
                    )));
                }
                (
                    xs[0] as u64,
                    xs[1] as u64,
                    xs[2..].iter().map(|&d| d as u64).product(),
                )
            }
        };
        if classes == 0 || n * inner == 0 {
            return Err(Error::EmptyInput(format!(
                "{WHAT}: input {xs:?} has no elements (every rank holds at least one class and the batch is not empty)"
            )));
        }
        let positions = n * inner;
        let bytes = positions * classes * 4;
        if bytes > ctx.max_window_bytes || positions * 12 > ctx.max_window_bytes {
            return Err(Error::TooLarge(format!(
                "{WHAT}: {bytes} bytes of logits are over the {}-byte storage binding limit (the class-sharded path binds them whole)",
                ctx.max_window_bytes
            )));
        }
        if classes > u32::MAX as u64 || positions > u32::MAX as u64 {
            return Err(Error::TooLarge(format!(
                "{WHAT}: {classes} classes x {positions} positions do not fit 32-bit indices"
            )));
        }
        if opts.accumulate && opts.into.first().and_then(|t| t.as_ref()).is_none() {
            return Err(Error::InvalidInput(
                "accumulate needs a gradient tensor for input 0".into(),
            ));
        }
        if let Some(g) = opts.into.first().and_then(|t| t.as_ref()) {
            if g.shape() != xs || g.dtype() != DType::F32 {
                return Err(Error::ShapeMismatch(format!(
                    "gradient tensor 0 has shape {:?} ({:?}), the input has {xs:?}",
                    g.shape(),
                    g.dtype()
                )));
            }
        }
        if !opts.scale.is_finite() {
            return Err(Error::InvalidConfig(format!(
                "the upstream gradient scale must be finite, got {}",
                opts.scale
            )));
        }
        let labels = ctx.read_i32(target)?;
        Ok(Local {
            n,
            classes,
            inner,
            labels,
        })
    }

    /// Steps 3 to 5 of the run (see the module's documentation), after the agreement.
    #[allow(clippy::too_many_arguments)]
    fn sharded_rest(
        &self,
        ctx: &LossContext,
        input: &Tensor,
        target: &Tensor,
        offset: u64,
        coll: &dyn Collective,
        opts: &GradOpts,
        local: Local,
        weights: &[f64],
    ) -> Result<LossOutput> {
        let Local {
            n,
            classes,
            inner,
            labels,
        } = local;
        let positions = (n * inner) as usize;
        let total = weights.len() as u64;
        let ls = self.label_smoothing;
        let smooth = ls > 0.0;
        let weighted = self.weight.is_some();
        let wsum: f64 = weights.iter().sum();
        let local_w = &weights[offset as usize..(offset + classes) as usize];
        let wsum_local: f64 = local_w.iter().sum();
        let mut rec = Recorder::default();
        let params = Params {
            positions: positions as u32,
            inner: inner as u32,
            classes: classes as u32,
            offset: offset as u32,
            flags: if weighted { F_WEIGHTED } else { 0 } | if smooth { F_SMOOTH } else { 0 },
            wsum: wsum as f32,
            pad0: 0,
            pad1: 0,
        };
        let groups = (positions as u64).div_ceil(WG as u64);
        let weight_slice: Vec<f32> = if weighted {
            local_w.iter().map(|&v| v as f32).collect()
        } else {
            vec![0.0]
        };

        // Step 3: the local statistics, read back. A failure here travels with the maxima.
        let stats = (|| {
            let weight_t = rec.buf_from(ctx, &weight_slice)?;
            let stats_t = ctx.empty(&[positions, 4], DType::F32)?;
            // With check_finite, the scan of the logits sets the flags that the read checks.
            if ctx.check_finite {
                ctx.scoped(|| ctx.finite_steps(&mut rec, WHAT, &[input]))?;
            }
            let step = ctx.scoped(|| {
                ctx.step(
                    &source(false),
                    "stats",
                    &params,
                    vec![
                        Bind::tensor(1, input),
                        Bind::tensor(2, target),
                        weight_t.bind(3),
                        Bind::tensor(4, &stats_t),
                    ],
                    groups,
                )
            })?;
            rec.prog.steps.push(step);
            ctx.submit(std::mem::take(&mut rec.prog), &mut rec.scratch)?;
            let s = ctx.read(&rec.flagged(stats_t))?;
            Ok::<_, Error>((s, weight_t))
        })();

        // Step 4: MAX of the maxima (and the failure flags).
        let mut msg = vec![f64::NEG_INFINITY; positions + 1];
        msg[positions] = stats.is_err() as u32 as f64;
        if let Ok((s, _)) = &stats {
            for p in 0..positions {
                msg[p] = s[4 * p] as f64;
            }
        }
        coll.all_reduce(&mut msg, ReduceOp::Max)?;
        let (s, weight_t) = stats?;
        if msg[positions] > 0.0 {
            return Err(Error::InvalidInput(format!(
                "{WHAT}: a rank failed to compute its statistics (non-finite logits with check_finite on, or a device error: see the error there)"
            )));
        }
        let big_m: Vec<f64> = msg[..positions].to_vec();
        let ignored = |y: i32| y as i64 == self.ignore_index;
        let owns = |y: i32| {
            !ignored(y)
                && (y as i64) >= offset as i64
                && ((y as i64 - offset as i64) as u64) < classes
        };
        // SUM of [s_r exp(m_r - M), M - x_y (owner), W_r (M - m_r) + t_r (smoothing)].
        let per = if smooth { 3 } else { 2 };
        let mut sums = vec![0.0; per * positions];
        for p in 0..positions {
            let (m, sr, xy, t) = (
                s[4 * p] as f64,
                s[4 * p + 1] as f64,
                s[4 * p + 2] as f64,
                s[4 * p + 3] as f64,
            );
            let mm = big_m[p];
            sums[per * p] = sr * (m - mm).exp();
            if owns(labels[p]) {
                sums[per * p + 1] = mm - xy;
            }
            if smooth {
                sums[per * p + 2] = wsum_local * (mm - m) + t;
            }
        }
        coll.all_reduce(&mut sums, ReduceOp::Sum)?;

        // Step 5: the value on the host, in position order; the gradient's coefficients.
        let c_total = total as f64;
        let mut losses = vec![0.0f64; positions];
        let mut lse = vec![0.0f64; positions];
        let mut wy = vec![0.0f64; positions];
        for p in 0..positions {
            let y = labels[p];
            lse[p] = big_m[p] + sums[per * p].ln();
            if ignored(y) {
                continue;
            }
            wy[p] = weights[y as usize];
            let d = lse[p] - big_m[p];
            let mut l = (1.0 - ls) * wy[p] * (d + sums[per * p + 1]);
            if smooth {
                l += ls / c_total * (wsum * d + sums[per * p + 2]);
            }
            losses[p] = l;
        }
        let denom: f64 = wy.iter().sum();
        let (loss, gscale) = match self.reduction {
            Reduction::None => {
                let v: Vec<f32> = losses.iter().map(|&v| v as f32).collect();
                (ctx.upload(&v, target.shape())?, opts.scale as f64)
            }
            Reduction::Sum => {
                let v: f64 = losses.iter().sum();
                (ctx.upload(&[v as f32], &[])?, opts.scale as f64)
            }
            Reduction::Mean => {
                let v: f64 = losses.iter().sum::<f64>() / denom;
                (ctx.upload(&[v as f32], &[])?, opts.scale as f64 / denom)
            }
        };
        let mut coef = vec![0.0f32; 3 * positions];
        for p in 0..positions {
            coef[3 * p] = lse[p] as f32;
            if !ignored(labels[p]) {
                coef[3 * p + 1] = ((1.0 - ls) * wy[p] * gscale) as f32;
                coef[3 * p + 2] = (ls / c_total * gscale) as f32;
            }
        }
        let coef_t = rec.buf_from(ctx, &coef)?;
        let grad = match opts.into.first().and_then(|t| t.as_ref()) {
            Some(g) => g.clone(),
            None => ctx.empty(input.shape(), DType::F32)?,
        };
        let step = ctx.scoped(|| {
            ctx.step(
                &source(opts.accumulate),
                "grad_pass",
                &params,
                vec![
                    Bind::tensor(1, input),
                    Bind::tensor(2, target),
                    weight_t.bind(3),
                    coef_t.bind(5),
                    Bind::tensor(6, &grad),
                ],
                groups,
            )
        })?;
        ctx.submit(Program { steps: vec![step] }, &mut rec.scratch)?;
        Ok(LossOutput {
            loss,
            grads: vec![grad],
            grad_inputs: vec![Some(0)],
            terms: Vec::new(),
            _scratch: rec.scratch,
        })
    }
}
