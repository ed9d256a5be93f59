//! Who is connected: the connection registry, behind [`ConnectionRegistry`], in
//! DynamoDB on AWS ([`super::dynamo::DynamoConnections`]) and in memory locally
//! ([`LocalConnections`]).
//!
//! Every entry has an expiry. Stores may keep expired entries for a while (DynamoDB
//! deletes them hours or days late), so every read leaves them out.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use async_trait::async_trait;

/// One agent's WebSocket connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// API Gateway's connection id.
    pub connection_id: String,
    /// The agent's business.
    pub business_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's department.
    pub department: String,
    /// The credential the agent connected with; once it is revoked, the connection
    /// goes.
    pub credential_id: String,
    /// When it connected, in milliseconds since the Unix epoch.
    pub connected_at_ms: i64,
    /// When it stops counting as connected, in milliseconds since the Unix epoch.
    pub expires_at_ms: i64,
}

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
#[error("connection registry: {0}")]
pub struct RegistryError(pub String);

/// Where connections are recorded.
#[async_trait]
pub trait ConnectionRegistry: Send + Sync {
    /// Records a connection (or replaces one with the same id).
    async fn register(&self, connection: &Connection) -> Result<(), RegistryError>;

    /// Forgets a connection and returns what it was, if it was recorded. Removing
    /// one that is not there is no error.
    async fn unregister(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError>;

    /// A connection that has not expired by `now_ms`.
    async fn get(
        &self,
        connection_id: &str,
        now_ms: i64,
    ) -> Result<Option<Connection>, RegistryError>;

    /// Moves a recorded connection's expiry; false if it is not recorded.
    async fn renew(&self, connection_id: &str, expires_at_ms: i64) -> Result<bool, RegistryError>;

    /// Live connections of a business's department.
    async fn in_department(
        &self,
        business_id: &str,
        department: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError>;

    /// Live connections of one agent.
    async fn of_agent(
        &self,
        business_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError>;
}

/// The in-process registry of `chat-router serve`.
#[derive(Default)]
pub struct LocalConnections {
    state: Mutex<Indexes>,
}

#[derive(Default)]
struct Indexes {
    by_id: HashMap<String, Connection>,
    /// (business, department) to connection ids.
    by_department: HashMap<(String, String), HashSet<String>>,
    /// (business, agent) to connection ids.
    by_agent: HashMap<(String, String), HashSet<String>>,
}

impl Indexes {
    fn remove(&mut self, connection_id: &str) -> Option<Connection> {
        let old = self.by_id.remove(connection_id)?;
        let department = (old.business_id.clone(), old.department.clone());
        if let Some(ids) = self.by_department.get_mut(&department) {
            ids.remove(connection_id);
            if ids.is_empty() {
                self.by_department.remove(&department);
            }
        }
        let agent = (old.business_id.clone(), old.agent_id.clone());
        if let Some(ids) = self.by_agent.get_mut(&agent) {
            ids.remove(connection_id);
            if ids.is_empty() {
                self.by_agent.remove(&agent);
            }
        }
        Some(old)
    }

    fn live(&self, ids: Option<&HashSet<String>>, now_ms: i64) -> Vec<Connection> {
        ids.into_iter()
            .flatten()
            .filter_map(|id| self.by_id.get(id))
            .filter(|c| c.expires_at_ms > now_ms)
            .cloned()
            .collect()
    }
}

impl LocalConnections {
    /// An empty registry.
    pub fn new() -> LocalConnections {
        LocalConnections::default()
    }

    /// Every recorded connection, expired or not.
    pub fn all(&self) -> Vec<Connection> {
        let state = self.state.lock().expect("registry lock");
        state.by_id.values().cloned().collect()
    }
}

#[async_trait]
impl ConnectionRegistry for LocalConnections {
    async fn register(&self, connection: &Connection) -> Result<(), RegistryError> {
        let mut state = self.state.lock().expect("registry lock");
        state.remove(&connection.connection_id);
        let id = connection.connection_id.clone();
        state
            .by_department
            .entry((
                connection.business_id.clone(),
                connection.department.clone(),
            ))
            .or_default()
            .insert(id.clone());
        state
            .by_agent
            .entry((connection.business_id.clone(), connection.agent_id.clone()))
            .or_default()
            .insert(id.clone());
        state.by_id.insert(id, connection.clone());
        Ok(())
    }

    async fn unregister(&self, connection_id: &str) -> Result<Option<Connection>, RegistryError> {
        Ok(self
            .state
            .lock()
            .expect("registry lock")
            .remove(connection_id))
    }

    async fn get(
        &self,
        connection_id: &str,
        now_ms: i64,
    ) -> Result<Option<Connection>, RegistryError> {
        let state = self.state.lock().expect("registry lock");
        Ok(state
            .by_id
            .get(connection_id)
            .filter(|c| c.expires_at_ms > now_ms)
            .cloned())
    }

    async fn renew(&self, connection_id: &str, expires_at_ms: i64) -> Result<bool, RegistryError> {
        let mut state = self.state.lock().expect("registry lock");
        Ok(match state.by_id.get_mut(connection_id) {
            Some(connection) => {
                connection.expires_at_ms = expires_at_ms;
                true
            }
            None => false,
        })
    }

    async fn in_department(
        &self,
        business_id: &str,
        department: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError> {
        let state = self.state.lock().expect("registry lock");
        let key = (business_id.to_owned(), department.to_owned());
        Ok(state.live(state.by_department.get(&key), now_ms))
    }

    async fn of_agent(
        &self,
        business_id: &str,
        agent_id: &str,
        now_ms: i64,
    ) -> Result<Vec<Connection>, RegistryError> {
        let state = self.state.lock().expect("registry lock");
        let key = (business_id.to_owned(), agent_id.to_owned());
        Ok(state.live(state.by_agent.get(&key), now_ms))
    }
}
