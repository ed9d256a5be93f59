//! Lambda function for the WebSocket API's `$disconnect`: unregisters the connection (idempotently) and ends the agent's
//! availability when it was their last.
//! The handler lives in `chat_router::realtime`.

use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use chat_router::config::Config;
use chat_router::store::Store;
use lambda_runtime::{Error, LambdaEvent, run, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    chat_router::telemetry::init();

    // Built once per cold start: the database, the DynamoDB registry
    // (CONNECTIONS_TABLE) and the management API client (WEBSOCKET_ENDPOINT).
    let config = Config::from_env()?;
    let store = Arc::new(Store::open(config.database.clone()).await?);
    let realtime = Arc::new(chat_router::realtime::from_env(store, &config).await?);

    run(service_fn(
        |event: LambdaEvent<ApiGatewayWebsocketProxyRequest>| {
            let realtime = realtime.clone();
            async move {
                Ok::<ApiGatewayProxyResponse, Error>(realtime.disconnect(&event.payload).await)
            }
        },
    ))
    .await
}
