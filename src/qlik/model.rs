//! Data transfer types of the Qlik data-connections API, and the JSON Patch document.
//!
//! [`DataConnection`] deliberately ignores `qConnectionSecret` and every other field the
//! rotator does not need, so a secret that Qlik might echo can never end up in a struct that
//! is logged. Its `Debug` prints property *names* only.

use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::text::Redactor;

/// A data connection as returned by `GET /api/v1/data-connections/{qID}?parseConnection=true`.
#[derive(Clone, Deserialize, Serialize, Default)]
pub struct DataConnection {
    /// `qID`, the connection id used for PATCH.
    #[serde(rename = "qID")]
    pub id: String,
    /// `id`: not in the schema, but Qlik's example responses carry it with the `qID` value
    /// (fact sheet §2.2); when present it must agree with `qID`.
    #[serde(rename = "id", default, skip_serializing_if = "Option::is_none")]
    pub id_field: Option<String>,
    /// `qName`.
    #[serde(rename = "qName", default)]
    pub name: String,
    /// `qType`, the provider executable.
    #[serde(rename = "qType", default)]
    pub q_type: String,
    /// `datasourceID`, the connector type.
    #[serde(rename = "datasourceID", default)]
    pub datasource_id: String,
    /// Space id, absent for personal connections.
    #[serde(default)]
    pub space: Option<String>,
    /// `qSeparateCredentials`.
    #[serde(rename = "qSeparateCredentials", default)]
    pub separate_credentials: bool,
    /// `qCredentialsID`.
    #[serde(rename = "qCredentialsID", default)]
    pub credentials_id: Option<String>,
    /// `connectionProperties` (present with `parseConnection=true`).
    #[serde(rename = "connectionProperties", default)]
    pub properties: Map<String, Value>,
    /// What the caller may do with the connection (`read`, `update`, …).
    #[serde(default)]
    pub privileges: Vec<String>,
    /// Last update time, ISO 8601.
    #[serde(default)]
    pub updated: Option<String>,
}

impl fmt::Debug for DataConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataConnection")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("datasource_id", &self.datasource_id)
            .field("space", &self.space)
            .field("separate_credentials", &self.separate_credentials)
            .field(
                "property_names",
                &self.properties.keys().collect::<Vec<_>>(),
            )
            .field("privileges", &self.privileges)
            .field("updated", &self.updated)
            .finish()
    }
}

impl DataConnection {
    /// Whether the caller holds `privilege` (e.g. `update`) on this connection.
    pub fn has_privilege(&self, privilege: &str) -> bool {
        self.privileges.iter().any(|p| p == privilege)
    }
}

/// A [`DataConnection`] kept between runs (the daemon's pre-flight or verify GET), stored as
/// compact JSON: a parsed connection costs ~2 KB of small allocations, its JSON a third of
/// that in one. The JSON is an array of [`DataConnection`]'s fields in declaration order,
/// without their names (a third smaller than the object: ~0.9 MiB less at 10,000 jobs).
/// Only the fields [`DataConnection`] reads are kept, and a GET never carries a secret, so
/// nothing here is sensitive.
#[derive(Clone, PartialEq, Eq)]
pub struct CachedConnection(Box<[u8]>);

/// [`DataConnection`]'s fields, in declaration order, as [`CachedConnection`] stores them.
type Stored = (
    String,
    Option<String>,
    String,
    String,
    String,
    Option<String>,
    bool,
    Option<String>,
    Map<String, Value>,
    Vec<String>,
    Option<String>,
);

impl CachedConnection {
    /// Stores `conn`.
    pub fn new(conn: &DataConnection) -> Self {
        let c = conn;
        let fields = (
            &c.id,
            &c.id_field,
            &c.name,
            &c.q_type,
            &c.datasource_id,
            &c.space,
            c.separate_credentials,
            &c.credentials_id,
            &c.properties,
            &c.privileges,
            &c.updated,
        );
        let bytes = serde_json::to_vec(&fields).expect("a DataConnection always serialises");
        CachedConnection(bytes.into_boxed_slice())
    }

    /// The stored connection.
    pub fn get(&self) -> DataConnection {
        let (
            id,
            id_field,
            name,
            q_type,
            datasource_id,
            space,
            separate_credentials,
            credentials_id,
            properties,
            privileges,
            updated,
        ): Stored = serde_json::from_slice(&self.0).expect("written by CachedConnection::new");
        DataConnection {
            id,
            id_field,
            name,
            q_type,
            datasource_id,
            space,
            separate_credentials,
            credentials_id,
            properties,
            privileges,
            updated,
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (a connection has at least its id).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for CachedConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CachedConnection")
            .field(&self.0.len())
            .finish()
    }
}

/// A separate credential as returned by `GET /api/v1/data-credentials/{id}` (metadata only).
#[derive(Debug, Clone, Deserialize, Default, PartialEq, Eq)]
pub struct DataCredential {
    /// `qID`.
    #[serde(rename = "qID")]
    pub id: String,
    /// `id`, if the response carries one (must agree with `qID`).
    #[serde(rename = "id", default)]
    pub id_field: Option<String>,
    /// `qName`.
    #[serde(rename = "qName", default)]
    pub name: String,
    /// `qType`.
    #[serde(rename = "qType", default)]
    pub q_type: String,
    /// `datasourceID`.
    #[serde(rename = "datasourceID", default)]
    pub datasource_id: String,
    /// Last update time.
    #[serde(default)]
    pub updated: Option<String>,
}

/// The body of `PUT /api/v1/data-credentials/{id}` (`CredentialCreate`). Never printable.
pub struct CredentialUpdate {
    /// `qID`.
    pub id: String,
    /// `qName` (kept as it is).
    pub name: String,
    /// `qType` (kept as it is).
    pub q_type: String,
    /// `datasourceID` (kept as it is).
    pub datasource_id: String,
    /// `qUsername`.
    pub username: SecretString,
    /// `qPassword`.
    pub password: SecretString,
}

impl fmt::Debug for CredentialUpdate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CredentialUpdate")
            .field("id", &self.id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl CredentialUpdate {
    /// The body with the username and password masked, for `plan`.
    pub fn masked(&self) -> Value {
        serde_json::json!({"qID": self.id, "qName": self.name, "qType": self.q_type,
            "datasourceID": self.datasource_id, "qUsername": MASK, "qPassword": MASK})
    }

    /// Serialises the real PUT body (the second and last place vault values are exposed).
    pub fn expose_body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"qID": self.id, "qName": self.name,
            "qType": self.q_type, "datasourceID": self.datasource_id,
            "qUsername": self.username.expose_secret(),
            "qPassword": self.password.expose_secret()}))
        .expect("a JSON value always serialises")
    }

    /// The username and password, in every form a server might echo them.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::new();
        r.add_secret(&self.username);
        r.add_secret(&self.password);
        r
    }

    /// Removes the username and password (in every echoed form) from `text`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact(text)
    }
}

/// One page of `GET /api/v1/data-connections`.
#[derive(Debug, Deserialize)]
pub struct ConnectionList {
    /// The connections on this page.
    #[serde(default)]
    pub data: Vec<DataConnection>,
    /// Paging links.
    #[serde(default)]
    pub links: Option<Links>,
}

/// One page of `GET /api/v1/spaces` (`@qlik/api` spaces typings, `Spaces`).
#[derive(Debug, Deserialize)]
pub struct SpaceList {
    /// The spaces on this page.
    #[serde(default)]
    pub data: Vec<Space>,
    /// Paging links.
    #[serde(default)]
    pub links: Option<Links>,
}

/// A space: only the fields the rotator uses (`@qlik/api` spaces typings, `Space`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Space {
    /// The space id, as data connections carry it in `space`.
    pub id: String,
    /// The name (unique per tenant, says Qlik; personal spaces have none).
    #[serde(default)]
    pub name: String,
    /// `shared`, `managed` or `data`.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

/// Paging links of a list response.
#[derive(Debug, Deserialize)]
pub struct Links {
    /// The next page, as a full URL.
    #[serde(default)]
    pub next: Option<Href>,
}

/// `{"href": "…"}`.
#[derive(Debug, Deserialize)]
pub struct Href {
    /// The URL.
    pub href: String,
}

/// An RFC 6902 operation name. Rotation only ever adds or replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    /// `add`: creates or overwrites an object member, inserts into an array.
    Add,
    /// `replace`: overwrites an existing value.
    Replace,
}

impl OpKind {
    /// The lowercase RFC 6902 name.
    pub fn as_str(self) -> &'static str {
        match self {
            OpKind::Add => "add",
            OpKind::Replace => "replace",
        }
    }
}

/// The value of a patch operation.
pub enum PatchValue {
    /// A credential taken from the vault. Serialised as a JSON string; never printable.
    Secret(SecretString),
    /// A non-secret value the builder chose (a file name, a constant such as an auth mode).
    /// Still masked in `plan` output.
    Plain(Value),
    /// An array of `{name, value}` file entries whose values are secret (base64 content).
    Files(Vec<FileEntry>),
}

/// One element of a Qlik file-array property (`[{name, value}]`).
pub struct FileEntry {
    /// File name shown in Qlik (not secret).
    pub name: String,
    /// Base64 file content (secret).
    pub value: SecretString,
}

impl fmt::Debug for PatchValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PatchValue::Secret(_) => f.write_str("Secret([REDACTED])"),
            PatchValue::Plain(_) => f.write_str("Plain([MASKED])"),
            PatchValue::Files(files) => write!(f, "Files({} x [REDACTED])", files.len()),
        }
    }
}

/// One JSON Patch operation.
#[derive(Debug)]
pub struct PatchOp {
    /// `add` or `replace`.
    pub op: OpKind,
    /// JSON Pointer, e.g. `/connectionProperties/password`.
    pub path: String,
    /// The new value.
    pub value: PatchValue,
}

/// The mask printed in place of every value by `plan`.
pub const MASK: &str = "********";

/// A JSON Patch document: the bare RFC 6902 array Qlik expects.
#[derive(Debug, Default)]
pub struct PatchDocument {
    /// The operations, in order.
    pub ops: Vec<PatchOp>,
}

impl PatchDocument {
    /// The document with every value replaced by [`MASK`] (file names stay visible only as
    /// masks too), for `plan` output and logs.
    pub fn masked(&self) -> Value {
        Value::Array(
            self.ops
                .iter()
                .map(|op| {
                    let value = match &op.value {
                        PatchValue::Files(files) => Value::Array(
                            files
                                .iter()
                                .map(|_| serde_json::json!({"name": MASK, "value": MASK}))
                                .collect(),
                        ),
                        _ => Value::String(MASK.to_owned()),
                    };
                    serde_json::json!({"op": op.op.as_str(), "path": op.path, "value": value})
                })
                .collect(),
        )
    }

    /// The paths the document writes, in order.
    pub fn paths(&self) -> Vec<&str> {
        self.ops.iter().map(|op| op.path.as_str()).collect()
    }

    /// Serialises the real PATCH body. **The only place where vault values are exposed.**
    pub fn expose_body(&self) -> Vec<u8> {
        let ops: Vec<Value> = self
            .ops
            .iter()
            .map(|op| {
                let value = match &op.value {
                    PatchValue::Secret(s) => Value::String(s.expose_secret().to_owned()),
                    PatchValue::Plain(v) => v.clone(),
                    PatchValue::Files(files) => Value::Array(
                        files
                            .iter()
                            .map(|f| {
                                serde_json::json!({"name": f.name, "value": f.value.expose_secret()})
                            })
                            .collect(),
                    ),
                };
                serde_json::json!({"op": op.op.as_str(), "path": op.path, "value": value})
            })
            .collect();
        serde_json::to_vec(&Value::Array(ops)).expect("a JSON value always serialises")
    }

    /// Every secret value of this document, in every form a server might echo it (raw,
    /// JSON-escaped, URL-encoded, base64). Outlives the document: the verify GET after the
    /// PATCH redacts with it too.
    pub fn redactor(&self) -> Redactor {
        let mut r = Redactor::new();
        for op in &self.ops {
            match &op.value {
                PatchValue::Secret(s) => r.add_secret(s),
                PatchValue::Files(files) => files.iter().for_each(|f| r.add_secret(&f.value)),
                PatchValue::Plain(_) => {}
            }
        }
        r
    }

    /// Removes every secret value of this document from `text` (e.g. an error detail a server
    /// echoed back), replacing it with `[REDACTED]`.
    pub fn redact(&self, text: &str) -> String {
        self.redactor().redact(text)
    }
}

/// How a job names its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionRef {
    /// By `qID`.
    Id(String),
    /// By name, optionally within a space; resolved once to the id.
    Name {
        /// `qName`.
        name: String,
        /// Space id.
        space: Option<String>,
    },
}

impl ConnectionRef {
    /// A stable key for state and reports: the id, or `space/name`.
    pub fn key(&self) -> String {
        match self {
            ConnectionRef::Id(id) => id.clone(),
            ConnectionRef::Name { name, space } => {
                format!("{}/{name}", space.as_deref().unwrap_or(""))
            }
        }
    }
}

impl ConnectionRef {
    /// What makes two references the same connection for duplicate checks: the id in lower
    /// case (UUIDs are case-insensitive), or the space and name as written.
    pub fn identity(&self) -> (Option<&str>, String) {
        match self {
            ConnectionRef::Id(id) => (None, id.to_ascii_lowercase()),
            ConnectionRef::Name { name, space } => {
                (Some(space.as_deref().unwrap_or("")), name.clone())
            }
        }
    }
}

impl fmt::Display for ConnectionRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionRef::Id(id) => write!(f, "id {id}"),
            ConnectionRef::Name { name, space: None } => write!(f, "name {name:?}"),
            ConnectionRef::Name {
                name,
                space: Some(s),
            } => write!(f, "name {name:?} in space {s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> PatchDocument {
        PatchDocument {
            ops: vec![
                PatchOp {
                    op: OpKind::Replace,
                    path: "/connectionProperties/username".into(),
                    value: PatchValue::Secret("CANARY-user".to_owned().into()),
                },
                PatchOp {
                    op: OpKind::Add,
                    path: "/connectionProperties/KeyFilePath".into(),
                    value: PatchValue::Files(vec![FileEntry {
                        name: "key.json".into(),
                        value: "Q0FOQVJZLWZpbGU=".to_owned().into(),
                    }]),
                },
            ],
        }
    }

    #[test]
    fn a_cached_connection_reads_back_as_the_same_connection() {
        let raw = serde_json::json!({
            "qID": "c1", "qName": "Sales", "qType": "QvOdbcConnectorPackage.exe",
            "datasourceID": "mssql", "space": "sp1", "qSeparateCredentials": false,
            "qCredentialsID": null, "privileges": ["read", "update"],
            "updated": "2026-11-23T10:00:00Z", "qConnectStatement": "CUSTOM CONNECT TO …",
            "connectionProperties": {"host": "h", "port": 1433, "username": "u",
                                     "KeyFilePath": [{"name": "k.json", "value": ""}]}
        });
        let conn: DataConnection = serde_json::from_value(raw).unwrap();
        let cached = CachedConnection::new(&conn);
        let back = cached.get();
        assert_eq!(
            serde_json::to_value(&back).unwrap(),
            serde_json::to_value(&conn).unwrap()
        );
        assert_eq!(back.properties["port"], 1433);
        assert!(back.has_privilege("update"));
        assert_eq!(back.space.as_deref(), Some("sp1"));
        // Fields the rotator never reads are not kept.
        assert!(!String::from_utf8_lossy(&cached.0).contains("qConnectStatement"));
        // Every field comes back (the comparison above covers the serialised ones; `id`
        // is skipped there when absent), and field names are not stored.
        let mut with_id = conn.clone();
        with_id.id_field = Some("c1".into());
        assert_eq!(
            CachedConnection::new(&with_id).get().id_field.as_deref(),
            Some("c1")
        );
        assert!(!String::from_utf8_lossy(&cached.0).contains("qName"));
        assert!(cached.len() < serde_json::to_vec(&conn).unwrap().len() * 3 / 4);
        assert!(format!("{cached:?}").starts_with("CachedConnection("));
    }

    #[test]
    fn body_is_a_bare_array_with_lowercase_value() {
        let body: Value = serde_json::from_slice(&doc().expose_body()).unwrap();
        assert_eq!(
            body,
            serde_json::json!([
                {"op":"replace","path":"/connectionProperties/username","value":"CANARY-user"},
                {"op":"add","path":"/connectionProperties/KeyFilePath",
                 "value":[{"name":"key.json","value":"Q0FOQVJZLWZpbGU="}]}
            ])
        );
    }

    #[test]
    fn masked_and_debug_hide_every_value() {
        let d = doc();
        let shown = format!("{} {:?}", d.masked(), d);
        assert!(!shown.contains("CANARY"), "{shown}");
        assert!(!shown.contains("Q0FOQVJZ"), "{shown}");
        assert!(shown.contains("/connectionProperties/username"));
    }

    #[test]
    fn redact_scrubs_echoed_secrets() {
        let d = doc();
        assert_eq!(
            d.redact("bad value CANARY-user for username"),
            "bad value [REDACTED] for username"
        );
    }

    #[test]
    fn connection_ignores_connection_secret_and_debug_hides_values() {
        let c: DataConnection = serde_json::from_value(serde_json::json!({
            "qID": "1", "qName": "n", "datasourceID": "mssql",
            "qConnectionSecret": "CANARY-cs",
            "connectionProperties": {"host": "CANARY-host"},
            "privileges": ["read", "update"]
        }))
        .unwrap();
        assert!(c.has_privilege("update"));
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("CANARY"), "{dbg}");
        assert!(dbg.contains("host"));
    }
}

/// A reload record, as `POST /api/v1/reloads` (201) and `GET /api/v1/reloads/{id}` (200)
/// answer it: `@qlik/api` `reloads.d.ts` type `Reload` (the fields read here; `status` is its
/// `Status` union, kept as text so an unknown value is seen and refused, not mis-parsed).
/// Reference: <https://qlik.dev/apis/rest/reloads/>. Every field is outside text: print it only
/// through [`crate::text`].
#[derive(Debug, Clone, Deserialize)]
pub struct Reload {
    /// The reload id (24 hex digits in Qlik's examples).
    pub id: String,
    /// The app reloaded.
    #[serde(rename = "appId")]
    pub app_id: String,
    /// `QUEUED | RELOADING | CANCELING` (active) or `SUCCEEDED | FAILED | CANCELED |
    /// EXCEEDED_LIMIT` (final).
    pub status: String,
    /// "The error code when the status is FAILED."
    #[serde(default, rename = "errorCode")]
    pub error_code: Option<String>,
    /// "The error message when the status is FAILED."
    #[serde(default, rename = "errorMessage")]
    pub error_message: Option<String>,
    /// "The log describing the result of the latest reload execution" (a summary since the
    /// 2026 change of qlik.dev changelog 167).
    #[serde(default)]
    pub log: Option<String>,
}
