//! Contract test: Qlik's official client, `@qlik/api` 2.19.0 (Node, pinned in
//! tests/contract/package.json), against the real `qlik-rotator simulate` binary serving a
//! `--tenant` file. The checks live in tests/contract/contract.mjs; this test installs the
//! client (scripts/setup-node.sh), runs the script and requires every check to pass, and shows
//! that the script can fail by pointing it at a connection that does not exist.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    harness::env,
    simulate::{Served, spawn_simulate},
};
use serde_json::{Value, json};

const KEY: &str = "CANARY-contract-key-3c9e";
const CONN_ID: &str = "4a3b2c1d-0e9f-4a8b-9c7d-6e5f4a3b2c1d";
const TWIN_ID: &str = "5b4c3d2e-1f0a-4b9c-8d7e-6f5a4b3c2d1e";
const CRED_ID: &str = "6c5d4e3f-2a1b-4c0d-9e8f-7a6b5c4d3e2f";
const PASSWORD: &str = "CANARY-contract-pass-8d";
/// Reads through `CONN_ID`, whose source accepts its credentials: the reload succeeds.
const GOOD_APP: &str = "8e7f6a5b-4c3d-4e2f-9a0b-1c2d3e4f5a6b";
/// Reads through `TWIN_ID`, whose source accepts other credentials: the reload fails.
const FAILING_APP: &str = "9f8a7b6c-5d4e-4f3a-8b1c-2d3e4f5a6b7c";

const CHECKS: [&str; 14] = [
    "list",
    "get-by-id",
    "get-by-name",
    "get-ambiguous-name-is-a-declared-error",
    "patch",
    "patch-test-op-is-400",
    "patch-object-value-is-400",
    "get-unknown-id-is-404",
    "api-specs",
    "data-credential",
    "reload-succeeds",
    "reload-unknown-app-is-a-declared-error",
    "get-unknown-reload-is-404",
    "reload-fails-with-code-and-message",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A MySQL connection (no api-specs for it, so nothing but the body format can refuse a
/// PATCH), a namesake in another space (a lookup by name without `spaceId` is ambiguous),
/// a data credential, S3 api-specs in Qlik's documented shape, a data source behind each
/// connection (the first accepts its credentials, the second does not) and an app on each.
fn tenant() -> Value {
    json!({
        "connections": [
            {"qID": CONN_ID, "qName": "Contract MySQL", "space": "contract-space", "datasourceID": "mysql",
             "connectionProperties": {"host": "mysql.internal", "port": 3306, "database": "shop",
                                      "username": "svc_shop", "password": PASSWORD}},
            {"qID": TWIN_ID, "qName": "Contract MySQL", "space": "other-space", "datasourceID": "mysql",
             "connectionProperties": {"host": "mysql.other", "port": 3306, "database": "other",
                                      "username": "svc_other", "password": PASSWORD}}
        ],
        "apiSpecs": {"File_AmazonS3ConnectorV2": {
            "connectorProvider": "QvWebStorageProviderConnectorPackage.exe", "connectorVersion": "4.46.0",
            "connectionProperties": {"type": "object", "properties": {
                "accessKey": {"type": "string", "description": "Amazon S3 access key."},
                "secretKey": {"type": "string", "description": "Amazon S3 secret key."}}}}},
        "dataCredentials": [
            {"qID": CRED_ID, "qName": "contract-cred", "datasourceID": "mysql",
             "qUsername": "u", "qPassword": PASSWORD}
        ],
        "sources": [
            {"name": "mysql.internal", "matchProperty": "host", "matchValue": "mysql.internal",
             "accepts": [{"username": "svc_shop", "password": PASSWORD}]},
            {"name": "mysql.other", "matchProperty": "host", "matchValue": "mysql.other",
             "accepts": [{"username": "svc_other", "password": "a-newer-password"}]}
        ],
        "apps": [
            {"id": GOOD_APP, "name": "Shop Sales", "connectionIds": [CONN_ID]},
            {"id": FAILING_APP, "name": "Other Sales", "connectionIds": [TWIN_ID]}
        ]
    })
}

fn setup_node() {
    let out = Command::new("bash")
        .arg(root().join("scripts/setup-node.sh"))
        .output()
        .expect("run scripts/setup-node.sh");
    assert!(
        out.status.success(),
        "scripts/setup-node.sh failed (the contract test needs Node.js >= 20 and npm):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

struct NodeRun {
    code: i32,
    stdout: String,
    stderr: String,
    /// check name → (ok, detail)
    checks: Vec<(String, bool, String)>,
}

/// Runs `node contract.mjs` in tests/contract with `connection_id` (output kept in `tmp`);
/// killed after 120 s.
fn run_contract(url: &str, connection_id: &str, tmp: &Path) -> NodeRun {
    run_contract_apps(url, connection_id, tmp, (GOOD_APP, FAILING_APP))
}

/// [`run_contract`] with the apps whose reloads must succeed and fail.
fn run_contract_apps(url: &str, connection_id: &str, tmp: &Path, apps: (&str, &str)) -> NodeRun {
    let dir = root().join("tests/contract");
    let out_path = tmp.join("node.out");
    let err_path = tmp.join("node.err");
    let mut child = Command::new("node")
        .arg("contract.mjs")
        .current_dir(&dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs([
            ("QLIK_CONTRACT_URL", url),
            ("QLIK_CONTRACT_API_KEY", KEY),
            ("QLIK_CONTRACT_CONNECTION_ID", connection_id),
            ("QLIK_CONTRACT_CONNECTION_NAME", "Contract MySQL"),
            ("QLIK_CONTRACT_SPACE_ID", "contract-space"),
            ("QLIK_CONTRACT_DATASOURCE_ID", "File_AmazonS3ConnectorV2"),
            ("QLIK_CONTRACT_CREDENTIAL_ID", CRED_ID),
            ("QLIK_CONTRACT_PATCH_PROPERTY", "database"),
            ("QLIK_CONTRACT_AMBIGUOUS_NAME", "Contract MySQL"),
            ("QLIK_CONTRACT_RELOAD_APP_ID", apps.0),
            ("QLIK_CONTRACT_FAILING_APP_ID", apps.1),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .expect("spawn node");
    let start = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s.code().unwrap_or(-1);
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            break -1;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let read = |p: &Path| {
        let s = std::fs::read_to_string(p).unwrap_or_default();
        let _ = std::fs::remove_file(p);
        s
    };
    let stdout = read(&out_path);
    let stderr = read(&err_path);
    let checks = stdout
        .lines()
        .map(|l| {
            let v: Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}"));
            (
                v["check"].as_str().expect("check").to_owned(),
                v["ok"].as_bool().expect("ok"),
                v["detail"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    NodeRun {
        code,
        stdout,
        stderr,
        checks,
    }
}

fn start(dir: &Path) -> Served {
    let file = dir.join("tenant.json");
    std::fs::write(&file, tenant().to_string()).unwrap();
    spawn_simulate(
        &[
            "--log-format",
            "json",
            "--listen",
            "127.0.0.1:0",
            "--tenant",
            file.to_str().unwrap(),
        ],
        &env(&[("QLIK_SIM_API_KEY", KEY)]),
    )
    .unwrap_or_else(|out| panic!("simulate exited: {out:?}"))
}

#[test]
fn qlik_api_passes_every_check_against_simulate() {
    setup_node();
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path());
    let run = run_contract(&served.url, CONN_ID, dir.path());
    for (name, ok, detail) in &run.checks {
        println!("{name}: {ok} ({detail})");
    }
    let names: Vec<&str> = run.checks.iter().map(|(n, ..)| n.as_str()).collect();
    assert_eq!(
        names, CHECKS,
        "stdout: {}\nstderr: {}",
        run.stdout, run.stderr
    );
    let failed: Vec<_> = run.checks.iter().filter(|(_, ok, _)| !ok).collect();
    assert!(
        failed.is_empty(),
        "failed checks: {failed:?}\n{}",
        run.stderr
    );
    assert_eq!(run.code, 0, "{}", run.stderr);

    let sim = served.stop("TERM");
    assert_eq!(sim.code, 0, "{sim:?}");
    // The client really talked to this server: one accepted PATCH and two refused ones.
    let patches: Vec<u64> = sim
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| {
            v["method"] == "PATCH"
                // Debug-formatted (quoted, escaped) by the simulator's log line.
                && v["path"].as_str() == Some(&format!("\"/api/v1/data-connections/{CONN_ID}\""))
        })
        .filter_map(|v| v["status"].as_u64())
        .collect();
    assert_eq!(patches, [204, 400, 400], "{}", sim.stderr);
    // And queued the reloads here: two accepted (201), the unknown app refused (400).
    let queued: Vec<u64> = sim
        .stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["method"] == "POST" && v["path"].as_str() == Some("\"/api/v1/reloads\""))
        .filter_map(|v| v["status"].as_u64())
        .collect();
    assert_eq!(queued, [201, 400, 201], "{}", sim.stderr);
    for text in [&run.stdout, &run.stderr, &sim.stdout, &sim.stderr] {
        assert!(!text.contains(KEY), "API key printed");
        assert!(!text.contains(PASSWORD), "a password printed");
    }
}

#[test]
fn the_script_reports_failure_for_a_connection_that_does_not_exist() {
    setup_node();
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path());
    let missing = "7e6f5a4b-3c2d-4e1f-8a9b-0c1d2e3f4a5b";
    let run = run_contract(&served.url, missing, dir.path());
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let by_name: std::collections::HashMap<&str, (bool, &str)> = run
        .checks
        .iter()
        .map(|(n, ok, d)| (n.as_str(), (*ok, d.as_str())))
        .collect();
    assert_eq!(
        by_name["get-by-id"],
        (false, "HTTP 404 DCERROR-0404"),
        "{}",
        run.stdout
    );
    assert!(!by_name["list"].0, "the id is not listed: {}", run.stdout);
    assert!(!by_name["patch"].0, "{}", run.stdout);
    // What does not depend on the id still passes.
    assert!(
        by_name["api-specs"].0 && by_name["data-credential"].0,
        "{}",
        run.stdout
    );
    assert_eq!(served.stop("TERM").code, 0);
}

/// The reload checks can fail: with the apps swapped, the reload expected to succeed ends
/// FAILED and the one expected to fail succeeds, and the script says so.
#[test]
fn the_reload_checks_fail_when_the_outcome_is_not_the_expected_one() {
    setup_node();
    let dir = tempfile::tempdir().unwrap();
    let served = start(dir.path());
    let run = run_contract_apps(&served.url, CONN_ID, dir.path(), (FAILING_APP, GOOD_APP));
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let by_name: std::collections::HashMap<&str, (bool, &str)> = run
        .checks
        .iter()
        .map(|(n, ok, d)| (n.as_str(), (*ok, d.as_str())))
        .collect();
    assert_eq!(
        by_name["reload-succeeds"],
        (false, "ended FAILED, not SUCCEEDED"),
        "{}",
        run.stdout
    );
    assert_eq!(
        by_name["reload-fails-with-code-and-message"],
        (false, "ended SUCCEEDED, not FAILED"),
        "{}",
        run.stdout
    );
    assert!(by_name["patch"].0, "{}", run.stdout);
    served.stop("TERM");
}
