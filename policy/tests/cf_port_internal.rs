//! cf-networking-release's policy-server integration tests of the internal API, ported case by
//! case (`src/code.cloudfoundry.org/policy-server/integration/`): internal_api_policies_test.go,
//! create_tags_api_test.go, internal_api_security_groups_test.go. Requests go over mutual TLS
//! with the cell credentials, as CF's use `helpers.DefaultTLSConfig()`. On SQLite and PostgreSQL.
//!
//! Not ported, with why:
//! - internal_api_policies_test.go, Describe("boring server behavior"):
//!   - It("should boot and gracefully terminate"): process supervision of CF's separate
//!     `policy-server-internal` binary; here every test ends with a graceful shutdown
//!     (`Harness::shutdown`), which would hang if it did not terminate;
//!   - It("responds with uptime when accessed on the root path") and Describe("health"): CF's
//!     internal server has its own plain-HTTP health-check port; Tapestry is one process whose
//!     health and uptime are on the external listener (tests/cf_port_external.rs, "uptime" and
//!     "health");
//!   - It("has a log level thats configurable at runtime"): CF's debug server (`/log-level`),
//!     a CF internal with no API meaning;
//!   - It("should emit some metrics") and the `InternalPoliciesRequestTime`,
//!     `StoreAllSuccessTime`, `InternalSecurityGroupsRequestTime`,
//!     `SecurityGroupsStoreBySpaceGuidsSuccessTime` assertions: metrics to metron.
//! - internal_api_security_groups_test.go's setup: CF's ASGs come from Cloud Controller through
//!   the policy-server-asg-syncer (and locket); Tapestry's come from its own external API, so the
//!   same three groups are created there. Their rules are made valid for Tapestry's validator
//!   (CF's double stores rules without a destination, and one without a protocol), and a
//!   group's `guid` is its name (policy/README.md, "Internal API").
mod cfport_support;
mod common;

use cfport_support::{internal, json_of, make_and_do, unordered};
use common::{Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};

// ---- internal_api_policies_test.go ----

/// The BeforeEach: four policies, one a port range.
async fn with_internal_policies(db: Db) -> Harness {
    let h = Harness::new(db, |_| {}).await;
    let body = r#"{
        "policies": [
            {"source": { "id": "app1" }, "destination": { "id": "app2", "protocol": "tcp", "ports": { "start": 8080, "end": 8080 } } },
            {"source": { "id": "app3" }, "destination": { "id": "app1", "protocol": "tcp", "ports": { "start": 9999, "end": 9999 } } },
            {"source": { "id": "app3" }, "destination": { "id": "app2", "protocol": "tcp", "ports": { "start": 3333, "end": 4444 } } },
            {"source": { "id": "app3" }, "destination": { "id": "app4", "protocol": "tcp", "ports": { "start": 3333, "end": 3333 } } }
        ]
    }"#;
    let p = "/networking/v1/external/policies";
    assert_eq!(
        make_and_do(&h, Method::POST, p, &[], Some(body))
            .await
            .status,
        200
    );
    h
}

// DescribeTable("listing policies and tags succeeds"), Entry("v1")
async fn listing_policies_and_tags_succeeds_v1(db: Db) {
    let h = with_internal_policies(db).await;
    let path = "/networking/v1/internal/policies?id=app1,app2,live-space-1-guid,live-app-1-guid";
    let a = internal(&h, Method::GET, path, None).await;
    assert_eq!(a.status, 200);
    let expected = r#"{"total_policies": 3,
        "policies": [
            {"source": { "id": "app1", "tag": "0001" }, "destination": { "id": "app2", "tag": "0002", "protocol": "tcp", "ports": {"start": 8080, "end": 8080 } } },
            {"source": { "id": "app3", "tag": "0003" }, "destination": { "id": "app1", "tag": "0001", "protocol": "tcp", "ports": {"start": 9999, "end": 9999 } } },
            {"source": { "id": "app3", "tag": "0003" }, "destination": { "id": "app2", "tag": "0002", "protocol": "tcp", "ports": { "start": 3333, "end": 4444 } } }
        ]
    }"#;
    assert_eq!(unordered(&a.json), unordered(&json_of(expected)));
    h.shutdown().await;
}

// Describe("boring server behavior"), It("adds a Strict-Transport-Security header")
async fn adds_a_strict_transport_security_header(db: Db) {
    let h = with_internal_policies(db).await;
    let a = internal(&h, Method::GET, "/networking/v1/internal/policies", None).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    h.shutdown().await;
}

// ---- create_tags_api_test.go ----

const TAGS: &str = "/networking/v1/internal/tags";
const ROUTER_TAG: &str = r#"{"type": "router-type", "id": "router-guid" }"#;

// Context("when the id has not been used before"), It("creates a new tag")
async fn creates_a_new_tag(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let a = internal(&h, Method::PUT, TAGS, Some(ROUTER_TAG)).await;
    assert_eq!(a.status, 200);
    let want = r#"{"type":"router-type","id":"router-guid","tag":"0001"}"#;
    assert_eq!(a.json, json_of(want));
    h.shutdown().await;
}

// Context("when creating a tag with the same parameters"), It("returns the same tag")
async fn creating_a_tag_with_the_same_parameters_returns_the_same_tag(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    assert_eq!(
        internal(&h, Method::PUT, TAGS, Some(ROUTER_TAG))
            .await
            .status,
        200
    );
    let a = internal(&h, Method::PUT, TAGS, Some(ROUTER_TAG)).await;
    assert_eq!(a.status, 200);
    let want = r#"{"type":"router-type","id":"router-guid","tag":"0001"}"#;
    assert_eq!(a.json, json_of(want));
    h.shutdown().await;
}

// Context("when creating a tag with the same guid and a different type"), It("fails")
async fn creating_a_tag_with_the_same_guid_and_a_different_type_fails(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    assert_eq!(
        internal(&h, Method::PUT, TAGS, Some(ROUTER_TAG))
            .await
            .status,
        200
    );
    let other = r#"{"type": "meow", "id": "router-guid" }"#;
    let a = internal(&h, Method::PUT, TAGS, Some(other)).await;
    assert_eq!(a.status, 500, "{}", a.text);
    assert_eq!(a.json, json!({"error": "database create failed"}));
    // The group keeps its type and tag.
    let a = internal(&h, Method::PUT, TAGS, Some(ROUTER_TAG)).await;
    let want = r#"{"type":"router-type","id":"router-guid","tag":"0001"}"#;
    assert_eq!((a.status, a.json), (200, json_of(want)));
    h.shutdown().await;
}

// ---- internal_api_security_groups_test.go ----

fn rule(description: &str, ports: &str) -> Value {
    json!({"protocol": "tcp", "destination": "10.0.0.0/8", "ports": ports,
           "description": description})
}

/// The three groups of the BeforeEach, created through Tapestry's API.
async fn with_security_groups(db: Db) -> Harness {
    let h = Harness::new(db, |_| {}).await;
    let groups = [
        (
            "sg-name-1",
            rule("sg-rule-1", "80"),
            true,
            "space-a",
            "space-b",
        ),
        (
            "sg-name-2",
            rule("sg-rule-2", "81"),
            false,
            "space-c",
            "space-c",
        ),
        (
            "sg-name-3",
            rule("sg-rule-3", "8080"),
            false,
            "space-a",
            "space-a",
        ),
    ];
    for (name, r, staging, staging_space, running_space) in groups {
        let body = json!({"name": name, "rules": [r],
            "globally_enabled": {"running": false, "staging": staging},
            "staging_spaces": [staging_space], "running_spaces": [running_space]});
        let (s, v) = h
            .post("/networking/v1/external/security_groups", body)
            .await;
        assert!(s == 200 || s == 201, "{s} {v}");
    }
    h
}

/// expectedSecurityGroupN, with the rules compared as the descriptions and ports they carry.
fn expected(n: usize) -> Value {
    let (staging_default, staging, running) = match n {
        1 => (true, "space-a", "space-b"),
        2 => (false, "space-c", "space-c"),
        _ => (false, "space-a", "space-a"),
    };
    json!({"guid": format!("sg-name-{n}"), "name": format!("sg-name-{n}"),
           "rules": format!("sg-rule-{n}"),
           "staging_default": staging_default, "running_default": false,
           "staging_space_guids": [staging], "running_space_guids": [running]})
}

/// A returned group with its `rules` string reduced to the rule's description (after checking
/// it is the JSON list of one rule, as CF's `rules` string is).
fn comparable(g: &Value) -> Value {
    let mut g = g.clone();
    let rules: Vec<Value> = serde_json::from_str(g["rules"].as_str().unwrap()).unwrap();
    assert_eq!(rules.len(), 1, "{g}");
    g["rules"] = rules[0]["description"].clone();
    g
}

async fn list_security_groups(db: Db, query: &str, want: &[usize]) {
    let h = with_security_groups(db).await;
    let path = format!("/networking/v1/internal/security_groups{query}");
    let a = internal(&h, Method::GET, &path, None).await;
    assert_eq!(a.status, 200, "{}", a.text);
    assert_eq!(a.json["next"], 0);
    let mut got: Vec<Value> = a.json["security_groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(comparable)
        .collect();
    got.sort_by_key(|g| g["name"].to_string());
    let want: Vec<Value> = want.iter().map(|n| expected(*n)).collect();
    assert_eq!(got, want, "{path}");
    h.shutdown().await;
}

// DescribeTable("listing security groups"), Entry("all")
async fn listing_security_groups_all(db: Db) {
    list_security_groups(db, "?space_guids=space-a,space-b,space-c", &[1, 2, 3]).await;
}

// DescribeTable("listing security groups"), Entry("filtered spaces")
async fn listing_security_groups_filtered_spaces(db: Db) {
    list_security_groups(db, "?space_guids=space-c", &[1, 2]).await;
}

// DescribeTable("listing security groups"), Entry("global")
async fn listing_security_groups_global(db: Db) {
    list_security_groups(db, "", &[1]).await;
}

// Describe("pagination"), It("returns all data with pagination requests")
async fn returns_all_data_with_pagination_requests(db: Db) {
    let h = with_security_groups(db).await;
    let base = "/networking/v1/internal/security_groups?space_guids=space-a,space-b,space-c";
    let first = internal(&h, Method::GET, &format!("{base}&limit=2"), None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json["next"], 3);
    let first_groups = first.json["security_groups"].as_array().unwrap().clone();
    assert_eq!(first_groups.len(), 2);
    let second = internal(&h, Method::GET, &format!("{base}&limit=2&from=3"), None).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.json["next"], 0);
    let second_groups = second.json["security_groups"].as_array().unwrap().clone();
    assert_eq!(second_groups.len(), 1);
    assert!(!first_groups.contains(&second_groups[0]));
    let mut all: Vec<Value> = first_groups
        .iter()
        .chain(second_groups.iter())
        .map(comparable)
        .collect();
    all.sort_by_key(|g| g["name"].to_string());
    assert_eq!(all, vec![expected(1), expected(2), expected(3)]);
    h.shutdown().await;
}

dual!(
    listing_policies_and_tags_succeeds_v1,
    adds_a_strict_transport_security_header,
    creates_a_new_tag,
    creating_a_tag_with_the_same_parameters_returns_the_same_tag,
    creating_a_tag_with_the_same_guid_and_a_different_type_fails,
    listing_security_groups_all,
    listing_security_groups_filtered_spaces,
    listing_security_groups_global,
    returns_all_data_with_pagination_requests,
);
