//! What is behind a connection, and reloads of the apps that read through connections.
//!
//! **Sources** (FIDELITY.md, "Reloads and data sources"):
//! - `@qlik/api` `reloads.d.ts` (T-rl): `queueReload(body: ReloadRequest)` → 201 `Reload`
//!   (errors 400, 401, 403, 429, 500); `getReload(reloadId)` → 200 `Reload`; `Reload` fields
//!   `id`, `appId`, `tenantId`, `userId`, `type`, `status`, `partial`, `creationTime`,
//!   `startTime`, `endTime`, `log`, `errorCode`, `errorMessage`; `Status` = `QUEUED |
//!   RELOADING | CANCELING` (active) and `SUCCEEDED | FAILED | CANCELED | EXCEEDED_LIMIT`
//!   (final); `errorCode`/`errorMessage` "when the status is FAILED".
//! - https://qlik.dev/apis/rest/reloads/ (S25) and the reload-log changelog
//!   https://qlik.dev/changelog/167-changes-to-reload-log/ (S26): `log` is a summarised
//!   outcome beginning `ReloadID: <id>`; reload ids in the examples are 24 hex digits.
//!
//! **Assumed** (no source says how a tenant decides): a data source (a database host, a
//! bucket, a project) is found behind a connection when the connection's property
//! `matchProperty` equals `matchValue`; it accepts a connection when every property of one of
//! its `accepts` sets equals the connection's stored value (a property of
//! `connectionProperties`, or top-level `qUsername`/`qPassword`) *at the moment the reload
//! runs*. A connection with no modelled source behind it is accepted. A reload moves from
//! `QUEUED` to `RELOADING` and to its final status over [`World::steps`] GETs (default 1:
//! the first GET answers `RELOADING`, the second the final status). The error code of a
//! rejected login (`"EngineReloadFailed"`) and the messages are assumed; an unknown app is a
//! 400 (the `queueReload` error list has no 404).

use std::collections::VecDeque;

use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::state::{ApiError, Inner};
use super::util::fmt_ts;

/// A simulated data source behind one or more connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSource {
    /// A name for messages (e.g. the host).
    pub name: String,
    /// The connection property that locates the source (`host`, `bucketName`, `Catalog`, …).
    #[serde(rename = "matchProperty")]
    pub match_property: String,
    /// Its value for connections behind this source.
    #[serde(rename = "matchValue")]
    pub match_value: Value,
    /// The credential sets the source accepts now (property → value); any one set suffices.
    pub accepts: Vec<Map<String, Value>>,
}

/// A simulated app and the connections its load script reads through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id (a UUID, as Qlik Cloud app ids are).
    pub id: String,
    /// The app name.
    pub name: String,
    /// The qIDs of the connections its script uses.
    #[serde(rename = "connectionIds")]
    pub connection_ids: Vec<String>,
}

/// A final status forced on the next reload (tests): `(status, errorCode, errorMessage, log)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForcedOutcome {
    /// The final status, e.g. `EXCEEDED_LIMIT`.
    pub status: String,
    /// `errorCode`, if any.
    pub error_code: Option<String>,
    /// `errorMessage`, if any.
    pub error_message: Option<String>,
}

#[derive(Debug, Clone)]
struct ReloadRec {
    id: String,
    app_id: String,
    status: &'static str,
    polls: u32,
    created: chrono::DateTime<Utc>,
    ended: Option<chrono::DateTime<Utc>>,
    error_code: Option<String>,
    error_message: Option<String>,
    log: String,
    forced: Option<ForcedOutcome>,
}

/// The sources, apps and reloads of one simulator.
#[derive(Debug)]
pub(crate) struct World {
    pub(crate) sources: Vec<DataSource>,
    pub(crate) apps: Vec<App>,
    reloads: Vec<ReloadRec>,
    /// GETs a reload answers `RELOADING` before its final status; `None` = never finishes.
    pub(crate) steps: Option<u32>,
    pub(crate) forced: VecDeque<ForcedOutcome>,
    next: u64,
}

impl Default for World {
    fn default() -> Self {
        World {
            sources: Vec::new(),
            apps: Vec::new(),
            reloads: Vec::new(),
            steps: Some(1),
            forced: VecDeque::new(),
            next: 0,
        }
    }
}

/// Reloads kept (oldest dropped), so a long-running server stays bounded.
const MAX_RELOADS: usize = 1000;

impl Inner {
    /// `POST /api/v1/reloads` with a `ReloadRequest`: 201 and the queued `Reload`.
    pub(crate) fn queue_reload(&mut self, body: &[u8]) -> Result<Value, ApiError> {
        let bad = |detail: &str| ApiError::new(400, "HTTP-400", "Bad Request", Some(detail.into()));
        let req: Value =
            serde_json::from_slice(body).map_err(|_| bad("the body is not a JSON object"))?;
        let app_id = req
            .get("appId")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("appId is required and must be a string"))?;
        if !self.world.apps.iter().any(|a| a.id == app_id) {
            return Err(bad("the app does not exist or cannot be reloaded"));
        }
        let w = &mut self.world;
        w.next += 1;
        let id = format!(
            "{:024x}",
            0x6854_0644_0000_0000_0000u128 + u128::from(w.next)
        );
        let rec = ReloadRec {
            id,
            app_id: app_id.to_owned(),
            status: "QUEUED",
            polls: 0,
            created: Utc::now(),
            ended: None,
            error_code: None,
            error_message: None,
            log: String::new(),
            forced: w.forced.pop_front(),
        };
        let view = reload_view(&rec);
        if w.reloads.len() >= MAX_RELOADS {
            w.reloads.remove(0);
        }
        w.reloads.push(rec);
        Ok(view)
    }

    /// `GET /api/v1/reloads/{id}`: 200 and the `Reload`, advanced one step; 404 when unknown.
    pub(crate) fn get_reload(&mut self, id: &str) -> Result<Value, ApiError> {
        let Some(i) = self.world.reloads.iter().position(|r| r.id == id) else {
            return Err(ApiError::new(
                404,
                "HTTP-404",
                "Not Found",
                Some("reload not found".into()),
            ));
        };
        let steps = self.world.steps;
        let rec = &mut self.world.reloads[i];
        if rec.ended.is_none() {
            rec.polls += 1;
            match steps {
                Some(n) if rec.polls > n => {}
                _ => {
                    rec.status = "RELOADING";
                    return Ok(reload_view(rec));
                }
            }
            let (app_id, forced) = (rec.app_id.clone(), rec.forced.clone());
            let (status, code, message) = match forced {
                Some(f) => (
                    static_status(&f.status),
                    f.error_code.clone(),
                    f.error_message.clone(),
                ),
                None => match self.first_rejected(&app_id) {
                    None => ("SUCCEEDED", None, None),
                    Some(why) => ("FAILED", Some("EngineReloadFailed".to_owned()), Some(why)),
                },
            };
            let rec = &mut self.world.reloads[i];
            rec.status = status;
            rec.ended = Some(Utc::now());
            rec.log = match &message {
                None if status == "SUCCEEDED" => format!(
                    "ReloadID: {}\nStarted loading data\nApp saved\nFinished successfully",
                    rec.id
                ),
                None => format!("ReloadID: {}\nReload ended: {status}", rec.id),
                Some(m) => format!("ReloadID: {}\nStarted loading data\nError: {m}", rec.id),
            };
            rec.error_code = code;
            rec.error_message = message;
        }
        Ok(reload_view(&self.world.reloads[i]))
    }

    /// Why a reload of `app_id` fails now: the first connection it reads through whose data
    /// source does not accept the credentials it holds (`None` when all are accepted).
    fn first_rejected(&self, app_id: &str) -> Option<String> {
        let app = self.world.apps.iter().find(|a| a.id == app_id)?;
        for cid in &app.connection_ids {
            let Some(stored) = self.stored(cid) else {
                return Some(format!("the connection {cid} does not exist"));
            };
            let name = stored.get("qName").and_then(Value::as_str).unwrap_or("");
            let props = stored
                .get("connectionProperties")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            let lookup = |k: &str| props.get(k).or_else(|| stored.get(k));
            for src in &self.world.sources {
                if lookup(&src.match_property) != Some(&src.match_value) {
                    continue;
                }
                let accepted = src
                    .accepts
                    .iter()
                    .any(|set| set.iter().all(|(k, v)| lookup(k) == Some(v)));
                if !accepted {
                    return Some(format!(
                        "Connection '{name}': the data source '{}' rejected the credentials \
                         (login failed)",
                        src.name
                    ));
                }
            }
        }
        None
    }
}

fn static_status(s: &str) -> &'static str {
    match s {
        "QUEUED" => "QUEUED",
        "RELOADING" => "RELOADING",
        "CANCELING" => "CANCELING",
        "SUCCEEDED" => "SUCCEEDED",
        "FAILED" => "FAILED",
        "CANCELED" => "CANCELED",
        _ => "EXCEEDED_LIMIT",
    }
}

fn reload_view(r: &ReloadRec) -> Value {
    let mut v = json!({
        "id": r.id,
        "appId": r.app_id,
        "tenantId": super::state::SIM_TENANT,
        "userId": super::state::SIM_USER,
        "type": "external",
        "status": r.status,
        "partial": false,
        "creationTime": fmt_ts(r.created),
        "log": r.log,
    });
    let o = v.as_object_mut().expect("object literal");
    if r.status != "QUEUED" {
        o.insert("startTime".into(), Value::String(fmt_ts(r.created)));
    }
    if let Some(end) = r.ended {
        o.insert("endTime".into(), Value::String(fmt_ts(end)));
    }
    if let Some(c) = &r.error_code {
        o.insert("errorCode".into(), Value::String(c.clone()));
    }
    if let Some(m) = &r.error_message {
        o.insert("errorMessage".into(), Value::String(m.clone()));
    }
    v
}
