//! The `vault` source against a real OpenBao dev server (scripts/setup-bao.sh), plus a
//! hostile local server for answers no real Vault gives, and a fake Kubernetes TokenReview API
//! for OpenBao's kubernetes auth.
//!
//! Every secret value and credential is a canary, checked absent from errors and `Debug`.

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use common::{bao::Bao, harness::*};
use qlik_rotator::secrets::{
    SecretRef, SecretSource, SecretValue, SourceError, VersionSelector,
    vault::{DEFAULT_TIMEOUT, VaultAuth, VaultConfig, VaultSource},
};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde_json::{Value, json};

const POLICY: &str = include_str!("../deploy/vault/policy.hcl");
const CANARY: &str = "CANARY-vault-5e0c2a";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn config(addr: &str, auth: VaultAuth) -> VaultConfig {
    VaultConfig {
        address: addr.to_owned(),
        mount: "secret".into(),
        namespace: None,
        ca_file: None,
        auth,
        timeout: DEFAULT_TIMEOUT,
    }
}

fn current(id: &str) -> SecretRef {
    SecretRef::current(id)
}

fn pinned(id: &str, v: &str) -> SecretRef {
    SecretRef {
        id: id.into(),
        version: VersionSelector::Id(v.into()),
    }
}

fn password(v: &SecretValue) -> String {
    v.fields()
        .unwrap()
        .get("password")
        .unwrap()
        .expose_secret()
        .to_owned()
}

/// Asserts the error leaks none of `secrets`, in Display or Debug.
fn no_leak(err: &SourceError, secrets: &[&str]) {
    let shown = format!("{err} {err:?}");
    for s in secrets {
        assert!(!shown.contains(s), "leaked {s:?}: {shown}");
    }
    assert!(!shown.contains("CANARY"), "{shown}");
}

/// A token with the project's policy (deploy/vault/policy.hcl), in a token file.
async fn token_source(bao: &Bao, dir: &Path) -> (VaultSource, String) {
    bao.put_policy("qlik-rotator", POLICY).await;
    let token = bao.create_token(&["qlik-rotator"], "1h").await;
    let file = write(dir, "token", &format!("{token}\n"));
    (
        VaultSource::new(&config(&bao.addr, VaultAuth::Token { token_file: file })),
        token,
    )
}

/// AppRole `qr` with the project's policy and `params`; the source and its secret id.
async fn approle_source(bao: &Bao, dir: &Path, params: Value) -> (VaultSource, String) {
    bao.put_policy("qlik-rotator", POLICY).await;
    let mut p = json!({"token_policies": ["qlik-rotator"]});
    p.as_object_mut()
        .unwrap()
        .extend(params.as_object().unwrap().clone());
    let (role_id, secret_id) = bao.approle("qr", p).await;
    let file = write(dir, "secret-id", &secret_id);
    let src = VaultSource::new(&config(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id,
            secret_id_file: file,
        },
    ));
    (src, secret_id)
}

#[tokio::test]
async fn token_file_reads_the_current_and_a_pinned_version() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        bao.kv_put(
            "qlik/db",
            json!({"username": "svc", "password": format!("v1-{CANARY}")})
        )
        .await,
        1
    );
    assert_eq!(
        bao.kv_put(
            "qlik/db",
            json!({"username": "svc", "password": format!("v2-{CANARY}")})
        )
        .await,
        2
    );
    let (src, token) = token_source(&bao, dir.path()).await;
    let v = src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(v.version, "2");
    assert_eq!(password(&v), format!("v2-{CANARY}"));
    let v1 = src.fetch(&pinned("qlik/db", "1")).await.unwrap();
    assert_eq!(v1.version, "1");
    assert_eq!(password(&v1), format!("v1-{CANARY}"));
    assert_eq!(src.stats().logins(), 1, "one token-file read serves both");
    let dbg = format!("{src:?} {v:?} {v1:?}");
    assert!(!dbg.contains(&token) && !dbg.contains("CANARY"), "{dbg}");
    // A version that was never written.
    let err = src.fetch(&pinned("qlik/db", "7")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    no_leak(&err, &[&token]);
}

#[tokio::test]
async fn the_policy_refuses_a_path_outside_its_prefix() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("other/db", json!({"password": CANARY})).await;
    let (src, token) = token_source(&bao, dir.path()).await;
    let err = src.fetch(&current("other/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    assert!(err.to_string().contains("permission denied"), "{err}");
    no_leak(&err, &[&token]);
}

#[tokio::test]
async fn a_token_file_vault_refuses_is_access_denied() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "token", "s.CANARYnotatoken123");
    let src = VaultSource::new(&config(&bao.addr, VaultAuth::Token { token_file: file }));
    let err = src.fetch(&current("qlik/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    assert!(err.to_string().contains("lookup-self"), "{err}");
    no_leak(&err, &["s.CANARYnotatoken123"]);
}

#[tokio::test]
async fn approle_login_reads_the_secret() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let (src, secret_id) = approle_source(&bao, dir.path(), json!({"token_ttl": "1h"})).await;
    let v = src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(password(&v), CANARY);
    assert_eq!(v.version, "1");
    src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(src.stats().logins(), 1, "the token is reused");
    assert!(!format!("{src:?}").contains(&secret_id));
}

#[tokio::test]
async fn a_failed_approle_login_is_a_clear_access_denied() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let (role_id, _) = bao.approle("qr", json!({"token_ttl": "1h"})).await;
    let wrong = "CANARY-wrong-secret-id-0001";
    let file = write(dir.path(), "sid", wrong);
    let src = VaultSource::new(&config(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "approle".into(),
            role_id,
            secret_id_file: file,
        },
    ));
    let err = src.fetch(&current("qlik/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    let text = err.to_string();
    assert!(
        text.contains("login with auth = \"approle\" at auth/approle failed"),
        "{text}"
    );
    no_leak(&err, &[wrong]);
    // A wrong auth mount is the same clear error.
    let src = VaultSource::new(&config(
        &bao.addr,
        VaultAuth::AppRole {
            mount: "nosuch".into(),
            role_id: "r".into(),
            secret_id_file: write(dir.path(), "sid2", wrong),
        },
    ));
    let err = src.fetch(&current("qlik/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    assert!(err.to_string().contains("at auth/nosuch failed"), "{err}");
    no_leak(&err, &[wrong]);
}

#[tokio::test]
async fn a_revoked_token_leads_to_one_fresh_login() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let (src, _) = approle_source(&bao, dir.path(), json!({"token_ttl": "1h"})).await;
    src.fetch(&current("qlik/db")).await.unwrap();
    // Revoke every token of the role (as an operator or a max-TTL expiry would).
    let accessors = bao
        .ok(
            Method::from_bytes(b"LIST").unwrap(),
            "auth/token/accessors",
            None,
        )
        .await;
    for a in accessors["data"]["keys"].as_array().unwrap() {
        let info = bao
            .ok(
                Method::POST,
                "auth/token/lookup-accessor",
                Some(json!({"accessor": a})),
            )
            .await;
        if info["data"]["path"] == "auth/approle/login" {
            bao.ok(
                Method::POST,
                "auth/token/revoke-accessor",
                Some(json!({"accessor": a})),
            )
            .await;
        }
    }
    let v = src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(password(&v), CANARY);
    assert_eq!(src.stats().denied_retries(), 1);
    assert_eq!(src.stats().logins(), 2);
}

#[tokio::test]
async fn an_expired_token_is_replaced_by_a_new_login() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let (src, _) = approle_source(
        &bao,
        dir.path(),
        json!({"token_ttl": "1s", "token_max_ttl": "1s"}),
    )
    .await;
    src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(src.stats().logins(), 1);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let v = src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(password(&v), CANARY);
    assert_eq!(src.stats().logins(), 2, "expired: logged in again");
    assert_eq!(src.stats().denied_retries(), 0, "before Vault refused it");
}

#[tokio::test]
async fn a_token_past_half_its_ttl_is_renewed() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let (src, _) = approle_source(
        &bao,
        dir.path(),
        json!({"token_ttl": "2s", "token_max_ttl": "1h"}),
    )
    .await;
    src.fetch(&current("qlik/db")).await.unwrap();
    src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(src.stats().renewals(), 0, "fresh token: no renewal");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(src.stats().renewals(), 1);
    assert_eq!(src.stats().logins(), 1, "renewed, not replaced");
}

#[tokio::test]
async fn deleted_and_destroyed_versions_are_not_found() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": format!("1-{CANARY}")}))
        .await;
    bao.kv_put("qlik/db", json!({"password": format!("2-{CANARY}")}))
        .await;
    bao.kv_put("qlik/db", json!({"password": format!("3-{CANARY}")}))
        .await;
    bao.ok(
        Method::POST,
        "secret/delete/qlik/db",
        Some(json!({"versions": [1]})),
    )
    .await;
    bao.ok(
        Method::PUT,
        "secret/destroy/qlik/db",
        Some(json!({"versions": [2]})),
    )
    .await;
    let (src, token) = token_source(&bao, dir.path()).await;
    let err = src.fetch(&pinned("qlik/db", "1")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(err.to_string().contains("version 1 is deleted"), "{err}");
    no_leak(&err, &[&token]);
    let err = src.fetch(&pinned("qlik/db", "2")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(err.to_string().contains("version 2 is destroyed"), "{err}");
    // The latest version deleted: the secret is gone for the rotator.
    bao.ok(Method::DELETE, "secret/data/qlik/db", None).await;
    let err = src.fetch(&current("qlik/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(err.to_string().contains("version 3 is deleted"), "{err}");
}

#[tokio::test]
async fn a_wrong_mount_or_a_missing_secret_is_not_found() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, token) = token_source(&bao, dir.path()).await;
    let root_file = write(dir.path(), "root", common::bao::ROOT);
    let mut cfg = config(
        &bao.addr,
        VaultAuth::Token {
            token_file: root_file,
        },
    );
    cfg.mount = "nosuchmount".into();
    let err = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    assert!(err.to_string().contains("\"nosuchmount\""), "{err}");
    cfg.mount = "secret".into();
    let err = VaultSource::new(&cfg)
        .fetch(&current("qlik/never-written"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    no_leak(&err, &[&token, common::bao::ROOT]);
}

#[tokio::test]
async fn the_namespace_header_selects_the_namespace() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.ok(Method::POST, "sys/namespaces/team-a", None).await;
    let (status, v) = bao
        .call_ns(
            Some("team-a"),
            Method::POST,
            "sys/mounts/secret",
            Some(json!({"type": "kv", "options": {"version": "2"}})),
        )
        .await;
    assert!(status < 300, "{status} {v}");
    let (status, v) = bao
        .call_ns(
            Some("team-a"),
            Method::POST,
            "secret/data/qlik/db",
            Some(json!({"data": {"password": CANARY}})),
        )
        .await;
    assert!(status < 300, "{status} {v}");
    let root_file = write(dir.path(), "root", common::bao::ROOT);
    let mut cfg = config(
        &bao.addr,
        VaultAuth::Token {
            token_file: root_file,
        },
    );
    // Without the header the secret is not there (it lives in the namespace only).
    let err = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_not_found", "{err}");
    cfg.namespace = Some("team-a".into());
    let v = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap();
    assert_eq!(password(&v), CANARY);
}

#[tokio::test]
async fn tls_is_verified_against_the_ca_file() {
    let bao = Bao::start_tls().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    let root_file = write(dir.path(), "root", common::bao::ROOT);
    let mut cfg = config(
        &bao.addr,
        VaultAuth::Token {
            token_file: root_file,
        },
    );
    assert!(bao.addr.starts_with("https://"));
    // Without the CA: the dev CA is not trusted.
    let err = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_source_unavailable", "{err}");
    assert!(err.is_retriable());
    no_leak(&err, &[]);
    // A CA that did not sign the server certificate: refused too.
    let other = Bao::start_tls().await;
    cfg.ca_file = other.ca_file.clone();
    let err = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_source_unavailable", "{err}");
    // With its CA file.
    cfg.ca_file = bao.ca_file.clone();
    let v = VaultSource::new(&cfg)
        .fetch(&current("qlik/db"))
        .await
        .unwrap();
    assert_eq!(password(&v), CANARY);
}

// === Kubernetes auth, through a fake TokenReview API ===

/// A fake Kubernetes API serving `POST /apis/authentication.k8s.io/v1/tokenreviews`: the
/// token `good_jwt` authenticates as service account `rotator/qlik-rotator`; the tokens it
/// was asked about are recorded.
async fn fake_token_review(good_jwt: String) -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    use axum::{Json, Router, routing::post};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().route(
        "/apis/authentication.k8s.io/v1/tokenreviews",
        post(move |Json(body): Json<Value>| {
            let s = s.clone();
            let good = good_jwt.clone();
            async move {
                let token = body["spec"]["token"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                let ok = token == good;
                s.lock().unwrap().push(token);
                let status = if ok {
                    json!({"authenticated": true, "user": {
                        "username": "system:serviceaccount:rotator:qlik-rotator",
                        "uid": "6c1d0d9e-0000-4000-8000-000000000001",
                        "groups": ["system:serviceaccounts", "system:serviceaccounts:rotator"]}})
                } else {
                    json!({"authenticated": false, "error": "invalid token"})
                };
                Json(
                    json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                            "status": status}),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A syntactically valid service-account JWT (RS256 header, Kubernetes claims, a dummy
/// signature: the fake TokenReview API is what vouches for it).
fn service_account_jwt(marker: &str) -> String {
    use base64::Engine as _;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let header = b64(&json!({"alg": "RS256", "typ": "JWT", "kid": "k1"}));
    let claims = b64(&json!({
        "iss": "kubernetes/serviceaccount",
        "sub": "system:serviceaccount:rotator:qlik-rotator",
        "kubernetes.io/serviceaccount/namespace": "rotator",
        "kubernetes.io/serviceaccount/service-account.name": "qlik-rotator",
        "kubernetes.io/serviceaccount/service-account.uid": "6c1d0d9e-0000-4000-8000-000000000001",
        "jti": marker,
    }));
    let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7_u8; 64]);
    format!("{header}.{claims}.{sig}")
}

#[tokio::test]
async fn kubernetes_auth_logs_in_with_the_service_account_jwt() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    bao.kv_put("qlik/db", json!({"password": CANARY})).await;
    bao.put_policy("qlik-rotator", POLICY).await;
    let jwt = service_account_jwt("CANARY-jwt-1");
    let (k8s, seen) = fake_token_review(jwt.clone()).await;
    bao.ok(
        Method::POST,
        "sys/auth/kubernetes",
        Some(json!({"type": "kubernetes"})),
    )
    .await;
    // Any PEM serves as the (unused, http) API server CA.
    let some_ca = Bao::start_tls().await;
    let ca_pem = std::fs::read_to_string(some_ca.ca_file.as_ref().unwrap()).unwrap();
    bao.ok(
        Method::POST,
        "auth/kubernetes/config",
        Some(json!({"kubernetes_host": format!("http://{k8s}"),
                    "kubernetes_ca_cert": ca_pem, "disable_local_ca_jwt": true,
                    "token_reviewer_jwt": "reviewer"})),
    )
    .await;
    bao.ok(
        Method::POST,
        "auth/kubernetes/role/qlik-rotator",
        Some(json!({"bound_service_account_names": ["qlik-rotator"],
                    "bound_service_account_namespaces": ["rotator"],
                    "token_policies": ["qlik-rotator"], "token_ttl": "1h"})),
    )
    .await;
    let jwt_file = write(dir.path(), "jwt", &jwt);
    let src = VaultSource::new(&config(
        &bao.addr,
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "qlik-rotator".into(),
            jwt_file: jwt_file.clone(),
        },
    ));
    let v = src.fetch(&current("qlik/db")).await.unwrap();
    assert_eq!(password(&v), CANARY);
    assert_eq!(*seen.lock().unwrap(), vec![jwt.clone()]);
    // A JWT the API server does not vouch for: a clear login failure, the JWT not echoed.
    let bad = service_account_jwt("CANARY-jwt-2");
    std::fs::write(&jwt_file, &bad).unwrap();
    let src = VaultSource::new(&config(
        &bao.addr,
        VaultAuth::Kubernetes {
            mount: "kubernetes".into(),
            role: "qlik-rotator".into(),
            jwt_file,
        },
    ));
    let err = src.fetch(&current("qlik/db")).await.unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    assert!(
        err.to_string()
            .contains("login with auth = \"kubernetes\" at auth/kubernetes failed"),
        "{err}"
    );
    no_leak(&err, &[&bad, &jwt]);
}

// === Hostile answers (a local server playing Vault) ===

/// A server answering every request with `status`, `headers` and `body`; records the
/// requests' headers.
async fn hostile(
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> (String, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    use axum::{Router, http::StatusCode, response::IntoResponse};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let app = Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        let headers = headers.clone();
        let body = body.clone();
        async move {
            s.lock().unwrap().push(req.headers().clone());
            let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
            for (k, v) in headers {
                resp.headers_mut().insert(k, v.parse().unwrap());
            }
            resp
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

const HOSTILE_TOKEN: &str = "s.CANARY-hostile-token-77";

fn hostile_source(addr: &str, dir: &Path) -> VaultSource {
    let file = write(dir, "token", HOSTILE_TOKEN);
    let mut cfg = config(addr, VaultAuth::Token { token_file: file });
    cfg.namespace = Some("team-a/sub".into());
    VaultSource::new(&cfg)
}

#[tokio::test]
async fn hostile_a_huge_body_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, _) = hostile(200, vec![], vec![b'x'; 2 * 1024 * 1024]).await;
    let err = hostile_source(&addr, dir.path())
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_invalid", "{err}");
    assert!(err.to_string().contains("larger than"), "{err}");
    no_leak(&err, &[HOSTILE_TOKEN]);
}

#[tokio::test]
async fn hostile_a_redirect_is_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let (target, target_seen) = hostile(200, vec![], b"{}".to_vec()).await;
    let (addr, _) = hostile(
        307,
        vec![("location", format!("{target}/v1/auth/token/lookup-self"))],
        vec![],
    )
    .await;
    let err = hostile_source(&addr, dir.path())
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_source_unavailable", "{err}");
    assert!(
        err.to_string().contains("redirects are not followed"),
        "{err}"
    );
    assert!(
        target_seen.lock().unwrap().is_empty(),
        "the token was sent to the redirect target"
    );
    no_leak(&err, &[HOSTILE_TOKEN]);
}

#[tokio::test]
async fn hostile_wrong_types_are_invalid_or_refused() {
    let dir = tempfile::tempdir().unwrap();
    for body in [
        json!({"data": {"ttl": "3600", "renewable": "yes"}}),
        json!({"data": []}),
        json!([1, 2]),
    ] {
        let (addr, _) = hostile(200, vec![], body.to_string().into_bytes()).await;
        let err = hostile_source(&addr, dir.path())
            .fetch(&current("qlik/db"))
            .await
            .unwrap_err();
        assert_eq!(err.error_type(), "secret_access_denied", "{body}: {err}");
        assert!(err.to_string().contains("data.ttl"), "{err}");
        no_leak(&err, &[HOSTILE_TOKEN]);
    }
}

#[tokio::test]
async fn hostile_an_error_that_echoes_the_token_is_redacted_and_escaped() {
    let dir = tempfile::tempdir().unwrap();
    let body = json!({"errors": [format!("token {HOSTILE_TOKEN} is bad\n\u{1b}[2Jforged line")]});
    let (addr, seen) = hostile(403, vec![], body.to_string().into_bytes()).await;
    let err = hostile_source(&addr, dir.path())
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_access_denied", "{err}");
    let text = err.to_string();
    assert!(text.contains("[REDACTED]"), "{text}");
    assert!(!text.contains('\n') && !text.contains('\u{1b}'), "{text}");
    no_leak(&err, &[HOSTILE_TOKEN]);
    // What we sent: the token and the namespace header.
    let seen = seen.lock().unwrap();
    assert_eq!(seen[0]["x-vault-token"], HOSTILE_TOKEN);
    assert_eq!(seen[0]["x-vault-namespace"], "team-a/sub");
}

#[tokio::test]
async fn hostile_a_kv_answer_of_the_wrong_shape_is_invalid() {
    // A real login first (the token is accepted), then a KV answer of the wrong shape: a
    // local server answering lookup-self with a TTL and the read with a string version.
    use axum::{Json, Router, routing::get};
    let app = Router::new()
        .route(
            "/v1/auth/token/lookup-self",
            get(|| async { Json(json!({"data": {"ttl": 3600, "renewable": false}})) }),
        )
        .route(
            "/v1/secret/data/qlik/db",
            get(|| async {
                Json(json!({"data": {"data": {"password": CANARY},
                                     "metadata": {"version": "9"}}}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let dir = tempfile::tempdir().unwrap();
    let err = hostile_source(&format!("http://{addr}"), dir.path())
        .fetch(&current("qlik/db"))
        .await
        .unwrap_err();
    assert_eq!(err.error_type(), "secret_invalid", "{err}");
    assert!(err.to_string().contains("data.metadata.version"), "{err}");
    no_leak(&err, &[HOSTILE_TOKEN]);
}

// === End to end: the real binary rotates a simulated connection from OpenBao ===

#[tokio::test]
async fn rotate_end_to_end_from_openbao_with_approle() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let new_pass = format!("pw-{CANARY}");
    bao.kv_put(
        "qlik/finance-sql",
        json!({"username": "svc_fin_2026", "password": new_pass}),
    )
    .await;
    bao.put_policy("qlik-rotator", POLICY).await;
    let (role_id, secret_id) = bao
        .approle(
            "qr",
            json!({"token_policies": ["qlik-rotator"], "token_ttl": "1h"}),
        )
        .await;
    write(dir.path(), "secret-id", &secret_id);
    let sim = tenant(qlik_sim::SimConfig::default()).await;
    let text = format!(
        "{}\n[sources.bao]\ntype = \"vault\"\naddress = \"{}\"\nauth = \"approle\"\n\
         role_id = \"{role_id}\"\nsecret_id_file = \"secret-id\"\n\
         [daemon]\nstate_dir = \"state\"\n\
         [[jobs]]\nname = \"finance-sql\"\nconnection = {{ name = \"Finance SQL\", space = \"finance\" }}\n\
         connector = \"mssql\"\nsource = \"bao\"\nsecret = \"qlik/finance-sql\"\n",
        qlik_section(&sim),
        bao.addr
    );
    let cfg = write_config(dir.path(), &text);
    let env = env(&[("QLIK_API_KEY", API_KEY), ("RUST_LOG", "trace")]);
    let args = [
        "--log-format",
        "json",
        "rotate",
        "-c",
        cfg.to_str().unwrap(),
        "--all",
    ];
    let out = run_cli(&args, &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(with_method(&sim, "PATCH").len(), 1);
    assert_eq!(stored_prop(&sim, SQL_ID, "username"), "svc_fin_2026");
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(CANARY), "secret leaked: {text}");
        assert!(!text.contains(&secret_id), "secret id leaked: {text}");
    }
    assert!(out.stdout.contains("secret version 1;"), "{}", out.stdout);
    // A new KV version (the metadata version is what change detection compares).
    bao.kv_put(
        "qlik/finance-sql",
        json!({"username": "svc_fin_2027", "password": new_pass}),
    )
    .await;
    let out = run_cli(&args, &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(with_method(&sim, "PATCH").len(), 2, "{out:?}");
    assert_eq!(stored_prop(&sim, SQL_ID, "username"), "svc_fin_2027");
    assert!(out.stdout.contains("secret version 2;"), "{}", out.stdout);
    assert!(!out.stderr.contains(CANARY) && !out.stdout.contains(CANARY));
}

// --- Credential age (issue 15 item 6) ------------------------------------------------------------

#[tokio::test]
async fn the_versions_created_time_is_read_from_kv_metadata() {
    let bao = Bao::start().await;
    let dir = tempfile::tempdir().unwrap();
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    let before = now() - 5;
    bao.kv_put("qlik/age", json!({"username": "svc", "password": "p1"}))
        .await;
    let (src, _) = token_source(&bao, dir.path()).await;
    let v = src.fetch(&current("qlik/age")).await.unwrap();
    let c = v.created.expect("KV v2 metadata carries created_time");
    assert!((before..=now() + 5).contains(&c), "{c}");
}
