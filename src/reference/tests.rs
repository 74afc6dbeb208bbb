//! Finite-difference checks of every analytic gradient of the reference, and its edge cases.

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn uniform(rng: &mut StdRng, n: usize, lo: f64, hi: f64) -> Vec<f64> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// One-hot targets over dimension 1 of `[N, C, inner]`.
fn one_hot(rng: &mut StdRng, shape: &[usize]) -> Vec<f64> {
    let l = ChannelLayout::of(shape);
    let mut t = vec![0.0; l.numel()];
    for n in 0..l.outer {
        for k in 0..l.inner {
            let c = rng.gen_range(0..l.channels);
            t[(n * l.channels + c) * l.inner + k] = 1.0;
        }
    }
    t
}

/// Soft targets: a random distribution over dimension 1 at every pixel.
fn soft_distribution(rng: &mut StdRng, shape: &[usize]) -> Vec<f64> {
    let l = ChannelLayout::of(shape);
    let mut t = uniform(rng, l.numel(), 0.0, 1.0);
    for n in 0..l.outer {
        for k in 0..l.inner {
            let at = |c: usize| (n * l.channels + c) * l.inner + k;
            let total: f64 = (0..l.channels).map(|c| t[at(c)]).sum();
            for c in 0..l.channels {
                t[at(c)] /= total;
            }
        }
    }
    t
}

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn summed(out: &RefOutput) -> f64 {
    out.loss.iter().sum()
}

/// Compares `analytic` with the five-point central differences of `f` (the summed loss as a
/// function of one input) at `x`.
fn check_fd(label: &str, x: &[f64], analytic: &[f64], f: impl Fn(&[f64]) -> f64) {
    assert_eq!(x.len(), analytic.len(), "{label}: gradient length");
    let f0 = f(x).abs();
    let scale = analytic.iter().fold(0.0f64, |m, g| m.max(g.abs()));
    let mut worst = (0.0, 0usize, 0.0, 0.0);
    let mut probe = x.to_vec();
    let mut at = |i: usize, v: f64| {
        probe[i] = v;
        let y = f(&probe);
        probe[i] = x[i];
        y
    };
    // Large inputs: a strided sample of about 400 elements (every channel and position is hit).
    let stride = (x.len() / 400).max(1);
    for i in (0..x.len()).step_by(stride) {
        let h = 1e-4 * x[i].abs().max(1.0);
        let fd = (8.0 * (at(i, x[i] + h) - at(i, x[i] - h))
            - (at(i, x[i] + 2.0 * h) - at(i, x[i] - 2.0 * h)))
            / (12.0 * h);
        // The stencil is exact to O(h^4); its rounding error is O(1e-16 |f| / h).
        let allowed = 1e-6 * analytic[i].abs() + 1e-7 * scale + 1e-10 * (1.0 + f0);
        let ratio = (fd - analytic[i]).abs() / allowed;
        if ratio > worst.0 {
            worst = (ratio, i, fd, analytic[i]);
        }
    }
    let (ratio, i, fd, an) = worst;
    assert!(
        ratio <= 1.0,
        "{label}: element {i}: finite difference {fd:e}, analytic {an:e} (ratio {ratio:.2})"
    );
}

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

// ---------------------------------------------------------------------------------------------
// Jaccard and Dice.

/// One Jaccard / Dice setting with its inputs.
struct Segmentation {
    label: String,
    shape: Vec<usize>,
    multiclass: bool,
    per_class: bool,
    x: Vec<f64>,
    t: Vec<f64>,
}

/// Every segmentation setting: shape, multiclass, per_class, soft or hard targets.
fn segmentation_settings(seed: u64) -> Vec<Segmentation> {
    let mut r = rng(seed);
    let mut out = Vec::new();
    let shapes: [&[usize]; 5] = [&[2, 1, 5, 7], &[13], &[3, 5, 7, 11], &[4, 3], &[2, 4, 5, 3]];
    for shape in shapes {
        for multiclass in [false, true] {
            for per_class in [false, true] {
                if (multiclass || per_class) && shape.len() < 2 {
                    continue;
                }
                let n = numel(shape);
                let x = uniform(&mut r, n, -4.0, 4.0);
                let hard = if multiclass {
                    one_hot(&mut r, shape)
                } else {
                    (0..n).map(|_| f64::from(r.gen_bool(0.4) as u8)).collect()
                };
                let soft = if multiclass {
                    soft_distribution(&mut r, shape)
                } else {
                    uniform(&mut r, n, 0.0, 1.0)
                };
                for (kind, t) in [("hard", hard), ("soft", soft)] {
                    let label =
                        format!("{shape:?} multiclass {multiclass} per_class {per_class} {kind}");
                    out.push(Segmentation {
                        label,
                        shape: shape.to_vec(),
                        multiclass,
                        per_class,
                        x: x.clone(),
                        t,
                    });
                }
            }
        }
    }
    out
}

#[test]
fn jaccard_gradients() {
    for setting in segmentation_settings(1) {
        let Segmentation {
            label,
            shape,
            multiclass: is_multiclass,
            per_class,
            x,
            t,
        } = setting;
        for eps in [1e-7, 0.5] {
            let cfg = JaccardLoss {
                is_multiclass,
                eps,
                per_class,
            };
            let out = jaccard(&cfg, &x, &t, &shape).unwrap();
            assert_eq!(out.loss_shape, Vec::<usize>::new());
            assert!(
                out.loss[0] > 0.0 && out.loss[0] < 1.0,
                "{label}: loss {}",
                out.loss[0]
            );
            check_fd(
                &format!("jaccard {label} eps {eps}"),
                &x,
                &out.grads[0],
                |x| summed(&jaccard(&cfg, x, &t, &shape).unwrap()),
            );
        }
    }
}

#[test]
fn dice_gradients() {
    for setting in segmentation_settings(2) {
        let Segmentation {
            label,
            shape,
            multiclass: is_multiclass,
            per_class,
            x,
            t,
        } = setting;
        for (smooth, eps) in [(0.0, 1e-7), (1.0, 1e-7), (0.5, 0.0)] {
            let cfg = DiceLoss {
                is_multiclass,
                smooth,
                eps,
                per_class,
            };
            let out = dice(&cfg, &x, &t, &shape).unwrap();
            check_fd(
                &format!("dice {label} smooth {smooth}"),
                &x,
                &out.grads[0],
                |x| summed(&dice(&cfg, x, &t, &shape).unwrap()),
            );
        }
    }
}

#[test]
fn dice_denominator_clamped_at_eps() {
    // S + smooth < eps: the denominator is the constant eps, r = 2 I / eps.
    let mut r = rng(3);
    let shape = [2, 1, 3, 4];
    let x = uniform(&mut r, 24, -3.0, 3.0);
    let t = uniform(&mut r, 24, 0.0, 1.0);
    let cfg = DiceLoss {
        eps: 1e3,
        ..DiceLoss::default()
    };
    let out = dice(&cfg, &x, &t, &shape).unwrap();
    let p: Vec<f64> = x.iter().map(|&v| sigmoid(v)).collect();
    let inter: f64 = p.iter().zip(&t).map(|(p, t)| p * t).sum();
    assert!((out.loss[0] - (1.0 - 2.0 * inter / 1e3)).abs() < 1e-12);
    check_fd("dice clamped", &x, &out.grads[0], |x| {
        summed(&dice(&cfg, x, &t, &shape).unwrap())
    });
}

#[test]
fn segmentation_saturated_logits() {
    // Logits of +-200: the loss stays finite, the gradient there is ~0.
    let x = [200.0, -200.0, 50.0, -50.0, 0.3, -0.7];
    let t = [1.0, 0.0, 0.0, 1.0, 1.0, 0.0];
    let j = jaccard(&JaccardLoss::default(), &x, &t, &[6]).unwrap();
    let d = dice(&DiceLoss::default(), &x, &t, &[6]).unwrap();
    for out in [j, d] {
        assert!(out.loss[0].is_finite());
        assert!(out.grads[0].iter().all(|g| g.is_finite()));
        assert!(out.grads[0][0].abs() < 1e-80 && out.grads[0][1].abs() < 1e-80);
    }
    // All-zero target: I = 0, loss 1, gradient exactly 0.
    let out = jaccard(&JaccardLoss::default(), &x, &[0.0; 6], &[6]).unwrap();
    assert_eq!(out.loss[0], 1.0);
    assert!(out.grads[0].iter().all(|&g| g == 0.0));
}

// ---------------------------------------------------------------------------------------------
// RMSE, MSE, L1.

#[test]
fn rmse_gradients() {
    let mut r = rng(4);
    for shape in [vec![3, 5, 7, 11], vec![1], vec![4, 16]] {
        let n = numel(&shape);
        let (x, t) = (uniform(&mut r, n, -2.0, 2.0), uniform(&mut r, n, -2.0, 2.0));
        for eps in [1e-6, 0.0, 0.25] {
            let cfg = RMSELoss { eps };
            let out = rmse(&cfg, &x, &t, &shape).unwrap();
            check_fd(
                &format!("rmse {shape:?} eps {eps}"),
                &x,
                &out.grads[0],
                |x| summed(&rmse(&cfg, x, &t, &shape).unwrap()),
            );
        }
    }
}

#[test]
fn rmse_identical_inputs_have_zero_gradient() {
    let x = [0.5, -1.0, 2.0];
    let out = rmse(&RMSELoss { eps: 0.0 }, &x, &x, &[3]).unwrap();
    assert_eq!(out.loss, vec![0.0]);
    assert_eq!(out.grads[0], vec![0.0; 3]);
    let out = rmse(&RMSELoss::default(), &x, &x, &[3]).unwrap();
    assert!((out.loss[0] - 1e-3).abs() < 1e-15);
    assert_eq!(out.grads[0], vec![0.0; 3]);
}

#[test]
fn mse_and_l1_gradients() {
    let mut r = rng(5);
    let shape = [3, 5, 7, 11];
    let n = numel(&shape);
    let x = uniform(&mut r, n, -2.0, 2.0);
    let t = uniform(&mut r, n, -2.0, 2.0);
    for reduction in REDUCTIONS {
        let expect_shape = if reduction == Reduction::None {
            shape.to_vec()
        } else {
            vec![]
        };
        let cfg = MSELoss { reduction };
        let out = mse(&cfg, &x, &t, &shape).unwrap();
        assert_eq!(out.loss_shape, expect_shape);
        check_fd(&format!("mse {reduction:?}"), &x, &out.grads[0], |x| {
            summed(&mse(&cfg, x, &t, &shape).unwrap())
        });
        let cfg = L1Loss { reduction };
        let out = l1(&cfg, &x, &t, &shape).unwrap();
        assert_eq!(out.loss_shape, expect_shape);
        check_fd(&format!("l1 {reduction:?}"), &x, &out.grads[0], |x| {
            summed(&l1(&cfg, x, &t, &shape).unwrap())
        });
    }
}

#[test]
fn l1_gradient_of_zero_is_zero() {
    let out = l1(
        &L1Loss {
            reduction: Reduction::Sum,
        },
        &[1.0, 2.0, 3.0],
        &[1.0, 0.0, 4.0],
        &[3],
    )
    .unwrap();
    assert_eq!(out.loss, vec![3.0]);
    assert_eq!(out.grads[0], vec![0.0, 1.0, -1.0]);
}

// ---------------------------------------------------------------------------------------------
// Weighted BCE and BCE with logits.

#[test]
fn weighted_bce_gradients() {
    let mut r = rng(6);
    for logits_shape in [vec![37], vec![37, 1], vec![1, 1]] {
        let n = numel(&logits_shape);
        let x: Vec<f64> = uniform(&mut r, n, -6.0, 6.0);
        let y: Vec<f64> = (0..n)
            .map(|i| {
                if i % 3 == 0 {
                    0.3
                } else {
                    f64::from(r.gen_bool(0.5) as u8)
                }
            })
            .collect();
        for reduction in REDUCTIONS {
            for (w_p, w_n, epsilon) in [(3.0, 1.0, 1e-7), (0.25, 2.0, 1e-3), (1.0, 1.0, 0.0)] {
                let cfg = WeightedBCEWithLogitsLoss {
                    w_p,
                    w_n,
                    epsilon,
                    reduction,
                };
                let out = weighted_bce(&cfg, &x, &logits_shape, &y, &[n]).unwrap();
                let want = if reduction == Reduction::None {
                    vec![n]
                } else {
                    vec![]
                };
                assert_eq!(out.loss_shape, want);
                check_fd(
                    &format!("wbce {logits_shape:?} {reduction:?} {w_p} {w_n} {epsilon}"),
                    &x,
                    &out.grads[0],
                    |x| summed(&weighted_bce(&cfg, x, &logits_shape, &y, &[n]).unwrap()),
                );
            }
        }
    }
}

#[test]
fn weighted_bce_saturated_logits_are_capped() {
    // A wrong-sign saturated logit costs -ln(epsilon) (times the weight), no more.
    let cfg = WeightedBCEWithLogitsLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let out = weighted_bce(&cfg, &[-200.0, 200.0, 200.0], &[3], &[1.0, 0.0, 1.0], &[3]).unwrap();
    let cap = -(1e-7f64).ln();
    assert!((out.loss[0] - cap).abs() < 1e-9 && (out.loss[1] - cap).abs() < 1e-9);
    assert!(out.loss[2].abs() < 1e-6);
    assert!(out.grads[0]
        .iter()
        .all(|g| g.is_finite() && g.abs() < 1e-70));
}

fn host(data: &[f64], shape: &[usize]) -> HostTensor {
    HostTensor::new(data.iter().map(|&v| v as f32).collect(), shape.to_vec()).unwrap()
}

#[test]
fn bce_with_logits_gradients() {
    let mut r = rng(7);
    let shape = [3, 4, 5, 2];
    let n = numel(&shape);
    let x = uniform(&mut r, n, -5.0, 5.0);
    let t = uniform(&mut r, n, 0.0, 1.0);
    let args: [(Option<HostTensor>, Option<HostTensor>); 4] = [
        (None, None),
        (Some(host(&[0.5, 1.5], &[2])), None),
        (None, Some(host(&[3.0, 0.5], &[2]))),
        (
            Some(host(&[0.25, 1.0, 2.0, 0.5], &[4, 1, 1])),
            Some(host(&[2.0, 1.5], &[2])),
        ),
    ];
    for (weight, pos_weight) in args {
        for reduction in REDUCTIONS {
            let cfg = BCEWithLogitsLoss {
                weight: weight.clone(),
                reduction,
                pos_weight: pos_weight.clone(),
            };
            let out = bce_with_logits(&cfg, &x, &t, &shape).unwrap();
            check_fd(
                &format!("bce {reduction:?} {weight:?} {pos_weight:?}"),
                &x,
                &out.grads[0],
                |x| summed(&bce_with_logits(&cfg, x, &t, &shape).unwrap()),
            );
        }
    }
}

#[test]
fn bce_with_logits_broadcast_index() {
    // weight [4, 1, 1] over [3, 4, 5, 2]: element i uses weight[(i / 10) % 4].
    let shape = [3, 4, 5, 2];
    let x = vec![0.0; 120];
    let t = vec![0.0; 120];
    let w = [1.0, 2.0, 3.0, 4.0];
    let cfg = BCEWithLogitsLoss {
        weight: Some(host(&w, &[4, 1, 1])),
        reduction: Reduction::None,
        ..Default::default()
    };
    let out = bce_with_logits(&cfg, &x, &t, &shape).unwrap();
    for (i, l) in out.loss.iter().enumerate() {
        assert!((l - w[(i / 10) % 4] * 2f64.ln()).abs() < 1e-12);
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy.

fn class_targets(
    r: &mut StdRng,
    n: usize,
    classes: usize,
    ignore: i64,
    ignored_every: usize,
) -> Vec<i64> {
    (0..n)
        .map(|i| {
            if ignored_every > 0 && i % ignored_every == 1 {
                ignore
            } else {
                r.gen_range(0..classes as i64)
            }
        })
        .collect()
}

#[test]
fn cross_entropy_gradients() {
    let mut r = rng(8);
    let layouts: [(&[usize], &[usize]); 4] = [
        (&[10, 6], &[10]),
        (&[2, 4, 3, 5], &[2, 3, 5]),
        (&[5], &[]),
        (&[3, 5, 7, 11], &[3, 7, 11]),
    ];
    for (input_shape, target_shape) in layouts {
        let classes = if input_shape.len() == 1 {
            input_shape[0]
        } else {
            input_shape[1]
        };
        let x = uniform(&mut r, numel(input_shape), -4.0, 4.0);
        let weights: Vec<f64> = uniform(&mut r, classes, 0.2, 2.5);
        for (ignore_index, ignored_every) in [(-100, 0), (255, 3)] {
            let target = class_targets(
                &mut r,
                numel(target_shape),
                classes,
                ignore_index,
                ignored_every,
            );
            for weight in [None, Some(host(&weights, &[classes]))] {
                for label_smoothing in [0.0, 0.25] {
                    for reduction in REDUCTIONS {
                        let cfg = CrossEntropyLoss {
                            weight: weight.clone(),
                            ignore_index,
                            reduction,
                            label_smoothing,
                        };
                        let out =
                            cross_entropy(&cfg, &x, input_shape, &target, target_shape).unwrap();
                        if reduction == Reduction::None {
                            assert_eq!(out.loss_shape, target_shape.to_vec());
                        }
                        let label = format!("ce {input_shape:?} ignore {ignore_index} w {} ls {label_smoothing} {reduction:?}", weight.is_some());
                        check_fd(&label, &x, &out.grads[0], |x| {
                            summed(
                                &cross_entropy(&cfg, x, input_shape, &target, target_shape)
                                    .unwrap(),
                            )
                        });
                    }
                }
            }
        }
    }
}

#[test]
fn cross_entropy_matches_the_pytorch_formula() {
    // One row, weight and smoothing, written out by hand from PyTorch's definition.
    let x = [1.0, -0.5, 2.0];
    let w = [0.5, 2.0, 1.5];
    let ls = 0.3;
    let cfg = CrossEntropyLoss {
        weight: Some(host(&w, &[3])),
        label_smoothing: ls,
        ..Default::default()
    };
    let out = cross_entropy(&cfg, &x, &[1, 3], &[1], &[1]).unwrap();
    let lse = x.iter().map(|v: &f64| v.exp()).sum::<f64>().ln();
    let logp: Vec<f64> = x.iter().map(|v| v - lse).collect();
    let nll = -w[1] * logp[1] / w[1];
    let smooth = -(0..3).map(|c| w[c] * logp[c]).sum::<f64>() / w[1];
    let want = (1.0 - ls) * nll + ls / 3.0 * smooth;
    assert!(
        (out.loss[0] - want).abs() < 1e-12,
        "{} vs {want}",
        out.loss[0]
    );
}

#[test]
fn cross_entropy_all_ignored_mean_is_nan() {
    let cfg = CrossEntropyLoss {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let out = cross_entropy(&cfg, &[1.0, 2.0, 3.0, 4.0], &[2, 2], &[-100, -100], &[2]).unwrap();
    assert!(out.loss[0].is_nan());
    assert_eq!(out.grads[0], vec![0.0; 4]);
    let cfg = CrossEntropyLoss {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    let out = cross_entropy(&cfg, &[1.0, 2.0, 3.0, 4.0], &[2, 2], &[-100, -100], &[2]).unwrap();
    assert_eq!(out.loss, vec![0.0]);
}

#[test]
fn cross_entropy_extreme_logits_are_finite() {
    let x = [200.0, -200.0, 50.0, -50.0, 0.0];
    for y in 0..5 {
        let out = cross_entropy(&CrossEntropyLoss::default(), &x, &[1, 5], &[y], &[1]).unwrap();
        assert!(out.loss[0].is_finite() && out.grads[0].iter().all(|g| g.is_finite()));
    }
}

// ---------------------------------------------------------------------------------------------
// Contrastive.

#[test]
fn contrastive_gradients() {
    let mut r = rng(9);
    let shape = [9, 13];
    let n = numel(&shape);
    let a = uniform(&mut r, n, -1.0, 1.0);
    let b = uniform(&mut r, n, -1.0, 1.0);
    let y: Vec<f64> = (0..9)
        .map(|i| if i == 4 { 0.7 } else { f64::from(i % 2 == 0) })
        .collect();
    for distance in [Distance::Euclidean, Distance::Cosine] {
        for margin in [0.5, 2.0, 6.0] {
            for reduction in REDUCTIONS {
                let cfg = ContrastiveLoss {
                    margin,
                    distance,
                    reduction,
                };
                let out = contrastive(&cfg, &a, &b, &shape, &y, &[9]).unwrap();
                let label = format!("contrastive {distance:?} margin {margin} {reduction:?}");
                check_fd(&format!("{label} e1"), &a, &out.grads[0], |a| {
                    summed(&contrastive(&cfg, a, &b, &shape, &y, &[9]).unwrap())
                });
                check_fd(&format!("{label} e2"), &b, &out.grads[1], |b| {
                    summed(&contrastive(&cfg, &a, b, &shape, &y, &[9]).unwrap())
                });
            }
        }
    }
}

#[test]
fn contrastive_identical_rows_are_finite() {
    let a = [0.5, -1.0, 2.0, 0.25, 1.0, 1.0];
    for distance in [Distance::Euclidean, Distance::Cosine] {
        let cfg = ContrastiveLoss {
            distance,
            ..Default::default()
        };
        let out = contrastive(&cfg, &a, &a, &[2, 3], &[1.0, 0.0], &[2]).unwrap();
        assert!(out.loss[0].is_finite());
        assert!(
            out.grads.iter().flatten().all(|g| g.is_finite()),
            "{distance:?}: {out:?}"
        );
    }
    // Euclidean: d = sqrt(D) 1e-6 exactly, so a similar pair costs D 1e-12.
    let out = contrastive(
        &ContrastiveLoss::default(),
        &a[..3],
        &a[..3],
        &[1, 3],
        &[1.0],
        &[1],
    )
    .unwrap();
    assert!((out.loss[0] - 3e-12).abs() < 1e-24);
    // Zero embeddings in the cosine distance: norms clamped at 1e-8, no NaN.
    let cfg = ContrastiveLoss {
        distance: Distance::Cosine,
        ..Default::default()
    };
    let out = contrastive(&cfg, &[0.0; 3], &[1.0, 2.0, 3.0], &[1, 3], &[0.0], &[1]).unwrap();
    assert!(out.loss[0].is_finite() && out.grads.iter().flatten().all(|g| g.is_finite()));
}

// ---------------------------------------------------------------------------------------------
// Angular penalty.

fn angular_inputs(
    seed: u64,
    n: usize,
    features: usize,
    classes: usize,
) -> (Vec<f64>, Vec<i64>, Vec<f64>) {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * features, -1.0, 1.0);
    let labels = (0..n).map(|_| r.gen_range(0..classes as i64)).collect();
    let bound = 1.0 / (features as f64).sqrt();
    let w = uniform(&mut r, classes * features, -bound, bound);
    (x, labels, w)
}

#[test]
fn angular_gradients() {
    let (n, features, classes) = (7, 11, 5);
    let (x, labels, w) = angular_inputs(10, n, features, classes);
    let (xs, ws) = ([n, features], [classes, features]);
    for loss_type in [LossType::ArcFace, LossType::SphereFace, LossType::CosFace] {
        for normalize_weight in [true, false] {
            for (s, m) in [
                (None, None),
                (Some(10.0), Some(0.3)),
                (Some(0.0), Some(0.0)),
            ] {
                for reduction in REDUCTIONS {
                    let cfg = AngularPenaltySMConfig {
                        s,
                        m,
                        normalize_weight,
                        reduction,
                        ..AngularPenaltySMConfig::new(features, classes, loss_type)
                    };
                    let out = angular(&cfg, &x, &xs, &labels, &[n], &w, &ws).unwrap();
                    let want = if reduction == Reduction::None {
                        vec![n]
                    } else {
                        vec![]
                    };
                    assert_eq!(out.loss_shape, want);
                    let label = format!("angular {loss_type:?} norm {normalize_weight} s {s:?} m {m:?} {reduction:?}");
                    check_fd(&format!("{label} x"), &x, &out.grads[0], |x| {
                        summed(&angular(&cfg, x, &xs, &labels, &[n], &w, &ws).unwrap())
                    });
                    check_fd(&format!("{label} weight"), &w, &out.grads[1], |w| {
                        summed(&angular(&cfg, &x, &xs, &labels, &[n], w, &ws).unwrap())
                    });
                }
            }
        }
    }
}

#[test]
fn angular_is_finite_where_exp_overflows() {
    // Unnormalised weights of norm 100: s wf reaches 6400, far beyond exp's range.
    let (n, features, classes) = (4, 8, 6);
    let (x, labels, w) = angular_inputs(11, n, features, classes);
    let w: Vec<f64> = w.iter().map(|v| v * 300.0).collect();
    let cfg = AngularPenaltySMConfig {
        normalize_weight: false,
        ..AngularPenaltySMConfig::new(features, classes, LossType::ArcFace)
    };
    let out = angular(
        &cfg,
        &x,
        &[n, features],
        &labels,
        &[n],
        &w,
        &[classes, features],
    )
    .unwrap();
    assert!(out.loss[0].is_finite() && out.loss[0] > 100.0);
    assert!(out.grads.iter().flatten().all(|g| g.is_finite()));
}

#[test]
fn angular_clamped_target_has_no_target_path_gradient() {
    // W[y] = -x: c = -1 < -1 + eps, so the target logit is constant in c and only the other
    // classes carry a gradient; with them at weight 0 every gradient vanishes.
    let x = [0.3, -0.4, 1.2];
    let mut w = vec![0.0; 9];
    for (k, v) in x.iter().enumerate() {
        w[3 + k] = -2.0 * v;
    }
    let cfg = AngularPenaltySMConfig {
        s: Some(0.0),
        ..AngularPenaltySMConfig::new(3, 3, LossType::ArcFace)
    };
    let cfg = AngularPenaltySMConfig {
        s: Some(5.0),
        ..cfg
    };
    let out = angular(&cfg, &x, &[1, 3], &[1], &[1], &w, &[3, 3]).unwrap();
    assert!(out.loss[0].is_finite());
    // Only the target row's path could move W[1]; its gradient is 0.
    assert!(
        out.grads[1][3..6].iter().all(|&g| g == 0.0),
        "{:?}",
        out.grads[1]
    );
    assert!(out.grads.iter().flatten().all(|g| g.is_finite()));
}

// ---------------------------------------------------------------------------------------------
// Refusals.

#[test]
fn bad_inputs_are_errors_not_panics() {
    let kind = |r: Result<RefOutput>| r.unwrap_err().kind();
    // Data that does not fit the shape.
    assert_eq!(
        kind(mse(&MSELoss::default(), &[1.0; 5], &[1.0; 6], &[6])),
        "invalid_input"
    );
    assert_eq!(
        kind(jaccard(&JaccardLoss::default(), &[1.0; 3], &[1.0; 4], &[4])),
        "invalid_input"
    );
    // A shape whose product overflows.
    let huge = [usize::MAX, 3];
    assert_eq!(
        kind(rmse(&RMSELoss::default(), &[], &[], &huge)),
        "invalid_input"
    );
    assert_eq!(
        kind(cross_entropy(
            &CrossEntropyLoss::default(),
            &[],
            &huge,
            &[],
            &[usize::MAX]
        )),
        "invalid_input"
    );
    // Labels out of range.
    let ce = CrossEntropyLoss::default();
    assert_eq!(
        kind(cross_entropy(&ce, &[0.0; 6], &[2, 3], &[0, 3], &[2])),
        "invalid_input"
    );
    assert_eq!(
        kind(cross_entropy(&ce, &[0.0; 6], &[2, 3], &[0, -1], &[2])),
        "invalid_input"
    );
    let cfg = AngularPenaltySMConfig::new(2, 3, LossType::CosFace);
    assert_eq!(
        kind(angular(
            &cfg,
            &[1.0; 2],
            &[1, 2],
            &[3],
            &[1],
            &[1.0; 6],
            &[3, 2]
        )),
        "invalid_input"
    );
    // Config domains.
    assert_eq!(
        kind(rmse(&RMSELoss { eps: -1.0 }, &[1.0], &[1.0], &[1])),
        "invalid_config"
    );
    let cfg = AngularPenaltySMConfig {
        eps: 3.0,
        ..AngularPenaltySMConfig::new(2, 3, LossType::ArcFace)
    };
    assert!(angular(&cfg, &[1.0; 2], &[1, 2], &[0], &[1], &[1.0; 6], &[3, 2]).is_ok());
    // Empty batches.
    let c = ContrastiveLoss::default();
    assert_eq!(
        kind(contrastive(&c, &[], &[], &[0, 4], &[], &[0])),
        "invalid_input"
    );
    assert_eq!(
        kind(dice(&DiceLoss::default(), &[], &[], &[0, 1, 2])),
        "invalid_input"
    );
}
