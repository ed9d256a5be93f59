//! Storing a customer's message: the webhook's one transaction.
//!
//! The idempotency record goes in first, so of two simultaneous requests with one
//! key the database lets exactly one through and the other replays its answer. The
//! conversation (found or created), the message with its sequence number and the
//! routing job follow in the same transaction: either all of it is stored or none.
//!
//! On a local file, messages that arrive while the writer is busy are committed
//! together (group commit): one transaction holds many messages, each inside its own
//! savepoint, so one message's failure undoes only that message. Batching spreads the
//! cost of a commit over many messages, and a writer task of its own runs the batches,
//! so a batch completes even if a request that queued a message is dropped. Routing
//! marks its finished jobs done through the same batches ([`finish_job`]).

use tokio::sync::oneshot;

use crate::store::{Context, LocalConn, Sql, Store, StoreError, begin, finish, text};
use crate::timestamp;

/// A validated message to store.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// The authenticated business.
    pub business_id: String,
    /// The customer's text.
    pub content: String,
    /// Threads messages: a customer's messages join their conversation that is not closed.
    pub customer_id: Option<String>,
    /// Shown to agents.
    pub customer_name: Option<String>,
    /// Where the message came from (web, sms, ...), as the business names it.
    pub channel: Option<String>,
    /// The `Idempotency-Key` header and a hash of the request it came with.
    pub idempotency: Option<Idempotency>,
}

/// An idempotency key and the request it belongs to.
#[derive(Debug, Clone)]
pub struct Idempotency {
    /// As the client sent it.
    pub key: String,
    /// SHA-256 of the normalised request.
    pub request_hash: [u8; 32],
}

/// A job, as handed to the queue: ids only, never the customer's text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    /// Unique and increasing in order of creation; also the queue's deduplication id.
    pub id: i64,
    /// What the job does. Queue messages from before deliveries existed have none and
    /// are routing jobs.
    #[serde(default)]
    pub kind: JobKind,
    /// The business.
    pub business_id: String,
    /// The conversation; the queue's ordering group comes from it ([`Job::group`]).
    pub conversation_id: String,
    /// The message the job is about.
    pub message_id: String,
}

/// What a job does; stored in the `Job` table's `kind` column.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobKind {
    /// Route a stored message and tell agents about it.
    #[default]
    Message,
    /// Send a callback to the business (see [`crate::callback::deliver`]).
    Delivery,
}

impl JobKind {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Message => "message",
            JobKind::Delivery => "delivery",
        }
    }

    /// Reads a stored name.
    pub fn parse(text: &str) -> Option<JobKind> {
        match text {
            "message" => Some(JobKind::Message),
            "delivery" => Some(JobKind::Delivery),
            _ => None,
        }
    }
}

impl Job {
    /// The queue's ordering group. Routing jobs are grouped by conversation; a
    /// conversation's deliveries form a lane of their own, so a business's receiver
    /// that is down holds back its deliveries and never the routing of new messages.
    pub fn group(&self) -> String {
        match self.kind {
            JobKind::Message => self.conversation_id.clone(),
            JobKind::Delivery => format!("{}:deliver", self.conversation_id),
        }
    }
}

/// Where a stored message went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The conversation it joined or started.
    pub conversation_id: String,
    /// The stored message.
    pub message_id: String,
}

/// What [`ingest`] did.
#[derive(Debug)]
pub enum Outcome {
    /// Stored now; the job is to be handed to the queue.
    Stored {
        /// Ids for the answer.
        receipt: Receipt,
        /// The job stored with the message.
        job: Job,
        /// Whether this message started a conversation.
        new_conversation: bool,
    },
    /// The same key and request were seen before; nothing was stored.
    Replayed(Receipt),
    /// The same key came with a different request; nothing was stored.
    Conflict,
}

const INSERT_IDEMPOTENCY: &str = r#"INSERT INTO "IdempotencyRecord" ("businessId", "key", "requestHash", "messageId", "createdAt")
    VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING"#;
const READ_IDEMPOTENCY: &str = r#"SELECT "requestHash", "conversationId", "messageId" FROM "IdempotencyRecord"
    WHERE "businessId" = ?1 AND "key" = ?2"#;
const COMPLETE_IDEMPOTENCY: &str = r#"UPDATE "IdempotencyRecord" SET "conversationId" = ?3
    WHERE "businessId" = ?1 AND "key" = ?2"#;
const FIND_CONVERSATION: &str = r#"SELECT "id" FROM "Conversation"
    WHERE "businessId" = ?1 AND "customerId" = ?2 AND "status" <> 'closed'"#;
const INSERT_CONVERSATION: &str = r#"INSERT INTO "Conversation" ("id", "businessId", "department", "status", "createdAt", "customerId", "customerName", "channel", "updatedAt")
    VALUES (?1, ?2, '', 'pending', ?3, ?4, ?5, ?6, ?3)"#;
const NEXT_SEQUENCE: &str = r#"UPDATE "Conversation" SET "lastSequence" = "lastSequence" + 1, "updatedAt" = ?2
    WHERE "id" = ?1 RETURNING "lastSequence""#;
const INSERT_MESSAGE: &str = r#"INSERT INTO "Message" ("id", "conversationId", "sender", "content", "createdAt", "sequence")
    VALUES (?1, ?2, 'customer', ?3, ?4, ?5)"#;
const INSERT_JOB: &str = r#"INSERT INTO "Job" ("kind", "businessId", "conversationId", "messageId", "createdAt", "updatedAt", "enqueuedAt")
    VALUES ('message', ?1, ?2, ?3, ?4, ?4, ?5) RETURNING "id""#;

/// A message waiting for the local writer.
pub(crate) struct Pending {
    message: NewMessage,
    reply: oneshot::Sender<Result<Outcome, StoreError>>,
}

/// Work for the local writer task.
pub(crate) enum Write {
    /// A customer's message to store.
    Message(Pending),
    /// A job to mark done; the answer comes once that is committed.
    JobDone {
        id: i64,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
}

const FINISH_JOB: &str = r#"UPDATE "Job" SET "status" = 'done', "lastError" = NULL, "updatedAt" = ?2
    WHERE "id" = ?1 AND "status" = 'pending'"#;

/// Marks a job done (unless it was finished meanwhile). On a local file this joins the
/// writer's next batch, so finishing a job costs no commit of its own.
pub async fn finish_job(store: &Store, job_id: i64) -> Result<(), StoreError> {
    let Some(local) = store.local() else {
        let conn = store.writer().await?;
        conn.execute(FINISH_JOB, libsql::params![job_id, timestamp::now()])
            .await
            .context("finishing a job")?;
        return Ok(());
    };
    let (reply, answer) = oneshot::channel();
    local
        .ingest
        .send(Write::JobDone { id: job_id, reply })
        .map_err(|_| StoreError::Batch("the writer task stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Batch("the writer task stopped".into()))?
}

/// Stores a message, its conversation when new, its job and its idempotency record in
/// one transaction.
pub async fn ingest(store: &Store, message: &NewMessage) -> Result<Outcome, StoreError> {
    let Some(local) = store.local() else {
        // A remote server: one transaction of our own.
        let conn = store.writer().await?;
        let tx = begin(&conn, "starting to store a message").await?;
        let result = store_message(&Sql::new(&tx, None), message).await;
        return finish(tx, result).await;
    };

    let (reply, answer) = oneshot::channel();
    let pending = Pending {
        message: message.clone(),
        reply,
    };
    local
        .ingest
        .send(Write::Message(pending))
        .map_err(|_| StoreError::Batch("the writer task stopped".into()))?;
    answer
        .await
        .map_err(|_| StoreError::Batch("the writer task stopped".into()))?
}

/// Most messages and finished jobs committed in one transaction.
const MAX_BATCH: usize = 256;

/// The local writer task: takes whatever work has queued up, commits it in one
/// transaction, answers each, and repeats until the store is dropped. The writer
/// connection is locked per batch, so admin commands and the checkpointer interleave.
pub(crate) async fn run_writer(
    writer: std::sync::Arc<tokio::sync::Mutex<LocalConn>>,
    mut queue: tokio::sync::mpsc::UnboundedReceiver<Write>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let writer = writer.lock().await;
        // Take what arrived while waiting for the lock too.
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        commit_batch(&writer, std::mem::take(&mut batch)).await;
        writer.statements.reset_all();
    }
}

/// Commits a batch in one transaction, each message in its own savepoint, then the
/// finished jobs.
async fn commit_batch(writer: &LocalConn, batch: Vec<Write>) {
    let sql = Sql::new(&writer.conn, Some(&writer.statements));
    let mut messages = Vec::with_capacity(batch.len());
    let mut done: Vec<Done> = Vec::new();
    for write in batch {
        match write {
            Write::Message(pending) => messages.push(pending),
            Write::JobDone { id, reply } => done.push((id, reply)),
        }
    }
    let size = messages.len() + done.len();
    if let Err(err) = sql.execute("BEGIN IMMEDIATE", ()).await {
        fail_all(messages, done, "starting a batch", &err);
        return;
    }
    let mut results = Vec::with_capacity(messages.len());
    for pending in &messages {
        results.push(in_savepoint(&sql, &pending.message).await);
    }
    let now = timestamp::now();
    let mut finished = Vec::with_capacity(done.len());
    for (id, _) in &done {
        let result = sql
            .execute(FINISH_JOB, libsql::params![*id, now.as_str()])
            .await;
        finished.push(result.map(|_| ()).context("finishing a job"));
    }
    if let Err(err) = sql.execute("COMMIT", ()).await {
        let _ = sql.execute("ROLLBACK", ()).await;
        fail_all(messages, done, "committing a batch", &err);
        return;
    }
    tracing::trace!(size, "committed a batch");
    for (pending, result) in messages.into_iter().zip(results) {
        // The caller may have gone; the message is stored either way.
        let _ = pending.reply.send(result);
    }
    for ((_, reply), result) in done.into_iter().zip(finished) {
        let _ = reply.send(result);
    }
}

async fn in_savepoint(sql: &Sql<'_>, message: &NewMessage) -> Result<Outcome, StoreError> {
    sql.execute("SAVEPOINT message", ())
        .await
        .context("starting a savepoint")?;
    let result = store_message(sql, message).await;
    if result.is_err() {
        sql.execute("ROLLBACK TO message", ())
            .await
            .context("undoing a message")?;
    }
    sql.execute("RELEASE message", ())
        .await
        .context("ending a savepoint")?;
    result
}

/// A job waiting to be marked done, and who waits for it.
type Done = (i64, oneshot::Sender<Result<(), StoreError>>);

fn fail_all(messages: Vec<Pending>, done: Vec<Done>, doing: &'static str, err: &libsql::Error) {
    tracing::error!(size = messages.len() + done.len(), cause = %err, doing, "batch failed");
    let failure = || StoreError::Batch(format!("{doing}: {err}"));
    for pending in messages {
        let _ = pending.reply.send(Err(failure()));
    }
    for (_, reply) in done {
        let _ = reply.send(Err(failure()));
    }
}

async fn store_message(tx: &Sql<'_>, message: &NewMessage) -> Result<Outcome, StoreError> {
    let business_id = message.business_id.as_str();
    let message_id = crate::new_id();
    let now = timestamp::now();
    let (message_id, now) = (message_id.as_str(), now.as_str());

    // The record goes first: under the write lock, the second of two requests with
    // one key finds it and replays.
    if let Some(idempotency) = &message.idempotency {
        let inserted = tx
            .execute(
                INSERT_IDEMPOTENCY,
                libsql::params![
                    business_id,
                    idempotency.key.as_str(),
                    idempotency.request_hash.to_vec(),
                    message_id,
                    now
                ],
            )
            .await
            .context("recording an idempotency key")?;
        if inserted == 0 {
            return replay(tx, business_id, idempotency).await;
        }
    }

    // Join the customer's conversation that is not closed, or start one.
    let existing = match &message.customer_id {
        Some(customer) => {
            let mut rows = tx
                .query(
                    FIND_CONVERSATION,
                    libsql::params![business_id, customer.as_str()],
                )
                .await
                .context("finding the customer's conversation")?;
            match rows
                .next()
                .await
                .context("finding the customer's conversation")?
            {
                Some(row) => Some(text(&row, 0)?),
                None => None,
            }
        }
        None => None,
    };
    let new_conversation = existing.is_none();
    let conversation_id = match existing {
        Some(id) => id,
        None => {
            let id = crate::new_id();
            tx.execute(
                INSERT_CONVERSATION,
                libsql::params![
                    id.as_str(),
                    business_id,
                    now,
                    message.customer_id.as_deref(),
                    message.customer_name.as_deref(),
                    message.channel.as_deref()
                ],
            )
            .await
            .context("creating a conversation")?;
            id
        }
    };

    // The next sequence number orders the conversation's messages.
    let mut rows = tx
        .query(
            NEXT_SEQUENCE,
            libsql::params![conversation_id.as_str(), now],
        )
        .await
        .context("numbering a message")?;
    let sequence: i64 = match rows.next().await.context("numbering a message")? {
        Some(row) => row.get(0).context("numbering a message")?,
        None => return Err(StoreError::Corrupt("conversation vanished".into())),
    };
    drop(rows);

    tx.execute(
        INSERT_MESSAGE,
        libsql::params![
            message_id,
            conversation_id.as_str(),
            message.content.as_str(),
            now,
            sequence
        ],
    )
    .await
    .context("storing a message")?;

    let mut rows = tx
        .query(
            INSERT_JOB,
            libsql::params![
                business_id,
                conversation_id.as_str(),
                message_id,
                now,
                timestamp::now_millis()
            ],
        )
        .await
        .context("storing a job")?;
    let job_id: i64 = match rows.next().await.context("storing a job")? {
        Some(row) => row.get(0).context("storing a job")?,
        None => return Err(StoreError::Corrupt("job insert returned nothing".into())),
    };
    drop(rows);

    if let Some(idempotency) = &message.idempotency {
        tx.execute(
            COMPLETE_IDEMPOTENCY,
            libsql::params![
                business_id,
                idempotency.key.as_str(),
                conversation_id.as_str()
            ],
        )
        .await
        .context("completing an idempotency record")?;
    }

    Ok(Outcome::Stored {
        receipt: Receipt {
            conversation_id: conversation_id.clone(),
            message_id: message_id.to_owned(),
        },
        job: Job {
            id: job_id,
            kind: JobKind::Message,
            business_id: business_id.to_owned(),
            conversation_id,
            message_id: message_id.to_owned(),
        },
        new_conversation,
    })
}

async fn replay(
    tx: &Sql<'_>,
    business_id: &str,
    idempotency: &Idempotency,
) -> Result<Outcome, StoreError> {
    let mut rows = tx
        .query(
            READ_IDEMPOTENCY,
            libsql::params![business_id, idempotency.key.as_str()],
        )
        .await
        .context("reading an idempotency record")?;
    let row = rows
        .next()
        .await
        .context("reading an idempotency record")?
        .ok_or_else(|| StoreError::Corrupt("idempotency record vanished".into()))?;
    let stored: Vec<u8> = row.get(0).context("reading an idempotency record")?;
    if !crate::credentials::hashes_match(&stored, &idempotency.request_hash) {
        return Ok(Outcome::Conflict);
    }
    let conversation_id: Option<String> = row.get(1).context("reading an idempotency record")?;
    let conversation_id = conversation_id
        .ok_or_else(|| StoreError::Corrupt("idempotency record without conversation".into()))?;
    Ok(Outcome::Replayed(Receipt {
        conversation_id,
        message_id: text(&row, 2)?,
    }))
}
