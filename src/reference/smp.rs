//! FocalLoss and TverskyLoss of segmentation_models_pytorch 0.6, in float64, written from its
//! definitions (see the rustdoc of [`crate::FocalLoss`] and [`crate::TverskyLoss`]).

use super::{check_len, sigmoid, softplus, RefOutput};
use crate::config::{ChannelLayout, Reduction, SmpMode};
use crate::error::{Error, Result};
use crate::losses::focal::FocalLoss;
use crate::losses::tversky::TverskyLoss;

/// The class of pixel `q` in multiclass mode: `None` for an ignored pixel, an error for a label
/// out of range.
fn class_of(what: &str, y: f64, classes: usize, ignore: Option<i64>) -> Result<Option<usize>> {
    let v = y as i64;
    if ignore == Some(v) {
        return Ok(None);
    }
    if v < 0 || v as usize >= classes {
        return Err(Error::LabelOutOfRange(format!(
            "{what}: label {v} is outside [0, {classes})"
        )));
    }
    Ok(Some(v as usize))
}

/// `(term without alpha, f, d(f l)/dx, df/dx)` of one element.
fn focal_element(x: f64, y: f64, gamma: f64) -> (f64, f64, f64, f64) {
    let l = ((1.0 - y) * softplus(x) + y * softplus(-x)).max(0.0);
    let dl = sigmoid(x) * (1.0 - y) - y * sigmoid(-x);
    let pt = (-l).exp();
    let u = -(-l).exp_m1();
    let (f, g1) = if gamma == 0.0 {
        (1.0, 0.0)
    } else if u > 0.0 {
        (u.powf(gamma), gamma * u.powf(gamma - 1.0) * pt)
    } else {
        (0.0, if gamma == 1.0 { pt } else { 0.0 })
    };
    (f * l, f, dl * (f + l * g1), g1 * dl)
}

/// FocalLoss on logits `x` and targets `y` (floats, or class indices as floats in multiclass
/// mode).
pub fn focal(
    cfg: &FocalLoss,
    x: &[f64],
    x_shape: &[usize],
    y: &[f64],
    y_shape: &[usize],
) -> Result<RefOutput> {
    const WHAT: &str = "FocalLoss";
    let layout = cfg.check_shapes(x_shape, y_shape)?;
    check_len(WHAT, "y_pred", x, x_shape)?;
    check_len(WHAT, "y_true", y, y_shape)?;
    let ChannelLayout {
        outer,
        channels,
        inner,
    } = layout;
    let multi = cfg.mode == SmpMode::Multiclass;
    let pixels = outer * inner;
    // Per pixel: kept, and the class (multiclass).
    let mut kept = vec![false; pixels];
    let mut class = vec![None; pixels];
    for q in 0..pixels {
        if multi {
            class[q] = class_of(WHAT, y[q], channels, cfg.ignore_index)?;
            kept[q] = class[q].is_some();
        } else {
            kept[q] = cfg.ignore_index.map(|v| v as f64) != Some(y[q]);
        }
    }
    let k = kept.iter().filter(|&&v| v).count() as f64;
    // Multiclass: the classes' losses are averaged (smp 0.6 divides their sum by C).
    let cs = if multi { 1.0 / channels as f64 } else { 1.0 };
    let r = if cfg.reduction == Reduction::Mean {
        cs / k
    } else {
        cs
    };
    let at = |q: usize, c: usize| (q / inner * channels + c) * inner + q % inner;
    let target = |q: usize, c: usize| {
        if multi {
            (class[q] == Some(c)) as u8 as f64
        } else {
            y[q]
        }
    };
    let aw = |t: f64| match cfg.alpha {
        Some(a) => a * t + (1.0 - a) * (1.0 - t),
        None => 1.0,
    };
    let mut grad = vec![0.0; x.len()];
    let mut per_pixel = vec![0.0; pixels];
    let mut total = 0.0;
    for c in 0..channels {
        let (mut a_sum, mut f_sum) = (0.0, 0.0);
        for q in (0..pixels).filter(|&q| kept[q]) {
            let t = target(q, c);
            let (term, f, _, _) = focal_element(x[at(q, c)], t, cfg.gamma);
            a_sum += term * aw(t);
            f_sum += f;
        }
        let (s, norm_coef) = if cfg.normalized {
            let s = f_sum.max(1e-6);
            let nc = if f_sum >= 1e-6 { -a_sum / (s * s) } else { 0.0 };
            (s, nc)
        } else {
            (1.0, 0.0)
        };
        total += a_sum / s * r;
        for q in (0..pixels).filter(|&q| kept[q]) {
            let t = target(q, c);
            let (term, _, dfl, df) = focal_element(x[at(q, c)], t, cfg.gamma);
            grad[at(q, c)] = r * (aw(t) * dfl / s + norm_coef * df);
            per_pixel[q] += term * aw(t) / s * cs;
        }
    }
    if cfg.reduction == Reduction::None {
        return Ok(RefOutput {
            loss: per_pixel,
            loss_shape: cfg.none_shape(x_shape, y_shape),
            grads: vec![grad],
        });
    }
    Ok(RefOutput::scalar(total, vec![grad]))
}

/// TverskyLoss on logits `x` and targets `y` (floats, or class indices as floats in multiclass
/// mode).
pub fn tversky(
    cfg: &TverskyLoss,
    x: &[f64],
    x_shape: &[usize],
    y: &[f64],
    y_shape: &[usize],
) -> Result<RefOutput> {
    const WHAT: &str = "TverskyLoss";
    let layout = cfg.check_shapes(x_shape, y_shape)?;
    check_len(WHAT, "y_pred", x, x_shape)?;
    check_len(WHAT, "y_true", y, y_shape)?;
    let ChannelLayout {
        outer,
        channels,
        inner,
    } = layout;
    let multi = cfg.mode == SmpMode::Multiclass;
    let pixels = outer * inner;
    let at = |q: usize, c: usize| (q / inner * channels + c) * inner + q % inner;
    // The activations and the targets, element by element.
    let mut p = vec![0.0; x.len()];
    let mut t = vec![0.0; x.len()];
    for q in 0..pixels {
        if multi {
            let cls = class_of(WHAT, y[q], channels, None)?;
            let m = (0..channels)
                .map(|c| x[at(q, c)])
                .fold(f64::NEG_INFINITY, f64::max);
            let z: f64 = (0..channels).map(|c| (x[at(q, c)] - m).exp()).sum();
            for c in 0..channels {
                p[at(q, c)] = (x[at(q, c)] - m).exp() / z;
                t[at(q, c)] = (cls == Some(c)) as u8 as f64;
            }
        } else {
            for c in 0..channels {
                p[at(q, c)] = sigmoid(x[at(q, c)]);
                t[at(q, c)] = y[at(q, c)];
            }
        }
    }
    let (a, b) = (cfg.alpha, cfg.beta);
    // Per class: (I, sum p, sum t).
    let mut stats = vec![(0.0, 0.0, 0.0); channels];
    for q in 0..pixels {
        for (c, s) in stats.iter_mut().enumerate() {
            let e = at(q, c);
            s.0 += p[e] * t[e];
            s.1 += p[e];
            s.2 += t[e];
        }
    }
    let g = channels as f64;
    let den = |s: (f64, f64, f64)| s.0 + a * (s.1 - s.0) + b * (s.2 - s.0) + cfg.smooth;
    let m: f64 = stats
        .iter()
        .filter(|s| s.2 > 0.0)
        .map(|&s| 1.0 - (s.0 + cfg.smooth) / den(s).max(cfg.eps))
        .sum::<f64>()
        / g;
    let pow = |m: f64, e: f64| if e == 0.0 { 1.0 } else { m.powf(e) };
    let loss = pow(m, cfg.gamma);
    let dm = if cfg.gamma == 1.0 {
        1.0
    } else if m > 0.0 && cfg.gamma != 0.0 {
        cfg.gamma * m.powf(cfg.gamma - 1.0)
    } else {
        0.0
    };
    // dL/dp = ca[c] t + cb[c].
    let mut coef = vec![(0.0, 0.0); channels];
    for (c, &s) in stats.iter().enumerate() {
        if s.2 <= 0.0 {
            continue;
        }
        let k = -dm / g;
        let d = den(s);
        let dd = d.max(cfg.eps);
        let num = s.0 + cfg.smooth;
        let mut ca = k / dd;
        let mut cb = 0.0;
        if d >= cfg.eps {
            ca -= k * num * (1.0 - a - b) / (dd * dd);
            cb = -k * num * a / (dd * dd);
        }
        coef[c] = (ca, cb);
    }
    let mut grad = vec![0.0; x.len()];
    for q in 0..pixels {
        let dp = |c: usize| coef[c].0 * t[at(q, c)] + coef[c].1;
        if multi {
            let dot: f64 = (0..channels).map(|c| p[at(q, c)] * dp(c)).sum();
            for c in 0..channels {
                grad[at(q, c)] = p[at(q, c)] * (dp(c) - dot);
            }
        } else {
            for c in 0..channels {
                let e = at(q, c);
                grad[e] = dp(c) * sigmoid(x[e]) * sigmoid(-x[e]);
            }
        }
    }
    Ok(RefOutput::scalar(loss, vec![grad]))
}
