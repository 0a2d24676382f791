//! End-to-end CNI conformance (root): the real `tapestry-cni` binary driven the way libcni
//! drives it (environment variables, the network configuration on stdin, JSON on stdout)
//! against a real cell in network namespaces. Namespaces are prefixed `tpcni` and removed on
//! every exit path by the testbed's Drop.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tapestry::demo::overlay::Overlay;
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// One plugin run: `(exit status ok, stdout parsed as JSON or Null when empty)`.
struct Cni {
    socket: PathBuf,
}

impl Cni {
    fn run(&self, env: &[(&str, &str)], conf: &Value) -> (bool, Value) {
        use std::io::Write;
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tapestry-cni"));
        cmd.env_clear().env("CNI_PATH", "/opt/cni/bin");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("tapestry-cni runs");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout {text:?}: {e}"))
        };
        (out.status.success(), v)
    }

    fn conf(&self, version: &str, name: &str, extra: Value) -> Value {
        let mut c = json!({"cniVersion": version, "name": name, "type": "tapestry-cni",
            "cell_socket": self.socket, "metadata": {"app_id": "app-X", "space_id": "s", "org_id": "o"}});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        c
    }
}

fn attach_env<'a>(
    cmd: &'a str,
    id: &'a str,
    ns: &'a str,
    ifname: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", cmd),
        ("CNI_CONTAINERID", id),
        ("CNI_NETNS", ns),
        ("CNI_IFNAME", ifname),
    ]
}

/// A control plane and one cell (namespaces prefixed `prefix`), container namespaces `names`
/// (their paths, in order), and the plugin pointed at the cell.
fn setup(prefix: &str, names: &[&str]) -> (Overlay, Cni, Vec<String>) {
    assert!(is_root(), "end-to-end tests need root (network namespaces)");
    let mut ov = Overlay::start(prefix, bin(), 1, &[]).expect("overlay starts");
    let paths = names
        .iter()
        .map(|n| ov.tb.add_namespace(n).unwrap().display().to_string())
        .collect();
    let cni = Cni {
        socket: ov.cell_socket(0),
    };
    (ov, cni, paths)
}

fn link_exists(ov: &Overlay, ns: &str, ifname: &str) -> bool {
    ov.tb
        .exec(ns, "ip", &["link", "show", ifname])
        .unwrap()
        .status
        .success()
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_1_1_status_gc_version() {
    let (mut ov, cni, ns_paths) = setup("tpcni1", &["a", "b"]);
    let (ns_a, ns_b) = (ns_paths[0].as_str(), ns_paths[1].as_str());
    // VERSION lists 1.1.0.
    let (ok, v) = cni.run(
        &[("CNI_COMMAND", "VERSION")],
        &json!({"cniVersion": "1.1.0"}),
    );
    assert!(ok, "{v}");
    assert_eq!(v["cniVersion"], "1.1.0");
    assert!(v["supportedVersions"]
        .as_array()
        .unwrap()
        .contains(&json!("1.1.0")));
    // STATUS: ready.
    let status = [("CNI_COMMAND", "STATUS")];
    let (ok, v) = cni.run(&status, &cni.conf("1.1.0", "net1", json!({})));
    assert!(ok && v.is_null(), "{v}");
    // STATUS and GC with 1.0.0: a version error, not a missing CNI_CONTAINERID.
    for cmd in ["STATUS", "GC"] {
        let (ok, v) = cni.run(
            &[("CNI_COMMAND", cmd)],
            &cni.conf("1.0.0", "net1", json!({})),
        );
        assert!(!ok);
        assert_eq!(v["code"], 1, "{v}");
        assert_eq!(
            v["msg"],
            format!("CNI_COMMAND {cmd} is not supported in cniVersion 1.0.0")
        );
    }
    // ADD with 1.1.0 on two networks: c1 and c2 on net1, c3 on net2.
    let net1 = cni.conf("1.1.0", "net1", json!({}));
    let net2 = cni.conf("1.1.0", "net2", json!({}));
    for (id, ns, ifname, conf) in [
        ("c1", ns_a, "eth0", &net1),
        ("c2", ns_b, "eth0", &net1),
        ("c3", ns_a, "eth1", &net2),
    ] {
        let (ok, v) = cni.run(&attach_env("ADD", id, ns, ifname), conf);
        assert!(ok, "ADD {id}: {v}");
        assert_eq!(v["cniVersion"], "1.1.0");
        assert_eq!(v["interfaces"][0]["name"], ifname);
    }
    // GC of net1 keeping c1: c2 is released, c1 and (net2's) c3 stay.
    let gc = cni.conf(
        "1.1.0",
        "net1",
        json!({"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}),
    );
    let (ok, v) = cni.run(&[("CNI_COMMAND", "GC")], &gc);
    assert!(ok && v.is_null(), "{v}");
    assert!(link_exists(&ov, "a", "eth0"), "c1 kept");
    assert!(!link_exists(&ov, "b", "eth0"), "c2 released");
    assert!(link_exists(&ov, "a", "eth1"), "net2's c3 untouched");
    let handles: Vec<String> = ov.cell_status(0).unwrap()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["handle"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handles, ["c1", "c3"]);
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", ns_a, "eth0"), &net1);
    assert!(ok, "{v}");
    // GC without the list is refused and releases nothing.
    let (ok, v) = cni.run(&[("CNI_COMMAND", "GC")], &net1);
    assert!(!ok);
    assert_eq!(v["code"], 7, "{v}");
    assert!(link_exists(&ov, "a", "eth0"));
    // An empty list releases all of net2.
    let gc2 = cni.conf("1.1.0", "net2", json!({"cni.dev/valid-attachments": []}));
    assert!(cni.run(&[("CNI_COMMAND", "GC")], &gc2).0);
    assert!(!link_exists(&ov, "a", "eth1"), "c3 released");
    assert!(link_exists(&ov, "a", "eth0"));
    // With the cell down, STATUS says "not available" (50).
    ov.kill_cell(0);
    let (ok, v) = cni.run(&status, &cni.conf("1.1.0", "net1", json!({})));
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_identity_per_container() {
    let (ov, cni, ns_paths) = setup("tpcni2", &["a", "b", "c"]);
    let (ns_a, ns_b, ns_c) = (
        ns_paths[0].as_str(),
        ns_paths[1].as_str(),
        ns_paths[2].as_str(),
    );
    // One network, three apps: from metadata, from CNI_ARGS, from runtimeConfig.
    let conf = cni.conf("1.0.0", "net1", json!({"capabilities": {"tapestry": true}}));
    assert!(cni.run(&attach_env("ADD", "ca", ns_a, "eth0"), &conf).0);
    let mut env = attach_env("ADD", "cb", ns_b, "eth0");
    env.push((
        "CNI_ARGS",
        "IgnoreUnknown=1;K8S_POD_NAME=b;APP_ID=app-B;SPACE_ID=space-B;INSTANCE_INDEX=3",
    ));
    let (ok, v) = cni.run(&env, &conf);
    assert!(ok, "{v}");
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"tapestry": {"app_id": "app-C", "instance_index": 1}});
    let mut env = attach_env("ADD", "cc", ns_c, "eth0");
    env.push(("CNI_ARGS", "APP_ID=app-ignored"));
    let (ok, v) = cni.run(&env, &rc);
    assert!(ok, "{v}");
    let ports = ov.cell_status(0).unwrap()["ports"].clone();
    let apps: Vec<(String, String, String)> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap().to_string();
            (s("handle"), s("app_id"), s("space_id"))
        })
        .collect();
    assert_eq!(
        apps,
        [
            ("ca".into(), "app-X".into(), "s".into()),
            ("cb".into(), "app-B".into(), "space-B".into()),
            ("cc".into(), "app-C".into(), "s".into()),
        ]
    );
    // A bad value names the field; nothing is attached.
    let mut env = attach_env("ADD", "cd", ns_c, "eth1");
    env.push(("CNI_ARGS", "INSTANCE_INDEX=minus-one"));
    let (ok, v) = cni.run(&env, &conf);
    assert!(!ok);
    assert_eq!(v["code"], 4, "{v}");
    assert!(
        v["msg"]
            .as_str()
            .unwrap()
            .contains("CNI_ARGS INSTANCE_INDEX"),
        "{v}"
    );
    let mut env = attach_env("ADD", "cd", ns_c, "eth1");
    env.push(("CNI_ARGS", "FOO=1"));
    let (ok, v) = cni.run(&env, &conf);
    assert!(!ok);
    assert!(v["msg"].as_str().unwrap().contains("FOO"), "{v}");
    assert!(!link_exists(&ov, "c", "eth1"));
    // DEL ignores CNI_ARGS.
    let mut env = attach_env("DEL", "cb", ns_b, "eth0");
    env.push(("CNI_ARGS", "FOO=1"));
    assert!(cni.run(&env, &conf).0);
    assert!(!link_exists(&ov, "b", "eth0"));
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_one_container_two_networks() {
    let (mut ov, cni, ns_paths) = setup("tpcni3", &["a", "b"]);
    let (ns, other) = (ns_paths[0].as_str(), ns_paths[1].as_str());
    let net1 = cni.conf("1.1.0", "net1", json!({}));
    let net2 = cni.conf("1.1.0", "net2", json!({}));
    let (ok, r1) = cni.run(&attach_env("ADD", "c1", ns, "eth0"), &net1);
    assert!(ok, "{r1}");
    let (ok, r2) = cni.run(&attach_env("ADD", "c1", ns, "net2"), &net2);
    assert!(ok, "{r2}");
    assert_ne!(r1["ips"][0]["address"], r2["ips"][0]["address"]);
    assert_eq!(r2["interfaces"][0]["name"], "net2");
    assert!(link_exists(&ov, "a", "eth0") && link_exists(&ov, "a", "net2"));
    // ADD again is idempotent per attachment.
    let (ok, again) = cni.run(&attach_env("ADD", "c1", ns, "net2"), &net2);
    assert!(ok);
    assert_eq!(again["ips"], r2["ips"]);
    // The same container id in another netns is refused.
    let (ok, v) = cni.run(&attach_env("ADD", "c1", other, "eth1"), &net2);
    assert!(!ok, "{v}");
    assert!(
        v["details"].as_str().unwrap().contains("already attached"),
        "{v}"
    );
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &net1);
    assert!(ok, "{v}");
    assert!(cni.run(&attach_env("CHECK", "c1", ns, "net2"), &net2).0);
    assert!(!cni.run(&attach_env("CHECK", "c1", ns, "eth9"), &net2).0);
    // DEL removes only the named attachment.
    assert!(cni.run(&attach_env("DEL", "c1", ns, "net2"), &net2).0);
    assert!(link_exists(&ov, "a", "eth0"), "eth0 stays");
    assert!(!link_exists(&ov, "a", "net2"), "net2 removed");
    assert!(cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &net1).0);
    assert!(!cni.run(&attach_env("CHECK", "c1", ns, "net2"), &net2).0);
    assert!(
        cni.run(&attach_env("DEL", "c1", ns, "net2"), &net2).0,
        "DEL is idempotent"
    );
    let ports = ov.cell_status(0).unwrap()["ports"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(ports, 1);
    // Restart: the remaining attachment comes back under its key.
    ov.kill_cell(0);
    ov.start_cell(0).unwrap();
    let mut up = false;
    for _ in 0..100 {
        if cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &net1).0 {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "CHECK passes after the cell restarts");
    assert!(cni.run(&attach_env("DEL", "c1", ns, "eth0"), &net1).0);
    assert!(!link_exists(&ov, "a", "eth0"));
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_requested_ip() {
    let (ov, cni, ns_paths) = setup("tpcni4", &["a", "b"]);
    let (ns_a, ns_b) = (ns_paths[0].as_str(), ns_paths[1].as_str());
    let subnet: ipnet::Ipv4Net = ov.cell_status(0).unwrap()["lease"]["overlay_subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let host = |n: u32| std::net::Ipv4Addr::from(u32::from(subnet.network()) + n);
    let conf = cni.conf("1.1.0", "net1", json!({}));
    let add = |id: &str, ns: &str, args: String, conf: &Value| {
        let mut env = attach_env("ADD", id, ns, "eth0");
        env.push(("CNI_ARGS", &args));
        cni.run(&env, conf)
    };
    // IP= in CNI_ARGS gets exactly that address, configured in the netns.
    let (ok, v) = add("c1", ns_a, format!("IP={}", host(9)), &conf);
    assert!(ok, "{v}");
    assert_eq!(v["ips"][0]["address"], format!("{}/32", host(9)));
    let shown = ov
        .tb
        .exec("a", "ip", &["-o", "addr", "show", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&shown.stdout).contains(&host(9).to_string()));
    // Taken, outside the subnet, the VTEP's: clear errors, nothing attached.
    for (ip, why) in [
        (host(9), "taken"),
        ("192.0.2.1".parse().unwrap(), "subnet"),
        (subnet.network(), "subnet"),
    ] {
        let (ok, v) = add("c2", ns_b, format!("IP={ip}"), &conf);
        assert!(!ok, "{ip}");
        assert!(v["details"].as_str().unwrap().contains(why), "{ip}: {v}");
        assert!(!link_exists(&ov, "b", "eth0"));
    }
    // runtimeConfig.ips (the `ips` capability).
    let mut rc = conf.clone();
    rc["runtimeConfig"] = json!({"ips": [format!("{}/24", host(20))]});
    let (ok, v) = add("c2", ns_b, String::new(), &rc);
    assert!(ok, "{v}");
    assert_eq!(v["ips"][0]["address"], format!("{}/32", host(20)));
    // ADD again asking for another address is refused; asking for the same is idempotent.
    let (ok, v) = add("c2", ns_b, format!("IP={}", host(21)), &conf);
    assert!(!ok, "{v}");
    assert!(add("c2", ns_b, format!("IP={}", host(20)), &conf).0);
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_chaining_and_check() {
    let (ov, cni, ns_paths) = setup("tpcni5", &["a", "b"]);
    let (ns, other) = (ns_paths[0].as_str(), ns_paths[1].as_str());
    // Not first in the chain: an earlier plugin's result is kept, ours appended.
    let earlier = json!({"cniVersion": "1.0.0",
        "interfaces": [{"name": "dummy0", "sandbox": ns}],
        "ips": [{"address": "192.168.77.5/24", "interface": 0}],
        "routes": [{"dst": "192.168.0.0/16"}]});
    let chained = cni.conf("1.0.0", "net1", json!({"prevResult": earlier}));
    let (ok, res) = cni.run(&attach_env("ADD", "c1", ns, "eth0"), &chained);
    assert!(ok, "{res}");
    assert_eq!(res["interfaces"][0]["name"], "dummy0");
    assert_eq!(res["interfaces"][1]["name"], "eth0");
    assert_eq!(res["ips"][0]["address"], "192.168.77.5/24");
    assert_eq!(res["ips"][1]["interface"], 1);
    assert_eq!(res["routes"].as_array().unwrap().len(), 2);
    // CHECK with prevResult = what ADD returned: passes.
    let check = cni.conf("1.0.0", "net1", json!({"prevResult": res.clone()}));
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &check);
    assert!(ok, "{v}");
    // A wrong ifname, a wrong netns, a wrong address in prevResult: CHECK fails.
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", ns, "eth7"), &check);
    assert!(!ok, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("eth7"), "{v}");
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", other, "eth0"), &check);
    assert!(!ok, "{v}");
    let mut wrong_ip = res.clone();
    wrong_ip["ips"][1]["address"] = json!("10.255.250.250/32");
    let (ok, v) = cni.run(
        &attach_env("CHECK", "c1", ns, "eth0"),
        &cni.conf("1.0.0", "net1", json!({"prevResult": wrong_ip})),
    );
    assert!(!ok, "{v}");
    assert_eq!(v["code"], 100, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("10.255.250.250"), "{v}");
    // The address removed inside the container: CHECK fails; the interface is still there.
    let out = ov
        .tb
        .exec("a", "ip", &["addr", "flush", "dev", "eth0"])
        .unwrap();
    assert!(out.status.success());
    let (ok, v) = cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &check);
    assert!(!ok, "{v}");
    assert_eq!(v["code"], 100, "{v}");
    assert!(
        v["msg"].as_str().unwrap().contains("no longer configured"),
        "{v}"
    );
    assert!(cni.run(&attach_env("DEL", "c1", ns, "eth0"), &check).0);
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_del_with_the_cell_down() {
    let (mut ov, cni, ns_paths) = setup("tpcni6", &["a"]);
    let ns = ns_paths[0].as_str();
    let conf = cni.conf("1.1.0", "net1", json!({}));
    let (ok, v) = cni.run(&attach_env("ADD", "c1", ns, "eth0"), &conf);
    assert!(ok, "{v}");
    let addr = v["ips"][0]["address"].clone();
    let (ok, v) = cni.run(&attach_env("ADD", "c2", ns, "eth1"), &conf);
    assert!(ok, "{v}");
    ov.kill_cell(0);
    // DEL succeeds and is recorded; nothing is lost.
    let (ok, v) = cni.run(&attach_env("DEL", "c1", ns, "eth0"), &conf);
    assert!(ok, "{v}");
    let pending = tapestry::cell::api::pending_dels(&cni.socket);
    assert_eq!(pending.len(), 1);
    assert!(
        link_exists(&ov, "a", "eth0"),
        "the cell finishes it, not the plugin"
    );
    // The cell finishes it when it returns; the other attachment stays.
    ov.start_cell(0).unwrap();
    let mut done = false;
    for _ in 0..100 {
        if ov.cell_status(0).is_ok() {
            done = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(done, "the cell answers after its restart");
    assert!(
        !link_exists(&ov, "a", "eth0"),
        "the pending DEL was finished"
    );
    assert!(link_exists(&ov, "a", "eth1"));
    assert!(tapestry::cell::api::pending_dels(&cni.socket).is_empty());
    let handles: Vec<String> = ov.cell_status(0).unwrap()["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["handle"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(handles, ["c2"]);
    // The address was held until then and is free again.
    let (ok, v) = cni.run(&attach_env("ADD", "c1", ns, "eth0"), &conf);
    assert!(ok, "{v}");
    assert_eq!(v["ips"][0]["address"], addr);
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_port_mappings() {
    let (mut ov, cni, ns_paths) = setup("tpcni7", &["a", "b"]);
    let (ns_a, ns_b) = (ns_paths[0].as_str(), ns_paths[1].as_str());
    let conf = |mappings: Value| {
        let mut c = cni.conf(
            "1.1.0",
            "net1",
            json!({"capabilities": {"portMappings": true}}),
        );
        c["runtimeConfig"] = json!({ "portMappings": mappings });
        c
    };
    let net_in = |ov: &Overlay| ov.cell_status(0).unwrap()["net_in"].clone();
    // Host port 0 gets a port from 61000-65535; the result lists the real one.
    let a = conf(json!([{"hostPort": 0, "containerPort": 8080},
        {"hostPort": 5300, "containerPort": 53, "protocol": "udp"}]));
    let (ok, v) = cni.run(&attach_env("ADD", "c1", ns_a, "eth0"), &a);
    assert!(ok, "{v}");
    let picked = v["portMappings"][0]["hostPort"].as_u64().unwrap();
    assert!((61000..=65535).contains(&picked), "{v}");
    assert_eq!(v["portMappings"][0]["containerPort"], 8080);
    assert_eq!(
        v["portMappings"][1],
        json!({"hostPort": 5300, "containerPort": 53, "protocol": "udp"})
    );
    let ip_a = v["ips"][0]["address"]
        .as_str()
        .unwrap()
        .trim_end_matches("/32")
        .to_string();
    let shown = net_in(&ov);
    assert_eq!(shown.as_array().unwrap().len(), 2, "{shown}");
    assert_eq!(shown[0]["host_port"], 5300);
    assert_eq!(shown[0]["container_ip"], ip_a.as_str());
    assert_eq!(shown[1]["handle"], "c1");
    // A host port already mapped is refused, naming it; nothing is attached.
    let b = conf(json!([{"hostPort": 5300, "containerPort": 53, "protocol": "udp"}]));
    let (ok, v) = cni.run(&attach_env("ADD", "c2", ns_b, "eth0"), &b);
    assert!(!ok, "{v}");
    assert!(
        v["details"]
            .as_str()
            .unwrap()
            .contains("host port 5300/udp"),
        "{v}"
    );
    assert!(!link_exists(&ov, "b", "eth0"));
    // The mappings survive a restart of the cell.
    ov.kill_cell(0);
    ov.start_cell(0).unwrap();
    assert_eq!(net_in(&ov), shown);
    // DEL releases them: the port can be had again.
    assert!(cni.run(&attach_env("DEL", "c1", ns_a, "eth0"), &a).0);
    assert_eq!(net_in(&ov), json!([]));
    let (ok, v) = cni.run(&attach_env("ADD", "c2", ns_b, "eth0"), &b);
    assert!(ok, "{v}");
    assert_eq!(v["portMappings"][0]["hostPort"], 5300);
}

/// Runs `ip ARGS` in testbed namespace `ns` and insists it succeeds.
fn ip(ov: &Overlay, ns: &str, args: &[&str]) -> String {
    let out = ov.tb.exec(ns, "ip", args).unwrap();
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_cni_check_reads_the_interface_back() {
    let (ov, cni, ns_paths) = setup("tpcni8", &["a"]);
    let ns = ns_paths[0].as_str();
    let conf = cni.conf("1.1.0", "net1", json!({}));
    let (ok, res) = cni.run(&attach_env("ADD", "c1", ns, "eth0"), &conf);
    assert!(ok, "{res}");
    let mut check_conf = conf.clone();
    check_conf["prevResult"] = res.clone();
    let check = || cni.run(&attach_env("CHECK", "c1", ns, "eth0"), &check_conf);
    let (ok, v) = check();
    assert!(ok, "{v}");
    let fails_with = |what: &str| {
        let (ok, v) = check();
        assert!(!ok, "CHECK passed with {what} changed");
        assert_eq!(v["code"], 100, "{v}");
        let msg = v["msg"].as_str().unwrap();
        assert!(msg.contains(what), "{what}: {v}");
        assert!(msg.contains("differs from what ADD set up"), "{v}");
    };
    // Each thing ADD set up, changed inside the container and put back: CHECK fails naming it,
    // then passes again.
    let mac = res["interfaces"][0]["mac"].as_str().unwrap().to_string();
    ip(
        &ov,
        "a",
        &["link", "set", "eth0", "address", "02:00:00:00:00:01"],
    );
    fails_with("MAC 02:00:00:00:00:01");
    ip(&ov, "a", &["link", "set", "eth0", "address", &mac]);
    assert!(check().0);
    let shown = ip(&ov, "a", &["-o", "link", "show", "eth0"]);
    let mtu = shown
        .split_whitespace()
        .skip_while(|w| *w != "mtu")
        .nth(1)
        .unwrap()
        .to_string();
    ip(&ov, "a", &["link", "set", "eth0", "mtu", "1280"]);
    fails_with("MTU 1280");
    ip(&ov, "a", &["link", "set", "eth0", "mtu", &mtu]);
    assert!(check().0);
    ip(&ov, "a", &["route", "del", "default"]);
    fails_with("default route via 169.254.0.1");
    ip(
        &ov,
        "a",
        &[
            "route",
            "add",
            "default",
            "via",
            "169.254.0.1",
            "dev",
            "eth0",
            "onlink",
        ],
    );
    let (ok, v) = check();
    assert!(ok, "{v}");
    ip(&ov, "a", &["link", "set", "eth0", "down"]);
    fails_with("eth0 is down");
    ip(&ov, "a", &["link", "set", "eth0", "up"]);
    // Bringing it down dropped its routes: CHECK still fails, naming them.
    fails_with("169.254.0.1/32");
    ip(
        &ov,
        "a",
        &[
            "route",
            "add",
            "169.254.0.1/32",
            "dev",
            "eth0",
            "scope",
            "link",
        ],
    );
    ip(
        &ov,
        "a",
        &[
            "route",
            "add",
            "default",
            "via",
            "169.254.0.1",
            "dev",
            "eth0",
            "onlink",
        ],
    );
    let (ok, v) = check();
    assert!(ok, "{v}");
    // Renamed away: the interface named by CNI_IFNAME is missing.
    ip(&ov, "a", &["link", "set", "eth0", "down"]);
    ip(&ov, "a", &["link", "set", "eth0", "name", "eth9"]);
    let (ok, v) = check();
    assert!(!ok);
    assert_eq!(v["code"], 100, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("missing"), "{v}");
    ip(&ov, "a", &["link", "set", "eth9", "name", "eth0"]);
    // An attachment the cell does not have: "container unknown" (3).
    let (ok, v) = cni.run(&attach_env("CHECK", "c2", ns, "eth0"), &conf);
    assert!(!ok);
    assert_eq!(v["code"], 3, "{v}");
    assert!(cni.run(&attach_env("DEL", "c1", ns, "eth0"), &conf).0);
    assert!(!link_exists(&ov, "a", "eth0"));
}
