//! Lambda function on the routing queue (SQS FIFO, `ReportBatchItemFailures`): each
//! routing job classifies and routes a new conversation or delivers a follow-up
//! message to agents; each delivery job sends a callback to the business (deliveries
//! run here, in the queue consumer, in their own message groups). The handlers live
//! in `chat_router`.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use chat_router::callback::deliver::{Deliverer, Jobs};
use chat_router::callback::secret::EncryptionKey;
use chat_router::config::Config;
use chat_router::queue::sqs::handle_batch;
use chat_router::store::Store;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chat_router::telemetry::init();

    // Built once per cold start; the embedded classifier's models are cached across
    // invocations of this instance.
    let config = Config::from_env()?;
    let store = Arc::new(Store::open(config.database.clone()).await?);
    let notifier = chat_router::realtime::notifier_from_env(store.clone(), &config).await;
    let router = Arc::new(chat_router::routing::Router::from_env(
        store.clone(),
        &config,
        notifier.clone(),
    )?);

    // Without CALLBACK_SECRET_KEY deliveries cannot be signed: they stay pending (and
    // come back from the queue) until a deployment has the key.
    let deliverer = match EncryptionKey::from_env() {
        Ok(key) => Some(Arc::new(Deliverer::new(
            store,
            notifier,
            key,
            config.delivery.clone(),
        )?)),
        Err(err) => {
            tracing::warn!(cause = %err, "deliveries disabled");
            None
        }
    };
    let jobs = Arc::new(Jobs::new(router, deliverer));

    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let jobs = jobs.clone();
        async move { Ok::<SqsBatchResponse, Error>(handle_batch(jobs.as_ref(), event.payload).await) }
    }))
    .await
}
