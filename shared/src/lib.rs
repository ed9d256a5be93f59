//! chat-router's library: every rule of the product lives here, and the binaries
//! (one Lambda function per handler, and the local `chat-router`) stay thin.
//!
//! # Layout
//!
//! - [`aws`]: the AWS SDK's configuration, with the one HTTPS client every client shares.
//! - [`config`]: settings parsed once from the environment.
//! - [`store`]: the libsql database (local file or remote server) and its migrations.
//! - [`tenants`]: businesses, departments, agents, and their credentials.
//! - [`credentials`]: generating and hashing webhook keys and agent tokens.
//! - [`conversations`]: reading conversations and messages.
//! - [`ingest`]: the transaction that stores a customer's message.
//! - [`queue`]: handing stored jobs on to be processed: SQS FIFO or in-process.
//! - [`routing`]: classifying, routing and assigning conversations; the sweeper.
//! - [`events`]: what agents are told as conversations move.
//! - [`realtime`]: agents' WebSocket connections, their actions, live delivery.
//! - [`classify`]: which department a message goes to: classifiers and their fallback chain.
//! - [`callback`]: signing replies for businesses' systems, and where they may be sent.
//! - [`webhook`]: the HTTP API handler shared by Lambda and the local gateway.
//! - [`error`]: the HTTP error contract.
//! - [`timestamp`]: dates in Prisma's storage format.
//! - [`telemetry`]: logging setup.

pub mod aws;
pub mod callback;
pub mod classify;
pub mod config;
pub mod conversations;
pub mod credentials;
pub mod error;
pub mod events;
pub mod ingest;
pub mod queue;
pub mod realtime;
pub mod routing;
pub mod store;
pub mod telemetry;
pub mod tenants;
pub mod timestamp;
pub mod webhook;

/// A new id: a lowercase hyphenated UUID v4, as Prisma's `uuid()` default makes.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
