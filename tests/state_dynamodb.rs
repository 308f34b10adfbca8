//! `DynamoState` against a real moto DynamoDB over HTTP: leases and fences, records under a
//! lease, history, health, unreachable endpoints, and hostile items in the table.
//! Run `bash scripts/setup-moto.sh` first. One moto serves the whole file; each test has its
//! own table.

mod common;

use std::{
    collections::HashMap,
    io::Write,
    net::{Ipv4Addr, TcpListener},
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::{
    Client,
    types::{AttributeValue, KeyType},
};
use common::{
    dynamodb::{client_for, create_state_table, create_table_with},
    moto::{Moto, free_port},
};
use qlik_rotator::state::{
    Attempt, HistoryQuery, JobState, Lease, StateBackend, StateError,
    dynamodb::{DynamoState, MAX_FIELD_CHARS, OPERATION_TIMEOUT},
};

/// A unique string that must never appear in an error or a log line.
const CANARY: &str = "CANARY-dyn-7f3a9c1e-never-print";
const TTL: Duration = Duration::from_secs(30);
const RETENTION: Duration = Duration::from_secs(90 * 86_400);

fn moto() -> &'static Moto {
    static MOTO: OnceLock<Moto> = OnceLock::new();
    MOTO.get_or_init(Moto::start)
}

fn client() -> Client {
    client_for(&moto().endpoint)
}

/// A fresh table (unique name) and a backend on it.
async fn fresh() -> (DynamoState, Client, String) {
    let client = client();
    let table = format!("state-{}", uuid::Uuid::new_v4().simple());
    create_state_table(&client, &table).await;
    (
        DynamoState::from_client(client.clone(), &table, RETENTION),
        client,
        table,
    )
}

fn st(conn: &str, version: &str, at: i64) -> JobState {
    JobState {
        connection_id: conn.to_owned(),
        applied_version: version.to_owned(),
        applied_at: at,
        checked_at: 0,
        failed_version: None,
    }
}

/// Raw attributes of an item.
type Attrs<'a> = Vec<(&'a str, AttributeValue)>;

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

fn n(v: &str) -> AttributeValue {
    AttributeValue::N(v.to_owned())
}

async fn put_raw(client: &Client, table: &str, item: &[(&str, AttributeValue)]) {
    let item: HashMap<String, AttributeValue> = item
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .expect("PutItem (raw)");
}

async fn get_raw(
    client: &Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> HashMap<String, AttributeValue> {
    client
        .get_item()
        .table_name(table)
        .key("pk", s(pk))
        .key("sk", s(sk))
        .consistent_read(true)
        .send()
        .await
        .expect("GetItem (raw)")
        .item
        .unwrap_or_default()
}

/// Log lines written while the returned guard lives (this thread; `#[tokio::test]` runs on
/// one).
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// No raw control character (other than the line ends of the log format) and no canary.
fn assert_clean(what: &str, text: &str) {
    assert!(!text.contains(CANARY), "{what} shows the canary: {text}");
    assert!(
        !text
            .chars()
            .any(|c| c != '\n' && qlik_rotator::text::is_unsafe(c)),
        "{what} has an unescaped control character: {text:?}"
    );
}

// --- leases ------------------------------------------------------------------------------

#[tokio::test]
async fn lease_contention_between_two_owners() {
    let (db, _, _) = fresh().await;
    let a = db.acquire_lease("job-1", "A", TTL, 1_000).await.unwrap();
    let a = a.expect("A takes a free lease");
    assert_eq!((a.owner.as_str(), a.fence, a.expires_at), ("A", 1, 1_030));
    assert_eq!(
        db.acquire_lease("job-1", "B", TTL, 1_001).await.unwrap(),
        None
    );
    // Another job is independent.
    let b = db.acquire_lease("job-2", "B", TTL, 1_001).await.unwrap();
    assert_eq!(b.map(|l| l.fence), Some(1));
}

#[tokio::test]
async fn concurrent_acquires_grant_the_lease_to_exactly_one_owner() {
    let (db, _, _) = fresh().await;
    let db = Arc::new(db);
    let tasks: Vec<_> = (0..12)
        .map(|i| {
            let db = db.clone();
            tokio::spawn(async move {
                db.acquire_lease("contended", &format!("owner-{i}"), TTL, 2_000)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut granted = Vec::new();
    for t in tasks {
        if let Some(lease) = t.await.unwrap() {
            granted.push(lease);
        }
    }
    assert_eq!(granted.len(), 1, "granted to {granted:?}");
    assert_eq!(granted[0].fence, 1);
}

#[tokio::test]
async fn a_refused_replica_asks_again_only_once_the_lease_could_have_lapsed() {
    let (a_db, client, table) = fresh().await;
    let b_db = DynamoState::from_client(client.clone(), &table, RETENTION);
    let a = a_db
        .acquire_lease("j", "A", TTL, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        b_db.acquire_lease("j", "B", TTL, 1_001).await.unwrap(),
        None
    );
    a_db.release_lease(&a).await.unwrap();
    // Released early, but B remembers A's expiry (1_030) and sends nothing before it.
    assert_eq!(
        b_db.acquire_lease("j", "B", TTL, 1_002).await.unwrap(),
        None
    );
    assert_eq!(
        b_db.acquire_lease("j", "B", TTL, 1_030).await.unwrap(),
        None
    );
    // A replica that did not ask before takes it at once.
    let c = DynamoState::from_client(client, &table, RETENTION);
    assert_eq!(
        c.acquire_lease("j", "C", TTL, 1_003)
            .await
            .unwrap()
            .map(|l| l.fence),
        Some(2)
    );
    // After A's expiry B asks again, finds C's live lease (until 1_033), remembers that.
    assert_eq!(
        b_db.acquire_lease("j", "B", TTL, 1_031).await.unwrap(),
        None
    );
    assert_eq!(
        b_db.acquire_lease("j", "B", TTL, 1_034)
            .await
            .unwrap()
            .map(|l| l.fence),
        Some(3)
    );
}

#[tokio::test]
async fn renew_by_the_holder_keeps_the_fence_and_moves_the_expiry() {
    let (db, _, _) = fresh().await;
    let first = db.acquire_lease("j", "A", TTL, 100).await.unwrap().unwrap();
    let renewed = db.acquire_lease("j", "A", TTL, 120).await.unwrap().unwrap();
    assert_eq!(renewed.fence, first.fence);
    assert_eq!(renewed.expires_at, 150);
    // The renewal counted: B just before the renewed expiry is refused.
    assert_eq!(db.acquire_lease("j", "B", TTL, 150).await.unwrap(), None);
    // Past its expiry the holder takes it anew: a new fence, so a run of its that outlived
    // the old lease cannot record.
    let late = db.acquire_lease("j", "A", TTL, 500).await.unwrap().unwrap();
    assert_eq!((late.fence, late.expires_at), (first.fence + 1, 530));
}

#[tokio::test]
async fn expiry_and_takeover_bump_the_fence() {
    let (db, _, _) = fresh().await;
    let ttl = Duration::from_secs(5);
    let a = db
        .acquire_lease("j", "A", ttl, 1_000)
        .await
        .unwrap()
        .unwrap();
    // At the expiry instant the lease still holds (strictly earlier expiry lapses).
    assert_eq!(db.acquire_lease("j", "B", ttl, 1_005).await.unwrap(), None);
    let b = db
        .acquire_lease("j", "B", ttl, 1_006)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.fence, a.fence + 1);
    assert_eq!(b.owner, "B");
    // A comes back: B's lease is live, A gets nothing.
    assert_eq!(db.acquire_lease("j", "A", ttl, 1_007).await.unwrap(), None);
    // A takes it back after B lapses: a third fence.
    let a2 = db
        .acquire_lease("j", "A", ttl, 1_020)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(a2.fence, a.fence + 2);
}

#[tokio::test]
async fn a_stale_fence_record_is_refused_and_the_new_holders_record_stands() {
    let (db, _, _) = fresh().await;
    let ttl = Duration::from_secs(5);
    let a = db
        .acquire_lease("job", "A", ttl, 1_000)
        .await
        .unwrap()
        .unwrap();
    db.record("key", st("c1", "v1", 1_000), Some(&a))
        .await
        .unwrap();
    let b = db
        .acquire_lease("job", "B", ttl, 1_010)
        .await
        .unwrap()
        .unwrap();
    db.record("key", st("c1", "v2", 1_010), Some(&b))
        .await
        .unwrap();
    let err = db
        .record("key", st("c1", "v-stale", 1_011), Some(&a))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StateError::LeaseLost { job, fence } if job == "job" && *fence == a.fence),
        "{err:?}"
    );
    assert_eq!(db.get("key").await.unwrap().unwrap().applied_version, "v2");
    // A lease with the current fence but another owner's name is refused too.
    let forged = Lease {
        owner: "A".into(),
        ..b.clone()
    };
    assert!(matches!(
        db.record("key", st("c1", "v-forged", 1_012), Some(&forged))
            .await,
        Err(StateError::LeaseLost { .. })
    ));
    // And a lease on a job that was never taken.
    let never = Lease {
        job: "never".into(),
        owner: "A".into(),
        fence: 1,
        expires_at: 2_000,
    };
    assert!(matches!(
        db.record("key", st("c1", "v-never", 1_012), Some(&never))
            .await,
        Err(StateError::LeaseLost { .. })
    ));
    assert_eq!(db.get("key").await.unwrap().unwrap().applied_version, "v2");
}

#[tokio::test]
async fn the_same_owners_older_lease_is_refused_by_its_fence_alone() {
    let (db, _, _) = fresh().await;
    let ttl = Duration::from_secs(5);
    let a1 = db
        .acquire_lease("job", "A", ttl, 1_000)
        .await
        .unwrap()
        .unwrap();
    let b = db
        .acquire_lease("job", "B", ttl, 1_010)
        .await
        .unwrap()
        .unwrap();
    let a3 = db
        .acquire_lease("job", "A", ttl, 1_020)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((a1.fence, b.fence, a3.fence), (1, 2, 3));
    // Same owner name, old fence: B may have recorded in between, so A's old run must not.
    assert!(matches!(
        db.record("key", st("c", "v-old", 1_021), Some(&a1)).await,
        Err(StateError::LeaseLost { fence: 1, .. })
    ));
    assert_eq!(db.get("key").await.unwrap(), None);
    db.record("key", st("c", "v-new", 1_021), Some(&a3))
        .await
        .unwrap();
    assert_eq!(
        db.get("key").await.unwrap().unwrap().applied_version,
        "v-new"
    );
}

#[tokio::test]
async fn a_stale_fence_touch_is_refused_and_a_current_one_writes() {
    let (db, client, table) = fresh().await;
    let ttl = Duration::from_secs(5);
    let a = db
        .acquire_lease("job", "A", ttl, 10_000)
        .await
        .unwrap()
        .unwrap();
    db.record("key", st("c1", "v1", 10_000), Some(&a))
        .await
        .unwrap();
    let b = db
        .acquire_lease("job", "B", ttl, 20_000)
        .await
        .unwrap()
        .unwrap();
    // Two hours later the record is old enough to be touched.
    let later = 10_000 + 7_200;
    assert!(matches!(
        db.touch("key", later, Some(&a)).await,
        Err(StateError::LeaseLost { .. })
    ));
    let raw = get_raw(&client, &table, "state", "key").await;
    assert_eq!(
        raw.get("checked_at"),
        Some(&n("0")),
        "the stale touch wrote"
    );
    db.touch("key", later, Some(&b)).await.unwrap();
    assert_eq!(db.get("key").await.unwrap().unwrap().checked_at, later);
}

#[tokio::test]
async fn touch_writes_at_most_once_per_granularity() {
    let (db, client, table) = fresh().await;
    db.record("k", st("c", "v", 1_000), None).await.unwrap();
    db.touch("k", 1_500, None).await.unwrap();
    assert_eq!(db.get("k").await.unwrap().unwrap().checked_at, 0);
    db.touch("k", 1_000 + 3_600, None).await.unwrap();
    assert_eq!(db.get("k").await.unwrap().unwrap().checked_at, 4_600);
    // A missing key is not created by a touch.
    db.touch("absent", 99_999, None).await.unwrap();
    assert!(get_raw(&client, &table, "state", "absent").await.is_empty());
}

#[tokio::test]
async fn release_frees_the_lease_and_a_stale_release_changes_nothing() {
    let (db, _, _) = fresh().await;
    let a = db
        .acquire_lease("j", "A", TTL, 1_000)
        .await
        .unwrap()
        .unwrap();
    db.release_lease(&a).await.unwrap();
    let b = db
        .acquire_lease("j", "B", TTL, 1_001)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.fence, a.fence + 1, "a release must not reset the fence");
    // A's late release does not free B's lease.
    db.release_lease(&a).await.unwrap();
    assert_eq!(db.acquire_lease("j", "C", TTL, 1_002).await.unwrap(), None);
}

#[tokio::test]
async fn records_load_and_get_round_trip() {
    let (db, _, _) = fresh().await;
    assert!(db.load().await.unwrap().is_empty());
    assert_eq!(db.get("a").await.unwrap(), None);
    for i in 0..30 {
        db.record(
            &format!("key-{i:02}"),
            st("conn", &format!("v{i}"), 100 + i),
            None,
        )
        .await
        .unwrap();
    }
    db.record("key-05", st("conn", "v5b", 200), None)
        .await
        .unwrap();
    let all = db.load().await.unwrap();
    assert_eq!(all.len(), 30);
    assert_eq!(all["key-05"], st("conn", "v5b", 200));
    assert_eq!(all["key-29"], st("conn", "v29", 129));
    assert_eq!(db.kind(), "dynamodb");
}

#[tokio::test]
async fn a_closed_backend_refuses_writes() {
    let (db, _, _) = fresh().await;
    db.close().await;
    assert!(matches!(
        db.record("k", st("c", "v", 1), None).await,
        Err(StateError::Closed)
    ));
    assert!(matches!(
        db.acquire_lease("j", "A", TTL, 1).await,
        Err(StateError::Closed)
    ));
}

// --- history -----------------------------------------------------------------------------

fn attempt(at_ms: i64, job: &str, conn: &str, outcome: &str) -> Attempt {
    Attempt {
        at_ms,
        job: job.to_owned(),
        connection: conn.to_owned(),
        outcome: outcome.to_owned(),
        stage: (outcome == "failed").then(|| "patch".to_owned()),
        error_type: (outcome == "failed").then(|| "http_5xx".to_owned()),
        secret_version: Some(format!("ver-{at_ms}")),
        duration_ms: 42,
    }
}

#[tokio::test]
async fn history_appends_lists_newest_first_and_filters() {
    let (db, _, _) = fresh().await;
    let rows = [
        attempt(1_000, "a", "c1", "rotated"),
        attempt(2_000, "b", "c2", "failed"),
        attempt(3_000, "a", "c1", "unchanged"),
        attempt(3_000, "a", "c3", "rotated"),
        attempt(4_000, "b", "c1", "rotated"),
    ];
    for r in &rows {
        db.append_history(r).await.unwrap();
    }
    let all = db.history(&HistoryQuery::default()).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[0], rows[4]);
    assert!(all.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    assert_eq!(all[3], rows[1], "every field round-trips");

    let job_a = db
        .history(&HistoryQuery {
            job: Some("a".into()),
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(job_a.len(), 3);
    assert!(job_a.iter().all(|r| r.job == "a"));

    let c1_since = db
        .history(&HistoryQuery {
            connection: Some("c1".into()),
            since_ms: Some(2_500),
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(
        c1_since.iter().map(|r| r.at_ms).collect::<Vec<_>>(),
        vec![4_000, 3_000]
    );

    let both = db
        .history(&HistoryQuery {
            job: Some("b".into()),
            connection: Some("c1".into()),
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(both, vec![rows[4].clone()]);

    let limited = db
        .history(&HistoryQuery {
            limit: 2,
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 2);
    assert_eq!(limited[0].at_ms, 4_000);
}

#[tokio::test]
async fn history_pages_through_more_than_one_query_page() {
    let (db, _, _) = fresh().await;
    for i in 0..60 {
        db.append_history(&attempt(
            10_000 + i,
            if i == 3 { "rare" } else { "busy" },
            "c",
            "rotated",
        ))
        .await
        .unwrap();
    }
    // The rare job's one row sits under 56 newer ones: the filter must page past them.
    let rare = db
        .history(&HistoryQuery {
            job: Some("rare".into()),
            limit: 1,
            ..HistoryQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(rare.len(), 1);
    assert_eq!(rare[0].at_ms, 10_003);
    assert_eq!(
        db.history(&HistoryQuery::default()).await.unwrap().len(),
        60
    );
}

#[tokio::test]
async fn history_items_carry_a_ttl_and_prune_deletes_the_old_ones() {
    let (db, client, table) = fresh().await;
    for at in [1_000_000, 2_000_000, 3_000_000] {
        db.append_history(&attempt(at, "j", "c", "rotated"))
            .await
            .unwrap();
    }
    let items = client
        .query()
        .table_name(&table)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", s("history"))
        .send()
        .await
        .unwrap()
        .items
        .unwrap();
    let ttls: Vec<_> = items.iter().map(|i| i.get("ttl").cloned()).collect();
    assert!(
        ttls.contains(&Some(n(&(1_000 + RETENTION.as_secs()).to_string()))),
        "{ttls:?}"
    );
    assert_eq!(db.prune_history(2_500_000).await.unwrap(), 2);
    let left = db.history(&HistoryQuery::default()).await.unwrap();
    assert_eq!(
        left.iter().map(|a| a.at_ms).collect::<Vec<_>>(),
        vec![3_000_000]
    );
    assert_eq!(db.prune_history(2_500_000).await.unwrap(), 0);
}

// --- health and reachability -------------------------------------------------------------

#[tokio::test]
async fn health_accepts_the_right_table() {
    let (db, _, _) = fresh().await;
    db.health().await.unwrap();
}

#[tokio::test]
async fn health_names_a_missing_table() {
    let db = DynamoState::from_client(client(), "no-such-table-xyz", RETENTION);
    let err = db.health().await.unwrap_err().to_string();
    assert!(err.contains("\"no-such-table-xyz\" not found"), "{err}");
    assert!(err.contains("checking the table"), "{err}");
    // And every other call fails clearly, without a PATCH-enabling answer.
    let err = db
        .acquire_lease("j", "A", TTL, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("not found"), "{err}");
}

#[tokio::test]
async fn health_refuses_a_wrong_key_schema() {
    let client = client();
    let table = format!("wrong-{}", uuid::Uuid::new_v4().simple());
    create_table_with(&client, &table, &[("id", KeyType::Hash)]).await;
    let err = DynamoState::from_client(client.clone(), &table, RETENTION)
        .health()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong key schema"), "{err}");
    assert!(err.contains("\"id\" HASH"), "{err}");
    assert!(err.contains(&table), "{err}");

    let swapped = format!("swapped-{}", uuid::Uuid::new_v4().simple());
    create_table_with(
        &client,
        &swapped,
        &[("sk", KeyType::Hash), ("pk", KeyType::Range)],
    )
    .await;
    let err = DynamoState::from_client(client, &swapped, RETENTION)
        .health()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("wrong key schema"), "{err}");
}

#[tokio::test]
async fn an_endpoint_that_is_gone_fails_fast() {
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let db = DynamoState::from_client(client_for(&endpoint), "state", RETENTION);
    let start = Instant::now();
    let health = db.health().await.unwrap_err().to_string();
    let lease = db.acquire_lease("j", "A", TTL, 1).await.unwrap_err();
    let record = db.record("k", st("c", "v", 1), None).await.unwrap_err();
    let elapsed = start.elapsed();
    println!("three calls to a closed port failed in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(10), "took {elapsed:?}");
    assert!(health.contains("could not connect"), "{health}");
    assert!(health.contains("\"state\""), "{health}");
    assert!(matches!(
        lease,
        StateError::Backend {
            backend: "dynamodb",
            ..
        }
    ));
    assert!(matches!(record, StateError::Backend { .. }));
}

#[tokio::test]
async fn an_endpoint_that_never_answers_times_out_instead_of_hanging() {
    // Accepts connections (the kernel's backlog) and never answers.
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let db = DynamoState::from_client(client_for(&endpoint), "state", RETENTION);
    let start = Instant::now();
    let err = tokio::time::timeout(OPERATION_TIMEOUT * 3, db.health())
        .await
        .expect("the backend's own timeout must fire first")
        .unwrap_err()
        .to_string();
    let elapsed = start.elapsed();
    println!("a silent endpoint failed after {elapsed:?}: {err}");
    assert!(
        elapsed <= OPERATION_TIMEOUT + Duration::from_secs(2),
        "{elapsed:?}"
    );
    assert!(err.contains("timed out"), "{err}");
    drop(listener);
}

#[tokio::test]
async fn denied_access_names_the_table_and_the_iam_action() {
    // A moto that checks credentials: unknown keys are refused.
    let strict = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let db = DynamoState::from_client(client_for(&strict.endpoint), "guarded", RETENTION);
    let err = db.health().await.unwrap_err().to_string();
    assert!(err.contains("access denied on table \"guarded\""), "{err}");
    assert!(err.contains("dynamodb:DescribeTable"), "{err}");
    let err = db
        .acquire_lease("j", "A", TTL, 1)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("dynamodb:UpdateItem"), "{err}");
}

// --- hostile items -----------------------------------------------------------------------

#[tokio::test]
async fn hostile_applied_version_items_are_skipped_and_logged_escaped() {
    let (db, client, table) = fresh().await;
    db.record("good", st("c", "v1", 5), None).await.unwrap();
    let huge = format!("{CANARY}{}", "x".repeat(200_000));
    let cases: Vec<(&str, Attrs)> = vec![
        (
            "version is a number",
            vec![
                ("applied_version", n("7")),
                ("connection_id", s(CANARY)),
                ("applied_at", n("1")),
            ],
        ),
        (
            "huge version",
            vec![
                ("applied_version", s(&huge)),
                ("connection_id", s("c")),
                ("applied_at", n("1")),
            ],
        ),
        (
            "time out of range",
            vec![
                ("applied_version", s(CANARY)),
                ("connection_id", s("c")),
                ("applied_at", n("1e100")),
            ],
        ),
        ("missing fields", vec![("secret", s(CANARY))]),
        (
            "list instead of string",
            vec![
                ("applied_version", AttributeValue::L(vec![s(CANARY)])),
                ("connection_id", s("c")),
                ("applied_at", n("1")),
            ],
        ),
    ];
    let keys = [
        "bad-type",
        "bad-huge",
        "bad\u{1b}[31mred\u{7}\n",
        "bad\u{202e}bidi",
        "bad-list",
    ];
    println!("{} hostile applied-version items", cases.len());
    for ((name, attrs), key) in cases.iter().zip(keys) {
        let mut item = vec![("pk", s("state")), ("sk", s(key))];
        item.extend(attrs.iter().cloned());
        put_raw(&client, &table, &item).await;
        println!("case: {name}");
    }
    let (logs, _guard) = Logs::capture();
    let all = db.load().await.unwrap();
    assert_eq!(all.keys().collect::<Vec<_>>(), vec!["good"]);
    for key in keys {
        assert_eq!(db.get(key).await.unwrap(), None, "{key:?}");
    }
    let logs = logs.text();
    assert!(
        logs.contains("skipping a malformed applied-version item"),
        "{logs}"
    );
    assert!(
        logs.contains("\\u{1b}[31mred"),
        "the key is shown escaped: {logs}"
    );
    assert!(
        logs.contains("applied_version: expected a string"),
        "{logs}"
    );
    assert_clean("logs", &logs);
    // A rotation then rewrites the item in good shape.
    db.record("bad-type", st("c", "v2", 9), None).await.unwrap();
    assert_eq!(db.get("bad-type").await.unwrap(), Some(st("c", "v2", 9)));
}

#[tokio::test]
async fn hostile_lease_items_are_refused_with_a_clear_error_never_taken() {
    let (db, client, table) = fresh().await;
    let cases: Vec<(&str, &str, Attrs)> = vec![
        (
            "fence is a string",
            "job-fence",
            vec![
                ("owner", s("X")),
                ("fence", s(CANARY)),
                ("expires_at", n("1")),
            ],
        ),
        (
            "no owner, live",
            "job-owner",
            vec![("fence", n("3")), ("expires_at", n("9999999999"))],
        ),
        (
            "expiry is a string",
            "job-exp",
            vec![
                ("owner", s("X")),
                ("fence", n("3")),
                ("expires_at", s(CANARY)),
            ],
        ),
        (
            "fence overflows",
            "job-\u{1b}]0;title\u{7}",
            vec![
                ("owner", s("X")),
                ("fence", n("99999999999999999999999")),
                ("expires_at", n("1")),
            ],
        ),
        (
            "huge owner",
            "job-huge",
            vec![
                ("owner", s(&format!("{CANARY}{}", "o".repeat(100_000)))),
                ("fence", n("3")),
                ("expires_at", n("9999999999")),
            ],
        ),
    ];
    println!("{} hostile lease items", cases.len());
    let (logs, _guard) = Logs::capture();
    for (name, job, attrs) in &cases {
        let mut item = vec![("pk", s("lease")), ("sk", s(job))];
        item.extend(attrs.iter().cloned());
        put_raw(&client, &table, &item).await;
        let result = db.acquire_lease(job, "A", TTL, 1_000).await;
        let err = match result {
            Err(e) => e.to_string(),
            Ok(lease) => panic!("case {name}: a hostile lease item was granted: {lease:?}"),
        };
        println!("case {name}: {err}");
        assert!(err.contains("lease"), "case {name}: {err}");
        assert!(err.contains("acquiring a lease"), "case {name}: {err}");
        assert_clean(name, &err);
        // Nor can this replica record under the lease it would have had.
        let guess = Lease {
            job: (*job).to_owned(),
            owner: "A".into(),
            fence: 4,
            expires_at: 9_999_999_999,
        };
        let refused = db.record(job, st("c", "v", 1), Some(&guess)).await;
        assert!(
            matches!(refused, Err(StateError::LeaseLost { .. })),
            "case {name}: {refused:?}"
        );
        assert!(get_raw(&client, &table, "state", job).await.is_empty());
    }
    assert_clean("logs", &logs.text());
}

#[tokio::test]
async fn a_lapsed_lease_item_without_an_owner_is_taken_over_with_a_bumped_fence() {
    let (db, client, table) = fresh().await;
    put_raw(
        &client,
        &table,
        &[
            ("pk", s("lease")),
            ("sk", s("j")),
            ("fence", n("41")),
            ("expires_at", n("1")),
        ],
    )
    .await;
    let lease = db
        .acquire_lease("j", "A", TTL, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((lease.owner.as_str(), lease.fence), ("A", 42));
    assert_eq!(
        get_raw(&client, &table, "lease", "j").await.get("owner"),
        Some(&s("A"))
    );
}

#[tokio::test]
async fn hostile_history_items_are_left_out_and_control_characters_round_trip_as_data() {
    let (db, client, table) = fresh().await;
    let odd = Attempt {
        job: "job\u{1b}[2J\nnext".into(),
        connection: "conn\u{202e}".into(),
        ..attempt(5_000, "", "", "failed")
    };
    db.append_history(&odd).await.unwrap();
    let long = Attempt {
        secret_version: Some("v".repeat(MAX_FIELD_CHARS * 3)),
        ..attempt(6_000, "j", "c", "rotated")
    };
    db.append_history(&long).await.unwrap();
    let hostile: Vec<Attrs> = vec![
        vec![("at_ms", s(CANARY))],
        vec![
            ("at_ms", n("7000")),
            ("job", n("1")),
            ("connection", s("c")),
            ("outcome", s("x")),
            ("duration_ms", n("1")),
        ],
        vec![
            ("at_ms", n("7001")),
            ("job", s("j")),
            ("connection", s(&"c".repeat(300_000))),
            ("outcome", s("x")),
            ("duration_ms", n("1")),
        ],
        vec![
            ("at_ms", n("7002")),
            ("job", s("j")),
            ("connection", s("c")),
            ("outcome", s("x")),
            ("duration_ms", n("-5")),
        ],
    ];
    println!("{} hostile history items", hostile.len());
    for (i, attrs) in hostile.iter().enumerate() {
        let mut item = vec![
            ("pk", s("history")),
            ("sk", s(&format!("{:020}#hostile{i}", 7_000 + i))),
        ];
        item.extend(attrs.iter().cloned());
        put_raw(&client, &table, &item).await;
    }
    let (logs, _guard) = Logs::capture();
    let rows = db.history(&HistoryQuery::default()).await.unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(
        rows[1], odd,
        "outside text is kept as data; printing escapes it"
    );
    let stored = rows[0].secret_version.as_deref().unwrap();
    assert!(
        stored.chars().count() < MAX_FIELD_CHARS + 40,
        "capped on write"
    );
    let logs = logs.text();
    assert!(logs.contains("skipping a malformed history item"), "{logs}");
    assert_clean("logs", &logs);
}

#[tokio::test]
async fn an_oversized_applied_version_is_refused_on_write() {
    let (db, client, table) = fresh().await;
    let err = db
        .record(
            "k",
            st("c", &format!("{CANARY}{}", "v".repeat(MAX_FIELD_CHARS)), 1),
            None,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("applied_version longer than"), "{err}");
    assert_clean("error", &err);
    assert!(get_raw(&client, &table, "state", "k").await.is_empty());
}

// --- the binary: check-config --online and history on the table ---------------------------

/// A config over the simulator's three jobs (file vault) with `[state]` on `table`, and the
/// environment that points the AWS SDK at `endpoint` for DynamoDB.
fn cli_config(
    dir: &std::path::Path,
    sim: &qlik_sim::Simulator,
    table: &str,
    endpoint: &str,
) -> (std::path::PathBuf, Vec<(String, String)>) {
    // The three jobs' secrets (check-config --online reads each one once).
    for (id, body) in [
        ("qlik/sales-s3", r#"{"accessKey":"AKIA1","secretKey":"s1"}"#),
        ("qlik/finance-sql", r#"{"username":"u1","password":"p1"}"#),
        (
            "qlik/bigquery",
            r#"{"key_file":{"type":"service_account"}}"#,
        ),
    ] {
        let path = dir.join("vault").join(format!("{id}.json"));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }
    let text = format!(
        "{}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n[state]\nbackend = \"dynamodb\"\ntable = \"{table}\"\nregion = \"us-east-1\"\n{}",
        common::harness::qlik_section(sim),
        common::harness::three_jobs("vault")
    );
    let path = common::harness::write_config(dir, &text);
    let env = common::harness::env(&[
        ("QLIK_API_KEY", common::harness::API_KEY),
        ("AWS_ENDPOINT_URL_DYNAMODB", endpoint),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", CANARY),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    (path, env)
}

fn assert_output_clean(out: &common::harness::CliOutput) {
    for (what, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains(CANARY), "{what} shows the canary: {text}");
        assert!(
            !text.contains(common::harness::API_KEY),
            "{what} shows the API key"
        );
    }
}

#[tokio::test]
async fn check_config_online_checks_the_state_table() {
    let sim = common::harness::tenant(qlik_sim::SimConfig::default()).await;
    let (_, _, table) = fresh().await;
    let dir = tempfile::tempdir().unwrap();
    let run = |table: &str, endpoint: &str| {
        let (path, env) = cli_config(dir.path(), &sim, table, endpoint);
        async move {
            common::harness::run_cli(
                &["check-config", "--online", "-c", path.to_str().unwrap()],
                &env,
            )
            .await
        }
    };
    let ok = run(&table, &moto().endpoint).await;
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(
        ok.stdout.contains(&format!("state table {table}: OK")),
        "{}",
        ok.stdout
    );
    assert_output_clean(&ok);

    let missing = run("no-such-state-table", &moto().endpoint).await;
    assert_eq!(missing.code, 1, "{missing:?}");
    assert!(
        missing
            .stdout
            .contains("state table no-such-state-table: FAILED: ")
            && missing.stdout.contains("not found"),
        "{}",
        missing.stdout
    );
    assert_output_clean(&missing);

    let start = Instant::now();
    let gone = run(&table, &format!("http://127.0.0.1:{}", free_port())).await;
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stdout.contains("could not connect"), "{}", gone.stdout);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "{:?}",
        start.elapsed()
    );
    assert_output_clean(&gone);
    // Checking sends nothing to Qlik but reads.
    assert!(common::harness::with_method(&sim, "PATCH").is_empty());
}

#[tokio::test]
async fn the_history_command_reads_the_table_and_escapes_what_it_prints() {
    let sim = common::harness::tenant(qlik_sim::SimConfig::default()).await;
    let (db, _, table) = fresh().await;
    let now_ms = 1_000 * 1_700_000_000;
    db.append_history(&attempt(now_ms, "sales-s3", "c-1", "rotated"))
        .await
        .unwrap();
    db.append_history(&attempt(now_ms + 1, "evil\u{1b}[2Jjob", "c-2", "failed"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (path, env) = cli_config(dir.path(), &sim, &table, &moto().endpoint);
    let config = path.to_str().unwrap();
    let json_out =
        common::harness::run_cli(&["history", "--output", "json", "-c", config], &env).await;
    assert_eq!(json_out.code, 0, "{json_out:?}");
    let text = json_out.stdout.trim();
    assert!(
        text.contains("sales-s3") && text.contains("ver-1700000000000"),
        "{text}"
    );
    assert!(!text.contains('\u{1b}'), "raw escape in {text:?}");
    let one = common::harness::run_cli(&["history", "--job", "sales-s3", "-c", config], &env).await;
    assert_eq!(one.code, 0, "{one:?}");
    assert!(
        one.stdout.contains("sales-s3") && !one.stdout.contains("evil"),
        "{}",
        one.stdout
    );
    assert_output_clean(&json_out);
    assert_output_clean(&one);
}
