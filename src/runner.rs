//! The job runner: one run of one job, the same for `rotate`, for the daemon's schedules and
//! for the admin trigger.
//!
//! A run: take a rotation slot (the concurrency limit) → take the job's lease from the state
//! backend (no lease: the run is skipped, an event says why) → re-try pre-flight of the
//! connections that failed it (daemon only) → read the applied versions (change detection) →
//! rotate → settle each report (state write under the lease, error metric, forget a connection
//! that may have changed) → retry the retriable failures through [`RetryPolicy`], renewing the
//! lease before each retry → record the run's metrics and append one [`Attempt`] per
//! connection to the history, in the same place → release the lease.
//! The write budget is the Qlik client's shared write gate, so every run of one process
//! shares it, whoever started the run.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use backon::BackoffBuilder;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    app::App,
    config::{JobConfig, Target},
    events::{
        HistoryPruned, LeaseSkipReason, LeaseSkipped, StateWriteFailed, StateWriteRecovered,
        StateWriteWhen,
    },
    metrics::Metrics,
    qlik::{CachedConnection, DataConnection},
    rotation::{Outcome, Report, RotationError, Rotator, RunOptions},
    state::{Attempt, JobState, Lease, StateBackend, StateError},
};

/// Why a job's connection failed pre-flight.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// Not found or not readable.
    #[error("cannot read the connection: {0}")]
    Read(crate::qlik::QlikError),
    /// Missing `update` privilege.
    #[error("connection {0} does not grant the update privilege to this identity")]
    NoUpdate(String),
    /// The job's properties do not match the connector's api-specs.
    #[error("{0}")]
    Specs(RotationError),
    /// Connector mismatch.
    #[error("connection {id} is a {actual:?} connection, but the job says {expected:?}")]
    WrongConnector {
        /// Connection id.
        id: String,
        /// Job's connector.
        expected: String,
        /// GET's datasourceID.
        actual: String,
    },
}

/// Checks one job's connection: resolvable, `update` privilege, matching connector.
///
/// # Errors
/// [`PreflightError`].
pub async fn preflight(
    rotator: &Rotator,
    job: &JobConfig,
    target: &Target,
) -> Result<DataConnection, PreflightError> {
    let conn = rotator
        .read_connection(job, target)
        .await
        .map_err(PreflightError::Read)?;
    if !conn.has_privilege("update") {
        return Err(PreflightError::NoUpdate(conn.id));
    }
    if conn.datasource_id != job.spec.datasource {
        return Err(PreflightError::WrongConnector {
            id: conn.id,
            expected: job.spec.datasource.clone(),
            actual: conn.datasource_id,
        });
    }
    rotator
        .check_specs(job, &target.tenant)
        .await
        .map_err(PreflightError::Specs)?;
    Ok(conn)
}

/// The one retry policy of a run: which failures are tried again (the classifier), how often,
/// and how long to wait in between (exponential, through `backon`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per run, the first included (`daemon.max_attempts_per_run`).
    pub max_attempts: u32,
    /// The wait before the first retry; doubles each time.
    pub first_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// `max_attempts` attempts, waiting 2 s, 4 s, 8 s, … up to 64 s in between.
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts: max_attempts.max(1),
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(64),
        }
    }

    /// The classifier: whether a failed connection is tried again in the same run (a
    /// transient Qlik or vault failure: 429, 5xx, timeouts, connection errors). Everything
    /// else (a refusal, a mismatch, bad input) fails the run at once.
    pub fn should_retry(error: &RotationError) -> bool {
        error.is_retriable()
    }

    /// The waits between attempts: `max_attempts - 1` of them, without jitter (the runs of
    /// a schedule are already spread by `jitter`).
    pub fn delays(&self) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.first_delay)
            .with_max_delay(self.max_delay)
            .with_factor(2.0)
            .with_max_times(self.max_attempts.saturating_sub(1) as usize)
            .build()
    }
}

/// What the runner knows about one of a job's connections.
#[derive(Debug, Default)]
struct ConnSlot {
    /// Whether the connection passed pre-flight (always, for a run without pre-flight).
    preflight_ok: bool,
    /// The connection as last read (pre-flight or verify GET), so a changed secret costs
    /// only the PATCH and the verify GET.
    known: Option<CachedConnection>,
}

/// One job as the runner holds it: its config, a lock so it never runs twice at once, and
/// what is known about its connections.
#[derive(Debug)]
pub struct JobRuntime {
    cfg: JobConfig,
    /// Set while a run is in progress ([`RunGuard`]); a flag, not a lock: nobody waits for
    /// it (a second trigger is skipped), and it costs 1 byte a job instead of 40.
    running: AtomicBool,
    /// One slot per entry of `cfg.connections`, in the same order.
    conns: std::sync::Mutex<Box<[ConnSlot]>>,
}

impl JobRuntime {
    /// A job whose connections must pass pre-flight before they are rotated (the daemon).
    pub fn gated(cfg: JobConfig) -> Self {
        Self::with(cfg, false)
    }

    /// A job rotated without pre-flight (`rotate`: the run reads and checks each connection
    /// itself and reports a refusal as its outcome).
    pub fn ungated(cfg: JobConfig) -> Self {
        Self::with(cfg, true)
    }

    fn with(cfg: JobConfig, preflight_ok: bool) -> Self {
        let conns = cfg
            .connections
            .iter()
            .map(|_| ConnSlot {
                preflight_ok,
                known: None,
            })
            .collect();
        JobRuntime {
            cfg,
            running: AtomicBool::new(false),
            conns: std::sync::Mutex::new(conns),
        }
    }

    /// The job's config.
    pub fn cfg(&self) -> &JobConfig {
        &self.cfg
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Box<[ConnSlot]>> {
        self.conns.lock().expect("connection slots lock")
    }

    /// Whether a run of the job is in progress.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Marks the job running, unless it already is; the mark goes with the guard (also
    /// when the run's future is dropped, or panics).
    fn try_start(&self) -> Option<RunGuard<'_>> {
        (self.running)
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .ok()
            .map(|_| RunGuard(&self.running))
    }

    /// Whether every connection passed pre-flight.
    pub fn preflight_ok(&self) -> bool {
        self.slots().iter().all(|s| s.preflight_ok)
    }

    /// Records a passed pre-flight (or a verify GET) for connection `i`.
    pub fn remember(&self, i: usize, conn: &DataConnection) {
        if let Some(slot) = self.slots().get_mut(i) {
            slot.preflight_ok = true;
            slot.known = Some(CachedConnection::new(conn));
        }
    }

    fn forget(&self, i: usize) {
        if let Some(slot) = self.slots().get_mut(i) {
            slot.known = None;
        }
    }

    /// Indexes of the connections that have not passed pre-flight.
    fn failing(&self) -> Vec<usize> {
        (self.slots().iter().enumerate())
            .filter(|(_, s)| !s.preflight_ok)
            .map(|(i, _)| i)
            .collect()
    }

    /// Indexes of the connections that passed pre-flight.
    fn passing(&self) -> Vec<usize> {
        (self.slots().iter().enumerate())
            .filter(|(_, s)| s.preflight_ok)
            .map(|(i, _)| i)
            .collect()
    }

    fn index_of(&self, key: &str) -> Option<usize> {
        self.cfg.connections.iter().position(|c| c.key() == key)
    }
}

/// A run in progress of a [`JobRuntime`]: clears its `running` flag when dropped.
struct RunGuard<'a>(&'a AtomicBool);

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Why a run did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// The same job is running.
    AlreadyRunning,
    /// The runner is stopping.
    ShuttingDown,
    /// No connection of the job has passed pre-flight.
    NoConnection,
    /// Another replica holds the job's lease, or the state backend could not grant it.
    NoLease,
    /// The state backend could not say which versions are applied (no change detection:
    /// nothing is PATCHed rather than risk a repeat).
    StateUnavailable,
    /// Qlik refused this process's credentials for the job's tenant (HTTP 401) to another job
    /// less than [`AUTH_HOLD`] ago: one clear error instead of the same 401 for every job.
    /// Other tenants' jobs run on.
    CredentialsRefused,
}

impl Skipped {
    /// A stable label (the rotate summary and JSON output).
    pub fn error_type(self) -> &'static str {
        match self {
            Skipped::AlreadyRunning => "already_running",
            Skipped::ShuttingDown => "shutting_down",
            Skipped::NoConnection => "preflight",
            Skipped::CredentialsRefused => "unauthorized",
            Skipped::NoLease => "no_lease",
            Skipped::StateUnavailable => "state_unavailable",
        }
    }
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skipped::AlreadyRunning => "the job is still running",
            Skipped::ShuttingDown => "the rotator is stopping",
            Skipped::NoConnection => "no connection of the job passes pre-flight",
            Skipped::CredentialsRefused => {
                "not tried: Qlik refused the rotator's credentials (HTTP 401) to another job just before (see its error)"
            }
            Skipped::NoLease => {
                "not tried: the job's lease is held by another replica, or the state backend could not grant it"
            }
            Skipped::StateUnavailable => {
                "not tried: the state backend could not say which version is applied"
            }
        })
    }
}

/// How long after a 401 the other jobs of the same identity are skipped: the jobs of one
/// `rotate` run or one schedule tick. The daemon tries again at the next schedule after it.
pub const AUTH_HOLD: Duration = Duration::from_secs(300);

/// Runs jobs: shared by every caller in one process.
#[derive(Debug)]
pub struct Runner {
    rotator: Arc<Rotator>,
    state: Arc<dyn StateBackend>,
    /// This process's lease owner id.
    owner: String,
    lease_ttl: Duration,
    metrics: Arc<Metrics>,
    /// Rotation slots per tenant, `max_concurrent` each (made on a tenant's first run; tenant
    /// names come from the config, so the map is bounded): a tenant whose runs wait for its
    /// write budget or its 429 pause never holds a slot another tenant needs.
    limits: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<Semaphore>>>,
    max_concurrent: usize,
    cancel: CancellationToken,
    retry: RetryPolicy,
    /// Signalled when a state write fails, so [`Runner::state_flusher`] retries it.
    state_dirty: tokio::sync::Notify,
    /// Per tenant: when Qlik last refused its credentials (HTTP 401), until a run in that
    /// tenant succeeds again. A refusal in one tenant never stops another's jobs.
    auth_refused: std::sync::Mutex<std::collections::HashMap<Arc<str>, tokio::time::Instant>>,
}

/// The longest wait between retries of a failed state write.
pub const FLUSH_BACKOFF_MAX: Duration = Duration::from_secs(60);

impl Runner {
    /// A runner over the app's rotator, state and metrics, with at most `max_concurrent`
    /// runs at once in each tenant.
    pub fn new(app: &App, max_concurrent: usize, retry: RetryPolicy) -> Self {
        Runner {
            rotator: app.rotator.clone(),
            state: app.state.clone(),
            owner: app.owner.clone(),
            lease_ttl: app.lease_ttl,
            metrics: app.metrics.clone(),
            limits: std::sync::Mutex::default(),
            max_concurrent: max_concurrent.max(1),
            cancel: CancellationToken::new(),
            retry,
            state_dirty: tokio::sync::Notify::new(),
            auth_refused: std::sync::Mutex::default(),
        }
    }

    /// The rotator.
    pub fn rotator(&self) -> &Arc<Rotator> {
        &self.rotator
    }

    /// This process's lease owner id.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The state backend.
    pub fn state(&self) -> &Arc<dyn StateBackend> {
        &self.state
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Cancelled when the runner stops: no new run starts, retries stop waiting.
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Waits for a rotation slot in `tenant` (a job's `cfg.tenant`: a fan-out job across
    /// tenants takes the slot of its own); `None` once the runner stops.
    pub async fn slot(&self, tenant: &str) -> Option<OwnedSemaphorePermit> {
        let limit = self.limit_of(tenant);
        tokio::select! {
            p = limit.acquire_owned() => p.ok(),
            () = self.cancel.cancelled() => None,
        }
    }

    /// The semaphore of `tenant`'s rotation slots.
    fn limit_of(&self, tenant: &str) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = limits.get(tenant) {
            return l.clone();
        }
        let l = Arc::new(Semaphore::new(self.max_concurrent));
        limits.insert(Arc::from(tenant), l.clone());
        l
    }

    /// Runs `job` once (with retries), in a slot: `permit` when the caller already holds one.
    /// `force` rotates even when the applied version is current. Returns one report per
    /// connection run, in the job's order.
    ///
    /// # Errors
    /// [`Skipped`] when the run did not happen.
    pub async fn run_job(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Vec<Report>, Skipped> {
        self.run_job_with(job, force, permit, None).await
    }

    /// [`Runner::run_job`], with the job's secret read ahead (`prefetched`, see
    /// [`crate::triggers::prefetch`]): the first attempt uses it, a retry reads the vault
    /// again, and it is dropped with the run.
    ///
    /// # Errors
    /// [`Skipped`] when the run did not happen.
    pub async fn run_job_with(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<OwnedSemaphorePermit>,
        mut prefetched: Option<crate::triggers::Prefetched>,
    ) -> Result<Vec<Report>, Skipped> {
        let Some(_running) = job.try_start() else {
            tracing::info!(job = %job.cfg.name, "Job is still running; skipping this trigger.");
            return Err(Skipped::AlreadyRunning);
        };
        let _permit = match permit {
            Some(p) => p,
            None => (self.slot(&job.cfg.tenant).await).ok_or(Skipped::ShuttingDown)?,
        };
        if self.cancel.is_cancelled() {
            return Err(Skipped::ShuttingDown);
        }
        // The lease before anything is read from the vault or sent to Qlik.
        let mut lease = self.lease(&job.cfg.name).await.ok_or(Skipped::NoLease)?;
        let (fence, expires_at) = (lease.fence, lease.expires_at);
        let body = self.run_leased(job, force, &mut lease, prefetched.take());
        let result = self
            .renewing(&job.cfg.name, fence, expires_at, body)
            .await
            .unwrap_or(Err(Skipped::NoLease));
        if let Err(e) = self.state.release_lease(&lease).await {
            tracing::debug!(job = %job.cfg.name, error = %crate::text::Escaped(&e.to_string()), "Could not release the lease early; it lapses by itself.");
        }
        result
    }

    /// Runs `body` (a run under the lease `fence` on `job`) while renewing the lease every
    /// third of its TTL, so a run longer than half the TTL keeps it. When the lease moved on,
    /// or a renewal failed and the next one would come too late, `body` is dropped (it stops at
    /// its next await, before any further request) and `None` is returned after an event.
    async fn renewing<T>(
        &self,
        job: &str,
        fence: u64,
        mut expires_at: i64,
        body: impl std::future::Future<Output = T>,
    ) -> Option<T> {
        let every = (self.lease_ttl / 3).max(Duration::from_millis(500));
        // Stop this long before the lease lapses when it cannot be renewed.
        let margin = i64::try_from((self.lease_ttl / 6).as_secs())
            .unwrap_or(1)
            .max(1);
        let every_s = i64::try_from(every.as_secs())
            .unwrap_or(i64::MAX / 4)
            .max(1);
        tokio::pin!(body);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                out = &mut body => return Some(out),
                _ = tick.tick() => {}
            }
            let now = chrono::Utc::now().timestamp();
            let reason = match (self.state)
                .acquire_lease(job, &self.owner, self.lease_ttl, now)
                .await
            {
                Ok(Some(l)) if l.fence == fence => {
                    expires_at = l.expires_at;
                    continue;
                }
                // Taken over (or lapsed and taken again): this run must not go on.
                Ok(_) => LeaseSkipReason::Lost,
                // Unreachable: still ours until it lapses; go on only if the next renewal
                // comes in time.
                Err(e) => {
                    let now = chrono::Utc::now().timestamp();
                    if now + every_s + margin < expires_at {
                        tracing::warn!(job = %crate::text::Escaped(job), error = %crate::text::Escaped(&e.to_string()), "Could not renew the lease; the run goes on while it holds.");
                        continue;
                    }
                    LeaseSkipReason::BackendError(e.to_string())
                }
            };
            self.rotator.events().emit(LeaseSkipped { job, reason });
            return None;
        }
    }

    /// Takes (or renews) the lease on `job`; `None`, after an event, when it is not granted.
    async fn lease(&self, job: &str) -> Option<Lease> {
        let now = chrono::Utc::now().timestamp();
        let reason = match (self.state)
            .acquire_lease(job, &self.owner, self.lease_ttl, now)
            .await
        {
            Ok(Some(lease)) => return Some(lease),
            Ok(None) => LeaseSkipReason::HeldElsewhere,
            Err(e) => LeaseSkipReason::BackendError(e.to_string()),
        };
        self.rotator.events().emit(LeaseSkipped { job, reason });
        None
    }

    /// The body of [`Runner::run_job`], under `lease` (renewed before each retry).
    async fn run_leased(
        &self,
        job: &JobRuntime,
        force: bool,
        lease: &mut Lease,
        mut prefetched: Option<crate::triggers::Prefetched>,
    ) -> Result<Vec<Report>, Skipped> {
        let conns = &job.cfg.connections;
        if conns.iter().all(|c| self.credentials_refused(&c.tenant)) {
            tracing::warn!(job = %job.cfg.name, tenant = %job.cfg.tenant, "Skipping this job: Qlik refused the tenant's credentials (HTTP 401) to another job just before.");
            return Err(Skipped::CredentialsRefused);
        }
        // (A fan-out job across tenants goes on in the tenants whose credentials stand; a 401
        // to this job's own pre-flight stops the next jobs of that tenant, not this run.)
        let refused: Vec<bool> = conns
            .iter()
            .map(|c| self.credentials_refused(&c.tenant))
            .collect();
        self.recheck_preflight(job).await;
        let mut only: Vec<usize> = (job.passing().into_iter())
            .filter(|&i| !refused[i])
            .collect();
        if only.is_empty() {
            return Err(Skipped::NoConnection);
        }
        let mut finals: Vec<Option<Report>> = job.cfg.connections.iter().map(|_| None).collect();
        let mut delays = self.retry.delays();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            if attempt > 1 {
                match self.lease(&job.cfg.name).await {
                    Some(renewed) => *lease = renewed,
                    None => break,
                }
            }
            let Some(reports) = self.attempt(job, force, &only, prefetched.take()).await else {
                if attempt == 1 {
                    return Err(Skipped::StateUnavailable);
                }
                break;
            };
            let mut retry = Vec::new();
            for report in reports {
                let index = job
                    .index_of(&report.connection_key)
                    .expect("a report names one of the job's connections");
                if self.settle(job, index, &report, lease).await {
                    retry.push(index);
                }
                finals[index] = Some(report);
            }
            if retry.is_empty() || self.cancel.is_cancelled() {
                break;
            }
            let Some(delay) = delays.next() else { break };
            for r in retry.iter().filter_map(|&i| finals[i].as_ref()) {
                self.rotator.retrying(r, attempt, delay);
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => break,
            }
            only = retry;
        }
        let reports: Vec<Report> = finals.into_iter().flatten().collect();
        self.note_credentials(job, &reports);
        // The outcome of each connection, once, after its last attempt (log line and metrics
        // from the same event), and the same outcomes into the history.
        self.rotator.finish_run(&job.cfg, &reports);
        self.append_history(&reports).await;
        Ok(reports)
    }

    /// Appends one [`Attempt`] per connection outcome (a plan is not an attempt). A failed
    /// write is kept by the backend and retried by the flusher.
    async fn append_history(&self, reports: &[Report]) {
        let at_ms = chrono::Utc::now().timestamp_millis();
        for r in reports {
            let Some(attempt) = attempt_of(r, at_ms) else {
                continue;
            };
            if let Err(e) = self.state.append_history(&attempt).await {
                self.state_write_failed(&r.job, &e);
            }
        }
    }

    /// Whether a 401 within [`AUTH_HOLD`] in `tenant` stops new runs there.
    fn credentials_refused(&self, tenant: &str) -> bool {
        let refused = self
            .auth_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        refused.get(tenant).is_some_and(|t| t.elapsed() < AUTH_HOLD)
    }

    /// Records that Qlik refused the credentials of `tenant` now.
    fn refuse_credentials(&self, tenant: &Arc<str>) {
        self.auth_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.clone(), tokio::time::Instant::now());
    }

    /// Records a 401 (or OAuth refusal) of a run in the tenant of its connection; any success
    /// in a tenant clears that tenant's.
    fn note_credentials(&self, job: &JobRuntime, reports: &[Report]) {
        let mut at = self
            .auth_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let tenant_of = |r: &Report| {
            let i = job.index_of(&r.connection_key)?;
            Some(job.cfg.connections[i].tenant.clone())
        };
        let refused = |r: &Report| {
            (r.outcome.error()).is_some_and(|e| matches!(e.error_type(), "unauthorized" | "auth"))
        };
        for r in reports.iter().filter(|r| refused(r)) {
            if let Some(t) = tenant_of(r) {
                at.insert(t, tokio::time::Instant::now());
            }
        }
        for r in reports.iter().filter(|r| r.outcome.is_success()) {
            if let Some(t) = tenant_of(r)
                && !reports
                    .iter()
                    .any(|o| refused(o) && tenant_of(o).as_ref() == Some(&t))
            {
                at.remove(&t);
            }
        }
    }

    /// Re-tries pre-flight of the connections that failed it, so a fixed permission recovers
    /// by itself. A 401 (the tenant's credentials refused) marks the tenant refused and skips
    /// its other connections.
    async fn recheck_preflight(&self, job: &JobRuntime) {
        let failing = job.failing();
        if failing.is_empty() {
            return;
        }
        let name = job.cfg.name.as_str();
        for i in failing {
            let conn = &job.cfg.connections[i];
            if self.credentials_refused(&conn.tenant) {
                continue;
            }
            match preflight(&self.rotator, &job.cfg, conn).await {
                Ok(c) => {
                    tracing::info!(job = name, connection = %conn, "Pre-flight now passes.");
                    job.remember(i, &c);
                }
                Err(e) => {
                    tracing::warn!(job = name, connection = %conn, error = %e, "Pre-flight still failing; skipping this connection.");
                    if matches!(&e, PreflightError::Read(q) if matches!(q.error_type(), "unauthorized" | "auth"))
                    {
                        // Qlik refused the tenant's credentials: the other jobs of this tick
                        // in that tenant are skipped (see `credentials_refused`).
                        self.refuse_credentials(&conn.tenant);
                    }
                }
            }
        }
        self.metrics.set_preflight(name, job.preflight_ok());
    }

    /// One attempt over the connections `only` (indexes); `None`, after an event, when the
    /// applied versions cannot be read.
    async fn attempt(
        &self,
        job: &JobRuntime,
        force: bool,
        only: &[usize],
        secret: Option<crate::triggers::Prefetched>,
    ) -> Option<Vec<Report>> {
        let conns = &job.cfg.connections;
        // Change detection reads the backend's memory (SQLite), not the file: a version
        // applied by this process counts even if its write to disk failed.
        let mut states: Vec<(String, JobState)> = Vec::new();
        for &i in only {
            let c = &conns[i];
            match self.state.get(&job.cfg.state_key(c)).await {
                Ok(s) => {
                    if let Some(s) = s.filter(|s| s.applies_to(c)) {
                        states.push((c.key(), s));
                    }
                }
                Err(e) => {
                    self.rotator.events().emit(LeaseSkipped {
                        job: &job.cfg.name,
                        reason: LeaseSkipReason::BackendError(e.to_string()),
                    });
                    return None;
                }
            }
        }
        let failed_versions = (states.iter())
            .filter_map(|(k, s)| Some((k.clone(), s.failed_version.clone()?)))
            .collect();
        let last_applied = (states.into_iter())
            .filter(|(_, s)| !s.applied_version.is_empty())
            .map(|(k, s)| (k, s.applied_version))
            .collect();
        let known = {
            let slots = job.slots();
            only.iter()
                .filter_map(|&i| Some((conns[i].key(), slots[i].known.as_ref()?.get())))
                .collect()
        };
        let opts = RunOptions {
            plan_only: false,
            last_applied,
            force,
            known,
            only: Some(only.iter().map(|&i| conns[i].key()).collect()),
            secret,
            failed_versions,
        };
        Some(self.rotator.run(&job.cfg, opts).await)
    }

    /// Settles one report: the state write for a success, the error metric and a forgotten
    /// connection for a failure. Returns whether the connection is to be tried again.
    async fn settle(&self, job: &JobRuntime, index: usize, report: &Report, lease: &Lease) -> bool {
        let conn = &job.cfg.connections[index];
        let key = job.cfg.state_key(conn);
        let now = chrono::Utc::now().timestamp();
        match &report.outcome {
            Outcome::Rotated => {
                if let Some(after) = &report.after {
                    job.remember(index, after);
                }
                if let (Some(id), Some(version)) = (&report.connection_id, &report.secret_version) {
                    let state = JobState {
                        connection_id: id.clone(),
                        applied_version: version.clone(),
                        applied_at: now,
                        checked_at: now,
                        failed_version: None,
                    };
                    let written = self.state.record(&key, state, Some(lease)).await;
                    self.state_written(&job.cfg.name, written);
                }
                false
            }
            Outcome::CanaryFailed(_) | Outcome::RolledBack { .. } => {
                // The version failed its canary (or verify, then rolled back): remember it, so
                // it is not applied again until the vault moves. The applied version stays the
                // last verified one (re-applied by a rollback).
                job.forget(index);
                if let Some(version) = &report.secret_version {
                    // (An unreadable state starts from an empty record: the failed version is
                    // what must not be lost.)
                    let mut state =
                        self.state
                            .get(&key)
                            .await
                            .ok()
                            .flatten()
                            .unwrap_or_else(|| JobState {
                                connection_id: report.connection_id.clone().unwrap_or_default(),
                                ..JobState::default()
                            });
                    state.failed_version = Some(version.clone());
                    if let Some(after) = &report.after {
                        job.remember(index, after);
                    }
                    let written = self.state.record(&key, state, Some(lease)).await;
                    self.state_written(&job.cfg.name, written);
                }
                false
            }
            Outcome::Unchanged | Outcome::Planned(_) => {
                // The applied version is still current: remember when that was last seen, so
                // a restart does not make the job look stale (written at most hourly).
                let written = self.state.touch(&key, now, Some(lease)).await;
                self.state_written(&job.cfg.name, written);
                false
            }
            Outcome::Failed(e) | Outcome::VerifyFailed(e) => {
                // The connection may have changed: read it afresh next time.
                job.forget(index);
                RetryPolicy::should_retry(e)
            }
        }
    }

    /// Counts a state write and, when it failed, logs it and wakes the flusher. The applied
    /// version stays in the store's memory either way, so nothing is re-applied.
    fn state_written(&self, job: &str, written: Result<(), StateError>) {
        match written {
            // (A touch within the hour writes nothing: the gauge follows the store.)
            Ok(()) => self.metrics.set_state_writable(!self.state.is_dirty()),
            Err(e) => self.state_write_failed(job, &e),
        }
    }

    /// A failed write: a lost lease is an event (the new holder records); anything else is a
    /// failed state write, which wakes the flusher.
    fn state_write_failed(&self, job: &str, e: &StateError) {
        if let StateError::LeaseLost { .. } = e {
            self.rotator.events().emit(LeaseSkipped {
                job,
                reason: LeaseSkipReason::Lost,
            });
            return;
        }
        self.rotator.events().emit(StateWriteFailed {
            job: Some(job),
            error: &e.to_string(),
            when: StateWriteWhen::AfterRun,
        });
        self.state_dirty.notify_one();
    }

    /// Prunes the history of attempts older than `retention`: once now, then hourly, until
    /// the runner stops.
    pub async fn history_pruner(self: Arc<Self>, retention: Duration) {
        let mut every = tokio::time::interval(Duration::from_secs(3600));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.cancel.cancelled() => return,
            }
            self.prune_history(retention).await;
        }
    }

    /// One pruning pass (see [`Runner::history_pruner`]).
    pub async fn prune_history(&self, retention: Duration) {
        let cutoff = chrono::Utc::now()
            .timestamp_millis()
            .saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        let result = self.state.prune_history(cutoff).await;
        self.rotator.events().emit(HistoryPruned {
            retention,
            result: result.map_err(|e| e.to_string()),
        });
    }

    /// Retries a failed state write: after 1 s, then doubling up to [`FLUSH_BACKOFF_MAX`],
    /// until it succeeds; idle while the file is current. Ends when the runner stops.
    pub async fn state_flusher(self: Arc<Self>) {
        let mut delay = Duration::from_secs(1);
        loop {
            if !self.state.is_dirty() {
                delay = Duration::from_secs(1);
                tokio::select! {
                    () = self.state_dirty.notified() => {}
                    () = self.cancel.cancelled() => return,
                }
                continue;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => return,
            }
            match self.state.flush().await {
                Ok(()) => self.rotator.events().emit(StateWriteRecovered),
                Err(e) => {
                    delay = (delay * 2).min(FLUSH_BACKOFF_MAX);
                    self.rotator.events().emit(StateWriteFailed {
                        job: None,
                        error: &e.to_string(),
                        when: StateWriteWhen::Retry(delay),
                    });
                }
            }
        }
    }

    /// A last try for a write that failed, then the state lock goes.
    ///
    /// # Errors
    /// [`StateError`] when the file still cannot be written.
    pub async fn close_state(&self) -> Result<(), StateError> {
        let flushed = self.state.flush().await;
        if let Err(e) = &flushed {
            self.rotator.events().emit(StateWriteFailed {
                job: None,
                error: &e.to_string(),
                when: StateWriteWhen::Shutdown,
            });
        }
        self.state.close().await;
        flushed
    }
}

/// The history row of one connection outcome; `None` for a plan (nothing was attempted).
pub fn attempt_of(r: &Report, at_ms: i64) -> Option<Attempt> {
    if matches!(r.outcome, Outcome::Planned(_)) {
        return None;
    }
    let error = r.outcome.error();
    Some(Attempt {
        at_ms,
        job: r.job.clone(),
        connection: r
            .connection_id
            .clone()
            .unwrap_or_else(|| r.connection_key.clone()),
        outcome: r.outcome.label().to_owned(),
        stage: error.map(|e| e.stage().as_str().to_owned()),
        error_type: error.map(|e| e.error_type().to_owned()),
        secret_version: r.secret_version.clone(),
        duration_ms: u64::try_from(r.duration.as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job runs once at a time: the mark is taken once, shows in `is_running`, and goes
    /// with its guard, also when the run's future is dropped midway (a cancelled run).
    #[tokio::test(start_paused = true)]
    async fn a_jobs_running_mark_is_exclusive_and_goes_with_its_guard() {
        let text = "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
                    [sources.f]\ntype = \"file\"\npath = \"/v\"\n[[jobs]]\nname = \"a\"\n\
                    connection = { id = \"00000000-0000-4000-8000-000000000001\" }\n\
                    connector = \"mssql\"\nsource = \"f\"\nsecret = \"s\"\n";
        let input = std::collections::HashMap::<String, String>::new();
        let cfg = crate::config::load_str(text, std::path::Path::new("/"), &input).unwrap();
        let job = JobRuntime::gated(cfg.jobs.into_iter().next().unwrap());
        assert!(!job.is_running());
        let guard = job.try_start().expect("not running yet");
        assert!(job.is_running());
        assert!(job.try_start().is_none(), "a second run is refused");
        drop(guard);
        assert!(!job.is_running());
        let run = async {
            let _running = job.try_start().expect("free again");
            std::future::pending::<()>().await;
        };
        let cancelled = tokio::time::timeout(Duration::from_secs(1), run).await;
        assert!(cancelled.is_err());
        assert!(!job.is_running(), "a cancelled run leaves the job free");
        assert!(job.try_start().is_some());
    }

    #[test]
    fn the_policy_waits_2_4_8_then_caps_at_64_seconds() {
        let secs = |p: RetryPolicy| p.delays().map(|d| d.as_secs()).collect::<Vec<_>>();
        assert_eq!(secs(RetryPolicy::new(1)), Vec::<u64>::new());
        assert_eq!(secs(RetryPolicy::new(3)), [2, 4]);
        assert_eq!(
            secs(RetryPolicy::new(10)),
            [2, 4, 8, 16, 32, 64, 64, 64, 64]
        );
        // Zero attempts is not a policy: one attempt, no retry.
        assert_eq!(RetryPolicy::new(0).max_attempts, 1);
        assert_eq!(secs(RetryPolicy::new(0)), Vec::<u64>::new());
    }

    #[test]
    fn the_classifier_retries_transient_failures_only() {
        use crate::qlik::QlikError;
        let status = |s: u16| QlikError::Status {
            method: "PATCH",
            endpoint: "/api/v1/data-connections/{id}",
            status: s,
            problem: Box::default(),
            retry_after: None,
        };
        for s in [429, 500, 502, 503] {
            assert!(
                RetryPolicy::should_retry(&RotationError::Apply(status(s))),
                "{s}"
            );
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(
                !RetryPolicy::should_retry(&RotationError::Apply(status(s))),
                "{s}"
            );
        }
        let transport = QlikError::Transport {
            method: "GET",
            endpoint: "/x",
            message: "reset".into(),
            timeout: true,
        };
        assert!(RetryPolicy::should_retry(&RotationError::VerifyGet(
            transport
        )));
        assert!(!RetryPolicy::should_retry(
            &RotationError::NoUpdatePrivilege("c".into())
        ));
        assert!(!RetryPolicy::should_retry(&RotationError::UnknownSource(
            "s".into()
        )));
    }
}
