//! TCP connections per second, for bench/egress.sh: a server that accepts and closes, and a
//! client that opens and closes connections in a loop for a fixed time.
//!
//!   tcp-cps server --listen IP:PORT [--threads 2] [--lifetime-s 600]
//!       accepts connections and closes each at once (the server sends the FIN, so the
//!       TIME_WAIT is on its side and the client's ports are free again at once); exits after
//!       --lifetime-s seconds, so a forgotten server never outlives a benchmark.
//!   tcp-cps client --connect IP:PORT [--duration-s 5] [--concurrency 1] [--timeout-ms 2000]
//!       each of --concurrency threads connects, waits for the server's FIN (read returns 0),
//!       closes, and starts over until --duration-s is up. Prints one JSON line:
//!       {"connections", "errors", "seconds", "per_second", "median_us", "p99_us", "first_error"}
//!       where the latencies are connect-to-EOF times of the successful connections. Exits 1
//!       if no connection succeeded. Every connect and read has --timeout-ms, so the client
//!       ends by --duration-s plus that, whatever the network does.
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use socket2::{Domain, Protocol, Socket, Type};
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
        Some("server") => server(&args),
        Some("client") => client(&args),
        _ => bail!("usage: tcp-cps server --listen IP:PORT | client --connect IP:PORT [--duration-s S] [--concurrency N]"),
    }
}

fn server(args: &[String]) -> Result<()> {
    let addr: SocketAddr = arg(args, "--listen")
        .context("--listen IP:PORT")?
        .parse()
        .context("--listen")?;
    let threads: usize = num(args, "--threads", 2)?;
    let lifetime: u64 = num(args, "--lifetime-s", 600)?;
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())
        .with_context(|| format!("binding {addr}"))?;
    sock.listen(4096)?;
    let listener: std::net::TcpListener = sock.into();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(lifetime));
        eprintln!("tcp-cps server: --lifetime-s {lifetime} reached, exiting");
        std::process::exit(0);
    });
    let mut handles = Vec::new();
    for _ in 0..threads.max(1) {
        let l = listener.try_clone()?;
        handles.push(std::thread::spawn(move || loop {
            match l.accept() {
                Ok((s, _)) => drop(s),
                Err(e) => {
                    eprintln!("tcp-cps server: accept: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }));
    }
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

struct Tally {
    connections: u64,
    errors: u64,
    latencies_us: Vec<f64>,
    first_error: Option<String>,
}

fn one(addr: &SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf)? {
            0 => return Ok(()),
            _ => continue,
        }
    }
}

fn client(args: &[String]) -> Result<()> {
    let addr: SocketAddr = arg(args, "--connect")
        .context("--connect IP:PORT")?
        .parse()
        .context("--connect")?;
    let duration = Duration::from_secs_f64(num(args, "--duration-s", 5.0)?);
    let concurrency: usize = num(args, "--concurrency", 1)?;
    let timeout = Duration::from_millis(num(args, "--timeout-ms", 2000)?);
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Mutex::new(Tally {
        connections: 0,
        errors: 0,
        latencies_us: Vec::new(),
        first_error: None,
    }));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (stop, tally) = (stop.clone(), tally.clone());
        handles.push(std::thread::spawn(move || {
            let (mut ok, mut err, mut lat, mut first) = (0u64, 0u64, Vec::new(), None);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                match one(&addr, timeout) {
                    Ok(()) => {
                        ok += 1;
                        lat.push(t0.elapsed().as_secs_f64() * 1e6);
                    }
                    Err(e) => {
                        err += 1;
                        if first.is_none() {
                            first = Some(e.to_string());
                        }
                        // A refused or unreachable destination fails at once: do not spin.
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            let mut t = tally.lock().unwrap();
            t.connections += ok;
            t.errors += err;
            t.latencies_us.extend(lat);
            if t.first_error.is_none() {
                t.first_error = first;
            }
        }));
    }
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut t = tally.lock().unwrap();
    t.latencies_us.sort_by(|a, b| a.total_cmp(b));
    let json = serde_json::json!({
        "connections": t.connections,
        "errors": t.errors,
        "seconds": seconds,
        "per_second": t.connections as f64 / seconds,
        "median_us": percentile(&t.latencies_us, 50.0).round(),
        "p99_us": percentile(&t.latencies_us, 99.0).round(),
        "first_error": t.first_error,
    });
    println!("{json}");
    if t.connections == 0 {
        std::process::exit(1);
    }
    Ok(())
}
