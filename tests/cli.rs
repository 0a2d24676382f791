//! The `tapestry policy|asg|route|lease` clients against a real `tapestry control` on loopback.
mod support;

use std::path::PathBuf;
use std::process::{Command, Output};

use support::bin;

/// A `tapestry control` (tests/support: loopback ports it picks itself, its stderr printed when
/// a test fails) in a data dir of its own, and the CLI run against it.
struct Control {
    _ctl: support::Control,
    dir: tempfile::TempDir,
    api: String,
}

impl Control {
    fn start(extra: &[&str]) -> Control {
        let dir = tempfile::tempdir().unwrap();
        let ctl = support::Control::start(dir.path(), extra);
        let api = ctl.external.clone();
        let ctl = Control {
            _ctl: ctl,
            dir,
            api,
        };
        assert!(
            ctl.token_file().exists(),
            "the control plane wrote no admin token"
        );
        ctl
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("admin.token")
    }

    /// Runs the CLI with this control plane's API and admin token.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .args(["--api", &self.api, "--token-file"])
            .arg(self.token_file())
            .env_remove("TAPESTRY_API")
            .env_remove("TAPESTRY_TOKEN")
            .output()
            .unwrap()
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(!out.status.success(), "{args:?} should fail");
        String::from_utf8(out.stderr).unwrap()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }
}

#[test]
fn policy_add_list_remove() {
    let ctl = Control::start(&[]);
    assert!(ctl
        .ok(&[
            "policy",
            "add",
            "app-a",
            "app-b",
            "--protocol",
            "tcp",
            "--port",
            "8080"
        ])
        .contains("added policy app-a -> app-b tcp 8080"));
    ctl.ok(&[
        "policy",
        "add",
        "app-a",
        "app-c",
        "--protocol",
        "udp",
        "--port",
        "9000-9010",
    ]);
    // Idempotent.
    ctl.ok(&["policy", "add", "app-a", "app-b", "--port", "8080"]);

    let table = ctl.ok(&["policy", "list"]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 3, "{table}");
    assert!(lines[0].starts_with("SOURCE"));
    assert!(table.contains("app-c") && table.contains("9000-9010") && table.contains("udp"));

    let v = ctl.json(&["policy", "list"]);
    assert_eq!(v["total_policies"], 2);
    let v = ctl.json(&["policy", "list", "--destination", "app-c"]);
    assert_eq!(v["total_policies"], 1);
    assert_eq!(v["policies"][0]["destination"]["ports"]["start"], 9000);
    let v = ctl.json(&["policy", "list", "--id", "app-b"]);
    assert_eq!(v["total_policies"], 1);
    let v = ctl.json(&["policy", "list", "--id", "app-b,app-c"]);
    assert_eq!(v["total_policies"], 2);

    let tags = ctl.json(&["policy", "tags"]);
    assert_eq!(tags["tags"].as_array().unwrap().len(), 3);
    assert!(ctl.ok(&["policy", "tags"]).contains("0001"));

    ctl.ok(&["policy", "remove", "app-a", "app-b", "--port", "8080"]);
    // Removing a missing policy is not an error.
    ctl.ok(&["policy", "remove", "app-a", "app-b", "--port", "8080"]);
    assert_eq!(ctl.json(&["policy", "list"])["total_policies"], 1);
}

#[test]
fn app_delete_and_policy_cleanup() {
    let ctl = Control::start(&[]);
    ctl.ok(&["policy", "add", "app-a", "app-b", "--port", "8080"]);
    ctl.ok(&["policy", "add", "app-c", "app-d", "--port", "8080"]);
    let out = ctl.ok(&["app", "delete", "app-a"]);
    assert!(
        out.contains("deleted app app-a: removed 1 policies"),
        "{out}"
    );
    assert!(out.contains("app-b"), "{out}");
    assert_eq!(ctl.json(&["policy", "list"])["total_policies"], 1);
    // A policy naming the deleted app again is stale: cleanup removes it.
    ctl.ok(&["policy", "add", "app-e", "app-a", "--port", "9000"]);
    let v = ctl.json(&["policy", "cleanup"]);
    assert_eq!(v["total_policies"], 1);
    assert_eq!(v["policies"][0]["source"]["id"], "app-e");
    assert!(ctl
        .ok(&["policy", "cleanup"])
        .contains("removed 0 stale policies"));
    let e = ctl.fails(&["app", "delete", "no-such-app"]);
    assert!(
        e.contains("404") && e.contains("app 'no-such-app' not found"),
        "{e}"
    );
}

#[test]
fn errors_are_reported_with_nonzero_exit() {
    // (The admin token is not held to the policy quota, as in CF: the server's error here is the
    // bound on new apps per request.)
    let ctl = Control::start(&["--max-new-apps-per-request", "1"]);
    ctl.ok(&["policy", "add", "a", "a"]);
    ctl.ok(&["policy", "add", "a", "b"]);
    let err = ctl.fails(&["policy", "add", "c", "d"]);
    assert!(
        err.contains("400") && err.contains("too many new apps in one request"),
        "{err}"
    );

    let err = ctl.fails(&["policy", "add", "a", "b", "--port", "0"]);
    assert!(err.contains("1-65535"), "{err}");
    let err = ctl.fails(&["policy", "add", "a", "b", "--protocol", "icmp"]);
    assert!(err.contains("icmp"), "{err}");

    // A wrong token: the server's 401 and its message.
    let bad = ctl.dir.path().join("bad.token");
    std::fs::write(&bad, "nonsense").unwrap();
    let out = Command::new(bin())
        .args(["policy", "list", "--api", &ctl.api, "--token-file"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));

    // No token at all.
    let out = Command::new(bin())
        .args(["policy", "list", "--api", &ctl.api])
        .env_remove("TAPESTRY_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--token-file"));

    // The environment works instead of flags.
    let token = std::fs::read_to_string(ctl.token_file()).unwrap();
    let out = Command::new(bin())
        .args(["policy", "list", "--json"])
        .env("TAPESTRY_API", &ctl.api)
        .env("TAPESTRY_TOKEN", token.trim())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Nothing listening: a port we hold bound, without listening, for as long as the CLI runs.
    let closed = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    closed
        .bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = closed.local_addr().unwrap().as_socket().unwrap().port();
    let out = Command::new(bin())
        .args([
            "lease",
            "list",
            "--api",
            &format!("http://127.0.0.1:{port}"),
        ])
        .env("TAPESTRY_TOKEN", "x")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&port.to_string()), "names the address: {err}");
    drop(closed);
}

#[test]
fn control_names_bad_cloud_controller_flags() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    let empty = dir.path().join("empty");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::write(&empty, "").unwrap();
    let secret = secret.to_str().unwrap();
    let empty = empty.to_str().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let fails = |extra: &[&str]| {
        let out = Command::new(bin())
            .args(["control", "--data-dir", data])
            .args([
                "--listen",
                "127.0.0.1:0",
                "--internal-listen",
                "127.0.0.1:0",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{extra:?} started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cc = "http://127.0.0.1:1";
    let e = fails(&["--cloud-controller", cc, "--uaa-client-secret-file", secret]);
    assert!(e.contains("--uaa-url"), "{e}");
    let e = fails(&["--uaa-jwks-url", "http://127.0.0.1:1/keys"]);
    assert!(e.contains("--uaa-issuer"), "{e}");
    let e = fails(&[
        "--cloud-controller",
        cc,
        "--uaa-url",
        cc,
        "--uaa-client-secret-file",
        empty,
    ]);
    assert!(e.contains("empty"), "{e}");
    let e = fails(&[
        "--cloud-controller",
        "https://127.0.0.1:1",
        "--uaa-url",
        cc,
        "--uaa-client-secret-file",
        secret,
    ]);
    assert!(e.contains("--cloud-controller-ca-cert"), "{e}");
    let e = fails(&["--uaa-url", cc]);
    assert!(e.contains("--cloud-controller"), "{e}");
    let e = fails(&["--cloud-controller", cc, "--asg-sync-interval", "30s"]);
    assert!(e.contains("--uaa-client-secret-file"), "{e}");
    let e = fails(&[
        "--cloud-controller",
        cc,
        "--uaa-url",
        cc,
        "--uaa-client-secret-file",
        secret,
        "--asg-sync-interval",
        "0",
    ]);
    assert!(e.contains("longer than 0 seconds"), "{e}");
}

#[test]
fn security_groups() {
    let ctl = Control::start(&[]);
    let rules = ctl.dir.path().join("rules.json");
    std::fs::write(
        &rules,
        r#"[{"protocol":"tcp","destination":"10.0.11.0/24","ports":"80,443","log":true,"description":"web"},
            {"protocol":"icmp","destination":"0.0.0.0/0","type":0,"code":0}]"#,
    )
    .unwrap();
    let rules_s = rules.to_str().unwrap();
    assert!(ctl
        .ok(&[
            "asg",
            "create",
            "web",
            rules_s,
            "--running-space",
            "space-1"
        ])
        .contains("created security group web (2 rules"));
    let list = ctl.ok(&["asg", "list"]);
    assert!(list.contains("web") && list.contains("space-1"), "{list}");

    ctl.ok(&[
        "asg",
        "bind",
        "web",
        "--space",
        "space-2",
        "--lifecycle",
        "staging",
    ]);
    ctl.ok(&["asg", "bind", "web", "--global"]);
    let g = ctl.json(&["asg", "show", "web"]);
    assert_eq!(g["staging_spaces"], serde_json::json!(["space-2"]));
    assert_eq!(g["globally_enabled"]["running"], true);
    ctl.ok(&["asg", "unbind", "web", "--space", "space-1"]);
    ctl.ok(&["asg", "unbind", "web", "--global"]);
    let g = ctl.json(&["asg", "show", "web"]);
    assert_eq!(g["running_spaces"], serde_json::json!([]));
    assert_eq!(g["globally_enabled"]["running"], false);
    let show = ctl.ok(&["asg", "show", "web"]);
    assert!(
        show.contains("10.0.11.0/24") && show.contains("type 0 code 0"),
        "{show}"
    );

    std::fs::write(
        &rules,
        r#"[{"protocol":"all","destination":"10.1.0.0-10.1.0.9"}]"#,
    )
    .unwrap();
    ctl.ok(&["asg", "update", "web", rules_s]);
    let g = ctl.json(&["asg", "show", "web"]);
    assert_eq!(g["rules"].as_array().unwrap().len(), 1);
    assert_eq!(
        g["staging_spaces"],
        serde_json::json!(["space-2"]),
        "bindings kept"
    );

    // An invalid rule: the server's 400 names the rule and the field.
    std::fs::write(
        &rules,
        r#"[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"99999"}]"#,
    )
    .unwrap();
    let err = ctl.fails(&["asg", "create", "bad", rules_s]);
    assert!(err.contains("400") && err.contains("ports"), "{err}");
    std::fs::write(&rules, "{not json").unwrap();
    assert!(ctl
        .fails(&["asg", "create", "bad", rules_s])
        .contains("not JSON"));

    ctl.ok(&["asg", "delete", "web"]);
    assert!(ctl.fails(&["asg", "show", "web"]).contains("404"));
}

#[test]
fn routes_and_leases() {
    let ctl = Control::start(&[]);
    assert!(ctl
        .ok(&["route", "map", "backend.apps.internal", "app-b"])
        .contains("mapped route backend.apps.internal -> app-b"));
    let list = ctl.ok(&["route", "list"]);
    assert!(list.contains("backend.apps.internal") && list.contains("app-b"));
    assert_eq!(
        ctl.json(&["route", "list"])["routes"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let err = ctl.fails(&["route", "map", "backend.example.com", "app-b"]);
    assert!(err.contains("400"), "{err}");
    ctl.ok(&["route", "unmap", "backend.apps.internal", "app-b"]);
    assert_eq!(
        ctl.json(&["route", "list"])["routes"]
            .as_array()
            .unwrap()
            .len(),
        0
    );

    let out = ctl.ok(&[
        "lease",
        "add",
        "--underlay-ip",
        "198.18.0.50",
        "--overlay-subnet",
        "10.255.200.0/24",
    ]);
    assert!(
        out.contains("10.255.200.0/24") && out.contains("static"),
        "{out}"
    );
    let leases = ctl.json(&["lease", "list"]);
    assert_eq!(leases["leases"][0]["underlay_ip"], "198.18.0.50");
    let table = ctl.ok(&["lease", "list"]);
    assert!(table.contains("never"), "{table}");
    let err = ctl.fails(&[
        "lease",
        "add",
        "--underlay-ip",
        "198.18.0.51",
        "--overlay-subnet",
        "192.168.0.0/24",
    ]);
    assert!(err.contains("4"), "{err}");
}

/// `tapestry cell` rejects bad flags and an address it cannot have before it contacts the
/// control plane (nothing listens at --control here, so reaching it would fail differently).
#[test]
fn cell_refuses_bad_workers_and_a_taken_vtep_before_taking_a_lease() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(creds.join(f), "not used").unwrap();
    }
    let cell = |extra: &[&str]| -> Output {
        Command::new(bin())
            .args(["cell", "--control", "https://127.0.0.1:9", "--credentials"])
            .arg(&creds)
            .args(["--underlay-ip", "127.0.0.1", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(extra)
            .output()
            .unwrap()
    };
    let out = cell(&["--workers", "65"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--workers 65 is too many: at most 64"),
        "{err}"
    );

    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    for workers in ["1", "2"] {
        let out = cell(&["--vtep-port", &port, "--workers", workers]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("binding the VTEP socket 127.0.0.1:{port}"))
                && err.matches("Address already in use").count() == 1,
            "{workers} worker(s): {err}"
        );
    }
}

/// `--deny-networks` is checked before the cell contacts the control plane, and a bad entry is
/// named.
#[test]
fn cell_names_a_bad_deny_network() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("creds");
    std::fs::create_dir(&creds).unwrap();
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        std::fs::write(creds.join(f), "not used").unwrap();
    }
    for (value, named) in [
        ("169.254.0.0/16,10.0.0.0/33", "\"10.0.0.0/33\""),
        ("metadata", "\"metadata\""),
        ("10.1.2.3", "\"10.1.2.3\""),
    ] {
        let out = Command::new(bin())
            .args(["cell", "--control", "https://127.0.0.1:9", "--credentials"])
            .arg(&creds)
            .args(["--underlay-ip", "127.0.0.1", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(["--deny-networks", value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--deny-networks") && err.contains(named) && err.contains("CIDR"),
            "{value}: {err}"
        );
    }
}

/// `tapestry container up --lifecycle` and `--net-in` reach the cell's attach request.
#[test]
fn container_up_sends_the_lifecycle_and_net_in() {
    use std::sync::{Arc, Mutex};
    use tapestry::cell::api::{self, Attachment, Request};
    struct Recorder(Mutex<Vec<String>>);
    impl api::Handler for Recorder {
        fn handle(&self, req: Request) -> anyhow::Result<serde_json::Value> {
            let line = serde_json::to_string(&req)?;
            let (up, mut port_mappings) = match req {
                Request::Up(up) => (up, vec![]),
                Request::Attach(a) => (a.up, a.port_mappings),
                _ => anyhow::bail!("unexpected request"),
            };
            // As the cell does: host port 0 gets one from 61000-65535.
            for (i, m) in port_mappings.iter_mut().enumerate() {
                if m.host_port == 0 {
                    m.host_port = 61000 + i as u16;
                }
            }
            self.0.lock().unwrap().push(line);
            Ok(serde_json::to_value(Attachment {
                handle: up.handle,
                container_ip: "10.255.1.2".parse().unwrap(),
                gateway: "169.254.0.1".parse().unwrap(),
                mac: "ee:ee:0a:ff:01:02".into(),
                mtu: 1450,
                ifname: up.ifname,
                netns: up.netns,
                dns_servers: vec![],
                search_domains: vec![],
                port_mappings,
                instance_identity: None,
            })?)
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("cell.sock");
    let rec = Arc::new(Recorder(Mutex::new(vec![])));
    api::serve(&sock, rec.clone()).unwrap();
    let up = |extra: &[&str]| {
        Command::new(bin())
            .args(["container", "up", "--cell-socket"])
            .arg(&sock)
            .args(["--handle", "h1", "--app", "A", "--space", "S"])
            .args(["--netns", "/var/run/netns/none"])
            .args(extra)
            .output()
            .unwrap()
    };
    for extra in [
        &["--lifecycle", "staging"][..],
        &["--lifecycle", "running"],
        &[],
    ] {
        let out = up(extra);
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["container_ip"], "10.255.1.2");
    }
    let out = up(&["--lifecycle", "build"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--lifecycle") && err.contains("staging"),
        "{err}"
    );
    let sent = rec.0.lock().unwrap().clone();
    assert_eq!(sent.len(), 3, "{sent:?}");
    assert!(
        sent[0].contains(r#""op":"attach""#) && sent[0].contains(r#""lifecycle":"staging""#),
        "{}",
        sent[0]
    );
    assert!(sent[1].contains(r#""op":"up""#) && !sent[1].contains("lifecycle"));
    assert_eq!(sent[1], sent[2]);

    // --net-in: the mappings reach the cell and the mapped ports are printed, flat and as
    // Garden's properties.
    let out = up(&["--net-in", "0:8080", "--net-in", "8443:443/udp"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = rec.0.lock().unwrap().last().cloned().unwrap();
    assert!(
        sent.contains(r#""op":"attach""#)
            && sent.contains(r#""port_mappings":[{"hostPort":0,"containerPort":8080,"protocol":"tcp"},{"hostPort":8443,"containerPort":443,"protocol":"udp"}]"#),
        "{sent}"
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["container_ip"], "10.255.1.2");
    assert_eq!(
        v["mapped_ports"],
        serde_json::json!([{"HostPort": 61000, "ContainerPort": 8080, "Protocol": "tcp"},
            {"HostPort": 8443, "ContainerPort": 443, "Protocol": "udp"}])
    );
    assert_eq!(
        v["properties"]["garden.network.mapped-ports"],
        r#"[{"ContainerPort":8080,"HostPort":61000},{"ContainerPort":443,"HostPort":8443}]"#
    );
    assert_eq!(v["properties"]["garden.network.container-ip"], "10.255.1.2");
    // Bad mappings are refused before the cell is asked, naming the flag.
    let before = rec.0.lock().unwrap().len();
    for (bad, why) in [
        (&["--net-in", "8080"][..], "HOST:CONTAINER"),
        (&["--net-in", "70000:80"], "out of range"),
        (&["--net-in", "80:0"], "out of range"),
        (&["--net-in", "80:80/sctp"], "tcp or udp"),
        (&["--net-in", "0:61443"], "61443"),
        (&["--net-in", "80:1", "--net-in", "80:2"], "mapped twice"),
    ] {
        let out = up(bad);
        assert!(!out.status.success(), "{bad:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--net-in") && err.contains(why),
            "{bad:?}: {err}"
        );
    }
    assert_eq!(rec.0.lock().unwrap().len(), before);
}
