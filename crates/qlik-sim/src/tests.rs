//! End-to-end tests: a real `reqwest` client against the simulator over loopback HTTP.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;

const KEY: &str = "sim-api-key";

fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

async fn start() -> Simulator {
    Simulator::start(SimConfig::default()).await.unwrap()
}

fn mssql(name: &str) -> SeedConnection {
    SeedConnection::new(
        name,
        "mssql",
        json!({"host": "db.example", "port": 1433, "database": "sales",
               "username": "svc", "password": "old-pw"}),
    )
}

fn gbq(name: &str) -> SeedConnection {
    SeedConnection::new(
        name,
        "gbq",
        json!({"Catalog": "proj", "OAuthMechanism": "0", "Email": "sa@proj.iam",
               "KeyFilePath": [{"name": "key.json", "value": "c2VjcmV0"}],
               "P12CustomPwd": "notasecret"}),
    )
}

async fn send(
    sim: &Simulator,
    method: reqwest::Method,
    path_and_query: &str,
    body: Option<Value>,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .request(method, format!("{}{path_and_query}", sim.base_url()))
        .bearer_auth(KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let v = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap()
    };
    (status, headers, v)
}

async fn get(sim: &Simulator, pq: &str) -> (u16, Value) {
    let (s, _, v) = send(sim, reqwest::Method::GET, pq, None).await;
    (s, v)
}

async fn patch(sim: &Simulator, id: &str, body: Value) -> (u16, Value) {
    let (s, _, v) = send(
        sim,
        reqwest::Method::PATCH,
        &format!("/api/v1/data-connections/{id}"),
        Some(body),
    )
    .await;
    (s, v)
}

fn detail(v: &Value) -> String {
    v["errors"][0]["detail"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn updated(sim: &Simulator, id: &str) -> chrono::DateTime<chrono::Utc> {
    sim.stored(id).unwrap()["updated"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn unauthenticated_requests_get_401() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let url = format!("{}/api/v1/data-connections/{id}", sim.base_url());
    let resp = client().get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"errors": [{"code": "HTTP-401", "title": "Unauthorized", "status": 401}]})
    );
    let resp = client()
        .get(&url)
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let resp = client().get(&url).bearer_auth(KEY).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![401, 401, 200]);
    assert_eq!(sim.requests()[0].authorization, None);
    assert_eq!(
        sim.requests()[2].authorization.as_deref(),
        Some("Bearer sim-api-key")
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn get_one_never_returns_credentials() {
    let sim = start().await;
    let g = sim.add_connection(gbq("bq"));
    let m = sim.add_connection(mssql("sql"));
    let (s, v) = get(
        &sim,
        &format!("/api/v1/data-connections/{g}?parseConnection=true"),
    )
    .await;
    assert_eq!(s, 200);
    let props = &v["connectionProperties"];
    assert_eq!(props["KeyFilePath"], json!([{"name": "key.json"}]));
    assert!(props.get("P12CustomPwd").is_none());
    assert_eq!(props["Email"], "sa@proj.iam");
    assert_eq!(v["qID"], g.as_str());
    assert_eq!(v["id"], g.as_str());
    assert_eq!(v["qEngineObjectID"], g.as_str());
    assert_eq!(v["qType"], "QvOdbcConnectorPackage.exe");
    assert_eq!(v["qLogOn"], json!(0));
    assert_eq!(v["version"], "V1");
    assert!(
        v["qCredentialsID"]
            .as_str()
            .is_some_and(|c| uuid::Uuid::parse_str(c).is_ok())
    );
    assert!(v["updated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        v["links"]["self"]["href"],
        format!("{}/api/v1/data-connections/{g}", sim.base_url())
    );

    let (_, v) = get(
        &sim,
        &format!("/api/v1/data-connections/{m}?parseConnection=true"),
    )
    .await;
    let props = v["connectionProperties"].as_object().unwrap();
    assert_eq!(props["username"], "svc");
    assert!(!props.contains_key("password"));
    assert!(v.get("qPassword").is_none() && v.get("qUsername").is_none());
    assert!(v.get("qConnectionSecret").is_none());
    let stmt = v["qConnectStatement"].as_str().unwrap();
    assert!(
        stmt.starts_with(
            "CUSTOM CONNECT TO \"provider=QvOdbcConnectorPackage.exe;sourceType=mssql;"
        )
    );
    assert!(!stmt.contains("old-pw"));
    assert_eq!(
        sim.stored(&m).unwrap()["connectionProperties"]["password"],
        "old-pw"
    );

    let (_, v) = get(&sim, &format!("/api/v1/data-connections/{m}")).await;
    assert!(v.get("connectionProperties").is_none());
    sim.set_connection_secret(&m, Some("s3cr3t".into()));
    let (_, v) = get(&sim, &format!("/api/v1/data-connections/{m}")).await;
    assert_eq!(v["qConnectionSecret"], "***");

    let (s, v) = get(&sim, "/api/v1/data-connections/not-a-uuid").await;
    assert_eq!((s, v["errors"][0]["status"].clone()), (400, json!(400)));
    let (s, _) = get(
        &sim,
        &format!("/api/v1/data-connections/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(s, 404);
    sim.set_privileges(&m, vec!["list".into()]);
    let (s, _) = get(&sim, &format!("/api/v1/data-connections/{m}")).await;
    assert_eq!(s, 403);
}

#[tokio::test]
async fn get_by_name_with_space_and_ambiguity() {
    let sim = start().await;
    let a = sim.add_connection(mssql("My DB").in_space("s1"));
    let b = sim.add_connection(mssql("My DB").in_space("s2"));
    // GET's published errors (@qlik/api) are 400/403/404/500: an ambiguous name is a 400.
    let (s, v) = get(&sim, "/api/v1/data-connections/My%20DB?type=connectionname").await;
    assert_eq!(s, 400);
    assert_eq!(v["errors"][0]["code"], "DCERROR-0010");
    assert!(detail(&v).contains("spaceId"));
    let (s, v) = get(
        &sim,
        "/api/v1/data-connections/My%20DB?type=connectionname&spaceId=s1",
    )
    .await;
    assert_eq!((s, v["qID"].as_str().unwrap()), (200, a.as_str()));
    let (s, v) = get(
        &sim,
        "/api/v1/data-connections/My%20DB?type=connectionname&space=s2",
    )
    .await;
    assert_eq!((s, v["qID"].as_str().unwrap()), (200, b.as_str()));
    assert_eq!(v["space"], "s2");
    let (s, _) = get(&sim, "/api/v1/data-connections/nope?type=connectionname").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn list_pages_with_full_next_links_and_filters() {
    let sim = start().await;
    let ids = seed_three_mssql_two_gbq(&sim);
    let mut seen = Vec::new();
    let mut url = format!("{}/api/v1/data-connections?limit=2", sim.base_url());
    let mut pages = 0;
    loop {
        let v = get_url(&url).await;
        pages += 1;
        assert_eq!(v["meta"]["count"], 5);
        for item in v["data"].as_array().unwrap() {
            assert!(item.get("qConnectionSecret").is_none());
            assert!(item.get("connectionProperties").is_none());
            seen.push(item["qID"].as_str().unwrap().to_owned());
        }
        match v["links"]["next"]["href"].as_str() {
            Some(next) => {
                assert!(next.starts_with(&sim.base_url()));
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, ids.clone()));

    let (s, v) = get(&sim, "/api/v1/data-connections").await;
    assert_eq!((s, v["data"].as_array().unwrap().len()), (200, 5));
    assert!(v["links"].get("next").is_none());
    assert_list_filters(&sim, &ids).await;
}

/// Seeds connections `c0`..`c4` (three mssql, then two gbq), each with a secret; their ids.
fn seed_three_mssql_two_gbq(sim: &Simulator) -> Vec<String> {
    let mut ids = Vec::new();
    for i in 0..5 {
        let seed = if i < 3 {
            mssql(&format!("c{i}"))
        } else {
            gbq(&format!("c{i}"))
        };
        let id = sim.add_connection(seed);
        sim.set_connection_secret(&id, Some("x".into()));
        ids.push(id);
    }
    ids
}

/// GET of a full URL (a `links` href) with the API key; the JSON body.
async fn get_url(url: &str) -> Value {
    client()
        .get(url)
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// On the connections of [`seed_three_mssql_two_gbq`]: bad paging and filter parameters are
/// 400, filters select, and paging keeps the filter.
async fn assert_list_filters(sim: &Simulator, ids: &[String]) {
    for bad in [
        "limit=101",
        "limit=0",
        "limit=x",
        "page=%21%21",
        "filter=owner%20eq%20%22x%22",
    ] {
        let (s, _) = get(sim, &format!("/api/v1/data-connections?{bad}")).await;
        assert_eq!(s, 400, "{bad}");
    }
    let (_, v) = get(sim, "/api/v1/data-connections?filter=qName%20eq%20%22c1%22").await;
    assert_eq!(v["data"][0]["qID"], ids[1].as_str());
    assert_eq!(v["data"].as_array().unwrap().len(), 1);
    let (_, v) = get(
        sim,
        "/api/v1/data-connections?filter=datasourceID%20eq%20%22gbq%22",
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    // Paging keeps the filter.
    let (_, v) = get(
        sim,
        "/api/v1/data-connections?limit=1&filter=datasourceID%20eq%20%22gbq%22",
    )
    .await;
    let next = v["links"]["next"]["href"].as_str().unwrap();
    let v = get_url(next).await;
    assert_eq!(v["data"][0]["qID"], ids[4].as_str());
}

#[tokio::test]
async fn patch_updates_and_advances_updated() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let before = updated(&sim, &id);
    let created = sim.stored(&id).unwrap()["created"].clone();
    let resp = client()
        .patch(format!("{}/api/v1/data-connections/{id}", sim.base_url()))
        .bearer_auth(KEY)
        .json(&json!([{"op": "replace", "path": "/connectionProperties/password", "value": "new-pw"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(resp.bytes().await.unwrap().is_empty());
    let stored = sim.stored(&id).unwrap();
    assert_eq!(stored["connectionProperties"]["password"], "new-pw");
    assert_eq!(stored["created"], created);
    let after = updated(&sim, &id);
    assert!(after > before);
    // Back-to-back changes still move `updated` strictly forward.
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "pw3"}]),
    )
    .await;
    assert_eq!(s, 204);
    let after2 = updated(&sim, &id);
    assert!(after2 > after);
    // [assumed] Setting the same value again is still a write: `updated` advances.
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "pw3"}]),
    )
    .await;
    assert_eq!(s, 204);
    let after3 = updated(&sim, &id);
    assert!(after3 > after2);
    // An empty array succeeds and changes nothing, `updated` included.
    let (s, _) = patch(&sim, &id, json!([])).await;
    assert_eq!(s, 204);
    assert_eq!(updated(&sim, &id), after3);
    let after2 = after3;
    // The GET view reflects the new `updated`.
    let (_, v) = get(&sim, &format!("/api/v1/data-connections/{id}")).await;
    assert_eq!(
        v["updated"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        after2
    );
    // Add on a file array index inserts; PATCH by name works.
    let g = sim.add_connection(gbq("bq"));
    let (s, _, _) = send(
        &sim,
        reqwest::Method::PATCH,
        "/api/v1/data-connections/bq?type=connectionname",
        Some(json!([{"op": "replace", "path": "/connectionProperties/KeyFilePath/0/value", "value": "bmV3"}])),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(
        sim.stored(&g).unwrap()["connectionProperties"]["KeyFilePath"],
        json!([{"name": "key.json", "value": "bmV3"}])
    );
}

#[tokio::test]
async fn july_2026_validation_rules() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let snapshot = sim.stored(&id).unwrap();
    let cases = [
        (
            json!([{"op": "replace", "path": "/qConnectStatement", "value": "CUSTOM CONNECT TO \"x\""},
                   {"op": "replace", "path": "/connectionProperties/password", "value": "p"}]),
            "qConnectStatement and connectionProperties",
        ),
        (
            json!([{"op": "replace", "path": "/qConnectStatement", "value": "CUSTOM CONNECT TO \"x\""}]),
            "qConnectStatement can only be changed together with credentials",
        ),
        (
            json!([{"op": "replace", "path": "/connectionProperties/host", "value": "other"}]),
            "connectionProperties/host requires credentials",
        ),
        (
            json!([{"op": "replace", "path": "/qPassword", "value": "p"},
                   {"op": "replace", "path": "/connectionProperties/password", "value": "p"}]),
            "either as /qPassword or as a connectionProperties password",
        ),
    ];
    for (body, want) in cases {
        let (s, v) = patch(&sim, &id, body).await;
        assert_eq!(s, 400);
        assert_eq!(v["errors"][0]["code"], "DCERROR-0010");
        assert!(detail(&v).contains(want), "{} vs {want}", detail(&v));
        assert_eq!(sim.stored(&id).unwrap(), snapshot);
    }
    // The allowed forms pass.
    let (s, _) = patch(&sim, &id, json!([{"op": "replace", "path": "/connectionProperties/host", "value": "other"},
                                         {"op": "replace", "path": "/connectionProperties/password", "value": "p"}])).await;
    assert_eq!(s, 204);
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/qConnectStatement", "value": "CUSTOM CONNECT TO \"y\""},
                                         {"op": "replace", "path": "/qPassword", "value": "p"}]),
    )
    .await;
    assert_eq!(s, 204);
    let stored = sim.stored(&id).unwrap();
    assert_eq!(stored["qConnectStatement"], "CUSTOM CONNECT TO \"y\"");
    // An encrypted REST header token counts as credentials for the url rule.
    let rest = sim.add_connection(SeedConnection::new(
        "api",
        "rest",
        json!({"url": "https://a.example", "queryHeaders": [
            {"name": "Authorization", "value": "Bearer t1", "encrypt": true},
            {"name": "Accept", "value": "json", "encrypt": false}]}),
    ));
    let url_op =
        json!({"op": "replace", "path": "/connectionProperties/url", "value": "https://b.example"});
    let (s, _) = patch(
        &sim,
        &rest,
        json!([url_op.clone(),
        {"op": "replace", "path": "/connectionProperties/queryHeaders/1/value", "value": "xml"}]),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = patch(&sim, &rest, json!([url_op,
        {"op": "replace", "path": "/connectionProperties/queryHeaders/0/value", "value": "Bearer t2"}])).await;
    assert_eq!(s, 204);
    let (_, v) = get(
        &sim,
        &format!("/api/v1/data-connections/{rest}?parseConnection=true"),
    )
    .await;
    assert_eq!(
        v["connectionProperties"]["queryHeaders"][0],
        json!({"name": "Authorization", "encrypt": true})
    );
    assert_eq!(v["connectionProperties"]["url"], "https://b.example");
    assert_eq!(stored["qPassword"], "p");
}

#[tokio::test]
async fn patch_body_format_and_path_errors() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let snapshot = sim.stored(&id).unwrap();
    let cases = [
        (
            json!({"patchData": [{"op": "replace", "path": "/qName", "value": "b"}]}),
            "patchData",
        ),
        (
            json!({"op": "replace", "path": "/qName", "value": "b"}),
            "array",
        ),
        (
            json!([{"op": "replace", "path": "/connectionProperties/password", "Value": "x"}]),
            "value is required",
        ),
        (
            json!([{"op": "move", "path": "/qName", "from": "/qName"}]),
            "unsupported op",
        ),
        (
            json!([{"op": "replace", "path": "/qID", "value": "x"}]),
            "not patchable",
        ),
        (
            json!([{"op": "replace", "path": "/datasourceID", "value": "x"}]),
            "not patchable",
        ),
        (
            json!([{"op": "replace", "path": "/updated", "value": "x"}]),
            "not patchable",
        ),
        (
            json!([{"op": "replace", "path": "/connectionProperties/port", "value": "1433"}]),
            "Type mismatch",
        ),
        (
            json!([{"op": "remove", "path": "/connectionProperties/nope"}]),
            "does not exist",
        ),
        (
            json!([{"op": "replace", "path": "/connectionProperties/nope", "value": "x"}]),
            "does not exist",
        ),
        // Atomicity: the first op is valid, the second fails, nothing is applied.
        (
            json!([{"op": "replace", "path": "/connectionProperties/password", "value": "new"},
                {"op": "replace", "path": "/connectionProperties/database", "value": 5}]),
            "Type mismatch",
        ),
    ];
    for (body, want) in cases {
        let (s, v) = patch(&sim, &id, body.clone()).await;
        assert_eq!(s, 400, "{body}");
        assert!(detail(&v).contains(want), "{} vs {want}", detail(&v));
        assert_eq!(sim.stored(&id).unwrap(), snapshot, "{body}");
    }
    let (_, v) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/port", "value": "1433"}]),
    )
    .await;
    assert!(detail(&v).contains("number") && detail(&v).contains("string"));
}

#[tokio::test]
async fn patch_privileges_not_found_and_host_change_disassociates() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a").with_privileges(&["list", "read"]));
    let (s, v) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "x"}]),
    )
    .await;
    assert_eq!((s, v["errors"][0]["status"].clone()), (403, json!(403)));
    assert_eq!(
        sim.stored(&id).unwrap()["connectionProperties"]["password"],
        "old-pw"
    );
    let (s, _) = patch(&sim, &uuid::Uuid::new_v4().to_string(), json!([])).await;
    assert_eq!(s, 404);

    let sep = sim.add_connection(mssql("b").separate());
    assert!(sim.stored(&sep).unwrap()["qCredentialsID"].is_string());
    let (s, _) = patch(&sim, &sep, json!([{"op": "replace", "path": "/connectionProperties/host", "value": "h2"},
                                          {"op": "replace", "path": "/connectionProperties/username", "value": "u2"}])).await;
    assert_eq!(s, 204);
    let (_, v) = get(&sim, &format!("/api/v1/data-connections/{sep}")).await;
    assert_eq!(v["qSeparateCredentials"], true);
    assert!(v.get("qCredentialsID").is_none());
    // Name conflicts in the same space are 409.
    let (s, _) = patch(
        &sim,
        &sep,
        json!([{"op": "replace", "path": "/qName", "value": "a"}]),
    )
    .await;
    assert_eq!(s, 409);
}

#[tokio::test]
async fn write_rate_limit_returns_429_with_retry_after() {
    let sim = Simulator::start(SimConfig {
        write_limit_per_min: Some(3),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let id = sim.add_connection(mssql("a"));
    for i in 0..3 {
        let (s, _) = patch(&sim, &id, json!([{"op": "replace", "path": "/connectionProperties/password", "value": format!("p{i}")}])).await;
        assert_eq!(s, 204);
    }
    let (s, h, v) = send(
        &sim,
        reqwest::Method::PATCH,
        &format!("/api/v1/data-connections/{id}"),
        Some(json!([{"op": "replace", "path": "/connectionProperties/password", "value": "p9"}])),
    )
    .await;
    assert_eq!(s, 429);
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(v["errors"][0]["code"], "HTTP-429");
    assert_eq!(v["errors"][0]["title"], "API rate limit reached.");
    assert_eq!(
        detail(&v),
        format!("You need to wait {retry} seconds until limit is lifted.")
    );
    assert_eq!(
        sim.stored(&id).unwrap()["connectionProperties"]["password"],
        "p2"
    );
    // Tier 1 is separate.
    let (s, _) = get(&sim, &format!("/api/v1/data-connections/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(sim.writes_in_window_max(), 3);
    assert_eq!(sim.writes_total(), 3);
    sim.set_write_limit(None);
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "p9"}]),
    )
    .await;
    assert_eq!(s, 204);
    sim.set_read_limit(Some(1));
    let (s, _) = get(&sim, &format!("/api/v1/data-connections/{id}")).await;
    assert_eq!(s, 429);
}

/// Tier 1 on a scaled window (5 GETs per 2 s: long enough that six GETs fit in one window on
/// a loaded machine): the sixth GET of the window is a 429 with
/// `Retry-After`, counted as a Tier 1 rejection; a PATCH (Tier 2) still passes; once the
/// window has moved on, GETs pass again.
#[tokio::test]
async fn read_rate_limit_on_a_scaled_window() {
    let sim = Simulator::start(SimConfig {
        read_limit_per_min: Some(5),
        rate_window: Duration::from_secs(2),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let id = sim.add_connection(mssql("a"));
    let path = format!("/api/v1/data-connections/{id}");
    for _ in 0..5 {
        assert_eq!(get(&sim, &path).await.0, 200);
    }
    let (s, h, v) = send(&sim, reqwest::Method::GET, &path, None).await;
    assert_eq!(s, 429);
    let retry_after = h["retry-after"].to_str().unwrap();
    assert!(
        ["1", "2"].contains(&retry_after),
        "the rest of the 2 s window, rounded up to whole seconds: {retry_after}"
    );
    assert_eq!(v["errors"][0]["code"], "HTTP-429");
    assert_eq!(sim.rejected(limiter::Tier::Reads), 1);
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "p"}]),
    )
    .await;
    assert_eq!(s, 204, "Tier 2 is not blocked by Tier 1");
    assert_eq!(sim.rejected(limiter::Tier::Writes), 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(get(&sim, &path).await.0, 200);
    assert_eq!(sim.reads_total(), 6);
    assert_eq!(sim.reads_in_window_max(), 5);
}

/// POST of a JSON body to a full URL, without credentials.
async fn post_json(url: &str, body: Value) -> reqwest::Response {
    client().post(url).json(&body).send().await.unwrap()
}

#[tokio::test]
async fn oauth_client_credentials() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let url = format!("{}/oauth/token", sim.base_url());
    let resp = client()
        .post(&url)
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-client-secret"),
            ("scope", "data-connections"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["token_type"], "bearer");
    assert_eq!(v["expires_in"], 21600);
    assert_eq!(v["scope"], "data-connections");
    assert!(
        v["expires_at"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .is_ok()
    );
    let token = v["access_token"].as_str().unwrap().to_owned();
    let resp = client()
        .get(format!("{}/api/v1/data-connections/{id}", sim.base_url()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);

    let resp = post_json(&url, json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "sim-client-secret"})).await;
    assert_eq!(resp.status().as_u16(), 200);
    let resp = post_json(&url, json!({"grant_type": "client_credentials", "client_id": "sim-client", "client_secret": "bad"})).await;
    assert_eq!(resp.status().as_u16(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v,
        json!({"errors": [{"code": "OAUTH-1", "title": "invalid_client", "status": "401"}]})
    );
    let resp = post_json(&url, json!({"grant_type": "password", "client_id": "sim-client", "client_secret": "sim-client-secret"})).await;
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(sim.token_requests(), 4);
}

#[tokio::test]
async fn oauth_expired_tokens_are_rejected() {
    let short = Simulator::start(SimConfig {
        token_ttl: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let v: Value = client()
        .post(format!("{}/oauth/token", short.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = client()
        .get(format!("{}/api/v1/data-connections", short.base_url()))
        .bearer_auth(v["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
}

/// [`Fault::Drop`] on a fresh simulator: no response at all, request not applied, recorded
/// with status 0.
async fn assert_drop_fault(sim: &Simulator, id: &str, path: &str, body: &Value) {
    sim.inject(Fault::Drop {
        method: Some("PATCH".into()),
        path_prefix: None,
        times: 1,
    });
    let err = client()
        .patch(format!("{}{path}", sim.base_url()))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap_err();
    assert!(err.status().is_none());
    assert_eq!(
        sim.stored(id).unwrap()["connectionProperties"]["password"],
        "old-pw"
    );
    let last = sim.requests().pop().unwrap();
    assert_eq!((last.method.as_str(), last.status), ("PATCH", 0));
    assert_eq!(sim.requests().len(), 1);
}

/// [`Fault::Status`]: only matching requests, `times` of them, FIFO.
async fn assert_status_faults(sim: &Simulator, id: &str, path: &str, body: &Value) {
    sim.inject(Fault::Status {
        method: Some("patch".into()),
        path_prefix: Some("/api/v1/data-connections".into()),
        status: 503,
        times: 2,
    });
    sim.inject(Fault::Status {
        method: None,
        path_prefix: Some("/api/v1/data-credentials".into()),
        status: 502,
        times: 1,
    });
    // Neither fault matches a GET on a connection.
    let (s, _) = get(sim, path).await;
    assert_eq!(s, 200);
    sim.inject(Fault::Status {
        method: None,
        path_prefix: None,
        status: 500,
        times: 1,
    });
    let (s, v) = patch(sim, id, body.clone()).await;
    assert_eq!((s, v["errors"][0]["status"].clone()), (503, json!(503)));
    let (s, _) = patch(sim, id, body.clone()).await;
    assert_eq!(s, 503);
    // The credentials-only fault is still queued ahead of the catch-all one.
    let (s, _) = get(sim, path).await;
    assert_eq!(s, 500);
    let (s, _) = get(sim, path).await;
    assert_eq!(s, 200);
    let (s, _) = get(
        sim,
        &format!("/api/v1/data-credentials/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(s, 502);
}

#[tokio::test]
async fn injected_faults() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let path = format!("/api/v1/data-connections/{id}");
    let body = json!([{"op": "replace", "path": "/connectionProperties/password", "value": "new"}]);

    assert_drop_fault(&sim, &id, &path, &body).await;
    assert_status_faults(&sim, &id, &path, &body).await;

    // RateLimited.
    sim.inject(Fault::RateLimited {
        method: None,
        path_prefix: Some("/api/".into()),
        retry_after_secs: 7,
        times: 1,
    });
    let (s, h, v) = send(&sim, reqwest::Method::PATCH, &path, Some(body.clone())).await;
    assert_eq!((s, h["retry-after"].to_str().unwrap()), (429, "7"));
    assert_eq!(v["errors"][0]["code"], "HTTP-429");

    // Delay: handled normally afterwards.
    sim.inject(Fault::Delay {
        method: None,
        path_prefix: None,
        delay: Duration::from_millis(50),
        times: 1,
    });
    let t = Instant::now();
    let (s, _) = patch(&sim, &id, body.clone()).await;
    assert_eq!(s, 204);
    assert!(t.elapsed() >= Duration::from_millis(50));
    assert_eq!(
        sim.stored(&id).unwrap()["connectionProperties"]["password"],
        "new"
    );

    let statuses: Vec<u16> = sim.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![0, 200, 503, 503, 500, 200, 502, 429, 204]);

    // Latency applies to every response.
    sim.set_latency(Duration::from_millis(30));
    let t = Instant::now();
    let (s, _) = get(&sim, &path).await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(30));
}

#[tokio::test]
async fn api_specs_and_spec_type_checks() {
    let sim = start().await;
    // The documented shape (S11): names under connectionProperties.properties.
    let spec = json!({
        "connectorProvider": "QvWebStorageProviderConnectorPackage.exe",
        "connectorVersion": "4.46.0",
        "connectionProperties": {"type": "object", "properties": {
            "accessKey": {"type": "string", "description": "Amazon S3 access key."},
            "secretKey": {"type": "string", "description": "Amazon S3 secret key."},
            "region": {"type": "string", "default": "us-east-1", "enum": ["eu-west-1", "us-east-1"]},
            "bucketName": {"type": "string"},
            "separateCredentials": {"type": "boolean", "default": false},
            "credentialsName": {"type": "string"}
        }}
    });
    assert_eq!(
        spec,
        crate::api_specs(
            "QvWebStorageProviderConnectorPackage.exe",
            "4.46.0",
            spec["connectionProperties"]["properties"].clone()
        )
    );
    sim.add_data_source_spec("File_AmazonS3ConnectorV2", spec.clone());
    let (s, v) = get(
        &sim,
        "/api/v1/data-sources/File_AmazonS3ConnectorV2/api-specs",
    )
    .await;
    assert_eq!((s, v), (200, spec));
    let (s, _) = get(&sim, "/api/v1/data-sources/nope/api-specs").await;
    assert_eq!(s, 404);

    let id = sim.add_connection(SeedConnection::new(
        "s3",
        "File_AmazonS3ConnectorV2",
        json!({"accessKey": "AK", "secretKey": "SK", "region": "eu-west-1", "bucketName": "b"}),
    ));
    assert_eq!(
        sim.stored(&id).unwrap()["qType"],
        "QvWebStorageProviderConnectorPackage.exe"
    );
    let (s, v) = patch(&sim, &id, json!([{"op": "add", "path": "/connectionProperties/separateCredentials", "value": "true"}])).await;
    assert_eq!(s, 400);
    assert!(detail(&v).contains("boolean"));
    let (s, v) = patch(
        &sim,
        &id,
        json!([{"op": "add", "path": "/connectionProperties/bogus", "value": "x"}]),
    )
    .await;
    assert_eq!(s, 400);
    assert!(detail(&v).contains("Unknown connection property"));
    let (s, _) = patch(&sim, &id, json!([{"op": "replace", "path": "/connectionProperties/accessKey", "value": "AK2"},
                                         {"op": "replace", "path": "/connectionProperties/secretKey", "value": "SK2"}])).await;
    assert_eq!(s, 204);
    let old_cred = sim.stored(&id).unwrap()["qCredentialsID"].clone();
    let (s, _) = patch(&sim, &id, json!([{"op": "add", "path": "/connectionProperties/separateCredentials", "value": true},
                                         {"op": "add", "path": "/connectionProperties/credentialsName", "value": "rotated"}])).await;
    assert_eq!(s, 204);
    let stored = sim.stored(&id).unwrap();
    assert_eq!(stored["qSeparateCredentials"], true);
    assert_ne!(stored["qCredentialsID"], old_cred);
    let (_, v) = get(
        &sim,
        &format!("/api/v1/data-connections/{id}?parseConnection=true"),
    )
    .await;
    assert!(v["connectionProperties"].get("secretKey").is_none());
    assert!(v["connectionProperties"].get("accessKey").is_none());
    assert_eq!(v["connectionProperties"]["bucketName"], "b");
}

#[tokio::test]
async fn data_credentials_get_put_patch() {
    let sim = start().await;
    let cid = sim.add_credential(SeedCredential::new("team-cred", "mssql", "svc", "pw1"));
    let conn = sim.add_connection(mssql("a").separate());
    sim.link_credential(&conn, &cid);
    let path = format!("/api/v1/data-credentials/{cid}");
    let (s, v) = get(&sim, &path).await;
    assert_eq!(s, 200);
    assert_eq!(v["qID"], cid.as_str());
    assert_eq!(v["qName"], "team-cred");
    assert_eq!(v["qConnCount"], 1);
    assert_eq!(v["datasourceID"], "mssql");
    assert!(v.get("qUsername").is_none() && v.get("qPassword").is_none());
    assert!(!v.to_string().contains("pw1"));
    let (s, v) = get(
        &sim,
        "/api/v1/data-credentials/team-cred?byCredentialName=true",
    )
    .await;
    assert_eq!((s, v["qID"].as_str().unwrap()), (200, cid.as_str()));
    let (s, _) = get(&sim, "/api/v1/data-credentials/team-cred").await;
    assert_eq!(s, 400);
    let (s, _) = get(
        &sim,
        &format!("/api/v1/data-credentials/{}", uuid::Uuid::new_v4()),
    )
    .await;
    assert_eq!(s, 404);

    let before = sim.stored_credential(&cid).unwrap()["updated"].clone();
    let (s, _, v) = send(&sim, reqwest::Method::PUT, &path,
        Some(json!({"qName": "team-cred", "qType": "QvOdbcConnectorPackage.exe", "qUsername": "svc"}))).await;
    assert_eq!(s, 400);
    assert!(detail(&v).contains("qPassword"));
    let (s, _, _) = send(&sim, reqwest::Method::PUT, &path,
        Some(json!({"qName": "team-cred", "qType": "QvOdbcConnectorPackage.exe", "qUsername": "svc2", "qPassword": "pw2"}))).await;
    assert_eq!(s, 204);
    let stored = sim.stored_credential(&cid).unwrap();
    assert_eq!(
        (stored["qUsername"].as_str(), stored["qPassword"].as_str()),
        (Some("svc2"), Some("pw2"))
    );
    assert!(stored["updated"].as_str().unwrap() > before.as_str().unwrap());

    let (s, _, _) = send(
        &sim,
        reqwest::Method::PATCH,
        &path,
        Some(json!([{"op": "replace", "path": "/qPassword", "value": "pw3"}])),
    )
    .await;
    assert_eq!(s, 204);
    assert_eq!(sim.stored_credential(&cid).unwrap()["qPassword"], "pw3");
    let (s, _, _) = send(
        &sim,
        reqwest::Method::PATCH,
        &path,
        Some(json!([{"op": "replace", "path": "/qID", "value": "x"}])),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _, _) = send(
        &sim,
        reqwest::Method::PATCH,
        &path,
        Some(json!({"patchData": [{"op": "replace", "path": "/qPassword", "value": "pw4"}]})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(sim.stored_credential(&cid).unwrap()["qPassword"], "pw3");
}

#[tokio::test]
async fn requests_are_recorded_with_headers_and_body() {
    let sim = start().await;
    let id = sim.add_connection(gbq("bq"));
    let body = json!([{"op": "replace", "path": "/connectionProperties/KeyFilePath/0/value", "value": "eA=="}]);
    let resp = client()
        .patch(format!(
            "{}/api/v1/data-connections/{id}?x=1",
            sim.base_url()
        ))
        .bearer_auth(KEY)
        .header("qlik-auth-code", "code-123")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    let reqs = sim.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "PATCH");
    assert_eq!(r.path, format!("/api/v1/data-connections/{id}"));
    assert_eq!(r.query.as_deref(), Some("x=1"));
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    assert_eq!(r.qlik_auth_code.as_deref(), Some("code-123"));
    assert_eq!(serde_json::from_str::<Value>(&r.body).unwrap(), body);
    assert_eq!(r.status, 204);
    sim.clear_requests();
    assert!(sim.requests().is_empty());
}

#[tokio::test]
async fn concurrent_writes_never_exceed_the_limit() {
    let sim = Simulator::start(SimConfig {
        write_limit_per_min: Some(20),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let ids: Vec<String> = (0..50)
        .map(|i| sim.add_connection(mssql(&format!("c{i}"))))
        .collect();
    let c = client();
    let base = sim.base_url();
    let futures = ids.iter().map(|id| {
        let c = c.clone();
        let url = format!("{base}/api/v1/data-connections/{id}");
        async move {
            c.patch(url)
                .bearer_auth(KEY)
                .json(&json!([{"op": "replace", "path": "/connectionProperties/password", "value": "n"}]))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    });
    let statuses = futures_util::future::join_all(futures).await;
    assert_eq!(statuses.iter().filter(|s| **s == 204).count(), 20);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 30);
    assert_eq!(sim.writes_in_window_max(), 20);
    let rotated = ids
        .iter()
        .filter(|id| sim.stored(id).unwrap()["connectionProperties"]["password"] == "n")
        .count();
    assert_eq!(rotated, 20);
    assert_eq!(sim.requests().len(), 50);
}

#[tokio::test]
async fn token_requests_share_the_clients_write_budget() {
    let sim = Simulator::start(SimConfig {
        write_limit_per_min: Some(1),
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let id = sim.add_connection(mssql("a"));
    let v: Value = client()
        .post(format!("{}/oauth/token", sim.base_url()))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "sim-client"),
            ("client_secret", "sim-client-secret"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = v["access_token"].as_str().unwrap();
    let resp = client()
        .patch(format!("{}/api/v1/data-connections/{id}", sim.base_url()))
        .bearer_auth(token)
        .json(&json!([{"op": "replace", "path": "/connectionProperties/password", "value": "n"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    // The API key is a different identity with its own budget.
    let (s, _) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "n"}]),
    )
    .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn shutdown_stops_the_server() {
    let sim = start().await;
    let base = sim.base_url();
    let (s, _) = get(&sim, "/api/v1/data-connections").await;
    assert_eq!(s, 200);
    sim.shutdown().await;
    let err = client()
        .get(format!("{base}/api/v1/data-connections"))
        .bearer_auth(KEY)
        .send()
        .await;
    assert!(err.is_err());
}

#[tokio::test]
async fn fault_wrong_body_answers_with_another_connection_or_credential() {
    let sim = start().await;
    let a = sim.add_connection(mssql("a"));
    let b = sim.add_connection(mssql("b"));
    let ca = sim.add_credential(SeedCredential::new("cred-a", "mssql", "u", "p"));
    let cb = sim.add_credential(SeedCredential::new("cred-b", "mssql", "u", "p"));
    sim.inject(Fault::WrongBody {
        method: Some("GET".into()),
        path_prefix: Some(format!("/api/v1/data-connections/{a}")),
        answer_id: b.clone(),
        times: 1,
    });
    let (s, v) = get(
        &sim,
        &format!("/api/v1/data-connections/{a}?parseConnection=true"),
    )
    .await;
    assert_eq!(
        (s, v["qID"].as_str(), v["qName"].as_str()),
        (200, Some(b.as_str()), Some("b"))
    );
    assert_eq!(v["connectionProperties"]["host"], "db.example");
    // Used up: the next GET is honest.
    let (_, v) = get(&sim, &format!("/api/v1/data-connections/{a}")).await;
    assert_eq!(v["qID"], a.as_str());
    // By name, too.
    sim.inject(Fault::WrongBody {
        method: None,
        path_prefix: Some("/api/v1/data-connections/a".into()),
        answer_id: b.clone(),
        times: 1,
    });
    let (_, v) = get(&sim, "/api/v1/data-connections/a?type=connectionname").await;
    assert_eq!(v["qName"], "b");
    sim.inject(Fault::WrongBody {
        method: Some("GET".into()),
        path_prefix: Some("/api/v1/data-credentials/".into()),
        answer_id: cb.clone(),
        times: 1,
    });
    let (_, v) = get(&sim, &format!("/api/v1/data-credentials/{ca}")).await;
    assert_eq!(
        (v["qID"].as_str(), v["qName"].as_str()),
        (Some(cb.as_str()), Some("cred-b"))
    );
}

#[tokio::test]
async fn fault_ignored_write_answers_204_and_changes_nothing() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    let before = sim.stored(&id).unwrap();
    sim.inject(Fault::IgnoredWrite {
        method: Some("PATCH".into()),
        path_prefix: None,
        times: 1,
    });
    let (s, v) = patch(
        &sim,
        &id,
        json!([{"op": "replace", "path": "/connectionProperties/password", "value": "new"}]),
    )
    .await;
    assert_eq!((s, v), (204, Value::Null));
    assert_eq!(sim.stored(&id).unwrap(), before);
    assert_eq!(sim.requests().last().unwrap().status, 204);
}

#[tokio::test]
async fn fault_rewrite_fields_sets_and_removes_top_level_fields() {
    let sim = start().await;
    let id = sim.add_connection(mssql("a"));
    sim.inject(Fault::RewriteFields {
        method: Some("GET".into()),
        path_prefix: None,
        fields: vec![
            ("updated".into(), Some(json!("garbage"))),
            ("qName".into(), None),
        ],
        times: 1,
    });
    let (s, v) = get(&sim, &format!("/api/v1/data-connections/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["updated"], "garbage");
    assert!(v.get("qName").is_none());
    assert_eq!(v["qID"], id.as_str());
    // Error answers are left alone.
    sim.inject(Fault::RewriteFields {
        method: None,
        path_prefix: None,
        fields: vec![("updated".into(), None)],
        times: 1,
    });
    let (s, _) = get(&sim, "/api/v1/data-connections/not-a-uuid").await;
    assert_eq!(s, 400);
}
