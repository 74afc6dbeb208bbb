//! deepml: the loss functions of computer-vision training and their gradients, as WGSL compute
//! shaders on any GPU through wgpu (Vulkan, Metal, DX12, GL, and WebGPU in the browser).
//!
//! ```no_run
//! use deepml::{LossContext, Loss, RMSELoss};
//! let ctx = LossContext::new()?;
//! let out = ctx.upload(&[0.5, 1.0, 2.0], &[3])?;
//! let tgt = ctx.upload(&[0.0, 1.0, 1.0], &[3])?;
//! let r = RMSELoss::default().compute(&ctx, &[&out, &tgt])?;
//! println!("loss {} grad {:?}", r.value(&ctx)?, r.grad(&ctx, 0)?);
//! # Ok::<(), deepml::Error>(())
//! ```

#![warn(missing_docs, missing_debug_implementations)]
// Without `cases`, the lists of shader variants (used by the portability test through
// `all_shader_variants`) have no caller; every build that CI lints has the feature.
#![cfg_attr(not(feature = "cases"), allow(dead_code))]
// wgpu's types are neither Send nor Sync on the web, where there is one thread.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

mod adapter;
#[cfg(any(
    all(not(target_arch = "wasm32"), feature = "cli"),
    all(target_arch = "wasm32", feature = "web")
))]
pub mod bench;
#[cfg(all(feature = "burn", not(target_arch = "wasm32")))]
pub mod burn;
#[cfg(feature = "cases")]
pub mod cases;
pub mod config;
#[cfg(all(not(target_arch = "wasm32"), feature = "cases"))]
pub mod conformance;
pub mod context;
pub mod error;
#[cfg(feature = "cases")]
pub mod kernel;
#[cfg(not(feature = "cases"))]
pub(crate) mod kernel;
pub mod losses;
#[cfg(feature = "cases")]
pub mod matmul;
#[cfg(not(feature = "cases"))]
pub(crate) mod matmul;
mod pool;
#[cfg(feature = "cases")]
pub mod reference;
#[cfg(feature = "cases")]
pub mod registry;
pub mod shard;
pub mod tensor;
#[cfg(all(target_arch = "wasm32", feature = "web"))]
pub mod web;

pub use config::*;
pub use context::{AdapterReport, AllocStats, ContextOptions, LossContext, TransferStats};
pub use error::{Error, ErrorKind, Result, WgpuError};
pub use losses::angular::AngularPenaltySMLoss;
pub use losses::combined::{Combined, Term};
pub use losses::focal::FocalLoss;
pub use losses::tversky::TverskyLoss;
pub use losses::{GradOpts, Loss, LossOutput, Recorder};
pub use tensor::{DType, Tensor};

/// Every shader variant the library can build, for the portability test (naga validation and
/// translation to every back end). The layers above the kernel machinery list their own.
#[cfg(feature = "cases")]
#[doc(hidden)]
pub fn all_shader_variants() -> Vec<kernel::ShaderSource> {
    let mut v: Vec<kernel::ShaderSource> = [false, true]
        .map(|cpu| {
            kernel::ShaderSource::new("reduce", kernel::REDUCE)
                .with("RI", kernel::reduce_items(cpu))
        })
        .into();
    for e in registry::LOSSES {
        v.extend((e.shader_variants)());
    }
    v.extend(losses::combined::shader_variants());
    #[cfg(all(not(target_arch = "wasm32"), feature = "cli"))]
    v.extend(bench::shader_variants());
    // Losses that share a kernel list it once.
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|s| seen.insert(s.key()));
    v
}

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
