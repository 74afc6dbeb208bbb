//! CrossEntropyLoss on the GPU against the float64 reference and PyTorch's public cases: every
//! option and reduction, odd shapes, C from 2 to 131072, [N, C, d1, d2] with ignore_index, the
//! windowed path, gradient options, finite differences, typed errors, and a 4096 x 32768 batch
//! that allocates no N x C scratch.
mod common;

use deepml::reference;
use deepml::*;
use rand::Rng;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

fn classes_of(shape: &[usize]) -> usize {
    if shape.len() == 1 {
        shape[0]
    } else {
        shape[1]
    }
}

/// Runs the loss; returns (loss, gradient) read back.
fn gpu(
    ctx: &LossContext,
    cfg: &CrossEntropyLoss,
    x: &[f32],
    xs: &[usize],
    y: &[i64],
    ys: &[usize],
) -> (Vec<f32>, Vec<f32>) {
    let tx = ctx.upload(x, xs).unwrap();
    let ty = ctx.upload_labels_i64(y, ys).unwrap();
    let out = cfg.compute(ctx, &[&tx, &ty]).unwrap();
    assert_eq!(
        out.loss.shape(),
        if cfg.reduction == Reduction::None {
            ys
        } else {
            &[]
        }
    );
    (ctx.read(&out.loss).unwrap(), out.grad(ctx, 0).unwrap())
}

fn targets(
    r: &mut rand::rngs::SmallRng,
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

#[allow(clippy::too_many_arguments)]
fn check(
    label: &str,
    ctx: &LossContext,
    cfg: &CrossEntropyLoss,
    x: &[f32],
    xs: &[usize],
    y: &[i64],
    ys: &[usize],
    tol: f64,
) {
    let want = reference::cross_entropy(cfg, &common::to64(x), xs, y, ys).unwrap();
    let (loss, grad) = gpu(ctx, cfg, x, xs, y, ys);
    common::assert_close(&format!("{label} loss"), &loss, &want.loss, tol, tol / 10.0);
    common::assert_close(
        &format!("{label} grad"),
        &grad,
        &want.grads[0],
        tol,
        tol / 10.0,
    );
}

#[test]
fn matches_the_reference_for_every_option() {
    let ctx = common::ctx();
    let mut r = common::rng(1);
    // Small C (a thread per row), medium C (32 threads), large C (a workgroup), [C] with a
    // scalar target, a single element, an odd 4-d shape.
    let layouts: [(&[usize], &[usize]); 8] = [
        (&[10, 6], &[10]),
        (&[2, 4, 3, 5], &[2, 3, 5]),
        (&[7], &[]),
        (&[1, 1], &[1]),
        (&[3, 5, 7, 11], &[3, 7, 11]),
        (&[37, 100], &[37]),
        (&[3, 40, 2, 3], &[3, 2, 3]),
        (&[5, 3001], &[5]),
    ];
    for (xs, ys) in layouts {
        let c = classes_of(xs);
        let x = common::uniform(&mut r, xs.iter().product(), -4.0, 4.0);
        let w = common::uniform(&mut r, c, 0.2, 2.5);
        for (ignore_index, every) in [(-100, 0), (255, 3)] {
            let y = targets(&mut r, ys.iter().product(), c, ignore_index, every);
            for weight in [None, Some(HostTensor::vector(w.clone()))] {
                for label_smoothing in [0.0, 0.3] {
                    for reduction in REDUCTIONS {
                        let cfg = CrossEntropyLoss {
                            weight: weight.clone(),
                            ignore_index,
                            reduction,
                            label_smoothing,
                        };
                        let label = format!(
                            "{xs:?} ignore {ignore_index} w {} ls {label_smoothing} {reduction:?}",
                            weight.is_some()
                        );
                        check(&label, ctx, &cfg, &x, xs, &y, ys, 2e-4);
                    }
                }
            }
        }
    }
}

/// A class-index TENSOR of public.json as i64.
fn case_tensor(v: &serde_json::Value) -> (Vec<usize>, Vec<f64>) {
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
        .map(|d| match d {
            serde_json::Value::String(s) if s == "NaN" => f64::NAN,
            serde_json::Value::String(s) if s == "Infinity" => f64::INFINITY,
            serde_json::Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
            d => d.as_f64().unwrap(),
        })
        .collect();
    (shape, data)
}

#[test]
fn public_pytorch_cases() {
    let ctx = common::ctx();
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/cases/public.json"
    ))
    .unwrap();
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut seen = 0;
    for case in file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["loss"] == "CrossEntropyLoss")
    {
        let name = case["name"].as_str().unwrap();
        let conf = &case["config"];
        let d = CrossEntropyLoss::default();
        let cfg = CrossEntropyLoss {
            weight: conf.get("weight").map(|w| {
                let (s, v) = case_tensor(w);
                HostTensor::new(v.iter().map(|&x| x as f32).collect(), s).unwrap()
            }),
            ignore_index: conf
                .get("ignore_index")
                .map_or(d.ignore_index, |v| v.as_i64().unwrap()),
            reduction: conf
                .get("reduction")
                .map_or(Ok(d.reduction), |v| Reduction::parse(v.as_str().unwrap()))
                .unwrap(),
            label_smoothing: conf
                .get("label_smoothing")
                .map_or(d.label_smoothing, |v| v.as_f64().unwrap()),
        };
        let (xs, x) = case_tensor(&case["inputs"]["input"]);
        let (ys, y) = case_tensor(&case["inputs"]["target"]);
        let x: Vec<f32> = x.iter().map(|&v| v as f32).collect();
        let y: Vec<i64> = y.iter().map(|&v| v as i64).collect();
        let exp = &case["expected"];
        let (rtol, atol) = (
            case["tolerance"]["rtol"].as_f64().unwrap(),
            case["tolerance"]["atol"].as_f64().unwrap(),
        );
        seen += 1;
        // As a caller with host labels does: the host check, then the GPU.
        let tx = ctx.upload(&x, &xs).unwrap();
        let ty = ctx.upload_labels_i64(&y, &ys).unwrap();
        let got = cfg
            .check_target_labels(&y, classes_of(&xs))
            .and_then(|_| cfg.compute(ctx, &[&tx, &ty]));
        if exp["status"] == "error" {
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(e.kind(), exp["kind"].as_str().unwrap(), "{name}: {e}");
            continue;
        }
        let out = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, want_loss) = case_tensor(&exp["loss"]);
        let (_, want_grad) = case_tensor(&exp["grads"]["input"]);
        common::assert_close(
            &format!("{name} loss"),
            &ctx.read(&out.loss).unwrap(),
            &want_loss,
            rtol,
            atol,
        );
        common::assert_close(
            &format!("{name} grad"),
            &out.grad(ctx, 0).unwrap(),
            &want_grad,
            rtol,
            atol,
        );
    }
    assert_eq!(seen, 11, "the public CrossEntropyLoss cases");
}

#[test]
fn two_classes_and_131072_classes() {
    let ctx = common::ctx();
    let mut r = common::rng(2);
    for (n, c) in [(1000usize, 2usize), (3, 131_072)] {
        let x = common::uniform(&mut r, n * c, -8.0, 8.0);
        let y = targets(&mut r, n, c, -100, 0);
        let w = common::uniform(&mut r, c, 0.5, 1.5);
        for (weight, ls, reduction) in [
            (None, 0.0, Reduction::Mean),
            (Some(HostTensor::vector(w)), 0.1, Reduction::None),
        ] {
            let cfg = CrossEntropyLoss {
                weight,
                label_smoothing: ls,
                reduction,
                ..Default::default()
            };
            check(
                &format!("[{n}, {c}] ls {ls}"),
                ctx,
                &cfg,
                &x,
                &[n, c],
                &y,
                &[n],
                2e-4,
            );
        }
    }
}

#[test]
fn segmentation_layout_with_ignore_index() {
    let ctx = common::ctx();
    let mut r = common::rng(3);
    let (xs, ys) = ([4usize, 19, 13, 17], [4usize, 13, 17]);
    let x = common::uniform(&mut r, xs.iter().product(), -5.0, 5.0);
    let y: Vec<i64> = (0..ys.iter().product::<usize>())
        .map(|i| if i % 5 == 0 { 255 } else { r.gen_range(0..19) })
        .collect();
    let w = common::uniform(&mut r, 19, 0.1, 3.0);
    for reduction in REDUCTIONS {
        let cfg = CrossEntropyLoss {
            weight: Some(HostTensor::vector(w.clone())),
            ignore_index: 255,
            reduction,
            label_smoothing: 0.1,
        };
        check(
            &format!("nchw {reduction:?}"),
            ctx,
            &cfg,
            &x,
            &xs,
            &y,
            &ys,
            2e-4,
        );
        let (_, grad) = gpu(ctx, &cfg, &x, &xs, &y, &ys);
        // An ignored pixel has exactly zero gradient over every class.
        let k = 13 * 17;
        for c in 0..19 {
            assert_eq!(grad[c * k], 0.0);
        }
    }
}

#[test]
fn gradient_accumulates_over_four_positions() {
    // The four-position path's gradient added to a tensor, each position once: held classes,
    // and beyond them the CPU kernels' swept blocks (of half a workgroup where a whole one would
    // leave CPU threads idle: one block per sample here), with both kernel choices and with
    // the losses reduced and kept (rows_reduce_q, rows_none_q).
    let mut r = common::rng(14);
    for cpu in [true, false] {
        let ctx = common::tuned_ctx(cpu);
        for (xs, ys) in [
            (&[2usize, 19, 12, 20][..], &[2usize, 12, 20][..]),
            (&[2, 40, 6, 8], &[2, 6, 8]),
            (&[1, 40, 64, 72], &[1, 64, 72]),
        ] {
            let c = classes_of(xs);
            let n: usize = xs.iter().product();
            let x = common::uniform(&mut r, n, -3.0, 3.0);
            let y = targets(&mut r, ys.iter().product(), c, -100, 5);
            let tx = ctx.upload(&x, xs).unwrap();
            let ty = ctx.upload_labels_i64(&y, ys).unwrap();
            for reduction in [Reduction::Mean, Reduction::None] {
                let cfg = CrossEntropyLoss {
                    reduction,
                    ..Default::default()
                };
                let base = cfg.compute(ctx, &[&tx, &ty]).unwrap().grad(ctx, 0).unwrap();
                assert!(base.iter().any(|&g| g.abs() > 1e-4));
                let start = common::uniform(&mut r, n, -1.0, 1.0);
                let acc = ctx.upload(&start, xs).unwrap();
                let opts = GradOpts {
                    scale: 2.0,
                    into: vec![Some(acc.clone())],
                    accumulate: true,
                };
                cfg.compute_with(ctx, &[&tx, &ty], &opts).unwrap();
                let got = ctx.read(&acc).unwrap();
                for (i, ((g, s), b)) in got.iter().zip(&start).zip(&base).enumerate() {
                    assert!(
                        (g - (s + 2.0 * b)).abs() <= 1e-6 * (1.0 + g.abs()),
                        "cpu {cpu} {xs:?} {reduction:?} [{i}]: {g} vs {s} + 2 {b}"
                    );
                }
            }
        }
    }
}

#[test]
fn spatial_sizes_a_multiple_of_four_every_option() {
    // [N, C, H, W] with H W a multiple of 4: the four-positions-per-thread path, at 2, 19 and
    // 64 classes, with a sample spanning several blocks of 1024 positions (36 x 40), and at two
    // classes with the CPU kernels' eight accesses per thread, two blocks of 8192 (96 x 100); class
    // weights, ignore_index, label smoothing and every reduction, against the float64 reference;
    // with the kernels tuned for CPUs (19 classes held per thread) and for GPUs (up to 16).
    for cpu in [true, false] {
        four_positions_every_option(common::tuned_ctx(cpu));
    }
}

fn four_positions_every_option(ctx: &LossContext) {
    let mut r = common::rng(11);
    let layouts: [(&[usize], &[usize]); 8] = [
        (&[3, 2, 36, 40], &[3, 36, 40]),
        (&[2, 2, 96, 100], &[2, 96, 100]),
        (&[2, 19, 12, 20], &[2, 12, 20]),
        (&[1, 64, 4, 9], &[1, 4, 9]),
        // Beyond the held classes: several samples, and samples over two tiles of the
        // class-by-class sweep (8 and 16 accesses per thread on a CPU adapter).
        (&[3, 40, 6, 8], &[3, 6, 8]),
        (&[2, 33, 72, 120], &[2, 72, 120]),
        (&[2, 33, 128, 136], &[2, 128, 136]),
        (&[5, 3, 4], &[5, 4]),
    ];
    for (xs, ys) in layouts {
        let c = classes_of(xs);
        let x = common::uniform(&mut r, xs.iter().product(), -6.0, 6.0);
        let w = common::uniform(&mut r, c, 0.2, 2.5);
        for (ignore_index, every) in [(-100, 0), (255, 3), (1, 0)] {
            let y = targets(&mut r, ys.iter().product(), c, ignore_index, every);
            for weight in [None, Some(HostTensor::vector(w.clone()))] {
                for label_smoothing in [0.0, 0.2] {
                    for reduction in REDUCTIONS {
                        let cfg = CrossEntropyLoss {
                            weight: weight.clone(),
                            ignore_index,
                            reduction,
                            label_smoothing,
                        };
                        let label = format!(
                            "{xs:?} ignore {ignore_index} w {} ls {label_smoothing} {reduction:?}",
                            weight.is_some()
                        );
                        check(&label, ctx, &cfg, &x, xs, &y, ys, 2e-4);
                    }
                }
            }
        }
    }
}

#[test]
fn every_target_ignored_and_extreme_logits() {
    let ctx = common::ctx();
    let x = [1.0f32, 2.0, 3.0, 4.0];
    for ls in [0.0, 0.1] {
        let cfg = CrossEntropyLoss {
            label_smoothing: ls,
            ..Default::default()
        };
        let (loss, grad) = gpu(ctx, &cfg, &x, &[2, 2], &[-100, -100], &[2]);
        assert!(loss[0].is_nan(), "mean of nothing is 0/0 = NaN, as PyTorch");
        assert_eq!(grad, vec![0.0; 4]);
    }
    let cfg = CrossEntropyLoss {
        reduction: Reduction::Sum,
        ..Default::default()
    };
    assert_eq!(
        gpu(ctx, &cfg, &x, &[2, 2], &[-100, -100], &[2]).0,
        vec![0.0]
    );

    let x = [
        200.0f32, -200.0, 50.0, -50.0, 0.0, -200.0, 200.0, 0.0, 50.0, -50.0,
    ];
    for y in 0..5 {
        let cfg = CrossEntropyLoss {
            label_smoothing: 0.2,
            reduction: Reduction::None,
            ..Default::default()
        };
        let (loss, grad) = gpu(ctx, &cfg, &x, &[2, 5], &[y, 4 - y], &[2]);
        assert!(loss.iter().chain(&grad).all(|v| v.is_finite()));
        check(
            &format!("extreme y {y}"),
            ctx,
            &cfg,
            &x,
            &[2, 5],
            &[y, 4 - y],
            &[2],
            1e-5,
        );
    }
}

#[test]
fn gradient_options() {
    let ctx = common::ctx();
    let mut r = common::rng(4);
    let (n, c) = (33, 70);
    let x = common::uniform(&mut r, n * c, -3.0, 3.0);
    let y = targets(&mut r, n, c, -100, 4);
    let cfg = CrossEntropyLoss {
        label_smoothing: 0.2,
        ..Default::default()
    };
    let tx = ctx.upload(&x, &[n, c]).unwrap();
    let ty = ctx.upload_labels_i64(&y, &[n]).unwrap();
    let base = cfg.compute(ctx, &[&tx, &ty]).unwrap().grad(ctx, 0).unwrap();
    assert!(base.iter().any(|&g| g.abs() > 1e-4));
    let scaled = cfg
        .compute_with(ctx, &[&tx, &ty], &GradOpts::scaled(-3.0))
        .unwrap()
        .grad(ctx, 0)
        .unwrap();
    for (s, b) in scaled.iter().zip(&base) {
        assert!((s + 3.0 * b).abs() <= 1e-6 * (1.0 + b.abs()), "{s} vs {b}");
    }
    let start = common::uniform(&mut r, n * c, -1.0, 1.0);
    let acc = ctx.upload(&start, &[n, c]).unwrap();
    let opts = GradOpts {
        scale: 2.0,
        into: vec![Some(acc.clone())],
        accumulate: true,
    };
    let out = cfg.compute_with(ctx, &[&tx, &ty], &opts).unwrap();
    assert!(out.grads[0].same_buffer(&acc));
    for ((g, s), b) in ctx.read(&acc).unwrap().iter().zip(&start).zip(&base) {
        assert!((g - (s + 2.0 * b)).abs() <= 1e-6 * (1.0 + g.abs()));
    }
    // `into` without accumulate overwrites.
    let opts = GradOpts {
        into: vec![Some(acc.clone())],
        ..Default::default()
    };
    cfg.compute_with(ctx, &[&tx, &ty], &opts).unwrap();
    assert_eq!(ctx.read(&acc).unwrap(), base);
}

#[test]
fn finite_differences_on_the_gpu() {
    let ctx = common::ctx();
    let mut r = common::rng(5);
    for (xs, ys, ls) in [
        (vec![6usize, 9], vec![6usize], 0.0),
        (vec![2, 5, 3, 2], vec![2, 3, 2], 0.3),
        (vec![3, 3000], vec![3], 0.2),
    ] {
        let c = classes_of(&xs);
        let x = common::uniform(&mut r, xs.iter().product(), -2.0, 2.0);
        let y = targets(&mut r, ys.iter().product(), c, 255, 4);
        let w = common::uniform(&mut r, c, 0.5, 2.0);
        let cfg = CrossEntropyLoss {
            weight: Some(HostTensor::vector(w)),
            ignore_index: 255,
            label_smoothing: ls,
            ..Default::default()
        };
        let (_, grad) = gpu(ctx, &cfg, &x, &xs, &y, &ys);
        let loss_at = |x: &[f32]| gpu(ctx, &cfg, x, &xs, &y, &ys).0[0] as f64;
        // The target logit of position 0 and a few others.
        let k: usize = xs[2..].iter().product();
        let coords = [y[0].max(0) as usize * k, 1, x.len() / 2, x.len() - 1];
        for &i in &coords {
            let h = 1e-2f32;
            let (mut xp, mut xm) = (x.clone(), x.clone());
            xp[i] += h;
            xm[i] -= h;
            let fd = (loss_at(&xp) - loss_at(&xm)) / (2.0 * h as f64);
            let g = grad[i] as f64;
            assert!(
                (fd - g).abs() <= 2e-3 * g.abs() + 2e-4,
                "{xs:?} coordinate {i}: finite difference {fd:e}, gradient {g:e}"
            );
        }
    }
}

#[test]
fn windowed_path_matches_the_plain_one() {
    // Bindings of 4 KiB: [200, 10] takes several windows, [20, 3, 8, 8] one sample of 768
    // bytes each five per window, and [n, 3000] (labels bound whole) a window per sample, or
    // per aligned step of samples where the adapter's alignment asks for more (SwiftShader).
    let small = common::windowed_ctx(4096);
    let big = common::windowed_ctx_units(12_000, 1);
    let rows = (2 * common::aligned_units(12_000) + 1).max(7) as usize;
    let plain = common::ctx();
    let mut r = common::rng(6);
    let layouts: [(&[usize], &[usize], &LossContext); 3] = [
        (&[200, 10], &[200], &small),
        (&[20, 3, 8, 8], &[20, 8, 8], &small),
        (&[rows, 3000], &[rows], &big),
    ];
    for (xs, ys, wctx) in layouts {
        let c = classes_of(xs);
        let x = common::uniform(&mut r, xs.iter().product(), -3.0, 3.0);
        let y = targets(&mut r, ys.iter().product(), c, 255, 7);
        for reduction in REDUCTIONS {
            let cfg = CrossEntropyLoss {
                weight: Some(HostTensor::vector(common::uniform(&mut r, c, 0.5, 2.0))),
                ignore_index: 255,
                reduction,
                label_smoothing: 0.1,
            };
            let (l1, g1) = gpu(plain, &cfg, &x, xs, &y, ys);
            let (l2, g2) = gpu(wctx, &cfg, &x, xs, &y, ys);
            // Within rounding, not bit for bit: the windows sum the weights and the losses
            // in another order than one pass does (equal on lavapipe, not on SwiftShader).
            let scale = g1.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs() + 1e-6 * scale,
                    "{xs:?} {reduction:?}: windowed gradient [{i}] {b} against {a}"
                );
            }
            let want = reference::cross_entropy(&cfg, &common::to64(&x), xs, &y, ys).unwrap();
            common::assert_close(
                &format!("windowed {xs:?} {reduction:?}"),
                &l2,
                &want.loss,
                2e-4,
                2e-5,
            );
            if reduction == Reduction::None {
                common::assert_close(
                    &format!("windowed {xs:?} {reduction:?}"),
                    &l2,
                    &common::to64(&l1),
                    1e-5,
                    1e-6,
                );
            }
        }
    }
}

#[test]
fn results_are_bit_identical_from_run_to_run() {
    let ctx = common::ctx();
    let mut r = common::rng(7);
    let (n, c) = (300, 500);
    let x = common::uniform(&mut r, n * c, -3.0, 3.0);
    let y = targets(&mut r, n, c, -100, 5);
    let cfg = CrossEntropyLoss {
        label_smoothing: 0.1,
        ..Default::default()
    };
    let first = gpu(ctx, &cfg, &x, &[n, c], &y, &[n]);
    for _ in 0..2 {
        let again = gpu(ctx, &cfg, &x, &[n, c], &y, &[n]);
        assert_eq!(first.0[0].to_bits(), again.0[0].to_bits());
        assert!(first.1 == again.1);
    }
}

#[test]
fn typed_errors() {
    let ctx = common::ctx();
    let x = ctx.upload(&[0.5; 12], &[4, 3]).unwrap();
    let y = ctx.upload_labels(&[0, 1, 2, 1], &[4]).unwrap();
    let kind = |r: Result<LossOutput>| r.expect_err("an error").kind();
    let d = CrossEntropyLoss::default();

    // Labels out of range, checked on the host.
    assert_eq!(
        d.check_target_labels(&[0, 3, 1, 1], 3).unwrap_err().kind(),
        "invalid_input"
    );
    assert_eq!(
        d.check_target_labels(&[0, -1, 1, 1], 3).unwrap_err().kind(),
        "invalid_input"
    );
    assert!(d.check_target_labels(&[0, -100, 2, 1], 3).is_ok());
    // Config domains.
    for ls in [1.5, -0.1, f64::NAN] {
        let cfg = CrossEntropyLoss {
            label_smoothing: ls,
            ..Default::default()
        };
        assert_eq!(kind(cfg.compute(ctx, &[&x, &y])), "invalid_config");
    }
    // Weight of the wrong length.
    let cfg = CrossEntropyLoss {
        weight: Some(HostTensor::vector(vec![1.0; 4])),
        ..Default::default()
    };
    assert_eq!(kind(cfg.compute(ctx, &[&x, &y])), "invalid_input");
    // Shapes.
    let y3 = ctx.upload_labels(&[0, 1, 2], &[3]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&x, &y3])), "invalid_input");
    let x4 = ctx.upload(&[0.5; 24], &[2, 3, 4]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&x4, &y])), "invalid_input");
    let scalar = ctx.upload(&[0.5], &[]).unwrap();
    let y0 = ctx.upload_labels(&[0], &[]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&scalar, &y0])), "invalid_input");
    let vec3 = ctx.upload(&[0.5; 3], &[3]).unwrap();
    let y1 = ctx.upload_labels(&[0], &[1]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&vec3, &y1])), "invalid_input");
    // Empty batch.
    let xe = ctx.upload(&[], &[0, 3]).unwrap();
    let ye = ctx.upload_labels(&[], &[0]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&xe, &ye])), "invalid_input");
    // Element types and arity.
    let yf = ctx.upload(&[0.0, 1.0, 2.0, 1.0], &[4]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&x, &yf])), "invalid_input");
    assert_eq!(kind(d.compute(ctx, &[&x])), "invalid_input");
    // A gradient tensor of the wrong shape.
    let bad = ctx.upload(&[0.0; 4], &[4]).unwrap();
    let opts = GradOpts {
        into: vec![Some(bad)],
        ..Default::default()
    };
    assert_eq!(kind(d.compute_with(ctx, &[&x, &y], &opts)), "invalid_input");
}

#[test]
fn out_of_range_labels_on_the_device_set_the_flag_and_write_nothing_out_of_bounds() {
    let ctx = common::ctx();
    let (n, c) = (4, 3);
    let x = ctx
        .upload(
            &[0.5, -1.0, 2.0, 0.1, 0.2, 0.3, 1.0, 1.0, 1.0, -2.0, 0.0, 2.0],
            &[n, c],
        )
        .unwrap();
    // The gradient lives in a buffer whose other elements must survive.
    let sentinel = ctx.upload(&[7.0; 24], &[24]).unwrap();
    let grad = Tensor::from_buffer(ctx, sentinel.buffer().clone(), 0, &[n, c], DType::F32).unwrap();
    for (labels, bad) in [
        (vec![0, 1, 2, -100], false),
        (vec![0, 3, 2, 1], true),
        (vec![-5, 1, 1_000_000, 1], true),
    ] {
        let y = ctx.upload_labels(&labels, &[n]).unwrap();
        for reduction in REDUCTIONS {
            let cfg = CrossEntropyLoss {
                reduction,
                ..Default::default()
            };
            let opts = GradOpts {
                into: vec![Some(grad.clone())],
                ..Default::default()
            };
            let out = cfg.compute_with(ctx, &[&x, &y], &opts).unwrap();
            // The device flag makes reads of this computation's results fail.
            match ctx.read(&out.loss) {
                Err(Error::LabelOutOfRange(m)) => {
                    assert!(bad && m.contains("CrossEntropyLoss"), "{m}")
                }
                Ok(_) => assert!(!bad, "{labels:?} {reduction:?}: no error"),
                Err(e) => panic!("{e}"),
            }
            assert_eq!(ctx.read(&out.grads[0]).is_err(), bad);
            // The values, through copies that do not carry the flag.
            let loss = ctx.read(&ctx.copy(&out.loss).unwrap()).unwrap();
            let all = ctx.read(&sentinel).unwrap();
            assert!(
                all[12..].iter().all(|&v| v == 7.0),
                "wrote past the gradient"
            );
            for (i, &l) in labels.iter().enumerate() {
                let row = &all[i * c..(i + 1) * c];
                if l == -100 || !(0..c as i32).contains(&l) {
                    assert!(row.iter().all(|&g| g == 0.0), "row {i}: {row:?}");
                    if reduction == Reduction::None {
                        assert_eq!(loss[i].is_nan(), l != -100);
                    }
                }
            }
            if bad && reduction != Reduction::None {
                assert!(loss[0].is_nan(), "a bad label makes the reduced loss NaN");
            } else if !bad {
                assert!(loss.iter().all(|v| v.is_finite()), "{loss:?}");
            }
        }
    }
}

#[test]
fn out_of_range_labels_in_the_four_position_path() {
    // [1, 3, 8]: two accesses of four positions; bad labels beside valid and ignored ones in
    // the same access.
    let ctx = common::ctx();
    let (c, k) = (3usize, 8usize);
    let mut r = common::rng(14);
    let xv = common::uniform(&mut r, c * k, -2.0, 2.0);
    let x = ctx.upload(&xv, &[1, c, k]).unwrap();
    let sentinel = ctx.upload(&[7.0; 32], &[32]).unwrap();
    let grad =
        Tensor::from_buffer(ctx, sentinel.buffer().clone(), 0, &[1, c, k], DType::F32).unwrap();
    let labels = vec![0, 3, -100, 2, -1, 1, 1, 0];
    let y = ctx.upload_labels(&labels, &[1, k]).unwrap();
    let cfg = CrossEntropyLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let opts = GradOpts {
        into: vec![Some(grad.clone())],
        ..Default::default()
    };
    let out = cfg.compute_with(ctx, &[&x, &y], &opts).unwrap();
    assert!(matches!(
        ctx.read(&out.loss),
        Err(Error::LabelOutOfRange(_))
    ));
    let loss = ctx.read(&ctx.copy(&out.loss).unwrap()).unwrap();
    let all = ctx.read(&sentinel).unwrap();
    assert!(
        all[c * k..].iter().all(|&v| v == 7.0),
        "wrote past the gradient"
    );
    // The valid positions against the reference (the others: zero gradient, NaN or 0 loss).
    let valid: Vec<i64> = labels
        .iter()
        .map(|&l| {
            if (0..c as i32).contains(&l) {
                l as i64
            } else {
                -100
            }
        })
        .collect();
    let want =
        reference::cross_entropy(&cfg, &common::to64(&xv), &[1, c, k], &valid, &[1, k]).unwrap();
    for (i, &l) in labels.iter().enumerate() {
        let g: Vec<f32> = (0..c).map(|ch| all[ch * k + i]).collect();
        if (0..c as i32).contains(&l) {
            assert!((loss[i] as f64 - want.loss[i]).abs() < 1e-5, "position {i}");
            for (ch, &gv) in g.iter().enumerate() {
                assert!((gv as f64 - want.grads[0][ch * k + i]).abs() < 1e-5);
            }
        } else {
            assert!(g.iter().all(|&v| v == 0.0), "position {i}: {g:?}");
            assert_eq!(loss[i].is_nan(), l != -100, "position {i}");
        }
    }
}

#[test]
fn shaders_validate() {
    for s in deepml::all_shader_variants()
        .iter()
        .filter(|s| s.name == "cross_entropy")
    {
        let module = naga::front::wgsl::parse_str(&s.compose())
            .unwrap_or_else(|e| panic!("{}: {e}", s.key()));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}: {e:?}", s.key()));
    }
}

/// log-sum-exp of a row in float64.
fn lse(row: &[f32]) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
    m + row.iter().map(|&v| (v as f64 - m).exp()).sum::<f64>().ln()
}

#[test]
fn batch_4096_by_32768_allocates_no_n_by_c_scratch() {
    // A fresh context, so that no pooled buffer hides an allocation.
    let ctx = LossContext::new().unwrap();
    let (n, c) = (4096usize, 32768usize);
    let mut r = common::rng(8);
    let x: Vec<f32> = (0..n * c).map(|_| r.gen_range(-4.0f32..4.0)).collect();
    let y = targets(&mut r, n, c, -100, 9);
    let w = common::uniform(&mut r, c, 0.5, 1.5);
    let cfg = CrossEntropyLoss {
        weight: Some(HostTensor::vector(w.clone())),
        label_smoothing: 0.1,
        ..Default::default()
    };
    let tx = ctx.upload(&x, &[n, c]).unwrap();
    let ty = ctx.upload_labels_i64(&y, &[n]).unwrap();
    let grad = ctx.empty(&[n, c], DType::F32).unwrap();
    let before = ctx.stats().allocated_bytes;
    let t0 = std::time::Instant::now();
    let opts = GradOpts {
        into: vec![Some(grad.clone())],
        ..Default::default()
    };
    let out = cfg.compute_with(&ctx, &[&tx, &ty], &opts).unwrap();
    ctx.synchronize().unwrap();
    let growth = ctx.stats().allocated_bytes - before;
    let loss = out.value(&ctx).unwrap() as f64;
    eprintln!(
        "[{n}, {c}]: {:?} on {}, allocated {growth} bytes during compute",
        t0.elapsed(),
        ctx.adapter().name
    );
    assert!(
        growth < 4 << 20,
        "compute allocated {growth} bytes (N x C is {} bytes)",
        n * c * 4
    );

    // The loss in float64: (1 - ls) w_y (lse - x_y) + ls / C sum_c w_c (lse - x_c), over W.
    let ls = 0.1;
    let wsum_x = |row: &[f32]| {
        row.iter()
            .zip(&w)
            .map(|(&v, &wc)| wc as f64 * v as f64)
            .sum::<f64>()
    };
    let wsum: f64 = w.iter().map(|&v| v as f64).sum();
    let (mut total, mut weight) = (0.0, 0.0);
    for (i, &t) in y.iter().enumerate() {
        if t == -100 {
            continue;
        }
        let row = &x[i * c..(i + 1) * c];
        let l = lse(row);
        let wy = w[t as usize] as f64;
        total += (1.0 - ls) * wy * (l - row[t as usize] as f64)
            + ls / c as f64 * (l * wsum - wsum_x(row));
        weight += wy;
    }
    let want = total / weight;
    assert!(
        (loss - want).abs() <= 1e-4 * want.abs(),
        "loss {loss}, want {want}"
    );

    // A sample of gradient rows against the reference (each row is its own [1, C] problem,
    // scaled by the batch's 1 / W); ignored rows are exactly 0.
    let g = ctx.read(&grad).unwrap();
    let one_row = CrossEntropyLoss {
        reduction: Reduction::Sum,
        ..cfg.clone()
    };
    for i in [0usize, 1, 2, 1000, 2047, 4095] {
        let row = &g[i * c..(i + 1) * c];
        if y[i] == -100 {
            assert!(row.iter().all(|&v| v == 0.0));
            continue;
        }
        let want = reference::cross_entropy(
            &one_row,
            &common::to64(&x[i * c..(i + 1) * c]),
            &[1, c],
            &[y[i]],
            &[1],
        )
        .unwrap();
        let want: Vec<f64> = want.grads[0].iter().map(|v| v / weight).collect();
        common::assert_close(&format!("row {i}"), row, &want, 1e-3, 1e-4);
    }
}
