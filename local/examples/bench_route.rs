//! Routing benchmark, run by `scripts/bench.sh route`: the whole local product in this
//! process (webhook, in-process queue, router with the embedded classifier, SQLite
//! file), real HTTP traffic on loopback, and the time from each webhook
//! acknowledgement (202) to its conversation's `conversation.assigned` event, which is
//! published after the assignment committed.
//!
//! Two runs, each on a fresh database and a fresh process state: one paced at a
//! steady rate for latency, one at full speed for throughput. Every message starts a
//! new conversation of the Demo Bank tenant (`tenants/bank.json`) with a text of the
//! Banking77 subset in `shared/tests/fixtures`.

#[path = "common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_router::classify::{Chain, EmbeddedClassifier};
use chat_router::events::Frame;
use chat_router::queue::OutboxOnly;
use chat_router::store::{Location, Store};
use chat_router::tenants::{self, BusinessConfig};
use chat_router::webhook::Webhook;
use chat_router_local::app::{App, Settings};
use common::{arg, available_agents, percentile, wait_for};
use serde_json::{Value, json};

const BANK: &str = include_str!("../../tenants/bank.json");
const TEXTS: &str = include_str!("../../shared/tests/fixtures/banking77-subset.csv");

/// Conversations of the full-speed run.
const FULL_SPEED_TOTAL: usize = 20_000;

/// Agents per department, with room together for every conversation of a run in any
/// one department, so the benchmark measures routing and assignment rather than
/// waiting queues.
const AGENTS_PER_DEPARTMENT: usize = 20;
const CAPACITY: i64 = 1000;

/// Conversation id to when its message was acknowledged and when it was assigned.
type Timings = HashMap<String, (Option<Instant>, Option<Instant>)>;

struct Run {
    label: String,
    sent: usize,
    acked: usize,
    assigned: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
    /// Stored first, routed afterwards: latency from the 202 means nothing.
    backlog: bool,
}

fn texts() -> Vec<String> {
    TEXTS
        .lines()
        .skip(1)
        .filter_map(|line| line.rsplit_once(','))
        .map(|(text, _)| text.trim_matches('"').replace("\"\"", "\""))
        .filter(|text| !text.is_empty())
        .collect()
}

/// One run: `total` new conversations, at `rate` per second or as fast as
/// `connections` concurrent clients go.
async fn run(
    label: &str,
    total: usize,
    rate: Option<u32>,
    connections: usize,
    backlog: bool,
) -> anyhow::Result<Run> {
    let dir = tempfile::tempdir()?;
    let store = Arc::new(Store::open(Location::Local(dir.path().join("bench.db"))).await?);
    let config: BusinessConfig = serde_json::from_str(BANK)?;
    let business = tenants::create_business(&store, &config).await?;
    // A backlog run stores every message first (the jobs wait in the outbox), then
    // hands them all to the queue in one sweep: the router's own throughput, without
    // the HTTP traffic competing for the two cores.
    let settings = Settings {
        sweep_every: if backlog {
            Duration::from_secs(3600)
        } else {
            Settings::default().sweep_every
        },
        ..Settings::default()
    };
    let app = App::start(
        store.clone(),
        Chain::new(vec![Arc::new(EmbeddedClassifier::default())]),
        &settings,
    );
    available_agents(&app, &business.id, &config, AGENTS_PER_DEPARTMENT, CAPACITY).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/webhook/message", listener.local_addr()?);
    let webhook = if backlog {
        Webhook::new(store.clone(), Arc::new(OutboxOnly))
    } else {
        app.webhook.clone()
    };
    let server = tokio::spawn(chat_router_local::gateway::serve(
        listener,
        webhook,
        std::future::pending(),
    ));

    // conversation id -> (acknowledged, assigned)
    let seen: Arc<Mutex<Timings>> = Arc::default();
    let mut events = app.notifier.subscribe();
    let watcher = {
        let seen = seen.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        if let Frame::Assigned { conversation, .. } = &event.frame {
                            let now = Instant::now();
                            seen.lock()
                                .unwrap()
                                .entry(conversation.id.clone())
                                .or_default()
                                .1 = Some(now);
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        eprintln!("bench: the event watcher lagged by {n} events");
                    }
                    Err(_) => return,
                }
            }
        })
    };

    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()?;
    // One message outside the measurement trains the business's embedded model.
    let warm = client
        .post(&url)
        .bearer_auth(&business.webhook_key)
        .json(&json!({"businessId": business.id, "customerId": "warm", "message": "hello"}))
        .send()
        .await?;
    anyhow::ensure!(
        warm.status() == 202,
        "the webhook answered {}",
        warm.status()
    );
    if backlog {
        app.router.sweep(&app.queue, Duration::ZERO).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.lock().unwrap().is_empty() {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up message was never assigned"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen.lock().unwrap().clear();
    let texts = Arc::new(texts());
    let limit = Arc::new(tokio::sync::Semaphore::new(connections));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let permit = limit.clone().acquire_owned().await?;
        let (client, url, seen, texts) = (client.clone(), url.clone(), seen.clone(), texts.clone());
        let body = json!({
            "businessId": business.id,
            "customerId": format!("customer-{i}"),
            "message": texts[i % texts.len()],
        });
        let key = business.webhook_key.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
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
            seen.lock().unwrap().entry(id).or_default().0 = Some(acked);
            Some(())
        }));
    }
    let mut acked = 0;
    for task in tasks {
        if let Ok(Some(())) = task.await {
            acked += 1;
        }
    }
    let mut measured_from = started;
    if backlog {
        measured_from = Instant::now();
        app.router.sweep(&app.queue, Duration::ZERO).await?;
    }

    // Wait until every acknowledged conversation is assigned (or nothing moves).
    wait_for("conversations", acked, Duration::from_secs(10), || {
        seen.lock()
            .unwrap()
            .values()
            .filter(|(ack, assigned)| ack.is_some() && assigned.is_some())
            .count()
    })
    .await;

    let seen = seen.lock().unwrap();
    let mut latencies_ms = Vec::new();
    let mut end = started;
    for (ack, assigned) in seen.values() {
        if let (Some(ack), Some(assigned)) = (ack, assigned) {
            latencies_ms.push(assigned.saturating_duration_since(*ack).as_secs_f64() * 1000.0);
            end = end.max(*assigned);
        }
    }
    latencies_ms.sort_by(f64::total_cmp);
    watcher.abort();
    server.abort();
    app.stop();
    Ok(Run {
        label: label.to_owned(),
        sent: total,
        acked,
        assigned: latencies_ms.len(),
        seconds: end.duration_since(measured_from).as_secs_f64(),
        backlog,
        latencies_ms,
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: f64 = arg(1, 10.0)?;
    let rate: u32 = arg(2, 1000)?;

    let paced = (rate as f64 * seconds) as usize;
    let mut runs = Vec::new();
    // A short unmeasured run warms the process (allocator, classifier models).
    run("warmup", 500, None, 32, false).await?;
    runs.push(run(&format!("{rate}/s paced"), paced, Some(rate), 256, false).await?);
    let doubled = rate * 2;
    runs.push(
        run(
            &format!("{doubled}/s paced"),
            paced * 2,
            Some(doubled),
            256,
            false,
        )
        .await?,
    );
    runs.push(run("full speed, 64 clients", FULL_SPEED_TOTAL, None, 64, false).await?);
    runs.push(
        run(
            "backlog of 20,000 drained",
            FULL_SPEED_TOTAL,
            None,
            64,
            true,
        )
        .await?,
    );

    println!(
        "\nroute benchmark: webhook -> local queue -> embedded classifier -> assignment, local file"
    );
    println!(
        "{:<26}{:>8}{:>8}{:>10}{:>12}{:>9}{:>9}{:>9}",
        "run", "sent", "202s", "assigned", "routed/s", "p50 ms", "p99 ms", "max ms"
    );
    let mut ok = true;
    for run in &runs {
        let latency = |value: f64| {
            if run.backlog {
                "-".to_owned()
            } else {
                format!("{value:.2}")
            }
        };
        println!(
            "{:<26}{:>8}{:>8}{:>10}{:>12.0}{:>9}{:>9}{:>9}",
            run.label,
            run.sent,
            run.acked,
            run.assigned,
            run.assigned as f64 / run.seconds,
            latency(percentile(&run.latencies_ms, 50.0)),
            latency(percentile(&run.latencies_ms, 99.0)),
            latency(run.latencies_ms.last().copied().unwrap_or(f64::NAN)),
        );
        ok &= run.assigned == run.acked;
    }
    println!("\nlatency: from the webhook's 202 to the conversation.assigned event (after commit)");
    if !ok {
        println!("FAIL: acknowledged conversations were not assigned");
        std::process::exit(1);
    }
    println!("every acknowledged conversation was routed and assigned");
    Ok(())
}
