//! AngularPenaltySMLoss on the GPU: the public PyTorch cases, the float64 reference on random
//! inputs (odd sizes, every loss type, reduction and weight normalisation), the windowed path,
//! finite differences, GradOpts, the owned weight (seeded init, set/read, SGD) and typed errors.

mod common;

use common::{assert_close, ctx, rng, to64, uniform, windowed_ctx};
use deepml::reference;
use deepml::{
    AngularPenaltySMConfig, AngularPenaltySMLoss, GradOpts, Loss, LossContext, LossType, Reduction,
    Tensor,
};
use rand::Rng;
use serde_json::Value;

const TYPES: [LossType; 3] = [LossType::ArcFace, LossType::SphereFace, LossType::CosFace];
const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

struct Inputs {
    n: usize,
    x: Vec<f32>,
    labels: Vec<i64>,
    w: Vec<f32>,
}

fn inputs(seed: u64, n: usize, f: usize, c: usize, w_scale: f32) -> Inputs {
    let mut r = rng(seed);
    let x = uniform(&mut r, n * f, -1.0, 1.0);
    let labels = (0..n).map(|_| r.gen_range(0..c as i64)).collect();
    let b = w_scale / (f as f32).sqrt();
    let w = uniform(&mut r, c * f, -b, b);
    Inputs { n, x, labels, w }
}

struct Got {
    loss: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

fn gpu(ctx: &LossContext, cfg: &AngularPenaltySMConfig, i: &Inputs) -> deepml::Result<Got> {
    let f = cfg.in_features;
    let x = ctx.upload(&i.x, &[i.n, f])?;
    let y = ctx.upload_labels_i64(&i.labels, &[i.labels.len()])?;
    let w = ctx.upload(&i.w, &[cfg.out_features, f])?;
    let out = cfg.compute(ctx, &[&x, &y, &w])?;
    Ok(Got {
        loss: ctx.read(&out.loss)?,
        dx: out.grad(ctx, 0)?,
        dw: out.grad(ctx, 1)?,
    })
}

fn reference(cfg: &AngularPenaltySMConfig, i: &Inputs) -> reference::RefOutput {
    let (f, c) = (cfg.in_features, cfg.out_features);
    reference::angular(
        cfg,
        &to64(&i.x),
        &[i.n, f],
        &i.labels,
        &[i.n],
        &to64(&i.w),
        &[c, f],
    )
    .unwrap()
}

fn check(label: &str, got: &Got, want: &reference::RefOutput, rtol: f64, atol: f64) {
    assert_close(&format!("{label} loss"), &got.loss, &want.loss, rtol, atol);
    assert_close(&format!("{label} dx"), &got.dx, &want.grads[0], rtol, atol);
    assert_close(&format!("{label} dw"), &got.dw, &want.grads[1], rtol, atol);
}

fn cfg(f: usize, c: usize, t: LossType) -> AngularPenaltySMConfig {
    AngularPenaltySMConfig::new(f, c, t)
}

// ---------------------------------------------------------------------------------------------
// Public PyTorch cases.

fn tensor_f32(v: &Value) -> (Vec<usize>, Vec<f64>) {
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
            Value::String(s) if s == "NaN" => f64::NAN,
            Value::String(s) if s == "Infinity" => f64::INFINITY,
            Value::String(s) if s == "-Infinity" => f64::NEG_INFINITY,
            d => d.as_f64().unwrap(),
        })
        .collect();
    (shape, data)
}

fn config_of(c: &Value) -> deepml::Result<AngularPenaltySMConfig> {
    let loss_type = LossType::parse(
        c.get("loss_type")
            .and_then(Value::as_str)
            .unwrap_or("arcface"),
    )?;
    let mut cfg = cfg(
        c["in_features"].as_u64().unwrap() as usize,
        c["out_features"].as_u64().unwrap() as usize,
        loss_type,
    );
    if let Some(v) = c.get("eps").and_then(Value::as_f64) {
        cfg.eps = v;
    }
    cfg.s = c.get("s").and_then(Value::as_f64);
    cfg.m = c.get("m").and_then(Value::as_f64);
    if let Some(v) = c.get("normalize_weight").and_then(Value::as_bool) {
        cfg.normalize_weight = v;
    }
    if let Some(v) = c.get("reduction").and_then(Value::as_str) {
        cfg.reduction = Reduction::parse(v)?;
    }
    cfg.validate()?;
    Ok(cfg)
}

/// Runs one public case through the stateless form (labels checked on the host first).
fn run_case(ctx: &LossContext, case: &Value) -> deepml::Result<Got> {
    let cfg = config_of(&case["config"])?;
    let inp = &case["inputs"];
    let (xs, x) = tensor_f32(&inp["x"]);
    let (ys, y) = tensor_f32(&inp["labels"]);
    let (ws, w) = tensor_f32(&inp["weight"]);
    let labels: Vec<i64> = y.iter().map(|&v| v as i64).collect();
    cfg.check_shapes(&xs, &ys, &ws)?;
    deepml::check_labels("AngularPenaltySMLoss", &labels, cfg.out_features, None)?;
    let f32s = |v: &[f64]| v.iter().map(|&a| a as f32).collect::<Vec<f32>>();
    let x = ctx.upload(&f32s(&x), &xs)?;
    let y = ctx.upload_labels_i64(&labels, &ys)?;
    let w = ctx.upload(&f32s(&w), &ws)?;
    let out = cfg.compute(ctx, &[&x, &y, &w])?;
    Ok(Got {
        loss: ctx.read(&out.loss)?,
        dx: out.grad(ctx, 0)?,
        dw: out.grad(ctx, 1)?,
    })
}

#[test]
fn public_cases() {
    let ctx = ctx();
    let file: Value = serde_json::from_str(include_str!("cases/public.json")).unwrap();
    let mut seen = 0;
    for case in file["cases"].as_array().unwrap() {
        if case["loss"] != "AngularPenaltySMLoss" {
            continue;
        }
        seen += 1;
        let name = case["name"].as_str().unwrap();
        let exp = &case["expected"];
        let got = run_case(ctx, case);
        if exp["status"] == "error" {
            let err = got
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(err.kind(), exp["kind"].as_str().unwrap(), "{name}: {err}");
            continue;
        }
        let got = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        let rtol = case["tolerance"]["rtol"].as_f64().unwrap();
        let atol = case["tolerance"]["atol"].as_f64().unwrap();
        let (ls, loss) = tensor_f32(&exp["loss"]);
        assert_eq!(
            got.loss.len(),
            ls.iter().product::<usize>(),
            "{name}: loss shape"
        );
        assert!(
            got.loss.iter().all(|v| v.is_finite()),
            "{name}: {:?}",
            got.loss
        );
        assert_close(&format!("{name} loss"), &got.loss, &loss, rtol, atol);
        let (_, gx) = tensor_f32(&exp["grads"]["x"]);
        assert_close(&format!("{name} dx"), &got.dx, &gx, rtol, atol);
        let (_, gw) = tensor_f32(&exp["grads"]["weight"]);
        assert_close(&format!("{name} dweight"), &got.dw, &gw, rtol, atol);
    }
    assert_eq!(seen, 18);
}

#[test]
fn public_case_through_the_owning_form() {
    let ctx = ctx();
    let file: Value = serde_json::from_str(include_str!("cases/public.json")).unwrap();
    let case = file["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "ang_sphereface_none")
        .unwrap();
    let cfg = config_of(&case["config"]).unwrap();
    let (xs, x) = tensor_f32(&case["inputs"]["x"]);
    let (_, y) = tensor_f32(&case["inputs"]["labels"]);
    let (_, w) = tensor_f32(&case["inputs"]["weight"]);
    let mut loss = AngularPenaltySMLoss::new(ctx, cfg, 7).unwrap();
    loss.set_weight(ctx, &w.iter().map(|&v| v as f32).collect::<Vec<_>>())
        .unwrap();
    let x = ctx
        .upload(&x.iter().map(|&v| v as f32).collect::<Vec<_>>(), &xs)
        .unwrap();
    let labels: Vec<i64> = y.iter().map(|&v| v as i64).collect();
    let out = loss.compute_with_labels(ctx, &x, &labels).unwrap();
    let (tol_r, tol_a) = (
        case["tolerance"]["rtol"].as_f64().unwrap(),
        case["tolerance"]["atol"].as_f64().unwrap(),
    );
    assert_eq!(out.loss.shape(), &[8]);
    assert_close(
        "owned loss",
        &ctx.read(&out.loss).unwrap(),
        &tensor_f32(&case["expected"]["loss"]).1,
        tol_r,
        tol_a,
    );
    let gx = tensor_f32(&case["expected"]["grads"]["x"]).1;
    let gw = tensor_f32(&case["expected"]["grads"]["weight"]).1;
    assert_close("owned dx", &out.grad(ctx, 0).unwrap(), &gx, tol_r, tol_a);
    assert_close("owned dw", &out.grad(ctx, 1).unwrap(), &gw, tol_r, tol_a);
}

// ---------------------------------------------------------------------------------------------
// Against the float64 reference.

#[test]
fn random_every_option_odd_sizes() {
    // With the kernels tuned for CPUs (a thread per class row in the weight-norm passes) and
    // for GPUs (a workgroup per row).
    for cpu in [true, false] {
        every_option_odd_sizes(common::tuned_ctx(cpu));
    }
}

fn every_option_odd_sizes(ctx: &LossContext) {
    let i = inputs(1, 37, 61, 113, 1.0);
    for t in TYPES {
        for normalize_weight in [true, false] {
            for reduction in REDUCTIONS {
                let c = AngularPenaltySMConfig {
                    normalize_weight,
                    reduction,
                    ..cfg(61, 113, t)
                };
                let got = gpu(ctx, &c, &i).unwrap();
                let want = reference(&c, &i);
                check(
                    &format!("{t:?} norm {normalize_weight} {reduction:?}"),
                    &got,
                    &want,
                    2e-3,
                    2e-4,
                );
            }
        }
        // Explicit s and m, including the explicit zeros.
        for (s, m) in [
            (Some(10.0), Some(0.3)),
            (Some(0.0), Some(0.0)),
            (Some(30.0), Some(0.0)),
        ] {
            let c = AngularPenaltySMConfig {
                s,
                m,
                ..cfg(61, 113, t)
            };
            let got = gpu(ctx, &c, &i).unwrap();
            check(
                &format!("{t:?} s {s:?} m {m:?}"),
                &got,
                &reference(&c, &i),
                2e-3,
                2e-4,
            );
        }
    }
}

#[test]
fn random_sizes() {
    let ctx = ctx();
    // One sample; one feature; one class; tiles along every dimension of every product, not
    // multiples of 64; reductions over more than 16384 features or classes (several dispatches).
    let sizes = [
        (1, 16, 10),
        (1, 1, 3),
        (5, 3, 1),
        (130, 70, 150),
        (64, 64, 64),
        (200, 17, 257),
        (3, 16500, 5),
        (3, 4, 17000),
    ];
    for (k, (n, f, c)) in sizes.into_iter().enumerate() {
        let i = inputs(10 + k as u64, n, f, c, 1.0);
        for t in TYPES {
            let cf = cfg(f, c, t);
            let got = gpu(ctx, &cf, &i).unwrap();
            let want = reference(&cf, &i);
            if f == 1 {
                // x^ and W^ are +-1: both gradients are exactly 0, up to the rounding of the
                // projection g - v^ (v^ . g), whose terms are as large as the unprojected
                // gradient, at most s * 16 (sphereface's m^2) per row over |v|. Adapters may
                // round sqrt and division by a few ulps (NVIDIA's do), so the bound is relative
                // to that scale: 2e-6 of it. A wrong projection is off by the whole scale.
                assert_close("1 feature loss", &got.loss, &want.loss, 2e-3, 2e-4);
                let scale = 64.0 * 16.0;
                let bad_x = (got.dx.iter().zip(&i.x))
                    .any(|(g, v)| g.abs() > (2e-6 * scale / v.abs()).max(1e-4));
                let bad_w = (got.dw.iter().zip(&i.w))
                    .any(|(g, v)| g.abs() > (2e-6 * scale * n as f32 / v.abs()).max(1e-4));
                assert!(
                    !bad_x && !bad_w,
                    "{t:?} {n}x1x{c}: dx {:?} for x {:?}, dw {:?} for w {:?}",
                    got.dx,
                    i.x,
                    got.dw,
                    i.w
                );
                continue;
            }
            check(&format!("{t:?} {n}x{f}x{c}"), &got, &want, 2e-3, 2e-4);
        }
    }
}

#[test]
fn large_weight_without_normalisation_is_finite() {
    // |s wf| in the thousands: exp overflows in f32 (and in f64), log-sum-exp does not.
    let ctx = ctx();
    let i = inputs(3, 20, 16, 12, 300.0);
    for t in TYPES {
        let c = AngularPenaltySMConfig {
            normalize_weight: false,
            ..cfg(16, 12, t)
        };
        let got = gpu(ctx, &c, &i).unwrap();
        assert!(
            got.loss[0].is_finite() && got.loss[0] > 100.0,
            "{t:?}: {:?}",
            got.loss
        );
        assert!(got.dx.iter().chain(&got.dw).all(|g| g.is_finite()));
        check(
            &format!("{t:?} large W"),
            &got,
            &reference(&c, &i),
            1e-3,
            1e-4,
        );
    }
}

#[test]
fn zero_rows_follow_the_clamp_min_guard() {
    // A zero sample and a zero class row: x^ = 0 and W^ = 0, gradients divided by 1e-12.
    let ctx = ctx();
    let mut i = inputs(4, 6, 9, 5, 1.0);
    i.x[9..18].fill(0.0);
    i.w[18..27].fill(0.0);
    let c = AngularPenaltySMConfig {
        s: Some(2.0),
        ..cfg(9, 5, LossType::CosFace)
    };
    let got = gpu(ctx, &c, &i).unwrap();
    assert!(got.dx.iter().chain(&got.dw).all(|g| g.is_finite()));
    check("zero rows", &got, &reference(&c, &i), 2e-3, 2e-4);
}

#[test]
fn windowed_path_matches() {
    // 64-row and 192-class windows: three row windows, two class windows.
    let (n, f, c) = (150, 61, 200);
    let i = inputs(5, n, f, c, 1.0);
    let small = windowed_ctx((64 * c * 4) as u64);
    for (t, normalize_weight, reduction) in [
        (LossType::ArcFace, true, Reduction::Mean),
        (LossType::SphereFace, false, Reduction::None),
        (LossType::CosFace, true, Reduction::Sum),
    ] {
        let cf = AngularPenaltySMConfig {
            normalize_weight,
            reduction,
            ..cfg(f, c, t)
        };
        let plain = gpu(ctx(), &cf, &i).unwrap();
        let win = gpu(&small, &cf, &i).unwrap();
        let label = format!("windowed {t:?}");
        check(&label, &win, &reference(&cf, &i), 2e-3, 2e-4);
        assert_close(
            &format!("{label} loss vs plain"),
            &win.loss,
            &to64(&plain.loss),
            1e-5,
            1e-6,
        );
        assert_close(
            &format!("{label} dx vs plain"),
            &win.dx,
            &to64(&plain.dx),
            1e-4,
            1e-5,
        );
        assert_close(
            &format!("{label} dw vs plain"),
            &win.dw,
            &to64(&plain.dw),
            1e-4,
            1e-5,
        );
    }
}

#[test]
fn more_rows_than_one_grid_dimension() {
    // 66000 samples: the per-row kernels need a 2-D grid of workgroups, and the d W product
    // reduces over 66000 rows in several dispatches.
    let ctx = ctx();
    let i = inputs(13, 66_000, 3, 2, 1.0);
    let c = AngularPenaltySMConfig {
        reduction: Reduction::Sum,
        ..cfg(3, 2, LossType::CosFace)
    };
    let got = gpu(ctx, &c, &i).unwrap();
    check("66000 rows", &got, &reference(&c, &i), 2e-3, 2e-4);
}

#[test]
fn deterministic_run_to_run() {
    let ctx = ctx();
    let i = inputs(6, 100, 40, 90, 1.0);
    let c = cfg(40, 90, LossType::ArcFace);
    let a = gpu(ctx, &c, &i).unwrap();
    let b = gpu(ctx, &c, &i).unwrap();
    assert_eq!(a.loss, b.loss);
    assert_eq!(a.dx, b.dx);
    assert_eq!(a.dw, b.dw);
}

// ---------------------------------------------------------------------------------------------
// Finite differences of GPU loss values.

#[test]
fn finite_differences() {
    let ctx = ctx();
    let (n, f, c) = (6, 10, 7);
    let i = inputs(7, n, f, c, 1.0);
    for t in TYPES {
        let cf = AngularPenaltySMConfig {
            s: Some(4.0),
            reduction: Reduction::Sum,
            ..cfg(f, c, t)
        };
        let g = gpu(ctx, &cf, &i).unwrap();
        let loss_at = |x: &[f32], w: &[f32]| {
            let j = Inputs {
                n,
                x: x.to_vec(),
                labels: i.labels.clone(),
                w: w.to_vec(),
            };
            gpu(ctx, &cf, &j).unwrap().loss[0] as f64
        };
        let h = 1e-2f32;
        let biggest = |v: &[f32]| {
            let mut idx: Vec<usize> = (0..v.len()).collect();
            idx.sort_by(|&a, &b| v[b].abs().total_cmp(&v[a].abs()));
            idx.truncate(4);
            idx
        };
        for k in biggest(&g.dx) {
            let (mut xp, mut xm) = (i.x.clone(), i.x.clone());
            xp[k] += h;
            xm[k] -= h;
            let fd = (loss_at(&xp, &i.w) - loss_at(&xm, &i.w)) / (2.0 * h as f64);
            let an = g.dx[k] as f64;
            assert!(
                (fd - an).abs() <= 0.03 * an.abs() + 2e-3,
                "{t:?} dx[{k}]: fd {fd} analytic {an}"
            );
        }
        for k in biggest(&g.dw) {
            let (mut wp, mut wm) = (i.w.clone(), i.w.clone());
            wp[k] += h;
            wm[k] -= h;
            let fd = (loss_at(&i.x, &wp) - loss_at(&i.x, &wm)) / (2.0 * h as f64);
            let an = g.dw[k] as f64;
            assert!(
                (fd - an).abs() <= 0.03 * an.abs() + 2e-3,
                "{t:?} dw[{k}]: fd {fd} analytic {an}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// GradOpts.

#[test]
fn grad_opts_scale_into_accumulate() {
    // wgrad (into a gradient that is added to) and wgrad_inplace, both kernel choices.
    for cpu in [true, false] {
        scale_into_accumulate(common::tuned_ctx(cpu));
    }
}

fn scale_into_accumulate(ctx: &LossContext) {
    let (n, f, c) = (9, 20, 33);
    let i = inputs(8, n, f, c, 1.0);
    let cf = cfg(f, c, LossType::ArcFace);
    let want = reference(&cf, &i);
    let x = ctx.upload(&i.x, &[n, f]).unwrap();
    let y = ctx.upload_labels_i64(&i.labels, &[n]).unwrap();
    let w = ctx.upload(&i.w, &[c, f]).unwrap();
    let scaled = |v: &[f64], k: f64, add: &[f32]| -> Vec<f64> {
        v.iter().zip(add).map(|(a, b)| a * k + *b as f64).collect()
    };

    // scale
    let out = cf
        .compute_with(ctx, &[&x, &y, &w], &GradOpts::scaled(-2.5))
        .unwrap();
    let zx = vec![0.0f32; n * f];
    let zw = vec![0.0f32; c * f];
    assert_close(
        "scaled loss",
        &ctx.read(&out.loss).unwrap(),
        &want.loss,
        1e-4,
        1e-5,
    );
    assert_close(
        "scaled dx",
        &out.grad(ctx, 0).unwrap(),
        &scaled(&want.grads[0], -2.5, &zx),
        2e-3,
        2e-4,
    );
    assert_close(
        "scaled dw",
        &out.grad(ctx, 1).unwrap(),
        &scaled(&want.grads[1], -2.5, &zw),
        2e-3,
        2e-4,
    );

    // into (overwrite) then accumulate
    let bx: Vec<f32> = (0..n * f).map(|k| k as f32 * 0.01).collect();
    let bw: Vec<f32> = (0..c * f).map(|k| 1.0 - k as f32 * 0.001).collect();
    let gx = ctx.upload(&bx, &[n, f]).unwrap();
    let gw = ctx.upload(&bw, &[c, f]).unwrap();
    let opts = GradOpts {
        scale: 0.5,
        into: vec![Some(gx.clone()), Some(gw.clone())],
        accumulate: false,
    };
    let out = cf.compute_with(ctx, &[&x, &y, &w], &opts).unwrap();
    assert!(out.grads[0].same_buffer(&gx) && out.grads[1].same_buffer(&gw));
    assert_close(
        "into dx",
        &ctx.read(&gx).unwrap(),
        &scaled(&want.grads[0], 0.5, &zx),
        2e-3,
        2e-4,
    );
    assert_close(
        "into dw",
        &ctx.read(&gw).unwrap(),
        &scaled(&want.grads[1], 0.5, &zw),
        2e-3,
        2e-4,
    );

    let gx = ctx.upload(&bx, &[n, f]).unwrap();
    let gw = ctx.upload(&bw, &[c, f]).unwrap();
    let opts = GradOpts {
        scale: 0.5,
        into: vec![Some(gx.clone()), Some(gw.clone())],
        accumulate: true,
    };
    cf.compute_with(ctx, &[&x, &y, &w], &opts).unwrap();
    assert_close(
        "accumulate dx",
        &ctx.read(&gx).unwrap(),
        &scaled(&want.grads[0], 0.5, &bx),
        2e-3,
        2e-4,
    );
    assert_close(
        "accumulate dw",
        &ctx.read(&gw).unwrap(),
        &scaled(&want.grads[1], 0.5, &bw),
        2e-3,
        2e-4,
    );

    // accumulate without normalize_weight (dW written straight into the gradient), windowed:
    // 4 KiB bindings, or one aligned step of 132-byte logit rows where the adapter needs more.
    let small = common::windowed_ctx_units(132, 31);
    let cf = AngularPenaltySMConfig {
        normalize_weight: false,
        ..cf
    };
    let want = reference(&cf, &i);
    let x = small.upload(&i.x, &[n, f]).unwrap();
    let y = small.upload_labels_i64(&i.labels, &[n]).unwrap();
    let w = small.upload(&i.w, &[c, f]).unwrap();
    let gx = small.upload(&bx, &[n, f]).unwrap();
    let gw = small.upload(&bw, &[c, f]).unwrap();
    let opts = GradOpts {
        scale: 1.0,
        into: vec![Some(gx.clone()), Some(gw.clone())],
        accumulate: true,
    };
    cf.compute_with(&small, &[&x, &y, &w], &opts).unwrap();
    assert_close(
        "accumulate nonorm dx",
        &small.read(&gx).unwrap(),
        &scaled(&want.grads[0], 1.0, &bx),
        2e-3,
        2e-4,
    );
    assert_close(
        "accumulate nonorm dw",
        &small.read(&gw).unwrap(),
        &scaled(&want.grads[1], 1.0, &bw),
        2e-3,
        2e-4,
    );
}

// ---------------------------------------------------------------------------------------------
// The owned weight.

#[test]
fn seeded_init_is_deterministic_and_bounded() {
    let ctx = ctx();
    let c = cfg(50, 40, LossType::ArcFace);
    let a = AngularPenaltySMLoss::new(ctx, c.clone(), 42).unwrap();
    let b = AngularPenaltySMLoss::new(ctx, c.clone(), 42).unwrap();
    let d = AngularPenaltySMLoss::new(ctx, c.clone(), 43).unwrap();
    let (wa, wb, wd) = (
        a.read_weight(ctx).unwrap(),
        b.read_weight(ctx).unwrap(),
        d.read_weight(ctx).unwrap(),
    );
    assert_eq!(a.weight().shape(), &[40, 50]);
    assert_eq!(wa, wb);
    assert_ne!(wa, wd);
    assert_eq!(wa, AngularPenaltySMLoss::init_weight(&c, 42).unwrap());
    let bound = (1.0 / 50f64.sqrt()) as f32;
    assert!(wa.iter().all(|v| v.abs() <= bound));
    // Spread over the interval: mean ~ 0, some values near each end.
    let mean = wa.iter().map(|&v| v as f64).sum::<f64>() / wa.len() as f64;
    assert!(mean.abs() < 0.01, "mean {mean}");
    assert!(wa.iter().any(|&v| v > 0.9 * bound) && wa.iter().any(|&v| v < -0.9 * bound));
}

#[test]
fn owned_weight_sgd_step() {
    let ctx = ctx();
    let (n, f, c) = (12, 24, 19);
    let i = inputs(9, n, f, c, 1.0);
    let cf = cfg(f, c, LossType::CosFace);
    let mut loss = AngularPenaltySMLoss::new(ctx, cf.clone(), 1).unwrap();
    let w0 = loss.read_weight(ctx).unwrap();
    let j = Inputs { w: w0.clone(), ..i };
    let x = ctx.upload(&j.x, &[n, f]).unwrap();
    let out = loss.compute_with_labels(ctx, &x, &j.labels).unwrap();
    check(
        "owned",
        &Got {
            loss: ctx.read(&out.loss).unwrap(),
            dx: out.grad(ctx, 0).unwrap(),
            dw: out.grad(ctx, 1).unwrap(),
        },
        &reference(&cf, &j),
        2e-3,
        2e-4,
    );
    let g = out.grad(ctx, 1).unwrap();
    let before = ctx.read_scalar(&out.loss).unwrap();
    loss.sgd_step(ctx, &out.grads[1], 0.05).unwrap();
    let w1 = loss.read_weight(ctx).unwrap();
    for k in 0..w0.len() {
        let want = w0[k] - 0.05 * g[k];
        assert!(
            (w1[k] - want).abs() <= 1e-6 * want.abs().max(1.0),
            "w[{k}]: {} vs {want}",
            w1[k]
        );
    }
    assert!(g.iter().any(|&v| v.abs() > 1e-4));
    // A few steps lower the loss.
    for _ in 0..5 {
        let out = loss.compute_with_labels(ctx, &x, &j.labels).unwrap();
        loss.sgd_step(ctx, &out.grads[1], 0.05).unwrap();
    }
    let after = loss
        .compute_with_labels(ctx, &x, &j.labels)
        .unwrap()
        .value(ctx)
        .unwrap();
    assert!(after < before, "{after} >= {before}");
    // set_weight round trip; a wrong length is refused.
    let ones = vec![0.25f32; c * f];
    loss.set_weight(ctx, &ones).unwrap();
    assert_eq!(loss.read_weight(ctx).unwrap(), ones);
    assert_eq!(
        loss.set_weight(ctx, &ones[1..]).unwrap_err().kind(),
        "invalid_input"
    );
    let bad = ctx.upload(&[0.0; 4], &[2, 2]).unwrap();
    assert_eq!(
        loss.sgd_step(ctx, &bad, 0.1).unwrap_err().kind(),
        "invalid_input"
    );
    let g = ctx.upload(&vec![0.0; c * f], &[c, f]).unwrap();
    assert_eq!(
        loss.sgd_step(ctx, &g, f32::NAN).unwrap_err().kind(),
        "invalid_config"
    );
}

#[test]
fn sgd_step_windowed() {
    let small = windowed_ctx(1024);
    let (f, c) = (30, 50);
    let mut loss = AngularPenaltySMLoss::new(&small, cfg(f, c, LossType::ArcFace), 5).unwrap();
    let w0 = loss.read_weight(&small).unwrap();
    let g: Vec<f32> = (0..f * c).map(|k| (k % 7) as f32 - 3.0).collect();
    let gt = small.upload(&g, &[c, f]).unwrap();
    loss.sgd_step(&small, &gt, 0.5).unwrap();
    let w1 = loss.read_weight(&small).unwrap();
    for k in 0..g.len() {
        assert_eq!(w1[k], w0[k] - 0.5 * g[k], "w[{k}]");
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and bad labels.

#[test]
fn typed_errors() {
    let ctx = ctx();
    let i = inputs(11, 4, 8, 5, 1.0);
    let c = cfg(8, 5, LossType::ArcFace);
    let up = |v: &[f32], s: &[usize]| ctx.upload(v, s).unwrap();
    let x = up(&i.x, &[4, 8]);
    let y = ctx.upload_labels_i64(&i.labels, &[4]).unwrap();
    let w = up(&i.w, &[5, 8]);
    let kind = |r: deepml::Result<deepml::LossOutput>| r.err().map(|e| e.kind()).unwrap_or("ok");
    // x width != in_features
    let x9 = up(&[0.5; 36], &[4, 9]);
    assert_eq!(kind(c.compute(ctx, &[&x9, &y, &w])), "invalid_input");
    // N = 0
    let x0 = up(&[], &[0, 8]);
    let y0 = ctx.upload_labels(&[], &[0]).unwrap();
    assert_eq!(kind(c.compute(ctx, &[&x0, &y0, &w])), "invalid_input");
    // labels of the wrong length, weight of the wrong shape, float labels, wrong arity
    let y3 = ctx.upload_labels(&[0, 1, 2], &[3]).unwrap();
    assert_eq!(kind(c.compute(ctx, &[&x, &y3, &w])), "invalid_input");
    let w4 = up(&[0.5; 32], &[4, 8]);
    assert_eq!(kind(c.compute(ctx, &[&x, &y, &w4])), "invalid_input");
    let yf = up(&[0.0, 1.0, 2.0, 3.0], &[4]);
    assert_eq!(kind(c.compute(ctx, &[&x, &yf, &w])), "invalid_input");
    assert_eq!(kind(c.compute(ctx, &[&x, &y])), "invalid_input");
    // unknown loss_type, negative margin / s / eps, non-finite values, zero features
    assert_eq!(
        LossType::parse("adaface").unwrap_err().kind(),
        "invalid_config"
    );
    for bad in [
        AngularPenaltySMConfig {
            m: Some(-0.1),
            ..c.clone()
        },
        AngularPenaltySMConfig {
            s: Some(-1.0),
            ..c.clone()
        },
        AngularPenaltySMConfig {
            eps: f64::NAN,
            ..c.clone()
        },
        AngularPenaltySMConfig {
            m: Some(f64::INFINITY),
            ..c.clone()
        },
        cfg(0, 5, LossType::CosFace),
    ] {
        assert_eq!(
            kind(bad.compute(ctx, &[&x, &y, &w])),
            "invalid_config",
            "{bad:?}"
        );
        assert_eq!(
            AngularPenaltySMLoss::new(ctx, bad, 0).err().unwrap().kind(),
            "invalid_config"
        );
    }
    // label out of range, checked on the host before any GPU work
    let owned = AngularPenaltySMLoss::new(ctx, c.clone(), 3).unwrap();
    for labels in [vec![0, 1, 5, 2], vec![-1, 0, 0, 0], vec![0, 1, 2, i64::MAX]] {
        let e = owned.compute_with_labels(ctx, &x, &labels).err().unwrap();
        assert_eq!(e.kind(), "invalid_input", "{e}");
    }
    assert_eq!(
        owned
            .compute_with_labels(ctx, &x9, &[0, 1, 2, 3])
            .err()
            .unwrap()
            .kind(),
        "invalid_input"
    );
    assert_eq!(
        owned
            .compute_with_labels(ctx, &x0, &[])
            .err()
            .unwrap()
            .kind(),
        "invalid_input"
    );
    // a bad upstream scale
    let e = c
        .compute_with(ctx, &[&x, &y, &w], &GradOpts::scaled(f32::NAN))
        .err()
        .unwrap();
    assert_eq!(e.kind(), "invalid_config");
    drop(owned);
}

#[test]
fn device_labels_out_of_range_are_clamped_and_flagged() {
    let ctx = ctx();
    let (n, f, c) = (4, 8, 5);
    let i = inputs(12, n, f, c, 1.0);
    let x = ctx.upload(&i.x, &[n, f]).unwrap();
    let y: Tensor = ctx.upload_labels(&[0, 7, -3, 2], &[n]).unwrap();
    let owned = AngularPenaltySMLoss::new(
        ctx,
        AngularPenaltySMConfig {
            reduction: Reduction::None,
            ..cfg(f, c, LossType::ArcFace)
        },
        3,
    )
    .unwrap();
    let out = owned.compute(ctx, &[&x, &y]).unwrap();
    // The device flag makes every read of this computation's results fail.
    for t in std::iter::once(&out.loss).chain(&out.grads) {
        let err = ctx.read(t).unwrap_err();
        assert!(matches!(err, deepml::Error::LabelOutOfRange(_)), "{err}");
        assert!(err.to_string().contains("AngularPenaltySMLoss"), "{err}");
    }
    // The values are still there, through a copy that does not carry the flag.
    let l = ctx.read(&ctx.copy(&out.loss).unwrap()).unwrap();
    assert!(l[0].is_finite() && l[3].is_finite());
    assert!(l[1].is_nan() && l[2].is_nan());
    let dx = ctx.read(&ctx.copy(&out.grads[0]).unwrap()).unwrap();
    assert!(dx[f..3 * f].iter().all(|&v| v == 0.0));
    assert!(dx.iter().all(|v| v.is_finite()));
    // The stateless form: the mean is NaN, and the flag is raised again.
    let w = owned.weight().clone();
    let out = cfg(f, c, LossType::ArcFace)
        .compute(ctx, &[&x, &y, &w])
        .unwrap();
    assert!(matches!(
        out.value(ctx),
        Err(deepml::Error::LabelOutOfRange(_))
    ));
    assert!(ctx.read(&ctx.copy(&out.loss).unwrap()).unwrap()[0].is_nan());
    // Good labels in another computation on the same context read fine.
    let good = ctx.upload_labels(&[0, 1, 2, 3], &[n]).unwrap();
    let fine = owned.compute(ctx, &[&x, &good]).unwrap();
    assert!(ctx.read(&fine.loss).unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn the_shader_validates() {
    for v in deepml::all_shader_variants()
        .into_iter()
        .filter(|v| v.name == "angular")
    {
        let module = naga::front::wgsl::parse_str(&v.compose())
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(&v.compose())));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        )
        .validate(&module)
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// A million classes: memory beyond x, W and their gradients stays O(N x chunk).

/// A float64 dot product in four independent sums (so that it pipelines).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0.0f64; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..4 {
            acc[l] += x[l] * y[l];
        }
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail
}

/// The float64 loss (mean), gradient rows `xr` of x and `wr` of W, streamed over the classes
/// (O(N) memory): the formulas of `reference::angular` (checked against it below).
fn streamed_reference(
    cfg: &AngularPenaltySMConfig,
    x: &[f32],
    labels: &[i64],
    w: &[f32],
    xr: &[usize],
    wr: &[usize],
) -> (f64, Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let (f, c) = (cfg.in_features, cfg.out_features);
    let n = labels.len();
    let (s, m, eps) = (cfg.scale(), cfg.margin(), cfg.eps);
    assert_eq!(cfg.loss_type, LossType::ArcFace);
    let norm = |v: &[f32]| v.iter().map(|&a| a as f64 * a as f64).sum::<f64>().sqrt();
    let wnorm: Vec<f64> = w.chunks(f).map(norm).collect();
    let wscale: Vec<f64> = wnorm
        .iter()
        .map(|&n| {
            if cfg.normalize_weight {
                1.0 / n.max(1e-12)
            } else {
                1.0
            }
        })
        .collect();
    let xnorm: Vec<f64> = x.chunks(f).map(norm).collect();
    let xn: Vec<Vec<f64>> = x
        .chunks(f)
        .zip(&xnorm)
        .map(|(r, &nr)| r.iter().map(|&a| a as f64 / nr.max(1e-12)).collect())
        .collect();
    // Class j's weight row in float64, normalised when the config asks.
    let wrow = |j: usize, out: &mut Vec<f64>| {
        out.clear();
        out.extend(w[j * f..(j + 1) * f].iter().map(|&b| b as f64 * wscale[j]));
    };
    let wf = |i: usize, j: usize| -> f64 {
        let mut wj = Vec::with_capacity(f);
        wrow(j, &mut wj);
        dot(&xn[i], &wj)
    };
    // ArcFace's target logit and its derivative (reference::angular's `numerator`).
    let numerator = |cv: f64| -> (f64, f64) {
        let (lo, hi) = (-1.0 + eps, 1.0 - eps);
        let u = cv.max(lo).min(hi);
        let pass = if (lo..=hi).contains(&cv) { 1.0 } else { 0.0 };
        let (a, da) = (u.acos(), -pass / (1.0 - u * u).sqrt());
        (s * (a + m).cos(), -s * (a + m).sin() * da)
    };
    // Per row: num, d num / d c, lse (online over the classes). Classes in the outer loop (each
    // weight row converted once, the rows' x^ staying in cache), rows split over two threads.
    let rows: Vec<(f64, f64, f64)> = std::thread::scope(|sc| {
        let half = n.div_ceil(2);
        let parts: Vec<_> = (0..2)
            .map(|t| {
                let (wf, wrow, numerator, xn) = (&wf, &wrow, &numerator, &xn);
                sc.spawn(move || {
                    let mine = t * half..((t + 1) * half).min(n);
                    let mut state: Vec<(f64, f64, f64)> = mine
                        .clone()
                        .map(|i| {
                            let (num, dnum) = numerator(wf(i, labels[i] as usize));
                            (num, dnum, 1.0f64)
                        })
                        .collect();
                    // (max, sum of exp(z - max)), started from the target logit.
                    let mut mx: Vec<f64> = state.iter().map(|r| r.0).collect();
                    let mut wj = Vec::with_capacity(f);
                    for j in 0..c {
                        wrow(j, &mut wj);
                        for (q, i) in mine.clone().enumerate() {
                            if j == labels[i] as usize {
                                continue;
                            }
                            let z = s * dot(&xn[i], &wj);
                            let sm = &mut state[q].2;
                            if z > mx[q] {
                                *sm = *sm * (mx[q] - z).exp() + 1.0;
                                mx[q] = z;
                            } else {
                                *sm += (z - mx[q]).exp();
                            }
                        }
                    }
                    state
                        .into_iter()
                        .zip(mx)
                        .map(|((num, dnum, sm), mx)| (num, dnum, mx + sm.ln()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts.into_iter().flat_map(|p| p.join().unwrap()).collect()
    });
    let scale = 1.0 / n as f64;
    let loss = rows.iter().map(|&(num, _, lse)| lse - num).sum::<f64>() * scale;
    let dwf = |i: usize, j: usize| -> f64 {
        let (num, dnum, lse) = rows[i];
        if j == labels[i] as usize {
            scale * ((num - lse).exp() - 1.0) * dnum
        } else {
            scale * (s * wf(i, j) - lse).exp() * s
        }
    };
    // The backward of a row normalisation (reference::angular's normalize_rows_backward).
    let back = |u: &[f64], nr: f64, du: &[f64]| -> Vec<f64> {
        if nr >= 1e-12 {
            let along: f64 = u.iter().zip(du).map(|(a, b)| a * b).sum();
            u.iter()
                .zip(du)
                .map(|(a, g)| (g - a * along) / nr)
                .collect()
        } else {
            du.iter().map(|g| g / 1e-12).collect()
        }
    };
    let dx: Vec<Vec<f64>> = xr
        .iter()
        .map(|&i| {
            let mut dxn = vec![0.0; f];
            for j in 0..c {
                let g = dwf(i, j) * wscale[j];
                for (d, &wv) in dxn.iter_mut().zip(&w[j * f..(j + 1) * f]) {
                    *d += g * wv as f64;
                }
            }
            back(&xn[i], xnorm[i], &dxn)
        })
        .collect();
    let dw: Vec<Vec<f64>> = wr
        .iter()
        .map(|&j| {
            let mut dwn = vec![0.0; f];
            for (i, xi) in xn.iter().enumerate() {
                let g = dwf(i, j);
                for (d, &xv) in dwn.iter_mut().zip(xi) {
                    *d += g * xv;
                }
            }
            if cfg.normalize_weight {
                let wn: Vec<f64> = w[j * f..(j + 1) * f]
                    .iter()
                    .map(|&a| a as f64 * wscale[j])
                    .collect();
                back(&wn, wnorm[j], &dwn)
            } else {
                dwn
            }
        })
        .collect();
    (loss, dx, dw)
}

#[test]
fn streamed_reference_matches_the_reference() {
    let (n, f, c) = (5, 7, 300);
    let cf = cfg(f, c, LossType::ArcFace);
    let i = inputs(77, n, f, c, 1.0);
    let want = reference(&cf, &i);
    let rows: Vec<usize> = (0..n).collect();
    let classes: Vec<usize> = (0..c).collect();
    let (loss, dx, dw) = streamed_reference(&cf, &i.x, &i.labels, &i.w, &rows, &classes);
    assert!((loss - want.loss[0]).abs() <= 1e-12 * want.loss[0].abs().max(1.0));
    let flat = |v: Vec<Vec<f64>>| v.into_iter().flatten().collect::<Vec<_>>();
    for (a, b) in flat(dx).iter().zip(&want.grads[0]) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "dx {a} {b}");
    }
    for (a, b) in flat(dw).iter().zip(&want.grads[1]) {
        assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "dw {a} {b}");
    }
}

#[test]
fn a_million_classes_in_bounded_memory() {
    // The size on lavapipe (Vulkan on llvmpipe), and on GPUs. The other CPU
    // implementations run the products 5 to 20 times slower (GL on llvmpipe takes the looped
    // form; SwiftShader), so there the storage bindings are capped at 1 MiB, which caps the
    // chunk of logits at 1 MiB: 20 chunks of classes, and a bound of 4 MiB, a fifth of the
    // logits. Each runs in a context of its own, so that its allocation statistics are this
    // test's.
    let a = ctx().adapter();
    let full = a.backend == wgpu::Backend::Vulkan && a.name.to_lowercase().contains("llvmpipe")
        || a.device_type != wgpu::DeviceType::Cpu;
    let (ctx, n, f, c, bound) = if full {
        (
            LossContext::new().unwrap(),
            256usize,
            128usize,
            1_000_000usize,
            64usize << 20,
        )
    } else {
        (windowed_ctx(1 << 20), 256, 64, 25_000, 4 << 20)
    };
    assert!(
        n * c * 4 >= 5 * bound,
        "the logits must be far over the bound"
    );
    let cf = cfg(f, c, LossType::ArcFace);
    let mut r = rng(1_000_000);
    let x = uniform(&mut r, n * f, -1.0, 1.0);
    let labels: Vec<i64> = (0..n).map(|_| r.gen_range(0..c as i64)).collect();
    let b = 1.0 / (f as f32).sqrt();
    let w = uniform(&mut r, c * f, -b, b);
    let tx = ctx.upload(&x, &[n, f]).unwrap();
    let ty = ctx.upload_labels_i64(&labels, &[n]).unwrap();
    let tw = ctx.upload(&w, &[c, f]).unwrap();
    let gx = ctx.empty(&[n, f], deepml::tensor::DType::F32).unwrap();
    let gw = ctx.empty(&[c, f], deepml::tensor::DType::F32).unwrap();
    ctx.synchronize().unwrap();
    let before = ctx.stats().allocated_bytes;
    let opts = GradOpts {
        into: vec![Some(gx.clone()), Some(gw.clone())],
        ..Default::default()
    };
    let t = std::time::Instant::now();
    let out = cf.compute_with(&ctx, &[&tx, &ty, &tw], &opts).unwrap();
    let beyond = ctx.stats().allocated_bytes - before;
    let loss = ctx.read(&out.loss).unwrap()[0] as f64;
    eprintln!(
        "{n} x {f} -> {c}: {:.1} s on the device, {:.1} MiB beyond x, W and their gradients",
        t.elapsed().as_secs_f64(),
        beyond as f64 / (1 << 20) as f64
    );
    assert!(
        beyond <= bound as u64,
        "{beyond} bytes allocated beyond the inputs and gradients (bound {bound})"
    );
    let got_dx = ctx.read(&gx).unwrap();
    let got_dw = ctx.read(&gw).unwrap();
    let xr = [0usize, 77, 255];
    let mut wr: Vec<usize> = labels.iter().take(3).map(|&l| l as usize).collect();
    wr.extend([0, c / 2 - 1, c - 1]);
    let (want, dx, dw) = streamed_reference(&cf, &x, &labels, &w, &xr, &wr);
    assert!(
        (loss - want).abs() <= 1e-4 * want.abs(),
        "loss {loss}, float64 {want}"
    );
    for (q, &i) in xr.iter().enumerate() {
        assert_close(
            &format!("dx row {i}"),
            &got_dx[i * f..(i + 1) * f],
            &dx[q],
            2e-3,
            2e-3,
        );
    }
    for (q, &j) in wr.iter().enumerate() {
        assert_close(
            &format!("dW row {j}"),
            &got_dw[j * f..(j + 1) * f],
            &dw[q],
            2e-3,
            2e-3,
        );
    }
}
