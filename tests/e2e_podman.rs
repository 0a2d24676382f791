//! End to end under Podman (root): Podman 4 with its CNI backend, runc and a busybox root
//! filesystem (`--rootfs`, no image pulls) attaching containers through the real `tapestry-cni`
//! to a real cell. The network configuration is the README's Podman `.conflist`, read from
//! README.md, with the test cell's socket put in.
//!
//! Podman's host setup lives here, all of it private to the test: a `containers.conf` of its
//! own (`CONTAINERS_CONF`: the CNI backend, the cgroupfs manager, runc, no default ulimits, the
//! plugin and network directories below), storage root, run root and tmpdir in a temporary
//! directory, and a plugin directory holding the built `tapestry-cni` and Debian's standard
//! plugins (`containernetworking-plugins`). Everything is removed on every exit path:
//! containers by [`Podman`]'s Drop (`podman rm -af`, then any mount left under its directory),
//! the cell, control plane and their namespaces (prefixed `tppod`) by the testbed's.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tapestry::demo::overlay::{wait_tcp, Overlay};
use tapestry::demo::testbed::{is_root, underlay_ip};

/// Where Debian's `containernetworking-plugins` puts the standard plugins.
const STANDARD_PLUGINS: &str = "/usr/lib/cni";
/// libcni's cache of results, written by Podman's CNI backend.
const CNI_CACHE: &str = "/var/lib/cni";
/// The cell socket path the README's example names; the test's cell is elsewhere.
const README_SOCKET: &str = "/var/lib/tapestry-cell/cell.sock";

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

/// The first ```json block after the line containing `marker` in README.md.
fn readme_json_after(marker: &str) -> String {
    let readme = include_str!("../README.md");
    let at = readme
        .find(marker)
        .unwrap_or_else(|| panic!("README.md has no {marker:?}"));
    let rest = &readme[at..];
    let start = rest.find("```json\n").expect("a ```json block follows") + "```json\n".len();
    let len = rest[start..].find("```").expect("the block ends");
    rest[start..start + len].to_string()
}

/// A private Podman: its own configuration, storage and CNI directories under one temporary
/// directory. Dropping it removes every container it made and whatever they left mounted.
struct Podman {
    dir: tempfile::TempDir,
    /// Whether libcni's cache directory (`/var/lib/cni`, which Podman does not let us move)
    /// was there before; if not, Drop removes it again when it is empty.
    had_cni_cache: bool,
}

impl Podman {
    fn new(cell_socket: &Path) -> Podman {
        for (tool, package) in [
            ("podman", "podman"),
            ("runc", "runc"),
            ("busybox", "busybox-static"),
        ] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()
                .is_ok_and(|o| o.status.success());
            assert!(
                found,
                "{tool} is missing: install Debian's {package} (scripts/test.sh does)"
            );
        }
        assert!(
            Path::new(STANDARD_PLUGINS).join("tuning").exists(),
            "{STANDARD_PLUGINS}/tuning is missing: install Debian's containernetworking-plugins"
        );
        let dir = tempfile::Builder::new().prefix("tppod").tempdir().unwrap();
        let d = dir.path();
        // The plugin directory: the built tapestry-cni beside the standard plugins.
        let plugins = d.join("cni-bin");
        std::fs::create_dir(&plugins).unwrap();
        std::fs::copy(
            env!("CARGO_BIN_EXE_tapestry-cni"),
            plugins.join("tapestry-cni"),
        )
        .unwrap();
        for e in std::fs::read_dir(STANDARD_PLUGINS).unwrap() {
            let e = e.unwrap();
            std::os::unix::fs::symlink(e.path(), plugins.join(e.file_name())).unwrap();
        }
        // A busybox root filesystem.
        let rootfs = d.join("rootfs");
        for sub in ["bin", "proc", "sys", "dev", "etc", "tmp"] {
            std::fs::create_dir_all(rootfs.join(sub)).unwrap();
        }
        let busybox = Command::new("sh")
            .args(["-c", "command -v busybox"])
            .output()
            .unwrap();
        let busybox = String::from_utf8(busybox.stdout).unwrap();
        std::fs::copy(busybox.trim(), rootfs.join("bin/busybox")).unwrap();
        for applet in ["sh", "nc", "sleep", "cat", "echo", "ip"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
        // Networks: the README's conflist with this cell's socket, and a second one that
        // chains tuning (a sysctl, to see it ran) and portmap after Tapestry.
        let netd = d.join("net.d");
        std::fs::create_dir(&netd).unwrap();
        let readme = readme_json_after("<!-- podman conflist -->");
        assert!(
            readme.contains(README_SOCKET),
            "the README's conflist names {README_SOCKET}"
        );
        let conflist = readme.replace(README_SOCKET, cell_socket.to_str().unwrap());
        let parsed: Value = serde_json::from_str(&conflist).expect("the README's conflist is JSON");
        assert_eq!(parsed["name"], "tapestry");
        std::fs::write(netd.join("tapestry.conflist"), &conflist).unwrap();
        let chained = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "chained",
            "plugins": [
                {"type": "tapestry-cni", "cell_socket": cell_socket,
                 "metadata": {"space_id": "space-1", "org_id": "org-1"}},
                {"type": "tuning", "sysctl": {"net.ipv4.tcp_keepalive_time": "1234"}},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]
        });
        std::fs::write(netd.join("chained.conflist"), chained.to_string()).unwrap();
        let conf = format!(
            "[containers]\n\
             default_ulimits = []\n\
             [network]\n\
             network_backend = \"cni\"\n\
             cni_plugin_dirs = [\"{}\"]\n\
             network_config_dir = \"{}\"\n\
             [engine]\n\
             cgroup_manager = \"cgroupfs\"\n\
             events_logger = \"file\"\n\
             runtime = \"runc\"\n",
            plugins.display(),
            netd.display()
        );
        std::fs::write(d.join("containers.conf"), conf).unwrap();
        Podman {
            dir,
            had_cni_cache: Path::new(CNI_CACHE).exists(),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// `podman` with the private configuration, storage and state.
    fn cmd(&self) -> Command {
        let d = self.dir.path();
        let mut c = Command::new("podman");
        c.env("CONTAINERS_CONF", d.join("containers.conf"))
            .env_remove("CNI_ARGS")
            .arg("--root")
            .arg(d.join("storage"))
            .arg("--runroot")
            .arg(d.join("run"))
            .arg("--tmpdir")
            .arg(d.join("tmp"))
            .args(["--storage-driver", "vfs"])
            .stdin(Stdio::null());
        c
    }

    fn output(&self, args: &[&str], cni_args: Option<&str>) -> Output {
        let mut c = self.cmd();
        if let Some(a) = cni_args {
            c.env("CNI_ARGS", a);
        }
        c.args(args).output().expect("podman runs")
    }

    /// Runs podman and insists it succeeds; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], cni_args: Option<&str>) -> String {
        let out = self.output(args, cni_args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts busybox container `name` on `networks` with `CNI_ARGS`, podman run's `options`,
    /// running `cmd`.
    fn run(&self, name: &str, networks: &str, cni_args: &str, options: &[&str], cmd: &[&str]) {
        let rootfs = self.rootfs();
        let mut args = vec!["run", "-d", "--name", name, "--network", networks];
        args.extend_from_slice(options);
        args.push("--rootfs");
        args.push(rootfs.to_str().unwrap());
        args.extend_from_slice(cmd);
        self.ok_with(&args, Some(cni_args));
    }

    fn inspect(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    /// The container's address on `network`, as Podman reports it.
    fn ip(&self, name: &str, network: &str) -> String {
        let v = self.inspect(name);
        let ip = v["NetworkSettings"]["Networks"][network]["IPAddress"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(!ip.is_empty(), "{name} has no address on {network}: {v}");
        ip
    }

    /// `nc` from container `from` to `ip:port`: what the server sent, or None when nothing came.
    fn nc(&self, from: &str, ip: &str, port: u16) -> Option<String> {
        let port = port.to_string();
        let out = self.output(&["exec", from, "nc", "-w", "2", ip, &port], None);
        let got = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !got.is_empty()).then_some(got)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // Whatever is still mounted under the directory (the runroot's shm and netns mounts
        // of a container Podman could not remove), deepest first, so it can be deleted.
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let mut ours: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| m.starts_with(&dir))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = Command::new("umount").args(["-l", m]).status();
        }
        if !self.had_cni_cache {
            // remove_dir removes only empty directories: another user's entries stay.
            let _ = std::fs::remove_dir(Path::new(CNI_CACHE).join("results"));
            let _ = std::fs::remove_dir(CNI_CACHE);
        }
    }
}

/// The cell's attachments: (handle, ifname) pairs.
fn attachments(ov: &Overlay) -> Vec<(String, String)> {
    let status = ov.cell_status(0).unwrap();
    let mut v: Vec<(String, String)> = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["handle"].as_str().unwrap_or_default().to_string(),
                p["ifname"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Polls `f` until it holds, for at most `limit`; whether it did.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if f() {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "needs root (Podman, network namespaces); scripts/test.sh runs it as root"]
fn e2e_podman_cni() {
    assert!(is_root(), "end-to-end tests need root");
    let mut ov = Overlay::start("tppod", bin(), 1, &[]).expect("overlay starts");
    // A host on the underlay, outside the overlay, for net-in (`-p`).
    let ext = ov
        .tb
        .add_host("ext", Ipv4Addr::new(198, 18, 0, 200), 1500)
        .unwrap();
    let subnet: ipnet::Ipv4Net = ov.cell_status(0).unwrap()["lease"]["overlay_subnet"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let wanted_b = Ipv4Addr::from(u32::from(subnet.network()) + 40).to_string();
    let podman = Podman::new(&ov.cell_socket(0));

    // Two containers of two apps on one Tapestry network: the app from CNI_ARGS, the space and
    // org from the README's metadata. b serves on 8080.
    // b asks for an address (--ip: the ips capability) and a host port (-p: portMappings,
    // served by the cell's net-in).
    podman.run(
        "a",
        "tapestry",
        "APP_ID=app-a;INSTANCE_INDEX=0",
        &[],
        &["sleep", "600"],
    );
    podman.run(
        "b",
        "tapestry",
        "APP_ID=app-b;INSTANCE_INDEX=1",
        &["--ip", &wanted_b, "-p", "61080:8080"],
        &["nc", "-ll", "-p", "8080", "-e", "echo", "hello-from-b"],
    );
    let id = |name: &str| podman.inspect(name)["Id"].as_str().unwrap().to_string();
    let (id_a, id_b) = (id("a"), id("b"));
    let status = ov.cell_status(0).unwrap();
    let apps: Vec<(String, String, String)> = status["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let s = |k: &str| p[k].as_str().unwrap_or_default().to_string();
            (s("handle"), s("app_id"), s("space_id"))
        })
        .collect();
    assert!(
        apps.contains(&(id_a.clone(), "app-a".into(), "space-1".into())),
        "{apps:?}"
    );
    assert!(
        apps.contains(&(id_b.clone(), "app-b".into(), "space-1".into())),
        "{apps:?}"
    );
    let ip_a = podman.ip("a", "tapestry");
    let ip_b = podman.ip("b", "tapestry");
    assert_ne!(ip_a, ip_b);
    assert_eq!(ip_b, wanted_b, "--ip reached the cell");
    let net_in = SocketAddrV4::new(underlay_ip(1), 61080);
    let (got, _) = wait_tcp(&ext, net_in, Duration::from_secs(20)).expect("-p 61080:8080 serves b");
    assert_eq!(got.trim(), "hello-from-b");

    // Policy: denied until app-a may reach app-b on 8080, then allowed.
    assert_eq!(
        podman.nc("a", &ip_b, 8080),
        None,
        "no policy, no connection"
    );
    ov.allow("app-a", "app-b", "tcp", 8080, 8080).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || podman
            .nc("a", &ip_b, 8080)
            .as_deref()
            == Some("hello-from-b")),
        "app-a reaches app-b once allowed"
    );
    // Only that way round.
    podman.ok(&[
        "exec",
        "-d",
        "a",
        "nc",
        "-ll",
        "-p",
        "8080",
        "-e",
        "echo",
        "hello-from-a",
    ]);
    assert_eq!(
        podman.nc("b", &ip_a, 8080),
        None,
        "app-b -> app-a is denied"
    );

    // Restart keeps the address and the policy still applies. Podman does not keep CNI_ARGS:
    // the restart's ADD gets them from the restart's environment (as the README says).
    podman.ok_with(
        &["restart", "--time", "0", "b"],
        Some("APP_ID=app-b;INSTANCE_INDEX=1"),
    );
    assert_eq!(
        podman.ip("b", "tapestry"),
        ip_b,
        "podman restart keeps the IP"
    );
    let (got, _) = wait_tcp(&ext, net_in, Duration::from_secs(20)).expect("-p after the restart");
    assert_eq!(got.trim(), "hello-from-b");
    assert!(
        eventually(Duration::from_secs(20), || podman
            .nc("a", &ip_b, 8080)
            .as_deref()
            == Some("hello-from-b")),
        "allowed after the restart"
    );

    // A container on two networks: the README's and the chained one (tapestry, tuning,
    // portmap). Both attachments are the cell's; tuning's sysctl was applied.
    podman.run(
        "c",
        "tapestry,chained",
        "APP_ID=app-c",
        &[],
        &["sleep", "600"],
    );
    let id_c = id("c");
    let ip_c1 = podman.ip("c", "tapestry");
    let ip_c2 = podman.ip("c", "chained");
    assert_ne!(ip_c1, ip_c2);
    let of_c: Vec<String> = attachments(&ov)
        .into_iter()
        .filter(|(h, _)| *h == id_c)
        .map(|(_, i)| i)
        .collect();
    assert_eq!(of_c.len(), 2, "{of_c:?}");
    let keepalive = podman.ok(&["exec", "c", "cat", "/proc/sys/net/ipv4/tcp_keepalive_time"]);
    assert_eq!(keepalive.trim(), "1234", "tuning ran after tapestry-cni");
    let links = podman.ok(&["exec", "c", "ip", "-o", "addr"]);
    assert!(links.contains(&ip_c1) && links.contains(&ip_c2), "{links}");

    // podman rm: the cell forgets every attachment of the container.
    podman.ok(&["rm", "--force", "--time", "0", "c"]);
    assert!(
        attachments(&ov).iter().all(|(h, _)| *h != id_c),
        "{:?}",
        attachments(&ov)
    );
    podman.ok(&["rm", "--force", "--time", "0", "a", "b"]);
    assert_eq!(attachments(&ov), vec![]);
}
