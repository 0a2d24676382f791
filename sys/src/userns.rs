//! The unprivileged sandbox: a new user, network and mount namespace in which the calling
//! process is root (uid and gid 0 mapped to its own), so it may create network namespaces,
//! veth pairs and packet sockets without any capability on the host. `ip netns` works inside:
//! the namespace directory (/run/netns) is a private tmpfs.

use std::ffi::CString;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// The process's real uid and gid.
pub fn ids() -> (u32, u32) {
    // SAFETY: getuid and getgid take no arguments and cannot fail.
    unsafe { (libc::getuid(), libc::getgid()) }
}

/// The effective uid (0: root).
pub fn euid() -> u32 {
    // SAFETY: geteuid takes no arguments and cannot fail.
    unsafe { libc::geteuid() }
}

fn threads() -> Option<usize> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Moves the calling process into a new user + network + mount namespace and becomes root in
/// it. Must be called while the process has a single thread (the kernel refuses a new user
/// namespace to a multithreaded process): at the start of `main`.
///
/// Afterwards: loopback is up in the new network namespace, every mount is private, and the
/// network-namespace directory `ip netns` uses is an empty private tmpfs.
pub fn enter_sandbox() -> Result<()> {
    if let Some(n) = threads() {
        if n != 1 {
            return Err(Error::Invalid {
                what: "sandbox",
                detail: format!(
                    "a user namespace needs a single-threaded process, this one has {n} threads"
                ),
            });
        }
    }
    let (uid, gid) = ids();
    // SAFETY: unshare takes a flag set and no pointers; it changes only this process.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNET | libc::CLONE_NEWNS) };
    if rc != 0 {
        return Err(Error::last_os(
            "unshare(CLONE_NEWUSER|CLONE_NEWNET|CLONE_NEWNS) (are unprivileged user namespaces \
             enabled? see /proc/sys/user/max_user_namespaces and kernel.unprivileged_userns_clone)",
        ));
    }
    let write = |file: &str, what: String| {
        std::fs::write(file, &what).map_err(|e| Error::io(format!("writing {what:?} to {file}"), e))
    };
    // setgroups must be denied before an unprivileged process may write its gid_map.
    write("/proc/self/setgroups", "deny".into())?;
    write("/proc/self/uid_map", format!("0 {uid} 1\n"))?;
    write("/proc/self/gid_map", format!("0 {gid} 1\n"))?;
    mount(None, Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE)?;
    let run = std::fs::canonicalize("/var/run").unwrap_or_else(|_| PathBuf::from("/run"));
    let netns_dir = run.join("netns");
    if netns_dir.is_dir() {
        mount(Some("tmpfs"), &netns_dir, Some("tmpfs"), 0)?;
    } else {
        // We may not create a directory in the host's /run: a fresh tmpfs over it instead.
        mount(Some("tmpfs"), &run, Some("tmpfs"), 0)?;
        std::fs::create_dir(&netns_dir)
            .map_err(|e| Error::io(format!("creating {}", netns_dir.display()), e))?;
    }
    crate::netlink::set_link_up("lo")
}

fn mount(
    source: Option<&str>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
) -> Result<()> {
    let cstr = |s: &str| {
        CString::new(s).map_err(|_| Error::Invalid {
            what: "mount argument",
            detail: format!("{s:?} contains NUL"),
        })
    };
    let src = source.map(cstr).transpose()?;
    let tgt = cstr(&target.to_string_lossy())?;
    let fs = fstype.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: every pointer is either null (allowed for source, fstype and data) or a valid
    // NUL-terminated string owned by a CString that outlives the call.
    let rc = unsafe { libc::mount(ptr(&src), tgt.as_ptr(), ptr(&fs), flags, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::last_os(format!(
            "mount {} on {} ({})",
            source.unwrap_or("none"),
            target.display(),
            fstype.unwrap_or("flags only")
        )));
    }
    Ok(())
}
