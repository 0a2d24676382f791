//! A rustls client against `Session`, entirely in memory.
use std::io::{Read, Write};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};
use tapestry_tls_proxy::{
    ConfigError, Credentials, Plaintext, Session, SessionError, TerminatorConfig,
    TerminatorOptions, TlsVersions,
};

struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = p.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(p, key),
        }
    }

    /// (cert PEM, key PEM), ECDSA P-256.
    fn leaf(&self, cn: &str, eku: ExtendedKeyUsagePurpose) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(vec![cn.to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_creds(&self, cn: &str, with_ca: bool) -> Credentials {
        let (cert, key) = self.leaf(cn, ExtendedKeyUsagePurpose::ServerAuth);
        let ca = with_ca.then_some(self.pem.as_bytes());
        Credentials::from_pem(cert.as_bytes(), key.as_bytes(), ca).unwrap()
    }
}

fn der(pem: &str) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn client(
    ca: &Ca,
    version: &'static rustls::SupportedProtocolVersion,
    alpn: &[&str],
    identity: Option<(String, String)>,
) -> ClientConnection {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    roots.add(der(&ca.pem)).unwrap();
    let b = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((cert, key)) => b
            .with_client_auth_cert(
                vec![der(&cert)],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => b.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    ClientConnection::new(Arc::new(cfg), ServerName::try_from("server.test").unwrap()).unwrap()
}

/// Moves bytes both ways until neither side has anything to say; the first error wins.
fn pump(c: &mut ClientConnection, s: &mut Session) -> Result<(), String> {
    for _ in 0..20 {
        let mut to_server = vec![];
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let mut off = 0;
        while off < to_server.len() {
            let n = s.feed_tls(&to_server[off..]);
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    // Deliver the alert, then report.
                    let mut out = vec![];
                    let _ = s.take_tls(&mut out);
                    let _ = c.read_tls(&mut out.as_slice());
                    let _ = c.process_new_packets();
                    return Err(format!("server: {e}"));
                }
            };
            if n == 0 {
                break;
            }
            off += n;
        }
        let mut to_client = vec![];
        s.take_tls(&mut to_client).unwrap();
        let mut rd = to_client.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets()
                .map_err(|e| format!("client: {e}"))?;
        }
        if to_server.is_empty() && to_client.is_empty() {
            return Ok(());
        }
    }
    Err("no progress after 20 rounds".into())
}

fn read_all(s: &mut Session) -> Vec<u8> {
    let mut out = vec![];
    let mut buf = [0u8; 4096];
    while let Plaintext::Data(n) = s.read_plaintext(&mut buf).unwrap() {
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn client_read(c: &mut ClientConnection) -> Vec<u8> {
    let mut out = vec![];
    let _ = c.reader().read_to_end(&mut out);
    out
}

fn terminator(creds: &Credentials, alpn: &[&str], require: bool) -> TerminatorConfig {
    TerminatorConfig::new(
        creds,
        TerminatorOptions {
            alpn: alpn.iter().map(|p| p.as_bytes().to_vec()).collect(),
            require_client_cert: require,
            versions: TlsVersions::Tls12And13,
        },
    )
    .unwrap()
}

fn exchange(c: &mut ClientConnection, s: &mut Session) {
    c.writer().write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    pump(c, s).unwrap();
    assert_eq!(read_all(s), b"GET / HTTP/1.1\r\n\r\n");
    assert_eq!(s.write_plaintext(b"HTTP/1.1 200 OK\r\n\r\n").unwrap(), 19);
    pump(c, s).unwrap();
    assert_eq!(client_read(c), b"HTTP/1.1 200 OK\r\n\r\n");
}

#[test]
fn handshake_and_data_over_tls13_and_tls12() {
    let ca = Ca::new("ca");
    let t = terminator(&ca.server_creds("server.test", false), &[], false);
    for (v, want) in [
        (&rustls::version::TLS13, rustls::ProtocolVersion::TLSv1_3),
        (&rustls::version::TLS12, rustls::ProtocolVersion::TLSv1_2),
    ] {
        let mut c = client(&ca, v, &[], None);
        let mut s = t.session().unwrap();
        assert!(s.is_handshaking());
        pump(&mut c, &mut s).unwrap();
        assert!(!s.is_handshaking() && !c.is_handshaking());
        assert_eq!(s.protocol_version(), Some(want));
        assert_eq!(s.server_name(), Some("server.test"));
        assert!(s.peer_certificates().is_none());
        exchange(&mut c, &mut s);
        // close_notify both ways.
        c.send_close_notify();
        pump(&mut c, &mut s).unwrap();
        assert_eq!(s.read_plaintext(&mut [0; 16]).unwrap(), Plaintext::Closed);
        assert!(s.peer_closed());
        s.close();
        assert!(matches!(
            s.write_plaintext(b"late"),
            Err(SessionError::WriteAfterClose)
        ));
        pump(&mut c, &mut s).unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(
            c.reader().read(&mut buf).unwrap(),
            0,
            "client sees close_notify"
        );
    }
}

#[test]
fn plaintext_written_during_the_handshake_is_sent_after_it() {
    let ca = Ca::new("ca");
    let t = terminator(&ca.server_creds("server.test", false), &[], false);
    let mut c = client(&ca, &rustls::version::TLS13, &[], None);
    let mut s = t.session().unwrap();
    s.write_plaintext(b"early").unwrap();
    pump(&mut c, &mut s).unwrap();
    assert_eq!(client_read(&mut c), b"early");
}

#[test]
fn eof_without_close_notify_is_truncation() {
    let ca = Ca::new("ca");
    let t = terminator(&ca.server_creds("server.test", false), &[], false);
    let mut c = client(&ca, &rustls::version::TLS13, &[], None);
    let mut s = t.session().unwrap();
    c.writer().write_all(b"partial").unwrap();
    pump(&mut c, &mut s).unwrap();
    s.feed_eof().unwrap();
    assert!(s.peer_closed());
    let mut buf = [0u8; 64];
    assert_eq!(s.read_plaintext(&mut buf).unwrap(), Plaintext::Data(7));
    assert!(matches!(
        s.read_plaintext(&mut buf),
        Err(SessionError::Truncated)
    ));
}

#[test]
fn alpn_follows_the_servers_order_and_refuses_no_overlap() {
    let ca = Ca::new("ca");
    let t = terminator(
        &ca.server_creds("server.test", false),
        &["h2", "http/1.1"],
        false,
    );
    let cases: [(&[&str], Option<&[u8]>); 4] = [
        (&["http/1.1"], Some(b"http/1.1")),
        (&["http/1.1", "h2"], Some(b"h2")),
        (&[], None),
        (&["h2"], Some(b"h2")),
    ];
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        for (offered, want) in cases {
            let mut c = client(&ca, v, offered, None);
            let mut s = t.session().unwrap();
            pump(&mut c, &mut s).unwrap();
            assert_eq!(s.alpn_protocol(), want, "{offered:?}");
            assert_eq!(c.alpn_protocol(), want, "{offered:?}");
        }
        let mut c = client(&ca, v, &["spdy/3"], None);
        let mut s = t.session().unwrap();
        let e = pump(&mut c, &mut s).unwrap_err();
        assert!(e.contains("server") && e.contains("protocol"), "{e}");
    }
}

#[test]
fn required_client_certificates_must_chain_to_the_ca_bundle() {
    let ca = Ca::new("ca");
    let other = Ca::new("other");
    let t = terminator(&ca.server_creds("server.test", true), &[], true);
    for v in [&rustls::version::TLS13, &rustls::version::TLS12] {
        // No certificate.
        let mut c = client(&ca, v, &[], None);
        let mut s = t.session().unwrap();
        let e = pump(&mut c, &mut s).unwrap_err();
        assert!(e.contains("server"), "{e}");
        // A certificate from another CA.
        let id = other.leaf("intruder", ExtendedKeyUsagePurpose::ClientAuth);
        let mut c = client(&ca, v, &[], Some(id));
        let mut s = t.session().unwrap();
        let e = pump(&mut c, &mut s).unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");
        // A good one.
        let (cert, key) = ca.leaf("app-instance", ExtendedKeyUsagePurpose::ClientAuth);
        let mut c = client(&ca, v, &[], Some((cert.clone(), key)));
        let mut s = t.session().unwrap();
        pump(&mut c, &mut s).unwrap();
        assert_eq!(s.peer_certificates().unwrap()[0], der(&cert));
        exchange(&mut c, &mut s);
    }
}

#[test]
fn optional_client_certificates_are_verified_when_presented() {
    let ca = Ca::new("ca");
    let other = Ca::new("other");
    let t = terminator(&ca.server_creds("server.test", true), &[], false);
    let mut c = client(&ca, &rustls::version::TLS13, &[], None);
    let mut s = t.session().unwrap();
    pump(&mut c, &mut s).unwrap();
    assert!(s.peer_certificates().is_none());
    let id = other.leaf("intruder", ExtendedKeyUsagePurpose::ClientAuth);
    let mut c = client(&ca, &rustls::version::TLS13, &[], Some(id));
    let mut s = t.session().unwrap();
    assert!(pump(&mut c, &mut s).is_err());
}

#[test]
fn reload_applies_to_new_sessions_and_spares_open_ones() {
    let ca = Ca::new("ca");
    let first = ca.server_creds("server.test", false);
    let t = terminator(&first, &["http/1.1"], false);
    let mut c1 = client(&ca, &rustls::version::TLS13, &["http/1.1"], None);
    let mut s1 = t.session().unwrap();
    pump(&mut c1, &mut s1).unwrap();
    assert_eq!(c1.peer_certificates().unwrap()[0], first.chain()[0]);

    let renewed = ca.server_creds("server.test", false);
    assert_ne!(renewed.chain()[0], first.chain()[0]);
    t.reload(&renewed).unwrap();
    let mut c2 = client(&ca, &rustls::version::TLS12, &["http/1.1"], None);
    let mut s2 = t.session().unwrap();
    pump(&mut c2, &mut s2).unwrap();
    assert_eq!(c2.peer_certificates().unwrap()[0], renewed.chain()[0]);
    assert_eq!(
        s2.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "options survive a reload"
    );
    // The session opened before the reload keeps working.
    exchange(&mut c1, &mut s1);
    exchange(&mut c2, &mut s2);

    // A bad reload leaves the credentials in force.
    let (cert, _) = ca.leaf("server.test", ExtendedKeyUsagePurpose::ServerAuth);
    let (_, other_key) = ca.leaf("x", ExtendedKeyUsagePurpose::ServerAuth);
    let mismatched = Credentials::from_pem(cert.as_bytes(), other_key.as_bytes(), None).unwrap();
    assert!(matches!(
        t.reload(&mismatched),
        Err(ConfigError::KeyMismatch(_))
    ));
    let mut c3 = client(&ca, &rustls::version::TLS13, &[], None);
    let mut s3 = t.session().unwrap();
    pump(&mut c3, &mut s3).unwrap();
    assert_eq!(c3.peer_certificates().unwrap()[0], renewed.chain()[0]);
}

#[test]
fn bad_configuration_names_the_input() {
    let ca = Ca::new("ca");
    let (cert, key) = ca.leaf("s", ExtendedKeyUsagePurpose::ServerAuth);
    let e = Credentials::from_pem(b"nothing here", key.as_bytes(), None).unwrap_err();
    assert!(matches!(e, ConfigError::CertChain(_)), "{e}");
    let e = Credentials::from_pem(cert.as_bytes(), b"", None).unwrap_err();
    assert!(matches!(e, ConfigError::PrivateKey(_)), "{e}");
    let e = Credentials::from_pem(cert.as_bytes(), key.as_bytes(), Some(b"")).unwrap_err();
    assert!(matches!(e, ConfigError::CaBundle(_)), "{e}");
    let creds = Credentials::from_pem(cert.as_bytes(), key.as_bytes(), None).unwrap();
    let e = TerminatorConfig::new(
        &creds,
        TerminatorOptions {
            require_client_cert: true,
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, ConfigError::NoClientCa), "{e}");
    let e = TerminatorConfig::new(
        &creds,
        TerminatorOptions {
            alpn: vec![b"h2".to_vec(), vec![]],
            ..Default::default()
        },
    )
    .err()
    .unwrap();
    assert!(matches!(e, ConfigError::Alpn { index: 1, len: 0 }), "{e}");
}

#[test]
fn garbage_from_the_client_is_an_error_not_a_panic() {
    let ca = Ca::new("ca");
    let t = terminator(&ca.server_creds("server.test", false), &[], false);
    let mut s = t.session().unwrap();
    let e = s
        .feed_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap_err();
    assert!(matches!(e, SessionError::Tls(_)), "{e}");
    let mut out = vec![];
    s.take_tls(&mut out).unwrap();
    assert!(!out.is_empty(), "an alert for the client");
}
