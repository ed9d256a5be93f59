//! Scheduled Lambda function: hands routing jobs left pending longer than
//! `SWEEP_AFTER_SECONDS` to the routing queue again, and marks failed those past the
//! attempt limit (including jobs SQS moved to its dead-letter queue).

use std::sync::Arc;

use aws_lambda_events::event::eventbridge::EventBridgeEvent;
use chat_router::config::{Config, DEFAULT_SWEEP_AFTER};
use chat_router::queue::sqs::SqsQueue;
use chat_router::store::Store;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chat_router::telemetry::init();

    let config = Config::from_env()?;
    let queue_url = config
        .routing_queue_url
        .clone()
        .ok_or("ROUTING_QUEUE_URL: the sweeper needs the routing queue")?;
    let older_than = config.sweep_after.unwrap_or(DEFAULT_SWEEP_AFTER);
    let store = Arc::new(Store::open(config.database.clone()).await?);
    let notifier = chat_router::realtime::notifier_from_env(store.clone(), &config).await;
    let router = Arc::new(chat_router::routing::Router::from_env(
        store, &config, notifier,
    )?);
    let queue = Arc::new(SqsQueue::from_env(queue_url).await);

    run(service_fn(|event: LambdaEvent<EventBridgeEvent>| {
        let (router, queue) = (router.clone(), queue.clone());
        async move {
            let report = router
                .sweep_on_schedule(queue.as_ref(), older_than, &event.payload)
                .await?;
            Ok::<_, Error>(serde_json::to_value(report)?)
        }
    }))
    .await
}
