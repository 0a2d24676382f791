//! cf-networking-release's policy-server integration tests of the external API's headers,
//! ported case by case (`src/code.cloudfoundry.org/policy-server/integration/`): cors_test.go,
//! hsts_header_test.go, xxss_header_test.go, x_content_type_options_header_test.go. On SQLite
//! and PostgreSQL.
//!
//! Not ported, with why:
//! - hsts_header_test.go, Context("when TLS is enabled"), It("returns Strict-Transport-Security
//!   headers when an endpoint is hit"): CF's `enable_tls` serves the external API over https;
//!   Tapestry's external listener is plain HTTP behind the router (as CF's default), so there is
//!   no TLS-enabled external API to ask. The internal API, which is TLS, carries the header
//!   (tests/cf_port_internal.rs, "adds a Strict-Transport-Security header").
mod cfport_support;
mod common;

use cfport_support::make_and_do;
use common::{Db, Harness};
use reqwest::Method;

const POLICIES: &str = "/networking/v1/external/policies";

/// cors_test.go's BeforeEach: `allowed_cors_domains` with two origins.
async fn cors_harness(db: Db) -> Harness {
    Harness::new(db, |c| {
        c.cf.cors_domains = vec![
            "https://www.google.com".into(),
            "https://www.mozilla.org".into(),
        ]
    })
    .await
}

// cors_test.go, Context("when a user makes a cors preflight request"), It("returns cors headers")
async fn cors_preflight_returns_cors_headers(db: Db) {
    let h = cors_harness(db).await;
    let origin = [("origin", "https://www.google.com")];
    let a = make_and_do(&h, Method::OPTIONS, POLICIES, &origin, None).await;
    assert!(a
        .header_all("access-control-allow-origin")
        .contains(&"https://www.google.com".to_string()));
    assert!(a
        .header_all("access-control-allow-methods")
        .contains(&"POST,GET,OPTIONS".to_string()));
    assert!(a
        .header_all("access-control-allow-headers")
        .contains(&"authorization".to_string()));
    assert!(a
        .header_all("x-frame-options")
        .contains(&"deny".to_string()));
    assert!(a
        .header_all("content-security-policy")
        .contains(&"frame-ancestors 'none'".to_string()));
    h.shutdown().await;
}

// cors_test.go, Context("when a user makes a GET request"), It("returns cors allow origin header")
async fn cors_get_returns_cors_allow_origin_header(db: Db) {
    let h = cors_harness(db).await;
    let origin = [("origin", "https://www.mozilla.org")];
    let a = make_and_do(&h, Method::GET, POLICIES, &origin, None).await;
    assert!(a
        .header_all("access-control-allow-origin")
        .contains(&"https://www.mozilla.org".to_string()));
    assert!(a
        .header_all("x-frame-options")
        .contains(&"deny".to_string()));
    assert!(a
        .header_all("content-security-policy")
        .contains(&"frame-ancestors 'none'".to_string()));
    h.shutdown().await;
}

// hsts_header_test.go, Context("when TLS is disabled"), It("should not add
// Strict-Transport-Security header in the response")
async fn hsts_tls_disabled_no_strict_transport_security_header(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::GET, POLICIES, &[], None).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("strict-transport-security").unwrap_or(""), "");
    h.shutdown().await;
}

// xxss_header_test.go, It("returns x-xss-protection headers when an endpoint is hit")
async fn returns_x_xss_protection_headers(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::GET, POLICIES, &[], None).await;
    assert_eq!(a.header("x-xss-protection"), Some("1; mode=block"));
    h.shutdown().await;
}

// x_content_type_options_header_test.go, It("returns X-Content-Type-Options headers when an
// endpoint is hit")
async fn returns_x_content_type_options_headers(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let a = make_and_do(&h, Method::GET, POLICIES, &[], None).await;
    assert_eq!(a.header("x-content-type-options"), Some("nosniff"));
    h.shutdown().await;
}

dual!(
    cors_preflight_returns_cors_headers,
    cors_get_returns_cors_allow_origin_header,
    hsts_tls_disabled_no_strict_transport_security_header,
    returns_x_xss_protection_headers,
    returns_x_content_type_options_headers,
);
