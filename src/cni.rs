//! `tapestry-cni`: a CNI 1.1 plugin (ADD, DEL, CHECK, STATUS, GC, VERSION; cniVersion 0.3.0 to
//! 1.1.0) that asks the cell to attach the container. Results and errors follow the CNI
//! specification's JSON. STATUS and GC exist from cniVersion 1.1.0 on.

mod identity;
mod port_mappings;

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::api::{
    self, AttachRequest, Attachment, AttachmentKey, PendingDel, Request, UpRequest,
};

pub const SUPPORTED: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The newest version, answered to VERSION when the input names none we support.
const LATEST: &str = "1.1.0";

/// A CNI error: code (from the spec's table) and message.
#[derive(Debug)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }
}

// Error codes from the CNI specification.
const E_INCOMPATIBLE_VERSION: u32 = 1;
const E_INVALID_ENV: u32 = 4;
const E_IO: u32 = 5;
const E_DECODE: u32 = 6;
const E_INVALID_CONFIG: u32 = 7;
const E_TRY_LATER: u32 = 11;
/// CHECK: the attachment differs from prevResult or from what ADD set up (a plugin-specific
/// code, 100 and up; the cell answers with it too).
const E_CHECK_FAILED: u32 = api::E_CHECK_FAILED;
/// STATUS: "The plugin is not available (i.e. cannot service ADD requests)".
const E_NOT_AVAILABLE: u32 = 50;

#[derive(Debug, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion")]
    pub cni_version: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub cell_socket: Option<PathBuf>,
    #[serde(default)]
    pub metadata: Option<Value>,
    /// Per-container values from the runtime, for the capabilities we declare (`tapestry`,
    /// `ips`, `portMappings`).
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    /// Podman/Kubernetes-style `args`; `args.cni` may carry the identity.
    #[serde(default)]
    pub args: Option<Value>,
    /// The result of the plugins before us in a chain (ADD merges into it, CHECK checks it).
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    /// GC's list of attachments still in use.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Value>,
}

/// The environment of one invocation.
pub struct Invocation {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS`, unparsed (ADD parses it).
    pub args: String,
}

impl Invocation {
    fn from_env() -> Result<Invocation, CniError> {
        Ok(Invocation::from_vars(|k| std::env::var(k).ok()))
    }

    /// The invocation described by these variables (`CNI_COMMAND`, `CNI_CONTAINERID`,
    /// `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`); a missing one is empty, as an unset one in the
    /// environment.
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Invocation {
        let get = |k: &str| get(k).unwrap_or_default();
        Invocation {
            command: get("CNI_COMMAND"),
            container_id: get("CNI_CONTAINERID"),
            netns: get("CNI_NETNS"),
            ifname: get("CNI_IFNAME"),
            args: get("CNI_ARGS"),
        }
    }
}

/// Entry point of the plugin binary: returns the process exit code.
pub fn main() -> i32 {
    let mut stdin = String::new();
    let inv = match Invocation::from_env() {
        Ok(i) => i,
        Err(e) => return emit_error("1.0.0", e),
    };
    if inv.command == "VERSION" {
        // VERSION's input (`{"cniVersion": ...}`) is optional: read it unless a person runs
        // the plugin at a terminal, and never fail on it.
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            let _ = std::io::stdin().read_to_string(&mut stdin);
        }
    } else {
        if let Err(e) = std::io::stdin().read_to_string(&mut stdin) {
            return emit_error(
                "1.0.0",
                CniError::new(
                    E_IO,
                    "reading the network configuration from stdin failed",
                    e.to_string(),
                ),
            );
        }
    }
    let version = serde_json::from_str::<Value>(&stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(String::from)
        })
        .unwrap_or_else(|| "1.0.0".into());
    match execute(&inv, &stdin) {
        Ok(Some(out)) => {
            println!("{out}");
            0
        }
        Ok(None) => 0,
        Err(e) => emit_error(&version, e),
    }
}

fn emit_error(version: &str, e: CniError) -> i32 {
    println!(
        "{}",
        json!({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details})
    );
    1
}

/// Runs one CNI command; `Ok(Some(json))` is printed on stdout.
pub fn execute(inv: &Invocation, stdin: &str) -> Result<Option<Value>, CniError> {
    let Some(parsed) = parse(inv, stdin)? else {
        // VERSION answers in the caller's version when we speak it.
        let asked = serde_json::from_str::<Value>(stdin).ok().and_then(|v| {
            v.get("cniVersion")
                .and_then(|s| s.as_str())
                .map(String::from)
        });
        let version = asked
            .filter(|v| SUPPORTED.contains(&v.as_str()))
            .unwrap_or_else(|| LATEST.into());
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED}),
        ));
    };
    let call = |req: Request| {
        api::call(&parsed.socket, &req).map_err(|e| {
            // CHECK's findings come with the code to answer (3: no such attachment; 100: it
            // differs from what ADD set up) and say what differs.
            if let Some(c) = e.downcast_ref::<api::CodedError>() {
                return CniError::new(
                    c.code,
                    c.msg.clone(),
                    format!("checked by the cell at {}", parsed.socket.display()),
                );
            }
            let msg = format!("{e:#}");
            if msg.contains("connecting to the cell") {
                CniError::new(E_TRY_LATER, "the cell is not reachable", msg)
            } else {
                CniError::new(E_IO, "the cell refused the request", msg)
            }
        })
    };
    match parsed.request {
        Request::Status => {
            let status = call(Request::Status).map_err(|e| {
                CniError::new(
                    E_NOT_AVAILABLE,
                    "the plugin is not available: the cell is not reachable",
                    format!("{}: {}", e.msg, e.details),
                )
            })?;
            check_status(&status)?;
            Ok(None)
        }
        up @ (Request::Up(_) | Request::Attach(_)) => {
            let asked = match &up {
                Request::Attach(a) => a.port_mappings.len(),
                _ => 0,
            };
            let a: Attachment = serde_json::from_value(call(up)?).map_err(|e| {
                CniError::new(E_IO, "malformed answer from the cell", e.to_string())
            })?;
            if a.port_mappings.len() != asked {
                return Err(CniError::new(
                    E_IO,
                    "the cell did not map the requested runtimeConfig.portMappings (is it \
                     older than this plugin?)",
                    format!("asked for {asked}, mapped {}", a.port_mappings.len()),
                ));
            }
            Ok(Some(add_result(
                &parsed.version,
                &a,
                parsed.prev_result.as_ref(),
            )))
        }
        Request::Detach { handle, ifname } => {
            deliver_del(&parsed.socket, call, PendingDel { handle, ifname })
        }
        Request::Down { handle } => deliver_del(
            &parsed.socket,
            call,
            PendingDel {
                handle,
                ifname: String::new(),
            },
        ),
        other => {
            call(other)?;
            Ok(None)
        }
    }
}

/// DEL: sent to the cell; when the cell is down (not when it refuses) the DEL is recorded for
/// the cell to finish when it starts, and succeeds, as the spec wants of a DEL that will be
/// completed. The attachment keeps its address until then.
fn deliver_del(
    socket: &std::path::Path,
    call: impl Fn(Request) -> Result<Value, CniError>,
    del: PendingDel,
) -> Result<Option<Value>, CniError> {
    let request = || {
        if del.ifname.is_empty() {
            Request::Down {
                handle: del.handle.clone(),
            }
        } else {
            Request::Detach {
                handle: del.handle.clone(),
                ifname: del.ifname.clone(),
            }
        }
    };
    match call(request()) {
        Ok(_) => Ok(None),
        Err(e) if e.code == E_TRY_LATER => match api::record_pending_del(socket, &del) {
            Ok(path) => {
                // The cell may have started between the failed call and the recording, after
                // it looked for pending DELs: try once more, so the file never outlives a
                // cell that is up (it would detach a later ADD of the same attachment).
                if call(request()).is_ok() {
                    let _ = std::fs::remove_file(path);
                }
                Ok(None)
            }
            Err(rec) => Err(CniError::new(
                E_TRY_LATER,
                "the cell is not reachable and the DEL could not be recorded for later",
                format!("{}; recording: {rec:#}", e.details),
            )),
        },
        Err(e) => Err(e),
    }
}

/// STATUS: the cell answered; it can serve ADD when it holds a lease and has room.
fn check_status(status: &Value) -> Result<(), CniError> {
    if status["lease"]["overlay_subnet"].as_str().is_none() {
        return Err(CniError::new(
            E_NOT_AVAILABLE,
            "the plugin is not available: the cell has no subnet lease",
            status.to_string(),
        ));
    }
    let attached = status["ports"].as_array().map_or(0, Vec::len) as u64;
    if let Some(max) = status["max_containers"].as_u64() {
        if attached >= max {
            return Err(CniError::new(
                E_NOT_AVAILABLE,
                "the plugin is not available: the cell is full",
                format!("{attached} containers attached, --max-containers is {max}"),
            ));
        }
    }
    Ok(())
}

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

/// CHECK: prevResult must list this attachment's interface (`CNI_IFNAME`, in `CNI_NETNS` when it
/// names a sandbox) and an IPv4 address on it; that address is what the cell then checks.
/// Without prevResult (before 0.4.0 runtimes did not send one) only the cell's checks run.
fn check_prev_result(
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

/// ADD's result: ours alone, or merged into `prev` (the chain's earlier plugins' result) with
/// our interface appended and our address and route pointing at its index.
fn add_result(version: &str, a: &Attachment, prev: Option<&Value>) -> Value {
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

    impl Invocation {
        fn clone_for_test(&self) -> Invocation {
            Invocation {
                command: self.command.clone(),
                container_id: self.container_id.clone(),
                netns: self.netns.clone(),
                ifname: self.ifname.clone(),
                args: self.args.clone(),
            }
        }
    }

    fn inv(cmd: &str) -> Invocation {
        Invocation {
            command: cmd.into(),
            container_id: "c1".into(),
            netns: "/var/run/netns/x".into(),
            ifname: "eth0".into(),
            args: String::new(),
        }
    }

    #[test]
    fn version_lists_supported() {
        let v = execute(&inv("VERSION"), "").unwrap().unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
        let listed: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(listed, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
        // Answered in the caller's version when we speak it.
        let v = execute(&inv("VERSION"), r#"{"cniVersion":"1.0.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], "1.0.0");
        let v = execute(&inv("VERSION"), r#"{"cniVersion":"7.0.0"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(v["cniVersion"], "1.1.0");
    }

    fn conf_v(version: &str, sock: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"net1","type":"tapestry-cni","cell_socket":{sock:?}{extra}}}"#
        )
    }

    fn no_container(cmd: &str) -> Invocation {
        Invocation::from_vars(|k| (k == "CNI_COMMAND").then(|| cmd.to_string()))
    }

    #[test]
    fn version_1_1_is_accepted_and_status_gc_need_it() {
        let p = parse(
            &inv("ADD"),
            &conf_v("1.1.0", "/x", r#","metadata":{"app_id":"A"}"#),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.version, "1.1.0");
        assert!(
            matches!(p.request, Request::Attach(ref a) if a.network.as_deref() == Some("net1"))
        );
        for old in ["0.3.1", "0.4.0", "1.0.0"] {
            for cmd in ["STATUS", "GC"] {
                let e = parse(&no_container(cmd), &conf_v(old, "/x", "")).unwrap_err();
                assert_eq!(e.code, E_INCOMPATIBLE_VERSION, "{cmd} {old}");
                assert_eq!(
                    e.msg,
                    format!("CNI_COMMAND {cmd} is not supported in cniVersion {old}")
                );
            }
        }
        // STATUS and GC need no container id, netns or ifname.
        let p = parse(&no_container("STATUS"), &conf_v("1.1.0", "/x", ""))
            .unwrap()
            .unwrap();
        assert!(matches!(p.request, Request::Status));
        let p = parse(
            &no_container("GC"),
            &conf_v(
                "1.1.0",
                "/x",
                r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"},{"containerID":"c2","ifname":"net1"}]"#,
            ),
        )
        .unwrap()
        .unwrap();
        let Request::Gc { network, valid } = p.request else {
            panic!("GC asks for Gc: {:?}", p.request)
        };
        assert_eq!(network, "net1");
        assert_eq!(
            valid,
            [
                AttachmentKey {
                    container_id: "c1".into(),
                    ifname: "eth0".into()
                },
                AttachmentKey {
                    container_id: "c2".into(),
                    ifname: "net1".into()
                }
            ]
        );
        let p = parse(
            &no_container("GC"),
            &conf_v("1.1.0", "/x", r#","cni.dev/valid-attachments":[]"#),
        )
        .unwrap()
        .unwrap();
        assert!(matches!(p.request, Request::Gc { ref valid, .. } if valid.is_empty()));
        // A missing or malformed list is an error, never "release everything".
        let e = parse(&no_container("GC"), &conf_v("1.1.0", "/x", "")).unwrap_err();
        assert_eq!(e.code, E_INVALID_CONFIG);
        assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
        for bad in [r#"{}"#, r#"[{"containerID":"c1"}]"#, r#"["c1"]"#] {
            let e = parse(
                &no_container("GC"),
                &conf_v(
                    "1.1.0",
                    "/x",
                    &format!(r#","cni.dev/valid-attachments":{bad}"#),
                ),
            )
            .unwrap_err();
            assert_eq!(e.code, E_INVALID_CONFIG, "{bad}");
            assert!(e.msg.contains("cni.dev/valid-attachments"), "{}", e.msg);
        }
        // Config errors still come first.
        let e = parse(
            &no_container("STATUS"),
            r#"{"cniVersion":"1.1.0","name":"n","type":"tapestry-cni"}"#,
        )
        .unwrap_err();
        assert!(e.msg.contains("cell_socket"), "{}", e.msg);
        // STATUS with no cell behind the socket: 50.
        let e = execute(
            &no_container("STATUS"),
            &conf_v("1.1.0", "/nonexistent.sock", ""),
        )
        .unwrap_err();
        assert_eq!(e.code, E_NOT_AVAILABLE);
        // Other commands without a container id still say so.
        let e = parse(&no_container("DEL"), &conf_v("1.1.0", "/x", "")).unwrap_err();
        assert!(e.msg.contains("CNI_CONTAINERID"), "{}", e.msg);
    }

    /// A fake cell answering STATUS with `status` and GC by recording the request.
    struct FakeCell {
        status: Mutex<Value>,
        seen: Mutex<Vec<String>>,
    }
    use std::sync::{Arc, Mutex};
    impl api::Handler for FakeCell {
        fn handle(&self, req: Request) -> anyhow::Result<Value> {
            match req {
                Request::Status => Ok(self.status.lock().unwrap().clone()),
                Request::Gc { network, valid } => {
                    self.seen
                        .lock()
                        .unwrap()
                        .push(format!("gc {network} {}", valid.len()));
                    Ok(json!({"released": []}))
                }
                other => anyhow::bail!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn status_and_gc_ask_the_cell() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cell.sock");
        let cell = Arc::new(FakeCell {
            status: Mutex::new(json!({"lease":{"overlay_subnet":"10.255.1.0/24"},
                "ports":[{"handle":"a"}],"max_containers":2})),
            seen: Mutex::new(vec![]),
        });
        api::serve(&sock, cell.clone()).unwrap();
        let conf = |extra: &str| conf_v("1.1.0", sock.to_str().unwrap(), extra);
        assert!(execute(&no_container("STATUS"), &conf(""))
            .unwrap()
            .is_none());
        *cell.status.lock().unwrap() = json!({"lease":{"overlay_subnet":"10.255.1.0/24"},
            "ports":[{"handle":"a"},{"handle":"b"}],"max_containers":2});
        let e = execute(&no_container("STATUS"), &conf("")).unwrap_err();
        assert_eq!(e.code, E_NOT_AVAILABLE);
        assert!(e.msg.contains("full"), "{}", e.msg);
        *cell.status.lock().unwrap() = json!({"ports":[]});
        let e = execute(&no_container("STATUS"), &conf("")).unwrap_err();
        assert_eq!(e.code, E_NOT_AVAILABLE);
        assert!(e.msg.contains("lease"), "{}", e.msg);
        let gc = conf(r#","cni.dev/valid-attachments":[{"containerID":"c1","ifname":"eth0"}]"#);
        assert!(execute(&no_container("GC"), &gc).unwrap().is_none());
        assert_eq!(*cell.seen.lock().unwrap(), ["gc net1 1"]);
    }

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
    fn lifecycle_metadata_reaches_the_cell() {
        struct Recorder(Mutex<Vec<String>>);
        impl api::Handler for Recorder {
            fn handle(&self, req: Request) -> anyhow::Result<Value> {
                let (up, lc) = match req {
                    Request::Up(up) => (up, "up"),
                    Request::Attach(a) => (a.up, a.lifecycle.as_str()),
                    _ => anyhow::bail!("unexpected"),
                };
                self.0.lock().unwrap().push(format!("{}:{lc}", up.handle));
                Ok(serde_json::to_value(Attachment {
                    handle: up.handle,
                    container_ip: "10.255.1.2".parse().unwrap(),
                    gateway: "169.254.0.1".parse().unwrap(),
                    mac: "ee:ee:0a:ff:01:02".into(),
                    mtu: 1450,
                    ifname: up.ifname,
                    netns: up.netns,
                    dns_servers: vec![],
                    search_domains: vec![],
                    port_mappings: vec![],
                    instance_identity: None,
                })?)
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cell.sock");
        let rec = Arc::new(Recorder(Mutex::new(vec![])));
        api::serve(&sock, rec.clone()).unwrap();
        let conf = |md: &str| {
            format!(
                r#"{{"cniVersion":"1.0.0","name":"n","type":"tapestry-cni","cell_socket":{:?},"metadata":{md}}}"#,
                sock.display().to_string()
            )
        };
        execute(
            &inv("ADD"),
            &conf(r#"{"app_id":"A","lifecycle":"staging"}"#),
        )
        .unwrap();
        execute(
            &inv("ADD"),
            &conf(r#"{"app_id":"A","lifecycle":"running"}"#),
        )
        .unwrap();
        execute(&inv("ADD"), &conf(r#"{"app_id":"A"}"#)).unwrap();
        // CNI always sends `attach`, which carries the network's name.
        assert_eq!(
            *rec.0.lock().unwrap(),
            ["c1:staging", "c1:running", "c1:running"]
        );
        for bad in [r#""build""#, "1", r#""STAGING""#] {
            let e = execute(
                &inv("ADD"),
                &conf(&format!(r#"{{"app_id":"A","lifecycle":{bad}}}"#)),
            )
            .unwrap_err();
            assert_eq!(e.code, E_INVALID_CONFIG);
            assert!(e.msg.contains("metadata.lifecycle"), "{}", e.msg);
        }
        assert_eq!(
            rec.0.lock().unwrap().len(),
            3,
            "a bad lifecycle never reaches the cell"
        );
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

    #[test]
    fn del_with_the_cell_down_is_recorded_and_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cell.sock");
        let conf = conf_v("1.1.0", sock.to_str().unwrap(), "");
        assert!(execute(&inv("DEL"), &conf).unwrap().is_none());
        let mut all = inv("DEL");
        all.ifname = String::new();
        assert!(execute(&all, &conf).unwrap().is_none());
        let mut dels: Vec<PendingDel> = api::pending_dels(&sock)
            .into_iter()
            .map(|(_, d)| d.unwrap())
            .collect();
        dels.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        assert_eq!(
            dels,
            [
                PendingDel {
                    handle: "c1".into(),
                    ifname: String::new()
                },
                PendingDel {
                    handle: "c1".into(),
                    ifname: "eth0".into()
                }
            ]
        );
        // A cell that answers and refuses: the error is the cell's, nothing is recorded.
        let dir2 = tempfile::tempdir().unwrap();
        let sock2 = dir2.path().join("cell.sock");
        let cell = Arc::new(FakeCell {
            status: Mutex::new(Value::Null),
            seen: Mutex::new(vec![]),
        });
        api::serve(&sock2, cell).unwrap();
        let e = execute(&inv("DEL"), &conf_v("1.1.0", sock2.to_str().unwrap(), "")).unwrap_err();
        assert_eq!(e.code, E_IO);
        assert!(api::pending_dels(&sock2).is_empty());
        // With nowhere to record it, the DEL fails with "try again later".
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "").unwrap();
        let sock3 = file.join("cell.sock");
        let e = execute(&inv("DEL"), &conf_v("1.1.0", sock3.to_str().unwrap(), "")).unwrap_err();
        assert_eq!(e.code, E_TRY_LATER);
        assert!(e.msg.contains("could not be recorded"), "{}", e.msg);
    }

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
