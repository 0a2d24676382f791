//! End-to-end tests (root) of seeing inside a cell: `tapestry trace` against running cells, and
//! the container-to-container flow log (`--flow-log`, `tapestry cell flow-log on|off`).
//! Namespaces are prefixed `tpot`, `tpof` and `tpom` (one per test); the testbed's Drop removes them on every exit path.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::Value;
use tapestry::demo::overlay::in_netns;
use tapestry::demo::overlay::{serve_tcp, tcp_exchange, wait_tcp, Overlay};
use tapestry::demo::testbed::{is_root, underlay_ip};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

fn tapestry(args: &[&str]) -> Output {
    std::process::Command::new(bin())
        .args(args)
        .output()
        .unwrap()
}

/// `tapestry trace --state-dir S --json EXPR`: the answer, or the error text.
fn trace(state_dir: &Path, expr: &str) -> Result<Value, String> {
    let out = tapestry(&[
        "trace",
        "--state-dir",
        state_dir.to_str().unwrap(),
        "--json",
        expr,
    ]);
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn stage(t: &Value, name: &str) -> String {
    t["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["stage"] == name)
        .map(|s| s["detail"].as_str().unwrap().to_string())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// The tag of the app of container `handle` on cell `i`, from its status.
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

fn flow_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct World {
    ov: Overlay,
    client_ip: Ipv4Addr,
    server_ip: Ipv4Addr,
    client_ns: PathBuf,
    cell0: PathBuf,
    cell1: PathBuf,
}

/// Two cells with `--flow-log`: a client (app-client) on cell 0, a server (app-server) on cell
/// 1 listening on 8080 and 9090; app-client may reach app-server on tcp 8080. Each test has a
/// prefix of its own (`tpo*`), so they may run at once.
fn world(prefix: &str) -> World {
    assert!(
        is_root(),
        "end-to-end tests need root: run scripts/test.sh as root"
    );
    let control_metrics = format!("{}:9101", underlay_ip(10));
    let mut ov = Overlay::start_full(
        prefix,
        bin(),
        2,
        &["--flow-log", "--metrics-listen", "0.0.0.0:9100"],
        &["--metrics-listen", &control_metrics],
        1500,
    )
    .unwrap();
    let client = ov
        .add_container(0, "client", "app-client", "space")
        .unwrap();
    let server = ov
        .add_container(1, "server", "app-server", "space")
        .unwrap();
    let server_ns = ov.tb.ns_path("server");
    serve_tcp(&server_ns, 8080, "eighty").unwrap();
    serve_tcp(&server_ns, 9090, "ninety").unwrap();
    ov.allow("app-client", "app-server", "tcp", 8080, 8080)
        .unwrap();
    let client_ns = ov.tb.ns_path("client");
    wait_tcp(
        &client_ns,
        SocketAddrV4::new(server.container_ip, 8080),
        Duration::from_secs(30),
    )
    .unwrap();
    World {
        cell0: ov.cells[0].state_dir.clone(),
        cell1: ov.cells[1].state_dir.clone(),
        ov,
        client_ip: client.container_ip,
        server_ip: server.container_ip,
        client_ns,
    }
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_observe_trace() {
    let w = world("tpot");
    let (c, s) = (w.client_ip, w.server_ip);
    let client_tag = tag_of(&w.ov, 0, "client");
    let server_tag = tag_of(&w.ov, 1, "server");

    // At the client's cell: encapsulated towards the server's cell with the client's tag.
    let t = trace(&w.cell0, &format!("tcp {c}:41000 -> {s}:8080")).unwrap();
    assert!(
        t["verdict"].as_str().unwrap().starts_with("to_underlay "),
        "{t}"
    );
    assert!(stage(&t, "in_port").contains("(app app-client)"), "{t}");
    assert!(stage(&t, "route").contains("remote cell"), "{t}");
    assert!(
        stage(&t, "encap").contains(&format!("group policy ID {client_tag}")),
        "{t}"
    );
    // The text form.
    let out = tapestry(&[
        "trace",
        "--state-dir",
        w.cell0.to_str().unwrap(),
        &format!("tcp {c}:41000 -> {s}:8080"),
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with(&format!(
            "packet: tcp {c}:41000 -> {s}:8080 [syn] (from port "
        )),
        "{text}"
    );
    assert!(
        text.contains("encap") && text.contains("verdict: to_underlay"),
        "{text}"
    );

    // At the server's cell, as if from the client's cell: the policy that admits it, twice
    // (the first trace recorded nothing, so the second is a new flow too).
    let expr = format!("from underlay tag {client_tag} tcp {c}:41000 -> {s}:8080");
    for _ in 0..2 {
        let t = trace(&w.cell1, &expr).unwrap();
        assert!(
            t["verdict"].as_str().unwrap().starts_with("to_port "),
            "{t}"
        );
        assert!(stage(&t, "decap").contains("(app app-client)"), "{t}");
        assert!(
            stage(&t, "ingress").contains(&format!(
                "new flow: policy tag {client_tag} -> tag {server_tag} tcp ports 8080-8080 admits port 8080"
            )),
            "{t}"
        );
        assert!(stage(&t, "conntrack").contains("not recorded"), "{t}");
    }
    // Denied: another port.
    let t = trace(
        &w.cell1,
        &format!("from underlay tag {client_tag} tcp {c}:41000 -> {s}:9090"),
    )
    .unwrap();
    assert_eq!(t["drop_reason"], "policy_denied", "{t}");
    assert!(stage(&t, "ingress").contains("no policy lets"), "{t}");
    // Spoofed: the client's cell claiming an address outside its subnet.
    let cell0_vtep = w.ov.cells[0].underlay;
    let t = trace(
        &w.cell1,
        &format!("from underlay vtep {cell0_vtep} tag {client_tag} tcp {s}:1 -> {s}:8080"),
    )
    .unwrap();
    assert_eq!(t["drop_reason"], "spoofed_remote_ip", "{t}");
    // Unknown VTEP.
    let t = trace(
        &w.cell1,
        &format!("from underlay vtep 127.0.0.99 tag {client_tag} tcp {c}:1 -> {s}:8080"),
    )
    .unwrap();
    assert_eq!(t["drop_reason"], "unknown_vtep", "{t}");
    // No route: an overlay address nobody holds.
    let t = trace(&w.cell0, &format!("tcp {c}:1 -> 10.255.250.1:80")).unwrap();
    assert_eq!(t["drop_reason"], "no_lease", "{t}");
    // Outside the overlay without an ASG: the local stack's default deny.
    let t = trace(&w.cell0, &format!("tcp {c}:1 -> 198.18.0.1:443")).unwrap();
    assert_eq!(t["drop_reason"], "asg_no_rule", "{t}");
    assert!(
        stage(&t, "asg").contains("no rule of the container's ASGs"),
        "{t}"
    );
    // The deny-networks (the default covers link-local metadata services).
    let t = trace(&w.cell0, &format!("tcp {c}:1 -> 169.254.169.254:80")).unwrap();
    assert_eq!(t["drop_reason"], "asg_deny_networks", "{t}");
    // Bad expressions name what is wrong, and so does a source the cell does not have.
    let e = trace(&w.cell0, &format!("tcp {c} -> {s}:8080")).unwrap_err();
    assert!(e.contains(&format!("source {c} needs a port")), "{e}");
    let e = trace(&w.cell0, &format!("sctp {c}:1 -> {s}:8080")).unwrap_err();
    assert!(e.contains("unknown protocol \"sctp\""), "{e}");
    let e = trace(&w.cell0, &format!("tcp {s}:1 -> {c}:8080")).unwrap_err();
    assert!(
        e.contains(&format!("{s} is not a container on this cell")),
        "{e}"
    );
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_observe_flow_log() {
    let w = world("tpof");
    let (c, s) = (w.client_ip, w.server_ip);
    let log = w.cell1.join("flows.log");
    let client_tag = tag_of(&w.ov, 0, "client");
    let server_tag = tag_of(&w.ov, 1, "server");
    let cell1 = w.cell1.to_str().unwrap().to_string();
    let dport_lines = |port: u16| {
        flow_lines(&log)
            .into_iter()
            .filter(|l| l["destination_port"] == port)
            .collect::<Vec<_>>()
    };

    // On from the start (--flow-log): the allowed flow of world() was logged; one more, and a
    // denied one.
    tcp_exchange(
        &w.client_ns,
        SocketAddrV4::new(s, 8080),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(tcp_exchange(
        &w.client_ns,
        SocketAddrV4::new(s, 9090),
        Duration::from_millis(300)
    )
    .is_err());
    wait_until("the denied flow's line", Duration::from_secs(10), || {
        !dport_lines(9090).is_empty()
    });
    // (world()'s first attempts, before the policy reached the cell, were denied and logged.)
    let allowed: Vec<Value> = dport_lines(8080)
        .into_iter()
        .filter(|l| l["verdict"] == "allowed")
        .collect();
    assert!(allowed.len() >= 2, "{allowed:?}");
    for l in &allowed {
        assert_eq!(l["event"], "c2c_allowed", "{l}");
        assert_eq!(l["verdict"], "allowed", "{l}");
        assert_eq!(l["protocol"], "tcp", "{l}");
        assert_eq!(l["source_app"], "app-client", "{l}");
        assert_eq!(l["source_tag"], client_tag, "{l}");
        assert_eq!(l["source_ip"], c.to_string(), "{l}");
        assert!(l["source_port"].as_u64().unwrap() > 0, "{l}");
        assert_eq!(l["destination_app"], "app-server", "{l}");
        assert_eq!(l["destination_container"], "server", "{l}");
        assert_eq!(l["destination_tag"], server_tag, "{l}");
        assert_eq!(l["destination_ip"], s.to_string(), "{l}");
        assert!(l["timestamp"].as_f64().unwrap() > 0.0, "{l}");
        assert!(l.get("reason").is_none(), "{l}");
    }
    // Each connection is one new flow: its source ports differ.
    let ports: std::collections::BTreeSet<u64> = allowed
        .iter()
        .map(|l| l["source_port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), allowed.len(), "{allowed:?}");
    for l in dport_lines(9090) {
        assert_eq!(l["event"], "c2c_denied", "{l}");
        assert_eq!(l["verdict"], "denied", "{l}");
        assert_eq!(l["reason"], "policy_denied", "{l}");
        assert_eq!(l["source_app"], "app-client", "{l}");
        assert_eq!(l["destination_app"], "app-server", "{l}");
    }
    // The client's cell logs nothing: the decision is made at the destination.
    assert!(flow_lines(&w.cell0.join("flows.log")).is_empty());

    // Off at run time: nothing logged.
    let out = tapestry(&["cell", "flow-log", "off", "--state-dir", &cell1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("flow log off"));
    assert_eq!(w.ov.cell_status(1).unwrap()["flow_log"], false);
    assert_eq!(w.ov.cell_status(0).unwrap()["flow_log"], true);
    let before = flow_lines(&log).len();
    tcp_exchange(
        &w.client_ns,
        SocketAddrV4::new(s, 8080),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(tcp_exchange(
        &w.client_ns,
        SocketAddrV4::new(s, 9090),
        Duration::from_millis(300)
    )
    .is_err());
    // On again: the next flow is logged, and nothing from while it was off.
    let out = tapestry(&["cell", "flow-log", "on", "--state-dir", &cell1]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let marker = tapestry_connect_from_port(&w, 45_123);
    wait_until(
        "the flow after switching on",
        Duration::from_secs(10),
        || flow_lines(&log).iter().any(|l| l["source_port"] == marker),
    );
    let lines = flow_lines(&log);
    assert_eq!(
        lines.len(),
        before + 1,
        "only the marker flow: {:?}",
        &lines[before..]
    );
    // Bad arguments are refused by the CLI.
    let out = tapestry(&["cell", "flow-log", "maybe", "--state-dir", &cell1]);
    assert!(!out.status.success());
}

/// One allowed connection from the client's source port `sport`; returns the port.
fn tapestry_connect_from_port(w: &World, sport: u16) -> u16 {
    let dst = SocketAddrV4::new(w.server_ip, 8080);
    tapestry::demo::overlay::in_netns(&w.client_ns, move || {
        use std::io::{Read, Write};
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, sport).into())?;
        sock.connect_timeout(&dst.into(), Duration::from_secs(5))?;
        let mut s: std::net::TcpStream = sock.into();
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"marker\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(())
    })
    .unwrap();
    sport
}

/// GET http://ADDR/metrics from inside namespace `ns`, parsed as Prometheus text.
fn scrape(ns: &Path, addr: String) -> prometheus_parse::Scrape {
    let body = in_netns(ns, move || {
        let resp = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()?
            .get(format!("http://{addr}/metrics"))
            .send()?;
        assert_eq!(resp.status().as_u16(), 200);
        let ct = resp.headers()["content-type"].to_str()?.to_string();
        assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
        Ok(resp.text()?)
    })
    .unwrap();
    assert!(body.ends_with("# EOF\n"), "{body}");
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).unwrap()
}

/// The value of the sample `name` whose labels include `want` (0 when there is none).
fn sample(s: &prometheus_parse::Scrape, name: &str, want: &[(&str, &str)]) -> f64 {
    let found: Vec<f64> = s
        .samples
        .iter()
        .filter(|x| x.metric == name && want.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .map(|x| match &x.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            other => panic!("{name}: {other:?}"),
        })
        .collect();
    assert!(found.len() <= 1, "{name} {want:?}: {found:?}");
    found.first().copied().unwrap_or(0.0)
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_observe_metrics() {
    let w = world("tpom");
    let s = w.server_ip;
    let ns1 = w.ov.tb.ns_path(&w.ov.cells[1].ns);
    let at1 = format!("{}:9100", w.ov.cells[1].underlay);
    let client_tag = tag_of(&w.ov, 0, "client").to_string();
    let server_tag = tag_of(&w.ov, 1, "server").to_string();
    let hit = [
        ("source_tag", client_tag.as_str()),
        ("source_app", "app-client"),
        ("destination_tag", server_tag.as_str()),
        ("destination_app", "app-server"),
        ("protocol", "tcp"),
        ("ports", "8080-8080"),
    ];
    let server_port = [("handle", "server"), ("app", "app-server")];
    let before = scrape(&ns1, at1.clone());
    const N: usize = 3;
    for _ in 0..N {
        let r = tcp_exchange(
            &w.client_ns,
            SocketAddrV4::new(s, 8080),
            Duration::from_secs(5),
        )
        .unwrap();
        assert!(r.starts_with("eighty"), "{r}");
    }
    assert!(tcp_exchange(
        &w.client_ns,
        SocketAddrV4::new(s, 9090),
        Duration::from_millis(300)
    )
    .is_err());
    let after = scrape(&ns1, at1);
    let delta = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    // Each connection is one new flow admitted by the one policy.
    assert_eq!(delta("tapestry_cell_policy_hits_total", &hit), N as f64);
    // The denied SYN, by reason.
    assert!(delta("tapestry_cell_drops_total", &[("reason", "policy_denied")]) >= 1.0);
    // Every connection is at least SYN, ACK, data, FIN to the server, and its answers back.
    let tx = delta("tapestry_cell_port_tx_packets_total", &server_port);
    let rx = delta("tapestry_cell_port_rx_packets_total", &server_port);
    assert!(
        tx >= 4.0 * N as f64 && rx >= 3.0 * N as f64,
        "tx {tx} rx {rx}"
    );
    assert!(delta("tapestry_cell_port_tx_bytes_total", &server_port) >= tx * 54.0);
    // The client's segments came over the underlay (ARP answers to the server do not).
    let underlay = delta("tapestry_cell_underlay_rx_packets_total", &[]);
    assert!(underlay >= 3.0 * N as f64, "{underlay}");
    assert!(sample(&after, "tapestry_cell_conntrack_entries", &[]) >= 1.0);
    assert!(sample(&after, "tapestry_cell_feed_version", &[]) >= 1.0);
    assert_eq!(sample(&after, "tapestry_cell_feed_version_lag", &[]), 0.0);
    assert_eq!(sample(&after, "tapestry_cell_control_connected", &[]), 1.0);

    // The control plane: the policy created through the external API, the cells' feed polls,
    // and database transactions, as latency histograms.
    let ctl = scrape(&w.ov.tb.ns_path("ctl"), format!("{}:9101", underlay_ip(10)));
    let count = |name: &str, labels: &[(&str, &str)]| -> f64 {
        ctl.samples
            .iter()
            .filter(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
            .map(|x| match &x.value {
                prometheus_parse::Value::Untyped(v) | prometheus_parse::Value::Counter(v) => *v,
                other => panic!("{name}: {other:?}"),
            })
            .sum()
    };
    // Each histogram's `_count` sample: how many requests or transactions were timed.
    let api = "tapestry_control_api_request_duration_seconds_count";
    let db = "tapestry_control_db_transaction_duration_seconds_count";
    let all: Vec<String> = ctl
        .samples
        .iter()
        .filter(|x| x.metric.ends_with("_count"))
        .map(|x| format!("{} {:?}", x.metric, x.labels))
        .collect();
    assert!(
        count(
            api,
            &[
                ("api", "external"),
                ("method", "POST"),
                ("route", "/networking/:version/external/policies"),
                ("status", "200")
            ]
        ) > 0.0,
        "{all:?}"
    );
    assert!(
        count(api, &[("api", "internal"), ("route", "/internal/feed")]) > 0.0,
        "{all:?}"
    );
    assert!(count(db, &[("mode", "write")]) > 0.0, "{all:?}");
    assert!(count(db, &[("mode", "read")]) > 0.0, "{all:?}");
}
