//! Root tests: TAP + netlink configuration inside `tpsys-` network namespaces.

mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::*;
use tapestry_sys::netlink::{self, IfaceConfig};
use tapestry_sys::tap::{self, Tap, TapOptions};

const IP: Ipv4Addr = Ipv4Addr::new(10, 255, 1, 2);
const GW: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
const MAC: [u8; 6] = [0xee, 0xee, 10, 255, 1, 2];
const GW_MAC: [u8; 6] = [0xee, 0xee, 10, 255, 1, 0];

fn cfg(gateway_mac: Option<[u8; 6]>) -> IfaceConfig {
    IfaceConfig {
        name: "eth0".into(),
        mac: MAC,
        mtu: 1450,
        ip: IP,
        gateway: GW,
        gateway_mac,
        txqueuelen: Some(4321),
        noqueue: true,
    }
}

fn plain() -> TapOptions {
    TapOptions {
        vnet_hdr: false,
        multi_queue: false,
    }
}

/// Pings the gateway from inside the namespace and returns the first matching frame on the TAP.
fn ping_and_read(ns: &Netns, tap: &Tap, want: impl FnMut(&[u8]) -> bool) -> Option<Vec<u8>> {
    let mut child = ns.spawn(&["ping", "-c1", "-W1", "169.254.0.1"]);
    let f = read_until(tap, Duration::from_secs(3), want);
    let _ = child.wait();
    f
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn open_configure_reattach_delete() {
    require_root();
    let ns = Netns::new("cfg");
    let path = ns.path();

    let tap = Tap::open_in_netns(&path, "eth0", plain()).unwrap();
    assert_eq!(tap.name(), "eth0");
    assert!(netlink::link_exists(&path, "eth0").unwrap());
    assert!(!netlink::link_exists(&path, "nope0").unwrap());

    // Without a gateway neighbour the container ARPs for the gateway.
    netlink::configure_container_iface(&path, &cfg(None)).unwrap();
    tap.set_nonblocking(true).unwrap();
    let link = ns.ip_json(&["link", "show", "dev", "eth0"]);
    assert!(link.contains("\"mtu\":1450"), "{link}");
    assert!(link.contains("\"address\":\"ee:ee:0a:ff:01:02\""), "{link}");
    assert!(link.contains("\"txqlen\":4321"), "{link}");
    assert!(link.contains("\"UP\""), "{link}");
    // The root qdisc was made noqueue before the device came up: no per-queue rings.
    assert_eq!(
        netlink::root_qdisc(&path, "eth0").unwrap().as_deref(),
        Some("noqueue")
    );
    let tc = std::process::Command::new("tc")
        .args(["-n", &ns.name, "qdisc", "show", "dev", "eth0"])
        .output()
        .expect("running tc");
    let tc = String::from_utf8_lossy(&tc.stdout);
    assert!(
        tc.contains("qdisc noqueue") && !tc.contains("pfifo_fast"),
        "{tc}"
    );
    let lo = ns.ip_json(&["link", "show", "dev", "lo"]);
    assert!(lo.contains("\"UP\""), "{lo}");
    let addr = ns.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(
        addr.contains("\"local\":\"10.255.1.2\",\"prefixlen\":32"),
        "{addr}"
    );
    let routes = ns.ip_json(&["-4", "route", "show"]);
    assert!(
        routes.contains("{\"dst\":\"default\",\"gateway\":\"169.254.0.1\",\"dev\":\"eth0\""),
        "{routes}"
    );
    assert!(routes.contains("\"onlink\""), "{routes}");
    assert!(
        routes.contains("{\"dst\":\"169.254.0.1\",\"dev\":\"eth0\""),
        "{routes}"
    );
    assert!(routes.contains("\"scope\":\"link\""), "{routes}");

    let arp = ping_and_read(&ns, &tap, |f| is_arp_request_for(f, GW.octets()));
    let arp = arp.expect("an ARP request for 169.254.0.1 on the TAP");
    assert_eq!(arp[6..12], MAC, "ARP from the container's MAC");

    // Re-running is idempotent, and now adds the permanent gateway neighbour: ICMP goes straight out.
    netlink::configure_container_iface(&path, &cfg(Some(GW_MAC))).unwrap();
    netlink::configure_container_iface(&path, &cfg(Some(GW_MAC))).unwrap();
    let neigh = ns.ip_json(&["-4", "neigh", "show", "dev", "eth0"]);
    assert!(neigh.contains("\"dst\":\"169.254.0.1\""), "{neigh}");
    assert!(
        neigh.contains("\"lladdr\":\"ee:ee:0a:ff:01:00\""),
        "{neigh}"
    );
    assert!(neigh.contains("PERMANENT"), "{neigh}");
    let echo = ping_and_read(&ns, &tap, |f| is_icmp(f, 8, GW.octets(), Some(GW_MAC)));
    assert!(
        echo.is_some(),
        "an ICMP echo request to the gateway MAC on the TAP"
    );

    // Frames written to the fd reach the container: it answers an echo request.
    let req = echo_request(GW_MAC, MAC, GW.octets(), IP.octets(), 0x7a7a);
    assert_eq!(tap.write(&req).unwrap(), req.len());
    let reply = read_until(&tap, Duration::from_secs(3), |f| {
        is_icmp(f, 0, GW.octets(), Some(GW_MAC))
    });
    assert!(reply.is_some(), "the container answered our echo request");

    // Persistence: dropping the fd keeps the device and its configuration; re-attach works.
    drop(tap);
    assert!(netlink::link_exists(&path, "eth0").unwrap());
    let tap = Tap::open_in_netns(&path, "eth0", plain()).unwrap();
    tap.set_nonblocking(true).unwrap();
    netlink::configure_container_iface(&path, &cfg(Some(GW_MAC))).unwrap();
    let addr = ns.ip_json(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(addr.contains("\"local\":\"10.255.1.2\""), "{addr}");
    let echo = ping_and_read(&ns, &tap, |f| is_icmp(f, 8, GW.octets(), Some(GW_MAC)));
    assert!(echo.is_some(), "traffic resumes after re-attach");

    // The fd keeps working from another thread.
    let tap = std::sync::Arc::new(tap);
    let t2 = tap.clone();
    std::thread::spawn(move || {
        let req = echo_request(GW_MAC, MAC, GW.octets(), IP.octets(), 0x1234);
        t2.write(&req).unwrap();
    })
    .join()
    .unwrap();
    assert!(read_until(&tap, Duration::from_secs(3), |f| is_icmp(
        f,
        0,
        GW.octets(),
        None
    ))
    .is_some());

    // Delete is idempotent, even with the fd still open, and for a missing namespace.
    tap::delete_in_netns(&path, "eth0").unwrap();
    assert!(!netlink::link_exists(&path, "eth0").unwrap());
    tap::delete_in_netns(&path, "eth0").unwrap();
    drop(tap);
    tap::delete_in_netns(
        std::path::Path::new("/var/run/netns/tpsys-missing-ns"),
        "eth0",
    )
    .unwrap();
    assert!(!netlink::link_exists(
        std::path::Path::new("/var/run/netns/tpsys-missing-ns"),
        "eth0"
    )
    .unwrap());
}

#[test]
#[ignore = "needs root and /dev/net/tun (scripts/test.sh runs it as root)"]
fn errors_name_operation_and_namespace() {
    require_root();
    let ns = Netns::new("err");
    let path = ns.path();
    // Configuring a link that does not exist names the request, the device and the namespace.
    let err = netlink::configure_container_iface(&path, &cfg(None)).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("eth0") && msg.contains(&ns.name), "{msg}");
    assert!(err.is_not_found(), "{msg}");

    // A MTU the device refuses: the kernel's reason is in the message.
    let _tap = Tap::open_in_netns(&path, "eth0", plain()).unwrap();
    let mut bad = cfg(None);
    bad.mtu = 10;
    let msg = netlink::configure_container_iface(&path, &bad)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("RTM_NEWLINK eth0") && msg.contains("mtu 10") && msg.contains(&ns.name),
        "{msg}"
    );

    eprintln!("example error: {msg}");
    // Re-attaching with a different queue mode is refused by TUNSETIFF, named as such.
    let msg = Tap::open_in_netns(
        &path,
        "eth0",
        TapOptions {
            vnet_hdr: false,
            multi_queue: true,
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        msg.starts_with(&format!("TUNSETIFF eth0 in {}", path.display())),
        "{msg}"
    );
    eprintln!("example errors: {msg}");
}
