//! Ctrl-C at any moment: the daemon (default `--on-stop detach`) and the demo, each sent
//! SIGINT after a random delay (printed, with the seed bytes, so a failure can be
//! retried at the same point), must leave nothing behind: no pinned state, no program
//! attached, no socket file; for the demo, none of the namespaces, interfaces, cgroups,
//! pin dirs, temp dirs or processes it made.
//!
//! Run with
//! `ENFORCER_BIN=$PWD/target/debug/enforcer cargo test -p integration-tests --test interrupts`.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use testbed::{
    bed::Bed,
    daemon::{collect_text, run_command, Pins, TempDir},
    enforcer_bin,
    kernel::cgroup_programs,
    need_root,
    net::NetNs,
    sweep::{dead_lock, leftovers, random_bytes, registered, RUNS_DIR},
};

/// A random delay below `max` (from getrandom).
fn random_delay(max: Duration) -> Duration {
    let r = u64::from_le_bytes(random_bytes::<8>());
    Duration::from_millis(r % max.as_millis() as u64)
}

/// Waits (generously) for `child` to exit after a signal; its exit status.
fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("wait") {
            return s;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("{what} did not exit within 60 s of SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn xdp_attached(ns: &NetNs, dev: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", &ns.name, "-d", "link", "show", "dev", dev])
        .output()
        .expect("ip link show");
    let text = String::from_utf8_lossy(&out.stdout);
    text.contains("prog/xdp") || text.contains(" xdp")
}

#[test]
fn sigint_at_any_moment_of_a_daemon_leaves_nothing_attached_or_pinned() {
    need_root!();
    let bed = Bed::new();
    let policy = bed.policy(
        "mode = \"enforce\"",
        "[[rule]]\nname = \"svc\"\nprotocol = \"udp\"\nports = [7000]\nallow_from = [\"10.1.0.0/24\"]\n",
    );
    // Half during the start (load, pin, attach, apply: seconds on a loaded machine), half
    // in the first moments after it (from when the control socket appears).
    let points: Vec<(bool, Duration)> = (0..6)
        .map(|i| (i % 2 == 1, random_delay(Duration::from_millis(500))))
        .collect();
    eprintln!("SIGINT at (after the start?, delay) {points:?}");
    for (started, delay) in points {
        let dir = TempDir::new();
        let policy_path = dir.0.join("policy.toml");
        std::fs::write(&policy_path, &policy).expect("write policy");
        let socket = dir.0.join("control.sock");
        let pins = Pins::new();
        let state = dir.0.join("state");
        let mut cmd = run_command(&bed.host, &policy_path, &socket, &pins.0, Some(&state));
        cmd.stdout(Stdio::null())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().expect("spawn enforcer");
        let stderr = collect_text(child.stderr.take().expect("stderr"));
        if started {
            let t = Instant::now();
            while !socket.exists() {
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "the daemon did not start: {}",
                    stderr.lock().expect("stderr")
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        std::thread::sleep(delay);
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_exit(&mut child, "the daemon");
        let said = stderr.lock().expect("stderr").clone();
        let at = format!(
            "SIGINT {delay:?} after {} (exit {status}); stderr:\n{said}",
            if started { "the start" } else { "the spawn" }
        );
        assert!(!pins.0.exists(), "pin dir {} left: {at}", pins.0.display());
        assert!(!socket.exists(), "socket {} left: {at}", socket.display());
        for dev in [&bed.v_a.a, &bed.v_r.a] {
            assert!(!xdp_attached(&bed.host, dev), "XDP left on {dev}: {at}");
        }
        let attached: Vec<_> = cgroup_programs(&bed.cg.dir)
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            attached.is_empty(),
            "cgroup programs left {attached:?}: {at}"
        );
    }
}

#[test]
fn sigint_at_any_moment_of_the_demo_leaves_nothing() {
    need_root!();
    let demo = env!("CARGO_BIN_EXE_demo");
    let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/demo-policy.toml");
    let delays: Vec<Duration> = (0..3)
        .map(|i| random_delay(Duration::from_millis([300, 3000, 8000][i])))
        .collect();
    eprintln!("SIGINT after {delays:?}");
    for delay in delays {
        let before = registered();
        let mut child = Command::new(demo)
            .env("ENFORCER_BIN", enforcer_bin())
            .env("ENFORCER_DEMO_POLICY", &template)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the demo");
        let stderr = collect_text(child.stderr.take().expect("stderr"));
        std::thread::sleep(delay);
        // SAFETY: kill on our own child's pid (the supervisor passes it on to its worker).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_exit(&mut child, "the demo");
        // The demo's runs: tags registered meanwhile whose process is gone (a run beside
        // this one still holds its lock).
        let demo_tags: Vec<String> = registered()
            .into_iter()
            .filter(|t| !before.contains(t))
            .filter(|t| dead_lock(t).is_some())
            .collect();
        eprintln!("SIGINT after {delay:?}: the demo's runs {demo_tags:?}, exit {status}");
        let left = leftovers(&demo_tags);
        assert!(
            left.is_empty(),
            "SIGINT after {delay:?} (exit {status}): the demo left {left:#?}\nstderr:\n{}",
            stderr.lock().expect("stderr")
        );
        for t in demo_tags {
            let _ = std::fs::remove_file(Path::new(RUNS_DIR).join(t));
        }
    }
}
