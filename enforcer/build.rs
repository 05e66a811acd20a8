use anyhow::{anyhow, Context as _};
use aya_build::{Package, Toolchain};

/// Builds the BPF programs (enforcer-ebpf) for the daemon to embed.
fn main() -> anyhow::Result<()> {
    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = meta
        .packages
        .iter()
        .find(|p| p.name.as_str() == "enforcer-ebpf")
        .ok_or_else(|| anyhow!("enforcer-ebpf not found in the workspace"))?;
    let root = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("enforcer-ebpf has no directory"))?;
    // The programs also change when the shared types do.
    let common = root.parent().map(|w| w.join("enforcer-common").join("src"));
    if let Some(common) = common {
        println!("cargo:rerun-if-changed={common}");
    }
    aya_build::build_ebpf(
        [Package {
            name: "enforcer-ebpf",
            root_dir: root.as_str(),
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
