//! cf-networking-release's policy-server integration tests that need Cloud Controller, ported
//! case by case (`src/code.cloudfoundry.org/policy-server/integration/`): space_developer_test.go
//! and policy_cleanup_test.go, against ports of CF's own doubles (tests/cfport_support: the
//! Cloud Controller answers in the shapes of `helpers.MockCCServer`'s fixtures and of
//! `ConfigurableMockCCServer`, and UAA's token endpoint hands out `valid-token`). CF's mock UAA
//! `/check_token` tokens are UAA JWTs with the same scopes and subjects
//! (`cfport_support::cf_token`). On SQLite and PostgreSQL.
//!
//! Not ported, with why:
//! - space_developer_test.go, Context("when space developer self-service is enabled"), both
//!   Its ("succeeds for developers with access to apps", and "when one app is in spaces they do
//!   not have access to"): CF's `enable_space_developer_self_service` lets tokens without
//!   `network.write` write policies of their spaces; Tapestry has no such option (a token needs
//!   `network.write` or `network.admin`, as CF's default), listed in policy/README.md's
//!   deliberate differences;
//! - the metron assertions of policy_cleanup_test.go (`CleanupRequestTime`,
//!   `StoreDeleteSuccessTime`): metrics to metron, no API meaning.
mod cfport_support;
mod common;

use std::time::Duration;

use cfport_support::{cf_harness, cf_token, json_of, request, Cc, MockCc};
use common::{Db, Harness};
use reqwest::Method;
use serde_json::{json, Value};

const POLICIES: &str = "/networking/v1/external/policies";
const DELETE: &str = "/networking/v1/external/policies/delete";
const BODY: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 } } } ] }"#;
const NOT_MINE: &str = r#"{ "policies": [ {"source": { "id": "some-app-guid" }, "destination": { "id": "app-guid-not-in-my-spaces", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 } } } ] }"#;
const NO_SCOPE: &str = r#"{ "error": "provided scopes [] do not include allowed scopes [network.admin network.write]"}"#;
const CANNOT_ACCESS: &str = r#"{ "error": "one or more applications cannot be found or accessed"}"#;

/// `helpers.MockCCServer`'s world: the apps of the fixtures (`AppsV3OneSpace`,
/// `AppsV3TwoSpaces`, `AppsV3LiveApp1GUID`...) with the apps these cases name, in `space-1-guid`
/// (`Space1`: `space-1` in `org-1-guid`) except `app-guid-not-in-my-spaces` in `space-2-guid`
/// (`Space2`); the user `some-user-or-client-id` is a developer in `space-1` only
/// (`SubjectSpace` for it, `SubjectSpaceEmpty` for `space-2`). Cloud Controller does not know
/// the `not-in-space-app-N-guid` apps.
fn mock_cc_server() -> Cc {
    let mut w = MockCc::default();
    for app in [
        "some-app-guid",
        "some-other-app-guid",
        "another-app-guid",
        "yet-another-other-app-guid",
        "live-app-1-guid",
        "live-app-2-guid",
    ] {
        w.apps.insert(app.into(), Some("space-1-guid".into()));
    }
    w.apps.insert(
        "app-guid-not-in-my-spaces".into(),
        Some("space-2-guid".into()),
    );
    w.spaces.insert(
        "space-1-guid".into(),
        ("space-1".into(), "org-1-guid".into()),
    );
    w.spaces.insert(
        "space-2-guid".into(),
        ("space-2".into(), "org-1-guid".into()),
    );
    w.developer
        .insert("some-user-or-client-id".into(), vec!["space-1-guid".into()]);
    std::sync::Arc::new(std::sync::Mutex::new(w))
}

async fn space_developer(db: Db) -> Harness {
    cf_harness(db, &mock_cc_server(), |_| {}).await
}

/// makeNewRequest: `Authorization: Bearer <token>` (CF's `space-dev-with-network-write-token`
/// unless another is named).
async fn as_token(
    h: &Harness,
    token: &str,
    method: Method,
    path: &str,
    body: Option<&str>,
) -> (u16, Value) {
    let bearer = format!("Bearer {}", cf_token(token));
    let body = body.map(|b| b.as_bytes().to_vec());
    let a = request(h, method, path, &[("Authorization", &bearer)], body).await;
    (a.status, a.json)
}

const DEV: &str = "space-dev-with-network-write-token";

// ---- space_developer_test.go, Describe("Create policies") ----

// Context("when space developer self-service is disabled"),
// It("succeeds for developers with access to apps and network.write permission")
async fn create_succeeds_for_developers_with_access_and_network_write(db: Db) {
    let cc = mock_cc_server();
    let h = cf_harness(db, &cc, |_| {}).await;
    let (s, _) = as_token(&h, DEV, Method::POST, POLICIES, Some(BODY)).await;
    assert_eq!(s, 200);
    // Decided by the double: the client token, the apps, Tapestry's v3 roles probe (404 here, as
    // on a Cloud Controller without v3 roles), then CF's v2 calls: the space, the developer search.
    let log = cc.lock().unwrap().log.clone();
    assert_eq!(
        log,
        [
            "POST /oauth/token",
            "GET /v3/apps?guids=some-app-guid%2Csome-other-app-guid&per_page=2",
            "GET /v3/roles?types=space_developer&user_guids=some-user-or-client-id&space_guids=space-1-guid&per_page=5000",
            "GET /v2/spaces/space-1-guid",
            "GET /v2/spaces?q=developer_guid%3Asome-user-or-client-id&q=name%3Aspace-1&q=organization_guid%3Aorg-1-guid",
        ]
    );
    h.shutdown().await;
}

// Context("when they do not have the network.write scope"),
// It("returns a 403 with a meaninful error")
async fn create_without_network_write_returns_403(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, "space-dev-token", Method::POST, POLICIES, Some(BODY)).await;
    assert_eq!(got, (403, json_of(NO_SCOPE)));
    h.shutdown().await;
}

// Context("when one app is in spaces they do not have access to"),
// It("returns a 403 with a meaningful error")
async fn create_with_an_app_in_another_space_returns_403(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, DEV, Method::POST, POLICIES, Some(NOT_MINE)).await;
    assert_eq!(got, (403, json_of(CANNOT_ACCESS)));
    h.shutdown().await;
}

// It("fails for requests with bodies larger than 10 MB")
async fn create_fails_for_bodies_larger_than_10_mb(db: Db) {
    let h = space_developer(db).await;
    let eleven_mb = vec![0u8; 11 << 20];
    let bearer = format!("Bearer {}", cf_token(DEV));
    let a = request(
        &h,
        Method::POST,
        POLICIES,
        &[("Authorization", &bearer)],
        Some(eleven_mb),
    )
    .await;
    let want = json_of(r#"{"error": "failed reading request body"}"#);
    assert_eq!((a.status, a.json), (400, want));
    h.shutdown().await;
}

// ---- Describe("Quotas") ----

// It("rejects requests to add policies above the quota")
async fn quotas_reject_requests_to_add_policies_above_the_quota(db: Db) {
    let h = space_developer(db).await;
    // By("adding the maximum allowed policies")
    let two = r#"{ "policies": [
        {"source": { "id": "some-app-guid" }, "destination": { "id": "some-other-app-guid", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 } } },
        {"source": { "id": "some-app-guid" }, "destination": { "id": "another-app-guid", "protocol": "udp", "ports": { "start": 7070, "end": 7070 } } }
    ] }"#;
    assert_eq!(
        as_token(&h, DEV, Method::POST, POLICIES, Some(two)).await.0,
        200
    );
    // By("seeing that adding another policy fails")
    let third = r#"{ "policies": [
        {"source": { "id": "some-app-guid" }, "destination": { "id": "yet-another-other-app-guid", "protocol": "tcp", "ports": { "start": 9000, "end": 9000 } } }
    ] }"#;
    let got = as_token(&h, DEV, Method::POST, POLICIES, Some(third)).await;
    assert_eq!(got, (403, json_of(r#"{"error": "policy quota exceeded"}"#)));
    // By("deleting a policy")
    let one = r#"{ "policies": [
        {"source": { "id": "some-app-guid" }, "destination": { "id": "another-app-guid", "protocol": "udp", "ports": { "start": 7070, "end": 7070 } } }
    ] }"#;
    assert_eq!(
        as_token(&h, DEV, Method::POST, DELETE, Some(one)).await.0,
        200
    );
    // By("seeing that adding another policy succeeds")
    assert_eq!(
        as_token(&h, DEV, Method::POST, POLICIES, Some(third))
            .await
            .0,
        200
    );
    h.shutdown().await;
}

// ---- Describe("Delete policies") ----

// It("succeeds for developers with access to apps and network.write permission")
async fn delete_succeeds_for_developers_with_access_and_network_write(db: Db) {
    let h = space_developer(db).await;
    assert_eq!(
        as_token(&h, DEV, Method::POST, DELETE, Some(BODY)).await.0,
        200
    );
    h.shutdown().await;
}

// Context("when they do not have the network.write scope"),
// It("returns a 403 with a meaninful error")
async fn delete_without_network_write_returns_403(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, "space-dev-token", Method::POST, DELETE, Some(BODY)).await;
    assert_eq!(got, (403, json_of(NO_SCOPE)));
    h.shutdown().await;
}

// Context("when one app is in spaces they do not have access to"),
// It("returns a 403 with a meaningful error")
async fn delete_with_an_app_in_another_space_returns_403(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, DEV, Method::POST, DELETE, Some(NOT_MINE)).await;
    assert_eq!(got, (403, json_of(CANNOT_ACCESS)));
    h.shutdown().await;
}

// ---- Describe("List policies") ----

// Context("when there are no policies"), It("succeeds")
async fn list_when_there_are_no_policies_succeeds(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, DEV, Method::GET, POLICIES, None).await;
    let want = json_of(r#"{ "total_policies": 0, "policies": [] }"#);
    assert_eq!(got, (200, want));
    h.shutdown().await;
}

// Context("when there are policies in spaces the user does not belong to"),
// It("does not return those policies")
async fn list_does_not_return_policies_in_spaces_the_user_does_not_belong_to(db: Db) {
    let h = space_developer(db).await;
    let mut list: Vec<Value> = (0..150)
        .map(|i| {
            json!({"source": {"id": "live-app-1-guid"},
                   "destination": {"id": format!("not-in-space-app-{i}-guid"),
                                   "ports": {"start": 8090, "end": 8090}, "protocol": "tcp"}})
        })
        .collect();
    list.push(json!({"source": {"id": "live-app-1-guid"},
                     "destination": {"id": "live-app-2-guid",
                                     "ports": {"start": 8090, "end": 8090}, "protocol": "tcp"}}));
    let body = json!({ "policies": list }).to_string();
    let (s, _) = as_token(&h, "valid-token", Method::POST, POLICIES, Some(&body)).await;
    assert_eq!(s, 200);
    let got = as_token(&h, DEV, Method::GET, POLICIES, None).await;
    let want = r#"{
        "total_policies": 1,
        "policies": [ {"source": { "id": "live-app-1-guid" }, "destination": { "id": "live-app-2-guid", "protocol": "tcp", "ports": { "start": 8090, "end": 8090 }}} ]
    }"#;
    assert_eq!(got, (200, json_of(want)));
    h.shutdown().await;
}

// Context("when they do not have the network.write scope"),
// It("returns a 403 with a meaningful error")
async fn list_without_network_write_returns_403(db: Db) {
    let h = space_developer(db).await;
    let got = as_token(&h, "space-dev-token", Method::GET, POLICIES, None).await;
    assert_eq!(got, (403, json_of(NO_SCOPE)));
    h.shutdown().await;
}

// ---- policy_cleanup_test.go ----

/// The BeforeEach: `ConfigurableMockCCServer` with `live-app-1-guid` and `live-app-2-guid`
/// (GUID-only resources), `cc_app_request_chunk_size` 1, `cleanup_interval` 1 (CF's minutes:
/// 60 s here; the automatic case shortens it), and three policies, one to `dead-app`.
async fn with_cleanup_policies(db: Db, interval: Duration) -> (Harness, Cc) {
    let mut w = MockCc::default();
    w.apps.insert("live-app-1-guid".into(), None);
    w.apps.insert("live-app-2-guid".into(), None);
    let cc: Cc = std::sync::Arc::new(std::sync::Mutex::new(w));
    let h = cf_harness(db, &cc, |c| {
        c.cf.cleanup_interval = interval;
        c.cf.cc.as_mut().unwrap().chunk_size = 1;
    })
    .await;
    let body = r#"{ "policies": [
        {"source": { "id": "live-app-1-guid" }, "destination": { "id": "live-app-2-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 8080 } } },
        {"source": { "id": "live-app-2-guid" }, "destination": { "id": "live-app-2-guid", "protocol": "tcp", "ports": { "start": 9999, "end": 9999 } } },
        {"source": { "id": "live-app-1-guid" }, "destination": { "id": "dead-app", "protocol": "tcp", "ports": { "start": 3333, "end": 3333 }} }
    ]} "#;
    let (s, _) = as_token(&h, "valid-token", Method::POST, POLICIES, Some(body)).await;
    assert_eq!(s, 200);
    (h, cc)
}

async fn cleanup_policies_succeeds(db: Db, version: &str) {
    let (h, cc) = with_cleanup_policies(db, Duration::from_secs(60)).await;
    let path = format!("/networking/{version}/external/policies/cleanup");
    let got = as_token(&h, "valid-token", Method::POST, &path, None).await;
    // cc_app_request_chunk_size 1: one /v3/apps request per app of the policies.
    let asked: Vec<String> = (cc.lock().unwrap().log.iter())
        .filter(|l| l.starts_with("GET /v3/apps"))
        .cloned()
        .collect();
    assert_eq!(asked.len(), 3, "{asked:?}");
    assert!(
        asked.iter().all(|l| l.ends_with("&per_page=1")),
        "{asked:?}"
    );
    let stale = r#"{
        "total_policies":1,
        "policies": [
        {"source": { "id": "live-app-1-guid" }, "destination": { "id": "dead-app", "protocol": "tcp", "ports": { "start": 3333, "end": 3333 } } }
        ]}"#;
    assert_eq!(got, (200, json_of(stale)));
    h.shutdown().await;
}

// Describe("Cleanup policies endpoint"), DescribeTable("cleanup policies succeeds"), Entry("v1")
async fn cleanup_policies_succeeds_v1(db: Db) {
    cleanup_policies_succeeds(db, "v1").await;
}

// Describe("Cleanup policies endpoint"), DescribeTable("cleanup policies succeeds"), Entry("v0")
async fn cleanup_policies_succeeds_v0(db: Db) {
    cleanup_policies_succeeds(db, "v0").await;
}

// Describe("Automatic Stale Policy Cleanup"), Context("c2c policies"),
// It("eventually cleans up stale c2c policies")
async fn eventually_cleans_up_stale_c2c_policies(db: Db) {
    let (h, _cc) = with_cleanup_policies(db, Duration::from_secs(1)).await;
    let active = json_of(
        r#"{ "total_policies": 2,
        "policies": [
            {"source": { "id": "live-app-1-guid" }, "destination": { "id": "live-app-2-guid", "protocol": "tcp", "ports": { "start": 8080, "end": 8080 } } },
            {"source": { "id": "live-app-2-guid" }, "destination": { "id": "live-app-2-guid", "protocol": "tcp", "ports": { "start": 9999, "end": 9999 } } }
        ]}"#,
    );
    // Eventually(listPolicies): polled, with a deadline far above the 1 s interval.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (s, v) = as_token(&h, "valid-token", Method::GET, POLICIES, None).await;
        assert_eq!(s, 200);
        if v == active {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not cleaned up: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    h.shutdown().await;
}

dual!(
    create_succeeds_for_developers_with_access_and_network_write,
    create_without_network_write_returns_403,
    create_with_an_app_in_another_space_returns_403,
    create_fails_for_bodies_larger_than_10_mb,
    quotas_reject_requests_to_add_policies_above_the_quota,
    delete_succeeds_for_developers_with_access_and_network_write,
    delete_without_network_write_returns_403,
    delete_with_an_app_in_another_space_returns_403,
    list_when_there_are_no_policies_succeeds,
    list_does_not_return_policies_in_spaces_the_user_does_not_belong_to,
    list_without_network_write_returns_403,
    cleanup_policies_succeeds_v1,
    cleanup_policies_succeeds_v0,
    eventually_cleans_up_stale_c2c_policies,
);
