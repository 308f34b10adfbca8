//! Running the real `qlik-rotator simulate` binary: wait for its URL line, stop it by signal.

use std::{
    io::{BufRead, BufReader, Read},
    process::{Child, Stdio},
    sync::mpsc,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use super::harness::{CliOutput, command};

/// A running `simulate`. Killed on drop if still running.
pub struct Served {
    child: Child,
    /// The URL it printed, e.g. `http://127.0.0.1:PORT`.
    pub url: String,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

/// Starts `qlik-rotator simulate <args>` with a clean environment plus `env` and waits (up to
/// 60 s) for the URL line. When it exits first, returns its output instead.
pub fn spawn_simulate(args: &[&str], env: &[(String, String)]) -> Result<Served, CliOutput> {
    let mut full = vec!["simulate"];
    full.extend_from_slice(args);
    let mut child = command(&full, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn qlik-rotator simulate");
    let out = child.stdout.take().expect("piped stdout");
    let err = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut reader = BufReader::new(out);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        let _ = tx.send(first.clone());
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        first + &rest
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = BufReader::new(err).read_to_string(&mut s);
        s
    });
    let first = rx.recv_timeout(Duration::from_secs(60)).unwrap_or_default();
    let mut served = Served {
        child,
        url: first.trim_end().to_owned(),
        stdout: Some(stdout),
        stderr: Some(stderr),
    };
    if first.is_empty() {
        // EOF before a line: it exited (or never printed). Collect what it said.
        return Err(served.wait(Duration::from_secs(10)));
    }
    Ok(served)
}

impl Served {
    /// Sends `signal` (e.g. "TERM", "INT") and waits up to 10 s for the exit.
    pub fn stop(mut self, signal: &str) -> CliOutput {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal}");
        self.wait(Duration::from_secs(10))
    }

    /// Waits for the exit (killing it after `timeout`; code -1 then) and collects its output.
    fn wait(&mut self, timeout: Duration) -> CliOutput {
        let start = Instant::now();
        let code = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status.code().unwrap_or(-1);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break -1;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let stderr = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        CliOutput {
            code,
            stdout,
            stderr,
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
