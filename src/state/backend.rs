//! The contract every state backend meets (SQLite by default, DynamoDB for several replicas).
//!
//! The runner talks to state only through [`StateBackend`]. A backend for one process
//! (SQLite) grants every lease at once with fence 0; a shared backend (DynamoDB) grants a lease
//! to one owner at a time and refuses a write whose fence is no longer current, so a replica
//! that lost its lease can never record a result (nor, having checked the lease first, PATCH).

use std::{collections::BTreeMap, time::Duration};

use super::{JobState, StateError};

/// A held lease on one job: only its holder may PATCH that job's connections, and a record is
/// accepted only while `fence` is still the job's current fencing counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The job (its name, not a state key).
    pub job: String,
    /// Who holds it (a replica's owner id).
    pub owner: String,
    /// The fencing counter: grows by one each time the lease changes owner.
    pub fence: u64,
    /// When it lapses unless renewed (Unix seconds).
    pub expires_at: i64,
}

/// One attempt in the audit trail. Never holds a secret value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attempt {
    /// When the attempt ended (Unix milliseconds).
    pub at_ms: i64,
    /// The job.
    pub job: String,
    /// The connection (its id when known, else the configured reference).
    pub connection: String,
    /// `rotated`, `unchanged`, `failed`, `verify_failed`, … (the outcome label of the metrics).
    pub outcome: String,
    /// The stage that failed (`fetch`, `patch`, `verify`, …), when one did.
    pub stage: Option<String>,
    /// The low-cardinality error type of the metrics, when the attempt failed.
    pub error_type: Option<String>,
    /// The secret's version id (never its value).
    pub secret_version: Option<String>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// Which attempts to list (all filters are ANDed; newest first).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only this job.
    pub job: Option<String>,
    /// Only this connection.
    pub connection: Option<String>,
    /// Only attempts at or after this time (Unix milliseconds).
    pub since_ms: Option<i64>,
    /// At most this many rows.
    pub limit: usize,
}

/// A state backend. Keys are the runner's state keys (`JobConfig::state_key`).
#[async_trait::async_trait]
pub trait StateBackend: Send + Sync + std::fmt::Debug {
    /// `"sqlite"`, `"dynamodb"`, … (for logs, metrics and errors).
    fn kind(&self) -> &'static str;
    /// Every key's state.
    async fn load(&self) -> Result<BTreeMap<String, JobState>, StateError>;
    /// One key's state.
    async fn get(&self, key: &str) -> Result<Option<JobState>, StateError>;
    /// Records a verified rotation; with a lease, only while its fence is still current
    /// ([`StateError::LeaseLost`] otherwise).
    async fn record(
        &self,
        key: &str,
        state: JobState,
        lease: Option<&Lease>,
    ) -> Result<(), StateError>;
    /// Records that the applied version is still current at `now` (Unix seconds); may write
    /// nothing when the last record is recent.
    async fn touch(&self, key: &str, now: i64, lease: Option<&Lease>) -> Result<(), StateError>;
    /// Appends one attempt to the audit trail.
    async fn append_history(&self, attempt: &Attempt) -> Result<(), StateError>;
    /// Lists attempts, newest first.
    async fn history(&self, query: &HistoryQuery) -> Result<Vec<Attempt>, StateError>;
    /// Deletes attempts older than `before_ms`; returns how many went.
    async fn prune_history(&self, before_ms: i64) -> Result<u64, StateError>;
    /// Takes (or renews, when `owner` already holds it) the lease on `job` for `ttl`;
    /// `Ok(None)` when another owner holds a live lease.
    async fn acquire_lease(
        &self,
        job: &str,
        owner: &str,
        ttl: Duration,
        now: i64,
    ) -> Result<Option<Lease>, StateError>;
    /// Gives a lease up early (best effort; it lapses by itself anyway).
    async fn release_lease(&self, lease: &Lease) -> Result<(), StateError>;
    /// Whether the backend can be used now (readiness; `check-config --online`).
    async fn health(&self) -> Result<(), StateError>;
    /// Closes the backend: later writes fail with [`StateError::Closed`].
    async fn close(&self);
    /// Whether memory holds records or attempts the backend does not (a write failed and is
    /// waiting for [`StateBackend::flush`]). A backend that keeps nothing back says `false`.
    fn is_dirty(&self) -> bool {
        false
    }
    /// Retries the writes that failed (the runner's flusher calls it with backoff).
    async fn flush(&self) -> Result<(), StateError> {
        Ok(())
    }
}
