//! HTTP front end: recording, faults, latency, authentication, rate limiting and routing.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Request, Response, StatusCode};
use serde_json::{Value, json};
use tokio::sync::Notify;

use super::limiter::Tier;
use super::state::{ApiError, Inner, Shared, Token};
use super::util::{fmt_ts, parse_urlencoded, percent_decode};
use super::{Fault, RecordedRequest};

/// The response type of the simulator: boxed, so hostile faults can stream endless or slow
/// bodies.
pub(crate) type Resp = Response<UnsyncBoxBody<Bytes, Infallible>>;

fn json_response(status: u16, body: &Value) -> Resp {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn no_content() -> Resp {
    let mut r = Response::new(Full::new(Bytes::new()).boxed_unsync());
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

fn error_response(e: &ApiError) -> Resp {
    json_response(e.status, &e.body())
}

fn reason(status: u16) -> &'static str {
    StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error")
}

fn unauthorized() -> Resp {
    json_response(
        401,
        &json!({"errors": [{"code": "HTTP-401", "title": "Unauthorized", "status": 401}]}),
    )
}

fn rate_limited(retry_after_secs: u64) -> Resp {
    let mut r = json_response(
        429,
        &json!({"errors": [{
            "code": "HTTP-429",
            "title": "API rate limit reached.",
            "detail": format!("You need to wait {retry_after_secs} seconds until limit is lifted."),
        }]}),
    );
    r.headers_mut()
        .insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

fn oauth_error(status: u16, code: &str, title: &str) -> Resp {
    // OAuth errors carry `status` as a string (fact sheet §4).
    json_response(
        status,
        &json!({"errors": [{"code": code, "title": title, "status": status.to_string()}]}),
    )
}

/// Handles one HTTP request. `kill` closes the underlying TCP connection (used by
/// [`Fault::Drop`]).
pub(crate) async fn handle(
    shared: Arc<Shared>,
    kill: Arc<Notify>,
    req: Request<Incoming>,
) -> Result<Resp, Infallible> {
    let req = read_request(req).await;
    let rec = req.recorded();
    let (seq, fault) = {
        let mut g = shared.lock();
        let seq = g.record(rec);
        (seq, g.take_fault(&req.method, &req.path))
    };
    let plan = apply_fault(fault, &kill, &req).await;
    let resp = match (plan.injected, plan.answer_as) {
        (Some(r), _) => r,
        (None, Some(other)) => answer_as(&shared, &req, &other),
        (None, None) => {
            let mut g = shared.lock();
            route(
                &mut g,
                &req.method,
                &req.path,
                req.query.as_deref(),
                req.authorization.as_deref(),
                req.content_type.as_deref(),
                &req.body,
            )
        }
    };
    let resp = match plan.rewrite {
        Some(fields) if matches!(resp.status(), StatusCode::OK | StatusCode::CREATED) => {
            let status = resp.status().as_u16();
            rewrite_fields(resp, &fields, status).await
        }
        _ => resp,
    };
    Ok(finish(&shared, seq, &req, resp).await)
}

/// The parts of a request every step needs, read once.
struct Req {
    method: String,
    path: String,
    query: Option<String>,
    authorization: Option<String>,
    content_type: Option<String>,
    qlik_auth_code: Option<String>,
    body: Bytes,
}

impl Req {
    /// The log entry for this request; its status is set once it is answered.
    fn recorded(&self) -> RecordedRequest {
        RecordedRequest {
            method: self.method.clone(),
            path: self.path.clone(),
            query: self.query.clone(),
            authorization: self.authorization.clone(),
            content_type: self.content_type.clone(),
            qlik_auth_code: self.qlik_auth_code.clone(),
            body: String::from_utf8_lossy(&self.body).into_owned(),
            status: 0,
            at: std::time::Instant::now(),
        }
    }
}

/// Reads the whole body (an unreadable body counts as empty) and the headers the handler uses.
async fn read_request(req: Request<Incoming>) -> Req {
    let (parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Req {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        authorization: header("authorization"),
        content_type: header("content-type"),
        qlik_auth_code: header("qlik-auth-code"),
        body,
    }
}

/// What a matched fault does to the normal handling of a request.
#[derive(Default)]
struct FaultPlan {
    /// A response that replaces routing altogether.
    injected: Option<Resp>,
    /// [`Fault::WrongBody`]: answer with this other object's body.
    answer_as: Option<String>,
    /// [`Fault::RewriteFields`]: fields to set or remove in a 200 body.
    rewrite: Option<Vec<(String, Option<Value>)>>,
}

/// Applies a matched fault: builds the injected response, or waits ([`Fault::Delay`]), or never
/// returns ([`Fault::Drop`]), or says how to alter the routed answer.
async fn apply_fault(fault: Option<Fault>, kill: &Notify, req: &Req) -> FaultPlan {
    let injected = match fault {
        Some(Fault::WrongBody { answer_id, .. }) => {
            return FaultPlan {
                answer_as: Some(answer_id),
                ..FaultPlan::default()
            };
        }
        Some(Fault::RewriteFields { fields, .. }) => {
            return FaultPlan {
                rewrite: Some(fields),
                ..FaultPlan::default()
            };
        }
        Some(Fault::IgnoredWrite { .. }) => no_content(),
        Some(Fault::Drop { .. }) => {
            // The connection task drops the connection future: the socket closes with no
            // response. This handler never completes; the recorded status stays 0.
            kill.notify_one();
            return std::future::pending().await;
        }
        Some(Fault::Status { status, .. }) => json_response(
            status,
            &json!({"errors": [{
                "code": format!("HTTP-{status}"),
                "title": reason(status),
                "detail": "Injected fault",
                "status": status,
            }]}),
        ),
        Some(Fault::RateLimited {
            retry_after_secs, ..
        }) => rate_limited(retry_after_secs),
        Some(Fault::Delay { delay, .. }) => {
            tokio::time::sleep(delay).await;
            return FaultPlan::default();
        }
        Some(Fault::Hostile { response, .. }) => super::hostile::respond(
            &response,
            &req.path,
            req.authorization.as_deref(),
            &req.body,
        ),
        None => return FaultPlan::default(),
    };
    FaultPlan {
        injected: Some(injected),
        ..FaultPlan::default()
    }
}

/// [`Fault::WrongBody`]: the body of object `other` (a credential when the path is one), read
/// with the request's query minus the filters that would not apply to it.
fn answer_as(shared: &Shared, req: &Req, other: &str) -> Resp {
    let g = shared.lock();
    let q: HashMap<String, String> = req
        .query
        .as_deref()
        .map(parse_urlencoded)
        .unwrap_or_default()
        .into_iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "type" | "spaceId" | "space" | "byCredentialName"
            )
        })
        .collect();
    let answer = if req.path.starts_with("/api/v1/data-credentials/") {
        g.get_credential(other, &q)
    } else {
        g.get_connection(other, &q)
    };
    match answer {
        Ok(v) => json_response(200, &v),
        Err(e) => error_response(&e),
    }
}

/// Waits the configured latency, records the status and logs the answer.
async fn finish(shared: &Shared, seq: u64, req: &Req, resp: Resp) -> Resp {
    let latency: Duration = shared.lock().cfg.latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    shared.lock().set_status(seq, resp.status().as_u16());
    // Method, path (Debug-escaped) and status only: queries and bodies may carry secrets.
    tracing::debug!(
        method = %req.method,
        path = ?req.path,
        status = resp.status().as_u16(),
        "Simulator answered"
    );
    resp
}

/// [`Fault::RewriteFields`]: sets or removes top-level fields of a 200 (or 201) JSON object body.
async fn rewrite_fields(resp: Resp, fields: &[(String, Option<Value>)], status: u16) -> Resp {
    let bytes = match resp.into_body().collect().await {
        Ok(c) => c.to_bytes(),
        Err(never) => match never {},
    };
    let mut v: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        for (field, value) in fields {
            match value {
                Some(value) => {
                    o.insert(field.clone(), value.clone());
                }
                None => {
                    o.remove(field);
                }
            }
        }
    }
    json_response(status, &v)
}

fn bearer(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

fn route(
    g: &mut Inner,
    method: &str,
    path: &str,
    query: Option<&str>,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: &[u8],
) -> Resp {
    let now = Instant::now();
    if path == "/oauth/token" {
        if method != "POST" {
            return error_response(&ApiError::new(405, "HTTP-405", "Method Not Allowed", None));
        }
        return oauth_token(g, content_type, body, now);
    }
    let Some(rest) = path.strip_prefix("/api/") else {
        return error_response(&ApiError::not_found(format!("No route for {path}")));
    };
    let Some(identity) = bearer(authorization).and_then(|t| g.identity_for(t, now)) else {
        return unauthorized();
    };
    let (tier, limit) = if method == "GET" || method == "HEAD" {
        (Tier::Reads, g.cfg.read_limit_per_min)
    } else {
        (Tier::Writes, g.cfg.write_limit_per_min)
    };
    if let Err(secs) = g.limiter.check(&identity, tier, limit, now) {
        return rate_limited(secs);
    }
    let q: HashMap<String, String> = query.map(parse_urlencoded).unwrap_or_default();
    let Some(rest) = rest.strip_prefix("v1/") else {
        return error_response(&ApiError::not_found(format!("No route for {path}")));
    };
    let segs: Vec<String> = rest.split('/').map(|s| percent_decode(s, false)).collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let result: Result<Option<Value>, ApiError> = match (method, segs.as_slice()) {
        ("GET", ["data-connections"]) => g.list_connections(&q, query).map(Some),
        ("POST", ["data-connections"]) => {
            return match g.create_connection(body) {
                Ok(v) => json_response(201, &v),
                Err(e) => error_response(&e),
            };
        }
        ("DELETE", ["data-connections", id]) => g.delete_connection(id, &q).map(|_| None),
        ("GET", ["data-sources"]) => Ok(Some(g.list_data_sources(&q))),
        ("GET", ["spaces"]) => crate::spaces::list(&g.base_url, &g.spaces, &q).map(Some),
        ("GET", ["spaces", id]) => crate::spaces::get(&g.base_url, &g.spaces, id).map(Some),
        ("GET", ["data-connections", id]) => g.get_connection(id, &q).map(Some),
        ("PATCH", ["data-connections", id]) => g.patch_connection(id, &q, body).map(|_| None),
        ("GET", ["data-credentials", id]) => g.get_credential(id, &q).map(Some),
        ("PUT", ["data-credentials", id]) => g.put_credential(id, &q, body).map(|_| None),
        ("PATCH", ["data-credentials", id]) => g.patch_credential(id, &q, body).map(|_| None),
        ("POST", ["reloads"]) => {
            return match g.queue_reload(body) {
                Ok(v) => json_response(201, &v),
                Err(e) => error_response(&e),
            };
        }
        ("GET", ["reloads", id]) => g.get_reload(id).map(Some),
        ("GET", ["data-sources", id, "api-specs"]) => match g.specs.get(*id) {
            Some(spec) => Ok(Some(spec.clone())),
            None => Err(ApiError::new(
                404,
                "DCAAS-404",
                "Not found",
                Some(format!("Data source '{id}' not found or disabled")),
            )),
        },
        (_, ["data-connections"] | ["data-connections", _] | ["data-credentials", _]) => {
            Err(ApiError::new(405, "HTTP-405", "Method Not Allowed", None))
        }
        _ => Err(ApiError::not_found(format!("No route for {path}"))),
    };
    match result {
        Ok(Some(v)) => json_response(200, &v),
        Ok(None) => no_content(),
        Err(e) => error_response(&e),
    }
}

/// `POST /oauth/token` (client credentials). Tier 2, keyed by `client_id`.
fn oauth_token(g: &mut Inner, content_type: Option<&str>, body: &[u8], now: Instant) -> Resp {
    g.token_requests += 1;
    let is_json = content_type.is_some_and(|c| c.starts_with("application/json"))
        || (content_type.is_none() && body.first() == Some(&b'{'));
    let params: HashMap<String, String> = if is_json {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => o
                .into_iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_owned())))
                .collect(),
            _ => return oauth_error(400, "OAUTH-0", "invalid_request"),
        }
    } else {
        parse_urlencoded(&String::from_utf8_lossy(body))
    };
    let client_id = params.get("client_id").cloned().unwrap_or_default();
    let identity = format!("client:{client_id}");
    if let Err(secs) = g
        .limiter
        .check(&identity, Tier::Writes, g.cfg.write_limit_per_min, now)
    {
        return rate_limited(secs);
    }
    match params.get("grant_type").map(String::as_str) {
        Some("client_credentials") => {}
        Some(_) => return oauth_error(400, "OAUTH-2", "unsupported_grant_type"),
        None => return oauth_error(400, "OAUTH-0", "invalid_request"),
    }
    let secret = params.get("client_secret").map(String::as_str);
    let valid = g
        .cfg
        .oauth_clients
        .iter()
        .any(|(id, s)| *id == client_id && Some(s.as_str()) == secret);
    if !valid {
        return oauth_error(401, "OAUTH-1", "invalid_client");
    }
    let token = format!(
        "sim-at-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let ttl = g.cfg.token_ttl;
    g.tokens.insert(
        token.clone(),
        Token {
            client_id,
            expires: now + ttl,
        },
    );
    let expires_at =
        chrono::Utc::now() + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::hours(6));
    let scope = params
        .get("scope")
        .cloned()
        .unwrap_or_else(|| "user_default".to_owned());
    json_response(
        200,
        &json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": ttl.as_secs(),
            "expires_at": fmt_ts(expires_at),
            "scope": scope,
        }),
    )
}
