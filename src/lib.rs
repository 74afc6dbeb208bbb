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

// wgpu's types are neither Send nor Sync on the web, where there is one thread.
#![cfg_attr(target_arch = "wasm32", allow(clippy::arc_with_non_send_sync))]

#[cfg(not(target_arch = "wasm32"))]
pub mod bench;
pub mod cases;
pub mod config;
#[cfg(not(target_arch = "wasm32"))]
pub mod conformance;
pub mod context;
pub mod error;
pub mod kernel;
pub mod losses;
pub mod matmul;
pub mod reference;
pub mod tensor;
#[cfg(target_arch = "wasm32")]
pub mod web;

pub use config::*;
pub use context::{AdapterReport, AllocStats, ContextOptions, LossContext};
pub use error::{Error, Result};
pub use losses::angular::AngularPenaltySMLoss;
pub use losses::combined::{Combined, CombinedOutput, Term};
pub use losses::{GradOpts, Loss, LossOutput, Recorder};
pub use tensor::{DType, Tensor};

/// The README's Rust examples, compiled and run as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
