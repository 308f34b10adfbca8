//! The connector catalogue: one entry per connector family, with its credential properties.
//!
//! Adding a connector is one [`Family`] entry here plus one snapshot test. Property names and
//! encodings come from `qlik-api-facts.md` §6; every `DG_<id>` gateway variant of a family
//! marked `gateway: true` is accepted with the same properties.

/// How a credential value is encoded in `connectionProperties`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropKind {
    /// A JSON string.
    Text,
    /// A file array `[{name, value}]`; the value is the file content in base64.
    File {
        /// The file name set in Qlik.
        default_name: &'static str,
    },
    /// The `value` of one entry of a REST `queryHeaders` array (`[{name, value, encrypt}]`),
    /// found by the job's `header` name at the index the GET shows; `encrypt` is set to true.
    Header,
}

/// A fixed, non-secret value a scheme sets alongside its credentials (e.g. Snowflake's
/// `authenticator = "snowflake_jwt"` for key-pair auth).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Const {
    /// A JSON string.
    Str(&'static str),
    /// A JSON boolean.
    Bool(bool),
}

impl Const {
    /// As JSON.
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Const::Str(s) => serde_json::Value::String(s.to_owned()),
            Const::Bool(b) => serde_json::Value::Bool(b),
        }
    }
}

/// One credential property a scheme writes.
#[derive(Debug, Clone, Copy)]
pub struct Prop {
    /// Qlik property name under `/connectionProperties/`.
    pub name: &'static str,
    /// Default key in the secret JSON (overridable with `[jobs.fields]`).
    pub key: &'static str,
    /// Encoding.
    pub kind: PropKind,
    /// When the key is missing: `true` fails the job, `false` leaves the property alone.
    pub required: bool,
    /// For file properties: the whole secret may be the file (e.g. a service-account JSON).
    pub whole_secret: bool,
}

/// A credential scheme: the properties one way of authenticating needs.
#[derive(Debug, Clone, Copy)]
pub struct Scheme {
    /// Scheme name used in config (`scheme = "…"`).
    pub name: &'static str,
    /// Properties written.
    pub props: &'static [Prop],
    /// Fixed values written with them (auth-mode selectors).
    pub constants: &'static [(&'static str, Const)],
}

/// A connector family: the `datasourceID`s that share credential properties.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    /// Human name, for listings.
    pub title: &'static str,
    /// The `datasourceID`s.
    pub ids: &'static [&'static str],
    /// Whether `DG_<id>` (Direct Access gateway) variants exist.
    pub gateway: bool,
    /// Schemes; the first is the default.
    pub schemes: &'static [Scheme],
}

/// A required text credential whose secret key is its own name.
pub const fn text(name: &'static str) -> Prop {
    Prop {
        name,
        key: name,
        kind: PropKind::Text,
        required: true,
        whole_secret: false,
    }
}

/// An optional text credential (written only when the secret has the key).
pub const fn optional(name: &'static str) -> Prop {
    Prop {
        required: false,
        ..text(name)
    }
}

/// A required file credential read from secret key `key`.
pub const fn file(name: &'static str, key: &'static str, default_name: &'static str) -> Prop {
    Prop {
        name,
        key,
        kind: PropKind::File { default_name },
        required: true,
        whole_secret: false,
    }
}

const USER_PASSWORD: &[Prop] = &[text("username"), text("password")];

/// Every connector the rotator knows.
pub const CATALOGUE: &[Family] = &[
    Family {
        title: "Amazon S3",
        ids: &[
            "File_AmazonS3ConnectorV2",
            "AmazonS3ConnectorV2",
            "File_AmazonS3Connector",
        ],
        gateway: false,
        schemes: &[Scheme {
            name: "access_key",
            props: &[text("accessKey"), text("secretKey")],
            constants: &[],
        }],
    },
    Family {
        title: "Microsoft SQL Server",
        ids: &["mssql"],
        gateway: true,
        schemes: &[Scheme {
            name: "password",
            props: USER_PASSWORD,
            constants: &[],
        }],
    },
    Family {
        title: "Google BigQuery",
        ids: &["gbq"],
        gateway: true,
        schemes: &[Scheme {
            name: "service_account",
            props: &[Prop {
                name: "KeyFilePath",
                key: "key_file",
                kind: PropKind::File {
                    default_name: "service-account.json",
                },
                required: true,
                whole_secret: true,
            }],
            constants: &[],
        }],
    },
];

/// A resolved catalogue entry for one `datasourceID`.
#[derive(Debug, Clone)]
pub struct Connector {
    /// The `datasourceID` as configured.
    pub id: String,
    /// Its family.
    pub family: &'static Family,
}

impl Connector {
    /// Looks a `datasourceID` up, including `DG_` gateway variants.
    pub fn lookup(datasource_id: &str) -> Option<Connector> {
        for family in CATALOGUE {
            for id in family.ids {
                if *id == datasource_id {
                    return Some(Connector {
                        id: datasource_id.to_owned(),
                        family,
                    });
                }
            }
            if family.gateway
                && let Some(base) = datasource_id.strip_prefix("DG_")
                && family.ids.contains(&base)
            {
                return Some(Connector {
                    id: datasource_id.to_owned(),
                    family,
                });
            }
        }
        None
    }

    /// The scheme named `name`, or the default scheme for `None`.
    pub fn scheme(&self, name: Option<&str>) -> Option<&'static Scheme> {
        match name {
            None => self.family.schemes.first(),
            Some(n) => self.family.schemes.iter().find(|s| s.name == n),
        }
    }

    /// Every `datasourceID` in the catalogue, gateway variants included.
    pub fn all_ids() -> Vec<String> {
        let mut out = Vec::new();
        for family in CATALOGUE {
            for id in family.ids {
                out.push((*id).to_owned());
                if family.gateway {
                    out.push(format!("DG_{id}"));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_finds_ids_and_gateway_variants() {
        assert_eq!(
            Connector::lookup("File_AmazonS3ConnectorV2")
                .unwrap()
                .family
                .title,
            "Amazon S3"
        );
        assert_eq!(Connector::lookup("DG_mssql").unwrap().id, "DG_mssql");
        assert_eq!(
            Connector::lookup("DG_gbq").unwrap().family.title,
            "Google BigQuery"
        );
        assert!(Connector::lookup("DG_File_AmazonS3ConnectorV2").is_none());
        assert!(Connector::lookup("foo").is_none());
    }

    #[test]
    fn ids_are_unique() {
        let ids = Connector::all_ids();
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
    }
}
