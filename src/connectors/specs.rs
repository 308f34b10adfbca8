//! A connector's api-specs (`GET /api/v1/data-sources/{id}/api-specs`) as Qlik publishes them,
//! parsed once into a typed, bounded [`ApiSpecs`], and the check of a job's writes against it.
//!
//! # Shape (qlik-api-facts.md §2.8, source S11)
//!
//! Qlik's create-data-connections page shows the body as
//! `{connectorProvider, connectorVersion, connectionProperties: {type: "object", properties:
//! {<name>: {type, default?, enum?, description?}}}}`: `connectionProperties` is a JSON Schema
//! object and the property names sit one level down, under `properties`. The `@qlik/api` typing
//! is `connectionProperties: unknown`, so that example is the only published shape. No published
//! source for a "flat" form (names directly under `connectionProperties`) was found, so it is
//! refused as `spec_invalid` rather than guessed at.
//!
//! # Hostile input
//!
//! The body comes from the network: every string kept is escaped (control characters) and
//! capped, enums are capped, the number of properties is capped, a property whose name holds
//! control characters or is too long is ignored (and counted), and any other shape is a clear
//! [`SpecError`], never a panic.

use std::collections::BTreeMap;

use serde_json::Value;

/// Most properties one api-specs document may declare (real connectors have a few dozen).
pub const MAX_PROPERTIES: usize = 2_000;
/// Longest property name kept (longer names are ignored).
pub const MAX_NAME_CHARS: usize = 200;
/// Enum values kept per property (the count of all of them is kept too).
pub const MAX_ENUM_VALUES: usize = 32;
/// Characters kept of a description.
pub const MAX_DESCRIPTION_CHARS: usize = 300;
/// Characters kept of an enum value, a default, the provider and the version.
pub const MAX_VALUE_CHARS: usize = 80;

/// A JSON Schema type name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SchemaType {
    /// `string`.
    String,
    /// `boolean`.
    Boolean,
    /// `integer` (JSON numbers without a fraction).
    Integer,
    /// `number` (any JSON number; integers included).
    Number,
    /// `array`.
    Array,
    /// `object`.
    Object,
    /// `null`.
    Null,
}

impl SchemaType {
    fn parse(s: &str) -> Option<SchemaType> {
        Some(match s {
            "string" => SchemaType::String,
            "boolean" => SchemaType::Boolean,
            "integer" => SchemaType::Integer,
            "number" => SchemaType::Number,
            "array" => SchemaType::Array,
            "object" => SchemaType::Object,
            "null" => SchemaType::Null,
            _ => return None,
        })
    }

    /// The JSON Schema name.
    pub fn as_str(self) -> &'static str {
        match self {
            SchemaType::String => "string",
            SchemaType::Boolean => "boolean",
            SchemaType::Integer => "integer",
            SchemaType::Number => "number",
            SchemaType::Array => "array",
            SchemaType::Object => "object",
            SchemaType::Null => "null",
        }
    }

    /// Whether a value of JSON type `written` (a [`super::json_type`] name) is valid for this
    /// declared type (`number` accepts integers).
    pub fn accepts(self, written: &str) -> bool {
        self.as_str() == written || (self == SchemaType::Number && written == "integer")
    }
}

/// What a property declares as its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeclaredType {
    /// No `type` keyword: JSON Schema allows any value.
    Any,
    /// One or more JSON Schema types (`"string"` or `["string", "null"]`).
    Types(Vec<SchemaType>),
    /// A `type` we cannot read: an unknown name (kept, escaped and capped) or a non-string.
    Invalid(String),
}

impl DeclaredType {
    /// As shown to people: `string`, `string|null`, `any`, or `invalid (…)`.
    pub fn display(&self) -> String {
        match self {
            DeclaredType::Any => "any".to_owned(),
            DeclaredType::Types(t) => t.iter().map(|t| t.as_str()).collect::<Vec<_>>().join("|"),
            DeclaredType::Invalid(what) => format!("invalid ({what})"),
        }
    }

    /// Whether a written value of JSON type `written` fits.
    pub fn accepts(&self, written: &str) -> bool {
        match self {
            DeclaredType::Any => true,
            DeclaredType::Types(t) => t.iter().any(|t| t.accepts(written)),
            DeclaredType::Invalid(_) => false,
        }
    }
}

/// One declared connection property.
#[derive(Debug, Clone, PartialEq)]
pub struct PropertySpec {
    /// Its declared type.
    pub ty: DeclaredType,
    /// The first [`MAX_ENUM_VALUES`] enum values (as given), if the property has an enum.
    pub enum_values: Option<Vec<Value>>,
    /// How many enum values the document declared.
    pub enum_total: usize,
    /// The default, shown escaped and capped.
    pub default: Option<String>,
    /// The description, escaped and capped.
    pub description: Option<String>,
}

/// A connector's api-specs, parsed and bounded.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSpecs {
    /// `connectorProvider`, escaped and capped.
    pub provider: Option<String>,
    /// `connectorVersion`, escaped and capped.
    pub version: Option<String>,
    /// The declared properties by name.
    pub properties: BTreeMap<String, PropertySpec>,
    /// Property entries ignored (name with control characters or too long, or not an object).
    pub ignored: usize,
}

/// Why an api-specs document cannot be used. Names fields, never quotes the document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The body is not a JSON object.
    #[error("the api-specs body is not a JSON object")]
    NotObject,
    /// `connectionProperties` is missing or not an object.
    #[error("the api-specs have no connectionProperties object")]
    NoConnectionProperties,
    /// `connectionProperties.type` is present and not `"object"`.
    #[error("connectionProperties.type is not \"object\" (Qlik publishes a JSON Schema object)")]
    NotSchemaObject,
    /// `connectionProperties.properties` is missing or not an object (e.g. the flat form).
    #[error(
        "connectionProperties has no \"properties\" object (Qlik publishes JSON Schema: connectionProperties.properties.<name>.type)"
    )]
    NoProperties,
    /// More properties than [`MAX_PROPERTIES`].
    #[error("the api-specs declare {0} properties, more than the {MAX_PROPERTIES} accepted")]
    TooManyProperties(usize),
}

use crate::text::is_unsafe;
/// Outside text made safe to print (one escaping helper for the whole crate, in [`crate::text`]).
pub use crate::text::{printable, quoted};

fn shown_value(v: &Value) -> String {
    match v {
        Value::String(s) => printable(&format!("{s:?}"), MAX_VALUE_CHARS),
        other => printable(&other.to_string(), MAX_VALUE_CHARS),
    }
}

impl ApiSpecs {
    /// Parses the body of `GET …/api-specs`.
    ///
    /// # Errors
    /// [`SpecError`] when the document is not in Qlik's published shape.
    pub fn parse(body: &Value) -> Result<ApiSpecs, SpecError> {
        let top = body.as_object().ok_or(SpecError::NotObject)?;
        let cp = top
            .get("connectionProperties")
            .and_then(Value::as_object)
            .ok_or(SpecError::NoConnectionProperties)?;
        match cp.get("type") {
            None => {}
            Some(Value::String(t)) if t == "object" => {}
            Some(_) => return Err(SpecError::NotSchemaObject),
        }
        let props = cp
            .get("properties")
            .and_then(Value::as_object)
            .ok_or(SpecError::NoProperties)?;
        if props.len() > MAX_PROPERTIES {
            return Err(SpecError::TooManyProperties(props.len()));
        }
        let text = |v: Option<&Value>| {
            v.and_then(Value::as_str)
                .map(|s| printable(s, MAX_VALUE_CHARS))
        };
        let mut out = ApiSpecs {
            provider: text(top.get("connectorProvider")),
            version: text(top.get("connectorVersion")),
            properties: BTreeMap::new(),
            ignored: 0,
        };
        for (name, decl) in props {
            let bad_name = name.is_empty()
                || name.chars().count() > MAX_NAME_CHARS
                || name.chars().any(is_unsafe);
            let Some(decl) = decl.as_object().filter(|_| !bad_name) else {
                out.ignored += 1;
                continue;
            };
            let ty = match decl.get("type") {
                None => DeclaredType::Any,
                Some(Value::String(s)) => match SchemaType::parse(s) {
                    Some(t) => DeclaredType::Types(vec![t]),
                    None => DeclaredType::Invalid(printable(&format!("{s:?}"), MAX_VALUE_CHARS)),
                },
                Some(Value::Array(list)) if !list.is_empty() && list.len() <= 7 => {
                    let parsed: Option<Vec<SchemaType>> = list
                        .iter()
                        .map(|t| t.as_str().and_then(SchemaType::parse))
                        .collect();
                    match parsed {
                        Some(t) => DeclaredType::Types(t),
                        None => DeclaredType::Invalid("a list with unknown types".to_owned()),
                    }
                }
                Some(other) => DeclaredType::Invalid(format!("a JSON {}", super::json_type(other))),
            };
            let (enum_values, enum_total) = match decl.get("enum") {
                Some(Value::Array(values)) => (
                    Some(values.iter().take(MAX_ENUM_VALUES).cloned().collect()),
                    values.len(),
                ),
                _ => (None, 0),
            };
            out.properties.insert(
                name.clone(),
                PropertySpec {
                    ty,
                    enum_values,
                    enum_total,
                    default: decl.get("default").map(shown_value),
                    description: decl
                        .get("description")
                        .and_then(Value::as_str)
                        .map(|d| printable(d, MAX_DESCRIPTION_CHARS)),
                },
            );
        }
        Ok(out)
    }

    /// The enum of `name` as shown to people: `a, b, c (+12 more)`, or `None`.
    pub fn enum_display(&self, name: &str) -> Option<String> {
        let p = self.properties.get(name)?;
        let values = p.enum_values.as_ref()?;
        let mut shown: Vec<String> = values.iter().map(shown_value).collect();
        if p.enum_total > values.len() {
            shown.push(format!("(+{} more)", p.enum_total - values.len()));
        }
        Some(shown.join(", "))
    }
}

/// What the api-specs say about a job's writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpecCheck {
    /// Refusals (`spec_mismatch`): a property not declared, or (generic jobs, text
    /// credentials) a declared type that does not fit. Nothing is sent.
    pub errors: Vec<String>,
    /// Doubts that do not block (catalogue jobs only): a declared type or enum we cannot know
    /// to be right for a file array, a header array or a mode constant.
    pub warnings: Vec<String>,
}

/// What a job writes to one property, for the check.
#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    /// The top-level property under `connectionProperties`.
    pub name: String,
    /// The JSON type written (`string`, `array`, …).
    pub json_type: &'static str,
    /// What it is, for messages and for whether a type doubt is a warning.
    pub role: WriteRole,
}

/// The kind of value a job writes.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRole {
    /// A text credential from the vault (always a JSON string).
    Credential,
    /// A file array `[{name, value}]` or the REST `queryHeaders` array.
    Array,
    /// A fixed value of the scheme (an auth-mode selector); its value is not secret.
    Constant(Value),
}

/// Checks `writes` against `specs`. `strict` (generic jobs) turns every type doubt into an
/// error; otherwise (catalogue jobs) only text credentials are strict, and a type or enum that
/// does not fit an array or constant is a warning: Qlik publishes no declared type for
/// `KeyFilePath`, `PRIV_KEY_FILE`, `AuthMech`, `OAuthMechanism` or `authenticator`, and the
/// catalogue's values come from Qlik's examples.
pub fn check(datasource: &str, specs: &ApiSpecs, writes: &[Write], strict: bool) -> SpecCheck {
    let mut out = SpecCheck::default();
    for w in writes {
        let name = &w.name;
        let Some(decl) = specs.properties.get(name) else {
            out.errors.push(format!(
                "property {name:?} does not exist in the api-specs of {datasource:?}"
            ));
            continue;
        };
        let blocking = strict || w.role == WriteRole::Credential;
        if !decl.ty.accepts(w.json_type) {
            let msg = format!(
                "property {name:?} is declared as {:?} in the api-specs of {datasource:?}, but the job writes {:?}",
                decl.ty.display(),
                w.json_type
            );
            if blocking {
                out.errors.push(msg);
            } else {
                out.warnings.push(msg);
            }
            continue;
        }
        if let (WriteRole::Constant(value), Some(values)) = (&w.role, &decl.enum_values)
            && decl.enum_total <= values.len()
            && !values.contains(value)
        {
            let msg = format!(
                "property {name:?} has an enum in the api-specs of {datasource:?} that does not list the scheme's value {}",
                shown_value(value)
            );
            if strict {
                out.errors.push(msg);
            } else {
                out.warnings.push(msg);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn s3() -> Value {
        // Abridged from S11 (qlik-api-facts.md §2.8).
        json!({"connectorProvider": "QvWebStorageProviderConnectorPackage.exe",
               "connectorVersion": "4.46.0",
               "connectionProperties": {"type": "object", "properties": {
                 "region": {"type": "string", "default": "us-east-1",
                            "enum": ["af-south-1", "us-east-1"], "description": "Region."},
                 "bucketName": {"type": "string", "description": "Bucket."},
                 "separateCredentials": {"type": "boolean", "default": false},
                 "accessKey": {"type": "string", "description": "Amazon S3 access key."},
                 "secretKey": {"type": "string", "description": "Amazon S3 secret key."}}}})
    }

    fn write(name: &str, t: &'static str, role: WriteRole) -> Write {
        Write {
            name: name.to_owned(),
            json_type: t,
            role,
        }
    }

    #[test]
    fn the_documented_example_parses() {
        let s = ApiSpecs::parse(&s3()).unwrap();
        assert_eq!(
            s.provider.as_deref(),
            Some("QvWebStorageProviderConnectorPackage.exe")
        );
        assert_eq!(s.version.as_deref(), Some("4.46.0"));
        assert_eq!(
            s.properties.keys().collect::<Vec<_>>(),
            [
                "accessKey",
                "bucketName",
                "region",
                "secretKey",
                "separateCredentials"
            ]
        );
        let region = &s.properties["region"];
        assert_eq!(region.ty, DeclaredType::Types(vec![SchemaType::String]));
        assert_eq!(region.default.as_deref(), Some("\"us-east-1\""));
        assert_eq!(
            s.enum_display("region").as_deref(),
            Some("\"af-south-1\", \"us-east-1\"")
        );
        assert_eq!(
            s.properties["separateCredentials"].default.as_deref(),
            Some("false")
        );
        let c = check(
            "File_AmazonS3ConnectorV2",
            &s,
            &[
                write("accessKey", "string", WriteRole::Credential),
                write("secretKey", "string", WriteRole::Credential),
            ],
            false,
        );
        assert_eq!(c, SpecCheck::default());
    }

    #[test]
    fn the_flat_form_and_other_shapes_are_refused() {
        let flat = json!({"connectionProperties": {"accessKey": {"type": "string"}}});
        assert_eq!(ApiSpecs::parse(&flat), Err(SpecError::NoProperties));
        assert_eq!(ApiSpecs::parse(&json!([])), Err(SpecError::NotObject));
        assert_eq!(
            ApiSpecs::parse(&json!({"connectionProperties": []})),
            Err(SpecError::NoConnectionProperties)
        );
        assert_eq!(
            ApiSpecs::parse(&json!({"connectionProperties": {"type": "array", "properties": {}}})),
            Err(SpecError::NotSchemaObject)
        );
        assert_eq!(
            ApiSpecs::parse(
                &json!({"connectionProperties": {"type": "object", "properties": "x"}})
            ),
            Err(SpecError::NoProperties)
        );
    }

    #[test]
    fn types_numbers_lists_and_unknowns() {
        let s = ApiSpecs::parse(&json!({"connectionProperties": {"properties": {
            "port": {"type": "number"}, "n": {"type": ["string", "null"]},
            "odd": {"type": "password"}, "bad": {"type": 7}, "free": {}}}}))
        .unwrap();
        assert!(s.properties["port"].ty.accepts("integer"));
        assert!(!s.properties["port"].ty.accepts("string"));
        assert!(s.properties["n"].ty.accepts("string"));
        assert!(!s.properties["odd"].ty.accepts("string"));
        assert_eq!(s.properties["odd"].ty.display(), "invalid (\"password\")");
        assert_eq!(s.properties["bad"].ty.display(), "invalid (a JSON integer)");
        assert!(s.properties["free"].ty.accepts("array"));
    }

    #[test]
    fn hostile_names_descriptions_and_enums_are_bounded() {
        let long = "d".repeat(10_000);
        let values: Vec<Value> = (0..5000).map(|i| json!(format!("v{i}"))).collect();
        let s = ApiSpecs::parse(&json!({"connectorProvider": "p\u{1b}[31m\nforged",
            "connectionProperties": {"properties": {
            "bad\nname": {"type": "string"}, "x": "not an object", "rtl\u{202e}": {},
            &"n".repeat(500): {"type": "string"},
            "ok": {"type": "string", "description": format!("a\u{7}b\r\n{long}"), "enum": values}}}}))
        .unwrap();
        assert_eq!(s.properties.keys().collect::<Vec<_>>(), ["ok"]);
        assert_eq!(s.ignored, 4);
        assert!(!s.provider.as_deref().unwrap().contains(['\n', '\u{1b}']));
        let d = s.properties["ok"].description.clone().unwrap();
        assert!(d.starts_with("a\\u{7}b\\r\\n"), "{d}");
        assert!(d.chars().count() <= MAX_DESCRIPTION_CHARS + 20);
        assert_eq!(s.properties["ok"].enum_total, 5000);
        assert!(s.enum_display("ok").unwrap().ends_with("(+4968 more)"));
        let many: serde_json::Map<String, Value> = (0..MAX_PROPERTIES + 1)
            .map(|i| (format!("p{i}"), json!({"type": "string"})))
            .collect();
        assert_eq!(
            ApiSpecs::parse(&json!({"connectionProperties": {"properties": many}})),
            Err(SpecError::TooManyProperties(MAX_PROPERTIES + 1))
        );
    }

    #[test]
    fn catalogue_arrays_and_constants_warn_generic_jobs_fail() {
        let s = ApiSpecs::parse(&json!({"connectionProperties": {"properties": {
            "KeyFilePath": {"type": "string"},
            "OAuthMechanism": {"type": "integer", "enum": [0, 1]},
            "AuthMech": {"type": "string", "enum": ["1", "2"]},
            "password": {"type": "integer"}}}}))
        .unwrap();
        let writes = [
            write("KeyFilePath", "array", WriteRole::Array),
            write("OAuthMechanism", "string", WriteRole::Constant(json!("0"))),
            write("AuthMech", "string", WriteRole::Constant(json!("3"))),
        ];
        let c = check("gbq", &s, &writes, false);
        assert!(c.errors.is_empty(), "{c:?}");
        assert_eq!(c.warnings.len(), 3, "{c:?}");
        assert!(c.warnings[2].contains("does not list the scheme's value \"3\""));
        let c = check("gbq", &s, &writes, true);
        assert_eq!((c.errors.len(), c.warnings.len()), (3, 0));
        // A text credential is strict for catalogue jobs too.
        let c = check(
            "mssql",
            &s,
            &[write("password", "string", WriteRole::Credential)],
            false,
        );
        assert_eq!(c.errors.len(), 1);
    }

    #[test]
    fn printable_escapes_and_caps() {
        assert_eq!(printable("a\nb\u{1b}c", 100), "a\\nb\\u{1b}c");
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("a\u{202e}b", 9), "a\\u{202e}b");
        assert_eq!(quoted("a\nb\u{1b}", 100), "\"a\\nb\\u{1b}\"");
        assert_eq!(quoted("abcdef", 3), "\"abc\"…");
        assert!(
            !quoted("a\u{202e}\u{2066}b\u{2028}", 9).contains(['\u{202e}', '\u{2066}', '\u{2028}'])
        );
    }
}
