//! `connections`, `coverage` and the daemon's coverage scan with several tenants (issue 17):
//! two simulator instances as tenants `a` and `b`, each holding the harness connections under
//! the same ids. Every tenant is listed with a tenant column, `--tenant` picks one (an unknown
//! name exits 64 before any request), a job manages a connection only in its own tenant, a
//! tenant answering 401 is reported while the other is still listed, and the daemon exports
//! `unmanaged_connections{tenant}` per tenant. No case sends a PATCH or prints a key.

mod common;

use std::{collections::HashMap, path::Path, time::Duration};

use common::harness::*;
use qlik_sim::spaces::SeedSpace;
use qlik_sim::{Fault, SeedConnection, SimConfig, Simulator};
use serde_json::{Value, json};

/// Tenant `b`'s key, a canary: never printed.
const B_KEY: &str = "CANARY-key-b-0e94a1";
/// Tenant `a`'s key in the 401 cases: refused by its simulator, never printed.
const WRONG_KEY: &str = "CANARY-wrong-key-a-5b7d";
const WAIT: Duration = Duration::from_secs(30);
const GONE_ID: &str = "99999999-9999-4999-8999-999999999999";

/// Two tenants with the harness connections (Sales S3, Finance SQL, Warehouse BQ) and the
/// spaces Sales and Finance; `b` also has an unmanaged REST connection.
async fn tenants() -> (Simulator, Simulator) {
    let a = tenant(SimConfig {
        api_keys: vec![API_KEY.to_owned()],
        ..SimConfig::default()
    })
    .await;
    let b = tenant(SimConfig {
        api_keys: vec![B_KEY.to_owned()],
        ..SimConfig::default()
    })
    .await;
    for sim in [&a, &b] {
        sim.add_space(SeedSpace::new("sales", "Sales"));
        sim.add_space(SeedSpace::new("finance", "Finance"));
    }
    b.add_connection(
        SeedConnection::new(
            "Extra SQL",
            "mssql",
            json!({"host": "h", "port": 1, "database": "d", "username": "u", "password": "p"}),
        )
        .in_space("finance"),
    );
    (a, b)
}

/// `a-s3` manages S3 in tenant a (the same id in b is not its), `b-sql` manages Finance SQL
/// in b by name, and `a-gone` names a connection tenant a does not have.
fn config(a: &Simulator, b: &Simulator, extra: &str) -> String {
    format!(
        "[tenants.a]\ntenant_url = \"{}\"\napi_key_env = \"A_KEY\"\n\
         [tenants.b]\ntenant_url = \"{}\"\napi_key_env = \"B_KEY\"\n\
         [sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{extra}\n\
         [[jobs]]\nname = \"a-s3\"\ntenant = \"a\"\nconnection = {{ id = \"{S3_ID}\" }}\n\
         connector = \"File_AmazonS3ConnectorV2\"\nsource = \"vault\"\nsecret = \"s3\"\n\
         [[jobs]]\nname = \"b-sql\"\ntenant = \"b\"\nconnection = {{ name = \"Finance SQL\", space = \"finance\" }}\n\
         connector = \"mssql\"\nsource = \"vault\"\nsecret = \"sql\"\n\
         [[jobs]]\nname = \"a-gone\"\ntenant = \"a\"\nconnection = {{ id = \"{GONE_ID}\" }}\n\
         connector = \"mssql\"\nsource = \"vault\"\nsecret = \"gone\"\n",
        a.base_url(),
        b.base_url()
    )
}

/// Runs `args[0] -c <config> args[1..]` with tenant a's key `a_key`; checks that no key was
/// printed and nothing was PATCHed.
async fn cli(a: &Simulator, b: &Simulator, dir: &Path, a_key: &str, args: &[&str]) -> CliOutput {
    let path = write_config(dir, &config(a, b, ""));
    let mut all = vec![args[0], "-c", path.to_str().unwrap()];
    all.extend_from_slice(&args[1..]);
    let out = run_cli(&all, &env(&[("A_KEY", a_key), ("B_KEY", B_KEY)])).await;
    for key in [API_KEY, B_KEY, WRONG_KEY] {
        assert!(
            !out.stdout.contains(key) && !out.stderr.contains(key),
            "{key} was printed: {out:?}"
        );
    }
    for sim in [a, b] {
        assert!(with_method(sim, "PATCH").is_empty(), "a PATCH was sent");
    }
    out
}

/// [`cli`] with tenant a's right key.
async fn keyed(a: &Simulator, b: &Simulator, dir: &Path, args: &[&str]) -> CliOutput {
    cli(a, b, dir, API_KEY, args).await
}

fn json_rows(out: &CliOutput) -> Vec<Value> {
    let rows: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    rows.as_array().expect("an array").clone()
}

/// The row of connection `id` in `tenant`.
fn row<'a>(rows: &'a [Value], tenant: &str, id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["tenant"] == tenant && r["id"] == id)
        .unwrap_or_else(|| panic!("no row {tenant}/{id}: {rows:?}"))
}

#[tokio::test]
async fn connections_lists_every_tenant_with_its_column_and_jobs_per_tenant() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    let out = keyed(&a, &b, dir.path(), &["connections", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 3 + 4, "{rows:?}");
    // Tenant a first (name order), the tenant field first in each object.
    assert_eq!(rows[0]["tenant"], "a");
    assert_eq!(rows[6]["tenant"], "b");
    assert!(
        out.stdout.contains("{\n    \"tenant\": \"a\",\n    \"id\""),
        "{}",
        out.stdout
    );
    // The same id in two tenants: managed in a by a-s3, unmanaged in b.
    assert_eq!(row(&rows, "a", S3_ID)["jobs"], json!(["a-s3"]));
    assert_eq!(row(&rows, "b", S3_ID)["jobs"], json!([]));
    // b-sql names Finance SQL in tenant b only.
    assert_eq!(row(&rows, "b", SQL_ID)["jobs"], json!(["b-sql"]));
    assert_eq!(row(&rows, "a", SQL_ID)["jobs"], json!([]));
    assert_eq!(row(&rows, "b", SQL_ID)["space"], "Finance");

    let table = keyed(&a, &b, dir.path(), &["connections"]).await;
    assert_eq!(table.code, 0, "{table:?}");
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert!(lines[0].starts_with("TENANT  ID  "), "{}", table.stdout);
    assert_eq!(lines.len(), 1 + 7, "{}", table.stdout);
    let line = |t: &str, id: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(&format!("{t}       {id}")))
            .unwrap_or_else(|| panic!("no line {t} {id}: {}", table.stdout))
            .to_owned()
    };
    assert!(line("a", S3_ID).ends_with("a-s3"), "{}", table.stdout);
    assert!(line("b", S3_ID).ends_with(" -"), "{}", table.stdout);
    assert!(line("b", SQL_ID).ends_with("b-sql"), "{}", table.stdout);

    let csv = keyed(&a, &b, dir.path(), &["connections", "--output", "csv"]).await;
    assert_eq!(csv.code, 0, "{csv:?}");
    assert!(
        csv.stdout.starts_with("tenant,id,name,space_id,space,"),
        "{}",
        csv.stdout
    );
    assert!(
        csv.stdout
            .contains(&format!("b,{SQL_ID},Finance SQL,finance,Finance,mssql")),
        "{}",
        csv.stdout
    );
}

#[tokio::test]
async fn tenant_b_alone_is_listed_and_tenant_a_is_not_asked() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    let args = ["connections", "--tenant", "b", "--output", "json"];
    let out = cli(&a, &b, dir.path(), API_KEY, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["tenant"] == "b"), "{rows:?}");
    assert!(a.requests().is_empty(), "tenant a was asked");
    assert!(!b.requests().is_empty());

    let cov = keyed(&a, &b, dir.path(), &["coverage", "--tenant", "b"]).await;
    assert_eq!(cov.code, 0, "{cov:?}");
    assert!(
        cov.stdout
            .starts_with("tenant b: coverage: 25.0% (1 of 4 credential-bearing"),
        "{}",
        cov.stdout
    );
    assert!(!cov.stdout.contains("tenant a"), "{}", cov.stdout);
    assert!(a.requests().is_empty(), "tenant a was asked");
}

#[tokio::test]
async fn an_unknown_tenant_exits_64_with_did_you_mean_and_sends_nothing() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    for cmd in ["connections", "coverage"] {
        let out = keyed(&a, &b, dir.path(), &[cmd, "--tenant", "bb"]).await;
        assert_eq!(out.code, 64, "{out:?}");
        assert!(
            out.stderr
                .contains("--tenant: names no tenant; did you mean \"b\"? (defined: a, b)"),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    }
    // A hostile name is escaped in the error.
    let out = keyed(
        &a,
        &b,
        dir.path(),
        &["connections", "--tenant", "x\u{1b}[2J"],
    )
    .await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(!out.stderr.contains('\u{1b}'), "{}", out.stderr);
    assert!(
        a.requests().is_empty() && b.requests().is_empty(),
        "a request was sent"
    );
}

#[tokio::test]
async fn a_single_qlik_table_accepts_tenant_default_only() {
    let a = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n{}",
        qlik_section(&a),
        three_jobs("v")
    );
    let path = write_config(dir.path(), &text);
    let run = |tenant: &'static str| {
        let path = path.clone();
        async move {
            let args = [
                "connections",
                "-c",
                path.to_str().unwrap(),
                "--tenant",
                tenant,
            ];
            run_cli(&args, &env(&[("QLIK_API_KEY", API_KEY)])).await
        }
    };
    let wrong = run("prod").await;
    assert_eq!(wrong.code, 64, "{wrong:?}");
    assert!(
        wrong.stderr.contains(
            "--tenant: names no tenant (this file has one tenant, [qlik], named \"default\""
        ),
        "{}",
        wrong.stderr
    );
    assert!(a.requests().is_empty(), "a request was sent");
    let ok = run("default").await;
    assert_eq!(ok.code, 0, "{ok:?}");
    // As before tenants: no tenant column.
    assert!(ok.stdout.starts_with("ID  "), "{}", ok.stdout);
    assert!(!ok.stdout.contains("TENANT"), "{}", ok.stdout);
}

#[tokio::test]
async fn coverage_counts_each_tenant_on_its_own() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    let out = keyed(&a, &b, dir.path(), &["coverage", "--output", "json"]).await;
    assert_eq!(out.code, 0, "{out:?}");
    let doc: Value = serde_json::from_str(&out.stdout).unwrap();
    let t = doc["tenants"].as_array().expect("tenants");
    assert_eq!(t.len(), 2, "{doc}");
    assert_eq!(t[0]["tenant"], "a");
    assert_eq!(t[0]["credential_bearing"], 3);
    assert_eq!(t[0]["managed"], 1);
    assert_eq!(
        t[0]["orphaned"],
        json!([{"tenant": "a", "job": "a-gone", "connection": format!("id {GONE_ID}")}])
    );
    assert_eq!(t[1]["tenant"], "b");
    assert_eq!(t[1]["credential_bearing"], 4);
    assert_eq!(t[1]["managed"], 1);
    assert_eq!(
        t[1]["orphaned"],
        json!([]),
        "b-sql exists in b; a-gone is a's"
    );
    // S3 is managed in a by a-s3, and unmanaged in b.
    let b_sales = &t[1]["unmanaged_by_space"]["Sales"];
    assert_eq!(b_sales[0]["id"], S3_ID, "{doc}");
    assert_eq!(b_sales[0]["tenant"], "b", "{doc}");
    assert!(t[0]["unmanaged_by_space"].get("Sales").is_none(), "{doc}");

    let text = keyed(&a, &b, dir.path(), &["coverage"]).await;
    assert_eq!(text.code, 0, "{text:?}");
    let lines: Vec<&str> = text.stdout.lines().collect();
    assert!(
        lines[0].starts_with("tenant a: coverage: 33.3% (1 of 3"),
        "{}",
        text.stdout
    );
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("tenant a: ") || l.starts_with("tenant b: "))
    );
    assert!(
        lines.contains(&"tenant b: unmanaged in space Sales: 1"),
        "{}",
        text.stdout
    );
    assert!(
        text.stdout
            .contains("tenant a: job a-gone names a connection that does not exist"),
        "{}",
        text.stdout
    );
    // --fail-under applies to each tenant and names the one under it.
    let under = keyed(&a, &b, dir.path(), &["coverage", "--fail-under", "30"]).await;
    assert_eq!(under.code, 1, "{under:?}");
    assert!(
        under
            .stderr
            .contains("error: tenant b: coverage 25.0% is under --fail-under 30%")
            && !under.stderr.contains("tenant a: coverage"),
        "{}",
        under.stderr
    );
}

#[tokio::test]
async fn a_401_in_tenant_a_is_reported_and_tenant_b_still_listed() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    let out = cli(
        &a,
        &b,
        dir.path(),
        WRONG_KEY,
        &["connections", "--output", "json"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stderr.contains("error: tenant a: ") && out.stderr.contains("(tenants.a.api_key_env)"),
        "{}",
        out.stderr
    );
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows.iter().all(|r| r["tenant"] == "b"), "{rows:?}");
    assert!(a.requests().iter().all(|r| r.status == 401));

    let cov = cli(
        &a,
        &b,
        dir.path(),
        WRONG_KEY,
        &["coverage", "--output", "json"],
    )
    .await;
    assert_eq!(cov.code, 1, "{cov:?}");
    let doc: Value = serde_json::from_str(&cov.stdout).unwrap();
    assert_eq!(doc["tenants"][0]["tenant"], "a");
    assert!(
        doc["tenants"][0]["error"]
            .as_str()
            .unwrap()
            .contains("tenants.a.api_key_env"),
        "{doc}"
    );
    assert!(doc["tenants"][0].get("managed").is_none(), "{doc}");
    assert_eq!(doc["tenants"][1]["tenant"], "b");
    assert_eq!(doc["tenants"][1]["credential_bearing"], 4);
}

#[tokio::test]
async fn hostile_names_are_escaped_next_to_the_tenant_column() {
    let (a, b) = tenants().await;
    b.add_space(SeedSpace::new("evil", "Evil\u{1b}[31m\nspace\u{202e}"));
    b.add_connection(
        SeedConnection::new(
            "=cmd\u{7}\r\nname",
            "mssql",
            json!({"host": "h", "port": 1, "database": "d", "username": "u", "password": "p"}),
        )
        .in_space("evil"),
    );
    let dir = tempfile::tempdir().unwrap();
    for output in ["table", "csv", "json"] {
        let out = keyed(&a, &b, dir.path(), &["connections", "--output", output]).await;
        assert_eq!(out.code, 0, "{out:?}");
        for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\r'] {
            assert!(
                !out.stdout.contains(raw),
                "raw {raw:?} in {output}: {}",
                out.stdout
            );
        }
        if output == "table" {
            assert_eq!(out.stdout.lines().count(), 1 + 8, "{}", out.stdout);
            let evil = out.stdout.lines().find(|l| l.contains("=cmd")).unwrap();
            assert!(evil.starts_with("b  "), "{evil}");
        }
        if output == "csv" {
            let mut reader = csv::Reader::from_reader(out.stdout.as_bytes());
            let evil: Vec<csv::StringRecord> = reader
                .records()
                .map(Result::unwrap)
                .filter(|r| r.get(2).unwrap().contains("cmd"))
                .collect();
            assert_eq!(evil.len(), 1);
            assert_eq!(evil[0].get(0), Some("b"));
            assert!(evil[0].get(2).unwrap().starts_with("'="), "{:?}", evil[0]);
        }
    }
    let cov = keyed(&a, &b, dir.path(), &["coverage"]).await;
    for raw in ['\u{1b}', '\u{7}', '\u{202e}', '\r'] {
        assert!(!cov.stdout.contains(raw), "raw {raw:?}: {}", cov.stdout);
    }
    assert!(
        cov.stdout.lines().all(|l| l.starts_with("tenant ")),
        "an escaped newline split a line: {}",
        cov.stdout
    );
}

/// Starts the daemon on both tenants; waits for pre-flight.
async fn daemon(a: &Simulator, b: &Simulator, dir: &Path) -> qlik_rotator::daemon::Running {
    let text = config(a, b, "[metrics]\nlisten = \"127.0.0.1:0\"");
    let input = HashMap::from([
        ("A_KEY".to_owned(), API_KEY.to_owned()),
        ("B_KEY".to_owned(), B_KEY.to_owned()),
    ]);
    let cfg = qlik_rotator::config::load_str(&text, dir, &input).expect("valid config");
    let r = qlik_rotator::daemon::start(&cfg, &input)
        .await
        .expect("daemon starts");
    r.daemon.preflight_finished().await;
    r
}

/// Waits until `unmanaged_connections{tenant}` is `want`; returns the exposition.
async fn unmanaged(r: &qlik_rotator::daemon::Running, tenant: &str, want: f64) -> String {
    let start = std::time::Instant::now();
    loop {
        let text = http_get(r.addr, "/metrics").await.1;
        let got = metric(
            &text,
            "qlik_rotator_unmanaged_connections",
            &[("tenant", tenant)],
        );
        if got == Some(want) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "unmanaged_connections{{tenant={tenant:?}}} never became {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spaces_reads(sim: &Simulator) -> Vec<u16> {
    with_method(sim, "GET")
        .iter()
        .filter(|r| r.path == "/api/v1/spaces")
        .map(|r| r.status)
        .collect()
}

#[tokio::test]
async fn the_daemon_scans_every_tenant_into_its_own_series() {
    let (a, b) = tenants().await;
    let dir = tempfile::tempdir().unwrap();
    let r = daemon(&a, &b, dir.path()).await;
    // a: Finance SQL and Warehouse BQ unmanaged; b: Sales S3 (a's job is not b's),
    // Warehouse BQ and Extra SQL.
    unmanaged(&r, "a", 2.0).await;
    let text = unmanaged(&r, "b", 3.0).await;
    let series: Vec<&str> = (text.lines())
        .filter(|l| l.starts_with("qlik_rotator_unmanaged_connections"))
        .collect();
    assert_eq!(
        series.len(),
        2,
        "one series per tenant, no unlabelled one: {series:?}"
    );
    assert_eq!(spaces_reads(&a), vec![200], "one scan of a");
    assert_eq!(spaces_reads(&b), vec![200], "one scan of b");
    let (ok, why) = promtool_check_metrics(&text);
    assert!(ok, "{why}");
    for key in [API_KEY, B_KEY] {
        assert!(!text.contains(key));
    }
    assert!(with_method(&a, "PATCH").is_empty() && with_method(&b, "PATCH").is_empty());
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn a_failed_scan_of_one_tenant_leaves_its_series_and_not_the_others() {
    let (a, b) = tenants().await;
    a.inject(Fault::Status {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/spaces".into()),
        status: 403,
        times: 1,
    });
    let dir = tempfile::tempdir().unwrap();
    let r = daemon(&a, &b, dir.path()).await;
    unmanaged(&r, "b", 3.0).await;
    assert!(
        wait_until(WAIT, || spaces_reads(&a) == vec![403]).await,
        "no scan of a: {:?}",
        spaces_reads(&a)
    );
    // a's scan failed (the next one is an hour away): its series stays at -1, b has its count.
    let text = http_get(r.addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_unmanaged_connections",
            &[("tenant", "a")]
        ),
        Some(-1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_unmanaged_connections",
            &[("tenant", "b")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(r.shutdown().await);
}

#[tokio::test]
async fn a_space_is_looked_up_in_each_tenant() {
    let (a, b) = tenants().await;
    b.add_space(SeedSpace::new("ops", "Ops"));
    b.add_connection(
        SeedConnection::new("Ops REST", "rest", json!({"url": "http://x"})).in_space("ops"),
    );
    let dir = tempfile::tempdir().unwrap();
    let args = ["connections", "--space", "Ops", "--output", "json"];
    let out = cli(&a, &b, dir.path(), API_KEY, &args).await;
    assert_eq!(out.code, 0, "{out:?}");
    let rows = json_rows(&out);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(
        (rows[0]["tenant"].as_str(), rows[0]["name"].as_str()),
        (Some("b"), Some("Ops REST"))
    );
    let lists = |sim: &Simulator| {
        (with_method(sim, "GET").iter())
            .filter(|r| r.path == "/api/v1/data-connections")
            .count()
    };
    assert_eq!(
        lists(&a),
        0,
        "tenant a has no space Ops: nothing listed there"
    );
    // A space no tenant has: exit 64 naming each tenant, before any listing.
    let out = keyed(&a, &b, dir.path(), &["connections", "--space", "Nope"]).await;
    assert_eq!(out.code, 64, "{out:?}");
    for t in ["a", "b"] {
        assert!(
            out.stderr.contains(&format!(
                "error: tenant {t}: no space with the id or name \"Nope\""
            )),
            "{}",
            out.stderr
        );
    }
    assert_eq!(
        lists(&a) + lists(&b),
        1,
        "only the first run's listing of b"
    );
}

/// `describe-connector` reads the api-specs of the tenant `--tenant` names, and only that
/// tenant; with several tenants `--tenant` is required (exit 64, nothing sent), an unknown
/// name gets "did you mean", and the job it prints names its tenant.
#[tokio::test]
async fn describe_connector_reads_the_named_tenant_only() {
    let (a, b) = tenants().await;
    b.add_data_source_spec(
        "postgres",
        qlik_sim::api_specs(
            "QvOdbcConnectorPackage.exe",
            "1.0",
            json!({"host": {"type": "string"}, "userPassword": {"type": "string"}}),
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let sent = |sim: &Simulator| sim.requests().len();
    let out = keyed(&a, &b, dir.path(), &["describe-connector", "postgres"]).await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("--tenant") && out.stderr.contains("2 tenants (a, b)"),
        "{out:?}"
    );
    let out = keyed(
        &a,
        &b,
        dir.path(),
        &["describe-connector", "postgres", "--tenant", "bb"],
    )
    .await;
    assert_eq!(out.code, 64, "{out:?}");
    assert!(
        out.stderr.contains("--tenant") && out.stderr.contains("did you mean \"b\""),
        "{out:?}"
    );
    assert_eq!(
        (sent(&a), sent(&b)),
        (0, 0),
        "nothing is sent on a usage error"
    );
    let out = keyed(
        &a,
        &b,
        dir.path(),
        &["describe-connector", "postgres", "--tenant", "b"],
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("userPassword"), "{out:?}");
    assert!(out.stdout.contains("tenant = \"b\"\n"), "{out:?}");
    assert_eq!(sent(&a), 0, "tenant a was not asked");
    assert!(
        b.requests().iter().any(|r| r.path.contains("api-specs")),
        "tenant b was asked: {:?}",
        b.requests()
    );
    // Tenant a has no such api-specs: asking it is a clear failure, not b's answer.
    let out = keyed(
        &a,
        &b,
        dir.path(),
        &["describe-connector", "postgres", "--tenant", "a"],
    )
    .await;
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("no api-specs"), "{out:?}");
}
