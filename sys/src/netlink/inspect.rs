//! Reading an interface back: its name, MAC, MTU and state (RTM_GETLINK), its IPv4 addresses
//! (RTM_GETADDR dump) and the namespace's main-table IPv4 routes (RTM_GETROUTE dump). The
//! parsers are pure functions over the kernel's replies and refuse malformed attributes
//! instead of reading past them.

use std::io;
use std::net::Ipv4Addr;
use std::path::Path;

use super::msg::{self, align, Msg, Reply};
use super::Netlink;
use crate::tap::check_ifname;
use crate::{netns, Result};

pub const RTM_GETADDR: u16 = 22;
pub const RTM_GETROUTE: u16 = 26;
pub const RTA_TABLE: u16 = 15;

/// An interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: i32,
    pub name: String,
    /// The hardware address; None for devices without one (or not 6 bytes long).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// IFF_UP is set.
    pub up: bool,
    /// Its IPv4 addresses with their prefix lengths.
    pub addrs: Vec<(Ipv4Addr, u8)>,
    /// The main table's IPv4 routes of the whole namespace (routes such as the default route
    /// belong to the namespace, not to one interface: with several, the last one added may
    /// carry it).
    pub routes: Vec<RouteState>,
}

/// One IPv4 route of the main table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteState {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<i32>,
    pub scope: u8,
}

/// The attributes after a family header of `header` bytes: (type, payload) pairs, stopping at
/// the first one whose length is impossible.
pub fn attrs(payload: &[u8], header: usize) -> impl Iterator<Item = (u16, &[u8])> {
    let mut rest = payload.get(header..).unwrap_or_default();
    std::iter::from_fn(move || {
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let ty = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            rest = &[];
            return None;
        }
        let data = &rest[4..len];
        rest = &rest[align(len).min(rest.len())..];
        Some((ty, data))
    })
}

fn ipv4(data: &[u8]) -> Option<Ipv4Addr> {
    let b: [u8; 4] = data.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

fn u32_of(data: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(data.try_into().ok()?))
}

/// From an RTM_NEWLINK reply: the link without its addresses and routes.
pub fn link_info(r: &Reply<'_>) -> Option<LinkState> {
    if r.ty != msg::RTM_NEWLINK || r.payload.len() < 16 {
        return None;
    }
    let index = i32::from_ne_bytes(r.payload[4..8].try_into().ok()?);
    let flags = u32::from_ne_bytes(r.payload[8..12].try_into().ok()?);
    let mut link = LinkState {
        index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: flags & msg::IFF_UP != 0,
        addrs: vec![],
        routes: vec![],
    };
    for (ty, data) in attrs(r.payload, 16) {
        match ty {
            msg::IFLA_IFNAME => {
                let s = data.split(|&b| b == 0).next().unwrap_or(data);
                link.name = String::from_utf8_lossy(s).into_owned();
            }
            msg::IFLA_ADDRESS => link.mac = data.try_into().ok(),
            msg::IFLA_MTU => link.mtu = u32_of(data)?,
            _ => {}
        }
    }
    Some(link)
}

/// RTM_GETADDR dump of the IPv4 addresses in the namespace.
pub fn addr_dump(seq: u32) -> Vec<u8> {
    let mut h = [0u8; 8];
    h[0] = msg::AF_INET;
    Msg::new(RTM_GETADDR, msg::NLM_F_REQUEST | msg::NLM_F_DUMP, seq)
        .header(&h)
        .finish()
}

/// From an RTM_NEWADDR reply: (ifindex, address, prefix length) of an IPv4 address.
pub fn addr_info(r: &Reply<'_>) -> Option<(i32, Ipv4Addr, u8)> {
    if r.ty != msg::RTM_NEWADDR || r.payload.len() < 8 || r.payload[0] != msg::AF_INET {
        return None;
    }
    let prefix = r.payload[1];
    let index = u32::from_ne_bytes(r.payload[4..8].try_into().ok()?) as i32;
    let (mut local, mut address) = (None, None);
    for (ty, data) in attrs(r.payload, 8) {
        match ty {
            msg::IFA_LOCAL => local = ipv4(data),
            msg::IFA_ADDRESS => address = ipv4(data),
            _ => {}
        }
    }
    Some((index, local.or(address)?, prefix))
}

/// RTM_GETROUTE dump of the IPv4 routes in the namespace.
pub fn route_dump(seq: u32) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[0] = msg::AF_INET;
    Msg::new(RTM_GETROUTE, msg::NLM_F_REQUEST | msg::NLM_F_DUMP, seq)
        .header(&h)
        .finish()
}

/// From an RTM_NEWROUTE reply: an IPv4 unicast route of the main table; None for others.
pub fn route_info(r: &Reply<'_>) -> Option<RouteState> {
    if r.ty != msg::RTM_NEWROUTE || r.payload.len() < 12 || r.payload[0] != msg::AF_INET {
        return None;
    }
    let dst_len = r.payload[1];
    let mut table = u32::from(r.payload[4]);
    let scope = r.payload[6];
    if r.payload[7] != msg::RTN_UNICAST {
        return None;
    }
    let mut route = RouteState {
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len,
        gateway: None,
        oif: None,
        scope,
    };
    for (ty, data) in attrs(r.payload, 12) {
        match ty {
            msg::RTA_DST => route.dst = ipv4(data)?,
            msg::RTA_GATEWAY => route.gateway = Some(ipv4(data)?),
            msg::RTA_OIF => route.oif = Some(u32_of(data)? as i32),
            RTA_TABLE => table = u32_of(data)?,
            _ => {}
        }
    }
    (table == u32::from(msg::RT_TABLE_MAIN)).then_some(route)
}

impl Netlink {
    /// The link named `name` (without addresses and routes), or None if there is none.
    pub(crate) fn link(&mut self, name: &str) -> Result<Option<LinkState>> {
        check_ifname(name)?;
        let seq = self.next_seq();
        let what = format!("RTM_GETLINK {name}");
        self.send(&msg::link_get(seq, name), &what)?;
        let mut buf = vec![0u8; 32768];
        loop {
            let data = self.recv(&mut buf, &what)?;
            for r in msg::replies(data) {
                if r.seq != seq {
                    continue;
                }
                if let Some(l) = link_info(&r) {
                    return Ok(Some(l));
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

    /// Sends a dump request and hands each reply of it to `each`, until NLMSG_DONE.
    fn dump(
        &mut self,
        request: Vec<u8>,
        seq: u32,
        what: &str,
        mut each: impl FnMut(&Reply<'_>),
    ) -> Result<()> {
        self.send(&request, what)?;
        let mut buf = vec![0u8; 65536];
        loop {
            let data = self.recv(&mut buf, what)?;
            for r in msg::replies(data) {
                if r.seq != seq {
                    continue;
                }
                if r.ty == msg::NLMSG_DONE {
                    return Ok(());
                }
                if let Some((err, ext)) = msg::parse_error(&r) {
                    return Err(self.fail(what, io::Error::from_raw_os_error(-err), ext));
                }
                each(&r);
            }
        }
    }

    /// The link named `name` with its IPv4 addresses and the namespace's main-table routes, or
    /// None.
    pub(crate) fn inspect(&mut self, name: &str) -> Result<Option<LinkState>> {
        let Some(mut link) = self.link(name)? else {
            return Ok(None);
        };
        let seq = self.next_seq();
        self.dump(
            addr_dump(seq),
            seq,
            &format!("RTM_GETADDR dump for {name}"),
            |r| {
                if let Some((i, ip, prefix)) = addr_info(r) {
                    if i == link.index {
                        link.addrs.push((ip, prefix));
                    }
                }
            },
        )?;
        let seq = self.next_seq();
        self.dump(
            route_dump(seq),
            seq,
            &format!("RTM_GETROUTE dump for {name}"),
            |r| {
                if let Some(route) = route_info(r) {
                    link.routes.push(route);
                }
            },
        )?;
        Ok(Some(link))
    }
}

/// Link `name` in the namespace at `netns` as the kernel has it: name, MAC, MTU, IFF_UP, its
/// IPv4 addresses, and the namespace's main-table IPv4 routes. None if there is no such link.
pub fn inspect_link(netns: &Path, name: &str) -> Result<Option<LinkState>> {
    check_ifname(name)?;
    let ns = netns.to_path_buf();
    let n = name.to_string();
    netns::run_in_netns(netns, move || Netlink::open(Some(&ns))?.inspect(&n))
}

#[cfg(all(test, target_endian = "little"))]
mod tests {
    use super::*;
    use crate::netlink::msg::ifinfomsg;

    fn reply(ty: u16, payload: &[u8]) -> Reply<'_> {
        Reply {
            ty,
            flags: 0,
            seq: 1,
            payload,
        }
    }

    #[test]
    fn link_info_reads_name_mac_mtu_and_state() {
        let mut p = ifinfomsg(7, msg::IFF_UP, 0).to_vec();
        p.extend_from_slice(&[9, 0, 3, 0, b'e', b't', b'h', b'0', 0, 0, 0, 0]);
        p.extend_from_slice(&[10, 0, 1, 0, 0xee, 0xee, 10, 255, 1, 2, 0, 0]);
        p.extend_from_slice(&[8, 0, 4, 0, 0xaa, 0x05, 0, 0]);
        let l = link_info(&reply(msg::RTM_NEWLINK, &p)).unwrap();
        assert_eq!(
            (l.index, l.name.as_str(), l.mac, l.mtu, l.up),
            (7, "eth0", Some([0xee, 0xee, 10, 255, 1, 2]), 1450, true)
        );
        // A short MTU attribute makes the reply unreadable rather than wrong.
        let mut bad = ifinfomsg(7, 0, 0).to_vec();
        bad.extend_from_slice(&[6, 0, 4, 0, 1, 2, 0, 0]);
        assert_eq!(link_info(&reply(msg::RTM_NEWLINK, &bad)), None);
        for n in 0..p.len() {
            let _ = link_info(&reply(msg::RTM_NEWLINK, &p[..n]));
        }
    }

    #[test]
    fn addr_info_reads_ipv4_addresses() {
        let m = addr_dump(3);
        assert_eq!(&m[4..6], &RTM_GETADDR.to_ne_bytes());
        assert_eq!(m[16], msg::AF_INET);
        // An RTM_NEWADDR as the kernel sends it is what RTM_NEWADDR requests look like.
        let req = msg::addr_add(1, 5, Ipv4Addr::new(10, 255, 1, 2), 32);
        let r: Vec<_> = msg::replies(&req).collect();
        assert_eq!(
            addr_info(&r[0]),
            Some((5, Ipv4Addr::new(10, 255, 1, 2), 32))
        );
        let mut v6 = r[0].payload.to_vec();
        v6[0] = 10;
        assert_eq!(addr_info(&reply(msg::RTM_NEWADDR, &v6)), None);
        for n in 0..r[0].payload.len() {
            let _ = addr_info(&reply(msg::RTM_NEWADDR, &r[0].payload[..n]));
        }
    }

    #[test]
    fn route_info_reads_main_table_routes() {
        let gw = Ipv4Addr::new(169, 254, 0, 1);
        let req = msg::route_add(
            1,
            &msg::Route {
                dst: Ipv4Addr::UNSPECIFIED,
                dst_len: 0,
                gateway: Some(gw),
                oif: 5,
                scope: msg::RT_SCOPE_UNIVERSE,
                onlink: true,
            },
        );
        let r: Vec<_> = msg::replies(&req).collect();
        assert_eq!(
            route_info(&r[0]),
            Some(RouteState {
                dst: Ipv4Addr::UNSPECIFIED,
                dst_len: 0,
                gateway: Some(gw),
                oif: Some(5),
                scope: msg::RT_SCOPE_UNIVERSE,
            })
        );
        // Another table (RTA_TABLE overrides the header's) is left out.
        let mut local = r[0].payload.to_vec();
        local.extend_from_slice(&[8, 0, 15, 0, 255, 0, 0, 0]);
        assert_eq!(route_info(&reply(msg::RTM_NEWROUTE, &local)), None);
        for n in 0..r[0].payload.len() {
            let _ = route_info(&reply(msg::RTM_NEWROUTE, &r[0].payload[..n]));
        }
        assert_eq!(route_dump(2).len(), 16 + 12);
    }
}
