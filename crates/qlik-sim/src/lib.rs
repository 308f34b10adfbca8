//! A faithful, in-process simulator of the Qlik Cloud data-connections REST API.
//!
//! [`Simulator::start`] binds a real HTTP/1.1 server on loopback that the product's `reqwest`
//! client talks to. It models the behaviour described in `qlik-api-facts.md`:
//!
//! - Bearer authentication with static API keys or OAuth client-credentials tokens
//!   (`POST /oauth/token`), 401 otherwise.
//! - `GET /api/v1/data-connections` (list with cursor paging and a SCIM-filter subset),
//!   `GET`/`PATCH /api/v1/data-connections/{qID}` (also by name with `type=connectionname`).
//!   GET never returns credential properties; PATCH takes a bare RFC 6902 array and enforces the
//!   July-2026 validation rules, JSON type checks and (optionally) the connector's api-specs.
//! - `GET /api/v1/data-sources/{id}/api-specs`, and the data-credentials endpoints
//!   (`GET`/`PUT`/`PATCH /api/v1/data-credentials/{qID}`).
//! - `POST /api/v1/data-connections` and `DELETE /api/v1/data-connections/{qID}`, and the list
//!   `GET /api/v1/data-sources`, for the conformance suite (`scripts/conformance.sh`); see
//!   "Create and delete" below.
//! - Per-identity Tier 1/Tier 2 rate limits with `Retry-After` (see [`limiter`]).
//! - Injected [`Fault`]s (status codes, 429s, delays, dropped TCP connections, another
//!   connection's body, a 204 that applies nothing, rewritten response fields, and [`Hostile`]
//!   answers no Qlik tenant gives: redirects, endless bodies, echoed secrets) and added latency.
//!
//! Every request is recorded ([`Simulator::requests`]) so tests can assert on what a client sent.
//!
//! **Provenance.** The simulator is not Qlik. `crates/qlik-sim/FIDELITY.md` lists every
//! behaviour below with its published source (a qlik.dev page or an `@qlik/api` type) and its
//! confidence (documented / shown in an example / assumed); keep it in step with any change
//! here. The product's contract test (`tests/contract.rs`) runs Qlik's official client against
//! `qlik-rotator simulate`, which serves this crate through [`simulate`].
//!
//! **Independence.** This crate imports nothing from `qlik-rotator` (it is not even a
//! dependency), so it cannot copy the product's reading of Qlik's API: every behaviour comes
//! from the sources in `FIDELITY.md`. Tests that compare the simulator with the product (e.g.
//! the product's connector catalogue against [`props`]) live in the product's tests.
//!
//! # Modelling choices
//!
//! Where the fact sheet is silent or contradictory the simulator picks one behaviour:
//!
//! - **Rate limits**: an exact 60-second sliding log per identity and tier (stricter than Qlik's
//!   "evaluated over a 5-minute window"); see [`limiter`]. The identity is the API key, or the
//!   OAuth client behind a token; `POST /oauth/token` is Tier 2 for its `client_id`, so token
//!   requests share the client's write budget. Rejected (429) requests do not count.
//! - **Order of checks**: faults, then (for `/api/...`) authentication (401), rate limit (429),
//!   lookup (400 non-UUID on GET one / 404 / ambiguous name: 400 on GET, 409 on PATCH),
//!   privilege (403), body (400).
//! - **GET one**: `qConnectionSecret` is returned as `"***"` when set (the real encoding is
//!   unknown); `qCredentialsID` is omitted once a host change has disassociated it; `space` is
//!   `""` for personal connections. `spaceId` and the tutorial's `space` are both accepted.
//! - **List**: `limit` defaults to 32; `meta.count` is the total number of matches (not the page
//!   size); connections without the `list` privilege are left out; `filter` supports
//!   `<qName|qType|datasourceID> <eq|ne|co|sw|ew> "value"` clauses joined by `and`;
//!   `sort` supports `±qName`, `±created`, `±updated`, `±_id`. The page cursor is opaque.
//! - **PATCH**: the four July-2026 rules treat *any* mutating op on `/qConnectStatement` or on
//!   `/connectionProperties/{host,server,url}` as a change (even if the value is unchanged).
//!   The body must be `@qlik/api`'s `PatchRequest`: `test`/`move`/`copy` ops, object or null
//!   values and add/replace without `value` are 400s (see [`patch`]). "Credentials" are ops on
//!   `/qPassword`, `/qUsername`,
//!   a secret property or `username` (see [`props`]), anything inside a file-array credential,
//!   or an encrypted `queryHeaders` entry. Rule 4 fires for `/qPassword` together with any
//!   secret scalar property. An empty patch array (or `test` ops alone) is a 204 that leaves
//!   `updated` alone; any other accepted PATCH advances it, even when the values it sets are
//!   the ones already stored (assumed: the same secret applied again is a write). Top-level `qPassword`/`qUsername` always exist (as `""`) so
//!   `replace` works on them; `qName` and `qConnectStatement` cannot be removed. A new
//!   `credentialsName` gives the connection a new `qCredentialsID`; a `separateCredentials`
//!   property updates `qSeparateCredentials`. Renaming onto an existing name in the same space
//!   is a 409.
//! - **Timestamps** are UTC RFC 3339 with milliseconds and strictly increase across all writes
//!   of one simulator (a write in the same millisecond gets +1 ms).
//! - **OAuth**: tokens are opaque random strings; `expires_in` is [`SimConfig::token_ttl`];
//!   `scope` echoes the request or defaults to `user_default`. Missing `grant_type` is
//!   400 `invalid_request`, another grant type 400 `unsupported_grant_type`.
//! - **Data credentials**: `qConnCount` counts connections linked with
//!   [`Simulator::link_credential`]; PUT always advances `updated`; PATCH accepts only
//!   `/qName`, `/qUsername`, `/qPassword` (no `remove`).
//! - **Create and delete** (Tier 2, like every non-GET; sources as numbered in
//!   `qlik-api-facts.md` §0):
//!   - `POST /api/v1/data-connections` takes the properties form `DcaasConnectionCreate`
//!     (S1): `datasourceID`, `qName`, `connectionProperties` (required), `space` (absent or
//!     empty = personal space), `tags` (strings, at most 31, S1). qlik.dev's examples (S11,
//!     S12) send `dataSourceId`: both spellings are accepted [example]. 201 with the
//!     `ConnectionCreateResponse` fields (S1; `qLogOn` is the string `"0"` there, the integer
//!     `0` in GET) [documented]; 409 when the name exists in that space (S1, S6)
//!     [documented]; 400 naming the field for a missing or mistyped field [documented
//!     status, assumed details]. The connection gets the tag
//!     `DcaasAPI:<qType>:<connectorVersion>` (S11/S14 example responses) [example]. Its
//!     credentials are stored and never returned by GET, as for seeded connections.
//!     [assumed]: create neither checks the properties against the api-specs nor reaches the
//!     data source, and the connect-statement form (`ConnectionCreate`) is answered 400.
//!   - `DELETE /api/v1/data-connections/{qID}` (S1, S6): 204; 404 for an unknown id (a
//!     non-UUID id is simply not found: S1 lists 403 and 404 only); 403 without the `delete`
//!     privilege; `type=connectionname` with `spaceId` as for GET [documented]. Linked data
//!     credentials are kept (S10) [documented].
//!   - `GET /api/v1/data-sources` (S4, S8; `DataSourcesResponseNew` in `@qlik/api`):
//!     `{dataSources: [{dataSourceId, name, provider, providerName, disabled}], lastUpdated}`
//!     for the data sources whose api-specs are registered; `dataSourceId` filters
//!     [documented shape, assumed contents].
//!
//!   What a real tenant does instead is what `scripts/conformance.sh` records (README,
//!   "Conformance against a live tenant"; its `scripts/conformance/assumptions.json` lists the
//!   simulator's value for each fact).
//! - **Not modelled**: PUT of connections, the connect-statement create, bulk actions, the
//!   `/api/connectivity/...` namespace, `extended`/`includeQris`, user impersonation, token
//!   revocation, the tenant-wide limit, partial list responses with `errors`, and the
//!   "credential decryption failed" 500 (inject it with [`Fault::Status`]).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod examples;
mod handlers;
mod hostile;
pub mod limiter;
pub mod patch;
pub mod props;
pub mod reloads;
pub mod simulate;
pub mod spaces;
mod state;
#[cfg(test)]
mod tests;
mod util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use state::Shared;

/// Configuration of a [`Simulator`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Accepted static bearer tokens (API keys).
    pub api_keys: Vec<String>,
    /// `(client_id, client_secret)` pairs accepted by `POST /oauth/token`.
    pub oauth_clients: Vec<(String, String)>,
    /// Lifetime of issued OAuth access tokens (default 6 h).
    pub token_ttl: Duration,
    /// Tier 2 limit per identity and 60-second window; `None` = unlimited.
    pub write_limit_per_min: Option<u32>,
    /// Tier 1 limit per identity and 60-second window; `None` = unlimited.
    pub read_limit_per_min: Option<u32>,
    /// Delay added to every response (default 0).
    pub latency: Duration,
    /// The window both limits apply to (default 60 s, as Qlik's per-minute limits). Tests
    /// shrink it to exercise the limits quickly: 5 writes per 3 s is 100 per minute.
    pub rate_window: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            api_keys: vec!["sim-api-key".to_owned()],
            oauth_clients: vec![("sim-client".to_owned(), "sim-client-secret".to_owned())],
            token_ttl: Duration::from_secs(6 * 3600),
            write_limit_per_min: None,
            read_limit_per_min: None,
            latency: Duration::ZERO,
            rate_window: Duration::from_secs(60),
        }
    }
}

/// A data connection to seed into the simulator.
#[derive(Debug, Clone)]
pub struct SeedConnection {
    /// The qID; a random UUID v4 when `None`. Use a UUID: GET by id rejects non-UUIDs with 400.
    pub id: Option<String>,
    /// `qName`.
    pub name: String,
    /// Space id; `None` = personal space (returned as `""`).
    pub space: Option<String>,
    /// `datasourceID`, e.g. `File_AmazonS3ConnectorV2`, `mssql`, `gbq`.
    pub datasource_id: String,
    /// `qType`, e.g. `QvWebStorageProviderConnectorPackage.exe`.
    pub q_type: String,
    /// Full `connectionProperties`, secrets included.
    pub properties: Map<String, Value>,
    /// Privileges of the caller on this connection (`list`, `update`, `delete`, `read`, ...).
    pub privileges: Vec<String>,
    /// `qSeparateCredentials`.
    pub separate_credentials: bool,
}

impl SeedConnection {
    /// A connection with a random id, personal space, all privileges, embedded credentials and a
    /// `qType` derived from the data source id (see [`props::default_q_type`]).
    ///
    /// `properties` should be a JSON object; anything else is treated as no properties.
    pub fn new(
        name: impl Into<String>,
        datasource_id: impl Into<String>,
        properties: Value,
    ) -> Self {
        let datasource_id = datasource_id.into();
        SeedConnection {
            id: None,
            name: name.into(),
            space: None,
            q_type: props::default_q_type(&datasource_id).to_owned(),
            datasource_id,
            properties: match properties {
                Value::Object(m) => m,
                _ => Map::new(),
            },
            privileges: default_privileges(),
            separate_credentials: false,
        }
    }

    /// Sets the qID.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the space id.
    pub fn in_space(mut self, space: impl Into<String>) -> Self {
        self.space = Some(space.into());
        self
    }

    /// Sets the privileges.
    pub fn with_privileges(mut self, privileges: &[&str]) -> Self {
        self.privileges = privileges.iter().map(|p| (*p).to_owned()).collect();
        self
    }

    /// Marks the connection as using separate credentials.
    pub fn separate(mut self) -> Self {
        self.separate_credentials = true;
        self
    }
}

/// An api-specs body in the documented JSON Schema shape (S11): `properties` maps each property
/// name to its declaration (`{"type": …, "description"?: …, "default"?: …, "enum"?: …}`).
pub fn api_specs(provider: &str, version: &str, properties: Value) -> Value {
    serde_json::json!({
        "connectorProvider": provider,
        "connectorVersion": version,
        "connectionProperties": {"type": "object", "properties": properties},
    })
}

/// The default privileges: `list`, `update`, `delete`, `read`.
pub fn default_privileges() -> Vec<String> {
    ["list", "update", "delete", "read"]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
}

/// A data credential (separated credentials, fact sheet §3) to seed into the simulator.
#[derive(Debug, Clone)]
pub struct SeedCredential {
    /// The qID; a random UUID v4 when `None`.
    pub id: Option<String>,
    /// `qName`.
    pub name: String,
    /// `qType`.
    pub q_type: String,
    /// `datasourceID`.
    pub datasource_id: String,
    /// Stored user name (never returned by GET).
    pub username: String,
    /// Stored password (never returned by GET).
    pub password: String,
}

impl SeedCredential {
    /// A credential with a random id.
    pub fn new(
        name: impl Into<String>,
        datasource_id: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let datasource_id = datasource_id.into();
        SeedCredential {
            id: None,
            name: name.into(),
            q_type: props::default_q_type(&datasource_id).to_owned(),
            datasource_id,
            username: username.into(),
            password: password.into(),
        }
    }
}

/// One request received by the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// HTTP method, e.g. `PATCH`.
    pub method: String,
    /// Percent-encoded path, e.g. `/api/v1/data-connections/<id>`.
    pub path: String,
    /// Raw query string without `?`.
    pub query: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `qlik-auth-code` header.
    pub qlik_auth_code: Option<String>,
    /// The body as (lossy UTF-8) text.
    pub body: String,
    /// The status actually returned; 0 if the connection was dropped.
    pub status: u16,
    /// When the request arrived.
    pub at: std::time::Instant,
}

/// A fault to inject. Faults are matched in FIFO order before normal handling; each match
/// decrements `times` and the fault is removed when it reaches 0. `method` matches
/// case-insensitively, `path_prefix` against the start of the (percent-encoded) request path,
/// query excluded; `None` matches any. A fault with `times == 0` never matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Respond with this status and a `{"errors":[…]}` body to the next `times` matching requests.
    Status {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// Status to return.
        status: u16,
        /// How many requests to affect.
        times: u32,
    },
    /// 429 with `Retry-After: secs` to the next `times` matching requests.
    RateLimited {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// Value of the `Retry-After` header.
        retry_after_secs: u64,
        /// How many requests to affect.
        times: u32,
    },
    /// Delay the next `times` matching requests by `delay`, then handle them normally.
    Delay {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// Added delay.
        delay: Duration,
        /// How many requests to affect.
        times: u32,
    },
    /// Close the TCP connection without any response for the next `times` matching requests.
    /// The request is not applied.
    Drop {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// How many requests to affect.
        times: u32,
    },
    /// Answer the next `times` matching requests with a hostile response (see [`Hostile`]).
    /// The request is not applied.
    Hostile {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// What to answer.
        response: Hostile,
        /// How many requests to affect.
        times: u32,
    },
    /// Answer the next `times` matching GETs of one connection (or data credential) with the
    /// 200 body of *another* one, `answer_id`, as a misrouting proxy or cache would. A GET of
    /// `/api/v1/data-credentials/…` answers with the credential `answer_id`; any other path
    /// with the connection `answer_id` (by-name queries are ignored). Not a Qlik behaviour:
    /// the hostile-response hook of issue 10.
    WrongBody {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// The qID whose body is returned.
        answer_id: String,
        /// How many requests to affect.
        times: u32,
    },
    /// Answer the next `times` matching writes (PATCH, PUT) with 204 and an empty body without
    /// applying them: a write Qlik accepted but that never took effect (issue 10).
    IgnoredWrite {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// How many requests to affect.
        times: u32,
    },
    /// Handle the next `times` matching requests normally, then, if the answer is a 200 (or
    /// 201) JSON object, set each top-level field to the given value (`None` removes it): e.g. an
    /// `updated` that is missing, garbage or earlier than before.
    RewriteFields {
        /// Method to match.
        method: Option<String>,
        /// Path prefix to match.
        path_prefix: Option<String>,
        /// `(field, new value)`; `None` removes the field.
        fields: Vec<(String, Option<Value>)>,
        /// How many requests to affect.
        times: u32,
    },
}

/// Responses of a hostile or broken server, for adversarial tests of the client.
///
/// **None of these is Qlik behaviour** (assumed: they model a compromised tenant, a
/// misconfigured proxy or a man in the middle). The Qlik API documentation describes no
/// redirects and no error bodies other than `{"errors":[{code,title,detail,status}]}`
/// (qlik-api-facts.md §4); the client must survive everything here without sending a secret
/// anywhere, buffering without limit, or printing remote text raw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hostile {
    /// A redirect: `status` (301/302/303/307/308) with this `Location` and an empty body. Point
    /// it at a second simulator to record what a client following it would send.
    Redirect {
        /// The 3xx status.
        status: u16,
        /// The `Location` header.
        location: String,
    },
    /// `status` with a chunked body that never ends (no `Content-Length`).
    EndlessBody {
        /// The status.
        status: u16,
    },
    /// `status` with a chunked body that starts like JSON and then sends one byte per
    /// `interval`, forever.
    SlowBody {
        /// The status.
        status: u16,
        /// Time between bytes.
        interval: Duration,
    },
    /// `status` with a body of exactly `bytes` bytes, announced in `Content-Length`, starting
    /// like a JSON error body.
    HugeBody {
        /// The status.
        status: u16,
        /// The body size.
        bytes: usize,
    },
    /// `status` with exactly this body and `Content-Type` (non-JSON pages, control characters,
    /// forged lines).
    Body {
        /// The status.
        status: u16,
        /// The `Content-Type` header.
        content_type: String,
        /// The body.
        body: String,
    },
    /// `status` with a documented-shape error body whose `field` echoes every secret the
    /// request carried (the PATCH's string values and file contents, a PUT's `qUsername` and
    /// `qPassword`, the token request's `client_secret`, and the bearer token), encoded.
    EchoSecrets {
        /// The status.
        status: u16,
        /// Where the echo goes.
        field: EchoField,
        /// How the echo is encoded.
        encoding: EchoEncoding,
    },
    /// 429 with the documented error body and exactly this `Retry-After` header value (a
    /// huge number, a negative one, text, a date), for tests of how the client caps it.
    RetryAfter {
        /// The raw `Retry-After` value.
        value: String,
    },
}

/// Which `errors[0]` field of an error body carries an echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoField {
    /// `code`.
    Code,
    /// `title`.
    Title,
    /// `detail`.
    Detail,
    /// `traceId` (top level).
    TraceId,
}

/// How an echoed secret is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoEncoding {
    /// As received.
    Raw,
    /// JSON-escaped (a server quoting our body inside its message).
    Json,
    /// `application/x-www-form-urlencoded`.
    Url,
    /// Standard base64 of the secret alone.
    Base64,
    /// Base64 of `Authorization` header and body together, the secret somewhere inside.
    Base64Blob,
}

/// A running simulator. Dropping it (or [`Simulator::shutdown`]) stops the server.
#[derive(Debug)]
pub struct Simulator {
    shared: Arc<Shared>,
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` with an ephemeral port.
    pub async fn start(cfg: SimConfig) -> std::io::Result<Simulator> {
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a simulator on `addr`.
    pub async fn start_on(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(cfg, format!("http://{addr}")));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), cancel.clone()));
        Ok(Simulator {
            shared,
            addr,
            cancel,
            task: Some(task),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds a space (served by `GET /api/v1/spaces`), or replaces the one with its id.
    pub fn add_space(&self, space: spaces::SeedSpace) {
        let mut g = self.shared.lock();
        g.spaces.retain(|s| s.id != space.id);
        g.spaces.push(space);
    }

    /// Adds a connection; returns its qID.
    pub fn add_connection(&self, seed: SeedConnection) -> String {
        self.shared.lock().add_connection(seed)
    }

    /// The full stored connection including secret properties, `qPassword`, `qUsername` and
    /// `qConnectionSecret` (for test assertions only).
    pub fn stored(&self, id: &str) -> Option<Value> {
        self.shared.lock().stored(id)
    }

    /// Replaces the caller's privileges on a connection.
    pub fn set_privileges(&self, id: &str, privileges: Vec<String>) {
        self.shared.lock().set_privileges(id, privileges);
    }

    /// Sets the `qConnectionSecret` of a connection (returned as `"***"` by GET one).
    pub fn set_connection_secret(&self, id: &str, secret: Option<String>) {
        self.shared.lock().set_connection_secret(id, secret);
    }

    /// Links a connection to a data credential (`qCredentialsID`, counted in `qConnCount`).
    pub fn link_credential(&self, connection_id: &str, credential_id: &str) {
        self.shared
            .lock()
            .link_credential(connection_id, credential_id);
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.lock().requests()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.shared.lock().clear_requests();
    }

    /// Adds a data source behind connections (see [`reloads`]).
    pub fn add_source(&self, source: reloads::DataSource) {
        self.shared.lock().world.sources.push(source);
    }

    /// Replaces the credential sets the source named `name` accepts (a credential rotated
    /// at the source: from now on reloads through connections holding other values fail).
    pub fn set_source_accepts(&self, name: &str, accepts: Vec<Map<String, Value>>) {
        for s in &mut self.shared.lock().world.sources {
            if s.name == name {
                s.accepts.clone_from(&accepts);
            }
        }
    }

    /// Adds an app that reads through the given connections.
    pub fn add_app(&self, app: reloads::App) {
        self.shared.lock().world.apps.push(app);
    }

    /// How many GETs a reload answers `RELOADING` before its final status (`None`: it never
    /// finishes).
    pub fn set_reload_steps(&self, steps: Option<u32>) {
        self.shared.lock().world.steps = steps;
    }

    /// Forces the final status (and error fields) of the next queued reload.
    pub fn force_next_reload(&self, outcome: reloads::ForcedOutcome) {
        self.shared.lock().world.forced.push_back(outcome);
    }

    /// Queues a fault.
    pub fn inject(&self, fault: Fault) {
        self.shared.lock().faults.push_back(fault);
    }

    /// Number of `POST /oauth/token` requests received (successful or not).
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// Changes the Tier 2 limit.
    pub fn set_write_limit(&self, per_min: Option<u32>) {
        self.shared.lock().cfg.write_limit_per_min = per_min;
    }

    /// Changes the Tier 1 limit.
    pub fn set_read_limit(&self, per_min: Option<u32>) {
        self.shared.lock().cfg.read_limit_per_min = per_min;
    }

    /// Changes the latency added to every response.
    pub fn set_latency(&self, d: Duration) {
        self.shared.lock().cfg.latency = d;
    }

    /// Registers the body of `GET /api/v1/data-sources/{id}/api-specs`, in the shape Qlik
    /// documents (S11, qlik-api-facts.md §2.8): `{connectorProvider, connectorVersion,
    /// connectionProperties: {type: "object", properties: {name: {type, default?, enum?,
    /// description?}}}}` ([`api_specs`] builds one). PATCHes of connections with this
    /// `datasourceID` are then checked against its `properties`. The body is served as given,
    /// so tests can also serve hostile shapes.
    pub fn add_data_source_spec(&self, datasource_id: &str, spec: Value) {
        self.shared
            .lock()
            .specs
            .insert(datasource_id.to_owned(), spec);
    }

    /// Adds a data credential; returns its qID.
    pub fn add_credential(&self, seed: SeedCredential) -> String {
        self.shared.lock().add_credential(seed)
    }

    /// The full stored credential including `qUsername` and `qPassword` (for tests only).
    pub fn stored_credential(&self, id: &str) -> Option<Value> {
        self.shared.lock().stored_credential(id)
    }

    /// The largest number of accepted Tier-2 requests (writes and token requests) of one
    /// identity within any 60-second window so far.
    pub fn writes_in_window_max(&self) -> u32 {
        self.shared.lock().limiter.writes_in_window_max()
    }

    /// Total number of accepted Tier-2 requests so far.
    pub fn writes_total(&self) -> usize {
        self.shared.lock().limiter.writes_total()
    }

    /// The largest number of accepted Tier-1 requests (GETs) of one identity within any
    /// window so far.
    pub fn reads_in_window_max(&self) -> u32 {
        self.shared
            .lock()
            .limiter
            .accepted_in_window_max(limiter::Tier::Reads)
    }

    /// Total number of accepted Tier-1 requests so far.
    pub fn reads_total(&self) -> usize {
        self.shared
            .lock()
            .limiter
            .accepted_total(limiter::Tier::Reads)
    }

    /// How many requests of `tier` the rate limiter answered with 429 so far (injected
    /// [`Fault::RateLimited`] answers are not counted).
    pub fn rejected(&self, tier: limiter::Tier) -> u64 {
        self.shared.lock().limiter.rejected(tier)
    }

    /// Stops the server and closes all open connections.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => break,
            res = listener.accept() => res,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "simulator accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            // `kill` lets a handler close this TCP connection without answering (Fault::Drop):
            // dropping the connection future closes the socket.
            let kill = Arc::new(Notify::new());
            let handler_kill = kill.clone();
            let svc =
                service_fn(move |req| handlers::handle(shared.clone(), handler_kill.clone(), req));
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = kill.notified() => {}
                _ = cancel.cancelled() => {}
            }
        });
    }
}
