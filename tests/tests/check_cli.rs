//! `enforcer check` as a person runs it: the real binary on policy files, its output and
//! exit status. Errors exit 1; warnings (legal but likely wrong, each located) exit 0.
//!
//! The host-dependent warnings run the binary inside a network namespace made here, where
//! the test sets the ephemeral port range and starts a listener named `sshd` (a copy of the
//! probe binary), so they do not depend on the machine. Those need root and are skipped
//! (with a message) otherwise.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use serde_json::Value;
use testbed::{
    daemon::{place, TempDir},
    enforcer_bin,
    net::{Cgroup, NetNs},
    unique,
};

use testbed::need_root;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    /// The stderr lines that are warnings.
    fn warnings(&self) -> Vec<&str> {
        self.stderr
            .lines()
            .filter(|l| l.contains(": warning: "))
            .collect()
    }
}

fn check_in(ns: Option<&NetNs>, path: &Path, json: bool) -> Out {
    let mut cmd = Command::new(enforcer_bin());
    cmd.arg("check").arg("--config").arg(path);
    if json {
        cmd.args(["--format", "json"]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    place(&mut cmd, ns.map(|n| n.path()).as_deref(), None);
    let out = cmd.output().expect("run enforcer check");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).expect("write policy");
    p
}

/// `enforcer check` on `text`, in a fresh network namespace: the host-dependent lints
/// (addresses of this host in a prefix, listeners) see only what the test made.
fn check(dir: &TempDir, text: &str) -> (PathBuf, Out) {
    let p = write(dir, &format!("{}.toml", unique("p")), text);
    let ns = NetNs::new();
    let out = check_in(Some(&ns), &p, false);
    (p, out)
}

/// A policy with nothing to warn about on any host: a port below every sane ephemeral
/// range, a private allow list, the default failsafe and the root cgroup.
const GOOD: &str = r#"# a careful policy
mode = "enforce"

[[rule]]
name = "postgres"
protocol = "tcp"
ports = [5432]
allow_from = ["10.0.0.0/8", "fd00::/8"]
"#;

#[test]
fn a_good_policy_is_ok_with_no_warnings() {
    let dir = TempDir::new();
    let (p, out) = check(&dir, GOOD);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out.stdout.trim();
    assert!(
        line.starts_with(&format!("{}: ok (1 rules, sha256 ", p.display())),
        "{line}"
    );
    assert!(line.ends_with(')') && !line.contains("warning"), "{line}");
    assert!(out.warnings().is_empty(), "{}", out.stderr);

    let out = check_in(Some(&NetNs::new()), &p, true);
    assert_eq!(out.code, 0);
    let v = out.json();
    assert_eq!(v["file"], p.display().to_string());
    assert_eq!(v["ok"], true);
    assert_eq!(v["rules"], 1);
    assert_eq!(v["hash"].as_str().map(str::len), Some(64));
    assert_eq!(v["diagnostics"], serde_json::json!([]));
}

#[test]
fn a_syntax_error_is_located_and_exits_1() {
    let dir = TempDir::new();
    let (p, out) = check(&dir, "mode = \"enforce\"\n[[rule]\nname = \"x\"\n");
    assert_eq!(out.code, 1);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    let first = out.stderr.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("{}:2:", p.display())) && first.contains(": error: "),
        "{}",
        out.stderr
    );

    let out = check_in(Some(&NetNs::new()), &p, true);
    assert_eq!(out.code, 1);
    let v = out.json();
    assert_eq!(v["ok"], false);
    assert_eq!(v["diagnostics"][0]["line"], 2);
    assert_eq!(v["diagnostics"][0]["severity"], "error");
}

#[test]
fn bad_values_are_each_located_and_exit_1() {
    let dir = TempDir::new();
    let text = "mode = \"on\"\n[[rule]]\nname = \"r\"\nports = [0, \"10-5\"]\nallow_from = [\"10.0.0.1/8\"]\n";
    let (p, out) = check(&dir, text);
    assert_eq!(out.code, 1);
    let f = p.display().to_string();
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        lines,
        vec![
            format!("{f}:1:8: error: mode must be \"enforce\" or \"audit\", not \"on\""),
            format!("{f}:4:10: error: port 0 is out of range (1 to 65535)"),
            format!("{f}:4:13: error: port range \"10-5\" runs backwards; write \"5-10\""),
            format!("{f}:5:15: error: \"10.0.0.1/8\" has host bits set; write \"10.0.0.0/8\""),
        ],
        "{}",
        out.stderr
    );
    let out = check_in(Some(&NetNs::new()), &p, true);
    assert_eq!(out.json()["diagnostics"].as_array().map(Vec::len), Some(4));
    // A file that is not there.
    let out = check_in(None, &dir.0.join("missing.toml"), false);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr.contains("cannot read the policy"),
        "{}",
        out.stderr
    );
}

#[test]
fn host_independent_warnings_are_located_and_exit_0() {
    let dir = TempDir::new();
    let text = r#"[failsafe]
ports = ["tcp/22", "tcp/8000-8010"]

[[rule]]
name = "web"
protocol = "tcp"
ports = [8443]
allow_from = ["10.0.0.0/8", "0.0.0.0/0"]

[[rule]]
name = "closed"
protocol = "udp"
ports = [5000]

[[rule]]
name = "web-admin"
ports = [8443, 8005]
allow_from = ["192.168.0.0/16"]
"#;
    let (p, out) = check(&dir, text);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let f = p.display().to_string();
    assert!(
        out.stdout.trim().ends_with(", 4 warnings)"),
        "{}",
        out.stdout
    );
    let w = out.warnings();
    assert_eq!(w.len(), 4, "{}", out.stderr);
    assert!(w[0].starts_with(&format!("{f}:8:29: warning: rule \"web\" allows 0.0.0.0/0, every IPv4 address: tcp/8443 is open to any IPv4 sender")), "{}", w[0]);
    assert!(w[1].starts_with(&format!("{f}:11:8: warning: rule \"closed\" has neither allow_from nor allow_cgroups: every packet to udp/5000 is refused")), "{}", w[1]);
    assert!(w[2].starts_with(&format!("{f}:17:9: warning: rules \"web\" (line 5) and \"web-admin\" both cover tcp/8443: on those ports their allow lists add up")), "{}", w[2]);
    assert!(w[3].starts_with(&format!("{f}:17:9: warning: rule \"web-admin\": tcp/8005 is failsafe ([failsafe] at line 2), never judged")), "{}", w[3]);

    let out = check_in(Some(&NetNs::new()), &p, true);
    assert_eq!(out.code, 0);
    let v = out.json();
    assert_eq!(v["ok"], true);
    assert_eq!(v["rules"], 3);
    let d = v["diagnostics"].as_array().expect("diagnostics");
    assert_eq!(d.len(), 4);
    assert_eq!(
        (
            &d[0]["file"],
            &d[0]["line"],
            &d[0]["col"],
            &d[0]["severity"]
        ),
        (
            &Value::from(f),
            &Value::from(8),
            &Value::from(29),
            &Value::from("warning")
        )
    );
    assert!(d[1]["message"]
        .as_str()
        .unwrap_or("")
        .starts_with("rule \"closed\" has neither"));
}

#[test]
fn ephemeral_range_of_the_namespace_is_read() {
    need_root!();
    let ns = NetNs::new();
    ns.run(|| std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "45000 45999\n"))
        .expect("set the range");
    let dir = TempDir::new();
    let text = "[[rule]]\nname = \"hi\"\nprotocol = \"tcp\"\nports = [\"45990-46010\", 5432]\nallow_from = [\"10.0.0.0/8\"]\n";
    let p = write(&dir, "eph.toml", text);
    let out = check_in(Some(&ns), &p, false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let w = out.warnings();
    assert_eq!(w.len(), 1, "{}", out.stderr);
    assert!(
        w[0].starts_with(&format!(
            "{}:4:9: warning: rule \"hi\" protects tcp/45990-45999, inside the ephemeral port range 45000-45999 (net.ipv4.ip_local_port_range): this host's own outgoing connections take their local ports from that range",
            p.display()
        )),
        "{}",
        w[0]
    );
    // Reserving the ports takes them out of the range the kernel hands out.
    ns.run(|| {
        std::fs::write(
            "/proc/sys/net/ipv4/ip_local_reserved_ports",
            "45990-45999\n",
        )
    })
    .expect("reserve");
    let out = check_in(Some(&ns), &p, false);
    assert!(out.warnings().is_empty(), "{}", out.stderr);
}

#[test]
fn cgroups_that_do_not_exist_are_named() {
    need_root!();
    let cg = Cgroup::new();
    let api = cg.child("api");
    let gone = format!("{}/gone", cg.path);
    let dir = TempDir::new();
    let text = format!(
        "[attach]\ncgroup = \"{}\"\n\n[[rule]]\nname = \"db\"\nprotocol = \"tcp\"\nports = [5432]\nallow_cgroups = [\"{}\", \"{gone}\"]\n",
        cg.path, api.path
    );
    let (p, out) = check(&dir, &text);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let w = out.warnings();
    assert_eq!(w.len(), 1, "{}", out.stderr);
    let col = "allow_cgroups = [\"\", ".len() + api.path.len() + 1;
    assert!(
        w[0].starts_with(&format!(
            "{}:8:{col}: warning: cgroup \"{gone}\" (allowed by rule \"db\") does not exist under ",
            p.display()
        )),
        "{}",
        w[0]
    );
    assert!(
        w[0].contains("allows nothing until it is created"),
        "{}",
        w[0]
    );

    // The attach cgroup itself missing.
    let text = format!("[attach]\ncgroup = \"{gone}\"\n[[rule]]\nname = \"db\"\nports = [5432]\nallow_from = [\"10.0.0.0/8\"]\n");
    let (p, out) = check(&dir, &text);
    let w = out.warnings();
    assert_eq!(w.len(), 1, "{}", out.stderr);
    assert!(
        w[0].starts_with(&format!(
            "{}:2:10: warning: the attach cgroup \"{gone}\" does not exist under ",
            p.display()
        )),
        "{}",
        w[0]
    );
}

/// A listener whose process is named `sshd` (a copy of the probe binary), in `ns`.
struct FakeSshd {
    child: std::process::Child,
    _dir: TempDir,
}

impl FakeSshd {
    fn start(ns: &NetNs, port: u16) -> Self {
        let dir = TempDir::new();
        let exe = dir.0.join("sshd");
        std::fs::copy(testbed::probe_bin(), &exe).expect("copy probe");
        let mut cmd = Command::new(&exe);
        cmd.args(["tcp-listen", "0.0.0.0", &port.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        place(&mut cmd, Some(&ns.path()), None);
        // The copy was written through a descriptor a concurrent fork (another test's
        // spawn) may still hold until its exec: executing it meanwhile fails with
        // ETXTBSY, so try again briefly.
        let mut tries = 0;
        let mut child = loop {
            match cmd.spawn() {
                Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                r => break r.expect("spawn fake sshd"),
            }
        };
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.take().expect("stdout")),
            &mut line,
        )
        .expect("read");
        assert_eq!(line.trim(), "listening");
        FakeSshd { child, _dir: dir }
    }
}

impl Drop for FakeSshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn sshd_on_a_protected_port_and_an_emptied_failsafe() {
    need_root!();
    let ns = NetNs::new();
    let _sshd = FakeSshd::start(&ns, 2222);
    let dir = TempDir::new();
    let text = "[failsafe]\nports = []\n\n[[rule]]\nname = \"admin\"\nprotocol = \"tcp\"\nports = [\"2200-2299\"]\nallow_from = [\"10.0.0.0/8\"]\n";
    let p = write(&dir, "ssh.toml", text);
    let out = check_in(Some(&ns), &p, false);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let w = out.warnings();
    let f = p.display().to_string();
    assert_eq!(w.len(), 2, "{}", out.stderr);
    assert!(w[0].starts_with(&format!("{f}:2:9: warning: the [failsafe] list is empty while sshd listens on tcp/2222, which rule \"admin\" protects")), "{}", w[0]);
    assert!(w[0].contains("lockout risk"), "{}", w[0]);
    assert!(w[1].starts_with(&format!("{f}:7:9: warning: rule \"admin\" protects tcp/2222, where this host's sshd listens, and tcp/2222 is not a failsafe port")), "{}", w[1]);

    // Keeping sshd's port failsafe removes both.
    let p = write(
        &dir,
        "ssh-ok.toml",
        &text.replace("ports = []", "ports = [\"tcp/2222\"]"),
    );
    let out = check_in(Some(&ns), &p, false);
    let w = out.warnings();
    assert_eq!(w.len(), 1, "{}", out.stderr);
    assert!(w[0].contains("tcp/2222 is failsafe"), "{}", w[0]);

    // In a namespace where nothing listens, nothing is said about sshd.
    let other = NetNs::new();
    let p = write(&dir, "ssh2.toml", text);
    let out = check_in(Some(&other), &p, false);
    assert!(out.warnings().is_empty(), "{}", out.stderr);
}
