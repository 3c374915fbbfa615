//! Vendor risk plugins: WebAssembly components implementing `wit/risk-classifier.wit`, run in a
//! sandbox that hostile code cannot escape, hang, exhaust or crash.
//!
//! - [`runtime`]: the wasmtime engine, per-version compiled components, per-call sandboxes;
//! - [`registry`]: uploads, immutable versions and their states (inactive, shadow, active);
//! - [`contract`]: the rules a description and a verdict must follow;
//! - [`breaker`]: pauses a plugin version whose calls keep running out of time or fuel;
//! - [`sandbox`], [`cache`], [`wit`]: the WASI sandbox, the compiled-artifact cache, the bindings.

pub mod breaker;
mod cache;
pub mod contract;
mod error;
mod limits;
pub mod registry;
mod runtime;
mod sandbox;
mod wit;

pub use breaker::BreakerConfig;
pub use error::{Fault, PluginError, UploadError};
pub use limits::PluginLimits;
pub use runtime::{
    CallReport, CompiledPlugin, LoadedPlugin, PluginIdentity, PluginRuntime, ReusedInstance,
    RuntimeConfig, RuntimeError,
};
