//! Starting the control plane: configuration checks, data directory, store, both listeners.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ipnet::Ipv4Net;
use rand::RngCore;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::api::{self, token_hash, AppState};
use crate::certs::CellCa;
use crate::error::ControlError;
use crate::listen::Limits;
use crate::model::Principal;
use crate::store::{ops, Mode, Settings, Store};

/// Everything `tapestry control` takes.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub internal_listen: SocketAddr,
    /// `None` / "sqlite": `DIR/tapestry.db`; or `postgres://USER@HOST:PORT/DB`.
    pub database: Option<String>,
    pub overlay_network: Ipv4Net,
    pub subnet_prefix: u8,
    pub max_policies_per_source: usize,
    pub lease_expiry: Duration,
    /// Highest tag handed out; 65535 except in tests.
    pub max_tag: u16,
    /// CF-compatible options: new-app bound, CORS domains, cleanup interval.
    pub cf: crate::cf::CfConfig,
    /// Accept the shared cell certificate (`cell-credentials/`), which may act for any cell;
    /// without it each cell needs its own (`tapestry control cell-credentials`).
    pub allow_shared_cell_cert: bool,
    /// Connection limits of the external API ([`Limits::external`]).
    pub external_limits: Limits,
    /// Connection limits of the internal API ([`Limits::internal`]).
    pub internal_limits: Limits,
}

impl ControlConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> ControlConfig {
        ControlConfig {
            data_dir: data_dir.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 4002)),
            internal_listen: SocketAddr::from(([127, 0, 0, 1], 4003)),
            database: None,
            overlay_network: "10.255.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
            subnet_prefix: 24,
            max_policies_per_source: 150,
            lease_expiry: Duration::from_secs(168 * 3600),
            max_tag: 65535,
            cf: Default::default(),
            allow_shared_cell_cert: false,
            external_limits: Limits::external(),
            internal_limits: Limits::internal(),
        }
    }

    /// Refuses a non-RFC 1918 overlay network or a prefix that leaves no room for a cell.
    pub fn check(&self) -> Result<(), ControlError> {
        let net = self.overlay_network;
        let rfc1918: [Ipv4Net; 3] = [
            Ipv4Net::new([10, 0, 0, 0].into(), 8)
                .map_err(|e| ControlError::Config(e.to_string()))?,
            Ipv4Net::new([172, 16, 0, 0].into(), 12)
                .map_err(|e| ControlError::Config(e.to_string()))?,
            Ipv4Net::new([192, 168, 0, 0].into(), 16)
                .map_err(|e| ControlError::Config(e.to_string()))?,
        ];
        if !rfc1918.iter().any(|r| r.contains(&net)) {
            return Err(ControlError::Config(format!(
                "--overlay-network {net} is not inside an RFC 1918 private range (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16)"
            )));
        }
        if net.trunc() != net {
            return Err(ControlError::Config(format!(
                "--overlay-network {net} has host bits set; did you mean {}?",
                net.trunc()
            )));
        }
        let p = self.subnet_prefix;
        // The first subnet is reserved, so a cell needs at least two; a cell subnet needs room
        // for the VTEP address and at least one container.
        if p <= net.prefix_len() || p > 30 {
            return Err(ControlError::Config(format!(
                "--subnet-prefix {p} leaves no room for a cell in --overlay-network {net}: it must be longer than /{} (the first subnet is reserved) and at most /30",
                net.prefix_len()
            )));
        }
        self.cf.check()?;
        self.external_limits
            .check(
                "external API limits (--max-connections, --max-connections-per-client, timeouts)",
            )
            .map_err(ControlError::Config)?;
        self.internal_limits
            .check("internal API limits (--internal-max-connections, --internal-max-connections-per-client, timeouts)")
            .map_err(ControlError::Config)?;
        if self.max_policies_per_source == 0 {
            return Err(ControlError::Config(
                "--max-policies-per-source must be at least 1".into(),
            ));
        }
        Ok(())
    }

    fn settings(&self) -> Settings {
        let mut s = Settings::new(self.overlay_network, self.subnet_prefix);
        s.max_policies_per_source = self.max_policies_per_source;
        s.leases.expiry_secs = self.lease_expiry.as_secs() as i64;
        s.max_tag = self.max_tag;
        s.max_new_apps_per_request = self.cf.max_new_apps_per_request;
        s
    }
}

/// A running control plane.
pub struct RunningControl {
    pub external_addr: SocketAddr,
    pub internal_addr: SocketAddr,
    /// The Silk controller API's address, with `--silk-listen`.
    pub silk_addr: Option<SocketAddr>,
    /// The network.admin token (also in `DIR/admin.token`).
    pub admin_token: String,
    /// `DIR/cell-credentials`, for [`crate::client::InternalClient::new`].
    pub credentials_dir: PathBuf,
    pub store: Store,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningControl {
    /// Stops both listeners and waits for them (in-flight long-polls are answered).
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn new_token() -> String {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Reads `DIR/admin.token` or writes a new one (0600); makes sure the store knows it.
async fn ensure_admin_token(dir: &Path, store: &Store) -> Result<String, ControlError> {
    let path = dir.join("admin.token");
    let token = match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = new_token();
            write_private(&path, &format!("{t}\n"))?;
            t
        }
    };
    let p = Principal {
        name: "admin".into(),
        scope: crate::SCOPE_ADMIN.into(),
        spaces: vec![],
        subject: None,
        bearer: None,
    };
    let h = token_hash(&token);
    store
        .call(Mode::Write, move |tx| ops::insert_token(tx, &h, &p))
        .await?;
    Ok(token)
}

fn write_private(path: &Path, data: &str) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(ControlError::io(format!("writing {}", path.display())))?;
    f.write_all(data.as_bytes())
        .map_err(ControlError::io(format!("writing {}", path.display())))
}

/// Creates `dir` (and its parents) if needed and makes it 0700, whatever the umask or an older
/// version left: the data dir holds the CA key, the admin token and the database.
pub(crate) fn private_dir(dir: &Path) -> Result<(), ControlError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(ControlError::io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(ControlError::io(
        format!("setting mode 0700 on {}", dir.display()),
    ))
}

/// Opens the store a control plane with `config` uses (for `token create` and tests).
pub async fn open_store(config: &ControlConfig) -> Result<Store, ControlError> {
    private_dir(&config.data_dir)?;
    // SQLite creates the database (and its -wal and -shm files, which copy the database's
    // mode) with the umask's mode: make it first, owner only. It holds token hashes.
    let db = config.data_dir.join("tapestry.db");
    if matches!(config.database.as_deref(), None | Some("sqlite")) {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&db)
            .map_err(ControlError::io(format!("creating {}", db.display())))?;
        for f in ["tapestry.db", "tapestry.db-wal", "tapestry.db-shm"] {
            let p = config.data_dir.join(f);
            if p.exists() {
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).map_err(
                    ControlError::io(format!("setting mode 0600 on {}", p.display())),
                )?;
            }
        }
    }
    Ok(Store::open(
        config.database.as_deref(),
        &config.data_dir,
        config.settings(),
    )
    .await?)
}

/// Issues the credentials of the cell at `underlay_ip` into `out` with the deployment's cell CA
/// (created in `config.data_dir` if this is its first use).
pub fn issue_cell_credentials(
    config: &ControlConfig,
    underlay_ip: std::net::Ipv4Addr,
    out: &Path,
) -> Result<(), ControlError> {
    CellCa::ensure(&config.data_dir)?.issue_cell_credentials(underlay_ip, out)
}

/// Mints a token with `scope` limited to `spaces`, stores its hash, returns the token.
pub async fn create_token(
    store: &Store,
    scope: &str,
    spaces: Vec<String>,
) -> Result<String, ControlError> {
    if scope != crate::SCOPE_ADMIN && scope != crate::SCOPE_WRITE {
        return Err(ControlError::Config(format!(
            "--scope {scope}: must be network.admin or network.write"
        )));
    }
    if scope == crate::SCOPE_WRITE && spaces.is_empty() {
        return Err(ControlError::Config(
            "a network.write token needs at least one --space".into(),
        ));
    }
    let token = new_token();
    let p = Principal {
        name: crate::cf::token_name(),
        scope: scope.into(),
        spaces,
        subject: None,
        bearer: None,
    };
    let h = token_hash(&token);
    store
        .call(Mode::Write, move |tx| ops::insert_token(tx, &h, &p))
        .await?;
    Ok(token)
}

async fn bind(addr: SocketAddr, what: &str) -> Result<TcpListener, ControlError> {
    TcpListener::bind(addr)
        .await
        .map_err(ControlError::io(format!("binding {what} {addr}")))
}

/// Runs the internal API on a runtime (and threads) of its own, so that a flood of the external
/// API, however it loads the main runtime, never delays the cells. The returned task ends when
/// the internal API has stopped.
fn spawn_internal(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    state: AppState,
    limits: Limits,
    stop: watch::Receiver<bool>,
) -> Result<JoinHandle<()>, ControlError> {
    // The listener was bound on the main runtime: move it over as a std socket.
    let std_listener = listener
        .into_std()
        .map_err(ControlError::io("moving the internal listener"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("control-internal")
        .build()
        .map_err(ControlError::io("starting the internal API's runtime"))?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("control-internal".into())
        .spawn(move || {
            rt.block_on(async move {
                match TcpListener::from_std(std_listener) {
                    Ok(l) => {
                        crate::listen::serve(
                            l,
                            Some(tls),
                            api::internal::router(state),
                            limits,
                            stop,
                            "internal API",
                        )
                        .await
                    }
                    Err(e) => tracing::error!("internal API: {e}"),
                }
            });
            // In-flight requests get a moment to finish, as on the main runtime.
            rt.shutdown_timeout(Duration::from_secs(5));
            let _ = done_tx.send(());
        })
        .map_err(ControlError::io("starting the internal API's thread"))?;
    Ok(tokio::spawn(async move {
        let _ = done_rx.await;
    }))
}

/// Starts the control plane: checks the config, prepares the data dir, opens the store,
/// binds both listeners (port 0 allowed) and serves until [`RunningControl::shutdown`].
pub async fn start(config: ControlConfig) -> Result<RunningControl, ControlError> {
    config.check()?;
    let cc = crate::cf::cloud_controller(&config.cf)?;
    let store = open_store(&config).await?;
    let admin_token = ensure_admin_token(&config.data_dir, &store).await?;
    let ca = CellCa::ensure(&config.data_dir)?;
    let tls = Arc::new(ca.server_config()?);
    let identity = Arc::new(crate::identity::InstanceCa::ensure(&config.data_dir)?);
    let ext = bind(config.listen, "--listen").await?;
    let int = bind(config.internal_listen, "--internal-listen").await?;
    let external_addr = ext
        .local_addr()
        .map_err(ControlError::io("local address"))?;
    let internal_addr = int
        .local_addr()
        .map_err(ControlError::io("local address"))?;
    let (shutdown, rx) = watch::channel(false);
    let state = AppState::new(store.clone(), rx.clone())
        .with_identity(identity)
        .with_cors_domains(config.cf.cors_domains.clone())
        .with_uaa(crate::cf::uaa(&config.cf).await?)
        .with_cloud_controller(cc)
        .with_asgs_from_cloud_controller(config.cf.asgs_from_cloud_controller());
    let index_task = state.lists.spawn_updater(store.clone(), rx.clone());
    let cleanup_task = crate::cf::spawn_cleanup(
        store.clone(),
        state.cc.clone(),
        config.cf.cleanup_interval,
        rx.clone(),
    );
    let asg_task = match (config.cf.asg_sync_interval, &state.cc) {
        (Some(every), Some(cc)) => Some(crate::cf::spawn_asg_sync(
            store.clone(),
            cc.clone(),
            every,
            rx.clone(),
        )),
        _ => None,
    };
    let (silk_addr, silk_task) =
        crate::cf::serve_silk(&config.cf, &tls, &state, &config.internal_limits, &rx).await?;
    let ext_task = tokio::spawn(crate::listen::serve(
        ext,
        None,
        api::external::router(state.clone()),
        config.external_limits.clone(),
        rx.clone(),
        "external API",
    ));
    // Cells' writes go before the external API's in the writer queue.
    let mut int_state = state.clone();
    int_state.store = store.for_cells();
    int_state.allow_shared_cell_cert = config.allow_shared_cell_cert;
    let int_task = spawn_internal(int, tls, int_state, config.internal_limits.clone(), rx)?;
    tracing::info!(
        "control plane: external API http://{external_addr}, internal API (mTLS) https://{internal_addr}, database {}",
        store.backend_name()
    );
    Ok(RunningControl {
        external_addr,
        internal_addr,
        silk_addr,
        admin_token,
        credentials_dir: crate::certs::credentials_dir(&config.data_dir),
        store,
        shutdown,
        tasks: [ext_task, int_task, index_task, cleanup_task]
            .into_iter()
            .chain(silk_task)
            .chain(asg_task)
            .collect(),
    })
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn sqlite_database_is_private_whatever_the_umask() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let store = open_store(&ControlConfig::new(&data)).await.unwrap();
        drop(store);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join("tapestry.db")), 0o600);
        // An older version's world-readable database is tightened on the next open.
        std::fs::set_permissions(
            data.join("tapestry.db"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let store = open_store(&ControlConfig::new(&data)).await.unwrap();
        assert_eq!(mode(&data.join("tapestry.db")), 0o600);
        for f in ["tapestry.db-wal", "tapestry.db-shm"] {
            let p = data.join(f);
            if p.exists() {
                assert_eq!(mode(&p), 0o600, "{f}");
            }
        }
        drop(store);
    }
}

#[cfg(test)]
mod health_tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::error::StoreError;
    use crate::store::{Backend, Tx};

    /// SQLite whose writes fail while `fail` is set, as on a full disk.
    struct Flaky {
        inner: Arc<dyn Backend>,
        fail: Arc<AtomicBool>,
    }

    impl Backend for Flaky {
        fn run(
            &self,
            mode: Mode,
            f: &mut dyn FnMut(&mut dyn Tx) -> Result<(), StoreError>,
        ) -> Result<Option<u64>, StoreError> {
            if mode == Mode::Write && self.fail.load(Ordering::Relaxed) {
                return Err(StoreError::Db("database or disk is full".into()));
            }
            self.inner.run(mode, f)
        }
        fn name(&self) -> &'static str {
            "sqlite"
        }
    }

    async fn health(router: &axum::Router) -> (u16, String) {
        let r = router
            .clone()
            .oneshot(Request::get("/health").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn health_is_503_while_writes_fail_and_200_again_after() {
        let tmp = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let inner = Store::sqlite_backend(&tmp.path().join("t.db")).unwrap();
        let store = Store::from_backend(
            Arc::new(Flaky {
                inner,
                fail: fail.clone(),
            }),
            ControlConfig::new(tmp.path()).settings(),
        );
        let (_tx, rx) = watch::channel(false);
        let router = api::external::router(AppState::new(store.clone(), rx));
        assert_eq!(health(&router).await.0, 200);

        fail.store(true, Ordering::Relaxed);
        let p = Principal {
            name: "t".into(),
            scope: crate::SCOPE_ADMIN.into(),
            spaces: vec![],
            subject: None,
            bearer: None,
        };
        let e = store
            .call(Mode::Write, move |tx| ops::insert_token(tx, "h", &p))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("disk is full"), "{e}");
        let (status, body) = health(&router).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("not writable"), "{body}");
        assert!(body.contains("disk is full"), "{body}");

        // Writable again: the probe write succeeds and clears the state.
        fail.store(false, Ordering::Relaxed);
        assert_eq!(health(&router).await.0, 200);
        assert!(store.write_error().is_none());
    }

    #[tokio::test]
    async fn an_abandoned_write_stops_and_rolls_back() {
        let tmp = tempfile::tempdir().unwrap();
        let inner = Store::sqlite_backend(&tmp.path().join("t.db")).unwrap();
        let store = Store::from_backend(inner, ControlConfig::new(tmp.path()).settings());
        let started = Arc::new(std::sync::Barrier::new(2));
        let release = Arc::new(std::sync::Barrier::new(2));
        let (s2, r2) = (started.clone(), release.clone());
        let s = store.clone();
        let call = async move {
            s.call(Mode::Write, move |tx| {
                tx.exec(
                    "INSERT INTO security_groups (name, body) VALUES ('a', '{}')",
                    &[],
                )?;
                s2.wait();
                r2.wait();
                // The client is gone by now: this statement is refused and all rolls back.
                tx.exec(
                    "INSERT INTO security_groups (name, body) VALUES ('b', '{}')",
                    &[],
                )?;
                Ok(())
            })
            .await
        };
        let task = tokio::spawn(call);
        tokio::task::spawn_blocking(move || started.wait())
            .await
            .unwrap();
        task.abort();
        let _ = task.await;
        tokio::task::spawn_blocking(move || release.wait())
            .await
            .unwrap();
        // The writer is free again once the rolled-back transaction ended; nothing was kept.
        let n = store
            .call(Mode::Write, |tx| {
                tx.query("SELECT COUNT(*) FROM security_groups", &[])
                    .map(|r| r[0][0].i())
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 0);
        assert!(store.write_error().is_none());
    }
}
