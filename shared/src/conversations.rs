//! Reading conversations and their messages.
//!
//! Rows may come from us or from a Prisma client of the documented schema, which
//! leaves our added columns at their defaults and may have written dates as integer
//! milliseconds; both read the same.

use chrono::{DateTime, Utc};

use crate::store::{Context, Store, StoreError, text};
use crate::timestamp;

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// Its id.
    pub id: String,
    /// The business it belongs to.
    pub business_id: String,
    /// Empty until routed.
    pub department: String,
    /// `pending`, `open`, `in_progress` or `closed`.
    pub status: String,
    /// The business's id for the customer, when given.
    pub customer_id: Option<String>,
    /// When it started.
    pub created_at: DateTime<Utc>,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Its id.
    pub id: String,
    /// `customer`, `agent` or `system`.
    pub sender: String,
    /// The text.
    pub content: String,
    /// Position in the conversation; `None` for rows written without one.
    pub sequence: Option<i64>,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

fn date(row: &libsql::Row, index: i32) -> Result<DateTime<Utc>, StoreError> {
    let value = row.get_value(index).context("reading a date")?;
    timestamp::parse(&value)
        .ok_or_else(|| StoreError::Corrupt(format!("unreadable date {value:?}")))
}

/// One conversation of one business; `None` if it does not exist or belongs to
/// another business.
pub async fn get(
    store: &Store,
    business_id: &str,
    conversation_id: &str,
) -> Result<Option<Conversation>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "id", "businessId", "department", "status", "customerId", "createdAt"
               FROM "Conversation" WHERE "id" = ?1 AND "businessId" = ?2"#,
            libsql::params![conversation_id, business_id],
        )
        .await
        .context("reading a conversation")?;
    let Some(row) = rows.next().await.context("reading a conversation")? else {
        return Ok(None);
    };
    Ok(Some(Conversation {
        id: text(&row, 0)?,
        business_id: text(&row, 1)?,
        department: text(&row, 2)?,
        status: text(&row, 3)?,
        customer_id: row.get(4).context("reading a conversation")?,
        created_at: date(&row, 5)?,
    }))
}

/// The business a conversation belongs to, for admin commands that name only the
/// conversation.
pub async fn business_of(
    store: &Store,
    conversation_id: &str,
) -> Result<Option<String>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "businessId" FROM "Conversation" WHERE "id" = ?1"#,
            libsql::params![conversation_id],
        )
        .await
        .context("reading a conversation")?;
    match rows.next().await.context("reading a conversation")? {
        Some(row) => Ok(Some(text(&row, 0)?)),
        None => Ok(None),
    }
}

/// A conversation's messages in order. Rows without a sequence number (written by
/// other clients) come first, in insertion order.
pub async fn messages(store: &Store, conversation_id: &str) -> Result<Vec<Message>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "id", "sender", "content", "sequence", "createdAt" FROM "Message"
               WHERE "conversationId" = ?1 ORDER BY coalesce("sequence", 0), rowid"#,
            libsql::params![conversation_id],
        )
        .await
        .context("reading messages")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.context("reading messages")? {
        out.push(Message {
            id: text(&row, 0)?,
            sender: text(&row, 1)?,
            content: text(&row, 2)?,
            sequence: row.get(3).context("reading messages")?,
            created_at: date(&row, 4)?,
        });
    }
    Ok(out)
}
