//! A business's callback endpoint: where its deliveries go, the secret they are signed
//! with, and which events it receives.
//!
//! [`configure`] validates the URL without connecting to it: the URL itself through
//! [`check_url`], then every address its host name resolves to now (a literal
//! address needs no resolution). A refused URL stores nothing. The signing secret is
//! made when the endpoint is first configured and again on request (rotation); it is
//! returned then, and only then, and stored encrypted (see [`super::secret`]).
//! Rotation takes effect at once: deliveries sent from then on, retries of earlier
//! ones included, are signed with the new secret only.

use serde::Serialize;

use super::address::{AddressError, check_url, is_forbidden};
use super::secret::{self, EncryptionKey, Secret};
use crate::store::{Context, Store, StoreError, begin, finish};
use crate::timestamp;

/// What a business can receive. Agent messages are always delivered once a URL is
/// set; closed and transferred conversations only when the business opts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryEvent {
    /// An agent's reply.
    Message,
    /// A conversation was closed.
    Closed,
    /// A conversation moved to another department.
    Transferred,
}

impl DeliveryEvent {
    /// The name in payloads, in `--events` and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryEvent::Message => "message",
            DeliveryEvent::Closed => "closed",
            DeliveryEvent::Transferred => "transferred",
        }
    }

    /// Reads a name.
    pub fn parse(name: &str) -> Option<DeliveryEvent> {
        match name.trim() {
            "message" => Some(DeliveryEvent::Message),
            "closed" => Some(DeliveryEvent::Closed),
            "transferred" => Some(DeliveryEvent::Transferred),
            _ => None,
        }
    }

    /// Reads a comma-separated list; `message` is always added.
    pub fn parse_list(list: &str) -> Result<Vec<DeliveryEvent>, EndpointError> {
        let mut events = vec![DeliveryEvent::Message];
        for name in list.split(',').filter(|n| !n.trim().is_empty()) {
            let event = DeliveryEvent::parse(name)
                .ok_or_else(|| EndpointError::UnknownEvent(name.trim().to_owned()))?;
            events.push(event);
        }
        events.sort();
        events.dedup();
        Ok(events)
    }
}

/// Why an endpoint could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is refused.
    #[error("callback URL refused")]
    Address(#[from] AddressError),
    /// No such business.
    #[error("no such business")]
    UnknownBusiness,
    /// An event name other than message, closed and transferred.
    #[error("unknown event {0:?}: events are message, closed and transferred")]
    UnknownEvent(String),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What to configure.
#[derive(Debug, Clone)]
pub struct EndpointRequest {
    /// The business.
    pub business_id: String,
    /// Where deliveries go.
    pub url: String,
    /// What the business receives; `message` is added if missing.
    pub events: Vec<DeliveryEvent>,
    /// Admit http and loopback URLs (local runs only; deliveries on AWS never go to
    /// loopback whatever is stored).
    pub allow_loopback: bool,
    /// Make a new signing secret even though one exists.
    pub rotate_secret: bool,
}

/// A configured endpoint, as the command prints it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfiguredEndpoint {
    /// The business.
    pub business_id: String,
    /// Where deliveries go, normalised.
    pub url: String,
    /// What the business receives.
    pub events: Vec<DeliveryEvent>,
    /// Whether loopback URLs are admitted.
    pub allow_loopback: bool,
    /// The signing secret, present only when it was made by this call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Checks a callback URL as [`configure`] does: [`check_url`], then the addresses its
/// host name resolves to, all of which must be permitted. Nothing is connected to; a
/// literal address is not resolved at all.
pub async fn validate_url(url: &str, allow_loopback: bool) -> Result<url::Url, AddressError> {
    let checked = check_url(url, allow_loopback)?;
    if let Some(url::Host::Domain(name)) = checked.host() {
        let found =
            tokio::net::lookup_host((name, 0))
                .await
                .map_err(|err| AddressError::Unresolvable {
                    name: name.to_owned(),
                    reason: err.to_string(),
                })?;
        let mut any = false;
        for addr in found {
            any = true;
            if is_forbidden(addr.ip(), allow_loopback) {
                return Err(AddressError::Forbidden(format!("{name} ({})", addr.ip())));
            }
        }
        if !any {
            return Err(AddressError::NoPublicAddress(name.to_owned()));
        }
    }
    Ok(checked)
}

/// Validates the URL and stores the endpoint; makes a signing secret when the business
/// has none yet or `rotate_secret` asks for one.
pub async fn configure(
    store: &Store,
    key: &EncryptionKey,
    request: &EndpointRequest,
) -> Result<ConfiguredEndpoint, EndpointError> {
    let url = validate_url(&request.url, request.allow_loopback).await?;
    let mut events = request.events.clone();
    events.push(DeliveryEvent::Message);
    events.sort();
    events.dedup();
    let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
    let names = names.join(",");

    let now = timestamp::now();
    let conn = store.writer().await?;
    let tx = begin(&conn, "starting to configure a callback").await?;
    let result = async {
        let mut rows = tx
            .query(
                r#"SELECT b."id", e."secret" FROM "Business" b
                   LEFT JOIN "CallbackEndpoint" e ON e."businessId" = b."id" WHERE b."id" = ?1"#,
                libsql::params![request.business_id.as_str()],
            )
            .await
            .context("reading a business's callback")?;
        let row = rows
            .next()
            .await
            .context("reading a business's callback")?
            .ok_or(EndpointError::UnknownBusiness)?;
        let stored: Option<String> = row.get(1).context("reading a business's callback")?;
        drop(rows);

        let fresh = (stored.is_none() || request.rotate_secret).then(Secret::generate);
        let ciphertext = match (&fresh, stored) {
            (Some(secret), _) => secret::encrypt(key, &request.business_id, secret),
            (None, Some(stored)) => stored,
            (None, None) => unreachable!("a secret is made when none is stored"),
        };
        tx.execute(
            r#"INSERT INTO "CallbackEndpoint" ("businessId", "url", "secret", "events", "allowLoopback", "createdAt", "updatedAt")
               VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
               ON CONFLICT ("businessId") DO UPDATE SET "url" = excluded."url", "secret" = excluded."secret",
                   "events" = excluded."events", "allowLoopback" = excluded."allowLoopback",
                   "updatedAt" = excluded."updatedAt""#,
            libsql::params![
                request.business_id.as_str(),
                url.as_str(),
                ciphertext,
                names.as_str(),
                request.allow_loopback,
                now.as_str()
            ],
        )
        .await
        .context("storing a callback")?;
        Ok::<_, EndpointError>(fresh)
    }
    .await;
    let fresh = finish(tx, result).await?;
    tracing::info!(
        business = %request.business_id,
        rotated = fresh.is_some(),
        "callback configured"
    );
    Ok(ConfiguredEndpoint {
        business_id: request.business_id.clone(),
        url: url.to_string(),
        events,
        allow_loopback: request.allow_loopback,
        secret: fresh.map(|s| s.expose().to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_lists_always_hold_message() {
        assert_eq!(
            DeliveryEvent::parse_list("").unwrap(),
            vec![DeliveryEvent::Message]
        );
        assert_eq!(
            DeliveryEvent::parse_list("transferred, closed,message").unwrap(),
            vec![
                DeliveryEvent::Message,
                DeliveryEvent::Closed,
                DeliveryEvent::Transferred
            ]
        );
        assert!(matches!(
            DeliveryEvent::parse_list("message,opened"),
            Err(EndpointError::UnknownEvent(name)) if name == "opened"
        ));
    }

    /// Literal addresses are refused before any resolution, so nothing here touches
    /// the network.
    #[tokio::test]
    async fn refused_literal_urls_are_refused_without_resolving() {
        for (url, loopback) in [
            ("https://10.0.0.1/hook", false),
            ("https://192.168.1.20/hook", false),
            ("https://169.254.169.254/latest/meta-data/", true),
            ("https://127.0.0.1/hook", false),
            ("http://127.0.0.1:9/hook", false),
            ("https://[::]/", true),
            ("https://224.0.0.1/", true),
            ("https://0.0.0.0/", true),
            ("https://[fe80::1]/", true),
        ] {
            assert!(
                validate_url(url, loopback).await.is_err(),
                "{url} was accepted"
            );
        }
        assert!(validate_url("http://127.0.0.1:9/hook", true).await.is_ok());
    }

    #[tokio::test]
    async fn localhost_resolves_to_loopback_and_needs_the_flag() {
        // Answered from the hosts file; no DNS server is asked.
        assert!(matches!(
            validate_url("http://localhost:9/hook", false).await,
            Err(AddressError::Forbidden(_))
        ));
        assert!(validate_url("http://localhost:9/hook", true).await.is_ok());
    }
}
