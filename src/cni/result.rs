//! ADD's result in the CNI specification's shape, merged into a chain's prevResult.

use serde_json::{json, Value};

use crate::cell::api::Attachment;

/// ADD's result: ours alone, or merged into `prev` (the chain's earlier plugins' result) with
/// our interface appended and our address and route pointing at its index.
pub(super) fn add_result(version: &str, a: &Attachment, prev: Option<&Value>) -> Value {
    let list = |k: &str| -> Vec<Value> {
        prev.and_then(|p| p[k].as_array().cloned())
            .unwrap_or_default()
    };
    let mut interfaces = list("interfaces");
    let index = interfaces.len();
    interfaces.push(json!({"name": a.ifname, "mac": a.mac, "sandbox": a.netns}));
    let ip = format!("{}/32", a.container_ip);
    let gw = a.gateway.to_string();
    let mut ips = list("ips");
    ips.push(if version.starts_with("0.3") {
        json!({"version": "4", "address": ip, "gateway": gw, "interface": index})
    } else {
        json!({"address": ip, "gateway": gw, "interface": index})
    });
    let mut routes = list("routes");
    routes.push(json!({"dst": "0.0.0.0/0", "gw": gw}));
    let ours_dns = json!({"nameservers": a.dns_servers, "search": a.search_domains});
    let dns = match prev.map(|p| &p["dns"]) {
        Some(d) if d.is_object() && a.dns_servers.is_empty() && a.search_domains.is_empty() => {
            d.clone()
        }
        _ => ours_dns,
    };
    let mut result = json!({
        "cniVersion": version,
        "interfaces": interfaces,
        "ips": ips,
        "routes": routes,
        "dns": dns,
    });
    // Not in the spec's result: the mapped host ports for the runtime, in runtimeConfig's
    // shape (libcni ignores fields it does not know).
    if !a.port_mappings.is_empty() {
        result["portMappings"] = json!(a.port_mappings);
    }
    // Nor this: where the instance identity credentials are (CF_INSTANCE_CERT and
    // CF_INSTANCE_KEY), for the runtime to mount or point the app at (README, "Instance identity credentials").
    if let Some(id) = &a.instance_identity {
        result["tapestry"] = json!({"instance_cert": id.instance_cert,
            "instance_key": id.instance_key, "instance_ca": id.instance_ca});
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::api;

    #[test]
    fn add_result_is_spec_shaped() {
        let a = Attachment {
            handle: "c1".into(),
            container_ip: "10.255.7.3".parse().unwrap(),
            gateway: "169.254.0.1".parse().unwrap(),
            mac: "ee:ee:0a:ff:07:03".into(),
            mtu: 1450,
            ifname: "eth0".into(),
            netns: "/var/run/netns/x".into(),
            dns_servers: vec![],
            search_domains: vec![],
            port_mappings: vec![],
            instance_identity: None,
        };
        let v = add_result("1.0.0", &a, None);
        assert!(v.get("tapestry").is_none(), "no credentials, no block");
        assert!(v.get("portMappings").is_none(), "none without mappings");
        assert_eq!(v["ips"][0]["address"], "10.255.7.3/32");
        assert_eq!(v["ips"][0]["gateway"], "169.254.0.1");
        assert_eq!(v["interfaces"][0]["sandbox"], "/var/run/netns/x");
        assert!(v["ips"][0].get("version").is_none());
        assert_eq!(add_result("0.3.1", &a, None)["ips"][0]["version"], "4");
        // Chained: prevResult's interfaces, ips and routes stay, ours is appended with its index.
        let prev = json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "br0"}, {"name": "veth1", "sandbox": "/x"}],
            "ips": [{"address": "192.168.1.5/24", "interface": 1}],
            "routes": [{"dst": "192.168.0.0/16"}],
            "dns": {"nameservers": ["192.168.1.1"]}});
        let v = add_result("1.0.0", &a, Some(&prev));
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 3);
        assert_eq!(v["interfaces"][0]["name"], "br0");
        assert_eq!(v["interfaces"][2]["name"], "eth0");
        assert_eq!(v["ips"][0]["address"], "192.168.1.5/24");
        assert_eq!(v["ips"][0]["interface"], 1);
        assert_eq!(v["ips"][1]["address"], "10.255.7.3/32");
        assert_eq!(v["ips"][1]["interface"], 2);
        assert_eq!(v["routes"].as_array().unwrap().len(), 2);
        assert_eq!(v["dns"]["nameservers"][0], "192.168.1.1");
        // An empty prevResult is the same as none.
        assert_eq!(
            add_result("1.0.0", &a, Some(&json!({}))),
            add_result("1.0.0", &a, None)
        );
        // Mapped ports are listed with their real host ports, in runtimeConfig's shape.
        let a = Attachment {
            port_mappings: vec![api::PortMapping {
                host_port: 61004,
                container_port: 8080,
                protocol: api::Protocol::Udp,
            }],
            ..a
        };
        assert_eq!(
            add_result("1.1.0", &a, None)["portMappings"],
            json!([{"hostPort": 61004, "containerPort": 8080, "protocol": "udp"}])
        );
        let a = Attachment {
            instance_identity: Some(crate::cell::identity::IdentityPaths {
                instance_cert: "/s/instances/c1/instance.crt".into(),
                instance_key: "/s/instances/c1/instance.key".into(),
                instance_ca: "/s/instances/c1/ca.crt".into(),
                instance_identity_pending: true,
            }),
            ..a
        };
        let t = &add_result("1.1.0", &a, None)["tapestry"];
        assert_eq!(t["instance_cert"], "/s/instances/c1/instance.crt");
        assert_eq!(t["instance_key"], "/s/instances/c1/instance.key");
        assert_eq!(t["instance_ca"], "/s/instances/c1/ca.crt");
    }
}
