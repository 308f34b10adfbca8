//! Undocumented connectors (`generic` + api-specs), one secret feeding many connections, and
//! separate credentials — against the simulator, with a file vault.

mod common;

use std::{collections::HashMap, path::Path};

use common::harness::*;
use qlik_rotator::{
    app, config,
    rotation::{Outcome, RunOptions},
};
use qlik_sim::{RecordedRequest, SeedConnection, SeedCredential, SimConfig, Simulator};
use serde_json::json;

fn input() -> HashMap<String, String> {
    HashMap::from([("QLIK_API_KEY".to_owned(), API_KEY.to_owned())])
}

fn vault(dir: &Path, id: &str, body: &str) {
    let p = dir.join("vault").join(format!("{id}.json"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn config_text(sim: &Simulator, jobs: &str) -> String {
    format!(
        "{}write_budget_per_min = 0\n[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{jobs}",
        qlik_section(sim)
    )
}

async fn run_job(dir: &Path, text: &str, job: &str) -> Vec<qlik_rotator::rotation::Report> {
    let cfg = config::load_str(text, dir, &input()).expect("valid config");
    let rotator = app::rotator(&cfg, &input()).await.unwrap();
    rotator
        .run(cfg.job(job).unwrap(), RunOptions::default())
        .await
}

fn pg_spec() -> serde_json::Value {
    qlik_sim::api_specs(
        "QvOdbcConnectorPackage.exe",
        "1.0",
        json!({
            "host": {"type": "string"},
            "port": {"type": "integer", "default": 5432},
            "database": {"type": "string"},
            "sslmode": {"type": "string", "enum": ["disable", "require", "verify-full"], "default": "require"},
            "userName": {"type": "string", "description": "User name"},
            "userPassword": {"type": "string", "description": "Password"},
            "sslRootCert": {"type": "array"}
        }),
    )
}

async fn pg_tenant() -> (Simulator, String) {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.add_data_source_spec("postgres", pg_spec());
    let id = sim.add_connection(SeedConnection::new(
        "Warehouse PG",
        "postgres",
        json!({"host": "pg", "port": 5432, "database": "dw", "userName": "old", "userPassword": "old-pw"}),
    ));
    (sim, id)
}

fn generic_job(id: &str, props: &str) -> String {
    format!(
        "[[jobs]]\nname = \"pg\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"generic\"\ndatasource = \"postgres\"\nproperties = {props}\nsource = \"v\"\nsecret = \"pg\"\n"
    )
}

#[tokio::test]
async fn a_generic_connector_is_rotated_and_checked_against_api_specs() {
    let (sim, id) = pg_tenant().await;
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "pg",
        r#"{"userName":"svc_dw","userPassword":"n3w-pg-pass"}"#,
    );
    let text = config_text(&sim, &generic_job(&id, "[\"userName\", \"userPassword\"]"));
    let reports = run_job(dir.path(), &text, "pg").await;
    assert!(
        matches!(reports[0].outcome, Outcome::Rotated),
        "{}",
        reports[0].line()
    );
    assert_eq!(stored_prop(&sim, &id, "userPassword"), "n3w-pg-pass");
    assert_eq!(stored_prop(&sim, &id, "userName"), "svc_dw");
    assert_eq!(stored_prop(&sim, &id, "port"), 5432);
    assert_eq!(
        with_method(&sim, "GET")
            .iter()
            .filter(|r| r.path == "/api/v1/data-sources/postgres/api-specs")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_generic_property_missing_from_api_specs_sends_no_patch() {
    let (sim, id) = pg_tenant().await;
    let dir = tempfile::tempdir().unwrap();
    vault(dir.path(), "pg", r#"{"password":"x","userName":"u"}"#);
    let text = config_text(&sim, &generic_job(&id, "[\"userName\", \"password\"]"));
    let reports = run_job(dir.path(), &text, "pg").await;
    assert_eq!(
        reports[0].line(),
        "pg: failed at build [spec_mismatch]: the patch does not match the connector's api-specs: property \"password\" does not exist in the api-specs of \"postgres\"; nothing was sent"
    );
    assert!(with_method(&sim, "PATCH").is_empty());
}

#[tokio::test]
async fn a_generic_property_of_the_wrong_type_sends_no_patch() {
    let (sim, id) = pg_tenant().await;
    let dir = tempfile::tempdir().unwrap();
    vault(dir.path(), "pg", r#"{"port":"6543","userPassword":"x"}"#);
    // "port" is an integer in the api-specs; a generic text property writes a string.
    let text = config_text(&sim, &generic_job(&id, "[\"port\", \"userPassword\"]"));
    let reports = run_job(dir.path(), &text, "pg").await;
    let line = reports[0].line();
    assert!(
        line.contains("[spec_mismatch]")
            && line.contains("property \"port\" is declared as \"integer\" in the api-specs of \"postgres\", but the job writes \"string\""),
        "{line}"
    );
    assert!(with_method(&sim, "PATCH").is_empty());
    assert_eq!(stored_prop(&sim, &id, "port"), 5432);
}

#[tokio::test]
async fn a_generic_job_without_api_specs_is_refused() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let id = sim.add_connection(SeedConnection::new("x", "sfdc", json!({"username": "u"})));
    let dir = tempfile::tempdir().unwrap();
    vault(dir.path(), "pg", r#"{"password":"x"}"#);
    let text = config_text(
        &sim,
        &generic_job(&id, "[\"password\"]").replace("\"postgres\"", "\"sfdc\""),
    );
    let reports = run_job(dir.path(), &text, "pg").await;
    assert!(
        reports[0]
            .line()
            .contains("the tenant has no api-specs for \"sfdc\""),
        "{}",
        reports[0].line()
    );
    assert!(with_method(&sim, "PATCH").is_empty());
}

#[tokio::test]
async fn describe_connector_prints_properties_and_a_job_snippet() {
    let (sim, _) = pg_tenant().await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_text(
            &sim,
            &generic_job("c1c1c1c1-0000-4000-8000-0000000000c1", "[\"userPassword\"]"),
        ),
    );
    let env = env(&[("QLIK_API_KEY", API_KEY)]);
    let out = run_cli(
        &[
            "describe-connector",
            "postgres",
            "-c",
            path.to_str().unwrap(),
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("postgres: QvOdbcConnectorPackage.exe 1.0 — 7 properties"),
        "{}",
        out.stdout
    );
    // The real properties (read from connectionProperties.properties), never the JSON Schema
    // keywords `type` and `properties` themselves.
    let rows: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for name in [
        "database",
        "host",
        "port",
        "sslRootCert",
        "sslmode",
        "userName",
        "userPassword",
    ] {
        assert!(rows.contains(&name), "{name} missing: {}", out.stdout);
    }
    assert!(
        !rows.contains(&"type") && !rows.contains(&"properties"),
        "{}",
        out.stdout
    );
    let password_row = out
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("userPassword"))
        .unwrap();
    assert!(
        password_row.contains("string")
            && password_row.contains("credential?")
            && password_row.ends_with("Password"),
        "{password_row}"
    );
    assert!(
        out.stdout
            .contains("default \"require\"; one of \"disable\", \"require\", \"verify-full\""),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("default 5432"), "{}", out.stdout);
    assert!(out.stdout.contains("connector = \"generic\"\ndatasource = \"postgres\"\nproperties = [\"userPassword\"]\nfile_properties = [\"sslRootCert\"]"), "{}", out.stdout);
    let out = run_cli(
        &["describe-connector", "nope", "-c", path.to_str().unwrap()],
        &env,
    )
    .await;
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no api-specs for \"nope\""));
}

#[tokio::test]
async fn one_secret_feeds_many_connections_and_failures_are_per_connection() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            sim.add_connection(
                SeedConnection::new(
                    format!("db{i}"),
                    "mssql",
                    json!({"host": format!("h{i}"), "username": "old"}),
                )
                .in_space("fin"),
            ),
        );
    }
    // The second connection does not grant update.
    sim.set_privileges(&ids[1], vec!["read".into(), "list".into()]);
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "shared",
        r#"{"username":"svc_shared","password":"shared-pass"}"#,
    );
    let job = format!(
        "[[jobs]]\nname = \"shared\"\nconnections = [{{ id = \"{}\" }}, {{ id = \"{}\" }}, {{ name = \"db2\", space = \"fin\" }}]\nconnector = \"mssql\"\nsource = \"v\"\nsecret = \"shared\"\n",
        ids[0], ids[1]
    );
    let text = config_text(&sim, &job);
    let cfg = config::load_str(&text, dir.path(), &input()).unwrap();
    let rotator = app::rotator(&cfg, &input()).await.unwrap();
    let job = cfg.job("shared").unwrap();
    let reports = rotator.run(job, RunOptions::default()).await;
    let lines: Vec<String> = reports.iter().map(|r| r.line()).collect();
    assert_eq!(reports.len(), 3);
    assert!(matches!(reports[0].outcome, Outcome::Rotated), "{lines:?}");
    assert!(
        lines[1].starts_with(&format!(
            "shared[{}]: failed at resolve [no_update_privilege]",
            ids[1]
        )),
        "{lines:?}"
    );
    assert!(matches!(reports[2].outcome, Outcome::Rotated), "{lines:?}");
    assert!(
        lines[2].starts_with("shared[fin/db2]: rotated and verified"),
        "{lines:?}"
    );
    assert_eq!(stored_prop(&sim, &ids[0], "password"), "shared-pass");
    assert_eq!(stored_prop(&sim, &ids[2], "password"), "shared-pass");
    // One secret read for the whole job; no PATCH to the refused connection.
    assert!(
        with_method(&sim, "PATCH")
            .iter()
            .all(|p| !p.path.ends_with(&ids[1]))
    );

    // Fixed, and retried alone: only the failed connection is touched.
    sim.set_privileges(&ids[1], vec!["read".into(), "list".into(), "update".into()]);
    sim.clear_requests();
    let retry = rotator
        .run(
            job,
            RunOptions {
                only: Some(vec![ids[1].clone()]),
                ..RunOptions::default()
            },
        )
        .await;
    assert_eq!(retry.len(), 1);
    assert!(
        matches!(retry[0].outcome, Outcome::Rotated),
        "{}",
        retry[0].line()
    );
    assert_eq!(stored_prop(&sim, &ids[1], "password"), "shared-pass");
    // Ids are random UUIDs, so match them whole: a substring such as "db2" can occur in one.
    let touched = |r: &RecordedRequest| {
        r.path.ends_with(&ids[0])
            || r.path.ends_with(&ids[2])
            || r.query.as_deref().is_some_and(|q| q.contains("db2"))
    };
    assert!(!sim.requests().iter().any(touched), "{:?}", sim.requests());
}

#[tokio::test]
async fn separate_credentials_via_data_credentials_put() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let cred = sim.add_credential(SeedCredential::new(
        "fin-cred", "mssql", "old_user", "old_pass",
    ));
    let id = sim.add_connection(
        SeedConnection::new("sep", "mssql", json!({"host": "h", "database": "d"})).separate(),
    );
    sim.link_credential(&id, &cred);
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "sep",
        r#"{"username":"svc_sep","password":"sep-pass-2"}"#,
    );
    let base = format!(
        "[[jobs]]\nname = \"sep\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"mssql\"\nsource = \"v\"\nsecret = \"sep\"\n"
    );
    // Without a mode: a clear refusal, nothing sent.
    let reports = run_job(dir.path(), &config_text(&sim, &base), "sep").await;
    assert!(
        reports[0].line().contains("[separate_credentials]"),
        "{}",
        reports[0].line()
    );
    assert!(sim.requests().iter().all(|r| r.method == "GET"));

    let text = config_text(
        &sim,
        &format!("{base}separate_credentials = \"data_credentials\"\n"),
    );
    let reports = run_job(dir.path(), &text, "sep").await;
    assert!(
        matches!(reports[0].outcome, Outcome::Rotated),
        "{}",
        reports[0].line()
    );
    let stored = sim.stored_credential(&cred).unwrap();
    assert_eq!(stored["qUsername"], "svc_sep");
    assert_eq!(stored["qPassword"], "sep-pass-2");
    assert_eq!(stored["qName"], "fin-cred");
    let puts = with_method(&sim, "PUT");
    assert_eq!(puts.len(), 1);
    assert_eq!(puts[0].path, format!("/api/v1/data-credentials/{cred}"));
    assert_eq!(puts[0].status, 204);
    assert!(with_method(&sim, "PATCH").is_empty());
}

#[tokio::test]
async fn separate_credentials_via_connection_patch() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let id = sim.add_connection(
        SeedConnection::new(
            "sep",
            "File_AmazonS3ConnectorV2",
            json!({"bucketName": "b", "region": "eu-west-1"}),
        )
        .separate(),
    );
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "s3",
        r#"{"accessKey":"AKIASEP","secretKey":"sep-secret"}"#,
    );
    let job = format!(
        "[[jobs]]\nname = \"s3\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\nsource = \"v\"\nsecret = \"s3\"\nseparate_credentials = \"patch\"\ncredentials_name = \"rotator-s3\"\n"
    );
    let reports = run_job(dir.path(), &config_text(&sim, &job), "s3").await;
    assert!(
        matches!(reports[0].outcome, Outcome::Rotated),
        "{}",
        reports[0].line()
    );
    let patch = &with_method(&sim, "PATCH")[0];
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&patch.body).unwrap(),
        json!([
            {"op": "add", "path": "/connectionProperties/accessKey", "value": "AKIASEP"},
            {"op": "add", "path": "/connectionProperties/secretKey", "value": "sep-secret"},
            {"op": "add", "path": "/connectionProperties/credentialsName", "value": "rotator-s3"}
        ])
    );
}

#[tokio::test]
async fn catalogue_and_job_options_are_validated() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(
        &sim,
        r#"
[[jobs]]
name = "a"
connection = { id = "cccccccc-0000-4000-8000-00000000000c" }
connector = "generic"
source = "v"
secret = "s"
[[jobs]]
name = "b"
connection = { id = "cccccccc-0000-4000-8000-00000000000c" }
connections = [{ id = "dddddddd-0000-4000-8000-00000000000d" }]
connector = "mssql"
properties = ["x"]
scheme = "nope"
separate_credentials = "sometimes"
source = "v"
secret = "s"
[[jobs]]
name = "c"
connections = [{ id = "dddddddd-0000-4000-8000-00000000000d" }, { id = "dddddddd-0000-4000-8000-00000000000d" }]
connector = "File_AmazonS3ConnectorV2"
separate_credentials = "data_credentials"
file_encoding = "base64"
source = "v"
secret = "s"
"#,
    );
    let errs: Vec<String> = config::load_str(&text, dir.path(), &input())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        errs,
        [
            "jobs[0].datasource: is required with connector = \"generic\": the connection's datasourceID",
            "jobs[0].properties: is required with connector = \"generic\": the credential property names to write (see `qlik-rotator describe-connector`)",
            "jobs[1].connections: set either connection or connections, not both",
            "jobs[1].properties: is only used with connector = \"generic\"",
            "jobs[1].scheme: connector \"mssql\" has no such scheme (expected one of: password)",
            "jobs[1].separate_credentials: expected \"patch\" or \"data_credentials\"",
            "jobs[2].connections[1]: duplicate connection",
            "jobs[2].file_encoding: scheme \"access_key\" has no file credential",
            "jobs[2].separate_credentials: data_credentials needs a username/password scheme; scheme \"access_key\" has none",
        ]
    );
}

/// Issue 9's acceptance case: a tenant that serves api-specs exactly as Qlik documents them
/// (JSON Schema, S11) — `rotate --all` rotates and verifies the catalogue jobs (S3, SQL
/// Server, BigQuery) and a generic job, through the real binary.
#[tokio::test]
async fn a_tenant_serving_documented_api_specs_rotates_catalogue_and_generic_jobs() {
    let sim = tenant(SimConfig::default()).await;
    // S11's example for File_AmazonS3ConnectorV2, abridged as in qlik-api-facts.md §2.8.
    sim.add_data_source_spec(
        "File_AmazonS3ConnectorV2",
        qlik_sim::api_specs(
            "QvWebStorageProviderConnectorPackage.exe",
            "4.46.0",
            json!({
                "region": {"type": "string", "default": "us-east-1", "enum": ["eu-west-1", "us-east-1"], "description": "Region."},
                "bucketName": {"type": "string", "description": "Bucket name."},
                "separateCredentials": {"type": "boolean", "default": false},
                "selectedCredentials": {"type": "string"},
                "credentialsName": {"type": "string"},
                "accessKey": {"type": "string", "description": "Amazon S3 access key."},
                "secretKey": {"type": "string", "description": "Amazon S3 secret key."}
            }),
        ),
    );
    sim.add_data_source_spec(
        "mssql",
        qlik_sim::api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            json!({"host": {"type": "string"}, "port": {"type": "integer"}, "database": {"type": "string"},
                   "username": {"type": "string"}, "password": {"type": "string"}}),
        ),
    );
    sim.add_data_source_spec(
        "gbq",
        qlik_sim::api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            json!({"Catalog": {"type": "string"}, "OAuthMechanism": {"type": "string"},
                   "KeyFilePath": {"type": "array"}, "Email": {"type": "string"},
                   "P12CustomPwd": {"type": "string"}}),
        ),
    );
    sim.add_data_source_spec("postgres", pg_spec());
    let pg = sim.add_connection(SeedConnection::new(
        "Warehouse PG",
        "postgres",
        json!({"host": "pg", "port": 5432, "database": "dw", "userName": "old", "userPassword": "old-pw"}),
    ));
    let dir = tempfile::tempdir().unwrap();
    vault(
        dir.path(),
        "qlik/sales-s3",
        r#"{"accessKey":"AKIANEW","secretKey":"doc-shape-s3"}"#,
    );
    vault(
        dir.path(),
        "qlik/finance-sql",
        r#"{"username":"svc_fin","password":"doc-shape-sql"}"#,
    );
    vault(
        dir.path(),
        "qlik/bigquery",
        r#"{"type":"service_account","private_key":"k","client_email":"sa@p.iam"}"#,
    );
    vault(
        dir.path(),
        "pg",
        r#"{"userName":"svc_dw","userPassword":"doc-shape-pg"}"#,
    );
    let jobs = format!(
        "{}\n{}",
        three_jobs("v"),
        generic_job(&pg, "[\"userName\", \"userPassword\"]")
    );
    let path = write_config(dir.path(), &config_text(&sim, &jobs));
    let out = run_cli(
        &["rotate", "--all", "-c", path.to_str().unwrap()],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    for job in ["sales-s3", "finance-sql", "warehouse-bq", "pg"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{job}: rotated and verified (connection"))),
            "{job}: {}",
            out.stdout
        );
    }
    assert_eq!(stored_prop(&sim, S3_ID, "secretKey"), "doc-shape-s3");
    assert_eq!(stored_prop(&sim, SQL_ID, "password"), "doc-shape-sql");
    assert_eq!(stored_prop(&sim, &pg, "userPassword"), "doc-shape-pg");
    assert_eq!(with_method(&sim, "PATCH").len(), 4);
    // Each connector's api-specs were read and used.
    for ds in ["File_AmazonS3ConnectorV2", "mssql", "gbq", "postgres"] {
        assert_eq!(
            with_method(&sim, "GET")
                .iter()
                .filter(|r| r.path == format!("/api/v1/data-sources/{ds}/api-specs"))
                .count(),
            1,
            "{ds}"
        );
    }
}

#[tokio::test]
async fn describe_connector_checks_each_catalogue_scheme_against_the_api_specs() {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    sim.add_data_source_spec(
        "gbq",
        qlik_sim::api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            json!({"Catalog": {"type": "string", "description": "Project."},
                   "KeyFilePath": {"type": "string", "description": "Key file."},
                   "OAuthMechanism": {"type": "string", "enum": ["0", "1"], "default": "0"},
                   "Email": {"type": "string"}, "P12CustomPwd": {"type": "string"}}),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &config_text(
            &sim,
            &generic_job("00000000-0000-4000-8000-0000000000c1", "[\"userPassword\"]"),
        ),
    );
    let out = run_cli(
        &["describe-connector", "gbq", "-c", path.to_str().unwrap()],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("gbq is in the catalogue"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "  scheme service_account: warning: property \"KeyFilePath\" is declared as \"string\" in the api-specs of \"gbq\", but the job writes \"array\""
        ),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("default \"0\"; one of \"0\", \"1\""),
        "{}",
        out.stdout
    );
    assert!(with_method(&sim, "PATCH").is_empty());
}
