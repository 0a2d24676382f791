//! Validation of API input, with Cloud Foundry's messages where CF has one.
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::model::{Policy, Route, Rule, SecurityGroup};

// Absent fields read as Go's zero values, so that the checks (and their order) are CF's.
#[derive(Deserialize, Default)]
struct InPorts {
    #[serde(default)]
    start: i64,
    #[serde(default)]
    end: i64,
}

#[derive(Deserialize, Default)]
struct InSource {
    #[serde(default)]
    id: String,
    #[serde(default)]
    tag: String,
}

#[derive(Deserialize, Default)]
struct InDestination {
    #[serde(default)]
    id: String,
    #[serde(default)]
    tag: String,
    #[serde(default)]
    protocol: String,
    #[serde(default)]
    ports: InPorts,
    #[serde(default)]
    port: i64,
}

#[derive(Deserialize)]
struct InPolicy {
    #[serde(default)]
    source: InSource,
    #[serde(default)]
    destination: InDestination,
}

#[derive(Deserialize)]
struct InPolicies {
    #[serde(default)]
    policies: Vec<InPolicy>,
}

/// The longest app id accepted, in characters (Unicode scalar values), as Cloud Controller's
/// GUID columns hold 255.
pub const MAX_ID_CHARS: usize = 255;

/// Parses and validates a policies body (`v0` uses `destination.port`, `v1` `destination.ports`).
/// Errors are CF's full message (`mapper: validate policies: missing destination id`); the
/// checks run in CF's order (`api/policy_validator.go`, `api/api_v0/validator.go`), policy by
/// policy, then Tapestry's own id checks ([`app_id`]).
pub fn parse_policies(body: &[u8], v0: bool) -> Result<Vec<Policy>, String> {
    let input: InPolicies =
        serde_json::from_slice(body).map_err(|e| format!("mapper: unmarshal json: {e}"))?;
    validate_policies(input, v0).map_err(|e| format!("mapper: validate policies: {e}"))
}

fn validate_policies(input: InPolicies, v0: bool) -> Result<Vec<Policy>, String> {
    if input.policies.is_empty() {
        return Err("missing policies".into());
    }
    let mut out = Vec::with_capacity(input.policies.len());
    for p in input.policies {
        let (src, dst) = (p.source, p.destination);
        if src.id.trim().is_empty() {
            return Err("missing source id".into());
        }
        if dst.id.trim().is_empty() {
            return Err("missing destination id".into());
        }
        if dst.protocol != "udp" && dst.protocol != "tcp" {
            return Err("invalid destination protocol, specify either udp or tcp".into());
        }
        let (start, end) = if v0 {
            let port = dst.port;
            if port < 0 {
                return Err(format!("invalid port {port}, must be in range 1-65535"));
            }
            if port == 0 {
                return Err("missing port".into());
            }
            // CF's v0 has no upper bound (and stores 70000); Tapestry refuses it.
            if port > 65535 {
                return Err(format!("invalid port {port}, must be in range 1-65535"));
            }
            (port, port)
        } else {
            let InPorts { start, end } = dst.ports;
            if start > end {
                return Err(format!(
                    "invalid port range {start}-{end}, start must be less than or equal to end"
                ));
            }
            if start < 0 {
                return Err(format!(
                    "invalid start port {start}, must be in range 1-65535"
                ));
            }
            if start == 0 {
                return Err("missing start port".into());
            }
            if end > 65535 {
                return Err(format!("invalid end port {end}, must be in range 1-65535"));
            }
            (start, end)
        };
        if !src.tag.is_empty() || !dst.tag.is_empty() {
            return Err("tags may not be specified".into());
        }
        app_id(&src.id).map_err(|e| format!("invalid source id: {e}"))?;
        app_id(&dst.id).map_err(|e| format!("invalid destination id: {e}"))?;
        // In range: checked above.
        out.push(Policy::new(
            &src.id,
            &dst.id,
            &dst.protocol,
            start as u16,
            end as u16,
        ));
    }
    Ok(out)
}

/// Unicode general category Cf (format characters: zero-width space and joiners, bidi
/// controls, the BOM, tags...), Unicode 15.1.
const FORMAT_CHARS: &[(u32, u32)] = &[
    (0x00AD, 0x00AD),
    (0x0600, 0x0605),
    (0x061C, 0x061C),
    (0x06DD, 0x06DD),
    (0x070F, 0x070F),
    (0x0890, 0x0891),
    (0x08E2, 0x08E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x202A, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

/// Not printable: control characters (Cc), format characters (Cf), the line and paragraph
/// separators (Zl, Zp), noncharacters and private-use characters.
pub fn unprintable(c: char) -> bool {
    let u = c as u32;
    c.is_control()
        || FORMAT_CHARS.iter().any(|&(a, b)| (a..=b).contains(&u))
        || u == 0x2028
        || u == 0x2029
        || (0xFDD0..=0xFDEF).contains(&u)
        || (u & 0xFFFE) == 0xFFFE
        || (0xE000..=0xF8FF).contains(&u)
        || u >= 0xF0000
}

/// An app id (or other id a client names): at most [`MAX_ID_CHARS`] characters, all printable.
pub fn app_id(id: &str) -> Result<(), String> {
    let chars = id.chars().count();
    if chars > MAX_ID_CHARS {
        return Err(format!(
            "must be at most {MAX_ID_CHARS} characters (Unicode scalar values), it has {chars}"
        ));
    }
    if let Some((i, c)) = id.chars().enumerate().find(|&(_, c)| unprintable(c)) {
        return Err(format!(
            "character {} is U+{:04X}, which is not printable (control, format and separator characters are refused)",
            i + 1,
            c as u32
        ));
    }
    Ok(())
}

/// Checks a hostname for an internal route and returns it lower-cased.
pub fn route(host: &str, app_id: &str) -> Result<Route, String> {
    let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
    if app_id.trim().is_empty() {
        return Err("app_id: required".into());
    }
    self::app_id(app_id).map_err(|e| format!("app_id: {e}"))?;
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

    fn v1(src: &str, dst: &str, proto: &str, ports: &str) -> Vec<u8> {
        format!(r#"{{"policies":[{{"source":{{"id":"{src}"}},"destination":{{"id":"{dst}","protocol":"{proto}","ports":{ports}}}}}]}}"#).into_bytes()
    }

    #[test]
    fn policies_errors_are_cfs_in_cfs_order() {
        let e = |b: &[u8], v0: bool| parse_policies(b, v0).unwrap_err();
        let pre = "mapper: validate policies: ";
        assert_eq!(
            e(br#"{"policies":[]}"#, false),
            format!("{pre}missing policies")
        );
        assert_eq!(e(br#"{}"#, true), format!("{pre}missing policies"));
        // Source before destination before protocol before ports.
        assert_eq!(
            e(&v1("", "", "icmp", r#"{"start":0}"#), false),
            format!("{pre}missing source id")
        );
        assert_eq!(
            e(&v1("a", "", "icmp", r#"{"start":0}"#), false),
            format!("{pre}missing destination id")
        );
        assert_eq!(
            e(&v1("a", "b", "icmp", r#"{"start":0}"#), false),
            format!("{pre}invalid destination protocol, specify either udp or tcp")
        );
        // The range check comes before the bounds: a missing end reads as 0.
        assert_eq!(
            e(&v1("a", "b", "tcp", r#"{"start":8080}"#), false),
            format!("{pre}invalid port range 8080-0, start must be less than or equal to end")
        );
        assert_eq!(
            e(&v1("a", "b", "tcp", r#"{"start":-5,"end":1}"#), false),
            format!("{pre}invalid start port -5, must be in range 1-65535")
        );
        assert_eq!(
            e(&v1("a", "b", "tcp", r#"{}"#), false),
            format!("{pre}missing start port")
        );
        assert_eq!(
            e(&v1("a", "b", "tcp", r#"{"start":1,"end":70000}"#), false),
            format!("{pre}invalid end port 70000, must be in range 1-65535")
        );
        assert_eq!(
            e(
                br#"{"policies":[{"source":{"id":"a","tag":"1"},"destination":{"id":"b","protocol":"tcp","ports":{"start":1,"end":1}}}]}"#,
                false
            ),
            format!("{pre}tags may not be specified")
        );
        let v0 = |port: &str| {
            format!(r#"{{"policies":[{{"source":{{"id":"a"}},"destination":{{"id":"b","protocol":"udp","port":{port}}}}}]}}"#).into_bytes()
        };
        assert_eq!(e(&v0("0"), true), format!("{pre}missing port"));
        assert_eq!(
            e(&v0("-1"), true),
            format!("{pre}invalid port -1, must be in range 1-65535")
        );
        assert_eq!(
            e(&v0("70000"), true),
            format!("{pre}invalid port 70000, must be in range 1-65535")
        );
        assert!(e(b"{nope", false).starts_with("mapper: unmarshal json:"));
        let ok = parse_policies(&v0("53"), true).unwrap();
        assert_eq!(ok[0].destination.ports.end, 53);
    }

    #[test]
    fn ids_are_printable_and_counted_in_characters() {
        // 255 three-byte characters are fine: the limit counts characters, not bytes.
        let long = "é".repeat(255);
        assert!(app_id(&long).is_ok());
        let e = app_id(&"é".repeat(256)).unwrap_err();
        assert!(e.contains("255 characters") && e.contains("256"), "{e}");
        for bad in [
            "a\u{0}b",
            "a\u{200B}",
            "\u{FEFF}x",
            "x\u{202E}",
            "a\nb",
            "a\u{2028}",
        ] {
            let e = app_id(bad).unwrap_err();
            assert!(e.contains("not printable"), "{bad:?}: {e}");
        }
        assert!(app_id("Ünïcode app 名前").is_ok());
        let body = v1("a\u{200D}b", "c", "tcp", r#"{"start":1,"end":1}"#);
        let e = parse_policies(&body, false).unwrap_err();
        assert!(
            e.starts_with("mapper: validate policies: invalid source id: character 2 is U+200D"),
            "{e}"
        );
        assert!(route("b.apps.internal", "x\u{0}").is_err());
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
