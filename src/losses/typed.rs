//! The typed surface of every loss: constructors by mode, one setter per constructor argument,
//! and `forward` with exactly the loss's inputs:
//!
//! ```no_run
//! # use deepml::*;
//! # let ctx = LossContext::new()?;
//! # let output = ctx.upload(&[0.0; 8], &[1, 2, 2, 2])?;
//! # let target = ctx.upload(&[0.0; 8], &[1, 2, 2, 2])?;
//! let out = JaccardLoss::multiclass()
//!     .per_class(true)
//!     .forward(&ctx, &output, &target)?;
//! # Ok::<(), deepml::Error>(())
//! ```
//!
//! They are the same losses as the dynamic [`Loss`] trait's, which registries and
//! [`crate::Combined`] use.

use super::{GradOpts, Loss, LossOutput};
use crate::config::*;
use crate::context::LossContext;
use crate::error::Result;
use crate::tensor::Tensor;
use crate::{FocalLoss, TverskyLoss};

/// A setter per field: `loss.field(value)` returns the loss with `field = value`.
macro_rules! setters {
    ($ty:ty { $($field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                #[must_use]
                pub fn $field(mut self, $field: $fty) -> Self {
                    self.$field = $field;
                    self
                }
            )*
        }
    };
}

/// A setter per optional field, taking the value (`Some`).
macro_rules! some_setters {
    ($ty:ty { $($field:ident: $fty:ty),* $(,)? }) => {
        impl $ty {
            $(
                #[doc = concat!("Sets `", stringify!($field), "`.")]
                #[must_use]
                pub fn $field(mut self, $field: impl Into<$fty>) -> Self {
                    self.$field = Some($field.into());
                    self
                }
            )*
        }
    };
}

impl From<Vec<f32>> for HostTensor {
    /// A vector of shape `[len]`.
    fn from(data: Vec<f32>) -> Self {
        HostTensor::vector(data)
    }
}

/// `forward` and `forward_with`, taking the loss's inputs by name.
macro_rules! forward {
    ($ty:ty, $($arg:ident),+) => {
        impl $ty {
            #[doc = concat!(
                "Value and gradients in one submission, from `",
                stringify!($($arg),+),
                "` (the typed form of [`Loss::compute`])."
            )]
            pub fn forward(&self, ctx: &LossContext, $($arg: &Tensor),+) -> Result<LossOutput> {
                Loss::compute(self, ctx, &[$($arg),+])
            }
            /// As `forward`, with an upstream scale and caller-owned gradient tensors.
            pub fn forward_with(
                &self,
                ctx: &LossContext,
                $($arg: &Tensor,)+
                opts: &GradOpts,
            ) -> Result<LossOutput> {
                Loss::compute_with(self, ctx, &[$($arg),+], opts)
            }
        }
    };
}

impl JaccardLoss {
    /// Sigmoid activations (`is_multiclass = false`).
    pub fn binary() -> Self {
        JaccardLoss::new(false)
    }
    /// Softmax over dimension 1 (`is_multiclass = true`).
    pub fn multiclass() -> Self {
        JaccardLoss::new(true)
    }
}
setters!(JaccardLoss {
    is_multiclass: bool,
    eps: f64,
    per_class: bool
});
forward!(JaccardLoss, output, target);

impl DiceLoss {
    /// Sigmoid activations (`is_multiclass = false`).
    pub fn binary() -> Self {
        DiceLoss::new(false)
    }
    /// Softmax over dimension 1 (`is_multiclass = true`).
    pub fn multiclass() -> Self {
        DiceLoss::new(true)
    }
}
setters!(DiceLoss {
    is_multiclass: bool,
    smooth: f64,
    eps: f64,
    per_class: bool
});
forward!(DiceLoss, output, target);

setters!(RMSELoss { eps: f64 });
forward!(RMSELoss, output, target);
setters!(MSELoss {
    reduction: Reduction
});
forward!(MSELoss, input, target);
setters!(L1Loss {
    reduction: Reduction
});
forward!(L1Loss, input, target);

setters!(WeightedBCEWithLogitsLoss {
    w_p: f64,
    w_n: f64,
    epsilon: f64,
    reduction: Reduction
});
forward!(WeightedBCEWithLogitsLoss, logits, labels);

setters!(BCEWithLogitsLoss {
    reduction: Reduction
});
some_setters!(BCEWithLogitsLoss {
    weight: HostTensor,
    pos_weight: HostTensor
});
forward!(BCEWithLogitsLoss, input, target);

setters!(CrossEntropyLoss {
    ignore_index: i64,
    reduction: Reduction,
    label_smoothing: f64
});
some_setters!(CrossEntropyLoss { weight: HostTensor });
forward!(CrossEntropyLoss, input, target);

setters!(ContrastiveLoss {
    margin: f64,
    distance: Distance,
    reduction: Reduction
});
forward!(ContrastiveLoss, embeddings1, embeddings2, label);

impl AngularPenaltySMConfig {
    /// ArcFace (`s = 64`, `m = 0.5` unless set).
    pub fn arcface(in_features: usize, out_features: usize) -> Self {
        AngularPenaltySMConfig::new(in_features, out_features, LossType::ArcFace)
    }
    /// SphereFace (`s = 64`, `m = 1.35` unless set).
    pub fn sphereface(in_features: usize, out_features: usize) -> Self {
        AngularPenaltySMConfig::new(in_features, out_features, LossType::SphereFace)
    }
    /// CosFace (`s = 30`, `m = 0.4` unless set).
    pub fn cosface(in_features: usize, out_features: usize) -> Self {
        AngularPenaltySMConfig::new(in_features, out_features, LossType::CosFace)
    }
}
setters!(AngularPenaltySMConfig {
    eps: f64,
    normalize_weight: bool,
    reduction: Reduction
});
some_setters!(AngularPenaltySMConfig { s: f64, m: f64 });
forward!(AngularPenaltySMConfig, x, labels, weight);

impl FocalLoss {
    /// `mode = "binary"`.
    pub fn binary() -> Self {
        FocalLoss::new(SmpMode::Binary)
    }
    /// `mode = "multiclass"`.
    pub fn multiclass() -> Self {
        FocalLoss::new(SmpMode::Multiclass)
    }
    /// `mode = "multilabel"`.
    pub fn multilabel() -> Self {
        FocalLoss::new(SmpMode::Multilabel)
    }
}
setters!(FocalLoss {
    gamma: f64,
    reduction: Reduction,
    normalized: bool
});
some_setters!(FocalLoss {
    alpha: f64,
    ignore_index: i64
});
forward!(FocalLoss, y_pred, y_true);

impl TverskyLoss {
    /// `mode = "binary"`.
    pub fn binary() -> Self {
        TverskyLoss::new(SmpMode::Binary)
    }
    /// `mode = "multiclass"`.
    pub fn multiclass() -> Self {
        TverskyLoss::new(SmpMode::Multiclass)
    }
    /// `mode = "multilabel"`.
    pub fn multilabel() -> Self {
        TverskyLoss::new(SmpMode::Multilabel)
    }
}
setters!(TverskyLoss {
    alpha: f64,
    beta: f64,
    gamma: f64,
    smooth: f64,
    eps: f64
});
forward!(TverskyLoss, y_pred, y_true);
