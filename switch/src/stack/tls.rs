//! TLS on port 61443 of every container (CF's Envoy sidecar, here inside the cell): the
//! pipeline admits a connection to CONTAINER_IP:61443 only where a policy allows tcp 61443 to
//! the app (so a refused client never reaches a handshake) and hands it to the stack
//! ([`crate::Verdict::ToService`]). A smoltcp socket terminates the TCP connection as the
//! container's address, a [`tapestry_tls_proxy::Session`] with the instance's identity
//! certificate terminates TLS, and the plaintext goes to CONTAINER_IP:APP_PORT over a second
//! smoltcp connection from a link-local address of the cell ([`app_leg_source`]), so the app's
//! replies come back to the stack.

use std::sync::Arc;

use smoltcp::iface::{Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp::{Socket, State};
use smoltcp::wire::{IpEndpoint, IpListenEndpoint};
use tapestry_tls_proxy::{Plaintext, Session, TerminatorConfig};

use super::tcp::SocketPool;

/// The port the terminator serves on every container.
pub const TLS_PORT: u16 = tapestry_tls_proxy::TLS_PORT;
/// The app's port when the attachment names none (CF's default).
pub const DEFAULT_APP_PORT: u16 = 8080;

/// Link-local addresses the app legs come from: 169.254.1.0 to 169.254.254.255 (outside the
/// overlay, so the app's answers route to the stack; never the gateway services).
const APP_LEG_FIRST: u32 = 0xa9fe_0100;
const APP_LEG_ADDRS: u32 = 254 * 256;

/// The source (address, port) of the `n`th app leg. Every connection comes from another address
/// before a port repeats, so the app's TIME-WAIT (it usually closes first) never meets a reused
/// 4-tuple: 65,024 addresses before the port changes.
pub fn app_leg_source(n: u32) -> (std::net::Ipv4Addr, u16) {
    let addr = std::net::Ipv4Addr::from(APP_LEG_FIRST + n % APP_LEG_ADDRS);
    let port = 32768 + ((n / APP_LEG_ADDRS) % 28000) as u16;
    (addr, port)
}

/// One TLS connection: the client's leg (`front`), the app's leg (`back`, once the client's
/// handshake has started) and the TLS state between them.
pub struct TlsFlow {
    front: SocketHandle,
    back: Option<SocketHandle>,
    session: Session,
    /// Ciphertext for the client that its socket has not taken yet.
    to_client: Vec<u8>,
    plain: Vec<u8>,
    app_port: u16,
    back_closed: bool,
    failed: bool,
}

impl std::fmt::Debug for TlsFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFlow")
            .field("app_port", &self.app_port)
            .field("handshaking", &self.session.is_handshaking())
            .finish()
    }
}

impl TlsFlow {
    /// A client's SYN to `container`:61443: a socket listening there (the caller queues the
    /// SYN for smoltcp).
    pub fn accept(
        sockets: &mut SocketSet<'static>,
        pool: &mut SocketPool,
        config: &Arc<TerminatorConfig>,
        container: std::net::Ipv4Addr,
        app_port: u16,
    ) -> Option<TlsFlow> {
        let session = config.session().ok()?;
        let h = pool.take(sockets);
        let listening = sockets.get_mut::<Socket>(h).listen(IpListenEndpoint {
            addr: Some(container.into()),
            port: TLS_PORT,
        });
        if listening.is_err() {
            pool.give(sockets, h);
            return None;
        }
        Some(TlsFlow {
            front: h,
            back: None,
            session,
            to_client: Vec::new(),
            plain: vec![0u8; 16 << 10],
            app_port,
            back_closed: false,
            failed: false,
        })
    }

    /// The app's port, which the app leg connects to.
    pub fn back_key_port(&self) -> u16 {
        self.app_port
    }

    pub fn has_back(&self) -> bool {
        self.back.is_some()
    }

    /// Connects the app's leg once the client's TCP connection is up.
    pub fn connect_back(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'static>,
        pool: &mut SocketPool,
        container: std::net::Ipv4Addr,
        local: (std::net::Ipv4Addr, u16),
    ) -> bool {
        if self.back.is_some() || sockets.get::<Socket>(self.front).state() != State::Established {
            return false;
        }
        let h = pool.take(sockets);
        let ok = sockets
            .get_mut::<Socket>(h)
            .connect(
                iface.context(),
                IpEndpoint::new(container.into(), self.app_port),
                IpListenEndpoint {
                    addr: Some(local.0.into()),
                    port: local.1,
                },
            )
            .is_ok();
        if !ok {
            pool.give(sockets, h);
            self.fail(sockets);
            return false;
        }
        self.back = Some(h);
        true
    }

    fn fail(&mut self, sockets: &mut SocketSet<'static>) {
        self.failed = true;
        sockets.get_mut::<Socket>(self.front).abort();
        if let Some(b) = self.back {
            sockets.get_mut::<Socket>(b).abort();
        }
    }

    /// Moves bytes: client ciphertext into the session, plaintext to the app and back, the
    /// session's ciphertext to the client; passes each side's end of stream on.
    pub fn pump(&mut self, sockets: &mut SocketSet<'static>) {
        // The session holds a bounded amount of plaintext, so one pass may stop with ciphertext
        // still waiting in the client's socket: go round while anything moves.
        for _ in 0..32 {
            let before = self.queues(sockets);
            self.pump_once(sockets);
            if self.failed || self.queues(sockets) == before {
                break;
            }
        }
    }

    /// How much each socket holds and what the session has to send: unchanged after a pass
    /// means nothing moved.
    fn queues(&self, sockets: &SocketSet<'static>) -> (usize, usize, usize, usize, usize, bool) {
        let f = sockets.get::<Socket>(self.front);
        let (bs, br) = self.back.map_or((0, 0), |b| {
            let b = sockets.get::<Socket>(b);
            (b.send_queue(), b.recv_queue())
        });
        (
            f.recv_queue(),
            f.send_queue(),
            bs,
            br,
            self.to_client.len(),
            self.session.has_tls_to_send(),
        )
    }

    fn pump_once(&mut self, sockets: &mut SocketSet<'static>) {
        if self.failed {
            return;
        }
        // Client -> session.
        loop {
            let front = sockets.get_mut::<Socket>(self.front);
            if !front.can_recv() {
                break;
            }
            let session = &mut self.session;
            let r = front.recv(|b| match session.feed_tls(b) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (0, Err(e)),
            });
            match r {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => {
                    // A TLS error: the session has an alert queued; send it, then close.
                    self.flush_tls(sockets);
                    sockets.get_mut::<Socket>(self.front).close();
                    self.failed = true;
                    if let Some(b) = self.back {
                        sockets.get_mut::<Socket>(b).abort();
                    }
                    return;
                }
            }
        }
        let front_state = sockets.get::<Socket>(self.front).state();
        if matches!(
            front_state,
            State::CloseWait | State::LastAck | State::Closing | State::TimeWait | State::Closed
        ) && sockets.get::<Socket>(self.front).recv_queue() == 0
            && !self.session.peer_closed()
        {
            let _ = self.session.feed_eof();
        }
        // Session -> app.
        if let Some(b) = self.back {
            loop {
                let back = sockets.get_mut::<Socket>(b);
                if !back.can_send() {
                    break;
                }
                let room = (back.send_capacity() - back.send_queue()).min(self.plain.len());
                match self.session.read_plaintext(&mut self.plain[..room]) {
                    Ok(Plaintext::Data(n)) => {
                        let _ = back.send_slice(&self.plain[..n]);
                    }
                    Ok(Plaintext::Closed) => {
                        back.close();
                        break;
                    }
                    Ok(Plaintext::Pending) => break,
                    Err(_) => {
                        back.close();
                        break;
                    }
                }
            }
            // App -> session.
            loop {
                let back = sockets.get_mut::<Socket>(b);
                if !back.can_recv() {
                    break;
                }
                let session = &mut self.session;
                let r = back.recv(|d| match session.write_plaintext(d) {
                    Ok(n) => (n, n),
                    Err(_) => (d.len(), 0),
                });
                if !matches!(r, Ok(n) if n > 0) {
                    break;
                }
            }
            let back = sockets.get::<Socket>(b);
            if !self.back_closed
                && back.recv_queue() == 0
                && matches!(
                    back.state(),
                    State::CloseWait | State::LastAck | State::Closed | State::TimeWait
                )
            {
                self.back_closed = true;
                self.session.close();
            }
        }
        self.flush_tls(sockets);
        if self.back_closed && self.to_client.is_empty() && !self.session.has_tls_to_send() {
            sockets.get_mut::<Socket>(self.front).close();
        }
    }

    fn flush_tls(&mut self, sockets: &mut SocketSet<'static>) {
        if self.session.has_tls_to_send() {
            let _ = self.session.take_tls(&mut self.to_client);
        }
        if self.to_client.is_empty() {
            return;
        }
        let front = sockets.get_mut::<Socket>(self.front);
        if let Ok(n) = front.send_slice(&self.to_client) {
            self.to_client.drain(..n);
        }
    }

    /// Whether both legs are done (`Some(())`), to remove the flow.
    pub fn finished(&self, sockets: &SocketSet<'static>) -> bool {
        let done = |h: SocketHandle| {
            matches!(
                sockets.get::<Socket>(h).state(),
                State::Closed | State::TimeWait
            )
        };
        done(self.front) && self.back.is_none_or(done)
    }

    pub fn abort(&mut self, sockets: &mut SocketSet<'static>) {
        self.fail(sockets);
    }

    pub fn release(&self, sockets: &mut SocketSet<'static>, pool: &mut SocketPool) {
        pool.give(sockets, self.front);
        if let Some(b) = self.back {
            pool.give(sockets, b);
        }
    }

    pub fn state_name(&self, sockets: &SocketSet<'static>) -> &'static str {
        if self.session.is_handshaking() {
            "tls_handshake"
        } else if self
            .back
            .is_some_and(|b| sockets.get::<Socket>(b).state() == State::Established)
        {
            "tls_established"
        } else {
            match sockets.get::<Socket>(self.front).state() {
                State::Established => "tls_established",
                _ => "tls_closing",
            }
        }
    }
}
