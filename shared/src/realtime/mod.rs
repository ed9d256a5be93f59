//! Real time: agents' WebSocket connections, the actions they send, and live
//! delivery of what happens to their conversations.
//!
//! [`Realtime`] handles API Gateway WebSocket events, the same on AWS (one Lambda
//! function per route: `$connect`, `$disconnect`, `$default`) and behind the local
//! gateway, which turns real socket traffic into those events.
//!
//! - [`registry`]: who is connected ([`ConnectionRegistry`]; DynamoDB in [`dynamo`],
//!   in memory in [`registry::LocalConnections`]).
//! - [`poster`]: sending frames to connections ([`ConnectionPoster`]; API Gateway's
//!   management API, or the local gateway's sockets).
//! - [`notifier`]: fan-out of routing's events to the connected audience.
//! - [`protocol`]: the JSON frames.
//!
//! # Connections and leases
//!
//! `$connect` authenticates the agent's token (the `token` query parameter; browsers
//! cannot set headers on a WebSocket) and records the connection with an expiry:
//! ten minutes after the agent's last frame (API Gateway's idle timeout), and never
//! past two hours after connecting (its longest connection). Every frame moves it.
//!
//! Availability is a separate lease in the database: `sync` starts it (and hands the
//! agent waiting conversations), every frame renews it, and it ends on disconnect,
//! when delivery finds the agent's last connection gone, on revocation, or when
//! `AGENT_LEASE_SECONDS` pass without a frame. An agent whose lease ended takes no new
//! conversations, so a lost `$disconnect` never leaves a ghost agent taking work.
//!
//! Each frame also checks that the credential the agent connected with is still
//! current: a revoked or replaced token ends the connection at its next frame, even
//! where nothing closed it when the token was revoked.

pub mod dynamo;
pub mod notifier;
pub mod poster;
pub mod protocol;
pub mod registry;
pub(crate) mod sync;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

pub use notifier::{Notifiers, SocketNotifier};
pub use poster::{ApiGatewayPoster, ConnectionPoster, LocalSockets, PostError};
pub use registry::{Connection, ConnectionRegistry, LocalConnections, RegistryError};

use crate::error::chain;
use crate::routing::{AgentRef, RouteError, Router};
use crate::store::{Context, Store, StoreError};
use protocol::{Action, ErrorCode, Incoming, Outgoing};

/// API Gateway closes a WebSocket connection after this long without traffic.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// API Gateway closes every WebSocket connection after this long.
pub const MAX_CONNECTION: Duration = Duration::from_secs(2 * 60 * 60);

/// Default availability lease; clients `ping` well inside it (every 30 seconds, say).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(120);

/// The real-time handlers and what they need.
pub struct Realtime {
    store: Arc<Store>,
    router: Arc<Router>,
    registry: Arc<dyn ConnectionRegistry>,
    sockets: Arc<SocketNotifier>,
    poster: Arc<dyn ConnectionPoster>,
    lease: Duration,
}

impl Realtime {
    /// Handlers over these parts. `router` should publish through `sockets` (see
    /// [`Realtime::notifier`]), so agents see what their actions cause.
    pub fn new(
        store: Arc<Store>,
        router: Arc<Router>,
        registry: Arc<dyn ConnectionRegistry>,
        poster: Arc<dyn ConnectionPoster>,
        sockets: Arc<SocketNotifier>,
        lease: Duration,
    ) -> Realtime {
        Realtime {
            store,
            router,
            registry,
            sockets,
            poster,
            lease,
        }
    }

    /// The notifier a router of these connections publishes through.
    pub fn notifier(
        store: Arc<Store>,
        registry: Arc<dyn ConnectionRegistry>,
        poster: Arc<dyn ConnectionPoster>,
    ) -> Arc<SocketNotifier> {
        Arc::new(SocketNotifier::new(store, registry, poster))
    }

    /// The router agents' actions go through.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// The connection registry.
    pub fn registry(&self) -> &Arc<dyn ConnectionRegistry> {
        &self.registry
    }

    /// Any WebSocket event, by its event type (`CONNECT`, `DISCONNECT`, `MESSAGE`).
    pub async fn handle(&self, event: &ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
        match event.request_context.event_type.as_deref() {
            Some("CONNECT") => self.connect(event).await,
            Some("DISCONNECT") => self.disconnect(event).await,
            _ => self.message(event).await,
        }
    }

    /// `$connect`: authenticates the agent and records the connection. 401 refuses
    /// the connection. Nothing is sent here: API Gateway refuses posts to a
    /// connection from its own `$connect`, and the client's first `sync` does the rest.
    pub async fn connect(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let Some(connection_id) = event.request_context.connection_id.as_deref() else {
            return status(400, "bad_request", "the event has no connection id");
        };
        // The token is a secret: never logged, nor is the query string it came in.
        let Some(token) = event.query_string_parameters.first("token") else {
            tracing::warn!(connection = %connection_id, "connection without a token refused");
            return status(401, "unauthorized", "missing token");
        };
        let identity = match crate::tenants::authenticate_agent(&self.store, token).await {
            Ok(Some(identity)) => identity,
            Ok(None) => {
                tracing::warn!(connection = %connection_id, "connection with an unknown token refused");
                return status(401, "unauthorized", "unknown or revoked token");
            }
            Err(err) => return internal(&err),
        };
        let now = crate::timestamp::now_millis();
        let connected_at = match event.request_context.connected_at {
            0 => now,
            at => at,
        };
        let connection = Connection {
            connection_id: connection_id.to_owned(),
            business_id: identity.business_id.clone(),
            agent_id: identity.agent_id.clone(),
            department: identity.department.clone(),
            credential_id: identity.credential_id.clone(),
            connected_at_ms: connected_at,
            expires_at_ms: expiry(connected_at, now),
        };
        if let Err(err) = self.registry.register(&connection).await {
            return internal(&err);
        }
        tracing::info!(
            connection = %connection_id,
            business = %identity.business_id,
            agent = %identity.agent_id,
            "agent connected"
        );
        status(200, "", "")
    }

    /// `$disconnect`: forgets the connection (idempotently) and ends the agent's
    /// availability when it was their last.
    pub async fn disconnect(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let Some(connection_id) = event.request_context.connection_id.as_deref() else {
            return status(400, "bad_request", "the event has no connection id");
        };
        match self.registry.unregister(connection_id).await {
            Ok(Some(connection)) => {
                tracing::info!(
                    connection = %connection_id,
                    agent = %connection.agent_id,
                    "agent disconnected"
                );
                end_availability_if_last(
                    &self.store,
                    self.registry.as_ref(),
                    &connection.business_id,
                    &connection.agent_id,
                )
                .await;
            }
            Ok(None) => {
                tracing::debug!(connection = %connection_id, "disconnect of an unknown connection")
            }
            Err(err) => return internal(&err),
        }
        status(200, "", "")
    }

    /// `$default`: one agent action. The answer goes to the sender through the
    /// management API; the function's own response is always 200.
    pub async fn message(
        &self,
        event: &ApiGatewayWebsocketProxyRequest,
    ) -> ApiGatewayProxyResponse {
        let Some(connection_id) = event.request_context.connection_id.as_deref() else {
            return status(400, "bad_request", "the event has no connection id");
        };
        let now = crate::timestamp::now_millis();
        let connection = match self.registry.get(connection_id, now).await {
            Ok(Some(connection)) => connection,
            Ok(None) => {
                // Expired or never registered: the connection is not ours to serve.
                tracing::warn!(connection = %connection_id, "frame on an unknown connection");
                let frame = Outgoing::error(None, ErrorCode::NotConnected, "connect again");
                let _ = self.poster.post(connection_id, &frame.to_json()).await;
                let _ = self.poster.disconnect(connection_id).await;
                return status(200, "", "");
            }
            Err(err) => return internal(&err),
        };
        match self.still_authorised(&connection).await {
            Ok(true) => {}
            Ok(false) => {
                self.end(&connection, "token revoked").await;
                return status(200, "", "");
            }
            Err(err) => return internal(&err),
        }
        self.renew(&connection, now).await;

        let body = if event.is_base64_encoded {
            None
        } else {
            event.body.as_deref()
        };
        let frame = match protocol::parse(body.unwrap_or_default()) {
            Ok(incoming) => self.act(&connection, incoming).await,
            Err(error) => error,
        };
        self.send(&connection, &frame).await;
        status(200, "", "")
    }

    async fn act(&self, connection: &Connection, incoming: Incoming) -> Outgoing {
        let agent = AgentRef {
            business_id: connection.business_id.clone(),
            agent_id: connection.agent_id.clone(),
            department: connection.department.clone(),
        };
        let name = incoming.action.name();
        let result = match incoming.action {
            Action::Ping {} => Ok(Outgoing::Pong),
            Action::Sync { cursor } => self.sync(&agent, cursor.as_deref()).await,
            Action::SendMessage {
                conversation_id,
                content,
                client_message_id,
            } => self
                .router
                .reply(
                    &agent,
                    &conversation_id,
                    &content,
                    client_message_id.as_deref(),
                )
                .await
                .map(|reply| Outgoing::ack_message(reply, client_message_id)),
            Action::Close { conversation_id } => self
                .router
                .close_as(&agent, &conversation_id)
                .await
                .map(|conversation| Outgoing::ack("close", conversation)),
            Action::Transfer {
                conversation_id,
                department,
            } => self
                .router
                .transfer_as(&agent, &conversation_id, &department)
                .await
                .map(|conversation| Outgoing::ack("transfer", conversation)),
        };
        result.unwrap_or_else(|err| {
            let code = ErrorCode::from_route(&err);
            if code == ErrorCode::Internal {
                tracing::error!(action = name, agent = %agent.agent_id, cause = %chain(&err), "action failed");
                Outgoing::error(Some(name), code, "something went wrong; try again")
            } else {
                tracing::info!(action = name, agent = %agent.agent_id, code = code.as_str(), "action refused");
                Outgoing::error(Some(name), code, &err.to_string())
            }
        })
    }

    /// `sync`: the first page marks the agent ready (handing them waiting
    /// conversations), then every page lists their conversations.
    async fn sync(&self, agent: &AgentRef, cursor: Option<&str>) -> Result<Outgoing, RouteError> {
        if cursor.is_none() {
            let until = crate::timestamp::now_millis() + self.lease.as_millis() as i64;
            self.router.agent_available(&agent.agent_id, until).await?;
        }
        sync::page(&self.store, agent, cursor).await
    }

    /// Whether the credential the connection was made with is still current.
    async fn still_authorised(&self, connection: &Connection) -> Result<bool, StoreError> {
        let conn = self.store.reader().await?;
        let mut rows = conn
            .query(
                r#"SELECT 1 FROM "Credential" WHERE "id" = ?1 AND "agentId" = ?2 AND "revokedAt" IS NULL"#,
                libsql::params![
                    connection.credential_id.as_str(),
                    connection.agent_id.as_str()
                ],
            )
            .await
            .context("checking a connection's credential")?;
        Ok(rows
            .next()
            .await
            .context("checking a connection's credential")?
            .is_some())
    }

    /// A frame renews the connection and the agent's lease.
    async fn renew(&self, connection: &Connection, now: i64) {
        let expires = expiry(connection.connected_at_ms, now);
        if let Err(err) = self
            .registry
            .renew(&connection.connection_id, expires)
            .await
        {
            tracing::warn!(connection = %connection.connection_id, cause = %err, "could not renew a connection");
        }
        let until = now + self.lease.as_millis() as i64;
        if let Err(err) =
            crate::routing::renew_availability(&self.store, &connection.agent_id, until).await
        {
            tracing::warn!(agent = %connection.agent_id, cause = %chain(&err), "could not renew a lease");
        }
    }

    async fn send(&self, connection: &Connection, frame: &Outgoing) {
        self.sockets.deliver(connection, &frame.to_json()).await;
    }

    /// Closes a connection for good: told why, disconnected, forgotten.
    async fn end(&self, connection: &Connection, why: &str) {
        tracing::info!(connection = %connection.connection_id, agent = %connection.agent_id, why, "closing a connection");
        let frame = Outgoing::error(None, ErrorCode::Unauthorized, why);
        let _ = self
            .poster
            .post(&connection.connection_id, &frame.to_json())
            .await;
        if let Err(err) = self.poster.disconnect(&connection.connection_id).await {
            tracing::warn!(connection = %connection.connection_id, cause = %err, "could not close a connection");
        }
        self.sockets.forget(connection).await;
    }

    /// Closes every connection of an agent (after their token was revoked) and ends
    /// their availability. Returns how many were closed.
    pub async fn disconnect_agent(
        &self,
        business_id: &str,
        agent_id: &str,
    ) -> Result<usize, RegistryError> {
        let now = crate::timestamp::now_millis();
        let connections = self.registry.of_agent(business_id, agent_id, now).await?;
        for connection in &connections {
            self.end(connection, "token revoked").await;
        }
        Ok(connections.len())
    }

    /// Closes the given connections whose credential is no longer current. The local
    /// gateway runs this periodically over its sockets, so a token revoked by another
    /// process closes its sockets within moments.
    pub async fn close_revoked(&self, connections: &[Connection]) -> usize {
        let mut closed = 0;
        for connection in connections {
            if let Ok(false) = self.still_authorised(connection).await {
                self.end(connection, "token revoked").await;
                closed += 1;
            }
        }
        closed
    }
}

/// The AWS wiring from the environment: the DynamoDB registry (`CONNECTIONS_TABLE`),
/// the management API (`WEBSOCKET_ENDPOINT`) and a router publishing through them.
pub async fn from_env(
    store: Arc<Store>,
    config: &crate::config::Config,
) -> Result<Realtime, crate::routing::RouteSetupError> {
    use crate::routing::RouteSetupError;
    let table = config
        .connections_table
        .as_deref()
        .ok_or(RouteSetupError::Missing("CONNECTIONS_TABLE"))?;
    let endpoint = config
        .websocket_endpoint
        .as_deref()
        .ok_or(RouteSetupError::Missing("WEBSOCKET_ENDPOINT"))?;
    let registry: Arc<dyn ConnectionRegistry> =
        Arc::new(dynamo::DynamoConnections::from_env(table).await);
    let poster: Arc<dyn ConnectionPoster> = Arc::new(ApiGatewayPoster::from_env(endpoint).await);
    let sockets = Realtime::notifier(store.clone(), registry.clone(), poster.clone());
    let router = Arc::new(Router::from_env(store.clone(), config, sockets.clone())?);
    // Agents' replies, closes and transfers record deliveries; with the routing queue
    // configured they go there at once, else the sweeper hands them over.
    if let Some(url) = &config.routing_queue_url {
        router.deliver_through(Arc::new(crate::queue::sqs::SqsQueue::from_env(url).await));
    }
    Ok(Realtime::new(
        store,
        router,
        registry,
        poster,
        sockets,
        config.agent_lease,
    ))
}

/// Where a Lambda function's events go: connected agents when `CONNECTIONS_TABLE` and
/// `WEBSOCKET_ENDPOINT` are set, else nowhere live (agents find the stored state
/// when they sync).
pub async fn notifier_from_env(
    store: Arc<Store>,
    config: &crate::config::Config,
) -> Arc<dyn crate::events::Notifier> {
    match (&config.connections_table, &config.websocket_endpoint) {
        (Some(table), Some(endpoint)) => Realtime::notifier(
            store,
            Arc::new(dynamo::DynamoConnections::from_env(table).await),
            Arc::new(ApiGatewayPoster::from_env(endpoint).await),
        ),
        _ => Arc::new(crate::events::LocalNotifier::new(1)),
    }
}

/// A connection's expiry after a frame at `now`: the idle timeout, capped by the
/// longest connection API Gateway allows.
fn expiry(connected_at: i64, now: i64) -> i64 {
    (now + IDLE_TIMEOUT.as_millis() as i64).min(connected_at + MAX_CONNECTION.as_millis() as i64)
}

/// Ends an agent's availability when they have no live connection left.
pub(crate) async fn end_availability_if_last(
    store: &Store,
    registry: &dyn ConnectionRegistry,
    business_id: &str,
    agent_id: &str,
) {
    let now = crate::timestamp::now_millis();
    match registry.of_agent(business_id, agent_id, now).await {
        Ok(left) if left.is_empty() => {
            if let Err(err) = crate::routing::end_availability(store, agent_id).await {
                tracing::warn!(agent = %agent_id, cause = %chain(&err), "could not end a lease");
            }
        }
        Ok(_) => {}
        Err(err) => {
            tracing::warn!(agent = %agent_id, cause = %err, "could not look up connections")
        }
    }
}

fn status(code: i64, error: &str, message: &str) -> ApiGatewayProxyResponse {
    let mut response = ApiGatewayProxyResponse {
        status_code: code,
        ..Default::default()
    };
    if !error.is_empty() {
        response.headers.insert(
            "content-type",
            lambda_http::http::HeaderValue::from_static("application/json"),
        );
        response.body = Some(Body::Text(
            serde_json::json!({"error": {"code": error, "message": message}}).to_string(),
        ));
    }
    response
}

fn internal(err: &dyn std::error::Error) -> ApiGatewayProxyResponse {
    tracing::error!(cause = %chain(err), "websocket handler failed");
    status(500, "internal", "internal error")
}
