//! What the audit-sink tests need besides the daemon: a private rsyslog (its own process,
//! config, work directory and pid file in a temp dir; never the system service or
//! /dev/log), a tiny tmpfs to make a disk fail, and the lines a sink wrote.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    daemon::{collect_text, place, TempDir},
    net::NetNs,
};

/// `rsyslogd -n -f CONF -i PIDFILE` on a private config, stopped on drop.
pub struct Rsyslog {
    child: Option<Child>,
    stderr: Arc<Mutex<String>>,
    pub dir: TempDir,
}

impl Rsyslog {
    /// Starts rsyslogd (in `ns` if given) with `config` after a `global()` line that
    /// gives it a work directory of its own, and waits for its pid file.
    pub fn start(ns: Option<&NetNs>, config: &str) -> Self {
        // `cargo xtask test` installs it first; a test run alone installs it here.
        crate::machine::need_tool("rsyslogd", "rsyslog");
        let dir = TempDir::new();
        let work = dir.0.join("work");
        std::fs::create_dir_all(&work).expect("rsyslog work dir");
        let conf = dir.0.join("rsyslog.conf");
        let pid = dir.0.join("rsyslogd.pid");
        std::fs::write(
            &conf,
            format!("global(workDirectory=\"{}\")\n{config}", work.display()),
        )
        .expect("write rsyslog.conf");
        let mut cmd = Command::new("rsyslogd");
        cmd.arg("-n")
            .arg("-f")
            .arg(&conf)
            .arg("-i")
            .arg(&pid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        place(&mut cmd, ns.map(|n| n.path()).as_deref(), None);
        let mut child = cmd.spawn().expect("spawn rsyslogd");
        let stderr = collect_text(child.stderr.take().expect("stderr"));
        let mut r = Rsyslog {
            child: Some(child),
            stderr,
            dir,
        };
        let start = Instant::now();
        while !pid.exists() {
            if let Some(s) = r.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("rsyslogd exited ({s}): {}", r.stderr());
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "rsyslogd did not start: {}",
                r.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// A path in rsyslog's directory (for its output files).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill on our own child's pid.
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A tmpfs of `size` (e.g. "64k") mounted on a directory of its own, unmounted on drop.
pub struct Tmpfs {
    pub dir: PathBuf,
    _parent: TempDir,
}

fn mount(args: &[&str]) {
    let out = Command::new("mount")
        .args(args)
        .output()
        .expect("run mount");
    assert!(
        out.status.success(),
        "mount {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Tmpfs {
    pub fn new(size: &str) -> Self {
        let parent = TempDir::new();
        let dir = parent.0.join("disk");
        std::fs::create_dir_all(&dir).expect("mount point");
        let d = dir.display().to_string();
        mount(&[
            "-t",
            "tmpfs",
            "-o",
            &format!("size={size},mode=0755"),
            "tmpfs",
            &d,
        ]);
        Tmpfs {
            dir,
            _parent: parent,
        }
    }

    /// Gives it another size (more room: the disk works again).
    pub fn resize(&self, size: &str) {
        let d = self.dir.display().to_string();
        mount(&["-o", &format!("remount,size={size}"), &d]);
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.dir)
            .stderr(Stdio::null())
            .status();
    }
}

/// The JSON lines of a file (none if it is missing); panics on a line that is not JSON.
pub fn json_lines(path: &Path) -> Vec<Value> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {l}", path.display()))
        })
        .collect()
}

/// The rotated set of `path`, oldest first: `path.N` ... `path.1`, `path`.
pub fn rotated_set(path: &Path) -> Vec<PathBuf> {
    let mut set = vec![path.to_path_buf()];
    for n in 1.. {
        let p = PathBuf::from(format!("{}.{n}", path.display()));
        if !p.exists() {
            break;
        }
        set.insert(0, p);
    }
    set
}

/// `seq` of each line that has one, in order.
pub fn seqs(lines: &[Value]) -> Vec<u64> {
    lines.iter().filter_map(|v| v["seq"].as_u64()).collect()
}

/// Waits until `cond` holds (polling), panicking with `what()` after `timeout`.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool, what: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < timeout, "timed out: {}", what());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A unix datagram socket that collects what is sent to it (a stand-in for /dev/log);
/// closed and unlinked on drop.
pub struct DgramCollector {
    pub path: PathBuf,
    messages: Arc<Mutex<Vec<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DgramCollector {
    pub fn bind(path: &Path) -> Self {
        let _ = std::fs::remove_file(path);
        let sock = std::os::unix::net::UnixDatagram::bind(path)
            .unwrap_or_else(|e| panic!("bind {}: {e}", path.display()));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        let messages = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (messages.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !s.load(std::sync::atomic::Ordering::SeqCst) {
                if let Ok(n) = sock.recv(&mut buf) {
                    m.lock()
                        .expect("messages")
                        .push(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
            }
        });
        DgramCollector {
            path: path.to_path_buf(),
            messages,
            stop,
            thread: Some(thread),
        }
    }

    pub fn messages(&self) -> Vec<String> {
        self.messages.lock().expect("messages").clone()
    }
}

impl Drop for DgramCollector {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}
