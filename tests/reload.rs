//! SIGHUP reloads the configuration (issue 15 item 5), with the real binary (`kill -HUP`)
//! against the simulator and a file vault: a job added runs, a job removed loses its series,
//! a broken file or a change outside `[[jobs]]` leaves the running configuration in place and
//! the exit code unaffected. A canary secret never appears in the output or /metrics.

mod common;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use common::{daemon::Daemon, harness::*};
use qlik_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);
const CANARY: &str = "canary-reload-7f3a9c";

struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
    port: u16,
}

async fn world() -> World {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for (id, body) in [
        (
            "qlik/sales-s3",
            format!(r#"{{"accessKey":"AKIA1","secretKey":"{CANARY}-s3"}}"#),
        ),
        (
            "qlik/finance-sql",
            format!(r#"{{"username":"u1","password":"{CANARY}-sql"}}"#),
        ),
    ] {
        let path = dir.path().join("vault").join(format!("{id}.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    World {
        sim,
        dir,
        port: common::moto::free_port(),
    }
}

const SALES: &str = r#"
[[jobs]]
name = "sales-s3"
connection = { id = "11111111-1111-4111-8111-111111111111" }
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "qlik/sales-s3"
schedule = "* * * * * *"
"#;

const FINANCE: &str = r#"
[[jobs]]
name = "finance-sql"
connection = { name = "Finance SQL", space = "finance" }
connector = "mssql"
source = "vault"
secret = "qlik/finance-sql"
schedule = "* * * * * *"
"#;

/// Writes the config with `jobs` (and `qlik_extra` in `[qlik]`).
fn write(w: &World, qlik_extra: &str, jobs: &str) -> PathBuf {
    let text = format!(
        "{}write_budget_per_min = 0\n{qlik_extra}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n\
         [daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:{}\"\nper_job_rotated = true\n{jobs}",
        qlik_section(&w.sim),
        w.port
    );
    write_config(w.dir.path(), &text)
}

async fn spawn(config: &Path) -> Daemon {
    Daemon::run(
        config,
        &env(&[("QLIK_API_KEY", API_KEY), ("RUST_LOG", "info")]),
    )
    .await
}

fn hup(p: &Daemon) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &p.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

/// Stops the daemon; its output shows no canary.
async fn stop(p: Daemon) -> CliOutput {
    let out = p.stop().await;
    assert!(
        !out.stdout.contains(CANARY) && !out.stderr.contains(CANARY),
        "canary printed: {out:?}"
    );
    out
}

async fn scrape(p: &Daemon) -> String {
    let text = http_get(p.addr(), "/metrics").await.1;
    assert!(!text.contains(CANARY), "{text}");
    text
}

/// Waits until `check` holds for a scrape; returns it.
async fn wait_scrape(p: &Daemon, what: &str, check: impl Fn(&str) -> bool) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = scrape(p).await;
        if check(&text) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {what}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs of `job` that ended well: its `rotated`, plus the `unchanged` of its connector
/// (counted per connector; each job here has its own).
fn runs(text: &str, job: &str) -> f64 {
    let connector = match job {
        "sales-s3" => "File_AmazonS3ConnectorV2",
        "finance-sql" => "mssql",
        other => panic!("no connector known for {other}"),
    };
    let rotated = metric(
        text,
        "qlik_rotator_rotations_total",
        &[("rotation_job", job), ("outcome", "rotated")],
    );
    let unchanged = metric(
        text,
        "qlik_rotator_rotations_unchanged_total",
        &[("connector", connector)],
    );
    rotated.unwrap_or(0.0) + unchanged.unwrap_or(0.0)
}

fn reloads(text: &str, result: &str) -> f64 {
    metric(
        text,
        "qlik_rotator_config_reloads_total",
        &[("result", result)],
    )
    .unwrap_or(-1.0)
}

fn unmanaged(text: &str) -> f64 {
    metric(text, "qlik_rotator_unmanaged_connections", &[]).unwrap_or(-2.0)
}

fn config_hash(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("qlik_rotator_config_info{sha256=\""))
        .map(|rest| rest.split('"').next().unwrap().to_owned())
        .expect("config_info series")
}

#[tokio::test]
async fn a_job_added_by_sighup_runs_without_a_restart() {
    let w = world().await;
    let cfg = write(&w, "", SALES);
    let p = spawn(&cfg).await;
    let before = wait_scrape(&p, "sales-s3 ran and the coverage scan ran", |t| {
        runs(t, "sales-s3") >= 1.0 && unmanaged(t) == 2.0
    })
    .await;
    assert_eq!(reloads(&before, "ok"), 0.0);
    let hash = config_hash(&before);
    write(&w, "", &format!("{SALES}{FINANCE}"));
    hup(&p);
    // The reload wakes the coverage scan: Finance SQL is managed now.
    let after = wait_scrape(&p, "finance-sql ran and the scan saw it", |t| {
        runs(t, "finance-sql") >= 1.0 && unmanaged(t) == 1.0
    })
    .await;
    assert_eq!(reloads(&after, "ok"), 1.0, "{after}");
    assert_ne!(config_hash(&after), hash, "the new file's hash");
    assert_eq!(
        w.sim.stored(SQL_ID).unwrap()["connectionProperties"]["password"],
        format!("{CANARY}-sql")
    );
    let out = stop(p).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("Configuration reloaded"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_job_removed_by_sighup_loses_its_series_and_stops_running() {
    let w = world().await;
    let cfg = write(&w, "", &format!("{SALES}{FINANCE}"));
    let p = spawn(&cfg).await;
    wait_scrape(&p, "both ran", |t| {
        runs(t, "sales-s3") >= 1.0 && runs(t, "finance-sql") >= 1.0
    })
    .await;
    write(&w, "", SALES);
    hup(&p);
    let after = wait_scrape(&p, "reload ok", |t| reloads(t, "ok") == 1.0).await;
    assert!(
        !after.contains("rotation_job=\"finance-sql\""),
        "series of the removed job remain:\n{after}"
    );
    assert!(after.contains("rotation_job=\"sales-s3\""), "{after}");
    // It no longer runs: no request for its connection after the reload settled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.sim.clear_requests();
    let more = wait_scrape(&p, "sales-s3 still runs", |t| {
        runs(t, "sales-s3") >= runs(&after, "sales-s3") + 1.0
    })
    .await;
    assert!(!more.contains("rotation_job=\"finance-sql\""));
    assert!(
        !w.sim
            .requests()
            .iter()
            .any(|r| r.path.contains("Finance%20SQL") || r.path.ends_with(SQL_ID)),
        "the removed job still ran"
    );
    let out = stop(p).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
}

#[tokio::test]
async fn a_broken_file_is_logged_and_the_running_config_stays() {
    let w = world().await;
    let cfg = write(&w, "", SALES);
    let p = spawn(&cfg).await;
    let before = wait_scrape(&p, "sales-s3 ran", |t| runs(t, "sales-s3") >= 1.0).await;
    let hash = config_hash(&before);
    // A job with an unknown connector and a schedule that is not cron.
    write(
        &w,
        "",
        &format!(
            "{SALES}\n[[jobs]]\nname = \"bad\"\nconnection = {{ id = \"{GBQ_ID}\" }}\n\
             connector = \"nope\"\nsource = \"vault\"\nsecret = \"x\"\nschedule = \"never\"\n"
        ),
    );
    hup(&p);
    let after = wait_scrape(&p, "reload invalid", |t| reloads(t, "invalid") == 1.0).await;
    assert_eq!(reloads(&after, "ok"), 0.0);
    assert_eq!(config_hash(&after), hash, "the running config's hash stays");
    assert!(!after.contains("rotation_job=\"bad\""), "{after}");
    // The old configuration keeps running.
    wait_scrape(&p, "sales-s3 runs on", |t| {
        runs(t, "sales-s3") >= runs(&after, "sales-s3") + 1.0
    })
    .await;
    // A file that is not TOML at all is refused the same way.
    std::fs::write(&cfg, "[[jobs]\nname = ").unwrap();
    hup(&p);
    wait_scrape(&p, "second invalid", |t| reloads(t, "invalid") == 2.0).await;
    let out = stop(p).await;
    assert_eq!(out.code, 0, "exit code unaffected: {}", out.stderr);
    assert!(
        out.stderr.contains("Configuration not reloaded"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("jobs[1].connector"),
        "the key is named: {}",
        out.stderr
    );
    assert!(
        with_method(&w.sim, "PATCH")
            .iter()
            .all(|r| r.path.ends_with(S3_ID))
    );
}

#[tokio::test]
async fn a_change_outside_jobs_is_refused_until_a_restart() {
    let w = world().await;
    let cfg = write(&w, "", SALES);
    let p = spawn(&cfg).await;
    wait_scrape(&p, "sales-s3 ran", |t| runs(t, "sales-s3") >= 1.0).await;
    write(&w, "request_timeout = \"7s\"", &format!("{SALES}{FINANCE}"));
    hup(&p);
    let after = wait_scrape(&p, "reload refused", |t| reloads(t, "refused") == 1.0).await;
    assert!(!after.contains("rotation_job=\"finance-sql\""), "{after}");
    let out = stop(p).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("[qlik] changed: restart qlik-rotator to apply it"),
        "{}",
        out.stderr
    );
}
