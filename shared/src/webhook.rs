//! The HTTP API: `POST /webhook/message` and `GET /health`.
//!
//! [`Webhook::handle`] takes the request API Gateway's HTTP API (payload format 2.0)
//! delivers through lambda_http, and the local gateway builds the very same request
//! from real HTTP traffic, so both worlds run one code path.

use std::sync::Arc;

use lambda_http::http::{Method, StatusCode, header};
use lambda_http::{Body, Request, RequestExt, Response};
use serde::Serialize;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tracing::Instrument;

use crate::error::{ApiError, chain, json_response};
use crate::ingest::{self, Idempotency, NewMessage, Outcome, Receipt};
use crate::queue::JobQueue;
use crate::store::Store;
use crate::tenants;

/// Largest accepted request body, in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Longest accepted message, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4000;

/// Longest accepted `customerId`, `customerName` or `channel`, in characters.
pub const MAX_FIELD_CHARS: usize = 255;

/// The webhook's dependencies, built once per process.
#[derive(Clone)]
pub struct Webhook {
    store: Arc<Store>,
    queue: Arc<dyn JobQueue>,
}

/// The validated body of `POST /webhook/message`. Serialising it gives the normalised
/// form whose hash identifies a request for idempotency.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Payload {
    business_id: String,
    message: String,
    customer_id: Option<String>,
    customer_name: Option<String>,
    channel: Option<String>,
}

impl Webhook {
    /// Builds the handler.
    pub fn new(store: Arc<Store>, queue: Arc<dyn JobQueue>) -> Webhook {
        Webhook { store, queue }
    }

    /// Answers one request. Never fails: every error becomes its JSON response.
    pub async fn handle(&self, request: Request) -> Response<Body> {
        let request_id = request
            .request_context_ref()
            .and_then(|context| match context {
                lambda_http::request::RequestContext::ApiGatewayV2(context) => {
                    context.request_id.clone()
                }
            })
            .unwrap_or_default();
        let span = tracing::info_span!(
            "http",
            request_id = %request_id,
            method = %request.method(),
            path = %request.uri().path(),
            status = tracing::field::Empty,
        );
        async {
            let response = match self.route(request).await {
                Ok(response) => response,
                Err(err) => {
                    // The one place errors are logged: client faults at warn, ours
                    // at error with the cause chain.
                    match &err {
                        ApiError::Client { code, .. } => {
                            tracing::warn!(code = *code, "rejected request")
                        }
                        ApiError::Internal(cause) | ApiError::Unavailable(cause) => {
                            tracing::error!(cause = %chain(cause.as_ref()), "request failed")
                        }
                    }
                    err.into_response()
                }
            };
            tracing::Span::current().record("status", response.status().as_u16());
            response
        }
        .instrument(span)
        .await
    }

    async fn route(&self, request: Request) -> Result<Response<Body>, ApiError> {
        match request.uri().path() {
            "/webhook/message" => match *request.method() {
                Method::POST => self.post_message(request).await,
                _ => Err(ApiError::method_not_allowed("POST")),
            },
            "/health" => match *request.method() {
                Method::GET | Method::HEAD => self.health().await,
                _ => Err(ApiError::method_not_allowed("GET")),
            },
            _ => Err(ApiError::not_found()),
        }
    }

    async fn health(&self) -> Result<Response<Body>, ApiError> {
        let version = self
            .store
            .schema_version()
            .await
            .map_err(|err| ApiError::Unavailable(Box::new(err)))?;
        Ok(json_response(
            StatusCode::OK,
            &json!({ "status": "ok", "schemaVersion": version }),
        ))
    }

    async fn post_message(&self, request: Request) -> Result<Response<Body>, ApiError> {
        let body: &[u8] = request.body().as_ref();
        if body.len() > MAX_BODY_BYTES {
            return Err(ApiError::payload_too_large(MAX_BODY_BYTES));
        }
        if !is_json(request.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::unsupported_media_type());
        }

        // Authenticate before reading the body, so nobody learns our validation rules
        // without a key.
        let key = bearer(request.headers().get(header::AUTHORIZATION))
            .ok_or_else(ApiError::unauthorized)?;
        let business_id = tenants::authenticate_webhook(&self.store, key)
            .await?
            .ok_or_else(ApiError::unauthorized)?;

        let payload = parse_payload(body)?;
        if payload.business_id != business_id {
            // Same answer whether or not the named business exists.
            return Err(ApiError::forbidden());
        }
        let idempotency = match request.headers().get("idempotency-key") {
            Some(value) => Some(Idempotency {
                key: idempotency_key(value)?,
                request_hash: Sha256::digest(
                    serde_json::to_vec(&payload).expect("payload serialises"),
                )
                .into(),
            }),
            None => None,
        };

        let message = NewMessage {
            business_id: payload.business_id,
            content: payload.message,
            customer_id: payload.customer_id,
            customer_name: payload.customer_name,
            channel: payload.channel,
            idempotency,
        };
        match ingest::ingest(&self.store, &message).await? {
            Outcome::Stored {
                receipt,
                job,
                new_conversation,
            } => {
                tracing::info!(
                    business = %job.business_id,
                    conversation = %job.conversation_id,
                    message = %job.message_id,
                    new_conversation,
                    "stored message"
                );
                // The job is committed: a failed hand-off is swept later, so the
                // client still gets its 202.
                if let Err(err) = self.queue.enqueue(&job).await {
                    tracing::warn!(job = %job.id, cause = %chain(&err), "job left for the sweeper");
                }
                Ok(received(StatusCode::ACCEPTED, &receipt))
            }
            Outcome::Replayed(receipt) => Ok(received(StatusCode::OK, &receipt)),
            Outcome::Conflict => Err(ApiError::idempotency_conflict()),
        }
    }
}

fn received(status: StatusCode, receipt: &Receipt) -> Response<Body> {
    json_response(
        status,
        &json!({
            "status": "Received",
            "conversationId": receipt.conversation_id,
            "messageId": receipt.message_id,
        }),
    )
}

/// `application/json`, with or without parameters such as `charset=utf-8`.
fn is_json(value: Option<&header::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

fn bearer(value: Option<&header::HeaderValue>) -> Option<&str> {
    let value = value?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

fn idempotency_key(value: &header::HeaderValue) -> Result<String, ApiError> {
    let key = value
        .to_str()
        .map_err(|_| ApiError::invalid_idempotency_key())?;
    let valid = (1..=255).contains(&key.len()) && key.bytes().all(|b| b.is_ascii_graphic());
    if !valid {
        return Err(ApiError::invalid_idempotency_key());
    }
    Ok(key.to_owned())
}

fn parse_payload(body: &[u8]) -> Result<Payload, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| ApiError::invalid_json())?;
    let Value::Object(mut fields) = value else {
        return Err(ApiError::invalid_body());
    };
    let business_id = required(&mut fields, "businessId")?;
    let message = required(&mut fields, "message")?;
    if message.chars().count() > MAX_MESSAGE_CHARS {
        return Err(ApiError::message_too_long(MAX_MESSAGE_CHARS));
    }
    if message.trim().is_empty() {
        return Err(ApiError::invalid_field("message", "must not be blank"));
    }
    if has_forbidden_control(&message) {
        return Err(ApiError::invalid_characters("message"));
    }
    Ok(Payload {
        business_id,
        message,
        customer_id: optional(&mut fields, "customerId")?,
        customer_name: optional(&mut fields, "customerName")?,
        channel: optional(&mut fields, "channel")?,
    })
}

fn required(fields: &mut Map<String, Value>, name: &str) -> Result<String, ApiError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Err(ApiError::missing_field(name)),
        Some(Value::String(text)) if text.is_empty() => {
            Err(ApiError::invalid_field(name, "must not be empty"))
        }
        Some(Value::String(text)) => Ok(text),
        Some(_) => Err(ApiError::invalid_field(name, "must be a string")),
    }
}

/// An optional short identifier-like field: absent or null is `None`.
fn optional(fields: &mut Map<String, Value>, name: &str) -> Result<Option<String>, ApiError> {
    match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            if text.is_empty() || text.chars().count() > MAX_FIELD_CHARS {
                return Err(ApiError::invalid_field(
                    name,
                    &format!("must be 1 to {MAX_FIELD_CHARS} characters"),
                ));
            }
            if text.chars().any(char::is_control) {
                return Err(ApiError::invalid_characters(name));
            }
            Ok(Some(text))
        }
        Some(_) => Err(ApiError::invalid_field(name, "must be a string")),
    }
}

fn has_forbidden_control(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_type_accepts_json_with_parameters_only() {
        let value = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&value("application/json"))));
        assert!(is_json(Some(&value("Application/JSON; charset=utf-8"))));
        assert!(!is_json(Some(&value("text/plain"))));
        assert!(!is_json(Some(&value("application/jsonp"))));
        assert!(!is_json(None));
    }

    #[test]
    fn bearer_takes_the_token_of_a_bearer_header_only() {
        let value = |s: &'static str| header::HeaderValue::from_static(s);
        assert_eq!(bearer(Some(&value("Bearer abc"))), Some("abc"));
        assert_eq!(bearer(Some(&value("bearer  abc "))), Some("abc"));
        assert_eq!(bearer(Some(&value("Basic abc"))), None);
        assert_eq!(bearer(Some(&value("Bearer "))), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn control_characters_other_than_newline_and_tab_are_refused() {
        assert!(!has_forbidden_control("line one\nline two\tend"));
        assert!(has_forbidden_control("carriage\rreturn"));
        assert!(has_forbidden_control("nul\0byte"));
        assert!(has_forbidden_control("escape\u{1b}[31m"));
        assert!(has_forbidden_control("c1\u{85}control"));
    }
}
