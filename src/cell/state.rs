//! What a cell keeps on disk in its state dir, so a restart loses nothing: the containers it
//! attached (and their IPs), its lease, and the last feed view it received from the control plane.
//! Every file is written whole to a temporary name, synced and renamed over the old one.
//!
//! Modes are explicit, whatever the umask: the state dir is 0700 and every file in it 0600 (the
//! socket too, see `api::serve`), so only the cell's own user can attach, detach or read what
//! the cell knows. A state dir left with wider modes by an older version is tightened on open.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// One attached container.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub handle: String,
    pub app_id: String,
    #[serde(default)]
    pub space_id: String,
    #[serde(default)]
    pub org_id: String,
    #[serde(default)]
    pub instance_index: u32,
    pub ip: Ipv4Addr,
    pub netns: PathBuf,
    pub ifname: String,
    /// Which ASGs apply (records written before lifecycles existed load as running).
    #[serde(default)]
    pub lifecycle: tapestry_switch::Lifecycle,
    /// The CNI network (configuration `name`) the attachment joined through, for CNI GC. None
    /// for containers attached outside CNI (or by an older version): GC never touches them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// The app's port behind 61443 (None: 8080).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_port: Option<u16>,
    /// 61443 requires a client certificate (mTLS).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tls_client_auth: bool,
    /// Net-in: the cell's host ports forwarded to this attachment, with the real host ports
    /// (records written before net-in load with none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_mappings: Vec<super::api::PortMapping>,
}

impl ContainerRecord {
    /// This attachment's key: see [`attachment_key`].
    pub fn key(&self) -> String {
        attachment_key(&self.handle, &self.ifname)
    }
}

/// The key of one attachment, `handle/ifname` (a CNI attachment is (container id, ifname); a
/// handle never contains '/'), so one container may be attached several times under different
/// interface names.
pub fn attachment_key(handle: &str, ifname: &str) -> String {
    format!("{handle}/{ifname}")
}

/// All attachments by [`attachment_key`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Containers {
    pub containers: BTreeMap<String, ContainerRecord>,
}

impl Containers {
    /// Re-keys every record by its attachment key: containers.json written before attachments
    /// had keys (keyed by handle alone) loads as the same containers.
    pub fn rekeyed(self) -> Containers {
        Containers {
            containers: self
                .containers
                .into_values()
                .map(|rec| (rec.key(), rec))
                .collect(),
        }
    }

    /// The handle `rec` is reported to the control plane under, which keys instances by (cell,
    /// handle): the plain handle for a container attached once, `handle/ifname` for each
    /// attachment of a container attached more than once (several networks).
    pub fn instance_handle(&self, rec: &ContainerRecord) -> String {
        if self.of_handle(&rec.handle).nth(1).is_some() {
            rec.key()
        } else {
            rec.handle.clone()
        }
    }

    /// Every attachment of `handle`.
    pub fn of_handle<'a>(&'a self, handle: &'a str) -> impl Iterator<Item = &'a ContainerRecord> {
        self.containers.values().filter(move |r| r.handle == handle)
    }
}

pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub fn open(dir: &Path) -> Result<StateDir> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating state dir {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("setting mode 0700 on state dir {}", dir.display()))?;
        // Files written by older versions got their modes from the umask.
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(0o600))
                    .with_context(|| format!("setting mode 0600 on {}", entry.path().display()))?;
            }
        }
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn socket_path(&self) -> PathBuf {
        self.path("cell.sock")
    }

    /// Reads `name` as JSON; `Ok(None)` when the file does not exist.
    pub fn load<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let path = self.path(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("parsing {}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes `value` as JSON atomically (temp file, fsync, rename, fsync dir).
    pub fn store<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        let bytes = serde_json::to_vec_pretty(value).context("encoding state")?;
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?
        };
        f.write_all(&bytes)
            .and_then(|_| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
        fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        if let Ok(d) = fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Lowest free host address of `subnet` (excluding the network address, which is the cell's
/// VTEP, and the broadcast address).
pub fn allocate_ip(
    base: Ipv4Addr,
    prefix: u8,
    used: impl IntoIterator<Item = Ipv4Addr>,
) -> Option<Ipv4Addr> {
    let used: std::collections::HashSet<u32> = used.into_iter().map(u32::from).collect();
    let base = u32::from(base);
    let size = 1u64 << (32 - prefix as u32);
    (1..size.saturating_sub(1))
        .map(|off| base + off as u32)
        .find(|ip| !used.contains(ip))
        .map(Ipv4Addr::from)
}

/// Port id of a container: its offset inside the cell's subnet.
pub fn port_id_for(base: Ipv4Addr, ip: Ipv4Addr) -> u32 {
    u32::from(ip).wrapping_sub(u32::from(base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::api::{PortMapping, Protocol};

    #[test]
    fn allocates_lowest_free_and_reuses() {
        let base = Ipv4Addr::new(10, 255, 7, 0);
        assert_eq!(
            allocate_ip(base, 24, []),
            Some(Ipv4Addr::new(10, 255, 7, 1))
        );
        let used = [Ipv4Addr::new(10, 255, 7, 1), Ipv4Addr::new(10, 255, 7, 3)];
        assert_eq!(
            allocate_ip(base, 24, used),
            Some(Ipv4Addr::new(10, 255, 7, 2))
        );
        let all: Vec<_> = (1..=254).map(|i| Ipv4Addr::new(10, 255, 7, i)).collect();
        assert_eq!(allocate_ip(base, 24, all), None);
        assert_eq!(
            allocate_ip(base, 30, [Ipv4Addr::new(10, 255, 7, 1)]),
            Some(Ipv4Addr::new(10, 255, 7, 2))
        );
    }

    #[test]
    fn state_round_trip_is_atomic() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert!(s.load::<Containers>("containers.json").unwrap().is_none());
        let mut c = Containers::default();
        c.containers.insert(
            "h1".into(),
            ContainerRecord {
                handle: "h1".into(),
                app_id: "A".into(),
                space_id: "s".into(),
                org_id: "o".into(),
                instance_index: 0,
                ip: Ipv4Addr::new(10, 255, 7, 1),
                netns: "/var/run/netns/x".into(),
                ifname: "eth0".into(),
                lifecycle: tapestry_switch::Lifecycle::Staging,
                network: Some("net1".into()),
                app_port: None,
                tls_client_auth: false,
                port_mappings: vec![
                    PortMapping {
                        host_port: 61000,
                        container_port: 8080,
                        protocol: Protocol::Tcp,
                    },
                    PortMapping {
                        host_port: 53,
                        container_port: 5353,
                        protocol: Protocol::Udp,
                    },
                ],
            },
        );
        s.store("containers.json", &c).unwrap();
        let back: Containers = s.load("containers.json").unwrap().unwrap();
        assert_eq!(back.containers["h1"], c.containers["h1"]);
        assert!(!s.path(".containers.json.tmp").exists());
    }

    #[test]
    fn containers_keyed_by_handle_load_keyed_by_attachment() {
        let old = r#"{"containers":{"h1":{"handle":"h1","app_id":"A","ip":"10.255.1.2",
            "netns":"/n1","ifname":"eth0"},"h2":{"handle":"h2","app_id":"B","ip":"10.255.1.3",
            "netns":"/n2","ifname":"net1"}}}"#;
        let c: Containers = serde_json::from_str::<Containers>(old).unwrap().rekeyed();
        let keys: Vec<&str> = c.containers.keys().map(String::as_str).collect();
        assert_eq!(keys, ["h1/eth0", "h2/net1"]);
        assert_eq!(c.containers["h2/net1"].ip, Ipv4Addr::new(10, 255, 1, 3));
        // Re-keying twice changes nothing, and one handle may have several attachments.
        let mut c = c.rekeyed();
        let mut second = c.containers["h1/eth0"].clone();
        second.ifname = "eth1".into();
        c.containers.insert(second.key(), second);
        let c = c.rekeyed();
        assert_eq!(c.containers.len(), 3);
        assert_eq!(c.of_handle("h1").count(), 2);
        assert_eq!(c.of_handle("h").count(), 0);
        // Instance handles are unique per cell: plain when attached once.
        let names: Vec<String> = c
            .containers
            .values()
            .map(|r| c.instance_handle(r))
            .collect();
        assert_eq!(names, ["h1/eth0", "h1/eth1", "h2"]);
    }

    #[test]
    fn containers_saved_before_lifecycles_load_as_running() {
        let old = r#"{"containers":{"h1":{"handle":"h1","app_id":"A","space_id":"s","org_id":"o",
            "instance_index":0,"ip":"10.255.7.1","netns":"/var/run/netns/x","ifname":"eth0"}}}"#;
        let c: Containers = serde_json::from_str(old).unwrap();
        assert_eq!(
            c.containers["h1"].lifecycle,
            tapestry_switch::Lifecycle::Running
        );
        assert!(c.containers["h1"].port_mappings.is_empty());
    }

    #[test]
    fn port_mappings_are_stored_in_the_shape_of_cni() {
        let rec = r#"{"handle":"h1","app_id":"A","ip":"10.255.7.1","netns":"/n","ifname":"eth0",
            "port_mappings":[{"hostPort":61001,"containerPort":8080},
                             {"hostPort":61002,"containerPort":53,"protocol":"udp"}]}"#;
        let rec: ContainerRecord = serde_json::from_str(rec).unwrap();
        let m = &rec.port_mappings;
        assert_eq!((m[0].host_port, m[0].container_port), (61001, 8080));
        assert_eq!(m[0].protocol, Protocol::Tcp, "tcp is the default");
        assert_eq!(m[1].protocol, Protocol::Udp);
        let json = serde_json::to_string(&rec).unwrap();
        assert!(json.contains(r#""hostPort":61002,"containerPort":53,"protocol":"udp""#));
        // A record without mappings is written as before.
        let plain = ContainerRecord {
            port_mappings: vec![],
            ..rec
        };
        assert!(!serde_json::to_string(&plain)
            .unwrap()
            .contains("port_mappings"));
    }
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn state_dir_and_files_are_private_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("state");
        // As an older version under umask 000 left it.
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        fs::write(dir.join("lease.json"), b"{}").unwrap();
        fs::set_permissions(dir.join("lease.json"), fs::Permissions::from_mode(0o666)).unwrap();

        let st = StateDir::open(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join("lease.json")), 0o600);
        st.store("containers.json", &Containers::default()).unwrap();
        assert_eq!(mode(&dir.join("containers.json")), 0o600);
        // A new nested dir is created 0700 too.
        let nested = tmp.path().join("a/b");
        StateDir::open(&nested).unwrap();
        assert_eq!(mode(&nested), 0o700);
    }
}
