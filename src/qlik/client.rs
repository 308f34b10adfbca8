//! The reqwest client for Qlik Cloud: auth (API key or OAuth M2M), timeouts, bounded retries
//! with backoff and `Retry-After`, and the identity's rate gates (Tier 1 reads, Tier 2 writes).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use reqwest::{RequestBuilder, Response, StatusCode, Url, header};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::{sync::Mutex, time::Instant};

use crate::text::{self, Redactor};

use super::{
    error::{ApiProblem, MAX_ERROR_BODY, Origin, QlikError, token_hint},
    gate::{Gates, Tier, WriteGate},
    model::{
        ConnectionList, CredentialUpdate, DataConnection, DataCredential, PatchDocument, Reload,
        SpaceList,
    },
    retry,
};

/// How the client authenticates.
pub enum Credentials {
    /// A Qlik API key, sent as a Bearer token.
    ApiKey(SecretString),
    /// OAuth2 machine-to-machine client credentials.
    OAuth {
        /// The OAuth client id.
        client_id: String,
        /// The OAuth client secret.
        client_secret: SecretString,
        /// Optional space-separated scopes.
        scope: Option<String>,
    },
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::ApiKey(_) => f.write_str("ApiKey([REDACTED])"),
            Credentials::OAuth { client_id, .. } => {
                write!(
                    f,
                    "OAuth {{ client_id: {client_id:?}, client_secret: [REDACTED] }}"
                )
            }
        }
    }
}

pub use super::retry::RetryPolicy;

/// Observes every HTTP exchange (metrics).
pub trait RequestObserver: Send + Sync {
    /// One request finished. `status` is the HTTP status or `error`.
    fn request(
        &self,
        method: &'static str,
        endpoint: &'static str,
        status: &str,
        elapsed: Duration,
    );
    /// Qlik answered 429.
    fn rate_limited(&self);
}

/// Settings for [`QlikClient::new`].
#[derive(Debug)]
pub struct ClientSettings {
    /// Tenant base URL, e.g. `https://acme.eu.qlikcloud.com`.
    pub tenant_url: Url,
    /// How to authenticate.
    pub credentials: Credentials,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Retry bounds.
    pub retry: RetryPolicy,
    /// Tier 2 writes per minute for this identity (0 = unlimited).
    pub write_budget_per_min: u32,
    /// Tier 1 reads per minute for this identity (`qlik.read_budget_per_min`, default
    /// [`super::gate::TIER1_PER_MIN`]; 0 = unlimited).
    pub read_budget_per_min: u32,
    /// The largest response body read (`qlik.max_response_bytes`); see
    /// [`DEFAULT_MAX_RESPONSE_BYTES`].
    pub max_response_bytes: u64,
}

/// Default cap on one response body: 4 MiB. The largest documented answer, one data
/// connection or one connector's api-specs, is a few KB; 4 MiB leaves room for connections
/// with large file properties while a server sending an endless body costs at most that much
/// memory (without a cap, an endless 200 took the process to ~1 GB RSS in 1.2 s).
pub const DEFAULT_MAX_RESPONSE_BYTES: u64 = 4 * 1024 * 1024;

struct CachedToken {
    token: SecretString,
    refresh_at: Instant,
}

/// A Qlik Cloud API client. Cheap to share behind an `Arc`.
pub struct QlikClient {
    http: reqwest::Client,
    base: Url,
    credentials: Credentials,
    token: Mutex<Option<CachedToken>>,
    token_requests: AtomicU64,
    retry: RetryPolicy,
    gates: Gates,
    observer: Option<Arc<dyn RequestObserver>>,
    max_response_bytes: u64,
    /// The client's own secrets (API key or OAuth client secret), in every echoed form.
    own_secrets: Redactor,
    /// Who the client speaks for (its tenant's credential and keys), named in error hints.
    origin: Option<Arc<Origin>>,
}

impl std::fmt::Debug for QlikClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QlikClient")
            .field("base", &self.base.as_str())
            .field("credentials", &self.credentials)
            .finish_non_exhaustive()
    }
}

const EP_CONNECTION: &str = "/api/v1/data-connections/{id}";
const EP_CONNECTION_BY_NAME: &str = "/api/v1/data-connections/{name}?type=connectionname";
const EP_TOKEN: &str = "/oauth/token";
const EP_CONNECTIONS: &str = "/api/v1/data-connections";
const EP_SPACES: &str = "/api/v1/spaces";
const EP_API_SPECS: &str = "/api/v1/data-sources/{id}/api-specs";
const EP_CREDENTIAL: &str = "/api/v1/data-credentials/{id}";
const EP_RELOADS: &str = "/api/v1/reloads";
const EP_RELOAD: &str = "/api/v1/reloads/{id}";

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    expires_at: Option<String>,
}

impl QlikClient {
    /// Builds the client (no network I/O yet).
    ///
    /// # Errors
    /// When the TLS backend cannot be initialised.
    pub fn new(settings: ClientSettings) -> Result<Self, QlikError> {
        let http = reqwest::Client::builder()
            // The Qlik API does not redirect. Following a 307/308 would re-send a PATCH body
            // (the credentials) to wherever `Location` points; a 3xx is an error instead.
            .redirect(reqwest::redirect::Policy::none())
            // Covers connecting, the headers *and* reading the body, so a server dripping a
            // body byte by byte is cut off too.
            .timeout(settings.request_timeout)
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("qlik-rotator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| QlikError::Transport {
                method: "INIT",
                endpoint: "client",
                message: e.to_string(),
                timeout: false,
            })?;
        let mut own_secrets = Redactor::new();
        match &settings.credentials {
            Credentials::ApiKey(key) => own_secrets.add_secret(key),
            Credentials::OAuth { client_secret, .. } => own_secrets.add_secret(client_secret),
        }
        Ok(QlikClient {
            http,
            max_response_bytes: settings.max_response_bytes,
            own_secrets,
            base: settings.tenant_url,
            credentials: settings.credentials,
            token: Mutex::new(None),
            token_requests: AtomicU64::new(0),
            retry: settings.retry,
            gates: Gates::new(settings.read_budget_per_min, settings.write_budget_per_min),
            observer: None,
            origin: None,
        })
    }

    /// Names who the client speaks for in the hints of its errors (a 401 names the refused
    /// credential, a 429 the tenant's budget key).
    pub fn with_origin(mut self, origin: Origin) -> Self {
        self.origin = Some(Arc::new(origin));
        self
    }

    /// Attaches a metrics observer.
    pub fn with_observer(mut self, observer: Arc<dyn RequestObserver>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Shares an existing write gate (one identity, several clients).
    pub fn with_gate(mut self, gate: Arc<WriteGate>) -> Self {
        self.gates.write = gate;
        self
    }

    /// Shares an identity's gates, both tiers (one identity, several clients).
    pub fn with_gates(mut self, gates: Gates) -> Self {
        self.gates = gates;
        self
    }

    /// The write gate this client paces its Tier 2 calls with.
    pub fn gate(&self) -> &Arc<WriteGate> {
        &self.gates.write
    }

    /// Both gates of this client's identity (Tier 1 reads, Tier 2 writes).
    pub fn gates(&self) -> &Gates {
        &self.gates
    }

    /// How many OAuth token requests this client has made.
    pub fn token_requests(&self) -> u64 {
        self.token_requests.load(Ordering::Relaxed)
    }

    /// The base URL plus `segments`, each percent-encoded whole (every byte but `A-Za-z0-9-_.~`),
    /// so an id or name can never add a segment, a query or a fragment. `.`, `..` and empty
    /// segments cannot be carried by any URL (RFC 3986 §5.2.4 and the WHATWG parser remove
    /// them, even as `%2E`), so they are sent double-encoded (`%252E%252E`): a segment that names
    /// nothing, answered 400/404, never the parent collection. Config validation refuses such
    /// ids and names at load; only a hostile response could bring one here.
    fn url(&self, segments: &[&str]) -> Url {
        const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let mut path = self.base.path().trim_end_matches('/').to_owned();
        for s in segments {
            path.push('/');
            match *s {
                "" => path.push_str("%2500"),
                "." | ".." => path.push_str(&"%252E".repeat(s.len())),
                s => path.extend(percent_encoding::utf8_percent_encode(s, SEGMENT)),
            }
        }
        let mut url = self.base.clone();
        url.set_path(&path);
        url
    }

    /// `GET /api/v1/data-connections/{id}?parseConnection=true`.
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn get_connection(&self, id: &str) -> Result<DataConnection, QlikError> {
        self.get_connection_redacting(id, &Redactor::new()).await
    }

    /// [`QlikClient::get_connection`] whose error text is also scrubbed of `extra` (the verify
    /// GET after a PATCH: the values just written are still in play).
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn get_connection_redacting(
        &self,
        id: &str,
        extra: &Redactor,
    ) -> Result<DataConnection, QlikError> {
        let mut url = self.url(&["api", "v1", "data-connections", id]);
        url.query_pairs_mut().append_pair("parseConnection", "true");
        let resp = self
            .send("GET", EP_CONNECTION, false, extra, |c| c.get(url.clone()))
            .await?;
        self.decode("GET", EP_CONNECTION, resp).await
    }

    /// Looks a connection up by name (and space): `GET …/{name}?type=connectionname&spaceId=…`.
    ///
    /// # Errors
    /// [`QlikError::NameNotFound`] on 404; other [`QlikError`]s after retries.
    pub async fn find_connection(
        &self,
        name: &str,
        space: Option<&str>,
    ) -> Result<DataConnection, QlikError> {
        let mut url = self.url(&["api", "v1", "data-connections", name]);
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("type", "connectionname");
            if let Some(space) = space {
                q.append_pair("spaceId", space);
            }
            q.append_pair("parseConnection", "true");
        }
        match self
            .send("GET", EP_CONNECTION_BY_NAME, false, &Redactor::new(), |c| {
                c.get(url.clone())
            })
            .await
        {
            Ok(resp) => self.decode("GET", EP_CONNECTION_BY_NAME, resp).await,
            Err(e) if e.status() == Some(404) => Err(QlikError::NameNotFound {
                name: name.to_owned(),
                space: space.map(str::to_owned),
            }),
            Err(e) => Err(e.for_name_lookup(name, space)),
        }
    }

    /// One page of `GET /api/v1/data-connections` (fact sheet §2.1): the first page
    /// (`limit=100`, `spaceId` when given) when `next` is `None`, else the page at `next`, a
    /// URL already checked by [`QlikClient::tenant_url`]. Through [`QlikClient::send`]: read
    /// budget, retries, body cap.
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn list_connections_page(
        &self,
        next: Option<Url>,
        space: Option<&str>,
    ) -> Result<ConnectionList, QlikError> {
        let url = match next {
            Some(u) => u,
            None => {
                let mut u = self.url(&["api", "v1", "data-connections"]);
                {
                    let mut q = u.query_pairs_mut();
                    q.append_pair("limit", "100");
                    if let Some(s) = space {
                        q.append_pair("spaceId", s);
                    }
                }
                u
            }
        };
        let resp = self
            .send("GET", EP_CONNECTIONS, false, &Redactor::new(), |c| {
                c.get(url.clone())
            })
            .await?;
        self.decode("GET", EP_CONNECTIONS, resp).await
    }

    /// One page of `GET /api/v1/spaces` (the `@qlik/api` spaces typings: `getSpaces`, query
    /// `limit`, `name`, `next`): the first page when `next` is `None` (`name` filters by
    /// substring, case-insensitive), else the page at `next`, checked by
    /// [`QlikClient::tenant_url`].
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn list_spaces_page(
        &self,
        next: Option<Url>,
        name: Option<&str>,
    ) -> Result<SpaceList, QlikError> {
        let url = match next {
            Some(u) => u,
            None => {
                let mut u = self.url(&["api", "v1", "spaces"]);
                {
                    let mut q = u.query_pairs_mut();
                    q.append_pair("limit", "100");
                    if let Some(n) = name {
                        q.append_pair("name", n);
                    }
                }
                u
            }
        };
        let resp = self
            .send("GET", EP_SPACES, false, &Redactor::new(), |c| {
                c.get(url.clone())
            })
            .await?;
        self.decode("GET", EP_SPACES, resp).await
    }

    /// `href` (a `links.next.href` from a list response) as a URL, if it is on this client's
    /// tenant (same scheme, host and port) and names exactly the collection `segments`
    /// (e.g. `["api", "v1", "spaces"]`) under the base path; `None` otherwise, so a hostile
    /// page can never send the bearer token to another host or endpoint.
    pub fn tenant_url(&self, href: &str, segments: &[&str]) -> Option<Url> {
        let url = Url::parse(href).ok()?;
        let expected = self.url(segments);
        let same_origin = url.scheme() == expected.scheme()
            && url.host_str() == expected.host_str()
            && url.port_or_known_default() == expected.port_or_known_default();
        let clean =
            url.username().is_empty() && url.password().is_none() && url.fragment().is_none();
        (same_origin && clean && url.path() == expected.path()).then_some(url)
    }

    /// `PATCH /api/v1/data-connections/{id}` with a bare RFC 6902 array; 204 is success.
    ///
    /// # Errors
    /// [`QlikError`] after retries; error details echoing a patched secret are redacted.
    pub async fn patch_connection(&self, id: &str, doc: &PatchDocument) -> Result<(), QlikError> {
        let url = self.url(&["api", "v1", "data-connections", id]);
        let body = doc.expose_body();
        let redactor = doc.redactor();
        let resp = self
            .send("PATCH", EP_CONNECTION, true, &redactor, |c| {
                c.patch(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::NO_CONTENT {
            tracing::warn!(
                status = resp.status().as_u16(),
                "PATCH succeeded with an unexpected status (Qlik documents 204)."
            );
        }
        Ok(())
    }

    /// `GET /api/v1/data-sources/{id}/api-specs`: the connector's property schema.
    /// `Ok(None)` when the tenant has no api-specs for it (404).
    ///
    /// # Errors
    /// Other [`QlikError`]s after retries.
    pub async fn get_api_specs(
        &self,
        datasource: &str,
    ) -> Result<Option<serde_json::Value>, QlikError> {
        let url = self.url(&["api", "v1", "data-sources", datasource, "api-specs"]);
        match self
            .send("GET", EP_API_SPECS, false, &Redactor::new(), |c| {
                c.get(url.clone())
            })
            .await
        {
            Ok(resp) => self.decode("GET", EP_API_SPECS, resp).await.map(Some),
            Err(e) if e.status() == Some(404) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /api/v1/data-credentials/{id}` (or by name with `byCredentialName=true`).
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn get_credential(
        &self,
        id_or_name: &str,
        by_name: bool,
    ) -> Result<DataCredential, QlikError> {
        self.get_credential_redacting(id_or_name, by_name, &Redactor::new())
            .await
    }

    /// [`QlikClient::get_credential`] whose error text is also scrubbed of `extra` (the verify
    /// GET after a PUT).
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn get_credential_redacting(
        &self,
        id_or_name: &str,
        by_name: bool,
        extra: &Redactor,
    ) -> Result<DataCredential, QlikError> {
        let mut url = self.url(&["api", "v1", "data-credentials", id_or_name]);
        if by_name {
            url.query_pairs_mut()
                .append_pair("byCredentialName", "true");
        }
        let resp = self
            .send("GET", EP_CREDENTIAL, false, extra, |c| c.get(url.clone()))
            .await?;
        self.decode("GET", EP_CREDENTIAL, resp).await
    }

    /// `PUT /api/v1/data-credentials/{id}` with new `qUsername`/`qPassword`; 204 is success.
    ///
    /// # Errors
    /// [`QlikError`] after retries; echoed secrets are redacted.
    pub async fn put_credential(&self, update: &CredentialUpdate) -> Result<(), QlikError> {
        let url = self.url(&["api", "v1", "data-credentials", &update.id]);
        let body = update.expose_body();
        let redactor = update.redactor();
        let resp = self
            .send("PUT", EP_CREDENTIAL, true, &redactor, |c| {
                c.put(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        drop(resp);
        Ok(())
    }

    /// `POST /api/v1/reloads` `{"appId": …}`: queues a reload of the app (`@qlik/api`
    /// `queueReload`, 201 with a `Reload`; errors 400, 401, 403, 429, 500 —
    /// <https://qlik.dev/apis/rest/reloads/>). Paced by the write gate like every non-GET; a
    /// 429 is retried by the client's policy (honouring `Retry-After`).
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn queue_reload(&self, app_id: &str) -> Result<Reload, QlikError> {
        let url = self.url(&["api", "v1", "reloads"]);
        let body = serde_json::json!({ "appId": app_id }).to_string();
        let resp = self
            .send("POST", EP_RELOADS, true, &Redactor::new(), |c| {
                c.post(url.clone())
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await?;
        if resp.status() != StatusCode::CREATED {
            tracing::warn!(
                status = resp.status().as_u16(),
                "Reload queued with an unexpected status (Qlik documents 201)."
            );
        }
        self.decode("POST", EP_RELOADS, resp).await
    }

    /// `GET /api/v1/reloads/{id}` (`@qlik/api` `getReload`, 200 with a `Reload`); the body is
    /// capped by `qlik.max_response_bytes` like every answer.
    ///
    /// # Errors
    /// [`QlikError`] after retries.
    pub async fn get_reload(&self, reload_id: &str) -> Result<Reload, QlikError> {
        let url = self.url(&["api", "v1", "reloads", reload_id]);
        let resp = self
            .send("GET", EP_RELOAD, false, &Redactor::new(), |c| {
                c.get(url.clone())
            })
            .await?;
        self.decode("GET", EP_RELOAD, resp).await
    }

    /// Sends one logical request with auth, its tier's gate (Tier 2 when `write`, else
    /// Tier 1), and the retries of [`retry::run`]. A 401 under OAuth refreshes the token once per logical request, without
    /// counting an attempt. Error text is scrubbed of the client's own secrets, the bearer
    /// token and `extra` (the values this request writes). Redirects are errors, never followed.
    async fn send(
        &self,
        method: &'static str,
        endpoint: &'static str,
        write: bool,
        extra: &Redactor,
        build: impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, QlikError> {
        let request = retry::Request {
            method,
            endpoint,
            gate: Some(self.tier_gate(write)),
            observer: self.observer.as_deref(),
        };
        let refreshed = AtomicBool::new(false);
        retry::run(&self.retry, &request, || async {
            loop {
                match self.send_once(method, endpoint, write, extra, &build).await {
                    Err(e)
                        if e.status() == Some(401)
                            && self.is_oauth()
                            && !refreshed.swap(true, Ordering::Relaxed) =>
                    {
                        // The token may have been revoked or expired early: get a new one.
                        *self.token.lock().await = None;
                        tracing::info!(
                            endpoint,
                            "Qlik answered 401; refreshing the OAuth token once."
                        );
                    }
                    other => return other,
                }
            }
        })
        .await
    }

    /// The gate of a request's tier: writes are Tier 2, reads (GETs) Tier 1.
    fn tier_gate(&self, write: bool) -> &super::gate::Gate {
        self.gates.of(if write { Tier::Write } else { Tier::Read })
    }

    /// One HTTP exchange of [`QlikClient::send`]: bearer token, gate slot, send, and
    /// the answer classified (success, redirect error, status error, transport error).
    async fn send_once(
        &self,
        method: &'static str,
        endpoint: &'static str,
        write: bool,
        extra: &Redactor,
        build: &impl Fn(&reqwest::Client) -> RequestBuilder,
    ) -> Result<Response, QlikError> {
        let token = self.bearer().await?;
        self.tier_gate(write).acquire().await;
        let started = Instant::now();
        let result = build(&self.http)
            .bearer_auth(token.expose_secret())
            .send()
            .await;
        match result {
            Ok(resp) if resp.status().is_success() => {
                self.observe(method, endpoint, resp.status().as_str(), started);
                Ok(resp)
            }
            Ok(resp) if resp.status().is_redirection() => {
                self.observe(method, endpoint, resp.status().as_str(), started);
                Err(redirect_error(method, endpoint, &resp))
            }
            Ok(resp) => {
                self.observe(method, endpoint, resp.status().as_str(), started);
                let redactor = self.redactor(Some(&token), extra);
                Err(status_error(method, endpoint, resp, &redactor, self.origin.clone()).await)
            }
            Err(e) => {
                self.observe(method, endpoint, "error", started);
                Err(transport_error(
                    method,
                    endpoint,
                    &e,
                    &self.redactor(Some(&token), extra),
                ))
            }
        }
    }

    /// Everything that must not appear in error text: the client's own secrets, the bearer
    /// token in use (an OAuth access token; for an API key, the key again) and `extra`.
    fn redactor(&self, token: Option<&SecretString>, extra: &Redactor) -> Redactor {
        let mut r = self.own_secrets.merged(extra);
        if let Some(t) = token
            && self.is_oauth()
        {
            r.add_secret(t);
        }
        r
    }

    /// Reads a success body (at most `max_response_bytes`) and decodes it.
    async fn decode<T: serde::de::DeserializeOwned>(
        &self,
        method: &'static str,
        endpoint: &'static str,
        resp: Response,
    ) -> Result<T, QlikError> {
        let bytes = self.read_body(method, endpoint, resp).await?;
        serde_json::from_slice(&bytes).map_err(|e| QlikError::Decode {
            method,
            endpoint,
            // Only the position: serde's messages can quote values.
            message: format!("invalid JSON at line {} column {}", e.line(), e.column()),
        })
    }

    /// The whole body, or [`QlikError::TooLarge`] as soon as it exceeds the cap.
    async fn read_body(
        &self,
        method: &'static str,
        endpoint: &'static str,
        resp: Response,
    ) -> Result<Vec<u8>, QlikError> {
        let limit = usize::try_from(self.max_response_bytes).unwrap_or(usize::MAX);
        match read_limited(resp, limit).await {
            Ok((bytes, false)) => Ok(bytes),
            Ok((_, true)) => {
                tracing::warn!(
                    method,
                    endpoint,
                    limit = self.max_response_bytes,
                    "Qlik's response exceeds qlik.max_response_bytes; not read further."
                );
                Err(QlikError::TooLarge {
                    method,
                    endpoint,
                    limit: self.max_response_bytes,
                })
            }
            Err(e) => Err(QlikError::Transport {
                method,
                endpoint,
                message: text::sanitize(
                    &transport_message(&e),
                    &self.redactor(None, &Redactor::new()),
                ),
                timeout: e.is_timeout(),
            }),
        }
    }

    fn is_oauth(&self) -> bool {
        matches!(self.credentials, Credentials::OAuth { .. })
    }

    fn observe(
        &self,
        method: &'static str,
        endpoint: &'static str,
        status: &str,
        started: Instant,
    ) {
        if let Some(o) = &self.observer {
            o.request(method, endpoint, status, started.elapsed());
        }
    }

    /// The bearer token: the API key, or a cached OAuth token (fetched once, refreshed shortly
    /// before it expires). Concurrent callers wait for one token request.
    async fn bearer(&self) -> Result<SecretString, QlikError> {
        let (client_id, client_secret, scope) = match &self.credentials {
            Credentials::ApiKey(key) => return Ok(key.clone()),
            Credentials::OAuth {
                client_id,
                client_secret,
                scope,
            } => (client_id, client_secret, scope),
        };
        let mut cached = self.token.lock().await;
        if let Some(t) = cached.as_ref()
            && Instant::now() < t.refresh_at
        {
            return Ok(t.token.clone());
        }
        let url = self.url(&["oauth", "token"]);
        let mut body = serde_json::json!({
            "client_id": client_id,
            "client_secret": client_secret.expose_secret(),
            "grant_type": "client_credentials",
        });
        if let Some(scope) = scope {
            body["scope"] = serde_json::Value::String(scope.clone());
        }
        let request = retry::Request {
            method: "POST",
            endpoint: EP_TOKEN,
            gate: Some(&self.gates.write),
            observer: self.observer.as_deref(),
        };
        let hint = token_hint(self.origin.as_deref().unwrap_or(&Origin::default_oauth()));
        let token_err = |m: String| QlikError::Token(format!("{m}{hint}"));
        let resp = retry::run(&self.retry, &request, || self.token_once(&url, &body))
            .await
            .map_err(|e| match e {
                QlikError::Status {
                    status, problem, ..
                } => token_err(format!("HTTP {status}: {}", problem.describe())),
                QlikError::Transport { message, .. } => token_err(message),
                other => other,
            })?;
        let bytes = self.read_body("POST", EP_TOKEN, resp).await?;
        let parsed: TokenResponse = serde_json::from_slice(&bytes)
            .map_err(|_| token_err("the token response is not the documented JSON".into()))?;
        drop(bytes);
        if !usable_bearer(&parsed.access_token) {
            return Err(token_err(
                "the token response's access_token is not a usable bearer token (empty, longer than 4096 characters, or with characters a header cannot carry)".into(),
            ));
        }
        let lifetime = token_lifetime(&parsed);
        // Refresh 5 minutes early, or at 90% of a short lifetime.
        let skew = Duration::from_secs(300).min(lifetime / 10);
        let token = SecretString::from(parsed.access_token);
        *cached = Some(CachedToken {
            token: token.clone(),
            refresh_at: Instant::now() + lifetime.saturating_sub(skew),
        });
        tracing::debug!(
            lifetime_s = lifetime.as_secs(),
            "Obtained an OAuth access token."
        );
        Ok(token)
    }

    /// One `POST /oauth/token` exchange (through the write gate: a Tier 2 call). Errors are
    /// scrubbed of the client's own secrets.
    async fn token_once(&self, url: &Url, body: &serde_json::Value) -> Result<Response, QlikError> {
        self.gates.write.acquire().await;
        self.token_requests.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        match self.http.post(url.clone()).json(body).send().await {
            Ok(resp) if resp.status().is_success() => {
                self.observe("POST", EP_TOKEN, resp.status().as_str(), started);
                Ok(resp)
            }
            Ok(resp) if resp.status().is_redirection() => {
                self.observe("POST", EP_TOKEN, resp.status().as_str(), started);
                Err(redirect_error("POST", EP_TOKEN, &resp))
            }
            Ok(resp) => {
                self.observe("POST", EP_TOKEN, resp.status().as_str(), started);
                Err(status_error(
                    "POST",
                    EP_TOKEN,
                    resp,
                    &self.own_secrets,
                    self.origin.clone(),
                )
                .await)
            }
            Err(e) => {
                self.observe("POST", EP_TOKEN, "error", started);
                Err(transport_error("POST", EP_TOKEN, &e, &self.own_secrets))
            }
        }
    }
}

/// Whether `token` can be sent as `Authorization: Bearer …`: 1 to 4096 visible ASCII
/// characters (RFC 6750's token characters are a subset). Anything else would be refused by
/// the HTTP library on every request, or split the header.
fn usable_bearer(token: &str) -> bool {
    (1..=4096).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

/// The longest token lifetime believed: a day (Qlik documents 6 h). A larger `expires_in`
/// (up to `u64::MAX` from a hostile server) would overflow the refresh deadline.
const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);

fn token_lifetime(t: &TokenResponse) -> Duration {
    token_lifetime_uncapped(t).min(MAX_TOKEN_LIFETIME)
}

fn token_lifetime_uncapped(t: &TokenResponse) -> Duration {
    if let Some(secs) = t.expires_in {
        return Duration::from_secs(secs);
    }
    if let Some(at) = t
        .expires_at
        .as_deref()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
    {
        let secs = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
        return Duration::from_secs(secs.max(0) as u64);
    }
    // Qlik documents a 6 h lifetime; assume less when the server does not say.
    Duration::from_secs(3600)
}

/// A 3xx answer as an error; only the `Location`'s scheme, host and port are kept (its path
/// and query could carry anything), escaped.
fn redirect_error(method: &'static str, endpoint: &'static str, resp: &Response) -> QlikError {
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|l| resp.url().join(l).ok())
        .and_then(|u| {
            let host = u.host_str()?;
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            Some(
                text::cap(
                    &text::escape(&format!("{}://{host}{port}", u.scheme())),
                    128,
                )
                .into_owned(),
            )
        });
    tracing::warn!(
        method,
        endpoint,
        status = resp.status().as_u16(),
        "Qlik answered with a redirect; redirects are not followed."
    );
    QlikError::Redirect {
        method,
        endpoint,
        status: resp.status().as_u16(),
        location,
    }
}

/// Reads at most `limit` bytes of a body. `Ok((_, true))` when the body is longer (announced
/// by `Content-Length`, or seen while streaming); nothing past the limit is buffered.
async fn read_limited(mut resp: Response, limit: usize) -> Result<(Vec<u8>, bool), reqwest::Error> {
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Ok((Vec::new(), true));
    }
    let mut buf = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if buf.len() + chunk.len() > limit {
            return Ok((Vec::new(), true));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((buf, false))
}

/// An error body, read up to [`MAX_ERROR_BODY`] and parsed into redacted, escaped, capped
/// fields. The raw body goes no further than this function.
async fn read_problem(resp: Response, redactor: &Redactor) -> ApiProblem {
    match read_limited(resp, MAX_ERROR_BODY).await {
        Ok((body, truncated)) => ApiProblem::parse_redacted(&body, truncated, redactor),
        Err(_) => ApiProblem::default(),
    }
}

/// A non-success, non-redirect answer as [`QlikError::Status`], its body read (capped) and
/// scrubbed of `redactor`'s secrets.
async fn status_error(
    method: &'static str,
    endpoint: &'static str,
    resp: Response,
    redactor: &Redactor,
    origin: Option<Arc<Origin>>,
) -> QlikError {
    let status = resp.status().as_u16();
    let retry_after = parse_retry_after(resp.headers());
    let mut problem = read_problem(resp, redactor).await;
    problem.origin = origin;
    QlikError::Status {
        method,
        endpoint,
        status,
        problem: Box::new(problem),
        retry_after,
    }
}

/// A request that did not complete as [`QlikError::Transport`], scrubbed of `redactor`'s
/// secrets.
fn transport_error(
    method: &'static str,
    endpoint: &'static str,
    e: &reqwest::Error,
    redactor: &Redactor,
) -> QlikError {
    QlikError::Transport {
        method,
        endpoint,
        message: text::sanitize(&transport_message(e), redactor),
        timeout: e.is_timeout(),
    }
}

fn parse_retry_after(headers: &header::HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let secs = (at.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_seconds();
    Some(Duration::from_secs(secs.max(0) as u64))
}

/// A transport error's message without the URL (which is harmless, but long) and with the
/// underlying cause, which reqwest hides behind `source()`.
fn transport_message(e: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut msg = if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        "could not connect".to_owned()
    } else {
        "connection failed".to_owned()
    };
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_parses_seconds_and_dates() {
        let mut h = header::HeaderMap::new();
        h.insert(header::RETRY_AFTER, "13".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(13)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }

    /// The token request goes through the same retry policy as every other request: a
    /// `Retry-After` above `max_retry_after` fails at once (it used to be waited for), and a
    /// 429 is counted and pauses the write gate.
    #[tokio::test]
    async fn the_token_request_shares_the_retry_policy() {
        use std::sync::atomic::AtomicU32;

        use qlik_sim::{Fault, SimConfig, Simulator};

        const SECRET: &str = "CANARY-client-secret-7f3a";
        #[derive(Default)]
        struct Count429(AtomicU32);
        impl RequestObserver for Count429 {
            fn request(&self, _: &'static str, _: &'static str, _: &str, _: Duration) {}
            fn rate_limited(&self) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let sim = Simulator::start(SimConfig {
            oauth_clients: vec![("cid".into(), SECRET.into())],
            ..SimConfig::default()
        })
        .await
        .unwrap();
        let observer = Arc::new(Count429::default());
        let client = QlikClient::new(ClientSettings {
            tenant_url: sim.base_url().parse().unwrap(),
            credentials: Credentials::OAuth {
                client_id: "cid".into(),
                client_secret: SECRET.to_owned().into(),
                scope: None,
            },
            request_timeout: Duration::from_secs(5),
            retry: RetryPolicy::default(),
            write_budget_per_min: 0,
            read_budget_per_min: 0,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
        })
        .unwrap()
        .with_observer(observer.clone());
        let token_limited = |secs| Fault::RateLimited {
            method: Some("POST".into()),
            path_prefix: Some("/oauth/token".into()),
            retry_after_secs: secs,
            times: 1,
        };

        sim.inject(token_limited(121));
        let err = tokio::time::timeout(Duration::from_secs(5), client.get_connection("x"))
            .await
            .expect("a Retry-After above max_retry_after is not waited for")
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            shown.starts_with("OAuth token request failed: HTTP 429"),
            "{shown}"
        );
        assert!(!shown.contains(SECRET), "{shown}");
        assert_eq!(client.token_requests(), 1);
        assert!(sim.requests().iter().all(|r| r.path == "/oauth/token"));

        sim.inject(token_limited(1));
        let err = client
            .get_connection("00000000-0000-4000-8000-000000000000")
            .await
            .unwrap_err();
        assert_eq!(err.status(), Some(404), "{err}");
        assert_eq!(client.token_requests(), 3);
        assert_eq!(observer.0.load(Ordering::SeqCst), 1);
        assert_eq!(client.gate().pauses(), 1);
    }

    #[test]
    fn token_lifetime_prefers_expires_in() {
        let t = TokenResponse {
            access_token: String::new(),
            expires_in: Some(21600),
            expires_at: None,
        };
        assert_eq!(token_lifetime(&t), Duration::from_secs(21600));
    }

    #[test]
    fn a_hostile_token_lifetime_is_capped_at_a_day() {
        let t = TokenResponse {
            access_token: String::new(),
            expires_in: Some(u64::MAX),
            expires_at: None,
        };
        assert_eq!(token_lifetime(&t), MAX_TOKEN_LIFETIME);
        let t = TokenResponse {
            access_token: String::new(),
            expires_in: None,
            expires_at: Some("9999-12-31T23:59:59Z".into()),
        };
        assert_eq!(token_lifetime(&t), MAX_TOKEN_LIFETIME);
    }

    #[test]
    fn only_header_safe_tokens_are_usable() {
        assert!(usable_bearer("sim-at-0123abc.DEF_~+/="));
        for bad in ["", "a b", "a\r\nX: 1", "ü", &"a".repeat(4097)] {
            assert!(!usable_bearer(bad), "{bad:?}");
        }
    }
}
