//! The WebSocket handlers over API Gateway events: every sample event in `events/ws-*`
//! through its handler, leases, revocation, and the DynamoDB connection registry
//! against a real DynamoDB API (moto) with the real aws-sdk-dynamodb client.

mod common;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::ApiGatewayWebsocketProxyRequest;
use aws_sdk_dynamodb::types::AttributeValue;
use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::realtime::dynamo::{DynamoConnections, TTL_ATTRIBUTE};
use chat_router::realtime::poster::Outbound;
use chat_router::realtime::{
    Connection, ConnectionRegistry, LocalConnections, LocalSockets, Realtime,
};
use chat_router::routing::Router;
use chat_router::store::Store;
use chat_router::tenants;
use common::{Backend, Moto, TestDb, column, count, customer_message, demo_business};
use serde_json::Value;
use tokio::sync::mpsc::Receiver;

/// The connection id the sample events carry.
const SAMPLE_CONNECTION: &str = "Ab1CdEfGhIJKLMn=";
/// The conversation id the sample events carry.
const SAMPLE_CONVERSATION: &str = "0193a6f2-7c1e-7b3a-9d2f-5e8c4b1a0f6d";
/// The token the sample `$connect` carries.
const SAMPLE_TOKEN: &str = "cra_REPLACE_WITH_AN_AGENT_TOKEN_xxxxxxxxxxxxxxx";

struct Rig {
    store: Arc<Store>,
    router: Arc<Router>,
    realtime: Realtime,
    registry: Arc<LocalConnections>,
    sockets: Arc<LocalSockets>,
    business: String,
    _db: TestDb,
}

async fn rig(lease: Duration) -> Rig {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = demo_business(&store).await;
    let registry = Arc::new(LocalConnections::new());
    let sockets = Arc::new(LocalSockets::new());
    let notifier = Realtime::notifier(store.clone(), registry.clone(), sockets.clone());
    let router = Arc::new(Router::new(
        store.clone(),
        Arc::new(Chain::new(vec![Arc::new(EmbeddedClassifier::default())])),
        notifier.clone(),
        3,
    ));
    let realtime = Realtime::new(
        store.clone(),
        router.clone(),
        registry.clone(),
        sockets.clone(),
        notifier,
        lease,
    );
    Rig {
        store,
        router,
        realtime,
        registry,
        sockets,
        business,
        _db: db,
    }
}

/// A sample event from `events/`, with the placeholders replaced.
fn sample(file: &str, replace: &[(&str, &str)]) -> ApiGatewayWebsocketProxyRequest {
    let path = common::workspace().join("events").join(file);
    let mut text = std::fs::read_to_string(&path).expect("sample event");
    for (from, to) in replace {
        text = text.replace(from, to);
    }
    let mut event: ApiGatewayWebsocketProxyRequest =
        serde_json::from_str(&text).unwrap_or_else(|err| panic!("{file} does not parse: {err}"));
    // The samples connected at a fixed time; a connection lives two hours at most, so
    // the tests connect now.
    event.request_context.connected_at = chat_router::timestamp::now_millis();
    event
}

/// The next frame on a socket, within two seconds.
async fn next(socket: &mut Receiver<Outbound>) -> Value {
    match tokio::time::timeout(Duration::from_secs(2), socket.recv()).await {
        Ok(Some(Outbound::Text(text))) => serde_json::from_str(&text).expect("a JSON frame"),
        Ok(Some(Outbound::Close)) => panic!("the socket was closed"),
        Ok(None) => panic!("the socket's channel ended"),
        Err(_) => panic!("no frame within two seconds"),
    }
}

/// The next frame of a type, skipping others.
async fn next_of(socket: &mut Receiver<Outbound>, kind: &str) -> Value {
    for _ in 0..20 {
        let frame = next(socket).await;
        if frame["type"] == kind {
            return frame;
        }
    }
    panic!("no {kind} frame")
}

/// The next frame that satisfies `wanted`, skipping others.
async fn next_where(socket: &mut Receiver<Outbound>, wanted: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..20 {
        let frame = next(socket).await;
        if wanted(&frame) {
            return frame;
        }
    }
    panic!("no such frame")
}

/// Empties a socket's queue once the events in flight have arrived.
async fn drain(socket: &mut Receiver<Outbound>) {
    tokio::time::sleep(Duration::from_millis(200)).await;
    while socket.try_recv().is_ok() {}
}

fn nothing_waiting(socket: &mut Receiver<Outbound>) -> bool {
    socket.try_recv().is_err()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sample_websocket_event_runs_through_its_handler() {
    let rig = rig(Duration::from_secs(120)).await;
    let agent = tenants::create_agent(&rig.store, &rig.business, "Bea", "Billing", 5)
        .await
        .unwrap();

    // $connect as committed carries a placeholder token: refused, nothing registered.
    let refused = rig.realtime.connect(&sample("ws-connect.json", &[])).await;
    assert_eq!(refused.status_code, 401);
    assert!(rig.registry.all().is_empty());

    let mut socket = rig.sockets.attach(SAMPLE_CONNECTION);
    let connected = rig
        .realtime
        .connect(&sample("ws-connect.json", &[(SAMPLE_TOKEN, &agent.token)]))
        .await;
    assert_eq!(connected.status_code, 200);
    let registered = rig.registry.all();
    assert_eq!(registered.len(), 1);
    assert_eq!(registered[0].agent_id, agent.id);
    assert_eq!(registered[0].department, "Billing");
    assert!(nothing_waiting(&mut socket), "$connect must post nothing");

    // sync: ready, and the (empty) lists.
    rig.realtime
        .message(&sample("ws-default-sync.json", &[]))
        .await;
    let synced = next(&mut socket).await;
    assert_eq!(synced["type"], "sync.result");
    assert_eq!(synced["agentId"], agent.id.as_str());
    assert_eq!(synced["assigned"].as_array().unwrap().len(), 0);

    rig.realtime
        .message(&sample("ws-default-ping.json", &[]))
        .await;
    assert_eq!(next(&mut socket).await["type"], "pong");

    // A billing conversation reaches the ready agent.
    let job = customer_message(
        &rig.store,
        &rig.business,
        "ana",
        "I was charged twice this month",
    )
    .await;
    rig.router.process(&job).await.unwrap();
    let assigned = next_of(&mut socket, "conversation.assigned").await;
    let conversation = job.conversation_id.as_str();
    assert_eq!(assigned["conversation"]["id"], conversation);
    assert_eq!(assigned["agentId"], agent.id.as_str());

    let ids = [(SAMPLE_CONVERSATION, conversation)];
    rig.realtime
        .message(&sample("ws-default-sendmessage.json", &ids))
        .await;
    let created = next_where(&mut socket, |f| {
        f["type"] == "message.created" && f["message"]["sender"] == "agent"
    })
    .await;
    assert_eq!(created["message"]["sequence"], 2);
    let ack = next_of(&mut socket, "ack").await;
    assert_eq!(ack["action"], "sendmessage");
    assert_eq!(ack["clientMessageId"], "c-1");
    assert_eq!(ack["messageId"], created["message"]["id"]);

    // The same clientMessageId again is the same message, not a second one.
    rig.realtime
        .message(&sample("ws-default-sendmessage.json", &ids))
        .await;
    let again = next_of(&mut socket, "ack").await;
    assert_eq!(again["messageId"], ack["messageId"]);
    assert_eq!(again["duplicate"], true);
    let sql = format!(
        r#"SELECT count(*) FROM "Message" WHERE "conversationId" = '{conversation}' AND "sender" = 'agent'"#
    );
    assert_eq!(count(&rig.store, &sql).await, 1);

    // The sample transfer names the conversation's own department: refused.
    rig.realtime
        .message(&sample("ws-default-transfer.json", &ids))
        .await;
    let refused = next_of(&mut socket, "error").await;
    assert_eq!(refused["code"], "same_department");
    assert_eq!(refused["action"], "transfer");

    let to_sales = [
        (SAMPLE_CONVERSATION, conversation),
        ("\\\"Billing\\\"", "\\\"Sales\\\""),
    ];
    rig.realtime
        .message(&sample("ws-default-transfer.json", &to_sales))
        .await;
    let transferred = next_of(&mut socket, "ack").await;
    assert_eq!(transferred["action"], "transfer");
    assert_eq!(transferred["conversation"]["department"], "Sales");

    // The agent no longer holds it: closing is refused, and nothing changes.
    rig.realtime
        .message(&sample("ws-default-close.json", &ids))
        .await;
    let refused = next_of(&mut socket, "error").await;
    assert_eq!(refused["action"], "close");
    let sql = format!(r#"SELECT "status" FROM "Conversation" WHERE "id" = '{conversation}'"#);
    assert_eq!(column(&rig.store, &sql).await, ["open"]);

    // A conversation of their own department they hold: closed.
    let job = customer_message(
        &rig.store,
        &rig.business,
        "bo",
        "I want a refund for my last payment",
    )
    .await;
    rig.router.process(&job).await.unwrap();
    next_of(&mut socket, "conversation.assigned").await;
    let own = [(SAMPLE_CONVERSATION, job.conversation_id.as_str())];
    rig.realtime
        .message(&sample("ws-default-close.json", &own))
        .await;
    let closed = next_of(&mut socket, "ack").await;
    assert_eq!(closed["action"], "close");
    assert_eq!(closed["conversation"]["status"], "closed");

    // $disconnect forgets the connection and ends the lease; twice is harmless.
    for _ in 0..2 {
        let answer = rig
            .realtime
            .disconnect(&sample("ws-disconnect.json", &[]))
            .await;
        assert_eq!(answer.status_code, 200);
    }
    assert!(rig.registry.all().is_empty());
    let sql = format!(
        r#"SELECT count(*) FROM "AgentPresence" WHERE "agentId" = '{}'"#,
        agent.id
    );
    assert_eq!(count(&rig.store, &sql).await, 0);
}

/// Connects an agent on a fresh connection id; returns it and its socket.
async fn connect(rig: &Rig, token: &str) -> (String, Receiver<Outbound>) {
    let id = format!("C{}", &chat_router::new_id().replace('-', "")[..15]);
    let socket = rig.sockets.attach(&id);
    let event = sample(
        "ws-connect.json",
        &[(SAMPLE_TOKEN, token), (SAMPLE_CONNECTION, &id)],
    );
    assert_eq!(rig.realtime.connect(&event).await.status_code, 200);
    (id, socket)
}

async fn frame(rig: &Rig, connection: &str, body: &str) {
    let mut event = sample("ws-default-ping.json", &[(SAMPLE_CONNECTION, connection)]);
    event.body = Some(body.to_owned());
    rig.realtime.message(&event).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_stops_receiving_assignments_until_they_sync_again() {
    let rig = rig(Duration::from_secs(1)).await;
    let agent = tenants::create_agent(&rig.store, &rig.business, "Bea", "Billing", 5)
        .await
        .unwrap();
    let (id, mut socket) = connect(&rig, &agent.token).await;
    frame(&rig, &id, r#"{"action":"sync"}"#).await;
    next_of(&mut socket, "sync.result").await;

    // Silent past the one-second lease.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let job = customer_message(
        &rig.store,
        &rig.business,
        "ana",
        "I was charged twice this month",
    )
    .await;
    rig.router.process(&job).await.unwrap();
    let sql = format!(
        r#"SELECT "status" || ':' || coalesce("assignedAgentId", '-') FROM "Conversation" WHERE "id" = '{}'"#,
        job.conversation_id
    );
    assert_eq!(column(&rig.store, &sql).await, ["open:-"]);

    // Syncing again makes them ready, and the waiting conversation goes to them.
    frame(&rig, &id, r#"{"action":"sync"}"#).await;
    let assigned = next_of(&mut socket, "conversation.assigned").await;
    assert_eq!(assigned["conversation"]["id"], job.conversation_id.as_str());
    assert_eq!(
        column(&rig.store, &sql).await,
        [format!("in_progress:{}", agent.id)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_an_agent_closes_their_sockets_and_their_next_frame_is_refused() {
    let rig = rig(Duration::from_secs(120)).await;
    let agent = tenants::create_agent(&rig.store, &rig.business, "Bea", "Billing", 5)
        .await
        .unwrap();
    let other = tenants::create_agent(&rig.store, &rig.business, "Cy", "Billing", 5)
        .await
        .unwrap();
    let (first, mut first_socket) = connect(&rig, &agent.token).await;
    let (second, mut second_socket) = connect(&rig, &agent.token).await;
    let (_, mut other_socket) = connect(&rig, &other.token).await;

    tenants::revoke_agent(&rig.store, &agent.id).await.unwrap();
    let closed = rig
        .realtime
        .disconnect_agent(&rig.business, &agent.id)
        .await
        .unwrap();
    assert_eq!(closed, 2);
    for socket in [&mut first_socket, &mut second_socket] {
        let told = next(socket).await;
        assert_eq!(told["code"], "unauthorized");
        assert!(matches!(socket.recv().await, Some(Outbound::Close)));
    }
    assert!(!rig.sockets.contains(&first) && !rig.sockets.contains(&second));
    let left: Vec<String> = rig.registry.all().into_iter().map(|c| c.agent_id).collect();
    assert_eq!(left, [other.id.as_str()]);
    assert!(nothing_waiting(&mut other_socket));

    // A connection the revocation missed (another process's) goes at its next frame.
    let fresh = tenants::issue_agent_token(&rig.store, &other.id)
        .await
        .unwrap();
    let (third, mut third_socket) = connect(&rig, &fresh).await;
    tenants::revoke_agent(&rig.store, &other.id).await.unwrap();
    frame(&rig, &third, r#"{"action":"ping"}"#).await;
    assert_eq!(next(&mut third_socket).await["code"], "unauthorized");
    assert!(!rig.sockets.contains(&third));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_other_tenants_conversations_answer_errors_and_change_nothing() {
    let rig = rig(Duration::from_secs(120)).await;
    let other_business = {
        let text = std::fs::read_to_string(common::workspace().join("tenants/demo.json")).unwrap();
        let mut config: tenants::BusinessConfig = serde_json::from_str(&text).unwrap();
        config.name = "Other Shop".into();
        tenants::create_business(&rig.store, &config)
            .await
            .unwrap()
            .id
    };
    let ours = tenants::create_agent(&rig.store, &rig.business, "Bea", "Billing", 5)
        .await
        .unwrap();
    let sales = tenants::create_agent(&rig.store, &rig.business, "Sam", "Sales", 5)
        .await
        .unwrap();
    let theirs = tenants::create_agent(&rig.store, &other_business, "Eve", "Billing", 5)
        .await
        .unwrap();
    let (ours_id, mut ours_socket) = connect(&rig, &ours.token).await;
    frame(&rig, &ours_id, r#"{"action":"sync"}"#).await;
    next_of(&mut ours_socket, "sync.result").await;
    let (sales_id, mut sales_socket) = connect(&rig, &sales.token).await;
    let (eve_id, mut eve_socket) = connect(&rig, &theirs.token).await;
    frame(&rig, &eve_id, r#"{"action":"sync"}"#).await;
    next_of(&mut eve_socket, "sync.result").await;

    let job = customer_message(
        &rig.store,
        &rig.business,
        "ana",
        "I was charged twice this month",
    )
    .await;
    rig.router.process(&job).await.unwrap();
    next_of(&mut ours_socket, "conversation.assigned").await;
    drain(&mut ours_socket).await;
    let conversation = job.conversation_id.as_str();
    let snapshot = |store: Arc<Store>| async move {
        column(
            &store,
            r#"SELECT "id" || "status" || coalesce("assignedAgentId", '') || "department" FROM "Conversation"
               UNION ALL SELECT "id" || "content" FROM "Message" ORDER BY 1"#,
        )
        .await
    };
    let before = snapshot(rig.store.clone()).await;

    let cases: Vec<(&str, String, &str)> = vec![
        (&eve_id, "not json".into(), "bad_frame"),
        (&eve_id, r#"{"no":"action"}"#.into(), "bad_frame"),
        (&eve_id, r#"{"action":"dance"}"#.into(), "unknown_action"),
        (
            &eve_id,
            r#"{"action":"sendmessage"}"#.into(),
            "invalid_frame",
        ),
        (
            &eve_id,
            format!(r#"{{"action":"sendmessage","conversationId":"{conversation}","content":""}}"#),
            "invalid_frame",
        ),
        (
            &eve_id,
            format!(
                r#"{{"action":"sendmessage","conversationId":"{conversation}","content":"mine now"}}"#
            ),
            "not_found",
        ),
        (
            &eve_id,
            format!(r#"{{"action":"close","conversationId":"{conversation}"}}"#),
            "not_found",
        ),
        (
            &eve_id,
            format!(
                r#"{{"action":"transfer","conversationId":"{conversation}","department":"Sales"}}"#
            ),
            "not_found",
        ),
        (
            &sales_id,
            format!(
                r#"{{"action":"sendmessage","conversationId":"{conversation}","content":"hi"}}"#
            ),
            "forbidden",
        ),
        (
            &sales_id,
            format!(r#"{{"action":"close","conversationId":"{conversation}"}}"#),
            "forbidden",
        ),
        (
            &ours_id,
            format!(
                r#"{{"action":"transfer","conversationId":"{conversation}","department":"Nowhere"}}"#
            ),
            "unknown_department",
        ),
    ];
    for (connection, body, code) in &cases {
        frame(&rig, connection, body).await;
        let socket = if *connection == eve_id.as_str() {
            &mut eve_socket
        } else if *connection == sales_id.as_str() {
            &mut sales_socket
        } else {
            &mut ours_socket
        };
        let answer = next(socket).await;
        assert_eq!(answer["type"], "error", "{body}");
        assert_eq!(answer["code"], *code, "{body}");
    }
    assert_eq!(snapshot(rig.store.clone()).await, before);
    // Nobody else heard about any of it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(nothing_waiting(&mut ours_socket));
    assert!(nothing_waiting(&mut eve_socket));
    assert!(nothing_waiting(&mut sales_socket));
}

// ---- DynamoDB --------------------------------------------------------------------

fn dynamodb(moto: &Moto) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .http_client(chat_router::aws::http_client())
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(&moto.endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

fn connection(id: &str, business: &str, agent: &str, department: &str, expires: i64) -> Connection {
    Connection {
        connection_id: id.to_owned(),
        business_id: business.to_owned(),
        agent_id: agent.to_owned(),
        department: department.to_owned(),
        credential_id: format!("cred-{agent}"),
        connected_at_ms: 1_000,
        expires_at_ms: expires,
    }
}

fn ids(connections: Vec<Connection>) -> Vec<String> {
    let mut ids: Vec<String> = connections.into_iter().map(|c| c.connection_id).collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dynamodb_registry_indexes_expires_and_removes_connections() {
    let moto = Moto::start().await;
    let client = dynamodb(&moto);
    DynamoConnections::create_table(&client, "connections")
        .await
        .expect("create the table");
    let ttl = client
        .describe_time_to_live()
        .table_name("connections")
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some(TTL_ATTRIBUTE));

    let registry = DynamoConnections::new(client.clone(), "connections");
    let now = 1_800_000_000_000_i64;
    let live = now + 600_000;
    for c in [
        connection("a1", "biz-a", "ann", "Billing", live),
        connection("a2", "biz-a", "ann", "Billing", live),
        connection("a3", "biz-a", "sam", "Sales", live),
        connection("a4", "biz-a", "old", "Billing", now - 1),
        connection("b1", "biz-b", "ann", "Billing", live),
    ] {
        registry.register(&c).await.unwrap();
    }

    // The TTL attribute is epoch seconds, as DynamoDB's TTL requires, rounded up so
    // DynamoDB never deletes an entry before it expires.
    let item = client
        .get_item()
        .table_name("connections")
        .key("connectionId", AttributeValue::S("a1".into()))
        .send()
        .await
        .unwrap();
    let item = item.item().unwrap();
    assert_eq!(
        item.get(TTL_ATTRIBUTE)
            .and_then(|v| v.as_n().ok())
            .map(String::as_str),
        Some((live / 1000 + 1).to_string().as_str())
    );

    // Index queries stay inside one business and leave expired entries out (DynamoDB
    // deletes them late), as does a direct read.
    assert_eq!(
        ids(registry
            .in_department("biz-a", "Billing", now)
            .await
            .unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        ids(registry.in_department("biz-a", "Sales", now).await.unwrap()),
        ["a3"]
    );
    assert_eq!(
        ids(registry.of_agent("biz-a", "ann", now).await.unwrap()),
        ["a1", "a2"]
    );
    assert_eq!(
        ids(registry.of_agent("biz-b", "ann", now).await.unwrap()),
        ["b1"]
    );
    assert!(registry.get("a4", now).await.unwrap().is_none());
    let got = registry.get("a1", now).await.unwrap().unwrap();
    assert_eq!(got, connection("a1", "biz-a", "ann", "Billing", live));

    // Renewing moves the expiry; an unknown connection is not created by it.
    assert!(registry.renew("a1", live + 5_000).await.unwrap());
    assert!(!registry.renew("nope", live).await.unwrap());
    assert!(registry.get("nope", now).await.unwrap().is_none());
    assert_eq!(
        registry
            .get("a1", live + 1)
            .await
            .unwrap()
            .map(|c| c.expires_at_ms),
        Some(live + 5_000)
    );

    // Removal returns what was there, once.
    let removed = registry.unregister("a1").await.unwrap().unwrap();
    assert_eq!(removed.agent_id, "ann");
    assert!(registry.unregister("a1").await.unwrap().is_none());
    assert_eq!(
        ids(registry.of_agent("biz-a", "ann", now).await.unwrap()),
        ["a2"]
    );
}
