//! The weighted combination (`0.5 * BCE + 0.5 * Jaccard` on one set of logits) and a
//! multi-task loss (`seg + 0.5 * cls`: a segmentation head and a classification head), each in
//! one submission, with one gradient per input. Checks that the combined gradient is the
//! weighted sum of the separate ones, then trains both heads for a few steps.
//!
//!     cargo run --release --example combined_loss -- --steps 60

use deepml::*;

fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .skip_while(|a| a != "--steps")
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let ctx = LossContext::new()?;
    println!("adapter: {}", ctx.adapter().summary());

    // A batch of 4 masks of 32 x 32, and 4 images to classify into 10 classes.
    let seg_shape = [4, 1, 32, 32];
    let n_seg: usize = seg_shape.iter().product();
    let mask: Vec<f32> = (0..n_seg)
        .map(|i| ((i % 32 > 8) && (i / 32 % 32 < 20)) as u8 as f32)
        .collect();
    let mask_logits: Vec<f32> = (0..n_seg)
        .map(|i| ((i * 37 % 17) as f32 - 8.0) / 8.0)
        .collect();
    let class_logits: Vec<f32> = (0..40).map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0).collect();
    let labels = [3i32, 7, 0, 9];

    let x_seg = ctx.upload(&mask_logits, &seg_shape)?;
    let t_seg = ctx.upload(&mask, &seg_shape)?;
    let x_cls = ctx.upload(&class_logits, &[4, 10])?;
    let t_cls = ctx.upload_labels(&labels, &[4])?;
    let inputs = [&x_seg, &t_seg, &x_cls, &t_cls];

    // seg = 0.5 * BCE + 0.5 * Jaccard (shared logits); total = seg + 0.5 * CE.
    let loss = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1])
        .term(0.5, CrossEntropyLoss::default(), &[2, 3]);
    let out = loss.compute(&ctx, &inputs)?;
    let terms: Vec<f32> = out
        .terms
        .iter()
        .map(|t| ctx.read_scalar(t))
        .collect::<Result<_>>()?;
    println!(
        "total {:.6} = 0.5 * BCE {:.6} + 0.5 * Jaccard {:.6} + 0.5 * CE {:.6}",
        ctx.read_scalar(&out.loss)?,
        terms[0],
        terms[1],
        terms[2]
    );

    // The same gradient, term by term.
    let bce = BCEWithLogitsLoss::default()
        .compute(&ctx, &[&x_seg, &t_seg])?
        .grad(&ctx, 0)?;
    let jac = JaccardLoss::new(false)
        .compute(&ctx, &[&x_seg, &t_seg])?
        .grad(&ctx, 0)?;
    let combined = ctx.read(out.input_grad(0).expect("mask logits have a gradient"))?;
    let worst = combined
        .iter()
        .zip(bce.iter().zip(&jac))
        .map(|(c, (b, j))| (c - 0.5 * (b + j)).abs())
        .fold(0.0f32, f32::max);
    println!("max |d total/d mask logits - (0.5 d BCE + 0.5 d Jaccard)| = {worst:e}");
    assert!(
        worst < 1e-6,
        "the combined gradient is the weighted sum of the separate ones"
    );
    assert!(
        out.input_grad(1).is_none() && out.input_grad(3).is_none(),
        "targets get no gradient"
    );
    drop(out);

    // Train both heads together: one submission for the loss, one SGD step per head.
    let mut first = None;
    let mut last = 0.0;
    for step in 0..=steps {
        let out = loss.compute(&ctx, &inputs)?;
        if step % 20 == 0 || step == steps {
            last = ctx.read_scalar(&out.loss)?;
            first.get_or_insert(last);
            println!("step {step:3}  total {last:.5}");
        }
        if step < steps {
            ctx.axpy(
                &x_seg,
                -(n_seg as f32) * 0.25,
                out.input_grad(0).expect("seg gradient"),
            )?;
            ctx.axpy(&x_cls, -2.0, out.input_grad(2).expect("cls gradient"))?;
        }
    }
    let first = first.unwrap_or(last);
    assert!(
        last < 0.5 * first,
        "the multi-task loss fell from {first} to {last}"
    );
    println!("ok: the total fell from {first:.5} to {last:.5}");
    Ok(())
}
