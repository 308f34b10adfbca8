//! The connector catalogue: one entry per connector family, with its credential properties.
//!
//! Adding a connector is one [`Family`] entry here plus one example connection per scheme in
//! `sim::examples`; the table-driven tests then snapshot its PATCH, rotate it end to end and
//! require README's table ([`markdown_table`]) to list it. Property names and encodings come
//! from `qlik-api-facts.md` §6; every `DG_<id>` gateway variant of a family marked
//! `gateway: true` is accepted with the same properties.
//!
//! **No public source, no entry.** Every family names the public source of its `datasourceID`s
//! and property names ([`Family::sources`]: a qlik.dev page with its fact-sheet id, or a
//! repository file at a commit); `qlik-rotator connectors` and README's table show them.
//! Connectors without one are rotated with `connector = "generic"` and the tenant's api-specs.

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

/// Where a public source lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cite {
    /// A documentation page; `sheet` is its id in `qlik-api-facts.md` §0 (e.g. `S12`).
    Page {
        /// Fact-sheet source id.
        sheet: &'static str,
        /// Page address.
        url: &'static str,
    },
    /// A file in a public repository, at a commit.
    Repo {
        /// `owner/name`.
        repo: &'static str,
        /// Path inside the repository.
        path: &'static str,
        /// Commit (abbreviated) the file was read at.
        commit: &'static str,
    },
}

/// A public source of a family's `datasourceID`s and property names.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    /// Where it is.
    pub cite: Cite,
    /// The schemes it covers; empty: every scheme of the family.
    pub schemes: &'static [&'static str],
}

impl Source {
    /// A documentation page listed in the fact sheet as `sheet`.
    pub const fn page(sheet: &'static str, url: &'static str) -> Source {
        Source {
            cite: Cite::Page { sheet, url },
            schemes: &[],
        }
    }

    /// A file of a public repository at `commit`.
    pub const fn repo(repo: &'static str, path: &'static str, commit: &'static str) -> Source {
        Source {
            cite: Cite::Repo { repo, path, commit },
            schemes: &[],
        }
    }

    /// The same source, covering only `schemes`.
    pub const fn only(self, schemes: &'static [&'static str]) -> Source {
        Source { schemes, ..self }
    }

    /// Whether it covers scheme `name`.
    pub fn covers(&self, name: &str) -> bool {
        self.schemes.is_empty() || self.schemes.contains(&name)
    }

    /// Plain text: `S12 https://…` or `owner/name path@commit`.
    pub fn text(&self) -> String {
        match self.cite {
            Cite::Page { sheet, url } => format!("{sheet} {url}"),
            Cite::Repo { repo, path, commit } => format!("{repo} {path}@{commit}"),
        }
    }

    /// Markdown: a link for pages, code spans for repository files.
    pub fn markdown(&self) -> String {
        match self.cite {
            Cite::Page { sheet, url } => format!("[{sheet}]({url})"),
            Cite::Repo { repo, path, commit } => format!("`{repo}` `{path}`@{commit}"),
        }
    }
}

/// qlik.dev "Data connection creation examples" (fact sheet S12).
const S12: Source = Source::page(
    "S12",
    "https://qlik.dev/manage/data-connections/examples/data-connection-create-examples/",
);

/// qlik.dev "Use interactive auth or separated credentials" (fact sheet S10): the
/// `File_AmazonS3Connector` examples.
const S10: Source = Source::page(
    "S10",
    "https://qlik.dev/manage/data-connections/auth-data-connections/",
);

/// Qlik Professional Services' Ansible collection for Qlik Cloud: the Salesforce (`sfdc`)
/// example of its `data_connection` module.
const QPS_ANSIBLE: Source = Source::repo(
    "QlikProfessionalServices/ansible-qlikcloud-collection",
    "plugins/modules/data_connection.py",
    "13547698",
);

/// A third-party Terraform provider for Qlik Cloud: `reptgt_qdisnowflake` with `username` and
/// `password`.
const TF_QLIK: Source = Source::repo(
    "daniepett/terraform-provider-qlik",
    "pkg/resources/data_connection.go",
    "2da98e62",
);

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
    /// Public sources of the ids and property names (at least one per scheme).
    pub sources: &'static [Source],
}

impl Family {
    /// The sources that cover scheme `name`.
    pub fn sources_for(&self, name: &str) -> Vec<&'static Source> {
        self.sources.iter().filter(|s| s.covers(name)).collect()
    }

    /// One line for `qlik-rotator connectors`: every source, scoped ones marked with their
    /// schemes.
    pub fn sources_text(&self) -> String {
        self.sources
            .iter()
            .map(|s| {
                if s.schemes.is_empty() {
                    s.text()
                } else {
                    format!("scheme {}: {}", s.schemes.join(", "), s.text())
                }
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
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

impl Prop {
    /// The same property read from secret key `key`.
    pub const fn key(self, key: &'static str) -> Prop {
        Prop { key, ..self }
    }

    /// The same property, optional (written only when the secret has the key).
    pub const fn optional(self) -> Prop {
        Prop {
            required: false,
            ..self
        }
    }

    /// The same file property; the whole secret may be the file when it is a
    /// service-account key file and has no field `key`.
    pub const fn whole_secret(self) -> Prop {
        Prop {
            whole_secret: true,
            ..self
        }
    }
}

/// A REST header token: the `value` of the `queryHeaders` entry named by the job's `header`.
pub const fn header(key: &'static str) -> Prop {
    Prop {
        name: "queryHeaders",
        key,
        kind: PropKind::Header,
        required: true,
        whole_secret: false,
    }
}

const USER_PASSWORD: &[Prop] = &[text("username"), text("password")];

/// The plain `username` + `password` scheme shared by most database connectors.
const PASSWORD: Scheme = Scheme {
    name: "password",
    props: USER_PASSWORD,
    constants: &[],
};

/// A Google service-account key file (JSON) in a file array: secret key `key_file`, or the
/// whole secret when it is the key file itself.
const fn service_account_file(name: &'static str) -> Prop {
    file(name, "key_file", "service-account.json").whole_secret()
}

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
        sources: &[S12, S10],
    },
    Family {
        title: "Google Cloud Storage",
        ids: &[
            "File_GoogleCloudStorageConnector",
            "GoogleCloudStorageConnector",
        ],
        gateway: false,
        schemes: &[Scheme {
            name: "service_account",
            props: &[service_account_file("serviceAccountKeyFile")],
            constants: &[],
        }],
        sources: &[S12],
    },
    Family {
        title: "Amazon Athena",
        ids: &["athena"],
        gateway: true,
        // AuthenticationType = IAM credentials: `username` holds the access key id and
        // `password` the secret access key.
        schemes: &[Scheme {
            name: "iam_credentials",
            props: USER_PASSWORD,
            constants: &[],
        }],
        sources: &[S12],
    },
    Family {
        title: "Databricks",
        ids: &["databricks"],
        gateway: true,
        schemes: &[Scheme {
            name: "password",
            props: &[
                text("username"),
                text("password"),
                file("TrustedCerts", "trusted_certs", "trusted-certs.pem").optional(),
            ],
            constants: &[("AuthMech", Const::Str("3"))],
        }],
        sources: &[S12],
    },
    Family {
        title: "Google BigQuery",
        ids: &["gbq"],
        gateway: true,
        schemes: &[Scheme {
            name: "service_account",
            props: &[
                file("KeyFilePath", "key_file", "service-account.json").whole_secret(),
                optional("Email").key("client_email"),
                optional("P12CustomPwd").key("p12_password"),
            ],
            constants: &[("OAuthMechanism", Const::Str("0"))],
        }],
        sources: &[S12],
    },
    Family {
        title: "Microsoft SQL Server",
        ids: &["mssql"],
        gateway: true,
        schemes: &[PASSWORD],
        sources: &[S12],
    },
    Family {
        title: "MySQL",
        ids: &["mysql"],
        gateway: true,
        schemes: &[PASSWORD],
        sources: &[S12],
    },
    Family {
        title: "Snowflake",
        ids: &["snowflake"],
        gateway: true,
        schemes: &[
            PASSWORD,
            Scheme {
                name: "key_pair",
                props: &[
                    text("username"),
                    file("PRIV_KEY_FILE", "private_key", "rsa_key.p8"),
                ],
                constants: &[("authenticator", Const::Str("snowflake_jwt"))],
            },
        ],
        sources: &[S12],
    },
    Family {
        title: "Teradata",
        ids: &["teradata"],
        gateway: true,
        schemes: &[PASSWORD],
        sources: &[S12],
    },
    Family {
        title: "REST",
        ids: &["rest"],
        gateway: false,
        schemes: &[
            Scheme {
                name: "basic",
                props: USER_PASSWORD,
                constants: &[("authSchema", Const::Str("basic"))],
            },
            Scheme {
                name: "header",
                props: &[header("token")],
                constants: &[],
            },
            Scheme {
                name: "mtls",
                props: &[
                    file("mutualPfxCertificateFiles", "pfx", "client.pfx"),
                    text("mutualPfxCertificateKey").key("pfx_password"),
                ],
                constants: &[],
            },
        ],
        sources: &[S12],
    },
    Family {
        title: "SFTP",
        ids: &["File_FileTransferConnector"],
        gateway: false,
        schemes: &[
            PASSWORD,
            Scheme {
                name: "private_key",
                props: &[
                    text("username"),
                    file("privateKey", "private_key", "id_rsa"),
                ],
                constants: &[],
            },
        ],
        sources: &[S12],
    },
    Family {
        title: "Salesforce",
        ids: &["sfdc"],
        gateway: false,
        // Salesforce resets the security token when the password changes, so the token is
        // required with the password.
        schemes: &[Scheme {
            name: "password",
            props: &[
                text("UserId").key("username"),
                text("SFpassword").key("password"),
                text("sftoken").key("security_token"),
            ],
            constants: &[("authenticator", Const::Str("salesforce"))],
        }],
        sources: &[QPS_ANSIBLE],
    },
    Family {
        title: "Data Integration databases",
        ids: &[
            "repsrc_mysql",
            "repsrc_mssql",
            "repsrc_postgresql",
            "repsrc_oracle",
            "reptgt_qdimysql",
            "reptgt_mssqltarget",
            "reptgt_qdipostgresql",
            "reptgt_qdioracle",
        ],
        gateway: false,
        schemes: &[PASSWORD],
        sources: &[S12],
    },
    Family {
        title: "Data Integration Snowflake target",
        ids: &["reptgt_qdisnowflake"],
        gateway: false,
        schemes: &[
            Scheme {
                name: "key_pair",
                props: &[
                    text("username"),
                    file("privateKeyFile", "private_key", "rsa_key.p8"),
                    optional("privateKeyPassphrase").key("private_key_passphrase"),
                ],
                constants: &[("authentication_mode", Const::Str("KEY_PAIR"))],
            },
            // No public source names the `authentication_mode` value of password mode, so this
            // scheme sets none: it rotates connections that already use a password.
            PASSWORD,
        ],
        sources: &[S12.only(&["key_pair"]), TF_QLIK.only(&["password"])],
    },
    Family {
        title: "Data Integration Databricks target",
        ids: &["reptgt_qdidatabricks"],
        gateway: false,
        // `password` holds a personal access token.
        schemes: &[Scheme {
            name: "token",
            props: &[text("password").key("token")],
            constants: &[("authenticationMode", Const::Str("PERSONAL_ACCESS_TOKEN"))],
        }],
        sources: &[S12],
    },
    Family {
        title: "Data Integration Google targets",
        ids: &["reptgt_qdibigquery", "reptgt_qdigooglecloudstorage"],
        gateway: false,
        schemes: &[Scheme {
            name: "service_account",
            props: &[service_account_file("jsonCredentials")],
            constants: &[],
        }],
        sources: &[S12],
    },
    Family {
        title: "Data Integration ADLS target",
        ids: &["reptgt_qdiadls"],
        gateway: false,
        schemes: &[Scheme {
            name: "client_secret",
            props: &[
                text("adlsclientappkey").key("client_secret"),
                optional("adlsclientappid").key("client_id"),
                optional("adlstenantid").key("tenant_id"),
            ],
            constants: &[],
        }],
        sources: &[S12],
    },
    Family {
        title: "Data Integration S3 target",
        ids: &["reptgt_qdis3"],
        gateway: false,
        schemes: &[Scheme {
            name: "access_key",
            props: &[
                text("s3AccessKey").key("accessKey"),
                text("s3SecretKey").key("secretKey"),
            ],
            constants: &[],
        }],
        sources: &[S12],
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

/// The catalogue as a Markdown table (one row per family and scheme), as embedded in
/// README.md between `<!-- connectors:begin -->` and `<!-- connectors:end -->`.
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| Connector IDs | Scheme | Qlik properties written | Secret keys (default) | Fixed values | Source |\n\
         |---|---|---|---|---|---|\n",
    );
    for family in CATALOGUE {
        let ids = family_cell(family);
        for (i, scheme) in family.schemes.iter().enumerate() {
            let name = if i == 0 && family.schemes.len() > 1 {
                format!("{} (default)", code(scheme.name))
            } else {
                code(scheme.name)
            };
            let props: Vec<String> = scheme.props.iter().map(prop_cell).collect();
            let keys: Vec<String> = scheme.props.iter().map(key_cell).collect();
            let fixed: Vec<String> = (scheme.constants.iter())
                .map(|(k, v)| code(&format!("{k} = {}", v.to_json())))
                .collect();
            let fixed = if fixed.is_empty() {
                "—".to_owned()
            } else {
                fixed.join(", ")
            };
            let sources: Vec<String> = (family.sources_for(scheme.name).iter())
                .map(|s| s.markdown())
                .collect();
            out.push_str(&format!(
                "| {ids} | {name} | {} | {} | {fixed} | {} |\n",
                props.join(", "),
                keys.join(", "),
                sources.join(", ")
            ));
        }
    }
    out
}

/// `s` as Markdown code.
fn code(s: &str) -> String {
    format!("`{s}`")
}

/// The first cell of a family's rows: its title and every id, gateway variants included.
fn family_cell(family: &Family) -> String {
    let mut ids = Vec::new();
    for id in family.ids {
        ids.push(code(id));
        if family.gateway {
            ids.push(code(&format!("DG_{id}")));
        }
    }
    format!("{}: {}", family.title, ids.join(", "))
}

/// A property written, with its notes (file, header value, optional).
fn prop_cell(p: &Prop) -> String {
    let mut notes = Vec::new();
    match p.kind {
        PropKind::Text => {}
        PropKind::File { default_name } => {
            notes.push(format!("file `{default_name}`, base64"));
        }
        PropKind::Header => notes.push("`value` of the job's `header` entry".into()),
    }
    if !p.required {
        notes.push("optional".into());
    }
    if notes.is_empty() {
        code(p.name)
    } else {
        format!("{} ({})", code(p.name), notes.join("; "))
    }
}

/// The secret key a property is read from.
fn key_cell(p: &Prop) -> String {
    if p.whole_secret {
        format!("{} or the whole secret (key file)", code(p.key))
    } else {
        code(p.key)
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
    fn every_scheme_has_a_public_source() {
        for family in CATALOGUE {
            assert!(!family.sources.is_empty(), "{}", family.title);
            for scheme in family.schemes {
                assert!(
                    !family.sources_for(scheme.name).is_empty(),
                    "{} / {} has no source",
                    family.title,
                    scheme.name
                );
            }
            for source in family.sources {
                for name in source.schemes {
                    assert!(
                        family.schemes.iter().any(|s| s.name == *name),
                        "{}: source scoped to unknown scheme {name}",
                        family.title
                    );
                }
                match source.cite {
                    Cite::Page { sheet, url } => {
                        assert!(sheet.starts_with('S'), "{sheet}");
                        assert!(url.starts_with("https://qlik.dev/"), "{url}");
                    }
                    Cite::Repo { repo, path, commit } => {
                        assert_eq!(repo.matches('/').count(), 1, "{repo}");
                        assert!(!path.is_empty() && !path.starts_with('/'), "{path}");
                        assert!(
                            commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit()),
                            "{commit}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn scoped_sources_cover_only_their_schemes() {
        let f = Connector::lookup("reptgt_qdisnowflake").unwrap().family;
        let text =
            |name: &str| -> Vec<String> { f.sources_for(name).iter().map(|s| s.text()).collect() };
        assert_eq!(
            text("key_pair"),
            [
                "S12 https://qlik.dev/manage/data-connections/examples/data-connection-create-examples/"
            ]
        );
        assert_eq!(
            text("password"),
            ["daniepett/terraform-provider-qlik pkg/resources/data_connection.go@2da98e62"]
        );
        assert!(text("oauth").is_empty());
        assert_eq!(
            f.sources_text(),
            "scheme key_pair: S12 https://qlik.dev/manage/data-connections/examples/data-connection-create-examples/; \
             scheme password: daniepett/terraform-provider-qlik pkg/resources/data_connection.go@2da98e62"
        );
        let sfdc = Connector::lookup("sfdc").unwrap().family;
        assert_eq!(
            sfdc.sources_text(),
            "QlikProfessionalServices/ansible-qlikcloud-collection plugins/modules/data_connection.py@13547698"
        );
        assert!(Connector::lookup("DG_sfdc").is_none());
    }

    #[test]
    fn ids_are_unique() {
        let ids = Connector::all_ids();
        let set: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(set.len(), ids.len());
    }
}
