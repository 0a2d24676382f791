//! Per-cell certificates: a cell acts only for its own underlay IP (leases, instances in its
//! lease); the shared certificate only with --allow-shared-cell-cert.
mod common;

use std::net::Ipv4Addr;
use std::time::Duration;

use common::{Db, Harness};
use tapestry_policy::client::InternalClient;
use tapestry_policy::identity::IdentityRequest;
use tapestry_policy::model::Instance;
use tapestry_policy::ClientError;

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn forbidden(e: ClientError) -> String {
    match e {
        ClientError::Status { status, message } => {
            assert_eq!(status, 403, "{message}");
            message
        }
        other => panic!("expected 403, got {other}"),
    }
}

fn cell_client(h: &Harness, underlay: &str) -> InternalClient {
    let out = h.dir.path().join(format!("creds-{underlay}"));
    tapestry_policy::issue_cell_credentials(&h.config, ip(underlay), &out).unwrap();
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&out), 0o700);
    assert_eq!(mode(&out.join("key.pem")), 0o600);
    InternalClient::new(&format!("https://{}", h.c().internal_addr), &out).unwrap()
}

fn inst(cell: &str, handle: &str, addr: &str) -> Instance {
    Instance {
        cell: ip(cell),
        handle: handle.into(),
        app_id: "app".into(),
        space_id: "S".into(),
        org_id: "O".into(),
        instance_index: 0,
        ip: ip(addr),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_acts_only_for_its_own_underlay_ip() {
    let h = Harness::new(Db::Sqlite, |c| c.allow_shared_cell_cert = false).await;
    // The shared certificate is refused, with the way out named.
    let e = forbidden(
        h.internal()
            .acquire_lease(ip("10.0.0.1"))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("--allow-shared-cell-cert"), "{e}");

    let one = cell_client(&h, "10.0.0.1");
    let two = cell_client(&h, "10.0.0.2");
    let l1 = one.acquire_lease(ip("10.0.0.1")).await.unwrap();
    let l2 = two.acquire_lease(ip("10.0.0.2")).await.unwrap();
    let e = forbidden(one.acquire_lease(ip("10.0.0.3")).await.unwrap_err());
    assert!(e.contains("10.0.0.3 is not this cell"), "{e}");
    forbidden(one.renew_lease(&l2).await.unwrap_err());
    forbidden(one.release_lease(ip("10.0.0.2")).await.unwrap_err());
    one.renew_lease(&l1).await.unwrap();

    // Instances: its own cell, an IP inside its lease.
    let inside = |l: &tapestry_policy::model::Lease| {
        let o = l.overlay_subnet.network().octets();
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3] + 2)
    };
    one.instance_up(&inst("10.0.0.1", "h1", &inside(&l1)))
        .await
        .unwrap();
    let e = forbidden(
        one.instance_up(&inst("10.0.0.2", "h2", &inside(&l2)))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("not this cell"), "{e}");
    let e = forbidden(
        one.instance_up(&inst("10.0.0.1", "h3", &inside(&l2)))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("outside this cell's lease"), "{e}");
    forbidden(two.instance_down(ip("10.0.0.1"), "h1").await.unwrap_err());
    forbidden(
        two.sync_instances(ip("10.0.0.1"), vec![])
            .await
            .unwrap_err(),
    );
    // Reading is for every cell.
    assert_eq!(two.list_leases().await.unwrap().len(), 2);
    let f = two
        .feed(ip("10.0.0.2"), None, Duration::ZERO)
        .await
        .unwrap();
    assert!(f.snapshot.is_some());
    one.instance_down(ip("10.0.0.1"), "h1").await.unwrap();
    h.shutdown().await;
}

fn identity_request(handle: &str, addr: &str) -> IdentityRequest {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    IdentityRequest {
        csr: rcgen::CertificateParams::default()
            .serialize_request(&key)
            .unwrap()
            .pem()
            .unwrap(),
        handle: handle.into(),
        ip: addr.into(),
        app_id: "app".into(),
        space_id: "S".into(),
        org_id: "O".into(),
        lifetime_secs: None,
    }
}

/// Instance identity certificates: a cell with its own certificate gets them only for
/// addresses in its own lease (as for registering instances); the shared certificate, where
/// allowed, for any.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cell_gets_instance_identities_only_inside_its_lease() {
    let h = Harness::new(Db::Sqlite, |c| c.allow_shared_cell_cert = false).await;
    let one = cell_client(&h, "10.0.0.1");
    let two = cell_client(&h, "10.0.0.2");
    // No lease yet: nothing is inside it.
    let e = forbidden(
        one.instance_identity(&identity_request("h1", "10.255.1.2"))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("has no lease"), "{e}");
    let l1 = one.acquire_lease(ip("10.0.0.1")).await.unwrap();
    let l2 = two.acquire_lease(ip("10.0.0.2")).await.unwrap();
    let inside = |l: &tapestry_policy::model::Lease| {
        let o = l.overlay_subnet.network().octets();
        format!("{}.{}.{}.{}", o[0], o[1], o[2], o[3] + 2)
    };
    one.instance_identity(&identity_request("h1", &inside(&l1)))
        .await
        .expect("an identity for an address in its own lease");
    let e = forbidden(
        one.instance_identity(&identity_request("h2", &inside(&l2)))
            .await
            .unwrap_err(),
    );
    assert!(
        e.contains("h2") && e.contains("outside this cell's lease"),
        "{e}"
    );
    // The shared certificate is refused here...
    let e = forbidden(
        h.internal()
            .instance_identity(&identity_request("h1", &inside(&l1)))
            .await
            .unwrap_err(),
    );
    assert!(e.contains("--allow-shared-cell-cert"), "{e}");
    h.shutdown().await;

    // ...and where allowed it acts for any cell.
    let h = Harness::new(Db::Sqlite, |c| c.allow_shared_cell_cert = true).await;
    h.internal()
        .instance_identity(&identity_request("h9", "10.255.9.2"))
        .await
        .expect("the shared certificate, where allowed, for any address");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_certificate_works_where_allowed() {
    let h = Harness::new(Db::Sqlite, |c| c.allow_shared_cell_cert = true).await;
    let c = h.internal();
    c.acquire_lease(ip("10.0.0.1")).await.unwrap();
    c.acquire_lease(ip("10.0.0.2")).await.unwrap();
    h.shutdown().await;
}

/// A route host belongs to the spaces of the apps mapped to it: a network.write token cannot add
/// its app to another space's host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_space_writer_cannot_join_another_spaces_route_host() {
    let h = Harness::new(Db::Sqlite, |_| {}).await;
    let int = h.internal();
    for (handle, app, space, addr) in [
        ("h1", "app-a", "S1", "10.255.1.2"),
        ("h2", "app-b", "S2", "10.255.1.3"),
    ] {
        let mut i = inst("10.0.0.1", handle, addr);
        i.app_id = app.into();
        i.space_id = space.into();
        int.instance_up(&i).await.unwrap();
    }
    let token = |space: &str| {
        let store = h.c().store.clone();
        let space = space.to_string();
        async move {
            tapestry_policy::create_token(&store, "network.write", vec![space])
                .await
                .unwrap()
        }
    };
    let (s1, s2) = (token("S1").await, token("S2").await);
    let map = |t: String, host: &str, app: &str| {
        let body = serde_json::json!({"host": host, "app_id": app})
            .to_string()
            .into_bytes();
        let h = &h;
        async move {
            h.raw(
                reqwest::Method::POST,
                "/networking/v1/external/routes",
                Some(&t),
                Some(body),
            )
            .await
        }
    };
    assert_eq!(map(s1.clone(), "web.apps.internal", "app-a").await.0, 200);
    let (status, v, _) = map(s2.clone(), "web.apps.internal", "app-b").await;
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("another space"),
        "{v}"
    );
    assert_eq!(map(s2, "api.apps.internal", "app-b").await.0, 200);
    // The space's own host takes more of its apps; the admin may map anything.
    let admin = h.c().admin_token.clone();
    assert_eq!(map(admin, "web.apps.internal", "app-b").await.0, 200);
    h.shutdown().await;
}
