//! Every Prometheus metric the daemon exports, declared and registered in one place.
//!
//! Names carry the `qlik_rotator_` prefix and follow Prometheus naming rules. Labels are
//! bounded: job names and connectors come from config, stages/outcomes/error types are fixed
//! enums, Qlik endpoints are path templates. No secret and no raw error text is ever a label.

use std::time::Duration;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::{
    config::JobConfig,
    qlik::client::RequestObserver,
    rotation::{Outcome, Report},
};

/// The outcome labels pre-created for every job, so `increase()` works from the first scrape.
pub const OUTCOMES: [&str; 4] = ["rotated", "unchanged", "failed", "verify_failed"];

/// The daemon's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    rotations: IntCounterVec,
    rotation_duration: HistogramVec,
    last_success: IntGaugeVec,
    last_attempt: IntGaugeVec,
    max_age: IntGaugeVec,
    errors: IntCounterVec,
    qlik_requests: IntCounterVec,
    qlik_request_duration: HistogramVec,
    secret_fetches: IntCounterVec,
    rate_limited: IntCounter,
    jobs: IntGaugeVec,
    preflight_ok: IntGaugeVec,
    build_info: IntGaugeVec,
    in_flight: IntGauge,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique and valid");
    c
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
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
            rotations: counter(
                "rotations_total",
                "Rotation runs by job, connector and outcome (rotated, unchanged, failed, verify_failed).",
                &["job", "connector", "outcome"],
            ),
            rotation_duration: histogram(
                "rotation_duration_seconds",
                "Wall time of one rotation run (fetch, PATCH, verify).",
                &["job"],
                vec![0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0],
            ),
            last_success: gauge(
                "last_success_timestamp_seconds",
                "Unix time of the last run that left the connection verified current (rotated or unchanged).",
                &["job"],
            ),
            last_attempt: gauge(
                "last_attempt_timestamp_seconds",
                "Unix time of the last run, whatever its outcome.",
                &["job"],
            ),
            max_age: gauge(
                "job_max_age_seconds",
                "The job's max_age: how old the last success may get before the credentials are stale.",
                &["job"],
            ),
            errors: counter(
                "errors_total",
                "Failed runs by job, stage (fetch, resolve, build, apply, verify) and error type.",
                &["job", "stage", "error_type"],
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
            preflight_ok: gauge(
                "job_preflight_ok",
                "1 when the job's connection passed pre-flight (found, update privilege, connector matches), else 0.",
                &["job"],
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
            registry: r,
        };
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        m.rate_limited.reset();
        m
    }

    /// Pre-creates every per-job series so dashboards and `increase()` see zeros, not gaps.
    pub fn register_job(&self, job: &JobConfig) {
        for outcome in OUTCOMES {
            self.rotations
                .with_label_values(&[job.name.as_str(), job.connector.as_str(), outcome]);
        }
        self.max_age
            .with_label_values(&[job.name.as_str()])
            .set(job.max_age.as_secs() as i64);
        let _ = self
            .rotation_duration
            .with_label_values(&[job.name.as_str()]);
    }

    /// Sets the jobs-by-state gauges and each job's pre-flight result.
    pub fn set_preflight(&self, job: &str, ok: bool) {
        self.preflight_ok
            .with_label_values(&[job])
            .set(i64::from(ok));
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
        self.last_success.with_label_values(&[job]).set(unix);
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

    /// Records one finished run of a job: one outcome per connection, the duration, and the
    /// timestamps (last success only when every connection ended well). `planned` runs are
    /// not counted.
    pub fn record(&self, job: &JobConfig, reports: &[&Report]) {
        let reports: Vec<&&Report> = reports
            .iter()
            .filter(|r| !matches!(r.outcome, Outcome::Planned(_)))
            .collect();
        if reports.is_empty() {
            return;
        }
        let now = chrono::Utc::now().timestamp();
        let name = job.name.as_str();
        for r in &reports {
            self.rotations
                .with_label_values(&[name, job.connector.as_str(), r.outcome.label()])
                .inc();
        }
        let longest = reports.iter().map(|r| r.duration).max().unwrap_or_default();
        self.rotation_duration
            .with_label_values(&[name])
            .observe(longest.as_secs_f64());
        self.last_attempt.with_label_values(&[name]).set(now);
        if reports.iter().all(|r| r.outcome.is_success()) {
            self.last_success.with_label_values(&[name]).set(now);
        }
    }

    /// Counts one failed attempt in `errors_total` (a run may retry several times).
    pub fn record_error(&self, job: &str, error: &crate::rotation::RotationError) {
        self.errors
            .with_label_values(&[job, error.stage().as_str(), error.error_type()])
            .inc();
    }

    /// The text exposition (Prometheus format 0.0.4).
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }

    /// The registry (for tests).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestObserver for Metrics {
    fn request(
        &self,
        method: &'static str,
        endpoint: &'static str,
        status: &str,
        elapsed: Duration,
    ) {
        self.qlik_requests
            .with_label_values(&[method, endpoint, status])
            .inc();
        self.qlik_request_duration
            .with_label_values(&[method, endpoint])
            .observe(elapsed.as_secs_f64());
    }

    fn rate_limited(&self) {
        self.rate_limited.inc();
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
    use super::*;

    #[test]
    fn names_follow_the_contract() {
        let m = Metrics::new();
        m.secret_fetch("file", true);
        m.request(
            "GET",
            "/api/v1/data-connections/{id}",
            "200",
            Duration::from_millis(3),
        );
        m.set_jobs(2, 1);
        m.set_preflight("a", false);
        let text = m.render();
        for name in [
            "qlik_rotator_build_info{version=",
            "qlik_rotator_secret_fetches_total{outcome=\"ok\",source=\"file\"} 1",
            "qlik_rotator_qlik_requests_total{endpoint=\"/api/v1/data-connections/{id}\",method=\"GET\",status=\"200\"} 1",
            "qlik_rotator_qlik_request_duration_seconds_bucket{",
            "qlik_rotator_rate_limited_total 0",
            "qlik_rotator_jobs{state=\"preflight_failed\"} 1",
            "qlik_rotator_job_preflight_ok{job=\"a\"} 0",
            "qlik_rotator_rotations_in_flight 0",
        ] {
            assert!(text.contains(name), "missing {name} in\n{text}");
        }
    }
}
