//! `Combined`: a weighted sum of losses in one submission (deepml's `0.5 * BCE + 0.5 * Jaccard`,
//! or a multi-task `seg + 0.5 * cls`), and the in-place `axpy` of training loops.

use super::{GradOpts, Loss, LossOutput, Recorder};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Bind, Scratch, ShaderSource, WG};
use crate::tensor::{DType, Tensor};

const UTIL: &str = include_str!(concat!(env!("OUT_DIR"), "/shaders/util.wgsl"));

pub(crate) fn shader_variants() -> Vec<ShaderSource> {
    vec![ShaderSource::new("util", UTIL)]
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    first: u32,
    a: f32,
    pad: u32,
}

/// One term of a [`Combined`] loss: `weight * loss(inputs[i] for i in inputs)`.
pub struct Term {
    /// The factor of the term's value and gradients in the sum.
    pub weight: f32,
    /// The loss.
    pub loss: Box<dyn Loss + Send + Sync>,
    /// For each of the loss's inputs, its index in the combined input list.
    pub inputs: Vec<usize>,
}

impl std::fmt::Debug for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Term")
            .field("weight", &self.weight)
            .field("loss", &self.loss.name())
            .field("inputs", &self.inputs)
            .finish()
    }
}

/// A weighted sum of losses. Terms may share inputs (BCE and Jaccard on the same logits) or
/// not (a segmentation term and a classification term); every term's scaled gradient is
/// accumulated into one gradient per combined input.
#[derive(Debug, Default)]
pub struct Combined {
    /// The terms, summed in order.
    pub terms: Vec<Term>,
}

impl Combined {
    /// A combined loss without terms (add them with [`Self::term`]).
    pub fn new() -> Self {
        Combined::default()
    }

    /// Adds `weight * loss`, the loss taking the combined inputs at positions `inputs`.
    pub fn term(
        mut self,
        weight: f32,
        loss: impl Loss + Send + Sync + 'static,
        inputs: &[usize],
    ) -> Self {
        self.terms.push(Term {
            weight,
            loss: Box::new(loss),
            inputs: inputs.to_vec(),
        });
        self
    }

    /// The combined inputs that some term differentiates, in order: the inputs of the
    /// gradients of [`LossOutput::grads`] (and of `GradOpts::into`).
    pub fn grad_inputs(&self) -> Vec<usize> {
        let mut v: Vec<usize> = self
            .terms
            .iter()
            .flat_map(|t| {
                t.loss
                    .grad_inputs()
                    .into_iter()
                    .flatten()
                    .filter_map(|p| t.inputs.get(p).copied())
            })
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Value, per-term values and gradients in one submission.
    pub fn compute(&self, ctx: &LossContext, inputs: &[&Tensor]) -> Result<LossOutput> {
        self.compute_with(ctx, inputs, &GradOpts::default())
    }

    /// As `compute`, with an upstream scale and caller-owned gradient buffers (`opts.into[k]`
    /// for the k-th of [`Self::grad_inputs`]), written or accumulated into.
    pub fn compute_with(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let mut rec = Recorder::default();
        let out = ctx.scoped(|| self.build(ctx, inputs, opts, &mut rec))?;
        ctx.submit(std::mem::take(&mut rec.prog), &mut rec.scratch)?;
        Ok(Self::output(out, rec))
    }

    /// The combined loss of the whole batch when this rank holds one shard of it (see
    /// [`Loss::compute_sharded`] and [`crate::shard`]). The terms' statistics travel in one
    /// message per exchange: one all-reduce for the usual terms (two where a weighted
    /// cross-entropy's mean first needs the summed weight of the whole batch).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn compute_sharded(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        collective: &dyn crate::shard::Collective,
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        // An input is split along the batch unless a term holds it whole.
        let batched = (0..inputs.len())
            .map(|i| {
                self.terms.iter().all(|t| {
                    t.inputs
                        .iter()
                        .enumerate()
                        .all(|(p, &ci)| ci != i || t.loss.batched_input(p))
                })
            })
            .collect();
        let config = self
            .terms
            .iter()
            .map(|t| format!("{} x {:?} {}", t.weight, t.inputs, t.loss.config_key()))
            .collect::<Vec<_>>()
            .join(" + ");
        let pre = (|| {
            for (i, t) in inputs.iter().enumerate() {
                ctx.owns("Combined", &format!("input {i}"), t)?;
            }
            Ok(())
        })();
        let grad_inputs = self.grad_inputs().into_iter().map(Some).collect();
        let job = crate::shard::Job {
            what: "Combined",
            config,
            batched,
            pre,
            grad_inputs,
            build: Box::new(|ins, o, rec| {
                let (total, terms, grads) = self.build(ctx, ins, o, rec)?;
                Ok(crate::shard::Built {
                    loss: total,
                    grad_inputs: grads.iter().map(|(i, _)| Some(*i)).collect(),
                    grads: grads.into_iter().map(|(_, g)| g).collect(),
                    terms,
                })
            }),
        };
        crate::shard::run(ctx, inputs, collective, opts, job)
    }

    /// Records the same work into the caller's encoder; the work runs when the caller submits
    /// it. Keep the returned output alive until then.
    #[must_use = "it holds the recorded work's buffers: keep it until the encoder is submitted"]
    pub fn record(
        &self,
        ctx: &LossContext,
        encoder: &mut wgpu::CommandEncoder,
        inputs: &[&Tensor],
        opts: &GradOpts,
    ) -> Result<LossOutput> {
        let mut rec = Recorder::default();
        let out = ctx.scoped(|| self.build(ctx, inputs, opts, &mut rec))?;
        ctx.encode(std::mem::take(&mut rec.prog), encoder, &mut rec.scratch)?;
        Ok(Self::output(out, rec))
    }

    /// The result tensors, each holding the computation's error flags (if it has any).
    #[allow(clippy::type_complexity)]
    fn output(
        (total, terms, grads): (Tensor, Vec<Tensor>, Vec<(usize, Tensor)>),
        rec: Recorder,
    ) -> LossOutput {
        let flag = rec.flag;
        let f = |t: Tensor| t.with_flag(flag.clone());
        LossOutput {
            loss: f(total),
            terms: terms.into_iter().map(f).collect(),
            grad_inputs: grads.iter().map(|(i, _)| Some(*i)).collect(),
            grads: grads.into_iter().map(|(_, g)| f(g)).collect(),
            _scratch: rec.scratch,
        }
    }

    #[allow(clippy::type_complexity)]
    fn build(
        &self,
        ctx: &LossContext,
        inputs: &[&Tensor],
        opts: &GradOpts,
        rec: &mut Recorder,
    ) -> Result<(Tensor, Vec<Tensor>, Vec<(usize, Tensor)>)> {
        if self.terms.is_empty() {
            return Err(Error::InvalidConfig(
                "a Combined loss needs at least one term".into(),
            ));
        }
        for (i, t) in inputs.iter().enumerate() {
            ctx.owns("Combined", &format!("input {i}"), t)?;
        }
        for (i, t) in opts.into.iter().enumerate() {
            if let Some(t) = t {
                ctx.owns("Combined", &format!("GradOpts.into[{i}]"), t)?;
            }
        }
        if ctx.check_finite {
            let mut used: Vec<usize> = self
                .terms
                .iter()
                .flat_map(|t| t.inputs.iter().copied())
                .collect();
            used.sort_unstable();
            used.dedup();
            let scanned: Vec<&Tensor> = used
                .iter()
                .filter_map(|&i| inputs.get(i).copied())
                .collect();
            ctx.finite_steps(rec, "Combined", &scanned)?;
        }
        // One gradient per differentiated input: the caller's (`opts.into`, in the order of
        // `grad_inputs`) or new; with `opts.accumulate` the first term adds to it too.
        let grad_inputs = self.grad_inputs();
        let mut grads: Vec<Option<Tensor>> = vec![None; inputs.len()];
        let mut written = vec![false; inputs.len()];
        // One shard of a batch split across several ranks: the terms' statistics are merged
        // into one exchange (their steps interleaved by phase), so every term accumulates into
        // gradients zeroed first, whatever order their gradient passes then run in.
        let merge = rec.shard.as_ref().is_some_and(|p| p.world > 1);
        if merge {
            rec.flag_bind(ctx, 0, "Combined")?;
        }
        for (k, &ci) in grad_inputs.iter().enumerate() {
            if let Some(x) = inputs.get(ci) {
                let g = opts.grad_for(ctx, k, x)?;
                if merge && !opts.accumulate {
                    ctx.fill_zero_steps(rec, &g)?;
                }
                written[ci] = opts.accumulate || merge;
                grads[ci] = Some(g);
            }
        }
        let mut subs: Vec<Recorder> = Vec::new();
        let mut totals = Vec::new();
        let total = ctx.empty(&[], DType::F32)?;
        let src = ShaderSource::new("util", UTIL);
        let mut term_values = Vec::new();
        for (k, term) in self.terms.iter().enumerate() {
            if !term.weight.is_finite() {
                return Err(Error::InvalidConfig(format!(
                    "term {k}: weight {} is not finite",
                    term.weight
                )));
            }
            let names = term.loss.input_names();
            if term.inputs.len() != names.len() {
                return Err(Error::InvalidInput(format!(
                    "term {k} ({}) takes {} inputs, {} indices given",
                    term.loss.name(),
                    names.len(),
                    term.inputs.len()
                )));
            }
            let mine: Vec<&Tensor> = term
                .inputs
                .iter()
                .map(|&i| {
                    inputs.get(i).copied().ok_or_else(|| {
                        Error::InvalidInput(format!(
                            "term {k}: input index {i} but only {} inputs",
                            inputs.len()
                        ))
                    })
                })
                .collect::<Result<_>>()?;
            // Each gradient of the term goes to the combined input it differentiates; the first
            // term to touch an input writes its gradient, the others add to it.
            let targets: Vec<Option<usize>> = term
                .loss
                .grad_inputs()
                .into_iter()
                .map(|p| p.map(|p| term.inputs[p]))
                .collect();
            let mut into = Vec::new();
            let mut accumulate = None;
            for t in &targets {
                let Some(ci) = *t else {
                    return Err(Error::InvalidInput(format!(
                        "term {k} ({}) has a gradient that is not one of its inputs; it cannot be combined",
                        term.loss.name()
                    )));
                };
                let acc = written[ci];
                if accumulate.is_some_and(|a| a != acc) {
                    return Err(Error::InvalidInput(format!(
                        "term {k} ({}): its gradients mix inputs seen and unseen by earlier terms",
                        term.loss.name()
                    )));
                }
                accumulate = Some(acc);
                into.push(grads[ci].clone());
            }
            let term_opts = GradOpts {
                scale: opts.scale * term.weight,
                into,
                accumulate: accumulate.unwrap_or(false),
            };
            let (value, _) = if merge {
                let mut sub = Recorder {
                    shard: rec.shard.as_ref().map(|p| p.child()),
                    flag: rec.flag.clone(),
                    ..Default::default()
                };
                let r = term.loss.build(ctx, &mine, &term_opts, &mut sub)?;
                subs.push(sub);
                r
            } else {
                term.loss.build(ctx, &mine, &term_opts, rec)?
            };
            if value.numel() != 1 {
                return Err(Error::InvalidConfig(format!(
                    "term {k} ({}) must reduce to a scalar (reduction mean or sum), its loss has shape {:?}",
                    term.loss.name(),
                    value.shape()
                )));
            }
            for ci in targets.into_iter().flatten() {
                written[ci] = true;
            }
            let p = Params {
                n: 1,
                first: (k == 0) as u32,
                a: term.weight,
                pad: 0,
            };
            let step = ctx.step(
                &src,
                "accumulate_scalar",
                &p,
                vec![Bind::tensor(1, &total), Bind::tensor(2, &value)],
                1,
            )?;
            if merge {
                totals.push(step);
            } else {
                rec.prog.steps.push(step);
            }
            term_values.push(value);
        }
        if merge {
            interleave(rec, subs);
            rec.prog.steps.extend(totals);
        }
        let grads = grad_inputs
            .into_iter()
            .filter_map(|ci| grads[ci].take().map(|g| (ci, g)))
            .collect();
        Ok((total, term_values, grads))
    }
}

/// Moves the terms' recorded work into `rec`, phase by phase: the steps of every term up to
/// its first exchange, one exchange of all their first statistics, and so on; then the rest
/// of every term.
fn interleave(rec: &mut Recorder, subs: Vec<Recorder>) {
    let mut parts = Vec::with_capacity(subs.len());
    for mut sub in subs {
        rec.scratch.bufs.append(&mut sub.scratch.bufs);
        let cuts = sub.shard.take().map(|p| p.cuts).unwrap_or_default();
        parts.push((sub.prog.steps.into_iter(), cuts, 0usize));
    }
    let levels = parts.iter().map(|(_, c, _)| c.len()).max().unwrap_or(0);
    for j in 0..levels {
        for (steps, cuts, done) in parts.iter_mut() {
            if let Some(c) = cuts.get(j) {
                rec.prog.steps.extend(steps.by_ref().take(c.at - *done));
                *done = c.at;
            }
        }
        for (_, cuts, _) in &parts {
            for p in cuts.get(j).map(|c| c.parts.as_slice()).unwrap_or(&[]) {
                rec.exchange(&p.buffer, p.first, p.len, p.merge);
            }
        }
    }
    for (steps, _, _) in parts {
        rec.prog.steps.extend(steps);
    }
}

impl LossContext {
    /// Records the zeroing of an f32 tensor.
    pub(crate) fn fill_zero_steps(&self, rec: &mut Recorder, x: &Tensor) -> Result<()> {
        self.util_steps(rec, "fill_zero", x.numel() as u64, 0.0, |w| {
            vec![Bind::window(1, x, w.first, w.count)]
        })
    }

    /// Records util.wgsl's element-wise entry `entry` over `n` elements (four per invocation),
    /// windowed, with `binds` of each window.
    fn util_steps(
        &self,
        rec: &mut Recorder,
        entry: &str,
        n: u64,
        a: f32,
        binds: impl Fn(&crate::kernel::Window) -> Vec<Bind>,
    ) -> Result<()> {
        let src = ShaderSource::new("util", UTIL);
        let per = 4 * WG as u64;
        for w in self.windows(n, 4, per)? {
            let p = Params {
                n: w.count as u32,
                first: 0,
                a,
                pad: 0,
            };
            let step = self.step(&src, entry, &p, binds(&w), w.count.div_ceil(per))?;
            rec.prog.steps.push(step);
        }
        Ok(())
    }

    /// `x += a * y` in place, on the device (an SGD step: `a = -lr`). One submission.
    pub fn axpy(&self, x: &Tensor, a: f32, y: &Tensor) -> Result<()> {
        let mut rec = Recorder::default();
        self.scoped(|| self.axpy_steps(&mut rec, x, a, y))?;
        self.submit(rec.prog, &mut rec.scratch)
    }

    /// Records `x += a * y` into the caller's encoder; keep the returned scratch until the
    /// encoder is submitted.
    #[must_use = "it holds the recorded work's buffers: keep it until the encoder is submitted"]
    pub fn record_axpy(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        x: &Tensor,
        a: f32,
        y: &Tensor,
    ) -> Result<Scratch> {
        let mut rec = Recorder::default();
        self.scoped(|| self.axpy_steps(&mut rec, x, a, y))?;
        self.encode(rec.prog, encoder, &mut rec.scratch)?;
        Ok(rec.scratch)
    }

    /// Records, for each f32 input, a scan that sets the non-finite flag (check_finite).
    pub(crate) fn finite_steps(
        &self,
        rec: &mut Recorder,
        what: &str,
        inputs: &[&Tensor],
    ) -> Result<()> {
        for t in inputs.iter().filter(|t| t.dtype() == DType::F32) {
            let flags = rec.flag_bind(self, 3, what)?;
            self.util_steps(rec, "check_finite", t.numel() as u64, 0.0, |w| {
                vec![Bind::window(2, t, w.first, w.count), flags.clone()]
            })?;
        }
        Ok(())
    }

    fn axpy_steps(&self, rec: &mut Recorder, x: &Tensor, a: f32, y: &Tensor) -> Result<()> {
        self.owns("axpy", "x", x)?;
        self.owns("axpy", "y", y)?;
        if x.shape() != y.shape() || x.dtype() != DType::F32 || y.dtype() != DType::F32 {
            return Err(Error::ShapeMismatch(format!(
                "axpy: x {:?} ({:?}) and y {:?} ({:?}) must be f32 tensors of one shape",
                x.shape(),
                x.dtype(),
                y.shape(),
                y.dtype()
            )));
        }
        if !a.is_finite() {
            return Err(Error::InvalidConfig(format!("axpy: a = {a} is not finite")));
        }
        self.util_steps(rec, "axpy", x.numel() as u64, a, |w| {
            vec![
                Bind::window(1, x, w.first, w.count),
                Bind::window(2, y, w.first, w.count),
            ]
        })
    }
}
