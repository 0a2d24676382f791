//! Instance identity credentials (CF's CF_INSTANCE_CERT / CF_INSTANCE_KEY) for attached
//! containers: the cell makes an ECDSA P-256 key and a CSR, the control plane signs it
//! (`POST /internal/instance_identity`), and the cell keeps the result in
//! `STATE_DIR/instances/NAME/{instance.crt,instance.key,ca.crt}` (folders 0700, key 0600, each
//! file replaced atomically) and in the in-memory [`CredentialRegistry`] the local stack's
//! terminator on port 61443 reads. NAME is the container handle (`HANDLE@IFNAME` for an
//! attachment other than eth0; a handle that cannot be a file name is hashed).
//!
//! Certificates are renewed at two thirds of their lifetime with a fresh key. An attach never
//! fails for want of credentials: when the control plane does not answer, the container is
//! attached without them (no 61443 yet) and a background task keeps asking.
use std::collections::HashMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tapestry_policy::client::InternalClient;
use tapestry_policy::identity::IdentityRequest;

use super::state::ContainerRecord;
use super::Cell;

/// How long an attach waits for the control plane to sign before it answers without.
const ATTACH_WAIT: Duration = Duration::from_secs(2);
/// Longest wait between retries while the control plane does not answer.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// Where an attachment's credentials are (or will be, while [`IdentityPaths::pending`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityPaths {
    pub instance_cert: PathBuf,
    pub instance_key: PathBuf,
    pub instance_ca: PathBuf,
    /// No certificate yet: the files appear when the control plane signs one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub instance_identity_pending: bool,
}

/// One attachment's current credentials (PEM).
#[derive(Debug)]
pub struct InstanceCredentials {
    pub handle: String,
    pub ifname: String,
    pub ip: Ipv4Addr,
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
    /// Unix seconds: when the cell received it, and when it expires.
    pub issued_at: u64,
    pub not_after: u64,
    pub paths: IdentityPaths,
}

impl InstanceCredentials {
    /// Unix seconds at which the cell renews it: two thirds of the way to expiry.
    pub fn renew_at(&self) -> u64 {
        self.issued_at + self.not_after.saturating_sub(self.issued_at) * 2 / 3
    }

    /// The credentials as the 61443 terminator takes them (chain, key, and the CA bundle that
    /// client certificates are verified against).
    pub fn tls_credentials(
        &self,
    ) -> Result<tapestry_tls_proxy::Credentials, tapestry_tls_proxy::ConfigError> {
        tapestry_tls_proxy::Credentials::from_pem(
            self.cert_pem.as_bytes(),
            self.key_pem.as_bytes(),
            Some(self.ca_pem.as_bytes()),
        )
    }
}

/// The credentials of every attached container, by container IP. Readers never wait: the map
/// is an immutable snapshot swapped whole on issue, renewal and detach.
///
/// A driver that terminates TLS keeps, per terminator, the `Arc<InstanceCredentials>` it was
/// built from; when [`CredentialRegistry::generation`] moved, it looks its IP up again and
/// calls `TerminatorConfig::reload` if the `Arc` is another one (`Arc::ptr_eq`), drops the
/// terminator if the IP is gone, and builds one for an IP that has credentials now.
#[derive(Default)]
pub struct CredentialRegistry {
    current: ArcSwap<HashMap<Ipv4Addr, Arc<InstanceCredentials>>>,
    generation: AtomicU64,
}

impl CredentialRegistry {
    /// The current credentials of the container with address `ip`.
    pub fn get(&self, ip: Ipv4Addr) -> Option<Arc<InstanceCredentials>> {
        self.current.load().get(&ip).cloned()
    }

    /// The current credentials of the container `handle` (its attachments, by IP).
    pub fn by_handle(&self, handle: &str) -> Vec<Arc<InstanceCredentials>> {
        let map = self.current.load();
        let mut v: Vec<_> = map
            .values()
            .filter(|c| c.handle == handle)
            .cloned()
            .collect();
        v.sort_by_key(|c| c.ip);
        v
    }

    /// Every container's credentials, as one consistent snapshot.
    pub fn snapshot(&self) -> Arc<HashMap<Ipv4Addr, Arc<InstanceCredentials>>> {
        self.current.load_full()
    }

    /// Moves on every change (issue, renewal, removal): cheap to poll.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn put(&self, c: InstanceCredentials) {
        let c = Arc::new(c);
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(c.ip, c.clone());
            m
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn remove(&self, ip: Ipv4Addr) {
        if self.get(ip).is_none() {
            return;
        }
        self.current.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(&ip);
            m
        });
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The cell's identity state: the registry, the client, the renewal task's wake-up.
pub struct Identity {
    pub registry: Arc<CredentialRegistry>,
    /// Asked of the control plane (`--instance-cert-lifetime`); its default (24 h) otherwise.
    lifetime: Option<Duration>,
    client: InternalClient,
    rt: tokio::runtime::Handle,
    wake: tokio::sync::Notify,
}

impl Identity {
    pub fn new(
        registry: Arc<CredentialRegistry>,
        client: InternalClient,
        lifetime: Option<Duration>,
        rt: tokio::runtime::Handle,
    ) -> Identity {
        Identity {
            registry,
            lifetime,
            client,
            rt,
            wake: tokio::sync::Notify::new(),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The folder name of an attachment's credentials under `instances/`.
pub fn dir_name(handle: &str, ifname: &str) -> String {
    let name = if ifname == "eth0" {
        handle.to_string()
    } else {
        format!("{handle}@{ifname}")
    };
    let plain = name.len() <= 200
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.@:".contains(&b));
    if plain {
        name
    } else {
        use sha2::Digest;
        format!(
            "x-{}",
            hex::encode(&sha2::Sha256::digest(name.as_bytes())[..16])
        )
    }
}

/// Metadata written after the PEM files: what the cell needs to resume after a restart.
#[derive(Serialize, Deserialize)]
struct Meta {
    handle: String,
    ifname: String,
    ip: Ipv4Addr,
    issued_at: u64,
    not_after: u64,
}

fn private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))
}

/// Replaces `path` atomically: a temporary file beside it (mode `mode`), fsync, rename.
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// A fresh ECDSA P-256 key and a CSR for it: (key PEM, CSR PEM).
pub fn key_and_csr(handle: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .context("generating an ECDSA P-256 key")?;
    let mut params = rcgen::CertificateParams::default();
    if let Ok(cn) = rcgen::string::Ia5String::try_from(handle.to_string()) {
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn.as_str());
    }
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .context("making the certificate request")?;
    Ok((key.serialize_pem(), csr))
}

impl Cell {
    fn identity_dir(&self, rec: &ContainerRecord) -> PathBuf {
        self.state
            .path("instances")
            .join(dir_name(&rec.handle, &rec.ifname))
    }

    /// The attach reply's credential paths.
    pub(super) fn identity_paths(&self, rec: &ContainerRecord) -> IdentityPaths {
        let dir = self.identity_dir(rec);
        IdentityPaths {
            instance_cert: dir.join("instance.crt"),
            instance_key: dir.join("instance.key"),
            instance_ca: dir.join("ca.crt"),
            instance_identity_pending: self.identity.registry.get(rec.ip).is_none(),
        }
    }

    /// At attach: asks for the credentials and waits up to [`ATTACH_WAIT`] when the control
    /// plane is reachable; otherwise (or on failure) the renewal task keeps trying. Either way
    /// the task is woken: it schedules the renewal.
    pub(super) fn identity_at_attach(&self, rec: &ContainerRecord) {
        let connected = self.lock().control.connected;
        if connected && tokio::runtime::Handle::try_current().is_err() {
            let r = self.identity.rt.block_on(async {
                tokio::time::timeout(ATTACH_WAIT, self.issue_identity(rec)).await
            });
            match r {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(handle = %rec.handle, "instance identity: {e:#}; retrying in the background")
                }
                Err(_) => {
                    tracing::warn!(handle = %rec.handle, "instance identity: the control plane did not answer in {ATTACH_WAIT:?}; retrying in the background")
                }
            }
        }
        self.identity.wake.notify_one();
    }

    /// Drops an attachment's credentials: from the registry, then its folder.
    pub(super) fn forget_identity(&self, rec: &ContainerRecord) {
        self.identity.registry.remove(rec.ip);
        let dir = self.identity_dir(rec);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::error!("removing {}: {e}", dir.display()),
        }
    }

    /// Gets a certificate for `rec` and installs it, unless `rec` was detached meanwhile.
    async fn issue_identity(&self, rec: &ContainerRecord) -> Result<()> {
        let (key_pem, csr) = key_and_csr(&rec.handle)?;
        let req = IdentityRequest {
            csr,
            handle: rec.handle.clone(),
            ip: rec.ip.to_string(),
            app_id: rec.app_id.clone(),
            space_id: rec.space_id.clone(),
            org_id: rec.org_id.clone(),
            lifetime_secs: self.identity.lifetime.map(|d| d.as_secs()),
        };
        let issued = self
            .identity
            .client
            .instance_identity(&req)
            .await
            .context("requesting the instance identity certificate")?;
        let inner = self.lock();
        let still = inner.containers.containers.get(&rec.key());
        if still.is_none_or(|r| r.ip != rec.ip) {
            return Ok(());
        }
        let dir = self.identity_dir(rec);
        private_dir(&self.state.path("instances"))?;
        private_dir(&dir)?;
        let paths = self.identity_paths(rec);
        write_atomic(&paths.instance_key, key_pem.as_bytes(), 0o600)?;
        write_atomic(&paths.instance_cert, issued.certificate.as_bytes(), 0o644)?;
        write_atomic(&paths.instance_ca, issued.ca.as_bytes(), 0o644)?;
        let meta = Meta {
            handle: rec.handle.clone(),
            ifname: rec.ifname.clone(),
            ip: rec.ip,
            issued_at: now_secs(),
            not_after: issued.not_after,
        };
        write_atomic(
            &dir.join("identity.json"),
            &serde_json::to_vec(&meta)?,
            0o600,
        )?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        let creds = InstanceCredentials {
            handle: meta.handle,
            ifname: meta.ifname,
            ip: meta.ip,
            cert_pem: issued.certificate,
            key_pem,
            ca_pem: issued.ca,
            issued_at: meta.issued_at,
            not_after: meta.not_after,
            paths: IdentityPaths {
                instance_identity_pending: false,
                ..paths
            },
        };
        tracing::info!(handle = %rec.handle, ip = %rec.ip, not_after = creds.not_after, "instance identity certificate installed");
        self.identity.registry.put(creds);
        Ok(())
    }

    /// After a restart: credentials on disk that are still valid go back into the registry;
    /// folders of containers this cell no longer has are removed.
    pub fn load_identities(&self) {
        let inner = self.lock();
        let mut keep = std::collections::HashSet::new();
        for rec in inner.containers.containers.values() {
            let dir = self.identity_dir(rec);
            keep.insert(dir.clone());
            let paths = self.identity_paths(rec);
            let read = |p: &Path| std::fs::read_to_string(p).ok();
            let meta: Option<Meta> =
                read(&dir.join("identity.json")).and_then(|s| serde_json::from_str(&s).ok());
            let (Some(meta), Some(cert_pem), Some(key_pem), Some(ca_pem)) = (
                meta,
                read(&paths.instance_cert),
                read(&paths.instance_key),
                read(&paths.instance_ca),
            ) else {
                continue;
            };
            if meta.ip != rec.ip || meta.not_after <= now_secs() {
                continue;
            }
            self.identity.registry.put(InstanceCredentials {
                handle: rec.handle.clone(),
                ifname: rec.ifname.clone(),
                ip: rec.ip,
                cert_pem,
                key_pem,
                ca_pem,
                issued_at: meta.issued_at,
                not_after: meta.not_after,
                paths: IdentityPaths {
                    instance_identity_pending: false,
                    ..paths
                },
            });
        }
        drop(inner);
        if let Ok(entries) = std::fs::read_dir(self.state.path("instances")) {
            for e in entries.flatten() {
                if !keep.contains(&e.path()) {
                    tracing::info!("removing stale instance credentials {}", e.path().display());
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        self.identity.wake.notify_one();
    }

    /// Attachments without credentials or due for renewal.
    fn identity_due(&self, now: u64) -> Vec<ContainerRecord> {
        let inner = self.lock();
        inner
            .containers
            .containers
            .values()
            .filter(|r| {
                self.identity
                    .registry
                    .get(r.ip)
                    .is_none_or(|c| c.renew_at() <= now)
            })
            .cloned()
            .collect()
    }
}

/// Runs forever: issues missing credentials (retrying with back-off) and renews each
/// certificate at two thirds of its lifetime.
pub async fn run(cell: Arc<Cell>) {
    let mut retry = Duration::from_secs(1);
    loop {
        let mut failed = false;
        for rec in cell.identity_due(now_secs()) {
            if let Err(e) = cell.issue_identity(&rec).await {
                tracing::warn!(handle = %rec.handle, "instance identity: {e:#}; retrying in {retry:?}");
                failed = true;
            }
        }
        let next_renewal = cell
            .identity
            .registry
            .snapshot()
            .values()
            .map(|c| c.renew_at())
            .min()
            .map(|t| Duration::from_secs(t.saturating_sub(now_secs()).max(1)));
        let wait = if failed {
            let w = retry;
            retry = (retry * 2).min(MAX_RETRY);
            next_renewal.map_or(w, |n| n.min(w))
        } else {
            retry = Duration::from_secs(1);
            next_renewal.unwrap_or(Duration::from_secs(3600))
        };
        tokio::select! {
            _ = cell.identity.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dir_names_are_safe_file_names() {
        assert_eq!(dir_name("c0ffee-1", "eth0"), "c0ffee-1");
        assert_eq!(dir_name("c0ffee-1", "net1"), "c0ffee-1@net1");
        for bad in ["..", ".", ".hidden", "a b", &"x".repeat(250), "é"] {
            let n = dir_name(bad, "eth0");
            assert!(n.starts_with("x-") && n.len() == 34, "{bad:?} -> {n}");
        }
        assert_ne!(dir_name("..", "eth0"), dir_name(".", "eth0"));
    }

    #[test]
    fn renewal_is_at_two_thirds() {
        let c = InstanceCredentials {
            handle: "h".into(),
            ifname: "eth0".into(),
            ip: Ipv4Addr::new(10, 255, 1, 2),
            cert_pem: String::new(),
            key_pem: String::new(),
            ca_pem: String::new(),
            issued_at: 1000,
            not_after: 1000 + 86_400,
            paths: IdentityPaths {
                instance_cert: "c".into(),
                instance_key: "k".into(),
                instance_ca: "a".into(),
                instance_identity_pending: false,
            },
        };
        assert_eq!(c.renew_at(), 1000 + 57_600);
    }

    #[test]
    fn registry_swaps_and_counts_changes() {
        let r = CredentialRegistry::default();
        let ip = Ipv4Addr::new(10, 255, 1, 2);
        assert!(r.get(ip).is_none());
        let g0 = r.generation();
        let make = |n: &str| InstanceCredentials {
            handle: "h".into(),
            ifname: "eth0".into(),
            ip,
            cert_pem: n.into(),
            key_pem: String::new(),
            ca_pem: String::new(),
            issued_at: 0,
            not_after: 10,
            paths: IdentityPaths {
                instance_cert: "c".into(),
                instance_key: "k".into(),
                instance_ca: "a".into(),
                instance_identity_pending: false,
            },
        };
        r.put(make("one"));
        let first = r.get(ip).unwrap();
        r.put(make("two"));
        assert_eq!(first.cert_pem, "one", "a reader keeps what it loaded");
        assert_eq!(r.get(ip).unwrap().cert_pem, "two");
        assert_eq!(r.by_handle("h").len(), 1);
        assert_eq!(r.generation(), g0 + 2);
        r.remove(ip);
        r.remove(ip);
        assert!(r.get(ip).is_none());
        assert_eq!(r.generation(), g0 + 3);
    }

    #[test]
    fn key_and_csr_are_p256_and_parse() {
        let (key, csr) = key_and_csr("c0ffee-1").unwrap();
        assert!(key.contains("PRIVATE KEY") && csr.contains("CERTIFICATE REQUEST"));
        let kp = rcgen::KeyPair::from_pem(&key).unwrap();
        assert!(kp.is_compatible(&rcgen::PKCS_ECDSA_P256_SHA256));
    }

    #[test]
    fn atomic_writes_leave_no_temp_and_set_modes() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("instance.key");
        write_atomic(&p, b"one", 0o600).unwrap();
        write_atomic(&p, b"two", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
    }
}
