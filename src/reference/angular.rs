//! AngularPenaltySMLoss (ArcFace, SphereFace, CosFace) on normalised features.
//!
//! `x^ = x / max(||x||, 1e-12)` per row, `W^` likewise per class row (or `W` itself without
//! `normalize_weight`), `wf = x^ W^T`, `c_i = wf[i, y_i]`, `a_i = acos(clamp(c_i, -1 + eps, 1 - eps))`,
//! `L_i = num_i - ln(exp(num_i) + sum_{j != y_i} exp(s wf_ij))`, loss `-mean L` / `-sum L` / `-L`.

use super::{check_len, checked_numel, log_sum_exp, reduce_samples, reduction_scale, RefOutput};
use crate::config::{check_labels, AngularPenaltySMConfig, LossType};
use crate::error::Result;

/// `F.normalize`'s least norm.
const NORM_EPS: f64 = 1e-12;

/// Each row of `v` (`rows x width`) divided by `max(||row||, 1e-12)`, with the norms used.
fn normalize_rows(v: &[f64], width: usize) -> (Vec<f64>, Vec<f64>) {
    let mut out = Vec::with_capacity(v.len());
    let mut norms = Vec::new();
    for row in v.chunks(width) {
        let n = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        norms.push(n);
        out.extend(row.iter().map(|x| x / n.max(NORM_EPS)));
    }
    (out, norms)
}

/// The backward of `normalize_rows`: with `u = v / n`, `dv = (du - u (u . du)) / n` where the
/// norm is at least 1e-12, and `du / 1e-12` where the clamp is active (PyTorch's `clamp_min`).
fn normalize_rows_backward(u: &[f64], norms: &[f64], du: &[f64], width: usize) -> Vec<f64> {
    let mut dv = Vec::with_capacity(u.len());
    for ((u, du), &n) in u.chunks(width).zip(du.chunks(width)).zip(norms) {
        if n >= NORM_EPS {
            let along: f64 = u.iter().zip(du).map(|(u, g)| u * g).sum();
            dv.extend(u.iter().zip(du).map(|(u, g)| (g - u * along) / n));
        } else {
            dv.extend(du.iter().map(|g| g / NORM_EPS));
        }
    }
    dv
}

/// `acos(clamp(c, -1 + eps, 1 - eps))` and its derivative in `c`: torch.clamp passes the
/// gradient inside `[lo, hi]` (ends included) and 0 outside; `d acos(u) / du = -1 / sqrt(1 - u^2)`.
/// Written as `min(max(c, lo), hi)` like torch.clamp, which also takes `eps > 1` (`lo > hi`).
fn clamped_acos(c: f64, eps: f64) -> (f64, f64) {
    let (lo, hi) = (-1.0 + eps, 1.0 - eps);
    let u = c.max(lo).min(hi);
    let pass = if (lo..=hi).contains(&c) { 1.0 } else { 0.0 };
    (u.acos(), -pass / (1.0 - u * u).sqrt())
}

/// The target logit `num(c)` and its derivative `d num / d c`.
fn numerator(cfg: &AngularPenaltySMConfig, c: f64) -> (f64, f64) {
    let (s, m) = (cfg.scale(), cfg.margin());
    match cfg.loss_type {
        LossType::CosFace => (s * (c - m), s),
        LossType::ArcFace => {
            let (a, da_dc) = clamped_acos(c, cfg.eps);
            (s * (a + m).cos(), -s * (a + m).sin() * da_dc)
        }
        LossType::SphereFace => {
            let (a, da_dc) = clamped_acos(c, cfg.eps);
            (s * (m * a).cos(), -s * m * (m * a).sin() * da_dc)
        }
    }
}

/// `AngularPenaltySMLoss`: `x [N, in]`, `labels [N]`, `weight [out, in]`; grads `[d x, d weight]`
/// (the gradient with respect to the raw weight, through its normalisation).
pub fn angular(
    cfg: &AngularPenaltySMConfig,
    x: &[f64],
    x_shape: &[usize],
    labels: &[i64],
    labels_shape: &[usize],
    weight: &[f64],
    weight_shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("AngularPenaltySMLoss", "x", x_shape)?;
    checked_numel("AngularPenaltySMLoss", "labels", labels_shape)?;
    checked_numel("AngularPenaltySMLoss", "weight", weight_shape)?;
    let n = cfg.check_shapes(x_shape, labels_shape, weight_shape)?;
    check_len("AngularPenaltySMLoss", "x", x, x_shape)?;
    check_len("AngularPenaltySMLoss", "labels", labels, labels_shape)?;
    check_len("AngularPenaltySMLoss", "weight", weight, weight_shape)?;
    let (features, classes) = (cfg.in_features, cfg.out_features);
    check_labels("AngularPenaltySMLoss", labels, classes, None)?;

    let (xn, x_norms) = normalize_rows(x, features);
    let (wn, w_norms) = if cfg.normalize_weight {
        normalize_rows(weight, features)
    } else {
        (weight.to_vec(), Vec::new())
    };
    let s = cfg.scale();
    let scale = reduction_scale(cfg.reduction, n);

    // d loss / d wf, row by row.
    let mut dwf = vec![0.0; n * classes];
    let mut losses = Vec::with_capacity(n);
    for i in 0..n {
        let xi = &xn[i * features..(i + 1) * features];
        let wf: Vec<f64> = wn.chunks(features).map(|w| dot(xi, w)).collect();
        let y = labels[i] as usize;
        let (num, dnum_dc) = numerator(cfg, wf[y]);
        // The logits of the softmax: the margin-penalised target and s wf_j elsewhere.
        let logits: Vec<f64> = (0..classes)
            .map(|j| if j == y { num } else { s * wf[j] })
            .collect();
        let lse = log_sum_exp(&logits);
        losses.push(lse - num);
        // d(-L_i)/d logit_j = softmax_j - [j = y]; logit_j = s wf_j off the target.
        for (j, &z) in logits.iter().enumerate() {
            let q = (z - lse).exp();
            dwf[i * classes + j] = if j == y {
                scale * (q - 1.0) * dnum_dc
            } else {
                scale * q * s
            };
        }
    }

    // wf = xn wn^T: d xn = dwf wn, d wn = dwf^T xn.
    let mut dxn = vec![0.0; xn.len()];
    let mut dwn = vec![0.0; wn.len()];
    for i in 0..n {
        for j in 0..classes {
            let g = dwf[i * classes + j];
            for k in 0..features {
                dxn[i * features + k] += g * wn[j * features + k];
                dwn[j * features + k] += g * xn[i * features + k];
            }
        }
    }
    let dx = normalize_rows_backward(&xn, &x_norms, &dxn, features);
    let dw = if cfg.normalize_weight {
        normalize_rows_backward(&wn, &w_norms, &dwn, features)
    } else {
        dwn
    };
    let (loss, loss_shape) = reduce_samples(cfg.reduction, losses);
    Ok(RefOutput {
        loss,
        loss_shape,
        grads: vec![dx, dw],
    })
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}
