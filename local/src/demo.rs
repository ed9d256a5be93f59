//! The demo tenant that `chat-router serve --demo` sets up, and the callback receiver
//! its deliveries go to.

use std::io::Write;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chat_router::callback::endpoint::{self, DeliveryEvent, EndpointError, EndpointRequest};
use chat_router::callback::secret::EncryptionKey;
use chat_router::callback::{DELIVERY_HEADER, SIGNATURE_HEADER, signature};
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

/// Where `serve --demo`'s built-in callback receiver listens on the local gateway.
pub const CALLBACK_PATH: &str = "/demo/callback";

/// Points the demo business's callback at the built-in receiver on `addr` (a loopback
/// address, allowed explicitly for this endpoint), with every event and a fresh
/// signing secret, which the receiver checks deliveries with.
pub async fn configure_callback(
    store: &Store,
    key: &EncryptionKey,
    business_id: &str,
    addr: std::net::SocketAddr,
) -> Result<Receiver, EndpointError> {
    let configured = endpoint::configure(
        store,
        key,
        &EndpointRequest {
            business_id: business_id.to_owned(),
            url: format!("http://{addr}{CALLBACK_PATH}"),
            events: vec![
                DeliveryEvent::Message,
                DeliveryEvent::Closed,
                DeliveryEvent::Transferred,
            ],
            allow_loopback: true,
            rotate_secret: true,
        },
    )
    .await?;
    Ok(Receiver {
        secret: Arc::new(configured.secret.unwrap_or_default()),
    })
}

/// The demo's callback receiver: what a business's own system would do with a
/// delivery.
#[derive(Clone)]
pub struct Receiver {
    secret: Arc<String>,
}

/// Checks a delivery's signature and prints it on standard output as one JSON line,
/// `{"demoDelivery": {"verified", "deliveryId", "body"}}`. The message text is the
/// point of the demo, so it is printed here, and never logged. A bad signature is
/// answered 401, which fails the delivery and tells the agent.
pub async fn receive(
    State(receiver): State<Receiver>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let signature_header = header(SIGNATURE_HEADER);
    let delivery_id = header(DELIVERY_HEADER);
    let verified = signature::verify(
        receiver.secret.as_bytes(),
        &signature_header,
        &body,
        chrono::Utc::now().timestamp(),
        signature::DEFAULT_TOLERANCE,
    );
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let line = serde_json::json!({
        "demoDelivery": {
            "verified": verified.is_ok(),
            "deliveryId": delivery_id,
            "body": parsed,
        }
    });
    // Nobody reading standard output is no reason to refuse the delivery.
    let _ = writeln!(std::io::stdout().lock(), "{line}");
    match verified {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(err) => {
            tracing::warn!(delivery = %delivery_id, cause = %err, "demo receiver refused a delivery");
            StatusCode::UNAUTHORIZED
        }
    }
}
