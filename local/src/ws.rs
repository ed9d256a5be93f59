//! The local WebSocket gateway: real sockets in, the same API Gateway WebSocket events
//! Lambda receives, the same handlers; and API Gateway's management API
//! (`/@connections/{id}`), so the AWS SDK's client delivers here as it does on AWS.
//!
//! As on API Gateway: the `$connect` handler's 401 refuses the upgrade; frames over
//! 32 KB end the connection; a connection closes after ten minutes without a frame
//! from the client, and after two hours in any case; a post to an unknown connection
//! answers 410 with `x-amzn-ErrorType: GoneException`.
//!
//! The management API here has no authentication (API Gateway's checks IAM
//! signatures): it is for a server bound to loopback, as `chat-router serve` is by
//! default.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::apigw::{
    ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest,
    ApiGatewayWebsocketProxyRequestContext,
};
use axum::body::{Body, Bytes};
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chat_router::realtime::poster::Outbound;
use chat_router::realtime::protocol::MAX_FRAME_BYTES;
use chat_router::realtime::{IDLE_TIMEOUT, LocalSockets, MAX_CONNECTION, Realtime};
use futures::{SinkExt, StreamExt};
use serde_json::json;

/// The largest message API Gateway carries (and the largest post it accepts).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// What the WebSocket routes share.
#[derive(Clone)]
pub struct WsState {
    /// The handlers.
    pub realtime: Arc<Realtime>,
    /// The open sockets.
    pub sockets: Arc<LocalSockets>,
    /// Facts about each open socket, for `GET @connections/{id}`.
    details: Arc<Mutex<HashMap<String, Details>>>,
}

#[derive(Clone)]
struct Details {
    connected_at: chrono::DateTime<chrono::Utc>,
    last_active: chrono::DateTime<chrono::Utc>,
    source_ip: String,
    user_agent: Option<String>,
}

impl WsState {
    /// Routes over these handlers and sockets.
    pub fn new(realtime: Arc<Realtime>, sockets: Arc<LocalSockets>) -> WsState {
        WsState {
            realtime,
            sockets,
            details: Arc::default(),
        }
    }

    fn touch(&self, connection_id: &str) {
        if let Some(details) = self
            .details
            .lock()
            .expect("details lock")
            .get_mut(connection_id)
        {
            details.last_active = chrono::Utc::now();
        }
    }
}

/// `GET /ws?token=…`: the upgrade, after `$connect` accepted the agent.
pub async fn upgrade(
    State(state): State<WsState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    let connection_id = new_connection_id();
    let now = chrono::Utc::now();
    let user_agent = headers
        .get(axum::http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);

    // The socket's channel exists before `$connect` registers the connection, so an
    // event fanned out in between waits in it instead of finding the connection gone.
    let outbound = state.sockets.attach(&connection_id);
    let mut event = event(
        "CONNECT",
        "$connect",
        &connection_id,
        now.timestamp_millis(),
        peer,
        None,
    );
    event.headers = lambda_headers(&headers);
    event.query_string_parameters = query_map(query.as_deref().unwrap_or_default());
    let answer = state.realtime.connect(&event).await;
    if answer.status_code != 200 {
        state.sockets.detach(&connection_id);
        return into_response(answer);
    }
    state.details.lock().expect("details lock").insert(
        connection_id.clone(),
        Details {
            connected_at: now,
            last_active: now,
            source_ip: peer.ip().to_string(),
            user_agent,
        },
    );

    let failed = {
        let (state, connection_id) = (state.clone(), connection_id.clone());
        move |_| {
            tokio::spawn(async move {
                tracing::warn!(connection = %connection_id, "upgrade failed");
                disconnected(&state, &connection_id, now.timestamp_millis(), peer, 1006).await;
            });
        }
    };
    upgrade
        .max_frame_size(MAX_FRAME_BYTES)
        .max_message_size(MAX_MESSAGE_BYTES)
        .on_failed_upgrade(failed)
        .on_upgrade(move |socket| {
            run(
                state,
                socket,
                connection_id,
                now.timestamp_millis(),
                peer,
                outbound,
            )
        })
}

/// One socket: frames in become `$default` events, handled in order; the channel's
/// frames go out; idleness and age end it; its end becomes `$disconnect`.
async fn run(
    state: WsState,
    socket: WebSocket,
    connection_id: String,
    connected_at: i64,
    peer: SocketAddr,
    mut outbound: tokio::sync::mpsc::Receiver<Outbound>,
) {
    let (mut sink, mut stream) = socket.split();
    let mut writer = tokio::spawn(async move {
        while let Some(frame) = outbound.recv().await {
            let sent = match frame {
                Outbound::Text(text) => sink.send(Message::Text(text.into())).await,
                Outbound::Close => {
                    let _ = sink
                        .send(Message::Close(Some(CloseFrame {
                            code: 1000,
                            reason: "closed by the server".into(),
                        })))
                        .await;
                    break;
                }
            };
            if sent.is_err() {
                break;
            }
        }
    });

    let deadline = tokio::time::Instant::now() + MAX_CONNECTION;
    let mut code = 1000;
    let mut written = false;
    loop {
        let idle = tokio::time::sleep(IDLE_TIMEOUT);
        let frame = tokio::select! {
            frame = stream.next() => frame,
            // The server closed it (a DELETE, a revoked token) or could not write: the
            // connection ends without waiting for the client.
            _ = &mut writer => { written = true; break; }
            _ = idle => { code = 1001; tracing::info!(connection = %connection_id, "idle connection closed"); break; }
            _ = tokio::time::sleep_until(deadline) => { code = 1001; break; }
        };
        let body = match frame {
            Some(Ok(Message::Text(text))) => Some((text.to_string(), false)),
            Some(Ok(Message::Binary(bytes))) => {
                use base64::Engine;
                Some((
                    base64::engine::general_purpose::STANDARD.encode(bytes),
                    true,
                ))
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => None,
            Some(Ok(Message::Close(close))) => {
                code = close.map_or(1005, |c| c.code);
                break;
            }
            Some(Err(err)) => {
                tracing::info!(connection = %connection_id, cause = %err, "socket error");
                code = 1009;
                break;
            }
            None => {
                code = 1006;
                break;
            }
        };
        let Some((body, binary)) = body else { continue };
        state.touch(&connection_id);
        let mut event = event(
            "MESSAGE",
            "$default",
            &connection_id,
            connected_at,
            peer,
            Some(body),
        );
        event.is_base64_encoded = binary;
        state.realtime.message(&event).await;
        if !state.sockets.contains(&connection_id) {
            // The handler closed it (a revoked token).
            break;
        }
    }
    // Whatever is already queued (an error frame, say) goes out before the socket ends.
    let _ =
        chat_router::realtime::ConnectionPoster::disconnect(state.sockets.as_ref(), &connection_id)
            .await;
    if !written {
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    disconnected(&state, &connection_id, connected_at, peer, code).await;
}

async fn disconnected(
    state: &WsState,
    connection_id: &str,
    connected_at: i64,
    peer: SocketAddr,
    code: u16,
) {
    state.sockets.detach(connection_id);
    state
        .details
        .lock()
        .expect("details lock")
        .remove(connection_id);
    let mut event = event(
        "DISCONNECT",
        "$disconnect",
        connection_id,
        connected_at,
        peer,
        None,
    );
    event.request_context.disconnect_status_code = Some(i64::from(code));
    state.realtime.disconnect(&event).await;
}

/// `POST /@connections/{id}`: sends the body as one text frame.
pub async fn post(
    State(state): State<WsState>,
    Path(connection_id): Path<String>,
    body: Bytes,
) -> Response {
    if body.len() > MAX_MESSAGE_BYTES {
        return aws_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "PayloadTooLargeException",
            "the message is over 128 KB",
        );
    }
    let Ok(text) = String::from_utf8(body.to_vec()) else {
        return aws_error(
            StatusCode::BAD_REQUEST,
            "BadRequestException",
            "the local gateway sends text frames only",
        );
    };
    match chat_router::realtime::ConnectionPoster::post(
        state.sockets.as_ref(),
        &connection_id,
        &text,
    )
    .await
    {
        Ok(()) => StatusCode::OK.into_response(),
        Err(_) => gone(),
    }
}

/// `GET /@connections/{id}`: what API Gateway tells about a connection.
pub async fn describe(State(state): State<WsState>, Path(connection_id): Path<String>) -> Response {
    let details = state
        .details
        .lock()
        .expect("details lock")
        .get(&connection_id)
        .cloned();
    match details {
        Some(d) if state.sockets.contains(&connection_id) => axum::Json(json!({
            "connectedAt": d.connected_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "lastActiveAt": d.last_active.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "identity": {"sourceIp": d.source_ip, "userAgent": d.user_agent},
        }))
        .into_response(),
        _ => gone(),
    }
}

/// `DELETE /@connections/{id}`: closes the connection.
pub async fn delete(State(state): State<WsState>, Path(connection_id): Path<String>) -> Response {
    if !state.sockets.contains(&connection_id) {
        return gone();
    }
    let _ =
        chat_router::realtime::ConnectionPoster::disconnect(state.sockets.as_ref(), &connection_id)
            .await;
    StatusCode::NO_CONTENT.into_response()
}

/// API Gateway's answer for a connection that is not there.
fn gone() -> Response {
    aws_error(StatusCode::GONE, "GoneException", "")
}

fn aws_error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let body = if message.is_empty() {
        json!({ "message": null })
    } else {
        json!({ "message": message })
    };
    let mut response = (status, axum::Json(body)).into_response();
    response
        .headers_mut()
        .insert("x-amzn-ErrorType", HeaderValue::from_static(kind));
    response
}

fn new_connection_id() -> String {
    // API Gateway's ids are short opaque strings; these are random too.
    let id = chat_router::new_id().replace('-', "");
    format!("L{}", &id[..15])
}

fn event(
    event_type: &str,
    route_key: &str,
    connection_id: &str,
    connected_at: i64,
    peer: SocketAddr,
    body: Option<String>,
) -> ApiGatewayWebsocketProxyRequest {
    let now = chrono::Utc::now();
    let mut context = ApiGatewayWebsocketProxyRequestContext {
        route_key: Some(route_key.to_owned()),
        event_type: Some(event_type.to_owned()),
        connection_id: Some(connection_id.to_owned()),
        connected_at,
        request_id: Some(chat_router::new_id()),
        extended_request_id: None,
        apiid: Some("local".into()),
        stage: Some("local".into()),
        domain_name: Some("localhost".into()),
        message_direction: Some("IN".into()),
        request_time: Some(now.format("%d/%b/%Y:%H:%M:%S %z").to_string()),
        request_time_epoch: now.timestamp_millis(),
        ..Default::default()
    };
    if event_type == "MESSAGE" {
        context.message_id = Some(chat_router::new_id());
    }
    context.identity.source_ip = Some(peer.ip().to_string());
    ApiGatewayWebsocketProxyRequest {
        request_context: context,
        is_base64_encoded: false,
        body,
        ..Default::default()
    }
}

fn lambda_headers(headers: &HeaderMap) -> lambda_http::http::HeaderMap {
    let mut out = lambda_http::http::HeaderMap::new();
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            lambda_http::http::HeaderName::from_bytes(name.as_str().as_bytes()),
            lambda_http::http::HeaderValue::from_bytes(value.as_bytes()),
        ) {
            out.append(name, value);
        }
    }
    out
}

fn query_map(raw: &str) -> aws_lambda_events::query_map::QueryMap {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in form_urlencoded::parse(raw.as_bytes()) {
        map.entry(key.into_owned())
            .or_default()
            .push(value.into_owned());
    }
    map.into()
}

fn into_response(answer: ApiGatewayProxyResponse) -> Response {
    let status = StatusCode::from_u16(answer.status_code as u16)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = match answer.body {
        Some(aws_lambda_events::encodings::Body::Text(text)) => Body::from(text),
        Some(aws_lambda_events::encodings::Body::Binary(bytes)) => Body::from(bytes),
        _ => Body::empty(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
