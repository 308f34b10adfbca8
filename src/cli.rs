//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

/// qlik-rotator keeps the credentials of Qlik Cloud data connections fresh.
///
/// It reads the current secret from a vault (AWS Secrets Manager or a local directory), sends
/// a credential-only JSON Patch to each data connection, and verifies the result with a
/// follow-up GET.
///
/// Start with `qlik-rotator demo` (no setup needed), then write a config like
/// config/example.toml and try `check-config`, `plan` and `rotate`.
#[derive(Debug, Parser)]
#[command(name = "qlik-rotator", version, about, long_about, after_help = EXIT_CODES)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value = "pretty", global = true)]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

const EXIT_CODES: &str = "Exit codes: 0 success · 1 a job failed (or a runtime error) · 64 invalid configuration or usage (EX_USAGE), or an unusable state directory · 69 a dependency unavailable at start: the listen port is in use, or every failure of a one-shot command was an unreachable vault or tenant (EX_UNAVAILABLE) · 75 the state directory is in use by another qlik-rotator · 78 credentials missing or refused at run time: the Qlik API key or OAuth secret unreadable or answered 401, or no AWS credentials (EX_CONFIG).\nLogs go to stderr (RUST_LOG=debug for more; --log-format json for one JSON object per line, fatal errors included); results go to stdout (--output json for one JSON document).";

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a configuration file; lists every error with its key, and checks that every
    /// environment variable and file it names exists (values are never printed). Touches no
    /// network unless --online is given: then each connection is pre-flighted and each secret
    /// read once, its key names checked against the job's connector.
    CheckConfig {
        #[command(flatten)]
        config: ConfigArg,
        /// Also run pre-flight against the tenant: every connection is resolved, grants the
        /// update privilege, and has the job's connector.
        #[arg(long, conflicts_with = "syntax_only")]
        online: bool,
        /// Validate the file only: do not check that the environment variables and files it
        /// names exist (for CI, away from the host that runs the rotator).
        #[arg(long)]
        syntax_only: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// Run the daemon: rotate each job on its schedule when its secret version changes,
    /// export Prometheus metrics, reload the [[jobs]] on SIGHUP, and shut down gracefully on
    /// SIGTERM/SIGINT.
    Run(ConfigArg),
    /// Show what `rotate` would send: reads each secret and connection, prints the PATCH
    /// document with every value masked. Sends nothing.
    Plan {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this job (default: all jobs).
        #[arg(long)]
        job: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// The audit trail: past attempts from the state database, newest first. Reads it
    /// read-only (works while the daemon runs); never sends anything.
    History(HistoryArgs),
    /// The state of each job and connection: last attempt, last success, last error (stage,
    /// type), the secret version applied, the credential's age and the next due time. Reads
    /// the state store read-only (works while the daemon runs); never sends anything.
    Status(StatusArgs),
    /// Rotate now (one-shot): fetch → PATCH → verify, one line per job.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        /// The job to rotate.
        #[arg(long, conflicts_with_all = ["all", "secret"], required_unless_present_any = ["all", "secret"])]
        job: Option<String>,
        /// Rotate every job.
        #[arg(long, conflicts_with = "secret")]
        all: bool,
        /// Rotate every job whose secret is ID (a secret name or ARN; an ARN matches a job
        /// that names the secret, and the other way round).
        #[arg(long, value_name = "ID")]
        secret: Option<String>,
        /// Skip jobs whose secret version was already applied (as the daemon does).
        #[arg(long)]
        if_changed: bool,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the connector catalogue: every datasourceID with its schemes, the Qlik properties
    /// each writes, the default secret keys and fixed values.
    Connectors {
        /// `text` (for people) or `json`: {"schema": "qlik-rotator.connectors/v1",
        /// "connectors": [{datasourceID, schemes: [{name, properties: [{name, type}]}]}]}, one
        /// entry per datasourceID (DG_ variants included), `type` being the JSON type the
        /// rotator writes (for scripts such as scripts/conformance.sh).
        #[arg(long, value_enum, default_value = "text")]
        output: ConnectorsOutput,
    },
    /// Read a connector's api-specs from the tenant and print its properties, their types,
    /// which look like credentials, and a job snippet to paste (for connectors the catalogue
    /// does not know: connector = "generic").
    DescribeConnector {
        /// The datasourceID, e.g. "postgres" or "sfdc".
        datasource: String,
        #[command(flatten)]
        config: ConfigArg,
        /// The tenant to read it from (a `[tenants.NAME]` name; `default` with `[qlik]`).
        /// Required when the file declares several tenants.
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        #[command(flatten)]
        output: OutputArg,
    },
    /// List the tenant's data connections: id, name, space, connector, whether the catalogue
    /// can rotate it and which job manages it. Reads only (paged, under the read budget).
    Connections {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this tenant (a `[tenants.NAME]` name; `default` with `[qlik]`). Default: every
        /// tenant, in name order.
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// Only this space (a space name or id).
        #[arg(long, value_name = "NAME|ID")]
        space: Option<String>,
        /// Only this connector (datasourceID).
        #[arg(long, value_name = "ID")]
        connector: Option<String>,
        /// `table`, `json` (an array of objects) or `csv` (formula-safe).
        #[arg(long, value_enum, default_value = "table")]
        output: ListOutput,
    },
    /// Credential-bearing connections without a job (per space) and jobs whose connection no
    /// longer exists. Exit 1 when the share of managed connections is under --fail-under.
    Coverage {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this tenant (a `[tenants.NAME]` name; `default` with `[qlik]`). Default: every
        /// tenant, in name order.
        #[arg(long, value_name = "NAME")]
        tenant: Option<String>,
        /// Fail (exit 1) when coverage is below this percentage (in any tenant).
        #[arg(long, value_name = "PCT")]
        fail_under: Option<f64>,
        /// `text` or `json`.
        #[arg(long, value_enum, default_value = "text")]
        output: ConnectorsOutput,
    },
    /// Run a full rotation against a built-in simulated Qlik tenant and a local file vault.
    /// Needs no configuration, network or credentials.
    Demo,
    /// Serve a simulated Qlik tenant over HTTP (the demo tenant, or --tenant FILE) to try a
    /// configuration without a tenant. The API key comes from QLIK_SIM_API_KEY; prints the URL
    /// on stdout; stops on SIGTERM/SIGINT.
    Simulate(SimulateArgs),
    /// Print a shell completion script on stdout, e.g.
    /// `qlik-rotator completions bash > /etc/bash_completion.d/qlik-rotator`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, e.g. `qlik-rotator man | man -l -`, or with --dir
    /// write qlik-rotator.1 and one page per command into DIR.
    Man {
        /// Write the pages into this directory instead of printing the main page.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `simulate` options.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Address to listen on (IP:PORT); port 0 picks a free port. Loopback unless
    /// --allow-remote.
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// JSON file with the connections, api-specs and data credentials to serve (format: README,
    /// example: crates/qlik-sim/sim-tenant.json). Default: the demo tenant.
    #[arg(long, value_name = "FILE")]
    pub tenant: Option<PathBuf>,
    /// Allow a non-loopback --listen address.
    #[arg(long)]
    pub allow_remote: bool,
}

/// `-c FILE`.
/// Arguments of `history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Only this connection (its id, or the configured reference when it was never resolved).
    #[arg(long)]
    pub connection: Option<String>,
    /// Only attempts within this long ago ("30m", "12h", "7d").
    #[arg(long, value_name = "DURATION", value_parser = parse_since)]
    pub since: Option<std::time::Duration>,
    /// At most this many rows.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub limit: u32,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: HistoryOutput,
}

/// Arguments of `status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub config: ConfigArg,
    /// Only this job.
    #[arg(long)]
    pub job: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub output: HistoryOutput,
}

/// `--output` of `history` and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HistoryOutput {
    /// Aligned columns, text escaped.
    Table,
    /// One JSON document (`schema` first).
    Json,
}

/// `--since`: a duration such as "30m", "12h", "7d" (up to ten years).
fn parse_since(s: &str) -> Result<std::time::Duration, String> {
    crate::walk::parse_duration(s)
        .filter(|d| !d.is_zero() && d.as_secs() <= 3650 * 86_400)
        .ok_or_else(|| {
            format!(
                "expected a duration such as \"30m\", \"12h\" or \"7d\" (up to 3650d), found {}",
                crate::text::quoted(s, 40)
            )
        })
}

#[derive(Debug, Args)]
pub struct ConfigArg {
    /// Path of the TOML configuration file (see config/example.toml). Any key can be
    /// overridden with QLIK_ROTATOR__SECTION__KEY environment variables.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
}

/// Output format of a command's result on stdout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON document (a top-level object with a `schema` field; README, Output for
    /// scripts); logs and errors stay on stderr.
    Json,
}

/// Output format of `connectors` (the same choice as every other command).
pub type ConnectorsOutput = OutputFormat;

/// `--output text|json`.
#[derive(Debug, Clone, Copy, Args)]
pub struct OutputArg {
    /// `text` (for people) or `json` (one JSON document on stdout, for scripts; its `schema`
    /// field names the format and version).
    #[arg(long, value_enum, default_value = "text")]
    pub output: OutputFormat,
}

impl OutputArg {
    /// Whether JSON was asked for.
    pub fn json(self) -> bool {
        self.output == OutputFormat::Json
    }
}

/// Output format of `connections`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListOutput {
    /// Aligned columns.
    Table,
    /// A JSON array.
    Json,
    /// CSV with a header row.
    Csv,
}
