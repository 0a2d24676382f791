//! rtnetlink message encoding by hand: `nlmsghdr`, family headers and attributes, each padded
//! to 4 bytes (NLMSG_ALIGN / RTA_ALIGN). Pure functions, unit-tested against fixed bytes.

use std::net::Ipv4Addr;

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;

pub const NLM_F_REQUEST: u16 = 0x01;
pub const NLM_F_ACK: u16 = 0x04;
pub const NLM_F_REPLACE: u16 = 0x100;
pub const NLM_F_CREATE: u16 = 0x400;
/// In an ack: the original request's payload was left out.
pub const NLM_F_CAPPED: u16 = 0x100;
/// In an ack: extended-ack attributes follow.
pub const NLM_F_ACK_TLVS: u16 = 0x200;
pub const NLMSGERR_ATTR_MSG: u16 = 1;

pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
pub const RTM_GETLINK: u16 = 18;
pub const RTM_NEWADDR: u16 = 20;
pub const RTM_NEWROUTE: u16 = 24;
pub const RTM_NEWNEIGH: u16 = 28;
pub const RTM_NEWQDISC: u16 = 36;
pub const RTM_GETQDISC: u16 = 38;
/// NLM_F_DUMP (ROOT|MATCH): every object of the kind, answered by several messages and NLMSG_DONE.
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLMSG_DONE: u16 = 3;
/// `TCA_KIND`: the qdisc's kind as a NUL-terminated string.
pub const TCA_KIND: u16 = 1;
/// `TC_H_ROOT`: the parent handle that names a device's root qdisc.
pub const TC_H_ROOT: u32 = 0xffff_ffff;

pub const IFLA_ADDRESS: u16 = 1;
pub const IFLA_IFNAME: u16 = 3;
pub const IFLA_MTU: u16 = 4;
pub const IFLA_TXQLEN: u16 = 13;
pub const IFLA_LINKINFO: u16 = 18;
pub const IFLA_NET_NS_FD: u16 = 28;
pub const IFLA_INFO_KIND: u16 = 1;
pub const IFLA_INFO_DATA: u16 = 2;
pub const VETH_INFO_PEER: u16 = 1;
/// NLA_F_NESTED: the attribute holds attributes.
pub const NLA_F_NESTED: u16 = 0x8000;
pub const NLM_F_EXCL: u16 = 0x200;
pub const IFA_ADDRESS: u16 = 1;
pub const IFA_LOCAL: u16 = 2;
pub const RTA_DST: u16 = 1;
pub const RTA_OIF: u16 = 4;
pub const RTA_GATEWAY: u16 = 5;
pub const NDA_DST: u16 = 1;
pub const NDA_LLADDR: u16 = 2;

pub const AF_UNSPEC: u8 = 0;
pub const AF_INET: u8 = 2;
pub const IFF_UP: u32 = 0x1;
pub const IFA_F_PERMANENT: u8 = 0x80;
pub const RT_TABLE_MAIN: u8 = 254;
pub const RTPROT_BOOT: u8 = 3;
pub const RT_SCOPE_UNIVERSE: u8 = 0;
pub const RT_SCOPE_LINK: u8 = 253;
pub const RTN_UNICAST: u8 = 1;
pub const RTNH_F_ONLINK: u32 = 0x4;
pub const NUD_PERMANENT: u16 = 0x80;

/// Rounds up to a multiple of 4 (NLMSG_ALIGN and RTA_ALIGN are the same).
pub const fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Builds one netlink message: header, family header, attributes; `finish` fills in the length.
pub struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub fn new(ty: u16, flags: u16, seq: u32) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set by finish
        buf.extend_from_slice(&ty.to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
        Msg { buf }
    }

    fn pad(&mut self) {
        self.buf.resize(align(self.buf.len()), 0);
    }

    /// Appends the family header (ifinfomsg, ifaddrmsg, rtmsg, ndmsg), padded.
    pub fn header(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    /// Appends an attribute: rta_len (4 + payload, unpadded), rta_type, payload, padding.
    pub fn attr(mut self, ty: u16, data: &[u8]) -> Msg {
        let len = u16::try_from(4 + data.len()).expect("netlink attribute over 64 KiB");
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
        self
    }

    pub fn attr_u32(self, ty: u16, v: u32) -> Msg {
        self.attr(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string attribute (IFLA_IFNAME).
    pub fn attr_str(self, ty: u16, s: &str) -> Msg {
        let mut v = Vec::with_capacity(s.len() + 1);
        v.extend_from_slice(s.as_bytes());
        v.push(0);
        self.attr(ty, &v)
    }

    pub fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

/// `struct ifinfomsg` (16 bytes).
pub fn ifinfomsg(index: i32, flags: u32, change: u32) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = AF_UNSPEC;
    // b[2..4] ifi_type = 0
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&flags.to_ne_bytes());
    b[12..16].copy_from_slice(&change.to_ne_bytes());
    b
}

/// What to change on a link with [`link_set`].
#[derive(Debug, Default, Clone, Copy)]
pub struct LinkChange {
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u32>,
    pub txqlen: Option<u32>,
    pub up: Option<bool>,
}

/// RTM_NEWLINK on an existing index (no CREATE): set MAC, MTU, txqueuelen, IFF_UP.
pub fn link_set(seq: u32, index: i32, c: &LinkChange) -> Vec<u8> {
    let (flags, change) = match c.up {
        Some(true) => (IFF_UP, IFF_UP),
        Some(false) => (0, IFF_UP),
        None => (0, 0),
    };
    let mut m = Msg::new(RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&ifinfomsg(index, flags, change));
    if let Some(mac) = c.mac {
        m = m.attr(IFLA_ADDRESS, &mac);
    }
    if let Some(mtu) = c.mtu {
        m = m.attr_u32(IFLA_MTU, mtu);
    }
    if let Some(q) = c.txqlen {
        m = m.attr_u32(IFLA_TXQLEN, q);
    }
    m.finish()
}

/// `struct tcmsg` (20 bytes): family, ifindex, handle, parent, info.
pub fn tcmsg(index: i32, handle: u32, parent: u32) -> [u8; 20] {
    let mut b = [0u8; 20];
    b[0] = AF_UNSPEC;
    b[4..8].copy_from_slice(&index.to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b
}

/// RTM_NEWQDISC CREATE|REPLACE: the root qdisc of `index` becomes `kind` (`tc qdisc replace dev
/// DEV root KIND`). The kernel picks the handle.
pub fn qdisc_replace_root(seq: u32, index: i32, kind: &str) -> Vec<u8> {
    Msg::new(
        RTM_NEWQDISC,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .header(&tcmsg(index, 0, TC_H_ROOT))
    .attr_str(TCA_KIND, kind)
    .finish()
}

/// RTM_GETQDISC dump of every qdisc in the namespace (`tc qdisc show`).
pub fn qdisc_dump(seq: u32) -> Vec<u8> {
    Msg::new(RTM_GETQDISC, NLM_F_REQUEST | NLM_F_DUMP, seq)
        .header(&tcmsg(0, 0, 0))
        .finish()
}

/// From an RTM_NEWQDISC reply: (ifindex, parent, kind).
pub fn qdisc_info(r: &Reply<'_>) -> Option<(i32, u32, String)> {
    if r.ty != RTM_NEWQDISC || r.payload.len() < 20 {
        return None;
    }
    let index = i32::from_ne_bytes(r.payload[4..8].try_into().ok()?);
    let parent = u32::from_ne_bytes(r.payload[12..16].try_into().ok()?);
    let mut attrs = &r.payload[20..];
    while attrs.len() >= 4 {
        let len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
        let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
        if len < 4 || len > attrs.len() {
            return None;
        }
        if ty == TCA_KIND {
            let v = &attrs[4..len];
            let v = v.split(|&b| b == 0).next().unwrap_or(v);
            return Some((index, parent, String::from_utf8_lossy(v).into_owned()));
        }
        attrs = &attrs[align(len).min(attrs.len())..];
    }
    None
}

/// RTM_GETLINK by name (no ACK flag: the answer is RTM_NEWLINK or an error).
pub fn link_get(seq: u32, name: &str) -> Vec<u8> {
    Msg::new(RTM_GETLINK, NLM_F_REQUEST, seq)
        .header(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        .finish()
}

/// One attribute on its own (rta_len, rta_type, payload, padding): for nesting.
pub fn nla(ty: u16, data: &[u8]) -> Vec<u8> {
    let len = u16::try_from(4 + data.len()).expect("netlink attribute over 64 KiB");
    let mut v = Vec::with_capacity(align(4 + data.len()));
    v.extend_from_slice(&len.to_ne_bytes());
    v.extend_from_slice(&ty.to_ne_bytes());
    v.extend_from_slice(data);
    v.resize(align(v.len()), 0);
    v
}

fn nla_str(ty: u16, s: &str) -> Vec<u8> {
    let mut z = s.as_bytes().to_vec();
    z.push(0);
    nla(ty, &z)
}

/// A veth pair to create with [`veth_new`].
#[derive(Debug, Clone, Copy)]
pub struct Veth<'a> {
    /// The end that stays in the caller's namespace.
    pub name: &'a str,
    /// The other end's name, in the namespace behind `peer_netns_fd`.
    pub peer: &'a str,
    /// An open fd of the peer's network namespace.
    pub peer_netns_fd: i32,
    /// Both ends' MTU.
    pub mtu: u32,
}

/// RTM_NEWLINK CREATE|EXCL of a veth pair: `ip link add NAME mtu M type veth peer name PEER
/// mtu M netns FD`.
pub fn veth_new(seq: u32, v: &Veth<'_>) -> Vec<u8> {
    let mut peer = ifinfomsg(0, 0, 0).to_vec();
    peer.extend(nla_str(IFLA_IFNAME, v.peer));
    peer.extend(nla(IFLA_MTU, &v.mtu.to_ne_bytes()));
    peer.extend(nla(IFLA_NET_NS_FD, &v.peer_netns_fd.to_ne_bytes()));
    let data = nla(VETH_INFO_PEER | NLA_F_NESTED, &peer);
    let mut info = nla_str(IFLA_INFO_KIND, "veth");
    info.extend(nla(IFLA_INFO_DATA | NLA_F_NESTED, &data));
    Msg::new(
        RTM_NEWLINK,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        seq,
    )
    .header(&ifinfomsg(0, 0, 0))
    .attr_str(IFLA_IFNAME, v.name)
    .attr_u32(IFLA_MTU, v.mtu)
    .attr(IFLA_LINKINFO | NLA_F_NESTED, &info)
    .finish()
}

/// RTM_DELLINK by name.
pub fn link_del(seq: u32, name: &str) -> Vec<u8> {
    Msg::new(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, seq)
        .header(&ifinfomsg(0, 0, 0))
        .attr_str(IFLA_IFNAME, name)
        .finish()
}

/// RTM_NEWADDR ip/prefix on index, permanent, CREATE|REPLACE (idempotent).
pub fn addr_add(seq: u32, index: i32, ip: Ipv4Addr, prefix: u8) -> Vec<u8> {
    let mut h = [0u8; 8];
    h[0] = AF_INET;
    h[1] = prefix;
    h[2] = IFA_F_PERMANENT;
    h[3] = RT_SCOPE_UNIVERSE;
    h[4..8].copy_from_slice(&(index as u32).to_ne_bytes());
    Msg::new(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .header(&h)
    .attr(IFA_LOCAL, &ip.octets())
    .attr(IFA_ADDRESS, &ip.octets())
    .finish()
}

/// An IPv4 route in the main table.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: i32,
    pub scope: u8,
    pub onlink: bool,
}

/// RTM_NEWROUTE, CREATE|REPLACE (idempotent).
pub fn route_add(seq: u32, r: &Route) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[0] = AF_INET;
    h[1] = r.dst_len;
    // src_len 0, tos 0
    h[4] = RT_TABLE_MAIN;
    h[5] = RTPROT_BOOT;
    h[6] = r.scope;
    h[7] = RTN_UNICAST;
    let flags = if r.onlink { RTNH_F_ONLINK } else { 0 };
    h[8..12].copy_from_slice(&flags.to_ne_bytes());
    let mut m = Msg::new(
        RTM_NEWROUTE,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .header(&h);
    if r.dst_len > 0 {
        m = m.attr(RTA_DST, &r.dst.octets());
    }
    if let Some(gw) = r.gateway {
        m = m.attr(RTA_GATEWAY, &gw.octets());
    }
    m.attr_u32(RTA_OIF, r.oif as u32).finish()
}

/// RTM_NEWNEIGH ip -> mac on index, NUD_PERMANENT, CREATE|REPLACE (idempotent).
pub fn neigh_add(seq: u32, index: i32, ip: Ipv4Addr, mac: [u8; 6]) -> Vec<u8> {
    let mut h = [0u8; 12];
    h[0] = AF_INET;
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h[8..10].copy_from_slice(&NUD_PERMANENT.to_ne_bytes());
    // ndm_flags 0, ndm_type 0
    Msg::new(
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
        seq,
    )
    .header(&h)
    .attr(NDA_DST, &ip.octets())
    .attr(NDA_LLADDR, &mac)
    .finish()
}

/// One message read back from the kernel.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram from the kernel into messages; stops at the first malformed one.
pub fn replies(mut buf: &[u8]) -> impl Iterator<Item = Reply<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let r = Reply {
            ty: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align(len).min(buf.len())..];
        Some(r)
    })
}

/// An NLMSG_ERROR payload: the (negative) errno, 0 for an ack, and the extended-ack message.
pub fn parse_error(r: &Reply<'_>) -> Option<(i32, Option<String>)> {
    if r.ty != NLMSG_ERROR || r.payload.len() < 4 {
        return None;
    }
    let err = i32::from_ne_bytes(r.payload[0..4].try_into().unwrap());
    let mut ext = None;
    if r.flags & NLM_F_ACK_TLVS != 0 && r.payload.len() >= 4 + NLMSG_HDRLEN {
        // The original header follows; its payload too unless the ack is capped.
        let orig_len = u32::from_ne_bytes(r.payload[4..8].try_into().unwrap()) as usize;
        let mut off = 4 + if r.flags & NLM_F_CAPPED != 0 {
            NLMSG_HDRLEN
        } else {
            align(orig_len)
        };
        while off + 4 <= r.payload.len() {
            let alen = u16::from_ne_bytes(r.payload[off..off + 2].try_into().unwrap()) as usize;
            let aty = u16::from_ne_bytes(r.payload[off + 2..off + 4].try_into().unwrap());
            if alen < 4 || off + alen > r.payload.len() {
                break;
            }
            if aty & 0x3fff == NLMSGERR_ATTR_MSG {
                let s = &r.payload[off + 4..off + alen];
                let s = s.split(|&b| b == 0).next().unwrap_or_default();
                ext = Some(String::from_utf8_lossy(s).into_owned());
            }
            off += align(alen);
        }
    }
    Some((err, ext))
}

/// The ifindex from an RTM_NEWLINK reply.
pub fn link_index(r: &Reply<'_>) -> Option<i32> {
    if r.ty != RTM_NEWLINK || r.payload.len() < 16 {
        return None;
    }
    Some(i32::from_ne_bytes(r.payload[4..8].try_into().unwrap()))
}

#[cfg(all(test, target_endian = "little"))]
mod tests;
