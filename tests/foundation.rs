//! The shared machinery: reductions (accuracy, determinism), windows over the binding limit,
//! large tensors, typed errors, device loss, pooling.
mod common;

use deepml::*;

fn mse_sum() -> MSELoss {
    MSELoss {
        reduction: Reduction::Sum,
    }
}

#[test]
fn reduction_of_ten_million_values_is_accurate() {
    let ctx = common::ctx();
    let mut r = common::rng(11);
    let n = 10_000_000;
    let x = common::uniform(&mut r, n, 0.0, 1.0);
    let zeros = vec![0.0f32; n];
    let want: f64 = x.iter().map(|&v| v as f64).sum();
    let tx = ctx.upload(&x, &[n]).unwrap();
    let tz = ctx.upload(&zeros, &[n]).unwrap();
    let got = L1Loss {
        reduction: Reduction::Sum,
    }
    .compute(ctx, &[&tx, &tz])
    .unwrap()
    .value(ctx)
    .unwrap() as f64;
    let rel = (got - want).abs() / want;
    eprintln!("sum of 1e7 uniform values: gpu {got}, f64 {want}, relative error {rel:e}");
    assert!(rel < 1e-6, "relative error {rel:e}");
}

#[test]
fn results_are_bit_identical_over_three_runs() {
    let ctx = common::ctx();
    let mut r = common::rng(12);
    let n = 1_234_567;
    let a = common::uniform(&mut r, n, -3.0, 3.0);
    let b = common::uniform(&mut r, n, -3.0, 3.0);
    let (ta, tb) = (ctx.upload(&a, &[n]).unwrap(), ctx.upload(&b, &[n]).unwrap());
    let run = |loss: &dyn Loss| {
        let o = loss.compute(ctx, &[&ta, &tb]).unwrap();
        let v = ctx.read(&o.loss).unwrap();
        let g = ctx.read(&o.grads[0]).unwrap();
        (
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            g.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
        )
    };
    for loss in [
        &RMSELoss::default() as &dyn Loss,
        &MSELoss::default(),
        &L1Loss::default(),
    ] {
        let first = run(loss);
        for _ in 0..2 {
            assert!(
                run(loss) == first,
                "{} is not bit-identical from run to run",
                loss.name()
            );
        }
    }
}

#[test]
fn windowed_dispatch_matches_the_plain_one() {
    // Bindings capped at 64 KiB: a 100k-element tensor takes 7 windows.
    let plain = common::ctx();
    let small = common::windowed_ctx(64 * 1024);
    let mut r = common::rng(13);
    let n = 100_003;
    let a = common::uniform(&mut r, n, -3.0, 3.0);
    let b = common::uniform(&mut r, n, -3.0, 3.0);
    for loss in [
        &RMSELoss::default() as &dyn Loss,
        &MSELoss::default(),
        &L1Loss {
            reduction: Reduction::None,
        },
    ] {
        let mut outs = Vec::new();
        for ctx in [plain, &small] {
            let (ta, tb) = (ctx.upload(&a, &[n]).unwrap(), ctx.upload(&b, &[n]).unwrap());
            let o = loss.compute(ctx, &[&ta, &tb]).unwrap();
            outs.push((ctx.read(&o.loss).unwrap(), ctx.read(&o.grads[0]).unwrap()));
        }
        assert_eq!(outs[0], outs[1], "{}: windowed result differs", loss.name());
    }
}

#[test]
fn tensor_over_one_storage_binding_matches_the_reference() {
    let ctx = common::ctx();
    let binding = ctx.adapter().limits.max_storage_buffer_binding_size as usize;
    let n = (1usize << 25) + 12_345; // more than 128 MiB of f32
    eprintln!(
        "{n} elements = {} MiB, binding limit {} MiB",
        (n * 4) >> 20,
        binding >> 20
    );
    let mut r = common::rng(14);
    let a = common::uniform(&mut r, n, -1.0, 1.0);
    let b = common::uniform(&mut r, n, -1.0, 1.0);
    let (ta, tb) = (ctx.upload(&a, &[n]).unwrap(), ctx.upload(&b, &[n]).unwrap());
    let o = RMSELoss::default().compute(ctx, &[&ta, &tb]).unwrap();
    let s: f64 = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let want = (s / n as f64 + 1e-6).sqrt();
    let got = o.value(ctx).unwrap() as f64;
    assert!((got - want).abs() <= 1e-6 * want, "rmse {got} vs {want}");
    let g = ctx.read(&o.grads[0]).unwrap();
    let want_g: Vec<f64> = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64) / (n as f64 * want))
        .collect();
    common::assert_close("rmse grad", &g, &want_g, 1e-5, 1e-6);
}

#[test]
fn every_kind_of_bad_input_is_a_typed_error() {
    let ctx = common::ctx();
    let a = ctx
        .upload(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[2, 3])
        .unwrap();
    let b = ctx.upload(&[1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap();
    let e = ctx.upload(&[], &[0, 3]).unwrap();

    let err = MSELoss::default().compute(ctx, &[&a, &b]).err().unwrap();
    assert!(matches!(err, Error::ShapeMismatch(_)), "{err}");
    assert_eq!(err.kind(), "invalid_input");

    let err = L1Loss::default().compute(ctx, &[&e, &e]).err().unwrap();
    assert!(matches!(err, Error::EmptyInput(_)), "{err}");

    for eps in [-1e-6, f64::NAN, f64::INFINITY] {
        let err = RMSELoss { eps }.compute(ctx, &[&a, &a]).err().unwrap();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
        assert_eq!(err.kind(), "invalid_config");
    }
    let err = MSELoss::default()
        .compute_with(ctx, &[&a, &a], &GradOpts::scaled(f32::NAN))
        .err()
        .unwrap();
    assert!(matches!(err, Error::InvalidConfig(_)), "{err}");

    let err = check_labels("test", &[0, 3, 7], 5, Some(-100)).unwrap_err();
    assert!(matches!(err, Error::LabelOutOfRange(_)), "{err}");
    assert!(check_labels("test", &[0, -100, 4], 5, Some(-100)).is_ok());
    let err = ctx.upload_labels_i64(&[1 << 40], &[1]).unwrap_err();
    assert!(matches!(err, Error::LabelOutOfRange(_)), "{err}");

    let err = LossContext::with_options(ContextOptions {
        adapter_name: Some("no such adapter 1234".into()),
        ..Default::default()
    })
    .err()
    .unwrap();
    assert!(matches!(err, Error::NoAdapter(_)), "{err}");

    let err = ctx.empty(&[1 << 40], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    let err = ctx.empty(&[usize::MAX, 3], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");

    let err = MSELoss::default().compute(ctx, &[&a]).err().unwrap();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert_eq!(err.error_kind(), deepml::ErrorKind::InvalidInput);
    assert!(std::error::Error::source(&err).is_none());

    // A buffer without COPY_SRC cannot be read back: wgpu's validation error comes back typed.
    let raw = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: None,
        size: 16,
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let t = Tensor::from_buffer(ctx, raw, 0, &[4], DType::F32).unwrap();
    let err = ctx.read(&t).unwrap_err();
    assert!(matches!(err, Error::Wgpu(_)), "{err}");
    // Its category, and wgpu's error (with its own chain) as the source.
    assert_eq!(err.error_kind(), deepml::ErrorKind::Wgpu);
    assert_eq!(err.kind(), "wgpu");
    let source = std::error::Error::source(&err).expect("the wgpu error is the source");
    assert!(!source.to_string().is_empty());
    let mut depth = 0;
    let mut at: Option<&dyn std::error::Error> = Some(source);
    while let Some(e) = at {
        depth += 1;
        at = e.source();
    }
    assert!(
        depth >= 2,
        "wgpu's validation error carries its cause: {depth}"
    );

    // None of that poisoned the context.
    let o = MSELoss::default().compute(ctx, &[&a, &a]).unwrap();
    assert_eq!(o.value(ctx).unwrap(), 0.0);
}

#[test]
fn a_lost_device_is_an_error_and_a_new_context_works() {
    let ctx = LossContext::new().unwrap();
    let a = ctx.upload(&[1.0, 2.0], &[2]).unwrap();
    ctx.destroy();
    let err = MSELoss::default().compute(&ctx, &[&a, &a]).err().unwrap();
    assert!(matches!(err, Error::DeviceLost(_)), "{err}");
    assert!(matches!(ctx.read(&a).unwrap_err(), Error::DeviceLost(_)));
    let fresh = LossContext::new().unwrap();
    let b = fresh.upload(&[1.0, 3.0], &[2]).unwrap();
    let c = fresh.upload(&[0.0, 1.0], &[2]).unwrap();
    assert_eq!(
        MSELoss::default()
            .compute(&fresh, &[&b, &c])
            .unwrap()
            .value(&fresh)
            .unwrap(),
        2.5
    );
}

#[test]
fn gradient_options_scale_write_into_and_accumulate() {
    let ctx = common::ctx();
    let mut r = common::rng(15);
    let n = 3001;
    let a = common::uniform(&mut r, n, -1.0, 1.0);
    let b = common::uniform(&mut r, n, -1.0, 1.0);
    let (ta, tb) = (ctx.upload(&a, &[n]).unwrap(), ctx.upload(&b, &[n]).unwrap());
    let base = ctx
        .read(&mse_sum().compute(ctx, &[&ta, &tb]).unwrap().grads[0])
        .unwrap();
    let scaled = ctx
        .read(
            &mse_sum()
                .compute_with(ctx, &[&ta, &tb], &GradOpts::scaled(0.5))
                .unwrap()
                .grads[0],
        )
        .unwrap();
    for (s, g) in scaled.iter().zip(&base) {
        assert_eq!(*s, 0.5 * g);
    }
    let acc = ctx.upload(&vec![1.0; n], &[n]).unwrap();
    let opts = GradOpts {
        scale: 2.0,
        into: vec![Some(acc.clone())],
        accumulate: true,
    };
    let o = mse_sum().compute_with(ctx, &[&ta, &tb], &opts).unwrap();
    assert!(o.grads[0].same_buffer(&acc));
    let got = ctx.read(&acc).unwrap();
    for (x, g) in got.iter().zip(&base) {
        assert!((x - (1.0 + 2.0 * g)).abs() <= 1e-6 * (1.0 + x.abs()));
    }
}

#[test]
fn a_training_loop_reuses_its_buffers() {
    let ctx = LossContext::new().unwrap();
    let mut r = common::rng(16);
    let n = 50_000;
    let a = ctx
        .upload(&common::uniform(&mut r, n, -1.0, 1.0), &[n])
        .unwrap();
    let b = ctx
        .upload(&common::uniform(&mut r, n, -1.0, 1.0), &[n])
        .unwrap();
    let mut after_first = None;
    for step in 0..200 {
        let o = RMSELoss::default().compute(&ctx, &[&a, &b]).unwrap();
        if step % 50 == 0 {
            o.value(&ctx).unwrap();
        }
        drop(o);
        let s = ctx.stats();
        match after_first {
            None => after_first = Some(s.allocated_bytes),
            Some(bytes) => assert_eq!(
                s.allocated_bytes, bytes,
                "step {step} allocated more: {s:?}"
            ),
        }
    }
    assert!(ctx.stats().pool_hits > 0);
    assert!(ctx.pipelines_built() <= 8, "pipelines are cached");
}

#[test]
fn context_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<LossContext>();
    check::<Tensor>();
}

/// A loss value and gradient from two contexts, equal up to rounding.
fn agree(name: &str, (v1, g1): (f32, Vec<f32>), (v2, g2): (f32, Vec<f32>)) {
    assert!(
        (v1 - v2).abs() <= 1e-5 * v2.abs().max(1e-3),
        "{name}: {v1} vs {v2}"
    );
    let scale = g2.iter().fold(0.0f32, |m, g| m.max(g.abs()));
    for (a, b) in g1.iter().zip(&g2) {
        assert!((a - b).abs() <= 1e-5 * scale, "{name}: {a} vs {b}");
    }
}

#[test]
fn subgroup_reductions_agree_with_the_barrier_tree() {
    // Where the adapter's subgroups passed the context's probe (lavapipe: 8, NVIDIA: 32), the
    // workgroup reductions use them; a context told not to uses the barrier tree. Both must
    // give the same losses and gradients up to rounding.
    let ctx = common::ctx();
    eprintln!("subgroup size: {:?}", ctx.subgroup_size());
    if let Ok("vulkan") = std::env::var("DEEPML_EXPECT_BACKEND").as_deref() {
        assert!(
            ctx.uses_subgroups(),
            "Vulkan adapters with SUBGROUP (lavapipe, NVIDIA) pass the probe"
        );
    }
    let tree = LossContext::with_options(ContextOptions {
        disable_subgroups: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!tree.uses_subgroups());
    let mut r = common::rng(77);
    let n = 300_001;
    let x = common::uniform(&mut r, n, -4.0, 4.0);
    let t: Vec<f32> = common::uniform(&mut r, n, 0.0, 1.0)
        .iter()
        .map(|v| v.round())
        .collect();
    let losses: Vec<Box<dyn Loss>> = vec![
        Box::new(mse_sum()),
        Box::new(BCEWithLogitsLoss::default()),
        Box::new(JaccardLoss::new(false)),
    ];
    for loss in &losses {
        let run = |c: &LossContext| {
            let (a, b) = (
                c.upload(&x, &[1, 1, n]).unwrap(),
                c.upload(&t, &[1, 1, n]).unwrap(),
            );
            let o = loss.compute(c, &[&a, &b]).unwrap();
            (o.value(c).unwrap(), o.grad(c, 0).unwrap())
        };
        agree(loss.name(), run(ctx), run(&tree));
    }
    // Row segments of one subgroup: cross-entropy over 300 classes, contrastive over 100
    // features (and the whole-workgroup segments of 5000 classes).
    let labels: Vec<i64> = (0..64).map(|i| (i * 37 % 300) as i64).collect();
    let same: Vec<f32> = (0..64).map(|i| (i % 2) as f32).collect();
    for (loss, shapes) in [
        (
            Box::new(CrossEntropyLoss::default()) as Box<dyn Loss>,
            vec![vec![64, 300]],
        ),
        (Box::new(CrossEntropyLoss::default()), vec![vec![8, 5000]]),
        (
            Box::new(ContrastiveLoss::default()),
            vec![vec![64, 100], vec![64, 100]],
        ),
    ] {
        let run = |c: &LossContext| {
            let mut r = common::rng(5);
            let mut inputs: Vec<Tensor> = shapes
                .iter()
                .map(|s| {
                    let v = common::uniform(&mut r, s.iter().product(), -2.0, 2.0);
                    c.upload(&v, s).unwrap()
                })
                .collect();
            let rows = shapes[0][0];
            inputs.push(if loss.name() == "CrossEntropyLoss" {
                let l: Vec<i64> = labels.iter().map(|v| v % shapes[0][1] as i64).collect();
                c.upload_labels_i64(&l[..rows], &[rows]).unwrap()
            } else {
                c.upload(&same[..rows], &[rows]).unwrap()
            });
            let refs: Vec<&Tensor> = inputs.iter().collect();
            let o = loss.compute(c, &refs).unwrap();
            (o.value(c).unwrap(), o.grad(c, 0).unwrap())
        };
        agree(loss.name(), run(ctx), run(&tree));
    }
}

#[test]
fn value_of_a_per_element_loss_is_an_error() {
    // reduction = "none" has one value per element: value() refuses it instead of returning
    // element 0; the tensor reads whole.
    let ctx = common::ctx();
    let x = ctx.upload(&[1.0, 2.0, 3.0], &[3]).unwrap();
    let t = ctx.upload(&[0.0, 0.0, 0.0], &[3]).unwrap();
    let none = MSELoss {
        reduction: Reduction::None,
    }
    .compute(ctx, &[&x, &t])
    .unwrap();
    let err = none.value(ctx).unwrap_err();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    assert!(err.to_string().contains("reduction none"), "{err}");
    assert_eq!(ctx.read(&none.loss).unwrap(), vec![1.0, 4.0, 9.0]);
    let mean = MSELoss::default().compute(ctx, &[&x, &t]).unwrap();
    assert!((mean.value(ctx).unwrap() - 14.0 / 3.0).abs() < 1e-6);
}
