//! The compiled variants of the element-wise kernels, each against the float64 reference:
//! four elements per access (length a multiple of 4) and one (any other length), writing the
//! gradient and adding to one already there, with and without broadcast BCE weights, the
//! weighted BCE's exact log-sigmoid (epsilon 0), cross-entropy's rows of contiguous classes
//! (read four at a time) against its strided rows, multiclass segmentation four pixels at a
//! time against one, and contrastive rows four features at a time against one.
mod common;

use deepml::cases::{self, Case, DType, Evaluator, ReferenceEvaluator, TensorData};
use deepml::*;
use serde_json::json;

fn assert_near(what: &str, got: &[f32], want: &[f64], rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(1e-30f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= rel * (w.abs() + scale),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// The case's loss on the GPU, plain and accumulating into a random gradient, both against the
/// reference.
fn run(c: &Case) {
    let ctx = common::ctx();
    let want = ReferenceEvaluator.eval(c).unwrap().unwrap();
    let spec = cases::loss_spec(c).unwrap();
    let loss = deepml::losses::gpu_loss(&spec).unwrap();
    let inputs: Vec<Tensor> = loss
        .input_names()
        .iter()
        .map(|name| {
            let t = c.input(name).unwrap();
            if t.dtype == DType::I64 {
                ctx.upload_labels_i64(&t.to_i64(name).unwrap(), &t.shape)
                    .unwrap()
            } else {
                ctx.upload(&t.to_f32(), &t.shape).unwrap()
            }
        })
        .collect();
    let refs: Vec<&Tensor> = inputs.iter().collect();
    let what = format!("{} {:?} n={}", c.loss, c.config, inputs[0].numel());
    let out = loss.compute(ctx, &refs).unwrap();
    assert_near(
        &format!("{what} loss"),
        &ctx.read(&out.loss).unwrap(),
        &want.loss.data,
        1e-5,
    );
    // Every gradient, plain and accumulated into a random one (each its input's shape).
    let names = loss.input_names();
    let mut r = common::rng(inputs[0].numel() as u64);
    let mut into = Vec::new();
    let mut before = Vec::new();
    for (k, name) in loss.grad_names().iter().enumerate() {
        let g_want = &want.grads[*name].data;
        assert_near(
            &format!("{what} grad {name}"),
            &out.grad(ctx, k).unwrap(),
            g_want,
            1e-5,
        );
        let input = &inputs[names.iter().position(|n| n == name).unwrap()];
        let g0 = common::uniform(&mut r, input.numel(), -1.0, 1.0);
        into.push(Some(ctx.upload(&g0, input.shape()).unwrap()));
        before.push(g0);
    }
    let opts = GradOpts {
        scale: 1.0,
        into: into.clone(),
        accumulate: true,
    };
    loss.compute_with(ctx, &refs, &opts).unwrap();
    for (k, name) in loss.grad_names().iter().enumerate() {
        let summed: Vec<f64> = (before[k].iter().zip(&want.grads[*name].data))
            .map(|(a, b)| *a as f64 + b)
            .collect();
        assert_near(
            &format!("{what} accumulated grad {name}"),
            &ctx.read(into[k].as_ref().unwrap()).unwrap(),
            &summed,
            1e-5,
        );
    }
}

/// 4 * 1025 elements (four per access) and one fewer (one per access).
const SIZES: [usize; 2] = [4100, 4099];

fn logits_and_targets(n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let mut r = common::rng(seed);
    let x = common::uniform(&mut r, n, -6.0, 6.0);
    let t: Vec<f32> = common::uniform(&mut r, n, 0.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 3 == 0 { *v } else { v.round() })
        .collect();
    (x, t)
}

#[test]
fn regression_variants() {
    for n in SIZES {
        let mut r = common::rng(n as u64);
        let a = common::uniform(&mut r, n, -2.0, 2.0);
        let b = common::uniform(&mut r, n, -2.0, 2.0);
        for (loss, cfg, names) in [
            ("MSELoss", json!({"reduction": "mean"}), ["input", "target"]),
            ("L1Loss", json!({"reduction": "sum"}), ["input", "target"]),
            ("RMSELoss", json!({"eps": 1e-6}), ["output", "target"]),
        ] {
            let c = common::case(
                loss,
                cfg,
                vec![
                    (names[0], common::tensor_data(&[n], &a)),
                    (names[1], common::tensor_data(&[n], &b)),
                ],
            );
            run(&c);
        }
    }
}

#[test]
fn bce_variants() {
    for n in SIZES {
        let (x, t) = logits_and_targets(n, 7 + n as u64);
        // [n / 41, 41] or [n / 4099 ...]: a last dimension the weights broadcast over.
        let shape = if n % 41 == 0 {
            vec![n / 41, 41]
        } else {
            vec![1, n]
        };
        let last = *shape.last().unwrap();
        let mut r = common::rng(3);
        let w = common::uniform(&mut r, last, 0.1, 3.0);
        let pw: Vec<f32> = w.iter().rev().copied().collect();
        let tensor = |v: &[f32]| json!({"shape": [v.len()], "dtype": "float32", "data": v});
        for cfg in [
            json!({"reduction": "mean"}),
            json!({"reduction": "sum", "weight": tensor(&w)}),
            json!({"reduction": "mean", "pos_weight": tensor(&pw)}),
            json!({"reduction": "mean", "weight": tensor(&[2.5]), "pos_weight": tensor(&[0.5])}),
        ] {
            run(&common::case(
                "BCEWithLogitsLoss",
                cfg,
                vec![
                    ("input", common::tensor_data(&shape, &x)),
                    ("target", common::tensor_data(&shape, &t)),
                ],
            ));
        }
        for epsilon in [0.0, 1e-7, 1e-3] {
            run(&common::case(
                "WeightedBCEWithLogitsLoss",
                json!({"w_p": 3.0, "w_n": 0.5, "epsilon": epsilon}),
                vec![
                    ("logits", common::tensor_data(&[n], &x)),
                    ("labels", common::tensor_data(&[n], &t)),
                ],
            ));
        }
    }
}

#[test]
fn multiclass_segmentation_variants() {
    // Spatial sizes of 24 (four pixels per access) and 15 (one pixel), one global ratio and
    // per class.
    for shape in [vec![2, 3, 4, 6], vec![3, 5, 5, 3]] {
        let n: usize = shape.iter().product();
        let (x, t) = logits_and_targets(n, 13 + n as u64);
        for (loss, cfg) in [
            ("JaccardLoss", json!({"is_multiclass": true})),
            ("DiceLoss", json!({"is_multiclass": true, "smooth": 0.5})),
            (
                "DiceLoss",
                json!({"is_multiclass": true, "per_class": true}),
            ),
        ] {
            run(&common::case(
                loss,
                cfg,
                vec![
                    ("output", common::tensor_data(&shape, &x)),
                    ("target", common::tensor_data(&shape, &t)),
                ],
            ));
        }
    }
}

#[test]
fn binary_segmentation_variants() {
    for n in SIZES {
        let (x, t) = logits_and_targets(n, 11 + n as u64);
        let shape = [1, 1, n];
        for (loss, cfg) in [
            ("JaccardLoss", json!({})),
            ("DiceLoss", json!({"smooth": 1.0})),
        ] {
            run(&common::case(
                loss,
                cfg,
                vec![
                    ("output", common::tensor_data(&shape, &x)),
                    ("target", common::tensor_data(&shape, &t)),
                ],
            ));
        }
    }
}

#[test]
fn cross_entropy_variants() {
    // [N, 36] and [N, 40]: contiguous classes, four per access (one subgroup or 32 threads per
    // row); [N, 37]: one class per access; [N, 4, 3]: strided classes. Weights, label smoothing,
    // an ignored target and every reduction.
    for shape in [vec![50, 36], vec![21, 40], vec![50, 37], vec![9, 4, 3]] {
        let c = shape[1];
        let positions: usize = shape.iter().product::<usize>() / c;
        let mut r = common::rng(c as u64);
        let x = common::uniform(&mut r, shape.iter().product(), -5.0, 5.0);
        let mut labels: Vec<f64> = (0..positions).map(|i| ((i * 7 + 3) % c) as f64).collect();
        labels[1] = -100.0;
        let mut label_shape = vec![shape[0]];
        label_shape.extend(&shape[2..]);
        let target = TensorData {
            shape: label_shape,
            dtype: DType::I64,
            data: labels,
        };
        let w = common::uniform(&mut r, c, 0.2, 2.0);
        for cfg in [
            json!({"reduction": "mean"}),
            json!({"reduction": "sum", "label_smoothing": 0.1}),
            json!({"reduction": "mean", "weight": {"shape": [c], "dtype": "float32", "data": w}, "label_smoothing": 0.2}),
            json!({"reduction": "none", "weight": {"shape": [c], "dtype": "float32", "data": w}}),
        ] {
            run(&common::case(
                "CrossEntropyLoss",
                cfg,
                vec![
                    ("input", common::tensor_data(&shape, &x)),
                    ("target", target.clone()),
                ],
            ));
        }
    }
}

#[test]
fn contrastive_variants() {
    // D = 128 (four features per access) and 127 (one); both distances.
    for d in [128usize, 127] {
        let rows = 40;
        let mut r = common::rng(d as u64);
        let a = common::uniform(&mut r, rows * d, -1.0, 1.0);
        let b = common::uniform(&mut r, rows * d, -1.0, 1.0);
        let y: Vec<f32> = (0..rows).map(|i| (i % 3 == 0) as u8 as f32).collect();
        for cfg in [
            json!({"margin": 8.0}),
            json!({"distance": "cosine", "margin": 1.0, "reduction": "sum"}),
            json!({"reduction": "none"}),
        ] {
            run(&common::case(
                "ContrastiveLoss",
                cfg,
                vec![
                    ("embeddings1", common::tensor_data(&[rows, d], &a)),
                    ("embeddings2", common::tensor_data(&[rows, d], &b)),
                    ("label", common::tensor_data(&[rows], &y)),
                ],
            ));
        }
    }
}
