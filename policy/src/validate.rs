//! Validation of API input, with Cloud Foundry's messages where CF has one.
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::model::{Policy, Route, Rule, SecurityGroup};

#[derive(Deserialize)]
struct InPorts {
    start: Option<i64>,
    end: Option<i64>,
}

#[derive(Deserialize)]
struct InSource {
    id: Option<String>,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct InDestination {
    id: Option<String>,
    tag: Option<String>,
    protocol: Option<String>,
    ports: Option<InPorts>,
    port: Option<i64>,
}

#[derive(Deserialize)]
struct InPolicy {
    source: Option<InSource>,
    destination: Option<InDestination>,
}

#[derive(Deserialize)]
struct InPolicies {
    policies: Option<Vec<InPolicy>>,
}

/// Parses and validates a policies body (`v0` uses `destination.port`, `v1` `destination.ports`).
/// Errors are the full CF-style message, e.g. `mapper: validate policies: missing destination id`.
pub fn parse_policies(body: &[u8], v0: bool) -> Result<Vec<Policy>, String> {
    let input: InPolicies =
        serde_json::from_slice(body).map_err(|e| format!("mapper: unmarshal json: {e}"))?;
    validate_policies(input, v0).map_err(|e| format!("mapper: validate policies: {e}"))
}

fn port_in_range(p: i64, what: &str) -> Result<u16, String> {
    if (1..=65535).contains(&p) {
        Ok(p as u16)
    } else {
        Err(format!("invalid {what} {p}, must be in range 1-65535"))
    }
}

fn validate_policies(input: InPolicies, v0: bool) -> Result<Vec<Policy>, String> {
    let list = input.policies.unwrap_or_default();
    if list.is_empty() {
        return Err("missing policies".into());
    }
    let mut out = Vec::with_capacity(list.len());
    for (i, p) in list.into_iter().enumerate() {
        let at = |m: &str| format!("policies[{i}]: {m}");
        let src = p.source.ok_or_else(|| at("missing source id"))?;
        let dst = p.destination.ok_or_else(|| at("missing destination id"))?;
        let src_id = src.id.unwrap_or_default();
        let dst_id = dst.id.unwrap_or_default();
        if src_id.trim().is_empty() {
            return Err(at("missing source id"));
        }
        if dst_id.trim().is_empty() {
            return Err(at("missing destination id"));
        }
        if src_id.len() > 255 || dst_id.len() > 255 {
            return Err(at(
                "source.id and destination.id must be at most 255 characters",
            ));
        }
        if src.tag.is_some() || dst.tag.is_some() {
            return Err(at("tags may not be specified"));
        }
        let protocol = dst.protocol.unwrap_or_default();
        if protocol != "tcp" && protocol != "udp" {
            return Err(at(&format!(
                "invalid destination.protocol '{protocol}', specify either udp or tcp"
            )));
        }
        let (start, end) = if v0 {
            let p = dst.port.ok_or_else(|| at("missing destination.port"))?;
            let p = port_in_range(p, "destination.port").map_err(|e| at(&e))?;
            (p, p)
        } else {
            let ports = dst.ports.ok_or_else(|| at("missing destination.ports"))?;
            let start = ports
                .start
                .ok_or_else(|| at("missing destination.ports.start"))?;
            let end = ports.end.unwrap_or(start);
            let s = port_in_range(start, "destination.ports.start").map_err(|e| at(&e))?;
            let e = port_in_range(end, "destination.ports.end").map_err(|e| at(&e))?;
            if s > e {
                return Err(at(&format!(
                    "invalid destination.ports range {s}-{e}: start must be less than or equal to end"
                )));
            }
            (s, e)
        };
        out.push(Policy::new(&src_id, &dst_id, &protocol, start, end));
    }
    Ok(out)
}

/// Checks a hostname for an internal route and returns it lower-cased.
pub fn route(host: &str, app_id: &str) -> Result<Route, String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if app_id.trim().is_empty() {
        return Err("app_id: required".into());
    }
    if host.is_empty() {
        return Err("host: required".into());
    }
    if host.len() > 253 {
        return Err("host: must be at most 253 characters".into());
    }
    let Some(prefix) = host.strip_suffix(".apps.internal") else {
        return Err(format!(
            "host: '{host}' must be a name under apps.internal, e.g. backend.apps.internal"
        ));
    };
    for label in prefix.split('.') {
        let ok = !label.is_empty()
            && label.len() <= 63
            && label
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !label.starts_with('-')
            && !label.ends_with('-');
        if !ok {
            return Err(format!(
                "host: label '{label}' is not a valid DNS label (letters, digits and '-', 1-63 characters, no leading or trailing '-')"
            ));
        }
    }
    Ok(Route {
        host,
        app_id: app_id.to_string(),
    })
}

fn ip(s: &str) -> Option<Ipv4Addr> {
    s.trim().parse().ok()
}

/// One destination element: IP, CIDR or range a-b.
fn destination_part(s: &str) -> Result<(), String> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let (Some(a), Some(b)) = (ip(a), ip(b)) else {
            return Err(format!("'{s}' is not a valid IP address range"));
        };
        if u32::from(a) > u32::from(b) {
            return Err(format!(
                "range '{s}': the first address must not be after the last"
            ));
        }
        return Ok(());
    }
    if s.contains('/') {
        return s
            .parse::<ipnet::Ipv4Net>()
            .map(|_| ())
            .map_err(|_| format!("'{s}' is not a valid CIDR"));
    }
    ip(s)
        .map(|_| ())
        .ok_or_else(|| format!("'{s}' must be a valid IP address, CIDR, or IP address range"))
}

/// Parses CF ports ("443", "80-90", "80,443,8080-8090") into ranges.
pub fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    let mut out = Vec::new();
    let parse = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
            _ => Err(format!("'{}' is not a port between 1 and 65535", p.trim())),
        }
    };
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if s.contains(',') && s.contains('-') {
        return Err("use either a comma-separated list of ports or one range, not both".into());
    }
    for part in s.split(',') {
        if let Some((a, b)) = part.split_once('-') {
            let (a, b) = (parse(a)?, parse(b)?);
            if a > b {
                return Err(format!(
                    "range '{}': start must not exceed end",
                    part.trim()
                ));
            }
            out.push((a, b));
        } else {
            let p = parse(part)?;
            out.push((p, p));
        }
    }
    Ok(out)
}

fn rule(i: usize, r: &Rule) -> Result<(), String> {
    let at = |field: &str, m: String| format!("rules[{i}].{field}: {m}");
    let proto = r.protocol.as_str();
    if !matches!(proto, "tcp" | "udp" | "icmp" | "all") {
        return Err(at(
            "protocol",
            format!("'{proto}' is not one of tcp, udp, icmp, all"),
        ));
    }
    if r.destination.trim().is_empty() {
        return Err(at("destination", "required".into()));
    }
    for part in r.destination.split(',') {
        destination_part(part).map_err(|m| at("destination", m))?;
    }
    match (proto, &r.ports) {
        ("tcp" | "udp", None) => return Err(at("ports", format!("required for protocol {proto}"))),
        ("tcp" | "udp", Some(p)) => {
            parse_ports(p).map_err(|m| at("ports", m))?;
        }
        (_, Some(_)) => return Err(at("ports", format!("not allowed for protocol {proto}"))),
        _ => {}
    }
    if proto == "icmp" {
        for (field, v) in [("type", r.icmp_type), ("code", r.code)] {
            match v {
                None => {
                    return Err(at(
                        field,
                        "required for protocol icmp (-1 means any)".into(),
                    ))
                }
                Some(v) if !(-1..=255).contains(&v) => {
                    return Err(at(field, format!("{v} is not between -1 and 255")))
                }
                _ => {}
            }
        }
    } else {
        if r.icmp_type.is_some() {
            return Err(at("type", format!("not allowed for protocol {proto}")));
        }
        if r.code.is_some() {
            return Err(at("code", format!("not allowed for protocol {proto}")));
        }
    }
    if let Some(d) = &r.description {
        if d.len() > 1024 {
            return Err(at("description", "must be at most 1024 characters".into()));
        }
    }
    Ok(())
}

/// Validates a security group; the message names the rule index and field.
pub fn security_group(g: &SecurityGroup) -> Result<(), String> {
    let name = g.name.trim();
    if name.is_empty() {
        return Err("name: required".into());
    }
    if name.len() > 250 {
        return Err("name: must be at most 250 characters".into());
    }
    if name.contains('/') || name.chars().any(|c| c.is_control()) {
        return Err("name: must not contain '/' or control characters".into());
    }
    for (i, r) in g.rules.iter().enumerate() {
        rule(i, r)?;
    }
    for (field, spaces) in [
        ("running_spaces", &g.running_spaces),
        ("staging_spaces", &g.staging_spaces),
    ] {
        if spaces.iter().any(|s| s.trim().is_empty()) {
            return Err(format!("{field}: space ids must not be empty"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_errors_name_the_field() {
        let e = parse_policies(br#"{"policies":[]}"#, false).unwrap_err();
        assert_eq!(e, "mapper: validate policies: missing policies");
        let e = parse_policies(
            br#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"icmp","ports":{"start":1,"end":2}}}]}"#,
            false,
        )
        .unwrap_err();
        assert!(e.contains("protocol"), "{e}");
        let e = parse_policies(
            br#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"tcp","ports":{"start":9,"end":2}}}]}"#,
            false,
        )
        .unwrap_err();
        assert!(e.contains("start must be less than or equal to end"), "{e}");
        let e = parse_policies(b"{nope", false).unwrap_err();
        assert!(e.starts_with("mapper: unmarshal json:"), "{e}");
        let ok = parse_policies(
            br#"{"policies":[{"source":{"id":"a"},"destination":{"id":"b","protocol":"udp","port":53}}]}"#,
            true,
        )
        .unwrap();
        assert_eq!(ok[0].destination.ports.end, 53);
    }

    #[test]
    fn routes() {
        assert_eq!(
            route("Backend.apps.internal", "B").unwrap().host,
            "backend.apps.internal"
        );
        assert!(route("apps.internal", "B").is_err());
        assert!(route("a..apps.internal", "B").is_err());
        assert!(route("-a.apps.internal", "B").is_err());
        assert!(route("backend.example.com", "B").is_err());
        assert!(route("backend.apps.internal", "").is_err());
    }

    #[test]
    fn asg_rules() {
        let g = |rules: serde_json::Value| -> SecurityGroup {
            serde_json::from_value(serde_json::json!({"name":"web","rules":rules})).unwrap()
        };
        assert!(security_group(&g(serde_json::json!([
            {"protocol":"tcp","destination":"10.0.0.0/8","ports":"443,80"},
            {"protocol":"icmp","destination":"10.0.0.1-10.0.0.9","type":8,"code":0},
            {"protocol":"all","destination":"10.0.0.1,192.168.0.0/16"}
        ])))
        .is_ok());
        let e = security_group(&g(serde_json::json!([
            {"protocol":"tcp","destination":"10.0.0.0/8","ports":"443"},
            {"protocol":"udp","destination":"10.0.0.0/8"}
        ])))
        .unwrap_err();
        assert!(e.starts_with("rules[1].ports:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"tcp","destination":"10.0.0.0/8","ports":"0"}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].ports:"), "{e}");
        let e = security_group(&g(serde_json::json!([{"protocol":"icmp","destination":"10.0.0.0/8","type":8,"code":0,"ports":"1"}]))).unwrap_err();
        assert!(e.starts_with("rules[0].ports:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"tcp","destination":"10.0.0.0/8","ports":"1","type":1}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].type:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"gre","destination":"10.0.0.0/8"}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].protocol:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"all","destination":"10.0.0.9-10.0.0.1"}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].destination:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"all","destination":"nope"}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].destination:"), "{e}");
        let e = security_group(&g(
            serde_json::json!([{"protocol":"icmp","destination":"1.2.3.4","type":300,"code":0}]),
        ))
        .unwrap_err();
        assert!(e.starts_with("rules[0].type:"), "{e}");
    }

    proptest::proptest! {
        #[test]
        fn parse_policies_never_panics(s in ".{0,200}") {
            let _ = parse_policies(s.as_bytes(), false);
            let _ = parse_policies(s.as_bytes(), true);
        }

        #[test]
        fn ports_and_destinations_never_panic(s in "[0-9,./ -]{0,40}") {
            let _ = parse_ports(&s);
            let _ = destination_part(&s);
            let _ = route(&s, "a");
        }

        #[test]
        fn valid_port_ranges_accepted(a in 1u16..=65535, b in 1u16..=65535) {
            let (s, e) = if a <= b { (a, b) } else { (b, a) };
            let body = format!(r#"{{"policies":[{{"source":{{"id":"x"}},"destination":{{"id":"y","protocol":"tcp","ports":{{"start":{s},"end":{e}}}}}}}]}}"#);
            let p = parse_policies(body.as_bytes(), false).unwrap();
            proptest::prop_assert_eq!(p[0].destination.ports.start, s);
            proptest::prop_assert_eq!(parse_ports(&format!("{s}-{e}")).unwrap(), vec![(s, e)]);
        }
    }
}
