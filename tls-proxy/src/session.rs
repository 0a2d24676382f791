//! One TLS connection, sans-IO: the caller moves the bytes.
use std::io::{ErrorKind, Read, Write};
use std::sync::Arc;

use rustls::{ProtocolVersion, ServerConfig, ServerConnection};
use rustls_pki_types::CertificateDer;

use crate::error::SessionError;

/// What [`Session::read_plaintext`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plaintext {
    /// This many bytes of plaintext were copied into the buffer.
    Data(usize),
    /// Nothing to read now: feed more ciphertext.
    Pending,
    /// The client sent close_notify and everything before it has been read: end of stream.
    Closed,
}

/// A server-side TLS session over any byte stream.
///
/// The loop a driver runs: bytes from the client go to [`Session::feed_tls`] (and the end of
/// its stream to [`Session::feed_eof`]); then [`Session::take_tls`] gives what to send back
/// (handshake messages, encrypted app data, alerts) and [`Session::read_plaintext`] what to
/// pass to the app; the app's bytes go to [`Session::write_plaintext`]. On an error, send
/// what `take_tls` still has (it usually holds the alert saying why) and close.
pub struct Session {
    conn: ServerConnection,
    peer_closed: bool,
    write_closed: bool,
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> SessionError {
    move |source| SessionError::Io { what, source }
}

impl Session {
    pub(crate) fn new(config: Arc<ServerConfig>) -> Result<Session, SessionError> {
        Ok(Session {
            conn: ServerConnection::new(config)?,
            peer_closed: false,
            write_closed: false,
        })
    }

    /// Takes ciphertext from the client; returns how many bytes of `data` were consumed.
    ///
    /// Fewer than `data.len()` means either the received-plaintext buffer is full (read it
    /// with [`Session::read_plaintext`] and feed the rest again) or the client already sent
    /// close_notify ([`Session::peer_closed`]; whatever follows it is meaningless).
    pub fn feed_tls(&mut self, mut data: &[u8]) -> Result<usize, SessionError> {
        let total = data.len();
        while !data.is_empty() {
            match self.conn.read_tls(&mut data) {
                Ok(0) => break,
                Ok(_) => self.process()?,
                // "received plaintext buffer full": the caller reads plaintext first.
                Err(e) if e.kind() == ErrorKind::Other => break,
                Err(e) => return Err(io("reading ciphertext")(e)),
            }
        }
        Ok(total - data.len())
    }

    /// The client's byte stream ended (TCP FIN). Without an earlier close_notify,
    /// [`Session::read_plaintext`] then reports [`SessionError::Truncated`] once the plaintext
    /// before it has been read.
    pub fn feed_eof(&mut self) -> Result<(), SessionError> {
        let mut empty: &[u8] = &[];
        self.conn
            .read_tls(&mut empty)
            .map_err(io("reading the end of the stream"))?;
        self.peer_closed = true;
        self.process()
    }

    fn process(&mut self) -> Result<(), SessionError> {
        let state = self.conn.process_new_packets()?;
        if state.peer_has_closed() {
            self.peer_closed = true;
        }
        Ok(())
    }

    /// Whether [`Session::take_tls`] has bytes for the client.
    pub fn has_tls_to_send(&self) -> bool {
        self.conn.wants_write()
    }

    /// Appends everything there is to send to the client to `out`; returns the byte count.
    pub fn take_tls(&mut self, out: &mut Vec<u8>) -> Result<usize, SessionError> {
        let mut n = 0;
        while self.conn.wants_write() {
            n += self.conn.write_tls(out).map_err(io("writing ciphertext"))?;
        }
        Ok(n)
    }

    /// Copies decrypted plaintext from the client into `buf`.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> Result<Plaintext, SessionError> {
        if buf.is_empty() {
            return Ok(Plaintext::Data(0));
        }
        match self.conn.reader().read(buf) {
            Ok(0) => Ok(Plaintext::Closed),
            Ok(n) => Ok(Plaintext::Data(n)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(Plaintext::Pending),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Err(SessionError::Truncated),
            Err(e) => Err(io("reading plaintext")(e)),
        }
    }

    /// Encrypts plaintext from the app for the client (queued until the handshake is done);
    /// returns how much was accepted, less than `data.len()` when the send buffer (see
    /// [`Session::set_buffer_limit`]) is full: send [`Session::take_tls`] and try again.
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<usize, SessionError> {
        if self.write_closed {
            return Err(SessionError::WriteAfterClose);
        }
        self.conn
            .writer()
            .write(data)
            .map_err(io("writing plaintext"))
    }

    /// Sends close_notify (queued for [`Session::take_tls`]): the app has finished writing.
    pub fn close(&mut self) {
        if !self.write_closed {
            self.conn.send_close_notify();
            self.write_closed = true;
        }
    }

    /// Limits the plaintext and ciphertext waiting to be sent (rustls' default is 64 KiB);
    /// `None` for no limit.
    pub fn set_buffer_limit(&mut self, limit: Option<usize>) {
        self.conn.set_buffer_limit(limit);
    }

    /// The client sent close_notify or its stream ended.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The ALPN protocol agreed on, once the handshake has got that far.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The client's verified certificate chain (leaf first), when it presented one.
    pub fn peer_certificates(&self) -> Option<&[CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }

    /// The name the client asked for (SNI), if any.
    pub fn server_name(&self) -> Option<&str> {
        self.conn.server_name()
    }

    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.conn.protocol_version()
    }
}
