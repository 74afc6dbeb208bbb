//! JaccardLoss and DiceLoss on the GPU against the float64 reference, finite differences,
//! extreme logits, GradOpts, the windowed path, typed errors and the public PyTorch cases.
mod common;

use common::{assert_close, ctx, rng, to64, uniform, windowed_ctx};
use deepml::reference::{dice, jaccard, RefOutput};
use deepml::{ChannelLayout, DiceLoss, GradOpts, JaccardLoss, Loss, LossContext};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

/// Loss value and gradient on the GPU.
fn gpu(
    ctx: &LossContext,
    loss: &dyn Loss,
    x: &[f32],
    t: &[f32],
    shape: &[usize],
) -> deepml::Result<(f32, Vec<f32>)> {
    let xt = ctx.upload(x, shape)?;
    let tt = ctx.upload(t, shape)?;
    let out = loss.compute(ctx, &[&xt, &tt])?;
    assert_eq!(out.loss.shape(), &[] as &[usize]);
    Ok((out.value(ctx)?, out.grad(ctx, 0)?))
}

fn one_hot(r: &mut SmallRng, shape: &[usize]) -> Vec<f32> {
    let l = ChannelLayout::of(shape);
    let mut t = vec![0.0; l.numel()];
    for n in 0..l.outer {
        for k in 0..l.inner {
            let c = r.gen_range(0..l.channels);
            t[(n * l.channels + c) * l.inner + k] = 1.0;
        }
    }
    t
}

fn soft_distribution(r: &mut SmallRng, shape: &[usize]) -> Vec<f32> {
    let l = ChannelLayout::of(shape);
    let mut t = uniform(r, l.numel(), 0.01, 1.0);
    for n in 0..l.outer {
        for k in 0..l.inner {
            let at = |c: usize| (n * l.channels + c) * l.inner + k;
            let total: f32 = (0..l.channels).map(|c| t[at(c)]).sum();
            for c in 0..l.channels {
                t[at(c)] /= total;
            }
        }
    }
    t
}

fn targets(r: &mut SmallRng, shape: &[usize], multiclass: bool, soft: bool) -> Vec<f32> {
    let n: usize = shape.iter().product();
    match (multiclass, soft) {
        (true, false) => one_hot(r, shape),
        (true, true) => soft_distribution(r, shape),
        (false, false) => (0..n).map(|_| f32::from(r.gen_bool(0.4) as u8)).collect(),
        (false, true) => uniform(r, n, 0.0, 1.0),
    }
}

/// The loss is `1 - r` in f32: compared to 2e-5 relative plus 1e-6 absolute.
fn check_loss(label: &str, got: f32, want: f64) {
    let err = (got as f64 - want).abs();
    assert!(
        err <= 2e-5 * want.abs() + 1e-6,
        "{label}: got {got}, want {want} (err {err:e})"
    );
}

fn check(label: &str, got: (f32, Vec<f32>), want: &RefOutput) {
    check_loss(&format!("{label} loss"), got.0, want.loss[0]);
    assert_close(&format!("{label} grad"), &got.1, &want.grads[0], 1e-3, 2e-5);
}

const SHAPES: [&[usize]; 8] = [
    &[2, 1, 5, 7],
    &[13],
    &[1],
    &[1, 1],
    &[3, 5, 7, 11],
    &[4, 3],
    &[2, 4, 5, 3],
    &[3, 2, 700],
];

#[test]
fn jaccard_and_dice_match_the_reference() {
    let ctx = ctx();
    let mut r = rng(1);
    let mut cases = 0;
    for shape in SHAPES {
        let n: usize = shape.iter().product();
        for multiclass in [false, true] {
            for per_class in [false, true] {
                if (multiclass || per_class) && shape.len() < 2 {
                    continue;
                }
                let x = uniform(&mut r, n, -4.0, 4.0);
                for soft in [false, true] {
                    let t = targets(&mut r, shape, multiclass, soft);
                    let (x64, t64) = (to64(&x), to64(&t));
                    let label =
                        format!("{shape:?} multi {multiclass} per_class {per_class} soft {soft}");
                    for eps in [1e-7, 0.5] {
                        let cfg = JaccardLoss {
                            is_multiclass: multiclass,
                            eps,
                            per_class,
                        };
                        let want = jaccard(&cfg, &x64, &t64, shape).unwrap();
                        check(
                            &format!("jaccard {label} eps {eps}"),
                            gpu(ctx, &cfg, &x, &t, shape).unwrap(),
                            &want,
                        );
                        cases += 1;
                    }
                    for (smooth, eps) in [(0.0, 1e-7), (1.0, 1e-7), (0.5, 0.0)] {
                        let cfg = DiceLoss {
                            is_multiclass: multiclass,
                            smooth,
                            eps,
                            per_class,
                        };
                        let want = dice(&cfg, &x64, &t64, shape).unwrap();
                        check(
                            &format!("dice {label} smooth {smooth} eps {eps}"),
                            gpu(ctx, &cfg, &x, &t, shape).unwrap(),
                            &want,
                        );
                        cases += 1;
                    }
                }
            }
        }
    }
    assert!(cases > 100, "only {cases} cases ran");
}

#[test]
fn per_class_at_nineteen_classes_every_path() {
    // Cityscapes' 19 classes per class and globally: spatial sizes a multiple of 4 (four pixels
    // per access; 72 x 64 spans two tiles of a sample) and not (one pixel per access), binary
    // and multiclass, one-hot and soft targets, against the float64 reference. 40 channels are
    // more than a thread holds (kernels' CC = 0 paths). With the kernels tuned for CPUs
    // (19 channels held, every thread's sums partials) and for GPUs (up to 16 held, subgroup
    // sums), 12 channels held by both.
    for cpu in [true, false] {
        nineteen_classes_every_path(common::tuned_ctx(cpu));
    }
}

fn nineteen_classes_every_path(ctx: &LossContext) {
    let mut r = rng(12);
    // [1, 19, 64, 272], [2, 40, 48, 176] and [1, 40, 64, 264]: the CPU kernels' swept
    // gradient (and beyond the held channels, per class, the swept statistics where 16) over a
    // sample in two workgroups, the second partly filled (16, 8 and 16 accesses per thread).
    let shapes: [&[usize]; 8] = [
        &[2, 19, 12, 20],
        &[2, 19, 11, 13],
        &[1, 3, 72, 64],
        &[2, 40, 6, 12],
        &[3, 12, 8, 4],
        &[1, 19, 64, 272],
        &[2, 40, 48, 176],
        &[1, 40, 64, 264],
    ];
    for shape in shapes {
        let n: usize = shape.iter().product();
        for multiclass in [false, true] {
            for per_class in [false, true] {
                let x = uniform(&mut r, n, -5.0, 5.0);
                for soft in [false, true] {
                    let t = targets(&mut r, shape, multiclass, soft);
                    let (x64, t64) = (to64(&x), to64(&t));
                    let label =
                        format!("{shape:?} multi {multiclass} per_class {per_class} soft {soft}");
                    let cfg = JaccardLoss {
                        is_multiclass: multiclass,
                        eps: 1e-7,
                        per_class,
                    };
                    let want = jaccard(&cfg, &x64, &t64, shape).unwrap();
                    check(
                        &format!("jaccard {label}"),
                        gpu(ctx, &cfg, &x, &t, shape).unwrap(),
                        &want,
                    );
                    let cfg = DiceLoss {
                        is_multiclass: multiclass,
                        smooth: 1.0,
                        eps: 1e-7,
                        per_class,
                    };
                    let want = dice(&cfg, &x64, &t64, shape).unwrap();
                    check(
                        &format!("dice {label}"),
                        gpu(ctx, &cfg, &x, &t, shape).unwrap(),
                        &want,
                    );
                }
            }
        }
    }
}

#[test]
fn four_pixel_path_in_windows_of_several_tiles() {
    // Samples of 3 x 72 x 64 (two tiles each, 55 KiB) in bindings of about two samples: the
    // four-pixel path's tiles, partials and per-pixel scratch across windows, against one
    // binding. 34 x 64 x 260 (beyond the held channels; with the CPU kernels the swept
    // statistics and gradient over 16 accesses per thread, two workgroups per sample).
    let mut r = rng(13);
    for shape in [[5usize, 3, 72, 64], [3, 34, 64, 260]] {
        in_windows(&mut r, shape);
    }
}

fn in_windows(r: &mut SmallRng, shape: [usize; 4]) {
    let wctx = common::windowed_ctx_units((shape[1] * shape[2] * shape[3] * 4) as u64, 2);
    let n: usize = shape.iter().product();
    let x = uniform(r, n, -4.0, 4.0);
    for multiclass in [false, true] {
        let t = targets(r, &shape, multiclass, true);
        for per_class in [false, true] {
            let cfg = DiceLoss {
                is_multiclass: multiclass,
                smooth: 0.5,
                eps: 1e-7,
                per_class,
            };
            let label = format!("{shape:?} multi {multiclass} per_class {per_class}");
            let plain = gpu(ctx(), &cfg, &x, &t, &shape).unwrap();
            let windowed = gpu(&wctx, &cfg, &x, &t, &shape).unwrap();
            assert_close(
                &format!("{label} loss"),
                &[windowed.0],
                &[plain.0 as f64],
                1e-5,
                0.0,
            );
            assert_close(
                &format!("{label} grad"),
                &windowed.1,
                &to64(&plain.1),
                1e-4,
                1e-6,
            );
            let want = dice(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
            check(&format!("windowed {label}"), windowed, &want);
        }
    }
}

#[test]
fn dice_denominator_clamped_at_eps() {
    // S + smooth < eps: the denominator is the constant eps, no gradient flows through it.
    let ctx = ctx();
    let mut r = rng(2);
    let shape = [2, 1, 3, 4];
    let x = uniform(&mut r, 24, -3.0, 3.0);
    let t = uniform(&mut r, 24, 0.0, 1.0);
    for per_class in [false, true] {
        let cfg = DiceLoss {
            eps: 1e3,
            smooth: 0.25,
            per_class,
            ..DiceLoss::default()
        };
        let want = dice(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
        check(
            "dice clamped",
            gpu(ctx, &cfg, &x, &t, &shape).unwrap(),
            &want,
        );
    }
}

/// Central differences of the GPU loss at a few coordinates against the GPU gradient.
fn finite_differences(
    label: &str,
    loss: &dyn Loss,
    x: &[f32],
    t: &[f32],
    shape: &[usize],
    coords: &[usize],
) {
    let ctx = ctx();
    let (_, g) = gpu(ctx, loss, x, t, shape).unwrap();
    let scale = g.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0, "{label}: zero gradient");
    // The f32 loss (about 0.5) is quantized at 6e-8: h = 0.1 keeps that noise near 3e-7 in
    // the difference quotient, and the O(h^2) truncation well under 1%. The coordinates of the
    // largest gradients are checked too, where the relative test is the sharpest.
    let h = 0.1f32;
    let mut order: Vec<usize> = (0..g.len()).collect();
    order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
    for &i in coords.iter().chain(&order[..8]) {
        let mut xp = x.to_vec();
        xp[i] = x[i] + h;
        let up = gpu(ctx, loss, &xp, t, shape).unwrap().0 as f64;
        xp[i] = x[i] - h;
        let down = gpu(ctx, loss, &xp, t, shape).unwrap().0 as f64;
        let fd = (up - down) / (2.0 * h as f64);
        let err = (fd - g[i] as f64).abs();
        let tol = 0.01 * (g[i] as f64).abs() + 1e-3 * scale as f64;
        assert!(
            err <= tol,
            "{label}[{i}]: finite difference {fd:e}, gradient {:e} (err {err:e} > {tol:e})",
            g[i]
        );
    }
}

#[test]
fn finite_differences_through_the_channel_softmax() {
    let mut r = rng(3);
    let shape = [3, 5, 7, 11];
    let n = 3 * 5 * 7 * 11;
    let x = uniform(&mut r, n, -3.0, 3.0);
    let t = one_hot(&mut r, &shape);
    let mut coords: Vec<usize> = (0..6).map(|_| r.gen_range(0..n)).collect();
    coords.extend([0, n - 1]);
    for per_class in [false, true] {
        let cfg = JaccardLoss {
            is_multiclass: true,
            eps: 1e-7,
            per_class,
        };
        finite_differences(
            &format!("jaccard per_class {per_class}"),
            &cfg,
            &x,
            &t,
            &shape,
            &coords,
        );
        let cfg = DiceLoss {
            is_multiclass: true,
            smooth: 1.0,
            eps: 1e-7,
            per_class,
        };
        finite_differences(
            &format!("dice per_class {per_class}"),
            &cfg,
            &x,
            &t,
            &shape,
            &coords,
        );
    }
    // Binary per class, for the sigmoid path.
    let t: Vec<f32> = uniform(&mut r, n, 0.0, 1.0);
    let cfg = JaccardLoss {
        is_multiclass: false,
        eps: 1e-7,
        per_class: true,
    };
    finite_differences("jaccard binary per_class", &cfg, &x, &t, &shape, &coords);
}

#[test]
fn saturated_logits_stay_finite() {
    let ctx = ctx();
    let mut r = rng(4);
    let shape = [2, 3, 4, 5];
    let n = 120;
    let picks = [200.0f32, -200.0, 50.0, -50.0];
    let x: Vec<f32> = (0..n)
        .map(|i| {
            if i % 3 == 2 {
                r.gen_range(-2.0..2.0)
            } else {
                picks[r.gen_range(0..4)]
            }
        })
        .collect();
    for multiclass in [false, true] {
        for per_class in [false, true] {
            let t = targets(&mut r, &shape, multiclass, false);
            let (x64, t64) = (to64(&x), to64(&t));
            let cfg = JaccardLoss {
                is_multiclass: multiclass,
                eps: 1e-7,
                per_class,
            };
            let got = gpu(ctx, &cfg, &x, &t, &shape).unwrap();
            assert!(
                got.0.is_finite() && got.1.iter().all(|g| g.is_finite()),
                "jaccard {multiclass} {per_class}"
            );
            check(
                &format!("jaccard extreme {multiclass} {per_class}"),
                got,
                &jaccard(&cfg, &x64, &t64, &shape).unwrap(),
            );
            let cfg = DiceLoss {
                is_multiclass: multiclass,
                per_class,
                ..DiceLoss::default()
            };
            let got = gpu(ctx, &cfg, &x, &t, &shape).unwrap();
            assert!(
                got.0.is_finite() && got.1.iter().all(|g| g.is_finite()),
                "dice {multiclass} {per_class}"
            );
            check(
                &format!("dice extreme {multiclass} {per_class}"),
                got,
                &dice(&cfg, &x64, &t64, &shape).unwrap(),
            );
        }
    }
    // Every logit saturated, all-zero target: loss 1, gradient exactly 0.
    let x: Vec<f32> = (0..n)
        .map(|i| if i % 2 == 0 { 200.0 } else { -200.0 })
        .collect();
    let (l, g) = gpu(ctx, &JaccardLoss::new(true), &x, &vec![0.0; n], &shape).unwrap();
    assert_eq!(l, 1.0);
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn grad_opts_scale_into_and_accumulate() {
    // Per class and global, through the softmax: three channels (the gradient from the held
    // channels again, multi_grad), six held and forty (from the per-pixel record: with the CPU
    // kernels swept_grad, over a sample in two workgroups and a part), with both kernel choices.
    let mut r = rng(5);
    for cpu in [true, false] {
        let ctx = common::tuned_ctx(cpu);
        for shape in [
            [2usize, 3, 4, 5],
            [2, 6, 4, 8],
            [2, 40, 4, 8],
            [1, 6, 72, 244],
        ] {
            for per_class in [true, false] {
                let label = format!("cpu {cpu} {shape:?} per_class {per_class}");
                scale_into_and_accumulate(ctx, &mut r, &shape, per_class, &label);
            }
        }
    }
}

fn scale_into_and_accumulate(
    ctx: &LossContext,
    r: &mut SmallRng,
    shape: &[usize],
    per_class: bool,
    label: &str,
) {
    let n: usize = shape.iter().product();
    let x = uniform(r, n, -2.0, 2.0);
    let t = one_hot(r, shape);
    let cfg = JaccardLoss {
        is_multiclass: true,
        eps: 1e-7,
        per_class,
    };
    let want = jaccard(&cfg, &to64(&x), &to64(&t), shape).unwrap();
    let xt = ctx.upload(&x, shape).unwrap();
    let tt = ctx.upload(&t, shape).unwrap();
    let base = uniform(r, n, -1.0, 1.0);
    let into = ctx.upload(&base, shape).unwrap();
    let opts = GradOpts {
        scale: -2.5,
        into: vec![Some(into.clone())],
        accumulate: true,
    };
    let out = cfg.compute_with(ctx, &[&xt, &tt], &opts).unwrap();
    assert!(out.grads[0].same_buffer(&into));
    let expect: Vec<f64> = base
        .iter()
        .zip(&want.grads[0])
        .map(|(&b, &g)| b as f64 - 2.5 * g)
        .collect();
    assert_close(
        &format!("{label} accumulated"),
        &ctx.read(&into).unwrap(),
        &expect,
        1e-3,
        2e-5,
    );
    // Overwrite (no accumulate) into the same tensor, scaled.
    let opts = GradOpts {
        scale: 3.0,
        into: vec![Some(into.clone())],
        accumulate: false,
    };
    let out = cfg.compute_with(ctx, &[&xt, &tt], &opts).unwrap();
    let expect: Vec<f64> = want.grads[0].iter().map(|g| 3.0 * g).collect();
    assert_close(
        &format!("{label} scaled"),
        &out.grad(ctx, 0).unwrap(),
        &expect,
        1e-3,
        2e-5,
    );
    assert_close(
        &format!("{label} loss unscaled"),
        &[out.value(ctx).unwrap()],
        &want.loss,
        2e-5,
        0.0,
    );
}

#[test]
fn grad_opts_accumulate_needs_a_tensor() {
    let ctx = ctx();
    let shape = [2, 3, 4, 5];
    let mut r = rng(6);
    let x = uniform(&mut r, 120, -2.0, 2.0);
    let t = one_hot(&mut r, &shape);
    let cfg = JaccardLoss {
        is_multiclass: true,
        eps: 1e-7,
        per_class: true,
    };
    let xt = ctx.upload(&x, &shape).unwrap();
    let tt = ctx.upload(&t, &shape).unwrap();
    // Accumulate without a tensor is refused.
    let opts = GradOpts {
        accumulate: true,
        ..Default::default()
    };
    assert_eq!(
        cfg.compute_with(ctx, &[&xt, &tt], &opts)
            .err()
            .unwrap()
            .kind(),
        "invalid_input"
    );
}

#[test]
fn windowed_path_matches_the_plain_one() {
    // 16 KiB bindings: binary global in element windows of 4096 (one tile), the others in
    // windows of 16 samples of 4 x 8 x 8 (1024 bytes each).
    let wctx = windowed_ctx(16384);
    let mut r = rng(6);
    let shape = [40, 4, 8, 8];
    let n = 10240;
    let x = uniform(&mut r, n, -3.0, 3.0);
    for multiclass in [false, true] {
        let t = targets(&mut r, &shape, multiclass, true);
        for per_class in [false, true] {
            let losses: [Box<dyn Loss>; 2] = [
                Box::new(JaccardLoss {
                    is_multiclass: multiclass,
                    eps: 1e-7,
                    per_class,
                }),
                Box::new(DiceLoss {
                    is_multiclass: multiclass,
                    smooth: 0.5,
                    eps: 1e-7,
                    per_class,
                }),
            ];
            for loss in &losses {
                let label = format!("{} multi {multiclass} per_class {per_class}", loss.name());
                let plain = gpu(ctx(), loss.as_ref(), &x, &t, &shape).unwrap();
                let windowed = gpu(&wctx, loss.as_ref(), &x, &t, &shape).unwrap();
                assert_close(
                    &format!("{label} loss"),
                    &[windowed.0],
                    &[plain.0 as f64],
                    1e-5,
                    0.0,
                );
                assert_close(
                    &format!("{label} grad"),
                    &windowed.1,
                    &to64(&plain.1),
                    1e-4,
                    1e-6,
                );
            }
        }
    }
    // A sample larger than one binding is a typed error, not a panic.
    let shape = [1, 4, 64, 64];
    let x = vec![0.5; 16384];
    let err = gpu(&wctx, &JaccardLoss::new(true), &x, &x, &shape).unwrap_err();
    assert_eq!(err.kind(), "too_large", "{err}");
}

#[test]
fn deterministic_run_to_run() {
    let ctx = ctx();
    let mut r = rng(7);
    let shape = [3, 5, 7, 11];
    let x = uniform(&mut r, 1155, -3.0, 3.0);
    let t = one_hot(&mut r, &shape);
    let cfg = DiceLoss {
        is_multiclass: true,
        per_class: true,
        ..DiceLoss::default()
    };
    let a = gpu(ctx, &cfg, &x, &t, &shape).unwrap();
    let b = gpu(ctx, &cfg, &x, &t, &shape).unwrap();
    assert_eq!(a.0.to_bits(), b.0.to_bits());
    assert!(a
        .1
        .iter()
        .zip(&b.1)
        .all(|(p, q)| p.to_bits() == q.to_bits()));
}

#[test]
fn typed_errors() {
    let ctx = ctx();
    let a = ctx.upload(&[0.0; 24], &[2, 3, 4]).unwrap();
    let b = ctx.upload(&[0.0; 24], &[2, 4, 3]).unwrap();
    let flat = ctx.upload(&[0.0; 6], &[6]).unwrap();
    let kind =
        |l: &dyn Loss, i: &[&deepml::Tensor]| l.compute(ctx, i).expect_err("must fail").kind();
    // Target shape not matching.
    assert_eq!(kind(&JaccardLoss::default(), &[&a, &b]), "invalid_input");
    assert_eq!(kind(&DiceLoss::new(true), &[&a, &b]), "invalid_input");
    // Negative or non-finite parameters.
    assert_eq!(
        kind(
            &JaccardLoss {
                eps: -1e-7,
                ..JaccardLoss::default()
            },
            &[&a, &a]
        ),
        "invalid_config"
    );
    assert_eq!(
        kind(
            &DiceLoss {
                eps: -1e-7,
                ..DiceLoss::default()
            },
            &[&a, &a]
        ),
        "invalid_config"
    );
    assert_eq!(
        kind(
            &DiceLoss {
                smooth: f64::NAN,
                ..DiceLoss::default()
            },
            &[&a, &a]
        ),
        "invalid_config"
    );
    // Multiclass or per_class without a channel dimension.
    assert_eq!(
        kind(&JaccardLoss::new(true), &[&flat, &flat]),
        "invalid_input"
    );
    assert_eq!(
        kind(
            &DiceLoss {
                per_class: true,
                ..DiceLoss::default()
            },
            &[&flat, &flat]
        ),
        "invalid_input"
    );
    // Empty input, wrong dtype, wrong arity.
    let empty = ctx.upload(&[], &[0, 3]).unwrap();
    assert_eq!(
        kind(&JaccardLoss::default(), &[&empty, &empty]),
        "invalid_input"
    );
    let labels = ctx.upload_labels(&[0; 24], &[2, 3, 4]).unwrap();
    assert_eq!(
        kind(&JaccardLoss::default(), &[&a, &labels]),
        "invalid_input"
    );
    assert_eq!(kind(&DiceLoss::default(), &[&a]), "invalid_input");
}

// ---------------------------------------------------------------------------------------------
// The public PyTorch cases.

fn tensor(v: &Value) -> (Vec<usize>, Vec<f64>) {
    let shape = v["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let data = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| match x {
            Value::String(s) => match s.as_str() {
                "NaN" => f64::NAN,
                "Infinity" => f64::INFINITY,
                _ => f64::NEG_INFINITY,
            },
            _ => x.as_f64().unwrap(),
        })
        .collect();
    (shape, data)
}

/// `|got - exp| <= rtol |exp| + atol max|exp|`.
fn within(label: &str, got: &[f32], want: &[f64], tol: &Value) {
    let (rtol, atol) = (tol["rtol"].as_f64().unwrap(), tol["atol"].as_f64().unwrap());
    assert_close(label, got, want, rtol, atol);
}

#[test]
fn public_cases() {
    let ctx = ctx();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cases/public.json"
    ))
    .unwrap();
    let file: Value = serde_json::from_str(&text).unwrap();
    let mut ran = 0;
    for case in file["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let c = &case["config"];
        let loss: Box<dyn Loss> = match case["loss"].as_str().unwrap() {
            "JaccardLoss" => Box::new(JaccardLoss {
                is_multiclass: c["is_multiclass"].as_bool().unwrap_or(false),
                eps: c["eps"].as_f64().unwrap_or(1e-7),
                per_class: c["per_class"].as_bool().unwrap_or(false),
            }),
            "DiceLoss" => Box::new(DiceLoss {
                is_multiclass: c["is_multiclass"].as_bool().unwrap_or(false),
                smooth: c["smooth"].as_f64().unwrap_or(0.0),
                eps: c["eps"].as_f64().unwrap_or(1e-7),
                per_class: c["per_class"].as_bool().unwrap_or(false),
            }),
            _ => continue,
        };
        let (xs, x) = tensor(&case["inputs"]["output"]);
        let (ts, t) = (
            tensor(&case["inputs"]["target"]).0,
            tensor(&case["inputs"]["target"]).1,
        );
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let t: Vec<f32> = t.iter().map(|&v| v as f32).collect();
        let xt = ctx.upload(&x, &xs).unwrap();
        let tt = ctx.upload(&t, &ts).unwrap();
        let got = loss.compute(ctx, &[&xt, &tt]);
        let exp = &case["expected"];
        if exp["status"] == "error" {
            let err = got
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(err.kind(), exp["kind"].as_str().unwrap(), "{name}: {err}");
        } else {
            let out = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let (_, want_loss) = tensor(&exp["loss"]);
            let (_, want_grad) = tensor(&exp["grads"]["output"]);
            within(
                &format!("{name} loss"),
                &[out.value(ctx).unwrap()],
                &want_loss,
                &case["tolerance"],
            );
            within(
                &format!("{name} grad"),
                &out.grad(ctx, 0).unwrap(),
                &want_grad,
                &case["tolerance"],
            );
        }
        ran += 1;
    }
    assert_eq!(ran, 18, "Jaccard and Dice public cases");
}

#[test]
fn sixteen_million_binary_jaccard() {
    let ctx = ctx();
    let mut r = rng(8);
    let shape = [4, 1, 2048, 2048];
    let n = 4 * 2048 * 2048;
    let x = uniform(&mut r, n, -4.0, 4.0);
    let t: Vec<f32> = (0..n).map(|_| f32::from(r.gen_bool(0.3) as u8)).collect();
    for per_class in [false, true] {
        let cfg = JaccardLoss {
            per_class,
            ..JaccardLoss::default()
        };
        let (loss, grad) = gpu(ctx, &cfg, &x, &t, &shape).unwrap();
        let want = jaccard(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
        assert_close("16M jaccard loss", &[loss], &want.loss, 1e-5, 0.0);
        let idx: Vec<usize> = (0..4096)
            .map(|_| r.gen_range(0..n))
            .chain([0, n - 1])
            .collect();
        let got: Vec<f32> = idx.iter().map(|&i| grad[i]).collect();
        let exp: Vec<f64> = idx.iter().map(|&i| want.grads[0][i]).collect();
        assert_close("16M jaccard grad sample", &got, &exp, 1e-4, 1e-6);
        let sum: f64 = grad.iter().map(|&g| g as f64).sum();
        let want_sum: f64 = want.grads[0].iter().sum();
        assert!(
            (sum - want_sum).abs() <= 1e-4 * want.grads[0].iter().map(|g| g.abs()).sum::<f64>(),
            "grad sum {sum} vs {want_sum}"
        );
    }
}
