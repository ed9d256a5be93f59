//! The WebSocket protocol's frames: JSON text, agent to server by `action` (also API
//! Gateway's route selection key), server to agent by `type`.
//!
//! Routing's events ([`crate::events::Frame`]) are the other server frames.

use serde::Deserialize;
use serde_json::{Value, json};

use crate::events::ConversationView;
use crate::routing::{Reply, RouteError};
use crate::webhook::{MAX_FIELD_CHARS, MAX_MESSAGE_CHARS};

/// The longest frame an agent may send. API Gateway refuses frames over 32 KB.
pub const MAX_FRAME_BYTES: usize = 32 * 1024;

/// An agent's frame.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    /// What they asked for.
    pub action: Action,
}

/// The actions, by their `action` tag.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(
    tag = "action",
    rename_all = "lowercase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum Action {
    /// The agent's conversations and their department's queue; marks them ready.
    Sync {
        /// Asks for the page after the one that gave this cursor.
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Renews the lease; answered with `pong`. (A struct variant, so unknown fields are
    /// refused here as for every other action.)
    Ping {},
    /// A reply to a conversation.
    SendMessage {
        /// The conversation.
        conversation_id: String,
        /// The text.
        content: String,
        /// The client's id for the reply, echoed in the `ack`; a resend with the same
        /// id is stored once.
        #[serde(default)]
        client_message_id: Option<String>,
    },
    /// Closes a conversation.
    Close {
        /// The conversation.
        conversation_id: String,
    },
    /// Moves a conversation to another department.
    Transfer {
        /// The conversation.
        conversation_id: String,
        /// Where to.
        department: String,
    },
}

impl Action {
    /// The `action` tag.
    pub fn name(&self) -> &'static str {
        match self {
            Action::Sync { .. } => "sync",
            Action::Ping {} => "ping",
            Action::SendMessage { .. } => "sendmessage",
            Action::Close { .. } => "close",
            Action::Transfer { .. } => "transfer",
        }
    }
}

const ACTIONS: [&str; 5] = ["sync", "ping", "sendmessage", "close", "transfer"];

/// Machine-readable error codes of `error` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Not a JSON object with a string `action`.
    BadFrame,
    /// An `action` this server does not know.
    UnknownAction,
    /// A known action with missing, extra or invalid fields.
    InvalidFrame,
    /// No such conversation in the agent's business.
    NotFound,
    /// The conversation is in another department and not the agent's.
    Forbidden,
    /// The conversation is another agent's.
    NotAssigned,
    /// The conversation is still being classified.
    NotRouted,
    /// The conversation is closed.
    ConversationClosed,
    /// No such department in the business.
    UnknownDepartment,
    /// A transfer to the conversation's own department.
    SameDepartment,
    /// The agent is at capacity.
    OverCapacity,
    /// The connection is not (or no longer) registered.
    NotConnected,
    /// The token was revoked; the connection closes.
    Unauthorized,
    /// Our fault; the action may be retried.
    Internal,
}

impl ErrorCode {
    /// The code as sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::InvalidFrame => "invalid_frame",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotAssigned => "not_assigned",
            ErrorCode::NotRouted => "not_routed",
            ErrorCode::ConversationClosed => "conversation_closed",
            ErrorCode::UnknownDepartment => "unknown_department",
            ErrorCode::SameDepartment => "same_department",
            ErrorCode::OverCapacity => "over_capacity",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }

    /// The code for a refused action.
    pub fn from_route(err: &RouteError) -> ErrorCode {
        match err {
            RouteError::UnknownConversation => ErrorCode::NotFound,
            RouteError::UnknownDepartment(_) => ErrorCode::UnknownDepartment,
            RouteError::SameDepartment(_) => ErrorCode::SameDepartment,
            RouteError::Closed => ErrorCode::ConversationClosed,
            RouteError::Forbidden => ErrorCode::Forbidden,
            RouteError::NotAssigned => ErrorCode::NotAssigned,
            RouteError::OverCapacity => ErrorCode::OverCapacity,
            RouteError::NotRouted => ErrorCode::NotRouted,
            _ => ErrorCode::Internal,
        }
    }
}

/// A server frame answering the sender.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    /// `pong`.
    Pong,
    /// `ack` of an action, with what it produced.
    Ack(Value),
    /// `sync.result`.
    SyncResult(Value),
    /// `error {code, message, action}`.
    Error {
        /// The action refused, when known.
        action: Option<&'static str>,
        /// Machine-readable.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

impl Outgoing {
    /// An `error` frame.
    pub fn error(action: Option<&'static str>, code: ErrorCode, message: &str) -> Outgoing {
        Outgoing::Error {
            action,
            code,
            message: message.to_owned(),
        }
    }

    /// The `ack` of a close or transfer.
    pub fn ack(action: &'static str, conversation: ConversationView) -> Outgoing {
        Outgoing::Ack(json!({
            "action": action,
            "conversationId": conversation.id,
            "conversation": conversation,
        }))
    }

    /// The `ack` of a reply.
    pub fn ack_message(reply: Reply, client_message_id: Option<String>) -> Outgoing {
        Outgoing::Ack(json!({
            "action": "sendmessage",
            "conversationId": reply.conversation_id,
            "messageId": reply.message.id,
            "clientMessageId": client_message_id,
            "sequence": reply.message.sequence,
            "duplicate": reply.duplicate,
        }))
    }

    /// The frame as sent.
    pub fn to_json(&self) -> String {
        let value = match self {
            Outgoing::Pong => json!({"type": "pong"}),
            Outgoing::Ack(fields) | Outgoing::SyncResult(fields) => {
                let kind = if matches!(self, Outgoing::Ack(_)) {
                    "ack"
                } else {
                    "sync.result"
                };
                let mut value = json!({"type": kind});
                if let (Some(out), Value::Object(fields)) = (value.as_object_mut(), fields) {
                    out.extend(fields.clone());
                }
                value
            }
            Outgoing::Error {
                action,
                code,
                message,
            } => json!({
                "type": "error",
                "code": code.as_str(),
                "message": message,
                "action": action,
            }),
        };
        value.to_string()
    }
}

/// Reads an agent's frame, or the `error` frame that answers it.
pub fn parse(body: &str) -> Result<Incoming, Outgoing> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(Outgoing::error(
            None,
            ErrorCode::BadFrame,
            "the frame is over 32 KB",
        ));
    }
    let value: Value = serde_json::from_str(body)
        .map_err(|_| Outgoing::error(None, ErrorCode::BadFrame, "a frame is a JSON object"))?;
    let Some(name) = value.get("action").and_then(Value::as_str) else {
        return Err(Outgoing::error(
            None,
            ErrorCode::BadFrame,
            "a frame needs a string `action`",
        ));
    };
    let Some(name) = ACTIONS.iter().copied().find(|a| *a == name) else {
        return Err(Outgoing::error(
            None,
            ErrorCode::UnknownAction,
            "actions are sync, ping, sendmessage, close and transfer",
        ));
    };
    let action: Action = serde_json::from_value(value)
        .map_err(|err| Outgoing::error(Some(name), ErrorCode::InvalidFrame, &err.to_string()))?;
    validate(&action)
        .map_err(|message| Outgoing::error(Some(name), ErrorCode::InvalidFrame, message))?;
    Ok(Incoming { action })
}

fn validate(action: &Action) -> Result<(), &'static str> {
    let id_ok = |id: &str| !id.trim().is_empty() && id.chars().count() <= MAX_FIELD_CHARS;
    match action {
        Action::Ping {} | Action::Sync { cursor: None } => Ok(()),
        Action::Sync { cursor: Some(c) }
            if !c.is_empty() && c.len() <= 9 && c.bytes().all(|b| b.is_ascii_digit()) =>
        {
            Ok(())
        }
        Action::Sync { .. } => Err("`cursor` is not one this server gave"),
        Action::SendMessage {
            conversation_id,
            content,
            client_message_id,
        } => {
            if !id_ok(conversation_id) {
                return Err("`conversationId` must be a non-empty string");
            }
            if content.trim().is_empty() {
                return Err("`content` must not be empty");
            }
            if content.chars().count() > MAX_MESSAGE_CHARS {
                return Err("`content` is longer than 4000 characters");
            }
            if client_message_id.as_deref().is_some_and(|id| !id_ok(id)) {
                return Err(
                    "`clientMessageId` must be a non-empty string of at most 255 characters",
                );
            }
            Ok(())
        }
        Action::Close { conversation_id } => id_ok(conversation_id)
            .then_some(())
            .ok_or("`conversationId` must be a non-empty string"),
        Action::Transfer {
            conversation_id,
            department,
        } => {
            if !id_ok(conversation_id) {
                return Err("`conversationId` must be a non-empty string");
            }
            if !id_ok(department) {
                return Err("`department` must be a non-empty string");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_parse_by_action() {
        assert_eq!(
            parse(r#"{"action":"ping"}"#).unwrap().action,
            Action::Ping {}
        );
        assert_eq!(
            parse(r#"{"action":"sendmessage","conversationId":"c","content":"hi","clientMessageId":"m1"}"#)
                .unwrap()
                .action,
            Action::SendMessage {
                conversation_id: "c".into(),
                content: "hi".into(),
                client_message_id: Some("m1".into())
            }
        );
    }

    #[test]
    fn bad_frames_get_their_code() {
        let code = |body: &str| match parse(body) {
            Err(Outgoing::Error { code, .. }) => code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code("not json"), ErrorCode::BadFrame);
        assert_eq!(code("[1]"), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"action":"dance"}"#), ErrorCode::UnknownAction);
        assert_eq!(code(r#"{"action":"close"}"#), ErrorCode::InvalidFrame);
        assert_eq!(
            code(r#"{"action":"sendmessage","conversationId":"c","content":"  "}"#),
            ErrorCode::InvalidFrame
        );
        assert_eq!(
            code(r#"{"action":"ping","extra":1}"#),
            ErrorCode::InvalidFrame
        );
    }
}
