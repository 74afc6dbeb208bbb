//! Property tests: random shapes (one element, odd sizes), random configs within their domains,
//! random values (moderate, ±200 logits, ±1e30, subnormals, zeros), every loss on the GPU
//! against the float64 reference with the tolerances of the cases format.
mod common;

use std::collections::BTreeMap;

use deepml::cases::{self, Case, DType, Evaluator, ReferenceEvaluator, TensorData};
use deepml::conformance::GpuEvaluator;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::json;

/// Values of every kind the issue names, mostly moderate ones.
fn value(logits: bool) -> impl Strategy<Value = f32> {
    let big = if logits { 200.0f32 } else { 1e30 };
    prop_oneof![
        8 => -3.0f32..3.0,
        1 => prop_oneof![Just(big), Just(-big), Just(200.0f32), Just(-200.0f32)],
        1 => prop_oneof![Just(1e-40f32), Just(-1e-40f32), Just(0.0f32), Just(1e-30f32)],
    ]
}

fn values(n: usize, logits: bool) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(value(logits), n)
}

fn target_values(n: usize) -> impl Strategy<Value = Vec<f32>> {
    prop::collection::vec(
        prop_oneof![3 => Just(0.0f32), 3 => Just(1.0f32), 2 => 0.0f32..1.0],
        n,
    )
}

fn shape() -> impl Strategy<Value = Vec<usize>> {
    prop_oneof![
        Just(vec![1]),
        (1usize..5000).prop_map(|n| vec![n]),
        prop::collection::vec(1usize..9, 2..5),
    ]
}

fn seg_shape() -> impl Strategy<Value = Vec<usize>> {
    (
        1usize..4,
        1usize..6,
        prop::collection::vec(1usize..13, 0..3),
    )
        .prop_map(|(n, c, rest)| {
            let mut s = vec![n, c];
            s.extend(rest);
            s
        })
}

/// Elementwise `|got - exp| <= rtol |exp| + max(atol max|exp|, floor) + 20 spread`, where
/// `spread` is how far the float64 reference itself moves when every float input moves by one
/// float32 rounding (the cases format's policy: never below 20x float32's own error, so a
/// well-conditioned value is held to the base tolerance and an ill-conditioned one, such as the
/// arcface margin near theta = 0, to what float32 can know of it).
fn close(
    what: &str,
    got: &TensorData,
    want: &[f64],
    spread: &[f64],
    floor: f64,
) -> Result<(), TestCaseError> {
    let (rtol, atol) = (1e-4, 1e-5);
    prop_assert_eq!(got.data.len(), want.len(), "{}: length", what);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = floor * scale.max(1.0);
    for (i, (g, w)) in got.data.iter().zip(want).enumerate() {
        let tol = rtol * w.abs() + (atol * scale).max(floor) + 20.0 * spread[i];
        prop_assert!(
            (g - w).abs() <= tol,
            "{}[{}]: got {}, want {} (tol {:e})",
            what,
            i,
            g,
            w,
            tol
        );
    }
    Ok(())
}

/// The case with every float input moved by 8 float32 roundings, up or down by index (GPU
/// transcendentals are allowed thousands of ulps by WGSL; 8 covers what lavapipe shows).
fn perturbed(c: &Case, pattern: usize) -> Case {
    let mut p = c.clone();
    for t in p.inputs.values_mut().filter(|t| t.dtype == DType::F32) {
        for (i, v) in t.data.iter_mut().enumerate() {
            // Patterns 0 and 1: a hashed sign and its opposite; 2: alternating signs, so that
            // neighbouring elements move apart (a scale change alone would leave normalised
            // rows, and so the angular loss, unchanged).
            let s = match pattern {
                0 | 1 if (i * 2654435761) % 7 < 3 => 1.0 - 2.0 * pattern as f64,
                0 | 1 => 2.0 * pattern as f64 - 1.0,
                _ => {
                    if i % 2 == 0 {
                        1.0
                    } else {
                        -1.0
                    }
                }
            };
            *v *= 1.0 + s * 8.0 * f32::EPSILON as f64;
        }
    }
    p
}

/// Per element of the loss and of each gradient: the largest move of the reference under the
/// perturbations above.
fn spread(c: &Case, base: &cases::Evaluated) -> Vec<Vec<f64>> {
    let tensors = |e: &cases::Evaluated| -> Vec<Vec<f64>> {
        std::iter::once(e.loss.data.clone())
            .chain(e.grads.values().map(|g| g.data.clone()))
            .collect()
    };
    let b = tensors(base);
    let mut out: Vec<Vec<f64>> = b.iter().map(|t| vec![0.0; t.len()]).collect();
    for pattern in 0..3 {
        if let Some(Ok(e)) = ReferenceEvaluator.eval(&perturbed(c, pattern)) {
            for (o, (pt, bt)) in out.iter_mut().zip(tensors(&e).iter().zip(&b)) {
                for (k, (x, y)) in pt.iter().zip(bt).enumerate() {
                    let d = (x - y).abs();
                    o[k] = o[k].max(if d.is_finite() { d } else { 0.0 });
                }
            }
        }
    }
    out
}

/// The GPU must match the float64 reference, or fail with the same error kind. Results that
/// overflow float32 are left out (no f32 library can match them). A value whose terms cancel
/// to (nearly) zero (a Jaccard loss of 1e-7 is `1 - I/U` with I/U just under 1; a gradient that
/// cancels exactly, as the cosine distance's at identical rows) can only be matched to float32's
/// resolution of those terms: a floor of 2.4e-7 for a loss and 1e-6 for a gradient (absolute,
/// or relative to the largest expected value where that is over 1).
fn check(c: Case) -> Result<(), TestCaseError> {
    let ctx = common::ctx();
    let want = ReferenceEvaluator
        .eval(&c)
        .expect("the reference implements every loss");
    let got = GpuEvaluator { ctx }
        .eval(&c)
        .ok_or_else(|| TestCaseError::fail(format!("{} not on the GPU", c.loss)))?;
    match (want, got) {
        (Ok(w), Ok(g)) => {
            let all = std::iter::once(&w.loss).chain(w.grads.values());
            let representable = all
                .flat_map(|t| &t.data)
                .all(|v| v.is_finite() && v.abs() < 1e37);
            prop_assume!(representable);
            // The best a float32 result can be is the float64 value rounded to float32.
            let round =
                |t: &TensorData| t.data.iter().map(|&v| v as f32 as f64).collect::<Vec<_>>();
            prop_assert_eq!(&g.loss.shape, &w.loss.shape);
            let sp = spread(&c, &w);
            close(
                &format!("{c:?}\nloss"),
                &g.loss,
                &round(&w.loss),
                &sp[0],
                2.4e-7,
            )?;
            for (k, (name, wt)) in w.grads.iter().enumerate() {
                let gt = g
                    .grads
                    .get(name)
                    .ok_or_else(|| TestCaseError::fail(format!("no gradient {name}")))?;
                close(
                    &format!("{c:?}\ngrad {name}"),
                    gt,
                    &round(wt),
                    &sp[k + 1],
                    1e-6,
                )?;
            }
            Ok(())
        }
        (Err(w), Err(g)) => {
            prop_assert_eq!(w.kind(), g.kind(), "{:?}: {} vs {}", c, w, g);
            Ok(())
        }
        (w, g) => Err(TestCaseError::fail(format!(
            "{c:?}: reference {:?}, GPU {:?}",
            w.map(|_| ()),
            g.map(|_| ())
        ))),
    }
}

fn config() -> ProptestConfig {
    let cases = std::env::var("DEEPML_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    // A fixed seed by default, so CI runs the same cases every time; DEEPML_PROPTEST_SEED=random
    // (or a number) explores others.
    let rng_seed = match std::env::var("DEEPML_PROPTEST_SEED").as_deref() {
        Ok("random") => proptest::test_runner::RngSeed::Random,
        Ok(n) => n
            .parse()
            .unwrap_or(proptest::test_runner::RngSeed::Fixed(20261128)),
        Err(_) => proptest::test_runner::RngSeed::Fixed(20261128),
    };
    ProptestConfig {
        cases,
        rng_seed,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    }
}

fn reduction() -> impl Strategy<Value = &'static str> {
    prop_oneof![Just("mean"), Just("sum"), Just("none")]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn regression_losses(s in shape(), seed in any::<u64>(), which in 0usize..3, red in reduction(),
                         eps in prop_oneof![Just(0.0), Just(1e-6), Just(0.5)]) {
        let n: usize = s.iter().product();
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(Default::default(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4)));
        // ±1e30 for L1; MSE and RMSE square the differences, so they get ±200 instead.
        let a = values(n, which != 2).new_tree(&mut runner).unwrap().current();
        let b = values(n, which != 2).new_tree(&mut runner).unwrap().current();
        // Squares of differences over 1e18 overflow float32, and when every difference is below
        // 1e-19 their squares underflow to 0, as in PyTorch's float32 (documented in the README).
        let dmax = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        prop_assume!(which == 2 || (dmax < 1e18 && (dmax == 0.0 || dmax > 1e-18)));
        let (loss, cfg, names) = match which {
            0 => ("RMSELoss", json!({"eps": eps}), ["output", "target"]),
            1 => ("MSELoss", json!({"reduction": red}), ["input", "target"]),
            _ => ("L1Loss", json!({"reduction": red}), ["input", "target"]),
        };
        check(common::case(loss, cfg, vec![(names[0], common::tensor_data(&s, &a)), (names[1], common::tensor_data(&s, &b))]))?;
    }

    #[test]
    fn bce_with_logits(s in shape(), seed in any::<u64>(), red in reduction(), weighted in any::<bool>(), pos in any::<bool>()) {
        let n: usize = s.iter().product();
        let last = *s.last().unwrap();
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(Default::default(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4)));
        let x = values(n, true).new_tree(&mut runner).unwrap().current();
        let t = target_values(n).new_tree(&mut runner).unwrap().current();
        let w = prop::collection::vec(0.0f32..3.0, last).new_tree(&mut runner).unwrap().current();
        let mut cfg = json!({"reduction": red});
        if weighted { cfg["weight"] = json!({"shape": [last], "dtype": "float32", "data": w}); }
        if pos { cfg["pos_weight"] = json!({"shape": [last], "dtype": "float32", "data": w.iter().rev().collect::<Vec<_>>()}); }
        check(common::case("BCEWithLogitsLoss", cfg, vec![("input", common::tensor_data(&s, &x)), ("target", common::tensor_data(&s, &t))]))?;
    }

    #[test]
    fn weighted_bce(n in 1usize..3000, seed in any::<u64>(), red in reduction(), column in any::<bool>(),
                    w_p in 0.0f64..4.0, w_n in 0.0f64..4.0, epsilon in prop_oneof![Just(0.0), Just(1e-7), Just(1e-3)]) {
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(Default::default(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4)));
        let x = values(n, true).new_tree(&mut runner).unwrap().current();
        let y = target_values(n).new_tree(&mut runner).unwrap().current();
        let xs = if column { vec![n, 1] } else { vec![n] };
        let cfg = json!({"w_p": w_p, "w_n": w_n, "epsilon": epsilon, "reduction": red});
        check(common::case("WeightedBCEWithLogitsLoss", cfg, vec![("logits", common::tensor_data(&xs, &x)), ("labels", common::tensor_data(&[n], &y))]))?;
    }

    #[test]
    fn segmentation(s in seg_shape(), seed in any::<u64>(), dice in any::<bool>(), multi in any::<bool>(), per_class in any::<bool>(),
                    eps in prop_oneof![Just(0.0), Just(1e-7), Just(1e-3), Just(1.0)], smooth in prop_oneof![Just(0.0), Just(0.5), Just(1.0)]) {
        let n: usize = s.iter().product();
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(Default::default(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4)));
        let x = values(n, true).new_tree(&mut runner).unwrap().current();
        let t = target_values(n).new_tree(&mut runner).unwrap().current();
        let (loss, cfg) = if dice {
            ("DiceLoss", json!({"is_multiclass": multi, "per_class": per_class, "eps": eps, "smooth": smooth}))
        } else {
            ("JaccardLoss", json!({"is_multiclass": multi, "per_class": per_class, "eps": eps}))
        };
        check(common::case(loss, cfg, vec![("output", common::tensor_data(&s, &x)), ("target", common::tensor_data(&s, &t))]))?;
    }
}

fn labels(shape: &[usize], data: &[i64]) -> TensorData {
    TensorData {
        shape: shape.to_vec(),
        dtype: DType::I64,
        data: data.iter().map(|&v| v as f64).collect(),
    }
}

fn runner(seed: u64) -> proptest::test_runner::TestRunner {
    proptest::test_runner::TestRunner::new_with_rng(
        Default::default(),
        proptest::test_runner::TestRng::from_seed(
            proptest::test_runner::RngAlgorithm::ChaCha,
            &seed.to_le_bytes().repeat(4),
        ),
    )
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cross_entropy(n in 1usize..7, c in 1usize..40, d in prop::collection::vec(1usize..5, 0..2), seed in any::<u64>(),
                     red in reduction(), weighted in any::<bool>(), ls in prop_oneof![Just(0.0), 0.0f64..=1.0],
                     ignore in prop_oneof![Just(-100i64), Just(255i64), Just(0i64)]) {
        let mut shape = vec![n, c];
        shape.extend(&d);
        let mut tshape = vec![n];
        tshape.extend(&d);
        let (numel, tn): (usize, usize) = (shape.iter().product(), tshape.iter().product());
        let mut r = runner(seed);
        let x = values(numel, true).new_tree(&mut r).unwrap().current();
        let y = prop::collection::vec(prop_oneof![6 => 0i64..c as i64, 1 => Just(ignore)], tn).new_tree(&mut r).unwrap().current();
        let w = prop::collection::vec(0.0f32..2.0, c).new_tree(&mut r).unwrap().current();
        let mut cfg = json!({"reduction": red, "label_smoothing": ls, "ignore_index": ignore});
        if weighted { cfg["weight"] = json!({"shape": [c], "dtype": "float32", "data": w}); }
        check(common::case("CrossEntropyLoss", cfg, vec![("input", common::tensor_data(&shape, &x)), ("target", labels(&tshape, &y))]))?;
    }

    #[test]
    // D >= 2: with D = 1 the cosine is exactly ±1 and its gradient an exact cancellation that
    // float32 leaves as rounding noise scaled by 1/|x| (a degenerate geometry, not a loss).
    fn contrastive(n in 1usize..20, d in 2usize..70, seed in any::<u64>(), red in reduction(), cosine in any::<bool>(),
                   margin in prop_oneof![Just(0.0), 0.0f64..5.0]) {
        let mut r = runner(seed);
        let a = values(n * d, true).new_tree(&mut r).unwrap().current();
        // Some pairs identical (distance 0), the rest independent.
        let mut b = values(n * d, true).new_tree(&mut r).unwrap().current();
        for i in (0..n).step_by(3) { b[i * d..(i + 1) * d].copy_from_slice(&a[i * d..(i + 1) * d]); }
        let y = target_values(n).new_tree(&mut r).unwrap().current();
        let cfg = json!({"margin": margin, "reduction": red, "distance": if cosine { "cosine" } else { "euclidean" }});
        check(common::case("ContrastiveLoss", cfg, vec![("embeddings1", common::tensor_data(&[n, d], &a)), ("embeddings2", common::tensor_data(&[n, d], &b)), ("label", common::tensor_data(&[n], &y))]))?;
    }

    #[test]
    // in_features >= 2, for the same reason: a normalised 1-D vector is ±1, its gradient an exact
    // cancellation.
    fn angular(n in 1usize..10, fin in 2usize..40, fout in 1usize..30, seed in any::<u64>(), red in reduction(),
               kind in prop_oneof![Just("arcface"), Just("sphereface"), Just("cosface")], normalize in any::<bool>(),
               s in prop_oneof![Just(None), (0.0f64..64.0).prop_map(Some)], m in prop_oneof![Just(None), (0.0f64..0.8).prop_map(Some)]) {
        let mut r = runner(seed);
        let x = prop::collection::vec(-3.0f32..3.0, n * fin).new_tree(&mut r).unwrap().current();
        let w = prop::collection::vec(-1.0f32..1.0, fout * fin).new_tree(&mut r).unwrap().current();
        let y = prop::collection::vec(0i64..fout as i64, n).new_tree(&mut r).unwrap().current();
        let mut cfg = json!({"in_features": fin, "out_features": fout, "loss_type": kind, "normalize_weight": normalize, "reduction": red});
        if let Some(s) = s { cfg["s"] = json!(s); }
        if let Some(m) = m { cfg["m"] = json!(if kind == "sphereface" { 1.0 + 2.0 * m } else { m }); }
        // theta within 0.045 of 0 or pi: sin(theta) from cos(theta) in float32 loses digits
        // (an error of 1e-7 in the cosine is 1e-3 of the sine there), as it does in PyTorch; the
        // public cases test that region with tolerances scaled by PyTorch's own float32 error.
        let norm = |v: &[f32]| v.iter().map(|&a| (a as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
        let well_conditioned = (0..n).all(|i| {
            let (xi, wy) = (&x[i * fin..(i + 1) * fin], &w[y[i] as usize * fin..(y[i] as usize + 1) * fin]);
            let dot: f64 = xi.iter().zip(wy).map(|(&a, &b)| a as f64 * b as f64).sum();
            let u = dot / norm(xi) / if normalize { norm(wy) } else { 1.0 };
            u.abs() < 0.999
        });
        prop_assume!(well_conditioned);
        check(common::case("AngularPenaltySMLoss", cfg, vec![("x", common::tensor_data(&[n, fin], &x)), ("labels", labels(&[n], &y)), ("weight", common::tensor_data(&[fout, fin], &w))]))?;
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    // segmentation_models_pytorch's FocalLoss and TverskyLoss: every mode, random arguments
    // within their domains, ignored elements, extreme logits.
    fn smp_losses(s in seg_shape(), seed in any::<u64>(), tversky in any::<bool>(),
                  mode in prop_oneof![Just("binary"), Just("multiclass"), Just("multilabel")],
                  red in prop_oneof![Just("mean"), Just("sum"), Just("none")], normalized in any::<bool>(),
                  alpha in prop_oneof![Just(None), (0.0f64..1.0).prop_map(Some)], beta in 0.0f64..1.0,
                  gamma in prop_oneof![Just(0.0), Just(1.0), Just(2.0), 0.0f64..4.0],
                  smooth in prop_oneof![Just(0.0), 0.0f64..2.0], ignore in any::<bool>()) {
        let mut r = runner(seed);
        let numel: usize = s.iter().product();
        let x = values(numel, true).new_tree(&mut r).unwrap().current();
        let c = s[1];
        let mut ts = vec![s[0]];
        ts.extend(&s[2..]);
        let y = if mode == "multiclass" {
            let tn: usize = ts.iter().product();
            let y = prop::collection::vec(prop_oneof![6 => 0i64..c as i64, 1 => Just(255i64)], tn).new_tree(&mut r).unwrap().current();
            let y: Vec<i64> = if ignore && !tversky { y } else { y.into_iter().map(|v| v % c as i64).collect() };
            labels(&ts, &y)
        } else {
            let mut t = target_values(numel).new_tree(&mut r).unwrap().current();
            if ignore && !tversky {
                for v in t.iter_mut().step_by(7) { *v = 255.0; }
            }
            common::tensor_data(&s, &t)
        };
        let cfg = if tversky {
            let mut cfg = json!({"mode": mode, "alpha": alpha.unwrap_or(0.5), "beta": beta, "gamma": gamma, "smooth": smooth});
            if mode == "binary" && c != 1 { cfg["mode"] = json!("multilabel"); }
            cfg
        } else {
            let ignore_on = ignore && red != "none";
            let mut cfg = json!({"mode": mode, "gamma": gamma, "reduction": red, "normalized": normalized});
            if let Some(a) = alpha { cfg["alpha"] = json!(a); }
            if ignore_on { cfg["ignore_index"] = json!(255); }
            cfg
        };
        // Targets of 255 without ignore_index are out of [0, 1] for the binary losses: keep
        // them only where they are ignored.
        let y = if !tversky && ignore && red == "none" && mode != "multiclass" {
            let t: Vec<f32> = y.data.iter().map(|&v| if v == 255.0 { 1.0 } else { v as f32 }).collect();
            common::tensor_data(&s, &t)
        } else if !tversky && ignore && red == "none" {
            let l: Vec<i64> = y.data.iter().map(|&v| (v as i64) % c as i64).collect();
            labels(&ts, &l)
        } else {
            y
        };
        let loss = if tversky { "TverskyLoss" } else { "FocalLoss" };
        check(common::case(loss, cfg, vec![("y_pred", common::tensor_data(&s, &x)), ("y_true", y)]))?;
    }
}

#[test]
fn property_inputs_cover_the_named_kinds() {
    // The value strategy really produces ±1e30, ±200, subnormals and zeros.
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let v: Vec<f32> = (0..2000)
        .map(|_| value(false).new_tree(&mut runner).unwrap().current())
        .collect();
    assert!(v.iter().any(|x| x.abs() == 1e30));
    assert!(v.iter().any(|x| x.abs() == 200.0));
    assert!(v.iter().any(|x| *x != 0.0 && x.abs() < f32::MIN_POSITIVE));
    let _ = BTreeMap::<u8, u8>::new();
}
