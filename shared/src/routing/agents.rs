//! What agents do to conversations: reply, and the rule of who may act on which
//! conversation; and their availability lease.
//!
//! An agent may work a conversation assigned to them, or one waiting (`open`) in
//! their own department. Replying to a waiting conversation takes it, through the
//! same capacity-checked assignment routing uses.

use crate::store::Sql;

use super::assign::{ASSIGN, returning_view};
use super::{Assignment, RouteError, Router, assigned_event, audience};
use crate::events::{ConversationView, Event, Frame, MessageView};
use crate::store::{Context, Store, StoreError, begin, finish, text};
use crate::timestamp;

/// An authenticated agent acting on conversations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRef {
    /// Their business.
    pub business_id: String,
    /// The agent.
    pub agent_id: String,
    /// Their department.
    pub department: String,
}

/// A stored agent reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    /// The conversation.
    pub conversation_id: String,
    /// The message.
    pub message: MessageView,
    /// True when the client's message id was seen before: nothing new was stored.
    pub duplicate: bool,
}

/// A conversation's department, status and assigned agent. Another business's
/// conversation is, to the caller, no conversation at all.
pub(crate) async fn placement(
    sql: Sql<'_>,
    business_id: &str,
    conversation_id: &str,
) -> Result<(String, String, Option<String>), RouteError> {
    let mut rows = sql
        .query(
            r#"SELECT "department", "status", "assignedAgentId" FROM "Conversation"
               WHERE "id" = ?1 AND "businessId" = ?2"#,
            libsql::params![conversation_id, business_id],
        )
        .await
        .context("reading a conversation")?;
    let row = rows
        .next()
        .await
        .context("reading a conversation")?
        .ok_or(RouteError::UnknownConversation)?;
    let (department, status) = (text(&row, 0)?, text(&row, 1)?);
    let assigned: Option<String> = row.get(2).context("reading a conversation")?;
    Ok((department, status, assigned))
}

/// Checks inside a write transaction that `agent` may act on the conversation;
/// returns its department, status and assigned agent.
pub(crate) async fn authorize(
    sql: Sql<'_>,
    agent: &AgentRef,
    conversation_id: &str,
) -> Result<(String, String, Option<String>), RouteError> {
    let (department, status, assigned) =
        placement(sql, &agent.business_id, conversation_id).await?;
    if assigned.as_deref() == Some(agent.agent_id.as_str()) && status == "in_progress" {
        return Ok((department, status, assigned));
    }
    match status.as_str() {
        "closed" => Err(RouteError::Closed),
        _ if department != agent.department => Err(RouteError::Forbidden),
        "pending" => Err(RouteError::NotRouted),
        "in_progress" => Err(RouteError::NotAssigned),
        _ => Ok((department, status, assigned)),
    }
}

impl Router {
    /// Stores an agent's reply. A conversation waiting in the agent's department
    /// becomes theirs first (refused when they are at capacity); a `client_message_id`
    /// seen before in the conversation returns the stored message and stores nothing.
    /// The audience gets `message.created` (and `conversation.assigned` on a take).
    /// When the business has a callback URL, a delivery of the reply is stored in the
    /// same transaction and handed to the delivery queue after the commit.
    pub async fn reply(
        &self,
        agent: &AgentRef,
        conversation_id: &str,
        content: &str,
        client_message_id: Option<&str>,
    ) -> Result<Reply, RouteError> {
        let (now_ms, now) = (timestamp::now_millis(), timestamp::now());
        let conn = self.store.writer().await?;
        let tx = begin(&conn, "starting to store a reply").await?;
        let sql = conn.sql_in(&tx);
        let result = async {
            if let Some(client_id) = client_message_id
                && let Some(message) = earlier_reply(sql, agent, conversation_id, client_id).await?
            {
                return Ok((message, None, None, true, None));
            }
            let (department, status, _) = authorize(sql, agent, conversation_id).await?;
            let mut taken = None;
            if status == "open" {
                taken = Some(take(sql, agent, conversation_id, now_ms, &now).await?);
            }
            let message = insert_reply(
                sql,
                agent,
                conversation_id,
                content,
                client_message_id,
                &now,
            )
            .await?;
            let delivery = crate::callback::deliver::record(
                sql,
                &agent.business_id,
                conversation_id,
                crate::callback::endpoint::DeliveryEvent::Message,
                Some(&message),
                serde_json::json!({}),
                self.delivery_enqueued_at(),
            )
            .await?;
            Ok::<_, RouteError>((message, Some(department), taken, false, delivery))
        }
        .await;
        let (message, department, taken, duplicate, delivery) = finish(tx, result).await?;
        drop(conn);
        self.hand_over(delivery).await;
        let reply = Reply {
            conversation_id: conversation_id.to_owned(),
            message,
            duplicate,
        };
        let Some(department) = department else {
            return Ok(reply);
        };
        tracing::info!(
            business = %agent.business_id,
            conversation = %conversation_id,
            agent = %agent.agent_id,
            sequence = reply.message.sequence,
            "agent replied"
        );
        let mut events = Vec::new();
        if let Some(conversation) = taken {
            events.push(assigned_event(
                &agent.business_id,
                Assignment {
                    conversation,
                    agent_id: agent.agent_id.clone(),
                },
            ));
        }
        events.push(Event {
            audience: audience(&agent.business_id, &department, Some(&agent.agent_id)),
            frame: Frame::MessageCreated {
                conversation_id: conversation_id.to_owned(),
                message: reply.message.clone(),
            },
        });
        self.publish_all(events).await;
        Ok(reply)
    }
}

/// The agent's earlier reply with this client id, if any.
async fn earlier_reply(
    sql: Sql<'_>,
    agent: &AgentRef,
    conversation_id: &str,
    client_id: &str,
) -> Result<Option<MessageView>, RouteError> {
    let mut rows = sql
        .query(
            r#"SELECT m."id", m."content", m."sequence", m."createdAt", m."agentId"
               FROM "Message" m JOIN "Conversation" c ON c."id" = m."conversationId"
               WHERE m."conversationId" = ?1 AND m."clientMessageId" = ?2 AND c."businessId" = ?3"#,
            libsql::params![conversation_id, client_id, agent.business_id.as_str()],
        )
        .await
        .context("looking for an earlier reply")?;
    let Some(row) = rows.next().await.context("looking for an earlier reply")? else {
        return Ok(None);
    };
    let author: Option<String> = row.get(4).context("reading an earlier reply")?;
    if author.as_deref() != Some(agent.agent_id.as_str()) {
        // Another agent's id: this agent's reply is a new message that cannot reuse it.
        return Err(RouteError::NotAssigned);
    }
    let created = row.get_value(3).context("reading an earlier reply")?;
    Ok(Some(MessageView {
        id: text(&row, 0)?,
        sender: "agent".into(),
        content: text(&row, 1)?,
        sequence: row.get(2).context("reading an earlier reply")?,
        created_at: timestamp::parse(&created)
            .map(timestamp::format)
            .ok_or_else(|| StoreError::Corrupt(format!("unreadable date {created:?}")))?,
    }))
}

/// Gives a waiting conversation to the agent, within their capacity.
async fn take(
    sql: Sql<'_>,
    agent: &AgentRef,
    conversation_id: &str,
    now_ms: i64,
    now: &str,
) -> Result<ConversationView, RouteError> {
    let mut rows = sql
        .query(
            r#"SELECT coalesce(l."active", 0) >= a."capacity"
               FROM "Agent" a LEFT JOIN "AgentLoad" l ON l."agentId" = a."id" WHERE a."id" = ?1"#,
            libsql::params![agent.agent_id.as_str()],
        )
        .await
        .context("reading an agent's load")?;
    let full: bool = match rows.next().await.context("reading an agent's load")? {
        Some(row) => row.get(0).context("reading an agent's load")?,
        None => return Err(RouteError::UnknownAgent),
    };
    drop(rows);
    if full {
        return Err(RouteError::OverCapacity);
    }
    let taken = returning_view(
        sql,
        ASSIGN,
        libsql::params![conversation_id, agent.agent_id.as_str(), now],
        "taking a conversation",
    )
    .await?
    .ok_or(RouteError::NotAssigned)?;
    sql.execute(
        r#"UPDATE "AgentPresence" SET "idleSince" = ?2 WHERE "agentId" = ?1"#,
        libsql::params![agent.agent_id.as_str(), now_ms],
    )
    .await
    .context("recording an assignment")?;
    tracing::info!(
        business = %agent.business_id,
        conversation = %conversation_id,
        agent = %agent.agent_id,
        "agent took a waiting conversation"
    );
    Ok(taken)
}

async fn insert_reply(
    sql: Sql<'_>,
    agent: &AgentRef,
    conversation_id: &str,
    content: &str,
    client_message_id: Option<&str>,
    now: &str,
) -> Result<MessageView, RouteError> {
    let mut rows = sql
        .query(
            r#"UPDATE "Conversation" SET "lastSequence" = "lastSequence" + 1, "updatedAt" = ?2
               WHERE "id" = ?1 RETURNING "lastSequence""#,
            libsql::params![conversation_id, now],
        )
        .await
        .context("numbering a reply")?;
    let sequence: i64 = rows
        .next()
        .await
        .context("numbering a reply")?
        .ok_or(RouteError::UnknownConversation)?
        .get(0)
        .context("numbering a reply")?;
    while rows.next().await.context("numbering a reply")?.is_some() {}
    drop(rows);
    let id = crate::new_id();
    sql.execute(
        r#"INSERT INTO "Message" ("id", "conversationId", "sender", "content", "createdAt", "sequence", "agentId", "clientMessageId")
           VALUES (?1, ?2, 'agent', ?3, ?4, ?5, ?6, ?7)"#,
        libsql::params![
            id.as_str(),
            conversation_id,
            content,
            now,
            sequence,
            agent.agent_id.as_str(),
            client_message_id
        ],
    )
    .await
    .context("storing a reply")?;
    Ok(MessageView {
        id,
        sender: "agent".into(),
        content: content.to_owned(),
        sequence,
        created_at: now.to_owned(),
    })
}

/// Ends an agent's availability lease; they keep the conversations they have.
pub async fn end_availability(store: &Store, agent_id: &str) -> Result<(), StoreError> {
    let conn = store.writer().await?;
    conn.execute(
        r#"DELETE FROM "AgentPresence" WHERE "agentId" = ?1"#,
        libsql::params![agent_id],
    )
    .await
    .context("ending an agent's availability")?;
    Ok(())
}

/// Extends a lease that has not ended to `expires_at_ms`; false when there is none
/// (the agent never said they are ready, or the lease ran out: they must `sync`).
pub async fn renew_availability(
    store: &Store,
    agent_id: &str,
    expires_at_ms: i64,
) -> Result<bool, StoreError> {
    let conn = store.writer().await?;
    let changed = conn
        .execute(
            r#"UPDATE "AgentPresence" SET "expiresAt" = max("expiresAt", ?2)
               WHERE "agentId" = ?1 AND "expiresAt" > ?3"#,
            libsql::params![agent_id, expires_at_ms, timestamp::now_millis()],
        )
        .await
        .context("renewing an agent's availability")?;
    Ok(changed > 0)
}
