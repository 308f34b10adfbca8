//! End to end: the real binary, pointed at a real moto (Secrets Manager) and the Qlik
//! simulator, rotates S3, SQL Server and BigQuery connections and verifies each.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::{harness::*, moto::Moto};
use qlik_sim::{Fault, SimConfig};
use serde_json::{Value, json};

const SA_KEY: &str = r#"{"type":"service_account","project_id":"wh","private_key":"-----BEGIN PRIVATE KEY-----\nMIIBVwIBADANBg\n-----END PRIVATE KEY-----\n","client_email":"reader@wh.iam.gserviceaccount.com"}"#;

struct World {
    moto: Moto,
    sim: qlik_sim::Simulator,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl World {
    fn env(&self) -> Vec<(String, String)> {
        let mut e = aws_env(&self.moto);
        e.push(("QLIK_API_KEY".into(), API_KEY.into()));
        e
    }
    fn config(&self) -> &str {
        self.config.to_str().unwrap()
    }
}

/// moto with the three secrets, a seeded tenant, and a config with the three jobs.
async fn world(sim_cfg: SimConfig, s3_secret: &str) -> World {
    let moto = Moto::start();
    moto.create_secret("qlik/sales-s3", s3_secret).await;
    moto.create_secret(
        "qlik/finance-sql",
        r#"{"username":"svc_fin_2026","password":"N3w-P@ss-2026"}"#,
    )
    .await;
    moto.create_binary_secret("qlik/bigquery", SA_KEY.as_bytes())
        .await;
    let sim = tenant(sim_cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[sources.aws]\ntype = \"aws_secrets_manager\"\n[daemon]\nstate_dir = \"state\"\n{}",
        qlik_section(&sim),
        three_jobs("aws")
    );
    let config = write_config(dir.path(), &text);
    World {
        moto,
        sim,
        dir,
        config,
    }
}

const S3_SECRET: &str = r#"{"accessKey":"AKIANEW2026","secretKey":"s3-new-secret/2026"}"#;

#[tokio::test]
async fn rotates_s3_sqlserver_and_bigquery_from_secrets_manager() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    let out = run_cli(&["rotate", "-c", w.config(), "--all"], &w.env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    for job in ["sales-s3", "finance-sql", "warehouse-bq"] {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{job}: rotated and verified"))),
            "{job} not rotated: {}",
            out.stdout
        );
    }

    // The tenant holds exactly the new credentials.
    assert_eq!(stored_prop(&w.sim, S3_ID, "accessKey"), "AKIANEW2026");
    assert_eq!(
        stored_prop(&w.sim, S3_ID, "secretKey"),
        "s3-new-secret/2026"
    );
    assert_eq!(stored_prop(&w.sim, SQL_ID, "username"), "svc_fin_2026");
    assert_eq!(stored_prop(&w.sim, SQL_ID, "password"), "N3w-P@ss-2026");
    let key = stored_prop(&w.sim, GBQ_ID, "KeyFilePath");
    let b64 = base64::engine::general_purpose::STANDARD.encode(SA_KEY);
    assert_eq!(key, json!([{"name": "service-account.json", "value": b64}]));
    // Non-credential properties are untouched.
    assert_eq!(stored_prop(&w.sim, SQL_ID, "host"), "sql.internal");
    assert_eq!(stored_prop(&w.sim, S3_ID, "bucketName"), "sales");

    // The exact PATCH bodies: bare RFC 6902 arrays, credential paths only, add/replace by
    // whether GET showed the property.
    let patches = with_method(&w.sim, "PATCH");
    assert_eq!(patches.len(), 3);
    let body = |id: &str| -> Value {
        let r = patches
            .iter()
            .find(|r| r.path.ends_with(id))
            .expect("patch");
        assert_eq!(r.status, 204);
        assert_eq!(r.content_type.as_deref(), Some("application/json"));
        serde_json::from_str(&r.body).unwrap()
    };
    assert_eq!(
        body(S3_ID),
        json!([
            {"op":"add","path":"/connectionProperties/accessKey","value":"AKIANEW2026"},
            {"op":"add","path":"/connectionProperties/secretKey","value":"s3-new-secret/2026"}
        ])
    );
    assert_eq!(
        body(SQL_ID),
        json!([
            {"op":"replace","path":"/connectionProperties/username","value":"svc_fin_2026"},
            {"op":"add","path":"/connectionProperties/password","value":"N3w-P@ss-2026"}
        ])
    );
    assert_eq!(
        body(GBQ_ID),
        json!([
            {"op":"replace","path":"/connectionProperties/KeyFilePath/0/name","value":"service-account.json"},
            {"op":"add","path":"/connectionProperties/KeyFilePath/0/value","value":b64},
            // The service-account JSON's client_email feeds the optional Email property.
            {"op":"add","path":"/connectionProperties/Email","value":"reader@wh.iam.gserviceaccount.com"}
        ])
    );

    // Lookup by name + space happened once, and the PATCH used the resolved id.
    let by_name: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| {
            r.query
                .as_deref()
                .unwrap_or("")
                .contains("type=connectionname")
        })
        .collect();
    assert_eq!(by_name.len(), 1);
    assert!(
        by_name[0].path.ends_with("/Finance%20SQL"),
        "{}",
        by_name[0].path
    );
    assert!(
        by_name[0]
            .query
            .as_deref()
            .unwrap()
            .contains("spaceId=finance")
    );
    // Each job: GET before, PATCH, verify GET; plus one api-specs read per connector.
    let gets = with_method(&w.sim, "GET");
    assert_eq!(
        gets.iter()
            .filter(|r| r.path.starts_with("/api/v1/data-connections/"))
            .count(),
        6
    );
    assert_eq!(
        gets.iter()
            .filter(|r| r.path.ends_with("/api-specs"))
            .count(),
        3
    );

    // The state file records versions, never values.
    let state = common::statedb::dump(&w.dir.path().join("state"));
    assert!(state.contains("\"sales-s3\""));
    assert!(!state.contains("AKIANEW2026") && !state.contains("N3w-P@ss"));
}

#[tokio::test]
async fn a_secret_missing_a_field_fails_and_sends_no_patch() {
    let w = world(SimConfig::default(), r#"{"accessKey":"AKIAONLY"}"#).await;
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 1, "{out:?}");
    // Before: `…the secret has no field "secretKey" (needed for Qlik property "secretKey")`.
    // After: the key names the secret has (never values) and `[jobs.fields]`.
    assert_eq!(
        out.stdout.trim(),
        "sales-s3: failed at build [missing_field]: the secret has no field \"secretKey\" (needed for Qlik property \"secretKey\"); its keys are \"accessKey\": add \"secretKey\" to the secret, or map a key with [jobs.fields] secretKey = \"<key>\""
    );
    assert!(!out.stdout.contains("AKIAONLY") && !out.stderr.contains("AKIAONLY"));
    assert!(with_method(&w.sim, "PATCH").is_empty());
    assert_eq!(stored_prop(&w.sim, S3_ID, "accessKey"), "AKIAOLD");
}

#[tokio::test]
async fn a_wrong_connector_is_refused_before_any_patch() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("connector = \"mssql\"", "connector = \"DG_mssql\"");
    std::fs::write(&w.config, text).unwrap();
    let out = run_cli(
        &["rotate", "-c", w.config(), "--job", "finance-sql"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("failed at build [wrong_connector]")
            && out
                .stdout
                .contains("is a \"mssql\" connection, but the job says connector \"DG_mssql\""),
        "{}",
        out.stdout
    );
    assert!(with_method(&w.sim, "PATCH").is_empty());
}

#[tokio::test]
async fn rate_limited_patch_is_retried_after_retry_after() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    w.sim.inject(Fault::RateLimited {
        method: Some("PATCH".into()),
        path_prefix: None,
        retry_after_secs: 1,
        times: 1,
    });
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    let patches = with_method(&w.sim, "PATCH");
    assert_eq!(
        patches.iter().map(|p| p.status).collect::<Vec<_>>(),
        [429, 204]
    );
    assert_eq!(patches[0].body, patches[1].body);
    assert!(out.stderr.contains("rate_limited"), "{}", out.stderr);
}

#[tokio::test]
async fn server_errors_and_dropped_connections_are_retried() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    w.sim.inject(Fault::Status {
        method: Some("PATCH".into()),
        path_prefix: None,
        status: 503,
        times: 1,
    });
    w.sim.inject(Fault::Drop {
        method: Some("PATCH".into()),
        path_prefix: None,
        times: 1,
    });
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        with_method(&w.sim, "PATCH")
            .iter()
            .map(|p| p.status)
            .collect::<Vec<_>>(),
        [503, 0, 204]
    );
}

#[tokio::test]
async fn final_errors_are_not_retried() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    w.sim
        .set_privileges(S3_ID, vec!["read".into(), "list".into()]);
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s3"], &w.env()).await;
    assert_eq!(out.code, 1);
    assert!(
        out.stdout
            .contains("failed at resolve [no_update_privilege]"),
        "{}",
        out.stdout
    );
    assert!(with_method(&w.sim, "PATCH").is_empty());

    // A bad API key: 401, no retry storm.
    let mut env = w.env();
    env.retain(|(k, _)| k != "QLIK_API_KEY");
    env.push(("QLIK_API_KEY".into(), "wrong-key".into()));
    w.sim.clear_requests();
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "finance-sql"], &env).await;
    // Before: exit 1 and `HTTP 401: … ` with no hint. After: exit 78 (credentials refused),
    // naming the variable and asking whether the key expired or was revoked.
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stdout.contains("failed at resolve [unauthorized]"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains(
            "(Qlik refused the API key in $QLIK_API_KEY (qlik.api_key_env): expired or revoked?)"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("wrong-key") && !out.stderr.contains("wrong-key"));
    assert_eq!(w.sim.requests().len(), 1);
}

/// The first 401 stops the other jobs of the same identity: one clear error, the rest
/// reported as skipped because of it, one request to Qlik in all.
#[tokio::test]
async fn the_first_401_skips_the_other_jobs_of_the_run() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    // One job at a time, so the order is deterministic: the first fails, the others wait.
    let text = std::fs::read_to_string(&w.config)
        .unwrap()
        .replace("[daemon]\n", "[daemon]\nmax_concurrent_rotations = 1\n");
    std::fs::write(&w.config, text).unwrap();
    let mut env = w.env();
    env.retain(|(k, _)| k != "QLIK_API_KEY");
    env.push(("QLIK_API_KEY".into(), "CANARY-revoked-key-41a7".into()));
    let out = run_cli(
        &["rotate", "-c", w.config(), "--all", "--output", "json"],
        &env,
    )
    .await;
    assert_eq!(out.code, 78, "{out:?}");
    // Before: three `failed … [unauthorized]` lines, three 401s. After: one failure naming
    // the key, two skips, and the tenant saw one request.
    let doc: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).expect("one JSON document");
    assert_eq!(doc["schema"], "qlik-rotator.rotate/v1");
    assert_eq!(doc["ok"], false);
    let conns = doc["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 3, "{doc}");
    let outcomes: Vec<&str> = conns
        .iter()
        .map(|c| c["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(
        outcomes.iter().filter(|o| **o == "failed").count(),
        1,
        "{outcomes:?}"
    );
    assert_eq!(
        outcomes.iter().filter(|o| **o == "skipped").count(),
        2,
        "{outcomes:?}"
    );
    let failed = conns.iter().find(|c| c["outcome"] == "failed").unwrap();
    assert_eq!(failed["error"]["type"], "unauthorized");
    assert!(
        failed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("$QLIK_API_KEY (qlik.api_key_env): expired or revoked?"),
        "{failed}"
    );
    for skipped in conns.iter().filter(|c| c["outcome"] == "skipped") {
        assert_eq!(skipped["error"]["type"], "unauthorized");
        assert!(
            skipped["error"]["message"]
                .as_str()
                .unwrap()
                .contains("Qlik refused the rotator's credentials (HTTP 401) to another job"),
            "{skipped}"
        );
    }
    assert_eq!(w.sim.requests().len(), 1, "{:?}", w.sim.requests());
    assert!(with_method(&w.sim, "PATCH").is_empty());
    assert_eq!(doc["outcomes"]["skipped"], 2);
    assert!(!out.stdout.contains("CANARY") && !out.stderr.contains("CANARY"));
    // The summary on stderr names the skips too.
    assert!(
        out.stderr.contains("skipped [unauthorized]"),
        "{}",
        out.stderr
    );

    // The same run in text: one line per job, the skipped ones say why.
    w.sim.clear_requests();
    let out = run_cli(&["rotate", "-c", w.config(), "--all"], &env).await;
    assert_eq!(out.code, 78, "{out:?}");
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.stdout);
    assert_eq!(
        out.stdout
            .lines()
            .filter(|l| l.contains(": skipped: not tried: Qlik refused the rotator's credentials"))
            .count(),
        2,
        "{}",
        out.stdout
    );
    assert_eq!(w.sim.requests().len(), 1);
}

#[tokio::test]
async fn a_verify_mismatch_is_its_own_outcome() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    // Hold the verify GET (the second GET) and change the connection meanwhile, as another
    // admin or a faulty server would.
    let conn_path = Some("/api/v1/data-connections/".to_owned());
    w.sim.inject(Fault::Delay {
        method: Some("GET".into()),
        path_prefix: conn_path.clone(),
        delay: Duration::ZERO,
        times: 1,
    });
    w.sim.inject(Fault::Delay {
        method: Some("GET".into()),
        path_prefix: conn_path,
        delay: Duration::from_secs(2),
        times: 1,
    });
    let child = command(&["rotate", "-c", w.config(), "--job", "sales-s3"], &w.env())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || with_method(&w.sim, "PATCH")
            .len()
            == 1)
        .await,
        "the rotator never patched"
    );
    let http = reqwest::Client::new();
    let resp = http
        .patch(format!(
            "{}/api/v1/data-connections/{S3_ID}",
            w.sim.base_url()
        ))
        .bearer_auth(API_KEY)
        .json(
            &json!([{"op":"replace","path":"/connectionProperties/bucketName","value":"hijacked"}]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert_eq!(
        stdout.trim(),
        "sales-s3: verify_failed at verify [verify_mismatch]: verification failed: non-credential property \"bucketName\" changed"
    );
}

#[tokio::test]
async fn oauth_costs_one_token_for_many_rotations() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    let text = std::fs::read_to_string(&w.config).unwrap().replace(
        "api_key_env = \"QLIK_API_KEY\"",
        "[qlik.oauth]\nclient_id = \"sim-client\"\nclient_secret_env = \"QLIK_CLIENT_SECRET\"",
    );
    std::fs::write(&w.config, text).unwrap();
    let mut env = aws_env(&w.moto);
    env.push(("QLIK_CLIENT_SECRET".into(), "sim-client-secret".into()));
    let out = run_cli(&["rotate", "-c", w.config(), "--all"], &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(w.sim.token_requests(), 1);
    assert_eq!(with_method(&w.sim, "PATCH").len(), 3);
    // Every API call carried the issued token, not the client secret.
    let api: Vec<_> = w
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/api/"))
        .collect();
    assert!(api.iter().all(|r| {
        r.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer ") && !a.contains("sim-client-secret"))
    }));

    // A wrong client secret: a clear auth failure, no API call.
    w.sim.clear_requests();
    let mut env = aws_env(&w.moto);
    env.push(("QLIK_CLIENT_SECRET".into(), "wrong".into()));
    let out = run_cli(&["rotate", "-c", w.config(), "--job", "sales-s3"], &env).await;
    assert_eq!(out.code, 78, "{out:?}");
    assert!(
        out.stdout
            .contains("[auth]: OAuth token request failed: HTTP 401"),
        "{}",
        out.stdout
    );
    // The hint names the OAuth client (never its secret).
    assert!(
        out.stdout.contains(
            "(check the OAuth client \"sim-client\" (qlik.oauth): wrong, expired or revoked?)"
        ),
        "{}",
        out.stdout
    );
    assert!(w.sim.requests().iter().all(|r| r.path == "/oauth/token"));
}

#[tokio::test]
async fn plan_masks_every_value_and_sends_nothing() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    let out = run_cli(&["plan", "-c", w.config()], &w.env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout
            .contains(&format!("sales-s3: PATCH /api/v1/data-connections/{S3_ID}"))
    );
    assert!(
        out.stdout
            .contains("\"path\": \"/connectionProperties/KeyFilePath/0/value\"")
    );
    assert!(out.stdout.contains("\"value\": \"********\""));
    for secret in [
        "AKIANEW2026",
        "s3-new-secret",
        "svc_fin_2026",
        "N3w-P@ss",
        "PRIVATE KEY",
    ] {
        assert!(
            !out.stdout.contains(secret) && !out.stderr.contains(secret),
            "{secret} leaked"
        );
    }
    assert!(with_method(&w.sim, "PATCH").is_empty());
}

#[tokio::test]
async fn the_demo_rotates_and_verifies_everything() {
    let out = run_cli(&["demo"], &[]).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(
            "Result: 3 of 3 connection(s) rotated and verified; 3 of 3 hold the new credentials."
        ),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("unchanged (secret version"));
    assert!(out.stdout.contains("requests sent to the tenant: 0"));
    // Step 5: a canary-proven rotation, a failing one and a rolled-back one, each said plainly.
    for line in [
        "finance-sqlserver: rotated and verified, proven by canary reload ",
        "→ as designed: rotated, and proven: Qlik reloaded Finance Reporting",
        "sales-s3: canary_failed at canary [canary_reload_failed]: ",
        "the data source 's3://acme-sales' rejected the credentials",
        "→ as designed: canary_failed.",
        "finance-sqlserver: rolled_back to secret version v1 (verified, proven by canary reload ",
        "after version v2 failed at canary [canary_reload_failed]",
        "→ as designed: rolled_back. Version v2 failed its canary; version v1 was put back, verified and proven by a reload; the tenant holds version v1: yes",
        "Canary and rollback: 3 of 3 outcome(s) as designed (rotated and proven, canary_failed, rolled_back).",
    ] {
        assert!(
            out.stdout.contains(line),
            "missing {line:?} in\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("NOT as designed"), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// `rotate --all` through the job runner: concurrency, the shared write budget, one retry
// policy, the summary. A file vault, so the timings are the simulator's alone.
// ---------------------------------------------------------------------------------------------

/// The canary password of every file-vault job: asserted absent from every output.
const CANARY_PW: &str = "CANARY-runner-pw-7f3a";

/// `n` SQL Server jobs `j0..` over a file vault; `qlik_extra` goes into `[qlik]`, `daemon`
/// into `[daemon]`. Returns the simulator, the directory and the config path.
async fn sql_world(
    n: usize,
    sim_cfg: SimConfig,
    qlik_extra: &str,
    daemon: &str,
) -> (qlik_sim::Simulator, tempfile::TempDir, String) {
    let sim = qlik_sim::Simulator::start(sim_cfg).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    let mut jobs = String::new();
    for i in 0..n {
        let id = sim.add_connection(qlik_sim::SeedConnection::new(
            format!("c{i}"),
            "mssql",
            json!({"host": "h", "username": "u"}),
        ));
        std::fs::write(
            dir.path().join("vault").join(format!("s{i}.json")),
            format!(r#"{{"username":"u{i}","password":"{CANARY_PW}-{i}"}}"#),
        )
        .unwrap();
        jobs.push_str(&format!(
            "[[jobs]]\nname = \"j{i}\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"mssql\"\nsource = \"vault\"\nsecret = \"s{i}\"\n"
        ));
    }
    let text = format!(
        "{}{qlik_extra}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{daemon}\n{jobs}",
        qlik_section(&sim)
    );
    let config = write_config(dir.path(), &text);
    (sim, dir, config.to_str().unwrap().to_owned())
}

fn key_env() -> Vec<(String, String)> {
    env(&[("QLIK_API_KEY", API_KEY)])
}

fn assert_no_canary(out: &CliOutput) {
    assert!(
        !out.stdout.contains(CANARY_PW) && !out.stderr.contains(CANARY_PW),
        "the secret leaked: {out:?}"
    );
}

/// Whether every connection was first read before any connection was patched: true when the
/// jobs ran at once, false when they ran one after another.
fn all_read_before_any_patch(sim: &qlik_sim::Simulator) -> bool {
    let reqs = sim.requests();
    let first_patch = reqs
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.at)
        .min()
        .expect("a PATCH");
    let conn_gets: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "GET" && r.path.starts_with("/api/v1/data-connections/"))
        .collect();
    let read: std::collections::HashSet<&str> = conn_gets
        .iter()
        .filter(|r| r.at < first_patch)
        .map(|r| r.path.as_str())
        .collect();
    let all: std::collections::HashSet<&str> = conn_gets.iter().map(|r| r.path.as_str()).collect();
    read == all
}

#[tokio::test]
async fn rotate_all_runs_jobs_concurrently_and_records_every_one() {
    let latency = SimConfig {
        latency: Duration::from_millis(150),
        ..SimConfig::default()
    };
    let (sim, _dir, config) =
        sql_world(8, latency.clone(), "", "max_concurrent_rotations = 8").await;
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_canary(&out);
    // One stdout line per job, as before; nothing else on stdout.
    assert_eq!(out.stdout.lines().count(), 8, "{}", out.stdout);
    for i in 0..8 {
        assert!(
            out.stdout
                .lines()
                .any(|l| l.starts_with(&format!("j{i}: rotated and verified"))),
            "{}",
            out.stdout
        );
    }
    assert!(
        all_read_before_any_patch(&sim),
        "jobs ran one after another"
    );
    assert_eq!(with_method(&sim, "PATCH").len(), 8);
    // Not a terminal: no progress bar; the summary on stderr.
    assert!(!out.stderr.contains('\r') && !out.stderr.contains(" jobs, "));
    assert!(
        out.stderr.contains("summary: 8 rotation(s)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("  rotated             8"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("failed:"), "{}", out.stderr);

    // Every concurrent state write landed: a second run sends nothing.
    sim.clear_requests();
    let out = run_cli(
        &["rotate", "-c", &config, "--all", "--if-changed"],
        &key_env(),
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(
        out.stdout.matches(": unchanged (secret version").count(),
        8,
        "{}",
        out.stdout
    );
    assert!(sim.requests().is_empty(), "{:?}", sim.requests());
    assert!(
        out.stderr.contains("  unchanged           8"),
        "{}",
        out.stderr
    );

    // Control: one rotation slot is the old sequential loop, and the check above sees it.
    let (sim, _dir, config) = sql_world(3, latency, "", "max_concurrent_rotations = 1").await;
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!all_read_before_any_patch(&sim));
}

#[tokio::test]
async fn rotate_all_lists_failed_jobs_in_the_summary_and_exits_1() {
    let (sim, dir, config) = sql_world(4, SimConfig::default(), "", "").await;
    // j1: no update privilege; j2: a secret that is not JSON. Neither may be patched.
    let text = std::fs::read_to_string(&config).unwrap();
    let id_of = |job: &str| -> String {
        let at = text.find(&format!("name = \"{job}\"")).unwrap();
        let rest = &text[at..];
        let start = rest.find("id = \"").unwrap() + 6;
        rest[start..start + 36].to_owned()
    };
    sim.set_privileges(&id_of("j1"), vec!["read".into(), "list".into()]);
    std::fs::write(
        dir.path().join("vault/s2.json"),
        format!("not json {CANARY_PW}\u{1b}[2J\nj2: rotated and verified (forged)"),
    )
    .unwrap();
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_no_canary(&out);
    assert_eq!(out.stdout.lines().count(), 4, "{}", out.stdout);
    assert!(!out.stdout.contains('\u{1b}') && !out.stderr.contains('\u{1b}'));
    assert!(!out.stdout.contains("(forged)") && !out.stderr.contains("(forged)"));
    let summary = &out.stderr[out.stderr.find("summary: 4 rotation(s)").expect("summary")..];
    assert!(summary.contains("  failed              2"), "{summary}");
    assert!(summary.contains("  rotated             2"), "{summary}");
    let failed = &summary[summary.find("failed:\n").expect("failed list")..];
    assert!(
        failed.contains("  j1: failed at resolve [no_update_privilege]"),
        "{failed}"
    );
    assert!(failed.contains("  j2: failed at build ["), "{failed}");
    assert!(!failed.contains("j0") && !failed.contains("j3"), "{failed}");
    assert!(out.stderr.contains("2 of 4 rotation(s) failed"));
    let patched: Vec<String> = with_method(&sim, "PATCH")
        .iter()
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(patched.len(), 2);
    for job in ["j1", "j2"] {
        assert!(!patched.iter().any(|p| p.ends_with(&id_of(job))), "{job}");
    }
}

/// How far each PATCH arrived after the simulator's first request of the run, in order of
/// arrival.
fn patch_offsets(sim: &qlik_sim::Simulator) -> Vec<Duration> {
    let requests = sim.requests();
    let first = requests.iter().map(|r| r.at).min().expect("no request");
    let mut at: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.at - first)
        .collect();
    at.sort();
    at
}

#[tokio::test]
async fn rotate_all_runs_under_one_shared_write_budget() {
    // 300 writes a minute: the shared gate hands out one write slot every 204 ms (60 s × 1.02 /
    // 300), whichever job asks. A lower bound that load cannot break (it only delays
    // requests): a job asks for its first slot after the simulator received its GET, so no
    // earlier than the run's first request, and a PATCH arrives after its slot; so the k-th
    // PATCH to arrive arrives at least k × 200 ms after the first request. (Gaps between
    // consecutive PATCHes carry no such bound: a request delayed by a busy machine shortens
    // the gap after it.) Reads are not paced here, so with the budget ignored (or a gate per
    // job) the six concurrent jobs would write within a few milliseconds: checked once by
    // breaking the gate, see the dedupe branch's report.
    let (sim, _dir, config) = sql_world(
        6,
        SimConfig::default(),
        "write_budget_per_min = 300\nread_budget_per_min = 0",
        "max_concurrent_rotations = 6",
    )
    .await;
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_canary(&out);
    let offsets = patch_offsets(&sim);
    assert_eq!(offsets.len(), 6, "{offsets:?}");
    assert!(with_method(&sim, "PATCH").iter().all(|p| p.status == 204));
    for (k, at) in offsets.iter().enumerate() {
        let slot = Duration::from_millis(200) * u32::try_from(k).unwrap();
        assert!(
            *at >= slot,
            "PATCH {k} arrived {at:?} after the first request, before its slot at {slot:?}: {offsets:?}"
        );
    }
}

#[tokio::test]
async fn rotate_is_one_attempt_per_run_with_the_clients_request_retries() {
    let fault = || Fault::Status {
        method: Some("PATCH".into()),
        path_prefix: None,
        status: 503,
        times: 1,
    };
    // The client retries the request (default qlik.max_attempts = 5).
    let (sim, _dir, config) = sql_world(1, SimConfig::default(), "", "").await;
    sim.inject(fault());
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_no_canary(&out);
    assert!(
        out.stdout.starts_with("j0: rotated and verified"),
        "{}",
        out.stdout
    );
    let statuses: Vec<u16> = with_method(&sim, "PATCH")
        .iter()
        .map(|p| p.status)
        .collect();
    assert_eq!(statuses, [503, 204]);

    // One request attempt: the failure is the run's outcome; no run-level retry, whatever
    // daemon.max_attempts_per_run says (the daemon's own retries are tested in tests/daemon.rs).
    let (sim, _dir, config) = sql_world(
        1,
        SimConfig::default(),
        "max_attempts = 1",
        "max_attempts_per_run = 3",
    )
    .await;
    sim.inject(fault());
    let out = run_cli(&["rotate", "-c", &config, "--all"], &key_env()).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert_no_canary(&out);
    assert!(
        out.stdout.starts_with("j0: failed at apply [server_error]"),
        "{}",
        out.stdout
    );
    assert!(!out.stderr.contains("Retrying the failed connections."));
    let statuses: Vec<u16> = with_method(&sim, "PATCH")
        .iter()
        .map(|p| p.status)
        .collect();
    assert_eq!(statuses, [503]);
    assert!(out.stderr.contains("j0: failed at apply [server_error]"));
}

/// A name without `space` that several connections share is reported as ambiguous (with
/// what to add), not as "not found"; a name that matches nothing says names are exact and
/// where to find ids. Nothing is PATCHed either way.
#[tokio::test]
async fn an_ambiguous_or_unknown_connection_name_says_what_to_do() {
    let w = world(SimConfig::default(), S3_SECRET).await;
    w.sim.add_connection(
        qlik_sim::SeedConnection::new(
            "Finance SQL",
            "mssql",
            serde_json::json!({"host": "h", "port": 1433, "database": "d", "username": "u", "password": "CANARY-other-space-pw"}),
        )
        .in_space("finance-test"),
    );
    // A hostile space name, and more namesakes than the message lists.
    w.sim.add_space(qlik_sim::spaces::SeedSpace::new(
        "finance-test",
        "Finance \u{1b}[2JTest",
    ));
    for i in 0..10 {
        w.sim.add_connection(
            qlik_sim::SeedConnection::new(
                "Finance SQL",
                "mssql",
                serde_json::json!({"host": "h", "port": 1433, "database": "d", "username": "u", "password": "CANARY-more"}),
            )
            .in_space(format!("zz-space-{i}")),
        );
    }
    let text = std::fs::read_to_string(&w.config).unwrap();
    let ambiguous = text.replace(
        "connection = { name = \"Finance SQL\", space = \"finance\" }",
        "connection = { name = \"Finance SQL\" }",
    );
    assert_ne!(ambiguous, text);
    std::fs::write(&w.config, &ambiguous).unwrap();
    let out = run_cli(
        &["rotate", "-c", w.config(), "--job", "finance-sql"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    // Before: `failed at resolve [bad_request]: … HTTP 400 …`. After: ambiguous, with the fix.
    assert!(
        out.stdout.starts_with("finance-sql: failed at resolve [ambiguous_name]: the data connection name \"Finance SQL\" is ambiguous")
            && out.stdout.contains("add the space's id to the job")
            && out.stdout.contains("space = \"<space id>\""),
        "{}",
        out.stdout
    );
    // The candidate spaces: names and ids, escaped, ten at most (twelve spaces have one).
    assert!(
        out.stdout.contains("it is in the spaces id \"finance\", \"Finance \\u{1b}[2JTest\" (id \"finance-test\"), id \"zz-space-0\"")
            && out.stdout.contains("id \"zz-space-7\", and 2 more;")
            && !out.stdout.contains("zz-space-8"),
        "{}",
        out.stdout
    );
    // A name that matches nothing, in a space the tenant has (a lookup that finds nothing in a
    // space id the spaces API does not know is read as a space *name*: see tests/discover.rs).
    w.sim
        .add_space(qlik_sim::spaces::SeedSpace::new("finance", "Finance"));
    let unknown = text.replace("name = \"Finance SQL\"", "name = \"Finance SQl\"");
    std::fs::write(&w.config, &unknown).unwrap();
    let out = run_cli(
        &["rotate", "-c", w.config(), "--job", "finance-sql"],
        &w.env(),
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("[not_found]: no data connection named \"Finance SQl\" in space \"finance\" (names are exact and case-sensitive")
            && out.stdout.contains("Finding connection ids"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("CANARY") && !out.stderr.contains("CANARY"));
    assert!(with_method(&w.sim, "PATCH").is_empty());
}
