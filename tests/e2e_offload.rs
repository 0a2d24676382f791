//! End-to-end (root): bulk TCP, small UDP and UDP GSO sends across the overlay with offloads on (virtio-net
//! super-frames, UDP GSO/GRO, coalescing) and with `--no-offload`, cross-cell and same-cell, each
//! transfer checked by sha256 at the far end. Namespaces are prefixed `tpe2o`/`tpe2n` and removed
//! by the testbed's Drop.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use tapestry::demo::overlay::Overlay;
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

const BYTES: usize = 30_000_000;

fn wait_listen(ov: &Overlay, ns: &str, port: u16) {
    let p = format!(":{port}");
    for _ in 0..200 {
        let o = ov.tb.exec(ns, "ss", &["-ltnu"]).unwrap();
        if String::from_utf8_lossy(&o.stdout).contains(&p) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{ns} never listened on {port}");
}

fn sha256(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Sends the payload file from `from` to `to_ip:port` (a sink in `to`), returns the sha256 the
/// sink computed.
fn transfer(ov: &mut Overlay, from: &str, to: &str, to_ip: Ipv4Addr, port: u16) -> String {
    let dir = ov.tb.dir().to_path_buf();
    let sum = dir.join(format!("sum-{to}-{port}"));
    ov.tb
        .spawn_cmd(
            to,
            &format!("sink-{to}-{port}"),
            "sh",
            &[
                "-c",
                &format!(
                    "socat -u TCP-LISTEN:{port},reuseaddr STDOUT | sha256sum > {}.tmp && mv {0}.tmp {0}",
                    sum.display()
                ),
            ],
        )
        .unwrap();
    wait_listen(ov, to, port);
    let payload = dir.join("payload");
    let mut sent = false;
    for _ in 0..100 {
        let out = ov
            .tb
            .exec(
                from,
                "sh",
                &[
                    "-c",
                    &format!(
                        "socat -u FILE:{} TCP:{to_ip}:{port},connect-timeout=1",
                        payload.display()
                    ),
                ],
            )
            .unwrap();
        if out.status.success() {
            sent = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sent, "{from} -> {to_ip}:{port}: no connection");
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(&sum) {
            return s.split_whitespace().next().unwrap_or_default().to_string();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{to} never finished receiving on {port}");
}

/// Starts a socat UDP sink on `port` in `to`; returns the file it appends the datagrams to.
fn udp_sink(ov: &mut Overlay, to: &str, port: u16) -> std::path::PathBuf {
    let got = ov.tb.dir().join(format!("udp-{to}-{port}"));
    ov.tb
        .spawn_cmd(
            to,
            &format!("udp-{to}-{port}"),
            "sh",
            &[
                "-c",
                &format!("socat -u UDP-RECV:{port} STDOUT > {}", got.display()),
            ],
        )
        .unwrap();
    wait_listen(ov, to, port);
    got
}

/// Runs a python3 sender in `from`, then waits until the sink file `got` has `want` bytes, or
/// has stopped growing for 300 ms (datagrams lost on the way never come).
fn python_send(ov: &Overlay, from: &str, script: &str, got: &std::path::Path, want: u64) {
    let out = ov.tb.exec(from, "python3", &["-c", script]).unwrap();
    assert!(
        out.status.success(),
        "python3 sender: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let size = || std::fs::metadata(got).map(|m| m.len()).unwrap_or(0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut last, mut since) = (size(), Instant::now());
    while last < want && since.elapsed() < Duration::from_millis(300) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = size();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Sends 2000 small UDP datagrams a -> b and counts what arrived.
fn udp_small(ov: &mut Overlay, from: &str, to: &str, to_ip: Ipv4Addr, port: u16) -> usize {
    let got = udp_sink(ov, to, port);
    // Each datagram is one 64-byte line; a short pause now and then keeps the receiver's socket
    // buffer from overflowing.
    python_send(
        ov,
        from,
        &format!(
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nfor i in range(2000):\n    s.sendto(b'x'*63+b'\\n',('{to_ip}',{port}))\n    if i%100==99: time.sleep(0.01)\n"
        ),
        &got,
        2000 * 64,
    );
    std::fs::read(&got).map(|b| b.len() / 64).unwrap_or(0)
}

/// Sends 400 UDP datagrams of 1000 bytes as 40 UDP_SEGMENT (GSO) sends of 10, from `from` to a
/// socat sink in `to`; returns how many arrived whole and in the right shape.
fn udp_gso(ov: &mut Overlay, from: &str, to: &str, to_ip: Ipv4Addr, port: u16) -> usize {
    let got = udp_sink(ov, to, port);
    // setsockopt(SOL_UDP, UDP_SEGMENT, 1000): each sendto of 10,000 bytes leaves as 10 datagrams.
    python_send(
        ov,
        from,
        &format!(
            "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(17,103,1000)\nfor b in range(40):\n    s.sendto(b''.join(b'%08d'%(b*10+i)+b'x'*991+b'\\n' for i in range(10)),('{to_ip}',{port}))\n    time.sleep(0.005)\n"
        ),
        &got,
        400 * 1000,
    );
    let data = std::fs::read(&got).unwrap_or_default();
    assert_eq!(data.len() % 1000, 0, "a datagram arrived cut or merged");
    let mut seen = std::collections::HashSet::new();
    for d in data.chunks(1000) {
        let n: usize = std::str::from_utf8(&d[..8]).unwrap().parse().unwrap();
        assert!(d[8..999].iter().all(|&c| c == b'x') && d[999] == b'\n');
        seen.insert(n);
    }
    seen.len()
}

/// With offloads on and a kernel that has USO (6.2+), the container's TAP takes UDP super-
/// datagrams (tx-udp-segmentation on), so `udp_gso` exercises the switch's USO path.
fn expect_uso(ov: &Overlay, ns: &str) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut v = release
        .trim()
        .split(['.', '-'])
        .map(|x| x.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    if (major, minor) < (6, 2) {
        return;
    }
    let out = ov.tb.exec(ns, "ethtool", &["-k", "eth0"]).unwrap();
    let k = String::from_utf8_lossy(&out.stdout);
    assert!(
        k.contains("tx-udp-segmentation: on"),
        "USO not offered on {ns}'s TAP: {k}"
    );
}

fn scenario(prefix: &str, cell_args: &[&str]) {
    let mut ov = Overlay::start(prefix, bin(), 2, cell_args).expect("overlay starts");
    let _a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    let c = ov.add_container(0, "c", "app-C", "s1").unwrap();
    for dst in ["app-B", "app-C"] {
        ov.allow("app-A", dst, "tcp", 9000, 9001).unwrap();
        ov.allow("app-A", dst, "udp", 9002, 9003).unwrap();
    }
    let payload = ov.tb.dir().join("payload");
    let out = std::process::Command::new("sh")
        .args([
            "-c",
            &format!("head -c {BYTES} /dev/urandom > {}", payload.display()),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let want = sha256(&payload);

    assert_eq!(
        transfer(&mut ov, "a", "b", b.container_ip, 9000),
        want,
        "cross-cell"
    );
    assert_eq!(
        transfer(&mut ov, "a", "c", c.container_ip, 9000),
        want,
        "same cell"
    );
    // A second flow on a new connection (coalescer and conntrack state of the first are gone).
    assert_eq!(
        transfer(&mut ov, "a", "b", b.container_ip, 9001),
        want,
        "cross-cell, second flow"
    );
    let n = udp_small(&mut ov, "a", "b", b.container_ip, 9002);
    assert!(n >= 1900, "only {n} of 2000 small UDP datagrams arrived");
    if cell_args.is_empty() {
        expect_uso(&ov, "a");
    }
    for (to, ip, what) in [
        ("b", b.container_ip, "cross-cell"),
        ("c", c.container_ip, "same cell"),
    ] {
        let n = udp_gso(&mut ov, "a", to, ip, 9003);
        assert!(
            n >= 380,
            "{what}: only {n} of 400 UDP GSO datagrams arrived"
        );
    }

    for cell in 0..2 {
        let st = ov.cell_status(cell).unwrap();
        let drops = &st["drops"];
        for reason in [
            "bad_offload",
            "malformed_l4",
            "bad_l4_checksum",
            "truncated",
            "frame_too_large",
        ] {
            assert_eq!(
                drops[reason].as_u64().unwrap_or(0),
                0,
                "cell {cell} dropped {reason}: {st}"
            );
        }
    }
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_bulk_with_offloads() {
    assert!(
        is_root(),
        "end-to-end tests need root (network namespaces): run scripts/test.sh as root"
    );
    scenario("tpe2o", &[]);
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_bulk_no_offload() {
    assert!(
        is_root(),
        "end-to-end tests need root (network namespaces): run scripts/test.sh as root"
    );
    scenario("tpe2n", &["--no-offload"]);
}
