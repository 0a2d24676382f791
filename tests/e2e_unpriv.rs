//! Unprivileged overlays. As root (CI), these tests drop to `nobody`:
//! - `tapestry demo` runs as nobody (it enters a user + network + mount namespace itself, and
//!   its cells give containers veth pairs read through AF_PACKET, since /dev/net/tun is closed);
//! - this binary's `unpriv_overlay_scenarios` runs as nobody inside `tapestry sandbox`.
//!
//! `unpriv_overlay_scenarios` also runs on its own (as root) with `--port-kind packet`, so the
//! packet port kind is tested with and without privilege. Namespaces are prefixed `tpup`.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use tapestry::demo::overlay::{
    in_netns, serve_tcp, serve_udp_echo, tcp_exchange, wait_tcp, Overlay,
};
use tapestry::demo::testbed::{is_root, underlay_ip};

/// The tapestry binary: TAPESTRY_BIN when the suite runs as nobody from a copy.
fn bin() -> PathBuf {
    std::env::var_os("TAPESTRY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tapestry")))
}

/// Copies `files` into a fresh directory that `nobody` may enter and run from (the checkout
/// may live under a directory closed to other users).
struct Staged(PathBuf);

impl Staged {
    fn new(files: &[&Path]) -> Staged {
        let dir = std::env::temp_dir().join(format!("tpup-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for f in files {
            let to = dir.join(f.file_name().unwrap());
            std::fs::copy(f, &to).unwrap();
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Staged(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` through `su -s /bin/sh nobody -c`, from /tmp, bounded by `timeout`; returns
/// whether it succeeded and its stdout followed by its stderr.
fn as_nobody(cmd: &str, limit: Duration) -> (bool, String) {
    let out = Command::new("timeout")
        .arg(limit.as_secs().to_string())
        .args(["su", "-s", "/bin/sh", "nobody", "-c", cmd])
        .current_dir("/tmp")
        .output()
        .expect("running su (util-linux)");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
#[ignore = "needs root (to become nobody); scripts/test.sh runs it as root"]
fn demo_runs_as_nobody() {
    assert!(is_root(), "run as root: the test itself drops to nobody");
    let staged = Staged::new(&[&bin()]);
    let (ok, out) = as_nobody(
        &format!("{} demo", staged.path("tapestry").display()),
        Duration::from_secs(180),
    );
    assert!(ok, "tapestry demo as nobody failed:\n{out}");
    for line in [
        "user + network + mount namespace as uid 65534",
        "A -> B:8080: DENIED",
        "A -> B:8080 (cross-cell): ALLOWED",
        "A -> C:8080 (same cell): ALLOWED",
        "B -> C:8080 (no policy): DENIED",
        "B -> A:8080 (policies are one-way): DENIED",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
#[ignore = "needs root (to become nobody); scripts/test.sh runs it as root"]
fn overlay_suite_runs_as_nobody_in_a_sandbox() {
    assert!(is_root(), "run as root: the test itself drops to nobody");
    let me = std::env::current_exe().unwrap();
    let staged = Staged::new(&[&bin(), &me]);
    let cmd = format!(
        "TAPESTRY_BIN={} TAPESTRY_EXPECT_UNPRIVILEGED=1 {} sandbox -- {} --ignored --exact unpriv_overlay_scenarios --nocapture --test-threads 1",
        staged.path("tapestry").display(),
        staged.path("tapestry").display(),
        staged.path(me.file_name().unwrap().to_str().unwrap()).display(),
    );
    let (ok, out) = as_nobody(&cmd, Duration::from_secs(240));
    assert!(ok, "the overlay scenarios as nobody failed:\n{out}");
    assert!(out.contains("1 passed"), "the scenario did not run:\n{out}");
}

fn udp_ask(ns: &Path, dst: SocketAddrV4) -> Option<String> {
    in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        for _ in 0..5 {
            s.send_to(b"ping", dst)?;
            let mut b = [0u8; 64];
            if let Ok((n, _)) = s.recv_from(&mut b) {
                return Ok(Some(String::from_utf8_lossy(&b[..n]).into_owned()));
            }
        }
        Ok(None)
    })
    .unwrap()
}

/// The overlay with packet ports: policy across and within cells, UDP, default deny, and
/// egress through the local stack under an ASG (host sockets).
#[test]
#[ignore = "needs root or `tapestry sandbox` (network namespaces); scripts/test.sh runs it"]
fn unpriv_overlay_scenarios() {
    assert!(is_root(), "run as root or inside `tapestry sandbox`");
    let unprivileged = std::env::var_os("TAPESTRY_EXPECT_UNPRIVILEGED").is_some();
    if unprivileged {
        assert!(
            !tapestry_sys::packet::tun_available(),
            "expected to run without access to /dev/net/tun"
        );
    }
    let mut ov = Overlay::start("tpup", &bin(), 2, &["--port-kind", "packet"]).unwrap();
    let _a = ov.add_container(0, "a", "app-A", "space-1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "space-1").unwrap();
    let c = ov.add_container(0, "c", "app-C", "space-1").unwrap();
    let (na, nb, nc) = (ov.tb.ns_path("a"), ov.tb.ns_path("b"), ov.tb.ns_path("c"));
    let status = ov.cell_status(0).unwrap();
    assert_eq!(status["port_kind"], "packet", "{status}");
    serve_tcp(&nb, 8080, "hello from B").unwrap();
    serve_tcp(&nc, 8080, "hello from C").unwrap();
    serve_udp_echo(&nb, 9000).unwrap();
    let b_tcp = SocketAddrV4::new(b.container_ip, 8080);
    let c_tcp = SocketAddrV4::new(c.container_ip, 8080);
    assert!(
        tcp_exchange(&na, b_tcp, Duration::from_millis(500)).is_err(),
        "default deny"
    );
    ov.allow("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    ov.allow("app-A", "app-B", "udp", 9000, 9000).unwrap();
    ov.allow("app-A", "app-C", "tcp", 8080, 8080).unwrap();
    let (reply, _) = wait_tcp(&na, b_tcp, Duration::from_secs(10)).unwrap();
    assert!(reply.contains("hello from B"), "{reply}");
    let (reply, _) = wait_tcp(&na, c_tcp, Duration::from_secs(10)).unwrap();
    assert!(reply.contains("hello from C"), "{reply}");
    assert_eq!(
        udp_ask(&na, SocketAddrV4::new(b.container_ip, 9000)).as_deref(),
        Some("ping")
    );
    assert!(
        tcp_exchange(&nb, c_tcp, Duration::from_millis(500)).is_err(),
        "B -> C has no policy"
    );

    // Egress: a server on the underlay, reached through the cell's host socket under an ASG.
    let ext = ov
        .tb
        .add_host("ext", Ipv4Addr::new(198, 18, 0, 200), 1500)
        .unwrap();
    let server = in_netns(&ext, || Ok(TcpListener::bind("198.18.0.200:7000")?)).unwrap();
    std::thread::spawn(move || {
        for conn in server.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = conn.write_all(peer.as_bytes());
        }
    });
    let to_ext = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 200), 7000);
    assert!(
        tcp_exchange(&na, to_ext, Duration::from_millis(500)).is_err(),
        "no ASG yet"
    );
    let (code, v) = ov
        .api(
            "POST",
            "/networking/v1/external/security_groups",
            Some(json!({
                "name": "underlay",
                "rules": [{"protocol": "tcp", "destination": "198.18.0.200", "ports": "7000"}],
                "globally_enabled": {"running": true, "staging": false},
            })),
        )
        .unwrap();
    assert!(code == 200 || code == 201, "{code} {v}");
    let (peer, _) = wait_tcp(&na, to_ext, Duration::from_secs(10)).unwrap();
    assert_eq!(
        peer,
        underlay_ip(1).to_string(),
        "egress leaves from the cell's address"
    );
}
