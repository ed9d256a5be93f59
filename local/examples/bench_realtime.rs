//! Real-time benchmark, run by `scripts/bench.sh realtime`: the whole local product in
//! this process (webhook, in-process queue, router with the embedded classifier,
//! WebSocket gateway, SQLite file) with real WebSocket clients on loopback.
//!
//! 1. Latency at a steady rate: customer messages posted over HTTP; for each, the time
//!    from the webhook's acknowledgement (202) to the event on the agent's socket:
//!    `conversation.assigned` for a new conversation, `message.created` for a
//!    follow-up to one the agent already has.
//! 2. Fan-out: many sockets of one department connected; one new conversation's
//!    `conversation.routed` goes to all of them. Time from the acknowledgement to the
//!    last socket's receipt.
//!
//! An event that reaches the socket before the HTTP client has read the 202 counts as
//! zero.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::store::{Location, Store};
use chat_router::tenants::{self, BusinessConfig};
use chat_router_local::app::{App, Settings};
use common::{arg, percentile};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const DEMO: &str = include_str!("../../tenants/demo.json");

/// Texts the demo tenant's departments each recognise.
const TEXTS: [&str; 4] = [
    "I was charged twice this month",
    "The app crashes when I log in",
    "How much does the premium plan cost?",
    "I want a refund for my last payment",
];

/// (acknowledged, seen on the socket), by conversation id and sequence.
type Timings = HashMap<(String, i64), (Option<Instant>, Option<Instant>)>;

struct Bench {
    app: App,
    store: Arc<Store>,
    business: tenants::CreatedBusiness,
    addr: String,
    _dir: tempfile::TempDir,
}

async fn start() -> anyhow::Result<Bench> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(Location::Local(dir.path().join("bench.db"))).await?);
    let config: BusinessConfig = serde_json::from_str(DEMO)?;
    let business = tenants::create_business(&store, &config).await?;
    let app = App::start(
        store.clone(),
        Chain::new(vec![Arc::new(EmbeddedClassifier::default())]),
        &Settings::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(chat_router_local::gateway::serve(
        listener,
        app.gateway(),
        std::future::pending(),
    ));
    Ok(Bench {
        app,
        store,
        business,
        addr,
        _dir: dir,
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: &str, token: &str, sync: bool) -> anyhow::Result<Ws> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={token}")).await?;
    if sync {
        ws.send(Message::text(r#"{"action":"sync"}"#)).await?;
        loop {
            if let Some(Ok(Message::Text(text))) = ws.next().await {
                let frame: Value = serde_json::from_str(&text)?;
                if frame["type"] == "sync.result" {
                    break;
                }
            }
        }
    }
    Ok(ws)
}

struct Row {
    label: String,
    count: usize,
    missing: usize,
    p50: f64,
    p99: f64,
    max: f64,
    target: String,
}

async fn latency(seconds: u64, rate: u32) -> anyhow::Result<Vec<Row>> {
    let bench = start().await?;
    let seen: Arc<Mutex<Timings>> = Arc::default();
    // One agent per department, with room for every conversation of the run.
    for department in ["Sales", "Support", "Billing", "General"] {
        let agent = tenants::create_agent(
            &bench.store,
            &bench.business.id,
            &format!("{department} agent"),
            department,
            1000,
        )
        .await?;
        let ws = connect(&bench.addr, &agent.token, true).await?;
        let seen = seen.clone();
        let (mut sink, mut stream) = ws.split();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else {
                    continue;
                };
                let now = Instant::now();
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let key = match frame["type"].as_str() {
                    Some("conversation.assigned") => frame["conversation"]["id"]
                        .as_str()
                        .map(|id| (id.to_owned(), 1)),
                    Some("message.created") if frame["message"]["sender"] == "customer" => {
                        frame["conversationId"]
                            .as_str()
                            .zip(frame["message"]["sequence"].as_i64())
                            .map(|(id, seq)| (id.to_owned(), seq))
                    }
                    _ => None,
                };
                if let Some(key) = key {
                    seen.lock()
                        .unwrap()
                        .entry(key)
                        .or_default()
                        .1
                        .get_or_insert(now);
                }
            }
        });
        // Keep the lease alive as a client would.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(20)).await;
                if sink
                    .send(Message::text(r#"{"action":"ping"}"#))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        });
    }

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let url = format!("http://{}/webhook/message", bench.addr);
    // A warm-up message trains the business's embedded model outside the measurement.
    let warm = client
        .post(&url)
        .bearer_auth(&bench.business.webhook_key)
        .json(&json!({"businessId": bench.business.id, "customerId": "warm", "message": "hello"}))
        .send()
        .await?;
    anyhow::ensure!(
        warm.status() == 202,
        "the webhook answered {}",
        warm.status()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.lock().unwrap().clear();

    // Customers write twice: a new conversation, then (half the messages) a follow-up.
    let total = seconds as usize * rate as usize;
    let customers = total / 2;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
        let customer = if i < customers { i } else { i - customers };
        let body = json!({
            "businessId": bench.business.id,
            "customerId": format!("customer-{customer}"),
            "message": TEXTS[customer % TEXTS.len()],
        });
        let (client, url, seen) = (client.clone(), url.clone(), seen.clone());
        let key = bench.business.webhook_key.clone();
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(&url)
                .bearer_auth(key)
                .json(&body)
                .send()
                .await
                .ok()?;
            if response.status() != 202 {
                return None;
            }
            let acked = Instant::now();
            let body: Value = response.json().await.ok()?;
            let id = body["conversationId"].as_str()?.to_owned();
            let sequence = if i < customers { 1 } else { 2 };
            seen.lock().unwrap().entry((id, sequence)).or_default().0 = Some(acked);
            Some(())
        }));
    }
    for task in tasks {
        task.await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    bench.app.stop();

    let seen = seen.lock().unwrap();
    let mut rows = Vec::new();
    for (sequence, label) in [
        (1, "new conversation -> assigned"),
        (2, "follow-up -> message.created"),
    ] {
        let mut ms: Vec<f64> = Vec::new();
        let mut missing = 0;
        for ((_, seq), (acked, got)) in seen.iter() {
            if *seq != sequence {
                continue;
            }
            match (acked, got) {
                (Some(acked), Some(got)) => {
                    ms.push(got.saturating_duration_since(*acked).as_secs_f64() * 1000.0)
                }
                (Some(_), None) => missing += 1,
                _ => {}
            }
        }
        ms.sort_by(f64::total_cmp);
        rows.push(Row {
            label: format!("{label}, {rate}/s"),
            count: ms.len(),
            missing,
            p50: percentile(&ms, 50.0),
            p99: percentile(&ms, 99.0),
            max: ms.last().copied().unwrap_or(f64::NAN),
            target: "p50 <= 5, p99 <= 25".into(),
        });
    }
    Ok(rows)
}

async fn fan_out(sockets: usize, rounds: usize) -> anyhow::Result<Row> {
    let bench = start().await?;
    // Twenty sockets per agent, all in Sales, none ready: the routed event goes to the
    // whole department, and the conversation stays waiting.
    let per_agent = 20;
    let (sender, mut receipts) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let mut opened = 0;
    while opened < sockets {
        let agent = tenants::create_agent(
            &bench.store,
            &bench.business.id,
            &format!("Sales agent {opened}"),
            "Sales",
            5,
        )
        .await?;
        for _ in 0..per_agent.min(sockets - opened) {
            let ws = connect(&bench.addr, &agent.token, false).await?;
            let sender = sender.clone();
            let (_sink, mut stream) = ws.split();
            tokio::spawn(async move {
                let _sink = _sink;
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let now = Instant::now();
                    let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if frame["type"] == "conversation.routed"
                        && let Some(id) = frame["conversation"]["id"].as_str()
                    {
                        let _ = sender.send((id.to_owned(), now));
                    }
                }
            });
            opened += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while bench.app.registry.all().len() < sockets {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sockets did not all register"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let client = reqwest::Client::new();
    let url = format!("http://{}/webhook/message", bench.addr);
    let mut ms = Vec::new();
    let mut missing = 0;
    for round in 0..=rounds {
        let response = client
            .post(&url)
            .bearer_auth(&bench.business.webhook_key)
            .json(&json!({
                "businessId": bench.business.id,
                "customerId": format!("fan-{round}"),
                "message": "How much does the premium plan cost?",
            }))
            .send()
            .await?;
        let acked = Instant::now();
        let body: Value = response.json().await?;
        let id = body["conversationId"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut got = 0;
        let mut last = acked;
        let until = Instant::now() + Duration::from_secs(5);
        while got < sockets {
            match tokio::time::timeout_at(until.into(), receipts.recv()).await {
                Ok(Some((conversation, at))) if conversation == id => {
                    got += 1;
                    last = last.max(at);
                }
                Ok(Some(_)) => {}
                _ => break,
            }
        }
        // Round 0 trains the embedded model and is not counted.
        if round > 0 {
            if got == sockets {
                ms.push(last.saturating_duration_since(acked).as_secs_f64() * 1000.0);
            } else {
                missing += 1;
            }
        }
    }
    bench.app.stop();
    ms.sort_by(f64::total_cmp);
    Ok(Row {
        label: format!("fan-out to {sockets} sockets (last receipt)"),
        count: ms.len(),
        missing,
        p50: percentile(&ms, 50.0),
        p99: percentile(&ms, 99.0),
        max: ms.last().copied().unwrap_or(f64::NAN),
        target: "<= 250".into(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = arg(1, 10)?;
    let rate: u32 = arg(2, 200)?;
    let sockets: usize = arg(3, 1000)?;

    let mut rows = latency(seconds, rate).await?;
    rows.push(fan_out(sockets, 20).await?);

    println!("\nrealtime benchmark: local gateway, embedded classifier, SQLite file");
    println!(
        "{:<46}{:>8}{:>9}{:>10}{:>10}{:>10}  target",
        "measure (ms from the webhook's 202)", "events", "missing", "p50", "p99", "max"
    );
    for row in rows {
        println!(
            "{:<46}{:>8}{:>9}{:>10.2}{:>10.2}{:>10.2}  {}",
            row.label, row.count, row.missing, row.p50, row.p99, row.max, row.target
        );
    }
    Ok(())
}
