//! End-to-end tests (root) of the cell's local stack: egress under application security groups
//! and net-in port mappings. An "external" namespace on the underlay plays the outside world
//! (198.18.0.200: a TCP server that answers with the caller's address, a UDP echo, ping).
//! Namespaces are prefixed `tpeg`; the testbed's Drop removes them on every exit path.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{json, Value};
use tapestry::demo::overlay::{in_netns, serve_echo, serve_udp_echo, Overlay};
use tapestry::demo::testbed::{is_root, underlay_ip};

const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// A TCP server in `ns` that writes the caller's address and closes.
fn serve_peer(ns: &Path, port: u16) {
    let l = in_netns(ns, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        ))?)
    })
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let peer = c.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = c.write_all(peer.as_bytes());
        }
    });
}

/// Connects from `ns` and reads until EOF. `Err` carries the io error kind of a failure.
fn tcp_read(ns: &Path, dst: SocketAddrV4) -> Result<String, std::io::ErrorKind> {
    in_netns(ns, move || {
        Ok(
            match TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(3)) {
                Ok(mut s) => {
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    let mut out = String::new();
                    match s.read_to_string(&mut out) {
                        Ok(_) => Ok(out),
                        Err(e) => Err(e.kind()),
                    }
                }
                Err(e) => Err(e.kind()),
            },
        )
    })
    .unwrap()
}

/// One UDP request/response from `ns`; None when nothing came back in 1 s.
fn udp_echo(ns: &Path, dst: SocketAddrV4) -> Option<String> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.connect(dst)?;
        s.send(b"marco")?;
        let mut b = [0u8; 64];
        Ok(s.recv(&mut b)
            .ok()
            .map(|n| String::from_utf8_lossy(&b[..n]).into_owned()))
    })
    .unwrap()
}

fn ping(ov: &Overlay, ns: &str, dst: Ipv4Addr) -> bool {
    ov.tb
        .exec(ns, "ping", &["-c", "1", "-W", "1", &dst.to_string()])
        .map(|o| {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("exec of"), "ping could not run: {err}");
            o.status.success()
        })
        .unwrap()
}

fn put_asg(ov: &Overlay, name: &str, rules: Value, spaces: &[&str], global: bool) {
    put_asg_for(ov, name, rules, spaces, &[], global)
}

/// Creates or replaces an ASG bound to `running` spaces for running apps and `staging` spaces
/// for staging, and globally for running ones if `global`.
fn put_asg_for(
    ov: &Overlay,
    name: &str,
    rules: Value,
    running: &[&str],
    staging: &[&str],
    global: bool,
) {
    let body = json!({
        "name": name,
        "rules": rules,
        "globally_enabled": {"running": global, "staging": false},
        "running_spaces": running,
        "staging_spaces": staging,
    });
    let (code, v) = ov
        .api(
            "PUT",
            &format!("/networking/v1/external/security_groups/{name}"),
            Some(body.clone()),
        )
        .unwrap();
    if code == 404 {
        let (code, v) = ov
            .api(
                "POST",
                "/networking/v1/external/security_groups",
                Some(body),
            )
            .unwrap();
        assert!(
            code == 200 || code == 201,
            "creating ASG {name}: {code} {v}"
        );
    } else {
        assert!(code == 200, "updating ASG {name}: {code} {v}");
    }
}

fn delete_asg(ov: &Overlay, name: &str) {
    let (code, v) = ov
        .api(
            "DELETE",
            &format!("/networking/v1/external/security_groups/{name}"),
            None,
        )
        .unwrap();
    assert!(
        code == 200 || code == 204,
        "deleting ASG {name}: {code} {v}"
    );
}

fn drops(ov: &Overlay, reason: &str) -> u64 {
    ov.cell_status(0).unwrap()["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    start.elapsed()
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_egress_under_asgs() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tpeg", bin(), 1, &[]).unwrap();
    let ext = ov.tb.add_host("ext", EXT, 1500).unwrap();
    serve_peer(&ext, 8000);
    serve_peer(&ext, 8001);
    serve_peer(&ext, 9005);
    serve_udp_echo(&ext, 7000).unwrap();
    let a = ov.add_container(0, "a", "app-a", "space-1").unwrap();
    let b = ov.add_container(0, "b", "app-b", "space-2").unwrap();
    let a_ns = ov.tb.ns_path("a");
    let b_ns = ov.tb.ns_path("b");
    let cell_ip = underlay_ip(1);
    let to = |p: u16| SocketAddrV4::new(EXT, p);

    // Default deny: refused at once (ICMP port unreachable), not a timeout.
    let t = Instant::now();
    assert_eq!(
        tcp_read(&a_ns, to(8000)),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a denied connect took {:?}",
        t.elapsed()
    );
    let n0 = drops(&ov, "asg_no_rule");
    assert!(n0 >= 1);
    assert!(udp_echo(&a_ns, to(7000)).is_none());
    let n1 = drops(&ov, "asg_no_rule");
    assert!(n1 > n0, "udp not counted");
    assert!(!ping(&ov, "a", EXT));
    let n2 = drops(&ov, "asg_no_rule");
    assert!(
        n2 > n1,
        "icmp not counted: {}",
        ov.cell_status(0).unwrap()["drops"]
    );

    // A space-bound TCP rule for one port, with logging.
    put_asg(
        &ov,
        "web",
        json!([{"protocol": "tcp", "destination": "198.18.0.200", "ports": "8000", "log": true}]),
        &["space-1"],
        false,
    );
    let took = wait_until("the ASG to apply", Duration::from_secs(5), || {
        tcp_read(&a_ns, to(8000)).is_ok()
    });
    eprintln!("ASG bind -> enforced on the cell: {took:?}");
    // MASQUERADE: the server sees the cell's address.
    let peer = tcp_read(&a_ns, to(8000)).unwrap();
    assert!(
        peer.starts_with(&format!("{cell_ip}:")),
        "server saw {peer}"
    );
    // Other ports, and other spaces, stay denied.
    assert_eq!(
        tcp_read(&a_ns, to(8001)),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(
        tcp_read(&b_ns, to(8000)),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    // The log line.
    let log_path = ov.tb.dir().join("cell1").join("asg.log");
    wait_until("an asg.log line", Duration::from_secs(5), || {
        std::fs::read_to_string(&log_path).is_ok_and(|s| s.contains("\"app\":\"app-a\""))
    });
    let line = std::fs::read_to_string(&log_path).unwrap();
    let v: Value = serde_json::from_str(line.lines().next().unwrap()).unwrap();
    assert_eq!(v["container"], "a");
    assert_eq!(v["space"], "space-1");
    assert_eq!(v["destination"], "198.18.0.200");
    assert_eq!(v["port"], 8000);
    assert_eq!(v["protocol"], "tcp");
    assert_eq!(v["group"], "web");

    // Port ranges, IP ranges, comma lists, UDP and ICMP type/code.
    put_asg(
        &ov,
        "web",
        json!([
            {"protocol": "tcp", "destination": "198.18.0.100-198.18.0.210", "ports": "9000-9010"},
            {"protocol": "tcp", "destination": "10.0.0.1,198.18.0.200/32", "ports": "8000,8001"},
            {"protocol": "udp", "destination": "198.18.0.0/24", "ports": "7000"},
            {"protocol": "icmp", "destination": "198.18.0.200", "type": 8, "code": -1},
        ]),
        &["space-1"],
        false,
    );
    wait_until("the new rules", Duration::from_secs(5), || {
        tcp_read(&a_ns, to(8001)).is_ok()
    });
    assert!(tcp_read(&a_ns, to(9005)).is_ok());
    assert_eq!(udp_echo(&a_ns, to(7000)).as_deref(), Some("marco"));
    assert!(ping(&ov, "a", EXT));
    // A closed port on an allowed destination: the host's refusal reaches the container.
    put_asg(
        &ov,
        "wide",
        json!([{"protocol": "all", "destination": "0.0.0.0-255.255.255.255"}]),
        &[],
        true,
    );
    wait_until("the global ASG", Duration::from_secs(5), || {
        tcp_read(&b_ns, to(8000)).is_ok()
    });
    let t = Instant::now();
    assert_eq!(
        tcp_read(&a_ns, to(9999)),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // An address nobody answers for: the host's EHOSTUNREACH reaches the container as an ICMP
    // host unreachable, after the host's own ARP attempts, not a hang.
    let t = Instant::now();
    let nobody = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 250), 80);
    let r = in_netns(&a_ns, move || {
        Ok(TcpStream::connect_timeout(&SocketAddr::V4(nobody), Duration::from_secs(15)).map(drop))
    })
    .unwrap();
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::HostUnreachable)
    );
    eprintln!("unreachable destination reported after {:?}", t.elapsed());
    // deny-networks beats a wide-open ASG (169.254.0.0/16 by default: cloud metadata).
    let meta = SocketAddrV4::new(Ipv4Addr::new(169, 254, 169, 254), 80);
    assert_eq!(
        tcp_read(&a_ns, meta),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert!(drops(&ov, "asg_deny_networks") >= 1);
    // The gateway answers ping.
    assert!(ping(&ov, "a", Ipv4Addr::new(169, 254, 0, 1)));
    // A wide-open ASG does not open the overlay: b has no policy to a.
    let a_ip = a.container_ip;
    let _listener = in_netns(&a_ns, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(a_ip, 8080))?)
    })
    .unwrap();
    assert_eq!(
        tcp_read(&b_ns, SocketAddrV4::new(a_ip, 8080)),
        Err(std::io::ErrorKind::TimedOut)
    );
    let _ = b;

    // An established connection survives the unbinding; new ones are refused.
    serve_echo(&ext, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 7002)).unwrap();
    let mut s = in_netns(&a_ns, || {
        TcpStream::connect_timeout(
            &SocketAddr::V4(SocketAddrV4::new(EXT, 7002)),
            Duration::from_secs(3),
        )
        .context("connecting to the echo server")
    })
    .unwrap();
    delete_asg(&ov, "wide");
    let unbound = Instant::now();
    wait_until("the unbinding", Duration::from_secs(5), || {
        tcp_read(&b_ns, to(8000)).is_err()
    });
    eprintln!("ASG delete -> enforced: {:?}", unbound.elapsed());
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"still here").unwrap();
    let mut back = [0u8; 10];
    s.read_exact(&mut back).unwrap();
    assert_eq!(&back, b"still here");

    // Status lists the flows with the rule that admitted them.
    let st = ov.cell_status(0).unwrap();
    let flows = st["stack_flows"].as_array().unwrap();
    assert!(
        flows
            .iter()
            .any(|f| f["remote"] == "198.18.0.200:7002" && f["direction"] == "egress"),
        "{flows:?}"
    );
    drop(s);
}

/// `tapestry container up` with `--net-in` mappings; returns its JSON output.
fn container_up(ov: &mut Overlay, name: &str, app: &str, net_in: &[&str]) -> Value {
    let mut extra = vec!["--space", "space-1"];
    for m in net_in {
        extra.push("--net-in");
        extra.push(m);
    }
    container_up_with(ov, name, app, &extra)
}

/// `tapestry container up` on the only cell with extra arguments; returns its JSON output.
fn container_up_with(ov: &mut Overlay, name: &str, app: &str, extra: &[&str]) -> Value {
    ov.container_up(0, name, app, extra).unwrap()
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_net_in() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tpen", bin(), 1, &[]).unwrap();
    let ext = ov.tb.add_host("ext", EXT, 1500).unwrap();
    let up = container_up(
        &mut ov,
        "web",
        "app-web",
        &["61001:8080", "0:8081", "61002:5353/udp"],
    );
    let mapped = up["mapped_ports"].as_array().unwrap().clone();
    assert_eq!(mapped.len(), 3, "{up}");
    let auto = mapped
        .iter()
        .find(|m| m["ContainerPort"] == 8081)
        .and_then(|m| m["HostPort"].as_u64())
        .unwrap_or_else(|| panic!("no mapping for 8081: {up}"));
    assert!((61000..=65535).contains(&auto), "allocated {auto}");
    let web_ns = ov.tb.ns_path("web");
    serve_peer(&web_ns, 8080);
    serve_peer(&web_ns, 8081);
    serve_udp_echo(&web_ns, 5353).unwrap();
    let cell = underlay_ip(1);
    // From the external namespace: the app sees the client's real address (CF's DNAT).
    let peer = tcp_read(&ext, SocketAddrV4::new(cell, 61001)).unwrap();
    assert!(peer.starts_with(&format!("{EXT}:")), "the app saw {peer}");
    let peer = tcp_read(&ext, SocketAddrV4::new(cell, auto as u16)).unwrap();
    assert!(peer.starts_with(&format!("{EXT}:")), "the app saw {peer}");
    assert_eq!(
        udp_echo(&ext, SocketAddrV4::new(cell, 61002)).as_deref(),
        Some("marco")
    );
    // Net-in does not depend on c2c policies, and needs no ASG (none exists here).
    // Bulk both ways through a mapping.
    let big = in_netns(&ext, move || {
        let mut s = TcpStream::connect(SocketAddrV4::new(cell, 61001))?;
        let mut v = Vec::new();
        s.read_to_end(&mut v)?;
        Ok(v)
    })
    .unwrap();
    assert!(!big.is_empty());
    let st = ov.cell_status(0).unwrap();
    assert!(
        st.to_string().contains("61001"),
        "status lists the mapping: {st}"
    );

    // Kept across a cell restart.
    ov.kill_cell(0);
    ov.start_cell(0).unwrap();
    let mut ok = false;
    for _ in 0..200 {
        if tcp_read(&ext, SocketAddrV4::new(cell, 61001)).is_ok() {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(ok, "net-in after a cell restart");

    // Released on down.
    ov.container_down(0, "web").unwrap();
    assert_eq!(
        tcp_read(&ext, SocketAddrV4::new(cell, 61001)),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
}
