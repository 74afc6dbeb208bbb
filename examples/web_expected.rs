//! The float64 reference values that the browser test (web/test.mjs) checks the page against:
//! JaccardLoss (binary) of the page's fixed test state, a 64x64 image whose ground truth is a
//! disc and whose logits are a square plus a ripple (both exact in f32, built the same way in
//! web/test.mjs). Prints JSON; web/test.mjs embeds these numbers.
//!
//!     cargo run --release --example web_expected

use deepml::{reference, JaccardLoss};

const W: usize = 64;

fn main() -> Result<(), deepml::Error> {
    let mut logits = vec![0f64; W * W];
    let mut target = vec![0f64; W * W];
    for y in 0..W {
        for x in 0..W {
            let i = y * W + x;
            let (dx, dy) = (x as i64 - 38, y as i64 - 34);
            target[i] = if dx * dx + dy * dy <= 14 * 14 {
                1.0
            } else {
                0.0
            };
            let ripple = ((x * 7 + y * 13) % 17) as f64 - 8.0;
            let inside = (12..36).contains(&x) && (12..36).contains(&y);
            // Exact in f32: what the page uploads.
            logits[i] = ((ripple / 4.0 + if inside { 2.0 } else { -2.0 }) as f32) as f64;
        }
    }
    let out = reference::jaccard(&JaccardLoss::default(), &logits, &target, &[1, 1, W, W])?;
    let g = &out.grads[0];
    let l1: f64 = g.iter().map(|v| v.abs()).sum();
    let probe = [0usize, 34 * W + 38, 20 * W + 20, W * W - 1];
    let probes: Vec<String> = probe
        .iter()
        .map(|&i| format!("[{i}, {:e}]", g[i]))
        .collect();
    println!(
        "{{\"loss\": {:e}, \"grad_l1\": {:e}, \"grad_probes\": [{}]}}",
        out.loss[0],
        l1,
        probes.join(", ")
    );
    Ok(())
}
