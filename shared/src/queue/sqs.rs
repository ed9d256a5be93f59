//! The AWS side of the queue: sending jobs to an SQS FIFO queue, and handling the
//! batches Lambda receives from it.
//!
//! Each job is one message whose group is [`Job::group`] (the conversation, or the
//! conversation's delivery lane), so SQS hands a group's jobs over one at a time, in
//! order, while groups run in parallel. The job id is the deduplication id: the sweeper handing a job over again
//! within SQS's five-minute deduplication window adds nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent, SqsMessage};
use futures::StreamExt;

use super::{JobHandler, JobQueue, QueueError};
use crate::error::chain;
use crate::ingest::Job;

/// Most message groups of one batch handled at once.
const GROUPS_AT_ONCE: usize = 8;

/// Sends jobs to an SQS FIFO queue.
#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    /// A queue reached through `client`.
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> SqsQueue {
        SqsQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// A queue reached with the AWS SDK's standard configuration: credentials, region
    /// and `AWS_ENDPOINT_URL` from the environment.
    pub async fn from_env(queue_url: impl Into<String>) -> SqsQueue {
        let config = crate::aws::sdk_config().await;
        SqsQueue::new(aws_sdk_sqs::Client::new(&config), queue_url)
    }
}

#[async_trait]
impl JobQueue for SqsQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        let body = serde_json::to_string(job).map_err(|err| QueueError(err.to_string()))?;
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .message_group_id(job.group())
            .message_deduplication_id(job.id.to_string())
            .send()
            .await
            .map_err(|err| QueueError(chain(&err)))?;
        Ok(())
    }
}

/// Handles a batch from an SQS event source mapping and reports the messages that
/// failed (`ReportBatchItemFailures`), so SQS deletes the rest and only the failed
/// ones come back.
///
/// Messages of one group are handled in order. Once one fails, the later messages of
/// its group are reported failed without being handled, so they come back after it
/// and the conversation's order holds. Groups are handled concurrently. A message
/// whose body is not a job is reported failed; after the queue's receive limit SQS
/// moves it to the dead-letter queue.
pub async fn handle_batch(handler: &dyn JobHandler, event: SqsEvent) -> SqsBatchResponse {
    // Group the records, keeping the order SQS gave within each group. A standard queue
    // has no groups: each message is a group of its own.
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Vec<SqsMessage>> = HashMap::new();
    for (index, record) in event.records.into_iter().enumerate() {
        let group = record
            .attributes
            .get("MessageGroupId")
            .cloned()
            .unwrap_or_else(|| format!("\0{index}"));
        if !groups.contains_key(&group) {
            order.push(group.clone());
        }
        groups.entry(group).or_default().push(record);
    }

    let failures: Vec<Vec<String>> = futures::stream::iter(order)
        .map(|group| {
            let records = groups.remove(&group).unwrap_or_default();
            handle_group(handler, records)
        })
        .buffer_unordered(GROUPS_AT_ONCE)
        .collect()
        .await;

    let mut response = SqsBatchResponse::default();
    for id in failures.into_iter().flatten() {
        response.batch_item_failures.push(BatchItemFailure {
            item_identifier: id,
        });
    }
    response
}

/// Handles one group's records in order; returns the ids of those to report failed.
async fn handle_group(handler: &dyn JobHandler, records: Vec<SqsMessage>) -> Vec<String> {
    let mut failed = Vec::new();
    let mut blocked = false;
    for record in records {
        let id = record.message_id.clone().unwrap_or_default();
        if blocked {
            failed.push(id);
            continue;
        }
        let outcome = match parse_job(&record) {
            Ok(job) => handler.handle(&job).await.map_err(|err| err.to_string()),
            Err(problem) => Err(problem),
        };
        if let Err(cause) = outcome {
            tracing::warn!(message = %id, cause = %cause, "queue message failed");
            failed.push(id);
            blocked = true;
        }
    }
    failed
}

fn parse_job(record: &SqsMessage) -> Result<Job, String> {
    let body = record.body.as_deref().ok_or("the message has no body")?;
    serde_json::from_str(body).map_err(|err| format!("the message is not a job: {err}"))
}
