//! ArcFace forward + backward throughput: N = 1024 samples, in_features = 512,
//! out_features = 10000 (override with `N IN OUT` arguments, and the timed runs with a fourth).
//!
//! Counts only the three matrix products: `2 N out in` for `wf = x^ W^T` and `2 * 2 N out in`
//! for `d x^ = dwf W^` and `d W^ = dwf^T x^`.
//!
//! `cargo run --release --example arcface_gflops [N IN OUT [RUNS]]`

use std::time::Instant;

use deepml::{AngularPenaltySMConfig, AngularPenaltySMLoss, LossContext, LossType};

fn main() -> deepml::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let (n, fin, fout) = match args[..] {
        [a, b, c, ..] => (a, b, c),
        _ => (1024, 512, 10000),
    };
    let runs = args.get(3).copied().unwrap_or(5).max(1);
    let ctx = LossContext::new()?;
    println!("adapter: {}", ctx.adapter().summary());

    let cfg = AngularPenaltySMConfig::new(fin, fout, LossType::ArcFace);
    let loss = AngularPenaltySMLoss::new(&ctx, cfg, 0)?;
    // Inputs from a small deterministic generator (xorshift).
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let x: Vec<f32> = (0..n * fin)
        .map(|_| (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0)
        .collect();
    let labels: Vec<i64> = (0..n).map(|_| (next() % fout as u64) as i64).collect();
    let x = ctx.upload(&x, &[n, fin])?;

    // Warm-up: pipelines, buffer pool.
    let out = loss.compute_with_labels(&ctx, &x, &labels)?;
    let first = out.value(&ctx)?;
    drop(out);
    ctx.synchronize()?;

    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let out = loss.compute_with_labels(&ctx, &x, &labels)?;
        ctx.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
        drop(out);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops = 3.0 * 2.0 * n as f64 * fout as f64 * fin as f64;
    println!("ArcFace N={n} in={fin} out={fout}: loss {first:.4}");
    println!(
        "forward + backward: median {:.2} ms over {runs} runs (min {:.2}, max {:.2}), {:.1} GFLOP/s ({:.2} GFLOP per run)",
        median * 1e3,
        times[0] * 1e3,
        times[times.len() - 1] * 1e3,
        flops / median / 1e9,
        flops / 1e9
    );
    Ok(())
}
