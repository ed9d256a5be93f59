//! What the benchmarks share: their allocator, arguments, agents, waiting and
//! percentiles.
//! Each benchmark compiles this module for itself and uses part of it.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat_router::tenants::{self, BusinessConfig};
use chat_router_local::app::App;

/// The allocator `chat-router serve` uses.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The command-line argument at `position` (1 is the first), or `default` without one.
pub fn arg<T>(position: usize, default: T) -> anyhow::Result<T>
where
    T: std::str::FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    Ok(std::env::args()
        .nth(position)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(default))
}

/// The `p`th percentile (0 to 100) of ascending values, by nearest rank; NaN for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Waits until `count()` reaches `total`, or until it has not moved for `stall`; then
/// says how many of the `what` never came.
pub async fn wait_for(what: &str, total: usize, stall: Duration, count: impl Fn() -> usize) {
    let mut last = (0, Instant::now());
    loop {
        let done = count();
        if done >= total {
            return;
        }
        if done != last.0 {
            last = (done, Instant::now());
        } else if last.1.elapsed() > stall {
            eprintln!("bench: {} of {total} {what} never came", total - done);
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Creates `per_department` agents of `capacity` in each department of `config`'s
/// business, available for the next hour; returns each agent's department by id.
pub async fn available_agents(
    app: &App,
    business_id: &str,
    config: &BusinessConfig,
    per_department: usize,
    capacity: i64,
) -> anyhow::Result<HashMap<String, String>> {
    let until = chat_router::timestamp::now_millis() + 3_600_000;
    let mut agents = HashMap::new();
    for department in &config.departments {
        for i in 0..per_department {
            let agent = tenants::create_agent(
                app.router.store(),
                business_id,
                &format!("{} agent {i}", department.name),
                &department.name,
                capacity,
            )
            .await?;
            app.router.agent_available(&agent.id, until).await?;
            agents.insert(agent.id, department.name.clone());
        }
    }
    Ok(agents)
}
