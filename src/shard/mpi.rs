//! The collective over MPI (feature `mpi`: rsmpi without its default features, over the
//! system's MPI, e.g. Debian's `mpich libmpich-dev`; its bindings need `libclang-dev`).

use super::{Collective, ReduceOp};
use crate::error::{Error, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::CommunicatorCollectives;

/// A [`Collective`] over an MPI communicator. SUM gathers every rank's slice and adds them in
/// float64 in rank order, so every rank gets the same bits (MPI's own reductions may add in
/// another order on each rank); MAX is `MPI_Allreduce` with `MPI_MAX`.
pub struct Mpi {
    comm: SimpleCommunicator,
    // Dropped after `comm`: finalises MPI when this value made the universe.
    _universe: Option<mpi::environment::Universe>,
}

impl std::fmt::Debug for Mpi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mpi")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .finish()
    }
}

impl Mpi {
    /// Initialises MPI (once per process; MPI is finalised when this value is dropped) and
    /// wraps `MPI_COMM_WORLD`.
    pub fn init() -> Result<Mpi> {
        let universe = mpi::initialize().ok_or_else(|| {
            Error::InvalidConfig("MPI is already initialised in this process".into())
        })?;
        Ok(Mpi {
            comm: universe.world(),
            _universe: Some(universe),
        })
    }

    /// Wraps a communicator of an MPI environment the caller initialised (and finalises).
    pub fn with_communicator(comm: SimpleCommunicator) -> Mpi {
        Mpi {
            comm,
            _universe: None,
        }
    }

    /// The communicator.
    pub fn communicator(&self) -> &SimpleCommunicator {
        &self.comm
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.comm.rank() as usize
    }
    fn size(&self) -> usize {
        self.comm.size() as usize
    }
    fn all_reduce(&self, data: &mut [f64], op: ReduceOp) -> Result<()> {
        match op {
            ReduceOp::Max => {
                let send = data.to_vec();
                self.comm
                    .all_reduce_into(&send[..], data, SystemOperation::max());
            }
            ReduceOp::Sum => {
                let n = data.len();
                let mut all = vec![0.0f64; n * self.size()];
                self.comm.all_gather_into(&data[..], &mut all[..]);
                data.fill(0.0);
                for rank in all.chunks_exact(n.max(1)).take(self.size()) {
                    for (a, b) in data.iter_mut().zip(rank) {
                        *a += b;
                    }
                }
            }
        }
        Ok(())
    }
}
