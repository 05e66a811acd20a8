//! Containers for the packaging tests: a Debian root filesystem (debootstrap, built once and
//! kept under target/), a throwaway writable overlay on it, and systemd-nspawn running
//! either that tree's systemd (booted) or one command in an image's tree, in a network
//! namespace and a bpffs directory of the test's. Each is a guard: dropped (also when a
//! test panics), the container is stopped (killed if it will not halt), the mounts go, and
//! the cgroups nspawn leaves behind are removed.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use crate::{daemon::collect_text, net::NetNs, unique};

/// Installs Debian's `package` when `bin` is not on PATH (one install at a time).
pub fn need_tool(bin: &str, package: &str) {
    static APT: Mutex<()> = Mutex::new(());
    let _apt = APT.lock().unwrap_or_else(|e| e.into_inner());
    if have(bin) {
        return;
    }
    eprintln!("installing {package} (for {bin})");
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    assert!(
        ok(Command::new("apt-get").args(["update", "-qq"])),
        "apt-get update failed"
    );
    assert!(
        ok(Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", package])
            .env("DEBIAN_FRONTEND", "noninteractive")),
        "apt-get install {package} failed"
    );
    assert!(have(bin), "{package} installed no {bin}");
}

pub fn have(bin: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {bin}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The workspace's target directory.
pub fn target_dir() -> PathBuf {
    let t = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    // Tools given these paths (systemctl --root) do not take "..".
    t.canonicalize().unwrap_or(t)
}

/// The static daemon (the image's and the booted container's): ENFORCER_STATIC_BIN (set by
/// `cargo xtask test`, which builds it), else the musl release build.
pub fn static_bin() -> PathBuf {
    let p = std::env::var("ENFORCER_STATIC_BIN").map_or_else(
        |_| target_dir().join("x86_64-unknown-linux-musl/release/enforcer"),
        PathBuf::from,
    );
    assert!(
        p.exists(),
        "no static daemon at {}: cargo build --release --target x86_64-unknown-linux-musl -p enforcer (cargo xtask test does)",
        p.display()
    );
    p
}

/// Debian bookworm, minbase with systemd and iproute2: built once (about a minute, more
/// on a loaded machine) into target/packaging/, then reused. Built under a temporary name
/// and renamed when complete, so an interrupted build is not taken for a cache.
pub fn debian_rootfs() -> PathBuf {
    static BUILD: Mutex<()> = Mutex::new(());
    let _once = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    let dir = target_dir().join("packaging");
    let root = dir.join("rootfs-bookworm-systemd");
    if root.join("etc/os-release").exists() {
        return root;
    }
    need_tool("debootstrap", "debootstrap");
    std::fs::create_dir_all(&dir).expect("target/packaging");
    let tmp = dir.join(format!("rootfs.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let start = Instant::now();
    let out = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            "--include=systemd,systemd-sysv,iproute2",
            "bookworm",
        ])
        .arg(&tmp)
        .arg("http://deb.debian.org/debian")
        .output()
        .expect("run debootstrap");
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        panic!(
            "debootstrap failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::rename(&tmp, &root).expect("rename the rootfs into place");
    eprintln!("built {} in {:?}", root.display(), start.elapsed());
    root
}

/// A writable overlay on a read-only tree (`lower` is never changed), unmounted and
/// removed on drop.
pub struct Overlay {
    /// The merged tree: write the test's files here, run the container on it.
    pub root: PathBuf,
    base: PathBuf,
}

impl Overlay {
    pub fn new(lower: &Path) -> Self {
        // Next to the cache (same filesystem as the lower tree; /tmp may be a tmpfs).
        let base = target_dir().join("packaging").join(unique("ovl"));
        let (upper, work, root) = (base.join("upper"), base.join("work"), base.join("root"));
        for d in [&upper, &work, &root] {
            std::fs::create_dir_all(d).expect("overlay dirs");
        }
        let o = Overlay { root, base };
        sh(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&o.root));
        o
    }

    /// Writes `text` at `path` (absolute, inside the tree) with `mode`.
    pub fn write(&self, path: &str, text: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt as _;
        let p = self.path(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    /// Copies the host's `from` to `path` inside the tree (executable).
    pub fn install(&self, from: &Path, path: &str) {
        let p = self.path(path);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::copy(from, &p).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    }

    pub fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        umount(&self.root);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// Unmounts `path`, lazily if something still holds it.
pub fn umount(path: &Path) {
    let ok = Command::new("umount")
        .arg(path)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(path).status();
    }
}

fn sh(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A directory of the host's bpffs, bound as the container's /sys/fs/bpf: a daemon inside
/// pins below it (at `enforcer/`, its default pin dir). Whatever it left pinned is removed
/// on drop, which detaches what it kept attached.
pub struct BpfDir(pub PathBuf);

impl BpfDir {
    pub fn new() -> Self {
        let p = PathBuf::from("/sys/fs/bpf").join(unique("enfm"));
        std::fs::create_dir_all(&p).expect("bpffs dir");
        BpfDir(p)
    }

    /// The daemon's pin directory (`/sys/fs/bpf/enforcer` inside), as the host sees it.
    pub fn pins(&self) -> PathBuf {
        self.0.join("enforcer")
    }
}

impl Default for BpfDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for BpfDir {
    fn drop(&mut self) {
        let _ = enforcer::kernel::pins::remove_all(&self.pins());
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// One container at a time: with `--keep-unit` from the root cgroup every container's
/// cgroup (the root of its cgroup namespace, where a daemon inside attaches) is the same
/// `/payload`.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// A running systemd-nspawn container.
pub struct Machine {
    nspawn: Child,
    /// The container's PID 1, as the host sees it.
    pub leader: i32,
    name: String,
    /// When nspawn was started (after waiting for any other container to go).
    pub started: Instant,
    output: Arc<Mutex<String>>,
    errors: Arc<Mutex<String>>,
    _one: MutexGuard<'static, ()>,
}

impl Machine {
    /// Boots `root`'s systemd in `netns`, with `bpf` as its /sys/fs/bpf, and waits until
    /// PID 1 answers (not for the boot to finish: see `wait_booted`).
    pub fn boot(root: &Path, netns: &NetNs, bpf: &BpfDir) -> Self {
        Self::spawn(root, netns, bpf, &["-b"], &[], &[])
    }

    /// Runs `command` as the container's PID 1 in the tree `root` (read-only, with a
    /// throwaway writable layer), `extra` nspawn arguments (binds); SIGTERM on stop. The
    /// container gets a cgroup v2 hierarchy (nspawn gives a command the host's hybrid
    /// layout otherwise, with no cgroup2 mount a daemon inside could attach to).
    pub fn run(root: &Path, netns: &NetNs, bpf: &BpfDir, extra: &[&str], command: &[&str]) -> Self {
        let mut args = vec!["--volatile=overlay", "--kill-signal=SIGTERM"];
        args.extend_from_slice(extra);
        Self::spawn(
            root,
            netns,
            bpf,
            &args,
            command,
            &[("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")],
        )
    }

    fn spawn(
        root: &Path,
        netns: &NetNs,
        bpf: &BpfDir,
        args: &[&str],
        command: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        need_tool("systemd-nspawn", "systemd-container");
        let one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let name = unique("enfm");
        let mut cmd = Command::new("systemd-nspawn");
        cmd.args(["--register=no", "--keep-unit", "--quiet"])
            .arg(format!("--machine={name}"))
            .arg("-D")
            .arg(root)
            .arg(format!("--bind={}:/sys/fs/bpf", bpf.0.display()))
            .args([
                "--capability=all",
                "--system-call-filter=bpf perf_event_open",
                "--link-journal=no",
                "--resolv-conf=off",
                "--timezone=off",
                "--console=pipe",
            ])
            .arg(format!(
                "--network-namespace-path={}",
                netns.path().display()
            ))
            .args(args)
            .args(command)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut nspawn = cmd.spawn().expect("spawn systemd-nspawn");
        let output = collect_text(nspawn.stdout.take().expect("stdout"));
        let errors = collect_text(nspawn.stderr.take().expect("stderr"));
        let mut m = Machine {
            nspawn,
            leader: 0,
            name,
            started: Instant::now(),
            output,
            errors,
            _one: one,
        };
        // The container's PID 1 is nspawn's child in another PID namespace.
        let start = Instant::now();
        while m.leader == 0 {
            if let Ok(Some(s)) = m.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({s}):\n{}", m.output());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no container process"
            );
            m.leader = container_child(m.nspawn.id() as i32).unwrap_or(0);
            std::thread::sleep(Duration::from_millis(10));
        }
        m
    }

    /// The container's console and nspawn's messages so far.
    pub fn output(&self) -> String {
        format!(
            "{}{}",
            self.output.lock().expect("output"),
            self.errors.lock().expect("errors")
        )
    }

    /// `command` inside the container (all its namespaces, its root), with a plain PATH.
    pub fn exec(&self, command: &[&str]) -> std::process::Output {
        Command::new("nsenter")
            .arg("-t")
            .arg(self.leader.to_string())
            .args(["-a", "-r", "-w", "--"])
            .args(command)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("SYSTEMD_COLORS", "0")
            .env("SYSTEMD_PAGER", "")
            .output()
            .expect("run nsenter")
    }

    /// As `exec`: (success, stdout, stderr).
    pub fn sh(&self, command: &[&str]) -> (bool, String, String) {
        let out = self.exec(command);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Waits until the booted system finished starting up ("running"; "degraded" fails,
    /// with the failed units).
    pub fn wait_booted(&self) {
        let start = Instant::now();
        loop {
            let (_, state, _) = self.sh(&["systemctl", "is-system-running", "--wait"]);
            match state.trim() {
                "running" => return,
                "degraded" => {
                    let (_, failed, _) = self.sh(&["systemctl", "--failed", "--no-pager"]);
                    panic!(
                        "the container booted degraded:\n{failed}\n{}",
                        self.journal(&[])
                    );
                }
                other => assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "the container did not finish booting ({other}):\n{}",
                    self.output()
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `journalctl --no-pager ARGS` in the container.
    pub fn journal(&self, args: &[&str]) -> String {
        let mut cmd = vec!["journalctl", "--no-pager"];
        cmd.extend_from_slice(args);
        self.sh(&cmd).1
    }

    /// Whether the container is still running.
    pub fn running(&mut self) -> bool {
        self.nspawn.try_wait().ok().flatten().is_none()
    }

    /// Stops the container as its manager would (SIGTERM to nspawn: a booted system shuts
    /// down; a command gets the kill signal) and waits; true if it ended in time.
    pub fn stop(&mut self, within: Duration) -> bool {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let start = Instant::now();
        while start.elapsed() < within {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.running() && !self.stop(Duration::from_secs(20)) {
            // SAFETY: kill on the container's PID 1 (its PID namespace goes with it) and
            // on our own child.
            unsafe {
                libc::kill(self.leader, libc::SIGKILL);
                libc::kill(self.nspawn.id() as i32, libc::SIGKILL);
            }
        }
        let _ = self.nspawn.wait();
        let _ = std::fs::remove_dir(format!("/run/systemd/nspawn/propagate/{}", self.name));
        remove_nspawn_cgroups();
    }
}

/// nspawn's child in another PID namespace: the container's PID 1.
fn container_child(nspawn: i32) -> Option<i32> {
    let own = std::fs::read_link("/proc/self/ns/pid").ok()?;
    let tasks = std::fs::read_dir(format!("/proc/{nspawn}/task")).ok()?;
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| std::fs::read_link(format!("/proc/{pid}/ns/pid")).is_ok_and(|ns| ns != own))
}

/// nspawn run with `--keep-unit` from the root cgroup leaves `payload` (the container's)
/// and `supervisor` (its own) there, in the cgroup v2 tree and in the name=systemd tree of
/// a hybrid setup: removed leaf first once the container is gone (only empty ones can be).
fn remove_nspawn_cgroups() {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let roots = mounts.lines().filter_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let sep = f.iter().position(|x| *x == "-")?;
        let (fstype, opts) = (f.get(sep + 1)?, f.get(sep + 3)?);
        (*fstype == "cgroup2" || opts.split(',').any(|o| o == "name=systemd"))
            .then(|| PathBuf::from(f[4]))
    });
    for root in roots {
        for top in ["payload", "supervisor"] {
            remove_tree(&root.join(top));
        }
    }
}

fn remove_tree(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
