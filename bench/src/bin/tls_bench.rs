//! TLS through a terminator, for bench/tls.sh: a plaintext backend (the app on 8080) and a rustls
//! client (TLS 1.3 only, session resumption disabled: every connection is a full handshake).
//!
//!   tls-bench backend --listen IP:PORT [--lifetime-s 600] [--report-min-bytes 1048576]
//!       the app: per connection, answers the first byte it receives with one byte "y", then
//!       reads and discards everything until EOF. A connection that brought at least
//!       --report-min-bytes prints one JSON line {"bytes", "seconds", "gbit_per_second"} (first
//!       to last byte received). Exits after --lifetime-s seconds.
//!   Instead of --ca FILE, --pin FILE: accept exactly the certificate in FILE (its signature over
//!   the handshake still verified), which spares the client the chain's signature check.
//!   tls-bench handshakes --connect IP:PORT --ca FILE [--duration-s 5] [--concurrency 4]
//!                        [--timeout-ms 5000]
//!       each of --concurrency threads: TCP connect, full TLS 1.3 handshake (the certificate
//!       verified against --ca for the IP), one byte to the app and its one-byte answer back,
//!       close_notify, close; until --duration-s is up. One JSON line: {"connections", "errors",
//!       "seconds", "per_second", "median_us", "p99_us", "first_error", "suite", "group"}. The
//!       one-byte exchange makes each connection a complete one: the terminator finished its
//!       side of the handshake and reached the app. Exits 1 if no connection succeeded.
//!   tls-bench bulk --connect IP:PORT --ca FILE [--duration-s 5] [--streams 1] [--chunk 65536]
//!                  [--timeout-ms 5000]
//!       each of --streams connections: handshake and the one-byte exchange, then writes
//!       --chunk-byte buffers (a fixed pseudo-random payload) for --duration-s. One JSON line:
//!       {"bytes", "seconds", "gbit_per_second", "errors", "first_error", "suite", "group"}
//!       (bytes accepted by the TLS connection; the backend's own count is the precise one).
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rustls::client::Resumption;
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tapestry_bench::percentile;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn num<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    match arg(args, name) {
        None => Ok(default),
        Some(s) => s.parse().map_err(|e| anyhow::anyhow!("{name} {s}: {e}")),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("backend") => backend(&args),
        Some("handshakes") => handshakes(&args),
        Some("bulk") => bulk(&args),
        _ => bail!("usage: tls-bench backend --listen IP:PORT | handshakes --connect IP:PORT --ca FILE | bulk --connect IP:PORT --ca FILE"),
    }
}

fn backend(args: &[String]) -> Result<()> {
    let addr: SocketAddr = arg(args, "--listen")
        .context("--listen IP:PORT")?
        .parse()
        .context("--listen")?;
    let lifetime: u64 = num(args, "--lifetime-s", 600)?;
    let report_min: u64 = num(args, "--report-min-bytes", 1 << 20)?;
    let l = TcpListener::bind(addr).with_context(|| format!("binding {addr}"))?;
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(lifetime));
        eprintln!("tls-bench backend: --lifetime-s {lifetime} reached, exiting");
        std::process::exit(0);
    });
    for c in l.incoming() {
        let mut c = match c {
            Ok(c) => c,
            Err(e) => {
                eprintln!("tls-bench backend: accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        std::thread::spawn(move || {
            let _ = c.set_read_timeout(Some(Duration::from_secs(60)));
            let mut buf = vec![0u8; 256 * 1024];
            let (mut total, mut first, mut last) = (0u64, None, Instant::now());
            loop {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        last = Instant::now();
                        if first.is_none() {
                            first = Some(last);
                            if c.write_all(b"y").is_err() {
                                break;
                            }
                        }
                        total += n as u64;
                    }
                }
            }
            if let (true, Some(f)) = (total >= report_min, first) {
                let s = last.duration_since(f).as_secs_f64().max(1e-6);
                let line = serde_json::json!({
                    "bytes": total, "seconds": s, "gbit_per_second": total as f64 * 8.0 / s / 1e9,
                });
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
        });
    }
    Ok(())
}

struct Client {
    addr: SocketAddr,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
    timeout: Duration,
}

fn client_setup(args: &[String]) -> Result<Client> {
    let addr: SocketAddr = arg(args, "--connect")
        .context("--connect IP:PORT")?
        .parse()
        .context("--connect")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let mut config = if let Some(pin) = arg(args, "--pin") {
        let cert = CertificateDer::pem_file_iter(&pin)
            .with_context(|| format!("reading {pin}"))?
            .next()
            .with_context(|| format!("no certificate in {pin}"))?
            .with_context(|| format!("parsing {pin}"))?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned {
                cert: cert.into_owned(),
                algs: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth()
    } else {
        let ca = arg(args, "--ca").context("--ca FILE or --pin FILE")?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&ca).with_context(|| format!("reading {ca}"))? {
            roots.add(c.with_context(|| format!("parsing {ca}"))?)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.resumption = Resumption::disabled();
    config.enable_early_data = false;
    let ip: IpAddr = addr.ip();
    Ok(Client {
        addr,
        name: ServerName::IpAddress(ip.into()),
        config: Arc::new(config),
        timeout: Duration::from_millis(num(args, "--timeout-ms", 5000)?),
    })
}

/// `--pin FILE`: the server must present exactly this certificate and prove it holds its key
/// (the TLS 1.3 CertificateVerify signature is checked); the chain is not walked, so a handshake
/// costs the client one signature verification rather than two.
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algs: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("not the pinned certificate".into()))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algs.supported_schemes()
    }
}

type Tls = StreamOwned<ClientConnection, TcpStream>;

/// TCP connect, full handshake, one byte to the app and its answer back.
fn open(c: &Client) -> Result<Tls> {
    let s = TcpStream::connect_timeout(&c.addr, c.timeout)?;
    s.set_read_timeout(Some(c.timeout))?;
    s.set_write_timeout(Some(c.timeout))?;
    s.set_nodelay(true)?;
    let conn = ClientConnection::new(c.config.clone(), c.name.clone())?;
    let mut tls = StreamOwned::new(conn, s);
    tls.write_all(b"x")?;
    let mut b = [0u8; 1];
    tls.read_exact(&mut b).context("the app's answer")?;
    if &b != b"y" {
        bail!("unexpected answer {:?}", b[0]);
    }
    Ok(tls)
}

fn negotiated(t: &Tls) -> (String, String) {
    (
        t.conn
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        t.conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
            .unwrap_or_default(),
    )
}

fn close(mut t: Tls) {
    t.conn.send_close_notify();
    let _ = t.conn.complete_io(&mut t.sock);
    let _ = t.sock.shutdown(std::net::Shutdown::Both);
}

#[derive(Default)]
struct Tally {
    connections: u64,
    bytes: u64,
    errors: u64,
    latencies_us: Vec<f64>,
    first_error: Option<String>,
    suite: String,
    group: String,
}

fn run_threads<F>(n: usize, duration: Duration, f: F) -> (Tally, f64)
where
    F: Fn(&AtomicBool, &mut Tally) + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let f = Arc::new(f);
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..n.max(1) {
        let (stop, tally, f) = (stop.clone(), tally.clone(), f.clone());
        handles.push(std::thread::spawn(move || {
            let mut mine = Tally::default();
            f(&stop, &mut mine);
            let mut t = tally.lock().unwrap();
            t.connections += mine.connections;
            t.bytes += mine.bytes;
            t.errors += mine.errors;
            t.latencies_us.extend(mine.latencies_us);
            if t.first_error.is_none() {
                t.first_error = mine.first_error;
            }
            if t.suite.is_empty() {
                t.suite = mine.suite;
                t.group = mine.group;
            }
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let t = std::mem::take(&mut *tally.lock().unwrap());
    (t, seconds)
}

fn error(t: &mut Tally, e: anyhow::Error) {
    t.errors += 1;
    if t.first_error.is_none() {
        t.first_error = Some(format!("{e:#}"));
    }
    // A refused or unreachable destination fails at once: do not spin.
    std::thread::sleep(Duration::from_millis(10));
}

fn handshakes(args: &[String]) -> Result<()> {
    let c = Arc::new(client_setup(args)?);
    let duration = Duration::from_secs_f64(num(args, "--duration-s", 5.0)?);
    let concurrency: usize = num(args, "--concurrency", 4)?;
    let (mut t, seconds) = run_threads(concurrency, duration, move |stop, t| {
        while !stop.load(Ordering::Relaxed) {
            let t0 = Instant::now();
            match open(&c) {
                Ok(tls) => {
                    t.latencies_us.push(t0.elapsed().as_secs_f64() * 1e6);
                    t.connections += 1;
                    if t.suite.is_empty() {
                        (t.suite, t.group) = negotiated(&tls);
                    }
                    close(tls);
                }
                Err(e) => error(t, e),
            }
        }
    });
    t.latencies_us.sort_by(|a, b| a.total_cmp(b));
    let json = serde_json::json!({
        "connections": t.connections,
        "errors": t.errors,
        "seconds": seconds,
        "per_second": t.connections as f64 / seconds,
        "median_us": percentile(&t.latencies_us, 50.0).round(),
        "p99_us": percentile(&t.latencies_us, 99.0).round(),
        "first_error": t.first_error,
        "suite": t.suite,
        "group": t.group,
    });
    println!("{json}");
    if t.connections == 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn bulk(args: &[String]) -> Result<()> {
    let c = Arc::new(client_setup(args)?);
    let duration = Duration::from_secs_f64(num(args, "--duration-s", 5.0)?);
    let streams: usize = num(args, "--streams", 1)?;
    let chunk: usize = num(args, "--chunk", 65536)?;
    // A fixed payload that does not compress (not that TLS 1.3 compresses).
    let mut payload = vec![0u8; chunk.max(1)];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for b in payload.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let payload = Arc::new(payload);
    let (t, _) = run_threads(streams, duration, move |stop, t| {
        let mut tls = match open(&c) {
            Ok(tls) => tls,
            Err(e) => return error(t, e),
        };
        (t.suite, t.group) = negotiated(&tls);
        t.connections += 1;
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if let Err(e) = tls.write_all(&payload) {
                return error(t, e.into());
            }
            t.bytes += payload.len() as u64;
        }
        let _ = tls.flush();
        t.latencies_us.push(t0.elapsed().as_secs_f64() * 1e6);
        close(tls);
    });
    let seconds = t.latencies_us.iter().cloned().fold(0.0, f64::max) / 1e6;
    let json = serde_json::json!({
        "bytes": t.bytes,
        "seconds": seconds,
        "gbit_per_second": if seconds > 0.0 { t.bytes as f64 * 8.0 / seconds / 1e9 } else { 0.0 },
        "streams": t.connections,
        "errors": t.errors,
        "first_error": t.first_error,
        "suite": t.suite,
        "group": t.group,
    });
    println!("{json}");
    if t.bytes == 0 {
        std::process::exit(1);
    }
    Ok(())
}
