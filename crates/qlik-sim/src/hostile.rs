//! Hostile responses ([`Hostile`]): redirects, endless and slow bodies, huge and non-JSON
//! error bodies, and echoes of the secrets a request carried. None of this is Qlik behaviour
//! (assumed: a compromised tenant, a broken proxy, a man in the middle).

use std::{convert::Infallible, time::Duration};

use base64::Engine as _;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{
    Response, StatusCode,
    body::{Bytes, Frame},
    header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue, LOCATION},
};
use serde_json::{Value, json};

use super::{EchoEncoding, EchoField, Hostile, handlers::Resp, util::parse_urlencoded};

fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

fn with_status(
    body: http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible>,
    code: u16,
) -> Resp {
    let mut r = Response::new(body);
    *r.status_mut() = status(code);
    r
}

/// A body that yields `first`, then `next()` forever, waiting `pause` before each chunk.
fn stream_body(
    first: Bytes,
    chunk: Bytes,
    pause: Duration,
    limit: Option<usize>,
) -> http_body_util::combinators::UnsyncBoxBody<Bytes, Infallible> {
    let state = (Some(first), 0usize);
    let stream = futures_util::stream::unfold(state, move |(first, sent)| {
        let chunk = chunk.clone();
        async move {
            if let Some(f) = first {
                let n = f.len();
                return Some((Ok::<_, Infallible>(Frame::data(f)), (None, sent + n)));
            }
            let mut next = chunk;
            if let Some(limit) = limit {
                if sent >= limit {
                    return None;
                }
                next.truncate(limit - sent);
            }
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let n = next.len();
            Some((Ok(Frame::data(next)), (None, sent + n)))
        }
    });
    StreamBody::new(stream).boxed_unsync()
}

/// Every secret the request carried, in the order: body values, then the bearer token.
fn carried_secrets(path: &str, authorization: Option<&str>, body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| {
        if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
            out.push(s.to_owned());
        }
    };
    if path == "/oauth/token" {
        match serde_json::from_slice::<Value>(body) {
            Ok(v) => push(&v["client_secret"]),
            Err(_) => {
                let form = parse_urlencoded(&String::from_utf8_lossy(body));
                if let Some(s) = form.get("client_secret") {
                    push(&Value::String(s.clone()));
                }
            }
        }
    } else {
        match serde_json::from_slice::<Value>(body) {
            // A PATCH: every op's string value, and the contents of file entries.
            Ok(Value::Array(ops)) => {
                for op in &ops {
                    match &op["value"] {
                        Value::Array(files) => files.iter().for_each(|f| push(&f["value"])),
                        v => push(v),
                    }
                }
            }
            // A data-credentials PUT.
            Ok(v @ Value::Object(_)) => {
                push(&v["qUsername"]);
                push(&v["qPassword"]);
            }
            _ => {}
        }
    }
    if let Some((_, token)) = authorization.and_then(|a| a.split_once(' ')) {
        push(&Value::String(token.trim().to_owned()));
    }
    out
}

fn encode(secret: &str, encoding: EchoEncoding) -> String {
    match encoding {
        EchoEncoding::Raw | EchoEncoding::Base64Blob => secret.to_owned(),
        EchoEncoding::Json => {
            let s = serde_json::to_string(secret).unwrap_or_default();
            s[1..s.len().saturating_sub(1).max(1)].to_owned()
        }
        EchoEncoding::Url => form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        EchoEncoding::Base64 => base64::engine::general_purpose::STANDARD.encode(secret),
    }
}

/// Builds the hostile response for one request.
pub(crate) fn respond(
    hostile: &Hostile,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> Resp {
    match hostile {
        Hostile::Redirect { status, location } => redirect(*status, location),
        Hostile::EndlessBody { status } => endless_body(*status),
        Hostile::SlowBody { status, interval } => slow_body(*status, *interval),
        Hostile::HugeBody { status, bytes } => huge_body(*status, *bytes),
        Hostile::Body {
            status,
            content_type,
            body,
        } => fixed_body(*status, content_type, body),
        Hostile::EchoSecrets {
            status,
            field,
            encoding,
        } => {
            let text = echo_text(*encoding, path, authorization, body);
            echo_secrets(*status, *field, text)
        }
        Hostile::RetryAfter { value } => retry_after(value),
    }
}

/// [`Hostile::RetryAfter`]: 429 with the documented body and this `Retry-After` (when it is a
/// valid header value).
fn retry_after(value: &str) -> Resp {
    let mut r = json_typed(with_status(
        Full::new(Bytes::from_static(
            br#"{"errors":[{"code":"HTTP-429","title":"API rate limit reached."}]}"#,
        ))
        .boxed_unsync(),
        429,
    ));
    if let Ok(v) = HeaderValue::from_str(value) {
        r.headers_mut().insert(hyper::header::RETRY_AFTER, v);
    }
    r
}

/// Marks a response as `application/json`.
fn json_typed(mut r: Resp) -> Resp {
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// [`Hostile::Redirect`]: the status, this `Location` (when it is a valid header value), no body.
fn redirect(code: u16, location: &str) -> Resp {
    let mut r = with_status(Full::new(Bytes::new()).boxed_unsync(), code);
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(LOCATION, v);
    }
    r
}

/// [`Hostile::EndlessBody`]: a JSON-looking start, then 64 KiB chunks of spaces forever.
fn endless_body(code: u16) -> Resp {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    json_typed(with_status(
        stream_body(
            Bytes::from_static(b"{\"qID\":\""),
            chunk,
            Duration::ZERO,
            None,
        ),
        code,
    ))
}

/// [`Hostile::SlowBody`]: a JSON-looking start, then one space per `interval` forever.
fn slow_body(code: u16, interval: Duration) -> Resp {
    json_typed(with_status(
        stream_body(
            Bytes::from_static(b"{\"errors\":[ "),
            Bytes::from_static(b" "),
            interval,
            None,
        ),
        code,
    ))
}

/// [`Hostile::HugeBody`]: exactly `bytes` bytes, announced in `Content-Length`.
fn huge_body(code: u16, bytes: usize) -> Resp {
    let first = Bytes::from_static(b"{\"errors\":[{\"detail\":\"");
    let first = first.slice(..first.len().min(bytes));
    let rest = bytes - first.len();
    let chunk = Bytes::from(vec![b'A'; 64 * 1024]);
    let mut r = json_typed(with_status(
        stream_body(
            first.clone(),
            chunk,
            Duration::ZERO,
            Some(first.len() + rest),
        ),
        code,
    ));
    r.headers_mut()
        .insert(CONTENT_LENGTH, HeaderValue::from(bytes as u64));
    r
}

/// [`Hostile::Body`]: exactly this body, with this `Content-Type` when it is a valid header value.
fn fixed_body(code: u16, content_type: &str, body: &str) -> Resp {
    let mut r = with_status(Full::new(Bytes::from(body.to_owned())).boxed_unsync(), code);
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(CONTENT_TYPE, v);
    }
    r
}

/// The echo text of [`Hostile::EchoSecrets`]: the whole request (authorization and body) as
/// one base64 blob, or every carried secret, encoded, joined by ` | `.
fn echo_text(
    encoding: EchoEncoding,
    path: &str,
    authorization: Option<&str>,
    body: &[u8],
) -> String {
    let echo = if encoding == EchoEncoding::Base64Blob {
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}\n{}",
            authorization.unwrap_or(""),
            String::from_utf8_lossy(body)
        ))
    } else {
        carried_secrets(path, authorization, body)
            .iter()
            .map(|s| encode(s, encoding))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    format!("rejected value(s): {echo}")
}

/// [`Hostile::EchoSecrets`]: a documented-shape error body with `text` in `field`.
fn echo_secrets(code: u16, field: EchoField, text: String) -> Resp {
    let mut item =
        json!({"code": "HOSTILE-1", "title": "Bad request", "detail": "Rejected", "status": code});
    let mut trace = Value::Null;
    match field {
        EchoField::Code => item["code"] = Value::String(text),
        EchoField::Title => item["title"] = Value::String(text),
        EchoField::Detail => item["detail"] = Value::String(text),
        EchoField::TraceId => trace = Value::String(text),
    }
    let mut body = json!({"errors": [item]});
    if !trace.is_null() {
        body["traceId"] = trace;
    }
    json_typed(with_status(
        Full::new(Bytes::from(body.to_string())).boxed_unsync(),
        code,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_secrets_of_a_patch_a_put_a_token_request_and_a_bearer() {
        let patch = br#"[{"op":"replace","path":"/connectionProperties/password","value":"pw-1"},
            {"op":"add","path":"/connectionProperties/KeyFilePath","value":[{"name":"k","value":"ZmlsZQ=="}]}]"#;
        assert_eq!(
            carried_secrets("/api/v1/data-connections/x", Some("Bearer key-1"), patch),
            ["pw-1", "ZmlsZQ==", "key-1"]
        );
        assert_eq!(
            carried_secrets(
                "/api/v1/data-credentials/x",
                None,
                br#"{"qUsername":"u-1","qPassword":"p-1"}"#
            ),
            ["u-1", "p-1"]
        );
        assert_eq!(
            carried_secrets("/oauth/token", None, b"client_id=c&client_secret=s%2F1"),
            ["s/1"]
        );
        assert_eq!(encode("a\"b/c", EchoEncoding::Json), "a\\\"b/c");
        assert_eq!(encode("a b/c", EchoEncoding::Url), "a+b%2Fc");
    }
}
