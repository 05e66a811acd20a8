//! Installs what a fresh machine lacks to build the BPF programs, saying what it does.
//! Each step checks first, so running it again changes nothing.

use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

const LLVM_DIR: &str = "/usr/lib/llvm-22";
const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
/// Tools the tests and the demo use, from Debian's packages.
const APT_TOOLS: &[(&str, &str)] = &[("ip", "iproute2"), ("nsenter", "util-linux")];
const BPF_LINKER_VERSION: &str = "0.13.0";

fn step(msg: &str) {
    eprintln!("[setup] {msg}");
}

fn ok(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn run(cmd: &str, args: &[&str], env: &[(&str, String)]) -> anyhow::Result<()> {
    let mut c = Command::new(cmd);
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let status = c.status().with_context(|| format!("running {cmd}"))?;
    if !status.success() {
        bail!("{cmd} {} failed ({status})", args.join(" "));
    }
    Ok(())
}

pub(crate) fn apt_install(packages: &[&str]) -> anyhow::Result<()> {
    if !ok("apt-get", &["--version"]) {
        bail!("missing packages {packages:?} and no apt-get to install them: install them by hand");
    }
    step("apt-get update");
    run("apt-get", &["update", "-qq"], &[])?;
    step(&format!("apt-get install {}", packages.join(" ")));
    let mut args = vec!["install", "-y", "-qq", "--no-install-recommends"];
    args.extend_from_slice(packages);
    run(
        "apt-get",
        &args,
        &[("DEBIAN_FRONTEND", "noninteractive".into())],
    )
}

pub fn setup() -> anyhow::Result<()> {
    // 1. The nightly toolchain with rust-src: BPF targets build core from source.
    let nightly = Command::new("rustup")
        .args(["toolchain", "list"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&nightly.stdout)
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        step("installing the nightly Rust toolchain (builds the BPF programs)");
        run(
            "rustup",
            &["toolchain", "install", "nightly", "--profile", "minimal"],
            &[],
        )?;
    }
    let comps = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&comps.stdout)
        .lines()
        .any(|l| l.starts_with("rust-src"))
    {
        step("adding rust-src to nightly");
        run(
            "rustup",
            &["component", "add", "rust-src", "--toolchain", "nightly"],
            &[],
        )?;
    }

    // 2. LLVM 22 development files, which bpf-linker links against.
    let llvm_config = format!("{LLVM_DIR}/bin/llvm-config");
    let missing_dev = !std::path::Path::new(&llvm_config).exists()
        || !ok("dpkg", &["-s", "libpolly-22-dev"])
        || !ok("dpkg", &["-s", "libzstd-dev"])
        || !ok("dpkg", &["-s", "zlib1g-dev"]);
    let missing_tools: Vec<&str> = APT_TOOLS
        .iter()
        .filter(|(bin, _)| !ok("which", &[bin]))
        .map(|(_, p)| *p)
        .collect();
    if missing_dev || !missing_tools.is_empty() {
        let mut pkgs: Vec<&str> = Vec::new();
        if missing_dev {
            pkgs.extend_from_slice(APT_PACKAGES);
        }
        pkgs.extend(missing_tools);
        apt_install(&pkgs)?;
    }

    // 3. bpf-linker, built against that LLVM.
    if !ok("bpf-linker", &["--version"]) {
        step(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        ));
        let path = format!(
            "{LLVM_DIR}/bin:{}",
            std::env::var("PATH").unwrap_or_default()
        );
        run(
            "cargo",
            &[
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
            ],
            &[("PATH", path), ("LLVM_PREFIX", LLVM_DIR.into())],
        )?;
    }
    step("toolchain ready: nightly + rust-src, LLVM 22, bpf-linker");
    Ok(())
}

/// Mounts bpffs at /sys/fs/bpf if nothing is mounted there (pinning needs it).
pub fn mount_bpffs() -> anyhow::Result<()> {
    let mounts =
        std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/bpf") && l.contains(" bpf "))
    {
        return Ok(());
    }
    step("mounting bpffs at /sys/fs/bpf");
    std::fs::create_dir_all("/sys/fs/bpf").ok();
    run("mount", &["-t", "bpf", "bpf", "/sys/fs/bpf"], &[])
}

/// Tools the tests use to check what they produce: without one, the tests that need it
/// record a skip. Each package is installed by its own command, so the error names the one
/// that failed and the others still get installed.
/// Beside the checkers: debootstrap and systemd-nspawn (a booted Debian), podman (the
/// image), promtool, and rsyslog (the collector the audit-sink tests read with).
pub fn test_tools() -> anyhow::Result<()> {
    let missing: Vec<&str> = [
        ("bpftool", "bpftool"),
        ("tcpdump", "tcpdump"),
        ("systemd-analyze", "systemd"),
        ("debootstrap", "debootstrap"),
        ("systemd-nspawn", "systemd-container"),
        ("podman", "podman"),
        ("promtool", "prometheus"),
        ("rsyslogd", "rsyslog"),
        ("python3", "python3"),
        ("pip3", "python3-pip"),
        ("setpriv", "util-linux"),
    ]
    .iter()
    .filter(|(bin, _)| !ok("which", &[bin]))
    .map(|(_, pkg)| *pkg)
    .collect();
    let mut failed: Vec<String> = Vec::new();
    if !missing.is_empty() {
        if !ok("apt-get", &["--version"]) {
            bail!(
                "test tools missing ({}) and no apt-get to install them: install them by hand",
                missing.join(", ")
            );
        }
        step("apt-get update");
        run("apt-get", &["update", "-qq"], &[])?;
        for pkg in missing {
            if let Err(e) = apt_install_one(pkg) {
                failed.push(format!("apt package {pkg}: {e:#}"));
            }
        }
    }
    for (module, pkg) in [
        ("yaml", "pyyaml"),
        ("kubernetes_validate", "kubernetes-validate"),
    ] {
        if ok("python3", &["-c", &format!("import {module}")]) {
            continue;
        }
        step(&format!(
            "pip install {pkg} (the Kubernetes manifests' schema check)"
        ));
        let installed = run(
            "python3",
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--break-system-packages",
                pkg,
            ],
            &[],
        );
        if let Err(e) = installed {
            failed.push(format!("pip package {pkg}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("could not install {}", failed.join("; "));
    }
    Ok(())
}

/// The daemon as one static executable, for the container image and the booted systemd
/// container: musl when its target can be added (rustup, once), else glibc linked
/// statically. Cargo keeps it under target/ and rebuilds only what changed.
pub fn build_static() -> anyhow::Result<std::path::PathBuf> {
    const MUSL: &str = "x86_64-unknown-linux-musl";
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    let have_musl = String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l == MUSL)
        || {
            step(&format!("rustup target add {MUSL} (the static daemon)"));
            ok("rustup", &["target", "add", MUSL])
        };
    let (target, env) = if have_musl {
        (MUSL, vec![])
    } else {
        step("no musl target: linking glibc statically instead");
        (
            "x86_64-unknown-linux-gnu",
            vec![("RUSTFLAGS", "-C target-feature=+crt-static".to_string())],
        )
    };
    crate::cargo(
        &["build", "--release", "--target", target, "-p", "enforcer"],
        &env,
    )?;
    Ok(crate::workspace_root().join(format!("target/{target}/release/enforcer")))
}

fn apt_install_one(pkg: &str) -> anyhow::Result<()> {
    step(&format!("apt-get install {pkg}"));
    run(
        "apt-get",
        &["install", "-y", "-qq", "--no-install-recommends", pkg],
        &[("DEBIAN_FRONTEND", "noninteractive".into())],
    )
}
