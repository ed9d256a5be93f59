//! The local gateway: real HTTP in, the same lambda_http requests API Gateway's HTTP
//! API delivers to Lambda, the same handler.
//!
//! Each request becomes an API Gateway HTTP API payload 2.0 event and is read back by
//! lambda_http's own event parser, so the handler cannot tell the two worlds apart.

use std::future::Future;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body as AxumBody;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chat_router::error::ApiError;
use chat_router::webhook::{MAX_BODY_BYTES, Webhook};
use http_body_util::{BodyExt, Limited};
use lambda_http::aws_lambda_events::apigw::{
    ApiGatewayV2httpRequest, ApiGatewayV2httpRequestContext,
    ApiGatewayV2httpRequestContextHttpDescription,
};
use lambda_http::http::HeaderMap;
use tokio::net::TcpListener;

/// What the gateway serves: the webhook, and, when given, the WebSocket API with its
/// management API.
#[derive(Clone)]
pub struct Gateway {
    /// The HTTP API's handler.
    pub webhook: Webhook,
    /// The WebSocket routes.
    pub ws: Option<crate::ws::WsState>,
    /// `serve --demo`'s callback receiver at [`crate::demo::CALLBACK_PATH`].
    pub demo_receiver: Option<crate::demo::Receiver>,
}

impl From<Webhook> for Gateway {
    fn from(webhook: Webhook) -> Gateway {
        Gateway {
            webhook,
            ws: None,
            demo_receiver: None,
        }
    }
}

/// Builds the gateway's router.
pub fn router(gateway: impl Into<Gateway>) -> Router {
    let gateway = gateway.into();
    let mut router = Router::new();
    if let Some(ws) = gateway.ws {
        use axum::routing::get;
        router = router.merge(
            Router::new()
                .route("/ws", get(crate::ws::upgrade))
                .route(
                    "/@connections/{id}",
                    get(crate::ws::describe)
                        .post(crate::ws::post)
                        .delete(crate::ws::delete),
                )
                .with_state(ws),
        );
    }
    if let Some(receiver) = gateway.demo_receiver {
        router = router.merge(
            Router::new()
                .route(
                    crate::demo::CALLBACK_PATH,
                    axum::routing::post(crate::demo::receive),
                )
                .with_state(receiver),
        );
    }
    router.fallback(forward).with_state(gateway.webhook)
}

/// Serves until `shutdown` resolves, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    gateway: impl Into<Gateway>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router(gateway).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn forward(
    State(webhook): State<Webhook>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    let (parts, body) = request.into_parts();

    // API Gateway refuses bodies past its own limit; ours is far lower, and reading
    // stops there, so a huge body costs no memory.
    let bytes = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return into_axum(ApiError::payload_too_large(MAX_BODY_BYTES).into_response()),
    };

    let event = api_gateway_event(&parts.method, &parts.uri, &parts.headers, &bytes, peer);
    let json = serde_json::to_string(&event).expect("events serialise");
    let request = match lambda_http::request::from_str(&json) {
        Ok(request) => request,
        Err(err) => {
            tracing::error!(cause = %err, "could not rebuild a request");
            return into_axum(ApiError::Internal(Box::new(err)).into_response());
        }
    };
    into_axum(webhook.handle(request).await)
}

/// The event API Gateway's HTTP API would send for this request.
fn api_gateway_event(
    method: &lambda_http::http::Method,
    uri: &lambda_http::http::Uri,
    headers: &HeaderMap,
    body: &[u8],
    peer: SocketAddr,
) -> ApiGatewayV2httpRequest {
    // Like API Gateway: header names lowercased, repeated headers joined by commas,
    // cookies apart, a body that is not UTF-8 sent as base64.
    let mut joined = HeaderMap::new();
    let mut cookies = Vec::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        if name == lambda_http::http::header::COOKIE {
            cookies.extend(values.iter().flat_map(|v| v.split("; ")).map(str::to_owned));
            continue;
        }
        if let Ok(value) = values.join(",").parse() {
            joined.insert(name.clone(), value);
        }
    }
    let (body, is_base64_encoded) = match std::str::from_utf8(body) {
        _ if body.is_empty() => (None, false),
        Ok(text) => (Some(text.to_owned()), false),
        Err(_) => (Some(STANDARD.encode(body)), true),
    };
    let now = chrono::Utc::now();
    let request_id = chat_router::new_id();
    ApiGatewayV2httpRequest {
        version: Some("2.0".into()),
        route_key: Some("$default".into()),
        raw_path: Some(uri.path().to_owned()),
        raw_query_string: Some(uri.query().unwrap_or_default().to_owned()),
        cookies: (!cookies.is_empty()).then_some(cookies),
        headers: joined,
        body,
        is_base64_encoded,
        request_context: ApiGatewayV2httpRequestContext {
            route_key: Some("$default".into()),
            account_id: Some("local".into()),
            stage: Some("$default".into()),
            request_id: Some(request_id),
            apiid: Some("local".into()),
            domain_name: Some("localhost".into()),
            time: Some(now.format("%d/%b/%Y:%H:%M:%S %z").to_string()),
            time_epoch: now.timestamp_millis(),
            http: ApiGatewayV2httpRequestContextHttpDescription {
                method: method.clone(),
                path: Some(uri.path().to_owned()),
                protocol: Some("HTTP/1.1".into()),
                source_ip: Some(peer.ip().to_string()),
                user_agent: headers
                    .get(lambda_http::http::header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn into_axum(response: lambda_http::Response<lambda_http::Body>) -> Response {
    let (parts, body) = response.into_parts();
    let body = match body {
        lambda_http::Body::Empty => AxumBody::empty(),
        lambda_http::Body::Text(text) => AxumBody::from(text),
        lambda_http::Body::Binary(bytes) => AxumBody::from(bytes),
    };
    Response::from_parts(parts, body)
}
