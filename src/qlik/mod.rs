//! Qlik Cloud: the data-connections API client and its types.
//!
//! - [`client`]: reqwest client with API-key or OAuth M2M auth, retries and the write gate.
//! - [`model`]: `DataConnection`, the JSON Patch document (with masking and the single
//!   place where secret values are serialised).
//! - [`error`]: `QlikError`, classified for retry and metrics.
//! - [`gate`]: the write budget shared by every job.
//! - [`listing`]: every connection, every space (paged, capped), a space's id from its name.
//! - [`retry`]: the per-request retry policy (classifier, delays, the one retry loop).

pub mod client;
pub mod error;
pub mod gate;
pub mod listing;
pub mod model;
pub mod retry;

pub use client::{ClientSettings, Credentials, QlikClient, RetryPolicy};
pub use error::{Origin, QlikError};
pub use model::{CachedConnection, DataConnection, PatchDocument};
