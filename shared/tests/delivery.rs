//! Deliveries against real receivers on 127.0.0.1 (port 0) and real databases:
//! signatures, order per conversation, retries and what stops them, the failure event,
//! redirects, secret rotation, opt-in events, and URLs that are refused.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_router::callback::deliver::{Deliverer, DeliverySettings, Jobs};
use chat_router::callback::endpoint::{
    self, ConfiguredEndpoint, DeliveryEvent, EndpointError, EndpointRequest,
};
use chat_router::callback::secret::EncryptionKey;
use chat_router::callback::signature::{self, VerifyError};
use chat_router::classify::{
    BusinessProfile, Chain, Classification, Classifier, ClassifierKind, ClassifyError,
};
use chat_router::events::{Frame, LocalNotifier};
use chat_router::queue::local::LocalQueue;
use chat_router::routing::{AgentRef, Router};
use chat_router::store::Store;
use chat_router::tenants;
use common::receiver::{Answer, Received, Script, receiver};
use common::{Backend, TestDb, column, count, customer_message, demo_business};
use serde_json::Value;

/// Sends every conversation to Support, so tests need no model.
struct ToSupport;

#[async_trait::async_trait]
impl Classifier for ToSupport {
    fn kind(&self) -> ClassifierKind {
        ClassifierKind::Embedded
    }

    async fn classify(
        &self,
        _business: &BusinessProfile,
        _text: &str,
    ) -> Result<Classification, ClassifyError> {
        Ok(Classification {
            department: "Support".into(),
            intent: None,
            confidence: 0.9,
            classifier: ClassifierKind::Embedded,
        })
    }
}

fn fast(max_attempts: u32) -> DeliverySettings {
    DeliverySettings {
        max_attempts,
        first_retry: Duration::from_millis(20),
        max_retry: Duration::from_secs(2),
        timeout: Duration::from_secs(2),
        allow_loopback: true,
    }
}

struct Rig {
    store: Arc<Store>,
    router: Arc<Router>,
    notifier: LocalNotifier,
    queue: LocalQueue,
    key: EncryptionKey,
    business: String,
    agent: AgentRef,
    script: Script,
    url: String,
    secret: String,
    _db: TestDb,
}

async fn rig(backend: Backend, settings: DeliverySettings, events: &[DeliveryEvent]) -> Rig {
    let db = TestDb::new(backend).await;
    let store = Arc::new(db.store().await);
    let business = demo_business(&store).await;
    let notifier = LocalNotifier::default();
    let router = Arc::new(Router::new(
        store.clone(),
        Arc::new(Chain::new(vec![Arc::new(ToSupport)])),
        Arc::new(notifier.clone()),
        3,
    ));
    let key = EncryptionKey::generate();
    let deliverer = Arc::new(
        Deliverer::new(
            store.clone(),
            Arc::new(notifier.clone()),
            key.clone(),
            settings,
        )
        .unwrap(),
    );
    let queue = LocalQueue::start(Arc::new(Jobs::new(router.clone(), Some(deliverer))), 8);
    router.deliver_through(Arc::new(queue.clone()));

    let script = Script::default();
    let url = receiver(script.clone()).await;
    let configured = endpoint::configure(
        &store,
        &key,
        &EndpointRequest {
            business_id: business.clone(),
            url: url.clone(),
            events: events.to_vec(),
            allow_loopback: true,
            rotate_secret: false,
        },
    )
    .await
    .unwrap();

    let created = tenants::create_agent(&store, &business, "Ann", "Support", 50)
        .await
        .unwrap();
    router
        .agent_available(
            &created.id,
            chat_router::timestamp::now_millis() + 3_600_000,
        )
        .await
        .unwrap();
    Rig {
        store,
        router,
        notifier,
        queue,
        key,
        agent: AgentRef {
            business_id: business.clone(),
            agent_id: created.id,
            department: "Support".into(),
        },
        business,
        script,
        url,
        secret: configured.secret.expect("a new endpoint's secret"),
        _db: db,
    }
}

impl Rig {
    /// Configures the business's endpoint again.
    async fn configure(
        &self,
        url: &str,
        loopback: bool,
        rotate: bool,
    ) -> Result<ConfiguredEndpoint, EndpointError> {
        endpoint::configure(
            &self.store,
            &self.key,
            &EndpointRequest {
                business_id: self.business.clone(),
                url: url.to_owned(),
                events: vec![],
                allow_loopback: loopback,
                rotate_secret: rotate,
            },
        )
        .await
    }

    /// A routed conversation assigned to the rig's agent.
    async fn conversation(&self, customer: &str) -> String {
        let job = customer_message(&self.store, &self.business, customer, "Hello?").await;
        self.router.process(&job).await.unwrap();
        job.conversation_id
    }

    async fn reply(&self, conversation: &str, text: &str) -> String {
        self.router
            .reply(&self.agent, conversation, text, None)
            .await
            .unwrap()
            .message
            .id
    }

    /// Waits until no delivery is pending.
    async fn settled(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pending = count(
                &self.store,
                r#"SELECT count(*) FROM "Job" WHERE "kind" = 'delivery' AND "status" = 'pending'"#,
            )
            .await;
            if pending == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{pending} deliveries still pending"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn statuses(&self) -> Vec<String> {
        column(
            &self.store,
            r#"SELECT "status" || '|' || "attempts" FROM "Job" WHERE "kind" = 'delivery' ORDER BY "id""#,
        )
        .await
    }
}

fn verifies(secret: &str, received: &Received) -> Result<(), VerifyError> {
    signature::verify(
        secret.as_bytes(),
        &received.signature,
        &received.body,
        chrono::Utc::now().timestamp(),
        signature::DEFAULT_TOLERANCE,
    )
}

both_backends!(
    a_reply_is_delivered_signed_with_the_business_secret,
    |backend| {
        let rig = rig(backend, fast(5), &[]).await;
        let conversation = rig.conversation("cust-1").await;
        let message = rig.reply(&conversation, "Your refund is on its way.").await;
        rig.settled().await;

        let received = rig.script.received();
        assert_eq!(received.len(), 1);
        let delivery = &received[0];
        verifies(&rig.secret, delivery).expect("the signature verifies");
        let body = delivery.json();
        assert_eq!(body["event"], "message");
        assert_eq!(body["deliveryId"], delivery.delivery_id.as_str());
        assert!(delivery.delivery_id.starts_with("dlv_"));
        assert_eq!(body["businessId"], rig.business.as_str());
        assert_eq!(body["conversationId"], conversation.as_str());
        assert_eq!(body["customerId"], "cust-1");
        assert_eq!(body["message"]["id"], message.as_str());
        assert_eq!(body["message"]["sender"], "agent");
        assert_eq!(body["message"]["content"], "Your refund is on its way.");
        assert_eq!(body["message"]["sequence"], 2);
        assert!(body["message"]["createdAt"].is_string());
        assert_eq!(rig.statuses().await, vec!["done|1"]);
        assert_eq!(
        count(
            &rig.store,
            r#"SELECT count(*) FROM "Delivery" WHERE "lastStatus" = 200 AND "deliveredAt" IS NOT NULL"#
        )
        .await,
        1
    );
        // Another key cannot read the stored secret, and the database never holds it.
        let stored = column(&rig.store, r#"SELECT "secret" FROM "CallbackEndpoint""#).await;
        assert!(stored[0].starts_with("v1:") && !stored[0].contains(&rig.secret));
        rig.queue.shutdown();
    }
);

both_backends!(
    deliveries_keep_each_conversations_order_under_concurrency,
    |backend| {
        let rig = Arc::new(rig(backend, fast(20), &[]).await);
        let first = rig.conversation("cust-a").await;
        let second = rig.conversation("cust-b").await;
        // Failures early on make retries interleave with new deliveries.
        rig.script.then([
            Answer::Status(500),
            Answer::Status(503),
            Answer::Status(200),
            Answer::Status(500),
        ]);
        let mut tasks = Vec::new();
        for n in 0..8 {
            for conversation in [first.clone(), second.clone()] {
                let rig = rig.clone();
                tasks.push(tokio::spawn(async move {
                    rig.reply(&conversation, &format!("reply {n}")).await
                }));
            }
        }
        for task in tasks {
            task.await.unwrap();
        }
        rig.settled().await;

        for conversation in [&first, &second] {
            let sequences: Vec<i64> = rig
                .script
                .received()
                .iter()
                .filter(|r| r.answered == 200)
                .map(Received::json)
                .filter(|b| b["conversationId"] == conversation.as_str())
                .map(|b| b["message"]["sequence"].as_i64().unwrap())
                .collect();
            assert_eq!(sequences, (2..=9).collect::<Vec<i64>>(), "{conversation}");
        }
        assert!(rig.statuses().await.iter().all(|s| s.starts_with("done|")));
        rig.queue.shutdown();
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_500_then_a_200_is_retried_under_the_same_delivery_id() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    rig.script.then([Answer::Status(500), Answer::Status(502)]);
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;

    let received = rig.script.received();
    assert_eq!(
        received.iter().map(|r| r.answered).collect::<Vec<_>>(),
        vec![500, 502, 200]
    );
    assert!(
        received
            .iter()
            .all(|r| r.delivery_id == received[0].delivery_id)
    );
    assert!(received.iter().all(|r| r.body == received[0].body));
    for r in &received {
        verifies(&rig.secret, r).unwrap();
    }
    assert_eq!(rig.statuses().await, vec!["done|3"]);
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_is_not_retried_and_the_agent_is_told() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    let mut events = rig.notifier.subscribe();
    rig.script.then([Answer::Status(400)]);
    let conversation = rig.conversation("cust-1").await;
    let message = rig.reply(&conversation, "Done.").await;
    rig.settled().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert_eq!(rig.script.received().len(), 1);
    assert_eq!(rig.statuses().await, vec!["failed|1"]);
    let error = column(
        &rig.store,
        r#"SELECT "lastError" FROM "Job" WHERE "kind" = 'delivery'"#,
    )
    .await;
    assert!(error[0].contains("400"), "{error:?}");

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let event = tokio::time::timeout_at(deadline.into(), events.recv())
            .await
            .expect("an error event")
            .unwrap();
        if let Frame::DeliveryFailed {
            conversation_id,
            message_id,
            delivery_id,
            code,
            event: kind,
            ..
        } = &event.frame
        {
            assert_eq!(conversation_id, &conversation);
            assert_eq!(message_id, &message);
            assert_eq!(delivery_id, &rig.script.received()[0].delivery_id);
            assert_eq!(*code, "delivery_failed");
            assert_eq!(kind, "message");
            assert_eq!(event.audience.agents, vec![rig.agent.agent_id.clone()]);
            let frame = serde_json::to_value(&event.frame).unwrap();
            assert_eq!(frame["type"], "error");
            assert_eq!(frame["conversationId"], conversation.as_str());
            break;
        }
    }
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_attempt_limit_fails_the_delivery_and_tells_the_agent() {
    let rig = rig(Backend::File, fast(3), &[]).await;
    let mut events = rig.notifier.subscribe();
    rig.script
        .then(std::iter::repeat_n(Answer::Status(503), 10));
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;

    assert_eq!(rig.script.received().len(), 3);
    assert_eq!(rig.statuses().await, vec!["failed|3"]);
    let failed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let event = events.recv().await.unwrap();
            if matches!(event.frame, Frame::DeliveryFailed { .. }) {
                return event;
            }
        }
    })
    .await
    .expect("an error event");
    assert_eq!(failed.audience.agents, vec![rig.agent.agent_id.clone()]);
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_is_retried() {
    let settings = DeliverySettings {
        timeout: Duration::from_millis(300),
        ..fast(5)
    };
    let rig = rig(Backend::File, settings, &[]).await;
    rig.script
        .then([Answer::SlowThen(Duration::from_secs(2), 200)]);
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;

    let received = rig.script.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].delivery_id, received[1].delivery_id);
    assert_eq!(rig.statuses().await, vec!["done|2"]);
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_waits_as_long_as_retry_after_says() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    rig.script.then([Answer::RetryAfter(429, "1")]);
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;

    let received = rig.script.received();
    assert_eq!(received.len(), 2);
    let waited = received[1].at - received[0].at;
    // The backoff alone would be at most 20 ms.
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    assert_eq!(rig.statuses().await, vec!["done|2"]);
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_from_the_receiver_is_not_followed() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    rig.script.then([Answer::Redirect]);
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    assert_eq!(rig.script.received().len(), 1);
    assert_eq!(*rig.script.followed.lock().unwrap(), 0);
    assert_eq!(rig.statuses().await, vec!["failed|1"]);
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_secret_signs_alone_and_the_old_one_stops_verifying() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    let rotated = rig.configure(&rig.url, true, true).await.unwrap();
    let new_secret = rotated.secret.expect("a rotated secret is shown");
    assert_ne!(new_secret, rig.secret);

    // Configuring again without rotation keeps the secret and shows none.
    let again = rig.configure(&rig.url, true, false).await.unwrap();
    assert!(again.secret.is_none());

    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;
    let received = rig.script.received();
    assert_eq!(received.len(), 1);
    verifies(&new_secret, &received[0]).expect("the new secret verifies");
    assert!(matches!(
        verifies(&rig.secret, &received[0]),
        Err(VerifyError::Mismatch)
    ));
    rig.queue.shutdown();
}

both_backends!(
    closed_and_transferred_are_delivered_only_when_opted_in,
    |backend| {
        let rig = rig(
            backend,
            fast(5),
            &[DeliveryEvent::Closed, DeliveryEvent::Transferred],
        )
        .await;
        let conversation = rig.conversation("cust-1").await;
        rig.router
            .transfer(&rig.business, &conversation, "Billing")
            .await
            .unwrap();
        rig.router
            .close(&rig.business, &conversation)
            .await
            .unwrap();
        rig.settled().await;
        let bodies: Vec<Value> = rig.script.received().iter().map(Received::json).collect();
        assert_eq!(bodies.len(), 2);
        assert_eq!(bodies[0]["event"], "transferred");
        assert_eq!(bodies[0]["fromDepartment"], "Support");
        assert_eq!(bodies[0]["department"], "Billing");
        assert_eq!(bodies[1]["event"], "closed");
        // Both carry the conversation's latest message, the customer's first here.
        for body in &bodies {
            assert_eq!(body["message"]["sender"], "customer");
            assert_eq!(body["message"]["sequence"], 1);
            assert_eq!(body["customerId"], "cust-1");
        }

        // Without the opt-in, only messages are delivered.
        rig.configure(&rig.url, true, false).await.unwrap();
        let other = rig.conversation("cust-2").await;
        rig.router.close(&rig.business, &other).await.unwrap();
        assert_eq!(
            count(&rig.store, r#"SELECT count(*) FROM "Delivery""#).await,
            2
        );
        rig.queue.shutdown();
    }
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_urls_are_never_stored_and_a_refused_stored_url_is_never_sent_to() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    let before = column(&rig.store, r#"SELECT "url" FROM "CallbackEndpoint""#).await;
    // Literal addresses: refused by the check itself, before any resolution or
    // connection.
    for (url, loopback) in [
        ("https://10.1.2.3/hook", false),
        ("https://172.16.0.9/hook", false),
        ("https://127.0.0.1/hook", false),
        ("http://127.0.0.1:9/hook", false),
        ("https://localhost/hook", false),
        ("https://169.254.169.254/latest/meta-data/", false),
        ("https://169.254.169.254/latest/meta-data/", true),
        ("https://[fe80::1]/hook", true),
        ("https://[::ffff:10.0.0.1]/hook", true),
        ("http://hooks.example.com/hook", true),
    ] {
        let refused = rig.configure(url, loopback, true).await;
        assert!(
            matches!(refused, Err(EndpointError::Address(_))),
            "{url}: {refused:?}"
        );
    }
    assert_eq!(
        column(&rig.store, r#"SELECT "url" FROM "CallbackEndpoint""#).await,
        before
    );

    // A row changed behind the check's back (or loopback on a process that does not
    // allow it) is checked again before sending, and the delivery fails at once.
    let conn = rig.store.writer().await.unwrap();
    conn.execute(
        r#"UPDATE "CallbackEndpoint" SET "url" = 'https://10.0.0.1/hook'"#,
        (),
    )
    .await
    .unwrap();
    drop(conn);
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;
    assert_eq!(rig.statuses().await, vec!["failed|1"]);
    let error = column(
        &rig.store,
        r#"SELECT "lastError" FROM "Job" WHERE "kind" = 'delivery'"#,
    )
    .await;
    assert!(error[0].contains("not a public address"), "{error:?}");
    assert!(rig.script.received().is_empty());
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deliverer_that_does_not_allow_loopback_refuses_a_loopback_endpoint() {
    let settings = DeliverySettings {
        allow_loopback: false,
        ..fast(5)
    };
    let rig = rig(Backend::File, settings, &[]).await;
    let conversation = rig.conversation("cust-1").await;
    rig.reply(&conversation, "Done.").await;
    rig.settled().await;
    assert_eq!(rig.statuses().await, vec!["failed|1"]);
    assert!(rig.script.received().is_empty());
    rig.queue.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_hands_over_deliveries_a_lost_queue_never_took() {
    let rig = rig(Backend::File, fast(5), &[]).await;
    // A router without a delivery queue, as in a one-off command: the delivery is only
    // stored, ready for the next sweep.
    let detached = Router::new(
        rig.store.clone(),
        Arc::new(Chain::new(vec![Arc::new(ToSupport)])),
        Arc::new(rig.notifier.clone()),
        3,
    );
    let conversation = rig.conversation("cust-1").await;
    detached
        .reply(&rig.agent, &conversation, "Done.", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rig.script.received().is_empty());
    assert_eq!(rig.statuses().await, vec!["pending|0"]);

    let report = rig
        .router
        .sweep(&rig.queue, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(report.requeued, 1);
    rig.settled().await;
    assert_eq!(rig.script.received().len(), 1);
    assert_eq!(rig.statuses().await, vec!["done|1"]);
    rig.queue.shutdown();
}
