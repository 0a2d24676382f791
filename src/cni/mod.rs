//! `tapestry-cni`: a CNI 1.1 plugin (ADD, DEL, CHECK, STATUS, GC, VERSION; cniVersion 0.3.0 to
//! 1.1.0) that asks the cell to attach the container. Results and errors follow the CNI
//! specification's JSON. STATUS and GC exist from cniVersion 1.1.0 on.
//!
//! Here: the entry point, running one command against the cell, DEL with the cell down, STATUS.
//! [`parse`] reads the configuration and environment into the cell's request (with
//! `identity` for who the container is and `port_mappings`), `check` holds CHECK's own
//! prevResult checks, `result` builds ADD's result.

mod check;
mod identity;
mod parse;
mod port_mappings;
mod result;

pub use parse::{parse, Parsed};
use result::add_result;

use std::io::Read;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::api::{self, Attachment, PendingDel, Request};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::api::AttachmentKey;

    impl Invocation {
        pub(super) fn clone_for_test(&self) -> Invocation {
            Invocation {
                command: self.command.clone(),
                container_id: self.container_id.clone(),
                netns: self.netns.clone(),
                ifname: self.ifname.clone(),
                args: self.args.clone(),
            }
        }
    }

    pub(super) fn inv(cmd: &str) -> Invocation {
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

    pub(super) fn conf_v(version: &str, sock: &str, extra: &str) -> String {
        format!(
            r#"{{"cniVersion":"{version}","name":"net1","type":"tapestry-cni","cell_socket":{sock:?}{extra}}}"#
        )
    }

    pub(super) fn no_container(cmd: &str) -> Invocation {
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
}
