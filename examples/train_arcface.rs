//! Learns class centres with ArcFace: synthetic embeddings in clusters (one per class) train the
//! owned class weight `W` of an `AngularPenaltySMLoss` with SGD on the device. Every `--print`
//! steps it reads `W` back and reports the held-out accuracy (nearest centre by cosine).
//!
//!     cargo run --release --example train_arcface -- --steps 150
//!
//! Exits non-zero unless the held-out accuracy ends above 0.9.

use deepml::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator: uniform in [0, 1) and standard normal (Box-Muller).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }
    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform().max(1e-7), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}

/// `per_class` samples of each class: its centre plus Gaussian noise.
fn samples(
    rng: &mut Rng,
    centres: &[Vec<f32>],
    per_class: usize,
    noise: f32,
) -> (Vec<f32>, Vec<i32>) {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    for _ in 0..per_class {
        for (c, centre) in centres.iter().enumerate() {
            x.extend(centre.iter().map(|&m| m + noise * rng.normal()));
            y.push(c as i32);
        }
    }
    (x, y)
}

/// The share of samples whose nearest class weight (by cosine) is their own class.
fn accuracy(w: &[f32], x: &[f32], y: &[i32], d: usize) -> f32 {
    let norm = |v: &[f32]| v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
    let rows: Vec<&[f32]> = w.chunks(d).collect();
    let hits = x
        .chunks(d)
        .zip(y)
        .filter(|(xi, &yi)| {
            let score = |r: &[f32]| r.iter().zip(*xi).map(|(a, b)| a * b).sum::<f32>() / norm(r);
            let best = (0..rows.len())
                .max_by(|&a, &b| score(rows[a]).total_cmp(&score(rows[b])))
                .unwrap();
            best == yi as usize
        })
        .count();
    hits as f32 / y.len() as f32
}

fn main() -> Result<()> {
    let steps = arg("--steps", 150);
    let print = arg("--print", 25);
    let (classes, d) = (16usize, 32usize);
    let ctx = LossContext::new()?;
    println!("adapter: {}", ctx.adapter().summary());

    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let centres: Vec<Vec<f32>> = (0..classes)
        .map(|_| (0..d).map(|_| rng.normal()).collect())
        .collect();
    let (x_train, y_train) = samples(&mut rng, &centres, 32, 1.2);
    let (x_test, y_test) = samples(&mut rng, &centres, 16, 1.2);
    let n = y_train.len();
    let x = ctx.upload(&x_train, &[n, d])?;
    let y = ctx.upload_labels(&y_train, &[n])?;

    let cfg = AngularPenaltySMConfig {
        s: Some(16.0),
        m: Some(0.3),
        ..AngularPenaltySMConfig::new(d, classes, LossType::ArcFace)
    };
    let mut arcface = AngularPenaltySMLoss::new(&ctx, cfg, 7)?;
    let lr = 0.05;
    let mut acc = accuracy(&arcface.read_weight(&ctx)?, &x_test, &y_test, d);
    println!("step    0  held-out accuracy {acc:.3} (random weights)");
    for step in 1..=steps {
        let out = arcface.compute(&ctx, &[&x, &y])?;
        arcface.sgd_step(&ctx, &out.grads[1], lr)?;
        if step % print == 0 || step == steps {
            let loss = ctx.read_scalar(&out.loss)?;
            acc = accuracy(&arcface.read_weight(&ctx)?, &x_test, &y_test, d);
            println!("step {step:4}  loss {loss:.4}  held-out accuracy {acc:.3}");
        }
    }
    if acc <= 0.9 {
        eprintln!("train_arcface: held-out accuracy ended at {acc:.3}, not above 0.9");
        std::process::exit(1);
    }
    println!("ok: held-out accuracy {acc:.3} > 0.9");
    Ok(())
}
