//! The pure-Rust part of deepml that reads `deepml-cases/1` files, compiled on its own.
#![allow(dead_code)]
#[path = "../../src/cases.rs"]
pub mod cases;
#[path = "../../src/config.rs"]
pub mod config;
#[path = "../../src/error.rs"]
pub mod error;
#[path = "../../src/reference/mod.rs"]
pub mod reference;
