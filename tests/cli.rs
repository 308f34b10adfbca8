//! The CLI as a user meets it: config errors, exit codes, and the canary-secret guarantee.

mod common;

use common::{harness::*, moto::Moto};
use qlik_sim::{Fault, SimConfig};

#[tokio::test]
async fn a_bad_config_lists_every_error_with_its_key_and_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        r#"
[qlik]
tenant_url = "http://acme.eu.qlikcloud.com"
api_key = "do-not-inline"
[sources.aws]
type = "aws_secrets_manager"
[[jobs]]
name = "a"
connection = { id = "c1c1c1c1-0000-4000-8000-0000000000c1" }
connector = "foo"
source = "aws"
secret = "s"
[[jobs]]
name = "b"
connection = { name = "x" }
connector = "mssql"
source = "nowhere"
"#,
    );
    let out = run_cli(&["check-config", "-c", path.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
    for line in [
        "qlik.tenant_url: must use https (http is allowed only for a loopback host)",
        "qlik.api_key: the Qlik API key is never accepted inline in the file",
        "jobs[0].connector: unknown connector (see",
        "jobs[1].source: names no [sources.<name>] table (defined: aws)",
        "jobs[1].secret: is required",
    ] {
        assert!(
            out.stderr.contains(line),
            "missing {line:?} in\n{}",
            out.stderr
        );
    }
    assert!(!out.stderr.contains("do-not-inline"));
    assert!(out.stdout.is_empty());

    // The same exit code for rotate and plan, and nothing is contacted.
    let out = run_cli(&["rotate", "-c", path.to_str().unwrap(), "--all"], &[]).await;
    assert_eq!(out.code, 64);
    // `run` refuses it with the same errors and code.
    let out = run_cli(&["run", "-c", path.to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr
            .contains("jobs[0].connector: unknown connector (see")
    );
    assert!(!out.stderr.contains("Serving /metrics"));
    // Bad usage is 64 too; --help is 0 and teaches.
    assert_eq!(run_cli(&["rotate"], &[]).await.code, 64);
    let help = run_cli(&["--help"], &[]).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("qlik-rotator demo") && help.stdout.contains("Exit codes"));
    // A missing file names the file.
    let out = run_cli(&["check-config", "-c", "/nonexistent/q.toml"], &[]).await;
    assert_eq!(out.code, 64);
    assert!(
        out.stderr
            .contains("/nonexistent/q.toml: cannot read the configuration file")
    );
}

#[tokio::test]
async fn the_example_config_checks_ok() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/example.toml");
    let key = env(&[("QLIK_API_KEY", "CANARY-example-key-77e1")]);
    let out = run_cli(&["check-config", "-c", path], &key).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("OK (3 job(s), 2 source(s))"));
    assert!(!out.stdout.contains("CANARY") && !out.stderr.contains("CANARY"));
    // Before: check-config said OK while QLIK_API_KEY was unset. After: exit 64, naming the
    // key, the variable (a conventional name) and what to do; nothing on stdout.
    let out = run_cli(&["check-config", "-c", path], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains(
            "  qlik.api_key_env: the environment variable QLIK_API_KEY is not set: export QLIK_API_KEY, or set qlik.api_key_file instead"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{out:?}");
    // At run time a missing API key is "credentials missing": exit 78, naming the key.
    let out = run_cli(&["plan", "-c", path], &[]).await;
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stderr
            .contains("qlik.api_key_env: the environment variable it names is not set"),
        "{}",
        out.stderr
    );
}

const CANARY_A: &str = "CANARY-AKIA-7c1d9e";
const CANARY_S: &str = "CANARY-secret-52b8f0";
const CANARY_P: &str = "CANARY-password-0a4e6d";
const CANARY_API_KEY: &str = "CANARY-api-key-91f3";

/// No secret value reaches stdout, logs (trace level, JSON and pretty), errors or plan output,
/// on success and on every failure path.
#[tokio::test]
async fn canary_secrets_never_leave_the_process_unmasked() {
    let moto = Moto::start();
    moto.create_secret(
        "qlik/sales-s3",
        &format!(r#"{{"accessKey":"{CANARY_A}","secretKey":"{CANARY_S}"}}"#),
    )
    .await;
    moto.create_secret(
        "qlik/finance-sql",
        &format!(r#"{{"username":"svc","password":"{CANARY_P}"}}"#),
    )
    .await;
    // Not JSON: the parse error must not quote it.
    moto.create_secret("qlik/bigquery", &format!("{CANARY_P} is not json"))
        .await;
    let sim = tenant(SimConfig {
        api_keys: vec![CANARY_API_KEY.into()],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[sources.aws]\ntype = \"aws_secrets_manager\"\n[daemon]\nstate_dir = \"state\"\n{}",
        qlik_section(&sim),
        three_jobs("aws")
    );
    let path = write_config(dir.path(), &text);
    let config = path.to_str().unwrap();
    let mut env = aws_env(&moto);
    env.push(("QLIK_API_KEY".into(), CANARY_API_KEY.into()));
    env.push(("RUST_LOG".into(), "trace".into()));

    let mut outputs = Vec::new();
    // Success (S3, SQL), a bad secret (BigQuery), plan, and failures at apply and verify.
    outputs.push(
        run_cli(
            &["--log-format", "json", "rotate", "-c", config, "--all"],
            &env,
        )
        .await,
    );
    outputs.push(run_cli(&["plan", "-c", config], &env).await);
    sim.inject(Fault::Status {
        method: Some("PATCH".into()),
        path_prefix: None,
        status: 400,
        times: 5,
    });
    outputs.push(run_cli(&["rotate", "-c", config, "--job", "sales-s3"], &env).await);
    sim.inject(Fault::Status {
        method: Some("GET".into()),
        path_prefix: None,
        status: 500,
        times: 1,
    });
    outputs.push(run_cli(&["rotate", "-c", config, "--job", "finance-sql"], &env).await);

    assert_eq!(outputs[0].code, 1, "{:?}", outputs[0]);
    assert!(outputs[0].stdout.contains("sales-s3: rotated and verified"));
    assert!(
        outputs[0]
            .stdout
            .contains("warehouse-bq: failed at build [secret_not_json]")
    );
    // The secrets did reach Qlik (so the test is not vacuous) ...
    assert_eq!(stored_prop(&sim, S3_ID, "secretKey"), CANARY_S);
    assert!(
        outputs[0].stderr.len() > 1000,
        "trace logging produced output"
    );
    // ... and nowhere else.
    for out in &outputs {
        for canary in [CANARY_A, CANARY_S, CANARY_P, CANARY_API_KEY, "CANARY"] {
            assert!(
                !out.stdout.contains(canary) && !out.stderr.contains(canary),
                "{canary} leaked in {out:?}"
            );
        }
    }
}

/// Every path segment is percent-encoded whole: `..` never reaches the collection URL, and a
/// name with `/`, `?`, `#`, `%` reaches the right connection.
#[tokio::test]
async fn the_client_percent_encodes_every_path_segment() {
    use qlik_rotator::qlik::{ClientSettings, Credentials, QlikClient, RetryPolicy};
    use qlik_sim::SeedConnection;
    let sim = tenant(SimConfig::default()).await;
    let odd = "a/b?c=1#d %2e%2E ..";
    let mut seed = SeedConnection::new(
        odd,
        "mssql",
        serde_json::json!({"host": "h", "username": "u", "password": "p"}),
    );
    seed.space = Some("odd/space?x".into());
    let odd_id = sim.add_connection(seed);
    let client = QlikClient::new(ClientSettings {
        tenant_url: sim.base_url().parse().unwrap(),
        credentials: Credentials::ApiKey(API_KEY.to_owned().into()),
        request_timeout: std::time::Duration::from_secs(5),
        retry: RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        },
        write_budget_per_min: 0,
        read_budget_per_min: 0,
        max_response_bytes: 4 * 1024 * 1024,
    })
    .unwrap();

    let found = client
        .find_connection(odd, Some("odd/space?x"))
        .await
        .expect("the odd name resolves");
    assert_eq!(found.id, odd_id);
    for dots in ["..", ".", "%2e%2e", ""] {
        assert!(client.get_connection(dots).await.is_err(), "{dots:?}");
        assert!(
            !matches!(client.get_api_specs(dots).await, Ok(Some(_))),
            "{dots:?}"
        );
    }
    let paths: Vec<String> = sim.requests().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths[0], "/api/v1/data-connections/a%2Fb%3Fc%3D1%23d%20%252e%252E%20..",
        "{paths:?}"
    );
    for collection in [
        "/api/v1/data-connections",
        "/api/v1/data-connections/",
        "/api/v1/api-specs",
        "/api/v1/data-sources/api-specs",
        "/api/v1",
    ] {
        assert!(
            !paths.iter().any(|p| p == collection),
            "{collection} reached: {paths:?}"
        );
    }
    assert!(
        paths.contains(&"/api/v1/data-connections/%252E%252E".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/v1/data-connections/%252E".to_owned()),
        "{paths:?}"
    );
    assert!(
        paths.contains(&"/api/v1/data-connections/%252e%252e".to_owned()),
        "{paths:?}"
    );
    assert!(with_method(&sim, "PATCH").is_empty());
}

/// A non-loopback listener with the admin API enabled is valid, but check-config and the
/// daemon both warn about it, naming the key.
#[tokio::test]
async fn a_public_admin_listener_is_warned_about_in_check_config_and_at_start() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("admin-token"), "CANARY-admin-token-5d1c").unwrap();
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    let text = format!(
        "{}[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n\
         [metrics]\nlisten = \"0.0.0.0:0\"\nadmin_token_file = \"admin-token\"\n\
         [[jobs]]\nname = \"a\"\nconnection = {{ id = \"{S3_ID}\" }}\n\
         connector = \"File_AmazonS3ConnectorV2\"\nsource = \"v\"\nsecret = \"s\"\n",
        qlik_section(&sim)
    );
    let path = write_config(dir.path(), &text);
    let config = path.to_str().unwrap();
    let key = env(&[("QLIK_API_KEY", API_KEY)]);
    let out = run_cli(&["check-config", "-c", config], &key).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stderr
            .contains("warning: metrics.listen: the admin API (POST /jobs/{name}/rotate"),
        "{out:?}"
    );
    // The same file with a loopback listener: no warning.
    let quiet = write_config(dir.path(), &text.replace("0.0.0.0:0", "127.0.0.1:0"));
    let out = run_cli(&["check-config", "-c", quiet.to_str().unwrap()], &key).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stderr.contains("warning"), "{out:?}");

    let path = write_config(dir.path(), &text);
    let err_path = dir.path().join("run.stderr");
    let mut child = command(
        &["run", "-c", path.to_str().unwrap()],
        &env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let warned = wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&err_path)
            .is_ok_and(|s| s.contains("Risky configuration") && s.contains("Serving"))
    })
    .await;
    sigterm(&child);
    let _ = child.wait();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(warned, "{stderr}");
    assert!(stderr.contains("metrics.listen"), "{stderr}");
    assert!(!stderr.contains("CANARY"), "{stderr}");
}

// ===== issue 15: output for scripts, errors that say what to do, exit codes ===================

/// A secret value that must never be printed.
const CANARY: &str = "CANARY-ops-9c4f2e";

struct Ops {
    sim: qlik_sim::Simulator,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Ops {
    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
    fn env(&self) -> Vec<(String, String)> {
        env(&[("QLIK_API_KEY", API_KEY)])
    }
}

/// The simulator, a file vault whose values are canaries (the S3 secret lacks `secretKey`
/// when `complete` is false), and the three usual jobs; `extra` is appended to the config.
async fn ops_world(complete: bool, extra: &str) -> Ops {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let vault = dir.path().join("vault").join("qlik");
    std::fs::create_dir_all(&vault).unwrap();
    let s3 = if complete {
        format!(r#"{{"accessKey":"AKIA-{CANARY}","secretKey":"s3-{CANARY}"}}"#)
    } else {
        format!(r#"{{"accessKey":"AKIA-{CANARY}","secret_key":"s3-{CANARY}"}}"#)
    };
    std::fs::write(vault.join("sales-s3.json"), s3).unwrap();
    std::fs::write(
        vault.join("finance-sql.json"),
        format!(r#"{{"username":"svc","password":"pw-{CANARY}"}}"#),
    )
    .unwrap();
    std::fs::write(
        vault.join("bigquery.json"),
        format!(
            r#"{{"key_file":{{"type":"service_account","project_id":"wh","private_key":"{CANARY}","client_email":"r@wh.iam.gserviceaccount.com"}}}}"#
        ),
    )
    .unwrap();
    let text = format!(
        "{}[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{extra}\n{}",
        qlik_section(&sim),
        three_jobs("v")
    );
    let config = write_config(dir.path(), &text);
    Ops { sim, dir, config }
}

fn assert_no_canary(out: &CliOutput) {
    assert!(
        !out.stdout.contains(CANARY) && !out.stderr.contains(CANARY),
        "canary leaked: {out:?}"
    );
}

/// stdout is exactly one JSON document of `schema`; returns it.
fn one_document(out: &CliOutput, schema: &str) -> serde_json::Value {
    assert_eq!(
        out.stdout.lines().count(),
        1,
        "one line on stdout: {}",
        out.stdout
    );
    let doc: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert!(out.stdout.starts_with("{\"schema\":"), "{}", out.stdout);
    assert_eq!(doc["schema"], schema, "{doc}");
    doc
}

#[tokio::test]
async fn plan_output_json_is_one_document_with_masked_patches() {
    let w = ops_world(true, "").await;
    let out = run_cli(&["plan", "-c", w.config(), "--output", "json"], &w.env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.plan/v1");
    assert_eq!(doc["ok"], true);
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3);
    let s3 = conns.iter().find(|c| c["job"] == "sales-s3").unwrap();
    assert_eq!(s3["outcome"], "planned");
    assert_eq!(s3["connection_id"], S3_ID);
    assert!(
        s3["patch"].as_array().is_some_and(|ops| !ops.is_empty()),
        "{s3}"
    );
    assert!(s3["patch"].to_string().contains("********"), "{s3}");
    assert_no_canary(&out);
    assert!(with_method(&w.sim, "PATCH").is_empty());
}

#[tokio::test]
async fn rotate_output_json_is_one_document_and_logs_stay_on_stderr() {
    let w = ops_world(true, "").await;
    let out = run_cli(
        &["rotate", "-c", w.config(), "--all", "--output", "json"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.rotate/v1");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["exit_code"], 0);
    assert_eq!(doc["total"], 3);
    assert_eq!(doc["outcomes"]["rotated"], 3, "{doc}");
    for c in doc["connections"].as_array().unwrap() {
        assert_eq!(c["outcome"], "rotated", "{c}");
        assert!(c["secret_version"].is_string(), "{c}");
    }
    assert!(
        out.stderr.contains("summary: 3 rotation(s)"),
        "{}",
        out.stderr
    );
    assert_no_canary(&out);
    assert_eq!(with_method(&w.sim, "PATCH").len(), 3);
}

#[tokio::test]
async fn check_config_output_json_reports_jobs_and_missing_references() {
    let w = ops_world(true, "").await;
    let out = run_cli(
        &["check-config", "-c", w.config(), "--output", "json"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.check-config/v1");
    assert_eq!(doc["ok"], true);
    assert_eq!(doc["jobs"].as_array().unwrap().len(), 3);
    assert_eq!(doc["jobs"][0]["name"], "sales-s3");
    // QLIK_API_KEY unset: ok false, the key named, exit 64; still one document on stdout.
    let out = run_cli(&["check-config", "-c", w.config(), "--output", "json"], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.check-config/v1");
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["errors"][0]["key"], "qlik.api_key_env");
    // An invalid file: the errors with their keys.
    let bad = write_config(w.dir.path(), "[qlik]\ntenant_url = 1\n");
    let out = run_cli(
        &[
            "check-config",
            "-c",
            bad.to_str().unwrap(),
            "--output",
            "json",
        ],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 64, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.check-config/v1");
    assert_eq!(doc["ok"], false);
    assert!(
        doc["errors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["key"] == "qlik.tenant_url"),
        "{doc}"
    );
    assert!(w.sim.requests().is_empty());
}

#[tokio::test]
async fn check_config_online_reads_each_secret_and_names_its_keys() {
    let w = ops_world(false, "").await;
    // Before: --online passed a job whose secret lacked its keys. After: it fails (exit 1),
    // listing the key names the secret has (never values) and pointing to [jobs.fields].
    let out = run_cli(&["check-config", "--online", "-c", w.config()], &w.env()).await;
    assert_eq!(out.code, 1, "{out:?}");
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("  sales-s3: FAILED"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.contains(
            "FAILED: the secret does not fit the job: the secret has no field \"secretKey\""
        ) && line.contains("its keys are \"accessKey\", \"secret_key\"")
            && line.contains("[jobs.fields] secretKey = \"<key>\""),
        "{line}"
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("  finance-sql: OK (")),
        "{}",
        out.stdout
    );
    let out_json = run_cli(
        &[
            "check-config",
            "--online",
            "-c",
            w.config(),
            "--output",
            "json",
        ],
        &w.env(),
    )
    .await;
    assert_eq!(out_json.code, 1);
    let doc = one_document(&out_json, "qlik-rotator.check-config/v1");
    let pre = doc["preflight"].as_array().unwrap();
    assert_eq!(pre.len(), 3);
    let s3 = pre.iter().find(|c| c["job"] == "sales-s3").unwrap();
    assert_eq!(
        (s3["ok"].clone(), s3["error_type"].clone()),
        (false.into(), "missing_field".into())
    );
    assert_no_canary(&out);
    assert_no_canary(&out_json);
    assert!(with_method(&w.sim, "PATCH").is_empty());
}

#[tokio::test]
async fn describe_connector_output_json_lists_properties_and_scheme_checks() {
    let w = ops_world(true, "").await;
    w.sim.add_data_source_spec(
        "postgres",
        qlik_sim::api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            serde_json::json!({
                "host": {"type": "string"},
                "port": {"type": "integer", "default": 5432},
                "database": {"type": "string"},
                "sslmode": {"type": "string", "enum": ["disable", "require"], "default": "require"},
                "userName": {"type": "string", "description": "User name"},
                "userPassword": {"type": "string", "description": "Password\u{1b}[2J"},
                "sslRootCert": {"type": "array"}
            }),
        ),
    );
    let out = run_cli(
        &[
            "describe-connector",
            "postgres",
            "-c",
            w.config(),
            "--output",
            "json",
        ],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc = one_document(&out, "qlik-rotator.describe-connector/v1");
    assert_eq!(doc["datasourceID"], "postgres");
    let props = doc["properties"].as_array().unwrap();
    assert_eq!(props.len(), 7, "{doc}");
    assert!(
        props
            .iter()
            .any(|p| p["name"] == "userPassword" && p["credential"] == true),
        "{doc}"
    );
    assert!(
        props
            .iter()
            .any(|p| p["name"] == "host" && p["credential"] == false),
        "{doc}"
    );
    // postgres is not in the catalogue (a generic job).
    assert!(doc["catalogue"].is_null(), "{doc}");
    // Text from the tenant is escaped even inside JSON (no raw escape character).
    assert!(
        !out.stdout.contains("\\u001b") && !out.stdout.contains('\u{1b}'),
        "{}",
        out.stdout
    );
    // An unknown id: did you mean, and where the ids are.
    let out = run_cli(
        &["describe-connector", "msssql", "-c", w.config()],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("did you mean \"mssql\"?")
            && out.stderr.contains("`qlik-rotator connectors`"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn completions_and_man_page_are_generated() {
    for (shell, marker) in [
        ("bash", "COMPREPLY"),
        ("zsh", "#compdef qlik-rotator"),
        ("fish", "complete -c qlik-rotator"),
    ] {
        let out = run_cli(&["completions", shell], &[]).await;
        assert_eq!(out.code, 0, "{shell}: {out:?}");
        assert!(
            out.stdout.contains(marker),
            "{shell}: {}",
            &out.stdout[..200.min(out.stdout.len())]
        );
        assert!(out.stdout.contains("check-config"), "{shell}");
    }
    let out = run_cli(&["completions", "tcsh"], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
    let out = run_cli(&["man"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.starts_with(".ie") || out.stdout.contains(".TH qlik-rotator"),
        "{}",
        &out.stdout[..200]
    );
    assert!(
        out.stdout.contains("Exit codes"),
        "the man page documents the exit codes"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = run_cli(&["man", "--dir", dir.path().to_str().unwrap()], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(dir.path().join("qlik-rotator.1").is_file());
    assert!(dir.path().join("qlik-rotator-rotate.1").is_file());
}

#[tokio::test]
async fn fatal_errors_are_json_lines_under_log_format_json() {
    let w = ops_world(true, "").await;
    // A usage error (unknown flag) and a configuration error: one JSON object per line.
    for (args, code, says) in [
        (
            vec!["--log-format", "json", "rotate", "--bogus"],
            64,
            "--bogus",
        ),
        (
            vec![
                "--log-format",
                "json",
                "rotate",
                "-c",
                w.config(),
                "--job",
                "sales-s4",
            ],
            64,
            "did you mean \"sales-s3\"?",
        ),
    ] {
        let out = run_cli(&args, &w.env()).await;
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let fatal: Vec<serde_json::Value> = out
            .stderr
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .filter(|v: &serde_json::Value| v["fatal"] == true)
            .collect();
        assert_eq!(fatal.len(), 1, "{}", out.stderr);
        assert_eq!(fatal[0]["level"], "ERROR");
        assert!(
            fatal[0]["message"].as_str().unwrap().contains(says),
            "{}",
            fatal[0]
        );
    }
    // Pretty: the same error as `error: …`, no escape codes when stderr is not a terminal.
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s4"], &w.env()).await;
    assert_eq!(out.code, 64);
    assert!(
        out.stderr
            .starts_with("error: --job: no job named \"sales-s4\"; did you mean \"sales-s3\"?"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains('\u{1b}'));
    assert!(w.sim.requests().is_empty());
}

#[tokio::test]
async fn unknown_names_get_did_you_mean() {
    let w = ops_world(true, "").await;
    let text = std::fs::read_to_string(&w.config).unwrap();
    // (what, mutated config, the hint)
    let cases = [
        (
            "connector",
            text.replacen("connector = \"mssql\"", "connector = \"msql\"", 1),
            "jobs[1].connector: unknown connector; did you mean \"mssql\"?",
        ),
        (
            "source",
            text.replacen("source = \"v\"", "source = \"vv\"", 1),
            "jobs[0].source: names no [sources.<name>] table; did you mean \"v\"?",
        ),
        (
            "config key",
            text.replacen("[daemon]\n", "[daemon]\nstate_dri = \"x\"\n", 1),
            "daemon.state_dri: unknown key; did you mean \"state_dir\"?",
        ),
    ];
    println!("{} did-you-mean cases", cases.len());
    for (what, mutated, hint) in cases {
        assert_ne!(mutated, text, "{what}: the mutation applied");
        let path = write_config(w.dir.path(), &mutated);
        let out = run_cli(&["check-config", "-c", path.to_str().unwrap()], &w.env()).await;
        assert_eq!(out.code, 64, "{what}: {out:?}");
        assert!(
            out.stderr.contains(hint),
            "{what}: {hint:?} not in\n{}",
            out.stderr
        );
        assert_no_canary(&out);
    }
    assert!(w.sim.requests().is_empty());
}

#[tokio::test]
async fn a_port_in_use_exits_69_and_says_what_to_do() {
    let w = ops_world(true, "").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        "[daemon]\n",
        &format!("[metrics]\nlisten = \"{addr}\"\n[daemon]\n"),
    );
    std::fs::write(&w.config, text).unwrap();
    // Before: exit 1, like a failed job. After: 69 (EX_UNAVAILABLE) and the key to change.
    let out = run_cli(&["run", "-c", w.config()], &w.env()).await;
    assert_eq!(out.code, 69, "{out:?}");
    assert!(
        out.stderr.contains(&format!("cannot listen on {addr}"))
            && out.stderr.contains("set metrics.listen to a free port"),
        "{}",
        out.stderr
    );
    assert_no_canary(&out);
    assert!(with_method(&w.sim, "PATCH").is_empty());
    drop(taken);
}

#[tokio::test]
async fn missing_credentials_at_run_time_exit_78() {
    let w = ops_world(true, "").await;
    // QLIK_API_KEY unset: check-config says 64 (configuration), rotate and run 78.
    for args in [
        vec!["rotate", "-c", w.config(), "--all"],
        vec!["run", "-c", w.config()],
    ] {
        let out = run_cli(&args, &[]).await;
        assert_eq!(out.code, 78, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains("error: qlik.api_key_env: "),
            "{args:?}: {}",
            out.stderr
        );
    }
    assert!(w.sim.requests().is_empty());
}

/// An AWS source with no credentials anywhere in the chain (no variables, no profile, no
/// web identity, instance metadata disabled): one line naming what was tried, exit 78; no
/// region: a configuration error, exit 64, not retried.
#[tokio::test]
async fn aws_without_credentials_or_region_says_what_to_set() {
    let w = ops_world(true, "").await;
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        "[sources.v]\ntype = \"file\"\npath = \"vault\"",
        "[sources.v]\ntype = \"aws_secrets_manager\"",
    );
    std::fs::write(&w.config, text).unwrap();
    let home = tempfile::tempdir().unwrap();
    let base = [
        ("QLIK_API_KEY", API_KEY),
        ("HOME", home.path().to_str().unwrap()),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        // Nothing listens here: a credential found by mistake would fail differently.
        ("AWS_ENDPOINT_URL_SECRETS_MANAGER", "http://127.0.0.1:9"),
    ];
    let mut no_creds = env(&base);
    no_creds.extend(env(&[("AWS_REGION", "eu-west-1")]));
    let out = run_cli(
        &["rotate", "-c", w.config(), "--job", "sales-s3"],
        &no_creds,
    )
    .await;
    // Before: `secret_source_unavailable … failed to load IMDS session token` plus a
    // multi-line dump, retried. After: one line, what was tried and how to set each.
    assert_eq!(out.code, 78, "{out:?}");
    let line = out.stdout.trim();
    assert_eq!(out.stdout.lines().count(), 1, "{}", out.stdout);
    assert!(
        line.starts_with("sales-s3: failed at fetch [secret_no_credentials]: ")
            && line.contains("AWS_ACCESS_KEY_ID")
            && line.contains("AWS_PROFILE")
            && line.contains("AWS_WEB_IDENTITY_TOKEN_FILE")
            && line.contains("instance role"),
        "{line}"
    );
    let mut no_region = env(&base);
    no_region.extend(env(&[
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
    ]));
    let out = run_cli(
        &["rotate", "-c", w.config(), "--job", "sales-s3"],
        &no_region,
    )
    .await;
    // Before: "missing signing region", retriable, exit 1. After: exit 64, naming the keys.
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stdout
            .starts_with("sales-s3: failed at fetch [secret_source_config]: ")
            && out.stdout.contains("[sources.NAME] table, or AWS_REGION")
            && out.stdout.contains("not retried"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("Retrying"), "{}", out.stderr);
    assert!(w.sim.requests().is_empty());
}

/// The daemon with a refused API key: the first pre-flight's 401 names the key's variable and
/// asks "expired or revoked?"; the other connections are not tried (one request in all), and
/// the daemon keeps running (pre-flight is retried on each schedule tick).
#[tokio::test]
async fn the_daemon_stops_preflight_at_the_first_401_and_keeps_running() {
    let w = ops_world(true, "").await;
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        "[daemon]\n",
        "[metrics]\nlisten = \"127.0.0.1:0\"\n[daemon]\n",
    );
    std::fs::write(&w.config, text).unwrap();
    let err_path = w.dir.path().join("run.stderr");
    let mut child = command(
        &["run", "-c", w.config()],
        &env(&[("QLIK_API_KEY", "CANARY-ops-9c4f2e-revoked")]),
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&err_path).unwrap())
    .spawn()
    .unwrap();
    let stopped = wait_until(std::time::Duration::from_secs(20), || {
        std::fs::read_to_string(&err_path).is_ok_and(|s| {
            s.contains("Pre-flight of the tenant's other connections not tried")
                && s.contains("Serving")
        })
    })
    .await;
    let still_running = child.try_wait().unwrap().is_none();
    sigterm(&child);
    let status = child.wait().unwrap();
    let stderr = std::fs::read_to_string(&err_path).unwrap();
    assert!(stopped, "{stderr}");
    assert!(still_running, "the daemon exited: {stderr}");
    assert_eq!(status.code(), Some(0), "{stderr}");
    // Before: one `HTTP 401` error per job and no hint. After: one, naming the variable.
    assert!(
        stderr.contains(
            "(Qlik refused the API key in $QLIK_API_KEY (qlik.api_key_env): expired or revoked?)"
        ),
        "{stderr}"
    );
    assert_eq!(stderr.matches("returned HTTP 401").count(), 1, "{stderr}");
    assert_eq!(w.sim.requests().len(), 1, "{:?}", w.sim.requests());
    assert!(with_method(&w.sim, "PATCH").is_empty());
    assert!(!stderr.contains("CANARY"), "{stderr}");
}
