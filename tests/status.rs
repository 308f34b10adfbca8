//! `qlik-rotator status`, the admin API's `GET /jobs`, `GET /jobs/{name}`, and the run ids of
//! the triggers (`GET /runs/{id}`), issue 15 item 2.
//!
//! Rotations run against the simulator over HTTP with a file vault; `status` is the real
//! binary reading the state database the rotations wrote (beside a running daemon where that
//! matters); the admin endpoints are those of a daemon started in process.

mod common;

use std::{collections::HashMap, time::Duration};

use common::harness::*;
use qlik_rotator::{
    config,
    daemon::{self, Running},
};
use qlik_sim::{SimConfig, Simulator};

/// Every secret value contains this.
const CANARY: &str = "CANARY-STAT";
const ADMIN: &str = "admin-token-123";
const READER: &str = "read-token-456";

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: String,
}

async fn world(metrics_extra: &str) -> World {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    common::write_demo_vault(dir.path(), "CANARY-STAT");
    std::fs::write(dir.path().join("admin-token"), ADMIN).unwrap();
    std::fs::write(dir.path().join("read-token"), READER).unwrap();
    // sales-s3 on an hourly schedule; finance-sql at start; warehouse-bq on demand.
    let jobs = three_jobs("vault")
        .replacen(
            "secret = \"qlik/sales-s3\"",
            "secret = \"qlik/sales-s3\"\nschedule = \"0 0 * * * *\"",
            1,
        )
        .replacen(
            "secret = \"qlik/finance-sql\"",
            "secret = \"qlik/finance-sql\"\nrun_on_start = true",
            1,
        );
    let text = format!(
        "{}write_budget_per_min = 0\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{metrics_extra}\n{jobs}",
        qlik_section(&sim)
    );
    let config = write_config(dir.path(), &text).to_str().unwrap().to_owned();
    World { sim, dir, config }
}

impl World {
    fn env(&self) -> Vec<(String, String)> {
        env(&[("QLIK_API_KEY", API_KEY)])
    }

    async fn status(&self, extra: &[&str]) -> CliOutput {
        let mut args = vec!["status", "-c", &self.config];
        args.extend(extra);
        let out = run_cli(&args, &self.env()).await;
        assert_clean(&out.stdout);
        assert_clean(&out.stderr);
        out
    }

    async fn start(&self) -> Running {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let input: HashMap<String, String> = self.env().into_iter().collect();
        let cfg = config::load_str(&text, self.dir.path(), &input).expect("valid config");
        let r = daemon::start(&cfg, &input).await.unwrap();
        r.daemon.preflight_finished().await;
        r
    }
}

/// No canary and no raw control character (other than newline).
fn assert_clean(text: &str) {
    assert!(!text.contains(CANARY), "a canary in:\n{text}");
    assert!(
        !text.chars().any(|c| c.is_control() && c != '\n'),
        "a control character in: {text:?}"
    );
}

fn document(out: &CliOutput) -> serde_json::Value {
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout
            .starts_with("{\"schema\":\"qlik-rotator.status/v1\""),
        "{}",
        out.stdout
    );
    assert_eq!(out.stdout.trim_end().lines().count(), 1, "one line");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

fn job<'a>(doc: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    (doc["jobs"].as_array().unwrap().iter())
        .find(|j| j["job"] == name)
        .unwrap_or_else(|| panic!("no {name} in {doc}"))
}

#[tokio::test]
async fn status_shows_a_real_rotation_and_a_failure_in_json_and_table() {
    let w = world("").await;
    // Before anything ran: every job, nothing recorded, and it says so.
    let out = w.status(&["--output", "json"]).await;
    let doc = document(&out);
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 3);
    assert!(job(&doc, "sales-s3")["connections"][0]["last_attempt"].is_null());
    assert!(
        out.stderr.contains("nothing has been recorded"),
        "{}",
        out.stderr
    );
    assert!(
        !w.dir.path().join("state/state.db").exists(),
        "a reader creates nothing"
    );

    let out = run_cli(&["rotate", "-c", &w.config, "--all"], &w.env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Then sales-s3 fails: its secret loses a field.
    std::fs::write(
        w.dir.path().join("vault/qlik/sales-s3.json"),
        r#"{"accessKey":"CANARY-STAT-ONLY"}"#,
    )
    .unwrap();
    let out = run_cli(&["rotate", "-c", &w.config, "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);

    let doc = document(&w.status(&["--output", "json"]).await);
    let s3 = job(&doc, "sales-s3");
    assert_eq!(s3["triggers"], serde_json::json!(["schedule"]));
    assert_eq!(s3["schedule"], "0 0 * * * *");
    let next = s3["next_due"]["at"].as_str().unwrap();
    assert!(next.ends_with(":00:00Z"), "hourly: {next}");
    assert!(s3["next_due"]["at_ms"].as_i64().unwrap() > chrono::Utc::now().timestamp_millis());
    let c = &s3["connections"][0];
    assert_eq!(c["connection_id"], S3_ID);
    assert_eq!(c["last_attempt"]["outcome"], "failed");
    assert_eq!(c["last_error"]["outcome"], "failed");
    assert!(c["last_error"]["stage"].is_string() && c["last_error"]["error_type"].is_string());
    assert_eq!(c["last_success"]["outcome"], "rotated");
    assert!(c["last_success"]["at_ms"].as_i64() < c["last_error"]["at_ms"].as_i64());
    let applied = c["applied_version"].as_str().expect("a version id");
    assert!(!applied.is_empty());
    // The state store does not hold the secret's creation time; the daemon does.
    assert!(s3["credential_age_seconds"].is_null() && s3["running"].is_null());

    let sql = job(&doc, "finance-sql");
    assert_eq!(sql["due"], "at start");
    assert_eq!(sql["triggers"], serde_json::json!(["at_start"]));
    assert!(sql["next_due"].is_null());
    assert_eq!(
        sql["connections"][0]["connection_id"], SQL_ID,
        "the resolved id"
    );
    assert_eq!(sql["connections"][0]["last_attempt"]["outcome"], "rotated");
    assert!(sql["connections"][0]["last_error"].is_null());
    assert_eq!(job(&doc, "warehouse-bq")["due"], "on demand only");

    // One job.
    let doc = document(
        &w.status(&["--output", "json", "--job", "finance-sql"])
            .await,
    );
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 1);

    // The table: a header and one line per connection.
    let out = w.status(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.stdout);
    assert!(
        lines[0].starts_with("JOB") && lines[0].contains("NEXT DUE"),
        "{}",
        out.stdout
    );
    let s3_line = lines.iter().find(|l| l.starts_with("sales-s3")).unwrap();
    assert!(
        s3_line.contains(" failed") && s3_line.contains(applied),
        "{s3_line}"
    );
    assert_eq!(
        with_method(&w.sim, "PATCH").len(),
        3,
        "status sends nothing"
    );
}

#[tokio::test]
async fn status_refuses_bad_arguments_with_64() {
    let w = world("").await;
    for (extra, needle) in [
        (&["--job", "nope\u{1b}[2J"][..], "--job"),
        (&["--output", "yaml"][..], "--output"),
    ] {
        let out = w.status(extra).await;
        assert_eq!(out.code, 64, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains(needle), "{extra:?}: {}", out.stderr);
        assert!(out.stdout.is_empty());
    }
    // A broken config: 64, naming the key.
    std::fs::write(&w.config, "[qlik]\ntenant_url = 3\n").unwrap();
    let out = w.status(&[]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(out.stderr.contains("qlik.tenant_url"), "{}", out.stderr);
}

async fn call(
    r: &Running,
    method: reqwest::Method,
    path: &str,
    token: Option<&str>,
) -> (u16, reqwest::header::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut req = client.request(method, format!("http://{}{path}", r.addr));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.text().await.unwrap();
    assert_clean(&body);
    (status, headers, body)
}

async fn get(r: &Running, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, _, body) = call(r, reqwest::Method::GET, path, token).await;
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// Triggers `path` and follows its run to the end; returns the finished run.
async fn trigger_and_follow(r: &Running, path: &str) -> serde_json::Value {
    let (status, headers, body) = call(r, reqwest::Method::POST, path, Some(ADMIN)).await;
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = body["run"].as_str().expect("a run id").to_owned();
    assert_eq!(headers["location"], format!("/runs/{id}").as_str());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, run) = get(r, &format!("/runs/{id}"), Some(READER)).await;
        assert_eq!(status, 200, "{run}");
        assert!(["queued", "running", "finished"].contains(&run["state"].as_str().unwrap()));
        if run["state"] == "finished" {
            return run;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never finished: {run}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_admin_api_shows_jobs_and_follows_triggered_runs() {
    let w = world("admin_token_file = \"admin-token\"\nread_token_file = \"read-token\"").await;
    let r = w.start().await;

    // Auth: none or a wrong token is 401; the read token reads but cannot trigger.
    for token in [None, Some("wrong"), Some(&format!("{READER}x")[..])] {
        assert_eq!(get(&r, "/jobs", token).await.0, 401, "{token:?}");
        assert_eq!(get(&r, "/jobs/sales-s3", token).await.0, 401, "{token:?}");
        assert_eq!(
            get(&r, "/runs/00000000000000000000000000000000", token)
                .await
                .0,
            401
        );
    }
    let (status, _, _) = call(
        &r,
        reqwest::Method::POST,
        "/jobs/sales-s3/rotate",
        Some(READER),
    )
    .await;
    assert_eq!(status, 401, "the read token does not trigger");

    let run = trigger_and_follow(&r, "/jobs/sales-s3/rotate").await;
    assert_eq!(run["trigger"], "job");
    assert_eq!(run["target"], "sales-s3");
    assert_eq!(run["ok"], true, "{run}");
    assert_eq!(run["jobs"][0]["job"], "sales-s3");
    let conn = &run["jobs"][0]["connections"][0];
    assert_eq!(conn["connection"], S3_ID);
    assert_eq!(conn["outcome"], "rotated");
    assert!(conn["stage"].is_null() && conn["secret_version"].is_string());

    // By secret: every job of the secret, each with its outcome (the same version again:
    // unchanged).
    let run = trigger_and_follow(&r, "/secrets/qlik%2Fsales-s3/rotate").await;
    assert_eq!(run["trigger"], "secret");
    assert_eq!(
        run["jobs"][0]["connections"][0]["outcome"], "unchanged",
        "{run}"
    );

    // A failing run: its outcome, stage and error type.
    std::fs::write(
        w.dir.path().join("vault/qlik/bigquery.json"),
        r#"{"nothing":"CANARY-STAT-X"}"#,
    )
    .unwrap();
    let run = trigger_and_follow(&r, "/jobs/warehouse-bq/rotate").await;
    assert_eq!(run["ok"], false, "{run}");
    let conn = &run["jobs"][0]["connections"][0];
    assert_eq!(conn["outcome"], "failed");
    assert!(
        conn["stage"].is_string() && conn["error_type"].is_string(),
        "{run}"
    );

    // GET /jobs: every job, with what the daemon knows (the admin token reads too).
    let (status, doc) = get(&r, "/jobs", Some(ADMIN)).await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["schema"], "qlik-rotator.jobs/v1");
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 3);
    let s3 = job(&doc, "sales-s3");
    assert_eq!(s3["running"], false);
    assert_eq!(s3["preflight_ok"], true);
    assert_eq!(s3["connections"][0]["last_attempt"]["outcome"], "unchanged");
    assert_eq!(s3["connections"][0]["last_success"]["from"], "attempts");
    let (status, one) = get(&r, "/jobs/warehouse-bq", Some(READER)).await;
    assert_eq!(status, 200, "{one}");
    assert_eq!(one["schema"], "qlik-rotator.job/v1");
    assert_eq!(one["connections"][0]["last_error"]["outcome"], "failed");
    assert_eq!(one["due"], "on demand only");

    // `status` reads beside the running daemon (no lock), and agrees.
    let doc = document(&w.status(&["--output", "json"]).await);
    assert_eq!(
        job(&doc, "warehouse-bq")["connections"][0]["last_attempt"]["outcome"],
        "failed"
    );

    // Unknown or hostile names and ids: 404, echo escaped and capped.
    let (status, body) = get(&r, "/jobs/nope", Some(READER)).await;
    assert_eq!(status, 404);
    assert!(body.to_string().contains("no job named"), "{body}");
    let (status, body) = get(&r, "/jobs/%1B%5B2J%0Aevil", Some(READER)).await;
    assert_eq!(status, 404);
    assert!(body.to_string().contains("\\\\u{1b}"), "escaped: {body}");
    let huge = "x".repeat(60_000);
    let (status, _, body) = call(
        &r,
        reqwest::Method::GET,
        &format!("/jobs/{huge}"),
        Some(READER),
    )
    .await;
    assert!(matches!(status, 404 | 414 | 431), "{status}");
    assert!(
        body.len() < 2_000,
        "the echo is capped: {} bytes",
        body.len()
    );
    let (status, _, _) = call(&r, reqwest::Method::POST, "/jobs/nope/rotate", Some(ADMIN)).await;
    assert_eq!(status, 404);
    for id in [
        "00000000000000000000000000000000",
        "ZZZ",
        "..%2F..%2Fetc%2Fpasswd",
        &"a".repeat(5000),
    ] {
        let (status, body) = get(&r, &format!("/runs/{id}"), Some(READER)).await;
        assert_eq!(status, 404, "{id}: {body}");
        assert!(body.to_string().len() < 1_000);
    }

    // Nothing in /metrics or the logs' subject either: the canary never left the vault.
    assert_clean(&http_get(r.addr, "/metrics").await.1);
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn the_read_api_is_disabled_without_a_token_and_the_admin_token_alone_reads() {
    let w = world("").await;
    let r = w.start().await;
    for path in [
        "/jobs",
        "/jobs/sales-s3",
        "/runs/00000000000000000000000000000000",
    ] {
        let (status, body) = get(&r, path, Some(ADMIN)).await;
        assert_eq!(status, 404, "{path}");
        assert!(
            body.to_string().contains("metrics.read_token_file"),
            "{body}"
        );
    }
    assert!(r.shutdown().await);

    let w = world("admin_token_file = \"admin-token\"").await;
    let r = w.start().await;
    assert_eq!(get(&r, "/jobs", Some(ADMIN)).await.0, 200);
    assert_eq!(get(&r, "/jobs", Some(READER)).await.0, 401);
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn a_missing_read_token_file_is_a_config_error_naming_the_key() {
    let w = world("read_token_file = \"no-such-file\"").await;
    let out = run_cli(&["check-config", "-c", &w.config], &w.env()).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("metrics.read_token_file"),
        "{}",
        out.stderr
    );
    let text = std::fs::read_to_string(&w.config).unwrap();
    let input: HashMap<String, String> = w.env().into_iter().collect();
    let cfg = config::load_str(&text, w.dir.path(), &input).unwrap();
    let err = daemon::start(&cfg, &input).await.unwrap_err();
    assert!(err.to_string().contains("metrics.read_token_file"), "{err}");
    assert!(with_method(&w.sim, "GET").is_empty(), "nothing sent");
}
