//! Patch builders: pure functions from (connection as read, secret) to a credential-only JSON
//! Patch document plus what the verify GET must show.
//!
//! Nothing here does I/O. [`build`] refuses a connection of another connector type, writes
//! only the credential properties of the chosen scheme, and chooses `add` or `replace` by
//! whether the path exists in the GET. [`verify`] compares the GETs before and after.

pub mod catalogue;

use std::collections::BTreeMap;

use base64::Engine as _;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use catalogue::{CATALOGUE, Connector, Family, Prop, PropKind, Scheme};

use crate::{
    qlik::model::{DataConnection, FileEntry, OpKind, PatchDocument, PatchOp, PatchValue},
    secrets::{FieldsError, SecretValue},
};

/// What a job asks a builder to do.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    /// The connector the job declares.
    pub connector: Connector,
    /// The credential scheme.
    pub scheme: &'static Scheme,
    /// Qlik property → secret key overrides (`[jobs.fields]`).
    pub fields: BTreeMap<String, String>,
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
    /// Separate-credential connections are rotated through data-credentials, not here.
    #[error(
        "connection {0} uses separate credentials (qSeparateCredentials); rotating those is not supported by this connector scheme"
    )]
    SeparateCredentials(String),
}

impl BuildError {
    /// A stable label for metrics.
    pub fn error_type(&self) -> &'static str {
        match self {
            BuildError::WrongConnector { .. } => "wrong_connector",
            BuildError::MissingField { .. } => "missing_field",
            BuildError::EmptyField { .. } => "empty_field",
            BuildError::NotFields(_) => "secret_not_json",
            BuildError::SeparateCredentials(_) => "separate_credentials",
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
    if conn.datasource_id != spec.connector.id {
        return Err(BuildError::WrongConnector {
            connection: conn.id.clone(),
            expected: spec.connector.id.clone(),
            actual: conn.datasource_id.clone(),
        });
    }
    if conn.separate_credentials {
        return Err(BuildError::SeparateCredentials(conn.id.clone()));
    }
    let fields = secret.fields();
    let mut doc = PatchDocument::default();
    let mut expect = Expectation::default();
    for prop in spec.scheme.props {
        let key = spec
            .fields
            .get(prop.name)
            .map(String::as_str)
            .unwrap_or(prop.key);
        let missing = || BuildError::MissingField {
            property: prop.name.to_owned(),
            key: key.to_owned(),
        };
        let base = format!("/connectionProperties/{}", prop.name);
        match prop.kind {
            PropKind::Text => {
                let fields = fields
                    .as_ref()
                    .map_err(|e| BuildError::NotFields(e.clone()))?;
                let Some(value) = fields.get(key) else {
                    if prop.required {
                        return Err(missing());
                    }
                    continue;
                };
                if value.expose_secret().is_empty() {
                    return Err(BuildError::EmptyField {
                        property: prop.name.to_owned(),
                        key: key.to_owned(),
                    });
                }
                expect.digests.insert(
                    prop.name.to_owned(),
                    digest(value.expose_secret().as_bytes()),
                );
                doc.ops.push(PatchOp {
                    op: op_for(conn.properties.contains_key(prop.name)),
                    path: base,
                    value: PatchValue::Secret(value.clone()),
                });
            }
            PropKind::File { default_name } => {
                let content = file_content(&fields, key, prop, secret)?.ok_or_else(missing)?;
                if content.expose_secret().is_empty() {
                    return Err(BuildError::EmptyField {
                        property: prop.name.to_owned(),
                        key: key.to_owned(),
                    });
                }
                let b64 = SecretString::from(
                    base64::engine::general_purpose::STANDARD.encode(content.expose_secret()),
                );
                let first = conn
                    .properties
                    .get(prop.name)
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_object);
                match first {
                    Some(entry) => {
                        doc.ops.push(PatchOp {
                            op: op_for(entry.contains_key("name")),
                            path: format!("{base}/0/name"),
                            value: PatchValue::Plain(Value::String(default_name.to_owned())),
                        });
                        doc.ops.push(PatchOp {
                            op: op_for(entry.contains_key("value")),
                            path: format!("{base}/0/value"),
                            value: PatchValue::Secret(b64),
                        });
                    }
                    None => doc.ops.push(PatchOp {
                        op: op_for(conn.properties.contains_key(prop.name)),
                        path: base,
                        value: PatchValue::Files(vec![FileEntry {
                            name: default_name.to_owned(),
                            value: b64,
                        }]),
                    }),
                }
                expect
                    .file_names
                    .insert(prop.name.to_owned(), default_name.to_owned());
            }
        }
        expect.written.push(prop.name.to_owned());
    }
    Ok(Plan { doc, expect })
}

fn op_for(exists: bool) -> OpKind {
    if exists { OpKind::Replace } else { OpKind::Add }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The raw content of a file credential: the field `key`, or (for `whole_secret` properties)
/// the whole secret when it is itself a service-account key file.
fn file_content(
    fields: &Result<crate::secrets::SecretFields, FieldsError>,
    key: &str,
    prop: &Prop,
    secret: &SecretValue,
) -> Result<Option<SecretBox<Vec<u8>>>, BuildError> {
    let f = fields
        .as_ref()
        .map_err(|e| BuildError::NotFields(e.clone()))?;
    Ok(match f.get(key) {
        Some(v) => Some(SecretBox::new(Box::new(
            v.expose_secret().as_bytes().to_vec(),
        ))),
        None if prop.whole_secret && looks_like_key_file(f) => Some(secret.raw_bytes()),
        None => None,
    })
}

/// A service-account key file (`{"type": "service_account", "private_key": …}`) stored as the
/// whole secret.
fn looks_like_key_file(f: &crate::secrets::SecretFields) -> bool {
    f.get("private_key").is_some() && f.get("type").is_some()
}

/// One difference the verify step found. Names properties, never values.
pub type Mismatch = String;

/// Compares the GET after the PATCH with the GET before it.
///
/// Checks: same `datasourceID`, name, type and space; every property the patch did not write
/// is unchanged; written credentials that GET does show equal the new values; file
/// credentials carry the new file name; `updated` has not gone backwards.
pub fn verify(
    before: &DataConnection,
    after: &DataConnection,
    expect: &Expectation,
) -> Vec<Mismatch> {
    let mut out = Vec::new();
    if before.datasource_id != after.datasource_id {
        out.push(format!(
            "datasourceID changed from {:?} to {:?}",
            before.datasource_id, after.datasource_id
        ));
    }
    if before.name != after.name {
        out.push("qName changed".to_owned());
    }
    if before.q_type != after.q_type {
        out.push("qType changed".to_owned());
    }
    if before.space != after.space {
        out.push("space changed".to_owned());
    }
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
        match (before.properties.get(name), after.properties.get(name)) {
            (Some(a), Some(b)) if a == b => {}
            (Some(_), Some(_)) => out.push(format!("non-credential property {name:?} changed")),
            (Some(_), None) => out.push(format!("non-credential property {name:?} disappeared")),
            (None, Some(_)) => out.push(format!("property {name:?} appeared")),
            (None, None) => {}
        }
    }
    for (name, want) in &expect.digests {
        if let Some(shown) = after.properties.get(name) {
            let shown = match shown {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if digest(shown.as_bytes()) != *want {
                out.push(format!(
                    "credential property {name:?} does not show the new value"
                ));
            }
        }
    }
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
            out.push(format!(
                "file credential {name:?} does not show the new file name"
            ));
        }
    }
    match (parse_time(&before.updated), parse_time(&after.updated)) {
        (Some(b), Some(a)) if a < b => out.push("updated went backwards".to_owned()),
        (Some(_), None) => out.push("updated is missing after the PATCH".to_owned()),
        _ => {}
    }
    out
}

fn parse_time(t: &Option<String>) -> Option<chrono::DateTime<chrono::FixedOffset>> {
    chrono::DateTime::parse_from_rfc3339(t.as_deref()?).ok()
}

#[cfg(test)]
mod tests;
