//! The daemon (`qlik-rotator run`) against the simulator, a file vault and moto: schedules,
//! change detection across restarts, the shared write budget, 429 pauses, pre-flight, the
//! admin API, metrics (checked with promtool) and graceful shutdown on SIGTERM.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::Duration,
};

use common::{
    daemon::{Daemon, wait_metric as wait_proc_metric},
    harness::*,
    moto::Moto,
};
use qlik_rotator::{
    config,
    daemon::{self, Running},
};
use qlik_sim::{Fault, SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);

fn write_secret(dir: &Path, id: &str, body: &str) {
    let path = dir.join("vault").join(format!("{id}.json"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn standard_secrets(dir: &Path) {
    write_secret(
        dir,
        "qlik/sales-s3",
        r#"{"accessKey":"AKIA1","secretKey":"s1"}"#,
    );
    write_secret(
        dir,
        "qlik/finance-sql",
        r#"{"username":"u1","password":"p1"}"#,
    );
    write_secret(
        dir,
        "qlik/bigquery",
        r#"{"key_file":{"type":"service_account"}}"#,
    );
}

fn input() -> HashMap<String, String> {
    HashMap::from([("QLIK_API_KEY".to_owned(), API_KEY.to_owned())])
}

/// A daemon config over the file vault: `extra` is appended to each job, `tail` at the end.
fn local_config(sim: &Simulator, job_extra: &str, tail: &str) -> String {
    let jobs = three_jobs("vault").replace("secret = \"", &format!("{job_extra}\nsecret = \""));
    format!(
        "{}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:0\"\nper_job_rotated = true\n{tail}\n{jobs}",
        qlik_section(sim)
    )
}

/// `text` without the default write budget (100 writes/min, one PATCH every 0.6 s), for
/// tests where the budget is not the subject: their runs need not wait for it.
fn no_budget(text: &str) -> String {
    let key = "api_key_env = \"QLIK_API_KEY\"\n";
    assert!(text.contains(key), "a [qlik] section: {text}");
    text.replacen(key, &format!("{key}write_budget_per_min = 0\n"), 1)
}

async fn start(dir: &Path, text: &str) -> Running {
    let cfg = config::load_str(text, dir, &input()).expect("valid config");
    let r = daemon::start(&cfg, &input()).await.expect("daemon starts");
    // Ready comes before pre-flight ends; these tests look at what follows it.
    r.daemon.preflight_finished().await;
    r
}

async fn scrape(r: &Running) -> String {
    http_get(r.addr, "/metrics").await.1
}

/// Waits until `job` has had at least one run with `outcome`; returns the scrape.
async fn wait_outcome(r: &Running, job: &str, outcome: &str) -> String {
    wait_metric(
        r,
        "qlik_rotator_rotations_total",
        &[("rotation_job", job), ("outcome", outcome)],
        1.0,
    )
    .await
}

/// Waits until the connector's `rotations_unchanged_total` reaches `at_least` (`unchanged` is
/// counted per connector unless `metrics.per_job_unchanged`).
async fn wait_unchanged(r: &Running, connector: &str, at_least: f64) -> String {
    wait_metric(
        r,
        "qlik_rotator_rotations_unchanged_total",
        &[("connector", connector)],
        at_least,
    )
    .await
}

/// Waits until each job has been rotated at least once.
async fn wait_rotated(r: &Running, jobs: &[&str]) {
    for job in jobs {
        wait_metric(
            r,
            "qlik_rotator_rotations_total",
            &[("rotation_job", job), ("outcome", "rotated")],
            1.0,
        )
        .await;
    }
}

async fn wait_metric(r: &Running, name: &str, labels: &[(&str, &str)], at_least: f64) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = scrape(r).await;
        if metric(&text, name, labels).unwrap_or(0.0) >= at_least {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {name}{labels:?} >= {at_least}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_after_each_outcome_are_right_and_pass_promtool() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    // BigQuery's secret lacks the key file: a build failure.
    write_secret(dir.path(), "qlik/bigquery", r#"{"nothing":"here"}"#);
    // The default metrics (the other tests here opt in to per-job `rotated` counts).
    let text = local_config(&sim, "", "").replace("per_job_rotated = true\n", "");
    let r = start(dir.path(), &no_budget(&text)).await;
    assert_eq!(http_get(r.addr, "/healthz").await.0, 200);
    assert_eq!(http_get(r.addr, "/readyz").await.0, 200);

    // A job's per-job `rotations_total{outcome}` sample, and a success family's samples of
    // the connectors other than S3's.
    let per_job = |text: &str, job: &str, outcome: &str| {
        let labels = [("rotation_job", job), ("outcome", outcome)];
        metric(text, "qlik_rotator_rotations_total", &labels)
    };
    let others = |text: &str, family: &str| {
        ["mssql", "gbq"].map(|c| metric(text, family, &[("connector", c)]))
    };
    let text = scrape(&r).await;
    // Outcome series appear with their first count: none before any run.
    assert_eq!(per_job(&text, "sales-s3", "rotated"), None);
    assert!(!text.contains("qlik_rotator_rotations_total{"), "{text}");
    // Pre-flight passed: no per-job series (only a failing job has one), counted in `jobs`.
    assert!(!text.contains("qlik_rotator_job_preflight_ok{"), "{text}");
    assert_eq!(
        metric(&text, "qlik_rotator_jobs", &[("state", "scheduled")]),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_job_max_age_seconds",
            &[("rotation_job", "sales-s3")]
        ),
        Some(90000.0)
    );

    // rotated: counted under the job's connector, with no per-job series
    r.daemon.trigger("sales-s3", false);
    let rotated = [("connector", "File_AmazonS3ConnectorV2")];
    let text = wait_metric(&r, "qlik_rotator_rotations_rotated_total", &rotated, 1.0).await;
    assert_eq!(per_job(&text, "sales-s3", "rotated"), None);
    let family = "qlik_rotator_rotations_rotated_total";
    assert_eq!(others(&text, family), [Some(0.0); 2], "{text}");
    assert!(
        metric(
            &text,
            "qlik_rotator_last_success_timestamp_seconds",
            &[("rotation_job", "sales-s3")]
        )
        .unwrap()
            > 1.7e9
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_rotation_duration_seconds_count",
            &[("connector", "File_AmazonS3ConnectorV2")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_secret_fetches_total",
            &[("source", "file"), ("outcome", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_qlik_requests_total",
            &[("method", "PATCH"), ("status", "204")]
        ),
        Some(1.0)
    );
    // unchanged: counted under the job's connector, with no per-job series
    r.daemon.trigger("sales-s3", false);
    let text = wait_unchanged(&r, "File_AmazonS3ConnectorV2", 1.0).await;
    assert_eq!(per_job(&text, "sales-s3", "unchanged"), None);
    let family = "qlik_rotator_rotations_unchanged_total";
    assert_eq!(others(&text, family), [Some(0.0); 2], "{text}");
    // failed (build)
    r.daemon.trigger("warehouse-bq", false);
    let text = wait_outcome(&r, "warehouse-bq", "failed").await;
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", "warehouse-bq"),
                ("stage", "build"),
                ("error_type", "missing_field")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_last_success_timestamp_seconds",
            &[("rotation_job", "warehouse-bq")]
        ),
        None
    );
    // verify_failed: the verify GET answers 404 (the connection vanished after the PATCH).
    sim.inject(Fault::Status {
        method: Some("GET".into()),
        path_prefix: None,
        status: 404,
        times: 1,
    });
    r.daemon.trigger("finance-sql", false);
    let text = wait_outcome(&r, "finance-sql", "verify_failed").await;
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", "finance-sql"),
                ("stage", "verify"),
                ("error_type", "not_found")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_rotations_rotated_total",
            &[("connector", "mssql")]
        ),
        Some(0.0)
    );

    let (ok, report) = promtool_check_metrics(&text);
    assert!(ok, "promtool check metrics failed:\n{report}\n{text}");
    // No secret value, ever.
    for secret in ["AKIA1", "\"s1\"", "p1\""] {
        assert!(!text.contains(secret), "{secret} in /metrics");
    }
    assert!(r.shutdown().await);
}

/// `/metrics` is gzip'd for a scraper that asks (Prometheus always sends `Accept-Encoding:
/// gzip`), plain text otherwise; both carry the same exposition.
#[tokio::test]
async fn metrics_are_gzipped_when_the_scraper_accepts_it() {
    use std::io::Read as _;
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    let r = start(dir.path(), &local_config(&sim, "", "")).await;
    let url = format!("http://{}/metrics", r.addr);
    let client = reqwest::Client::new();
    let plain = client.get(&url).send().await.unwrap();
    assert_eq!(plain.headers().get("content-encoding"), None);
    let plain = plain.text().await.unwrap();
    let gz = client
        .get(&url)
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(
        gz.headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap()),
        Some("gzip")
    );
    let bytes = gz.bytes().await.unwrap();
    let mut text = String::new();
    flate2::read::GzDecoder::new(&bytes[..])
        .read_to_string(&mut text)
        .expect("a valid gzip body");
    assert!(
        bytes.len() < text.len(),
        "{} >= {}",
        bytes.len(),
        text.len()
    );
    // Same series, values aside (process metrics move between scrapes). Background work
    // (pre-flight, the space-name lookups) may add series between two scrapes but never
    // removes one here, so the gzipped scrape lies between a plain one before and one after.
    let after = client.get(&url).send().await.unwrap().text().await.unwrap();
    let names = |t: &str| -> std::collections::BTreeSet<String> {
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_owned()))
            .collect()
    };
    let (before, gzipped, after) = (names(&plain), names(&text), names(&after));
    assert!(before.len() > 10, "{plain}");
    assert!(
        before.is_subset(&gzipped),
        "lost: {:?}",
        before.difference(&gzipped)
    );
    assert!(
        gzipped.is_subset(&after),
        "extra: {:?}",
        gzipped.difference(&after)
    );
    let (ok, report) = promtool_check_metrics(&text);
    assert!(ok, "{report}");
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn unchanged_secret_is_not_reapplied_across_a_restart() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    let text = no_budget(&local_config(&sim, "run_on_start = true", ""));
    let r = start(dir.path(), &text).await;
    wait_rotated(&r, &["warehouse-bq", "sales-s3", "finance-sql"]).await;
    assert!(r.shutdown().await);
    assert_eq!(with_method(&sim, "PATCH").len(), 3);

    // Restart: same secrets → unchanged (one per connector: each job has its own), zero
    // writes.
    let r = start(dir.path(), &text).await;
    for connector in ["File_AmazonS3ConnectorV2", "mssql", "gbq"] {
        wait_unchanged(&r, connector, 1.0).await;
    }
    assert!(r.shutdown().await);
    assert_eq!(with_method(&sim, "PATCH").len(), 3);

    // A state.json appearing after the first start is not imported (the database is the
    // state): still unchanged, still no PATCH. With `per_job_unchanged` the job's own
    // series counts it too.
    std::fs::write(dir.path().join("state/state.json"), "{garbage").unwrap();
    let per_job = no_budget(&local_config(
        &sim,
        "run_on_start = true",
        "per_job_unchanged = true",
    ));
    let r = start(dir.path(), &per_job).await;
    wait_outcome(&r, "sales-s3", "unchanged").await;
    wait_unchanged(&r, "File_AmazonS3ConnectorV2", 1.0).await;
    assert!(r.shutdown().await);
    assert_eq!(with_method(&sim, "PATCH").len(), 3);
    let state = common::statedb::dump(&dir.path().join("state"));
    assert!(state.contains("\"sales-s3\""));
}

#[tokio::test]
async fn preflight_skips_a_job_without_update_privilege_and_runs_the_others() {
    let sim = tenant(SimConfig::default()).await;
    sim.set_privileges(S3_ID, vec!["read".into(), "list".into()]);
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    let r = start(
        dir.path(),
        &no_budget(&local_config(&sim, "run_on_start = true", "")),
    )
    .await;
    let text = wait_outcome(&r, "finance-sql", "rotated").await;
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_job_preflight_ok",
            &[("rotation_job", "sales-s3")]
        ),
        Some(0.0)
    );
    // Only the failing job has a pre-flight series.
    assert_eq!(
        text.matches("qlik_rotator_job_preflight_ok{").count(),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "qlik_rotator_jobs", &[("state", "preflight_failed")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "qlik_rotator_jobs", &[("state", "scheduled")]),
        Some(2.0)
    );
    wait_outcome(&r, "warehouse-bq", "rotated").await;
    assert!(r.shutdown().await);
    assert!(
        with_method(&sim, "PATCH")
            .iter()
            .all(|p| !p.path.ends_with(S3_ID))
    );
}

#[tokio::test]
async fn admin_endpoint_needs_the_token_and_a_known_job() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    std::fs::write(dir.path().join("admin-token"), "s3cret-admin-token\n").unwrap();
    let r = start(
        dir.path(),
        &local_config(&sim, "", "admin_token_file = \"admin-token\""),
    )
    .await;
    let http = reqwest::Client::new();
    let url = |job: &str| format!("http://{}/jobs/{job}/rotate", r.addr);
    assert_eq!(
        http.post(url("sales-s3")).send().await.unwrap().status(),
        401
    );
    assert_eq!(
        http.post(url("sales-s3"))
            .bearer_auth("wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        http.post(url("nope"))
            .bearer_auth("s3cret-admin-token")
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let resp = http
        .post(url("sales-s3"))
        .bearer_auth("s3cret-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    wait_outcome(&r, "sales-s3", "rotated").await;
    assert!(r.shutdown().await);

    // Without admin_token_file the endpoint does not exist.
    let r = start(dir.path(), &local_config(&sim, "", "")).await;
    let resp = http
        .post(format!("http://{}/jobs/sales-s3/rotate", r.addr))
        .bearer_auth("s3cret-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn a_429_pauses_every_writer_for_retry_after() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    sim.inject(Fault::RateLimited {
        method: Some("PATCH".into()),
        path_prefix: None,
        retry_after_secs: 2,
        times: 1,
    });
    let r = start(dir.path(), &local_config(&sim, "run_on_start = true", "")).await;
    for job in ["sales-s3", "finance-sql", "warehouse-bq"] {
        wait_outcome(&r, job, "rotated").await;
    }
    let text = scrape(&r).await;
    assert_eq!(
        metric(&text, "qlik_rotator_rate_limited_total", &[]),
        Some(1.0)
    );
    assert!(r.shutdown().await);
    let patches = with_method(&sim, "PATCH");
    assert_eq!(patches.iter().filter(|p| p.status == 429).count(), 1);
    assert_eq!(patches.iter().filter(|p| p.status == 204).count(), 3);
    // Every PATCH after the 429 — from any job — arrived after its Retry-After deadline.
    let limited = patches.iter().position(|p| p.status == 429).unwrap();
    let deadline = patches[limited].at + Duration::from_secs(2);
    for p in &patches[limited + 1..] {
        assert!(
            p.at >= deadline - Duration::from_millis(50),
            "a writer did not pause: {p:?}"
        );
    }
}

/// SQL Server job `j{i}` on a new connection `c{i}` with secret `s{i}` in the file vault;
/// `extra` is appended to the job. Returns the connection id and the `[[jobs]]` entry.
fn sql_job(sim: &Simulator, dir: &Path, i: usize, extra: &str) -> (String, String) {
    let id = sim.add_connection(qlik_sim::SeedConnection::new(
        format!("c{i}"),
        "mssql",
        serde_json::json!({"host": "h", "username": "u"}),
    ));
    write_secret(
        dir,
        &format!("s{i}"),
        &format!(r#"{{"username":"u{i}","password":"p{i}"}}"#),
    );
    let job = format!(
        "[[jobs]]\nname = \"j{i}\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"mssql\"\nsource = \"vault\"\nsecret = \"s{i}\"\n{extra}\n"
    );
    (id, job)
}

/// Twelve jobs rotating at once against a scaled-down Qlik (5 writes per 3-second window, i.e.
/// 100 per minute), sharing one write budget.
async fn budget_run(budget_per_min: u32) -> Simulator {
    let sim = Simulator::start(SimConfig {
        write_limit_per_min: Some(5),
        rate_window: Duration::from_secs(3),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut jobs = String::new();
    for i in 0..12 {
        jobs.push_str(&sql_job(&sim, dir.path(), i, "run_on_start = true").1);
    }
    let text = format!(
        "{}write_budget_per_min = {budget_per_min}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\nmax_concurrent_rotations = 12\n[metrics]\nlisten = \"127.0.0.1:0\"\nper_job_rotated = true\n{jobs}",
        qlik_section(&sim)
    );
    let r = start(dir.path(), &text).await;
    for i in 0..12 {
        wait_metric(
            &r,
            "qlik_rotator_rotations_total",
            &[("rotation_job", &format!("j{i}")), ("outcome", "rotated")],
            1.0,
        )
        .await;
    }
    assert!(r.shutdown().await);
    sim
}

#[tokio::test]
async fn jobs_sharing_the_write_budget_never_exceed_it() {
    // A budget of 90/min under the server's 100/min: the 10% margin absorbs scheduling jitter
    // of the scaled-down 3-second window (in production the window is 60 s). The control
    // without a budget (next test) shows this assertion can fail.
    let sim = budget_run(90).await;
    assert_eq!(sim.writes_total(), 12);
    assert!(
        sim.writes_in_window_max() <= 5,
        "max writes in a window: {}",
        sim.writes_in_window_max()
    );
    assert!(
        with_method(&sim, "PATCH").iter().all(|p| p.status == 204),
        "no 429 expected"
    );
}

/// Control of [`jobs_sharing_the_write_budget_never_exceed_it`] (a test of its own, so the
/// two real-time runs go in parallel): without the shared budget the same load is rate
/// limited, and the 429s are retried until every job is rotated.
#[tokio::test]
async fn without_a_write_budget_the_same_load_is_rate_limited_and_retried() {
    let sim = budget_run(0).await;
    let patches = with_method(&sim, "PATCH");
    assert!(
        patches.iter().any(|p| p.status == 429),
        "expected 429s without a budget"
    );
    assert_eq!(patches.iter().filter(|p| p.status == 204).count(), 12);
}

/// Jobs sharing a schedule share one cron entry, and their runs hold the shared rotation
/// slots (the real runner over HTTP). No tick is awaited: the schedules are daily and the jobs
/// start through `run_on_start`; the tick handler's decisions are tested on paused time in
/// `src/daemon/tests.rs`, and the cron entries really firing in
/// `a_new_secret_version_in_secrets_manager_is_applied_once_on_the_next_tick`.
#[tokio::test]
async fn jobs_sharing_a_schedule_share_one_cron_entry_and_respect_the_concurrency_cap() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    const PATCH_DELAY: Duration = Duration::from_millis(300);
    sim.inject(Fault::Delay {
        method: Some("PATCH".into()),
        path_prefix: None,
        delay: PATCH_DELAY,
        times: 6,
    });
    let mut jobs = String::new();
    let mut ids = Vec::new();
    for i in 0..7 {
        // Six jobs on one daily schedule (one cron entry), started at once; the seventh on
        // the same schedule in another zone (a second entry); it never runs here.
        let schedule = if i < 6 {
            "schedule = \"0 0 3 * * *\"\nrun_on_start = true"
        } else {
            "schedule = \"0 0 3 * * *\"\ntimezone = \"Europe/Paris\""
        };
        let (id, job) = sql_job(&sim, dir.path(), i, schedule);
        jobs.push_str(&job);
        ids.push(id);
    }
    // No write budget: its spacing (0.6 s) would keep the PATCHes apart by itself.
    let text = format!(
        "{}[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\nmax_concurrent_rotations = 2\n[metrics]\nlisten = \"127.0.0.1:0\"\nper_job_rotated = true\n{jobs}",
        no_budget(&qlik_section(&sim))
    );
    let r = start(dir.path(), &text).await;
    assert_eq!(r.cron_entries(), 2);
    let names: Vec<String> = (0..6).map(|i| format!("j{i}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_rotated(&r, &names).await;
    assert!(r.shutdown().await);

    let patches = with_method(&sim, "PATCH");
    assert_eq!(patches.len(), 6, "one PATCH per job, never repeated");
    assert!(patches.iter().all(|p| p.status == 204));
    assert!(
        !patches.iter().any(|q| q.path.ends_with(&ids[6])),
        "the job in the other zone did not run"
    );
    // With two rotation slots, a third PATCH can only start once the first rotation has
    // had its (delayed) PATCH answered: arrivals two apart are at least the delay apart.
    let mut at: Vec<std::time::Instant> = patches.iter().map(|p| p.at).collect();
    at.sort();
    for w in at.windows(3) {
        assert!(
            w[2].duration_since(w[0]) >= PATCH_DELAY,
            "three PATCHes in flight at once: {:?}",
            w[2].duration_since(w[0])
        );
    }
}

/// An admin trigger of a job whose run is in progress is accepted, and the runner skips it:
/// one PATCH, one outcome.
#[tokio::test]
async fn a_trigger_while_the_job_runs_is_skipped_by_the_runner() {
    let sim = tenant(SimConfig::default()).await;
    sim.inject(Fault::Delay {
        method: Some("PATCH".into()),
        path_prefix: None,
        delay: Duration::from_millis(500),
        times: 1,
    });
    let dir = tempfile::tempdir().unwrap();
    standard_secrets(dir.path());
    let r = start(dir.path(), &local_config(&sim, "", "")).await;
    assert!(matches!(
        r.daemon.trigger("sales-s3", true),
        daemon::Triggered::Started
    ));
    wait_metric(&r, "qlik_rotator_rotations_in_flight", &[], 1.0).await;
    // Forced, so only the job's lock can keep it from writing again.
    assert!(matches!(
        r.daemon.trigger("sales-s3", true),
        daemon::Triggered::Started
    ));
    let text = wait_outcome(&r, "sales-s3", "rotated").await;
    // The drain waits for every run the triggers started, the skipped one included.
    assert!(r.shutdown().await);
    assert_eq!(with_method(&sim, "PATCH").len(), 1, "the second run wrote");
    for outcome in ["unchanged", "failed", "verify_failed"] {
        let labels = [("rotation_job", "sales-s3"), ("outcome", outcome)];
        assert_eq!(metric(&text, "qlik_rotator_rotations_total", &labels), None);
    }
    let s3 = [("connector", "File_AmazonS3ConnectorV2")];
    assert_eq!(
        metric(&text, "qlik_rotator_rotations_unchanged_total", &s3),
        Some(0.0)
    );
}

// === the real binary ===

fn moto_config(dir: &Path, sim: &Simulator, schedule: &str) -> PathBuf {
    let port = common::moto::free_port();
    let text = format!(
        "{}\n[sources.aws]\ntype = \"aws_secrets_manager\"\n[daemon]\nstate_dir = \"state\"\nshutdown_grace_period = \"20s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nper_job_rotated = true\n\n[[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\nsource = \"aws\"\nsecret = \"qlik/sales-s3\"\n{schedule}\n",
        qlik_section(sim)
    );
    write_config(dir, &text)
}

/// Moto holding `qlik/sales-s3`, a seeded tenant, a config whose one job reads it, and the
/// daemon's environment (AWS and the API key).
struct MotoDaemon {
    moto: Moto,
    sim: Simulator,
    dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

/// The setup of the moto-backed daemon tests: `secret` is the secret's first value,
/// `schedule` the job's schedule line.
async fn moto_daemon(secret: &str, schedule: &str) -> MotoDaemon {
    let moto = Moto::start();
    moto.create_secret("qlik/sales-s3", secret).await;
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let config = moto_config(dir.path(), &sim, schedule);
    let mut env = aws_env(&moto);
    env.push(("QLIK_API_KEY".into(), API_KEY.into()));
    MotoDaemon {
        moto,
        sim,
        dir,
        config,
        env,
    }
}

/// Waits until the daemon at `addr` has rotated `sales-s3` once; returns `/metrics`.
async fn wait_first_rotation(addr: std::net::SocketAddr) -> String {
    wait_proc_metric(
        addr,
        "qlik_rotator_rotations_total",
        &[("rotation_job", "sales-s3"), ("outcome", "rotated")],
        1.0,
    )
    .await
}

/// No canary (any `CANARY` string) in the daemon's stdout or stderr, nor the API key in its logs.
#[track_caller]
fn assert_no_canary_or_key(out: &CliOutput) {
    assert!(
        !out.stderr.contains("CANARY") && !out.stdout.contains("CANARY"),
        "a canary leaked:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(API_KEY),
        "the API key leaked into logs"
    );
}

#[tokio::test]
async fn a_new_secret_version_in_secrets_manager_is_applied_once_on_the_next_tick() {
    // The real-clock proof that tokio-cron-scheduler fires the daemon's cron entries (every
    // second here; about four ticks): everything else about ticks runs on paused time in
    // src/daemon/tests.rs.
    let d = moto_daemon(
        r#"{"accessKey":"AKIAV1","secretKey":"v1-secret"}"#,
        "schedule = \"* * * * * *\"",
    )
    .await;
    let p = Daemon::run(&d.config, &d.env).await;
    let rotated = [("rotation_job", "sales-s3"), ("outcome", "rotated")];
    // `unchanged` is counted per connector (the job's is the only one here).
    let unchanged = [("connector", "File_AmazonS3ConnectorV2")];
    wait_proc_metric(p.addr(), "qlik_rotator_rotations_total", &rotated, 1.0).await;
    assert_eq!(stored_prop(&d.sim, S3_ID, "accessKey"), "AKIAV1");

    d.moto
        .put_secret_value(
            "qlik/sales-s3",
            r#"{"accessKey":"AKIAV2","secretKey":"v2-secret"}"#,
        )
        .await;
    let text = wait_proc_metric(p.addr(), "qlik_rotator_rotations_total", &rotated, 2.0).await;
    assert_eq!(stored_prop(&d.sim, S3_ID, "accessKey"), "AKIAV2");
    // The next tick finds the new version applied: unchanged, no write.
    let before = metric(&text, "qlik_rotator_rotations_unchanged_total", &unchanged)
        .expect("pre-created for the job's connector");
    wait_proc_metric(
        p.addr(),
        "qlik_rotator_rotations_unchanged_total",
        &unchanged,
        before + 1.0,
    )
    .await;
    assert_eq!(
        with_method(&d.sim, "PATCH").len(),
        2,
        "each version is applied exactly once"
    );
    let out = p.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn sigterm_during_a_slow_patch_finishes_patch_and_verify_then_exits_0() {
    let mut d = moto_daemon(
        r#"{"accessKey":"AKIASLOW","secretKey":"slow"}"#,
        "run_on_start = true",
    )
    .await;
    d.sim.inject(Fault::Delay {
        method: Some("PATCH".into()),
        path_prefix: None,
        delay: Duration::from_secs(3),
        times: 1,
    });
    d.env.push(("RUST_LOG".into(), "info".into()));
    let p = Daemon::run(&d.config, &d.env).await;
    wait_proc_metric(p.addr(), "qlik_rotator_rotations_in_flight", &[], 1.0).await;
    let addr = p.addr();
    let out = p.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("Shutting down"), "{}", out.stderr);
    assert!(
        out.stderr.contains("All rotations finished"),
        "{}",
        out.stderr
    );
    let patches = with_method(&d.sim, "PATCH");
    assert_eq!(patches.len(), 1);
    assert_eq!(patches[0].status, 204);
    // The verify GET happened after the PATCH.
    let reqs = d.sim.requests();
    let i = reqs.iter().position(|r| r.method == "PATCH").unwrap();
    assert!(
        reqs[i + 1..]
            .iter()
            .any(|r| r.method == "GET" && r.path.ends_with(S3_ID))
    );
    assert!(common::statedb::dump(&d.dir.path().join("state")).contains("\"sales-s3\""));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "the listener is closed after exit"
    );
}

#[tokio::test]
async fn canary_secret_never_appears_in_metrics_or_daemon_logs() {
    let mut d = moto_daemon(
        r#"{"accessKey":"CANARY-D-AKIA","secretKey":"CANARY-D-SECRET"}"#,
        "run_on_start = true",
    )
    .await;
    d.env.push(("RUST_LOG".into(), "trace".into()));
    let p = Daemon::run(&d.config, &d.env).await;
    let text = wait_first_rotation(p.addr()).await;
    let out = p.stop().await;
    assert_eq!(stored_prop(&d.sim, S3_ID, "secretKey"), "CANARY-D-SECRET");
    assert!(!text.contains("CANARY"), "{text}");
    assert_no_canary_or_key(&out);
}

/// `RUST_LOG=trace` (even naming the HTTP and AWS crates explicitly) shows the daemon's own
/// debug lines but no debug or trace line from a crate in `telemetry::WIRE_TARGETS`, whose
/// output can carry headers and bodies; and no canary secret anywhere.
#[tokio::test]
async fn rust_log_trace_never_shows_wire_level_lines() {
    let mut d = moto_daemon(
        r#"{"accessKey":"CANARY-W-AKIA","secretKey":"CANARY-W-SECRET"}"#,
        "run_on_start = true",
    )
    .await;
    d.env.push((
        "RUST_LOG".into(),
        "trace,hyper=trace,reqwest=trace,aws_smithy_runtime=trace,h2=trace".into(),
    ));
    let p = Daemon::run_with(&d.config, &d.env, &["--log-format", "json"]).await;
    wait_first_rotation(p.addr()).await;
    let out = p.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(stored_prop(&d.sim, S3_ID, "secretKey"), "CANARY-W-SECRET");
    let mut own_debug = 0;
    let mut wire = Vec::new();
    for line in out.stderr.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        let target = v["target"].as_str().unwrap_or_default();
        let level = v["level"].as_str().unwrap_or_default();
        let detailed = level == "DEBUG" || level == "TRACE";
        if detailed && target.starts_with("qlik_rotator") {
            own_debug += 1;
        }
        let is_wire = qlik_rotator::telemetry::WIRE_TARGETS
            .iter()
            .any(|w| target == *w || target.starts_with(&format!("{w}::")));
        if detailed && is_wire {
            wire.push(line.to_owned());
        }
    }
    assert!(
        own_debug > 0,
        "RUST_LOG=trace was not applied:\n{}",
        out.stderr
    );
    assert!(
        wire.is_empty(),
        "{} wire-level line(s), e.g. {}",
        wire.len(),
        wire[0]
    );
    assert_no_canary_or_key(&out);
}

#[tokio::test]
async fn a_transient_failure_is_retried_within_the_run_and_counted_once() {
    // (max_attempts_per_run, PATCH statuses on sales-s3, the run's outcome)
    let cases: [(u32, &[u16], &str); 2] = [(2, &[503, 204], "rotated"), (1, &[503], "failed")];
    println!("{} cases", cases.len());
    for (per_run, statuses, outcome) in cases {
        let sim = tenant(SimConfig::default()).await;
        sim.inject(Fault::Status {
            method: Some("PATCH".into()),
            path_prefix: Some(format!("/api/v1/data-connections/{S3_ID}")),
            status: 503,
            times: 1,
        });
        let dir = tempfile::tempdir().unwrap();
        standard_secrets(dir.path());
        // One attempt per request in the client, so the 503 reaches the runner's policy.
        let text = local_config(&sim, "run_on_start = true", "")
            .replace(
                "api_key_env = \"QLIK_API_KEY\"\n",
                "api_key_env = \"QLIK_API_KEY\"\nmax_attempts = 1\n",
            )
            .replace(
                "state_dir = \"state\"\n",
                &format!("state_dir = \"state\"\nmax_attempts_per_run = {per_run}\n"),
            );
        let r = start(dir.path(), &text).await;
        let text = wait_outcome(&r, "sales-s3", outcome).await;
        // The run is one outcome, not one per attempt: `errors_total` counts a run that ended
        // failed (once), `rotation_retries_total` the attempt that was tried again.
        let errors = [
            ("rotation_job", "sales-s3"),
            ("stage", "apply"),
            ("error_type", "server_error"),
        ];
        let (want_errors, want_retries) = if outcome == "rotated" {
            (0.0, 1.0)
        } else {
            (1.0, 0.0)
        };
        assert_eq!(
            metric(&text, "qlik_rotator_errors_total", &errors).unwrap_or(0.0),
            want_errors,
            "{text}"
        );
        assert_eq!(
            metric(
                &text,
                "qlik_rotator_rotation_retries_total",
                &[("stage", "apply")]
            ),
            Some(want_retries),
            "{text}"
        );
        let other = if outcome == "rotated" {
            "failed"
        } else {
            "rotated"
        };
        assert_eq!(
            metric(
                &text,
                "qlik_rotator_rotations_total",
                &[("rotation_job", "sales-s3"), ("outcome", other)]
            )
            .unwrap_or(0.0),
            0.0,
            "{text}"
        );
        assert!(r.shutdown().await);
        let got: Vec<u16> = with_method(&sim, "PATCH")
            .iter()
            .filter(|p| p.path.ends_with(S3_ID))
            .map(|p| p.status)
            .collect();
        assert_eq!(got, statuses, "max_attempts_per_run = {per_run}");
    }
}
