//! Property tests: random shapes (one element, odd sizes), random configs within their domains,
//! random values (moderate, ±200 logits, ±1e30, subnormals, zeros), every loss on the GPU
//! against the float64 reference with the tolerances of the cases format.
mod common;

use std::collections::BTreeMap;

use deepml::cases::{
    self, Case, DType, Evaluator, Expected, ReferenceEvaluator, TensorData, Tolerance,
};
use deepml::conformance::GpuEvaluator;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde_json::{json, Value};

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

fn tensor(shape: &[usize], data: &[f32]) -> TensorData {
    TensorData {
        shape: shape.to_vec(),
        dtype: DType::F32,
        data: data.iter().map(|&v| v as f64).collect(),
    }
}

fn case(loss: &str, config: Value, inputs: Vec<(&str, TensorData)>) -> Case {
    Case {
        name: format!("property {loss}"),
        loss: loss.into(),
        config: config.as_object().cloned().unwrap_or_default(),
        inputs: inputs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        grad_wrt: cases::differentiable_inputs(loss)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        expected: Expected::Error {
            kind: String::new(),
        },
        tolerance: Tolerance {
            rtol: 1e-4,
            atol: 1e-5,
        },
    }
}

/// Elementwise `|got - exp| <= rtol |exp| + max(atol max|exp|, floor)`.
fn close(what: &str, got: &TensorData, want: &[f64], floor: f64) -> Result<(), TestCaseError> {
    let (rtol, atol) = (1e-4, 1e-5);
    prop_assert_eq!(got.data.len(), want.len(), "{}: length", what);
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.data.iter().zip(want).enumerate() {
        let tol = rtol * w.abs() + (atol * scale).max(floor);
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

/// The GPU must match the float64 reference, or fail with the same error kind. Results that
/// overflow float32 are left out (no f32 library can match them). A value whose O(1) terms
/// cancel to (nearly) zero (a Jaccard loss of 1e-7 is `1 - I/U` with I/U just under 1; a
/// gradient that cancels exactly) can only be matched to float32's resolution of those terms:
/// about 2 ulps of 1, 2.4e-7 for a loss and 2e-7 for a gradient, absolute.
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
            close(&format!("{c:?}\nloss"), &g.loss, &round(&w.loss), 2.4e-7)?;
            for (name, wt) in &w.grads {
                let gt = g
                    .grads
                    .get(name)
                    .ok_or_else(|| TestCaseError::fail(format!("no gradient {name}")))?;
                close(&format!("{c:?}\ngrad {name}"), gt, &round(wt), 2e-7)?;
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
        .unwrap_or(24);
    ProptestConfig {
        cases,
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
        let a = values(n, false).new_tree(&mut runner).unwrap().current();
        let b = values(n, false).new_tree(&mut runner).unwrap().current();
        // Squares of differences over 1e18 overflow float32, as they do in PyTorch's float32.
        prop_assume!(which == 2 || a.iter().zip(&b).all(|(x, y)| (x - y).abs() < 1e18));
        let (loss, cfg, names) = match which {
            0 => ("RMSELoss", json!({"eps": eps}), ["output", "target"]),
            1 => ("MSELoss", json!({"reduction": red}), ["input", "target"]),
            _ => ("L1Loss", json!({"reduction": red}), ["input", "target"]),
        };
        check(case(loss, cfg, vec![(names[0], tensor(&s, &a)), (names[1], tensor(&s, &b))]))?;
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
        check(case("BCEWithLogitsLoss", cfg, vec![("input", tensor(&s, &x)), ("target", tensor(&s, &t))]))?;
    }

    #[test]
    fn weighted_bce(n in 1usize..3000, seed in any::<u64>(), red in reduction(), column in any::<bool>(),
                    w_p in 0.0f64..4.0, w_n in 0.0f64..4.0, epsilon in prop_oneof![Just(0.0), Just(1e-7), Just(1e-3)]) {
        let mut runner = proptest::test_runner::TestRunner::new_with_rng(Default::default(), proptest::test_runner::TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &seed.to_le_bytes().repeat(4)));
        let x = values(n, true).new_tree(&mut runner).unwrap().current();
        let y = target_values(n).new_tree(&mut runner).unwrap().current();
        let xs = if column { vec![n, 1] } else { vec![n] };
        let cfg = json!({"w_p": w_p, "w_n": w_n, "epsilon": epsilon, "reduction": red});
        check(case("WeightedBCEWithLogitsLoss", cfg, vec![("logits", tensor(&xs, &x)), ("labels", tensor(&[n], &y))]))?;
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
        check(case(loss, cfg, vec![("output", tensor(&s, &x)), ("target", tensor(&s, &t))]))?;
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
