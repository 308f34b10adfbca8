//! `[events] type = "sqs"` end to end: the real binary (`run`), a moto server for Secrets
//! Manager and SQS (over HTTP), and the Qlik simulator. Run `bash scripts/setup-moto.sh` first.

mod common;

use std::{path::PathBuf, time::Duration};

use aws_sdk_sqs::types::QueueAttributeName;
use common::{
    daemon::{Daemon, wait_metric},
    harness::{
        API_KEY, S3_ID, aws_env, http_get, metric, qlik_section, stored_prop, tenant, with_method,
        write_config,
    },
    moto::{Moto, free_port},
};
use qlik_sim::{SimConfig, Simulator};
use serde_json::json;

const CANARY: &str = "CANARY-sqs-secret-8812";
const ADMIN_TOKEN: &str = "admin-token-for-tests";

fn sqs_client(moto: &Moto) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .endpoint_url(&moto.endpoint)
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "testing", "testing", None, None, "moto",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

/// A queue and its DLQ (redrive after `max_receives`, visibility timeout 1 s): (queue, dlq).
async fn queues(sqs: &aws_sdk_sqs::Client, max_receives: u32) -> (String, String) {
    let dlq = sqs
        .create_queue()
        .queue_name("rotator-events-dlq")
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&QueueAttributeName::QueueArn]
        .clone();
    let queue = sqs
        .create_queue()
        .queue_name("rotator-events")
        .attributes(QueueAttributeName::VisibilityTimeout, "1")
        .attributes(
            QueueAttributeName::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives.to_string()})
                .to_string(),
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    (queue, dlq)
}

/// Messages in `queue`, visible or in flight.
async fn depth(sqs: &aws_sdk_sqs::Client, queue: &str) -> u64 {
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(queue)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    [
        QueueAttributeName::ApproximateNumberOfMessages,
        QueueAttributeName::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|k| attrs[k].parse::<u64>().unwrap())
    .sum()
}

/// An EventBridge-delivered CloudTrail `eventName` call on `secret_id`.
fn cloudtrail(event_name: &str, secret_id: &str) -> String {
    json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
        "detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
        "account": "123456789012", "time": "2026-11-30T10:00:00Z", "region": "us-east-1",
        "resources": [],
        "detail": {
            "eventVersion": "1.09", "eventSource": "secretsmanager.amazonaws.com",
            "eventName": event_name, "awsRegion": "us-east-1",
            "requestParameters": {"secretId": secret_id},
            "responseElements": null,
        }
    })
    .to_string()
}

async fn send(sqs: &aws_sdk_sqs::Client, queue: &str, body: &str) {
    sqs.send_message()
        .queue_url(queue)
        .message_body(body)
        .send()
        .await
        .unwrap();
}

/// Creates `name` in moto; returns its ARN.
async fn create_secret(moto: &Moto, name: &str, value: &str) -> String {
    moto.client()
        .await
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap()
}

struct World {
    moto: Moto,
    sim: Simulator,
    sqs: aws_sdk_sqs::Client,
    queue: String,
    dlq: String,
    _dir: tempfile::TempDir,
    config: PathBuf,
    env: Vec<(String, String)>,
}

/// Moto with the secret `qlik/sales-s3` = `secret`, the queues, a seeded tenant, and a config
/// whose one job (no schedule, no run_on_start: only events start it) reads that secret.
async fn world(secret: &str, max_receives: u32) -> World {
    let moto = Moto::start();
    create_secret(&moto, "qlik/sales-s3", secret).await;
    let sqs = sqs_client(&moto);
    let (queue, dlq) = queues(&sqs, max_receives).await;
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text = format!(
        "{}\n[sources.aws]\ntype = \"aws_secrets_manager\"\nendpoint_url = \"{ep}\"\n\
         [events]\ntype = \"sqs\"\nqueue_url = \"{queue}\"\nendpoint_url = \"{ep}\"\nregion = \"us-east-1\"\nwait_time = \"1s\"\n\
         [daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nper_job_rotated = true\nadmin_token_file = \"token\"\n\n\
         [[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\nsource = \"aws\"\nsecret = \"qlik/sales-s3\"\n",
        qlik_section(&sim),
        ep = moto.endpoint,
    );
    let config = write_config(dir.path(), &text);
    std::fs::write(dir.path().join("token"), ADMIN_TOKEN).unwrap();
    let mut env = aws_env(&moto);
    env.push(("QLIK_API_KEY".into(), API_KEY.into()));
    World {
        moto,
        sim,
        sqs,
        queue,
        dlq,
        _dir: dir,
        config,
        env,
    }
}

fn assert_no_canary(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "{what} shows the secret:\n{text}");
}

#[tokio::test]
async fn a_put_secret_value_event_rotates_the_connection_without_a_schedule() {
    let w = world(r#"{"accessKey":"AKIA1","secretKey":"first-secret"}"#, 3).await;
    let d = Daemon::run(&w.config, &w.env).await;
    // Only events start the job: nothing ran at start.
    assert!(with_method(&w.sim, "PATCH").is_empty());

    let new = format!(r#"{{"accessKey":"AKIA2","secretKey":"{CANARY}"}}"#);
    let arn = w
        .moto
        .client()
        .await
        .put_secret_value()
        .secret_id("qlik/sales-s3")
        .secret_string(&new)
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    // EventBridge names the secret by ARN; the job names it by name.
    assert!(arn.contains(":secret:qlik/sales-s3-"), "{arn}");
    send(&w.sqs, &w.queue, &cloudtrail("PutSecretValue", &arn)).await;

    let metrics = wait_metric(
        d.addr(),
        "qlik_rotator_event_messages_total",
        &[("result", "deleted")],
        1.0,
    )
    .await;
    assert_eq!(stored_prop(&w.sim, S3_ID, "accessKey"), json!("AKIA2"));
    assert_eq!(with_method(&w.sim, "PATCH").len(), 1);
    assert_eq!(
        metric(
            &metrics,
            "qlik_rotator_rotations_total",
            &[("rotation_job", "sales-s3"), ("outcome", "rotated")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "qlik_rotator_event_messages_total",
            &[("result", "received")]
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &metrics,
            "qlik_rotator_event_messages_total",
            &[("result", "failed")]
        ),
        Some(0.0)
    );
    assert_eq!(depth(&w.sqs, &w.queue).await, 0, "the message is deleted");

    // A replay of the same event: change detection, no second PATCH; deleted again.
    send(
        &w.sqs,
        &w.queue,
        &cloudtrail("UpdateSecretVersionStage", "qlik/sales-s3"),
    )
    .await;
    let metrics = wait_metric(
        d.addr(),
        "qlik_rotator_event_messages_total",
        &[("result", "deleted")],
        2.0,
    )
    .await;
    assert_eq!(
        with_method(&w.sim, "PATCH").len(),
        1,
        "a replay sends nothing"
    );
    // `unchanged` is counted under the job's connector (the only job here).
    assert_eq!(
        metric(
            &metrics,
            "qlik_rotator_rotations_unchanged_total",
            &[("connector", "File_AmazonS3ConnectorV2")]
        ),
        Some(1.0)
    );
    assert_no_canary("/metrics", &metrics);
    let out = d.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_canary("daemon stderr", &out.stderr);
    assert_no_canary("daemon stdout", &out.stdout);
}

#[tokio::test]
async fn a_failing_job_leaves_the_message_and_redrive_moves_it_to_the_dlq() {
    // The secret lacks `secretKey`: every run fails at build, nothing is PATCHed.
    let w = world(&format!(r#"{{"accessKey":"{CANARY}"}}"#), 2).await;
    let d = Daemon::run(&w.config, &w.env).await;
    send(
        &w.sqs,
        &w.queue,
        &cloudtrail("PutSecretValue", "qlik/sales-s3"),
    )
    .await;
    let metrics = wait_metric(
        d.addr(),
        "qlik_rotator_event_messages_total",
        &[("result", "failed")],
        2.0,
    )
    .await;
    assert_eq!(
        metric(
            &metrics,
            "qlik_rotator_event_messages_total",
            &[("result", "deleted")]
        ),
        Some(0.0)
    );
    // After the second receive, SQS moves the message to the DLQ (visibility timeout 1 s).
    let mut moved = false;
    for _ in 0..200 {
        if depth(&w.sqs, &w.dlq).await == 1 && depth(&w.sqs, &w.queue).await == 0 {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(moved, "the message did not reach the DLQ");
    assert!(
        with_method(&w.sim, "PATCH").is_empty(),
        "nothing is PATCHed"
    );
    assert_no_canary("/metrics", &metrics);
    let out = d.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("left for redelivery"), "{}", out.stderr);
    assert_no_canary("daemon stderr", &out.stderr);
}

#[tokio::test]
async fn hostile_messages_are_deleted_with_a_counted_reason_and_never_crash() {
    let w = world(
        &format!(r#"{{"accessKey":"AKIA1","secretKey":"{CANARY}"}}"#),
        5,
    )
    .await;
    let d = Daemon::run(&w.config, &w.env).await;
    let cases: Vec<(&str, String, &str)> = vec![
        ("not JSON", format!("not json {CANARY}"), "not_json"),
        ("huge", "x".repeat(200 * 1024), "not_json"),
        ("deeply nested", "[".repeat(100_000), "not_json"),
        (
            "another service",
            json!({"source": "aws.s3", "detail": {}}).to_string(),
            "not_secretsmanager",
        ),
        (
            "unknown event",
            cloudtrail("DeleteSecret", "qlik/sales-s3"),
            "unknown_event",
        ),
        (
            "control characters",
            cloudtrail("PutSecretValue", "qlik/\u{1b}[2Jsales"),
            "bad_secret_id",
        ),
        (
            "no secret",
            cloudtrail("PutSecretValue", "").replace("\"secretId\":\"\"", "\"x\":1"),
            "no_secret",
        ),
    ];
    println!("{} hostile cases (+1 unmatched)", cases.len());
    for (_, body, _) in &cases {
        send(&w.sqs, &w.queue, body).await;
    }
    send(
        &w.sqs,
        &w.queue,
        &cloudtrail("PutSecretValue", "nobody/uses-this"),
    )
    .await;
    let metrics = wait_metric(
        d.addr(),
        "qlik_rotator_event_messages_total",
        &[("result", "rejected")],
        cases.len() as f64,
    )
    .await;
    let metrics = if metric(
        &metrics,
        "qlik_rotator_event_messages_total",
        &[("result", "unmatched")],
    ) == Some(1.0)
    {
        metrics
    } else {
        wait_metric(
            d.addr(),
            "qlik_rotator_event_messages_total",
            &[("result", "unmatched")],
            1.0,
        )
        .await
    };
    for (name, _, reason) in &cases {
        let want = cases.iter().filter(|c| c.2 == *reason).count() as f64;
        assert_eq!(
            metric(
                &metrics,
                "qlik_rotator_event_messages_rejected_total",
                &[("reason", reason)]
            ),
            Some(want),
            "{name}"
        );
    }
    assert_eq!(
        depth(&w.sqs, &w.queue).await,
        0,
        "every hostile message is deleted"
    );
    assert!(
        with_method(&w.sim, "PATCH").is_empty(),
        "nothing is PATCHed"
    );
    assert_eq!(http_get(d.addr(), "/healthz").await.0, 200, "still serving");
    assert_no_canary("/metrics", &metrics);
    let out = d.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_no_canary("daemon stderr", &out.stderr);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "an escape sequence reached the log"
    );
}

// --- Triggers by secret: POST /secrets/{id}/rotate and rotate --secret ------------------------

async fn post(addr: std::net::SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let mut req = reqwest::Client::new().post(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test]
async fn the_admin_route_rotates_every_job_of_a_secret() {
    let w = world(
        &format!(r#"{{"accessKey":"AKIA9","secretKey":"{CANARY}"}}"#),
        3,
    )
    .await;
    let d = Daemon::run(&w.config, &w.env).await;
    let path = "/secrets/qlik%2Fsales-s3/rotate";
    assert_eq!(post(d.addr(), path, None).await.0, 401);
    assert_eq!(post(d.addr(), path, Some("wrong")).await.0, 401);
    let (status, body) = post(
        d.addr(),
        "/secrets/nobody%2Fuses-this/rotate",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("no job uses the secret \\\"nobody/uses-this\\\""),
        "{body}"
    );
    let (status, body) = post(d.addr(), "/secrets/a%1Bb/rotate", Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        with_method(&w.sim, "PATCH").is_empty(),
        "refusals send nothing"
    );

    let (status, body) = post(d.addr(), path, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["jobs"], json!(["sales-s3"]));
    wait_metric(
        d.addr(),
        "qlik_rotator_rotations_total",
        &[("rotation_job", "sales-s3"), ("outcome", "rotated")],
        1.0,
    )
    .await;
    assert_eq!(stored_prop(&w.sim, S3_ID, "accessKey"), json!("AKIA9"));
    // By ARN without its suffix (a partial ARN): the same job; unchanged now.
    let partial =
        "/secrets/arn:aws:secretsmanager:us-east-1:123456789012:secret:qlik%2Fsales-s3/rotate";
    let (status, body) = post(d.addr(), partial, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 202, "{body}");
    wait_metric(
        d.addr(),
        "qlik_rotator_rotations_unchanged_total",
        &[("connector", "File_AmazonS3ConnectorV2")],
        1.0,
    )
    .await;
    assert_eq!(with_method(&w.sim, "PATCH").len(), 1);
    let out = d.stop().await;
    assert_no_canary("daemon stderr", &out.stderr);
}

#[tokio::test]
async fn rotate_secret_runs_the_jobs_of_that_secret_or_exits_64() {
    let w = world(
        &format!(r#"{{"accessKey":"AKIA7","secretKey":"{CANARY}"}}"#),
        3,
    )
    .await;
    let config = w.config.to_str().unwrap();
    let out = common::harness::run_cli(
        &["rotate", "-c", config, "--secret", "nobody/uses-this"],
        &w.env,
    )
    .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no job uses the secret \"nobody/uses-this\""),
        "{}",
        out.stderr
    );
    let out =
        common::harness::run_cli(&["rotate", "-c", config, "--secret", "x\u{1b}[2J"], &w.env).await;
    assert_eq!(out.code, 64);
    assert!(!out.stderr.contains('\u{1b}'), "{}", out.stderr);
    let out = common::harness::run_cli(
        &["rotate", "-c", config, "--secret", "qlik/sales-s3", "--all"],
        &w.env,
    )
    .await;
    assert_eq!(
        out.code, 64,
        "--secret with --all is a usage error: {}",
        out.stderr
    );
    assert!(
        with_method(&w.sim, "PATCH").is_empty(),
        "refusals send nothing"
    );

    let out = common::harness::run_cli(
        &["rotate", "-c", config, "--secret", "qlik/sales-s3"],
        &w.env,
    )
    .await;
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("sales-s3: rotated and verified"),
        "{}",
        out.stdout
    );
    assert_eq!(stored_prop(&w.sim, S3_ID, "accessKey"), json!("AKIA7"));
    assert_no_canary("stdout", &out.stdout);
    assert_no_canary("stderr", &out.stderr);
}

#[tokio::test]
async fn a_bad_events_table_exits_64_naming_the_key_and_sends_nothing() {
    let w = world(
        &format!(r#"{{"accessKey":"AKIA5","secretKey":"{CANARY}"}}"#),
        3,
    )
    .await;
    let text = std::fs::read_to_string(&w.config).unwrap();
    let cases = [
        (
            "queue_url",
            format!("queue_url = \"https://u:{CANARY}@sqs.example/123456789012/q\""),
            "events.queue_url: must not contain a user name",
        ),
        (
            "wait_time",
            "wait_time = \"60s\"".to_owned(),
            "events.wait_time: expected a duration from 1s to 20s",
        ),
        (
            "type",
            "type = \"kafka\"".to_owned(),
            "events.type: unknown events type",
        ),
    ];
    println!("{} cases", cases.len());
    for (key, line, want) in &cases {
        let prefix = match *key {
            "type" => "type = \"sqs\"".to_owned(),
            other => format!("{other} = "),
        };
        let bad: String = text
            .lines()
            .map(|l| {
                if l.starts_with(&prefix) {
                    line.clone()
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        // Only the [events] table has these lines in this config.
        assert_ne!(bad, text, "{key}");
        std::fs::write(&w.config, &bad).unwrap();
        let out =
            common::harness::run_cli(&["run", "-c", w.config.to_str().unwrap()], &w.env).await;
        assert_eq!(out.code, 64, "{key}: {}", out.stderr);
        assert!(out.stderr.contains(want), "{key}: {}", out.stderr);
        assert_no_canary("stderr", &out.stderr);
        assert_no_canary("stdout", &out.stdout);
    }
    assert!(
        with_method(&w.sim, "PATCH").is_empty(),
        "nothing is PATCHed"
    );
}
