#![no_std]
// The programs live in src/main.rs (the `enforcer` binary target, an ELF object of BPF
// programs); this empty library lets the daemon's build script depend on the crate.
