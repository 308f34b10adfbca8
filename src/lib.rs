//! qlik-rotator: keeps the credentials of Qlik Cloud data connections fresh.
//!
//! # Layout
//!
//! The lifecycle runs in phases (`commands::run`): **load** ([`config`]: pure, every error with
//! its key, exit 64) → **build** ([`app::App`]: Qlik client, secret sources, state store,
//! metrics) → **spawn** ([`daemon::spawn`]: admin listener, pre-flight, scheduler) → **drain**
//! on a signal. One job runner ([`runner`]) serves `rotate`, `run` and the admin trigger; one
//! rotation of one job is [`rotation`]. The Qlik simulator is its own crate, `qlik-sim`
//! (`crates/qlik-sim`), which imports nothing from this one.
//!
//! Where things go:
//! - **A connector**: one entry in [`connectors::catalogue`] (properties, schemes, constants and
//!   its public source), a realistic stored connection in `qlik_sim::examples`, a snapshot test
//!   in `connectors/tests.rs`, and a case in `tests/catalogue.rs`. The builders in
//!   [`connectors`] are pure; nothing there does I/O.
//! - **A secret source**: one file `secrets/<name>.rs` (its `[sources.NAME]` config, factory
//!   and implementation) and one line in the `secret_sources!` list in [`secrets`].
//! - **A metric**: declared and registered in [`metrics`] (plain label values, bounded
//!   cardinality), and updated only by an event in [`events`], which writes the log line too.
//!   Add it to the dashboard, the README metrics table and, if it alerts, the rules + tests in
//!   `deploy/prometheus` (`tests/deploy.rs` checks they agree).
//! - **A command**: its arguments in [`cli`], its body in [`commands`] (or its own module, as
//!   [`simulate`]), dispatched from `main.rs`; exit codes 0 / 1 / 64 / 69 / 75 / 78 as `cli` documents; `--output json` documents through
//!   `telemetry::print_document`.
//! - **Qlik calls**: [`qlik`] (client, model, errors); text from outside is escaped with
//!   [`text`] before it is printed.
//!
//! Layering: a module imports only modules below it, so there is no import cycle between the
//! top-level modules (`tests/layout.rs` runs `scripts/import-cycles.py --check`, with and
//! without test code). Low → high, one line per level (a module may import any line above):
//! - [`text`], [`telemetry`], [`exit`] (exit codes): leaves;
//! - [`walk`] (config primitives: table walking, durations, key errors), [`qlik`];
//! - [`canary`], [`secrets`], [`cli`];
//! - [`connectors`], [`state`];
//! - [`config`];
//! - [`metrics`] → [`events`] → [`notify`] (events hand outcomes to the webhook queue through
//!   [`events::NotificationSink`]);
//! - [`rotation`];
//! - [`triggers`], [`app`];
//! - [`runner`], [`admin`], [`discover`];
//! - [`daemon`];
//! - [`commands`], then [`history`], [`simulate`], then [`demo`].
//!
//! An item a lower module needs lives in that lower module (or a small leaf such as [`walk`]
//! or [`exit`]); the higher module re-exports it under its old path (`config::walk`,
//! `config::ConnectionRef`, `commands::EXIT_USAGE`, `discover::all_spaces`,
//! `triggers::Prefetched`, `notify::Notification`), which is a downward edge.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod canary;
pub mod cli;
pub mod commands;
pub mod config;
pub mod connectors;
pub mod daemon;
pub mod demo;
pub mod discover;
pub mod events;
pub mod exit;
pub mod history;
pub mod metrics;
pub mod notify;
pub mod qlik;
pub mod rotation;
pub mod runner;
pub mod secrets;
pub mod simulate;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod text;
pub mod triggers;
pub mod walk;
