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
mod tests;
