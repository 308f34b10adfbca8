//! Static and tool-backed checks of the deployment artifacts under `deploy/`.
//!
//! Needs `promtool` on PATH (Debian package `prometheus`; `.ci/run` installs it). Uses the
//! `qlik-rotator` binary built by cargo for `check-config`, and `systemd-analyze` when present.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

// ---------------------------------------------------------------------------------------------
// The daemon's metrics contract, scraped from a running daemon.
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// Every `qlik_rotator_*` metric a running daemon exports, with its `# TYPE`: a real daemon
/// (against the simulator and a file vault) after one rotated run and one failed run.
fn exported_metrics() -> BTreeMap<String, MetricType> {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let text = rt.block_on(async {
        use qlik_sim::{SeedConnection, SimConfig, Simulator};
        let sim = Simulator::start(SimConfig::default()).await.expect("simulator");
        let id = sim.add_connection(SeedConnection::new(
            "c",
            "mssql",
            serde_json::json!({"host": "h", "username": "u"}),
        ));
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("vault")).unwrap();
        std::fs::write(dir.path().join("vault/ok.json"), r#"{"username":"u2","password":"p2"}"#).unwrap();
        std::fs::write(dir.path().join("vault/bad.json"), r#"{"username":"u3"}"#).unwrap();
        let job = |name: &str, secret: &str| {
            format!("[[jobs]]\nname = \"{name}\"\nconnection = {{ id = \"{id}\" }}\nconnector = \"mssql\"\nsource = \"v\"\nsecret = \"{secret}\"\nrun_on_start = true\nallow_shared_connection = true\n")
        };
        let text = format!(
            "[qlik]\ntenant_url = \"{}\"\napi_key_env = \"K\"\n[sources.v]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\n[metrics]\nlisten = \"127.0.0.1:0\"\n{}{}",
            sim.base_url(),
            job("ok", "ok"),
            job("bad", "bad")
        );
        // A job whose connection does not exist fails pre-flight: `job_preflight_ok` is
        // exported only for such a job.
        let text = format!(
            "{text}{}",
            job("gone", "ok").replace(id.as_str(), "00000000-0000-4000-8000-00000000dead")
        );
        let input = std::collections::HashMap::from([("K".to_owned(), "sim-api-key".to_owned())]);
        let cfg = qlik_rotator::config::load_str(&text, dir.path(), &input).expect("config");
        let running = qlik_rotator::daemon::start(&cfg, &input).await.expect("daemon");
        let url = format!("http://{}/metrics", running.addr);
        let mut text = String::new();
        for _ in 0..400 {
            text = reqwest::get(&url).await.unwrap().text().await.unwrap();
            if text.contains("qlik_rotator_rotations_rotated_total{connector=\"mssql\"} 1")
                && text.contains("qlik_rotator_errors_total{")
                && text.contains("qlik_rotator_job_preflight_ok{rotation_job=\"gone\"} 0")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        running.shutdown().await;
        text
    });
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let kind = match kind {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            other => panic!("unexpected metric type {other} for {name}"),
        };
        out.insert(name.to_owned(), kind);
    }
    assert!(
        out.contains_key("qlik_rotator_errors_total"),
        "the scrape missed a series:\n{text}"
    );
    // `job` is Prometheus's target label: the daemon's own series never carry one, so the
    // scrape needs no honor_labels. The rotation job is `rotation_job`.
    let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
    for line in &samples {
        let labels = line.split_once('{').map_or("", |(_, rest)| rest);
        assert!(
            !labels.starts_with("job=") && !labels.contains(",job="),
            "a series with a `job` label: {line}"
        );
    }
    assert!(
        samples
            .iter()
            .any(|l| l.contains("rotation_job=\"bad\"") && l.contains("outcome=\"failed\"")),
        "per-job series carry rotation_job:\n{text}"
    );
    out
}

/// Exported metrics that are operational detail, not needed on the dashboard.
const NOT_ON_DASHBOARD: &[&str] = &[
    "qlik_rotator_rotations_in_flight",
    // Alerted on (QlikRotatorStateNotWritable); nothing to watch while it is fine.
    "qlik_rotator_state_writable",
    "qlik_rotator_state_write_failures_total",
];

/// The values of enumerated labels.
const DECLARED_LABEL_VALUES: &[(&str, &[&str])] = &[
    (
        "outcome",
        &[
            "rotated",
            "unchanged",
            "failed",
            "verify_failed",
            "canary_failed",
            "rolled_back",
        ],
    ),
    (
        "stage",
        &["fetch", "resolve", "build", "apply", "verify", "canary"],
    ),
    ("state", &["scheduled", "preflight_failed"]),
];

const HISTOGRAM_SUFFIXES: &[&str] = &["_bucket", "_sum", "_count"];

/// The Prometheus scrape job name the rules and the Service use.
const SCRAPE_JOB: &str = "qlik-rotator";

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn deploy(rel: &str) -> PathBuf {
    root().join("deploy").join(rel)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let path = deploy(rel);
    serde_yaml_ng::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()))
}

fn json(rel: &str) -> Json {
    let path = deploy(rel);
    serde_json::from_str(&read(&path))
        .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()))
}

fn ystr<'a>(v: &'a Yaml, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, found {v:?}"))
}

fn yseq<'a>(v: &'a Yaml, what: &str) -> &'a Vec<Yaml> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("{what}: expected a list, found {v:?}"))
}

/// Finds `name` on PATH.
fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn promtool() -> PathBuf {
    which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is not on PATH: install Debian's `prometheus` package \
             (apt-get install -y --no-install-recommends prometheus); .ci/run installs it"
        )
    })
}

fn output_text(out: &Output) -> String {
    format!(
        "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed\n{}",
        output_text(&out)
    );
    out
}

/// `30s`, `5m`, `1h`, `45` (seconds) -> Duration. Enough for the durations used here.
fn duration(s: &str) -> Duration {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => (
            &s[..i],
            match &s[i..] {
                "s" | "sec" => 1,
                "m" | "min" => 60,
                "h" => 3600,
                other => panic!("unsupported duration unit {other:?} in {s:?}"),
            },
        ),
    };
    Duration::from_secs(
        num.parse::<u64>()
            .unwrap_or_else(|_| panic!("bad duration {s:?}"))
            * mult,
    )
}

/// The value following `-c` / `--config` in an argument list.
fn config_arg(args: &[String]) -> PathBuf {
    let i = args
        .iter()
        .position(|a| a == "-c" || a == "--config")
        .unwrap_or_else(|| panic!("no -c in {args:?}"));
    PathBuf::from(
        args.get(i + 1)
            .unwrap_or_else(|| panic!("-c without a value in {args:?}")),
    )
}

/// Runs `qlik-rotator check-config` on `toml` (written to a temporary file).
fn check_config(toml: &str, what: &str) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, toml).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_qlik-rotator"));
    // The files and variables it names exist on the target host, not here.
    cmd.arg("check-config")
        .arg("--syntax-only")
        .arg("-c")
        .arg(&path);
    // Environment overrides of the developer's shell must not change the verdict.
    for (k, _) in std::env::vars() {
        if k.starts_with("QLIK_ROTATOR__") {
            cmd.env_remove(k);
        }
    }
    let out = cmd.output().expect("run qlik-rotator check-config");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: check-config rejected it\n{}",
        output_text(&out)
    );
}

fn toml_table(text: &str, what: &str) -> toml::Table {
    text.parse()
        .unwrap_or_else(|e| panic!("{what} is not valid TOML: {e}"))
}

fn toml_str<'a>(t: &'a toml::Table, path: &[&str]) -> &'a str {
    let mut cur = t;
    for (i, key) in path.iter().enumerate() {
        let v = cur
            .get(*key)
            .unwrap_or_else(|| panic!("config has no {}", path.join(".")));
        if i + 1 == path.len() {
            return v
                .as_str()
                .unwrap_or_else(|| panic!("config {} is not a string", path.join(".")));
        }
        cur = v
            .as_table()
            .unwrap_or_else(|| panic!("config {} is not a table", path[..=i].join(".")));
    }
    unreachable!("empty path")
}

/// The daemon's settings the deployment has to agree with.
struct DaemonSettings {
    listen: SocketAddr,
    state_dir: PathBuf,
    client_secret_file: PathBuf,
    shutdown_grace_period: Duration,
    aws_region: Option<String>,
}

fn settings(config: &toml::Table) -> DaemonSettings {
    let grace = config
        .get("daemon")
        .and_then(|d| d.get("shutdown_grace_period"))
        .and_then(|v| v.as_str())
        .map_or(Duration::from_secs(30), duration);
    let aws_region = config
        .get("sources")
        .and_then(|s| s.as_table())
        .into_iter()
        .flat_map(|s| s.values())
        .filter(|s| s.get("type").and_then(|t| t.as_str()) == Some("aws_secrets_manager"))
        .find_map(|s| s.get("region").and_then(|r| r.as_str()).map(str::to_owned));
    DaemonSettings {
        listen: toml_str(config, &["metrics", "listen"])
            .parse()
            .expect("[metrics] listen is a socket address"),
        state_dir: toml_str(config, &["daemon", "state_dir"]).into(),
        client_secret_file: toml_str(config, &["qlik", "oauth", "client_secret_file"]).into(),
        shutdown_grace_period: grace,
        aws_region,
    }
}

/// The kubernetes manifest of `kind` (single-document files).
fn manifest(rel: &str, kind: &str) -> Yaml {
    let v = yaml(rel);
    assert_eq!(ystr(&v["kind"], rel), kind, "{rel}: kind");
    v
}

fn configmap_config() -> (String, toml::Table) {
    let cm = manifest("kubernetes/configmap.yaml", "ConfigMap");
    let text = ystr(&cm["data"]["config.toml"], "ConfigMap data.config.toml").to_owned();
    let table = toml_table(&text, "the ConfigMap's config.toml");
    (text, table)
}

fn systemd_config() -> (String, toml::Table) {
    let text = read(&deploy("systemd/config.toml"));
    let table = toml_table(&text, "deploy/systemd/config.toml");
    (text, table)
}

fn all_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_files(&path, out);
        } else {
            out.push(path);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Prometheus rules
// ---------------------------------------------------------------------------------------------

/// `promtool <verb> <noun> deploy/<file>` must succeed.
fn promtool_ok(verb: &str, noun: &str, file: &str) {
    run_ok(
        Command::new(promtool())
            .args([verb, noun])
            .arg(deploy(file)),
    );
}

#[test]
fn promtool_check_rules() {
    promtool_ok("check", "rules", "prometheus/rules.yml");
}

#[test]
fn promtool_rule_unit_tests_pass() {
    promtool_ok("test", "rules", "prometheus/rules_test.yml");
}

#[test]
fn promtool_check_example_prometheus_config() {
    promtool_ok("check", "config", "prometheus/prometheus.yml");
    let cfg = yaml("prometheus/prometheus.yml");
    let scrape = &yseq(&cfg["scrape_configs"], "scrape_configs")[0];
    assert_eq!(ystr(&scrape["job_name"], "job_name"), SCRAPE_JOB);
    // The rotation job is `rotation_job`: `job` stays the scrape job, no honor_labels.
    assert_ne!(scrape["honor_labels"].as_bool(), Some(true), "honor_labels");
}

fn alerting_rules() -> Vec<Yaml> {
    let rules = yaml("prometheus/rules.yml");
    yseq(&rules["groups"], "groups")
        .iter()
        .flat_map(|g| yseq(&g["rules"], "rules").clone())
        .filter(|r| r.get("alert").is_some())
        .collect()
}

fn alert_names() -> BTreeSet<String> {
    alerting_rules()
        .iter()
        .map(|r| ystr(&r["alert"], "alert").to_owned())
        .collect()
}

#[test]
fn the_required_alerts_exist() {
    let names = alert_names();
    for required in [
        "QlikRotatorRotationFailed",
        "QlikRotatorVerifyFailed",
        "QlikRotatorCredentialsStale",
        "QlikRotatorCredentialOld",
        "QlikRotatorRateLimited",
        "QlikRotatorDown",
        "QlikRotatorAbsent",
        "QlikRotatorPreflightFailed",
        "QlikRotatorStateNotWritable",
    ] {
        assert!(names.contains(required), "rules.yml lacks {required}");
    }
}

#[test]
fn every_alert_has_severity_summary_description_and_runbook() {
    for rule in alerting_rules() {
        let name = ystr(&rule["alert"], "alert");
        let severity = ystr(&rule["labels"]["severity"], &format!("{name} severity"));
        assert!(
            ["warning", "critical"].contains(&severity),
            "{name}: severity {severity:?}"
        );
        for key in ["summary", "description"] {
            let text = ystr(&rule["annotations"][key], &format!("{name} {key}"));
            // The rotation job for per-job alerts, else the scrape job.
            assert!(
                text.contains("$labels.rotation_job") || text.contains("$labels.job"),
                "{name}: the {key} should name the job ({{{{ $labels.rotation_job }}}} or {{{{ $labels.job }}}})"
            );
        }
        assert_eq!(
            ystr(&rule["annotations"]["runbook_url"], "runbook_url"),
            format!("README.md#alert-{}", name.to_lowercase()),
            "{name}: runbook_url"
        );
    }
}

#[test]
fn every_alert_has_a_firing_and_a_quiet_unit_test() {
    let tests = yaml("prometheus/rules_test.yml");
    let mut firing = BTreeSet::new();
    let mut quiet = BTreeSet::new();
    for case in yseq(&tests["tests"], "tests") {
        for t in case["alert_rule_test"].as_sequence().into_iter().flatten() {
            let name = ystr(&t["alertname"], "alertname").to_owned();
            let fires = t["exp_alerts"]
                .as_sequence()
                .is_some_and(|alerts| !alerts.is_empty());
            if fires {
                firing.insert(name);
            } else {
                quiet.insert(name);
            }
        }
    }
    for name in alert_names() {
        assert!(
            firing.contains(&name),
            "rules_test.yml: no case where {name} fires"
        );
        assert!(
            quiet.contains(&name),
            "rules_test.yml: no case where {name} stays quiet"
        );
    }
}

#[test]
fn prometheusrule_carries_the_same_groups_as_rules_yml() {
    let pr = manifest("kubernetes/prometheusrule.yaml", "PrometheusRule");
    assert_eq!(
        ystr(&pr["apiVersion"], "apiVersion"),
        "monitoring.coreos.com/v1"
    );
    let rules = yaml("prometheus/rules.yml");
    assert!(
        pr["spec"]["groups"] == rules["groups"],
        "deploy/kubernetes/prometheusrule.yaml spec.groups differ from deploy/prometheus/rules.yml \
         groups: copy rules.yml's groups into it"
    );
}

// ---------------------------------------------------------------------------------------------
// Every file parses
// ---------------------------------------------------------------------------------------------

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    all_files(&root().join("deploy"), &mut files);
    let (mut yamls, mut jsons) = (0, 0);
    for path in files {
        match path.extension().and_then(|e| e.to_str()) {
            Some("yml" | "yaml") => {
                let text = read(&path);
                let mut docs = 0;
                for doc in serde_yaml_ng::Deserializer::from_str(&text) {
                    let v = <Yaml as serde::Deserialize>::deserialize(doc)
                        .unwrap_or_else(|e| panic!("{} is not valid YAML: {e}", path.display()));
                    if !v.is_null() {
                        docs += 1;
                    }
                }
                assert!(docs > 0, "{} has no YAML document", path.display());
                yamls += 1;
            }
            Some("json") => {
                serde_json::from_str::<Json>(&read(&path))
                    .unwrap_or_else(|e| panic!("{} is not valid JSON: {e}", path.display()));
                jsons += 1;
            }
            _ => {}
        }
    }
    assert!(
        yamls >= 10 && jsons >= 2,
        "found {yamls} YAML, {jsons} JSON"
    );
}

#[test]
fn kustomization_lists_every_manifest() {
    let k = yaml("kubernetes/kustomization.yaml");
    let listed: BTreeSet<String> = yseq(&k["resources"], "resources")
        .iter()
        .map(|r| ystr(r, "resource").to_owned())
        .collect();
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(deploy("kubernetes")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    assert_eq!(listed, present, "kustomization.yaml resources");
}

// ---------------------------------------------------------------------------------------------
// Configs pass the daemon's own validation
// ---------------------------------------------------------------------------------------------

#[test]
fn configmap_config_passes_check_config() {
    let (text, _) = configmap_config();
    check_config(&text, "deploy/kubernetes/configmap.yaml");
}

#[test]
fn systemd_config_passes_check_config() {
    let (text, _) = systemd_config();
    check_config(&text, "deploy/systemd/config.toml");
}

// ---------------------------------------------------------------------------------------------
// Kubernetes: ports, paths and security agree
// ---------------------------------------------------------------------------------------------

fn container(deployment: &Yaml) -> &Yaml {
    let containers = yseq(
        &deployment["spec"]["template"]["spec"]["containers"],
        "containers",
    );
    assert_eq!(containers.len(), 1, "one container");
    &containers[0]
}

/// A probe's or Service's port (number or container port name) as a number.
fn resolve_port(port: &Yaml, container: &Yaml) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = ystr(port, "port");
    yseq(&container["ports"], "ports")
        .iter()
        .find(|p| p["name"].as_str() == Some(name))
        .and_then(|p| p["containerPort"].as_u64())
        .unwrap_or_else(|| panic!("no container port named {name:?}"))
}

/// volumeMount name -> (mountPath, readOnly).
fn mounts(container: &Yaml) -> BTreeMap<String, (PathBuf, bool)> {
    yseq(&container["volumeMounts"], "volumeMounts")
        .iter()
        .map(|m| {
            (
                ystr(&m["name"], "mount name").to_owned(),
                (
                    PathBuf::from(ystr(&m["mountPath"], "mountPath")),
                    m["readOnly"].as_bool().unwrap_or(false),
                ),
            )
        })
        .collect()
}

fn volume<'a>(deployment: &'a Yaml, name: &str) -> &'a Yaml {
    yseq(
        &deployment["spec"]["template"]["spec"]["volumes"],
        "volumes",
    )
    .iter()
    .find(|v| v["name"].as_str() == Some(name))
    .unwrap_or_else(|| panic!("no volume {name:?}"))
}

/// The mount (name, readOnly) whose mountPath is `dir`.
fn mount_at(container: &Yaml, dir: &Path) -> (String, bool) {
    mounts(container)
        .into_iter()
        .find(|(_, (path, _))| path == dir)
        .map(|(name, (_, ro))| (name, ro))
        .unwrap_or_else(|| panic!("the container mounts nothing at {}", dir.display()))
}

fn container_args(c: &Yaml) -> Vec<String> {
    yseq(&c["args"], "args")
        .iter()
        .map(|a| ystr(a, "arg").to_owned())
        .collect()
}

#[test]
fn kubernetes_ports_agree_with_the_config() {
    let (_, config) = configmap_config();
    let s = settings(&config);
    assert!(
        s.listen.ip().is_unspecified(),
        "[metrics] listen must accept connections from outside the pod (0.0.0.0), not {}",
        s.listen
    );
    let port = u64::from(s.listen.port());

    let d = manifest("kubernetes/deployment.yaml", "Deployment");
    let c = container(&d);
    let ports = yseq(&c["ports"], "ports");
    assert_eq!(ports.len(), 1);
    assert_eq!(ports[0]["containerPort"].as_u64(), Some(port));
    let port_name = ystr(&ports[0]["name"], "port name");
    assert_eq!(port_name, "metrics");
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{probe} path");
        assert_eq!(resolve_port(&get["port"], c), port, "{probe} port");
    }

    let svc = manifest("kubernetes/service.yaml", "Service");
    assert_eq!(ystr(&svc["metadata"]["name"], "Service name"), SCRAPE_JOB);
    let sp = yseq(&svc["spec"]["ports"], "Service ports");
    assert_eq!(sp.len(), 1);
    assert_eq!(sp[0]["name"].as_str(), Some("metrics"));
    assert_eq!(sp[0]["port"].as_u64(), Some(port));
    assert_eq!(resolve_port(&sp[0]["targetPort"], c), port);
    let pod_labels = &d["spec"]["template"]["metadata"]["labels"];
    for (k, v) in svc["spec"]["selector"].as_mapping().expect("selector") {
        assert_eq!(&pod_labels[ystr(k, "label")], v, "Service selector");
    }

    let sm = manifest("kubernetes/servicemonitor.yaml", "ServiceMonitor");
    assert_eq!(
        ystr(&sm["apiVersion"], "apiVersion"),
        "monitoring.coreos.com/v1"
    );
    let ep = &yseq(&sm["spec"]["endpoints"], "endpoints")[0];
    assert_eq!(ep["port"].as_str(), Some("metrics"));
    assert_eq!(ep["path"].as_str(), Some("/metrics"));
    assert_ne!(
        ep["honorLabels"].as_bool(),
        Some(true),
        "no honorLabels: the metrics carry no `job` label of their own"
    );
    for (k, v) in sm["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .expect("matchLabels")
    {
        assert_eq!(
            &svc["metadata"]["labels"][ystr(k, "label")],
            v,
            "ServiceMonitor selector"
        );
    }
}

#[test]
fn kubernetes_mounts_agree_with_the_config() {
    let (_, config) = configmap_config();
    let s = settings(&config);
    let d = manifest("kubernetes/deployment.yaml", "Deployment");
    let c = container(&d);

    // The ConfigMap at the directory of the -c path, holding that file name.
    let cfg_path = config_arg(&container_args(c));
    assert_eq!(container_args(c)[0], "run");
    let (name, _) = mount_at(c, cfg_path.parent().unwrap());
    let cm = manifest("kubernetes/configmap.yaml", "ConfigMap");
    assert_eq!(
        volume(&d, &name)["configMap"]["name"],
        cm["metadata"]["name"],
        "the config directory is the ConfigMap"
    );
    let file = cfg_path.file_name().unwrap().to_str().unwrap();
    assert!(
        cm["data"].get(file).is_some(),
        "the ConfigMap has no key {file}"
    );

    // The Secret, read-only, at the directory of client_secret_file, holding that file name.
    let (name, read_only) = mount_at(c, s.client_secret_file.parent().unwrap());
    assert!(read_only, "the Secret mount is read-only");
    let secret = manifest("kubernetes/secret.yaml", "Secret");
    assert_eq!(
        volume(&d, &name)["secret"]["secretName"],
        secret["metadata"]["name"]
    );
    let key = s.client_secret_file.file_name().unwrap().to_str().unwrap();
    assert!(
        secret["stringData"].get(key).is_some() || secret["data"].get(key).is_some(),
        "the Secret has no key {key}"
    );

    // A writable volume at state_dir's parent (the daemon creates state_dir itself, 0700:
    // the volume root is group- or world-writable, which it refuses), and at /tmp.
    assert_ne!(
        s.state_dir.parent(),
        Some(Path::new("/")),
        "state_dir must be a directory inside the state volume"
    );
    for dir in [s.state_dir.parent().unwrap(), Path::new("/tmp")] {
        let (name, read_only) = mount_at(c, dir);
        assert!(!read_only, "{} must be writable", dir.display());
        let v = volume(&d, &name);
        assert!(
            v.get("emptyDir").is_some() || v.get("persistentVolumeClaim").is_some(),
            "{}: emptyDir or PVC",
            dir.display()
        );
    }

    // The image's default command uses the same config path.
    let cmd = dockerfile_json_instruction("CMD");
    assert_eq!(config_arg(&cmd), cfg_path, "Dockerfile CMD -c path");

    // Shutdown: in-flight rotations get their grace period before SIGKILL.
    let tgps = d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        Duration::from_secs(tgps) > s.shutdown_grace_period,
        "terminationGracePeriodSeconds {tgps} must exceed shutdown_grace_period"
    );
}

/// The single-replica variant keeps its SQLite state on a PersistentVolumeClaim (issue 12): one
/// replica, Recreate (the old pod lets go of the ReadWriteOnce volume before the new one
/// mounts it), fsGroup (the volume is writable by the daemon's user), and the claim exists.
#[test]
fn kubernetes_state_volume_is_a_persistent_volume_claim_of_the_single_replica() {
    let d = manifest("kubernetes/deployment.yaml", "Deployment");
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(d["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["fsGroup"].as_u64(), Some(65532));
    let (_, config) = configmap_config();
    let s = settings(&config);
    let (name, read_only) = mount_at(container(&d), s.state_dir.parent().unwrap());
    assert!(!read_only);
    let v = volume(&d, &name);
    assert!(
        v.get("emptyDir").is_none(),
        "state on an emptyDir is lost at every restart"
    );
    let claim = ystr(
        &v["persistentVolumeClaim"]["claimName"],
        "state volume persistentVolumeClaim.claimName",
    );
    let pvc = manifest("kubernetes/pvc.yaml", "PersistentVolumeClaim");
    assert_eq!(pvc["metadata"]["name"].as_str(), Some(claim));
    assert_eq!(
        pvc["spec"]["accessModes"],
        serde_yaml_ng::from_str::<Yaml>("[ReadWriteOnce]").unwrap()
    );
    assert!(
        pvc["spec"]["resources"]["requests"]["storage"]
            .as_str()
            .is_some(),
        "a storage request"
    );
}

#[test]
fn kubernetes_deployment_is_single_replica_and_restricted() {
    let d = manifest("kubernetes/deployment.yaml", "Deployment");
    assert_eq!(d["spec"]["replicas"].as_u64(), Some(1));
    assert_eq!(d["spec"]["strategy"]["type"].as_str(), Some("Recreate"));
    let pod = &d["spec"]["template"]["spec"];
    let c = container(&d);
    for (what, sc) in [
        ("pod", &pod["securityContext"]),
        ("container", &c["securityContext"]),
    ] {
        assert_eq!(
            sc["runAsNonRoot"].as_bool(),
            Some(true),
            "{what} runAsNonRoot"
        );
        assert_eq!(sc["runAsUser"].as_u64(), Some(65532), "{what} runAsUser");
        assert_eq!(
            sc["seccompProfile"]["type"].as_str(),
            Some("RuntimeDefault"),
            "{what} seccompProfile"
        );
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_yaml_ng::from_str::<Yaml>("[ALL]").unwrap()
    );
    for kind in ["requests", "limits"] {
        for res in ["cpu", "memory"] {
            assert!(
                c["resources"][kind].get(res).is_some(),
                "resources.{kind}.{res}"
            );
        }
    }
    let sa = manifest("kubernetes/serviceaccount.yaml", "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let arn = ystr(
        &sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"],
        "IRSA annotation",
    );
    assert!(arn.starts_with("arn:aws:iam::"), "role ARN {arn}");
}

// ---------------------------------------------------------------------------------------------
// systemd
// ---------------------------------------------------------------------------------------------

/// `Key=value` lines of the unit, in order (comments and section headers skipped).
fn unit_directives() -> Vec<(String, String)> {
    read(&deploy("systemd/qlik-rotator.service"))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter(|l| !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

fn unit_value(directives: &[(String, String)], key: &str) -> String {
    let values: Vec<_> = directives.iter().filter(|(k, _)| k == key).collect();
    assert_eq!(values.len(), 1, "the unit should set {key} exactly once");
    values[0].1.clone()
}

#[test]
fn systemd_unit_agrees_with_its_config() {
    let (_, config) = systemd_config();
    let s = settings(&config);
    let d = unit_directives();

    let exec: Vec<String> = unit_value(&d, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    assert_eq!(exec[0], "/usr/local/bin/qlik-rotator");
    assert_eq!(exec[1], "run");
    let cfg_path = config_arg(&exec);
    assert_eq!(
        cfg_path.parent().unwrap(),
        Path::new("/etc").join(unit_value(&d, "ConfigurationDirectory")),
        "ExecStart -c path vs ConfigurationDirectory"
    );
    assert_eq!(
        s.state_dir,
        Path::new("/var/lib").join(unit_value(&d, "StateDirectory")),
        "state_dir vs StateDirectory"
    );

    // LoadCredential=NAME:SOURCE -> the config reads /run/credentials/<unit>/NAME.
    let cred = unit_value(&d, "LoadCredential");
    let (name, source) = cred.split_once(':').expect("LoadCredential=NAME:PATH");
    assert_eq!(
        s.client_secret_file,
        Path::new("/run/credentials/qlik-rotator.service").join(name),
        "client_secret_file vs LoadCredential"
    );
    assert!(
        Path::new(source).starts_with(cfg_path.parent().unwrap()),
        "credential source {source} in the configuration directory"
    );

    let stop = duration(&unit_value(&d, "TimeoutStopSec"));
    assert!(
        stop > s.shutdown_grace_period,
        "TimeoutStopSec {stop:?} must exceed shutdown_grace_period {:?}",
        s.shutdown_grace_period
    );
    assert!(
        unit_value(&d, "RestartPreventExitStatus")
            .split_whitespace()
            .any(|c| c == "64"),
        "exit 64 (bad config) must not restart"
    );
    for (key, value) in [
        ("Restart", "on-failure"),
        ("DynamicUser", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("KillSignal", "SIGTERM"),
        ("CapabilityBoundingSet", ""),
    ] {
        assert_eq!(unit_value(&d, key), value, "{key}");
    }
    let families: BTreeSet<_> = unit_value(&d, "RestrictAddressFamilies")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    for f in ["AF_INET", "AF_INET6", "AF_UNIX"] {
        assert!(
            families.contains(f),
            "RestrictAddressFamilies must allow {f}"
        );
    }
}

#[test]
fn systemd_analyze_verify_accepts_the_unit() {
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    };
    // verify checks that ExecStart is executable: point it at the binary cargo built.
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("qlik-rotator.service");
    let text = read(&deploy("systemd/qlik-rotator.service")).replace(
        "ExecStart=/usr/local/bin/qlik-rotator ",
        &format!("ExecStart={} ", env!("CARGO_BIN_EXE_qlik-rotator")),
    );
    std::fs::write(&unit, text).unwrap();
    let out = run_ok(Command::new(analyze).arg("verify").arg(&unit));
    // Unknown or misplaced keys are only warnings: treat any remark about the unit as an error.
    let stderr = String::from_utf8_lossy(&out.stderr);
    let remarks: Vec<_> = stderr
        .lines()
        .filter(|l| l.contains("qlik-rotator.service"))
        .collect();
    assert!(remarks.is_empty(), "systemd-analyze verify:\n{stderr}");
}

// ---------------------------------------------------------------------------------------------
// Dockerfile (no Docker engine here: static checks)
// ---------------------------------------------------------------------------------------------

/// (INSTRUCTION, arguments) with continuation lines joined; comments and directives dropped.
fn dockerfile() -> Vec<(String, String)> {
    let text = read(&deploy("docker/Dockerfile"));
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let t = line.trim();
        if current.is_empty() && (t.is_empty() || t.starts_with('#')) {
            continue;
        }
        if let Some(cont) = t.strip_suffix('\\') {
            current.push_str(cont);
            current.push(' ');
            continue;
        }
        if t.starts_with('#') {
            continue; // a comment inside a continued instruction
        }
        current.push_str(t);
        let (ins, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((ins.to_uppercase(), args.trim().to_owned()));
        current.clear();
    }
    out
}

/// The instructions of the last stage.
fn final_stage() -> Vec<(String, String)> {
    let all = dockerfile();
    let last_from = all.iter().rposition(|(i, _)| i == "FROM").expect("FROM");
    all[last_from..].to_vec()
}

fn dockerfile_json_instruction(name: &str) -> Vec<String> {
    let stage = final_stage();
    let (_, args) = stage
        .iter()
        .rev()
        .find(|(i, _)| i == name)
        .unwrap_or_else(|| panic!("the final stage has no {name}"));
    serde_json::from_str(args)
        .unwrap_or_else(|e| panic!("{name} should be in JSON (exec) form: {args}: {e}"))
}

#[test]
fn dockerfile_is_multi_stage_non_root_and_exposes_metrics() {
    let all = dockerfile();
    let froms = all.iter().filter(|(i, _)| i == "FROM").count();
    assert!(froms >= 2, "multi-stage: {froms} FROM");
    assert!(
        all.iter()
            .any(|(i, a)| i == "RUN" && a.contains("cargo build --release --locked")),
        "the builder runs cargo build --release --locked"
    );

    let stage = final_stage();
    let user = stage
        .iter()
        .rev()
        .find(|(i, _)| i == "USER")
        .map(|(_, a)| a.clone())
        .expect("the final stage sets USER");
    let uid = user.split(':').next().unwrap();
    assert!(uid != "root" && uid != "0", "USER {user} is root");
    assert_eq!(
        uid, "65532",
        "numeric non-root uid, matching the Deployment's runAsUser"
    );

    assert_eq!(dockerfile_json_instruction("ENTRYPOINT"), ["qlik-rotator"]);
    let cmd = dockerfile_json_instruction("CMD");
    assert_eq!(cmd[0], "run");
    assert!(
        stage
            .iter()
            .any(|(i, a)| i == "EXPOSE" && a.split_whitespace().any(|p| p == "9464")),
        "EXPOSE 9464"
    );

    // The runtime stage only copies from the builder, and the binary lands on PATH.
    let copies: Vec<_> = stage
        .iter()
        .filter(|(i, _)| i == "COPY" || i == "ADD")
        .collect();
    for (i, a) in &copies {
        assert!(
            i == "COPY" && a.contains("--from="),
            "runtime stage: {i} {a}"
        );
    }
    assert!(
        copies
            .iter()
            .any(|(_, a)| a.ends_with(" /usr/local/bin/qlik-rotator")),
        "the binary is copied to /usr/local/bin/qlik-rotator"
    );
}

#[test]
fn dockerfile_build_context_is_allowed_by_dockerignore() {
    // .dockerignore is an allow-list: "*" then "!path" lines.
    let ignore = read(&root().join(".dockerignore"));
    let lines: Vec<_> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    assert_eq!(lines.first(), Some(&"*"), ".dockerignore starts with *");
    let allowed: BTreeSet<_> = lines
        .iter()
        .filter_map(|l| l.strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    for (ins, args) in dockerfile() {
        if ins != "COPY" || args.contains("--from=") {
            continue;
        }
        let words: Vec<_> = args
            .split_whitespace()
            .filter(|w| !w.starts_with("--"))
            .collect();
        for src in &words[..words.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(
                allowed.contains(src),
                "COPY {src}: not allowed by .dockerignore"
            );
            assert!(root().join(src).exists(), "COPY {src}: no such path");
        }
    }
}

/// Copies `from` (a file or a directory tree) to `to`.
fn copy_tree(from: &Path, to: &Path) {
    if from.is_dir() {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        }
    } else {
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }
}

#[test]
fn dockerfile_build_context_holds_the_whole_workspace() {
    // The builder stage's COPY instructions (before the first RUN), applied to an empty
    // directory: cargo must load the workspace there with the committed lock (every member,
    // e.g. crates/qlik-sim, must be copied even though the image is built without it).
    let ctx = tempfile::tempdir().expect("tempdir");
    let mut copied = 0;
    for (ins, args) in dockerfile() {
        if ins == "RUN" {
            break;
        }
        if ins != "COPY" {
            continue;
        }
        let words: Vec<_> = args.split_whitespace().collect();
        let (dest, srcs) = words.split_last().expect("COPY has a destination");
        for src in srcs {
            let from = root().join(src.trim_end_matches('/'));
            let to = if dest.ends_with('/') {
                ctx.path().join(from.file_name().unwrap())
            } else {
                ctx.path().join(dest.trim_start_matches("./"))
            };
            copy_tree(&from, &to);
            copied += 1;
        }
    }
    assert!(copied >= 4, "{copied} COPY sources");
    // `cargo tree` loads every member and checks the lock without downloading anything for
    // other platforms (`cargo metadata` would).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let tree = |pkg: &str, features: &[&str]| {
        let out = Command::new(&cargo)
            .args([
                "tree",
                "--locked",
                "--offline",
                "-e",
                "normal",
                "--target",
                "host-tuple",
            ])
            .args(["-p", pkg])
            .args(features)
            .current_dir(ctx.path())
            .output()
            .expect("cargo tree");
        assert!(
            out.status.success(),
            "cargo cannot load the workspace from the Docker build context:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // What the image builds: the product without the simulator.
    let shipped = tree("qlik-rotator", &["--no-default-features"]);
    assert!(shipped.starts_with("qlik-rotator v"), "{shipped}");
    assert!(!shipped.contains("qlik-sim"), "{shipped}");
    // The default build links the simulator, and the context holds it.
    assert!(tree("qlik-rotator", &[]).contains("qlik-sim v"));
    // The image is built without the simulator.
    assert!(
        dockerfile()
            .iter()
            .any(|(i, a)| i == "RUN" && a.contains("--no-default-features")),
        "the image is built with --no-default-features"
    );
}

// ---------------------------------------------------------------------------------------------
// IAM policy
// ---------------------------------------------------------------------------------------------

fn strings(v: &Json) -> Vec<String> {
    match v {
        Json::String(s) => vec![s.clone()],
        Json::Array(a) => a
            .iter()
            .map(|s| s.as_str().expect("a string").to_owned())
            .collect(),
        other => panic!("expected a string or a list of strings, found {other}"),
    }
}

/// The read-only SSM actions of the `aws_ssm` source (GetParameter, its batch, and a path for
/// one parameter per field).
const SSM_READS: &[&str] = &[
    "ssm:GetParameter",
    "ssm:GetParameters",
    "ssm:GetParametersByPath",
];

#[test]
fn iam_policy_is_least_privilege() {
    let policy = json("aws/iam-policy.json");
    let statements = policy["Statement"].as_array().expect("Statement list");
    let mut actions = BTreeSet::new();
    let mut regions = BTreeSet::new();
    for st in statements {
        assert_eq!(st["Effect"], "Allow");
        for forbidden in ["NotAction", "NotResource", "NotPrincipal"] {
            assert!(
                st.get(forbidden).is_none(),
                "{forbidden} is not least privilege"
            );
        }
        let acts = strings(&st["Action"]);
        let resources = strings(&st["Resource"]);
        // BatchGetSecretValue has no resource-level permission: it is granted on "*" alone,
        // and each secret it returns still needs GetSecretValue on that secret's ARN.
        let batch_only = acts == ["secretsmanager:BatchGetSecretValue"];
        assert!(
            batch_only || !resources.iter().any(|r| r == "*"),
            "Resource \"*\" in {st}"
        );
        for a in &acts {
            assert!(
                a == "secretsmanager:GetSecretValue"
                    || a == "secretsmanager:BatchGetSecretValue"
                    || a == "kms:Decrypt"
                    || SSM_READS.contains(&a.as_str())
                    || qlik_rotator::state::dynamodb::IAM_ACTIONS.contains(&a.as_str()),
                "action {a} is not needed"
            );
            actions.insert(a.clone());
        }
        if acts.iter().any(|a| a.starts_with("dynamodb:")) {
            // The state table only: its ARN, no wildcard, no index, no other table.
            assert!(acts.iter().all(|a| a.starts_with("dynamodb:")), "{st}");
            assert_eq!(resources.len(), 1, "one table: {st}");
            let parts: Vec<_> = resources[0].splitn(6, ':').collect();
            assert!(
                parts.len() == 6
                    && parts[..3] == ["arn", "aws", "dynamodb"]
                    && !resources[0].contains('*')
                    && parts[5] == format!("table/{}", state_table_name()),
                "dynamodb resource {} is not the state table's ARN",
                resources[0]
            );
            regions.insert(parts[3].to_owned());
        }
        if !batch_only && acts.iter().any(|a| a.starts_with("secretsmanager:")) {
            for r in &resources {
                let parts: Vec<_> = r.splitn(7, ':').collect();
                assert!(
                    parts.len() == 7
                        && parts[..3] == ["arn", "aws", "secretsmanager"]
                        && parts[5] == "secret"
                        && !parts[3].contains('*')
                        && !parts[4].contains('*')
                        && !parts[6].is_empty()
                        && parts[6] != "*",
                    "secretsmanager resource {r} is too broad"
                );
                regions.insert(parts[3].to_owned());
            }
        }
        if acts.iter().any(|a| a.starts_with("ssm:")) {
            for r in &resources {
                let parts: Vec<_> = r.splitn(6, ':').collect();
                assert!(
                    parts.len() == 6
                        && parts[..3] == ["arn", "aws", "ssm"]
                        && !parts[3].contains('*')
                        && !parts[4].contains('*')
                        && parts[5].starts_with("parameter/")
                        && parts[5].len() > "parameter/*".len(),
                    "ssm resource {r} is too broad"
                );
                regions.insert(parts[3].to_owned());
            }
        }
        if acts.iter().any(|a| a.starts_with("kms:")) {
            assert!(resources.iter().all(|r| r.starts_with("arn:aws:kms:")));
            let via = st["Condition"]
                .as_object()
                .into_iter()
                .flat_map(|ops| ops.values())
                .find_map(|o| o.get("kms:ViaService"))
                .unwrap_or_else(|| panic!("kms statement without kms:ViaService: {st}"));
            for v in strings(via) {
                let region = v
                    .strip_prefix("secretsmanager.")
                    .or_else(|| v.strip_prefix("ssm."))
                    .and_then(|r| r.strip_suffix(".amazonaws.com"))
                    .unwrap_or_else(|| panic!("kms:ViaService {v}"));
                regions.insert(region.to_owned());
            }
        }
    }
    let mut expected = BTreeSet::from([
        "kms:Decrypt".to_owned(),
        "secretsmanager:BatchGetSecretValue".to_owned(),
        "secretsmanager:GetSecretValue".to_owned(),
    ]);
    expected.extend(SSM_READS.iter().map(|a| (*a).to_owned()));
    expected.extend(
        qlik_rotator::state::dynamodb::IAM_ACTIONS
            .iter()
            .map(|a| (*a).to_owned()),
    );
    assert_eq!(actions, expected);
    // The secrets, the KMS condition and the sample configs name one region.
    for (what, (_, config)) in [
        ("configmap", configmap_config()),
        ("systemd", systemd_config()),
    ] {
        if let Some(r) = settings(&config).aws_region {
            regions.insert(r);
        } else {
            panic!("{what} config: set the AWS source's region (it must match the policy)");
        }
    }
    assert_eq!(regions.len(), 1, "regions differ: {regions:?}");
}

// ---------------------------------------------------------------------------------------------
// Metric names and label values used by the rules and the dashboard
// ---------------------------------------------------------------------------------------------

/// Every `qlik_rotator_*` identifier in `text`, as written.
fn metric_identifiers(text: &str, out: &mut BTreeSet<String>) {
    const PREFIX: &str = "qlik_rotator_";
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (i, _) in text.match_indices(PREFIX) {
        if text[..i].chars().next_back().is_some_and(ident) {
            continue; // part of a longer identifier
        }
        let end = text[i..]
            .find(|c: char| !ident(c))
            .map_or(text.len(), |n| i + n);
        out.insert(text[i..end].to_owned());
    }
}

/// Every `qlik_rotator_*` name in rules.yml and the Grafana dashboard, as written (with
/// histogram suffixes).
fn metric_names_as_written() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    metric_identifiers(&read(&deploy("prometheus/rules.yml")), &mut names);
    metric_identifiers(&read(&deploy("grafana/qlik-rotator.json")), &mut names);
    names
}

/// Every `qlik_rotator_*` metric used by rules.yml and the Grafana dashboard, with the
/// `_bucket`/`_sum`/`_count` suffixes of histogram series stripped to the base name.
fn metric_names_used() -> BTreeSet<String> {
    metric_names_as_written()
        .into_iter()
        .map(|n| {
            HISTOGRAM_SUFFIXES
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .map_or(n.clone(), str::to_owned)
        })
        .collect()
}

#[test]
fn metric_names_used_are_declared() {
    let exported = exported_metrics();
    let declared: BTreeMap<&str, MetricType> =
        exported.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    let used = metric_names_used();
    let undeclared: Vec<_> = used
        .iter()
        .filter(|n| !declared.contains_key(n.as_str()))
        .collect();
    assert!(
        undeclared.is_empty(),
        "metrics used by the rules or the dashboard but not exported: {undeclared:?}"
    );
    // Suffixes only on histograms (a counter's `_count` would be a typo, not a series).
    for name in metric_names_as_written() {
        if let Some(base) = HISTOGRAM_SUFFIXES.iter().find_map(|s| name.strip_suffix(s)) {
            assert_eq!(
                declared.get(base),
                Some(&MetricType::Histogram),
                "{name}: only histograms have _bucket/_sum/_count series"
            );
        } else {
            assert_ne!(
                declared.get(name.as_str()),
                Some(&MetricType::Histogram),
                "{name}: a histogram is queried through _bucket/_sum/_count"
            );
        }
    }
    // The dashboard shows every metric the daemon exports.
    let mut dashboard = BTreeSet::new();
    metric_identifiers(&read(&deploy("grafana/qlik-rotator.json")), &mut dashboard);
    let dashboard: BTreeSet<_> = dashboard
        .into_iter()
        .map(|n| {
            HISTOGRAM_SUFFIXES
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .map_or(n.clone(), str::to_owned)
        })
        .collect();
    let missing: Vec<_> = declared
        .keys()
        .filter(|n| !dashboard.contains(**n) && !NOT_ON_DASHBOARD.contains(n))
        .collect();
    assert!(missing.is_empty(), "not on the dashboard: {missing:?}");
}

/// Every PromQL expression of the rules and the dashboard.
fn promql_expressions() -> Vec<String> {
    fn walk(v: &Json, out: &mut Vec<String>) {
        match v {
            Json::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr", Json::String(s)) => out.push(s.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            Json::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out: Vec<String> = alerting_rules()
        .iter()
        .map(|r| ystr(&r["expr"], "expr").to_owned())
        .collect();
    walk(&json("grafana/qlik-rotator.json"), &mut out);
    out
}

#[test]
fn label_values_used_are_declared() {
    for expr in promql_expressions() {
        for (label, allowed) in DECLARED_LABEL_VALUES {
            for (i, _) in expr.match_indices(label) {
                let before = expr[..i].chars().next_back();
                if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
                    continue;
                }
                let rest = expr[i + label.len()..].trim_start();
                let Some(rest) = rest
                    .strip_prefix("=~")
                    .or_else(|| rest.strip_prefix("!~"))
                    .or_else(|| rest.strip_prefix("!="))
                    .or_else(|| rest.strip_prefix('='))
                else {
                    continue; // e.g. `by (outcome)`
                };
                let value = rest
                    .trim_start()
                    .strip_prefix('"')
                    .and_then(|r| r.split_once('"'))
                    .map(|(v, _)| v)
                    .unwrap_or_else(|| panic!("cannot read the {label} matcher in {expr}"));
                for v in value.split('|') {
                    assert!(
                        allowed.contains(&v),
                        "{label}=\"{v}\" is not a declared value (in {expr})"
                    );
                }
            }
        }
    }
}

#[test]
fn dashboard_queries_are_valid_promql() {
    // promtool has no expression checker: check the queries as recording rules.
    let rules: Vec<Yaml> = promql_expressions()
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr
                .replace("$__rate_interval", "5m")
                .replace("$instance", ".*")
                .replace("$rotation_job", ".*")
                .replace("$tenant", ".*");
            assert!(!expr.contains('$'), "unknown variable in {expr}");
            let mut m = serde_yaml_ng::Mapping::new();
            m.insert("record".into(), format!("dashboard:query_{i}").into());
            m.insert("expr".into(), expr.into());
            Yaml::Mapping(m)
        })
        .collect();
    let mut group = serde_yaml_ng::Mapping::new();
    group.insert("name".into(), "dashboard".into());
    group.insert("rules".into(), Yaml::Sequence(rules));
    let mut file = serde_yaml_ng::Mapping::new();
    file.insert("groups".into(), Yaml::Sequence(vec![Yaml::Mapping(group)]));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard_queries.yml");
    std::fs::write(&path, serde_yaml_ng::to_string(&file).unwrap()).unwrap();
    run_ok(Command::new(promtool()).args(["check", "rules"]).arg(&path));
}

#[test]
fn dashboard_uses_the_datasource_variable() {
    let d = json("grafana/qlik-rotator.json");
    let vars = d["templating"]["list"].as_array().expect("templating");
    assert!(
        vars.iter()
            .any(|v| v["name"] == "DS_PROMETHEUS" && v["type"] == "datasource"),
        "a datasource variable DS_PROMETHEUS"
    );
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 8);
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(
            p["datasource"]["uid"], "${DS_PROMETHEUS}",
            "panel {}",
            p["title"]
        );
        for t in p["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}");
        }
    }
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "duplicate panel id"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// CloudFormation templates in deploy/aws: [events] plumbing (EventBridge rule -> SQS + DLQ,
// IAM), the DynamoDB state table and its IAM statement, and the Kubernetes HA overlay
// ---------------------------------------------------------------------------------------------

/// `cfn-lint` from the venv of scripts/setup-deploy-tools.sh.
fn cfn_lint() -> PathBuf {
    let venv = std::env::var_os("QLIK_ROTATOR_DEPLOY_VENV")
        .map_or_else(|| root().join(".venv-deploy"), PathBuf::from);
    let bin = venv.join("bin").join("cfn-lint");
    assert!(
        bin.is_file(),
        "cfn-lint not found at {}: run `bash scripts/setup-deploy-tools.sh` (scripts/test.sh does)",
        bin.display()
    );
    bin
}

#[test]
fn events_template_passes_cfn_lint() {
    let out = Command::new(cfn_lint())
        .arg(deploy("aws/events.yaml"))
        .output()
        .expect("run cfn-lint");
    assert!(out.status.success(), "cfn-lint:\n{}", output_text(&out));
}

#[test]
fn events_template_forwards_what_the_consumer_reads() {
    let t = yaml("aws/events.yaml");
    let pattern = &t["Resources"]["SecretChangedRule"]["Properties"]["EventPattern"];
    let names: BTreeSet<&str> = yseq(&pattern["detail"]["eventName"], "eventName")
        .iter()
        .map(|n| ystr(n, "eventName"))
        .collect();
    let mut want: BTreeSet<&str> = qlik_rotator::triggers::sqs::API_CALLS.into_iter().collect();
    want.insert("RotationSucceeded");
    assert_eq!(names, want);
    // A failing message must reach the DLQ: a redrive policy on the queue.
    let queue = &t["Resources"]["EventsQueue"]["Properties"];
    assert!(!queue["RedrivePolicy"]["maxReceiveCount"].is_null());
    assert!(!queue["RedrivePolicy"]["deadLetterTargetArn"].is_null());
    // The consumer's actions, and no others on the queues.
    let policy = &t["Resources"]["ConsumerPolicy"]["Properties"]["PolicyDocument"]["Statement"];
    let mut actions = BTreeSet::new();
    for st in yseq(policy, "Statement") {
        assert_eq!(ystr(&st["Effect"], "Effect"), "Allow");
        for a in yseq(&st["Action"], "Action")
            .iter()
            .map(|a| ystr(a, "Action"))
        {
            actions.insert(a.to_owned());
        }
    }
    assert_eq!(
        actions,
        BTreeSet::from(
            [
                "secretsmanager:BatchGetSecretValue",
                "sqs:DeleteMessage",
                "sqs:GetQueueAttributes",
                "sqs:GetQueueUrl",
                "sqs:ReceiveMessage",
            ]
            .map(str::to_owned)
        )
    );
}
fn state_table_template() -> Yaml {
    yaml("aws/state-table.yaml")
}

/// The table name the template creates by default.
fn state_table_name() -> String {
    ystr(
        &state_table_template()["Parameters"]["TableName"]["Default"],
        "Parameters.TableName.Default",
    )
    .to_owned()
}

#[test]
fn state_table_template_passes_cfn_lint_and_a_broken_copy_does_not() {
    run_ok(Command::new(cfn_lint()).arg(deploy("aws/state-table.yaml")));
    // The check can fail: the same template with a wrong billing mode and key type.
    let broken = read(&deploy("aws/state-table.yaml"))
        .replace("BillingMode: PAY_PER_REQUEST", "BillingMode: ON_DEMAND")
        .replace("KeyType: RANGE", "KeyType: SORT");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.yaml");
    std::fs::write(&path, broken).unwrap();
    let out = Command::new(cfn_lint()).arg(&path).output().unwrap();
    let text = output_text(&out);
    assert!(
        !out.status.success(),
        "cfn-lint accepted a broken template\n{text}"
    );
    assert!(
        text.contains("ON_DEMAND") && text.contains("SORT"),
        "{text}"
    );
}

#[test]
fn state_table_agrees_with_the_backend() {
    use qlik_rotator::state::dynamodb::{PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE, is_table_name};
    let t = state_table_template();
    let table = &t["Resources"]["StateTable"];
    assert_eq!(ystr(&table["Type"], "Type"), "AWS::DynamoDB::Table");
    assert_eq!(table["DeletionPolicy"].as_str(), Some("Retain"));
    assert_eq!(table["UpdateReplacePolicy"].as_str(), Some("Retain"));
    let p = &table["Properties"];
    assert_eq!(p["BillingMode"].as_str(), Some("PAY_PER_REQUEST"));
    let keys: BTreeSet<(String, String)> = yseq(&p["KeySchema"], "KeySchema")
        .iter()
        .map(|k| {
            (
                ystr(&k["AttributeName"], "AttributeName").to_owned(),
                ystr(&k["KeyType"], "KeyType").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            (PARTITION_KEY.to_owned(), "HASH".to_owned()),
            (SORT_KEY.to_owned(), "RANGE".to_owned())
        ])
    );
    let defs: BTreeSet<(String, String)> = yseq(&p["AttributeDefinitions"], "AttributeDefinitions")
        .iter()
        .map(|d| {
            (
                ystr(&d["AttributeName"], "AttributeName").to_owned(),
                ystr(&d["AttributeType"], "AttributeType").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        defs,
        BTreeSet::from([
            (PARTITION_KEY.to_owned(), "S".to_owned()),
            (SORT_KEY.to_owned(), "S".to_owned())
        ])
    );
    assert_eq!(
        p["TimeToLiveSpecification"]["AttributeName"].as_str(),
        Some(TTL_ATTRIBUTE)
    );
    assert_eq!(
        p["TimeToLiveSpecification"]["Enabled"].as_bool(),
        Some(true)
    );
    assert_eq!(
        p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"].as_bool(),
        Some(true)
    );
    assert!(is_table_name(&state_table_name()));
}

fn ha(rel: &str) -> Yaml {
    yaml(&format!("kubernetes/ha/{rel}"))
}

/// The HA overlay's ConfigMap patch: its config.toml, as text and as a table.
fn ha_config() -> (String, toml::Table) {
    let cm = ha("configmap-patch.yaml");
    let text = ystr(
        &cm["data"]["config.toml"],
        "ConfigMap patch data.config.toml",
    )
    .to_owned();
    let table = toml_table(&text, "the HA ConfigMap's config.toml");
    (text, table)
}

#[test]
fn ha_overlay_builds_on_the_base_and_patches_its_objects() {
    let k = ha("kustomization.yaml");
    let base = yaml("kubernetes/kustomization.yaml");
    assert_eq!(
        k["namespace"], base["namespace"],
        "same namespace as the base"
    );
    let resources: Vec<&str> = yseq(&k["resources"], "resources")
        .iter()
        .map(|r| ystr(r, "resource"))
        .collect();
    assert!(
        resources.iter().any(|r| r.trim_end_matches('/') == ".."),
        "the overlay's resources include the base (../): {resources:?}"
    );
    let mut files: BTreeSet<String> = resources
        .iter()
        .filter(|r| r.trim_end_matches('/') != "..")
        .map(|r| (*r).to_owned())
        .collect();
    // Every patch names an object of the base by kind and name.
    for patch in yseq(&k["patches"], "patches") {
        let file = ystr(&patch["path"], "patch path");
        files.insert(file.to_owned());
        let p = ha(file);
        let target = match ystr(&p["kind"], "kind") {
            "Deployment" => manifest("kubernetes/deployment.yaml", "Deployment"),
            "ConfigMap" => manifest("kubernetes/configmap.yaml", "ConfigMap"),
            "PersistentVolumeClaim" => manifest("kubernetes/pvc.yaml", "PersistentVolumeClaim"),
            other => panic!("{file}: patches a {other}, which the base does not have"),
        };
        assert_eq!(p["metadata"]["name"], target["metadata"]["name"], "{file}");
        assert_eq!(p["apiVersion"], target["apiVersion"], "{file}");
    }
    // Every YAML file of the overlay is used.
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(deploy("kubernetes/ha")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            present.insert(name);
        }
    }
    assert_eq!(
        files, present,
        "ha/kustomization.yaml resources and patches"
    );
}

#[test]
fn ha_deployment_is_replicated_rolling_spread_and_budgeted() {
    let base = manifest("kubernetes/deployment.yaml", "Deployment");
    let patch = ha("deployment-patch.yaml");
    let replicas = patch["spec"]["replicas"].as_u64().expect("replicas");
    assert!(replicas >= 2, "replicas {replicas}");
    let strategy = &patch["spec"]["strategy"];
    assert_eq!(strategy["type"].as_str(), Some("RollingUpdate"));
    assert_eq!(
        strategy["rollingUpdate"]["maxUnavailable"].as_u64(),
        Some(0)
    );
    assert!(strategy["rollingUpdate"]["maxSurge"].as_u64() >= Some(1));
    // The patch changes no container: image, probes and security stay the base's.
    assert!(
        patch["spec"]["template"]["spec"]
            .get("containers")
            .is_none()
    );
    // The state volume: the base's ReadWriteOnce claim cannot be shared by the replicas, so
    // each pod gets an emptyDir (DynamoDB holds the state) and the claim is deleted.
    let base_state = volume(&base, "state");
    let state = yseq(
        &patch["spec"]["template"]["spec"]["volumes"],
        "patch volumes",
    )
    .iter()
    .find(|v| v["name"].as_str() == Some("state"))
    .expect("the patch replaces the state volume");
    if base_state.get("persistentVolumeClaim").is_some() {
        assert!(
            state
                .get("persistentVolumeClaim")
                .is_some_and(Yaml::is_null),
            "the patch must remove the base's persistentVolumeClaim: {state:?}"
        );
        let claim = ystr(
            &base_state["persistentVolumeClaim"]["claimName"],
            "claimName",
        );
        let delete = ha("pvc-delete.yaml");
        assert_eq!(delete["metadata"]["name"].as_str(), Some(claim));
        assert_eq!(delete["$patch"].as_str(), Some("delete"));
    }
    assert!(state.get("emptyDir").is_some(), "{state:?}");
    let pod_labels = base["spec"]["template"]["metadata"]["labels"]
        .as_mapping()
        .expect("pod labels");
    let matches_pods = |selector: &Yaml, what: &str| {
        let m = selector["matchLabels"]
            .as_mapping()
            .unwrap_or_else(|| panic!("{what}"));
        assert!(!m.is_empty(), "{what}: empty selector");
        for (k, v) in m {
            assert_eq!(pod_labels.get(k), Some(v), "{what} selects the pods");
        }
    };
    let anti = yseq(
        &patch["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"],
        "podAntiAffinity",
    );
    let topologies: BTreeSet<&str> = anti
        .iter()
        .map(|t| {
            matches_pods(&t["podAffinityTerm"]["labelSelector"], "podAntiAffinity");
            ystr(&t["podAffinityTerm"]["topologyKey"], "topologyKey")
        })
        .collect();
    assert!(
        topologies.contains("kubernetes.io/hostname"),
        "{topologies:?}"
    );
    let pdb = ha("poddisruptionbudget.yaml");
    assert_eq!(ystr(&pdb["kind"], "kind"), "PodDisruptionBudget");
    assert_eq!(ystr(&pdb["apiVersion"], "apiVersion"), "policy/v1");
    matches_pods(&pdb["spec"]["selector"], "PodDisruptionBudget");
    let min = pdb["spec"]["minAvailable"].as_u64().expect("minAvailable");
    assert!(
        min >= 1 && min < replicas,
        "minAvailable {min} must keep one replica and still allow a drain ({replicas} replicas)"
    );
}

#[test]
fn ha_config_passes_check_config() {
    let (text, _) = ha_config();
    check_config(&text, "deploy/kubernetes/ha/configmap-patch.yaml");
}

#[test]
fn ha_config_differs_from_the_base_only_by_a_dynamodb_state() {
    let (_, base) = configmap_config();
    let (_, mut ha_cfg) = ha_config();
    let state = ha_cfg
        .remove("state")
        .expect("the HA config has a [state] table");
    assert_eq!(ha_cfg, base, "everything but [state] is the base's config");
    assert_eq!(
        state.get("backend").and_then(|v| v.as_str()),
        Some("dynamodb")
    );
    assert_eq!(
        state.get("table").and_then(|v| v.as_str()),
        Some(state_table_name().as_str()),
        "the table deploy/aws/state-table.yaml creates"
    );
    assert!(
        base.get("state")
            .is_none_or(|s| s.get("backend").and_then(|v| v.as_str()) != Some("dynamodb"))
    );
    // Its region is the one of the IAM statement on the table.
    let region = state
        .get("region")
        .and_then(|v| v.as_str())
        .expect("[state] region");
    let policy = json("aws/iam-policy.json");
    let arn = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| {
            strings(&s["Action"])
                .iter()
                .any(|a| a.starts_with("dynamodb:"))
        })
        .map(|s| strings(&s["Resource"]).remove(0))
        .expect("a dynamodb statement");
    assert_eq!(arn.split(':').nth(3), Some(region), "{arn}");
}
