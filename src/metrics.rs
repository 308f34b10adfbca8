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
//! - process-wide series (Qlik requests, secret reads, 429s, jobs by state, build info) and the
//!   sparse `errors_total` live in a `prometheus` [`Registry`];
//! - the per-job series every job has from the start (`rotations_total` × 4 outcomes, the
//!   timestamps, `job_max_age_seconds`, `job_preflight_ok`, and the opt-in per-job duration
//!   histogram) live in a compact table, [`JobTable`]: about 200 bytes per job instead of the
//!   ~3.6 KB that `prometheus` children cost (a `Desc`, label pairs and an `Arc` per child). A
//!   daemon with 10,000 jobs keeps them in ~2 MB, and `/metrics` streams them out in chunks
//!   ([`Metrics::render_chunks`]) rather than building the whole exposition in memory.
//!
//! The duration histogram is per connector (`rotation_duration_seconds{connector}`): per job,
//! its 14 lines were 10.3 of the 16.4 MB that one scrape of 10,000 jobs weighed (bench section
//! `metrics`). `metrics.per_job_duration_histogram = true` adds the per-job one back as
//! `rotation_job_duration_seconds{rotation_job}`.

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

/// The outcome labels pre-created for every job, so `increase()` works from the first scrape.
pub const OUTCOMES: [&str; 4] = ["rotated", "unchanged", "failed", "verify_failed"];

/// The stage labels, pre-created in `rotation_retries_total`.
pub const STAGES: [&str; 5] = ["fetch", "resolve", "build", "apply", "verify"];

/// The reason labels of `lease_skips_total`, pre-created.
pub const LEASE_SKIP_REASONS: [&str; 3] = ["held_elsewhere", "lost", "backend_error"];

/// Upper bounds of `rotation_duration_seconds` (the `+Inf` bucket is implied).
pub const DURATION_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    jobs_table: Arc<JobTable>,
    errors: IntCounterVec,
    retries: IntCounterVec,
    rotation_duration: HistogramVec,
    qlik_requests: IntCounterVec,
    qlik_request_duration: HistogramVec,
    secret_fetches: IntCounterVec,
    rate_limited: IntCounter,
    jobs: IntGaugeVec,
    build_info: IntGaugeVec,
    in_flight: IntGauge,
    state_write_failures: IntCounter,
    state_writable: IntGauge,
    lease_skips: IntCounterVec,
    spec_warnings: IntCounterVec,
    verify_warnings: IntCounterVec,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    /// Creates and registers every metric, without the per-job duration histogram.
    pub fn new() -> Self {
        Self::with_per_job_histogram(false)
    }

    /// As [`Metrics::new`], with `rotation_job_duration_seconds{rotation_job}` when
    /// `per_job_histogram` (config key `metrics.per_job_duration_histogram`; 14 lines per job).
    pub fn with_per_job_histogram(per_job_histogram: bool) -> Self {
        let r = Registry::new_custom(Some("qlik_rotator".into()), None)
            .expect("the prefix is a valid metric name");
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            reg(
                &r,
                HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
                    .expect("valid"),
            )
        };
        let m = Metrics {
            jobs_table: Arc::new(JobTable {
                per_job_histogram,
                ..JobTable::default()
            }),
            errors: counter(
                "errors_total",
                "Failed runs (after their last attempt) by rotation job, stage (fetch, resolve, build, apply, verify) and error type.",
                &["rotation_job", "stage", "error_type"],
            ),
            retries: counter(
                "rotation_retries_total",
                "Failed attempts that were retried within their run, by stage (the error type is in the log line).",
                &["stage"],
            ),
            rotation_duration: histogram(
                "rotation_duration_seconds",
                "Wall time of one rotation run (fetch, PATCH, verify), by connector.",
                &["connector"],
                DURATION_BUCKETS.to_vec(),
            ),
            qlik_requests: counter(
                "qlik_requests_total",
                "HTTP requests to Qlik by method, endpoint template and status (or 'error').",
                &["method", "endpoint", "status"],
            ),
            qlik_request_duration: histogram(
                "qlik_request_duration_seconds",
                "Latency of HTTP requests to Qlik.",
                &["method", "endpoint"],
                vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
            ),
            secret_fetches: counter(
                "secret_fetches_total",
                "Secret reads by source type and outcome (ok, error).",
                &["source", "outcome"],
            ),
            rate_limited: reg(
                &r,
                IntCounter::new("rate_limited_total", "Qlik answers with HTTP 429.")
                    .expect("valid"),
            ),
            jobs: gauge(
                "jobs",
                "Configured jobs by state (scheduled, preflight_failed).",
                &["state"],
            ),
            build_info: gauge(
                "build_info",
                "Always 1; the version label says which build runs.",
                &["version"],
            ),
            in_flight: reg(
                &r,
                IntGauge::new("rotations_in_flight", "Rotations running right now.")
                    .expect("valid"),
            ),
            state_write_failures: reg(
                &r,
                IntCounter::new(
                    "state_write_failures_total",
                    "Failed writes of the state file (the applied versions are kept in memory and the write is retried).",
                )
                .expect("valid"),
            ),
            state_writable: reg(
                &r,
                IntGauge::new(
                    "state_writable",
                    "1 when the state file holds everything the daemon applied; 0 while a write is failing.",
                )
                .expect("valid"),
            ),
            lease_skips: counter(
                "lease_skips_total",
                "Runs skipped (or results not recorded) for want of the job's lease, by reason (held_elsewhere, lost, backend_error).",
                &["reason"],
            ),
            spec_warnings: counter(
                "spec_warnings_total",
                "api-specs declarations a catalogue connector's writes do not match (type or enum of a file array or mode constant); rotated anyway.",
                &["connector_type"],
            ),
            verify_warnings: counter(
                "verify_warnings_total",
                "Verify findings from rules without a published source (not failures), by rule.",
                &["rule"],
            ),
            registry: r,
        };
        for stage in STAGES {
            m.retries.with_label_values(&[stage]).reset();
        }
        for rule in crate::connectors::VERIFY_WARNING_RULES {
            m.verify_warnings.with_label_values(&[rule]).reset();
        }
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.rate_limited.reset();
        for reason in LEASE_SKIP_REASONS {
            m.lease_skips.with_label_values(&[reason]).reset();
        }
        m
    }

    /// Pre-creates every per-job series so dashboards and `increase()` see zeros, not gaps.
    /// Call once with all jobs (a later call adds to the table; a job name seen twice keeps
    /// its first entry).
    /// `spec_warnings_total` is pre-created for the connector of every catalogue job (the only
    /// jobs that can warn).
    pub fn register_jobs<'a>(&self, jobs: impl IntoIterator<Item = &'a JobConfig>) {
        let jobs: Vec<&JobConfig> = jobs.into_iter().collect();
        for job in &jobs {
            self.rotation_duration.with_label_values(&[&job.connector]);
            if !job.spec.is_generic() {
                self.spec_warnings
                    .with_label_values(&[spec_warning_label(&job.spec.datasource)]);
            }
        }
        self.jobs_table.register(jobs);
    }

    /// Sets a job's pre-flight result (`job_preflight_ok`).
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
    /// [`OUTCOMES`]; anything else, and a job never registered, is not counted).
    pub fn count_outcome(&self, job: &str, outcome: &str) {
        if let Some(i) = OUTCOMES.iter().position(|o| *o == outcome) {
            self.jobs_table.with(job, |s| s.outcomes[i] += 1);
        }
    }

    /// Records one finished run of a job: the duration (per connector, and per job when
    /// enabled) and the timestamps (last success only when `success`, i.e. every connection of
    /// the run ended well). `connector` is the job's configured connector.
    pub fn observe_run(&self, job: &str, connector: &str, duration: Duration, success: bool) {
        let now = chrono::Utc::now().timestamp();
        let secs = duration.as_secs_f64();
        self.rotation_duration
            .with_label_values(&[connector])
            .observe(secs);
        self.jobs_table.with(job, |s| {
            s.observe(secs);
            s.last_attempt = Some(now);
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
    pub fn count_error(&self, job: &str, stage: &str, error_type: &str) {
        self.errors
            .with_label_values(&[job, stage, error_type])
            .inc();
    }

    /// Counts one failed attempt that is retried within its run (`stage` is one of
    /// [`STAGES`]).
    pub fn count_retry(&self, stage: &str) {
        self.retries.with_label_values(&[stage]).inc();
    }

    /// Counts one HTTP exchange with Qlik (`status` is the HTTP status or `error`).
    pub fn qlik_request(&self, method: &str, endpoint: &str, status: &str, elapsed: Duration) {
        self.qlik_requests
            .with_label_values(&[method, endpoint, status])
            .inc();
        self.qlik_request_duration
            .with_label_values(&[method, endpoint])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one HTTP 429 from Qlik.
    pub fn rate_limited(&self) {
        self.rate_limited.inc();
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

/// How many jobs' lines one chunk of [`Metrics::render_chunks`] holds (~1.7 KB each).
pub const CHUNK_JOBS: usize = 64;

/// The per-job families, in exposition order: (name without prefix, type, help).
const JOB_FAMILIES: [(&str, &str, &str); 6] = [
    (
        "job_max_age_seconds",
        "gauge",
        "The job's max_age: how old the last success may get before the credentials are stale.",
    ),
    (
        "job_preflight_ok",
        "gauge",
        "1 when the job's connection passed pre-flight (found, update privilege, connector matches), else 0.",
    ),
    (
        "last_attempt_timestamp_seconds",
        "gauge",
        "Unix time of the last run, whatever its outcome.",
    ),
    (
        "last_success_timestamp_seconds",
        "gauge",
        "Unix time of the last run that left the connection verified current (rotated or unchanged).",
    ),
    (
        "rotation_job_duration_seconds",
        "histogram",
        "Wall time of one rotation run (fetch, PATCH, verify), by rotation job (opt-in: metrics.per_job_duration_histogram).",
    ),
    (
        "rotations_total",
        "counter",
        "Rotation outcomes by rotation job, connector and outcome (rotated, unchanged, failed, verify_failed), one per connection and run.",
    ),
];

/// The index of the opt-in per-job histogram in [`JOB_FAMILIES`].
const HISTOGRAM_FAMILY: usize = 4;

/// The mutable part of one job's series. One writer at a time (a job never runs twice at
/// once), read by scrapes; a plain mutex keeps each scrape's view of a histogram consistent.
#[derive(Debug, Default)]
struct JobStats {
    outcomes: [u64; 4],
    /// Non-cumulative counts per [`DURATION_BUCKETS`] bound; above the last bound only
    /// `count` grows.
    buckets: [u64; DURATION_BUCKETS.len()],
    sum: f64,
    count: u64,
    last_success: Option<i64>,
    last_attempt: Option<i64>,
    preflight_ok: Option<bool>,
}

impl JobStats {
    fn observe(&mut self, v: f64) {
        if let Some(i) = DURATION_BUCKETS.iter().position(|b| v <= *b) {
            self.buckets[i] += 1;
        }
        self.sum += v;
        self.count += 1;
    }
}

#[derive(Debug)]
struct JobSeries {
    name: Box<str>,
    connector: Arc<str>,
    max_age: u64,
    stats: Mutex<JobStats>,
}

/// Every job's series, sorted by job name.
#[derive(Debug, Default)]
pub struct JobTable {
    jobs: RwLock<Vec<JobSeries>>,
    /// Whether the per-job duration histogram is rendered.
    per_job_histogram: bool,
}

impl JobTable {
    fn register<'a>(&self, jobs: impl IntoIterator<Item = &'a JobConfig>) {
        let mut table = self.jobs.write().expect("metrics table lock");
        let mut connectors: Vec<Arc<str>> = Vec::new();
        for job in jobs {
            let connector = match connectors.iter().find(|c| ***c == *job.connector) {
                Some(c) => c.clone(),
                None => {
                    let c: Arc<str> = job.connector.as_str().into();
                    connectors.push(c.clone());
                    c
                }
            };
            table.push(JobSeries {
                name: job.name.as_str().into(),
                connector,
                max_age: job.max_age.as_secs(),
                stats: Mutex::new(JobStats::default()),
            });
        }
        // Stable: of two entries with one name, the first registered stays.
        table.sort_by(|a, b| a.name.cmp(&b.name));
        table.dedup_by(|later, first| later.name == first.name);
        table.shrink_to_fit();
    }

    fn with(&self, job: &str, f: impl FnOnce(&mut JobStats)) {
        let table = self.jobs.read().expect("metrics table lock");
        if let Ok(i) = table.binary_search_by(|j| (*j.name).cmp(job)) {
            f(&mut table[i].stats.lock().expect("job stats lock"));
        }
    }

    /// Renders up to [`CHUNK_JOBS`] jobs of family `cursor.0` from job `cursor.1`;
    /// `cursor.2` says whether the family's HELP/TYPE lines are out already (a family
    /// without samples gets none). Returns the text and the next cursor (`None` at the end).
    fn render_chunk(&self, cursor: (usize, usize, bool)) -> (String, Option<(usize, usize, bool)>) {
        let (family, start, mut header_done) = cursor;
        let table = self.jobs.read().expect("metrics table lock");
        let Some((name, kind, help)) = JOB_FAMILIES.get(family) else {
            return (String::new(), None);
        };
        if family == HISTOGRAM_FAMILY && !self.per_job_histogram {
            return (String::new(), Some((family + 1, 0, false)));
        }
        let end = (start + CHUNK_JOBS).min(table.len());
        let mut out = String::with_capacity(64 * 1024);
        for job in table.get(start..end).unwrap_or_default() {
            let st = job.stats.lock().expect("job stats lock");
            let value: Option<i64> = match family {
                0 => Some(job.max_age as i64),
                1 => st.preflight_ok.map(i64::from),
                2 => st.last_attempt,
                3 => st.last_success,
                _ => Some(0),
            };
            let Some(value) = value else { continue };
            if !header_done {
                let _ = writeln!(out, "# HELP qlik_rotator_{name} {}", escape(help, false));
                let _ = writeln!(out, "# TYPE qlik_rotator_{name} {kind}");
                header_done = true;
            }
            let job_label = escape(&job.name, true);
            match family {
                HISTOGRAM_FAMILY => {
                    let mut cumulative = 0;
                    for (bound, n) in DURATION_BUCKETS.iter().zip(st.buckets) {
                        cumulative += n;
                        let _ = writeln!(
                            out,
                            "qlik_rotator_{name}_bucket{{rotation_job=\"{job_label}\",le=\"{bound}\"}} {cumulative}"
                        );
                    }
                    let _ = writeln!(
                        out,
                        "qlik_rotator_{name}_bucket{{rotation_job=\"{job_label}\",le=\"+Inf\"}} {}",
                        st.count
                    );
                    let _ = writeln!(
                        out,
                        "qlik_rotator_{name}_sum{{rotation_job=\"{job_label}\"}} {}",
                        st.sum
                    );
                    let _ = writeln!(
                        out,
                        "qlik_rotator_{name}_count{{rotation_job=\"{job_label}\"}} {}",
                        st.count
                    );
                }
                5 => {
                    let connector = escape(&job.connector, true);
                    for (outcome, n) in OUTCOMES.iter().zip(st.outcomes) {
                        let _ = writeln!(
                            out,
                            "qlik_rotator_{name}{{connector=\"{connector}\",outcome=\"{outcome}\",rotation_job=\"{job_label}\"}} {n}"
                        );
                    }
                }
                _ => {
                    let _ = writeln!(
                        out,
                        "qlik_rotator_{name}{{rotation_job=\"{job_label}\"}} {value}"
                    );
                }
            }
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
            "qlik_rotator_rotations_total{connector=\"mssql\",outcome=\"verify_failed\",rotation_job=\"job-0000\"} 0",
            "qlik_rotator_rotation_duration_seconds_bucket{connector=\"mssql\",le=\"+Inf\"} 0",
            "qlik_rotator_rotations_in_flight 0",
            "qlik_rotator_verify_warnings_total{rule=\"credentials_id_changed\"} 0",
            "qlik_rotator_spec_warnings_total{connector_type=\"gbq\"} 1",
            "qlik_rotator_spec_warnings_total{connector_type=\"mssql\"} 0",
            "qlik_rotator_spec_warnings_total{connector_type=\"other\"} 1",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
        // Never set: no series, and no HELP/TYPE for an empty family.
        assert!(!text.contains("last_success_timestamp_seconds"), "{text}");
        assert!(!text.contains("last_attempt_timestamp_seconds"), "{text}");
        // No label is called `job` (Prometheus's own target label) and the per-job
        // histogram is opt-in.
        assert!(!text.contains("{job=") && !text.contains(",job="), "{text}");
        assert!(!text.contains("rotation_job_duration_seconds"), "{text}");
    }

    #[test]
    fn outcomes_and_runs_fill_counters_histograms_and_timestamps() {
        let m = Metrics::with_per_job_histogram(true);
        m.register_jobs(&jobs(2));
        for (outcome, ms) in [("rotated", 300), ("unchanged", 40), ("rotated", 200_000)] {
            m.count_outcome("job-0001", outcome);
            m.observe_run("job-0001", "mssql", Duration::from_millis(ms), true);
        }
        m.count_outcome("job-0001", "planned");
        let text = m.render();
        let s = |series: &str| sample(&text, series).unwrap_or_else(|| panic!("{series}\n{text}"));
        let rot = |o: &str| {
            s(&format!(
                "qlik_rotator_rotations_total{{connector=\"mssql\",outcome=\"{o}\",rotation_job=\"job-0001\"}}"
            ))
        };
        assert_eq!(rot("rotated"), 2.0);
        assert_eq!(rot("unchanged"), 1.0);
        assert_eq!(rot("failed"), 0.0);
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
        // The other job is untouched; both carry a last attempt only if they ran.
        assert_eq!(
            s("qlik_rotator_rotation_job_duration_seconds_count{rotation_job=\"job-0000\"}"),
            0.0
        );
        let attempt = |j: &str| {
            sample(
                &text,
                &format!("qlik_rotator_last_attempt_timestamp_seconds{{rotation_job=\"{j}\"}}"),
            )
        };
        assert!(attempt("job-0001").is_some());
        assert!(attempt("job-0000").is_none());
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
        // Unknown jobs are ignored rather than creating unbounded series.
        m.set_preflight("nope", true);
        m.count_outcome("nope", "rotated");
        m.observe_run("nope", "mssql", Duration::ZERO, true);
        assert!(!m.render().contains("nope"));
    }

    #[test]
    fn chunks_keep_each_family_contiguous_with_one_header() {
        let n = CHUNK_JOBS * 3 + 5;
        let m = Metrics::new();
        m.register_jobs(&jobs(n));
        for j in &jobs(n) {
            m.set_preflight(&j.name, true);
        }
        let chunks: Vec<String> = m.render_chunks().collect();
        // The registry's part, then 4 chunks for each of the 3 families with samples (the
        // two timestamp families have none yet, the per-job histogram is off: nothing).
        assert_eq!(chunks.len(), 1 + 4 * 3);
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
            n,
            "one pre-flight sample per job"
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
    fn label_values_and_help_are_escaped() {
        assert_eq!(escape(r#"a"b\c"#, true), r#"a\"b\\c"#);
        assert_eq!(escape("a\nb", false), "a\\nb");
        assert_eq!(escape(r#"say "hi""#, false), r#"say "hi""#);
        assert_eq!(escape("plain", true), "plain");
    }
}
