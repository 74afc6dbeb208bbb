//! A small Burn conv network learns to segment discs and squares on noise, with deepml's
//! `0.5 * BCEWithLogitsLoss + 0.5 * JaccardLoss` as its loss, on one wgpu device shared by Burn
//! and deepml; it must reach a held-out IoU over 0.8. Then, same device, one loss forward and
//! backward at [16, 1, 128, 128]: deepml's fused loss against the same loss written with Burn's
//! tensor ops and autodiff.
//!
//! ```sh
//! WGPU_BACKEND=vulkan cargo run --release --features burn --example burn_segmentation
//! ```

use std::time::Instant;

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::{Device, Tensor, TensorData};
use deepml::burn::{BurnContext, Input};
use deepml::{BCEWithLogitsLoss, Combined, ContextOptions, JaccardLoss};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SIDE: usize = 32;

#[derive(Module, Debug)]
struct Net {
    c1: Conv2d,
    c2: Conv2d,
    c3: Conv2d,
}

impl Net {
    fn new(device: &Device) -> Self {
        let conv = |i, o, k| {
            Conv2dConfig::new([i, o], [k, k])
                .with_padding(PaddingConfig2d::Same)
                .init(device)
        };
        Net {
            c1: conv(1, 8, 3),
            c2: conv(8, 8, 3),
            c3: conv(8, 1, 3),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = relu(self.c1.forward(x));
        let x = relu(self.c2.forward(x));
        self.c3.forward(x)
    }
}

/// `n` images `[n, 1, SIDE, SIDE]` of noise with one to three discs and squares, and their
/// masks.
fn shapes(rng: &mut SmallRng, n: usize) -> (Vec<f32>, Vec<f32>) {
    let mut img = vec![0f32; n * SIDE * SIDE];
    let mut mask = vec![0f32; n * SIDE * SIDE];
    for k in 0..n {
        let m = &mut mask[k * SIDE * SIDE..(k + 1) * SIDE * SIDE];
        for _ in 0..rng.gen_range(1..=3) {
            let (cy, cx) = (rng.gen_range(4.0..28.0f32), rng.gen_range(4.0..28.0f32));
            let r = rng.gen_range(3.0..8.0f32);
            let disc = rng.gen_bool(0.5);
            for y in 0..SIDE {
                for x in 0..SIDE {
                    let (dy, dx) = (y as f32 - cy, x as f32 - cx);
                    let inside = if disc {
                        dy * dy + dx * dx <= r * r
                    } else {
                        dy.abs() <= r && dx.abs() <= r
                    };
                    if inside {
                        m[y * SIDE + x] = 1.0;
                    }
                }
            }
        }
        for (i, v) in img[k * SIDE * SIDE..(k + 1) * SIDE * SIDE]
            .iter_mut()
            .enumerate()
        {
            // Uniform noise of standard deviation ~0.35 around 0 (background) or 1 (shape).
            *v = m[i] + rng.gen_range(-0.6..0.6f32);
        }
    }
    (img, mask)
}

fn tensor(v: Vec<f32>, n: usize, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(TensorData::new(v, [n, 1, SIDE, SIDE]), device)
}

/// The same loss with Burn's tensor ops: 0.5 * BCE-with-logits (mean) + 0.5 * (1 - I / (S - I
/// + eps)), I = sum(sigmoid(x) t), S = sum(sigmoid(x)) + sum(t).
fn burn_loss(x: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    let bce = (x.clone().clamp_min(0.0) - x.clone() * t.clone()
        + x.clone().abs().neg().exp().log1p())
    .mean();
    let p = sigmoid(x);
    let i = (p.clone() * t.clone()).sum();
    let s = p.sum() + t.sum();
    let jaccard = (i.clone() / (s - i + 1e-7)).neg().add_scalar(1.0);
    bce.mul_scalar(0.5) + jaccard.mul_scalar(0.5)
}

fn main() -> deepml::Result<()> {
    let ctx = BurnContext::new(&ContextOptions::default())?;
    println!("device: {}", ctx.loss_context().adapter().summary());
    let device = ctx.autodiff_device();
    let loss = Combined::new()
        .term(0.5, BCEWithLogitsLoss::default(), &[0, 1])
        .term(0.5, JaccardLoss::binary(), &[0, 1]);

    // Training.
    let mut rng = SmallRng::seed_from_u64(5);
    let mut model = Net::new(&device);
    let mut optim = AdamConfig::new().init();
    let (batch, steps) = (16, 300);
    let start = Instant::now();
    let mut last = 0.0;
    for step in 0..steps {
        let (img, mask) = shapes(&mut rng, batch);
        let x = tensor(img, batch, &device);
        let t = tensor(mask, batch, &device);
        let logits = model.forward(x);
        let out = ctx.forward(&loss, [Input::from(logits), Input::from(t)])?;
        if step % 50 == 0 || step == steps - 1 {
            last = out.loss.clone().into_scalar();
            println!("step {step:4}  loss {last:.4}");
        }
        let grads = GradientsParams::from_grads(out.loss.backward(), &model);
        model = optim.step(1e-2, model, grads);
    }
    println!(
        "trained {steps} steps of {batch} images {SIDE}x{SIDE} in {:.1} s (last loss {last:.4})",
        start.elapsed().as_secs_f64()
    );

    // Held-out IoU.
    let mut rng = SmallRng::seed_from_u64(999);
    let (img, mask) = shapes(&mut rng, 64);
    let plain = ctx.device().clone();
    let model = model.valid();
    let pred = model
        .forward(tensor(img, 64, &plain))
        .greater_elem(0.0)
        .float();
    let t = tensor(mask, 64, &plain);
    let inter: f32 = (pred.clone() * t.clone()).sum().into_scalar();
    let union: f32 = (pred.clone() + t.clone() - pred * t).sum().into_scalar();
    let iou = inter / union;
    println!("held-out IoU {iou:.3} (64 images)");
    assert!(iou > 0.8, "held-out IoU {iou} is not over 0.8");

    // One loss forward + backward at [16, 1, 128, 128]: deepml's fused loss against Burn's ops.
    let shape = [16, 1, 128, 128];
    let n: usize = shape.iter().product();
    let mut rng = SmallRng::seed_from_u64(3);
    let xs: Vec<f32> = (0..n).map(|_| rng.gen_range(-3.0..3.0)).collect();
    let ts: Vec<f32> = (0..n).map(|_| rng.gen_bool(0.3) as u8 as f32).collect();
    let x = Tensor::<4>::from_data(TensorData::new(xs, shape), &device).require_grad();
    let t = Tensor::<4>::from_data(TensorData::new(ts, shape), &device);
    let sync = || -> deepml::Result<()> {
        ctx.flush()?;
        ctx.loss_context().synchronize()
    };
    let deepml_step = || -> deepml::Result<(Tensor<1>, Tensor<4>)> {
        let out = ctx.forward(&loss, [Input::from(x.clone()), Input::from(t.clone())])?;
        let g = x.grad(&out.loss.backward()).expect("x requires a gradient");
        Ok((out.loss, g))
    };
    let burn_step = || {
        let l = burn_loss(x.clone(), t.clone());
        let g = x.grad(&l.backward()).expect("x requires a gradient");
        (l, g)
    };
    // Same values first.
    let (dl, dg) = deepml_step()?;
    let (bl, bg) = burn_step();
    let (dl, bl): (f32, f32) = (dl.into_scalar(), bl.into_scalar());
    let gdiff: f32 = (dg.clone() - bg).abs().max().into_scalar();
    let gmax: f32 = dg.abs().max().into_scalar();
    println!("loss: deepml {dl:.6}, Burn ops {bl:.6}; largest gradient difference {gdiff:.2e} (largest gradient {gmax:.2e})");
    assert!((dl - bl).abs() <= 1e-4 * (1.0 + bl.abs()));
    assert!(gdiff <= 1e-3 * gmax);
    let reps = 20;
    let time = |f: &dyn Fn() -> deepml::Result<()>| -> deepml::Result<f64> {
        for _ in 0..3 {
            f()?;
        }
        sync()?;
        let start = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        sync()?;
        Ok(start.elapsed().as_secs_f64() * 1e3 / reps as f64)
    };
    let d = time(&|| deepml_step().map(|_| ()))?;
    let b = time(&|| {
        burn_step();
        Ok(())
    })?;
    println!(
        "loss forward+backward at {shape:?}: deepml {d:.2} ms, Burn ops + autodiff {b:.2} ms: deepml/Burn speedup {:.1}x",
        b / d
    );
    Ok(())
}
