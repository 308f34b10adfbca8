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
                // A service-account key file must be a JSON object; anything else is text.
                let v = if p.whole_secret {
                    json!(r#"{"type":"service_account"}"#)
                } else {
                    json!("value-1")
                };
                fields.insert(p.key.to_owned(), v);
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
    assert_eq!(verify(&before, &after, &expect), Verification::default());
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
        found.failures,
        [
            "updated went backwards",
            "datasourceID changed from \"mssql\" to \"DG_mssql\"",
            "non-credential property \"host\" changed",
            "non-credential property \"port\" disappeared",
            "credential property \"username\" does not show the new value",
        ]
    );
    // A property appearing is a warning (no published source says Qlik never adds one).
    assert_eq!(
        found.warnings,
        [(
            "property_appeared",
            "property \"extra\" appeared after the PATCH".to_owned()
        )]
    );
    assert!(
        found
            .failures
            .iter()
            .all(|m| !m.contains("stale") && !m.contains("new\""))
    );
}

#[test]
fn verify_does_not_compare_a_masked_credential() {
    let before = conn("mssql", json!({"host":"db","username":"***"}));
    let expect = expectation_for(&before, "mssql", r#"{"username":"new","password":"p"}"#);
    for shown in ["***", "", "********"] {
        let mut after = conn("mssql", json!({"host":"db","username": shown}));
        after.updated = Some("2026-11-01T10:00:01.000Z".into());
        assert_eq!(
            verify(&before, &after, &expect),
            Verification::default(),
            "{shown:?}"
        );
    }
    let mut after = conn("mssql", json!({"host":"db","username":"old"}));
    after.updated = Some("2026-11-01T10:00:01.000Z".into());
    assert_eq!(
        verify(&before, &after, &expect).failures,
        ["credential property \"username\" does not show the new value"]
    );
}

#[test]
fn verify_checks_file_names() {
    let before = conn("gbq", json!({"KeyFilePath":[{"name":"old.json"}]}));
    let expect = expectation_for(&before, "gbq", r#"{"key_file":"{}"}"#);
    let mut after = conn("gbq", json!({"KeyFilePath":[{"name":"old.json"}]}));
    after.updated = Some("2026-11-01T10:00:01.000Z".into());
    assert_eq!(
        verify(&before, &after, &expect).failures,
        ["file credential \"KeyFilePath\" does not show the new file name"]
    );
}

#[test]
fn verify_requires_updated_to_advance() {
    let before = conn("mssql", json!({"host":"db"}));
    let expect = expectation_for(&before, "mssql", r#"{"username":"new","password":"p"}"#);
    for (after_updated, want) in [
        (
            Some("2026-11-01T10:00:00.000Z"),
            "updated did not advance: Qlik answered 204, but the change does not show (nothing recorded as applied)",
        ),
        (
            Some("2026-11-01T10:00:00Z"),
            "updated did not advance: Qlik answered 204, but the change does not show (nothing recorded as applied)",
        ),
        (Some("2026-10-31T23:59:59.999Z"), "updated went backwards"),
        (
            None,
            "updated is missing or not a valid timestamp after the write",
        ),
        (
            Some("yesterday"),
            "updated is missing or not a valid timestamp after the write",
        ),
    ] {
        let mut after = conn("mssql", json!({"host":"db"}));
        after.updated = after_updated.map(str::to_owned);
        assert_eq!(
            verify(&before, &after, &expect).failures,
            [want],
            "{after_updated:?}"
        );
    }
}

#[test]
fn verify_warns_on_rules_without_a_source() {
    let mut before = conn("databricks", json!({"host":"h","AuthMech":"3"}));
    before.credentials_id = Some("cred-1".into());
    let expect = expectation_for(&before, "databricks", r#"{"username":"u","password":"p"}"#);
    let mut after = conn("databricks", json!({"host":"h","AuthMech":3}));
    after.credentials_id = Some("cred-2".into());
    after.updated = Some("2026-11-01T10:00:01.000Z".into());
    let v = verify(&before, &after, &expect);
    assert!(v.failures.is_empty(), "{v:?}");
    let rules: Vec<&str> = v.warnings.iter().map(|(r, _)| *r).collect();
    assert_eq!(rules, ["constant_type", "credentials_id_changed"]);
    assert!(rules.iter().all(|r| VERIFY_WARNING_RULES.contains(r)));
    // Another value of the constant is still a failure.
    after.properties.insert("AuthMech".into(), json!("2"));
    assert_eq!(
        verify(&before, &after, &expect).failures,
        ["property \"AuthMech\" does not show the scheme's value"]
    );
}

#[test]
fn wrong_json_types_in_the_secret_are_refused_naming_the_type() {
    let c = conn("mssql", json!({"host":"db"}));
    for (secret, found) in [
        (
            r#"{"username":"u","password":123456789012345678901234567890}"#,
            "number",
        ),
        (r#"{"username":"u","password":null}"#, "null"),
        (r#"{"username":"u","password":true}"#, "boolean"),
        (r#"{"username":"u","password":["CANARY-arr"]}"#, "array"),
        (
            r#"{"username":"u","password":{"v":"CANARY-obj"}}"#,
            "object",
        ),
    ] {
        let err = build(&c, &spec("mssql"), &SecretValue::text("v", secret)).unwrap_err();
        assert_eq!(err.error_type(), "secret_invalid");
        let msg = err.to_string();
        assert_eq!(
            msg,
            format!(
                "the secret's field \"password\" (for Qlik property \"password\") is a JSON {found}, but the credential must be a JSON string; nothing was sent"
            )
        );
        assert!(!msg.contains("CANARY") && !msg.contains("1234"), "{msg}");
    }
}

#[test]
fn a_service_account_key_file_must_be_a_json_object() {
    let c = conn("gbq", json!({"KeyFilePath":[{"name":"old.json"}]}));
    // A nested object is a key file; so is a string holding one.
    for ok in [
        r#"{"key_file":{"type":"service_account","private_key":"k"}}"#,
        r#"{"key_file":"{\"type\":\"service_account\"}"}"#,
    ] {
        build(&c, &spec("gbq"), &SecretValue::text("v", ok)).unwrap();
    }
    for (bad, error_type) in [
        (
            r#"{"key_file":"-----BEGIN PRIVATE KEY-----CANARY"}"#,
            "secret_invalid",
        ),
        (r#"{"key_file":"[1,2]"}"#, "secret_invalid"),
        (r#"{"key_file":42}"#, "secret_invalid"),
        (r#"{"key_file":["CANARY"]}"#, "secret_invalid"),
    ] {
        let err = build(&c, &spec("gbq"), &SecretValue::text("v", bad)).unwrap_err();
        assert_eq!(err.error_type(), error_type, "{bad}");
        assert!(!err.to_string().contains("CANARY"), "{err}");
    }
    // With file_encoding = "base64", the decoded content is checked.
    let mut s = spec("gbq");
    s.file_encoding = FileEncoding::Base64;
    let b64 = |t: &str| base64::engine::general_purpose::STANDARD.encode(t);
    let ok = json!({"key_file": b64(r#"{"type":"service_account"}"#)}).to_string();
    build(&c, &s, &SecretValue::text("v", ok)).unwrap();
    let bad = json!({"key_file": b64("not json")}).to_string();
    assert_eq!(
        build(&c, &s, &SecretValue::text("v", bad))
            .unwrap_err()
            .error_type(),
        "secret_invalid"
    );
    // Other file credentials (a PEM key) stay free-form text but must be strings.
    let sf = conn("snowflake", json!({}));
    let connector = Connector::lookup("snowflake").unwrap();
    let kp = BuildSpec::from_catalogue(
        &connector,
        connector.scheme(Some("key_pair")).unwrap(),
        &BTreeMap::new(),
    );
    build(
        &sf,
        &kp,
        &SecretValue::text("v", r#"{"username":"u","private_key":"-----BEGIN"}"#),
    )
    .unwrap();
    let err = build(
        &sf,
        &kp,
        &SecretValue::text("v", r#"{"username":"u","private_key":{"k":1}}"#),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("is a JSON object, but the credential must be a JSON string"),
        "{err}"
    );
}

#[test]
fn api_specs_in_qlik_shape_are_checked() {
    let s3 = spec("File_AmazonS3ConnectorV2");
    let documented = qlik_sim::api_specs(
        "QvWebStorageProviderConnectorPackage.exe",
        "4.46.0",
        json!({"accessKey": {"type": "string"}, "secretKey": {"type": "string"},
               "bucketName": {"type": "string"}}),
    );
    assert_eq!(check_against_api_specs(&s3, &documented), Ok(vec![]));
    let flat = json!({"connectionProperties": {"accessKey": {"type": "string"}, "secretKey": {"type": "string"}}});
    let err = check_against_api_specs(&s3, &flat).unwrap_err();
    assert_eq!(err.error_type(), "spec_invalid");
    let missing = qlik_sim::api_specs("p", "1", json!({"accessKey": {"type": "string"}}));
    let err = check_against_api_specs(&s3, &missing).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the patch does not match the connector's api-specs: property \"secretKey\" does not exist in the api-specs of \"File_AmazonS3ConnectorV2\"; nothing was sent"
    );
    // A catalogue file array declared as a string and a mode constant declared as an integer:
    // warnings, not refusals.
    let gbq = qlik_sim::api_specs(
        "p",
        "1",
        json!({"KeyFilePath": {"type": "string"}, "OAuthMechanism": {"type": "integer"},
               "Email": {"type": "string"}, "P12CustomPwd": {"type": "string"}}),
    );
    let warnings = check_against_api_specs(&spec("gbq"), &gbq).unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
}

// === the whole catalogue ===

/// The connection as GET returns it for an example (secrets hidden, file arrays with `name`
/// only, encrypted header values hidden), for `id` and `scheme`.
fn example_get(id: &str, scheme: &str) -> (DataConnection, qlik_sim::examples::Example) {
    let ex = qlik_sim::examples::example(id, scheme)
        .unwrap_or_else(|| panic!("no example for {id} / {scheme}"));
    let shown = qlik_sim::props::sanitize(ex.properties.as_object().unwrap());
    (conn(id, Value::Object(shown)), ex)
}

/// The job spec a config with `scheme = …` (plus `header`/`file_encoding` as needed) gives.
fn example_spec(id: &str, scheme: &Scheme, ex: &qlik_sim::examples::Example) -> BuildSpec {
    let mut s =
        BuildSpec::from_catalogue(&Connector::lookup(id).unwrap(), scheme, &BTreeMap::new());
    if scheme.props.iter().any(|p| p.kind == PropKind::Header) {
        s.header = Some("Authorization".into());
    }
    if ex.file_base64 {
        s.file_encoding = FileEncoding::Base64;
    }
    s
}

fn example_body(id: &str, scheme: &Scheme) -> Value {
    let (c, ex) = example_get(id, scheme.name);
    let plan = build(
        &c,
        &example_spec(id, scheme, &ex),
        &SecretValue::text("v1", ex.secret.to_string()),
    )
    .unwrap_or_else(|e| panic!("{id} / {}: {e}", scheme.name));
    body(&plan)
}

#[test]
fn every_connector_and_scheme_builds_the_snapshotted_patch() {
    let mut count = 0;
    for family in CATALOGUE {
        for id in family.ids {
            for scheme in family.schemes {
                let b = example_body(id, scheme);
                insta::assert_json_snapshot!(format!("{id}_{}", scheme.name), b);
                count += 1;
                if family.gateway {
                    // The DG_ variant (GET adds gatewayInstance) builds the same document.
                    assert_eq!(example_body(&format!("DG_{id}"), scheme), b, "DG_{id}");
                }
            }
        }
    }
    assert_eq!(count, 34);
}

#[test]
fn every_patch_verifies_against_the_stored_result() {
    // Apply each patch the way Qlik would (add/replace on the stored properties) and check
    // that verify() accepts the GET after it.
    for family in CATALOGUE {
        for scheme in family.schemes {
            let id = family.ids[0];
            let (before, ex) = example_get(id, scheme.name);
            let plan = build(
                &before,
                &example_spec(id, scheme, &ex),
                &SecretValue::text("v1", ex.secret.to_string()),
            )
            .unwrap();
            let mut stored = json!({"connectionProperties": ex.properties});
            for op in body(&plan).as_array().unwrap() {
                let path = op["path"].as_str().unwrap();
                let (parent, last) = path.rsplit_once('/').unwrap();
                let target = stored
                    .pointer_mut(parent)
                    .unwrap_or_else(|| panic!("{path}"));
                match target {
                    Value::Object(m) => {
                        m.insert(last.to_owned(), op["value"].clone());
                    }
                    Value::Array(a) => a[last.parse::<usize>().unwrap()] = op["value"].clone(),
                    _ => panic!("{path}"),
                }
            }
            let shown =
                qlik_sim::props::sanitize(stored["connectionProperties"].as_object().unwrap());
            let mut after = conn(id, Value::Object(shown));
            after.updated = Some("2026-11-01T10:00:01.000Z".into());
            assert_eq!(
                verify(&before, &after, &plan.expect),
                Verification::default(),
                "{id} / {}",
                scheme.name
            );
        }
    }
}

#[test]
fn schemes_are_chosen_by_name_and_default_to_the_first() {
    let snowflake = Connector::lookup("DG_snowflake").unwrap();
    assert_eq!(snowflake.scheme(None).unwrap().name, "password");
    assert_eq!(snowflake.scheme(Some("key_pair")).unwrap().name, "key_pair");
    assert!(snowflake.scheme(Some("oauth")).is_none());
    let rest = Connector::lookup("rest").unwrap();
    assert_eq!(rest.scheme(None).unwrap().name, "basic");
    assert!(rest.scheme(Some("password")).is_none());
    // Every scheme name is unique within its family.
    for family in CATALOGUE {
        let mut names: Vec<_> = family.schemes.iter().map(|s| s.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), family.schemes.len(), "{}", family.title);
    }
}

/// A secret lacking what its scheme needs: (connector id, scheme, secret, the property that
/// cannot be written, the secret key it needs).
const MISSING_FIELD_CASES: &[(&str, &str, &str, &str, &str)] = &[
    (
        "snowflake",
        "key_pair",
        r#"{"username":"u","password":"p"}"#,
        "PRIV_KEY_FILE",
        "private_key",
    ),
    (
        "rest",
        "mtls",
        r#"{"pfx":"cGZ4"}"#,
        "mutualPfxCertificateKey",
        "pfx_password",
    ),
    (
        "rest",
        "header",
        r#"{"username":"u"}"#,
        "queryHeaders",
        "token",
    ),
    (
        "File_FileTransferConnector",
        "private_key",
        r#"{"username":"u","password":"p"}"#,
        "privateKey",
        "private_key",
    ),
    (
        "reptgt_qdiadls",
        "client_secret",
        r#"{"client_id":"i","tenant_id":"t"}"#,
        "adlsclientappkey",
        "client_secret",
    ),
    (
        "reptgt_qdis3",
        "access_key",
        r#"{"accessKey":"a"}"#,
        "s3SecretKey",
        "secretKey",
    ),
    (
        "reptgt_qdidatabricks",
        "token",
        r#"{"password":"p"}"#,
        "password",
        "token",
    ),
    (
        "reptgt_qdibigquery",
        "service_account",
        r#"{"client_email":"x"}"#,
        "jsonCredentials",
        "key_file",
    ),
    (
        "athena",
        "iam_credentials",
        r#"{"password":"p"}"#,
        "username",
        "username",
    ),
    (
        "sfdc",
        "password",
        r#"{"username":"u@acme.example","password":"p"}"#,
        "sftoken",
        "security_token",
    ),
    (
        "sfdc",
        "password",
        r#"{"password":"p","security_token":"t"}"#,
        "UserId",
        "username",
    ),
    (
        "reptgt_qdisnowflake",
        "password",
        r#"{"username":"SVC_LOAD"}"#,
        "password",
        "password",
    ),
];

#[test]
fn a_secret_lacking_what_the_scheme_needs_names_the_key() {
    for (id, scheme_name, secret, property, key) in MISSING_FIELD_CASES {
        let connector = Connector::lookup(id).unwrap();
        let scheme = connector.scheme(Some(scheme_name)).unwrap();
        let mut s = BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new());
        s.header = Some("Authorization".into());
        s.file_encoding = if *scheme_name == "mtls" {
            FileEncoding::Base64
        } else {
            FileEncoding::Raw
        };
        let (c, _) = example_get(id, scheme_name);
        let err = build(&c, &s, &SecretValue::text("v1", *secret)).unwrap_err();
        assert_eq!(
            err,
            BuildError::MissingField {
                property: (*property).into(),
                key: (*key).into()
            },
            "{id} / {scheme_name}"
        );
        assert!(err.to_string().contains(&format!("{key:?}")), "{err}");
    }
}

#[test]
fn optional_properties_are_left_alone_when_the_secret_lacks_them() {
    // Databricks without trusted_certs: TrustedCerts is not touched.
    let (c, _) = example_get("databricks", "password");
    let b = build(
        &c,
        &spec("databricks"),
        &SecretValue::text("v1", r#"{"username":"token","password":"dapi"}"#),
    )
    .map(|p| body(&p))
    .unwrap();
    assert_eq!(
        b,
        json!([
            {"op":"replace","path":"/connectionProperties/username","value":"token"},
            {"op":"add","path":"/connectionProperties/password","value":"dapi"}
        ])
    );
    // BigQuery with a key_file field and a P12 password: Email untouched, P12CustomPwd added.
    let (c, _) = example_get("gbq", "service_account");
    let b = build(
        &c,
        &spec("gbq"),
        &SecretValue::text("v1", r#"{"key_file":"{}","p12_password":"notasecret"}"#),
    )
    .map(|p| body(&p))
    .unwrap();
    let paths: Vec<_> = b
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/connectionProperties/KeyFilePath/0/name",
            "/connectionProperties/KeyFilePath/0/value",
            "/connectionProperties/P12CustomPwd"
        ]
    );
}

#[test]
fn constants_are_added_when_missing_and_replaced_when_different() {
    for family in CATALOGUE {
        for scheme in family.schemes.iter().filter(|s| !s.constants.is_empty()) {
            let id = family.ids[0];
            let (mut c, ex) = example_get(id, scheme.name);
            let s = example_spec(id, scheme, &ex);
            let secret = SecretValue::text("v1", ex.secret.to_string());
            for (name, value) in scheme.constants {
                let path = format!("/connectionProperties/{name}");
                let find = |c: &DataConnection| {
                    body(&build(c, &s, &secret).unwrap())
                        .as_array()
                        .unwrap()
                        .iter()
                        .find(|o| o["path"] == path.as_str())
                        .cloned()
                };
                c.properties.remove(*name);
                assert_eq!(
                    find(&c),
                    Some(json!({"op": "add", "path": path, "value": value.to_json()})),
                    "{id} / {}",
                    scheme.name
                );
                c.properties.insert((*name).into(), json!("something-else"));
                assert_eq!(
                    find(&c),
                    Some(json!({"op": "replace", "path": path, "value": value.to_json()}))
                );
                c.properties.insert((*name).into(), value.to_json());
                assert_eq!(find(&c), None, "already set: no op");
            }
        }
    }
}

#[test]
fn rest_header_not_in_the_get_is_refused() {
    let connector = Connector::lookup("rest").unwrap();
    let scheme = connector.scheme(Some("header")).unwrap();
    let secret = SecretValue::text("v1", r#"{"token":"Bearer t"}"#);
    let (with_headers, _) = example_get("rest", "header");
    for (c, header) in [
        (with_headers.clone(), "X-Api-Key"),
        (
            conn("rest", json!({"url": "https://api.acme.example"})),
            "Authorization",
        ),
    ] {
        let mut s = BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new());
        s.header = Some(header.into());
        let err = build(&c, &s, &secret).unwrap_err();
        assert_eq!(
            err,
            BuildError::HeaderNotFound {
                connection: c.id.clone(),
                header: header.into()
            }
        );
        assert_eq!(err.error_type(), "header_not_found");
    }
    // The header name matches case-insensitively, at the index GET shows.
    let mut s = BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new());
    s.header = Some("authorization".into());
    let b = body(&build(&with_headers, &s, &secret).unwrap());
    assert_eq!(
        b,
        json!([{"op":"add","path":"/connectionProperties/queryHeaders/1/value","value":"Bearer t"}])
    );
}

#[test]
fn base64_file_encoding_passes_through_and_rejects_invalid_base64() {
    let connector = Connector::lookup("snowflake").unwrap();
    let scheme = connector.scheme(Some("key_pair")).unwrap();
    let mut s = BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new());
    s.file_encoding = FileEncoding::Base64;
    let (c, _) = example_get("snowflake", "key_pair");
    let pem_b64 = base64::engine::general_purpose::STANDARD.encode(PKCS8);
    let secret = SecretValue::text(
        "v1",
        json!({"username": "SVC", "private_key": format!("{pem_b64}\n")}).to_string(),
    );
    let b = body(&build(&c, &s, &secret).unwrap());
    // No array in GET: the whole array is added, the value passed through (trimmed).
    assert_eq!(
        b[1],
        json!({"op":"add","path":"/connectionProperties/PRIV_KEY_FILE",
               "value":[{"name":"rsa_key.p8","value": pem_b64}]})
    );
    let bad = SecretValue::text(
        "v1",
        json!({"username": "SVC", "private_key": PKCS8}).to_string(),
    );
    let err = build(&c, &s, &bad).unwrap_err();
    assert_eq!(
        err,
        BuildError::InvalidBase64 {
            property: "PRIV_KEY_FILE".into(),
            key: "private_key".into()
        }
    );
    assert!(!err.to_string().contains("BEGIN"), "{err}");
    // Raw (the default) base64-encodes the same content.
    s.file_encoding = FileEncoding::Raw;
    let raw = SecretValue::text(
        "v1",
        json!({"username": "SVC", "private_key": PKCS8}).to_string(),
    );
    assert_eq!(
        body(&build(&c, &s, &raw).unwrap())[1]["value"][0]["value"],
        pem_b64
    );
}

const PKCS8: &str = "-----BEGIN PRIVATE KEY-----\nMIIEvQ\n-----END PRIVATE KEY-----\n";

#[test]
fn dg_variants_exist_exactly_for_gateway_families() {
    let gateway: Vec<&str> = CATALOGUE
        .iter()
        .filter(|f| f.gateway)
        .flat_map(|f| f.ids.iter().copied())
        .collect();
    assert_eq!(
        gateway,
        [
            "athena",
            "databricks",
            "gbq",
            "mssql",
            "mysql",
            "snowflake",
            "teradata"
        ]
    );
    for family in CATALOGUE {
        for id in family.ids {
            let dg = format!("DG_{id}");
            match Connector::lookup(&dg) {
                Some(c) => {
                    assert!(family.gateway, "{dg} accepted");
                    assert_eq!(c.id, dg);
                    assert_eq!(c.family.title, family.title);
                }
                None => assert!(!family.gateway, "{dg} refused"),
            }
            assert!(Connector::lookup(&format!("DG_DG_{id}")).is_none());
            assert!(Connector::lookup(&id.to_uppercase()).is_none() || id.to_uppercase() == *id);
        }
    }
    // A DG_ job does not accept the plain connection (and vice versa).
    let c = conn("snowflake", json!({}));
    let err = build(
        &c,
        &spec("DG_snowflake"),
        &SecretValue::text("v1", r#"{"username":"u","password":"p"}"#),
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "wrong_connector");
    assert_eq!(Connector::all_ids().len(), 29 + 7);
}

#[test]
fn the_markdown_table_has_a_row_per_scheme() {
    let table = catalogue::markdown_table();
    let rows: Vec<&str> = table.lines().skip(2).collect();
    let schemes: usize = CATALOGUE.iter().map(|f| f.schemes.len()).sum();
    assert_eq!(rows.len(), schemes);
    for row in &rows {
        assert_eq!(row.matches(" | ").count(), 5, "{row}");
        // The last column names a public source: a qlik.dev link or a repository file.
        let source = row.trim_end_matches(" |").rsplit(" | ").next().unwrap();
        assert!(
            source.starts_with("[S") || source.starts_with('`'),
            "no source in {row}"
        );
    }
    assert!(table.contains("`authenticator = \"snowflake_jwt\"`"));
    assert!(table.contains("`DG_teradata`"));
    assert!(!table.contains("`DG_rest`"));
}

// === connectors added with a public source: Salesforce, Snowflake DI target password ===

#[test]
fn salesforce_writes_user_password_and_token_and_selects_the_salesforce_authenticator() {
    let (mut c, ex) = example_get("sfdc", "password");
    // GET shows the user id and the authenticator, not the password or the token.
    assert_eq!(c.properties["UserId"], "integration@acme.example");
    assert!(c.properties.get("SFpassword").is_none());
    assert!(c.properties.get("sftoken").is_none());
    let s = spec("sfdc");
    let secret = SecretValue::text("v1", ex.secret.to_string());
    assert_eq!(
        body(&build(&c, &s, &secret).unwrap()),
        json!([
            {"op":"replace","path":"/connectionProperties/UserId","value":"integration@acme.example"},
            {"op":"add","path":"/connectionProperties/SFpassword","value":"N3w-P@ss/2026"},
            {"op":"add","path":"/connectionProperties/sftoken","value":"newT0ken2026xyz"}
        ])
    );
    // A connection set to another authenticator is switched to user name + password.
    c.properties.insert("authenticator".into(), json!("oauth2"));
    let b = body(&build(&c, &s, &secret).unwrap());
    assert_eq!(
        b[3],
        json!({"op":"replace","path":"/connectionProperties/authenticator","value":"salesforce"})
    );
    // Field mapping works for the Salesforce keys too.
    let connector = Connector::lookup("sfdc").unwrap();
    let fields = BTreeMap::from([("sftoken".to_owned(), "sf_token".to_owned())]);
    let mapped = BuildSpec::from_catalogue(&connector, connector.scheme(None).unwrap(), &fields);
    let secret = SecretValue::text(
        "v1",
        r#"{"username":"u@acme.example","password":"p","sf_token":"TOKEN9"}"#,
    );
    let b = body(
        &build(
            &conn("sfdc", json!({"authenticator": "salesforce"})),
            &mapped,
            &secret,
        )
        .unwrap(),
    );
    assert_eq!(b[2]["path"], "/connectionProperties/sftoken");
    assert_eq!(b[2]["value"], "TOKEN9");
}

#[test]
fn salesforce_refuses_an_empty_token_naming_the_key() {
    let (c, _) = example_get("sfdc", "password");
    let err = build(
        &c,
        &spec("sfdc"),
        &SecretValue::text(
            "v1",
            r#"{"username":"u@acme.example","password":"CANARY-sf-pass","security_token":""}"#,
        ),
    )
    .unwrap_err();
    assert_eq!(err.error_type(), "empty_field");
    let text = format!("{err} {err:?}");
    assert!(text.contains("security_token"), "{text}");
    assert!(!text.contains("CANARY"), "{text}");
}

#[test]
fn snowflake_target_password_scheme_writes_only_user_and_password() {
    let connector = Connector::lookup("reptgt_qdisnowflake").unwrap();
    // key_pair stays the default; password is chosen by name.
    assert_eq!(connector.scheme(None).unwrap().name, "key_pair");
    let scheme = connector.scheme(Some("password")).unwrap();
    assert!(scheme.constants.is_empty());
    let (c, ex) = example_get("reptgt_qdisnowflake", "password");
    let s = BuildSpec::from_catalogue(&connector, scheme, &BTreeMap::new());
    let b = body(&build(&c, &s, &SecretValue::text("v1", ex.secret.to_string())).unwrap());
    assert_eq!(
        b,
        json!([
            {"op":"replace","path":"/connectionProperties/username","value":"SVC_LOAD_2026"},
            {"op":"add","path":"/connectionProperties/password","value":"N3w-P@ss/2026"}
        ])
    );
    // No public source names the password-mode value of authentication_mode, so the scheme
    // never touches it, even on a key-pair connection (the README says so).
    let (kp, _) = example_get("reptgt_qdisnowflake", "key_pair");
    assert_eq!(kp.properties["authentication_mode"], "KEY_PAIR");
    let b = body(&build(&kp, &s, &SecretValue::text("v1", ex.secret.to_string())).unwrap());
    assert!(
        b.as_array()
            .unwrap()
            .iter()
            .all(|o| o["path"] != "/connectionProperties/authentication_mode"),
        "{b}"
    );
}
