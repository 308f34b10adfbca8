//! The `aws_ssm` source against a real moto server (SSM Parameter Store).
//!
//! moto has no call counter, so the calls are counted at our side by an SDK interceptor that
//! sees every HTTP request the client transmits (its `X-Amz-Target` names the operation): a
//! source that read 25 names one by one would show 25 `GetParameter`s, not 3 `GetParameters`.

mod common;

use std::sync::{Arc, Mutex};

use aws_sdk_ssm::{
    Client,
    config::{
        BehaviorVersion, ConfigBag, Credentials, Intercept, Region, RuntimeComponents,
        interceptors::BeforeTransmitInterceptorContextRef,
    },
    error::BoxError,
    types::ParameterType,
};
use common::{harness::*, moto::Moto};
use qlik_rotator::secrets::{
    SecretRef, SecretSource, SecretValue, VersionSelector,
    aws::{default_retry_config, default_timeout_config},
    aws_ssm::AwsSsm,
};
use secrecy::ExposeSecret;

const CANARY: &str = "CANARY-ssm-41d7";

/// Counts the operations the client transmits, by `X-Amz-Target`.
#[derive(Debug, Default, Clone)]
struct Calls(Arc<Mutex<Vec<String>>>);

impl Intercept for Calls {
    fn name(&self) -> &'static str {
        "count-calls"
    }
    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let target = context
            .request()
            .headers()
            .get("x-amz-target")
            .unwrap_or("?")
            .trim_start_matches("AmazonSSM.")
            .to_owned();
        self.0.lock().unwrap().push(target);
        Ok(())
    }
}

impl Calls {
    fn of(&self, op: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|o| *o == op).count()
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

fn client(endpoint: &str, calls: Option<Calls>) -> Client {
    let mut b = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .timeout_config(default_timeout_config())
        .retry_config(default_retry_config());
    if let Some(c) = calls {
        b = b.interceptor(c);
    }
    Client::from_conf(b.build())
}

/// The source on moto, with its calls counted.
fn source(moto: &Moto) -> (AwsSsm, Calls) {
    let calls = Calls::default();
    (
        AwsSsm::from_client(client(&moto.endpoint, Some(calls.clone()))),
        calls,
    )
}

/// Puts `value` (a SecureString) at `name`, overwriting; returns the new version.
async fn put(moto: &Moto, name: &str, value: &str) -> i64 {
    client(&moto.endpoint, None)
        .put_parameter()
        .name(name)
        .value(value)
        .r#type(ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .expect("PutParameter")
        .version()
}

fn at(id: &str, version: VersionSelector) -> SecretRef {
    SecretRef {
        id: id.into(),
        version,
    }
}

fn field(v: &SecretValue, key: &str) -> String {
    v.fields()
        .unwrap()
        .get(key)
        .unwrap()
        .expose_secret()
        .to_owned()
}

#[tokio::test]
async fn a_json_securestring_is_decrypted_with_its_version() {
    let moto = Moto::start();
    let (src, calls) = source(&moto);
    put(
        &moto,
        "/prod/qlik/db",
        r#"{"username":"svc","password":"v1"}"#,
    )
    .await;
    let v2 = format!(r#"{{"username":"svc","password":"{CANARY}"}}"#);
    assert_eq!(put(&moto, "/prod/qlik/db", &v2).await, 2);
    let v = src
        .fetch(&SecretRef::current("/prod/qlik/db"))
        .await
        .unwrap();
    assert_eq!(v.version, "2");
    assert_eq!(field(&v, "password"), CANARY);
    assert!(!format!("{v:?} {src:?}").contains("CANARY"));
    // A pinned version reads `name:1`.
    let v1 = src
        .fetch(&at("/prod/qlik/db", VersionSelector::Id("1".into())))
        .await
        .unwrap();
    assert_eq!(v1.version, "1");
    assert_eq!(field(&v1, "password"), "v1");
    assert_eq!(calls.of("GetParameter"), 2);
    // A version that does not exist.
    let err = src
        .fetch(&at("/prod/qlik/db", VersionSelector::Id("9".into())))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(!err.to_string().contains("CANARY"), "{err}");
}

#[tokio::test]
async fn a_label_reads_the_labelled_version() {
    let moto = Moto::start();
    let (src, _) = source(&moto);
    put(&moto, "/prod/qlik/db", r#"{"password":"old"}"#).await;
    put(&moto, "/prod/qlik/db", r#"{"password":"new"}"#).await;
    client(&moto.endpoint, None)
        .label_parameter_version()
        .name("/prod/qlik/db")
        .parameter_version(1)
        .labels("approved")
        .send()
        .await
        .expect("LabelParameterVersion");
    let v = src
        .fetch(&at(
            "/prod/qlik/db",
            VersionSelector::Stage("approved".into()),
        ))
        .await
        .unwrap();
    assert_eq!(v.version, "1");
    assert_eq!(field(&v, "password"), "old");
}

#[tokio::test]
async fn one_parameter_per_field_below_a_path() {
    let moto = Moto::start();
    let (src, calls) = source(&moto);
    put(&moto, "/prod/qlik/sql/username", "svc_fin").await;
    put(&moto, "/prod/qlik/sql/password", "first").await;
    put(&moto, "/prod/qlik/sql/password", CANARY).await;
    // Deeper and neighbouring parameters are not fields.
    put(&moto, "/prod/qlik/sql/deeper/x", "no").await;
    put(&moto, "/prod/qlik/sqlx", "no").await;
    let v = src
        .fetch(&SecretRef::current("/prod/qlik/sql/"))
        .await
        .unwrap();
    assert_eq!(field(&v, "username"), "svc_fin");
    assert_eq!(field(&v, "password"), CANARY);
    assert_eq!(
        v.fields().unwrap().keys().collect::<Vec<_>>(),
        ["password", "username"]
    );
    assert_eq!(v.version, "password=2,username=1");
    assert_eq!(calls.of("GetParametersByPath"), 1);
    // A new version of one field is a new version of the whole.
    put(&moto, "/prod/qlik/sql/username", "svc_fin_2").await;
    let v = src
        .fetch(&SecretRef::current("/prod/qlik/sql/"))
        .await
        .unwrap();
    assert_eq!(v.version, "password=2,username=2");
    // An empty path is not found.
    let err = src
        .fetch(&SecretRef::current("/prod/qlik/none/"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
}

#[tokio::test]
async fn a_batch_of_25_names_is_3_get_parameters_calls() {
    let moto = Moto::start();
    let (src, calls) = source(&moto);
    let mut refs = Vec::new();
    for i in 0..25 {
        let name = format!("/prod/qlik/job-{i:02}");
        put(&moto, &name, &format!(r#"{{"password":"{CANARY}-{i}"}}"#)).await;
        refs.push(SecretRef::current(name));
    }
    let out = src.fetch_many(&refs).await;
    assert_eq!(out.len(), 25);
    for (i, r) in out.iter().enumerate() {
        let v = r.as_ref().unwrap();
        assert_eq!(field(v, "password"), format!("{CANARY}-{i}"), "{i}");
        assert_eq!(v.version, "1");
    }
    assert_eq!(calls.of("GetParameters"), 3, "{:?}", calls.0);
    assert_eq!(calls.total(), 3, "{:?}", calls.0);
}

#[tokio::test]
async fn a_batch_falls_back_per_name_for_invalid_parameters() {
    let moto = Moto::start();
    let (src, calls) = source(&moto);
    put(&moto, "/prod/qlik/a", r#"{"password":"a"}"#).await;
    put(&moto, "/prod/qlik/b", r#"{"password":"b"}"#).await;
    put(&moto, "/prod/qlik/path/password", "p").await;
    let refs = [
        SecretRef::current("/prod/qlik/a"),
        SecretRef::current("/prod/qlik/missing"),
        SecretRef::current("/prod/qlik/b"),
        SecretRef::current("/prod/qlik/a"),
        SecretRef::current("/prod/qlik/path/"),
        at("/prod/qlik/a", VersionSelector::Id("x".into())),
    ];
    let out = src.fetch_many(&refs).await;
    assert_eq!(field(out[0].as_ref().unwrap(), "password"), "a");
    let err = out[1].as_ref().unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(err.to_string().contains("ParameterNotFound"), "{err}");
    assert_eq!(field(out[2].as_ref().unwrap(), "password"), "b");
    assert_eq!(field(out[3].as_ref().unwrap(), "password"), "a");
    assert_eq!(field(out[4].as_ref().unwrap(), "password"), "p");
    assert_eq!(out[5].as_ref().unwrap_err().error_type(), "secret_invalid");
    // One batch for the three distinct names, then the invalid one alone, then the path.
    assert_eq!(calls.of("GetParameters"), 1, "{:?}", calls.0);
    assert_eq!(calls.of("GetParameter"), 1, "{:?}", calls.0);
    assert_eq!(calls.of("GetParametersByPath"), 1, "{:?}", calls.0);
}

#[tokio::test]
async fn a_missing_parameter_is_not_found() {
    let moto = Moto::start();
    let (src, _) = source(&moto);
    let err = src
        .fetch(&SecretRef::current("/prod/qlik/nothing"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn unknown_credentials_are_access_denied() {
    // moto checks credentials once INITIAL_NO_AUTH_ACTION_COUNT is spent.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let (src, _) = source(&moto);
    let err = src
        .fetch(&SecretRef::current("/prod/qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
}

#[tokio::test]
async fn an_unreachable_endpoint_is_unavailable() {
    let src = AwsSsm::from_client(client(
        &format!("http://127.0.0.1:{}", common::moto::free_port()),
        None,
    ));
    let err = src
        .fetch(&SecretRef::current("/prod/qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_source_unavailable", "{err}");
    assert!(err.is_retriable());
}

#[tokio::test]
async fn rotate_end_to_end_from_ssm() {
    let moto = Moto::start();
    put(
        &moto,
        "/prod/qlik/finance-sql",
        &format!(r#"{{"username":"svc_fin_2026","password":"{CANARY}"}}"#),
    )
    .await;
    put(&moto, "/prod/qlik/s3/key-id", "AKIANEW2026").await;
    put(&moto, "/prod/qlik/s3/key", &format!("s3-{CANARY}")).await;
    let sim = tenant(qlik_sim::SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[sources.ssm]\ntype = \"aws_ssm\"\nendpoint_url = \"{}\"\nregion = \"us-east-1\"\n\
         [daemon]\nstate_dir = \"state\"\n\
         [[jobs]]\nname = \"finance-sql\"\nconnection = {{ name = \"Finance SQL\", space = \"finance\" }}\n\
         connector = \"mssql\"\nsource = \"ssm\"\nsecret = \"/prod/qlik/finance-sql\"\n\
         [[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\n\
         connector = \"File_AmazonS3ConnectorV2\"\nsource = \"ssm\"\nsecret = \"/prod/qlik/s3/\"\n\
         [jobs.fields]\naccessKey = \"key-id\"\nsecretKey = \"key\"\n",
        qlik_section(&sim),
        moto.endpoint
    );
    let cfg = write_config(dir.path(), &text);
    let mut env = env(&[
        ("QLIK_API_KEY", API_KEY),
        ("RUST_LOG", "trace"),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
    ]);
    env.push(("AWS_REGION".into(), "us-east-1".into()));
    let out = run_cli(
        &[
            "--log-format",
            "json",
            "rotate",
            "-c",
            cfg.to_str().unwrap(),
            "--all",
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(with_method(&sim, "PATCH").len(), 2);
    assert_eq!(stored_prop(&sim, SQL_ID, "username"), "svc_fin_2026");
    assert_eq!(stored_prop(&sim, S3_ID, "accessKey"), "AKIANEW2026");
    assert!(
        out.stdout.contains("secret version key=1,key-id=1;"),
        "{}",
        out.stdout
    );
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(CANARY), "secret leaked: {text}");
    }
}

// --- Credential age (issue 15 item 6) ------------------------------------------------------------

#[tokio::test]
async fn the_parameters_last_modified_date_is_the_versions_creation_time() {
    let moto = Moto::start();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now() - 5;
    put(&moto, "/age/password", "p1").await;
    let (src, _) = source(&moto);
    let v = src
        .fetch(&at(
            "/age/password",
            VersionSelector::Stage("AWSCURRENT".into()),
        ))
        .await
        .unwrap();
    let c = v.created.expect("GetParameter answers LastModifiedDate");
    assert!((before..=now() + 5).contains(&c), "{c}");
}
