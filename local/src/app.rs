//! The whole product in one process: the webhook, the in-process queue, the router
//! with its classifiers, the deliverer of callbacks, the WebSocket handlers with the
//! in-process connection registry and sockets, and the periodic sweeper.
//! `chat-router serve`, the tests and the benchmarks all start it the same way.

use std::sync::Arc;
use std::time::Duration;

use chat_router::callback::deliver::{Deliverer, DeliverySettings, Jobs};
use chat_router::callback::secret::EncryptionKey;
use chat_router::classify::Chain;
use chat_router::events::{LocalNotifier, Notifier};
use chat_router::queue::local::LocalQueue;
use chat_router::realtime::{LocalConnections, LocalSockets, Notifiers, Realtime};
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
    /// How long an agent stays available after their last frame.
    pub lease: Duration,
    /// How callbacks are sent and retried. Local runs allow loopback receivers
    /// (for endpoints configured with `--allow-loopback`).
    pub delivery: DeliverySettings,
    /// Decrypts businesses' signing secrets; without it deliveries wait, pending.
    pub callback_key: Option<EncryptionKey>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_attempts: chat_router::routing::DEFAULT_MAX_ATTEMPTS,
            sweep_after: LOCAL_SWEEP_AFTER,
            sweep_every: SWEEP_EVERY,
            workers: ROUTING_WORKERS,
            lease: chat_router::realtime::DEFAULT_LEASE,
            delivery: DeliverySettings {
                allow_loopback: true,
                ..DeliverySettings::default()
            },
            callback_key: None,
        }
    }
}

/// A running local product.
pub struct App {
    /// The database.
    pub store: Arc<Store>,
    /// Every event routing publishes, for observers in this process; connected agents
    /// get theirs through `realtime`.
    pub notifier: LocalNotifier,
    /// The WebSocket handlers.
    pub realtime: Arc<Realtime>,
    /// Who is connected.
    pub registry: Arc<LocalConnections>,
    /// The open sockets.
    pub sockets: Arc<LocalSockets>,
    /// The router the queue feeds.
    pub router: Arc<Router>,
    /// Sends callbacks, when a key was given.
    pub deliverer: Option<Arc<Deliverer>>,
    /// The in-process queue of routing jobs and deliveries.
    pub queue: LocalQueue,
    /// The HTTP handler, enqueueing to `queue`.
    pub webhook: Webhook,
    sweeper: tokio::task::JoinHandle<()>,
    revocations: tokio::task::JoinHandle<()>,
}

impl App {
    /// Starts the queue workers and the sweeper. The first sweep hands over every job
    /// left pending by an earlier process at once.
    pub fn start(store: Arc<Store>, chain: Chain, settings: &Settings) -> App {
        let notifier = LocalNotifier::default();
        let registry = Arc::new(LocalConnections::new());
        let sockets = Arc::new(LocalSockets::new());
        let to_sockets = Realtime::notifier(store.clone(), registry.clone(), sockets.clone());
        let both: Vec<Arc<dyn Notifier>> = vec![to_sockets.clone(), Arc::new(notifier.clone())];
        let both: Arc<dyn Notifier> = Arc::new(Notifiers(both));
        let router = Arc::new(Router::new(
            store.clone(),
            Arc::new(chain),
            both.clone(),
            settings.max_attempts,
        ));
        let deliverer = settings.callback_key.clone().and_then(|key| {
            match Deliverer::new(store.clone(), both, key, settings.delivery.clone()) {
                Ok(deliverer) => Some(Arc::new(deliverer)),
                Err(err) => {
                    tracing::error!(cause = %chat_router::error::chain(&err), "deliveries disabled");
                    None
                }
            }
        });
        let realtime = Arc::new(Realtime::new(
            store.clone(),
            router.clone(),
            registry.clone(),
            sockets.clone(),
            to_sockets,
            settings.lease,
        ));
        let jobs = Arc::new(Jobs::new(router.clone(), deliverer.clone()));
        let queue = LocalQueue::start(jobs, settings.workers);
        router.deliver_through(Arc::new(queue.clone()));
        let webhook = Webhook::new(store.clone(), Arc::new(queue.clone()));
        let sweeper = tokio::spawn(sweep_periodically(
            router.clone(),
            queue.clone(),
            settings.sweep_after,
            settings.sweep_every,
        ));
        let revocations = tokio::spawn(close_revoked_periodically(
            realtime.clone(),
            registry.clone(),
        ));
        App {
            store,
            notifier,
            realtime,
            registry,
            sockets,
            router,
            deliverer,
            queue,
            webhook,
            sweeper,
            revocations,
        }
    }

    /// What the local gateway serves for this product: the webhook and the WebSockets.
    pub fn gateway(&self) -> crate::gateway::Gateway {
        crate::gateway::Gateway {
            webhook: self.webhook.clone(),
            ws: Some(crate::ws::WsState::new(
                self.realtime.clone(),
                self.sockets.clone(),
            )),
            demo_receiver: None,
        }
    }

    /// Stops the sweeper and the queue workers (after their current job).
    pub fn stop(&self) {
        self.sweeper.abort();
        self.revocations.abort();
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

/// How often the local gateway looks for sockets whose token was revoked (by
/// `chat-router agent revoke` in another process, say).
pub const REVOCATION_CHECK_EVERY: Duration = Duration::from_secs(1);

async fn close_revoked_periodically(realtime: Arc<Realtime>, registry: Arc<LocalConnections>) {
    loop {
        tokio::time::sleep(REVOCATION_CHECK_EVERY).await;
        let connections = registry.all();
        if !connections.is_empty() {
            realtime.close_revoked(&connections).await;
        }
    }
}
