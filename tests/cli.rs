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
