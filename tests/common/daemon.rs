//! The real binary running in the background (usually `run`): output to files (a pipe nobody
//! drains would block the process), a wait for `/readyz` with a timeout, a SIGTERM stop that
//! returns the exit code and output, and a kill on drop so that a failing test leaves no
//! process behind.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Child,
    time::{Duration, Instant},
};

use super::harness::{CliOutput, command, http_get, metric, sigterm};

/// How long a daemon may take to answer `/readyz` with 200.
pub const READY_WAIT: Duration = Duration::from_secs(30);
/// How long a daemon may take to exit after SIGTERM (drains allow up to 20 s in the tests).
pub const EXIT_WAIT: Duration = Duration::from_secs(120);

/// A background process of the binary; killed (SIGKILL) on drop if still running.
pub struct Daemon {
    /// The process (for signals and ids).
    pub child: Child,
    addr: Option<SocketAddr>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Daemon {
    /// Starts `qlik-rotator <args>` with a clean environment plus `env`; its output goes to
    /// `<stem>.stdout` and `<stem>.stderr` (`stem` is a path without extension). Waits for
    /// nothing.
    pub fn spawn(stem: &Path, args: &[&str], env: &[(String, String)]) -> Daemon {
        let stdout = stem.with_extension("stdout");
        let stderr = stem.with_extension("stderr");
        let child = command(args, env)
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn qlik-rotator {args:?}: {e}"));
        Daemon {
            child,
            addr: None,
            stdout,
            stderr,
        }
    }

    /// `qlik-rotator run -c <config>`: returns once `/readyz` answers 200 at the config's
    /// `listen` address.
    pub async fn run(config: &Path, env: &[(String, String)]) -> Daemon {
        Self::run_with(config, env, &[]).await
    }

    /// [`Daemon::run`] with global options before `run` (e.g. `--log-format json`).
    pub async fn run_with(config: &Path, env: &[(String, String)], global: &[&str]) -> Daemon {
        let mut args = global.to_vec();
        args.extend(["run", "-c", config.to_str().unwrap()]);
        let mut d = Self::spawn(config, &args, env);
        d.wait_ready(listen_addr(config)).await;
        d
    }

    /// Waits until `/readyz` at `addr` answers 200 (then [`Daemon::addr`] is `addr`); panics
    /// with the process's stderr after [`READY_WAIT`], or at once if the process exits.
    pub async fn wait_ready(&mut self, addr: SocketAddr) {
        let start = Instant::now();
        loop {
            if http_get(addr, "/readyz").await.0 == 200 {
                self.addr = Some(addr);
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("daemon exited ({status}) before ready:\n{}", self.output());
            }
            assert!(
                start.elapsed() < READY_WAIT,
                "daemon not ready at {addr} after {READY_WAIT:?}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin address that answered `/readyz`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
            .expect("the daemon was not waited for (wait_ready)")
    }

    /// Standard error so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The file that receives standard error.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr
    }

    /// Standard output so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    /// Standard output then standard error, so far.
    pub fn output(&self) -> String {
        format!("{}{}", self.stdout(), self.stderr())
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then polls (without blocking the runtime) until the process exits; returns the
    /// exit code (-1 for a signal) and the output. Panics after [`EXIT_WAIT`].
    pub async fn stop(mut self) -> CliOutput {
        sigterm(&self.child);
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < EXIT_WAIT,
                "daemon did not exit {EXIT_WAIT:?} after SIGTERM:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        CliOutput {
            code: status.code().unwrap_or(-1),
            stdout: self.stdout(),
            stderr: self.stderr(),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.alive() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The `listen = "…"` address of a config file's `[metrics]` table.
pub fn listen_addr(config: &Path) -> SocketAddr {
    let text = std::fs::read_to_string(config).unwrap();
    let listen = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = \""))
        .unwrap_or_else(|| panic!("no `listen = \"…\"` line in {}", config.display()));
    listen.trim_end_matches('"').parse().unwrap()
}

/// Polls `/metrics` at `addr` every 50 ms until `name{labels}` ≥ `at_least`; returns that
/// exposition. Panics with the last one after [`READY_WAIT`].
pub async fn wait_metric(
    addr: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    at_least: f64,
) -> String {
    let start = Instant::now();
    loop {
        let text = http_get(addr, "/metrics").await.1;
        if metric(&text, name, labels).unwrap_or(0.0) >= at_least {
            return text;
        }
        assert!(
            start.elapsed() < READY_WAIT,
            "timed out waiting for {name}{labels:?}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
