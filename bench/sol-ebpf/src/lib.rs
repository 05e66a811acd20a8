#![no_std]
// The program lives in src/main.rs (the `sol` binary target, an ELF object of one XDP
// program); this empty library lets the bench's build script depend on the crate.
