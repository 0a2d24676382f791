//! Two replicas on one PostgreSQL; configuration checks; data-dir files.
mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::{fresh_postgres, policies, policy};
use tapestry_policy::client::InternalClient;
use tapestry_policy::ControlConfig;

fn config(dir: &std::path::Path, db: Option<String>) -> ControlConfig {
    let mut c = ControlConfig::new(dir);
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.internal_listen = "127.0.0.1:0".parse().unwrap();
    c.database = db;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (TAPESTRY_TEST_POSTGRES; scripts/test.sh starts one)"]
async fn postgres_two_replicas_share_data_and_feed() {
    let url = fresh_postgres().await;
    let dir = tempfile::tempdir().unwrap();
    // Both replicas share the data dir's credentials (as a deployment would share them).
    let a = tapestry_policy::start(config(dir.path(), Some(url.clone())))
        .await
        .unwrap();
    let b = tapestry_policy::start(config(dir.path(), Some(url)))
        .await
        .unwrap();
    let cell = "10.0.0.1".parse().unwrap();
    // A cell's own certificate, from the CA both replicas share.
    let creds = dir.path().join("cell-10.0.0.1");
    tapestry_policy::issue_cell_credentials(&config(dir.path(), None), cell, &creds).unwrap();
    let cb = InternalClient::new(&format!("https://{}", b.internal_addr), &creds).unwrap();
    let first = cb.feed(cell, None, Duration::ZERO).await.unwrap();
    let since = first.version;
    let waiter = tokio::spawn(async move {
        cb.feed(cell, Some(since), Duration::from_secs(20))
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    let http = reqwest::Client::new();
    let r = http
        .post(format!(
            "http://{}/networking/v1/external/policies",
            a.external_addr
        ))
        .bearer_auth(&a.admin_token)
        .json(&policies(vec![policy("A", "B", 80)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = waiter.await.unwrap();
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "replica B's subscriber saw A's change after {took:?}"
    );
    assert!(got
        .changes
        .iter()
        .any(|c| c.value["destination"]["id"] == "B"));
    // B serves the same data.
    let v: serde_json::Value = http
        .get(format!(
            "http://{}/networking/v1/external/policies",
            b.external_addr
        ))
        .bearer_auth(&b.admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["total_policies"], 1);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn refuses_bad_networks() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path(), None);
    c.overlay_network = "8.8.0.0/16".parse().unwrap();
    let e = tapestry_policy::start(c.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("RFC 1918"), "{e}");
    c.overlay_network = "10.255.0.0/16".parse().unwrap();
    c.subnet_prefix = 16;
    let e = tapestry_policy::start(c.clone())
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("--subnet-prefix"), "{e}");
    c.subnet_prefix = 31;
    assert!(tapestry_policy::start(c.clone()).await.is_err());
    c.subnet_prefix = 24;
    c.database = Some("mysql://x".into());
    let e = tapestry_policy::start(c).await.err().unwrap().to_string();
    assert!(e.contains("--database"), "{e}");
}

#[tokio::test]
async fn data_dir_files_written_once() {
    let dir = tempfile::tempdir().unwrap();
    let c = tapestry_policy::start(config(dir.path(), None))
        .await
        .unwrap();
    let token_path = dir.path().join("admin.token");
    let mode = std::fs::metadata(&token_path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    for f in ["ca.pem", "cert.pem", "key.pem"] {
        assert!(dir.path().join("cell-credentials").join(f).is_file(), "{f}");
    }
    let key_mode = std::fs::metadata(dir.path().join("cell-credentials/key.pem"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(key_mode, 0o600);
    let token = std::fs::read_to_string(&token_path).unwrap();
    let cert = std::fs::read_to_string(dir.path().join("cell-credentials/cert.pem")).unwrap();
    c.shutdown().await;
    let c = tapestry_policy::start(config(dir.path(), None))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&token_path).unwrap(), token);
    assert_eq!(c.admin_token, token.trim());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("cell-credentials/cert.pem")).unwrap(),
        cert
    );
    // A token minted by a second process (the CLI) while the server runs works at once.
    let store = tapestry_policy::open_store(&config(dir.path(), None))
        .await
        .unwrap();
    let t = tapestry_policy::create_token(&store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    let r = reqwest::Client::new()
        .get(format!(
            "http://{}/networking/v1/external/policies",
            c.external_addr
        ))
        .bearer_auth(&t)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        tapestry_policy::create_token(&store, "network.read", vec![])
            .await
            .is_err()
    );
    assert!(
        tapestry_policy::create_token(&store, "network.write", vec![])
            .await
            .is_err()
    );
    c.shutdown().await;
}
