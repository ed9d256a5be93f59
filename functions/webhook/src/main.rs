//! Lambda function behind the HTTP API: `POST /webhook/message`, `GET /health`, and
//! the `$default` route (our JSON 404 and 405). The handler lives in `chat_router`.

use std::sync::Arc;

use chat_router::config::Config;
use chat_router::queue::JobQueue;
use chat_router::queue::OutboxOnly;
use chat_router::queue::sqs::SqsQueue;
use chat_router::store::Store;
use chat_router::webhook::Webhook;
use lambda_http::{Error, Request, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chat_router::telemetry::init();

    // Built once per cold start and borrowed by every invocation. A remote database
    // is only checked here (one query); migrating it is a deploy step.
    let config = Config::from_env()?;
    let store = Arc::new(Store::open(config.database.clone()).await?);
    // Without a routing queue, jobs wait in the database's outbox for the sweeper.
    let queue: Arc<dyn JobQueue> = match &config.routing_queue_url {
        Some(url) => Arc::new(SqsQueue::from_env(url).await),
        None => Arc::new(OutboxOnly),
    };
    let webhook = Webhook::new(store, queue);

    run(service_fn(|request: Request| {
        let webhook = webhook.clone();
        async move { Ok::<_, Error>(webhook.handle(request).await) }
    }))
    .await
}
