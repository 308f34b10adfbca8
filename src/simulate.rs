//! `qlik-rotator simulate`: the simulator (crate `qlik-sim`, [`qlik_sim::simulate`]) as a
//! standalone HTTP server, for trying a configuration without a tenant and for the contract
//! test that runs Qlik's official client (`@qlik/api`) against it.
//!
//! The server, its environment variables and the tenant file format are the simulator's; this
//! module is the command around it: it prints the URL as one line on stdout as soon as the
//! server listens, logs to stderr, and stops on SIGTERM/SIGINT (exit 0). Bad usage or a bad
//! tenant file exits 64 (naming the JSON path), a port that cannot be bound exits 1; every
//! error is reported before anything listens.
//!
//! Built without the `sim` feature, the command says so and exits 64.

use std::process::ExitCode;

use crate::{cli::SimulateArgs, commands::EXIT_USAGE, config::ConfigInput};

#[cfg(feature = "sim")]
use qlik_sim::simulate::SimulateError;

/// The exit code for a [`SimulateError`]: 1 when the port cannot be bound, 64 (EX_USAGE) for
/// bad usage or a bad tenant file.
#[cfg(feature = "sim")]
pub fn exit_code(e: &SimulateError) -> u8 {
    match e {
        SimulateError::Bind { .. } => 1,
        _ => EXIT_USAGE,
    }
}

/// Runs `simulate` until SIGTERM/SIGINT.
#[cfg(feature = "sim")]
pub async fn run(args: &SimulateArgs, env: &dyn ConfigInput) -> ExitCode {
    let signals = match shutdown_signals() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot install the SIGTERM/SIGINT handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = qlik_sim::simulate::Options {
        listen: args.listen,
        allow_remote: args.allow_remote,
        tenant: args.tenant.clone(),
    };
    match qlik_sim::simulate::start(&opts, &|name| env.var(name)).await {
        Ok(server) => {
            crate::outln!("{}", server.base_url());
            server.serve(signals).await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// Without the simulator: says so and exits 64.
#[cfg(not(feature = "sim"))]
pub async fn run(_args: &SimulateArgs, _env: &dyn ConfigInput) -> ExitCode {
    eprintln!("error: {}", not_built_in("simulate"));
    ExitCode::from(EXIT_USAGE)
}

/// The message of a command that needs the simulator in a build without it.
pub fn not_built_in(command: &str) -> String {
    format!(
        "`{command}` is not built into this qlik-rotator: it was compiled without the `sim` \
         feature (the Qlik simulator); build with default features to use it"
    )
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed by this call, not on first poll
/// (as `tokio::signal::ctrl_c()` would): a client that sends SIGTERM as soon as it reads the
/// URL line must stop the server, not kill it.
///
/// # Errors
/// When a handler cannot be installed.
#[cfg(feature = "sim")]
pub fn shutdown_signals() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(all(test, feature = "sim"))]
mod tests {
    use super::*;

    #[test]
    fn a_port_that_cannot_be_bound_exits_1_and_everything_else_64() {
        let bind = SimulateError::Bind {
            addr: "127.0.0.1:1".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        assert_eq!(exit_code(&bind), 1);
        assert_eq!(exit_code(&SimulateError::MissingApiKey), 64);
        assert_eq!(exit_code(&SimulateError::PartialOAuth), 64);
    }

    #[test]
    fn the_message_without_the_simulator_names_the_command_and_the_feature() {
        let m = not_built_in("demo");
        assert!(m.contains("`demo`") && m.contains("`sim` feature"), "{m}");
    }
}
