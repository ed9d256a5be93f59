//! The webhook over real HTTP through the local gateway, on a fresh database each.

#[path = "../../shared/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use chat_router::ingest::Job;
use chat_router::queue::{JobQueue, OutboxOnly, QueueError};
use chat_router::store::Store;
use chat_router::tenants::{self, BusinessConfig};
use chat_router::webhook::Webhook;
use common::{Backend, TestDb, count};
use serde_json::{Value, json};

const DEMO: &str = include_str!("../../tenants/demo.json");

struct App {
    url: String,
    store: Arc<Store>,
    business_id: String,
    key: String,
    client: reqwest::Client,
    _db: TestDb,
}

impl App {
    async fn spawn(backend: Backend) -> App {
        App::spawn_with_queue(backend, Arc::new(OutboxOnly)).await
    }

    async fn spawn_with_queue(backend: Backend, queue: Arc<dyn JobQueue>) -> App {
        let db = TestDb::new(backend).await;
        let store = Arc::new(db.store().await);
        let config: BusinessConfig = serde_json::from_str(DEMO).unwrap();
        let business = tenants::create_business(&store, &config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let webhook = Webhook::new(store.clone(), queue);
        tokio::spawn(chat_router_local::gateway::serve(
            listener,
            webhook,
            std::future::pending(),
        ));
        App {
            url,
            store,
            business_id: business.id,
            key: business.webhook_key,
            client: reqwest::Client::new(),
            _db: db,
        }
    }

    fn post(&self) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/webhook/message", self.url))
            .bearer_auth(&self.key)
            .header("content-type", "application/json")
    }

    async fn send_json(&self, body: &Value) -> (u16, Value) {
        answer(self.post().body(body.to_string()).send().await.unwrap()).await
    }

    /// Row counts of every table a message touches.
    async fn stored(&self) -> [i64; 4] {
        let mut out = [0; 4];
        for (i, table) in ["Conversation", "Message", "Job", "IdempotencyRecord"]
            .iter()
            .enumerate()
        {
            out[i] = count(&self.store, &format!(r#"SELECT count(*) FROM "{table}""#)).await;
        }
        out
    }
}

async fn answer(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(content_type.as_deref(), Some("application/json"));
    (status, body)
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().expect("an error code")
}

both_backends!(the_minimal_payload_is_accepted_and_stored, |backend| {
    let app = App::spawn(backend).await;
    let (status, body) = app
        .send_json(&json!({"businessId": app.business_id, "message": "I want to know the price"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "Received");
    let conversation_id = body["conversationId"].as_str().unwrap();
    let message_id = body["messageId"].as_str().unwrap();

    let conversation =
        chat_router::conversations::get(&app.store, &app.business_id, conversation_id)
            .await
            .unwrap()
            .expect("the conversation is stored");
    assert_eq!(
        (
            conversation.status.as_str(),
            conversation.department.as_str()
        ),
        ("pending", "")
    );
    let messages = chat_router::conversations::messages(&app.store, conversation_id)
        .await
        .unwrap();
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].id, message_id);
    assert_eq!(messages[0].sender, "customer");
    assert_eq!(messages[0].content, "I want to know the price");
    assert_eq!(app.stored().await, [1, 1, 1, 0]);
});

both_backends!(
    every_bad_request_gets_its_error_and_stores_nothing,
    |backend| {
        let app = App::spawn(backend).await;
        let other = tenants::create_business(&app.store, &serde_json::from_str(DEMO).unwrap())
            .await
            .unwrap();
        let id = app.business_id.clone();
        let url = format!("{}/webhook/message", app.url);
        let valid = json!({"businessId": id, "message": "hello"}).to_string();
        let c = &app.client;

        let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
            (
                "malformed JSON",
                app.post().body("{\"businessId\": "),
                400,
                "invalid_json",
            ),
            (
                "not an object",
                app.post().body("[1, 2]"),
                400,
                "invalid_body",
            ),
            (
                "missing businessId",
                app.post().body(json!({"message": "hi"}).to_string()),
                400,
                "missing_field",
            ),
            (
                "missing message",
                app.post().body(json!({"businessId": id}).to_string()),
                400,
                "missing_field",
            ),
            (
                "null message",
                app.post()
                    .body(json!({"businessId": id, "message": null}).to_string()),
                400,
                "missing_field",
            ),
            (
                "empty message",
                app.post()
                    .body(json!({"businessId": id, "message": ""}).to_string()),
                400,
                "invalid_field",
            ),
            (
                "blank message",
                app.post()
                    .body(json!({"businessId": id, "message": " \n\t "}).to_string()),
                400,
                "invalid_field",
            ),
            (
                "message a number",
                app.post()
                    .body(json!({"businessId": id, "message": 42}).to_string()),
                400,
                "invalid_field",
            ),
            (
                "businessId an object",
                app.post()
                    .body(json!({"businessId": {"id": id}, "message": "hi"}).to_string()),
                400,
                "invalid_field",
            ),
            (
                "customerId a number",
                app.post()
                    .body(json!({"businessId": id, "message": "hi", "customerId": 7}).to_string()),
                400,
                "invalid_field",
            ),
            (
                "customerId too long",
                app.post().body(
                    json!({"businessId": id, "message": "hi", "customerId": "c".repeat(256)})
                        .to_string(),
                ),
                400,
                "invalid_field",
            ),
            (
                "message too long",
                app.post()
                    .body(json!({"businessId": id, "message": "é".repeat(4001)}).to_string()),
                400,
                "message_too_long",
            ),
            (
                "control character",
                app.post()
                    .body(json!({"businessId": id, "message": "bell\u{7}"}).to_string()),
                400,
                "invalid_characters",
            ),
            (
                "carriage return",
                app.post()
                    .body(json!({"businessId": id, "message": "a\r\nb"}).to_string()),
                400,
                "invalid_characters",
            ),
            (
                "bad idempotency key",
                app.post()
                    .header("idempotency-key", "has space")
                    .body(valid.clone()),
                400,
                "invalid_idempotency_key",
            ),
            (
                "no key",
                c.post(&url)
                    .header("content-type", "application/json")
                    .body(valid.clone()),
                401,
                "unauthorized",
            ),
            (
                "unknown key",
                c.post(&url)
                    .bearer_auth(format!("crk_{}", "A".repeat(43)))
                    .header("content-type", "application/json")
                    .body(valid.clone()),
                401,
                "unauthorized",
            ),
            (
                "not bearer",
                c.post(&url)
                    .basic_auth("u", Some("p"))
                    .header("content-type", "application/json")
                    .body(valid.clone()),
                401,
                "unauthorized",
            ),
            (
                "another business's key",
                c.post(&url)
                    .bearer_auth(&other.webhook_key)
                    .header("content-type", "application/json")
                    .body(valid.clone()),
                403,
                "forbidden",
            ),
            (
                "a business that does not exist",
                app.post().body(
                    json!({"businessId": "00000000-0000-4000-8000-000000000000", "message": "hi"})
                        .to_string(),
                ),
                403,
                "forbidden",
            ),
            (
                "too large",
                app.post()
                    .body(json!({"businessId": id, "message": "x".repeat(70 * 1024)}).to_string()),
                413,
                "payload_too_large",
            ),
            (
                "text/plain",
                c.post(&url)
                    .bearer_auth(&app.key)
                    .header("content-type", "text/plain")
                    .body(valid.clone()),
                415,
                "unsupported_media_type",
            ),
            (
                "no content type",
                c.post(&url).bearer_auth(&app.key).body(valid.clone()),
                415,
                "unsupported_media_type",
            ),
            (
                "unknown path",
                c.post(format!("{}/webhook/messages", app.url))
                    .bearer_auth(&app.key)
                    .body(valid.clone()),
                404,
                "not_found",
            ),
            ("root", c.get(&app.url), 404, "not_found"),
            (
                "GET on the webhook",
                c.get(&url).bearer_auth(&app.key),
                405,
                "method_not_allowed",
            ),
            (
                "DELETE on health",
                c.delete(format!("{}/health", app.url)),
                405,
                "method_not_allowed",
            ),
        ];

        let mut forbidden_bodies = Vec::new();
        for (name, request, status, code) in cases {
            let before = app.stored().await;
            let (got, body) = answer(request.send().await.unwrap()).await;
            assert_eq!(got, status, "{name}: {body}");
            assert_eq!(error_code(&body), code, "{name}: {body}");
            assert!(
                body["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{name}"
            );
            assert_eq!(app.stored().await, before, "{name} stored something");
            if status == 403 {
                forbidden_bodies.push(body);
            }
        }
        // A 403 does not reveal whether the named business exists.
        assert_eq!(forbidden_bodies[0], forbidden_bodies[1]);
        assert_eq!(app.stored().await, [0, 0, 0, 0]);

        // 4,000 characters (not bytes) is still fine, and newlines and tabs are allowed.
        let (status, body) = app
            .send_json(&json!({"businessId": id, "message": format!("{}\n\t", "é".repeat(3998))}))
            .await;
        assert_eq!(status, 202, "{body}");
    }
);

both_backends!(an_idempotency_key_replays_and_conflicts, |backend| {
    let app = App::spawn(backend).await;
    let body =
        json!({"businessId": app.business_id, "message": "refund please", "customerId": "c-9"});
    let send = |body: &Value| {
        app.post()
            .header("idempotency-key", "order-123")
            .body(body.to_string())
            .send()
    };
    let (first_status, first) = answer(send(&body).await.unwrap()).await;
    assert_eq!(first_status, 202);
    let (again_status, again) = answer(send(&body).await.unwrap()).await;
    assert_eq!(again_status, 200);
    assert_eq!(first, again);
    assert_eq!(app.stored().await, [1, 1, 1, 1]);

    // Same meaning, different spelling: still the same request.
    let respaced = format!(
        "{{ \"customerId\":\"c-9\",  \"message\" : \"refund please\", \"businessId\": \"{}\" }}",
        app.business_id
    );
    let response = app
        .post()
        .header("idempotency-key", "order-123")
        .body(respaced)
        .send()
        .await
        .unwrap();
    assert_eq!(answer(response).await, (200, first.clone()));

    let changed =
        json!({"businessId": app.business_id, "message": "something else", "customerId": "c-9"});
    let (status, conflict) = answer(send(&changed).await.unwrap()).await;
    assert_eq!(status, 409);
    assert_eq!(error_code(&conflict), "idempotency_conflict");
    assert_eq!(app.stored().await, [1, 1, 1, 1]);
});

both_backends!(
    simultaneous_requests_with_one_key_store_one_message,
    |backend| {
        let app = App::spawn(backend).await;
        let body = json!({"businessId": app.business_id, "message": "once"}).to_string();
        let mut requests = Vec::new();
        for _ in 0..8 {
            requests.push(
                app.post()
                    .header("idempotency-key", "same")
                    .body(body.clone())
                    .send(),
            );
        }
        let mut statuses = Vec::new();
        let mut bodies = std::collections::HashSet::new();
        for response in futures_join(requests).await {
            let (status, body) = answer(response.unwrap()).await;
            statuses.push(status);
            bodies.insert(body.to_string());
        }
        statuses.sort();
        assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 202]);
        assert_eq!(bodies.len(), 1);
        assert_eq!(app.stored().await, [1, 1, 1, 1]);
    }
);

async fn futures_join<F>(futures: Vec<F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

struct FailingQueue(AtomicUsize);

#[async_trait]
impl JobQueue for FailingQueue {
    async fn enqueue(&self, _job: &Job) -> Result<(), QueueError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Err(QueueError("the queue is down".into()))
    }
}

#[tokio::test]
async fn a_failed_hand_off_still_answers_202_and_leaves_the_job_pending() {
    let queue = Arc::new(FailingQueue(AtomicUsize::new(0)));
    let app = App::spawn_with_queue(Backend::File, queue.clone()).await;
    let (status, body) = app
        .send_json(&json!({"businessId": app.business_id, "message": "hello"}))
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(queue.0.load(Ordering::SeqCst), 1);
    let pending = count(
        &app.store,
        &format!(
            r#"SELECT count(*) FROM "Job" WHERE "status" = 'pending' AND "messageId" = '{}'"#,
            body["messageId"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(pending, 1);
}

#[tokio::test]
async fn health_reports_the_schema_version() {
    let app = App::spawn(Backend::File).await;
    let response = app
        .client
        .get(format!("{}/health", app.url))
        .send()
        .await
        .unwrap();
    let (status, body) = answer(response).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "ok", "schemaVersion": chat_router::store::CURRENT_VERSION})
    );
}

#[tokio::test]
async fn the_sample_event_runs_through_the_handler() {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let config: BusinessConfig = serde_json::from_str(DEMO).unwrap();
    let business = tenants::create_business(&store, &config).await.unwrap();
    let webhook = Webhook::new(store.clone(), Arc::new(OutboxOnly));
    let event = include_str!("../../events/webhook-message.json");

    // As committed, the event carries placeholder credentials: a clean 401.
    let request = lambda_http::request::from_str(event).expect("the event parses");
    let response = webhook.handle(request).await;
    assert_eq!(response.status(), 401);

    // With a real key and business id it stores the minimal payload.
    let event = event
        .replace(
            "crk_REPLACE_WITH_THE_DEMO_WEBHOOK_KEY_xxxxxxxxx",
            &business.webhook_key,
        )
        .replace("00000000-0000-4000-8000-000000000000", &business.id);
    let request = lambda_http::request::from_str(&event).expect("the event parses");
    let response = webhook.handle(request).await;
    assert_eq!(response.status(), 202);
    let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
    let messages =
        chat_router::conversations::messages(&store, body["conversationId"].as_str().unwrap())
            .await
            .unwrap();
    assert_eq!(messages[0].content, "I want to know the price");
}

#[tokio::test]
async fn the_sample_health_event_runs_through_the_handler() {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let webhook = Webhook::new(store, Arc::new(OutboxOnly));
    let event = include_str!("../../events/health.json");
    let request = lambda_http::request::from_str(event).expect("the event parses");
    let response = webhook.handle(request).await;
    assert_eq!(response.status(), 200);
    let body: Value = serde_json::from_slice(response.body().as_ref()).unwrap();
    assert_eq!(
        body,
        json!({"status": "ok", "schemaVersion": chat_router::store::CURRENT_VERSION})
    );
}
