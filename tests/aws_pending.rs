//! The AWS Secrets Manager rotation protocol (issue 14 item 4) end to end: the real binary
//! (`run`), moto for Secrets Manager (over HTTP) and the Qlik simulator with a data source and
//! an app behind the connection. The test plays the rotation Lambda: createSecret
//! (PutSecretValue with `AWSPENDING`), testSecret (`POST /secrets/{id}/test?version=…`, waiting
//! on the answer), and finishSecret (UpdateSecretVersionStage `AWSCURRENT`) only when the
//! rotator proved the pending version. Run `bash scripts/setup-moto.sh` first.

mod common;

use std::time::Duration;

use common::{
    daemon::Daemon,
    harness::{
        API_KEY, S3_ID, aws_env, qlik_section, stored_prop, tenant, with_method, write_config,
    },
    moto::{Moto, free_port},
};
use qlik_sim::{
    SimConfig,
    reloads::{App, DataSource},
};
use serde_json::{Map, Value, json};

const CANARY: &str = "CANARY-pending-secret-41d7";
const ADMIN_TOKEN: &str = "admin-token-for-pending-tests";
const APP: &str = "aaaaaaaa-0000-4000-8000-00000000a0a0";
const SECRET: &str = "qlik/sales-s3";

fn accepts(sets: &[(&str, &str)]) -> Vec<Map<String, Value>> {
    sets.iter()
        .map(|(a, s)| {
            [
                ("accessKey".to_owned(), json!(a)),
                ("secretKey".to_owned(), json!(s)),
            ]
            .into_iter()
            .collect()
        })
        .collect()
}

/// The Lambda's testSecret step: POST and wait for the rotator's verdict.
async fn test_secret(addr: std::net::SocketAddr, version: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(format!(
            "http://{addr}/secrets/{}/test?version={version}",
            SECRET.replace('/', "%2F")
        ))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert!(
        !text.contains(CANARY),
        "the answer holds the secret: {text}"
    );
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn current_version(sm: &aws_sdk_secretsmanager::Client) -> String {
    sm.get_secret_value()
        .secret_id(SECRET)
        .version_stage("AWSCURRENT")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap()
}

/// createSecret: a new version labelled `AWSPENDING` only.
async fn put_pending(sm: &aws_sdk_secretsmanager::Client, token: &str, access: &str, key: &str) {
    sm.put_secret_value()
        .secret_id(SECRET)
        .client_request_token(token)
        .secret_string(
            json!({"aws_access_key_id": access, "aws_secret_access_key": key}).to_string(),
        )
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn a_rejected_pending_credential_blocks_promotion_and_a_good_one_is_promoted() {
    let moto = Moto::start();
    let sm = moto.client().await;
    let v1 = moto
        .create_secret(
            SECRET,
            &json!({"aws_access_key_id": "AKIAGOOD1", "aws_secret_access_key": "good-1"})
                .to_string(),
        )
        .await;
    let sim = tenant(SimConfig::default()).await;
    sim.add_source(DataSource {
        name: "s3://sales".into(),
        match_property: "bucketName".into(),
        match_value: json!("sales"),
        accepts: accepts(&[("AKIAGOOD1", "good-1")]),
    });
    sim.add_app(App {
        id: APP.into(),
        name: "Sales".into(),
        connection_ids: vec![S3_ID.into()],
    });
    sim.set_reload_steps(Some(0));
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "{qlik}write_budget_per_min = 0\n[sources.aws]\ntype = \"aws_secrets_manager\"\nendpoint_url = \"{ep}\"\n\
         [daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nadmin_token_file = \"token\"\n\n\
         [[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\n\
         source = \"aws\"\nsecret = \"{SECRET}\"\nversion_stage = \"AWSPENDING\"\ncanary_app = \"{APP}\"\nrollback = true\nrun_on_start = true\n\
         [jobs.fields]\naccessKey = \"aws_access_key_id\"\nsecretKey = \"aws_secret_access_key\"\n",
        qlik = qlik_section(&sim),
        ep = moto.endpoint,
    );
    let config = write_config(dir.path(), &text);
    std::fs::write(dir.path().join("token"), ADMIN_TOKEN).unwrap();
    let mut env = aws_env(&moto);
    env.push(("QLIK_API_KEY".into(), API_KEY.into()));
    let p = Daemon::run(&config, &env).await;
    let addr = p.addr();

    // The scheduled path reads AWSCURRENT: run_on_start applies v1 and proves it.
    let mut applied = false;
    for _ in 0..200 {
        if stored_prop(&sim, S3_ID, "accessKey") == json!("AKIAGOOD1") {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "run_on_start did not apply AWSCURRENT");
    // Wait for its canary (the reload) so the next run starts from a verified v1.
    tokio::time::sleep(Duration::from_millis(800)).await;

    // 1. A pending credential the source rejects (setSecret did not take): 409, rolled back,
    // and the Lambda does not promote it.
    let bad = "11111111-aaaa-4bbb-8ccc-000000000002";
    put_pending(&sm, bad, "AKIABAD2", CANARY).await;
    let (status, body) = test_secret(addr, bad).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["status"], "not_proven", "{body}");
    let job = &body["jobs"][0];
    assert_eq!(job["job"], "sales-s3", "{body}");
    assert_eq!(job["outcome"], "rolled_back", "{body}");
    assert_eq!(job["proven"], false, "{body}");
    assert_eq!(current_version(&sm).await, v1, "AWSCURRENT did not move");
    assert_eq!(
        stored_prop(&sim, S3_ID, "accessKey"),
        json!("AKIAGOOD1"),
        "Qlik holds the last verified credential again"
    );

    // 2. A good pending credential (alternating users: the source accepts old and new until
    // finishSecret): 200, then the Lambda promotes it.
    let good = "11111111-aaaa-4bbb-8ccc-000000000003";
    put_pending(&sm, good, "AKIAGOOD3", "good-3").await;
    sim.set_source_accepts(
        "s3://sales",
        accepts(&[("AKIAGOOD1", "good-1"), ("AKIAGOOD3", "good-3")]),
    );
    let (status, body) = test_secret(addr, good).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "proven", "{body}");
    assert_eq!(body["jobs"][0]["outcome"], "rotated", "{body}");
    assert_eq!(body["jobs"][0]["proven"], true, "{body}");
    assert_eq!(body["jobs"][0]["secret_version"], good, "{body}");
    assert_eq!(stored_prop(&sim, S3_ID, "accessKey"), json!("AKIAGOOD3"));
    // finishSecret.
    sm.update_secret_version_stage()
        .secret_id(SECRET)
        .version_stage("AWSCURRENT")
        .move_to_version_id(good)
        .remove_from_version_id(&v1)
        .send()
        .await
        .unwrap();
    assert_eq!(current_version(&sm).await, good);

    // Refusals: unknown version (a fetch failure is not proven), bad version syntax, no token.
    let (status, body) = test_secret(addr, "22222222-aaaa-4bbb-8ccc-000000000009").await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["jobs"][0]["outcome"], "failed", "{body}");
    let (status, _) = test_secret(addr, "bad%20version").await;
    assert_eq!(status, 400);
    let unauth = reqwest::Client::new()
        .post(format!("http://{addr}/secrets/x/test?version=abc"))
        .send()
        .await
        .unwrap();
    assert_eq!(unauth.status().as_u16(), 401);

    let out = p.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!out.stdout.contains(CANARY) && !out.stderr.contains(CANARY));
    // Every PATCH was answered by the simulator; none of them was sent after the refusals.
    assert!(!with_method(&sim, "PATCH").is_empty());
}

/// `version_stage = "AWSPENDING"` without what the protocol needs: exit 64 naming the key,
/// nothing PATCHed, the canary secret nowhere.
async fn pending_config_error(source: &str, extra: &str, want: &str) {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vault/qlik")).unwrap();
    std::fs::write(
        dir.path().join("vault/qlik/sales-s3.json"),
        json!({"aws_access_key_id": "AKIA1", "aws_secret_access_key": CANARY}).to_string(),
    )
    .unwrap();
    let text = format!(
        "{qlik}[sources.aws]\ntype = \"aws_secrets_manager\"\nendpoint_url = \"http://127.0.0.1:9\"\n\
         [sources.vault]\ntype = \"file\"\npath = \"vault\"\n\
         [[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\n\
         source = \"{source}\"\nsecret = \"{SECRET}\"\nversion_stage = \"AWSPENDING\"\n{extra}\n\
         [jobs.fields]\naccessKey = \"aws_access_key_id\"\nsecretKey = \"aws_secret_access_key\"\n",
        qlik = qlik_section(&sim),
    );
    let config = write_config(dir.path(), &text);
    let out = common::harness::run_cli(
        &["rotate", "--all", "-c", config.to_str().unwrap()],
        &common::harness::env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 64, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(want), "want {want:?} in {}", out.stderr);
    assert!(!out.stderr.contains(CANARY) && !out.stdout.contains(CANARY));
    assert!(with_method(&sim, "PATCH").is_empty());
}

#[tokio::test]
async fn awspending_on_a_file_source_exits_64() {
    pending_config_error(
        "vault",
        &format!("canary_app = \"{APP}\"\nrollback = true"),
        "jobs[0].version_stage: version_stage = \"AWSPENDING\" (the AWS rotation protocol) needs an aws_secrets_manager source",
    )
    .await;
}

#[tokio::test]
async fn awspending_without_a_canary_exits_64() {
    pending_config_error(
        "aws",
        "rollback = true",
        "jobs[0].canary_app: version_stage",
    )
    .await;
}

#[tokio::test]
async fn awspending_without_rollback_exits_64() {
    pending_config_error(
        "aws",
        &format!("canary_app = \"{APP}\""),
        "jobs[0].rollback: version_stage",
    )
    .await;
}
