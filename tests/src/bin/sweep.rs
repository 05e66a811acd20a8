//! Removes what interrupted test runs left behind (see `testbed::sweep`); `cargo xtask
//! test` runs it before the tests.

fn main() {
    for line in testbed::sweep::sweep() {
        println!("[sweep] {line}");
    }
}
