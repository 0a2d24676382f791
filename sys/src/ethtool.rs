//! Offload settings of a network device through the legacy ethtool ioctls (SIOCETHTOOL with
//! `struct ethtool_value`), as `ethtool -K DEV tx off tso off gso off` does.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::tap::check_ifname;
use crate::{netns, Error, Result};

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` pointer member (40 bytes on 64-bit Linux).
#[repr(C)]
struct IfReqData {
    name: [u8; 16],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

fn set(fd: &OwnedFd, name: &str, cmd: u32, on: bool, what: &str) -> Result<()> {
    let mut v = EthtoolValue {
        cmd,
        data: u32::from(on),
    };
    let mut req = IfReqData {
        name: [0; 16],
        data: &mut v,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: SIOCETHTOOL reads a struct ifreq whose ifr_data points at an ethtool_value; both
    // live on this stack frame for the duration of the call and are properly sized.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCETHTOOL as _, &mut req as *mut IfReqData) };
    if rc < 0 {
        return Err(Error::last_os(format!("ethtool {what} off on {name}")));
    }
    Ok(())
}

/// Turns off transmit checksum offload, scatter-gather, TSO and GSO on `name` in the namespace
/// at `netns`: the device then hands over only whole frames with complete checksums.
pub fn disable_offloads_in_netns(netns_path: &Path, name: &str) -> Result<()> {
    check_ifname(name)?;
    let n = name.to_string();
    netns::run_in_netns(netns_path, move || {
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(Error::last_os("socket for ethtool"));
        }
        // SAFETY: `raw` is a fresh fd returned by socket(2) that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        for (cmd, what) in [
            (ETHTOOL_STSO, "tso"),
            (ETHTOOL_SGSO, "gso"),
            (ETHTOOL_SSG, "sg"),
            (ETHTOOL_STXCSUM, "tx-checksumming"),
        ] {
            set(&fd, &n, cmd, false, what)?;
        }
        Ok(())
    })
}
