//! Handing stored jobs to whatever processes them: SQS FIFO on AWS ([`sqs`]), an
//! in-process queue locally ([`local`]), both with ordering groups from
//! [`Job::group`]: one per conversation for routing, one more per conversation for
//! its deliveries.
//!
//! The job is already in the database when it is handed on, so a failed hand-off
//! loses nothing: jobs left pending are swept and handed on again.

pub mod local;
pub mod sqs;

use async_trait::async_trait;

use crate::ingest::Job;
use crate::store::{Context, Sql, Store, StoreError, text};

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

/// Why a job was not done. The job stays pending and is handed over again.
#[derive(Debug, thiserror::Error)]
#[error("{cause}")]
pub struct JobError {
    /// What went wrong, with its cause chain.
    pub cause: String,
    /// When the handler knows how long to wait before the next attempt (a receiver's
    /// `Retry-After`, a delivery's backoff). The local queue waits that long; SQS
    /// brings the message back after its visibility timeout whatever this says.
    pub retry_after: Option<std::time::Duration>,
}

impl JobError {
    /// An error after which the queue picks the delay.
    pub fn new(cause: impl Into<String>) -> JobError {
        JobError {
            cause: cause.into(),
            retry_after: None,
        }
    }
}

/// Does the work a job stands for. Handling must be idempotent: a queue may hand the
/// same job over more than once.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// Handles one job. `Ok` means it is finished (done, or given up as failed) and
    /// must not be handed over again; `Err` asks for another attempt later.
    async fn handle(&self, job: &Job) -> Result<(), JobError>;
}

/// A queued job as the outbox holds it.
#[derive(Debug)]
pub(crate) enum Outbox {
    /// Pending: its conversation's pending jobs of its kind up to and including it,
    /// oldest first, at most [`PENDING_AT_ONCE`] of them.
    Pending(Vec<Job>),
    /// Stored and finished (done or failed): a duplicate hand-over.
    Finished,
    /// Not stored at all.
    Unknown,
    /// Stored with other ids than the queued job's.
    Mismatch,
}

/// Most pending jobs [`look_up`] returns.
pub(crate) const PENDING_AT_ONCE: i64 = 100;

/// Finds a queued job in the outbox, with the earlier pending jobs of its kind in its
/// conversation, which must run first for the conversation's order to hold. Reads on
/// the writer: its page cache is current, while a reader's is emptied by every write.
pub(crate) async fn look_up(store: &Store, job: &Job) -> Result<Outbox, StoreError> {
    let conn = store.writer().await?;
    let mut rows = conn
        .sql()
        .query(
            r#"SELECT "id", "businessId", "messageId" FROM "Job"
               WHERE "conversationId" = ?1 AND "kind" = ?2 AND "status" = 'pending' AND "id" <= ?3
               ORDER BY "id" LIMIT ?4"#,
            libsql::params![
                job.conversation_id.as_str(),
                job.kind.as_str(),
                job.id,
                PENDING_AT_ONCE
            ],
        )
        .await
        .context("reading pending jobs")?;
    let mut pending = Vec::new();
    while let Some(row) = rows.next().await.context("reading pending jobs")? {
        let found = Job {
            id: row.get(0).context("reading pending jobs")?,
            kind: job.kind,
            business_id: text(&row, 1)?,
            conversation_id: job.conversation_id.clone(),
            message_id: text(&row, 2)?,
        };
        if found.business_id != job.business_id
            || (found.id == job.id && found.message_id != job.message_id)
        {
            return Ok(Outbox::Mismatch);
        }
        pending.push(found);
    }
    drop(rows);
    if !pending.is_empty() {
        return Ok(Outbox::Pending(pending));
    }

    let mut rows = conn
        .sql()
        .query(
            r#"SELECT "businessId", "conversationId", "messageId", "kind" FROM "Job" WHERE "id" = ?1"#,
            libsql::params![job.id],
        )
        .await
        .context("reading a job")?;
    let Some(row) = rows.next().await.context("reading a job")? else {
        return Ok(Outbox::Unknown);
    };
    if text(&row, 0)? != job.business_id
        || text(&row, 1)? != job.conversation_id
        || text(&row, 2)? != job.message_id
        || text(&row, 3)? != job.kind.as_str()
    {
        return Ok(Outbox::Mismatch);
    }
    tracing::debug!(
        job = job.id,
        kind = job.kind.as_str(),
        "job already finished"
    );
    Ok(Outbox::Finished)
}

/// Counts an attempt at a pending job of its kind, in the caller's transaction, before
/// the work starts; returns the attempts so far, or `None` when the job is no longer
/// pending.
pub(crate) async fn count_attempt(sql: Sql<'_>, job: &Job) -> Result<Option<i64>, StoreError> {
    let mut rows = sql
        .query(
            r#"UPDATE "Job" SET "attempts" = "attempts" + 1, "updatedAt" = ?2
               WHERE "id" = ?1 AND "status" = 'pending' AND "kind" = ?3 RETURNING "attempts""#,
            libsql::params![job.id, crate::timestamp::now(), job.kind.as_str()],
        )
        .await
        .context("counting an attempt")?;
    let attempts = match rows.next().await.context("counting an attempt")? {
        Some(row) => Some(row.get::<i64>(0).context("counting an attempt")?),
        None => None,
    };
    // Stepping to the end finishes the statement before the next one.
    while rows.next().await.context("counting an attempt")?.is_some() {}
    Ok(attempts)
}

/// Marks a pending job failed for good with its last error, on `conn` (a transaction's
/// where the caller is in one); false when it was no longer pending.
pub(crate) async fn fail_job(
    conn: &libsql::Connection,
    job_id: i64,
    error: &str,
) -> Result<bool, StoreError> {
    let changed = conn
        .execute(
            r#"UPDATE "Job" SET "status" = 'failed', "lastError" = ?2, "updatedAt" = ?3
               WHERE "id" = ?1 AND "status" = 'pending'"#,
            libsql::params![job_id, error, crate::timestamp::now()],
        )
        .await
        .context("failing a job")?;
    Ok(changed > 0)
}

#[cfg(test)]
mod tests {
    use crate::ingest::{Job, JobKind};

    #[test]
    fn a_queued_job_without_a_kind_is_a_routing_job_and_deliveries_have_their_own_group() {
        let old: Job = serde_json::from_str(
            r#"{"id": 7, "businessId": "b", "conversationId": "c", "messageId": "m"}"#,
        )
        .unwrap();
        assert_eq!(old.kind, JobKind::Message);
        assert_eq!(old.group(), "c");

        let delivery = Job {
            kind: JobKind::Delivery,
            ..old
        };
        assert_eq!(delivery.group(), "c:deliver");
        let text = serde_json::to_string(&delivery).unwrap();
        assert!(text.contains(r#""kind":"delivery""#), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), delivery);
    }
}
