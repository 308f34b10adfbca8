//! Connection-property classification: which properties are credentials and how GET hides them
//! (fact sheet §6 and §7).

use serde_json::{Map, Value};

/// Scalar connection properties that hold secrets. They are never returned by GET.
pub const SECRET_SCALARS: &[&str] = &[
    "password",
    "secretKey",
    "accessKey",
    "P12CustomPwd",
    "privateKeyPassphrase",
    "adlsclientappkey",
    "s3AccessKey",
    "s3SecretKey",
    "mutualPfxCertificateKey",
    // Salesforce (`sfdc`) password and security token (Qlik PS Ansible collection).
    "SFpassword",
    "sftoken",
];

/// File-array connection properties (`[{name, value}]`) whose `value`s are secret. GET returns the
/// array with every element's `value` removed.
pub const SECRET_FILE_ARRAYS: &[&str] = &[
    "KeyFilePath",
    "serviceAccountKeyFile",
    "PRIV_KEY_FILE",
    "privateKey",
    "privateKeyFile",
    "jsonCredentials",
    "TrustedCerts",
    "mutualPfxCertificateFiles",
];

/// Credential identities: part of the credentials (a PATCH touching them supplies credentials),
/// but not secret, so GET shows them.
pub const CREDENTIAL_IDENTITIES: &[&str] = &[
    "username",
    "Email",
    "adlsclientappid",
    "adlstenantid",
    // Salesforce (`sfdc`) user name.
    "UserId",
];

/// Properties whose change requires credentials in the same PATCH (validation rule 3).
pub const ADDRESS_PROPS: &[&str] = &["host", "server", "url"];

/// Whether a PATCH touching `/connectionProperties/<name>...` counts as supplying credentials.
pub fn is_credential_prop(name: &str) -> bool {
    CREDENTIAL_IDENTITIES.contains(&name)
        || SECRET_SCALARS.contains(&name)
        || SECRET_FILE_ARRAYS.contains(&name)
}

/// The properties as returned by `GET ?parseConnection=true`: secrets removed.
pub fn sanitize(props: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in props {
        if SECRET_SCALARS.contains(&k.as_str()) {
            continue;
        }
        if SECRET_FILE_ARRAYS.contains(&k.as_str()) {
            if let Value::Array(items) = v {
                let items = items
                    .iter()
                    .map(|item| match item {
                        Value::Object(o) => {
                            let mut o = o.clone();
                            o.remove("value");
                            Value::Object(o)
                        }
                        _ => Value::Null,
                    })
                    .collect();
                out.insert(k.clone(), Value::Array(items));
            }
            continue;
        }
        if k == "queryHeaders"
            && let Value::Array(items) = v
        {
            let items = items
                .iter()
                .map(|item| match item {
                    Value::Object(o) if is_true(o.get("encrypt")) => {
                        let mut o = o.clone();
                        o.remove("value");
                        Value::Object(o)
                    }
                    other => other.clone(),
                })
                .collect();
            out.insert(k.clone(), Value::Array(items));
            continue;
        }
        out.insert(k.clone(), v.clone());
    }
    out
}

/// Interprets `true` and `"true"` as true.
pub fn is_true(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

/// Builds `CUSTOM CONNECT TO "provider=<qType>;sourceType=<datasourceID>;k=v;..."` from the
/// non-secret scalar properties (credentials, credential identities such as `username`, and
/// arrays/objects are left out).
pub fn connect_statement(q_type: &str, datasource_id: &str, props: &Map<String, Value>) -> String {
    let mut s = format!("CUSTOM CONNECT TO \"provider={q_type};sourceType={datasource_id};");
    for (k, v) in props {
        if is_credential_prop(k) {
            continue;
        }
        let text = match v {
            Value::String(t) => t.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => continue,
        };
        s.push_str(&format!("{k}={text};"));
    }
    s.push('"');
    s
}

/// Default `qType` for a data source id.
pub fn default_q_type(datasource_id: &str) -> &'static str {
    let lower = datasource_id.to_ascii_lowercase();
    if datasource_id.starts_with("DG_") {
        "QlikConnectorsCommonService.exe"
    } else if lower.contains("s3") || lower.contains("googlecloudstorage") || lower.contains("gcs")
    {
        "QvWebStorageProviderConnectorPackage.exe"
    } else if lower == "rest" {
        "QvRestConnector.exe"
    } else {
        "QvOdbcConnectorPackage.exe"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sanitize_hides_secrets_keeps_names() {
        let props = json!({
            "username": "u", "password": "p", "host": "h",
            "KeyFilePath": [{"name": "k.json", "value": "c2VjcmV0"}],
            "queryHeaders": [{"name": "A", "value": "tok", "encrypt": true},
                             {"name": "B", "value": "plain", "encrypt": false}]
        });
        let out = Value::Object(sanitize(props.as_object().unwrap()));
        assert_eq!(out["username"], "u");
        assert!(out.get("password").is_none());
        assert_eq!(out["KeyFilePath"], json!([{"name": "k.json"}]));
        assert_eq!(
            out["queryHeaders"][0],
            json!({"name": "A", "encrypt": true})
        );
        assert_eq!(out["queryHeaders"][1]["value"], "plain");
    }

    #[test]
    fn q_types_and_statement() {
        assert_eq!(
            default_q_type("File_AmazonS3ConnectorV2"),
            "QvWebStorageProviderConnectorPackage.exe"
        );
        assert_eq!(
            default_q_type("File_GoogleCloudStorageConnector"),
            "QvWebStorageProviderConnectorPackage.exe"
        );
        assert_eq!(default_q_type("rest"), "QvRestConnector.exe");
        assert_eq!(
            default_q_type("DG_mssql"),
            "QlikConnectorsCommonService.exe"
        );
        assert_eq!(default_q_type("mssql"), "QvOdbcConnectorPackage.exe");
        let props = json!({"host": "db", "port": 1433, "password": "p", "username": "u"});
        let s = connect_statement("X.exe", "mssql", props.as_object().unwrap());
        assert!(s.starts_with("CUSTOM CONNECT TO \"provider=X.exe;sourceType=mssql;"));
        assert!(s.contains("host=db;") && s.contains("port=1433;"));
        assert!(!s.contains("password") && !s.contains("username"));
    }
}
