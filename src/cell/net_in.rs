//! Net-in on the control side: the host ports each attachment has (picked from
//! [`NET_IN_RANGE`] when it asks for port 0, as Garden does), kept in its container record, and
//! handed to the dataplane as the cell's whole set of mappings
//! ([`super::dataplane::DataplaneHandle::set_net_in`]) on attach, on detach and at start. The
//! records are the truth: the set in force is always computed from them.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use super::api::{check_port_mappings, PortMapping, Protocol, NET_IN_RANGE};
use super::dataplane::net_in::{NetInProtocol, NetInRule};
use super::state::{ContainerRecord, Containers};
use super::{Cell, Inner};

/// The attachment holding each (protocol, host port).
fn holders(containers: &Containers) -> BTreeMap<(Protocol, u16), &ContainerRecord> {
    containers
        .containers
        .values()
        .flat_map(|rec| {
            rec.port_mappings
                .iter()
                .map(move |m| ((m.protocol, m.host_port), rec))
        })
        .collect()
}

/// The first port from `start` on (wrapping around [`NET_IN_RANGE`]) that is not in `used`.
fn pick(start: u16, used: &BTreeSet<u16>) -> Option<u16> {
    let (lo, hi) = (*NET_IN_RANGE.start(), *NET_IN_RANGE.end());
    let start = if NET_IN_RANGE.contains(&start) {
        start
    } else {
        lo
    };
    (start..=hi).chain(lo..start).find(|p| !used.contains(p))
}

/// Gives each of `wanted` its host port: a given one must not be held by any attachment (for
/// that protocol); for 0 the next port from `cursor` on that no attachment holds under either
/// protocol, so a released port is the last to be handed out again (a router may still send
/// to it). Returns the mappings and the cursor after them, which the caller keeps only if the
/// attach succeeds.
pub fn assign(
    wanted: &[PortMapping],
    containers: &Containers,
    cursor: u16,
) -> Result<(Vec<PortMapping>, u16)> {
    check_port_mappings(wanted).map_err(|e| anyhow!(e))?;
    let held = holders(containers);
    for m in wanted.iter().filter(|m| m.host_port != 0) {
        if let Some(rec) = held.get(&(m.protocol, m.host_port)) {
            bail!(
                "host port {}/{} is already mapped, to container {} ({})",
                m.host_port,
                m.protocol.as_str(),
                rec.handle,
                rec.ifname
            );
        }
    }
    let mut used: BTreeSet<u16> = held
        .keys()
        .map(|(_, p)| *p)
        .chain(wanted.iter().map(|m| m.host_port))
        .collect();
    let mut next = cursor;
    let mut out = Vec::with_capacity(wanted.len());
    for m in wanted {
        let host_port = match m.host_port {
            0 => {
                let p = pick(next, &used).ok_or_else(|| {
                    anyhow!(
                        "no free host port left in {}-{} for mapping {m}: all are mapped; \
                         detach a container or give the host port",
                        NET_IN_RANGE.start(),
                        NET_IN_RANGE.end()
                    )
                })?;
                used.insert(p);
                next = p.wrapping_add(1);
                p
            }
            p => p,
        };
        out.push(PortMapping { host_port, ..*m });
    }
    Ok((out, next))
}

/// Whether an attach asking for `asked` is a repeat of the one that got `have` (host port 0
/// matches whatever port was picked).
pub fn same_mappings(asked: &[PortMapping], have: &[PortMapping]) -> bool {
    asked.len() == have.len()
        && asked.iter().zip(have).all(|(a, h)| {
            a.protocol == h.protocol
                && a.container_port == h.container_port
                && (a.host_port == 0 || a.host_port == h.host_port)
        })
}

/// `61001:8080/tcp, 61002:53/udp` for messages and logs.
pub fn list(mappings: &[PortMapping]) -> String {
    mappings
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The dataplane's rule for one mapping of the attachment at `ip`.
fn rule(ip: std::net::Ipv4Addr, m: &PortMapping) -> NetInRule {
    NetInRule {
        protocol: match m.protocol {
            Protocol::Tcp => NetInProtocol::Tcp,
            Protocol::Udp => NetInProtocol::Udp,
        },
        host_port: m.host_port,
        container_ip: ip,
        container_port: m.container_port,
    }
}

impl Cell {
    /// The rules of `records`, but for suspended attachments and those whose address is
    /// outside this cell's lease (it would reach another cell's container).
    fn rules_of<'a>(
        &self,
        records: impl IntoIterator<Item = &'a ContainerRecord>,
        suspended: &BTreeSet<String>,
    ) -> Vec<NetInRule> {
        let mut rules: Vec<NetInRule> = records
            .into_iter()
            .filter(|rec| self.config.subnet.contains(&rec.ip))
            .filter(|rec| !suspended.contains(&rec.key()))
            .flat_map(|rec| rec.port_mappings.iter().map(|m| rule(rec.ip, m)))
            .collect();
        rules.sort();
        rules
    }

    /// Puts in force the mappings of every attachment, plus `extra` (one being attached), but
    /// `without` (the key of one being detached). On an error nothing changed.
    pub(super) fn apply_net_in(
        &self,
        inner: &Inner,
        extra: Option<&ContainerRecord>,
        without: Option<&str>,
    ) -> Result<()> {
        let records = inner
            .containers
            .containers
            .values()
            .filter(|rec| without.is_none_or(|k| rec.key() != k))
            .chain(extra);
        let rules = self.rules_of(records, &inner.net_in_suspended);
        self.dataplane.set_net_in(&rules)
    }

    /// At start: puts every persisted mapping back in force. When that fails (a host port is
    /// now taken by another process), each attachment's mappings are tried on their own and
    /// those that cannot be bound are suspended (logged, shown by `tapestry cell status`, still
    /// reserved) until the attachment is detached or the cell restarts, so one bad port does
    /// not take down every other mapping, nor make later attaches fail.
    pub(super) fn restore_net_in(&self, inner: &mut Inner) {
        let mut keys: Vec<String> = inner
            .containers
            .containers
            .values()
            .filter(|rec| !rec.port_mappings.is_empty())
            .map(ContainerRecord::key)
            .collect();
        if keys.is_empty() {
            return;
        }
        let Err(e) = self.apply_net_in(inner, None, None) else {
            tracing::info!(attachments = keys.len(), "net-in mappings restored");
            return;
        };
        tracing::error!("restoring net-in mappings: {e:#}; trying each container's on its own");
        keys.sort();
        inner.net_in_suspended = keys.iter().cloned().collect();
        for key in keys {
            inner.net_in_suspended.remove(&key);
            if let Err(e) = self.apply_net_in(inner, None, None) {
                tracing::error!(attachment = %key, "net-in mappings suspended until the container is detached or the cell restarts: {e:#}");
                inner.net_in_suspended.insert(key);
            }
        }
    }

    /// Every mapping, by host port, for `tapestry cell status`.
    pub(super) fn net_in_status(&self, inner: &Inner) -> Vec<Value> {
        let mut rows: Vec<(PortMapping, &ContainerRecord)> = inner
            .containers
            .containers
            .values()
            .flat_map(|rec| rec.port_mappings.iter().map(move |m| (*m, rec)))
            .collect();
        rows.sort_by_key(|(m, _)| (m.host_port, m.protocol));
        rows.into_iter()
            .map(|(m, rec)| {
                json!({
                    "host_port": m.host_port,
                    "protocol": m.protocol.as_str(),
                    "container_ip": rec.ip.to_string(),
                    "container_port": m.container_port,
                    "handle": rec.handle,
                    "ifname": rec.ifname,
                    "in_force": self.config.subnet.contains(&rec.ip)
                        && !inner.net_in_suspended.contains(&rec.key()),
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn m(host_port: u16, container_port: u16, protocol: Protocol) -> PortMapping {
        PortMapping {
            host_port,
            container_port,
            protocol,
        }
    }

    fn with_mappings(mappings: &[(&str, Vec<PortMapping>)]) -> Containers {
        let mut c = Containers::default();
        for (i, (handle, port_mappings)) in mappings.iter().enumerate() {
            let rec = ContainerRecord {
                handle: handle.to_string(),
                app_id: "A".into(),
                space_id: String::new(),
                org_id: String::new(),
                instance_index: 0,
                ip: Ipv4Addr::new(10, 255, 1, i as u8 + 2),
                netns: "/n".into(),
                ifname: "eth0".into(),
                lifecycle: Default::default(),
                network: None,
                app_port: None,
                tls_client_auth: false,
                port_mappings: port_mappings.clone(),
            };
            c.containers.insert(rec.key(), rec);
        }
        c
    }

    #[test]
    fn port_0_gets_a_free_port_from_the_range_and_the_cursor_moves_on() {
        use Protocol::*;
        let empty = Containers::default();
        let (got, next) = assign(&[m(0, 8080, Tcp)], &empty, 61000).unwrap();
        assert_eq!(got, [m(61000, 8080, Tcp)]);
        assert_eq!(next, 61001);
        // Given ports are kept; several zeros get distinct ports; a cursor outside the range
        // starts at its beginning.
        let (got, next) = assign(
            &[m(0, 8080, Tcp), m(8443, 443, Tcp), m(0, 8080, Udp)],
            &empty,
            0,
        )
        .unwrap();
        assert_eq!(
            got,
            [m(61000, 8080, Tcp), m(8443, 443, Tcp), m(61001, 8080, Udp)]
        );
        assert_eq!(next, 61002);
        // Ports held by anyone, under either protocol, are skipped, and the cursor wraps.
        let c = with_mappings(&[
            ("a", vec![m(61000, 80, Tcp), m(65535, 80, Udp)]),
            ("b", vec![m(61002, 80, Udp)]),
        ]);
        let (got, _) = assign(&[m(0, 1, Tcp), m(0, 2, Tcp)], &c, 61000).unwrap();
        assert_eq!(got, [m(61001, 1, Tcp), m(61003, 2, Tcp)]);
        let (got, next) = assign(&[m(0, 1, Tcp)], &c, 65535).unwrap();
        assert_eq!((got[0].host_port, next), (61001, 61002));
        // A port given explicitly in the same request is not picked for a zero.
        let (got, _) = assign(&[m(0, 1, Tcp), m(61001, 2, Tcp)], &c, 61000).unwrap();
        assert_eq!(got, [m(61003, 1, Tcp), m(61001, 2, Tcp)]);
    }

    #[test]
    fn a_full_range_is_an_error_and_a_taken_port_names_its_holder() {
        use Protocol::*;
        let all: Vec<PortMapping> = NET_IN_RANGE.map(|p| m(p, 8080, Tcp)).collect();
        let c = with_mappings(&[("full", all)]);
        let e = assign(&[m(0, 8080, Tcp)], &c, 61000)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no free host port") && e.contains("61000-65535"),
            "{e}"
        );
        // Explicit ports outside the range are still free, and a udp port is not a tcp port.
        assert!(assign(&[m(8080, 80, Tcp), m(61000, 53, Udp)], &c, 0).is_ok());
        let e = assign(&[m(61500, 80, Tcp)], &c, 0).unwrap_err().to_string();
        assert!(
            e.contains("host port 61500/tcp is already mapped") && e.contains("full"),
            "{e}"
        );
        // The checks of every list apply too.
        let e = assign(
            &[m(1000, 1, Udp), m(1000, 2, Udp)],
            &Containers::default(),
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("host port 1000/udp is mapped twice"), "{e}");
        let e = assign(&[m(0, 61443, Tcp)], &Containers::default(), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("61443") && e.contains("TLS"), "{e}");
    }
}
