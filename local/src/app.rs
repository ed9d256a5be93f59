//! The whole product in one process: the webhook, the in-process routing queue, the
//! router with its classifiers, the in-process notifier and the periodic sweeper.
//! `chat-router serve`, the tests and the benchmarks all start it the same way.

use std::sync::Arc;
use std::time::Duration;

use chat_router::classify::Chain;
use chat_router::events::LocalNotifier;
use chat_router::queue::local::LocalQueue;
use chat_router::routing::Router;
use chat_router::store::Store;
use chat_router::webhook::Webhook;

/// How long a job waits before the local sweeper hands it over again, unless
/// `SWEEP_AFTER_SECONDS` says otherwise. The local queue holds each job once, so a
/// hand-over of a job it still holds costs nothing.
pub const LOCAL_SWEEP_AFTER: Duration = Duration::from_secs(10);

/// How often the local sweeper looks.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Routing jobs handled at once. Jobs mostly wait on the database writer or an LLM,
/// so more tasks than cores keep both busy.
pub const ROUTING_WORKERS: usize = 16;

/// Settings of a local process.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Attempts at a job before it is marked failed.
    pub max_attempts: u32,
    /// Age past which a pending job is handed over again.
    pub sweep_after: Duration,
    /// How often the sweeper runs.
    pub sweep_every: Duration,
    /// Routing jobs handled at once.
    pub workers: usize,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_attempts: chat_router::routing::DEFAULT_MAX_ATTEMPTS,
            sweep_after: LOCAL_SWEEP_AFTER,
            sweep_every: SWEEP_EVERY,
            workers: ROUTING_WORKERS,
        }
    }
}

/// A running local product.
pub struct App {
    /// The database.
    pub store: Arc<Store>,
    /// Every event routing publishes.
    pub notifier: LocalNotifier,
    /// The router the queue feeds.
    pub router: Arc<Router>,
    /// The in-process routing queue.
    pub queue: LocalQueue,
    /// The HTTP handler, enqueueing to `queue`.
    pub webhook: Webhook,
    sweeper: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts the queue workers and the sweeper. The first sweep hands over every job
    /// left pending by an earlier process at once.
    pub fn start(store: Arc<Store>, chain: Chain, settings: &Settings) -> App {
        let notifier = LocalNotifier::default();
        let router = Arc::new(Router::new(
            store.clone(),
            Arc::new(chain),
            Arc::new(notifier.clone()),
            settings.max_attempts,
        ));
        let queue = LocalQueue::start(router.clone(), settings.workers);
        let webhook = Webhook::new(store.clone(), Arc::new(queue.clone()));
        let sweeper = tokio::spawn(sweep_periodically(
            router.clone(),
            queue.clone(),
            settings.sweep_after,
            settings.sweep_every,
        ));
        App {
            store,
            notifier,
            router,
            queue,
            webhook,
            sweeper,
        }
    }

    /// Stops the sweeper and the queue workers (after their current job).
    pub fn stop(&self) {
        self.sweeper.abort();
        self.queue.shutdown();
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn sweep_periodically(
    router: Arc<Router>,
    queue: LocalQueue,
    after: Duration,
    every: Duration,
) {
    let mut older_than = Duration::ZERO;
    loop {
        if let Err(err) = router.sweep(&queue, older_than).await {
            tracing::error!(cause = %chat_router::error::chain(&err), "sweep failed");
        }
        older_than = after;
        tokio::time::sleep(every).await;
    }
}
