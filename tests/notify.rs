//! Webhook notifications (`[[notify]]`, issue 14 item 5) against a local receiver over real
//! HTTP: each format, retries on 500, the timeout, redirects not followed, the queue dropping
//! instead of blocking, `on` filtering, the auth header from a file, outcomes fed from a real
//! rotation against the simulator, a canary secret absent from every payload, and config
//! errors that exit 64 naming the key.

mod common;

use std::{
    collections::{HashMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, post},
};
use common::harness::{API_KEY, S3_ID, metric, qlik_section, tenant, wait_until, with_method};
use qlik_rotator::{
    app, config,
    config::notify::{NotifyConfig, NotifyFormat},
    metrics::Metrics,
    notify::{Notification, Notifier},
    rotation::{Outcome, Rotator, RunOptions},
    secrets::{AnySource, fixed::FixedSource},
};
use qlik_sim::{
    SimConfig,
    reloads::{App, DataSource},
};
use serde_json::{Map, Value, json};

/// A unique secret string, asserted absent from every payload, header and output.
const CANARY: &str = "CANARY-notify-5e1d-secret";
const APP: &str = "aaaaaaaa-0000-4000-8000-00000000beef";

/// What the receiver got: (path, headers, body).
type Got = Arc<Mutex<Vec<(String, HeaderMap, String)>>>;

#[derive(Clone)]
struct Receiver {
    got: Got,
    /// Statuses to answer, in order; then 204.
    answers: Arc<Mutex<VecDeque<u16>>>,
    /// How long each answer waits.
    delay: Duration,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    r.got.lock().unwrap().push((
        "/hook".into(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    if !r.delay.is_zero() {
        tokio::time::sleep(r.delay).await;
    }
    let status = r.answers.lock().unwrap().pop_front().unwrap_or(204);
    let mut resp = StatusCode::from_u16(status).unwrap().into_response();
    if (300..400).contains(&status) {
        resp.headers_mut()
            .insert("location", "/elsewhere".parse().unwrap());
    }
    resp
}

async fn elsewhere(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push((
        "/elsewhere".into(),
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ));
    StatusCode::NO_CONTENT
}

/// Starts a receiver answering `answers` in order (then 204), each after `delay`.
async fn receiver(answers: &[u16], delay: Duration) -> (SocketAddr, Got) {
    let r = Receiver {
        got: Arc::default(),
        answers: Arc::new(Mutex::new(answers.iter().copied().collect())),
        delay,
    };
    let got = r.got.clone();
    let app = Router::new()
        .route("/hook", post(hook))
        .route("/elsewhere", any(elsewhere))
        .with_state(r);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, got)
}

fn target(addr: SocketAddr, format: NotifyFormat) -> NotifyConfig {
    NotifyConfig {
        url: format!("http://{addr}/hook").parse().unwrap(),
        format,
        on: vec!["failed", "verify_failed", "canary_failed", "rolled_back"],
        timeout: Duration::from_secs(2),
        retries: 3,
        retry_delay: Duration::from_millis(20),
        headers: Vec::new(),
    }
}

fn failure() -> Notification {
    Notification {
        job: "sales-s3".into(),
        connection: S3_ID.into(),
        outcome: "canary_failed",
        stage: Some("canary"),
        error_type: Some("canary_reload_failed"),
        secret_version: Some("v2".into()),
        restored_version: None,
        time: chrono::Utc::now(),
    }
}

fn count(m: &Metrics, result: &str) -> f64 {
    metric(
        &m.render(),
        "qlik_rotator_notifications_total",
        &[("result", result)],
    )
    .unwrap_or(-1.0)
}

/// Waits until `m` counts one notification with `result`.
async fn counted(m: &Metrics, result: &str, n: f64) -> bool {
    wait_until(Duration::from_secs(5), || count(m, result) >= n).await
}

fn no_canary(got: &Got) {
    for (path, headers, body) in got.lock().unwrap().iter() {
        assert!(
            !body.contains(CANARY),
            "canary in the body to {path}: {body}"
        );
        for (k, v) in headers {
            assert!(
                !String::from_utf8_lossy(v.as_bytes()).contains(CANARY),
                "canary in header {k}"
            );
        }
    }
}

#[tokio::test]
async fn json_format_carries_the_outcome_fields_and_nothing_else() {
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 16).unwrap();
    let sent = failure();
    n.notify(sent.clone());
    assert!(counted(&m, "sent", 1.0).await, "{}", m.render());
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 1);
    let (path, headers, body) = &got[0];
    assert_eq!(path, "/hook");
    assert_eq!(headers["content-type"], "application/json");
    let v: Value = serde_json::from_str(body).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "connection_id",
            "error_type",
            "job",
            "outcome",
            "restored_version",
            "secret_version",
            "source",
            "stage",
            "time"
        ]
    );
    assert_eq!(v["job"], "sales-s3");
    assert_eq!(v["connection_id"], S3_ID);
    assert_eq!(v["outcome"], "canary_failed");
    assert_eq!(v["stage"], "canary");
    assert_eq!(v["error_type"], "canary_reload_failed");
    assert_eq!(v["secret_version"], "v2");
    assert!(v["restored_version"].is_null());
    assert!(
        chrono::DateTime::parse_from_rfc3339(v["time"].as_str().unwrap()).is_ok(),
        "{body}"
    );
    assert_eq!(count(&m, "failed"), 0.0);
}

#[tokio::test]
async fn slack_format_is_one_text_field_with_slack_escaping() {
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Slack)], Some(m.clone()), 16).unwrap();
    let mut sent = failure();
    // A hostile connection id from outside: Slack's control characters and a terminal escape.
    sent.connection = "<!channel> & \u{1b}[31m".into();
    sent.outcome = "rolled_back";
    sent.restored_version = Some("v1".into());
    n.notify(sent);
    assert!(counted(&m, "sent", 1.0).await, "{}", m.render());
    let got = got.lock().unwrap();
    let v: Value = serde_json::from_str(&got[0].2).unwrap();
    assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("job `sales-s3`"), "{text}");
    assert!(
        text.contains("*rolled_back* at canary [canary_reload_failed]"),
        "{text}"
    );
    assert!(
        text.contains("secret version `v2`, restored version `v1`"),
        "{text}"
    );
    assert!(text.contains("&lt;!channel&gt; &amp; "), "{text}");
    assert!(!text.contains('<') && !text.contains('\u{1b}'), "{text}");
}

#[tokio::test]
async fn a_500_is_retried_until_it_is_delivered() {
    let (addr, got) = receiver(&[500, 503], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 16).unwrap();
    n.notify(failure());
    assert!(counted(&m, "sent", 1.0).await, "{}", m.render());
    assert_eq!(got.lock().unwrap().len(), 3, "two 5xx, then 204");
    assert_eq!(count(&m, "failed"), 0.0);
}

#[tokio::test]
async fn retries_end_and_the_notification_counts_as_failed() {
    let (addr, got) = receiver(&[500, 500, 500, 500, 500], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let mut t = target(addr, NotifyFormat::Json);
    t.retries = 2;
    let (n, _task) = Notifier::spawn(vec![t], Some(m.clone()), 16).unwrap();
    n.notify(failure());
    assert!(counted(&m, "failed", 1.0).await, "{}", m.render());
    assert_eq!(
        got.lock().unwrap().len(),
        3,
        "the first attempt and two retries"
    );
    assert_eq!(count(&m, "sent"), 0.0);
}

#[tokio::test]
async fn a_4xx_is_not_retried() {
    let (addr, got) = receiver(&[400], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 16).unwrap();
    n.notify(failure());
    assert!(counted(&m, "failed", 1.0).await, "{}", m.render());
    assert_eq!(got.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn an_answer_slower_than_the_timeout_fails_the_attempt() {
    let (addr, got) = receiver(&[], Duration::from_millis(800)).await;
    let m = Arc::new(Metrics::new());
    let mut t = target(addr, NotifyFormat::Json);
    t.timeout = Duration::from_millis(150);
    t.retries = 1;
    let (n, _task) = Notifier::spawn(vec![t], Some(m.clone()), 16).unwrap();
    let start = Instant::now();
    n.notify(failure());
    assert!(counted(&m, "failed", 1.0).await, "{}", m.render());
    // Two attempts of 150 ms and a 20 ms wait: far below the receiver's 800 ms each.
    assert!(
        start.elapsed() < Duration::from_millis(1200),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(got.lock().unwrap().len(), 2);
    assert_eq!(count(&m, "sent"), 0.0);
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    // 307 keeps the method and body: a client that follows it would POST to /elsewhere.
    let (addr, got) = receiver(&[307, 302], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 16).unwrap();
    n.notify(failure());
    assert!(counted(&m, "failed", 1.0).await, "{}", m.render());
    let got = got.lock().unwrap();
    let paths: Vec<&str> = got.iter().map(|(p, ..)| p.as_str()).collect();
    assert_eq!(paths, ["/hook"], "one attempt, the Location never visited");
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_instead_of_waiting() {
    // A webhook that takes 500 ms per answer and a queue of 1.
    let (addr, _got) = receiver(&[], Duration::from_millis(500)).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 1).unwrap();
    let start = Instant::now();
    for _ in 0..20 {
        n.notify(failure());
    }
    assert!(
        start.elapsed() < Duration::from_millis(100),
        "notify waited: {:?}",
        start.elapsed()
    );
    // At most one in flight and one queued: at least 18 dropped.
    assert!(count(&m, "dropped") >= 18.0, "{}", m.render());
}

#[tokio::test]
async fn outcomes_no_webhook_wants_do_not_take_queue_space() {
    let (addr, got) = receiver(&[], Duration::from_millis(300)).await;
    let m = Arc::new(Metrics::new());
    let (n, _task) =
        Notifier::spawn(vec![target(addr, NotifyFormat::Json)], Some(m.clone()), 1).unwrap();
    // A failure in flight (its webhook takes 300 ms), then a cycle of unchanged runs: none of
    // them is queued, so none is dropped, and the failure after them still goes out.
    n.notify(failure());
    assert!(wait_until(Duration::from_secs(2), || !got.lock().unwrap().is_empty()).await);
    for _ in 0..100 {
        let mut quiet = failure();
        quiet.outcome = "unchanged";
        n.notify(quiet);
    }
    n.notify(failure());
    assert_eq!(count(&m, "dropped"), 0.0, "{}", m.render());
    assert!(counted(&m, "sent", 2.0).await, "{}", m.render());
    assert_eq!(got.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn on_filters_outcomes_and_rotated_is_opt_in() {
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let (addr2, got2) = receiver(&[], Duration::ZERO).await;
    let m = Arc::new(Metrics::new());
    let default_on = target(addr, NotifyFormat::Json);
    let mut only_rotated = target(addr2, NotifyFormat::Json);
    only_rotated.on = vec!["rotated"];
    let (n, _task) = Notifier::spawn(vec![default_on, only_rotated], Some(m.clone()), 16).unwrap();
    let mut ok = failure();
    ok.outcome = "rotated";
    ok.stage = None;
    ok.error_type = None;
    n.notify(ok);
    n.notify(failure());
    assert!(counted(&m, "sent", 2.0).await, "{}", m.render());
    let outcome = |g: &Got| -> Vec<String> {
        g.lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| serde_json::from_str::<Value>(b).unwrap()["outcome"].to_string())
            .collect()
    };
    assert_eq!(outcome(&got), ["\"canary_failed\""]);
    assert_eq!(outcome(&got2), ["\"rotated\""]);
}

/// The config path: `url_file` holds the URL (with a token in its query), `headers_from_file`
/// sends its header, and the loaded config keeps both out of its `Debug` text.
#[tokio::test]
async fn the_url_and_the_auth_header_come_from_files() {
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("hook-url"),
        format!("  http://{addr}/hook?token={CANARY}\n"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("hook-headers"),
        format!("# the webhook's token\nAuthorization: Bearer {CANARY}\nX-Team: data\n"),
    )
    .unwrap();
    let text = format!(
        r#"[qlik]
tenant_url = "http://127.0.0.1:9"
api_key_env = "QLIK_API_KEY"
[sources.vault]
type = "file"
path = "secrets"
[[jobs]]
name = "s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "s3"
[[notify]]
url_file = "hook-url"
headers_from_file = "hook-headers"
"#
    );
    let input: HashMap<String, String> = [("QLIK_API_KEY".to_owned(), API_KEY.to_owned())].into();
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    assert!(
        !format!("{cfg:?}").contains(CANARY),
        "the header value is in Debug"
    );
    let m = Arc::new(Metrics::new());
    let (n, _task) = Notifier::spawn(cfg.notify.clone(), Some(m.clone()), 16).unwrap();
    n.notify(failure());
    assert!(counted(&m, "sent", 1.0).await, "{}", m.render());
    let got = got.lock().unwrap();
    assert_eq!(
        got[0].1["authorization"].to_str().unwrap(),
        format!("Bearer {CANARY}")
    );
    assert_eq!(got[0].1["x-team"], "data");
    assert!(!got[0].2.contains(CANARY));
}

fn accepts(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect()
}

/// Fed from the outcome events: a real rotation against the simulator whose canary reload
/// fails (the source rejects the vault's key, which holds the canary) is notified with its
/// fields; the canary is in no payload.
#[tokio::test]
async fn a_canary_failed_rotation_is_notified_without_its_secret() {
    let sim = tenant(SimConfig::default()).await;
    sim.add_source(DataSource {
        name: "s3://sales".into(),
        match_property: "bucketName".into(),
        match_value: json!("sales"),
        accepts: vec![accepts(&[
            ("accessKey", "AKIAGOOD1"),
            ("secretKey", "good-1"),
        ])],
    });
    sim.add_app(App {
        id: APP.into(),
        name: "Sales".into(),
        connection_ids: vec![S3_ID.into()],
    });
    sim.set_reload_steps(Some(0));
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{qlik}
[sources.vault]
type = "file"
path = "secrets"
[[jobs]]
name = "s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "s3"
canary_app = "{APP}"
[[notify]]
url = "http://{addr}/hook"
on = ["canary_failed", "rotated"]
"#,
        qlik = qlik_section(&sim)
    );
    let input: HashMap<String, String> = [("QLIK_API_KEY".to_owned(), API_KEY.to_owned())].into();
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    let m = Arc::new(Metrics::new());
    let client = Arc::new(app::qlik_client(&cfg, &input).unwrap());
    let vault = FixedSource::new();
    let v1 = vault.put(
        "s3",
        json!({"accessKey": "AKIABAD", "secretKey": CANARY}).to_string(),
    );
    let rotator = Rotator::new(
        client,
        HashMap::from([("vault".to_owned(), Arc::new(AnySource::Fixed(vault)))]),
    )
    .with_metrics(m.clone());
    let (n, _task) = Notifier::spawn(cfg.notify.clone(), Some(m.clone()), 16).unwrap();
    assert!(rotator.events().set_notifier(n));
    let job = cfg.job("s3").unwrap();
    let reports = rotator.run(job, RunOptions::default()).await;
    assert!(
        matches!(reports[0].outcome, Outcome::CanaryFailed(_)),
        "{}",
        reports[0].line()
    );
    rotator.finish_run(job, &reports);
    assert!(counted(&m, "sent", 1.0).await, "{}", m.render());
    let body = got.lock().unwrap()[0].2.clone();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["job"], "s3");
    assert_eq!(v["connection_id"], S3_ID);
    assert_eq!(v["outcome"], "canary_failed");
    assert_eq!(v["stage"], "canary");
    assert_eq!(v["error_type"], "canary_reload_failed");
    assert_eq!(v["secret_version"], v1.as_str());
    assert_eq!(
        with_method(&sim, "PATCH").len(),
        1,
        "one rotation, one PATCH"
    );
    no_canary(&got);
    assert!(!m.render().contains(CANARY));
}

// === config errors: exit 64 naming the key, nothing PATCHed, the canary nowhere ===

async fn config_error(notify: &str, headers_file: Option<&str>, want: &str) {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets/s3.json"),
        json!({"accessKey": "AKIA1", "secretKey": CANARY}).to_string(),
    )
    .unwrap();
    if let Some(h) = headers_file {
        std::fs::write(dir.path().join("hook-headers"), h).unwrap();
    }
    let text = format!(
        r#"{qlik}
[sources.vault]
type = "file"
path = "secrets"
[[jobs]]
name = "s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "s3"
[[notify]]
{notify}
"#,
        qlik = qlik_section(&sim)
    );
    let path = common::harness::write_config(dir.path(), &text);
    let out = common::harness::run_cli(
        &["rotate", "--all", "-c", path.to_str().unwrap()],
        &common::harness::env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 64, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains(want), "want {want:?} in {}", out.stderr);
    assert!(!out.stderr.contains(CANARY) && !out.stdout.contains(CANARY));
    assert!(with_method(&sim, "PATCH").is_empty(), "nothing is PATCHed");
}

#[tokio::test]
async fn config_http_url_to_another_host_exits_64() {
    config_error(
        r#"url = "http://hooks.example.com/x""#,
        None,
        "notify[0].url: must use https",
    )
    .await;
}

#[tokio::test]
async fn config_url_with_a_password_exits_64_without_quoting_it() {
    config_error(
        &format!(r#"url = "https://u:{CANARY}@hooks.example.com/x""#),
        None,
        "notify[0].url: must not contain a user name or password",
    )
    .await;
}

#[tokio::test]
async fn config_missing_url_exits_64() {
    config_error(r#"format = "json""#, None, "notify[0].url").await;
}

#[tokio::test]
async fn config_unknown_format_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nformat = \"teams\"",
        None,
        "notify[0].format: unknown format",
    )
    .await;
}

#[tokio::test]
async fn config_unknown_outcome_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\non = [\"failed\", \"exploded\"]",
        None,
        "notify[0].on[1]: unknown outcome",
    )
    .await;
}

#[tokio::test]
async fn config_empty_on_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\non = []",
        None,
        "notify[0].on: is empty",
    )
    .await;
}

#[tokio::test]
async fn config_timeout_out_of_range_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\ntimeout = \"10m\"",
        None,
        "notify[0].timeout: expected a duration from 1s to 1m",
    )
    .await;
}

#[tokio::test]
async fn config_retries_out_of_range_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nretries = 99",
        None,
        "notify[0].retries",
    )
    .await;
}

#[tokio::test]
async fn config_unknown_key_exits_64() {
    config_error(
        &format!("url = \"https://hooks.example.com/x\"\ntoken = \"{CANARY}\""),
        None,
        "notify[0].token",
    )
    .await;
}

#[tokio::test]
async fn config_missing_headers_file_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nheaders_from_file = \"nope\"",
        None,
        "notify[0].headers_from_file: cannot read",
    )
    .await;
}

#[tokio::test]
async fn config_headers_file_line_without_a_colon_exits_64_without_quoting_it() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nheaders_from_file = \"hook-headers\"",
        Some(&format!("Bearer {CANARY}\n")),
        "notify[0].headers_from_file: line 1: expected `Name: value`",
    )
    .await;
}

#[tokio::test]
async fn config_headers_file_with_a_control_character_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nheaders_from_file = \"hook-headers\"",
        Some(&format!("Authorization: Bearer {CANARY}\u{7}\n")),
        "notify[0].headers_from_file: line 1: the value of Authorization is empty or not printable ASCII",
    )
    .await;
}

#[tokio::test]
async fn config_headers_file_setting_host_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nheaders_from_file = \"hook-headers\"",
        Some("Host: evil.example\n"),
        "notify[0].headers_from_file: line 1: header Host is set by the rotator",
    )
    .await;
}

#[tokio::test]
async fn config_notify_not_an_array_exits_64() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[sources.vault]\ntype = \"file\"\npath = \"s\"\n[[jobs]]\nname = \"s3\"\nconnection = {{ id = \"{S3_ID}\" }}\nconnector = \"File_AmazonS3ConnectorV2\"\nsource = \"vault\"\nsecret = \"s3\"\n[notify]\nurl = \"https://hooks.example.com/x\"\n",
        qlik_section(&sim)
    );
    let path = common::harness::write_config(dir.path(), &text);
    let out = common::harness::run_cli(
        &["rotate", "--all", "-c", path.to_str().unwrap()],
        &common::harness::env(&[("QLIK_API_KEY", API_KEY)]),
    )
    .await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("notify: expected an array of tables"),
        "{}",
        out.stderr
    );
    assert!(with_method(&sim, "PATCH").is_empty());
}

/// The daemon spawns the notifier: a `run_on_start` job whose secret is missing is `failed`
/// at `fetch`, the webhook hears of it, and `/metrics` counts it.
#[tokio::test]
async fn the_daemon_notifies_a_failed_run_and_counts_it() {
    let sim = tenant(SimConfig::default()).await;
    let (addr, got) = receiver(&[], Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vault")).unwrap();
    let text = format!(
        r#"{qlik}write_budget_per_min = 0
[sources.vault]
type = "file"
path = "vault"
[daemon]
state_dir = "state"
[metrics]
listen = "127.0.0.1:0"
[[notify]]
url = "http://{addr}/hook"
format = "slack"
[[jobs]]
name = "s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "missing"
run_on_start = true
"#,
        qlik = qlik_section(&sim)
    );
    let input: HashMap<String, String> = [("QLIK_API_KEY".to_owned(), API_KEY.to_owned())].into();
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    let r = qlik_rotator::daemon::start(&cfg, &input)
        .await
        .expect("daemon starts");
    assert!(
        wait_until(Duration::from_secs(10), || !got.lock().unwrap().is_empty()).await,
        "no notification"
    );
    let body = got.lock().unwrap()[0].2.clone();
    let v: Value = serde_json::from_str(&body).unwrap();
    let text = v["text"].as_str().unwrap();
    assert!(text.contains("job `s3`"), "{text}");
    assert!(text.contains("*failed* at fetch ["), "{text}");
    let mut scraped = String::new();
    for _ in 0..100 {
        scraped = common::harness::http_get(r.addr, "/metrics").await.1;
        if metric(
            &scraped,
            "qlik_rotator_notifications_total",
            &[("result", "sent")],
        ) == Some(1.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric(
            &scraped,
            "qlik_rotator_notifications_total",
            &[("result", "sent")]
        ),
        Some(1.0),
        "{scraped}"
    );
    assert!(with_method(&sim, "PATCH").is_empty());
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn config_url_and_url_file_both_exits_64() {
    config_error(
        "url = \"https://hooks.example.com/x\"\nurl_file = \"hook-headers\"",
        Some("https://hooks.example.com/y\n"),
        "notify[0].url_file: give url or url_file, not both",
    )
    .await;
}

#[tokio::test]
async fn config_url_file_with_a_plain_http_url_exits_64_without_quoting_it() {
    config_error(
        "url_file = \"hook-headers\"",
        Some(&format!("http://hooks.example.com/{CANARY}\n")),
        "notify[0].url_file: must use https",
    )
    .await;
}
