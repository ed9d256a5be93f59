//! The AWS SDK's shared configuration.
//!
//! Every SDK client (SQS, DynamoDB, the API Gateway management API) and the SDK's
//! credential providers use one HTTPS client: hyper 1 with rustls on `ring`, the TLS
//! stack the rest of the product (reqwest, libsql) already links. The SDK's default
//! client would add a second one (rustls on aws-lc-rs), about a megabyte more in
//! every Lambda bootstrap and more to load at cold start. The configuration is loaded
//! once per process and shared, so a function with several clients reads the
//! environment and sets up credentials, the client and its connection pool once.

pub use aws_sdk_sqs::config::SharedHttpClient;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// The HTTPS client for SDK clients built by hand (`Config::builder()`), which get
/// none by themselves.
pub fn http_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// The SDK configuration from the standard AWS environment (region, credentials and
/// `AWS_ENDPOINT_URL`), loaded on first use and shared by every client of the process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> =
        tokio::sync::OnceCell::const_new();
    CONFIG
        .get_or_init(|| async {
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .http_client(http_client())
                .load()
                .await
        })
        .await
        .clone()
}
