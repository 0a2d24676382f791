//! Network namespaces: run a closure on a thread that has entered one.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use crate::{Error, Result};

/// Runs `f` on a fresh thread that has entered the network namespace at `path`
/// (`setns(CLONE_NEWNET)`) and returns its result.
///
/// Sockets and TAP fds opened by `f` stay bound to that namespace and keep working from any
/// thread afterwards. The thread exits when `f` returns, so no thread of the caller ever
/// changes namespace. A missing `path` gives an error whose [`Error::is_not_found`] is true.
/// A panic in `f` is resumed on the calling thread.
pub fn run_in_netns<T: Send + 'static>(
    path: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let ns =
        File::open(path).map_err(|e| Error::io(format!("opening netns {}", path.display()), e))?;
    let shown = path.display().to_string();
    let handle = std::thread::Builder::new()
        .name("tapestry-netns".into())
        .spawn(move || -> Result<T> {
            enter(&ns, &shown)?;
            drop(ns);
            f()
        })
        .map_err(|e| Error::io(format!("spawning a thread for netns {}", path.display()), e))?;
    match handle.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Moves the calling thread into the network namespace behind `ns`.
fn enter(ns: &File, shown: &str) -> Result<()> {
    // SAFETY: setns takes a valid open fd (owned by `ns`, alive for the call) and a flag; it
    // changes only the calling thread's namespace, which is a thread we own.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::last_os(format!("setns CLONE_NEWNET {shown}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_not_found() {
        let err =
            run_in_netns(Path::new("/var/run/netns/tpsys-does-not-exist"), || Ok(())).unwrap_err();
        assert!(err.is_not_found(), "{err}");
        assert!(err.to_string().contains("tpsys-does-not-exist"), "{err}");
    }

    #[test]
    fn own_namespace_runs_closure() {
        // Entering our own namespace needs CAP_SYS_ADMIN; without it, the error names setns.
        match run_in_netns(Path::new("/proc/self/ns/net"), || Ok(41 + 1)) {
            Ok(v) => assert_eq!(v, 42),
            Err(e) => assert!(e.to_string().contains("setns"), "{e}"),
        }
    }
}
