//! End-to-end tests (root): a control plane and two cells in network namespaces on a bridge
//! underlay, containers attached through the cells, and real tools (socat, ping, ip) checking
//! what the dataplane lets through. Namespaces are prefixed `tpe2e`/`tpe2r`/`tpe2c` and removed on
//! every exit path by the testbed's Drop.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::time::Duration;

use tapestry::demo::overlay::{in_netns, serve_tcp, tcp_exchange, wait_tcp, Overlay};
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// These tests are `#[ignore = "needs root ..."]`: a plain `cargo nextest run` reports them as
/// skipped; scripts/test.sh runs them as root (`--run-ignored all`). Without root they fail here.
macro_rules! require_root {
    () => {
        assert!(
            is_root(),
            "end-to-end tests need root (network namespaces): run scripts/test.sh as root"
        );
    };
}

/// socat client from `ns`: connects to ip:port and returns what the server said, or None when
/// the connection was denied (refused, timed out or unreachable). Anything else (socat missing,
/// a failed exec, another error) fails the test: it must not read as "denied".
fn socat_tcp(ov: &Overlay, ns: &str, ip: Ipv4Addr, port: u16) -> Option<String> {
    let out = ov
        .tb
        .exec(
            ns,
            "socat",
            &[
                "-T",
                "2",
                &format!("TCP:{ip}:{port},connect-timeout=1"),
                "STDOUT",
            ],
        )
        .unwrap_or_else(|e| panic!("socat in {ns}: {e:#}"));
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        is_denied(&err),
        "socat in {ns} to {ip}:{port} failed, and not because the connection was denied \
         ({}): {err}",
        out.status
    );
    None
}

/// Whether socat's error says the connection was denied rather than that socat itself failed.
fn is_denied(socat_stderr: &str) -> bool {
    ["Connection refused", "timed out", "No route to host"]
        .iter()
        .any(|m| socat_stderr.contains(m))
}

fn socat_server(ov: &mut Overlay, ns: &str, port: u16, reply: &str) {
    ov.tb
        .spawn_cmd(
            ns,
            &format!("socat-{ns}-{port}"),
            "socat",
            &[
                &format!("TCP-LISTEN:{port},fork,reuseaddr"),
                &format!("SYSTEM:echo {reply}"),
            ],
        )
        .unwrap();
}

fn wait_listen(ov: &mut Overlay, ns: &str, port: u16) {
    let ns_name = ns.to_string();
    let p = format!(":{port}");
    let tb = &mut ov.tb;
    let out = (0..100).find_map(|_| {
        let o = tb.exec(&ns_name, "ss", &["-ltnu"]).unwrap();
        assert!(
            o.status.success(),
            "ss in {ns_name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        if String::from_utf8_lossy(&o.stdout).contains(&p) {
            Some(())
        } else {
            std::thread::sleep(Duration::from_millis(20));
            None
        }
    });
    assert!(out.is_some(), "{ns} never listened on {port}");
}

fn drop_count(ov: &Overlay, cell: usize, reason: &str) -> u64 {
    ov.cell_status(cell).unwrap()["drops"][reason]
        .as_u64()
        .unwrap_or(0)
}

fn status_u64(ov: &Overlay, cell: usize, field: &str) -> u64 {
    ov.cell_status(cell).unwrap()[field].as_u64().unwrap_or(0)
}

/// Polls `cond` every 20 ms until it holds; fails the test with `what` after `limit`.
fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `tcp_exchange` failed because the connection was denied (refused, timed out, no
/// reply); any other failure (entering the namespace, ...) fails the test instead of reading as
/// "denied".
fn denied(r: anyhow::Result<String>) -> bool {
    use std::io::ErrorKind::{ConnectionRefused, HostUnreachable, TimedOut, WouldBlock};
    let Err(e) = r else { return false };
    let kind = e
        .chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>())
        .map(|io| io.kind());
    assert!(
        matches!(
            kind,
            Some(ConnectionRefused | HostUnreachable | TimedOut | WouldBlock)
        ),
        "the connection failed, and not because it was denied: {e:#}"
    );
    true
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_policy_enforcement() {
    require_root!();
    let mut ov = Overlay::start("tpe2e", bin(), 2, &[]).expect("overlay starts");
    let a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    let c = ov.add_container(0, "c", "app-C", "s1").unwrap();
    for (ns, att) in [("a", &a), ("b", &b), ("c", &c)] {
        let link = ov
            .tb
            .exec(ns, "ip", &["-o", "link", "show", "eth0"])
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout).to_string();
        assert!(
            link.contains("mtu 1450"),
            "container MTU is underlay - 50: {link}"
        );
        assert!(link.contains(&att.mac), "{link}");
        let addr = ov
            .tb
            .exec(ns, "ip", &["-o", "addr", "show", "eth0"])
            .unwrap();
        assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/32", att.container_ip)));
        let route = ov.tb.exec(ns, "ip", &["route"]).unwrap();
        assert!(String::from_utf8_lossy(&route.stdout).contains("default via 169.254.0.1"));
    }
    socat_server(&mut ov, "b", 8080, "hello-from-b");
    socat_server(&mut ov, "c", 7005, "hello-from-c");
    socat_server(&mut ov, "c", 7011, "c-7011");
    socat_server(&mut ov, "a", 8080, "hello-from-a");
    for (ns, p) in [("b", 8080), ("c", 7005), ("c", 7011), ("a", 8080)] {
        wait_listen(&mut ov, ns, p);
    }

    // Default deny, cross-cell and same-cell.
    assert_eq!(
        socat_tcp(&ov, "a", b.container_ip, 8080),
        None,
        "A->B denied before policy"
    );
    assert_eq!(
        socat_tcp(&ov, "a", c.container_ip, 7005),
        None,
        "A->C denied before policy"
    );
    assert!(drop_count(&ov, 1, "policy_denied") > 0);

    // Allow A->B: measure API call -> first admitted connection.
    let start = std::time::Instant::now();
    ov.allow("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    let (_, took) = wait_tcp(
        &ov.tb.ns_path("a"),
        SocketAddrV4::new(b.container_ip, 8080),
        Duration::from_secs(10),
    )
    .expect("A->B allowed after policy");
    let total = start.elapsed();
    println!("convergence: policy API call -> first admitted connection: {:.1} ms (API call included: {:.1} ms)",
        took.as_secs_f64() * 1e3, total.as_secs_f64() * 1e3);
    assert_eq!(
        socat_tcp(&ov, "a", b.container_ip, 8080).as_deref(),
        Some("hello-from-b\n")
    );

    // One-way: B may not open connections to A.
    assert_eq!(
        socat_tcp(&ov, "b", a.container_ip, 8080),
        None,
        "B->A denied (policy is one-way)"
    );

    // Same cell, port range.
    ov.allow("app-A", "app-C", "tcp", 7000, 7010).unwrap();
    wait_tcp(
        &ov.tb.ns_path("a"),
        SocketAddrV4::new(c.container_ip, 7005),
        Duration::from_secs(10),
    )
    .expect("A->C:7005");
    assert_eq!(
        socat_tcp(&ov, "a", c.container_ip, 7011),
        None,
        "port outside the range denied"
    );
    assert_eq!(
        socat_tcp(&ov, "b", c.container_ip, 7005),
        None,
        "B->C denied"
    );

    // ICMP echo is not a policy protocol.
    let ping = ov
        .tb
        .exec(
            "a",
            "ping",
            &["-c", "1", "-W", "1", &b.container_ip.to_string()],
        )
        .unwrap();
    assert!(!ping.status.success(), "ping A->B denied");

    // UDP.
    let udp_file = ov.tb.dir().join("udp-b.txt");
    ov.tb
        .spawn_cmd(
            "b",
            "udp-b",
            "socat",
            &[
                "-u",
                "UDP-RECV:5353",
                &format!("OPEN:{},creat,append", udp_file.display()),
            ],
        )
        .unwrap();
    wait_listen(&mut ov, "b", 5353);
    let send = |ov: &Overlay, msg: &str| {
        let out = ov
            .tb
            .exec(
                "a",
                "sh",
                &[
                    "-c",
                    &format!(
                        "echo {msg} | socat -u STDIN UDP-SENDTO:{}:5353",
                        b.container_ip
                    ),
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "sending UDP from a: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let denied_before = drop_count(&ov, 1, "policy_denied");
    send(&ov, "udp-before-policy");
    wait_until(
        "B's cell drops the UDP datagram sent before the policy",
        Duration::from_secs(5),
        || drop_count(&ov, 1, "policy_denied") > denied_before,
    );
    ov.allow("app-A", "app-B", "udp", 5353, 5353).unwrap();
    let mut got = String::new();
    for i in 0..50 {
        send(&ov, &format!("udp-after-{i}"));
        // Up to 300 ms for this datagram before the next one (the policy may not be in force yet).
        for _ in 0..15 {
            got = std::fs::read_to_string(&udp_file).unwrap_or_default();
            if got.contains("udp-after") {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if got.contains("udp-after") {
            break;
        }
    }
    assert!(
        got.contains("udp-after"),
        "UDP admitted after policy: {got:?}"
    );
    assert!(
        !got.contains("udp-before-policy"),
        "UDP denied before policy: {got:?}"
    );

    // Spoofed source address from A is dropped at A's cell.
    let spoof = Ipv4Addr::from(u32::from(a.container_ip) + 100);
    ov.tb
        .exec(
            "a",
            "ip",
            &["addr", "add", &format!("{spoof}/32"), "dev", "eth0"],
        )
        .unwrap();
    let out = ov
        .tb
        .exec(
            "a",
            "socat",
            &[
                "-T",
                "1",
                &format!("TCP:{}:8080,connect-timeout=1,bind={spoof}", b.container_ip),
                "STDOUT",
            ],
        )
        .unwrap();
    assert!(!out.status.success(), "spoofed source denied");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        is_denied(&err),
        "spoofed connection failed for another reason: {err}"
    );
    assert!(drop_count(&ov, 0, "spoofed_ip") > 0, "spoofed_ip counted");

    // A large transfer crosses cells intact (MSS/MTU are right).
    serve_tcp(&ov.tb.ns_path("b"), 8081, "x").unwrap();
    ov.allow("app-A", "app-B", "tcp", 8081, 8081).unwrap();
    wait_tcp(
        &ov.tb.ns_path("a"),
        SocketAddrV4::new(b.container_ip, 8081),
        Duration::from_secs(10),
    )
    .unwrap();
    ov.tb
        .spawn_cmd(
            "b",
            "sink",
            "sh",
            &[
                "-c",
                &format!(
                    "socat -u TCP-LISTEN:9000,reuseaddr STDOUT | sha256sum > {}/sink.sha",
                    ov.tb.dir().display()
                ),
            ],
        )
        .unwrap();
    let policies = status_u64(&ov, 1, "policies_in_force");
    ov.allow("app-A", "app-B", "tcp", 9000, 9000).unwrap();
    wait_listen(&mut ov, "b", 9000);
    wait_until(
        "B's cell enforces the policy for port 9000",
        Duration::from_secs(10),
        || status_u64(&ov, 1, "policies_in_force") > policies,
    );
    let src = ov.tb.exec("a", "sh", &["-c", &format!(
        "head -c 20000000 /dev/urandom > {d}/blob && sha256sum < {d}/blob && socat -u OPEN:{d}/blob TCP:{}:9000,connect-timeout=2",
        b.container_ip, d = ov.tb.dir().display())]).unwrap();
    assert!(
        src.status.success(),
        "transfer: {}",
        String::from_utf8_lossy(&src.stderr)
    );
    let want = String::from_utf8_lossy(&src.stdout).to_string();
    let sink = ov.tb.dir().join("sink.sha");
    let got = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&sink)
            .ok()
            .filter(|s| !s.is_empty())
    });
    assert_eq!(got.as_deref(), Some(want.as_str()), "20 MB arrived intact");

    // Revocation stops new flows and the established ones.
    let a_ns = ov.tb.ns_path("a");
    let dst = SocketAddrV4::new(b.container_ip, 8081);
    let mut conn = in_netns(&a_ns, move || {
        Ok(std::net::TcpStream::connect_timeout(
            &dst.into(),
            Duration::from_secs(1),
        )?)
    })
    .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    ov.revoke("app-A", "app-B", "tcp", 8081, 8081).unwrap();
    ov.revoke("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    let denied = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        denied(tcp_exchange(
            &a_ns,
            SocketAddrV4::new(b.container_ip, 8080),
            Duration::from_millis(100),
        ))
    });
    assert!(denied, "A->B:8080 denied after revocation");
    use std::io::{Read, Write};
    let _ = conn.write_all(b"after-revoke\n");
    let mut buf = [0u8; 64];
    let r = conn.read(&mut buf);
    assert!(
        !matches!(r, Ok(n) if n > 0),
        "established flow stopped after revocation: {r:?}"
    );
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cell_restart_and_control_outage() {
    require_root!();
    let mut ov = Overlay::start("tpe2r", bin(), 2, &[]).expect("overlay starts");
    let a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    serve_tcp(&ov.tb.ns_path("b"), 8080, "hello").unwrap();
    serve_tcp(&ov.tb.ns_path("a"), 8080, "hello").unwrap();
    ov.allow("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    let a_ns = ov.tb.ns_path("a");
    let b_ns = ov.tb.ns_path("b");
    let to_b = SocketAddrV4::new(b.container_ip, 8080);
    let to_a = SocketAddrV4::new(a.container_ip, 8080);
    wait_tcp(&a_ns, to_b, Duration::from_secs(10)).unwrap();

    // The control plane goes away: cells keep enforcing what they knew (never fail open).
    ov.tb.kill("control");
    for cell in 0..2 {
        wait_until(
            "the cells notice that the control plane is gone",
            Duration::from_secs(10),
            || ov.cell_status(cell).unwrap()["control"]["state"] == "disconnected",
        );
    }
    assert!(
        tcp_exchange(&a_ns, to_b, Duration::from_secs(1)).is_ok(),
        "allowed flow still allowed without control"
    );
    assert!(
        denied(tcp_exchange(&b_ns, to_a, Duration::from_secs(1))),
        "denied flow still denied without control"
    );

    // A cell restarts while the control plane is down: containers keep interface and address,
    // and the cell enforces its persisted view.
    ov.kill_cell(1);
    ov.start_cell(1).unwrap();
    let addr = ov
        .tb
        .exec("b", "ip", &["-o", "addr", "show", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/32", b.container_ip)));
    wait_tcp(&a_ns, to_b, Duration::from_secs(10))
        .expect("traffic resumes after the cell restarts");
    assert!(
        denied(tcp_exchange(&b_ns, to_a, Duration::from_secs(1))),
        "still denied after restart"
    );

    // Restarts with another number of dataplane workers: the persistent TAP keeps the kind
    // (multiqueue or not) it was made with, and the cell serves it either way.
    for workers in ["--workers=1", "--workers=3"] {
        ov.kill_cell(1);
        ov.cells[1].args.retain(|a| !a.starts_with("--workers"));
        ov.cells[1].args.push(workers.into());
        ov.start_cell(1).unwrap();
        wait_tcp(&a_ns, to_b, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("traffic resumes after a restart with {workers}: {e}"));
        assert!(
            denied(tcp_exchange(&b_ns, to_a, Duration::from_secs(1))),
            "still denied after a restart with {workers}"
        );
    }
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_plugin() {
    require_root!();
    let mut ov = Overlay::start("tpe2c", bin(), 1, &[]).expect("overlay starts");
    let ns = ov.tb.add_namespace("cni").unwrap();
    let cni = Path::new(env!("CARGO_BIN_EXE_tapestry-cni"));
    let conf = serde_json::json!({"cniVersion":"1.0.0","name":"tapestry","type":"tapestry-cni",
        "cell_socket": ov.cell_socket(0),
        "metadata":{"policy_group_id":"app-X","app_id":"app-X","space_id":"s","org_id":"o","instance_index":0}}).to_string();
    let run = |cmd: &str, conf: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(cni)
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", "cid-1")
            .env("CNI_NETNS", &ns)
            .env("CNI_IFNAME", "eth1")
            .env("CNI_PATH", "/opt/cni/bin")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = run("ADD", &conf);
    assert!(ok, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let addr = v["ips"][0]["address"].as_str().unwrap().to_string();
    assert!(addr.starts_with("10.255.") && addr.ends_with("/32"), "{v}");
    assert_eq!(v["ips"][0]["gateway"], "169.254.0.1");
    assert_eq!(v["interfaces"][0]["name"], "eth1");
    let link = ov
        .tb
        .exec("cni", "ip", &["-o", "addr", "show", "eth1"])
        .unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains(&addr));
    // ADD again is idempotent, CHECK passes.
    let (ok, out2) = run("ADD", &conf);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out2).unwrap()["ips"],
        v["ips"]
    );
    assert!(run("CHECK", &conf).0);
    // Invalid config is a CNI error naming the field.
    let (ok, err) = run(
        "ADD",
        r#"{"cniVersion":"1.0.0","name":"t","type":"tapestry-cni"}"#,
    );
    assert!(!ok);
    let e: serde_json::Value = serde_json::from_str(&err).unwrap();
    assert_eq!(e["code"], 7);
    assert!(e["msg"].as_str().unwrap().contains("cell_socket"));
    // DEL removes the interface and is idempotent; the address is reused.
    assert!(run("DEL", &conf).0);
    assert!(run("DEL", &conf).0);
    let link = ov.tb.exec("cni", "ip", &["link", "show", "eth1"]).unwrap();
    assert!(!link.status.success(), "eth1 gone after DEL");
    assert!(!run("CHECK", &conf).0);
    let (ok, out3) = run("ADD", &conf);
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out3).unwrap()["ips"][0]["address"],
        addr.as_str()
    );
    let (ok, ver) = run("VERSION", "");
    assert!(ok && ver.contains("supportedVersions"));
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_small_underlay_mtu() {
    require_root!();
    let mut ov = Overlay::start_with("tpe2m", bin(), 2, &[], 1280).expect("overlay starts");
    let a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    let _ = a;
    let link = ov
        .tb
        .exec("b", "ip", &["-o", "link", "show", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&link.stdout).contains("mtu 1230"));
    ov.allow("app-A", "app-B", "tcp", 9000, 9000).unwrap();
    ov.tb
        .spawn_cmd(
            "b",
            "sink",
            "sh",
            &[
                "-c",
                &format!(
                    "socat -u TCP-LISTEN:9000,reuseaddr STDOUT | wc -c > {}/count",
                    ov.tb.dir().display()
                ),
            ],
        )
        .unwrap();
    wait_listen(&mut ov, "b", 9000);
    let mut sent = false;
    for _ in 0..50 {
        let out = ov
            .tb
            .exec(
                "a",
                "sh",
                &[
                    "-c",
                    &format!(
                        "head -c 5000000 /dev/zero | socat -u STDIN TCP:{}:9000,connect-timeout=1",
                        b.container_ip
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
    assert!(sent);
    let count = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(ov.tb.dir().join("count"))
            .ok()
            .filter(|s| !s.trim().is_empty())
    });
    assert_eq!(count.as_deref().map(str::trim), Some("5000000"));
}

/// Two dataplane workers per cell: new connections spread over both (the TAP's queue choice on
/// the sending cell, the BPF steering of the VTEP sockets on the receiving one), and each
/// worker's share shows in `cell status`.
#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_flows_spread_over_workers() {
    require_root!();
    let mut ov = Overlay::start("tpe2w", bin(), 2, &["--workers=2"]).expect("overlay starts");
    ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    serve_tcp(&ov.tb.ns_path("b"), 8080, "hello").unwrap();
    ov.allow("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    let a_ns = ov.tb.ns_path("a");
    let to_b = SocketAddrV4::new(b.container_ip, 8080);
    wait_tcp(&a_ns, to_b, Duration::from_secs(10)).unwrap();
    // Each exchange is a new connection from a new source port: a new flow.
    for i in 0..24 {
        tcp_exchange(&a_ns, to_b, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    let stats = |cell: usize| {
        let st = ov.cell_status(cell).unwrap();
        assert_eq!(st["workers"], 2, "{st}");
        st["worker_stats"].as_array().unwrap().clone()
    };
    let sending = stats(0);
    assert!(
        sending
            .iter()
            .all(|w| w["port_frames"].as_u64().unwrap() > 0),
        "the sending cell's workers all read frames from their TAP queues: {sending:?}"
    );
    let receiving = stats(1);
    println!("worker stats: sending cell {sending:?}, receiving cell {receiving:?}");
    assert!(
        receiving
            .iter()
            .all(|w| w["underlay_buffers"].as_u64().unwrap() > 0),
        "the receiving cell's workers all got datagrams from their sockets: {receiving:?}"
    );
}
