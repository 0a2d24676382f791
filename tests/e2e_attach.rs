//! Safe attach (root, network namespaces prefixed `tpatt`; ignored unless run with `--run-ignored
//! all`, as scripts/test.sh does as root): an attach into a namespace that
//! already has the interface name is refused with an error that says so, and nothing changes:
//! the other container's interface, address and traffic stay as they were, and the refused
//! handle is not recorded. A cell with `--max-containers 2` refuses the third container with an
//! error naming the budget, and leaves no interface behind.

use std::net::SocketAddrV4;
use std::path::Path;
use std::time::Duration;

use tapestry::cell::api::{self, Request, UpRequest};
use tapestry::demo::overlay::{serve_tcp, wait_tcp, Overlay};
use tapestry::demo::testbed::is_root;

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

fn up(ov: &Overlay, handle: &str, app: &str, netns: &Path) -> anyhow::Result<serde_json::Value> {
    api::call(
        &ov.cell_socket(0),
        &Request::Up(UpRequest {
            handle: handle.into(),
            app_id: app.into(),
            space_id: "s".into(),
            org_id: "o".into(),
            instance_index: 0,
            netns: netns.to_path_buf(),
            ifname: "eth0".into(),
        }),
    )
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_attach_never_touches_what_it_did_not_create() {
    assert!(is_root(), "end-to-end tests need root (network namespaces)");
    let mut ov =
        Overlay::start("tpatt", bin(), 1, &["--max-containers=2"]).expect("overlay starts");
    let a = ov.add_container(0, "a", "app-a", "s").unwrap();
    let b = ov.add_container(0, "b", "app-b", "s").unwrap();
    let a_ns = ov.tb.ns_path("a");
    let b_ns = ov.tb.ns_path("b");
    serve_tcp(&b_ns, 8080, "b").unwrap();
    ov.allow("app-a", "app-b", "tcp", 8080, 8080).unwrap();
    let to_b = SocketAddrV4::new(b.container_ip, 8080);
    wait_tcp(&a_ns, to_b, Duration::from_secs(10)).expect("a -> b works");

    // A second handle into b's namespace, same interface name: refused, b untouched. (The
    // budget is full too; the interface check comes first and is what the error names.)
    let err = up(&ov, "intruder", "app-x", &b_ns).expect_err("attach over b's eth0 is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("already has an interface named eth0") && msg.contains("nothing was changed"),
        "{msg}"
    );
    let addr = ov
        .tb
        .exec("b", "ip", &["-o", "-4", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(
        String::from_utf8_lossy(&addr.stdout).contains(&format!("{}/32", b.container_ip)),
        "b keeps its interface and address"
    );
    let (reply, _) = wait_tcp(&a_ns, to_b, Duration::from_secs(5)).expect("a -> b still works");
    assert!(reply.starts_with("b hello"), "{reply}");
    let status = ov.cell_status(0).unwrap();
    let handles: Vec<&str> = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["handle"].as_str())
        .collect();
    assert!(!handles.contains(&"intruder"), "{handles:?}");
    assert_eq!(handles.len(), 2, "{handles:?}");

    // The budget: a third container in its own namespace is refused and leaves nothing behind.
    let c_ns = ov.tb.add_namespace("c").unwrap();
    let err = up(&ov, "c", "app-c", &c_ns).expect_err("a third container is refused");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("--max-containers is 2") && msg.contains("2 containers are attached"),
        "{msg}"
    );
    let links = ov.tb.exec("c", "ip", &["-o", "link", "show"]).unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    assert!(!links.contains("eth0"), "{links}");

    // Detaching one makes room again.
    api::call(&ov.cell_socket(0), &Request::Down { handle: a.handle }).unwrap();
    up(&ov, "c", "app-c", &c_ns).expect("room after a detach");
}
