use which::which;

fn main() {
    // Rebuilds the programs when bpf-linker changes (a new LLVM can change the object).
    let bpf_linker = which("bpf-linker").expect("bpf-linker not found: run `cargo xtask setup`");
    println!("cargo:rerun-if-changed={}", bpf_linker.display());
    // Misaligned loads and stores allowed (a BPF feature of LLVM 22; an older LLVM ignores
    // it with a warning). Without it every header read and every 16-byte address copy is
    // done a byte at a time: a refused IPv6 packet cost 67 ns instead of 51.
    // The kernel accepts misaligned packet and map-value access on hosts with efficient
    // unaligned access (x86-64, arm64), but never on the stack. So a stack buffer read as
    // words is 8-aligned (`packet::Aligned`) and a key whose fields neighbour at 4 mod 8 is
    // built from aligned words (`flow_words`, `in_local_addrs`): a verifier error
    // "misaligned stack access" names the next place that needs it.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
}
