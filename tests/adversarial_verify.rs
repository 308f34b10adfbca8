//! Adversarial cases for the api-specs check, verification and secret value types: hostile
//! api-specs shapes, GETs answering with another connection's (or credential's) body before and
//! after the PATCH, a 204 that applies nothing, `updated` missing/backwards/equal/garbage, and
//! every wrong JSON type of a secret value for text and file credentials.
//!
//! Each case runs the real binary (`rotate`, `RUST_LOG=trace`) against the simulator over HTTP
//! with a file vault, then the same case through the library `Rotator` with metrics, and
//! asserts: the clear error (stage and `error_type`), no PATCH/PUT where none belongs, nothing
//! recorded as applied after a failure, and no canary secret in stdout, stderr, the report
//! lines or `/metrics`.

mod common;

use std::{collections::HashMap, path::Path, sync::Arc};

use common::harness::*;
use qlik_rotator::{app, config, metrics::Metrics};
use qlik_sim::{Fault, SeedConnection, SeedCredential, SimConfig, Simulator, api_specs};
use serde_json::{Value, json};

/// Every secret value in this file contains this, so a leak of any of them is caught.
const CANARY: &str = "CANARY-ADV";
/// A number secret: coerced, it would print as `1.2345678901234568e+29`.
const BIG: &str = "123456789012345678901234567890";

const S3: &str = "aaaaaaaa-0000-4000-8000-000000000001";
const SQL: &str = "aaaaaaaa-0000-4000-8000-000000000002";
const GBQ: &str = "aaaaaaaa-0000-4000-8000-000000000003";
const OTHER: &str = "aaaaaaaa-0000-4000-8000-000000000004";
const PG: &str = "aaaaaaaa-0000-4000-8000-000000000005";
const SEP: &str = "aaaaaaaa-0000-4000-8000-000000000006";
const SNOW: &str = "aaaaaaaa-0000-4000-8000-000000000007";
const REST: &str = "aaaaaaaa-0000-4000-8000-000000000008";

/// A tenant: S3 (by id), SQL Server (by name in space "fin"), BigQuery, an unrelated S3
/// connection, a generic PostgreSQL connection, a separate-credentials SQL Server connection
/// with two data credentials, Snowflake and REST; a file vault and a config with one job each.
struct Tenant {
    sim: Simulator,
    dir: tempfile::TempDir,
    text: String,
    cred: String,
    other_cred: String,
}

async fn tenant() -> Tenant {
    let sim = Simulator::start(SimConfig::default()).await.unwrap();
    let seed =
        |id: &str, name: &str, ds: &str, p: Value| SeedConnection::new(name, ds, p).with_id(id);
    sim.add_connection(
        seed(
            S3,
            "Sales S3",
            "File_AmazonS3ConnectorV2",
            json!({"region": "eu-west-1", "bucketName": "sales", "accessKey": "AKIAOLD", "secretKey": "old"}),
        )
        .in_space("sales"),
    );
    sim.add_connection(
        seed(
            SQL,
            "Finance SQL",
            "mssql",
            json!({"host": "sql", "port": 1433, "database": "fin", "username": "old", "password": "old"}),
        )
        .in_space("fin"),
    );
    sim.add_connection(seed(
        GBQ,
        "Warehouse BQ",
        "gbq",
        json!({"OAuthMechanism": "0", "Catalog": "wh", "KeyFilePath": [{"name": "old.json", "value": "b2xk"}]}),
    ));
    sim.add_connection(
        seed(
            OTHER,
            "Other S3",
            "File_AmazonS3ConnectorV2",
            json!({"region": "us-east-1", "bucketName": "other", "accessKey": "AKIAOTHER", "secretKey": "other"}),
        )
        .in_space("sales"),
    );
    sim.add_connection(seed(
        PG,
        "Warehouse PG",
        "postgres",
        json!({"host": "pg", "port": 5432, "userName": "old", "userPassword": "old"}),
    ));
    sim.add_connection(
        seed(
            SEP,
            "Shared SQL",
            "mssql",
            json!({"host": "sql2", "database": "shared"}),
        )
        .separate(),
    );
    sim.add_connection(seed(
        SNOW,
        "Snow",
        "snowflake",
        json!({"server": "acme.snowflakecomputing.com", "username": "old", "authenticator": "snowflake_jwt",
               "PRIV_KEY_FILE": [{"name": "old.p8", "value": "b2xk"}]}),
    ));
    sim.add_connection(seed(
        REST,
        "Api",
        "rest",
        json!({"url": "https://api.example", "queryHeaders": [{"name": "Authorization", "value": "old", "encrypt": true}]}),
    ));
    let mut c = SeedCredential::new("shared-cred", "mssql", "old", "old");
    c.id = Some("bbbbbbbb-0000-4000-8000-000000000001".into());
    let cred = sim.add_credential(c);
    let mut c = SeedCredential::new("unrelated-cred", "mssql", "x", "x");
    c.id = Some("bbbbbbbb-0000-4000-8000-000000000002".into());
    let other_cred = sim.add_credential(c);
    sim.link_credential(SEP, &cred);
    sim.add_data_source_spec(
        "postgres",
        api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            json!({"host": {"type": "string"}, "port": {"type": "integer"},
                   "userName": {"type": "string"}, "userPassword": {"type": "string"}}),
        ),
    );

    let dir = tempfile::tempdir().unwrap();
    let jobs = format!(
        r#"
[[jobs]]
name = "s3"
connection = {{ id = "{S3}" }}
connector = "File_AmazonS3ConnectorV2"
source = "v"
secret = "s3"

[[jobs]]
name = "sql"
connection = {{ name = "Finance SQL", space = "fin" }}
connector = "mssql"
source = "v"
secret = "sql"

[[jobs]]
name = "bq"
connection = {{ id = "{GBQ}" }}
connector = "gbq"
source = "v"
secret = "bq"

[[jobs]]
name = "pg"
connection = {{ id = "{PG}" }}
connector = "generic"
datasource = "postgres"
properties = ["userName", "userPassword"]
source = "v"
secret = "pg"

[[jobs]]
name = "sep"
connection = {{ id = "{SEP}" }}
connector = "mssql"
separate_credentials = "data_credentials"
allow_shared_connection = true
source = "v"
secret = "sep"

[[jobs]]
name = "sep-by-name"
connection = {{ id = "{SEP}" }}
connector = "mssql"
separate_credentials = "data_credentials"
allow_shared_connection = true
credential = "shared-cred"
source = "v"
secret = "sep"

[[jobs]]
name = "snow"
connection = {{ id = "{SNOW}" }}
connector = "snowflake"
scheme = "key_pair"
source = "v"
secret = "snow"

[[jobs]]
name = "api"
connection = {{ id = "{REST}" }}
connector = "rest"
scheme = "header"
header = "Authorization"
source = "v"
secret = "api"
"#
    );
    let text = format!(
        "{}write_budget_per_min = 0\nmax_attempts = 1\n[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{jobs}",
        qlik_section(&sim)
    );
    write_config(dir.path(), &text);
    let t = Tenant {
        sim,
        dir,
        text,
        cred,
        other_cred,
    };
    // Good secrets by default; cases overwrite the one they attack.
    t.vault(
        "s3",
        &json!({"accessKey": format!("AKIA{CANARY}1"), "secretKey": format!("{CANARY}-s3")}),
    );
    t.vault(
        "sql",
        &json!({"username": "svc_fin", "password": format!("{CANARY}-sql")}),
    );
    t.vault(
        "bq",
        &json!({"key_file": {"type": "service_account", "private_key": format!("{CANARY}-bq")}}),
    );
    t.vault(
        "pg",
        &json!({"userName": "svc_pg", "userPassword": format!("{CANARY}-pg")}),
    );
    t.vault(
        "sep",
        &json!({"username": "svc_sep", "password": format!("{CANARY}-sep")}),
    );
    t.vault(
        "snow",
        &json!({"username": "svc_snow", "private_key": format!("-----BEGIN PRIVATE KEY-----{CANARY}")}),
    );
    t.vault("api", &json!({"token": format!("Bearer {CANARY}-api")}));
    t
}

impl Tenant {
    fn vault(&self, id: &str, body: &Value) {
        self.vault_text(id, &body.to_string());
    }

    fn vault_text(&self, id: &str, body: &str) {
        let p = self.dir.path().join("vault").join(format!("{id}.json"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
    }

    fn path(&self) -> String {
        self.dir
            .path()
            .join("config.toml")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn state(&self) -> String {
        common::statedb::dump(&self.dir.path().join("state"))
    }

    fn count(&self, method: &str) -> usize {
        with_method(&self.sim, method).len()
    }
}

fn input() -> HashMap<String, String> {
    HashMap::from([("QLIK_API_KEY".to_owned(), API_KEY.to_owned())])
}

/// What one case produced: the binary's run and the library's run of the same job.
struct Run {
    cli: CliOutput,
    /// The library's report line.
    line: String,
    /// The library's report warnings.
    warnings: Vec<String>,
    /// `/metrics` after the library run.
    metrics: String,
    /// PATCH and PUT requests over both runs.
    writes: usize,
}

/// Runs `job` through the binary, then through the library with metrics; `inject` is called
/// before each run (faults are used up by the run they hit).
async fn run(t: &Tenant, job: &str, inject: impl Fn(&Simulator)) -> Run {
    t.sim.clear_requests();
    inject(&t.sim);
    let env = env(&[("QLIK_API_KEY", API_KEY), ("RUST_LOG", "trace")]);
    let cli = run_cli(&["rotate", "-c", &t.path(), "--job", job], &env).await;
    inject(&t.sim);
    let cfg = config::load_str(&t.text, t.dir.path(), &input()).expect("valid config");
    let metrics = Arc::new(Metrics::new());
    metrics.register_jobs(&cfg.jobs);
    let rotator = app::rotator(&cfg, &input())
        .await
        .unwrap()
        .with_metrics(metrics.clone());
    let job_cfg = cfg.job(job).unwrap();
    let reports = rotator
        .run(job_cfg, qlik_rotator::rotation::RunOptions::default())
        .await;
    assert_eq!(reports.len(), 1);
    rotator.finish_run(job_cfg, &reports);
    Run {
        cli,
        line: reports[0].line(),
        warnings: reports[0].warnings.clone(),
        metrics: metrics.render(),
        writes: t.count("PATCH") + t.count("PUT"),
    }
}

/// No canary (nor the coerced form of the number secret) anywhere the outside can see.
fn assert_no_canary(r: &Run) {
    for (what, text) in [
        ("stdout", &r.cli.stdout),
        ("stderr", &r.cli.stderr),
        ("report line", &r.line),
        ("metrics", &r.metrics),
    ] {
        for canary in [CANARY, BIG, "e+29", "1.2345678901234568"] {
            assert!(!text.contains(canary), "{canary} leaked in {what}: {text}");
        }
    }
    // The product logs at debug/trace too (the wire-level crates are capped at info).
    assert!(
        r.cli.stderr.contains("DEBUG") || r.cli.stderr.contains("TRACE"),
        "trace logging produced output: {}",
        r.cli.stderr
    );
    // The metrics looked at are the run's: its outcome was counted (a failure per job, a
    // rotation under its connector).
    let counted = r.metrics.lines().any(|l| {
        l.starts_with("qlik_rotator_rotations_total{")
            || (l.starts_with("qlik_rotator_rotations_rotated_total{") && !l.ends_with(" 0"))
    });
    assert!(counted, "{}", r.metrics);
}

/// A failed case: exit 1, the binary's line starts with `prefix` and contains every `parts`,
/// the library agrees, nothing was written, nothing recorded, no canary.
fn assert_refused(r: &Run, job: &str, prefix: &str, parts: &[&str]) {
    assert_eq!(r.cli.code, 1, "{:?}", r.cli);
    let line = r
        .cli
        .stdout
        .lines()
        .find(|l| l.starts_with(&format!("{job}:")))
        .unwrap_or_else(|| panic!("no line for {job}: {:?}", r.cli));
    assert!(line.starts_with(&format!("{job}: {prefix}")), "{line}");
    assert!(
        r.line.starts_with(&format!("{job}: {prefix}")),
        "{}",
        r.line
    );
    for p in parts {
        assert!(line.contains(p), "{p:?} not in {line}");
        assert!(r.line.contains(p), "{p:?} not in {}", r.line);
    }
    assert!(
        !r.cli
            .stdout
            .lines()
            .any(|l| l.starts_with(&format!("{job}: rotated"))),
        "{}",
        r.cli.stdout
    );
    assert!(
        !r.line.starts_with(&format!("{job}: rotated")),
        "{}",
        r.line
    );
    assert_eq!(r.writes, 0, "nothing may be sent: {line}");
    assert_no_canary(r);
}

/// A case that fails after the write: the write happened (twice: binary and library), the
/// line says verify_failed and never "rotated", and nothing was recorded as applied.
fn assert_verify_failed(t: &Tenant, r: &Run, job: &str, error_type: &str, parts: &[&str]) {
    assert_eq!(r.cli.code, 1, "{:?}", r.cli);
    let want = format!("{job}: verify_failed at verify [{error_type}]");
    assert!(r.cli.stdout.starts_with(&want), "{}", r.cli.stdout);
    assert!(r.line.starts_with(&want), "{}", r.line);
    for p in parts {
        assert!(r.cli.stdout.contains(p), "{p:?} not in {}", r.cli.stdout);
    }
    assert!(!r.cli.stdout.contains("rotated"), "{}", r.cli.stdout);
    assert_eq!(r.writes, 2);
    assert!(
        !t.state().contains(&format!("\"{job}\"")),
        "recorded as applied: {}",
        t.state()
    );
    assert_eq!(
        metric(
            &r.metrics,
            "qlik_rotator_errors_total",
            &[
                ("rotation_job", job),
                ("stage", "verify"),
                ("error_type", error_type)
            ]
        ),
        Some(1.0),
        "{}",
        r.metrics
    );
    assert_no_canary(r);
}

fn fault_get(path: String, fields: Vec<(&str, Option<Value>)>, times: u32) -> Fault {
    Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some(path),
        fields: fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        times,
    }
}

/// Lets the next GET under `path` through untouched (a zero delay, used up by that GET), so a
/// fault injected after it hits the GET after that.
fn pass_first_get(sim: &Simulator, path: String) {
    sim.inject(Fault::Delay {
        method: Some("GET".into()),
        path_prefix: Some(path),
        delay: std::time::Duration::ZERO,
        times: 1,
    });
}

/// Runs `job` (see `run`) with the next GET under `path` (the one before the write) answering
/// with `fields` rewritten.
async fn run_rewriting_get(
    t: &Tenant,
    job: &str,
    path: String,
    fields: Vec<(&str, Option<Value>)>,
) -> Run {
    run(t, job, |sim| {
        sim.inject(fault_get(path.clone(), fields.clone(), 1))
    })
    .await
}

/// Lets the first (pre-PATCH) GET of a connection through untouched and rewrites the next one
/// (the verify GET).
fn on_verify_get(sim: &Simulator, id: &str, fields: Vec<(&str, Option<Value>)>) {
    pass_first_get(sim, format!("/api/v1/data-connections/{id}"));
    sim.inject(fault_get(
        format!("/api/v1/data-connections/{id}"),
        fields,
        1,
    ));
}

/// Runs `job` (see `run`) with the verify GET of connection `id` answering with `fields`
/// rewritten.
async fn run_rewriting_verify_get(
    t: &Tenant,
    job: &str,
    id: &str,
    fields: Vec<(&str, Option<Value>)>,
) -> Run {
    run(t, job, |sim| on_verify_get(sim, id, fields.clone())).await
}

/// Runs `job` (see `run`) with its next `method` write answered 204 but not applied.
async fn run_ignoring_write(t: &Tenant, job: &str, method: &str) -> Run {
    run(t, job, |sim| {
        sim.inject(Fault::IgnoredWrite {
            method: Some(method.into()),
            path_prefix: None,
            times: 1,
        })
    })
    .await
}

// === hostile api-specs ===

async fn with_specs(t: &Tenant, ds: &str, body: Value) {
    t.sim.add_data_source_spec(ds, body);
}

/// A fresh tenant whose api-specs for `ds` are `body`: `job` is refused at build with
/// `error_type` and every one of `parts` (and everything `assert_refused` checks).
async fn refused_by_specs(ds: &str, body: Value, job: &str, error_type: &str, parts: &[&str]) {
    let t = tenant().await;
    with_specs(&t, ds, body).await;
    let r = run(&t, job, |_| {}).await;
    assert_refused(&r, job, &format!("failed at build [{error_type}]"), parts);
}

#[tokio::test]
async fn specs_flat_form_is_refused_as_spec_invalid() {
    refused_by_specs(
        "postgres",
        json!({"connectionProperties": {"userName": {"type": "string"}, "userPassword": {"type": "string"}}}),
        "pg",
        "spec_invalid",
        &["connectionProperties has no \"properties\" object"],
    )
    .await;
}

#[tokio::test]
async fn specs_body_that_is_an_array_is_refused() {
    refused_by_specs(
        "postgres",
        json!([{"name": "userPassword"}]),
        "pg",
        "spec_invalid",
        &["not a JSON object"],
    )
    .await;
}

#[tokio::test]
async fn specs_connection_properties_of_the_wrong_shape_are_refused() {
    refused_by_specs(
        "postgres",
        json!({"connectionProperties": "userName,userPassword"}),
        "pg",
        "spec_invalid",
        &["no connectionProperties object"],
    )
    .await;
}

#[tokio::test]
async fn specs_schema_type_other_than_object_is_refused() {
    refused_by_specs(
        "postgres",
        json!({"connectionProperties": {"type": "array", "properties": {"userName": {"type": "string"}, "userPassword": {"type": "string"}}}}),
        "pg",
        "spec_invalid",
        &["connectionProperties.type is not \"object\""],
    )
    .await;
}

#[tokio::test]
async fn specs_properties_as_a_list_are_refused() {
    refused_by_specs(
        "postgres",
        json!({"connectionProperties": {"type": "object", "properties": [{"name": "userName", "type": "string"}]}}),
        "pg",
        "spec_invalid",
        &[],
    )
    .await;
}

#[tokio::test]
async fn specs_with_too_many_properties_are_refused() {
    let many: serde_json::Map<String, Value> = (0..5000)
        .map(|i| (format!("p{i}"), json!({"type": "string"})))
        .collect();
    refused_by_specs(
        "postgres",
        api_specs("x", "1", Value::Object(many)),
        "pg",
        "spec_invalid",
        &["declare 5000 properties"],
    )
    .await;
}

#[tokio::test]
async fn specs_non_string_type_of_a_written_property_is_refused() {
    refused_by_specs(
        "postgres",
        api_specs(
            "x",
            "1",
            json!({"userName": {"type": "string"}, "userPassword": {"type": 7}}),
        ),
        "pg",
        "spec_mismatch",
        &["\"userPassword\" is declared as \"invalid (a JSON integer)\""],
    )
    .await;
}

#[tokio::test]
async fn specs_unknown_type_name_is_refused_for_a_generic_job() {
    refused_by_specs(
        "postgres",
        api_specs(
            "x",
            "1",
            json!({"userName": {"type": "string"}, "userPassword": {"type": "password"}}),
        ),
        "pg",
        "spec_mismatch",
        &["declared as \"invalid (\\\"password\\\")\""],
    )
    .await;
}

#[tokio::test]
async fn specs_name_with_control_characters_does_not_count_as_declared() {
    refused_by_specs(
        "postgres",
        api_specs(
            "x",
            "1",
            json!({"userName": {"type": "string"}, "userPassword\n": {"type": "string"}}),
        ),
        "pg",
        "spec_mismatch",
        &["property \"userPassword\" does not exist in the api-specs of \"postgres\""],
    )
    .await;
}

#[tokio::test]
async fn specs_missing_a_catalogue_property_refuse_with_zero_patches() {
    refused_by_specs(
        "File_AmazonS3ConnectorV2",
        api_specs(
            "QvWebStorageProviderConnectorPackage.exe",
            "4.46.0",
            json!({"region": {"type": "string"}, "bucketName": {"type": "string"}, "accessKey": {"type": "string"}}),
        ),
        "s3",
        "spec_mismatch",
        &["property \"secretKey\" does not exist in the api-specs of \"File_AmazonS3ConnectorV2\""],
    )
    .await;
}

#[tokio::test]
async fn specs_declaring_a_text_credential_as_integer_refuse_a_catalogue_job() {
    refused_by_specs(
        "mssql",
        api_specs(
            "QvOdbcConnectorPackage.exe",
            "1",
            json!({"username": {"type": "string"}, "password": {"type": "integer"}}),
        ),
        "sql",
        "spec_mismatch",
        &["\"password\" is declared as \"integer\""],
    )
    .await;
}

#[tokio::test]
async fn specs_generic_type_mismatch_is_refused() {
    refused_by_specs(
        "postgres",
        api_specs(
            "x",
            "1",
            json!({"userName": {"type": "string"}, "userPassword": {"type": "array"}}),
        ),
        "pg",
        "spec_mismatch",
        &[
            "\"userPassword\" is declared as \"array\" in the api-specs of \"postgres\", but the job writes \"string\"",
        ],
    )
    .await;
}

#[tokio::test]
async fn specs_catalogue_type_doubts_are_warnings_counted_and_shown() {
    let t = tenant().await;
    // KeyFilePath declared as a string and OAuthMechanism as an integer: the catalogue writes a
    // file array and "0" (from Qlik's examples); nobody publishes which is right.
    with_specs(
        &t,
        "gbq",
        api_specs(
            "QvOdbcConnectorPackage.exe",
            "1",
            json!({"Catalog": {"type": "string"}, "KeyFilePath": {"type": "string"},
                   "OAuthMechanism": {"type": "integer", "enum": [0, 1]},
                   "Email": {"type": "string"}, "P12CustomPwd": {"type": "string"}}),
        ),
    )
    .await;
    let r = run(&t, "bq", |_| {}).await;
    assert_eq!(r.cli.code, 0, "{:?}", r.cli);
    assert!(
        r.cli.stdout.starts_with(
            "bq: rotated and verified, 2 warnings: property \"KeyFilePath\" is declared as \"string\""
        ),
        "{}",
        r.cli.stdout
    );
    assert!(r.cli.stderr.contains("disagree with the catalogue"));
    assert_eq!(r.warnings.len(), 2);
    assert_eq!(
        metric(
            &r.metrics,
            "qlik_rotator_spec_warnings_total",
            &[("connector_type", "gbq")]
        ),
        Some(2.0),
        "{}",
        r.metrics
    );
    assert_eq!(r.writes, 2);
    assert_no_canary(&r);
    // `plan` shows them too, and sends nothing.
    t.sim.clear_requests();
    let out = run_cli(
        &["plan", "-c", &t.path(), "--job", "bq"],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains("  warning: property \"OAuthMechanism\" is declared as \"integer\""),
        "{}",
        out.stdout
    );
    assert_eq!(t.count("PATCH"), 0);
    assert!(!out.stdout.contains(CANARY));
}

#[tokio::test]
async fn specs_hostile_descriptions_and_enums_are_escaped_and_capped_by_describe() {
    let t = tenant().await;
    let forged = "ok\n\u{1b}[2Kpg: rotated and verified (forged)\r";
    let values: Vec<Value> = (0..10_000).map(|i| json!(format!("v{i}"))).collect();
    with_specs(
        &t,
        "postgres",
        api_specs(
            &format!("prov{forged}"),
            "1",
            json!({"userPassword": {"type": "string", "description": format!("{forged}{}", "x".repeat(1_000_000)), "enum": values},
                   "bad\u{1b}name": {"type": "string"}}),
        ),
    )
    .await;
    let out = run_cli(
        &["describe-connector", "postgres", "-c", &t.path()],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains('\u{1b}') && !out.stdout.contains('\r'));
    assert!(
        !out.stdout.lines().any(|l| l.starts_with("pg: rotated")),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("(1 unreadable entries ignored)"));
    assert!(out.stdout.contains("(+9968 more)"), "{}", out.stdout);
    assert!(out.stdout.len() < 10_000, "{} bytes", out.stdout.len());
    assert_eq!(t.count("PATCH"), 0);
}

// === wrong bodies: before the PATCH ===

fn wrong_body(path: String, answer_id: &str) -> Fault {
    Fault::WrongBody {
        method: Some("GET".into()),
        path_prefix: Some(path),
        answer_id: answer_id.into(),
        times: 1,
    }
}

#[tokio::test]
async fn wrong_body_by_id_before_the_patch_sends_nothing() {
    let t = tenant().await;
    let r = run(&t, "s3", |sim| {
        sim.inject(wrong_body(format!("/api/v1/data-connections/{S3}"), OTHER))
    })
    .await;
    assert_refused(
        &r,
        "s3",
        "failed at resolve [wrong_connection]",
        &[&format!(
            "asked for connection {S3} but the GET answered with connection \"{OTHER}\""
        )],
    );
    // Neither connection was touched.
    assert_eq!(stored_prop(&t.sim, OTHER, "secretKey"), "other");
    assert_eq!(stored_prop(&t.sim, S3, "secretKey"), "old");
}

#[tokio::test]
async fn wrong_body_by_name_before_the_patch_sends_nothing() {
    let t = tenant().await;
    let r = run(&t, "sql", |sim| {
        sim.inject(wrong_body("/api/v1/data-connections/Finance".into(), SEP))
    })
    .await;
    assert_refused(
        &r,
        "sql",
        "failed at resolve [wrong_connection]",
        &[
            "asked for the connection named \"Finance SQL\" but the GET answered with one named \"Shared SQL\"",
        ],
    );
}

#[tokio::test]
async fn wrong_space_by_name_before_the_patch_sends_nothing() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "sql",
        "/api/v1/data-connections/Finance".into(),
        vec![("space", Some(json!("elsewhere")))],
    )
    .await;
    assert_refused(
        &r,
        "sql",
        "failed at resolve [wrong_connection]",
        &["in space fin but the GET answered with one in space \"elsewhere\""],
    );
}

#[tokio::test]
async fn id_field_disagreeing_with_qid_sends_nothing() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "s3",
        format!("/api/v1/data-connections/{S3}"),
        vec![("id", Some(json!(OTHER)))],
    )
    .await;
    assert_refused(
        &r,
        "s3",
        "failed at resolve [wrong_connection]",
        &[&format!("qID {S3} but id \"{OTHER}\"")],
    );
}

#[tokio::test]
async fn empty_qid_sends_nothing() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "s3",
        format!("/api/v1/data-connections/{S3}"),
        vec![("qID", Some(json!("")))],
    )
    .await;
    assert_refused(&r, "s3", "failed at resolve [wrong_connection]", &[]);
}

#[tokio::test]
async fn qid_with_control_characters_cannot_forge_a_line() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "s3",
        format!("/api/v1/data-connections/{S3}"),
        vec![(
            "qID",
            Some(json!("x\ns3: rotated and verified (forged)\u{1b}[0m")),
        )],
    )
    .await;
    assert_refused(&r, "s3", "failed at resolve [wrong_connection]", &[]);
    assert_eq!(r.cli.stdout.lines().count(), 1, "{}", r.cli.stdout);
    assert!(!r.cli.stdout.contains('\u{1b}'));
}

#[tokio::test]
async fn wrong_credential_body_by_id_sends_no_put() {
    let t = tenant().await;
    let other = t.other_cred.clone();
    let cred = t.cred.clone();
    let r = run(&t, "sep", |sim| {
        sim.inject(wrong_body(
            format!("/api/v1/data-credentials/{cred}"),
            &other,
        ))
    })
    .await;
    assert_refused(
        &r,
        "sep",
        "failed at resolve [wrong_connection]",
        &[&format!(
            "asked for credential {cred} but the GET answered with credential \"{other}\""
        )],
    );
    assert_eq!(t.sim.stored_credential(&other).unwrap()["qPassword"], "x");
}

#[tokio::test]
async fn wrong_credential_body_by_name_sends_no_put() {
    let t = tenant().await;
    let other = t.other_cred.clone();
    let r = run(&t, "sep-by-name", |sim| {
        sim.inject(wrong_body(
            "/api/v1/data-credentials/shared-cred".into(),
            &other,
        ))
    })
    .await;
    assert_refused(
        &r,
        "sep-by-name",
        "failed at resolve [wrong_connection]",
        &[
            "asked for the credential named \"shared-cred\" but the GET answered with one named \"unrelated-cred\"",
        ],
    );
}

// === wrong bodies and no-op writes: after the PATCH ===

#[tokio::test]
async fn wrong_body_on_the_verify_get_fails_verification() {
    let t = tenant().await;
    let r = run(&t, "s3", |sim| {
        pass_first_get(sim, format!("/api/v1/data-connections/{S3}"));
        sim.inject(wrong_body(format!("/api/v1/data-connections/{S3}"), OTHER));
    })
    .await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "wrong_connection",
        &[&format!("the GET answered with connection \"{OTHER}\"")],
    );
}

#[tokio::test]
async fn wrong_credential_body_on_the_verify_get_fails_verification() {
    let t = tenant().await;
    let (cred, other) = (t.cred.clone(), t.other_cred.clone());
    let r = run(&t, "sep", |sim| {
        pass_first_get(sim, format!("/api/v1/data-credentials/{cred}"));
        sim.inject(wrong_body(
            format!("/api/v1/data-credentials/{cred}"),
            &other,
        ));
    })
    .await;
    assert_verify_failed(&t, &r, "sep", "wrong_connection", &["credential"]);
}

#[tokio::test]
async fn a_patch_answered_204_that_applies_nothing_is_not_a_rotation() {
    let t = tenant().await;
    let r = run_ignoring_write(&t, "s3", "PATCH").await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "verify_mismatch",
        &["updated did not advance: Qlik answered 204, but the change does not show"],
    );
    assert_eq!(stored_prop(&t.sim, S3, "secretKey"), "old");
    // Not recorded: the next `rotate --if-changed` sends the PATCH again.
    t.sim.clear_requests();
    let out = run_cli(
        &["rotate", "-c", &t.path(), "--job", "s3", "--if-changed"],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.starts_with("s3: rotated and verified"));
    assert_eq!(t.count("PATCH"), 1);
}

#[tokio::test]
async fn a_data_credential_put_answered_204_that_applies_nothing_is_not_a_rotation() {
    let t = tenant().await;
    let r = run_ignoring_write(&t, "sep", "PUT").await;
    assert_verify_failed(
        &t,
        &r,
        "sep",
        "verify_mismatch",
        &["credential updated did not advance"],
    );
    assert_eq!(
        t.sim.stored_credential(&t.cred).unwrap()["qPassword"],
        "old"
    );
}

#[tokio::test]
async fn updated_missing_after_the_patch_fails_verification() {
    let t = tenant().await;
    let r = run_rewriting_verify_get(&t, "s3", S3, vec![("updated", None)]).await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "verify_mismatch",
        &["updated is missing or not a valid timestamp after the write"],
    );
}

#[tokio::test]
async fn updated_garbage_after_the_patch_fails_verification() {
    let t = tenant().await;
    let r = run_rewriting_verify_get(
        &t,
        "s3",
        S3,
        vec![("updated", Some(json!("\u{1b}[31mtomorrow")))],
    )
    .await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "verify_mismatch",
        &["updated is missing or not a valid timestamp after the write"],
    );
    assert!(!r.cli.stdout.contains('\u{1b}'));
}

#[tokio::test]
async fn updated_of_the_wrong_json_type_after_the_patch_fails_verification() {
    let t = tenant().await;
    let r =
        run_rewriting_verify_get(&t, "s3", S3, vec![("updated", Some(json!(1_764_547_200)))]).await;
    // A number where a string belongs: the GET body does not decode.
    assert_eq!(r.cli.code, 1);
    assert!(
        r.cli.stdout.starts_with("s3: verify_failed at verify ["),
        "{}",
        r.cli.stdout
    );
    assert!(!r.cli.stdout.contains("rotated"));
    assert!(!t.state().contains("\"s3\""));
    assert_no_canary(&r);
}

#[tokio::test]
async fn updated_backwards_after_the_patch_fails_verification() {
    let t = tenant().await;
    let r = run_rewriting_verify_get(
        &t,
        "s3",
        S3,
        vec![("updated", Some(json!("2001-01-01T00:00:00.000Z")))],
    )
    .await;
    assert_verify_failed(&t, &r, "s3", "verify_mismatch", &["updated went backwards"]);
}

#[tokio::test]
async fn updated_equal_after_the_patch_fails_verification() {
    let t = tenant().await;
    let before = t.sim.stored(S3).unwrap()["updated"].clone();
    let r = run_rewriting_verify_get(&t, "s3", S3, vec![("updated", Some(before.clone()))]).await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "verify_mismatch",
        &["updated did not advance"],
    );
}

#[tokio::test]
async fn updated_missing_before_the_patch_sends_nothing() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "s3",
        format!("/api/v1/data-connections/{S3}"),
        vec![("updated", None)],
    )
    .await;
    assert_refused(
        &r,
        "s3",
        "failed at resolve [unverifiable]",
        &["shows no valid `updated` timestamp"],
    );
}

#[tokio::test]
async fn updated_garbage_before_the_patch_sends_nothing() {
    let t = tenant().await;
    let r = run_rewriting_get(
        &t,
        "sql",
        "/api/v1/data-connections/Finance".into(),
        vec![("updated", Some(json!("not a time")))],
    )
    .await;
    assert_refused(&r, "sql", "failed at resolve [unverifiable]", &[]);
}

#[tokio::test]
async fn credential_updated_missing_before_the_put_sends_nothing() {
    let t = tenant().await;
    let cred = t.cred.clone();
    let r = run_rewriting_get(
        &t,
        "sep",
        format!("/api/v1/data-credentials/{cred}"),
        vec![("updated", None)],
    )
    .await;
    assert_refused(
        &r,
        "sep",
        "failed at resolve [unverifiable]",
        &["credential"],
    );
}

// === verify warnings ===

#[tokio::test]
async fn a_changed_credentials_id_is_a_counted_warning_not_a_failure() {
    let t = tenant().await;
    // The S3 connection has embedded credentials but (as some tenants show) a qCredentialsID.
    t.sim.link_credential(S3, &t.other_cred);
    let r = run_rewriting_verify_get(
        &t,
        "s3",
        S3,
        vec![(
            "qCredentialsID",
            Some(json!("cccccccc-0000-4000-8000-000000000009")),
        )],
    )
    .await;
    assert_eq!(r.cli.code, 0, "{:?}", r.cli);
    assert!(
        r.cli.stdout.starts_with(
            "s3: rotated and verified, 1 warning: qCredentialsID changed although the connection does not use separate credentials (connection"
        ),
        "{}",
        r.cli.stdout
    );
    assert_eq!(
        metric(
            &r.metrics,
            "qlik_rotator_verify_warnings_total",
            &[("rule", "credentials_id_changed")]
        ),
        Some(1.0),
        "{}",
        r.metrics
    );
    assert_eq!(
        metric(
            &r.metrics,
            "qlik_rotator_verify_warnings_total",
            &[("rule", "property_appeared")]
        ),
        Some(0.0)
    );
    assert!(t.state().contains("\"s3\""));
    assert_no_canary(&r);
}

#[tokio::test]
async fn a_property_appearing_after_the_patch_is_a_counted_warning() {
    let t = tenant().await;
    let r = run_rewriting_verify_get(
        &t,
        "s3",
        S3,
        vec![(
            "connectionProperties",
            Some(json!({"region": "eu-west-1", "bucketName": "sales", "useIAM\u{1b}": false})),
        )],
    )
    .await;
    assert_eq!(r.cli.code, 0, "{:?}", r.cli);
    assert!(
        r.cli
            .stdout
            .starts_with("s3: rotated and verified, 1 warning: property \"useIAM\\u{1b}\" appeared after the PATCH"),
        "{}",
        r.cli.stdout
    );
    assert_eq!(
        metric(
            &r.metrics,
            "qlik_rotator_verify_warnings_total",
            &[("rule", "property_appeared")]
        ),
        Some(1.0)
    );
    assert_no_canary(&r);
}

#[tokio::test]
async fn a_changed_non_credential_property_after_the_patch_stays_a_failure() {
    let t = tenant().await;
    let r = run_rewriting_verify_get(
        &t,
        "s3",
        S3,
        vec![(
            "connectionProperties",
            Some(json!({"region": "eu-west-1", "bucketName": "someone-elses"})),
        )],
    )
    .await;
    assert_verify_failed(
        &t,
        &r,
        "s3",
        "verify_mismatch",
        &["non-credential property \"bucketName\" changed"],
    );
}

// === secret values of the wrong JSON type ===

/// A fresh tenant whose secret for `job` is `secret`: refused at build because its field `key`
/// (for Qlik property `prop`) is a JSON `found`. Returns the tenant for further checks.
async fn wrong_type(job: &str, secret: &str, key: &str, prop: &str, found: &str) -> Tenant {
    let t = tenant().await;
    t.vault_text(job, secret);
    let r = run(&t, job, |_| {}).await;
    assert_refused(
        &r,
        job,
        "failed at build [secret_invalid]",
        &[&format!(
            "the secret's field \"{key}\" (for Qlik property \"{prop}\") is a JSON {found}"
        )],
    );
    t
}

#[tokio::test]
async fn secret_number_password_is_refused_not_coerced() {
    let s = format!(r#"{{"username":"svc_fin","password":{BIG}}}"#);
    let t = wrong_type("sql", &s, "password", "password", "number").await;
    assert_eq!(stored_prop(&t.sim, SQL, "password"), "old");
}

#[tokio::test]
async fn secret_null_password_is_refused() {
    wrong_type(
        "sql",
        r#"{"username":"svc_fin","password":null}"#,
        "password",
        "password",
        "null",
    )
    .await;
}

#[tokio::test]
async fn secret_boolean_password_is_refused() {
    wrong_type(
        "sql",
        r#"{"username":"svc_fin","password":true}"#,
        "password",
        "password",
        "boolean",
    )
    .await;
}

#[tokio::test]
async fn secret_array_password_is_refused() {
    let s = format!(r#"{{"username":"svc_fin","password":["{CANARY}-arr"]}}"#);
    wrong_type("sql", &s, "password", "password", "array").await;
}

#[tokio::test]
async fn secret_object_password_is_refused() {
    let s = format!(r#"{{"username":"svc_fin","password":{{"value":"{CANARY}-obj"}}}}"#);
    wrong_type("sql", &s, "password", "password", "object").await;
}

#[tokio::test]
async fn secret_number_username_is_refused() {
    let s = format!(r#"{{"username":{BIG},"password":"{CANARY}-p"}}"#);
    wrong_type("sql", &s, "username", "username", "number").await;
}

#[tokio::test]
async fn secret_number_access_key_is_refused() {
    let s = format!(r#"{{"accessKey":{BIG},"secretKey":"{CANARY}-s"}}"#);
    wrong_type("s3", &s, "accessKey", "accessKey", "number").await;
}

#[tokio::test]
async fn secret_generic_property_of_the_wrong_type_is_refused() {
    let s = format!(r#"{{"userName":"svc","userPassword":{{"v":"{CANARY}"}}}}"#);
    wrong_type("pg", &s, "userPassword", "userPassword", "object").await;
}

#[tokio::test]
async fn secret_header_token_of_the_wrong_type_is_refused() {
    wrong_type(
        "api",
        &format!(r#"{{"token":{BIG}}}"#),
        "token",
        "queryHeaders",
        "number",
    )
    .await;
}

#[tokio::test]
async fn secret_data_credential_password_of_the_wrong_type_is_refused() {
    let s = format!(r#"{{"username":"svc","password":{BIG}}}"#);
    let t = wrong_type("sep", &s, "password", "password", "number").await;
    assert_eq!(
        t.sim.stored_credential(&t.cred).unwrap()["qPassword"],
        "old"
    );
}

#[tokio::test]
async fn secret_key_file_that_is_not_json_is_refused_not_base64d() {
    let t = tenant().await;
    t.vault(
        "bq",
        &json!({"key_file": format!("{CANARY} not a key file")}),
    );
    let r = run(&t, "bq", |_| {}).await;
    assert_refused(
        &r,
        "bq",
        "failed at build [secret_invalid]",
        &[
            "field \"key_file\" (for Qlik property \"KeyFilePath\") is not a service-account key file: its content must be a JSON object",
        ],
    );
}

#[tokio::test]
async fn secret_key_file_that_is_a_json_array_is_refused() {
    let t = tenant().await;
    t.vault("bq", &json!({"key_file": format!("[\"{CANARY}\"]")}));
    let r = run(&t, "bq", |_| {}).await;
    assert_refused(
        &r,
        "bq",
        "failed at build [secret_invalid]",
        &["is not a service-account key file"],
    );
}

#[tokio::test]
async fn secret_key_file_of_the_wrong_json_type_is_refused() {
    wrong_type(
        "bq",
        r#"{"key_file":12345}"#,
        "key_file",
        "KeyFilePath",
        "number",
    )
    .await;
}

#[tokio::test]
async fn secret_private_key_file_as_an_object_is_refused() {
    let s = format!(r#"{{"username":"svc","private_key":{{"pem":"{CANARY}"}}}}"#);
    wrong_type("snow", &s, "private_key", "PRIV_KEY_FILE", "object").await;
}

#[tokio::test]
async fn secret_key_file_as_a_nested_object_is_rotated() {
    // The control case: a service-account key nested as a JSON object is a key file.
    let t = tenant().await;
    let r = run(&t, "bq", |_| {}).await;
    assert_eq!(r.cli.code, 0, "{:?}", r.cli);
    assert!(
        r.cli
            .stdout
            .starts_with("bq: rotated and verified (connection")
    );
    let stored = t.sim.stored(GBQ).unwrap()["connectionProperties"]["KeyFilePath"][0]["value"]
        .as_str()
        .unwrap()
        .to_owned();
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(stored)
        .unwrap();
    let key: Value = serde_json::from_slice(&decoded).unwrap();
    assert_eq!(key["type"], "service_account");
    assert_eq!(r.writes, 2);
    assert_no_canary(&r);
}

#[test]
fn the_suite_has_at_least_35_cases() {
    let me = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file!())).unwrap();
    let cases = me.matches("#[tokio::test]").count();
    println!("adversarial_verify: {cases} cases");
    assert!(cases >= 35, "{cases}");
}
