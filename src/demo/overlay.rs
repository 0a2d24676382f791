//! A running Tapestry overlay on a [`Testbed`]: the control plane in its own namespace, cells on
//! the underlay bridge, containers attached through the cells' local API, and helpers that speak
//! to the external API and open real TCP connections from inside namespaces.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use super::testbed::{underlay_ip, Testbed};
use crate::cell::api::{self, Attachment, Request, UpRequest};

/// Host number of the control plane on the underlay.
const CONTROL_HOST: u8 = 10;

pub struct CellInfo {
    pub ns: String,
    pub underlay: Ipv4Addr,
    pub state_dir: PathBuf,
    pub args: Vec<String>,
}

pub struct Overlay {
    pub tb: Testbed,
    pub data_dir: PathBuf,
    pub admin_token: String,
    pub cells: Vec<CellInfo>,
    pub underlay_mtu: u32,
}

/// `tapestry control`'s arguments in the testbed.
fn control_args(data_dir: &Path) -> Vec<String> {
    let cip = underlay_ip(CONTROL_HOST);
    vec![
        "control".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--listen".into(),
        format!("{cip}:4002"),
        "--internal-listen".into(),
        format!("{cip}:4003"),
    ]
}

/// Runs `f` on a thread inside the network namespace at `ns`.
pub fn in_netns<T: Send + 'static>(
    ns: &Path,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = ns.to_path_buf();
    let r = tapestry_sys::netns::run_in_netns(&path, move || Ok(f()))
        .map_err(|e| anyhow!("entering {}: {e}", path.display()))?;
    r
}

impl Overlay {
    /// Starts a control plane and `cells` cells; waits until every cell answers on its socket.
    pub fn start(prefix: &str, bin: &Path, cells: usize, cell_args: &[&str]) -> Result<Overlay> {
        Self::start_with(prefix, bin, cells, cell_args, 1500)
    }

    pub fn start_with(
        prefix: &str,
        bin: &Path,
        cells: usize,
        cell_args: &[&str],
        underlay_mtu: u32,
    ) -> Result<Overlay> {
        Self::start_full(prefix, bin, cells, cell_args, &[], underlay_mtu)
    }

    /// As [`Overlay::start_with`], with further flags for `tapestry control`.
    pub fn start_full(
        prefix: &str,
        bin: &Path,
        cells: usize,
        cell_args: &[&str],
        control_flags: &[&str],
        underlay_mtu: u32,
    ) -> Result<Overlay> {
        let mut tb = Testbed::new(prefix, bin)?;
        tb.add_underlay(underlay_mtu)?;
        let cip = underlay_ip(CONTROL_HOST);
        tb.add_host("ctl", cip, underlay_mtu)?;
        let data_dir = tb.dir().join("control");
        let mut args = control_args(&data_dir);
        args.extend(control_flags.iter().map(|s| s.to_string()));
        tb.spawn_tapestry("ctl", "control", &args)?;
        let token_path = data_dir.join("admin.token");
        let admin_token = tb.wait_for(
            "the control plane's admin token",
            Duration::from_secs(30),
            || {
                let t = std::fs::read_to_string(&token_path)?;
                if t.trim().is_empty() {
                    bail!("empty token");
                }
                Ok(t.trim().to_string())
            },
        )?;
        let mut ov = Overlay {
            tb,
            data_dir,
            admin_token,
            cells: vec![],
            underlay_mtu,
        };
        let ctl_ns = ov.tb.ns_path("ctl");
        let token = ov.admin_token.clone();
        ov.tb.wait_for(
            "the control plane's external API",
            Duration::from_secs(30),
            || {
                let (code, _) = Self::http(&ctl_ns, &token, "GET", "/health", None)?;
                if code != 200 {
                    bail!("health returned {code}");
                }
                Ok(())
            },
        )?;
        for i in 0..cells {
            let ns = format!("cell{}", i + 1);
            let ip = underlay_ip(i as u8 + 1);
            ov.tb.add_host(&ns, ip, underlay_mtu)?;
            let state_dir = ov.tb.dir().join(&ns);
            // Each cell its own certificate (IP SAN = its underlay IP).
            let creds = ov.tb.dir().join(format!("{ns}-credentials"));
            let out = std::process::Command::new(bin)
                .args(["control", "cell-credentials", "--data-dir"])
                .arg(&ov.data_dir)
                .args(["--underlay-ip", &ip.to_string(), "--out"])
                .arg(&creds)
                .output()
                .context("running tapestry control cell-credentials")?;
            if !out.status.success() {
                bail!(
                    "tapestry control cell-credentials failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let mut args: Vec<String> = vec![
                "cell".into(),
                "--control".into(),
                format!("https://{cip}:4003"),
                "--credentials".into(),
                creds.display().to_string(),
                "--underlay-ip".into(),
                ip.to_string(),
                "--state-dir".into(),
                state_dir.display().to_string(),
                "--underlay-mtu".into(),
                underlay_mtu.to_string(),
            ];
            args.extend(cell_args.iter().map(|s| s.to_string()));
            // TAPESTRY_PORT_KIND=tap|packet runs a whole suite with one port kind.
            if let Ok(kind) = std::env::var("TAPESTRY_PORT_KIND") {
                if !cell_args.contains(&"--port-kind") && !kind.is_empty() {
                    args.extend(["--port-kind".to_string(), kind]);
                }
            }
            ov.cells.push(CellInfo {
                ns,
                underlay: ip,
                state_dir,
                args,
            });
            ov.start_cell(i)?;
        }
        Ok(ov)
    }

    /// Starts the control plane again (after `tb.kill("control")`) on the same data dir and
    /// addresses, and waits for its external API.
    pub fn restart_control(&mut self) -> Result<()> {
        let args = control_args(&self.data_dir);
        self.tb.spawn_tapestry("ctl", "control", &args)?;
        let ctl_ns = self.tb.ns_path("ctl");
        let token = self.admin_token.clone();
        self.tb.wait_for(
            "the control plane's external API",
            Duration::from_secs(30),
            || match Self::http(&ctl_ns, &token, "GET", "/health", None)? {
                (200, _) => Ok(()),
                (code, _) => bail!("health returned {code}"),
            },
        )
    }

    /// Starts (or restarts) cell `i` and waits for its socket.
    pub fn start_cell(&mut self, i: usize) -> Result<()> {
        let c = &self.cells[i];
        let (ns, args, sock) = (c.ns.clone(), c.args.clone(), c.state_dir.join("cell.sock"));
        let _ = std::fs::remove_file(&sock);
        self.tb.spawn_tapestry(&ns, &ns, &args)?;
        self.tb.wait_for(
            &format!("{ns} to serve its API"),
            Duration::from_secs(30),
            || api::call(&sock, &Request::Status).map(|_| ()),
        )
    }

    /// Kills cell `i` with SIGKILL (its TAPs persist in the containers' namespaces).
    pub fn kill_cell(&mut self, i: usize) {
        let ns = self.cells[i].ns.clone();
        self.tb.kill(&ns);
    }

    pub fn cell_socket(&self, i: usize) -> PathBuf {
        self.cells[i].state_dir.join("cell.sock")
    }

    pub fn cell_status(&self, i: usize) -> Result<Value> {
        api::call(&self.cell_socket(i), &Request::Status)
    }

    /// Creates namespace `name` and attaches it to cell `cell` as an instance of `app`.
    pub fn add_container(
        &mut self,
        cell: usize,
        name: &str,
        app: &str,
        space: &str,
    ) -> Result<Attachment> {
        let netns = self.tb.add_namespace(name)?;
        let v = api::call(
            &self.cell_socket(cell),
            &Request::Up(UpRequest {
                handle: name.to_string(),
                app_id: app.to_string(),
                space_id: space.to_string(),
                org_id: "org".into(),
                instance_index: 0,
                netns,
                ifname: "eth0".into(),
            }),
        )?;
        Ok(serde_json::from_value(v)?)
    }

    /// Creates namespace `name` and attaches it to cell `cell` with `tapestry container up`
    /// (as a user would: `extra` are its further flags, e.g. `--net-in`, `--index`,
    /// `--lifecycle`); returns what it printed.
    pub fn container_up(
        &mut self,
        cell: usize,
        name: &str,
        app: &str,
        extra: &[&str],
    ) -> Result<Value> {
        let netns = self.tb.add_namespace(name)?;
        let out = std::process::Command::new(self.tb.bin())
            .args(["container", "up", "--cell-socket"])
            .arg(self.cell_socket(cell))
            .args(["--handle", name, "--app", app, "--netns"])
            .arg(&netns)
            .args(extra)
            .output()?;
        if !out.status.success() {
            bail!(
                "container up {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// `tapestry container down` of `name` on cell `cell`.
    pub fn container_down(&self, cell: usize, name: &str) -> Result<()> {
        let out = std::process::Command::new(self.tb.bin())
            .args(["container", "down", "--cell-socket"])
            .arg(self.cell_socket(cell))
            .args(["--handle", name])
            .output()?;
        if !out.status.success() {
            bail!(
                "container down {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// One request to the external API from inside the control plane's namespace.
    pub fn http(
        ctl_ns: &Path,
        token: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value)> {
        let url = format!("http://{}:4002{path}", underlay_ip(CONTROL_HOST));
        let token = token.to_string();
        let method = reqwest::Method::from_bytes(method.as_bytes())?;
        in_netns(ctl_ns, move || {
            let client = reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()?;
            let mut req = client.request(method, &url).bearer_auth(token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().with_context(|| format!("requesting {url}"))?;
            let code = resp.status().as_u16();
            let text = resp.text()?;
            let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
            Ok((code, v))
        })
    }

    pub fn api(&self, method: &str, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        Self::http(
            &self.tb.ns_path("ctl"),
            &self.admin_token,
            method,
            path,
            body,
        )
    }

    fn policy_body(src: &str, dst: &str, proto: &str, start: u16, end: u16) -> Value {
        json!({"policies": [{"source": {"id": src},
            "destination": {"id": dst, "protocol": proto, "ports": {"start": start, "end": end}}}]})
    }

    /// Allows `src` -> `dst` on `proto` ports start..=end.
    pub fn allow(&self, src: &str, dst: &str, proto: &str, start: u16, end: u16) -> Result<()> {
        let (code, v) = self.api(
            "POST",
            "/networking/v1/external/policies",
            Some(Self::policy_body(src, dst, proto, start, end)),
        )?;
        if code != 200 {
            bail!("creating policy {src}->{dst}: {code} {v}");
        }
        Ok(())
    }

    pub fn revoke(&self, src: &str, dst: &str, proto: &str, start: u16, end: u16) -> Result<()> {
        let (code, v) = self.api(
            "POST",
            "/networking/v1/external/policies/delete",
            Some(Self::policy_body(src, dst, proto, start, end)),
        )?;
        if code != 200 {
            bail!("deleting policy {src}->{dst}: {code} {v}");
        }
        Ok(())
    }
}

/// A TCP server inside namespace `ns` that answers every connection with `greeting` and the
/// first line the client sent. Runs until the process ends.
pub fn serve_tcp(ns: &Path, port: u16, greeting: &str) -> Result<()> {
    let listener = in_netns(ns, move || {
        Ok(TcpListener::bind(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        ))?)
    })?;
    let greeting = greeting.to_string();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let greeting = greeting.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut buf = [0u8; 256];
                let n = conn.read(&mut buf).unwrap_or(0);
                let _ = conn.write_all(
                    format!("{greeting} {}", String::from_utf8_lossy(&buf[..n])).as_bytes(),
                );
            });
        }
    });
    Ok(())
}

/// A UDP echo inside namespace `ns` on `port` (every address). Runs until the process ends.
pub fn serve_udp_echo(ns: &Path, port: u16) -> Result<()> {
    let s = in_netns(ns, move || {
        Ok(std::net::UdpSocket::bind(SocketAddrV4::new(
            Ipv4Addr::UNSPECIFIED,
            port,
        ))?)
    })?;
    std::thread::spawn(move || {
        let mut b = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut b) {
            let _ = s.send_to(&b[..n], from);
        }
    });
    Ok(())
}

/// A TCP echo server inside namespace `ns` on `at`. Runs until the process ends.
pub fn serve_echo(ns: &Path, at: SocketAddrV4) -> Result<()> {
    let listener = in_netns(ns, move || Ok(TcpListener::bind(at)?))?;
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 4096];
                while let Ok(n) = c.read(&mut b) {
                    if n == 0 || c.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    Ok(())
}

/// Connects from namespace `ns` to `dst`, sends `hello` and returns the reply; an error when the
/// connection is not established within `timeout` (a denied flow).
pub fn tcp_exchange(ns: &Path, dst: SocketAddrV4, timeout: Duration) -> Result<String> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&SocketAddr::V4(dst), timeout)
            .with_context(|| format!("connecting to {dst}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.write_all(b"hello\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)
            .with_context(|| format!("reading from {dst}"))?;
        Ok(out)
    })
}

/// Repeats `tcp_exchange` (20 ms attempts, so the time is that precise) until it succeeds;
/// returns the reply and the time it took.
pub fn wait_tcp(ns: &Path, dst: SocketAddrV4, limit: Duration) -> Result<(String, Duration)> {
    let start = Instant::now();
    loop {
        match tcp_exchange(ns, dst, Duration::from_millis(20)) {
            Ok(r) => return Ok((r, start.elapsed())),
            Err(e) if start.elapsed() > limit => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}
