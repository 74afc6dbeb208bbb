//! ContrastiveLoss: `l_i = y_i d_i^2 + (1 - y_i) max(0, margin - d_i)^2` with a Euclidean or
//! cosine distance `d_i` of the pair `(e1_i, e2_i)`.

use super::{check_len, checked_numel, reduce_samples, reduction_scale, RefOutput};
use crate::config::{ContrastiveLoss, Distance};
use crate::error::Result;

/// PyTorch's `pairwise_distance` offset, added to the difference.
const PAIRWISE_EPS: f64 = 1e-6;
/// PyTorch's `cosine_similarity` eps, the least norm.
const COSINE_EPS: f64 = 1e-8;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

fn norm(a: &[f64]) -> f64 {
    dot(a, a).sqrt()
}

/// A distance and its gradients with respect to the two rows.
struct DistanceGrad {
    d: f64,
    dd_da: Vec<f64>,
    dd_db: Vec<f64>,
}

/// `d = ||a - b + 1e-6||`, `dd/da = (a - b + 1e-6) / d = -dd/db`; at `d = 0` the gradient is 0
/// (PyTorch's norm backward).
fn euclidean(a: &[f64], b: &[f64]) -> DistanceGrad {
    let diff: Vec<f64> = a.iter().zip(b).map(|(a, b)| a - b + PAIRWISE_EPS).collect();
    let d = norm(&diff);
    let dd_da: Vec<f64> = diff
        .iter()
        .map(|v| if d > 0.0 { v / d } else { 0.0 })
        .collect();
    let dd_db = dd_da.iter().map(|v| -v).collect();
    DistanceGrad { d, dd_da, dd_db }
}

/// `d = 1 - cos` with PyTorch's `cosine_similarity`: `cos = sum((a / na) (b / nb))`,
/// `na = max(||a||, 1e-8)` (the clamp is not differentiated, as in PyTorch), so
/// `dcos/da = b / (na nb) - cos a / (na ||a||)` (the second term 0 where `||a|| = 0`).
fn cosine(a: &[f64], b: &[f64]) -> DistanceGrad {
    let (ra, rb) = (norm(a), norm(b));
    let (na, nb) = (ra.max(COSINE_EPS), rb.max(COSINE_EPS));
    let cos = dot(a, b) / (na * nb);
    let dcos = |u: &[f64], v: &[f64], nu: f64, ru: f64, nv: f64| -> Vec<f64> {
        u.iter()
            .zip(v)
            .map(|(&u, &v)| {
                let through_norm = if ru > 0.0 { cos * u / (nu * ru) } else { 0.0 };
                -(v / (nu * nv) - through_norm)
            })
            .collect()
    };
    DistanceGrad {
        d: 1.0 - cos,
        dd_da: dcos(a, b, na, ra, nb),
        dd_db: dcos(b, a, nb, rb, na),
    }
}

/// `ContrastiveLoss`: `embeddings1`, `embeddings2` `[N, D]`, `label` `[N]`; grads `[d e1, d e2]`.
pub fn contrastive(
    cfg: &ContrastiveLoss,
    e1: &[f64],
    e2: &[f64],
    shape: &[usize],
    label: &[f64],
    label_shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("ContrastiveLoss", "embeddings1", shape)?;
    checked_numel("ContrastiveLoss", "label", label_shape)?;
    let (n, dim) = cfg.check_shapes(shape, shape, label_shape)?;
    check_len("ContrastiveLoss", "embeddings1", e1, shape)?;
    check_len("ContrastiveLoss", "embeddings2", e2, shape)?;
    check_len("ContrastiveLoss", "label", label, label_shape)?;
    let scale = reduction_scale(cfg.reduction, n);

    let mut losses = Vec::with_capacity(n);
    let (mut g1, mut g2) = (Vec::with_capacity(e1.len()), Vec::with_capacity(e2.len()));
    // `dim >= 1`: check_shapes refuses empty embeddings.
    for ((a, b), &y) in e1.chunks(dim).zip(e2.chunks(dim)).zip(label) {
        let dist = match cfg.distance {
            Distance::Euclidean => euclidean(a, b),
            Distance::Cosine => cosine(a, b),
        };
        let d = dist.d;
        let hinge = (cfg.margin - d).max(0.0);
        losses.push(y * d * d + (1.0 - y) * hinge * hinge);
        // dl/dd = 2 y d - 2 (1 - y) max(0, margin - d).
        let dl_dd = scale * (2.0 * y * d - 2.0 * (1.0 - y) * hinge);
        g1.extend(dist.dd_da.iter().map(|v| dl_dd * v));
        g2.extend(dist.dd_db.iter().map(|v| dl_dd * v));
    }
    let (loss, loss_shape) = reduce_samples(cfg.reduction, losses);
    Ok(RefOutput {
        loss,
        loss_shape,
        grads: vec![g1, g2],
    })
}
