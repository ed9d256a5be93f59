//! Callbacks: how agents' replies reach a business's own systems.
//!
//! - [`endpoint`]: a business's callback URL, signing secret and events, and the
//!   check of a URL when it is configured.
//! - [`deliver`]: deliveries recorded in the outbox with the reply or change they
//!   report, and sent, signed, retried and in order per conversation.
//! - [`signature`]: the `X-Chat-Router-Signature` header, and its check on the
//!   receiving side.
//! - [`address`]: which callback URLs and addresses are allowed, and the HTTP client
//!   that enforces it when connecting.
//! - [`secret`]: businesses' signing secrets and their encryption at rest.
//!
//! What a receiver has to do is written up in `docs/callbacks.md`.

pub mod address;
pub mod deliver;
pub mod endpoint;
pub mod secret;
pub mod signature;

pub use signature::{DELIVERY_HEADER, SIGNATURE_HEADER};
