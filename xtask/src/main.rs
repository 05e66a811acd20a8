//! `cargo xtask`: set up the toolchain, build, test, run the demo, fuzz the verdicts,
//! benchmark. Every command but `setup` runs `setup` first, so a fresh machine needs
//! nothing else.

mod bench;
mod setup;

use std::{
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
        Cmd::Build => {
            setup::setup()?;
            cargo(&["build", "--release", "-p", "enforcer"], &[])
        }
        Cmd::Test { args } => {
            setup::setup()?;
            require_root("cargo xtask test")?;
            setup::mount_bpffs()?;
            // Optional: the tests that use these tools skip those checks without them.
            if let Err(e) = setup::test_tools() {
                eprintln!("[setup] warning: test tools not installed ({e:#}); the checks that need them are skipped");
            }
            cargo(&["build", "-p", "enforcer"], &[])?;
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
            let mut test = vec!["test"];
            if !args.is_empty() {
                test.push("--");
                test.extend(args.iter().map(String::as_str));
            }
            cargo_test(&test, &env)
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

/// Runs `cargo test ...`, echoing its output, and ends with one line totalling every
/// test binary's results.
fn cargo_test(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    use std::io::{BufRead as _, Write as _};
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args)
        .current_dir(workspace_root())
        .stdout(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().context("running cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    let out = child.stdout.take().context("cargo test's output")?;
    for line in std::io::BufReader::new(out).lines() {
        let line = line.context("reading cargo test's output")?;
        println!("{line}");
        let _ = std::io::stdout().flush();
        // "test result: ok. 35 passed; 0 failed; 0 ignored; ..."
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                rest.split(';').find_map(|p| {
                    p.trim()
                        .strip_suffix(word)
                        .and_then(|n| n.trim().rsplit(' ').next()?.parse::<u64>().ok())
                })
            };
            passed += count(" passed").unwrap_or(0);
            failed += count(" failed").unwrap_or(0);
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!("tests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
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
