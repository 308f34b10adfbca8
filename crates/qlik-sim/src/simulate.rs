//! The simulator as a standalone HTTP server (what `qlik-rotator simulate` runs, for trying a
//! configuration without a tenant and for the contract test that runs Qlik's official client
//! `@qlik/api` against it), and the tenant file format it serves.
//!
//! - The API key comes from `QLIK_SIM_API_KEY` (never printed). An OAuth client is accepted
//!   only when `QLIK_SIM_OAUTH_CLIENT_ID` and `QLIK_SIM_OAUTH_CLIENT_SECRET` are both set.
//! - The tenant is the demo tenant ([`demo_tenant`], the file `crates/qlik-sim/sim-tenant.json`)
//!   or a tenant file in the JSON format of [`Tenant`].
//! - It listens on loopback unless [`Options::allow_remote`] is set.
//! - Qlik's documented rate limits apply (Tier 1: 1000 reads, Tier 2: 100 writes per minute
//!   and identity; see `crates/qlik-sim/FIDELITY.md`).
//!
//! [`start`] checks everything before anything listens; the caller prints
//! [`Server::base_url`] and runs [`Server::serve`] until it wants the server to stop. Exit
//! codes, argument parsing and signals are the caller's (the product's `simulate` command).

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    io::Read as _,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::{SeedConnection, SeedCredential, SimConfig, Simulator};

/// Environment variable holding the API key clients must send as `Authorization: Bearer`.
pub const API_KEY_ENV: &str = "QLIK_SIM_API_KEY";
/// Optional OAuth client id accepted by `POST /oauth/token` (with [`OAUTH_SECRET_ENV`]).
pub const OAUTH_ID_ENV: &str = "QLIK_SIM_OAUTH_CLIENT_ID";
/// Optional OAuth client secret (with [`OAUTH_ID_ENV`]).
pub const OAUTH_SECRET_ENV: &str = "QLIK_SIM_OAUTH_CLIENT_SECRET";
/// Largest tenant file read. The demo tenant is ~4 KB; 4 MiB holds thousands of connections.
pub const MAX_TENANT_BYTES: u64 = 4 * 1024 * 1024;
/// Longest name, space, id or property name accepted in a tenant file.
const MAX_NAME_CHARS: usize = 256;
/// Qlik's documented Tier 1 (reads) limit per minute and identity (fact sheet §4, S19).
const TIER1_PER_MIN: u32 = 1000;
/// Qlik's documented Tier 2 (writes, token requests) limit per minute and identity.
const TIER2_PER_MIN: u32 = 100;
/// How often the simulator's request log (kept for in-process tests) is emptied, so a
/// long-running server does not keep every request body in memory.
const REQUEST_LOG_TTL: Duration = Duration::from_secs(60);

/// The demo tenant (connections with old credentials, api-specs in Qlik's documented JSON
/// Schema shape, a data credential): what `qlik-rotator demo` rotates, what the server serves
/// by default, and the example tenant file.
pub const DEMO_TENANT: &str = include_str!("../sim-tenant.json");

/// [`DEMO_TENANT`], parsed.
pub fn demo_tenant() -> Tenant {
    Tenant::from_slice(DEMO_TENANT.as_bytes()).expect("sim-tenant.json is a valid tenant")
}

/// What to serve, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Whether a non-loopback [`Options::listen`] is allowed.
    pub allow_remote: bool,
    /// A tenant file; `None` serves [`demo_tenant`].
    pub tenant: Option<PathBuf>,
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    /// No API key in the environment.
    #[error(
        "environment variable {API_KEY_ENV} is not set or empty: set it to the API key clients \
         must send (Authorization: Bearer <key>)"
    )]
    MissingApiKey,
    /// The API key cannot be sent in an HTTP header.
    #[error(
        "environment variable {API_KEY_ENV} contains whitespace or control characters, which \
         no client can send as a bearer token"
    )]
    BadApiKey,
    /// Only one of the two OAuth variables is set, or one is empty.
    #[error(
        "set both {OAUTH_ID_ENV} and {OAUTH_SECRET_ENV} (non-empty) to accept an OAuth client, \
         or neither"
    )]
    PartialOAuth,
    /// A non-loopback listen address without `--allow-remote`.
    #[error(
        "--listen {0} is not a loopback address: anyone who can reach it could use the \
         simulated tenant; pass --allow-remote to serve other hosts anyway"
    )]
    RemoteNotAllowed(SocketAddr),
    /// The tenant file is unreadable or invalid.
    #[error(transparent)]
    Tenant(#[from] TenantError),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// A listening server: print [`Server::base_url`], then [`Server::serve`].
pub struct Server {
    sim: Simulator,
    tenant: Tenant,
    label: String,
}

/// Validates the environment (`env` looks a variable up), the options and the tenant, then
/// listens.
///
/// # Errors
/// [`SimulateError`]; nothing listens when one is returned.
pub async fn start(
    opts: &Options,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Server, SimulateError> {
    let api_key = env(API_KEY_ENV)
        .filter(|k| !k.is_empty())
        .ok_or(SimulateError::MissingApiKey)?;
    if api_key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(SimulateError::BadApiKey);
    }
    let oauth_clients = match (env(OAUTH_ID_ENV), env(OAUTH_SECRET_ENV)) {
        (None, None) => Vec::new(),
        (Some(id), Some(secret)) if !id.is_empty() && !secret.is_empty() => vec![(id, secret)],
        _ => return Err(SimulateError::PartialOAuth),
    };
    if !opts.listen.ip().is_loopback() && !opts.allow_remote {
        return Err(SimulateError::RemoteNotAllowed(opts.listen));
    }
    let tenant = match &opts.tenant {
        Some(path) => Tenant::load(path)?,
        None => demo_tenant(),
    };
    let cfg = SimConfig {
        api_keys: vec![api_key],
        oauth_clients,
        read_limit_per_min: Some(TIER1_PER_MIN),
        write_limit_per_min: Some(TIER2_PER_MIN),
        ..SimConfig::default()
    };
    let sim = Simulator::start_on(cfg, opts.listen)
        .await
        .map_err(|source| SimulateError::Bind {
            addr: opts.listen,
            source,
        })?;
    tenant.install(&sim);
    let label = opts
        .tenant
        .as_deref()
        .map_or("demo".into(), |p| p.display().to_string());
    Ok(Server { sim, tenant, label })
}

impl Server {
    /// The URL clients use, e.g. `http://127.0.0.1:8080`.
    pub fn base_url(&self) -> String {
        self.sim.base_url()
    }

    /// The simulator behind the server (to inspect or inject faults in-process).
    pub fn simulator(&self) -> &Simulator {
        &self.sim
    }

    /// Serves until `shutdown` resolves, emptying the request log every minute, then stops.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) {
        tracing::info!(
            url = %self.sim.base_url(),
            connections = self.tenant.connections.len(),
            data_credentials = self.tenant.credentials.len(),
            api_specs = self.tenant.api_specs.len(),
            tenant = %self.label,
            "Simulated Qlik tenant listening; stop it with SIGTERM or Ctrl-C"
        );
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(REQUEST_LOG_TTL);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = tick.tick() => self.sim.clear_requests(),
            }
        }
        tracing::info!("Simulator stopped");
        self.sim.shutdown().await;
    }
}

// === Tenant ===

/// A simulated tenant: what the server serves. Loaded from the JSON format below, or
/// [`demo_tenant`].
///
/// ```json
/// {
///   "connections": [{
///     "qID": "0b6a7c6e-3f0e-4d8e-9a1b-5c2d3e4f5a61",   // UUID, unique
///     "qName": "Sales S3",                              // unique within its space
///     "space": "sales-space",                           // optional; absent or "" = personal
///     "datasourceID": "File_AmazonS3ConnectorV2",
///     "qType": "QvWebStorageProviderConnectorPackage.exe",  // optional
///     "connectionProperties": {"region": "eu-west-1", "accessKey": "…", "secretKey": "…"},
///     "privileges": ["list", "read", "update", "delete"],   // optional; @qlik/api Privilege
///     "qSeparateCredentials": false,                    // optional
///     "qCredentialsID": "…",                            // optional: a dataCredentials qID
///     "qConnectionSecret": "…"                          // optional
///   }],
///   "apiSpecs": {"File_AmazonS3ConnectorV2": {"connectorProvider": "…", "connectorVersion": "…",
///     "connectionProperties": {"type": "object", "properties": {"accessKey": {"type": "string"}}}}},
///   "dataCredentials": [{"qID": "…", "qName": "…", "datasourceID": "…", "qType": "…",
///                        "qUsername": "…", "qPassword": "…"}]
/// }
/// ```
///
/// Field names are those of Qlik's GET responses (`ConnectionGet`, `Credential`,
/// `ApiSpecResponse`), so a connection copied from a real GET needs few changes.
#[derive(Debug, Clone, Default)]
pub struct Tenant {
    /// Connections, secrets included.
    pub connections: Vec<TenantConnection>,
    /// `GET /api/v1/data-sources/{id}/api-specs` bodies by datasourceID.
    pub api_specs: BTreeMap<String, Value>,
    /// Data credentials (separated credentials).
    pub credentials: Vec<SeedCredential>,
    /// Data sources behind the connections (what a reload logs in to).
    pub sources: Vec<crate::reloads::DataSource>,
    /// Apps and the connections they read through (what a canary reloads).
    pub apps: Vec<crate::reloads::App>,
}

/// One connection of a [`Tenant`].
#[derive(Debug, Clone)]
pub struct TenantConnection {
    /// What the simulator stores.
    pub seed: SeedConnection,
    /// `qCredentialsID`: a data credential of the tenant.
    pub credentials_id: Option<String>,
    /// `qConnectionSecret` (GET one shows it masked).
    pub connection_secret: Option<String>,
}

/// Why a tenant file was refused. Messages name the file, the JSON path and the problem; the
/// only text from the file they quote is an unknown field name (escaped, capped), never a value.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    /// The file cannot be read.
    #[error("cannot read tenant file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`MAX_TENANT_BYTES`].
    #[error("tenant file {} is larger than {MAX_TENANT_BYTES} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// Not JSON, or not the tenant format (an unknown field, a wrong type).
    #[error("tenant file {}: {json_path}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where, e.g. `connections[2].qSeparateCredentials` (`.` for the whole document).
        json_path: String,
        /// What is wrong (values redacted).
        message: String,
    },
    /// Well-formed but inconsistent (bad ids, duplicates, unknown references); every problem.
    #[error("tenant file {} is invalid:{}", path.display(), list(problems))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Every problem with its JSON path.
        problems: Vec<TenantProblem>,
    },
}

/// One problem in a tenant file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantProblem {
    /// Where, e.g. `connections[0].qID`.
    pub json_path: String,
    /// What is wrong.
    pub message: String,
}

fn list(problems: &[TenantProblem]) -> String {
    problems
        .iter()
        .map(|p| format!("\n  {}: {}", p.json_path, p.message))
        .collect()
}

/// `@qlik/api` `Privilege` (data-connections.d.ts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Privilege {
    List,
    Update,
    Delete,
    Read,
    ChangeOwner,
    ChangeSpace,
}

impl Privilege {
    fn as_str(self) -> &'static str {
        match self {
            Privilege::List => "list",
            Privilege::Update => "update",
            Privilege::Delete => "delete",
            Privilege::Read => "read",
            Privilege::ChangeOwner => "change_owner",
            Privilege::ChangeSpace => "change_space",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    connections: Vec<RawConnection>,
    #[serde(default, rename = "apiSpecs")]
    api_specs: BTreeMap<String, RawApiSpec>,
    #[serde(default, rename = "dataCredentials")]
    data_credentials: Vec<RawCredential>,
    #[serde(default)]
    sources: Vec<crate::reloads::DataSource>,
    #[serde(default)]
    apps: Vec<crate::reloads::App>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    #[serde(rename = "qID")]
    id: String,
    #[serde(rename = "qName")]
    name: String,
    #[serde(default)]
    space: Option<String>,
    #[serde(rename = "datasourceID")]
    datasource_id: String,
    #[serde(default, rename = "qType")]
    q_type: Option<String>,
    #[serde(default, rename = "connectionProperties")]
    properties: Map<String, Value>,
    #[serde(default)]
    privileges: Option<Vec<Privilege>>,
    #[serde(default, rename = "qSeparateCredentials")]
    separate: bool,
    #[serde(default, rename = "qCredentialsID")]
    credentials_id: Option<String>,
    #[serde(default, rename = "qConnectionSecret")]
    connection_secret: Option<String>,
}

/// `ApiSpecResponse` (data-sources.d.ts) with `connectionProperties` in the JSON Schema shape
/// of Qlik's only published example (fact sheet §2.8, S11).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApiSpec {
    #[serde(rename = "connectorProvider")]
    connector_provider: String,
    #[serde(rename = "connectorVersion")]
    connector_version: String,
    #[serde(rename = "connectionProperties")]
    connection_properties: RawSchemaObject,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchemaObject {
    #[serde(rename = "type")]
    ty: ObjectType,
    properties: BTreeMap<String, RawPropertySchema>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    required: Option<Vec<String>>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ObjectType {
    Object,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPropertySchema {
    #[serde(rename = "type")]
    ty: SchemaType,
    #[serde(default, rename = "enum", skip_serializing_if = "Option::is_none")]
    enum_values: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    items: Option<Map<String, Value>>,
}

/// JSON Schema type names.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum SchemaType {
    String,
    Boolean,
    Integer,
    Number,
    Array,
    Object,
}

/// `Credential` (data-credentials.d.ts) plus the `CredentialCreate` secrets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCredential {
    #[serde(rename = "qID")]
    id: String,
    #[serde(rename = "qName")]
    name: String,
    #[serde(rename = "datasourceID")]
    datasource_id: String,
    #[serde(default, rename = "qType")]
    q_type: Option<String>,
    #[serde(rename = "qUsername")]
    username: String,
    #[serde(rename = "qPassword")]
    password: String,
}

impl Tenant {
    /// Reads and validates a tenant file.
    ///
    /// # Errors
    /// [`TenantError`] naming the JSON path of the (first syntax, or every semantic) problem.
    pub fn load(path: &Path) -> Result<Tenant, TenantError> {
        let read_err = |source| TenantError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut bytes = Vec::new();
        file.take(MAX_TENANT_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > MAX_TENANT_BYTES {
            return Err(TenantError::TooLarge {
                path: path.to_owned(),
            });
        }
        Tenant::from_slice(&bytes).map_err(|e| e.at(path))
    }

    /// Parses and validates tenant JSON (`path` in errors is empty; see [`Tenant::load`]).
    ///
    /// # Errors
    /// [`TenantError::Parse`] or [`TenantError::Invalid`].
    pub fn from_slice(bytes: &[u8]) -> Result<Tenant, TenantError> {
        let parse_err = |json_path: String, message: String| TenantError::Parse {
            path: PathBuf::new(),
            json_path,
            message,
        };
        let doc: Value = serde_json::from_slice(bytes)
            .map_err(|e| parse_err(".".to_owned(), redact_serde_message(&e)))?;
        // serde accepts an array for a struct (by position); the format has objects only.
        if let Some(json_path) = array_for_object(&doc) {
            return Err(parse_err(
                json_path,
                "invalid type: sequence, expected an object".to_owned(),
            ));
        }
        let raw: RawTenant = serde_path_to_error::deserialize(doc)
            .map_err(|e| parse_err(e.path().to_string(), redact_serde_message(e.inner())))?;
        raw.validate()
    }

    /// Seeds `sim` with this tenant.
    pub fn install(&self, sim: &Simulator) {
        for cred in &self.credentials {
            sim.add_credential(cred.clone());
        }
        for (id, spec) in &self.api_specs {
            sim.add_data_source_spec(id, spec.clone());
        }
        for c in &self.connections {
            let id = sim.add_connection(c.seed.clone());
            if let Some(cred) = &c.credentials_id {
                sim.link_credential(&id, cred);
            }
            if c.connection_secret.is_some() {
                sim.set_connection_secret(&id, c.connection_secret.clone());
            }
        }
        for s in &self.sources {
            sim.add_source(s.clone());
        }
        for a in &self.apps {
            sim.add_app(a.clone());
        }
    }
}

impl TenantError {
    fn at(self, file: &Path) -> TenantError {
        match self {
            TenantError::Parse {
                json_path, message, ..
            } => TenantError::Parse {
                path: file.to_owned(),
                json_path,
                message,
            },
            TenantError::Invalid { problems, .. } => TenantError::Invalid {
                path: file.to_owned(),
                problems,
            },
            other => other,
        }
    }
}

/// The JSON path of the first place where the format wants an object (a struct) but the
/// document has an array.
fn array_for_object(doc: &Value) -> Option<String> {
    let is_array = |v: &Value| v.is_array();
    if is_array(doc) {
        return Some(".".to_owned());
    }
    for list in ["connections", "dataCredentials"] {
        if let Some(Value::Array(items)) = doc.get(list)
            && let Some(i) = items.iter().position(is_array)
        {
            return Some(format!("{list}[{i}]"));
        }
    }
    if let Some(Value::Object(specs)) = doc.get("apiSpecs") {
        for (id, spec) in specs {
            let at = format!("apiSpecs.{}", printable(id, 64));
            if is_array(spec) {
                return Some(at);
            }
            let props = &spec["connectionProperties"];
            if is_array(props) {
                return Some(format!("{at}.connectionProperties"));
            }
            if let Some(Value::Object(m)) = props.get("properties") {
                for (name, schema) in m {
                    if is_array(schema) {
                        return Some(format!(
                            "{at}.connectionProperties.properties.{}",
                            printable(name, 64)
                        ));
                    }
                }
            }
        }
    }
    None
}

/// serde's message without any value from the file: `invalid type: string "hunter2",
/// expected a boolean` becomes `invalid type: string, expected a boolean`, and an unknown enum
/// value is not repeated. Unknown field names are kept (escaped, capped): they are keys.
fn redact_serde_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    // serde_json appends " at line L column C"; keep it (it is position, not content).
    let (body, position) = match text.rfind(" at line ") {
        Some(i) => text.split_at(i),
        None => (text.as_str(), ""),
    };
    let body = if let Some(rest) = body
        .strip_prefix("invalid type: ")
        .map(|r| ("invalid type", r))
        .or_else(|| {
            body.strip_prefix("invalid value: ")
                .map(|r| ("invalid value", r))
        }) {
        let (what, rest) = rest;
        // `<kind> <literal>, expected <exp>`: keep the kind (first word(s) before a literal)
        // and what was expected.
        let expected = rest.rfind(", expected ").map(|i| &rest[i..]).unwrap_or("");
        let kind: String = rest
            .split([' ', ','])
            .take_while(|w| {
                !w.is_empty()
                    && !w.starts_with(['"', '`', '\''])
                    && w.chars().all(char::is_alphabetic)
            })
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        format!("{what}: {kind}{expected}")
    } else if let Some(rest) = body.strip_prefix("unknown variant ") {
        // `unknown variant `<value>`, expected one of …`: the variant is a value.
        let expected = rest.rfind(", expected ").map(|i| &rest[i..]).unwrap_or("");
        format!("unknown variant{expected}")
    } else {
        body.to_owned()
    };
    format!("{}{}", printable(&body, 400), position)
}

/// `s` with control characters escaped, cut to `max` characters.
fn printable(s: &str, max: usize) -> String {
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i == max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Collects problems with their JSON paths.
#[derive(Default)]
struct Problems(Vec<TenantProblem>);

impl Problems {
    fn push(&mut self, json_path: impl Into<String>, message: impl Into<String>) {
        self.0.push(TenantProblem {
            json_path: json_path.into(),
            message: message.into(),
        });
    }

    /// A name-like string: non-empty, at most [`MAX_NAME_CHARS`], no control characters.
    fn name(&mut self, json_path: &str, value: &str) {
        if value.trim().is_empty() {
            self.push(json_path, "must not be empty");
        } else if value.chars().count() > MAX_NAME_CHARS {
            self.push(
                json_path,
                format!("must be at most {MAX_NAME_CHARS} characters"),
            );
        } else if value.chars().any(char::is_control) {
            self.push(json_path, "must not contain control characters");
        }
    }

    /// A UUID in the canonical hyphenated form Qlik uses for qIDs.
    fn uuid(&mut self, json_path: &str, value: &str) {
        if value.len() != 36 || uuid::Uuid::try_parse(value).is_err() {
            self.push(
                json_path,
                "must be a UUID such as 0b6a7c6e-3f0e-4d8e-9a1b-5c2d3e4f5a61 \
                 (GET by id answers 400 for anything else)",
            );
        }
    }

    /// A datasourceID: it becomes a URL path segment (`/data-sources/{id}/api-specs`).
    fn datasource(&mut self, json_path: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            self.push(
                json_path,
                "must be 1-128 characters of A-Z, a-z, 0-9, '_', '-', '.' (e.g. mssql, \
                 File_AmazonS3ConnectorV2)",
            );
        }
    }
}

impl RawTenant {
    /// Every problem of the tenant, or the tenant.
    fn validate(self) -> Result<Tenant, TenantError> {
        let mut p = Problems::default();
        let cred_ids = self.check_credentials(&mut p);
        self.check_connections(&mut p, &cred_ids);
        self.check_api_specs(&mut p);
        self.check_apps(&mut p);
        if !p.0.is_empty() {
            return Err(TenantError::Invalid {
                path: PathBuf::new(),
                problems: p.0,
            });
        }
        Ok(self.into_tenant())
    }

    /// Checks `dataCredentials`; returns their qIDs.
    fn check_credentials(&self, p: &mut Problems) -> HashSet<&str> {
        let mut cred_ids = HashSet::new();
        let mut cred_names = HashMap::new();
        for (i, c) in self.data_credentials.iter().enumerate() {
            let at = |f: &str| format!("dataCredentials[{i}].{f}");
            p.uuid(&at("qID"), &c.id);
            if !cred_ids.insert(c.id.as_str()) {
                p.push(
                    at("qID"),
                    "duplicate qID (already used by another credential)",
                );
            }
            p.name(&at("qName"), &c.name);
            if let Some(first) = cred_names.insert(c.name.as_str(), i) {
                p.push(
                    at("qName"),
                    format!(
                        "duplicate qName (also dataCredentials[{first}]): lookups by name \
                         would be ambiguous"
                    ),
                );
            }
            p.datasource(&at("datasourceID"), &c.datasource_id);
            if let Some(t) = &c.q_type {
                p.name(&at("qType"), t);
            }
        }
        cred_ids
    }

    /// Checks `connections` (`cred_ids`: the qIDs of `dataCredentials`).
    fn check_connections(&self, p: &mut Problems, cred_ids: &HashSet<&str>) {
        let mut conn_ids = HashMap::new();
        let mut names = HashMap::new();
        for (i, c) in self.connections.iter().enumerate() {
            let at = |f: &str| format!("connections[{i}].{f}");
            p.uuid(&at("qID"), &c.id);
            if let Some(first) = conn_ids.insert(c.id.as_str(), i) {
                p.push(
                    at("qID"),
                    format!("duplicate qID (also connections[{first}])"),
                );
            }
            p.name(&at("qName"), &c.name);
            let space = c.space.as_deref().unwrap_or("");
            if !space.is_empty() {
                p.name(&at("space"), space);
            }
            if let Some(first) = names.insert((c.name.as_str(), space), i) {
                p.push(
                    at("qName"),
                    format!(
                        "duplicate qName in the same space (also connections[{first}]); Qlik \
                         answers 409 to such a create"
                    ),
                );
            }
            p.datasource(&at("datasourceID"), &c.datasource_id);
            if let Some(t) = &c.q_type {
                p.name(&at("qType"), t);
            }
            for key in c.properties.keys() {
                p.name(&format!("connections[{i}].connectionProperties"), key);
            }
            if let Some(cred) = &c.credentials_id {
                p.uuid(&at("qCredentialsID"), cred);
                if !cred_ids.contains(cred.as_str()) {
                    p.push(
                        at("qCredentialsID"),
                        "does not name a qID of dataCredentials",
                    );
                }
            }
        }
    }

    /// Checks `apps` (UUID ids, each connection one of `connections`) and `sources` (names).
    fn check_apps(&self, p: &mut Problems) {
        let conns: HashSet<&str> = self.connections.iter().map(|c| c.id.as_str()).collect();
        for (i, a) in self.apps.iter().enumerate() {
            p.uuid(&format!("apps[{i}].id"), &a.id);
            p.name(&format!("apps[{i}].name"), &a.name);
            for (j, c) in a.connection_ids.iter().enumerate() {
                if !conns.contains(c.as_str()) {
                    p.push(
                        format!("apps[{i}].connectionIds[{j}]"),
                        "does not name a qID of connections",
                    );
                }
            }
        }
        for (i, s) in self.sources.iter().enumerate() {
            p.name(&format!("sources[{i}].name"), &s.name);
            p.name(&format!("sources[{i}].matchProperty"), &s.match_property);
        }
    }

    /// Checks the keys of `apiSpecs` and their property names.
    fn check_api_specs(&self, p: &mut Problems) {
        for (id, spec) in &self.api_specs {
            let at = format!("apiSpecs.{}", printable(id, 64));
            p.datasource(&at, id);
            for key in spec.connection_properties.properties.keys() {
                p.name(&format!("{at}.connectionProperties.properties"), key);
            }
        }
    }

    /// The validated tenant as the simulator seeds it.
    fn into_tenant(self) -> Tenant {
        let connections = self
            .connections
            .into_iter()
            .map(|c| {
                let mut seed = SeedConnection::new(c.name, c.datasource_id, Value::Null);
                seed.id = Some(c.id);
                seed.space = c.space.filter(|s| !s.is_empty());
                if let Some(t) = c.q_type {
                    seed.q_type = t;
                }
                seed.properties = c.properties;
                if let Some(privs) = c.privileges {
                    seed.privileges = privs.iter().map(|p| p.as_str().to_owned()).collect();
                }
                seed.separate_credentials = c.separate;
                TenantConnection {
                    seed,
                    credentials_id: c.credentials_id,
                    connection_secret: c.connection_secret,
                }
            })
            .collect();
        let credentials = self
            .data_credentials
            .into_iter()
            .map(|c| {
                let mut seed = SeedCredential::new(c.name, c.datasource_id, c.username, c.password);
                seed.id = Some(c.id);
                if let Some(t) = c.q_type {
                    seed.q_type = t;
                }
                seed
            })
            .collect();
        let api_specs = self
            .api_specs
            .into_iter()
            .map(|(id, spec)| {
                let v = serde_json::to_value(&spec).expect("a parsed spec serialises");
                (id, v)
            })
            .collect();
        Tenant {
            connections,
            api_specs,
            credentials,
            sources: self.sources,
            apps: self.apps,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> TenantError {
        Tenant::from_slice(text.as_bytes()).expect_err(text)
    }

    #[test]
    fn serde_messages_never_carry_values() {
        let e = parse_err(
            r#"{"connections":[{"qID":"x","qName":"n","datasourceID":"d","qSeparateCredentials":"CANARY-sep"}]}"#,
        );
        let text = e.to_string();
        assert!(!text.contains("CANARY"), "{text}");
        assert!(
            text.contains("connections[0].qSeparateCredentials"),
            "{text}"
        );
        assert!(
            text.contains("invalid type: string, expected a boolean"),
            "{text}"
        );
        let e = parse_err(
            r#"{"dataCredentials":[{"qID":"x","qName":"n","datasourceID":"d","qUsername":"u","qPassword":12345678}]}"#,
        );
        let text = e.to_string();
        assert!(!text.contains("12345678"), "{text}");
        assert!(text.contains("dataCredentials[0].qPassword"), "{text}");
    }

    #[test]
    fn the_demo_tenant_file_is_valid() {
        let t = demo_tenant();
        assert_eq!(t.connections.len(), 3);
        assert!(t.api_specs.contains_key("File_AmazonS3ConnectorV2"));
        // Served in the documented JSON Schema shape (S11).
        assert_eq!(
            t.api_specs["File_AmazonS3ConnectorV2"]["connectionProperties"]["properties"]["accessKey"]
                ["type"],
            "string"
        );
    }

    #[test]
    fn printable_escapes_and_caps() {
        assert_eq!(printable("a\u{1b}[31mb", 100), "a\\u{1b}[31mb");
        assert_eq!(printable("abcdef", 3), "abc…");
    }
}
