//! `qlik-rotator simulate`, the real binary: URL line, API key, tenant files (good and bad),
//! loopback-only by default, signals, and a real `rotate` against it.

mod common;

use std::path::{Path, PathBuf};

use common::{
    harness::{CliOutput, env, run_cli, write_config},
    simulate::{Served, spawn_simulate},
};
use serde_json::{Value, json};

const KEY: &str = "CANARY-sim-key-5b1d9e";
const S3_ID: &str = "0b6a7c6e-3f0e-4d8e-9a1b-5c2d3e4f5a61";
const SQL_ID: &str = "5f0c1a4e-2b7d-4c8e-9f10-6a7b8c9d0e1f";
const CRED_ID: &str = "9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4";
/// In the tenant file only; must never come back from GET or appear in any output.
const OLD_PASSWORD: &str = "CANARY-old-pass-77aa";

fn key_env() -> Vec<(String, String)> {
    env(&[("QLIK_SIM_API_KEY", KEY)])
}

fn start(args: &[&str]) -> Served {
    spawn_simulate(args, &key_env()).unwrap_or_else(|out| panic!("simulate exited: {out:?}"))
}

async fn get(url: &str, key: Option<&str>) -> (u16, Value) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn assert_clean(out: &CliOutput, canaries: &[&str]) {
    for c in canaries {
        assert!(!out.stdout.contains(c), "{c} in stdout: {}", out.stdout);
        assert!(!out.stderr.contains(c), "{c} in stderr: {}", out.stderr);
    }
}

/// A small tenant: an S3 connection, a SQL Server connection linked to a data credential,
/// api-specs for S3 only, and the credential.
fn tenant() -> Value {
    json!({
        "connections": [
            {"qID": S3_ID, "qName": "Lake S3", "space": "lake", "datasourceID": "File_AmazonS3ConnectorV2",
             "connectionProperties": {"region": "eu-west-1", "bucketName": "lake",
                                      "accessKey": "AKIAOLD", "secretKey": "CANARY-old-secret"}},
            {"qID": SQL_ID, "qName": "Ops SQL", "space": "ops", "datasourceID": "mssql",
             "connectionProperties": {"host": "db.ops", "port": 1433, "database": "ops",
                                      "username": "svc_ops_old", "password": OLD_PASSWORD},
             "privileges": ["list", "read", "update"],
             "qCredentialsID": CRED_ID, "qConnectionSecret": "CANARY-conn-secret"}
        ],
        "apiSpecs": {"File_AmazonS3ConnectorV2": {
            "connectorProvider": "QvWebStorageProviderConnectorPackage.exe", "connectorVersion": "4.46.0",
            "connectionProperties": {"type": "object", "properties": {
                "accessKey": {"type": "string", "description": "Amazon S3 access key."},
                "secretKey": {"type": "string"}}}}},
        "dataCredentials": [
            {"qID": CRED_ID, "qName": "ops-readers", "datasourceID": "mssql",
             "qUsername": "reader", "qPassword": "CANARY-cred-pass"}
        ]
    })
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// `simulate` serving `tenant()` from a file (kept in the returned directory).
fn start_with_tenant_file() -> (tempfile::TempDir, Served) {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "t.json", tenant().to_string().as_bytes());
    let served = start(&[
        "--listen",
        "127.0.0.1:0",
        "--tenant",
        file.to_str().unwrap(),
    ]);
    (dir, served)
}

#[tokio::test]
async fn prints_its_url_and_requires_the_api_key() {
    let served = start(&["--listen", "127.0.0.1:0"]);
    let port = served
        .url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("URL line: {:?}", served.url));
    assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "{}", served.url);
    let list = format!("{}/api/v1/data-connections", served.url);
    assert_eq!(get(&list, None).await.0, 401);
    assert_eq!(get(&list, Some("not-the-key")).await.0, 401);
    let (status, body) = get(&list, Some(KEY)).await;
    assert_eq!(status, 200, "{body}");
    // The demo tenant (crates/qlik-sim/sim-tenant.json).
    let mut names: Vec<&str> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["qName"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["Finance SQL", "Sales S3", "Warehouse BigQuery"]);
    // Its api-specs, in Qlik's documented shape.
    let (status, spec) = get(
        &format!(
            "{}/api/v1/data-sources/File_AmazonS3ConnectorV2/api-specs",
            served.url
        ),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        spec["connectionProperties"]["properties"]["secretKey"]["type"],
        "string"
    );
    let out = served.stop("TERM");
    assert_eq!(out.code, 0, "{out:?}");
    // Exactly one stdout line: the URL. Logs (one per request) on stderr; never the key.
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(out.stderr.contains("Simulator answered"), "{}", out.stderr);
    assert_clean(&out, &[KEY, "old-secret-key", "old-password"]);
}

#[tokio::test]
async fn serves_a_tenant_file() {
    let (_dir, served) = start_with_tenant_file();
    let base = format!("{}/api/v1", served.url);

    let (status, list) = get(&format!("{base}/data-connections"), Some(KEY)).await;
    assert_eq!(status, 200);
    assert_eq!(list["meta"]["count"], 2, "{list}");

    let (status, sql) = get(
        &format!("{base}/data-connections/{SQL_ID}?parseConnection=true"),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200, "{sql}");
    assert_eq!(sql["qName"], "Ops SQL");
    assert_eq!(sql["space"], "ops");
    assert_eq!(sql["qCredentialsID"], CRED_ID);
    assert_eq!(sql["privileges"], json!(["list", "read", "update"]));
    assert_eq!(sql["connectionProperties"]["username"], "svc_ops_old");
    assert!(sql["connectionProperties"].get("password").is_none());
    assert_eq!(sql["qConnectionSecret"], "***");

    let (status, by_name) = get(
        &format!("{base}/data-connections/Lake%20S3?type=connectionname&spaceId=lake"),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(by_name["qID"], S3_ID);

    let (status, spec) = get(
        &format!("{base}/data-sources/File_AmazonS3ConnectorV2/api-specs"),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(spec["connectorVersion"], "4.46.0");
    assert_eq!(
        get(&format!("{base}/data-sources/mssql/api-specs"), Some(KEY))
            .await
            .0,
        404
    );

    let (status, cred) = get(&format!("{base}/data-credentials/{CRED_ID}"), Some(KEY)).await;
    assert_eq!(status, 200, "{cred}");
    assert_eq!(cred["qName"], "ops-readers");
    assert_eq!(cred["qConnCount"], 1);
    let all = format!("{list}{sql}{by_name}{spec}{cred}");
    for canary in [
        OLD_PASSWORD,
        "CANARY-old-secret",
        "CANARY-cred-pass",
        "CANARY-conn-secret",
    ] {
        assert!(!all.contains(canary), "{canary} served");
    }
    let out = served.stop("INT");
    assert_eq!(out.code, 0, "{out:?}");
    assert_clean(
        &out,
        &[KEY, OLD_PASSWORD, "CANARY-old-secret", "CANARY-cred-pass"],
    );
}

#[tokio::test]
async fn the_example_tenant_file_is_served() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/qlik-sim/sim-tenant.json"
    );
    let served = start(&["--listen", "127.0.0.1:0", "--tenant", example]);
    let (status, c) = get(
        &format!(
            "{}/api/v1/data-connections/Finance%20SQL?type=connectionname&spaceId=finance-space",
            served.url
        ),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["datasourceID"], "mssql");
    let out = served.stop("TERM");
    assert_eq!(out.code, 0);
}

#[tokio::test]
async fn sigterm_stops_it_with_exit_0_and_frees_the_port() {
    let served = start(&["--listen", "127.0.0.1:0"]);
    let url = served.url.clone();
    let out = served.stop("TERM");
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("Simulator stopped"), "{}", out.stderr);
    // Nothing listens any more.
    assert!(
        reqwest::get(format!("{url}/api/v1/data-connections"))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_non_loopback_address_needs_allow_remote() {
    let refused = spawn_simulate(&["--listen", "0.0.0.0:0"], &key_env())
        .err()
        .expect("refused");
    assert_eq!(refused.code, 64, "{refused:?}");
    assert!(
        refused.stderr.contains("not a loopback address")
            && refused.stderr.contains("--allow-remote"),
        "{}",
        refused.stderr
    );
    assert!(refused.stdout.is_empty(), "{}", refused.stdout);
    assert_clean(&refused, &[KEY]);

    let served = start(&["--listen", "0.0.0.0:0", "--allow-remote"]);
    assert!(served.url.starts_with("http://0.0.0.0:"), "{}", served.url);
    let port = served.url.rsplit(':').next().unwrap();
    let (status, _) = get(
        &format!("http://127.0.0.1:{port}/api/v1/data-connections"),
        Some(KEY),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(served.stop("TERM").code, 0);
}

#[tokio::test]
async fn a_missing_empty_or_unsendable_api_key_is_a_usage_error() {
    for (case, vars) in [
        ("missing", env(&[])),
        ("empty", env(&[("QLIK_SIM_API_KEY", "")])),
        ("space", env(&[("QLIK_SIM_API_KEY", "CANARY key")])),
        (
            "half oauth",
            env(&[("QLIK_SIM_API_KEY", KEY), ("QLIK_SIM_OAUTH_CLIENT_ID", "c")]),
        ),
    ] {
        let out = spawn_simulate(&["--listen", "127.0.0.1:0"], &vars)
            .err()
            .unwrap_or_else(|| panic!("{case}: started"));
        assert_eq!(out.code, 64, "{case}: {out:?}");
        assert!(out.stderr.contains("QLIK_SIM_"), "{case}: {}", out.stderr);
        assert!(out.stdout.is_empty(), "{case}");
        assert_clean(&out, &["CANARY", KEY]);
    }
}

#[tokio::test]
async fn bad_tenant_files_exit_64_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let conn = |extra: Value| {
        let mut c = json!({"qID": S3_ID, "qName": "A", "datasourceID": "mssql"});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        json!({"connections": [c]}).to_string().into_bytes()
    };
    let mut big = b"{\"connections\": [".to_vec();
    big.resize(5 * 1024 * 1024, b' ');
    let two = |a: Value, b: Value| json!({"connections": [a, b]}).to_string().into_bytes();
    let spec = |props: Value| {
        json!({"apiSpecs": {"mssql": {"connectorProvider": "p", "connectorVersion": "1",
                                       "connectionProperties": props}}})
        .to_string()
        .into_bytes()
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not JSON", b"{\"connections\": [".to_vec(), "line 1"),
        ("empty file", Vec::new(), "EOF"),
        ("top level not an object", b"[]".to_vec(), "invalid type: sequence"),
        ("unknown top-level field", br#"{"connection": []}"#.to_vec(), "unknown field `connection`"),
        ("unknown connection field", conn(json!({"qPasword": "CANARY-x"})), "connections[0]"),
        ("wrong type: bool", conn(json!({"qSeparateCredentials": "CANARY-bool"})), "connections[0].qSeparateCredentials"),
        ("wrong type: properties", conn(json!({"connectionProperties": ["CANARY-arr"]})), "connections[0].connectionProperties"),
        ("wrong type: credential password", br#"{"dataCredentials":[{"qID":"9e8d7c6b-5a49-4382-b1a0-f9e8d7c6b5a4","qName":"c","datasourceID":"mssql","qUsername":"u","qPassword":4242424242}]}"#.to_vec(), "dataCredentials[0].qPassword"),
        ("missing qName", br#"{"connections":[{"qID":"0b6a7c6e-3f0e-4d8e-9a1b-5c2d3e4f5a61","datasourceID":"mssql"}]}"#.to_vec(), "missing field `qName`"),
        ("non-UUID id", conn(json!({"qID": "sales-s3"})), "connections[0].qID: must be a UUID"),
        ("UUID without hyphens", conn(json!({"qID": "0b6a7c6e3f0e4d8e9a1b5c2d3e4f5a61"})), "connections[0].qID: must be a UUID"),
        ("duplicate ids", two(json!({"qID": S3_ID, "qName": "A", "datasourceID": "mssql"}), json!({"qID": S3_ID, "qName": "B", "datasourceID": "mssql"})), "connections[1].qID: duplicate qID"),
        ("duplicate name in a space", two(json!({"qID": S3_ID, "qName": "A", "space": "s", "datasourceID": "mssql"}), json!({"qID": SQL_ID, "qName": "A", "space": "s", "datasourceID": "mssql"})), "connections[1].qName: duplicate qName"),
        ("unknown privilege", conn(json!({"privileges": ["read", "CANARY-admin"]})), "connections[0].privileges[1]: unknown variant, expected one of `list`"),
        ("dangling credential id", conn(json!({"qCredentialsID": CRED_ID})), "connections[0].qCredentialsID: does not name"),
        ("empty name", conn(json!({"qName": " "})), "connections[0].qName: must not be empty"),
        ("control character in name", conn(json!({"qName": "a\u{1b}[31mb"})), "connections[0].qName: must not contain control characters"),
        ("datasourceID with a slash", conn(json!({"datasourceID": "../admin"})), "connections[0].datasourceID"),
        ("flat api-specs (not JSON Schema)", spec(json!({"password": {"type": "string"}})), "apiSpecs.mssql.connectionProperties"),
        ("api-specs type not JSON Schema", spec(json!({"type": "object", "properties": {"password": {"type": "password"}}})), "apiSpecs.mssql.connectionProperties.properties.password.type: unknown variant, expected one of `string`"),
        ("trailing garbage", b"{} x".to_vec(), "trailing characters"),
        ("not UTF-8", b"{\"connections\": [{\"qName\": \"\xff\xfe\"}]}".to_vec(), ".: invalid unicode code point at line 1"),
        ("oversize", big, "larger than 4194304 bytes"),
    ];
    println!("{} bad tenant file cases", cases.len());
    for (i, (case, bytes, want)) in cases.iter().enumerate() {
        let file = write(dir.path(), &format!("bad-{i}.json"), bytes);
        let out = spawn_simulate(
            &[
                "--listen",
                "127.0.0.1:0",
                "--tenant",
                file.to_str().unwrap(),
            ],
            &key_env(),
        )
        .err()
        .unwrap_or_else(|| panic!("{case}: started"));
        assert_eq!(out.code, 64, "{case}: {out:?}");
        assert!(out.stderr.contains("tenant file"), "{case}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{case}: want {want:?} in {}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{case}: listened: {}", out.stdout);
        assert_clean(&out, &["CANARY", "4242424242", KEY, "\u{1b}"]);
        println!("ok: {case}: {}", out.stderr.trim_end());
    }
}

/// Rotates one SQL Server connection of a running `simulate` with the real binary: `job` is the
/// job's connection line. Returns the server's own output after SIGTERM.
async fn rotate_sql_against(served: Served, conn_id: &str, connection: &str) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let one = format!("{}/api/v1/data-connections/{conn_id}", served.url);
    let before = get(&one, Some(KEY)).await.1;

    let vault = dir.path().join("vault");
    std::fs::create_dir_all(vault.join("qlik")).unwrap();
    std::fs::write(
        vault.join("qlik/ops-sql.json"),
        json!({"username": "svc_ops_2026", "password": "CANARY-new-pass-91"}).to_string(),
    )
    .unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            r#"
[qlik]
tenant_url = "{}"
api_key_env = "QLIK_API_KEY"

[sources.vault]
type = "file"
path = "{}"

[[jobs]]
name = "ops-sql"
connection = {connection}
connector = "mssql"
source = "vault"
secret = "qlik/ops-sql"
"#,
            served.url,
            vault.display()
        ),
    );
    let out = run_cli(
        &["rotate", "--all", "-c", config.to_str().unwrap()],
        &env(&[("QLIK_API_KEY", KEY), ("RUST_LOG", "debug")]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("ops-sql") && out.stdout.contains("rotated and verified"),
        "{}",
        out.stdout
    );
    assert_clean(&out, &[KEY, "CANARY-new-pass-91", OLD_PASSWORD]);

    // Seen from outside, through the simulate server: the new user name, a later `updated`,
    // and never the password.
    let after = get(&format!("{one}?parseConnection=true"), Some(KEY))
        .await
        .1;
    assert_eq!(after["connectionProperties"]["username"], "svc_ops_2026");
    assert!(
        after["updated"].as_str().unwrap() > before["updated"].as_str().unwrap(),
        "{before} -> {after}"
    );
    assert!(!after.to_string().contains("CANARY-new-pass-91"));
    let sim = served.stop("TERM");
    assert_eq!(sim.code, 0);
    assert_clean(&sim, &[KEY, "CANARY-new-pass-91", OLD_PASSWORD]);
    sim
}

#[tokio::test]
async fn rotate_works_end_to_end_against_simulate() {
    let (_dir, served) = start_with_tenant_file();
    rotate_sql_against(served, SQL_ID, r#"{ name = "Ops SQL", space = "ops" }"#).await;
}

/// The default (demo) tenant serves api-specs in Qlik's documented JSON Schema shape; the job is
/// checked against them (the server logs the api-specs read) and rotates.
#[tokio::test]
async fn the_default_tenant_rotates_against_its_documented_api_specs() {
    let served = start(&["--listen", "127.0.0.1:0"]);
    let sim = rotate_sql_against(
        served,
        "d34cee8d-8e7b-4fee-ab40-1c1c428c0cf9",
        r#"{ id = "d34cee8d-8e7b-4fee-ab40-1c1c428c0cf9" }"#,
    )
    .await;
    assert!(
        sim.stderr.contains("/api/v1/data-sources/mssql/api-specs"),
        "{}",
        sim.stderr
    );
}

/// PATCH bodies outside `@qlik/api`'s `PatchRequest` (and tags outside `ConnectionGet.tags?:
/// string[]`) are 400s that change nothing, over real HTTP to the real binary.
#[tokio::test]
async fn patch_bodies_outside_qlik_api_patch_request_are_400() {
    let (_dir, served) = start_with_tenant_file();
    let one = format!("{}/api/v1/data-connections/{SQL_ID}", served.url);
    let client = reqwest::Client::new();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "test op",
            json!([{"op": "test", "path": "/qName", "value": "Ops SQL"}]),
            "unsupported op",
        ),
        (
            "move op",
            json!([{"op": "move", "path": "/qName", "from": "/tags"}]),
            "unsupported op",
        ),
        (
            "copy op",
            json!([{"op": "copy", "path": "/qName", "from": "/tags"}]),
            "unsupported op",
        ),
        (
            "object value",
            json!([{"op": "add", "path": "/connectionProperties/x", "value": {"k": "CANARY-obj"}}]),
            "not object",
        ),
        (
            "null value",
            json!([{"op": "add", "path": "/connectionProperties/x", "value": null}]),
            "not null",
        ),
        (
            "add without value",
            json!([{"op": "add", "path": "/connectionProperties/x"}]),
            "value is required",
        ),
        (
            "replace with Value",
            json!([{"op": "replace", "path": "/connectionProperties/database", "Value": "CANARY-cap"}]),
            "value is required",
        ),
        (
            "non-string tags",
            json!([{"op": "replace", "path": "/tags", "value": [1, true]}]),
            "tags must be an array of at most 32 strings",
        ),
        (
            "33 tags",
            json!([{"op": "replace", "path": "/tags", "value": vec!["t"; 33]}]),
            "tags must be an array of at most 32 strings",
        ),
        (
            "patchData wrapper",
            json!({"patchData": [{"op": "replace", "path": "/qName", "value": "x"}]}),
            "patchData",
        ),
    ];
    println!("{} PATCH body cases", cases.len());
    let before = get(&format!("{one}?parseConnection=true"), Some(KEY))
        .await
        .1;
    for (case, body, want) in &cases {
        let r = client
            .patch(&one)
            .bearer_auth(KEY)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        assert_eq!(status, 400, "{case}: {text}");
        assert!(text.contains(want), "{case}: want {want:?} in {text}");
        assert!(!text.contains("CANARY"), "{case}: value echoed: {text}");
        println!("ok: {case}");
    }
    // Nothing was applied.
    let after = get(&format!("{one}?parseConnection=true"), Some(KEY))
        .await
        .1;
    assert_eq!(before, after);
    let out = served.stop("TERM");
    assert_eq!(out.code, 0);
    assert_clean(&out, &["CANARY-obj", "CANARY-cap", KEY]);
}
