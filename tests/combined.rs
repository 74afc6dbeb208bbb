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
    let total = ctx.read_scalar(&out.total).unwrap();
    assert!(
        (total - (vm + 0.5 * vl + 0.25 * vr)).abs() <= 1e-6 * total.abs(),
        "total {total}"
    );
    assert_eq!(ctx.read_scalar(&out.terms[0]).unwrap(), vm);
    assert_eq!(ctx.read_scalar(&out.terms[2]).unwrap(), vr);

    let gx = ctx.read(out.grads[0].as_ref().unwrap()).unwrap();
    let (gm, gl) = (mse.grad(ctx, 0).unwrap(), l1.grad(ctx, 0).unwrap());
    let want: Vec<f64> = gm
        .iter()
        .zip(&gl)
        .map(|(a, b)| *a as f64 + 0.5 * *b as f64)
        .collect();
    common::assert_close("d total / d x", &gx, &want, 1e-6, 1e-7);
    assert!(
        out.grads[1].is_none() && out.grads[3].is_none(),
        "targets get no gradient"
    );
    let gy = ctx.read(out.grads[2].as_ref().unwrap()).unwrap();
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
        ctx.axpy(&x, -0.1, out.grads[0].as_ref().unwrap()).unwrap();
        if step % 500 == 0 {
            values.push(ctx.read_scalar(&out.total).unwrap());
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
