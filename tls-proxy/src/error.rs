//! What can go wrong building a terminator or running a session.
use thiserror::Error;

/// Building or reloading a [`crate::TerminatorConfig`]: each variant names the input at fault.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The certificate chain PEM has no certificate, or a block that does not parse.
    #[error("certificate chain: {0}")]
    CertChain(String),
    /// The private key PEM has no key, or one that does not parse.
    #[error("private key: {0}")]
    PrivateKey(String),
    /// The key is of a kind the provider cannot sign with, or does not match the certificate.
    #[error("private key does not fit the certificate: {0}")]
    KeyMismatch(String),
    /// The CA bundle PEM is empty, does not parse, or holds a certificate that is not a CA.
    #[error("CA bundle: {0}")]
    CaBundle(String),
    /// `require_client_cert` without a CA bundle to verify clients against.
    #[error("require_client_cert needs a CA bundle to verify client certificates against")]
    NoClientCa,
    /// An ALPN protocol name is empty or longer than 255 bytes.
    #[error("ALPN protocol {index}: must be 1-255 bytes, got {len}")]
    Alpn { index: usize, len: usize },
    /// rustls refused the configuration (e.g. no usable protocol version).
    #[error("TLS configuration: {0}")]
    Rustls(rustls::Error),
}

/// A session failed: the connection should be closed after sending what
/// [`crate::Session::take_tls`] still has (usually the TLS alert that says why).
#[derive(Debug, Error)]
pub enum SessionError {
    /// The client's bytes broke the protocol or the handshake failed (bad or missing client
    /// certificate, no common cipher suite or ALPN protocol, bad record MAC, ...).
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    /// The client's byte stream ended without a close_notify alert: the plaintext may be cut
    /// short (a truncation attack, or a client that just dropped the connection).
    #[error(
        "the client closed the connection without close_notify; the plaintext may be truncated"
    )]
    Truncated,
    /// Plaintext was written after [`crate::Session::close`].
    #[error("the session is closed for writing")]
    WriteAfterClose,
    /// Reading or writing a session buffer failed (not expected from in-memory buffers).
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}
