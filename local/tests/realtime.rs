//! Agents over real WebSockets: `chat-router serve` on port 0 with real clients, and
//! the local gateway's management API (`@connections`) with the real
//! aws-sdk-apigatewaymanagement client, including a connection gone mid-fan-out.

#[path = "../../shared/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::{Child, Command, Output};
use std::sync::Arc;
use std::time::Duration;

use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::events::{Audience, ConversationView, Event, Frame, Notifier};
use chat_router::realtime::{ApiGatewayPoster, Connection, ConnectionRegistry, SocketNotifier};
use chat_router::tenants;
use chat_router_local::app::{App, Settings};
use common::{Backend, TestDb};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_chat-router");

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn cli(db: &Path, args: &[&str]) -> Value {
    let output: Output = Command::new(BIN)
        .args(args)
        .env("DATABASE_URL", db)
        .env("RUST_LOG", "warn")
        .env_remove("CONNECTIONS_TABLE")
        .env_remove("WEBSOCKET_ENDPOINT")
        .output()
        .expect("runs chat-router");
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("JSON on stdout")
}

struct Serve {
    child: Child,
    addr: String,
}

impl Serve {
    fn start(db: &Path) -> Serve {
        let (child, ready) = common::spawn_serve(BIN, db, &[]);
        Serve {
            child,
            addr: ready["listening"].as_str().unwrap().to_owned(),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open(addr: &str, token: &str) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}"))
        .await
        .expect("the WebSocket opens");
    ws
}

/// The HTTP status a refused WebSocket upgrade answers.
async fn refused(addr: &str, query: &str) -> u16 {
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws{query}")).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("the connection was accepted"),
    }
}

async fn send(ws: &mut Ws, frame: Value) {
    ws.send(Message::text(frame.to_string())).await.unwrap();
}

/// The next text frame, within five seconds.
async fn recv(ws: &mut Ws) -> Value {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a frame within five seconds")
            .expect("the socket is open")
            .expect("a readable frame");
        match message {
            Message::Text(text) => return serde_json::from_str(&text).expect("JSON"),
            Message::Close(close) => panic!("closed: {close:?}"),
            _ => {}
        }
    }
}

/// Frames up to and including the first of `kind`.
async fn until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    for _ in 0..20 {
        let frame = recv(ws).await;
        let done = frame["type"] == kind;
        seen.push(frame);
        if done {
            return seen;
        }
    }
    panic!("no {kind} among {seen:?}")
}

/// Whether no text frame arrives for a while (pings answer after every event sent
/// before them, so a pong first means nothing else was queued).
async fn hears_nothing(ws: &mut Ws) -> bool {
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(ws, json!({"action": "ping"})).await;
    let frame = recv(ws).await;
    frame["type"] == "pong"
}

/// Whether the server closes the socket within five seconds.
async fn closed_by_server(ws: &mut Ws) -> Vec<Value> {
    let mut before = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let message = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the server closes the socket within five seconds");
        match message {
            Some(Ok(Message::Text(text))) => before.push(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return before,
            Some(Ok(_)) => {}
        }
    }
}

async fn post(addr: &str, key: &str, business: &str, customer: &str, text: &str) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/webhook/message"))
        .bearer_auth(key)
        .json(&json!({"businessId": business, "customerId": customer, "message": text}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_work_conversations_live_through_chat_router_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("live.db");
    let db = db.as_path();
    let demo = common::workspace().join("tenants/demo.json");
    let a = cli(
        db,
        &["business", "create", "--config", demo.to_str().unwrap()],
    );
    let mut other: Value = serde_json::from_str(&std::fs::read_to_string(&demo).unwrap()).unwrap();
    other["name"] = json!("Other Shop");
    let other_file = dir.path().join("other.json");
    std::fs::write(&other_file, other.to_string()).unwrap();
    let b = cli(
        db,
        &[
            "business",
            "create",
            "--config",
            other_file.to_str().unwrap(),
        ],
    );
    let (a_id, a_key) = (a["id"].as_str().unwrap(), a["webhookKey"].as_str().unwrap());
    let b_id = b["id"].as_str().unwrap();
    let agent = |business: &str, name: &str, department: &str| {
        cli(
            db,
            &[
                "agent",
                "create",
                "--business",
                business,
                "--name",
                name,
                "--department",
                department,
            ],
        )
    };
    let bea = agent(a_id, "Bea", "Billing");
    let sam = agent(a_id, "Sam", "Sales");
    let eve = agent(b_id, "Eve", "Billing");

    let serve = Serve::start(db);
    let addr = serve.addr.as_str();

    // Unknown, missing and revoked-looking tokens are refused before any upgrade.
    assert_eq!(refused(addr, "").await, 401);
    assert_eq!(
        refused(addr, &format!("?token=cra_{}", "A".repeat(43))).await,
        401
    );
    assert_eq!(refused(addr, &format!("?token={a_key}")).await, 401);

    let mut sockets = Vec::new();
    for who in [&bea, &sam, &eve] {
        let mut ws = open(addr, who["token"].as_str().unwrap()).await;
        send(&mut ws, json!({"action": "sync"})).await;
        let synced = recv(&mut ws).await;
        assert_eq!(synced["type"], "sync.result");
        assert_eq!(synced["agentId"], who["id"]);
        sockets.push(ws);
    }
    let [mut bea_ws, mut sam_ws, mut eve_ws]: [Ws; 3] = sockets.try_into().ok().unwrap();

    // A billing message of business A reaches A's billing agent: routed, then assigned.
    let first = post(
        addr,
        a_key,
        a_id,
        "cust-1",
        "I was charged twice this month",
    )
    .await;
    let conversation = first["conversationId"].as_str().unwrap().to_owned();
    let frames = until(&mut bea_ws, "conversation.assigned").await;
    let kinds: Vec<&str> = frames.iter().map(|f| f["type"].as_str().unwrap()).collect();
    let routed = kinds.iter().position(|k| *k == "conversation.routed");
    assert!(routed.is_some(), "{kinds:?}");
    let routed = &frames[routed.unwrap()];
    assert_eq!(routed["conversation"]["id"], conversation.as_str());
    assert_eq!(routed["conversation"]["department"], "Billing");
    let assigned = frames.last().unwrap();
    assert_eq!(assigned["agentId"], bea["id"]);
    assert_eq!(assigned["conversation"]["status"], "in_progress");
    // Not A's sales agent, never B's agent.
    assert!(hears_nothing(&mut sam_ws).await);
    assert!(hears_nothing(&mut eve_ws).await);

    // The agent replies; the ack names the stored message and the client's id.
    send(
        &mut bea_ws,
        json!({"action": "sendmessage", "conversationId": conversation, "content": "Refunded.", "clientMessageId": "r-1"}),
    )
    .await;
    let frames = until(&mut bea_ws, "ack").await;
    let ack = frames.last().unwrap();
    assert_eq!(ack["clientMessageId"], "r-1");
    let created = frames
        .iter()
        .find(|f| f["type"] == "message.created" && f["message"]["sender"] == "agent")
        .expect("the agent sees their own message");
    assert_eq!(created["message"]["id"], ack["messageId"]);
    assert_eq!(created["message"]["sender"], "agent");
    assert_eq!(created["message"]["sequence"], 2);

    // The customer's follow-up reaches the assigned agent, in sequence.
    let follow = post(addr, a_key, a_id, "cust-1", "Thanks! When will I see it?").await;
    assert_eq!(follow["conversationId"], conversation.as_str());
    let created = until(&mut bea_ws, "message.created").await.pop().unwrap();
    assert_eq!(created["message"]["sender"], "customer");
    assert_eq!(created["message"]["sequence"], 3);
    assert_eq!(created["conversationId"], conversation.as_str());
    assert!(hears_nothing(&mut eve_ws).await);

    // Business B's agent cannot touch it; the frame answers an error to them alone.
    send(
        &mut eve_ws,
        json!({"action": "sendmessage", "conversationId": conversation, "content": "hi"}),
    )
    .await;
    let error = recv(&mut eve_ws).await;
    assert_eq!(
        (error["type"].as_str(), error["code"].as_str()),
        (Some("error"), Some("not_found"))
    );
    assert_eq!(error["action"], "sendmessage");
    assert!(hears_nothing(&mut bea_ws).await);

    // Transfer to Sales: the ready sales agent gets it.
    send(
        &mut bea_ws,
        json!({"action": "transfer", "conversationId": conversation, "department": "Sales"}),
    )
    .await;
    let ack = until(&mut bea_ws, "ack").await.pop().unwrap();
    assert_eq!(ack["action"], "transfer");
    assert_eq!(ack["conversation"]["department"], "Sales");
    let frames = until(&mut sam_ws, "conversation.assigned").await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "conversation.transferred" && f["fromDepartment"] == "Billing")
    );
    assert_eq!(frames.last().unwrap()["agentId"], sam["id"]);

    // The sales agent closes it.
    send(
        &mut sam_ws,
        json!({"action": "close", "conversationId": conversation}),
    )
    .await;
    let frames = until(&mut sam_ws, "ack").await;
    assert!(frames.iter().any(|f| f["type"] == "conversation.closed"));
    assert_eq!(frames.last().unwrap()["conversation"]["status"], "closed");

    // Malformed frames answer errors; a frame over 32 KB ends the connection.
    send(&mut eve_ws, json!({"action": "dance"})).await;
    assert_eq!(recv(&mut eve_ws).await["code"], "unknown_action");
    eve_ws.send(Message::text("{not json")).await.unwrap();
    assert_eq!(recv(&mut eve_ws).await["code"], "bad_frame");
    let big = json!({"action": "ping", "pad": "x".repeat(40 * 1024)}).to_string();
    let _ = eve_ws.send(Message::text(big)).await;
    closed_by_server(&mut eve_ws).await;

    // Revoking Bea's token from another process closes her socket.
    let revoked = cli(
        db,
        &["agent", "revoke", "--agent", bea["id"].as_str().unwrap()],
    );
    assert_eq!(revoked["revoked"], true);
    let told = closed_by_server(&mut bea_ws).await;
    assert!(told.iter().any(|f| f["code"] == "unauthorized"), "{told:?}");
    assert_eq!(
        refused(addr, &format!("?token={}", bea["token"].as_str().unwrap())).await,
        401
    );
    // Sam is still connected.
    send(&mut sam_ws, json!({"action": "ping"})).await;
    assert_eq!(recv(&mut sam_ws).await["type"], "pong");
}

fn management_client(addr: &str) -> aws_sdk_apigatewaymanagement::Client {
    use aws_sdk_apigatewaymanagement::config;
    let config = config::Builder::new()
        .http_client(chat_router::aws::http_client())
        .behavior_version(config::BehaviorVersion::latest())
        .region(config::Region::new("us-east-1"))
        .endpoint_url(format!("http://{addr}"))
        .credentials_provider(config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .retry_config(config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_apigatewaymanagement::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_delivers_through_the_local_management_api_and_gone_connections_are_dropped() {
    let db = TestDb::new(Backend::File).await;
    let store = Arc::new(db.store().await);
    let business = common::demo_business(&store).await;
    let chain = Chain::new(vec![Arc::new(EmbeddedClassifier::default())]);
    let app = App::start(store.clone(), chain, &Settings::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(chat_router_local::gateway::serve(
        listener,
        app.gateway(),
        std::future::pending(),
    ));

    let mut sockets = Vec::new();
    for name in ["Ann", "Ben", "Cat"] {
        let agent = tenants::create_agent(&store, &business, name, "Billing", 5)
            .await
            .unwrap();
        sockets.push((agent.id.clone(), open(&addr, &agent.token).await));
    }
    // Connections register during the upgrade; wait until all three are there.
    for _ in 0..100 {
        if app.registry.all().len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let connections = app.registry.all();
    assert_eq!(connections.len(), 3);
    let client = management_client(&addr);

    // post_to_connection reaches the socket; get_connection describes it.
    let first = connections
        .iter()
        .find(|c| c.agent_id == sockets[0].0)
        .unwrap()
        .clone();
    client
        .post_to_connection()
        .connection_id(&first.connection_id)
        .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
            br#"{"type":"hello"}"#.as_slice(),
        ))
        .send()
        .await
        .expect("post_to_connection");
    assert_eq!(recv(&mut sockets[0].1).await["type"], "hello");
    let described = client
        .get_connection()
        .connection_id(&first.connection_id)
        .send()
        .await
        .expect("get_connection");
    assert!(described.connected_at().is_some());
    assert_eq!(
        described.identity().and_then(|i| i.source_ip()),
        Some("127.0.0.1")
    );

    // An unknown connection is a GoneException, as on API Gateway.
    let gone = client
        .post_to_connection()
        .connection_id("nosuchconnection")
        .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
            b"{}".as_slice(),
        ))
        .send()
        .await
        .expect_err("an unknown connection");
    assert!(
        gone.as_service_error()
            .is_some_and(|e| e.is_gone_exception()),
        "{gone:?}"
    );
    let gone = client
        .get_connection()
        .connection_id("nosuchconnection")
        .send()
        .await
        .expect_err("an unknown connection");
    assert!(
        gone.as_service_error()
            .is_some_and(|e| e.is_gone_exception())
    );

    // Fan-out through the SDK with a registered connection whose socket vanished: the
    // others receive the event, and the stale entry (not theirs) is removed.
    let vanished = Connection {
        connection_id: "Lvanished0000000".into(),
        ..first.clone()
    };
    app.registry.register(&vanished).await.unwrap();
    let notifier = SocketNotifier::new(
        store.clone(),
        app.registry.clone(),
        Arc::new(ApiGatewayPoster::new(client.clone())),
    );
    let event = Event {
        audience: Audience {
            business_id: business.clone(),
            departments: vec!["Billing".into()],
            agents: vec![],
        },
        frame: Frame::Closed {
            conversation: ConversationView {
                id: "c-1".into(),
                department: "Billing".into(),
                status: "closed".into(),
                assigned_agent_id: None,
                intent: None,
                confidence: None,
                classifier: None,
                customer_id: None,
                customer_name: None,
                channel: None,
                last_sequence: 1,
            },
        },
    };
    notifier
        .publish(&event)
        .await
        .expect("the fan-out succeeds");
    for (_, ws) in &mut sockets {
        let frame = recv(ws).await;
        assert_eq!(frame["type"], "conversation.closed");
        assert_eq!(frame["conversation"]["id"], "c-1");
    }
    let left: Vec<String> = app
        .registry
        .all()
        .into_iter()
        .map(|c| c.connection_id)
        .collect();
    assert_eq!(left.len(), 3);
    assert!(!left.contains(&vanished.connection_id));

    // delete_connection closes the socket.
    client
        .delete_connection()
        .connection_id(&first.connection_id)
        .send()
        .await
        .expect("delete_connection");
    closed_by_server(&mut sockets[0].1).await;
    for _ in 0..100 {
        if app.registry.all().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(app.registry.all().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_delivers_an_agents_reply_to_its_built_in_receiver() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let (child, ready, lines) = common::spawn_serve_with_output(BIN, &db, &["--demo"]);
    let serve = Serve {
        child,
        addr: ready["listening"].as_str().unwrap().to_owned(),
    };
    let addr = serve.addr.as_str();
    let demo = &ready["demo"];
    let business = demo["businessId"].as_str().unwrap();

    // Every demo agent connects and says they are ready.
    let mut sockets = Vec::new();
    for agent in demo["agents"].as_array().unwrap() {
        let mut ws = open(addr, agent["token"].as_str().unwrap()).await;
        send(&mut ws, json!({"action": "sync"})).await;
        until(&mut ws, "sync.result").await;
        sockets.push((agent["id"].as_str().unwrap().to_owned(), ws));
    }

    // A customer writes; whoever gets the conversation replies.
    let receipt = post(
        addr,
        demo["webhookKey"].as_str().unwrap(),
        business,
        "cust-demo",
        "I want to know the price",
    )
    .await;
    let conversation = receipt["conversationId"].as_str().unwrap().to_owned();
    let store = chat_router::store::Store::open(chat_router::store::Location::Local(db.clone()))
        .await
        .unwrap();
    let mut assigned = None;
    for _ in 0..200 {
        assigned = common::column(
            &store,
            &format!(
                r#"SELECT "assignedAgentId" FROM "Conversation"
                   WHERE "id" = '{conversation}' AND "assignedAgentId" IS NOT NULL"#
            ),
        )
        .await
        .pop();
        if assigned.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let assigned = assigned.expect("a demo agent gets the conversation");
    let (_, ws) = sockets.iter_mut().find(|(id, _)| *id == assigned).unwrap();
    send(
        ws,
        json!({"action": "sendmessage", "conversationId": conversation, "content": "It is 20 euros."}),
    )
    .await;
    until(ws, "ack").await;

    // The built-in receiver checked the signature and printed the delivery.
    let printed = tokio::task::spawn_blocking(move || lines.recv_timeout(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("the demo receiver prints the delivery");
    let delivery = &printed["demoDelivery"];
    assert_eq!(delivery["verified"], true);
    assert_eq!(delivery["body"]["event"], "message");
    assert_eq!(delivery["body"]["conversationId"], conversation.as_str());
    assert_eq!(delivery["body"]["message"]["content"], "It is 20 euros.");
    assert_eq!(delivery["deliveryId"], delivery["body"]["deliveryId"]);
}
