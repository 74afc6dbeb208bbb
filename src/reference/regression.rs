//! RMSELoss, MSELoss and L1Loss: element-wise differences `d = input - target`.

use super::{check_len, checked_numel, reduce_pointwise, sign, RefOutput};
use crate::config::{L1Loss, MSELoss, RMSELoss};
use crate::error::Result;

/// `input - target`, element by element.
fn differences(input: &[f64], target: &[f64]) -> Vec<f64> {
    input.iter().zip(target).map(|(x, t)| x - t).collect()
}

/// `RMSELoss`: `loss = sqrt(mean(d^2) + eps)`, `d loss / d output = d / (n loss)`, and 0 where
/// that is 0/0 (`eps = 0` and `output == target` everywhere).
pub fn rmse(cfg: &RMSELoss, output: &[f64], target: &[f64], shape: &[usize]) -> Result<RefOutput> {
    checked_numel("RMSELoss", "output", shape)?;
    cfg.check_shapes(shape, shape)?;
    check_len("RMSELoss", "output", output, shape)?;
    check_len("RMSELoss", "target", target, shape)?;
    let d = differences(output, target);
    let n = d.len() as f64;
    let mean_sq = d.iter().map(|d| d * d).sum::<f64>() / n;
    let loss = (mean_sq + cfg.eps).sqrt();
    let grad = if loss == 0.0 {
        vec![0.0; d.len()]
    } else {
        d.iter().map(|d| d / (n * loss)).collect()
    };
    Ok(RefOutput::scalar(loss, vec![grad]))
}

/// `MSELoss`: `l = d^2`, `dl/dx = 2 d`.
pub fn mse(cfg: &MSELoss, input: &[f64], target: &[f64], shape: &[usize]) -> Result<RefOutput> {
    checked_numel("MSELoss", "input", shape)?;
    cfg.check_shapes(shape, shape)?;
    check_len("MSELoss", "input", input, shape)?;
    check_len("MSELoss", "target", target, shape)?;
    let d = differences(input, target);
    let l = d.iter().map(|d| d * d).collect();
    let g = d.iter().map(|d| 2.0 * d).collect();
    Ok(reduce_pointwise(cfg.reduction, l, shape, g))
}

/// `L1Loss`: `l = |d|`, `dl/dx = sign(d)` with `sign(0) = 0`.
pub fn l1(cfg: &L1Loss, input: &[f64], target: &[f64], shape: &[usize]) -> Result<RefOutput> {
    checked_numel("L1Loss", "input", shape)?;
    cfg.check_shapes(shape, shape)?;
    check_len("L1Loss", "input", input, shape)?;
    check_len("L1Loss", "target", target, shape)?;
    let d = differences(input, target);
    let l = d.iter().map(|d| d.abs()).collect();
    let g = d.iter().map(|&d| sign(d)).collect();
    Ok(reduce_pointwise(cfg.reduction, l, shape, g))
}
