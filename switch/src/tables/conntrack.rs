//! Connection tracking shared by all workers: a lock-free map (papaya) with a hard capacity.
//!
//! Entries are keyed in the flow's original direction plus a *zone*, the local port that owns the
//! record, so that a same-cell flow can hold both the source port's egress record and the
//! destination port's ingress record. Per-entry state lives in atomics; nothing here blocks.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use super::flow_state::*;

/// When the table is full and a scan found nothing to evict, new flows are refused without
/// scanning again for this long (or until [`Conntrack::expire`] runs).
const FULL_RESCAN_AFTER: Duration = Duration::from_secs(1);
/// How long a revoked flow's tombstone lives after the last packet it dropped from the port.
pub const REVOKED_HOLD: Duration = Duration::from_secs(30);
/// At most this many entries are evicted per scan.
const EVICT_BATCH: usize = 64;

/// A flow in its original direction, in the zone of one local port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowKey {
    pub zone: u32,
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
}

impl std::hash::Hash for FlowKey {
    /// Two words instead of six field writes: hashing is on the per-packet path.
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(((u32::from(self.src) as u64) << 32) | u32::from(self.dst) as u64);
        h.write_u64(
            ((self.zone as u64) << 40)
                | ((self.proto as u64) << 32)
                | ((self.sport as u64) << 16)
                | self.dport as u64,
        );
    }
}

impl FlowKey {
    /// The same flow seen from the other end.
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            zone: self.zone,
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

/// Who admitted the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The zone's port originated it; packets in the reverse direction are replies.
    Egress,
    /// Ingress policy admitted it at the zone's port, for this source tag.
    Ingress { src_tag: u16 },
}

/// One tracked flow.
#[derive(Debug)]
pub struct Entry {
    origin: Origin,
    revoked: AtomicBool,
    generation: AtomicU64,
    state: AtomicU8,
    expires: AtomicU64,
}

impl Entry {
    pub fn origin(&self) -> Origin {
        self.origin
    }
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }
    pub fn set_generation(&self, g: u64) {
        self.generation.store(g, Ordering::Relaxed)
    }
    /// True once the policy that admitted the flow was removed: the entry stays as a tombstone
    /// that drops the flow's packets (and keeps the port from re-opening it as its own).
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Relaxed)
    }
    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Relaxed))
    }
    fn expires(&self) -> u64 {
        self.expires.load(Ordering::Relaxed)
    }
}

/// Why a new flow was not recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("connection table full")]
pub struct ConntrackFull;

/// The shared connection table.
pub struct Conntrack {
    map: papaya::HashMap<FlowKey, Entry>,
    capacity: usize,
    count: AtomicUsize,
    evictions: AtomicU64,
    refused: AtomicU64,
    /// Nanos (+1) at which a scan of a full table found nothing to evict; 0 = none.
    full_since: AtomicU64,
    base: OnceLock<Instant>,
}

impl std::fmt::Debug for Conntrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conntrack")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Conntrack {
    pub fn new(capacity: usize) -> Conntrack {
        Conntrack {
            map: papaya::HashMap::with_capacity(capacity.min(1 << 16)),
            capacity,
            count: AtomicUsize::new(0),
            evictions: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            full_since: AtomicU64::new(0),
            base: OnceLock::new(),
        }
    }

    fn nanos(&self, now: Instant) -> u64 {
        let base = *self.base.get_or_init(|| now);
        now.saturating_duration_since(base)
            .as_nanos()
            .min(u64::MAX as u128 / 2) as u64
    }

    pub fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn capacity(&self) -> usize {
        self.capacity
    }
    /// Entries removed to make room for new flows.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
    /// New flows refused because the table was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Looks up a live (not expired) entry and runs `f` on it.
    pub fn with<R>(&self, key: &FlowKey, now: Instant, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        self.pin().with(key, now, f)
    }

    /// Enters the map once for several operations (one per packet on the hot path).
    pub fn pin(&self) -> Pinned<'_> {
        Pinned {
            ct: self,
            map: self.map.pin(),
        }
    }

    /// Records a packet of a tracked flow: advances the state and pushes out the expiry.
    pub fn observe(&self, entry: &Entry, dir: Dir, tcp_flags: u8, now: Instant) {
        let t = self.nanos(now);
        let old = entry.state();
        let new = old.next(dir, tcp_flags);
        if new != old {
            entry.state.store(new as u8, Ordering::Relaxed);
        }
        let exp = t.saturating_add(new.timeout().as_nanos() as u64);
        // Skip the store when the expiry moved by less than a second (keeps cache lines shared).
        if exp > entry.expires() + 1_000_000_000 || new != old {
            entry.expires.store(exp, Ordering::Relaxed);
        }
    }

    /// Marks a flow revoked and holds the tombstone for [`REVOKED_HOLD`] from `now`.
    pub fn revoke(&self, entry: &Entry, now: Instant) {
        let t = self.nanos(now);
        entry.revoked.store(true, Ordering::Relaxed);
        entry.expires.store(
            t.saturating_add(REVOKED_HOLD.as_nanos() as u64),
            Ordering::Relaxed,
        );
    }

    /// Clears a revocation (the policy is back).
    pub fn reinstate(&self, entry: &Entry) {
        entry.revoked.store(false, Ordering::Relaxed);
    }

    /// Adds a flow. If one with this key exists (another worker won the race, or an expired
    /// entry), it is replaced only when expired. Returns how many entries were evicted.
    pub fn insert(
        &self,
        key: FlowKey,
        origin: Origin,
        generation: u64,
        state: State,
        now: Instant,
    ) -> Result<usize, ConntrackFull> {
        self.pin().insert(key, origin, generation, state, now)
    }

    fn insert_in(
        &self,
        m: &PinnedMap<'_>,
        key: FlowKey,
        origin: Origin,
        generation: u64,
        state: State,
        now: Instant,
    ) -> Result<usize, ConntrackFull> {
        let t = self.nanos(now);
        let make = || Entry {
            origin,
            revoked: AtomicBool::new(false),
            generation: AtomicU64::new(generation),
            state: AtomicU8::new(state as u8),
            expires: AtomicU64::new(t.saturating_add(state.timeout().as_nanos() as u64)),
        };
        if let Some(old) = m.get(&key) {
            if old.expires() > t {
                return Ok(0);
            }
            if m.remove_if(&key, |_, v| v.expires() <= t)
                .ok()
                .flatten()
                .is_some()
            {
                self.count.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let mut evicted = 0;
        loop {
            let c = self.count.load(Ordering::Relaxed);
            if c < self.capacity {
                if self
                    .count
                    .compare_exchange_weak(c, c + 1, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    break;
                }
                continue;
            }
            let since = self.full_since.load(Ordering::Relaxed);
            let recently_failed =
                since != 0 && t.saturating_sub(since - 1) < FULL_RESCAN_AFTER.as_nanos() as u64;
            if evicted > 0 || recently_failed || self.capacity == 0 {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ConntrackFull);
            }
            evicted = self.evict(m, t);
            if evicted == 0 {
                self.full_since.store(t + 1, Ordering::Relaxed);
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(ConntrackFull);
            }
        }
        if m.try_insert(key, make()).is_err() {
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
        Ok(evicted)
    }

    /// Removes up to a batch of expired or not-established entries.
    fn evict(&self, m: &PinnedMap<'_>, t: u64) -> usize {
        let evictable =
            |e: &Entry| e.expires() <= t || e.is_revoked() || !e.state().is_established();
        let victims: Vec<FlowKey> = m
            .iter()
            .filter(|(_, e)| evictable(e))
            .map(|(k, _)| *k)
            .take(EVICT_BATCH)
            .collect();
        let mut n = 0;
        for k in victims {
            if m.remove_if(&k, |_, e| evictable(e))
                .ok()
                .flatten()
                .is_some()
            {
                self.count.fetch_sub(1, Ordering::Relaxed);
                n += 1;
            }
        }
        self.evictions.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    pub fn remove(&self, key: &FlowKey) -> bool {
        self.pin().remove(key)
    }

    fn remove_in(&self, m: &PinnedMap<'_>, key: &FlowKey) -> bool {
        if m.remove(key).is_some() {
            self.count.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Removes every entry of one port's zone; returns how many. Call when a port goes away, so
    /// a container that later reuses its IP (and port id) inherits none of its flows.
    pub fn purge_zone(&self, zone: u32) -> usize {
        let m = self.map.pin();
        let keys: Vec<FlowKey> = m
            .iter()
            .filter(|(k, _)| k.zone == zone)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter(|k| self.remove_in(&m, k)).count()
    }

    /// Removes every entry whose source or destination is `ip`; returns how many. Call when a
    /// container comes or goes, so stale flows of an earlier holder of the address do not
    /// carry over.
    pub fn remove_ip(&self, ip: Ipv4Addr) -> usize {
        let m = self.map.pin();
        let keys: Vec<FlowKey> = m
            .iter()
            .filter(|(k, _)| k.src == ip || k.dst == ip)
            .map(|(k, _)| *k)
            .collect();
        keys.iter().filter(|k| self.remove_in(&m, k)).count()
    }

    /// Removes expired entries; returns how many. Call periodically.
    pub fn expire(&self, now: Instant) -> usize {
        let t = self.nanos(now);
        let m = self.map.pin();
        let dead: Vec<FlowKey> = m
            .iter()
            .filter(|(_, e)| e.expires() <= t)
            .map(|(k, _)| *k)
            .collect();
        let mut n = 0;
        for k in dead {
            if m.remove_if(&k, |_, e| e.expires() <= t)
                .ok()
                .flatten()
                .is_some()
            {
                self.count.fetch_sub(1, Ordering::Relaxed);
                n += 1;
            }
        }
        self.full_since.store(0, Ordering::Relaxed);
        n
    }
}

type PinnedMap<'a> =
    papaya::HashMapRef<'a, FlowKey, Entry, std::hash::RandomState, papaya::LocalGuard<'a>>;

/// The connection table entered once: lookups, inserts and removals without re-entering.
pub struct Pinned<'a> {
    ct: &'a Conntrack,
    map: PinnedMap<'a>,
}

impl Pinned<'_> {
    pub fn conntrack(&self) -> &Conntrack {
        self.ct
    }

    /// Looks up a live (not expired) entry and runs `f` on it.
    pub fn with<R>(&self, key: &FlowKey, now: Instant, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let t = self.ct.nanos(now);
        let e = self.map.get(key)?;
        if e.expires() <= t {
            return None;
        }
        Some(f(e))
    }

    pub fn observe(&self, entry: &Entry, dir: Dir, tcp_flags: u8, now: Instant) {
        self.ct.observe(entry, dir, tcp_flags, now)
    }

    pub fn revoke(&self, entry: &Entry, now: Instant) {
        self.ct.revoke(entry, now)
    }

    pub fn reinstate(&self, entry: &Entry) {
        self.ct.reinstate(entry)
    }

    /// See [`Conntrack::insert`].
    pub fn insert(
        &self,
        key: FlowKey,
        origin: Origin,
        generation: u64,
        state: State,
        now: Instant,
    ) -> Result<usize, ConntrackFull> {
        self.ct
            .insert_in(&self.map, key, origin, generation, state, now)
    }

    pub fn remove(&self, key: &FlowKey) -> bool {
        self.ct.remove_in(&self.map, key)
    }

    pub fn len(&self) -> usize {
        self.ct.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ct.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::PROTO_UDP;

    fn key(sport: u16) -> FlowKey {
        FlowKey {
            zone: 1,
            proto: PROTO_UDP,
            src: Ipv4Addr::new(10, 0, 0, 1),
            dst: Ipv4Addr::new(10, 0, 0, 2),
            sport,
            dport: 53,
        }
    }

    #[test]
    fn insert_lookup_expire() {
        let ct = Conntrack::new(10);
        let t0 = Instant::now();
        ct.insert(key(1), Origin::Egress, 1, State::UdpUnreplied, t0)
            .unwrap();
        assert_eq!(ct.len(), 1);
        assert_eq!(ct.with(&key(1), t0, |e| e.origin()), Some(Origin::Egress));
        assert!(ct.with(&key(2), t0, |_| ()).is_none());
        // Unreplied UDP lives 30 s.
        assert!(ct
            .with(&key(1), t0 + Duration::from_secs(29), |_| ())
            .is_some());
        assert!(ct
            .with(&key(1), t0 + Duration::from_secs(31), |_| ())
            .is_none());
        // A reply makes it 180 s.
        ct.with(&key(1), t0 + Duration::from_secs(10), |e| {
            ct.observe(e, Dir::Reply, 0, t0 + Duration::from_secs(10))
        });
        assert!(ct
            .with(&key(1), t0 + Duration::from_secs(189), |_| ())
            .is_some());
        assert_eq!(ct.expire(t0 + Duration::from_secs(100)), 0);
        assert_eq!(ct.expire(t0 + Duration::from_secs(191)), 1);
        assert_eq!(ct.len(), 0);
    }

    #[test]
    fn full_evicts_unestablished_then_refuses() {
        let ct = Conntrack::new(4);
        let t0 = Instant::now();
        for p in 0..4 {
            ct.insert(key(p), Origin::Egress, 1, State::UdpReplied, t0)
                .unwrap();
        }
        // All established: refused, and counted.
        assert_eq!(
            ct.insert(key(9), Origin::Egress, 1, State::UdpUnreplied, t0),
            Err(ConntrackFull)
        );
        assert_eq!(ct.refused(), 1);
        assert_eq!(ct.len(), 4);
        // After expiry runs, a scan may evict; still nothing evictable at t0+1.
        ct.expire(t0);
        assert_eq!(
            ct.insert(key(9), Origin::Egress, 1, State::UdpUnreplied, t0),
            Err(ConntrackFull)
        );
        // Once they are expired (180 s), a new flow evicts them.
        let later = t0 + Duration::from_secs(200);
        assert!(
            ct.insert(key(9), Origin::Egress, 1, State::UdpUnreplied, later)
                .unwrap()
                >= 1
        );
        assert!(ct.len() <= 4);
        // Unestablished entries are evicted at once.
        let ct = Conntrack::new(2);
        ct.insert(key(1), Origin::Egress, 1, State::UdpUnreplied, t0)
            .unwrap();
        ct.insert(key(2), Origin::Egress, 1, State::UdpUnreplied, t0)
            .unwrap();
        assert!(
            ct.insert(key(3), Origin::Egress, 1, State::UdpUnreplied, t0)
                .unwrap()
                >= 1
        );
        assert!(ct.len() <= 2 && ct.with(&key(3), t0, |_| ()).is_some());
        assert!(ct.evictions() >= 1);
        let zero = Conntrack::new(0);
        assert_eq!(
            zero.insert(key(1), Origin::Egress, 1, State::UdpUnreplied, t0),
            Err(ConntrackFull)
        );
    }

    #[test]
    fn purge_zone() {
        let ct = Conntrack::new(10);
        let t0 = Instant::now();
        ct.insert(key(1), Origin::Egress, 1, State::UdpReplied, t0)
            .unwrap();
        ct.insert(
            FlowKey { zone: 2, ..key(1) },
            Origin::Egress,
            1,
            State::UdpReplied,
            t0,
        )
        .unwrap();
        assert_eq!(ct.purge_zone(1), 1);
        assert_eq!(ct.len(), 1);
        assert!(ct
            .with(&FlowKey { zone: 2, ..key(1) }, t0, |_| ())
            .is_some());
    }

    #[test]
    fn concurrent_inserts_never_exceed_capacity() {
        let ct = std::sync::Arc::new(Conntrack::new(100));
        let t0 = Instant::now();
        let hs: Vec<_> = (0..4)
            .map(|w| {
                let ct = ct.clone();
                std::thread::spawn(move || {
                    for p in 0..1000u16 {
                        let mut k = key(p);
                        k.zone = w;
                        let _ = ct.insert(k, Origin::Egress, 1, State::UdpReplied, t0);
                        assert!(ct.len() <= 100);
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        assert_eq!(ct.len(), 100);
        assert_eq!(ct.map.pin().len(), 100);
    }
}
