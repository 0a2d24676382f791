//! End-to-end tests (root) of the cell's DNS responder at 169.254.0.2, with `dig` from
//! container namespaces: internal routes and instances across two cells, scaling, case, NXDOMAIN,
//! NODATA, truncation with a TCP retry, forwarding to an upstream in an "external" namespace, and
//! an upstream that is down. Namespaces are prefixed `tpdn`; the testbed removes them.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::json;
use tapestry::demo::overlay::{in_netns, Overlay};
use tapestry::demo::testbed::is_root;

const EXT: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);
/// What the fake upstream answers for every A question.
const UPSTREAM_ANSWER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 99);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// A minimal upstream resolver in `ns` at :53: answers every query with one A record
/// (192.0.2.99, TTL 60) for the question's name.
fn serve_upstream(ns: &Path) {
    let s = in_netns(ns, || Ok(UdpSocket::bind("0.0.0.0:53")?)).unwrap();
    std::thread::spawn(move || {
        let mut b = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            if n < 12 {
                continue;
            }
            // Header: same id, QR|RD|RA, one question, one answer.
            let mut r = b[..n].to_vec();
            r[2] = 0x81;
            r[3] = 0x80;
            r[6..8].copy_from_slice(&[0, 1]);
            r[8..12].fill(0);
            // Drop any additional records (EDNS): keep header + question only.
            let mut q_end = 12;
            while q_end < n && r[q_end] != 0 {
                q_end += r[q_end] as usize + 1;
            }
            q_end += 5;
            if q_end > n {
                continue;
            }
            r.truncate(q_end);
            r[10..12].fill(0);
            r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
            r.extend_from_slice(&UPSTREAM_ANSWER.octets());
            let _ = s.send_to(&r, from);
        }
    });
}

/// `dig` in `ns` against the cell's responder; returns (status, sorted answers, flags line).
fn dig(ov: &Overlay, ns: &str, args: &[&str]) -> (String, Vec<String>, String) {
    let mut full = vec!["@169.254.0.2", "+time=3", "+tries=1"];
    full.extend_from_slice(args);
    let out = ov.tb.exec(ns, "dig", &full).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || text.contains("status:"),
        "dig {args:?} in {ns} failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("")
        .to_string();
    let flags = text
        .lines()
        .find(|l| l.contains(";; flags:"))
        .unwrap_or("")
        .to_string();
    let mut answers: Vec<String> = text
        .split(";; ANSWER SECTION:")
        .nth(1)
        .map(|sec| {
            sec.lines()
                .skip(1)
                .take_while(|l| !l.trim().is_empty())
                .filter_map(|l| l.split_whitespace().last().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    answers.sort();
    (status, answers, flags)
}

fn container(ov: &mut Overlay, cell: usize, name: &str, app: &str, index: u32) -> Ipv4Addr {
    let index = index.to_string();
    let v = ov
        .container_up(cell, name, app, &["--space", "s", "--index", &index])
        .unwrap();
    assert_eq!(v["dns_servers"], json!(["169.254.0.2"]), "{v}");
    v["container_ip"].as_str().unwrap().parse().unwrap()
}

/// Polls `dig` until its answers are `want`; returns how long it took.
fn wait_answers(ov: &Overlay, ns: &str, name: &str, want: &[Ipv4Addr]) -> Duration {
    let mut want: Vec<String> = want.iter().map(|i| i.to_string()).collect();
    want.sort();
    let start = Instant::now();
    loop {
        let (_, got, _) = dig(ov, ns, &[name, "A"]);
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{name}: {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_dns_service_discovery() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let upstream = format!("--dns-upstream={EXT}");
    let mut ov = Overlay::start("tpdn", bin(), 2, &[upstream.as_str()]).unwrap();
    let ext = ov.tb.add_host("ext", EXT, 1500).unwrap();
    serve_upstream(&ext);
    let (code, v) = ov
        .api(
            "POST",
            "/networking/v1/external/routes",
            Some(json!({"host": "web.apps.internal", "app_id": "app-web"})),
        )
        .unwrap();
    assert_eq!(code, 200, "{v}");
    let _client = container(&mut ov, 1, "client", "app-client", 0);
    // Scale 1 -> 3 -> 1, instances on both cells.
    let w0 = container(&mut ov, 0, "w0", "app-web", 0);
    wait_answers(&ov, "client", "web.apps.internal", &[w0]);
    let w1 = container(&mut ov, 1, "w1", "app-web", 1);
    let w2 = container(&mut ov, 0, "w2", "app-web", 2);
    let took = wait_answers(&ov, "client", "web.apps.internal", &[w0, w1, w2]);
    eprintln!("scale-up visible on the other cell after {took:?} (polled)");
    let (status, one, flags) = dig(&ov, "client", &["2.web.apps.internal", "A"]);
    assert_eq!((status.as_str(), one), ("NOERROR", vec![w2.to_string()]));
    assert!(flags.contains(" aa"), "authoritative: {flags}");
    // Mixed case, TTL 0.
    let out = ov
        .tb
        .exec(
            "client",
            "dig",
            &[
                "@169.254.0.2",
                "+noall",
                "+answer",
                "WeB.ApPs.InTeRnAl",
                "A",
            ],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines()
            .all(|l| l.split_whitespace().nth(1) == Some("0")),
        "TTL 0: {text}"
    );
    // NODATA, NXDOMAIN.
    let (status, none, _) = dig(&ov, "client", &["web.apps.internal", "AAAA"]);
    assert_eq!((status.as_str(), none.len()), ("NOERROR", 0));
    let (status, _, _) = dig(&ov, "client", &["nope.apps.internal", "A"]);
    assert_eq!(status, "NXDOMAIN");
    let (status, _, _) = dig(&ov, "client", &["9.web.apps.internal", "A"]);
    assert_eq!(status, "NXDOMAIN");
    ov.container_down(1, "w1").unwrap();
    ov.container_down(0, "w2").unwrap();
    let took = wait_answers(&ov, "client", "web.apps.internal", &[w0]);
    eprintln!("scale-down visible after {took:?} (polled)");

    // Truncation: 40 instances give an answer over 512 bytes; dig retries over TCP by itself.
    let mut many = Vec::new();
    for i in 0..40 {
        many.push(container(
            &mut ov,
            (i % 2) as usize,
            &format!("m{i}"),
            "app-many",
            i,
        ));
    }
    let (code, v) = ov
        .api(
            "POST",
            "/networking/v1/external/routes",
            Some(json!({"host": "many.apps.internal", "app_id": "app-many"})),
        )
        .unwrap();
    assert_eq!(code, 200, "{v}");
    wait_answers(&ov, "client", "many.apps.internal", &many);
    let (_, none, flags) = dig(
        &ov,
        "client",
        &["+noedns", "+ignore", "many.apps.internal", "A"],
    );
    assert!(flags.contains(" tc"), "truncated over UDP: {flags}");
    assert!(none.is_empty());
    let (_, all, _) = dig(&ov, "client", &["+tcp", "many.apps.internal", "A"]);
    assert_eq!(all.len(), 40);

    // Forwarding: other names go to the upstream; ASGs do not apply to 169.254.0.2 (there is
    // no ASG at all here).
    let (status, fwd, _) = dig(&ov, "client", &["example.com", "A"]);
    assert_eq!(
        (status.as_str(), fwd),
        ("NOERROR", vec![UPSTREAM_ANSWER.to_string()])
    );
    let (status, fwd, _) = dig(&ov, "client", &["+tcp", "example.org", "A"]);
    assert_eq!(
        (status.as_str(), fwd),
        ("NOERROR", vec![UPSTREAM_ANSWER.to_string()])
    );
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_dns_upstream_down_is_servfail() {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    // Nothing listens on the upstream: the host's ICMP port unreachable makes it a SERVFAIL at
    // once; an upstream that never answers makes it one after the forwarding timeout.
    let mut ov = Overlay::start(
        "tpdu",
        bin(),
        1,
        &["--dns-upstream=198.18.0.200:53,198.18.0.201:53"],
    )
    .unwrap();
    let _ext = ov.tb.add_host("ext", EXT, 1500).unwrap();
    let _c = container(&mut ov, 0, "c", "app-c", 0);
    let t = Instant::now();
    let (status, _, _) = dig(&ov, "c", &["example.com", "A"]);
    assert_eq!(status, "SERVFAIL");
    eprintln!("SERVFAIL (refused) after {:?}", t.elapsed());
    let t = Instant::now();
    let (status, _, _) = dig(&ov, "c", &["example.net", "A"]);
    assert_eq!(status, "SERVFAIL");
    eprintln!("SERVFAIL (silent) after {:?}", t.elapsed());
    let _ = SocketAddrV4::new(EXT, 53);
}
