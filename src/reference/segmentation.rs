//! JaccardLoss and DiceLoss: one overlap ratio of the activations `p` and the target `t`
//! (or one per channel with `per_class`), `loss = 1 - mean of the ratios`.

use super::{check_len, checked_numel, sigmoid, RefOutput};
use crate::config::{ChannelLayout, DiceLoss, JaccardLoss};
use crate::error::Result;

/// `p = sigmoid(x)` element-wise, or the softmax over dimension 1 (the channels).
fn activation(x: &[f64], layout: ChannelLayout, multiclass: bool) -> Vec<f64> {
    if !multiclass {
        return x.iter().map(|&v| sigmoid(v)).collect();
    }
    let ChannelLayout {
        outer,
        channels,
        inner,
    } = layout;
    let mut p = vec![0.0; x.len()];
    for n in 0..outer {
        for k in 0..inner {
            let at = |c: usize| (n * channels + c) * inner + k;
            let max = (0..channels)
                .map(|c| x[at(c)])
                .fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = (0..channels).map(|c| (x[at(c)] - max).exp()).sum();
            for c in 0..channels {
                p[at(c)] = (x[at(c)] - max).exp() / total;
            }
        }
    }
    p
}

/// The gradient with respect to the logits `x` from the gradient `g` with respect to `p`.
fn activation_backward(
    x: &[f64],
    p: &[f64],
    g: &[f64],
    layout: ChannelLayout,
    multiclass: bool,
) -> Vec<f64> {
    if !multiclass {
        // sigmoid'(x) = sigmoid(x) sigmoid(-x): no cancellation in 1 - p at large x.
        return x
            .iter()
            .zip(g)
            .map(|(&x, &g)| g * sigmoid(x) * sigmoid(-x))
            .collect();
    }
    // softmax: dx_c = p_c (g_c - sum_j p_j g_j) per pixel.
    let ChannelLayout {
        outer,
        channels,
        inner,
    } = layout;
    let mut dx = vec![0.0; p.len()];
    for n in 0..outer {
        for k in 0..inner {
            let at = |c: usize| (n * channels + c) * inner + k;
            let dot: f64 = (0..channels).map(|c| p[at(c)] * g[at(c)]).sum();
            for c in 0..channels {
                dx[at(c)] = p[at(c)] * (g[at(c)] - dot);
            }
        }
    }
    dx
}

/// The group of element `i`: its channel with `per_class`, else the single group 0.
fn group_of(i: usize, layout: ChannelLayout, per_class: bool) -> usize {
    if per_class {
        (i / layout.inner) % layout.channels
    } else {
        0
    }
}

/// `I_g = sum(p t)` and `S_g = sum(p) + sum(t)` of each group.
fn overlap_sums(p: &[f64], t: &[f64], layout: ChannelLayout, per_class: bool) -> Vec<(f64, f64)> {
    let groups = if per_class { layout.channels } else { 1 };
    let mut sums = vec![(0.0, 0.0); groups];
    for (i, (&p, &t)) in p.iter().zip(t).enumerate() {
        let (inter, total) = &mut sums[group_of(i, layout, per_class)];
        *inter += p * t;
        *total += p + t;
    }
    sums
}

/// An overlap ratio `r(I, S)` and its partial derivatives `(dr/dI, dr/dS)`.
type Ratio<'a> = &'a dyn Fn(f64, f64) -> (f64, f64, f64);

/// `loss = 1 - mean_g r(I_g, S_g)`, differentiated through `I` (`dI/dp = t`), `S` (`dS/dp = 1`)
/// and the activation.
fn overlap_loss(
    output: &[f64],
    target: &[f64],
    layout: ChannelLayout,
    multiclass: bool,
    per_class: bool,
    ratio: Ratio,
) -> RefOutput {
    let p = activation(output, layout, multiclass);
    let sums = overlap_sums(&p, target, layout, per_class);
    let groups = sums.len() as f64;
    let parts: Vec<(f64, f64, f64)> = sums.iter().map(|&(i, s)| ratio(i, s)).collect();
    let loss = 1.0 - parts.iter().map(|r| r.0).sum::<f64>() / groups;
    let dp: Vec<f64> = target
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let (_, dr_di, dr_ds) = parts[group_of(i, layout, per_class)];
            -(dr_di * t + dr_ds) / groups
        })
        .collect();
    let dx = activation_backward(output, &p, &dp, layout, multiclass);
    RefOutput::scalar(loss, vec![dx])
}

/// `JaccardLoss`: `r = I / (S - I + eps)`.
pub fn jaccard(
    cfg: &JaccardLoss,
    output: &[f64],
    target: &[f64],
    shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("JaccardLoss", "output", shape)?;
    let layout = cfg.check_shapes(shape, shape)?;
    check_len("JaccardLoss", "output", output, shape)?;
    check_len("JaccardLoss", "target", target, shape)?;
    let eps = cfg.eps;
    let ratio = |i: f64, s: f64| {
        let d = s - i + eps;
        if d == 0.0 {
            // Only with eps = 0 and I = S = 0 (nothing predicted, nothing there): 0/0 is taken
            // as 0 with zero gradient, the limit of a vanishing prediction on an empty target.
            return (0.0, 0.0, 0.0);
        }
        // dr/dI = (d + I) / d^2, dr/dS = -I / d^2.
        (i / d, (d + i) / (d * d), -i / (d * d))
    };
    Ok(overlap_loss(
        output,
        target,
        layout,
        cfg.is_multiclass,
        cfg.per_class,
        &ratio,
    ))
}

/// `DiceLoss`: `r = (2 I + smooth) / max(S + smooth, eps)`; the `max` passes the gradient to
/// `S` where `S + smooth >= eps` (as `clamp_min`), else the denominator is the constant `eps`.
pub fn dice(cfg: &DiceLoss, output: &[f64], target: &[f64], shape: &[usize]) -> Result<RefOutput> {
    checked_numel("DiceLoss", "output", shape)?;
    let layout = cfg.check_shapes(shape, shape)?;
    check_len("DiceLoss", "output", output, shape)?;
    check_len("DiceLoss", "target", target, shape)?;
    let (smooth, eps) = (cfg.smooth, cfg.eps);
    let ratio = |i: f64, s: f64| {
        let num = 2.0 * i + smooth;
        let den = (s + smooth).max(eps);
        if den == 0.0 {
            // eps = smooth = 0 and S = 0 (so I = 0): 0/0 is taken as 0, as in JaccardLoss.
            return (0.0, 0.0, 0.0);
        }
        let dden_ds = if s + smooth >= eps { 1.0 } else { 0.0 };
        (num / den, 2.0 / den, -num * dden_ds / (den * den))
    };
    Ok(overlap_loss(
        output,
        target,
        layout,
        cfg.is_multiclass,
        cfg.per_class,
        &ratio,
    ))
}
