//! `qlik-rotator run`: scheduled rotations, the admin listener and graceful shutdown.
//!
//! Lifecycle in phases (linkerd2-proxy's `main` is the model):
//! 1. load: `commands::run` parses and validates the config (exit 64, nothing built);
//! 2. build: [`App::build`] locks the state directory, reads the credentials, builds the
//!    Qlik client, the secret sources and the metrics;
//! 3. spawn: [`spawn`] starts the admin listener (so `/healthz` and `/metrics` answer during
//!    pre-flight), pre-flights every connection, starts the scheduler and the `run_on_start`
//!    jobs, then reports ready;
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
        atomic::{AtomicBool, Ordering},
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
    admin::{self, Readiness, TriggerRequest},
    app::{self, App},
    config::{Config, ConfigInput},
    metrics::Metrics,
    runner::{JobRuntime, RetryPolicy, Runner},
};

/// The jobs of one cron entry.
struct ScheduleGroup {
    /// The schedule and time zone (for logs).
    schedule: String,
    jobs: Box<[Arc<JobRuntime>]>,
    /// A dispatch of this group is starting its jobs.
    dispatching: AtomicBool,
}

/// The daemon's shared core: its jobs, the runner and the tasks it started.
pub struct Daemon {
    jobs: BTreeMap<String, Arc<JobRuntime>>,
    runner: Arc<Runner>,
    tracker: TaskTracker,
    ready: Readiness,
    /// Whether the state backend answers ([`Daemon::watch_backend`]).
    backend_ok: Readiness,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("jobs", &self.jobs.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Daemon {
    /// The jobs, with the last success of each carried over from the state file.
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

    fn new(app: App, cfg: &Config, known_state: BTreeMap<String, crate::state::JobState>) -> Self {
        let now = chrono::Utc::now().timestamp();
        app.metrics.register_jobs(&cfg.jobs);
        let mut jobs = BTreeMap::new();
        for j in &cfg.jobs {
            // Carry the last success across restarts, so staleness alerts stay truthful: the
            // oldest of the job's connections counts.
            let times: Vec<i64> = (j.connections.iter())
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
                app.metrics.set_last_success(&j.name, oldest);
            }
            jobs.insert(j.name.clone(), Arc::new(JobRuntime::gated(j.clone())));
        }
        let retry = RetryPolicy::new(cfg.daemon.max_attempts_per_run);
        Daemon {
            jobs,
            runner: Arc::new(Runner::new(
                &app,
                cfg.daemon.max_concurrent_rotations,
                retry,
            )),
            tracker: TaskTracker::new(),
            backend_ok: Readiness::default(),
            ready: Readiness::default(),
        }
    }

    /// Whether the daemon is ready (scheduler running, pre-flight done, not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.get() && !self.cancel().is_cancelled()
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
        let Some(job) = self.jobs.get(name).cloned() else {
            return Triggered::UnknownJob;
        };
        if self.cancel().is_cancelled() {
            return Triggered::ShuttingDown;
        }
        self.spawn_run(job, force, None);
        Triggered::Started
    }

    /// Runs `job` on a task of its own, through the runner.
    fn spawn_run(
        self: &Arc<Self>,
        job: Arc<JobRuntime>,
        force: bool,
        permit: Option<OwnedSemaphorePermit>,
    ) {
        let this = self.clone();
        self.tracker.spawn(async move {
            let was_failing = !job.preflight_ok();
            let _ = this.runner.run_job(&job, force, permit).await;
            if was_failing {
                this.update_job_gauges();
            }
        });
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
        let delays: Vec<Duration> = {
            let mut rng = rand::rng();
            (group.jobs.iter())
                .map(|j| match j.cfg().jitter {
                    d if jitter && !d.is_zero() => rng.random_range(Duration::ZERO..=d),
                    _ => Duration::ZERO,
                })
                .collect()
        };
        stagger(
            delays,
            self.cancel(),
            || self.runner.slot(),
            |i, permit| self.spawn_run(group.jobs[i].clone(), false, Some(permit)),
        )
        .await;
        group.dispatching.store(false, Ordering::SeqCst);
    }

    /// Pre-flights every connection of every job (concurrently, at most `width` at once);
    /// failures are reported and skipped, the others run. Each result is kept (compactly) as
    /// it arrives, so the parsed GETs never pile up.
    async fn preflight_all(&self, width: usize) {
        let targets =
            (self.jobs.values()).flat_map(|j| (0..j.cfg().connections.len()).map(move |i| (j, i)));
        let rotator = self.runner.rotator();
        futures_util::stream::iter(targets)
            .map(|(job, i)| async move {
                let result = preflight(rotator, job.cfg(), &job.cfg().connections[i]).await;
                (job, i, result)
            })
            .buffer_unordered(width)
            .for_each(|(job, i, result)| {
                let (name, conn) = (&job.cfg().name, &job.cfg().connections[i]);
                match result {
                    Ok(c) => {
                        job.remember(i, &c);
                        tracing::debug!(job = %name, connection = %conn, "Pre-flight passed.");
                    }
                    Err(e) => {
                        tracing::error!(job = %name, connection = %conn, error = %e, "Pre-flight failed; the connection is skipped until it passes.");
                    }
                }
                std::future::ready(())
            })
            .await;
        for job in self.jobs.values() {
            self.metrics()
                .set_preflight(&job.cfg().name, job.preflight_ok());
        }
        self.update_job_gauges();
    }

    /// One cron entry per distinct (schedule, time zone), fanning out to its jobs: a cron
    /// entry costs ~1.3 KB in tokio-cron-scheduler, a job in a group 8 bytes. Returns the
    /// started scheduler and the number of entries.
    async fn schedule(self: &Arc<Self>) -> Result<(JobScheduler, usize), StartError> {
        /// (schedule, time zone name) → the zone and the jobs.
        type Groups<'a> = BTreeMap<(&'a str, &'a str), (chrono_tz::Tz, Vec<Arc<JobRuntime>>)>;
        let mut groups = Groups::new();
        for job in self.jobs.values() {
            if let Some(schedule) = &job.cfg().schedule {
                groups
                    .entry((schedule.as_str(), job.cfg().timezone.name()))
                    .or_insert_with(|| (job.cfg().timezone, Vec::new()))
                    .1
                    .push(job.clone());
            }
        }
        let scheduler_error =
            |e: tokio_cron_scheduler::JobSchedulerError| StartError::Scheduler(e.to_string());
        let scheduler = JobScheduler::new().await.map_err(scheduler_error)?;
        let cron_entries = groups.len();
        for ((schedule, _), (tz, jobs)) in groups {
            let first = jobs[0].cfg().name.clone();
            let group = Arc::new(ScheduleGroup {
                schedule: format!("{schedule} ({tz})"),
                jobs: jobs.into_boxed_slice(),
                dispatching: AtomicBool::new(false),
            });
            let (d, g) = (self.clone(), group.clone());
            let cron = Job::new_async_tz(schedule, tz, move |_id, _l| {
                let (d, g) = (d.clone(), g.clone());
                Box::pin(async move {
                    if !d.cancel().is_cancelled() {
                        d.tracker.spawn(d.clone().dispatch(g, true));
                    }
                })
            })
            .map_err(|e| StartError::Scheduler(format!("job {first}: {e}")))?;
            scheduler.add(cron).await.map_err(scheduler_error)?;
            tracing::debug!(schedule = %group.schedule, jobs = group.jobs.len(), "Scheduled.");
        }
        scheduler.start().await.map_err(scheduler_error)?;
        Ok((scheduler, cron_entries))
    }

    /// Starts every `run_on_start` job (without jitter).
    fn start_on_start(self: &Arc<Self>) {
        let jobs: Vec<Arc<JobRuntime>> = (self.jobs.values())
            .filter(|j| j.cfg().run_on_start)
            .cloned()
            .collect();
        if !jobs.is_empty() {
            let group = Arc::new(ScheduleGroup {
                schedule: "run_on_start".to_owned(),
                jobs: jobs.into_boxed_slice(),
                dispatching: AtomicBool::new(false),
            });
            self.tracker.spawn(self.clone().dispatch(group, false));
        }
    }

    /// Answers the admin listener's trigger requests until it stops sending.
    async fn serve_triggers(self: Arc<Self>, mut requests: mpsc::Receiver<TriggerRequest>) {
        while let Some(r) = requests.recv().await {
            let _ = r.reply.send(self.trigger(&r.job, r.force));
        }
    }

    fn update_job_gauges(&self) {
        let failed = self.jobs.values().filter(|j| !j.preflight_ok()).count();
        self.metrics().set_jobs(self.jobs.len() - failed, failed);
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
    /// The scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
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

/// The spawn phase: admin listener, pre-flight, scheduler, `run_on_start` jobs; then ready.
///
/// # Errors
/// [`StartError`] when the listener cannot bind or the scheduler fails.
pub async fn spawn(
    app: App,
    cfg: &Config,
    admin_token: Option<SecretString>,
) -> Result<Running, StartError> {
    let known_state = app.state.load().await.unwrap_or_else(|e| {
        tracing::warn!(error = %crate::text::Escaped(&e.to_string()), "Cannot read the applied versions; last-success times start empty.");
        BTreeMap::new()
    });
    let daemon = Arc::new(Daemon::new(app, cfg, known_state));
    daemon.tracker.spawn(daemon.runner.clone().state_flusher());
    tokio::spawn(
        daemon
            .runner
            .clone()
            .history_pruner(cfg.state.history_retention),
    );
    // The admin listener first, so /healthz and /metrics answer during pre-flight.
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
    let handle = admin::Handle {
        metrics: daemon.metrics().clone(),
        ready: daemon.ready.clone(),
        backend_ok: daemon.backend_ok.clone(),
        trigger,
    };
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        handle,
        admin_token,
        admin_stop.clone(),
    ));
    tracing::info!(%addr, "Serving /metrics, /healthz, /readyz.");
    daemon
        .preflight_all(cfg.daemon.max_concurrent_rotations.max(8))
        .await;
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
    daemon.start_on_start();
    daemon.ready.set(true);
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
        d.ready.set(false);
        d.cancel().cancel();
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
        // A failure is logged and counted by the StateWriteFailed event close_state emits.
        let _ = d.runner.close_state().await;
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

#[cfg(test)]
mod tests {
    //! The scheduling core on paused tokio time: no network, no real clock.
    use std::sync::Mutex;

    use tokio::{sync::Semaphore, time::Instant};

    use super::*;

    /// Runs [`stagger`] over `delays` with `slots` rotation slots; each started job holds its
    /// slot for `hold`. Returns (job, start offset) in start order.
    async fn starts(delays: &[u64], slots: usize, hold: Duration) -> Vec<(usize, Duration)> {
        let t0 = Instant::now();
        let limit = Arc::new(Semaphore::new(slots));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tracker = TaskTracker::new();
        stagger(
            delays.iter().map(|s| Duration::from_secs(*s)).collect(),
            &CancellationToken::new(),
            || {
                let l = limit.clone();
                async move { l.acquire_owned().await.ok() }
            },
            |i, permit| {
                log.lock().unwrap().push((i, t0.elapsed()));
                tracker.spawn(async move {
                    tokio::time::sleep(hold).await;
                    drop(permit);
                });
            },
        )
        .await;
        tracker.close();
        tracker.wait().await;
        Arc::try_unwrap(log).unwrap().into_inner().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn jobs_start_in_order_of_their_jitter_delay_and_not_before_it() {
        let got = starts(&[30, 0, 5, 5, 1], 10, Duration::ZERO).await;
        let secs: Vec<(usize, u64)> = got.iter().map(|(i, d)| (*i, d.as_secs())).collect();
        assert_eq!(secs, [(1, 0), (4, 1), (2, 5), (3, 5), (0, 30)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_job_waits_for_a_free_rotation_slot() {
        // Two slots, each run holds its slot 10 s: jobs start in pairs, 10 s apart.
        let got = starts(&[0, 0, 0, 0, 0], 2, Duration::from_secs(10)).await;
        let secs: Vec<u64> = got.iter().map(|(_, d)| d.as_secs()).collect();
        assert_eq!(secs, [0, 0, 10, 10, 20]);
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_stops_starting_jobs_even_during_a_delay() {
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(7)).await;
            c.cancel();
        });
        let mut started = Vec::new();
        stagger(
            [0, 5, 60, 3600].map(Duration::from_secs).to_vec(),
            &cancel,
            || async { Some(()) },
            |i, ()| started.push(i),
        )
        .await;
        assert_eq!(started, [0, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_closed_slot_source_ends_the_dispatch() {
        let mut started = Vec::new();
        let mut given = 0;
        stagger(
            vec![Duration::ZERO; 4],
            &CancellationToken::new(),
            || {
                given += 1;
                std::future::ready((given <= 2).then_some(()))
            },
            |i, ()| started.push(i),
        )
        .await;
        assert_eq!(started, [0, 1]);
    }
}
