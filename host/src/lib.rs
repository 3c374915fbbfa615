//! approval-host: classifies the actions AI agents ask to take, with built-in triggers and the
//! vendor's own WebAssembly plugins, and routes the risky ones to a human.
//!
//! See ARCHITECTURE.md for the map of this crate.

pub mod access;
pub mod approvals;
pub mod audit;
pub mod canonical;
pub mod clock;
pub mod config;
pub mod files;
pub mod http;
pub mod plugin;
pub mod policy;
pub mod push;
pub mod risk;
pub mod server;
pub mod store;
pub mod text;
pub mod token;
