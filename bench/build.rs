use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the speed-of-light contender (bench/sol-ebpf) the way enforcer/build.rs builds
/// the daemon's programs, so both are compiled by the same toolchain and linker.
fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let sol = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "sol-ebpf")
        .ok_or_else(|| anyhow!("sol-ebpf not found in the workspace"))?;
    let root = sol
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("sol-ebpf has no directory"))?;
    aya_build::build_ebpf(
        [Package {
            name: "sol-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
