//! Credential age (issue 15 item 6): the daemon exports when the vault version a job reads was
//! created, `secret_created_timestamp_seconds{rotation_job}`, here from a file source's mtime,
//! over the simulator. The Secrets Manager, SSM and Vault sources' times are tested in their
//! own files against moto and OpenBao.

mod common;

use std::{collections::HashMap, time::Duration};

use common::harness::*;
use qlik_rotator::{config, daemon};
use qlik_sim::SimConfig;

const CANARY: &str = "canary-secret-9b1e-credential-age";

#[tokio::test]
async fn the_daemon_exports_the_file_versions_mtime_as_its_creation_time() {
    let sim = tenant(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("vault/qlik/sales-s3.json");
    std::fs::create_dir_all(secret.parent().unwrap()).unwrap();
    std::fs::write(
        &secret,
        format!(r#"{{"accessKey":"AKIA1","secretKey":"{CANARY}"}}"#),
    )
    .unwrap();
    // 2023-11-14T22:13:20Z.
    let status = std::process::Command::new("touch")
        .args(["-d", "@1700000000"])
        .arg(&secret)
        .status()
        .unwrap();
    assert!(status.success());
    let text = format!(
        "{}write_budget_per_min = 0\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n\
         [daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n\n\
         [[jobs]]\nname = \"sales-s3\"\nconnection = {{ id = \"{S3_ID}\" }}\n\
         connector = \"File_AmazonS3ConnectorV2\"\nsource = \"vault\"\nsecret = \"qlik/sales-s3\"\n\
         run_on_start = true\n",
        qlik_section(&sim)
    );
    let input = HashMap::from([("QLIK_API_KEY".to_owned(), API_KEY.to_owned())]);
    let cfg = config::load_str(&text, dir.path(), &input).expect("valid config");
    let r = daemon::start(&cfg, &input).await.expect("daemon starts");
    let name = "qlik_rotator_secret_created_timestamp_seconds";
    let labels = [("rotation_job", "sales-s3")];
    let start = std::time::Instant::now();
    let scrape = loop {
        let scrape = http_get(r.addr, "/metrics").await.1;
        if metric(&scrape, name, &labels).is_some() || start.elapsed() > Duration::from_secs(20) {
            break scrape;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seen = metric(&scrape, name, &labels);
    assert_eq!(seen, Some(1_700_000_000.0), "{scrape}");
    assert!(!scrape.contains(CANARY));
    let (ok, why) = promtool_check_metrics(&scrape);
    assert!(ok, "{why}");
    assert!(r.shutdown().await);
}
