//! What agents are told as conversations move: routed, assigned, new messages, closed,
//! transferred; and when a callback to their business was given up.
//!
//! An [`Event`] names its audience (agents of the business in some departments, plus
//! some agents by id) and carries the frame those agents receive. A [`Notifier`] gets it
//! there. The routing code publishes after its transaction commits, so an event always
//! describes stored state, and an agent that missed one finds the same state by reading
//! the store again.
//!
//! Events carry customer text to agents, who must see it; they are never logged above
//! debug level.

use std::sync::Arc;

use serde::Serialize;

/// Who receives an event. Always within one business.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Audience {
    /// The business; no one outside it ever receives the event.
    pub business_id: String,
    /// Connected agents of these departments receive it.
    pub departments: Vec<String>,
    /// These agents receive it too, whatever their department.
    pub agents: Vec<String>,
}

/// A conversation as agents see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConversationView {
    /// Its id.
    pub id: String,
    /// Its department; empty while it is being routed.
    pub department: String,
    /// `pending`, `open`, `in_progress` or `closed`.
    pub status: String,
    /// The agent working it, once assigned.
    pub assigned_agent_id: Option<String>,
    /// What the customer wants, when the classifier said.
    pub intent: Option<String>,
    /// How sure the classifier was.
    pub confidence: Option<f64>,
    /// Who decided the department: `llm`, `embedded` or `fallback`.
    pub classifier: Option<String>,
    /// The business's id for the customer.
    pub customer_id: Option<String>,
    /// The customer's name, when given.
    pub customer_name: Option<String>,
    /// Where the customer wrote from, when given.
    pub channel: Option<String>,
    /// The sequence number of its latest message.
    pub last_sequence: i64,
}

/// A message as agents see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageView {
    /// Its id.
    pub id: String,
    /// `customer`, `agent` or `system`.
    pub sender: String,
    /// The text.
    pub content: String,
    /// Its place in the conversation: 1, 2, 3, … with no gaps.
    pub sequence: i64,
    /// When it was stored, in Prisma's text format.
    pub created_at: String,
}

/// The frame an event's audience receives, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Frame {
    /// A new conversation was classified into a department.
    #[serde(rename = "conversation.routed", rename_all = "camelCase")]
    Routed {
        /// The conversation after routing.
        conversation: ConversationView,
    },
    /// A conversation was given to an agent.
    #[serde(rename = "conversation.assigned", rename_all = "camelCase")]
    Assigned {
        /// The conversation after assignment.
        conversation: ConversationView,
        /// The agent it went to.
        agent_id: String,
    },
    /// A message joined a conversation.
    #[serde(rename = "message.created", rename_all = "camelCase")]
    MessageCreated {
        /// The conversation.
        conversation_id: String,
        /// The message, with its sequence number so clients can order and spot gaps.
        message: MessageView,
    },
    /// A conversation was closed.
    #[serde(rename = "conversation.closed", rename_all = "camelCase")]
    Closed {
        /// The conversation after closing.
        conversation: ConversationView,
    },
    /// A conversation moved to another department.
    #[serde(rename = "conversation.transferred", rename_all = "camelCase")]
    Transferred {
        /// The conversation after the transfer.
        conversation: ConversationView,
        /// Where it came from.
        from_department: String,
    },
    /// A callback to the business could not be delivered and was given up: the
    /// business did not receive the agent's reply (or the closed or transferred
    /// event). Shaped like the `error` frame that answers a refused action, with
    /// `code` `delivery_failed`, `action` null, and what failed.
    #[serde(rename = "error", rename_all = "camelCase")]
    DeliveryFailed {
        /// Always `delivery_failed`.
        code: &'static str,
        /// For people: which delivery failed and why, without any message text.
        message: String,
        /// Always null: no action of the agent's was refused.
        action: Option<&'static str>,
        /// The conversation.
        conversation_id: String,
        /// The message the delivery carried.
        message_id: String,
        /// The delivery, as its `X-Chat-Router-Delivery` header named it.
        delivery_id: String,
        /// `message`, `closed` or `transferred`.
        event: String,
    },
}

impl Frame {
    /// The `type` tag, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Frame::Routed { .. } => "conversation.routed",
            Frame::Assigned { .. } => "conversation.assigned",
            Frame::MessageCreated { .. } => "message.created",
            Frame::Closed { .. } => "conversation.closed",
            Frame::Transferred { .. } => "conversation.transferred",
            Frame::DeliveryFailed { .. } => "error",
        }
    }
}

/// A frame and who gets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Who receives it.
    pub audience: Audience,
    /// What they receive.
    pub frame: Frame,
}

/// Why an event could not be delivered. Safe to log: it never holds the frame.
#[derive(Debug, thiserror::Error)]
#[error("delivering an event: {0}")]
pub struct NotifyError(pub String);

/// Gets events to their audience.
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    /// Delivers one event to everyone in its audience who can receive it now. An error
    /// means the delivery as a whole failed and may be retried; a recipient that is
    /// simply gone is not an error.
    async fn publish(&self, event: &Event) -> Result<(), NotifyError>;
}

/// The in-process notifier: every event goes to whoever subscribed in this process
/// (the local gateway's connections, tests). Publishing with no subscribers succeeds,
/// as delivery to an empty audience does.
#[derive(Clone)]
pub struct LocalNotifier {
    sender: tokio::sync::broadcast::Sender<Arc<Event>>,
}

impl LocalNotifier {
    /// A notifier whose subscribers may fall up to `backlog` events behind before they
    /// miss some (and learn so from their receiver).
    pub fn new(backlog: usize) -> LocalNotifier {
        let (sender, _) = tokio::sync::broadcast::channel(backlog.max(1));
        LocalNotifier { sender }
    }

    /// Receives every event published from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Event>> {
        self.sender.subscribe()
    }
}

impl Default for LocalNotifier {
    fn default() -> LocalNotifier {
        LocalNotifier::new(65_536)
    }
}

#[async_trait::async_trait]
impl Notifier for LocalNotifier {
    async fn publish(&self, event: &Event) -> Result<(), NotifyError> {
        tracing::debug!(
            business = %event.audience.business_id,
            kind = event.frame.kind(),
            "event"
        );
        // An error only means nobody is subscribed.
        let _ = self.sender.send(Arc::new(event.clone()));
        Ok(())
    }
}
