//! Delivery benchmark, run by `scripts/bench.sh deliver`: the whole local product in
//! this process (router, in-process queue, deliverer, SQLite file) and a receiver on
//! 127.0.0.1 that checks every signature, as a business's endpoint would. Agents reply
//! to assigned conversations; each reply becomes a signed delivery that the receiver
//! gets over real HTTP. Prints deliveries per second and p50/p99 from the moment a
//! reply is stored (its transaction committed) to its receipt, and checks that every
//! delivery arrived, once, signed, and in order within its conversation.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chat_router::callback::endpoint::{self, EndpointRequest};
use chat_router::callback::secret::EncryptionKey;
use chat_router::callback::signature::{self, DEFAULT_TOLERANCE};
use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::ingest::{self, NewMessage, Outcome};
use chat_router::queue::JobQueue;
use chat_router::routing::{AgentRef, Router};
use chat_router::store::{Location, Store};
use chat_router::tenants::{self, BusinessConfig};
use chat_router_local::app::{App, Settings};
use common::{arg, available_agents, percentile, wait_for};
use serde_json::Value;

const DEMO: &str = include_str!("../../tenants/demo.json");

/// Conversations replied to at once, and the agents (per department) who hold them.
const CONVERSATIONS: usize = 400;
const AGENTS_PER_DEPARTMENT: usize = 40;
const CAPACITY: i64 = 10;

/// What the receiver saw.
#[derive(Default)]
struct Received {
    /// Message id to when it arrived.
    at: HashMap<String, Instant>,
    /// Conversation id to the highest sequence received.
    last_sequence: HashMap<String, i64>,
    /// Deliveries whose sequence was not above the conversation's last one.
    out_of_order: usize,
    /// Deliveries of a message seen before.
    duplicates: usize,
    /// Deliveries whose signature did not verify.
    bad_signatures: usize,
}

struct Receiver {
    secret: Mutex<String>,
    received: Mutex<Received>,
}

async fn receive(
    State(receiver): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let arrived = Instant::now();
    let header = headers
        .get(chat_router::callback::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let secret = receiver.secret.lock().unwrap().clone();
    let now = chat_router::timestamp::now_millis() / 1000;
    let signed = signature::verify(secret.as_bytes(), header, &body, now, DEFAULT_TOLERANCE);
    let mut received = receiver.received.lock().unwrap();
    if signed.is_err() {
        received.bad_signatures += 1;
        return StatusCode::UNAUTHORIZED;
    }
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    let conversation = body["conversationId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let message = body["message"]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let sequence = body["message"]["sequence"].as_i64().unwrap_or_default();
    if received.at.insert(message, arrived).is_some() {
        received.duplicates += 1;
    }
    let last = received.last_sequence.entry(conversation).or_default();
    let in_order = sequence > *last;
    *last = (*last).max(sequence);
    if !in_order {
        received.out_of_order += 1;
    }
    StatusCode::OK
}

/// Stores one agent reply and notes when its transaction committed.
async fn reply(
    router: &Router,
    agent: &AgentRef,
    conversation: &str,
    n: usize,
    stored: &Mutex<HashMap<String, Instant>>,
) -> anyhow::Result<()> {
    let reply = router
        .reply(agent, conversation, &format!("reply {n}"), None)
        .await?;
    stored
        .lock()
        .unwrap()
        .insert(reply.message.id, Instant::now());
    Ok(())
}

struct Run {
    label: String,
    replies: usize,
    delivered: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    out_of_order: usize,
    duplicates: usize,
    bad_signatures: usize,
}

/// One run on a fresh database: `per_conversation` replies to each conversation, at
/// `rate` replies per second overall, or as fast as one task per conversation goes.
async fn run(label: &str, per_conversation: usize, rate: Option<u32>) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(Location::Local(dir.path().join("bench.db"))).await?);
    let config: BusinessConfig = serde_json::from_str(DEMO)?;
    let business = tenants::create_business(&store, &config).await?;

    let receiver = Arc::new(Receiver {
        secret: Mutex::new(String::new()),
        received: Mutex::new(Received::default()),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/callback", listener.local_addr()?);
    let server = tokio::spawn({
        let app = axum::Router::new()
            .route("/callback", axum::routing::post(receive))
            .with_state(receiver.clone());
        async move { axum::serve(listener, app).await }
    });

    let key = EncryptionKey::generate();
    let configured = endpoint::configure(
        &store,
        &key,
        &EndpointRequest {
            business_id: business.id.clone(),
            url,
            events: Vec::new(),
            allow_loopback: true,
            rotate_secret: false,
        },
    )
    .await?;
    *receiver.secret.lock().unwrap() = configured
        .secret
        .ok_or_else(|| anyhow::anyhow!("no secret was made"))?;

    let settings = Settings {
        callback_key: Some(key),
        ..Settings::default()
    };
    let app = App::start(
        store.clone(),
        Chain::new(vec![Arc::new(EmbeddedClassifier::default())]),
        &settings,
    );
    let agents =
        available_agents(&app, &business.id, &config, AGENTS_PER_DEPARTMENT, CAPACITY).await?;

    // Conversations, routed and assigned before the clock starts.
    for i in 0..CONVERSATIONS {
        let message = NewMessage {
            business_id: business.id.clone(),
            content: format!("I need help with my order number {i}"),
            customer_id: Some(format!("customer-{i}")),
            customer_name: None,
            channel: None,
            idempotency: None,
        };
        if let Outcome::Stored { job, .. } = ingest::ingest(&store, &message).await? {
            app.queue.enqueue(&job).await?;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let assigned = loop {
        let conn = store.reader().await?;
        let mut rows = conn
            .query(
                r#"SELECT "id", "assignedAgentId" FROM "Conversation" WHERE "status" = 'in_progress'"#,
                (),
            )
            .await?;
        let mut found = Vec::new();
        while let Some(row) = rows.next().await? {
            found.push((row.get::<String>(0)?, row.get::<String>(1)?));
        }
        if found.len() == CONVERSATIONS {
            break found;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {CONVERSATIONS} conversations were assigned",
            found.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let assigned: Vec<(String, AgentRef)> = assigned
        .into_iter()
        .map(|(conversation, agent)| {
            let department = agents[&agent].clone();
            (
                conversation,
                AgentRef {
                    business_id: business.id.clone(),
                    agent_id: agent,
                    department,
                },
            )
        })
        .collect();

    let total = assigned.len() * per_conversation;
    let stored: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    match rate {
        Some(rate) => {
            // Round robin over the conversations, so one conversation's replies are
            // far apart and stored in order.
            for i in 0..total {
                let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
                let (conversation, agent) = assigned[i % assigned.len()].clone();
                let (router, stored) = (app.router.clone(), stored.clone());
                tasks.spawn(async move { reply(&router, &agent, &conversation, i, &stored).await });
            }
        }
        None => {
            for (conversation, agent) in assigned.clone() {
                let (router, stored) = (app.router.clone(), stored.clone());
                tasks.spawn(async move {
                    for n in 0..per_conversation {
                        reply(&router, &agent, &conversation, n, &stored).await?;
                    }
                    Ok(())
                });
            }
        }
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }

    // Wait until every reply arrived (or nothing moves for 15 s).
    wait_for("deliveries", total, Duration::from_secs(15), || {
        receiver.received.lock().unwrap().at.len()
    })
    .await;

    let received = receiver.received.lock().unwrap();
    let stored = stored.lock().unwrap();
    let mut latencies_ms = Vec::with_capacity(stored.len());
    let mut end = started;
    for (message, at) in &received.at {
        end = end.max(*at);
        if let Some(sent) = stored.get(message) {
            latencies_ms.push(at.saturating_duration_since(*sent).as_secs_f64() * 1000.0);
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    let run = Run {
        label: label.to_owned(),
        replies: stored.len(),
        delivered: received.at.len(),
        seconds: end.duration_since(started).as_secs_f64(),
        latencies_ms,
        out_of_order: received.out_of_order,
        duplicates: received.duplicates,
        bad_signatures: received.bad_signatures,
    };
    drop((received, stored));
    app.stop();
    server.abort();
    Ok(run)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg(1, 10.0)?;
    let rate: u32 = arg(2, 1000)?;

    let paced = ((rate as f64 * seconds) as usize / CONVERSATIONS).max(1);
    let mut runs = Vec::new();
    run("warmup", 2, None).await?;
    runs.push(run(&format!("{rate}/s paced"), paced, Some(rate)).await?);
    runs.push(run("full speed", 50, None).await?);

    println!(
        "\ndeliver benchmark: agent reply -> outbox -> local queue -> signed POST -> receiver on 127.0.0.1"
    );
    println!(
        "{:<16}{:>9}{:>11}{:>13}{:>9}{:>9}{:>9}",
        "run", "replies", "delivered", "delivered/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut ok = true;
    for run in &runs {
        println!(
            "{:<16}{:>9}{:>11}{:>13.0}{:>9.2}{:>9.2}{:>9.2}",
            run.label,
            run.replies,
            run.delivered,
            run.delivered as f64 / run.seconds,
            percentile(&run.latencies_ms, 50.0),
            percentile(&run.latencies_ms, 99.0),
            run.latencies_ms.last().copied().unwrap_or(f64::NAN),
        );
        if run.delivered != run.replies
            || run.out_of_order > 0
            || run.duplicates > 0
            || run.bad_signatures > 0
        {
            println!(
                "  {}: {} out of order, {} duplicates, {} bad signatures",
                run.label, run.out_of_order, run.duplicates, run.bad_signatures
            );
            ok = false;
        }
    }
    println!("\nlatency: from the reply's commit to its receipt, signature checked");
    if !ok {
        println!("FAIL: not every reply arrived once, signed and in order");
        std::process::exit(1);
    }
    println!("every reply arrived once, signed, in order per conversation");
    Ok(())
}
