//! Helpers shared by integration tests (`mod common;`).
#![allow(dead_code)]

pub mod bao;
pub mod daemon;
pub mod dynamodb;
pub mod harness;
pub mod moto;
pub mod simulate;
pub mod statedb;
