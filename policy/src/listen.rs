//! Serving the control plane's two APIs (plain HTTP for the external one, mutual TLS for the
//! internal one) under connection limits, so that a flood of connections neither exhausts the
//! process's file descriptors nor keeps memory after it ends:
//!
//! - at most [`Limits::max_connections`] open connections per listener, and
//!   [`Limits::max_per_client`] from one client address; a connection beyond either is accepted
//!   and closed at once (so the kernel's backlog never fills with them);
//! - the TLS handshake and every request's headers must arrive within
//!   [`Limits::header_timeout`], its body within [`Limits::body_timeout`]. On a kept-alive
//!   connection the header timeout runs from the end of the previous answer, so it is also how
//!   long a connection may sit idle between requests (a long-poll in progress is not idle).
//!
//! Each listener has its own limits; [`crate::start`] runs the internal one on a runtime of its
//! own, so a flood on the external port never stalls the cells.
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::api::{ApiError, MAX_BODY};

/// The client certificate of a mutual-TLS connection, as every request on it sees it (an
/// axum `Extension`): the IPv4 addresses among its subject alternative names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub ipv4_sans: Vec<std::net::Ipv4Addr>,
}

/// Connection limits of one listener (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Connections open at once on this listener.
    pub max_connections: usize,
    /// Connections open at once from one client IP address.
    pub max_per_client: usize,
    /// Time for the TLS handshake and for each request's headers (from the connection's start,
    /// or from the end of the previous answer: also the idle timeout between requests).
    pub header_timeout: Duration,
    /// Time for a request's body.
    pub body_timeout: Duration,
}

impl Limits {
    /// The external API's defaults: 1024 connections, 256 per client address (a router or
    /// proxy in front counts as one client), 10 s for headers (and idle), 30 s for a body.
    pub fn external() -> Limits {
        Limits {
            max_connections: 1024,
            max_per_client: 256,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }

    /// The internal API's defaults: 4096 connections (a cell keeps one or two), 64 per client
    /// address, 10 s for the handshake and headers (and idle), 30 s for a body.
    pub fn internal() -> Limits {
        Limits {
            max_connections: 4096,
            max_per_client: 64,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
        }
    }

    /// Refuses zero counts and zero durations; `what` names the listener's flags.
    pub fn check(&self, what: &str) -> Result<(), String> {
        if self.max_connections == 0 || self.max_per_client == 0 {
            return Err(format!("{what}: connection limits must be at least 1"));
        }
        if self.max_per_client > self.max_connections {
            return Err(format!(
                "{what}: the per-client limit ({}) is above the overall limit ({})",
                self.max_per_client, self.max_connections
            ));
        }
        if self.header_timeout.is_zero() || self.body_timeout.is_zero() {
            return Err(format!("{what}: timeouts must be above zero"));
        }
        Ok(())
    }
}

/// Open connections of one listener, overall and by client address.
struct Tracker {
    limits: Limits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    refused: AtomicU64,
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

impl Tracker {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut g = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        let mine = per.get(&ip).copied().unwrap_or(0);
        if *total >= self.limits.max_connections || mine >= self.limits.max_per_client {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *total += 1;
        per.insert(ip, mine + 1);
        Some(Slot {
            tracker: self.clone(),
            ip,
        })
    }

    fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut g = self.tracker.open.lock().unwrap_or_else(|p| p.into_inner());
        let (total, per) = &mut *g;
        *total = total.saturating_sub(1);
        // Entries go with their last connection: the map shrinks back after a flood.
        if let Some(n) = per.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.ip);
            }
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Serves `router` on `listener` (over TLS when `tls` is given) under `limits` until `stop`
/// turns true; `what` names the API in logs.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
    what: &'static str,
) {
    let acceptor = tls.map(TlsAcceptor::from);
    let tracker = Arc::new(Tracker {
        limits: limits.clone(),
        open: Mutex::new((0, HashMap::new())),
        refused: AtomicU64::new(0),
    });
    let mut last_warning: Option<Instant> = None;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors (or another transient failure): back off.
                    tracing::warn!("{what}: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => return,
        };
        let Some(slot) = tracker.admit(peer.ip()) else {
            drop(tcp);
            if last_warning.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                last_warning = Some(Instant::now());
                tracing::warn!(
                    "{what}: refusing connections over the limits ({} open, at most {} and {} per client; {} refused so far; latest from {})",
                    tracker.open(),
                    limits.max_connections,
                    limits.max_per_client,
                    tracker.refused.load(Ordering::Relaxed),
                    peer.ip()
                );
            }
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let limits = limits.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = tcp.set_nodelay(true);
            let (io, cert): (Box<dyn Io>, Option<ClientCert>) = match acceptor {
                None => (Box::new(tcp), None),
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => {
                            let cert = ClientCert {
                                ipv4_sans: s
                                    .get_ref()
                                    .1
                                    .peer_certificates()
                                    .and_then(|c| c.first())
                                    .map(|c| crate::certs::ipv4_sans(c))
                                    .unwrap_or_default(),
                            };
                            (Box::new(s), Some(cert))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!("{what}: TLS handshake with {peer} failed: {e}");
                            return;
                        }
                        Err(_) => return,
                    }
                }
            };
            serve_connection(io, cert, router, &limits, stop).await;
        });
    }
}

async fn serve_connection(
    io: Box<dyn Io>,
    cert: Option<ClientCert>,
    router: axum::Router,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) {
    let body_timeout = limits.body_timeout;
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let router = router.clone();
        let mut req = req;
        if let Some(c) = &cert {
            req.extensions_mut().insert(c.clone());
        }
        async move { Ok::<_, Infallible>(handle(router, body_timeout, req).await) }
    });
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let conn = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

/// Reads the body within `body_timeout` (a slow body never reaches a handler), then runs the
/// router.
async fn handle(router: axum::Router, body_timeout: Duration, req: Request<Incoming>) -> Response {
    let (parts, body) = req.into_parts();
    let body =
        match tokio::time::timeout(body_timeout, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => Body::from(b.to_bytes()),
            Ok(Err(e)) if e.is::<LengthLimitError>() => {
                // The router answers an oversized body as each API does (CF's policy server:
                // authentication first, then "failed reading request body"): hand it a body
                // that is over its limit, made of one static chunk (nothing more is read from
                // the client), and close the connection after the answer.
                let mut r = match router
                    .oneshot(Request::from_parts(parts, oversized_body()))
                    .await
                {
                    Ok(r) => r,
                    Err(e) => match e {},
                };
                r.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return r;
            }
            Ok(Err(e)) => {
                return close(ApiError::bad_request(format!(
                    "reading the request body: {e}"
                )))
            }
            Err(_) => {
                return close(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request body did not arrive within {} s",
                        body_timeout.as_secs_f64()
                    ),
                ))
            }
        };
    match router.oneshot(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => match e {},
    }
}

/// A body one chunk over [`MAX_BODY`], from static memory: what the router's own limit sees
/// when the client's body was over it.
fn oversized_body() -> Body {
    static CHUNK: [u8; 64 * 1024] = [b' '; 64 * 1024];
    let chunks = MAX_BODY / CHUNK.len() + 1;
    let stream = futures::stream::iter(
        (0..chunks).map(|_| Ok::<_, Infallible>(bytes::Bytes::from_static(&CHUNK))),
    );
    Body::from_stream(stream)
}

/// An error answer that also closes the connection (the rest of its body is not read).
fn close(e: ApiError) -> Response {
    let mut r = e.into_response();
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}
