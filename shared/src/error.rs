//! The HTTP error contract: one type, mapped to a status and a JSON body in one place.
//!
//! Every error answers `{"error": {"code": …, "message": …}}`. Internal failures
//! answer a generic 500; their cause chain is logged by the handler, never sent.

use lambda_http::http::{StatusCode, header};
use lambda_http::{Body, Response};
use serde_json::json;

/// An error answered to an HTTP client.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The client's request is at fault.
    #[error("{code}: {message}")]
    Client {
        /// 4xx.
        status: StatusCode,
        /// Machine-readable, stable.
        code: &'static str,
        /// For people; never holds internal detail.
        message: String,
        /// Extra headers (`Allow` on 405).
        allow: Option<&'static str>,
    },
    /// Something on our side failed.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A dependency is down; retrying later may work.
    #[error("service unavailable")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    fn client(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::Client {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    /// 400 `invalid_json`.
    pub fn invalid_json() -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "the body is not valid JSON",
        )
    }

    /// 400 `invalid_body`: valid JSON, but not an object.
    pub fn invalid_body() -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body must be a JSON object",
        )
    }

    /// 400 `missing_field`.
    pub fn missing_field(field: &str) -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "missing_field",
            format!("`{field}` is required"),
        )
    }

    /// 400 `invalid_field`.
    pub fn invalid_field(field: &str, rule: &str) -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "invalid_field",
            format!("`{field}` {rule}"),
        )
    }

    /// 400 `message_too_long`.
    pub fn message_too_long(limit: usize) -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "message_too_long",
            format!("`message` is longer than {limit} characters"),
        )
    }

    /// 400 `invalid_characters`.
    pub fn invalid_characters(field: &str) -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "invalid_characters",
            format!("`{field}` contains control characters other than newline and tab"),
        )
    }

    /// 400 `invalid_idempotency_key`.
    pub fn invalid_idempotency_key() -> ApiError {
        Self::client(
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
            "`Idempotency-Key` must be 1 to 255 visible ASCII characters",
        )
    }

    /// 401 `unauthorized`.
    pub fn unauthorized() -> ApiError {
        Self::client(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid `Authorization: Bearer <webhook key>` header is required",
        )
    }

    /// 403 `forbidden`.
    pub fn forbidden() -> ApiError {
        Self::client(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this key may not post messages for that business",
        )
    }

    /// 404 `not_found`.
    pub fn not_found() -> ApiError {
        Self::client(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405 `method_not_allowed`.
    pub fn method_not_allowed(allow: &'static str) -> ApiError {
        ApiError::Client {
            status: StatusCode::METHOD_NOT_ALLOWED,
            code: "method_not_allowed",
            message: format!("this route accepts {allow}"),
            allow: Some(allow),
        }
    }

    /// 409 `idempotency_conflict`.
    pub fn idempotency_conflict() -> ApiError {
        Self::client(
            StatusCode::CONFLICT,
            "idempotency_conflict",
            "this `Idempotency-Key` was used with a different request",
        )
    }

    /// 413 `payload_too_large`.
    pub fn payload_too_large(limit: usize) -> ApiError {
        Self::client(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    /// 415 `unsupported_media_type`.
    pub fn unsupported_media_type() -> ApiError {
        Self::client(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "`Content-Type` must be application/json",
        )
    }

    /// The status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Client { status, .. } => *status,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ApiError::Client { code, .. } => code,
            ApiError::Internal(_) => "internal",
            ApiError::Unavailable(_) => "unavailable",
        }
    }

    /// The response. Has no side effects: logging is the caller's.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let code = self.code();
        let (message, allow) = match self {
            ApiError::Client { message, allow, .. } => (message, allow),
            ApiError::Internal(_) => ("something went wrong on our side".to_owned(), None),
            ApiError::Unavailable(_) => {
                ("the service is unavailable, retry later".to_owned(), None)
            }
        };
        let body = json!({ "error": { "code": code, "message": message } });
        let mut response = json_response(status, &body);
        if let Some(allow) = allow {
            response
                .headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        response
    }
}

impl From<crate::store::StoreError> for ApiError {
    fn from(err: crate::store::StoreError) -> ApiError {
        ApiError::Internal(Box::new(err))
    }
}

/// A JSON response with the given status.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::Text(body.to_string()))
        .expect("static parts are valid")
}

/// Formats an error with its whole cause chain, for logs.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}
