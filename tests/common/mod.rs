//! Shared by the GPU tests: one context per test binary, on the adapter CI asks for, named in
//! the output; random inputs; comparisons.
#![allow(dead_code)]

use std::sync::OnceLock;

use deepml::cases::{self, Case, DType, Expected, TensorData, Tolerance};
use serde_json::Value;

use deepml::{ContextOptions, LossContext};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The context of this test binary. `DEEPML_EXPECT_BACKEND=vulkan|gl` makes the tests assert
/// the backend they run on (CI sets it, with WGPU_BACKEND), and `DEEPML_EXPECT_ADAPTER` a part
/// of the adapter's name (`llvmpipe`, `swiftshader`).
pub fn ctx() -> &'static LossContext {
    static CTX: OnceLock<LossContext> = OnceLock::new();
    CTX.get_or_init(|| {
        let ctx = LossContext::with_options(ContextOptions::default())
            .expect("no GPU adapter: install mesa-vulkan-drivers");
        eprintln!("deepml tests on: {}", ctx.adapter().summary());
        expect_adapter(ctx.adapter());
        ctx
    })
}

/// Asserts the backend (`DEEPML_EXPECT_BACKEND=vulkan|gl`) and a part of the adapter's name
/// (`DEEPML_EXPECT_ADAPTER`: `llvmpipe`, `swiftshader`) that CI asks the tests to run on.
pub fn expect_adapter(a: &deepml::AdapterReport) {
    if let Ok(want) = std::env::var("DEEPML_EXPECT_ADAPTER") {
        assert!(
            a.name.to_lowercase().contains(&want.to_lowercase()),
            "tests ran on {} but an adapter named {want} was expected",
            a.summary()
        );
    }
    if let Ok(want) = std::env::var("DEEPML_EXPECT_BACKEND") {
        let got = format!("{:?}", a.backend).to_lowercase();
        assert_eq!(
            got,
            want.to_lowercase(),
            "tests ran on {} but {want} was expected",
            a.summary()
        );
    }
}

/// A second context on the same adapter that chooses the kernels tuned for GPUs (and `cpu`:
/// for CPU adapters), whatever the adapter is: each choice must compute the same results.
pub fn tuned_ctx(cpu: bool) -> &'static LossContext {
    static CTX: [OnceLock<LossContext>; 2] = [OnceLock::new(), OnceLock::new()];
    CTX[cpu as usize].get_or_init(|| {
        let ctx = LossContext::with_options(ContextOptions {
            cpu_kernels: Some(cpu),
            ..Default::default()
        })
        .unwrap();
        expect_adapter(ctx.adapter());
        ctx
    })
}

/// A context whose storage bindings are capped at `bytes`, to drive the windowed path.
pub fn windowed_ctx(bytes: u64) -> LossContext {
    LossContext::with_options(ContextOptions {
        max_window_bytes: Some(bytes),
        ..Default::default()
    })
    .unwrap()
}

/// How many units of `unit_bytes` one aligned step of a window holds on this adapter: every
/// window but the last starts at a multiple of the device's storage-offset alignment (16 to 64
/// bytes on llvmpipe, 256 on SwiftShader and many GPUs), so a window holds whole steps.
pub fn aligned_units(unit_bytes: u64) -> u64 {
    fn gcd(a: u64, b: u64) -> u64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let align = (ctx().adapter().limits.min_storage_buffer_offset_alignment as u64).max(4);
    align / gcd(unit_bytes, align)
}

/// A windowed context whose windows hold `units` units of `unit_bytes` where the adapter's
/// alignment allows, else one aligned step (`aligned_units`): tests size their inputs with
/// `aligned_units` to get several windows on every adapter.
pub fn windowed_ctx_units(unit_bytes: u64, units: u64) -> LossContext {
    let step = aligned_units(unit_bytes);
    windowed_ctx(unit_bytes * units.max(1).div_ceil(step) * step)
}

pub fn rng(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

pub fn uniform(rng: &mut SmallRng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

pub fn to64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts `|got - want| <= rtol * |want| + atol * max|want|` elementwise.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, &w| m.max(w.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if w.is_nan() {
            assert!(g.is_nan(), "{what}[{i}]: got {g}, want NaN");
            continue;
        }
        let err = (g as f64 - w).abs();
        let tol = rtol * w.abs() + atol * scale;
        assert!(
            err <= tol,
            "{what}[{i}]: got {g}, want {w} (err {err:e} > tol {tol:e})"
        );
    }
}

/// A float32 tensor of a case.
pub fn tensor_data(shape: &[usize], data: &[f32]) -> TensorData {
    TensorData {
        shape: shape.to_vec(),
        dtype: DType::F32,
        data: data.iter().map(|&v| v as f64).collect(),
    }
}

/// A case of `loss` whose expected values come from elsewhere (the reference), with the
/// default tolerances and every differentiable input.
pub fn case(loss: &str, config: Value, inputs: Vec<(&str, TensorData)>) -> Case {
    Case {
        name: format!("generated {loss}"),
        loss: loss.into(),
        config: config.as_object().cloned().unwrap_or_default(),
        inputs: inputs
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        grad_wrt: cases::differentiable_inputs(loss)
            .iter()
            .map(|s| s.to_string())
            .collect(),
        expected: Expected::Error {
            kind: String::new(),
        },
        tolerance: Tolerance {
            rtol: 1e-4,
            atol: 1e-5,
        },
    }
}

/// Runs `f(rank, member)` on every member of a new thread group of `k` ranks, one thread each,
/// and returns their results in rank order (tests of `deepml::shard`).
pub fn on_world<T: Send>(
    k: usize,
    f: impl Fn(usize, &deepml::shard::ThreadRank) -> T + Sync,
) -> Vec<T> {
    let members = deepml::shard::ThreadGroup::new(k);
    std::thread::scope(|sc| {
        let handles: Vec<_> = members
            .into_iter()
            .enumerate()
            .map(|(r, m)| {
                let f = &f;
                sc.spawn(move || f(r, &m))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Asserts `|got - want| <= rtol * max |want|` element-wise.
pub fn close_to_max(what: &str, got: &[f32], want: &[f32], rtol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-30);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rtol * scale,
            "{what}[{i}]: {g} vs {w} (scale {scale})"
        );
    }
}
