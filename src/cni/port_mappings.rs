//! `runtimeConfig.portMappings`, the `portMappings` capability: host ports the cell forwards
//! to the container (net-in), in CNI's conventional shape
//! `[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": ""}]`. `protocol` is
//! tcp (the default) or udp; `hostPort` 0 (or none) asks the cell for a free port from
//! 61000-65535; `hostIP` must be empty or 0.0.0.0, since the cell listens on its own
//! `--net-in-address`. ADD's result lists the mappings with their real host ports.

use serde_json::Value;

use super::{CniError, E_INVALID_CONFIG};
use crate::cell::api::{check_port_mappings, PortMapping, Protocol};

const FIELD: &str = "network configuration field runtimeConfig.portMappings";

/// The mappings in `runtimeConfig.portMappings`; none when it is absent or null.
pub fn port_mappings(runtime_config: Option<&Value>) -> Result<Vec<PortMapping>, CniError> {
    let Some(v) = runtime_config.and_then(|r| r.get("portMappings")) else {
        return Ok(vec![]);
    };
    let list = match v {
        Value::Null => return Ok(vec![]),
        Value::Array(list) => list,
        other => {
            return Err(CniError::new(
                E_INVALID_CONFIG,
                format!("{FIELD} must be an array of mappings"),
                other.to_string(),
            ))
        }
    };
    let mappings = list
        .iter()
        .enumerate()
        .map(|(i, m)| mapping(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    check_port_mappings(&mappings)
        .map_err(|e| CniError::new(E_INVALID_CONFIG, format!("{FIELD}: {e}"), v.to_string()))?;
    Ok(mappings)
}

fn mapping(i: usize, m: &Value) -> Result<PortMapping, CniError> {
    let bad = |what: String| {
        CniError::new(
            E_INVALID_CONFIG,
            format!("{FIELD}[{i}]{what}"),
            m.to_string(),
        )
    };
    if !m.is_object() {
        return Err(bad(" must be an object".into()));
    }
    let port = |key: &str, min: u64| -> Result<Option<u16>, CniError> {
        match &m[key] {
            Value::Null => Ok(None),
            v => v
                .as_u64()
                .filter(|n| (min..=65535).contains(n))
                .map(|n| Some(n as u16))
                .ok_or_else(|| bad(format!(".{key} {v} is not a port number ({min}-65535)"))),
        }
    };
    let container_port =
        port("containerPort", 1)?.ok_or_else(|| bad(".containerPort is missing".into()))?;
    let host_port = port("hostPort", 0)?.unwrap_or(0);
    let protocol = match &m["protocol"] {
        Value::Null => Protocol::Tcp,
        Value::String(s) if s.eq_ignore_ascii_case("tcp") => Protocol::Tcp,
        Value::String(s) if s.eq_ignore_ascii_case("udp") => Protocol::Udp,
        other => return Err(bad(format!(".protocol {other} must be \"tcp\" or \"udp\""))),
    };
    match &m["hostIP"] {
        Value::Null => {}
        Value::String(s) if s.is_empty() || s == "0.0.0.0" => {}
        other => {
            return Err(bad(format!(
                ".hostIP {other} is not supported: the cell listens on its --net-in-address \
                 (leave hostIP empty)"
            )))
        }
    }
    Ok(PortMapping {
        host_port,
        container_port,
        protocol,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Vec<PortMapping>, CniError> {
        port_mappings(Some(&json!({ "portMappings": v })))
    }

    #[test]
    fn mappings_parse_with_tcp_and_port_0_by_default() {
        assert!(port_mappings(None).unwrap().is_empty());
        assert!(port_mappings(Some(&json!({"tapestry": {}})))
            .unwrap()
            .is_empty());
        assert!(parse(json!(null)).unwrap().is_empty());
        assert!(parse(json!([])).unwrap().is_empty());
        let got = parse(json!([
            {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
            {"hostPort": 5353, "containerPort": 53, "protocol": "UDP", "hostIP": ""},
            {"hostPort": 0, "containerPort": 8080},
            {"containerPort": 9090, "hostIP": "0.0.0.0"},
        ]))
        .unwrap();
        let m = |host_port, container_port, protocol| PortMapping {
            host_port,
            container_port,
            protocol,
        };
        assert_eq!(
            got,
            [
                m(8080, 80, Protocol::Tcp),
                m(5353, 53, Protocol::Udp),
                m(0, 8080, Protocol::Tcp),
                m(0, 9090, Protocol::Tcp),
            ]
        );
        // The same host port for tcp and udp is two mappings, not a duplicate.
        assert_eq!(
            parse(json!([{"hostPort": 53, "containerPort": 53},
                {"hostPort": 53, "containerPort": 53, "protocol": "udp"}]))
            .unwrap()
            .len(),
            2
        );
    }

    #[test]
    fn bad_mappings_name_the_entry_and_field() {
        for (v, named) in [
            (
                json!({"hostPort": 1}),
                "runtimeConfig.portMappings must be an array",
            ),
            (json!([7]), "portMappings[0] must be an object"),
            (
                json!([{"hostPort": 1, "containerPort": 2}, {"hostPort": 3}]),
                "portMappings[1].containerPort is missing",
            ),
            (
                json!([{"hostPort": 70000, "containerPort": 80}]),
                "portMappings[0].hostPort 70000 is not a port number (0-65535)",
            ),
            (
                json!([{"hostPort": -1, "containerPort": 80}]),
                "portMappings[0].hostPort -1 is not a port number",
            ),
            (
                json!([{"hostPort": "80", "containerPort": 80}]),
                "portMappings[0].hostPort \"80\" is not a port number",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 0}]),
                "portMappings[0].containerPort 0 is not a port number (1-65535)",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "protocol": "sctp"}]),
                "portMappings[0].protocol \"sctp\" must be \"tcp\" or \"udp\"",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 80, "hostIP": "10.0.0.1"}]),
                "portMappings[0].hostIP \"10.0.0.1\" is not supported",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 61443}]),
                "container port 61443 is reserved",
            ),
            (
                json!([{"hostPort": 80, "containerPort": 1}, {"hostPort": 80, "containerPort": 2}]),
                "host port 80/tcp is mapped twice",
            ),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, E_INVALID_CONFIG, "{v}");
            assert!(e.msg.contains(named), "{v}: {}", e.msg);
            assert!(e.msg.contains("runtimeConfig.portMappings"), "{}", e.msg);
        }
    }
}
