//! Several `qlik-rotator run` replicas on one DynamoDB state table, with real processes: one
//! `qlik-rotator simulate` server (its debug log names every request it answered), moto for
//! Secrets Manager and DynamoDB, three daemons, 50 jobs on a 1-second schedule.
//!
//! - Every (connection, secret version) is PATCHed exactly once, counted by the simulator.
//! - `kill -9` of a replica: its jobs continue on the others within the lease TTL (measured).
//! - A replica whose DynamoDB endpoint goes away stops rotating and turns not ready.
//!
//! Run `bash scripts/setup-moto.sh` first.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use aws_sdk_dynamodb::types::AttributeValue;
use common::{
    daemon::Daemon,
    dynamodb::{client_for as dynamo_client, create_state_table},
    harness::{http_get, sigterm},
    moto::{Moto, free_port},
};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const KEY: &str = "CANARY-replicas-api-key-3c9d";
const JOBS: usize = 50;
const TABLE: &str = "replicas-state";
/// The lease TTL of the replicas ([state] lease_ttl).
const LEASE_TTL: Duration = Duration::from_secs(5);
/// Prefix of every password: none may appear in any output.
const PASSWORD: &str = "CANARY-replica-pw";

fn conn_id(i: usize) -> String {
    format!("7e57{i:04x}-0000-4000-8000-{i:012x}")
}

fn secret_name(i: usize) -> String {
    format!("replicas/job-{i:02}")
}

fn secret_value(i: usize, version: usize) -> String {
    json!({"username": format!("u{i:02}-v{version}"), "password": format!("{PASSWORD}-{i:02}-v{version}")})
        .to_string()
}

/// The tenant: `JOBS` SQL Server connections holding old credentials.
fn tenant() -> Value {
    let connections: Vec<Value> = (0..JOBS)
        .map(|i| {
            json!({"qID": conn_id(i), "qName": format!("Replica SQL {i:02}"), "space": "ops",
                   "datasourceID": "mssql", "privileges": ["list", "read", "update"],
                   "connectionProperties": {"host": "db.ops", "port": 1433, "database": "ops",
                                            "username": format!("old-{i:02}"),
                                            "password": format!("{PASSWORD}-old-{i:02}")}})
        })
        .collect();
    json!({"connections": connections, "apiSpecs": {}, "dataCredentials": []})
}

/// The replicas' shared configuration (each gets its own state_dir and listen address).
fn config(sim_url: &str, state_dir: &Path, listen: SocketAddr) -> String {
    let mut text = format!(
        r#"
[qlik]
tenant_url = "{sim_url}"
api_key_env = "QLIK_API_KEY"

[sources.aws]
type = "aws_secrets_manager"
region = "us-east-1"

[state]
backend = "dynamodb"
table = "{TABLE}"
region = "us-east-1"
lease_ttl = "{}s"

[daemon]
state_dir = "{}"
# Enough slots that 50 jobs a second (most of them a lease refused in one call) keep up.
max_concurrent_rotations = 32

[metrics]
listen = "{listen}"
"#,
        LEASE_TTL.as_secs(),
        state_dir.display()
    );
    for i in 0..JOBS {
        text.push_str(&format!(
            "\n[[jobs]]\nname = \"job-{i:02}\"\nconnection = {{ id = \"{}\" }}\nconnector = \"mssql\"\nsource = \"aws\"\nsecret = \"{}\"\nschedule = \"* * * * * *\"\n",
            conn_id(i),
            secret_name(i)
        ));
    }
    text
}

/// A TCP relay to moto that can be cut: afterwards it refuses new connections and drops the
/// open ones (the replica's DynamoDB endpoint "goes away").
struct Relay {
    addr: SocketAddr,
    cut: CancellationToken,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = CancellationToken::new();
        let token = cut.clone();
        tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    () = token.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(_) => continue,
                    },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        () = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }
}

/// `qlik-rotator simulate` serving the tenant, with its request log (debug) in a file.
fn start_simulate(dir: &Path) -> (Daemon, String) {
    let tenant_file = dir.join("tenant.json");
    std::fs::write(&tenant_file, tenant().to_string()).unwrap();
    let env = [
        ("QLIK_SIM_API_KEY".to_owned(), KEY.to_owned()),
        ("RUST_LOG".to_owned(), "debug".to_owned()),
    ];
    let sim = Daemon::spawn(
        &dir.join("simulate"),
        &[
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--tenant",
            tenant_file.to_str().unwrap(),
        ],
        &env,
    );
    let start = Instant::now();
    loop {
        let out = sim.stdout();
        if let Some(line) = out.lines().next().filter(|_| out.contains('\n')) {
            return (sim, line.trim().to_owned());
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "simulate printed no URL:\n{}",
            sim.output()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PATCHes the simulator answered 204, per connection id (from its debug request log).
fn patches(sim: &Daemon) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    let file = std::fs::File::open(sim.stderr_path()).unwrap();
    for line in BufReader::new(file).lines().map_while(Result::ok) {
        if !(line.contains("Simulator answered")
            && line.contains("method=PATCH")
            && line.contains("status=204"))
        {
            continue;
        }
        if let Some(at) = line.find("/api/v1/data-connections/") {
            let id: String = line[at + "/api/v1/data-connections/".len()..]
                .chars()
                .take_while(|c| c.is_ascii_hexdigit() || *c == '-')
                .collect();
            *out.entry(id).or_insert(0) += 1;
        }
    }
    out
}

struct Replica {
    proc: Daemon,
    addr: SocketAddr,
    relay: Option<Relay>,
}

async fn ready(addr: SocketAddr) -> u16 {
    http_get(addr, "/readyz").await.0
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if check().await {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether every connection in `expected` has exactly that many PATCHes so far (and no
/// connection more).
fn counts_are(sim: &Daemon, expected: &BTreeMap<String, usize>) -> bool {
    let seen = patches(sim);
    expected
        .iter()
        .all(|(id, n)| seen.get(id).copied().unwrap_or(0) == *n)
}

/// The connections whose PATCH count differs from `expected`: (id, expected, seen).
fn count_diff(sim: &Daemon, expected: &BTreeMap<String, usize>) -> Vec<(String, usize, usize)> {
    let seen = patches(sim);
    expected
        .iter()
        .filter_map(|(id, n)| {
            let got = seen.get(id).copied().unwrap_or(0);
            (got != *n).then(|| (id.clone(), *n, got))
        })
        .collect()
}

/// Waits until the PATCH counts are `expected`; on timeout, panics with the difference and the
/// warnings and errors of the replicas.
async fn wait_counts(
    what: &str,
    timeout: Duration,
    sim: &Daemon,
    expected: &BTreeMap<String, usize>,
    replicas: &[Replica],
) -> Duration {
    let start = Instant::now();
    loop {
        if counts_are(sim, expected) {
            return start.elapsed();
        }
        if start.elapsed() > timeout {
            let logs: Vec<String> = replicas
                .iter()
                .flat_map(|r| {
                    r.proc
                        .output()
                        .lines()
                        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                        .map(str::to_owned)
                        .collect::<Vec<_>>()
                })
                .collect();
            let tail = &logs[logs.len().saturating_sub(40)..];
            panic!(
                "timed out after {timeout:?} waiting for {what}: (connection, expected, seen) {:?}\n{}",
                count_diff(sim, expected),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The job → owner map of the leases in the table: live ones at `now`, or every lease item
/// (its last taker) with `now` = `i64::MIN`.
async fn lease_owners(client: &aws_sdk_dynamodb::Client, now: i64) -> HashMap<String, String> {
    let items = client
        .query()
        .table_name(TABLE)
        .key_condition_expression("pk = :pk")
        .expression_attribute_values(":pk", AttributeValue::S("lease".into()))
        .consistent_read(true)
        .send()
        .await
        .expect("Query leases")
        .items
        .unwrap_or_default();
    items
        .iter()
        .filter(|i| {
            i.get("expires_at")
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse::<i64>().ok())
                .is_some_and(|e| e >= now)
        })
        .filter_map(|i| {
            Some((
                i.get("sk")?.as_s().ok()?.clone(),
                i.get("owner")?.as_s().ok()?.clone(),
            ))
        })
        .collect()
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_fifty_jobs_exactly_once_and_survive_a_kill() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let moto = Moto::start();
    let moto_addr: SocketAddr = moto.endpoint.trim_start_matches("http://").parse().unwrap();
    let sm = moto.client().await;
    let ddb = dynamo_client(&moto.endpoint);
    create_state_table(&ddb, TABLE).await;
    let mut versions: Vec<usize> = vec![1; JOBS];
    for i in 0..JOBS {
        sm.create_secret()
            .name(secret_name(i))
            .secret_string(secret_value(i, 1))
            .send()
            .await
            .expect("CreateSecret");
    }
    let (sim, sim_url) = start_simulate(dir.path());

    // Three replicas; the third reaches DynamoDB through a relay that can be cut.
    let mut replicas = Vec::new();
    for r in 0..3 {
        let relay = if r == 2 {
            Some(Relay::start(moto_addr).await)
        } else {
            None
        };
        let dynamo_endpoint = relay
            .as_ref()
            .map_or_else(|| moto.endpoint.clone(), |p| format!("http://{}", p.addr));
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let cfg = dir.path().join(format!("replica-{r}.toml"));
        std::fs::write(
            &cfg,
            config(&sim_url, &dir.path().join(format!("state-{r}")), addr),
        )
        .unwrap();
        let env: Vec<(String, String)> = [
            ("QLIK_API_KEY", KEY),
            ("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto.endpoint.as_str()),
            ("AWS_ENDPOINT_URL_DYNAMODB", dynamo_endpoint.as_str()),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("RUST_LOG", "info"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        let proc = Daemon::spawn(
            &dir.path().join(format!("replica-{r}")),
            &["run", "-c", cfg.to_str().unwrap()],
            &env,
        );
        replicas.push(Replica { proc, addr, relay });
    }
    for r in &replicas {
        let addr = r.addr;
        wait_for(
            "a replica to be ready",
            Duration::from_secs(20),
            async || ready(addr).await == 200,
        )
        .await;
    }

    // 1. The first version of every secret: each connection PATCHed once.
    let mut expected: BTreeMap<String, usize> = (0..JOBS).map(|i| (conn_id(i), 1)).collect();
    let first = wait_for(
        "the first rotation of every job",
        Duration::from_secs(45),
        async || counts_are(&sim, &expected),
    )
    .await;
    println!("all {JOBS} jobs rotated once in {first:?}");

    // 2. Secrets changed several times (ten of them, twice), waiting each time until applied.
    // The slowest round: the baseline for the takeover below (this machine's speed).
    let mut slowest = Duration::ZERO;
    for round in 0..2 {
        for i in (0..JOBS).step_by(5) {
            versions[i] += 1;
            sm.put_secret_value()
                .secret_id(secret_name(i))
                .secret_string(secret_value(i, versions[i]))
                .send()
                .await
                .expect("PutSecretValue");
            *expected.get_mut(&conn_id(i)).unwrap() += 1;
        }
        let took = wait_for(
            "the changed secrets to be applied",
            Duration::from_secs(30),
            async || counts_are(&sim, &expected),
        )
        .await;
        println!("round {round}: 10 changed secrets applied in {took:?}");
        slowest = slowest.max(took);
    }

    // 3. kill -9 one replica in the middle of runs (while it holds leases): the jobs it held
    // continue on the others once its leases lapse, within the lease TTL.
    let victim_pid = replicas[0].proc.child.id();
    let victim_tag = format!("-{victim_pid}-");
    let mut held: Vec<usize> = Vec::new();
    let hunt = Instant::now();
    while held.is_empty() && hunt.elapsed() < Duration::from_secs(10) {
        held = lease_owners(&ddb, unix_now())
            .await
            .into_iter()
            .filter(|(_, owner)| owner.contains(&victim_tag))
            .filter_map(|(job, _)| job.strip_prefix("job-")?.parse().ok())
            .collect();
    }
    replicas[0].proc.child.kill().unwrap();
    let killed_at = Instant::now();
    let _ = replicas[0].proc.child.wait();
    assert!(
        !held.is_empty(),
        "the victim never held a lease in 10 s of looking"
    );
    held.sort_unstable();
    // Its jobs, and a few others, get a new version after the kill.
    let mut changed = held.clone();
    changed.extend((1..JOBS).step_by(10).filter(|i| !held.contains(i)));
    for &i in &changed {
        versions[i] += 1;
        sm.put_secret_value()
            .secret_id(secret_name(i))
            .secret_string(secret_value(i, versions[i]))
            .send()
            .await
            .expect("PutSecretValue");
        *expected.get_mut(&conn_id(i)).unwrap() += 1;
    }
    // The takeover itself: when every lease the victim held has another owner.
    let mut taken: HashMap<usize, Duration> = HashMap::new();
    while taken.len() < held.len() && killed_at.elapsed() < LEASE_TTL + Duration::from_secs(30) {
        let owners = lease_owners(&ddb, i64::MIN).await;
        for &i in &held {
            if owners
                .get(&format!("job-{i:02}"))
                .is_some_and(|o| !o.contains(&victim_tag))
            {
                taken.entry(i).or_insert_with(|| killed_at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        taken.len(),
        held.len(),
        "leases never taken over: {held:?} vs {taken:?}"
    );
    let lease_takeover = taken.values().max().copied().unwrap_or_default();
    let victims: BTreeMap<String, usize> = held
        .iter()
        .map(|&i| (conn_id(i), expected[&conn_id(i)]))
        .collect();
    wait_counts(
        "the survivors to apply the victim's jobs",
        LEASE_TTL + Duration::from_secs(40),
        &sim,
        &victims,
        &replicas,
    )
    .await;
    let takeover = killed_at.elapsed();
    wait_counts(
        "the other changes to be applied",
        Duration::from_secs(10),
        &sim,
        &expected,
        &replicas,
    )
    .await;
    println!(
        "kill -9 of a replica holding the leases of jobs {held:?}: the others held all of them {lease_takeover:?} after the kill, and had applied their new versions {takeover:?} after it (lease TTL {LEASE_TTL:?}; applying a change without a kill took up to {slowest:?} here)"
    );
    // The leases move within the TTL (plus the 1-second schedule and this machine's pace).
    let bound = LEASE_TTL + Duration::from_secs(1) + slowest;
    assert!(
        lease_takeover <= bound,
        "the takeover took {lease_takeover:?}, more than {bound:?}"
    );

    // 4. The third replica loses DynamoDB: it turns not ready and rotates nothing, even as the
    // only replica left.
    let relay = replicas[2].relay.take().unwrap();
    relay.cut.cancel();
    let cut_at = Instant::now();
    let addr2 = replicas[2].addr;
    let unready = wait_for(
        "the cut replica to turn not ready",
        Duration::from_secs(15),
        async || ready(addr2).await != 200,
    )
    .await;
    println!("the replica without DynamoDB turned not ready after {unready:?}");
    sigterm(&replicas[1].proc.child);
    let _ = replicas[1].proc.child.wait();
    let i = 3;
    versions[i] += 1;
    sm.put_secret_value()
        .secret_id(secret_name(i))
        .secret_string(secret_value(i, versions[i]))
        .send()
        .await
        .expect("PutSecretValue");
    tokio::time::sleep(LEASE_TTL + Duration::from_secs(2)).await;
    assert!(replicas[2].proc.alive(), "the cut replica keeps running");
    assert_ne!(ready(addr2).await, 200, "still not ready without its table");
    assert!(
        counts_are(&sim, &expected),
        "a replica without its state table PATCHed: {:?}",
        patches(&sim)
    );
    println!("cut for {:?}: no PATCH", cut_at.elapsed());

    // Exactly once: the counts equal the versions applied, for every connection.
    let seen = patches(&sim);
    let total: usize = seen.values().sum();
    assert_eq!(seen, expected, "PATCHes per connection");
    let mut per_version = BTreeMap::new();
    for n in expected.values() {
        *per_version.entry(*n).or_insert(0) += 1;
    }
    println!(
        "{total} PATCHes for {total} (connection, version) pairs; connections by versions applied: {per_version:?}"
    );
    // The last PATCH of each connection carried its last applied version.
    let client = reqwest::Client::new();
    for (i, &version) in versions.iter().enumerate() {
        let applied = if i == 3 { version - 1 } else { version };
        let body: Value = client
            .get(format!(
                "{sim_url}/api/v1/data-connections/{}?parseConnection=true",
                conn_id(i)
            ))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["connectionProperties"]["username"],
            format!("u{i:02}-v{applied}"),
            "connection {i}"
        );
    }

    // No secret value and no API key in any output.
    drop(replicas);
    for name in ["simulate", "replica-0", "replica-1", "replica-2"] {
        for ext in ["out", "err"] {
            let text = std::fs::read_to_string(dir.path().join(format!("{name}.{ext}")))
                .unwrap_or_default();
            assert!(!text.contains(PASSWORD), "{name}.{ext} shows a password");
            assert!(!text.contains(KEY), "{name}.{ext} shows the API key");
        }
    }
    drop(sim);
    println!("replica test took {:?}", started.elapsed());
}

/// A run longer than the lease TTL keeps its lease (renewed every third of the TTL): another
/// owner trying all along never gets it while the run goes on, the one PATCH is recorded, and
/// once the run is over the lease is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_longer_than_the_lease_ttl_keeps_its_lease() {
    use qlik_rotator::state::{StateBackend, dynamodb::DynamoState};
    let moto = Moto::start();
    let ddb = dynamo_client(&moto.endpoint);
    create_state_table(&ddb, TABLE).await;
    // Every Qlik request takes 4 s: the PATCH and the verify GET make a run of 8 s or more.
    let sim = common::harness::tenant(qlik_sim::SimConfig {
        latency: Duration::from_millis(4_000),
        ..qlik_sim::SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("vault/qlik")).unwrap();
    std::fs::write(
        dir.path().join("vault/qlik/finance-sql.json"),
        json!({"username": "long-run", "password": format!("{PASSWORD}-long")}).to_string(),
    )
    .unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let cfg = dir.path().join("config.toml");
    std::fs::write(
        &cfg,
        format!(
            "{}\n[sources.vault]\ntype = \"file\"\npath = \"{}\"\n[state]\nbackend = \"dynamodb\"\ntable = \"{TABLE}\"\nregion = \"us-east-1\"\nlease_ttl = \"{}s\"\n[daemon]\nstate_dir = \"{}\"\n[metrics]\nlisten = \"{listen}\"\n[[jobs]]\nname = \"finance-sql\"\nconnection = {{ id = \"{}\" }}\nconnector = \"mssql\"\nsource = \"vault\"\nsecret = \"qlik/finance-sql\"\nschedule = \"0 0 0 1 1 *\"\nrun_on_start = true\n",
            common::harness::qlik_section(&sim),
            dir.path().join("vault").display(),
            LEASE_TTL.as_secs(),
            dir.path().join("state").display(),
            common::harness::SQL_ID,
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("QLIK_API_KEY", common::harness::API_KEY),
        ("AWS_ENDPOINT_URL_DYNAMODB", moto.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let daemon = Daemon::spawn(
        &dir.path().join("daemon"),
        &["run", "-c", cfg.to_str().unwrap()],
        &env,
    );
    let intruder = DynamoState::from_client(ddb.clone(), TABLE, Duration::from_secs(86_400));
    // Wait until the run holds the lease.
    wait_for(
        "the run to take its lease",
        Duration::from_secs(30),
        async || {
            lease_owners(&ddb, unix_now())
                .await
                .contains_key("finance-sql")
        },
    )
    .await;
    let held_from = Instant::now();
    let mut tries = 0;
    // Another owner tries (a fresh backend each time: no memory of the holder's expiry)
    // until the run has recorded its result.
    let recorded = loop {
        tries += 1;
        let fresh = DynamoState::from_client(ddb.clone(), TABLE, Duration::from_secs(86_400));
        let state = fresh.get("finance-sql").await.unwrap();
        if let Some(st) = state {
            break st;
        }
        let got = fresh
            .acquire_lease("finance-sql", "intruder", LEASE_TTL, unix_now())
            .await
            .unwrap();
        assert!(
            got.is_none(),
            "another owner took the lease {:?} into the run: {got:?}\n{}",
            held_from.elapsed(),
            daemon.output()
        );
        assert!(
            held_from.elapsed() < Duration::from_secs(40),
            "the run never recorded"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let run_time = held_from.elapsed();
    println!(
        "the run held its lease for {run_time:?} (lease TTL {LEASE_TTL:?}; {tries} takeover attempts refused)"
    );
    assert!(
        run_time > LEASE_TTL,
        "the run was not longer than the TTL: {run_time:?}"
    );
    assert_eq!(common::harness::with_method(&sim, "PATCH").len(), 1);
    assert_eq!(recorded.connection_id, common::harness::SQL_ID);
    // The check could fail: once the run is over, the lease is free for the other owner.
    wait_for("the lease to be free again", LEASE_TTL * 2, async || {
        intruder
            .acquire_lease("finance-sql", "intruder", LEASE_TTL, unix_now())
            .await
            .unwrap()
            .is_some()
    })
    .await;
    assert!(!daemon.output().contains(PASSWORD));
}
