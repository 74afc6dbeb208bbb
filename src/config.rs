//! The losses' constructor arguments, by their deepml / PyTorch names and defaults, with the
//! validation of the specification. The GPU losses and the float64 reference share these, so the
//! two can never disagree on what is valid.

use crate::error::{Error, Result};

/// How the per-element (or per-sample) losses are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// The mean of the losses (a scalar); the default.
    #[default]
    Mean,
    /// The sum of the losses (a scalar).
    Sum,
    /// No reduction: one loss per element (or per sample).
    None,
}

impl Reduction {
    /// `"mean"`, `"sum"` or `"none"`; anything else is `Error::InvalidConfig`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "mean" => Ok(Reduction::Mean),
            "sum" => Ok(Reduction::Sum),
            "none" => Ok(Reduction::None),
            _ => Err(Error::InvalidConfig(format!(
                "reduction must be 'mean', 'sum' or 'none', not {s:?}"
            ))),
        }
    }
    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            Reduction::Mean => "mean",
            Reduction::Sum => "sum",
            Reduction::None => "none",
        }
    }
}

impl std::str::FromStr for Reduction {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Reduction::parse(s)
    }
}

/// A small host-side tensor, used for tensor-valued constructor arguments (`weight`, `pos_weight`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HostTensor {
    /// The dimensions (`[]` for a scalar).
    pub shape: Vec<usize>,
    /// The values, row-major; as many as the shape's product.
    pub data: Vec<f32>,
}

impl HostTensor {
    /// `data` of shape `shape`; `Error::InvalidInput` unless `data` has the shape's product of values.
    pub fn new(data: Vec<f32>, shape: Vec<usize>) -> Result<Self> {
        let n = numel(&shape);
        if n != data.len() {
            return Err(Error::InvalidInput(format!(
                "tensor of shape {shape:?} needs {n} values, got {}",
                data.len()
            )));
        }
        Ok(HostTensor { shape, data })
    }
    /// A vector of shape `[len]`.
    pub fn vector(data: Vec<f32>) -> Self {
        HostTensor {
            shape: vec![data.len()],
            data,
        }
    }
}

/// The number of elements of a shape (1 for a scalar `[]`).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

fn finite_nonneg(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(Error::InvalidConfig(format!(
            "{name} must be finite, got {v}"
        )));
    }
    if v < 0.0 {
        return Err(Error::InvalidConfig(format!(
            "{name} must be >= 0, got {v}"
        )));
    }
    Ok(())
}

fn same_shape(what: &str, a_name: &str, a: &[usize], b_name: &str, b: &[usize]) -> Result<()> {
    if a != b {
        return Err(Error::ShapeMismatch(format!(
            "{what}: {a_name} has shape {a:?} but {b_name} has shape {b:?}; they must be equal"
        )));
    }
    Ok(())
}

fn non_empty(what: &str, name: &str, shape: &[usize]) -> Result<()> {
    if numel(shape) == 0 {
        return Err(Error::EmptyInput(format!(
            "{what}: {name} of shape {shape:?} has no elements"
        )));
    }
    Ok(())
}

/// Two inputs of the same shape, compared element by element (RMSE, MSE, L1, BCE with logits).
pub fn check_pointwise(what: &str, a_name: &str, a: &[usize], b: &[usize]) -> Result<usize> {
    same_shape(what, a_name, a, "target", b)?;
    non_empty(what, a_name, a)?;
    Ok(numel(a))
}

/// `[N, C, d1, ...]` split into the batch, the channels, and the product of the spatial sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// The batch size `N` (1 for a scalar).
    pub outer: usize,
    /// The channel count `C` (1 below rank 2).
    pub channels: usize,
    /// The product of the spatial sizes `d1, ...` (1 below rank 3).
    pub inner: usize,
}

impl ChannelLayout {
    /// The element count, `outer * channels * inner`.
    pub fn numel(&self) -> usize {
        self.outer * self.channels * self.inner
    }
    /// The layout of a shape whose dimension 1 is the channel dimension (`[N, C, d1, ...]`).
    /// A rank-1 shape is `[N]` with one channel.
    pub fn of(shape: &[usize]) -> ChannelLayout {
        match shape.len() {
            0 => ChannelLayout {
                outer: 1,
                channels: 1,
                inner: 1,
            },
            1 => ChannelLayout {
                outer: shape[0],
                channels: 1,
                inner: 1,
            },
            _ => ChannelLayout {
                outer: shape[0],
                channels: shape[1],
                inner: numel(&shape[2..]),
            },
        }
    }
}

/// Shapes of the segmentation losses (Jaccard, Dice).
pub fn check_segmentation(
    what: &str,
    is_multiclass: bool,
    per_class: bool,
    output: &[usize],
    target: &[usize],
) -> Result<ChannelLayout> {
    same_shape(what, "output", output, "target", target)?;
    if (is_multiclass || per_class) && output.len() < 2 {
        return Err(Error::ShapeMismatch(format!(
            "{what}: output of shape {output:?} has no channel dimension; multiclass and per_class need [N, C, ...]"
        )));
    }
    if output.is_empty() {
        return Err(Error::ShapeMismatch(format!(
            "{what}: output must have at least one dimension"
        )));
    }
    non_empty(what, "output", output)?;
    Ok(ChannelLayout::of(output))
}

/// `JaccardLoss(is_multiclass, eps = 1e-7, per_class = false)`: `1 - I / (S - I + eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct JaccardLoss {
    /// `false` (the default): `p = sigmoid(output)`; `true`: `p = softmax(output)` over dimension 1.
    pub is_multiclass: bool,
    /// Added to the denominator (`1e-7` by default); finite and `>= 0`.
    pub eps: f64,
    /// `false` (the default): one ratio over the whole batch; `true`: one ratio per channel,
    /// `loss = 1 - mean_c I_c / (S_c - I_c + eps)` (an extension of deepml).
    pub per_class: bool,
}

impl Default for JaccardLoss {
    fn default() -> Self {
        JaccardLoss {
            is_multiclass: false,
            eps: 1e-7,
            per_class: false,
        }
    }
}

impl JaccardLoss {
    /// The loss with the given `is_multiclass` and the defaults of the other arguments.
    pub fn new(is_multiclass: bool) -> Self {
        JaccardLoss {
            is_multiclass,
            ..Default::default()
        }
    }
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg("JaccardLoss eps", self.eps)
    }
    /// Checks the arguments, then `output` and `target` (equal shapes, `[N, C, ...]` when
    /// `is_multiclass` or `per_class`, not empty); returns their layout.
    pub fn check_shapes(&self, output: &[usize], target: &[usize]) -> Result<ChannelLayout> {
        self.validate()?;
        check_segmentation(
            "JaccardLoss",
            self.is_multiclass,
            self.per_class,
            output,
            target,
        )
    }
}

/// `DiceLoss(is_multiclass, smooth = 0, eps = 1e-7, per_class = false)`:
/// `1 - (2 I + smooth) / max(S + smooth, eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiceLoss {
    /// `false` (the default): `p = sigmoid(output)`; `true`: `p = softmax(output)` over dimension 1.
    pub is_multiclass: bool,
    /// Added to the numerator and the denominator (`0` by default); finite and `>= 0`.
    pub smooth: f64,
    /// The floor of the denominator (`1e-7` by default); finite and `>= 0`.
    pub eps: f64,
    /// `false` (the default): one ratio over the whole batch; `true`: one ratio per channel,
    /// averaged over the channels.
    pub per_class: bool,
}

impl Default for DiceLoss {
    fn default() -> Self {
        DiceLoss {
            is_multiclass: false,
            smooth: 0.0,
            eps: 1e-7,
            per_class: false,
        }
    }
}

impl DiceLoss {
    /// The loss with the given `is_multiclass` and the defaults of the other arguments.
    pub fn new(is_multiclass: bool) -> Self {
        DiceLoss {
            is_multiclass,
            ..Default::default()
        }
    }
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg("DiceLoss smooth", self.smooth)?;
        finite_nonneg("DiceLoss eps", self.eps)
    }
    /// Checks the arguments, then `output` and `target` (equal shapes, `[N, C, ...]` when
    /// `is_multiclass` or `per_class`, not empty); returns their layout.
    pub fn check_shapes(&self, output: &[usize], target: &[usize]) -> Result<ChannelLayout> {
        self.validate()?;
        check_segmentation(
            "DiceLoss",
            self.is_multiclass,
            self.per_class,
            output,
            target,
        )
    }
}

/// `RMSELoss(eps = 1e-6)`: `sqrt(mean((output - target)^2) + eps)`.
#[derive(Debug, Clone, PartialEq)]
pub struct RMSELoss {
    /// Added to the mean squared error under the square root (`1e-6` by default); finite and
    /// `>= 0`. With `eps = 0` and `output == target` the gradient is 0.
    pub eps: f64,
}

impl Default for RMSELoss {
    fn default() -> Self {
        RMSELoss { eps: 1e-6 }
    }
}

impl RMSELoss {
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg("RMSELoss eps", self.eps)
    }
    /// Checks the arguments, then `output` and `target` (equal shapes, not empty); returns the
    /// element count.
    pub fn check_shapes(&self, output: &[usize], target: &[usize]) -> Result<usize> {
        self.validate()?;
        check_pointwise("RMSELoss", "output", output, target)
    }
}

/// `MSELoss(reduction = "mean")`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MSELoss {
    /// How the squared errors are combined (`mean` by default).
    pub reduction: Reduction,
}

impl MSELoss {
    /// Checks `input` and `target` (equal shapes, not empty); returns the element count.
    pub fn check_shapes(&self, input: &[usize], target: &[usize]) -> Result<usize> {
        check_pointwise("MSELoss", "input", input, target)
    }
}

/// `L1Loss(reduction = "mean")`; the gradient of |0| is 0.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct L1Loss {
    /// How the absolute errors are combined (`mean` by default).
    pub reduction: Reduction,
}

impl L1Loss {
    /// Checks `input` and `target` (equal shapes, not empty); returns the element count.
    pub fn check_shapes(&self, input: &[usize], target: &[usize]) -> Result<usize> {
        check_pointwise("L1Loss", "input", input, target)
    }
}

/// `WeightedBCEWithLogitsLoss(w_p = 1, w_n = 1, epsilon = 1e-7, reduction = "mean")`, deepml's formula.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightedBCEWithLogitsLoss {
    /// The weight of the positive term, `y ln(sigmoid(x) + epsilon)` (`1` by default); finite
    /// and `>= 0`.
    pub w_p: f64,
    /// The weight of the negative term, `(1 - y) ln(sigmoid(-x) + epsilon)` (`1` by default);
    /// finite and `>= 0`.
    pub w_n: f64,
    /// Added to each probability inside the logarithms (`1e-7` by default); finite and `>= 0`.
    pub epsilon: f64,
    /// How the per-sample losses are combined (`mean` by default: `sum(l) / N`).
    pub reduction: Reduction,
}

impl Default for WeightedBCEWithLogitsLoss {
    fn default() -> Self {
        WeightedBCEWithLogitsLoss {
            w_p: 1.0,
            w_n: 1.0,
            epsilon: 1e-7,
            reduction: Reduction::Mean,
        }
    }
}

/// A shape without its size-1 dimensions.
pub fn squeeze(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

impl WeightedBCEWithLogitsLoss {
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg("WeightedBCEWithLogitsLoss w_p", self.w_p)?;
        finite_nonneg("WeightedBCEWithLogitsLoss w_n", self.w_n)?;
        finite_nonneg("WeightedBCEWithLogitsLoss epsilon", self.epsilon)
    }
    /// Logits and labels are `[N]` or `[N, 1]`; returns N.
    pub fn check_shapes(&self, logits: &[usize], labels: &[usize]) -> Result<usize> {
        self.validate()?;
        let (l, y) = (squeeze(logits), squeeze(labels));
        if l.len() > 1 || y.len() > 1 || l != y {
            return Err(Error::ShapeMismatch(format!(
                "WeightedBCEWithLogitsLoss: logits {logits:?} and labels {labels:?} must both be [N] or [N, 1] with the same N"
            )));
        }
        non_empty("WeightedBCEWithLogitsLoss", "logits", logits)?;
        Ok(numel(logits))
    }
}

/// The distance of `ContrastiveLoss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Distance {
    /// `d = ||e1 - e2 + 1e-6||_2`, as PyTorch's `pairwise_distance`; the default.
    #[default]
    Euclidean,
    /// `d = 1 - cos_sim(e1, e2)`, as PyTorch's `cosine_similarity` (eps `1e-8`); an extension
    /// of deepml.
    Cosine,
}

impl Distance {
    /// `"euclidean"` or `"cosine"`; anything else is `Error::InvalidConfig`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "euclidean" => Ok(Distance::Euclidean),
            "cosine" => Ok(Distance::Cosine),
            _ => Err(Error::InvalidConfig(format!(
                "distance must be 'euclidean' or 'cosine', not {s:?}"
            ))),
        }
    }
}

impl std::str::FromStr for Distance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Distance::parse(s)
    }
}

/// `ContrastiveLoss(margin = 2, distance = "euclidean", reduction = "mean")`.
#[derive(Debug, Clone, PartialEq)]
pub struct ContrastiveLoss {
    /// The distance below which a dissimilar pair (label 0) is penalised, by
    /// `max(0, margin - d)^2` (`2` by default); finite and `>= 0`.
    pub margin: f64,
    /// The distance `d` between the two embeddings of a pair (`euclidean` by default).
    pub distance: Distance,
    /// How the per-pair losses are combined (`mean` by default).
    pub reduction: Reduction,
}

impl Default for ContrastiveLoss {
    fn default() -> Self {
        ContrastiveLoss {
            margin: 2.0,
            distance: Distance::Euclidean,
            reduction: Reduction::Mean,
        }
    }
}

impl ContrastiveLoss {
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        finite_nonneg("ContrastiveLoss margin", self.margin)
    }
    /// Returns `(N, D)`.
    pub fn check_shapes(
        &self,
        e1: &[usize],
        e2: &[usize],
        label: &[usize],
    ) -> Result<(usize, usize)> {
        self.validate()?;
        same_shape("ContrastiveLoss", "embeddings1", e1, "embeddings2", e2)?;
        if e1.len() != 2 {
            return Err(Error::ShapeMismatch(format!(
                "ContrastiveLoss: embeddings must be [N, D], got {e1:?}"
            )));
        }
        if label != [e1[0]] {
            return Err(Error::ShapeMismatch(format!(
                "ContrastiveLoss: label must be [{}], got {label:?}",
                e1[0]
            )));
        }
        non_empty("ContrastiveLoss", "embeddings1", e1)?;
        Ok((e1[0], e1[1]))
    }
}

/// The margin of `AngularPenaltySMLoss`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LossType {
    /// An additive angular margin, numerator `s cos(a + m)`; defaults `s = 64`, `m = 0.5`; the
    /// default.
    #[default]
    ArcFace,
    /// A multiplicative angular margin, numerator `s cos(m a)`; defaults `s = 64`, `m = 1.35`.
    SphereFace,
    /// An additive cosine margin, numerator `s (cos(a) - m)`; defaults `s = 30`, `m = 0.4`.
    CosFace,
}

impl LossType {
    /// `"arcface"`, `"sphereface"` or `"cosface"`; anything else is `Error::InvalidConfig`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "arcface" => Ok(LossType::ArcFace),
            "sphereface" => Ok(LossType::SphereFace),
            "cosface" => Ok(LossType::CosFace),
            _ => Err(Error::InvalidConfig(format!(
                "loss_type must be 'arcface', 'sphereface' or 'cosface', not {s:?}"
            ))),
        }
    }
    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            LossType::ArcFace => "arcface",
            LossType::SphereFace => "sphereface",
            LossType::CosFace => "cosface",
        }
    }
    /// deepml's defaults `(s, m)`.
    pub fn defaults(self) -> (f64, f64) {
        match self {
            LossType::ArcFace => (64.0, 0.5),
            LossType::SphereFace => (64.0, 1.35),
            LossType::CosFace => (30.0, 0.4),
        }
    }
}

impl std::str::FromStr for LossType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        LossType::parse(s)
    }
}

/// The arguments of `AngularPenaltySMLoss(in_features, out_features, loss_type = "arcface",
/// eps = 1e-7, s = None, m = None, normalize_weight = true, reduction = "mean")`.
#[derive(Debug, Clone, PartialEq)]
pub struct AngularPenaltySMConfig {
    /// The embedding size `D` of `x` `[N, D]`; positive.
    pub in_features: usize,
    /// The class count, the rows of the weight `[out_features, in_features]`; positive.
    pub out_features: usize,
    /// The kind of margin (`arcface` by default).
    pub loss_type: LossType,
    /// The target cosine is clamped to `[-1 + eps, 1 - eps]` before its `acos` (`1e-7` by
    /// default); finite and `>= 0`.
    pub eps: f64,
    /// The scale of the logits; `None` (the default) takes the loss type's default. An explicit
    /// 0 stays 0 (every logit is 0); finite and `>= 0`.
    pub s: Option<f64>,
    /// The margin; `None` (the default) takes the loss type's default. An explicit 0 stays 0;
    /// finite and `>= 0`.
    pub m: Option<f64>,
    /// `true` (the default): each class row of the weight is normalised to unit length; `false`
    /// uses the raw weight, as deepml 3.3.1 does.
    pub normalize_weight: bool,
    /// How the per-sample losses are combined (`mean` by default).
    pub reduction: Reduction,
}

impl AngularPenaltySMConfig {
    /// The arguments with the given sizes and loss type and the defaults of the others.
    pub fn new(in_features: usize, out_features: usize, loss_type: LossType) -> Self {
        AngularPenaltySMConfig {
            in_features,
            out_features,
            loss_type,
            eps: 1e-7,
            s: None,
            m: None,
            normalize_weight: true,
            reduction: Reduction::Mean,
        }
    }
    /// `s`, explicit or the loss type's default (an explicit 0 stays 0).
    pub fn scale(&self) -> f64 {
        self.s.unwrap_or(self.loss_type.defaults().0)
    }
    /// `m`, explicit or the loss type's default (an explicit 0 stays 0).
    pub fn margin(&self) -> f64 {
        self.m.unwrap_or(self.loss_type.defaults().1)
    }
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        if self.in_features == 0 || self.out_features == 0 {
            return Err(Error::InvalidConfig(format!(
                "AngularPenaltySMLoss: in_features ({}) and out_features ({}) must be positive",
                self.in_features, self.out_features
            )));
        }
        finite_nonneg("AngularPenaltySMLoss eps", self.eps)?;
        finite_nonneg("AngularPenaltySMLoss s", self.scale())?;
        finite_nonneg("AngularPenaltySMLoss m", self.margin())
    }
    /// Checks `x [N, in_features]`, `labels [N]`, `weight [out_features, in_features]`; returns N.
    pub fn check_shapes(&self, x: &[usize], labels: &[usize], weight: &[usize]) -> Result<usize> {
        self.validate()?;
        if x.len() != 2 || x[1] != self.in_features {
            return Err(Error::ShapeMismatch(format!(
                "AngularPenaltySMLoss: x must be [N, {}], got {x:?}",
                self.in_features
            )));
        }
        if labels != [x[0]] {
            return Err(Error::ShapeMismatch(format!(
                "AngularPenaltySMLoss: labels must be [{}], got {labels:?}",
                x[0]
            )));
        }
        if weight != [self.out_features, self.in_features] {
            return Err(Error::ShapeMismatch(format!(
                "AngularPenaltySMLoss: weight must be [{}, {}], got {weight:?}",
                self.out_features, self.in_features
            )));
        }
        non_empty("AngularPenaltySMLoss", "x", x)?;
        Ok(x[0])
    }
}

/// Checks that every label is in `[0, classes)` (or equals `ignore`).
pub fn check_labels(what: &str, labels: &[i64], classes: usize, ignore: Option<i64>) -> Result<()> {
    for (i, &l) in labels.iter().enumerate() {
        if Some(l) == ignore {
            continue;
        }
        if l < 0 || l as u64 >= classes as u64 {
            return Err(Error::LabelOutOfRange(format!(
                "{what}: label {l} at index {i} is outside [0, {classes})"
            )));
        }
    }
    Ok(())
}

/// How a tensor-valued argument (`weight`, `pos_weight`) broadcasts against the input: its
/// values repeat with period `period` over the flat input (`value[(i / stride) % period]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Broadcast {
    /// How many consecutive input elements share one value.
    pub stride: usize,
    /// How many values the argument has along its varying dimensions.
    pub period: usize,
}

/// Finds how `arg` broadcasts against `input` (PyTorch's rules). Shapes that broadcast as one
/// contiguous block of dimensions (a suffix like `[C]` against `[N, C]`, or `[C, 1, 1]` against
/// `[N, C, H, W]`) are supported; anything else is refused.
pub fn check_broadcast(
    what: &str,
    name: &str,
    arg: &[usize],
    input: &[usize],
) -> Result<Broadcast> {
    let err = || {
        Error::ShapeMismatch(format!(
            "{what}: {name} of shape {arg:?} does not broadcast against the input {input:?}"
        ))
    };
    if arg.len() > input.len() {
        return Err(err());
    }
    let off = input.len() - arg.len();
    let mut full = vec![1usize; off];
    full.extend_from_slice(arg);
    for (a, d) in full.iter().zip(input) {
        if *a != 1 && a != d {
            return Err(err());
        }
    }
    // The dimensions where the argument varies must be one contiguous block.
    let varying: Vec<usize> = (0..full.len()).filter(|&k| full[k] != 1).collect();
    let Some((&first, &last)) = varying.first().zip(varying.last()) else {
        return Ok(Broadcast {
            stride: 1,
            period: 1,
        });
    };
    if last - first + 1 != varying.len() {
        return Err(Error::InvalidInput(format!(
            "{what}: {name} of shape {arg:?} broadcasts over non-contiguous dimensions of {input:?}, which is not supported"
        )));
    }
    Ok(Broadcast {
        stride: numel(&input[last + 1..]),
        period: numel(&full[first..=last]),
    })
}

/// `BCEWithLogitsLoss(weight = None, reduction = "mean", pos_weight = None)`, PyTorch's semantics.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BCEWithLogitsLoss {
    /// A rescaling of each element's loss, broadcast against the input (`None` by default: 1).
    pub weight: Option<HostTensor>,
    /// How the per-element losses are combined (`mean` by default).
    pub reduction: Reduction,
    /// The weight of the positive term, broadcast against the input, typically one value per
    /// class along the last dimension (`None` by default: 1).
    pub pos_weight: Option<HostTensor>,
}

impl BCEWithLogitsLoss {
    /// Checks that `weight` and `pos_weight` hold as many values as their shapes say
    /// (`Error::InvalidInput`).
    pub fn validate(&self) -> Result<()> {
        for (name, t) in [("weight", &self.weight), ("pos_weight", &self.pos_weight)] {
            if let Some(t) = t {
                if t.data.len() != numel(&t.shape) {
                    return Err(Error::InvalidInput(format!(
                        "BCEWithLogitsLoss: {name} has {} values for shape {:?}",
                        t.data.len(),
                        t.shape
                    )));
                }
            }
        }
        Ok(())
    }
    /// Returns the element count and the broadcasts of `weight` and `pos_weight`.
    pub fn check_shapes(
        &self,
        input: &[usize],
        target: &[usize],
    ) -> Result<(usize, Option<Broadcast>, Option<Broadcast>)> {
        self.validate()?;
        let n = check_pointwise("BCEWithLogitsLoss", "input", input, target)?;
        let w = self
            .weight
            .as_ref()
            .map(|t| check_broadcast("BCEWithLogitsLoss", "weight", &t.shape, input))
            .transpose()?;
        let pw = self
            .pos_weight
            .as_ref()
            .map(|t| check_broadcast("BCEWithLogitsLoss", "pos_weight", &t.shape, input))
            .transpose()?;
        Ok((n, w, pw))
    }
}

/// `CrossEntropyLoss(weight = None, ignore_index = -100, reduction = "mean", label_smoothing = 0)`,
/// with class-index targets.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossEntropyLoss {
    /// One weight per class, a vector of length `C` (`None` by default: 1).
    pub weight: Option<HostTensor>,
    /// Targets equal to it contribute neither to the loss nor to the gradient (`-100` by
    /// default).
    pub ignore_index: i64,
    /// How the per-target losses are combined (`mean` by default: divided by the summed weight
    /// of the targets that are not ignored).
    pub reduction: Reduction,
    /// The share of the target's probability spread uniformly over the `C` classes (`0` by
    /// default); in `[0, 1]`.
    pub label_smoothing: f64,
}

impl Default for CrossEntropyLoss {
    fn default() -> Self {
        CrossEntropyLoss {
            weight: None,
            ignore_index: -100,
            reduction: Reduction::Mean,
            label_smoothing: 0.0,
        }
    }
}

impl CrossEntropyLoss {
    /// Checks the arguments' domains (`Error::InvalidConfig`).
    pub fn validate(&self) -> Result<()> {
        let ls = self.label_smoothing;
        if !ls.is_finite() || !(0.0..=1.0).contains(&ls) {
            return Err(Error::InvalidConfig(format!(
                "CrossEntropyLoss: label_smoothing must be in [0, 1], got {ls}"
            )));
        }
        Ok(())
    }
    /// Checks `input [N, C, d...]` (or `[C]`) against `target [N, d...]` (or `[]`); returns the
    /// layout, with `inner` the product of the `d`s.
    pub fn check_shapes(&self, input: &[usize], target: &[usize]) -> Result<ChannelLayout> {
        self.validate()?;
        let layout = match input.len() {
            0 => {
                return Err(Error::ShapeMismatch(
                    "CrossEntropyLoss: input must be [C], [N, C] or [N, C, d1, ...], got a scalar"
                        .into(),
                ))
            }
            1 => {
                if !target.is_empty() {
                    return Err(Error::ShapeMismatch(format!(
                        "CrossEntropyLoss: an unbatched input {input:?} needs a scalar target, got {target:?}"
                    )));
                }
                ChannelLayout {
                    outer: 1,
                    channels: input[0],
                    inner: 1,
                }
            }
            _ => {
                let mut want = vec![input[0]];
                want.extend_from_slice(&input[2..]);
                if target != want.as_slice() {
                    return Err(Error::ShapeMismatch(format!(
                        "CrossEntropyLoss: input {input:?} needs target of shape {want:?}, got {target:?}"
                    )));
                }
                ChannelLayout::of(input)
            }
        };
        if layout.numel() == 0 {
            return Err(Error::EmptyInput(format!(
                "CrossEntropyLoss: input {input:?} has no elements"
            )));
        }
        if let Some(w) = &self.weight {
            if w.data.len() != layout.channels || w.shape.len() != 1 {
                return Err(Error::InvalidInput(format!(
                    "CrossEntropyLoss: weight must be a vector of length C = {}, got shape {:?}",
                    layout.channels, w.shape
                )));
            }
        }
        Ok(layout)
    }
}

/// The `mode` of the segmentation_models_pytorch losses ([`crate::FocalLoss`],
/// [`crate::TverskyLoss`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SmpMode {
    /// One class: `y_pred` `[N, 1, ...]` (or any shape), `y_true` floats of the same shape (or
    /// without the size-1 channel dimension).
    #[default]
    Binary,
    /// `y_pred` `[N, C, ...]`, `y_true` `[N, ...]` class indices.
    Multiclass,
    /// `y_pred` `[N, C, ...]`, `y_true` floats of the same shape, one independent class per
    /// channel.
    Multilabel,
}

impl SmpMode {
    /// `"binary"`, `"multiclass"` or `"multilabel"`.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "binary" => Ok(SmpMode::Binary),
            "multiclass" => Ok(SmpMode::Multiclass),
            "multilabel" => Ok(SmpMode::Multilabel),
            _ => Err(Error::InvalidConfig(format!(
                "mode must be 'binary', 'multiclass' or 'multilabel', not {s:?}"
            ))),
        }
    }
    /// The name `parse` takes.
    pub fn name(self) -> &'static str {
        match self {
            SmpMode::Binary => "binary",
            SmpMode::Multiclass => "multiclass",
            SmpMode::Multilabel => "multilabel",
        }
    }
}

impl std::str::FromStr for SmpMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        SmpMode::parse(s)
    }
}

/// The shapes of the segmentation_models_pytorch losses: `binary` takes `y_true` of
/// `y_pred`'s shape, or of `y_pred`'s without its size-1 dimension 1 (`[N, 1, H, W]` against
/// `[N, H, W]`), and flattens both (layout `[numel, 1, 1]`); `multilabel` takes equal shapes
/// `[N, C, ...]`; `multiclass` takes `y_pred` `[N, C, ...]` and `y_true` `[N, ...]`.
pub fn check_smp(
    what: &str,
    mode: SmpMode,
    y_pred: &[usize],
    y_true: &[usize],
) -> Result<ChannelLayout> {
    let without_dim1 = |s: &[usize]| -> Vec<usize> {
        let mut w = vec![s[0]];
        w.extend_from_slice(&s[2..]);
        w
    };
    if y_pred.is_empty() || (mode != SmpMode::Binary && y_pred.len() < 2) {
        return Err(Error::ShapeMismatch(format!(
            "{what}: y_pred of shape {y_pred:?} must be [N, C, ...] in {} mode",
            mode.name()
        )));
    }
    let layout = match mode {
        SmpMode::Binary => {
            let fits = y_true == y_pred
                || (y_pred.len() >= 2 && y_pred[1] == 1 && y_true == without_dim1(y_pred));
            if !fits {
                return Err(Error::ShapeMismatch(format!(
                    "{what}: in binary mode y_true {y_true:?} must have y_pred's shape {y_pred:?}"
                )));
            }
            ChannelLayout {
                outer: numel(y_pred),
                channels: 1,
                inner: 1,
            }
        }
        SmpMode::Multilabel => {
            same_shape(what, "y_pred", y_pred, "y_true", y_true)?;
            ChannelLayout::of(y_pred)
        }
        SmpMode::Multiclass => {
            let want = without_dim1(y_pred);
            if y_true != want.as_slice() {
                return Err(Error::ShapeMismatch(format!(
                    "{what}: in multiclass mode y_pred {y_pred:?} needs y_true of shape {want:?}, got {y_true:?}"
                )));
            }
            ChannelLayout::of(y_pred)
        }
    };
    non_empty(what, "y_pred", y_pred)?;
    Ok(layout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_forms() {
        assert_eq!(
            check_broadcast("t", "w", &[5], &[6, 5]).unwrap(),
            Broadcast {
                stride: 1,
                period: 5
            }
        );
        assert_eq!(
            check_broadcast("t", "w", &[3, 1, 1], &[2, 3, 4, 5]).unwrap(),
            Broadcast {
                stride: 20,
                period: 3
            }
        );
        assert_eq!(
            check_broadcast("t", "w", &[1], &[2, 3]).unwrap(),
            Broadcast {
                stride: 1,
                period: 1
            }
        );
        assert!(check_broadcast("t", "w", &[4], &[6, 5]).is_err());
        assert!(check_broadcast("t", "w", &[2, 1, 4], &[2, 3, 4]).is_err());
    }

    #[test]
    fn config_domains() {
        assert!(RMSELoss { eps: -1.0 }.validate().is_err());
        assert!(RMSELoss { eps: f64::NAN }.validate().is_err());
        assert!(LossType::parse("adaface").is_err());
        let ce = CrossEntropyLoss {
            label_smoothing: 1.5,
            ..Default::default()
        };
        assert_eq!(ce.validate().unwrap_err().kind(), "invalid_config");
    }

    #[test]
    fn reduction_from_str() {
        for r in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            assert_eq!(r.name().parse::<Reduction>().unwrap(), r);
        }
        let e = "average".parse::<Reduction>().unwrap_err();
        assert_eq!(e.kind(), "invalid_config");
    }

    #[test]
    fn distance_from_str() {
        assert_eq!(
            "euclidean".parse::<Distance>().unwrap(),
            Distance::Euclidean
        );
        assert_eq!("cosine".parse::<Distance>().unwrap(), Distance::Cosine);
        let e = "manhattan".parse::<Distance>().unwrap_err();
        assert_eq!(e.kind(), "invalid_config");
    }

    #[test]
    fn loss_type_from_str() {
        for t in [LossType::ArcFace, LossType::SphereFace, LossType::CosFace] {
            assert_eq!(t.name().parse::<LossType>().unwrap(), t);
        }
        let e = "ArcFace".parse::<LossType>().unwrap_err();
        assert_eq!(e.kind(), "invalid_config");
    }
}
