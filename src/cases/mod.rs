//! Conformance cases in the `deepml-cases/1` format (tests/cases/FORMAT.md): reading,
//! writing, turning a case's config into a loss, and checking an evaluator's answer.
//!
//! The reader takes hostile files: anything malformed (wrong types, negative or overflowing
//! shapes, a data length that is not the shape's product, truncated JSON) is an
//! [`Error::Cases`], never a panic, and nothing is allocated from a declared shape.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

mod check;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::{SerializeSeq, SerializeStruct, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// The format tag of the files this module reads and writes.
pub const FORMAT: &str = "deepml-cases/1";

// ---------------------------------------------------------------------------------------------
// The file's data model.

/// A whole cases file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CasesFile {
    /// The format tag, [`FORMAT`].
    pub format: String,
    /// Free-form information (generator, versions, date); `null` when absent.
    #[serde(default)]
    pub meta: Value,
    /// The cases, each with a unique name.
    pub cases: Vec<Case>,
}

/// One conformance case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// The case's name, unique in its file.
    pub name: String,
    /// The loss's name, e.g. `"JaccardLoss"` or `"CrossEntropyLoss"`.
    pub loss: String,
    /// The constructor's arguments by their deepml / PyTorch names; a missing key takes the
    /// default.
    #[serde(default)]
    pub config: Map<String, Value>,
    /// The forward arguments, by the names of the Python originals (`output`, `target`, ...).
    pub inputs: BTreeMap<String, TensorData>,
    /// The inputs whose gradient is checked.
    #[serde(default)]
    pub grad_wrt: Vec<String>,
    /// The values, or the error, the call must give.
    pub expected: Expected,
    /// How close a computed value must be to the expected one.
    pub tolerance: Tolerance,
}

/// The element type a tensor declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DType {
    /// `"float32"`: real values (expected values are float64 all the same).
    #[serde(rename = "float32")]
    F32,
    /// `"int64"`: integers, such as class labels.
    #[serde(rename = "int64")]
    I64,
}

/// A row-major tensor; `data.len()` is always the product of `shape` (1 for a scalar `[]`).
/// Values are held as f64 (expected values are float64 even where `dtype` says float32);
/// `int64` data holds integers.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawTensor")]
pub struct TensorData {
    /// The dimensions (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The declared element type.
    pub dtype: DType,
    /// The values, row-major.
    pub data: Vec<f64>,
}

/// What a case expects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Expected {
    /// `"status": "ok"`: the call gives these values.
    Ok {
        /// The loss: a scalar for `mean` and `sum`, a tensor for `none`.
        loss: TensorData,
        /// The gradient of the sum of the loss's elements with respect to each input of
        /// `grad_wrt`, by input name.
        #[serde(default)]
        grads: BTreeMap<String, TensorData>,
    },
    /// `"status": "error"`: the call must be refused with an error.
    Error {
        /// The error's kind, as [`Error::kind`] names it (`"invalid_input"`, `"invalid_config"`).
        kind: String,
    },
}

/// An element passes when `|got - exp| <= rtol |exp| + atol max_abs(exp tensor)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tolerance {
    /// The relative tolerance, a fraction of the expected element.
    pub rtol: f64,
    /// The absolute tolerance, a fraction of the expected tensor's largest finite magnitude.
    pub atol: f64,
}

// ---------------------------------------------------------------------------------------------
// Tensors: numbers that may be the strings "NaN", "Infinity", "-Infinity".

/// A JSON number, or one of the three non-finite strings.
pub(crate) struct Number(pub(crate) f64);

impl<'de> Deserialize<'de> for Number {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct NumberVisitor;
        impl Visitor<'_> for NumberVisitor {
            type Value = Number;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a number or \"NaN\", \"Infinity\", \"-Infinity\"")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Number, E> {
                Ok(Number(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Number, E> {
                Ok(Number(v as f64))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Number, E> {
                parse_non_finite(v)
                    .map(Number)
                    .ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
            }
        }
        d.deserialize_any(NumberVisitor)
    }
}

pub(crate) fn parse_non_finite(s: &str) -> Option<f64> {
    match s {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        _ => None,
    }
}

/// The largest magnitude of an int64 value held as f64 (2^63).
const I64_LIMIT: f64 = 9_223_372_036_854_775_808.0;

/// A tensor as written, before its consistency is checked.
#[derive(Deserialize)]
struct RawTensor {
    shape: Vec<usize>,
    dtype: DType,
    data: Vec<Number>,
}

impl TryFrom<RawTensor> for TensorData {
    type Error = String;
    fn try_from(raw: RawTensor) -> std::result::Result<Self, String> {
        let n = shape_product(&raw.shape)
            .ok_or_else(|| format!("the element count of shape {:?} overflows", raw.shape))?;
        if n != raw.data.len() {
            return Err(format!(
                "shape {:?} needs {n} values, the data holds {}",
                raw.shape,
                raw.data.len()
            ));
        }
        let data: Vec<f64> = raw.data.into_iter().map(|v| v.0).collect();
        if raw.dtype == DType::I64 {
            if let Some(v) = data.iter().find(|v| !is_int64(**v)) {
                return Err(format!(
                    "int64 tensor holds {v}, which is not a 64-bit integer"
                ));
            }
        }
        Ok(TensorData {
            shape: raw.shape,
            dtype: raw.dtype,
            data,
        })
    }
}

pub(crate) fn is_int64(v: f64) -> bool {
    v.is_finite() && v.fract() == 0.0 && (-I64_LIMIT..I64_LIMIT).contains(&v)
}

/// The product of a shape, `None` where it overflows.
fn shape_product(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

impl Serialize for TensorData {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut t = s.serialize_struct("TensorData", 3)?;
        t.serialize_field("shape", &self.shape)?;
        t.serialize_field("dtype", &self.dtype)?;
        t.serialize_field(
            "data",
            &DataOut {
                dtype: self.dtype,
                data: &self.data,
            },
        )?;
        t.end()
    }
}

/// The data array as written: int64 values as integers, non-finite values as strings.
struct DataOut<'a> {
    dtype: DType,
    data: &'a [f64],
}

impl Serialize for DataOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.data.len()))?;
        for &v in self.data {
            if v.is_nan() {
                seq.serialize_element("NaN")?;
            } else if v == f64::INFINITY {
                seq.serialize_element("Infinity")?;
            } else if v == f64::NEG_INFINITY {
                seq.serialize_element("-Infinity")?;
            } else if self.dtype == DType::I64 && is_int64(v) {
                seq.serialize_element(&(v as i64))?;
            } else {
                seq.serialize_element(&v)?;
            }
        }
        seq.end()
    }
}

impl TensorData {
    /// A float32-labelled tensor; `None` where `data` does not fit `shape`.
    pub fn f32(shape: Vec<usize>, data: Vec<f64>) -> Option<Self> {
        (shape_product(&shape) == Some(data.len())).then_some(TensorData {
            shape,
            dtype: DType::F32,
            data,
        })
    }

    /// The values as class labels; the tensor must be `int64` (`Error::InvalidInput` otherwise).
    pub fn to_i64(&self, name: &str) -> Result<Vec<i64>> {
        if self.dtype != DType::I64 {
            return Err(Error::InvalidInput(format!(
                "{name} must be int64 class indices"
            )));
        }
        Ok(self.data.iter().map(|&v| v as i64).collect())
    }

    /// The values rounded to f32 (what the device receives).
    pub fn to_f32(&self) -> Vec<f32> {
        self.data.iter().map(|&v| v as f32).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Reading and writing.

/// Reads a cases file from its text.
pub fn parse(text: &str) -> Result<CasesFile> {
    let file: CasesFile = serde_json::from_str(text)
        .map_err(|e| Error::Cases(format!("not a valid {FORMAT} file: {e}")))?;
    validate(&file)?;
    Ok(file)
}

/// Reads a cases file from disk.
pub fn load(path: &Path) -> Result<CasesFile> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Cases(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| match e {
        Error::Cases(m) => Error::Cases(format!("{}: {m}", path.display())),
        other => other,
    })
}

/// Writes a cases file in the same format (it parses back to an equal value).
pub fn to_json(file: &CasesFile) -> String {
    // Every map key is a string and every non-finite number is written as a string, so
    // serialisation cannot fail.
    serde_json::to_string(file).unwrap_or_default()
}

/// The checks beyond the JSON types: the format tag, unique names, tolerances, and a gradient
/// in the inputs and (for an ok case) in the expected values for every name of `grad_wrt`.
fn validate(file: &CasesFile) -> Result<()> {
    if file.format != FORMAT {
        return Err(Error::Cases(format!(
            "format is {:?}, expected {FORMAT:?}",
            file.format
        )));
    }
    let mut names = BTreeSet::new();
    for case in &file.cases {
        let bad = |m: String| Error::Cases(format!("case {:?}: {m}", case.name));
        if !names.insert(case.name.as_str()) {
            return Err(bad("the name is not unique".into()));
        }
        let Tolerance { rtol, atol } = case.tolerance;
        if !(rtol.is_finite() && atol.is_finite() && rtol >= 0.0 && atol >= 0.0) {
            return Err(bad(format!(
                "tolerance rtol {rtol}, atol {atol} must be finite and >= 0"
            )));
        }
        for g in &case.grad_wrt {
            if !case.inputs.contains_key(g) {
                return Err(bad(format!("grad_wrt names {g:?}, which is not an input")));
            }
            if let Expected::Ok { grads, .. } = &case.expected {
                if !grads.contains_key(g) {
                    return Err(bad(format!(
                        "grad_wrt names {g:?}, which has no expected gradient"
                    )));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Configs.

pub use crate::registry::LossSpec;

/// The loss of a case with its constructor arguments, by their deepml / PyTorch names (the
/// registry's parse of the case's config, [`crate::registry`]). A missing key (or a JSON
/// `null`, Python's `None`) takes the default; an unknown key or a value of the wrong type is
/// `Error::InvalidConfig`; an unknown loss name is `Error::Cases`. The values are not
/// range-checked here: the loss's own `validate` does that when it is called.
pub fn loss_spec(case: &Case) -> Result<LossSpec> {
    crate::registry::spec_of_case(case)
}

// ---------------------------------------------------------------------------------------------
// Evaluation.

/// What an evaluator computed for a case: the loss and the gradient of each differentiable
/// input, by input name.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluated {
    /// The loss: a scalar, or a tensor for reduction `none`.
    pub loss: TensorData,
    /// The gradient of the sum of the loss's elements, by input name.
    pub grads: BTreeMap<String, TensorData>,
}

/// Something that computes cases: the float64 reference, or a GPU back end.
pub trait Evaluator {
    /// The evaluator's name, for reports.
    fn name(&self) -> String;
    /// `None` where this evaluator does not implement the case's loss (the case is skipped).
    fn eval(&self, case: &Case) -> Option<Result<Evaluated>>;
}

impl Case {
    /// The input `name`; a case without it is malformed (`Error::Cases`).
    pub fn input(&self, name: &str) -> Result<&TensorData> {
        self.inputs.get(name).ok_or_else(|| {
            Error::Cases(format!(
                "case {:?} ({}) has no input {name:?}",
                self.name, self.loss
            ))
        })
    }
}

/// The differentiable inputs of each loss, in the order of FORMAT.md (and of
/// [`reference::RefOutput::grads`]); none for an unknown loss.
pub fn differentiable_inputs(loss: &str) -> &'static [&'static str] {
    crate::registry::find(loss).map_or(&[], |e| e.grad_names())
}

/// The float64 reference of [`crate::reference`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReferenceEvaluator;

impl Evaluator for ReferenceEvaluator {
    fn name(&self) -> String {
        "reference (f64 CPU)".into()
    }
    fn eval(&self, case: &Case) -> Option<Result<Evaluated>> {
        Some(eval_reference(case))
    }
}

fn eval_reference(case: &Case) -> Result<Evaluated> {
    let out = loss_spec(case)?.reference(case)?;
    let mut grads = BTreeMap::new();
    for (name, g) in differentiable_inputs(&case.loss).iter().zip(out.grads) {
        let shape = case.input(name)?.shape.clone();
        grads.insert(
            name.to_string(),
            TensorData {
                shape,
                dtype: DType::F32,
                data: g,
            },
        );
    }
    let loss = TensorData {
        shape: out.loss_shape,
        dtype: DType::F32,
        data: out.loss,
    };
    Ok(Evaluated { loss, grads })
}

pub use check::{check_case, evaluated_case, Verdict};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AngularPenaltySMConfig, CrossEntropyLoss};
    use check::element_ratio;

    /// The public cases: `tests/cases/public.json` of this crate, or of /work/main when the file
    /// is compiled from a scratch crate.
    fn public_cases_text() -> String {
        let here = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases/public.json");
        std::fs::read_to_string(here)
            .or_else(|_| std::fs::read_to_string("/work/main/tests/cases/public.json"))
            .expect("tests/cases/public.json")
    }

    #[test]
    fn reference_passes_every_public_case() {
        let file = parse(&public_cases_text()).unwrap();
        assert_eq!(file.cases.len(), 88);
        let mut failures = Vec::new();
        for case in &file.cases {
            match check_case(case, ReferenceEvaluator.eval(case)) {
                Verdict::Pass { worst } => println!("PASS {} worst {worst:.3e}", case.name),
                other => failures.push(format!("{}: {other:?}", case.name)),
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[test]
    fn reference_is_far_inside_the_public_tolerances() {
        // float64 against float64: only the 8-digit rounding of large expected tensors remains.
        let file = parse(&public_cases_text()).unwrap();
        for case in &file.cases {
            if let Verdict::Pass { worst } = check_case(case, ReferenceEvaluator.eval(case)) {
                assert!(worst < 1e-3, "{}: worst ratio {worst}", case.name);
            }
        }
    }

    #[test]
    fn round_trip() {
        // Exact float text round trips need serde_json's `float_roundtrip` feature (its default
        // parser may be 1 ulp off).
        let probe: f64 = serde_json::from_str("3.8791175224285555").unwrap();
        assert_eq!(
            probe, 3.8791175224285555,
            "enable serde_json's float_roundtrip feature"
        );
        let file = parse(&public_cases_text()).unwrap();
        let text = to_json(&file);
        let again = parse(&text).unwrap();
        assert_eq!(file, again);
        assert_eq!(text, to_json(&again));
        // Non-finite values and int64 data survive too.
        let mut case = file.cases[0].clone();
        case.expected = Expected::Ok {
            loss: TensorData::f32(vec![3], vec![f64::NAN, f64::INFINITY, f64::NEG_INFINITY])
                .unwrap(),
            grads: BTreeMap::from([("output".to_string(), case.inputs["output"].clone())]),
        };
        case.inputs.insert(
            "labels".into(),
            TensorData {
                shape: vec![2],
                dtype: DType::I64,
                data: vec![-100.0, 7.0],
            },
        );
        let small = CasesFile {
            format: FORMAT.into(),
            meta: Value::Null,
            cases: vec![case],
        };
        let text = to_json(&small);
        assert!(text.contains(r#"["NaN","Infinity","-Infinity"]"#) && text.contains("[-100,7]"));
        let back = parse(&text).unwrap();
        let Expected::Ok { loss, .. } = &back.cases[0].expected else {
            panic!("not ok")
        };
        assert!(
            loss.data[0].is_nan()
                && loss.data[1] == f64::INFINITY
                && loss.data[2] == f64::NEG_INFINITY
        );
        assert_eq!(
            back.cases[0].inputs["labels"],
            small.cases[0].inputs["labels"]
        );
    }

    /// A one-case file whose first input tensor is `tensor` (raw JSON).
    fn with_tensor(tensor: &str) -> String {
        format!(
            r#"{{"format":"deepml-cases/1","meta":{{}},"cases":[{{"name":"a","loss":"MSELoss","config":{{}},
            "inputs":{{"input":{tensor},"target":{{"shape":[1],"dtype":"float32","data":[0]}}}},
            "grad_wrt":[],"expected":{{"status":"error","kind":"invalid_input"}},
            "tolerance":{{"rtol":1e-4,"atol":1e-5}}}}]}}"#
        )
    }

    #[test]
    fn hostile_files_are_errors() {
        let fine = with_tensor(r#"{"shape":[1],"dtype":"float32","data":["NaN"]}"#);
        assert!(parse(&fine).is_ok());
        let bad_tensors = [
            r#"{"shape":[-1],"dtype":"float32","data":[]}"#,
            r#"{"shape":[1e30],"dtype":"float32","data":[]}"#,
            r#"{"shape":[18446744073709551616],"dtype":"float32","data":[]}"#,
            r#"{"shape":[4294967296,4294967296,4294967296],"dtype":"float32","data":[]}"#,
            r#"{"shape":[18446744073709551615,0,2],"dtype":"float32","data":[1]}"#,
            r#"{"shape":[1000000000000],"dtype":"float32","data":[1,2]}"#,
            r#"{"shape":[2],"dtype":"float32","data":[1]}"#,
            r#"{"shape":[],"dtype":"float32","data":[]}"#,
            r#"{"shape":[1.5],"dtype":"float32","data":[1]}"#,
            r#"{"shape":"1","dtype":"float32","data":[1]}"#,
            r#"{"shape":[1],"dtype":"float16","data":[1]}"#,
            r#"{"shape":[1],"dtype":"float32","data":["nan"]}"#,
            r#"{"shape":[1],"dtype":"float32","data":[null]}"#,
            r#"{"shape":[1],"dtype":"float32","data":[[1]]}"#,
            r#"{"shape":[1],"dtype":"float32","data":[1e999]}"#,
            r#"{"shape":[1],"dtype":"int64","data":[1.5]}"#,
            r#"{"shape":[1],"dtype":"int64","data":["NaN"]}"#,
            r#"{"shape":[1],"dtype":"int64","data":[1e300]}"#,
            r#"{"shape":[1],"dtype":"float32"}"#,
            r#"[1]"#,
            r#"null"#,
        ];
        for t in bad_tensors {
            let e = parse(&with_tensor(t)).unwrap_err();
            assert_eq!(e.kind(), "cases", "{t}");
        }
        let bad_files = [
            "",
            "{",
            "[]",
            "null",
            r#"{"format":"deepml-cases/1"}"#,
            r#"{"format":"deepml-cases/2","meta":{},"cases":[]}"#,
            r#"{"format":1,"meta":{},"cases":[]}"#,
            r#"{"format":"deepml-cases/1","meta":{},"cases":{}}"#,
            r#"{"format":"deepml-cases/1","meta":{},"cases":[{}]}"#,
            r#"{"format":"deepml-cases/1","meta":{},"cases":[1]}"#,
        ];
        for f in bad_files {
            assert_eq!(parse(f).unwrap_err().kind(), "cases", "{f}");
        }
        // Deep nesting hits serde_json's recursion limit, not the stack.
        let deep = format!(
            r#"{{"format":"deepml-cases/1","meta":{}{},"cases":[]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(parse(&deep).unwrap_err().kind(), "cases");
        // Case-level consistency.
        let good = with_tensor(r#"{"shape":[1],"dtype":"float32","data":[1]}"#);
        let edits = [
            (r#""grad_wrt":[]"#, r#""grad_wrt":["nope"]"#),
            (r#""status":"error""#, r#""status":"maybe""#),
            (r#""rtol":1e-4"#, r#""rtol":-1"#),
            (r#""rtol":1e-4"#, r#""rtol":"Infinity""#),
            (r#""kind":"invalid_input""#, r#""kind":3"#),
            (r#""name":"a""#, r#""name":null"#),
        ];
        for (from, to) in edits {
            let text = good.replacen(from, to, 1);
            assert_ne!(text, good);
            assert_eq!(parse(&text).unwrap_err().kind(), "cases", "{to}");
        }
        let two = good.replacen(r#""cases":[{"#, r#""cases":[{"name":"a","loss":"L1Loss","inputs":{},"expected":{"status":"error","kind":"x"},"tolerance":{"rtol":0,"atol":0}},{"#, 1);
        assert_eq!(parse(&two).unwrap_err().kind(), "cases", "duplicate names");
    }

    #[test]
    fn truncated_and_corrupted_public_files_are_errors() {
        let text = public_cases_text();
        let bytes = text.as_bytes();
        for cut in (0..bytes.len())
            .step_by(bytes.len() / 97)
            .chain([1, 2, bytes.len() - 1])
        {
            let part = String::from_utf8_lossy(&bytes[..cut]);
            assert!(parse(&part).is_err(), "cut at {cut}");
        }
        // Byte changes anywhere: an error or a valid file, never a panic.
        let mut state = 12345u64;
        for _ in 0..300 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let at = (state >> 33) as usize % bytes.len();
            let mut b = bytes.to_vec();
            let table = b"0-9e.,:[]{}\"x ";
            b[at] = table[(state >> 20) as usize % table.len()];
            if let Ok(file) = parse(&String::from_utf8_lossy(&b)) {
                for case in &file.cases {
                    let _ = check_case(case, ReferenceEvaluator.eval(case));
                }
            }
        }
    }

    fn public_case(name: &str) -> Case {
        let file = parse(&public_cases_text()).unwrap();
        file.cases.into_iter().find(|c| c.name == name).unwrap()
    }

    #[test]
    fn configs_take_defaults_and_refuse_bad_values() {
        let mut case = public_case("ang_arcface_default");
        let spec = loss_spec(&case).unwrap();
        let cfg = spec.get::<AngularPenaltySMConfig>().unwrap().clone();
        assert_eq!(
            (cfg.scale(), cfg.margin(), cfg.normalize_weight, cfg.eps),
            (64.0, 0.5, true, 1e-7)
        );
        case.config.insert("s".into(), Value::from(0));
        let spec = loss_spec(&case).unwrap();
        let cfg = spec.get::<AngularPenaltySMConfig>().unwrap().clone();
        assert_eq!(cfg.s, Some(0.0));
        let refuse = |key: &str, v: Value, kind: &str| {
            let mut c = case.clone();
            c.config.insert(key.into(), v.clone());
            assert_eq!(loss_spec(&c).unwrap_err().kind(), kind, "{key} = {v}");
        };
        refuse("loss_type", Value::from("adaface"), "invalid_config");
        refuse("loss_type", Value::from(1), "invalid_config");
        refuse("s", Value::from("64"), "invalid_config");
        refuse("in_features", Value::from(-3), "invalid_config");
        refuse("in_features", Value::from(2.5), "invalid_config");
        refuse("normalize_weight", Value::from(1), "invalid_config");
        refuse("reduction", Value::from("avg"), "invalid_config");
        refuse("scale", Value::from(1.0), "invalid_config");
        let mut c = case.clone();
        c.config.insert("scale".into(), Value::Null);
        assert!(loss_spec(&c).is_ok(), "a null argument counts as absent");
        // A non-finite value reads, and the loss's validation refuses it.
        let mut c = case.clone();
        c.config.insert("eps".into(), Value::from("NaN"));
        assert_eq!(
            ReferenceEvaluator.eval(&c).unwrap().unwrap_err().kind(),
            "invalid_config"
        );
        // Tensor arguments: TENSOR objects or plain vectors.
        let mut ce = public_case("ce_weight_mean");
        let spec = loss_spec(&ce).unwrap();
        let cfg = spec.get::<CrossEntropyLoss>().unwrap().clone();
        assert_eq!(cfg.weight.unwrap().shape, vec![6]);
        ce.config
            .insert("weight".into(), serde_json::json!([1, 2, 3, 4, 5, 6]));
        ce.config.insert("ignore_index".into(), Value::from(255.0));
        let spec = loss_spec(&ce).unwrap();
        let cfg = spec.get::<CrossEntropyLoss>().unwrap().clone();
        assert_eq!(cfg.weight.unwrap().data, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_eq!(cfg.ignore_index, 255);
        ce.config.insert(
            "weight".into(),
            serde_json::json!({"shape": [7], "dtype": "float32", "data": [1]}),
        );
        assert_eq!(loss_spec(&ce).unwrap_err().kind(), "invalid_config");
        ce.config
            .insert("weight".into(), serde_json::json!([1, 2, 3]));
        assert_eq!(
            ReferenceEvaluator.eval(&ce).unwrap().unwrap_err().kind(),
            "invalid_input"
        );
        // Unknown losses are a malformed file; missing inputs too.
        let mut odd = public_case("mse_mean");
        odd.loss = "HuberLoss".into();
        assert_eq!(loss_spec(&odd).unwrap_err().kind(), "cases");
        let mut odd = public_case("mse_mean");
        odd.inputs.remove("target");
        assert_eq!(
            ReferenceEvaluator.eval(&odd).unwrap().unwrap_err().kind(),
            "cases"
        );
        // Float labels where int64 class indices are needed.
        let mut odd = public_case("ce_mean");
        odd.inputs.get_mut("target").unwrap().dtype = DType::F32;
        assert_eq!(
            ReferenceEvaluator.eval(&odd).unwrap().unwrap_err().kind(),
            "invalid_input"
        );
    }

    #[test]
    fn verdicts() {
        let case = public_case("mse_none");
        let good = ReferenceEvaluator.eval(&case).unwrap().unwrap();
        assert!(matches!(
            check_case(&case, Some(Ok(good.clone()))),
            Verdict::Pass { .. }
        ));
        assert!(matches!(check_case(&case, None), Verdict::Skip { .. }));
        // One element just outside its tolerance fails, just inside passes.
        let Expected::Ok { loss, .. } = &case.expected else {
            panic!()
        };
        let max_abs = loss.data.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let allowed = 1e-4 * loss.data[3].abs() + 1e-5 * max_abs;
        for (delta, pass) in [(0.9 * allowed, true), (1.1 * allowed, false)] {
            let mut got = good.clone();
            got.loss.data[3] = loss.data[3] + delta;
            let v = check_case(&case, Some(Ok(got)));
            assert_eq!(matches!(v, Verdict::Pass { .. }), pass, "{v:?}");
        }
        // Shapes must match; NaN matches only NaN.
        let mut got = good.clone();
        got.loss.shape = vec![35];
        assert!(matches!(
            check_case(&case, Some(Ok(got))),
            Verdict::Fail { .. }
        ));
        let mut got = good.clone();
        got.grads.get_mut("input").unwrap().data[0] = f64::NAN;
        assert!(matches!(
            check_case(&case, Some(Ok(got))),
            Verdict::Fail { .. }
        ));
        assert_eq!(element_ratio(f64::NAN, f64::NAN, 0.0, 0.0), 0.0);
        assert_eq!(element_ratio(1.0, 1.0, 0.0, 0.0), 0.0);
        assert_eq!(element_ratio(1.0, 2.0, 0.0, 0.0), f64::INFINITY);
        assert_eq!(element_ratio(f64::INFINITY, f64::INFINITY, 1e-4, 0.0), 0.0);
        assert_eq!(
            element_ratio(1.0, f64::NEG_INFINITY, 1e-4, 1.0),
            f64::INFINITY
        );
        // Errors: the kind must match; an error where a value is expected fails with its message.
        let err = || Err(Error::ShapeMismatch("boom".into()));
        let v = check_case(&case, Some(err()));
        assert!(
            matches!(&v, Verdict::Fail { detail, .. } if detail.contains("boom")),
            "{v:?}"
        );
        let bad = public_case("mse_err_shape_mismatch");
        assert!(matches!(
            check_case(&bad, Some(err())),
            Verdict::Pass { .. }
        ));
        let cfg_err = Err(Error::InvalidConfig("x".into()));
        assert!(matches!(
            check_case(&bad, Some(cfg_err)),
            Verdict::Fail { .. }
        ));
        assert!(matches!(
            check_case(&bad, Some(Ok(good))),
            Verdict::Fail { .. }
        ));
    }

    #[test]
    fn evaluated_cases_check_against_themselves() {
        let file = parse(&public_cases_text()).unwrap();
        let cases: Vec<Case> = file
            .cases
            .iter()
            .map(|c| evaluated_case(c, &ReferenceEvaluator.eval(c).unwrap()))
            .collect();
        let out = CasesFile { cases, ..file };
        let back = parse(&to_json(&out)).unwrap();
        for case in &back.cases {
            let v = check_case(case, ReferenceEvaluator.eval(case));
            assert_eq!(v, Verdict::Pass { worst: 0.0 }, "{}", case.name);
        }
    }
}
