//! The canary reload and rollback (issue 14 items 1–3), against the Qlik simulator over real
//! HTTP: a data source behind each connection accepts only its current credentials, and a
//! reload of an app succeeds only when every connection it reads through holds them.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration};

use common::harness::{API_KEY, S3_ID, SQL_ID, tenant, with_method};
use qlik_rotator::{
    app, config,
    rotation::{Outcome, Report, Rotator, RunOptions},
    secrets::{AnySource, fixed::FixedSource},
};
use qlik_sim::{
    Fault, SimConfig, Simulator,
    reloads::{App, DataSource, ForcedOutcome},
};
use serde_json::{Map, Value, json};

const APP: &str = "aaaaaaaa-0000-4000-8000-000000000001";
/// A unique secret string, asserted absent from every output.
const CANARY: &str = "CANARY-7f3e9b1c-secret-value";

fn accepts(pairs: &[(&str, &str)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect()
}

struct World {
    sim: Simulator,
    _dir: tempfile::TempDir,
    cfg: config::Config,
    rotator: Rotator,
    vault: Arc<AnySource>,
}

impl World {
    fn put(&self, id: &str, text: &str) -> String {
        match &*self.vault {
            AnySource::Fixed(f) => f.put(id, text),
            _ => unreachable!("the test vault is a fixed source"),
        }
    }

    fn job(&self, name: &str) -> &config::JobConfig {
        self.cfg.job(name).expect("job")
    }

    async fn run(&self, name: &str, opts: RunOptions) -> Vec<Report> {
        self.rotator.run(self.job(name), opts).await
    }

    fn reload_posts(&self) -> usize {
        with_method(&self.sim, "POST")
            .iter()
            .filter(|r| r.path.starts_with("/api/v1/reloads"))
            .count()
    }

    fn patches(&self) -> usize {
        with_method(&self.sim, "PATCH").len()
    }
}

/// The S3 and SQL connections of the harness tenant, a source behind each accepting `s3` and
/// `sql` credentials, an app reading through both, and jobs with `extra` keys.
async fn world(extra: &str) -> World {
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
    sim.add_source(DataSource {
        name: "sql.internal".into(),
        match_property: "host".into(),
        match_value: json!("sql.internal"),
        accepts: vec![accepts(&[("username", "fin"), ("password", "pw-good-1")])],
    });
    sim.add_app(App {
        id: APP.into(),
        name: "Sales and Finance".into(),
        connection_ids: vec![S3_ID.into(), SQL_ID.into()],
    });
    sim.set_reload_steps(Some(0));
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[qlik]
tenant_url = "{url}"
api_key_env = "QLIK_API_KEY"
request_timeout = "2s"
max_attempts = 2
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
{extra}
"#,
        url = sim.base_url()
    );
    let input: HashMap<String, String> = [("QLIK_API_KEY".to_owned(), API_KEY.to_owned())].into();
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    let client = Arc::new(app::qlik_client(&cfg, &input).unwrap());
    let vault = Arc::new(AnySource::Fixed(FixedSource::new()));
    let sources = HashMap::from([("vault".to_owned(), vault.clone())]);
    let rotator = Rotator::new(client, sources);
    World {
        sim,
        _dir: dir,
        cfg,
        rotator,
        vault,
    }
}

fn s3_secret(access: &str, secret: &str) -> String {
    json!({"accessKey": access, "secretKey": secret}).to_string()
}

/// Every printed form of the reports: lines, Debug, errors.
fn outputs(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| format!("{}\n{:?}\n", r.line(), r))
        .collect()
}

fn assert_no_canary(reports: &[Report]) {
    let out = outputs(reports);
    assert!(!out.contains(CANARY), "the canary secret leaked: {out}");
}

fn only(reports: &[Report]) -> &Report {
    assert_eq!(reports.len(), 1, "{reports:?}");
    &reports[0]
}

fn error_type(r: &Report) -> &'static str {
    r.outcome.error().map(|e| e.error_type()).unwrap_or("")
}

#[tokio::test]
async fn a_credential_the_source_accepts_is_rotated_and_proven_by_a_reload() {
    let w = world("").await;
    // The source already accepts the new credential (the admin rotated it at the source).
    w.sim.set_source_accepts(
        "s3://sales",
        vec![accepts(&[
            ("accessKey", "AKIAGOOD2"),
            ("secretKey", CANARY),
        ])],
    );
    // The SQL connection the app also reads through still holds credentials the source
    // accepts only once we say so:
    w.sim.set_source_accepts(
        "sql.internal",
        vec![accepts(&[
            ("username", "old_user"),
            ("password", "old-pass"),
        ])],
    );
    w.put("s3", &s3_secret("AKIAGOOD2", CANARY));
    w.sim.set_reload_steps(Some(2)); // two RELOADING answers, then the final status
    let reports = w.run("s3", RunOptions::default()).await;
    let r = only(&reports);
    assert!(matches!(r.outcome, Outcome::Rotated), "{}", r.line());
    let proof = r.canary.as_ref().expect("a canary proof");
    assert_eq!(proof.app, APP);
    assert!(r.line().contains("proven by canary reload"), "{}", r.line());
    assert_eq!(w.reload_posts(), 1);
    let gets = with_method(&w.sim, "GET")
        .iter()
        .filter(|q| q.path.starts_with("/api/v1/reloads/"))
        .count();
    assert_eq!(gets, 3, "polled until the final status");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_credential_the_source_rejects_is_canary_failed() {
    let w = world("").await;
    w.sim.set_source_accepts(
        "sql.internal",
        vec![accepts(&[
            ("username", "old_user"),
            ("password", "old-pass"),
        ])],
    );
    // The vault holds a credential the bucket does not accept.
    w.put("s3", &s3_secret("AKIAWRONG", CANARY));
    let reports = w.run("s3", RunOptions::default()).await;
    let r = only(&reports);
    assert!(
        matches!(r.outcome, Outcome::CanaryFailed(_)),
        "{}",
        r.line()
    );
    assert_eq!(r.outcome.label(), "canary_failed");
    assert_eq!(error_type(r), "canary_reload_failed");
    let e = r.outcome.error().unwrap();
    assert_eq!(e.stage().as_str(), "canary");
    let line = r.line();
    assert!(line.contains("FAILED [EngineReloadFailed]"), "{line}");
    assert!(line.contains("rejected the credentials"), "{line}");
    // Verified: the PATCH went through, but the outcome is not `rotated`.
    assert_eq!(w.patches(), 1);
    assert_no_canary(&reports);
}

async fn forced(status: &str) -> (World, Vec<Report>) {
    let w = world("").await;
    w.put("s3", &s3_secret("AKIAX", CANARY));
    w.sim.force_next_reload(ForcedOutcome {
        status: status.into(),
        error_code: Some("E-CODE\u{1b}[31m".into()),
        error_message: Some(format!("bad things, the key was {CANARY}\nforged: line")),
    });
    let reports = w.run("s3", RunOptions::default()).await;
    (w, reports)
}

#[tokio::test]
async fn a_failed_reload_carries_its_code_and_a_redacted_escaped_message() {
    let (_w, reports) = forced("FAILED").await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_reload_failed");
    let line = r.line();
    assert!(line.contains("E-CODE\\u{1b}[31m"), "{line}");
    assert!(line.contains("\\nforged: line"), "{line}");
    assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_canceled_reload_is_canary_failed() {
    let (_w, reports) = forced("CANCELED").await;
    assert_eq!(error_type(only(&reports)), "canary_reload_canceled");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn an_exceeded_limit_reload_is_canary_failed() {
    let (_w, reports) = forced("EXCEEDED_LIMIT").await;
    assert_eq!(error_type(only(&reports)), "canary_reload_exceeded_limit");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_reload_that_never_finishes_times_out() {
    let w = world("canary_timeout = \"1s\"").await;
    w.put("s3", &s3_secret("AKIAX", CANARY));
    w.sim.set_reload_steps(None);
    let started = std::time::Instant::now();
    let reports = w.run("s3", RunOptions::default()).await;
    let took = started.elapsed();
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_timeout", "{}", r.line());
    assert!(r.line().contains("last status RELOADING"), "{}", r.line());
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_429_on_queueing_is_retried_then_proven() {
    let w = world("").await;
    w.sim.set_source_accepts(
        "s3://sales",
        vec![accepts(&[
            ("accessKey", "AKIAGOOD3"),
            ("secretKey", CANARY),
        ])],
    );
    w.sim.set_source_accepts(
        "sql.internal",
        vec![accepts(&[
            ("username", "old_user"),
            ("password", "old-pass"),
        ])],
    );
    w.put("s3", &s3_secret("AKIAGOOD3", CANARY));
    w.sim.inject(Fault::RateLimited {
        method: Some("POST".into()),
        path_prefix: Some("/api/v1/reloads".into()),
        retry_after_secs: 1,
        times: 1,
    });
    let reports = w.run("s3", RunOptions::default()).await;
    let r = only(&reports);
    assert!(matches!(r.outcome, Outcome::Rotated), "{}", r.line());
    let posts: Vec<u16> = with_method(&w.sim, "POST")
        .iter()
        .filter(|q| q.path == "/api/v1/reloads")
        .map(|q| q.status)
        .collect();
    assert_eq!(posts, [429, 201]);
}

#[tokio::test]
async fn a_429_that_outlasts_the_retries_is_canary_rate_limited() {
    let w = world("").await;
    w.put("s3", &s3_secret("AKIAX", CANARY));
    w.sim.inject(Fault::RateLimited {
        method: Some("POST".into()),
        path_prefix: Some("/api/v1/reloads".into()),
        retry_after_secs: 0,
        times: 10,
    });
    let reports = w.run("s3", RunOptions::default()).await;
    assert_eq!(error_type(only(&reports)), "canary_rate_limited");
    assert_no_canary(&reports);
}

async fn hostile(fields: Vec<(String, Option<Value>)>, method: &str) -> Vec<Report> {
    let w = world("").await;
    w.put("s3", &s3_secret("AKIAX", CANARY));
    w.sim.set_reload_steps(Some(0));
    w.sim.inject(Fault::RewriteFields {
        method: Some(method.into()),
        path_prefix: Some("/api/v1/reloads".into()),
        fields,
        times: 5,
    });
    w.run("s3", RunOptions::default()).await
}

#[tokio::test]
async fn a_reload_answer_about_another_app_is_refused() {
    let reports = hostile(
        vec![(
            "appId".into(),
            Some(json!("bbbbbbbb-0000-4000-8000-00000000000b\n")),
        )],
        "GET",
    )
    .await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_bad_answer", "{}", r.line());
    assert!(r.line().contains("about app"), "{}", r.line());
    assert!(!r.line().contains('\n'));
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_queue_answer_about_another_app_is_refused() {
    let reports = hostile(
        vec![(
            "appId".into(),
            Some(json!("cccccccc-0000-4000-8000-00000000000c")),
        )],
        "POST",
    )
    .await;
    assert_eq!(error_type(only(&reports)), "canary_bad_answer");
}

#[tokio::test]
async fn a_reload_answer_about_another_reload_is_refused() {
    let reports = hostile(
        vec![
            ("id".into(), Some(json!("000000000000000000000bad"))),
            ("status".into(), Some(json!("SUCCEEDED"))),
        ],
        "GET",
    )
    .await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_bad_answer");
    assert!(r.line().contains("about reload"), "{}", r.line());
}

#[tokio::test]
async fn a_queued_reload_without_a_usable_id_is_refused() {
    let reports = hostile(vec![("id".into(), Some(json!("../../x")))], "POST").await;
    assert_eq!(error_type(only(&reports)), "canary_bad_answer");
}

#[tokio::test]
async fn an_unknown_status_is_refused_not_taken_for_success() {
    let reports = hostile(
        vec![("status".into(), Some(json!("SUCCEEDED\u{202e}")))],
        "GET",
    )
    .await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_bad_answer");
    assert!(r.line().contains("none of the seven"), "{}", r.line());
    assert!(!r.line().contains('\u{202e}'));
}

#[tokio::test]
async fn a_huge_log_with_control_characters_is_capped_and_escaped() {
    let log = format!("{CANARY}\u{1b}]0;owned\u{7}{}", "x".repeat(1_000_000));
    let reports = hostile(
        vec![
            ("status".into(), Some(json!("FAILED"))),
            ("log".into(), Some(json!(log))),
            ("errorMessage".into(), None),
        ],
        "GET",
    )
    .await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_reload_failed");
    let line = r.line();
    assert!(line.len() < 2_000, "{} bytes", line.len());
    assert!(!line.contains('\u{1b}') && !line.contains('\u{7}'));
    assert_no_canary(&reports);
}

#[tokio::test]
async fn a_log_beyond_the_body_cap_is_not_read() {
    let reports = hostile(
        vec![("log".into(), Some(json!("y".repeat(5 * 1024 * 1024))))],
        "GET",
    )
    .await;
    let r = only(&reports);
    assert_eq!(error_type(r), "canary_poll", "{}", r.line());
}

#[tokio::test]
async fn fan_out_jobs_share_one_canary() {
    let sim = tenant(SimConfig::default()).await;
    sim.add_app(App {
        id: APP.into(),
        name: "Two buckets".into(),
        connection_ids: vec![S3_ID.into()],
    });
    sim.set_reload_steps(Some(0));
    let mut second = qlik_sim::SeedConnection::new(
        "Sales S3 copy",
        "File_AmazonS3ConnectorV2",
        json!({"region": "eu-west-1", "bucketName": "sales", "accessKey": "AKIAOLD", "secretKey": "old-secret"}),
    );
    let second_id = "44444444-4444-4444-8444-444444444444";
    second.id = Some(second_id.into());
    sim.add_connection(second);
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"[qlik]
tenant_url = "{url}"
api_key_env = "QLIK_API_KEY"
[sources.vault]
type = "file"
path = "secrets"
[[jobs]]
name = "fan"
connections = [{{ id = "{S3_ID}" }}, {{ id = "{second_id}" }}]
connector = "File_AmazonS3ConnectorV2"
source = "vault"
secret = "s3"
canary_app = "{APP}"
"#,
        url = sim.base_url()
    );
    let input: HashMap<String, String> = [("QLIK_API_KEY".to_owned(), API_KEY.to_owned())].into();
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    let client = Arc::new(app::qlik_client(&cfg, &input).unwrap());
    let fixed = FixedSource::new();
    fixed.put("s3", s3_secret("AKIANEW", CANARY));
    let vault = Arc::new(AnySource::Fixed(fixed));
    let rotator = Rotator::new(client, HashMap::from([("vault".to_owned(), vault)]));
    let reports = rotator
        .run(cfg.job("fan").unwrap(), RunOptions::default())
        .await;
    assert_eq!(reports.len(), 2);
    for r in &reports {
        assert!(matches!(r.outcome, Outcome::Rotated), "{}", r.line());
    }
    assert_eq!(
        reports[0].canary, reports[1].canary,
        "one reload proves both"
    );
    let posts = with_method(&sim, "POST")
        .iter()
        .filter(|q| q.path == "/api/v1/reloads")
        .count();
    assert_eq!(posts, 1, "one canary run for the fan-out job");
    assert_no_canary(&reports);
}

// === rollback ===

/// A verified good version v1 (applied and proven), then a bad v2 in the vault.
async fn good_then_bad(extra: &str) -> (World, HashMap<String, String>) {
    let w = world(extra).await;
    w.sim.set_source_accepts(
        "sql.internal",
        vec![accepts(&[
            ("username", "old_user"),
            ("password", "old-pass"),
        ])],
    );
    w.sim.set_source_accepts(
        "s3://sales",
        vec![accepts(&[
            ("accessKey", "AKIAGOOD1"),
            ("secretKey", "good-1"),
        ])],
    );
    let v1 = w.put("s3", &s3_secret("AKIAGOOD1", "good-1"));
    let first = w.run("s3", RunOptions::default()).await;
    assert!(
        matches!(only(&first).outcome, Outcome::Rotated),
        "{}",
        only(&first).line()
    );
    w.put("s3", &s3_secret("AKIABAD2", CANARY));
    w.sim.clear_requests();
    let key = only(&first).connection_key.clone();
    (w, HashMap::from([(key, v1)]))
}

#[tokio::test]
async fn rollback_restores_the_last_verified_version_and_proves_it() {
    let (w, last) = good_then_bad("rollback = true").await;
    let opts = RunOptions {
        last_applied: last,
        ..RunOptions::default()
    };
    let reports = w.run("s3", opts).await;
    let r = only(&reports);
    match &r.outcome {
        Outcome::RolledBack { cause, restored } => {
            assert_eq!(restored, "v1");
            assert_eq!(cause.error_type(), "canary_reload_failed");
        }
        other => panic!("expected rolled_back, got {}: {}", other.label(), r.line()),
    }
    assert!(r.canary.is_some(), "the rollback was proven by a reload");
    assert_eq!(
        w.patches(),
        2,
        "the bad version, then the last verified one"
    );
    assert_eq!(w.reload_posts(), 2, "a canary for each");
    let stored = w.sim.stored(S3_ID).unwrap();
    assert_eq!(stored["connectionProperties"]["secretKey"], "good-1");
    assert!(
        r.line().contains("rolled_back to secret version v1"),
        "{}",
        r.line()
    );
    assert_no_canary(&reports);
}

#[tokio::test]
async fn without_rollback_the_bad_version_stays_canary_failed() {
    let (w, last) = good_then_bad("").await;
    let opts = RunOptions {
        last_applied: last,
        ..RunOptions::default()
    };
    let reports = w.run("s3", opts).await;
    assert_eq!(only(&reports).outcome.label(), "canary_failed");
    assert_eq!(w.patches(), 1);
}

#[tokio::test]
async fn no_rollback_without_a_last_verified_version() {
    let w = world("rollback = true").await;
    w.put("s3", &s3_secret("AKIABAD", CANARY));
    let reports = w.run("s3", RunOptions::default()).await;
    let r = only(&reports);
    assert_eq!(r.outcome.label(), "canary_failed");
    assert!(
        r.line().contains("no verified version is recorded"),
        "{}",
        r.line()
    );
    assert_eq!(w.patches(), 1, "nothing re-PATCHed");
    assert_no_canary(&reports);
}

#[tokio::test]
async fn never_rolls_back_past_the_last_verified_version() {
    let (w, _) = good_then_bad("rollback = true").await;
    // State says the failing version itself is the last verified one.
    let key = S3_ID.to_owned();
    let opts = RunOptions {
        last_applied: HashMap::from([(key.clone(), "v2".to_owned())]),
        force: true,
        ..RunOptions::default()
    };
    let reports = w.run("s3", opts).await;
    let r = only(&reports);
    assert_eq!(r.connection_key, key);
    assert_eq!(r.outcome.label(), "canary_failed");
    assert!(
        r.line().contains("never rolling back past it"),
        "{}",
        r.line()
    );
    assert_eq!(
        w.patches(),
        1,
        "v1 (older than the last verified) never applied"
    );
}

#[tokio::test]
async fn the_failed_version_is_not_reapplied_until_the_vault_moves() {
    let (w, last) = good_then_bad("rollback = true").await;
    let key = last.keys().next().unwrap().clone();
    // The runner records the failed version in state; the next run passes it in.
    let opts = RunOptions {
        last_applied: last.clone(),
        failed_versions: HashMap::from([(key.clone(), "v2".to_owned())]),
        ..RunOptions::default()
    };
    let reports = w.run("s3", opts.clone()).await;
    let r = only(&reports);
    assert_eq!(error_type(r), "known_bad_version", "{}", r.line());
    assert_eq!(w.patches(), 0, "nothing sent for a known-bad version");
    assert_eq!(w.reload_posts(), 0);
    // The vault moves to v3, which the source accepts: rotated again.
    w.sim.set_source_accepts(
        "s3://sales",
        vec![accepts(&[
            ("accessKey", "AKIAGOOD3"),
            ("secretKey", "good-3"),
        ])],
    );
    w.put("s3", &s3_secret("AKIAGOOD3", "good-3"));
    let reports = w.run("s3", opts).await;
    assert!(
        matches!(only(&reports).outcome, Outcome::Rotated),
        "{}",
        only(&reports).line()
    );
    assert_eq!(w.patches(), 1);
}

#[tokio::test]
async fn a_failed_verify_is_rolled_back_too() {
    let (w, last) = good_then_bad("rollback = true").await;
    w.sim.set_source_accepts(
        "s3://sales",
        vec![
            accepts(&[("accessKey", "AKIAGOOD1"), ("secretKey", "good-1")]),
            accepts(&[("accessKey", "AKIABAD2"), ("secretKey", CANARY)]),
        ],
    );
    // The verify GET of the first PATCH shows `updated` unchanged: verify_failed.
    w.sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some(format!("/api/v1/data-connections/{S3_ID}")),
        fields: vec![("updated".into(), Some(json!("2000-01-01T00:00:00.000Z")))],
        times: 2,
    });
    let opts = RunOptions {
        last_applied: last,
        ..RunOptions::default()
    };
    let reports = w.run("s3", opts).await;
    let r = only(&reports);
    match &r.outcome {
        Outcome::RolledBack { cause, .. } => assert_eq!(cause.stage().as_str(), "verify"),
        other => panic!("expected rolled_back, got {}: {}", other.label(), r.line()),
    }
    assert_no_canary(&reports);
}
