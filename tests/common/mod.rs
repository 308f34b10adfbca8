//! Helpers shared by integration tests (`mod common;`).
#![allow(dead_code)]

pub mod bao;
pub mod daemon;
pub mod dynamodb;
pub mod harness;
pub mod moto;
pub mod simulate;
pub mod statedb;

/// Writes the demo tenant's three secrets (`sales-s3`, `finance-sql`, `bigquery`) as
/// `<root>/vault/qlik/<name>.json`, every value starting with `canary` (a prefix the test then
/// looks for in its outputs); returns `<root>/vault/qlik`.
pub fn write_demo_vault(root: &std::path::Path, canary: &str) -> std::path::PathBuf {
    let vault = root.join("vault/qlik");
    std::fs::create_dir_all(&vault).unwrap();
    for (name, body) in [
        (
            "sales-s3",
            format!(r#"{{"accessKey":"{canary}-AKIA","secretKey":"{canary}-SECRET"}}"#),
        ),
        (
            "finance-sql",
            format!(r#"{{"username":"{canary}-USER","password":"{canary}-PASS"}}"#),
        ),
        (
            "bigquery",
            format!(r#"{{"key_file":{{"type":"service_account","private_key":"{canary}-KEY"}}}}"#),
        ),
    ] {
        std::fs::write(vault.join(format!("{name}.json")), body).unwrap();
    }
    vault
}
