//! The real daemon binary, run in a test's namespace, its audit stream collected.

use std::{
    fs::File,
    io::{BufRead as _, BufReader},
    os::{fd::AsRawFd as _, unix::process::CommandExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{net::NetNs, unique};

/// A directory under /tmp for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new() -> Self {
        let p = std::env::temp_dir().join(unique("enforcer-test-"));
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
}

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `enforcer run` with `config`, the control socket at `socket`, pins under `pin_dir` and
/// (if given) state in `state_dir`, in namespace `ns`: how every test and the bench start
/// a daemon. Callers add stdio, the environment and further options.
pub fn run_command(
    ns: &NetNs,
    config: &Path,
    socket: &Path,
    pin_dir: &Path,
    state_dir: Option<&Path>,
) -> Command {
    let mut cmd = Command::new(crate::enforcer_bin());
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--socket")
        .arg(socket)
        .arg("--pin-dir")
        .arg(pin_dir);
    if let Some(state) = state_dir {
        cmd.arg("--state-dir").arg(state);
    }
    place(&mut cmd, Some(&ns.path()), None);
    cmd
}

/// Sets up `cmd` to start inside `netns` (network namespace only) and `cgroup_procs`
/// (a cgroup.procs file), both optional.
pub fn place(cmd: &mut Command, netns: Option<&Path>, cgroup_procs: Option<&Path>) {
    let ns = netns.map(|p| File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display())));
    let cg = cgroup_procs.map(|p| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(p)
            .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
    });
    // SAFETY: between fork and exec the child only makes raw syscalls (write, setns) on
    // descriptors opened before the fork.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(cg) = &cg {
                let pid = format!("{}\n", libc::getpid());
                if libc::write(cg.as_raw_fd(), pid.as_ptr().cast(), pid.len()) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(ns) = &ns {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// A pin directory under /sys/fs/bpf for one test; whatever is pinned there is removed
/// on drop (that detaches the programs a daemon left attached).
pub struct Pins(pub PathBuf);

impl Pins {
    pub fn new() -> Self {
        Pins(PathBuf::from("/sys/fs/bpf").join(unique("enftest")))
    }
}

impl Default for Pins {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if self.0.exists() {
            let _ = remove_pins(&self.0);
        }
    }
}

/// Removes a test's pin directory: the daemon's layout first (links before maps, which
/// detaches the programs), then whatever else a test pinned there (a program it runs).
pub fn remove_pins(dir: &Path) -> std::io::Result<()> {
    let _ = enforcer::kernel::pins::remove_all(dir);
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// The daemon, running `enforcer run` in a namespace with a policy file of its own.
pub struct Daemon {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    pub policy_path: PathBuf,
    /// This daemon's control socket.
    pub socket: PathBuf,
    /// Its pin directory (removed after the daemon on drop).
    pub pins: Option<Pins>,
    pub dir: TempDir,
}

impl Daemon {
    /// Starts the daemon in `ns` with `policy` and waits until it applied it.
    pub fn start(ns: &NetNs, policy: &str) -> Self {
        Self::start_with(ns, policy, &[])
    }

    /// As `start`, with extra arguments to `enforcer run`.
    pub fn start_with(ns: &NetNs, policy: &str, args: &[&str]) -> Self {
        Self::start_pinned(ns, policy, args, Pins::new())
    }

    /// `start_pinned` on an earlier daemon's pins; panics unless it adopted them (its
    /// programs and policy, with no gap).
    pub fn adopt(ns: &NetNs, policy: &str, args: &[&str], pins: Pins) -> Self {
        let d = Self::start_pinned(ns, policy, args, pins);
        let stderr = d.stderr();
        assert!(
            stderr.contains("adopted the pinned programs and policy"),
            "the daemon did not adopt the pinned state: {stderr}"
        );
        d
    }

    /// As `start_with`, pinning under `pins` (which may hold an earlier daemon's state to
    /// adopt).
    pub fn start_pinned(ns: &NetNs, policy: &str, args: &[&str], pins: Pins) -> Self {
        let dir = TempDir::new();
        let policy_path = dir.0.join("policy.toml");
        std::fs::write(&policy_path, policy).expect("write policy");
        Self::spawn(ns, policy_path, dir, args, pins)
    }

    /// As `start_with`, reading the policy at `config`, a file (or symlink) the test made.
    pub fn start_file(ns: &NetNs, config: &Path, args: &[&str]) -> Self {
        Self::spawn(ns, config.to_path_buf(), TempDir::new(), args, Pins::new())
    }

    fn spawn(ns: &NetNs, policy_path: PathBuf, dir: TempDir, args: &[&str], pins: Pins) -> Self {
        let socket = dir.0.join("control.sock");
        let state = (!args.contains(&"--state-dir")).then(|| dir.0.join("state"));
        let mut cmd = run_command(ns, &policy_path, &socket, &pins.0, state.as_deref());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().expect("spawn enforcer");
        let lines = collect_lines(child.stdout.take().expect("stdout"));
        let stderr = collect_text(child.stderr.take().expect("stderr"));
        let mut d = Daemon {
            child: Some(child),
            lines,
            stderr,
            policy_path,
            socket,
            pins: Some(pins),
            dir,
        };
        d.wait_for(Duration::from_secs(20), |v| {
            v["event"] == "policy" && v["action"] == "applied"
        });
        d
    }

    /// Every JSON line the daemon printed so far.
    pub fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    /// Waits until the daemon's stderr is closed and read to its end (its process has
    /// exited), then returns all of it.
    pub fn stderr_to_end(&self) -> String {
        let start = Instant::now();
        // The reader thread holds the other reference until it reads EOF.
        while Arc::strong_count(&self.stderr) > 1 {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the daemon's stderr is still open"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.stderr()
    }

    /// Waits for an event matching `pred`; panics (with the daemon's stderr) on timeout.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return v;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("enforcer exited ({status}) before the expected event\nstderr:\n{}\nstdout:\n{:#?}", self.stderr(), self.events());
            }
            if start.elapsed() > timeout {
                panic!(
                    "no matching event within {timeout:?}\nstderr:\n{}\nevents:\n{:#?}",
                    self.stderr(),
                    self.events()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Like `wait_for`, but returns None on timeout.
    pub fn poll_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(v) = self.events().into_iter().find(|v| pred(v)) {
                return Some(v);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Runs `enforcer ARGS... --socket <this daemon's socket>` and returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(crate::enforcer_bin())
            .args(args)
            .arg("--socket")
            .arg(&self.socket)
            .output()
            .expect("run enforcer");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `enforcer status --json` of this daemon.
    pub fn status(&self) -> Value {
        let (ok, out, err) = self.cli(&["status", "--json"]);
        assert!(ok, "enforcer status: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
    }

    /// The generation of the policy in force, from `status`.
    pub fn generation(&self) -> u64 {
        self.status()["policy"]["generation"]
            .as_u64()
            .expect("generation")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Rewrites the policy file and sends SIGHUP.
    pub fn reload(&self, policy: &str) {
        std::fs::write(&self.policy_path, policy).expect("write policy");
        self.signal(libc::SIGHUP);
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> ExitStatus {
        self.terminate().expect("daemon was running")
    }

    /// SIGKILL: the daemon dies without cleaning up. Returns its pin directory (with
    /// whatever it left pinned) for a successor to adopt.
    pub fn kill9(mut self) -> Pins {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.pins.take().expect("pins")
    }

    fn terminate(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// Gathers a child's output lines in the background, as they come.
pub fn collect_lines(out: impl std::io::Read + Send + 'static) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            l.lock().expect("lines").push(line);
        }
    });
    lines
}

/// Gathers a child's error output in the background, as it comes.
pub fn collect_text(mut err: impl std::io::Read + Send + 'static) -> Arc<Mutex<String>> {
    let text = Arc::new(Mutex::new(String::new()));
    let t = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            t.lock()
                .expect("text")
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Runs the probe binary (see src/bin/probe.rs) in an optional namespace and cgroup and
/// returns its first line of output ("connected", "eperm", "timeout", ...).
pub fn probe(ns: Option<&NetNs>, cgroup_procs: Option<&Path>, args: &[&str]) -> String {
    let mut cmd = Command::new(crate::probe_bin());
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    place(&mut cmd, ns.map(|n| n.path()).as_deref(), cgroup_procs);
    let out = cmd.output().expect("run probe");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// A long-running probe (a listener), killed on drop.
pub struct Probe {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Probe {
    /// Starts the probe and waits for its first line ("listening").
    pub fn spawn(ns: Option<&NetNs>, cgroup_procs: Option<&Path>, args: &[&str]) -> Self {
        let mut cmd = Command::new(crate::probe_bin());
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, ns.map(|n| n.path()).as_deref(), cgroup_procs);
        let mut child = cmd.spawn().expect("spawn probe");
        let lines = collect_lines(child.stdout.take().expect("stdout"));
        let p = Probe { child, lines };
        let start = Instant::now();
        while p.lines().is_empty() {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "probe {args:?} did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        p
    }

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
