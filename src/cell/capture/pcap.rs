//! What the capture client makes of the cell's records: outer Ethernet/IPv4/UDP headers for
//! underlay datagrams (so Wireshark decodes VXLAN-GBP), one-line summaries like tcpdump's, and
//! the pcapng file (written with the `pcap-file` crate).

use std::borrow::Cow;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::DataLink;

use crate::cell::tap::Dir;

/// Ethernet + IPv4 + UDP.
pub const OUTER_LEN: usize = 14 + 20 + 8;
/// The snapshot length written in the interface block: every frame is kept whole.
pub const SNAPLEN: u32 = 262144;

/// A locally administered MAC made of an underlay address (there is no real one to report).
fn mac_of(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x00, o[0], o[1], o[2], o[3]]
}

/// The IPv4 header checksum of `h` (its checksum field read as zero).
pub fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for (i, w) in h.chunks(2).enumerate() {
        if i == 5 {
            continue;
        }
        let hi = u32::from(w[0]) << 8;
        sum += hi | u32::from(*w.get(1).unwrap_or(&0));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The outer headers of a datagram of `payload_len` bytes from `src` to `dst`: Ethernet (MACs
/// made of the addresses), IPv4 (DF, TTL 64, checksum), UDP (no checksum, as IPv4 allows).
/// `None` when the payload does not fit one IPv4 packet.
pub fn outer_headers(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    payload_len: usize,
) -> Option<[u8; OUTER_LEN]> {
    let ip_len = u16::try_from(20 + 8 + payload_len).ok()?;
    let mut h = [0u8; OUTER_LEN];
    h[0..6].copy_from_slice(&mac_of(*dst.ip()));
    h[6..12].copy_from_slice(&mac_of(*src.ip()));
    h[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut h[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src.ip().octets());
    ip[16..20].copy_from_slice(&dst.ip().octets());
    let c = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut h[34..42];
    udp[0..2].copy_from_slice(&src.port().to_be_bytes());
    udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    Some(h)
}

/// tcpdump-like summary of an Ethernet frame.
pub fn summarize_ethernet(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("truncated frame, {} bytes", f.len());
    }
    match u16::from_be_bytes([f[12], f[13]]) {
        0x0800 => summarize_ipv4(&f[14..]),
        0x0806 => format!("ARP, {} bytes", f.len()),
        t => format!("ethertype 0x{t:04x}, {} bytes", f.len()),
    }
}

fn summarize_ipv4(p: &[u8]) -> String {
    if p.len() < 20 || p[0] >> 4 != 4 {
        return format!("IP, truncated ({} bytes)", p.len());
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    let src = Ipv4Addr::new(p[12], p[13], p[14], p[15]);
    let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
    let total = usize::from(u16::from_be_bytes([p[2], p[3]])).max(ihl);
    let l4 = p.get(ihl..).unwrap_or_default();
    let port = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    match p[9] {
        6 if l4.len() >= 20 => {
            let off = usize::from(l4[12] >> 4) * 4;
            let fl = l4[13];
            let mut flags = String::new();
            for (bit, c) in [
                (0x02, 'S'),
                (0x01, 'F'),
                (0x04, 'R'),
                (0x08, 'P'),
                (0x10, '.'),
            ] {
                if fl & bit != 0 {
                    flags.push(c);
                }
            }
            let len = total.saturating_sub(ihl + off);
            format!(
                "IP {src}.{} > {dst}.{}: tcp [{flags}] len {len}",
                port(0),
                port(2)
            )
        }
        17 if l4.len() >= 8 => format!(
            "IP {src}.{} > {dst}.{}: udp len {}",
            port(0),
            port(2),
            usize::from(port(4)).saturating_sub(8)
        ),
        1 if l4.len() >= 2 => format!("IP {src} > {dst}: icmp type {} code {}", l4[0], l4[1]),
        proto => format!("IP {src} > {dst}: proto {proto}, {total} bytes"),
    }
}

/// Summary of an underlay datagram (its UDP payload: VXLAN header, inner frame).
pub fn summarize_underlay(src: SocketAddrV4, dst: SocketAddrV4, d: &[u8]) -> String {
    if d.len() < 8 {
        return format!("{src} > {dst}: udp, {} bytes (not VXLAN)", d.len());
    }
    let vni = u32::from_be_bytes([0, d[4], d[5], d[6]]);
    let gbp = if d[0] & 0x80 != 0 {
        format!(" gbp {}", u16::from_be_bytes([d[2], d[3]]))
    } else {
        String::new()
    };
    format!(
        "{src} > {dst}: vxlan vni {vni}{gbp}: {}",
        summarize_ethernet(&d[8..])
    )
}

/// The time of day (UTC) of a timestamp, to the microsecond.
pub fn time_of_day(ts_ns: u64) -> String {
    let s = ts_ns / 1_000_000_000;
    let us = (ts_ns % 1_000_000_000) / 1000;
    format!(
        "{:02}:{:02}:{:02}.{us:06}",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60
    )
}

/// A pcapng file: one interface (Ethernet, nanosecond timestamps), direction flags and
/// comments on each packet.
pub struct PcapSink<W: Write> {
    w: PcapNgWriter<W>,
}

impl<W: Write> PcapSink<W> {
    pub fn new(w: W, name: &str, description: &str) -> pcap_file::PcapResult<Self> {
        let mut w = PcapNgWriter::new(w)?;
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: SNAPLEN,
            options: vec![
                InterfaceDescriptionOption::IfName(Cow::Owned(name.to_string())),
                InterfaceDescriptionOption::IfDescription(Cow::Owned(description.to_string())),
                // Timestamps in nanoseconds (pcap-file writes them so).
                InterfaceDescriptionOption::IfTsResol(9),
            ],
        })?;
        Ok(PcapSink { w })
    }

    /// One packet; `comment` says which way it went in words.
    pub fn write(
        &mut self,
        ts_ns: u64,
        dir: Dir,
        comment: &str,
        data: &[u8],
    ) -> pcap_file::PcapResult<()> {
        // epb_flags bits 0-1: 01 inbound, 10 outbound.
        let flags = match dir {
            Dir::In => 0b01,
            Dir::Out => 0b10,
        };
        self.w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(ts_ns),
            original_len: data.len() as u32,
            data: Cow::Borrowed(data),
            options: vec![
                EnhancedPacketOption::Flags(flags),
                EnhancedPacketOption::Comment(Cow::Owned(comment.to_string())),
            ],
        })?;
        Ok(())
    }

    pub fn into_inner(self) -> W {
        self.w.into_inner()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outer_headers_hand_checked() {
        let h = outer_headers(
            "10.0.0.1:4789".parse().unwrap(),
            "10.0.0.2:4789".parse().unwrap(),
            8,
        )
        .unwrap();
        #[rustfmt::skip]
        let want: [u8; OUTER_LEN] = [
            // Ethernet: dst, src, IPv4
            0x02, 0x00, 10, 0, 0, 2,  0x02, 0x00, 10, 0, 0, 1,  0x08, 0x00,
            // IPv4: 45, tos, total 36, id 0, DF, ttl 64, UDP, checksum 0x26c7 (by hand:
            // 4500+0024+4000+4011+0a00+0001+0a00+0002 = d938, inverted), 10.0.0.1, 10.0.0.2
            0x45, 0x00, 0x00, 0x24, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x26, 0xc7,
            10, 0, 0, 1, 10, 0, 0, 2,
            // UDP: 4789 -> 4789, length 16, no checksum
            0x12, 0xb5, 0x12, 0xb5, 0x00, 0x10, 0x00, 0x00,
        ];
        assert_eq!(h, want);
        // The checksum verifies: the sum over the whole header is 0xffff.
        let ip = &h[14..34];
        let mut sum: u32 = ip
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
        // A carry: 192.168.255.255 -> 172.31.255.254.
        let h = outer_headers(
            "192.168.255.255:1".parse().unwrap(),
            "172.31.255.254:2".parse().unwrap(),
            1000,
        )
        .unwrap();
        assert_eq!(
            ipv4_checksum(&h[14..34]),
            u16::from_be_bytes([h[24], h[25]])
        );
        assert!(outer_headers(
            "1.1.1.1:1".parse().unwrap(),
            "1.1.1.2:1".parse().unwrap(),
            65508
        )
        .is_none());
        assert!(outer_headers(
            "1.1.1.1:1".parse().unwrap(),
            "1.1.1.2:1".parse().unwrap(),
            65507
        )
        .is_some());
    }

    fn tcp_frame() -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        f.extend_from_slice(&[
            0x45, 0, 0, 45, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 255, 1, 2, 10, 255, 2, 3,
        ]);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&8080u16.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x18;
        f.extend_from_slice(&t);
        f.extend_from_slice(b"hello");
        f
    }

    #[test]
    fn summaries_read_like_tcpdump() {
        let f = tcp_frame();
        assert_eq!(
            summarize_ethernet(&f),
            "IP 10.255.1.2.40000 > 10.255.2.3.8080: tcp [P.] len 5"
        );
        let mut d = vec![0x88, 0, 0x01, 0x2c, 0, 0, 1, 0];
        d.extend_from_slice(&f);
        assert_eq!(
            summarize_underlay("10.0.0.1:4789".parse().unwrap(), "10.0.0.2:4789".parse().unwrap(), &d),
            "10.0.0.1:4789 > 10.0.0.2:4789: vxlan vni 1 gbp 300: IP 10.255.1.2.40000 > 10.255.2.3.8080: tcp [P.] len 5"
        );
        assert_eq!(summarize_ethernet(&f[..5]), "truncated frame, 5 bytes");
        assert_eq!(time_of_day(3_723_000_004_000), "01:02:03.000004");
    }

    #[test]
    fn pcapng_reads_back() {
        let mut sink = PcapSink::new(Vec::new(), "port x", "test").unwrap();
        let f = tcp_frame();
        sink.write(1_000_000_123, Dir::Out, "out", &f).unwrap();
        let bytes = sink.into_inner();
        let mut r = pcap_file::pcapng::PcapNgReader::new(&bytes[..]).unwrap();
        let mut n = 0;
        while let Some(b) = r.next_block() {
            if let pcap_file::pcapng::Block::EnhancedPacket(p) = b.unwrap() {
                assert_eq!(p.data.as_ref(), &f[..]);
                assert_eq!(p.timestamp, Duration::from_nanos(1_000_000_123));
                assert!(p.options.contains(&EnhancedPacketOption::Flags(2)));
                n += 1;
            }
        }
        assert_eq!(n, 1);
    }
}
