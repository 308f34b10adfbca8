//! Example connections for every catalogue connector and scheme (fact sheet §6): realistic
//! stored `connectionProperties` holding *old* credentials, plus a vault secret with *new*
//! ones. Shared by the patch-builder snapshots and the end-to-end catalogue tests.

use base64::Engine as _;
use serde_json::{Value, json};

/// One example: what the simulator stores, and the secret that rotates it.
#[derive(Debug, Clone)]
pub struct Example {
    /// Stored `connectionProperties`, old credentials included (GET hides the secret ones).
    pub properties: Value,
    /// The new secret (a JSON object, or a whole service-account key file).
    pub secret: Value,
    /// Whether the secret's file fields are already base64 (`file_encoding = "base64"`).
    pub file_base64: bool,
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A Google service-account key file (whole secret) for `project`.
pub fn service_account(project: &str, key: &str) -> Value {
    json!({
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0f1e2d3c4b5a",
        "private_key": format!("-----BEGIN PRIVATE KEY-----\n{key}\n-----END PRIVATE KEY-----\n"),
        "client_email": format!("qlik-reader@{project}.iam.gserviceaccount.com"),
    })
}

const PKCS8_NEW: &str =
    "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqNEW\n-----END PRIVATE KEY-----\n";

/// Stored properties, new secret, and whether the secret's files are already base64.
type Parts = (Value, Value, bool);

/// The example for `datasource_id` (a `DG_` variant adds `gatewayInstance`) and `scheme`.
pub fn example(datasource_id: &str, scheme: &str) -> Option<Example> {
    let (base, gateway) = match datasource_id.strip_prefix("DG_") {
        Some(base) => (base, true),
        None => (datasource_id, false),
    };
    let (properties, secret, file_base64) = file_stores(base, scheme)
        .or_else(|| warehouses(base, scheme))
        .or_else(|| databases(base, scheme))
        .or_else(|| web_apis(base, scheme))
        .or_else(|| replicate_databases(base, scheme))
        .or_else(|| replicate_cloud(base, scheme))?;
    let mut properties = properties;
    if gateway {
        properties["gatewayInstance"] = json!("7c1e4b2a-gateway-eu");
    }
    Some(Example {
        properties,
        secret,
        file_base64,
    })
}

/// Stored properties with `username`/`password` set to old values, and a secret with new ones.
fn user_password(other: Value, user: &str) -> (Value, Value) {
    let mut p = other;
    p["username"] = json!(format!("{user}_old"));
    p["password"] = json!("old-P@ss");
    (
        p,
        json!({"username": format!("{user}_2026"), "password": "N3w-P@ss/2026"}),
    )
}

/// Object stores and file transfer: Amazon S3, Google Cloud Storage, SFTP.
fn file_stores(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        (
            "File_AmazonS3ConnectorV2" | "AmazonS3ConnectorV2" | "File_AmazonS3Connector",
            "access_key",
        ) => (
            json!({"region": "eu-west-1", "bucketName": "sales-data", "storeSseHeader": false,
                   "accessKey": "AKIAOLDOLDOLDOLD", "secretKey": "old/secret"}),
            json!({"accessKey": "AKIANEWNEWNEWNEW", "secretKey": "new/secret+2026"}),
            false,
        ),
        ("File_GoogleCloudStorageConnector" | "GoogleCloudStorageConnector", "service_account") => {
            (
                json!({"bucketName": "acme-exports",
                   "serviceAccountKeyFile": [{"name": "old-key.json", "value": b64("{\"old\":1}")}]}),
                service_account("acme-exports", "MIIEgcs"),
                false,
            )
        }
        ("File_FileTransferConnector", "password") => {
            let (p, s) = user_password(
                json!({"host": "sftp.acme.example", "sftpPort": 22}),
                "exports",
            );
            (p, s, false)
        }
        ("File_FileTransferConnector", "private_key") => (
            json!({"host": "sftp.acme.example", "sftpPort": 22, "publicKeyAlgorithm": "ssh-ed25519",
                   "username": "exports",
                   "privateKey": [{"name": "id_rsa", "value": b64("old key")}]}),
            json!({"username": "exports",
                   "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaNEW\n-----END OPENSSH PRIVATE KEY-----\n"}),
            false,
        ),
        _ => return None,
    })
}

/// Cloud warehouses: Athena, Databricks, BigQuery, Snowflake.
fn warehouses(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        ("athena", "iam_credentials") => {
            // IAM credentials: username = access key id, password = secret access key.
            let p = json!({"AuthenticationType": "IAM Credentials", "AwsRegion": "eu-west-1",
                           "Catalog": "AwsDataCatalog", "Schema": "analytics", "Workgroup": "primary",
                           "S3OutputLocation": "s3://acme-athena-results/",
                           "username": "AKIAOLDATHENA", "password": "old/athena"});
            (
                p,
                json!({"username": "AKIANEWATHENA", "password": "new/athena+2026"}),
                false,
            )
        }
        ("databricks", "password") => (
            json!({"host": "adb-1234567890.5.azuredatabricks.net", "port": 443, "Catalog": "main",
                   "Schema": "default", "HTTPPath": "/sql/1.0/warehouses/3f2a", "SSL": true,
                   "AuthMech": "3", "username": "token", "password": "dapi-old",
                   "TrustedCerts": [{"name": "old-ca.pem", "value": b64("old ca")}]}),
            json!({"username": "token", "password": "dapi-new-2026",
                   "trusted_certs": "-----BEGIN CERTIFICATE-----\nMIIDnewCA\n-----END CERTIFICATE-----\n"}),
            false,
        ),
        ("gbq", "service_account") => (
            json!({"OAuthMechanism": "0", "Catalog": "acme-warehouse",
                   "Email": "old-reader@acme-warehouse.iam.gserviceaccount.com",
                   "KeyFilePath": [{"name": "old-key.json", "value": b64("{\"old\":1}")}]}),
            service_account("acme-warehouse", "MIIEgbq"),
            false,
        ),
        ("snowflake", "password") => {
            let (p, s) = user_password(
                json!({"server": "acme.eu-west-1.snowflakecomputing.com", "port": 443,
                       "database": "SALES", "schema": "PUBLIC", "warehouse": "COMPUTE_WH",
                       "role": "REPORTING"}),
                "SVC_SALES",
            );
            (p, s, false)
        }
        // Moving a password connection to key-pair auth: `authenticator` is switched.
        ("snowflake", "key_pair") => (
            json!({"server": "acme.eu-west-1.snowflakecomputing.com", "port": 443,
                   "database": "SALES", "schema": "PUBLIC", "warehouse": "COMPUTE_WH",
                   "role": "REPORTING", "authenticator": "snowflake",
                   "username": "SVC_SALES", "password": "old-P@ss"}),
            json!({"username": "SVC_SALES", "private_key": PKCS8_NEW}),
            false,
        ),
        _ => return None,
    })
}

/// Databases with a username and password: SQL Server, MySQL, Teradata.
fn databases(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        ("mssql", "password") => {
            let (p, s) = user_password(
                json!({"host": "sql.acme.internal", "port": 1433, "database": "finance",
                       "maxStringLength": 4096, "QueryTimeout": 30}),
                "svc_finance",
            );
            (p, s, false)
        }
        ("mysql", "password") => {
            let (p, s) = user_password(
                json!({"host": "mysql.acme.internal", "port": 3306, "database": "shop"}),
                "svc_shop",
            );
            (p, s, false)
        }
        ("teradata", "password") => {
            let (p, s) = user_password(
                json!({"host": "td.acme.internal", "port": 1025, "db": "dwh"}),
                "svc_dwh",
            );
            (p, s, false)
        }
        _ => return None,
    })
}

/// Web APIs: the REST connector (basic, header, mTLS) and Salesforce.
fn web_apis(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        ("rest", "basic") => {
            let (p, s) = user_password(
                json!({"url": "https://api.acme.example/v1/orders", "authSchema": "basic",
                       "queryParameters": [{"name": "limit", "value": "100"}],
                       "queryHeaders": [{"name": "Accept", "value": "application/json"}],
                       "serverCertificateValidation": true, "allowWithConnection": false,
                       "paginationType": "None"}),
                "api_reader",
            );
            (p, s, false)
        }
        ("rest", "header") => (
            json!({"url": "https://api.acme.example/v1/orders", "authSchema": "anonymous",
                   "queryParameters": [{"name": "limit", "value": "100"}],
                   "queryHeaders": [
                       {"name": "Accept", "value": "application/json", "encrypt": false},
                       {"name": "Authorization", "value": "Bearer old-token", "encrypt": true}
                   ],
                   "serverCertificateValidation": true, "allowWithConnection": false,
                   "paginationType": "None"}),
            json!({"token": "Bearer new-token-2026"}),
            false,
        ),
        // A PFX is binary: the vault holds it in base64 (`file_encoding = "base64"`).
        ("rest", "mtls") => (
            json!({"url": "https://mtls.acme.example/v1/orders", "authSchema": "anonymous",
                   "queryHeaders": [{"name": "Accept", "value": "application/json"}],
                   "serverCertificateValidation": true, "allowWithConnection": false,
                   "mutualPfxCertificateFiles": [{"name": "old.pfx", "value": b64("old pfx")}],
                   "mutualPfxCertificateKey": "old-pfx-pass"}),
            json!({"pfx": b64("\u{30}\u{82}\u{0a}new pfx"), "pfx_password": "new-pfx-pass"}),
            true,
        ),
        // Qlik PS Ansible collection's example: a custom domain, authenticator "salesforce",
        // UserId, SFpassword and sftoken (the security token).
        ("sfdc", "password") => (
            json!({"sfEnvironment": "custom", "envDomain": "acme.my.salesforce.com",
                   "authenticator": "salesforce", "UserId": "integration@acme.example",
                   "SFpassword": "old-P@ss", "sftoken": "oldT0ken4Sf"}),
            json!({"username": "integration@acme.example", "password": "N3w-P@ss/2026",
                   "security_token": "newT0ken2026xyz"}),
            false,
        ),
        _ => return None,
    })
}

/// Qlik Replicate sources and targets on databases, Snowflake included.
fn replicate_databases(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        (
            "repsrc_mysql"
            | "repsrc_mssql"
            | "repsrc_postgresql"
            | "repsrc_oracle"
            | "reptgt_qdimysql"
            | "reptgt_mssqltarget"
            | "reptgt_qdipostgresql"
            | "reptgt_qdioracle",
            "password",
        ) => {
            let port = match base {
                "repsrc_mysql" | "reptgt_qdimysql" => 3306,
                "repsrc_mssql" | "reptgt_mssqltarget" => 1433,
                "repsrc_postgresql" | "reptgt_qdipostgresql" => 5432,
                _ => 1521,
            };
            let (p, s) = user_password(
                json!({"agentId": "agent-eu-1", "server": "db.acme.internal", "port": port,
                       "database": "replica", "replicateEndpointType": base}),
                "svc_replicate",
            );
            (p, s, false)
        }
        ("reptgt_qdisnowflake", "key_pair") => (
            json!({"server": "acme.eu-west-1.snowflakecomputing.com", "port": 443,
                   "databaseQcsString": "LANDING", "warehouse": "LOAD_WH",
                   "authentication_mode": "KEY_PAIR", "username": "SVC_LOAD",
                   "privateKeyFile": [{"name": "rsa_key.p8", "value": b64("old key")}],
                   "privateKeyPassphrase": "old-passphrase"}),
            json!({"username": "SVC_LOAD", "private_key": PKCS8_NEW,
                   "private_key_passphrase": "new-passphrase"}),
            false,
        ),
        // Password mode as a third-party Terraform provider creates it (username + password,
        // no authentication_mode; agentId, replicateEndpointType, metadataschema, stagingtype).
        ("reptgt_qdisnowflake", "password") => {
            let (p, s) = user_password(
                json!({"agentId": "agent-eu-1", "server": "acme.eu-west-1.snowflakecomputing.com",
                       "port": "443", "warehouse": "LOAD_WH", "database": "LANDING",
                       "metadataschema": "QLIK_META", "stagingtype": "SNOWFLAKE_STAGE",
                       "replicateEndpointType": "snowflake"}),
                "SVC_LOAD",
            );
            (p, s, false)
        }
        _ => return None,
    })
}

/// Qlik Replicate cloud targets: Databricks, BigQuery, Google Cloud Storage, ADLS, S3.
fn replicate_cloud(base: &str, scheme: &str) -> Option<Parts> {
    Some(match (base, scheme) {
        ("reptgt_qdidatabricks", "token") => (
            json!({"server": "adb-1234567890.5.azuredatabricks.net", "port": 443,
                   "httpPath": "/sql/1.0/warehouses/3f2a",
                   "authenticationMode": "PERSONAL_ACCESS_TOKEN", "password": "dapi-old"}),
            json!({"token": "dapi-new-2026"}),
            false,
        ),
        ("reptgt_qdibigquery", "service_account") => (
            json!({"agentId": "agent-eu-1", "datasetLocation": "EU",
                   "jsonCredentials": [{"name": "old-key.json", "value": b64("{\"old\":1}")}]}),
            service_account("acme-landing", "MIIEqdibq"),
            false,
        ),
        ("reptgt_qdigooglecloudstorage", "service_account") => (
            json!({"agentId": "agent-eu-1", "bucketName": "acme-landing",
                   "jsonCredentials": [{"name": "old-key.json", "value": b64("{\"old\":1}")}]}),
            service_account("acme-landing", "MIIEqdigcs"),
            false,
        ),
        ("reptgt_qdiadls", "client_secret") => (
            json!({"agentId": "agent-eu-1", "storageAccount": "acmelake", "fileSystem": "landing",
                   "adlsLoginUrl": "https://login.microsoftonline.com",
                   "adlsclientappid": "0d9c8b7a-old", "adlstenantid": "5e6f7a8b-tenant",
                   "adlsclientappkey": "old~client~secret"}),
            json!({"client_secret": "new~client~secret", "client_id": "1a2b3c4d-new",
                   "tenant_id": "5e6f7a8b-tenant"}),
            false,
        ),
        ("reptgt_qdis3", "access_key") => (
            json!({"agentId": "agent-eu-1", "bucketName": "acme-landing", "useAwsPrivateLink": false,
                   "s3AccessKey": "AKIAOLDLANDING", "s3SecretKey": "old/landing"}),
            json!({"accessKey": "AKIANEWLANDING", "secretKey": "new/landing+2026"}),
            false,
        ),
        _ => return None,
    })
}
