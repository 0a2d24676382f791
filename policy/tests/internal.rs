//! Leases, instances, the feed and mutual TLS, on SQLite and PostgreSQL.
mod common;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::{policies, policy, Db, Harness};
use tapestry_policy::client::InternalClient;
use tapestry_policy::feed::View;
use tapestry_policy::model::{Instance, Kind, LeaseKind, Op};
use tapestry_policy::ClientError;

macro_rules! harness {
    ($db:expr) => {
        harness!($db, |_| {})
    };
    ($db:expr, $tweak:expr) => {
        Harness::new($db, $tweak).await
    };
}

fn ip(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}

fn status(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status { status, message } => (status, message),
        other => panic!("expected a status error, got {other}"),
    }
}

fn inst(cell: &str, handle: &str, app: &str, space: &str, addr: &str) -> Instance {
    Instance {
        cell: ip(cell),
        handle: handle.into(),
        app_id: app.into(),
        space_id: space.into(),
        org_id: "O".into(),
        instance_index: 0,
        ip: ip(addr),
    }
}

async fn leases(db: Db) {
    // 10.255.0.0/28 in /30s: 4 subnets, the first reserved, so 3 cells fit.
    let h = harness!(db, |c| {
        c.overlay_network = "10.255.0.0/28".parse().unwrap();
        c.subnet_prefix = 30;
    });
    let c = h.internal();
    let a = c.acquire_lease(ip("10.0.0.1")).await.unwrap();
    assert_ne!(
        a.overlay_subnet.to_string(),
        "10.255.0.0/30",
        "first subnet is reserved"
    );
    assert_eq!(a.kind, LeaseKind::Tapestry);
    let o = a.overlay_subnet.network().octets();
    assert_eq!(
        a.overlay_hardware_addr,
        format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
    );
    assert!(
        a.expires_at.unwrap()
            > 100_000
                + std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64
    );
    // Same cell, same subnet.
    assert_eq!(
        c.acquire_lease(ip("10.0.0.1"))
            .await
            .unwrap()
            .overlay_subnet,
        a.overlay_subnet
    );
    let b = c.acquire_lease(ip("10.0.0.2")).await.unwrap();
    let d = c.acquire_lease(ip("10.0.0.3")).await.unwrap();
    assert!(
        a.overlay_subnet != b.overlay_subnet
            && b.overlay_subnet != d.overlay_subnet
            && a.overlay_subnet != d.overlay_subnet
    );
    let (s, m) = status(c.acquire_lease(ip("10.0.0.4")).await.unwrap_err());
    assert_eq!((s, m.as_str()), (409, "no lease available"));
    // Renew: ok; wrong subnet 409; after release 404.
    assert_eq!(
        c.renew_lease(&a).await.unwrap().overlay_subnet,
        a.overlay_subnet
    );
    let mut wrong = a.clone();
    wrong.overlay_subnet = b.overlay_subnet;
    assert_eq!(status(c.renew_lease(&wrong).await.unwrap_err()).0, 409);
    c.release_lease(ip("10.0.0.1")).await.unwrap();
    assert_eq!(status(c.renew_lease(&a).await.unwrap_err()).0, 404);
    let e = c.acquire_lease(ip("10.0.0.4")).await.unwrap();
    assert_eq!(e.overlay_subnet, a.overlay_subnet);
    // Bad input.
    let raw = reqwest::Client::builder()
        .use_preconfigured_tls(
            tapestry_policy::certs::client_config(&h.c().credentials_dir, true).unwrap(),
        )
        .build()
        .unwrap();
    let r = raw
        .put(format!("https://{}/leases/acquire", h.c().internal_addr))
        .body(r#"{"underlay_ip":"nope"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().starts_with("underlay_ip"));
    let leases = c.list_leases().await.unwrap();
    assert_eq!(leases.len(), 3);
    h.shutdown().await;
}

async fn lease_expiry_reclaim(db: Db) {
    let h = harness!(db, |c| {
        c.overlay_network = "10.255.0.0/29".parse().unwrap();
        c.subnet_prefix = 30;
        c.lease_expiry = Duration::from_secs(0);
    });
    let c = h.internal();
    let a = c.acquire_lease(ip("10.0.0.1")).await.unwrap();
    // The pool (one usable subnet) is empty; the lease expires (a whole second later: expiry is
    // kept in seconds) and is then reclaimed. Until then the pool is reported exhausted.
    let start = Instant::now();
    let b = loop {
        match c.acquire_lease(ip("10.0.0.2")).await {
            Ok(b) => break b,
            Err(e) => {
                let (code, msg) = status(e);
                assert_eq!(code, 409, "{msg}");
                assert!(
                    start.elapsed() < Duration::from_secs(5),
                    "never reclaimed: {msg}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    assert_eq!(b.overlay_subnet, a.overlay_subnet);
    assert_eq!(status(c.renew_lease(&a).await.unwrap_err()).0, 409);
    h.shutdown().await;
}

async fn static_leases(db: Db) {
    let h = harness!(db);
    let admin = h.admin();
    let l = admin
        .add_static_lease(ip("10.0.0.9"), "10.255.9.0/24".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(l.kind, LeaseKind::Static);
    assert_eq!(l.expires_at, None);
    assert_eq!(l.overlay_hardware_addr, "ee:ee:0a:ff:09:00");
    for (ip_s, subnet, want) in [
        ("10.0.0.8", "10.255.9.0/24", 409),
        ("10.0.0.8", "10.254.9.0/24", 400),
        ("10.0.0.8", "10.255.9.0/25", 400),
        ("10.0.0.8", "10.255.9.1/24", 400),
    ] {
        let e = admin
            .add_static_lease(ip(ip_s), subnet.parse().unwrap())
            .await
            .unwrap_err();
        assert_eq!(status(e).0, want, "{subnet}");
    }
    let (s, v) = h
        .post(
            "/networking/v1/external/leases",
            serde_json::json!({"underlay_ip":"x","overlay_subnet":"10.255.3.0/24"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().starts_with("underlay_ip"));
    let list = admin.list_leases().await.unwrap();
    assert_eq!(list.len(), 1);
    // A cell asking for a lease at the static VTEP's address gets the static lease.
    let got = h.internal().acquire_lease(ip("10.0.0.9")).await.unwrap();
    assert_eq!(got, l);
    h.shutdown().await;
}

async fn feed_snapshot_resume_and_wake(db: Db) {
    let h = harness!(db);
    let c = h.internal();
    let cell = ip("10.0.0.1");
    let mut view = View::new();
    let r = c.feed(cell, None, Duration::from_millis(10)).await.unwrap();
    assert!(r.snapshot.is_some());
    view.apply(r);
    let v0 = view.version().unwrap();
    // A long-poll wakes promptly when a policy is committed.
    let c2 = c.clone();
    let waiter = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2
            .feed(cell, Some(v0), Duration::from_secs(20))
            .await
            .unwrap();
        (r, t.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    h.post(
        "/networking/v1/external/policies",
        policies(vec![policy("A", "B", 8080)]),
    )
    .await;
    let (r, _) = waiter.await.unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "woke after {:?}",
        t0.elapsed()
    );
    assert!(r.snapshot.is_none());
    let kinds: Vec<(Op, Kind)> = r.changes.iter().map(|c| (c.op, c.kind)).collect();
    assert!(
        kinds.contains(&(Op::Put, Kind::Policy)) && kinds.contains(&(Op::Put, Kind::Tag)),
        "{kinds:?}"
    );
    let pol = r.changes.iter().find(|c| c.kind == Kind::Policy).unwrap();
    assert_eq!(pol.value["source"]["tag"], "0001");
    assert_eq!(pol.value["destination"]["tag"], "0002");
    view.apply(r);
    assert_eq!(view.policies().count(), 1);
    assert_eq!(view.tag_of("B"), Some(2));
    // No change: waits, then the same version with no changes.
    let v1 = view.version().unwrap();
    let t = Instant::now();
    let r = c
        .feed(cell, Some(v1), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        (r.version, r.changes.len(), r.snapshot.is_none()),
        (v1, 0, true)
    );
    // Instances, routes, ASGs, leases all flow through the feed.
    c.instance_up(&inst("10.0.0.1", "h1", "B", "S", "10.255.7.2"))
        .await
        .unwrap();
    h.post(
        "/networking/v1/external/routes",
        serde_json::json!({"host":"b.apps.internal","app_id":"B"}),
    )
    .await;
    h.post(
        "/networking/v1/external/security_groups",
        serde_json::json!({"name":"web","rules":[{"protocol":"all","destination":"0.0.0.0/0"}]}),
    )
    .await;
    c.acquire_lease(cell).await.unwrap();
    let r = c
        .feed(cell, Some(v1), Duration::from_millis(10))
        .await
        .unwrap();
    view.apply(r);
    assert_eq!(view.instances().count(), 1);
    assert_eq!(view.routes().count(), 1);
    assert_eq!(view.asgs().count(), 1);
    assert_eq!(view.leases().count(), 1);
    // Deletes.
    c.instance_down(cell, "h1").await.unwrap();
    h.post(
        "/networking/v1/external/policies/delete",
        policies(vec![policy("A", "B", 8080)]),
    )
    .await;
    let r = c
        .feed(cell, view.version(), Duration::from_millis(10))
        .await
        .unwrap();
    view.apply(r);
    assert_eq!(view.instances().count(), 0);
    assert_eq!(view.policies().count(), 0);
    assert_eq!(view.tags().count(), 0);
    // The incremental view equals a fresh snapshot.
    let fresh = c.feed(cell, None, Duration::from_millis(10)).await.unwrap();
    let mut fresh_view = View::new();
    fresh_view.apply(fresh);
    assert_eq!(fresh_view.snapshot(), view.snapshot());
    assert_eq!(fresh_view.version(), view.version());
    // A version from a different (newer) database gets a snapshot.
    let r = c
        .feed(
            cell,
            Some(view.version().unwrap() + 1000),
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    assert!(r.snapshot.is_some());
    // A persisted view round-trips.
    let json = serde_json::to_string(&view).unwrap();
    let back: View = serde_json::from_str(&json).unwrap();
    assert_eq!(back, view);
    h.shutdown().await;
}

async fn instances_sync(db: Db) {
    let h = harness!(db);
    let c = h.internal();
    let cell = ip("10.0.0.1");
    c.instance_up(&inst("10.0.0.1", "h1", "A", "S", "10.255.7.2"))
        .await
        .unwrap();
    c.instance_up(&inst("10.0.0.1", "h2", "A", "S", "10.255.7.3"))
        .await
        .unwrap();
    c.instance_up(&inst("10.0.0.2", "h9", "B", "S", "10.255.8.3"))
        .await
        .unwrap();
    c.sync_instances(
        cell,
        vec![
            inst("10.0.0.1", "h2", "A", "S", "10.255.7.3"),
            inst("10.0.0.1", "h3", "C", "S", "10.255.7.4"),
        ],
    )
    .await
    .unwrap();
    let snap = c
        .feed(cell, None, Duration::ZERO)
        .await
        .unwrap()
        .snapshot
        .unwrap();
    let mut handles: Vec<&str> = snap.instances.iter().map(|i| i.handle.as_str()).collect();
    handles.sort();
    assert_eq!(handles, vec!["h2", "h3", "h9"]);
    // Wrong cell in the body.
    let e = c
        .sync_instances(cell, vec![inst("10.0.0.2", "h4", "C", "S", "10.255.7.4")])
        .await
        .unwrap_err();
    assert_eq!(status(e).0, 400);
    let mut bad = inst("10.0.0.1", "", "A", "S", "10.255.7.2");
    let e = c.instance_up(&bad).await.unwrap_err();
    assert_eq!(status(e), (400, "handle: required".into()));
    bad.handle = "x".into();
    bad.app_id = "".into();
    assert_eq!(status(c.instance_up(&bad).await.unwrap_err()).0, 400);
    h.shutdown().await;
}

async fn mtls_required(db: Db) {
    let h = harness!(db);
    let base = format!("https://{}", h.c().internal_addr);
    let anon = InternalClient::without_identity(&base, &h.c().credentials_dir).unwrap();
    assert!(anon.acquire_lease(ip("10.0.0.1")).await.is_err());
    // A client whose certificate comes from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    tapestry_policy::certs::CellCa::ensure(other.path()).unwrap();
    let foreign = other.path().join("cell-credentials");
    // A client of another deployment does not trust this server's certificate.
    let c = InternalClient::new(&base, &foreign).unwrap();
    assert!(c.acquire_lease(ip("10.0.0.1")).await.is_err());
    // Trusting the real server CA but presenting a foreign client cert: refused by the server.
    std::fs::copy(h.c().credentials_dir.join("ca.pem"), foreign.join("ca.pem")).unwrap();
    let c = InternalClient::new(&base, &foreign).unwrap();
    assert!(c.acquire_lease(ip("10.0.0.1")).await.is_err());
    assert!(h.internal().acquire_lease(ip("10.0.0.1")).await.is_ok());
    h.shutdown().await;
}

/// Takes the feed from `view`'s version and applies it; returns the changes' (op, kind).
async fn follow(c: &InternalClient, view: &mut View) -> Vec<(Op, Kind)> {
    let r = c
        .feed(ip("10.0.0.1"), view.version(), Duration::from_millis(10))
        .await
        .unwrap();
    let kinds = r.changes.iter().map(|c| (c.op, c.kind)).collect();
    view.apply(r);
    kinds
}

/// Creating, binding (to a space, per lifecycle, globally), unbinding and deleting an ASG each
/// reach a cell's view through the feed, with the group's rules and bindings.
async fn asg_bindings_flow_through_the_feed(db: Db) {
    use tapestry_policy::model::SecurityGroup;
    let h = harness!(db);
    let c = h.internal();
    let admin = h.admin();
    let mut view = View::new();
    follow(&c, &mut view).await;
    assert_eq!(view.asgs().count(), 0);
    let mut g: SecurityGroup = serde_json::from_value(serde_json::json!({"name":"db","rules":[
        {"protocol":"tcp","destination":"172.16.0.0/12","ports":"5432","log":true}]}))
    .unwrap();
    admin.create_security_group(&g).await.unwrap();
    assert_eq!(
        follow(&c, &mut view).await,
        vec![(Op::Put, Kind::SecurityGroup)]
    );
    let got = |view: &View| view.asgs().find(|x| x.name == "db").cloned();
    let seen = got(&view).unwrap();
    assert_eq!(seen.rules, g.rules);
    assert!(seen.rules[0].log);
    assert!(seen.running_spaces.is_empty() && !seen.globally_enabled.running);
    // Bind to a space for running, then globally for staging.
    g.running_spaces = vec!["s1".into()];
    admin.update_security_group("db", &g).await.unwrap();
    assert_eq!(
        follow(&c, &mut view).await,
        vec![(Op::Put, Kind::SecurityGroup)]
    );
    assert_eq!(got(&view).unwrap().running_spaces, ["s1"]);
    g.globally_enabled.staging = true;
    admin.update_security_group("db", &g).await.unwrap();
    follow(&c, &mut view).await;
    let seen = got(&view).unwrap();
    assert!(seen.globally_enabled.staging && !seen.globally_enabled.running);
    assert_eq!(seen.running_spaces, ["s1"]);
    // Unbind.
    g.running_spaces.clear();
    g.globally_enabled.staging = false;
    admin.update_security_group("db", &g).await.unwrap();
    follow(&c, &mut view).await;
    let seen = got(&view).unwrap();
    assert!(seen.running_spaces.is_empty() && !seen.globally_enabled.staging);
    // The incremental view equals a fresh snapshot; then a delete removes the group.
    let mut fresh = View::new();
    fresh.apply(c.feed(ip("10.0.0.1"), None, Duration::ZERO).await.unwrap());
    assert_eq!(fresh.snapshot(), view.snapshot());
    admin.delete_security_group("db").await.unwrap();
    assert_eq!(
        follow(&c, &mut view).await,
        vec![(Op::Delete, Kind::SecurityGroup)]
    );
    assert_eq!(view.asgs().count(), 0);
    h.shutdown().await;
}

async fn asgs_and_routes(db: Db) {
    let h = harness!(db);
    let base = "/networking/v1/external/security_groups";
    let g = serde_json::json!({"name":"web","rules":[
        {"protocol":"tcp","destination":"10.0.0.0/8","ports":"443,80","log":false,"description":"web"},
        {"protocol":"icmp","destination":"10.0.0.1-10.0.0.9","type":8,"code":0}],
        "globally_enabled":{"running":false,"staging":false},"running_spaces":["s1"],"staging_spaces":[]});
    let (s, v) = h.post(base, g.clone()).await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = h.post(base, g.clone()).await;
    assert_eq!(s, 409);
    let (s, v) = h.get(&format!("{base}/web")).await;
    assert_eq!(s, 200);
    assert_eq!(v["rules"][1]["type"], 8);
    assert_eq!(v["running_spaces"][0], "s1");
    let (s, _) = h.get(&format!("{base}/nope")).await;
    assert_eq!(s, 404);
    let bad = serde_json::json!({"name":"x","rules":[{"protocol":"tcp","destination":"10.0.0.0/8","ports":"1"},{"protocol":"udp","destination":"10.0.0.0/8"}]});
    let (s, v) = h.post(base, bad).await;
    assert_eq!(s, 400);
    assert!(
        v["error"].as_str().unwrap().starts_with("rules[1].ports:"),
        "{v}"
    );
    let (s, _) = h
        .post(base, serde_json::json!({"name":"","rules":[]}))
        .await;
    assert_eq!(s, 400);
    // Update through the admin client, then delete.
    let admin = h.admin();
    let mut sg: tapestry_policy::model::SecurityGroup = serde_json::from_value(g).unwrap();
    sg.running_spaces.push("s2".into());
    admin.update_security_group("web", &sg).await.unwrap();
    let list = admin.list_security_groups().await.unwrap();
    assert_eq!(
        list[0].running_spaces,
        vec!["s1".to_string(), "s2".to_string()]
    );
    assert_eq!(
        status(admin.update_security_group("nope", &sg).await.unwrap_err()).0,
        404
    );
    admin.delete_security_group("web").await.unwrap();
    assert_eq!(
        status(admin.delete_security_group("web").await.unwrap_err()).0,
        404
    );
    // Routes.
    admin.add_route("Backend.apps.internal", "B").await.unwrap();
    admin.add_route("backend.apps.internal", "B").await.unwrap();
    let routes = admin.list_routes().await.unwrap();
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0].host, "backend.apps.internal");
    let (s, v) = status(
        admin
            .add_route("backend.example.com", "B")
            .await
            .unwrap_err(),
    );
    assert_eq!(s, 400);
    assert!(v.starts_with("host:"), "{v}");
    assert_eq!(
        status(admin.add_route("x.apps.internal", "").await.unwrap_err()).0,
        400
    );
    admin
        .delete_route("backend.apps.internal", "B")
        .await
        .unwrap();
    admin
        .delete_route("backend.apps.internal", "B")
        .await
        .unwrap();
    assert!(admin.list_routes().await.unwrap().is_empty());
    h.shutdown().await;
}

async fn feed_snapshot_when_log_truncated(db: Db) {
    let h = harness!(db, |c| c.max_policies_per_source = 20_000);
    let c = h.internal();
    let cell = ip("10.0.0.1");
    let first = c.feed(cell, None, Duration::ZERO).await.unwrap();
    h.post(
        "/networking/v1/external/policies",
        policies(vec![policy("A", "B", 1)]),
    )
    .await;
    let after_one = c
        .feed(cell, Some(first.version), Duration::ZERO)
        .await
        .unwrap();
    assert!(after_one.snapshot.is_none());
    // More than the retained 10,000 changes in one transaction.
    let many: Vec<_> = (1..=5200u16)
        .flat_map(|p| {
            [
                serde_json::json!({"source":{"id":"C"},"destination":{"id":"D","protocol":"tcp","ports":{"start":p,"end":p}}}),
                serde_json::json!({"source":{"id":"C"},"destination":{"id":"D","protocol":"udp","ports":{"start":p,"end":p}}}),
            ]
        })
        .collect();
    let (s, v) = h
        .post("/networking/v1/external/policies", policies(many))
        .await;
    assert_eq!(s, 200, "{v}");
    let r = c
        .feed(cell, Some(after_one.version), Duration::ZERO)
        .await
        .unwrap();
    let snap = r
        .snapshot
        .expect("a snapshot: the change log no longer reaches back");
    assert_eq!(snap.policies.len(), 10_401);
    h.shutdown().await;
}

async fn internal_error_cases(db: Db) {
    let h = harness!(db);
    let raw = reqwest::Client::builder()
        .use_preconfigured_tls(
            tapestry_policy::certs::client_config(&h.c().credentials_dir, true).unwrap(),
        )
        .build()
        .unwrap();
    let base = format!("https://{}", h.c().internal_addr);
    let cases: Vec<(reqwest::Method, &str, &str, u16, &str)> = vec![
        (
            reqwest::Method::PUT,
            "/leases/acquire",
            "{nope",
            400,
            "invalid JSON",
        ),
        (
            reqwest::Method::PUT,
            "/leases/renew",
            r#"{"underlay_ip":"10.0.0.1","overlay_subnet":"x"}"#,
            400,
            "overlay_subnet",
        ),
        (
            reqwest::Method::PUT,
            "/leases/renew",
            r#"{"underlay_ip":"10.0.0.1","overlay_subnet":"10.255.3.0/24"}"#,
            404,
            "no lease",
        ),
        (
            reqwest::Method::PUT,
            "/leases/release",
            r#"{"underlay_ip":"300.0.0.1"}"#,
            400,
            "underlay_ip",
        ),
        (
            reqwest::Method::POST,
            "/internal/instances",
            r#"{"cell":"10.0.0.1","handle":"h"}"#,
            400,
            "invalid JSON",
        ),
        (
            reqwest::Method::POST,
            "/internal/instances/delete",
            r#"{"cell":"10.0.0.1"}"#,
            400,
            "handle",
        ),
        (
            reqwest::Method::POST,
            "/internal/instances/delete",
            r#"{"cell":"x","handle":"h"}"#,
            400,
            "cell",
        ),
        (
            reqwest::Method::PUT,
            "/internal/cells/nope/instances",
            r#"{"instances":[]}"#,
            400,
            "underlay_ip",
        ),
        (
            reqwest::Method::GET,
            "/internal/feed?since=abc",
            "",
            400,
            "query",
        ),
        (
            reqwest::Method::GET,
            "/internal/nothing",
            "",
            404,
            "not found",
        ),
    ];
    for (m, path, body, want, text) in cases {
        let r = raw
            .request(m, format!("{base}{path}"))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(status, want, "{path} {body}: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(e.contains(text), "{path}: '{e}' should mention '{text}'");
    }
    // Releasing a lease the cell does not hold is fine; deleting an unknown instance too.
    let c = h.internal();
    c.release_lease(ip("10.0.0.99")).await.unwrap();
    c.instance_down(ip("10.0.0.99"), "nope").await.unwrap();
    // External: unknown path, bad ASG update, bad route delete, non-admin writes.
    let (s, _) = h.get("/networking/v1/external/nothing").await;
    assert_eq!(s, 404);
    h.post(
        "/networking/v1/external/security_groups",
        serde_json::json!({"name":"g","rules":[]}),
    )
    .await;
    let t = h.c().admin_token.clone();
    let (s, v, _) = h
        .raw(
            reqwest::Method::PUT,
            "/networking/v1/external/security_groups/g",
            Some(&t),
            Some(br#"{"rules":[{"protocol":"icmp","destination":"10.0.0.1"}]}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"].as_str().unwrap().starts_with("rules[0].type:"),
        "{v}"
    );
    let (s, _) = h
        .post(
            "/networking/v1/external/routes/delete",
            serde_json::json!({"host":"bad host","app_id":"B"}),
        )
        .await;
    assert_eq!(s, 400);
    let w = tapestry_policy::create_token(&h.c().store, "network.write", vec!["S".into()])
        .await
        .unwrap();
    let (s, _, _) = h
        .raw(
            reqwest::Method::POST,
            "/networking/v1/external/security_groups",
            Some(&w),
            Some(br#"{"name":"x"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = h
        .raw(
            reqwest::Method::DELETE,
            "/networking/v1/external/security_groups/g",
            Some(&w),
            None,
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = h
        .raw(
            reqwest::Method::POST,
            "/networking/v1/external/leases",
            Some(&w),
            Some(br#"{"underlay_ip":"10.0.0.9","overlay_subnet":"10.255.9.0/24"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = h
        .raw(
            reqwest::Method::POST,
            "/networking/v1/external/routes",
            Some(&w),
            Some(br#"{"host":"a.apps.internal","app_id":"NOTMINE"}"#.to_vec()),
        )
        .await;
    assert_eq!(s, 403);
    h.shutdown().await;
}

dual!(
    internal_error_cases,
    feed_snapshot_when_log_truncated,
    leases,
    lease_expiry_reclaim,
    static_leases,
    feed_snapshot_resume_and_wake,
    instances_sync,
    mtls_required,
    asgs_and_routes,
    asg_bindings_flow_through_the_feed
);
