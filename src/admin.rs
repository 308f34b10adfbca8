//! The admin listener: `/metrics`, `/healthz`, `/readyz`, and `POST /jobs/{name}/rotate`.
//!
//! The rotate endpoint is disabled (404) unless `metrics.admin_token_file` is set; then it needs
//! `Authorization: Bearer <token>` (401 without it). Unknown job → 404; accepted → 202.

use std::sync::Arc;

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
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, Triggered};

#[derive(Clone)]
struct AdminState {
    daemon: Arc<Daemon>,
    token: Option<Arc<SecretString>>,
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: tokio::net::TcpListener,
    daemon: Arc<Daemon>,
    token: Option<SecretString>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/jobs/{name}/rotate", post(rotate))
        .with_state(AdminState {
            daemon,
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
        // Streamed in chunks: with 10,000 jobs the exposition is ~17 MB, never held at once.
        axum::body::Body::from_stream(futures_util::stream::iter(
            s.daemon
                .metrics()
                .render_chunks()
                .map(Ok::<_, std::convert::Infallible>),
        )),
    )
        .into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    if s.daemon.is_ready() {
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
    let Some(token) = &s.token else {
        return error(
            StatusCode::NOT_FOUND,
            "the admin API is disabled; set metrics.admin_token_file to enable it",
        );
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
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            Json(json!({"errors": [{"status": 401, "title": "Unauthorized", "detail": "a valid bearer token is required"}]})),
        )
            .into_response();
    }
    match s.daemon.trigger(&name, q.force) {
        Triggered::Started => (
            StatusCode::ACCEPTED,
            Json(json!({"job": name, "status": "started", "force": q.force})),
        )
            .into_response(),
        Triggered::UnknownJob => error(StatusCode::NOT_FOUND, "no such job"),
        Triggered::ShuttingDown => error(StatusCode::SERVICE_UNAVAILABLE, "shutting down"),
    }
}
