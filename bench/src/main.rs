//! `cargo xtask bench`: what enforcer costs per packet, end to end, per policy change and
//! per audit event, beside the floor and the usual alternatives, on this machine. Writes
//! the tables to `--out` (bench/RESULTS.md) and prints a summary.
//!
//! Needs root: it loads BPF programs, creates two network namespaces joined by a veth pair
//! (all traffic stays between them), and mounts a private bpffs for xdp-filter. All of it is
//! removed on exit, on failure, and on Ctrl-C.

mod audit;
mod bpf;
mod daemon;
mod e2e;
mod env;
mod kern;
mod load;
mod micro;
mod packets;
mod policy;
mod report;
mod sol;
mod stats;
mod xdpfilter;

use std::{path::PathBuf, process::ExitCode, time::Instant};

use anyhow::{bail, Context as _};

pub struct Options {
    out: PathBuf,
    only: Option<Vec<String>>,
    /// Rounds for each section.
    micro_rounds: usize,
    e2e_rounds: usize,
    policy_rounds: usize,
    audit_rounds: usize,
    load_rounds: usize,
    scaling_rounds: usize,
}

fn parse_args() -> anyhow::Result<Option<Options>> {
    let mut args = std::env::args().skip(1);
    let mut o = Options {
        out: PathBuf::from("bench/RESULTS.md"),
        only: None,
        micro_rounds: 5,
        e2e_rounds: 3,
        policy_rounds: 3,
        audit_rounds: 2,
        load_rounds: 3,
        scaling_rounds: 3,
    };
    while let Some(a) = args.next() {
        match a.as_str() {
            "--out" => o.out = args.next().context("--out needs a path")?.into(),
            "--only" => {
                o.only = Some(
                    args.next()
                        .context("--only needs sections")?
                        .split(',')
                        .map(str::to_string)
                        .collect(),
                )
            }
            "--quick" => {
                o.micro_rounds = 3;
                o.e2e_rounds = 1;
                o.policy_rounds = 1;
                o.audit_rounds = 1;
                o.load_rounds = 2;
                o.scaling_rounds = 2;
            }
            "--policy-child" => {
                let n = args
                    .next()
                    .context("--policy-child needs a size")?
                    .parse()?;
                policy::child(n)?;
                return Ok(None);
            }
            "--parse-child" => {
                let n = args.next().context("--parse-child needs a size")?.parse()?;
                policy::parse_child(n)?;
                return Ok(None);
            }
            "-h" | "--help" => {
                println!(
                    "enforcer-bench [--out FILE] [--quick] [--only micro,scaling,load,e2e,audit,policy]\n\
                     Measures enforcer's programs, policy writer and audit pipeline; needs root.\n\
                     The audit figures run the daemon binary ENFORCER_BIN (cargo xtask bench\n\
                     builds target/release/enforcer and names it), else the enforcer binary\n\
                     beside this one (the same build profile)."
                );
                return Ok(None);
            }
            other => bail!("unknown argument {other} (try --help)"),
        }
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    match parse_args() {
        Ok(None) => ExitCode::SUCCESS,
        Ok(Some(o)) => match run(&o) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(e) => {
                eprintln!("enforcer-bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            eprintln!("enforcer-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn want(o: &Options, section: &str) -> bool {
    o.only
        .as_ref()
        .is_none_or(|v| v.iter().any(|s| s == section))
}

fn need_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        "ip",
        "nsenter",
        "xdp-filter",
        "nft",
        "iptables-legacy",
        "mount",
    ]
    .into_iter()
    .filter(|t| env::sh(&["sh", "-c", &format!("command -v {t}")]).is_err())
    .collect();
    if !missing.is_empty() {
        bail!("missing tools: {} (cargo xtask bench installs them: xdp-tools, nftables, iptables, iproute2)", missing.join(", "));
    }
    Ok(())
}

/// Runs the sections; Ok(false) when one of them failed (its error is in the report).
fn run(o: &Options) -> anyhow::Result<bool> {
    if !testbed::is_root() {
        bail!("needs root: it loads BPF programs and creates network namespaces");
    }
    need_tools()?;
    let daemon_bin = (want(o, "e2e") || want(o, "audit"))
        .then(daemon::binary)
        .transpose()?;
    env::install_signal_handlers();
    audit::ignore_sigpipe();
    let started = Instant::now();
    let load = report::Load::start();
    let mut machine = report::machine();
    if let Some(bin) = &daemon_bin {
        machine.push(("daemon (audited figures)".into(), bin.display().to_string()));
    }
    let mut r = report::Report::new(machine);

    let trivial = micro::Trivial::load()?;
    let sol = sol::Sol::load(&[5432], &[micro::ALLOWED4.into(), micro::ALLOWED6.into()])?;
    let bpffs = env::Bpffs::new()?;
    let bed = env::Bed::new()?;
    let anchor = env::Anchor::new(2)?;
    let xdpf = xdpfilter::load(&bed, &bpffs)?;

    let step = |name: &str| {
        eprintln!(
            "[bench] {name} ({:.0} s in)",
            started.elapsed().as_secs_f64()
        )
    };
    if want(o, "micro") {
        step("per-packet cost through BPF_PROG_TEST_RUN");
        r.sizes = report::program_sizes(&trivial, &sol, &xdpf);
        r.micro =
            Some(micro::run(&trivial, &sol, &xdpf, o.micro_rounds).map_err(|e| format!("{e:#}")));
    }
    if want(o, "scaling") {
        step("scaling with prefixes and rules");
        r.scaling = Some(micro::scaling(&trivial, o.scaling_rounds).map_err(|e| format!("{e:#}")));
    }
    if want(o, "load") {
        step("program load time");
        r.load = Some(load::run(o.load_rounds).map_err(|e| format!("{e:#}")));
    }
    if want(o, "e2e") || want(o, "audit") {
        step("starting the daemon for the audited figures");
        // Pinned under the bench's own bpffs, which outlives it.
        let started = daemon::BenchDaemon::start(
            &bed.receiver,
            &bpffs.dir,
            "mode = \"enforce\"\n[[rule]]\nname = \"postgres\"\nprotocol = \"tcp\"\nports = [5432]\nallow_from = [\"10.1.0.0/16\"]\n",
        );
        let d = match started {
            Ok(d) => Some(d),
            Err(e) => {
                let e = format!("starting the daemon: {e:#}");
                r.e2e = want(o, "e2e").then(|| Err(e.clone()));
                r.audit = want(o, "audit").then_some(Err(e));
                None
            }
        };
        if let Some(d) = d {
            if want(o, "e2e") {
                step("end to end over veth");
                r.e2e = Some(
                    e2e::run(&bed, &anchor, &trivial, &sol, &xdpf, &d, o.e2e_rounds)
                        .map_err(|e| format!("{e:#}")),
                );
            }
            if want(o, "audit") {
                step("audit pipeline through the daemon");
                r.audit = Some(
                    audit::run(&bed, &d, &anchor, o.audit_rounds).map_err(|e| format!("{e:#}")),
                );
            }
        }
    }
    drop(bed);
    drop(bpffs);
    if want(o, "policy") {
        step("policy apply and reload");
        r.policy = Some(policy::run(o.policy_rounds).map_err(|e| format!("{e:#}")));
    }
    env::check_interrupted()?;
    r.elapsed_s = started.elapsed().as_secs_f64();
    r.machine.extend(load.finish());
    let (markdown, summary, ok) = r.render();
    if let Some(dir) = o.out.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    std::fs::write(&o.out, markdown).with_context(|| format!("writing {}", o.out.display()))?;
    println!("{summary}");
    println!("Full tables: {}", o.out.display());
    Ok(ok)
}
