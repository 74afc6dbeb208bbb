//! Drives a mask's logits toward a target shape with 0.5 * BCE + 0.5 * Jaccard, on the GPU.
//! Every step is one submission for the loss and gradient plus one for the SGD step; only the
//! scalar loss values are read back, every `--print` steps.
//!
//!     cargo run --release --example train_segmentation -- --steps 300
//!
//! Exits non-zero unless the soft IoU ends above 0.9.

use deepml::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<()> {
    let steps = arg("--steps", 300);
    let print = arg("--print", 25);
    let ctx = LossContext::new()?;
    println!("adapter: {}", ctx.adapter().summary());

    // The target: a ring and a bar on a 64 x 64 grid.
    let (h, w) = (64usize, 64usize);
    let mask: Vec<f32> = (0..h * w)
        .map(|i| {
            let (y, x) = ((i / w) as f32 - 32.0, (i % w) as f32 - 32.0);
            let r = (x * x + y * y).sqrt();
            let ring = (10.0..22.0).contains(&r);
            let bar = (-3.0..3.0).contains(&y) && x > 10.0;
            (ring || bar) as u8 as f32
        })
        .collect();
    let shape = [1, 1, h, w];
    let target = ctx.upload(&mask, &shape)?;
    // The prediction starts as small noise.
    let init: Vec<f32> = (0..h * w)
        .map(|i| ((i * 7919 % 101) as f32 / 101.0 - 0.5) * 0.1)
        .collect();
    let logits = ctx.upload(&init, &shape)?;

    // deepml's guide: 0.5 * BCE + 0.5 * Jaccard on the same logits.
    let loss = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::new(false), &[0, 1]);
    // The mean over 4096 pixels makes each pixel's gradient small: a large step size.
    let lr = 0.5 * (h * w) as f32;
    let mut iou = 0.0;
    for step in 0..=steps {
        let out = loss.compute(&ctx, &[&logits, &target])?;
        if step % print == 0 || step == steps {
            let total = ctx.read_scalar(&out.loss)?;
            iou = 1.0 - ctx.read_scalar(&out.terms[1])?;
            println!("step {step:4}  loss {total:.5}  soft IoU {iou:.4}");
        }
        if step < steps {
            let grad = out.input_grad(0).expect("the logits get a gradient");
            ctx.axpy(&logits, -lr, grad)?;
        }
    }
    println!(
        "allocated after training: {} KiB",
        ctx.stats().allocated_bytes >> 10
    );
    if iou <= 0.9 {
        eprintln!("train_segmentation: the soft IoU ended at {iou:.4}, not above 0.9");
        std::process::exit(1);
    }
    println!("ok: IoU {iou:.4} > 0.9");
    Ok(())
}
