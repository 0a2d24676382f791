//! Checking attachments: `tapestry container` checks (the cell knows the container, its netns
//! and interface exist) and CNI CHECK, which reads the interface back from the kernel and
//! compares it with what ADD set up (name, MAC, MTU, up, address, routes). CNI CHECK's
//! failures carry the CNI error code the plugin answers with ([`CodedError`]).

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tapestry_switch::tables::container_mac;
use tapestry_sys::netlink::{self, LinkState};

use super::api::{CodedError, E_CHECK_FAILED, E_UNKNOWN_CONTAINER};
use super::attach::mac_string;
use super::state::{attachment_key, ContainerRecord};
use super::{Cell, GATEWAY};

fn check_failed(msg: String) -> anyhow::Error {
    CodedError {
        code: E_CHECK_FAILED,
        msg,
    }
    .into()
}

/// What is wrong with `link` (the container's interface read back from the kernel) compared
/// with what the cell configured: the MAC, MTU, IFF_UP, the address `ip`/32; and in the
/// namespace the /32 link route to the gateway and the default route via it (through any
/// interface: a container on several Tapestry networks has them once, through the last one
/// attached, and the gateway is the cell's on each). Empty when it all matches.
pub fn iface_differences(link: &LinkState, ip: Ipv4Addr, mtu: u32) -> Vec<String> {
    let name = &link.name;
    let mut wrong = vec![];
    let mac = container_mac(ip);
    match link.mac {
        Some(m) if m == mac => {}
        Some(m) => wrong.push(format!(
            "{name} has MAC {}, not {} (set by ADD)",
            mac_string(m),
            mac_string(mac)
        )),
        None => wrong.push(format!("{name} has no MAC, not {}", mac_string(mac))),
    }
    if link.mtu != mtu {
        wrong.push(format!(
            "{name} has MTU {}, not {mtu} (set by ADD)",
            link.mtu
        ));
    }
    if !link.up {
        wrong.push(format!("{name} is down"));
    }
    if !link.addrs.contains(&(ip, 32)) {
        let has: Vec<String> = link.addrs.iter().map(|(a, p)| format!("{a}/{p}")).collect();
        wrong.push(format!(
            "address {ip}/32 is no longer configured on {name} (it has [{}])",
            has.join(", ")
        ));
    }
    let has_route = |dst: Ipv4Addr, len: u8, gw: Option<Ipv4Addr>| {
        link.routes
            .iter()
            .any(|r| r.dst == dst && r.dst_len == len && r.gateway == gw)
    };
    if !has_route(GATEWAY, 32, None) {
        wrong.push(format!("the link route to {GATEWAY}/32 is missing"));
    }
    if !has_route(Ipv4Addr::UNSPECIFIED, 0, Some(GATEWAY)) {
        wrong.push(format!("the default route via {GATEWAY} is missing"));
    }
    wrong
}

impl Cell {
    /// Checks every attachment of `handle` (at least one), or only the one named `ifname`.
    pub fn check(&self, handle: &str, ifname: Option<&str>) -> Result<()> {
        let inner = self.lock();
        let recs: Vec<&ContainerRecord> = inner
            .containers
            .of_handle(handle)
            .filter(|r| ifname.is_none_or(|i| r.ifname == i))
            .collect();
        if recs.is_empty() {
            match ifname {
                Some(i) => bail!("container {handle} has no attachment {i} on this cell"),
                None => bail!("container {handle} is not attached to this cell"),
            }
        }
        for rec in recs {
            if !Path::new(&rec.netns).exists() {
                bail!(
                    "netns {} of container {handle} is gone",
                    rec.netns.display()
                );
            }
            if !netlink::link_exists(&rec.netns, &rec.ifname)? {
                bail!("interface {} of container {handle} is missing", rec.ifname);
            }
        }
        Ok(())
    }

    /// CNI CHECK of one attachment: the cell knows it (else [`E_UNKNOWN_CONTAINER`]); it is in
    /// `netns` with address `ip` when those are given; and its interface, read back from the
    /// kernel, has the name, MAC, MTU, address and routes ADD gave it (else [`E_CHECK_FAILED`],
    /// naming every difference).
    pub fn check_attachment(
        &self,
        handle: &str,
        ifname: &str,
        netns: Option<&Path>,
        ip: Option<Ipv4Addr>,
    ) -> Result<()> {
        let rec = self
            .lock()
            .containers
            .containers
            .get(&attachment_key(handle, ifname))
            .cloned()
            .ok_or_else(|| CodedError {
                code: E_UNKNOWN_CONTAINER,
                msg: format!("container {handle} has no attachment {ifname} on this cell"),
            })?;
        if let Some(ns) = netns.filter(|ns| *ns != rec.netns) {
            return Err(check_failed(format!(
                "attachment {ifname} of container {handle} is in netns {}, not {}",
                rec.netns.display(),
                ns.display()
            )));
        }
        if let Some(ip) = ip.filter(|ip| *ip != rec.ip) {
            return Err(check_failed(format!(
                "attachment {ifname} of container {handle} has address {}, not {ip}",
                rec.ip
            )));
        }
        if !rec.netns.exists() {
            return Err(check_failed(format!(
                "netns {} of container {handle} is gone",
                rec.netns.display()
            )));
        }
        let link = netlink::inspect_link(&rec.netns, &rec.ifname)
            .with_context(|| format!("reading {ifname} in {}", rec.netns.display()))?;
        let Some(link) = link else {
            return Err(check_failed(format!(
                "interface {ifname} of container {handle} is missing from {}",
                rec.netns.display()
            )));
        };
        let wrong = iface_differences(&link, rec.ip, self.config.container_mtu());
        if !wrong.is_empty() {
            return Err(check_failed(format!(
                "attachment {ifname} of container {handle} in {} differs from what ADD set up: {}",
                rec.netns.display(),
                wrong.join("; ")
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tapestry_sys::netlink::RouteState;

    fn good(ip: Ipv4Addr) -> LinkState {
        LinkState {
            index: 4,
            name: "eth0".into(),
            mac: Some(container_mac(ip)),
            mtu: 1450,
            up: true,
            addrs: vec![(ip, 32)],
            routes: vec![
                RouteState {
                    dst: GATEWAY,
                    dst_len: 32,
                    gateway: None,
                    oif: Some(4),
                    scope: 253,
                },
                RouteState {
                    dst: Ipv4Addr::UNSPECIFIED,
                    dst_len: 0,
                    gateway: Some(GATEWAY),
                    oif: Some(4),
                    scope: 0,
                },
            ],
        }
    }

    #[test]
    fn names_each_difference() {
        let ip = Ipv4Addr::new(10, 255, 1, 2);
        assert!(iface_differences(&good(ip), ip, 1450).is_empty());
        let mut l = good(ip);
        l.mac = Some([2, 0, 0, 0, 0, 1]);
        l.mtu = 1400;
        l.up = false;
        l.addrs = vec![(Ipv4Addr::new(10, 255, 1, 3), 24)];
        l.routes.clear();
        let w = iface_differences(&l, ip, 1450);
        assert_eq!(
            w,
            [
                "eth0 has MAC 02:00:00:00:00:01, not ee:ee:0a:ff:01:02 (set by ADD)",
                "eth0 has MTU 1400, not 1450 (set by ADD)",
                "eth0 is down",
                "address 10.255.1.2/32 is no longer configured on eth0 (it has [10.255.1.3/24])",
                "the link route to 169.254.0.1/32 is missing",
                "the default route via 169.254.0.1 is missing",
            ]
        );
        // A default route via another gateway is not ours.
        let mut l = good(ip);
        l.routes[1].gateway = Some(Ipv4Addr::new(169, 254, 0, 2));
        assert_eq!(iface_differences(&l, ip, 1450).len(), 1);
    }
}
