//! Tapestry's TLS terminator: the TLS server a container's port 61443 speaks, over any byte
//! stream. Sans-IO like the rest of the dataplane: the caller owns sockets and buffers and
//! moves bytes; this crate knows nothing of packets, TCP or HTTP.
//!
//! ```text
//! client ciphertext --feed_tls--> Session --read_plaintext--> app (plaintext leg)
//! client <--take_tls-- Session <--write_plaintext-- app
//! ```
//!
//! * [`TerminatorConfig`] is built from PEM credentials ([`Credentials`]: certificate chain,
//!   private key, optional CA bundle) and [`TerminatorOptions`] (ALPN list, client-certificate
//!   policy, protocol versions). [`TerminatorConfig::reload`] swaps in renewed credentials:
//!   sessions started afterwards use them, sessions already open keep the configuration they
//!   started with (each holds its own `Arc` of it), so renewal never disturbs a connection.
//! * [`Session`] is one connection: `feed_tls` / `feed_eof` in, `take_tls` out, plaintext
//!   through `read_plaintext` / `write_plaintext`, `close` for close_notify.
//!
//! # ALPN
//!
//! The terminator offers the protocols in [`TerminatorOptions::alpn`], in the caller's order
//! of preference (e.g. `h2`, `http/1.1`, as the app declares it speaks). The server picks the
//! first protocol of *its* list that the client also offers; [`Session::alpn_protocol`] then
//! tells the caller which one was chosen, so the plaintext leg to the app speaks that protocol
//! (the terminator does not translate between protocols). A client that offers ALPN but none
//! of the listed protocols is refused with a `no_application_protocol` alert; a client that
//! offers no ALPN is accepted and `alpn_protocol()` is `None` (the app's default protocol).
//! An empty list turns ALPN off.
//!
//! # Client certificates
//!
//! With a CA bundle, a client certificate chaining to it is verified when presented and
//! returned by [`Session::peer_certificates`]; with `require_client_cert` a client without
//! one, or with one from another CA, fails the handshake (alert `certificate_required` /
//! `unknown_ca`). Without a CA bundle no certificate is asked for.
mod config;
mod error;
mod session;

pub use config::{Credentials, TerminatorConfig, TerminatorOptions, TlsVersions};
pub use error::{ConfigError, SessionError};
pub use session::{Plaintext, Session};

/// The port CF's Envoy terminates container TLS on; Tapestry's local stack does the same.
pub const TLS_PORT: u16 = 61443;
