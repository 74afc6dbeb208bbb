//! The typed surface (constructors, setters, `forward`) computes exactly what the dynamic
//! `Loss` trait computes with the same arguments.
mod common;

use deepml::*;

fn same(ctx: &LossContext, what: &str, a: &LossOutput, b: &LossOutput) {
    assert_eq!(
        ctx.read(&a.loss).unwrap(),
        ctx.read(&b.loss).unwrap(),
        "{what}: loss"
    );
    assert_eq!(a.grads.len(), b.grads.len(), "{what}");
    for (x, y) in a.grads.iter().zip(&b.grads) {
        assert_eq!(
            ctx.read(x).unwrap(),
            ctx.read(y).unwrap(),
            "{what}: gradient"
        );
    }
}

#[test]
fn typed_forward_equals_the_dynamic_loss() {
    let ctx = common::ctx();
    let mut r = common::rng(7);
    let shape = [2, 3, 4, 5];
    let n: usize = shape.iter().product();
    let x = ctx
        .upload(&common::uniform(&mut r, n, -3.0, 3.0), &shape)
        .unwrap();
    let t = ctx
        .upload(&common::uniform(&mut r, n, 0.0, 1.0), &shape)
        .unwrap();
    let labels: Vec<i32> = (0..40).map(|i| i * 7 % 3).collect();
    let y = ctx.upload_labels(&labels, &[2, 4, 5]).unwrap();

    let j = JaccardLoss::multiclass().per_class(true).eps(1e-6);
    assert_eq!(
        j,
        JaccardLoss {
            is_multiclass: true,
            eps: 1e-6,
            per_class: true
        }
    );
    same(
        ctx,
        "jaccard",
        &j.forward(ctx, &x, &t).unwrap(),
        &j.compute(ctx, &[&x, &t]).unwrap(),
    );
    let d = DiceLoss::binary().smooth(1.0);
    same(
        ctx,
        "dice",
        &d.forward(ctx, &x, &t).unwrap(),
        &d.compute(ctx, &[&x, &t]).unwrap(),
    );
    let ce = CrossEntropyLoss::default()
        .weight(vec![1.0, 2.0, 0.5])
        .label_smoothing(0.1)
        .reduction(Reduction::Sum);
    assert_eq!(ce.weight.as_ref().unwrap().shape, vec![3]);
    same(
        ctx,
        "ce",
        &ce.forward(ctx, &x, &y).unwrap(),
        &ce.compute(ctx, &[&x, &y]).unwrap(),
    );
    let f = FocalLoss::multiclass()
        .alpha(0.25)
        .gamma(3.0)
        .ignore_index(2);
    assert_eq!((f.alpha, f.ignore_index), (Some(0.25), Some(2)));
    same(
        ctx,
        "focal",
        &f.forward(ctx, &x, &y).unwrap(),
        &f.compute(ctx, &[&x, &y]).unwrap(),
    );
    let tv = TverskyLoss::multilabel().alpha(0.3).beta(0.7);
    same(
        ctx,
        "tversky",
        &tv.forward(ctx, &x, &t).unwrap(),
        &tv.compute(ctx, &[&x, &t]).unwrap(),
    );
    let b = BCEWithLogitsLoss::default().pos_weight(HostTensor::vector(vec![2.0; 5]));
    same(
        ctx,
        "bce",
        &b.forward(ctx, &x, &t).unwrap(),
        &b.compute(ctx, &[&x, &t]).unwrap(),
    );
    let m = MSELoss::default().reduction(Reduction::Sum);
    let opts = GradOpts::scaled(0.5);
    same(
        ctx,
        "mse with opts",
        &m.forward_with(ctx, &x, &t, &opts).unwrap(),
        &m.compute_with(ctx, &[&x, &t], &opts).unwrap(),
    );

    let (xa, wa) = (
        ctx.upload(&common::uniform(&mut r, 6 * 4, -1.0, 1.0), &[6, 4])
            .unwrap(),
        ctx.upload(&common::uniform(&mut r, 5 * 4, -1.0, 1.0), &[5, 4])
            .unwrap(),
    );
    let la = ctx.upload_labels(&[0, 1, 2, 3, 4, 0], &[6]).unwrap();
    let a = AngularPenaltySMConfig::cosface(4, 5).s(10.0).m(0.2);
    assert_eq!((a.scale(), a.margin()), (10.0, 0.2));
    same(
        ctx,
        "cosface",
        &a.forward(ctx, &xa, &la, &wa).unwrap(),
        &a.compute(ctx, &[&xa, &la, &wa]).unwrap(),
    );
    // The typed form checks what the dynamic one checks.
    assert!(matches!(
        JaccardLoss::binary().forward(ctx, &x, &y),
        Err(Error::ShapeMismatch(_) | Error::InvalidInput(_))
    ));
    ctx.synchronize().unwrap();
}
