//! `AwsSecretsManager` against a real moto server over HTTP (see `tests/common/moto.rs`).
//! Run `bash scripts/setup-moto.sh` first.

mod common;

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, Instant},
};

use aws_sdk_secretsmanager::config::Credentials;
use common::moto::{Moto, client_for, free_port};
use qlik_rotator::{
    config::load_str,
    secrets::{
        AnySource, SecretPayload, SecretRef, SecretSource, SecretValue, SourceConfig, SourceError,
        VersionSelector,
        aws::{AwsSecretsManager, AwsSecretsManagerConfig},
    },
};
use secrecy::ExposeSecret;

async fn source(moto: &Moto) -> AwsSecretsManager {
    AwsSecretsManager::from_client(moto.client().await)
}

fn at(id: &str, version: VersionSelector) -> SecretRef {
    SecretRef {
        id: id.to_owned(),
        version,
    }
}

fn stage(s: &str) -> VersionSelector {
    VersionSelector::Stage(s.to_owned())
}

fn text(v: &SecretValue) -> &str {
    match &v.payload {
        SecretPayload::Text(t) => t.expose_secret(),
        SecretPayload::Binary(_) => panic!("expected a text payload"),
    }
}

#[tokio::test]
async fn string_secret_current_version() {
    let moto = Moto::start();
    let version = moto
        .create_secret(
            "test/string-current",
            r#"{"username":"svc","password":"p1"}"#,
        )
        .await;
    let src = source(&moto).await;
    assert_eq!(src.kind(), "aws_secrets_manager");
    let v = src
        .fetch(&SecretRef::current("test/string-current"))
        .await
        .unwrap();
    assert_eq!(v.version, version);
    assert_eq!(text(&v), r#"{"username":"svc","password":"p1"}"#);
    let fields = v.fields().unwrap();
    assert_eq!(fields.get("password").unwrap().expose_secret(), "p1");
}

#[tokio::test]
async fn put_secret_value_gives_new_version_and_old_stays_readable() {
    let moto = Moto::start();
    let name = "test/put-new-version";
    let v1 = moto.create_secret(name, "value-one").await;
    let v2 = moto.put_secret_value(name, "value-two").await;
    assert_ne!(v1, v2);
    let src = source(&moto).await;

    let cur = src.fetch(&SecretRef::current(name)).await.unwrap();
    assert_eq!(cur.version, v2);
    assert_eq!(text(&cur), "value-two");

    let old = src
        .fetch(&at(name, VersionSelector::Id(v1.clone())))
        .await
        .unwrap();
    assert_eq!(old.version, v1);
    assert_eq!(text(&old), "value-one");

    let prev = src.fetch(&at(name, stage("AWSPREVIOUS"))).await.unwrap();
    assert_eq!(prev.version, v1);
    assert_eq!(text(&prev), "value-one");
}

#[tokio::test]
async fn explicit_stage_follows_update_secret_version_stage() {
    // The bug patched by scripts/moto_server.py; we always send VersionStage anyway.
    let moto = Moto::start();
    let name = "test/stage-move";
    let v1 = moto.create_secret(name, "one").await;
    let client = moto.client().await;
    let v2 = client
        .put_secret_value()
        .secret_id(name)
        .secret_string("two")
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id()
        .unwrap()
        .to_owned();
    let src = source(&moto).await;
    let pending = src.fetch(&at(name, stage("AWSPENDING"))).await.unwrap();
    assert_eq!(
        (pending.version.as_str(), text(&pending)),
        (v2.as_str(), "two")
    );
    let cur = src.fetch(&SecretRef::current(name)).await.unwrap();
    assert_eq!(cur.version, v1);

    client
        .update_secret_version_stage()
        .secret_id(name)
        .version_stage("AWSCURRENT")
        .remove_from_version_id(&v1)
        .move_to_version_id(&v2)
        .send()
        .await
        .unwrap();
    let cur = src.fetch(&SecretRef::current(name)).await.unwrap();
    assert_eq!((cur.version.as_str(), text(&cur)), (v2.as_str(), "two"));
    let prev = src.fetch(&at(name, stage("AWSPREVIOUS"))).await.unwrap();
    assert_eq!(prev.version, v1);
    // And the launcher's patch: a request without VersionStage sees the new version too.
    let raw = client
        .get_secret_value()
        .secret_id(name)
        .send()
        .await
        .unwrap();
    assert_eq!(raw.version_id(), Some(v2.as_str()));
}

#[tokio::test]
async fn binary_secret_keeps_exact_bytes() {
    let moto = Moto::start();
    let bytes: Vec<u8> = (0..=255).chain([0, 0xff, 0x80]).collect();
    let version = moto.create_binary_secret("test/binary", &bytes).await;
    let v = source(&moto)
        .await
        .fetch(&SecretRef::current("test/binary"))
        .await
        .unwrap();
    assert_eq!(v.version, version);
    match &v.payload {
        SecretPayload::Binary(b) => assert_eq!(b.expose_secret(), &bytes),
        SecretPayload::Text(_) => panic!("expected a binary payload"),
    }
}

#[tokio::test]
async fn missing_secret_is_not_found() {
    let moto = Moto::start();
    let err = source(&moto)
        .await
        .fetch(&SecretRef::current("test/does-not-exist"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    assert_eq!(err.error_type(), "secret_not_found");
    assert!(!err.is_retriable());
    let msg = err.to_string();
    assert!(msg.contains("test/does-not-exist"), "{msg}");
    assert!(msg.contains("ResourceNotFoundException"), "{msg}");
}

#[tokio::test]
async fn unknown_version_id_and_stage_are_not_found() {
    let moto = Moto::start();
    let name = "test/unknown-version";
    moto.create_secret(name, "x").await;
    let src = source(&moto).await;

    let err = src
        .fetch(&at(
            name,
            VersionSelector::Id("00000000-0000-0000-0000-000000000000".into()),
        ))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err:?}");
    assert!(
        err.to_string()
            .contains(r#"(version id "00000000-0000-0000-0000-000000000000")"#),
        "{err}"
    );

    let err = src.fetch(&at(name, stage("AWSPENDING"))).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err:?}");
    assert!(
        err.to_string().contains(r#"(version stage "AWSPENDING")"#),
        "{err}"
    );
}

#[tokio::test]
async fn secret_scheduled_for_deletion_is_invalid() {
    let moto = Moto::start();
    let name = "test/deleted";
    moto.create_secret(name, "x").await;
    moto.client()
        .await
        .delete_secret()
        .secret_id(name)
        .recovery_window_in_days(7)
        .send()
        .await
        .unwrap();
    let err = source(&moto)
        .await
        .fetch(&SecretRef::current(name))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Invalid { .. }), "{err:?}");
    assert!(err.to_string().contains("InvalidRequestException"), "{err}");
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn unknown_credentials_are_access_denied() {
    // With auth enforcement on, moto rejects access keys it has not issued.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let err = source(&moto)
        .await
        .fetch(&SecretRef::current("test/any"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::AccessDenied { .. }), "{err:?}");
    assert_eq!(err.error_type(), "secret_access_denied");
    assert!(!err.is_retriable());
}

#[tokio::test]
async fn unreachable_endpoint_is_unavailable_and_retriable() {
    let port = free_port(); // bound and released: nothing listens there
    let src = AwsSecretsManager::from_client(client_for(&format!("http://127.0.0.1:{port}")));
    let started = Instant::now();
    let err = src
        .fetch(&SecretRef::current("test/unreachable"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retriable());
    assert_eq!(err.error_type(), "secret_source_unavailable");
    // Three attempts with jittered backoff, well inside the 30 s operation timeout.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    eprintln!(
        "unreachable endpoint: {err} (after {:?})",
        started.elapsed()
    );
}

#[tokio::test]
async fn secret_value_never_appears_in_debug_or_display() {
    let moto = Moto::start();
    let canary = "CANARY-aws-8c1f0e";
    let name = "test/canary";
    let json = format!(r#"{{"username":"svc","password":"{canary}"}}"#);
    let v1 = moto.create_secret(name, &json).await;
    moto.put_secret_value(name, &format!("not json {canary}"))
        .await;
    let bin_name = "test/canary-bin";
    moto.create_binary_secret(bin_name, canary.as_bytes()).await;
    let src = source(&moto).await;

    let mut out = format!("{src:?}\n");
    for r in [
        SecretRef::current(name),
        at(name, VersionSelector::Id(v1)),
        at(name, stage("AWSPREVIOUS")),
        at(name, stage("AWSPENDING")),
        at(name, VersionSelector::Id("nope".into())),
        SecretRef::current(bin_name),
        SecretRef::current("test/canary-missing"),
    ] {
        match src.fetch(&r).await {
            Ok(v) => {
                out.push_str(&format!("{v:?} {:?}\n", v.payload));
                match v.fields() {
                    Ok(f) => out.push_str(&format!("{f:?}\n")),
                    Err(e) => out.push_str(&format!("{e} {e:?}\n")),
                }
            }
            Err(e) => out.push_str(&format!("{e} {e:?}\n")),
        }
    }
    // It was read (so the check is not vacuous) ...
    let cur = src.fetch(&SecretRef::current(name)).await.unwrap();
    assert!(text(&cur).contains(canary));
    // ... but never printed.
    assert!(!out.contains(canary), "{out}");
    assert!(out.contains("password"), "{out}");
}

// --- The factory: `[sources.NAME]` → config → build → client ---------------------------------

/// `[sources.aws]` with `extra` keys, loaded through the real config walker; the source's
/// config as the walker produced it.
fn aws_config_from_toml(extra: &str) -> AwsSecretsManagerConfig {
    let text = format!(
        "[qlik]\ntenant_url = \"https://acme.eu.qlikcloud.com\"\napi_key_env = \"QLIK_API_KEY\"\n\
         [sources.aws]\ntype = \"aws_secrets_manager\"\n{extra}\n\
         [[jobs]]\nname = \"j\"\nconnection = {{ id = \"00000001-0000-4000-8000-000000000001\" }}\n\
         connector = \"mssql\"\nsource = \"aws\"\nsecret = \"s\"\n"
    );
    let cfg = load_str(&text, Path::new("/"), &HashMap::new()).expect("valid config");
    match &cfg.sources["aws"] {
        SourceConfig::AwsSecretsManager(c) => c.clone(),
        other => panic!("expected an AWS source, got {other:?}"),
    }
}

/// The production loader with fixed test credentials (the only thing the default chain would
/// find in the environment), so the test never reads or sets process variables.
fn loader() -> aws_config::ConfigLoader {
    aws_config::defaults(aws_config::BehaviorVersion::latest()).credentials_provider(
        Credentials::new("testing", "testing", None, None, "factory-test"),
    )
}

#[tokio::test]
async fn factory_applies_region_and_endpoint_url_from_config() {
    let moto = Moto::start();
    let canary = "CANARY-factory-5d21";
    let version = moto
        .create_secret("test/factory", &format!(r#"{{"password":"{canary}"}}"#))
        .await;
    let config = aws_config_from_toml(&format!(
        "region = \"us-east-1\"\nendpoint_url = \"{}\"",
        moto.endpoint
    ));
    assert_eq!(config.region.as_deref(), Some("us-east-1"));
    let src = config.build_with(loader()).await;
    let shown = format!("{src:?}");
    assert!(shown.contains("us-east-1"), "{shown}");
    let v = src
        .fetch(&SecretRef::current("test/factory"))
        .await
        .unwrap();
    assert_eq!(v.version, version);
    assert!(text(&v).contains(canary));
    assert!(!format!("{shown} {v:?}").contains(canary));
}

#[tokio::test]
async fn factory_region_from_config_is_the_region_asked() {
    // moto keeps secrets per region: the same endpoint in another region has no such secret,
    // which shows the configured region (not a default) signs the request.
    let moto = Moto::start();
    moto.create_secret("test/regional", r#"{"password":"p"}"#)
        .await;
    let config = aws_config_from_toml(&format!(
        "region = \"eu-west-1\"\nendpoint_url = \"{}\"",
        moto.endpoint
    ));
    let err = config
        .build_with(loader())
        .await
        .fetch(&SecretRef::current("test/regional"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::NotFound { .. }), "{err:?}");
    assert_eq!(err.error_type(), "secret_not_found");
}

#[tokio::test]
async fn factory_endpoint_url_from_config_is_the_endpoint_called() {
    let port = free_port(); // bound and released: nothing listens there
    let config = aws_config_from_toml(&format!(
        "region = \"us-east-1\"\nendpoint_url = \"http://127.0.0.1:{port}\""
    ));
    let err = config
        .build_with(loader())
        .await
        .fetch(&SecretRef::current("test/unreachable"))
        .await
        .unwrap_err();
    assert!(matches!(err, SourceError::Unavailable { .. }), "{err:?}");
    assert!(err.is_retriable());
}

#[tokio::test]
async fn factory_through_the_source_enum_builds_the_aws_variant() {
    // The enum's build phase: `SourceConfig::build` dispatches to the file's factory and
    // gives the matching `AnySource` variant (default chain; nothing is fetched).
    let config = SourceConfig::AwsSecretsManager(AwsSecretsManagerConfig {
        region: Some("ap-southeast-2".into()),
        endpoint_url: Some("http://127.0.0.1:9".into()),
    });
    assert_eq!(config.kind(), "aws_secrets_manager");
    let built = config.build().await;
    assert_eq!(built.kind(), "aws_secrets_manager");
    match &built {
        AnySource::AwsSecretsManager(src) => {
            assert!(format!("{src:?}").contains("ap-southeast-2"), "{src:?}");
        }
        other => panic!("expected the AWS variant, got {other:?}"),
    }
}

// --- BatchGetSecretValue (fetch_many) -----------------------------------------------------------

#[tokio::test]
async fn fetch_many_reads_45_secrets_in_3_batch_calls_in_order() {
    let moto = Moto::start();
    let mut versions = Vec::new();
    for i in 0..45 {
        versions.push(
            moto.create_secret(&format!("batch/s{i}"), &format!(r#"{{"password":"p{i}"}}"#))
                .await,
        );
    }
    let src = source(&moto).await;
    let refs: Vec<SecretRef> = (0..45)
        .rev()
        .map(|i| SecretRef::current(format!("batch/s{i}")))
        .collect();
    let got = src.fetch_many(&refs).await;
    assert_eq!(got.len(), 45);
    for (k, v) in got.iter().enumerate() {
        let i = 44 - k;
        let v = v.as_ref().unwrap();
        assert_eq!(v.version, versions[i], "s{i}");
        assert_eq!(text(v), format!(r#"{{"password":"p{i}"}}"#));
    }
    assert_eq!(src.api_calls(), 3, "20 + 20 + 5 ids, one call each");
}

#[tokio::test]
async fn fetch_many_falls_back_per_id_for_errors_other_stages_and_arns() {
    let moto = Moto::start();
    let v1 = moto.create_secret("batch/a", "a1").await;
    let arn_b = moto
        .client()
        .await
        .create_secret()
        .name("batch/b")
        .secret_string("b1")
        .send()
        .await
        .unwrap()
        .arn
        .unwrap();
    // A new AWSCURRENT moved by UpdateSecretVersionStage (the moto stale-default note).
    let client = moto.client().await;
    let v2 = client
        .put_secret_value()
        .secret_id("batch/a")
        .secret_string("a2")
        .version_stages("AWSPENDING")
        .send()
        .await
        .unwrap()
        .version_id
        .unwrap();
    client
        .update_secret_version_stage()
        .secret_id("batch/a")
        .version_stage("AWSCURRENT")
        .move_to_version_id(&v2)
        .remove_from_version_id(&v1)
        .send()
        .await
        .unwrap();
    let src = source(&moto).await;
    let refs = vec![
        SecretRef::current("batch/a"),
        SecretRef::current(arn_b.clone()),
        SecretRef::current("batch/missing"),
        at("batch/a", stage("AWSPREVIOUS")),
        SecretRef::current("batch/a"),
    ];
    let got = src.fetch_many(&refs).await;
    assert_eq!(got.len(), 5);
    let ok = |i: usize| got[i].as_ref().unwrap();
    assert_eq!((ok(0).version.as_str(), text(ok(0))), (v2.as_str(), "a2"));
    assert_eq!(
        text(ok(1)),
        "b1",
        "an ARN in the batch is matched to its entry"
    );
    assert!(
        matches!(got[2], Err(SourceError::NotFound { .. })),
        "{:?}",
        got[2]
    );
    assert_eq!((ok(3).version.as_str(), text(ok(3))), (v1.as_str(), "a1"));
    assert_eq!(text(ok(4)), "a2");
    // One batch for the AWSCURRENT refs (each id sent once); the missing id is read alone
    // (its error is precise), and so are the AWSPREVIOUS ref and the repeated id (callers
    // such as triggers::prefetch send each ref once).
    assert_eq!(src.api_calls(), 4);
}

#[tokio::test]
async fn fetch_many_on_an_unreachable_endpoint_reports_each_id() {
    let src =
        AwsSecretsManager::from_client(client_for(&format!("http://127.0.0.1:{}", free_port())));
    let refs = vec![SecretRef::current("x/1"), SecretRef::current("x/2")];
    let got = src.fetch_many(&refs).await;
    assert_eq!(got.len(), 2);
    for r in &got {
        let e = r.as_ref().unwrap_err();
        assert_eq!(e.error_type(), "secret_source_unavailable", "{e}");
    }
}

// --- Credential age (issue 15 item 6) ------------------------------------------------------------

/// Unix seconds now.
fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn the_versions_creation_time_comes_from_get_secret_value_and_the_batch() {
    let moto = Moto::start();
    let before = now_secs() - 5;
    moto.create_secret("age/one", r#"{"password":"p1"}"#).await;
    let src = source(&moto).await;
    let v1 = src.fetch(&SecretRef::current("age/one")).await.unwrap();
    let c1 = v1.created.expect("GetSecretValue answers CreatedDate");
    assert!((before..=now_secs() + 5).contains(&c1), "{c1}");
    // Versions are stamped to the second: a new one a second later is newer.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    moto.put_secret_value("age/one", r#"{"password":"p2"}"#)
        .await;
    let v2 = src.fetch(&SecretRef::current("age/one")).await.unwrap();
    assert!(v2.created.unwrap() > c1, "{:?} vs {c1}", v2.created);
    let batch = src.fetch_many(&[SecretRef::current("age/one")]).await;
    let b = batch[0].as_ref().unwrap();
    assert_eq!(b.version, v2.version);
    assert_eq!(b.created, v2.created, "BatchGetSecretValue's CreatedDate");
}
