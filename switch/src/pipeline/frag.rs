//! A small, bounded, per-worker table of admitted first fragments, so that the later fragments
//! of the same datagram (which carry no ports) can be admitted too.

use std::hash::{Hash, Hasher};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::tables::FxHasher;

/// How long after its first fragment a later fragment is still admitted (Linux ipfrag_time).
pub const FRAGMENT_WINDOW: Duration = Duration::from_secs(30);
const SLOTS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub zone: u32,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ident: u16,
}

#[derive(Debug)]
pub struct FragTable {
    slots: Box<[Option<(FragKey, Instant)>]>,
}

impl Default for FragTable {
    fn default() -> Self {
        FragTable {
            slots: vec![None; SLOTS].into_boxed_slice(),
        }
    }
}

impl FragTable {
    fn slot(key: &FragKey) -> usize {
        let mut h = FxHasher::default();
        key.hash(&mut h);
        (h.finish() >> 32) as usize % SLOTS
    }

    /// Remembers an admitted first fragment (overwrites whatever shared the slot).
    pub fn record(&mut self, key: FragKey, now: Instant) {
        let i = Self::slot(&key);
        if let Some(s) = self.slots.get_mut(i) {
            *s = Some((key, now));
        }
    }

    /// True if the first fragment of `key` was admitted within the window.
    pub fn admitted(&self, key: &FragKey, now: Instant) -> bool {
        match self.slots.get(Self::slot(key)) {
            Some(Some((k, t))) => k == key && now.saturating_duration_since(*t) < FRAGMENT_WINDOW,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window() {
        let mut t = FragTable::default();
        let k = FragKey {
            zone: 1,
            src: Ipv4Addr::new(1, 1, 1, 1),
            dst: Ipv4Addr::new(2, 2, 2, 2),
            proto: 17,
            ident: 7,
        };
        let now = Instant::now();
        assert!(!t.admitted(&k, now));
        t.record(k, now);
        assert!(t.admitted(&k, now + Duration::from_secs(1)));
        assert!(!t.admitted(&k, now + FRAGMENT_WINDOW));
        assert!(!t.admitted(&FragKey { ident: 8, ..k }, now));
    }
}
