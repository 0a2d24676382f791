//! Instance identity certificates: `POST /internal/instance_identity`.
mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{Db, Harness};
use rcgen::{CertificateParams, KeyPair, PublicKeyData};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tapestry_policy::identity::{IdentityRequest, IssuedIdentity};
use tapestry_policy::ClientError;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::*;

fn csr(key: &KeyPair) -> String {
    CertificateParams::default()
        .serialize_request(key)
        .unwrap()
        .pem()
        .unwrap()
}

fn request(key: &KeyPair) -> IdentityRequest {
    IdentityRequest {
        csr: csr(key),
        handle: "c0ffee-1".into(),
        ip: "10.255.1.5".into(),
        app_id: "app-a".into(),
        space_id: "space-s".into(),
        org_id: "org-o".into(),
        lifetime_secs: None,
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn status(e: ClientError) -> (u16, String) {
    match e {
        ClientError::Status { status, message } => (status, message),
        other => panic!("expected a status error, got {other}"),
    }
}

fn der(pem: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// rustls (webpki) accepts the certificate as a server for `name` and as a client.
fn verify_with_rustls(issued: &IssuedIdentity, name: &str) -> Result<(), rustls::Error> {
    use rustls::client::danger::ServerCertVerifier;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(der(&issued.ca))).unwrap();
    let roots = std::sync::Arc::new(roots);
    let leaf = CertificateDer::from(der(&issued.certificate));
    let now = UnixTime::now();
    rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .unwrap()
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(name.to_string()).unwrap(),
            &[],
            now,
        )?;
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider)
        .build()
        .unwrap()
        .verify_client_cert(&leaf, &[], now)?;
    Ok(())
}

async fn identity_contents(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let admin = h.admin();
    admin.add_route("web.apps.internal", "app-a").await.unwrap();
    admin.add_route("api.apps.internal", "app-a").await.unwrap();
    admin
        .add_route("other.apps.internal", "app-b")
        .await
        .unwrap();
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issued = h
        .internal()
        .instance_identity(&request(&key))
        .await
        .unwrap();
    let t = now();

    let cert_der = der(&issued.certificate);
    let (_, cert) = X509Certificate::from_der(&cert_der).unwrap();
    // Subject: three OUs and the handle as CN, in Diego's order.
    let attrs: Vec<(String, String)> = cert
        .subject()
        .iter_attributes()
        .map(|a| {
            (
                a.attr_type().to_id_string(),
                a.as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want = [
        ("2.5.4.11", "organization:org-o"),
        ("2.5.4.11", "space:space-s"),
        ("2.5.4.11", "app:app-a"),
        ("2.5.4.3", "c0ffee-1"),
    ];
    assert_eq!(
        attrs,
        want.map(|(a, b)| (a.to_string(), b.to_string())).to_vec()
    );
    // SANs: the handle, the app's routes (not app-b's), the container IP.
    let san = cert.subject_alternative_name().unwrap().unwrap().value;
    let mut dns = vec![];
    let mut ips = vec![];
    for n in &san.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(ip) => ips.push(ip.to_vec()),
            other => panic!("unexpected SAN {other:?}"),
        }
    }
    assert_eq!(dns[0], "c0ffee-1");
    let mut routes = dns[1..].to_vec();
    routes.sort();
    assert_eq!(routes, ["api.apps.internal", "web.apps.internal"]);
    assert_eq!(ips, vec![vec![10, 255, 1, 5]]);
    // EKU serverAuth + clientAuth, not a CA.
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!cert.is_ca());
    // 24 h, give or take the 30 s back-dating and the test's own time.
    let nb = cert.validity().not_before.timestamp() as u64;
    let na = cert.validity().not_after.timestamp() as u64;
    assert!(na.abs_diff(t + 24 * 3600) <= 5, "not_after {na}, now {t}");
    assert!(nb <= t && t - nb <= 35, "not_before {nb}, now {t}");
    assert_eq!((issued.not_before, issued.not_after), (nb, na));
    // The key is the CSR's; the CA in the answer signed it; the issuer is that CA.
    assert_eq!(
        cert.public_key().subject_public_key.data.as_ref(),
        key.der_bytes()
    );
    let ca_der = der(&issued.ca);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert!(ca.is_ca());
    cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(cert.issuer(), ca.subject());
    // And rustls takes it, by route name, by handle and by IP, for servers and clients.
    for name in ["web.apps.internal", "c0ffee-1", "10.255.1.5"] {
        verify_with_rustls(&issued, name).unwrap();
    }
    assert!(verify_with_rustls(&issued, "other.apps.internal").is_err());
    // Serial numbers differ between certificates.
    let again = h
        .internal()
        .instance_identity(&request(&key))
        .await
        .unwrap();
    let (_, cert2) = X509Certificate::from_der(&der(&again.certificate))
        .map(|(r, c)| (r.len(), c.serial.clone()))
        .unwrap();
    assert_ne!(cert2, cert.serial);
    h.shutdown().await;
}

async fn identity_lifetime(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let key = KeyPair::generate().unwrap();
    for (asked, want) in [(60, 60), (1, 10), (10 * 24 * 3600, 24 * 3600)] {
        let mut r = request(&key);
        r.lifetime_secs = Some(asked);
        let t = now();
        let issued = h.internal().instance_identity(&r).await.unwrap();
        assert!(
            issued.not_after.abs_diff(t + want) <= 3,
            "asked {asked}: not_after {} now {t}",
            issued.not_after
        );
        assert!(issued.not_before <= t);
    }
    h.shutdown().await;
}

async fn identity_bad_requests(db: Db) {
    let h = Harness::new(db, |_| {}).await;
    let c = h.internal();
    let key = KeyPair::generate().unwrap();
    // A CSR whose signature does not verify: flip a bit of the signature.
    let mut d = der_csr(&csr(&key));
    let last = d.len() - 1;
    d[last] ^= 0x01;
    let tampered = ::pem::encode(&::pem::Pem::new("CERTIFICATE REQUEST", d));
    type Tweak = Box<dyn Fn(&mut IdentityRequest)>;
    let cases: Vec<(Tweak, &str)> = vec![
        (
            Box::new(move |r| r.csr = tampered.clone()),
            "csr: the signature",
        ),
        (
            Box::new(|r| r.csr = "-----BEGIN X-----\nAAAA\n-----END X-----\n".into()),
            "csr: not a PEM",
        ),
        (Box::new(|r| r.csr = String::new()), "csr: required"),
        (
            Box::new(|r| r.ip = "10.255.1".into()),
            "ip: '10.255.1' is not an IPv4 address",
        ),
        (
            Box::new(|r| r.ip = "0.0.0.0".into()),
            "ip: 0.0.0.0 is not a unicast address",
        ),
        (Box::new(|r| r.handle = String::new()), "handle: required"),
        (
            Box::new(|r| r.handle = "has space".into()),
            "handle: must be",
        ),
        (Box::new(|r| r.app_id = " ".into()), "app_id: required"),
        (
            Box::new(|r| r.space_id = "a\nb".into()),
            "space_id: must be",
        ),
        (Box::new(|r| r.org_id = "o".repeat(300)), "org_id: must be"),
        (
            Box::new(|r| r.lifetime_secs = Some(0)),
            "lifetime_secs: must be positive",
        ),
    ];
    for (tweak, want) in cases {
        let mut r = request(&key);
        tweak(&mut r);
        let (s, m) = status(c.instance_identity(&r).await.unwrap_err());
        assert_eq!(s, 400, "{m}");
        assert!(m.starts_with(want), "want {want:?}, got {m:?}");
    }
    // Not JSON.
    let raw = reqwest::Client::builder()
        .use_preconfigured_tls(
            tapestry_policy::certs::client_config(&h.c().credentials_dir, true).unwrap(),
        )
        .build()
        .unwrap();
    let r = raw
        .post(format!(
            "https://{}/internal/instance_identity",
            h.c().internal_addr
        ))
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Without a cell certificate: no TLS session at all.
    let anon = tapestry_policy::client::InternalClient::without_identity(
        &format!("https://{}", h.c().internal_addr),
        &h.c().credentials_dir,
    )
    .unwrap();
    assert!(!matches!(
        anon.instance_identity(&request(&key)).await.unwrap_err(),
        ClientError::Status { .. }
    ));
    h.shutdown().await;
}

fn der_csr(pem_text: &str) -> Vec<u8> {
    ::pem::parse(pem_text).unwrap().into_contents()
}

async fn identity_ca_persists_across_restarts(db: Db) {
    use std::os::unix::fs::PermissionsExt;
    let mut h = Harness::new(db, |_| {}).await;
    let key = KeyPair::generate().unwrap();
    let first = h
        .internal()
        .instance_identity(&request(&key))
        .await
        .unwrap();
    let dir = tapestry_policy::identity::identity_dir(h.dir.path());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("ca-key.pem")), 0o600);
    assert_eq!(
        std::fs::read_to_string(dir.join("ca.pem")).unwrap(),
        first.ca
    );
    h.restart().await;
    let second = h
        .internal()
        .instance_identity(&request(&key))
        .await
        .unwrap();
    assert_eq!(first.ca, second.ca, "the same CA after a restart");
    let ca_der = der(&first.ca);
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    let second_der = der(&second.certificate);
    let (_, cert) = X509Certificate::from_der(&second_der).unwrap();
    cert.verify_signature(Some(ca.public_key())).unwrap();
    // The instance CA is not the cell CA.
    let cell_ca = std::fs::read_to_string(h.c().credentials_dir.join("ca.pem")).unwrap();
    assert_ne!(cell_ca, first.ca);
    h.shutdown().await;
}

dual!(
    identity_contents,
    identity_lifetime,
    identity_bad_requests,
    identity_ca_persists_across_restarts
);
