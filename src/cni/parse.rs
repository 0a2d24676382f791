//! Reading one invocation: the network configuration on stdin and the `CNI_*` environment,
//! checked and turned into the request for the cell ([`parse`]), with ADD's identity, requested
//! address and port mappings, and GC's list of attachments still in use.

use std::path::PathBuf;

use serde_json::Value;

use super::check::check_prev_result;
use super::{
    identity, port_mappings, CniError, Invocation, NetConf, E_DECODE, E_INCOMPATIBLE_VERSION,
    E_INVALID_CONFIG, E_INVALID_ENV, SUPPORTED,
};
use crate::cell::api::{AttachRequest, AttachmentKey, Request, UpRequest};

/// `cni.dev/valid-attachments`: an array of `{"containerID": ..., "ifname": ...}`.
fn valid_attachments(conf: &NetConf) -> Result<Vec<AttachmentKey>, CniError> {
    let v = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            E_INVALID_CONFIG,
            "network configuration field cni.dev/valid-attachments is missing (GC needs it)",
            "",
        )
    })?;
    serde_json::from_value(v).map_err(|e| {
        CniError::new(
            E_INVALID_CONFIG,
            "network configuration field cni.dev/valid-attachments must be an array of \
             {\"containerID\": string, \"ifname\": string}",
            e.to_string(),
        )
    })
}

/// One checked invocation: what to ask the cell, on which socket, answering in `version`.
#[derive(Debug)]
pub struct Parsed {
    pub version: String,
    pub socket: PathBuf,
    /// `Attach` (ADD), `Detach` (DEL; `Down` without CNI_IFNAME), `CheckAttachment` (CHECK),
    /// `Status` or `Gc`.
    pub request: Request,
    /// ADD's `prevResult`, merged into our result.
    pub prev_result: Option<Value>,
}

/// Checks the network configuration (stdin) and the environment of one invocation exactly as
/// [`execute`] does before it talks to the cell. `Ok(None)` for VERSION, which needs neither.
pub fn parse(inv: &Invocation, stdin: &str) -> Result<Option<Parsed>, CniError> {
    if inv.command == "VERSION" {
        return Ok(None);
    }
    let conf: NetConf = serde_json::from_str(stdin).map_err(|e| {
        CniError::new(
            E_DECODE,
            "the network configuration is not valid JSON",
            e.to_string(),
        )
    })?;
    let version = conf.cni_version.clone().ok_or_else(|| {
        CniError::new(
            E_INVALID_CONFIG,
            "network configuration field cniVersion is missing",
            "",
        )
    })?;
    if !SUPPORTED.contains(&version.as_str()) {
        return Err(CniError::new(
            E_INCOMPATIBLE_VERSION,
            format!("cniVersion {version} is not supported"),
            format!("supported versions: {}", SUPPORTED.join(", ")),
        ));
    }
    if conf.name.as_deref().unwrap_or("").is_empty() {
        return Err(CniError::new(
            E_INVALID_CONFIG,
            "network configuration field name is missing",
            "",
        ));
    }
    if conf.kind.as_deref() != Some("tapestry-cni") {
        return Err(CniError::new(
            E_INVALID_CONFIG,
            format!(
                "network configuration field type is {:?}, expected \"tapestry-cni\"",
                conf.kind.clone().unwrap_or_default()
            ),
            "",
        ));
    }
    let socket = conf.cell_socket.clone().ok_or_else(|| {
        CniError::new(
            E_INVALID_CONFIG,
            "network configuration field cell_socket is missing",
            "",
        )
    })?;
    if matches!(inv.command.as_str(), "STATUS" | "GC") {
        if !at_least_1_1(&version) {
            return Err(CniError::new(
                E_INCOMPATIBLE_VERSION,
                format!(
                    "CNI_COMMAND {} is not supported in cniVersion {version}",
                    inv.command
                ),
                "STATUS and GC exist from cniVersion 1.1.0 on",
            ));
        }
        let request = if inv.command == "STATUS" {
            Request::Status
        } else {
            Request::Gc {
                network: conf.name.clone().unwrap_or_default(),
                valid: valid_attachments(&conf)?,
            }
        };
        return Ok(Some(Parsed {
            version,
            socket,
            request,
            prev_result: None,
        }));
    }
    if inv.container_id.is_empty() {
        return Err(CniError::new(
            E_INVALID_ENV,
            "CNI_CONTAINERID is not set",
            "",
        ));
    }
    let request = match inv.command.as_str() {
        "ADD" => attach_request(inv, &conf)?.into_request(),
        // DEL removes exactly the named attachment; without CNI_IFNAME (which the spec
        // requires) every attachment of the container, so a runtime's cleanup never leaks.
        "DEL" if inv.ifname.is_empty() => Request::Down {
            handle: inv.container_id.clone(),
        },
        "DEL" => Request::Detach {
            handle: inv.container_id.clone(),
            ifname: inv.ifname.clone(),
        },
        "CHECK" if inv.ifname.is_empty() => {
            return Err(CniError::new(E_INVALID_ENV, "CNI_IFNAME is not set", ""))
        }
        "CHECK" => {
            let ip = check_prev_result(inv, conf.prev_result.as_ref())?;
            Request::CheckAttachment {
                handle: inv.container_id.clone(),
                ifname: inv.ifname.clone(),
                netns: (!inv.netns.is_empty()).then(|| PathBuf::from(&inv.netns)),
                ip,
            }
        }
        "" => return Err(CniError::new(E_INVALID_ENV, "CNI_COMMAND is not set", "")),
        other => {
            return Err(CniError::new(
                E_INVALID_ENV,
                format!(
                    "CNI_COMMAND {other:?} is not supported (ADD, DEL, CHECK, STATUS, GC, VERSION)"
                ),
                "",
            ))
        }
    };
    Ok(Some(Parsed {
        version,
        socket,
        request,
        prev_result: conf.prev_result.clone(),
    }))
}

/// 1.1.0 or later (the versions we accept are all listed in [`SUPPORTED`]).
fn at_least_1_1(version: &str) -> bool {
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.as_slice() >= [1, 1].as_slice()
}

/// ADD's request: the environment's netns and ifname, the identity from its four sources (see
/// [`identity`]), the network's name.
fn attach_request(inv: &Invocation, conf: &NetConf) -> Result<AttachRequest, CniError> {
    if inv.netns.is_empty() {
        return Err(CniError::new(E_INVALID_ENV, "CNI_NETNS is not set", ""));
    }
    if inv.ifname.is_empty() {
        return Err(CniError::new(E_INVALID_ENV, "CNI_IFNAME is not set", ""));
    }
    let cni_args = identity::parse_cni_args(&inv.args)?;
    let id = identity::identity(
        conf.runtime_config.as_ref(),
        &cni_args,
        conf.args.as_ref(),
        conf.metadata.as_ref(),
    )?;
    Ok(AttachRequest {
        up: UpRequest {
            handle: inv.container_id.clone(),
            app_id: id.app_id,
            space_id: id.space_id,
            org_id: id.org_id,
            instance_index: id.instance_index,
            netns: PathBuf::from(&inv.netns),
            ifname: inv.ifname.clone(),
        },
        lifecycle: id.lifecycle,
        network: conf.name.clone(),
        ip: requested_ip(conf, &cni_args)?,
        port_mappings: port_mappings::port_mappings(conf.runtime_config.as_ref())?,
        app_port: id.app_port,
        tls_client_auth: id.tls_client_auth,
    })
}

/// The address the runtime asks for: `runtimeConfig.ips` (the `ips` capability, Podman's
/// `--ip`), else `IP=` in `CNI_ARGS`; with or without a prefix length. IPv4 only, one address.
fn requested_ip(
    conf: &NetConf,
    cni_args: &[(String, String)],
) -> Result<Option<std::net::Ipv4Addr>, CniError> {
    let parse = |s: &str, field: &str, code: u32| {
        let addr = s.split_once('/').map_or(s, |(a, _)| a);
        addr.parse::<std::net::Ipv4Addr>().map_err(|_| {
            CniError::new(
                code,
                format!("{field} {s:?} is not an IPv4 address (Tapestry's overlay is IPv4 only)"),
                "",
            )
        })
    };
    if let Some(ips) = conf.runtime_config.as_ref().and_then(|r| r.get("ips")) {
        let field = "network configuration field runtimeConfig.ips";
        let list = ips.as_array().ok_or_else(|| {
            CniError::new(
                E_INVALID_CONFIG,
                format!("{field} must be an array of addresses"),
                ips.to_string(),
            )
        })?;
        match list.as_slice() {
            [] => {}
            [one] => {
                let s = one.as_str().ok_or_else(|| {
                    CniError::new(
                        E_INVALID_CONFIG,
                        format!("{field} must hold strings"),
                        ips.to_string(),
                    )
                })?;
                return parse(s, field, E_INVALID_CONFIG).map(Some);
            }
            _ => {
                return Err(CniError::new(
                    E_INVALID_CONFIG,
                    format!("{field} has several addresses; a Tapestry attachment has one"),
                    ips.to_string(),
                ))
            }
        }
    }
    match cni_args.iter().rev().find(|(k, _)| k == "IP") {
        Some((_, v)) => parse(v, "CNI_ARGS IP", E_INVALID_ENV).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cni::tests::inv;
    use crate::cni::{execute, E_TRY_LATER};

    #[test]
    fn bad_configs_name_the_field() {
        let e = execute(&inv("ADD"), "{not json").unwrap_err();
        assert_eq!(e.code, E_DECODE);
        let e = execute(
            &inv("ADD"),
            r#"{"name":"n","type":"tapestry-cni","cell_socket":"/x"}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("cniVersion"), "{}", e.msg);
        let e = execute(
            &inv("ADD"),
            r#"{"cniVersion":"9.9.9","name":"n","type":"tapestry-cni","cell_socket":"/x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, E_INCOMPATIBLE_VERSION);
        let e = execute(
            &inv("ADD"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"bridge","cell_socket":"/x"}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("type"), "{}", e.msg);
        let e = execute(
            &inv("ADD"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni"}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("cell_socket"), "{}", e.msg);
        let e = execute(&inv("ADD"), r#"{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":"/nonexistent.sock","metadata":{}}"#).unwrap_err();
        assert!(e.msg.contains("policy_group_id"), "{}", e.msg);
        let e = execute(&inv("ADD"), r#"{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":"/nonexistent.sock","metadata":{"policy_group_id":"A","instance_index":-1}}"#).unwrap_err();
        assert!(e.msg.contains("instance_index"), "{}", e.msg);
        let e = execute(&inv("ADD"), r#"{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":"/nonexistent.sock","metadata":{"policy_group_id":"A"}}"#).unwrap_err();
        assert_eq!(e.code, E_TRY_LATER);
        let e = execute(
            &inv("FROB"),
            r#"{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":"/x"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, E_INVALID_ENV);
    }

    #[test]
    fn parse_builds_the_request_from_config_and_env() {
        let conf = r#"{"cniVersion":"0.3.1","name":"n","type":"tapestry-cni","cell_socket":"/run/c.sock",
            "metadata":{"app_id":"A","space_id":"S","instance_index":"3"}}"#;
        let vars = |cmd: &'static str| {
            move |k: &str| match k {
                "CNI_COMMAND" => Some(cmd.to_string()),
                "CNI_CONTAINERID" => Some("c9".to_string()),
                "CNI_NETNS" => Some("/var/run/netns/c9".to_string()),
                _ => None,
            }
        };
        let inv = Invocation::from_vars(vars("ADD"));
        assert_eq!(inv.ifname, "", "an unset variable is empty");
        let e = parse(&inv, conf).unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        let inv = Invocation {
            ifname: "eth0".into(),
            ..inv
        };
        let p = parse(&inv, conf).unwrap().unwrap();
        assert_eq!(p.version, "0.3.1");
        assert_eq!(p.socket, PathBuf::from("/run/c.sock"));
        let Request::Attach(AttachRequest { up, network, .. }) = p.request else {
            panic!("ADD asks for Attach: {:?}", p.request)
        };
        assert_eq!(network.as_deref(), Some("n"));
        assert_eq!(
            (up.handle.as_str(), up.app_id.as_str(), up.space_id.as_str()),
            ("c9", "A", "S")
        );
        assert_eq!(up.instance_index, 3);
        assert_eq!(up.netns, PathBuf::from("/var/run/netns/c9"));
        let p = parse(&Invocation::from_vars(vars("DEL")), conf)
            .unwrap()
            .unwrap();
        assert!(matches!(p.request, Request::Down { handle } if handle == "c9"));
        let with_if = |cmd: &'static str| {
            let v = vars(cmd);
            Invocation::from_vars(move |k| {
                if k == "CNI_IFNAME" {
                    Some("net1".into())
                } else {
                    v(k)
                }
            })
        };
        let p = parse(&with_if("DEL"), conf).unwrap().unwrap();
        assert!(
            matches!(p.request, Request::Detach { ref handle, ref ifname } if handle == "c9" && ifname == "net1")
        );
        let p = parse(&with_if("CHECK"), conf).unwrap().unwrap();
        assert!(
            matches!(p.request, Request::CheckAttachment { ref handle, ref ifname, .. } if handle == "c9" && ifname == "net1")
        );
        let e = parse(&Invocation::from_vars(vars("CHECK")), conf).unwrap_err();
        assert!(e.msg.contains("CNI_IFNAME"), "{}", e.msg);
        assert!(parse(&Invocation::from_vars(vars("VERSION")), "")
            .unwrap()
            .is_none());
    }

    #[test]
    fn cni_args_and_runtime_config_reach_the_request_on_add_only() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"tapestry-cni","cell_socket":"/x",
            "capabilities":{"tapestry":true},
            "runtimeConfig":{"tapestry":{"instance_index":4}},
            "metadata":{"app_id":"net-app","space_id":"S"}}"#;
        let vars = |cmd: &'static str, args: &'static str| {
            move |k: &str| match k {
                "CNI_COMMAND" => Some(cmd.to_string()),
                "CNI_CONTAINERID" => Some("c9".to_string()),
                "CNI_NETNS" => Some("/var/run/netns/c9".to_string()),
                "CNI_IFNAME" => Some("eth0".to_string()),
                "CNI_ARGS" => Some(args.to_string()),
                _ => None,
            }
        };
        let inv = Invocation::from_vars(vars("ADD", "IgnoreUnknown=1;APP_ID=env-app;X=y"));
        assert_eq!(inv.args, "IgnoreUnknown=1;APP_ID=env-app;X=y");
        let p = parse(&inv, conf).unwrap().unwrap();
        let Request::Attach(a) = p.request else {
            panic!("{:?}", p.request)
        };
        assert_eq!(
            (
                a.up.app_id.as_str(),
                a.up.space_id.as_str(),
                a.up.instance_index
            ),
            ("env-app", "S", 4)
        );
        assert!(a.port_mappings.is_empty());
        // The portMappings capability: runtimeConfig.portMappings reaches the request.
        let with_ports = conf.replace(
            r#""runtimeConfig":{"#,
            r#""runtimeConfig":{"portMappings":[{"hostPort":0,"containerPort":8080},
                {"hostPort":5353,"containerPort":53,"protocol":"udp"}],"#,
        );
        let p = parse(&Invocation::from_vars(vars("ADD", "")), &with_ports)
            .unwrap()
            .unwrap();
        let Request::Attach(a) = p.request else {
            panic!("{:?}", p.request)
        };
        assert_eq!(
            a.port_mappings
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["0:8080/tcp", "5353:53/udp"]
        );
        let bad = with_ports.replace("5353", "70000");
        let e = parse(&Invocation::from_vars(vars("ADD", "")), &bad).unwrap_err();
        assert_eq!(e.code, E_INVALID_CONFIG);
        assert!(e.msg.contains("portMappings[1].hostPort"), "{}", e.msg);
        let e = parse(&Invocation::from_vars(vars("ADD", "APP_ID=a;X=y")), conf).unwrap_err();
        assert_eq!(e.code, E_INVALID_ENV);
        assert!(e.msg.contains("CNI_ARGS key X"), "{}", e.msg);
        // DEL and CHECK do not read CNI_ARGS: a stale or odd one never blocks a DEL.
        for cmd in ["DEL", "CHECK"] {
            assert!(parse(&Invocation::from_vars(vars(cmd, "X=y;junk")), conf).is_ok());
        }
    }

    #[test]
    fn requested_ip_from_runtime_config_or_cni_args() {
        let ip = |rc: &str, args: &str| {
            let conf = format!(
                r#"{{"cniVersion":"1.1.0","name":"n","type":"tapestry-cni","cell_socket":"/x",
                "metadata":{{"app_id":"A"}}{rc}}}"#
            );
            let mut i = inv("ADD");
            i.args = args.into();
            parse(&i, &conf).map(|p| match p.unwrap().request {
                Request::Attach(a) => a.ip,
                other => panic!("{other:?}"),
            })
        };
        assert_eq!(ip("", "").unwrap(), None);
        assert_eq!(
            ip("", "IP=10.255.1.9").unwrap(),
            Some("10.255.1.9".parse().unwrap())
        );
        assert_eq!(
            ip("", "IP=10.255.1.9/24").unwrap(),
            Some("10.255.1.9".parse().unwrap())
        );
        assert_eq!(
            ip(
                r#","runtimeConfig":{"ips":["10.255.1.7/24"]}"#,
                "IP=10.255.1.9"
            )
            .unwrap(),
            Some("10.255.1.7".parse().unwrap()),
            "runtimeConfig wins"
        );
        assert_eq!(
            ip(r#","runtimeConfig":{"ips":[]}"#, "IP=10.255.1.9").unwrap(),
            Some("10.255.1.9".parse().unwrap())
        );
        let e = ip("", "IP=fd00::1").unwrap_err();
        assert_eq!(e.code, E_INVALID_ENV);
        assert!(
            e.msg.contains("CNI_ARGS IP") && e.msg.contains("IPv4"),
            "{}",
            e.msg
        );
        let e = ip("", "IP=banana").unwrap_err();
        assert!(e.msg.contains("CNI_ARGS IP"), "{}", e.msg);
        for bad in [
            r#","runtimeConfig":{"ips":"10.255.1.7"}"#,
            r#","runtimeConfig":{"ips":[7]}"#,
            r#","runtimeConfig":{"ips":["10.255.1.7","10.255.1.8"]}"#,
            r#","runtimeConfig":{"ips":["x"]}"#,
        ] {
            let e = ip(bad, "").unwrap_err();
            assert_eq!(e.code, E_INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains("runtimeConfig.ips"), "{}", e.msg);
        }
    }

    /// Every `.conflist` in the README, fed to the plugin the way libcni does (the list's
    /// cniVersion and name put into each plugin's configuration), is a valid ADD: from Podman
    /// with its CNI_ARGS, from nerdctl with none.
    #[test]
    fn the_readme_conflists_are_accepted() {
        let readme = include_str!("../../README.md");
        let mut seen = 0;
        for block in readme.split("```json\n").skip(1) {
            let block = &block[..block.find("```").unwrap()];
            if !block.contains("\"plugins\"") {
                continue;
            }
            let list: Value =
                serde_json::from_str(block).unwrap_or_else(|e| panic!("{e}: {block}"));
            let mut plugin = list["plugins"][0].clone();
            assert_eq!(plugin["type"], "tapestry-cni", "{block}");
            plugin["cniVersion"] = list["cniVersion"].clone();
            plugin["name"] = list["name"].clone();
            let mut i = inv("ADD");
            i.args = "IgnoreUnknown=1;K8S_POD_NAME=a;APP_ID=app-a".into();
            for args in [i.args.clone(), String::new()] {
                i.args = args;
                let p = parse(&i, &plugin.to_string());
                let has_app = plugin["metadata"]["app_id"].is_string();
                if i.args.is_empty() && !has_app {
                    assert!(p.is_err(), "no app id anywhere: {block}");
                    continue;
                }
                let p = p.unwrap_or_else(|e| panic!("{}: {block}", e.msg)).unwrap();
                let Request::Attach(a) = p.request else {
                    panic!("{:?}", p.request)
                };
                assert_eq!(
                    (a.up.app_id.as_str(), a.up.space_id.as_str()),
                    ("app-a", "space-1")
                );
            }
            seen += 1;
        }
        assert_eq!(
            seen, 2,
            "the README has a Podman and a containerd/nerdctl conflist"
        );
    }
}
