//! Assignment inside a write transaction: department queues, agent presence, and the
//! statements that move a conversation between `open`, `in_progress` and `closed`.
//!
//! Every function here runs on a connection inside a `BEGIN IMMEDIATE` transaction,
//! so what it reads cannot change before it writes; the capacity and business
//! triggers of migrations 2 and 4 back that up in the database.

use crate::events::ConversationView;
use crate::store::{Context, Sql, StoreError, text};

/// The columns of a [`ConversationView`], in the order [`view`] reads them, as a
/// literal for `concat!`, so statements that return them are `&'static str` and can
/// stay prepared.
macro_rules! view_columns {
    () => {
        r#""id", "department", "status", "assignedAgentId", "intent", "confidence", "classifier", "customerId", "customerName", "channel", "lastSequence""#
    };
}
pub(crate) use view_columns;

/// The columns of a [`ConversationView`], in the order [`view`] reads them.
pub(crate) const VIEW: &str = view_columns!();

/// Reads a [`VIEW`] row.
pub(crate) fn view(row: &libsql::Row) -> Result<ConversationView, StoreError> {
    Ok(ConversationView {
        id: text(row, 0)?,
        department: text(row, 1)?,
        status: text(row, 2)?,
        assigned_agent_id: row.get(3).context("reading a conversation")?,
        intent: row.get(4).context("reading a conversation")?,
        confidence: row.get(5).context("reading a conversation")?,
        classifier: row.get(6).context("reading a conversation")?,
        customer_id: row.get(7).context("reading a conversation")?,
        customer_name: row.get(8).context("reading a conversation")?,
        channel: row.get(9).context("reading a conversation")?,
        last_sequence: row.get(10).context("reading a conversation")?,
    })
}

/// Runs a statement ending in `RETURNING {VIEW}` and reads the row it returns, if any.
pub(crate) async fn returning_view(
    sql: Sql<'_>,
    statement: &'static str,
    params: impl libsql::params::IntoParams,
    doing: &'static str,
) -> Result<Option<ConversationView>, StoreError> {
    let mut rows = sql.query(statement, params).await.context(doing)?;
    let found = match rows.next().await.context(doing)? {
        Some(row) => Some(view(&row)?),
        None => None,
    };
    // Stepping to the end finishes the statement, so its write is complete.
    while rows.next().await.context(doing)?.is_some() {}
    Ok(found)
}

/// Reads the first column of the first row, if any, and steps past the rest.
pub(crate) async fn first_text(
    sql: Sql<'_>,
    statement: &'static str,
    params: impl libsql::params::IntoParams,
    doing: &'static str,
) -> Result<Option<String>, StoreError> {
    let mut rows = sql.query(statement, params).await.context(doing)?;
    let found = match rows.next().await.context(doing)? {
        Some(row) => Some(text(&row, 0)?),
        None => None,
    };
    while rows.next().await.context(doing)?.is_some() {}
    Ok(found)
}

/// A conversation given to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct Assignment {
    /// The conversation after assignment.
    pub conversation: ConversationView,
    /// Who got it.
    pub agent_id: String,
}

/// The oldest conversation waiting in a department's queue.
const OLDEST_WAITING: &str = r#"SELECT "id" FROM "Conversation"
    WHERE "businessId" = ?1 AND "department" = ?2 AND "status" = 'open'
    ORDER BY "queuedAt", rowid LIMIT 1"#;

/// The department's available agent with room for one more conversation: fewest
/// conversations in progress first, then the one idle longest (id breaks exact ties,
/// so the choice is deterministic). Loads come from `AgentLoad`, which triggers keep
/// (migration 4).
const BEST_AGENT: &str = r#"SELECT a."id" FROM "AgentPresence" p
        JOIN "Agent" a ON a."id" = p."agentId"
        LEFT JOIN "AgentLoad" l ON l."agentId" = p."agentId"
    WHERE p."businessId" = ?1 AND a."businessId" = ?1 AND a."department" = ?2
        AND p."expiresAt" > ?3 AND coalesce(l."active", 0) < a."capacity"
    ORDER BY coalesce(l."active", 0), p."idleSince", a."id" LIMIT 1"#;

/// Gives a waiting conversation to an agent.
pub(crate) const ASSIGN: &str = concat!(
    r#"UPDATE "Conversation" SET "status" = 'in_progress', "assignedAgentId" = ?2, "updatedAt" = ?3
       WHERE "id" = ?1 AND "status" = 'open' RETURNING "#,
    view_columns!()
);

/// Assigns waiting conversations of a department, oldest first, to its available
/// agents until either runs out. Called after anything that adds a waiting
/// conversation or frees an agent, so no conversation waits while an agent of its
/// department has room.
pub(crate) async fn drain(
    sql: Sql<'_>,
    business_id: &str,
    department: &str,
    now_ms: i64,
    now: &str,
) -> Result<Vec<Assignment>, StoreError> {
    let mut assigned = Vec::new();
    loop {
        let Some(conversation) = first_text(
            sql,
            OLDEST_WAITING,
            libsql::params![business_id, department],
            "finding a waiting conversation",
        )
        .await?
        else {
            break;
        };
        let Some(agent) = first_text(
            sql,
            BEST_AGENT,
            libsql::params![business_id, department, now_ms],
            "finding an available agent",
        )
        .await?
        else {
            break;
        };
        let view = returning_view(
            sql,
            ASSIGN,
            libsql::params![conversation.as_str(), agent.as_str(), now],
            "assigning a conversation",
        )
        .await?
        .ok_or_else(|| StoreError::Corrupt("a waiting conversation vanished".into()))?;
        sql.execute(
            r#"UPDATE "AgentPresence" SET "idleSince" = ?2 WHERE "agentId" = ?1"#,
            libsql::params![agent.as_str(), now_ms],
        )
        .await
        .context("recording an assignment")?;
        tracing::info!(
            business = %business_id,
            conversation = %view.id,
            agent = %agent,
            department,
            "assigned conversation"
        );
        assigned.push(Assignment {
            conversation: view,
            agent_id: agent,
        });
    }
    Ok(assigned)
}

/// An agent's business and department.
pub(crate) async fn agent(
    sql: Sql<'_>,
    agent_id: &str,
) -> Result<Option<(String, String)>, StoreError> {
    let mut rows = sql
        .query(
            r#"SELECT "businessId", "department" FROM "Agent" WHERE "id" = ?1"#,
            libsql::params![agent_id],
        )
        .await
        .context("reading an agent")?;
    let found = match rows.next().await.context("reading an agent")? {
        Some(row) => Some((text(&row, 0)?, text(&row, 1)?)),
        None => None,
    };
    while rows.next().await.context("reading an agent")?.is_some() {}
    Ok(found)
}

/// Records that an agent is available until `expires_ms`. A renewal keeps the time
/// the agent became idle; an agent whose earlier lease had run out starts idle now.
pub(crate) async fn set_presence(
    sql: Sql<'_>,
    agent_id: &str,
    business_id: &str,
    expires_ms: i64,
    now_ms: i64,
) -> Result<(), StoreError> {
    sql.execute(
        r#"INSERT INTO "AgentPresence" ("agentId", "businessId", "expiresAt", "idleSince")
           VALUES (?1, ?2, ?3, ?4)
           ON CONFLICT ("agentId") DO UPDATE SET
               "expiresAt" = excluded."expiresAt",
               "idleSince" = CASE WHEN "AgentPresence"."expiresAt" > ?4
                   THEN "AgentPresence"."idleSince" ELSE excluded."idleSince" END"#,
        libsql::params![agent_id, business_id, expires_ms, now_ms],
    )
    .await
    .context("recording an agent's availability")?;
    Ok(())
}
