//! The cell's local API on `STATE_DIR/cell.sock`: one JSON request per line, one JSON response
//! per line. Used by `tapestry container`, `tapestry-cni` and `tapestry cell status`.

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
}

impl AttachRequest {
    /// The request to send: plain `up` for a running container outside CNI (understood by
    /// every cell version), `attach` otherwise.
    pub fn into_request(self) -> Request {
        match (self.lifecycle, &self.network, self.ip) {
            (Lifecycle::Running, None, None) => Request::Up(self.up),
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
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
}

/// What serves requests (the running cell).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> Result<serde_json::Value>;
}

/// Serves the socket until the process ends. Removes a stale socket file first.
pub fn serve(path: &Path, handler: Arc<dyn Handler>) -> Result<()> {
    if path.exists() {
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    // Whoever can connect can attach any app's container or detach others: owner only. (The
    // state dir around it is 0700 as well, so there is no window with the umask's mode.)
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting mode 0600 on {}", path.display()))?;
    }
    std::thread::Builder::new()
        .name("cell-api".into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
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
            Ok(req) => match handler.handle(req) {
                Ok(v) => Response {
                    ok: true,
                    error: None,
                    result: Some(v),
                },
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("{e:#}")),
                    result: None,
                },
            },
            Err(e) => Response {
                ok: false,
                error: Some(format!("invalid request: {e}")),
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
        Ok(resp.result.unwrap_or(serde_json::Value::Null))
    } else {
        Err(anyhow!(resp
            .error
            .unwrap_or_else(|| "unknown error".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_dels_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("cell.sock");
        assert!(pending_dels(&sock).is_empty());
        let a = PendingDel {
            handle: "c/1 weird".into(),
            ifname: "eth0".into(),
        };
        let b = PendingDel {
            handle: "c2".into(),
            ifname: String::new(),
        };
        let pa = record_pending_del(&sock, &a).unwrap();
        assert_eq!(
            record_pending_del(&sock, &a).unwrap(),
            pa,
            "same DEL, same file"
        );
        record_pending_del(&sock, &b).unwrap();
        std::fs::write(pending_del_dir(&sock).join("junk.json"), "{").unwrap();
        let got = pending_dels(&sock);
        assert_eq!(got.len(), 3);
        let dels: Vec<PendingDel> = got
            .iter()
            .filter_map(|(_, d)| d.as_ref().ok().cloned())
            .collect();
        assert!(dels.contains(&a) && dels.contains(&b));
        assert!(got
            .iter()
            .any(|(p, d)| d.is_err() && p.ends_with("junk.json")));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&pa).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(pending_del_dir(&sock))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn attach_carries_an_optional_lifecycle() {
        let line =
            r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n","lifecycle":"staging"}"#;
        let Request::Attach(a) = serde_json::from_str(line).unwrap() else {
            panic!("not an attach")
        };
        assert_eq!(a.lifecycle, Lifecycle::Staging);
        assert_eq!((a.up.handle.as_str(), a.up.ifname.as_str()), ("h", "eth0"));
        let line = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n"}"#;
        let Request::Attach(a) = serde_json::from_str(line).unwrap() else {
            panic!("not an attach")
        };
        assert_eq!(a.lifecycle, Lifecycle::Running);
        let bad = r#"{"op":"attach","handle":"h","app_id":"A","netns":"/n","lifecycle":"build"}"#;
        let e = serde_json::from_str::<Request>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("build") && e.contains("staging"), "{e}");
        // Round trip, and running goes out as a plain `up`.
        let json = serde_json::to_string(&Request::Attach(a.clone())).unwrap();
        assert!(json.contains(r#""op":"attach""#) && json.contains(r#""lifecycle":"running""#));
        assert!(matches!(a.clone().into_request(), Request::Up(_)));
        let staging = AttachRequest {
            lifecycle: Lifecycle::Staging,
            ..a
        };
        assert!(matches!(staging.into_request(), Request::Attach(_)));
        assert_eq!(parse_lifecycle("staging"), Ok(Lifecycle::Staging));
        assert!(parse_lifecycle("Staging")
            .unwrap_err()
            .contains("\"running\" or \"staging\""));
    }
}
