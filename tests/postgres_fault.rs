//! A PostgreSQL restart under concurrent policy writes. The control plane (`tapestry control
//! --database postgres://...`, a real process) runs on its own throwaway cluster, made here with
//! initdb and pg_ctl from TAPESTRY_TEST_PG_BIN (scripts/test.sh exports the directory it found;
//! as root the cluster runs as `nobody`, since PostgreSQL refuses root), so restarting it
//! disturbs no other test. The server is restarted with `pg_ctl restart -m fast`, then stopped
//! with `-m immediate` (a crash: no clean shutdown) and started again, all without restarting the
//! control plane.
mod support;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Method;
use support::{policy, runtime, Control};
use tapestry_policy::client::ExternalClient;
use tapestry_policy::error::ClientError;

/// A PostgreSQL cluster in a temporary directory on a loopback port; stopped (immediate) and
/// removed when dropped.
struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// (uid, gid) of `nobody` when the test runs as root.
    owner: Option<(u32, u32)>,
}

/// `nobody`'s uid and gid from /etc/passwd.
fn nobody() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let line = passwd
        .lines()
        .find(|l| l.starts_with("nobody:"))
        .expect("/etc/passwd has no user nobody to run PostgreSQL as (it refuses root)");
    let f: Vec<&str> = line.split(':').collect();
    (f[2].parse().unwrap(), f[3].parse().unwrap())
}

impl Cluster {
    fn start() -> Cluster {
        let bin = PathBuf::from(std::env::var_os("TAPESTRY_TEST_PG_BIN").unwrap_or_else(|| {
            panic!(
                "this test needs PostgreSQL's server programs: set TAPESTRY_TEST_PG_BIN to the \
                 directory holding initdb and pg_ctl (scripts/test.sh finds or installs them and \
                 sets it)"
            )
        }));
        for prog in ["initdb", "pg_ctl"] {
            assert!(
                bin.join(prog).is_file(),
                "TAPESTRY_TEST_PG_BIN={} has no {prog}",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("tapestry-pgfault.")
            .tempdir()
            .unwrap();
        let owner = tapestry::demo::testbed::is_root().then(nobody);
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        // A free loopback port (the shared test cluster has its own).
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = Cluster {
            bin,
            dir,
            port,
            owner,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
            ],
        );
        c.start_server();
        c
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the server programs (as `nobody` under root); panics with its output and the
    /// server log if it fails.
    fn run(&self, prog: &str, args: &[&str]) {
        let mut cmd = Command::new(self.bin.join(prog));
        cmd.args(args).current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().unwrap();
        if !out.status.success() {
            let log = std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default();
            panic!(
                "{prog} {args:?} failed: {}\n{}\n--- server log ---\n{log}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    fn pg_ctl(&self, action: &str, mode: Option<&str>) {
        let data = self.data();
        let log = self.dir.path().join("log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            self.dir.path().display()
        );
        let mut args = vec![
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-w",
        ];
        if let Some(m) = mode {
            args.extend(["-m", m]);
        }
        args.push(action);
        self.run("pg_ctl", &args);
    }

    fn start_server(&self) {
        self.pg_ctl("start", None);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut cmd = Command::new(self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "stop"])
            .current_dir(self.dir.path());
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        let _ = cmd.output();
    }
}

/// What the writers saw.
#[derive(Default)]
struct Outcomes {
    /// Sources of policies whose write was answered 2xx.
    acked: Vec<String>,
    /// Writes answered with an error status: (status, message).
    refused: Vec<(u16, String)>,
    /// Writes that got no answer (a timeout, a broken connection).
    unanswered: Vec<String>,
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `/health`: Ok(()) for 200, Err((status, message)) otherwise.
fn health(rt: &tokio::runtime::Runtime, client: &ExternalClient) -> Result<(), (u16, String)> {
    match rt.block_on(client.request(Method::GET, "/health", None)) {
        Ok(_) => Ok(()),
        Err(ClientError::Status { status, message }) => Err((status, message)),
        Err(e) => Err((0, e.to_string())),
    }
}

#[test]
#[ignore = "needs PostgreSQL's server programs (TAPESTRY_TEST_PG_BIN; scripts/test.sh sets it)"]
fn postgres_restart_under_writes_keeps_every_acknowledged_write() {
    let pg = Cluster::start();
    let data = tempfile::tempdir().unwrap();
    let url = pg.url();
    let ctl = Control::start(data.path(), &["--database", &url]);
    let client = ctl.admin(data.path());
    let rt = runtime();
    assert_eq!(health(&rt, &client), Ok(()), "healthy before the faults");

    let seen = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..6)
        .map(|w| {
            let (client, seen, stop) = (client.clone(), seen.clone(), stop.clone());
            rt.spawn(async move {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let src = format!("app-w{w}-{n}");
                    n += 1;
                    let r = client.create_policies(&[policy(&src)]).await;
                    let failed = r.is_err();
                    {
                        let mut s = seen.lock().unwrap();
                        match r {
                            Ok(()) => s.acked.push(src),
                            Err(ClientError::Status { status, message }) => {
                                s.refused.push((status, message))
                            }
                            Err(e) => s.unanswered.push(format!("{src}: {e}")),
                        }
                    }
                    if failed {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            })
        })
        .collect();
    let acked = || seen.lock().unwrap().acked.len();
    let grows_by = |n: usize, what: &str| {
        let from = acked();
        wait_for(what, Duration::from_secs(60), || acked() >= from + n);
    };

    grows_by(50, "writes before the faults");
    // 1. A fast restart: PostgreSQL ends every session, then starts again.
    pg.pg_ctl("restart", Some("fast"));
    grows_by(
        50,
        "writes succeed again after `pg_ctl restart -m fast` (same control plane)",
    );

    // 2. A crash: an immediate stop, down while the writers keep writing, then a start (with
    // crash recovery).
    pg.pg_ctl("stop", Some("immediate"));
    let refused_before = seen.lock().unwrap().refused.len();
    let acked_down = acked();
    let outage = rt.block_on(client.create_policies(&[policy("app-during-outage")]));
    match &outage {
        Err(ClientError::Status { status, message }) => {
            assert!(
                (500..600).contains(status),
                "a write while PostgreSQL is down: {status} {message}"
            );
            assert!(
                message.contains("PostgreSQL") || message.contains("database"),
                "the error names the database: {message}"
            );
        }
        other => panic!("a write while PostgreSQL is down was not a 5xx: {other:?}"),
    }
    let unhealthy = health(&rt, &client).expect_err("/health while PostgreSQL is down");
    assert_eq!(
        unhealthy.0, 503,
        "/health while PostgreSQL is down: {unhealthy:?}"
    );
    wait_for(
        "the writers see the outage",
        Duration::from_secs(30),
        || seen.lock().unwrap().refused.len() >= refused_before + 10,
    );
    let acked_while_down = acked() - acked_down;
    pg.start_server();
    wait_for(
        "/health answers 200 after PostgreSQL is back",
        Duration::from_secs(60),
        || health(&rt, &client).is_ok(),
    );
    grows_by(
        50,
        "writes succeed again after the immediate stop and start (same control plane)",
    );

    stop.store(true, Ordering::Relaxed);
    rt.block_on(async {
        for w in writers {
            tokio::time::timeout(Duration::from_secs(70), w)
                .await
                .expect("a writer did not finish")
                .unwrap();
        }
    });
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    let listed: std::collections::HashSet<String> = rt
        .block_on(client.list_policies())
        .unwrap()
        .into_iter()
        .map(|p| p.source.id)
        .collect();
    let lost: Vec<&String> = seen.acked.iter().filter(|a| !listed.contains(*a)).collect();
    let statuses: std::collections::BTreeSet<u16> = seen.refused.iter().map(|r| r.0).collect();
    eprintln!(
        "PostgreSQL restarts: {} writes acknowledged ({acked_while_down} while it was stopped), \
         {} refused (statuses {statuses:?}; e.g. {:?}), {} unanswered; {} policies listed after, \
         {} acknowledged writes lost",
        seen.acked.len(),
        seen.refused.len(),
        seen.refused.first().map(|r| &r.1),
        seen.unanswered.len(),
        listed.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    assert!(
        seen.unanswered.is_empty(),
        "writes that got no answer: {:?}",
        seen.unanswered
    );
    let not_5xx: Vec<_> = seen
        .refused
        .iter()
        .filter(|r| !(500..600).contains(&r.0))
        .collect();
    assert!(
        not_5xx.is_empty(),
        "writes refused with other than 5xx: {not_5xx:?}"
    );
}
