//! Checking an evaluator's answer against a case: element-wise tolerances scaled by the
//! expected tensor's largest magnitude, NaN where NaN is expected, and the error kind of an
//! expected error.

use std::collections::BTreeMap;

use super::{Case, Evaluated, Expected, TensorData, Tolerance};
use crate::error::Result;

/// The outcome of one case.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Every element is within the tolerance, or the expected error came.
    Pass {
        /// The largest error ratio (at most 1; 0 for an error case).
        worst: f64,
    },
    /// An element is out of the tolerance, a value or shape is missing or wrong, or the error
    /// is not the expected one.
    Fail {
        /// The largest error ratio (above 1; infinity where no ratio applies).
        worst: f64,
        /// What failed, for a human.
        detail: String,
    },
    /// The evaluator does not implement the case's loss.
    Skip {
        /// Why the case was skipped.
        reason: String,
    },
}

/// Compares an evaluator's answer with what the case expects. The ratio of an element is
/// `|got - exp| / (rtol |exp| + atol max_abs(exp tensor))`; a zero denominator gives 0 for equal
/// values and infinity otherwise, and NaN expected matches NaN got. An error case passes only
/// on an error of the expected kind.
pub fn check_case(case: &Case, got: Option<Result<Evaluated>>) -> Verdict {
    let Some(got) = got else {
        return Verdict::Skip {
            reason: format!("{} is not implemented by this evaluator", case.loss),
        };
    };
    let fail = |detail: String| Verdict::Fail {
        worst: f64::INFINITY,
        detail,
    };
    match (&case.expected, got) {
        (Expected::Error { kind }, Err(e)) if e.kind() == kind => Verdict::Pass { worst: 0.0 },
        (Expected::Error { kind }, Err(e)) => fail(format!(
            "expected an {kind} error, got a {} error: {e}",
            e.kind()
        )),
        (Expected::Error { kind }, Ok(_)) => fail(format!("expected an {kind} error, got a value")),
        (Expected::Ok { .. }, Err(e)) => {
            fail(format!("expected a value, got a {} error: {e}", e.kind()))
        }
        (Expected::Ok { loss, grads }, Ok(got)) => compare(case, loss, grads, &got),
    }
}

/// The loss and every gradient of `grad_wrt`, against the expected values.
fn compare(
    case: &Case,
    loss: &TensorData,
    grads: &BTreeMap<String, TensorData>,
    got: &Evaluated,
) -> Verdict {
    let mut pairs = vec![("loss".to_string(), Some(loss), Some(&got.loss))];
    for name in &case.grad_wrt {
        pairs.push((format!("grad {name}"), grads.get(name), got.grads.get(name)));
    }
    let mut worst = Worst {
        ratio: 0.0,
        detail: String::new(),
    };
    for (label, exp, got) in pairs {
        let (Some(exp), Some(got)) = (exp, got) else {
            let missing = if exp.is_none() {
                "expected value"
            } else {
                "computed value"
            };
            return Verdict::Fail {
                worst: f64::INFINITY,
                detail: format!("{label}: no {missing}"),
            };
        };
        if exp.shape != got.shape || exp.data.len() != got.data.len() {
            return Verdict::Fail {
                worst: f64::INFINITY,
                detail: format!("{label}: shape {:?}, expected {:?}", got.shape, exp.shape),
            };
        }
        worst.update(&label, exp, got, case.tolerance);
    }
    if worst.ratio <= 1.0 {
        Verdict::Pass { worst: worst.ratio }
    } else {
        Verdict::Fail {
            worst: worst.ratio,
            detail: worst.detail,
        }
    }
}

/// The worst element seen so far.
struct Worst {
    ratio: f64,
    detail: String,
}

impl Worst {
    fn update(&mut self, label: &str, exp: &TensorData, got: &TensorData, tol: Tolerance) {
        let max_abs = exp
            .data
            .iter()
            .filter(|v| v.is_finite())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        let scale = tol.atol * max_abs;
        for (i, (&g, &e)) in got.data.iter().zip(&exp.data).enumerate() {
            let r = element_ratio(g, e, tol.rtol, scale);
            if r > self.ratio {
                self.ratio = r;
                self.detail = format!(
                    "{label}[{i}]: got {g:e}, expected {e:e} (error ratio {r:.3}; rtol {}, atol {})",
                    tol.rtol, tol.atol
                );
            }
        }
    }
}

/// `|got - exp| / (rtol |exp| + scale)`, never NaN.
pub(super) fn element_ratio(got: f64, exp: f64, rtol: f64, scale: f64) -> f64 {
    if exp.is_nan() || got.is_nan() {
        return if exp.is_nan() && got.is_nan() {
            0.0
        } else {
            f64::INFINITY
        };
    }
    if exp.is_infinite() || got.is_infinite() {
        return if exp == got { 0.0 } else { f64::INFINITY };
    }
    let diff = (got - exp).abs();
    let denom = rtol * exp.abs() + scale;
    if diff == 0.0 {
        0.0
    } else if denom == 0.0 {
        f64::INFINITY
    } else {
        diff / denom
    }
}

/// A copy of `case` whose expected values are what was computed (for `deepml eval`).
pub fn evaluated_case(case: &Case, got: &Result<Evaluated>) -> Case {
    let expected = match got {
        Ok(ev) => Expected::Ok {
            loss: ev.loss.clone(),
            grads: ev.grads.clone(),
        },
        Err(e) => Expected::Error {
            kind: e.kind().to_string(),
        },
    };
    Case {
        expected,
        ..case.clone()
    }
}
