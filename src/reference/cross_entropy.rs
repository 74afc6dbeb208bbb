//! PyTorch's CrossEntropyLoss with class-index targets, `weight`, `ignore_index` and
//! `label_smoothing` (PyTorch 2.x semantics).
//!
//! Per position with target `y` (not ignored), `logp = log_softmax(x)` over the classes and
//! `w_c` the class weights (1 without `weight`):
//! `l = (1 - ls) w_y (-logp_y) + (ls / C) sum_c w_c (-logp_c)`; an ignored position gives 0.
//! `mean` divides the sum by `W = sum of w_y over the non-ignored positions` (both terms, as
//! PyTorch), so that every target ignored gives 0/0 = NaN.
//! The gradient of `l` is `(1 - ls) w_y (p_c - [c = y]) + (ls / C) (p_c sum_j w_j - w_c)`.

use super::{check_len, checked_numel, log_sum_exp, RefOutput};
use crate::config::{check_labels, ChannelLayout, CrossEntropyLoss, Reduction};
use crate::error::Result;

/// `CrossEntropyLoss`: `input` `[C]`, `[N, C]` or `[N, C, d1, ...]`, `target` `[]`, `[N]` or
/// `[N, d1, ...]`. `none` has the target's shape.
pub fn cross_entropy(
    cfg: &CrossEntropyLoss,
    input: &[f64],
    input_shape: &[usize],
    target: &[i64],
    target_shape: &[usize],
) -> Result<RefOutput> {
    checked_numel("CrossEntropyLoss", "input", input_shape)?;
    checked_numel("CrossEntropyLoss", "target", target_shape)?;
    let layout = cfg.check_shapes(input_shape, target_shape)?;
    check_len("CrossEntropyLoss", "input", input, input_shape)?;
    check_len("CrossEntropyLoss", "target", target, target_shape)?;
    let ChannelLayout {
        outer,
        channels,
        inner,
    } = layout;
    check_labels("CrossEntropyLoss", target, channels, Some(cfg.ignore_index))?;

    let weights: Vec<f64> = match &cfg.weight {
        Some(w) => w.data.iter().map(|&v| f64::from(v)).collect(),
        None => vec![1.0; channels],
    };
    let weight_sum: f64 = weights.iter().sum();
    let ls = cfg.label_smoothing;
    let classes = channels as f64;

    let mut loss = vec![0.0; target.len()];
    let mut grad = vec![0.0; input.len()];
    let mut total_weight = 0.0;
    for n in 0..outer {
        for k in 0..inner {
            let pos = n * inner + k;
            if target[pos] == cfg.ignore_index {
                continue;
            }
            let y = target[pos] as usize;
            let at = |c: usize| (n * channels + c) * inner + k;
            let logits: Vec<f64> = (0..channels).map(|c| input[at(c)]).collect();
            let lse = log_sum_exp(&logits);
            let logp: Vec<f64> = logits.iter().map(|&x| x - lse).collect();

            total_weight += weights[y];
            let mut l = (1.0 - ls) * weights[y] * -logp[y];
            if ls > 0.0 {
                let smooth: f64 = (0..channels).map(|c| weights[c] * -logp[c]).sum();
                l += ls / classes * smooth;
            }
            loss[pos] = l;

            for (c, &lp) in logp.iter().enumerate() {
                let p = lp.exp();
                let hit = if c == y { 1.0 } else { 0.0 };
                let mut g = (1.0 - ls) * weights[y] * (p - hit);
                if ls > 0.0 {
                    g += ls / classes * (p * weight_sum - weights[c]);
                }
                grad[at(c)] = g;
            }
        }
    }

    Ok(match cfg.reduction {
        Reduction::None => RefOutput {
            loss,
            loss_shape: target_shape.to_vec(),
            grads: vec![grad],
        },
        Reduction::Sum => RefOutput::scalar(loss.iter().sum(), vec![grad]),
        Reduction::Mean => {
            // Ignored positions have a gradient of exactly 0 (also when W = 0, as PyTorch).
            for (i, g) in grad.iter_mut().enumerate() {
                let pos = (i / (channels * inner)) * inner + i % inner;
                if target[pos] != cfg.ignore_index {
                    *g /= total_weight;
                }
            }
            RefOutput::scalar(loss.iter().sum::<f64>() / total_weight, vec![grad])
        }
    })
}
