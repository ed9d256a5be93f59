//! Routing: turning stored messages into routed, assigned conversations.
//!
//! A [`Router`] handles the jobs the webhook stores. A job whose conversation has no
//! department yet classifies the message with the [`Chain`], stores the result (status
//! `open`) and assigns the conversation if an agent of that department is available
//! (status `in_progress`); a job of a routed conversation delivers its message to the
//! conversation's audience. Either way the job is marked done only after its events
//! were published, so a message reaches agents at least once.
//!
//! # Assignment
//!
//! An agent is available while they hold an unexpired presence lease (the real-time
//! gateway grants and renews it while the agent's socket is live and they have said
//! they are ready). Among a department's available agents below their capacity, the
//! one with the fewest conversations `in_progress` gets the next conversation; ties go
//! to the agent idle longest, that is whose last assignment (or, failing one, whose
//! lease began) is oldest. With nobody available a conversation stays `open` in its
//! department's queue, and whenever an agent becomes available, closes a conversation
//! or loses one to a transfer, the department's oldest waiting conversations go out
//! first. Every change runs in one `BEGIN IMMEDIATE` transaction, so concurrent jobs
//! and agents never push an agent past capacity or give a conversation two agents;
//! triggers in the schema refuse both as well.
//!
//! # Reliability
//!
//! Each attempt at a job is counted in the database before the work starts. A job
//! runs only after the earlier pending jobs of its conversation (it runs them first if
//! they were lost), so a conversation's messages reach agents in order. A job that
//! fails is retried by its queue; at the attempt limit it is marked `failed` with its
//! last error, and a conversation it left unrouted goes to the business's fallback
//! department. [`Router::sweep`] hands over jobs left pending (a crash or a failed
//! hand-off after the webhook committed) and gives up those past the limit, including
//! the ones SQS moved to its dead-letter queue.

mod agents;
mod assign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_lambda_events::event::eventbridge::EventBridgeEvent;

pub use agents::{AgentRef, Reply, end_availability, renew_availability};
pub use assign::Assignment;
pub(crate) use assign::{VIEW as VIEW_COLUMNS, view as read_view};
use assign::{drain, returning_view, view_columns};

use crate::callback::deliver;
use crate::callback::endpoint::DeliveryEvent;
use crate::classify::{BusinessProfile, Chain, Classification, ClassifierKind};
use crate::error::chain;
use crate::events::{Audience, ConversationView, Event, Frame, MessageView, Notifier, NotifyError};
use crate::ingest::{Job, JobKind};
use crate::queue::{JobError, JobHandler, JobQueue, Outbox};
use crate::store::{Context, Sql, Store, StoreError, begin, finish, text};
use crate::timestamp;

/// Attempts at a job before it is marked failed; matches the routing queue's
/// `maxReceiveCount` in the SAM template.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// How long a business's departments are cached; changes reach routing within it.
const PROFILE_TTL: Duration = Duration::from_secs(30);

/// Most pending jobs handed over per sweeper query.
const SWEEP_CHUNK: i64 = 500;

/// Why routing could not do something.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Events could not be delivered.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// A queued job has no row: it was never stored, or the message is not ours.
    #[error("job {0} is not in the database")]
    UnknownJob(i64),
    /// A queued job's ids differ from its row.
    #[error("job {0} does not match the stored job")]
    JobMismatch(i64),
    /// The business has no departments to route to.
    #[error("business {0} has no departments")]
    NoDepartments(String),
    /// No such conversation in this business.
    #[error("no such conversation")]
    UnknownConversation,
    /// No such department in this business.
    #[error("no such department: {0}")]
    UnknownDepartment(String),
    /// A transfer to where the conversation already is.
    #[error("the conversation is already in department {0}")]
    SameDepartment(String),
    /// The conversation is closed and cannot change.
    #[error("the conversation is closed")]
    Closed,
    /// No such agent.
    #[error("no such agent")]
    UnknownAgent,
    /// The conversation is in another department and not the agent's.
    #[error("the conversation belongs to another department")]
    Forbidden,
    /// The conversation is assigned to another agent.
    #[error("the conversation is assigned to another agent")]
    NotAssigned,
    /// The agent has as many conversations as their capacity allows.
    #[error("the agent is at capacity")]
    OverCapacity,
    /// The conversation is still being routed.
    #[error("the conversation is still being routed")]
    NotRouted,
}

/// Why a router could not be built.
#[derive(Debug, thiserror::Error)]
pub enum RouteSetupError {
    /// A setting is wrong.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The classifier chain could not start.
    #[error(transparent)]
    Classifier(#[from] crate::classify::ClassifyError),
    /// A required setting is missing.
    #[error("{0} must be set")]
    Missing(&'static str),
}

/// What a sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepReport {
    /// Jobs handed to the queue again.
    pub requeued: u64,
    /// Jobs past the attempt limit, now marked failed.
    pub failed: u64,
    /// Jobs the queue refused this time; they stay pending for the next sweep.
    pub refused: u64,
}

/// Routes conversations and assigns them to agents. One per process, shared.
pub struct Router {
    store: Arc<Store>,
    chain: Arc<Chain>,
    notifier: Arc<dyn Notifier>,
    max_attempts: i64,
    profiles: Mutex<HashMap<String, (Instant, Arc<BusinessProfile>)>>,
    /// Where deliveries go after their transaction commits; unset, they wait in the
    /// outbox for the sweeper.
    deliveries: OnceLock<Arc<dyn JobQueue>>,
}

impl Router {
    /// A router that classifies with `chain`, tells agents through `notifier`, and
    /// gives a job up after `max_attempts` attempts.
    pub fn new(
        store: Arc<Store>,
        chain: Arc<Chain>,
        notifier: Arc<dyn Notifier>,
        max_attempts: u32,
    ) -> Router {
        Router {
            store,
            chain,
            notifier,
            max_attempts: i64::from(max_attempts.max(1)),
            profiles: Mutex::new(HashMap::new()),
            deliveries: OnceLock::new(),
        }
    }

    /// Hands the deliveries that replies, closes and transfers record to `queue` from
    /// now on. Set once; later calls change nothing. Without it deliveries are stored
    /// ready for the next sweep, which hands them over.
    pub fn deliver_through(&self, queue: Arc<dyn JobQueue>) {
        let _ = self.deliveries.set(queue);
    }

    /// The hand-off time to store with a new delivery: now when a queue takes it
    /// after the commit, else 0 so the next sweep hands it over at once.
    pub(crate) fn delivery_enqueued_at(&self) -> i64 {
        if self.deliveries.get().is_some() {
            timestamp::now_millis()
        } else {
            0
        }
    }

    /// Hands committed deliveries to the queue; one refused stays pending for the
    /// sweeper.
    pub(crate) async fn hand_over(&self, jobs: impl IntoIterator<Item = Job>) {
        let Some(queue) = self.deliveries.get() else {
            return;
        };
        for job in jobs {
            if let Err(err) = queue.enqueue(&job).await {
                tracing::warn!(job = job.id, cause = %chain(&err), "delivery left for the sweeper");
            }
        }
    }

    /// The router of a Lambda function: the standard classifier chain (the LLM when
    /// `LLM_BASE_URL` is set), the configured attempt limit, and events through
    /// `notifier` (see [`crate::realtime::notifier_from_env`]).
    pub fn from_env(
        store: Arc<Store>,
        config: &crate::config::Config,
        notifier: Arc<dyn Notifier>,
    ) -> Result<Router, RouteSetupError> {
        let chain = Chain::standard(crate::classify::llm::LlmConfig::from_env()?)?;
        Ok(Router::new(
            store,
            Arc::new(chain),
            notifier,
            config.max_attempts,
        ))
    }

    /// The store it routes in.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Handles one job, after any earlier pending jobs of its conversation. `Ok` means
    /// the job is finished (done, or failed for good); an `Err` asks for a retry.
    pub async fn process(&self, job: &Job) -> Result<(), RouteError> {
        if job.kind != JobKind::Message {
            // A delivery is the deliverer's (`callback::deliver::Jobs` dispatches).
            return Err(RouteError::JobMismatch(job.id));
        }
        match crate::queue::look_up(&self.store, job).await? {
            Outbox::Pending(pending) => {
                for earlier in &pending {
                    self.attempt(earlier).await?;
                }
                Ok(())
            }
            Outbox::Finished => Ok(()),
            Outbox::Unknown => Err(RouteError::UnknownJob(job.id)),
            Outbox::Mismatch => Err(RouteError::JobMismatch(job.id)),
        }
    }

    /// One counted attempt at one job.
    async fn attempt(&self, job: &Job) -> Result<(), RouteError> {
        let Some((attempts, found)) = self.start(job).await? else {
            // Finished by another delivery meanwhile.
            return Ok(());
        };
        if attempts > self.max_attempts {
            // Earlier attempts ended without recording a result (a crash, say).
            return self.give_up(job, "attempt limit reached").await;
        }
        let result = match found {
            Ok(found) => self.run(job, found).await,
            Err(err) => Err(err),
        };
        match result {
            Ok(()) => Ok(()),
            Err(err) if attempts >= self.max_attempts => {
                tracing::error!(job = job.id, attempts, cause = %chain(&err), "job failed for good");
                self.give_up(job, &chain(&err)).await
            }
            Err(err) => {
                let conn = self.store.writer().await?;
                conn.execute(
                    r#"UPDATE "Job" SET "lastError" = ?2 WHERE "id" = ?1"#,
                    libsql::params![job.id, chain(&err)],
                )
                .await
                .context("recording a job's error")?;
                Err(err)
            }
        }
    }

    /// Counts an attempt at a pending job and reads its conversation and message, in
    /// one transaction. `None` if the job is no longer pending. The attempt counts
    /// even when the read fails.
    async fn start(
        &self,
        job: &Job,
    ) -> Result<Option<(i64, Result<Loaded, RouteError>)>, RouteError> {
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting a job").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            let Some(attempts) = crate::queue::count_attempt(sql, job).await? else {
                return Ok(None);
            };
            Ok::<_, RouteError>(Some((attempts, load(sql, job).await)))
        }
        .await;
        finish(tx, result).await
    }

    async fn run(&self, job: &Job, found: Loaded) -> Result<(), RouteError> {
        let events = if found.routed {
            vec![message_event(&found)]
        } else {
            let profile = self.profile(&job.business_id).await?;
            let classification = self.chain.classify(&profile, &found.message.content).await;
            self.route(job, &found, &classification).await?
        };
        for event in &events {
            self.notifier.publish(event).await?;
        }
        crate::ingest::finish_job(&self.store, job.id).await?;
        Ok(())
    }

    /// Stores a classification and assigns; returns the events to publish.
    async fn route(
        &self,
        job: &Job,
        found: &Loaded,
        classification: &Classification,
    ) -> Result<Vec<Event>, RouteError> {
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to route a conversation").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            let routed =
                set_department(sql, &job.conversation_id, classification, now_ms, &now).await?;
            let Some(routed) = routed else {
                // Routed meanwhile (a transfer, another delivery): just deliver.
                return Ok(None);
            };
            let assigned = drain(
                sql,
                &job.business_id,
                &classification.department,
                now_ms,
                &now,
            )
            .await?;
            Ok::<_, RouteError>(Some((routed, assigned)))
        }
        .await;
        let Some((routed, assigned)) = finish(tx, result).await? else {
            let found = load(conn.sql(), job).await?;
            return Ok(vec![message_event(&found)]);
        };
        tracing::info!(
            business = %job.business_id,
            conversation = %job.conversation_id,
            department = %classification.department,
            classifier = classification.classifier.as_str(),
            confidence = classification.confidence,
            "routed conversation"
        );
        let mut events = vec![Event {
            audience: audience(&job.business_id, &routed.department, None),
            frame: Frame::Routed {
                conversation: routed.clone(),
            },
        }];
        let mut agent = None;
        for assignment in assigned {
            if assignment.conversation.id == job.conversation_id {
                agent = Some(assignment.agent_id.clone());
            }
            events.push(assigned_event(&job.business_id, assignment));
        }
        let mut message = found.clone();
        message.department = routed.department;
        message.assigned_agent_id = agent;
        events.push(message_event(&message));
        Ok(events)
    }

    /// Marks a job failed for good. A conversation it left unrouted goes to the
    /// business's fallback department, so it is never stranded.
    async fn give_up(&self, job: &Job, error: &str) -> Result<(), RouteError> {
        let fallback = match self.profile(&job.business_id).await {
            Ok(profile) => Some(Classification {
                department: profile.fallback_department.clone(),
                intent: None,
                confidence: 0.0,
                classifier: ClassifierKind::Fallback,
            }),
            Err(err) => {
                tracing::error!(business = %job.business_id, cause = %chain(&err), "no fallback department");
                None
            }
        };
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to fail a job").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            if !crate::queue::fail_job(&tx, job.id, error).await? {
                return Ok(None);
            }
            let Some(fallback) = &fallback else {
                return Ok(None);
            };
            let Some(routed) =
                set_department(sql, &job.conversation_id, fallback, now_ms, &now).await?
            else {
                return Ok(None);
            };
            let assigned = drain(sql, &job.business_id, &fallback.department, now_ms, &now).await?;
            Ok::<_, RouteError>(Some((routed, assigned)))
        }
        .await;
        let outcome = finish(tx, result).await?;
        drop(conn);
        tracing::error!(job = job.id, conversation = %job.conversation_id, "job marked failed");
        if let Some((routed, assigned)) = outcome {
            let mut events = vec![Event {
                audience: audience(&job.business_id, &routed.department, None),
                frame: Frame::Routed {
                    conversation: routed,
                },
            }];
            events.extend(
                assigned
                    .into_iter()
                    .map(|a| assigned_event(&job.business_id, a)),
            );
            self.publish_all(events).await;
        }
        Ok(())
    }

    /// Publishes events whose state is already stored; a failure is logged, since
    /// agents read the same state when they sync.
    async fn publish_all(&self, events: Vec<Event>) {
        for event in events {
            if let Err(err) = self.notifier.publish(&event).await {
                tracing::warn!(kind = event.frame.kind(), cause = %chain(&err), "event not delivered");
            }
        }
    }

    /// The business's routing profile, cached for [`PROFILE_TTL`].
    async fn profile(&self, business_id: &str) -> Result<Arc<BusinessProfile>, RouteError> {
        if let Some((loaded, profile)) = self
            .profiles
            .lock()
            .expect("profile cache lock")
            .get(business_id)
            && loaded.elapsed() < PROFILE_TTL
        {
            return Ok(profile.clone());
        }
        let profile = crate::tenants::business_profile(&self.store, business_id)
            .await?
            .ok_or_else(|| RouteError::NoDepartments(business_id.to_owned()))?;
        let profile = Arc::new(profile);
        self.profiles
            .lock()
            .expect("profile cache lock")
            .insert(business_id.to_owned(), (Instant::now(), profile.clone()));
        Ok(profile)
    }

    /// Hands over jobs pending since before `older_than` ago, oldest first, and marks
    /// failed those past the attempt limit. Hand-over stops at the first refusal, so a
    /// queue that is down is not hammered; what is left waits for the next sweep.
    pub async fn sweep(
        &self,
        queue: &dyn JobQueue,
        older_than: Duration,
    ) -> Result<SweepReport, RouteError> {
        let started = timestamp::now_millis();
        let cutoff = started - older_than.as_millis() as i64;
        let mut report = SweepReport::default();
        let mut after = 0i64;
        loop {
            let stale = self.stale_jobs(cutoff, after).await?;
            let Some(last) = stale.last() else { break };
            after = last.0.id;
            for (job, attempts) in stale {
                // A delivery's own limit is enforced by its handler, which also tells
                // the agent; here it is only handed over.
                if job.kind == JobKind::Message && attempts >= self.max_attempts {
                    self.give_up(&job, "attempt limit reached; the job was swept")
                        .await?;
                    report.failed += 1;
                    continue;
                }
                if let Err(err) = queue.enqueue(&job).await {
                    tracing::warn!(job = job.id, cause = %chain(&err), "sweep could not hand a job over");
                    report.refused += 1;
                    return Ok(report);
                }
                let conn = self.store.writer().await?;
                conn.execute(
                    r#"UPDATE "Job" SET "enqueuedAt" = ?2 WHERE "id" = ?1 AND "status" = 'pending'"#,
                    libsql::params![job.id, timestamp::now_millis()],
                )
                .await
                .context("recording a hand-over")?;
                report.requeued += 1;
            }
        }
        if report != SweepReport::default() {
            tracing::info!(
                requeued = report.requeued,
                failed = report.failed,
                refused = report.refused,
                "swept pending jobs"
            );
        }
        Ok(report)
    }

    /// The sweeper function's handler: one [`Router::sweep`] per scheduled event.
    pub async fn sweep_on_schedule(
        &self,
        queue: &dyn JobQueue,
        older_than: Duration,
        event: &EventBridgeEvent,
    ) -> Result<SweepReport, RouteError> {
        tracing::debug!(
            event = event.id.as_deref().unwrap_or(""),
            source = %event.source,
            detail_type = %event.detail_type,
            "scheduled sweep"
        );
        self.sweep(queue, older_than).await
    }

    async fn stale_jobs(&self, cutoff: i64, after: i64) -> Result<Vec<(Job, i64)>, RouteError> {
        let conn = self.store.reader().await?;
        let mut rows = conn
            .query(
                r#"SELECT "id", "businessId", "conversationId", "messageId", "attempts", "kind" FROM "Job"
                   WHERE "status" = 'pending' AND "id" > ?2 AND "enqueuedAt" <= ?1
                   ORDER BY "id" LIMIT ?3"#,
                libsql::params![cutoff, after, SWEEP_CHUNK],
            )
            .await
            .context("finding pending jobs")?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().await.context("finding pending jobs")? {
            let kind = text(&row, 5)?;
            out.push((
                Job {
                    id: row.get(0).context("finding pending jobs")?,
                    kind: JobKind::parse(&kind)
                        .ok_or_else(|| StoreError::Corrupt(format!("job kind {kind:?}")))?,
                    business_id: text(&row, 1)?,
                    conversation_id: text(&row, 2)?,
                    message_id: text(&row, 3)?,
                },
                row.get(4).context("finding pending jobs")?,
            ));
        }
        Ok(out)
    }

    /// Makes an agent available until `expires_at_ms` (milliseconds since the Unix
    /// epoch) and gives them waiting conversations of their department.
    pub async fn agent_available(
        &self,
        agent_id: &str,
        expires_at_ms: i64,
    ) -> Result<Vec<Assignment>, RouteError> {
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to make an agent available").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            let (business, department) = assign::agent(sql, agent_id)
                .await?
                .ok_or(RouteError::UnknownAgent)?;
            assign::set_presence(sql, agent_id, &business, expires_at_ms, now_ms).await?;
            let assigned = drain(sql, &business, &department, now_ms, &now).await?;
            Ok::<_, RouteError>((business, assigned))
        }
        .await;
        let (business, assigned) = finish(tx, result).await?;
        drop(conn);
        self.publish_all(
            assigned
                .iter()
                .cloned()
                .map(|a| assigned_event(&business, a))
                .collect(),
        )
        .await;
        Ok(assigned)
    }

    /// Ends an agent's availability; they keep the conversations they have.
    pub async fn agent_unavailable(&self, agent_id: &str) -> Result<(), RouteError> {
        Ok(end_availability(&self.store, agent_id).await?)
    }

    /// Closes a conversation of `business_id`; its agent's department's next waiting
    /// conversation goes to them.
    pub async fn close(
        &self,
        business_id: &str,
        conversation_id: &str,
    ) -> Result<ConversationView, RouteError> {
        self.close_by(business_id, conversation_id, None).await
    }

    /// [`Router::close`] on behalf of an agent, who must be allowed to work the
    /// conversation (see [`AgentRef`]).
    pub async fn close_as(
        &self,
        agent: &AgentRef,
        conversation_id: &str,
    ) -> Result<ConversationView, RouteError> {
        self.close_by(&agent.business_id, conversation_id, Some(agent))
            .await
    }

    async fn close_by(
        &self,
        business_id: &str,
        conversation_id: &str,
        actor: Option<&AgentRef>,
    ) -> Result<ConversationView, RouteError> {
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to close a conversation").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            if let Some(agent) = actor {
                agents::authorize(sql, agent, conversation_id).await?;
            }
            let Some(closed) = returning_view(
                sql,
                CLOSE,
                libsql::params![conversation_id, business_id, now.as_str()],
                "closing a conversation",
            )
            .await?
            else {
                return Err(missing_or_closed(sql, business_id, conversation_id).await);
            };
            let mut assigned = Vec::new();
            if let Some(agent) = &closed.assigned_agent_id
                && let Some((_, department)) = assign::agent(sql, agent).await?
            {
                assigned = drain(sql, business_id, &department, now_ms, &now).await?;
            }
            let delivery = deliver::record(
                sql,
                business_id,
                conversation_id,
                DeliveryEvent::Closed,
                None,
                serde_json::json!({ "status": "closed", "department": closed.department }),
                self.delivery_enqueued_at(),
            )
            .await?;
            Ok((closed, assigned, delivery))
        }
        .await;
        let (closed, assigned, delivery) = finish(tx, result).await?;
        drop(conn);
        self.hand_over(delivery).await;
        tracing::info!(business = %business_id, conversation = %conversation_id, "closed conversation");
        let mut events = vec![Event {
            audience: audience(
                business_id,
                &closed.department,
                closed.assigned_agent_id.as_deref(),
            ),
            frame: Frame::Closed {
                conversation: closed.clone(),
            },
        }];
        events.extend(assigned.into_iter().map(|a| assigned_event(business_id, a)));
        self.publish_all(events).await;
        Ok(closed)
    }

    /// Moves a conversation of `business_id` to another of its departments, where it
    /// waits in the queue or goes straight to an available agent. The agent who had it
    /// gets room for the next waiting conversation of their own department.
    pub async fn transfer(
        &self,
        business_id: &str,
        conversation_id: &str,
        department: &str,
    ) -> Result<ConversationView, RouteError> {
        self.transfer_by(business_id, conversation_id, department, None)
            .await
    }

    /// [`Router::transfer`] on behalf of an agent, who must be allowed to work the
    /// conversation (see [`AgentRef`]).
    pub async fn transfer_as(
        &self,
        agent: &AgentRef,
        conversation_id: &str,
        department: &str,
    ) -> Result<ConversationView, RouteError> {
        self.transfer_by(&agent.business_id, conversation_id, department, Some(agent))
            .await
    }

    async fn transfer_by(
        &self,
        business_id: &str,
        conversation_id: &str,
        department: &str,
        actor: Option<&AgentRef>,
    ) -> Result<ConversationView, RouteError> {
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting a transfer").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            if let Some(agent) = actor {
                agents::authorize(sql, agent, conversation_id).await?;
            }
            let (from, status, previous_agent) =
                agents::placement(sql, business_id, conversation_id).await?;
            if status == "closed" {
                return Err(RouteError::Closed);
            }
            if from == department {
                return Err(RouteError::SameDepartment(from));
            }
            let exists = assign::first_text(
                sql,
                r#"SELECT "name" FROM "Department" WHERE "businessId" = ?1 AND "name" = ?2"#,
                libsql::params![business_id, department],
                "reading a department",
            )
            .await?;
            if exists.is_none() {
                return Err(RouteError::UnknownDepartment(department.to_owned()));
            }
            let moved = returning_view(
                sql,
                TRANSFER,
                libsql::params![
                    conversation_id,
                    business_id,
                    department,
                    now_ms,
                    now.as_str()
                ],
                "transferring a conversation",
            )
            .await?
            .ok_or(RouteError::UnknownConversation)?;
            let mut assigned = drain(sql, business_id, department, now_ms, &now).await?;
            if let Some(agent) = &previous_agent
                && let Some((_, agent_department)) = assign::agent(sql, agent).await?
                && agent_department != department
            {
                assigned.extend(drain(sql, business_id, &agent_department, now_ms, &now).await?);
            }
            let delivery = deliver::record(
                sql,
                business_id,
                conversation_id,
                DeliveryEvent::Transferred,
                None,
                serde_json::json!({ "department": department, "fromDepartment": from }),
                self.delivery_enqueued_at(),
            )
            .await?;
            Ok((from, previous_agent, moved, assigned, delivery))
        }
        .await;
        let (from, previous_agent, moved, assigned, delivery) = finish(tx, result).await?;
        drop(conn);
        self.hand_over(delivery).await;
        tracing::info!(
            business = %business_id,
            conversation = %conversation_id,
            from = %from,
            to = %department,
            "transferred conversation"
        );
        let mut after = moved.clone();
        if let Some(a) = assigned.iter().find(|a| a.conversation.id == moved.id) {
            after = a.conversation.clone();
        }
        let mut events = vec![Event {
            audience: Audience {
                business_id: business_id.to_owned(),
                departments: [from.clone(), department.to_owned()]
                    .into_iter()
                    .filter(|d| !d.is_empty())
                    .collect(),
                agents: previous_agent.into_iter().collect(),
            },
            frame: Frame::Transferred {
                conversation: moved,
                from_department: from,
            },
        }];
        events.extend(assigned.into_iter().map(|a| assigned_event(business_id, a)));
        self.publish_all(events).await;
        Ok(after)
    }
}

#[async_trait]
impl JobHandler for Router {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        self.process(job)
            .await
            .map_err(|err| JobError::new(chain(&err)))
    }
}

/// A job's conversation and message, as read before routing.
#[derive(Debug, Clone)]
struct Loaded {
    business_id: String,
    conversation_id: String,
    /// False while the conversation waits for its first classification.
    routed: bool,
    department: String,
    assigned_agent_id: Option<String>,
    message: MessageView,
}

/// A job's conversation and message.
async fn load(sql: Sql<'_>, job: &Job) -> Result<Loaded, RouteError> {
    let mut rows = sql
        .query(
            r#"SELECT c."businessId", c."department", c."status", c."assignedAgentId",
                      m."sender", m."content", m."sequence", m."createdAt"
               FROM "Message" m JOIN "Conversation" c ON c."id" = m."conversationId"
               WHERE m."id" = ?1 AND c."id" = ?2"#,
            libsql::params![job.message_id.as_str(), job.conversation_id.as_str()],
        )
        .await
        .context("reading a job's message")?;
    let row = rows
        .next()
        .await
        .context("reading a job's message")?
        .ok_or(RouteError::JobMismatch(job.id))?;
    if text(&row, 0)? != job.business_id {
        return Err(RouteError::JobMismatch(job.id));
    }
    let department = text(&row, 1)?;
    let status = text(&row, 2)?;
    let created = row.get_value(7).context("reading a job's message")?;
    let created_at = timestamp::parse(&created)
        .map(timestamp::format)
        .ok_or_else(|| StoreError::Corrupt(format!("unreadable date {created:?}")))?;
    Ok(Loaded {
        routed: !(department.is_empty() && status == "pending"),
        department,
        assigned_agent_id: row.get(3).context("reading a job's message")?,
        message: MessageView {
            id: job.message_id.clone(),
            sender: text(&row, 4)?,
            content: text(&row, 5)?,
            sequence: row
                .get::<Option<i64>>(6)
                .context("reading a job's message")?
                .unwrap_or(0),
            created_at,
        },
        business_id: job.business_id.clone(),
        conversation_id: job.conversation_id.clone(),
    })
}

/// Stores a classification on a conversation still being routed.
const SET_DEPARTMENT: &str = concat!(
    r#"UPDATE "Conversation" SET "department" = ?2, "intent" = ?3, "confidence" = ?4,
           "classifier" = ?5, "status" = 'open', "queuedAt" = ?6, "updatedAt" = ?7
       WHERE "id" = ?1 AND "status" = 'pending' AND "department" = '' RETURNING "#,
    view_columns!()
);

/// Closes a conversation of a business.
const CLOSE: &str = concat!(
    r#"UPDATE "Conversation" SET "status" = 'closed', "closedAt" = ?3, "updatedAt" = ?3
       WHERE "id" = ?1 AND "businessId" = ?2 AND "status" <> 'closed' RETURNING "#,
    view_columns!()
);

/// Moves a conversation of a business to another department's queue.
const TRANSFER: &str = concat!(
    r#"UPDATE "Conversation" SET "department" = ?3, "status" = 'open', "assignedAgentId" = NULL,
           "queuedAt" = ?4, "updatedAt" = ?5
       WHERE "id" = ?1 AND "businessId" = ?2 RETURNING "#,
    view_columns!()
);

/// Stores a classification on a conversation still being routed and puts it in its
/// department's queue. `None` if it was routed already.
async fn set_department(
    sql: Sql<'_>,
    conversation_id: &str,
    classification: &Classification,
    now_ms: i64,
    now: &str,
) -> Result<Option<ConversationView>, StoreError> {
    returning_view(
        sql,
        SET_DEPARTMENT,
        libsql::params![
            conversation_id,
            classification.department.as_str(),
            classification.intent.as_deref(),
            classification.confidence,
            classification.classifier.as_str(),
            now_ms,
            now
        ],
        "storing a classification",
    )
    .await
}

/// Why a conversation could not be changed: it is closed, or not this business's.
async fn missing_or_closed(sql: Sql<'_>, business_id: &str, conversation_id: &str) -> RouteError {
    let found = assign::first_text(
        sql,
        r#"SELECT "status" FROM "Conversation" WHERE "id" = ?1 AND "businessId" = ?2"#,
        libsql::params![conversation_id, business_id],
        "reading a conversation",
    )
    .await;
    match found {
        Ok(Some(_)) => RouteError::Closed,
        Ok(None) => RouteError::UnknownConversation,
        Err(err) => err.into(),
    }
}

fn audience(business_id: &str, department: &str, agent: Option<&str>) -> Audience {
    Audience {
        business_id: business_id.to_owned(),
        departments: vec![department.to_owned()],
        agents: agent.map(str::to_owned).into_iter().collect(),
    }
}

fn assigned_event(business_id: &str, assignment: Assignment) -> Event {
    Event {
        audience: audience(
            business_id,
            &assignment.conversation.department,
            Some(&assignment.agent_id),
        ),
        frame: Frame::Assigned {
            conversation: assignment.conversation,
            agent_id: assignment.agent_id,
        },
    }
}

fn message_event(found: &Loaded) -> Event {
    Event {
        audience: audience(
            &found.business_id,
            &found.department,
            found.assigned_agent_id.as_deref(),
        ),
        frame: Frame::MessageCreated {
            conversation_id: found.conversation_id.clone(),
            message: found.message.clone(),
        },
    }
}
