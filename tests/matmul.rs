//! The shared register-tiled matrix product (src/matmul.rs) against a float64 CPU product at
//! awkward sizes, every layout, in windows, bit-identical from run to run.

mod common;

use common::{ctx, rng, uniform, windowed_ctx};
use deepml::matmul::matmul;
use deepml::LossContext;

/// C = op(A) op(B) in f64.
fn reference(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, a_t: bool, b_t: bool) -> Vec<f64> {
    let mut c = vec![0.0f64; m * n];
    for i in 0..m {
        for j in 0..n {
            let mut s = 0.0f64;
            for q in 0..k {
                let av = if a_t { a[q * m + i] } else { a[i * k + q] } as f64;
                let bv = if b_t { b[j * k + q] } else { b[q * n + j] } as f64;
                s += av * bv;
            }
            c[i * n + j] = s;
        }
    }
    c
}

fn one(ctx: &LossContext, m: usize, n: usize, k: usize, a_t: bool, b_t: bool, seed: u64) {
    let mut r = rng(seed);
    let a = uniform(&mut r, m * k, -1.0, 1.0);
    let b = uniform(&mut r, k * n, -1.0, 1.0);
    let sa = if a_t { [k, m] } else { [m, k] };
    let sb = if b_t { [n, k] } else { [k, n] };
    let ta = ctx.upload(&a, &sa).unwrap();
    let tb = ctx.upload(&b, &sb).unwrap();
    let got = ctx.read(&matmul(ctx, &ta, &tb, a_t, b_t).unwrap()).unwrap();
    let want = reference(&a, &b, m, n, k, a_t, b_t);
    // float32 sums of k products of values in [-1, 1]: error grows like sqrt(k) ulps.
    let tol = 1e-5 * (k as f64).sqrt().max(1.0) + 1e-6;
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{m}x{n}x{k} a_t={a_t} b_t={b_t}: element {i}: got {g}, want {w}"
        );
    }
}

#[test]
fn awkward_sizes_every_layout() {
    let ctx = ctx();
    let sizes = [1usize, 3, 17, 129];
    let mut seed = 0;
    for &m in &sizes {
        for &n in &sizes {
            for &k in &sizes {
                for (a_t, b_t) in [(false, true), (false, false), (true, false), (true, true)] {
                    seed += 1;
                    one(ctx, m, n, k, a_t, b_t, seed);
                }
            }
        }
    }
}

#[test]
fn four_columns_per_invocation() {
    // N a multiple of 4: the four-column form of the CPU variant, with tails along K.
    let ctx = ctx();
    let mut seed = 100;
    // 150 rows: tiles of 64 rows (matmul::WIDE_ROWS), the last overlapping its neighbour.
    for &(m, n, k) in &[
        (33, 132, 300),
        (150, 132, 300),
        (1, 4, 129),
        (17, 260, 128),
        (40, 8, 1),
    ] {
        for (a_t, b_t) in [(false, true), (false, false), (true, false), (true, true)] {
            seed += 1;
            one(ctx, m, n, k, a_t, b_t, seed);
        }
    }
}

#[test]
fn large_dimensions() {
    let ctx = ctx();
    // 1000+ in each dimension, one at a time (and K over one dispatch's reduction length).
    one(ctx, 1031, 5, 7, false, true, 1);
    one(ctx, 5, 1031, 7, false, false, 2);
    one(ctx, 7, 5, 1031, true, false, 3);
    one(ctx, 3, 9, 70001, false, true, 4);
    one(ctx, 64, 64, 70001, true, false, 5);
    one(ctx, 1003, 1001, 64, false, true, 6);
}

#[test]
fn windows_over_the_binding_limit() {
    // 4 KiB bindings (more where the storage-offset alignment makes one aligned step of 80-byte
    // rows larger: 5 KiB on SwiftShader): C and A in windows of rows.
    let align = ctx().adapter().limits.min_storage_buffer_offset_alignment as u64;
    let small = windowed_ctx(4096.max(80 * align / 4));
    one(&small, 300, 20, 16, false, true, 7);
    one(&small, 129, 17, 3, false, false, 8);
}

#[test]
fn deterministic() {
    let ctx = ctx();
    let mut r = rng(9);
    let (m, n, k) = (130, 70, 1000);
    let a = ctx
        .upload(&uniform(&mut r, m * k, -1.0, 1.0), &[m, k])
        .unwrap();
    let b = ctx
        .upload(&uniform(&mut r, n * k, -1.0, 1.0), &[n, k])
        .unwrap();
    let first = ctx
        .read(&matmul(ctx, &a, &b, false, true).unwrap())
        .unwrap();
    for _ in 0..3 {
        let again = ctx
            .read(&matmul(ctx, &a, &b, false, true).unwrap())
            .unwrap();
        assert!(first
            .iter()
            .zip(&again)
            .all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

/// GFLOP/s of the three products' shapes (not a test of speed: it asserts nothing, so it is
/// left out of the suite; run it with `--ignored --nocapture`). `deepml bench` reports the
/// products' speeds within the loss.
#[test]
#[ignore]
fn speed_probe() {
    let ctx = ctx();
    let mut r = rng(10);
    let (m, n, k) = (1024, 2048, 512);
    let a = ctx
        .upload(&uniform(&mut r, m * k, -1.0, 1.0), &[m, k])
        .unwrap();
    let b = ctx
        .upload(&uniform(&mut r, n * k, -1.0, 1.0), &[n, k])
        .unwrap();
    let bt = ctx
        .upload(&uniform(&mut r, n * k, -1.0, 1.0), &[k, n])
        .unwrap();
    let at = ctx
        .upload(&uniform(&mut r, m * k, -1.0, 1.0), &[k, m])
        .unwrap();
    for (name, a_t, b_t) in [
        ("x W^T", false, true),
        ("G W", false, false),
        ("G^T x", true, false),
    ] {
        let (aa, bb) = match (a_t, b_t) {
            (false, true) => (&a, &b),
            (false, false) => (&a, &bt),
            _ => (&at, &bt),
        };
        ctx.read(&matmul(ctx, aa, bb, a_t, b_t).unwrap()).unwrap();
        let t = std::time::Instant::now();
        let reps = 3;
        for _ in 0..reps {
            ctx.read(&matmul(ctx, aa, bb, a_t, b_t).unwrap()).unwrap();
        }
        let s = t.elapsed().as_secs_f64() / reps as f64;
        println!("{name}: {:.1} GFLOP/s", 2.0 * (m * n * k) as f64 / s / 1e9);
    }
}
