//! One underlay socket per dataplane worker: an SO_REUSEPORT group on the VTEP address, and a
//! classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that picks the worker from the *inner* flow.
//!
//! Every VXLAN datagram between two cells can share one outer 4-tuple (Tapestry sends from the
//! VTEP port; a kernel VTEP hashes the inner flow into its source port), so the kernel's default
//! reuseport hash of the outer header would put all of one cell's traffic on one worker. The
//! program reads the inner IPv4 header instead and hashes source and destination address and,
//! for TCP and UDP, ports, symmetrically: both directions of a connection land on the same
//! worker, and every fragment of a datagram on the worker of its first fragment (fragments
//! hash by address only). Frames that are not IPv4 (ARP) go to worker 0.

use std::net::{SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use crate::{Error, Result};

/// linux/asm-generic/socket.h; not in the libc crate for Linux.
const SO_ATTACH_REUSEPORT_CBPF: libc::c_int = 51;

/// Most workers the program can steer to (and a sane cap for one cell).
pub const MAX_WORKERS: usize = 64;

/// Offsets from the start of the UDP payload (where the kernel points the program).
const INNER_ETHERTYPE: u32 = 8 + 12;
const INNER_IP: u32 = 8 + 14;
const INNER_FRAG: u32 = INNER_IP + 6;
const INNER_PROTO: u32 = INNER_IP + 9;
const INNER_SRC: u32 = INNER_IP + 12;
const INNER_DST: u32 = INNER_IP + 16;

fn op(code: u32, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// The steering program for `workers` (>= 2) sockets. Kept in step with `inner_flow_worker`,
/// its model in Rust, which the tests check against the kernel's real choice.
fn program(workers: u32) -> Vec<libc::sock_filter> {
    use libc::*;
    vec![
        /* 0 */ op(BPF_LD | BPF_H | BPF_ABS, 0, 0, INNER_ETHERTYPE),
        /* 1 */ op(BPF_JMP | BPF_JEQ | BPF_K, 0, 30, 0x0800), // not IPv4 -> 32
        /* 2 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, INNER_SRC),
        /* 3 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 4 */ op(BPF_LD | BPF_W | BPF_ABS, 0, 0, INNER_DST),
        /* 5 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 6 */ op(BPF_ST, 0, 0, 0),
        /* 7 */ op(BPF_LD | BPF_H | BPF_ABS, 0, 0, INNER_FRAG),
        /* 8 */ op(BPF_JMP | BPF_JSET | BPF_K, 13, 0, 0x3fff), // a fragment -> 22
        /* 9 */ op(BPF_LD | BPF_B | BPF_ABS, 0, 0, INNER_PROTO),
        /* 10 */ op(BPF_JMP | BPF_JEQ | BPF_K, 1, 0, 6), // TCP -> 12
        /* 11 */ op(BPF_JMP | BPF_JEQ | BPF_K, 0, 10, 17), // not UDP -> 22
        /* 12 */ op(BPF_LDX | BPF_B | BPF_MSH, 0, 0, INNER_IP),
        /* 13 */ op(BPF_LD | BPF_W | BPF_IND, 0, 0, INNER_IP), // sport << 16 | dport
        /* 14 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 15 */ op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        /* 16 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 17 */ op(BPF_ALU | BPF_AND | BPF_K, 0, 0, 0xffff), // sport ^ dport
        /* 18 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 19 */ op(BPF_LD | BPF_MEM, 0, 0, 0),
        /* 20 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 21 */ op(BPF_ST, 0, 0, 0),
        /* 22 */ op(BPF_LD | BPF_MEM, 0, 0, 0),
        /* 23 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 24 */ op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        /* 25 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 26 */ op(BPF_ALU | BPF_MUL | BPF_K, 0, 0, MIX),
        /* 27 */ op(BPF_MISC | BPF_TAX, 0, 0, 0),
        /* 28 */ op(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 16),
        /* 29 */ op(BPF_ALU | BPF_XOR | BPF_X, 0, 0, 0),
        /* 30 */ op(BPF_ALU | BPF_MOD | BPF_K, 0, 0, workers),
        /* 31 */ op(BPF_RET | BPF_A, 0, 0, 0),
        /* 32 */ op(BPF_RET | BPF_K, 0, 0, 0),
    ]
}

const MIX: u32 = 0x045d_9f3b;

/// The worker the program picks for a UDP payload (VXLAN header + inner frame), computed in
/// Rust: the model the tests hold the kernel to.
#[cfg(test)]
fn inner_flow_worker(payload: &[u8], workers: usize) -> usize {
    if workers <= 1 {
        return 0;
    }
    let be16 = |o: u32| -> Option<u32> {
        let o = o as usize;
        Some(u16::from_be_bytes(payload.get(o..o + 2)?.try_into().ok()?) as u32)
    };
    let be32 = |o: u32| -> Option<u32> {
        let o = o as usize;
        Some(u32::from_be_bytes(payload.get(o..o + 4)?.try_into().ok()?))
    };
    let pick = || -> Option<usize> {
        if be16(INNER_ETHERTYPE)? != 0x0800 {
            return Some(0);
        }
        let mut h = be32(INNER_SRC)? ^ be32(INNER_DST)?;
        if be16(INNER_FRAG)? & 0x3fff == 0 {
            let proto = *payload.get(INNER_PROTO as usize)?;
            if proto == 6 || proto == 17 {
                let ihl = (*payload.get(INNER_IP as usize)? as u32 & 0xf) * 4;
                let w = be32(INNER_IP + ihl)?;
                h ^= (w ^ (w >> 16)) & 0xffff;
            }
        }
        h ^= h >> 16;
        h = h.wrapping_mul(MIX);
        h ^= h >> 16;
        Some((h % workers as u32) as usize)
    };
    // A load past the end aborts the kernel's program with 0.
    pick().unwrap_or(0)
}

/// Binds `workers` UDP sockets to `addr` (port 0: one the kernel picks, the same for all):
/// one socket if `workers` is 1, otherwise an SO_REUSEPORT group steered by the inner flow.
/// The address must be free: a plain bind is tried first, so a second process on the same VTEP
/// address fails with EADDRINUSE instead of silently joining the group.
pub fn bind_workers(
    addr: SocketAddrV4,
    workers: usize,
    buf_bytes: usize,
) -> Result<Vec<UdpSocket>> {
    if workers == 0 || workers > MAX_WORKERS {
        return Err(Error::Invalid {
            what: "worker count",
            detail: format!("{workers} (must be 1..={MAX_WORKERS})"),
        });
    }
    if workers == 1 {
        return Ok(vec![super::bind(addr, false, buf_bytes)?]);
    }
    // A socket without SO_REUSEPORT: fails if anyone holds the address.
    let probe = super::bind(addr, false, 0)?;
    let port = match probe.local_addr() {
        Ok(std::net::SocketAddr::V4(a)) => a.port(),
        _ => addr.port(),
    };
    drop(probe);
    let addr = SocketAddrV4::new(*addr.ip(), port);
    let socks = (0..workers)
        .map(|_| super::bind(addr, true, buf_bytes))
        .collect::<Result<Vec<_>>>()?;
    let prog = program(workers as u32);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads one sock_fprog whose `filter` points at `len` initialised
    // sock_filter entries; `prog` and `fprog` outlive the call, and the kernel copies both.
    let rc = unsafe {
        libc::setsockopt(
            socks[0].as_raw_fd(),
            libc::SOL_SOCKET,
            SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(Error::last_os(format!(
            "SO_ATTACH_REUSEPORT_CBPF on UDP {addr}"
        )));
    }
    Ok(socks)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};

    /// A VXLAN-GBP payload around an inner IPv4 packet.
    fn vxlan(src: [u8; 4], dst: [u8; 4], proto: u8, sport: u16, dport: u16, frag: u16) -> Vec<u8> {
        let mut p = vec![0x88, 0, 0, 0, 0, 0, 1, 0];
        p.extend_from_slice(&[0xee; 12]);
        p.extend_from_slice(&[0x08, 0x00]);
        let mut ip = [0u8; 20];
        ip[0] = 0x45;
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[8] = 64;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src);
        ip[16..20].copy_from_slice(&dst);
        p.extend_from_slice(&ip);
        p.extend_from_slice(&sport.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&[0u8; 16]);
        p
    }

    #[test]
    fn model_is_symmetric_and_fragments_hash_by_address() {
        for i in 0..200u16 {
            let a = [10, 255, 1, (i % 250) as u8 + 2];
            let b = [10, 255, 2, 7];
            for proto in [6u8, 17] {
                let fwd = vxlan(a, b, proto, 40000 + i, 8080, 0);
                let rev = vxlan(b, a, proto, 8080, 40000 + i, 0);
                assert_eq!(inner_flow_worker(&fwd, 4), inner_flow_worker(&rev, 4));
            }
            let first = vxlan(a, b, 17, 1, 2, 0x2000);
            let later = vxlan(a, b, 17, 9, 9, 0x00b9);
            assert_eq!(inner_flow_worker(&first, 3), inner_flow_worker(&later, 3));
        }
        let mut arp = vxlan([1; 4], [2; 4], 6, 1, 2, 0);
        arp[20..22].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(inner_flow_worker(&arp, 4), 0);
        assert_eq!(inner_flow_worker(&[0x88, 0, 0], 4), 0);
        assert_eq!(inner_flow_worker(&vxlan([1; 4], [2; 4], 6, 1, 2, 0), 1), 0);
    }

    #[test]
    fn rejects_bad_worker_counts() {
        let a = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0);
        for n in [0, MAX_WORKERS + 1] {
            let e = bind_workers(a, n, 0).unwrap_err().to_string();
            assert!(e.contains("worker count"), "{e}");
        }
    }

    #[test]
    fn the_group_is_exclusive() {
        let socks = bind_workers(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), 2, 0).unwrap();
        let addr = match socks[0].local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let e = bind_workers(addr, 2, 0).unwrap_err().to_string();
        assert!(e.contains("bind UDP 127.0.0.1:"), "{e}");
        let e = bind_workers(addr, 1, 0).unwrap_err().to_string();
        assert!(e.contains("bind UDP 127.0.0.1:"), "{e}");
    }

    /// A UDP GSO send (several datagrams of one inner flow in one skb) to sockets with UDP_GRO
    /// on, as between two cells, is steered by its inner flow too.
    #[test]
    fn kernel_steers_gso_sends() {
        const N: usize = 2;
        let socks = bind_workers(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), N, 1 << 22).unwrap();
        for s in &socks {
            crate::udp::enable_gro(s).unwrap();
        }
        let to = match socks[0].local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            a => panic!("{a}"),
        };
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut want = [0usize; N];
        for i in 0..40u16 {
            let d = vxlan([10, 255, 1, 2], [10, 255, 2, 3], 6, 30000 + i, 5201, 0);
            let w = inner_flow_worker(&d, N);
            let buf: Vec<u8> = d.iter().chain(&d).chain(&d).copied().collect();
            crate::udp::send_gso(&tx, to, &buf, d.len() as u16).unwrap();
            want[w] += 3 * d.len();
        }
        assert!(
            want.iter().all(|&b| b > 0),
            "the flows cover every worker: {want:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
        let mut got = [0usize; N];
        let mut buf = vec![0u8; 65536];
        for (w, s) in socks.iter().enumerate() {
            s.set_nonblocking(true).unwrap();
            while let Ok(n) = s.recv(&mut buf) {
                got[w] += n;
            }
        }
        assert_eq!(got, want, "bytes per worker: kernel vs model");
    }

    /// The kernel runs the program as the model says: each flow and its reverse on one socket,
    /// flows spread over all sockets.
    #[test]
    fn kernel_steers_by_inner_flow() {
        const N: usize = 3;
        let socks = bind_workers(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0), N, 1 << 20).unwrap();
        let to = socks[0].local_addr().unwrap();
        let tx = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let mut sent: HashMap<Vec<u8>, usize> = HashMap::new();
        for i in 0..60u16 {
            let a = [10, 255, 1, 2 + (i % 5) as u8];
            let b = [10, 255, 2, 3];
            for p in [
                vxlan(a, b, 6, 30000 + i, 5201, 0),
                vxlan(b, a, 6, 5201, 30000 + i, 0),
                vxlan(a, b, 17, 30000 + i, 53, 0),
            ] {
                tx.send_to(&p, to).unwrap();
                sent.insert(p.clone(), inner_flow_worker(&p, N));
            }
        }
        let mut got = [0usize; N];
        let mut buf = [0u8; 256];
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut received = 0;
        while received < sent.len() && Instant::now() < deadline {
            for (w, s) in socks.iter().enumerate() {
                while let Ok(n) = s.recv(&mut buf) {
                    let want = sent[&buf[..n].to_vec()];
                    assert_eq!(want, w, "flow steered to worker {w}, model says {want}");
                    got[w] += 1;
                    received += 1;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(received, sent.len());
        assert!(
            got.iter().all(|&g| g > 0),
            "every worker gets flows: {got:?}"
        );
    }
}
