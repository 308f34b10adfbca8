//! `qlik-rotator history` and the retention of the audit trail (issue 12).
//!
//! Rotations run against the simulator over HTTP with a file vault; `history` is the real
//! binary reading the state database, while a daemon holds it where that matters.

mod common;

use std::{collections::HashMap, path::Path, time::Duration};

use common::harness::*;
use qlik_rotator::{
    config,
    daemon::{self, Running},
    state::{Attempt, SqliteBackend, StateBackend},
};
use qlik_sim::{SimConfig, Simulator};

/// Every secret value contains this.
const CANARY: &str = "CANARY-HIST";

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: String,
}

async fn world() -> World {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    common::write_demo_vault(dir.path(), "CANARY-HIST");
    let text = format!(
        "{}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}",
        qlik_section(&sim),
        three_jobs("vault")
    );
    let config = write_config(dir.path(), &text).to_str().unwrap().to_owned();
    World { sim, dir, config }
}

impl World {
    fn env(&self) -> Vec<(String, String)> {
        env(&[("QLIK_API_KEY", API_KEY)])
    }

    async fn history(&self, extra: &[&str]) -> CliOutput {
        let mut args = vec!["history", "-c", &self.config];
        args.extend(extra);
        let out = run_cli(&args, &self.env()).await;
        assert_clean(&out);
        out
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("state")
    }

    fn patches(&self) -> usize {
        with_method(&self.sim, "PATCH").len()
    }

    async fn start_in_process(&self) -> Running {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let input: HashMap<String, String> = self.env().into_iter().collect();
        let cfg = config::load_str(&text, self.dir.path(), &input).expect("valid config");
        daemon::start(&cfg, &input).await.unwrap()
    }
}

/// No canary and no raw control character (other than newline) in anything printed.
fn assert_clean(out: &CliOutput) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains(CANARY), "a canary in {name}:\n{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "a control character in {name}: {text:?}"
        );
    }
}

fn json(out: &CliOutput) -> Vec<serde_json::Value> {
    assert_eq!(out.code, 0, "{}", out.stderr);
    let doc = serde_json::from_str::<serde_json::Value>(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    assert_eq!(doc["schema"], "qlik-rotator.history/v1");
    assert!(out.stdout.starts_with("{\"schema\":"), "schema first");
    assert_eq!(out.stdout.trim_end().lines().count(), 1, "one line");
    doc["attempts"].as_array().unwrap().clone()
}

/// Seeds attempts straight into a state database (no daemon running).
async fn seed(dir: &Path, attempts: &[Attempt]) {
    let s = SqliteBackend::open(dir).unwrap();
    for a in attempts {
        s.append_history(a).await.unwrap();
    }
    s.close().await;
}

fn attempt(at_ms: i64, job: &str, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        job: job.into(),
        connection: S3_ID.into(),
        outcome: outcome.into(),
        stage: None,
        error_type: None,
        secret_version: Some("v1".into()),
        duration_ms: 7,
    }
}

#[tokio::test]
async fn rotations_show_in_history_newest_first_with_the_json_shape() {
    let w = world().await;
    let out = run_cli(&["rotate", "-c", &w.config, "--all"], &w.env()).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // A failure too: the S3 secret loses a field.
    std::fs::write(
        w.dir.path().join("vault/qlik/sales-s3.json"),
        r#"{"accessKey":"CANARY-HIST-ONLY"}"#,
    )
    .unwrap();
    let out = run_cli(&["rotate", "-c", &w.config, "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(w.patches(), 3);

    let rows = json(&w.history(&["--output", "json"]).await);
    assert_eq!(rows.len(), 4, "{rows:?}");
    let first = &rows[0];
    assert_eq!(first["job"], "sales-s3");
    assert_eq!(first["outcome"], "failed");
    assert!(first["stage"].is_string() && first["error_type"].is_string());
    let keys: Vec<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "at",
            "at_ms",
            "connection",
            "duration_ms",
            "error_type",
            "job",
            "outcome",
            "secret_version",
            "stage"
        ]
    );
    let times: Vec<i64> = rows.iter().map(|r| r["at_ms"].as_i64().unwrap()).collect();
    assert!(
        times.windows(2).all(|w| w[0] >= w[1]),
        "newest first: {times:?}"
    );
    let rotated: Vec<_> = rows.iter().filter(|r| r["outcome"] == "rotated").collect();
    assert_eq!(rotated.len(), 3);
    assert!(rotated.iter().all(|r| r["stage"].is_null()));
    assert!(
        rotated
            .iter()
            .any(|r| r["connection"] == S3_ID && r["job"] == "sales-s3")
    );

    // Filters.
    let rows = json(&w.history(&["--output", "json", "--job", "sales-s3"]).await);
    assert_eq!(rows.len(), 2);
    let rows = json(
        &w.history(&["--output", "json", "--connection", SQL_ID])
            .await,
    );
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["job"], "finance-sql");
    let rows = json(&w.history(&["--output", "json", "--limit", "1"]).await);
    assert_eq!(rows.len(), 1);
    let rows = json(&w.history(&["--output", "json", "--since", "1h"]).await);
    assert_eq!(rows.len(), 4);
    let rows = json(&w.history(&["--output", "json", "--job", "nope"]).await);
    assert!(rows.is_empty());

    // The table: a header and one line per attempt.
    let out = w.history(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 5, "{}", out.stdout);
    assert!(lines[0].starts_with("TIME"), "{}", out.stdout);
    assert!(lines[1].contains("sales-s3") && lines[1].contains("failed"));
}

#[tokio::test]
async fn since_filters_by_time_on_seeded_rows() {
    let w = world().await;
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    seed(
        &w.state_dir(),
        &[
            attempt(now - 10 * day, "old", "rotated"),
            attempt(now - 2 * day, "middle", "unchanged"),
            attempt(now - 1000, "new", "rotated"),
        ],
    )
    .await;
    let jobs = |rows: Vec<serde_json::Value>| -> Vec<String> {
        rows.iter()
            .map(|r| r["job"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        jobs(json(
            &w.history(&["--output", "json", "--since", "1d"]).await
        )),
        ["new"]
    );
    assert_eq!(
        jobs(json(
            &w.history(&["--output", "json", "--since", "7d"]).await
        )),
        ["new", "middle"]
    );
    assert_eq!(
        jobs(json(&w.history(&["--output", "json"]).await)),
        ["new", "middle", "old"]
    );
}

#[tokio::test]
async fn bad_arguments_exit_64_and_name_the_flag() {
    let w = world().await;
    let cases: &[(&[&str], &str)] = &[
        (&["--since", "7 parsecs"], "--since"),
        (&["--since", "yesterday"], "--since"),
        (&["--since", "0s"], "--since"),
        (&["--since", "99999999d"], "--since"),
        (&["--since", "\u{1b}[2J7d"], "--since"),
        (&["--limit", "0"], "--limit"),
        (&["--limit", "many"], "--limit"),
        (&["--output", "yaml"], "--output"),
    ];
    println!("{} bad-argument cases", cases.len());
    for (extra, flag) in cases {
        let out = w.history(extra).await;
        assert_eq!(out.code, 64, "{extra:?}: {}", out.stderr);
        assert!(out.stderr.contains(flag), "{extra:?}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{extra:?}: {}", out.stdout);
    }
    assert_eq!(w.patches(), 0);
}

#[tokio::test]
async fn history_without_a_database_says_so_and_prints_nothing() {
    let w = world().await;
    let out = w.history(&["--output", "json"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(json(&out).is_empty());
    assert!(
        out.stderr.contains("nothing has been recorded"),
        "{}",
        out.stderr
    );
    assert!(
        !w.state_dir().join("state.db").exists(),
        "a reader creates nothing"
    );
}

/// The daemon holds the directory's lock; `history` reads beside it, and sees its writes.
#[tokio::test]
async fn history_reads_while_the_daemon_runs() {
    let w = world().await;
    let r = w.start_in_process().await;
    r.daemon.trigger("sales-s3", false);
    assert!(
        wait_until(Duration::from_secs(30), || {
            common::statedb::attempts(&w.state_dir(), "sales-s3", "rotated") == 1
        })
        .await
    );
    let rows = json(&w.history(&["--output", "json", "--job", "sales-s3"]).await);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["outcome"], "rotated");
    // A one-shot writer is refused meanwhile (the lock), so the reader needs none.
    let out = run_cli(&["rotate", "-c", &w.config, "--all"], &w.env()).await;
    assert_eq!(out.code, 75, "{}", out.stderr);
    assert!(r.shutdown().await);
    assert_eq!(w.patches(), 1);
}

#[tokio::test]
async fn the_daemon_prunes_attempts_older_than_the_retention_at_start() {
    let w = world().await;
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    seed(
        &w.state_dir(),
        &[
            attempt(now - 40 * day, "ancient", "rotated"),
            attempt(now - 20 * day, "recent", "rotated"),
        ],
    )
    .await;
    let text =
        std::fs::read_to_string(&w.config).unwrap() + "[state]\nhistory_retention = \"30d\"\n";
    std::fs::write(&w.config, text).unwrap();
    let r = w.start_in_process().await;
    assert!(
        wait_until(Duration::from_secs(10), || {
            common::statedb::attempts(&w.state_dir(), "ancient", "rotated") == 0
        })
        .await,
        "the 40-day-old attempt is pruned at start"
    );
    assert_eq!(
        common::statedb::attempts(&w.state_dir(), "recent", "rotated"),
        1
    );
    assert!(r.shutdown().await);
    assert_eq!(w.patches(), 0);
}

#[tokio::test]
async fn the_pruner_keeps_pruning_hourly() {
    // The daemon's pruner on a paused clock: one pass at start, then one per hour.
    let w = world().await;
    let text = std::fs::read_to_string(&w.config).unwrap();
    let input: HashMap<String, String> = w.env().into_iter().collect();
    let cfg = config::load_str(&text, w.dir.path(), &input).unwrap();
    let app = qlik_rotator::app::App::build(&cfg, &input).await.unwrap();
    let state = app.state.clone();
    let runner = std::sync::Arc::new(qlik_rotator::runner::Runner::new(
        &app,
        1,
        qlik_rotator::runner::RetryPolicy::new(1),
    ));
    tokio::time::pause();
    let task = tokio::spawn(runner.clone().history_pruner(Duration::from_secs(86_400)));
    let now = chrono::Utc::now().timestamp_millis();
    let day = 86_400_000;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // Appended after the first pass: gone only after the next hourly pass.
    state
        .append_history(&attempt(now - 2 * day, "old", "rotated"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    let q = qlik_rotator::state::HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    assert_eq!(
        state.history(&q).await.unwrap().len(),
        1,
        "not before the hour"
    );
    tokio::time::sleep(Duration::from_secs(3600)).await;
    assert!(
        state.history(&q).await.unwrap().is_empty(),
        "pruned on the hour"
    );
    runner.cancel_token().cancel();
    task.await.unwrap();
}
