//! Fan-out: an [`Event`] to every live connection of its audience.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::poster::{ConnectionPoster, PostError};
use super::registry::{Connection, ConnectionRegistry};
use crate::events::{Event, Notifier, NotifyError};
use crate::store::Store;

/// Posts in flight at once for one event.
pub const FANOUT_CONCURRENCY: usize = 64;

/// Attempts at one post that fails for a reason other than a gone connection.
const POST_ATTEMPTS: u32 = 3;

/// Delivers events to the connected agents of their audience, through a registry and
/// a poster. A connection found gone is removed (and the agent's availability ends
/// when it was their last); other failures are retried a bounded number of times and
/// logged.
pub struct SocketNotifier {
    store: Arc<Store>,
    registry: Arc<dyn ConnectionRegistry>,
    poster: Arc<dyn ConnectionPoster>,
}

impl SocketNotifier {
    /// A notifier over these parts.
    pub fn new(
        store: Arc<Store>,
        registry: Arc<dyn ConnectionRegistry>,
        poster: Arc<dyn ConnectionPoster>,
    ) -> SocketNotifier {
        SocketNotifier {
            store,
            registry,
            poster,
        }
    }

    /// The live connections of an event's audience, each once, all of its business.
    async fn audience(&self, event: &Event) -> Result<Vec<Connection>, NotifyError> {
        let now = crate::timestamp::now_millis();
        let business = event.audience.business_id.as_str();
        let mut found: HashMap<String, Connection> = HashMap::new();
        let failed = |err: super::registry::RegistryError| NotifyError(err.to_string());
        for department in &event.audience.departments {
            for c in self
                .registry
                .in_department(business, department, now)
                .await
                .map_err(failed)?
            {
                found.insert(c.connection_id.clone(), c);
            }
        }
        for agent in &event.audience.agents {
            for c in self
                .registry
                .of_agent(business, agent, now)
                .await
                .map_err(failed)?
            {
                found.insert(c.connection_id.clone(), c);
            }
        }
        // The registry is keyed by business already; this makes sure of it.
        Ok(found
            .into_values()
            .filter(|c| c.business_id == business)
            .collect())
    }

    /// Sends one frame to one connection; a gone connection is cleaned up.
    pub(crate) async fn deliver(&self, connection: &Connection, frame: &str) -> bool {
        let mut delay = Duration::from_millis(50);
        for attempt in 1..=POST_ATTEMPTS {
            match self.poster.post(&connection.connection_id, frame).await {
                Ok(()) => return true,
                Err(PostError::Gone) => {
                    self.forget(connection).await;
                    return false;
                }
                Err(err) if attempt == POST_ATTEMPTS => {
                    tracing::error!(
                        connection = %connection.connection_id,
                        agent = %connection.agent_id,
                        attempts = attempt,
                        cause = %err,
                        "could not post to a connection"
                    );
                }
                Err(err) => {
                    tracing::warn!(
                        connection = %connection.connection_id,
                        attempt,
                        cause = %err,
                        "posting to a connection failed; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        false
    }

    /// Removes a gone connection; its agent stops being available when it was their
    /// last live one.
    pub(crate) async fn forget(&self, connection: &Connection) {
        tracing::info!(
            connection = %connection.connection_id,
            agent = %connection.agent_id,
            "removing a gone connection"
        );
        if let Err(err) = self.registry.unregister(&connection.connection_id).await {
            tracing::warn!(cause = %err, "could not remove a gone connection");
            return;
        }
        super::end_availability_if_last(
            &self.store,
            self.registry.as_ref(),
            &connection.business_id,
            &connection.agent_id,
        )
        .await;
    }
}

#[async_trait::async_trait]
impl Notifier for SocketNotifier {
    async fn publish(&self, event: &Event) -> Result<(), NotifyError> {
        let connections = self.audience(event).await?;
        if connections.is_empty() {
            return Ok(());
        }
        let frame = serde_json::to_string(&event.frame)
            .map_err(|err| NotifyError(format!("serialising a frame: {err}")))?;
        let posts: Vec<_> = connections
            .iter()
            .map(|c| self.deliver(c, &frame))
            .collect();
        let delivered = futures::stream::iter(posts)
            .buffer_unordered(FANOUT_CONCURRENCY)
            .filter(|ok| std::future::ready(*ok))
            .count()
            .await;
        tracing::debug!(
            business = %event.audience.business_id,
            kind = event.frame.kind(),
            connections = connections.len(),
            delivered,
            "fanned out"
        );
        Ok(())
    }
}

/// Several notifiers in turn: the local product publishes to its sockets and to
/// in-process observers.
pub struct Notifiers(pub Vec<Arc<dyn Notifier>>);

#[async_trait::async_trait]
impl Notifier for Notifiers {
    async fn publish(&self, event: &Event) -> Result<(), NotifyError> {
        for notifier in &self.0 {
            notifier.publish(event).await?;
        }
        Ok(())
    }
}
