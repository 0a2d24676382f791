//! cf-networking-release's policy-server integration tests of the external API, ported case by
//! case (`src/code.cloudfoundry.org/policy-server/integration/`): external_api_test.go,
//! external_api_create_test.go, external_api_delete_test.go. On SQLite and PostgreSQL.
//!
//! CF's default token `valid-token` (`network.admin`, from its mock UAA) is the harness's
//! built-in admin token here; `bad-token` is any token neither kind of token verifies.
//!
//! Not ported, with why:
//! - the `Eventually(fakeMetron.AllEvents).Should(ContainElement(HaveName(...)))` assertions
//!   inside the create/delete cases (`CreatePoliciesRequestTime`, `StoreCreateSuccessTime`,
//!   `DeletePoliciesRequestTime`, `StoreDeleteSuccessTime`): metrics sent to metron, a CF
//!   deployment detail with no API meaning (Tapestry serves Prometheus metrics instead);
//! - CF starts two policy servers on one database and talks to the first: Tapestry's
//!   replicas are covered by tests/replicas_and_config.rs.
mod cfport_support;
mod common;

use cfport_support::{json_of, make_and_do, request};
use common::{Db, Harness};
use reqwest::Method;

const V1_REQUEST: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 } } } ] }"#;

// ---- external_api_test.go, Describe("authentication"), DescribeTable("all the routes") ----

/// TestMissingAuthHeader then TestBadBearerToken for one route.
async fn all_the_routes(db: Db, method: Method, route: &str, body: &str) {
    let h = Harness::new(db, |_| {}).await;
    let body = (!body.is_empty()).then(|| body.as_bytes().to_vec());
    let a = request(&h, method.clone(), route, &[], body.clone()).await;
    assert_eq!(a.status, 401, "missing authorization header");
    assert_eq!(
        a.json,
        json_of(r#"{ "error": "missing authorization header"}"#)
    );
    let a = request(
        &h,
        method,
        route,
        &[("Authorization", "Bearer bad-token")],
        body,
    )
    .await;
    assert_eq!(a.status, 401, "bad bearer token");
    assert_eq!(
        a.json,
        json_of(r#"{ "error": "failed to verify token with uaa" }"#)
    );
    h.shutdown().await;
}

// Entry("POST to policies")
async fn authentication_post_to_policies(db: Db) {
    let r = "/networking/v1/external/policies";
    all_the_routes(db, Method::POST, r, V1_REQUEST).await;
}

// Entry("GET to policies")
async fn authentication_get_to_policies(db: Db) {
    all_the_routes(db, Method::GET, "/networking/v1/external/policies", "").await;
}

// Entry("POST to policies/delete")
async fn authentication_post_to_policies_delete(db: Db) {
    let r = "/networking/v1/external/policies/delete";
    all_the_routes(db, Method::POST, r, V1_REQUEST).await;
}

// ---- external_api_test.go, Describe("uptime") and Describe("health") ----

// It("returns 200 when server is healthy"), on "/"
async fn uptime_returns_200_when_server_is_healthy(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    assert_eq!(
        make_and_do(&h, Method::GET, "/", &[], None).await.status,
        200
    );
    h.shutdown().await;
}

/// CF's `testhelpers.RemoveDatabase`: the database goes away under the running server.
async fn remove_database(h: &Harness) {
    match &h.config.database {
        Some(url) => {
            let base = std::env::var("TAPESTRY_TEST_POSTGRES").unwrap();
            let (client, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let name = url.rsplit_once('/').unwrap().1;
            client
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
        }
        None => {
            for f in ["tapestry.db", "tapestry.db-wal", "tapestry.db-shm"] {
                let _ = std::fs::remove_file(h.dir.path().join(f));
            }
        }
    }
}

// Context("when the database is unavailable"), It("still returns a 200")
async fn uptime_when_the_database_is_unavailable_still_returns_a_200(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    remove_database(&h).await;
    let a = make_and_do(&h, Method::GET, "/", &[], None).await;
    assert_eq!(a.status, 200);
    assert!(
        a.text.starts_with("Network policy server, up for"),
        "{}",
        a.text
    );
    h.shutdown().await;
}

// Describe("health"), It("returns 200 when server is healthy")
async fn health_returns_200_when_server_is_healthy(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::GET, "/health", &[], None).await;
    assert_eq!(a.status, 200);
    h.shutdown().await;
}

// ---- external_api_create_test.go, Describe("adding app-to-app policies") ----

const V1_REQUEST_MISSING_PROTOCOL: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "ports": { "start": 8080, "end": 8080 } } } ] }"#;
const V1_RESPONSE: &str = r#"{ "total_policies": 1, "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 } } } ]}"#;
const V0_REQUEST: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 8080 } } ] }"#;
const V0_REQUEST_MISSING_PROTOCOL: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "port": 8080 } } ] }"#;
const V0_RESPONSE: &str = r#"{ "total_policies": 1, "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 8080 } } ]}"#;
const MISSING_START_PORT: &str = r#"{ "error": "mapper: validate policies: missing start port" }"#;
const MISSING_PORT: &str = r#"{ "error": "mapper: validate policies: missing port" }"#;
const INVALID_PROTOCOL: &str = r#"{ "error": "mapper: validate policies: invalid destination protocol, specify either udp or tcp" }"#;

fn policies_path(version: &str) -> String {
    format!("/networking/{version}/external/policies")
}

async fn add_policies_succeeds(db: Db, version: &str, req: &str, expected: &str) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::POST, &policies_path(version), &[], Some(req)).await;
    assert_eq!((a.status, a.json), (200, json_of("{}")));
    let a = make_and_do(&h, Method::GET, &policies_path(version), &[], None).await;
    assert_eq!((a.status, a.json), (200, json_of(expected)));
    h.shutdown().await;
}

async fn add_policies_fails(db: Db, version: &str, req: &str, expected: &str) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::POST, &policies_path(version), &[], Some(req)).await;
    assert_eq!((a.status, a.json), (400, json_of(expected)));
    h.shutdown().await;
}

// DescribeTable("adding policies succeeds"), Entry("v1")
async fn adding_policies_succeeds_v1(db: Db) {
    add_policies_succeeds(db, "v1", V1_REQUEST, V1_RESPONSE).await;
}

// DescribeTable("adding policies succeeds"), Entry("v0")
async fn adding_policies_succeeds_v0(db: Db) {
    add_policies_succeeds(db, "v0", V0_REQUEST, V0_RESPONSE).await;
}

// DescribeTable("failure cases"), Entry("v1: missing ports")
async fn adding_failure_v1_missing_ports(db: Db) {
    add_policies_fails(db, "v1", V0_REQUEST, MISSING_START_PORT).await;
}

// DescribeTable("failure cases"), Entry("v1: missing protocol")
async fn adding_failure_v1_missing_protocol(db: Db) {
    add_policies_fails(db, "v1", V1_REQUEST_MISSING_PROTOCOL, INVALID_PROTOCOL).await;
}

// DescribeTable("failure cases"), Entry("v0: missing port")
async fn adding_failure_v0_missing_port(db: Db) {
    add_policies_fails(db, "v0", V1_REQUEST, MISSING_PORT).await;
}

// DescribeTable("failure cases"), Entry("v0: missing protocol")
async fn adding_failure_v0_missing_protocol(db: Db) {
    add_policies_fails(db, "v0", V0_REQUEST_MISSING_PROTOCOL, INVALID_PROTOCOL).await;
}

// ---- external_api_delete_test.go, Describe("deleting policies") ----

const DEL_V1_REQUEST: &str = r#"{ "policies": [
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 8090 } } },
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 7777, "end": 7777 } } }
] }"#;
const DEL_V1_REQUEST_NO_MATCH: &str = r#"{ "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 9999 } } } ] }"#;
const DEL_V1_REQUEST_MISSING_PROTOCOL: &str = r#"{ "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "ports": { "start": 8080, "end": 8080 } } } ] }"#;
const DEL_V1_RESPONSE: &str = r#"{
    "total_policies": 1,
    "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 1234, "end": 1234 } } } ]
}"#;
const DEL_V1_RESPONSE_NONE_DELETED: &str = r#"{ "total_policies": 3, "policies": [
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 1234, "end": 1234 } } },
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 8090 } } },
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 7777, "end": 7777 } } }
] }"#;
const DEL_V0_REQUEST: &str = r#"{ "policies": [
    {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 1234 } },
    {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 7777 } }
] }"#;
const DEL_V0_REQUEST_NO_MATCH: &str = r#"{ "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 5555 } } ] }"#;
const DEL_V0_REQUEST_MISSING_PROTOCOL: &str = r#"{ "policies": [ { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "port": 8080 } } ] }"#;
const DEL_V0_RESPONSE: &str = r#"{ "total_policies": 0, "policies": []}"#;
const DEL_V0_RESPONSE_NONE_DELETED: &str = r#"{ "total_policies": 2, "policies": [
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 1234 } },
    { "source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 7777 } }
]}"#;

/// The BeforeEach: three policies, two through v1 (one a port range), one through v0.
async fn with_three_policies(db: Db) -> Harness {
    let h = Harness::new(db, |_| {}).await;
    for (v, body) in [
        (
            "v1",
            r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 1234, "end": 1234 } } } ] }"#,
        ),
        (
            "v1",
            r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 8090 } } } ] }"#,
        ),
        (
            "v0",
            r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "port": 7777 } } ] }"#,
        ),
    ] {
        let a = make_and_do(&h, Method::POST, &policies_path(v), &[], Some(body)).await;
        assert_eq!((a.status, a.json), (200, json_of("{}")));
    }
    h
}

async fn delete_policies_succeeds(db: Db, version: &str, req: &str, expected: &str) {
    let h = with_three_policies(db).await;
    let del = format!("{}/delete", policies_path(version));
    let a = make_and_do(&h, Method::POST, &del, &[], Some(req)).await;
    assert_eq!((a.status, a.json), (200, json_of("{}")));
    let a = make_and_do(&h, Method::GET, &policies_path(version), &[], None).await;
    assert_eq!(a.status, 200);
    // CF's MatchJSON compares arrays in order; both answer in the order of creation.
    assert_eq!(a.json, json_of(expected));
    h.shutdown().await;
}

async fn delete_policies_fails(db: Db, version: &str, req: &str, expected: &str) {
    let h = with_three_policies(db).await;
    let del = format!("{}/delete", policies_path(version));
    let a = make_and_do(&h, Method::POST, &del, &[], Some(req)).await;
    assert_eq!((a.status, a.json), (400, json_of(expected)));
    h.shutdown().await;
}

// DescribeTable("deleting policies succeeds"), Entry("v1")
async fn deleting_policies_succeeds_v1(db: Db) {
    delete_policies_succeeds(db, "v1", DEL_V1_REQUEST, DEL_V1_RESPONSE).await;
}

// DescribeTable("deleting policies succeeds"), Entry("v1: no match")
async fn deleting_policies_succeeds_v1_no_match(db: Db) {
    let (req, exp) = (DEL_V1_REQUEST_NO_MATCH, DEL_V1_RESPONSE_NONE_DELETED);
    delete_policies_succeeds(db, "v1", req, exp).await;
}

// DescribeTable("deleting policies succeeds"), Entry("v0")
async fn deleting_policies_succeeds_v0(db: Db) {
    delete_policies_succeeds(db, "v0", DEL_V0_REQUEST, DEL_V0_RESPONSE).await;
}

// DescribeTable("deleting policies succeeds"), Entry("v0: no match")
async fn deleting_policies_succeeds_v0_no_match(db: Db) {
    let (req, exp) = (DEL_V0_REQUEST_NO_MATCH, DEL_V0_RESPONSE_NONE_DELETED);
    delete_policies_succeeds(db, "v0", req, exp).await;
}

// DescribeTable("failure cases"), Entry("v1: missing ports")
async fn deleting_failure_v1_missing_ports(db: Db) {
    delete_policies_fails(db, "v1", DEL_V0_REQUEST, MISSING_START_PORT).await;
}

// DescribeTable("failure cases"), Entry("v1: missing protocol")
async fn deleting_failure_v1_missing_protocol(db: Db) {
    let req = DEL_V1_REQUEST_MISSING_PROTOCOL;
    delete_policies_fails(db, "v1", req, INVALID_PROTOCOL).await;
}

// DescribeTable("failure cases"), Entry("v0: missing port")
async fn deleting_failure_v0_missing_port(db: Db) {
    delete_policies_fails(db, "v0", DEL_V1_REQUEST, MISSING_PORT).await;
}

// DescribeTable("failure cases"), Entry("v0: missing protocol")
async fn deleting_failure_v0_missing_protocol(db: Db) {
    let req = DEL_V0_REQUEST_MISSING_PROTOCOL;
    delete_policies_fails(db, "v0", req, INVALID_PROTOCOL).await;
}

dual!(
    authentication_post_to_policies,
    authentication_get_to_policies,
    authentication_post_to_policies_delete,
    uptime_returns_200_when_server_is_healthy,
    uptime_when_the_database_is_unavailable_still_returns_a_200,
    health_returns_200_when_server_is_healthy,
    adding_policies_succeeds_v1,
    adding_policies_succeeds_v0,
    adding_failure_v1_missing_ports,
    adding_failure_v1_missing_protocol,
    adding_failure_v0_missing_port,
    adding_failure_v0_missing_protocol,
    deleting_policies_succeeds_v1,
    deleting_policies_succeeds_v1_no_match,
    deleting_policies_succeeds_v0,
    deleting_policies_succeeds_v0_no_match,
    deleting_failure_v1_missing_ports,
    deleting_failure_v1_missing_protocol,
    deleting_failure_v0_missing_port,
    deleting_failure_v0_missing_protocol,
);
