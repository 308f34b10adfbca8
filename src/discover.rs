//! Discovery and coverage: `connections` lists the tenants' data connections with their space
//! name, connector, whether the catalogue can rotate them and which job manages them;
//! `coverage` reports credential-bearing connections without a job and jobs whose connection
//! no longer exists. Both read every tenant (in name order) or the one `--tenant` names; a
//! job manages a connection only in its target's tenant (ids and names are unique only
//! within a tenant).
//!
//! Both lists are read with [`crate::qlik::listing`] (paged, capped by [`Limits`], each
//! refusal a clear [`DiscoverError`]).

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::process::ExitCode;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, ConnectionRef, JobConfig, QlikConfig};
use crate::connectors::Connector;
use crate::exit::{EXIT_FAILED, EXIT_USAGE};
use crate::qlik::client::QlikClient;
use crate::qlik::model::{DataConnection, Space};
use crate::text;

/// Longest name or id printed, in characters.
const MAX_CELL: usize = 120;

/// The paged listings (Qlik API only), in [`crate::qlik::listing`] so that
/// [`crate::rotation`] can resolve a space name without importing this module.
pub use crate::qlik::listing::{
    DiscoverError, Limits, all_connections, all_spaces, each_connection, resolve_space,
};

/// One connection as `connections` shows it. Every string is outside text made printable
/// ([`text::printable`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Row {
    /// Its tenant; only when the configuration declares `[tenants.NAME]` (without, the
    /// output is as before tenants).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
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
    /// The jobs whose `connection`/`connections` name it (in its tenant).
    pub jobs: Vec<String>,
}

/// One tenant's connections and spaces, as read.
#[derive(Debug, Clone)]
pub struct Listing {
    /// The tenant's name.
    pub tenant: Arc<str>,
    /// Whether rows and orphans name the tenant (the file declares `[tenants.NAME]`).
    pub labelled: bool,
    /// Its connections.
    pub conns: Vec<DataConnection>,
    /// Its spaces.
    pub spaces: Vec<Space>,
}

impl Listing {
    /// The tenant as a row shows it.
    fn label(&self) -> Option<String> {
        self.labelled
            .then(|| text::printable(&self.tenant, MAX_CELL))
    }
}

/// Whether a reference by name with `space` (as written: an id or a name; `None`: any
/// space) names `c`, whose space is named `space_name`. The names are compared by the caller.
fn in_space(space: Option<&str>, c: &DataConnection, space_name: &str) -> bool {
    space.is_none_or(|s| {
        let sid = c.space.as_deref().unwrap_or("");
        s == sid || (!space_name.is_empty() && s == space_name)
    })
}

/// The space names by space id (the first space of an id wins).
fn space_names(spaces: &[Space]) -> HashMap<&str, &str> {
    let mut out = HashMap::with_capacity(spaces.len());
    for s in spaces {
        out.entry(s.id.as_str()).or_insert(s.name.as_str());
    }
    out
}

/// The name of the space `c` sits in (`""` when personal or unknown), from [`space_names`].
fn space_of<'a>(names: &HashMap<&str, &'a str>, c: &DataConnection) -> &'a str {
    names
        .get(c.space.as_deref().unwrap_or(""))
        .copied()
        .unwrap_or("")
}

/// The jobs' references into one tenant, indexed by id (lower-cased) and by name, so that
/// matching a tenant's connections against every job is O(connections + references), not
/// their product (10,000 of each took seconds of CPU per coverage scan). It owns what it
/// holds, so the daemon's scan can keep it while pages arrive.
struct RefIndex {
    /// Lower-cased id → references (indexes into `refs`).
    by_id: HashMap<String, Vec<usize>>,
    /// Name → `(reference, space as written)`.
    by_name: HashMap<String, Vec<(usize, Option<String>)>>,
    /// Every reference into the tenant, in configuration order: `(job, target index)`.
    refs: Vec<(usize, usize)>,
}

impl RefIndex {
    fn new<J: Borrow<JobConfig>>(jobs: &[J], tenant: &str) -> Self {
        let mut index = RefIndex {
            by_id: HashMap::new(),
            by_name: HashMap::new(),
            refs: Vec::new(),
        };
        for (i, job) in jobs.iter().enumerate() {
            let targets = job.borrow().connections.iter().enumerate();
            for (k, t) in targets.filter(|(_, t)| &*t.tenant == tenant) {
                let r = index.refs.len();
                index.refs.push((i, k));
                match &t.conn {
                    ConnectionRef::Id(id) => {
                        let key = id.to_ascii_lowercase();
                        index.by_id.entry(key).or_default().push(r);
                    }
                    ConnectionRef::Name { name, space } => {
                        let entry = index.by_name.entry(name.clone()).or_default();
                        entry.push((r, space.clone()));
                    }
                }
            }
        }
        index
    }

    /// The `(job, reference)` pairs that name `c` (in `space_name`).
    fn matches<'s>(
        &'s self,
        c: &'s DataConnection,
        space_name: &'s str,
    ) -> impl Iterator<Item = (usize, usize)> + 's {
        let by_id = self.by_id.get(&c.id.to_ascii_lowercase());
        let by_name = (self.by_name.get(c.name.as_str()).into_iter().flatten())
            .filter(move |(_, space)| in_space(space.as_deref(), c, space_name))
            .map(|(r, _)| *r);
        (by_id.into_iter().flatten().copied())
            .chain(by_name)
            .map(|r| (self.refs[r].0, r))
    }

    /// The indexes of the jobs that name `c` (in `space_name`), in configuration order.
    fn jobs_of(&self, c: &DataConnection, space_name: &str) -> Vec<usize> {
        let mut out: Vec<usize> = self.matches(c, space_name).map(|(i, _)| i).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// [`coverage`]'s counts over connections that arrive one at a time: the daemon's scan
/// keeps no connection and builds no row (10,000 connections held with their rows were
/// ~7 MiB of its start-up peak).
struct Tally<'s> {
    index: RefIndex,
    names: HashMap<&'s str, &'s str>,
    /// Per reference of `index`: whether a connection it names was seen.
    found: Vec<bool>,
    credential_bearing: usize,
    managed: usize,
}

/// What a [`Tally`] counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Credential-bearing connections.
    pub credential_bearing: usize,
    /// Of those, the ones some job manages.
    pub managed: usize,
    /// Job references that match no connection.
    pub orphaned: usize,
}

impl<'s> Tally<'s> {
    /// A tally of `jobs`' references into `tenant`, whose spaces are `spaces`.
    pub fn new<J: Borrow<JobConfig>>(jobs: &[J], tenant: &str, spaces: &'s [Space]) -> Self {
        let index = RefIndex::new(jobs, tenant);
        Tally {
            found: vec![false; index.refs.len()],
            index,
            names: space_names(spaces),
            credential_bearing: 0,
            managed: 0,
        }
    }

    /// Counts `c`.
    pub fn add(&mut self, c: &DataConnection) {
        let mut managed = false;
        for (_, r) in self.index.matches(c, space_of(&self.names, c)) {
            self.found[r] = true;
            managed = true;
        }
        if Connector::lookup(&c.datasource_id).is_some() || c.separate_credentials {
            self.credential_bearing += 1;
            self.managed += usize::from(managed);
        }
    }

    /// The references that named no connection seen: `(job, target index)`.
    fn orphans(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        (self.index.refs.iter().zip(&self.found))
            .filter(|(_, found)| !**found)
            .map(|(r, _)| *r)
    }

    /// The counts.
    pub fn counts(&self) -> Counts {
        Counts {
            credential_bearing: self.credential_bearing,
            managed: self.managed,
            orphaned: self.orphans().count(),
        }
    }
}

/// The rows of `connections` for one tenant, in the order listed.
pub fn rows<J: Borrow<JobConfig>>(jobs: &[J], listing: &Listing) -> Vec<Row> {
    let index = RefIndex::new(jobs, &listing.tenant);
    let names = space_names(&listing.spaces);
    (listing.conns.iter())
        .map(|c| {
            let sid = c.space.as_deref().unwrap_or("");
            let sname = space_of(&names, c);
            let rotatable = Connector::lookup(&c.datasource_id).is_some();
            let jobs = (index.jobs_of(c, sname).into_iter())
                .map(|i| jobs[i].borrow().name.clone())
                .collect();
            Row {
                tenant: listing.label(),
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

/// What `coverage` reports (for one tenant).
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
    /// The reference's tenant; only with `[tenants.NAME]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The job.
    pub job: String,
    /// The reference as configured (`id …` or `name "…" in space …`).
    pub connection: String,
}

/// Coverage of `listing` (all of one tenant's connections) by `jobs`: only the job targets
/// in that tenant count.
pub fn coverage<J: Borrow<JobConfig>>(jobs: &[J], listing: &Listing) -> Coverage {
    let rows = rows(jobs, listing);
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
    let orphaned = orphans(jobs, listing);
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

/// The references of `jobs` into `listing`'s tenant that name no listed connection (through
/// the same index as the daemon's [`Tally`], so the command and the gauge agree).
fn orphans<J: Borrow<JobConfig>>(jobs: &[J], listing: &Listing) -> Vec<Orphan> {
    let mut tally = Tally::new(jobs, &listing.tenant, &listing.spaces);
    listing.conns.iter().for_each(|c| tally.add(c));
    (tally.orphans())
        .map(|(i, k)| {
            let job = jobs[i].borrow();
            Orphan {
                tenant: listing.label(),
                job: job.name.clone(),
                connection: text::printable(&job.connections[k].conn.to_string(), MAX_CELL),
            }
        })
        .collect()
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

/// The cells of a row, its tenant first when `labelled`.
fn cells(r: &Row, labelled: bool) -> Vec<String> {
    let mut out = Vec::with_capacity(9);
    if labelled {
        out.push(r.tenant.clone().unwrap_or_default());
    }
    out.extend([
        r.id.clone(),
        r.name.clone(),
        r.space_id.clone(),
        r.space.clone(),
        r.connector.clone(),
        r.rotatable.to_string(),
        r.credential_bearing.to_string(),
        r.jobs.join(" "),
    ]);
    out
}

/// `rows` as CSV (header first), with a `tenant` column first when `labelled`.
///
/// # Errors
/// An I/O error of `out`.
pub fn write_csv(rows: &[Row], labelled: bool, out: impl Write) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    let header = [
        "id",
        "name",
        "space_id",
        "space",
        "connector",
        "rotatable",
        "credential_bearing",
        "jobs",
    ];
    let tenant = labelled.then_some("tenant");
    w.write_record(tenant.into_iter().chain(header))?;
    for r in rows {
        w.write_record(cells(r, labelled).iter().map(|c| csv_cell(c)))?;
    }
    w.flush()
}

/// `rows` as an aligned table (header first), with a `TENANT` column first when `labelled`.
pub fn table(rows: &[Row], labelled: bool) -> String {
    let mut header = vec!["ID", "NAME", "SPACE", "CONNECTOR", "ROTATABLE", "JOB"];
    if labelled {
        header.insert(0, "TENANT");
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut row = vec![
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
            ];
            if labelled {
                row.insert(0, r.tenant.clone().unwrap_or_default());
            }
            row
        })
        .collect();
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |row: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in row.iter().zip(&width).enumerate() {
            s.push_str(c);
            if i + 1 < row.len() {
                s.push_str(&" ".repeat(w - c.chars().count() + 2));
            }
        }
        s.trim_end().to_owned()
    };
    let header: Vec<String> = header.into_iter().map(str::to_owned).collect();
    let mut out = line(&header);
    out.push('\n');
    for row in &cells {
        out.push_str(&line(row));
        out.push('\n');
    }
    out
}

/// Which connections `connections` lists.
#[derive(Debug, Default, Clone, Copy)]
pub struct Filter<'a> {
    /// `--tenant`: only this tenant (else every tenant, in name order).
    pub tenant: Option<&'a str>,
    /// `--space`: only this space (a space id or name).
    pub space: Option<&'a str>,
    /// `--connector`: only this `datasourceID`.
    pub connector: Option<&'a str>,
}

/// The tenants `--tenant` selects: the one it names, or every tenant in name order. An
/// unknown name is an error naming the flag, with "did you mean" and the known tenants.
///
/// # Errors
/// The message, to print with exit 64.
pub fn select_tenants<'a>(
    cfg: &'a Config,
    tenant: Option<&str>,
) -> Result<Vec<&'a QlikConfig>, String> {
    match tenant {
        None => Ok(cfg.tenants.iter().collect()),
        Some(name) => match cfg.tenant(name) {
            Some(t) => Ok(vec![t]),
            None => Err(format!("--tenant: {}", cfg.unknown_tenant(name))),
        },
    }
}

/// What reading the selected tenants gave: each tenant read in full, and each that failed
/// (its name and the escaped error, already printed on stderr).
#[derive(Debug, Default)]
struct Read {
    listings: Vec<Listing>,
    failed: Vec<(Arc<str>, String)>,
}

impl Read {
    /// Records (and prints) that `tenant`'s read failed.
    fn fail(&mut self, cfg: &Config, tenant: &Arc<str>, e: &DiscoverError) {
        let msg = text::escape(&e.to_string()).into_owned();
        eprintln!("error: {}{msg}", prefix(cfg, tenant));
        self.failed.push((tenant.clone(), msg));
    }

    /// The exit code of a command that printed what was read.
    fn code(&self) -> ExitCode {
        if self.failed.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(EXIT_FAILED)
        }
    }
}

/// `tenant NAME: ` before a message, with `[tenants.NAME]`; nothing with `[qlik]`.
fn prefix(cfg: &Config, tenant: &str) -> String {
    if cfg.multi_tenant {
        format!("tenant {tenant}: ")
    } else {
        String::new()
    }
}

/// Selects the tenants and builds their clients before anything is sent: an unknown
/// `--tenant` or an unreadable credential exits 64.
fn clients(
    cfg: &Config,
    input: &dyn crate::config::ConfigInput,
    tenant: Option<&str>,
) -> Result<Vec<(Arc<str>, QlikClient)>, ExitCode> {
    let usage = |msg: &str| {
        eprintln!("error: {}", text::Escaped(msg));
        ExitCode::from(EXIT_USAGE)
    };
    let selected = select_tenants(cfg, tenant).map_err(|m| usage(&m))?;
    (selected.into_iter())
        .map(|t| {
            crate::app::tenant_client(t, input)
                .map(|c| (t.name.clone(), c))
                .map_err(|e| usage(&e.to_string()))
        })
        .collect()
}

/// Reads spaces and connections of each selected tenant, in name order; a tenant whose read
/// fails is printed and recorded, and the others are still read. `--space` is resolved in
/// each tenant: an ambiguous name, or a name no tenant has, exits 64 before any connection
/// is listed; with several tenants, one without the space lists nothing.
async fn read_tenants(
    cfg: &Config,
    input: &dyn crate::config::ConfigInput,
    tenant: Option<&str>,
    space: Option<&str>,
) -> Result<Read, ExitCode> {
    let clients = clients(cfg, input, tenant)?;
    let limits = Limits::default();
    let mut read = Read::default();
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for (name, client) in &clients {
        let spaces = match all_spaces(client, limits).await {
            Ok(s) => s,
            Err(e) => {
                read.fail(cfg, name, &e);
                continue;
            }
        };
        match space.map(|s| resolve_space(&spaces, s)).transpose() {
            Ok(id) => found.push((name, client, spaces, id)),
            Err(e @ DiscoverError::UnknownSpace(_)) => unknown.push((name, e)),
            Err(e) => {
                eprintln!(
                    "error: {}{}",
                    prefix(cfg, name),
                    text::Escaped(&e.to_string())
                );
                return Err(ExitCode::from(EXIT_USAGE));
            }
        }
    }
    if found.is_empty() && !unknown.is_empty() {
        for (name, e) in &unknown {
            eprintln!(
                "error: {}{}",
                prefix(cfg, name),
                text::Escaped(&e.to_string())
            );
        }
        let code = if read.failed.is_empty() {
            EXIT_USAGE
        } else {
            EXIT_FAILED
        };
        return Err(ExitCode::from(code));
    }
    for (name, client, spaces, space_id) in found {
        match all_connections(client, space_id.as_deref(), limits).await {
            Ok(conns) => read.listings.push(Listing {
                tenant: name.clone(),
                labelled: cfg.multi_tenant,
                conns,
                spaces,
            }),
            Err(e) => read.fail(cfg, name, &e),
        }
    }
    Ok(read)
}

/// Prints `doc` as pretty JSON on stdout.
fn print_json(doc: &impl Serialize) -> Result<(), ExitCode> {
    match serde_json::to_string_pretty(doc) {
        Ok(s) => {
            println!("{s}");
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_FAILED))
        }
    }
}

/// `connections [--tenant NAME] [--space NAME|ID] [--connector ID] [--output table|json|csv]`.
/// Lists every tenant read; a tenant whose read failed is an error on stderr and exit 1
/// (nothing on stdout when no tenant could be read).
pub async fn connections_command(
    path: &std::path::Path,
    filter: &Filter<'_>,
    output: crate::cli::ListOutput,
    input: &dyn crate::config::ConfigInput,
) -> ExitCode {
    let cfg = match crate::app::load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let mut read = match read_tenants(&cfg, input, filter.tenant, filter.space).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if read.listings.is_empty() {
        return read.code();
    }
    let mut all = Vec::new();
    for l in &mut read.listings {
        l.conns
            .retain(|c| filter.connector.is_none_or(|k| c.datasource_id == k));
        all.extend(rows(&cfg.jobs, l));
    }
    let labelled = cfg.multi_tenant;
    match output {
        crate::cli::ListOutput::Table => print!("{}", table(&all, labelled)),
        crate::cli::ListOutput::Json => {
            if let Err(code) = print_json(&all) {
                return code;
            }
        }
        crate::cli::ListOutput::Csv => {
            if let Err(e) = write_csv(&all, labelled, std::io::stdout().lock()) {
                eprintln!("error: cannot write CSV: {e}");
                return ExitCode::from(EXIT_FAILED);
            }
        }
    }
    read.code()
}

/// One tenant in the `coverage --output json` document of a file with `[tenants.NAME]`:
/// its coverage, or why it could not be read.
#[derive(Debug, Serialize)]
struct TenantCoverage<'a> {
    tenant: &'a str,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    coverage: Option<&'a Coverage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

/// `coverage [--tenant NAME] [--fail-under PCT] [--output text|json]`: exit 1 when a
/// tenant's coverage is below `fail_under`, or a tenant could not be read.
pub async fn coverage_command(
    path: &std::path::Path,
    tenant: Option<&str>,
    fail_under: Option<f64>,
    output: crate::cli::ConnectorsOutput,
    input: &dyn crate::config::ConfigInput,
) -> ExitCode {
    let cfg = match crate::app::load(path, input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let read = match read_tenants(&cfg, input, tenant, None).await {
        Ok(r) => r,
        Err(code) => return code,
    };
    if read.listings.is_empty() {
        return read.code();
    }
    let covs: Vec<(&Arc<str>, Coverage)> = (read.listings.iter())
        .map(|l| (&l.tenant, coverage(&cfg.jobs, l)))
        .collect();
    if let Err(code) = print_coverage(&cfg, &read, &covs, output) {
        return code;
    }
    let mut under = false;
    for (name, cov) in &covs {
        if let Some(min) = fail_under.filter(|min| cov.percent < *min) {
            eprintln!(
                "error: {}coverage {:.1}% is under --fail-under {min}%",
                prefix(&cfg, name),
                cov.percent
            );
            under = true;
        }
    }
    if under {
        ExitCode::from(EXIT_FAILED)
    } else {
        read.code()
    }
}

/// Prints the coverage of each tenant read: as before tenants with `[qlik]`; with
/// `[tenants.NAME]`, JSON `{"tenants": [{tenant, …coverage | error}]}` in name order, text
/// lines each starting `tenant NAME: `.
fn print_coverage(
    cfg: &Config,
    read: &Read,
    covs: &[(&Arc<str>, Coverage)],
    output: crate::cli::ConnectorsOutput,
) -> Result<(), ExitCode> {
    use crate::cli::ConnectorsOutput;
    match (output, cfg.multi_tenant) {
        (ConnectorsOutput::Json, false) => print_json(&covs[0].1),
        (ConnectorsOutput::Text, false) => {
            print!("{}", coverage_text(&covs[0].1));
            Ok(())
        }
        (ConnectorsOutput::Json, true) => {
            let mut tenants: Vec<TenantCoverage<'_>> = (covs.iter())
                .map(|(t, c)| TenantCoverage {
                    tenant: t,
                    coverage: Some(c),
                    error: None,
                })
                .chain(read.failed.iter().map(|(t, e)| TenantCoverage {
                    tenant: t,
                    coverage: None,
                    error: Some(e),
                }))
                .collect();
            tenants.sort_by_key(|t| t.tenant);
            print_json(&serde_json::json!({ "tenants": tenants }))
        }
        (ConnectorsOutput::Text, true) => {
            for (t, c) in covs {
                for line in coverage_text(c).lines() {
                    println!("tenant {t}: {line}");
                }
            }
            Ok(())
        }
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
/// notified (a reload changed the jobs), until `cancel`; `jobs` calls its argument with the
/// running jobs at each scan (by reference). Every tenant of `clients` is scanned at once, each through its own client (its read
/// budget), and its jobs' targets in that tenant only; each tenant's result (or failure) is a
/// [`crate::events::CoverageScanned`] event (log line and its `unmanaged_connections`
/// series, labelled with the tenant when `multi_tenant`). A failed tenant keeps its last
/// value and does not hold up the others.
pub async fn scan_loop(
    clients: BTreeMap<Arc<str>, Arc<QlikClient>>,
    multi_tenant: bool,
    jobs: impl Fn(&mut dyn FnMut(&[&JobConfig])),
    metrics: Arc<crate::metrics::Metrics>,
    rescan: Arc<tokio::sync::Notify>,
    cancel: tokio_util::sync::CancellationToken,
) {
    loop {
        let scans = (clients.iter())
            .map(|(tenant, client)| scan_tenant(tenant, client, multi_tenant, &jobs, &metrics));
        tokio::select! {
            _ = futures_util::future::join_all(scans) => {}
            () = cancel.cancelled() => return,
        }
        tokio::select! {
            () = tokio::time::sleep(SCAN_EVERY) => {}
            () = rescan.notified() => {}
            () = cancel.cancelled() => return,
        }
    }
}

/// One tenant's coverage scan, reported as a [`crate::events::CoverageScanned`] event.
async fn scan_tenant(
    tenant: &Arc<str>,
    client: &QlikClient,
    multi_tenant: bool,
    jobs: &impl Fn(&mut dyn FnMut(&[&JobConfig])),
    metrics: &crate::metrics::Metrics,
) {
    use crate::events::{CoverageScanned, Event as _};
    let scan = async {
        let spaces = all_spaces(client, Limits::default()).await?;
        // The jobs are lent for the call only: the tally keeps an index of its own.
        let mut tally = None;
        jobs(&mut |jobs| tally = Some(Tally::new(jobs, tenant, &spaces)));
        let mut tally = tally.expect("the jobs callback runs its argument");
        each_connection(client, Limits::default(), |c| tally.add(c)).await?;
        Ok::<_, DiscoverError>(tally.counts())
    };
    let label = multi_tenant.then_some(&**tenant);
    match scan.await {
        Ok(c) => CoverageScanned {
            tenant: label,
            credential_bearing: c.credential_bearing,
            unmanaged: c.credential_bearing - c.managed,
            orphaned: c.orphaned,
            error: None,
        }
        .emit(Some(metrics)),
        Err(e) => {
            let msg = text::printable(&e.to_string(), 500);
            CoverageScanned {
                tenant: label,
                credential_bearing: 0,
                unmanaged: 0,
                orphaned: 0,
                error: Some(&msg),
            }
            .emit(Some(metrics));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Five jobs (by id, by name in a space id, in a space name, with no space, and one whose
    /// space does not exist) and the listing of `tenant`: three connections in two spaces.
    fn match_fixture() -> (crate::config::Config, impl Fn(&str) -> Listing) {
        let job = |name: &str, conn: &str| {
            format!(
                "[[jobs]]\nname = \"{name}\"\nconnection = {conn}\nconnector = \"mssql\"\n\
                 source = \"f\"\nsecret = \"s\"\nallow_shared_connection = true\n"
            )
        };
        let text = format!(
            "[qlik]\ntenant_url = \"https://t.eu.qlikcloud.com\"\napi_key_env = \"K\"\n\
             [sources.f]\ntype = \"file\"\npath = \"/v\"\n{}{}{}{}{}",
            job("by-id", "{ id = \"AAAAAAAA-0000-4000-8000-000000000001\" }"),
            job("by-space-id", "{ name = \"DB\", space = \"s1\" }"),
            job("by-space-name", "{ name = \"DB\", space = \"Sales\" }"),
            job("by-name", "{ name = \"Other\" }"),
            job("gone", "{ name = \"DB\", space = \"nowhere\" }"),
        );
        let cfg = crate::config::load_str(&text, std::path::Path::new("/"), &HashMap::new())
            .expect("valid config");
        let conn = move |id: &str, name: &str, space: &str| -> DataConnection {
            serde_json::from_value(serde_json::json!({
                "qID": id, "qName": name, "datasourceID": "mssql", "space": space
            }))
            .unwrap()
        };
        let listing = move |tenant: &str| Listing {
            tenant: tenant.into(),
            labelled: false,
            conns: vec![
                conn("aaaaaaaa-0000-4000-8000-000000000001", "DB", "s1"),
                conn("aaaaaaaa-0000-4000-8000-000000000002", "DB", "s2"),
                conn("aaaaaaaa-0000-4000-8000-000000000003", "Other", "s2"),
            ],
            spaces: vec![
                Space {
                    id: "s1".into(),
                    name: "Finance".into(),
                    kind: None,
                },
                Space {
                    id: "s2".into(),
                    name: "Sales".into(),
                    kind: None,
                },
            ],
        };
        (cfg, listing)
    }

    /// The indexed matching of [`rows`] and [`coverage`] gives what a scan of every job per
    /// connection gave: ids case-insensitively, names with a space id, a space name or no
    /// space, one job naming two connections, nothing across tenants.
    #[test]
    fn jobs_match_connections_by_id_and_by_name_in_a_space() {
        let (cfg, listing) = match_fixture();
        let got: Vec<Vec<String>> = rows(&cfg.jobs, &listing("default"))
            .into_iter()
            .map(|r| r.jobs)
            .collect();
        assert_eq!(
            got,
            [
                vec!["by-id".to_owned(), "by-space-id".to_owned()],
                vec!["by-space-name".to_owned()],
                vec!["by-name".to_owned()],
            ]
        );
        let cov = coverage(&cfg.jobs.iter().collect::<Vec<_>>(), &listing("default"));
        let orphans: Vec<&str> = cov.orphaned.iter().map(|o| o.job.as_str()).collect();
        assert_eq!(orphans, ["gone"]);
        assert_eq!((cov.credential_bearing, cov.managed), (3, 3));
        // Another tenant's listing: no job of `default` manages it, none is orphaned there.
        let other = coverage(&cfg.jobs, &listing("b"));
        assert_eq!((other.managed, other.orphaned.len()), (0, 0));
    }

    /// The daemon's tally, fed one connection at a time, counts what `coverage` reports
    /// (managed, orphaned, and after a connection is gone, unmanaged and orphaned).
    #[test]
    fn the_daemons_tally_counts_what_coverage_reports() {
        let (cfg, listing) = match_fixture();
        for tenant in ["default", "b"] {
            let l = listing(tenant);
            let cov = coverage(&cfg.jobs, &l);
            let mut tally = Tally::new(&cfg.jobs, tenant, &l.spaces);
            l.conns.iter().for_each(|c| tally.add(c));
            let want = Counts {
                credential_bearing: cov.credential_bearing,
                managed: cov.managed,
                orphaned: cov.orphaned.len(),
            };
            assert_eq!(tally.counts(), want, "{tenant}");
        }
        // Drop the connection `by-id` and `by-space-id` name.
        let mut l = listing("default");
        l.conns.remove(0);
        let mut tally = Tally::new(&cfg.jobs, "default", &l.spaces);
        l.conns.iter().for_each(|c| tally.add(c));
        let cov = coverage(&cfg.jobs, &l);
        let want = Counts {
            credential_bearing: 2,
            managed: 2,
            orphaned: 3,
        };
        assert_eq!(tally.counts(), want);
        assert_eq!(cov.orphaned.len(), 3);
        assert_eq!((cov.credential_bearing, cov.managed), (2, 2));
    }

    #[test]
    fn csv_cells_starting_a_formula_are_prefixed() {
        for s in ["=1+1", "+1", "-1", "@SUM(A1)"] {
            assert_eq!(csv_cell(s), format!("'{s}"), "{s}");
        }
        assert_eq!(csv_cell("plain"), "plain");
        let rows = vec![Row {
            tenant: None,
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
        write_csv(&rows, false, &mut buf).unwrap();
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
