//! Sending frames to connections, behind [`ConnectionPoster`]: API Gateway's
//! management API on AWS (and against the local gateway's copy of it), and the local
//! gateway's sockets directly ([`LocalSockets`]).

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;

/// Why a frame did not reach a connection.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The connection is gone (API Gateway's 410 `GoneException`).
    #[error("the connection is gone")]
    Gone,
    /// Anything else; worth a retry.
    #[error("posting to a connection: {0}")]
    Failed(String),
}

/// Sends to and closes connections.
#[async_trait]
pub trait ConnectionPoster: Send + Sync {
    /// Sends one text frame.
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError>;

    /// Closes a connection. Closing one that is gone is no error.
    async fn disconnect(&self, connection_id: &str) -> Result<(), PostError>;
}

/// API Gateway's management API (`@connections`), through the AWS SDK.
#[derive(Clone)]
pub struct ApiGatewayPoster {
    client: aws_sdk_apigatewaymanagement::Client,
}

impl ApiGatewayPoster {
    /// A poster on `client`.
    pub fn new(client: aws_sdk_apigatewaymanagement::Client) -> ApiGatewayPoster {
        ApiGatewayPoster { client }
    }

    /// A client for the WebSocket API at `endpoint` (`WEBSOCKET_ENDPOINT`:
    /// `https://{api}.execute-api.{region}.amazonaws.com/{stage}`, or the local
    /// gateway's `http://ADDR`), with credentials and region from the standard AWS
    /// environment. The SDK's own retries are off: the notifier retries.
    pub async fn from_env(endpoint: &str) -> ApiGatewayPoster {
        let config = crate::aws::sdk_config().await;
        let client = aws_sdk_apigatewaymanagement::Client::from_conf(
            aws_sdk_apigatewaymanagement::config::Builder::from(&config)
                .endpoint_url(endpoint)
                .retry_config(aws_sdk_apigatewaymanagement::config::retry::RetryConfig::disabled())
                .build(),
        );
        ApiGatewayPoster::new(client)
    }
}

fn is_gone<E: aws_sdk_apigatewaymanagement::error::ProvideErrorMetadata, R>(
    err: &aws_sdk_apigatewaymanagement::error::SdkError<E, R>,
) -> bool {
    err.as_service_error()
        .is_some_and(|e| e.code() == Some("GoneException"))
}

#[async_trait]
impl ConnectionPoster for ApiGatewayPoster {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        let sent = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(aws_sdk_apigatewaymanagement::primitives::Blob::new(
                frame.as_bytes(),
            ))
            .send()
            .await;
        match sent {
            Ok(_) => Ok(()),
            Err(err) if is_gone(&err) => Err(PostError::Gone),
            Err(err) => Err(PostError::Failed(crate::error::chain(&err))),
        }
    }

    async fn disconnect(&self, connection_id: &str) -> Result<(), PostError> {
        match self
            .client
            .delete_connection()
            .connection_id(connection_id)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_gone(&err) => Ok(()),
            Err(err) => Err(PostError::Failed(crate::error::chain(&err))),
        }
    }
}

/// What the local gateway writes to a socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// A text frame.
    Text(String),
    /// A close frame, after which the socket ends.
    Close,
}

/// Frames a socket may have waiting before it counts as gone (a client that does not
/// read would otherwise hold memory without bound).
pub const SOCKET_BACKLOG: usize = 4096;

/// The local gateway's open sockets: each connection id has a channel its socket task
/// writes out.
#[derive(Default)]
pub struct LocalSockets {
    sockets: Mutex<HashMap<String, mpsc::Sender<Outbound>>>,
}

impl LocalSockets {
    /// No sockets.
    pub fn new() -> LocalSockets {
        LocalSockets::default()
    }

    /// Opens a connection's channel; the socket task reads the receiver.
    pub fn attach(&self, connection_id: &str) -> mpsc::Receiver<Outbound> {
        let (sender, receiver) = mpsc::channel(SOCKET_BACKLOG);
        self.sockets
            .lock()
            .expect("sockets lock")
            .insert(connection_id.to_owned(), sender);
        receiver
    }

    /// Forgets a connection's channel.
    pub fn detach(&self, connection_id: &str) {
        self.sockets
            .lock()
            .expect("sockets lock")
            .remove(connection_id);
    }

    /// Whether a connection is open.
    pub fn contains(&self, connection_id: &str) -> bool {
        self.sockets
            .lock()
            .expect("sockets lock")
            .contains_key(connection_id)
    }

    /// Open connections.
    pub fn len(&self) -> usize {
        self.sockets.lock().expect("sockets lock").len()
    }

    /// Whether no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn send(&self, connection_id: &str, frame: Outbound) -> Result<(), PostError> {
        let sender = self
            .sockets
            .lock()
            .expect("sockets lock")
            .get(connection_id)
            .cloned()
            .ok_or(PostError::Gone)?;
        match sender.try_send(frame) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PostError::Gone),
            Err(mpsc::error::TrySendError::Full(_)) => {
                // A socket that stopped reading is dropped, as API Gateway drops
                // connections it cannot write to.
                tracing::warn!(connection = %connection_id, "socket backlog full; closing it");
                self.detach(connection_id);
                Err(PostError::Gone)
            }
        }
    }
}

#[async_trait]
impl ConnectionPoster for LocalSockets {
    async fn post(&self, connection_id: &str, frame: &str) -> Result<(), PostError> {
        self.send(connection_id, Outbound::Text(frame.to_owned()))
    }

    async fn disconnect(&self, connection_id: &str) -> Result<(), PostError> {
        let _ = self.send(connection_id, Outbound::Close);
        self.detach(connection_id);
        Ok(())
    }
}
