//! The cell's local API on `STATE_DIR/cell.sock`: one JSON request per line, one JSON response
//! per line. Used by `tapestry container`, `tapestry-cni`, `tapestry cell status|flow-log` and
//! `tapestry trace`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};
pub use tapestry_switch::Lifecycle;

/// A request to the cell.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Attach a container (idempotent for the same handle), lifecycle `running`.
    Up(UpRequest),
    /// Attach a container with the options `up` does not carry: `{"op":"attach", <the fields
    /// of up>, "lifecycle":"staging"}`. `lifecycle` is optional (default `running`).
    Attach(AttachRequest),
    /// Detach every attachment of a container (idempotent).
    Down { handle: String },
    /// Check that a container is attached and its interfaces are in place.
    Check { handle: String },
    /// Detach one attachment of a container, the one named `ifname` (idempotent; CNI DEL).
    Detach { handle: String, ifname: String },
    /// Check one attachment: known to the cell, its netns and interface in place, and (when
    /// given) in netns `netns` with address `ip`, still configured there (CNI CHECK).
    CheckAttachment {
        handle: String,
        ifname: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<PathBuf>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ip: Option<std::net::Ipv4Addr>,
    },
    /// Everything `tapestry cell status` shows.
    Status,
    /// CNI GC: detach every container attached through CNI network `network` whose
    /// (container id, ifname) is not in `valid`. Answers `{"released": ["handle/ifname", ...]}`.
    Gc {
        network: String,
        valid: Vec<AttachmentKey>,
    },
    /// `tapestry trace`: a synthetic packet through the pipeline, as a dry run.
    Trace { expr: String },
    /// Switch the flow log on or off.
    FlowLog { on: bool },
    /// `tapestry capture`: a live capture of a container's port (`port`, its handle) or of the
    /// underlay. The answer is one response line, then binary records until either side ends
    /// the connection (see `crate::cell::capture::wire`).
    Capture {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port: Option<String>,
        #[serde(default)]
        underlay: bool,
        #[serde(default)]
        filter: String,
    },
}

/// One CNI attachment: `CNI_CONTAINERID` and `CNI_IFNAME` (the spec's `containerID`, `ifname`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentKey {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UpRequest {
    pub handle: String,
    pub app_id: String,
    #[serde(default)]
    pub space_id: String,
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub instance_index: u32,
    pub netns: PathBuf,
    #[serde(default = "default_ifname")]
    pub ifname: String,
}

/// An attach request: `up`'s fields plus the container's lifecycle, which picks the ASGs that
/// apply to it (bound to its space for running or for staging, plus the global ones).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttachRequest {
    #[serde(flatten)]
    pub up: UpRequest,
    #[serde(default)]
    pub lifecycle: Lifecycle,
    /// The CNI network (`name` of the network configuration) the container joins through, so
    /// CNI GC releases only that network's attachments. `None` outside CNI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// A specific address from the cell's subnet (CNI `IP=` / the `ips` capability); it must
    /// be free. `None`: the lowest free one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::Ipv4Addr>,
    /// Net-in: host ports of the cell to forward to the container (CNI `portMappings`,
    /// `container up --net-in`). A `host_port` of 0 asks the cell to pick a free one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// The app's port behind the TLS terminator on 61443 (CF's `app_port`; default 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// 61443 requires a client certificate from the instance identity CA (mTLS; not in CF).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_client_auth: bool,
}

impl AttachRequest {
    /// The request to send: plain `up` for a running container outside CNI (understood by
    /// every cell version), `attach` otherwise.
    pub fn into_request(self) -> Request {
        match (self.lifecycle, &self.network, self.ip) {
            (Lifecycle::Running, None, None)
                if self.port_mappings.is_empty()
                    && self.app_port.is_none()
                    && !self.tls_client_auth =>
            {
                Request::Up(self.up)
            }
            _ => Request::Attach(self),
        }
    }
}

/// Parses `running` or `staging` (the CLI's and CNI's `lifecycle`).
pub fn parse_lifecycle(s: &str) -> Result<Lifecycle, String> {
    Lifecycle::parse(s).ok_or_else(|| format!("lifecycle {s:?} must be \"running\" or \"staging\""))
}

fn default_ifname() -> String {
    "eth0".into()
}

/// The transport a port mapping forwards (`"tcp"`, the default, or `"udp"`).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// One net-in mapping: the cell's `--net-in-address`:`host_port` forwards to the container's
/// address at `container_port`. On the wire it has the shape of CNI's `portMappings` entries
/// (`{"hostPort": H, "containerPort": C, "protocol": "tcp"}`). In a request `host_port` 0 asks
/// the cell for a free port from [`NET_IN_RANGE`]; in a reply and a record it is the real one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default)]
    pub protocol: Protocol,
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

/// The host ports the cell picks from for a mapping with host port 0: from 61000, as Garden's
/// pool, to the last port there is (a range written 61000-65999 ends at 65535).
pub const NET_IN_RANGE: std::ops::RangeInclusive<u16> = 61000..=65535;

/// The container port of the TLS terminator in the cell's local stack: never mapped to an app.
pub const TLS_PORT: u16 = 61443;

/// Parses `--net-in HOST:CONTAINER` or `HOST:CONTAINER/udp` (`/tcp`, the default, may be
/// written too). HOST 0 asks the cell to pick a free port.
pub fn parse_net_in(s: &str) -> Result<PortMapping, String> {
    let (ports, protocol) = match s.rsplit_once('/') {
        None => (s, Protocol::Tcp),
        Some((p, "tcp")) => (p, Protocol::Tcp),
        Some((p, "udp")) => (p, Protocol::Udp),
        Some((_, other)) => {
            return Err(format!(
                "{s:?}: protocol {other:?} must be tcp or udp (HOST:CONTAINER[/udp])"
            ))
        }
    };
    let Some((host, container)) = ports.split_once(':') else {
        return Err(format!(
            "{s:?} is not HOST:CONTAINER[/udp] (e.g. 0:8080 or 61001:8080/udp)"
        ));
    };
    let port = |p: &str, which: &str, min: u16| {
        p.parse::<u16>()
            .ok()
            .filter(|n| *n >= min)
            .ok_or_else(|| format!("{s:?}: {which} port {p:?} is out of range ({min}-65535)"))
    };
    let m = PortMapping {
        host_port: port(host, "host", 0)?,
        container_port: port(container, "container", 1)?,
        protocol,
    };
    check_port_mappings(std::slice::from_ref(&m))?;
    Ok(m)
}

/// What every mapping list must satisfy, wherever it comes from: container ports in 1-65535
/// and never [`TLS_PORT`], and no host port asked for twice (per protocol). Host port 0 (pick
/// one) may appear any number of times.
pub fn check_port_mappings(mappings: &[PortMapping]) -> Result<(), String> {
    let mut seen = std::collections::BTreeSet::new();
    for m in mappings {
        if m.container_port == 0 {
            return Err(format!(
                "mapping {m}: container port 0 is out of range (1-65535)"
            ));
        }
        if m.container_port == TLS_PORT {
            return Err(format!(
                "mapping {m}: container port {TLS_PORT} is reserved for the cell's TLS \
                 terminator and cannot be mapped"
            ));
        }
        if m.host_port != 0 && !seen.insert((m.protocol, m.host_port)) {
            return Err(format!(
                "host port {}/{} is mapped twice in one request",
                m.host_port,
                m.protocol.as_str()
            ));
        }
    }
    Ok(())
}

/// What an attached container gets.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Attachment {
    pub handle: String,
    pub container_ip: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
    pub mac: String,
    pub mtu: u32,
    pub ifname: String,
    pub netns: PathBuf,
    pub dns_servers: Vec<String>,
    pub search_domains: Vec<String>,
    /// The attachment's net-in mappings, with the host ports the cell picked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<PortMapping>,
    /// Where the container's instance identity credentials are (`instance_cert`,
    /// `instance_key`, `instance_ca`, and `instance_identity_pending` until they exist).
    #[serde(default, flatten, skip_serializing_if = "Option::is_none")]
    pub instance_identity: Option<super::identity::IdentityPaths>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// With `error`: the CNI error code the cell picked (CNI CHECK's failures), for the plugin
    /// to answer with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// CNI's "container unknown or does not exist": CHECK of an attachment the cell does not have.
pub const E_UNKNOWN_CONTAINER: u32 = 3;
/// CHECK: the attachment differs from what ADD set up (a plugin-specific code; the CNI
/// specification leaves 100 and up to plugins).
pub const E_CHECK_FAILED: u32 = 100;

/// An error that carries a CNI error code across the socket: the cell returns it, [`call`]
/// gives it back (`anyhow::Error::downcast_ref`), and the plugin answers with its code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodedError {
    pub code: u32,
    pub msg: String,
}

impl std::fmt::Display for CodedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for CodedError {}

/// What serves requests (the running cell).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Result<serde_json::Value>;

    /// Starts a capture ([`Request::Capture`]): what to answer, and the capture's queue, which
    /// the connection then streams until the client goes away.
    fn open_capture(&self, _req: Request) -> Result<(serde_json::Value, super::tap::Registration)> {
        Err(anyhow!("this server does not capture"))
    }
}

/// Serves the socket until the process ends, to root and the cell's user only (mode 0600).
/// Removes a stale socket file first.
pub fn serve(path: &Path, handler: Arc<dyn Handler>) -> Result<()> {
    serve_with(path, handler, super::access::Access::default())
}

/// Serves the socket until the process ends, to root, the cell's user and whoever `access`
/// admits: the socket file gets `access`'s mode, and every connection's peer credentials
/// (SO_PEERCRED) are checked; a refused peer gets an error line naming why, then the socket
/// closes.
pub fn serve_with(
    path: &Path,
    handler: Arc<dyn Handler>,
    access: super::access::Access,
) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Whoever can connect can attach any app's container or detach others. (The state dir
    // around it is 0700, or 0710 with the group, so there is no window with the umask's mode.)
    access.apply(path)?;
    let owner = std::fs::metadata(path)
        .with_context(|| format!("reading {}", path.display()))?
        .uid();
    std::thread::Builder::new()
        .name("cell-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                let allowed = tapestry_sys::process::peer_cred(&conn)
                    .map_err(anyhow::Error::from)
                    .and_then(|peer| {
                        access.allows(peer, owner, || {
                            tapestry_sys::process::process_groups(peer.pid).unwrap_or_default()
                        })
                    });
                if let Err(e) = allowed {
                    tracing::warn!("cell.sock: {e:#}");
                    let resp = Response {
                        ok: false,
                        error: Some(format!("{e:#}")),
                        code: None,
                        result: None,
                    };
                    let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                    out.push(b'\n');
                    let _ = conn.write_all(&out);
                    continue;
                }
                let handler = handler.clone();
                let _ = std::thread::Builder::new()
                    .name("cell-api-conn".into())
                    .spawn(move || serve_conn(conn, handler));
            }
        })?;
    Ok(())
}

fn serve_conn(conn: UnixStream, handler: Arc<dyn Handler>) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let reader = BufReader::new(conn);
    for line in reader.lines() {
        let Ok(line) = line else { return };
        if line.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&line) {
            Ok(req @ Request::Capture { .. }) => match handler.open_capture(req) {
                Ok((v, reg)) => {
                    let ok = Response {
                        ok: true,
                        error: None,
                        code: None,
                        result: Some(v),
                    };
                    let mut out = serde_json::to_vec(&ok).unwrap_or_default();
                    out.push(b'\n');
                    if writer.write_all(&out).is_ok() {
                        super::capture::stream(reg, writer);
                    }
                    return;
                }
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    code: None,
                    result: None,
                },
            },
            Ok(req) => match handler.handle(req) {
                Ok(v) => Response {
                    ok: true,
                    error: None,
                    code: None,
                    result: Some(v),
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    code: e.downcast_ref::<CodedError>().map(|c| c.code),
                    result: None,
                },
            },
            Err(e) => Response {
                ok: false,
                error: Some(format!("invalid request: {e}")),
                code: None,
                result: None,
            },
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_default();
        out.push(b'\n');
        if writer.write_all(&out).is_err() {
            return;
        }
    }
}

/// A CNI DEL the plugin could not deliver because the cell was down: one JSON file in
/// [`pending_del_dir`], which the cell works through when it starts, before it serves.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDel {
    pub handle: String,
    /// Empty: every attachment of `handle`.
    #[serde(default)]
    pub ifname: String,
}

/// The directory of pending DELs: `pending-del/` beside the cell's socket (in its state dir).
pub fn pending_del_dir(socket: &Path) -> PathBuf {
    socket
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("pending-del")
}

/// Records a DEL for the cell to finish when it returns: written whole (temp file, rename),
/// mode 0600 in a 0700 directory; recording the same DEL twice keeps one file.
pub fn record_pending_del(socket: &Path, del: &PendingDel) -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let dir = pending_del_dir(socket);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    // Hex of handle and ifname: any container id makes a safe, unique file name.
    let hex = |s: &str| s.bytes().map(|b| format!("{b:02x}")).collect::<String>();
    let name = format!("{}-{}.json", hex(&del.handle), hex(&del.ifname));
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(&serde_json::to_vec(del)?)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(path)
}

/// The pending DELs beside `socket` and their files (unreadable files are reported as errors).
pub fn pending_dels(socket: &Path) -> Vec<(PathBuf, Result<PendingDel>)> {
    let Ok(entries) = std::fs::read_dir(pending_del_dir(socket)) else {
        return vec![];
    };
    let mut out: Vec<(PathBuf, Result<PendingDel>)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let del = std::fs::read(&p)
                .with_context(|| format!("reading {}", p.display()))
                .and_then(|b| {
                    serde_json::from_slice(&b).with_context(|| format!("parsing {}", p.display()))
                });
            (p, del)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Sends one request to the cell at `socket` and returns its result, or the cell's error.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    call_keep(socket, req).map(|(v, _)| v)
}

/// As [`call`], and returns the connection too, positioned after the response line (for a
/// streaming request), with no read timeout.
pub fn call_keep(
    socket: &Path,
    req: &Request,
) -> Result<(serde_json::Value, BufReader<UnixStream>)> {
    let mut conn = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the cell at {} (is `tapestry cell` running?)",
            socket.display()
        )
    })?;
    conn.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    conn.write_all(&line)?;
    let mut reader = BufReader::new(conn);
    let mut resp = String::new();
    reader
        .read_line(&mut resp)
        .context("reading the cell's response")?;
    let resp: Response = serde_json::from_str(&resp)
        .with_context(|| format!("malformed response from the cell: {resp:?}"))?;
    if resp.ok {
        reader.get_ref().set_read_timeout(None)?;
        return Ok((resp.result.unwrap_or(serde_json::Value::Null), reader));
    }
    let msg = resp.error.unwrap_or_else(|| "unknown error".into());
    match resp.code {
        Some(code) => Err(CodedError { code, msg }.into()),
        None => Err(anyhow!(msg)),
    }
}

#[cfg(test)]
mod tests;
