//! The float64 CPU reference of every loss (the semantics of deepml 3.3.1 and PyTorch that the
//! README lists): the value and the analytic gradient of the sum of the loss elements (an
//! upstream gradient of ones).
//!
//! It is the oracle of the tests, so it is written for clarity and exactness, not speed: every
//! function first runs the same shape and config checks as the GPU losses (the `check_shapes`
//! of [`crate::config`]), so a bad call gives the same typed error on both sides.

use crate::config::*;
use crate::error::{Error, Result};

mod angular;
mod contrastive;
mod cross_entropy;
mod logits;
mod regression;
mod segmentation;
mod smp;

#[cfg(test)]
mod tests;

pub use angular::angular;
pub use contrastive::contrastive;
pub use cross_entropy::cross_entropy;
pub use logits::{bce_with_logits, weighted_bce};
pub use regression::{l1, mse, rmse};
pub use segmentation::{dice, jaccard};
pub use smp::{focal, tversky};

/// What a reference loss returns.
#[derive(Debug, Clone, PartialEq)]
pub struct RefOutput {
    /// The loss, row-major: one value for `mean` / `sum`, one per element or sample for `none`.
    pub loss: Vec<f64>,
    /// The shape of `loss` (`[]` for a scalar).
    pub loss_shape: Vec<usize>,
    /// The gradient of `sum(loss)` with respect to each differentiable input, in the order of
    /// the differentiable inputs of FORMAT.md; each has the shape of its input.
    pub grads: Vec<Vec<f64>>,
}

impl RefOutput {
    /// A scalar loss with its gradients.
    fn scalar(loss: f64, grads: Vec<Vec<f64>>) -> Self {
        RefOutput {
            loss: vec![loss],
            loss_shape: vec![],
            grads,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Input checks shared by every loss.

/// The element count of a shape, refusing one whose product overflows (before `check_shapes`,
/// whose plain product would).
fn checked_numel(what: &str, name: &str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "{what}: the shape {shape:?} of {name} is too large"
            ))
        })
}

/// A data slice must hold exactly the elements its shape declares.
fn check_len<T>(what: &str, name: &str, data: &[T], shape: &[usize]) -> Result<()> {
    let n = checked_numel(what, name, shape)?;
    if data.len() != n {
        return Err(Error::InvalidInput(format!(
            "{what}: {name} of shape {shape:?} needs {n} values, got {}",
            data.len()
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Scalar helpers, written in their numerically stable forms.

/// `1 / (1 + exp(-x))`, without overflow for either sign of `x`.
fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `ln(1 + exp(x))` as `max(x, 0) + ln(1 + exp(-|x|))`.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

/// `ln(sum(exp(v)))`, shifted by the maximum.
fn log_sum_exp(v: &[f64]) -> f64 {
    let m = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + v.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

/// The sign with `sign(0) = 0` (the L1 subgradient PyTorch uses).
fn sign(x: f64) -> f64 {
    if x > 0.0 {
        1.0
    } else if x < 0.0 {
        -1.0
    } else {
        0.0
    }
}

// ---------------------------------------------------------------------------------------------
// Reductions.

/// Reduces per-element losses `l` (of shape `shape`) and their per-element gradients `g`
/// (`g[i] = d l[i] / d x[i]`): `mean` divides both by the count, `none` keeps the shape.
fn reduce_pointwise(reduction: Reduction, l: Vec<f64>, shape: &[usize], g: Vec<f64>) -> RefOutput {
    match reduction {
        Reduction::None => RefOutput {
            loss: l,
            loss_shape: shape.to_vec(),
            grads: vec![g],
        },
        Reduction::Sum => RefOutput::scalar(l.iter().sum(), vec![g]),
        Reduction::Mean => {
            let n = l.len() as f64;
            let grad = g.iter().map(|v| v / n).collect();
            RefOutput::scalar(l.iter().sum::<f64>() / n, vec![grad])
        }
    }
}

/// The factor the per-sample gradients take under `reduction` with `n` samples.
fn reduction_scale(reduction: Reduction, n: usize) -> f64 {
    match reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum | Reduction::None => 1.0,
    }
}

/// Reduces per-sample losses `l` (one per row of `n` rows) to the loss of `reduction`.
fn reduce_samples(reduction: Reduction, l: Vec<f64>) -> (Vec<f64>, Vec<usize>) {
    match reduction {
        Reduction::None => {
            let n = l.len();
            (l, vec![n])
        }
        Reduction::Sum => (vec![l.iter().sum()], vec![]),
        Reduction::Mean => (vec![l.iter().sum::<f64>() / l.len() as f64], vec![]),
    }
}
