//! The cell's DNS settings (`--internal-domains`, `--dns-upstream`, /etc/resolv.conf) and the
//! table of internal names it answers, built from the feed's internal routes and instances.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::{bail, Result};
use tapestry_switch::stack::dns::DnsTable;

use super::view::CellView;

/// CF's internal domain.
pub const DEFAULT_INTERNAL_DOMAINS: &str = "apps.internal";

/// Parses `--internal-domains`: a comma list of DNS names.
pub fn parse_internal_domains(s: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for d in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let d = d.trim_end_matches('.').to_ascii_lowercase();
        let ok = d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        });
        if !ok || d.len() > 253 {
            bail!("--internal-domains: {d:?} is not a DNS name (write it as e.g. apps.internal)");
        }
        out.push(d);
    }
    Ok(out)
}

/// Parses `--dns-upstream`: a comma list of `IP` or `IP:PORT`.
pub fn parse_upstreams(s: &str) -> Result<Vec<SocketAddrV4>> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<SocketAddrV4>()
                .or_else(|_| u.parse::<Ipv4Addr>().map(|ip| SocketAddrV4::new(ip, 53)))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "--dns-upstream: {u:?} is not an IPv4 address or IP:PORT (e.g. 10.0.0.2 or 10.0.0.2:5353)"
                    )
                })
        })
        .collect()
}

/// The IPv4 `nameserver` lines of a resolv.conf (port 53).
pub fn resolv_conf_upstreams(text: &str) -> Vec<SocketAddrV4> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver"))
                .then(|| w.next())
                .flatten()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
        })
        .filter(|ip| *ip != tapestry_switch::stack::DNS)
        .map(|ip| SocketAddrV4::new(ip, 53))
        .collect()
}

/// Every internal route with the running instances of its app, from the feed.
pub fn table(view: &CellView, domains: &[String]) -> DnsTable {
    let mut by_app: HashMap<&str, Vec<(u32, Ipv4Addr)>> = HashMap::new();
    for i in view.view.instances() {
        by_app
            .entry(i.app_id.as_str())
            .or_default()
            .push((i.instance_index, i.ip));
    }
    DnsTable::new(
        domains.iter().map(String::as_str),
        view.view.routes().map(|r| {
            (
                r.host.clone(),
                by_app.get(r.app_id.as_str()).cloned().unwrap_or_default(),
            )
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_name_a_bad_entry() {
        assert_eq!(
            parse_internal_domains("apps.internal, Corp.Internal.").unwrap(),
            vec!["apps.internal", "corp.internal"]
        );
        assert!(parse_internal_domains("apps..internal")
            .unwrap_err()
            .to_string()
            .contains("apps..internal"));
        assert_eq!(
            parse_upstreams("10.0.0.2, 10.0.0.3:5353").unwrap(),
            vec![
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 53),
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 3), 5353)
            ]
        );
        assert!(parse_upstreams("dns.example")
            .unwrap_err()
            .to_string()
            .contains("dns.example"));
        assert_eq!(
            resolv_conf_upstreams(
                "# x\nnameserver 127.0.0.53\nnameserver ::1\nnameserver 169.254.0.2\noptions edns0\n"
            ),
            vec![SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 53), 53)]
        );
    }
}
