//! Helpers for root tests: `tpsys-` namespaces removed on every exit path, frame reading.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tapestry_sys::tap::Tap;

/// Fails the test unless it runs as root with /dev/net/tun.
///
/// Root tests are `#[ignore = "needs root ..."]`: a plain `cargo nextest run` reports them as
/// skipped, and `scripts/test.sh` runs them (`--run-ignored all`) as root. Run without root, they
/// fail here rather than pass without testing.
pub fn require_root() {
    // The effective uid from /proc (keeps the tests free of unsafe).
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid0 = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        == Some("0");
    assert!(
        euid0 && std::path::Path::new("/dev/net/tun").exists(),
        "this test needs root and /dev/net/tun (run scripts/test.sh as root, \
         or `cargo nextest run --run-ignored all` as root)"
    );
}

/// A network namespace `tpsys-<pid>-<n>-<tag>`, deleted on drop (also when a test panics).
pub struct Netns {
    pub name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("tpsys-{}-{n}-{tag}", std::process::id());
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("running ip");
        assert!(st.success(), "ip netns add {name}");
        Netns { name }
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.name))
    }

    /// `ip -n NS -j ARGS`, whitespace removed, for substring checks.
    pub fn ip_json(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name, "-j"])
            .args(args)
            .output()
            .expect("running ip");
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .collect()
    }

    /// Starts `cmd` inside the namespace.
    pub fn spawn(&self, cmd: &[&str]) -> std::process::Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(cmd)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("ip netns exec")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Reads frames from a nonblocking TAP until `want` accepts one (returns it) or `timeout`.
pub fn read_until(
    tap: &Tap,
    timeout: Duration,
    mut want: impl FnMut(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 65536 + 64];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) => {
                if want(&buf[..n]) {
                    return Some(buf[..n].to_vec());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("reading {}: {e}", tap.name()),
        }
    }
    None
}

pub fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

/// An ARP request (Ethernet) asking for `target`.
pub fn is_arp_request_for(f: &[u8], target: [u8; 4]) -> bool {
    f.len() >= 42 && ethertype(f) == 0x0806 && f[20..22] == [0, 1] && f[38..42] == target
}

/// An IPv4 ICMP frame of `icmp_type` to `dst` with Ethernet destination `dst_mac`.
pub fn is_icmp(f: &[u8], icmp_type: u8, dst: [u8; 4], dst_mac: Option<[u8; 6]>) -> bool {
    f.len() >= 42
        && ethertype(f) == 0x0800
        && f[23] == 1
        && f[30..34] == dst
        && f[34] == icmp_type
        && dst_mac.is_none_or(|m| f[0..6] == m)
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += w as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An Ethernet + IPv4 + ICMP echo request frame.
pub fn echo_request(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    id: u16,
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = b"tapestry-sys-test";
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 1, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut icmp = vec![8, 0, 0, 0];
    icmp.extend_from_slice(&id.to_be_bytes());
    icmp.extend_from_slice(&1u16.to_be_bytes());
    icmp.extend_from_slice(payload);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&icmp);
    f
}
