//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /jobs/{name}/rotate`,
//! `POST /secrets/{id}/rotate` and `POST /secrets/{id}/test?version=…` (the AWS rotation
//! protocol's testSecret step: waits for the proof, 200 when every job is proven, else 409).
//!
//! The rotate endpoints are disabled (404) unless `metrics.admin_token_file` is set; then they
//! need `Authorization: Bearer <token>` (401 without it). Unknown job → 404; accepted → 202.
//! By secret: `{id}` is a secret name or ARN, percent-encoded (`app%2Fdb`); every job whose
//! secret it is runs (202 listing them), 404 with a clear body when no job uses it.
//!
//! Read-only: `GET /jobs` and `GET /jobs/{name}` (each job's state, as `qlik-rotator status`
//! shows it) and `GET /runs/{id}` (a triggered run: queued, running, finished, and then the
//! outcome per job and connection). They need the bearer token of `metrics.read_token_file`
//! or of `metrics.admin_token_file`; disabled (404 saying how to enable them) when neither is
//! set. The rotate triggers answer 202 with a run id and `Location: /runs/{id}` ([`runs`]).
//!
//! The listener knows the daemon only through a narrow [`Handle`]: the metrics to render, a
//! readiness flag, the trigger senders, a status sender and the table of runs. It imports
//! nothing from the daemon.

pub mod runs;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Why a trigger did or did not start a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Triggered {
    /// A run was started.
    Started,
    /// No such job.
    UnknownJob,
    /// The daemon is shutting down.
    ShuttingDown,
}

/// A request to run a job now, answered on `reply`.
#[derive(Debug)]
pub struct TriggerRequest {
    /// The job's name (as sent by the client: unchecked).
    pub job: String,
    /// Rotate even when the applied version is current.
    pub force: bool,
    /// The run to report to (`GET /runs/{id}`).
    pub run: Option<runs::RunTicket>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Triggered>,
}

/// A request for the status of every job (`job: None`) or of one, answered on `reply` with
/// one JSON object per job ([`crate::status::JobStatus`]); `None` when there is no such job.
#[derive(Debug)]
pub struct StatusRequest {
    /// The job (as sent by the client: unchecked).
    pub job: Option<String>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Option<Vec<serde_json::Value>>>,
}

/// A request to run every job that uses a secret, answered on `reply` with the jobs started
/// (`Ok`, never empty), `Err(true)` when no job uses it, `Err(false)` when shutting down.
#[derive(Debug)]
pub struct SecretTriggerRequest {
    /// The secret id (as sent by the client: unchecked).
    pub secret: String,
    /// Rotate even when the applied version is current.
    pub force: bool,
    /// The run to report to (`GET /runs/{id}`).
    pub run: Option<runs::RunTicket>,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Vec<String>, bool>>,
}

/// What a pending-version test established for one connection.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PendingResult {
    /// The job.
    pub job: String,
    /// The connection id (or its configured key).
    pub connection: String,
    /// The run's outcome label (`rotated`, `canary_failed`, `rolled_back`, `failed`, …, or
    /// `skipped` when the run did not happen).
    pub outcome: String,
    /// The secret version the run applied (an id, not a value).
    pub secret_version: Option<String>,
    /// The pending version was applied, verified and proven by the canary.
    pub proven: bool,
}

/// A request to test version `version` of `secret` on every job in the AWS rotation protocol
/// (`version_stage = "AWSPENDING"`) that reads it, answered when all runs ended: `Ok` with
/// one result per connection, `Err(true)` when no such job reads it, `Err(false)` when
/// shutting down.
#[derive(Debug)]
pub struct SecretTestRequest {
    /// The secret id (as sent by the client: unchecked).
    pub secret: String,
    /// The version id (checked: 1 to 64 of `A-Za-z0-9-_`).
    pub version: String,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Vec<PendingResult>, bool>>,
}

/// Whether the daemon is ready; set by the daemon, read by `/readyz`.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    /// Reads the flag.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// All the admin listener may see of the daemon.
#[derive(Debug, Clone)]
pub struct Handle {
    /// Rendered by `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Read by `/readyz`.
    pub ready: Readiness,
    /// Whether the state backend answers its health check (read by `/readyz`).
    pub backend_ok: Readiness,
    /// `POST /jobs/{name}/rotate` sends here.
    pub trigger: mpsc::Sender<TriggerRequest>,
    /// `POST /secrets/{id}/rotate` sends here.
    pub secret_trigger: mpsc::Sender<SecretTriggerRequest>,
    /// `POST /secrets/{id}/test` sends here.
    pub secret_test: mpsc::Sender<SecretTestRequest>,
    /// `GET /jobs` and `GET /jobs/{name}` send here.
    pub status: mpsc::Sender<StatusRequest>,
    /// The runs the triggers started (`GET /runs/{id}`).
    pub runs: Arc<runs::Runs>,
    /// `metrics.read_token_file`: a bearer token for the read-only endpoints only.
    pub read_token: Option<SecretString>,
}

#[derive(Clone)]
struct AdminState {
    handle: Handle,
    token: Option<Arc<SecretString>>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    handle: Handle,
    token: Option<SecretString>,
    stop: CancellationToken,
) {
    let app = Router::new()
        // Gzip when the scraper asks for it (Prometheus always does): the exposition of 10,000
        // jobs is ~7 MB as text and ~0.25 MB compressed (README, Benchmark).
        .route(
            "/metrics",
            get(metrics).layer(tower_http::compression::CompressionLayer::new().gzip(true)),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/jobs", get(jobs))
        .route("/jobs/{name}", get(job))
        .route("/runs/{id}", get(run))
        .route("/jobs/{name}/rotate", post(rotate))
        .route("/secrets/{id}/rotate", post(rotate_secret))
        .route("/secrets/{id}/test", post(test_secret))
        .with_state(AdminState {
            handle,
            token: token.map(Arc::new),
        });
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "The admin listener failed.");
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        // Streamed in chunks: with 10,000 jobs the exposition is ~7 MB, never held at once.
        axum::body::Body::from_stream(futures_util::stream::iter(
            s.handle
                .metrics
                .render_chunks()
                .map(Ok::<_, std::convert::Infallible>),
        )),
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.handle.ready.get() && !s.handle.backend_ok.get() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (the state backend does not answer; no rotation runs)\n",
        )
            .into_response()
    } else if s.handle.ready.get() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready (starting or shutting down)\n",
        )
            .into_response()
    }
}

#[derive(Deserialize)]
struct RotateQuery {
    #[serde(default)]
    force: bool,
}

fn error(status: StatusCode, detail: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"status": status.as_u16(), "title": status.canonical_reason(), "detail": detail}]})),
    )
        .into_response()
}

async fn rotate(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    Query(q): Query<RotateQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize(&s, &headers) {
        return refused;
    }
    let ticket = s.handle.runs.create("job", &name, q.force);
    match trigger(&s.handle, name.clone(), q.force, Some(ticket.clone())).await {
        Triggered::Started => accepted(
            ticket.id(),
            json!({"job": crate::text::printable(&name, 256), "status": "started", "force": q.force, "run": ticket.id()}),
        ),
        Triggered::UnknownJob => {
            ticket.discard();
            error(StatusCode::NOT_FOUND, "no such job")
        }
        Triggered::ShuttingDown => {
            ticket.discard();
            error(StatusCode::SERVICE_UNAVAILABLE, "shutting down")
        }
    }
}

/// `POST /secrets/{id}/rotate`: same auth as the job trigger.
async fn rotate_secret(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<RotateQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize(&s, &headers) {
        return refused;
    }
    if !crate::triggers::valid_secret_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "not a secret id (1 to 2048 characters, no control characters)",
        );
    }
    let ticket = s.handle.runs.create("secret", &id, q.force);
    let (reply, answer) = oneshot::channel();
    let request = SecretTriggerRequest {
        secret: id.clone(),
        force: q.force,
        run: Some(ticket.clone()),
        reply,
    };
    let answer = match s.handle.secret_trigger.try_send(request) {
        Ok(()) => answer.await.unwrap_or(Err(false)),
        Err(_) => Err(false),
    };
    if answer.is_err() {
        ticket.discard();
    }
    match answer {
        Ok(jobs) => accepted(
            ticket.id(),
            json!({"secret": crate::text::printable(&id, 256), "status": "started", "force": q.force, "jobs": jobs, "run": ticket.id()}),
        ),
        Err(true) => error(
            StatusCode::NOT_FOUND,
            &format!("no job uses the secret {}", crate::text::quoted(&id, 256)),
        ),
        Err(false) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

#[derive(Deserialize)]
struct TestQuery {
    version: Option<String>,
}

/// A Secrets Manager version id as the API documents it (32–64 characters; we accept 1–64 of
/// `A-Za-z0-9-_`).
fn valid_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `POST /secrets/{id}/test?version={versionId}`: same auth as the triggers. Applies that
/// version to every `version_stage = "AWSPENDING"` job reading the secret, verifies it, runs
/// the canary, and answers when all are done: 200 when every connection is proven, else 409
/// with the outcome per connection (a rotation Lambda's testSecret then fails, and the
/// version is not promoted).
async fn test_secret(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    Query(q): Query<TestQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize(&s, &headers) {
        return refused;
    }
    if !crate::triggers::valid_secret_id(&id) {
        return error(
            StatusCode::BAD_REQUEST,
            "not a secret id (1 to 2048 characters, no control characters)",
        );
    }
    let Some(version) = q.version.filter(|v| valid_version(v)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "version is required: the version id to test (1 to 64 of A-Za-z0-9-_)",
        );
    };
    let (reply, answer) = oneshot::channel();
    let request = SecretTestRequest {
        secret: id.clone(),
        version: version.clone(),
        reply,
    };
    let answer = match s.handle.secret_test.try_send(request) {
        Ok(()) => answer.await.unwrap_or(Err(false)),
        Err(_) => Err(false),
    };
    match answer {
        Ok(jobs) => {
            let proven = !jobs.is_empty() && jobs.iter().all(|j| j.proven);
            (
                if proven {
                    StatusCode::OK
                } else {
                    StatusCode::CONFLICT
                },
                Json(json!({
                    "secret": crate::text::printable(&id, 256),
                    "version": version,
                    "status": if proven { "proven" } else { "not_proven" },
                    "jobs": jobs,
                })),
            )
                .into_response()
        }
        Err(true) => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no job with version_stage = \"AWSPENDING\" uses the secret {}",
                crate::text::quoted(&id, 256)
            ),
        ),
        Err(false) => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}

/// `None` when the request may trigger rotations; else the refusal (404 when the admin API is
/// disabled, 401 without the right bearer token).
fn authorize(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &s.token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the admin API is disabled; set metrics.admin_token_file to enable it",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests so the comparison takes the same time whatever the input.
    let ok = presented.is_some_and(|p| {
        Sha256::digest(p.as_bytes()) == Sha256::digest(token.expose_secret().as_bytes())
    });
    if !ok {
        return Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(json!({"errors": [{"status": 401, "title": "Unauthorized", "detail": "a valid bearer token is required"}]})),
            )
                .into_response(),
        );
    }
    None
}

/// Hands the request to the daemon and waits for its answer. A daemon that no longer takes
/// requests (its receiver gone or full) is shutting down or overloaded: 503.
async fn trigger(
    handle: &Handle,
    job: String,
    force: bool,
    run: Option<runs::RunTicket>,
) -> Triggered {
    let (reply, answer) = oneshot::channel();
    let request = TriggerRequest {
        job,
        force,
        run,
        reply,
    };
    if handle.trigger.try_send(request).is_err() {
        return Triggered::ShuttingDown;
    }
    answer.await.unwrap_or(Triggered::ShuttingDown)
}

/// 202 with the run's id in the body and `Location: /runs/{id}`.
fn accepted(id: &str, body: serde_json::Value) -> Response {
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/runs/{id}"))],
        Json(body),
    )
        .into_response()
}

/// `None` when the request may read (the read token or the admin token); else the refusal
/// (404 when neither token is configured, 401 without a valid bearer token).
fn authorize_read(s: &AdminState, headers: &HeaderMap) -> Option<Response> {
    let read = s.handle.read_token.as_ref();
    if s.token.is_none() && read.is_none() {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the read API (GET /jobs, /runs) is disabled; set metrics.read_token_file (or metrics.admin_token_file) to enable it",
        ));
    }
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let digest = |t: &SecretString| Sha256::digest(t.expose_secret().as_bytes());
    let ok = presented.is_some_and(|p| {
        let p = Sha256::digest(p.as_bytes());
        // Both compared, whatever the first says (same time either way).
        let by_read = read.is_some_and(|t| digest(t) == p);
        let by_admin = s.token.as_deref().is_some_and(|t| digest(t) == p);
        by_read | by_admin
    });
    (!ok).then(unauthorized)
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        Json(json!({"errors": [{"status": 401, "title": "Unauthorized", "detail": "a valid bearer token is required"}]})),
    )
        .into_response()
}

/// The longest job name looked up (a config's names are far shorter; a longer one is unknown).
const MAX_JOB_NAME: usize = 1024;

async fn statuses(
    handle: &Handle,
    job: Option<String>,
) -> Result<Option<Vec<serde_json::Value>>, Response> {
    let (reply, answer) = oneshot::channel();
    if handle
        .status
        .try_send(StatusRequest { job, reply })
        .is_err()
    {
        return Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting down or busy; try again",
        ));
    }
    answer.await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the state could not be read",
        )
    })
}

/// `GET /jobs`: every job's status.
async fn jobs(State(s): State<AdminState>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize_read(&s, &headers) {
        return refused;
    }
    match statuses(&s.handle, None).await {
        Ok(Some(jobs)) => Json(json!({
            "schema": crate::telemetry::schema("jobs"),
            "jobs": jobs,
        }))
        .into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such job"),
        Err(r) => r,
    }
}

/// `GET /jobs/{name}`: one job's status; 404 for an unknown job.
async fn job(
    State(s): State<AdminState>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = authorize_read(&s, &headers) {
        return refused;
    }
    let unknown = || {
        error(
            StatusCode::NOT_FOUND,
            &format!("no job named {}", crate::text::quoted(&name, 128)),
        )
    };
    if name.len() > MAX_JOB_NAME {
        return unknown();
    }
    match statuses(&s.handle, Some(name.clone())).await {
        Ok(Some(mut jobs)) if jobs.len() == 1 => {
            let mut body = jobs.remove(0);
            if let Some(map) = body.as_object_mut() {
                map.insert("schema".into(), crate::telemetry::schema("job").into());
            }
            Json(body).into_response()
        }
        Ok(_) => unknown(),
        Err(r) => r,
    }
}

/// `GET /runs/{id}`: a run the triggers started; 404 when unknown or evicted.
async fn run(State(s): State<AdminState>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Some(refused) = authorize_read(&s, &headers) {
        return refused;
    }
    match s.handle.runs.get(&id).filter(|_| runs::valid_id(&id)) {
        Some(run) => Json(run).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            &format!(
                "no run {} (unknown, or evicted: the last {} runs are kept)",
                crate::text::quoted(&id, 64),
                runs::MAX_RUNS
            ),
        ),
    }
}
