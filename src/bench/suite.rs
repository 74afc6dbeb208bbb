//! What the benchmark times: the default suite (every loss once) and the segmentation suite
//! (the losses of segmentation training over [N, C, H, W]), with their inputs.

use super::*;

/// A benchmark entry: the loss, its inputs (host data and shapes), and its baseline.
pub(crate) struct Entry {
    pub(crate) spec: LossSpec,
    /// The name in the report when it is not the loss's own (a configuration of it).
    pub(crate) label: Option<String>,
    pub(crate) inputs: Vec<(Vec<usize>, Input)>,
    pub(crate) baseline: Option<Baseline>,
    pub(crate) flops: Option<f64>,
}

pub(crate) enum Input {
    F32 { lo: f32, hi: f32, binary: bool },
    Labels(usize),
}

pub(crate) fn entries(size: usize) -> Vec<Entry> {
    let f = |lo, hi| Input::F32 {
        lo,
        hi,
        binary: false,
    };
    let bin = Input::F32 {
        lo: 0.0,
        hi: 1.0,
        binary: true,
    };
    let flat = vec![size];
    let seg = vec![(size / 65536).max(1), 1, 256, 256];
    let rows = vec![(size / 1024).max(1), 1024];
    let pair = vec![(size / 128).max(1), 128];
    let mut v = vec![
        Entry {
            spec: LossSpec::of(JaccardLoss::new(false)),
            inputs: vec![(seg.clone(), f(-4.0, 4.0)), (seg.clone(), bin)],
            baseline: Some(baseline_jaccard),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(DiceLoss {
                is_multiclass: true,
                ..Default::default()
            }),
            inputs: vec![
                (vec![(size / 196608).max(1), 3, 256, 256], f(-4.0, 4.0)),
                (
                    vec![(size / 196608).max(1), 3, 256, 256],
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(BCEWithLogitsLoss::default()),
            inputs: vec![
                (rows.clone(), f(-6.0, 6.0)),
                (
                    rows.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: Some(baseline_bce),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(WeightedBCEWithLogitsLoss {
                w_p: 3.0,
                ..Default::default()
            }),
            inputs: vec![
                (flat.clone(), f(-6.0, 6.0)),
                (
                    flat.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: Some(baseline_wbce),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(RMSELoss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_rmse),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(MSELoss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_mse),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(L1Loss::default()),
            inputs: vec![(flat.clone(), f(-1.0, 1.0)), (flat.clone(), f(-1.0, 1.0))],
            baseline: Some(baseline_l1),
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(CrossEntropyLoss::default()),
            inputs: vec![
                (rows.clone(), f(-4.0, 4.0)),
                (vec![rows[0]], Input::Labels(1024)),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
        Entry {
            spec: LossSpec::of(ContrastiveLoss::default()),
            inputs: vec![
                (pair.clone(), f(-1.0, 1.0)),
                (pair.clone(), f(-1.0, 1.0)),
                (
                    vec![pair[0]],
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            ],
            baseline: None,
            flops: None,
            label: None,
        },
    ];
    // ArcFace: its cost is the matrix products, reported in GFLOP/s. 1024 x 512 -> 10000 at
    // the default size; --size scales the classes.
    let (n, d) = (1024usize, 512usize);
    let c = ((size as u64 * 10000) >> 24).max(1) as usize;
    v.push(Entry {
        spec: LossSpec::of(AngularPenaltySMConfig::new(d, c, LossType::ArcFace)),
        inputs: vec![
            (vec![n, d], f(-1.0, 1.0)),
            (vec![n], Input::Labels(c)),
            (vec![c, d], f(-0.044, 0.044)),
        ],
        baseline: None,
        flops: Some(3.0 * 2.0 * n as f64 * d as f64 * c as f64),
        label: None,
    });
    v
}

/// The class counts of the segmentation suite: binary, Cityscapes, Pascal VOC, a 64-class
/// label set, ADE20K.
pub const SEGMENTATION_CLASSES: [usize; 5] = [2, 19, 21, 64, 150];

/// The `[N, C, H, W]` shape of the segmentation suite for C classes: Cityscapes-like crops
/// (H:W = 1:2, from 512 x 1024 down) with at least two samples, about `size` logits in all.
pub fn segmentation_shape(size: usize, classes: usize) -> Vec<usize> {
    let pixels = (size / classes.max(1)).max(1);
    let (mut h, mut w) = (512usize, 1024usize);
    while h > 8 && pixels / (h * w) < 2 {
        h /= 2;
        w /= 2;
    }
    vec![(pixels / (h * w)).max(1), classes, h, w]
}

/// A loss of the segmentation suite: its name in the report, and its configuration for C
/// classes. One line per loss; the inputs follow from `SegTarget`.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) type SegLoss = (&'static str, SegTarget, fn() -> LossSpec);

/// What a segmentation loss takes as its target.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Copy)]
pub(crate) enum SegTarget {
    /// Class indices `[N, H, W]` (cross-entropy).
    Labels,
    /// A float mask of the logits' shape (Jaccard, Dice).
    Mask,
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn segmentation_losses() -> Vec<SegLoss> {
    vec![
        ("CrossEntropyLoss", SegTarget::Labels, || {
            LossSpec::of(CrossEntropyLoss::default())
        }),
        ("JaccardLoss", SegTarget::Mask, || {
            LossSpec::of(JaccardLoss::new(true))
        }),
        ("JaccardLoss per_class", SegTarget::Mask, || {
            LossSpec::of(JaccardLoss {
                per_class: true,
                ..JaccardLoss::new(true)
            })
        }),
        ("DiceLoss", SegTarget::Mask, || {
            LossSpec::of(DiceLoss::new(true))
        }),
        ("DiceLoss per_class", SegTarget::Mask, || {
            LossSpec::of(DiceLoss {
                per_class: true,
                ..DiceLoss::new(true)
            })
        }),
        ("FocalLoss", SegTarget::Labels, || {
            LossSpec::of(crate::FocalLoss::multiclass())
        }),
        ("TverskyLoss", SegTarget::Labels, || {
            LossSpec::of(crate::TverskyLoss::multiclass())
        }),
    ]
}

/// The segmentation suite: every loss of `segmentation_losses` at every class count.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn segmentation_entries(size: usize) -> Vec<Entry> {
    let mut v = Vec::new();
    for &c in &SEGMENTATION_CLASSES {
        let shape = segmentation_shape(size, c);
        let labels = vec![shape[0], shape[2], shape[3]];
        for (label, target, spec) in segmentation_losses() {
            let logits = (
                shape.clone(),
                Input::F32 {
                    lo: -4.0,
                    hi: 4.0,
                    binary: false,
                },
            );
            let target = match target {
                SegTarget::Labels => (labels.clone(), Input::Labels(c)),
                SegTarget::Mask => (
                    shape.clone(),
                    Input::F32 {
                        lo: 0.0,
                        hi: 1.0,
                        binary: true,
                    },
                ),
            };
            v.push(Entry {
                spec: spec(),
                label: Some(label.to_string()),
                inputs: vec![logits, target],
                baseline: None,
                flops: None,
            });
        }
    }
    v
}

pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

pub(crate) fn make_input(
    ctx: &LossContext,
    shape: &[usize],
    kind: &Input,
    rng: &mut Lcg,
) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    match *kind {
        Input::F32 { lo, hi, binary } => {
            let v: Vec<f32> = (0..n)
                .map(|_| {
                    let u = rng.next();
                    if binary {
                        u.round()
                    } else {
                        lo + (hi - lo) * u
                    }
                })
                .collect();
            ctx.upload(&v, shape)
        }
        Input::Labels(c) => {
            let v: Vec<i32> = (0..n)
                .map(|_| ((rng.next() * c as f32) as i32).min(c as i32 - 1))
                .collect();
            ctx.upload_labels(&v, shape)
        }
    }
}
