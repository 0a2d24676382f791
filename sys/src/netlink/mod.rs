//! rtnetlink over a raw `NETLINK_ROUTE` socket: configure a container's interface (MAC, MTU,
//! txqueuelen, up, address, routes, neighbour), look links up and read them back (name, MAC,
//! MTU, addresses, routes; [`inspect_link`]), delete them.

mod inspect;
pub(crate) mod msg;

pub use inspect::{inspect_link, LinkState, RouteState};

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::error::in_ns;
use crate::tap::check_ifname;
use crate::{netns, Error, Result};
use msg::{LinkChange, Route};

/// The container side of a TAP, as the cell configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IfaceConfig {
    /// Interface name inside the namespace (`eth0`).
    pub name: String,
    /// Its MAC (`ee:ee:<ip bytes>`).
    pub mac: [u8; 6],
    /// Its MTU (underlay MTU - 50).
    pub mtu: u32,
    /// The container's address; added as ip/32.
    pub ip: Ipv4Addr,
    /// The gateway (169.254.0.1): a /32 link route to it and the default route via it.
    pub gateway: Ipv4Addr,
    /// If set, a permanent neighbour entry gateway -> this MAC (no ARP needed).
    pub gateway_mac: Option<[u8; 6]>,
    /// If set, the device's transmit queue length.
    pub txqueuelen: Option<u32>,
    /// Make `noqueue` the root qdisc before the device comes up (or replace whatever root qdisc a
    /// device that is already up has). A multiqueue TAP has 256 transmit queues, and the default
    /// `mq` root gives each a `pfifo_fast` child that preallocates three rings of txqueuelen
    /// entries: about 100 MB of kernel memory per TAP at txqueuelen 10,000. A TAP never asks its
    /// qdisc to hold a packet (its own per-queue ring is the queue), so `noqueue` loses nothing.
    pub noqueue: bool,
}

/// A NETLINK_ROUTE socket bound to the calling thread's namespace at the time it was opened.
pub(crate) struct Netlink {
    fd: OwnedFd,
    seq: u32,
    /// " in PATH" or "", for error messages.
    where_: String,
}

impl Netlink {
    pub(crate) fn open(netns: Option<&Path>) -> Result<Netlink> {
        let where_ = in_ns(netns);
        // SAFETY: plain socket(2) call with constant arguments; no pointers.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if raw < 0 {
            return Err(Error::last_os(format!("socket NETLINK_ROUTE{where_}")));
        }
        // SAFETY: `raw` is a fresh fd returned by socket(2) that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Extended acks (the kernel's reason in words) and capped acks (no echo of our request).
        for opt in [11 /* NETLINK_EXT_ACK */, 10 /* NETLINK_CAP_ACK */] {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from a valid pointer with the matching length.
            // Failure is harmless (older kernels), so the result is ignored.
            let _ = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    270, /* SOL_NETLINK */
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (pid 0: kernel assigns).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `sa` is a valid sockaddr_nl and the length matches its size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sa as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(Error::last_os(format!("bind NETLINK_ROUTE{where_}")));
        }
        Ok(Netlink { fd, seq: 1, where_ })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    fn send(&self, m: &[u8], what: &str) -> Result<()> {
        // SAFETY: `m` is valid for reads of m.len() bytes; the socket is connected to the kernel
        // by default (destination pid 0), so no address is needed.
        let n = unsafe { libc::send(self.fd.as_raw_fd(), m.as_ptr().cast(), m.len(), 0) };
        if n < 0 {
            return Err(self.fail(what, io::Error::last_os_error(), None));
        }
        Ok(())
    }

    fn recv<'b>(&self, buf: &'b mut [u8], what: &str) -> Result<&'b [u8]> {
        loop {
            // SAFETY: `buf` is valid for writes of buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(self.fail(what, e, None));
            }
            return Ok(&buf[..n as usize]);
        }
    }

    fn fail(&self, what: &str, cause: io::Error, ext: Option<String>) -> Error {
        Error::Netlink {
            request: format!("{what}{}", self.where_),
            cause,
            ext,
        }
    }

    /// Sends a request with NLM_F_ACK and waits for its ack; a negative errno becomes an error
    /// naming `what`.
    pub(crate) fn request(&mut self, build: impl FnOnce(u32) -> Vec<u8>, what: &str) -> Result<()> {
        let seq = self.next_seq();
        self.send(&build(seq), what)?;
        let mut buf = [0u8; 8192];
        loop {
            let data = self.recv(&mut buf, what)?;
            for r in msg::replies(data) {
                if r.seq != seq {
                    continue;
                }
                if let Some((err, ext)) = msg::parse_error(&r) {
                    if err == 0 {
                        return Ok(());
                    }
                    return Err(self.fail(what, io::Error::from_raw_os_error(-err), ext));
                }
            }
        }
    }

    /// The ifindex of `name`, or None if there is no such link.
    pub(crate) fn ifindex(&mut self, name: &str) -> Result<Option<i32>> {
        check_ifname(name)?;
        let seq = self.next_seq();
        let what = format!("RTM_GETLINK {name}");
        self.send(&msg::link_get(seq, name), &what)?;
        let mut buf = [0u8; 16384];
        loop {
            let data = self.recv(&mut buf, &what)?;
            for r in msg::replies(data) {
                if r.seq != seq {
                    continue;
                }
                if let Some(i) = msg::link_index(&r) {
                    return Ok(Some(i));
                }
                if let Some((err, ext)) = msg::parse_error(&r) {
                    if err == -libc::ENODEV {
                        return Ok(None);
                    }
                    return Err(self.fail(&what, io::Error::from_raw_os_error(-err), ext));
                }
            }
        }
    }

    fn index_of(&mut self, name: &str) -> Result<i32> {
        self.ifindex(name)?.ok_or_else(|| {
            self.fail(
                &format!("RTM_GETLINK {name}"),
                io::Error::from_raw_os_error(libc::ENODEV),
                None,
            )
        })
    }

    pub(crate) fn set_link(&mut self, name: &str, c: &LinkChange) -> Result<()> {
        let index = self.index_of(name)?;
        let mut what = format!("RTM_NEWLINK {name}");
        if let Some(m) = c.mac {
            what += &format!(" address {}", fmt_mac(&m));
        }
        if let Some(mtu) = c.mtu {
            what += &format!(" mtu {mtu}");
        }
        if let Some(q) = c.txqlen {
            what += &format!(" txqueuelen {q}");
        }
        match c.up {
            Some(true) => what += " up",
            Some(false) => what += " down",
            None => {}
        }
        self.request(|seq| msg::link_set(seq, index, c), &what)
    }

    /// `tc qdisc replace dev NAME root KIND`.
    pub(crate) fn set_root_qdisc(&mut self, name: &str, kind: &str) -> Result<()> {
        let index = self.index_of(name)?;
        self.request(
            |seq| msg::qdisc_replace_root(seq, index, kind),
            &format!("RTM_NEWQDISC dev {name} root {kind}"),
        )
    }

    /// The kind of the root qdisc of `name` (`noqueue`, `mq`, `pfifo_fast`...), None if the
    /// device has none listed.
    pub(crate) fn root_qdisc(&mut self, name: &str) -> Result<Option<String>> {
        let index = self.index_of(name)?;
        let seq = self.next_seq();
        let what = format!("RTM_GETQDISC dump for {name}");
        self.send(&msg::qdisc_dump(seq), &what)?;
        let mut found = None;
        let mut buf = vec![0u8; 65536];
        loop {
            let data = self.recv(&mut buf, &what)?;
            for r in msg::replies(data) {
                if r.seq != seq {
                    continue;
                }
                if r.ty == msg::NLMSG_DONE {
                    return Ok(found);
                }
                if let Some((err, ext)) = msg::parse_error(&r) {
                    return Err(self.fail(&what, io::Error::from_raw_os_error(-err), ext));
                }
                if let Some((i, parent, kind)) = msg::qdisc_info(&r) {
                    if i == index && parent == msg::TC_H_ROOT {
                        found = Some(kind);
                    }
                }
            }
        }
    }

    pub(crate) fn delete_link(&mut self, name: &str) -> Result<()> {
        check_ifname(name)?;
        self.request(
            |seq| msg::link_del(seq, name),
            &format!("RTM_DELLINK {name}"),
        )
    }

    fn configure(&mut self, cfg: &IfaceConfig) -> Result<()> {
        check_ifname(&cfg.name)?;
        self.set_link(
            "lo",
            &LinkChange {
                up: Some(true),
                ..Default::default()
            },
        )?;
        let name = cfg.name.as_str();
        self.set_link(
            name,
            &LinkChange {
                mac: Some(cfg.mac),
                mtu: Some(cfg.mtu),
                txqlen: cfg.txqueuelen,
                up: if cfg.noqueue { None } else { Some(true) },
            },
        )?;
        if cfg.noqueue {
            // Before IFF_UP, so the kernel never builds the default (mq + pfifo_fast) qdiscs.
            self.set_root_qdisc(name, "noqueue")?;
            self.set_link(
                name,
                &LinkChange {
                    up: Some(true),
                    ..Default::default()
                },
            )?;
        }
        let index = self.index_of(name)?;
        self.request(
            |seq| msg::addr_add(seq, index, cfg.ip, 32),
            &format!("RTM_NEWADDR {}/32 dev {name}", cfg.ip),
        )?;
        let gw = cfg.gateway;
        self.request(
            |seq| {
                msg::route_add(
                    seq,
                    &Route {
                        dst: gw,
                        dst_len: 32,
                        gateway: None,
                        oif: index,
                        scope: msg::RT_SCOPE_LINK,
                        onlink: false,
                    },
                )
            },
            &format!("RTM_NEWROUTE {gw}/32 dev {name} scope link"),
        )?;
        self.request(
            |seq| {
                msg::route_add(
                    seq,
                    &Route {
                        dst: Ipv4Addr::UNSPECIFIED,
                        dst_len: 0,
                        gateway: Some(gw),
                        oif: index,
                        scope: msg::RT_SCOPE_UNIVERSE,
                        onlink: true,
                    },
                )
            },
            &format!("RTM_NEWROUTE default via {gw} dev {name} onlink"),
        )?;
        if let Some(mac) = cfg.gateway_mac {
            self.request(
                |seq| msg::neigh_add(seq, index, gw, mac),
                &format!(
                    "RTM_NEWNEIGH {gw} lladdr {} dev {name} permanent",
                    fmt_mac(&mac)
                ),
            )?;
        }
        Ok(())
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Inside the namespace at `netns`: brings `lo` up; on `cfg.name` sets MAC, MTU, txqueuelen,
/// the `noqueue` root qdisc if asked, and IFF_UP; adds ip/32; a route gateway/32 dev name scope link; the default route via the gateway
/// (onlink); and, if `gateway_mac` is set, a permanent neighbour gateway -> gateway_mac.
/// Idempotent (CREATE|REPLACE): re-running after a cell restart succeeds.
pub fn configure_container_iface(netns: &Path, cfg: &IfaceConfig) -> Result<()> {
    check_ifname(&cfg.name)?;
    let ns = netns.to_path_buf();
    let cfg = cfg.clone();
    netns::run_in_netns(netns, move || Netlink::open(Some(&ns))?.configure(&cfg))
}

/// Whether link `name` exists in the namespace at `netns`. A missing namespace is `Ok(false)`.
pub fn link_exists(netns: &Path, name: &str) -> Result<bool> {
    check_ifname(name)?;
    if !netns.exists() {
        return Ok(false);
    }
    let ns = netns.to_path_buf();
    let n = name.to_string();
    match netns::run_in_netns(netns, move || Netlink::open(Some(&ns))?.ifindex(&n)) {
        Ok(i) => Ok(i.is_some()),
        Err(e @ Error::Io { .. }) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The kind of the root qdisc of link `name` in the namespace at `netns` (`noqueue`, `mq`, ...).
pub fn root_qdisc(netns: &Path, name: &str) -> Result<Option<String>> {
    check_ifname(name)?;
    let ns = netns.to_path_buf();
    let n = name.to_string();
    netns::run_in_netns(netns, move || Netlink::open(Some(&ns))?.root_qdisc(&n))
}

/// The ifindex of `name` in the calling thread's namespace, or None.
pub fn ifindex(name: &str) -> Result<Option<i32>> {
    Netlink::open(None)?.ifindex(name)
}

/// Sets IFF_UP on `name` in the calling thread's namespace.
pub fn set_link_up(name: &str) -> Result<()> {
    Netlink::open(None)?.set_link(
        name,
        &LinkChange {
            up: Some(true),
            ..Default::default()
        },
    )
}

/// Sets the MTU of `name` in the calling thread's namespace.
pub fn set_mtu(name: &str, mtu: u32) -> Result<()> {
    Netlink::open(None)?.set_link(
        name,
        &LinkChange {
            mtu: Some(mtu),
            ..Default::default()
        },
    )
}

/// Sets the transmit queue length of `name` in the calling thread's namespace.
pub fn set_txqueuelen(name: &str, len: u32) -> Result<()> {
    Netlink::open(None)?.set_link(
        name,
        &LinkChange {
            txqlen: Some(len),
            ..Default::default()
        },
    )
}

/// Deletes link `name` (RTM_DELLINK) in the calling thread's namespace. Missing is an error
/// whose [`Error::is_not_found`] is true.
pub fn delete_link(name: &str) -> Result<()> {
    Netlink::open(None)?.delete_link(name)
}
