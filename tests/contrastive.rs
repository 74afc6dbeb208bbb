//! ContrastiveLoss on the GPU against the float64 reference and PyTorch's public cases: both
//! distances, every reduction, soft labels, identical pairs, D up to 2048, the windowed path,
//! gradient options, finite differences, typed errors.
mod common;

use deepml::reference;
use deepml::*;
use rand::Rng;

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// Runs the loss; returns (loss, d e1, d e2) read back.
fn gpu(
    ctx: &LossContext,
    cfg: &ContrastiveLoss,
    a: &[f32],
    b: &[f32],
    y: &[f32],
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let ta = ctx.upload(a, &[n, d]).unwrap();
    let tb = ctx.upload(b, &[n, d]).unwrap();
    let ty = ctx.upload(y, &[n]).unwrap();
    let out = cfg.compute(ctx, &[&ta, &tb, &ty]).unwrap();
    let want_shape: &[usize] = if cfg.reduction == Reduction::None {
        &[n]
    } else {
        &[]
    };
    assert_eq!(out.loss.shape(), want_shape);
    (
        ctx.read(&out.loss).unwrap(),
        out.grad(ctx, 0).unwrap(),
        out.grad(ctx, 1).unwrap(),
    )
}

#[allow(clippy::too_many_arguments)]
fn check(
    label: &str,
    ctx: &LossContext,
    cfg: &ContrastiveLoss,
    a: &[f32],
    b: &[f32],
    y: &[f32],
    n: usize,
    d: usize,
    tol: f64,
) {
    let want = reference::contrastive(
        cfg,
        &common::to64(a),
        &common::to64(b),
        &[n, d],
        &common::to64(y),
        &[n],
    )
    .unwrap();
    let (loss, g1, g2) = gpu(ctx, cfg, a, b, y, n, d);
    common::assert_close(&format!("{label} loss"), &loss, &want.loss, tol, tol / 10.0);
    common::assert_close(
        &format!("{label} d e1"),
        &g1,
        &want.grads[0],
        tol,
        tol / 10.0,
    );
    common::assert_close(
        &format!("{label} d e2"),
        &g2,
        &want.grads[1],
        tol,
        tol / 10.0,
    );
}

/// Labels: mostly 0 / 1, some soft.
fn labels(r: &mut rand::rngs::SmallRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| {
            if i % 5 == 2 {
                r.gen_range(0.0..1.0)
            } else {
                f32::from(r.gen_bool(0.5) as u8)
            }
        })
        .collect()
}

#[test]
fn matches_the_reference_for_every_option() {
    let ctx = common::ctx();
    let mut r = common::rng(1);
    for (n, d) in [
        (1usize, 1usize),
        (9, 13),
        (70, 16),
        (33, 100),
        (5, 2048),
        (3, 3001),
    ] {
        let a = common::uniform(&mut r, n * d, -1.0, 1.0);
        // Half of the pairs close to each other, so that both sides of the hinge are taken.
        let b: Vec<f32> = a
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                if (i / d) % 2 == 0 {
                    v + r.gen_range(-0.05..0.05)
                } else {
                    r.gen_range(-1.0..1.0)
                }
            })
            .collect();
        let y = labels(&mut r, n);
        for distance in [Distance::Euclidean, Distance::Cosine] {
            for margin in [0.0, 0.5, 2.0, 40.0] {
                for reduction in REDUCTIONS {
                    let cfg = ContrastiveLoss {
                        margin,
                        distance,
                        reduction,
                    };
                    check(
                        &format!("[{n}, {d}] {distance:?} margin {margin} {reduction:?}"),
                        ctx,
                        &cfg,
                        &a,
                        &b,
                        &y,
                        n,
                        d,
                        5e-4,
                    );
                }
            }
        }
    }
}

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
        .map(|d| d.as_f64().unwrap())
        .collect();
    (shape, data)
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
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
        .filter(|c| c["loss"] == "ContrastiveLoss")
    {
        let name = case["name"].as_str().unwrap();
        let conf = &case["config"];
        let d = ContrastiveLoss::default();
        let cfg = ContrastiveLoss {
            margin: conf.get("margin").map_or(d.margin, |v| v.as_f64().unwrap()),
            distance: conf
                .get("distance")
                .map_or(Ok(d.distance), |v| Distance::parse(v.as_str().unwrap()))
                .unwrap(),
            reduction: conf
                .get("reduction")
                .map_or(Ok(d.reduction), |v| Reduction::parse(v.as_str().unwrap()))
                .unwrap(),
        };
        let inputs: Vec<Tensor> = ["embeddings1", "embeddings2", "label"]
            .iter()
            .map(|k| {
                let (s, v) = case_tensor(&case["inputs"][k]);
                ctx.upload(&f32s(&v), &s).unwrap()
            })
            .collect();
        let exp = &case["expected"];
        let (rtol, atol) = (
            case["tolerance"]["rtol"].as_f64().unwrap(),
            case["tolerance"]["atol"].as_f64().unwrap(),
        );
        seen += 1;
        let got = cfg.compute(ctx, &[&inputs[0], &inputs[1], &inputs[2]]);
        if exp["status"] == "error" {
            let e = got
                .err()
                .unwrap_or_else(|| panic!("{name}: expected an error"));
            assert_eq!(e.kind(), exp["kind"].as_str().unwrap(), "{name}: {e}");
            continue;
        }
        let out = got.unwrap_or_else(|e| panic!("{name}: {e}"));
        common::assert_close(
            &format!("{name} loss"),
            &ctx.read(&out.loss).unwrap(),
            &case_tensor(&exp["loss"]).1,
            rtol,
            atol,
        );
        for (i, g) in ["embeddings1", "embeddings2"].iter().enumerate() {
            let want = case_tensor(&exp["grads"][g]).1;
            common::assert_close(
                &format!("{name} d {g}"),
                &out.grad(ctx, i).unwrap(),
                &want,
                rtol,
                atol,
            );
        }
    }
    assert_eq!(seen, 11, "the public ContrastiveLoss cases");
}

#[test]
fn identical_pairs_have_finite_pytorch_gradients() {
    let ctx = common::ctx();
    let mut r = common::rng(2);
    let (n, d) = (6, 37);
    let a = common::uniform(&mut r, n * d, -2.0, 2.0);
    let y = [1.0, 0.0, 1.0, 0.0, 0.5, 0.0];
    for distance in [Distance::Euclidean, Distance::Cosine] {
        let cfg = ContrastiveLoss {
            distance,
            reduction: Reduction::None,
            ..Default::default()
        };
        let (loss, g1, g2) = gpu(ctx, &cfg, &a, &a, &y, n, d);
        assert!(
            loss.iter().chain(&g1).chain(&g2).all(|v| v.is_finite()),
            "{distance:?}"
        );
        if distance == Distance::Euclidean {
            check("identical euclidean", ctx, &cfg, &a, &a, &y, n, d, 1e-4);
        } else {
            // cos = 1 up to rounding: d ~ 0, the gradients are rounding noise around 0.
            let want = reference::contrastive(
                &cfg,
                &common::to64(&a),
                &common::to64(&a),
                &[n, d],
                &common::to64(&y),
                &[n],
            )
            .unwrap();
            common::assert_close("identical cosine loss", &loss, &want.loss, 1e-5, 1e-6);
            assert!(g1.iter().chain(&g2).all(|g| g.abs() < 1e-6), "{g1:?}");
        }
    }
    // Euclidean: d = sqrt(D) 1e-6 exactly (the offset), so a similar pair costs D 1e-12 and a
    // dissimilar one (margin - d)^2 with gradient -2 (margin - d) / sqrt(D) per coordinate.
    let cfg = ContrastiveLoss {
        reduction: Reduction::None,
        ..Default::default()
    };
    let (loss, g1, g2) = gpu(ctx, &cfg, &a, &a, &y, n, d);
    assert!((loss[0] as f64 - d as f64 * 1e-12).abs() < 1e-15);
    let want = -2.0 * (2.0 - (d as f64).sqrt() * 1e-6) / (d as f64).sqrt();
    assert!(
        (g1[d] as f64 - want).abs() < 1e-4 * want.abs(),
        "{} vs {want}",
        g1[d]
    );
    assert_eq!(g1[d], -g2[d]);
    // Zero embeddings with the cosine distance: norms clamped at 1e-8, no NaN.
    let cfg = ContrastiveLoss {
        distance: Distance::Cosine,
        ..Default::default()
    };
    let zeros = vec![0.0; 2 * 3];
    let (loss, g1, g2) = gpu(
        ctx,
        &cfg,
        &zeros,
        &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0],
        &[0.0, 1.0],
        2,
        3,
    );
    assert!(loss.iter().chain(&g1).chain(&g2).all(|v| v.is_finite()));
    check(
        "zero rows cosine",
        ctx,
        &cfg,
        &zeros,
        &[1.0, 2.0, 3.0, 0.0, 0.0, 0.0],
        &[0.0, 1.0],
        2,
        3,
        1e-5,
    );
}

#[test]
fn gradient_options() {
    let ctx = common::ctx();
    let mut r = common::rng(3);
    let (n, d) = (21, 50);
    let a = common::uniform(&mut r, n * d, -1.0, 1.0);
    let b = common::uniform(&mut r, n * d, -1.0, 1.0);
    let y = labels(&mut r, n);
    let cfg = ContrastiveLoss {
        margin: 5.0,
        ..Default::default()
    };
    let t: Vec<Tensor> = vec![
        ctx.upload(&a, &[n, d]).unwrap(),
        ctx.upload(&b, &[n, d]).unwrap(),
        ctx.upload(&y, &[n]).unwrap(),
    ];
    let inputs = [&t[0], &t[1], &t[2]];
    let base = cfg.compute(ctx, &inputs).unwrap();
    let (b1, b2) = (base.grad(ctx, 0).unwrap(), base.grad(ctx, 1).unwrap());
    assert!(b1.iter().any(|&g| g.abs() > 1e-4));
    let scaled = cfg
        .compute_with(ctx, &inputs, &GradOpts::scaled(0.25))
        .unwrap();
    for (s, g) in scaled.grad(ctx, 1).unwrap().iter().zip(&b2) {
        assert!((s - 0.25 * g).abs() <= 1e-6 * (1.0 + g.abs()));
    }
    let s1 = common::uniform(&mut r, n * d, -1.0, 1.0);
    let s2 = common::uniform(&mut r, n * d, -1.0, 1.0);
    let (i1, i2) = (
        ctx.upload(&s1, &[n, d]).unwrap(),
        ctx.upload(&s2, &[n, d]).unwrap(),
    );
    let opts = GradOpts {
        scale: -2.0,
        into: vec![Some(i1.clone()), Some(i2.clone())],
        accumulate: true,
    };
    let out = cfg.compute_with(ctx, &inputs, &opts).unwrap();
    assert!(out.grads[0].same_buffer(&i1) && out.grads[1].same_buffer(&i2));
    for (got, (s, g)) in [
        (ctx.read(&i1).unwrap(), (&s1, &b1)),
        (ctx.read(&i2).unwrap(), (&s2, &b2)),
    ] {
        for (x, (s, g)) in got.iter().zip(s.iter().zip(g.iter())) {
            assert!((x - (s - 2.0 * g)).abs() <= 1e-6 * (1.0 + x.abs()));
        }
    }
    // Accumulating needs both gradient tensors; the same tensor twice is refused.
    let opts = GradOpts {
        into: vec![Some(i1.clone())],
        accumulate: true,
        ..Default::default()
    };
    assert_eq!(
        cfg.compute_with(ctx, &inputs, &opts).err().unwrap().kind(),
        "invalid_input"
    );
    let opts = GradOpts {
        into: vec![Some(i1.clone()), Some(i1.clone())],
        ..Default::default()
    };
    assert_eq!(
        cfg.compute_with(ctx, &inputs, &opts).err().unwrap().kind(),
        "invalid_input"
    );
}

#[test]
fn finite_differences_on_the_gpu() {
    let ctx = common::ctx();
    let mut r = common::rng(4);
    let (n, d) = (4, 20);
    let a = common::uniform(&mut r, n * d, -1.0, 1.0);
    let b = common::uniform(&mut r, n * d, -1.0, 1.0);
    let y = [1.0, 0.0, 0.3, 0.0];
    for distance in [Distance::Euclidean, Distance::Cosine] {
        let cfg = ContrastiveLoss {
            margin: 4.0,
            distance,
            reduction: Reduction::Sum,
        };
        let (_, g1, g2) = gpu(ctx, &cfg, &a, &b, &y, n, d);
        for (which, grad) in [(0, &g1), (1, &g2)] {
            for i in [0, 17, 45, 79] {
                let h = 1e-2f32;
                let at = |delta: f32| {
                    let (mut a2, mut b2) = (a.clone(), b.clone());
                    if which == 0 {
                        a2[i] += delta;
                    } else {
                        b2[i] += delta;
                    }
                    gpu(ctx, &cfg, &a2, &b2, &y, n, d).0[0] as f64
                };
                let fd = (at(h) - at(-h)) / (2.0 * h as f64);
                let g = grad[i] as f64;
                assert!(
                    (fd - g).abs() <= 3e-3 * g.abs() + 3e-4,
                    "{distance:?} input {which} [{i}]: fd {fd:e}, grad {g:e}"
                );
            }
        }
    }
}

#[test]
fn windowed_path_matches_the_plain_one() {
    // Bindings of 1 KiB: [300, 16] takes 64-byte rows 16 to a window (where the labels' own
    // alignment asks for more rows per window, SwiftShader's 64, that many); [n, 200] one row
    // per window, or one aligned step of rows where the adapter's alignment asks for more
    // (SwiftShader: 8 rows of 800 bytes).
    let plain = common::ctx();
    let mut r = common::rng(5);
    let rows = (2 * common::aligned_units(800) + 1).max(9) as usize;
    let label_rows = common::aligned_units(4).max(16);
    for (n, d) in [(300usize, 16usize), (rows, 200)] {
        let small = if d == 16 {
            common::windowed_ctx(64 * label_rows)
        } else {
            common::windowed_ctx_units(800, 1)
        };
        let a = common::uniform(&mut r, n * d, -1.0, 1.0);
        let b = common::uniform(&mut r, n * d, -1.0, 1.0);
        let y = labels(&mut r, n);
        for distance in [Distance::Euclidean, Distance::Cosine] {
            for reduction in REDUCTIONS {
                let cfg = ContrastiveLoss {
                    margin: 3.0,
                    distance,
                    reduction,
                };
                let p = gpu(plain, &cfg, &a, &b, &y, n, d);
                let w = gpu(&small, &cfg, &a, &b, &y, n, d);
                assert!(
                    p.1 == w.1 && p.2 == w.2,
                    "[{n}, {d}] {distance:?} {reduction:?}: windowed gradients"
                );
                if reduction == Reduction::None {
                    assert_eq!(p.0, w.0);
                }
                let want = reference::contrastive(
                    &cfg,
                    &common::to64(&a),
                    &common::to64(&b),
                    &[n, d],
                    &common::to64(&y),
                    &[n],
                )
                .unwrap();
                common::assert_close("windowed loss", &w.0, &want.loss, 2e-4, 2e-5);
            }
        }
    }
}

#[test]
fn results_are_bit_identical_from_run_to_run() {
    let ctx = common::ctx();
    let mut r = common::rng(6);
    let (n, d) = (500, 300);
    let a = common::uniform(&mut r, n * d, -1.0, 1.0);
    let b = common::uniform(&mut r, n * d, -1.0, 1.0);
    let y = labels(&mut r, n);
    let cfg = ContrastiveLoss {
        distance: Distance::Cosine,
        ..Default::default()
    };
    let first = gpu(ctx, &cfg, &a, &b, &y, n, d);
    for _ in 0..2 {
        let again = gpu(ctx, &cfg, &a, &b, &y, n, d);
        assert_eq!(first.0[0].to_bits(), again.0[0].to_bits());
        assert!(first.1 == again.1 && first.2 == again.2);
    }
}

#[test]
fn typed_errors() {
    let ctx = common::ctx();
    let a = ctx.upload(&[0.5; 12], &[3, 4]).unwrap();
    let b = ctx.upload(&[0.1; 12], &[3, 4]).unwrap();
    let y = ctx.upload(&[1.0, 0.0, 1.0], &[3]).unwrap();
    let d = ContrastiveLoss::default();
    let kind = |r: Result<LossOutput>| r.expect_err("an error").kind();
    assert!(d.compute(ctx, &[&a, &b, &y]).is_ok());
    // Config domains.
    for margin in [-1.0, f64::NAN, f64::INFINITY] {
        assert_eq!(
            kind(
                ContrastiveLoss {
                    margin,
                    ..d.clone()
                }
                .compute(ctx, &[&a, &b, &y])
            ),
            "invalid_config"
        );
    }
    assert_eq!(
        Distance::parse("manhattan").unwrap_err().kind(),
        "invalid_config"
    );
    // Shapes.
    let b2 = ctx.upload(&[0.1; 12], &[4, 3]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&a, &b2, &y])), "invalid_input");
    let y2 = ctx.upload(&[1.0, 0.0], &[2]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&a, &b, &y2])), "invalid_input");
    let y31 = ctx.upload(&[1.0, 0.0, 1.0], &[3, 1]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&a, &b, &y31])), "invalid_input");
    let flat = ctx.upload(&[0.5; 12], &[12]).unwrap();
    let y12 = ctx.upload(&[0.0; 12], &[12]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&flat, &flat, &y12])), "invalid_input");
    // Empty batch and empty rows.
    let e = ctx.upload(&[], &[0, 4]).unwrap();
    let ye = ctx.upload(&[], &[0]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&e, &e, &ye])), "invalid_input");
    let e0 = ctx.upload(&[], &[3, 0]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&e0, &e0, &y])), "invalid_input");
    // Element types and arity.
    let yi = ctx.upload_labels(&[1, 0, 1], &[3]).unwrap();
    assert_eq!(kind(d.compute(ctx, &[&a, &b, &yi])), "invalid_input");
    assert_eq!(kind(d.compute(ctx, &[&a, &b])), "invalid_input");
}

#[test]
fn shaders_validate() {
    for s in deepml::all_shader_variants()
        .iter()
        .filter(|s| s.name == "contrastive")
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
