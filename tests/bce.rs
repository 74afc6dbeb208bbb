//! WeightedBCEWithLogitsLoss and BCEWithLogitsLoss on the GPU against the float64 reference,
//! finite differences, extreme logits, broadcasting, GradOpts, the windowed path, typed errors
//! and the public PyTorch cases.
mod common;

use common::{assert_close, ctx, rng, to64, uniform, windowed_ctx};
use deepml::reference::{bce_with_logits, weighted_bce, RefOutput};
use deepml::{
    BCEWithLogitsLoss, GradOpts, HostTensor, Loss, LossContext, Reduction,
    WeightedBCEWithLogitsLoss,
};
use rand::rngs::SmallRng;
use rand::Rng;
use serde_json::Value;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

struct Got {
    loss: Vec<f32>,
    loss_shape: Vec<usize>,
    grad: Vec<f32>,
}

fn gpu(
    ctx: &LossContext,
    loss: &dyn Loss,
    x: &[f32],
    xs: &[usize],
    t: &[f32],
    ts: &[usize],
) -> deepml::Result<Got> {
    let xt = ctx.upload(x, xs)?;
    let tt = ctx.upload(t, ts)?;
    let out = loss.compute(ctx, &[&xt, &tt])?;
    assert_eq!(out.grads[0].shape(), xs);
    Ok(Got {
        loss: ctx.read(&out.loss)?,
        loss_shape: out.loss.shape().to_vec(),
        grad: out.grad(ctx, 0)?,
    })
}

fn check(label: &str, got: &Got, want: &RefOutput) {
    assert_eq!(got.loss_shape, want.loss_shape, "{label}: loss shape");
    assert_close(&format!("{label} loss"), &got.loss, &want.loss, 2e-5, 1e-6);
    assert_close(
        &format!("{label} grad"),
        &got.grad,
        &want.grads[0],
        2e-5,
        1e-6,
    );
}

fn labels(r: &mut SmallRng, n: usize) -> Vec<f32> {
    // Hard labels with some soft ones.
    (0..n)
        .map(|i| {
            if i % 5 == 3 {
                r.gen_range(0.0..1.0)
            } else {
                f32::from(r.gen_bool(0.5) as u8)
            }
        })
        .collect()
}

fn host(data: &[f32], shape: &[usize]) -> HostTensor {
    HostTensor::new(data.to_vec(), shape.to_vec()).unwrap()
}

#[test]
fn weighted_bce_matches_the_reference() {
    let ctx = ctx();
    let mut r = rng(1);
    let layouts: [(&[usize], &[usize]); 6] = [
        (&[37], &[37]),
        (&[37, 1], &[37]),
        (&[37], &[37, 1]),
        (&[1, 1], &[1]),
        (&[1], &[1]),
        (&[5000, 1], &[5000, 1]),
    ];
    for (xs, ts) in layouts {
        let n: usize = xs.iter().product();
        let x = uniform(&mut r, n, -6.0, 6.0);
        let y = labels(&mut r, n);
        for reduction in REDUCTIONS {
            for (w_p, w_n, epsilon) in [
                (3.0, 1.0, 1e-7),
                (0.25, 2.0, 1e-3),
                (1.0, 1.0, 0.0),
                (0.0, 0.5, 1e-7),
            ] {
                let cfg = WeightedBCEWithLogitsLoss {
                    w_p,
                    w_n,
                    epsilon,
                    reduction,
                };
                let want = weighted_bce(&cfg, &to64(&x), xs, &to64(&y), ts).unwrap();
                let got = gpu(ctx, &cfg, &x, xs, &y, ts).unwrap();
                check(
                    &format!("wbce {xs:?} {ts:?} {reduction:?} {w_p} {w_n} {epsilon}"),
                    &got,
                    &want,
                );
            }
        }
    }
}

#[test]
fn bce_with_logits_matches_the_reference() {
    let ctx = ctx();
    let mut r = rng(2);
    for shape in [vec![3, 4, 5, 2], vec![3, 5, 7, 11], vec![1], vec![6000]] {
        let n: usize = shape.iter().product();
        let x = uniform(&mut r, n, -5.0, 5.0);
        let t = uniform(&mut r, n, 0.0, 1.0);
        let last = *shape.last().unwrap();
        let mut args: Vec<(Option<HostTensor>, Option<HostTensor>)> = vec![
            (None, None),
            (Some(host(&uniform(&mut r, last, 0.1, 2.0), &[last])), None),
            (None, Some(host(&uniform(&mut r, last, 0.5, 4.0), &[last]))),
            (Some(host(&[0.7], &[1])), Some(host(&[2.5], &[]))),
        ];
        if shape.len() == 4 {
            let c = shape[1];
            args.push((
                Some(host(&uniform(&mut r, c, 0.1, 2.0), &[c, 1, 1])),
                Some(host(&uniform(&mut r, last, 0.5, 4.0), &[last])),
            ));
            // A weight over the whole input.
            args.push((Some(host(&uniform(&mut r, n, 0.1, 2.0), &shape)), None));
        }
        for (weight, pos_weight) in args {
            for reduction in REDUCTIONS {
                let cfg = BCEWithLogitsLoss {
                    weight: weight.clone(),
                    reduction,
                    pos_weight: pos_weight.clone(),
                };
                let want = bce_with_logits(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
                let got = gpu(ctx, &cfg, &x, &shape, &t, &shape).unwrap();
                let label = format!(
                    "bce {shape:?} {reduction:?} w {:?} pw {:?}",
                    weight.as_ref().map(|w| &w.shape),
                    pos_weight.as_ref().map(|w| &w.shape)
                );
                check(&label, &got, &want);
            }
        }
    }
}

#[test]
fn saturated_logits_stay_finite() {
    let ctx = ctx();
    let x = [
        200.0f32, -200.0, 200.0, -200.0, 50.0, -50.0, 0.3, -0.7, 88.0, -88.0, 104.0, -104.0,
    ];
    let y = [
        1.0f32, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0,
    ];
    let n = x.len();
    for reduction in REDUCTIONS {
        let cfg = WeightedBCEWithLogitsLoss {
            w_p: 2.0,
            reduction,
            ..Default::default()
        };
        let got = gpu(ctx, &cfg, &x, &[n], &y, &[n]).unwrap();
        assert!(
            got.loss.iter().chain(&got.grad).all(|v| v.is_finite()),
            "wbce {reduction:?}"
        );
        check(
            &format!("wbce extreme {reduction:?}"),
            &got,
            &weighted_bce(&cfg, &to64(&x), &[n], &to64(&y), &[n]).unwrap(),
        );
        let cfg = BCEWithLogitsLoss {
            reduction,
            pos_weight: Some(host(&[3.0], &[1])),
            ..Default::default()
        };
        let got = gpu(ctx, &cfg, &x, &[n], &y, &[n]).unwrap();
        assert!(
            got.loss.iter().chain(&got.grad).all(|v| v.is_finite()),
            "bce {reduction:?}"
        );
        check(
            &format!("bce extreme {reduction:?}"),
            &got,
            &bce_with_logits(&cfg, &to64(&x), &to64(&y), &[n]).unwrap(),
        );
    }
    // A wrong-sign saturated logit costs -ln(epsilon), and nothing is NaN even with epsilon 0.
    let cfg = WeightedBCEWithLogitsLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let got = gpu(ctx, &cfg, &[-200.0, 200.0], &[2], &[1.0, 0.0], &[2]).unwrap();
    assert!(
        (got.loss[0] as f64 + (1e-7f64).ln()).abs() < 1e-5,
        "{:?}",
        got.loss
    );
    let cfg = WeightedBCEWithLogitsLoss {
        epsilon: 0.0,
        reduction: Reduction::None,
        ..Default::default()
    };
    let got = gpu(
        ctx,
        &cfg,
        &[-200.0, 200.0, 1.0],
        &[3],
        &[1.0, 0.0, 1.0],
        &[3],
    )
    .unwrap();
    assert!(got.grad.iter().all(|g| g.is_finite()), "{:?}", got.grad);
}

#[test]
fn finite_differences() {
    let ctx = ctx();
    let mut r = rng(3);
    let shape = [3, 5, 7];
    let n = 105;
    let x = uniform(&mut r, n, -3.0, 3.0);
    let t = labels(&mut r, n);
    let losses: [Box<dyn Loss>; 3] = [
        Box::new(WeightedBCEWithLogitsLoss {
            w_p: 3.0,
            w_n: 0.5,
            epsilon: 1e-3,
            reduction: Reduction::Sum,
        }),
        Box::new(BCEWithLogitsLoss {
            weight: Some(host(&[0.5, 2.0, 1.0, 1.5, 0.25], &[5, 1])),
            reduction: Reduction::Mean,
            pos_weight: Some(host(&uniform(&mut r, 7, 0.5, 3.0), &[7])),
        }),
        Box::new(BCEWithLogitsLoss {
            reduction: Reduction::Sum,
            ..Default::default()
        }),
    ];
    for loss in &losses {
        let (xs, ts): (&[usize], &[usize]) = if loss.name() == "WeightedBCEWithLogitsLoss" {
            (&[n], &[n, 1])
        } else {
            (&shape, &shape)
        };
        let g = gpu(ctx, loss.as_ref(), &x, xs, &t, ts).unwrap().grad;
        let scale = g.iter().fold(0.0f32, |m, v| m.max(v.abs())) as f64;
        let h = 0.01f32;
        for _ in 0..6 {
            let i = r.gen_range(0..n);
            let mut xp = x.clone();
            xp[i] = x[i] + h;
            let up = gpu(ctx, loss.as_ref(), &xp, xs, &t, ts).unwrap().loss[0] as f64;
            xp[i] = x[i] - h;
            let down = gpu(ctx, loss.as_ref(), &xp, xs, &t, ts).unwrap().loss[0] as f64;
            let fd = (up - down) / (2.0 * h as f64);
            let err = (fd - g[i] as f64).abs();
            assert!(
                err <= 0.005 * (g[i] as f64).abs() + 2e-3 * scale,
                "{}[{i}]: fd {fd:e} vs {:e}",
                loss.name(),
                g[i]
            );
        }
    }
}

#[test]
fn grad_opts_scale_into_and_accumulate() {
    let ctx = ctx();
    let mut r = rng(4);
    let shape = [6, 5];
    let x = uniform(&mut r, 30, -3.0, 3.0);
    let t = labels(&mut r, 30);
    let cfg = BCEWithLogitsLoss {
        pos_weight: Some(host(&[1.0, 2.0, 3.0, 4.0, 5.0], &[5])),
        ..Default::default()
    };
    let want = bce_with_logits(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
    let xt = ctx.upload(&x, &shape).unwrap();
    let tt = ctx.upload(&t, &shape).unwrap();
    let base = uniform(&mut r, 30, -1.0, 1.0);
    let into = ctx.upload(&base, &shape).unwrap();
    let opts = GradOpts {
        scale: 0.5,
        into: vec![Some(into.clone())],
        accumulate: true,
    };
    let out = cfg.compute_with(ctx, &[&xt, &tt], &opts).unwrap();
    assert!(out.grads[0].same_buffer(&into));
    let expect: Vec<f64> = base
        .iter()
        .zip(&want.grads[0])
        .map(|(&b, &g)| b as f64 + 0.5 * g)
        .collect();
    assert_close(
        "accumulated",
        &ctx.read(&into).unwrap(),
        &expect,
        1e-5,
        1e-6,
    );
    assert_close("loss", &[out.value(ctx).unwrap()], &want.loss, 1e-5, 0.0);
    let wcfg = WeightedBCEWithLogitsLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let xt = ctx.upload(&x, &[30, 1]).unwrap();
    let tt = ctx.upload(&t, &[30]).unwrap();
    let into = ctx.upload(&base, &[30, 1]).unwrap();
    let opts = GradOpts {
        scale: -4.0,
        into: vec![Some(into.clone())],
        accumulate: false,
    };
    let out = wcfg.compute_with(ctx, &[&xt, &tt], &opts).unwrap();
    let want = weighted_bce(&wcfg, &to64(&x), &[30, 1], &to64(&t), &[30]).unwrap();
    let expect: Vec<f64> = want.grads[0].iter().map(|g| -4.0 * g).collect();
    assert_close("scaled", &ctx.read(&into).unwrap(), &expect, 1e-5, 1e-6);
    assert_eq!(out.loss.shape(), &[30]);
    // A gradient tensor of the wrong shape is refused.
    let bad = ctx.upload(&base, &[30]).unwrap();
    let opts = GradOpts {
        into: vec![Some(bad)],
        ..Default::default()
    };
    assert_eq!(
        wcfg.compute_with(ctx, &[&xt, &tt], &opts)
            .err()
            .unwrap()
            .kind(),
        "invalid_input"
    );
}

#[test]
fn windowed_path_matches_the_plain_one() {
    // 32 KiB bindings: windows of 8192 elements (one tile); the broadcast weights cross window
    // edges.
    let wctx = windowed_ctx(32768);
    let mut r = rng(5);
    let shape = [3, 4, 50, 20];
    let n = 12000;
    let x = uniform(&mut r, n, -4.0, 4.0);
    let t = labels(&mut r, n);
    for reduction in REDUCTIONS {
        let cfgs: [Box<dyn Loss>; 3] = [
            Box::new(BCEWithLogitsLoss {
                weight: Some(host(&[0.5, 1.0, 2.0, 3.0], &[4, 1, 1])),
                reduction,
                pos_weight: Some(host(&uniform(&mut r, 1000, 0.5, 3.0), &[50, 20])),
            }),
            Box::new(BCEWithLogitsLoss {
                weight: Some(host(&uniform(&mut r, 20, 0.5, 3.0), &[20])),
                reduction,
                pos_weight: None,
            }),
            Box::new(WeightedBCEWithLogitsLoss {
                w_p: 2.0,
                w_n: 0.5,
                epsilon: 1e-5,
                reduction,
            }),
        ];
        for cfg in &cfgs {
            let (xs, ts): (Vec<usize>, Vec<usize>) = if cfg.name() == "WeightedBCEWithLogitsLoss" {
                (vec![n], vec![n])
            } else {
                (shape.to_vec(), shape.to_vec())
            };
            let plain = gpu(ctx(), cfg.as_ref(), &x, &xs, &t, &ts).unwrap();
            let windowed = gpu(&wctx, cfg.as_ref(), &x, &xs, &t, &ts).unwrap();
            let label = format!("{} {reduction:?}", cfg.name());
            assert_eq!(windowed.loss_shape, plain.loss_shape);
            // Windows are whole tiles: the same partial sums, bit for bit.
            assert_eq!(windowed.loss, plain.loss, "{label}");
            assert_eq!(windowed.grad, plain.grad, "{label}");
        }
        // And against the reference, so the comparison above can fail on a shared error.
        let cfg = BCEWithLogitsLoss {
            weight: Some(host(&[0.5, 1.0, 2.0, 3.0], &[4, 1, 1])),
            reduction,
            pos_weight: Some(host(&uniform(&mut r, 1000, 0.5, 3.0), &[50, 20])),
        };
        let want = bce_with_logits(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
        check(
            &format!("windowed bce {reduction:?}"),
            &gpu(&wctx, &cfg, &x, &shape, &t, &shape).unwrap(),
            &want,
        );
    }
}

#[test]
fn typed_errors() {
    let ctx = ctx();
    let a = ctx.upload(&[0.0; 30], &[6, 5]).unwrap();
    let b = ctx.upload(&[0.0; 30], &[5, 6]).unwrap();
    let v8 = ctx.upload(&[0.0; 8], &[8]).unwrap();
    let m8x2 = ctx.upload(&[0.0; 16], &[8, 2]).unwrap();
    let kind =
        |l: &dyn Loss, i: &[&deepml::Tensor]| l.compute(ctx, i).expect_err("must fail").kind();
    // Target shape not matching.
    assert_eq!(
        kind(&BCEWithLogitsLoss::default(), &[&a, &b]),
        "invalid_input"
    );
    assert_eq!(
        kind(&WeightedBCEWithLogitsLoss::default(), &[&v8, &m8x2]),
        "invalid_input"
    );
    assert_eq!(
        kind(&WeightedBCEWithLogitsLoss::default(), &[&a, &a]),
        "invalid_input"
    );
    // Negative or non-finite parameters.
    for cfg in [
        WeightedBCEWithLogitsLoss {
            epsilon: -1e-7,
            ..Default::default()
        },
        WeightedBCEWithLogitsLoss {
            w_p: -1.0,
            ..Default::default()
        },
        WeightedBCEWithLogitsLoss {
            w_n: f64::INFINITY,
            ..Default::default()
        },
    ] {
        assert_eq!(kind(&cfg, &[&v8, &v8]), "invalid_config");
    }
    // weight / pos_weight that do not broadcast.
    let cfg = BCEWithLogitsLoss {
        weight: Some(host(&[1.0; 4], &[4])),
        ..Default::default()
    };
    assert_eq!(kind(&cfg, &[&a, &a]), "invalid_input");
    let cfg = BCEWithLogitsLoss {
        pos_weight: Some(host(&[1.0; 6], &[6])),
        ..Default::default()
    };
    assert_eq!(kind(&cfg, &[&a, &a]), "invalid_input");
    let cfg = BCEWithLogitsLoss {
        weight: Some(host(&[1.0; 6], &[6, 1])),
        ..Default::default()
    };
    assert!(
        cfg.compute(ctx, &[&a, &a]).is_ok(),
        "[6, 1] broadcasts against [6, 5]"
    );
    let cfg = BCEWithLogitsLoss {
        pos_weight: Some(host(&[1.0; 60], &[2, 6, 5])),
        ..Default::default()
    };
    assert_eq!(kind(&cfg, &[&a, &a]), "invalid_input");
    let bad = HostTensor {
        shape: vec![5],
        data: vec![1.0; 4],
    };
    assert_eq!(
        kind(
            &BCEWithLogitsLoss {
                weight: Some(bad),
                ..Default::default()
            },
            &[&a, &a]
        ),
        "invalid_input"
    );
    // Empty input, wrong dtype, wrong arity.
    let empty = ctx.upload(&[], &[0]).unwrap();
    assert_eq!(
        kind(&BCEWithLogitsLoss::default(), &[&empty, &empty]),
        "invalid_input"
    );
    assert_eq!(
        kind(&WeightedBCEWithLogitsLoss::default(), &[&empty, &empty]),
        "invalid_input"
    );
    let lab = ctx.upload_labels(&[0; 8], &[8]).unwrap();
    assert_eq!(
        kind(&WeightedBCEWithLogitsLoss::default(), &[&v8, &lab]),
        "invalid_input"
    );
    assert_eq!(kind(&BCEWithLogitsLoss::default(), &[&a]), "invalid_input");
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

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

fn host_of(v: &Value) -> Option<HostTensor> {
    if v.is_null() {
        return None;
    }
    let (shape, data) = tensor(v);
    Some(HostTensor::new(f32s(&data), shape).unwrap())
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
        let reduction = Reduction::parse(c["reduction"].as_str().unwrap_or("mean")).unwrap();
        let (loss, names): (Box<dyn Loss>, [&str; 2]) = match case["loss"].as_str().unwrap() {
            "WeightedBCEWithLogitsLoss" => (
                Box::new(WeightedBCEWithLogitsLoss {
                    w_p: c["w_p"].as_f64().unwrap_or(1.0),
                    w_n: c["w_n"].as_f64().unwrap_or(1.0),
                    epsilon: c["epsilon"].as_f64().unwrap_or(1e-7),
                    reduction,
                }),
                ["logits", "labels"],
            ),
            "BCEWithLogitsLoss" => (
                Box::new(BCEWithLogitsLoss {
                    weight: host_of(&c["weight"]),
                    reduction,
                    pos_weight: host_of(&c["pos_weight"]),
                }),
                ["input", "target"],
            ),
            _ => continue,
        };
        let (xs, x) = tensor(&case["inputs"][names[0]]);
        let (ts, t) = tensor(&case["inputs"][names[1]]);
        let xt = ctx.upload(&f32s(&x), &xs).unwrap();
        let tt = ctx.upload(&f32s(&t), &ts).unwrap();
        let got = loss.compute(ctx, &[&xt, &tt]);
        let exp = &case["expected"];
        if exp["status"] == "error" {
            let err = got
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(err.kind(), exp["kind"].as_str().unwrap(), "{name}: {err}");
        } else {
            let out = got.unwrap_or_else(|e| panic!("{name}: {e}"));
            let (want_shape, want_loss) = tensor(&exp["loss"]);
            assert_eq!(
                out.loss.shape(),
                want_shape.as_slice(),
                "{name}: loss shape"
            );
            let (rtol, atol) = (
                case["tolerance"]["rtol"].as_f64().unwrap(),
                case["tolerance"]["atol"].as_f64().unwrap(),
            );
            assert_close(
                &format!("{name} loss"),
                &ctx.read(&out.loss).unwrap(),
                &want_loss,
                rtol,
                atol,
            );
            let (_, want_grad) = tensor(&exp["grads"][names[0]]);
            assert_close(
                &format!("{name} grad"),
                &out.grad(ctx, 0).unwrap(),
                &want_grad,
                rtol,
                atol,
            );
        }
        ran += 1;
    }
    assert_eq!(ran, 16, "WeightedBCE and BCE public cases");
}

#[test]
fn sixteen_million_bce() {
    let ctx = ctx();
    let mut r = rng(6);
    let shape = [16, 1024, 1024];
    let n = 16 << 20;
    let x = uniform(&mut r, n, -6.0, 6.0);
    let t: Vec<f32> = (0..n).map(|_| f32::from(r.gen_bool(0.3) as u8)).collect();
    let cfg = BCEWithLogitsLoss {
        pos_weight: Some(host(&uniform(&mut r, 1024, 0.5, 3.0), &[1024])),
        ..Default::default()
    };
    let got = gpu(ctx, &cfg, &x, &shape, &t, &shape).unwrap();
    let want = bce_with_logits(&cfg, &to64(&x), &to64(&t), &shape).unwrap();
    assert_close("16M bce loss", &got.loss, &want.loss, 1e-5, 0.0);
    let idx: Vec<usize> = (0..4096)
        .map(|_| r.gen_range(0..n))
        .chain([0, n - 1])
        .collect();
    let g: Vec<f32> = idx.iter().map(|&i| got.grad[i]).collect();
    let w: Vec<f64> = idx.iter().map(|&i| want.grads[0][i]).collect();
    assert_close("16M bce grad sample", &g, &w, 1e-5, 1e-6);
    let cfg = WeightedBCEWithLogitsLoss {
        w_p: 3.0,
        ..Default::default()
    };
    let got = gpu(ctx, &cfg, &x, &[n], &t, &[n]).unwrap();
    let want = weighted_bce(&cfg, &to64(&x), &[n], &to64(&t), &[n]).unwrap();
    assert_close("16M weighted bce loss", &got.loss, &want.loss, 1e-5, 0.0);
    let g: Vec<f32> = idx.iter().map(|&i| got.grad[i]).collect();
    let w: Vec<f64> = idx.iter().map(|&i| want.grads[0][i]).collect();
    assert_close("16M weighted bce grad sample", &g, &w, 1e-5, 1e-6);
}
