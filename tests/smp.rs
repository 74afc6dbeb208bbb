//! FocalLoss and TverskyLoss (segmentation_models_pytorch's semantics) on the GPU against the
//! float64 reference on fresh random inputs, the reference against finite differences,
//! GradOpts, the windowed path, f16, determinism and typed errors. The public smp cases run in
//! the conformance check (`deepml check`, tests/cli.rs).
mod common;

use common::{assert_close, ctx, rng, to64, uniform, windowed_ctx_units};
use deepml::reference::{focal, tversky, RefOutput};
use deepml::{
    DType, Error, FocalLoss, GradOpts, Loss, LossContext, Reduction, SmpMode, Tensor, TverskyLoss,
};
use rand::rngs::SmallRng;
use rand::Rng;

/// Random inputs of `mode`: logits `[n, c, h, w]` and targets (floats, or class indices with
/// about a tenth of them `ignore` where given).
struct Inputs {
    x: Vec<f32>,
    x_shape: Vec<usize>,
    y: Vec<f32>,
    y_shape: Vec<usize>,
}

fn inputs(r: &mut SmallRng, mode: SmpMode, dims: [usize; 4], ignore: Option<i64>) -> Inputs {
    let [n, c, h, w] = dims;
    let x_shape = vec![n, c, h, w];
    let x = uniform(r, n * c * h * w, -5.0, 5.0);
    let (y, y_shape) = match mode {
        SmpMode::Multiclass => {
            let y = (0..n * h * w)
                .map(|_| match ignore {
                    Some(v) if r.gen_bool(0.1) => v as f32,
                    _ => r.gen_range(0..c) as f32,
                })
                .collect();
            (y, vec![n, h, w])
        }
        _ => {
            let y = (0..n * c * h * w)
                .map(|_| match ignore {
                    Some(v) if r.gen_bool(0.1) => v as f32,
                    _ => r.gen_bool(0.4) as u8 as f32,
                })
                .collect();
            (y, x_shape.clone())
        }
    };
    Inputs {
        x,
        x_shape,
        y,
        y_shape,
    }
}

fn upload(ctx: &LossContext, mode: SmpMode, i: &Inputs) -> (Tensor, Tensor) {
    let x = ctx.upload(&i.x, &i.x_shape).unwrap();
    let y = if mode == SmpMode::Multiclass {
        let l: Vec<i32> = i.y.iter().map(|&v| v as i32).collect();
        ctx.upload_labels(&l, &i.y_shape).unwrap()
    } else {
        ctx.upload(&i.y, &i.y_shape).unwrap()
    };
    (x, y)
}

fn gpu(ctx: &LossContext, loss: &dyn Loss, mode: SmpMode, i: &Inputs) -> (Vec<f32>, Vec<f32>) {
    let (x, y) = upload(ctx, mode, i);
    let out = loss.compute(ctx, &[&x, &y]).unwrap();
    (ctx.read(&out.loss).unwrap(), out.grad(ctx, 0).unwrap())
}

fn check(label: &str, got: &(Vec<f32>, Vec<f32>), want: &RefOutput) {
    assert_close(&format!("{label} loss"), &got.0, &want.loss, 2e-5, 1e-6);
    assert_close(&format!("{label} grad"), &got.1, &want.grads[0], 1e-3, 1e-5);
}

const DIMS: [[usize; 4]; 5] = [
    [2, 4, 5, 7],
    [1, 19, 9, 13],
    [3, 2, 16, 16],
    [2, 1, 33, 17],
    [1, 3, 1, 1],
];

#[test]
fn focal_matches_the_reference() {
    // With the kernels tuned for CPUs (runs of 8 threads over a tile) and for GPUs.
    for cpu in [true, false] {
        focal_against_the_reference(common::tuned_ctx(cpu));
    }
}

fn focal_against_the_reference(ctx: &LossContext) {
    let mut r = rng(101);
    let mut n = 0;
    for mode in [SmpMode::Binary, SmpMode::Multiclass, SmpMode::Multilabel] {
        for dims in DIMS {
            if mode == SmpMode::Binary && dims[1] != 1 && r.gen_bool(0.5) {
                continue;
            }
            for _ in 0..3 {
                let reduction =
                    [Reduction::Mean, Reduction::Sum, Reduction::None][r.gen_range(0..3)];
                let ignore = (reduction != Reduction::None && r.gen_bool(0.5)).then_some(255);
                let cfg = FocalLoss {
                    mode,
                    alpha: r.gen_bool(0.5).then(|| r.gen_range(0.0..1.0)),
                    gamma: [0.0, 0.5, 1.0, 2.0, 3.0][r.gen_range(0..5)],
                    ignore_index: ignore,
                    reduction,
                    normalized: r.gen_bool(0.4),
                };
                let i = inputs(&mut r, mode, dims, ignore);
                let want = focal(&cfg, &to64(&i.x), &i.x_shape, &to64(&i.y), &i.y_shape).unwrap();
                let got = gpu(ctx, &cfg, mode, &i);
                check(&format!("{cfg:?} {dims:?}"), &got, &want);
                n += 1;
            }
        }
    }
    assert!(n > 30);
}

#[test]
fn tversky_matches_the_reference() {
    for cpu in [true, false] {
        tversky_against_the_reference(common::tuned_ctx(cpu));
    }
}

fn tversky_against_the_reference(ctx: &LossContext) {
    let mut r = rng(202);
    for mode in [SmpMode::Binary, SmpMode::Multiclass, SmpMode::Multilabel] {
        for dims in DIMS {
            let dims = if mode == SmpMode::Binary {
                [dims[0], 1, dims[2], dims[3]]
            } else {
                dims
            };
            for _ in 0..3 {
                let cfg = TverskyLoss {
                    mode,
                    alpha: r.gen_range(0.0..1.0),
                    beta: r.gen_range(0.0..1.0),
                    gamma: [0.5, 1.0, 0.75, 2.0][r.gen_range(0..4)],
                    smooth: [0.0, 1.0][r.gen_range(0..2)],
                    eps: 1e-7,
                };
                let i = inputs(&mut r, mode, dims, None);
                let want = tversky(&cfg, &to64(&i.x), &i.x_shape, &to64(&i.y), &i.y_shape).unwrap();
                let got = gpu(ctx, &cfg, mode, &i);
                check(&format!("{cfg:?} {dims:?}"), &got, &want);
            }
        }
    }
}

/// Central differences of the float64 reference (the oracle of the GPU tests) against its
/// analytic gradient, at every element of small random inputs.
#[test]
fn reference_gradients_match_finite_differences() {
    let mut r = rng(303);
    let fd_check = |label: &str, x: &[f64], g: &[f64], f: &dyn Fn(&[f64]) -> f64| {
        let h = 1e-6;
        for i in 0..x.len() {
            let mut xp = x.to_vec();
            xp[i] += h;
            let mut xm = x.to_vec();
            xm[i] -= h;
            let fd = (f(&xp) - f(&xm)) / (2.0 * h);
            let err = (fd - g[i]).abs();
            assert!(
                err <= 1e-6 + 1e-5 * fd.abs(),
                "{label}[{i}]: finite difference {fd:e}, gradient {:e}",
                g[i]
            );
        }
    };
    for mode in [SmpMode::Binary, SmpMode::Multiclass, SmpMode::Multilabel] {
        for trial in 0..6 {
            let dims = if mode == SmpMode::Binary {
                [2, 1, 3, 4]
            } else {
                [2, 3, 2, 3]
            };
            let ignore = (trial % 2 == 1).then_some(255);
            let i = inputs(&mut r, mode, dims, ignore);
            let (x, y) = (to64(&i.x), to64(&i.y));
            let cfg = FocalLoss {
                mode,
                alpha: (trial % 3 == 0).then_some(0.3),
                gamma: [0.0, 0.5, 2.0, 3.0, 1.0, 2.5][trial],
                ignore_index: ignore,
                reduction: [Reduction::Mean, Reduction::Sum][trial % 2],
                normalized: trial >= 3,
            };
            let want = focal(&cfg, &x, &i.x_shape, &y, &i.y_shape).unwrap();
            let f = |xv: &[f64]| focal(&cfg, xv, &i.x_shape, &y, &i.y_shape).unwrap().loss[0];
            fd_check(&format!("{cfg:?}"), &x, &want.grads[0], &f);
            if ignore.is_none() {
                let cfg = TverskyLoss {
                    mode,
                    alpha: 0.3 + 0.1 * trial as f64,
                    beta: 0.7,
                    gamma: [1.0, 0.75, 2.0][trial % 3],
                    smooth: (trial % 2) as f64,
                    eps: 1e-7,
                };
                let want = tversky(&cfg, &x, &i.x_shape, &y, &i.y_shape).unwrap();
                let f = |xv: &[f64]| tversky(&cfg, xv, &i.x_shape, &y, &i.y_shape).unwrap().loss[0];
                fd_check(&format!("{cfg:?}"), &x, &want.grads[0], &f);
            }
        }
    }
}

/// The upstream scale, accumulation into the caller's gradient, and bit-identical reruns.
#[test]
fn grad_opts_and_determinism() {
    let ctx = ctx();
    let mut r = rng(404);
    let mode = SmpMode::Multiclass;
    let i = inputs(&mut r, mode, [2, 5, 12, 11], Some(255));
    let (x, y) = upload(ctx, mode, &i);
    let losses: [Box<dyn Loss>; 2] = [
        Box::new(FocalLoss {
            ignore_index: Some(255),
            normalized: true,
            ..FocalLoss::new(mode)
        }),
        Box::new(TverskyLoss::new(mode)),
    ];
    let i_clean = inputs(&mut r, mode, [2, 5, 12, 11], None);
    let (x2, y2) = upload(ctx, mode, &i_clean);
    for (k, loss) in losses.iter().enumerate() {
        let (x, y) = if k == 0 { (&x, &y) } else { (&x2, &y2) };
        let plain = loss.compute(ctx, &[x, y]).unwrap();
        let g = plain.grad(ctx, 0).unwrap();
        let again = loss.compute(ctx, &[x, y]).unwrap();
        assert_eq!(
            plain.value(ctx).unwrap().to_bits(),
            again.value(ctx).unwrap().to_bits()
        );
        assert_eq!(g, again.grad(ctx, 0).unwrap(), "{}: rerun", loss.name());
        let prior = uniform(&mut r, g.len(), -1.0, 1.0);
        let into = ctx.upload(&prior, x.shape()).unwrap();
        let opts = GradOpts {
            scale: 0.5,
            into: vec![Some(into.clone())],
            accumulate: true,
        };
        loss.compute_with(ctx, &[x, y], &opts).unwrap();
        let got = ctx.read(&into).unwrap();
        let want: Vec<f64> = prior
            .iter()
            .zip(&g)
            .map(|(&p, &g)| p as f64 + 0.5 * g as f64)
            .collect();
        assert_close(
            &format!("{} accumulate", loss.name()),
            &got,
            &want,
            1e-6,
            1e-7,
        );
    }
}

/// Inputs over several storage windows give the one-window result (within rounding: the
/// partial sums are added in another order).
#[test]
fn windowed_path() {
    let mut r = rng(505);
    for mode in [SmpMode::Binary, SmpMode::Multiclass, SmpMode::Multilabel] {
        // Binary windows hold whole tiles of 4096 elements.
        let dims = if mode == SmpMode::Binary {
            [3, 1, 50, 90]
        } else {
            [7, 3, 9, 10]
        };
        let sample_bytes = if mode == SmpMode::Binary {
            4
        } else {
            (dims[1] * dims[2] * dims[3] * 4) as u64
        };
        let units = if mode == SmpMode::Binary { 4096 } else { 2 };
        let wctx = windowed_ctx_units(sample_bytes, units);
        let ignore = (mode == SmpMode::Multiclass).then_some(255);
        let i = inputs(&mut r, mode, dims, ignore);
        let f = FocalLoss {
            ignore_index: ignore,
            normalized: true,
            alpha: Some(0.25),
            ..FocalLoss::new(mode)
        };
        let want = focal(&f, &to64(&i.x), &i.x_shape, &to64(&i.y), &i.y_shape).unwrap();
        check(&format!("windowed {f:?}"), &gpu(&wctx, &f, mode, &i), &want);
        let f_none = FocalLoss {
            reduction: Reduction::None,
            ..FocalLoss::new(mode)
        };
        let want = focal(&f_none, &to64(&i.x), &i.x_shape, &to64(&i.y), &i.y_shape);
        if let Ok(want) = want {
            check(
                &format!("windowed {f_none:?}"),
                &gpu(&wctx, &f_none, mode, &i),
                &want,
            );
        }
        if ignore.is_none() {
            let t = TverskyLoss::new(mode);
            let want = tversky(&t, &to64(&i.x), &i.x_shape, &to64(&i.y), &i.y_shape).unwrap();
            check(&format!("windowed {t:?}"), &gpu(&wctx, &t, mode, &i), &want);
        }
    }
}

#[test]
fn f16_inputs_where_the_adapter_has_them() {
    let ctx = ctx();
    let mut r = rng(606);
    let mode = SmpMode::Multilabel;
    let i = inputs(&mut r, mode, [2, 3, 8, 8], None);
    let x = ctx.upload_f16(&i.x, &i.x_shape);
    let y = ctx.upload_f16(&i.y, &i.y_shape);
    let loss = TverskyLoss::new(mode);
    if !ctx.has_f16() {
        let (x, y) = (x.unwrap(), y.unwrap());
        assert!(matches!(
            loss.compute(ctx, &[&x, &y]),
            Err(Error::InvalidInput(_))
        ));
        return;
    }
    let (x, y) = (x.unwrap(), y.unwrap());
    // The reference on the f16-rounded inputs.
    let xr: Vec<f64> = ctx
        .read_f16(&x)
        .unwrap()
        .iter()
        .map(|&v| v as f64)
        .collect();
    for l in [
        Box::new(loss.clone()) as Box<dyn Loss>,
        Box::new(FocalLoss::new(mode)),
    ] {
        let out = l.compute(ctx, &[&x, &y]).unwrap();
        let want = match l.name() {
            "TverskyLoss" => tversky(&loss, &xr, &i.x_shape, &to64(&i.y), &i.y_shape),
            _ => focal(
                &FocalLoss::new(mode),
                &xr,
                &i.x_shape,
                &to64(&i.y),
                &i.y_shape,
            ),
        }
        .unwrap();
        let got = (ctx.read(&out.loss).unwrap(), out.grad(ctx, 0).unwrap());
        check(&format!("f16 {}", l.name()), &got, &want);
    }
}

#[test]
fn bad_input_is_a_typed_error() {
    let ctx = ctx();
    let x = ctx.upload(&[0.5; 2 * 3 * 4], &[2, 3, 4]).unwrap();
    // A label out of range (not ignore_index): the device flags it, the read says so.
    for loss in [
        Box::new(FocalLoss::new(SmpMode::Multiclass)) as Box<dyn Loss>,
        Box::new(TverskyLoss::new(SmpMode::Multiclass)),
    ] {
        let y = ctx
            .upload_labels(&[0, 1, 2, 3, 0, 1, 2, 0], &[2, 4])
            .unwrap();
        let out = loss.compute(ctx, &[&x, &y]).unwrap();
        assert!(
            matches!(ctx.read(&out.loss), Err(Error::LabelOutOfRange(_))),
            "{}",
            loss.name()
        );
        // Shapes: y_true must be y_pred without dimension 1.
        let y = ctx.upload_labels(&[0; 6], &[2, 3]).unwrap();
        assert!(matches!(
            loss.compute(ctx, &[&x, &y]),
            Err(Error::ShapeMismatch(_))
        ));
        // Float labels in multiclass mode.
        let y = ctx.upload(&[0.0; 8], &[2, 4]).unwrap();
        assert!(matches!(
            loss.compute(ctx, &[&x, &y]),
            Err(Error::InvalidInput(_))
        ));
    }
    // The ignored label is not an error.
    let y = ctx
        .upload_labels(&[0, 1, 2, 255, 0, 1, 2, 0], &[2, 4])
        .unwrap();
    let f = FocalLoss {
        ignore_index: Some(255),
        ..FocalLoss::new(SmpMode::Multiclass)
    };
    assert!(f.compute(ctx, &[&x, &y]).unwrap().value(ctx).is_ok());
    // Configs.
    let bad_focal = [
        FocalLoss {
            gamma: -1.0,
            ..FocalLoss::default()
        },
        FocalLoss {
            alpha: Some(f64::NAN),
            ..FocalLoss::default()
        },
        FocalLoss {
            reduction: Reduction::None,
            ignore_index: Some(255),
            ..FocalLoss::default()
        },
    ];
    let xb = ctx.upload(&[0.5; 6], &[2, 1, 3]).unwrap();
    let yb = ctx.upload(&[1.0; 6], &[2, 1, 3]).unwrap();
    for f in bad_focal {
        assert!(
            matches!(f.compute(ctx, &[&xb, &yb]), Err(Error::InvalidConfig(_))),
            "{f:?}"
        );
    }
    let t = TverskyLoss {
        beta: f64::INFINITY,
        ..TverskyLoss::default()
    };
    assert!(matches!(
        t.compute(ctx, &[&xb, &yb]),
        Err(Error::InvalidConfig(_))
    ));
    // Binary takes [N, H, W] against [N, 1, H, W]; other shapes are refused.
    let y3 = ctx.upload(&[1.0; 6], &[2, 3]).unwrap();
    assert!(FocalLoss::default().compute(ctx, &[&xb, &y3]).is_ok());
    let y_bad = ctx.upload(&[1.0; 6], &[3, 2]).unwrap();
    assert!(matches!(
        TverskyLoss::default().compute(ctx, &[&xb, &y_bad]),
        Err(Error::ShapeMismatch(_))
    ));
    // Empty inputs.
    let e = ctx.empty(&[0, 1, 3], DType::F32).unwrap();
    assert!(matches!(
        FocalLoss::default().compute(ctx, &[&e, &e]),
        Err(Error::EmptyInput(_))
    ));
    // The mode from its name.
    assert_eq!(
        "multilabel".parse::<SmpMode>().unwrap(),
        SmpMode::Multilabel
    );
    assert!(matches!(
        "softmax".parse::<SmpMode>(),
        Err(Error::InvalidConfig(_))
    ));
    ctx.synchronize().unwrap();
}
