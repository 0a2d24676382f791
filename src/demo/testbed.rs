//! A throwaway overlay in network namespaces: an underlay bridge, hosts for the control plane
//! and the cells, and container namespaces. Used by `tapestry demo` and the end-to-end tests.
//! Everything it creates carries its prefix and is removed when it is dropped (or `cleanup` is
//! called), on every exit path.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Underlay addresses come from 198.18.0.0/15, the range RFC 2544 sets aside for benchmarks.
pub fn underlay_ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, host)
}

pub struct Testbed {
    prefix: String,
    namespaces: Vec<String>,
    children: Vec<(String, Child, bool)>,
    dir: PathBuf,
    bin: PathBuf,
    next_port: u32,
    /// (host namespace name, its underlay bridge port in the `ul` namespace)
    ports: Vec<(String, String)>,
}

/// Runs a command, failing with its stderr when it exits non-zero.
pub fn sh(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program} (is it installed?)"))?;
    if !out.status.success() {
        bail!(
            "{program} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

impl Testbed {
    /// `prefix` names every namespace (`PREFIX-NAME`); namespaces left over from an earlier
    /// run with the same prefix are removed first.
    pub fn new(prefix: &str, bin: &Path) -> Result<Testbed> {
        if !is_root() {
            bail!("network namespaces need root: run this as root, or inside `tapestry sandbox -- ...` (an unprivileged user namespace)");
        }
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        let tb = Testbed {
            prefix: prefix.to_string(),
            namespaces: vec![],
            children: vec![],
            dir,
            bin: bin.to_path_buf(),
            next_port: 1,
            ports: vec![],
        };
        tb.remove_stale();
        Ok(tb)
    }

    fn remove_stale(&self) {
        if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                if name.starts_with(&format!("{}-", self.prefix)) {
                    let _ = Command::new("ip").args(["netns", "del", name]).status();
                }
            }
        }
    }

    /// The tapestry binary the testbed runs.
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn ns_name(&self, name: &str) -> String {
        format!("{}-{}", self.prefix, name)
    }

    pub fn ns_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/var/run/netns/{}", self.ns_name(name)))
    }

    /// Creates an empty namespace with loopback up.
    pub fn add_namespace(&mut self, name: &str) -> Result<PathBuf> {
        let ns = self.ns_name(name);
        sh("ip", &["netns", "add", &ns])?;
        self.namespaces.push(ns.clone());
        sh("ip", &["-n", &ns, "link", "set", "lo", "up"])?;
        Ok(self.ns_path(name))
    }

    /// Creates the underlay: a namespace holding bridge `br0`.
    pub fn add_underlay(&mut self, mtu: u32) -> Result<()> {
        self.add_namespace("ul")?;
        let ul = self.ns_name("ul");
        let mtu = mtu.to_string();
        sh(
            "ip",
            &[
                "-n", &ul, "link", "add", "br0", "mtu", &mtu, "type", "bridge",
            ],
        )?;
        sh("ip", &["-n", &ul, "link", "set", "br0", "up"])?;
        Ok(())
    }

    /// Creates a host namespace `name` attached to the underlay bridge with `ip`/24 on `ul0`.
    pub fn add_host(&mut self, name: &str, ip: Ipv4Addr, mtu: u32) -> Result<PathBuf> {
        let path = self.add_namespace(name)?;
        let ns = self.ns_name(name);
        let ul = self.ns_name("ul");
        let port = format!("p{}", self.next_port);
        self.next_port += 1;
        let mtu = mtu.to_string();
        sh(
            "ip",
            &[
                "-n", &ul, "link", "add", &port, "mtu", &mtu, "type", "veth", "peer", "name",
                "ul0", "mtu", &mtu, "netns", &ns,
            ],
        )?;
        sh(
            "ip",
            &["-n", &ul, "link", "set", &port, "master", "br0", "up"],
        )?;
        sh(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "ul0"],
        )?;
        sh("ip", &["-n", &ns, "link", "set", "ul0", "up"])?;
        self.ports.push((name.to_string(), port));
        Ok(path)
    }

    /// The underlay bridge port (in the `ul` namespace) of host `name`, given to `add_host`.
    pub fn underlay_port(&self, name: &str) -> Option<&str> {
        self.ports
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p.as_str())
    }

    /// Starts `tapestry ARGS` inside namespace `ns` (a name given to add_*), logging to
    /// `DIR/LOG.log`.
    pub fn spawn_tapestry(&mut self, ns: &str, log: &str, args: &[String]) -> Result<()> {
        let logf = fs::File::create(self.dir.join(format!("{log}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name(ns)])
            .arg(&self.bin)
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .context("starting tapestry")?;
        self.children.push((log.to_string(), child, true));
        Ok(())
    }

    /// Starts `program ARGS` inside namespace `ns` in the background (stopped at cleanup).
    pub fn spawn_cmd(&mut self, ns: &str, log: &str, program: &str, args: &[&str]) -> Result<()> {
        let logf = fs::File::create(self.dir.join(format!("{log}.log")))?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns_name(ns), program])
            .args(args)
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        self.children.push((log.to_string(), child, false));
        Ok(())
    }

    /// Stops the child started with log name `log` (SIGKILL, like a crash).
    pub fn kill(&mut self, log: &str) {
        self.children.retain_mut(|(name, child, _)| {
            if name == log {
                let _ = child.kill();
                let _ = child.wait();
                false
            } else {
                true
            }
        });
    }

    /// Fails if a child exited early, quoting its log.
    pub fn check_children(&mut self) -> Result<()> {
        for (name, child, _) in self.children.iter_mut().filter(|c| c.2) {
            if let Ok(Some(status)) = child.try_wait() {
                let log =
                    fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default();
                bail!("{name} exited ({status}); its log:\n{log}");
            }
        }
        Ok(())
    }

    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Runs a command inside namespace `ns`.
    pub fn exec(&self, ns: &str, program: &str, args: &[&str]) -> Result<Output> {
        let mut full = vec!["netns", "exec"];
        let nsn = self.ns_name(ns);
        full.push(&nsn);
        full.push(program);
        full.extend_from_slice(args);
        Command::new("ip")
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {nsn}"))
    }

    /// Waits until `f` succeeds, or fails with its last error after `timeout`.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut() -> Result<T>,
    ) -> Result<T> {
        let start = Instant::now();
        loop {
            match f() {
                Ok(v) => return Ok(v),
                Err(e) if start.elapsed() >= timeout => {
                    return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")))
                }
                Err(_) => {
                    self.check_children()?;
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
    }

    /// Kills every child and deletes every namespace. Safe to call twice.
    pub fn cleanup(&mut self) {
        for (_, child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.children.clear();
        for ns in self.namespaces.drain(..).rev() {
            kill_all_in(&ns);
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }

    /// Keeps the working directory (logs, state) for inspection and returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        let kept = self.dir.with_extension("kept");
        let _ = fs::remove_dir_all(&kept);
        let _ = fs::rename(&self.dir, &kept);
        kept
    }
}

/// SIGKILLs every process left in namespace `ns` (grandchildren of what the testbed started,
/// such as a sink behind `sh -c`), so none outlives the test holding the namespace alive.
fn kill_all_in(ns: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() else {
        return;
    };
    let me = std::process::id().to_string();
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|p| *p != me)
        .map(String::from)
        .collect();
    if !pids.is_empty() {
        let _ = Command::new("kill")
            .arg("-9")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.cleanup();
    }
}

pub fn is_root() -> bool {
    // Reading our own effective uid needs no unsafe code: /proc/self/status has it.
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}
