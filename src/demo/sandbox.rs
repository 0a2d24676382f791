//! The unprivileged sandbox: `tapestry demo` without root, and `tapestry sandbox -- CMD`.
//!
//! The process becomes root of a new user + network + mount namespace (its own uid mapped to
//! 0; no capability on the host), so it may make network namespaces, bridges and veth pairs,
//! and run cells in them. /dev/net/tun stays closed to it where the host's permissions say so
//! (mode 0600 on many hosts): cells then choose `--port-kind packet` by themselves.

use std::os::unix::process::CommandExt;
use std::process::Command;

use anyhow::{bail, Context, Result};

#[derive(clap::Args, Debug)]
pub struct SandboxArgs {
    /// The command and its arguments (after `--`).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    command: Vec<String>,
}

/// Whether this process may build namespaces on the real host (root).
pub fn privileged() -> bool {
    tapestry_sys::userns::euid() == 0
}

/// Enters the sandbox (call before any thread is started).
pub fn enter(who: &str) -> Result<()> {
    let (uid, _) = tapestry_sys::userns::ids();
    tapestry_sys::userns::enter_sandbox().with_context(|| {
        format!("{who}: entering an unprivileged user + network + mount namespace (uid {uid})")
    })?;
    if !tapestry_sys::packet::tun_available() {
        eprintln!(
            "{who}: in a user + network + mount namespace as uid {uid}; /dev/net/tun is closed, \
             so containers get veth pairs read through AF_PACKET"
        );
    } else {
        eprintln!("{who}: in a user + network + mount namespace as uid {uid}");
    }
    Ok(())
}

/// `tapestry sandbox -- CMD ARGS`: replaces this process with CMD inside the sandbox.
pub fn run(args: SandboxArgs) -> Result<()> {
    let Some((program, rest)) = args.command.split_first() else {
        bail!("tapestry sandbox needs a command: tapestry sandbox -- CMD [ARGS]");
    };
    let err = Command::new(program).args(rest).exec();
    Err(err).with_context(|| format!("running {program} in the sandbox"))
}
