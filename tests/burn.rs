//! deepml inside Burn (`--features burn`): the losses on Burn's tensors of a shared wgpu device,
//! under Burn's autodiff, with Burn's optimizer; no host transfer in a training step; the order
//! of Burn's and deepml's work on the shared queue; every public case through Burn equal to
//! deepml's own result.
#![cfg(feature = "burn")]

mod common;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use burn::module::{Module, Param};
use burn::optim::{GradientsParams, SgdConfig};
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use deepml::burn::{angular_weight, BurnContext, Input};
use deepml::cases::{self, check_case, evaluated_case, Evaluated, Evaluator, Verdict};
use deepml::conformance::GpuEvaluator;
use deepml::{
    AngularPenaltySMConfig, BCEWithLogitsLoss, Combined, ContextOptions, CrossEntropyLoss,
    JaccardLoss, MSELoss, Reduction,
};

/// The context of this test binary, on the backend CI asks for (`DEEPML_EXPECT_BACKEND`).
fn bctx() -> &'static BurnContext {
    static CTX: OnceLock<BurnContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = BurnContext::new(&ContextOptions::default()).expect("no GPU adapter");
        let a = ctx.loss_context().adapter();
        eprintln!("deepml burn tests on: {}", a.summary());
        common::expect_adapter(a);
        ctx
    })
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn float<const D: usize>(
    data: Vec<f32>,
    shape: [usize; D],
    device: &burn::tensor::Device,
) -> Tensor<D> {
    Tensor::<D>::from_data(TensorData::new(data, shape), device)
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

fn seg_loss() -> Combined {
    Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::binary(), &[0, 1])
}

#[test]
fn loss_and_gradient_through_autodiff_equal_deepml() {
    let b = bctx();
    let ctx = b.loss_context();
    let dev = b.autodiff_device();
    let x: Vec<f32> = (0..64)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0)
        .collect();
    let t: Vec<f32> = (0..64).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let logits = float(x.clone(), [2, 1, 4, 8], &dev).require_grad();
    let mask = float(t.clone(), [2, 1, 4, 8], &dev);
    let loss = seg_loss();
    let out = b
        .forward(&loss, [Input::from(logits.clone()), Input::from(mask)])
        .unwrap();
    assert_eq!(out.shape, Vec::<usize>::new());
    let grads = out.loss.backward();
    let g = values(logits.grad(&grads).unwrap());

    let own = loss
        .compute(
            ctx,
            &[
                &ctx.upload(&x, &[2, 1, 4, 8]).unwrap(),
                &ctx.upload(&t, &[2, 1, 4, 8]).unwrap(),
            ],
        )
        .unwrap();
    close(&values(out.loss), &[own.value(ctx).unwrap()], 1e-6);
    close(&g, &ctx.read(own.input_grad(0).unwrap()).unwrap(), 1e-6);
    // The terms' values, as a Burn tensor.
    let terms = values(out.terms.unwrap());
    close(
        &terms,
        &own.terms
            .iter()
            .map(|t| ctx.read_scalar(t).unwrap())
            .collect::<Vec<_>>(),
        1e-6,
    );
}

#[test]
fn upstream_gradient_scales_deepml_gradient() {
    let b = bctx();
    let dev = b.autodiff_device();
    let x = Tensor::<2>::random([4, 5], Distribution::Default, &dev).require_grad();
    let t = Tensor::<2>::random([4, 5], Distribution::Default, &dev);
    // A scalar upstream: 3 * MSE.
    let out = b
        .forward(
            &MSELoss::default(),
            [Input::from(x.clone()), Input::from(t.clone())],
        )
        .unwrap();
    let grads = out.loss.mul_scalar(3.0).backward();
    let got = values(x.grad(&grads).unwrap());
    let want = values((x.clone().inner() - t.clone().inner()).mul_scalar(6.0 / 20.0));
    close(&got, &want, 1e-5);

    // Per element (reduction none): sum(w * mse_i).
    let none = MSELoss::default().reduction(Reduction::None);
    let out = b
        .forward(&none, [Input::from(x.clone()), Input::from(t.clone())])
        .unwrap();
    assert_eq!(out.shape, vec![4, 5]);
    let w: Vec<f32> = (0..20).map(|i| i as f32 / 7.0).collect();
    let wt = float(w.clone(), [20], &dev);
    let grads = (out.loss * wt).sum().backward();
    let got = values(x.grad(&grads).unwrap());
    let d = values(x.inner() - t.inner());
    let want: Vec<f32> = d.iter().zip(&w).map(|(d, w)| 2.0 * d * w).collect();
    close(&got, &want, 1e-5);

    // Per sample: cross-entropy's [N] loss against [N, C] logits.
    let logits = Tensor::<2>::random([6, 3], Distribution::Default, &dev).require_grad();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 2, 2, 1, 0], [6]), &dev);
    let ce = CrossEntropyLoss::default().reduction(Reduction::None);
    let out = b
        .forward(
            &ce,
            [Input::from(logits.clone()), Input::from(labels.clone())],
        )
        .unwrap();
    let w = float(vec![1.0, 0.0, 2.0, 0.5, 0.0, 3.0], [6], &dev);
    let grads = (out.loss * w.clone()).sum().backward();
    let got = values(logits.grad(&grads).unwrap());
    // The same through Burn's own ops.
    let logits2 = Tensor::<2>::from_data(logits.clone().inner().into_data(), &dev).require_grad();
    let logp = burn::tensor::activation::log_softmax(logits2.clone(), 1);
    let onehot = labels.inner().one_hot::<2>(3).float();
    let onehot = Tensor::<2>::from_data(onehot.into_data(), &dev);
    let per = (logp * onehot).sum_dim(1).neg().reshape([6]);
    let grads2 = (per * w).sum().backward();
    close(&got, &values(logits2.grad(&grads2).unwrap()), 1e-5);
}

#[test]
fn burn_work_runs_before_and_after_the_loss() {
    let b = bctx();
    let ctx = b.loss_context();
    let dev = b.device().clone();
    let n = 1 << 14;
    for step in 0..3 {
        // Burn writes the logits right before the loss: kernels queued in Burn's encoder (made
        // after the mask, whose upload would submit them), no flush of Burn's own.
        let mask = Tensor::<4>::ones([4, 1, 64, 64], &dev);
        let base = Tensor::<4>::zeros([4, 1, 64, 64], &dev);
        let logits = base
            .add_scalar(0.25 * step as f32)
            .mul_scalar(2.0)
            .sub_scalar(1.0);
        let out = b
            .forward(&seg_loss(), [Input::from(logits), Input::from(mask)])
            .unwrap();
        // The loss feeds Burn's next kernel.
        let doubled = values(out.loss.clone().mul_scalar(2.0));
        let v = 0.5 * step as f32 - 1.0;
        let own = seg_loss()
            .compute(
                ctx,
                &[
                    &ctx.upload(&vec![v; n], &[4, 1, 64, 64]).unwrap(),
                    &ctx.upload(&vec![1.0; n], &[4, 1, 64, 64]).unwrap(),
                ],
            )
            .unwrap();
        let want = own.value(ctx).unwrap();
        close(&doubled, &[2.0 * want], 1e-6);
    }
}

#[test]
fn a_training_step_moves_no_tensor_across_the_host() {
    // A context of its own: the other tests upload and read through theirs meanwhile.
    let b = &BurnContext::new(&ContextOptions::default()).unwrap();
    let ctx = b.loss_context();
    let dev = b.autodiff_device();
    let mask = Tensor::<4>::random([2, 1, 32, 32], Distribution::Bernoulli(0.5), &dev);
    let mut logits = Param::from_tensor(Tensor::<4>::zeros([2, 1, 32, 32], &dev));
    let loss = seg_loss();
    let first = b
        .forward(
            &loss,
            [Input::from(logits.val()), Input::from(mask.clone())],
        )
        .unwrap();
    let first = values(first.loss);
    let before = ctx.transfers();
    for _ in 0..20 {
        let out = b
            .forward(
                &loss,
                [Input::from(logits.val()), Input::from(mask.clone())],
            )
            .unwrap();
        let grads = out.loss.backward();
        let g = logits.val().grad(&grads).unwrap();
        logits = Param::from_tensor(
            Tensor::<4>::from_inner(logits.val().inner() - g.inner().mul_scalar(2000.0))
                .require_grad(),
        );
    }
    assert_eq!(
        ctx.transfers(),
        before,
        "a tensor crossed to or from the host"
    );
    assert_eq!(b.gradient_copies(), 0, "a gradient was copied");
    let last = b
        .forward(&loss, [Input::from(logits.val()), Input::from(mask)])
        .unwrap();
    let last = values(last.loss);
    assert!(last[0] < 0.5 * first[0], "{first:?} -> {last:?}");
}

#[derive(Module, Debug)]
struct Centres {
    weight: Param<Tensor<2>>,
}

#[test]
fn angular_weight_is_a_burn_parameter_that_the_optimizer_updates() {
    let b = bctx();
    let dev = b.autodiff_device();
    let config = AngularPenaltySMConfig::cosface(8, 4);
    let mut model = Centres {
        weight: angular_weight(&config, 7, &dev).unwrap(),
    };
    let x = Tensor::<2>::random([16, 8], Distribution::Default, &dev);
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..16).map(|i| (i % 4) as i64).collect::<Vec<_>>(), [16]),
        &dev,
    );
    let w0 = values(model.weight.val());
    let mut optim = SgdConfig::new().init();
    let mut losses = Vec::new();
    // A step of 0.1: with 0.5 the first step overshot for about 1 in 18 draws of x (the loss
    // rose from 16-20 to 24-36 and was still above its start after ten steps); 0 of 200 with 0.1.
    for _ in 0..10 {
        let out = b
            .forward(
                &config,
                [
                    Input::from(x.clone()),
                    Input::from(labels.clone()),
                    Input::from(model.weight.val()),
                ],
            )
            .unwrap();
        losses.push(values(out.loss.clone())[0]);
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(0.1, model, grads);
    }
    assert_ne!(values(model.weight.val()), w0);
    assert!(losses[9] < losses[0], "{losses:?}");
}

#[test]
fn bad_input_is_a_typed_error() {
    let b = bctx();
    let dev = b.autodiff_device();
    let x = Tensor::<2>::random([4, 3], Distribution::Default, &dev).require_grad();
    let t = Tensor::<2>::random([4, 2], Distribution::Default, &dev);
    let e = b
        .forward(
            &MSELoss::default(),
            [Input::from(x.clone()), Input::from(t)],
        )
        .unwrap_err();
    assert!(matches!(e, deepml::Error::ShapeMismatch(_)), "{e}");
    // Arity.
    let e = b
        .forward(&MSELoss::default(), [Input::from(x.clone())])
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_input", "{e}");
    // A bool tensor.
    let m = Tensor::<2>::random([4, 3], Distribution::Default, &dev).greater_elem(0.0);
    let e = b
        .forward(
            &MSELoss::default(),
            [Input::from(x.clone()), Input::from(m)],
        )
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_input", "{e}");
    // A view of another element count.
    let t = Tensor::<2>::random([4, 3], Distribution::Default, &dev);
    let e = b
        .forward(
            &MSELoss::default(),
            [Input::from(x.clone()), Input::from(t).shaped(&[5])],
        )
        .unwrap_err();
    assert!(matches!(e, deepml::Error::ShapeMismatch(_)), "{e}");
    // A label out of range: the device's flags, read on demand.
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 7, 2], [4]), &dev);
    let out = b
        .forward(
            &CrossEntropyLoss::default(),
            [Input::from(x.clone()), Input::from(labels)],
        )
        .unwrap();
    let e = out.check(b).unwrap_err();
    assert!(matches!(e, deepml::Error::LabelOutOfRange(_)), "{e}");
    // The angular loss's weight under a per-sample upstream gradient.
    let config = AngularPenaltySMConfig::arcface(3, 2).reduction(Reduction::None);
    let w = angular_weight(&config, 1, &dev).unwrap();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1], [4]), &dev);
    let e = b
        .forward(
            &config,
            [Input::from(x), Input::from(labels), Input::from(w.val())],
        )
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_config", "{e}");
}

#[test]
fn burn_can_make_the_device_and_deepml_wrap_it() {
    let b = match BurnContext::from_burn(&ContextOptions::default()) {
        Ok(b) => b,
        Err(e) => {
            // Burn's default device selection skips software adapters on some machines.
            eprintln!("Burn made no device of its own here: {e}");
            return;
        }
    };
    let dev = b.autodiff_device();
    let x =
        Tensor::<1>::from_data(TensorData::new(vec![1.0f32, 2.0, 3.0], [3]), &dev).require_grad();
    let t = Tensor::<1>::from_data(TensorData::new(vec![0.0f32, 2.0, 5.0], [3]), &dev);
    let out = b
        .forward(
            &MSELoss::default(),
            [Input::from(x.clone()), Input::from(t)],
        )
        .unwrap();
    close(&values(out.loss.clone()), &[5.0 / 3.0], 1e-6);
    let g = values(x.grad(&out.loss.backward()).unwrap());
    close(&g, &[2.0 / 3.0, 0.0, -4.0 / 3.0], 1e-6);
}

/// Runs a case through Burn: inputs as flat Burn tensors viewed under the case's shapes, the
/// differentiable ones tracked; `sum(loss).backward()`.
struct BurnEvaluator<'a>(&'a BurnContext);

impl Evaluator for BurnEvaluator<'_> {
    fn name(&self) -> String {
        "burn".into()
    }
    fn eval(&self, case: &cases::Case) -> Option<deepml::Result<Evaluated>> {
        Some(self.run(case))
    }
}

impl BurnEvaluator<'_> {
    fn run(&self, case: &cases::Case) -> deepml::Result<Evaluated> {
        let spec = cases::loss_spec(case)?;
        spec.check_case_labels(case)?;
        let loss = spec.boxed_loss();
        let dev = self.0.autodiff_device();
        let diff = loss.grad_names();
        let mut inputs = Vec::new();
        let mut tracked = BTreeMap::new();
        for name in loss.input_names() {
            let t = case.input(name)?;
            let n = t.data.len().max(1);
            let input = match t.dtype {
                cases::DType::I64 => {
                    let v = t.to_i64(name)?;
                    let v = if v.is_empty() { vec![0] } else { v };
                    Input::from(Tensor::<1, Int>::from_data(TensorData::new(v, [n]), &dev))
                }
                cases::DType::F32 => {
                    let v = t.to_f32();
                    let v = if v.is_empty() { vec![0.0] } else { v };
                    let mut x = Tensor::<1>::from_data(TensorData::new(v, [n]), &dev);
                    if diff.contains(name) && !(per_sample_weight(case) && *name == "weight") {
                        x = x.require_grad();
                        tracked.insert(name.to_string(), x.clone());
                    }
                    Input::from(x)
                }
            };
            inputs.push(if t.data.is_empty() {
                input
            } else {
                input.shaped(&t.shape)
            });
        }
        let out = self.0.forward(loss.as_ref(), inputs)?;
        out.check(self.0)?;
        let shape = out.shape.clone();
        let loss_values = values(out.loss.clone());
        let g = out.loss.sum().backward();
        let mut grads = BTreeMap::new();
        for (name, x) in tracked {
            let shape = case.input(&name)?.shape.clone();
            let v = x.grad(&g).map(values).unwrap_or_default();
            grads.insert(
                name,
                cases::TensorData {
                    shape,
                    dtype: cases::DType::F32,
                    data: v.iter().map(|&x| x as f64).collect(),
                },
            );
        }
        Ok(Evaluated {
            loss: cases::TensorData {
                shape,
                dtype: cases::DType::F32,
                data: loss_values.iter().map(|&x| x as f64).collect(),
            },
            grads,
        })
    }
}

/// The angular loss with `reduction = "none"`: Burn's autodiff would hand its class weight a
/// per-sample upstream gradient, which deepml's gradient of the weight (a sum over the samples)
/// cannot take, so a tracked weight is refused (`bad_input_is_a_typed_error`); here the weight
/// goes untracked and only the loss and the gradient of `x` are compared.
fn per_sample_weight(case: &cases::Case) -> bool {
    case.loss == "AngularPenaltySMLoss"
        && case.config.get("reduction").and_then(|v| v.as_str()) == Some("none")
}

#[test]
fn every_public_case_through_burn_equals_deepml() {
    let b = bctx();
    let own = GpuEvaluator {
        ctx: b.loss_context(),
    };
    let burn = BurnEvaluator(b);
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cases");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let (mut passed, mut failed) = (0, Vec::new());
    for f in &files {
        for mut case in cases::load(f).unwrap().cases {
            if per_sample_weight(&case) {
                case.grad_wrt.retain(|g| g != "weight");
                eprintln!("{}: the weight's gradient is not compared", case.name);
            }
            let mine = own.eval(&case).unwrap();
            let theirs = burn.eval(&case);
            // Against deepml's own result, within the case's tolerance; and against the case.
            let as_own = evaluated_case(&case, &mine);
            let theirs2 = burn.eval(&case);
            for (what, v) in [
                ("deepml", check_case(&as_own, theirs)),
                ("expected", check_case(&case, theirs2)),
            ] {
                match v {
                    Verdict::Pass { .. } => passed += 1,
                    other => failed.push(format!("{} ({what}): {other:?}", case.name)),
                }
            }
        }
    }
    eprintln!("{passed} checks passed over {} files", files.len());
    assert!(
        failed.is_empty(),
        "{} failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
    assert!(passed > 200, "only {passed} checks");
}
