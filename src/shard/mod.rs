//! Scale-out: the exact loss of a whole batch split across devices and processes.
//!
//! Every loss whose value or gradient depends on batch totals (the overlap sums of Jaccard and
//! Dice, RMSE's mean, cross-entropy's summed class weight, the divisor of every `mean`) runs in
//! phases when it is one shard of a batch: a statistics phase on the local rows, an all-reduce of
//! those few numbers through a [`Collective`], then the value and the gradients from the global
//! statistics. [`crate::Loss::compute_sharded`] and [`crate::Combined::compute_sharded`] do all
//! three; a [`crate::Combined`] loss concatenates its terms' statistics into one message.
//!
//! # The gradient convention
//! Each rank gets exactly `dL_global / dx_local`: the gradient of the loss of the whole batch
//! with respect to its own rows. Summed over the ranks, nothing needs rescaling. A
//! data-parallel framework that *averages* gradients across ranks (as PyTorch's DDP does) would
//! divide them by the world size; compensate with [`crate::GradOpts::scaled`]`(world_size as
//! f32)`. The gradient of an input that every rank holds whole (the stateless angular loss's
//! `weight`) or of a parameter the loss owns ([`crate::AngularPenaltySMLoss`]'s weight) is
//! summed across the ranks by deepml, so every replica holds the same full gradient.
//!
//! # Exactness
//! The statistics are summed in float64 (by [`ThreadGroup`] and the MPI collective in rank
//! order, so the sum is the same on every rank and from run to run) and rounded to float32
//! once. A world of one is therefore bit-identical to the unsharded path, and a world of k
//! agrees with the single-device loss of the whole batch to float32 rounding of the totals.
//!
//! # Agreement
//! Before the statistics, the ranks exchange a short header (a MAX all-reduce of a few numbers):
//! a fingerprint of the loss, its config and the shapes of its inputs past dimension 0, each
//! rank's row count, and whether each rank could record its work. Ranks that disagree, or a
//! rank whose input is bad, make every rank return the same kind of error instead of waiting
//! for a message that never comes.
//!
//! # Implementing [`Collective`]
//! Two operations over `f64` slices, in place, are all it takes:
//!
//! ```
//! use deepml::shard::{Collective, ReduceOp};
//! /// A collective that forwards to some engine (MPI, NCCL, gloo, a parameter server...).
//! struct MyEngine { rank: usize, size: usize }
//! impl Collective for MyEngine {
//!     fn rank(&self) -> usize { self.rank }
//!     fn size(&self) -> usize { self.size }
//!     fn all_reduce(&self, data: &mut [f64], op: ReduceOp) -> deepml::Result<()> {
//!         match op {
//!             ReduceOp::Sum => { /* engine.all_reduce_sum(data) */ }
//!             ReduceOp::Max => { /* engine.all_reduce_max(data) */ }
//!         }
//!         Ok(())
//!     }
//! }
//! ```
//! For results that are identical on every rank, the engine's SUM must give every rank the
//! same bits (sum in a fixed order); MPI's and NCCL's reductions do not promise it, which is why
//! `Mpi` (feature `mpi`) gathers and sums in rank order.

// The phased run is native only (it blocks on read-backs); on the web only the types remain.
#![cfg_attr(target_arch = "wasm32", allow(dead_code))]

use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[cfg(all(feature = "mpi", not(target_arch = "wasm32")))]
mod mpi;
#[cfg(not(target_arch = "wasm32"))]
mod run;
mod threads;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use run::{run, run_classes, run_loss, ClassJob, Job};

#[cfg(all(feature = "mpi", not(target_arch = "wasm32")))]
pub use self::mpi::Mpi;
pub use threads::{ThreadGroup, ThreadRank};

/// The reductions a [`Collective`] provides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReduceOp {
    /// Element-wise sum over the ranks.
    Sum,
    /// Element-wise maximum over the ranks.
    Max,
}

/// A group of ranks that can all-reduce `f64` slices. Every rank calls the same operations in
/// the same order with slices of the same length; the slice holds the result afterwards.
pub trait Collective {
    /// This rank's index, in `0..size()`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn size(&self) -> usize;
    /// Reduces `data` element-wise over the ranks, in place.
    fn all_reduce(&self, data: &mut [f64], op: ReduceOp) -> Result<()>;
}

/// A world of one rank: every all-reduce is the identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorldOfOne;

impl Collective for WorldOfOne {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce(&self, _data: &mut [f64], _op: ReduceOp) -> Result<()> {
        Ok(())
    }
}

/// Wraps a collective and counts what this rank sends through it (the payload bytes and the
/// number of all-reduces), for reports such as the bytes per training step.
#[derive(Debug)]
pub struct Metered<C> {
    inner: C,
    bytes: std::sync::atomic::AtomicU64,
    calls: std::sync::atomic::AtomicU64,
}

impl<C: Collective> Metered<C> {
    /// Counts the traffic of `inner`.
    pub fn new(inner: C) -> Self {
        Metered {
            inner,
            bytes: Default::default(),
            calls: Default::default(),
        }
    }
    /// The payload bytes this rank has sent, and the number of all-reduces, since the last
    /// call; resets both.
    pub fn take(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.bytes.swap(0, Relaxed), self.calls.swap(0, Relaxed))
    }
    /// The wrapped collective.
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: Collective> Collective for Metered<C> {
    fn rank(&self) -> usize {
        self.inner.rank()
    }
    fn size(&self) -> usize {
        self.inner.size()
    }
    fn all_reduce(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        use std::sync::atomic::Ordering::Relaxed;
        self.bytes.fetch_add(8 * data.len() as u64, Relaxed);
        self.calls.fetch_add(1, Relaxed);
        self.inner.all_reduce(data, op)
    }
}

/// How the ranks' copies of an exchanged statistic combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Merge {
    /// Summed (in float64, in rank order where the collective does so).
    Sum,
    /// The largest.
    Max,
    /// Rows of `stride` floats holding a running log-sum-exp: the maxima at slot `m` are
    /// merged by MAX, the sums of exponentials at slot `o` rescaled to the global maximum and
    /// added, the slots `add.0..add.1` added; the others stay this rank's.
    Lse {
        stride: u64,
        m: u64,
        o: u64,
        add: (u64, u64),
    },
}

/// One exchanged range: `len` f32 values of `buffer` from element `first`.
#[derive(Clone)]
pub(crate) struct Part {
    pub buffer: wgpu::Buffer,
    pub first: u64,
    pub len: u64,
    pub merge: Merge,
}

/// A point of the recorded program where statistics are all-reduced: before step `at` runs.
pub(crate) struct Cut {
    pub at: usize,
    pub parts: Vec<Part>,
}

/// The sharding state of a [`Recorder`].
pub(crate) struct Plan {
    /// The rows of dimension 0 of the whole batch.
    pub rows: u64,
    /// The number of ranks.
    pub world: usize,
    /// This rank holds no rows: its work runs on a stand-in row and contributes zeros.
    pub zero: bool,
    /// The classes, not the rows, are split: every rank holds every row, so the reductions
    /// over the rows are not added up across ranks.
    pub class_split: bool,
    pub cuts: Vec<Cut>,
}

impl Plan {
    pub(crate) fn new(rows: u64, world: usize, zero: bool) -> Plan {
        Plan {
            rows,
            world,
            zero,
            class_split: false,
            cuts: Vec::new(),
        }
    }

    /// Adds a range exchanged before step `at` (to the cut already there, if any).
    pub(crate) fn cut(
        &mut self,
        at: usize,
        buffer: wgpu::Buffer,
        first: u64,
        len: u64,
        merge: Merge,
    ) {
        let part = Part {
            buffer,
            first,
            len,
            merge,
        };
        match self.cuts.last_mut() {
            Some(c) if c.at == at => c.parts.push(part),
            _ => self.cuts.push(Cut {
                at,
                parts: vec![part],
            }),
        }
    }

    /// The same sharding, without cuts (a term's recorder inside a combined loss).
    pub(crate) fn child(&self) -> Plan {
        Plan {
            class_split: self.class_split,
            ..Plan::new(self.rows, self.world, self.zero)
        }
    }

    /// Numbers that ranks recording the same work agree on: the cuts and their lengths.
    fn signature(&self) -> [f64; 2] {
        let len: u64 = self
            .cuts
            .iter()
            .flat_map(|c| c.parts.iter().map(|p| p.len))
            .sum();
        [self.cuts.len() as f64, len as f64]
    }
}

/// Builds of one rank: the loss, then for every gradient the tensor and the input it
/// differentiates (`None` for a parameter the loss owns).
pub(crate) struct Built {
    pub loss: Tensor,
    pub grads: Vec<Tensor>,
    pub grad_inputs: Vec<Option<usize>>,
    pub terms: Vec<Tensor>,
}

/// What the ranks agreed on before recording.
pub(crate) struct Agreed {
    pub rows: u64,
    pub local_rows: u64,
}

/// FNV-1a, 64 bits: a fingerprint that is the same in every process.
pub(crate) fn fingerprint(text: &str) -> u64 {
    fingerprint_bytes(text.as_bytes())
}

/// [`fingerprint`] of bytes.
pub(crate) fn fingerprint_bytes(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The key that ranks running the same loss agree on: its config and the shapes of its inputs
/// (past dimension 0 for the inputs split along the batch), with their element types.
pub(crate) fn key_of(config: &str, inputs: &[&Tensor], batched: &[bool]) -> String {
    let mut k = config.to_string();
    for (i, t) in inputs.iter().enumerate() {
        let shape = if batched[i] {
            t.shape().get(1..).unwrap_or(&[]).to_vec()
        } else {
            t.shape().to_vec()
        };
        k.push_str(&format!("|{i}:{:?}{shape:?}", t.dtype()));
    }
    k
}

/// The ranks whose flag is set, as the text of an error.
pub(crate) fn ranks_text(flags: &[f64]) -> String {
    let r: Vec<String> = flags
        .iter()
        .enumerate()
        .filter(|(_, &f)| f > 0.0)
        .map(|(i, _)| i.to_string())
        .collect();
    r.join(", ")
}

/// The header exchange: checks that every rank runs the same work (`key`), gathers `k`
/// numbers of each rank (`local`: its row count, or its class slice), and fails on every rank
/// if one of them failed already. Returns the numbers of every rank, in rank order.
fn gather(
    coll: &dyn Collective,
    what: &str,
    key: &str,
    local: Result<Vec<f64>>,
    k: usize,
) -> Result<Vec<Vec<f64>>> {
    let (w, r) = (coll.size(), coll.rank());
    if w == 0 || r >= w {
        return Err(Error::InvalidConfig(format!(
            "{what}: rank {r} of a world of {w}"
        )));
    }
    let h = fingerprint(key);
    let (hi, lo) = ((h >> 32) as f64, (h & 0xffff_ffff) as f64);
    // [hi, lo, -hi, -lo, world, -world, failed per rank, k numbers per rank]
    let mut msg = vec![0.0; 6 + (1 + k) * w];
    msg[..6].copy_from_slice(&[hi, lo, -hi, -lo, w as f64, -(w as f64)]);
    msg[6 + r] = local.is_err() as u32 as f64;
    if let Ok(v) = &local {
        msg[6 + w + r * k..6 + w + (r + 1) * k].copy_from_slice(v);
    }
    coll.all_reduce(&mut msg, ReduceOp::Max)?;
    local?;
    if msg[0] != -msg[2] || msg[1] != -msg[3] {
        return Err(Error::InvalidConfig(format!(
            "{what}: the ranks disagree on the loss, its config or the shapes of its inputs (rank {r}: {key})"
        )));
    }
    if msg[4] != -msg[5] {
        return Err(Error::InvalidConfig(format!(
            "{what}: the ranks disagree on the world size"
        )));
    }
    let failed = &msg[6..6 + w];
    if failed.iter().any(|&f| f > 0.0) {
        return Err(Error::InvalidInput(format!(
            "{what}: rank(s) {} refused their input (see the error there)",
            ranks_text(failed)
        )));
    }
    Ok(msg[6 + w..].chunks(k).map(|c| c.to_vec()).collect())
}

/// [`gather`] of the row counts of a batch split along dimension 0.
pub(crate) fn agree(
    coll: &dyn Collective,
    what: &str,
    key: &str,
    local: Result<u64>,
) -> Result<Agreed> {
    let all = gather(coll, what, key, local.map(|n| vec![n as f64]), 1)?;
    let local_rows = all[coll.rank()][0] as u64;
    let rows = all.iter().map(|v| v[0] as u64).sum();
    if rows == 0 {
        return Err(Error::EmptyInput(format!(
            "{what}: every rank's shard is empty"
        )));
    }
    Ok(Agreed { rows, local_rows })
}

/// [`gather`] of the class slices `(offset, count)` of a loss whose classes are split across
/// the ranks: they must tile `[0, total)` without overlap or gap. Returns `total`.
pub(crate) fn agree_classes(
    coll: &dyn Collective,
    what: &str,
    key: &str,
    local: Result<(u64, u64)>,
) -> Result<u64> {
    let all = gather(
        coll,
        what,
        key,
        local.map(|(o, c)| vec![o as f64, c as f64]),
        2,
    )?;
    let slices: Vec<(u64, u64)> = all.iter().map(|v| (v[0] as u64, v[1] as u64)).collect();
    if let Some(r) = slices.iter().position(|s| s.1 == 0) {
        return Err(Error::InvalidInput(format!(
            "{what}: rank {r} holds no classes"
        )));
    }
    tiling(what, &slices)
}

/// Checks that the slices `(offset, count)` of the ranks tile `[0, total)`; returns the total.
pub(crate) fn tiling(what: &str, slices: &[(u64, u64)]) -> Result<u64> {
    let mut order: Vec<usize> = (0..slices.len()).collect();
    order.sort_by_key(|&r| (slices[r].0, r));
    let mut next = 0u64;
    for &r in &order {
        let (first, count) = slices[r];
        if first > next {
            return Err(Error::InvalidInput(format!(
                "{what}: the class slices leave a gap: no rank holds classes [{next}, {first}) (rank {r} starts at {first}); slices (offset, count) per rank: {slices:?}"
            )));
        }
        if first < next {
            return Err(Error::InvalidInput(format!(
                "{what}: the class slices overlap: rank {r} holds [{first}, {}), which overlaps classes below {next}; slices (offset, count) per rank: {slices:?}",
                first + count
            )));
        }
        next = first + count;
    }
    Ok(next)
}

/// The exchange after recording: fails on every rank if one rank could not record its work,
/// or if the ranks recorded different exchanges.
pub(crate) fn confirm(
    coll: &dyn Collective,
    what: &str,
    plan: Option<&Plan>,
    failed_here: bool,
) -> Result<()> {
    let (w, r) = (coll.size(), coll.rank());
    let sig = plan.map(Plan::signature).unwrap_or([0.0; 2]);
    // [cuts, -cuts, length, -length, failed per rank]
    let mut msg = vec![0.0; 4 + w];
    msg[..4].copy_from_slice(&[sig[0], -sig[0], sig[1], -sig[1]]);
    msg[4 + r] = failed_here as u32 as f64;
    coll.all_reduce(&mut msg, ReduceOp::Max)?;
    let failed = &msg[4..];
    if failed.iter().any(|&f| f > 0.0) {
        return Err(Error::InvalidInput(format!(
            "{what}: rank(s) {} refused their input (see the error there)",
            ranks_text(failed)
        )));
    }
    if msg[0] != -msg[1] || msg[2] != -msg[3] {
        return Err(Error::InvalidInput(format!(
            "{what}: the ranks recorded different statistics ({} exchanges of {} values here)",
            sig[0], sig[1]
        )));
    }
    Ok(())
}
