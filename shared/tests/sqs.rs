//! The AWS path of routing against a real SQS API (moto) with the real aws-sdk-sqs
//! client: the webhook enqueues to a FIFO queue, the classify-route handler takes a
//! batch built from the received messages, and a poisoned job comes back as a batch
//! item failure while the others complete. Also the sample events of the
//! classify-route and sweeper functions, run through their handlers.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use aws_lambda_events::event::sqs::SqsEvent;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::events::LocalNotifier;
use chat_router::ingest::Job;
use chat_router::queue::sqs::{SqsQueue, handle_batch};
use chat_router::routing::Router;
use chat_router::store::Store;
use chat_router::tenants::{self, BusinessConfig};
use chat_router::webhook::Webhook;
use common::{Backend, Moto, TestDb, column, workspace};
use lambda_http::Body;
use serde_json::{Value, json};

fn router(store: Arc<Store>) -> Router {
    Router::new(
        store,
        Arc::new(Chain::new(vec![Arc::new(EmbeddedClassifier::default())])),
        Arc::new(LocalNotifier::default()),
        3,
    )
}

async fn fifo_queue(sqs: &aws_sdk_sqs::Client) -> String {
    sqs.create_queue()
        .queue_name("routing.fifo")
        .attributes(QueueAttributeName::FifoQueue, "true")
        .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
        .send()
        .await
        .expect("create the FIFO queue")
        .queue_url()
        .expect("queue url")
        .to_owned()
}

/// Receives until `want` messages arrived (or panics), as Lambda's poller would,
/// with every system attribute.
async fn receive(
    sqs: &aws_sdk_sqs::Client,
    url: &str,
    want: usize,
) -> Vec<aws_sdk_sqs::types::Message> {
    let mut out = Vec::new();
    for _ in 0..20 {
        let received = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .visibility_timeout(60)
            .wait_time_seconds(1)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive");
        out.extend(received.messages().iter().cloned());
        if out.len() >= want {
            break;
        }
    }
    assert_eq!(out.len(), want, "messages received from the queue");
    out
}

/// The SQS event Lambda builds from received messages.
fn record(message: &aws_sdk_sqs::types::Message) -> Value {
    let attributes: HashMap<String, String> = message
        .attributes()
        .expect("system attributes")
        .iter()
        .map(|(name, value)| (name.as_str().to_owned(), value.clone()))
        .collect();
    json!({
        "messageId": message.message_id(),
        "receiptHandle": message.receipt_handle(),
        "body": message.body(),
        "attributes": attributes,
        "messageAttributes": {},
        "md5OfBody": message.md5_of_body(),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:routing.fifo",
        "awsRegion": "us-east-1"
    })
}

fn poisoned(id: &str, group: &str, body: &str) -> Value {
    json!({
        "messageId": id,
        "receiptHandle": format!("handle-{id}"),
        "body": body,
        "attributes": {"MessageGroupId": group, "ApproximateReceiveCount": "1"},
        "messageAttributes": {},
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:routing.fifo",
        "awsRegion": "us-east-1"
    })
}

fn failures(response: &aws_lambda_events::event::sqs::SqsBatchResponse) -> Vec<String> {
    let mut ids: Vec<String> = response
        .batch_item_failures
        .iter()
        .map(|failure| failure.item_identifier.clone())
        .collect();
    ids.sort();
    ids
}

async fn job_status(store: &Store, id: i64) -> String {
    column(
        store,
        &format!(r#"SELECT "status" FROM "Job" WHERE "id" = {id}"#),
    )
    .await
    .remove(0)
}

#[tokio::test]
async fn the_webhook_enqueues_and_the_function_fails_only_the_poisoned_jobs() {
    let moto = Moto::start().await;
    let sqs = moto.sqs();
    let url = fifo_queue(&sqs).await;
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let text = std::fs::read_to_string(workspace().join("tenants/demo.json")).unwrap();
    let config: BusinessConfig = serde_json::from_str(&text).unwrap();
    let business = tenants::create_business(&store, &config).await.unwrap();
    let webhook = Webhook::new(store.clone(), Arc::new(SqsQueue::new(sqs.clone(), &url)));

    // Two messages of one customer (one conversation), one of another.
    let mut sent = Vec::new();
    for (customer, message) in [
        ("ana", "The app crashes when I log in"),
        ("ana", "It happens on every device I own"),
        ("ben", "I was charged twice this month"),
    ] {
        let request = lambda_http::http::Request::builder()
            .method("POST")
            .uri("/webhook/message")
            .header("authorization", format!("Bearer {}", business.webhook_key))
            .header("content-type", "application/json")
            .body(Body::from(
                json!({"businessId": business.id, "customerId": customer, "message": message})
                    .to_string(),
            ))
            .unwrap();
        let response = webhook.handle(request).await;
        assert_eq!(response.status(), 202);
        let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
        sent.push((body["conversationId"].as_str().unwrap().to_owned(), message));
    }
    assert_eq!(sent[0].0, sent[1].0);
    assert_ne!(sent[0].0, sent[2].0);

    let messages = receive(&sqs, &url, 3).await;
    let mut jobs: Vec<Job> = Vec::new();
    for message in &messages {
        let body = message.body().unwrap();
        for (_, text) in &sent {
            assert!(!body.contains(text), "a job carries ids only: {body}");
        }
        let job: Job = serde_json::from_str(body).expect("the body is a job");
        let attributes = message.attributes().unwrap();
        assert_eq!(
            attributes[&MessageSystemAttributeName::MessageGroupId],
            job.conversation_id
        );
        assert_eq!(
            attributes[&MessageSystemAttributeName::MessageDeduplicationId],
            job.id.to_string()
        );
        jobs.push(job);
    }
    // SQS keeps a group's order.
    let ana: Vec<i64> = jobs
        .iter()
        .filter(|job| job.conversation_id == sent[0].0)
        .map(|job| job.id)
        .collect();
    assert_eq!(ana.len(), 2);
    assert!(ana[0] < ana[1]);

    // A batch with the received messages plus poison: a body that is no job at the
    // head of ana's group (so ana's jobs after it must wait), and a job that does not
    // exist in a group of its own.
    let unknown = serde_json::to_string(&Job {
        id: 999_999,
        kind: chat_router::ingest::JobKind::Message,
        business_id: business.id.clone(),
        conversation_id: "no-such-conversation".into(),
        message_id: "no-such-message".into(),
    })
    .unwrap();
    let mut records = vec![
        poisoned("poison-garbage", &sent[0].0, "not a job"),
        poisoned("poison-unknown", "no-such-conversation", &unknown),
    ];
    records.extend(messages.iter().map(record));
    let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
    let router = router(store.clone());
    let response = handle_batch(&router, event).await;

    let mut expected: Vec<String> = vec!["poison-garbage".into(), "poison-unknown".into()];
    for (message, job) in messages.iter().zip(&jobs) {
        if job.conversation_id == sent[0].0 {
            expected.push(message.message_id().unwrap().to_owned());
        }
    }
    expected.sort();
    assert_eq!(failures(&response), expected);
    // Ben's job completed; Ana's wait, untouched, for their redelivery.
    for job in &jobs {
        let want = if job.conversation_id == sent[2].0 {
            "done"
        } else {
            "pending"
        };
        assert_eq!(job_status(&store, job.id).await, want, "job {}", job.id);
    }
    assert_eq!(
        column(
            &store,
            &format!(
                r#"SELECT "department" || '|' || "status" FROM "Conversation" WHERE "id" = '{}'"#,
                sent[2].0
            )
        )
        .await,
        ["Billing|open"]
    );

    // Redelivered without the poison, Ana's jobs complete in order.
    let again: Vec<Value> = messages
        .iter()
        .zip(&jobs)
        .filter(|(_, job)| job.conversation_id == sent[0].0)
        .map(|(message, _)| record(message))
        .collect();
    let event: SqsEvent = serde_json::from_value(json!({ "Records": again })).unwrap();
    let response = handle_batch(&router, event).await;
    assert!(failures(&response).is_empty());
    for job in &jobs {
        assert_eq!(job_status(&store, job.id).await, "done");
    }
    assert_eq!(
        column(
            &store,
            &format!(
                r#"SELECT "department" || '|' || "status" FROM "Conversation" WHERE "id" = '{}'"#,
                sent[0].0
            )
        )
        .await,
        ["Support|open"]
    );
}

#[tokio::test]
async fn the_sweeper_hands_pending_jobs_to_the_queue_once_per_sweep() {
    let moto = Moto::start().await;
    let sqs = moto.sqs();
    let url = fifo_queue(&sqs).await;
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = common::demo_business(&store).await;
    // Stored, but the hand-off never happened (a crash after the commit).
    let job = common::customer_message(&store, &business, "ana", "I cannot log in").await;
    let router = router(store.clone());
    let queue = SqsQueue::new(sqs.clone(), &url);

    // Not yet stale.
    let report = router
        .sweep(&queue, Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(report.requeued, 0);

    // The sample scheduled event runs one sweep.
    let event: EventBridgeEvent =
        serde_json::from_str(include_str!("../../events/sweeper-schedule.json")).unwrap();
    let report = router
        .sweep_on_schedule(&queue, Duration::ZERO, &event)
        .await
        .unwrap();
    assert_eq!(report.requeued, 1);
    // A second sweep inside SQS's deduplication window adds nothing to the queue.
    router.sweep(&queue, Duration::ZERO).await.unwrap();

    let messages = receive(&sqs, &url, 1).await;
    let body: Job = serde_json::from_str(messages[0].body().unwrap()).unwrap();
    assert_eq!(body, job);
    let more = sqs
        .receive_message()
        .queue_url(&url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .unwrap();
    assert!(
        more.messages().is_empty(),
        "the resent job was deduplicated"
    );

    // Through the function's handler the job completes.
    let event: SqsEvent =
        serde_json::from_value(json!({ "Records": [record(&messages[0])] })).unwrap();
    assert!(failures(&handle_batch(&router, event).await).is_empty());
    assert_eq!(job_status(&store, job.id).await, "done");
}

#[tokio::test]
async fn the_sample_sqs_event_runs_through_the_handler() {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = common::demo_business(&store).await;
    let router = router(store.clone());
    let sample = include_str!("../../events/classify-route-sqs.json");

    // As committed, the event names a job that does not exist: a batch item failure.
    let event: SqsEvent = serde_json::from_str(sample).expect("the event parses");
    let id = event.records[0].message_id.clone().unwrap();
    assert_eq!(failures(&handle_batch(&router, event).await), [id]);

    // With a real job in it, the job is classified, routed and done.
    let job = common::customer_message(&store, &business, "ana", "I was charged twice").await;
    let mut event: SqsEvent = serde_json::from_str(sample).unwrap();
    event.records[0].body = Some(serde_json::to_string(&job).unwrap());
    event.records[0]
        .attributes
        .insert("MessageGroupId".into(), job.conversation_id.clone());
    event.records[0]
        .attributes
        .insert("MessageDeduplicationId".into(), job.id.to_string());
    assert!(failures(&handle_batch(&router, event).await).is_empty());
    assert_eq!(job_status(&store, job.id).await, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_travel_in_their_own_group_and_the_consumer_sends_them() {
    use chat_router::callback::deliver::{Deliverer, DeliverySettings, Jobs};
    use chat_router::callback::endpoint::{self, EndpointRequest};
    use chat_router::callback::secret::EncryptionKey;
    use chat_router::queue::JobQueue;
    use common::receiver::{Script, receiver};

    let moto = Moto::start().await;
    let sqs = moto.sqs();
    let url = fifo_queue(&sqs).await;
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = common::demo_business(&store).await;
    let key = EncryptionKey::generate();
    let script = Script::default();
    endpoint::configure(
        &store,
        &key,
        &EndpointRequest {
            business_id: business.clone(),
            url: receiver(script.clone()).await,
            events: vec![],
            allow_loopback: true,
            rotate_secret: false,
        },
    )
    .await
    .unwrap();
    let agent = tenants::create_agent(&store, &business, "Ann", "Billing", 5)
        .await
        .unwrap();
    let router = Arc::new(router(store.clone()));
    let queue = Arc::new(SqsQueue::new(sqs.clone(), url.clone()));
    router.deliver_through(queue.clone());
    router
        .agent_available(&agent.id, chat_router::timestamp::now_millis() + 3_600_000)
        .await
        .unwrap();

    // The routing job goes to the conversation's group, the reply's delivery to its
    // delivery lane.
    let job = common::customer_message(&store, &business, "ana", "I was charged twice").await;
    queue.enqueue(&job).await.unwrap();
    router.process(&job).await.unwrap();
    let me = chat_router::routing::AgentRef {
        business_id: business.clone(),
        agent_id: agent.id.clone(),
        department: "Billing".into(),
    };
    router
        .reply(&me, &job.conversation_id, "Refunded.", None)
        .await
        .unwrap();
    let messages = receive(&sqs, &url, 2).await;
    let mut groups: Vec<String> = messages
        .iter()
        .map(|m| m.attributes().unwrap()[&MessageSystemAttributeName::MessageGroupId].clone())
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        vec![
            job.conversation_id.clone(),
            format!("{}:deliver", job.conversation_id)
        ]
    );

    // The consumer's handler routes one (already done) and delivers the other.
    let deliverer = Deliverer::new(
        store.clone(),
        Arc::new(LocalNotifier::default()),
        key,
        DeliverySettings {
            allow_loopback: true,
            ..DeliverySettings::default()
        },
    )
    .unwrap();
    let jobs = Jobs::new(router.clone(), Some(Arc::new(deliverer)));
    let event: SqsEvent = serde_json::from_value(json!({
        "Records": messages.iter().map(record).collect::<Vec<_>>()
    }))
    .unwrap();
    let response = handle_batch(&jobs, event).await;
    assert!(failures(&response).is_empty());
    let received = script.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].json()["message"]["content"], "Refunded.");
    assert_eq!(
        column(
            &store,
            r#"SELECT "status" FROM "Job" WHERE "kind" = 'delivery'"#
        )
        .await,
        vec!["done"]
    );
}
