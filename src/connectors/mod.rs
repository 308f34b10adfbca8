//! Patch builders: pure functions from (connection as read, secret) to a credential-only JSON
//! Patch document plus what the verify GET must show.
//!
//! Nothing here does I/O. [`build`] refuses a connection of another connector type, writes
//! only the credential properties of the chosen scheme, and chooses `add` or `replace` by
//! whether the path exists in the GET. [`verify`] compares the GETs before and after.

pub mod catalogue;
pub mod specs;

use std::collections::BTreeMap;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use catalogue::{CATALOGUE, Connector, Const, Family, Prop, PropKind, Scheme};

use crate::{
    qlik::model::{DataConnection, FileEntry, OpKind, PatchDocument, PatchOp, PatchValue},
    secrets::{FieldsError, SecretValue},
};

/// One credential property a job writes (owned: catalogue entries and `generic` jobs alike).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PropSpec {
    /// Qlik property under `/connectionProperties/`.
    pub name: String,
    /// Key in the secret JSON.
    pub key: String,
    /// Encoding.
    pub kind: PropKind,
    /// Whether a missing key fails the job (else the property is left alone).
    pub required: bool,
    /// For file properties: the whole secret may be the file.
    pub whole_secret: bool,
}

/// How file credentials are stored in the vault.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FileEncoding {
    /// The secret holds the raw file content; the builder base64-encodes it.
    #[default]
    Raw,
    /// The secret already holds base64; it is checked and passed through.
    Base64,
}

/// How a connection with separate credentials (`qSeparateCredentials`) is rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeparateMode {
    /// PATCH the connection with the credentials plus `credentialsName` (Qlik's documented
    /// pattern; Qlik may create a new credential for the caller).
    Patch,
    /// `PUT /api/v1/data-credentials/{id}` with `qUsername`/`qPassword`.
    DataCredentials,
}

/// What a job asks a builder to do: resolved from the catalogue (or a `generic` job) at
/// config-validation time.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSpec {
    /// The `datasourceID` the connection must have.
    pub datasource: String,
    /// Scheme name (`generic` for generic jobs).
    pub scheme: String,
    /// Properties written, in order.
    pub props: Vec<PropSpec>,
    /// Fixed values written with them.
    pub constants: Vec<(String, Value)>,
    /// How file credentials are stored in the vault.
    pub file_encoding: FileEncoding,
    /// Overrides each file property's default file name.
    pub file_name: Option<String>,
    /// For header schemes: the `queryHeaders` entry to write.
    pub header: Option<String>,
    /// How separate-credential connections are handled (`None` = refused).
    pub separate: Option<SeparateMode>,
    /// `credentialsName` sent with [`SeparateMode::Patch`].
    pub credentials_name: Option<String>,
    /// With [`SeparateMode::DataCredentials`]: the credential's name (default: the
    /// connection's `qCredentialsID`).
    pub credential: Option<String>,
}

impl BuildSpec {
    /// The spec for a catalogue connector and scheme, with `[jobs.fields]` overrides.
    pub fn from_catalogue(
        connector: &Connector,
        scheme: &Scheme,
        fields: &BTreeMap<String, String>,
    ) -> BuildSpec {
        BuildSpec {
            datasource: connector.id.clone(),
            scheme: scheme.name.to_owned(),
            props: scheme
                .props
                .iter()
                .map(|p| PropSpec {
                    name: p.name.to_owned(),
                    key: fields
                        .get(p.name)
                        .cloned()
                        .unwrap_or_else(|| p.key.to_owned()),
                    kind: p.kind,
                    required: p.required,
                    whole_secret: p.whole_secret,
                })
                .collect(),
            constants: scheme
                .constants
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_json()))
                .collect(),
            file_encoding: FileEncoding::Raw,
            file_name: None,
            header: None,
            separate: None,
            credentials_name: None,
            credential: None,
        }
    }

    /// A `generic` job: text properties (and optional file properties) named in config.
    pub fn generic(
        datasource: &str,
        text_props: &[String],
        file_props: &[String],
        fields: &BTreeMap<String, String>,
    ) -> BuildSpec {
        let prop = |name: &String, kind: PropKind| PropSpec {
            name: name.clone(),
            key: fields.get(name).cloned().unwrap_or_else(|| name.clone()),
            kind,
            required: true,
            whole_secret: false,
        };
        BuildSpec {
            datasource: datasource.to_owned(),
            scheme: "generic".to_owned(),
            props: text_props
                .iter()
                .map(|n| prop(n, PropKind::Text))
                .chain(file_props.iter().map(|n| {
                    prop(
                        n,
                        PropKind::File {
                            default_name: "credential",
                        },
                    )
                }))
                .collect(),
            constants: Vec::new(),
            file_encoding: FileEncoding::Raw,
            file_name: None,
            header: None,
            separate: None,
            credentials_name: None,
            credential: None,
        }
    }

    /// What the job writes at the top level of `connectionProperties`, with the JSON type
    /// of each value, for the api-specs check.
    pub fn writes(&self) -> Vec<specs::Write> {
        let mut out: Vec<specs::Write> = Vec::new();
        for p in &self.props {
            let (name, json_type, role) = match p.kind {
                PropKind::Text => (p.name.clone(), "string", specs::WriteRole::Credential),
                PropKind::File { .. } => (p.name.clone(), "array", specs::WriteRole::Array),
                PropKind::Header => ("queryHeaders".to_owned(), "array", specs::WriteRole::Array),
            };
            if !out.iter().any(|w| w.name == name) {
                out.push(specs::Write {
                    name,
                    json_type,
                    role,
                });
            }
        }
        for (name, v) in &self.constants {
            out.push(specs::Write {
                name: name.clone(),
                json_type: json_type(v),
                role: specs::WriteRole::Constant(v.clone()),
            });
        }
        out
    }

    /// Whether this is a `generic` job (strict api-specs checks).
    pub fn is_generic(&self) -> bool {
        self.scheme == "generic"
    }
}

/// The api-specs type name of a JSON value.
pub fn json_type(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
        Value::Null => "null",
    }
}

/// Checks what a job writes against a connector's api-specs (Qlik's JSON Schema shape, see
/// [`specs`]): every written property must be declared; declared types must fit (strictly for
/// generic jobs and text credentials; a doubt about a catalogue file array or mode constant is
/// a warning). Messages name properties and types only.
///
/// # Errors
/// [`BuildError::SpecInvalid`] when the document is not in Qlik's published shape,
/// [`BuildError::SpecMismatch`] for refusals. `Ok` carries the warnings.
pub fn check_against_api_specs(
    spec: &BuildSpec,
    api_specs: &Value,
) -> Result<Vec<String>, BuildError> {
    let parsed = specs::ApiSpecs::parse(api_specs).map_err(|e| BuildError::SpecInvalid {
        datasource: spec.datasource.clone(),
        reason: e,
    })?;
    let checked = specs::check(&spec.datasource, &parsed, &spec.writes(), spec.is_generic());
    if checked.errors.is_empty() {
        Ok(checked.warnings)
    } else {
        Err(BuildError::SpecMismatch(checked.errors))
    }
}

/// Why no patch could be built. Messages name properties and keys, never values.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BuildError {
    /// The connection's `datasourceID` is not the job's connector.
    #[error(
        "connection {connection} is a {actual:?} connection, but the job says connector {expected:?}; nothing was sent"
    )]
    WrongConnector {
        /// Connection id.
        connection: String,
        /// The job's connector.
        expected: String,
        /// What GET returned.
        actual: String,
    },
    /// The secret has no value for a required property.
    #[error("the secret has no field {key:?} (needed for Qlik property {property:?})")]
    MissingField {
        /// Qlik property.
        property: String,
        /// Secret key looked for.
        key: String,
    },
    /// [`BuildError::MissingField`] with the key names the secret does have (names only,
    /// escaped and capped; never values), as the rotation reports it.
    #[error(
        "the secret has no field {key:?} (needed for Qlik property {property:?}); its keys are {present}: add {key:?} to the secret, or map a key with [jobs.fields] {property} = \"<key>\""
    )]
    MissingFieldOf {
        /// Qlik property.
        property: String,
        /// Secret key looked for.
        key: String,
        /// The secret's key names, quoted and escaped (`"a", "b"`, or `none`).
        present: String,
    },
    /// The secret has the field, but it is empty.
    #[error("the secret's field {key:?} (for Qlik property {property:?}) is empty")]
    EmptyField {
        /// Qlik property.
        property: String,
        /// Secret key.
        key: String,
    },
    /// The secret is not a JSON object of fields.
    #[error("{0}")]
    NotFields(FieldsError),
    /// A separate-credentials connection, and the job does not say how to rotate it.
    #[error(
        "connection {0} uses separate credentials (qSeparateCredentials); set separate_credentials = \"patch\" or \"data_credentials\" in the job"
    )]
    SeparateCredentials(String),
    /// The REST connection has no `queryHeaders` entry with the job's header name.
    #[error("connection {connection} has no queryHeaders entry named {header:?}; nothing was sent")]
    HeaderNotFound {
        /// Connection id.
        connection: String,
        /// Header name.
        header: String,
    },
    /// A value declared as base64 is not valid base64.
    #[error(
        "the secret's field {key:?} (for Qlik property {property:?}) is not valid base64 (file_encoding = \"base64\")"
    )]
    InvalidBase64 {
        /// Qlik property.
        property: String,
        /// Secret key.
        key: String,
    },
    /// A written property does not match the connector's api-specs.
    #[error("the patch does not match the connector's api-specs: {}; nothing was sent", .0.join("; "))]
    SpecMismatch(Vec<String>),
    /// The connector's api-specs are not in the shape Qlik publishes.
    #[error("the api-specs of {datasource:?} cannot be used: {reason}; nothing was sent")]
    SpecInvalid {
        /// The `datasourceID`.
        datasource: String,
        /// What is wrong with the document.
        reason: specs::SpecError,
    },
    /// A secret field holds a JSON value of the wrong type for its credential.
    #[error(
        "the secret's field {key:?} (for Qlik property {property:?}) is a JSON {found}, but the credential must be {want}; nothing was sent"
    )]
    WrongJsonType {
        /// Qlik property.
        property: String,
        /// Secret key.
        key: String,
        /// The JSON type found (never the value).
        found: &'static str,
        /// What the credential must be.
        want: &'static str,
    },
    /// A service-account key file credential is not a JSON object.
    #[error(
        "the secret's field {key:?} (for Qlik property {property:?}) is not a service-account key file: its content must be a JSON object; nothing was sent"
    )]
    NotKeyFile {
        /// Qlik property.
        property: String,
        /// Secret key.
        key: String,
    },
}

/// At most this many of a secret's key names are listed in a `missing_field` message.
const MAX_KEY_NAMES: usize = 20;

impl BuildError {
    /// For [`BuildError::MissingField`]: the same error listing the secret's key names
    /// (escaped, each capped at 64 characters, at most 20, then `and N more`). Any other error
    /// is returned as it is.
    pub fn with_key_names<'a>(self, keys: impl IntoIterator<Item = &'a str>) -> Self {
        let BuildError::MissingField { property, key } = self else {
            return self;
        };
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut shown: Vec<String> = keys
            .iter()
            .take(MAX_KEY_NAMES)
            .map(|k| crate::text::quoted(k, 64))
            .collect();
        if keys.len() > MAX_KEY_NAMES {
            shown.push(format!("and {} more", keys.len() - MAX_KEY_NAMES));
        }
        let present = if shown.is_empty() {
            "none".to_owned()
        } else {
            shown.join(", ")
        };
        BuildError::MissingFieldOf {
            property,
            key,
            present,
        }
    }

    /// A stable label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            BuildError::WrongConnector { .. } => "wrong_connector",
            BuildError::MissingField { .. } | BuildError::MissingFieldOf { .. } => "missing_field",
            BuildError::EmptyField { .. } => "empty_field",
            BuildError::NotFields(_) => "secret_not_json",
            BuildError::SeparateCredentials(_) => "separate_credentials",
            BuildError::HeaderNotFound { .. } => "header_not_found",
            BuildError::InvalidBase64 { .. } => "invalid_base64",
            BuildError::SpecMismatch(_) => "spec_mismatch",
            BuildError::SpecInvalid { .. } => "spec_invalid",
            BuildError::WrongJsonType { .. } | BuildError::NotKeyFile { .. } => "secret_invalid",
        }
    }
}

/// What the verify GET must show, without holding any secret value.
#[derive(Debug, Clone, Default)]
pub struct Expectation {
    /// Top-level `connectionProperties` names the patch writes (excluded from the
    /// "unchanged" comparison).
    pub written: Vec<String>,
    /// SHA-256 of each text credential, checked when the GET shows that property.
    pub digests: BTreeMap<String, [u8; 32]>,
    /// Expected file name of each file credential.
    pub file_names: BTreeMap<String, String>,
    /// Constants the scheme sets, which GET must show.
    pub constants: BTreeMap<String, Value>,
    /// Whether `qCredentialsID` may change (separate credentials patched by name).
    pub credentials_may_change: bool,
}

/// A built patch and its expectation.
#[derive(Debug)]
pub struct Plan {
    /// The credential-only JSON Patch document.
    pub doc: PatchDocument,
    /// What verification checks.
    pub expect: Expectation,
}

/// Builds the credential-only patch for `conn` from `secret`.
///
/// # Errors
/// [`BuildError`]; no patch is produced, so nothing is sent.
pub fn build(
    conn: &DataConnection,
    spec: &BuildSpec,
    secret: &SecretValue,
) -> Result<Plan, BuildError> {
    check_connection(conn, spec)?;
    let fields = secret.fields();
    let mut plan = Plan {
        doc: PatchDocument::default(),
        expect: Expectation::default(),
    };
    for prop in &spec.props {
        match prop.kind {
            PropKind::Text | PropKind::Header => text_prop(conn, spec, prop, &fields, &mut plan)?,
            PropKind::File { default_name } => {
                file_prop(conn, spec, prop, default_name, &fields, secret, &mut plan)?;
            }
        }
    }
    if plan.doc.ops.is_empty() {
        // Every property was optional and absent: refuse rather than send nothing useful.
        let first = spec.props.first().map(|p| (p.name.clone(), p.key.clone()));
        let (property, key) = first.unwrap_or_default();
        return Err(BuildError::MissingField { property, key });
    }
    constant_ops(conn, spec, &mut plan);
    credentials_name_op(conn, spec, &mut plan);
    Ok(plan)
}

/// The connection is of the job's connector, and a separate-credentials connection is only
/// patched when the job says so.
fn check_connection(conn: &DataConnection, spec: &BuildSpec) -> Result<(), BuildError> {
    if conn.datasource_id != spec.datasource {
        return Err(BuildError::WrongConnector {
            connection: conn.id.clone(),
            expected: spec.datasource.clone(),
            actual: conn.datasource_id.clone(),
        });
    }
    if conn.separate_credentials && spec.separate != Some(SeparateMode::Patch) {
        return Err(BuildError::SeparateCredentials(conn.id.clone()));
    }
    Ok(())
}

/// A text (or header token) credential: a JSON string field of the secret. A missing optional
/// field writes nothing.
fn text_prop(
    conn: &DataConnection,
    spec: &BuildSpec,
    prop: &PropSpec,
    fields: &Result<crate::secrets::SecretFields, FieldsError>,
    plan: &mut Plan,
) -> Result<(), BuildError> {
    let fields = fields
        .as_ref()
        .map_err(|e| BuildError::NotFields(e.clone()))?;
    let value = match fields.text(&prop.key) {
        Ok(Some(v)) => v,
        Ok(None) if prop.required => return Err(missing(prop)),
        Ok(None) => return Ok(()),
        Err(found) => {
            return Err(BuildError::WrongJsonType {
                property: prop.name.clone(),
                key: prop.key.clone(),
                found,
                want: "a JSON string",
            });
        }
    };
    if value.expose_secret().is_empty() {
        return Err(empty(prop));
    }
    if prop.kind == PropKind::Header {
        header_ops(conn, spec, value, &mut plan.doc)?;
        push_written(&mut plan.expect, "queryHeaders");
        return Ok(());
    }
    plan.expect
        .digests
        .insert(prop.name.clone(), digest(value.expose_secret().as_bytes()));
    plan.doc.ops.push(PatchOp {
        op: op_for(conn.properties.contains_key(&prop.name)),
        path: format!("/connectionProperties/{}", prop.name),
        value: PatchValue::Secret(value.clone()),
    });
    push_written(&mut plan.expect, &prop.name);
    Ok(())
}

/// A file credential: its content (a field, or the whole secret for a key file), encoded as
/// base64, written with its file name. A missing optional field writes nothing.
fn file_prop(
    conn: &DataConnection,
    spec: &BuildSpec,
    prop: &PropSpec,
    default_name: &str,
    fields: &Result<crate::secrets::SecretFields, FieldsError>,
    secret: &SecretValue,
    plan: &mut Plan,
) -> Result<(), BuildError> {
    let Some(content) = file_content(fields, prop, secret)? else {
        return if prop.required {
            Err(missing(prop))
        } else {
            Ok(())
        };
    };
    if content.expose_secret().is_empty() {
        return Err(empty(prop));
    }
    let b64 = file_base64(&content, spec.file_encoding, prop)?;
    if prop.whole_secret && !is_key_file(&content, spec.file_encoding) {
        return Err(BuildError::NotKeyFile {
            property: prop.name.clone(),
            key: prop.key.clone(),
        });
    }
    let file_name = spec
        .file_name
        .clone()
        .unwrap_or_else(|| default_name.to_owned());
    file_ops(conn, &prop.name, &file_name, b64, &mut plan.doc);
    plan.expect.file_names.insert(prop.name.clone(), file_name);
    push_written(&mut plan.expect, &prop.name);
    Ok(())
}

/// The base64 text Qlik stores for a file: encoded here (`raw`), or checked and passed
/// through (`base64`).
fn file_base64(
    content: &SecretBox<Vec<u8>>,
    encoding: FileEncoding,
    prop: &PropSpec,
) -> Result<SecretString, BuildError> {
    Ok(match encoding {
        FileEncoding::Raw => SecretString::from(
            base64::engine::general_purpose::STANDARD.encode(content.expose_secret()),
        ),
        FileEncoding::Base64 => {
            let text = std::str::from_utf8(content.expose_secret())
                .ok()
                .map(str::trim)
                .filter(|t| base64::engine::general_purpose::STANDARD.decode(t).is_ok())
                .ok_or_else(|| BuildError::InvalidBase64 {
                    property: prop.name.clone(),
                    key: prop.key.clone(),
                })?;
            SecretString::from(text.to_owned())
        }
    })
}

/// A file property: the first entry's `name` and `value` when the GET shows an entry, else
/// the whole one-file array.
fn file_ops(
    conn: &DataConnection,
    name: &str,
    file_name: &str,
    b64: SecretString,
    doc: &mut PatchDocument,
) {
    let base = format!("/connectionProperties/{name}");
    let first = conn
        .properties
        .get(name)
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_object);
    match first {
        Some(entry) => {
            doc.ops.push(PatchOp {
                op: op_for(entry.contains_key("name")),
                path: format!("{base}/0/name"),
                value: PatchValue::Plain(Value::String(file_name.to_owned())),
            });
            doc.ops.push(PatchOp {
                op: op_for(entry.contains_key("value")),
                path: format!("{base}/0/value"),
                value: PatchValue::Secret(b64),
            });
        }
        None => doc.ops.push(PatchOp {
            op: op_for(conn.properties.contains_key(name)),
            path: base,
            value: PatchValue::Files(vec![FileEntry {
                name: file_name.to_owned(),
                value: b64,
            }]),
        }),
    }
}

/// The scheme's fixed values, written where the GET shows another value.
fn constant_ops(conn: &DataConnection, spec: &BuildSpec, plan: &mut Plan) {
    for (name, value) in &spec.constants {
        if conn.properties.get(name) != Some(value) {
            plan.doc.ops.push(PatchOp {
                op: op_for(conn.properties.contains_key(name)),
                path: format!("/connectionProperties/{name}"),
                value: PatchValue::Plain(value.clone()),
            });
        }
        plan.expect.constants.insert(name.clone(), value.clone());
        push_written(&mut plan.expect, name);
    }
}

/// `credentialsName` with separate credentials patched by name (Qlik may then create a new
/// credential, so `qCredentialsID` may change).
fn credentials_name_op(conn: &DataConnection, spec: &BuildSpec, plan: &mut Plan) {
    if !(conn.separate_credentials && spec.separate == Some(SeparateMode::Patch)) {
        return;
    }
    let name = spec
        .credentials_name
        .clone()
        .unwrap_or_else(|| format!("qlik-rotator-{}", conn.id));
    plan.doc.ops.push(PatchOp {
        op: op_for(conn.properties.contains_key("credentialsName")),
        path: "/connectionProperties/credentialsName".to_owned(),
        value: PatchValue::Plain(Value::String(name)),
    });
    push_written(&mut plan.expect, "credentialsName");
    plan.expect.credentials_may_change = true;
}

fn missing(prop: &PropSpec) -> BuildError {
    BuildError::MissingField {
        property: prop.name.clone(),
        key: prop.key.clone(),
    }
}

fn empty(prop: &PropSpec) -> BuildError {
    BuildError::EmptyField {
        property: prop.name.clone(),
        key: prop.key.clone(),
    }
}

fn push_written(expect: &mut Expectation, name: &str) {
    if !expect.written.iter().any(|w| w == name) {
        expect.written.push(name.to_owned());
    }
}

/// REST header token: replace the `value` of the `queryHeaders` entry named `spec.header`, at
/// the index the GET shows, and make sure it is stored encrypted.
fn header_ops(
    conn: &DataConnection,
    spec: &BuildSpec,
    value: &SecretString,
    doc: &mut PatchDocument,
) -> Result<(), BuildError> {
    let header = spec.header.clone().unwrap_or_default();
    let not_found = || BuildError::HeaderNotFound {
        connection: conn.id.clone(),
        header: header.clone(),
    };
    let entries = conn
        .properties
        .get("queryHeaders")
        .and_then(Value::as_array)
        .ok_or_else(not_found)?;
    let (index, entry) = entries
        .iter()
        .enumerate()
        .find(|(_, e)| {
            e["name"]
                .as_str()
                .is_some_and(|n| n.eq_ignore_ascii_case(&header))
        })
        .ok_or_else(not_found)?;
    let base = format!("/connectionProperties/queryHeaders/{index}");
    doc.ops.push(PatchOp {
        op: op_for(entry.get("value").is_some()),
        path: format!("{base}/value"),
        value: PatchValue::Secret(value.clone()),
    });
    if entry.get("encrypt") != Some(&Value::Bool(true)) {
        doc.ops.push(PatchOp {
            op: op_for(entry.get("encrypt").is_some()),
            path: format!("{base}/encrypt"),
            value: PatchValue::Plain(Value::Bool(true)),
        });
    }
    Ok(())
}

fn op_for(exists: bool) -> OpKind {
    if exists { OpKind::Replace } else { OpKind::Add }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The raw content of a file credential: the field `prop.key`, or (for `whole_secret`
/// properties) the whole secret when it is itself a service-account key file.
fn file_content(
    fields: &Result<crate::secrets::SecretFields, FieldsError>,
    prop: &PropSpec,
    secret: &SecretValue,
) -> Result<Option<SecretBox<Vec<u8>>>, BuildError> {
    let f = fields
        .as_ref()
        .map_err(|e| BuildError::NotFields(e.clone()))?;
    let bytes = |v: &SecretString| SecretBox::new(Box::new(v.expose_secret().as_bytes().to_vec()));
    Ok(match f.text(&prop.key) {
        Ok(Some(v)) => Some(bytes(v)),
        // A service-account key file may sit in the secret as a nested JSON object.
        Err("object") if prop.whole_secret => f.object_json(&prop.key).map(bytes),
        Err(found) => {
            return Err(BuildError::WrongJsonType {
                property: prop.name.clone(),
                key: prop.key.clone(),
                found,
                want: if prop.whole_secret {
                    "a JSON string or object (a service-account key file)"
                } else {
                    "a JSON string"
                },
            });
        }
        Ok(None) if prop.whole_secret && looks_like_key_file(f) => Some(secret.raw_bytes()),
        Ok(None) => None,
    })
}

/// Whether a service-account key file's content (raw, or base64 with
/// `file_encoding = "base64"`) is a JSON object, as Google's key files are. Anything else
/// (a PEM key, a P12 file, text) is refused rather than base64'd and sent.
fn is_key_file(content: &SecretBox<Vec<u8>>, encoding: FileEncoding) -> bool {
    let decoded;
    let raw: &[u8] = match encoding {
        FileEncoding::Raw => content.expose_secret(),
        FileEncoding::Base64 => {
            let text = std::str::from_utf8(content.expose_secret()).unwrap_or_default();
            match base64::engine::general_purpose::STANDARD.decode(text.trim()) {
                Ok(d) => {
                    decoded = SecretBox::new(Box::new(d));
                    decoded.expose_secret()
                }
                Err(_) => return false,
            }
        }
    };
    serde_json::from_slice::<serde_json::Map<String, Value>>(raw).is_ok()
}

/// A service-account key file (`{"type": "service_account", "private_key": …}`) stored as the
/// whole secret.
fn looks_like_key_file(f: &crate::secrets::SecretFields) -> bool {
    f.get("private_key").is_some() && f.get("type").is_some()
}

/// One difference the verify step found. Names properties, never values.
pub type Mismatch = String;

/// What [`verify`] found: failures (the rotation is not verified) and warnings (rules we
/// cannot source; logged, counted and shown, but not failures).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verification {
    /// Firm differences.
    pub failures: Vec<Mismatch>,
    /// `(rule, message)`: `rule` is a bounded metric label (see [`VERIFY_WARNING_RULES`]).
    pub warnings: Vec<(&'static str, String)>,
}

/// Every `rule` label [`Verification::warnings`] can carry.
pub const VERIFY_WARNING_RULES: [&str; 3] = [
    "credentials_id_changed",
    "property_appeared",
    "constant_type",
];

/// Compares the GET after the PATCH with the GET before it. The caller has already checked
/// that both are the connection asked for (same `qID`).
///
/// Each rule, its confidence and its source are listed in README "How a rotation works":
/// - failures: `updated` missing, unparseable, equal or earlier after the PATCH (a 204 that
///   applied nothing); `datasourceID`, name, type, space or `qSeparateCredentials` changed; a
///   property the patch did not write changed or disappeared; a written credential the GET
///   shows holds another value; a file credential shows another file name; a constant shows
///   another value.
/// - warnings: `qCredentialsID` changed outside separate credentials; a property the patch did
///   not write appeared; a constant shows the same value as another JSON type (`"3"` vs `3`).
pub fn verify(
    before: &DataConnection,
    after: &DataConnection,
    expect: &Expectation,
) -> Verification {
    let mut out = Verification::default();
    identity_rules(before, after, &mut out.failures);
    untouched_properties(before, after, expect, &mut out);
    credential_digests(after, expect, &mut out.failures);
    file_names(after, expect, &mut out.failures);
    constants(after, expect, &mut out);
    if before.separate_credentials != after.separate_credentials {
        out.failures.push("qSeparateCredentials changed".to_owned());
    }
    if !expect.credentials_may_change
        && before.credentials_id.is_some()
        && before.credentials_id != after.credentials_id
    {
        out.warnings.push((
            "credentials_id_changed",
            "qCredentialsID changed although the connection does not use separate credentials"
                .to_owned(),
        ));
    }
    out
}

/// `updated` advanced; `datasourceID`, name, type and space are unchanged.
fn identity_rules(before: &DataConnection, after: &DataConnection, fail: &mut Vec<Mismatch>) {
    if let Some(m) = updated_rule(&before.updated, &after.updated, "") {
        fail.push(m);
    }
    if before.datasource_id != after.datasource_id {
        fail.push(format!(
            "datasourceID changed from {} to {}",
            specs::quoted(&before.datasource_id, 80),
            specs::quoted(&after.datasource_id, 80)
        ));
    }
    if before.name != after.name {
        fail.push("qName changed".to_owned());
    }
    if before.q_type != after.q_type {
        fail.push("qType changed".to_owned());
    }
    if before.space != after.space {
        fail.push("space changed".to_owned());
    }
}

/// Properties the patch did not write: a change or disappearance fails, an appearance warns.
fn untouched_properties(
    before: &DataConnection,
    after: &DataConnection,
    expect: &Expectation,
    out: &mut Verification,
) {
    let mut names: Vec<&String> = before
        .properties
        .keys()
        .chain(after.properties.keys())
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        if expect.written.iter().any(|w| w == name) {
            continue;
        }
        let shown = specs::quoted(name, 80);
        let fail = &mut out.failures;
        match (before.properties.get(name), after.properties.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => fail.push(format!("non-credential property {shown} changed")),
            (Some(_), None) => fail.push(format!("non-credential property {shown} disappeared")),
            (None, Some(_)) => out.warnings.push((
                "property_appeared",
                format!("property {shown} appeared after the PATCH"),
            )),
            (None, None) => {}
        }
    }
}

/// A written text credential the GET shows must hash to the new value (a masked display is
/// no evidence either way and is not compared).
fn credential_digests(after: &DataConnection, expect: &Expectation, fail: &mut Vec<Mismatch>) {
    for (name, want) in &expect.digests {
        if let Some(shown) = after.properties.get(name) {
            let shown = match shown {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            // A masked display (`***`, empty) is no evidence either way: not compared.
            if shown.chars().all(|c| c == '*') {
                continue;
            }
            if digest(shown.as_bytes()) != *want {
                fail.push(format!(
                    "credential property {name:?} does not show the new value"
                ));
            }
        }
    }
}

/// A written file credential the GET shows must carry the new file name.
fn file_names(after: &DataConnection, expect: &Expectation, fail: &mut Vec<Mismatch>) {
    for (name, want) in &expect.file_names {
        let shown = after
            .properties
            .get(name)
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(|e| e.get("name"))
            .and_then(Value::as_str);
        if let Some(shown) = shown
            && shown != want
        {
            fail.push(format!(
                "file credential {name:?} does not show the new file name"
            ));
        }
    }
}

/// The scheme's constants the GET shows: another value fails, the same value as another JSON
/// type warns.
fn constants(after: &DataConnection, expect: &Expectation, out: &mut Verification) {
    for (name, want) in &expect.constants {
        let Some(shown) = after.properties.get(name) else {
            continue;
        };
        if shown == want {
            continue;
        }
        if scalar_text(shown).is_some() && scalar_text(shown) == scalar_text(want) {
            out.warnings.push((
                "constant_type",
                format!(
                    "property {name:?} shows the scheme's value as a JSON {} instead of a JSON {}",
                    json_type(shown),
                    json_type(want)
                ),
            ));
        } else {
            out.failures.push(format!(
                "property {name:?} does not show the scheme's value"
            ));
        }
    }
}

/// A string, number or boolean as text (`"3"` and `3` give the same); `None` otherwise.
fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// The firm `updated` rule (S6: "Datetime when the connection was last updated"): after a
/// write answered 204, `updated` must be present, a valid RFC 3339 time, and strictly later
/// than before. `what` prefixes the message (`"credential "`).
pub fn updated_rule(before: &Option<String>, after: &Option<String>, what: &str) -> Option<String> {
    let Some(a) = parse_time(after) else {
        return Some(format!(
            "{what}updated is missing or not a valid timestamp after the write"
        ));
    };
    let b = parse_time(before)?;
    if a < b {
        Some(format!("{what}updated went backwards"))
    } else if a == b {
        Some(format!(
            "{what}updated did not advance: Qlik answered 204, but the change does not show (nothing recorded as applied)"
        ))
    } else {
        None
    }
}

/// Parses an RFC 3339 timestamp as Qlik returns it (`None` for missing or invalid).
pub fn parse_time(t: &Option<String>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    let t = t.as_deref()?;
    if t.len() > 64 {
        return None;
    }
    chrono::DateTime::parse_from_rfc3339(t).ok()
}

#[cfg(test)]
mod tests;
