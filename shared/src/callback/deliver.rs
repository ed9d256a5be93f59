//! Deliveries: agents' replies (and, when a business opts in, closed and transferred
//! conversations) sent to the business's callback URL, signed, retried, in order.
//!
//! # Outbox
//!
//! [`record`] runs inside the transaction that stores the reply or the change, so a
//! delivery exists exactly when what it reports does. It is a `Job` of kind
//! `delivery` with a `Delivery` row holding the delivery id and the body, frozen: every
//! retry sends the same bytes under the same `X-Chat-Router-Delivery` id, so a
//! receiver can drop duplicates. After the commit the job is handed to the queue,
//! whose ordering group for deliveries is the conversation's delivery lane
//! ([`crate::ingest::Job::group`]); a lost hand-off is made good by the sweeper.
//!
//! # Sending
//!
//! [`Deliverer::deliver`] first sends the conversation's earlier pending deliveries,
//! oldest first, so a conversation's deliveries arrive in order even when the queue
//! lost or reordered some: a delivery is sent only once every earlier one of its
//! conversation is finished (delivered, or given up). Each attempt is counted in the
//! database before the request goes out. The URL is checked again before every send,
//! and the client resolves names through the guarded resolver, follows no redirects
//! and gives up after the configured timeout (see [`super::address`]).
//!
//! A 2xx answer finishes the delivery. Network errors, timeouts, 408, 429 and 5xx are
//! retried with exponential backoff and full jitter; a 429's or 503's `Retry-After`
//! (seconds or an HTTP date, capped at the longest backoff) replaces the backoff.
//! Any other answer (other 4xx, and 3xx, since redirects are not followed) fails the
//! delivery at once. At the attempt limit a delivery is failed too. A failed delivery
//! tells the conversation's assigned agent (else the agent who wrote the message, else
//! the department) with an `error` frame of code `delivery_failed`.
//!
//! The wait between attempts is the job's `retry_after`: the local queue honours it;
//! on AWS the message comes back after the queue's visibility timeout instead.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use serde_json::json;

use super::address::{self, AddressError};
use super::endpoint::DeliveryEvent;
use super::secret::{self, EncryptionKey};
use super::signature::sign;
use super::{DELIVERY_HEADER, SIGNATURE_HEADER};
use crate::error::chain;
use crate::events::{Audience, Event, Frame, MessageView, Notifier};
use crate::ingest::{Job, JobKind};
use crate::queue::{JobError, JobHandler, Outbox};
use crate::routing::Router;
use crate::store::{Context, Sql, Store, StoreError, begin, finish, text};
use crate::timestamp;

/// Default for `DELIVERY_MAX_ATTEMPTS`.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 8;

/// How deliveries are retried, and where they may go.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Attempts before a delivery is marked failed.
    pub max_attempts: u32,
    /// The wait after the first failed attempt; doubled after each further one.
    pub first_retry: Duration,
    /// The longest wait between attempts, and the cap on a `Retry-After`.
    pub max_retry: Duration,
    /// How long one attempt may take, connecting included.
    pub timeout: Duration,
    /// Whether endpoints stored with `allowLoopback` may be sent to. True only in
    /// local runs; false on AWS, whatever a row says.
    pub allow_loopback: bool,
}

impl Default for DeliverySettings {
    fn default() -> DeliverySettings {
        DeliverySettings {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            first_retry: Duration::from_secs(1),
            max_retry: Duration::from_secs(300),
            timeout: address::TIMEOUT,
            allow_loopback: false,
        }
    }
}

/// Why a delivery was not finished this time.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The attempt failed and the delivery stays pending for another.
    #[error("delivery attempt failed: {cause}")]
    Retry {
        /// What happened, without the body.
        cause: String,
        /// How long to wait before the next attempt.
        after: Duration,
    },
    /// A queued job has no delivery row, or its ids differ from the row.
    #[error("job {0} is not a stored delivery")]
    UnknownJob(i64),
}

/// Records a delivery of `event` in the transaction on `conn`, when the business has a
/// callback endpoint that receives it. `message` is what the delivery carries; `None`
/// takes the conversation's latest message. `extra` fields join the body's top level.
/// `enqueued_at` is the job's hand-off time (0 lets the next sweep take it).
pub(crate) async fn record(
    sql: Sql<'_>,
    business_id: &str,
    conversation_id: &str,
    event: DeliveryEvent,
    message: Option<&MessageView>,
    extra: serde_json::Value,
    enqueued_at: i64,
) -> Result<Option<Job>, StoreError> {
    let mut rows = sql
        .query(
            r#"SELECT e."events", c."customerId" FROM "CallbackEndpoint" e
               JOIN "Conversation" c ON c."businessId" = e."businessId"
               WHERE e."businessId" = ?1 AND c."id" = ?2"#,
            libsql::params![business_id, conversation_id],
        )
        .await
        .context("reading a business's callback")?;
    let Some(row) = rows.next().await.context("reading a business's callback")? else {
        return Ok(None);
    };
    let events = text(&row, 0)?;
    let customer_id: Option<String> = row.get(1).context("reading a business's callback")?;
    drop(rows);
    if !events
        .split(',')
        .any(|name| DeliveryEvent::parse(name) == Some(event))
    {
        return Ok(None);
    }

    let message = match message {
        Some(message) => message.clone(),
        None => {
            let latest =
                crate::realtime::sync::latest_messages(sql.conn(), conversation_id, 1).await?;
            match latest.into_iter().next() {
                Some(message) => message,
                None => return Ok(None),
            }
        }
    };
    let delivery_id = format!("dlv_{}", crate::new_id());
    let mut body = json!({
        "event": event.as_str(),
        "deliveryId": delivery_id,
        "businessId": business_id,
        "conversationId": conversation_id,
        "customerId": customer_id,
        "message": {
            "id": message.id,
            "sender": message.sender,
            "content": message.content,
            "sequence": message.sequence,
            "createdAt": message.created_at,
        },
    });
    if let (Some(body), serde_json::Value::Object(extra)) = (body.as_object_mut(), extra) {
        body.extend(extra);
    }
    let payload = body.to_string();

    let now = timestamp::now();
    let mut rows = sql
        .query(
            r#"INSERT INTO "Job" ("kind", "businessId", "conversationId", "messageId", "createdAt", "updatedAt", "enqueuedAt")
               VALUES ('delivery', ?1, ?2, ?3, ?4, ?4, ?5) RETURNING "id""#,
            libsql::params![
                business_id,
                conversation_id,
                message.id.as_str(),
                now.as_str(),
                enqueued_at
            ],
        )
        .await
        .context("storing a delivery")?;
    let job_id: i64 = rows
        .next()
        .await
        .context("storing a delivery")?
        .ok_or_else(|| StoreError::Corrupt("an insert returned no id".into()))?
        .get(0)
        .context("storing a delivery")?;
    while rows.next().await.context("storing a delivery")?.is_some() {}
    drop(rows);
    sql.execute(
        r#"INSERT INTO "Delivery" ("jobId", "deliveryId", "event", "payload") VALUES (?1, ?2, ?3, ?4)"#,
        libsql::params![job_id, delivery_id.as_str(), event.as_str(), payload],
    )
    .await
    .context("storing a delivery")?;
    Ok(Some(Job {
        id: job_id,
        kind: JobKind::Delivery,
        business_id: business_id.to_owned(),
        conversation_id: conversation_id.to_owned(),
        message_id: message.id,
    }))
}

/// What one attempt came to.
enum Outcome {
    /// A 2xx answer.
    Delivered(StatusCode),
    /// Worth another attempt, after the receiver's `Retry-After` when it gave one.
    Retry {
        cause: String,
        status: Option<StatusCode>,
        retry_after: Option<Duration>,
    },
    /// Never worth another attempt.
    Refused {
        cause: String,
        status: Option<StatusCode>,
    },
}

/// A delivery as read when an attempt starts.
struct Started {
    attempts: i64,
    delivery_id: String,
    payload: String,
    endpoint: Option<(String, String, bool)>,
}

/// Sends deliveries. One per process, shared.
pub struct Deliverer {
    store: Arc<Store>,
    notifier: Arc<dyn Notifier>,
    key: EncryptionKey,
    settings: DeliverySettings,
    public: reqwest::Client,
    loopback: reqwest::Client,
}

impl Deliverer {
    /// A deliverer decrypting secrets with `key` and telling agents of failures
    /// through `notifier`.
    pub fn new(
        store: Arc<Store>,
        notifier: Arc<dyn Notifier>,
        key: EncryptionKey,
        settings: DeliverySettings,
    ) -> Result<Deliverer, reqwest::Error> {
        Ok(Deliverer {
            store,
            notifier,
            key,
            public: address::client(false)?,
            loopback: address::client(settings.allow_loopback)?,
            settings,
        })
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &DeliverySettings {
        &self.settings
    }

    /// Sends `job`'s delivery after the earlier pending deliveries of its
    /// conversation. `Ok` means it is finished (delivered, or failed for good); an
    /// `Err` asks for another attempt later.
    pub async fn deliver(&self, job: &Job) -> Result<(), DeliveryError> {
        let pending = match crate::queue::look_up(&self.store, job).await? {
            Outbox::Pending(pending) => pending,
            Outbox::Finished => return Ok(()),
            Outbox::Unknown | Outbox::Mismatch => return Err(DeliveryError::UnknownJob(job.id)),
        };
        for earlier in &pending {
            self.attempt(earlier).await?;
        }
        if pending.last().is_some_and(|last| last.id != job.id) {
            // More earlier deliveries were pending than one read returns.
            return Err(DeliveryError::Retry {
                cause: "earlier deliveries of the conversation are still pending".into(),
                after: Duration::ZERO,
            });
        }
        Ok(())
    }

    /// One counted attempt at one delivery.
    async fn attempt(&self, job: &Job) -> Result<(), DeliveryError> {
        let Some(started) = self.start(job).await? else {
            return Ok(());
        };
        let max = i64::from(self.settings.max_attempts.max(1));
        if started.attempts > max {
            // Earlier attempts ended without recording a result (a crash, say).
            return self
                .give_up(job, &started.delivery_id, "attempt limit reached", None)
                .await;
        }

        let outcome = self.send(job, &started).await;
        match outcome {
            Outcome::Delivered(status) => {
                let conn = self.store.writer().await?;
                conn.execute(
                    r#"UPDATE "Delivery" SET "lastStatus" = ?2, "deliveredAt" = ?3 WHERE "jobId" = ?1"#,
                    libsql::params![job.id, status.as_u16(), timestamp::now()],
                )
                .await
                .context("recording a delivery")?;
                drop(conn);
                crate::ingest::finish_job(&self.store, job.id).await?;
                tracing::info!(
                    business = %job.business_id,
                    conversation = %job.conversation_id,
                    delivery = %started.delivery_id,
                    attempts = started.attempts,
                    status = status.as_u16(),
                    "delivered"
                );
                Ok(())
            }
            Outcome::Refused { cause, status } => {
                self.give_up(job, &started.delivery_id, &cause, status)
                    .await
            }
            Outcome::Retry { cause, status, .. } if started.attempts >= max => {
                self.give_up(job, &started.delivery_id, &cause, status)
                    .await
            }
            Outcome::Retry {
                cause,
                status,
                retry_after,
            } => {
                let conn = self.store.writer().await?;
                conn.execute(
                    r#"UPDATE "Job" SET "lastError" = ?2 WHERE "id" = ?1"#,
                    libsql::params![job.id, cause.as_str()],
                )
                .await
                .context("recording a delivery's error")?;
                conn.execute(
                    r#"UPDATE "Delivery" SET "lastStatus" = ?2 WHERE "jobId" = ?1"#,
                    libsql::params![job.id, status.map(|s| s.as_u16())],
                )
                .await
                .context("recording a delivery's error")?;
                let after = retry_after
                    .map(|after| after.min(self.settings.max_retry))
                    .unwrap_or_else(|| self.backoff(started.attempts));
                tracing::warn!(
                    business = %job.business_id,
                    conversation = %job.conversation_id,
                    delivery = %started.delivery_id,
                    attempts = started.attempts,
                    retry_ms = after.as_millis() as u64,
                    cause = %cause,
                    "delivery attempt failed"
                );
                Err(DeliveryError::Retry { cause, after })
            }
        }
    }

    /// Counts an attempt at a pending delivery and reads it with its endpoint, in one
    /// transaction. `None` if it is no longer pending.
    async fn start(&self, job: &Job) -> Result<Option<Started>, DeliveryError> {
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting a delivery").await?;
        let result = async {
            let Some(attempts) = crate::queue::count_attempt(conn.sql_in(&tx), job).await? else {
                return Ok(None);
            };
            let mut rows = tx
                .query(
                    r#"SELECT d."deliveryId", d."payload", e."url", e."secret", e."allowLoopback"
                       FROM "Delivery" d JOIN "Job" j ON j."id" = d."jobId"
                       LEFT JOIN "CallbackEndpoint" e ON e."businessId" = j."businessId"
                       WHERE d."jobId" = ?1"#,
                    libsql::params![job.id],
                )
                .await
                .context("reading a delivery")?;
            let row = rows
                .next()
                .await
                .context("reading a delivery")?
                .ok_or(DeliveryError::UnknownJob(job.id))?;
            let url: Option<String> = row.get(2).context("reading a delivery")?;
            let endpoint = match url {
                Some(url) => Some((
                    url,
                    text(&row, 3)?,
                    row.get::<bool>(4).context("reading a delivery")?,
                )),
                None => None,
            };
            Ok::<_, DeliveryError>(Some(Started {
                attempts,
                delivery_id: text(&row, 0)?,
                payload: text(&row, 1)?,
                endpoint,
            }))
        }
        .await;
        finish(tx, result).await
    }

    /// One request; never fails, it only tells what happened.
    async fn send(&self, job: &Job, started: &Started) -> Outcome {
        let Some((url, stored_secret, endpoint_loopback)) = &started.endpoint else {
            return Outcome::Refused {
                cause: "the business has no callback URL".into(),
                status: None,
            };
        };
        let allow_loopback = *endpoint_loopback && self.settings.allow_loopback;
        // Literal addresses bypass the resolver, so the URL is checked on every send.
        let url = match address::check_url(url, allow_loopback) {
            Ok(url) => url,
            Err(err) => {
                return Outcome::Refused {
                    cause: refused(&err),
                    status: None,
                };
            }
        };
        let secret = match secret::decrypt(&self.key, &job.business_id, stored_secret) {
            Ok(secret) => secret,
            // The key may be fixed by a redeploy, so this is worth retrying.
            Err(err) => {
                return Outcome::Retry {
                    cause: err.to_string(),
                    status: None,
                    retry_after: None,
                };
            }
        };

        let signed_at = chrono::Utc::now().timestamp();
        let signature = sign(secret.signing_key(), signed_at, started.payload.as_bytes());
        let client = if allow_loopback {
            &self.loopback
        } else {
            &self.public
        };
        let response = client
            .post(url)
            .timeout(self.settings.timeout)
            .header(CONTENT_TYPE, "application/json")
            .header(
                USER_AGENT,
                concat!("chat-router/", env!("CARGO_PKG_VERSION")),
            )
            .header(SIGNATURE_HEADER, signature)
            .header(DELIVERY_HEADER, started.delivery_id.as_str())
            .body(started.payload.clone())
            .send()
            .await;
        let response = match response {
            Ok(response) => response,
            Err(err) => {
                let cause = if err.is_timeout() {
                    format!("no answer within {} ms", self.settings.timeout.as_millis())
                } else {
                    // Without the URL, which may carry a token of the business's.
                    format!("sending: {}", chain(&err.without_url()))
                };
                return Outcome::Retry {
                    cause,
                    status: None,
                    retry_after: None,
                };
            }
        };
        classify(response.status(), response.headers())
    }

    /// Exponential backoff with full jitter: up to `first_retry` doubled per earlier
    /// failed attempt, at most `max_retry`, at least half of that.
    fn backoff(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        let ceiling = self
            .settings
            .first_retry
            .saturating_mul(1 << doublings)
            .min(self.settings.max_retry);
        let millis = ceiling.as_millis().max(1) as u64;
        Duration::from_millis(rand::random_range(millis.div_ceil(2)..=millis))
    }

    /// Marks a delivery failed for good and tells the agent.
    async fn give_up(
        &self,
        job: &Job,
        delivery_id: &str,
        cause: &str,
        status: Option<StatusCode>,
    ) -> Result<(), DeliveryError> {
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to fail a delivery").await?;
        let result = async {
            if !crate::queue::fail_job(&tx, job.id, cause).await? {
                return Ok(None);
            }
            tx.execute(
                r#"UPDATE "Delivery" SET "lastStatus" = coalesce(?2, "lastStatus") WHERE "jobId" = ?1"#,
                libsql::params![job.id, status.map(|s| s.as_u16())],
            )
            .await
            .context("failing a delivery")?;
            let mut rows = tx
                .query(
                    r#"SELECT c."department", coalesce(c."assignedAgentId", m."agentId"), d."event"
                       FROM "Conversation" c, "Message" m, "Delivery" d
                       WHERE c."id" = ?1 AND m."id" = ?2 AND d."jobId" = ?3"#,
                    libsql::params![
                        job.conversation_id.as_str(),
                        job.message_id.as_str(),
                        job.id
                    ],
                )
                .await
                .context("reading a failed delivery's conversation")?;
            let Some(row) = rows
                .next()
                .await
                .context("reading a failed delivery's conversation")?
            else {
                return Ok(None);
            };
            let department = text(&row, 0)?;
            let agent: Option<String> = row
                .get(1)
                .context("reading a failed delivery's conversation")?;
            Ok::<_, DeliveryError>(Some((department, agent, text(&row, 2)?)))
        }
        .await;
        let Some((department, agent, event)) = finish(tx, result).await? else {
            return Ok(());
        };
        drop(conn);
        tracing::error!(
            business = %job.business_id,
            conversation = %job.conversation_id,
            delivery = %delivery_id,
            cause = %cause,
            "delivery failed for good"
        );

        let audience = Audience {
            business_id: job.business_id.clone(),
            departments: if agent.is_none() && !department.is_empty() {
                vec![department]
            } else {
                Vec::new()
            },
            agents: agent.into_iter().collect(),
        };
        let frame = Frame::DeliveryFailed {
            code: "delivery_failed",
            message: format!(
                "the {event} delivery {delivery_id} of message {} in conversation {} \
                 did not reach the business: {cause}",
                job.message_id, job.conversation_id
            ),
            action: None,
            conversation_id: job.conversation_id.clone(),
            message_id: job.message_id.clone(),
            delivery_id: delivery_id.to_owned(),
            event,
        };
        if let Err(err) = self.notifier.publish(&Event { audience, frame }).await {
            tracing::warn!(kind = "error", cause = %chain(&err), "event not delivered");
        }
        Ok(())
    }
}

/// Why a stored URL is no longer sent to.
fn refused(err: &AddressError) -> String {
    format!("callback URL refused: {err}")
}

/// What a receiver's answer means for the delivery.
fn classify(status: StatusCode, headers: &reqwest::header::HeaderMap) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered(status);
    }
    let cause = format!("the receiver answered {}", status.as_u16());
    if status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
    {
        let retry_after = match status {
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => headers
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, chrono::Utc::now())),
            _ => None,
        };
        return Outcome::Retry {
            cause,
            status: Some(status),
            retry_after,
        };
    }
    Outcome::Refused {
        cause,
        status: Some(status),
    }
}

/// A `Retry-After` value: whole seconds, or an HTTP date (a date past gives zero).
pub fn parse_retry_after(value: &str, now: chrono::DateTime<chrono::Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = date.with_timezone(&chrono::Utc) - now;
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The queue consumer's handler: routing jobs go to the [`Router`], deliveries to the
/// [`Deliverer`]. Without a deliverer (no `CALLBACK_SECRET_KEY`), deliveries stay
/// pending, uncounted, until a process that has one sends them.
pub struct Jobs {
    router: Arc<Router>,
    deliverer: Option<Arc<Deliverer>>,
}

impl Jobs {
    /// Dispatches to `router` and `deliverer`.
    pub fn new(router: Arc<Router>, deliverer: Option<Arc<Deliverer>>) -> Jobs {
        Jobs { router, deliverer }
    }
}

#[async_trait]
impl JobHandler for Jobs {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        match job.kind {
            JobKind::Message => self.router.handle(job).await,
            JobKind::Delivery => {
                let Some(deliverer) = &self.deliverer else {
                    return Err(JobError::new(format!(
                        "deliveries are not sent: {} is not set",
                        secret::KEY_VARIABLE
                    )));
                };
                deliverer.deliver(job).await.map_err(|err| match err {
                    DeliveryError::Retry { cause, after } => JobError {
                        cause,
                        retry_after: Some(after),
                    },
                    other => JobError::new(chain(&other)),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_takes_seconds_and_http_dates() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-04T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Fri, 04 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn answers_are_delivered_retried_or_refused() {
        let none = reqwest::header::HeaderMap::new();
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, &none),
            Outcome::Delivered(_)
        ));
        for status in [408, 429, 500, 502, 503, 504] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify(status, &none), Outcome::Retry { .. }),
                "{status}"
            );
        }
        for status in [301, 307, 400, 401, 403, 404, 410, 422] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify(status, &none), Outcome::Refused { .. }),
                "{status}"
            );
        }
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(RETRY_AFTER, "7".parse().unwrap());
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &headers),
            Outcome::Retry { retry_after: Some(after), .. } if after == Duration::from_secs(7)
        ));
    }
}
