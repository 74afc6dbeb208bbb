//! The binary cross-entropies on logits: deepml's WeightedBCEWithLogitsLoss and PyTorch's
//! BCEWithLogitsLoss.

use super::{check_len, checked_numel, reduce_pointwise, sigmoid, softplus, RefOutput};
use crate::config::{BCEWithLogitsLoss, Broadcast, HostTensor, WeightedBCEWithLogitsLoss};
use crate::error::Result;

/// `WeightedBCEWithLogitsLoss`:
/// `l_i = -(w_p y ln(sigmoid(x) + eps) + w_n (1 - y) ln(sigmoid(-x) + eps))`, with
/// `d/dx ln(sigmoid(x) + eps) = sigmoid(x) sigmoid(-x) / (sigmoid(x) + eps)` and
/// `d/dx ln(sigmoid(-x) + eps) = -sigmoid(x) sigmoid(-x) / (sigmoid(-x) + eps)`.
/// `none` gives shape `[N]`; `mean` is `sum(l) / N`.
pub fn weighted_bce(
    cfg: &WeightedBCEWithLogitsLoss,
    logits: &[f64],
    logits_shape: &[usize],
    labels: &[f64],
    labels_shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("WeightedBCEWithLogitsLoss", "logits", logits_shape)?;
    checked_numel("WeightedBCEWithLogitsLoss", "labels", labels_shape)?;
    let n = cfg.check_shapes(logits_shape, labels_shape)?;
    check_len("WeightedBCEWithLogitsLoss", "logits", logits, logits_shape)?;
    check_len("WeightedBCEWithLogitsLoss", "labels", labels, labels_shape)?;
    let (w_p, w_n, eps) = (cfg.w_p, cfg.w_n, cfg.epsilon);
    let mut l = Vec::with_capacity(n);
    let mut g = Vec::with_capacity(n);
    for (&x, &y) in logits.iter().zip(labels) {
        let (pos, neg) = (sigmoid(x), sigmoid(-x));
        let slope = pos * neg;
        l.push(-(w_p * y * (pos + eps).ln() + w_n * (1.0 - y) * (neg + eps).ln()));
        g.push(-(w_p * y * slope / (pos + eps) - w_n * (1.0 - y) * slope / (neg + eps)));
    }
    // `none` has shape [N]; the gradient has the logits' own shape ([N] or [N, 1]), same values.
    Ok(reduce_pointwise(cfg.reduction, l, &[n], g))
}

/// The value of a broadcast argument at flat input index `i`.
fn broadcast_at(t: &Option<HostTensor>, b: Option<Broadcast>, i: usize) -> f64 {
    match (t, b) {
        (Some(t), Some(b)) => f64::from(t.data[(i / b.stride) % b.period]),
        _ => 1.0,
    }
}

/// `BCEWithLogitsLoss` (PyTorch): `l = w (pw y softplus(-x) + (1 - y) softplus(x))`, i.e.
/// `-w (pw y ln sigmoid(x) + (1 - y) ln sigmoid(-x))`, with
/// `dl/dx = w ((1 - y) sigmoid(x) - pw y sigmoid(-x))`.
pub fn bce_with_logits(
    cfg: &BCEWithLogitsLoss,
    input: &[f64],
    target: &[f64],
    shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("BCEWithLogitsLoss", "input", shape)?;
    let (_, wb, pwb) = cfg.check_shapes(shape, shape)?;
    check_len("BCEWithLogitsLoss", "input", input, shape)?;
    check_len("BCEWithLogitsLoss", "target", target, shape)?;
    let mut l = Vec::with_capacity(input.len());
    let mut g = Vec::with_capacity(input.len());
    for (i, (&x, &y)) in input.iter().zip(target).enumerate() {
        let w = broadcast_at(&cfg.weight, wb, i);
        let pw = broadcast_at(&cfg.pos_weight, pwb, i);
        l.push(w * (pw * y * softplus(-x) + (1.0 - y) * softplus(x)));
        g.push(w * ((1.0 - y) * sigmoid(x) - pw * y * sigmoid(-x)));
    }
    Ok(reduce_pointwise(cfg.reduction, l, shape, g))
}
