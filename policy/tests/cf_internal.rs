//! CF's internal policy API, replayed as cf-networking-release's vxlan-policy-agent client
//! (`policy_client/internal_policy_client.go`) sends it, on SQLite and PostgreSQL.
mod common;

use common::{policies, policy, Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};

/// The agent's HTTP client: mutual TLS with the cell credentials, JSON in and out.
struct Agent {
    http: reqwest::Client,
    base: String,
}

impl Agent {
    fn new(h: &Harness) -> Agent {
        let tls = tapestry_policy::certs::client_config(&h.c().credentials_dir, true).unwrap();
        Agent {
            http: reqwest::Client::builder()
                .use_preconfigured_tls(tls)
                .build()
                .unwrap(),
            base: format!("https://{}", h.c().internal_addr),
        }
    }

    /// json_client.Do: the method, the route, a JSON body or none; (status, decoded answer).
    async fn r#do(&self, method: Method, route: &str, body: Option<Value>) -> (u16, Value) {
        let mut r = self.http.request(method, format!("{}{route}", self.base));
        if let Some(b) = body {
            r = r.body(b.to_string());
        }
        let resp = r.send().await.unwrap();
        let s = resp.status().as_u16();
        let b = resp.bytes().await.unwrap();
        (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
    }

    async fn last_updated(&self) -> i64 {
        let (s, v) = self
            .r#do(
                Method::GET,
                "/networking/v1/internal/policies_last_updated",
                None,
            )
            .await;
        assert_eq!(s, 200);
        v.as_i64().expect("an integer")
    }

    /// GetSecurityGroupsForSpace: pages until `next` is 0.
    async fn security_groups(&self, per_page: u32, extra: &str, spaces: &[&str]) -> Vec<Value> {
        let mut out = Vec::new();
        let mut next = 0;
        let mut initial = true;
        while initial || next != 0 {
            initial = false;
            let mut url =
                format!("/networking/v1/internal/security_groups?per_page={per_page}{extra}");
            if !spaces.is_empty() {
                url = format!("{url}&space_guids={}", spaces.join(","));
            }
            if next != 0 {
                url = format!("{url}&from={next}");
            }
            let (s, v) = self.r#do(Method::GET, &url, None).await;
            assert_eq!(s, 200, "{url}: {v}");
            out.extend(v["security_groups"].as_array().unwrap().iter().cloned());
            next = v["next"].as_i64().unwrap();
        }
        out
    }
}

async fn agent_polls(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let agent = Agent::new(&h);
    let t0 = agent.last_updated().await;
    assert!(t0 > 0);
    // Nothing changed: the same value.
    assert_eq!(agent.last_updated().await, t0);
    let (s, _) = h
        .post(
            "/networking/v1/external/policies",
            policies(vec![policy("A", "B", 8080), policy("C", "A", 9000)]),
        )
        .await;
    assert_eq!(s, 200);
    let t1 = agent.last_updated().await;
    assert!(t1 > t0, "{t1} > {t0}");
    // GetPoliciesByID, with the local containers' apps; policies come with their tags.
    let (s, v) = agent
        .r#do(Method::GET, "/networking/v1/internal/policies?id=B,Z", None)
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        v,
        json!({"total_policies": 1, "policies": [
            {"source": {"id": "A", "tag": "0001"},
             "destination": {"id": "B", "tag": "0002", "protocol": "tcp", "ports": {"start": 8080, "end": 8080}}}
        ]})
    );
    // GetPolicies: all of them.
    let (_, v) = agent
        .r#do(Method::GET, "/networking/v1/internal/policies", None)
        .await;
    assert_eq!(v["total_policies"], 2);
    assert_eq!(
        v["policies"][1]["source"],
        json!({"id": "C", "tag": "0003"})
    );
    // An id list that names nothing.
    let (_, v) = agent
        .r#do(Method::GET, "/networking/v0/internal/policies?id=", None)
        .await;
    assert_eq!(v, json!({"total_policies": 0, "policies": []}));
    // CreateOrGetTag (the gorouter's tag): created once, then the same.
    let body = json!({"id": "router-group", "type": "router"});
    let (s, v) = agent
        .r#do(
            Method::PUT,
            "/networking/v1/internal/tags",
            Some(body.clone()),
        )
        .await;
    assert_eq!(
        (s, v),
        (
            200,
            json!({"id": "router-group", "type": "router", "tag": "0004"})
        )
    );
    let t2 = agent.last_updated().await;
    assert!(t2 > t1);
    let (_, v) = agent
        .r#do(Method::PUT, "/networking/v1/internal/tags", Some(body))
        .await;
    assert_eq!(v["tag"], "0004");
    assert_eq!(agent.last_updated().await, t2);
    let (_, v) = agent
        .r#do(
            Method::PUT,
            "/networking/v1/internal/tags",
            Some(json!({"id": "A", "type": "app"})),
        )
        .await;
    assert_eq!(v, json!({"id": "A", "type": "app", "tag": "0001"}));
    let (s, v) = agent
        .r#do(
            Method::PUT,
            "/networking/v1/internal/tags",
            Some(json!("nope")),
        )
        .await;
    assert_eq!(
        (s, v),
        (400, json!({"error": "failed parsing request body"}))
    );
    // Deleting a policy moves last_updated on.
    h.post(
        "/networking/v1/external/policies/delete",
        policies(vec![policy("C", "A", 9000)]),
    )
    .await;
    assert!(agent.last_updated().await > t2);
    h.shutdown().await;
}

async fn agent_security_groups(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let agent = Agent::new(&h);
    let asg = |name: &str, global: bool, running: &[&str], staging: &[&str]| {
        json!({"name": name,
               "rules": [{"protocol": "tcp", "destination": "10.0.0.0/8", "ports": "443"}],
               "globally_enabled": {"running": global, "staging": false},
               "running_spaces": running, "staging_spaces": staging})
    };
    for g in [
        asg("a-global", true, &[], &[]),
        asg("b-s1", false, &["S1"], &[]),
        asg("c-s2", false, &["S2"], &[]),
        asg("d-s1-staging", false, &[], &["S1"]),
    ] {
        let (s, v) = h.post("/networking/v1/external/security_groups", g).await;
        assert_eq!(s, 200, "{v}");
    }
    let names = |gs: &[Value]| -> Vec<String> {
        gs.iter()
            .map(|g| g["name"].as_str().unwrap().to_string())
            .collect()
    };
    // As the agent asks: per_page (which CF's server ignores) and the cell's spaces.
    let got = agent.security_groups(5000, "", &["S1"]).await;
    assert_eq!(names(&got), ["a-global", "b-s1", "d-s1-staging"]);
    assert_eq!(got[1]["running_space_guids"], json!(["S1"]));
    assert_eq!(got[0]["running_default"], true);
    assert_eq!(got[0]["staging_default"], false);
    let rules: Value = serde_json::from_str(got[0]["rules"].as_str().unwrap()).unwrap();
    assert_eq!(rules[0]["destination"], "10.0.0.0/8");
    // No spaces: the global groups only.
    assert_eq!(
        names(&agent.security_groups(5000, "", &[]).await),
        ["a-global"]
    );
    // Paged with CF's `limit`: `next` names the first group of the next page.
    let (_, v) = agent
        .r#do(
            Method::GET,
            "/networking/v1/internal/security_groups?space_guids=S1,S2&limit=2",
            None,
        )
        .await;
    assert_eq!(v["next"], 3);
    assert_eq!(
        names(v["security_groups"].as_array().unwrap()),
        ["a-global", "b-s1"]
    );
    let paged = agent.security_groups(0, "&limit=1", &["S1", "S2"]).await;
    assert_eq!(names(&paged), ["a-global", "b-s1", "c-s2", "d-s1-staging"]);
    let (s, v) = agent
        .r#do(
            Method::GET,
            "/networking/v1/internal/security_groups?limit=x",
            None,
        )
        .await;
    assert_eq!(
        (s, v),
        (500, json!({"error": "invalid value for 'limit' parameter"}))
    );
    h.shutdown().await;
}

/// Instance ids are held to the same rules as policy ids: printable, at most 255 characters.
async fn instance_ids_are_printable(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let c = h.internal();
    let inst = |app: &str| tapestry_policy::model::Instance {
        cell: "10.0.0.1".parse().unwrap(),
        handle: "h1".into(),
        app_id: app.into(),
        space_id: "S".into(),
        org_id: "O".into(),
        instance_index: 0,
        ip: "10.255.1.2".parse().unwrap(),
    };
    c.instance_up(&inst(&"é".repeat(255))).await.unwrap();
    for bad in ["a\u{0}", "\u{200B}a"] {
        let e = c.instance_up(&inst(bad)).await.unwrap_err().to_string();
        assert!(
            e.contains("app_id: character") && e.contains("not printable"),
            "{e}"
        );
    }
    let e = c
        .instance_up(&inst(&"é".repeat(256)))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 255 characters"), "{e}");
    h.shutdown().await;
}

dual!(
    agent_polls,
    agent_security_groups,
    instance_ids_are_printable
);
