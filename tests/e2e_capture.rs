//! End-to-end test (root) of `tapestry capture`: a container's port and the underlay captured
//! while a TCP exchange runs between two cells, the files read back by tshark; `--count`,
//! `--filter` and a bad filter. Namespaces are prefixed `tpcap`; the testbed's Drop removes
//! them on every exit path.

use std::io::{BufRead, BufReader};
use std::net::SocketAddrV4;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tapestry::demo::overlay::{in_netns, serve_echo, serve_tcp, tcp_exchange, wait_tcp, Overlay};
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// A running `tapestry capture` and the lines it wrote to stderr so far.
struct Capture {
    child: Child,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    /// Starts a capture and waits until it is running (its "capturing on" line).
    fn start(state_dir: &Path, args: &[&str]) -> Capture {
        let mut child = Command::new(bin())
            .arg("capture")
            .arg("--state-dir")
            .arg(state_dir)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = mpsc::channel();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|e| panic!("capture {args:?} did not start: {e}"));
        assert!(line.starts_with("capturing on "), "{args:?}: {line}");
        Capture { child, stderr: rx }
    }

    /// Sends SIGINT (as Ctrl-C) unless `signal` is false, waits, and returns stdout and the
    /// number of packets it said it captured.
    fn finish(self, signal: bool) -> (String, u64) {
        if signal {
            let st = Command::new("kill")
                .args(["-INT", &self.child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
        }
        let out = self.child.wait_with_output().unwrap();
        let rest: Vec<String> = self.stderr.try_iter().collect();
        // The reader thread may still be delivering the last line.
        let mut rest = rest;
        if let Ok(l) = self.stderr.recv_timeout(Duration::from_secs(5)) {
            rest.push(l);
        }
        let summary = rest
            .iter()
            .find(|l| l.contains(" packets captured, "))
            .unwrap_or_else(|| panic!("no summary in {rest:?}"));
        assert!(out.status.success(), "{:?}: {rest:?}", out.status);
        assert!(
            summary.ends_with("dropped by the cell (capture queue full)"),
            "{summary}"
        );
        let n = summary.split(' ').next().unwrap().parse().unwrap();
        (String::from_utf8_lossy(&out.stdout).into_owned(), n)
    }
}

fn tshark(file: &Path, extra: &[&str], fields: &[&str]) -> Vec<Vec<String>> {
    let mut cmd = Command::new("tshark");
    cmd.arg("-r").arg(file).args(extra).args(["-T", "fields"]);
    for f in fields {
        cmd.args(["-e", f]);
    }
    let out: Output = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "tshark {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.split('\t').map(str::to_string).collect())
        .collect()
}

/// Bytes the bulk transfer sends (and the echo returns).
const BULK: usize = 1 << 20;

fn tag_of(ov: &Overlay, cell: usize, handle: &str) -> u16 {
    let st = ov.cell_status(cell).unwrap();
    let p = st["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["handle"] == handle)
        .unwrap_or_else(|| panic!("no port {handle} in {st}"));
    u16::from_str_radix(p["tag"].as_str().unwrap(), 16).unwrap()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs root (network namespaces) and tshark; scripts/test.sh runs it as root"]
fn e2e_capture_tshark() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tpcap", bin(), 2, &[]).unwrap();
    let client = ov
        .add_container(0, "client", "app-client", "space")
        .unwrap();
    let server = ov
        .add_container(1, "server", "app-server", "space")
        .unwrap();
    let server_ns = ov.tb.ns_path("server");
    serve_tcp(&server_ns, 8080, "eighty").unwrap();
    let echo = SocketAddrV4::new(server.container_ip, 7070);
    serve_echo(&server_ns, echo).unwrap();
    ov.allow("app-client", "app-server", "tcp", 8080, 8080)
        .unwrap();
    ov.allow("app-client", "app-server", "tcp", 7070, 7070)
        .unwrap();
    let client_ns = ov.tb.ns_path("client");
    let dst = SocketAddrV4::new(server.container_ip, 8080);
    wait_tcp(&client_ns, dst, Duration::from_secs(30)).unwrap();
    let (c, s) = (
        client.container_ip.to_string(),
        server.container_ip.to_string(),
    );
    let client_tag = tag_of(&ov, 0, "client");
    let server_tag = tag_of(&ov, 1, "server");
    let st0 = ov.cell_status(0).unwrap();
    let st1 = ov.cell_status(1).unwrap();
    let u0 = st0["underlay_ip"].as_str().unwrap().to_string();
    let u1 = st1["underlay_ip"].as_str().unwrap().to_string();
    let vtep_port = st0["vtep_port"].as_u64().unwrap().to_string();
    let cell0: PathBuf = ov.cells[0].state_dir.clone();
    let dir = tempfile::tempdir().unwrap();
    let port_file = dir.path().join("port.pcapng");
    let under_file = dir.path().join("underlay.pcapng");
    let none_file = dir.path().join("none.pcapng");

    // Three captures at once on cell 0: the client's port, the underlay, and one whose filter
    // matches nothing.
    let port_cap = Capture::start(
        &cell0,
        &["--port", "client", "-w", port_file.to_str().unwrap()],
    );
    let under_cap = Capture::start(&cell0, &["--underlay", "-w", under_file.to_str().unwrap()]);
    let none_cap = Capture::start(
        &cell0,
        &[
            "--port",
            "client",
            "--filter",
            "host 10.9.9.9",
            "-w",
            none_file.to_str().unwrap(),
        ],
    );
    assert_eq!(ov.cell_status(0).unwrap()["capture"]["active"], 3);
    for _ in 0..3 {
        let reply = tcp_exchange(&client_ns, dst, Duration::from_secs(10)).unwrap();
        assert_eq!(reply, "eighty hello\n");
    }
    // A bulk transfer, which the offloads carry as super-frames and GSO/GRO batches.
    let bulk = in_netns(&client_ns, move || {
        use std::io::{Read, Write};
        // The policy for 7070 went out with the one for 8080; retry until it is in force.
        let start = Instant::now();
        let mut conn = loop {
            let r = std::net::TcpStream::connect_timeout(&echo.into(), Duration::from_millis(200));
            match r {
                Ok(c) => break c,
                Err(e) if start.elapsed() > Duration::from_secs(30) => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        conn.set_read_timeout(Some(Duration::from_secs(20)))?;
        let data: Vec<u8> = (0..BULK).map(|i| (i % 251) as u8).collect();
        let mut w = conn.try_clone()?;
        let writer = std::thread::spawn(move || {
            w.write_all(&data)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::new();
        conn.read_to_end(&mut back)?;
        writer.join().unwrap()?;
        Ok(back.len())
    })
    .unwrap();
    assert_eq!(bulk, BULK);
    let (_, port_n) = port_cap.finish(true);
    let (_, under_n) = under_cap.finish(true);
    let (_, none_n) = none_cap.finish(true);
    assert_eq!(none_n, 0);
    // The files are complete only after the captures end (written whole, then renamed).
    assert!(port_file.exists() && under_file.exists() && none_file.exists());
    assert!(tshark(&none_file, &[], &["frame.number"]).is_empty());

    // The port: every frame of the three connections, both ways, as the container saw them.
    let rows = tshark(
        &port_file,
        &["-Y", "tcp.port == 8080"],
        &["ip.src", "ip.dst", "tcp.flags.syn", "frame.comment"],
    );
    let all = tshark(&port_file, &[], &["frame.number"]);
    assert_eq!(
        all.len() as u64,
        port_n,
        "tshark reads every packet the capture counted"
    );
    let out: Vec<_> = rows.iter().filter(|r| r[0] == c && r[1] == s).collect();
    let back: Vec<_> = rows.iter().filter(|r| r[0] == s && r[1] == c).collect();
    // Per connection at least SYN, ACK, data, FIN out and SYN-ACK, data, FIN back.
    assert!(out.len() >= 9 && back.len() >= 9, "{rows:?}");
    assert_eq!(
        out.iter().filter(|r| r[2] == "1" || r[2] == "True").count(),
        3,
        "three SYNs: {rows:?}"
    );
    assert!(
        out.iter()
            .all(|r| r[3].starts_with("out: sent by the container")),
        "{rows:?}"
    );
    assert!(
        back.iter()
            .all(|r| r[3].starts_with("in: to the container")),
        "{rows:?}"
    );

    // The bulk bytes are all there, whatever the frames' sizes.
    let sum = |file: &Path, extra: &[&str], filter: &str| -> usize {
        tshark(file, &[extra, &["-Y", filter]].concat(), &["tcp.len"])
            .iter()
            .map(|r| r[0].parse::<usize>().unwrap_or(0))
            .sum()
    };
    let to_echo = format!("ip.src == {c} && tcp.dstport == 7070");
    assert!(sum(&port_file, &[], &to_echo) >= BULK);

    // The underlay: VXLAN-GBP with the real addresses, the source app's tag as policy ID.
    let decode = format!("udp.port=={vtep_port},vxlan");
    let rows = tshark(
        &under_file,
        &["-d", &decode],
        &[
            "ip.src",
            "ip.dst",
            "vxlan.gbp",
            "udp.srcport",
            "udp.dstport",
            "ip.checksum.status",
        ],
    );
    assert_eq!(rows.len() as u64, under_n);
    let sent: Vec<_> = rows
        .iter()
        .filter(|r| r[0] == format!("{u0},{c}") && r[1] == format!("{u1},{s}"))
        .collect();
    let recv: Vec<_> = rows
        .iter()
        .filter(|r| r[0] == format!("{u1},{s}") && r[1] == format!("{u0},{c}"))
        .collect();
    assert_eq!(sent.len() + recv.len(), rows.len(), "{rows:?}");
    assert!(sent.len() >= 9 && recv.len() >= 9, "{rows:?}");
    assert!(
        sent.iter().all(|r| r[2] == client_tag.to_string()),
        "{rows:?}"
    );
    assert!(
        recv.iter().all(|r| r[2] == server_tag.to_string()),
        "{rows:?}"
    );
    assert!(rows.iter().all(|r| r[4] == vtep_port), "{rows:?}");
    // The outer checksum is right (tshark validates it when asked).
    let bad = tshark(
        &under_file,
        &[
            "-d",
            &decode,
            "-o",
            "ip.check_checksum:TRUE",
            "-Y",
            "ip.checksum.status == 0",
        ],
        &["frame.number"],
    );
    assert!(bad.is_empty(), "bad outer checksums in frames {bad:?}");
    // Batches were split: each datagram fits the underlay MTU, and the bytes are all there.
    let lens = tshark(&under_file, &[], &["ip.len"]);
    assert!(
        lens.iter()
            .all(|r| r[0].split(',').next().unwrap().parse::<u32>().unwrap() <= 1500),
        "{lens:?}"
    );
    assert!(sum(&under_file, &["-d", &decode], &to_echo) >= BULK);
    // Every datagram is one VXLAN packet: as many inner TCP segments as frames.
    let segs = tshark(
        &under_file,
        &["-d", &decode, "-Y", "vxlan && tcp"],
        &["frame.number"],
    );
    assert_eq!(segs.len(), rows.len());
    wait_until("the captures to end in the cell", || {
        ov.cell_status(0).unwrap()["capture"]["active"] == 0
    });

    // --count and --filter, as text: stops by itself after 4 matching packets.
    let filter = format!("tcp and dst port 8080 and src host {c}");
    let counted = Capture::start(&cell0, &["--underlay", "--count", "4", "--filter", &filter]);
    let ns = client_ns.clone();
    let traffic = std::thread::spawn(move || {
        for _ in 0..5 {
            let _ = tcp_exchange(&ns, dst, Duration::from_secs(10));
        }
    });
    let (text, n) = counted.finish(false);
    traffic.join().unwrap();
    assert_eq!(n, 4);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert!(l.contains(" out "), "{l}");
        assert!(
            l.contains("vxlan vni ")
                && l.contains(&format!("gbp {client_tag}: IP {c}."))
                && l.contains(&format!("> {s}.8080: tcp [")),
            "{l}"
        );
    }

    // Bad requests fail clearly.
    let out = Command::new(bin())
        .args([
            "capture",
            "--state-dir",
            cell0.to_str().unwrap(),
            "--port",
            "client",
        ])
        .args(["--filter", "tcp and hots 10.0.0.1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("\"hots\""), "{err}");
    let out = Command::new(bin())
        .args([
            "capture",
            "--state-dir",
            cell0.to_str().unwrap(),
            "--port",
            "nobody",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("no container \"nobody\""),
        "{err}"
    );
    // A finished capture leaves no session behind.
    assert_eq!(ov.cell_status(0).unwrap()["capture"]["active"], 0);
}
