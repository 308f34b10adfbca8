//! A real OpenBao dev server (Vault-compatible HTTP API) on a loopback port, for integration
//! tests.
//!
//! Needs the venv made by `scripts/setup-bao.sh` (at `<repo>/.venv-bao`, or wherever
//! `QLIK_ROTATOR_BAO_VENV` points), which ships the real `bao` binary. The server runs in
//! memory with root token [`ROOT`], KV v2 at `secret/`, and is killed when the [`Bao`] is
//! dropped. [`Bao::start_tls`] adds OpenBao's own dev CA and certificate (`-dev-tls`).

use std::{
    net::{Ipv4Addr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

/// The dev server's root token.
pub const ROOT: &str = "root";
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running OpenBao dev server.
pub struct Bao {
    /// `http://127.0.0.1:<port>` (or `https://` with TLS).
    pub addr: String,
    /// The CA that signed the server certificate (TLS mode only).
    pub ca_file: Option<PathBuf>,
    /// An admin client (trusts the dev CA in TLS mode).
    pub http: reqwest::Client,
    child: Child,
    _dir: tempfile::TempDir,
}

fn venv_dir() -> PathBuf {
    std::env::var_os("QLIK_ROTATOR_BAO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-bao"))
}

/// A loopback port `p` with `p + 1` free too (the dev server's cluster listener takes it).
fn free_port_pair() -> u16 {
    for _ in 0..50 {
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a loopback port");
        let p = l.local_addr().unwrap().port();
        if p < u16::MAX && TcpListener::bind((Ipv4Addr::LOCALHOST, p + 1)).is_ok() {
            return p;
        }
    }
    panic!("no free pair of loopback ports");
}

impl Bao {
    /// Starts a plain-HTTP dev server and waits until it answers.
    pub async fn start() -> Bao {
        Self::launch(false).await
    }

    /// Starts a dev server with TLS (OpenBao generates a CA and a leaf for 127.0.0.1).
    pub async fn start_tls() -> Bao {
        Self::launch(true).await
    }

    async fn launch(tls: bool) -> Bao {
        let bin = venv_dir().join("bin").join("bao");
        let hint = "run `bash scripts/setup-bao.sh` (or point QLIK_ROTATOR_BAO_VENV at its venv)";
        assert!(bin.exists(), "bao not found at {}: {hint}", bin.display());
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let log_path = dir.path().join("bao.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut cmd = Command::new(&bin);
        cmd.args([
            "server",
            "-dev",
            "-dev-no-store-token",
            &format!("-dev-root-token-id={ROOT}"),
            &format!("-dev-listen-address=127.0.0.1:{port}"),
        ]);
        if tls {
            cmd.arg("-dev-tls")
                .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        cmd.env("HOME", dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}; {hint}", bin.display()));
        let scheme = if tls { "https" } else { "http" };
        let ca_file = tls.then(|| dir.path().join("vault-ca.pem"));
        let mut bao = Bao {
            addr: format!("{scheme}://127.0.0.1:{port}"),
            ca_file,
            http: reqwest::Client::new(),
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(ca) = &bao.ca_file
                && let Ok(pem) = std::fs::read(ca)
                && let Ok(certs) = reqwest::Certificate::from_pem_bundle(&pem)
            {
                bao.http = reqwest::Client::builder()
                    .tls_certs_only(certs)
                    .build()
                    .unwrap();
            }
            let ok = bao
                .http
                .get(format!("{}/v1/sys/health", bao.addr))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ok {
                return bao;
            }
            if let Ok(Some(status)) = bao.child.try_wait() {
                panic!(
                    "bao exited ({status}) before it was ready\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "bao not ready after {READY_TIMEOUT:?}\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A request as root (optionally in `namespace`); returns (status, JSON body or Null).
    pub async fn call_ns(
        &self,
        namespace: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}/v1/{path}", self.addr))
            .header("X-Vault-Token", ROOT);
        if let Some(ns) = namespace {
            req = req.header("X-Vault-Namespace", ns);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request to bao");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A request as root that must succeed; returns the JSON body (or Null).
    pub async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call_ns(None, method, path, body).await;
        assert!((200..300).contains(&status), "{path}: HTTP {status} {v}");
        v
    }

    /// Writes a new version of KV v2 secret `path` under `secret/`; returns its version.
    pub async fn kv_put(&self, path: &str, data: Value) -> u64 {
        let v = self
            .ok(
                reqwest::Method::POST,
                &format!("secret/data/{path}"),
                Some(json!({ "data": data })),
            )
            .await;
        v["data"]["version"].as_u64().expect("KV version")
    }

    /// Writes ACL policy `name` from HCL text.
    pub async fn put_policy(&self, name: &str, hcl: &str) {
        self.ok(
            reqwest::Method::PUT,
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        )
        .await;
    }

    /// A token with `policies` and `ttl` (e.g. "1h"); returns it.
    pub async fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let v = self
            .ok(
                reqwest::Method::POST,
                "auth/token/create",
                Some(json!({ "policies": policies, "ttl": ttl })),
            )
            .await;
        v["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Enables AppRole and creates role `role` with `params` (token_ttl, token_policies…);
    /// returns (role_id, secret_id).
    pub async fn approle(&self, role: &str, params: Value) -> (String, String) {
        let (status, _) = self
            .call_ns(
                None,
                reqwest::Method::POST,
                "sys/auth/approle",
                Some(json!({"type": "approle"})),
            )
            .await;
        assert!(status == 204 || status == 400 || status == 200, "{status}");
        self.ok(
            reqwest::Method::POST,
            &format!("auth/approle/role/{role}"),
            Some(params),
        )
        .await;
        let v = self
            .ok(
                reqwest::Method::GET,
                &format!("auth/approle/role/{role}/role-id"),
                None,
            )
            .await;
        let role_id = v["data"]["role_id"].as_str().unwrap().to_owned();
        let v = self
            .ok(
                reqwest::Method::POST,
                &format!("auth/approle/role/{role}/secret-id"),
                None,
            )
            .await;
        (role_id, v["data"]["secret_id"].as_str().unwrap().to_owned())
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
