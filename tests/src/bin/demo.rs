//! `cargo xtask demo`: the enforcer at work in a small world of its own.
//!
//! It makes network namespaces (a "host" running the daemon and two services, a
//! "trusted" and an "untrusted" machine joined to it by veths), a cgroup with an "app"
//! and an "other" child, fills the policy template (ENFORCER_DEMO_POLICY) with their
//! names, starts the daemon (ENFORCER_BIN) and shows allowed and refused connections
//! with the audit lines they produced. Everything it made is removed when it ends, also
//! on Ctrl-C (the guards of the test bed do it; a SIGINT handler only raises a flag).
//!
//! Ctrl-C reaches every process of the terminal's foreground process group. Had the
//! demo's children been in it, an `ip netns add` killed half-way would leave a namespace
//! no guard knows of. So the demo runs as two processes: this one (the supervisor, in the
//! foreground) catches SIGINT and passes it on to a worker (this binary again, with
//! ENFORCER_DEMO_WORKER set) that runs in a process group of its own with everything it
//! starts; the worker's handler raises the flag, the worker stops at its next step and
//! its guards remove what it made.

use std::{
    collections::BTreeMap,
    os::unix::process::{CommandExt as _, ExitStatusExt as _},
    panic::AssertUnwindSafe,
    path::PathBuf,
    process::{Command, ExitCode, Stdio},
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;
use testbed::{
    daemon::{probe, Daemon, Probe},
    is_root,
    net::{Cgroup, NetNs, Veth},
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// The supervisor's worker, once started (0 before).
static WORKER: AtomicI32 = AtomicI32::new(0);
const WORKER_ENV: &str = "ENFORCER_DEMO_WORKER";

/// The supervisor's handler: raise the flag and pass the signal on to the worker (kill()
/// is async-signal-safe). Repeated Ctrl-C are passed on too; the worker ignores them.
extern "C" fn forward_signal(_sig: libc::c_int) {
    if !INTERRUPTED.swap(true, Ordering::SeqCst) {
        let msg = b"\nStopping: the demo finishes its current step, then removes what it made...\n";
        // SAFETY: write() is async-signal-safe; the buffer is a static byte string.
        unsafe { libc::write(2, msg.as_ptr().cast(), msg.len()) };
    }
    let pid = WORKER.load(Ordering::SeqCst);
    if pid > 0 {
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
}

/// The worker's handler.
extern "C" fn on_signal(_sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    // A second Ctrl-C must not cut the clean-up short: ignore it (inherited by the `ip`
    // commands the clean-up runs). signal() is async-signal-safe.
    // SAFETY: changing this process's signal dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

fn install_signal_handlers(handler: extern "C" fn(libc::c_int)) {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: installs a handler that only touches atomics and calls async-signal-safe
        // functions.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler as *const () as libc::sighandler_t;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// From here on, Ctrl-C no longer interrupts: the clean-up runs to its end.
fn ignore_interrupts() {
    // SAFETY: changing this process's signal dispositions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Leaves `run` early (its guards then remove everything) once Ctrl-C was pressed.
macro_rules! checkpoint {
    () => {
        if interrupted() {
            return Ok(0);
        }
    };
}

const TCP_PORT: &str = "5432";
const UDP_PORT: &str = "8125";
const PROBE_MS: &str = "1000";

fn main() -> ExitCode {
    if std::env::var_os(WORKER_ENV).is_some() {
        worker()
    } else {
        supervise()
    }
}

/// Starts the worker in a process group of its own and waits for it, passing Ctrl-C on.
fn supervise() -> ExitCode {
    install_signal_handlers(forward_signal);
    let exe = match std::env::current_exe() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("demo: cannot find my own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cmd = Command::new(exe);
    cmd.env(WORKER_ENV, "1").stdin(Stdio::null());
    // SAFETY: between fork and exec the child only makes raw syscalls.
    unsafe {
        cmd.pre_exec(|| {
            // Out of the terminal's foreground group: Ctrl-C no longer reaches it or its
            // children; the supervisor passes it on.
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Should the supervisor die (SIGKILL), the worker still cleans up.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("demo: cannot start the worker: {e}");
            return ExitCode::FAILURE;
        }
    };
    WORKER.store(child.id() as i32, Ordering::SeqCst);
    if INTERRUPTED.load(Ordering::SeqCst) {
        // Ctrl-C came while it was being started.
        // SAFETY: kill on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    match child.wait() {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => ExitCode::from(code.clamp(0, 255) as u8),
            // Interrupted before the worker installed its handler: it had made nothing.
            (None, Some(libc::SIGTERM)) if INTERRUPTED.load(Ordering::SeqCst) => {
                eprintln!("Interrupted before the demo made anything.");
                ExitCode::from(130)
            }
            (None, Some(sig)) => {
                eprintln!("demo: the worker was killed by signal {sig}");
                ExitCode::from((128 + sig).clamp(0, 255) as u8)
            }
            _ => ExitCode::FAILURE,
        },
        Err(e) => {
            eprintln!("demo: waiting for the worker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The demo itself (see `run`), its guards removing everything also when interrupted.
fn worker() -> ExitCode {
    install_signal_handlers(on_signal);
    if !is_root() {
        eprintln!(
            "demo: needs root (it creates network namespaces and cgroups and loads BPF programs)"
        );
        return ExitCode::FAILURE;
    }
    let template_path = std::env::var_os("ENFORCER_DEMO_POLICY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/demo-policy.toml"
            ))
        });
    let template = match std::fs::read_to_string(&template_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!(
                "demo: cannot read the policy template {}: {e}",
                template_path.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let bin = testbed::enforcer_bin();
    if !bin.exists() {
        eprintln!(
            "demo: no daemon binary at {} (build it, or set ENFORCER_BIN)",
            bin.display()
        );
        return ExitCode::FAILURE;
    }
    let probe_bin = testbed::probe_bin();
    if !probe_bin.exists() {
        eprintln!(
            "demo: no probe binary at {} (cargo build -p integration-tests --bins)",
            probe_bin.display()
        );
        return ExitCode::FAILURE;
    }

    // A panic unwinds through the guards; once interrupted, say nothing about it.
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        ignore_interrupts();
        if !interrupted() {
            default_hook(info);
        }
    }));

    let result = std::panic::catch_unwind(AssertUnwindSafe(|| run(&template)));
    if interrupted() {
        println!("\nInterrupted: the daemon is stopped and the namespaces, veths and cgroups the demo made are removed.");
        return ExitCode::from(130);
    }
    match result {
        Ok(Ok(0)) => {
            println!("\nDone: the daemon is stopped and the namespaces, veths and cgroups the demo made are removed.");
            ExitCode::SUCCESS
        }
        Ok(Ok(n)) => {
            println!("\n{n} outcome(s) differed from what the policy should give (marked UNEXPECTED above).");
            println!("Everything the demo made is removed.");
            ExitCode::FAILURE
        }
        Ok(Err(e)) => {
            eprintln!("\ndemo: {e}\nEverything the demo made is removed.");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("\ndemo: failed (see above). Everything it made is removed.");
            ExitCode::FAILURE
        }
    }
}

/// The world of the demo. Fields drop in order: cgroups (their processes are killed),
/// then namespaces (with their veths).
struct World {
    app: Cgroup,
    other: Cgroup,
    services: Cgroup,
    cg: Cgroup,
    to_trusted: Veth,
    to_untrusted: Veth,
    trusted: NetNs,
    untrusted: NetNs,
    host: NetNs,
}

impl World {
    fn new() -> Self {
        let host = NetNs::new();
        let trusted = NetNs::new();
        let untrusted = NetNs::new();
        let to_trusted = Veth::new(&host, &["10.77.1.1/24"], &trusted, &["10.77.1.2/24"]);
        let to_untrusted = Veth::new(&host, &["10.99.0.1/24"], &untrusted, &["10.99.0.2/24"]);
        let cg = Cgroup::new();
        let services = cg.child("services");
        let app = cg.child("app");
        let other = cg.child("other");
        World {
            app,
            other,
            services,
            cg,
            to_trusted,
            to_untrusted,
            trusted,
            untrusted,
            host,
        }
    }
}

/// One thing the demo tries: who, from where, what, and what the policy should give.
struct Step<'a> {
    title: &'a str,
    ns: &'a NetNs,
    cg: Option<&'a Cgroup>,
    kind: &'a str,
    addr: &'a str,
    want: &'a str,
}

/// Runs the demo; returns how many outcomes were not what the policy should give.
fn run(template: &str) -> Result<usize, String> {
    println!("enforcer demo");
    println!("=============\n");
    println!("Setting up a small world of network namespaces (nothing on this machine's own");
    println!("interfaces or cgroups is touched):\n");
    let w = World::new();
    checkpoint!();
    println!(
        "  host       netns {:<12} 10.77.1.1 on {}, 10.99.0.1 on {}",
        w.host.name, w.to_trusted.a, w.to_untrusted.a
    );
    println!(
        "  trusted    netns {:<12} 10.77.1.2   (a machine in the allowed subnet 10.77.1.0/24)",
        w.trusted.name
    );
    println!(
        "  untrusted  netns {:<12} 10.99.0.2   (any other machine)",
        w.untrusted.name
    );
    println!(
        "  cgroup     {}  with children services/ (the host's servers), app/ (allowed) and other/",
        w.cg.path
    );

    let policy = template
        .replace("@IFACE_TRUSTED@", &w.to_trusted.a)
        .replace("@IFACE_UNTRUSTED@", &w.to_untrusted.a)
        .replace("@CGROUP@", &w.cg.path);
    if policy.contains('@') {
        let left: Vec<&str> = policy
            .lines()
            .filter(|l| l.contains('@') && !l.trim_start().starts_with('#'))
            .collect();
        if !left.is_empty() {
            return Err(format!(
                "the policy template has placeholders the demo does not know: {left:?}"
            ));
        }
    }
    println!(
        "\nThe policy (examples/demo-policy.toml with these names filled in), comments left out:\n"
    );
    for line in policy
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && !l.trim().is_empty())
    {
        println!("    {line}");
    }

    println!(
        "\nStarting the services on the host, inside {}/services so the cgroup",
        w.cg.path
    );
    println!("programs see their sockets: TCP {TCP_PORT} (a database) and UDP {UDP_PORT} (a metrics collector).");
    let procs = w.services.procs_file();
    let tcp_listener = Probe::spawn(
        Some(&w.host),
        Some(&procs),
        &["tcp-listen", "0.0.0.0", TCP_PORT],
    );
    let udp_listener = Probe::spawn(
        Some(&w.host),
        Some(&procs),
        &["udp-listen", "0.0.0.0", UDP_PORT],
    );
    checkpoint!();

    println!("Starting the daemon in the host namespace: enforcer run --config <the policy>");
    let daemon = Daemon::start(&w.host, &policy);
    checkpoint!();
    println!(
        "It loaded its BPF programs, attached XDP to {} and {} and the cgroup",
        w.to_trusted.a, w.to_untrusted.a
    );
    println!(
        "programs to {}. It prints one JSON line per judged packet: the audit stream.",
        w.cg.path
    );

    let mut unexpected = 0;
    let step = |title, ns, cg, kind, addr, want| Step {
        title,
        ns,
        cg,
        kind,
        addr,
        want,
    };
    let steps = [
        step(
            "A trusted machine (10.77.1.2) connects to the database",
            &w.trusted,
            None,
            "tcp-connect",
            "10.77.1.1",
            "connected",
        ),
        step(
            "A trusted machine sends a metric",
            &w.trusted,
            None,
            "udp-send",
            "10.77.1.1",
            "reply",
        ),
        step(
            "An untrusted machine (10.99.0.2) connects to the database",
            &w.untrusted,
            None,
            "tcp-connect",
            "10.99.0.1",
            "timeout",
        ),
        step(
            "An untrusted machine sends a metric",
            &w.untrusted,
            None,
            "udp-send",
            "10.99.0.1",
            "sent",
        ),
        step(
            "A local process in the app's cgroup connects over loopback",
            &w.host,
            Some(&w.app),
            "tcp-connect",
            "127.0.0.1",
            "connected",
        ),
        step(
            "A local process in the app's cgroup sends a metric",
            &w.host,
            Some(&w.app),
            "udp-send",
            "127.0.0.1",
            "reply",
        ),
        step(
            "A local process in another cgroup connects over loopback",
            &w.host,
            Some(&w.other),
            "tcp-connect",
            "127.0.0.1",
            "eperm",
        ),
        step(
            "A local process in another cgroup sends a metric",
            &w.host,
            Some(&w.other),
            "udp-send",
            "127.0.0.1",
            "eperm",
        ),
    ];
    for (
        i,
        Step {
            title,
            ns,
            cg,
            kind,
            addr,
            want,
        },
    ) in steps.iter().enumerate()
    {
        checkpoint!();
        let port = if *kind == "tcp-connect" {
            TCP_PORT
        } else {
            UDP_PORT
        };
        println!("\n[{}/{}] {title}", i + 1, steps.len());
        let mut place = format!("netns {}", ns.name);
        if let Some(cg) = cg {
            place.push_str(&format!(", cgroup {}", cg.path));
        }
        println!("  $ probe {kind} {addr} {port}      ({place})");
        let seen = daemon.events().len();
        let t = Instant::now();
        let procs = cg.map(|c| c.procs_file());
        let got = probe(Some(ns), procs.as_deref(), &[kind, addr, port, PROBE_MS]);
        let took = t.elapsed();
        checkpoint!();
        let verdict = if got == *want {
            "as the policy says"
        } else {
            "UNEXPECTED"
        };
        if got != *want {
            unexpected += 1;
        }
        println!(
            "  -> {got} after {} ms ({}; expected: {want})",
            took.as_millis(),
            explain_outcome(&got)
        );
        println!("     {verdict}");
        let events = settle(&daemon, seen, port);
        show_events(&events);
    }

    checkpoint!();
    let served = |p: &Probe| {
        p.lines()
            .iter()
            .filter(|l| !l.starts_with("listening"))
            .cloned()
            .collect::<Vec<_>>()
    };
    println!("\nWhat the services saw:");
    println!("  database (TCP {TCP_PORT}): {:?}", served(&tcp_listener));
    println!("  metrics  (UDP {UDP_PORT}): {:?}", served(&udp_listener));

    println!("\nStopping the daemon (SIGTERM): it detaches its programs and exits.");
    ignore_interrupts();
    let status = daemon.stop();
    match status.code() {
        Some(code) => println!("  it exited with status {code}"),
        None => println!("  it ended: {status}"),
    }
    if !status.success() {
        unexpected += 1;
    }
    println!("Removing the namespaces, veths and cgroups...");
    Ok(unexpected)
}

fn explain_outcome(got: &str) -> &'static str {
    match got {
        "connected" => "the TCP handshake completed",
        "reply" => "the datagram arrived and the service echoed it",
        "timeout" => "the packets were dropped silently; the client gave up",
        "sent" => "the datagram left but no echo came back: it was dropped",
        "eperm" => "the kernel refused the socket call at once: Operation not permitted",
        "refused" => "nothing listens there",
        _ => "see the probe",
    }
}

/// The daemon's packet events after the first `seen` lines for `port`, once they stopped
/// coming (the audit stream is written asynchronously).
fn settle(d: &Daemon, seen: usize, port: &str) -> Vec<Value> {
    let port: u64 = port.parse().unwrap_or(0);
    let start = Instant::now();
    let mut last = (0, Instant::now());
    loop {
        let events: Vec<Value> = d
            .events()
            .into_iter()
            .skip(seen)
            .filter(|v| v["event"] == "packet" && v["dport"] == port)
            .collect();
        if events.len() != last.0 {
            last = (events.len(), Instant::now());
        }
        let quiet = last.1.elapsed() > Duration::from_millis(300);
        if (quiet && !events.is_empty())
            || start.elapsed() > Duration::from_secs(2)
            || interrupted()
        {
            return events;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// "ADDR:PORT" ("[ADDR]:PORT" for IPv6), or the address alone when the port is unknown
/// (a socket refused at connect() has no source port yet).
fn endpoint(addr: &str, port: &str) -> String {
    match (port.is_empty(), addr.contains(':')) {
        (true, _) => addr.to_string(),
        (false, true) => format!("[{addr}]:{port}"),
        (false, false) => format!("{addr}:{port}"),
    }
}

/// One readable line per kind of event (same hook, verdict, reason, flow), counted, and
/// the first event as the daemon printed it.
fn show_events(events: &[Value]) {
    if events.is_empty() {
        println!("  audit: no line (nothing was judged)");
        return;
    }
    let s = |v: &Value, k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    };
    let mut kinds: BTreeMap<usize, (String, usize)> = BTreeMap::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (i, v) in events.iter().enumerate() {
        let mut line = format!(
            "{:<15} {:<10} {:<18} rule {:<8} {} {} -> {}",
            s(v, "hook"),
            s(v, "verdict"),
            s(v, "reason"),
            s(v, "rule"),
            s(v, "proto"),
            endpoint(&s(v, "src"), &s(v, "sport")),
            endpoint(&s(v, "dst"), &s(v, "dport")),
        );
        for k in ["iface", "cgroup", "pid", "comm"] {
            if !v[k].is_null() {
                line.push_str(&format!(" {k}={}", s(v, k)));
            }
        }
        let at = *index.entry(line.clone()).or_insert(i);
        kinds.entry(at).or_insert((line, 0)).1 += 1;
    }
    println!(
        "  audit ({} line{}):",
        events.len(),
        if events.len() == 1 { "" } else { "s" }
    );
    for (line, n) in kinds.values() {
        let times = if *n > 1 {
            format!("  (x{n} packets)")
        } else {
            String::new()
        };
        println!("    {line}{times}");
    }
    println!("  the first, as printed:");
    println!("    {}", events[0]);
}
