//! Table-driven tests and exact-body snapshots for the patch builders.

use super::*;
use crate::secrets::SecretValue;
use serde_json::json;

fn conn(datasource: &str, props: Value) -> DataConnection {
    serde_json::from_value(json!({
        "qID": "6f1c2a9e-0000-4000-8000-000000000001",
        "qName": "c",
        "qType": "x.exe",
        "datasourceID": datasource,
        "space": "space-1",
        "connectionProperties": props,
        "privileges": ["read", "update"],
        "updated": "2026-11-01T10:00:00.000Z"
    }))
    .unwrap()
}

fn spec(id: &str) -> BuildSpec {
    let connector = Connector::lookup(id).unwrap();
    let scheme = connector.scheme(None).unwrap();
    BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new())
}

fn body(plan: &Plan) -> Value {
    serde_json::from_slice(&plan.doc.expose_body()).unwrap()
}

#[test]
fn s3_variants_patch_access_and_secret_key() {
    for id in [
        "File_AmazonS3ConnectorV2",
        "AmazonS3ConnectorV2",
        "File_AmazonS3Connector",
    ] {
        let c = conn(id, json!({"region": "eu-west-1", "bucketName": "sales"}));
        let secret = SecretValue::text("v1", r#"{"accessKey":"AKIANEW","secretKey":"s3cr3t/NEW"}"#);
        let plan = build(&c, &spec(id), &secret).unwrap();
        insta::assert_json_snapshot!("s3", body(&plan));
        assert_eq!(plan.expect.written, ["accessKey", "secretKey"]);
    }
}

#[test]
fn s3_with_field_mapping() {
    let c = conn("File_AmazonS3ConnectorV2", json!({"bucketName": "b"}));
    let connector = Connector::lookup("File_AmazonS3ConnectorV2").unwrap();
    let fields = BTreeMap::from([
        ("accessKey".to_owned(), "aws_access_key_id".to_owned()),
        ("secretKey".to_owned(), "aws_secret_access_key".to_owned()),
    ]);
    let s = BuildSpec::from_catalogue(&connector, connector.scheme(None).unwrap(), &fields);
    let secret = SecretValue::text(
        "v1",
        r#"{"aws_access_key_id":"AKIAMAPPED","aws_secret_access_key":"mapped"}"#,
    );
    let plan = build(&c, &s, &secret).unwrap();
    assert_eq!(
        body(&plan),
        json!([
            {"op":"add","path":"/connectionProperties/accessKey","value":"AKIAMAPPED"},
            {"op":"add","path":"/connectionProperties/secretKey","value":"mapped"}
        ])
    );
}

#[test]
fn mssql_replaces_visible_username_and_adds_hidden_password() {
    for id in ["mssql", "DG_mssql"] {
        let c = conn(id, json!({"host": "db", "port": 1433, "username": "old"}));
        let secret = SecretValue::text("v1", r#"{"username":"svc_new","password":"p@ss-NEW"}"#);
        let plan = build(&c, &spec(id), &secret).unwrap();
        insta::assert_json_snapshot!("mssql", body(&plan));
    }
}

#[test]
fn bigquery_replaces_file_entry_in_place() {
    let key_json = r#"{"type":"service_account","private_key":"-----BEGIN PRIVATE KEY-----\nX\n-----END PRIVATE KEY-----\n","client_email":"bot@p.iam.gserviceaccount.com"}"#;
    for id in ["gbq", "DG_gbq"] {
        let c = conn(
            id,
            json!({"OAuthMechanism": "0", "Catalog": "proj", "KeyFilePath": [{"name": "old.json"}]}),
        );
        // The whole secret is the service-account JSON.
        let plan = build(&c, &spec(id), &SecretValue::text("v1", key_json)).unwrap();
        insta::assert_json_snapshot!("gbq_replace", body(&plan));
        let b = body(&plan);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b[1]["value"].as_str().unwrap())
            .unwrap();
        assert_eq!(decoded, key_json.as_bytes());
        assert_eq!(
            plan.expect.file_names["KeyFilePath"],
            "service-account.json"
        );
    }
}

#[test]
fn bigquery_key_file_field_and_missing_array() {
    let c = conn("gbq", json!({"OAuthMechanism": "0"}));
    let secret = SecretValue::text("v1", r#"{"key_file":{"type":"service_account"}}"#);
    let plan = build(&c, &spec("gbq"), &secret).unwrap();
    assert_eq!(
        body(&plan),
        json!([{"op":"add","path":"/connectionProperties/KeyFilePath",
                "value":[{"name":"service-account.json","value":"eyJ0eXBlIjoic2VydmljZV9hY2NvdW50In0="}]}])
    );
}

#[test]
fn bigquery_without_key_file_is_an_error() {
    let c = conn("gbq", json!({}));
    let err = build(
        &c,
        &spec("gbq"),
        &SecretValue::text("v1", r#"{"user":"x"}"#),
    )
    .unwrap_err();
    assert_eq!(
        err,
        BuildError::MissingField {
            property: "KeyFilePath".into(),
            key: "key_file".into()
        }
    );
}

#[test]
fn wrong_connector_is_refused() {
    let c = conn("mssql", json!({}));
    let err = build(
        &c,
        &spec("File_AmazonS3ConnectorV2"),
        &SecretValue::text("v1", r#"{"accessKey":"a","secretKey":"b"}"#),
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "wrong_connector");
    assert!(err.to_string().contains("\"mssql\""), "{err}");
}

#[test]
fn missing_and_empty_fields_name_the_key() {
    let c = conn("mssql", json!({}));
    let err = build(
        &c,
        &spec("mssql"),
        &SecretValue::text("v1", r#"{"username":"u"}"#),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the secret has no field \"password\" (needed for Qlik property \"password\")"
    );
    let err = build(
        &c,
        &spec("mssql"),
        &SecretValue::text("v1", r#"{"username":"u","password":""}"#),
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "empty_field");
    let err = build(&c, &spec("mssql"), &SecretValue::text("v1", "not json")).unwrap_err();
    assert_eq!(err.error_type(), "secret_not_json");
}

#[test]
fn builders_emit_only_credential_paths() {
    for family in CATALOGUE {
        for scheme in family.schemes {
            let mut allowed: Vec<&str> = scheme.props.iter().map(|p| p.name).collect();
            allowed.extend(scheme.constants.iter().map(|(k, _)| *k));
            allowed.push("queryHeaders");
            let id = family.ids[0];
            let mut fields = serde_json::Map::new();
            for p in scheme.props {
                fields.insert(p.key.to_owned(), json!("value-1"));
            }
            let c = conn(
                id,
                json!({"host": "h", "username": "u", "KeyFilePath": [{"name":"a"}],
                       "queryHeaders": [{"name": "Authorization", "encrypt": true}]}),
            );
            let mut s = BuildSpec::from_catalogue(
                &Connector::lookup(id).unwrap(),
                scheme,
                &BTreeMap::new(),
            );
            s.header = Some("Authorization".into());
            let plan = build(
                &c,
                &s,
                &SecretValue::text("v", Value::Object(fields).to_string()),
            )
            .unwrap();
            for path in plan.doc.paths() {
                let prop = path
                    .strip_prefix("/connectionProperties/")
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap();
                assert!(allowed.contains(&prop), "{id}: {path}");
            }
        }
    }
}

#[test]
fn separate_credentials_connection_is_refused() {
    let mut c = conn("mssql", json!({}));
    c.separate_credentials = true;
    let err = build(
        &c,
        &spec("mssql"),
        &SecretValue::text("v1", r#"{"username":"u","password":"p"}"#),
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "separate_credentials");
}

// === verify ===

fn expectation_for(c: &DataConnection, id: &str, secret: &str) -> Expectation {
    build(c, &spec(id), &SecretValue::text("v", secret))
        .unwrap()
        .expect
}

#[test]
fn verify_accepts_a_credential_only_change() {
    let before = conn("mssql", json!({"host":"db","port":1433,"username":"old"}));
    let expect = expectation_for(&before, "mssql", r#"{"username":"new","password":"p"}"#);
    let mut after = conn("mssql", json!({"host":"db","port":1433,"username":"new"}));
    after.updated = Some("2026-11-01T10:00:01.000Z".into());
    assert_eq!(verify(&before, &after, &expect), Vec::<String>::new());
}

#[test]
fn verify_detects_every_kind_of_mismatch() {
    let before = conn("mssql", json!({"host":"db","port":1433,"username":"old"}));
    let expect = expectation_for(&before, "mssql", r#"{"username":"new","password":"p"}"#);
    let mut after = conn(
        "DG_mssql",
        json!({"host":"other","username":"stale","extra":1}),
    );
    after.updated = Some("2026-10-01T10:00:00.000Z".into());
    let found = verify(&before, &after, &expect);
    assert_eq!(
        found,
        [
            "datasourceID changed from \"mssql\" to \"DG_mssql\"",
            "property \"extra\" appeared",
            "non-credential property \"host\" changed",
            "non-credential property \"port\" disappeared",
            "credential property \"username\" does not show the new value",
            "updated went backwards",
        ]
    );
    assert!(
        found
            .iter()
            .all(|m| !m.contains("stale") && !m.contains("new\""))
    );
}

#[test]
fn verify_checks_file_names() {
    let before = conn("gbq", json!({"KeyFilePath":[{"name":"old.json"}]}));
    let expect = expectation_for(&before, "gbq", r#"{"key_file":"{}"}"#);
    let after = conn("gbq", json!({"KeyFilePath":[{"name":"old.json"}]}));
    assert_eq!(
        verify(&before, &after, &expect),
        ["file credential \"KeyFilePath\" does not show the new file name"]
    );
}
