//! Every loss, used the way deepml's loss guide uses it, written in Rust. Each call computes the
//! value and the gradient in one submission; the values are read back only to print them.
//!
//!     cargo run --release --example quickstart

use deepml::*;

fn show(ctx: &LossContext, what: &str, out: &LossOutput) -> Result<()> {
    let loss = ctx.read(&out.loss)?;
    let norms: Vec<String> = out
        .grads
        .iter()
        .map(|g| {
            ctx.read(g)
                .map(|v| format!("{:.4}", v.iter().map(|x| x * x).sum::<f32>().sqrt()))
        })
        .collect::<Result<_>>()?;
    let value = if loss.len() == 1 {
        format!("{:.6}", loss[0])
    } else {
        format!("{loss:.4?}")
    };
    println!("{what:<58} loss {value}  |grad| {}", norms.join(", "));
    Ok(())
}

fn main() -> Result<()> {
    // The context: the best adapter (WGPU_BACKEND=vulkan|metal|dx12|gl and WGPU_ADAPTER_NAME choose).
    let ctx = LossContext::new()?;
    println!("adapter: {}\n", ctx.adapter().summary());

    // Segmentation: logits [N, C, H, W] and a mask of the same shape.
    let logits = ctx.upload(
        &(0..2 * 3 * 4 * 4)
            .map(|i| ((i * 7 % 11) as f32 - 5.0) / 2.0)
            .collect::<Vec<_>>(),
        &[2, 3, 4, 4],
    )?;
    let mask = ctx.upload(
        &(0..2 * 3 * 4 * 4)
            .map(|i| (i % 3 == 0) as u8 as f32)
            .collect::<Vec<_>>(),
        &[2, 3, 4, 4],
    )?;

    // criterion = JaccardLoss(is_multiclass=False)
    show(
        &ctx,
        "JaccardLoss(is_multiclass=False)",
        &JaccardLoss::new(false).compute(&ctx, &[&logits, &mask])?,
    )?;
    // criterion = JaccardLoss(is_multiclass=True): softmax over the channels
    show(
        &ctx,
        "JaccardLoss(is_multiclass=True)",
        &JaccardLoss::new(true).compute(&ctx, &[&logits, &mask])?,
    )?;
    // one ratio per class, then their mean
    let per_class = JaccardLoss {
        per_class: true,
        ..JaccardLoss::new(true)
    };
    show(
        &ctx,
        "JaccardLoss(is_multiclass=True, per_class=True)",
        &per_class.compute(&ctx, &[&logits, &mask])?,
    )?;
    // DiceLoss for imbalanced segmentation
    let dice = DiceLoss {
        smooth: 1.0,
        ..DiceLoss::new(false)
    };
    show(
        &ctx,
        "DiceLoss(is_multiclass=False, smooth=1.0)",
        &dice.compute(&ctx, &[&logits, &mask])?,
    )?;

    // Regression: RMSELoss(eps=1e-6), MSELoss, L1Loss.
    let pred = ctx.upload(&[2.5, 0.0, 2.0, 8.0], &[4])?;
    let truth = ctx.upload(&[3.0, -0.5, 2.0, 7.0], &[4])?;
    show(
        &ctx,
        "RMSELoss()",
        &RMSELoss::default().compute(&ctx, &[&pred, &truth])?,
    )?;
    show(
        &ctx,
        "MSELoss(reduction='sum')",
        &MSELoss {
            reduction: Reduction::Sum,
        }
        .compute(&ctx, &[&pred, &truth])?,
    )?;
    show(
        &ctx,
        "L1Loss(reduction='none')",
        &L1Loss {
            reduction: Reduction::None,
        }
        .compute(&ctx, &[&pred, &truth])?,
    )?;

    // Imbalanced binary classification: WeightedBCEWithLogitsLoss(w_p=3.0, w_n=1.0).
    let scores = ctx.upload(&[1.5, -0.3, 2.2, -4.0, 0.1, -1.0], &[6, 1])?;
    let labels = ctx.upload(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], &[6])?;
    let wbce = WeightedBCEWithLogitsLoss {
        w_p: 3.0,
        w_n: 1.0,
        ..Default::default()
    };
    show(
        &ctx,
        "WeightedBCEWithLogitsLoss(w_p=3.0, w_n=1.0)",
        &wbce.compute(&ctx, &[&scores, &labels])?,
    )?;
    // PyTorch's BCEWithLogitsLoss with pos_weight (per class, broadcast along the last dimension)
    let bce = BCEWithLogitsLoss {
        pos_weight: Some(HostTensor::vector(vec![2.0])),
        ..Default::default()
    };
    show(
        &ctx,
        "BCEWithLogitsLoss(pos_weight=[2.0])",
        &bce.compute(&ctx, &[&scores, &labels.reshape(&[6, 1])?])?,
    )?;

    // Classification: CrossEntropyLoss(label_smoothing=0.1, ignore_index=-100).
    let class_logits = ctx.upload(&[2.0, 0.5, -1.0, 0.1, 0.2, 3.0, -2.0, 1.0, 0.0], &[3, 3])?;
    let classes = ctx.upload_labels(&[0, 2, -100], &[3])?;
    let ce = CrossEntropyLoss {
        label_smoothing: 0.1,
        ..Default::default()
    };
    show(
        &ctx,
        "CrossEntropyLoss(label_smoothing=0.1)",
        &ce.compute(&ctx, &[&class_logits, &classes])?,
    )?;

    // Metric learning: ContrastiveLoss(margin=2.0) on pairs of embeddings, label 1 = similar.
    let e1 = ctx.upload(&[0.1, 0.9, 0.3, 0.5, -0.2, 0.4, 1.0, 0.0], &[2, 4])?;
    let e2 = ctx.upload(&[0.2, 0.8, 0.3, 0.4, 0.9, -0.5, 0.0, 1.0], &[2, 4])?;
    let similar = ctx.upload(&[1.0, 0.0], &[2])?;
    show(
        &ctx,
        "ContrastiveLoss(margin=2.0)",
        &ContrastiveLoss::default().compute(&ctx, &[&e1, &e2, &similar])?,
    )?;
    let cosine = ContrastiveLoss {
        distance: Distance::Cosine,
        margin: 0.5,
        ..Default::default()
    };
    show(
        &ctx,
        "ContrastiveLoss(distance='cosine', margin=0.5)",
        &cosine.compute(&ctx, &[&e1, &e2, &similar])?,
    )?;

    // Face recognition: AngularPenaltySMLoss(in_features, out_features, loss_type) owns its weight.
    let x = ctx.upload(
        &(0..4 * 8)
            .map(|i| ((i * 5 % 9) as f32 - 4.0) / 4.0)
            .collect::<Vec<_>>(),
        &[4, 8],
    )?;
    let ids = ctx.upload_labels(&[0, 3, 1, 4], &[4])?;
    for loss_type in [LossType::ArcFace, LossType::SphereFace, LossType::CosFace] {
        let mut head =
            AngularPenaltySMLoss::new(&ctx, AngularPenaltySMConfig::new(8, 5, loss_type), 0)?;
        let out = head.compute(&ctx, &[&x, &ids])?;
        show(
            &ctx,
            &format!(
                "AngularPenaltySMLoss(8, 5, loss_type='{}')",
                loss_type.name()
            ),
            &out,
        )?;
        head.sgd_step(&ctx, &out.grads[1], 0.1)?; // W -= 0.1 * dL/dW, on the device
    }

    // Combining: 0.5 * BCE + 0.5 * Jaccard on one set of logits, one submission, one gradient.
    let seg = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1]);
    let out = seg.compute(&ctx, &[&logits, &mask])?;
    println!(
        "{:<58} loss {:.6}",
        "0.5 * BCEWithLogitsLoss + 0.5 * JaccardLoss",
        ctx.read_scalar(&out.loss)?
    );
    // A multi-task loss: seg + 0.5 * cls over two heads.
    let multi = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1])
        .term(0.5, CrossEntropyLoss::default(), &[2, 3]);
    let out = multi.compute(&ctx, &[&logits, &mask, &class_logits, &classes])?;
    println!(
        "{:<58} loss {:.6}",
        "seg + 0.5 * CrossEntropyLoss",
        ctx.read_scalar(&out.loss)?
    );
    Ok(())
}
