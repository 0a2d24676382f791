//! CF's rule text, parsed: destinations, ports and ICMP type/code.
use super::*;

/// One rule after parsing: (destination intervals, key intervals, plane set).
#[derive(Debug, Clone)]
pub(super) struct ParsedRule {
    pub(super) dst: Vec<(u32, u32)>,
    pub(super) keys: Vec<(u16, u16)>,
    pub(super) planes: [bool; PLANES],
    pub(super) log: bool,
}

fn parse_ip(s: &str) -> Result<u32, String> {
    s.trim()
        .parse::<Ipv4Addr>()
        .map(u32::from)
        .map_err(|_| format!("'{}' is not an IPv4 address", s.trim()))
}

/// `a`, `a/len` or `a-b` as an inclusive interval.
fn parse_destination_part(s: &str) -> Result<(u32, u32), String> {
    let s = s.trim();
    if let Some((a, b)) = s.split_once('-') {
        let (a, b) = (parse_ip(a)?, parse_ip(b)?);
        if a > b {
            return Err(format!("range '{s}' ends before it starts"));
        }
        return Ok((a, b));
    }
    if let Some((a, len)) = s.split_once('/') {
        let a = parse_ip(a)?;
        let len: u8 = match len.trim().parse() {
            Ok(l) if l <= 32 => l,
            _ => return Err(format!("'{s}' has no prefix length between 0 and 32")),
        };
        let m = mask(len);
        return Ok((a & m, (a & m) | !m));
    }
    let a = parse_ip(s)?;
    Ok((a, a))
}

fn parse_port(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(p) if p >= 1 => Ok(p),
        _ => Err(format!("'{}' is not a port between 1 and 65535", s.trim())),
    }
}

/// CF ports: one port, a comma list of ports, or one range `a-b`.
fn parse_ports(s: &str) -> Result<Vec<(u16, u16)>, String> {
    if s.trim().is_empty() {
        return Err("must not be empty".into());
    }
    if let Some((a, b)) = s.split_once('-') {
        if s.contains(',') {
            return Err("use a comma list of ports or one range, not both".into());
        }
        let (a, b) = (parse_port(a)?, parse_port(b)?);
        if a > b {
            return Err(format!("range '{}' ends before it starts", s.trim()));
        }
        return Ok(vec![(a, b)]);
    }
    s.split(',')
        .map(|p| parse_port(p).map(|p| (p, p)))
        .collect()
}

fn icmp_value(v: Option<i64>) -> Result<Option<u8>, String> {
    match v {
        None => Err("required for protocol icmp (-1 means any)".into()),
        Some(-1) => Ok(None),
        Some(v) => u8::try_from(v)
            .map(Some)
            .map_err(|_| format!("{v} is not between -1 and 255")),
    }
}

fn parse_rule(r: &RuleText) -> Result<ParsedRule, (&'static str, String)> {
    let mut planes = [false; PLANES];
    match r.protocol.as_str() {
        "tcp" => planes[TCP] = true,
        "udp" => planes[UDP] = true,
        "icmp" => planes[ICMP] = true,
        "all" => planes = [true; PLANES],
        p => {
            return Err((
                "protocol",
                format!("'{p}' is not one of tcp, udp, icmp, all"),
            ))
        }
    }
    if r.destination.trim().is_empty() {
        return Err(("destination", "required".into()));
    }
    let dst = r
        .destination
        .split(',')
        .map(parse_destination_part)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|m| ("destination", m))?;
    let is_icmp = r.protocol == "icmp";
    if !is_icmp {
        if r.icmp_type.is_some() {
            return Err(("type", format!("not allowed for protocol {}", r.protocol)));
        }
        if r.code.is_some() {
            return Err(("code", format!("not allowed for protocol {}", r.protocol)));
        }
    }
    let keys = match r.protocol.as_str() {
        "tcp" | "udp" => match &r.ports {
            None => return Err(("ports", format!("required for protocol {}", r.protocol))),
            Some(p) => parse_ports(p).map_err(|m| ("ports", m))?,
        },
        _ if r.ports.is_some() => {
            return Err(("ports", format!("not allowed for protocol {}", r.protocol)))
        }
        "icmp" => {
            let t = icmp_value(r.icmp_type).map_err(|m| ("type", m))?;
            let c = icmp_value(r.code).map_err(|m| ("code", m))?;
            match (t, c) {
                (None, _) => vec![(0, u16::MAX)],
                (Some(t), None) => vec![(u16::from(t) << 8, u16::from(t) << 8 | 0xff)],
                (Some(t), Some(c)) => {
                    let k = u16::from(t) << 8 | u16::from(c);
                    vec![(k, k)]
                }
            }
        }
        _ => vec![(0, u16::MAX)],
    };
    Ok(ParsedRule {
        dst,
        keys,
        planes,
        log: r.log,
    })
}

/// Parses every rule of a group; the first bad one fails the group.
pub(super) fn parse_group(g: &GroupText) -> Result<Vec<ParsedRule>, AsgError> {
    g.rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            parse_rule(r).map_err(|(field, message)| AsgError {
                group: g.name.clone(),
                rule: i,
                field,
                message,
            })
        })
        .collect()
}
