//! Handing stored jobs to whatever processes them.
//!
//! The job is already in the database when it is handed on, so a failed hand-off
//! loses nothing: jobs left pending are swept and handed on again.

use async_trait::async_trait;

use crate::ingest::Job;

/// Why a job could not be handed on.
#[derive(Debug, thiserror::Error)]
#[error("enqueueing a job: {0}")]
pub struct QueueError(pub String);

/// Takes jobs after their transaction commits.
#[async_trait]
pub trait JobQueue: Send + Sync {
    /// Hands one job on.
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError>;
}

/// Keeps jobs in the database's outbox only, where they stay `pending` for a consumer
/// that reads the outbox. Used where no queue is configured.
#[derive(Debug, Default, Clone, Copy)]
pub struct OutboxOnly;

#[async_trait]
impl JobQueue for OutboxOnly {
    async fn enqueue(&self, _job: &Job) -> Result<(), QueueError> {
        Ok(())
    }
}
