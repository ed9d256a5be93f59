//! Lambda function behind the HTTP API: `POST /webhook/message`, `GET /health`, and
//! the `$default` route (our JSON 404 and 405). The handler lives in `chat_router`.

use std::sync::Arc;

use chat_router::config::Config;
use chat_router::queue::OutboxOnly;
use chat_router::store::Store;
use chat_router::webhook::Webhook;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chat_router::telemetry::init();

    // Built once per cold start and borrowed by every invocation. A remote database
    // is only checked here (one query); migrating it is a deploy step.
    let config = Config::from_env()?;
    let store = Arc::new(Store::open(config.database).await?);
    let webhook = Webhook::new(store, Arc::new(OutboxOnly));

    run(service_fn(|request: Request| {
        let webhook = webhook.clone();
        async move { Ok::<_, Error>(webhook.handle(request).await) }
    }))
    .await
}
