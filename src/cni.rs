//! The `tapestry-cni` plugin (not yet wired).
pub fn main() -> i32 {
    eprintln!("tapestry-cni is not implemented yet");
    1
}
