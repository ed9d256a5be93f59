//! Configuration, parsed once from the environment.
//!
//! Every error names the variable at fault.

use std::path::PathBuf;

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

/// Settings shared by every entry point.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the database lives.
    pub database: Location,
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
        Ok(Config { database })
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
}
