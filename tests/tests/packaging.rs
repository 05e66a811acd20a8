//! packaging/: the systemd unit, the sample policy, the Kubernetes manifests.
//!
//! What is checked, and with what (each part records a skip, `testbed::skip!`, when its
//! tool is missing):
//! - the unit: `systemd-analyze verify` (on a copy whose ExecStart/ExecReload name the built
//!   binary, since verify refuses a missing executable; on the original only that complaint
//!   is accepted), `systemd-analyze security --offline=yes` (exposure below 4.0), its
//!   command lines' flags against `enforcer run --help`, and its capability bounding set
//!   for real: the daemon started under `setpriv` with exactly that bounding set (in a
//!   namespace, veth and cgroup made here) applies, reloads and stops cleanly, and fails
//!   with any one of those capabilities missing;
//! - the sample policy and the ConfigMap's policy: `enforcer check` passes;
//! - the Kubernetes YAML: `kubernetes-validate --strict` (offline, bundled schemas) when
//!   installed, and always (with python3 + PyYAML) parsed and checked for what the daemon
//!   needs: host network, the bpffs/cgroup/run/policy mounts, a whole-ConfigMap mount, the
//!   daemon alone (it follows the ConfigMap itself with `--watch`), the image's layout
//!   (packaging/Containerfile: binary path, probes).
//!
//! packaging_real.rs runs them for real: the unit under a booted systemd, the image built
//! and run, `--watch` through a ConfigMap-style swap, promtool on the metrics.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    daemon::{place, Pins, TempDir},
    enforcer_bin,
    net::{Cgroup, NetNs, Veth},
    skip,
};

fn packaging() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging")
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn unit_text() -> String {
    std::fs::read_to_string(packaging().join("systemd/enforcer.service")).expect("read the unit")
}

/// The values of `key=` lines in the unit.
fn unit_values(key: &str) -> Vec<String> {
    unit_text()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim().to_string())
        .collect()
}

#[test]
fn the_unit_verifies() {
    if !have("systemd-analyze") {
        skip!("systemd-analyze is not installed (the unit was not verified)");
    }
    let bin = enforcer_bin();
    assert!(bin.exists(), "build the binary first: {}", bin.display());
    let dir = TempDir::new();
    let unit = dir.0.join("enforcer.service");
    std::fs::write(
        &unit,
        unit_text().replace("/usr/local/bin/enforcer", &bin.display().to_string()),
    )
    .expect("write unit");
    let (ok, out, err) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok, "systemd-analyze verify failed:\n{out}{err}");
    let about_ours: Vec<&str> = err.lines().filter(|l| l.contains("enforcer")).collect();
    assert!(
        about_ours.is_empty(),
        "systemd-analyze verify complained:\n{err}"
    );

    // The original names /usr/local/bin/enforcer: the only complaint allowed is its absence.
    let (ok, _, err) = run(Command::new("systemd-analyze")
        .arg("verify")
        .arg(packaging().join("systemd/enforcer.service")));
    if !ok {
        for l in err.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                l.contains("Command /usr/local/bin/enforcer is not executable"),
                "unexpected complaint: {l}\n{err}"
            );
        }
    }

    // The sandbox, as systemd scores it (offline: no running manager needed).
    let (ok, out, err) = run(Command::new("systemd-analyze")
        .args(["security", "--offline=yes"])
        .arg(&unit));
    if !ok && err.contains("offline") {
        skip!("this systemd-analyze has no `security --offline` (the sandbox was not scored)");
    }
    let text = format!("{out}{err}");
    let score: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for enforcer.service:")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    assert!(score < 4.0, "exposure {score} (want below 4.0):\n{text}");
}

/// Every `--flag` of `args` (after the subcommand) appears in `enforcer SUB --help`.
fn assert_flags_exist(sub: &str, args: &[&str], context: &str) {
    let (ok, help, err) = run(Command::new(enforcer_bin()).args([sub, "--help"]));
    assert!(ok, "enforcer {sub} --help: {err}");
    for a in args.iter().filter(|a| a.starts_with("--")) {
        let flag = a.split('=').next().unwrap_or(a);
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{context}: `enforcer {sub}` has no {flag}:\n{help}"
        );
    }
}

#[test]
fn the_units_command_lines_match_the_binary() {
    let start = unit_values("ExecStart");
    assert_eq!(start.len(), 1);
    let words: Vec<&str> = start[0].split_whitespace().collect();
    assert_eq!(words[..2], ["/usr/local/bin/enforcer", "run"]);
    assert_flags_exist("run", &words[2..], "ExecStart");
    let reload = unit_values("ExecReload");
    assert_eq!(
        reload.last().map(String::as_str),
        Some("/bin/sh -c \"kill -HUP ${MAINPID}\"")
    );
    for r in &reload[..reload.len() - 1] {
        let words: Vec<&str> = r.split_whitespace().collect();
        assert_eq!(words[0], "/usr/local/bin/enforcer");
        assert_flags_exist(words[1], &words[2..], "ExecReload");
    }
}

/// A daemon started under `setpriv --bounding-set`: the lines it printed and its exit.
struct Restricted {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Restricted {
    /// `args`: `enforcer run`'s; the socket, pin and state directories are the test's.
    fn start(caps: &[&str], args: &[String], ns: &NetNs, dir: &Path, pins: &Pins) -> Self {
        let bounding = std::iter::once("-all".to_string())
            .chain(
                caps.iter()
                    .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())),
            )
            .collect::<Vec<_>>()
            .join(",");
        let mut cmd = Command::new("setpriv");
        cmd.arg("--bounding-set")
            .arg(&bounding)
            .arg("--")
            .arg(enforcer_bin())
            .arg("run")
            .args(args);
        cmd.arg("--socket")
            .arg(dir.join("control.sock"))
            .arg("--pin-dir")
            .arg(&pins.0)
            .arg("--state-dir")
            .arg(dir.join("state"));
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        place(&mut cmd, Some(&ns.path()), None);
        let mut child = cmd.spawn().expect("spawn setpriv");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (out, err) = (
            child.stdout.take().expect("stdout"),
            child.stderr.take().expect("stderr"),
        );
        let l = lines.clone();
        std::thread::spawn(move || {
            BufReader::new(out)
                .lines()
                .map_while(Result::ok)
                .for_each(|line| l.lock().expect("lines").push(line))
        });
        let e = stderr.clone();
        std::thread::spawn(move || {
            BufReader::new(err)
                .lines()
                .map_while(Result::ok)
                .for_each(|line| {
                    let mut e = e.lock().expect("stderr");
                    e.push_str(&line);
                    e.push('\n');
                })
        });
        Restricted {
            child,
            lines,
            stderr,
        }
    }

    /// Waits for the n-th "applied" policy event; false if the daemon exits first.
    fn applied(&mut self, n: usize) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let count = self
                .lines
                .lock()
                .expect("lines")
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "policy" && v["action"] == "applied")
                .count();
            if count >= n {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("no policy event within 20s\n{}", self.stderr());
    }

    fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr").clone()
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "the daemon did not stop\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Restricted {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn bpffs_at_sys_fs_bpf() -> bool {
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|m| {
        m.lines().any(|l| {
            l.split_whitespace().nth(1) == Some("/sys/fs/bpf")
                && l.split_whitespace().nth(2) == Some("bpf")
        })
    })
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    testbed::need_root!();
    if !have("setpriv") {
        skip!("setpriv (util-linux) is not installed");
    }
    if !bpffs_at_sys_fs_bpf() {
        skip!("no bpffs at /sys/fs/bpf (systemd mounts it at boot; the unit does not grant CAP_SYS_ADMIN to mount it)");
    }
    let caps: Vec<String> = unit_values("CapabilityBoundingSet")
        .iter()
        .flat_map(|v| v.split_whitespace().map(String::from).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        caps,
        [
            "CAP_BPF",
            "CAP_NET_ADMIN",
            "CAP_PERFMON",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE"
        ],
        "the bounding set changed: update this test and README.md"
    );
    // The last two serve containers' flows and the coverage report; without them the
    // daemon runs (and fails closed for containers): only the first three are required.
    let required = ["CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"];
    let caps: Vec<&str> = caps.iter().map(String::as_str).collect();

    let host = NetNs::new();
    let peer = NetNs::new();
    let veth = Veth::new(&host, &["10.77.0.1/24"], &peer, &["10.77.0.2/24"]);
    let cg = Cgroup::new();
    let dir = TempDir::new();
    let policy = dir.0.join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[attach]\ninterfaces = [\"{}\"]\ncgroup = \"{}\"\n[[rule]]\nname = \"svc\"\nprotocol = \"tcp\"\nports = [7000]\nallow_from = [\"10.77.0.0/24\"]\nallow_cgroups = [\"{}\"]\n",
            veth.a, cg.path, cg.path
        ),
    )
    .expect("write policy");

    // The unit's own `run` arguments, with the test's policy.
    let start = unit_values("ExecStart");
    let mut args: Vec<String> = start[0]
        .split_whitespace()
        .skip(2)
        .map(String::from)
        .collect();
    let at = args.iter().position(|a| a == "--config").expect("--config") + 1;
    args[at] = policy.display().to_string();

    // Exactly the unit's set: start, reload (ExecReload's SIGHUP), stop; then (the unit
    // keeps the programs on stop) a restart that adopts them, and a stop again.
    let pins = Pins::new();
    let mut d = Restricted::start(&caps, &args, &host, &dir.0, &pins);
    assert!(
        d.applied(1),
        "the daemon failed with {caps:?}:\n{}",
        d.stderr()
    );
    d.signal(libc::SIGHUP);
    assert!(d.applied(2), "reload failed with {caps:?}:\n{}", d.stderr());
    d.signal(libc::SIGTERM);
    let status = d.wait();
    assert!(status.success(), "stop: {status}\n{}", d.stderr());
    drop(d);
    if args.iter().any(|a| a == "keep") {
        let mut d = Restricted::start(&caps, &args, &host, &dir.0, &pins);
        assert!(
            d.applied(1),
            "the restart failed with {caps:?}:\n{}",
            d.stderr()
        );
        assert!(
            d.stderr().contains("adopted the pinned programs"),
            "the restart did not adopt:\n{}",
            d.stderr()
        );
        d.signal(libc::SIGTERM);
        assert!(d.wait().success(), "{}", d.stderr());
    }
    drop(pins);

    // Any one of the required three missing: the daemon cannot start. (CAP_SYS_ADMIN would
    // stand in for CAP_BPF and CAP_PERFMON, so the optional two go with it.)
    for missing in &required {
        let fewer: Vec<&str> = required.iter().copied().filter(|c| c != missing).collect();
        let pins = Pins::new();
        let mut d = Restricted::start(&fewer, &args, &host, &dir.0, &pins);
        assert!(
            !d.applied(1),
            "the daemon ran without {missing}: it is not needed (update the unit and README.md)"
        );
        let status = d.wait();
        assert!(!status.success(), "without {missing}: {status}");
        // The reader thread may not have caught up with the exit yet.
        let start = Instant::now();
        while !d.stderr().contains("enforcer: ") && start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let err = d.stderr();
        assert!(
            err.contains("not permitted")
                || err.contains("Permission denied")
                || err.contains("prohibited"),
            "without {missing} ({status}):\n{err}"
        );
    }
}

#[test]
fn the_sample_policy_passes_check() {
    let policy = packaging().join("policy.toml");
    let (ok, out, err) = run(Command::new(enforcer_bin())
        .arg("check")
        .arg("--config")
        .arg(&policy));
    assert!(ok, "{err}");
    assert!(out.contains(": ok (3 rules, sha256 "), "{out}");
    // Host-dependent warnings only (the sample's cgroups may not exist here).
    for l in err.lines().filter(|l| l.contains(": warning: ")) {
        assert!(
            l.contains("does not exist under"),
            "unexpected warning: {l}"
        );
    }
}

/// Both manifests as JSON, through python3 + PyYAML; None (with a note) without them.
fn manifests() -> Option<(Value, Value)> {
    let script = "import json, sys, yaml\nprint(json.dumps([yaml.safe_load(open(p)) for p in sys.argv[1:]]))";
    let k = packaging().join("kubernetes");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(k.join("daemonset.yaml"))
        .arg(k.join("configmap.yaml"))
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let v: Value = serde_json::from_slice(&o.stdout).expect("json");
            Some((v[0].clone(), v[1].clone()))
        }
        Ok(o) if String::from_utf8_lossy(&o.stderr).contains("No module named 'yaml'") => {
            testbed::skip_part("python3 has no PyYAML (the manifests were not parsed)");
            None
        }
        Ok(o) => panic!(
            "the manifests do not parse as YAML:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(_) => {
            testbed::skip_part("no python3 (the manifests were not parsed)");
            None
        }
    }
}

#[test]
fn the_kubernetes_manifests_validate_against_the_schemas() {
    if !have("kubernetes-validate") {
        skip!("kubernetes-validate is not installed (pip install kubernetes-validate); schema validation not done");
    }
    let k = packaging().join("kubernetes");
    let (ok, out, err) = run(Command::new("kubernetes-validate")
        .arg("--strict")
        .arg(k.join("daemonset.yaml"))
        .arg(k.join("configmap.yaml")));
    assert!(ok, "kubernetes-validate --strict:\n{out}{err}");
    assert_eq!(
        format!("{out}{err}")
            .matches(" passed for resource ")
            .count(),
        2,
        "{out}{err}"
    );
}

#[test]
fn the_kubernetes_manifests_give_the_daemon_what_it_needs() {
    let Some((ds, cm)) = manifests() else { return };
    assert_eq!(ds["kind"], "DaemonSet");
    assert_eq!(cm["kind"], "ConfigMap");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(
        spec["hostNetwork"], true,
        "the daemon must run in the node's network namespace"
    );
    let containers = spec["containers"].as_array().expect("containers");
    let by_name = |n: &str| {
        containers
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no container {n}"))
    };
    let daemon = by_name("enforcer");
    assert_eq!(
        containers.len(),
        1,
        "the daemon follows the ConfigMap itself (--watch): no sidecar"
    );
    let volumes = spec["volumes"].as_array().expect("volumes");
    let volume = |n: &Value| {
        volumes
            .iter()
            .find(|v| &v["name"] == n)
            .unwrap_or_else(|| panic!("no volume {n}"))
    };
    let mount = |c: &Value, path: &str| -> Value {
        c["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .cloned()
            .unwrap_or_else(|| panic!("{} has no mount at {path}", c["name"]))
    };

    // bpffs from the node, propagating both ways (so needs a privileged container).
    let bpf = mount(daemon, "/sys/fs/bpf");
    assert_eq!(bpf["mountPropagation"], "Bidirectional");
    assert_eq!(volume(&bpf["name"])["hostPath"]["path"], "/sys/fs/bpf");
    assert_eq!(
        daemon["securityContext"]["privileged"], true,
        "Bidirectional propagation needs a privileged container"
    );
    // The node's cgroup hierarchy, the control socket's directory from the node.
    assert_eq!(
        volume(&mount(daemon, "/sys/fs/cgroup")["name"])["hostPath"]["path"],
        "/sys/fs/cgroup"
    );
    assert_eq!(
        volume(&mount(daemon, "/run/enforcer")["name"])["hostPath"]["path"],
        "/run/enforcer"
    );
    // The policy: the whole ConfigMap as a directory (a subPath mount never updates).
    let m = mount(daemon, "/etc/enforcer");
    assert!(m.get("subPath").is_none(), "subPath mounts are not updated");
    assert_eq!(
        volume(&m["name"])["configMap"]["name"],
        cm["metadata"]["name"]
    );
    assert_eq!(ds["metadata"]["namespace"], cm["metadata"]["namespace"]);

    // The daemon's command line is one the binary takes, with the paths mounted above.
    let mut args: Vec<&str> = daemon["command"]
        .as_array()
        .expect("command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    args.extend(
        daemon["args"]
            .as_array()
            .expect("args")
            .iter()
            .filter_map(Value::as_str),
    );
    assert_eq!(args[..2], ["/usr/local/bin/enforcer", "run"]);
    assert_flags_exist("run", &args[2..], "the DaemonSet");
    let after = |flag: &str| {
        args.iter()
            .position(|a| *a == flag)
            .and_then(|i| args.get(i + 1))
            .copied()
    };
    assert_eq!(after("--config"), Some("/etc/enforcer/policy.toml"));
    let socket = after("--socket").expect("--socket");

    assert!(
        args.contains(&"--watch"),
        "without --watch a ConfigMap update is never applied"
    );

    // The image's layout (packaging/Containerfile): the binary where the DaemonSet runs it,
    // the probes asking the daemon's socket with that binary (no shell in the image).
    let containerfile =
        std::fs::read_to_string(packaging().join("Containerfile")).expect("read Containerfile");
    assert!(
        containerfile.contains(&format!("COPY enforcer {}\n", args[0])),
        "the image has no {}:\n{containerfile}",
        args[0]
    );
    assert!(
        containerfile.contains("FROM scratch"),
        "the image is the static binary alone"
    );
    for probe in ["readinessProbe", "livenessProbe"] {
        let cmd: Vec<&str> = daemon[probe]["exec"]["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{probe} is not an exec probe"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(cmd, [args[0], "status", "--socket", socket], "{probe}");
    }

    // The ConfigMap's policy passes check.
    let text = cm["data"]["policy.toml"]
        .as_str()
        .expect("policy.toml in the ConfigMap");
    let dir = TempDir::new();
    let p = dir.0.join("policy.toml");
    std::fs::write(&p, text).expect("write");
    let (ok, out, err) = run(Command::new(enforcer_bin())
        .arg("check")
        .arg("--config")
        .arg(&p));
    assert!(ok, "the ConfigMap's policy fails check:\n{err}");
    assert!(out.contains(": ok (3 rules"), "{out}");
    assert!(
        !err.contains(": warning: "),
        "the ConfigMap's policy has warnings:\n{err}"
    );
}
