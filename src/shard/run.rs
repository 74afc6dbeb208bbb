//! The phased run of one shard's recorded work (native only: it blocks on read-backs).

use super::{agree, confirm, key_of, Built, Collective, Cut, Merge, Part, Plan, ReduceOp};
use crate::context::LossContext;
use crate::error::{Error, Result};
use crate::kernel::{Program, Step};
use crate::losses::Recorder;
use crate::tensor::{DType, Tensor};

/// Stand-ins for the inputs of a rank with no rows: one zero row of each batched input.
pub(crate) fn stand_ins(
    ctx: &LossContext,
    inputs: &[&Tensor],
    batched: &[bool],
) -> Result<Vec<Tensor>> {
    inputs
        .iter()
        .zip(batched)
        .map(|(t, &b)| {
            if !b {
                return Ok((*t).clone());
            }
            let mut shape = t.shape().to_vec();
            shape[0] = 1;
            let n = crate::tensor::checked_numel(&shape)?;
            match t.dtype() {
                DType::F32 => ctx.upload(&vec![0.0; n], &shape),
                DType::F16 => ctx.upload_f16(&vec![0.0; n], &shape),
                DType::I32 => ctx.upload_labels(&vec![0; n], &shape),
            }
        })
        .collect()
}

/// The local rows of the batched inputs: all of rank >= 1 with one row count.
pub(crate) fn local_rows(what: &str, inputs: &[&Tensor], batched: &[bool]) -> Result<u64> {
    let mut rows = None;
    for (i, (t, &b)) in inputs.iter().zip(batched).enumerate() {
        if !b {
            continue;
        }
        let Some(&n) = t.shape().first() else {
            return Err(Error::ShapeMismatch(format!(
                "{what}: input {i} is a scalar; sharded inputs are split along dimension 0"
            )));
        };
        match rows {
            None => rows = Some(n as u64),
            Some(r) if r != n as u64 => {
                return Err(Error::ShapeMismatch(format!(
                    "{what}: input {i} has {n} rows, an earlier input {r}; a shard splits every batched input along dimension 0 alike"
                )))
            }
            _ => {}
        }
    }
    rows.ok_or_else(|| Error::InvalidInput(format!("{what}: no input is split along the batch")))
}

/// Runs the recorded program of `rec`, all-reducing the statistics at its cuts through `coll`;
/// the device's error flags of every rank travel with the first message, so a bad label on one
/// rank is an error on every rank.
pub(crate) fn execute(ctx: &LossContext, coll: &dyn Collective, rec: &mut Recorder) -> Result<()> {
    let Some(plan) = rec.shard.take() else {
        return ctx.submit(std::mem::take(&mut rec.prog), &mut rec.scratch);
    };
    let mut steps = std::mem::take(&mut rec.prog.steps).into_iter();
    let mut done = 0;
    for cut in &plan.cuts {
        let seg: Vec<Step> = steps.by_ref().take(cut.at - done).collect();
        done = cut.at;
        ctx.submit(Program { steps: seg }, &mut rec.scratch)?;
        exchange(ctx, coll, rec, &plan, cut)?;
    }
    ctx.submit(
        Program {
            steps: steps.collect(),
        },
        &mut rec.scratch,
    )
}

/// One cut: reads its ranges (and the error flags), all-reduces them, writes the results back.
fn exchange(
    ctx: &LossContext,
    coll: &dyn Collective,
    rec: &Recorder,
    plan: &Plan,
    cut: &Cut,
) -> Result<()> {
    let flag = rec.flag.as_ref().map(|f| &f.buf.buffer);
    let (read, flags) = read_parts(ctx, &cut.parts, flag)?;
    // This rank's contributions in float64 (neutral ones on a rank without rows).
    let mut vals: Vec<Vec<f64>> = read
        .iter()
        .zip(&cut.parts)
        .map(|(v, p)| match (plan.zero, p.merge) {
            (false, _) => v.iter().map(|&x| x as f64).collect(),
            (true, Merge::Max) => vec![f64::NEG_INFINITY; v.len()],
            (true, _) => vec![0.0; v.len()],
        })
        .collect();
    // Rows of an Lse part: (part, stride, m, o, add).
    type LsePart = (usize, u64, u64, u64, (u64, u64));
    let lse: Vec<LsePart> = cut
        .parts
        .iter()
        .enumerate()
        .filter_map(|(i, p)| match p.merge {
            Merge::Lse { stride, m, o, add } => Some((i, stride, m, o, add)),
            _ => None,
        })
        .collect();
    let rows = |v: &Vec<f64>, stride: u64| v.len() / stride as usize;

    // 1. The maxima: the MAX parts and the Lse parts' running maxima; each rank's sums of
    //    exponentials are then rescaled to the global maxima (in float64).
    let mut msg: Vec<f64> = Vec::new();
    for (p, v) in cut.parts.iter().zip(&vals) {
        if p.merge == Merge::Max {
            msg.extend(v);
        }
    }
    for &(i, stride, m, _, _) in &lse {
        let v = &vals[i];
        msg.extend((0..rows(v, stride)).map(|r| v[r * stride as usize + m as usize]));
    }
    if !msg.is_empty() {
        coll.all_reduce(&mut msg, ReduceOp::Max)?;
        let mut at = 0;
        for (p, v) in cut.parts.iter().zip(vals.iter_mut()) {
            if p.merge == Merge::Max {
                let n = v.len();
                v.copy_from_slice(&msg[at..at + n]);
                at += n;
            }
        }
        for &(i, stride, m, o, _) in &lse {
            let v = &mut vals[i];
            for r in 0..rows(v, stride) {
                let b = r * stride as usize;
                let (mine, all) = (v[b + m as usize], msg[at]);
                if v[b + o as usize] != 0.0 {
                    v[b + o as usize] *= (mine - all).exp();
                }
                v[b + m as usize] = all;
                at += 1;
            }
        }
    }

    // 2. The sums: the SUM parts, the Lse parts' rescaled sums and added slots, and the
    //    device's error flags of every rank ([labels out of range, non-finite inputs]).
    let mut msg: Vec<f64> = Vec::new();
    for (p, v) in cut.parts.iter().zip(&vals) {
        if p.merge == Merge::Sum {
            msg.extend(v);
        }
    }
    let summed = |o: u64, add: (u64, u64)| std::iter::once(o).chain(add.0..add.1);
    for &(i, stride, _, o, add) in &lse {
        let v = &vals[i];
        for r in 0..rows(v, stride) {
            msg.extend(summed(o, add).map(|k| v[r * stride as usize + k as usize]));
        }
    }
    msg.extend(flags.iter().map(|&f| (f != 0) as u32 as f64));
    coll.all_reduce(&mut msg, ReduceOp::Sum)?;
    let f = &msg[msg.len() - 2..];
    let what = rec.flag.as_ref().map(|f| f.what.as_str()).unwrap_or("loss");
    if f[0] > 0.0 {
        return Err(Error::LabelOutOfRange(format!(
            "{what}: a label on the device of one of the ranks is outside the class range"
        )));
    }
    if f[1] > 0.0 {
        return Err(Error::InvalidInput(format!(
            "{what}: an input of one of the ranks holds NaN or infinity (check_finite is on)"
        )));
    }
    let mut at = 0;
    for (p, v) in cut.parts.iter().zip(vals.iter_mut()) {
        if p.merge == Merge::Sum {
            let n = v.len();
            v.copy_from_slice(&msg[at..at + n]);
            at += n;
        }
    }
    for &(i, stride, _, o, add) in &lse {
        let v = &mut vals[i];
        for r in 0..rows(v, stride) {
            for k in summed(o, add) {
                v[r * stride as usize + k as usize] = msg[at];
                at += 1;
            }
        }
    }

    // 3. Back to the device, rounded to float32 once.
    for (p, v) in cut.parts.iter().zip(&vals) {
        if v.is_empty() {
            continue;
        }
        let out: Vec<f32> = v.iter().map(|&x| x as f32).collect();
        ctx.queue
            .write_buffer(&p.buffer, p.first * 4, bytemuck::cast_slice(&out));
    }
    Ok(())
}

/// Reads the ranges of `parts` and the two flag words (zeros without flags), blocking.
fn read_parts(
    ctx: &LossContext,
    parts: &[Part],
    flag: Option<&wgpu::Buffer>,
) -> Result<(Vec<Vec<f32>>, [u32; 2])> {
    let total: u64 = parts.iter().map(|p| p.len * 4).sum::<u64>() + 8;
    let staging = ctx.alloc(
        total,
        wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
    )?;
    ctx.scoped(|| {
        let mut enc = ctx.device.create_command_encoder(&Default::default());
        let mut at = 0;
        for p in parts {
            if p.len > 0 {
                enc.copy_buffer_to_buffer(&p.buffer, p.first * 4, &staging.buffer, at, p.len * 4);
            }
            at += p.len * 4;
        }
        if let Some(f) = flag {
            enc.copy_buffer_to_buffer(f, 0, &staging.buffer, at, 8);
        }
        ctx.queue.submit(Some(enc.finish()));
        Ok(())
    })?;
    let bytes = pollster::block_on(ctx.map_staging(&staging, total))?;
    let words: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[..(total - 8) as usize]);
    let f: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[(total - 8) as usize..]);
    let flags = if flag.is_some() { [f[0], f[1]] } else { [0, 0] };
    let mut out = Vec::with_capacity(parts.len());
    let mut at = 0;
    for p in parts {
        out.push(words[at..at + p.len as usize].to_vec());
        at += p.len as usize;
    }
    Ok((out, flags))
}

/// What [`run`] needs of a loss or a combined loss.
pub(crate) struct Job<'a> {
    /// The name in errors.
    pub what: &'a str,
    /// What the ranks must agree on (see [`key_of`]).
    pub config: String,
    /// For each input, whether it is split along dimension 0.
    pub batched: Vec<bool>,
    /// The local checks before anything is exchanged (arity, ownership).
    pub pre: Result<()>,
    /// For each gradient, the input it differentiates (`None`: a weight the loss owns).
    pub grad_inputs: Vec<Option<usize>>,
    /// Records the work on (possibly stand-in) inputs.
    #[allow(clippy::type_complexity)]
    pub build: Box<dyn FnOnce(&[&Tensor], &crate::GradOpts, &mut Recorder) -> Result<Built> + 'a>,
}

/// One loss on one shard: agreement, recording (on stand-ins where the shard is empty), the
/// phased run, and the outputs.
pub(crate) fn run(
    ctx: &LossContext,
    inputs: &[&Tensor],
    coll: &dyn Collective,
    opts: &crate::GradOpts,
    job: Job<'_>,
) -> Result<crate::LossOutput> {
    let Job {
        what,
        config,
        batched,
        pre,
        grad_inputs,
        build,
    } = job;
    let pre = pre.and_then(|()| local_rows(what, inputs, &batched));
    let key = key_of(&config, inputs, &batched);
    let agreed = agree(coll, what, &key, pre)?;
    let zero = agreed.local_rows == 0;
    let mut rec = Recorder {
        shard: Some(Plan::new(agreed.rows, coll.size(), zero)),
        ..Default::default()
    };
    let replicated = |g: &Option<usize>| g.is_none_or(|i| !batched[i]);
    let built = (|| {
        if coll.size() > 1 && opts.accumulate && grad_inputs.iter().any(replicated) {
            return Err(Error::InvalidConfig(format!(
                "{what}: a sharded loss sums the gradient of its replicated weight across the ranks, which accumulate = true would sum too; accumulate on the host side instead"
            )));
        }
        let held;
        let (ins, opts_here): (Vec<&Tensor>, crate::GradOpts) = if zero {
            held = stand_ins(ctx, inputs, &batched)?;
            // The stand-ins' gradients are scratch; the caller's stay untouched.
            let into = opts
                .into
                .iter()
                .zip(&grad_inputs)
                .map(|(t, g)| if replicated(g) { t.clone() } else { None })
                .collect();
            (
                held.iter().collect(),
                crate::GradOpts {
                    into,
                    // Nothing of the caller's is written: the stand-ins' gradients are new.
                    accumulate: false,
                    ..opts.clone()
                },
            )
        } else {
            (inputs.to_vec(), opts.clone())
        };
        let b = ctx.scoped(|| build(&ins, &opts_here, &mut rec))?;
        // Replicated gradients are summed across the ranks at the end.
        if coll.size() > 1 {
            for (t, g) in b.grads.iter().zip(&b.grad_inputs) {
                if replicated(g) {
                    rec.exchange(t.buffer(), t.offset() / 4, t.numel() as u64, Merge::Sum);
                }
            }
        }
        Ok(b)
    })();
    let confirmed = confirm(coll, what, rec.shard.as_ref(), built.is_err());
    let built = built?;
    confirmed?;
    execute(ctx, coll, &mut rec)?;
    finish(ctx, rec, built, inputs, &batched, zero, opts)
}

/// [`run`] for a single loss.
pub(crate) fn run_loss<L: crate::Loss + ?Sized>(
    loss: &L,
    ctx: &LossContext,
    inputs: &[&Tensor],
    coll: &dyn Collective,
    opts: &crate::GradOpts,
) -> Result<crate::LossOutput> {
    let what = loss.name();
    let names = loss.input_names();
    let grad_inputs = loss.grad_inputs();
    let job = Job {
        what,
        config: loss.config_key(),
        batched: (0..inputs.len()).map(|i| loss.batched_input(i)).collect(),
        pre: (|| {
            loss.check_arity(inputs)?;
            for (t, name) in inputs.iter().zip(names) {
                ctx.owns(what, name, t)?;
            }
            Ok(())
        })(),
        grad_inputs: grad_inputs.clone(),
        build: Box::new(move |ins, o, rec| {
            if ctx.check_finite {
                ctx.finite_steps(rec, what, ins)?;
            }
            let (loss_t, grads) = loss.build(ctx, ins, o, rec)?;
            Ok(Built {
                loss: loss_t,
                grads,
                grad_inputs,
                terms: Vec::new(),
            })
        }),
    };
    run(ctx, inputs, coll, opts, job)
}

/// The outputs of a shard's run: on an empty shard, the gradients of the batched inputs are
/// empty (or the caller's empty tensors) and a per-row loss has no rows.
pub(crate) fn finish(
    ctx: &LossContext,
    rec: Recorder,
    built: Built,
    inputs: &[&Tensor],
    batched: &[bool],
    zero: bool,
    opts: &crate::GradOpts,
) -> Result<crate::LossOutput> {
    let Built {
        mut loss,
        mut grads,
        grad_inputs,
        terms,
    } = built;
    if zero {
        if !loss.shape().is_empty() {
            let mut shape = loss.shape().to_vec();
            shape[0] = 0;
            loss = ctx.empty(&shape, DType::F32)?;
        }
        for (k, gi) in grad_inputs.iter().enumerate() {
            if let Some(i) = gi.filter(|&i| batched[i]) {
                grads[k] = match opts.into.get(k).and_then(|t| t.as_ref()) {
                    Some(t) => t.clone(),
                    None => ctx.empty(inputs[i].shape(), DType::F32)?,
                };
            }
        }
    }
    Ok(crate::LossOutput {
        loss: rec.flagged(loss),
        grads: grads.into_iter().map(|g| rec.flagged(g)).collect(),
        grad_inputs,
        terms: terms.into_iter().map(|t| rec.flagged(t)).collect(),
        _scratch: rec.scratch,
    })
}

/// What [`run_classes`] needs of a loss whose classes are split across the ranks.
pub(crate) struct ClassJob<'a> {
    /// The name in errors.
    pub what: &'a str,
    /// What the ranks must agree on: the config without this rank's class count, the shapes.
    pub config: String,
    /// This rank's classes `(offset, count)`, or why its input is refused.
    pub slice: Result<(u64, u64)>,
    /// The rows (the whole batch, on every rank).
    pub rows: u64,
    /// For each gradient, the input it differentiates (`None`: a weight the loss owns), and
    /// whether it is summed across the ranks (an input every rank holds whole).
    pub grads: Vec<(Option<usize>, bool)>,
    /// Records the work, given the number of classes of all ranks.
    #[allow(clippy::type_complexity)]
    pub build: Box<dyn FnOnce(u64, &mut Recorder) -> Result<(Tensor, Vec<Tensor>)> + 'a>,
}

/// A loss whose classes are split across the ranks: agreement on the slices, recording, the
/// phased run (the per-row log-sum-exp statistics merged), the gradients of the inputs every
/// rank holds summed.
pub(crate) fn run_classes(
    ctx: &LossContext,
    coll: &dyn Collective,
    opts: &crate::GradOpts,
    job: ClassJob<'_>,
) -> Result<crate::LossOutput> {
    let ClassJob {
        what,
        config,
        slice,
        rows,
        grads,
        build,
    } = job;
    let total = super::agree_classes(coll, what, &config, slice)?;
    let mut rec = Recorder {
        shard: Some(Plan {
            class_split: true,
            ..Plan::new(rows, coll.size(), false)
        }),
        ..Default::default()
    };
    let built = (|| {
        let sums = coll.size() > 1 && grads.iter().any(|g| g.1);
        if sums && opts.accumulate {
            return Err(Error::InvalidConfig(format!(
                "{what}: a class-sharded loss sums the gradient of the inputs every rank holds across the ranks, which accumulate = true would sum too; accumulate on the host side instead"
            )));
        }
        let (l, g) = ctx.scoped(|| build(total, &mut rec))?;
        if sums {
            for (t, &(_, summed)) in g.iter().zip(&grads) {
                if summed {
                    rec.exchange(t.buffer(), t.offset() / 4, t.numel() as u64, Merge::Sum);
                }
            }
        }
        Ok(Built {
            loss: l,
            grads: g,
            grad_inputs: grads.iter().map(|g| g.0).collect(),
            terms: Vec::new(),
        })
    })();
    let confirmed = confirm(coll, what, rec.shard.as_ref(), built.is_err());
    let built = built?;
    confirmed?;
    execute(ctx, coll, &mut rec)?;
    finish(ctx, rec, built, &[], &[], false, opts)
}
