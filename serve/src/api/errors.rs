//! Errors of the read API: [`ApiError`] and its JSON answer.
//!
//! Every non-2xx answer is JSON `{"code", "message", "errors": [{"code", "message",
//! "parameter"?}]}`: 400 names the parameter, 401 carries `WWW-Authenticate: Bearer`, 429 and
//! 503 carry `Retry-After` (whole seconds, rounded up). A retriable HBase error is a 503, a
//! permanent one a 500. Pure: building an answer cannot fail.

use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chatpipe_ingest::AuthFailure;
use chatpipe_sink::hbase::HbaseError;
use serde_json::{json, Value};

/// `Retry-After` of a 503.
const RETRY_AFTER_UNAVAILABLE: Duration = Duration::from_secs(1);

/// Why a request failed.
#[derive(Debug)]
pub(crate) enum ApiError {
    BadParam { parameter: String, message: String },
    NotFound(String),
    NoRoute,
    Unauthorized(AuthFailure),
    RateLimited(Duration),
    Overloaded,
    Unavailable(String),
    Internal(String),
}

impl From<HbaseError> for ApiError {
    fn from(e: HbaseError) -> Self {
        if e.is_retriable() {
            ApiError::Unavailable(format!("HBase is unavailable: {e}"))
        } else {
            ApiError::Internal(format!("HBase refused the read: {e}"))
        }
    }
}

pub(crate) fn bad(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam { parameter: parameter.to_owned(), message: message.into() }
}

impl ApiError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            ApiError::BadParam { .. } => StatusCode::BAD_REQUEST,
            ApiError::NotFound(_) | ApiError::NoRoute => StatusCode::NOT_FOUND,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Overloaded | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadParam { .. } => "invalid_parameter",
            ApiError::NotFound(_) => "not_found",
            ApiError::NoRoute => "no_route",
            ApiError::Unauthorized(AuthFailure::Missing) => "missing_api_key",
            ApiError::Unauthorized(AuthFailure::Invalid) => "invalid_api_key",
            ApiError::RateLimited(_) => "rate_limited",
            ApiError::Overloaded => "overloaded",
            ApiError::Unavailable(_) => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            ApiError::BadParam { parameter, message } => format!("invalid parameter `{parameter}`: {message}"),
            ApiError::NotFound(what) => format!("{what} not found"),
            ApiError::NoRoute => "no such route; see /openapi.json".into(),
            ApiError::Unauthorized(AuthFailure::Missing) => {
                "an `Authorization: Bearer <key>` header is required".into()
            }
            ApiError::Unauthorized(AuthFailure::Invalid) => "the API key is not valid".into(),
            ApiError::RateLimited(_) => "too many requests for this API key; retry after the given delay".into(),
            ApiError::Overloaded => "too many requests in progress; retry shortly".into(),
            ApiError::Unavailable(m) | ApiError::Internal(m) => m.clone(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let code = self.code();
        let message = self.message();
        let mut entry = json!({ "code": code, "message": message });
        if let ApiError::BadParam { parameter, .. } = &self {
            entry["parameter"] = json!(parameter);
        }
        let body = json!({ "code": code, "message": message, "errors": [entry] });
        let mut response = json_response(status, &body);
        let headers = response.headers_mut();
        let retry = match &self {
            ApiError::RateLimited(d) => Some(*d),
            ApiError::Overloaded | ApiError::Unavailable(_) => Some(RETRY_AFTER_UNAVAILABLE),
            _ => None,
        };
        if let Some(d) = retry {
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if matches!(self, ApiError::Unauthorized(_)) {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub(crate) fn json_response(status: StatusCode, body: &Value) -> Response {
    let mut response = (status, Body::from(body.to_string())).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(crate) type ApiResult = Result<Response, ApiError>;

pub(crate) fn ok(body: Value) -> ApiResult {
    Ok(json_response(StatusCode::OK, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_json_naming_the_parameter() {
        let r = bad("limit", "too big").into_response();
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        let r = ApiError::RateLimited(Duration::from_millis(1500)).into_response();
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        let r = ApiError::Unauthorized(AuthFailure::Missing).into_response();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(r.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
