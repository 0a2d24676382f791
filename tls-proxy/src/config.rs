//! Building the rustls server configuration from PEM, and swapping it on renewal.
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{ConfigError, SessionError};
use crate::session::Session;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parsed credentials: the server's certificate chain (leaf first) and private key, and the
/// CA bundle client certificates are verified against (if any).
pub struct Credentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca: Vec<CertificateDer<'static>>,
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Credentials {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca: self.ca.clone(),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("chain", &self.chain.len())
            .field("key", &"<private>")
            .field("ca", &self.ca.len())
            .finish()
    }
}

impl Credentials {
    /// Parses a PEM certificate chain (leaf first), a PEM private key (PKCS#8, SEC1 or
    /// PKCS#1) and, optionally, a PEM CA bundle (one or more certificates).
    pub fn from_pem(
        cert_chain_pem: &[u8],
        key_pem: &[u8],
        ca_pem: Option<&[u8]>,
    ) -> Result<Credentials, ConfigError> {
        let chain = CertificateDer::pem_slice_iter(cert_chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ConfigError::CertChain(e.to_string()))?;
        if chain.is_empty() {
            return Err(ConfigError::CertChain("no CERTIFICATE block".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| ConfigError::PrivateKey(e.to_string()))?;
        let ca = match ca_pem {
            None => vec![],
            Some(pem) => {
                let ca = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| ConfigError::CaBundle(e.to_string()))?;
                if ca.is_empty() {
                    return Err(ConfigError::CaBundle("no CERTIFICATE block".into()));
                }
                ca
            }
        };
        Ok(Credentials { chain, key, ca })
    }

    /// The certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Which TLS versions the terminator speaks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersions {
    /// TLS 1.3 and TLS 1.2 (the default, as CF's Envoy).
    #[default]
    Tls12And13,
    /// TLS 1.3 only.
    Tls13Only,
}

/// How the terminator behaves, fixed for its life (credentials can change, these cannot).
#[derive(Clone, Debug, Default)]
pub struct TerminatorOptions {
    /// ALPN protocols offered, in order of preference (e.g. `[b"h2", b"http/1.1"]`); empty: no
    /// ALPN. See the crate documentation for how the choice reaches the caller.
    pub alpn: Vec<Vec<u8>>,
    /// Refuse clients that do not present a certificate chaining to the CA bundle.
    pub require_client_cert: bool,
    pub versions: TlsVersions,
}

/// A terminator's configuration. Share it (`Arc<TerminatorConfig>`) between the code that
/// accepts connections ([`TerminatorConfig::session`]) and the code that renews credentials
/// ([`TerminatorConfig::reload`]); neither waits for the other.
pub struct TerminatorConfig {
    options: TerminatorOptions,
    current: ArcSwap<ServerConfig>,
}

impl TerminatorConfig {
    pub fn new(
        credentials: &Credentials,
        options: TerminatorOptions,
    ) -> Result<TerminatorConfig, ConfigError> {
        for (index, p) in options.alpn.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::Alpn {
                    index,
                    len: p.len(),
                });
            }
        }
        let cfg = build(credentials, &options)?;
        Ok(TerminatorConfig {
            options,
            current: ArcSwap::from_pointee(cfg),
        })
    }

    /// Swaps in renewed credentials: every session started afterwards uses them; sessions
    /// already open are not affected. On an error the previous credentials stay in force.
    pub fn reload(&self, credentials: &Credentials) -> Result<(), ConfigError> {
        let cfg = build(credentials, &self.options)?;
        self.current.store(Arc::new(cfg));
        Ok(())
    }

    /// A new server session with the credentials currently in force.
    pub fn session(&self) -> Result<Session, SessionError> {
        Session::new(self.current.load_full())
    }

    /// The rustls configuration currently in force, e.g. for `tokio_rustls::TlsAcceptor`.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    pub fn options(&self) -> &TerminatorOptions {
        &self.options
    }
}

fn build(c: &Credentials, o: &TerminatorOptions) -> Result<ServerConfig, ConfigError> {
    let versions: &[&rustls::SupportedProtocolVersion] = match o.versions {
        TlsVersions::Tls12And13 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersions::Tls13Only => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .map_err(ConfigError::Rustls)?;
    let builder = if c.ca.is_empty() {
        if o.require_client_cert {
            return Err(ConfigError::NoClientCa);
        }
        builder.with_no_client_auth()
    } else {
        let mut roots = RootCertStore::empty();
        for (n, ca) in c.ca.iter().enumerate() {
            roots
                .add(ca.clone())
                .map_err(|e| ConfigError::CaBundle(format!("certificate {n}: {e}")))?;
        }
        let b = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider());
        let b = if o.require_client_cert {
            b
        } else {
            b.allow_unauthenticated()
        };
        builder.with_client_cert_verifier(
            b.build()
                .map_err(|e| ConfigError::CaBundle(e.to_string()))?,
        )
    };
    let mut cfg = builder
        .with_single_cert(c.chain.clone(), c.key.clone_key())
        .map_err(|e| ConfigError::KeyMismatch(e.to_string()))?;
    cfg.alpn_protocols = o.alpn.clone();
    Ok(cfg)
}
