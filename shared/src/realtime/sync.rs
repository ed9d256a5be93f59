//! `sync.result` pages: the agent's assigned conversations, then their department's
//! waiting queue (oldest first), each with its latest messages.
//!
//! A page holds at most [`PAGE_CONVERSATIONS`] conversations and stays under
//! [`MAX_RESULT_BYTES`] (API Gateway refuses messages over 128 KB): conversations that
//! do not fit move to the next page, and a conversation too large on its own keeps
//! only its latest messages (`earlierMessages` tells there are more). The cursor is an
//! offset into the list as it stands when each page is read; a conversation that
//! changes between pages may show twice or not at all, and the events keep the client
//! current either way.

use serde_json::{Value, json};

use super::protocol::Outgoing;
use crate::events::{ConversationView, MessageView};
use crate::routing::{AgentRef, RouteError};
use crate::store::{Context, Store, StoreError, text};
use crate::timestamp;

/// Conversations per page.
pub const PAGE_CONVERSATIONS: usize = 20;

/// Latest messages sent with each conversation.
pub const RECENT_MESSAGES: usize = 20;

/// The size a page stays under, with room to spare below API Gateway's 128 KB.
pub const MAX_RESULT_BYTES: usize = 120 * 1024;

/// One page, from `cursor` (an offset this module gave) or the start.
pub(crate) async fn page(
    store: &Store,
    agent: &AgentRef,
    cursor: Option<&str>,
) -> Result<Outgoing, RouteError> {
    let offset: usize = match cursor {
        None => 0,
        // The protocol lets through only short runs of digits.
        Some(c) => c.parse().unwrap_or(0),
    };
    let mut listed = conversations(store, agent, offset).await?;
    let more = listed.len() > PAGE_CONVERSATIONS;
    listed.truncate(PAGE_CONVERSATIONS);

    let mut entries = Vec::with_capacity(listed.len());
    for (assigned, conversation) in listed {
        let messages = recent(store, &conversation.id).await?;
        entries.push((assigned, conversation, messages));
    }

    // Drop whole conversations to the next page until it fits; a lone conversation
    // gives up its oldest messages instead.
    loop {
        let frame = render(agent, &entries, offset, more);
        if frame.to_json().len() <= MAX_RESULT_BYTES {
            return Ok(frame);
        }
        if entries.len() > 1 {
            entries.pop();
            let frame = render(agent, &entries, offset, true);
            if frame.to_json().len() <= MAX_RESULT_BYTES {
                return Ok(frame);
            }
            continue;
        }
        match entries.first_mut() {
            Some((_, _, messages)) if messages.len() > 1 => {
                messages.remove(0);
            }
            _ => return Ok(frame),
        }
    }
}

fn render(
    agent: &AgentRef,
    entries: &[(bool, ConversationView, Vec<MessageView>)],
    offset: usize,
    more: bool,
) -> Outgoing {
    let entry = |(_, conversation, messages): &(bool, ConversationView, Vec<MessageView>)| {
        json!({
            "conversation": conversation,
            "messages": messages,
            "earlierMessages": messages.first().is_some_and(|m| m.sequence > 1),
        })
    };
    let assigned: Vec<Value> = entries.iter().filter(|e| e.0).map(entry).collect();
    let waiting: Vec<Value> = entries.iter().filter(|e| !e.0).map(entry).collect();
    let next = more.then(|| (offset + entries.len()).to_string());
    Outgoing::SyncResult(json!({
        "agentId": agent.agent_id,
        "department": agent.department,
        "assigned": assigned,
        "waiting": waiting,
        "cursor": next,
    }))
}

/// Up to one page and one more of the agent's list, from `offset`.
async fn conversations(
    store: &Store,
    agent: &AgentRef,
    offset: usize,
) -> Result<Vec<(bool, ConversationView)>, StoreError> {
    let columns = crate::routing::VIEW_COLUMNS;
    let sql = format!(
        r#"SELECT * FROM (
               SELECT {columns}, 0 AS "listed", "id" AS "place" FROM "Conversation"
               WHERE "businessId" = ?1 AND "assignedAgentId" = ?2 AND "status" = 'in_progress'
               UNION ALL
               SELECT {columns}, 1 AS "listed", printf('%020d', "queuedAt") AS "place" FROM "Conversation"
               WHERE "businessId" = ?1 AND "department" = ?3 AND "status" = 'open'
           ) ORDER BY "listed", "place" LIMIT ?4 OFFSET ?5"#
    );
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            &sql,
            libsql::params![
                agent.business_id.as_str(),
                agent.agent_id.as_str(),
                agent.department.as_str(),
                (PAGE_CONVERSATIONS + 1) as i64,
                offset as i64
            ],
        )
        .await
        .context("listing an agent's conversations")?;
    let mut out = Vec::new();
    while let Some(row) = rows
        .next()
        .await
        .context("listing an agent's conversations")?
    {
        let listed: i64 = row.get(11).context("listing an agent's conversations")?;
        out.push((listed == 0, crate::routing::read_view(&row)?));
    }
    Ok(out)
}

/// A conversation's latest messages, oldest first.
async fn recent(store: &Store, conversation_id: &str) -> Result<Vec<MessageView>, StoreError> {
    let conn = store.reader().await?;
    let mut out = latest_messages(&conn, conversation_id, RECENT_MESSAGES).await?;
    out.reverse();
    Ok(out)
}

/// A conversation's latest `limit` messages, newest first, read on `conn` (a
/// transaction's, where the caller is in one).
pub(crate) async fn latest_messages(
    conn: &libsql::Connection,
    conversation_id: &str,
    limit: usize,
) -> Result<Vec<MessageView>, StoreError> {
    let mut rows = conn
        .query(
            r#"SELECT "id", "sender", "content", "sequence", "createdAt" FROM "Message"
               WHERE "conversationId" = ?1 ORDER BY "sequence" DESC LIMIT ?2"#,
            libsql::params![conversation_id, limit as i64],
        )
        .await
        .context("reading recent messages")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.context("reading recent messages")? {
        let created = row.get_value(4).context("reading recent messages")?;
        out.push(MessageView {
            id: text(&row, 0)?,
            sender: text(&row, 1)?,
            content: text(&row, 2)?,
            sequence: row
                .get::<Option<i64>>(3)
                .context("reading recent messages")?
                .unwrap_or(0),
            created_at: timestamp::parse(&created)
                .map(timestamp::format)
                .ok_or_else(|| StoreError::Corrupt(format!("unreadable date {created:?}")))?,
        });
    }
    Ok(out)
}
