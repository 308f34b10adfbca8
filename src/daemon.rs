//! `qlik-rotator run`: scheduled rotations with change detection, pre-flight, state, metrics,
//! the admin listener and graceful shutdown.
//!
//! Lifecycle: build (clients, sources, state, metrics) → admin listener → pre-flight →
//! scheduler → ready → wait for SIGTERM/SIGINT → stop starting rotations → wait for in-flight
//! ones (PATCH + verify) up to `shutdown_grace_period` → exit 0.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures_util::StreamExt;
use rand::Rng;
use tokio::sync::Semaphore;
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    admin, app,
    config::{Config, ConfigInput, ConnectionRef, JobConfig},
    events::{StateWriteFailed, StateWriteRecovered, StateWriteWhen},
    metrics::Metrics,
    qlik::{CachedConnection, DataConnection},
    rotation::{Outcome, Report, Rotator, RunOptions},
    state::{JobState, StateStore},
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
    Specs(crate::rotation::RotationError),
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
    target: &ConnectionRef,
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
        .check_specs(job)
        .await
        .map_err(PreflightError::Specs)?;
    Ok(conn)
}

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

/// What the daemon knows about one of a job's connections.
#[derive(Debug, Default)]
struct ConnSlot {
    /// Whether the connection passed pre-flight.
    preflight_ok: bool,
    /// The connection as last read (pre-flight or verify GET), so a changed secret costs
    /// only the PATCH and the verify GET.
    known: Option<CachedConnection>,
}

struct JobRuntime {
    cfg: JobConfig,
    running: tokio::sync::Mutex<()>,
    /// One slot per entry of `cfg.connections`, in the same order.
    conns: Mutex<Box<[ConnSlot]>>,
}

impl JobRuntime {
    fn new(cfg: JobConfig) -> Self {
        let conns = cfg
            .connections
            .iter()
            .map(|_| ConnSlot::default())
            .collect();
        JobRuntime {
            cfg,
            running: tokio::sync::Mutex::new(()),
            conns: Mutex::new(conns),
        }
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Box<[ConnSlot]>> {
        self.conns.lock().expect("connection slots lock")
    }

    fn preflight_ok(&self) -> bool {
        self.slots().iter().all(|s| s.preflight_ok)
    }

    /// Index of the connection whose key is `key`.
    fn index_of(&self, key: &str) -> Option<usize> {
        self.cfg.connections.iter().position(|c| c.key() == key)
    }

    /// Records a passed pre-flight (or a verify GET) for connection `i`.
    fn remember(&self, i: usize, conn: &DataConnection) {
        if let Some(slot) = self.slots().get_mut(i) {
            slot.preflight_ok = true;
            slot.known = Some(CachedConnection::new(conn));
        }
    }
}

/// The jobs of one cron entry.
struct ScheduleGroup {
    /// The schedule and time zone (for logs).
    schedule: String,
    jobs: Box<[Arc<JobRuntime>]>,
    /// A dispatch of this group is starting its jobs.
    dispatching: AtomicBool,
}

/// The daemon's shared core.
pub struct Daemon {
    jobs: BTreeMap<String, Arc<JobRuntime>>,
    rotator: Arc<Rotator>,
    state: StateStore,
    metrics: Arc<Metrics>,
    semaphore: Arc<Semaphore>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    max_attempts_per_run: u32,
    ready: AtomicBool,
    /// Signalled when a state write fails, so the flusher retries it with backoff.
    state_dirty: tokio::sync::Notify,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// Whether the daemon is ready (scheduler running, pre-flight done, not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.cancel.is_cancelled()
    }

    /// The metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Starts a run of `name` now (on demand). Returns at once.
    pub fn trigger(self: &Arc<Self>, name: &str, force: bool) -> Triggered {
        let Some(job) = self.jobs.get(name).cloned() else {
            return Triggered::UnknownJob;
        };
        if self.cancel.is_cancelled() {
            return Triggered::ShuttingDown;
        }
        let this = self.clone();
        self.tracker.spawn(async move {
            this.run_job(&job, force, None).await;
        });
        Triggered::Started
    }

    /// Starts the runs of `group` (the jobs of one schedule, or every `run_on_start` job):
    /// each after its own random `jitter` delay (when `jitter`), and only when a rotation
    /// slot is free, so 10,000 jobs due at once are 10,000 entries in a list rather than
    /// 10,000 waiting tasks.
    async fn dispatch(self: Arc<Self>, group: Arc<ScheduleGroup>, jitter: bool) {
        if group.dispatching.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                schedule = %group.schedule,
                jobs = group.jobs.len(),
                "The previous run of this schedule is still starting its jobs; skipping this tick."
            );
            return;
        }
        let started = tokio::time::Instant::now();
        let mut order: Vec<(Duration, usize)> = {
            let mut rng = rand::rng();
            group
                .jobs
                .iter()
                .enumerate()
                .map(|(i, j)| {
                    let delay = if jitter && !j.cfg.jitter.is_zero() {
                        rng.random_range(Duration::ZERO..=j.cfg.jitter)
                    } else {
                        Duration::ZERO
                    };
                    (delay, i)
                })
                .collect()
        };
        order.sort_unstable();
        for (delay, i) in order {
            if !delay.is_zero() {
                tokio::select! {
                    () = tokio::time::sleep_until(started + delay) => {}
                    () = self.cancel.cancelled() => break,
                }
            }
            let permit = tokio::select! {
                p = self.semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
                () = self.cancel.cancelled() => break,
            };
            let job = group.jobs[i].clone();
            let this = self.clone();
            self.tracker.spawn(async move {
                this.run_job(&job, false, Some(permit)).await;
            });
        }
        group.dispatching.store(false, Ordering::SeqCst);
    }

    async fn run_job(
        &self,
        job: &JobRuntime,
        force: bool,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let name = job.cfg.name.as_str();
        // The same job never runs twice at once.
        let Ok(_running) = job.running.try_lock() else {
            tracing::info!(job = name, "Job is still running; skipping this trigger.");
            return;
        };
        let _permit = match permit {
            Some(p) => p,
            None => tokio::select! {
                p = self.semaphore.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
                () = self.cancel.cancelled() => return,
            },
        };
        if self.cancel.is_cancelled() {
            return;
        }
        // Retry pre-flight of failing connections on each trigger, so a fixed permission
        // recovers by itself.
        let failing: Vec<usize> = job
            .slots()
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.preflight_ok)
            .map(|(i, _)| i)
            .collect();
        if !failing.is_empty() {
            for i in failing {
                let conn = &job.cfg.connections[i];
                match preflight(&self.rotator, &job.cfg, conn).await {
                    Ok(c) => {
                        tracing::info!(job = name, connection = %conn, "Pre-flight now passes.");
                        job.remember(i, &c);
                    }
                    Err(e) => {
                        tracing::warn!(job = name, connection = %conn, error = %e, "Pre-flight still failing; skipping this connection.");
                    }
                }
            }
            self.metrics.set_preflight(name, job.preflight_ok());
            self.update_job_gauges();
        }
        let mut only: Vec<String> = job
            .cfg
            .connections
            .iter()
            .zip(job.slots().iter())
            .filter(|(_, s)| s.preflight_ok)
            .map(|(c, _)| c.key())
            .collect();
        if only.is_empty() {
            return;
        }
        let mut finals: BTreeMap<String, Report> = BTreeMap::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The store's memory, not the file: a version applied by this process counts even
            // if its write to disk failed.
            let last_applied = job
                .cfg
                .connections
                .iter()
                .filter(|c| only.contains(&c.key()))
                .filter_map(|c| {
                    self.state
                        .get(&job.cfg.state_key(c))
                        .filter(|s| s.applies_to(c))
                        .map(|s| (c.key(), s.applied_version))
                })
                .collect();
            let known: HashMap<String, DataConnection> = job
                .cfg
                .connections
                .iter()
                .zip(job.slots().iter())
                .filter_map(|(c, s)| Some((c.key(), s.known.as_ref()?)))
                .filter(|(k, _)| only.contains(k))
                .map(|(k, cached)| (k, cached.get()))
                .collect();
            let reports = self
                .rotator
                .run(
                    &job.cfg,
                    RunOptions {
                        plan_only: false,
                        last_applied,
                        force,
                        known,
                        only: Some(only.clone()),
                    },
                )
                .await;
            let mut retry = Vec::new();
            for report in reports {
                let index = job
                    .index_of(&report.connection_key)
                    .expect("a report names one of the job's connections");
                let conn = &job.cfg.connections[index];
                let now = chrono::Utc::now().timestamp();
                match &report.outcome {
                    Outcome::Rotated => {
                        if let Some(after) = &report.after {
                            job.remember(index, after);
                        }
                        if let (Some(id), Some(version)) =
                            (&report.connection_id, &report.secret_version)
                        {
                            let written = self.state.record(
                                &job.cfg.state_key(conn),
                                JobState {
                                    connection_id: id.clone(),
                                    applied_version: version.clone(),
                                    applied_at: now,
                                    checked_at: now,
                                },
                            );
                            self.state_written(name, written);
                        }
                    }
                    Outcome::Unchanged | Outcome::Planned(_) => {
                        // Remember that the applied version was still current, so a restart
                        // does not make the job look stale (written at most hourly).
                        let written = self.state.touch(&job.cfg.state_key(conn), now);
                        self.state_written(name, written);
                    }
                    Outcome::Failed(e) | Outcome::VerifyFailed(e) => {
                        // The connection may have changed: read it afresh next time.
                        if let Some(slot) = job.slots().get_mut(index) {
                            slot.known = None;
                        }
                        if e.is_retriable() {
                            retry.push(report.connection_key.clone());
                        }
                    }
                }
                finals.insert(report.connection_key.clone(), report);
            }
            if retry.is_empty()
                || attempt >= self.max_attempts_per_run
                || self.cancel.is_cancelled()
            {
                break;
            }
            let delay = Duration::from_secs(1 << attempt.min(6));
            retry
                .iter()
                .filter_map(|k| finals.get(k))
                .for_each(|r| self.rotator.retrying(r, attempt, delay));
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.cancel.cancelled() => break,
            }
            only = retry;
        }
        self.rotator.finish_run(&job.cfg, finals.values());
    }

    /// Counts a state write and, when it failed, logs it and wakes the flusher. The applied
    /// version stays in the store's memory either way, so nothing is re-applied.
    fn state_written(&self, job: &str, written: Result<(), crate::state::StateError>) {
        match written {
            // (A touch within the hour writes nothing: the gauge follows the store.)
            Ok(()) => self.metrics.set_state_writable(!self.state.is_dirty()),
            Err(e) => {
                self.rotator.events().emit(StateWriteFailed {
                    job: Some(job),
                    error: &e.to_string(),
                    when: StateWriteWhen::AfterRun,
                });
                self.state_dirty.notify_one();
            }
        }
    }

    /// Retries a failed state write: after 1 s, then doubling up to [`FLUSH_BACKOFF_MAX`],
    /// until it succeeds; idle while the file is current. Ends when the daemon stops.
    async fn state_flusher(self: Arc<Self>) {
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
            match self.state.flush() {
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

    fn update_job_gauges(&self) {
        let failed = self.jobs.values().filter(|j| !j.preflight_ok()).count();
        self.metrics.set_jobs(self.jobs.len() - failed, failed);
    }
}

/// The longest wait between retries of a failed state write.
pub const FLUSH_BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The state directory cannot be used (in use by another process, unsafe permissions,
    /// not writable, a symbolic link as state file).
    #[error("daemon.state_dir: {0}")]
    State(#[from] crate::state::StateError),
    /// Build phase failed (credentials).
    #[error(transparent)]
    Build(#[from] app::BuildError),
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
    /// The scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
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

/// Builds and starts the daemon: admin listener, pre-flight, scheduler.
///
/// # Errors
/// [`StartError`].
pub async fn start(cfg: &Config, input: &dyn ConfigInput) -> Result<Running, StartError> {
    // First, before anything is sent: this process must own a usable state directory.
    let state = StateStore::open(cfg.daemon.state_dir.clone())?;
    let metrics = Arc::new(Metrics::with_per_job_histogram(
        cfg.metrics.per_job_duration_histogram,
    ));
    metrics.set_state_writable(true);
    let client = Arc::new(
        app::qlik_client(cfg, input)?
            .with_observer(Arc::new(crate::events::Events::new(metrics.clone()))),
    );
    let rotator =
        Arc::new(Rotator::new(client, app::sources(cfg).await).with_metrics(metrics.clone()));
    let admin_token = match &cfg.metrics.admin_token_file {
        None => None,
        Some(path) => Some(
            crate::config::SecretLocator::File(path.clone())
                .read(input)
                .map_err(StartError::AdminToken)?,
        ),
    };
    let known_state = state.load();
    let now = chrono::Utc::now().timestamp();
    metrics.register_jobs(&cfg.jobs);
    let jobs = cfg
        .jobs
        .iter()
        .map(|j| {
            // Carry the last success across restarts, so staleness alerts stay truthful: the
            // oldest of the job's connections counts.
            let times: Vec<i64> = j
                .connections
                .iter()
                .filter_map(|c| {
                    known_state
                        .get(&j.state_key(c))
                        .filter(|s| s.applies_to(c))
                        .and_then(|s| s.last_known_current(now))
                })
                .collect();
            if times.len() == j.connections.len()
                && let Some(oldest) = times.into_iter().min()
            {
                metrics.set_last_success(&j.name, oldest);
            }
            (j.name.clone(), Arc::new(JobRuntime::new(j.clone())))
        })
        .collect();
    let daemon = Arc::new(Daemon {
        jobs,
        rotator,
        state,
        metrics,
        semaphore: Arc::new(Semaphore::new(cfg.daemon.max_concurrent_rotations)),
        cancel: CancellationToken::new(),
        tracker: TaskTracker::new(),
        max_attempts_per_run: cfg.daemon.max_attempts_per_run,
        ready: AtomicBool::new(false),
        state_dirty: tokio::sync::Notify::new(),
    });
    daemon.tracker.spawn(daemon.clone().state_flusher());

    // The admin listener first, so /healthz and /metrics answer during pre-flight.
    let listener = tokio::net::TcpListener::bind(cfg.metrics.listen)
        .await
        .map_err(|source| StartError::Listen {
            addr: cfg.metrics.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: cfg.metrics.listen,
        source,
    })?;
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        daemon.clone(),
        admin_token,
        admin_stop.clone(),
    ));
    tracing::info!(%addr, "Serving /metrics, /healthz, /readyz.");

    // Pre-flight every connection of every job (concurrently, bounded); failures are
    // reported and skipped, the others run.
    // Each result is kept (compactly) as it arrives, so the parsed GETs never pile up.
    let targets = daemon
        .jobs
        .values()
        .flat_map(|j| (0..j.cfg.connections.len()).map(move |i| (j, i)));
    futures_util::stream::iter(targets)
        .map(|(job, i)| {
            let rotator = &daemon.rotator;
            async move {
                let result = preflight(rotator, &job.cfg, &job.cfg.connections[i]).await;
                (job, i, result)
            }
        })
        .buffer_unordered(cfg.daemon.max_concurrent_rotations.max(8))
        .for_each(|(job, i, result)| {
            let conn = &job.cfg.connections[i];
            match result {
                Ok(c) => {
                    job.remember(i, &c);
                    tracing::debug!(job = %job.cfg.name, connection = %conn, "Pre-flight passed.");
                }
                Err(e) => {
                    tracing::error!(job = %job.cfg.name, connection = %conn, error = %e, "Pre-flight failed; the connection is skipped until it passes.");
                }
            }
            std::future::ready(())
        })
        .await;
    for job in daemon.jobs.values() {
        daemon
            .metrics
            .set_preflight(&job.cfg.name, job.preflight_ok());
    }
    daemon.update_job_gauges();

    // One cron entry per distinct (schedule, time zone), fanning out to its jobs: a cron
    // entry costs ~1.3 KB in tokio-cron-scheduler, a job in a group 8 bytes.
    /// (schedule, time zone name) → the zone and the jobs.
    type Groups<'a> = BTreeMap<(&'a str, &'a str), (chrono_tz::Tz, Vec<Arc<JobRuntime>>)>;
    let mut groups = Groups::new();
    for job in daemon.jobs.values() {
        if let Some(schedule) = &job.cfg.schedule {
            groups
                .entry((schedule.as_str(), job.cfg.timezone.name()))
                .or_insert_with(|| (job.cfg.timezone, Vec::new()))
                .1
                .push(job.clone());
        }
    }
    let scheduler = JobScheduler::new()
        .await
        .map_err(|e| StartError::Scheduler(e.to_string()))?;
    let cron_entries = groups.len();
    for ((schedule, _), (tz, jobs)) in groups {
        let group = Arc::new(ScheduleGroup {
            schedule: format!("{schedule} ({tz})"),
            jobs: jobs.into_boxed_slice(),
            dispatching: AtomicBool::new(false),
        });
        let d = daemon.clone();
        let first = group.jobs[0].cfg.name.clone();
        let g = group.clone();
        let cron = Job::new_async_tz(schedule, tz, move |_id, _l| {
            let d = d.clone();
            let g = g.clone();
            Box::pin(async move {
                if !d.cancel.is_cancelled() {
                    d.tracker.spawn(d.clone().dispatch(g, true));
                }
            })
        })
        .map_err(|e| StartError::Scheduler(format!("job {first}: {e}")))?;
        scheduler
            .add(cron)
            .await
            .map_err(|e| StartError::Scheduler(e.to_string()))?;
        tracing::debug!(schedule = %group.schedule, jobs = group.jobs.len(), "Scheduled.");
    }
    scheduler
        .start()
        .await
        .map_err(|e| StartError::Scheduler(e.to_string()))?;
    let on_start: Vec<Arc<JobRuntime>> = daemon
        .jobs
        .values()
        .filter(|j| j.cfg.run_on_start)
        .cloned()
        .collect();
    if !on_start.is_empty() {
        let group = Arc::new(ScheduleGroup {
            schedule: "run_on_start".to_owned(),
            jobs: on_start.into_boxed_slice(),
            dispatching: AtomicBool::new(false),
        });
        daemon.tracker.spawn(daemon.clone().dispatch(group, false));
    }
    daemon.ready.store(true, Ordering::SeqCst);
    tracing::info!(jobs = daemon.jobs.len(), "Daemon ready.");
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

impl Running {
    /// How many cron entries the scheduler holds: one per distinct (schedule, time zone).
    pub fn cron_entries(&self) -> usize {
        self.cron_entries
    }

    /// Stops starting rotations, waits for in-flight ones up to the grace period, then stops
    /// the admin listener. Returns whether everything finished in time.
    pub async fn shutdown(mut self) -> bool {
        let d = &self.daemon;
        d.cancel.cancel();
        let _ = self.scheduler.shutdown().await;
        d.tracker.close();
        tracing::info!(
            grace_s = self.grace.as_secs(),
            "Shutting down: waiting for in-flight rotations."
        );
        let finished = tokio::time::timeout(self.grace, d.tracker.wait())
            .await
            .is_ok();
        if finished {
            tracing::info!("All rotations finished; exiting.");
        } else {
            tracing::warn!(
                still_running = d.tracker.len(),
                "Grace period over; exiting with rotations still in flight."
            );
        }
        // A last try for a write that failed, then the lock goes.
        if let Err(e) = d.state.flush() {
            d.rotator.events().emit(StateWriteFailed {
                job: None,
                error: &e.to_string(),
                when: StateWriteWhen::Shutdown,
            });
        }
        d.state.close();
        self.admin_stop.cancel();
        let _ = self.admin_task.await;
        finished
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
