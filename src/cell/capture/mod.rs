//! `tapestry capture`: a live capture of a container's port or of the underlay, through the
//! running cell. The cell's dataplane driver copies matching frames to a bounded queue per
//! capture ([`crate::cell::tap`]); the cell streams them over its local socket ([`wire`]), and
//! this client prints one line per packet or writes pcapng ([`pcap`]).

pub mod filter;
pub mod pcap;
pub mod wire;

use std::io::{BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tapestry_switch::PortId;

use super::api::{self, Request};
use super::tap::{Dir, Registration, Target};
use super::Cell;
use filter::Filter;

/// `tapestry capture`: watch a container's frames or the underlay's VXLAN-GBP datagrams live.
#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["port", "underlay"])))]
pub struct CaptureArgs {
    /// The running cell's state directory (its socket is STATE_DIR/cell.sock).
    #[arg(long)]
    state_dir: PathBuf,
    /// Capture this container's frames (its handle, or HANDLE/IFNAME when it has several
    /// attachments): Ethernet, as the container sends and receives them.
    #[arg(long, value_name = "HANDLE")]
    port: Option<String>,
    /// Capture the VXLAN-GBP datagrams this cell sends and receives (with outer
    /// Ethernet/IPv4/UDP headers made up from the real addresses and ports).
    #[arg(long)]
    underlay: bool,
    /// Write pcapng to FILE instead of printing a line per packet.
    #[arg(short = 'w', long = "write", value_name = "FILE.pcapng")]
    write: Option<PathBuf>,
    /// Stop after N packets.
    #[arg(short = 'c', long, value_name = "N")]
    count: Option<u64>,
    /// Which packets (the inner IPv4 packet on the underlay): `[src|dst] host IP`,
    /// `[src|dst] port N`, `tcp`, `udp`, `icmp`, each optionally after `not`, joined by `and`.
    #[arg(long, default_value = "")]
    filter: String,
}

/// Where packets go: text on stdout, or a pcapng file written whole at the end.
enum Sink {
    Text(std::io::Stdout),
    File {
        sink: pcap::PcapSink<BufWriter<std::fs::File>>,
        tmp: PathBuf,
        path: PathBuf,
    },
}

pub fn run_capture(args: CaptureArgs) -> Result<()> {
    // Checked here too, so a bad filter fails without a running cell.
    Filter::parse(&args.filter)?;
    if args.count == Some(0) {
        bail!("--count 0: the count must be at least 1");
    }
    let req = Request::Capture {
        port: args.port.clone(),
        underlay: args.underlay,
        filter: args.filter.clone(),
    };
    let socket = args.state_dir.join("cell.sock");
    // The handlers are in place before the capture starts, so Ctrl-C always ends it cleanly.
    let stop = Arc::new(AtomicBool::new(false));
    let signals = Signals::install()?;
    let (info, mut reader) = api::call_keep(&socket, &req)?;
    let what = info["target"].as_str().unwrap_or("-").to_string();
    let conn = reader.get_ref().try_clone()?;
    signals.on_signal(conn, stop.clone());
    let mut sink = match &args.write {
        None => Sink::Text(std::io::stdout()),
        Some(path) => {
            let name = path
                .file_name()
                .ok_or_else(|| anyhow!("-w {}: not a file name", path.display()))?;
            let tmp = path.with_file_name(format!(".{}.part", name.to_string_lossy()));
            let f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            let name = if args.underlay { "underlay" } else { "port" };
            let sink = pcap::PcapSink::new(BufWriter::new(f), name, &what)
                .with_context(|| format!("writing {}", tmp.display()))?;
            Sink::File {
                sink,
                tmp,
                path: path.clone(),
            }
        }
    };
    let filter_note = if args.filter.is_empty() {
        String::new()
    } else {
        format!(", filter {:?}", args.filter)
    };
    eprintln!("capturing on {what}{filter_note}; Ctrl-C ends it");
    let (mut n, mut dropped) = (0u64, 0u64);
    loop {
        if args.count.is_some_and(|c| n >= c) {
            break;
        }
        let item = match wire::read(&mut reader) {
            Ok(Some(item)) => item,
            Ok(None) => break,
            Err(_) if stop.load(Ordering::SeqCst) => break,
            Err(e) => {
                eprintln!("the capture stream ended: {e}");
                break;
            }
        };
        let f = match item {
            wire::Item::Stats(d) => {
                dropped = d;
                continue;
            }
            wire::Item::Frame(f) => f,
        };
        n += 1;
        match &mut sink {
            Sink::Text(out) => {
                let dir = match f.dir {
                    Dir::In => "in ",
                    Dir::Out => "out",
                };
                let summary = if args.underlay {
                    pcap::summarize_underlay(f.src, f.dst, &f.data)
                } else {
                    pcap::summarize_ethernet(&f.data)
                };
                let line = format!("{} {dir} {summary}\n", pcap::time_of_day(f.ts_ns));
                if out
                    .write_all(line.as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    break;
                }
            }
            Sink::File { sink, tmp, .. } => {
                let comment = match (args.underlay, f.dir) {
                    (false, Dir::Out) => "out: sent by the container",
                    (false, Dir::In) => "in: to the container",
                    (true, Dir::Out) => "out: sent to another cell",
                    (true, Dir::In) => "in: received from another cell",
                };
                let r = if args.underlay {
                    let Some(outer) = pcap::outer_headers(f.src, f.dst, f.data.len()) else {
                        continue;
                    };
                    let mut b = Vec::with_capacity(outer.len() + f.data.len());
                    b.extend_from_slice(&outer);
                    b.extend_from_slice(&f.data);
                    sink.write(f.ts_ns, f.dir, comment, &b)
                } else {
                    sink.write(f.ts_ns, f.dir, comment, &f.data)
                };
                r.with_context(|| format!("writing {}", tmp.display()))?;
            }
        }
    }
    if let Sink::File { sink, tmp, path } = sink {
        let f = sink
            .into_inner()
            .into_inner()
            .map_err(|e| anyhow!("writing {}: {}", tmp.display(), e.error()))?;
        f.sync_all()
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path)
            .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    }
    eprintln!("{n} packets captured, {dropped} dropped by the cell (capture queue full)");
    Ok(())
}

/// SIGINT and SIGTERM, caught: they end the capture by shutting its connection down.
struct Signals {
    rt: tokio::runtime::Runtime,
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (int, term) = {
            let _g = rt.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        Ok(Signals { rt, int, term })
    }

    fn on_signal(self, conn: UnixStream, stop: Arc<AtomicBool>) {
        let Signals {
            rt,
            mut int,
            mut term,
        } = self;
        std::thread::spawn(move || {
            rt.block_on(async {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            });
            stop.store(true, Ordering::SeqCst);
            let _ = conn.shutdown(std::net::Shutdown::Both);
        });
    }
}

/// The cell's side of a capture: streams the session's frames to the client, and a stats
/// record at least every quarter second, until the client goes away (or cannot keep up for
/// 10 s). Dropping the registration ends the capture in the dataplane.
pub fn stream(reg: Registration, conn: UnixStream) {
    use crossbeam_channel::RecvTimeoutError;
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let mut w = BufWriter::with_capacity(256 << 10, conn);
    let mut sent = None;
    loop {
        let first = match reg.rx.recv_timeout(Duration::from_millis(250)) {
            Ok(r) => Some(r),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let idle = first.is_none();
        let mut res = Ok(());
        if let Some(r) = first {
            res = wire::write_frame(&mut w, &r);
            for r in reg.rx.try_iter().take(255) {
                if res.is_err() {
                    break;
                }
                res = wire::write_frame(&mut w, &r);
            }
        }
        let d = reg.session.dropped();
        if res.is_ok() && (idle || sent != Some(d)) {
            res = wire::write_stats(&mut w, d);
            sent = Some(d);
        }
        if res.is_err() || w.flush().is_err() {
            return;
        }
    }
}

impl Cell {
    /// Starts a capture of a container's port or of the underlay.
    pub(super) fn start_capture(&self, req: Request) -> Result<(Value, Registration)> {
        let Request::Capture {
            port,
            underlay,
            filter,
        } = req
        else {
            bail!("not a capture request");
        };
        let filter = Filter::parse(&filter)?;
        let (target, what) = match (port, underlay) {
            (Some(h), false) => {
                let inner = self.lock();
                let found: Vec<_> = inner
                    .containers
                    .containers
                    .values()
                    .filter(|c| c.handle == h || c.key() == h)
                    .collect();
                let c = match found.as_slice() {
                    [c] => *c,
                    [] => bail!("no container {h:?} is attached to this cell"),
                    many => bail!(
                        "container {h:?} has {} attachments: name one as HANDLE/IFNAME ({})",
                        many.len(),
                        many.iter().map(|c| c.key()).collect::<Vec<_>>().join(", ")
                    ),
                };
                let id = super::state::port_id_for(self.config.subnet.network(), c.ip);
                (
                    Target::Port(PortId(id)),
                    format!(
                        "port {id} (container {}, {}, app {})",
                        c.key(),
                        c.ip,
                        c.app_id
                    ),
                )
            }
            (None, true) => (
                Target::Underlay,
                format!(
                    "underlay {}:{}",
                    self.config.underlay_ip, self.config.vtep_port
                ),
            ),
            _ => bail!("a capture needs exactly one of --port HANDLE and --underlay"),
        };
        let reg = self
            .dataplane
            .capture()
            .add(target, filter)
            .map_err(|e| anyhow!(e))?;
        Ok((json!({ "target": what, "id": reg.session.id }), reg))
    }

    /// Live captures and the frames they dropped, for `tapestry cell status`.
    pub(super) fn capture_status(&self) -> Value {
        let (active, dropped) = self.dataplane.capture().stats();
        json!({ "active": active, "dropped": dropped })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::tap::CaptureTap;

    /// The cell's side: frames and stats records reach the client, and the capture ends in
    /// the dataplane once the client hangs up.
    #[test]
    fn stream_carries_frames_and_ends_when_the_client_leaves() {
        let tap = Arc::new(CaptureTap::default());
        let reg = tap.add(Target::Underlay, Filter::default()).unwrap();
        let (cell, client) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || stream(reg, cell));
        let d = [0x88, 0, 0, 7, 0, 0, 1, 0, 1, 2, 3];
        let (src, dst) = (
            "10.0.0.1:4789".parse().unwrap(),
            "10.0.0.2:4789".parse().unwrap(),
        );
        tap.underlay(Dir::Out, src, dst, &d);
        let mut r = std::io::BufReader::new(client);
        let f = loop {
            match wire::read(&mut r).unwrap().unwrap() {
                wire::Item::Frame(f) => break f,
                wire::Item::Stats(n) => assert_eq!(n, 0),
            }
        };
        assert_eq!(
            (f.dir, f.src, f.dst, &f.data[..]),
            (Dir::Out, src, dst, &d[..])
        );
        assert!(tap.on());
        drop(r);
        t.join().unwrap();
        assert!(!tap.on());
        assert_eq!(tap.stats(), (0, 0));
    }
}
