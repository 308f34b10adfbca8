//! Errors from the Qlik API, parsed leniently and classified for retry and metrics.

use std::{sync::Arc, time::Duration};

use serde::Deserialize;
use serde_json::Value;

use crate::text::{self, Redactor};

/// The documented error body `{"errors":[{code,title,detail,status}]}`; every field optional,
/// `status` an integer (data-connections) or a string (OAuth). Fields of an unexpected JSON
/// type are ignored rather than failing the whole parse.
#[derive(Debug, Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<Value>,
    #[serde(default, rename = "traceId")]
    trace_id: Option<Value>,
}

/// Longest `code`, `title` or `traceId` ever printed (characters).
const MAX_SHORT_FIELD: usize = 128;

/// How much of an error body is read at most: enough for any documented error, and a
/// hostile server cannot make the client buffer more.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// What the error body was, when nothing could be parsed from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BodyShape {
    /// The documented JSON shape (possibly with no fields).
    #[default]
    Json,
    /// Empty.
    Empty,
    /// Not JSON (an HTML error page, a proxy's text): never printed.
    NotJson {
        /// Its length in bytes.
        bytes: usize,
    },
    /// Longer than [`MAX_ERROR_BODY`]: not read to the end, not printed.
    TooLarge,
}

/// What a Qlik error response said, as far as it could be parsed. Every text field is already
/// redacted (against every secret in play), control-character-escaped and capped: it is safe
/// to print. The raw body is never kept.
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
    /// What the body was.
    pub shape: BodyShape,
    /// Who the refused request spoke for (set by the client that made it): named in the
    /// hints, so an error of one tenant names that tenant's credential and keys.
    pub origin: Option<Arc<Origin>>,
}

/// Who a [`crate::qlik::QlikClient`] speaks for, for the hints of its errors. Never a secret:
/// a variable name, a file path or a client id, and config key names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// The credential, e.g. `the API key in $QLIK_API_KEY (qlik.api_key_env)`.
    pub identity: String,
    /// The config table of the tenant (`qlik`, or `tenants.NAME`), for key names in hints.
    pub table: String,
}

impl Origin {
    /// The origin of a client built without one: the generic words of the single `[qlik]`.
    pub fn default_oauth() -> Origin {
        Origin {
            identity: "the Qlik API key or OAuth client (qlik.api_key_env, qlik.api_key_file or [qlik.oauth])".to_owned(),
            table: "qlik".to_owned(),
        }
    }
}

fn field(v: Option<&Value>, redactor: &Redactor, max: usize) -> Option<String> {
    let s = match v? {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    let clean = text::sanitize(&s, redactor);
    Some(text::cap(&clean, max).into_owned())
}

impl ApiProblem {
    /// Parses an error body leniently (anything unparseable yields an empty problem), then
    /// redacts, escapes and caps every field. `truncated` says the body was cut at
    /// [`MAX_ERROR_BODY`].
    pub fn parse_redacted(body: &[u8], truncated: bool, redactor: &Redactor) -> Self {
        if truncated {
            return ApiProblem {
                shape: BodyShape::TooLarge,
                ..ApiProblem::default()
            };
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return ApiProblem {
                shape: BodyShape::Empty,
                ..ApiProblem::default()
            };
        }
        let Ok(parsed) = serde_json::from_slice::<ErrorBody>(body) else {
            return ApiProblem {
                shape: BodyShape::NotJson { bytes: body.len() },
                ..ApiProblem::default()
            };
        };
        let first = parsed.errors.into_iter().next().unwrap_or_default();
        ApiProblem {
            code: field(first.get("code"), redactor, MAX_SHORT_FIELD),
            title: field(first.get("title"), redactor, MAX_SHORT_FIELD),
            detail: field(first.get("detail"), redactor, text::MAX_REMOTE_TEXT),
            trace_id: field(parsed.trace_id.as_ref(), redactor, MAX_SHORT_FIELD),
            shape: BodyShape::Json,
            origin: None,
        }
    }

    /// [`ApiProblem::parse_redacted`] with nothing to redact (tests, bodies sent by us).
    pub fn parse(body: &[u8]) -> Self {
        Self::parse_redacted(body, false, &Redactor::new())
    }

    /// One line: code, `title: detail` and trace id, or what the body was.
    pub fn describe(&self) -> String {
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
        if !parts.is_empty() {
            return parts.join(" ");
        }
        match self.shape {
            BodyShape::Json | BodyShape::Empty => "no error details in the response".to_owned(),
            BodyShape::NotJson { bytes } => {
                format!("the error body is not JSON ({bytes} bytes, not shown)")
            }
            BodyShape::TooLarge => format!(
                "the error body is larger than {} KiB (not read, not shown)",
                MAX_ERROR_BODY / 1024
            ),
        }
    }
}

/// What to do about a status, appended to its message: for 401, which credential was refused;
/// the keys named are the tenant's (`origin`).
fn status_hint(status: u16, origin: Option<&Origin>) -> String {
    let fallback;
    let o = match origin {
        Some(o) => o,
        None => {
            fallback = Origin::default_oauth();
            &fallback
        }
    };
    let t = &o.table;
    match status {
        401 => format!(" (Qlik refused {}: expired or revoked?)", o.identity),
        403 => " (the identity lacks a permission for this call: give it `update` on the connection or its space, or use the M2M bot)".to_owned(),
        404 => " (not found: check the job's connection id, or its name and space)".to_owned(),
        429 => format!(" (rate limited after retries: lower {t}.write_budget_per_min or daemon.max_concurrent_rotations)"),
        500..=599 => format!(" (Qlik is unavailable; retried within {t}.max_attempts and daemon.max_attempts_per_run)"),
        _ => String::new(),
    }
}

/// The hint of a token request that failed: which OAuth client to check.
pub fn token_hint(origin: &Origin) -> String {
    format!(" (check {}: wrong, expired or revoked?)", origin.identity)
}

/// An error talking to Qlik.
#[derive(Debug, thiserror::Error)]
pub enum QlikError {
    /// Qlik answered with a non-success status.
    #[error("{method} {endpoint} returned HTTP {status}: {}{}", problem.describe(), status_hint(*status, problem.origin.as_deref()))]
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
    /// Qlik (or something in between) answered with a redirect. Redirects are never followed:
    /// the Qlik API does not use them, and following one would send the request (a PATCH body
    /// holds credentials) to wherever the `Location` points.
    #[error(
        "{method} {endpoint} answered HTTP {status} (a redirect{}); redirects are not followed, so nothing was sent there",
        location.as_ref().map(|l| format!(" to {l}")).unwrap_or_default()
    )]
    Redirect {
        /// HTTP method.
        method: &'static str,
        /// Endpoint template.
        endpoint: &'static str,
        /// The 3xx status.
        status: u16,
        /// The `Location`'s scheme, host and port only (never its path or query), escaped.
        location: Option<String>,
    },
    /// The response body is larger than `qlik.max_response_bytes`; reading stopped there.
    #[error(
        "{method} {endpoint} returned a response larger than {limit} bytes (qlik.max_response_bytes); it was not read further"
    )]
    TooLarge {
        /// HTTP method.
        method: &'static str,
        /// Endpoint template.
        endpoint: &'static str,
        /// The limit in bytes.
        limit: u64,
    },
    /// Getting an OAuth token failed.
    /// (The client appends [`token_hint`]: which OAuth client to check.)
    #[error("OAuth token request failed: {0}")]
    Token(String),
    /// A lookup by name matched nothing.
    #[error(
        "no data connection named {}{} (names are exact and case-sensitive; `space` takes the space's id; to find ids see the README, Finding connection ids)",
        text::quoted(name, 200),
        space.as_ref().map(|s| format!(" in space {}", text::quoted(s, 200))).unwrap_or_default()
    )]
    NameNotFound {
        /// The name looked up.
        name: String,
        /// The space it was looked up in.
        space: Option<String>,
    },
    /// A lookup by name without `space` was refused as ambiguous (several connections of
    /// that name in different spaces). [I] Qlik's status for this is not published; the
    /// simulator answers 400 on GET (the client treats 400 and 409 to a lookup without a
    /// space as this).
    #[error(
        "the data connection name {} is ambiguous: several connections have it (Qlik: HTTP {status}: {}){}; add the space's id to the job: connection = {{ name = …, space = \"<space id>\" }}",
        text::quoted(name, 200),
        problem.describe(),
        if candidates.is_empty() { String::new() } else { format!("; it is in the spaces {}", candidates.join(", ")) }
    )]
    NameAmbiguous {
        /// The name looked up.
        name: String,
        /// Qlik's status (400 or 409).
        status: u16,
        /// Qlik's error body (parsed, redacted, escaped).
        problem: Box<ApiProblem>,
        /// The spaces holding a connection of that name, each `"name" (id "…")`, escaped and
        /// capped (at most [`MAX_CANDIDATES`] and "and N more"); empty when unknown.
        candidates: Vec<String>,
    },
    /// A job's `space` is neither a space id nor the name of exactly one space (resolved
    /// through the spaces API when a lookup by name in it found nothing).
    #[error("{message}")]
    Space {
        /// What is wrong, names escaped.
        message: String,
        /// Several spaces have that name (else: none has that id or name).
        ambiguous: bool,
    },
}

/// The most candidate spaces an ambiguous name lists.
pub const MAX_CANDIDATES: usize = 10;

impl QlikError {
    /// For a lookup by `name` without a space: a 400 or 409 becomes
    /// [`QlikError::NameAmbiguous`]; anything else is returned as it is.
    pub fn for_name_lookup(self, name: &str, space: Option<&str>) -> Self {
        match self {
            QlikError::Status {
                status: status @ (400 | 409),
                problem,
                ..
            } if space.is_none() => QlikError::NameAmbiguous {
                name: name.to_owned(),
                status,
                problem,
                candidates: Vec::new(),
            },
            other => other,
        }
    }

    /// The HTTP status, if Qlik answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            QlikError::Status { status, .. } | QlikError::NameAmbiguous { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }

    /// Whether retrying the same request may succeed: 429, 5xx, timeouts and connection
    /// failures. 400, 401 (after a token refresh), 403, 404 and 409 are final. The one
    /// classifier is [`RetryPolicy::should_retry`](super::retry::RetryPolicy::should_retry).
    pub fn is_retriable(&self) -> bool {
        super::retry::RetryPolicy::should_retry(self)
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
            QlikError::Redirect { .. } => "redirect",
            QlikError::TooLarge { .. } => "response_too_large",
            QlikError::NameNotFound { .. } => "not_found",
            QlikError::NameAmbiguous { .. } => "ambiguous_name",
            QlikError::Space {
                ambiguous: true, ..
            } => "ambiguous_space",
            QlikError::Space { .. } => "unknown_space",
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
        let html = ApiProblem::parse(b"<html>oops</html>");
        assert_eq!(html.shape, BodyShape::NotJson { bytes: 17 });
        assert_eq!(
            html.describe(),
            "the error body is not JSON (17 bytes, not shown)"
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

    #[test]
    fn every_field_is_redacted_escaped_and_capped_and_odd_types_are_tolerated() {
        let mut r = Redactor::new();
        r.add("CANARY-pw-1");
        let body = serde_json::json!({
            "errors": [{
                "code": "E-CANARY-pw-1",
                "title": "bad\u{1b}[2J\nok: rotated and verified",
                "detail": format!("value {} {}", "CANARY-pw-1", "x".repeat(2000)),
                "status": "400"
            }],
            "traceId": 42
        });
        let p = ApiProblem::parse_redacted(body.to_string().as_bytes(), false, &r);
        assert_eq!(p.code.as_deref(), Some("E-[REDACTED]"));
        assert_eq!(
            p.title.as_deref(),
            Some("bad\\u{1b}[2J\\nok: rotated and verified")
        );
        let detail = p.detail.as_deref().unwrap();
        assert!(detail.starts_with("value [REDACTED] xxx"), "{detail}");
        assert!(detail.chars().count() < 600, "{}", detail.len());
        assert_eq!(p.trace_id.as_deref(), Some("42"));
        let shown = p.describe();
        assert!(!shown.contains("CANARY") && !shown.contains('\n') && !shown.contains('\u{1b}'));
        // A code of the wrong type does not hide the rest.
        let p = ApiProblem::parse(br#"{"errors":[{"code":{"x":1},"title":"T"}]}"#);
        assert_eq!((p.code, p.title.as_deref()), (None, Some("T")));
    }

    #[test]
    fn each_status_says_what_to_do() {
        let st = |status| {
            QlikError::Status {
                method: "GET",
                endpoint: "/api/v1/data-connections/{id}",
                status,
                problem: Box::default(),
                retry_after: None,
            }
            .to_string()
        };
        // Before: `… returned HTTP 401: no error details in the response`.
        assert!(st(401).ends_with(": expired or revoked?)"), "{}", st(401));
        assert!(st(403).contains("give it `update` on the connection or its space"));
        assert!(st(404).contains("check the job's connection id, or its name and space"));
        assert!(st(429).contains("lower qlik.write_budget_per_min"));
        assert!(st(503).contains("Qlik is unavailable; retried"));
        assert!(!st(400).contains('('), "{}", st(400));
        // A lookup by name: 400/409 without a space is ambiguous, with a space it is not.
        let lookup = |status, space: Option<&str>| {
            QlikError::Status {
                method: "GET",
                endpoint: "/x",
                status,
                problem: Box::default(),
                retry_after: None,
            }
            .for_name_lookup("Finance \u{1b}SQL", space)
        };
        for status in [400, 409] {
            let e = lookup(status, None);
            assert_eq!(e.error_type(), "ambiguous_name");
            assert!(!e.is_retriable());
            assert!(
                e.to_string()
                    .contains("\"Finance \\u{1b}SQL\" is ambiguous"),
                "{e}"
            );
        }
        assert_eq!(lookup(400, Some("s")).error_type(), "bad_request");
        assert_eq!(lookup(403, None).error_type(), "forbidden");
        let nf = QlikError::NameNotFound {
            name: "x".into(),
            space: Some("s\n".into()),
        };
        assert!(nf.to_string().contains("in space \"s\\n\""), "{nf}");
        assert!(nf.to_string().contains("Finding connection ids"), "{nf}");
    }

    #[test]
    fn empty_and_oversized_bodies_say_what_they_were() {
        assert_eq!(
            ApiProblem::parse(b"  ").describe(),
            "no error details in the response"
        );
        assert_eq!(
            ApiProblem::parse_redacted(b"{", true, &Redactor::new()).describe(),
            "the error body is larger than 64 KiB (not read, not shown)"
        );
    }
}
