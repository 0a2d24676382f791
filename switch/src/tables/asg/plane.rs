//! One protocol plane of the compiled rules: destination intervals, each cut by the second key.
use super::*;

/// One protocol plane: destination intervals, each with its key intervals and answers.
#[derive(Debug, Clone, Default)]
pub(super) struct Plane {
    /// Start of each destination interval; `starts[0] == 0`, the last runs to 255.255.255.255.
    starts: Vec<u32>,
    /// Interval `i`'s pieces are `keys[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<u32>,
    /// Start of each key piece; the first of an interval is 0.
    keys: Vec<u16>,
    /// The first rule allowing each piece, or [`NONE`].
    refs: Vec<u32>,
}

/// (dst_lo, dst_hi, key_lo, key_hi, rule ref)
pub(super) type Item = (u32, u32, u16, u16, u32);

impl Plane {
    pub(super) fn build(items: &[Item]) -> Plane {
        let mut plane = Plane {
            offsets: vec![0],
            ..Plane::default()
        };
        if items.is_empty() {
            return plane;
        }
        let mut bounds: Vec<u32> = vec![0];
        for it in items {
            bounds.push(it.0);
            if let Some(b) = it.1.checked_add(1) {
                bounds.push(b);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        // Sweep the destination bounds, keeping the items that cover the current one.
        let mut by_lo: Vec<&Item> = items.iter().collect();
        by_lo.sort_unstable_by_key(|it| it.0);
        let mut next = 0;
        let mut active: Vec<&Item> = Vec::new();
        let mut kb: Vec<u16> = Vec::new();
        let mut heap: BinaryHeap<Reverse<(u32, u16)>> = BinaryHeap::new();
        let mut pieces: Vec<(u16, u32)> = Vec::new();
        for &b in &bounds {
            active.retain(|it| it.1 >= b);
            while next < by_lo.len() && by_lo[next].0 <= b {
                active.push(by_lo[next]);
                next += 1;
            }
            // The same sweep over the key bounds, with the lowest rule on top of a heap.
            active.sort_unstable_by_key(|it| it.2);
            kb.clear();
            kb.push(0);
            for it in &active {
                kb.push(it.2);
                if let Some(k) = it.3.checked_add(1) {
                    kb.push(k);
                }
            }
            kb.sort_unstable();
            kb.dedup();
            heap.clear();
            pieces.clear();
            let mut k_next = 0;
            for &k in &kb {
                while k_next < active.len() && active[k_next].2 <= k {
                    heap.push(Reverse((active[k_next].4, active[k_next].3)));
                    k_next += 1;
                }
                while heap.peek().is_some_and(|Reverse((_, hi))| *hi < k) {
                    heap.pop();
                }
                let r = heap.peek().map_or(NONE, |Reverse((r, _))| *r);
                if pieces.last().map(|p| p.1) != Some(r) {
                    pieces.push((k, r));
                }
            }
            // Same answer as the previous destination interval: extend it.
            if let Some(last) = plane.starts.len().checked_sub(1) {
                let (a, z) = (
                    plane.offsets[last] as usize,
                    plane.offsets[last + 1] as usize,
                );
                if z - a == pieces.len()
                    && pieces
                        .iter()
                        .zip(a..z)
                        .all(|(p, i)| plane.keys[i] == p.0 && plane.refs[i] == p.1)
                {
                    continue;
                }
            }
            plane.starts.push(b);
            plane.keys.extend(pieces.iter().map(|p| p.0));
            plane.refs.extend(pieces.iter().map(|p| p.1));
            plane.offsets.push(plane.keys.len() as u32);
        }
        plane
    }

    #[inline]
    pub(super) fn lookup(&self, dst: u32, key: u16) -> u32 {
        if self.starts.is_empty() {
            return NONE;
        }
        let i = self.starts.partition_point(|&s| s <= dst) - 1;
        let (a, z) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let j = self.keys[a..z].partition_point(|&k| k <= key) - 1;
        self.refs[a + j]
    }

    pub(super) fn pieces(&self) -> usize {
        self.keys.len()
    }
}
