//! The admin listener: `/metrics`, `/healthz`, `/readyz`, `POST /jobs/{name}/rotate` and
//! `POST /secrets/{id}/rotate`.
//!
//! The rotate endpoints are disabled (404) unless `metrics.admin_token_file` is set; then they
//! need `Authorization: Bearer <token>` (401 without it). Unknown job → 404; accepted → 202.
//! By secret: `{id}` is a secret name or ARN, percent-encoded (`app%2Fdb`); every job whose
//! secret it is runs (202 listing them), 404 with a clear body when no job uses it.
//!
//! The listener knows the daemon only through a narrow [`Handle`]: the metrics to render, a
//! readiness flag and a trigger sender. It imports nothing from the daemon.

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
    /// Where the answer goes.
    pub reply: oneshot::Sender<Triggered>,
}

/// A request to run every job that uses a secret, answered on `reply` with the jobs started
/// (`Ok`, never empty), `Err(true)` when no job uses it, `Err(false)` when shutting down.
#[derive(Debug)]
pub struct SecretTriggerRequest {
    /// The secret id (as sent by the client: unchecked).
    pub secret: String,
    /// Rotate even when the applied version is current.
    pub force: bool,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Result<Vec<String>, bool>>,
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
        .route("/jobs/{name}/rotate", post(rotate))
        .route("/secrets/{id}/rotate", post(rotate_secret))
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
    match trigger(&s.handle, name.clone(), q.force).await {
        Triggered::Started => (
            StatusCode::ACCEPTED,
            Json(json!({"job": name, "status": "started", "force": q.force})),
        )
            .into_response(),
        Triggered::UnknownJob => error(StatusCode::NOT_FOUND, "no such job"),
        Triggered::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
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
    let (reply, answer) = oneshot::channel();
    let request = SecretTriggerRequest {
        secret: id.clone(),
        force: q.force,
        reply,
    };
    let answer = match s.handle.secret_trigger.try_send(request) {
        Ok(()) => answer.await.unwrap_or(Err(false)),
        Err(_) => Err(false),
    };
    match answer {
        Ok(jobs) => (
            StatusCode::ACCEPTED,
            Json(json!({"secret": id, "status": "started", "force": q.force, "jobs": jobs})),
        )
            .into_response(),
        Err(true) => error(
            StatusCode::NOT_FOUND,
            &format!("no job uses the secret {}", crate::text::quoted(&id, 256)),
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
async fn trigger(handle: &Handle, job: String, force: bool) -> Triggered {
    let (reply, answer) = oneshot::channel();
    let request = TriggerRequest { job, force, reply };
    if handle.trigger.try_send(request).is_err() {
        return Triggered::ShuttingDown;
    }
    answer.await.unwrap_or(Triggered::ShuttingDown)
}
