//! A real moto server (AWS emulator) on a loopback port, for integration tests.
//!
//! Needs the venv made by `scripts/setup-moto.sh` (at `<repo>/.venv-moto`, or wherever
//! `QLIK_ROTATOR_MOTO_VENV` points). The server runs `scripts/moto_server.py`, which patches a
//! moto bug (see that file), and is killed when the [`Moto`] is dropped.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aws_sdk_secretsmanager::{
    Client,
    config::{BehaviorVersion, Credentials, Region},
    primitives::Blob,
};
use qlik_rotator::secrets::aws::{default_retry_config, default_timeout_config};

const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// A running moto server.
pub struct Moto {
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    child: Child,
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv_dir() -> PathBuf {
    std::env::var_os("QLIK_ROTATOR_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest_dir().join(".venv-moto"))
}

/// A loopback port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .expect("bind an ephemeral loopback port")
        .port()
}

/// Whether `GET /moto-api/` answers 200.
fn ready(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = "GET /moto-api/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0_u8; 12];
    stream.read_exact(&mut head).is_ok() && head.ends_with(b" 200")
}

impl Moto {
    /// Starts moto on a free loopback port and waits until it answers.
    ///
    /// # Panics
    /// When the venv is missing or the server does not become ready within 20 s; the message
    /// says to run `scripts/setup-moto.sh`.
    pub fn start() -> Moto {
        Self::start_with_env(&[])
    }

    /// Like [`Moto::start`], with extra environment variables for the server process only
    /// (e.g. `INITIAL_NO_AUTH_ACTION_COUNT=0` to make moto check credentials).
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let venv = venv_dir();
        let python = venv.join("bin").join("python");
        let hint = "run `bash scripts/setup-moto.sh` (or point QLIK_ROTATOR_MOTO_VENV at its venv)";
        assert!(
            python.exists(),
            "moto venv not found at {}: {hint}",
            venv.display()
        );
        let script = manifest_dir().join("scripts").join("moto_server.py");
        let port = free_port();
        let log_path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("moto-{port}.log"));
        let log = std::fs::File::create(&log_path).expect("create the moto log file");
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .arg(port.to_string())
            .arg("--exit-with-parent")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log handle"))
            .stderr(log);
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot start {} {}: {e}; {hint}",
                python.display(),
                script.display()
            )
        });
        // From here on, Drop kills the child even if we panic.
        let mut moto = Moto {
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if ready(port) {
                return moto;
            }
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!(
                    "moto server exited ({status}) before it was ready; {hint}\n--- {} ---\n{}",
                    log_path.display(),
                    log()
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "moto server not ready on port {port} after {READY_TIMEOUT:?}; {hint}\n--- {} ---\n{}",
                    log_path.display(),
                    log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A Secrets Manager client for this server: explicit endpoint, us-east-1, static test
    /// credentials, and the production timeouts and retry policy.
    pub async fn client(&self) -> Client {
        client_for(&self.endpoint)
    }

    /// Creates a string secret and returns its version id.
    pub async fn create_secret(&self, name: &str, value: &str) -> String {
        let out = self
            .client()
            .await
            .create_secret()
            .name(name)
            .secret_string(value)
            .send()
            .await
            .expect("CreateSecret");
        out.version_id().expect("CreateSecret VersionId").to_owned()
    }

    /// Creates a binary secret and returns its version id.
    pub async fn create_binary_secret(&self, name: &str, value: &[u8]) -> String {
        let out = self
            .client()
            .await
            .create_secret()
            .name(name)
            .secret_binary(Blob::new(value))
            .send()
            .await
            .expect("CreateSecret (binary)");
        out.version_id().expect("CreateSecret VersionId").to_owned()
    }

    /// Stores a new current string value and returns its version id.
    pub async fn put_secret_value(&self, name: &str, value: &str) -> String {
        let out = self
            .client()
            .await
            .put_secret_value()
            .secret_id(name)
            .secret_string(value)
            .send()
            .await
            .expect("PutSecretValue");
        out.version_id()
            .expect("PutSecretValue VersionId")
            .to_owned()
    }
}

/// A Secrets Manager client for any endpoint (e.g. a closed port), configured like
/// [`Moto::client`].
pub fn client_for(endpoint: &str) -> Client {
    let config = aws_sdk_secretsmanager::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("testing", "testing", None, None, "moto"))
        .timeout_config(default_timeout_config())
        .retry_config(default_retry_config())
        .build();
    Client::from_conf(config)
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
