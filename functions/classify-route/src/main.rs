//! Lambda function on the routing queue (SQS FIFO, `ReportBatchItemFailures`): each
//! job classifies and routes a new conversation or delivers a follow-up message. The
//! handler lives in `chat_router`.

use std::sync::Arc;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
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
        store, &config, notifier,
    )?);

    run(service_fn(|event: LambdaEvent<SqsEvent>| {
        let router = router.clone();
        async move { Ok::<SqsBatchResponse, Error>(handle_batch(router.as_ref(), event.payload).await) }
    }))
    .await
}
