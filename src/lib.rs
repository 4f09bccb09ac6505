#![doc = include_str!("../README.md")]

pub use converto_core as core;
pub use converto_core::*;

/// Backends and converters, each behind the cargo feature of the same name.
pub use converto_adapters as adapters;
