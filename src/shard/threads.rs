//! An in-process group of ranks, one per thread (each with its own `LossContext`, its own
//! device): what the tests of sharded losses run on, and a model for other collectives.

use super::{Collective, ReduceOp};
use crate::error::{Error, Result};
use std::sync::{Arc, Condvar, Mutex};

/// Makes the ranks of an in-process group: [`ThreadGroup::new`]`(k)` gives `k` members, one
/// for each thread. Every all-reduce sums (or takes the maximum) in float64 in rank order, so
/// every rank gets the same bits. A member that is dropped while the others wait for it makes
/// their all-reduce fail instead of hanging; so do slices of different lengths or different
/// operations.
#[derive(Debug)]
pub struct ThreadGroup;

impl ThreadGroup {
    /// The `size` members of a new group, rank 0 first.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(size: usize) -> Vec<ThreadRank> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                round: 0,
                arrived: 0,
                slots: vec![None; size],
                result: Ok(Vec::new()),
                left: None,
            }),
            cv: Condvar::new(),
        });
        (0..size)
            .map(|rank| ThreadRank {
                rank,
                size,
                shared: shared.clone(),
            })
            .collect()
    }
}

/// One member of a [`ThreadGroup`].
#[derive(Debug)]
pub struct ThreadRank {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug)]
struct State {
    /// Completed all-reduces.
    round: u64,
    arrived: usize,
    slots: Vec<Option<(ReduceOp, Vec<f64>)>>,
    /// The result of the last completed round (an error text where the ranks disagreed).
    result: std::result::Result<Vec<f64>, String>,
    /// A member that was dropped.
    left: Option<usize>,
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        let mut st = self
            .shared
            .state
            .lock()
            .map_err(|_| Error::InvalidInput("the thread group's lock is poisoned".into()))?;
        if let Some(r) = st.left {
            return Err(left(r));
        }
        let round = st.round;
        st.slots[self.rank] = Some((op, data.to_vec()));
        st.arrived += 1;
        if st.arrived == self.size {
            let slots: Vec<(ReduceOp, Vec<f64>)> = st
                .slots
                .iter_mut()
                .map(|s| s.take().expect("arrived"))
                .collect();
            st.result = combine(&slots);
            st.arrived = 0;
            st.round += 1;
            self.shared.cv.notify_all();
        } else {
            while st.round == round {
                if let Some(r) = st.left {
                    return Err(left(r));
                }
                st = self.shared.cv.wait(st).map_err(|_| {
                    Error::InvalidInput("the thread group's lock is poisoned".into())
                })?;
            }
        }
        // The next round cannot complete before this rank joins it, so the result is this one.
        match &st.result {
            Ok(v) => {
                data.copy_from_slice(v);
                Ok(())
            }
            Err(m) => Err(Error::InvalidInput(m.clone())),
        }
    }
}

impl Drop for ThreadRank {
    fn drop(&mut self) {
        if let Ok(mut st) = self.shared.state.lock() {
            st.left.get_or_insert(self.rank);
            self.shared.cv.notify_all();
        }
    }
}

fn left(rank: usize) -> Error {
    Error::InvalidInput(format!(
        "rank {rank} left the thread group while the others waited for it"
    ))
}

/// The rank-order reduction of one round, or why the ranks' calls do not match.
fn combine(slots: &[(ReduceOp, Vec<f64>)]) -> std::result::Result<Vec<f64>, String> {
    let (op, first) = (&slots[0].0, &slots[0].1);
    for (r, (o, v)) in slots.iter().enumerate() {
        if o != op || v.len() != first.len() {
            return Err(format!(
                "all-reduce: rank 0 sent {:?} of {} values, rank {r} {o:?} of {}",
                op,
                first.len(),
                v.len()
            ));
        }
    }
    let mut out = first.clone();
    for (_, v) in &slots[1..] {
        for (a, b) in out.iter_mut().zip(v) {
            *a = match op {
                ReduceOp::Sum => *a + b,
                ReduceOp::Max => a.max(*b),
            };
        }
    }
    Ok(out)
}
