//! qlik-rotator: keeps the credentials of Qlik Cloud data connections fresh.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod daemon;
pub mod demo;
pub mod events;
pub mod metrics;
pub mod qlik;
pub mod rotation;
pub mod runner;
pub mod secrets;
/// The simulator, crate `qlik-sim` (`crates/qlik-sim`). Kept as an alias so code written before
/// the workspace still compiles; new code names `qlik_sim` directly.
#[cfg(feature = "sim")]
#[doc(hidden)]
pub use qlik_sim as sim;
pub mod simulate;
pub mod state;
pub mod telemetry;
pub mod text;
