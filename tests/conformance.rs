//! The live-tenant conformance suite (`scripts/conformance.sh`) run against the simulator, so it
//! cannot rot; and adversarial tests of what the suite needs from the simulator:
//! `POST /api/v1/data-connections`, `DELETE /api/v1/data-connections/{qID}` and
//! `GET /api/v1/data-sources`.
//!
//! The suite runs for real: bash, Node with Qlik's official client `@qlik/api` (installed by
//! `scripts/setup-node.sh`), the real `qlik-rotator` binary, the in-process simulator on
//! loopback. Canaries: the API key, and every dummy credential the suite sent (read back from
//! the simulator's recorded requests) must appear in none of stdout, stderr and the report.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use common::harness::wait_until;
use qlik_sim::{Fault, SeedConnection, SimConfig, Simulator};
use serde_json::{Value, json};

const SPACE: &str = "conformance-space";
const S3: &str = "File_AmazonS3ConnectorV2";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Installs @qlik/api once per test binary (scripts/setup-node.sh), so that parallel tests
/// never run two installs into the same directory.
fn ensure_node() {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        Command::new("bash")
            .arg(repo().join("scripts/setup-node.sh"))
            .status()
            .is_ok_and(|s| s.success())
    });
    assert!(ok, "scripts/setup-node.sh failed (node and npm are needed)");
}

/// A unique API key: a canary for every output.
fn canary_key() -> String {
    format!("conformance-canary-key-{}", uuid::Uuid::new_v4().simple())
}

async fn start(key: &str) -> Simulator {
    Simulator::start(SimConfig {
        api_keys: vec![key.to_owned()],
        ..SimConfig::default()
    })
    .await
    .expect("simulator starts")
}

/// Registers api-specs in the documented JSON Schema shape (S11) for every catalogue
/// datasourceID except `except`, declaring exactly the types the catalogue writes. Returns the
/// ids registered.
fn register_catalogue_specs(sim: &Simulator, except: &[&str]) -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    for entry in qlik_rotator::commands::connectors_json()
        .as_array()
        .unwrap()
    {
        let id = entry["datasourceID"].as_str().unwrap();
        if except.contains(&id) {
            continue;
        }
        let mut props = serde_json::Map::new();
        for scheme in entry["schemes"].as_array().unwrap() {
            for p in scheme["properties"].as_array().unwrap() {
                props.insert(
                    p["name"].as_str().unwrap().to_owned(),
                    json!({"type": p["type"], "description": "from the catalogue"}),
                );
            }
        }
        sim.add_data_source_spec(
            id,
            json!({
                "connectorProvider": "QvOdbcConnectorPackage.exe",
                "connectorVersion": "1.0.0",
                "connectionProperties": {"type": "object", "properties": props},
            }),
        );
        ids.insert(id.to_owned());
    }
    ids
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    report: Option<Value>,
    report_text: String,
}

/// The suite's command with a clean environment: PATH and HOME, plus `vars`.
fn suite_command(report: &Path, vars: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/conformance.sh"))
        .arg("--report")
        .arg(report)
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .env("QLIK_ROTATOR_BIN", env!("CARGO_BIN_EXE_qlik-rotator"))
        .envs(vars.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn vars<'a>(sim_url: &'a str, key: &'a str) -> [(&'a str, &'a str); 3] {
    [
        ("QLIK_TENANT_URL", sim_url),
        ("QLIK_API_KEY", key),
        ("QLIK_CONFORMANCE_SPACE_ID", SPACE),
    ]
}

async fn run_suite(vars: Vec<(String, String)>) -> Run {
    ensure_node();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut cmd = suite_command(&report, &v);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run bash"))
        .await
        .unwrap();
    let report_text = std::fs::read_to_string(&report).unwrap_or_default();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        report: serde_json::from_str(&report_text).ok(),
        report_text,
    }
}

fn owned(v: [(&str, &str); 3]) -> Vec<(String, String)> {
    v.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Every credential value the suite sent: `connectionProperties` credentials of each create,
/// and the `value` of every PATCH op on a credential property.
fn sent_credentials(sim: &Simulator) -> BTreeSet<String> {
    const CREDS: &[&str] = &["accessKey", "secretKey", "password"];
    let mut out = BTreeSet::new();
    for r in sim.requests() {
        let Ok(body) = serde_json::from_str::<Value>(&r.body) else {
            continue;
        };
        if r.method == "POST" {
            for c in CREDS {
                if let Some(s) = body["connectionProperties"][c].as_str() {
                    out.insert(s.to_owned());
                }
            }
        }
        if r.method == "PATCH" {
            for op in body.as_array().into_iter().flatten() {
                let path = op["path"].as_str().unwrap_or_default();
                if CREDS.iter().any(|c| path.ends_with(&format!("/{c}")))
                    && let Some(s) = op["value"].as_str()
                {
                    out.insert(s.to_owned());
                }
            }
        }
    }
    out
}

fn assert_no_canary(run: &Run, canaries: &BTreeSet<String>) {
    for c in canaries {
        for (what, text) in [
            ("stdout", &run.stdout),
            ("stderr", &run.stderr),
            ("report", &run.report_text),
        ] {
            assert!(!text.contains(c.as_str()), "a secret leaked into {what}");
        }
    }
}

/// All connections the simulator holds, over HTTP (every space).
async fn all_connections(sim: &Simulator, key: &str) -> Vec<Value> {
    all_connections_at(&sim.base_url(), key).await
}

/// All connections the tenant at `url` lists to `key` (every space, up to 100).
async fn all_connections_at(url: &str, key: &str) -> Vec<Value> {
    let v: Value = reqwest::Client::new()
        .get(format!("{url}/api/v1/data-connections?limit=100"))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["data"].as_array().cloned().unwrap_or_default()
}

/// No connection is left in the simulator (every space).
async fn assert_nothing_left(sim: &Simulator, key: &str) {
    assert_eq!(
        all_connections(sim, key).await,
        Vec::<Value>::new(),
        "nothing is left"
    );
}

/// Requests the simulator answered to `method` with `status`.
fn answered(sim: &Simulator, method: &str, status: u16) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.method == method && r.status == status)
        .count()
}

/// The suite exited 0 and its report says ok; returns the report.
fn assert_passed(run: &Run) -> &Value {
    assert_eq!(
        run.code, 0,
        "suite failed\nstdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.report.as_ref().expect("the report is JSON");
    assert_eq!(report["ok"], true);
    report
}

fn assumptions() -> Value {
    let text = std::fs::read_to_string(repo().join("scripts/conformance/assumptions.json"))
        .expect("assumptions.json");
    serde_json::from_str(&text).expect("assumptions.json is JSON")
}

// ===== the suite ==============================================================================

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_against_the_simulator_records_every_fact_and_leaves_nothing() {
    let key = canary_key();
    let sim = start(&key).await;
    let registered = register_catalogue_specs(&sim, &[]);
    let url = sim.base_url();
    let run = run_suite(owned(vars(&url, &key))).await;
    let report = assert_passed(&run);
    let facts = report["facts"].as_object().unwrap();

    // Every fact assumptions.json names is in the report, with the simulator's value beside
    // the observed one, and against the simulator they agree.
    let a = assumptions();
    let expected: Vec<&String> = a
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| !k.starts_with('_'))
        .collect();
    assert!(expected.len() >= 25, "{} facts", expected.len());
    for id in &expected {
        let f = facts
            .get(id.as_str())
            .unwrap_or_else(|| panic!("fact {id} missing"));
        assert_eq!(f["simulator"], a[id.as_str()]["simulator"], "{id}");
        assert!(f.get("observed").is_some(), "{id}");
        assert!(!f["source"].as_str().unwrap_or_default().is_empty(), "{id}");
    }
    let differ: Vec<String> = facts
        .iter()
        .filter(|(_, f)| f["matches"] == false)
        .map(|(id, f)| {
            format!(
                "{id}: observed {} simulator {}",
                f["observed"], f["simulator"]
            )
        })
        .collect();
    assert!(
        differ.is_empty(),
        "against the simulator every fact matches:\n{}",
        differ.join("\n")
    );
    assert_eq!(report["summary"]["differ_from_simulator"], json!([]));

    // The observed values are the ones the simulator models (spot checks of the important ones).
    assert_eq!(facts["lookup.ambiguous_name"]["observed"], 400);
    assert_eq!(facts["patch.updated_advances"]["observed"], true);
    assert_eq!(facts["patch.qCredentialsID_changes"]["observed"], false);
    assert_eq!(
        facts["rotate.outcomes"]["observed"],
        json!(["rotated", "rotated"])
    );
    assert_eq!(facts["api_specs.shape"]["observed"], json!(["json_schema"]));
    assert_eq!(facts["errors.get_non_uuid"]["observed"]["status"], 400);
    assert_eq!(facts[&format!("create.{S3}")]["observed"]["status"], 201);
    // One api-specs fact per catalogue id the tenant lists, none for the others.
    let listed: BTreeSet<String> = facts["data_sources.catalogue_listed"]["observed"]["listed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, registered);
    for id in &registered {
        let f = &facts[&format!("api_specs.types.{id}")];
        assert_eq!(f["matches"], true, "{id}");
        assert_eq!(f["observed"]["shape"], "json_schema", "{id}");
    }

    // The suite created connections (in the space and the personal space), rotated two of them
    // with the binary, and deleted everything.
    let posts = answered(&sim, "POST", 201);
    assert!(posts >= 5, "{posts} connections created");
    let patches = answered(&sim, "PATCH", 204);
    assert!(patches >= 2, "{patches} PATCHes applied");
    assert_nothing_left(&sim, &key).await;
    assert!(
        run.stdout.contains("nothing the run created is left"),
        "{}",
        run.stdout
    );

    let mut canaries = sent_credentials(&sim);
    assert!(
        canaries.len() >= 8,
        "the suite's dummy credentials were found: {}",
        canaries.len()
    );
    canaries.insert(key);
    assert_no_canary(&run, &canaries);
}

/// The suite against the real `qlik-rotator simulate` server (default demo tenant, api-specs in
/// Qlik's documented shape), exactly as a user would point it at a tenant: CI keeps the
/// one-command live-tenant path working end to end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suite_against_qlik_rotator_simulate_passes_and_leaves_nothing() {
    let key = canary_key();
    let served = common::simulate::spawn_simulate(
        &["--listen", "127.0.0.1:0"],
        &[("QLIK_SIM_API_KEY".to_owned(), key.clone())],
    )
    .unwrap_or_else(|out| panic!("simulate did not start: {out:?}"));
    let url = served.url.clone();
    let run = run_suite(owned(vars(&url, &key))).await;
    let report = assert_passed(&run);
    let facts = report["facts"].as_object().unwrap();
    assert_eq!(
        facts["rotate.outcomes"]["observed"],
        json!(["rotated", "rotated"])
    );
    assert_eq!(facts["api_specs.shape"]["observed"], json!(["json_schema"]));
    assert_eq!(facts["patch.updated_advances"]["observed"], true);
    assert!(
        run.stdout.contains("nothing the run created is left"),
        "{}",
        run.stdout
    );
    // Only the demo tenant's three connections remain.
    let list = all_connections_at(&url, &key).await;
    assert_eq!(list.len(), 3, "{list:?}");
    let sim = served.stop("TERM");
    assert_eq!(sim.code, 0);
    let canaries: BTreeSet<String> = [key].into();
    assert_no_canary(&run, &canaries);
    for c in &canaries {
        assert!(!sim.stdout.contains(c.as_str()) && !sim.stderr.contains(c.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_variables_it_is_skipped_and_exits_0() {
    // None set, then only one or two: skipped every time, naming what is missing.
    let cases: [&[(&str, &str)]; 3] = [
        &[],
        &[("QLIK_TENANT_URL", "https://acme.eu.qlikcloud.com")],
        &[
            ("QLIK_TENANT_URL", "https://acme.eu.qlikcloud.com"),
            ("QLIK_API_KEY", "conformance-canary-skip"),
        ],
    ];
    for vars in cases {
        let dir = tempfile::tempdir().unwrap();
        let report = dir.path().join("report.json");
        let out = suite_command(&report, vars).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
        assert!(stdout.starts_with("conformance: skipped:"), "{stdout}");
        assert!(stdout.contains("QLIK_CONFORMANCE_SPACE_ID"), "{stdout}");
        let named = stdout
            .strip_prefix("conformance: skipped: ")
            .and_then(|s| s.split(" not set").next())
            .unwrap();
        let missing: Vec<&str> = [
            "QLIK_TENANT_URL",
            "QLIK_API_KEY",
            "QLIK_CONFORMANCE_SPACE_ID",
        ]
        .into_iter()
        .filter(|v| !vars.iter().any(|(k, _)| k == v))
        .collect();
        assert_eq!(named, missing.join(" "), "{stdout}");
        assert!(!report.exists(), "no report when skipped");
        assert!(
            !stdout.contains("conformance-canary-skip")
                && !stderr.contains("conformance-canary-skip")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_failing_midway_still_deletes_everything() {
    let key = canary_key();
    let sim = start(&key).await;
    // Every PATCH is refused (403 is not retried): the rotation fails after the connections
    // were created.
    sim.inject(Fault::Status {
        method: Some("PATCH".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        status: 403,
        times: 1000,
    });
    let url = sim.base_url();
    let run = run_suite(owned(vars(&url, &key))).await;
    assert_eq!(
        run.code, 1,
        "stdout:\n{}\nstderr:\n{}",
        run.stdout, run.stderr
    );
    let report = run.report.as_ref().expect("the report is still written");
    assert_eq!(report["ok"], false);
    let failed: Vec<&str> = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["ok"] == false)
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert!(failed.contains(&"rotate"), "{failed:?}");
    assert_eq!(report["facts"]["rotate.exit_code"]["observed"], 1);
    assert_eq!(report["facts"]["rotate.exit_code"]["matches"], false);
    assert!(run.stdout.contains("step rotate FAILED"), "{}", run.stdout);
    // Nothing was applied, and the cleanup still deleted every connection.
    assert!(
        sim.requests()
            .iter()
            .all(|r| r.method != "PATCH" || r.status == 403)
    );
    let created = answered(&sim, "POST", 201);
    assert!(created >= 3, "{created}");
    assert_nothing_left(&sim, &key).await;
    let mut canaries = sent_credentials(&sim);
    assert!(!canaries.is_empty());
    canaries.insert(key);
    assert_no_canary(&run, &canaries);
}

/// Runs `scripts/conformance/cleanup.mjs` directly.
fn cleanup_command(sim_url: &str, key: &str, ledger: &Path, prefix: &str) -> Command {
    let mut cmd = Command::new("node");
    cmd.arg(repo().join("scripts/conformance/cleanup.mjs"))
        .args([
            "--ledger".as_ref(),
            ledger.as_os_str(),
            "--prefix".as_ref(),
            prefix.as_ref(),
        ])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("QLIK_TENANT_URL", sim_url)
        .env("QLIK_API_KEY", key)
        .stdin(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_finds_a_lost_create_by_the_run_prefix_and_retries_a_failed_delete() {
    ensure_node();
    let key = canary_key();
    let sim = start(&key).await;
    let prefix = "qlik-rotator-conformance-0123abcd";
    // In the ledger: one connection. Not in the ledger (its create response was lost): two
    // with the run's prefix, in the space and in the personal space. Not the run's: one.
    let in_ledger = sim.add_connection(
        SeedConnection::new(format!("{prefix}-s3-a"), S3, json!({})).in_space(SPACE),
    );
    sim.add_connection(
        SeedConnection::new(format!("{prefix}-s3-b"), S3, json!({})).in_space(SPACE),
    );
    sim.add_connection(SeedConnection::new(format!("{prefix}-s3-a"), S3, json!({})));
    let other = sim.add_connection(
        SeedConnection::new("qlik-rotator-conformance-ffffffff-s3-a", S3, json!({}))
            .in_space(SPACE),
    );
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("created.jsonl");
    std::fs::write(
        &ledger,
        format!(
            "{}\nnot json\n",
            json!({"id": in_ledger, "name": "x", "space": SPACE})
        ),
    )
    .unwrap();
    // The first DELETE is dropped on the floor: cleanup retries it.
    sim.inject(Fault::Drop {
        method: Some("DELETE".into()),
        path_prefix: None,
        times: 1,
    });
    let url = sim.base_url();
    let mut cmd = cleanup_command(&url, &key, &ledger, prefix);
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("deleted 3 connection(s)"), "{stdout}");
    let left = all_connections(&sim, &key).await;
    assert_eq!(left.len(), 1, "only the other run's connection is left");
    assert_eq!(left[0]["qID"], other.as_str());
    assert!(!stdout.contains(&key) && !String::from_utf8_lossy(&out.stderr).contains(&key));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_refuses_a_prefix_that_is_not_a_run_prefix() {
    ensure_node();
    let key = canary_key();
    let sim = start(&key).await;
    sim.add_connection(SeedConnection::new("prod-s3", S3, json!({})).in_space(SPACE));
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("none.jsonl");
    let url = sim.base_url();
    for prefix in [
        "",
        "prod",
        "qlik-rotator-conformance-",
        "qlik-rotator-conformance-0123abcd\" or \"x",
    ] {
        let out = cleanup_command(&url, &key, &ledger, prefix)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{prefix:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("--prefix"));
    }
    assert_eq!(
        all_connections(&sim, &key).await.len(),
        1,
        "nothing deleted"
    );
    assert!(sim.requests().iter().all(|r| r.method != "DELETE"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_midway_deletes_everything() {
    let key = canary_key();
    let sim = start(&key).await;
    // The rotation's first PATCH hangs in the simulator long enough to interrupt the run.
    sim.inject(Fault::Delay {
        method: Some("PATCH".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        delay: Duration::from_secs(20),
        times: 1,
    });
    let url = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    ensure_node();
    let mut child = suite_command(&report, &vars(&url, &key)).spawn().unwrap();
    let started = wait_until(Duration::from_secs(60), || {
        sim.requests().iter().any(|r| r.method == "PATCH")
    })
    .await;
    assert!(started, "the rotation started");
    assert!(
        !all_connections(&sim, &key).await.is_empty(),
        "connections exist mid-run"
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = tokio::task::spawn_blocking(move || {
        let mut stdout = String::new();
        use std::io::Read;
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        (child.wait().unwrap(), stdout)
    })
    .await
    .unwrap();
    assert_eq!(out.0.code(), Some(130), "{}", out.1);
    assert!(
        out.1.contains("nothing the run created is left"),
        "{}",
        out.1
    );
    assert_nothing_left(&sim, &key).await;
    assert!(!out.1.contains(&key));
}

// ===== the simulator's create / delete / data-sources ========================================

fn http() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn send(
    sim: &Simulator,
    key: &str,
    method: &str,
    path: &str,
    body: Option<&[u8]>,
) -> (u16, String) {
    let mut req = http()
        .request(method.parse().unwrap(), format!("{}{path}", sim.base_url()))
        .bearer_auth(key);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_vec());
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// POSTs `body` to the data-connections collection as `key`.
async fn create(sim: &Simulator, key: &str, body: &[u8]) -> (u16, String) {
    send(sim, key, "POST", "/api/v1/data-connections", Some(body)).await
}

const CANARY: &str = "sim-create-canary-3f9e1c";

fn s3_body(name: &str) -> Value {
    json!({"datasourceID": S3, "qName": name, "space": SPACE,
           "connectionProperties": {"region": "eu-west-1", "bucketName": "b",
                                    "accessKey": "AKIACANARY", "secretKey": CANARY}})
}

#[tokio::test]
async fn create_returns_201_and_never_shows_the_credentials() {
    let key = canary_key();
    let sim = start(&key).await;
    let (status, body) = create(&sim, &key, s3_body("a").to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    assert!(!body.contains(CANARY) && !body.contains("AKIACANARY"));
    let v: Value = serde_json::from_str(&body).unwrap();
    let id = v["qID"].as_str().unwrap().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    assert_eq!(v["qName"], "a");
    assert_eq!(v["space"], SPACE);
    assert_eq!(
        v["qLogOn"], "0",
        "ConnectionCreateResponse.qLogOn is a string"
    );
    assert_eq!(v["qType"], "QvWebStorageProviderConnectorPackage.exe");
    assert!(
        v["tags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t.as_str().unwrap().starts_with("DcaasAPI:"))
    );
    // Stored with its credentials, never returned by GET (one, parsed, list).
    assert_eq!(
        sim.stored(&id).unwrap()["connectionProperties"]["secretKey"],
        CANARY
    );
    for path in [
        format!("/api/v1/data-connections/{id}?parseConnection=true"),
        format!("/api/v1/data-connections/{id}"),
        "/api/v1/data-connections".to_owned(),
    ] {
        let (status, body) = send(&sim, &key, "GET", &path, None).await;
        assert_eq!(status, 200);
        assert!(
            !body.contains(CANARY) && !body.contains("AKIACANARY"),
            "{path}"
        );
    }
    let (_, body) = send(
        &sim,
        &key,
        "GET",
        &format!("/api/v1/data-connections/{id}?parseConnection=true"),
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connectionProperties"]["bucketName"], "b");
    assert_eq!(v["qLogOn"], 0, "ConnectionGet.qLogOn is an integer");
}

#[tokio::test]
async fn create_accepts_the_example_spelling_data_source_id() {
    let key = canary_key();
    let sim = start(&key).await;
    let mut body = s3_body("b");
    let ds = body
        .as_object_mut()
        .unwrap()
        .remove("datasourceID")
        .unwrap();
    body["dataSourceId"] = ds;
    let (status, text) = create(&sim, &key, body.to_string().as_bytes()).await;
    assert_eq!(status, 201, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        sim.stored(v["qID"].as_str().unwrap()).unwrap()["datasourceID"],
        S3
    );
}

#[tokio::test]
async fn create_409_for_a_name_taken_in_the_same_space_only() {
    let key = canary_key();
    let sim = start(&key).await;
    let body = s3_body("same").to_string();
    assert_eq!(create(&sim, &key, body.as_bytes()).await.0, 201);
    let (status, text) = create(&sim, &key, body.as_bytes()).await;
    assert_eq!(status, 409, "{text}");
    assert!(text.contains("already exists") && !text.contains(CANARY));
    assert_eq!(all_connections(&sim, &key).await.len(), 1);
    // The same name in the personal space is another connection.
    let mut personal = s3_body("same");
    personal.as_object_mut().unwrap().remove("space");
    assert_eq!(
        create(&sim, &key, personal.to_string().as_bytes()).await.0,
        201
    );
    assert_eq!(all_connections(&sim, &key).await.len(), 2);
    // ... and GET by that name without a space is ambiguous (400: GET declares no 409), with the
    // space it is found.
    let (status, _) = send(
        &sim,
        &key,
        "GET",
        "/api/v1/data-connections/same?type=connectionname",
        None,
    )
    .await;
    assert_eq!(status, 400);
    let (status, _) = send(
        &sim,
        &key,
        "GET",
        &format!("/api/v1/data-connections/same?type=connectionname&spaceId={SPACE}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn bad_creates_are_400_naming_the_field_and_create_nothing() {
    let key = canary_key();
    let sim = start(&key).await;
    let props = json!({"accessKey": "AKIACANARY", "secretKey": CANARY});
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{not json".to_vec(), "not valid JSON"),
        ("an array", b"[]".to_vec(), "JSON object"),
        ("no datasourceID", json!({"qName": "x", "connectionProperties": props}).to_string().into_bytes(), "datasourceID"),
        ("datasourceID a number", json!({"datasourceID": 7, "qName": "x", "connectionProperties": props}).to_string().into_bytes(), "datasourceID"),
        ("empty dataSourceId", json!({"dataSourceId": "", "qName": "x", "connectionProperties": props}).to_string().into_bytes(), "dataSourceId"),
        ("no qName", json!({"datasourceID": S3, "connectionProperties": props}).to_string().into_bytes(), "qName"),
        ("blank qName", json!({"datasourceID": S3, "qName": "  ", "connectionProperties": props}).to_string().into_bytes(), "qName"),
        ("no connectionProperties", json!({"datasourceID": S3, "qName": "x"}).to_string().into_bytes(), "connectionProperties"),
        ("connectionProperties a string", json!({"datasourceID": S3, "qName": "x", "connectionProperties": CANARY}).to_string().into_bytes(), "connectionProperties"),
        ("space a number", json!({"datasourceID": S3, "qName": "x", "space": 1, "connectionProperties": props}).to_string().into_bytes(), "space"),
        ("tags not strings", json!({"datasourceID": S3, "qName": "x", "tags": [1], "connectionProperties": props}).to_string().into_bytes(), "tags"),
        ("32 tags", json!({"datasourceID": S3, "qName": "x", "tags": vec!["t"; 32], "connectionProperties": props}).to_string().into_bytes(), "tags"),
        ("connect-statement form", json!({"datasourceID": S3, "qName": "x", "qType": "X.exe", "qConnectStatement": "CUSTOM CONNECT TO \"x\""}).to_string().into_bytes(), "properties form"),
    ];
    println!("{} bad-create cases", cases.len());
    for (case, body, names) in &cases {
        let (status, text) = create(&sim, &key, body).await;
        assert_eq!(status, 400, "{case}: {text}");
        assert!(
            text.contains(names),
            "{case}: the error names {names}: {text}"
        );
        assert!(
            !text.contains(CANARY) && !text.contains("AKIACANARY"),
            "{case}: canary in the error"
        );
    }
    assert!(
        all_connections(&sim, &key).await.is_empty(),
        "nothing was created"
    );
    assert!(sim.requests().iter().all(|r| r.method != "PATCH"));
}

#[tokio::test]
async fn create_and_delete_need_the_api_key() {
    let key = canary_key();
    let sim = start(&key).await;
    let id = sim.add_connection(
        SeedConnection::new("keep", S3, json!({"secretKey": CANARY})).in_space(SPACE),
    );
    let body = s3_body("x").to_string();
    let (status, text) = create(&sim, "wrong-key", body.as_bytes()).await;
    assert_eq!(status, 401, "{text}");
    let (status, _) = send(
        &sim,
        "wrong-key",
        "DELETE",
        &format!("/api/v1/data-connections/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let all = all_connections(&sim, &key).await;
    assert_eq!(all.len(), 1, "nothing created, nothing deleted");
    assert!(!serde_json::to_string(&all).unwrap().contains(CANARY));
}

#[tokio::test]
async fn delete_is_204_then_404_and_keeps_other_connections() {
    let key = canary_key();
    let sim = start(&key).await;
    let a = sim.add_connection(SeedConnection::new("a", S3, json!({})).in_space(SPACE));
    let b = sim.add_connection(SeedConnection::new("b", S3, json!({})).in_space(SPACE));
    let c = sim.add_connection(SeedConnection::new("c", S3, json!({})));
    let (status, body) = send(
        &sim,
        &key,
        "DELETE",
        &format!("/api/v1/data-connections/{a}"),
        None,
    )
    .await;
    assert_eq!((status, body.as_str()), (204, ""));
    assert_eq!(
        send(
            &sim,
            &key,
            "DELETE",
            &format!("/api/v1/data-connections/{a}"),
            None
        )
        .await
        .0,
        404
    );
    assert_eq!(
        send(
            &sim,
            &key,
            "GET",
            &format!("/api/v1/data-connections/{a}"),
            None
        )
        .await
        .0,
        404
    );
    // The others are intact and still found by id (the index was rebuilt).
    for id in [&b, &c] {
        let (status, body) = send(
            &sim,
            &key,
            "GET",
            &format!("/api/v1/data-connections/{id}"),
            None,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["qID"],
            id.as_str()
        );
    }
    // By name within a space.
    let (status, _) = send(
        &sim,
        &key,
        "DELETE",
        &format!("/api/v1/data-connections/b?type=connectionname&spaceId={SPACE}"),
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(all_connections(&sim, &key).await.len(), 1);
}

#[tokio::test]
async fn delete_of_a_non_uuid_or_unknown_id_is_404_and_deletes_nothing() {
    let key = canary_key();
    let sim = start(&key).await;
    sim.add_connection(SeedConnection::new("a", S3, json!({"secretKey": CANARY})).in_space(SPACE));
    for path in [
        "/api/v1/data-connections/not-a-uuid",
        "/api/v1/data-connections/00000000-0000-4000-8000-000000000000",
        "/api/v1/data-connections/..%2F..%2Fx",
        "/api/v1/data-connections/missing?type=connectionname",
    ] {
        let (status, body) = send(&sim, &key, "DELETE", path, None).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert!(!body.contains(CANARY));
    }
    assert_eq!(all_connections(&sim, &key).await.len(), 1);
}

#[tokio::test]
async fn delete_without_the_delete_privilege_is_403() {
    let key = canary_key();
    let sim = start(&key).await;
    let id = sim.add_connection(
        SeedConnection::new("ro", S3, json!({"secretKey": CANARY}))
            .in_space(SPACE)
            .with_privileges(&["list", "read", "update"]),
    );
    let (status, body) = send(
        &sim,
        &key,
        "DELETE",
        &format!("/api/v1/data-connections/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("delete") && !body.contains(CANARY));
    assert!(sim.stored(&id).is_some());
}

#[tokio::test]
async fn data_sources_lists_the_registered_api_specs() {
    let key = canary_key();
    let sim = start(&key).await;
    sim.add_data_source_spec("mssql", json!({"connectorProvider": "QvOdbcConnectorPackage.exe", "connectorVersion": "1", "connectionProperties": {"type": "object", "properties": {}}}));
    sim.add_data_source_spec(
        "gbq",
        json!({"connectionProperties": {"type": "object", "properties": {}}}),
    );
    let (status, body) = send(&sim, &key, "GET", "/api/v1/data-sources", None).await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ids: Vec<&str> = v["dataSources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["dataSourceId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["gbq", "mssql"]);
    assert_eq!(
        v["dataSources"][1]["provider"],
        "QvOdbcConnectorPackage.exe"
    );
    assert!(v["lastUpdated"].is_string());
    let (_, body) = send(
        &sim,
        &key,
        "GET",
        "/api/v1/data-sources?dataSourceId=gbq",
        None,
    )
    .await;
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["dataSources"].as_array().unwrap().len(), 1);
    assert_eq!(
        send(&sim, "wrong", "GET", "/api/v1/data-sources", None)
            .await
            .0,
        401
    );
}

// ===== usage and hostile tenants ===============================================================

#[test]
fn connectors_json_lists_every_datasource_id_and_the_text_output_is_unchanged() {
    let bin = env!("CARGO_BIN_EXE_qlik-rotator");
    let out = Command::new(bin)
        .args(["connectors", "--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["schema"], "qlik-rotator.connectors/v1");
    let v = doc["connectors"].clone();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["datasourceID"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids.iter().collect::<BTreeSet<_>>().len(),
        ids.len(),
        "one entry per id"
    );
    for id in [S3, "mssql", "DG_mssql", "gbq", "rest", "reptgt_qdis3"] {
        assert!(ids.contains(&id), "{id}");
    }
    let s3 = &v[0];
    assert_eq!(s3["datasourceID"], S3);
    assert_eq!(
        s3["schemes"][0]["properties"],
        json!([{"name": "accessKey", "type": "string"}, {"name": "secretKey", "type": "string"}])
    );
    let gbq = v
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["datasourceID"] == "gbq")
        .unwrap();
    let types: BTreeSet<String> = gbq["schemes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["properties"].as_array().unwrap().iter())
        .map(|p| {
            format!(
                "{}:{}",
                p["name"].as_str().unwrap(),
                p["type"].as_str().unwrap()
            )
        })
        .collect();
    assert!(types.contains("KeyFilePath:array"), "{types:?}");
    // The text output is the default and is not JSON.
    let text = Command::new(bin).arg("connectors").output().unwrap();
    assert_eq!(text.status.code(), Some(0));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.starts_with("Connectors qlik-rotator knows"), "{text}");
    assert!(serde_json::from_str::<Value>(&text).is_err());
    // An unknown format is a usage error.
    let bad = Command::new(bin)
        .args(["connectors", "--output", "yaml"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(64));
    assert!(bad.stdout.is_empty());
}

/// (case, arguments, environment overrides, what stderr must name).
type UsageCase<'a> = (&'a str, Vec<String>, Vec<(&'a str, String)>, &'a str);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_usage_exits_64_and_sends_nothing() {
    let key = canary_key();
    let sim = start(&key).await;
    let url = sim.base_url();
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let missing_dir = dir.path().join("no/such/dir/report.json");
    let cases: Vec<UsageCase> = vec![
        (
            "unknown argument",
            vec!["--bogus".into()],
            vec![],
            "unknown argument",
        ),
        (
            "--report without a value",
            vec!["--report".into()],
            vec![],
            "--report",
        ),
        (
            "--report in a missing directory",
            vec!["--report".into(), missing_dir.display().to_string()],
            vec![],
            "--report",
        ),
        (
            "plain http to a non-loopback host",
            vec![],
            vec![("QLIK_TENANT_URL", "http://acme.eu.qlikcloud.com".into())],
            "QLIK_TENANT_URL",
        ),
        (
            "a space id with a quote",
            vec![],
            vec![("QLIK_CONFORMANCE_SPACE_ID", "space\" or \"x".into())],
            "QLIK_CONFORMANCE_SPACE_ID",
        ),
        (
            "a space id with a newline",
            vec![],
            vec![("QLIK_CONFORMANCE_SPACE_ID", "space\nx".into())],
            "QLIK_CONFORMANCE_SPACE_ID",
        ),
    ];
    println!("{} bad-usage cases", cases.len());
    for (case, args, overrides, names) in &cases {
        let mut env: Vec<(&str, String)> = vec![
            ("QLIK_TENANT_URL", url.clone()),
            ("QLIK_API_KEY", key.clone()),
            ("QLIK_CONFORMANCE_SPACE_ID", SPACE.into()),
        ];
        for (k, v) in overrides {
            env.retain(|(e, _)| e != k);
            env.push((k, v.clone()));
        }
        let mut args = args.clone();
        if args.is_empty() {
            args = vec!["--report".into(), report.display().to_string()];
        }
        let mut cmd = Command::new("bash");
        cmd.arg(repo().join("scripts/conformance.sh"))
            .args(&args)
            .current_dir(repo())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("QLIK_ROTATOR_BIN", env!("CARGO_BIN_EXE_qlik-rotator"))
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{case}: {stdout}{stderr}");
        assert!(stderr.contains(names), "{case}: names {names}: {stderr}");
        assert!(
            !stdout.contains(&key) && !stderr.contains(&key),
            "{case}: key printed"
        );
        assert!(!report.exists(), "{case}: no report");
    }
    assert!(sim.requests().is_empty(), "nothing was sent");
}

/// How the hostile tenant answers every request.
#[derive(Debug, Clone, Copy)]
enum Hostile {
    /// 307 to another origin.
    Redirect(u16),
    /// A 5 MiB body (the suite reads at most 4 MiB).
    Oversize,
    /// 400 whose error strings carry terminal escape sequences and newlines.
    ControlChars,
}

/// A raw HTTP/1.1 server that answers every request the same hostile way.
async fn hostile_tenant(mode: Hostile) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let resp: Vec<u8> = match mode {
                    Hostile::Redirect(port) => format!(
                        "HTTP/1.1 307 Temporary Redirect\r\nLocation: http://127.0.0.1:{port}/api/v1/data-sources\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                    .into_bytes(),
                    Hostile::Oversize => {
                        let n = 5 * 1024 * 1024;
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes();
                        r.extend(std::iter::repeat_n(b' ', n));
                        r
                    }
                    Hostile::ControlChars => {
                        let body = r#"{"errors":[{"code":"E\u001b[31m","title":"T\u001b]0;pwned\u0007","detail":"line1\nline2 \u001b[2J","status":400}]}"#;
                        format!(
                            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .into_bytes()
                    }
                };
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_cannot_redirect_flood_or_inject_control_characters() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    // The origin a redirect points to: it must never be contacted.
    let elsewhere = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let elsewhere_port = elsewhere.local_addr().unwrap().port();
    let contacted = Arc::new(AtomicUsize::new(0));
    let counter = contacted.clone();
    tokio::spawn(async move {
        while elsewhere.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let cases = [
        (
            "redirect",
            Hostile::Redirect(elsewhere_port),
            "redirect (307) refused",
        ),
        ("oversize body", Hostile::Oversize, "larger than"),
        ("control characters", Hostile::ControlChars, "\\u001b"),
    ];
    println!("{} hostile-tenant cases", cases.len());
    for (case, mode, expect) in cases {
        let addr = hostile_tenant(mode).await;
        let url = format!("http://{addr}");
        let key = canary_key();
        let run = run_suite(owned(vars(&url, &key))).await;
        assert_eq!(
            run.code, 1,
            "{case}: the run fails\n{}\n{}",
            run.stdout, run.stderr
        );
        let report = run
            .report
            .as_ref()
            .unwrap_or_else(|| panic!("{case}: report"));
        assert_eq!(report["ok"], false, "{case}");
        assert!(
            run.stdout.contains(expect) || run.report_text.contains(expect),
            "{case}: {expect}\n{}\n{}",
            run.stdout,
            run.report_text
        );
        for (what, text) in [
            ("stdout", &run.stdout),
            ("stderr", &run.stderr),
            ("report", &run.report_text),
        ] {
            assert!(
                !text.contains('\u{1b}') && !text.contains('\u{7}'),
                "{case}: a raw control character in {what}"
            );
            assert!(!text.contains(&key), "{case}: the key in {what}");
        }
        // Nothing was created, so nothing could be left; the cleanup says it could not list.
        assert!(
            run.stdout.contains("could not list"),
            "{case}: {}",
            run.stdout
        );
    }
    assert_eq!(
        contacted.load(Ordering::SeqCst),
        0,
        "a redirect was followed"
    );
}

#[tokio::test]
async fn create_and_delete_are_tier_2_writes() {
    let key = canary_key();
    let sim = start(&key).await;
    sim.set_write_limit(Some(1));
    let (status, body) = create(&sim, &key, s3_body("t").to_string().as_bytes()).await;
    assert_eq!(status, 201, "{body}");
    let id = serde_json::from_str::<Value>(&body).unwrap()["qID"]
        .as_str()
        .unwrap()
        .to_owned();
    // The Tier 2 budget (1 per window here) is spent: the next create and the delete are 429.
    let (status, body) = create(&sim, &key, s3_body("u").to_string().as_bytes()).await;
    assert_eq!(status, 429, "{body}");
    assert!(!body.contains(CANARY));
    assert_eq!(
        send(
            &sim,
            &key,
            "DELETE",
            &format!("/api/v1/data-connections/{id}"),
            None
        )
        .await
        .0,
        429
    );
    // Reads are Tier 1 and unaffected; nothing beyond the first create happened.
    assert_eq!(all_connections(&sim, &key).await.len(), 1);
    assert_eq!(sim.writes_total(), 1);
}
