//! Combined losses, recording into the caller's encoder, and a flat training loop.
mod common;

use deepml::*;

#[test]
fn combined_gradient_is_the_weighted_sum_of_the_separate_ones() {
    let ctx = common::ctx();
    let mut r = common::rng(21);
    let n = 4099;
    let (x, t) = (
        common::uniform(&mut r, n, -2.0, 2.0),
        common::uniform(&mut r, n, -2.0, 2.0),
    );
    let (y, u) = (
        common::uniform(&mut r, 77, -2.0, 2.0),
        common::uniform(&mut r, 77, -2.0, 2.0),
    );
    let (tx, tt) = (ctx.upload(&x, &[n]).unwrap(), ctx.upload(&t, &[n]).unwrap());
    let (ty, tu) = (
        ctx.upload(&y, &[7, 11]).unwrap(),
        ctx.upload(&u, &[7, 11]).unwrap(),
    );

    // Two terms share x (MSE + 0.5 L1), a third is another task on y (0.25 RMSE).
    let combined = Combined::new()
        .term(1.0, MSELoss::default(), &[0, 1])
        .term(0.5, L1Loss::default(), &[0, 1])
        .term(0.25, RMSELoss::default(), &[2, 3]);
    let out = combined.compute(ctx, &[&tx, &tt, &ty, &tu]).unwrap();

    let mse = MSELoss::default().compute(ctx, &[&tx, &tt]).unwrap();
    let l1 = L1Loss::default().compute(ctx, &[&tx, &tt]).unwrap();
    let rmse = RMSELoss::default().compute(ctx, &[&ty, &tu]).unwrap();
    let (vm, vl, vr) = (
        mse.value(ctx).unwrap(),
        l1.value(ctx).unwrap(),
        rmse.value(ctx).unwrap(),
    );
    let total = ctx.read_scalar(&out.loss).unwrap();
    assert!(
        (total - (vm + 0.5 * vl + 0.25 * vr)).abs() <= 1e-6 * total.abs(),
        "total {total}"
    );
    assert_eq!(ctx.read_scalar(&out.terms[0]).unwrap(), vm);
    assert_eq!(ctx.read_scalar(&out.terms[2]).unwrap(), vr);

    let gx = ctx.read(out.input_grad(0).unwrap()).unwrap();
    let (gm, gl) = (mse.grad(ctx, 0).unwrap(), l1.grad(ctx, 0).unwrap());
    let want: Vec<f64> = gm
        .iter()
        .zip(&gl)
        .map(|(a, b)| *a as f64 + 0.5 * *b as f64)
        .collect();
    common::assert_close("d total / d x", &gx, &want, 1e-6, 1e-7);
    assert!(
        out.input_grad(1).is_none() && out.input_grad(3).is_none(),
        "targets get no gradient"
    );
    let gy = ctx.read(out.input_grad(2).unwrap()).unwrap();
    let want: Vec<f64> = rmse
        .grad(ctx, 0)
        .unwrap()
        .iter()
        .map(|g| 0.25 * *g as f64)
        .collect();
    common::assert_close("d total / d y", &gy, &want, 1e-6, 1e-7);
}

#[test]
fn combined_refuses_bad_terms() {
    let ctx = common::ctx();
    let a = ctx.upload(&[1.0, 2.0], &[2]).unwrap();
    let none = Combined::new().term(
        1.0,
        MSELoss {
            reduction: Reduction::None,
        },
        &[0, 1],
    );
    assert!(matches!(
        none.compute(ctx, &[&a, &a]).err().unwrap(),
        Error::InvalidConfig(_)
    ));
    let bad_index = Combined::new().term(1.0, MSELoss::default(), &[0, 5]);
    assert!(matches!(
        bad_index.compute(ctx, &[&a, &a]).err().unwrap(),
        Error::InvalidInput(_)
    ));
    let nan = Combined::new().term(f32::NAN, MSELoss::default(), &[0, 1]);
    assert!(matches!(
        nan.compute(ctx, &[&a, &a]).err().unwrap(),
        Error::InvalidConfig(_)
    ));
    assert!(matches!(
        Combined::new().compute(ctx, &[&a]).err().unwrap(),
        Error::InvalidConfig(_)
    ));
}

#[test]
fn recording_into_the_callers_encoder_matches_compute() {
    let ctx = common::ctx();
    let mut r = common::rng(22);
    let n = 1000;
    let (x, t) = (
        common::uniform(&mut r, n, -1.0, 1.0),
        common::uniform(&mut r, n, -1.0, 1.0),
    );
    let (tx, tt) = (ctx.upload(&x, &[n]).unwrap(), ctx.upload(&t, &[n]).unwrap());
    let direct = RMSELoss::default().compute(ctx, &[&tx, &tt]).unwrap();
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    let recorded = RMSELoss::default()
        .record(ctx, &mut enc, &[&tx, &tt], &GradOpts::default())
        .unwrap();
    // The caller's own work goes in the same encoder: an SGD step on x with the fresh gradient.
    let x2 = ctx.upload(&x, &[n]).unwrap();
    let _keep = ctx
        .record_axpy(&mut enc, &x2, -0.5, &recorded.grads[0])
        .unwrap();
    ctx.queue().submit(Some(enc.finish()));
    assert_eq!(
        ctx.read(&recorded.loss).unwrap(),
        ctx.read(&direct.loss).unwrap()
    );
    let g = direct.grad(ctx, 0).unwrap();
    let stepped = ctx.read(&x2).unwrap();
    for i in 0..n {
        assert_eq!(stepped[i], x[i] + -0.5 * g[i]);
    }
}

#[test]
fn two_thousand_steps_allocate_nothing_after_the_first() {
    let ctx = LossContext::new().unwrap();
    let mut r = common::rng(23);
    let n = 10_000;
    let x = ctx
        .upload(&common::uniform(&mut r, n, -1.0, 1.0), &[n])
        .unwrap();
    let t = ctx
        .upload(&common::uniform(&mut r, n, -1.0, 1.0), &[n])
        .unwrap();
    let loss = Combined::new().term(0.5, MSELoss::default(), &[0, 1]).term(
        0.5,
        L1Loss::default(),
        &[0, 1],
    );
    let mut first = None;
    let mut values = Vec::new();
    for step in 0..2000 {
        let out = loss.compute(&ctx, &[&x, &t]).unwrap();
        ctx.axpy(&x, -0.1, out.input_grad(0).unwrap()).unwrap();
        if step % 500 == 0 {
            values.push(ctx.read_scalar(&out.loss).unwrap());
        }
        drop(out);
        let bytes = ctx.stats().allocated_bytes;
        match first {
            None => first = Some(bytes),
            Some(b) => assert_eq!(bytes, b, "step {step}: {:?}", ctx.stats()),
        }
    }
    assert!(
        values.windows(2).all(|w| w[1] < w[0]),
        "the loss falls: {values:?}"
    );
}

/// A combined loss takes `GradOpts` like any loss: the upstream scale, the caller's gradient
/// tensors (in the order of `grad_inputs`), and accumulation into them; its output is the one
/// `LossOutput` of every loss.
#[test]
fn combined_takes_grad_opts_and_returns_a_loss_output() {
    let ctx = common::ctx();
    let mut r = common::rng(33);
    let n = 257;
    let x = common::uniform(&mut r, n, -3.0, 3.0);
    let t: Vec<f32> = (0..n).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let y = common::uniform(&mut r, n, -1.0, 1.0);
    let u = common::uniform(&mut r, n, -1.0, 1.0);
    let up = |v: &[f32]| ctx.upload(v, &[n]).unwrap();
    let (tx, tt, ty, tu) = (up(&x), up(&t), up(&y), up(&u));
    let loss = Combined::new()
        .term(0.5, deepml::BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, deepml::JaccardLoss::new(false), &[0, 1])
        .term(2.0, MSELoss::default(), &[2, 3]);
    assert_eq!(loss.grad_inputs(), vec![0, 2]);
    let inputs = [&tx, &tt, &ty, &tu];
    let plain = loss.compute(ctx, &inputs).unwrap();
    assert_eq!(plain.grad_inputs, vec![Some(0), Some(2)]);
    assert_eq!(plain.terms.len(), 3);
    assert!(plain.input_grad(1).is_none() && plain.input_grad(3).is_none());
    let g0 = ctx.read(plain.input_grad(0).unwrap()).unwrap();
    let g2 = plain.grad(ctx, 1).unwrap();
    let total = plain.value(ctx).unwrap();

    // Scaled, into the caller's tensors, accumulated onto what they hold.
    let p0 = common::uniform(&mut r, n, -1.0, 1.0);
    let p2 = common::uniform(&mut r, n, -1.0, 1.0);
    let (i0, i2) = (up(&p0), up(&p2));
    let opts = GradOpts {
        scale: -0.25,
        into: vec![Some(i0.clone()), Some(i2.clone())],
        accumulate: true,
    };
    let out = loss.compute_with(ctx, &inputs, &opts).unwrap();
    assert_eq!(
        out.value(ctx).unwrap(),
        total,
        "the value does not depend on the scale"
    );
    for (got, prior, g) in [(&i0, &p0, &g0), (&i2, &p2, &g2)] {
        let want: Vec<f64> = prior
            .iter()
            .zip(g)
            .map(|(&p, &g)| p as f64 - 0.25 * g as f64)
            .collect();
        common::assert_close("accumulated", &ctx.read(got).unwrap(), &want, 1e-5, 1e-6);
    }
    // Overwriting (no accumulate) writes the scaled gradient.
    let opts = GradOpts {
        scale: 2.0,
        into: vec![Some(i0.clone())],
        accumulate: false,
    };
    loss.compute_with(ctx, &inputs, &opts).unwrap();
    let want: Vec<f64> = g0.iter().map(|&g| 2.0 * g as f64).collect();
    common::assert_close("written", &ctx.read(&i0).unwrap(), &want, 1e-5, 1e-7);
    // A gradient tensor of the wrong shape, and a non-finite scale, are typed errors.
    let bad = ctx.upload(&[0.0; 3], &[3]).unwrap();
    let opts = GradOpts {
        into: vec![Some(bad)],
        ..Default::default()
    };
    assert!(matches!(
        loss.compute_with(ctx, &inputs, &opts),
        Err(deepml::Error::ShapeMismatch(_))
    ));
    assert!(matches!(
        loss.compute_with(ctx, &inputs, &GradOpts::scaled(f32::NAN)),
        Err(deepml::Error::InvalidConfig(_))
    ));
    // A single loss's output maps its gradients to its inputs too.
    let single = MSELoss::default().compute(ctx, &[&ty, &tu]).unwrap();
    assert_eq!(single.grad_inputs, vec![Some(0)]);
    assert!(single.input_grad(1).is_none() && single.terms.is_empty());
}
