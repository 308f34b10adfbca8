//! Every Prometheus metric the daemon exports, declared and registered in one place.
//!
//! Names carry the `qlik_rotator_` prefix and follow Prometheus naming rules. Labels are
//! bounded: job names and connectors come from config, stages/outcomes/error types are fixed
//! enums, Qlik endpoints are path templates. No secret and no raw error text is ever a label.
//! The per-job label is `rotation_job`, not `job`: `job` is the Prometheus scrape job's own
//! label, and a series carrying its own `job` needed `honor_labels` to keep it.
//!
//! The methods take plain label values (`&str`, numbers); nothing here knows about rotations.
//! Code does not call them directly: it emits a typed event ([`crate::events`]), which writes
//! the log line and updates these metrics together.
//!
//! Two kinds of storage sit behind one exposition:
//! - process-wide and per-connector series (Qlik requests, secret reads, 429s, jobs by state,
//!   the duration histogram, the last attempt, build info) and the sparse `errors_total` live
//!   in a `prometheus` [`Registry`];
//! - the per-job series live in a compact table, [`JobTable`]: the gauges the alerts need
//!   (`job_max_age_seconds`, `job_preflight_ok`, `last_success_timestamp_seconds`,
//!   `secret_created_timestamp_seconds`), `rotations_total{rotation_job, outcome}` and the opt-in per-job duration histogram;
//!   about 200 bytes per job instead of the ~3.6 KB that `prometheus` children cost. A
//!   daemon with 10,000 jobs keeps them in ~2 MB, and `/metrics` streams them out in chunks
//!   ([`Metrics::render_chunks`]) rather than building the whole exposition in memory.
//!
//! `/metrics` at 10,000 jobs stays under 3 MB (bench section `metrics`) because a per-job
//! series costs ~70-90 bytes per scrape and only what the alerts and the dashboard need is
//! per job:
//! - `rotations_total{rotation_job, outcome}` series appear with their first count (no
//!   pre-created zeros: four outcomes per job were 3.9 of the 6.8 MB one scrape weighed), and
//!   carry no `connector` label (a job has one connector; `rotation_duration_seconds` is the
//!   per-connector view). The alerts on it count a series that appears within their window
//!   (deploy/prometheus/rules.yml).
//! - successes are counted per connector: `rotated` in `rotations_rotated_total{connector}`,
//!   `unchanged` (the outcome of nearly every run once a job is current) in
//!   `rotations_unchanged_total{connector}`. Per job each added a series to every job (0.78 MB
//!   each at 10,000 jobs) and alerted on nothing; `last_success_timestamp_seconds` and
//!   `secret_created_timestamp_seconds` say per job when it was last found current and which
//!   version it holds. Failures stay per job (the alerts need them). Setting
//!   `metrics.per_job_rotated` / `metrics.per_job_unchanged = true` counts them in
//!   `rotations_total` per job as well.
//! - `job_preflight_ok` is exported only while a job fails pre-flight (value 0): the passing
//!   state of every job was 0.59 MB and alerted on nothing; `jobs{state}` counts both.
//! - the duration histogram is per connector (`rotation_duration_seconds{connector}`): per job,
//!   its 14 lines were 10.3 of the 16.4 MB that one scrape weighed. Setting
//!   `metrics.per_job_duration_histogram = true` adds the per-job one back as
//!   `rotation_job_duration_seconds{rotation_job}`.
//! - the last attempt is per connector (`last_attempt_timestamp_seconds{connector}`); per job it
//!   alerted on nothing.

use std::{
    fmt::Write as _,
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::config::JobConfig;

/// Which opt-in per-job series a [`Metrics`] exports (config keys under `[metrics]`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerJob {
    /// `rotation_job_duration_seconds{rotation_job}` (`per_job_duration_histogram`; 14 lines
    /// per job).
    pub duration_histogram: bool,
    /// `rotations_total{rotation_job, outcome="unchanged"}` (`per_job_unchanged`; one line per
    /// job once it has been found current).
    pub unchanged: bool,
    /// `rotations_total{rotation_job, outcome="rotated"}` (`per_job_rotated`; one line per job
    /// once it has rotated).
    pub rotated: bool,
}

/// The outcome labels of `rotations_total` (a job's series of an outcome appears with its first
/// count; `rotated` only with [`PerJob::rotated`], `unchanged` only with [`PerJob::unchanged`]).
pub const OUTCOMES: [&str; 6] = [
    "rotated",
    "unchanged",
    "failed",
    "verify_failed",
    "canary_failed",
    "rolled_back",
];

/// The index of `rotated` in [`OUTCOMES`].
const ROTATED_OUTCOME: usize = 0;
/// The index of `unchanged` in [`OUTCOMES`].
const UNCHANGED_OUTCOME: usize = 1;

/// The stage labels, pre-created in `rotation_retries_total`.
pub const STAGES: [&str; 6] = ["fetch", "resolve", "build", "apply", "verify", "canary"];

/// Upper bounds of `rotation_duration_seconds` (the `+Inf` bucket is implied).
pub const DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// A metric's declaration: its name (without the `qlik_rotator_` prefix), HELP text and label
/// names. Every metric is one such constant; [`Metrics::with_per_job_histogram`] registers
/// them and [`DECLARED`] lists them all (the README's metrics table is checked against it).
#[derive(Debug, Clone, Copy)]
pub struct Def {
    /// The name without the prefix.
    pub name: &'static str,
    /// The HELP text.
    pub help: &'static str,
    /// The label names (empty for a single series).
    pub labels: &'static [&'static str],
}

const fn def(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Def {
    Def { name, help, labels }
}

const ERRORS: Def = def(
    "errors_total",
    "Failed runs (after their last attempt) by rotation job, stage (fetch, resolve, build, apply, verify) and error type.",
    &["rotation_job", "stage", "error_type"],
);
const RETRIES: Def = def(
    "rotation_retries_total",
    "Failed attempts that were retried within their run, by stage (the error type is in the log line).",
    &["stage"],
);
const ROTATION_DURATION: Def = def(
    "rotation_duration_seconds",
    "Wall time of one rotation run (fetch, PATCH, verify), by connector.",
    &["connector"],
);
const UNCHANGED: Def = def(
    "rotations_unchanged_total",
    "Runs of a connection that found it already current (outcome unchanged), by connector; counted per job as well only with metrics.per_job_unchanged.",
    &["connector"],
);
const ROTATED: Def = def(
    "rotations_rotated_total",
    "Runs of a connection that applied a new secret version and verified it (outcome rotated), by connector; counted per job as well only with metrics.per_job_rotated.",
    &["connector"],
);
const LAST_ATTEMPT: Def = def(
    "last_attempt_timestamp_seconds",
    "Unix time of the last run of any job of the connector, whatever its outcome.",
    &["connector"],
);
const QLIK_REQUESTS: Def = def(
    "qlik_requests_total",
    "HTTP requests to Qlik by method, endpoint template and status (or 'error').",
    &["method", "endpoint", "status"],
);
const QLIK_REQUEST_DURATION: Def = def(
    "qlik_request_duration_seconds",
    "Latency of HTTP requests to Qlik.",
    &["method", "endpoint"],
);
const SECRET_FETCHES: Def = def(
    "secret_fetches_total",
    "Secret reads by source type and outcome (ok, error).",
    &["source", "outcome"],
);
const RATE_LIMITED: Def = def("rate_limited_total", "Qlik answers with HTTP 429.", &[]);
const JOBS: Def = def(
    "jobs",
    "Configured jobs by state (scheduled, preflight_failed).",
    &["state"],
);
const BUILD_INFO: Def = def(
    "build_info",
    "Always 1; the version label says which build runs.",
    &["version"],
);
const START_TIME: Def = def(
    "start_time_seconds",
    "Unix time the metrics were created (the daemon's start): every counter counts from here.",
    &[],
);
const IN_FLIGHT: Def = def("rotations_in_flight", "Rotations running right now.", &[]);
const STATE_WRITE_FAILURES: Def = def(
    "state_write_failures_total",
    "Failed writes of the state file (the applied versions are kept in memory and the write is retried).",
    &[],
);
const STATE_WRITABLE: Def = def(
    "state_writable",
    "1 when the state file holds everything the daemon applied; 0 while a write is failing.",
    &[],
);
const LEASE_SKIPS: Def = def(
    "lease_skips_total",
    "Runs skipped (or results not recorded) for want of the job's lease, by reason (held_elsewhere, lost, backend_error).",
    &["reason"],
);
/// The reason labels of `lease_skips_total`, pre-created.
pub const LEASE_SKIP_REASONS: [&str; 3] = ["held_elsewhere", "lost", "backend_error"];
const SPEC_WARNINGS: Def = def(
    "spec_warnings_total",
    "api-specs declarations a catalogue connector's writes do not match (type or enum of a file array or mode constant); rotated anyway.",
    &["connector_type"],
);
const VERIFY_WARNINGS: Def = def(
    "verify_warnings_total",
    "Verify findings from rules without a published source (not failures), by rule.",
    &["rule"],
);

const PREFLIGHT_PENDING: Def = def(
    "preflight_pending",
    "Connections whose start-up pre-flight GET has not finished yet (0 once pre-flight is done); pre-flight runs after /readyz turns ready, under the read budget.",
    &[],
);
const UNMANAGED: Def = def(
    "unmanaged_connections",
    "Credential-bearing connections no job manages, from the daemon's last coverage scan (after pre-flight, then hourly; -1 until a scan succeeds).",
    &[],
);
const CONFIG_RELOADS: Def = def(
    "config_reloads_total",
    "Configuration reloads on SIGHUP by result: ok (applied), invalid (the file has errors; the running configuration stays), refused (a section other than [[jobs]] changed; needs a restart).",
    &["result"],
);
const CONFIG_INFO: Def = def(
    "config_info",
    "Always 1; sha256 is the first 16 hex digits of the running configuration file's SHA-256.",
    &["sha256"],
);
const CONFIG_LOADED: Def = def(
    "config_loaded_timestamp_seconds",
    "Unix time the running configuration was loaded (at start, or by the last successful reload).",
    &[],
);

/// The `result` labels of `config_reloads_total`, pre-created.
pub const RELOAD_RESULTS: [&str; 3] = ["ok", "invalid", "refused"];

/// Upper bounds of `qlik_request_duration_seconds` (the `+Inf` bucket is implied).
const REQUEST_BUCKETS: [f64; 11] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The label names of the series that also carry `tenant` when the configuration declares
/// `[tenants.NAME]` ([`Metrics::with_options`]); the per-job table's families add it too.
const TENANT_LABELS: [(&str, &[&str]); 5] = [
    (
        "errors_total",
        &["rotation_job", "stage", "error_type", "tenant"],
    ),
    (
        "qlik_requests_total",
        &["method", "endpoint", "status", "tenant"],
    ),
    (
        "qlik_request_duration_seconds",
        &["method", "endpoint", "tenant"],
    ),
    ("rate_limited_total", &["tenant"]),
    ("unmanaged_connections", &["tenant"]),
];

/// Every metric: the registry's, then the per-job table's ([`JOB_FAMILIES`]).
pub const DECLARED: [Def; 30] = [
    ERRORS,
    RETRIES,
    ROTATION_DURATION,
    UNCHANGED,
    ROTATED,
    LAST_ATTEMPT,
    QLIK_REQUESTS,
    QLIK_REQUEST_DURATION,
    SECRET_FETCHES,
    RATE_LIMITED,
    JOBS,
    BUILD_INFO,
    START_TIME,
    IN_FLIGHT,
    STATE_WRITE_FAILURES,
    STATE_WRITABLE,
    PREFLIGHT_PENDING,
    LEASE_SKIPS,
    SPEC_WARNINGS,
    VERIFY_WARNINGS,
    UNMANAGED,
    CONFIG_RELOADS,
    CONFIG_INFO,
    CONFIG_LOADED,
    JOB_FAMILIES[0].def,
    JOB_FAMILIES[1].def,
    JOB_FAMILIES[2].def,
    JOB_FAMILIES[3].def,
    JOB_FAMILIES[4].def,
    JOB_FAMILIES[5].def,
];

/// The series of the `[events]` consumer, registered only when it runs
/// ([`Metrics::register_events`]).
pub const EVENT_DECLARED: [Def; 4] = [
    def(
        "event_messages_total",
        "Messages of the [events] queue by result: received, then one of deleted (its jobs ran), unmatched (no job uses the secret; deleted), rejected (not a usable event; deleted) or failed (a job failed; left for redelivery and, after the queue's redrive count, the DLQ).",
        &["result"],
    ),
    def(
        "event_messages_rejected_total",
        "Messages of the [events] queue deleted unused, by reason.",
        &["reason"],
    ),
    def(
        "event_receive_errors_total",
        "Failed ReceiveMessage or DeleteMessage calls on the [events] queue.",
        &[],
    ),
    def(
        "event_dlq_messages",
        "Messages in the dead-letter queue of the [events] queue (ApproximateNumberOfMessages; -1 until read or when the queue has no redrive policy).",
        &[],
    ),
];

/// The series of the `[[notify]]` webhooks, registered only when some are configured
/// ([`Metrics::register_notify`]).
pub const NOTIFY_DECLARED: [Def; 1] = [def(
    "notifications_total",
    "Webhook notifications ([[notify]]) by result: sent (answered 2xx), failed (after the retries, or refused: 3xx not followed, 4xx) or dropped (the notifier's queue was full).",
    &["result"],
)];

/// The `result` labels of `notifications_total`, pre-created.
pub const NOTIFY_RESULTS: [&str; 3] = ["sent", "failed", "dropped"];

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Whether per-job and per-request series carry a `tenant` label (the configuration
    /// declares `[tenants.NAME]`); without, the exposition is as before tenants.
    tenant_label: bool,
    jobs_table: Arc<JobTable>,
    errors: IntCounterVec,
    retries: IntCounterVec,
    rotation_duration: HistogramVec,
    unchanged: IntCounterVec,
    rotated: IntCounterVec,
    last_attempt: IntGaugeVec,
    qlik_requests: IntCounterVec,
    qlik_request_duration: HistogramVec,
    secret_fetches: IntCounterVec,
    rate_limited: IntCounterVec,
    jobs: IntGaugeVec,
    build_info: IntGaugeVec,
    start_time: IntGauge,
    in_flight: IntGauge,
    state_write_failures: IntCounter,
    state_writable: IntGauge,
    preflight_pending: IntGauge,
    lease_skips: IntCounterVec,
    unmanaged: IntGaugeVec,
    config_reloads: IntCounterVec,
    config_info: IntGaugeVec,
    config_loaded: IntGauge,
    spec_warnings: IntCounterVec,
    verify_warnings: IntCounterVec,
    /// The `[events]` consumer's series: registered by [`Metrics::register_events`] only when
    /// the daemon consumes events.
    events: Arc<std::sync::OnceLock<EventMetrics>>,
    /// `notifications_total`: registered by [`Metrics::register_notify`].
    notifications: Arc<std::sync::OnceLock<IntCounterVec>>,
}

/// The series of the `[events]` consumer ([`crate::triggers::sqs`]).
#[derive(Debug, Clone)]
struct EventMetrics {
    messages: IntCounterVec,
    rejected: IntCounterVec,
    receive_errors: IntCounter,
    dlq_messages: IntGauge,
}

/// The `result` labels of `event_messages_total`, pre-created.
pub const EVENT_RESULTS: [&str; 5] = ["received", "deleted", "unmatched", "rejected", "failed"];

/// Registers `c` in `r` and returns it.
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

fn opts(d: &Def) -> Opts {
    Opts::new(d.name, d.help)
}

fn counter_vec(r: &Registry, d: &Def) -> IntCounterVec {
    reg(r, IntCounterVec::new(opts(d), d.labels).expect("valid"))
}

fn gauge_vec(r: &Registry, d: &Def) -> IntGaugeVec {
    reg(r, IntGaugeVec::new(opts(d), d.labels).expect("valid"))
}

fn histogram_vec(r: &Registry, d: &Def, buckets: &[f64]) -> HistogramVec {
    let o = HistogramOpts::new(d.name, d.help).buckets(buckets.to_vec());
    reg(r, HistogramVec::new(o, d.labels).expect("valid"))
}

fn counter(r: &Registry, d: &Def) -> IntCounter {
    reg(r, IntCounter::with_opts(opts(d)).expect("valid"))
}

fn gauge(r: &Registry, d: &Def) -> IntGauge {
    reg(r, IntGauge::with_opts(opts(d)).expect("valid"))
}

impl Metrics {
    /// Creates and registers every metric, without the opt-in per-job series.
    pub fn new() -> Self {
        Self::with_per_job(PerJob::default())
    }

    /// As [`Metrics::new`], with `rotation_job_duration_seconds{rotation_job}` when
    /// `per_job_histogram` (config key `metrics.per_job_duration_histogram`; 14 lines per job).
    pub fn with_per_job_histogram(per_job_histogram: bool) -> Self {
        Self::with_per_job(PerJob {
            duration_histogram: per_job_histogram,
            ..PerJob::default()
        })
    }

    /// As [`Metrics::new`], with the opt-in per-job series `opt_in` asks for.
    pub fn with_per_job(opt_in: PerJob) -> Self {
        Self::with_options(opt_in, false)
    }

    /// As [`Metrics::with_per_job`]; with `tenant_label` (a configuration with
    /// `[tenants.NAME]`), the per-job series (`rotations_total`, `errors_total`, the job
    /// gauges) and the per-request ones (`qlik_requests_total`,
    /// `qlik_request_duration_seconds`, `rate_limited_total`) carry a `tenant` label: the
    /// job's tenant, the requesting client's. Its values are tenant names from the
    /// configuration, so it stays bounded.
    pub fn with_options(opt_in: PerJob, tenant_label: bool) -> Self {
        let r = Registry::new_custom(Some("qlik_rotator".into()), None)
            .expect("the prefix is a valid metric name");
        let with_tenant = |d: &Def| -> Def {
            match TENANT_LABELS.iter().find(|(name, _)| *name == d.name) {
                Some((_, labels)) if tenant_label => Def { labels, ..*d },
                _ => *d,
            }
        };
        let m = Metrics {
            tenant_label,
            jobs_table: Arc::new(JobTable {
                opt_in,
                ..JobTable::default()
            }),
            errors: counter_vec(&r, &with_tenant(&ERRORS)),
            retries: counter_vec(&r, &RETRIES),
            rotation_duration: histogram_vec(&r, &ROTATION_DURATION, &DURATION_BUCKETS),
            unchanged: counter_vec(&r, &UNCHANGED),
            rotated: counter_vec(&r, &ROTATED),
            last_attempt: gauge_vec(&r, &LAST_ATTEMPT),
            qlik_requests: counter_vec(&r, &with_tenant(&QLIK_REQUESTS)),
            qlik_request_duration: histogram_vec(
                &r,
                &with_tenant(&QLIK_REQUEST_DURATION),
                &REQUEST_BUCKETS,
            ),
            secret_fetches: counter_vec(&r, &SECRET_FETCHES),
            rate_limited: counter_vec(&r, &with_tenant(&RATE_LIMITED)),
            jobs: gauge_vec(&r, &JOBS),
            build_info: gauge_vec(&r, &BUILD_INFO),
            start_time: gauge(&r, &START_TIME),
            in_flight: gauge(&r, &IN_FLIGHT),
            state_write_failures: counter(&r, &STATE_WRITE_FAILURES),
            state_writable: gauge(&r, &STATE_WRITABLE),
            spec_warnings: counter_vec(&r, &SPEC_WARNINGS),
            verify_warnings: counter_vec(&r, &VERIFY_WARNINGS),
            preflight_pending: gauge(&r, &PREFLIGHT_PENDING),
            lease_skips: counter_vec(&r, &LEASE_SKIPS),
            unmanaged: gauge_vec(&r, &with_tenant(&UNMANAGED)),
            config_reloads: counter_vec(&r, &CONFIG_RELOADS),
            config_info: gauge_vec(&r, &CONFIG_INFO),
            config_loaded: gauge(&r, &CONFIG_LOADED),
            registry: r,
            events: Arc::default(),
            notifications: Arc::default(),
        };
        for stage in STAGES {
            m.retries.with_label_values(&[stage]).reset();
        }
        for rule in crate::connectors::VERIFY_WARNING_RULES {
            m.verify_warnings.with_label_values(&[rule]).reset();
        }
        if !tenant_label {
            // The one series, 0 until the first 429 (as an unlabelled counter shows).
            m.rate_limited.with_label_values(&[] as &[&str]).reset();
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.start_time.set(chrono::Utc::now().timestamp());
        for reason in LEASE_SKIP_REASONS {
            m.lease_skips.with_label_values(&[reason]).reset();
        }
        if !tenant_label {
            m.unmanaged.with_label_values(&[] as &[&str]).set(-1);
        }
        for result in RELOAD_RESULTS {
            m.config_reloads.with_label_values(&[result]).reset();
        }
        // `qlik-rotator run` sets the file's hash at once; until then (and for a daemon
        // started as a library) the configuration is "unknown".
        m.set_config("unknown", chrono::Utc::now().timestamp());
        m
    }

    /// Adds the jobs to the per-job table (their gauges are exported from now on; counters
    /// appear with their first count) and pre-creates the per-connector duration histogram
    /// `rotations_rotated_total` and `rotations_unchanged_total`. Call once with all jobs (a later call adds to the
    /// table; a job name seen twice keeps its first entry).
    /// `spec_warnings_total` is pre-created for the connector of every catalogue job (the only
    /// jobs that can warn).
    pub fn register_jobs<'a>(&self, jobs: impl IntoIterator<Item = &'a JobConfig>) {
        let jobs: Vec<&JobConfig> = jobs.into_iter().collect();
        if self.tenant_label {
            let mut tenants: Vec<&str> = jobs.iter().map(|j| &*j.tenant).collect();
            tenants.sort_unstable();
            tenants.dedup();
            for t in tenants {
                self.rate_limited.with_label_values(&[t]).reset();
            }
        }
        for job in &jobs {
            self.rotation_duration.with_label_values(&[job.connector()]);
            if !job.spec.is_generic() {
                self.spec_warnings
                    .with_label_values(&[spec_warning_label(&job.spec.datasource)]);
            }
        }
        self.jobs_table
            .register(jobs, self.tenant_label, |connector| ConnectorCounters {
                rotated: self.rotated.with_label_values(&[connector]),
                unchanged: self.unchanged.with_label_values(&[connector]),
            });
    }

    /// The `tenant` label value of `job`'s series (`None` without the label, or for a job
    /// never registered).
    fn job_tenant(&self, job: &str) -> Option<Arc<str>> {
        if !self.tenant_label {
            return None;
        }
        self.jobs_table.tenant(job)
    }

    /// Sets a job's pre-flight result (`job_preflight_ok`, exported only while it fails).
    pub fn set_preflight(&self, job: &str, ok: bool) {
        self.jobs_table.with(job, |s| s.preflight_ok = Some(ok));
    }

    /// Sets `jobs{state}`.
    pub fn set_jobs(&self, scheduled: usize, preflight_failed: usize) {
        self.jobs
            .with_label_values(&["scheduled"])
            .set(scheduled as i64);
        self.jobs
            .with_label_values(&["preflight_failed"])
            .set(preflight_failed as i64);
    }

    /// The `secret_created_timestamp_seconds` of `job`, when a read reported it.
    pub fn secret_created(&self, job: &str) -> Option<i64> {
        let mut out = None;
        self.jobs_table.with(job, |s| out = s.secret_created);
        out
    }

    /// Sets `secret_created_timestamp_seconds{rotation_job}`.
    pub fn set_secret_created(&self, job: &str, unix: i64) {
        self.jobs_table.with(job, |s| s.secret_created = Some(unix));
    }

    /// Counts a reload (`config_reloads_total{result}`).
    pub fn count_reload(&self, result: &str) {
        self.config_reloads.with_label_values(&[result]).inc();
    }

    /// The running configuration: `config_info{sha256}` (the one series) and
    /// `config_loaded_timestamp_seconds`.
    pub fn set_config(&self, sha256: &str, loaded_unix: i64) {
        self.config_info.reset();
        self.config_info.with_label_values(&[sha256]).set(1);
        self.config_loaded.set(loaded_unix);
    }

    /// Drops every series of the jobs `names` (removed or replaced by a reload): the per-job
    /// table's and `errors_total`'s.
    pub fn unregister_jobs(&self, names: &[String]) {
        self.jobs_table.unregister(names);
        use prometheus::core::Collector as _;
        for family in self.errors.collect() {
            for m in family.get_metric() {
                let labels: Vec<(&str, &str)> = m
                    .get_label()
                    .iter()
                    .map(|l| (l.name(), l.value()))
                    .collect();
                let get = |k: &str| labels.iter().find(|(n, _)| *n == k).map(|(_, v)| *v);
                if let (Some(job), Some(stage), Some(error_type)) =
                    (get("rotation_job"), get("stage"), get("error_type"))
                    && names.iter().any(|n| n == job)
                {
                    let _ = match get("tenant") {
                        Some(t) => self
                            .errors
                            .remove_label_values(&[job, stage, error_type, t]),
                        None => self.errors.remove_label_values(&[job, stage, error_type]),
                    };
                }
            }
        }
    }

    /// Pre-creates the per-tenant series of a configuration with `[tenants.NAME]`:
    /// `unmanaged_connections{tenant}` at -1 (no scan yet) for each of `tenants`. Nothing
    /// without the `tenant` label.
    pub fn register_tenants<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) {
        if self.tenant_label {
            for t in tenants {
                self.unmanaged.with_label_values(&[t]).set(-1);
            }
        }
    }

    /// Sets `unmanaged_connections` (the last coverage scan's count), of `tenant` when the
    /// series carry the `tenant` label.
    pub fn set_unmanaged(&self, tenant: Option<&str>, unmanaged: i64) {
        if self.tenant_label {
            self.unmanaged
                .with_label_values(&[tenant.unwrap_or_default()])
                .set(unmanaged);
        } else {
            self.unmanaged
                .with_label_values(&[] as &[&str])
                .set(unmanaged);
        }
    }

    /// Sets `preflight_pending` (connections still waiting for their start-up pre-flight).
    pub fn set_preflight_pending(&self, pending: usize) {
        self.preflight_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Sets a job's last success time (from the state file at start).
    pub fn set_last_success(&self, job: &str, unix: i64) {
        self.jobs_table.with(job, |s| s.last_success = Some(unix));
    }

    /// Counts a failed state write; `state_writable` drops to 0 until a write succeeds.
    pub fn state_write_failed(&self) {
        self.state_write_failures.inc();
        self.state_writable.set(0);
    }

    /// Counts a run skipped for want of its lease (`lease_skips_total{reason}`).
    pub fn lease_skipped(&self, reason: &str) {
        self.lease_skips.with_label_values(&[reason]).inc();
    }

    /// Sets `state_writable`.
    pub fn set_state_writable(&self, writable: bool) {
        self.state_writable.set(i64::from(writable));
    }

    /// Records a secret read.
    pub fn secret_fetch(&self, source: &str, ok: bool) {
        self.secret_fetches
            .with_label_values(&[source, if ok { "ok" } else { "error" }])
            .inc();
    }

    /// Marks a rotation as started; the guard marks it finished.
    pub fn start_rotation(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// Counts one connection's outcome of a run in `rotations_total` (`outcome` is one of
    /// [`OUTCOMES`]; anything else, and a job never registered, is not counted). A job's
    /// series of an outcome appears with its first count. `rotated` and `unchanged` are
    /// counted in `rotations_rotated_total` / `rotations_unchanged_total` under the job's
    /// configured connector, and per job only with [`PerJob::rotated`] / [`PerJob::unchanged`].
    pub fn count_outcome(&self, job: &str, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.jobs_table.count_outcome(job, i);
        }
    }

    /// Records one finished run of a job: the duration (per connector, and per job when
    /// enabled), the connector's last attempt and the job's last success (only when
    /// `success`, i.e. every connection of the run ended well). `connector` is the job's
    /// configured connector.
    pub fn observe_run(&self, job: &str, connector: &str, duration: Duration, success: bool) {
        let now = chrono::Utc::now().timestamp();
        let secs = duration.as_secs_f64();
        self.rotation_duration
            .with_label_values(&[connector])
            .observe(secs);
        self.last_attempt.with_label_values(&[connector]).set(now);
        let histogram = self.jobs_table.opt_in.duration_histogram;
        self.jobs_table.with(job, |s| {
            if histogram {
                (s.durations.get_or_insert_with(Box::default)).observe(secs);
            }
            if success {
                s.last_success = Some(now);
            }
        });
    }

    /// Counts one api-specs warning of a catalogue connector (`connector_type` is a catalogue
    /// `datasourceID`; anything else is counted as `other`, so the label stays bounded).
    pub fn spec_warning(&self, connector_type: &str) {
        self.spec_warnings
            .with_label_values(&[spec_warning_label(connector_type)])
            .inc();
    }

    /// Counts one verify warning; `rule` is one of [`crate::connectors::VERIFY_WARNING_RULES`].
    pub fn verify_warning(&self, rule: &'static str) {
        self.verify_warnings.with_label_values(&[rule]).inc();
    }

    /// Counts one failed run in `errors_total` (once per run and connection, after the last
    /// attempt: the sum over a job equals its `failed` + `verify_failed` outcomes).
    /// Its `tenant` is the job's, also for a fan-out connection in another tenant, on purpose:
    /// a job's series all carry one tenant, as `rotations_total` (which the alerts sum `by
    /// (rotation_job, tenant)`) does, so the two agree per job and tenant and route to the
    /// job's owner; the tenant that answered is on `qlik_requests_total{tenant}`.
    pub fn count_error(&self, job: &str, stage: &str, error_type: &str) {
        match self.job_tenant(job) {
            Some(t) => self.errors.with_label_values(&[job, stage, error_type, &t]),
            None if self.tenant_label => return,
            None => self.errors.with_label_values(&[job, stage, error_type]),
        }
        .inc();
    }

    /// Counts one failed attempt that is retried within its run (`stage` is one of
    /// [`STAGES`]).
    pub fn count_retry(&self, stage: &str) {
        self.retries.with_label_values(&[stage]).inc();
    }

    /// Counts one HTTP exchange with Qlik (`status` is the HTTP status or `error`).
    pub fn qlik_request(&self, method: &str, endpoint: &str, status: &str, elapsed: Duration) {
        self.tenant_request(None, method, endpoint, status, elapsed);
    }

    /// [`Metrics::qlik_request`] of a client of `tenant` (the label is set only when the
    /// metrics carry one; a request without a tenant is then counted under `tenant=""`).
    pub fn tenant_request(
        &self,
        tenant: Option<&str>,
        method: &str,
        endpoint: &str,
        status: &str,
        elapsed: Duration,
    ) {
        let t = tenant.unwrap_or("");
        let (counted, timed): (&[&str], &[&str]) = if self.tenant_label {
            (&[method, endpoint, status, t], &[method, endpoint, t])
        } else {
            (&[method, endpoint, status], &[method, endpoint])
        };
        self.qlik_requests.with_label_values(counted).inc();
        self.qlik_request_duration
            .with_label_values(timed)
            .observe(elapsed.as_secs_f64());
    }

    /// Registers the series of the `[events]` consumer (once; later calls do nothing):
    /// `event_messages_total{result}` ([`EVENT_RESULTS`]), `event_messages_rejected_total{reason}`
    /// (`reasons` pre-created), `event_receive_errors_total` and `event_dlq_messages`.
    pub fn register_events(&self, reasons: &[&str]) {
        let r = &self.registry;
        self.events.get_or_init(|| {
            let [messages, rejected, receive_errors, dlq_messages] = &EVENT_DECLARED;
            let m = EventMetrics {
                messages: counter_vec(r, messages),
                rejected: counter_vec(r, rejected),
                receive_errors: counter(r, receive_errors),
                dlq_messages: gauge(r, dlq_messages),
            };
            for result in EVENT_RESULTS {
                m.messages.with_label_values(&[result]).reset();
            }
            for reason in reasons {
                m.rejected.with_label_values(&[reason]).reset();
            }
            m.dlq_messages.set(-1);
            m
        });
    }

    /// Counts a message of the `[events]` queue (`result` one of [`EVENT_RESULTS`]; `reason`
    /// for `rejected`). Nothing without [`Metrics::register_events`].
    pub fn event_message(&self, result: &str, reason: Option<&str>) {
        if let Some(m) = self.events.get() {
            m.messages.with_label_values(&[result]).inc();
            if let Some(reason) = reason {
                m.rejected.with_label_values(&[reason]).inc();
            }
        }
    }

    /// Counts a failed call on the `[events]` queue.
    pub fn event_receive_error(&self) {
        if let Some(m) = self.events.get() {
            m.receive_errors.inc();
        }
    }

    /// Sets `event_dlq_messages`.
    pub fn set_event_dlq_messages(&self, n: i64) {
        if let Some(m) = self.events.get() {
            m.dlq_messages.set(n);
        }
    }

    /// Registers `notifications_total{result}` (once), [`NOTIFY_RESULTS`] pre-created.
    pub fn register_notify(&self) {
        self.notifications.get_or_init(|| {
            let c = counter_vec(&self.registry, &NOTIFY_DECLARED[0]);
            for result in NOTIFY_RESULTS {
                c.with_label_values(&[result]).reset();
            }
            c
        });
    }

    /// Counts a notification (`result` one of [`NOTIFY_RESULTS`]). Nothing without
    /// [`Metrics::register_notify`].
    pub fn notification(&self, result: &str) {
        if let Some(c) = self.notifications.get() {
            c.with_label_values(&[result]).inc();
        }
    }

    /// Counts one HTTP 429 from Qlik.
    pub fn rate_limited(&self) {
        self.tenant_rate_limited(None);
    }

    /// Counts one HTTP 429 from Qlik to a client of `tenant` (see
    /// [`Metrics::tenant_request`]).
    pub fn tenant_rate_limited(&self, tenant: Option<&str>) {
        if self.tenant_label {
            (self.rate_limited)
                .with_label_values(&[tenant.unwrap_or("")])
                .inc();
        } else {
            self.rate_limited.with_label_values(&[] as &[&str]).inc();
        }
    }

    /// The whole text exposition (Prometheus format 0.0.4) in one string.
    pub fn render(&self) -> String {
        self.render_chunks().collect()
    }

    /// The text exposition in chunks of at most ~[`CHUNK_JOBS`] jobs' worth of lines, so a
    /// scrape of a daemon with many jobs never holds the whole body in memory. Families stay
    /// contiguous, as the format requires.
    pub fn render_chunks(&self) -> impl Iterator<Item = String> + Send + 'static {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        let head = String::from_utf8(buf).expect("the text format is UTF-8");
        let table = self.jobs_table.clone();
        let mut cursor = Some((0, 0, false));
        std::iter::once(head)
            .chain(std::iter::from_fn(move || {
                let (chunk, next) = table.render_chunk(cursor?);
                cursor = next;
                Some(chunk)
            }))
            .filter(|chunk| !chunk.is_empty())
    }

    /// The registry of the process-wide series (for tests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// How many jobs' lines one chunk of [`Metrics::render_chunks`] holds (~0.3 KB each).
pub const CHUNK_JOBS: usize = 64;

/// A per-job family of the [`JobTable`]: its declaration and its type.
#[derive(Debug, Clone, Copy)]
struct JobFamily {
    def: Def,
    kind: &'static str,
}

/// The per-job families, in exposition order. Each has the one label `rotation_job` (and
/// `rotations_total` also `outcome`).
const JOB_FAMILIES: [JobFamily; 6] = [
    JobFamily {
        def: def(
            "job_max_age_seconds",
            "The job's max_age: how old the last success may get before the credentials are stale.",
            &["rotation_job"],
        ),
        kind: "gauge",
    },
    JobFamily {
        def: def(
            "job_preflight_ok",
            "0 while the job's connection fails pre-flight (not found, no update privilege, connector mismatch); a job that passed has no series (jobs{state} counts both).",
            &["rotation_job"],
        ),
        kind: "gauge",
    },
    JobFamily {
        def: def(
            "last_success_timestamp_seconds",
            "Unix time of the last run that left the connection verified current (rotated or unchanged).",
            &["rotation_job"],
        ),
        kind: "gauge",
    },
    JobFamily {
        def: def(
            "rotation_job_duration_seconds",
            "Wall time of one rotation run (fetch, PATCH, verify), by rotation job (opt-in: metrics.per_job_duration_histogram).",
            &["rotation_job"],
        ),
        kind: "histogram",
    },
    JobFamily {
        def: def(
            "rotations_total",
            "Rotation outcomes by rotation job and outcome (failed, verify_failed, canary_failed, rolled_back; rotated only with metrics.per_job_rotated, else in rotations_rotated_total; unchanged only with metrics.per_job_unchanged, else in rotations_unchanged_total), one per connection and run; a series appears with its first count.",
            &["rotation_job", "outcome"],
        ),
        kind: "counter",
    },
    JobFamily {
        def: def(
            "secret_created_timestamp_seconds",
            "Unix time the secret version the job last read was created in its vault (Secrets Manager CreatedDate, SSM LastModifiedDate, Vault created_time, file mtime): the credential's own age; a series appears with the first read that reports it.",
            &["rotation_job"],
        ),
        kind: "gauge",
    },
];

/// The index of the opt-in per-job histogram in [`JOB_FAMILIES`].
const HISTOGRAM_FAMILY: usize = 3;

/// The mutable part of one job's series. One writer at a time (a job never runs twice at
/// once), read by scrapes; a plain mutex keeps each scrape's view of a histogram consistent.
#[derive(Debug, Default)]
struct JobStats {
    outcomes: [u64; OUTCOMES.len()],
    /// The per-job duration histogram: only with `per_job_duration_histogram`, from the
    /// job's first run (before, it renders zeros). Boxed: 104 bytes a job otherwise.
    durations: Option<Box<Durations>>,
    last_success: Option<i64>,
    preflight_ok: Option<bool>,
    secret_created: Option<i64>,
}

/// One job's run durations (`rotation_job_duration_seconds`).
#[derive(Debug, Default)]
struct Durations {
    /// Non-cumulative counts per [`DURATION_BUCKETS`] bound; above the last bound only
    /// `count` grows.
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Durations {
    fn observe(&mut self, v: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

/// A connector's success counters, shared by its jobs' [`JobSeries`].
#[derive(Debug)]
struct ConnectorCounters {
    rotated: IntCounter,
    unchanged: IntCounter,
}

#[derive(Debug)]
struct JobSeries {
    name: Box<str>,
    /// The job's tenant when the series carry a `tenant` label.
    tenant: Option<Arc<str>>,
    max_age: u64,
    /// The job's connector's `rotations_rotated_total` and `rotations_unchanged_total`.
    connector: ConnectorCounters,
    stats: Mutex<JobStats>,
}

impl JobSeries {
    /// The labels every per-job series carries, rendered (the one place a per-job label is
    /// written).
    fn labels(&self) -> String {
        let job = escape(&self.name, true);
        // `,tenant="…"` after the job (labels in name order, as the registry's); tenant
        // names are plain identifiers, nothing to escape.
        match &self.tenant {
            Some(t) => format!("rotation_job=\"{job}\",tenant=\"{t}\""),
            None => format!("rotation_job=\"{job}\""),
        }
    }

    /// Appends this job's samples of `family` to `out` (nothing for a value never set and for
    /// outcomes never counted).
    fn render(&self, family: usize, name: &str, out: &mut String) {
        let st = self.stats.lock().expect("job stats lock");
        let job = self.labels();
        let mut gauge = |v: Option<i64>| {
            if let Some(v) = v {
                let _ = writeln!(out, "qlik_rotator_{name}{{{job}}} {v}");
            }
        };
        match family {
            0 => gauge(Some(self.max_age as i64)),
            // Only a failing pre-flight: the passing state of every job was 0.59 MB of a
            // 10,000-job scrape and alerted on nothing (`jobs{state}` counts both).
            1 => gauge(st.preflight_ok.filter(|ok| !ok).map(|_| 0)),
            2 => gauge(st.last_success),
            HISTOGRAM_FAMILY => {
                const NONE: Durations = Durations {
                    buckets: [0; DURATION_BUCKETS.len()],
                    sum: 0.0,
                    count: 0,
                };
                let st = st.durations.as_deref().unwrap_or(&NONE);
                let mut cumulative = 0;
                let bounds = DURATION_BUCKETS.iter().map(ToString::to_string);
                let counts = st.buckets.iter().map(|n| {
                    cumulative += n;
                    cumulative
                });
                for (le, n) in bounds.zip(counts).chain([("+Inf".into(), st.count)]) {
                    let _ = writeln!(out, "qlik_rotator_{name}_bucket{{{job},le=\"{le}\"}} {n}");
                }
                let _ = writeln!(out, "qlik_rotator_{name}_sum{{{job}}} {}", st.sum);
                let _ = writeln!(out, "qlik_rotator_{name}_count{{{job}}} {}", st.count);
            }
            5 => gauge(st.secret_created),
            _ => {
                for (outcome, n) in OUTCOMES.iter().zip(st.outcomes).filter(|(_, n)| *n > 0) {
                    let _ = writeln!(
                        out,
                        "qlik_rotator_{name}{{outcome=\"{outcome}\",{job}}} {n}"
                    );
                }
            }
        }
    }
}

/// Every job's series, sorted by job name.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: RwLock<Vec<JobSeries>>,
    /// The opt-in per-job series that are counted and rendered.
    opt_in: PerJob,
}

impl JobTable {
    /// Adds `jobs` (with their tenant when `tenant_label`); `counters` gives a connector's
    /// success counters.
    fn register<'a>(
        &self,
        jobs: impl IntoIterator<Item = &'a JobConfig>,
        tenant_label: bool,
        counters: impl Fn(&str) -> ConnectorCounters,
    ) {
        let mut table = self.jobs.write().expect("metrics table lock");
        table.extend(jobs.into_iter().map(|job| JobSeries {
            name: job.name.as_str().into(),
            tenant: tenant_label.then(|| job.tenant.clone()),
            max_age: job.max_age.as_secs(),
            connector: counters(job.connector()),
            stats: Mutex::new(JobStats::default()),
        }));
        // Stable: of two entries with one name, the first registered stays.
        table.sort_by(|a, b| a.name.cmp(&b.name));
        table.dedup_by(|later, first| later.name == first.name);
        table.shrink_to_fit();
    }

    fn unregister(&self, names: &[String]) {
        let mut table = self.jobs.write().expect("metrics table lock");
        table.retain(|j| !names.iter().any(|n| **n == *j.name));
    }

    fn tenant(&self, job: &str) -> Option<Arc<str>> {
        let table = self.jobs.read().expect("metrics table lock");
        let i = table.binary_search_by(|j| (*j.name).cmp(job)).ok()?;
        table[i].tenant.clone()
    }

    fn with(&self, job: &str, f: impl FnOnce(&mut JobStats)) {
        self.with_series(job, |s| f(&mut s.stats.lock().expect("job stats lock")));
    }

    fn with_series(&self, job: &str, f: impl FnOnce(&JobSeries)) {
        let table = self.jobs.read().expect("metrics table lock");
        if let Ok(i) = table.binary_search_by(|j| (*j.name).cmp(job)) {
            f(&table[i]);
        }
    }

    /// Counts outcome `i` of [`OUTCOMES`] for `job`: `rotated` and `unchanged` per connector,
    /// and per job only when opted in; every other outcome (a failure) per job.
    fn count_outcome(&self, job: &str, i: usize) {
        let per_job = match i {
            ROTATED_OUTCOME => self.opt_in.rotated,
            UNCHANGED_OUTCOME => self.opt_in.unchanged,
            _ => true,
        };
        self.with_series(job, |s| {
            match i {
                ROTATED_OUTCOME => s.connector.rotated.inc(),
                UNCHANGED_OUTCOME => s.connector.unchanged.inc(),
                _ => {}
            }
            if per_job {
                s.stats.lock().expect("job stats lock").outcomes[i] += 1;
            }
        });
    }

    /// Renders up to [`CHUNK_JOBS`] jobs of family `cursor.0` from job `cursor.1`;
    /// `cursor.2` says whether the family's HELP/TYPE lines are out already (a family
    /// without samples gets none). Returns the text and the next cursor (`None` at the end).
    fn render_chunk(&self, cursor: (usize, usize, bool)) -> (String, Option<(usize, usize, bool)>) {
        let (family, start, mut header_done) = cursor;
        let table = self.jobs.read().expect("metrics table lock");
        let Some(JobFamily { def, kind }) = JOB_FAMILIES.get(family) else {
            return (String::new(), None);
        };
        if family == HISTOGRAM_FAMILY && !self.opt_in.duration_histogram {
            return (String::new(), Some((family + 1, 0, false)));
        }
        let end = (start + CHUNK_JOBS).min(table.len());
        let mut out = String::with_capacity(32 * 1024);
        let mut lines = String::with_capacity(1024);
        for job in table.get(start..end).unwrap_or_default() {
            lines.clear();
            job.render(family, def.name, &mut lines);
            if !lines.is_empty() && !header_done {
                let name = def.name;
                let _ = writeln!(
                    out,
                    "# HELP qlik_rotator_{name} {}",
                    escape(def.help, false)
                );
                let _ = writeln!(out, "# TYPE qlik_rotator_{name} {kind}");
                header_done = true;
            }
            out.push_str(&lines);
        }
        let next = if end < table.len() {
            Some((family, end, header_done))
        } else if family + 1 < JOB_FAMILIES.len() {
            Some((family + 1, 0, false))
        } else {
            None
        };
        (out, next)
    }
}

/// Escapes a label value (`include_double_quote`) or HELP text for the text format.
fn escape(v: &str, include_double_quote: bool) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '\n', '"']) {
        return v.into();
    }
    let mut out = String::with_capacity(v.len() + 4);
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if include_double_quote => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out.into()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The `connector_type` label of `spec_warnings_total`: a catalogue `datasourceID`, else `other`.
fn spec_warning_label(connector_type: &str) -> &str {
    if crate::connectors::Connector::lookup(connector_type).is_some() {
        connector_type
    } else {
        "other"
    }
}

/// Decrements `rotations_in_flight` when dropped.
#[derive(Debug)]
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, path::Path};

    use super::*;

    /// `n` jobs named `job-0000` …, plus one whose name needs escaping.
    fn jobs(n: usize) -> Vec<JobConfig> {
        let mut text = String::from(
            "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
             [sources.f]\ntype = \"file\"\npath = \"/v\"\n",
        );
        for i in 0..n {
            let _ = write!(
                text,
                "[[jobs]]\nname = \"job-{i:04}\"\nconnection = {{ id = \"00000000-0000-4000-8000-{i:012}\" }}\n\
                 connector = \"mssql\"\nsource = \"f\"\nsecret = \"s{i}\"\nmax_age = \"2h\"\n"
            );
        }
        crate::config::load_str(&text, Path::new("/"), &HashMap::new())
            .expect("valid config")
            .jobs
    }

    /// Sample value of the line starting with `series ` (exact series, labels included).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new();
        m.register_jobs(&jobs(1));
        m.secret_fetch("file", true);
        m.qlik_request(
            "GET",
            "/api/v1/data-connections/{id}",
            "200",
            Duration::from_millis(3),
        );
        m.set_jobs(2, 1);
        m.set_preflight("job-0000", false);
        m.spec_warning("gbq");
        m.spec_warning("not-in-the-catalogue");
        let text = m.render();
        for name in [
            "qlik_rotator_build_info{version=",
            "qlik_rotator_secret_fetches_total{outcome=\"ok\",source=\"file\"} 1",
            "qlik_rotator_qlik_requests_total{endpoint=\"/api/v1/data-connections/{id}\",method=\"GET\",status=\"200\"} 1",
            "qlik_rotator_qlik_request_duration_seconds_bucket{",
            "qlik_rotator_rate_limited_total 0",
            "qlik_rotator_jobs{state=\"preflight_failed\"} 1",
            "qlik_rotator_job_preflight_ok{rotation_job=\"job-0000\"} 0",
            "qlik_rotator_job_max_age_seconds{rotation_job=\"job-0000\"} 7200",
            "qlik_rotator_rotation_duration_seconds_bucket{connector=\"mssql\",le=\"+Inf\"} 0",
            "qlik_rotator_rotations_unchanged_total{connector=\"mssql\"} 0",
            "qlik_rotator_rotations_in_flight 0",
            "qlik_rotator_verify_warnings_total{rule=\"credentials_id_changed\"} 0",
            "qlik_rotator_spec_warnings_total{connector_type=\"gbq\"} 1",
            "qlik_rotator_spec_warnings_total{connector_type=\"mssql\"} 0",
            "qlik_rotator_spec_warnings_total{connector_type=\"other\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        let started = sample(&text, "qlik_rotator_start_time_seconds").expect("start time");
        assert!((chrono::Utc::now().timestamp() as f64 - started).abs() < 60.0);
        // Never set or never counted: no series, and no HELP/TYPE for an empty family.
        for absent in [
            "last_success_timestamp_seconds",
            "last_attempt_timestamp_seconds",
            "rotations_total",
            "errors_total",
        ] {
            assert!(!text.contains(absent), "{absent} in\n{text}");
        }
        // No label is called `job` (Prometheus's own target label) and the per-job
        // histogram is opt-in.
        assert!(!text.contains("{job=") && !text.contains(",job="), "{text}");
        assert!(!text.contains("rotation_job_duration_seconds"), "{text}");
    }

    #[test]
    fn outcomes_and_runs_fill_counters_histograms_and_timestamps() {
        let m = Metrics::with_per_job(PerJob {
            duration_histogram: true,
            rotated: true,
            ..PerJob::default()
        });
        m.register_jobs(&jobs(2));
        for (outcome, ms) in [("rotated", 300), ("unchanged", 40), ("rotated", 200_000)] {
            m.count_outcome("job-0001", outcome);
            m.observe_run("job-0001", "mssql", Duration::from_millis(ms), true);
        }
        m.count_outcome("job-0001", "planned");
        let text = m.render();
        let s = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
        let rot = |o: &str| {
            sample(
                &text,
                &format!(
                    "qlik_rotator_rotations_total{{outcome=\"{o}\",rotation_job=\"job-0001\"}}"
                ),
            )
        };
        assert_eq!(rot("rotated"), Some(2.0));
        // `unchanged` is counted per connector only (not opted in per job).
        assert_eq!(rot("unchanged"), None);
        assert_eq!(
            s("qlik_rotator_rotations_unchanged_total{connector=\"mssql\"}"),
            1.0
        );
        // Never counted: no series (and `planned` is not an outcome of rotations_total).
        assert_eq!(rot("failed"), None);
        assert_eq!(
            text.matches("qlik_rotator_rotations_total{").count(),
            1,
            "{text}"
        );
        for (family, label) in [
            ("rotation_job_duration_seconds", "rotation_job=\"job-0001\""),
            ("rotation_duration_seconds", "connector=\"mssql\""),
        ] {
            let b = |le: &str| {
                s(&format!(
                    "qlik_rotator_{family}_bucket{{{label},le=\"{le}\"}}"
                ))
            };
            assert_eq!(b("0.05"), 1.0);
            assert_eq!(b("0.25"), 1.0);
            assert_eq!(b("0.5"), 2.0);
            assert_eq!(b("120"), 2.0);
            assert_eq!(b("+Inf"), 3.0);
            assert_eq!(s(&format!("qlik_rotator_{family}_count{{{label}}}")), 3.0);
            let sum = s(&format!("qlik_rotator_{family}_sum{{{label}}}"));
            assert!((sum - 200.34).abs() < 1e-9, "{sum}");
        }
        // The other job is untouched; the last attempt is the connector's.
        assert_eq!(
            s("qlik_rotator_rotation_job_duration_seconds_count{rotation_job=\"job-0000\"}"),
            0.0
        );
        let now = chrono::Utc::now().timestamp() as f64;
        let attempt = s("qlik_rotator_last_attempt_timestamp_seconds{connector=\"mssql\"}");
        assert!((now - attempt).abs() < 60.0, "{attempt} vs {now}");
        assert!(
            !text.contains("last_attempt_timestamp_seconds{rotation_job"),
            "{text}"
        );
        // A failure sets the attempt but not the success.
        m.set_last_success("job-0000", 1_000);
        m.observe_run("job-0000", "mssql", Duration::from_millis(10), false);
        let text = m.render();
        assert_eq!(
            sample(
                &text,
                "qlik_rotator_last_success_timestamp_seconds{rotation_job=\"job-0000\"}"
            ),
            Some(1_000.0)
        );
    }

    /// Unknown jobs are ignored rather than creating unbounded series (and an unknown job's
    /// `unchanged` counts under no connector).
    #[test]
    fn unknown_jobs_create_no_series() {
        let m = Metrics::with_per_job(PerJob {
            duration_histogram: true,
            unchanged: true,
            rotated: true,
        });
        m.register_jobs(&jobs(1));
        m.set_preflight("nope", true);
        m.count_outcome("nope", "rotated");
        m.count_outcome("nope", "unchanged");
        m.observe_run("nope", "mssql", Duration::ZERO, true);
        let text = m.render();
        assert!(!text.contains("nope"), "{text}");
        for family in ["unchanged", "rotated"] {
            let series = format!("qlik_rotator_rotations_{family}_total{{connector=\"mssql\"}}");
            assert_eq!(sample(&text, &series), Some(0.0), "{text}");
        }
    }

    /// `rotated` and `unchanged` go to the job's own connector's series; per job only when
    /// opted in (each by its own key); failures always per job.
    #[test]
    fn successes_are_counted_per_connector_and_per_job_when_opted_in() {
        let mut cfg = jobs(3);
        Arc::make_mut(&mut cfg[2].spec).datasource = "snowflake".into();
        for (outcome, per_job) in [
            ("unchanged", false),
            ("unchanged", true),
            ("rotated", false),
            ("rotated", true),
        ] {
            let m = Metrics::with_per_job(PerJob {
                unchanged: per_job && outcome == "unchanged",
                rotated: per_job && outcome == "rotated",
                ..PerJob::default()
            });
            m.register_jobs(&cfg);
            for job in ["job-0000", "job-0001", "job-0001", "job-0002"] {
                m.count_outcome(job, outcome);
            }
            m.count_outcome("job-0002", "failed");
            let text = m.render();
            let conn = |family: &str, c: &str| {
                sample(
                    &text,
                    &format!("qlik_rotator_rotations_{family}_total{{connector=\"{c}\"}}"),
                )
            };
            let other = if outcome == "rotated" {
                "unchanged"
            } else {
                "rotated"
            };
            assert_eq!(conn(outcome, "mssql"), Some(3.0), "{text}");
            assert_eq!(conn(outcome, "snowflake"), Some(1.0), "{text}");
            assert_eq!(conn(other, "mssql"), Some(0.0), "{text}");
            let job = |j: &str, o: &str| {
                sample(
                    &text,
                    &format!(
                        "qlik_rotator_rotations_total{{outcome=\"{o}\",rotation_job=\"{j}\"}}"
                    ),
                )
            };
            assert_eq!(job("job-0002", "failed"), Some(1.0));
            let expected = |n: f64| per_job.then_some(n);
            assert_eq!(job("job-0000", outcome), expected(1.0), "{text}");
            assert_eq!(job("job-0001", outcome), expected(2.0), "{text}");
            assert_eq!(job("job-0002", outcome), expected(1.0), "{text}");
            let lines = text.matches("qlik_rotator_rotations_total{").count();
            assert_eq!(lines, if per_job { 4 } else { 1 }, "{text}");
        }
    }

    #[test]
    fn chunks_keep_each_family_contiguous_with_one_header() {
        let n = CHUNK_JOBS * 3 + 5;
        let m = Metrics::new();
        m.register_jobs(&jobs(n));
        // Every job but the first passes pre-flight: only the failing one has a series.
        for (i, j) in jobs(n).iter().enumerate() {
            m.set_preflight(&j.name, i > 0);
        }
        let chunks: Vec<String> = m.render_chunks().collect();
        // The registry's part, then 4 chunks of max_age and 1 of pre-flight (the only failing
        // job is in the first chunk; no last success and no outcome yet, the per-job
        // histogram is off: nothing).
        assert_eq!(chunks.len(), 1 + 4 + 1);
        assert!(chunks.iter().all(|c| !c.is_empty()));
        let text = chunks.concat();
        assert_eq!(text, m.render());
        // Every family: exactly one HELP and one TYPE, and all its samples in one block.
        let mut seen: Vec<String> = Vec::new();
        let mut current = String::new();
        for line in text.lines() {
            let family = if let Some(rest) = line.strip_prefix("# HELP ") {
                let f = rest.split(' ').next().unwrap_or_default().to_owned();
                assert!(!seen.contains(&f), "second HELP for {f}");
                seen.push(f.clone());
                current = f;
                continue;
            } else if line.starts_with("# TYPE ") {
                continue;
            } else {
                line.split(['{', ' ']).next().unwrap_or_default().to_owned()
            };
            assert!(
                family == current || family.starts_with(&format!("{current}_")),
                "{family} outside its block ({current})"
            );
        }
        assert_eq!(
            text.matches("qlik_rotator_job_preflight_ok{").count(),
            1,
            "a pre-flight sample only for the failing job"
        );
        assert!(
            text.contains("qlik_rotator_job_preflight_ok{rotation_job=\"job-0000\"} 0"),
            "{text}"
        );
        // Sorted by job name.
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("qlik_rotator_job_max_age_seconds{rotation_job=\""))
            .map(|l| l.split('"').next().unwrap_or_default())
            .collect();
        let mut sorted = names.clone();
        sorted.sort_unstable();
        assert_eq!(names, sorted);
    }

    #[test]
    fn an_outcome_series_appears_with_its_first_count() {
        let m = Metrics::new();
        m.register_jobs(&jobs(3));
        let failed = "qlik_rotator_rotations_total{outcome=\"failed\",rotation_job=\"job-0002\"}";
        assert!(!m.render().contains("rotations_total"));
        m.count_outcome("job-0002", "failed");
        let text = m.render();
        assert_eq!(sample(&text, failed), Some(1.0), "{text}");
        // Exactly one series: the other outcomes and jobs stay absent.
        assert_eq!(
            text.matches("qlik_rotator_rotations_total{").count(),
            1,
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE qlik_rotator_rotations_total counter")
                .count(),
            1
        );
    }

    /// The README's metrics table lists every declared metric with its labels, and nothing
    /// else.
    #[test]
    fn the_readme_metrics_table_matches_the_declarations() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n### Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n#").next())
            .expect("README has a Metrics section");
        let mut table: Vec<(String, String)> = section
            .lines()
            .filter_map(|l| l.strip_prefix("| `"))
            .map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let name = cells[0].trim_end_matches('`').to_owned();
                let labels = cells.get(2).map_or("", |c| c.trim_matches('`')).to_owned();
                (name, labels)
            })
            .collect();
        let mut declared: Vec<(String, String)> = (DECLARED
            .iter()
            .chain(&EVENT_DECLARED)
            .chain(&NOTIFY_DECLARED))
        .map(|d| (d.name.to_owned(), d.labels.join(", ")))
        .collect();
        table.sort();
        declared.sort();
        assert_eq!(table, declared);
    }

    #[test]
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#, true), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb", false), "a\\nb");
        assert_eq!(escape(r#"say "hi""#, false), r#"say "hi""#);
        assert_eq!(escape("plain", true), "plain");
    }
}
