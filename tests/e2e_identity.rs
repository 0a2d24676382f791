//! Instance identity credentials end to end (root, network namespaces prefixed `tpid`; ignored
//! unless run with `--run-ignored all`, as scripts/test.sh does as root): a container attached
//! to a cell gets a certificate signed by the control plane, in files with private modes, whose
//! key matches and whose names are the handle, the app's internal route and the container's
//! address; the cell renews it (a short `--instance-cert-lifetime`) with a new key, and detach
//! removes the files.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tapestry::cell::api::{self, Request};
use tapestry::demo::overlay::Overlay;
use tapestry::demo::testbed::is_root;
use tapestry_tls_proxy::{Credentials, TerminatorConfig, TerminatorOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tapestry"))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A TLS handshake, in memory, between a client that trusts `ca_pem` and asks for `name`, and
/// the terminator serving `creds`.
fn handshake(creds: &Credentials, ca_pem: &str, name: &str) -> Result<(), String> {
    let t =
        TerminatorConfig::new(creds, TerminatorOptions::default()).map_err(|e| e.to_string())?;
    let mut s = t.session().map_err(|e| e.to_string())?;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca_pem.as_bytes()).unwrap())
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let mut c = rustls::ClientConnection::new(
        Arc::new(cfg),
        ServerName::try_from(name.to_string()).unwrap(),
    )
    .unwrap();
    for _ in 0..10 {
        let mut out = vec![];
        while c.wants_write() {
            c.write_tls(&mut out).unwrap();
        }
        s.feed_tls(&out).map_err(|e| e.to_string())?;
        let mut back = vec![];
        s.take_tls(&mut back).unwrap();
        let mut rd = back.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
            c.process_new_packets().map_err(|e| e.to_string())?;
        }
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    Err("handshake did not finish".into())
}

#[test]
#[ignore = "needs root (network namespaces); scripts/test.sh runs it as root"]
fn e2e_instance_identity_issue_renew_detach() {
    assert!(is_root(), "end-to-end tests need root (network namespaces)");
    let mut ov =
        Overlay::start("tpid", bin(), 1, &["--instance-cert-lifetime=12"]).expect("overlay starts");
    let (code, _) = ov
        .api(
            "POST",
            "/networking/v1/external/routes",
            Some(serde_json::json!({"host": "web.apps.internal", "app_id": "app-a"})),
        )
        .unwrap();
    assert_eq!(code, 200);
    let a = ov
        .add_container(0, "c1", "app-a", "space-s")
        .unwrap_or_else(|e| panic!("{e:#}\ncell log:\n{}", ov.tb.log("cell1")));
    let id = a
        .instance_identity
        .clone()
        .expect("the reply names the credential files");
    let dir = id.instance_cert.parent().unwrap().to_path_buf();
    assert_eq!(dir, ov.cells[0].state_dir.join("instances").join("c1"));
    wait_until("the credentials", Duration::from_secs(20), || {
        id.instance_cert.is_file() && id.instance_key.is_file() && id.instance_ca.is_file()
    });
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(dir.parent().unwrap()), 0o700);
    assert_eq!(mode(&id.instance_key), 0o600);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap();
    let load = || {
        let (cert, key, ca) = (
            read(&id.instance_cert),
            read(&id.instance_key),
            read(&id.instance_ca),
        );
        let creds = Credentials::from_pem(cert.as_bytes(), key.as_bytes(), Some(ca.as_bytes()))
            .expect("the files parse");
        (cert, key, ca, creds)
    };
    let (cert1, key1, ca, creds) = load();
    for name in ["c1", "web.apps.internal", &a.container_ip.to_string()] {
        handshake(&creds, &ca, name).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    assert!(handshake(&creds, &ca, "other.apps.internal").is_err());
    // `container up` again: the same paths, no longer pending.
    let again = ov.add_container(0, "c1", "app-a", "space-s");
    if let Ok(again) = again {
        assert!(!again.instance_identity.unwrap().instance_identity_pending);
    }
    // Renewed at two thirds of 12 s, with a new key; the files always parse together.
    wait_until("a renewed certificate", Duration::from_secs(20), || {
        read(&id.instance_cert) != cert1
    });
    wait_until("the renewed pair to match", Duration::from_secs(5), || {
        let (_, key2, _, creds2) = load();
        key2 != key1 && handshake(&creds2, &ca, "web.apps.internal").is_ok()
    });
    // Detach removes them.
    api::call(
        &ov.cell_socket(0),
        &Request::Down {
            handle: "c1".into(),
        },
    )
    .unwrap();
    assert!(!dir.exists(), "detach removes {}", dir.display());
}
