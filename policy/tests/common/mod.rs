//! Test harness: an in-process control plane on SQLite or PostgreSQL.
#![allow(dead_code)]

use serde_json::Value;
use tapestry_policy::client::{ExternalClient, InternalClient};
use tapestry_policy::{ControlConfig, RunningControl};

#[derive(Clone, Debug)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh database URL on the test PostgreSQL server named by TAPESTRY_TEST_POSTGRES.
///
/// The PostgreSQL tests are `#[ignore = "needs PostgreSQL ..."]`, so a plain `cargo nextest run`
/// reports them as skipped; `scripts/test.sh` starts a server and runs them. Run without the
/// server, they fail here: a test never passes without testing.
pub async fn fresh_postgres() -> String {
    let base = std::env::var("TAPESTRY_TEST_POSTGRES").unwrap_or_else(|_| {
        panic!(
            "this test needs PostgreSQL: set TAPESTRY_TEST_POSTGRES=postgres://USER@HOST:PORT/DB \
             (scripts/test.sh starts a throwaway server and sets it)"
        )
    });
    let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
        .await
        .expect("connecting to TAPESTRY_TEST_POSTGRES");
    tokio::spawn(conn);
    let name = format!("tapestry_test_{:016x}", rand::random::<u64>());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (prefix, _) = base.rsplit_once('/').expect("URL has a database");
    format!("{prefix}/{name}")
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: ControlConfig,
    pub control: Option<RunningControl>,
    pub http: reqwest::Client,
}

impl Harness {
    /// Starts a control plane on `db`; PostgreSQL needs TAPESTRY_TEST_POSTGRES (see `fresh_postgres`).
    pub async fn new(db: Db, tweak: impl FnOnce(&mut ControlConfig)) -> Harness {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = ControlConfig::new(dir.path());
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.internal_listen = "127.0.0.1:0".parse().unwrap();
        // Most tests act for several cells with the shared certificate; policy/tests/internal.rs
        // turns this off to test per-cell certificates.
        config.allow_shared_cell_cert = true;
        if let Db::Postgres = db {
            config.database = Some(fresh_postgres().await);
        }
        tweak(&mut config);
        let control = tapestry_policy::start(config.clone()).await.expect("start");
        Harness {
            dir,
            config,
            control: Some(control),
            http: reqwest::Client::new(),
        }
    }

    pub fn c(&self) -> &RunningControl {
        self.control.as_ref().expect("running")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.c().external_addr)
    }

    pub fn admin(&self) -> ExternalClient {
        ExternalClient::new(
            &format!("http://{}", self.c().external_addr),
            &self.c().admin_token,
        )
        .unwrap()
    }

    pub fn internal(&self) -> InternalClient {
        InternalClient::new(
            &format!("https://{}", self.c().internal_addr),
            &self.c().credentials_dir,
        )
        .unwrap()
    }

    /// Stops and starts again on the same data dir and database.
    pub async fn restart(&mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
        self.control = Some(
            tapestry_policy::start(self.config.clone())
                .await
                .expect("restart"),
        );
    }

    /// A raw request: (status, JSON body or Null, WWW-Authenticate header).
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> (u16, Value, Option<String>) {
        let mut r = self.http.request(method, self.url(path));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.header("content-type", "application/json").body(b);
        }
        let resp = r.send().await.expect("request");
        let status = resp.status().as_u16();
        let www = resp
            .headers()
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            www,
        )
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let t = self.c().admin_token.clone();
        let (s, v, _) = self.raw(reqwest::Method::GET, path, Some(&t), None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let t = self.c().admin_token.clone();
        let (s, v, _) = self
            .raw(
                reqwest::Method::POST,
                path,
                Some(&t),
                Some(body.to_string().into_bytes()),
            )
            .await;
        (s, v)
    }

    pub async fn shutdown(mut self) {
        if let Some(c) = self.control.take() {
            c.shutdown().await;
        }
    }
}

pub fn policy(src: &str, dst: &str, port: u16) -> Value {
    serde_json::json!({"source":{"id":src},"destination":{"id":dst,"protocol":"tcp","ports":{"start":port,"end":port}}})
}

pub fn policies(list: Vec<Value>) -> Value {
    serde_json::json!({ "policies": list })
}

/// Runs each case on SQLite and on PostgreSQL (the PostgreSQL cases are ignored, i.e. reported
/// as skipped, unless run with `--run-ignored all`, as scripts/test.sh does when it has a server).
#[macro_export]
macro_rules! dual {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Db::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                #[ignore = "needs PostgreSQL (TAPESTRY_TEST_POSTGRES; scripts/test.sh starts one)"]
                async fn $name() {
                    super::$name($crate::common::Db::Postgres).await
                }
            )*
        }
    };
}
