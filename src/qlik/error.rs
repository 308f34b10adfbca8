//! Errors from the Qlik API, parsed leniently and classified for retry and metrics.

use std::time::Duration;

use serde::Deserialize;

/// The documented error body `{"errors":[{code,title,detail,status}]}`; every field optional,
/// `status` an integer (data-connections) or a string (OAuth).
#[derive(Debug, Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
    #[serde(default, rename = "traceId")]
    trace_id: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct ErrorItem {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    detail: Option<String>,
}

/// What a Qlik error response said, as far as it could be parsed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApiProblem {
    /// The first error's `code`, e.g. `DCERROR-0010`.
    pub code: Option<String>,
    /// The first error's `title`.
    pub title: Option<String>,
    /// The first error's `detail`.
    pub detail: Option<String>,
    /// `traceId` when present.
    pub trace_id: Option<String>,
}

impl ApiProblem {
    /// Parses an error body leniently: anything unparseable yields an empty problem.
    pub fn parse(body: &[u8]) -> Self {
        let parsed: ErrorBody = serde_json::from_slice(body).unwrap_or_default();
        let first = parsed.errors.into_iter().next().unwrap_or_default();
        ApiProblem {
            code: first.code,
            title: first.title,
            detail: first.detail,
            trace_id: parsed.trace_id,
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(code) = &self.code {
            parts.push(code.clone());
        }
        match (&self.title, &self.detail) {
            (Some(t), Some(d)) => parts.push(format!("{t}: {d}")),
            (Some(t), None) => parts.push(t.clone()),
            (None, Some(d)) => parts.push(d.clone()),
            (None, None) => {}
        }
        if let Some(trace) = &self.trace_id {
            parts.push(format!("traceId {trace}"));
        }
        if parts.is_empty() {
            "no error details in the response".to_owned()
        } else {
            parts.join(" ")
        }
    }
}

/// An error talking to Qlik.
#[derive(Debug, thiserror::Error)]
pub enum QlikError {
    /// Qlik answered with a non-success status.
    #[error("{method} {endpoint} returned HTTP {status}: {}", problem.describe())]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Endpoint template (never with secrets), e.g. `/api/v1/data-connections/{id}`.
        endpoint: &'static str,
        /// HTTP status code.
        status: u16,
        /// Parsed error body.
        problem: Box<ApiProblem>,
        /// `Retry-After`, when the server sent one.
        retry_after: Option<Duration>,
    },
    /// The request did not complete (connect error, reset, timeout).
    #[error("{method} {endpoint} failed: {message}")]
    Transport {
        /// HTTP method.
        method: &'static str,
        /// Endpoint template.
        endpoint: &'static str,
        /// What happened.
        message: String,
        /// Whether it was a timeout.
        timeout: bool,
    },
    /// A success response whose body could not be understood.
    #[error("{method} {endpoint} returned an unexpected body: {message}")]
    Decode {
        /// HTTP method.
        method: &'static str,
        /// Endpoint template.
        endpoint: &'static str,
        /// What was wrong (never the body itself).
        message: String,
    },
    /// Getting an OAuth token failed.
    #[error("OAuth token request failed: {0}")]
    Token(String),
    /// A lookup by name matched nothing.
    #[error("no data connection named {name:?}{}", space.as_ref().map(|s| format!(" in space {s}")).unwrap_or_default())]
    NameNotFound {
        /// The name looked up.
        name: String,
        /// The space it was looked up in.
        space: Option<String>,
    },
}

impl QlikError {
    /// The HTTP status, if Qlik answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            QlikError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed: 429, 5xx, timeouts and connection
    /// failures. 400, 401 (after a token refresh), 403, 404 and 409 are final.
    pub fn is_retriable(&self) -> bool {
        match self {
            QlikError::Status { status, .. } => *status == 429 || *status >= 500,
            QlikError::Transport { .. } => true,
            QlikError::Token(_) | QlikError::Decode { .. } | QlikError::NameNotFound { .. } => {
                false
            }
        }
    }

    /// A stable, low-cardinality label for metrics and the one-line CLI outcome.
    pub fn error_type(&self) -> &'static str {
        match self {
            QlikError::Status { status, .. } => match status {
                400 => "bad_request",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                429 => "rate_limited",
                s if *s >= 500 => "server_error",
                _ => "http_error",
            },
            QlikError::Transport { timeout: true, .. } => "timeout",
            QlikError::Transport { .. } => "connection",
            QlikError::Decode { .. } => "decode",
            QlikError::Token(_) => "auth",
            QlikError::NameNotFound { .. } => "not_found",
        }
    }

    /// The server's `Retry-After`, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            QlikError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_and_oauth_shapes_leniently() {
        let p = ApiProblem::parse(
            br#"{"errors":[{"code":"DCERROR-0010","title":"Bad or invalid request","detail":"Field xxx is missing in the request","status":400}]}"#,
        );
        assert_eq!(p.code.as_deref(), Some("DCERROR-0010"));
        assert_eq!(
            p.detail.as_deref(),
            Some("Field xxx is missing in the request")
        );
        let p = ApiProblem::parse(
            br#"{"errors":[{"code":"OAUTH-1","title":"invalid_client","status":"401"}],"traceId":"abc"}"#,
        );
        assert_eq!(p.title.as_deref(), Some("invalid_client"));
        assert_eq!(p.trace_id.as_deref(), Some("abc"));
        assert_eq!(
            ApiProblem::parse(b"<html>oops</html>"),
            ApiProblem::default()
        );
        assert_eq!(
            ApiProblem::parse(br#"{"errors":[{}]}"#),
            ApiProblem::default()
        );
    }

    #[test]
    fn classification() {
        let st = |status| QlikError::Status {
            method: "PATCH",
            endpoint: "/api/v1/data-connections/{id}",
            status,
            problem: Box::default(),
            retry_after: None,
        };
        for s in [429, 500, 502, 503, 504] {
            assert!(st(s).is_retriable(), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!st(s).is_retriable(), "{s}");
        }
        assert_eq!(st(429).error_type(), "rate_limited");
        assert_eq!(st(403).error_type(), "forbidden");
        let t = QlikError::Transport {
            method: "GET",
            endpoint: "/x",
            message: "reset".into(),
            timeout: true,
        };
        assert!(t.is_retriable());
        assert_eq!(t.error_type(), "timeout");
        assert_eq!(
            st(400).to_string(),
            "PATCH /api/v1/data-connections/{id} returned HTTP 400: no error details in the response"
        );
    }
}
