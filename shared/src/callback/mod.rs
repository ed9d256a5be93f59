//! Callbacks: how agents' replies reach a business's own systems.
//!
//! This module holds the parts every delivery relies on, independent of how
//! deliveries are queued:
//!
//! - [`signature`]: the `X-Chat-Router-Signature` header, and its check on the
//!   receiving side.
//! - [`address`]: which callback URLs and addresses are allowed, and the HTTP client
//!   that enforces it when connecting.
//! - [`secret`]: businesses' signing secrets and their encryption at rest.
//!
//! What a receiver has to do is written up in `docs/callbacks.md`.

pub mod address;
pub mod secret;
pub mod signature;

pub use signature::{DELIVERY_HEADER, SIGNATURE_HEADER};
