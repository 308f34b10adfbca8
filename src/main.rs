//! qlik-rotator binary: parse the CLI, set up logging, dispatch. Everything else is in the
//! library.

use std::process::ExitCode;

use clap::Parser;
use qlik_rotator::{
    cli::{Cli, Command},
    commands,
    config::ProcessEnv,
    demo, telemetry,
};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            // Help and --version are not errors; bad usage exits 64 (EX_USAGE) like bad config.
            return if usage {
                ExitCode::from(commands::EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let default_level = match cli.command {
        Command::Demo => "warn",
        _ => "info",
    };
    telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let env = ProcessEnv;
    runtime.block_on(async move {
        match cli.command {
            Command::CheckConfig { config, online } => {
                commands::check_config(&config.config, online, &env).await
            }
            Command::Run(c) => commands::run(&c.config, &env, release_unused_memory).await,
            Command::Plan { config, job } => {
                commands::plan(&config.config, job.as_deref(), &env).await
            }
            Command::Rotate {
                config,
                job,
                all: _,
                if_changed,
            } => commands::rotate(&config.config, job.as_deref(), if_changed, &env).await,
            Command::Connectors => commands::connectors(),
            Command::DescribeConnector { datasource, config } => {
                commands::describe_connector(&config.config, &datasource, &env).await
            }
            Command::Demo => demo::run().await,
        }
    })
}

/// Hands memory freed after start-up (config parsing, pre-flight) back to the OS, so a daemon
/// with many jobs idles at its working set rather than at its start-up peak.
fn release_unused_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free heap pages to the OS; it takes no pointers and is
    // safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
