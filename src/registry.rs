//! The loss registry: one entry per loss, the single place that names it for the dynamic
//! machinery. An entry parses the loss's constructor arguments (by their deepml / PyTorch
//! names), and the loss it makes carries its GPU kernels ([`Loss`]), its float64 reference,
//! its shape checks and its label range ([`LossKind`]). The cases reader and checker, the
//! conformance check, the command-line demo, the benchmark, the web API and the portability
//! test all go through [`LOSSES`].
//!
//! Adding a loss: its shader, its loss module (config type, checks, [`Loss`] impl), its
//! reference function, and one section here (a parse function, the [`LossKind`] impl, and its
//! line in [`LOSSES`]).

use std::any::Any;
use std::fmt;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::cases::{self, Case, Number, TensorData};
use crate::config::*;
use crate::error::{Error, Result};
use crate::kernel::ShaderSource;
use crate::losses::{self, Loss};
use crate::reference::{self, RefOutput};
use crate::{FocalLoss, TverskyLoss};

/// The integer-label input of a loss: `(index of the input, classes, ignore_index)`.
pub type LabelRange = (usize, usize, Option<i64>);

/// What the registry knows of a loss beyond its GPU kernels.
pub trait LossKind: Loss + fmt::Debug + 'static {
    /// The float64 reference on host tensors (in `input_names` order), after the same checks
    /// as the GPU loss.
    fn reference(&self, inputs: &[&TensorData]) -> Result<RefOutput>;
    /// The integer-label input and its valid range, from the inputs' shapes (`None`: no labels,
    /// or too few shapes, which the loss's own arity check reports). Device-side labels cannot
    /// be checked before a call; callers with a host copy check it with
    /// [`crate::config::check_labels`].
    fn label_range(&self, _shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        Ok(None)
    }
    /// A boxed copy.
    fn boxed(&self) -> Box<dyn LossKind>;
    /// For [`LossSpec::get`].
    fn as_any(&self) -> &dyn Any;
}

/// One loss of the registry.
pub struct LossEntry {
    /// The class name (`JaccardLoss`, ...).
    pub name: &'static str,
    /// A valid config (JSON), for what does not depend on one (input and gradient names).
    pub example: &'static str,
    /// The loss from its constructor arguments.
    pub parse: fn(&Args<'_>) -> Result<Box<dyn LossKind>>,
    /// Every shader variant its kernels can build (for the portability test).
    pub shader_variants: fn() -> Vec<ShaderSource>,
}

impl fmt::Debug for LossEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LossEntry")
            .field("name", &self.name)
            .finish()
    }
}

impl LossEntry {
    /// The loss of the example config.
    fn example_loss(&self) -> Box<dyn LossKind> {
        let map: Map<String, Value> = serde_json::from_str(self.example).unwrap_or_default();
        (self.parse)(&Args {
            loss: self.name,
            map: &map,
        })
        .unwrap_or_else(|e| unreachable!("the example config of {} parses: {e}", self.name))
    }
    /// The forward arguments, in order.
    pub fn input_names(&self) -> &'static [&'static str] {
        self.example_loss().input_names()
    }
    /// The differentiable inputs (and owned parameters), in the order of the gradients.
    pub fn grad_names(&self) -> &'static [&'static str] {
        self.example_loss().grad_names()
    }
}

/// Every loss of the library.
pub static LOSSES: &[LossEntry] = &[
    LossEntry {
        name: "JaccardLoss",
        example: "{}",
        parse: jaccard,
        shader_variants: losses::segmentation::shader_variants,
    },
    LossEntry {
        name: "DiceLoss",
        example: "{}",
        parse: dice,
        shader_variants: losses::segmentation::shader_variants,
    },
    LossEntry {
        name: "RMSELoss",
        example: "{}",
        parse: rmse,
        shader_variants: losses::pointwise::shader_variants,
    },
    LossEntry {
        name: "MSELoss",
        example: "{}",
        parse: mse,
        shader_variants: losses::pointwise::shader_variants,
    },
    LossEntry {
        name: "L1Loss",
        example: "{}",
        parse: l1,
        shader_variants: losses::pointwise::shader_variants,
    },
    LossEntry {
        name: "WeightedBCEWithLogitsLoss",
        example: "{}",
        parse: weighted_bce,
        shader_variants: losses::bce::shader_variants,
    },
    LossEntry {
        name: "BCEWithLogitsLoss",
        example: "{}",
        parse: bce,
        shader_variants: losses::bce::shader_variants,
    },
    LossEntry {
        name: "CrossEntropyLoss",
        example: "{}",
        parse: cross_entropy,
        shader_variants: losses::cross_entropy::shader_variants,
    },
    LossEntry {
        name: "ContrastiveLoss",
        example: "{}",
        parse: contrastive,
        shader_variants: losses::contrastive::shader_variants,
    },
    LossEntry {
        name: "AngularPenaltySMLoss",
        example: r#"{"in_features": 1, "out_features": 1}"#,
        parse: angular,
        shader_variants: losses::angular::shader_variants,
    },
    LossEntry {
        name: "FocalLoss",
        example: r#"{"mode": "binary"}"#,
        parse: focal,
        shader_variants: losses::focal::shader_variants,
    },
    LossEntry {
        name: "TverskyLoss",
        example: r#"{"mode": "binary"}"#,
        parse: tversky,
        shader_variants: losses::tversky::shader_variants,
    },
];

/// The entry of a loss by its class name.
pub fn find(name: &str) -> Option<&'static LossEntry> {
    LOSSES.iter().find(|e| e.name == name)
}

// ---------------------------------------------------------------------------------------------
// A parsed loss.

/// A loss with its constructor arguments, as the registry made it.
pub struct LossSpec {
    kind: Box<dyn LossKind>,
}

impl LossSpec {
    /// The spec of a loss value.
    pub fn of<T: LossKind>(loss: T) -> Self {
        LossSpec {
            kind: Box::new(loss),
        }
    }
    /// The config, as its own type (`spec.get::<CrossEntropyLoss>()`).
    pub fn get<T: 'static>(&self) -> Option<&T> {
        self.kind.as_any().downcast_ref()
    }
    /// The GPU loss.
    pub fn loss(&self) -> &dyn Loss {
        &*self.kind
    }
    /// The GPU loss, boxed.
    pub fn boxed_loss(&self) -> Box<dyn Loss> {
        self.kind.boxed()
    }
    /// The class name.
    pub fn name(&self) -> &'static str {
        self.kind.name()
    }
    /// See [`LossKind::label_range`].
    pub fn label_range(&self, shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        self.kind.label_range(shapes)
    }
    /// The float64 reference of a case's inputs.
    pub fn reference(&self, case: &Case) -> Result<RefOutput> {
        let inputs: Vec<&TensorData> = self
            .kind
            .input_names()
            .iter()
            .map(|n| case.input(n))
            .collect::<Result<_>>()?;
        self.kind.reference(&inputs)
    }
    /// Checks a case's integer labels against [`Self::label_range`].
    pub fn check_case_labels(&self, case: &Case) -> Result<()> {
        let names = self.kind.input_names();
        let shapes: Vec<&[usize]> = names
            .iter()
            .map(|n| case.input(n).map(|t| t.shape.as_slice()))
            .collect::<Result<_>>()?;
        if let Some((i, classes, ignore)) = self.label_range(&shapes)? {
            let labels = case.input(names[i])?.to_i64(names[i])?;
            check_labels(self.name(), &labels, classes, ignore)?;
        }
        Ok(())
    }
}

impl Clone for LossSpec {
    fn clone(&self) -> Self {
        LossSpec {
            kind: self.kind.boxed(),
        }
    }
}

impl fmt::Debug for LossSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.kind.fmt(f)
    }
}

/// The loss of a case: its entry's parse of the case's config. An unknown loss name is
/// `Error::Cases`.
pub fn spec_of_case(case: &Case) -> Result<LossSpec> {
    let entry = find(&case.loss).ok_or_else(|| {
        Error::Cases(format!(
            "case {:?}: unknown loss {:?}",
            case.name, case.loss
        ))
    })?;
    let kind = (entry.parse)(&Args {
        loss: entry.name,
        map: &case.config,
    })?;
    Ok(LossSpec { kind })
}

// ---------------------------------------------------------------------------------------------
// Constructor arguments.

/// Typed access to the constructor arguments of a loss (a JSON object). A missing key, or a
/// JSON `null` (Python's `None`), takes the default; an unknown key or a value of the wrong
/// type is `Error::InvalidConfig`. Values are not range-checked here: the loss's `validate` does
/// that when it is called.
#[derive(Debug)]
pub struct Args<'a> {
    loss: &'a str,
    map: &'a Map<String, Value>,
}

impl Args<'_> {
    fn bad(&self, key: &str, what: &str) -> Error {
        let v = self.map.get(key).map(Value::to_string).unwrap_or_default();
        Error::InvalidConfig(format!("{}: {key} must be {what}, got {v}", self.loss))
    }

    /// Refuses keys the constructor does not take (a `null` one counts as absent).
    fn only(&self, keys: &[&str]) -> Result<()> {
        let mut given = self.map.iter().filter(|(_, v)| !v.is_null());
        match given
            .find(|(k, _)| !keys.contains(&k.as_str()))
            .map(|(k, _)| k)
        {
            Some(k) => Err(Error::InvalidConfig(format!(
                "{}: unknown argument {k:?} (it takes {})",
                self.loss,
                keys.join(", ")
            ))),
            None => Ok(()),
        }
    }

    /// The value of `key`; `null` counts as missing.
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let number = match v {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => cases::parse_non_finite(s),
            _ => None,
        };
        number.map(Some).ok_or_else(|| self.bad(key, "a number"))
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.as_bool().ok_or_else(|| self.bad(key, "true or false")),
        }
    }

    fn string(&self, key: &str) -> Result<String> {
        match self.get(key) {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(self.bad(key, "a string")),
        }
    }

    fn reduction(&self) -> Result<Reduction> {
        match self.get("reduction") {
            None => Ok(Reduction::default()),
            Some(_) => Reduction::parse(&self.string("reduction")?),
        }
    }

    /// The required `mode` of the segmentation_models_pytorch losses.
    fn smp_mode(&self) -> Result<SmpMode> {
        if self.get("mode").is_none() {
            return Err(Error::InvalidConfig(format!(
                "{}: mode is required ('binary', 'multiclass' or 'multilabel')",
                self.loss
            )));
        }
        SmpMode::parse(&self.string("mode")?)
    }

    /// An integer, also written as an integral float (`255.0`).
    fn integer(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Value::Number(n) => n
                .as_i64()
                .or_else(|| n.as_f64().filter(|v| cases::is_int64(*v)).map(|v| v as i64)),
            _ => None,
        }
    }

    fn opt_i64(&self, key: &str) -> Result<Option<i64>> {
        match self.get(key) {
            None => Ok(None),
            Some(_) => self
                .integer(key)
                .map(Some)
                .ok_or_else(|| self.bad(key, "an integer")),
        }
    }

    fn i64_or(&self, key: &str, default: i64) -> Result<i64> {
        Ok(self.opt_i64(key)?.unwrap_or(default))
    }

    /// A required non-negative count (`in_features`, `out_features`).
    fn count(&self, key: &str) -> Result<usize> {
        if self.get(key).is_none() {
            return Err(Error::InvalidConfig(format!(
                "{}: {key} is required",
                self.loss
            )));
        }
        self.integer(key)
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| self.bad(key, "a non-negative integer"))
    }

    /// A tensor-valued argument: a TENSOR object, or a plain array of numbers (a vector).
    fn tensor(&self, key: &str) -> Result<Option<HostTensor>> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let t: TensorData = match v {
            Value::Array(_) => {
                let data: Vec<Number> =
                    Vec::deserialize(v).map_err(|_| self.bad(key, "a tensor"))?;
                let data: Vec<f64> = data.into_iter().map(|n| n.0).collect();
                TensorData {
                    shape: vec![data.len()],
                    dtype: cases::DType::F32,
                    data,
                }
            }
            _ => {
                TensorData::deserialize(v).map_err(|e| self.bad(key, &format!("a tensor ({e})")))?
            }
        };
        Ok(Some(HostTensor {
            data: t.to_f32(),
            shape: t.shape,
        }))
    }
}

/// `as_any` and `boxed` of a [`LossKind`] impl.
macro_rules! kind_common {
    () => {
        fn boxed(&self) -> Box<dyn LossKind> {
            Box::new(self.clone())
        }
        fn as_any(&self) -> &dyn Any {
            self
        }
    };
}

// ---------------------------------------------------------------------------------------------
// JaccardLoss, DiceLoss.

fn jaccard(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["is_multiclass", "eps", "per_class"])?;
    let d = JaccardLoss::default();
    Ok(Box::new(JaccardLoss {
        is_multiclass: a.bool_or("is_multiclass", d.is_multiclass)?,
        eps: a.f64_or("eps", d.eps)?,
        per_class: a.bool_or("per_class", d.per_class)?,
    }))
}

impl LossKind for JaccardLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::jaccard(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

fn dice(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["is_multiclass", "smooth", "eps", "per_class"])?;
    let d = DiceLoss::default();
    Ok(Box::new(DiceLoss {
        is_multiclass: a.bool_or("is_multiclass", d.is_multiclass)?,
        smooth: a.f64_or("smooth", d.smooth)?,
        eps: a.f64_or("eps", d.eps)?,
        per_class: a.bool_or("per_class", d.per_class)?,
    }))
}

impl LossKind for DiceLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::dice(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

// ---------------------------------------------------------------------------------------------
// RMSELoss, MSELoss, L1Loss.

fn rmse(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["eps"])?;
    Ok(Box::new(RMSELoss {
        eps: a.f64_or("eps", RMSELoss::default().eps)?,
    }))
}

impl LossKind for RMSELoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::rmse(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

fn mse(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["reduction"])?;
    Ok(Box::new(MSELoss {
        reduction: a.reduction()?,
    }))
}

impl LossKind for MSELoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::mse(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

fn l1(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["reduction"])?;
    Ok(Box::new(L1Loss {
        reduction: a.reduction()?,
    }))
}

impl LossKind for L1Loss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::l1(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

// ---------------------------------------------------------------------------------------------
// WeightedBCEWithLogitsLoss, BCEWithLogitsLoss.

fn weighted_bce(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["w_p", "w_n", "epsilon", "reduction"])?;
    let d = WeightedBCEWithLogitsLoss::default();
    Ok(Box::new(WeightedBCEWithLogitsLoss {
        w_p: a.f64_or("w_p", d.w_p)?,
        w_n: a.f64_or("w_n", d.w_n)?,
        epsilon: a.f64_or("epsilon", d.epsilon)?,
        reduction: a.reduction()?,
    }))
}

impl LossKind for WeightedBCEWithLogitsLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        reference::weighted_bce(self, &i[0].data, &i[0].shape, &i[1].data, &i[1].shape)
    }
}

fn bce(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["weight", "reduction", "pos_weight"])?;
    Ok(Box::new(BCEWithLogitsLoss {
        weight: a.tensor("weight")?,
        reduction: a.reduction()?,
        pos_weight: a.tensor("pos_weight")?,
    }))
}

impl LossKind for BCEWithLogitsLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        reference::bce_with_logits(self, &i[0].data, &i[1].data, &i[0].shape)
    }
}

// ---------------------------------------------------------------------------------------------
// CrossEntropyLoss.

fn cross_entropy(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["weight", "ignore_index", "reduction", "label_smoothing"])?;
    let d = CrossEntropyLoss::default();
    Ok(Box::new(CrossEntropyLoss {
        weight: a.tensor("weight")?,
        ignore_index: a.i64_or("ignore_index", d.ignore_index)?,
        reduction: a.reduction()?,
        label_smoothing: a.f64_or("label_smoothing", d.label_smoothing)?,
    }))
}

impl LossKind for CrossEntropyLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape)?;
        let labels = i[1].to_i64("CrossEntropyLoss target")?;
        reference::cross_entropy(self, &i[0].data, &i[0].shape, &labels, &i[1].shape)
    }
    fn label_range(&self, shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        if shapes.len() < 2 {
            return Ok(None);
        }
        let layout = self.check_shapes(shapes[0], shapes[1])?;
        Ok(Some((1, layout.channels, Some(self.ignore_index))))
    }
}

// ---------------------------------------------------------------------------------------------
// ContrastiveLoss.

fn contrastive(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["margin", "distance", "reduction"])?;
    let d = ContrastiveLoss::default();
    let distance = match a.get("distance") {
        None => d.distance,
        Some(_) => Distance::parse(&a.string("distance")?)?,
    };
    Ok(Box::new(ContrastiveLoss {
        margin: a.f64_or("margin", d.margin)?,
        distance,
        reduction: a.reduction()?,
    }))
}

impl LossKind for ContrastiveLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        self.check_shapes(&i[0].shape, &i[1].shape, &i[2].shape)?;
        reference::contrastive(
            self,
            &i[0].data,
            &i[1].data,
            &i[0].shape,
            &i[2].data,
            &i[2].shape,
        )
    }
}

// ---------------------------------------------------------------------------------------------
// AngularPenaltySMLoss (the stateless form: the weight is an input).

fn angular(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&[
        "in_features",
        "out_features",
        "loss_type",
        "eps",
        "s",
        "m",
        "normalize_weight",
        "reduction",
    ])?;
    let loss_type = match a.get("loss_type") {
        None => LossType::default(),
        Some(_) => LossType::parse(&a.string("loss_type")?)?,
    };
    let d = AngularPenaltySMConfig::new(0, 0, loss_type);
    Ok(Box::new(AngularPenaltySMConfig {
        in_features: a.count("in_features")?,
        out_features: a.count("out_features")?,
        loss_type,
        eps: a.f64_or("eps", d.eps)?,
        s: a.opt_f64("s")?,
        m: a.opt_f64("m")?,
        normalize_weight: a.bool_or("normalize_weight", d.normalize_weight)?,
        reduction: a.reduction()?,
    }))
}

impl LossKind for AngularPenaltySMConfig {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        let (x, y, w) = (i[0], i[1], i[2]);
        self.check_shapes(&x.shape, &y.shape, &w.shape)?;
        let labels = y.to_i64("AngularPenaltySMLoss labels")?;
        reference::angular(
            self, &x.data, &x.shape, &labels, &y.shape, &w.data, &w.shape,
        )
    }
    fn label_range(&self, shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        if shapes.len() < 3 {
            return Ok(None);
        }
        self.validate()?;
        Ok(Some((1, self.out_features, None)))
    }
}

// ---------------------------------------------------------------------------------------------
// FocalLoss, TverskyLoss (segmentation_models_pytorch).

fn focal(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&[
        "mode",
        "alpha",
        "gamma",
        "ignore_index",
        "reduction",
        "normalized",
    ])?;
    let d = FocalLoss::new(a.smp_mode()?);
    Ok(Box::new(FocalLoss {
        alpha: a.opt_f64("alpha")?,
        gamma: a.f64_or("gamma", d.gamma)?,
        ignore_index: a.opt_i64("ignore_index")?,
        reduction: a.reduction()?,
        normalized: a.bool_or("normalized", d.normalized)?,
        ..d
    }))
}

impl LossKind for FocalLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        if self.mode == SmpMode::Multiclass {
            i[1].to_i64("FocalLoss y_true")?;
        }
        reference::focal(self, &i[0].data, &i[0].shape, &i[1].data, &i[1].shape)
    }
    fn label_range(&self, shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        if shapes.len() < 2 || self.mode != SmpMode::Multiclass {
            return Ok(None);
        }
        let layout = self.check_shapes(shapes[0], shapes[1])?;
        Ok(Some((1, layout.channels, self.ignore_index)))
    }
}

fn tversky(a: &Args<'_>) -> Result<Box<dyn LossKind>> {
    a.only(&["mode", "alpha", "beta", "gamma", "smooth", "eps"])?;
    let d = TverskyLoss::new(a.smp_mode()?);
    Ok(Box::new(TverskyLoss {
        alpha: a.f64_or("alpha", d.alpha)?,
        beta: a.f64_or("beta", d.beta)?,
        gamma: a.f64_or("gamma", d.gamma)?,
        smooth: a.f64_or("smooth", d.smooth)?,
        eps: a.f64_or("eps", d.eps)?,
        ..d
    }))
}

impl LossKind for TverskyLoss {
    kind_common!();
    fn reference(&self, i: &[&TensorData]) -> Result<RefOutput> {
        if self.mode == SmpMode::Multiclass {
            i[1].to_i64("TverskyLoss y_true")?;
        }
        reference::tversky(self, &i[0].data, &i[0].shape, &i[1].data, &i[1].shape)
    }
    fn label_range(&self, shapes: &[&[usize]]) -> Result<Option<LabelRange>> {
        if shapes.len() < 2 || self.mode != SmpMode::Multiclass {
            return Ok(None);
        }
        let layout = self.check_shapes(shapes[0], shapes[1])?;
        Ok(Some((1, layout.channels, None)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_parses_its_example_and_names_itself() {
        for e in LOSSES {
            let loss = e.example_loss();
            assert_eq!(loss.name(), e.name);
            assert!(!e.input_names().is_empty() && !e.grad_names().is_empty());
            assert!(!(e.shader_variants)().is_empty(), "{}", e.name);
        }
        let mut names: Vec<_> = LOSSES.iter().map(|e| e.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LOSSES.len(), "one entry per loss");
    }
}
