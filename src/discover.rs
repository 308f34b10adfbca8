//! Discovery and coverage: `connections` lists the tenant's data connections with their space
//! name, connector, whether the catalogue can rotate them and which job manages them;
//! `coverage` reports credential-bearing connections without a job and jobs whose connection
//! no longer exists.
//!
//! Both lists are read with [`crate::qlik::listing`] (paged, capped by [`Limits`], each
//! refusal a clear [`DiscoverError`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::process::ExitCode;

use serde::Serialize;

use crate::config::{Config, ConnectionRef, JobConfig};
use crate::connectors::Connector;
use crate::qlik::client::QlikClient;
use crate::qlik::model::{DataConnection, Space};
use crate::text;

/// Longest name or id printed, in characters.
const MAX_CELL: usize = 120;

/// The paged listings (Qlik API only), in [`crate::qlik::listing`] so that
/// [`crate::rotation`] can resolve a space name without importing this module.
pub use crate::qlik::listing::{DiscoverError, Limits, all_connections, all_spaces, resolve_space};

/// One connection as `connections` shows it. Every string is outside text made printable
/// ([`text::printable`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    /// `qID`.
    pub id: String,
    /// `qName`.
    pub name: String,
    /// Space id (`""` for a personal connection).
    pub space_id: String,
    /// Space name (`""` when personal or not visible to the caller).
    pub space: String,
    /// `datasourceID`.
    pub connector: String,
    /// The catalogue has a rotation scheme for the connector.
    pub rotatable: bool,
    /// Carries a credential: the catalogue knows the connector, or it uses separate
    /// credentials.
    pub credential_bearing: bool,
    /// The jobs whose `connection`/`connections` name it.
    pub jobs: Vec<String>,
}

/// Whether `r` (a job's reference) names `c`, whose space is named `space_name`.
fn refers_to(r: &ConnectionRef, c: &DataConnection, space_name: &str) -> bool {
    match r {
        ConnectionRef::Id(id) => id.eq_ignore_ascii_case(&c.id),
        ConnectionRef::Name { name, space } => {
            *name == c.name
                && space.as_deref().is_none_or(|s| {
                    let sid = c.space.as_deref().unwrap_or("");
                    s == sid || (!space_name.is_empty() && s == space_name)
                })
        }
    }
}

/// The rows of `connections`, in the order listed.
pub fn rows(jobs: &[JobConfig], conns: &[DataConnection], spaces: &[Space]) -> Vec<Row> {
    let names: BTreeMap<&str, &str> = spaces
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    conns
        .iter()
        .map(|c| {
            let sid = c.space.as_deref().unwrap_or("");
            let sname = names.get(sid).copied().unwrap_or("");
            let rotatable = Connector::lookup(&c.datasource_id).is_some();
            let jobs = jobs
                .iter()
                .filter(|j| j.connections.iter().any(|r| refers_to(r, c, sname)))
                .map(|j| j.name.clone())
                .collect();
            Row {
                id: text::printable(&c.id, MAX_CELL),
                name: text::printable(&c.name, MAX_CELL),
                space_id: text::printable(sid, MAX_CELL),
                space: text::printable(sname, MAX_CELL),
                connector: text::printable(&c.datasource_id, MAX_CELL),
                rotatable,
                credential_bearing: rotatable || c.separate_credentials,
                jobs,
            }
        })
        .collect()
}

/// What `coverage` reports.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Coverage {
    /// Credential-bearing connections.
    pub credential_bearing: usize,
    /// Of those, the ones some job manages.
    pub managed: usize,
    /// `managed / credential_bearing` in percent (100 when there is none).
    pub percent: f64,
    /// Unmanaged credential-bearing connections per space name (`""`: personal or unknown).
    pub unmanaged_by_space: BTreeMap<String, Vec<Row>>,
    /// Jobs with a connection reference that matches no listed connection: `(job, reference)`.
    pub orphaned: Vec<Orphan>,
}

/// A job's reference that names no existing connection.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Orphan {
    /// The job.
    pub job: String,
    /// The reference as configured (`id …` or `name "…" in space …`).
    pub connection: String,
}

/// Coverage of `conns` (all the tenant's connections) by `jobs`.
pub fn coverage(jobs: &[JobConfig], conns: &[DataConnection], spaces: &[Space]) -> Coverage {
    let rows = rows(jobs, conns, spaces);
    let names: BTreeMap<&str, &str> = spaces
        .iter()
        .map(|s| (s.id.as_str(), s.name.as_str()))
        .collect();
    let bearing: Vec<&Row> = rows.iter().filter(|r| r.credential_bearing).collect();
    let managed = bearing.iter().filter(|r| !r.jobs.is_empty()).count();
    let mut unmanaged_by_space: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    for r in bearing.iter().filter(|r| r.jobs.is_empty()) {
        let key = if r.space.is_empty() {
            r.space_id.clone()
        } else {
            r.space.clone()
        };
        unmanaged_by_space
            .entry(key)
            .or_default()
            .push((*r).clone());
    }
    let mut orphaned = Vec::new();
    for j in jobs {
        for r in &j.connections {
            let found = conns.iter().any(|c| {
                let sname = names
                    .get(c.space.as_deref().unwrap_or(""))
                    .copied()
                    .unwrap_or("");
                refers_to(r, c, sname)
            });
            if !found {
                orphaned.push(Orphan {
                    job: j.name.clone(),
                    connection: text::printable(&r.to_string(), MAX_CELL),
                });
            }
        }
    }
    let percent = if bearing.is_empty() {
        100.0
    } else {
        (managed as f64) * 100.0 / (bearing.len() as f64)
    };
    Coverage {
        credential_bearing: bearing.len(),
        managed,
        percent,
        unmanaged_by_space,
        orphaned,
    }
}

/// A CSV cell safe to open in a spreadsheet: a cell starting with `=`, `+`, `-` or `@` (a
/// formula) gets a leading `'` (OWASP, CSV injection). Quoting is the csv crate's.
pub fn csv_cell(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    }
}

/// `rows` as CSV (header first).
///
/// # Errors
/// An I/O error of `out`.
pub fn write_csv(rows: &[Row], out: impl Write) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record([
        "id",
        "name",
        "space_id",
        "space",
        "connector",
        "rotatable",
        "credential_bearing",
        "jobs",
    ])?;
    for r in rows {
        w.write_record([
            csv_cell(&r.id),
            csv_cell(&r.name),
            csv_cell(&r.space_id),
            csv_cell(&r.space),
            csv_cell(&r.connector),
            r.rotatable.to_string(),
            r.credential_bearing.to_string(),
            csv_cell(&r.jobs.join(" ")),
        ])?;
    }
    w.flush()
}

/// `rows` as an aligned table (header first).
pub fn table(rows: &[Row]) -> String {
    let header = ["ID", "NAME", "SPACE", "CONNECTOR", "ROTATABLE", "JOB"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.id.clone(),
                r.name.clone(),
                if r.space.is_empty() {
                    r.space_id.clone()
                } else {
                    r.space.clone()
                },
                r.connector.clone(),
                if r.rotatable { "yes" } else { "no" }.to_owned(),
                if r.jobs.is_empty() {
                    "-".to_owned()
                } else {
                    r.jobs.join(",")
                },
            ]
        })
        .collect();
    let mut width = header.map(str::len);
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(width).enumerate() {
            if i + 1 == row.len() {
                s.push_str(c);
            } else {
                s.push_str(c);
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(&header.map(str::to_owned));
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// Builds the client and reads spaces and connections; prints why not (exit 64 for a
/// credential or space problem, 1 for the tenant).
async fn read_tenant(
    cfg: &Config,
    input: &dyn crate::config::ConfigInput,
    space: Option<&str>,
) -> Result<(Vec<DataConnection>, Vec<Space>), ExitCode> {
    let client = crate::app::qlik_client(cfg, input).map_err(|e| {
        eprintln!("error: {}", text::Escaped(&e.to_string()));
        ExitCode::from(crate::exit::EXIT_USAGE)
    })?;
    let fail = |e: DiscoverError| {
        eprintln!("error: {}", text::Escaped(&e.to_string()));
        let code = match e {
            DiscoverError::UnknownSpace(_) | DiscoverError::AmbiguousSpace { .. } => {
                crate::exit::EXIT_USAGE
            }
            _ => crate::exit::EXIT_FAILED,
        };
        ExitCode::from(code)
    };
    let limits = Limits::default();
    let spaces = all_spaces(&client, limits).await.map_err(fail)?;
    let space_id = match space {
        Some(s) => Some(resolve_space(&spaces, s).map_err(fail)?),
        None => None,
    };
    let conns = all_connections(&client, space_id.as_deref(), limits)
        .await
        .map_err(fail)?;
    Ok((conns, spaces))
}

/// `connections [--space NAME|ID] [--connector ID] [--output table|json|csv]`.
pub async fn connections_command(
    path: &std::path::Path,
    space: Option<&str>,
    connector: Option<&str>,
    output: crate::cli::ListOutput,
    input: &dyn crate::config::ConfigInput,
) -> ExitCode {
    let cfg = match crate::app::load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (conns, spaces) = match read_tenant(&cfg, input, space).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let conns: Vec<DataConnection> = conns
        .into_iter()
        .filter(|c| connector.is_none_or(|k| c.datasource_id == k))
        .collect();
    let rows = rows(&cfg.jobs, &conns, &spaces);
    match output {
        crate::cli::ListOutput::Table => print!("{}", table(&rows)),
        crate::cli::ListOutput::Json => match serde_json::to_string_pretty(&rows) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(crate::exit::EXIT_FAILED);
            }
        },
        crate::cli::ListOutput::Csv => {
            if let Err(e) = write_csv(&rows, std::io::stdout().lock()) {
                eprintln!("error: cannot write CSV: {e}");
                return ExitCode::from(crate::exit::EXIT_FAILED);
            }
        }
    }
    ExitCode::SUCCESS
}

/// `coverage [--fail-under PCT] [--output text|json]`: exit 1 when the coverage is below
/// `fail_under`.
pub async fn coverage_command(
    path: &std::path::Path,
    fail_under: Option<f64>,
    output: crate::cli::ConnectorsOutput,
    input: &dyn crate::config::ConfigInput,
) -> ExitCode {
    let cfg = match crate::app::load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let (conns, spaces) = match read_tenant(&cfg, input, None).await {
        Ok(t) => t,
        Err(code) => return code,
    };
    let cov = coverage(&cfg.jobs, &conns, &spaces);
    match output {
        crate::cli::ConnectorsOutput::Json => match serde_json::to_string_pretty(&cov) {
            Ok(s) => println!("{s}"),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(crate::exit::EXIT_FAILED);
            }
        },
        crate::cli::ConnectorsOutput::Text => print!("{}", coverage_text(&cov)),
    }
    match fail_under {
        Some(min) if cov.percent < min => {
            eprintln!(
                "error: coverage {:.1}% is under --fail-under {min}%",
                cov.percent
            );
            ExitCode::from(crate::exit::EXIT_FAILED)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// The text report of `coverage`.
pub fn coverage_text(cov: &Coverage) -> String {
    let mut out = format!(
        "coverage: {:.1}% ({} of {} credential-bearing connections have a job)\n",
        cov.percent, cov.managed, cov.credential_bearing
    );
    for (space, rows) in &cov.unmanaged_by_space {
        let shown = if space.is_empty() {
            "(personal)"
        } else {
            space.as_str()
        };
        out.push_str(&format!("unmanaged in space {shown}: {}\n", rows.len()));
        for r in rows {
            out.push_str(&format!("  {}  {}  {}\n", r.id, r.name, r.connector));
        }
    }
    for o in &cov.orphaned {
        out.push_str(&format!(
            "job {} names a connection that does not exist: {}\n",
            text::printable(&o.job, MAX_CELL),
            o.connection
        ));
    }
    out
}

/// How often the daemon repeats its coverage scan.
pub const SCAN_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The daemon's coverage scan: once now, then every [`SCAN_EVERY`] and whenever `rescan` is
/// notified (a reload changed the jobs), until `cancel`; `jobs` gives the running jobs at each
/// scan. Each result (or failure) is a [`crate::events::CoverageScanned`] event (log line and
/// the `unmanaged_connections` gauge). Reads only, through the client's read budget.
pub async fn scan_loop(
    client: std::sync::Arc<QlikClient>,
    jobs: impl Fn() -> Vec<JobConfig>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    rescan: std::sync::Arc<tokio::sync::Notify>,
    cancel: tokio_util::sync::CancellationToken,
) {
    use crate::events::{CoverageScanned, Event as _};
    loop {
        let scan = async {
            let spaces = all_spaces(&client, Limits::default()).await?;
            let conns = all_connections(&client, None, Limits::default()).await?;
            Ok::<_, DiscoverError>(coverage(&jobs(), &conns, &spaces))
        };
        let result = tokio::select! {
            r = scan => r,
            () = cancel.cancelled() => return,
        };
        match result {
            Ok(c) => CoverageScanned {
                credential_bearing: c.credential_bearing,
                unmanaged: c.credential_bearing - c.managed,
                orphaned: c.orphaned.len(),
                error: None,
            }
            .emit(Some(&metrics)),
            Err(e) => {
                let msg = text::printable(&e.to_string(), 500);
                CoverageScanned {
                    credential_bearing: 0,
                    unmanaged: 0,
                    orphaned: 0,
                    error: Some(&msg),
                }
                .emit(Some(&metrics));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SCAN_EVERY) => {}
            () = rescan.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_starting_a_formula_are_prefixed() {
        for s in ["=1+1", "+1", "-1", "@SUM(A1)"] {
            assert_eq!(csv_cell(s), format!("'{s}"), "{s}");
        }
        assert_eq!(csv_cell("plain"), "plain");
        let rows = vec![Row {
            id: "id,1".into(),
            name: "=HYPERLINK(\"x\")".into(),
            space_id: String::new(),
            space: "a\"b".into(),
            connector: "mssql".into(),
            rotatable: true,
            credential_bearing: true,
            jobs: vec![],
        }];
        let mut buf = Vec::new();
        write_csv(&rows, &mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        assert!(text.contains("\"id,1\""), "{text}");
        assert!(text.contains("\"'=HYPERLINK(\"\"x\"\")\""), "{text}");
        assert!(text.contains("\"a\"\"b\""), "{text}");
    }

    #[test]
    fn space_names_resolve_once_and_refuse_ambiguity() {
        let sp = |id: &str, name: &str| Space {
            id: id.into(),
            name: name.into(),
            kind: None,
        };
        let spaces = vec![sp("s1", "Finance"), sp("s2", "Sales"), sp("s3", "Sales")];
        assert_eq!(resolve_space(&spaces, "s1").unwrap(), "s1");
        assert_eq!(resolve_space(&spaces, "Finance").unwrap(), "s1");
        assert!(matches!(
            resolve_space(&spaces, "finance"),
            Err(DiscoverError::UnknownSpace(_))
        ));
        let e = resolve_space(&spaces, "Sales").unwrap_err();
        assert_eq!(e.error_type(), "ambiguous_space");
        assert!(e.to_string().contains("\"s2\", \"s3\""), "{e}");
    }
}
