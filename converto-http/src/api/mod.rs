//! The `/v1` handlers.

pub mod conversions;
pub mod system;
pub mod upload;
pub mod views;
pub mod webhooks;
