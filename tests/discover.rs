//! `connections` and `coverage` against the simulator over HTTP: listing, paging, space names,
//! CSV, and adversarial pages (hostile names, a huge page, a next link off the tenant, a page
//! loop). Every case asserts that nothing was PATCHed and the API key (a canary) appears in no
//! output.

mod common;

use std::time::Duration;

use common::harness::*;
use qlik_rotator::discover::{self, DiscoverError, Limits};
use qlik_rotator::qlik::{ClientSettings, Credentials, QlikClient, RetryPolicy};
use qlik_sim::spaces::SeedSpace;
use qlik_sim::{Fault, Hostile, SeedConnection, SimConfig, Simulator};
use serde_json::{Value, json};

/// A unique API key: it must never be printed.
const CANARY_KEY: &str = "canary-key-5d1f0c7e-discover";

async fn world() -> (Simulator, tempfile::TempDir) {
    let sim = tenant(SimConfig {
        api_keys: vec![CANARY_KEY.to_owned()],
        ..SimConfig::default()
    })
    .await;
    sim.add_space(SeedSpace::new("sales", "Sales"));
    sim.add_space(SeedSpace::new("finance", "Finance"));
    let dir = tempfile::tempdir().unwrap();
    (sim, dir)
}

/// A config with two jobs: S3 by id, and one whose connection does not exist.
fn config(sim: &Simulator, dir: &std::path::Path) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"{}
[sources.v]
type = "file"
path = "vault"
[daemon]
state_dir = "state"

[[jobs]]
name = "sales-s3"
connection = {{ id = "{S3_ID}" }}
connector = "File_AmazonS3ConnectorV2"
source = "v"
secret = "qlik/sales-s3"

[[jobs]]
name = "gone"
connection = {{ id = "99999999-9999-4999-8999-999999999999" }}
connector = "mssql"
source = "v"
secret = "qlik/gone"
"#,
            qlik_section(sim)
        ),
    )
}

async fn cli(sim: &Simulator, dir: &std::path::Path, args: &[&str]) -> CliOutput {
    let cfg = config(sim, dir);
    let mut all = vec![args[0], "-c", cfg.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    let out = run_cli(&all, &env(&[("QLIK_API_KEY", CANARY_KEY)])).await;
    assert!(
        !out.stdout.contains(CANARY_KEY) && !out.stderr.contains(CANARY_KEY),
        "the API key was printed: {out:?}"
    );
    assert!(with_method(sim, "PATCH").is_empty(), "a PATCH was sent");
    out
}

fn list_gets(sim: &Simulator) -> usize {
    with_method(sim, "GET")
        .iter()
        .filter(|r| r.path == "/api/v1/data-connections")
        .count()
}

#[tokio::test]
async fn connections_lists_space_names_connectors_and_jobs() {
    let (sim, dir) = world().await;
    let out = cli(&sim, dir.path(), &["connections", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let s3 = rows.iter().find(|r| r["id"] == S3_ID).unwrap();
    assert_eq!(s3["space"], "Sales");
    assert_eq!(s3["connector"], "File_AmazonS3ConnectorV2");
    assert_eq!(s3["rotatable"], true);
    assert_eq!(s3["jobs"], json!(["sales-s3"]));
    let sql = rows.iter().find(|r| r["id"] == SQL_ID).unwrap();
    assert_eq!(sql["space"], "Finance");
    assert_eq!(sql["jobs"], json!([]));
    let gbq = rows.iter().find(|r| r["id"] == GBQ_ID).unwrap();
    assert_eq!(gbq["space_id"], "");

    let table = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let first = table.stdout.lines().next().unwrap();
    assert!(
        first.starts_with("ID") && first.contains("ROTATABLE"),
        "{first}"
    );
    assert!(
        table
            .stdout
            .lines()
            .any(|l| l.contains(S3_ID) && l.contains("Sales") && l.ends_with("sales-s3")),
        "{}",
        table.stdout
    );
}

#[tokio::test]
async fn space_by_name_is_resolved_to_its_id_and_filters_the_list() {
    let (sim, dir) = world().await;
    let out = cli(
        &sim,
        dir.path(),
        &["connections", "--space", "Finance", "--output", "json"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 1, "{rows}");
    assert_eq!(rows[0]["id"], SQL_ID);
    let q = with_method(&sim, "GET")
        .into_iter()
        .find(|r| r.path == "/api/v1/data-connections")
        .unwrap()
        .query
        .unwrap_or_default();
    assert!(q.contains("spaceId=finance"), "{q}");
}

#[tokio::test]
async fn an_unknown_space_name_is_a_usage_error_before_any_listing() {
    let (sim, dir) = world().await;
    let out = cli(&sim, dir.path(), &["connections", "--space", "Nope"]).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("no space with the id or name \"Nope\""),
        "{}",
        out.stderr
    );
    assert_eq!(list_gets(&sim), 0);
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn an_ambiguous_space_name_names_every_candidate() {
    let (sim, dir) = world().await;
    sim.add_space(SeedSpace::new("finance-2", "Finance"));
    let out = cli(&sim, dir.path(), &["connections", "--space", "Finance"]).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("ambiguous") && out.stderr.contains("\"finance-2\""),
        "{}",
        out.stderr
    );
    assert_eq!(list_gets(&sim), 0);
}

#[tokio::test]
async fn hostile_names_are_escaped_in_the_table_and_formula_safe_in_csv() {
    let (sim, dir) = world().await;
    sim.add_space(SeedSpace::new("evil", "Evil\u{1b}[31m\nspace\u{202e}"));
    sim.add_connection(
        SeedConnection::new(
            "=HYPERLINK(\"http://x\")\u{7}",
            "mssql",
            json!({"host": "h", "port": 1, "database": "d", "username": "u", "password": "p"}),
        )
        .in_space("evil"),
    );
    let table = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    for raw in ['\u{1b}', '\u{7}', '\u{202e}'] {
        assert!(
            !table.stdout.contains(raw),
            "raw {raw:?} in {}",
            table.stdout
        );
    }
    // One line per connection: the newline in the space name is escaped.
    assert_eq!(table.stdout.lines().count(), 1 + 4, "{}", table.stdout);

    let csv = cli(&sim, dir.path(), &["connections", "--output", "csv"]).await;
    assert_eq!(csv.code, 0, "{csv:?}");
    assert!(!csv.stdout.contains('\u{1b}'), "{}", csv.stdout);
    let mut reader = csv::Reader::from_reader(csv.stdout.as_bytes());
    let names: Vec<String> = reader
        .records()
        .map(|r| r.unwrap().get(1).unwrap().to_owned())
        .collect();
    assert_eq!(names.len(), 4);
    let evil = names.iter().find(|n| n.contains("HYPERLINK")).unwrap();
    assert!(evil.starts_with("'="), "{evil}");
}

#[tokio::test]
async fn every_page_is_followed_through_links_next() {
    let (sim, dir) = world().await;
    for i in 0..150 {
        sim.add_connection(
            SeedConnection::new(format!("bulk {i}"), "rest", json!({"url": "http://x"}))
                .in_space("sales"),
        );
    }
    let out = cli(&sim, dir.path(), &["connections", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 153);
    assert_eq!(list_gets(&sim), 2, "two pages of 100");
}

#[tokio::test]
async fn a_next_link_to_another_host_is_never_followed() {
    let (sim, dir) = world().await;
    let other = Simulator::start(SimConfig::default()).await.unwrap();
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        fields: vec![(
            "links".into(),
            Some(json!({"next": {"href": format!("{}/api/v1/data-connections?page=x", other.base_url())}})),
        )],
        times: 1,
    });
    let out = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not on the tenant"), "{}", out.stderr);
    assert!(other.requests().is_empty(), "the other host was called");
    assert!(out.stdout.is_empty(), "{}", out.stdout);
}

#[tokio::test]
async fn a_next_link_to_another_endpoint_of_the_tenant_is_refused() {
    let (sim, dir) = world().await;
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        fields: vec![(
            "links".into(),
            Some(
                json!({"next": {"href": format!("{}/api/v1/data-credentials/x", sim.base_url())}}),
            ),
        )],
        times: 1,
    });
    let out = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("not on the tenant"), "{}", out.stderr);
    assert_eq!(
        sim.requests()
            .iter()
            .filter(|r| r.path.contains("data-credentials"))
            .count(),
        0
    );
}

#[tokio::test]
async fn a_page_loop_stops_with_a_clear_error() {
    let (sim, dir) = world().await;
    let again = format!(
        "{}/api/v1/data-connections?limit=100&page=b2Zmc2V0OjA",
        sim.base_url()
    );
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        fields: vec![("links".into(), Some(json!({"next": {"href": again}})))],
        times: 10,
    });
    let out = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("pages in a loop"), "{}", out.stderr);
    assert_eq!(list_gets(&sim), 2, "the repeated page is read once");
}

#[tokio::test]
async fn a_huge_page_is_not_read_past_the_body_cap() {
    let (sim, dir) = world().await;
    sim.inject(Fault::Hostile {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        response: Hostile::HugeBody {
            status: 200,
            bytes: 6 * 1024 * 1024,
        },
        times: 1,
    });
    let out = cli(&sim, dir.path(), &["connections"]).await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("max_response_bytes")
            || out.stderr.contains("too large")
            || out.stderr.contains("exceeds"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn the_page_and_item_caps_stop_an_endless_list() {
    let sim = tenant(SimConfig::default()).await;
    for i in 0..10 {
        sim.add_connection(SeedConnection::new(format!("c{i}"), "rest", json!({})));
    }
    let client = QlikClient::new(ClientSettings {
        tenant_url: sim.base_url().parse().unwrap(),
        credentials: Credentials::ApiKey(API_KEY.to_owned().into()),
        request_timeout: Duration::from_secs(5),
        retry: RetryPolicy::default(),
        write_budget_per_min: 0,
        read_budget_per_min: 0,
        max_response_bytes: 4 * 1024 * 1024,
    })
    .unwrap();
    // 13 connections in pages of 100 is one page: cap the items below that.
    let e = discover::all_connections(
        &client,
        None,
        Limits {
            max_pages: 100,
            max_items: 5,
        },
    )
    .await
    .unwrap_err();
    assert!(matches!(e, DiscoverError::TooLong { .. }), "{e}");
    assert_eq!(e.error_type(), "list_too_long");
    // A server whose every page links to a new one: the page cap stops it.
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        fields: vec![(
            "links".into(),
            Some(json!({"next": {"href": format!("{}/api/v1/data-connections?limit=100&page=b2Zmc2V0OjE", sim.base_url())}})),
        )],
        times: 1,
    });
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        fields: vec![(
            "links".into(),
            Some(json!({"next": {"href": format!("{}/api/v1/data-connections?limit=100&page=b2Zmc2V0OjI", sim.base_url())}})),
        )],
        times: 1,
    });
    let e = discover::all_connections(
        &client,
        None,
        Limits {
            max_pages: 2,
            max_items: 1000,
        },
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("longer than the cap (2 pages"),
        "{e}"
    );
}

#[tokio::test]
async fn coverage_reports_unmanaged_per_space_and_orphaned_jobs() {
    let (sim, dir) = world().await;
    let out = cli(&sim, dir.path(), &["coverage", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let cov: Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(cov["credential_bearing"], 3);
    assert_eq!(cov["managed"], 1);
    assert_eq!(cov["unmanaged_by_space"]["Finance"][0]["id"], SQL_ID);
    assert_eq!(cov["unmanaged_by_space"][""][0]["id"], GBQ_ID);
    assert_eq!(cov["orphaned"][0]["job"], "gone");

    let text = cli(&sim, dir.path(), &["coverage"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    assert!(
        text.stdout.starts_with("coverage: 33.3% (1 of 3"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout.contains("unmanaged in space Finance: 1"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("job gone names a connection that does not exist"),
        "{}",
        text.stdout
    );

    let under = cli(&sim, dir.path(), &["coverage", "--fail-under", "50"]).await;
    assert_eq!(under.code, 1, "{under:?}");
    assert!(
        under.stderr.contains("under --fail-under 50"),
        "{}",
        under.stderr
    );
    let over = cli(&sim, dir.path(), &["coverage", "--fail-under", "30"]).await;
    assert_eq!(over.code, 0, "{over:?}");
}

/// A config whose one job names its connection by name in the space `space`.
fn by_name_config(sim: &Simulator, dir: &std::path::Path, space: &str) -> std::path::PathBuf {
    write_config(
        dir,
        &format!(
            r#"{}
[sources.v]
type = "file"
path = "vault"
[daemon]
state_dir = "state"

[[jobs]]
name = "finance-sql"
connection = {{ name = "Finance SQL", space = "{space}" }}
connector = "mssql"
source = "v"
secret = "qlik/finance-sql"
"#,
            qlik_section(sim)
        ),
    )
}

async fn online_check(sim: &Simulator, space: &str) -> CliOutput {
    let dir = tempfile::tempdir().unwrap();
    let cfg = by_name_config(sim, dir.path(), space);
    // check-config --online reads the job's secret once too.
    let secret = dir.path().join("vault/qlik/finance-sql.json");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(&secret, r#"{"username":"u1","password":"p1"}"#).unwrap();
    let out = run_cli(
        &["check-config", "-c", cfg.to_str().unwrap(), "--online"],
        &env(&[("QLIK_API_KEY", CANARY_KEY)]),
    )
    .await;
    assert!(
        !out.stdout.contains(CANARY_KEY) && !out.stderr.contains(CANARY_KEY),
        "the API key was printed: {out:?}"
    );
    assert!(with_method(sim, "PATCH").is_empty(), "a PATCH was sent");
    out
}

fn space_gets(sim: &Simulator) -> usize {
    with_method(sim, "GET")
        .iter()
        .filter(|r| r.path == "/api/v1/spaces")
        .count()
}

#[tokio::test]
async fn a_job_space_given_by_name_is_resolved_through_the_spaces_api() {
    let (sim, _dir) = world().await;
    let out = online_check(&sim, "Finance").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(space_gets(&sim), 1, "resolved once");
    let by_name: Vec<String> = with_method(&sim, "GET")
        .into_iter()
        .filter(|r| r.path.ends_with("/Finance%20SQL"))
        .map(|r| r.query.unwrap_or_default())
        .collect();
    assert!(
        by_name.last().unwrap().contains("spaceId=finance"),
        "{by_name:?}"
    );
}

#[tokio::test]
async fn a_job_space_given_by_id_needs_no_spaces_call() {
    let (sim, _dir) = world().await;
    let out = online_check(&sim, "finance").await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(space_gets(&sim), 0);
}

#[tokio::test]
async fn an_unknown_job_space_is_a_clear_error() {
    let (sim, _dir) = world().await;
    let out = online_check(&sim, "Nope").await;
    assert_ne!(out.code, 0, "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("\"Finance SQL\" not found: no space with the id or name \"Nope\""),
        "{all}"
    );
}

#[tokio::test]
async fn an_ambiguous_job_space_name_is_a_clear_error() {
    let (sim, _dir) = world().await;
    sim.add_space(SeedSpace::new("finance-2", "Finance"));
    // Neither space id is "Finance": the name is looked up and matches two spaces.
    let out = online_check(&sim, "Finance").await;
    assert_ne!(out.code, 0, "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(
        all.contains("ambiguous") && all.contains("\"finance-2\""),
        "{all}"
    );
    let by_name = with_method(&sim, "GET")
        .into_iter()
        .filter(|r| r.path.ends_with("/Finance%20SQL"))
        .count();
    assert_eq!(by_name, 1, "no lookup in a guessed space");
}

#[tokio::test]
async fn a_hostile_space_name_in_the_tenant_is_escaped_in_errors() {
    let (sim, _dir) = world().await;
    sim.add_space(SeedSpace::new("evil\u{1b}[2J", "Finance"));
    let out = online_check(&sim, "Finance").await;
    assert_ne!(out.code, 0, "{out:?}");
    let all = format!("{}{}", out.stdout, out.stderr);
    assert!(!all.contains('\u{1b}'), "{all}");
    assert!(
        all.contains("ambiguous") && all.contains("\\u{1b}"),
        "{all}"
    );
}

/// Starts the daemon (library) on `sim` with the two jobs of [`config`]; waits for pre-flight.
async fn daemon(sim: &Simulator, dir: &std::path::Path) -> qlik_rotator::daemon::Running {
    let text = std::fs::read_to_string(config(sim, dir))
        .unwrap()
        .replace("[daemon]", "[metrics]\nlisten = \"127.0.0.1:0\"\n[daemon]");
    let input =
        std::collections::HashMap::from([("QLIK_API_KEY".to_owned(), CANARY_KEY.to_owned())]);
    let cfg = qlik_rotator::config::load_str(&text, dir, &input).expect("valid config");
    let r = qlik_rotator::daemon::start(&cfg, &input)
        .await
        .expect("daemon starts");
    r.daemon.preflight_finished().await;
    r
}

async fn unmanaged_gauge(r: &qlik_rotator::daemon::Running, want: f64) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = http_get(r.addr, "/metrics").await.1;
        if metric(&text, "qlik_rotator_unmanaged_connections", &[]) == Some(want) {
            return text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "unmanaged_connections never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn the_daemon_exports_unmanaged_connections_after_its_scan() {
    let (sim, dir) = world().await;
    let r = daemon(&sim, dir.path()).await;
    // Finance SQL and Warehouse BQ have no job; Sales S3 has one.
    let text = unmanaged_gauge(&r, 2.0).await;
    // With [qlik], one unlabelled series, as before tenants.
    let series: Vec<&str> = (text.lines())
        .filter(|l| l.starts_with("qlik_rotator_unmanaged_connections"))
        .collect();
    assert_eq!(series, ["qlik_rotator_unmanaged_connections 2"]);
    assert!(!text.contains(CANARY_KEY));
    assert_eq!(space_gets(&sim), 1, "one scan");
    assert!(with_method(&sim, "PATCH").is_empty());
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn a_failed_scan_leaves_the_gauge_at_minus_one() {
    let (sim, dir) = world().await;
    sim.inject(Fault::Status {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/spaces".into()),
        status: 403,
        times: 1,
    });
    let r = daemon(&sim, dir.path()).await;
    // The scan has run once the 403 was answered.
    assert!(
        wait_until(Duration::from_secs(20), || space_gets(&sim) == 1).await,
        "no scan"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let text = http_get(r.addr, "/metrics").await.1;
    assert_eq!(
        metric(&text, "qlik_rotator_unmanaged_connections", &[]),
        Some(-1.0),
        "{text}"
    );
    assert_eq!(
        list_gets(&sim),
        0,
        "no listing after the failed spaces read"
    );
    assert!(r.shutdown().await);
}
