//! Several Qlik tenants in one daemon (issue 17): two simulator instances as two tenants.
//! A 429 or a 401 in one never pauses or stops the other (its PATCHes land and verify during
//! the pause), a fan-out job writes into both, one secret feeding both is read once, and
//! every output names the tenant without ever showing a secret.

mod common;

use std::{collections::HashMap, path::Path, sync::Arc, time::Duration};

use common::harness::*;
use qlik_rotator::{
    app::{self, App},
    config,
    daemon::{self, Running},
    metrics::Metrics,
    rotation::Rotator,
    runner::{JobRuntime, RetryPolicy, Runner},
    secrets::{AnySource, fixed::FixedSource},
    state::SqliteBackend,
};
use qlik_sim::{Fault, SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);
/// The key tenant `a` is given in the 401 test: refused by its simulator, never printed.
const WRONG_KEY: &str = "CANARY-wrong-key-7f3e";
const CANARY_PASSWORD: &str = "CANARY-pw-tenants-91c2";

fn write_secret(dir: &Path, id: &str, body: &str) {
    let path = dir.join("vault").join(format!("{id}.json"));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, body).unwrap();
}

fn input(a_key: &str) -> HashMap<String, String> {
    HashMap::from([
        ("A_KEY".to_owned(), a_key.to_owned()),
        ("B_KEY".to_owned(), API_KEY.to_owned()),
    ])
}

/// `[tenants.a]` and `[tenants.b]` on two simulators (`a_extra`/`b_extra` in their tables),
/// a file vault and `jobs`.
fn two_tenants(a: &Simulator, b: &Simulator, a_extra: &str, b_extra: &str, jobs: &str) -> String {
    format!(
        "[tenants.a]\ntenant_url = \"{}\"\napi_key_env = \"A_KEY\"\n{a_extra}\n\
         [tenants.b]\ntenant_url = \"{}\"\napi_key_env = \"B_KEY\"\n{b_extra}\n\
         [sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n\
         max_attempts_per_run = 1\n[metrics]\nlisten = \"127.0.0.1:0\"\nper_job_rotated = true\n{jobs}",
        a.base_url(),
        b.base_url()
    )
}

/// A job `name` in `tenant` on one connection of the harness tenant, run at start.
fn job(name: &str, tenant: &str, conn: &str, connector: &str, secret: &str) -> String {
    format!(
        "[[jobs]]\nname = \"{name}\"\ntenant = \"{tenant}\"\nconnection = {conn}\n\
         connector = \"{connector}\"\nsource = \"vault\"\nsecret = \"{secret}\"\nrun_on_start = true\n"
    )
}

fn s3(name: &str, tenant: &str) -> String {
    job(
        name,
        tenant,
        &format!("{{ id = \"{S3_ID}\" }}"),
        "File_AmazonS3ConnectorV2",
        "s3",
    )
}

fn sql(name: &str, tenant: &str) -> String {
    job(
        name,
        tenant,
        "{ name = \"Finance SQL\", space = \"finance\" }",
        "mssql",
        "sql",
    )
}

fn secrets(dir: &Path) {
    write_secret(dir, "s3", r#"{"accessKey":"AKIANEW","secretKey":"s3-new"}"#);
    write_secret(
        dir,
        "sql",
        &format!(r#"{{"username":"svc","password":"{CANARY_PASSWORD}"}}"#),
    );
}

async fn start(dir: &Path, text: &str, a_key: &str) -> Running {
    let cfg = config::load_str(text, dir, &input(a_key)).expect("valid config");
    let r = daemon::start(&cfg, &input(a_key))
        .await
        .expect("daemon starts");
    r.daemon.preflight_finished().await;
    r
}

async fn wait_metric(r: &Running, name: &str, labels: &[(&str, &str)]) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = http_get(r.addr, "/metrics").await.1;
        if metric(&text, name, labels).unwrap_or(0.0) >= 1.0 {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {name}{labels:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rotated<'a>(job: &'a str, tenant: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("rotation_job", job),
        ("outcome", "rotated"),
        ("tenant", tenant),
    ]
}

#[tokio::test]
async fn a_429_in_one_tenant_pauses_only_that_tenant() {
    let (a, b) = (
        tenant(SimConfig::default()).await,
        tenant(SimConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    a.inject(Fault::RateLimited {
        method: Some("PATCH".into()),
        path_prefix: None,
        retry_after_secs: 4,
        times: 1,
    });
    // Tenant a writes every 2 s (no PATCH in flight when its 429 comes back); tenant b once
    // a second, so its PATCHes spread over a's 4-second pause.
    let jobs = [
        s3("a-s3", "a"),
        sql("a-sql", "a"),
        s3("b-s3", "b"),
        sql("b-sql", "b"),
    ];
    let text = two_tenants(
        &a,
        &b,
        "write_budget_per_min = 30",
        "write_budget_per_min = 60",
        &jobs.concat(),
    );
    let r = start(dir.path(), &text, API_KEY).await;
    for (job, t) in [("b-s3", "b"), ("b-sql", "b"), ("a-s3", "a"), ("a-sql", "a")] {
        wait_metric(&r, "qlik_rotator_rotations_total", &rotated(job, t)).await;
    }
    let text = http_get(r.addr, "/metrics").await.1;
    assert!(r.shutdown().await);

    // Tenant a: one 429, and its next PATCH waited for the Retry-After deadline.
    let a_patches = with_method(&a, "PATCH");
    let limited: Vec<_> = a_patches.iter().filter(|p| p.status == 429).collect();
    assert_eq!(limited.len(), 1, "{a_patches:?}");
    let deadline = limited[0].at + Duration::from_secs(4);
    for p in a_patches.iter().filter(|p| p.at > limited[0].at) {
        assert!(
            p.at >= deadline - Duration::from_millis(50),
            "a did not pause: {p:?}"
        );
    }
    // Tenant b: never limited, and it kept writing (PATCH accepted, then its verify GET)
    // while tenant a was paused.
    let b_all = b.requests();
    assert!(b_all.iter().all(|p| p.status != 429), "{b_all:?}");
    let during = |at| at > limited[0].at && at < deadline;
    let b_writes: Vec<_> = (b_all.iter())
        .filter(|p| p.method == "PATCH" && p.status == 204 && during(p.at))
        .collect();
    assert!(
        !b_writes.is_empty(),
        "no write of tenant b during a's pause: {b_all:?}"
    );
    let verified = b_all.iter().any(|g| {
        g.method == "GET"
            && g.status == 200
            && during(g.at)
            && b_writes.iter().any(|p| g.at > p.at && g.path == p.path)
    });
    assert!(
        verified,
        "no verify GET of tenant b during a's pause: {b_all:?}"
    );
    assert_eq!(stored_prop(&b, S3_ID, "accessKey"), "AKIANEW");
    assert_eq!(stored_prop(&a, S3_ID, "accessKey"), "AKIANEW");

    // The series carry the tenant; the 429 is tenant a's only.
    let limited = |t| metric(&text, "qlik_rotator_rate_limited_total", &[("tenant", t)]);
    assert_eq!(limited("a"), Some(1.0), "{text}");
    assert_eq!(limited("b"), Some(0.0), "{text}");
    let patched = |t| {
        metric(
            &text,
            "qlik_rotator_qlik_requests_total",
            &[("method", "PATCH"), ("status", "204"), ("tenant", t)],
        )
    };
    assert_eq!(patched("a"), Some(2.0), "{text}");
    assert_eq!(patched("b"), Some(2.0), "{text}");
    let (ok, why) = promtool_check_metrics(&text);
    assert!(ok, "{why}");
    assert!(!text.contains(CANARY_PASSWORD) && !text.contains(API_KEY));
}

/// Rotation slots are per tenant: with `max_concurrent_rotations = 1`, tenant a's first run
/// hangs in its PATCH (a 5-minute delay, within a's `request_timeout`) and its second run
/// waits for a's slot, yet both of b's runs start and finish. With one global slot (or one
/// stagger for every tenant's starts) b would wait the five minutes and this would time out.
#[tokio::test]
async fn a_tenant_with_every_slot_busy_holds_no_slot_another_tenant_needs() {
    let (a, b) = (
        tenant(SimConfig::default()).await,
        tenant(SimConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    a.inject(Fault::Delay {
        method: Some("PATCH".into()),
        path_prefix: None,
        delay: Duration::from_secs(300),
        times: 2,
    });
    let jobs = [
        s3("a-s3", "a"),
        sql("a-sql", "a"),
        s3("b-s3", "b"),
        sql("b-sql", "b"),
    ];
    let text = two_tenants(&a, &b, "request_timeout = \"10m\"", "", &jobs.concat()).replace(
        "[daemon]\n",
        "[daemon]\nmax_concurrent_rotations = 1\nshutdown_grace_period = \"1s\"\n",
    );
    let r = start(dir.path(), &text, API_KEY).await;
    for job in ["b-s3", "b-sql"] {
        wait_metric(&r, "qlik_rotator_rotations_total", &rotated(job, "b")).await;
    }
    let text = http_get(r.addr, "/metrics").await.1;
    // Tenant a: nothing finished, its first run still in flight at shutdown.
    for job in ["a-s3", "a-sql"] {
        let done = metric(&text, "qlik_rotator_rotations_total", &rotated(job, "a"));
        assert!(done.unwrap_or(0.0) == 0.0, "{job} finished:\n{text}");
    }
    assert!(
        !r.shutdown().await,
        "tenant a's hung PATCH was not in flight"
    );
    assert_eq!(stored_prop(&b, S3_ID, "accessKey"), "AKIANEW");
    assert_ne!(stored_prop(&a, S3_ID, "accessKey"), "AKIANEW");
    assert!(!text.contains(CANARY_PASSWORD) && !text.contains(API_KEY));
}

/// Two fresh tenants, the vault, and two jobs in each (S3 and SQL, run at start), in the
/// order a-s3, a-sql, b-s3, b-sql.
async fn two_by_two() -> (Simulator, Simulator, tempfile::TempDir, String) {
    let (a, b) = (
        tenant(SimConfig::default()).await,
        tenant(SimConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    secrets(dir.path());
    let jobs = [
        s3("a-s3", "a"),
        sql("a-sql", "a"),
        s3("b-s3", "b"),
        sql("b-sql", "b"),
    ]
    .concat();
    (a, b, dir, jobs)
}

#[tokio::test]
async fn a_401_in_one_tenant_stops_only_that_tenant() {
    let (a, b, dir, jobs) = two_by_two().await;
    // One job at a time, so the order is deterministic: a-s3's 401 comes before a-sql.
    let text = two_tenants(&a, &b, "", "", &jobs)
        .replace("[daemon]\n", "[daemon]\nmax_concurrent_rotations = 1\n");
    let path = write_config(dir.path(), &text);
    let mut env = env(&[("A_KEY", WRONG_KEY), ("B_KEY", API_KEY)]);
    env.push(("RUST_LOG".into(), "debug".into()));
    let out = run_cli(&["rotate", "-c", path.to_str().unwrap(), "--all"], &env).await;
    let all = format!("{}{}", out.stdout, out.stderr);
    assert_ne!(out.code, 0, "{all}");
    // Tenant b rotated both, a sent nothing but the refused reads.
    assert_eq!(with_method(&b, "PATCH").len(), 2, "{all}");
    assert!(with_method(&a, "PATCH").is_empty(), "{all}");
    assert!(a.requests().iter().all(|r| r.status == 401), "{all}");
    assert_eq!(stored_prop(&b, SQL_ID, "username"), "svc");
    // Each line names the tenant; the 401 names tenant a's key.
    let line = |prefix: &str| {
        out.stdout
            .lines()
            .find(|l| l.contains(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?}: {all}"))
            .to_owned()
    };
    assert!(
        line("b-s3 (tenant b): rotated").contains("rotated and verified"),
        "{all}"
    );
    assert!(
        line("b-sql (tenant b): rotated").contains("rotated and verified"),
        "{all}"
    );
    let refused = line("a-s3 (tenant a): failed at resolve [unauthorized]");
    assert!(
        refused.contains("Qlik refused the API key in $A_KEY (tenants.a.api_key_env)"),
        "{refused}"
    );
    // The second job of tenant a was not tried after the 401.
    assert!(all.contains("a-sql"), "{all}");
    assert_eq!(
        a.requests().len(),
        1,
        "a second request to the refused tenant: {all}"
    );
    for canary in [WRONG_KEY, API_KEY, CANARY_PASSWORD] {
        assert!(!all.contains(canary), "{canary} leaked: {all}");
    }
}

/// The daemon's start-up pre-flight stops at a 401 per tenant: tenant a's key is refused, so
/// a's second connection is not tried, while b's connections are all checked and pass. (With
/// one probe for every tenant, b's jobs were counted as failing pre-flight until their next
/// tick: `QlikRotatorPreflightFailed` for a tenant whose credentials are fine.)
#[tokio::test]
async fn a_401_at_preflight_skips_only_that_tenants_connections() {
    let (a, b, dir, jobs) = two_by_two().await;
    // No job runs at start: every request is pre-flight's (or the coverage scan's).
    let jobs = jobs.replace("run_on_start = true\n", "");
    let text = two_tenants(&a, &b, "", "", &jobs);
    let r = start(dir.path(), &text, WRONG_KEY).await;
    let text = http_get(r.addr, "/metrics").await.1;
    let state = |s: &str| metric(&text, "qlik_rotator_jobs", &[("state", s)]);
    assert_eq!(state("preflight_failed"), Some(2.0), "{text}");
    assert_eq!(state("scheduled"), Some(2.0), "{text}");
    for (job, tenant, want) in [
        ("a-s3", "a", Some(0.0)),
        ("a-sql", "a", Some(0.0)),
        ("b-s3", "b", None),
        ("b-sql", "b", None),
    ] {
        let labels = [("rotation_job", job), ("tenant", tenant)];
        let got = metric(&text, "qlik_rotator_job_preflight_ok", &labels);
        assert_eq!(got, want, "{job}: {text}");
    }
    assert_eq!(
        metric(&text, "qlik_rotator_preflight_pending", &[]),
        Some(0.0)
    );
    // Tenant a got its one probe (refused), no second connection read; b both reads.
    let reads = |sim: &Simulator| {
        let all = sim.requests();
        all.iter()
            .filter(|r| r.path.contains("/data-connections"))
            .count()
    };
    assert_eq!((reads(&a), reads(&b)), (1, 2));
    assert!(a.requests().iter().all(|r| r.status == 401));
    // b's jobs rotate when asked; a's stay held.
    r.daemon.trigger("b-sql", false);
    wait_metric(&r, "qlik_rotator_rotations_total", &rotated("b-sql", "b")).await;
    assert!(with_method(&a, "PATCH").is_empty());
    assert!(r.shutdown().await);
}

/// The library's runner over both tenants, with a counting in-memory vault.
struct World {
    a: Simulator,
    b: Simulator,
    _dir: tempfile::TempDir,
    cfg: config::Config,
    runner: Runner,
    vault: Arc<AnySource>,
}

impl World {
    fn reads(&self) -> usize {
        match &*self.vault {
            AnySource::Fixed(f) => f.reads(),
            _ => unreachable!("a fixed source"),
        }
    }
    fn put(&self, id: &str, text: &str) {
        if let AnySource::Fixed(f) = &*self.vault {
            f.put(id, text);
        }
    }
    fn job(&self, name: &str) -> JobRuntime {
        JobRuntime::ungated(self.cfg.job(name).expect("job").clone())
    }
}

async fn world(jobs: &str) -> World {
    let (a, b) = (
        tenant(SimConfig::default()).await,
        tenant(SimConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let text = two_tenants(
        &a,
        &b,
        "write_budget_per_min = 0",
        "write_budget_per_min = 0",
        jobs,
    );
    let cfg = config::load_str(&text, dir.path(), &input(API_KEY)).expect("valid config");
    let metrics = Arc::new(Metrics::with_options(Default::default(), true));
    metrics.register_jobs(&cfg.jobs);
    let clients = app::tenant_clients(&cfg, &input(API_KEY), Some(&metrics)).unwrap();
    let vault = Arc::new(AnySource::Fixed(FixedSource::new()));
    let sources = HashMap::from([("vault".to_owned(), vault.clone())]);
    let rotator = Rotator::with_clients(clients, true, sources).with_metrics(metrics.clone());
    let app = App {
        rotator: Arc::new(rotator),
        state: Arc::new(SqliteBackend::open(dir.path().join("state")).unwrap()),
        owner: "test".into(),
        lease_ttl: app::LOCAL_LEASE_TTL,
        metrics,
    };
    let runner = Runner::new(&app, 4, RetryPolicy::new(1));
    World {
        a,
        b,
        _dir: dir,
        cfg,
        runner,
        vault,
    }
}

#[tokio::test]
async fn one_secret_feeding_two_tenants_is_read_once_per_due_time() {
    let jobs = [s3("a-s3", "a"), s3("b-s3", "b")].concat();
    let w = world(&jobs).await;
    w.put("s3", r#"{"accessKey":"AKIAONE","secretKey":"s3-one"}"#);
    // Due together: the daemon's prefetch reads the group's secrets in one batch.
    let (ja, jb) = (w.job("a-s3"), w.job("b-s3"));
    let cfgs = [ja.cfg(), jb.cfg()];
    let mut read = qlik_rotator::triggers::prefetch(w.runner.rotator(), &cfgs).await;
    assert_eq!(w.reads(), 1);
    for (job, secret) in [&ja, &jb].into_iter().zip(read.iter_mut()) {
        let reports = w
            .runner
            .run_job_with(job, false, None, secret.take())
            .await
            .unwrap();
        assert_eq!(
            reports[0].outcome.label(),
            "rotated",
            "{}",
            reports[0].line()
        );
        assert_eq!(reports[0].tenant.as_deref(), Some(&*job.cfg().tenant));
    }
    assert_eq!(w.reads(), 1, "each tenant's run used the one read");
    for sim in [&w.a, &w.b] {
        assert_eq!(stored_prop(sim, S3_ID, "accessKey"), "AKIAONE");
    }
    // The same connection id in two tenants: two state records (one per job), each
    // current, so the next due time changes nothing.
    for job in [&ja, &jb] {
        let reports = w.runner.run_job(job, false, None).await.unwrap();
        assert_eq!(reports[0].outcome.label(), "unchanged");
    }
    assert_eq!(with_method(&w.a, "PATCH").len(), 1);
    assert_eq!(with_method(&w.b, "PATCH").len(), 1);
}

#[tokio::test]
async fn a_fan_out_job_across_two_tenants_writes_both_and_reports_each() {
    let jobs = format!(
        "[[jobs]]\nname = \"dwh\"\ntenant = \"a\"\nconnections = [{{ id = \"{S3_ID}\" }}, {{ id = \"{S3_ID}\", tenant = \"b\" }}]\n\
         connector = \"File_AmazonS3ConnectorV2\"\nsource = \"vault\"\nsecret = \"s3\"\n"
    );
    let w = world(&jobs).await;
    w.put("s3", r#"{"accessKey":"AKIAFAN","secretKey":"s3-fan"}"#);
    let job = w.job("dwh");
    let reports = w.runner.run_job(&job, false, None).await.unwrap();
    assert_eq!(w.reads(), 1, "one read for both tenants");
    let lines: Vec<String> = reports.iter().map(|r| r.line()).collect();
    assert_eq!(reports.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with(&format!("dwh[{S3_ID}] (tenant a): rotated and verified")),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with(&format!("dwh[b:{S3_ID}] (tenant b): rotated and verified")),
        "{lines:?}"
    );
    for sim in [&w.a, &w.b] {
        assert_eq!(stored_prop(sim, S3_ID, "accessKey"), "AKIAFAN");
        assert_eq!(with_method(sim, "PATCH").len(), 1);
    }
    // A 401 in tenant b fails its connection only; tenant a's goes on.
    w.b.inject(Fault::Status {
        method: None,
        path_prefix: None,
        status: 401,
        times: 10,
    });
    w.put("s3", r#"{"accessKey":"AKIAFAN2","secretKey":"s3-fan2"}"#);
    let reports = w.runner.run_job(&job, false, None).await.unwrap();
    let lines: Vec<String> = reports.iter().map(|r| r.line()).collect();
    assert_eq!(reports[0].outcome.label(), "rotated", "{lines:?}");
    assert_eq!(reports[1].outcome.label(), "failed", "{lines:?}");
    assert!(
        lines[1].contains("(tenant b): failed at apply [unauthorized]")
            && lines[1].contains("(tenants.b.api_key_env)"),
        "{lines:?}"
    );
    assert_eq!(stored_prop(&w.a, S3_ID, "accessKey"), "AKIAFAN2");
    assert_eq!(stored_prop(&w.b, S3_ID, "accessKey"), "AKIAFAN");
    // The next run skips tenant b (its credentials were refused just before) and still
    // rotates tenant a.
    w.put("s3", r#"{"accessKey":"AKIAFAN3","secretKey":"s3-fan3"}"#);
    let before_b = w.b.requests().len();
    let reports = w.runner.run_job(&job, false, None).await.unwrap();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome.label(), "rotated");
    assert_eq!(w.b.requests().len(), before_b, "tenant b was asked again");
    let text = w.runner.metrics().render();
    assert!(
        metric(
            &text,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", "dwh"),
                ("tenant", "a"),
                ("error_type", "unauthorized")
            ]
        )
        .is_some(),
        "{text}"
    );
    for canary in ["s3-fan", API_KEY] {
        assert!(!text.contains(canary), "{canary} in /metrics");
        assert!(!lines.join("\n").contains(canary), "{canary} in the lines");
    }
}

#[tokio::test]
async fn tenant_config_errors_exit_64_naming_the_key() {
    let (a, b) = (
        tenant(SimConfig::default()).await,
        tenant(SimConfig::default()).await,
    );
    let dir = tempfile::tempdir().unwrap();
    let base = two_tenants(&a, &b, "", "", &s3("j", "a"));
    let cases = [
        (
            base.replace("tenant = \"a\"", "tenant = \"c\""),
            "jobs[0].tenant: names no tenant",
        ),
        (
            base.replace("tenant = \"a\"\n", ""),
            "jobs[0].tenant: is required: this file declares several tenants (defined: a, b)",
        ),
        (
            base.replace("[tenants.b]", "[tenants.B]"),
            "tenants.B: bad tenant name",
        ),
        (
            format!(
                "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"A_KEY\"\n{base}",
                a.base_url()
            ),
            "tenants: set either [qlik] (one tenant) or [tenants.<name>] tables",
        ),
        (
            base.replace("[tenants.b]", "[tenants.a]"),
            "<file>: not valid TOML",
        ),
    ];
    for (text, says) in cases {
        let path = write_config(dir.path(), &text);
        let out = run_cli(&["check-config", "-c", path.to_str().unwrap()], &[]).await;
        assert_eq!(out.code, 64, "{says}: {out:?}");
        assert!(
            out.stderr.contains(says) || out.stdout.contains(says),
            "{says}: {out:?}"
        );
    }
}
