//! The simulator's store: connections, credentials, api-specs, tokens, recorded requests and
//! queued faults, plus the request-independent API logic (views, lookup, list, PATCH, PUT).

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Duration as ChronoDuration, Utc};
use serde_json::{Map, Value, json};

use super::limiter::RateLimiter;
use super::patch::{OpKind, PatchOp, apply, json_type, parse_patch_body};
use super::props::{
    ADDRESS_PROPS, SECRET_SCALARS, connect_statement, is_credential_prop, is_true, sanitize,
};
use super::util::{fmt_ts, percent_encode};
use super::{Fault, RecordedRequest, SeedConnection, SeedCredential, SimConfig};

/// Owner reported in `user`.
pub(crate) const SIM_USER: &str = "sim-user-0000000000000001";
/// Tenant reported in `tenant`.
pub(crate) const SIM_TENANT: &str = "sim-tenant-000000000000001";

/// An API error rendered as `{"errors":[{code,title,detail,status}]}` (integer status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) title: String,
    pub(crate) detail: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, title: &str, detail: Option<String>) -> Self {
        ApiError {
            status,
            code: code.to_owned(),
            title: title.to_owned(),
            detail,
        }
    }
    pub(crate) fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            400,
            "DCERROR-0010",
            "Bad or invalid request",
            Some(detail.into()),
        )
    }
    pub(crate) fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(403, "DCERROR-0403", "Forbidden", Some(detail.into()))
    }
    pub(crate) fn not_found(detail: impl Into<String>) -> Self {
        Self::new(404, "DCERROR-0404", "Not found", Some(detail.into()))
    }
    pub(crate) fn conflict(title: &str, detail: impl Into<String>) -> Self {
        Self::new(409, "DCERROR-0409", title, Some(detail.into()))
    }
    pub(crate) fn body(&self) -> Value {
        let mut e = json!({"code": self.code, "title": self.title, "status": self.status});
        if let Some(d) = &self.detail {
            e["detail"] = Value::String(d.clone());
        }
        json!({ "errors": [e] })
    }
}

/// A stored data connection.
#[derive(Debug, Clone)]
pub(crate) struct Conn {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) space: Option<String>,
    pub(crate) datasource_id: String,
    pub(crate) q_type: String,
    pub(crate) props: Map<String, Value>,
    pub(crate) privileges: Vec<String>,
    pub(crate) separate: bool,
    pub(crate) credentials_id: Option<String>,
    pub(crate) statement_override: Option<String>,
    pub(crate) q_username: Option<String>,
    pub(crate) q_password: Option<String>,
    pub(crate) connection_secret: Option<String>,
    pub(crate) tags: Vec<Value>,
    pub(crate) created: DateTime<Utc>,
    pub(crate) updated: DateTime<Utc>,
}

impl Conn {
    fn statement(&self) -> String {
        self.statement_override
            .clone()
            .unwrap_or_else(|| connect_statement(&self.q_type, &self.datasource_id, &self.props))
    }

    fn has(&self, privilege: &str) -> bool {
        self.privileges.iter().any(|p| p == privilege)
    }

    /// The patchable document that JSON Patch operations are applied to.
    fn patch_doc(&self) -> Value {
        json!({
            "qName": self.name,
            "tags": self.tags,
            "qConnectStatement": self.statement(),
            "qPassword": self.q_password.clone().unwrap_or_default(),
            "qUsername": self.q_username.clone().unwrap_or_default(),
            "connectionProperties": self.props,
        })
    }
}

/// A stored data credential.
#[derive(Debug, Clone)]
pub(crate) struct Cred {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) q_type: String,
    pub(crate) datasource_id: String,
    pub(crate) username: String,
    pub(crate) password: String,
    pub(crate) reference_key: String,
    pub(crate) connection_id: String,
    pub(crate) created: DateTime<Utc>,
    pub(crate) updated: DateTime<Utc>,
}

/// An issued OAuth access token.
#[derive(Debug, Clone)]
pub(crate) struct Token {
    pub(crate) client_id: String,
    pub(crate) expires: Instant,
}

/// Which representation of a connection to render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    /// List item: no secret, no properties.
    List,
    /// GET one; properties (sanitized) only with `parseConnection=true`.
    Single { parse: bool },
    /// Everything, secrets included (test helper).
    Stored,
}

/// Shared state behind a mutex.
#[derive(Debug)]
pub(crate) struct Shared {
    inner: Mutex<Inner>,
}

impl Shared {
    pub(crate) fn new(cfg: SimConfig, base_url: String) -> Self {
        let window = cfg.rate_window;
        Shared {
            inner: Mutex::new(Inner {
                cfg,
                base_url,
                conns: Vec::new(),
                conn_idx: HashMap::new(),
                creds: Vec::new(),
                cred_idx: HashMap::new(),
                specs: HashMap::new(),
                tokens: HashMap::new(),
                requests: Vec::new(),
                next_seq: 0,
                faults: VecDeque::new(),
                limiter: RateLimiter::new(window),
                token_requests: 0,
                last_ts: DateTime::<Utc>::MIN_UTC,
                world: crate::reloads::World::default(),
                spaces: Vec::new(),
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The mutable simulator state.
#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) cfg: SimConfig,
    pub(crate) base_url: String,
    conns: Vec<Conn>,
    conn_idx: HashMap<String, usize>,
    creds: Vec<Cred>,
    cred_idx: HashMap<String, usize>,
    pub(crate) specs: HashMap<String, Value>,
    pub(crate) tokens: HashMap<String, Token>,
    requests: Vec<(u64, RecordedRequest)>,
    next_seq: u64,
    pub(crate) faults: VecDeque<Fault>,
    pub(crate) limiter: RateLimiter,
    pub(crate) token_requests: usize,
    last_ts: DateTime<Utc>,
    /// Data sources behind connections, apps and their reloads ([`crate::reloads`]).
    pub(crate) world: crate::reloads::World,
    /// Spaces served by `GET /api/v1/spaces` ([`crate::spaces`]).
    pub(crate) spaces: Vec<crate::spaces::SeedSpace>,
}

fn is_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok()
}

fn type_matches(declared: &str, v: &Value) -> bool {
    match declared {
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => true,
    }
}

fn fault_parts(f: &mut Fault) -> (&Option<String>, &Option<String>, &mut u32) {
    match f {
        Fault::Status {
            method,
            path_prefix,
            times,
            ..
        }
        | Fault::RateLimited {
            method,
            path_prefix,
            times,
            ..
        }
        | Fault::Delay {
            method,
            path_prefix,
            times,
            ..
        }
        | Fault::Drop {
            method,
            path_prefix,
            times,
        }
        | Fault::Hostile {
            method,
            path_prefix,
            times,
            ..
        }
        | Fault::WrongBody {
            method,
            path_prefix,
            times,
            ..
        }
        | Fault::IgnoredWrite {
            method,
            path_prefix,
            times,
        }
        | Fault::RewriteFields {
            method,
            path_prefix,
            times,
            ..
        } => (method, path_prefix, times),
    }
}

impl Inner {
    /// A strictly increasing millisecond-precision timestamp.
    pub(crate) fn next_ts(&mut self) -> DateTime<Utc> {
        let now = Utc::now();
        let now = DateTime::from_timestamp_millis(now.timestamp_millis()).unwrap_or(now);
        let ts = if now > self.last_ts {
            now
        } else {
            self.last_ts + ChronoDuration::milliseconds(1)
        };
        self.last_ts = ts;
        ts
    }

    // ----- requests and faults -------------------------------------------------------------

    pub(crate) fn record(&mut self, req: RecordedRequest) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.requests.push((seq, req));
        seq
    }

    pub(crate) fn set_status(&mut self, seq: u64, status: u16) {
        if let Some((_, r)) = self.requests.iter_mut().rev().find(|(s, _)| *s == seq) {
            r.status = status;
        }
    }

    pub(crate) fn requests(&self) -> Vec<RecordedRequest> {
        self.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    pub(crate) fn clear_requests(&mut self) {
        self.requests.clear();
    }

    /// Takes one use of the first queued fault matching the request.
    pub(crate) fn take_fault(&mut self, method: &str, path: &str) -> Option<Fault> {
        let pos = self.faults.iter_mut().position(|f| {
            let (m, p, times) = fault_parts(f);
            *times > 0
                && m.as_deref().is_none_or(|m| m.eq_ignore_ascii_case(method))
                && p.as_deref().is_none_or(|p| path.starts_with(p))
        })?;
        let fault = &mut self.faults[pos];
        let (_, _, times) = fault_parts(fault);
        *times -= 1;
        let exhausted = *times == 0;
        let out = fault.clone();
        if exhausted {
            self.faults.remove(pos);
        }
        Some(out)
    }

    // ----- auth ----------------------------------------------------------------------------

    /// The rate-limit identity behind a bearer token, if the token is valid at `now`.
    pub(crate) fn identity_for(&self, token: &str, now: Instant) -> Option<String> {
        if self.cfg.api_keys.iter().any(|k| k == token) {
            return Some(format!("key:{token}"));
        }
        self.tokens
            .get(token)
            .filter(|t| now < t.expires)
            .map(|t| format!("client:{}", t.client_id))
    }

    // ----- connections ---------------------------------------------------------------------

    pub(crate) fn add_connection(&mut self, seed: SeedConnection) -> String {
        let id = seed.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ts = self.next_ts();
        let conn = Conn {
            id: id.clone(),
            name: seed.name,
            space: seed.space,
            datasource_id: seed.datasource_id,
            q_type: seed.q_type,
            props: seed.properties,
            privileges: seed.privileges,
            separate: seed.separate_credentials,
            credentials_id: Some(uuid::Uuid::new_v4().to_string()),
            statement_override: None,
            q_username: None,
            q_password: None,
            connection_secret: None,
            tags: Vec::new(),
            created: ts,
            updated: ts,
        };
        upsert(&mut self.conns, &mut self.conn_idx, id.clone(), conn);
        id
    }

    fn conn_mut(&mut self, id: &str) -> Option<&mut Conn> {
        let i = *self.conn_idx.get(id)?;
        self.conns.get_mut(i)
    }

    pub(crate) fn set_privileges(&mut self, id: &str, privileges: Vec<String>) {
        if let Some(c) = self.conn_mut(id) {
            c.privileges = privileges;
        }
    }

    pub(crate) fn set_connection_secret(&mut self, id: &str, secret: Option<String>) {
        if let Some(c) = self.conn_mut(id) {
            c.connection_secret = secret;
        }
    }

    pub(crate) fn link_credential(&mut self, connection_id: &str, credential_id: &str) {
        if let Some(c) = self.conn_mut(connection_id) {
            c.credentials_id = Some(credential_id.to_owned());
        }
    }

    pub(crate) fn stored(&self, id: &str) -> Option<Value> {
        let c = &self.conns[*self.conn_idx.get(id)?];
        Some(self.conn_view(c, View::Stored))
    }

    pub(crate) fn conn_view(&self, c: &Conn, view: View) -> Value {
        let mut v = json!({
            "qID": c.id,
            "id": c.id,
            "qEngineObjectID": c.id,
            "qName": c.name,
            "qType": c.q_type,
            "datasourceID": c.datasource_id,
            "qConnectStatement": c.statement(),
            "qSeparateCredentials": c.separate,
            "qLogOn": 0,
            "qArchitecture": 0,
            "space": c.space.clone().unwrap_or_default(),
            "user": SIM_USER,
            "tenant": SIM_TENANT,
            "tags": c.tags,
            "privileges": c.privileges,
            "created": fmt_ts(c.created),
            "updated": fmt_ts(c.updated),
            "version": "V1",
            "links": {"self": {"href": format!("{}/api/v1/data-connections/{}", self.base_url, c.id)}},
        });
        let o = v.as_object_mut().expect("object literal");
        if let Some(cid) = &c.credentials_id {
            o.insert("qCredentialsID".into(), Value::String(cid.clone()));
        }
        match view {
            View::List => {}
            View::Single { parse } => {
                if c.connection_secret.is_some() {
                    o.insert("qConnectionSecret".into(), Value::String("***".into()));
                }
                if parse {
                    o.insert(
                        "connectionProperties".into(),
                        Value::Object(sanitize(&c.props)),
                    );
                }
            }
            View::Stored => {
                o.insert(
                    "connectionProperties".into(),
                    Value::Object(c.props.clone()),
                );
                o.insert("qPassword".into(), json!(c.q_password));
                o.insert("qUsername".into(), json!(c.q_username));
                o.insert("qConnectionSecret".into(), json!(c.connection_secret));
            }
        }
        v
    }

    /// Finds a connection by id or by name within an optional space. `is_get`: GET one's
    /// errors (400 for a non-UUID id and for an ambiguous name) rather than PATCH's.
    fn find_conn(
        &self,
        key: &str,
        by_name: bool,
        space: Option<&str>,
        is_get: bool,
    ) -> Result<usize, ApiError> {
        if !by_name {
            if is_get && !is_uuid(key) {
                return Err(ApiError::bad_request(format!(
                    "qID '{key}' is not a valid UUID"
                )));
            }
            return self
                .conn_idx
                .get(key)
                .copied()
                .ok_or_else(|| ApiError::not_found(format!("Data connection '{key}' not found")));
        }
        let matches: Vec<usize> = self
            .conns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.name == key)
            .filter(|(_, c)| space.is_none_or(|s| c.space.as_deref().unwrap_or("") == s))
            .map(|(i, _)| i)
            .collect();
        let detail = format!(
            "{} connections are named '{key}'; specify spaceId",
            matches.len()
        );
        match matches.as_slice() {
            [] => Err(ApiError::not_found(format!(
                "Data connection named '{key}' not found"
            ))),
            [one] => Ok(*one),
            // [I] Qlik's answer is unknown. `@qlik/api` lists 400/403/404/500 for GET (no 409)
            // and 400/403/404/409 for PATCH (which takes no spaceId); pick from those.
            _ if is_get => Err(ApiError::bad_request(detail)),
            _ => Err(ApiError::conflict("Ambiguous connection name", detail)),
        }
    }

    fn lookup(
        &self,
        key: &str,
        q: &HashMap<String, String>,
        is_get: bool,
    ) -> Result<usize, ApiError> {
        let by_name = q.get("type").is_some_and(|t| t == "connectionname");
        let space = q.get("spaceId").or_else(|| q.get("space"));
        self.find_conn(key, by_name, space.map(String::as_str), is_get)
    }

    pub(crate) fn get_connection(
        &self,
        key: &str,
        q: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let i = self.lookup(key, q, true)?;
        let c = &self.conns[i];
        if !c.has("read") {
            return Err(ApiError::forbidden(format!(
                "No read access to data connection '{}'",
                c.id
            )));
        }
        let parse = q
            .get("parseConnection")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        Ok(self.conn_view(c, View::Single { parse }))
    }

    /// `GET /api/v1/data-connections`: cursor paging, `filter`, `spaceId` and `sort`.
    pub(crate) fn list_connections(
        &self,
        q: &HashMap<String, String>,
        raw_query: Option<&str>,
    ) -> Result<Value, ApiError> {
        let page = ListPage::parse(q)?;
        let items = self.listed_connections(q, &page.clauses)?;
        let total = items.len();
        let data: Vec<Value> = items
            .iter()
            .skip(page.offset)
            .take(page.limit)
            .map(|c| self.conn_view(c, View::List))
            .collect();
        let links = self.list_links(q, raw_query, &page, total);
        Ok(json!({"data": data, "meta": {"count": total}, "links": links}))
    }

    /// The connections a list shows, before paging: listable, in the space, matching every
    /// filter clause, in `sort` order when one is given.
    fn listed_connections(
        &self,
        q: &HashMap<String, String>,
        clauses: &[Clause],
    ) -> Result<Vec<&Conn>, ApiError> {
        let space = q.get("spaceId");
        let mut items: Vec<&Conn> = self
            .conns
            .iter()
            .filter(|c| c.has("list"))
            .filter(|c| space.is_none_or(|s| c.space.as_deref().unwrap_or("") == s))
            .filter(|c| clauses.iter().all(|cl| cl.matches(c)))
            .collect();
        if let Some(sort) = q.get("sort") {
            sort_connections(&mut items, sort)?;
        }
        Ok(items)
    }

    /// The `links` of a list page: `self` as asked, `next` and `prev` when there are such
    /// pages, carrying the limit, a cursor and the `spaceId`, `filter` and `sort` asked for.
    fn list_links(
        &self,
        q: &HashMap<String, String>,
        raw_query: Option<&str>,
        page: &ListPage,
        total: usize,
    ) -> Value {
        let (limit, offset) = (page.limit, page.offset);
        let base = format!("{}/api/v1/data-connections", self.base_url);
        let page_href = |off: usize| {
            let mut s = format!("{base}?limit={limit}&page={}", encode_cursor(off));
            for key in ["spaceId", "filter", "sort"] {
                if let Some(v) = q.get(key) {
                    s.push_str(&format!("&{key}={}", percent_encode(v)));
                }
            }
            s
        };
        let self_href = match raw_query {
            Some(r) if !r.is_empty() => format!("{base}?{r}"),
            _ => base.clone(),
        };
        let mut links = json!({"self": {"href": self_href}});
        if offset + limit < total {
            links["next"] = json!({"href": page_href(offset + limit)});
        }
        if offset > 0 {
            links["prev"] = json!({"href": page_href(offset.saturating_sub(limit))});
        }
        links
    }

    /// `PATCH /api/v1/data-connections/{key}`: validation rules, type checks, atomic apply.
    pub(crate) fn patch_connection(
        &mut self,
        key: &str,
        q: &HashMap<String, String>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let idx = self.lookup(key, q, false)?;
        let c = &self.conns[idx];
        if !c.has("update") {
            return Err(ApiError::forbidden(format!(
                "No update access to data connection '{}'",
                c.id
            )));
        }
        let ops = parse_patch_body(body).map_err(ApiError::bad_request)?;
        check_patchable(&ops)?;
        check_validation_rules(&ops, &c.props)?;
        self.check_against_spec(&c.datasource_id, &ops)?;

        let before = c.patch_doc();
        let mut doc = before.clone();
        for op in &ops {
            apply(&mut doc, op).map_err(ApiError::bad_request)?;
        }
        if doc == before {
            // [assumed] An accepted write that sets the values already stored (e.g. the same
            // secret applied again) is still a write: `updated` ("Datetime when the connection
            // was last updated", S6) advances, as Qlik re-saves the encrypted credential. Only
            // an empty array changes nothing (`test` ops are refused with 400 when parsed).
            // The conformance suite is what settles this against a real tenant.
            if !ops.is_empty() {
                let ts = self.next_ts();
                self.conns[idx].updated = ts;
            }
            return Ok(());
        }
        let patched = Patched::read(&doc)?;
        self.check_rename(idx, &patched.name)?;
        self.store_patched(idx, &before, &doc, patched);
        Ok(())
    }

    /// 409 when connection `idx` would take the name of another connection in its space.
    fn check_rename(&self, idx: usize, name: &str) -> Result<(), ApiError> {
        let c = &self.conns[idx];
        if name != c.name
            && self
                .conns
                .iter()
                .any(|o| o.id != c.id && o.name == name && o.space == c.space)
        {
            return Err(ApiError::conflict(
                "Conflict",
                format!("A data connection named '{name}' already exists in this space"),
            ));
        }
        Ok(())
    }

    /// Stores a checked, patched document (`doc`, from `before`) into connection `idx`.
    fn store_patched(&mut self, idx: usize, before: &Value, doc: &Value, p: Patched) {
        let c = &self.conns[idx];
        let statement_changed = Some(p.statement.as_str()) != before["qConnectStatement"].as_str();
        let props_changed = before.get("connectionProperties") != doc.get("connectionProperties");
        let host_changed = c.props.get("host") != p.props.get("host");
        let cred_name_changed = p.props.get("credentialsName").is_some()
            && c.props.get("credentialsName") != p.props.get("credentialsName");
        let ts = self.next_ts();
        let c = &mut self.conns[idx];
        c.name = p.name;
        c.tags = p.tags;
        if statement_changed {
            c.statement_override = Some(p.statement);
        } else if props_changed {
            c.statement_override = None;
        }
        c.q_password = p.q_password;
        c.q_username = p.q_username;
        if let Some(sep) = p.props.get("separateCredentials") {
            c.separate = is_true(Some(sep));
        }
        c.props = p.props;
        if c.separate && host_changed {
            // S17/S9/S10: a host change disassociates the separate credentials.
            c.credentials_id = None;
        }
        if cred_name_changed {
            // [I] a new credentialsName creates a new credential (S9 pattern).
            c.credentials_id = Some(uuid::Uuid::new_v4().to_string());
        }
        c.updated = ts;
    }

    // ----- create and delete (S1 `DcaasConnectionCreate`, S6, S11, S12) ---------------------

    /// `POST /api/v1/data-connections` in the properties form (`DcaasConnectionCreate`, S1):
    /// `datasourceID` (qlik.dev's examples, S11/S12, spell it `dataSourceId`: both are
    /// accepted), `qName`, `connectionProperties`, optional `space` and `tags`. Returns the
    /// 201 body (`ConnectionCreateResponse`, S1).
    pub(crate) fn create_connection(&mut self, body: &[u8]) -> Result<Value, ApiError> {
        let CreateRequest {
            datasource_id,
            name,
            props,
            space,
            mut tags,
        } = CreateRequest::parse(body)?;
        // [assumed] create does not check the properties against the api-specs, nor reach the
        // data source: what a tenant does is what the conformance suite records.
        if self
            .conns
            .iter()
            .any(|c| c.name == name && c.space == space)
        {
            return Err(ApiError::conflict(
                "Conflict",
                format!("A data connection named '{name}' already exists in this space"),
            ));
        }
        let q_type = super::props::default_q_type(&datasource_id).to_owned();
        // S11/S14 example responses: the properties form tags the connection
        // `DcaasAPI:<qType>:<connector version>`.
        let version = self
            .specs
            .get(&datasource_id)
            .and_then(|s| s.get("connectorVersion"))
            .and_then(Value::as_str)
            .unwrap_or("0.0.0")
            .to_owned();
        tags.push(Value::String(format!("DcaasAPI:{q_type}:{version}")));
        let separate = is_true(props.get("separateCredentials"));
        let id = self.add_connection(SeedConnection {
            id: None,
            name,
            space,
            datasource_id,
            q_type,
            properties: props,
            privileges: super::default_privileges(),
            separate_credentials: separate,
        });
        let c = self.conn_mut(&id).expect("just added");
        c.tags = tags;
        let c = &self.conns[self.conn_idx[&id]];
        let mut v = self.conn_view(c, View::Single { parse: false });
        // `ConnectionCreateResponse` (S1) declares qLogOn as a string, unlike `ConnectionGet`.
        v["qLogOn"] = Value::String("0".into());
        Ok(v)
    }

    /// `DELETE /api/v1/data-connections/{key}` (S1, S6): 204, 404 when unknown (a non-UUID id
    /// is simply not found: S1 lists only 403 and 404), 403 without the `delete` privilege.
    /// `type=connectionname` with `spaceId` selects by name, as for GET. Linked data credentials
    /// are kept (S10: they are not deleted with the connection).
    pub(crate) fn delete_connection(
        &mut self,
        key: &str,
        q: &HashMap<String, String>,
    ) -> Result<(), ApiError> {
        let idx = self.lookup(key, q, false)?;
        if !self.conns[idx].has("delete") {
            return Err(ApiError::forbidden(format!(
                "No delete access to data connection '{}'",
                self.conns[idx].id
            )));
        }
        self.conns.remove(idx);
        self.conn_idx = self
            .conns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        Ok(())
    }

    /// `GET /api/v1/data-sources` (S4/S8, `DataSourcesResponseNew` in `@qlik/api`
    /// `data-sources.d.ts`): the data sources whose api-specs are registered, optionally
    /// filtered by `dataSourceId`.
    pub(crate) fn list_data_sources(&self, q: &HashMap<String, String>) -> Value {
        let mut ids: Vec<&String> = self
            .specs
            .keys()
            .filter(|id| q.get("dataSourceId").is_none_or(|want| want == *id))
            .collect();
        ids.sort();
        let items: Vec<Value> = ids
            .into_iter()
            .map(|id| {
                let provider = self.specs[id]
                    .get("connectorProvider")
                    .and_then(Value::as_str)
                    .unwrap_or_else(|| super::props::default_q_type(id))
                    .to_owned();
                json!({
                    "dataSourceId": id,
                    "name": id,
                    "provider": provider,
                    "providerName": provider,
                    "disabled": false,
                })
            })
            .collect();
        json!({"dataSources": items, "lastUpdated": fmt_ts(self.last_ts.max(DateTime::<Utc>::UNIX_EPOCH))})
    }

    fn check_against_spec(&self, datasource_id: &str, ops: &[PatchOp]) -> Result<(), ApiError> {
        // Qlik's api-specs are JSON Schema: the names sit under
        // `connectionProperties.properties` (S11, qlik-api-facts.md §2.8).
        let Some(spec_props) = self
            .specs
            .get(datasource_id)
            .and_then(|s| s.get("connectionProperties"))
            .and_then(|c| c.get("properties"))
            .and_then(Value::as_object)
        else {
            return Ok(());
        };
        for op in ops.iter().filter(|o| o.top() == "connectionProperties") {
            let name = op.second().unwrap_or_default();
            let Some(decl) = spec_props.get(name) else {
                return Err(ApiError::bad_request(format!(
                    "Unknown connection property '{name}' for data source '{datasource_id}'"
                )));
            };
            if op.tokens.len() != 2 || !matches!(op.op, OpKind::Add | OpKind::Replace) {
                continue;
            }
            let (Some(declared), Some(value)) =
                (decl.get("type").and_then(Value::as_str), op.value.as_ref())
            else {
                continue;
            };
            if !type_matches(declared, value) {
                return Err(ApiError::bad_request(format!(
                    "Type mismatch at {}: data source '{datasource_id}' declares {declared}, \
                     the patch value is {}",
                    op.path,
                    json_type(value)
                )));
            }
        }
        Ok(())
    }

    // ----- data credentials ----------------------------------------------------------------

    pub(crate) fn add_credential(&mut self, seed: SeedCredential) -> String {
        let id = seed.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let ts = self.next_ts();
        let cred = Cred {
            id: id.clone(),
            name: seed.name,
            q_type: seed.q_type,
            datasource_id: seed.datasource_id,
            username: seed.username,
            password: seed.password,
            reference_key: uuid::Uuid::new_v4().to_string(),
            connection_id: String::new(),
            created: ts,
            updated: ts,
        };
        upsert(&mut self.creds, &mut self.cred_idx, id.clone(), cred);
        id
    }

    fn cred_view(&self, c: &Cred, with_secrets: bool) -> Value {
        let count = self
            .conns
            .iter()
            .filter(|k| k.credentials_id.as_deref() == Some(c.id.as_str()))
            .count();
        let mut v = json!({
            "qID": c.id,
            "qName": c.name,
            "qType": c.q_type,
            "qConnCount": count,
            "datasourceID": c.datasource_id,
            "qReferenceKey": c.reference_key,
            "qSeparated": 1,
            "connectionId": c.connection_id,
            "created": fmt_ts(c.created),
            "updated": fmt_ts(c.updated),
            "links": {"self": {"href": format!("{}/api/v1/data-credentials/{}", self.base_url, c.id)}},
        });
        if with_secrets {
            v["qUsername"] = Value::String(c.username.clone());
            v["qPassword"] = Value::String(c.password.clone());
        }
        v
    }

    pub(crate) fn stored_credential(&self, id: &str) -> Option<Value> {
        let c = &self.creds[*self.cred_idx.get(id)?];
        Some(self.cred_view(c, true))
    }

    fn find_cred(&self, key: &str, q: &HashMap<String, String>) -> Result<usize, ApiError> {
        let by_name = q
            .get("byCredentialName")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"));
        if by_name {
            return self
                .creds
                .iter()
                .position(|c| c.name == key)
                .ok_or_else(|| ApiError::not_found(format!("Credential named '{key}' not found")));
        }
        if !is_uuid(key) {
            return Err(ApiError::bad_request(format!(
                "qID '{key}' is not a valid UUID"
            )));
        }
        self.cred_idx
            .get(key)
            .copied()
            .ok_or_else(|| ApiError::not_found(format!("Credential '{key}' not found")))
    }

    pub(crate) fn get_credential(
        &self,
        key: &str,
        q: &HashMap<String, String>,
    ) -> Result<Value, ApiError> {
        let i = self.find_cred(key, q)?;
        Ok(self.cred_view(&self.creds[i], false))
    }

    fn check_cred_name(&self, idx: usize, name: &str) -> Result<(), ApiError> {
        if self
            .creds
            .iter()
            .enumerate()
            .any(|(i, c)| i != idx && c.name == name)
        {
            return Err(ApiError::conflict(
                "Conflict",
                format!("A credential named '{name}' already exists"),
            ));
        }
        Ok(())
    }

    /// `PUT /api/v1/data-credentials/{key}` with a `CredentialCreate` body.
    pub(crate) fn put_credential(
        &mut self,
        key: &str,
        q: &HashMap<String, String>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let idx = self.find_cred(key, q)?;
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("Request body is not valid JSON: {e}")))?;
        let Some(o) = doc.as_object() else {
            return Err(ApiError::bad_request("Request body must be a JSON object"));
        };
        let field = |name: &str| -> Result<String, ApiError> {
            o.get(name)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| {
                    ApiError::bad_request(format!("Field {name} is missing in the request"))
                })
        };
        let (name, q_type, username, password) = (
            field("qName")?,
            field("qType")?,
            field("qUsername")?,
            field("qPassword")?,
        );
        let cur = &self.creds[idx];
        if let Some(id) = o.get("qID").and_then(Value::as_str)
            && !id.is_empty()
            && id != cur.id
        {
            return Err(ApiError::bad_request(
                "qID in the body does not match the path",
            ));
        }
        let connection_id = o.get("connectionId").and_then(Value::as_str);
        if let Some(cid) = connection_id
            && !cur.connection_id.is_empty()
            && cid != cur.connection_id
        {
            return Err(ApiError::bad_request("Connection ID changed"));
        }
        self.check_cred_name(idx, &name)?;
        let datasource_id = o
            .get("datasourceID")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let ts = self.next_ts();
        let c = &mut self.creds[idx];
        c.name = name;
        c.q_type = q_type;
        c.username = username;
        c.password = password;
        if let Some(cid) = connection_id {
            c.connection_id = cid.to_owned();
        }
        if let Some(ds) = datasource_id {
            c.datasource_id = ds;
        }
        c.updated = ts;
        Ok(())
    }

    /// `PATCH /api/v1/data-credentials/{key}`: bare JSON Patch array on `/qName`, `/qUsername`,
    /// `/qPassword`.
    pub(crate) fn patch_credential(
        &mut self,
        key: &str,
        q: &HashMap<String, String>,
        body: &[u8],
    ) -> Result<(), ApiError> {
        let idx = self.find_cred(key, q)?;
        let ops = parse_patch_body(body).map_err(ApiError::bad_request)?;
        for op in &ops {
            if op.tokens.len() != 1 || !matches!(op.top(), "qName" | "qUsername" | "qPassword") {
                return Err(ApiError::bad_request(format!(
                    "Path {} is not patchable",
                    op.path
                )));
            }
            if op.op == OpKind::Remove {
                return Err(ApiError::bad_request(format!(
                    "{} cannot be removed",
                    op.path
                )));
            }
        }
        let cur = &self.creds[idx];
        let before =
            json!({"qName": cur.name, "qUsername": cur.username, "qPassword": cur.password});
        let mut doc = before.clone();
        for op in &ops {
            apply(&mut doc, op).map_err(ApiError::bad_request)?;
        }
        if doc == before {
            return Ok(());
        }
        let get = |f: &str| doc[f].as_str().unwrap_or_default().to_owned();
        let name = get("qName");
        if name.is_empty() {
            return Err(ApiError::bad_request("qName must be a non-empty string"));
        }
        self.check_cred_name(idx, &name)?;
        let ts = self.next_ts();
        let c = &mut self.creds[idx];
        c.name = name;
        c.username = get("qUsername");
        c.password = get("qPassword");
        c.updated = ts;
        Ok(())
    }
}

/// The paging and filter parameters of a connection list, checked in this order: `limit`
/// (1..=100, default 32), the `page` cursor, then `filter`.
struct ListPage {
    limit: usize,
    offset: usize,
    clauses: Vec<Clause>,
}

impl ListPage {
    fn parse(q: &HashMap<String, String>) -> Result<Self, ApiError> {
        let limit = match q.get("limit") {
            None => 32,
            Some(l) => match l.parse::<i64>() {
                Ok(n) if (1..=100).contains(&n) => n as usize,
                _ => {
                    return Err(ApiError::bad_request(format!(
                        "limit must be an integer between 1 and 100, got '{l}'"
                    )));
                }
            },
        };
        let offset = match q.get("page") {
            None => 0,
            Some(p) => decode_cursor(p)
                .ok_or_else(|| ApiError::bad_request(format!("Invalid page cursor '{p}'")))?,
        };
        let clauses = match q.get("filter") {
            Some(f) if !f.trim().is_empty() => parse_filter(f)?,
            _ => Vec::new(),
        };
        Ok(Self {
            limit,
            offset,
            clauses,
        })
    }
}

/// Sorts a connection list by `sort`: a field name, optionally prefixed by `+` or `-`.
fn sort_connections(items: &mut [&Conn], sort: &str) -> Result<(), ApiError> {
    let (desc, field) = match sort.strip_prefix('-') {
        Some(f) => (true, f),
        None => (false, sort.strip_prefix('+').unwrap_or(sort)),
    };
    match field {
        "qName" => items.sort_by(|a, b| a.name.cmp(&b.name)),
        "created" => items.sort_by_key(|c| c.created),
        "updated" => items.sort_by_key(|c| c.updated),
        "_id" | "id" => items.sort_by(|a, b| a.id.cmp(&b.id)),
        _ => {
            return Err(ApiError::bad_request(format!(
                "Unsupported sort field '{sort}'"
            )));
        }
    }
    if desc {
        items.reverse();
    }
    Ok(())
}

/// 400 unless every operation targets a patchable path: `qName`, `tags`,
/// `qConnectStatement`, `qPassword`, `qUsername` or a named connection property.
fn check_patchable(ops: &[PatchOp]) -> Result<(), ApiError> {
    for op in ops {
        let ok = match op.top() {
            "qName" | "tags" | "qConnectStatement" | "qPassword" | "qUsername" => true,
            "connectionProperties" => op.second().is_some_and(|n| !n.is_empty()),
            _ => false,
        };
        if !ok {
            return Err(ApiError::bad_request(format!(
                "Path {} is not patchable",
                op.path
            )));
        }
    }
    Ok(())
}

/// The fields of a patched connection document, type-checked in this order.
struct Patched {
    name: String,
    tags: Vec<Value>,
    statement: String,
    q_password: Option<String>,
    q_username: Option<String>,
    props: Map<String, Value>,
}

impl Patched {
    fn read(doc: &Value) -> Result<Self, ApiError> {
        let name = match doc.get("qName").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => n.to_owned(),
            _ => return Err(ApiError::bad_request("qName must be a non-empty string")),
        };
        // `ConnectionGet.tags?: string[]`; `ConnectionCreate` allows at most 32 (@qlik/api).
        let tags = match doc.get("tags") {
            None => Vec::new(),
            Some(Value::Array(t)) if t.len() <= 32 && t.iter().all(Value::is_string) => t.clone(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "tags must be an array of at most 32 strings",
                ));
            }
        };
        let statement = match doc.get("qConnectStatement").and_then(Value::as_str) {
            Some(s) => s.to_owned(),
            None => return Err(ApiError::bad_request("qConnectStatement must be a string")),
        };
        let opt_string = |field: &str| -> Result<Option<String>, ApiError> {
            match doc.get(field) {
                None => Ok(None),
                Some(Value::String(s)) if s.is_empty() => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::bad_request(format!("{field} must be a string"))),
            }
        };
        let q_password = opt_string("qPassword")?;
        let q_username = opt_string("qUsername")?;
        let props = doc
            .get("connectionProperties")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        Ok(Self {
            name,
            tags,
            statement,
            q_password,
            q_username,
            props,
        })
    }
}

/// The fields of a create request (`DcaasConnectionCreate`, S1), checked in this order.
struct CreateRequest {
    datasource_id: String,
    name: String,
    props: Map<String, Value>,
    space: Option<String>,
    tags: Vec<Value>,
}

impl CreateRequest {
    fn parse(body: &[u8]) -> Result<Self, ApiError> {
        let doc: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("Request body is not valid JSON: {e}")))?;
        let Some(o) = doc.as_object() else {
            return Err(ApiError::bad_request("Request body must be a JSON object"));
        };
        if o.contains_key("qConnectStatement") && !o.contains_key("connectionProperties") {
            // [assumed] not modelled: the connect-statement form (`ConnectionCreate`).
            return Err(ApiError::bad_request(
                "The simulator models only the properties form of create (DcaasConnectionCreate)",
            ));
        }
        let datasource_id = create_text(o, &["datasourceID", "dataSourceId"])?;
        let name = create_text(o, &["qName"])?;
        let props = match o.get("connectionProperties") {
            Some(Value::Object(m)) => m.clone(),
            Some(_) => {
                return Err(ApiError::bad_request(
                    "Field connectionProperties must be an object",
                ));
            }
            None => {
                return Err(ApiError::bad_request(
                    "Field connectionProperties is missing in the request",
                ));
            }
        };
        let space = match o.get("space") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(ApiError::bad_request("Field space must be a string")),
        };
        let tags = create_tags(o)?;
        Ok(Self {
            datasource_id,
            name,
            props,
            space,
            tags,
        })
    }
}

/// A required non-blank string field of a create request, under the first of `names` present.
fn create_text(o: &Map<String, Value>, names: &[&str]) -> Result<String, ApiError> {
    let found = names.iter().find_map(|n| o.get(*n).map(|v| (*n, v)));
    match found {
        Some((_, Value::String(s))) if !s.trim().is_empty() => Ok(s.clone()),
        Some((n, _)) => Err(ApiError::bad_request(format!(
            "Field {n} must be a non-empty string"
        ))),
        None => Err(ApiError::bad_request(format!(
            "Field {} is missing in the request",
            names[0]
        ))),
    }
}

/// The optional `tags` of a create request: strings, at most 31 (S1).
fn create_tags(o: &Map<String, Value>) -> Result<Vec<Value>, ApiError> {
    let tags = match o.get("tags") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(t)) if t.iter().all(Value::is_string) => t.clone(),
        Some(_) => {
            return Err(ApiError::bad_request(
                "Field tags must be an array of strings",
            ));
        }
    };
    if tags.len() > 31 {
        // S1: "allow max 31 tags".
        return Err(ApiError::bad_request("At most 31 tags are allowed"));
    }
    Ok(tags)
}

/// Whether an operation on `/connectionProperties/...` supplies credentials: a credential
/// property (secret scalars, `username`, anything inside a file array) or an encrypted
/// `queryHeaders` entry (`encrypt: true` in the stored element or in the patch value).
fn is_credential_path(op: &PatchOp, props: &Map<String, Value>) -> bool {
    if op.top() != "connectionProperties" {
        return false;
    }
    let Some(name) = op.second() else {
        return false;
    };
    if is_credential_prop(name) {
        return true;
    }
    if name != "queryHeaders" {
        return false;
    }
    let encrypted = |v: &Value| is_true(v.get("encrypt"));
    let value_encrypted = match op.value.as_ref() {
        Some(Value::Array(items)) => items.iter().any(encrypted),
        Some(v @ Value::Object(_)) => encrypted(v),
        _ => false,
    };
    let stored_encrypted = op
        .tokens
        .get(2)
        .and_then(|i| i.parse::<usize>().ok())
        .and_then(|i| props.get("queryHeaders")?.as_array()?.get(i))
        .is_some_and(encrypted);
    value_encrypted || stored_encrypted
}

/// The four July-2026 PATCH validation rules (changelog 236, fact sheet §2.3).
fn check_validation_rules(ops: &[PatchOp], props: &Map<String, Value>) -> Result<(), ApiError> {
    let mutating: Vec<&PatchOp> = ops.iter().collect();
    let prop_op = |o: &&&PatchOp, pred: &dyn Fn(&str) -> bool| {
        o.top() == "connectionProperties" && o.second().is_some_and(pred)
    };
    let touches_statement = mutating.iter().any(|o| o.top() == "qConnectStatement");
    let touches_props = mutating.iter().any(|o| o.top() == "connectionProperties");
    let has_credentials = mutating
        .iter()
        .any(|o| matches!(o.top(), "qPassword" | "qUsername") || is_credential_path(o, props));
    if touches_statement && touches_props {
        return Err(ApiError::bad_request(
            "qConnectStatement and connectionProperties cannot be updated in the same request",
        ));
    }
    if touches_statement && !has_credentials {
        return Err(ApiError::bad_request(
            "qConnectStatement can only be changed together with credentials in the same request",
        ));
    }
    if let Some(o) = mutating
        .iter()
        .find(|o| prop_op(o, &|n: &str| ADDRESS_PROPS.contains(&n)))
        && !has_credentials
    {
        return Err(ApiError::bad_request(format!(
            "Changing {} requires credentials in the same request",
            o.path.trim_start_matches('/')
        )));
    }
    let q_password = mutating.iter().any(|o| o.top() == "qPassword");
    let prop_password = mutating
        .iter()
        .any(|o| prop_op(&o, &|n: &str| SECRET_SCALARS.contains(&n)));
    if q_password && prop_password {
        return Err(ApiError::bad_request(
            "Credentials must be sent either as /qPassword or as a connectionProperties password \
             field, not both",
        ));
    }
    Ok(())
}

/// A `field op "value"` clause of the supported SCIM-filter subset (clauses joined by `and`).
#[derive(Debug)]
struct Clause {
    field: String,
    op: String,
    value: String,
}

impl Clause {
    fn matches(&self, c: &Conn) -> bool {
        let actual = match self.field.as_str() {
            "qName" => &c.name,
            "qType" => &c.q_type,
            "datasourceID" => &c.datasource_id,
            _ => return false,
        };
        match self.op.as_str() {
            "eq" => *actual == self.value,
            "ne" => *actual != self.value,
            "co" => actual.contains(&self.value),
            "sw" => actual.starts_with(&self.value),
            "ew" => actual.ends_with(&self.value),
            _ => false,
        }
    }
}

fn parse_filter(f: &str) -> Result<Vec<Clause>, ApiError> {
    let bad = || ApiError::bad_request(format!("Unsupported or invalid filter '{f}'"));
    let mut out = Vec::new();
    let mut rest = f.trim();
    loop {
        let (field, after) = rest.split_once(' ').ok_or_else(bad)?;
        let (op, after) = after.trim_start().split_once(' ').ok_or_else(bad)?;
        if !matches!(field, "qName" | "qType" | "datasourceID")
            || !matches!(op, "eq" | "ne" | "co" | "sw" | "ew")
        {
            return Err(bad());
        }
        let after = after.trim_start().strip_prefix('"').ok_or_else(bad)?;
        // Find the closing quote, honouring \" escapes.
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, ch)) = chars.next() {
            match ch {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(n);
                    }
                }
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => value.push(ch),
            }
        }
        let end = end.ok_or_else(bad)?;
        out.push(Clause {
            field: field.to_owned(),
            op: op.to_owned(),
            value,
        });
        rest = after[end + 1..].trim_start();
        if rest.is_empty() {
            return Ok(out);
        }
        let lower = rest.to_ascii_lowercase();
        if !lower.starts_with("and ") {
            return Err(bad());
        }
        rest = rest[4..].trim_start();
    }
}

fn encode_cursor(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("offset:{offset}"))
}

fn decode_cursor(cursor: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("offset:")?
        .parse()
        .ok()
}

/// Inserts `item` under `id`, or replaces the item already stored under it (a seed with a
/// fixed id that is added twice).
fn upsert<T>(items: &mut Vec<T>, index: &mut HashMap<String, usize>, id: String, item: T) {
    match index.get(&id) {
        Some(&i) => items[i] = item,
        None => {
            index.insert(id, items.len());
            items.push(item);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_parsing() {
        let cl = parse_filter(r#"qName eq "a \"b\"" and datasourceID sw "File_""#).unwrap();
        assert_eq!(cl.len(), 2);
        assert_eq!(cl[0].value, "a \"b\"");
        assert_eq!(cl[1].field, "datasourceID");
        assert!(parse_filter("qName eq x").is_err());
        assert!(parse_filter(r#"owner eq "x""#).is_err());
        assert!(parse_filter(r#"qName eq "x" or qName eq "y""#).is_err());
    }

    #[test]
    fn cursor_round_trip_and_monotonic_clock() {
        assert_eq!(decode_cursor(&encode_cursor(64)), Some(64));
        assert_eq!(decode_cursor("garbage!"), None);
        let mut s = Shared::new(SimConfig::default(), "http://x".into());
        let inner = s.inner.get_mut().unwrap();
        let a = inner.next_ts();
        let b = inner.next_ts();
        let c = inner.next_ts();
        assert!(a < b && b < c);
    }
}
