//! The CLI as a user meets it: config errors, exit codes, and the canary-secret guarantee.

mod common;

use common::{harness::*, moto::Moto};
use qlik_rotator::sim::{Fault, SimConfig};

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
    // `run` loads its config on a thread of its own; the errors and the code are the same.
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
    let out = run_cli(&["check-config", "-c", path], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("OK (3 job(s), 2 source(s))"));
    // A missing API key variable is a clear usage error naming the key, not a crash.
    let out = run_cli(&["plan", "-c", path], &[]).await;
    assert_eq!(out.code, 64, "{out:?}");
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
