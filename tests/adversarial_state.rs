//! Adversarial tests of the state directory (issue 10, "Daemon and state"): a second
//! instance, stale locks, unwritable and unsafe directories, umask 000, symbolic links planted
//! where the state file, the lock or a temp file goes, hostile `state.json` contents, and state
//! writes failing while the daemon runs.
//!
//! Every case runs the real code (the binary, or the daemon in-process) against the simulator
//! over HTTP and a file vault whose secrets are canaries, and asserts: the clear message, the
//! exact number of PATCHes (none where none belongs), and that no canary appears in stdout,
//! stderr or `/metrics`.
//!
//! The tests run as root on the CI machine, where `chmod 0500` does not stop a write; an
//! unwritable directory is then one the kernel refuses to anyone (`/sys/kernel`), and a write
//! failing at runtime is a non-empty directory where `state.json` must be renamed.

mod common;

use std::{
    collections::HashMap,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{harness::*, moto::free_port};
use qlik_rotator::{
    config,
    daemon::{self, Running, StartError},
};
use qlik_sim::{SimConfig, Simulator};

const WAIT: Duration = Duration::from_secs(30);

/// Every secret value in the vault contains this.
const CANARY: &str = "CANARY-ST";

/// A tenant, a file vault of canary secrets, and a config with `state_dir = "state"`.
struct World {
    sim: Simulator,
    dir: tempfile::TempDir,
    config: String,
    port: u16,
}

impl World {
    async fn new() -> World {
        Self::with_job_extra("").await
    }

    /// `extra` is added to every job.
    async fn with_job_extra(extra: &str) -> World {
        let sim = tenant(SimConfig::default()).await;
        let dir = tempfile::tempdir().unwrap();
        common::write_demo_vault(dir.path(), "CANARY-ST");
        let port = free_port();
        let jobs = three_jobs("vault").replace("secret = \"", &format!("{extra}\nsecret = \""));
        std::fs::write(dir.path().join("admin-token"), "adversarial-admin-token\n").unwrap();
        let text = format!(
            "{}\n[sources.vault]\ntype = \"file\"\npath = \"vault\"\n[daemon]\nstate_dir = \"state\"\nshutdown_grace_period = \"10s\"\n[metrics]\nlisten = \"127.0.0.1:{port}\"\nper_job_rotated = true\nadmin_token_file = \"admin-token\"\n{jobs}",
            qlik_section(&sim)
        );
        let config = write_config(dir.path(), &text).to_str().unwrap().to_owned();
        World {
            sim,
            dir,
            config,
            port,
        }
    }

    fn config(&self) -> &str {
        &self.config
    }

    fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// The JSON state file of earlier versions (imported once by the SQLite backend).
    fn state_file(&self) -> PathBuf {
        self.state_dir().join("state.json")
    }

    /// The state database.
    fn db_file(&self) -> PathBuf {
        self.state_dir().join("state.db")
    }

    /// What the state database holds (rows, and its raw bytes), for assertions.
    fn state_text(&self) -> String {
        common::statedb::dump(&self.state_dir())
    }

    /// Creates the state directory (0700) with `state.json` = `body` (0600).
    fn seed_state(&self, body: &[u8]) {
        std::fs::create_dir_all(self.state_dir()).unwrap();
        chmod(&self.state_dir(), 0o700);
        std::fs::write(self.state_file(), body).unwrap();
        chmod(&self.state_file(), 0o600);
    }

    fn env(&self) -> Vec<(String, String)> {
        env(&[("QLIK_API_KEY", API_KEY)])
    }

    fn patches(&self) -> usize {
        with_method(&self.sim, "PATCH").len()
    }

    /// `rotate -c … --all` plus `extra`.
    async fn rotate(&self, extra: &[&str]) -> CliOutput {
        let mut args = vec!["rotate", "-c", self.config(), "--all"];
        args.extend(extra);
        run_cli(&args, &self.env()).await
    }

    /// `run`, expected to exit by itself (a refusal); killed after 20 s otherwise.
    async fn run_expecting_exit(&self) -> CliOutput {
        let p = self.spawn_daemon(&[]);
        let mut child = p.child;
        let start = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if start.elapsed() > Duration::from_secs(20) {
                child.kill().unwrap();
                panic!("the daemon did not exit: {}", read(&p.err));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        CliOutput {
            code: status.code().unwrap_or(-1),
            stdout: read(&p.out),
            stderr: read(&p.err),
        }
    }

    /// Starts `run` (output to files); `global` goes before `run`.
    fn spawn_daemon(&self, global: &[&str]) -> Proc {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let out = self.dir.path().join(format!("daemon{n}.stdout"));
        let err = self.dir.path().join(format!("daemon{n}.stderr"));
        let mut args = global.to_vec();
        args.extend(["run", "-c", self.config()]);
        let child = command(&args, &self.env())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .unwrap();
        Proc { child, out, err }
    }

    /// Starts `run` and waits until `/readyz` answers 200.
    async fn daemon_ready(&self) -> Proc {
        let p = self.spawn_daemon(&[]);
        let addr = self.addr();
        let start = Instant::now();
        while http_get(addr, "/readyz").await.0 != 200 {
            assert!(start.elapsed() < WAIT, "daemon not ready: {}", read(&p.err));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        p
    }

    fn addr(&self) -> std::net::SocketAddr {
        format!("127.0.0.1:{}", self.port).parse().unwrap()
    }

    /// The daemon in-process, on an ephemeral port.
    async fn start_in_process(&self) -> Result<Running, StartError> {
        let text = std::fs::read_to_string(self.config())
            .unwrap()
            .replace(&format!(":{}\"", self.port), ":0\"");
        let input: HashMap<String, String> = self.env().into_iter().collect();
        let cfg = config::load_str(&text, self.dir.path(), &input).expect("valid config");
        daemon::start(&cfg, &input).await
    }

    async fn wait_patches(&self, n: usize) {
        assert!(
            wait_until(WAIT, || self.patches() >= n).await,
            "expected {n} PATCH(es), saw {}",
            self.patches()
        );
    }
}

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

struct Proc {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Proc {
    /// SIGTERM, wait, collect the output.
    async fn stop(mut self) -> CliOutput {
        sigterm(&self.child);
        let status = tokio::task::spawn_blocking(move || {
            let s = self.child.wait().unwrap();
            (s, self.out, self.err)
        })
        .await
        .unwrap();
        CliOutput {
            code: status.0.code().unwrap_or(-1),
            stdout: read(&status.1),
            stderr: read(&status.2),
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// No canary and no raw control character (other than newline) in anything printed.
fn assert_clean(out: &CliOutput) {
    for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        assert!(!text.contains(CANARY), "a canary in {name}:\n{text}");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "a control character in {name}: {text:?}"
        );
    }
}

/// A refusal: `code`, every `needles` in stderr, no PATCH, no canary.
fn assert_refused(w: &World, out: &CliOutput, code: i32, needles: &[&str]) {
    assert_eq!(out.code, code, "exit code; stderr:\n{}", out.stderr);
    for n in needles {
        assert!(
            out.stderr.contains(n),
            "missing {n:?} in stderr:\n{}",
            out.stderr
        );
    }
    assert_eq!(w.patches(), 0, "nothing may be PATCHed");
    assert_clean(out);
}

/// A directory this process cannot create files in: `chmod 0500` for an ordinary user; for
/// root (who ignores modes) a sysfs directory, which refuses new files to everyone.
fn unwritable_dir(w: &World) -> PathBuf {
    let dir = w.dir.path().join("ro");
    std::fs::create_dir_all(&dir).unwrap();
    chmod(&dir, 0o500);
    if std::fs::write(dir.join("probe"), b"").is_err() {
        return dir;
    }
    let sys = PathBuf::from("/sys/kernel");
    assert!(
        std::fs::write(sys.join("qlik-rotator-probe"), b"").is_err(),
        "no unwritable directory available for this test"
    );
    sys
}

/// Replaces `state_dir = "state"` in the config.
fn set_state_dir(w: &World, dir: &Path) {
    let text = std::fs::read_to_string(w.config()).unwrap().replace(
        "state_dir = \"state\"",
        &format!("state_dir = \"{}\"", dir.display()),
    );
    std::fs::write(w.config(), text).unwrap();
}

// === a second instance and stale locks ===

#[tokio::test]
async fn second_daemon_is_refused_with_the_holders_pid_and_sends_nothing() {
    let w = World::with_job_extra("run_on_start = true").await;
    let a = w.daemon_ready().await;
    w.wait_patches(3).await;
    let pid = a.child.id();
    let b = w.run_expecting_exit().await;
    assert_eq!(b.code, 75, "{}", b.stderr);
    assert!(
        b.stderr.contains(&format!(
            "error: daemon.state_dir: state directory {} is in use by pid {pid}",
            w.state_dir().display()
        )),
        "{}",
        b.stderr
    );
    assert!(!b.stderr.contains("Serving /metrics"), "{}", b.stderr);
    assert_clean(&b);
    let a = a.stop().await;
    assert_eq!(a.code, 0, "{}", a.stderr);
    assert_clean(&a);
    assert_eq!(
        w.patches(),
        3,
        "each connection PATCHed once, by the first daemon"
    );
}

#[tokio::test]
async fn second_daemon_in_process_is_refused_until_the_first_shuts_down() {
    let w = World::new().await;
    let a = w.start_in_process().await.expect("first daemon");
    let err = w
        .start_in_process()
        .await
        .expect_err("second daemon refused");
    assert!(
        matches!(&err, StartError::State(e) if e.is_in_use()),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains(&format!("is in use by pid {}", std::process::id())),
        "{err}"
    );
    assert!(a.shutdown().await);
    let b = w
        .start_in_process()
        .await
        .expect("the lock is released at shutdown");
    assert!(b.shutdown().await);
    assert_eq!(w.patches(), 0);
}

#[tokio::test]
async fn rotate_while_a_daemon_runs_is_refused_and_sends_nothing() {
    let w = World::new().await;
    let d = w.daemon_ready().await;
    let out = w.rotate(&[]).await;
    assert_refused(
        &w,
        &out,
        75,
        &[&format!("is in use by pid {}", d.child.id()), "POST /jobs/"],
    );
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert_eq!(d.stop().await.code, 0);
}

#[tokio::test]
async fn rotate_if_changed_while_a_daemon_runs_is_refused() {
    let w = World::new().await;
    let d = w.daemon_ready().await;
    let out = w.rotate(&["--if-changed"]).await;
    assert_refused(&w, &out, 75, &["is in use by pid"]);
    assert_eq!(d.stop().await.code, 0);
}

#[tokio::test]
async fn stale_lock_of_a_killed_daemon_does_not_block_the_next_start() {
    let w = World::with_job_extra("run_on_start = true").await;
    let mut d = w.daemon_ready().await;
    w.wait_patches(3).await;
    assert!(wait_until(WAIT, || w.state_text().matches("applied \"").count() == 3).await);
    let old = d.child.id();
    assert!(
        Command::new("kill")
            .args(["-KILL", &old.to_string()])
            .status()
            .unwrap()
            .success()
    );
    d.child.wait().unwrap();
    let lock = w.state_dir().join("state.lock");
    assert_eq!(
        read(&lock).trim(),
        old.to_string(),
        "the dead pid is still written"
    );
    // flock dies with its process: the next one-shot starts at once and sends nothing new.
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.stdout.matches("unchanged").count(), 3, "{}", out.stdout);
    assert_eq!(w.patches(), 3);
    assert_clean(&out);
    let now = read(&lock);
    assert!(
        now.trim().parse::<u32>().is_ok() && now.trim() != old.to_string(),
        "the new holder's pid: {now:?}"
    );
}

#[tokio::test]
async fn lock_held_with_garbage_in_the_lock_file_says_pid_unknown() {
    let w = World::new().await;
    w.seed_state(b"{}");
    let lock_path = w.state_dir().join("state.lock");
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&lock_path)
        .unwrap();
    held.lock().unwrap();
    std::fs::write(&lock_path, "\u{1b}[31mpid 1\n\u{7}CANARY-ST-lock").unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 75, &["in use by another process (pid unknown)"]);
    held.unlock().unwrap();
    drop(held);
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.patches(), 3);
}

#[tokio::test]
async fn lock_file_that_is_a_symlink_is_refused_and_its_target_untouched() {
    let w = World::new().await;
    w.seed_state(b"{}");
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, w.state_dir().join("state.lock")).unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["state.lock is a symbolic link"]);
    assert_eq!(read(&victim), "precious");
}

// === unwritable or unusable directories ===

#[tokio::test]
async fn unwritable_state_dir_stops_the_daemon_before_it_listens() {
    let w = World::with_job_extra("run_on_start = true").await;
    let dir = unwritable_dir(&w);
    set_state_dir(&w, &dir);
    let out = w.run_expecting_exit().await;
    assert_refused(
        &w,
        &out,
        64,
        &[
            "error: daemon.state_dir:",
            "the state directory is not writable",
        ],
    );
    assert!(!out.stderr.contains("Daemon ready"), "{}", out.stderr);
    assert!(
        std::net::TcpStream::connect(w.addr()).is_err(),
        "never served /readyz"
    );
}

#[tokio::test]
async fn unwritable_state_dir_stops_rotate_before_any_patch() {
    let w = World::new().await;
    let dir = unwritable_dir(&w);
    set_state_dir(&w, &dir);
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["the state directory is not writable"]);
    assert!(out.stdout.is_empty());
}

#[tokio::test]
async fn state_dir_that_is_a_file_is_refused() {
    let w = World::new().await;
    std::fs::write(w.state_dir(), "not a directory").unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["state is not a directory"]);
}

#[tokio::test]
async fn read_only_state_db_is_refused_or_used_but_never_widened() {
    let w = World::new().await;
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    chmod(&w.db_file(), 0o400);
    // (Root writes a 0400 file; anyone else is refused with the chmod that fixes it.)
    // Unchanged: the read-only file was read.
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.stdout.matches("unchanged").count(), 3, "{}", out.stdout);
    assert_eq!(w.patches(), 3);
    // A new version is recorded: the file is replaced (rename), 0600.
    std::fs::write(
        w.dir.path().join("vault/qlik/sales-s3.json"),
        r#"{"accessKey":"CANARY-ST-AKIA2","secretKey":"CANARY-ST-SECRET2"}"#,
    )
    .unwrap();
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.patches(), 4);
    assert_eq!(
        mode(&w.db_file()),
        0o400,
        "the mode is the operator's to widen"
    );
    assert!(w.state_text().contains("applied \"sales-s3\""));
    assert_clean(&out);
}

#[tokio::test]
async fn umask_000_still_creates_0700_directories_and_0600_files() {
    let w = World::new().await;
    let nested = w.dir.path().join("deep/er/state");
    set_state_dir(&w, &nested);
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "umask 000 && exec \"$0\" \"$@\"",
        env!("CARGO_BIN_EXE_qlik-rotator"),
        "rotate",
        "-c",
        w.config(),
        "--all",
    ])
    .env_clear()
    .env("PATH", std::env::var("PATH").unwrap_or_default())
    .env("QLIK_API_KEY", API_KEY)
    .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let out = CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.patches(), 3);
    assert_clean(&out);
    for dir in ["deep", "deep/er", "deep/er/state"] {
        assert_eq!(mode(&w.dir.path().join(dir)), 0o700, "{dir}");
    }
    for file in ["state.db", "state.lock"] {
        assert_eq!(mode(&nested.join(file)), 0o600, "{file}");
    }
}

async fn refused_mode(dir_mode: u32, file_mode: Option<u32>, needle: &str) {
    let w = World::new().await;
    w.seed_state(b"{}");
    chmod(&w.state_dir(), dir_mode);
    if let Some(m) = file_mode {
        chmod(&w.state_file(), m);
    }
    let out = w.rotate(&[]).await;
    assert_refused(
        &w,
        &out,
        64,
        &[needle, "is group- or world-writable", "suppress rotations"],
    );
}

#[tokio::test]
async fn group_writable_state_dir_is_refused_with_the_chmod_fix() {
    refused_mode(0o770, None, "(mode 0770)").await;
}

#[tokio::test]
async fn world_writable_state_dir_is_refused_with_the_chmod_fix() {
    refused_mode(0o777, None, "fix it with: chmod 700 ").await;
}

#[tokio::test]
async fn sticky_world_writable_state_dir_is_refused() {
    refused_mode(0o1777, None, "(mode 1777)").await;
}

#[tokio::test]
async fn group_writable_state_file_is_refused_with_the_chmod_fix() {
    refused_mode(
        0o700,
        Some(0o660),
        "state.json is group- or world-writable (mode 0660)",
    )
    .await;
}

#[tokio::test]
async fn world_writable_state_file_is_refused_with_the_chmod_fix() {
    refused_mode(0o700, Some(0o666), "fix it with: chmod 600 ").await;
}

#[tokio::test]
async fn world_writable_state_dir_stops_the_daemon() {
    let w = World::with_job_extra("run_on_start = true").await;
    w.seed_state(b"{}");
    chmod(&w.state_dir(), 0o777);
    let out = w.run_expecting_exit().await;
    assert_refused(&w, &out, 64, &["chmod 700"]);
}

// === symbolic links and special files ===

#[tokio::test]
async fn symlinked_state_json_is_refused_and_its_target_untouched() {
    let w = World::new().await;
    w.seed_state(b"{}");
    std::fs::remove_file(w.state_file()).unwrap();
    let victim = w.dir.path().join("victim.json");
    std::fs::write(&victim, r#"{"format":1,"jobs":{}}"#).unwrap();
    symlink(&victim, w.state_file()).unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(
        &w,
        &out,
        64,
        &["state.json is a symbolic link", "remove it"],
    );
    assert_eq!(read(&victim), r#"{"format":1,"jobs":{}}"#);
}

#[tokio::test]
async fn dangling_symlink_state_json_is_refused_and_nothing_is_created() {
    let w = World::new().await;
    w.seed_state(b"{}");
    std::fs::remove_file(w.state_file()).unwrap();
    let target = w.dir.path().join("created-by-the-attacker");
    symlink(&target, w.state_file()).unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["state.json is a symbolic link"]);
    assert!(!target.exists());
}

#[tokio::test]
async fn state_json_that_is_a_directory_is_refused() {
    let w = World::new().await;
    std::fs::create_dir_all(w.state_file()).unwrap();
    chmod(&w.state_dir(), 0o700);
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["state.json is not a regular file"]);
}

#[tokio::test]
async fn state_json_that_is_a_fifo_is_refused_without_blocking() {
    let w = World::new().await;
    w.seed_state(b"{}");
    std::fs::remove_file(w.state_file()).unwrap();
    assert!(
        Command::new("mkfifo")
            .arg(w.state_file())
            .status()
            .unwrap()
            .success()
    );
    let out = tokio::time::timeout(Duration::from_secs(20), w.rotate(&[]))
        .await
        .expect("rotate must not block on a FIFO");
    assert_refused(&w, &out, 64, &["state.json is not a regular file"]);
}

#[tokio::test]
async fn planted_wal_symlink_is_refused_and_its_target_untouched() {
    let w = World::new().await;
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    // SQLite would write its log through the link: refused before it opens the database.
    for companion in ["state.db-wal", "state.db-shm", "state.db-journal"] {
        let planted = w.state_dir().join(companion);
        symlink(&victim, &planted).unwrap();
        let out = w.rotate(&[]).await;
        assert_eq!(out.code, 64, "{companion}: {}", out.stderr);
        assert!(
            out.stderr
                .contains(&format!("{companion} is a symbolic link")),
            "{companion}: {}",
            out.stderr
        );
        assert_clean(&out);
        std::fs::remove_file(&planted).unwrap();
    }
    assert_eq!(read(&victim), "precious", "the link's target was written");
    assert_eq!(w.patches(), 3, "nothing PATCHed by the refused runs");
}

#[tokio::test]
async fn state_db_swapped_for_a_symlink_at_runtime_is_not_followed_and_refused_next_start() {
    let w = World::new().await;
    let r = w.start_in_process().await.unwrap();
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    let moved = w.state_dir().join("moved.db");
    std::fs::rename(w.db_file(), &moved).unwrap();
    symlink(&victim, w.db_file()).unwrap();
    r.daemon.trigger("sales-s3", false);
    w.wait_patches(1).await;
    wait_metric(
        &r,
        "qlik_rotator_rotations_total",
        &[("rotation_job", "sales-s3"), ("outcome", "rotated")],
        1.0,
    )
    .await;
    assert!(r.shutdown().await);
    assert_eq!(read(&victim), "precious");
    // The open database kept its file (SQLite notices it moved and leaves the record in its
    // log rather than checkpoint): the record is there, not in the link's target.
    let wal = String::from_utf8_lossy(
        &std::fs::read(w.state_dir().join("state.db-wal")).unwrap_or_default(),
    )
    .into_owned();
    assert!(
        common::statedb::dump_file(&moved).contains("sales-s3") || wal.contains("sales-s3"),
        "the record is in the moved database or its log"
    );
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("state.db is a symbolic link"),
        "{}",
        out.stderr
    );
    assert_eq!(w.patches(), 1);
    assert_eq!(read(&victim), "precious");
    assert_clean(&out);
}

// === hostile contents ===

#[tokio::test]
async fn corrupt_state_json_imports_nothing_says_so_and_is_set_aside() {
    let w = World::new().await;
    w.seed_state(b"{\"format\":1,\"jobs\":{\"sales-s3\":");
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("The JSON state file could not be read: nothing imported"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("line"), "{}", out.stderr);
    assert_eq!(w.patches(), 3, "a fresh start rotates each job once");
    assert_eq!(w.state_text().matches("applied \"").count(), 3);
    assert!(!w.state_file().exists());
    assert!(w.state_dir().join("state.json.corrupt").exists());
    assert_clean(&out);
    // The second start does not try again.
    let out = w.rotate(&["--if-changed"]).await;
    assert!(!out.stderr.contains("JSON state file"), "{}", out.stderr);
    assert_eq!(w.patches(), 3);
}

#[tokio::test]
async fn hostile_values_in_state_json_are_never_echoed() {
    // Each is valid JSON of the wrong shape, quoting text serde would put into its message.
    let cases: &[(&str, &str)] = &[
        ("array at the top", r#"["CANARY-ST-top"]"#),
        ("string at the top", "\"CANARY-ST-top\\u001b[2J\""),
        ("jobs is a string", r#"{"jobs":"CANARY-ST-jobs"}"#),
        (
            "applied_at is a string with escapes",
            r#"{"jobs":{"sales-s3":{"connection_id":"x","applied_version":"v","applied_at":"\u001b[31mCANARY-ST-at\nFORGED: rotated and verified"}}}"#,
        ),
        (
            "connection_id is a number",
            r#"{"jobs":{"sales-s3":{"connection_id":123456789,"applied_version":"CANARY-ST-v","applied_at":1}}}"#,
        ),
        (
            "format is a string",
            r#"{"format":"CANARY-ST-format","jobs":{}}"#,
        ),
        (
            "unknown variant-like enum text",
            r#"{"jobs":{"sales-s3":{"connection_id":"x","applied_version":"v","applied_at":1.5e300}}}"#,
        ),
    ];
    println!("{} hostile state.json cases", cases.len());
    for (name, body) in cases {
        let w = World::new().await;
        w.seed_state(body.as_bytes());
        let out = w.rotate(&["--if-changed"]).await;
        assert_eq!(out.code, 0, "{name}: {}", out.stderr);
        assert!(
            out.stderr.contains("nothing imported"),
            "{name}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("FORGED"), "{name}: {}", out.stderr);
        assert_clean(&out);
        assert_eq!(w.patches(), 3, "{name}: a fresh start rotates once");
    }
}

#[tokio::test]
async fn huge_state_json_is_a_fresh_start_without_reading_it() {
    let w = World::new().await;
    w.seed_state(b"");
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(w.state_file())
        .unwrap();
    // Sparse: costs no disk, but reading it would cost 64 MiB of memory.
    f.set_len(qlik_rotator::state::MAX_STATE_BYTES + 1).unwrap();
    drop(f);
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("larger than"), "{}", out.stderr);
    assert!(out.stderr.contains("nothing imported"), "{}", out.stderr);
    assert_eq!(w.patches(), 3);
    assert!(!w.state_file().exists());
    // Set aside as it was (still sparse: never read).
    let aside = w.state_dir().join("state.json.corrupt");
    assert_eq!(
        std::fs::metadata(aside).unwrap().len(),
        qlik_rotator::state::MAX_STATE_BYTES + 1
    );
    assert_clean(&out);
}

#[tokio::test]
async fn control_characters_in_job_names_are_kept_but_never_printed() {
    let w = World::new().await;
    let evil = "evil\u{1b}]0;pwned\u{7}\nFORGED: rotated and verified";
    let body = serde_json::json!({"format": 1, "jobs": {
        evil: {"connection_id": "x", "applied_version": "\u{1b}[2J", "applied_at": 1}
    }});
    w.seed_state(body.to_string().as_bytes());
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.patches(), 3);
    assert!(!out.stderr.contains("FORGED") && !out.stdout.contains("FORGED"));
    assert_clean(&out);
    // The foreign entry is imported as it was (it is data, never printed raw).
    assert!(w.state_text().contains(&format!("applied \"{evil}\"")));
    assert!(w.state_dir().join("state.json.imported").exists());
}

#[tokio::test]
async fn future_timestamps_do_not_make_a_job_look_fresh() {
    let w = World::new().await;
    let body = serde_json::json!({"format": 1, "jobs": {
        "sales-s3": {"connection_id": S3_ID, "applied_version": "other", "applied_at": i64::MAX, "checked_at": i64::MAX}
    }});
    w.seed_state(body.to_string().as_bytes());
    let r = w.start_in_process().await.unwrap();
    let text = http_get(r.addr, "/metrics").await.1;
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_last_success_timestamp_seconds",
            &[("rotation_job", "sales-s3")]
        ),
        None,
        "an implausible time is not a last success:\n{text}"
    );
    assert!(!text.contains(CANARY));
    assert!(r.shutdown().await);
    assert_eq!(w.patches(), 0);
}

#[tokio::test]
async fn extreme_timestamps_do_not_panic_the_daemon() {
    let w = World::new().await;
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Keep the applied versions; make every time i64::MIN.
    common::statedb::set_times(&w.state_dir(), i64::MIN, i64::MIN);
    let r = w.start_in_process().await.unwrap();
    for job in ["sales-s3", "finance-sql", "warehouse-bq"] {
        r.daemon.trigger(job, false);
    }
    let start = Instant::now();
    loop {
        let text = http_get(r.addr, "/metrics").await.1;
        // `unchanged` is counted per connector; each of the three jobs has its own.
        let unchanged: f64 = CONNECTORS
            .iter()
            .map(|(_, c)| {
                metric(
                    &text,
                    "qlik_rotator_rotations_unchanged_total",
                    &[("connector", c)],
                )
                .unwrap_or(0.0)
            })
            .sum();
        if unchanged >= 3.0 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(r.shutdown().await);
    assert_eq!(w.patches(), 3, "unchanged: nothing re-applied");
    let checked = common::statedb::checked_at(&w.state_dir(), "sales-s3");
    assert!(checked > 1_700_000_000, "checked_at refreshed: {checked}");
}

// === state writes failing while the daemon runs ===

/// Triggers `job` until its `outcome` count reaches `want` (a trigger that lands while the
/// previous run is still finishing is skipped by design, so it is repeated).
/// The connector of each of the three standard jobs (`unchanged` is counted per connector).
const CONNECTORS: [(&str, &str); 3] = [
    ("sales-s3", "File_AmazonS3ConnectorV2"),
    ("finance-sql", "mssql"),
    ("warehouse-bq", "gbq"),
];

fn connector_of(job: &str) -> &'static str {
    CONNECTORS
        .iter()
        .find(|(j, _)| *j == job)
        .map(|(_, c)| *c)
        .expect("one of the three standard jobs")
}

/// Triggers `job` until its connector's `rotations_unchanged_total` reaches `want`.
async fn trigger_until_unchanged(r: &Running, job: &str, want: f64) {
    let start = Instant::now();
    let connector = [("connector", connector_of(job))];
    loop {
        r.daemon.trigger(job, false);
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let text = http_get(r.addr, "/metrics").await.1;
            let seen = metric(&text, "qlik_rotator_rotations_unchanged_total", &connector);
            if seen.is_some_and(|v| v >= want) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            start.elapsed() < WAIT,
            "{job} never reached unchanged = {want}"
        );
    }
}

/// Waits until a gauge equals `want`.
async fn wait_metric(r: &Running, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    wait_for(r, name, labels, want, |v| v == want).await
}

/// Waits until a counter reaches `want`.
async fn wait_at_least(r: &Running, name: &str, labels: &[(&str, &str)], want: f64) -> String {
    wait_for(r, name, labels, want, |v| v >= want).await
}

async fn wait_for(
    r: &Running,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    ok: impl Fn(f64) -> bool,
) -> String {
    let start = Instant::now();
    loop {
        let text = http_get(r.addr, "/metrics").await.1;
        if metric(&text, name, labels).is_some_and(&ok) {
            return text;
        }
        assert!(
            start.elapsed() < WAIT,
            "timed out waiting for {name}{labels:?} = {want}:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn state_write_failing_mid_run_never_re_patches_and_recovers() {
    let w = World::new().await;
    let r = w.start_in_process().await.unwrap();
    let text = http_get(r.addr, "/metrics").await.1;
    assert_eq!(metric(&text, "qlik_rotator_state_writable", &[]), Some(1.0));
    assert_eq!(
        metric(&text, "qlik_rotator_state_write_failures_total", &[]),
        Some(0.0)
    );
    // Another program holds the database's write lock: every write fails (even as root).
    let blocker = common::statedb::WriteBlocker::hold(&w.state_dir());
    r.daemon.trigger("sales-s3", false);
    wait_metric(
        &r,
        "qlik_rotator_rotations_total",
        &[("rotation_job", "sales-s3"), ("outcome", "rotated")],
        1.0,
    )
    .await;
    wait_metric(&r, "qlik_rotator_state_writable", &[], 0.0).await;
    // Five more runs while the file cannot be written: each finds the version applied.
    for n in 1..=5 {
        trigger_until_unchanged(&r, "sales-s3", f64::from(n)).await;
    }
    assert_eq!(w.patches(), 1, "the unchanged secret was re-PATCHed");
    assert_eq!(http_get(r.addr, "/readyz").await.0, 200);
    let text = http_get(r.addr, "/metrics").await.1;
    assert!(
        metric(&text, "qlik_rotator_state_write_failures_total", &[]).unwrap() >= 1.0,
        "{text}"
    );
    let (ok, report) = promtool_check_metrics(&text);
    assert!(ok, "{report}");
    assert!(!text.contains(CANARY));

    // Fixed: the flusher writes the remembered version, and the gauge recovers.
    drop(blocker);
    wait_metric(&r, "qlik_rotator_state_writable", &[], 1.0).await;
    assert!(w.state_text().contains("applied \"sales-s3\""));
    // The history holds the rotation and the five unchanged runs, written late.
    assert_eq!(
        common::statedb::attempts(&w.state_dir(), "sales-s3", "rotated"),
        1
    );
    assert_eq!(
        common::statedb::attempts(&w.state_dir(), "sales-s3", "unchanged"),
        5
    );
    assert!(r.shutdown().await);

    // A restart reads it: still unchanged, still one PATCH.
    let r = w.start_in_process().await.unwrap();
    trigger_until_unchanged(&r, "sales-s3", 1.0).await;
    assert!(r.shutdown().await);
    assert_eq!(w.patches(), 1);
}

#[tokio::test]
async fn state_write_failing_on_a_one_second_schedule_patches_once() {
    let w = World::with_job_extra("schedule = \"* * * * * *\"").await;
    let r = w.start_in_process().await.unwrap();
    let _blocker = common::statedb::WriteBlocker::hold(&w.state_dir());
    // The issue saw 5 PATCHes in 8 s; wait for three ticks per job after the first rotation.
    for (_, connector) in CONNECTORS {
        wait_at_least(
            &r,
            "qlik_rotator_rotations_unchanged_total",
            &[("connector", connector)],
            3.0,
        )
        .await;
    }
    let text = http_get(r.addr, "/metrics").await.1;
    assert_eq!(metric(&text, "qlik_rotator_state_writable", &[]), Some(0.0));
    assert!(r.shutdown().await);
    assert_eq!(
        w.patches(),
        3,
        "one PATCH per connection, however many ticks"
    );
}

#[tokio::test]
async fn daemon_logs_a_failed_state_write_and_the_shutdown_flush_without_secrets() {
    let w = World::new().await;
    let d = w.daemon_ready().await;
    let _blocker = common::statedb::WriteBlocker::hold(&w.state_dir());
    let resp = reqwest::Client::new()
        .post(format!("http://{}/jobs/sales-s3/rotate", w.addr()))
        .bearer_auth("adversarial-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    w.wait_patches(1).await;
    let start = Instant::now();
    loop {
        let text = http_get(w.addr(), "/metrics").await.1;
        if metric(&text, "qlik_rotator_state_write_failures_total", &[]).unwrap_or(0.0) >= 1.0 {
            break;
        }
        assert!(start.elapsed() < WAIT, "{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = d.stop().await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    for needle in [
        "Cannot write the state file; the applied version is kept in memory (no re-apply)",
        "Cannot write the state file at shutdown",
        "state backend sqlite",
        "database is locked",
    ] {
        assert!(
            out.stderr.contains(needle),
            "missing {needle:?}:\n{}",
            out.stderr
        );
    }
    assert_clean(&out);
    assert_eq!(w.patches(), 1);
}

// === the state database (issue 12) ===

#[tokio::test]
async fn symlinked_state_db_is_refused_and_its_target_untouched() {
    let w = World::new().await;
    std::fs::create_dir_all(w.state_dir()).unwrap();
    chmod(&w.state_dir(), 0o700);
    let victim = w.dir.path().join("victim");
    std::fs::write(&victim, "precious").unwrap();
    symlink(&victim, w.db_file()).unwrap();
    let out = w.rotate(&[]).await;
    assert_refused(
        &w,
        &out,
        64,
        &[
            "daemon.state_dir",
            "state.db is a symbolic link",
            "remove it",
        ],
    );
    assert_eq!(read(&victim), "precious");
    let out = w.run_expecting_exit().await;
    assert_refused(&w, &out, 64, &["state.db is a symbolic link"]);
}

#[tokio::test]
async fn group_writable_state_db_is_refused_with_the_chmod_fix() {
    let w = World::new().await;
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    chmod(&w.db_file(), 0o660);
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    for needle in [
        "state.db is group- or world-writable (mode 0660)",
        "chmod 600",
    ] {
        assert!(out.stderr.contains(needle), "{needle}: {}", out.stderr);
    }
    assert_eq!(w.patches(), 3, "nothing PATCHed by the refused run");
    assert_clean(&out);
    // `history` refuses it too: a forged audit trail is not shown as ours.
    let out = run_cli(&["history", "-c", w.config()], &w.env()).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(out.stderr.contains("chmod 600"), "{}", out.stderr);
    assert_clean(&out);
}

#[tokio::test]
async fn state_db_that_is_a_directory_is_refused() {
    let w = World::new().await;
    std::fs::create_dir_all(w.db_file().join("x")).unwrap();
    chmod(&w.state_dir(), 0o700);
    let out = w.rotate(&[]).await;
    assert_refused(&w, &out, 64, &["state.db is not a regular file"]);
}

#[tokio::test]
async fn state_db_locked_by_another_program_is_refused_before_any_patch() {
    let w = World::new().await;
    let out = w.rotate(&[]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    std::fs::write(
        w.dir.path().join("vault/qlik/sales-s3.json"),
        r#"{"accessKey":"CANARY-ST-AKIA2","secretKey":"CANARY-ST-SECRET2"}"#,
    )
    .unwrap();
    let blocker = common::statedb::WriteBlocker::hold(&w.state_dir());
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert!(
        out.stderr.contains("state.db is locked by another program"),
        "{}",
        out.stderr
    );
    assert_eq!(
        w.patches(),
        3,
        "no PATCH while the change could not be recorded"
    );
    assert_clean(&out);
    drop(blocker);
    let out = w.rotate(&["--if-changed"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(w.patches(), 4);
}

#[tokio::test]
async fn corrupt_state_db_is_refused_with_the_fix_and_left_alone() {
    let w = World::new().await;
    std::fs::create_dir_all(w.state_dir()).unwrap();
    chmod(&w.state_dir(), 0o700);
    let garbage = format!("SQLite format 3\0{CANARY}\u{1b}[2J FORGED: rotated\n").repeat(300);
    std::fs::write(w.db_file(), &garbage).unwrap();
    chmod(&w.db_file(), 0o600);
    let out = w.rotate(&[]).await;
    assert_refused(
        &w,
        &out,
        64,
        &[
            "daemon.state_dir",
            "state.db is not a usable state database",
            "mv ",
            ".corrupt",
        ],
    );
    assert!(!out.stderr.contains("FORGED"), "{}", out.stderr);
    assert_eq!(read(&w.db_file()), garbage, "never replaced silently");
    let out = w.run_expecting_exit().await;
    assert_refused(&w, &out, 64, &["is not a usable state database"]);
    let out = run_cli(&["history", "-c", w.config()], &w.env()).await;
    assert_eq!(out.code, 64, "{}", out.stderr);
    assert_clean(&out);
}

#[tokio::test]
async fn hostile_job_names_in_history_are_escaped_and_capped() {
    let w = World::new().await;
    let evil = format!(
        "evil\u{1b}]0;pwned\u{7}\u{202e}\nFORGED: rotated and verified\r{}",
        "x".repeat(100_000)
    );
    let s = qlik_rotator::state::SqliteBackend::open(w.state_dir()).unwrap();
    use qlik_rotator::state::StateBackend;
    s.append_history(&qlik_rotator::state::Attempt {
        at_ms: chrono::Utc::now().timestamp_millis(),
        job: evil.clone(),
        connection: format!("{evil}-conn"),
        outcome: "failed\u{1b}[31m".into(),
        stage: Some("apply\n".into()),
        error_type: Some("x\u{7}".into()),
        secret_version: Some(format!("{CANARY}-is-a-version-not-a-value\u{1b}")),
        duration_ms: u64::MAX,
    })
    .await
    .unwrap();
    s.close().await;
    for output in ["table", "json"] {
        let out = run_cli(&["history", "-c", w.config(), "--output", output], &w.env()).await;
        assert_eq!(out.code, 0, "{output}: {}", out.stderr);
        for (name, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            assert!(
                !text
                    .chars()
                    .any(|c| (c.is_control() && c != '\n') || c == '\u{202e}'),
                "{output}: a raw control or bidi character in {name}"
            );
        }
        assert!(
            !out.stdout.lines().any(|l| l.starts_with("FORGED")),
            "{output}: a forged line"
        );
        assert!(
            out.stdout.len() < 4_000,
            "{output}: capped ({} bytes)",
            out.stdout.len()
        );
        assert!(out.stdout.contains("evil"), "{output}: {}", out.stdout);
    }
    assert_eq!(w.patches(), 0);
}

/// A backend that grants no lease (as DynamoDB does while another replica holds the job):
/// the run is skipped before any vault read or Qlik call, with the event and the metric.
#[derive(Debug)]
struct NoLeases(std::sync::Arc<dyn qlik_rotator::state::StateBackend>);

#[async_trait::async_trait]
impl qlik_rotator::state::StateBackend for NoLeases {
    fn kind(&self) -> &'static str {
        "no-leases"
    }
    async fn load(
        &self,
    ) -> Result<std::collections::BTreeMap<String, qlik_rotator::state::JobState>, StateError2>
    {
        self.0.load().await
    }
    async fn get(&self, key: &str) -> Result<Option<qlik_rotator::state::JobState>, StateError2> {
        self.0.get(key).await
    }
    async fn record(
        &self,
        key: &str,
        state: qlik_rotator::state::JobState,
        lease: Option<&qlik_rotator::state::Lease>,
    ) -> Result<(), StateError2> {
        self.0.record(key, state, lease).await
    }
    async fn touch(
        &self,
        key: &str,
        now: i64,
        lease: Option<&qlik_rotator::state::Lease>,
    ) -> Result<(), StateError2> {
        self.0.touch(key, now, lease).await
    }
    async fn append_history(&self, a: &qlik_rotator::state::Attempt) -> Result<(), StateError2> {
        self.0.append_history(a).await
    }
    async fn history(
        &self,
        q: &qlik_rotator::state::HistoryQuery,
    ) -> Result<Vec<qlik_rotator::state::Attempt>, StateError2> {
        self.0.history(q).await
    }
    async fn prune_history(&self, before_ms: i64) -> Result<u64, StateError2> {
        self.0.prune_history(before_ms).await
    }
    async fn acquire_lease(
        &self,
        _job: &str,
        _owner: &str,
        _ttl: Duration,
        _now: i64,
    ) -> Result<Option<qlik_rotator::state::Lease>, StateError2> {
        Ok(None)
    }
    async fn release_lease(&self, l: &qlik_rotator::state::Lease) -> Result<(), StateError2> {
        self.0.release_lease(l).await
    }
    async fn health(&self) -> Result<(), StateError2> {
        self.0.health().await
    }
    async fn close(&self) {
        self.0.close().await;
    }
}

type StateError2 = qlik_rotator::state::StateError;

#[tokio::test]
async fn a_job_whose_lease_is_held_elsewhere_is_skipped_before_anything_is_read_or_sent() {
    use qlik_rotator::runner::{JobRuntime, RetryPolicy, Runner, Skipped};
    let w = World::new().await;
    let text = std::fs::read_to_string(w.config()).unwrap();
    let input: HashMap<String, String> = w.env().into_iter().collect();
    let cfg = config::load_str(&text, w.dir.path(), &input).unwrap();
    let mut app = qlik_rotator::app::App::build(&cfg, &input).await.unwrap();
    app.state = std::sync::Arc::new(NoLeases(app.state.clone()));
    let runner = Runner::new(&app, 4, RetryPolicy::new(1));
    let before = w.sim.requests().len();
    for job in &cfg.jobs {
        let rt = JobRuntime::ungated(job.clone());
        assert_eq!(
            runner.run_job(&rt, true, None).await.unwrap_err(),
            Skipped::NoLease
        );
    }
    assert_eq!(w.sim.requests().len(), before, "no Qlik call at all");
    assert_eq!(w.patches(), 0);
    let text = app.metrics.render();
    assert_eq!(
        metric(
            &text,
            "qlik_rotator_lease_skips_total",
            &[("reason", "held_elsewhere")]
        ),
        Some(3.0),
        "{text}"
    );
    assert!(!text.contains(CANARY));
    let q = qlik_rotator::state::HistoryQuery {
        limit: 10,
        ..Default::default()
    };
    assert!(
        app.state.history(&q).await.unwrap().is_empty(),
        "no attempt"
    );
    runner.close_state().await.unwrap();
}
