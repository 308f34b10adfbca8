//! qlik-rotator binary: parse the CLI, set up logging, dispatch. Everything else is in the
//! library.

use std::process::ExitCode;

use clap::Parser;
use qlik_rotator::{
    cli::{Cli, Command},
    commands,
    config::ProcessEnv,
    demo, discover, simulate, telemetry,
};

/// jemalloc, with the decay settings of `.cargo/config.toml`: freed memory goes back to the OS
/// within a second, from a background thread, with no call from this program.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e),
    };
    let default_level = match cli.command {
        Command::Demo => "warn",
        // One line per request answered (method, path, status) on stderr.
        Command::Simulate(_) => "info,qlik_sim=debug",
        _ => "info",
    };
    telemetry::init(cli.log_format, default_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            telemetry::fatal(&format!("cannot start the async runtime: {e}"), &[]);
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(dispatch(cli.command))
}

/// Prints a command line that could not be parsed and picks the exit code: help and
/// `--version` are not errors; bad usage exits 64 (EX_USAGE) like bad config.
fn usage_error(e: &clap::Error) -> ExitCode {
    let usage = e.use_stderr();
    if usage && json_logs_requested() {
        // `--log-format json` was given: the usage error is one JSON line too.
        let text = e.render().to_string();
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let first = lines.next().unwrap_or("invalid usage");
        let first = first.strip_prefix("error: ").unwrap_or(first);
        let rest: Vec<String> = lines.map(|l| l.trim().to_owned()).collect();
        eprint!(
            "{}",
            telemetry::fatal_text(telemetry::LogFormat::Json, first, &rest)
        );
        return ExitCode::from(commands::EXIT_USAGE);
    }
    let _ = e.print();
    // Help and --version are not errors; bad usage exits 64 (EX_USAGE) like bad config.
    if usage {
        ExitCode::from(commands::EXIT_USAGE)
    } else {
        ExitCode::SUCCESS
    }
}

/// Runs one command to its exit code.
async fn dispatch(command: Command) -> ExitCode {
    let env = ProcessEnv;
    match command {
        Command::CheckConfig {
            config,
            online,
            syntax_only,
            output,
        } => {
            let mode = check_mode(syntax_only, online);
            commands::check_config(&config.config, mode, output.json(), &env).await
        }
        Command::Run(c) => commands::run(&c.config, &env).await,
        Command::Plan {
            config,
            job,
            output,
        } => commands::plan(&config.config, job.as_deref(), output.json(), &env).await,
        Command::Rotate {
            config,
            job,
            secret,
            if_changed,
            output,
            all: _,
        } => {
            rotate(
                &config.config,
                (job, secret),
                if_changed,
                output.json(),
                &env,
            )
            .await
        }
        Command::History(args) => qlik_rotator::history::run(&args, &env).await,
        Command::Status(args) => qlik_rotator::history::status(&args, &env).await,
        Command::Connectors { output } => commands::connectors(output),
        Command::DescribeConnector {
            datasource,
            config,
            tenant,
            output,
        } => {
            let what = commands::Describe {
                datasource: &datasource,
                tenant: tenant.as_deref(),
                json: output.json(),
            };
            commands::describe_connector(&config.config, &what, &env).await
        }
        Command::Connections {
            config,
            tenant,
            space,
            connector,
            output,
        } => {
            let filter = discover::Filter {
                tenant: tenant.as_deref(),
                space: space.as_deref(),
                connector: connector.as_deref(),
            };
            discover::connections_command(&config.config, &filter, output, &env).await
        }
        Command::Coverage {
            config,
            tenant,
            fail_under,
            output,
        } => {
            discover::coverage_command(&config.config, tenant.as_deref(), fail_under, output, &env)
                .await
        }
        Command::Demo => demo::run().await,
        Command::Simulate(args) => simulate::run(&args, &env).await,
        Command::Completions { shell } => commands::completions(shell),
        Command::Man { dir } => commands::man(dir.as_deref()),
    }
}

/// `rotate`: the jobs of `--secret`, or `--job` (or `--all`).
async fn rotate(
    config: &std::path::Path,
    (job, secret): (Option<String>, Option<String>),
    if_changed: bool,
    json: bool,
    env: &ProcessEnv,
) -> ExitCode {
    match (job, secret) {
        (None, Some(secret)) => {
            commands::rotate_secret(config, &secret, if_changed, json, env).await
        }
        (job, _) => commands::rotate(config, job.as_deref(), if_changed, json, env).await,
    }
}

/// The depth of `check-config`: `--syntax-only` wins over `--online`.
fn check_mode(syntax_only: bool, online: bool) -> commands::CheckMode {
    if syntax_only {
        commands::CheckMode::Syntax
    } else if online {
        commands::CheckMode::Online
    } else {
        commands::CheckMode::Local
    }
}

/// Whether the command line asks for `--log-format json` (looked at only when it could not be
/// parsed, so that even a usage error is a JSON line for a log shipper).
fn json_logs_requested() -> bool {
    let args: Vec<String> = std::env::args().collect();
    args.iter().enumerate().any(|(i, a)| {
        a == "--log-format=json"
            || (a == "--log-format" && args.get(i + 1).map(String::as_str) == Some("json"))
    })
}
