//! Deliveries through the whole local product: a process stopped in the middle of
//! retries and a new one started on the same database file.

#[path = "../../shared/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_router::callback::deliver::DeliverySettings;
use chat_router::callback::endpoint::{self, EndpointRequest};
use chat_router::callback::secret::EncryptionKey;
use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::routing::AgentRef;
use chat_router::store::Store;
use chat_router::tenants;
use chat_router_local::app::{App, Settings};
use common::receiver::{Answer, Script, receiver};
use common::{Backend, TestDb, column, count, customer_message, demo_business};

fn settings(key: &EncryptionKey) -> Settings {
    Settings {
        delivery: DeliverySettings {
            max_attempts: 100,
            first_retry: Duration::from_millis(20),
            max_retry: Duration::from_millis(100),
            timeout: Duration::from_secs(2),
            allow_loopback: true,
        },
        callback_key: Some(key.clone()),
        ..Settings::default()
    }
}

fn chain() -> Chain {
    Chain::new(vec![Arc::new(EmbeddedClassifier::default())])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_retries_loses_no_delivery() {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = demo_business(&store).await;
    let key = EncryptionKey::generate();
    let script = Script::default();
    script.then(std::iter::repeat_n(Answer::Status(500), 1000));
    let url = receiver(script.clone()).await;
    let secret = endpoint::configure(
        &store,
        &key,
        &EndpointRequest {
            business_id: business.clone(),
            url,
            events: vec![],
            allow_loopback: true,
            rotate_secret: false,
        },
    )
    .await
    .unwrap()
    .secret
    .unwrap();
    let agent = tenants::create_agent(&store, &business, "Ann", "Billing", 5)
        .await
        .unwrap();

    // The first process: the reply's delivery meets a receiver answering 500.
    let app = App::start(store.clone(), chain(), &settings(&key));
    app.router
        .agent_available(&agent.id, chat_router::timestamp::now_millis() + 3_600_000)
        .await
        .unwrap();
    let job = customer_message(&store, &business, "ana", "I was charged twice this month").await;
    app.router.process(&job).await.unwrap();
    let me = AgentRef {
        business_id: business.clone(),
        agent_id: agent.id.clone(),
        department: "Billing".into(),
    };
    app.router
        .reply(&me, &job.conversation_id, "Refunded.", None)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while script.received().len() < 3 {
        assert!(Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.stop();
    drop(app);
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let failed_before = script.received().len();

    // The next process on the same file, with the receiver back.
    script.answer_ok_from_now();
    let store = Arc::new(Store::open(db.location.clone()).await.unwrap());
    let app = App::start(store.clone(), chain(), &settings(&key));
    let deadline = Instant::now() + Duration::from_secs(15);
    while count(
        &store,
        r#"SELECT count(*) FROM "Job" WHERE "kind" = 'delivery' AND "status" = 'pending'"#,
    )
    .await
        > 0
    {
        assert!(Instant::now() < deadline, "the delivery is still pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let received = script.received();
    assert!(received.len() > failed_before);
    assert_eq!(received.last().unwrap().answered, 200);
    assert!(
        received
            .iter()
            .all(|r| r.delivery_id == received[0].delivery_id)
    );
    for r in &received {
        chat_router::callback::signature::verify(
            secret.as_bytes(),
            &r.signature,
            &r.body,
            chrono::Utc::now().timestamp(),
            chat_router::callback::signature::DEFAULT_TOLERANCE,
        )
        .unwrap();
    }
    let stored = column(
        &store,
        r#"SELECT "status" || '|' || "attempts" FROM "Job" WHERE "kind" = 'delivery'"#,
    )
    .await;
    assert_eq!(stored.len(), 1);
    let (status, attempts) = stored[0].split_once('|').unwrap();
    assert_eq!(status, "done");
    assert!(attempts.parse::<usize>().unwrap() >= received.len());
    app.stop();
}
