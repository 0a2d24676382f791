//! CHECK's own part: prevResult must describe this attachment (the cell checks the rest).

use serde_json::Value;

use super::{CniError, Invocation, E_CHECK_FAILED};

/// CHECK: prevResult must list this attachment's interface (`CNI_IFNAME`, in `CNI_NETNS` when it
/// names a sandbox) and an IPv4 address on it; that address is what the cell then checks.
/// Without prevResult (before 0.4.0 runtimes did not send one) only the cell's checks run.
pub(super) fn check_prev_result(
    inv: &Invocation,
    prev: Option<&Value>,
) -> Result<Option<std::net::Ipv4Addr>, CniError> {
    let Some(prev) = prev else { return Ok(None) };
    let differs = |msg: String| CniError::new(E_CHECK_FAILED, msg, prev.to_string());
    let interfaces = prev["interfaces"].as_array().cloned().unwrap_or_default();
    let Some(index) = interfaces
        .iter()
        .position(|i| i["name"].as_str() == Some(inv.ifname.as_str()))
    else {
        return Err(differs(format!(
            "prevResult has no interface {} (CNI_IFNAME)",
            inv.ifname
        )));
    };
    if let Some(sandbox) = interfaces[index]["sandbox"].as_str() {
        if !inv.netns.is_empty() && sandbox != inv.netns {
            return Err(differs(format!(
                "prevResult puts interface {} in sandbox {sandbox}, but CNI_NETNS is {}",
                inv.ifname, inv.netns
            )));
        }
    }
    let ip = prev["ips"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|ip| ip["interface"].as_u64() == Some(index as u64))
        .find_map(|ip| {
            let a = ip["address"].as_str()?;
            a.split_once('/').map_or(a, |(a, _)| a).parse().ok()
        });
    match ip {
        Some(ip) => Ok(Some(ip)),
        None => Err(differs(format!(
            "prevResult has no IPv4 address on interface {} (index {index})",
            inv.ifname
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::api::Request;
    use crate::cni::parse::parse;
    use crate::cni::tests::inv;
    use serde_json::json;
    use std::path::PathBuf;

    #[test]
    fn check_reads_prev_result() {
        let mut i = inv("CHECK");
        i.netns = "/var/run/netns/x".into();
        let prev = |p: Value| Some(p);
        let good = json!({"interfaces": [{"name": "lo0"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
            "ips": [{"address": "10.1.1.1/24", "interface": 0}, {"address": "10.255.1.2/32", "interface": 1}]});
        assert_eq!(
            check_prev_result(&i, prev(good.clone()).as_ref()).unwrap(),
            Some("10.255.1.2".parse().unwrap())
        );
        assert_eq!(check_prev_result(&i, None).unwrap(), None);
        let mut other_if = i.clone_for_test();
        other_if.ifname = "eth1".into();
        let e = check_prev_result(&other_if, prev(good.clone()).as_ref()).unwrap_err();
        assert_eq!(e.code, E_CHECK_FAILED);
        assert!(e.msg.contains("no interface eth1"), "{}", e.msg);
        let mut other_ns = i.clone_for_test();
        other_ns.netns = "/var/run/netns/y".into();
        let e = check_prev_result(&other_ns, prev(good.clone()).as_ref()).unwrap_err();
        assert!(e.msg.contains("sandbox"), "{}", e.msg);
        let no_ip = json!({"interfaces": [{"name": "eth0"}], "ips": [{"address": "10.1.1.1/24", "interface": 3}]});
        let e = check_prev_result(&i, prev(no_ip).as_ref()).unwrap_err();
        assert!(e.msg.contains("no IPv4 address"), "{}", e.msg);
        // The parsed request carries netns and the address to the cell.
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":"/x","prevResult":{good}}}"#
        );
        let p = parse(&i, &conf).unwrap().unwrap();
        let Request::CheckAttachment { netns, ip, .. } = p.request else {
            panic!("{:?}", p.request)
        };
        assert_eq!(netns, Some(PathBuf::from("/var/run/netns/x")));
        assert_eq!(ip, Some("10.255.1.2".parse().unwrap()));
    }
}
