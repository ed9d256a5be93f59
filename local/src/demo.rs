//! The demo tenant that `chat-router serve --demo` sets up.

use chat_router::store::{Context, Store, StoreError};
use chat_router::tenants::{self, AdminError, BusinessConfig, DEFAULT_CAPACITY};
use serde::Serialize;

/// The demo business: Sales, Support, Billing and General.
pub const DEMO_TENANT: &str = include_str!("../../tenants/demo.json");

/// Credentials of the demo tenant, shown on start.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DemoTenant {
    /// The demo business.
    pub business_id: String,
    /// A webhook key valid from now on.
    pub webhook_key: String,
    /// One agent per department.
    pub agents: Vec<DemoAgent>,
}

/// A demo agent and its token.
#[derive(Debug, Serialize)]
pub struct DemoAgent {
    /// The agent id.
    pub id: String,
    /// Its department.
    pub department: String,
    /// A token valid from now on.
    pub token: String,
}

/// Creates the demo tenant with one agent per department when the database has no
/// business yet. When the demo business already exists, its webhook key and agent
/// tokens are issued anew, since keys are only ever shown once. Returns `None` when
/// the database holds other businesses and no demo.
pub async fn ensure(store: &Store) -> Result<Option<DemoTenant>, AdminError> {
    let config: BusinessConfig =
        serde_json::from_str(DEMO_TENANT).expect("the bundled demo tenant parses");

    let existing = businesses_named(store, &config.name).await?;
    if let Some(business_id) = existing.first() {
        let webhook_key = tenants::rotate_webhook_key(store, business_id).await?;
        let mut agents = Vec::new();
        for (id, department) in agents_of(store, business_id).await? {
            let token = tenants::issue_agent_token(store, &id).await?;
            agents.push(DemoAgent {
                id,
                department,
                token,
            });
        }
        return Ok(Some(DemoTenant {
            business_id: business_id.clone(),
            webhook_key,
            agents,
        }));
    }
    if count_businesses(store).await? > 0 {
        return Ok(None);
    }

    let created = tenants::create_business(store, &config).await?;
    let mut agents = Vec::new();
    for department in &config.departments {
        let name = format!("{} agent", department.name);
        let agent = tenants::create_agent(
            store,
            &created.id,
            &name,
            &department.name,
            DEFAULT_CAPACITY,
        )
        .await?;
        agents.push(DemoAgent {
            id: agent.id,
            department: department.name.clone(),
            token: agent.token,
        });
    }
    Ok(Some(DemoTenant {
        business_id: created.id,
        webhook_key: created.webhook_key,
        agents,
    }))
}

async fn count_businesses(store: &Store) -> Result<i64, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(r#"SELECT count(*) FROM "Business""#, ())
        .await
        .context("counting businesses")?;
    match rows.next().await.context("counting businesses")? {
        Some(row) => row.get(0).context("counting businesses"),
        None => Ok(0),
    }
}

async fn businesses_named(store: &Store, name: &str) -> Result<Vec<String>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "id" FROM "Business" WHERE "name" = ?1 ORDER BY rowid"#,
            libsql::params![name],
        )
        .await
        .context("finding the demo business")?;
    let mut ids = Vec::new();
    while let Some(row) = rows.next().await.context("finding the demo business")? {
        ids.push(row.get(0).context("finding the demo business")?);
    }
    Ok(ids)
}

async fn agents_of(store: &Store, business_id: &str) -> Result<Vec<(String, String)>, StoreError> {
    let conn = store.reader().await?;
    let mut rows = conn
        .query(
            r#"SELECT "id", "department" FROM "Agent" WHERE "businessId" = ?1 ORDER BY rowid"#,
            libsql::params![business_id],
        )
        .await
        .context("listing agents")?;
    let mut agents = Vec::new();
    while let Some(row) = rows.next().await.context("listing agents")? {
        agents.push((
            row.get(0).context("listing agents")?,
            row.get(1).context("listing agents")?,
        ));
    }
    Ok(agents)
}
