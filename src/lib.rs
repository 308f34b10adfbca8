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
pub mod metrics;
pub mod qlik;
pub mod rotation;
pub mod runner;
pub mod secrets;
pub mod sim;
pub mod simulate;
pub mod state;
pub mod telemetry;
pub mod text;
