//! Businesses, their departments, agents and credentials.
//!
//! These are the admin operations behind `chat-router business|agent|key`. Each one
//! runs in a single write transaction, so a failure leaves nothing behind.

use serde::{Deserialize, Serialize};

use crate::credentials::{self, Kind, Secret};
use crate::store::{Context, Store, StoreError, begin, finish, text};
use crate::timestamp;

/// Longest business, department or agent name accepted.
const MAX_NAME_CHARS: usize = 100;

/// Default number of active conversations an agent takes.
pub const DEFAULT_CAPACITY: i64 = 5;

/// Default confidence below which a conversation goes to the fallback department.
pub const DEFAULT_CONFIDENCE_THRESHOLD: f64 = 0.5;

/// A business as configured in a tenant file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BusinessConfig {
    /// Display name.
    pub name: String,
    /// At least one department.
    pub departments: Vec<DepartmentConfig>,
    /// The department that takes what cannot be classified confidently.
    pub fallback_department: String,
    /// Classification confidence below which the fallback department is used.
    #[serde(default = "default_threshold")]
    pub confidence_threshold: f64,
}

fn default_threshold() -> f64 {
    DEFAULT_CONFIDENCE_THRESHOLD
}

/// A department and what the classifier learns it from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DepartmentConfig {
    /// Unique within the business.
    pub name: String,
    /// What the department handles, in plain words.
    #[serde(default)]
    pub description: String,
    /// Typical customer messages.
    #[serde(default)]
    pub examples: Vec<String>,
    /// Finer-grained intents of this department, each with its own examples.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intents: Vec<IntentConfig>,
}

/// An intent within a department.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntentConfig {
    /// Unique within the business.
    pub name: String,
    /// Typical customer messages with this intent.
    pub examples: Vec<String>,
}

/// Why an admin operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The input is not acceptable; the message says why.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A named business, agent or department does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What `business create` returns. The key is shown only this once.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreatedBusiness {
    /// The new business id.
    pub id: String,
    /// The webhook key, in clear text.
    pub webhook_key: String,
}

/// What `agent create` returns. The token is shown only this once.
#[derive(Debug, Serialize)]
pub struct CreatedAgent {
    /// The new agent id.
    pub id: String,
    /// The agent's token, in clear text.
    pub token: String,
}

fn check_name(what: &str, name: &str) -> Result<(), AdminError> {
    let chars = name.chars().count();
    if name.trim().is_empty() || chars > MAX_NAME_CHARS || name.chars().any(char::is_control) {
        return Err(AdminError::Invalid(format!(
            "{what} must be 1 to {MAX_NAME_CHARS} characters without control characters"
        )));
    }
    Ok(())
}

impl BusinessConfig {
    /// Checks the rules a stored business relies on.
    pub fn validate(&self) -> Result<(), AdminError> {
        check_name("name", &self.name)?;
        if self.departments.is_empty() {
            return Err(AdminError::Invalid(
                "at least one department is required".into(),
            ));
        }
        let mut names = std::collections::HashSet::new();
        let mut intents = std::collections::HashSet::new();
        for department in &self.departments {
            check_name("department name", &department.name)?;
            if !names.insert(department.name.as_str()) {
                return Err(AdminError::Invalid(format!(
                    "department {:?} appears twice",
                    department.name
                )));
            }
            for intent in &department.intents {
                check_name("intent name", &intent.name)?;
                if !intents.insert(intent.name.as_str()) {
                    return Err(AdminError::Invalid(format!(
                        "intent {:?} appears twice",
                        intent.name
                    )));
                }
            }
        }
        if !names.contains(self.fallback_department.as_str()) {
            return Err(AdminError::Invalid(format!(
                "fallbackDepartment {:?} is not one of the departments",
                self.fallback_department
            )));
        }
        if !(0.0..=1.0).contains(&self.confidence_threshold) {
            return Err(AdminError::Invalid(
                "confidenceThreshold must be between 0 and 1".into(),
            ));
        }
        Ok(())
    }
}

/// Creates a business with its departments and first webhook key.
pub async fn create_business(
    store: &Store,
    config: &BusinessConfig,
) -> Result<CreatedBusiness, AdminError> {
    config.validate()?;
    let id = crate::new_id();
    let key = Secret::generate(Kind::Webhook);
    let now = timestamp::now();

    let conn = store.writer().await?;
    let tx = begin(&conn, "starting to create a business").await?;
    let result = async {
        tx.execute(
            r#"INSERT INTO "Business" ("id", "name", "createdAt", "confidenceThreshold") VALUES (?1, ?2, ?3, ?4)"#,
            libsql::params![id.as_str(), config.name.as_str(), now.as_str(), config.confidence_threshold],
        )
        .await
        .context("inserting a business")?;
        for (position, department) in config.departments.iter().enumerate() {
            let examples = serde_json::to_string(&department.examples).expect("strings serialise");
            let intents = serde_json::to_string(&department.intents).expect("intents serialise");
            tx.execute(
                r#"INSERT INTO "Department" ("id", "businessId", "name", "description", "examples", "intents", "isFallback", "position", "createdAt")
                   VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"#,
                libsql::params![
                    crate::new_id(),
                    id.as_str(),
                    department.name.as_str(),
                    department.description.as_str(),
                    examples,
                    intents,
                    department.name == config.fallback_department,
                    position as i64,
                    now.as_str()
                ],
            )
            .await
            .context("inserting a department")?;
        }
        insert_credential(&tx, Kind::Webhook, &id, None, &key, &now).await
    }
    .await;
    finish(tx, result).await?;
    tracing::info!(business = %id, departments = config.departments.len(), "created business");
    Ok(CreatedBusiness {
        id,
        webhook_key: key.expose().to_owned(),
    })
}

/// Creates an agent in one of the business's departments, with a first token.
pub async fn create_agent(
    store: &Store,
    business_id: &str,
    name: &str,
    department: &str,
    capacity: i64,
) -> Result<CreatedAgent, AdminError> {
    check_name("name", name)?;
    if !(1..=1000).contains(&capacity) {
        return Err(AdminError::Invalid(
            "capacity must be between 1 and 1000".into(),
        ));
    }
    let id = crate::new_id();
    let token = Secret::generate(Kind::Agent);
    let now = timestamp::now();

    let conn = store.writer().await?;
    let tx = begin(&conn, "starting to create an agent").await?;
    let result = async {
        let mut rows = tx
            .query(
                r#"SELECT (SELECT count(*) FROM "Business" WHERE "id" = ?1),
                          (SELECT count(*) FROM "Department" WHERE "businessId" = ?1 AND "name" = ?2)"#,
                libsql::params![business_id, department],
            )
            .await
            .context("looking up a department")?;
        let row = rows.next().await.context("looking up a department")?;
        let (businesses, departments): (i64, i64) = match row {
            Some(row) => (
                row.get(0).context("looking up a department")?,
                row.get(1).context("looking up a department")?,
            ),
            None => (0, 0),
        };
        if businesses == 0 {
            return Err(AdminError::NotFound(format!("business {business_id}")));
        }
        if departments == 0 {
            return Err(AdminError::NotFound(format!(
                "department {department:?} of business {business_id}"
            )));
        }
        tx.execute(
            r#"INSERT INTO "Agent" ("id", "name", "department", "businessId", "createdAt", "capacity") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"#,
            libsql::params![id.as_str(), name, department, business_id, now.as_str(), capacity],
        )
        .await
        .context("inserting an agent")?;
        insert_credential(&tx, Kind::Agent, business_id, Some(&id), &token, &now).await?;
        Ok(())
    }
    .await;
    finish(tx, result).await?;
    tracing::info!(business = %business_id, agent = %id, department, "created agent");
    Ok(CreatedAgent {
        id,
        token: token.expose().to_owned(),
    })
}

/// Replaces a business's webhook key; the old key stops working at once.
pub async fn rotate_webhook_key(store: &Store, business_id: &str) -> Result<String, AdminError> {
    let key = Secret::generate(Kind::Webhook);
    let now = timestamp::now();
    let conn = store.writer().await?;
    let tx = begin(&conn, "starting a key rotation").await?;
    let result = async {
        if !exists(&tx, r#"SELECT 1 FROM "Business" WHERE "id" = ?1"#, business_id).await? {
            return Err(AdminError::NotFound(format!("business {business_id}")));
        }
        tx.execute(
            r#"UPDATE "Credential" SET "revokedAt" = ?2 WHERE "businessId" = ?1 AND "kind" = 'webhook' AND "revokedAt" IS NULL"#,
            libsql::params![business_id, now.as_str()],
        )
        .await
        .context("revoking a webhook key")?;
        insert_credential(&tx, Kind::Webhook, business_id, None, &key, &now).await
    }
    .await;
    finish(tx, result).await?;
    tracing::info!(business = %business_id, "rotated webhook key");
    Ok(key.expose().to_owned())
}

/// Revokes an agent's token. Returns the agent's business.
pub async fn revoke_agent(store: &Store, agent_id: &str) -> Result<String, AdminError> {
    let now = timestamp::now();
    let conn = store.writer().await?;
    let tx = begin(&conn, "starting a token revocation").await?;
    let result = async {
        let business = agent_business(&tx, agent_id).await?;
        tx.execute(
            r#"UPDATE "Credential" SET "revokedAt" = ?2 WHERE "agentId" = ?1 AND "revokedAt" IS NULL"#,
            libsql::params![agent_id, now.as_str()],
        )
        .await
        .context("revoking an agent token")?;
        // A revoked agent takes no new conversations.
        tx.execute(
            r#"DELETE FROM "AgentPresence" WHERE "agentId" = ?1"#,
            libsql::params![agent_id],
        )
        .await
        .context("ending a revoked agent's availability")?;
        Ok::<_, AdminError>(business)
    }
    .await;
    let business = finish(tx, result).await?;
    tracing::info!(agent = %agent_id, "revoked agent token");
    Ok(business)
}

/// Issues a new token for an agent, revoking any current one.
pub async fn issue_agent_token(store: &Store, agent_id: &str) -> Result<String, AdminError> {
    let token = Secret::generate(Kind::Agent);
    let now = timestamp::now();
    let conn = store.writer().await?;
    let tx = begin(&conn, "starting to issue a token").await?;
    let result = async {
        let business = agent_business(&tx, agent_id).await?;
        tx.execute(
            r#"UPDATE "Credential" SET "revokedAt" = ?2 WHERE "agentId" = ?1 AND "revokedAt" IS NULL"#,
            libsql::params![agent_id, now.as_str()],
        )
        .await
        .context("revoking an agent token")?;
        insert_credential(&tx, Kind::Agent, &business, Some(agent_id), &token, &now).await
    }
    .await;
    finish(tx, result).await?;
    tracing::info!(agent = %agent_id, "issued agent token");
    Ok(token.expose().to_owned())
}

/// The business a webhook key belongs to, if the key is current.
pub async fn authenticate_webhook(store: &Store, key: &str) -> Result<Option<String>, StoreError> {
    if !credentials::well_formed(Kind::Webhook, key) {
        return Ok(None);
    }
    Ok(find_credential(store, Kind::Webhook, key)
        .await?
        .map(|found| found.business_id))
}

/// An authenticated agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The agent's business.
    pub business_id: String,
    /// The agent.
    pub agent_id: String,
    /// The agent's department.
    pub department: String,
    /// The credential the token matched (not the token): a connection made with it
    /// ends once it is revoked.
    pub credential_id: String,
}

/// The agent a token belongs to, if the token is current.
pub async fn authenticate_agent(
    store: &Store,
    token: &str,
) -> Result<Option<AgentIdentity>, StoreError> {
    if !credentials::well_formed(Kind::Agent, token) {
        return Ok(None);
    }
    let Some(found) = find_credential(store, Kind::Agent, token).await? else {
        return Ok(None);
    };
    let Some(agent_id) = found.agent_id else {
        return Ok(None);
    };
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "department" FROM "Agent" WHERE "id" = ?1 AND "businessId" = ?2"#,
            libsql::params![agent_id.as_str(), found.business_id.as_str()],
        )
        .await
        .context("reading an agent")?;
    let Some(row) = rows.next().await.context("reading an agent")? else {
        return Ok(None);
    };
    Ok(Some(AgentIdentity {
        business_id: found.business_id,
        department: text(&row, 0)?,
        agent_id,
        credential_id: found.id,
    }))
}

/// A current credential.
struct Found {
    id: String,
    business_id: String,
    agent_id: Option<String>,
}

async fn find_credential(
    store: &Store,
    kind: Kind,
    presented: &str,
) -> Result<Option<Found>, StoreError> {
    let hash = credentials::hash(presented);
    let conn = store.reader().await?;
    let mut rows = conn
        .sql()
        .query(
            r#"SELECT "businessId", "agentId", "secretHash", "id" FROM "Credential"
               WHERE "secretHash" = ?1 AND "kind" = ?2 AND "revokedAt" IS NULL"#,
            libsql::params![hash.to_vec(), kind.as_str()],
        )
        .await
        .context("looking up a credential")?;
    let Some(row) = rows.next().await.context("looking up a credential")? else {
        return Ok(None);
    };
    let stored: Vec<u8> = row.get(2).context("reading a credential")?;
    if !credentials::hashes_match(&stored, &hash) {
        return Ok(None);
    }
    Ok(Some(Found {
        business_id: row.get(0).context("reading a credential")?,
        agent_id: row.get(1).context("reading a credential")?,
        id: row.get(3).context("reading a credential")?,
    }))
}

async fn insert_credential(
    conn: &libsql::Connection,
    kind: Kind,
    business_id: &str,
    agent_id: Option<&str>,
    secret: &Secret,
    now: &str,
) -> Result<(), AdminError> {
    conn.execute(
        r#"INSERT INTO "Credential" ("id", "kind", "businessId", "agentId", "secretHash", "createdAt") VALUES (?1, ?2, ?3, ?4, ?5, ?6)"#,
        libsql::params![
            crate::new_id(),
            kind.as_str(),
            business_id,
            agent_id,
            secret.hash().to_vec(),
            now
        ],
    )
    .await
    .context("storing a credential")?;
    Ok(())
}

async fn agent_business(conn: &libsql::Connection, agent_id: &str) -> Result<String, AdminError> {
    let mut rows = conn
        .query(
            r#"SELECT "businessId" FROM "Agent" WHERE "id" = ?1"#,
            libsql::params![agent_id],
        )
        .await
        .context("looking up an agent")?;
    match rows.next().await.context("looking up an agent")? {
        Some(row) => Ok(row.get(0).context("reading an agent")?),
        None => Err(AdminError::NotFound(format!("agent {agent_id}"))),
    }
}

async fn exists(conn: &libsql::Connection, sql: &str, id: &str) -> Result<bool, AdminError> {
    let mut rows = conn
        .query(sql, libsql::params![id])
        .await
        .context("checking a row exists")?;
    Ok(rows
        .next()
        .await
        .context("checking a row exists")?
        .is_some())
}

/// A business's departments, in their configured order.
pub async fn departments(store: &Store, business_id: &str) -> Result<Vec<Department>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "name", "description", "examples", "intents", "isFallback" FROM "Department"
               WHERE "businessId" = ?1 ORDER BY "position""#,
            libsql::params![business_id],
        )
        .await
        .context("reading departments")?;
    let mut out = Vec::new();
    while let Some(row) = rows.next().await.context("reading departments")? {
        let examples: String = row.get(2).context("reading departments")?;
        let intents: String = row.get(3).context("reading departments")?;
        out.push(Department {
            config: DepartmentConfig {
                name: row.get(0).context("reading departments")?,
                description: row.get(1).context("reading departments")?,
                examples: serde_json::from_str(&examples)
                    .map_err(|err| StoreError::Corrupt(format!("department examples: {err}")))?,
                intents: serde_json::from_str(&intents)
                    .map_err(|err| StoreError::Corrupt(format!("department intents: {err}")))?,
            },
            is_fallback: row.get::<bool>(4).context("reading departments")?,
        });
    }
    Ok(out)
}

/// A business's routing profile: its departments, fallback department and confidence
/// threshold. `None` if the business does not exist or has no departments.
pub async fn business_profile(
    store: &Store,
    business_id: &str,
) -> Result<Option<crate::classify::BusinessProfile>, StoreError> {
    let threshold: f64 = {
        let conn = store.reader().await?;
        let mut rows = conn
            .query(
                r#"SELECT "confidenceThreshold" FROM "Business" WHERE "id" = ?1"#,
                libsql::params![business_id],
            )
            .await
            .context("reading a business")?;
        match rows.next().await.context("reading a business")? {
            Some(row) => row.get(0).context("reading a business")?,
            None => return Ok(None),
        }
    };
    let departments = departments(store, business_id).await?;
    let Some(fallback) = departments
        .iter()
        .find(|d| d.is_fallback)
        .or(departments.first())
        .map(|d| d.config.name.clone())
    else {
        return Ok(None);
    };
    Ok(Some(crate::classify::BusinessProfile {
        business_id: business_id.to_owned(),
        departments: departments.into_iter().map(|d| d.config).collect(),
        fallback_department: fallback,
        confidence_threshold: threshold,
    }))
}

/// A stored department.
#[derive(Debug, Clone, PartialEq)]
pub struct Department {
    /// Name, description, examples and intents.
    pub config: DepartmentConfig,
    /// Whether unclassifiable conversations go here.
    pub is_fallback: bool,
}
