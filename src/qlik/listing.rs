//! Paged listings of the tenant: every data connection, every space, and a space's id from
//! its id or name (used by `connections`, `coverage` and the coverage scan in
//! [`crate::discover`], and by [`crate::rotation`] to resolve a job's space name).
//!
//! Both lists are paged as the fact sheet documents (§2.1: `links.next.href`, a complete URL;
//! the spaces API the same way, `@qlik/api` spaces typings). Every page goes through the Qlik
//! client (read budget, retries, body cap). A `next` link is followed only on the tenant and
//! collection the first page came from, never twice (a loop), and at most [`Limits`] pages
//! and items: each refusal is a clear [`DiscoverError`].

use std::{collections::HashSet, future::Future};

use reqwest::Url;

use super::{
    QlikError,
    client::QlikClient,
    model::{DataConnection, Links, Space},
};
use crate::text;

/// Longest name or id quoted in an error, in characters.
const MAX_CELL: usize = 120;

/// Caps on one paged listing.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Pages followed at most.
    pub max_pages: usize,
    /// Items kept at most.
    pub max_items: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // 100 pages of 100: ten thousand connections, far more than a tenant is expected to
        // hold; more means a server that never stops paging.
        Limits {
            max_pages: 100,
            max_items: 10_000,
        }
    }
}

/// Why a listing or a space name failed.
#[derive(Debug, thiserror::Error)]
pub enum DiscoverError {
    /// A Qlik request failed.
    #[error(transparent)]
    Qlik(#[from] QlikError),
    /// A `links.next.href` pointed off the tenant or to another endpoint.
    #[error(
        "the {what} list's next page link {} is not on the tenant's {what} endpoint; not followed",
        text::quoted(.href, MAX_CELL)
    )]
    OffTenant {
        /// `connections` or `spaces`.
        what: &'static str,
        /// The link.
        href: String,
    },
    /// A `links.next.href` named a page already read.
    #[error(
        "the {what} list pages in a loop (a next link repeats a page already read); stopped after {pages} pages"
    )]
    PageLoop {
        /// `connections` or `spaces`.
        what: &'static str,
        /// Pages read.
        pages: usize,
    },
    /// More pages or items than [`Limits`] allows.
    #[error("the {what} list is longer than the cap ({pages} pages or {items} items); stopped")]
    TooLong {
        /// `connections` or `spaces`.
        what: &'static str,
        /// The page cap.
        pages: usize,
        /// The item cap.
        items: usize,
    },
    /// No space has this id or name.
    #[error("no space with the id or name {}", text::quoted(.0, MAX_CELL))]
    UnknownSpace(String),
    /// Several spaces have this name.
    #[error("the space name {} is ambiguous: spaces {}; give the space id", text::quoted(.name, MAX_CELL), .ids.iter().map(|i| text::quoted(i, MAX_CELL)).collect::<Vec<_>>().join(", "))]
    AmbiguousSpace {
        /// The name.
        name: String,
        /// The ids of every space with that name.
        ids: Vec<String>,
    },
}

impl DiscoverError {
    /// A stable, low-cardinality label.
    pub fn error_type(&self) -> &'static str {
        match self {
            DiscoverError::Qlik(e) => e.error_type(),
            DiscoverError::OffTenant { .. } => "off_tenant_link",
            DiscoverError::PageLoop { .. } => "page_loop",
            DiscoverError::TooLong { .. } => "list_too_long",
            DiscoverError::UnknownSpace(_) => "unknown_space",
            DiscoverError::AmbiguousSpace { .. } => "ambiguous_space",
        }
    }
}

/// Reads every page of a list: `fetch(None)` is the first page, `fetch(Some(url))` the page at
/// a checked next link. Each page's items go to `sink` as the page arrives (nothing is kept
/// here). Returns how many items there were, or the first refusal (after which `sink` is not
/// called again).
async fn each_page<T, F, Fut>(
    client: &QlikClient,
    what: &'static str,
    segments: &[&str],
    limits: Limits,
    fetch: F,
    mut sink: impl FnMut(Vec<T>),
) -> Result<usize, DiscoverError>
where
    F: Fn(Option<Url>) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, Option<Links>), QlikError>>,
{
    let mut items = 0usize;
    let mut seen: HashSet<String> = HashSet::new();
    let mut next: Option<Url> = None;
    let mut pages = 0usize;
    loop {
        let (data, links) = fetch(next.take()).await?;
        pages += 1;
        items += data.len();
        if items > limits.max_items {
            return Err(DiscoverError::TooLong {
                what,
                pages: limits.max_pages,
                items: limits.max_items,
            });
        }
        sink(data);
        let Some(href) = links.and_then(|l| l.next).map(|h| h.href) else {
            return Ok(items);
        };
        let Some(url) = client.tenant_url(&href, segments) else {
            return Err(DiscoverError::OffTenant { what, href });
        };
        if !seen.insert(url.as_str().to_owned()) {
            return Err(DiscoverError::PageLoop { what, pages });
        }
        if pages >= limits.max_pages {
            return Err(DiscoverError::TooLong {
                what,
                pages: limits.max_pages,
                items: limits.max_items,
            });
        }
        next = Some(url);
    }
}

/// Every data connection (in `space`, a space id, when given).
///
/// # Errors
/// [`DiscoverError`].
pub async fn all_connections(
    client: &QlikClient,
    space: Option<&str>,
    limits: Limits,
) -> Result<Vec<DataConnection>, DiscoverError> {
    let mut all = Vec::new();
    connection_pages(client, space, limits, |mut page| all.append(&mut page)).await?;
    Ok(all)
}

/// Every data connection of the tenant, each handed to `f` as its page arrives and none kept:
/// the daemon's hourly coverage scan only counts them, and a parsed connection costs ~2 KB
/// of small allocations (10,000 held at once were most of the daemon's start-up peak).
/// Returns how many there were.
///
/// # Errors
/// [`DiscoverError`]; the connections of the pages before the refusal were handed to `f`.
pub async fn each_connection(
    client: &QlikClient,
    limits: Limits,
    mut f: impl FnMut(&DataConnection),
) -> Result<usize, DiscoverError> {
    connection_pages(client, None, limits, |page| page.iter().for_each(&mut f)).await
}

/// The pages of the connection list (of `space`, or all), each handed to `sink`.
async fn connection_pages(
    client: &QlikClient,
    space: Option<&str>,
    limits: Limits,
    sink: impl FnMut(Vec<DataConnection>),
) -> Result<usize, DiscoverError> {
    each_page(
        client,
        "connections",
        &["api", "v1", "data-connections"],
        limits,
        |next| async move {
            let page = client.list_connections_page(next, space).await?;
            Ok((page.data, page.links))
        },
        sink,
    )
    .await
}

/// Every space the caller can see.
///
/// # Errors
/// [`DiscoverError`].
pub async fn all_spaces(client: &QlikClient, limits: Limits) -> Result<Vec<Space>, DiscoverError> {
    let mut all = Vec::new();
    each_page(
        client,
        "spaces",
        &["api", "v1", "spaces"],
        limits,
        |next| async move {
            let page = client.list_spaces_page(next, None).await?;
            Ok((page.data, page.links))
        },
        |mut page| all.append(&mut page),
    )
    .await?;
    Ok(all)
}

/// The id of the space `wanted` names: a space whose id is `wanted`, else the one space whose
/// name is exactly `wanted` (Qlik says names are unique; a tenant where they are not gets
/// [`DiscoverError::AmbiguousSpace`]).
///
/// # Errors
/// [`DiscoverError::UnknownSpace`], [`DiscoverError::AmbiguousSpace`].
pub fn resolve_space(spaces: &[Space], wanted: &str) -> Result<String, DiscoverError> {
    if let Some(s) = spaces.iter().find(|s| s.id == wanted) {
        return Ok(s.id.clone());
    }
    let named: Vec<&Space> = spaces.iter().filter(|s| s.name == wanted).collect();
    match named.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err(DiscoverError::UnknownSpace(wanted.to_owned())),
        many => Err(DiscoverError::AmbiguousSpace {
            name: wanted.to_owned(),
            ids: many.iter().map(|s| s.id.clone()).collect(),
        }),
    }
}
