//! The spaces API: `GET /api/v1/spaces` (cursor paging, `name` filter) and
//! `GET /api/v1/spaces/{id}`. Sources (FIDELITY.md, "Spaces"): the `@qlik/api` spaces typings
//! (`Space`, `Spaces`, `getSpaces`, `getSpace`), cited as T-sp.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::state::{ApiError, SIM_TENANT};
use crate::util::percent_encode;

/// A space to seed into the simulator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSpace {
    /// The space id (what connections carry in `space`).
    pub id: String,
    /// `name`. Qlik says names are unique (T-sp `createSpace`); the simulator does not enforce
    /// it, so tests can model a tenant that breaks the rule.
    pub name: String,
    /// `type`: `shared`, `managed` or `data` (T-sp `SpaceType`).
    pub kind: String,
}

impl SeedSpace {
    /// A shared space.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        SeedSpace {
            id: id.into(),
            name: name.into(),
            kind: "shared".to_owned(),
        }
    }
}

/// The view of one space (T-sp `Space`: `id`, `name`, `type`, `tenantId`, `links`).
pub(crate) fn view(base_url: &str, s: &SeedSpace) -> Value {
    let href = format!("{base_url}/api/v1/spaces/{}", percent_encode(&s.id));
    json!({
        "id": s.id,
        "name": s.name,
        "type": s.kind,
        "tenantId": SIM_TENANT,
        "links": {"self": {"href": href}, "assignments": {"href": format!("{href}/assignments")}},
    })
}

/// `GET /api/v1/spaces`: `limit` (1..=100, default 10: assumed), `next` cursor, `name`
/// (case-insensitive substring, T-sp). Answers `{data, links: {self, next?, prev?}, meta: {count}}`.
pub(crate) fn list(
    base_url: &str,
    spaces: &[SeedSpace],
    q: &HashMap<String, String>,
) -> Result<Value, ApiError> {
    let limit = match q.get("limit") {
        None => 10,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::bad_request(format!(
                    "limit must be an integer between 1 and 100, got '{l}'"
                )));
            }
        },
    };
    let offset = match q.get("next") {
        None => 0,
        Some(c) => {
            decode(c).ok_or_else(|| ApiError::bad_request(format!("Invalid page cursor '{c}'")))?
        }
    };
    let name = q.get("name").map(|n| n.to_lowercase());
    let items: Vec<&SeedSpace> = spaces
        .iter()
        .filter(|s| {
            name.as_deref()
                .is_none_or(|n| s.name.to_lowercase().contains(n))
        })
        .collect();
    let data: Vec<Value> = items
        .iter()
        .skip(offset)
        .take(limit)
        .map(|s| view(base_url, s))
        .collect();
    let base = format!("{base_url}/api/v1/spaces");
    let href = |cursor: Option<usize>| {
        let mut h = format!("{base}?limit={limit}");
        if let Some(c) = cursor {
            h.push_str(&format!("&next={}", encode(c)));
        }
        if let Some(n) = q.get("name") {
            h.push_str(&format!("&name={}", percent_encode(n)));
        }
        h
    };
    let mut links = json!({"self": {"href": href((offset > 0).then_some(offset))}});
    if offset + limit < items.len() {
        links["next"] = json!({"href": href(Some(offset + limit))});
    }
    if offset > 0 {
        links["prev"] = json!({"href": href(Some(offset.saturating_sub(limit)))});
    }
    Ok(json!({"data": data, "links": links, "meta": {"count": items.len()}}))
}

/// `GET /api/v1/spaces/{id}`: the space, or 404 (T-sp `GetSpaceHttpError`).
pub(crate) fn get(base_url: &str, spaces: &[SeedSpace], id: &str) -> Result<Value, ApiError> {
    spaces
        .iter()
        .find(|s| s.id == id)
        .map(|s| view(base_url, s))
        .ok_or_else(|| ApiError::not_found(format!("No space '{id}'")))
}

fn encode(offset: usize) -> String {
    URL_SAFE_NO_PAD.encode(format!("space:{offset}"))
}

fn decode(cursor: &str) -> Option<usize> {
    let raw = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    std::str::from_utf8(&raw)
        .ok()?
        .strip_prefix("space:")?
        .parse()
        .ok()
}
