//! Persistent TAP devices: open, re-attach, offloads, multiqueue, delete.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use crate::error::in_ns;
use crate::{netlink, netns, Error, Result};

/// TUNSETOFFLOAD: the kernel may hand us frames that still need their checksum.
pub const TUN_F_CSUM: u32 = 0x01;
/// TUNSETOFFLOAD: TCP segmentation offload for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TUNSETOFFLOAD: TCP segmentation offload for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// TUNSETOFFLOAD: TSO with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// TUNSETOFFLOAD: UDP fragmentation offload (deprecated by the kernel).
pub const TUN_F_UFO: u32 = 0x10;
/// TUNSETOFFLOAD: UDP segmentation offload for IPv4 (Linux >= 6.2).
pub const TUN_F_USO4: u32 = 0x20;
/// TUNSETOFFLOAD: UDP segmentation offload for IPv6 (Linux >= 6.2).
pub const TUN_F_USO6: u32 = 0x40;

const IFNAMSIZ: usize = 16;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;

// _IOW('T', nr, int) = (1 << 30) | (4 << 16) | ('T' << 8) | nr; _IOR uses 2 << 30.
const TUNSETIFF: u64 = 0x4004_54ca;
const TUNSETPERSIST: u64 = 0x4004_54cb;
const TUNSETOFFLOAD: u64 = 0x4004_54d0;
const TUNSETVNETHDRSZ: u64 = 0x4004_54d8;
const TUNGETVNETHDRSZ: u64 = 0x8004_54d7;

/// How to open a TAP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TapOptions {
    /// IFF_VNET_HDR: every frame read or written starts with a virtio-net header
    /// (10 bytes unless [`Tap::set_vnet_hdr_size`] changes it). Needed for offloads.
    pub vnet_hdr: bool,
    /// IFF_MULTI_QUEUE: the device can have several fds (queues), see [`Tap::open_queue`].
    pub multi_queue: bool,
}

/// An open, persistent TAP device (one queue of it). Closing the fd leaves the device in place.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    netns: Option<PathBuf>,
    opts: TapOptions,
}

/// `struct ifreq` with the flags member of the union (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqFlags {
    name: [u8; IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Checks an interface name: 1 to 15 bytes, no '/', whitespace, ':' or NUL.
pub(crate) fn check_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() >= IFNAMSIZ
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == 0 || b.is_ascii_whitespace());
    if bad {
        return Err(Error::Invalid {
            what: "interface name",
            detail: format!("{name:?} must be 1-15 bytes without '/', ':', spaces or NUL"),
        });
    }
    Ok(())
}

impl Tap {
    /// Creates (or re-attaches to an existing persistent) TAP `name` in the calling thread's
    /// network namespace: /dev/net/tun, TUNSETIFF IFF_TAP|IFF_NO_PI (|IFF_VNET_HDR
    /// |IFF_MULTI_QUEUE), TUNSETPERSIST 1.
    pub fn open(name: &str, opts: TapOptions) -> Result<Tap> {
        Self::open_at(None, name, opts)
    }

    /// Same as [`Tap::open`], inside the network namespace at `netns`. The fd keeps working
    /// from any thread afterwards; opening again after the fd was dropped re-attaches to the
    /// same device, which keeps its addresses and routes.
    pub fn open_in_netns(netns: &Path, name: &str, opts: TapOptions) -> Result<Tap> {
        check_ifname(name)?;
        let ns = netns.to_path_buf();
        let n = name.to_string();
        netns::run_in_netns(netns, move || Self::open_at(Some(ns), &n, opts))
    }

    /// Opens one more queue of this multiqueue TAP (one per worker), in the same namespace.
    pub fn open_queue(&self) -> Result<Tap> {
        if !self.opts.multi_queue {
            return Err(Error::Invalid {
                what: "TAP options",
                detail: format!("{} was not opened with multi_queue", self.name),
            });
        }
        match &self.netns {
            Some(ns) => Self::open_in_netns(ns, &self.name, self.opts),
            None => Self::open(&self.name, self.opts),
        }
    }

    fn open_at(netns: Option<PathBuf>, name: &str, opts: TapOptions) -> Result<Tap> {
        check_ifname(name)?;
        let where_ = in_ns(netns.as_deref());
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| Error::io(format!("opening /dev/net/tun for {name}{where_}"), e))?;
        let fd: OwnedFd = file.into();
        let mut req = IfReqFlags {
            name: [0; IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        if opts.vnet_hdr {
            req.flags |= IFF_VNET_HDR;
        }
        if opts.multi_queue {
            req.flags |= IFF_MULTI_QUEUE;
        }
        // SAFETY: `fd` is an open /dev/net/tun fd; TUNSETIFF reads and writes a struct ifreq,
        // and `req` is a properly sized (40-byte) and initialised ifreq that outlives the call.
        let rc =
            unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReqFlags) };
        if rc < 0 {
            return Err(Error::last_os(format!("TUNSETIFF {name}{where_}")));
        }
        let tap = Tap {
            fd,
            name: name.to_string(),
            netns,
            opts,
        };
        tap.ioctl_int(TUNSETPERSIST, 1, "TUNSETPERSIST")?;
        Ok(tap)
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace the TAP was opened in (None: the caller's own at the time).
    pub fn netns(&self) -> Option<&Path> {
        self.netns.as_deref()
    }

    /// The options it was opened with.
    pub fn options(&self) -> TapOptions {
        self.opts
    }

    fn what(&self, op: &str) -> String {
        format!("{op} {}{}", self.name, in_ns(self.netns.as_deref()))
    }

    /// An ioctl whose argument is passed by value (TUNSETPERSIST, TUNSETOFFLOAD).
    fn ioctl_int(&self, req: u64, arg: libc::c_ulong, op: &str) -> Result<()> {
        // SAFETY: the fd is an attached TUN/TAP fd we own; these requests take an integer by
        // value and touch no user memory.
        let rc = unsafe { libc::ioctl(self.fd.as_raw_fd(), req as _, arg) };
        if rc < 0 {
            return Err(Error::last_os(self.what(op)));
        }
        Ok(())
    }

    /// Sets or clears O_NONBLOCK on the fd.
    pub fn set_nonblocking(&self, nonblocking: bool) -> Result<()> {
        set_fd_nonblocking(self.fd.as_raw_fd(), nonblocking)
            .map_err(|e| Error::io(self.what("O_NONBLOCK"), e))
    }

    /// Reads one frame (with its virtio-net header if `vnet_hdr`).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (with its virtio-net header if `vnet_hdr`).
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame given in two parts (a virtio-net header and the frame after it) with a
    /// single writev, so the caller need not copy them together.
    pub fn write2(&self, head: &[u8], body: &[u8]) -> io::Result<usize> {
        writev2(self.fd.as_raw_fd(), head, body)
    }

    /// TUNSETOFFLOAD with `flags` (TUN_F_*). Offloads need a TAP opened with `vnet_hdr`.
    pub fn set_offload(&self, flags: u32) -> Result<()> {
        if flags != 0 && !self.opts.vnet_hdr {
            return Err(Error::Invalid {
                what: "TAP offload",
                detail: format!("{} was not opened with vnet_hdr", self.name),
            });
        }
        self.ioctl_int(
            TUNSETOFFLOAD,
            flags as libc::c_ulong,
            &format!("TUNSETOFFLOAD {flags:#x}"),
        )
    }

    /// Tries the richest offload set first (CSUM, TSO4/6, ECN, USO4/6) and falls back step by
    /// step; returns the flags the kernel accepted (0 without `vnet_hdr` or when none work).
    pub fn probe_offload(&self) -> u32 {
        if !self.opts.vnet_hdr {
            return 0;
        }
        let tso = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        let candidates = [
            tso | TUN_F_USO4 | TUN_F_USO6,
            tso,
            TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6,
            TUN_F_CSUM,
        ];
        for flags in candidates {
            match self.set_offload(flags) {
                Ok(()) => return flags,
                Err(e) => tracing::debug!("{e}; trying fewer offloads"),
            }
        }
        let _ = self.set_offload(0);
        0
    }

    /// TUNSETVNETHDRSZ: the size of the virtio-net header on every frame (10 or 12).
    pub fn set_vnet_hdr_size(&self, size: i32) -> Result<()> {
        let mut v: libc::c_int = size;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which is valid.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNSETVNETHDRSZ as _,
                &mut v as *mut libc::c_int,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(
                self.what(&format!("TUNSETVNETHDRSZ {size}")),
            ));
        }
        Ok(())
    }

    /// TUNGETVNETHDRSZ: the current virtio-net header size.
    pub fn vnet_hdr_size(&self) -> Result<i32> {
        let mut v: libc::c_int = 0;
        // SAFETY: TUNGETVNETHDRSZ writes one c_int through the pointer, which is valid.
        let rc = unsafe {
            libc::ioctl(
                self.fd.as_raw_fd(),
                TUNGETVNETHDRSZ as _,
                &mut v as *mut libc::c_int,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(self.what("TUNGETVNETHDRSZ")));
        }
        Ok(v)
    }

    /// Sets the device's transmit queue length (in the TAP's namespace).
    pub fn set_txqueuelen(&self, len: u32) -> Result<()> {
        let name = self.name.clone();
        match &self.netns {
            Some(ns) => netns::run_in_netns(ns, move || netlink::set_txqueuelen(&name, len)),
            None => netlink::set_txqueuelen(&name, len),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Sets or clears O_NONBLOCK on `fd`.
pub(crate) fn set_fd_nonblocking(fd: RawFd, nonblocking: bool) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd the caller owns takes no pointer.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    // SAFETY: F_SETFL with an int flag set on an fd the caller owns takes no pointer.
    if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One writev of two parts (a virtio-net header and the frame after it) to `fd`.
pub(crate) fn writev2(fd: RawFd, head: &[u8], body: &[u8]) -> io::Result<usize> {
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        },
    ];
    // SAFETY: both iovecs point at live slices valid for reads of their lengths for the
    // duration of the call; writev only reads through them.
    let n = unsafe { libc::writev(fd, iov.as_ptr(), 2) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Removes a persistent TAP inside the namespace at `netns` (RTM_DELLINK; if the kernel refuses
/// that, attach and TUNSETPERSIST 0). A missing device or a missing namespace is `Ok`.
pub fn delete_in_netns(netns: &Path, name: &str) -> Result<()> {
    check_ifname(name)?;
    if !netns.exists() {
        return Ok(());
    }
    let n = name.to_string();
    let ns = netns.to_path_buf();
    match netns::run_in_netns(netns, move || delete_here(Some(&ns), &n)) {
        Err(e) if e.is_not_found() => Ok(()),
        r => r,
    }
}

/// Removes a persistent TAP in the calling thread's namespace; missing is `Ok`.
pub fn delete(name: &str) -> Result<()> {
    check_ifname(name)?;
    delete_here(None, name)
}

fn delete_here(netns: Option<&Path>, name: &str) -> Result<()> {
    match netlink::delete_link(name) {
        Ok(()) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
            // Attach with either queue mode, then drop persistence; closing removes it.
            for multi_queue in [false, true] {
                let opts = TapOptions {
                    vnet_hdr: false,
                    multi_queue,
                };
                if let Ok(tap) = Tap::open_at(netns.map(Path::to_path_buf), name, opts) {
                    return tap.ioctl_int(TUNSETPERSIST, 0, "TUNSETPERSIST 0");
                }
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifreq_has_kernel_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
        assert_eq!(std::mem::offset_of!(IfReqFlags, flags), 16);
    }

    #[test]
    fn ioctl_numbers() {
        let iow = |nr: u64| (1u64 << 30) | (4 << 16) | ((b'T' as u64) << 8) | nr;
        assert_eq!(TUNSETIFF, iow(202));
        assert_eq!(TUNSETPERSIST, iow(203));
        assert_eq!(TUNSETOFFLOAD, iow(208));
        assert_eq!(TUNSETVNETHDRSZ, iow(216));
        assert_eq!(
            TUNGETVNETHDRSZ,
            (2u64 << 30) | (4 << 16) | ((b'T' as u64) << 8) | 215
        );
    }

    #[test]
    fn names_are_checked() {
        for bad in ["", "a/b", "sixteen-bytes-xx", "a b", "a:1", "..", "nul\0"] {
            let e = check_ifname(bad).unwrap_err();
            assert!(e.to_string().contains("interface name"), "{e}");
        }
        for good in ["eth0", "tap-123456789ab", "c"] {
            check_ifname(good).unwrap();
        }
    }
}
