//! Policy application (section 4): parse, compile and write N prefixes, reload, change one
//! rule; the maps' memory and the process's peak RSS. Each measurement runs in a child
//! process of its own (this binary with `--policy-child N` or `--parse-child N`), so its
//! peak RSS is its own, and a parse that runs too long can be stopped.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _};
use enforcer::{
    kernel::{writer::Writer, Loaded},
    policy::{compile_after, Compiled, Policy},
};

use crate::{
    bpf,
    env::check_interrupted,
    kern::{build_policy, parse},
    micro::audit_table,
    stats::Samples,
};

pub const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
/// Prefixes per rule; each rule protects its own port.
const PER_RULE: usize = 1_000;

/// `n` distinct /32s and /24s (alternating), clear of 192.0.2.0/24.
fn prefixes(n: usize, seed: u32) -> Vec<(Ipv4Addr, u8)> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(n);
    let mut x = seed;
    while out.len() < n {
        x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let len = if out.len() % 2 == 0 { 32 } else { 24 };
        let a = ((x >> 8) % 126 + 1) << 24 | (x & 0x00ff_ffff);
        let masked = a & (u32::MAX << (32 - len));
        if seen.insert((masked, len)) {
            out.push((Ipv4Addr::from(masked), len));
        }
    }
    out
}

/// The policy file: `rules.len()` rules, rule i on port `ports[i]`.
fn policy_text(rules: &[Vec<(Ipv4Addr, u8)>], ports: &[u16]) -> String {
    let mut s = format!("mode = \"enforce\"\n{}\n", audit_table(false));
    for (i, r) in rules.iter().enumerate() {
        s.push_str(&format!(
            "[[rule]]\nname = \"r{i}\"\nprotocol = \"tcp\"\nports = [{}]\nallow_from = [\n",
            ports[i]
        ));
        for (a, l) in r {
            s.push_str(&format!("\"{a}/{l}\",\n"));
        }
        s.push_str("]\n");
    }
    s
}

/// The same policy, built (see `kern::build_policy`).
fn policy_built(rules: &[Vec<(Ipv4Addr, u8)>], ports: &[u16]) -> anyhow::Result<Policy> {
    let spec: Vec<(u16, Vec<(IpAddr, u8)>)> = rules
        .iter()
        .zip(ports)
        .map(|(r, p)| (*p, r.iter().map(|&(a, l)| (IpAddr::V4(a), l)).collect()))
        .collect();
    build_policy(
        &format!("mode = \"enforce\"\n{}", audit_table(false)),
        &spec,
    )
}

fn policy_of(n: usize) -> (Vec<Vec<(Ipv4Addr, u8)>>, Vec<u16>) {
    let all = prefixes(n, 0x1234_5678);
    let rules: Vec<Vec<(Ipv4Addr, u8)>> = all.chunks(PER_RULE).map(|c| c.to_vec()).collect();
    let ports = (0..rules.len()).map(|i| 20000 + i as u16).collect();
    (rules, ports)
}

/// Compile + write, timed per phase (ms), with the entries written and removed. Compiles
/// as the daemon does: after the previous policy, so its port groups keep their ids.
fn apply(
    writer: &mut Writer,
    loaded: &mut Loaded,
    policy: &Policy,
    generation: u64,
    previous: &mut Option<Compiled>,
) -> anyhow::Result<serde_json::Value> {
    // The writer waits out a 20 ms grace period after its last flip; keep it out of the timing.
    std::thread::sleep(Duration::from_millis(25));
    let t1 = Instant::now();
    let compiled = compile_after(policy, previous.as_ref()).map_err(|e| anyhow!("compile: {e}"))?;
    let t2 = Instant::now();
    let stats = writer.apply(&mut loaded.maps, &compiled, &BTreeMap::new(), generation)?;
    let t3 = Instant::now();
    *previous = Some(compiled);
    let ms = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e3;
    Ok(serde_json::json!({
        "compile_ms": ms(t1, t2),
        "write_ms": ms(t2, t3),
        "written": stats.entries_written,
        "removed": stats.entries_removed,
    }))
}

/// This process's peak RSS (VmHWM, KiB): its own since exec, unlike wait4's ru_maxrss,
/// which can carry the parent's at the fork.
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// The parsing child: parses the policy file of `n` prefixes once; prints the time.
pub fn parse_child(n: usize) -> anyhow::Result<()> {
    let (rules, ports) = policy_of(n);
    let text = policy_text(&rules, &ports);
    let t = Instant::now();
    let p = parse(&text)?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    let got: usize = p.verdict.rules.iter().map(|r| r.allow_from.len()).sum();
    if got != n {
        bail!("parsed {got} prefixes of {n}");
    }
    println!(
        "{}",
        serde_json::json!({ "parse_ms": ms, "bytes": text.len(), "hwm_kib": vm_hwm_kib() })
    );
    Ok(())
}

/// The applying child: one policy size, compile and write figures, as one JSON line.
pub fn child(n: usize) -> anyhow::Result<()> {
    let t = Instant::now();
    let mut loaded = Loaded::load()?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let (rules, mut ports) = policy_of(n);
    let policy = policy_built(&rules, &ports)?;
    let mut w = Writer::new();
    let mut prev = None;
    // 1: the first apply, into empty maps. 2: a reload of the same policy, which fills the
    // other (still empty) slot. 3: the same again: steady state, both slots hold it.
    let first = apply(&mut w, &mut loaded, &policy, 1, &mut prev)?;
    let second = apply(&mut w, &mut loaded, &policy, 2, &mut prev)?;
    let steady = apply(&mut w, &mut loaded, &policy, 3, &mut prev)?;
    let mut out = serde_json::json!({
        "n": n,
        "load_ms": load_ms,
        "first": first,
        "second_slot": second,
        "steady": steady,
    });
    if n == *SIZES.last().expect("sizes") {
        // Both slots hold the policy (3 and 2). One prefix of one rule replaced by another:
        let mid = rules.len() / 2;
        let mut changed = rules.clone();
        let taken: std::collections::HashSet<(Ipv4Addr, u8)> =
            rules.iter().flatten().copied().collect();
        let pick = prefixes(PER_RULE, 0x0bad_cafe)
            .into_iter()
            .find(|p| !taken.contains(p))
            .context("a fresh prefix")?;
        changed[mid][0] = pick;
        let one_prefix = apply(
            &mut w,
            &mut loaded,
            &policy_built(&changed, &ports)?,
            4,
            &mut prev,
        )?;
        apply(
            &mut w,
            &mut loaded,
            &policy_built(&changed, &ports)?,
            5,
            &mut prev,
        )?;
        // One rule's port moved (its 1,000 prefixes belong to another port group now).
        ports[mid] = 30000;
        let one_rule = apply(
            &mut w,
            &mut loaded,
            &policy_built(&changed, &ports)?,
            6,
            &mut prev,
        )?;
        out["one_prefix"] = one_prefix;
        out["one_rule_port"] = one_rule;
    }
    let maps = bpf::process_maps()?;
    let total: u64 = maps.iter().map(|m| m.memlock).sum();
    let by_name: serde_json::Map<String, serde_json::Value> = maps
        .iter()
        .map(|m| (m.name.clone(), serde_json::json!(m.memlock)))
        .collect();
    out["maps_memlock"] = serde_json::json!(total);
    out["hwm_kib"] = serde_json::json!(vm_hwm_kib());
    out["maps"] = serde_json::Value::Object(by_name);
    println!("{out}");
    Ok(())
}

pub struct SizeRow {
    pub n: usize,
    /// Parse of the policy file (ms), and the budget (s) it ran over, if it did.
    pub parse_ms: Samples,
    pub parse_over: Option<f64>,
    pub file_bytes: u64,
    pub compile_ms: Samples,
    pub write_ms: Samples,
    /// Compile + write of a reload of the same policy: into the other, empty slot; then in
    /// the steady state.
    pub second_slot: Samples,
    pub steady: Samples,
    pub written: u64,
    pub load_ms: Samples,
    pub maps_total: Samples,
    pub allow_mem: Samples,
    pub rss_kib: Samples,
    pub parse_rss_kib: Samples,
}

impl SizeRow {
    /// Compile + write of the first apply.
    pub fn compile_write(&self) -> Samples {
        Samples(
            self.compile_ms
                .0
                .iter()
                .zip(&self.write_ms.0)
                .map(|(a, b)| a + b)
                .collect(),
        )
    }
}

pub struct ChangeRow {
    pub label: &'static str,
    /// Compile + write (ms), and the write alone.
    pub compile_write_ms: Samples,
    pub write_ms: Samples,
    pub written: u64,
    pub removed: u64,
}

pub struct PolicyResults {
    pub sizes: Vec<SizeRow>,
    pub changes: Vec<ChangeRow>,
    pub full_write_ms: Samples,
    pub full_written: u64,
    pub parse_budget_s: f64,
}

/// Parses of one file stop after this long (they grow with the square of the file here).
pub const PARSE_BUDGET_S: f64 = 20.0;

/// Runs this binary with `args`; returns its JSON line, or None if it ran over `budget`
/// (it is killed then).
fn run_child(args: &[String], budget: Duration) -> anyhow::Result<Option<serde_json::Value>> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new(exe)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id() as libc::pid_t;
    let mut stdout = child.stdout.take().context("child stdout")?;
    let mut stderr = child.stderr.take().context("child stderr")?;
    let out_t = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        use std::io::Read as _;
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: rusage is plain data.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let mut timed_out = false;
    loop {
        // SAFETY: waiting (without blocking) for our own child.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        if r < 0 {
            bail!("wait4: {}", std::io::Error::last_os_error());
        }
        if !timed_out && (start.elapsed() > budget || crate::env::check_interrupted().is_err()) {
            // Our own child, by its pid.
            let _ = child.kill();
            timed_out = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    if timed_out {
        return Ok(None);
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("child {} failed: {}", args.join(" "), err.trim());
    }
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).with_context(|| format!("child output: {out}"))?;
    Ok(Some(v))
}

pub fn run(rounds: usize) -> anyhow::Result<PolicyResults> {
    let mut sizes: Vec<SizeRow> = SIZES
        .iter()
        .map(|&n| SizeRow {
            n,
            parse_ms: Samples::default(),
            parse_over: None,
            file_bytes: 0,
            compile_ms: Samples::default(),
            write_ms: Samples::default(),
            second_slot: Samples::default(),
            steady: Samples::default(),
            written: 0,
            load_ms: Samples::default(),
            maps_total: Samples::default(),
            allow_mem: Samples::default(),
            rss_kib: Samples::default(),
            parse_rss_kib: Samples::default(),
        })
        .collect();
    let change = |label| ChangeRow {
        label,
        compile_write_ms: Samples::default(),
        write_ms: Samples::default(),
        written: 0,
        removed: 0,
    };
    let mut changes = vec![
        change("one prefix of one rule replaced"),
        change("one rule's port changed (its 1,000 prefixes move)"),
    ];
    let mut full_write_ms = Samples::default();
    let mut full_written = 0;
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let cw = |v: &serde_json::Value| f(v, "compile_ms") + f(v, "write_ms");
    for _ in 0..rounds {
        for row in sizes.iter_mut() {
            check_interrupted()?;
            let v = run_child(
                &["--policy-child".into(), row.n.to_string()],
                Duration::from_secs(300),
            )?
            .context("the applying child ran over 300 s")?;
            let first = &v["first"];
            row.compile_ms.push(f(first, "compile_ms"));
            row.write_ms.push(f(first, "write_ms"));
            row.written = first["written"].as_u64().unwrap_or(0);
            row.second_slot.push(cw(&v["second_slot"]));
            row.steady.push(cw(&v["steady"]));
            row.load_ms.push(f(&v, "load_ms"));
            row.maps_total.push(f(&v, "maps_memlock"));
            row.allow_mem
                .push(v["maps"]["ALLOW"].as_f64().unwrap_or(f64::NAN));
            row.rss_kib.push(f(&v, "hwm_kib"));
            if v.get("one_prefix").is_some() {
                full_write_ms.push(f(first, "write_ms"));
                full_written = row.written;
                for (c, key) in changes.iter_mut().zip(["one_prefix", "one_rule_port"]) {
                    c.compile_write_ms.push(cw(&v[key]));
                    c.write_ms.push(f(&v[key], "write_ms"));
                    c.written = v[key]["written"].as_u64().unwrap_or(0);
                    c.removed = v[key]["removed"].as_u64().unwrap_or(0);
                }
            }
            // The parse, in a child of its own, unless it already ran over its budget.
            if row.parse_over.is_none() {
                match run_child(
                    &["--parse-child".into(), row.n.to_string()],
                    Duration::from_secs_f64(PARSE_BUDGET_S),
                )? {
                    Some(v) => {
                        row.parse_ms.push(f(&v, "parse_ms"));
                        row.file_bytes = v["bytes"].as_u64().unwrap_or(0);
                        row.parse_rss_kib.push(f(&v, "hwm_kib"));
                    }
                    None => row.parse_over = Some(PARSE_BUDGET_S),
                }
            }
        }
    }
    Ok(PolicyResults {
        sizes,
        changes,
        full_write_ms,
        full_written,
        parse_budget_s: PARSE_BUDGET_S,
    })
}
