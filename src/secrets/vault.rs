//! HashiCorp Vault / OpenBao KV version 2 source (`type = "vault"`).
//!
//! A job's `secret` is the path of a secret in the KV v2 engine mounted at `mount`; the source
//! reads `GET /v1/<mount>/data/<path>` (with `?version=N` when the job pins `version_id = "N"`)
//! and returns `data.data` as a JSON object. The version used for change detection is the KV
//! metadata version (`data.metadata.version`). A deleted or destroyed version is
//! `secret_not_found`, like a missing secret.
//!
//! # Authentication
//! - `auth = "token"`: the token in `token_file` (re-read when Vault refuses it, so a Vault
//!   agent may rewrite the file). Its TTL comes from `auth/token/lookup-self`.
//! - `auth = "approle"`: `POST /v1/auth/<auth_mount>/login` with `role_id` and the secret id in
//!   `secret_id_file`.
//! - `auth = "kubernetes"`: `POST /v1/auth/<auth_mount>/login` with `role` and the
//!   service-account JWT in `jwt_file` (re-read at every login: projected tokens rotate).
//!
//! A token is renewed (`auth/token/renew-self`) once less than half of its granted TTL is left
//! and it is renewable; an expired token, a failed renewal, or a `403` on a read made with an
//! older token leads to one fresh login (or re-read of the token file) and one retry. When the
//! login itself fails the error says which method and mount failed and why.
//!
//! # Why a small reqwest client and not `vaultrs`
//! The source needs five endpoints. A hand-written client on the project's reqwest (rustls)
//! lets it: keep every token in a `SecretString` (vaultrs keeps its token as a plain `String`
//! in its settings, printable through `Debug`); refuse redirects (a standby node's 307 would
//! otherwise re-send the token wherever `Location` points); cap response sizes; trust only the
//! `ca_file` CA; and classify errors into [`SourceError`] without a second HTTP stack (vaultrs
//! brings its own reqwest major version and the `rustify` layer).
//!
//! Nothing the server sends is printed unescaped: Vault's `errors` strings are redacted (the
//! token, secret id and JWT in use), escaped and capped ([`crate::text::sanitize`]).

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use reqwest::{
    Method, StatusCode, Url,
    header::{HeaderMap, HeaderName, HeaderValue},
};
use secrecy::{ExposeSecret, SecretString, zeroize::Zeroizing};
use serde_json::Value;

use super::{
    SecretPayload, SecretRef, SecretSource, SecretValue, SourceError, SourceFactory,
    VersionSelector,
};
use crate::{
    text::{self, Redactor},
    walk::{Errors, Table, base_url, resolve},
};

/// Timeout of one HTTP request (connect, headers and body) unless `timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The range `timeout` accepts.
pub const RANGE_TIMEOUT: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(120);
/// The largest response body read from Vault (a KV secret is at most a few KiB; Vault's own
/// default request limit is 32 MiB, far more than a credential needs).
pub const MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// The largest token, secret-id or JWT file read.
pub const MAX_CREDENTIAL_FILE_BYTES: u64 = 64 * 1024;
/// The largest `ca_file` read.
pub const MAX_CA_FILE_BYTES: u64 = 1024 * 1024;
/// Where Kubernetes mounts the service-account token.
pub const DEFAULT_JWT_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";
/// Longest `mount`, `auth_mount`, `namespace` and secret path.
const MAX_PATH_LEN: usize = 512;

/// How the source logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// `auth = "token"`: a token read from `token_file`.
    Token {
        /// `token_file`.
        token_file: PathBuf,
    },
    /// `auth = "approle"`.
    AppRole {
        /// `auth_mount` (default `approle`).
        mount: String,
        /// `role_id`.
        role_id: String,
        /// `secret_id_file`.
        secret_id_file: PathBuf,
    },
    /// `auth = "kubernetes"`.
    Kubernetes {
        /// `auth_mount` (default `kubernetes`).
        mount: String,
        /// `role`.
        role: String,
        /// `jwt_file` (default [`DEFAULT_JWT_FILE`]).
        jwt_file: PathBuf,
    },
}

impl VaultAuth {
    /// The `auth` value.
    pub fn method(&self) -> &'static str {
        match self {
            VaultAuth::Token { .. } => "token",
            VaultAuth::AppRole { .. } => "approle",
            VaultAuth::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// `[sources.NAME] type = "vault"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VaultConfig {
    /// `address`: the Vault base URL (https; http only for a loopback host).
    pub address: String,
    /// `mount`: where the KV v2 engine is mounted (default `secret`).
    pub mount: String,
    /// `namespace`: sent as `X-Vault-Namespace` (Vault Enterprise / OpenBao namespaces).
    pub namespace: Option<String>,
    /// `ca_file`: PEM CA certificate(s); when set, only these are trusted.
    pub ca_file: Option<PathBuf>,
    /// `auth` and its keys.
    pub auth: VaultAuth,
    /// `timeout`: per HTTP request.
    pub timeout: Duration,
}

/// The `auth` methods, in the order messages list them.
const AUTH_METHODS: &[&str] = &["token", "approle", "kubernetes"];

/// The `auth` key of a `vault` source and the keys of its methods, as written.
struct AuthKeys {
    method: Option<String>,
    token_file: Option<String>,
    role_id: Option<String>,
    secret_id_file: Option<String>,
    role: Option<String>,
    jwt_file: Option<String>,
    auth_mount: Option<String>,
}

impl AuthKeys {
    fn read(t: &mut Table<'_>, errs: &mut Errors) -> Self {
        AuthKeys {
            method: t.req_str("auth", errs),
            token_file: t.opt_str("token_file", errs),
            role_id: t.opt_str("role_id", errs),
            secret_id_file: t.opt_str("secret_id_file", errs),
            role: t.opt_str("role", errs),
            jwt_file: t.opt_str("jwt_file", errs),
            auth_mount: vault_path(t, "auth_mount", errs),
        }
    }

    /// The login the keys describe; each key its method needs and lacks is an error.
    fn auth(&self, t: &Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<VaultAuth> {
        let mut required = |key: &'static str, value: &Option<String>, method: &str| {
            value.clone().or_else(|| {
                errs.push(
                    t.key_path(key),
                    format!("is required with auth = \"{method}\""),
                );
                None
            })
        };
        match self.method.as_deref() {
            None => None,
            Some("token") => {
                let f = required("token_file", &self.token_file, "token");
                f.map(|f| VaultAuth::Token {
                    token_file: resolve(base_dir, &f),
                })
            }
            Some("approle") => {
                let r = required("role_id", &self.role_id, "approle");
                let s = required("secret_id_file", &self.secret_id_file, "approle");
                match (r, s) {
                    (Some(role_id), Some(s)) => Some(VaultAuth::AppRole {
                        mount: self
                            .auth_mount
                            .clone()
                            .unwrap_or_else(|| "approle".to_owned()),
                        role_id,
                        secret_id_file: resolve(base_dir, &s),
                    }),
                    _ => None,
                }
            }
            Some("kubernetes") => {
                let r = required("role", &self.role, "kubernetes");
                r.map(|role| VaultAuth::Kubernetes {
                    mount: self
                        .auth_mount
                        .clone()
                        .unwrap_or_else(|| "kubernetes".to_owned()),
                    role,
                    jwt_file: resolve(
                        base_dir,
                        self.jwt_file.as_deref().unwrap_or(DEFAULT_JWT_FILE),
                    ),
                })
            }
            Some(_) => {
                errs.push(
                    t.key_path("auth"),
                    format!(
                        "unknown auth method (expected {})",
                        super::one_of(AUTH_METHODS)
                    ),
                );
                None
            }
        }
    }

    /// Keys of one method only; each given with another (known) method is an error.
    fn check_owners(&self, t: &Table<'_>, errs: &mut Errors) {
        let Some(m) = self.method.as_deref().filter(|m| AUTH_METHODS.contains(m)) else {
            return;
        };
        let owners: [(&'static str, bool, &str); 6] = [
            ("token_file", self.token_file.is_some(), "token"),
            ("role_id", self.role_id.is_some(), "approle"),
            ("secret_id_file", self.secret_id_file.is_some(), "approle"),
            ("role", self.role.is_some(), "kubernetes"),
            ("jwt_file", self.jwt_file.is_some(), "kubernetes"),
            (
                "auth_mount",
                self.auth_mount.is_some(),
                "approle\" or auth = \"kubernetes",
            ),
        ];
        for (key, present, owner) in owners {
            let belongs = owner.split("\" or auth = \"").any(|o| o == m);
            if present && !belongs {
                errs.push(
                    t.key_path(key),
                    format!("is only used with auth = \"{owner}\""),
                );
            }
        }
    }
}

impl SourceFactory for VaultConfig {
    const TYPE: &'static str = "vault";
    const KEYS: &'static [&'static str] = &[
        "address",
        "mount",
        "namespace",
        "ca_file",
        "auth",
        "token_file",
        "role_id",
        "secret_id_file",
        "role",
        "jwt_file",
        "auth_mount",
        "timeout",
    ];
    type Source = VaultSource;

    fn from_table(t: &mut Table<'_>, base_dir: &Path, errs: &mut Errors) -> Option<Self> {
        let has_address = t.has("address");
        let address = base_url(t, "address", errs).map(|(raw, _)| raw);
        if !has_address {
            errs.push(
                t.key_path("address"),
                "is required: the Vault or OpenBao base URL, e.g. https://vault.internal:8200",
            );
        }
        let mount = vault_path(t, "mount", errs).unwrap_or_else(|| "secret".to_owned());
        let namespace = vault_path(t, "namespace", errs);
        let ca_file = t.opt_str("ca_file", errs).map(|p| resolve(base_dir, &p));
        let keys = AuthKeys::read(t, errs);
        let timeout = t
            .opt_duration("timeout", RANGE_TIMEOUT, errs)
            .unwrap_or(DEFAULT_TIMEOUT);
        let auth = keys.auth(t, base_dir, errs);
        keys.check_owners(t, errs);
        Some(VaultConfig {
            address: address?,
            mount,
            namespace,
            ca_file,
            auth: auth?,
            timeout,
        })
    }

    /// The files the source reads must be readable and non-empty, and `ca_file` must hold at
    /// least one PEM certificate. Messages never quote a file's name or content.
    fn check(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let files: Vec<(&'static str, &Path)> = match &self.auth {
            VaultAuth::Token { token_file } => vec![("token_file", token_file)],
            VaultAuth::AppRole { secret_id_file, .. } => {
                vec![("secret_id_file", secret_id_file)]
            }
            VaultAuth::Kubernetes { jwt_file, .. } => vec![("jwt_file", jwt_file)],
        };
        for (key, path) in files {
            if let Err(why) = read_credential_file(path) {
                out.push((key, why));
            }
        }
        if let Some(ca) = &self.ca_file
            && let Err(why) = read_ca(ca)
        {
            out.push(("ca_file", why));
        }
        out
    }

    async fn build(&self) -> VaultSource {
        VaultSource::new(self)
    }
}

/// `mount`, `auth_mount`, `namespace`: segments of `A-Za-z0-9._-` separated by `/`, no
/// empty, `.` or `..` segment, no leading or trailing `/`.
fn vault_path(t: &mut Table<'_>, key: &'static str, errs: &mut Errors) -> Option<String> {
    let raw = t.opt_str(key, errs)?;
    if is_vault_path(&raw) {
        Some(raw)
    } else {
        errs.push(
            t.key_path(key),
            "expected a Vault path such as \"secret\" or \"team/kv\" (A-Z, a-z, 0-9, '.', '_', '-' between single '/', no leading or trailing '/', no '.' or '..' segment)",
        );
        None
    }
}

fn is_vault_path(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_PATH_LEN
        && s.split('/').all(|seg| {
            !seg.is_empty()
                && seg != "."
                && seg != ".."
                && seg
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        })
}

/// Reads a token, secret-id or JWT file: at most [`MAX_CREDENTIAL_FILE_BYTES`], UTF-8,
/// trimmed, non-empty. The error names neither the file nor its content.
fn read_credential_file(path: &Path) -> Result<SecretString, String> {
    let cannot = |e: std::io::Error| {
        format!(
            "the file it names cannot be read ({})",
            std::io::Error::from(e.kind())
        )
    };
    let meta = std::fs::metadata(path).map_err(cannot)?;
    if !meta.is_file() {
        return Err("the path it names is not a regular file".to_owned());
    }
    if meta.len() > MAX_CREDENTIAL_FILE_BYTES {
        return Err(format!(
            "the file it names is larger than {MAX_CREDENTIAL_FILE_BYTES} bytes"
        ));
    }
    let raw = Zeroizing::new(std::fs::read(path).map_err(cannot)?);
    let text = std::str::from_utf8(&raw).map_err(|_| "the file it names is not UTF-8 text")?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("the file it names is empty".to_owned());
    }
    if trimmed.chars().any(char::is_control) {
        return Err("the file it names holds control characters inside its value".to_owned());
    }
    Ok(SecretString::from(trimmed.to_owned()))
}

/// The CA certificates in `ca_file`.
fn read_ca(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let meta = std::fs::metadata(path).map_err(|e| {
        format!(
            "the file it names cannot be read ({})",
            std::io::Error::from(e.kind())
        )
    })?;
    if meta.len() > MAX_CA_FILE_BYTES {
        return Err(format!(
            "the file it names is larger than {MAX_CA_FILE_BYTES} bytes"
        ));
    }
    let pem = std::fs::read(path).map_err(|e| {
        format!(
            "the file it names cannot be read ({})",
            std::io::Error::from(e.kind())
        )
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err("the file it names holds no PEM certificate".to_owned());
    }
    match reqwest::Certificate::from_pem_bundle(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err("the file it names holds no PEM certificate".to_owned()),
        Err(_) => Err("the file it names is not a valid PEM certificate bundle".to_owned()),
    }
}

/// A token in use.
struct Token {
    secret: SecretString,
    /// `None`: no expiry (a root token, or TTL 0).
    expires_at: Option<Instant>,
    ttl: Duration,
    renewable: bool,
}

/// Counters of the source's own calls, for tests and diagnostics (never secrets).
#[derive(Debug, Default)]
pub struct AuthStats {
    logins: AtomicU64,
    renewals: AtomicU64,
    denied_retries: AtomicU64,
}

impl AuthStats {
    /// Logins made (for `auth = "token"`: reads of the token file).
    pub fn logins(&self) -> u64 {
        self.logins.load(Ordering::Relaxed)
    }
    /// Successful `renew-self` calls.
    pub fn renewals(&self) -> u64 {
        self.renewals.load(Ordering::Relaxed)
    }
    /// Reads refused with 403 and retried after a fresh login.
    pub fn denied_retries(&self) -> u64 {
        self.denied_retries.load(Ordering::Relaxed)
    }
}

/// A Vault / OpenBao KV v2 engine (boxed: the sources are variants of one enum).
pub struct VaultSource(Box<VaultInner>);

impl std::ops::Deref for VaultSource {
    type Target = VaultInner;
    fn deref(&self) -> &VaultInner {
        &self.0
    }
}

/// The state of a [`VaultSource`].
pub struct VaultInner {
    address: Url,
    mount: String,
    namespace: Option<String>,
    auth: VaultAuth,
    /// The HTTP client, or why it could not be made (reported at each fetch).
    http: Result<reqwest::Client, String>,
    token: tokio::sync::Mutex<Option<Token>>,
    stats: AuthStats,
}

impl fmt::Debug for VaultSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VaultSource")
            .field("address", &self.address.as_str())
            .field("mount", &self.mount)
            .field("namespace", &self.namespace)
            .field("auth", &self.auth.method())
            .finish_non_exhaustive()
    }
}

/// What one request to Vault gave.
enum Reply {
    /// 2xx with a JSON body (kept in zeroizing memory until parsed).
    Ok(Zeroizing<Vec<u8>>),
    /// 401 / 403.
    Denied(String),
    /// 404, with the body (a deleted version's metadata comes with it).
    NotFound(Zeroizing<Vec<u8>>, String),
}

impl VaultSource {
    /// The source for `config` (no request is sent).
    pub fn new(config: &VaultConfig) -> Self {
        let address = Url::parse(&config.address)
            .unwrap_or_else(|_| Url::parse("http://invalid.invalid").expect("static URL"));
        VaultSource(Box::new(VaultInner {
            address,
            mount: config.mount.clone(),
            namespace: config.namespace.clone(),
            auth: config.auth.clone(),
            http: http_client(config),
            token: tokio::sync::Mutex::new(None),
            stats: AuthStats::default(),
        }))
    }

    /// Login, renewal and retry counters.
    pub fn stats(&self) -> &AuthStats {
        &self.stats
    }

    fn url(&self, path: &str) -> Url {
        let mut url = self.address.clone();
        url.set_path(&format!("/v1/{path}"));
        url
    }

    /// The headers of every request: `X-Vault-Request`, the namespace, the token (marked
    /// sensitive, so it is never logged).
    fn headers(&self, id: &str, token: Option<&SecretString>) -> Result<HeaderMap, SourceError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HeaderName::from_static("x-vault-request"),
            HeaderValue::from_static("true"),
        );
        if let Some(ns) = &self.namespace
            && let Ok(v) = HeaderValue::from_str(ns)
        {
            headers.insert(HeaderName::from_static("x-vault-namespace"), v);
        }
        if let Some(token) = token {
            let mut v = HeaderValue::from_str(token.expose_secret()).map_err(|_| {
                SourceError::AccessDenied {
                    id: id.to_owned(),
                    message: "the Vault token holds characters not allowed in an HTTP header"
                        .to_owned(),
                }
            })?;
            v.set_sensitive(true);
            headers.insert(HeaderName::from_static("x-vault-token"), v);
        }
        Ok(headers)
    }

    /// Sends one request and classifies the answer (never follows a redirect; caps the
    /// body). `redactor` holds the secrets in play, removed from any error text.
    async fn call(
        &self,
        id: &str,
        method: Method,
        url: Url,
        token: Option<&SecretString>,
        body: Option<Zeroizing<Vec<u8>>>,
        redactor: &Redactor,
    ) -> Result<Reply, SourceError> {
        let unavailable = |message: String| SourceError::Unavailable {
            id: id.to_owned(),
            message,
        };
        let http = self.http.as_ref().map_err(|m| unavailable(m.clone()))?;
        let headers = self.headers(id, token)?;
        let mut request = http.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        let resp = request.send().await.map_err(|e| {
            unavailable(format!(
                "request to Vault {}: {}",
                if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "could not connect"
                } else {
                    "failed"
                },
                text::sanitize(&error_chain(&e), redactor)
            ))
        })?;
        let status = resp.status();
        if status.is_redirection() {
            return Err(unavailable(format!(
                "Vault answered with a redirect (HTTP {}); redirects are not followed: point `address` at the active node or its load balancer",
                status.as_u16()
            )));
        }
        let (body, too_big) = read_limited(resp, MAX_RESPONSE_BYTES).await.map_err(|e| {
            unavailable(format!(
                "reading Vault's answer failed: {}",
                text::sanitize(&error_chain(&e), redactor)
            ))
        })?;
        if too_big {
            return Err(SourceError::Invalid {
                id: id.to_owned(),
                message: format!(
                    "Vault's answer (HTTP {}) is larger than {MAX_RESPONSE_BYTES} bytes",
                    status.as_u16()
                ),
            });
        }
        reply(id, status, body, redactor)
    }

    /// A usable token: the current one (renewed when half its TTL is gone), or a fresh login.
    /// `true` when it was obtained by this call.
    async fn current_token(
        &self,
        id: &str,
        redactor: &Redactor,
    ) -> Result<(SecretString, bool), SourceError> {
        let mut slot = self.token.lock().await;
        if let Some(token) = slot.as_mut() {
            let now = Instant::now();
            match token.expires_at {
                None => return Ok((token.secret.clone(), false)),
                Some(at) if at > now => {
                    let left = at - now;
                    if token.renewable && left < token.ttl / 2 {
                        let mut r = redactor.clone();
                        r.add_secret(&token.secret);
                        if let Ok(renewed) = self.renew(id, &token.secret, &r).await {
                            self.stats.renewals.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(auth = self.auth.method(), "renewed the Vault token");
                            *token = renewed;
                            return Ok((token.secret.clone(), false));
                        }
                        tracing::debug!(
                            auth = self.auth.method(),
                            "renewing the Vault token failed; logging in again"
                        );
                    } else {
                        return Ok((token.secret.clone(), false));
                    }
                }
                Some(_) => {
                    tracing::debug!(
                        auth = self.auth.method(),
                        "the Vault token expired; logging in again"
                    );
                }
            }
        }
        let token = self.login(id, redactor).await?;
        let secret = token.secret.clone();
        *slot = Some(token);
        Ok((secret, true))
    }

    /// Forgets `used` if it is still the current token (a concurrent fetch may have replaced
    /// it already).
    async fn forget(&self, used: &SecretString) {
        let mut slot = self.token.lock().await;
        if slot
            .as_ref()
            .is_some_and(|t| t.secret.expose_secret() == used.expose_secret())
        {
            *slot = None;
        }
    }

    /// Logs in with the configured method. Errors are `secret_access_denied` (the login was
    /// refused or its credential file is unusable) or `secret_source_unavailable`.
    async fn login(&self, id: &str, redactor: &Redactor) -> Result<Token, SourceError> {
        self.stats.logins.fetch_add(1, Ordering::Relaxed);
        let denied = |message: String| SourceError::AccessDenied {
            id: id.to_owned(),
            message,
        };
        let method = self.auth.method();
        let (mount, payload, credential) = match &self.auth {
            VaultAuth::Token { token_file } => {
                let token = read_credential_file(token_file)
                    .map_err(|why| denied(format!("auth = \"token\": token_file: {why}")))?;
                return self.lookup_self(id, token, redactor).await;
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_credential_file(secret_id_file)
                    .map_err(|why| denied(format!("auth = \"approle\": secret_id_file: {why}")))?;
                let body = serde_json::json!({
                    "role_id": role_id,
                    "secret_id": secret_id.expose_secret(),
                });
                (mount, body, secret_id)
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = read_credential_file(jwt_file)
                    .map_err(|why| denied(format!("auth = \"kubernetes\": jwt_file: {why}")))?;
                let body = serde_json::json!({"role": role, "jwt": jwt.expose_secret()});
                (mount, body, jwt)
            }
        };
        let mut redactor = redactor.clone();
        redactor.add_secret(&credential);
        let body = Zeroizing::new(serde_json::to_vec(&payload).unwrap_or_default());
        drop(payload);
        let url = self.url(&format!("auth/{mount}/login"));
        let failed =
            |why: String| format!("login with auth = \"{method}\" at auth/{mount} failed: {why}");
        let reply = self
            .call(id, Method::POST, url, None, Some(body), &redactor)
            .await
            .map_err(|e| match e {
                SourceError::Invalid { id, message } => SourceError::AccessDenied {
                    id,
                    message: failed(message),
                },
                SourceError::Unavailable { id, message } => SourceError::Unavailable {
                    id,
                    message: failed(message),
                },
                other => other,
            })?;
        match reply {
            Reply::Ok(body) => token_from_auth(&body).map_err(|why| denied(failed(why))),
            Reply::Denied(why) | Reply::NotFound(_, why) => Err(denied(failed(why))),
        }
    }

    /// `auth = "token"`: learns the token's TTL and renewability from `lookup-self`.
    async fn lookup_self(
        &self,
        id: &str,
        token: SecretString,
        redactor: &Redactor,
    ) -> Result<Token, SourceError> {
        let mut redactor = redactor.clone();
        redactor.add_secret(&token);
        let denied = |why: String| SourceError::AccessDenied {
            id: id.to_owned(),
            message: format!(
                "auth = \"token\": Vault refused the token from token_file (auth/token/lookup-self: {why})"
            ),
        };
        let url = self.url("auth/token/lookup-self");
        match self
            .call(id, Method::GET, url, Some(&token), None, &redactor)
            .await?
        {
            Reply::Ok(body) => {
                let v: Value = serde_json::from_slice(&body)
                    .map_err(|_| denied("the answer is not JSON".to_owned()))?;
                let ttl = v["data"]["ttl"].as_u64().ok_or_else(|| {
                    denied("data.ttl is missing or not a non-negative integer".to_owned())
                })?;
                let renewable = v["data"]["renewable"].as_bool().unwrap_or(false);
                Ok(Token::new(token, ttl, renewable))
            }
            Reply::Denied(why) | Reply::NotFound(_, why) => Err(denied(why)),
        }
    }

    /// `auth/token/renew-self`.
    async fn renew(
        &self,
        id: &str,
        token: &SecretString,
        redactor: &Redactor,
    ) -> Result<Token, SourceError> {
        let url = self.url("auth/token/renew-self");
        let body = Zeroizing::new(b"{}".to_vec());
        match self
            .call(id, Method::POST, url, Some(token), Some(body), redactor)
            .await?
        {
            Reply::Ok(body) => {
                let mut t = token_from_auth(&body).map_err(|message| SourceError::Invalid {
                    id: id.to_owned(),
                    message,
                })?;
                // renew-self answers with the same token; keep ours.
                t.secret = token.clone();
                Ok(t)
            }
            Reply::Denied(why) | Reply::NotFound(_, why) => Err(SourceError::AccessDenied {
                id: id.to_owned(),
                message: why,
            }),
        }
    }

    /// One KV v2 read with `token`. `Ok(Err(why))`: refused (401/403).
    async fn read(
        &self,
        secret: &SecretRef,
        path: &str,
        version: Option<u64>,
        token: &SecretString,
        redactor: &Redactor,
    ) -> Result<Result<SecretValue, String>, SourceError> {
        // Ok(Err(why)): refused (401/403), worth one retry with a fresh login.
        let mut url = self.url(&format!("{}/data/{path}", self.mount));
        if let Some(v) = version {
            url.set_query(Some(&format!("version={v}")));
        }
        let mut redactor = redactor.clone();
        redactor.add_secret(token);
        match self
            .call(&secret.id, Method::GET, url, Some(token), None, &redactor)
            .await?
        {
            Reply::Ok(body) => kv_value(secret, &body, version).map(Ok),
            Reply::Denied(why) => Ok(Err(why)),
            Reply::NotFound(body, why) => Err(not_found(secret, &self.mount, &body, &why)),
        }
    }
}

impl Token {
    fn new(secret: SecretString, ttl_secs: u64, renewable: bool) -> Token {
        let ttl = Duration::from_secs(ttl_secs);
        Token {
            secret,
            expires_at: (ttl_secs > 0).then(|| Instant::now() + ttl),
            ttl,
            renewable,
        }
    }
}

/// The token of a login or renewal answer (`auth.client_token`, `auth.lease_duration`,
/// `auth.renewable`).
fn token_from_auth(body: &[u8]) -> Result<Token, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    let auth = &v["auth"];
    let token = auth["client_token"]
        .as_str()
        .filter(|t| !t.is_empty() && t.len() <= 4096 && !t.chars().any(char::is_control))
        .ok_or("the answer has no usable auth.client_token")?;
    let ttl = auth["lease_duration"]
        .as_u64()
        .ok_or("auth.lease_duration is missing or not a non-negative integer")?;
    let renewable = auth["renewable"].as_bool().unwrap_or(false);
    Ok(Token::new(
        SecretString::from(token.to_owned()),
        ttl,
        renewable,
    ))
}

/// `data.data` and `data.metadata.version` of a KV v2 read.
fn kv_value(
    secret: &SecretRef,
    body: &[u8],
    pinned: Option<u64>,
) -> Result<SecretValue, SourceError> {
    let invalid = |message: String| SourceError::Invalid {
        id: secret.id.clone(),
        message,
    };
    kv_parts(body, pinned)
        .map_err(invalid)?
        .map_err(|(n, why)| SourceError::NotFound {
            id: secret.id.clone(),
            detail: format!(" (version {n} {why})"),
        })
}

/// The value of a KV answer: `Ok(Err((version, "is deleted")))` for a deleted or destroyed
/// version, `Err(why)` for an answer of the wrong shape.
#[allow(clippy::type_complexity)]
fn kv_parts(
    body: &[u8],
    pinned: Option<u64>,
) -> Result<Result<SecretValue, (u64, &'static str)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|_| "the answer is not JSON".to_owned())?;
    let data = &v["data"];
    let meta = &data["metadata"];
    let version = meta["version"]
        .as_u64()
        .filter(|v| *v > 0)
        .ok_or("data.metadata.version is missing or not a positive integer")?;
    if let Some(p) = pinned
        && p != version
    {
        return Err(format!(
            "asked for version {p}, Vault answered with version {version}"
        ));
    }
    if let Some(why) = gone(meta) {
        return Ok(Err((version, why)));
    }
    match &data["data"] {
        Value::Object(map) if !map.is_empty() => Ok(Ok(SecretValue {
            // KV v2 `data.metadata.created_time` (RFC 3339): when this version was written.
            created: meta["created_time"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.timestamp()),
            version: version.to_string(),
            payload: SecretPayload::Text(SecretString::from(
                serde_json::to_string(map).unwrap_or_default(),
            )),
        })),
        Value::Object(_) => Err("data.data is an empty object".to_owned()),
        other => Err(format!(
            "data.data is {}, not an object",
            crate::walk::kind(other)
        )),
    }
}

/// `is deleted` / `is destroyed` from KV metadata, if so.
fn gone(meta: &Value) -> Option<&'static str> {
    if meta["destroyed"].as_bool() == Some(true) {
        Some("is destroyed")
    } else if meta["deletion_time"]
        .as_str()
        .is_some_and(|t| !t.is_empty())
    {
        Some("is deleted")
    } else {
        None
    }
}

/// A 404 on a KV read: a missing secret, a deleted or destroyed version, or a wrong mount.
fn not_found(secret: &SecretRef, mount: &str, body: &[u8], errors: &str) -> SourceError {
    let v: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let meta = &v["data"]["metadata"];
    let version = meta["version"].as_u64();
    let detail = match (gone(meta), version) {
        (Some(why), Some(n)) => format!(" (version {n} {why})"),
        _ => {
            let pinned = match &secret.version {
                VersionSelector::Id(v) => format!(", version {}", text::quoted(v, 20)),
                VersionSelector::Stage(_) => String::new(),
            };
            format!(" in KV mount {mount:?}{pinned}: HTTP 404{errors}")
        }
    };
    SourceError::NotFound {
        id: secret.id.clone(),
        detail,
    }
}

/// `: first error; second error` from a Vault error body (`{"errors": [..]}`), redacted,
/// escaped and capped; empty when there is none.
fn vault_errors(body: &[u8], redactor: &Redactor) -> String {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return String::new();
    };
    let Some(list) = v["errors"].as_array() else {
        return String::new();
    };
    let joined = list
        .iter()
        .filter_map(Value::as_str)
        .take(5)
        .collect::<Vec<_>>()
        .join("; ");
    if joined.trim().is_empty() {
        String::new()
    } else {
        format!(": {}", text::sanitize(&joined, redactor))
    }
}

/// Classifies Vault's answer `status` with its `body`: 2xx is the body, 401/403 and 404 are
/// replies the caller interprets, throttling and server errors are `secret_source_unavailable`,
/// anything else is `invalid`. `redactor` cleans the error text quoted from the body.
fn reply(
    id: &str,
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
    redactor: &Redactor,
) -> Result<Reply, SourceError> {
    let unavailable = |message: String| SourceError::Unavailable {
        id: id.to_owned(),
        message,
    };
    let errors = || vault_errors(&body, redactor);
    match status {
        s if s.is_success() => Ok(Reply::Ok(body)),
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(Reply::Denied(format!(
            "HTTP {}{}",
            status.as_u16(),
            errors()
        ))),
        StatusCode::NOT_FOUND => {
            let e = errors();
            Ok(Reply::NotFound(body, e))
        }
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::REQUEST_TIMEOUT
        | StatusCode::INTERNAL_SERVER_ERROR
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Err(unavailable(format!(
            "Vault answered HTTP {}{}",
            status.as_u16(),
            errors()
        ))),
        _ => Err(SourceError::Invalid {
            id: id.to_owned(),
            message: format!("Vault answered HTTP {}{}", status.as_u16(), errors()),
        }),
    }
}

/// Reads at most `limit` bytes; `(_, true)` when the body is longer.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<(Zeroizing<Vec<u8>>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Zeroizing::new(Vec::new()), true));
    }
    let mut buf = Zeroizing::new(Vec::new());
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Ok((Zeroizing::new(Vec::new()), true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// `a: b: c` from an error and its sources.
fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(err);
    while let Some(e) = next {
        let text = e.to_string();
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        next = e.source();
    }
    parts.join(": ")
}

/// The HTTP client: no redirects, the timeouts, and only the `ca_file` CA when set.
fn http_client(config: &VaultConfig) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .connect_timeout(config.timeout.min(Duration::from_secs(5)))
        .user_agent(concat!("qlik-rotator/", env!("CARGO_PKG_VERSION")));
    if let Some(ca) = &config.ca_file {
        let certs = read_ca(ca).map_err(|why| format!("ca_file: {why}"))?;
        builder = builder.tls_certs_only(certs);
    }
    builder
        .build()
        .map_err(|e| format!("cannot create the HTTP client for Vault: {e}"))
}

/// The KV path of secret id `id`, each segment percent-encoded.
fn kv_path(id: &str) -> Result<String, String> {
    if id.is_empty() || id.len() > MAX_PATH_LEN {
        return Err(format!(
            "a Vault secret path must have 1 to {MAX_PATH_LEN} bytes"
        ));
    }
    let mut out = Vec::new();
    for seg in id.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(
                "a Vault secret path has no leading, trailing or double '/' and no '.' or '..' segment"
                    .to_owned(),
            );
        }
        if seg.chars().any(text::is_unsafe) {
            return Err("a Vault secret path holds no control characters".to_owned());
        }
        out.push(
            percent_encoding::utf8_percent_encode(seg, percent_encoding::NON_ALPHANUMERIC)
                .to_string(),
        );
    }
    Ok(out.join("/"))
}

/// The pinned version of `selector`: `version_id = "N"` (a positive integer) or none.
fn pinned_version(selector: &VersionSelector) -> Result<Option<u64>, String> {
    match selector {
        VersionSelector::Stage(s) if s == "AWSCURRENT" => Ok(None),
        VersionSelector::Stage(_) => Err(
            "Vault KV has no version stages: pin a version with version_id = \"<N>\" instead of version_stage"
                .to_owned(),
        ),
        VersionSelector::Id(v) => match v.parse::<u64>() {
            Ok(n) if n > 0 && !v.starts_with('+') => Ok(Some(n)),
            _ => Err("version_id must be a positive integer (a KV v2 version number)".to_owned()),
        },
    }
}

impl SecretSource for VaultSource {
    fn kind(&self) -> &'static str {
        "vault"
    }

    async fn fetch(&self, secret: &SecretRef) -> Result<SecretValue, SourceError> {
        let invalid = |message: String| SourceError::Invalid {
            id: secret.id.clone(),
            message,
        };
        let path = kv_path(&secret.id).map_err(invalid)?;
        let version = pinned_version(&secret.version).map_err(invalid)?;
        let redactor = Redactor::new();
        let (token, fresh) = self.current_token(&secret.id, &redactor).await?;
        let first = self.read(secret, &path, version, &token, &redactor).await?;
        let result = match first {
            Ok(v) => Ok(v),
            Err(why) if fresh => Err(why),
            Err(_) => {
                // An older token may have expired or been revoked: one fresh login, one retry.
                self.stats.denied_retries.fetch_add(1, Ordering::Relaxed);
                self.forget(&token).await;
                let (token, _) = self.current_token(&secret.id, &redactor).await?;
                self.read(secret, &path, version, &token, &redactor).await?
            }
        };
        match result {
            Ok(value) => {
                tracing::debug!(secret_id = %text::printable(&secret.id, 200), version = %value.version, "read secret from Vault");
                Ok(value)
            }
            Err(why) => Err(SourceError::AccessDenied {
                id: secret.id.clone(),
                message: format!(
                    "Vault refused the read in KV mount {:?} ({why}); the token's policy needs read on {}/data/<path>",
                    self.mount, self.mount
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(table: serde_json::Value) -> (Option<VaultConfig>, Vec<String>) {
        let mut errs = Errors::default();
        let mut t = Table::new("sources.v", &table, &mut errs).unwrap();
        let out = VaultConfig::from_table(&mut t, Path::new("/etc/qr"), &mut errs);
        t.finish(&mut errs);
        (out, errs.0.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn approle_config_with_defaults() {
        let (out, errs) = parse(serde_json::json!({
            "address": "https://vault.internal:8200", "auth": "approle",
            "role_id": "r-1", "secret_id_file": "sid"
        }));
        assert!(errs.is_empty(), "{errs:?}");
        let c = out.unwrap();
        assert_eq!(c.mount, "secret");
        assert_eq!(c.timeout, DEFAULT_TIMEOUT);
        assert_eq!(
            c.auth,
            VaultAuth::AppRole {
                mount: "approle".into(),
                role_id: "r-1".into(),
                secret_id_file: "/etc/qr/sid".into()
            }
        );
    }

    #[test]
    fn config_errors_name_each_key() {
        let (out, errs) = parse(serde_json::json!({
            "auth": "approle", "token_file": "t", "mount": "/bad/", "namespace": "a//b"
        }));
        assert!(out.is_none());
        for want in [
            "sources.v.address: is required",
            "sources.v.mount: expected a Vault path",
            "sources.v.namespace: expected a Vault path",
            "sources.v.role_id: is required with auth = \"approle\"",
            "sources.v.secret_id_file: is required with auth = \"approle\"",
            "sources.v.token_file: is only used with auth = \"token\"",
        ] {
            assert!(errs.iter().any(|e| e.starts_with(want)), "{want}: {errs:?}");
        }
        let (_, errs) = parse(serde_json::json!({
            "address": "https://v", "auth": "ldap"
        }));
        assert_eq!(
            errs,
            [
                "sources.v.auth: unknown auth method (expected \"token\", \"approle\" or \"kubernetes\")"
            ]
        );
        let (_, errs) = parse(serde_json::json!({
            "address": "https://v", "auth": "token", "token_file": "t", "auth_mount": "x"
        }));
        assert_eq!(
            errs,
            ["sources.v.auth_mount: is only used with auth = \"approle\" or auth = \"kubernetes\""]
        );
        let (_, errs) = parse(serde_json::json!({
            "address": "http://vault.example.com", "auth": "kubernetes", "role": "r"
        }));
        assert!(
            errs.iter()
                .any(|e| e.starts_with("sources.v.address: must use https")),
            "{errs:?}"
        );
    }

    #[test]
    fn kv_paths_are_encoded_and_checked() {
        assert_eq!(kv_path("app/db").unwrap(), "app/db");
        assert_eq!(kv_path("a b/c?d#e").unwrap(), "a%20b/c%3Fd%23e");
        for bad in ["", "/a", "a/", "a//b", "a/../b", "./a", "a/\n"] {
            assert!(kv_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn versions_are_positive_integers() {
        assert_eq!(pinned_version(&VersionSelector::default()).unwrap(), None);
        assert_eq!(
            pinned_version(&VersionSelector::Id("3".into())).unwrap(),
            Some(3)
        );
        for bad in ["0", "-1", "+3", "x", "", "99999999999999999999999"] {
            assert!(
                pinned_version(&VersionSelector::Id(bad.into())).is_err(),
                "{bad}"
            );
        }
        assert!(pinned_version(&VersionSelector::Stage("AWSPENDING".into())).is_err());
    }

    #[test]
    fn kv_answers_are_checked() {
        let ok = br#"{"data":{"data":{"password":"CANARY-kv"},"metadata":{"version":4,"deletion_time":"","destroyed":false}}}"#;
        let a = SecretRef::current("a");
        let v = kv_value(&a, ok, None).unwrap();
        assert_eq!(v.version, "4");
        assert!(!format!("{v:?}").contains("CANARY"));
        let err = kv_value(&a, ok, Some(3)).unwrap_err();
        assert_eq!(err.error_type(), "secret_invalid");
        assert!(err.to_string().contains("asked for version 3"), "{err}");
        let deleted = br#"{"data":{"data":null,"metadata":{"version":2,"deletion_time":"2026-01-01T00:00:00Z"}}}"#;
        let err = kv_value(&a, deleted, None).unwrap_err();
        assert_eq!(err.error_type(), "secret_not_found");
        assert!(err.to_string().contains("(version 2 is deleted)"), "{err}");
        for (body, want) in [
            (
                &br#"{"data":{"data":{"p":"x"},"metadata":{"version":"4"}}}"#[..],
                "not a positive integer",
            ),
            (
                br#"{"data":{"data":["x"],"metadata":{"version":4}}}"#,
                "data.data is an array",
            ),
            (
                br#"{"data":{"data":{},"metadata":{"version":4}}}"#,
                "empty object",
            ),
            (br#"not json CANARY"#, "not JSON"),
        ] {
            let err = kv_value(&a, body, None).unwrap_err();
            assert_eq!(err.error_type(), "secret_invalid");
            let err = err.to_string();
            assert!(err.contains(want), "{want}: {err}");
            assert!(!err.contains("CANARY"));
        }
    }

    #[test]
    fn error_texts_are_redacted_escaped_and_capped() {
        let mut r = Redactor::new();
        r.add("s.CANARYTOKEN123");
        let body = br#"{"errors":["bad token s.CANARYTOKEN123\n\u001b[31m"]}"#;
        let e = vault_errors(body, &r);
        assert!(!e.contains("CANARYTOKEN"), "{e}");
        assert!(!e.contains('\n') && !e.contains('\u{1b}'), "{e}");
        let long = format!(r#"{{"errors":["{}"]}}"#, "x".repeat(5000));
        assert!(vault_errors(long.as_bytes(), &r).len() < 700);
    }

    #[test]
    fn debug_shows_no_token() {
        let c = VaultConfig {
            address: "https://vault.internal".into(),
            mount: "secret".into(),
            namespace: None,
            ca_file: None,
            auth: VaultAuth::Token {
                token_file: "/x".into(),
            },
            timeout: DEFAULT_TIMEOUT,
        };
        let s = VaultSource::new(&c);
        *s.token.try_lock().unwrap() = Some(Token::new(
            SecretString::from("s.CANARY-debug".to_owned()),
            60,
            true,
        ));
        let dbg = format!("{s:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("token"), "{dbg}");
    }
}
