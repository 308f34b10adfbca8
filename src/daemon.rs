//! `qlik-rotator run`: scheduled rotations, the admin listener and graceful shutdown.
//!
//! Lifecycle in phases (linkerd2-proxy's `main` is the model):
//! 1. load: `commands::run` parses and validates the config (exit 64, nothing built);
//! 2. build: [`App::build`] locks the state directory, reads the credentials, builds the
//!    Qlik client, the secret sources and the metrics;
//! 3. spawn: [`spawn`] starts the admin listener, arms the scheduler and reports ready; then,
//!    in the background, pre-flights every connection under the read budget (progress in
//!    `preflight_pending`, a log line at the end) and starts the `run_on_start` jobs;
//! 4. drain: [`Running::shutdown`] (on SIGTERM/SIGINT) stops starting rotations, waits for
//!    in-flight ones (PATCH + verify) up to `shutdown_grace_period`, writes the state, exits.
//!
//! Each run goes through the [`Runner`], the same as `rotate` uses.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use rand::Rng;
use secrecy::SecretString;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

pub use crate::{
    admin::Triggered,
    runner::{FLUSH_BACKOFF_MAX, PreflightError, preflight},
};
use crate::{
    admin::{
        self, Readiness, TriggerRequest,
        runs::{RunResult, RunTicket},
    },
    app::{self, App},
    config::{Config, ConfigInput, JobConfig, Target},
    events::{PreflightChecked, PreflightFinished},
    metrics::Metrics,
    runner::{JobRuntime, RetryPolicy, Runner},
    triggers::Prefetched,
};

/// The jobs of one cron entry.
struct ScheduleGroup {
    /// The cron expression.
    cron: String,
    /// Its time zone.
    tz: chrono_tz::Tz,
    /// The schedule and time zone (for logs).
    schedule: String,
    jobs: Box<[Arc<JobRuntime>]>,
    /// A dispatch of this group is starting its jobs.
    dispatching: AtomicBool,
}

impl ScheduleGroup {
    fn new(cron: &str, tz: chrono_tz::Tz, jobs: Vec<Arc<JobRuntime>>) -> Self {
        ScheduleGroup {
            cron: cron.to_owned(),
            tz,
            schedule: format!("{cron} ({tz})"),
            jobs: jobs.into_boxed_slice(),
            dispatching: AtomicBool::new(false),
        }
    }
}

/// What the scheduling core asks of the job runner. The [`Runner`] is the real one; through
/// this seam the decisions of what runs when (schedule groups, ticks, jitter, rotation slots,
/// triggers, the drain deadline) are tested on paused tokio time with a runner that does no
/// I/O (this module's tests).
pub trait RunJobs: Send + Sync + 'static {
    /// A rotation slot, held for the length of a run.
    type Permit: Send + 'static;

    /// Waits for a free rotation slot for `job` (in its tenant: each tenant has its own
    /// `max_concurrent_rotations` slots); `None` once the daemon stops.
    fn slot(&self, job: &JobRuntime) -> impl Future<Output = Option<Self::Permit>> + Send;

    /// Runs `job` once, retries included; `permit` when the caller already holds a slot.
    /// `force` rotates even when the applied version is current; `secret` is its secret read
    /// ahead in a batch (for this run only). Returns whether every connection ended well
    /// (rotated or unchanged); `false` when the run was skipped.
    fn run(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<Self::Permit>,
        secret: Option<Prefetched>,
    ) -> impl Future<Output = bool> + Send;

    /// [`RunJobs::run`], with the outcome of each connection for `GET /runs/{id}`. The
    /// default reports one result for the whole job.
    fn run_reported(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<Self::Permit>,
        secret: Option<Prefetched>,
    ) -> impl Future<Output = Vec<RunResult>> + Send {
        async move {
            let ok = self.run(job, force, permit, secret).await;
            vec![RunResult {
                connection: String::new(),
                outcome: if ok { "rotated" } else { "failed" }.to_owned(),
                stage: None,
                error_type: None,
                secret_version: None,
            }]
        }
    }

    /// Reads the secrets of `jobs` ahead, in one batch per source (one entry per job; `None`
    /// where nothing was read ahead). The default reads nothing ahead.
    fn prefetch(
        &self,
        jobs: &[&JobConfig],
    ) -> impl Future<Output = Vec<Option<Prefetched>>> + Send {
        let n = jobs.len();
        async move { (0..n).map(|_| None).collect() }
    }

    /// Applies `job`'s secret at version id `version` now (forced), verifies it and runs its
    /// canary; one result per connection. The default proves nothing.
    fn test_version(
        &self,
        job: &JobRuntime,
        version: &str,
    ) -> impl Future<Output = Vec<admin::PendingResult>> + Send {
        let job = job.cfg().name.clone();
        let _ = version;
        async move {
            vec![admin::PendingResult {
                job,
                connection: String::new(),
                outcome: "skipped".to_owned(),
                secret_version: None,
                proven: false,
            }]
        }
    }

    /// Cancelled when the daemon stops starting rotations.
    fn cancel_token(&self) -> &CancellationToken;

    /// The metrics (`jobs{state}`, `job_preflight_ok`).
    fn metrics(&self) -> &Arc<Metrics>;
}

impl RunJobs for Runner {
    type Permit = OwnedSemaphorePermit;

    fn slot(&self, job: &JobRuntime) -> impl Future<Output = Option<OwnedSemaphorePermit>> + Send {
        Runner::slot(self, &job.cfg().tenant)
    }

    async fn run(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<OwnedSemaphorePermit>,
        secret: Option<Prefetched>,
    ) -> bool {
        // A skipped run (already running, shutting down) is logged by the runner.
        self.run_job_with(job, force, permit, secret)
            .await
            .is_ok_and(|reports| reports.iter().all(|r| r.outcome.is_success()))
    }

    async fn run_reported(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<OwnedSemaphorePermit>,
        secret: Option<Prefetched>,
    ) -> Vec<RunResult> {
        match self.run_job_with(job, force, permit, secret).await {
            Ok(reports) => (reports.iter())
                .filter_map(|r| crate::runner::attempt_of(r, 0))
                .map(|a| RunResult {
                    connection: a.connection,
                    outcome: a.outcome,
                    stage: a.stage,
                    error_type: a.error_type,
                    secret_version: a.secret_version,
                })
                .collect(),
            Err(skipped) => vec![RunResult {
                connection: String::new(),
                outcome: "skipped".to_owned(),
                stage: None,
                error_type: Some(skipped.error_type().to_owned()),
                secret_version: None,
            }],
        }
    }

    async fn prefetch(&self, jobs: &[&JobConfig]) -> Vec<Option<Prefetched>> {
        crate::triggers::prefetch(self.rotator(), jobs).await
    }

    async fn test_version(&self, job: &JobRuntime, version: &str) -> Vec<admin::PendingResult> {
        use crate::secrets::{SecretRef, SecretSource as _, VersionSelector};
        let cfg = job.cfg();
        let skipped = |why: &str| {
            vec![admin::PendingResult {
                job: cfg.name.clone(),
                connection: String::new(),
                outcome: format!("skipped: {why}"),
                secret_version: None,
                proven: false,
            }]
        };
        let Some(source) = self.rotator().source(&cfg.source) else {
            return skipped("source not built");
        };
        let pending = SecretRef {
            id: cfg.secret.id.clone(),
            version: VersionSelector::Id(version.to_owned()),
        };
        let fetched = Arc::new(source.fetch(&pending).await);
        match self.run_job_with(job, true, None, Some(fetched)).await {
            // Proven: this very version rotated, verified and reloaded (a retry reads
            // AWSCURRENT again, which proves nothing about the pending version).
            Ok(reports) => (reports.iter())
                .map(|r| admin::PendingResult {
                    job: r.job.clone(),
                    connection: r
                        .connection_id
                        .clone()
                        .unwrap_or_else(|| r.connection_key.clone()),
                    outcome: r.outcome.label().to_owned(),
                    secret_version: r.secret_version.clone(),
                    proven: matches!(r.outcome, crate::rotation::Outcome::Rotated)
                        && r.canary.is_some()
                        && r.secret_version.as_deref() == Some(version),
                })
                .collect(),
            Err(e) => skipped(&format!("{e:?}")),
        }
    }

    fn cancel_token(&self) -> &CancellationToken {
        Runner::cancel_token(self)
    }

    fn metrics(&self) -> &Arc<Metrics> {
        Runner::metrics(self)
    }
}

/// The daemon's shared core: its jobs, the runner and the tasks it started.
pub struct Daemon<R: RunJobs = Runner> {
    /// The jobs of the running configuration; replaced whole by a reload (SIGHUP). A run
    /// holds its own `Arc<JobRuntime>`, so runs in flight finish whatever the reload does.
    set: std::sync::RwLock<Arc<JobSet>>,
    runner: Arc<R>,
    tracker: TaskTracker,
    ready: Readiness,
    /// Set once the start-up pre-flight has finished (or was cut short by shutdown).
    preflight_done: tokio::sync::SetOnce<()>,
    /// Whether the state backend answers ([`Daemon::watch_backend`]).
    backend_ok: Readiness,
    /// Wakes the coverage scan (`unmanaged_connections`) after a reload changed the jobs.
    rescan: Arc<tokio::sync::Notify>,
}

/// The jobs of one configuration: by name, in config order, and by the secret they read
/// (every job; and the jobs of Secrets Manager sources, for the `[events]` consumer).
struct JobSet {
    /// Indexes into `by_index`, in name order (names are unique; no copy of them is kept).
    by_name: Box<[u32]>,
    by_index: Vec<Arc<JobRuntime>>,
    by_secret: crate::triggers::SecretIndex,
    by_aws_secret: crate::triggers::SecretIndex,
}

impl JobSet {
    fn new(by_index: Vec<Arc<JobRuntime>>, is_aws: impl FnMut(&JobConfig) -> bool) -> Self {
        let cfgs = || by_index.iter().map(|j| j.cfg());
        let mut by_name: Vec<u32> = (0..by_index.len())
            .map(|i| u32::try_from(i).expect("fewer than 2^32 jobs"))
            .collect();
        by_name.sort_by(|&a, &b| {
            by_index[a as usize]
                .cfg()
                .name
                .cmp(&by_index[b as usize].cfg().name)
        });
        JobSet {
            by_name: by_name.into_boxed_slice(),
            by_secret: crate::triggers::SecretIndex::new(cfgs(), |_| true),
            by_aws_secret: crate::triggers::SecretIndex::new(cfgs(), is_aws),
            by_index,
        }
    }

    /// The job named `name`.
    fn get(&self, name: &str) -> Option<&Arc<JobRuntime>> {
        let i = (self.by_name)
            .binary_search_by(|&i| self.by_index[i as usize].cfg().name.as_str().cmp(name))
            .ok()?;
        Some(&self.by_index[self.by_name[i] as usize])
    }

    /// The jobs in name order.
    fn in_name_order(&self) -> impl Iterator<Item = &Arc<JobRuntime>> {
        self.by_name.iter().map(|&i| &self.by_index[i as usize])
    }

    /// The indexes of the jobs whose secret is `id` (a name, ARN or partial ARN).
    fn jobs_for_secret(&self, id: &str) -> Vec<usize> {
        (self.by_secret).jobs_for(id, |i| &self.by_index[i].cfg().secret.id)
    }

    /// [`JobSet::jobs_for_secret`] among the jobs the `[events]` consumer may run.
    fn jobs_for_aws_secret(&self, id: &str) -> Vec<usize> {
        (self.by_aws_secret).jobs_for(id, |i| &self.by_index[i].cfg().secret.id)
    }
}

impl<R: RunJobs> std::fmt::Debug for Daemon<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("jobs", &self.job_names())
            .finish_non_exhaustive()
    }
}

/// A job's last success carried over from the state file, so staleness alerts stay truthful
/// across restarts: the oldest of its connections' last-known-current times, and none unless
/// every connection has one (`known` gives it per connection).
fn carried_last_success(job: &JobConfig, known: impl Fn(&Target) -> Option<i64>) -> Option<i64> {
    let times: Vec<i64> = job.connections.iter().filter_map(known).collect();
    if times.len() == job.connections.len() {
        times.into_iter().min()
    } else {
        None
    }
}

impl Daemon<Runner> {
    /// Checks the state backend once: sets `backend_ok` (read by `/readyz`) and the
    /// state-writable gauge, and logs a change. `was` is the previous answer, if any.
    async fn check_backend(&self, was: Option<bool>) -> bool {
        let state = self.runner.state();
        let ok = match state.health().await {
            Ok(()) => {
                if was == Some(false) {
                    tracing::info!(
                        backend = state.kind(),
                        "The state backend answers again; ready."
                    );
                }
                true
            }
            Err(e) => {
                if was != Some(false) {
                    tracing::error!(backend = state.kind(), error = %crate::text::Escaped(&e.to_string()), "The state backend does not answer: not ready, and no job takes a lease (nothing is sent) until it does.");
                }
                false
            }
        };
        self.backend_ok.set(ok);
        if ok {
            self.metrics().set_state_writable(!state.is_dirty());
        } else {
            self.metrics().set_state_writable(false);
        }
        ok
    }

    /// Checks the state backend every `every` until the daemon stops.
    async fn watch_backend(self: Arc<Self>, every: Duration) {
        let mut was = self.backend_ok.get();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = self.cancel().cancelled() => return,
            }
            was = self.check_backend(Some(was)).await;
        }
    }

    /// The status of every job (`name: None`, in config order) or of the job `name`, from
    /// the state backend and what the daemon holds in memory (the secret's creation time,
    /// whether a run is in progress, pre-flight). `None` when there is no such job.
    ///
    /// # Errors
    /// [`crate::state::StateError`] when the state backend cannot be read.
    pub async fn job_statuses(
        &self,
        name: Option<&str>,
        events: bool,
    ) -> Result<Option<Vec<crate::status::JobStatus>>, crate::state::StateError> {
        use crate::status::{self, ATTEMPTS_PER_JOB, Known};
        let set = self.set();
        let picked: Vec<(usize, &Arc<JobRuntime>)> = match name {
            None => set.by_index.iter().enumerate().collect(),
            Some(n) => match set.by_index.iter().position(|j| j.cfg().name == n) {
                Some(i) => vec![(i, &set.by_index[i])],
                None => return Ok(None),
            },
        };
        let state = self.runner.state();
        let applied = state.load().await?;
        let now = chrono::Utc::now();
        let queries: Vec<crate::state::HistoryQuery> = (picked.iter())
            .map(|(_, job)| crate::state::HistoryQuery {
                job: Some(job.cfg().name.clone()),
                limit: ATTEMPTS_PER_JOB,
                ..Default::default()
            })
            .collect();
        type Read<'a> = std::pin::Pin<
            Box<
                dyn Future<Output = Result<Vec<crate::state::Attempt>, crate::state::StateError>>
                    + Send
                    + 'a,
            >,
        >;
        let reads: Vec<Read<'_>> = queries.iter().map(|q| state.history(q)).collect();
        // A few reads at a time: with DynamoDB each is a Query.
        let attempts: Vec<_> = futures_util::stream::iter(reads)
            .buffered(8)
            .collect()
            .await;
        let mut out = Vec::with_capacity(picked.len());
        for ((i, job), attempts) in picked.iter().zip(attempts) {
            let cfg = job.cfg();
            let known = Known {
                state: &applied,
                attempts: &attempts?,
                event_driven: events && set.jobs_for_aws_secret(&cfg.secret.id).contains(i),
                secret_created: self.metrics().secret_created(&cfg.name),
                now,
            };
            let mut st = status::job_status(cfg, known);
            st.running = Some(job.is_running());
            st.preflight_ok = Some(job.preflight_ok());
            out.push(st);
        }
        Ok(Some(out))
    }

    /// Answers the admin listener's status requests (`GET /jobs`, `GET /jobs/{name}`), one
    /// at a time; `events`: `[events]` is configured.
    async fn serve_status(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<admin::StatusRequest>,
        events: bool,
    ) {
        while let Some(r) = requests.recv().await {
            match self.job_statuses(r.job.as_deref(), events).await {
                Ok(found) => {
                    let json = found.map(|jobs| {
                        (jobs.iter())
                            .map(|j| serde_json::to_value(j).unwrap_or_default())
                            .collect()
                    });
                    let _ = r.reply.send(json);
                }
                // The reply is dropped: the listener answers 503.
                Err(e) => {
                    tracing::warn!(error = %crate::text::Escaped(&e.to_string()), "Cannot read the state for GET /jobs.");
                }
            }
        }
    }

    /// `jobs` (`cfg`'s, taken over), with the last success of each carried over from the
    /// state file.
    fn new(
        app: App,
        cfg: &Config,
        jobs: Vec<JobConfig>,
        known_state: BTreeMap<String, crate::state::JobState>,
    ) -> Self {
        let now = chrono::Utc::now().timestamp();
        app.metrics.register_jobs(&jobs);
        for j in &jobs {
            let known = |c: &Target| {
                (known_state.get(&j.state_key(c)))
                    .filter(|s| s.applies_to(c))
                    .and_then(|s| s.last_known_current(now))
            };
            if let Some(oldest) = carried_last_success(j, known) {
                app.metrics.set_last_success(&j.name, oldest);
            }
        }
        let retry = RetryPolicy::new(cfg.daemon.max_attempts_per_run);
        let runner = Runner::new(&app, cfg.daemon.max_concurrent_rotations, retry);
        let jobs = jobs.into_iter().map(JobRuntime::gated);
        let is_aws = |j: &JobConfig| {
            cfg.sources.get(&j.source).map(|s| s.kind()) == Some("aws_secrets_manager")
        };
        Daemon::with_runner(jobs, Arc::new(runner), is_aws)
    }

    /// Pre-flights every connection of every job (concurrently, at most `width` at once, each
    /// GET through the read gate, so the queue at the gate stays `width` long and a rotation's
    /// own GETs wait behind at most that many); failures are reported and skipped, the others
    /// run. Each result is kept (compactly) as it arrives, so the parsed GETs never pile up.
    /// Progress is the `preflight_pending` gauge; one log line at the end.
    async fn preflight_all(&self, width: usize) {
        let jobs: Vec<Arc<JobRuntime>> = self.set().in_name_order().cloned().collect();
        self.preflight_of(jobs, width).await;
    }

    /// [`Daemon::preflight_all`] for `jobs` only (the jobs a reload added or changed).
    async fn preflight_of(&self, jobs: Vec<Arc<JobRuntime>>, width: usize) {
        let started = tokio::time::Instant::now();
        let total: usize = jobs.iter().map(|j| j.cfg().connections.len()).sum();
        let events = self.runner.rotator().events();
        if let Some(m) = events.metrics() {
            m.set_preflight_pending(total);
        }
        let mut by_tenant: BTreeMap<Arc<str>, Vec<(Arc<JobRuntime>, usize)>> = BTreeMap::new();
        for job in &jobs {
            for (i, target) in job.cfg().connections.iter().enumerate() {
                let tenant = by_tenant.entry(target.tenant.clone()).or_default();
                tenant.push((job.clone(), i));
            }
        }
        let rotator = self.runner.rotator();
        // Counters shared by the closure below and the skipped tenants (atomics: this future is
        // sent to a task).
        let (pending, failed) = (AtomicUsize::new(total), AtomicUsize::new(0));
        let checked = |job: &JobRuntime, i: usize, result: Result<_, PreflightError>| {
            let left = pending.fetch_sub(1, Ordering::Relaxed) - 1;
            let error = match result {
                Ok(c) => {
                    job.remember(i, &c);
                    None
                }
                Err(e) => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    Some(e.to_string())
                }
            };
            events.emit(PreflightChecked {
                job: &job.cfg().name,
                connection: &job.cfg().connections[i].to_string(),
                error: error.as_deref(),
                pending: left,
            });
        };
        // The first connection of each tenant alone (the tenants at once): when Qlik refuses
        // a tenant's credentials (401), its other connections are not tried (one clear error
        // instead of the same 401 for every job), while the other tenants go on; pre-flight
        // is retried on every schedule tick, so they are checked once the key is fixed.
        let probes = futures_util::future::join_all(by_tenant.values_mut().map(|targets| {
            let (job, i) = targets.remove(0);
            async move {
                let result = preflight(rotator, job.cfg(), &job.cfg().connections[i]).await;
                (job, i, result)
            }
        }))
        .await;
        let mut rest = Vec::new();
        for ((tenant, others), (job, i, result)) in by_tenant.into_iter().zip(probes) {
            let refused = matches!(&result, Err(PreflightError::Read(e)) if matches!(e.error_type(), "unauthorized" | "auth"));
            checked(&job, i, result);
            if refused && !others.is_empty() {
                self.skip_refused(&tenant, others.len(), &pending, &failed);
            } else {
                rest.extend(others);
            }
        }
        let mut results = futures_util::stream::iter(rest)
            .map(|(job, i)| async move {
                let result = preflight(rotator, job.cfg(), &job.cfg().connections[i]).await;
                (job, i, result)
            })
            .buffer_unordered(width);
        while let Some((job, i, result)) = results.next().await {
            checked(&job, i, result);
        }
        for job in &jobs {
            self.metrics()
                .set_preflight(&job.cfg().name, job.preflight_ok());
        }
        self.update_job_gauges();
        events.emit(PreflightFinished {
            connections: total,
            failed: failed.into_inner(),
            elapsed: started.elapsed(),
        });
    }

    /// Counts `skipped` connections of `tenant` as failed pre-flight, not tried: Qlik refused
    /// the tenant's credentials to its first connection.
    fn skip_refused(
        &self,
        tenant: &str,
        skipped: usize,
        pending: &AtomicUsize,
        failed: &AtomicUsize,
    ) {
        tracing::error!(
            tenant,
            skipped,
            "Pre-flight of the tenant's other connections not tried: Qlik refused the tenant's credentials (HTTP 401; see the error above). Pre-flight is retried on every schedule tick."
        );
        failed.fetch_add(skipped, Ordering::Relaxed);
        let left = pending.fetch_sub(skipped, Ordering::Relaxed) - skipped;
        self.metrics().set_preflight_pending(left);
    }
}

impl<R: RunJobs> Daemon<R> {
    /// The daemon over `jobs` (in config order) and `runner`; `is_aws` tells the jobs the
    /// `[events]` consumer may run (those of Secrets Manager sources).
    fn with_runner(
        jobs: impl IntoIterator<Item = JobRuntime>,
        runner: Arc<R>,
        is_aws: impl FnMut(&JobConfig) -> bool,
    ) -> Self {
        // Not `collect()`: from the configuration's `Vec<JobConfig>`, the standard library
        // collects in place and keeps that buffer (280 bytes a job, 4.4 MiB at 10,000 jobs)
        // for a vector of pointers. Found with heaptrack (README, Memory).
        let jobs = jobs.into_iter();
        let mut by_index: Vec<Arc<JobRuntime>> = Vec::with_capacity(jobs.size_hint().0);
        by_index.extend(jobs.map(Arc::new));
        Daemon {
            set: std::sync::RwLock::new(Arc::new(JobSet::new(by_index, is_aws))),
            runner,
            tracker: TaskTracker::new(),
            ready: Readiness::default(),
            rescan: Arc::new(tokio::sync::Notify::new()),
            preflight_done: tokio::sync::SetOnce::new(),
            backend_ok: Readiness::default(),
        }
    }

    /// Whether the daemon is ready (config loaded, listener up, scheduler armed, not shutting
    /// down). Pre-flight is not waited for: see [`Daemon::preflight_finished`].
    pub fn is_ready(&self) -> bool {
        self.ready.get() && !self.cancel().is_cancelled()
    }

    /// Resolves once the start-up pre-flight of every connection has finished (or shutdown
    /// cut it short).
    pub async fn preflight_finished(&self) {
        self.preflight_done.wait().await;
    }

    /// The jobs of the running configuration (a snapshot: a reload replaces it).
    fn set(&self) -> Arc<JobSet> {
        self.set.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The names of the running configuration's jobs.
    pub fn job_names(&self) -> Vec<String> {
        (self.set().in_name_order())
            .map(|j| j.cfg().name.clone())
            .collect()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        self.runner.metrics()
    }

    fn cancel(&self) -> &CancellationToken {
        self.runner.cancel_token()
    }

    /// Starts a run of `name` now (on demand). Returns at once.
    pub fn trigger(self: &Arc<Self>, name: &str, force: bool) -> Triggered {
        self.trigger_run(name, force, None)
    }

    /// [`Daemon::trigger`], reporting to `run` (`GET /runs/{id}`) when given.
    pub fn trigger_run(
        self: &Arc<Self>,
        name: &str,
        force: bool,
        run: Option<RunTicket>,
    ) -> Triggered {
        let Some(job) = self.set().get(name).cloned() else {
            return Triggered::UnknownJob;
        };
        if self.cancel().is_cancelled() {
            return Triggered::ShuttingDown;
        }
        match run {
            Some(ticket) => {
                ticket.queued(&job.cfg().name);
                let this = self.clone();
                self.tracker.spawn(async move {
                    this.run_tracked(&job, force, None, &ticket).await;
                });
            }
            None => self.spawn_run(job, force, None, None),
        }
        Triggered::Started
    }

    /// Runs `job` once a rotation slot is free, telling `ticket` when it starts and how each
    /// connection ended (the job must be queued on it already). Returns whether every
    /// connection ended well.
    async fn run_tracked(
        self: &Arc<Self>,
        job: &JobRuntime,
        force: bool,
        secret: Option<Prefetched>,
        ticket: &RunTicket,
    ) -> bool {
        let name = &job.cfg().name;
        let Some(permit) = self.runner.slot(job).await else {
            ticket.finished(name, vec![skipped_result("shutting_down")]);
            return false;
        };
        ticket.running(name);
        let was_failing = !job.preflight_ok();
        let results = self
            .runner
            .run_reported(job, force, Some(permit), secret)
            .await;
        if was_failing {
            self.update_job_gauges();
        }
        let ok = !results.is_empty() && results.iter().all(RunResult::ok);
        ticket.finished(name, results);
        ok
    }

    /// The names of the jobs whose secret is `id` (a name, ARN or partial ARN).
    pub fn jobs_using_secret(&self, id: &str) -> Vec<String> {
        let set = self.set();
        (set.jobs_for_secret(id).into_iter())
            .map(|i| set.by_index[i].cfg().name.clone())
            .collect()
    }

    /// Starts a run of every job whose secret is `id` now, their secrets read in one batch.
    /// Returns at once.
    pub fn trigger_secret(self: &Arc<Self>, id: &str, force: bool) -> SecretTriggered {
        self.trigger_secret_run(id, force, None)
    }

    /// [`Daemon::trigger_secret`], reporting to `run` (`GET /runs/{id}`) when given.
    pub fn trigger_secret_run(
        self: &Arc<Self>,
        id: &str,
        force: bool,
        run: Option<RunTicket>,
    ) -> SecretTriggered {
        let set = self.set();
        let jobs = set.jobs_for_secret(id);
        if jobs.is_empty() {
            return SecretTriggered::NoJob;
        }
        if self.cancel().is_cancelled() {
            return SecretTriggered::ShuttingDown;
        }
        let names: Vec<String> = (jobs.iter())
            .map(|&i| set.by_index[i].cfg().name.clone())
            .collect();
        if let Some(ticket) = &run {
            names.iter().for_each(|n| ticket.queued(n));
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            this.run_now_tracked(&jobs, force, run.as_ref()).await;
        });
        SecretTriggered::Started(names)
    }

    /// Tests version `version` of secret `id` on every job in the AWS rotation protocol
    /// (`version_stage = "AWSPENDING"`) that reads it, all at once; waits for them.
    /// `Err(true)`: no such job; `Err(false)`: shutting down.
    pub async fn test_secret(
        self: &Arc<Self>,
        id: &str,
        version: &str,
    ) -> Result<Vec<admin::PendingResult>, bool> {
        let set = self.set();
        let jobs: Vec<usize> = (set.jobs_for_secret(id).into_iter())
            .filter(|&i| set.by_index[i].cfg().pending_test)
            .collect();
        if jobs.is_empty() {
            return Err(true);
        }
        if self.cancel().is_cancelled() {
            return Err(false);
        }
        let runs = (jobs.iter()).map(|&i| self.runner.test_version(&set.by_index[i], version));
        Ok(futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect())
    }

    /// Answers each pending-version test on a task of its own (a test waits for a canary).
    async fn serve_secret_tests(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<admin::SecretTestRequest>,
    ) {
        while let Some(r) = requests.recv().await {
            let this = self.clone();
            self.tracker.spawn(async move {
                let answer = this.test_secret(&r.secret, &r.version).await;
                let _ = r.reply.send(answer);
            });
        }
    }

    /// Runs the jobs `jobs` (indexes) now, their secrets read ahead in one batch; whether each
    /// ended well.
    async fn run_now_forced(self: &Arc<Self>, jobs: &[usize], force: bool) -> Vec<bool> {
        self.run_now_tracked(jobs, force, None).await
    }

    /// [`Daemon::run_now_forced`], reporting to `ticket` when given (its jobs queued on it).
    async fn run_now_tracked(
        self: &Arc<Self>,
        jobs: &[usize],
        force: bool,
        ticket: Option<&RunTicket>,
    ) -> Vec<bool> {
        // Indexes into this snapshot; one a reload made stale names no job and runs nothing.
        let set = self.set();
        let jobs: Vec<usize> = jobs
            .iter()
            .copied()
            .filter(|&i| i < set.by_index.len())
            .collect();
        let cfgs: Vec<&JobConfig> = jobs.iter().map(|&i| set.by_index[i].cfg()).collect();
        let prefetched = self.runner.prefetch(&cfgs).await;
        let set = &set;
        let runs = jobs.iter().zip(prefetched).map(|(&i, secret)| async move {
            let job = &set.by_index[i];
            if let Some(ticket) = ticket {
                return self.run_tracked(job, force, secret, ticket).await;
            }
            let was_failing = !job.preflight_ok();
            let ok = self.runner.run(job, force, None, secret).await;
            if was_failing {
                self.update_job_gauges();
            }
            ok
        });
        futures_util::future::join_all(runs).await
    }

    /// Runs `job` on a task of its own, through the runner (`secret`: read ahead for it).
    fn spawn_run(
        self: &Arc<Self>,
        job: Arc<JobRuntime>,
        force: bool,
        permit: Option<R::Permit>,
        secret: Option<Prefetched>,
    ) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let was_failing = !job.preflight_ok();
            this.runner.run(&job, force, permit, secret).await;
            if was_failing {
                this.update_job_gauges();
            }
        });
    }

    /// The tick handler of a cron entry: dispatches `group` on a task of its own, unless the
    /// daemon is stopping.
    fn on_tick(self: &Arc<Self>, group: &Arc<ScheduleGroup>) {
        if !self.cancel().is_cancelled() {
            self.tracker
                .spawn(self.clone().dispatch(group.clone(), true));
        }
    }

    /// Starts the runs of `group` (the jobs of one schedule, or every `run_on_start` job):
    /// each after its own random `jitter` delay (when `jitter`), and only when a rotation
    /// slot is free, so 10,000 jobs due at once are 10,000 entries in a list rather than
    /// 10,000 waiting tasks. A tick that finds the group's previous dispatch still starting
    /// jobs is skipped.
    async fn dispatch(self: Arc<Self>, group: Arc<ScheduleGroup>, jitter: bool) {
        if group.dispatching.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                schedule = %group.schedule,
                jobs = group.jobs.len(),
                "The previous run of this schedule is still starting its jobs; skipping this tick."
            );
            return;
        }
        let delays: Vec<Duration> = {
            let mut rng = rand::rng();
            (group.jobs.iter())
                .map(|j| match j.cfg().jitter {
                    d if jitter && !d.is_zero() => rng.random_range(Duration::ZERO..=d),
                    _ => Duration::ZERO,
                })
                .collect()
        };
        // The secrets of the group's ready jobs in one batch per source: each value serves
        // that job's run of this tick only (it may wait up to its jitter).
        let ready: Vec<usize> = (0..group.jobs.len())
            .filter(|&i| group.jobs[i].preflight_ok())
            .collect();
        let cfgs: Vec<&JobConfig> = ready.iter().map(|&i| group.jobs[i].cfg()).collect();
        let mut secrets: Vec<Option<Prefetched>> = (0..group.jobs.len()).map(|_| None).collect();
        for (i, p) in ready.iter().zip(self.runner.prefetch(&cfgs).await) {
            secrets[*i] = p;
        }
        self.stagger_by_tenant(&group, delays, secrets).await;
        group.dispatching.store(false, Ordering::SeqCst);
    }

    /// Starts the jobs of `group` as [`stagger`] does, one stagger per tenant side by side,
    /// so a tenant whose slots are all taken (its runs waiting for its write budget or its
    /// 429 pause) never holds back another tenant's starts. One tenant: one stagger, as before.
    async fn stagger_by_tenant(
        self: &Arc<Self>,
        group: &ScheduleGroup,
        delays: Vec<Duration>,
        mut secrets: Vec<Option<Prefetched>>,
    ) {
        let mut by_tenant: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, job) in group.jobs.iter().enumerate() {
            by_tenant.entry(&job.cfg().tenant).or_default().push(i);
        }
        let staggers = by_tenant.into_values().map(|idx| {
            let delays: Vec<Duration> = idx.iter().map(|&i| delays[i]).collect();
            let mut secrets: Vec<Option<Prefetched>> =
                idx.iter().map(|&i| secrets[i].take()).collect();
            let first = &group.jobs[idx[0]];
            async move {
                stagger(
                    delays,
                    self.cancel(),
                    || self.runner.slot(first),
                    |k, permit| {
                        let job = group.jobs[idx[k]].clone();
                        self.spawn_run(job, false, Some(permit), secrets[k].take());
                    },
                )
                .await;
            }
        });
        futures_util::future::join_all(staggers).await;
    }

    /// One group per distinct (schedule, time zone), in a stable order: a cron entry costs
    /// ~1.3 KB in tokio-cron-scheduler, a job in a group 8 bytes.
    fn schedule_groups(&self) -> Vec<Arc<ScheduleGroup>> {
        /// (schedule, time zone name) → the zone and the jobs.
        type Groups<'a> = BTreeMap<(&'a str, &'a str), (chrono_tz::Tz, Vec<Arc<JobRuntime>>)>;
        let mut groups = Groups::new();
        let set = self.set();
        for job in set.in_name_order() {
            if let Some(schedule) = &job.cfg().schedule {
                groups
                    .entry((schedule.as_str(), job.cfg().timezone.name()))
                    .or_insert_with(|| (job.cfg().timezone, Vec::new()))
                    .1
                    .push(job.clone());
            }
        }
        (groups.into_iter())
            .map(|((cron, _), (tz, jobs))| Arc::new(ScheduleGroup::new(cron, tz, jobs)))
            .collect()
    }

    /// One cron entry per schedule group, each calling [`Daemon::on_tick`]. Returns the
    /// started scheduler and the number of entries.
    async fn schedule(self: &Arc<Self>) -> Result<(JobScheduler, usize), StartError> {
        let scheduler_error =
            |e: tokio_cron_scheduler::JobSchedulerError| StartError::Scheduler(e.to_string());
        let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
        let groups = self.schedule_groups();
        for group in &groups {
            let (d, g) = (self.clone(), group.clone());
            let cron = Job::new_async_tz(group.cron.as_str(), group.tz, move |_id, _l| {
                let (d, g) = (d.clone(), g.clone());
                Box::pin(async move { d.on_tick(&g) })
            })
            .map_err(|e| {
                let first = &group.jobs[0].cfg().name;
                StartError::Scheduler(format!("job {first}: {e}"))
            })?;
            scheduler.add(cron).await.map_err(scheduler_error)?;
            tracing::debug!(schedule = %group.schedule, jobs = group.jobs.len(), "Scheduled.");
        }
        scheduler.start().await.map_err(scheduler_error)?;
        Ok((scheduler, groups.len()))
    }

    /// Starts every `run_on_start` job (without jitter).
    fn start_on_start(self: &Arc<Self>) {
        let jobs: Vec<Arc<JobRuntime>> = (self.set().in_name_order())
            .filter(|j| j.cfg().run_on_start)
            .cloned()
            .collect();
        if !jobs.is_empty() {
            let group = ScheduleGroup::new("run_on_start", chrono_tz::UTC, jobs);
            self.tracker
                .spawn(self.clone().dispatch(Arc::new(group), false));
        }
    }

    /// Answers the admin listener's trigger requests until it stops sending.
    async fn serve_triggers(self: Arc<Self>, mut requests: mpsc::Receiver<TriggerRequest>) {
        while let Some(r) = requests.recv().await {
            let _ = r.reply.send(self.trigger_run(&r.job, r.force, r.run));
        }
    }

    /// Answers the admin listener's triggers by secret until it stops sending.
    async fn serve_secret_triggers(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<admin::SecretTriggerRequest>,
    ) {
        while let Some(r) = requests.recv().await {
            let _ = r
                .reply
                .send(match self.trigger_secret_run(&r.secret, r.force, r.run) {
                    SecretTriggered::Started(jobs) => Ok(jobs),
                    SecretTriggered::NoJob => Err(true),
                    SecretTriggered::ShuttingDown => Err(false),
                });
        }
    }

    fn update_job_gauges(&self) {
        let set = self.set();
        let failed = set.in_name_order().filter(|j| !j.preflight_ok()).count();
        self.metrics().set_jobs(set.by_index.len() - failed, failed);
    }

    /// Stops starting rotations: not ready, ticks and triggers refused, dispatches stop.
    fn stop_starting(&self) {
        self.ready.set(false);
        self.cancel().cancel();
    }

    /// Waits for the runs in flight (PATCH and verify) up to `grace`. Returns whether all
    /// of them finished in time.
    async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tracing::info!(
            grace_s = grace.as_secs(),
            "Shutting down: waiting for in-flight rotations."
        );
        let finished = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if finished {
            tracing::info!("All rotations finished; exiting.");
        } else {
            tracing::warn!(
                still_running = self.tracker.len(),
                "Grace period over; exiting with rotations still in flight."
            );
        }
        finished
    }
}

/// What a trigger by secret did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretTriggered {
    /// Runs of these jobs were started.
    Started(Vec<String>),
    /// No job uses the secret.
    NoJob,
    /// The daemon is shutting down.
    ShuttingDown,
}

#[async_trait::async_trait]
impl crate::triggers::sqs::EventTarget for Arc<Daemon> {
    fn jobs_for_event(&self, secret_id: &str) -> Vec<usize> {
        self.set().jobs_for_aws_secret(secret_id)
    }

    async fn run_now(&self, jobs: &[usize]) -> Vec<bool> {
        self.run_now_forced(jobs, false).await
    }
}

/// The result of a job that did not run (`why`: a `Skipped` label).
fn skipped_result(why: &str) -> RunResult {
    RunResult {
        connection: String::new(),
        outcome: "skipped".to_owned(),
        stage: None,
        error_type: Some(why.to_owned()),
        secret_version: None,
    }
}

/// Starts job `i` of `delays` once `delays[i]` has passed (counted from the call) and `slot`
/// gives a permit, in order of delay; stops when `cancel` fires. The scheduling core of
/// [`Daemon::dispatch`], apart so it can be tested on paused time.
async fn stagger<P, S: Future<Output = Option<P>>>(
    delays: Vec<Duration>,
    cancel: &CancellationToken,
    mut slot: impl FnMut() -> S,
    mut start: impl FnMut(usize, P),
) {
    let started = tokio::time::Instant::now();
    let mut order: Vec<(Duration, usize)> = delays.into_iter().zip(0..).collect();
    order.sort_unstable();
    for (delay, i) in order {
        if !delay.is_zero() {
            tokio::select! {
                () = tokio::time::sleep_until(started + delay) => {}
                () = cancel.cancelled() => break,
            }
        }
        let permit = tokio::select! {
            p = slot() => match p { Some(p) => p, None => break },
            () = cancel.cancelled() => break,
        };
        start(i, permit);
    }
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory cannot be used (in use by another process, unsafe permissions,
    /// not writable, a symbolic link as state file).
    #[error("daemon.state_dir: {0}")]
    State(crate::state::StateError),
    /// Build phase failed (credentials).
    #[error(transparent)]
    Build(app::BuildError),
    /// The admin listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The admin token file could not be read.
    #[error("metrics.admin_token_file: {0}")]
    AdminToken(String),
    /// The read token file could not be read.
    #[error("metrics.read_token_file: {0}")]
    ReadToken(String),
    /// The scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// The webhook client (`[[notify]]`) could not be built.
    #[error("notify: {0}")]
    Notify(String),
}

impl From<app::BuildError> for StartError {
    fn from(e: app::BuildError) -> Self {
        match e {
            app::BuildError::State(e) => StartError::State(e),
            e => StartError::Build(e),
        }
    }
}

/// A running daemon.
pub struct Running {
    /// The shared core.
    pub daemon: Arc<Daemon>,
    /// Where `/metrics` and the admin API listen.
    pub addr: SocketAddr,
    scheduler: JobScheduler,
    cron_entries: usize,
    admin_stop: CancellationToken,
    admin_task: tokio::task::JoinHandle<()>,
    grace: Duration,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Build and spawn: [`App::build`], then [`spawn`].
///
/// # Errors
/// [`StartError`].
pub async fn start(cfg: &Config, input: &dyn ConfigInput) -> Result<Running, StartError> {
    let app = App::build(cfg, input).await?;
    let admin_token = admin_token(cfg, input)?;
    spawn(app, cfg, admin_token).await
}

/// Reads `metrics.admin_token_file` (part of the build phase).
///
/// # Errors
/// [`StartError::AdminToken`].
pub fn admin_token(
    cfg: &Config,
    input: &dyn ConfigInput,
) -> Result<Option<SecretString>, StartError> {
    cfg.metrics
        .admin_token_file
        .as_ref()
        .map(|path| crate::config::SecretLocator::File(path.clone()).read(input))
        .transpose()
        .map_err(StartError::AdminToken)
}

/// Reads `metrics.read_token_file` (the read-only admin endpoints' token).
///
/// # Errors
/// [`StartError::ReadToken`].
pub fn read_token(cfg: &Config) -> Result<Option<SecretString>, StartError> {
    cfg.metrics
        .read_token_file
        .as_ref()
        .map(|path| {
            // A file locator reads no variable: an empty input serves.
            let input: std::collections::HashMap<String, String> = Default::default();
            crate::config::SecretLocator::File(path.clone()).read(&input)
        })
        .transpose()
        .map_err(StartError::ReadToken)
}

/// The spawn phase: admin listener, scheduler; then ready, and pre-flight followed by the
/// `run_on_start` jobs in the background.
///
/// # Errors
/// [`StartError`] when the listener cannot bind or the scheduler fails.
pub async fn spawn(
    app: App,
    cfg: &Config,
    admin_token: Option<SecretString>,
) -> Result<Running, StartError> {
    spawn_owned(app, cfg, cfg.jobs.clone(), admin_token).await
}

/// [`spawn`] with `cfg`'s jobs given by value (`qlik-rotator run` moves them in rather than
/// holding two copies: 4.4 MiB at 10,000 jobs); `cfg.jobs` itself is not read.
///
/// # Errors
/// As [`spawn`].
pub async fn spawn_owned(
    app: App,
    cfg: &Config,
    jobs: Vec<JobConfig>,
    admin_token: Option<SecretString>,
) -> Result<Running, StartError> {
    let known_state = app.state.load().await.unwrap_or_else(|e| {
        tracing::warn!(error = %crate::text::Escaped(&e.to_string()), "Cannot read the applied versions; last-success times start empty.");
        BTreeMap::new()
    });
    let daemon = Arc::new(Daemon::new(app, cfg, jobs, known_state));
    start_housekeeping(&daemon, cfg)?;
    // The admin listener first, so /healthz and /metrics answer during pre-flight.
    let (addr, admin_stop, admin_task) = serve_admin(&daemon, cfg, admin_token).await?;
    let state = daemon.runner.state().clone();
    tracing::info!(
        backend = state.kind(),
        owner = %crate::text::Escaped(daemon.runner.owner()),
        "State backend; this replica's lease owner id."
    );
    daemon.check_backend(None).await;
    tokio::spawn(
        daemon
            .clone()
            .watch_backend(cfg.state.backend.health_interval()),
    );
    let (scheduler, cron_entries) = daemon.schedule().await?;
    if let Some(crate::config::events::EventsConfig::Sqs(sqs)) = &cfg.events {
        let consumer = crate::triggers::sqs::SqsConsumer::build(sqs).await;
        let target: Arc<dyn crate::triggers::sqs::EventTarget> = Arc::new(daemon.clone());
        daemon.tracker.spawn(consumer.run(
            target,
            daemon.runner.rotator().events().clone(),
            daemon.cancel().clone(),
        ));
    }
    // Ready = config loaded, listener up, scheduler armed. Pre-flight (one GET per connection,
    // 10 minutes for 10,000 of them at Qlik's 1,000 reads a minute) runs behind it; a job due
    // before its connection's pre-flight checks that connection itself.
    daemon.ready.set(true);
    tracing::info!(
        jobs = daemon.set().by_index.len(),
        "Daemon ready; pre-flight runs in the background."
    );
    start_preflight(&daemon, cfg.daemon.max_concurrent_rotations.max(8));
    Ok(Running {
        daemon,
        addr,
        scheduler,
        cron_entries,
        admin_stop,
        admin_task,
        grace: cfg.daemon.shutdown_grace_period,
    })
}

/// The daemon's housekeeping tasks: the webhook notifier (outcomes go through a bounded
/// queue; rotations never wait on them), the state flusher and the history pruner.
fn start_housekeeping(daemon: &Arc<Daemon>, cfg: &Config) -> Result<(), StartError> {
    if !cfg.notify.is_empty() {
        let (notifier, _task) = crate::notify::Notifier::spawn(
            cfg.notify.clone(),
            Some(daemon.metrics().clone()),
            crate::notify::QUEUE,
        )
        .map_err(|e| StartError::Notify(crate::text::printable(&e.to_string(), 200)))?;
        daemon.runner.rotator().events().set_notifier(notifier);
    }
    daemon.tracker.spawn(daemon.runner.clone().state_flusher());
    tokio::spawn(
        daemon
            .runner
            .clone()
            .history_pruner(cfg.state.history_retention),
    );
    Ok(())
}

/// Binds `metrics.listen` and serves the admin API on it through a narrow [`admin::Handle`]
/// (the metrics, readiness and the request channels this function connects to `daemon`).
/// Returns the bound address, the listener's stop token and its task.
async fn serve_admin(
    daemon: &Arc<Daemon>,
    cfg: &Config,
    admin_token: Option<SecretString>,
) -> Result<
    (
        std::net::SocketAddr,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ),
    StartError,
> {
    let listen_error = |source| StartError::Listen {
        addr: cfg.metrics.listen,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
        .await
        .map_err(listen_error)?;
    let addr = listener.local_addr().map_err(listen_error)?;
    let (trigger, requests) = mpsc::channel(64);
    tokio::spawn(daemon.clone().serve_triggers(requests));
    let (secret_trigger, secret_requests) = mpsc::channel(64);
    tokio::spawn(daemon.clone().serve_secret_triggers(secret_requests));
    let (secret_test, secret_tests) = mpsc::channel(16);
    tokio::spawn(daemon.clone().serve_secret_tests(secret_tests));
    let (status, status_requests) = mpsc::channel(16);
    tokio::spawn(
        daemon
            .clone()
            .serve_status(status_requests, cfg.events.is_some()),
    );
    let handle = admin::Handle {
        metrics: daemon.metrics().clone(),
        ready: daemon.ready.clone(),
        backend_ok: daemon.backend_ok.clone(),
        trigger,
        secret_trigger,
        secret_test,
        status,
        runs: Arc::new(admin::runs::Runs::default()),
        read_token: read_token(cfg)?,
    };
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        handle,
        admin_token,
        admin_stop.clone(),
    ));
    tracing::info!(%addr, "Serving /metrics, /healthz, /readyz.");
    Ok((addr, admin_stop, admin_task))
}

/// Pre-flight of every connection (`width` at a time, under the read budget), then the
/// `run_on_start` jobs, then the hourly coverage scan (`unmanaged_connections`), all in the
/// background. The scan comes after pre-flight, so that its reads come first; it is not
/// tracked: a scan only reads, and shutdown cuts it.
fn start_preflight(daemon: &Arc<Daemon>, width: usize) {
    let d = daemon.clone();
    daemon.tracker.spawn(async move {
        tokio::select! {
            () = d.preflight_all(width) => d.start_on_start(),
            () = d.cancel().cancelled() => {}
        }
        let _ = d.preflight_done.set(());
        let d2 = d.clone();
        tokio::spawn(crate::discover::scan_loop(
            d.runner.rotator().clients().clone(),
            d.runner.rotator().multi_tenant(),
            // The jobs by reference: a clone of every JobConfig per scan cost megabytes at
            // 10,000 jobs.
            move |f: &mut dyn FnMut(&[&JobConfig])| {
                let set = d2.set();
                f(&set.by_index.iter().map(|j| j.cfg()).collect::<Vec<_>>());
            },
            d.metrics().clone(),
            d.rescan.clone(),
            d.cancel().clone(),
        ));
    });
}

impl Running {
    /// How many cron entries the scheduler holds: one per distinct (schedule, time zone).
    pub fn cron_entries(&self) -> usize {
        self.cron_entries
    }

    /// Stops starting rotations, waits for in-flight ones up to the grace period, then stops
    /// the admin listener. Returns whether everything finished in time.
    pub async fn shutdown(mut self) -> bool {
        let d = &self.daemon;
        d.stop_starting();
        let _ = self.scheduler.shutdown().await;
        let finished = d.drain(self.grace).await;
        // A last try for a write that failed, then the lock goes.
        // A failure is logged and counted by the StateWriteFailed event close_state emits.
        let _ = d.runner.close_state().await;
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        finished
    }
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Jobs that are new.
    pub added: Vec<String>,
    /// Jobs that are gone (their series dropped).
    pub removed: Vec<String>,
    /// Jobs whose settings changed (their series start again).
    pub changed: Vec<String>,
}

/// The sections a reload cannot apply: any change there needs a restart. Compared through
/// their `Debug` text, which names secret locations, never secret values.
fn fixed_sections(cfg: &Config) -> [(&'static str, String); 5] {
    [
        (
            if cfg.multi_tenant {
                "[tenants]"
            } else {
                "[qlik]"
            },
            format!("{:?}", (cfg.multi_tenant, &cfg.tenants)),
        ),
        ("[sources]", format!("{:?}", cfg.sources)),
        ("[daemon]", format!("{:?}", cfg.daemon)),
        ("[metrics]", format!("{:?}", cfg.metrics)),
        ("[events]", format!("{:?}", cfg.events)),
    ]
}

impl Running {
    /// Applies `new`'s `[[jobs]]` in place of `old`'s: jobs added, removed or changed, the
    /// schedule groups rebuilt, removed (and changed) jobs' series dropped, added and changed
    /// jobs pre-flighted in the background. Runs in flight finish as they started.
    ///
    /// # Errors
    /// The changed sections other than `[[jobs]]` (nothing applied), or a scheduler failure.
    pub async fn reload(
        &mut self,
        old: &Config,
        new: &Config,
    ) -> Result<ReloadSummary, Vec<String>> {
        let changed_sections: Vec<String> = fixed_sections(old)
            .into_iter()
            .zip(fixed_sections(new))
            .filter(|(a, b)| a.1 != b.1)
            .map(|(a, _)| format!("{} changed: restart qlik-rotator to apply it", a.0))
            .collect();
        if !changed_sections.is_empty() {
            return Err(changed_sections);
        }
        let d = &self.daemon;
        let current = d.set();
        let mut summary = ReloadSummary::default();
        let mut fresh: Vec<Arc<JobRuntime>> = Vec::new();
        let by_index: Vec<Arc<JobRuntime>> = new
            .jobs
            .iter()
            .map(|j| match current.get(&j.name) {
                Some(rt) if format!("{:?}", rt.cfg()) == format!("{j:?}") => rt.clone(),
                found => {
                    let list = if found.is_some() {
                        &mut summary.changed
                    } else {
                        &mut summary.added
                    };
                    list.push(j.name.clone());
                    let rt = Arc::new(JobRuntime::gated(j.clone()));
                    fresh.push(rt.clone());
                    rt
                }
            })
            .collect();
        summary.removed = (current.in_name_order())
            .map(|j| &j.cfg().name)
            .filter(|n| new.job(n).is_none())
            .cloned()
            .collect();
        let dropped: Vec<String> = summary
            .removed
            .iter()
            .chain(&summary.changed)
            .cloned()
            .collect();
        d.metrics().unregister_jobs(&dropped);
        d.metrics().register_jobs(fresh.iter().map(|j| j.cfg()));
        let is_aws = |j: &JobConfig| {
            new.sources.get(&j.source).map(|s| s.kind()) == Some("aws_secrets_manager")
        };
        *d.set.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(JobSet::new(by_index, is_aws));
        // The schedule groups of the new jobs: a fresh scheduler replaces the old one.
        let _ = self.scheduler.shutdown().await;
        let (scheduler, entries) = d.schedule().await.map_err(|e| vec![e.to_string()])?;
        self.scheduler = scheduler;
        self.cron_entries = entries;
        d.update_job_gauges();
        if !(summary.added.is_empty() && summary.removed.is_empty() && summary.changed.is_empty()) {
            d.rescan.notify_one();
        }
        if !fresh.is_empty() {
            let (d2, width) = (d.clone(), new.daemon.max_concurrent_rotations.max(8));
            d.tracker.spawn(async move {
                tokio::select! {
                    () = d2.preflight_of(fresh, width) => {}
                    () = d2.cancel().cancelled() => {}
                }
            });
        }
        Ok(summary)
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests;
