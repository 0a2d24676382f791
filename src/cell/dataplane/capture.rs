//! The capture tap: the driver's read and write paths copy frames that a live `tapestry
//! capture` asked for into that capture's bounded queue. With no capture active the cost is one
//! relaxed atomic load per packet ([`CaptureTap::on`]); a full queue drops the copy and counts
//! it, so a slow client never slows the dataplane.

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use tapestry_switch::PortId;

use crate::cell::capture::filter::{ipv4_of_ethernet, Filter};

/// Captures a cell runs at once at most.
pub const MAX_CAPTURES: usize = 4;
/// Frames queued per capture at most (a queue of super-frames may hold 64 MiB).
pub const QUEUE: usize = 1024;
/// The VXLAN header before the inner frame of an underlay datagram.
const VXLAN_LEN: usize = 8;

/// Which way a frame went: for a port, as the container sees it (`Out`: the container sent
/// it); on the underlay, as the cell sees it (`Out`: sent to another cell).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    In,
    Out,
}

/// What a capture watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Port(PortId),
    Underlay,
}

/// One captured frame: a port's Ethernet frame, or an underlay datagram's UDP payload (VXLAN
/// header and inner frame) with its addresses.
#[derive(Debug)]
pub struct Record {
    /// Since the Unix epoch.
    pub ts_ns: u64,
    pub dir: Dir,
    /// Underlay only (zero for a port).
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub data: Vec<u8>,
}

/// One live capture.
pub struct Session {
    pub id: u64,
    target: Target,
    filter: Filter,
    tx: Sender<Record>,
    /// Frames that matched but found the queue full.
    dropped: AtomicU64,
}

impl Session {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The cell's captures, shared by every worker, the local stack and the API.
pub struct CaptureTap {
    on: AtomicBool,
    sessions: ArcSwap<Vec<Arc<Session>>>,
    /// Serializes adding and removing sessions.
    edit: Mutex<u64>,
    /// Frames dropped by every capture so far (a full queue).
    dropped_total: AtomicU64,
}

const UNSPECIFIED: SocketAddrV4 = SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0);

impl Default for CaptureTap {
    fn default() -> Self {
        CaptureTap {
            on: AtomicBool::new(false),
            sessions: ArcSwap::from_pointee(Vec::new()),
            edit: Mutex::new(0),
            dropped_total: AtomicU64::new(0),
        }
    }
}

/// Removes its session from the tap when dropped (the client went away).
pub struct Registration {
    tap: Arc<CaptureTap>,
    pub session: Arc<Session>,
    pub rx: Receiver<Record>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.tap.remove(self.session.id);
    }
}

impl CaptureTap {
    /// Whether any capture is active: the one relaxed load the hot paths pay.
    #[inline]
    pub fn on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Live captures now, and frames all captures have dropped.
    pub fn stats(&self) -> (usize, u64) {
        (
            self.sessions.load().len(),
            self.dropped_total.load(Ordering::Relaxed)
                + self
                    .sessions
                    .load()
                    .iter()
                    .map(|s| s.dropped())
                    .sum::<u64>(),
        )
    }

    /// Starts a capture; refused when [`MAX_CAPTURES`] run already.
    pub fn add(self: &Arc<Self>, target: Target, filter: Filter) -> Result<Registration, String> {
        let mut next = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.sessions.load_full();
        if cur.len() >= MAX_CAPTURES {
            return Err(format!(
                "this cell runs {MAX_CAPTURES} captures already (the most it runs at once); \
                 end one first"
            ));
        }
        *next += 1;
        let (tx, rx) = crossbeam_channel::bounded(QUEUE);
        let session = Arc::new(Session {
            id: *next,
            target,
            filter,
            tx,
            dropped: AtomicU64::new(0),
        });
        let mut v = (*cur).clone();
        v.push(session.clone());
        self.sessions.store(Arc::new(v));
        self.on.store(true, Ordering::Relaxed);
        Ok(Registration {
            tap: self.clone(),
            session,
            rx,
        })
    }

    fn remove(&self, id: u64) {
        let _g = self.edit.lock().unwrap_or_else(|p| p.into_inner());
        let cur = self.sessions.load_full();
        let mut v = (*cur).clone();
        if let Some(i) = v.iter().position(|s| s.id == id) {
            let s = v.remove(i);
            self.dropped_total.fetch_add(s.dropped(), Ordering::Relaxed);
        }
        self.on.store(!v.is_empty(), Ordering::Relaxed);
        self.sessions.store(Arc::new(v));
    }

    /// A frame of port `port` (Ethernet, without a virtio-net header). Call when [`Self::on`].
    #[cold]
    pub fn port(&self, port: PortId, dir: Dir, frame: &[u8]) {
        let mut ts = None;
        for s in self.sessions.load().iter() {
            if s.target == Target::Port(port) && s.filter.matches_ethernet(frame) {
                let ts = *ts.get_or_insert_with(now_ns);
                offer(s, ts, dir, UNSPECIFIED, UNSPECIFIED, frame);
            }
        }
    }

    /// One underlay datagram's payload (VXLAN header + inner frame). Call when [`Self::on`].
    #[cold]
    pub fn underlay(&self, dir: Dir, src: SocketAddrV4, dst: SocketAddrV4, datagram: &[u8]) {
        let mut ts = None;
        for s in self.sessions.load().iter() {
            if s.target == Target::Underlay
                && (s.filter.is_empty()
                    || s.filter
                        .matches_ipv4(datagram.get(VXLAN_LEN..).and_then(ipv4_of_ethernet)))
            {
                let ts = *ts.get_or_insert_with(now_ns);
                offer(s, ts, dir, src, dst, datagram);
            }
        }
    }
}

fn offer(s: &Session, ts_ns: u64, dir: Dir, src: SocketAddrV4, dst: SocketAddrV4, data: &[u8]) {
    if s.tx.is_full() {
        s.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let r = Record {
        ts_ns,
        dir,
        src,
        dst,
        data: data.to_vec(),
    };
    match s.tx.try_send(r) {
        Ok(()) => {}
        Err(TrySendError::Full(_)) => {
            s.dropped.fetch_add(1, Ordering::Relaxed);
        }
        Err(TrySendError::Disconnected(_)) => {}
    }
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0]);
        f.extend_from_slice(&src);
        f.extend_from_slice(&dst);
        f
    }

    #[test]
    fn sessions_filter_bound_and_count_drops() {
        let tap = Arc::new(CaptureTap::default());
        assert!(!tap.on());
        let a = tap
            .add(
                Target::Port(PortId(2)),
                Filter::parse("host 10.0.0.9").unwrap(),
            )
            .unwrap();
        let u = tap.add(Target::Underlay, Filter::default()).unwrap();
        assert!(tap.on());
        tap.port(PortId(2), Dir::Out, &frame([10, 0, 0, 9], [10, 0, 0, 1]));
        tap.port(PortId(2), Dir::Out, &frame([10, 0, 0, 8], [10, 0, 0, 1]));
        tap.port(PortId(3), Dir::In, &frame([10, 0, 0, 1], [10, 0, 0, 9]));
        assert_eq!(a.rx.try_iter().count(), 1);
        let mut d = vec![0x88, 0, 0, 7, 0, 0, 1, 0];
        d.extend_from_slice(&frame([10, 0, 0, 1], [10, 0, 0, 2]));
        for _ in 0..QUEUE + 5 {
            tap.underlay(Dir::In, UNSPECIFIED, UNSPECIFIED, &d);
        }
        assert_eq!(u.session.dropped(), 5);
        assert_eq!(u.rx.try_iter().count(), QUEUE);
        assert_eq!(tap.stats(), (2, 5));
        let more: Vec<_> = (0..MAX_CAPTURES - 2)
            .map(|_| tap.add(Target::Underlay, Filter::default()).unwrap())
            .collect();
        let e = tap.add(Target::Underlay, Filter::default()).err().unwrap();
        assert!(e.contains("captures already"), "{e}");
        drop(more);
        drop(u);
        assert_eq!(tap.stats(), (1, 5));
        drop(a);
        assert!(!tap.on());
    }
}
