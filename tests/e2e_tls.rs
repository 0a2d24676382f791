//! End-to-end tests (root) of TLS on port 61443: the cell terminates it with the instance
//! identity certificate and forwards plaintext to the app on 8080, only where a policy allows
//! tcp 61443. Clients are `curl` and `openssl s_client` in container namespaces on the same cell
//! and on another cell. Namespaces are prefixed `tptl`; the testbed removes them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tapestry::demo::overlay::{in_netns, serve_echo, Overlay};
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// A minimal HTTP/1.1 server in `ns` on `ip`:8080 answering every request with `body` and the
/// caller's address.
fn serve_http(ns: &Path, ip: Ipv4Addr, body: &'static str) {
    let l = in_netns(ns, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(ip, 8080))?)
    })
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            std::thread::spawn(move || {
                let peer = c
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut req = Vec::new();
                let mut b = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&b[..n]),
                    }
                }
                let text = format!("{body} via {peer}");
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                    text.len()
                );
            });
        }
    });
}

fn sh_in(ov: &Overlay, ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = ov.tb.exec(ns, program, args).unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!err.contains("exec of"), "{program} could not run: {err}");
    (
        out.status.success(),
        format!("{}{err}", String::from_utf8_lossy(&out.stdout)),
    )
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_tls_on_61443() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tptl", bin(), 2, &[]).unwrap();
    let b = ov.add_container(0, "b", "app-b", "s").unwrap();
    let _a1 = ov.add_container(0, "a1", "app-a", "s").unwrap();
    let _a2 = ov.add_container(1, "a2", "app-a", "s").unwrap();
    let _c = ov.add_container(0, "c", "app-c", "s").unwrap();
    let b_ip = b.container_ip;
    serve_http(&ov.tb.ns_path("b"), b_ip, "hello from b");
    let dir: PathBuf = ov.tb.dir().join("cell1").join("instances").join("b");
    let ca = dir.join("ca.crt");
    let start = Instant::now();
    while !ca.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no credentials in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The certificate: CN, SANs and OUs as Diego issues them.
    let out = std::process::Command::new("openssl")
        .args([
            "x509",
            "-noout",
            "-subject",
            "-ext",
            "subjectAltName,extendedKeyUsage",
            "-in",
        ])
        .arg(dir.join("instance.crt"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "CN = b",
        "OU = app:app-b",
        "OU = space:s",
        "OU = organization:org",
        "DNS:b",
        &format!("IP Address:{b_ip}"),
        "TLS Web Server Authentication",
        "TLS Web Client Authentication",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
    ov.allow("app-a", "app-b", "tcp", 61443, 61443).unwrap();
    let ca_s = ca.display().to_string();
    let url = format!("https://{b_ip}:61443/");
    // Same cell and another cell, through curl verifying against the instance CA.
    for ns in ["a1", "a2"] {
        let mut last = String::new();
        let ok = (0..100).any(|_| {
            let (ok, out) = sh_in(
                &ov,
                ns,
                "curl",
                &["-sS", "--max-time", "5", "--cacert", &ca_s, &url],
            );
            last = out;
            ok || {
                std::thread::sleep(Duration::from_millis(50));
                false
            }
        });
        assert!(ok, "curl from {ns}: {last}");
        assert!(
            last.starts_with("hello from b via 169.254."),
            "{ns}: {last}"
        );
    }
    // openssl s_client verifies the chain and the address.
    let target = format!("{b_ip}:61443");
    let (ok, out) = sh_in(
        &ov,
        "a2",
        "openssl",
        &[
            "s_client",
            "-connect",
            &target,
            "-CAfile",
            &ca_s,
            "-verify_return_error",
            "-verify_ip",
            &b_ip.to_string(),
            "-brief",
        ],
    );
    assert!(ok && out.contains("Verification: OK"), "{out}");
    // No policy for 61443: refused before any handshake (the SYN is dropped).
    let (ok, out) = sh_in(
        &ov,
        "c",
        "curl",
        &["-sS", "--connect-timeout", "2", "--cacert", &ca_s, &url],
    );
    assert!(
        !ok && (out.contains("timed out") || out.contains("Timeout")),
        "{out}"
    );
    // Status shows the terminated connections as flows of the stack.
    let st = ov.cell_status(0).unwrap();
    assert!(
        st["totals"]["stack_flows_opened"].as_u64().unwrap_or(0) >= 3,
        "{}",
        st["totals"]
    );
    // ... and releases them once both legs are closed.
    let t = Instant::now();
    while ov.cell_status(0).unwrap()["totals"]["stack_flows"].as_u64() != Some(0) {
        let st = ov.cell_status(0).unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "TLS flows never released: {}",
            st["stack_flows"]
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // Per app: another app port, and client certificates required (mTLS; not in CF).
    let extra = ["--space", "s", "--app-port", "9090", "--tls-client-auth"];
    let v = ov.container_up(0, "m", "app-m", &extra).unwrap();
    let m_ns = ov.tb.ns_path("m");
    let m_ip: Ipv4Addr = v["container_ip"].as_str().unwrap().parse().unwrap();
    let l = in_netns(&m_ns, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(m_ip, 9090))?)
    })
    .unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { continue };
            let mut b = [0u8; 1024];
            let _ = c.read(&mut b);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\nConnection: close\r\n\r\nmtls ok",
            );
        }
    });
    ov.allow("app-a", "app-m", "tcp", 61443, 61443).unwrap();
    let m_dir = ov.tb.dir().join("cell1").join("instances").join("m");
    let a_dir = ov.tb.dir().join("cell1").join("instances").join("a1");
    let start = Instant::now();
    while !m_dir.join("ca.crt").exists() || !a_dir.join("instance.key").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no credentials for m or a1"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let murl = format!("https://{m_ip}:61443/");
    let m_ca = m_dir.join("ca.crt").display().to_string();
    let (a_crt, a_key) = (
        a_dir.join("instance.crt").display().to_string(),
        a_dir.join("instance.key").display().to_string(),
    );
    let mut last = String::new();
    let ok = (0..100).any(|_| {
        let args = [
            "-sS",
            "--max-time",
            "5",
            "--cacert",
            &m_ca,
            "--cert",
            &a_crt,
            "--key",
            &a_key,
            &murl,
        ];
        let (ok, out) = sh_in(&ov, "a1", "curl", &args);
        last = out;
        ok || {
            std::thread::sleep(Duration::from_millis(50));
            false
        }
    });
    assert!(
        ok && last.starts_with("mtls ok"),
        "with a client certificate: {last}"
    );
    let (ok, out) = sh_in(
        &ov,
        "a1",
        "curl",
        &["-sS", "--max-time", "5", "--cacert", &m_ca, &murl],
    );
    assert!(
        !ok,
        "without a client certificate the handshake must fail: {out}"
    );
    // A certificate from another CA (self-signed) is refused too.
    let bad = ov.tb.dir().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    let (bad_key, bad_crt) = (bad.join("k.pem"), bad.join("c.pem"));
    let st = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ])
        .args(["-days", "1", "-subj", "/CN=a1", "-keyout"])
        .arg(&bad_key)
        .arg("-out")
        .arg(&bad_crt)
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let (bk, bc) = (bad_key.display().to_string(), bad_crt.display().to_string());
    let args = [
        "-sS",
        "--max-time",
        "5",
        "--cacert",
        &m_ca,
        "--cert",
        &bc,
        "--key",
        &bk,
        &murl,
    ];
    let (ok, out) = sh_in(&ov, "a1", "curl", &args);
    assert!(
        !ok,
        "a client certificate from another CA must be refused: {out}"
    );
}

fn serial(cert: &Path) -> String {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_tls_renewal_keeps_open_connections() {
    use std::io::BufRead;
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    // 12 s certificates: renewed after 8 s.
    let mut ov = Overlay::start("tptr", bin(), 1, &["--instance-cert-lifetime=12"]).unwrap();
    let b = ov.add_container(0, "b", "app-b", "s").unwrap();
    let _a = ov.add_container(0, "a", "app-a", "s").unwrap();
    serve_echo(&ov.tb.ns_path("b"), SocketAddrV4::new(b.container_ip, 8080)).unwrap();
    ov.allow("app-a", "app-b", "tcp", 61443, 61443).unwrap();
    let dir = ov.tb.dir().join("cell1").join("instances").join("b");
    let (ca, crt) = (dir.join("ca.crt"), dir.join("instance.crt"));
    let start = Instant::now();
    while !ca.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "no credentials");
        std::thread::sleep(Duration::from_millis(20));
    }
    let first = serial(&crt);
    let target = format!("{}:61443", b.container_ip);
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &ov.tb.ns_name("a"),
            "openssl",
            "s_client",
            "-quiet",
        ])
        .args(["-connect", &target, "-CAfile"])
        .arg(&ca)
        .arg("-verify_return_error")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = line else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let echo = |stdin: &mut std::process::ChildStdin, what: &str| {
        writeln!(stdin, "{what}").unwrap();
        stdin.flush().unwrap();
        rx.recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no echo of {what:?} through 61443"))
    };
    assert_eq!(echo(&mut stdin, "before renewal"), "before renewal");
    let t = Instant::now();
    while serial(&crt) == first {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the certificate was not renewed"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The open connection survives the renewal; a new handshake gets the new certificate.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(echo(&mut stdin, "after renewal"), "after renewal");
    let out = ov
        .tb
        .exec("a", "sh", &["-c", &format!("openssl s_client -connect {target} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial", ca.display())])
        .unwrap();
    let served = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        served,
        serial(&crt),
        "a new handshake is served the renewed certificate"
    );
    assert_ne!(served, first);
    let _ = child.kill();
    let _ = child.wait();
}
