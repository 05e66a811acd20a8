/// Compiled as enforcer's programs are (enforcer-ebpf/build.rs): misaligned loads allowed,
/// so the floor is measured with the same code generation.
fn main() {
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
