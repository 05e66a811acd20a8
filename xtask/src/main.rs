//! `cargo xtask`: set up the toolchain, build, test, run the demo, fuzz the verdicts,
//! benchmark. Every command but `setup` runs `setup` first, so a fresh machine needs
//! nothing else.

mod bench;
mod imports;
mod setup;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context as _};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building the BPF programs needs (idempotent).
    Setup,
    /// Build the daemon (release), with its BPF programs embedded.
    Build,
    /// Run every test: unit tests, then the kernel and namespace tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// A self-contained demo in network namespaces: allowed and refused connections.
    Demo,
    /// The module graph of `enforcer/src`: fails on an import cycle or on `policy/`
    /// importing upward.
    Imports,
    /// Formatting and clippy (-D warnings) for the host crates and for the BPF crates on
    /// their own target.
    Lint,
    /// Differential test of the programs against the reference model on many packets.
    FuzzVerdicts {
        #[arg(long, default_value_t = 100_000)]
        packets: u64,
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks (needs root, under 10 minutes): per-packet cost, scaling with the
    /// policy, a flood over veth, policy apply and reload, the audit pipeline; beside a
    /// trivial program, xdp-filter, nftables and iptables. Writes bench/RESULTS.md.
    Bench {
        /// Extra arguments for the bench (`--quick`, `--only micro,scaling,e2e,policy,audit`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e:#}");
            ExitCode::FAILURE
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Cmd::Setup => setup::setup(),
        Cmd::Imports => imports::imports(),
        Cmd::Build => {
            setup::setup()?;
            cargo(&["build", "--release", "-p", "enforcer"], &[])
        }
        Cmd::Test { args } => {
            setup::setup()?;
            require_root("cargo xtask test")?;
            setup::mount_bpffs()?;
            let ci = in_ci();
            // Without a tool the tests that need it record a skip; under CI that is a
            // failure, so a tool that cannot be installed stops the run here, named.
            if let Err(e) = setup::test_tools() {
                if ci {
                    return Err(e.context("CI=true: every test tool is required"));
                }
                eprintln!("[setup] warning: {e:#}; the tests that need it will be skipped");
            }
            cargo(&["build", "-p", "enforcer"], &[])?;
            sweep()?;
            let bin = workspace_root().join("target/debug/enforcer");
            // The image and the booted container run the static release build.
            let static_bin = setup::build_static()?;
            let env = [
                ("ENFORCER_BIN", bin.to_string_lossy().into_owned()),
                (
                    "ENFORCER_STATIC_BIN",
                    static_bin.to_string_lossy().into_owned(),
                ),
            ];
            let mut test = vec!["test", "--no-fail-fast"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo_test(&test, &env, ci)
        }
        Cmd::Demo => {
            setup::setup()?;
            require_root("cargo xtask demo")?;
            cargo(
                &[
                    "build",
                    "-p",
                    "enforcer",
                    "-p",
                    "integration-tests",
                    "--bins",
                ],
                &[],
            )?;
            let root = workspace_root();
            // Ctrl-C is the demo's to handle (it cleans up, then exits): xtask waits for it.
            // SAFETY: setting a signal disposition; the demo installs its own handler.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
            let status = Command::new(root.join("target/debug/demo"))
                .env("ENFORCER_BIN", root.join("target/debug/enforcer"))
                .env(
                    "ENFORCER_DEMO_POLICY",
                    root.join("examples/demo-policy.toml"),
                )
                .status()
                .context("running the demo")?;
            if !status.success() {
                bail!("the demo failed ({status})");
            }
            Ok(())
        }
        Cmd::Lint => {
            setup::setup()?;
            cargo(&["fmt", "--all", "--", "--check"], &[])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"], &[])?;
            let status = Command::new("cargo")
                .args([
                    "+nightly",
                    "clippy",
                    "-p",
                    "enforcer-ebpf",
                    "-p",
                    "sol-ebpf",
                    "--target",
                    "bpfel-unknown-none",
                    "-Z",
                    "build-std=core",
                    "--release",
                    "--",
                    "-D",
                    "warnings",
                ])
                .current_dir(workspace_root())
                .status()
                .context("running clippy on the BPF crates")?;
            if !status.success() {
                bail!("clippy on the BPF crates failed ({status})");
            }
            Ok(())
        }
        Cmd::FuzzVerdicts { packets, seed } => {
            setup::setup()?;
            require_root("cargo xtask fuzz-verdicts")?;
            let mut env = vec![("ENFORCER_FUZZ_PACKETS", packets.to_string())];
            if let Some(s) = seed {
                env.push(("ENFORCER_FUZZ_SEED", s.to_string()));
            }
            cargo(
                &[
                    "test",
                    "--release",
                    "-p",
                    "integration-tests",
                    "--test",
                    "differential",
                    "--",
                    "--nocapture",
                ],
                &env,
            )
        }
        Cmd::Bench { args } => {
            setup::setup()?;
            require_root("cargo xtask bench")?;
            // Ctrl-C is the bench's to handle (it stops, then removes what it made).
            // SAFETY: setting a signal disposition; the bench installs its own handler.
            unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
            bench::run(&args)
        }
    }
}

fn require_root(what: &str) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("{what} needs root: it loads BPF programs and creates network namespaces and cgroups. Run it as root (e.g. `sudo -E cargo xtask ...`).");
    }
    Ok(())
}

/// Whether this runs under CI (`CI=true`), where a skipped test is a failed one.
fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Removes what interrupted test runs left behind (their namespaces, interfaces, cgroups,
/// pin dirs and temp dirs, found by their run tags: see tests/src/sweep.rs), never
/// anything of a run still going.
fn sweep() -> anyhow::Result<()> {
    cargo(&["build", "-p", "integration-tests", "--bin", "sweep"], &[])?;
    let status = Command::new(workspace_root().join("target/debug/sweep"))
        .status()
        .context("running the sweep")?;
    if !status.success() {
        bail!("the sweep of earlier runs' leftovers failed ({status})");
    }
    Ok(())
}

/// What libtest printed, summed over every test binary.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// Names of the tests that failed ("test NAME ... FAILED").
    failed_names: Vec<String>,
}

impl Tally {
    fn read(&mut self, line: &str) {
        // "test result: ok. 35 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';').find_map(|p| {
                    p.trim()
                        .strip_suffix(word)
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                })
            };
            self.passed += count(" passed").unwrap_or(0);
            self.failed += count(" failed").unwrap_or(0);
            self.ignored += count(" ignored").unwrap_or(0);
        } else if let Some(name) = line
            .strip_prefix("test ")
            .and_then(|l| l.strip_suffix(" ... FAILED"))
        {
            self.failed_names.push(name.to_string());
        }
    }

    /// The skipped tests from the tests' skip records ("SKIP: binary::test: reason"), each
    /// with its reasons; a test that failed after recording a skip counts as failed.
    fn skipped<'a>(&self, records: &'a str) -> BTreeMap<&'a str, Vec<&'a str>> {
        let mut skipped: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for rec in records.lines().filter_map(|l| l.strip_prefix("SKIP: ")) {
            let (test, reason) = rec.split_once(": ").unwrap_or((rec, ""));
            let name = test.split_once("::").map_or(test, |(_, n)| n);
            if !self.failed_names.iter().any(|f| f == name) {
                skipped.entry(test).or_default().push(reason);
            }
        }
        skipped
    }
}

/// Runs `cargo test ...` (with `--no-fail-fast`: every binary runs), echoing its output,
/// and ends with one line totalling every binary's results. Tests record their skips
/// (`testbed::skip!`) in a file named by ENFORCER_TEST_SKIPS: a skipped test counts as
/// skipped, not passed, and each is listed with its reason; under CI a skip fails the run.
fn cargo_test(args: &[&str], env: &[(&str, String)], ci: bool) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let skips_file = std::env::temp_dir().join(format!(
        "enforcer-xtask-skips-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    ));
    let _ = std::fs::remove_file(&skips_file);
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(workspace_root())
        .env("ENFORCER_TEST_SKIPS", &skips_file)
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let mut tally = Tally::default();
    let out = child.stdout.take().context("cargo test's output")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        let _ = std::io::stdout().flush();
        tally.read(&line);
    }
    let status = child.wait().context("waiting for cargo test")?;
    let records = std::fs::read_to_string(&skips_file).unwrap_or_default();
    let _ = std::fs::remove_file(&skips_file);
    let skipped = tally.skipped(&records);
    let n_skipped = skipped.len() as u64 + tally.ignored;
    if n_skipped > 0 {
        println!("skipped:");
        for (test, reasons) in &skipped {
            println!("  {test}: {}", reasons.join("; "));
        }
        if tally.ignored > 0 {
            println!("  {} #[ignore]d tests", tally.ignored);
        }
    }
    println!(
        "tests: {} passed, {} failed, {n_skipped} skipped",
        tally.passed.saturating_sub(skipped.len() as u64),
        tally.failed
    );
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    if ci && n_skipped > 0 {
        bail!("CI=true: {n_skipped} tests skipped; under CI a skip is a failure");
    }
    Ok(())
}

pub fn cargo(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(workspace_root());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_are_counted_apart_from_passes_and_failures() {
        let mut t = Tally::default();
        for line in [
            "test a ... ok",
            "test b ... FAILED",
            "test result: FAILED. 2 passed; 1 failed; 1 ignored; 0 measured; 0 filtered out",
            "test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out",
        ] {
            t.read(line);
        }
        assert_eq!((t.passed, t.failed, t.ignored), (5, 1, 1));
        let records =
            "SKIP: e2e::a: needs root\nSKIP: e2e::a: no tcpdump\nSKIP: x::b: no bpftool\n";
        let skipped = t.skipped(records);
        // b failed after its skip: a failure, not a skip.
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped["e2e::a"], ["needs root", "no tcpdump"]);
    }
}
