//! UAA-issued JWTs (RS256): a key file or a JWKS from a stand-in UAA; valid, expired, wrong
//! issuer, wrong signature, unknown key. On SQLite (the store plays no part in JWT checks).
mod common;

use std::path::PathBuf;

use common::{policies, policy, Db, Harness};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::Method;
use serde_json::{json, Value};
use tapestry_policy::uaa::{KeySource, UaaConfig};

const ISSUER: &str = "https://uaa.test/oauth/token";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/uaa")
        .join(name)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn token(key: &str, kid: Option<&str>, claims: Value) -> String {
    let mut h = Header::new(Algorithm::RS256);
    h.kid = kid.map(str::to_string);
    let k = EncodingKey::from_rsa_pem(&std::fs::read(fixture(key)).unwrap()).unwrap();
    encode(&h, &claims, &k).unwrap()
}

fn claims(scope: &[&str], iss: &str, exp: i64) -> Value {
    json!({"user_name": "alice", "sub": "user-guid", "scope": scope, "iss": iss, "exp": exp,
           "client_id": "cf"})
}

/// A stand-in UAA serving its JWK set at /token_keys.
async fn stand_in_uaa() -> String {
    let jwks: Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks.json")).unwrap()).unwrap();
    let app = axum::Router::new().route(
        "/token_keys",
        axum::routing::get(move || {
            let j = jwks.clone();
            async move { axum::Json(j) }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    format!("http://{addr}/token_keys")
}

async fn check(h: &Harness, kid: Option<&str>) {
    let p = "/networking/v1/external/policies";
    let get = |t: String| async move {
        let (s, v, _) = h
            .raw(
                Method::GET,
                "/networking/v1/external/whoami",
                Some(&t),
                None,
            )
            .await;
        (s, v)
    };
    let admin = token(
        "key.pem",
        kid,
        claims(&["openid", "network.admin"], ISSUER, now() + 600),
    );
    assert_eq!(get(admin.clone()).await, (200, json!({"subject": "alice"})));
    let (s, _, _) = h
        .raw(
            Method::POST,
            p,
            Some(&admin),
            Some(policies(vec![policy("A", "B", 1)]).to_string().into_bytes()),
        )
        .await;
    assert_eq!(s, 200);
    let refused = (401, json!({"error": "failed to verify token with uaa"}));
    for bad in [
        token(
            "key.pem",
            kid,
            claims(&["network.admin"], ISSUER, now() - 3600),
        ),
        token(
            "key.pem",
            kid,
            claims(
                &["network.admin"],
                "https://evil.test/oauth/token",
                now() + 600,
            ),
        ),
        token(
            "other-key.pem",
            kid,
            claims(&["network.admin"], ISSUER, now() + 600),
        ),
        "a.b.c".to_string(),
    ] {
        assert_eq!(get(bad).await, refused);
    }
    // Scopes decide: network.write may list (nothing of its own: no spaces without Cloud
    // Controller), not call admin endpoints; other scopes get CF's scope error.
    let write = token(
        "key.pem",
        kid,
        claims(&["network.write"], ISSUER, now() + 600),
    );
    assert_eq!(
        get(write.clone()).await,
        (
            403,
            json!({"error": "provided scopes [network.write] do not include allowed scopes [network.admin]"})
        )
    );
    let (s, v, _) = h.raw(Method::GET, p, Some(&write), None).await;
    assert_eq!((s, v["total_policies"].clone()), (200, json!(0)));
    let read = token(
        "key.pem",
        kid,
        claims(&["openid", "cloud_controller.read"], ISSUER, now() + 600),
    );
    let (s, v, _) = h.raw(Method::GET, p, Some(&read), None).await;
    assert_eq!(
        (s, v),
        (
            403,
            json!({"error": "provided scopes [openid cloud_controller.read] do not include allowed scopes [network.admin network.write]"})
        )
    );
    // The built-in tokens keep working.
    let (s, _) = h.get(p).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_key_file() {
    let h = Harness::new(Db::Sqlite, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::File(fixture("public.pem")),
            issuer: Some(ISSUER.into()),
        })
    })
    .await;
    check(&h, None).await;
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_jwks_url() {
    let url = stand_in_uaa().await;
    let h = Harness::new(Db::Sqlite, |c| {
        c.cf.uaa = Some(UaaConfig {
            keys: KeySource::Jwks(url),
            issuer: Some(ISSUER.into()),
        })
    })
    .await;
    check(&h, Some("test-key")).await;
    // A token naming a key the JWKS does not have is refused (after one re-fetch).
    let t = token(
        "key.pem",
        Some("rotated"),
        claims(&["network.admin"], ISSUER, now() + 600),
    );
    let (s, _, _) = h
        .raw(
            Method::GET,
            "/networking/v1/external/whoami",
            Some(&t),
            None,
        )
        .await;
    assert_eq!(s, 401);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uaa_bad_key_source_is_a_clear_start_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = tapestry_policy::ControlConfig::new(dir.path());
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.internal_listen = "127.0.0.1:0".parse().unwrap();
    config.cf.uaa = Some(UaaConfig {
        keys: KeySource::File(dir.path().join("missing.pem")),
        issuer: Some(ISSUER.into()),
    });
    let e = tapestry_policy::start(config).await.err().expect("refused");
    assert!(e.to_string().contains("missing.pem"), "{e}");
}
