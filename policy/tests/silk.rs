//! The Silk controller API on `--silk-listen`, with silk-release's semantics (cases of its
//! controller integration tests), on SQLite and PostgreSQL.
mod common;

use common::{Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};

struct Daemon {
    http: reqwest::Client,
    base: String,
}

impl Daemon {
    fn new(h: &Harness, identity: bool) -> Daemon {
        let tls = tapestry_policy::certs::client_config(&h.c().credentials_dir, identity).unwrap();
        Daemon {
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap(),
            base: format!("https://{}", h.c().silk_addr.expect("--silk-listen")),
        }
    }

    async fn call(&self, method: Method, path: &str, body: &str) -> (u16, Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let s = resp.status().as_u16();
        (
            s,
            serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap_or(Value::Null),
        )
    }

    async fn put(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::PUT, path, &body.to_string()).await
    }
}

async fn silk_leases(db: Db) {
    let h = Harness::new(db, |c| {
        c.cf.silk_listen = Some("127.0.0.1:0".parse().unwrap())
    })
    .await;
    let d = Daemon::new(&h, true);
    let (s, a) = d
        .put("/leases/acquire", json!({"underlay_ip": "10.0.0.1"}))
        .await;
    assert_eq!(s, 200, "{a}");
    let subnet: ipnet::Ipv4Net = a["overlay_subnet"].as_str().unwrap().parse().unwrap();
    assert_eq!(subnet.prefix_len(), 24);
    assert!("10.255.0.0/16"
        .parse::<ipnet::Ipv4Net>()
        .unwrap()
        .contains(&subnet));
    assert_ne!(
        subnet.to_string(),
        "10.255.0.0/24",
        "the first subnet is reserved"
    );
    let o = subnet.network().octets();
    assert_eq!(
        a,
        json!({"underlay_ip": "10.0.0.1", "overlay_subnet": subnet.to_string(),
               "overlay_hardware_addr": format!("ee:ee:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])})
    );
    // Acquiring again gives the same lease.
    assert_eq!(
        d.put("/leases/acquire", json!({"underlay_ip": "10.0.0.1"}))
            .await,
        (200, a.clone())
    );
    // Renew answers {}.
    assert_eq!(d.put("/leases/renew", a.clone()).await, (200, json!({})));
    // Another subnet for the same cell: a mismatch.
    let mut other = a.clone();
    other["overlay_subnet"] = json!("10.255.200.0/24");
    other["overlay_hardware_addr"] = json!("ee:ee:0a:ff:c8:00");
    assert_eq!(
        d.put("/leases/renew", other).await,
        (409, json!({"error": "renew-subnet-lease: lease mismatch"}))
    );
    // A lease the controller lacks is added back when its subnet is free.
    assert_eq!(
        d.put("/leases/release", json!({"underlay_ip": "10.0.0.1"}))
            .await,
        (200, json!({}))
    );
    let (_, v) = d.call(Method::GET, "/leases", "").await;
    assert_eq!(v, json!({"leases": []}));
    assert_eq!(d.put("/leases/renew", a.clone()).await, (200, json!({})));
    let (_, v) = d.call(Method::GET, "/leases", "").await;
    assert_eq!(v, json!({"leases": [a.clone()]}));
    // ...but not when another cell holds the subnet.
    let mut stolen = a.clone();
    stolen["underlay_ip"] = json!("10.0.0.2");
    let (s, v) = d.put("/leases/renew", stolen).await;
    assert_eq!(s, 409);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("renew-subnet-lease: "),
        "{v}"
    );
    // single_overlay_ip: a /32 from the reserved first subnet.
    let (s, v) = d
        .put(
            "/leases/acquire",
            json!({"underlay_ip": "10.0.0.3", "single_overlay_ip": true}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["overlay_subnet"], "10.255.0.1/32");
    let (_, v) = d
        .put(
            "/leases/acquire",
            json!({"underlay_ip": "10.0.0.4", "single_overlay_ip": true}),
        )
        .await;
    assert_eq!(v["overlay_subnet"], "10.255.0.2/32");
    assert_eq!(d.put("/leases/renew", v).await, (200, json!({})));
    // Malformed input.
    let (s, v) = d.call(Method::PUT, "/leases/acquire", "{nope").await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("unmarshal-request: "),
        "{v}"
    );
    let (s, v) = d
        .call(Method::PUT, "/leases/renew", "{\"underlay_ip\": 7}")
        .await;
    assert_eq!(s, 400);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("unmarshal-request: "),
        "{v}"
    );
    assert_eq!(
        d.put("/leases/acquire", json!({"underlay_ip": "nope"}))
            .await,
        (400, json!({"error": "invalid ipv4 address: nope"}))
    );
    assert_eq!(
        d.put("/leases/renew", json!({"underlay_ip": "10.0.0.9", "overlay_subnet": "x", "overlay_hardware_addr": "ee:ee:00:00:00:00"})).await,
        (409, json!({"error": "renew-subnet-lease: invalid CIDR address: x"}))
    );
    // Mutual TLS: a daemon without a client certificate gets nothing.
    let anon = Daemon::new(&h, false);
    assert!(anon
        .http
        .get(format!("{}/leases", anon.base))
        .send()
        .await
        .is_err());
    h.shutdown().await;
}

dual!(silk_leases);
