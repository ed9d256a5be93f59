//! Logging setup shared by every binary.

use tracing_subscriber::EnvFilter;

/// Installs a `tracing` subscriber writing to stderr. The level comes from `RUST_LOG`,
/// else `AWS_LAMBDA_LOG_LEVEL`, else `info`; `AWS_LAMBDA_LOG_FORMAT=JSON` (or
/// `LOG_FORMAT=json`) switches to JSON lines. Message bodies and secrets are never
/// logged above debug level.
pub fn init() {
    let level = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .map(|level| level.to_lowercase())
        .unwrap_or_else(|_| "info".to_owned());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let json = ["AWS_LAMBDA_LOG_FORMAT", "LOG_FORMAT"]
        .iter()
        .any(|name| std::env::var(name).is_ok_and(|v| v.eq_ignore_ascii_case("json")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    // A second call (tests) keeps the first subscriber.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
