//! f16-input variants of the pointwise and segmentation losses (accumulating in f32, writing f32
//! gradients), where the adapter offers SHADER_F16; checked against the float64 reference on
//! the same f16-rounded values.
mod common;

use deepml::*;

fn round_f16(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect()
}

fn check(what: &str, got: &[f32], want: &[f64]) {
    common::assert_close(what, got, want, 1e-4, 1e-5);
}

#[test]
fn f16_inputs_match_the_reference() {
    let ctx = common::ctx();
    if !ctx.has_f16() {
        eprintln!("SKIP: {} has no SHADER_F16", ctx.adapter().summary());
        let a = ctx.upload_f16(&[1.0, 2.0], &[2]).unwrap();
        let err = MSELoss::default().compute(ctx, &[&a, &a]).err().unwrap();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
        return;
    }
    let mut r = common::rng(31);
    for shape in [vec![1usize], vec![4099], vec![3, 5, 7, 11]] {
        let n: usize = shape.iter().product();
        let a = round_f16(&common::uniform(&mut r, n, -3.0, 3.0));
        let b = round_f16(&common::uniform(&mut r, n, -3.0, 3.0));
        let (ta, tb) = (
            ctx.upload_f16(&a, &shape).unwrap(),
            ctx.upload_f16(&b, &shape).unwrap(),
        );
        assert_eq!(ctx.read_f16(&ta).unwrap(), a, "f16 upload round-trips");
        let (a64, b64) = (common::to64(&a), common::to64(&b));
        for red in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let o = MSELoss { reduction: red }
                .compute(ctx, &[&ta, &tb])
                .unwrap();
            let w = reference::mse(&MSELoss { reduction: red }, &a64, &b64, &shape).unwrap();
            check("mse loss", &ctx.read(&o.loss).unwrap(), &w.loss);
            check("mse grad", &ctx.read(&o.grads[0]).unwrap(), &w.grads[0]);
            let o = L1Loss { reduction: red }.compute(ctx, &[&ta, &tb]).unwrap();
            let w = reference::l1(&L1Loss { reduction: red }, &a64, &b64, &shape).unwrap();
            check("l1 loss", &ctx.read(&o.loss).unwrap(), &w.loss);
            check("l1 grad", &ctx.read(&o.grads[0]).unwrap(), &w.grads[0]);
        }
        let o = RMSELoss::default().compute(ctx, &[&ta, &tb]).unwrap();
        let w = reference::rmse(&RMSELoss::default(), &a64, &b64, &shape).unwrap();
        check("rmse loss", &ctx.read(&o.loss).unwrap(), &w.loss);
        check("rmse grad", &ctx.read(&o.grads[0]).unwrap(), &w.grads[0]);
    }
    for shape in [vec![2usize, 1, 9, 13], vec![3, 5, 7, 11]] {
        let n: usize = shape.iter().product();
        let x = round_f16(&common::uniform(&mut r, n, -4.0, 4.0));
        let t: Vec<f32> = common::uniform(&mut r, n, 0.0, 1.0)
            .iter()
            .map(|v| v.round())
            .collect();
        let (tx, tt) = (
            ctx.upload_f16(&x, &shape).unwrap(),
            ctx.upload_f16(&t, &shape).unwrap(),
        );
        let (x64, t64) = (common::to64(&x), common::to64(&t));
        for multi in [false, true] {
            for per_class in [false, true] {
                let jac = JaccardLoss {
                    is_multiclass: multi,
                    per_class,
                    ..Default::default()
                };
                let o = jac.compute(ctx, &[&tx, &tt]).unwrap();
                let w = reference::jaccard(&jac, &x64, &t64, &shape).unwrap();
                check("jaccard loss", &ctx.read(&o.loss).unwrap(), &w.loss);
                check("jaccard grad", &ctx.read(&o.grads[0]).unwrap(), &w.grads[0]);
                let dice = DiceLoss {
                    is_multiclass: multi,
                    per_class,
                    smooth: 0.5,
                    ..Default::default()
                };
                let o = dice.compute(ctx, &[&tx, &tt]).unwrap();
                let w = reference::dice(&dice, &x64, &t64, &shape).unwrap();
                check("dice loss", &ctx.read(&o.loss).unwrap(), &w.loss);
                check("dice grad", &ctx.read(&o.grads[0]).unwrap(), &w.grads[0]);
            }
        }
    }
    // Mixed element types are refused.
    let a = ctx.upload_f16(&[1.0, 2.0], &[2]).unwrap();
    let b = ctx.upload(&[1.0, 2.0], &[2]).unwrap();
    let err = MSELoss::default().compute(ctx, &[&a, &b]).err().unwrap();
    assert!(matches!(err, Error::InvalidInput(_)), "{err}");
}

#[test]
fn f16_windowed_path_matches_the_plain_one() {
    let plain = common::ctx();
    if !plain.has_f16() {
        eprintln!("SKIP: no SHADER_F16");
        return;
    }
    let small = common::windowed_ctx(64 * 1024);
    let mut r = common::rng(32);
    let n = 100_001;
    let a = common::uniform(&mut r, n, -2.0, 2.0);
    let b = common::uniform(&mut r, n, -2.0, 2.0);
    let mut outs = Vec::new();
    for ctx in [plain, &small] {
        let (ta, tb) = (
            ctx.upload_f16(&a, &[n]).unwrap(),
            ctx.upload_f16(&b, &[n]).unwrap(),
        );
        let o = RMSELoss::default().compute(ctx, &[&ta, &tb]).unwrap();
        outs.push((ctx.read(&o.loss).unwrap(), ctx.read(&o.grads[0]).unwrap()));
    }
    assert_eq!(outs[0], outs[1]);
}
