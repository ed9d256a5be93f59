//! Configuration, parsed once from the environment.
//!
//! Every error names the variable at fault.

use std::path::PathBuf;
use std::time::Duration;

use crate::store::Location;

/// The default local database file.
pub const DEFAULT_DATABASE_FILE: &str = "chat-router.db";

/// A missing or unusable environment variable.
#[derive(Debug, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct ConfigError {
    /// The variable's name.
    pub variable: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

/// Default for `SWEEP_AFTER_SECONDS`: more than the routing queue's visibility timeout
/// (180 s) times its receive limit (5) in the SAM template, so a job SQS still holds
/// is never handed over twice.
pub const DEFAULT_SWEEP_AFTER: Duration = Duration::from_secs(960);

/// Settings shared by every entry point.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database lives.
    pub database: Location,
    /// `ROUTING_QUEUE_URL`: the SQS FIFO queue routing jobs go to; unset locally.
    pub routing_queue_url: Option<String>,
    /// `ROUTING_MAX_ATTEMPTS`: attempts at a job before it is marked failed.
    pub max_attempts: u32,
    /// `SWEEP_AFTER_SECONDS`: how long a job stays pending before the sweeper hands it
    /// over again. Unset means [`DEFAULT_SWEEP_AFTER`] with SQS; `chat-router serve`
    /// uses a shorter default, since its queue never holds a job twice.
    pub sweep_after: Option<Duration>,
    /// `CONNECTIONS_TABLE`: the DynamoDB table of agents' connections (AWS).
    pub connections_table: Option<String>,
    /// `WEBSOCKET_ENDPOINT`: where API Gateway's management API for the WebSocket API
    /// is (`https://{api}.execute-api.{region}.amazonaws.com/{stage}`).
    pub websocket_endpoint: Option<String>,
    /// `AGENT_LEASE_SECONDS`: how long an agent stays available after their last
    /// frame.
    pub agent_lease: Duration,
    /// `DELIVERY_MAX_ATTEMPTS`, `DELIVERY_FIRST_RETRY_MS` and
    /// `DELIVERY_MAX_RETRY_SECONDS`: how callbacks are retried. Loopback receivers
    /// are never allowed from here; `chat-router serve` allows them itself.
    pub delivery: crate::callback::deliver::DeliverySettings,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, which returns a variable's value.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let token = lookup("DATABASE_AUTH_TOKEN").filter(|t| !t.is_empty());
        let database = match lookup("DATABASE_URL").filter(|u| !u.trim().is_empty()) {
            Some(url) => Location::parse(url.trim(), token),
            // A Lambda function's code directory is read-only; /tmp is its own.
            None if lookup("AWS_LAMBDA_FUNCTION_NAME").is_some() => {
                Location::Local(PathBuf::from("/tmp").join(DEFAULT_DATABASE_FILE))
            }
            None => Location::Local(PathBuf::from(DEFAULT_DATABASE_FILE)),
        };
        if let Location::Remote { url, .. } = &database
            && url
                .split_once("://")
                .is_none_or(|(_, rest)| rest.is_empty())
        {
            return Err(ConfigError {
                variable: "DATABASE_URL",
                problem: "a remote database URL needs a host".into(),
            });
        }
        let routing_queue_url = lookup("ROUTING_QUEUE_URL")
            .map(|url| url.trim().to_owned())
            .filter(|url| !url.is_empty());
        let max_attempts = number(&lookup, "ROUTING_MAX_ATTEMPTS", 1..=100)?
            .unwrap_or(u64::from(crate::routing::DEFAULT_MAX_ATTEMPTS))
            as u32;
        let sweep_after =
            number(&lookup, "SWEEP_AFTER_SECONDS", 0..=86_400)?.map(Duration::from_secs);
        let text = |name: &str| {
            lookup(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let websocket_endpoint = text("WEBSOCKET_ENDPOINT");
        if let Some(endpoint) = &websocket_endpoint
            && !(endpoint.starts_with("https://") || endpoint.starts_with("http://"))
        {
            return Err(ConfigError {
                variable: "WEBSOCKET_ENDPOINT",
                problem: "must be an https:// (or local http://) URL".into(),
            });
        }
        let agent_lease = number(&lookup, "AGENT_LEASE_SECONDS", 1..=3_600)?
            .map(Duration::from_secs)
            .unwrap_or(crate::realtime::DEFAULT_LEASE);
        let mut delivery = crate::callback::deliver::DeliverySettings::default();
        if let Some(n) = number(&lookup, "DELIVERY_MAX_ATTEMPTS", 1..=100)? {
            delivery.max_attempts = n as u32;
        }
        if let Some(ms) = number(&lookup, "DELIVERY_FIRST_RETRY_MS", 1..=3_600_000)? {
            delivery.first_retry = Duration::from_millis(ms);
        }
        if let Some(secs) = number(&lookup, "DELIVERY_MAX_RETRY_SECONDS", 1..=86_400)? {
            delivery.max_retry = Duration::from_secs(secs);
        }
        Ok(Config {
            delivery,
            database,
            routing_queue_url,
            max_attempts,
            sweep_after,
            connections_table: text("CONNECTIONS_TABLE"),
            websocket_endpoint,
            agent_lease,
        })
    }
}

/// An optional whole number within `range`.
fn number(
    lookup: &impl Fn(&str) -> Option<String>,
    variable: &'static str,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Option<u64>, ConfigError> {
    let Some(value) = lookup(variable).filter(|v| !v.trim().is_empty()) else {
        return Ok(None);
    };
    match value.trim().parse::<u64>() {
        Ok(n) if range.contains(&n) => Ok(Some(n)),
        _ => Err(ConfigError {
            variable,
            problem: format!(
                "must be a whole number from {} to {}",
                range.start(),
                range.end()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
    }

    #[test]
    fn database_url_picks_local_or_remote() {
        let local = config(&[]).unwrap();
        assert_eq!(local.database, Location::Local("chat-router.db".into()));

        let lambda = config(&[("AWS_LAMBDA_FUNCTION_NAME", "webhook")]).unwrap();
        assert_eq!(
            lambda.database,
            Location::Local("/tmp/chat-router.db".into())
        );

        let file = config(&[("DATABASE_URL", "data/x.db")]).unwrap();
        assert_eq!(file.database, Location::Local("data/x.db".into()));

        for url in [
            "libsql://db.example.com",
            "https://db.example.com",
            "http://127.0.0.1:8080",
        ] {
            let remote = config(&[("DATABASE_URL", url), ("DATABASE_AUTH_TOKEN", "t")]).unwrap();
            assert_eq!(
                remote.database,
                Location::Remote {
                    url: url.into(),
                    auth_token: "t".into()
                }
            );
        }
    }

    #[test]
    fn errors_name_the_variable_and_debug_hides_the_token() {
        let err = config(&[("DATABASE_URL", "https://")]).unwrap_err();
        assert_eq!(err.variable, "DATABASE_URL");
        let remote = config(&[
            ("DATABASE_URL", "https://db.example.com"),
            ("DATABASE_AUTH_TOKEN", "very-secret"),
        ])
        .unwrap();
        assert!(!format!("{remote:?}").contains("very-secret"));
    }

    #[test]
    fn routing_settings_have_defaults_and_checked_overrides() {
        let defaults = config(&[]).unwrap();
        assert_eq!(defaults.routing_queue_url, None);
        assert_eq!(defaults.max_attempts, 5);
        assert_eq!(defaults.sweep_after, None);

        let set = config(&[
            (
                "ROUTING_QUEUE_URL",
                "http://127.0.0.1:5000/123/routing.fifo",
            ),
            ("ROUTING_MAX_ATTEMPTS", "3"),
            ("SWEEP_AFTER_SECONDS", "30"),
        ])
        .unwrap();
        assert_eq!(
            set.routing_queue_url.as_deref(),
            Some("http://127.0.0.1:5000/123/routing.fifo")
        );
        assert_eq!(set.max_attempts, 3);
        assert_eq!(set.sweep_after, Some(Duration::from_secs(30)));

        assert_eq!(defaults.delivery.max_attempts, 8);
        assert!(!defaults.delivery.allow_loopback);
        let delivery = config(&[
            ("DELIVERY_MAX_ATTEMPTS", "3"),
            ("DELIVERY_FIRST_RETRY_MS", "20"),
            ("DELIVERY_MAX_RETRY_SECONDS", "2"),
        ])
        .unwrap()
        .delivery;
        assert_eq!(delivery.max_attempts, 3);
        assert_eq!(delivery.first_retry, Duration::from_millis(20));
        assert_eq!(delivery.max_retry, Duration::from_secs(2));

        for (variable, value) in [
            ("ROUTING_MAX_ATTEMPTS", "0"),
            ("ROUTING_MAX_ATTEMPTS", "many"),
            ("SWEEP_AFTER_SECONDS", "-1"),
            ("AGENT_LEASE_SECONDS", "0"),
            ("WEBSOCKET_ENDPOINT", "wss://x"),
            ("DELIVERY_MAX_ATTEMPTS", "0"),
            ("DELIVERY_FIRST_RETRY_MS", "soon"),
            ("DELIVERY_MAX_RETRY_SECONDS", "0"),
        ] {
            let err = config(&[(variable, value)]).unwrap_err();
            assert_eq!(err.variable, variable);
        }
    }
}
