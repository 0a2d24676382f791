//! The cell CA and TLS configurations for the mutual-TLS internal API.
//!
//! Each deployment has its own private CA (generated on first start). Cells reach the control
//! plane by IP address, and the control plane may listen on any address, so the client checks
//! that the server's chain ends at this CA but does not check the host name: only holders of
//! this CA's key can present an acceptable certificate, which is the property that matters.
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::error::ControlError;

pub(crate) fn tls_err(e: impl std::fmt::Display) -> ControlError {
    ControlError::Tls(e.to_string())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn ca_params() -> Result<CertificateParams, ControlError> {
    let mut p = CertificateParams::new(Vec::<String>::new()).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Tapestry cell CA");
    dn.push(DnType::OrganizationName, "Tapestry");
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(p)
}

fn leaf_params(
    cn: &str,
    sans: Vec<String>,
    eku: Vec<ExtendedKeyUsagePurpose>,
) -> Result<CertificateParams, ControlError> {
    let mut p = CertificateParams::new(sans).map_err(tls_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.extended_key_usages = eku;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    Ok(p)
}

pub(crate) fn write_file(path: &Path, data: &str, private: bool) -> Result<(), ControlError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(ControlError::io(format!("writing {}", tmp.display())))?;
    f.write_all(data.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(ControlError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(ControlError::io(format!("writing {}", path.display())))
}

pub(crate) fn read(path: &Path) -> Result<String, ControlError> {
    std::fs::read_to_string(path).map_err(ControlError::io(format!("reading {}", path.display())))
}

/// The CA (with its key) that signs the server certificate.
pub struct CellCa {
    ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// The folder cells are given.
pub fn credentials_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cell-credentials")
}

impl CellCa {
    /// Loads `DIR/ca-key.pem` + `DIR/cell-credentials/`, or creates them on first start.
    /// The CA key stays outside `cell-credentials` so that folder can be handed to cells.
    pub fn ensure(data_dir: &Path) -> Result<CellCa, ControlError> {
        let dir = credentials_dir(data_dir);
        let ca_key_path = data_dir.join("ca-key.pem");
        let files = [
            dir.join("ca.pem"),
            dir.join("cert.pem"),
            dir.join("key.pem"),
            ca_key_path.clone(),
        ];
        if files.iter().all(|f| f.is_file()) {
            // Tighten what an older version created with the umask's modes.
            crate::server::private_dir(data_dir)?;
            crate::server::private_dir(&dir)?;
            let key = KeyPair::from_pem(&read(&ca_key_path)?).map_err(tls_err)?;
            return Ok(CellCa {
                ca_pem: read(&dir.join("ca.pem"))?,
                issuer: Issuer::new(ca_params()?, key),
            });
        }
        crate::server::private_dir(data_dir)?;
        crate::server::private_dir(&dir)?;
        let ca_key = KeyPair::generate().map_err(tls_err)?;
        let params = ca_params()?;
        let ca_cert = params.self_signed(&ca_key).map_err(tls_err)?;
        let issuer = Issuer::new(params, ca_key);
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = leaf_params(
            "tapestry-cell",
            vec!["tapestry-cell".into()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?
        .signed_by(&key, &issuer)
        .map_err(tls_err)?;
        write_file(&ca_key_path, &issuer_key_pem(&issuer), true)?;
        write_file(&dir.join("key.pem"), &key.serialize_pem(), true)?;
        write_file(&dir.join("cert.pem"), &cert.pem(), false)?;
        write_file(&dir.join("ca.pem"), &ca_cert.pem(), false)?;
        Ok(CellCa {
            ca_pem: ca_cert.pem(),
            issuer,
        })
    }

    /// Issues a client certificate for the cell at `underlay_ip` (its IP SAN, which the internal
    /// API holds the cell to) and writes `ca.pem`, `cert.pem` and `key.pem` into `out` (made
    /// 0700; the key 0600): the folder that cell's `--credentials` names.
    pub fn issue_cell_credentials(
        &self,
        underlay_ip: std::net::Ipv4Addr,
        out: &Path,
    ) -> Result<(), ControlError> {
        crate::server::private_dir(out)?;
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = leaf_params(
            &format!("tapestry-cell {underlay_ip}"),
            vec![underlay_ip.to_string()],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
        )?
        .signed_by(&key, &self.issuer)
        .map_err(tls_err)?;
        write_file(&out.join("key.pem"), &key.serialize_pem(), true)?;
        write_file(&out.join("cert.pem"), &cert.pem(), false)?;
        write_file(&out.join("ca.pem"), &self.ca_pem, false)
    }

    /// A server configuration with a fresh certificate from this CA, requiring client certs
    /// from this CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, ControlError> {
        let key = KeyPair::generate().map_err(tls_err)?;
        let cert = leaf_params(
            "tapestry-control",
            vec![
                "tapestry-control".into(),
                "localhost".into(),
                "127.0.0.1".into(),
            ],
            vec![ExtendedKeyUsagePurpose::ServerAuth],
        )?
        .signed_by(&key, &self.issuer)
        .map_err(tls_err)?;
        let ca_der = CertificateDer::from_pem_slice(self.ca_pem.as_bytes()).map_err(tls_err)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca_der.clone()).map_err(tls_err)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(tls_err)?;
        let key_der =
            PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).map_err(tls_err)?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_err)?
            .with_client_cert_verifier(verifier)
            .with_single_cert(vec![cert.der().clone(), ca_der], key_der)
            .map_err(tls_err)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(cfg)
    }
}

fn issuer_key_pem(issuer: &Issuer<'static, KeyPair>) -> String {
    issuer.key().serialize_pem()
}

/// Verifies the server chain against the deployment CA; skips the name check (see module doc).
#[derive(Debug)]
struct CaOnlyVerifier(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnlyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The client configuration a cell uses: its certificate from `credentials_dir`, and the
/// server verified against `ca.pem`. With `with_identity: false` no client cert is sent
/// (used by tests to show the server refuses such clients).
pub fn client_config(
    credentials_dir: &Path,
    with_identity: bool,
) -> Result<rustls::ClientConfig, ControlError> {
    let ca = CertificateDer::from_pem_slice(read(&credentials_dir.join("ca.pem"))?.as_bytes())
        .map_err(tls_err)?;
    let mut roots = RootCertStore::empty();
    roots.add(ca).map_err(tls_err)?;
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(tls_err)?;
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(CaOnlyVerifier(inner)));
    let mut cfg = if with_identity {
        let chain =
            CertificateDer::pem_slice_iter(read(&credentials_dir.join("cert.pem"))?.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(tls_err)?;
        let key = PrivateKeyDer::from_pem_slice(read(&credentials_dir.join("key.pem"))?.as_bytes())
            .map_err(tls_err)?;
        b.with_client_auth_cert(chain, key).map_err(tls_err)?
    } else {
        b.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The IPv4 addresses among a certificate's subject alternative names (a per-cell certificate
/// has one, the cell's underlay IP; the shared cell certificate has none).
pub fn ipv4_sans(der: &[u8]) -> Vec<std::net::Ipv4Addr> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::IPAddress(b) => <[u8; 4]>::try_from(*b).ok().map(std::net::Ipv4Addr::from),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod mode_tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn data_dir_and_credentials_are_private_whatever_was_there() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
        CellCa::ensure(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        let creds = credentials_dir(&data);
        assert_eq!(mode(&creds), 0o700);
        assert_eq!(mode(&creds.join("key.pem")), 0o600);
        assert_eq!(mode(&data.join("ca-key.pem")), 0o600);
        // Loosened by hand (or by an older version): the next start tightens it again.
        std::fs::set_permissions(&creds, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        CellCa::ensure(&data).unwrap();
        assert_eq!(mode(&creds), 0o700);
        assert_eq!(mode(&data), 0o700);
    }

    #[test]
    fn cell_credentials_carry_the_underlay_ip() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = CellCa::ensure(tmp.path()).unwrap();
        let out = tmp.path().join("c1");
        ca.issue_cell_credentials("10.1.2.3".parse().unwrap(), &out)
            .unwrap();
        let der = CertificateDer::from_pem_slice(read(&out.join("cert.pem")).unwrap().as_bytes())
            .unwrap();
        assert_eq!(
            ipv4_sans(&der),
            vec!["10.1.2.3".parse::<std::net::Ipv4Addr>().unwrap()]
        );
        // The shared certificate names no IP.
        let shared = CertificateDer::from_pem_slice(
            read(&credentials_dir(tmp.path()).join("cert.pem"))
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        assert!(ipv4_sans(&shared).is_empty());
        assert_eq!(mode(&out), 0o700);
        assert_eq!(mode(&out.join("key.pem")), 0o600);
    }
}
