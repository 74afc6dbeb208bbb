//! A loss library inside a training loop must never corrupt a run: non-finite inputs,
//! concurrency, resource limits.
mod common;

use std::sync::Arc;

use deepml::*;

fn inputs_for(loss: &dyn Loss, ctx: &LossContext, n: usize, seed: u64) -> Vec<Tensor> {
    let mut r = common::rng(seed);
    match loss.name() {
        "JaccardLoss" | "DiceLoss" => {
            let shape = [2, 3, n / 6];
            let x = common::uniform(&mut r, 6 * (n / 6), -3.0, 3.0);
            let t: Vec<f32> = common::uniform(&mut r, 6 * (n / 6), 0.0, 1.0)
                .iter()
                .map(|v| v.round())
                .collect();
            vec![
                ctx.upload(&x, &shape).unwrap(),
                ctx.upload(&t, &shape).unwrap(),
            ]
        }
        _ => {
            let x = common::uniform(&mut r, n, -3.0, 3.0);
            let t: Vec<f32> = common::uniform(&mut r, n, 0.0, 1.0);
            vec![ctx.upload(&x, &[n]).unwrap(), ctx.upload(&t, &[n]).unwrap()]
        }
    }
}

fn losses() -> Vec<Arc<dyn Loss + Send + Sync>> {
    vec![
        Arc::new(RMSELoss::default()),
        Arc::new(MSELoss::default()),
        Arc::new(L1Loss {
            reduction: Reduction::Sum,
        }),
        Arc::new(BCEWithLogitsLoss::default()),
        Arc::new(WeightedBCEWithLogitsLoss {
            w_p: 2.0,
            ..Default::default()
        }),
        Arc::new(JaccardLoss::new(true)),
        Arc::new(DiceLoss {
            per_class: true,
            ..DiceLoss::new(false)
        }),
        Arc::new(JaccardLoss::new(false)),
    ]
}

fn bits(ctx: &LossContext, out: &LossOutput) -> (Vec<u32>, Vec<u32>) {
    let l = ctx
        .read(&out.loss)
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let g = ctx
        .read(&out.grads[0])
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect();
    (l, g)
}

#[test]
fn eight_threads_on_one_context_match_the_single_threaded_results() {
    let ctx = Arc::new(LossContext::new().unwrap());
    let losses = losses();
    let n = 6 * 1001;
    let expected: Vec<_> = losses
        .iter()
        .enumerate()
        .map(|(k, l)| {
            let x = inputs_for(l.as_ref(), &ctx, n, k as u64);
            let refs: Vec<&Tensor> = x.iter().collect();
            bits(&ctx, &l.compute(&ctx, &refs).unwrap())
        })
        .collect();
    let expected = Arc::new(expected);
    let threads: Vec<_> = (0..8)
        .map(|k| {
            let (ctx, loss, expected) = (ctx.clone(), losses[k].clone(), expected.clone());
            std::thread::spawn(move || {
                let x = inputs_for(loss.as_ref(), &ctx, n, k as u64);
                let refs: Vec<&Tensor> = x.iter().collect();
                for it in 0..200 {
                    let out = loss.compute(&ctx, &refs).unwrap();
                    if it % 20 == 0 || it == 199 {
                        assert_eq!(
                            bits(&ctx, &out),
                            expected[k],
                            "{} differs in thread {k}, iteration {it}",
                            loss.name()
                        );
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("a thread panicked");
    }
}

#[test]
fn non_finite_inputs_are_refused_when_check_finite_is_on() {
    let ctx = LossContext::with_options(ContextOptions {
        check_finite: true,
        ..Default::default()
    })
    .unwrap();
    for loss in losses() {
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let x = inputs_for(loss.as_ref(), &ctx, 6 * 50, 3);
            let mut host = ctx.read(&x[0]).unwrap();
            host[17] = bad;
            let poisoned = ctx.upload(&host, x[0].shape()).unwrap();
            let out = loss.compute(&ctx, &[&poisoned, &x[1]]).unwrap();
            let err = ctx.read(&out.loss).unwrap_err();
            assert!(
                matches!(err, Error::InvalidInput(_)),
                "{}: {err}",
                loss.name()
            );
            assert!(err.to_string().contains(loss.name()), "{err}");
            // The flag was cleared by that read: clean inputs compute again.
            let clean = loss.compute(&ctx, &[&x[0], &x[1]]).unwrap();
            assert!(ctx.read(&clean.loss).unwrap()[0].is_finite());
        }
    }
}

#[test]
fn non_finite_inputs_propagate_when_check_finite_is_off() {
    // NaN in an input gives a NaN loss on every implementation: WGSL leaves the NaN behaviour of
    // built-ins such as max, clamp and exp open (SwiftShader's drop it: BCE gave +inf, weighted
    // BCE a finite value), so the kernels that pass an input through them carry its NaN
    // explicitly (common.wgsl, keep_nan). No hang, and the context stays usable.
    let ctx = common::ctx();
    for loss in losses() {
        let x = inputs_for(loss.as_ref(), ctx, 6 * 50, 4);
        for which in 0..2 {
            let mut host = ctx.read(&x[which]).unwrap();
            host[5] = f32::NAN;
            let poisoned = ctx.upload(&host, x[which].shape()).unwrap();
            let args = if which == 0 {
                [&poisoned, &x[1]]
            } else {
                [&x[0], &poisoned]
            };
            let v = ctx.read(&loss.compute(ctx, &args).unwrap().loss).unwrap();
            assert!(
                v[0].is_nan(),
                "{} on {}: NaN in input {which} gave {}",
                loss.name(),
                ctx.adapter().name,
                v[0]
            );
        }
        let clean = ctx
            .read(&loss.compute(ctx, &[&x[0], &x[1]]).unwrap().loss)
            .unwrap();
        assert!(clean[0].is_finite(), "{}", loss.name());
    }
}

#[test]
fn a_tensor_over_max_buffer_size_is_refused_before_any_allocation() {
    let ctx = LossContext::new().unwrap();
    let before = ctx.stats();
    let max = ctx.adapter().limits.max_buffer_size;
    let n = (max / 4 + 1) as usize;
    let err = ctx.empty(&[n], DType::F32).unwrap_err();
    assert!(matches!(err, Error::TooLarge(_)), "{err}");
    assert!(err.to_string().contains("max_buffer_size"), "{err}");
    assert_eq!(ctx.stats(), before, "nothing was allocated");
}

#[test]
fn a_loop_over_tensors_at_the_binding_limit_keeps_memory_flat() {
    // Bindings capped at 1 MiB; tensors just under and just over that limit.
    let ctx = common::windowed_ctx(1 << 20);
    for n in [(1 << 18) - 64, (1 << 18) + 1000] {
        let x = inputs_for(&MSELoss::default(), &ctx, n, 9);
        let seg = inputs_for(&JaccardLoss::new(false), &ctx, n, 9);
        let mut first = None;
        for step in 0..300 {
            let a = RMSELoss::default().compute(&ctx, &[&x[0], &x[1]]).unwrap();
            let b = JaccardLoss::new(false)
                .compute(&ctx, &[&seg[0], &seg[1]])
                .unwrap();
            ctx.axpy(&x[0], -0.01, &a.grads[0]).unwrap();
            if step % 100 == 0 || step == 299 {
                assert!(ctx.read_scalar(&b.loss).unwrap().is_finite());
            }
            drop((a, b));
            let bytes = ctx.stats().allocated_bytes;
            match first {
                None => first = Some(bytes),
                Some(f) => assert_eq!(bytes, f, "n = {n}, step {step}"),
            }
        }
    }
}

#[test]
fn steps_at_the_real_binding_limit_keep_memory_flat() {
    // Tensors just under one storage binding of this device (128 MiB on lavapipe), capped at
    // 1 GiB so a big GPU does not exhaust the machine, and at 128 MiB on CPU implementations
    // (SwiftShader offers 1 GiB bindings but takes minutes a step there; its windows over the
    // binding limit are tested at small artificial limits). The steps move 25 x 128 MiB in all;
    // memory must not move after the first.
    let ctx = LossContext::new().unwrap();
    let cap = if ctx.adapter().device_type == wgpu::DeviceType::Cpu {
        128 << 20
    } else {
        1 << 30
    };
    let limit = (ctx.adapter().limits.max_storage_buffer_binding_size).min(cap);
    let steps = (25 * (128u64 << 20) / limit).clamp(4, 25) as usize;
    let n = (limit / 4) as usize - 1024;
    let x = ctx.upload(&vec![0.25; n], &[n]).unwrap();
    let t = ctx.upload(&vec![-0.5; n], &[n]).unwrap();
    let grad = ctx.empty(&[n], DType::F32).unwrap();
    let opts = GradOpts {
        into: vec![Some(grad.clone())],
        ..Default::default()
    };
    let mut first = None;
    for step in 0..steps {
        let out = MSELoss {
            reduction: Reduction::Sum,
        }
        .compute_with(&ctx, &[&x, &t], &opts)
        .unwrap();
        if step % 10 == 0 || step == steps - 1 {
            let v = ctx.read_scalar(&out.loss).unwrap() as f64;
            assert!((v - 0.5625 * n as f64).abs() < 1e-5 * v, "step {step}: {v}");
        }
        drop(out);
        let bytes = ctx.stats().allocated_bytes;
        match first {
            None => first = Some(bytes),
            Some(f) => assert_eq!(bytes, f, "step {step}"),
        }
    }
}

#[test]
fn l1_gradient_keeps_the_sign_of_subnormal_differences() {
    // WGSL lets an adapter flush subnormals to zero in float arithmetic (NVIDIA's Vulkan driver
    // does): 0 - 1e-40 must still have the sign PyTorch gives it. Also +-0, equal values and
    // neighbours one ulp apart.
    let ctx = common::ctx();
    let sub = f32::from_bits(0x0001_1170); // about 1e-40
    let tiny = f32::from_bits(1); // the smallest subnormal
    let pairs = [
        (0.0, -sub),
        (0.0, sub),
        (sub, 0.0),
        (-sub, 0.0),
        (tiny, -tiny),
        (-tiny, tiny),
        (-0.0, 0.0),
        (0.0, -0.0),
        (3.0, 3.0),
        (1.0, f32::from_bits(1.0f32.to_bits() + 1)),
        (-1.0, -2.0),
        (f32::MIN_POSITIVE, sub),
    ];
    let x: Vec<f32> = pairs.iter().map(|p| p.0).collect();
    let t: Vec<f32> = pairs.iter().map(|p| p.1).collect();
    let n = x.len();
    let (tx, tt) = (ctx.upload(&x, &[n]).unwrap(), ctx.upload(&t, &[n]).unwrap());
    let cfg = L1Loss {
        reduction: Reduction::Sum,
    };
    let g = cfg.compute(ctx, &[&tx, &tt]).unwrap().grad(ctx, 0).unwrap();
    let want = [
        1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0,
    ];
    assert_eq!(g, want, "L1 gradient of {pairs:?}");
}

/// One step of a segmentation training loop on a crop of `h x w`: fresh inputs, the combined
/// loss, an SGD step on the device, the total read back.
fn crop_step(ctx: &LossContext, loss: &Combined, h: usize, w: usize, seed: u64) -> f32 {
    let mut r = common::rng(seed);
    let n = 2 * h * w;
    let x = common::uniform(&mut r, n, -3.0, 3.0);
    let t: Vec<f32> = common::uniform(&mut r, n, 0.0, 1.0)
        .iter()
        .map(|v| v.round())
        .collect();
    let x = ctx.upload(&x, &[2, 1, h, w]).unwrap();
    let t = ctx.upload(&t, &[2, 1, h, w]).unwrap();
    let out = loss.compute(ctx, &[&x, &t]).unwrap();
    ctx.axpy(&x, -0.1, out.input_grad(0).unwrap()).unwrap();
    ctx.read_scalar(&out.loss).unwrap()
}

#[test]
fn random_crop_sizes_keep_memory_bounded() {
    // A training loop with random crops: 300 steps of 0.5 BCE + 0.5 Jaccard on [2, 1, h, w],
    // h and w drawn in 64..512. The pool serves sizes from four classes per power of two and
    // releases what it keeps over its cap, so the context's memory stays within a small
    // multiple of what one step at the largest crop needs.
    let loss = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1]);
    let fresh = LossContext::new().unwrap();
    let v = crop_step(&fresh, &loss, 512, 512, 1);
    assert!(v.is_finite());
    let need = fresh.stats().allocated_bytes;
    drop(fresh);

    let ctx = LossContext::new().unwrap();
    let mut r = common::rng(77);
    let mut peak = 0;
    for step in 0..300 {
        let (h, w) = (
            rand::Rng::gen_range(&mut r, 64..512),
            rand::Rng::gen_range(&mut r, 64..512),
        );
        let v = crop_step(&ctx, &loss, h, w, step);
        assert!(v.is_finite(), "step {step}");
        peak = peak.max(ctx.stats().allocated_bytes);
    }
    let s = ctx.stats();
    eprintln!(
        "random crops: one step at 512 x 512 needs {} KiB; 300 steps peaked at {} KiB ({:.1}x); {s:?}",
        need >> 10,
        peak >> 10,
        peak as f64 / need as f64
    );
    assert!(
        peak <= 5 * need,
        "memory grew to {peak} bytes, {:.1}x one step's {need}: {s:?}",
        peak as f64 / need as f64
    );
    assert!(s.buffers_released > 0 && s.pool_hits > 0, "{s:?}");
    // A cap set in the options holds for the pooled bytes at every allocation.
    let capped = LossContext::with_options(ContextOptions {
        pool_cap: Some(1 << 20),
        ..Default::default()
    })
    .unwrap();
    for step in 0..20 {
        let side = 64 + 20 * step;
        crop_step(&capped, &loss, side, side, step as u64);
        // The buffers of the step just ended are back in the pool; the next allocation
        // brings the pool under the cap.
        drop(capped.empty(&[1], DType::F32).unwrap());
        assert!(
            capped.stats().pooled_bytes <= (1 << 20) + 256,
            "{:?}",
            capped.stats()
        );
    }
}
