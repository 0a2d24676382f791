//! CNI 1.1 plugin entry point; the logic lives in the `tapestry` binary's `cni` module.
fn main() {
    std::process::exit(tapestry::cni::main());
}
