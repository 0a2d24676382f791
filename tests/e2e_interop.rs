//! Interop with the Linux kernel (issue 3): a kernel `vxlan id 1 dstport 4789 gbp nolearning`
//! device, set up exactly as Silk sets up silk-vtep, plays a foreign (non-Tapestry) cell on the
//! same underlay as a Tapestry cell. It is registered through the leases API, and then:
//!
//! - TCP works in both directions between a container behind the kernel VTEP (app K) and a
//!   Tapestry container (app T);
//! - the kernel side's tag, put in the GBP Group Policy ID by the kernel from the packet mark
//!   (`iptables -t mangle ... -j MARK`, as Silk's VXLAN policy agent does), is honoured by
//!   Tapestry's ingress policy: K -> T:8080 admitted with policy and mark, K -> T:8081 (no policy)
//!   denied, K -> T:8080 without the mark (Group Policy ID 0) denied;
//! - `tshark` decodes the packets Tapestry sends as VXLAN with the G and I flags, T's Group Policy
//!   ID and VNI 1.
//!
//! It runs twice: with the kernel side's offloads at their defaults (its own traffic then
//! reaches Tapestry with partial inner checksums, CHECKSUM_PARTIAL, and super-frames sent by TSO
//! are split on the way), and with TX checksum offload off on the kernel cell's underlay port
//! (every inner checksum complete). Both also move a few MB each way and compare digests.
//!
//! Root only (network namespaces, prefixes `tpi` and `tpioff`): ignored (reported as skipped)
//! unless run with `--run-ignored all`, as scripts/test.sh does as root. Needs socat,
//! tshark, iptables, ethtool and iproute2. Everything it creates is removed by the testbed's Drop on every
//! exit path, tshark included.

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tapestry::demo::overlay::Overlay;
use tapestry::demo::testbed::{is_root, sh, underlay_ip};

/// Underlay host number of the kernel Silk cell (Tapestry's cell is 1, the control plane 10).
const KERNEL_HOST: u8 = 20;
/// The kernel cell's subnet, registered through the leases API; its VTEP IP is the .0.
const KERNEL_VTEP: Ipv4Addr = Ipv4Addr::new(10, 255, 200, 0);
const KERNEL_SUBNET: &str = "10.255.200.0/24";
/// Prefix of the overlay network (the control plane's default 10.255.0.0/16), as Silk puts it on
/// silk-vtep.
const OVERLAY_PREFIX: u8 = 16;
const K_CONTAINER: Ipv4Addr = Ipv4Addr::new(10, 255, 200, 2);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

fn vtep_mac(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Panics with `msg` and the logs of the control plane and the cell.
fn fail(ov: &Overlay, msg: &str) -> ! {
    let status = ov
        .cell_status(0)
        .map(|v| v.to_string())
        .unwrap_or_else(|e| format!("{e:#}"));
    let kernel = ov
        .tb
        .exec("kcell", "ip", &["-s", "link", "show", "silk-vtep"])
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let csum = ["tc", "kc"]
        .iter()
        .map(|ns| {
            let o = ov
                .tb
                .exec(ns, "nstat", &["-az", "TcpInCsumErrors", "UdpInCsumErrors"])
                .ok();
            let text = o
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let vals: Vec<&str> = text.lines().filter(|l| l.contains("CsumErrors")).collect();
            format!("{ns}: {}", vals.join("; "))
        })
        .collect::<Vec<_>>()
        .join("\n");
    let leases = ov
        .api("GET", "/networking/v1/external/leases", None)
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    panic!(
        "{msg}\n--- cell1 status ---\n{status}\n--- leases ---\n{leases}\n--- kernel silk-vtep ---\n{kernel}\n--- checksum errors in the containers ---\n{csum}\n--- cell1 log (tail) ---\n{}\n--- control log (tail) ---\n{}",
        tail(&ov.tb.log("cell1"), 40),
        tail(&ov.tb.log("control"), 20)
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `ip -n <ns> ARGS`, failing the test with ip's error.
fn ipn(ov: &Overlay, ns: &str, args: &[&str]) {
    let full = ov.tb.ns_name(ns);
    let mut a = vec!["-n", full.as_str()];
    a.extend_from_slice(args);
    if let Err(e) = sh("ip", &a) {
        fail(ov, &format!("{e:#}"));
    }
}

/// Runs a command inside namespace `ns`, failing the test if it fails; returns its stdout.
fn run_in(ov: &Overlay, ns: &str, prog: &str, args: &[&str]) -> String {
    let out = ov
        .tb
        .exec(ns, prog, args)
        .unwrap_or_else(|e| fail(ov, &format!("{e:#}")));
    if !out.status.success() {
        fail(
            ov,
            &format!(
                "{prog} {} in {ns} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The kernel cell's offloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KernelOffloads {
    /// As the kernel sets them up: over a veth its own traffic keeps partial inner checksums.
    Default,
    /// TX checksum offload off on the kernel cell's underlay port: complete inner checksums.
    TxChecksumOff,
}

/// Builds the kernel Silk cell `kcell` on the underlay and its container namespace `kc`
/// (K_CONTAINER/32 behind a veth whose host side is `s-kc`), as Silk does:
/// silk-vtep with MAC ee:ee:<VTEP IP>, the VTEP IP with the overlay prefix, the host side of the
/// veth `169.254.0.1 peer CIP/32`, the container's default route via 169.254.0.1.
fn kernel_cell(ov: &mut Overlay, offloads: KernelOffloads) {
    let u = underlay_ip(KERNEL_HOST).to_string();
    let mtu = (ov.underlay_mtu - 50).to_string();
    if let Err(e) = ov
        .tb
        .add_host("kcell", underlay_ip(KERNEL_HOST), ov.underlay_mtu)
    {
        fail(ov, &format!("adding the kernel cell's namespace: {e:#}"));
    }
    ipn(
        ov,
        "kcell",
        &[
            "link",
            "add",
            "silk-vtep",
            "type",
            "vxlan",
            "id",
            "1",
            "dstport",
            "4789",
            "local",
            &u,
            "dev",
            "ul0",
            "nolearning",
            "gbp",
        ],
    );
    ipn(
        ov,
        "kcell",
        &[
            "link",
            "set",
            "silk-vtep",
            "address",
            &vtep_mac(KERNEL_VTEP),
            "mtu",
            &mtu,
            "up",
        ],
    );
    ipn(
        ov,
        "kcell",
        &[
            "addr",
            "add",
            &format!("{KERNEL_VTEP}/{OVERLAY_PREFIX}"),
            "dev",
            "silk-vtep",
        ],
    );
    run_in(ov, "kcell", "sysctl", &["-qw", "net.ipv4.ip_forward=1"]);
    // With the defaults, a veth hands the peer namespace the encapsulated frame with the inner
    // TCP/UDP checksum still partial (CHECKSUM_PARTIAL: the field holds only the pseudo-header
    // sum); Tapestry reads it from a UDP socket without the skb's metadata and must recognise and
    // complete it. With TX checksum offload off, the kernel computes every checksum in software,
    // as a NIC would before the wire.
    if offloads == KernelOffloads::TxChecksumOff {
        run_in(ov, "kcell", "ethtool", &["-K", "ul0", "tx", "off"]);
    }

    if let Err(e) = ov.tb.add_namespace("kc") {
        fail(
            ov,
            &format!("adding the kernel container's namespace: {e:#}"),
        );
    }
    let kc = ov.tb.ns_name("kc");
    let cip = format!("{K_CONTAINER}/32");
    ipn(
        ov,
        "kcell",
        &[
            "link", "add", "s-kc", "mtu", &mtu, "type", "veth", "peer", "name", "eth0", "mtu",
            &mtu, "netns", &kc,
        ],
    );
    ipn(
        ov,
        "kcell",
        &["addr", "add", "169.254.0.1", "peer", &cip, "dev", "s-kc"],
    );
    ipn(ov, "kcell", &["link", "set", "s-kc", "up"]);
    ipn(ov, "kc", &["addr", "add", &cip, "dev", "eth0"]);
    ipn(ov, "kc", &["link", "set", "eth0", "up"]);
    ipn(
        ov,
        "kc",
        &[
            "route",
            "add",
            "169.254.0.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
    );
    ipn(
        ov,
        "kc",
        &[
            "route",
            "add",
            "default",
            "via",
            "169.254.0.1",
            "dev",
            "eth0",
        ],
    );
}

/// What the kernel cell needs to reach a remote cell, as Silk installs it: a route to its subnet
/// via its VTEP IP (onlink), a permanent neighbour entry for the VTEP IP with the VTEP MAC, and an
/// fdb entry sending that MAC to the remote cell's underlay IP.
fn kernel_peer(ov: &Overlay, subnet: &str, vtep_ip: Ipv4Addr, mac: &str, underlay: Ipv4Addr) {
    let vtep = vtep_ip.to_string();
    ipn(
        ov,
        "kcell",
        &[
            "route",
            "add",
            subnet,
            "via",
            &vtep,
            "dev",
            "silk-vtep",
            "onlink",
        ],
    );
    ipn(
        ov,
        "kcell",
        &[
            "neigh",
            "add",
            &vtep,
            "lladdr",
            mac,
            "dev",
            "silk-vtep",
            "nud",
            "permanent",
        ],
    );
    run_in(
        ov,
        "kcell",
        "bridge",
        &[
            "fdb",
            "add",
            mac,
            "dev",
            "silk-vtep",
            "dst",
            &underlay.to_string(),
            "self",
            "permanent",
        ],
    );
}

fn api_ok(ov: &Overlay, method: &str, path: &str, body: Option<Value>) -> Value {
    match ov.api(method, path, body.clone()) {
        Ok((code, v)) if (200..300).contains(&code) => v,
        Ok((code, v)) => fail(
            ov,
            &format!(
                "{method} {path} {} returned {code}: {v}",
                body.unwrap_or(Value::Null)
            ),
        ),
        Err(e) => fail(ov, &format!("{method} {path}: {e:#}")),
    }
}

fn allow(ov: &Overlay, src: &str, dst: &str, port: u16) {
    if let Err(e) = ov.allow(src, dst, "tcp", port, port) {
        fail(ov, &format!("{e:#}"));
    }
}

/// The tag of `app` from GET /networking/v1/external/tags, as a number (CF renders tags in hex).
fn tag_of(ov: &Overlay, app: &str) -> u16 {
    let v = api_ok(ov, "GET", "/networking/v1/external/tags", None);
    let tags = v["tags"].as_array().cloned().unwrap_or_default();
    let Some(t) = tags.iter().find(|t| t["id"] == app) else {
        fail(ov, &format!("no tag for app {app} in {v}"));
    };
    let s = t["tag"].as_str().unwrap_or_default();
    u16::from_str_radix(s, 16).unwrap_or_else(|_| {
        fail(
            ov,
            &format!("tag {s:?} of {app} is not a 16-bit hex number"),
        )
    })
}

/// The Tapestry cell's lease: (subnet as "a.b.c.d/len", VTEP IP = the subnet's .0, VTEP MAC).
fn tapestry_lease(ov: &Overlay, underlay: Ipv4Addr) -> (String, Ipv4Addr, String) {
    let v = api_ok(ov, "GET", "/networking/v1/external/leases", None);
    let leases = v["leases"].as_array().cloned().unwrap_or_default();
    assert!(
        leases
            .iter()
            .any(|l| l["underlay_ip"] == underlay_ip(KERNEL_HOST).to_string()
                && l["overlay_subnet"] == KERNEL_SUBNET),
        "the registered kernel cell is not in the lease list: {v}"
    );
    let Some(l) = leases
        .iter()
        .find(|l| l["underlay_ip"] == underlay.to_string())
    else {
        fail(
            ov,
            &format!("no lease for the Tapestry cell at {underlay}: {v}"),
        );
    };
    let subnet = l["overlay_subnet"].as_str().unwrap_or_default().to_string();
    let base: Ipv4Addr = subnet
        .split('/')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fail(ov, &format!("lease without a valid overlay_subnet: {l}")));
    let o = base.octets();
    let vtep_ip = Ipv4Addr::new(o[0], o[1], o[2], 0);
    let mac = l["overlay_hardware_addr"]
        .as_str()
        .map(|s| s.to_lowercase())
        .unwrap_or_else(|| vtep_mac(vtep_ip));
    assert_eq!(
        mac,
        vtep_mac(vtep_ip),
        "overlay_hardware_addr of {l} is not ee:ee:<VTEP IP>"
    );
    (subnet, vtep_ip, mac)
}

fn socat_server(ov: &mut Overlay, ns: &str, port: u16, reply: &str) {
    socat_listen(ov, ns, port, &format!("echo {reply}"));
}

/// A socat server in `ns` on `port` that runs `system` (a shell command) for each connection.
fn socat_listen(ov: &mut Overlay, ns: &str, port: u16, system: &str) {
    if let Err(e) = ov.tb.spawn_cmd(
        ns,
        &format!("socat-{ns}-{port}"),
        "socat",
        &[
            &format!("TCP-LISTEN:{port},fork,reuseaddr"),
            &format!("SYSTEM:{system}"),
        ],
    ) {
        fail(ov, &format!("{e:#}"));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let out = run_in(ov, ns, "ss", &["-ltn"]);
        if out.lines().any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fail(ov, &format!("socat in {ns} never listened on {port}"));
}

/// One socat client connection from `ns` to ip:port; what the server said, or None. (`-t 0.1`:
/// after the server's EOF, wait 0.1 s instead of socat's default 0.5 s, so timings mean something.)
fn socat_tcp(ov: &Overlay, ns: &str, ip: Ipv4Addr, port: u16) -> Option<String> {
    let out = ov
        .tb
        .exec(
            ns,
            "timeout",
            &[
                "5",
                "socat",
                "-T",
                "2",
                "-t",
                "0.1",
                &format!("TCP:{ip}:{port},connect-timeout=1"),
                "STDOUT",
            ],
        )
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

/// Retries until a connection succeeds (the cell may still be learning a lease or a policy).
fn wait_reply(
    ov: &Overlay,
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    limit: Duration,
) -> Option<(String, Duration)> {
    let start = Instant::now();
    loop {
        if let Some(r) = socat_tcp(ov, ns, ip, port) {
            return Some((r, start.elapsed()));
        }
        if start.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A UDP echo server (socat) in `ns` on `port`.
fn udp_echo_server(ov: &mut Overlay, ns: &str, port: u16) {
    if let Err(e) = ov.tb.spawn_cmd(
        ns,
        &format!("socat-udp-{ns}-{port}"),
        "socat",
        &[&format!("UDP-LISTEN:{port},fork,reuseaddr"), "SYSTEM:cat"],
    ) {
        fail(ov, &format!("{e:#}"));
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let out = run_in(ov, ns, "ss", &["-lun"]);
        if out.lines().any(|l| {
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.ends_with(&format!(":{port}")))
        }) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    fail(ov, &format!("socat in {ns} never listened on UDP {port}"));
}

/// A datagram from `ns` to a `udp_echo_server` at ip:port and its echo back, retried for up to
/// 10 s (the cell may still be learning a policy). Both legs carry the sender's UDP checksum,
/// partial from the kernel side under its default offloads.
fn udp_echo(ov: &Overlay, ns: &str, ip: Ipv4Addr, port: u16) {
    let msg = format!("udp-from-{ns}");
    let cmd = format!("echo {msg} | timeout 5 socat -T 1 - UDP:{ip}:{port}");
    let start = Instant::now();
    loop {
        let out = ov
            .tb
            .exec(ns, "sh", &["-c", &cmd])
            .unwrap_or_else(|e| fail(ov, &format!("{e:#}")));
        if String::from_utf8_lossy(&out.stdout).trim() == msg {
            println!("UDP {ns} -> {ip}:{port} and back ({:?})", start.elapsed());
            return;
        }
        if start.elapsed() > Duration::from_secs(10) {
            fail(
                ov,
                &format!("UDP {ns} -> {ip}:{port}: no echo ({})", out.status),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(h, 16).unwrap_or_default();
    }
    m
}

/// Sends, from the kernel cell's underlay address, one VXLAN datagram as its silk-vtep would
/// (VNI 1, K's tag, inner MACs of the two VTEPs) carrying a TCP SYN from K to T:8080 whose
/// window was damaged after the checksum was computed. Tapestry must drop it and count it.
fn inject_corrupted(ov: &Overlay, t_ip: Ipv4Addr, t_mac: &str, k_tag: u16) {
    use tapestry_switch::wire::{ethernet, ipv4, tcp, vxlan_gbp};
    let mut d = vec![0u8; 8 + 14 + 20 + 20];
    vxlan_gbp::Repr {
        vni: 1,
        group_policy_id: Some(k_tag),
        dont_learn: false,
        policy_applied: false,
    }
    .emit(&mut vxlan_gbp::Packet::new_unchecked(&mut d[..8]));
    ethernet::Repr {
        dst: mac_bytes(t_mac),
        src: mac_bytes(&vtep_mac(KERNEL_VTEP)),
        ethertype: ethernet::ETHERTYPE_IPV4,
    }
    .emit(&mut ethernet::Frame::new_unchecked(&mut d[8..]));
    ipv4::Repr {
        src: K_CONTAINER,
        dst: t_ip,
        protocol: ipv4::PROTO_TCP,
        payload_len: 20,
        ttl: 63,
        tos: 0,
        ident: 7,
        dont_frag: true,
    }
    .emit(&mut ipv4::Packet::new_unchecked(&mut d[22..]));
    tcp::Repr {
        src_port: 45678,
        dst_port: 8080,
        seq: 1,
        ack: 0,
        flags: tcp::SYN,
        window: 1000,
    }
    .emit(&mut tcp::Packet::new_unchecked(&mut d[42..]));
    tcp::Packet::new_unchecked(&mut d[42..]).fill_checksum(K_CONTAINER, t_ip);
    d[42 + 15] ^= 0x01;
    let path = std::env::temp_dir().join(format!("tpi-corrupt-{}.bin", std::process::id()));
    std::fs::write(&path, &d).unwrap_or_else(|e| fail(ov, &format!("writing {path:?}: {e}")));
    let to = format!("UDP-SENDTO:{}:4789", ov.cells[0].underlay);
    let from = format!("OPEN:{}", path.display());
    run_in(ov, "kcell", "socat", &["-u", &from, &to]);
    let _ = std::fs::remove_file(&path);
}

/// `BULK` bytes of pseudo-random data in a file, and their SHA-256 (from `sha256sum`).
const BULK: usize = 8 << 20;

fn bulk_file(ov: &Overlay, name: &str) -> (std::path::PathBuf, String) {
    let path = std::env::temp_dir().join(format!("{name}-{}.bin", std::process::id()));
    // xorshift64: incompressible enough, and no dependency.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut data = Vec::with_capacity(BULK);
    while data.len() < BULK {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        data.extend_from_slice(&x.to_le_bytes());
    }
    std::fs::write(&path, &data).unwrap_or_else(|e| fail(ov, &format!("writing {path:?}: {e}")));
    let out = Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap_or_else(|e| fail(ov, &format!("sha256sum: {e}")));
    let digest = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    assert_eq!(digest.len(), 64, "sha256sum of {path:?} printed {out:?}");
    (path, digest)
}

/// Sends the file to ip:port from `ns` (a `socat_listen` server running `sha256sum`) and checks
/// that the digest the server computed is the file's: every byte arrived, in order. Retries a
/// connection that does not open for up to 10 s (the cell may still be learning a policy); a
/// wrong digest fails at once.
fn bulk_transfer(
    ov: &Overlay,
    ns: &str,
    ip: Ipv4Addr,
    port: u16,
    file: &(std::path::PathBuf, String),
) {
    let cmd = format!(
        "timeout 60 socat -T 20 -t 20 - TCP:{ip}:{port},connect-timeout=2 < {}",
        file.0.display()
    );
    let start = Instant::now();
    loop {
        let t = Instant::now();
        let out = ov
            .tb
            .exec(ns, "sh", &["-c", &cmd])
            .unwrap_or_else(|e| fail(ov, &format!("{e:#}")));
        let took = t.elapsed();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let got = stdout.split_whitespace().next().unwrap_or_default();
        if out.status.success() && got == file.1 {
            println!(
                "{ns} -> {ip}:{port}: {} MB arrived intact in {took:?}",
                BULK >> 20
            );
            return;
        }
        if !got.is_empty() || start.elapsed() > Duration::from_secs(10) {
            fail(
                ov,
                &format!(
                    "{} MB from {ns} to {ip}:{port}: the server's digest is {got:?}, the file's {} ({}; stderr: {})",
                    BULK >> 20,
                    file.1,
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Denied: two attempts, neither gets an answer.
fn denied(ov: &Overlay, ns: &str, ip: Ipv4Addr, port: u16) -> bool {
    (0..2).all(|_| socat_tcp(ov, ns, ip, port).is_none())
}

/// A child process killed when dropped (tshark must not outlive a failed test).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One decoded VXLAN packet: (flags, Group Policy ID, VNI).
type Vxlan = (u32, u32, u32);

fn parse_num(s: &str) -> Option<u32> {
    let s = s.trim();
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// Captures VXLAN from the Tapestry cell's underlay IP on the kernel cell's ul0 while `traffic`
/// runs; returns what tshark decoded and its stderr.
fn capture(ov: &Overlay, from: Ipv4Addr, traffic: impl FnOnce()) -> (Vec<Vxlan>, String) {
    let filter = format!("udp port 4789 and src host {from}");
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ov.tb.ns_name("kcell"),
            "tshark",
            "-l",
            "-n",
            "-i",
            "ul0",
            "-f",
            &filter,
        ])
        .args([
            "-d",
            "udp.port==4789,vxlan",
            "-T",
            "fields",
            "-e",
            "vxlan.flags",
            "-e",
            "vxlan.gbp",
            "-e",
            "vxlan.vni",
        ])
        .args(["-c", "20", "-a", "duration:8"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| fail(ov, &format!("starting tshark: {e}")));
    let mut child = KillOnDrop(child);
    let stderr = child.0.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // Wait until tshark is capturing before sending anything.
    let start = Instant::now();
    let mut started = false;
    while !started && start.elapsed() < Duration::from_secs(20) {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => started = line.contains("Capturing on"),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    if !started {
        drop(child);
        let err = reader.join().unwrap_or_default();
        fail(ov, &format!("tshark did not start capturing: {err}"));
    }
    std::thread::sleep(Duration::from_millis(300));
    traffic();
    // -c 20 or -a duration:8 ends it; give it a little longer, then kill it.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.0.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.0.kill();
    let mut out = String::new();
    if let Some(mut so) = child.0.stdout.take() {
        let _ = so.read_to_string(&mut out);
    }
    drop(child);
    let err = reader.join().unwrap_or_default();
    let pkts = out
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 3).then(|| {
                Some((
                    parse_num(f[0])?,
                    parse_num(f[1]).unwrap_or(0),
                    parse_num(f[2])?,
                ))
            })?
        })
        .collect();
    (pkts, err)
}

/// The kernel cell with its offloads as the kernel sets them up (partial inner checksums).
#[test]
#[ignore = "needs root (network namespaces, a kernel vxlan device); scripts/test.sh runs it as root"]
fn e2e_kernel_interop() {
    interop("tpi", KernelOffloads::Default);
}

/// The kernel cell with TX checksum offload off (complete inner checksums).
#[test]
#[ignore = "needs root (network namespaces, a kernel vxlan device); scripts/test.sh runs it as root"]
fn e2e_kernel_interop_tx_checksum_off() {
    interop("tpioff", KernelOffloads::TxChecksumOff);
}

fn interop(prefix: &str, offloads: KernelOffloads) {
    assert!(
        is_root(),
        "the interop test needs root (network namespaces, a kernel vxlan device)"
    );
    for tool in [
        "socat",
        "tshark",
        "iptables",
        "bridge",
        "ss",
        "ethtool",
        "nstat",
        "sha256sum",
    ] {
        assert!(have(tool), "{tool} is needed for the interop test (apt-get install socat tshark iptables iproute2 ethtool)");
    }

    println!("kernel cell offloads: {offloads:?}");
    let mut ov = Overlay::start(prefix, bin(), 1, &[])
        .expect("starting the control plane and one Tapestry cell");
    let t_ip = match ov.add_container(0, "tc", "T", "space-t") {
        Ok(a) => a.container_ip,
        Err(e) => fail(&ov, &format!("attaching the Tapestry container: {e:#}")),
    };
    println!(
        "Tapestry container (app T): {t_ip} on cell1 ({})",
        ov.cells[0].underlay
    );

    // The kernel Silk cell, registered as a foreign cell.
    kernel_cell(&mut ov, offloads);
    api_ok(
        &ov,
        "POST",
        "/networking/v1/external/leases",
        Some(
            json!({"underlay_ip": underlay_ip(KERNEL_HOST).to_string(), "overlay_subnet": KERNEL_SUBNET}),
        ),
    );
    let (t_subnet, t_vtep, t_mac) = tapestry_lease(&ov, ov.cells[0].underlay);
    kernel_peer(&ov, &t_subnet, t_vtep, &t_mac, ov.cells[0].underlay);
    println!(
        "kernel cell: silk-vtep {KERNEL_VTEP} ({}) at {}, container (app K) {K_CONTAINER}; route to Tapestry's {t_subnet} via {t_vtep} ({t_mac})",
        vtep_mac(KERNEL_VTEP),
        underlay_ip(KERNEL_HOST)
    );

    socat_server(&mut ov, "tc", 8080, "T-8080");
    socat_server(&mut ov, "tc", 8081, "T-8081");
    socat_server(&mut ov, "kc", 9090, "K-9090");

    // Tapestry -> kernel: the kernel side filters nothing; Tapestry must route to the registered
    // lease and admit the replies through connection tracking.
    match wait_reply(&ov, "tc", K_CONTAINER, 9090, Duration::from_secs(10)) {
        Some((r, took)) => {
            assert_eq!(r, "K-9090");
            println!("T -> K:9090 works ({took:?} after registering the lease, incl. socat's 0.1 s close wait)");
        }
        None => fail(&ov, "T -> K:9090: no TCP connection from the Tapestry container to the kernel-side container"),
    }

    // Kernel -> Tapestry, with K's tag in the GBP field from the packet mark.
    allow(&ov, "K", "T", 8080);
    let k_tag = tag_of(&ov, "K");
    let mark = format!("0x{k_tag:x}/0xffffffff");
    let mark_rule = [
        "-t",
        "mangle",
        "PREROUTING",
        "-i",
        "s-kc",
        "-j",
        "MARK",
        "--set-xmark",
        mark.as_str(),
    ];
    let iptables = |op: &str| {
        let mut a = vec![mark_rule[0], mark_rule[1], op];
        a.extend_from_slice(&mark_rule[2..]);
        run_in(&ov, "kcell", "iptables", &a);
    };
    iptables("-A");
    println!(
        "policy K -> T tcp 8080; K's tag {k_tag} ({:#06x}) set as the mark on the kernel cell",
        k_tag
    );
    match wait_reply(&ov, "kc", t_ip, 8080, Duration::from_secs(10)) {
        Some((r, took)) => {
            assert_eq!(r, "T-8080");
            println!("K -> T:8080 with K's tag admitted ({took:?} after the API call, incl. socat's 0.1 s close wait)");
        }
        None => fail(&ov, "K -> T:8080 with policy and K's tag was not admitted"),
    }
    assert!(
        denied(&ov, "kc", t_ip, 8081),
        "K -> T:8081 has no policy but was admitted"
    );
    println!("K -> T:8081 (no policy) denied");

    iptables("-D");
    assert!(
        denied(&ov, "kc", t_ip, 8080),
        "K -> T:8080 without the mark (Group Policy ID 0) was admitted"
    );
    println!("K -> T:8080 without the mark (Group Policy ID 0) denied");
    iptables("-A");
    if wait_reply(&ov, "kc", t_ip, 8080, Duration::from_secs(5)).is_none() {
        fail(
            &ov,
            "K -> T:8080 not admitted again after restoring the mark",
        );
    }

    // Bulk data both ways: from the kernel side, TSO super-frames split on the way (with partial
    // inner checksums under the default offloads); to it, Tapestry's own segmentation.
    let file = bulk_file(&ov, prefix);
    socat_listen(&mut ov, "tc", 8082, "sha256sum");
    socat_listen(&mut ov, "kc", 9092, "sha256sum");
    allow(&ov, "K", "T", 8082);
    bulk_transfer(&ov, "kc", t_ip, 8082, &file);
    bulk_transfer(&ov, "tc", K_CONTAINER, 9092, &file);
    let _ = std::fs::remove_file(&file.0);
    // UDP both ways (a policy K -> T udp 8083; T -> K is not filtered on the kernel side).
    udp_echo_server(&mut ov, "tc", 8083);
    udp_echo_server(&mut ov, "kc", 9093);
    if let Err(e) = ov.allow("K", "T", "udp", 8083, 8083) {
        fail(&ov, &format!("{e:#}"));
    }
    udp_echo(&ov, "kc", t_ip, 8083);
    udp_echo(&ov, "tc", K_CONTAINER, 9093);
    // The two variants really differ: partial checksums arrived (and were completed) only with
    // the kernel side's default offloads; none was wrong.
    let status = ov
        .cell_status(0)
        .unwrap_or_else(|e| fail(&ov, &format!("cell status: {e:#}")));
    let completed = status["totals"]["partial_checksums_completed"]
        .as_u64()
        .unwrap_or_else(|| fail(&ov, "cell status has no totals.partial_checksums_completed"));
    let bad = status["drops"]["bad_l4_checksum"].as_u64().unwrap_or(0);
    println!("partial inner checksums completed by the Tapestry cell: {completed}; bad_l4_checksum drops: {bad}");
    match offloads {
        KernelOffloads::Default if completed == 0 => fail(
            &ov,
            "no partial inner checksum arrived from the kernel side with its default offloads",
        ),
        KernelOffloads::TxChecksumOff if completed != 0 => fail(
            &ov,
            &format!("{completed} partial inner checksums arrived with TX checksum offload off"),
        ),
        _ => {}
    }
    assert_eq!(bad, 0, "bad_l4_checksum drops on a clean underlay");
    // A corrupted segment (a wrong checksum that is not a partial one) is dropped and counted.
    inject_corrupted(&ov, t_ip, &t_mac, k_tag);
    let start = Instant::now();
    loop {
        let st = ov
            .cell_status(0)
            .unwrap_or_else(|e| fail(&ov, &format!("cell status: {e:#}")));
        let bad = st["drops"]["bad_l4_checksum"].as_u64().unwrap_or(0);
        if bad == 1 {
            println!("a corrupted TCP segment from the kernel cell's address: dropped, bad_l4_checksum 1");
            break;
        }
        if bad > 1 || start.elapsed() > Duration::from_secs(5) {
            fail(
                &ov,
                &format!("bad_l4_checksum is {bad} after one corrupted segment"),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // What Tapestry puts on the wire, decoded by tshark: give T a tag (policy T -> K), then
    // capture T -> K traffic on the kernel cell's underlay interface.
    allow(&ov, "T", "K", 9090);
    let t_tag = tag_of(&ov, "T");
    println!("policy T -> K tcp 9090; T's tag {t_tag}");
    let cell_ip = ov.cells[0].underlay;
    let mut last = (vec![], String::new());
    let mut ok = false;
    // The cell learns T's tag from the feed; a capture that started before that may show the old
    // one, so try a few times.
    for attempt in 1..=3 {
        let (pkts, err) = capture(&ov, cell_ip, || {
            for _ in 0..3 {
                let _ = socat_tcp(&ov, "tc", K_CONTAINER, 9090);
            }
        });
        let shown: Vec<String> = pkts
            .iter()
            .map(|(f, g, v)| format!("{f:#06x}/{g}/{v}"))
            .collect();
        println!(
            "capture {attempt}: {} VXLAN packets from {cell_ip} (flags/gbp/vni): {}",
            pkts.len(),
            shown.join(" ")
        );
        ok = pkts.iter().any(|&(flags, gbp, vni)| {
            flags & 0x8800 == 0x8800 && gbp == u32::from(t_tag) && vni == 1
        });
        last = (pkts, err);
        if ok {
            break;
        }
    }
    let (pkts, err) = last;
    if !ok {
        fail(
            &ov,
            &format!(
                "tshark saw no VXLAN packet from the Tapestry cell with flags G|I (0x8800), Group Policy ID {t_tag} and VNI 1: {pkts:?}\ntshark: {err}"
            ),
        );
    }
    for &(flags, _, vni) in &pkts {
        assert_eq!(vni, 1, "Tapestry sent VNI {vni}: {pkts:?}");
        assert_eq!(
            flags & 0x0800,
            0x0800,
            "Tapestry sent a VXLAN header without the I flag: {flags:#06x}"
        );
    }
    let tagged: Vec<_> = pkts.iter().filter(|p| p.1 == u32::from(t_tag)).collect();
    println!(
        "tshark decodes Tapestry's packets as VXLAN: flags {:#06x} (G and I), Group Policy ID {t_tag} (T's tag), VNI 1 ({} of {} packets)",
        tagged[0].0,
        tagged.len(),
        pkts.len()
    );
}
