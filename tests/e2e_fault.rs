//! Faults against a real `tapestry control` process on loopback: kill -9 under concurrent
//! writes (every acknowledged write is there after the restart), and a slowloris flood of the
//! external port while a cell with its own certificate uses the internal API and the feed.
mod support;

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::{bin, policy, runtime, Control};
use tapestry_policy::client::InternalClient;

#[test]
fn kill_9_under_concurrent_writes_loses_no_acknowledged_write() {
    let data = tempfile::tempdir().unwrap();
    let mut ctl = Control::start(data.path(), &[]);
    let client = ctl.admin(data.path());
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let rt = runtime();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let client = client.clone();
            let acked = acked.clone();
            rt.spawn(async move {
                for n in 0.. {
                    let src = format!("app-w{w}-{n}");
                    match client.create_policies(&[policy(&src)]).await {
                        Ok(()) => acked.lock().unwrap().push(src),
                        Err(_) => return, // the control plane is gone
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    ctl.child.kill().unwrap(); // SIGKILL, mid-write
    ctl.child.wait().unwrap();
    rt.block_on(async {
        for w in writers {
            let _ = tokio::time::timeout(Duration::from_secs(70), w).await;
        }
    });
    let acked: Vec<String> = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 20,
        "too few writes before the kill: {}",
        acked.len()
    );

    let ctl = Control::start(data.path(), &[]);
    let listed: HashSet<String> = rt
        .block_on(ctl.admin(data.path()).list_policies())
        .unwrap()
        .into_iter()
        .map(|p| p.source.id)
        .collect();
    let lost: Vec<&String> = acked.iter().filter(|a| !listed.contains(*a)).collect();
    eprintln!(
        "kill -9: {} writes acknowledged, {} policies after the restart, {} lost",
        acked.len(),
        listed.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
}

/// The resident memory of process `pid` (VmRSS), in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// How far above its baseline the control plane's memory may stay once a flood has ended (the
/// allocator keeps some of what it used).
const FLOOD_MEMORY_SLACK_KIB: u64 = 64 * 1024;

/// The flood also shows that memory comes back: the control plane's RSS is measured before, at
/// the peak and after (the flood's sockets closed, a short settle), and must return to within
/// [`FLOOD_MEMORY_SLACK_KIB`] of the baseline.
#[test]
fn slowloris_on_the_external_port_leaves_the_internal_api_and_feed_answering() {
    let data = tempfile::tempdir().unwrap();
    let ctl = Control::start(
        data.path(),
        &[
            "--max-connections",
            "64",
            "--max-connections-per-client",
            "32",
            "--header-timeout-secs",
            "3",
        ],
    );
    let creds = data.path().join("cell-10.0.0.1");
    let out = Command::new(bin())
        .args(["control", "cell-credentials", "--data-dir"])
        .arg(data.path())
        .args(["--underlay-ip", "10.0.0.1", "--out"])
        .arg(&creds)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cell = InternalClient::new(&ctl.internal, &creds).unwrap();
    let me = Ipv4Addr::new(10, 0, 0, 1);
    let rt = runtime();
    let lease = rt.block_on(cell.acquire_lease(me)).unwrap();

    let ext: std::net::SocketAddr = ctl.external.trim_start_matches("http://").parse().unwrap();
    let pid = ctl.child.id();
    let baseline = rss_kib(pid);
    let stop = Arc::new(AtomicBool::new(false));
    // Four threads, each keeping its newest 500 half-sent requests open.
    let flood: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                use std::io::Write;
                let mut held = std::collections::VecDeque::new();
                let mut opened = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    if held.len() >= 500 {
                        held.pop_front();
                    }
                    if let Ok(mut s) = std::net::TcpStream::connect(ext) {
                        let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-a: ");
                        held.push_back(s);
                        opened += 1;
                    }
                }
                (opened, held)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    let mut since = None;
    let mut peak = baseline;
    rt.block_on(async {
        for _ in 0..30 {
            peak = peak.max(rss_kib(pid));
            let t = Instant::now();
            cell.renew_lease(&lease)
                .await
                .expect("renew during the flood");
            let f = cell
                .feed(me, since, Duration::ZERO)
                .await
                .expect("the feed during the flood");
            since = Some(f.version);
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    stop.store(true, Ordering::Relaxed);
    let mut opened = 0;
    let mut held = Vec::new();
    for f in flood {
        let (n, h) = f.join().unwrap();
        opened += n;
        held.push(h);
    }
    eprintln!(
        "slowloris: {opened} connections opened on the external port; worst internal round (lease renew + feed) {worst:?} (the issue's target: 100 ms)"
    );
    assert!(opened > 64, "the flood never exceeded the limit ({opened})");
    // The flood's sockets stay open, silent: the header timeout frees their places.
    let admin = ctl.admin(data.path());
    let mut answered = false;
    for _ in 0..100 {
        if rt.block_on(admin.list_policies()).is_ok() {
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered,
        "the external API never answered again after the flood"
    );
    peak = peak.max(rss_kib(pid));
    drop(held);
    // The flood's connections are closed; give the control plane a moment to let go.
    let mut after = rss_kib(pid);
    for _ in 0..50 {
        if after <= baseline + FLOOD_MEMORY_SLACK_KIB {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        after = rss_kib(pid);
    }
    let mib = |kib: u64| kib as f64 / 1024.0;
    eprintln!(
        "slowloris memory (VmRSS): {:.1} MiB before, {:.1} MiB at the peak, {:.1} MiB after",
        mib(baseline),
        mib(peak),
        mib(after)
    );
    assert!(
        after <= baseline + FLOOD_MEMORY_SLACK_KIB,
        "memory did not return after the flood: {baseline} KiB before, {peak} KiB at the peak, {after} KiB after"
    );
}

/// FNV-1a over a stream, to compare what was sent with what arrived.
fn fnv(mut h: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    h
}

const FNV_START: u64 = 0xcbf2_9ce4_8422_2325;

/// A 50 MB TCP transfer between containers on two cells arrives whole (same length and hash)
/// over a lossy, reordering underlay: 2 % of the VXLAN datagrams each cell sends are dropped
/// (nftables, in the cells' namespaces), and a hop spliced in front of cell 2
/// (`tapestry::demo::reorder`) holds back 5 % of the frames each way until 1 to 3 later ones
/// have passed and drops another 1 %. The hop forwards in userspace because `tc netem` needs the
/// sch_netem kernel module, which the CI kernel does not have (nor nftables' queue to userspace).
#[test]
#[ignore = "needs root (network namespaces, nftables); scripts/test.sh runs it as root"]
fn e2e_fault_underlay_loss_and_reordering_50mb_intact() {
    use std::io::{Read, Write};
    use std::net::{SocketAddrV4, TcpListener, TcpStream};
    use tapestry::demo::overlay::{in_netns, Overlay};
    use tapestry::demo::reorder::ReorderHop;
    assert!(
        tapestry::demo::testbed::is_root(),
        "end-to-end tests need root (network namespaces): run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tfr2", bin(), 2, &[]).expect("overlay starts");
    // Dropped before `ov`, whose namespaces its sockets keep alive.
    let hop = ReorderHop::splice(&ov.tb, "cell2", ov.underlay_mtu, 50, 10)
        .expect("the reordering hop in front of cell 2");
    let a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    ov.allow("app-A", "app-B", "tcp", 9000, 9000).unwrap();
    for cell in ["cell1", "cell2"] {
        for args in [
            vec!["add", "table", "inet", "tpft"],
            vec![
                "add",
                "chain",
                "inet",
                "tpft",
                "out",
                "{ type filter hook output priority 0; }",
            ],
            vec![
                "add", "rule", "inet", "tpft", "out", "udp", "dport", "4789", "numgen", "random",
                "mod", "100", "<", "2", "counter", "drop",
            ],
        ] {
            let out = ov.tb.exec(cell, "nft", &args).unwrap();
            assert!(
                out.status.success(),
                "nft {args:?} in {cell}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    // The receiver: reads everything, answers with its length and hash.
    let at = SocketAddrV4::new(b.container_ip, 9000);
    let listener = in_netns(&b.netns, move || Ok(TcpListener::bind(at)?)).unwrap();
    std::thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else {
            return;
        };
        let (mut n, mut h) = (0u64, FNV_START);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    n += k as u64;
                    h = fnv(h, &buf[..k]);
                }
            }
        }
        let mut reply = n.to_be_bytes().to_vec();
        reply.extend_from_slice(&h.to_be_bytes());
        let _ = c.write_all(&reply);
    });
    const TOTAL: usize = 50 * 1024 * 1024;
    let netns = a.netns.clone();
    let (sent_hash, got) = in_netns(&netns, move || {
        // The policy reaches cell 2 within moments; retry the connect until then.
        let start = Instant::now();
        let mut s = loop {
            match TcpStream::connect_timeout(&at.into(), Duration::from_millis(500)) {
                Ok(s) => break s,
                Err(e) if start.elapsed() > Duration::from_secs(20) => return Err(e.into()),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(120)))?;
        // Deterministic, incompressible-looking bytes (xorshift).
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = FNV_START;
        let mut chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < TOTAL {
            for w in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
            }
            s.write_all(&chunk)?;
            h = fnv(h, &chunk);
            sent += chunk.len();
        }
        s.shutdown(std::net::Shutdown::Write)?;
        let mut reply = [0u8; 16];
        s.read_exact(&mut reply)?;
        Ok((h, reply))
    })
    .expect("the 50 MB transfer");
    let n = u64::from_be_bytes(got[..8].try_into().unwrap());
    let h = u64::from_be_bytes(got[8..].try_into().unwrap());
    assert_eq!(n, TOTAL as u64, "bytes received");
    assert_eq!(h, sent_hash, "hash of what arrived");
    // The loss really happened.
    let rules = ov
        .tb
        .exec("cell1", "nft", &["list", "table", "inet", "tpft"])
        .unwrap();
    let rules = String::from_utf8_lossy(&rules.stdout).to_string();
    let dropped: u64 = rules
        .split("counter packets ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let hop = hop.stop();
    eprintln!(
        "underlay loss and reordering: 50 MB intact; cell 1 dropped {dropped} VXLAN datagrams; \
         the hop forwarded {} frames, delayed {} behind later ones, dropped {}, could not send {}",
        hop.frames, hop.delayed, hop.dropped, hop.send_errors
    );
    assert!(dropped > 0, "nothing was dropped: {rules}");
    assert!(hop.delayed > 0, "the hop reordered nothing: {hop:?}");
    assert!(hop.dropped > 0, "the hop dropped nothing: {hop:?}");
    assert_eq!(
        hop.send_errors, 0,
        "the hop could not forward some frames (offloads left on?): {hop:?}"
    );
}

/// The control plane down for 30 s while an allowed flow keeps carrying traffic: no new flow
/// fails open meanwhile, the allowed one keeps working, and after the control plane returns the
/// cells resync (a policy added then takes effect). Then a cell restarts under traffic: the
/// container keeps its IP and new connections work again (the time is printed).
#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_fault_control_down_30s_and_cell_restart_under_traffic() {
    use std::net::SocketAddrV4;
    use tapestry::demo::overlay::{serve_tcp, tcp_exchange, wait_tcp, Overlay};
    assert!(
        tapestry::demo::testbed::is_root(),
        "end-to-end tests need root (network namespaces): run scripts/test.sh as root"
    );
    let mut ov = Overlay::start("tpfo", bin(), 2, &[]).expect("overlay starts");
    let a = ov.add_container(0, "a", "app-A", "s1").unwrap();
    let b = ov.add_container(1, "b", "app-B", "s1").unwrap();
    serve_tcp(&ov.tb.ns_path("a"), 8080, "hello").unwrap();
    serve_tcp(&ov.tb.ns_path("b"), 8080, "hello").unwrap();
    ov.allow("app-A", "app-B", "tcp", 8080, 8080).unwrap();
    let (a_ns, b_ns) = (ov.tb.ns_path("a"), ov.tb.ns_path("b"));
    let to_a = SocketAddrV4::new(a.container_ip, 8080);
    let to_b = SocketAddrV4::new(b.container_ip, 8080);
    wait_tcp(&a_ns, to_b, Duration::from_secs(10)).unwrap();

    // Traffic: a new allowed connection every 100 ms, counted.
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = {
        let (stop, a_ns) = (stop.clone(), a_ns.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !stop.load(Ordering::Relaxed) {
                match tcp_exchange(&a_ns, to_b, Duration::from_secs(1)) {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (ok, failed)
        })
    };

    ov.tb.kill("control");
    let down = Instant::now();
    let mut denied_checks = 0;
    while down.elapsed() < Duration::from_secs(30) {
        // B -> A has no policy: it must stay denied with the control plane gone.
        assert!(
            tcp_exchange(&b_ns, to_a, Duration::from_millis(500)).is_err(),
            "a flow without a policy got through while the control plane was down"
        );
        denied_checks += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    ov.restart_control().unwrap();
    // Resync: a policy added now reaches the cells.
    ov.allow("app-B", "app-A", "tcp", 8080, 8080).unwrap();
    let (_, took) = wait_tcp(&b_ns, to_a, Duration::from_secs(60))
        .expect("the cells resync after the control plane returns");
    eprintln!("control down 30 s: {denied_checks} denied checks held; new policy effective {took:?} after it was added");

    // A cell restart under traffic.
    ov.kill_cell(1);
    let restart = Instant::now();
    ov.start_cell(1).unwrap();
    let (_, took) = wait_tcp(&a_ns, to_b, Duration::from_secs(30))
        .expect("new connections work after the cell restarts");
    eprintln!(
        "cell restart: new connections work {:?} after the restart began ({took:?} after its socket answered)",
        restart.elapsed()
    );
    let addr = ov
        .tb
        .exec("b", "ip", &["-o", "addr", "show", "eth0"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/32", b.container_ip)),
        "the container kept its IP"
    );
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = traffic.join().unwrap();
    eprintln!(
        "traffic A -> B: {ok} connections succeeded, {failed} failed (during the cell restart)"
    );
    assert!(
        ok > 100,
        "the allowed flow did not keep working ({ok} ok, {failed} failed)"
    );
}
