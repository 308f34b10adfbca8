//! One test per event kind: emitting it writes exactly its log line and moves exactly its
//! metrics, every time; without metrics it still logs.

use std::{
    collections::HashMap,
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
};

use serde_json::Value;
use tracing_subscriber::fmt::MakeWriter;

use super::*;
use crate::config::JobConfig;

/// A log sink for one test.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Buf {
    type Writer = Buf;
    fn make_writer(&'a self) -> Buf {
        self.clone()
    }
}

/// The JSON log lines `f` writes (every level).
fn logs<T>(f: impl FnOnce() -> T) -> (T, Vec<Value>) {
    let buf = Buf::default();
    let sub = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(buf.clone())
        .finish();
    let out = tracing::subscriber::with_default(sub, f);
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    (out, lines)
}

fn jobs() -> Vec<JobConfig> {
    let text = "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
        [sources.f]\ntype = \"file\"\npath = \"/v\"\n\
        [[jobs]]\nname = \"sales\"\nconnection = { id = \"00000000-0000-4000-8000-000000000001\" }\n\
        connector = \"mssql\"\nsource = \"f\"\nsecret = \"s\"\n";
    crate::config::load_str(text, Path::new("/"), &HashMap::new())
        .expect("valid config")
        .jobs
}

fn events() -> (Events, Arc<Metrics>) {
    let m = Arc::new(Metrics::new());
    m.register_jobs(&jobs());
    (Events::new(m.clone()), m)
}

/// The value of the exact series `series` (name and labels as rendered), 0 when absent.
fn sample(m: &Metrics, series: &str) -> f64 {
    m.render()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// Sum of every sample of family `name` (any labels).
fn family_sum(m: &Metrics, name: &str) -> f64 {
    m.render()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `rotations_total` and `errors_total` summed over every label.
#[track_caller]
fn assert_totals(m: &Metrics, rotations: f64, errors: f64) {
    assert_eq!(family_sum(m, "qlik_rotator_rotations_total"), rotations);
    assert_eq!(family_sum(m, "qlik_rotator_errors_total"), errors);
}

/// Job `sales` finished on connection `c` with `outcome`.
fn finished(outcome: &'static str) -> RotationFinished<'static> {
    RotationFinished {
        job: "sales",
        connection: "c",
        outcome,
        secret_version: "v1",
        duration: Duration::ZERO,
    }
}

fn field<'a>(line: &'a Value, key: &str) -> &'a Value {
    &line["fields"][key]
}

/// Emits `emit` twice; after each emission there is exactly one more line with `message` at
/// `level`, and `series` has grown by one: the log and the metric move together.
fn moves_together(
    emit: impl Fn(&Events),
    level: &str,
    message: &str,
    series: &[&str],
) -> Vec<Value> {
    let (e, m) = events();
    let mut all = Vec::new();
    for round in 1..=2 {
        let ((), lines) = logs(|| emit(&e));
        assert_eq!(lines.len(), 1, "one line per emit: {lines:?}");
        assert_eq!(lines[0]["level"], level, "{lines:?}");
        assert_eq!(field(&lines[0], "message"), message, "{lines:?}");
        for s in series {
            assert_eq!(sample(&m, s), f64::from(round), "{s} after {round} emits");
        }
        all.extend(lines);
    }
    // Without metrics the same line is written.
    let ((), lines) = logs(|| emit(&Events::log_only()));
    assert_eq!(lines.len(), 1);
    assert_eq!(field(&lines[0], "message"), message);
    all
}

#[test]
fn rotation_started_logs_and_holds_a_rotation_in_flight_until_dropped() {
    let (e, m) = events();
    let (guard, lines) = logs(|| {
        e.emit(RotationStarted {
            job: "sales",
            connections: 2,
        })
    });
    assert_eq!(lines.len(), 1);
    assert_eq!(field(&lines[0], "message"), "Rotation started.");
    assert_eq!(field(&lines[0], "connections"), 2);
    assert_eq!(sample(&m, "qlik_rotator_rotations_in_flight"), 1.0);
    let (second, _) = logs(|| {
        e.emit(RotationStarted {
            job: "sales",
            connections: 1,
        })
    });
    assert_eq!(sample(&m, "qlik_rotator_rotations_in_flight"), 2.0);
    drop(guard);
    assert_eq!(sample(&m, "qlik_rotator_rotations_in_flight"), 1.0);
    drop(second);
    assert_eq!(sample(&m, "qlik_rotator_rotations_in_flight"), 0.0);
    let (guard, lines) = logs(|| {
        Events::log_only().emit(RotationStarted {
            job: "sales",
            connections: 1,
        })
    });
    assert_eq!(lines.len(), 1);
    drop(guard);
}

#[test]
fn rotation_finished_logs_and_counts_its_outcome() {
    let lines = moves_together(
        |e| {
            e.emit(RotationFinished {
                job: "sales",
                connection: "c-1\nforged",
                outcome: "rotated",
                secret_version: "v1",
                duration: Duration::from_millis(120),
            })
        },
        "INFO",
        "Rotation finished.",
        &["qlik_rotator_rotations_rotated_total{connector=\"mssql\"}"],
    );
    assert_eq!(field(&lines[0], "outcome"), "rotated");
    assert_eq!(field(&lines[0], "duration_ms"), 120);
    // Text from outside cannot forge a line.
    assert_eq!(field(&lines[0], "connection"), "c-1\\nforged");
    // Nothing else moved: no error, no per-job outcome; `rotated` and `unchanged` are counted
    // under the job's connector, not per job.
    let (e, m) = events();
    e.emit(finished("rotated"));
    e.emit(finished("unchanged"));
    assert_totals(&m, 0.0, 0.0);
    for family in ["rotated", "unchanged"] {
        let series = format!("qlik_rotator_rotations_{family}_total{{connector=\"mssql\"}}");
        assert_eq!(sample(&m, &series), 1.0, "{series}");
    }
}

#[test]
fn a_planned_rotation_logs_but_counts_no_outcome() {
    let (e, m) = events();
    let ((), lines) = logs(|| e.emit(finished("planned")));
    assert_eq!(lines.len(), 1);
    assert_eq!(field(&lines[0], "outcome"), "planned");
    assert_eq!(family_sum(&m, "qlik_rotator_rotations_total"), 0.0);
}

#[test]
fn rotation_failed_logs_and_counts_the_outcome_and_the_error_once() {
    let lines = moves_together(
        |e| {
            e.emit(RotationFailed {
                job: "sales",
                connection: "id:c",
                outcome: "verify_failed",
                stage: "verify",
                error_type: "verify_mismatch",
                error: "verification failed: host changed\u{1b}[31m",
            })
        },
        "WARN",
        "Rotation failed.",
        &[
            "qlik_rotator_rotations_total{outcome=\"verify_failed\",rotation_job=\"sales\"}",
            "qlik_rotator_errors_total{error_type=\"verify_mismatch\",rotation_job=\"sales\",stage=\"verify\"}",
        ],
    );
    assert_eq!(field(&lines[0], "stage"), "verify");
    assert_eq!(field(&lines[0], "error_type"), "verify_mismatch");
    let error = field(&lines[0], "error").as_str().unwrap();
    assert!(!error.contains('\u{1b}'), "{error}");
    // The invariant the alerts rely on: errors = failed + verify_failed, per job.
    let (e, m) = events();
    for (outcome, stage) in [
        ("failed", "apply"),
        ("verify_failed", "verify"),
        ("failed", "fetch"),
    ] {
        e.emit(RotationFailed {
            job: "sales",
            connection: "id:c",
            outcome,
            stage,
            error_type: "server",
            error: "x",
        });
    }
    assert_totals(&m, 3.0, 3.0);
}

#[test]
fn rotation_retried_logs_and_counts_a_retry_not_an_outcome() {
    let lines = moves_together(
        |e| {
            e.emit(RotationRetried {
                job: "sales",
                connection: "id:c",
                attempt: 1,
                stage: "apply",
                error_type: "server",
                error: "Qlik answered 503",
                delay: Duration::from_secs(2),
            })
        },
        "INFO",
        "Rotation attempt failed; retrying.",
        &["qlik_rotator_rotation_retries_total{stage=\"apply\"}"],
    );
    assert_eq!(field(&lines[1], "delay_s"), 2);
    let (e, m) = events();
    e.emit(RotationRetried {
        job: "sales",
        connection: "id:c",
        attempt: 1,
        stage: "apply",
        error_type: "server",
        error: "x",
        delay: Duration::ZERO,
    });
    assert_totals(&m, 0.0, 0.0);
}

#[test]
fn run_finished_logs_and_observes_the_duration_per_connector_and_the_timestamps() {
    let run = |success| {
        move |e: &Events| {
            e.emit(RunFinished {
                job: "sales",
                connector: "mssql",
                duration: Duration::from_millis(300),
                connections: 1,
                success,
            })
        }
    };
    moves_together(
        run(true),
        "DEBUG",
        "Job run finished.",
        &[
            "qlik_rotator_rotation_duration_seconds_count{connector=\"mssql\"}",
            "qlik_rotator_rotation_duration_seconds_bucket{connector=\"mssql\",le=\"0.5\"}",
        ],
    );
    let (e, m) = events();
    run(false)(&e);
    let attempt = "qlik_rotator_last_attempt_timestamp_seconds{connector=\"mssql\"}";
    let success = "qlik_rotator_last_success_timestamp_seconds{rotation_job=\"sales\"}";
    assert!(sample(&m, attempt) > 1.7e9);
    assert_eq!(sample(&m, success), 0.0, "a failed run is no success");
    run(true)(&e);
    assert!(sample(&m, success) > 1.7e9);
    assert_eq!(
        sample(
            &m,
            "qlik_rotator_rotation_duration_seconds_bucket{connector=\"mssql\",le=\"0.25\"}"
        ),
        0.0
    );
    // No per-job histogram unless enabled.
    assert!(!m.render().contains("rotation_job_duration_seconds"));
}

#[test]
fn the_per_job_histogram_is_opt_in() {
    let m = Arc::new(Metrics::with_per_job_histogram(true));
    m.register_jobs(&jobs());
    Events::new(m.clone()).emit(RunFinished {
        job: "sales",
        connector: "mssql",
        duration: Duration::from_millis(300),
        connections: 1,
        success: true,
    });
    assert_eq!(
        sample(
            &m,
            "qlik_rotator_rotation_job_duration_seconds_bucket{rotation_job=\"sales\",le=\"0.5\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &m,
            "qlik_rotator_rotation_duration_seconds_count{connector=\"mssql\"}"
        ),
        1.0
    );
}

#[test]
fn secret_fetched_logs_and_counts_by_outcome() {
    moves_together(
        |e| {
            e.emit(SecretFetched {
                job: "sales",
                source: "file",
                error_type: None,
                created: None,
            })
        },
        "DEBUG",
        "Secret read.",
        &["qlik_rotator_secret_fetches_total{outcome=\"ok\",source=\"file\"}"],
    );
    let lines = moves_together(
        |e| {
            e.emit(SecretFetched {
                job: "sales",
                source: "file",
                error_type: Some("not_found"),
                created: None,
            })
        },
        "INFO",
        "The secret could not be read.",
        &["qlik_rotator_secret_fetches_total{outcome=\"error\",source=\"file\"}"],
    );
    assert_eq!(field(&lines[0], "error_type"), "not_found");
}

#[test]
fn rate_limited_logs_and_counts_through_the_request_observer() {
    moves_together(
        |e| e.rate_limited(),
        "WARN",
        "Qlik answered 429 (rate limited); waiting before the next request.",
        &["qlik_rotator_rate_limited_total"],
    );
    // Plain requests are counted without a line of ours (the client logs them).
    let (e, m) = events();
    let ((), lines) = logs(|| {
        e.request(
            "GET",
            "/api/v1/data-connections/{id}",
            "200",
            Duration::from_millis(5),
        )
    });
    assert!(lines.is_empty(), "{lines:?}");
    assert_eq!(
        sample(
            &m,
            "qlik_rotator_qlik_requests_total{endpoint=\"/api/v1/data-connections/{id}\",method=\"GET\",status=\"200\"}"
        ),
        1.0
    );
}

#[test]
fn spec_warning_logs_and_counts_per_connector() {
    let lines = moves_together(
        |e| {
            e.emit(SpecWarning {
                job: "sales",
                connector_type: "mssql",
                warning: "property `password`: api-specs type differs",
            })
        },
        "WARN",
        "The connector's api-specs disagree with the catalogue; rotating anyway.",
        &["qlik_rotator_spec_warnings_total{connector_type=\"mssql\"}"],
    );
    assert_eq!(field(&lines[0], "connector_type"), "mssql");
}

#[test]
fn verify_warning_logs_and_counts_per_rule() {
    let rule = crate::connectors::VERIFY_WARNING_RULES[0];
    let lines = moves_together(
        |e| {
            e.emit(VerifyWarning {
                job: "sales",
                rule,
                warning: "the credential id changed",
            })
        },
        "WARN",
        "Verify found something it cannot judge; counted as a warning, not a failure.",
        &[&format!(
            "qlik_rotator_verify_warnings_total{{rule=\"{rule}\"}}"
        )],
    );
    assert_eq!(field(&lines[0], "rule"), rule);
}

#[test]
fn state_write_failed_logs_and_counts_and_marks_the_state_unwritable() {
    for (when, level, message) in [
        (
            StateWriteWhen::AfterRun,
            "ERROR",
            "Cannot write the state file; the applied version is kept in memory (no re-apply) and the write is retried with backoff. A restart before it succeeds rotates this job once more.",
        ),
        (
            StateWriteWhen::Retry(Duration::from_secs(4)),
            "WARN",
            "Still cannot write the state file.",
        ),
        (
            StateWriteWhen::Shutdown,
            "ERROR",
            "Cannot write the state file at shutdown; the next start rotates the affected jobs once more.",
        ),
    ] {
        let emit = |e: &Events| {
            e.metrics().inspect(|m| m.set_state_writable(true));
            e.emit(StateWriteFailed {
                job: Some("sales"),
                error: "disk full",
                when,
            });
        };
        moves_together(
            emit,
            level,
            message,
            &["qlik_rotator_state_write_failures_total"],
        );
        let (e, m) = events();
        m.set_state_writable(true);
        emit(&e);
        assert_eq!(sample(&m, "qlik_rotator_state_writable"), 0.0, "{when:?}");
    }
}

#[test]
fn state_write_recovered_logs_and_marks_the_state_writable() {
    let (e, m) = events();
    m.state_write_failed();
    assert_eq!(sample(&m, "qlik_rotator_state_writable"), 0.0);
    let ((), lines) = logs(|| e.emit(StateWriteRecovered));
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["level"], "INFO");
    assert_eq!(
        field(&lines[0], "message"),
        "The state file is written again."
    );
    assert_eq!(sample(&m, "qlik_rotator_state_writable"), 1.0);
}
