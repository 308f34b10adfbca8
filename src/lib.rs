//! qlik-rotator: keeps the credentials of Qlik Cloud data connections fresh.
#![forbid(unsafe_code)]

pub mod config;
pub mod connectors;
pub mod qlik;
pub mod secrets;
pub mod sim;
