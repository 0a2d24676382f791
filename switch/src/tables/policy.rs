//! Policy index: (source tag, destination tag, protocol) -> merged, sorted port ranges.
//! A lookup is one hash probe plus a binary search over that key's ranges, so its cost does not
//! grow with the number of policies. Up to [`INLINE`] ranges (nearly every key: one app pair
//! rarely has more) live in the map entry itself, so a lookup in a table far larger than the CPU
//! caches costs one cache miss for the entry, not a second one for a separately allocated list.

use super::{FxHashMap, PolicyRule, Proto, TableError};

/// (source tag, destination tag, protocol).
type PolicyKey = (u16, u16, Proto);
/// Ranges kept in the entry itself.
pub const INLINE: usize = 3;

/// A key's sorted, merged, inclusive port ranges.
#[derive(Debug, Clone, Copy)]
enum Ranges {
    Inline {
        n: u8,
        r: [(u16, u16); INLINE],
    },
    /// `spill[at..at + len]`.
    Spilled {
        at: u32,
        len: u32,
    },
}

#[derive(Debug, Default)]
pub struct PolicyTable {
    index: FxHashMap<PolicyKey, Ranges>,
    /// Ranges of keys with more than [`INLINE`], back to back.
    spill: Vec<(u16, u16)>,
    rules: usize,
}

impl PolicyTable {
    pub fn new(rules: &[PolicyRule]) -> Result<PolicyTable, TableError> {
        let mut grouped: FxHashMap<PolicyKey, Vec<(u16, u16)>> = FxHashMap::default();
        for r in rules {
            if r.start == 0 || r.start > r.end {
                return Err(TableError::InvalidPortRange {
                    src_tag: r.src_tag,
                    dst_tag: r.dst_tag,
                    start: r.start,
                    end: r.end,
                });
            }
            grouped
                .entry((r.src_tag, r.dst_tag, r.proto))
                .or_default()
                .push((r.start, r.end));
        }
        let mut spill = Vec::new();
        let index = grouped
            .into_iter()
            .map(|(k, v)| {
                let v = merge(v);
                let ranges = if v.len() <= INLINE {
                    let mut r = [(0, 0); INLINE];
                    r[..v.len()].copy_from_slice(&v);
                    Ranges::Inline {
                        n: v.len() as u8,
                        r,
                    }
                } else {
                    let at = spill.len() as u32;
                    spill.extend_from_slice(&v);
                    Ranges::Spilled {
                        at,
                        len: v.len() as u32,
                    }
                };
                (k, ranges)
            })
            .collect();
        Ok(PolicyTable {
            index,
            spill,
            rules: rules.len(),
        })
    }

    /// Default deny: true only if a rule covers `port`. Tag 0 (no tag) never matches.
    pub fn allows(&self, src_tag: u16, dst_tag: u16, proto: Proto, port: u16) -> bool {
        self.matching(src_tag, dst_tag, proto, port).is_some()
    }

    /// The merged port range (inclusive) of the rules for (`src_tag`, `dst_tag`, `proto`) that
    /// covers `port`, if one does: what admitted a flow, for `tapestry trace`.
    pub fn matching(
        &self,
        src_tag: u16,
        dst_tag: u16,
        proto: Proto,
        port: u16,
    ) -> Option<(u16, u16)> {
        if src_tag == 0 || dst_tag == 0 {
            return None;
        }
        let ranges = match self.index.get(&(src_tag, dst_tag, proto))? {
            Ranges::Inline { n, r } => &r[..*n as usize],
            &Ranges::Spilled { at, len } => &self.spill[at as usize..at as usize + len as usize],
        };
        let i = ranges.partition_point(|&(start, _)| start <= port);
        (i > 0 && ranges[i - 1].1 >= port).then(|| ranges[i - 1])
    }

    /// The number of rules the table was built from.
    pub fn len(&self) -> usize {
        self.rules
    }

    pub fn is_empty(&self) -> bool {
        self.rules == 0
    }
}

/// Sorts and merges overlapping or adjacent ranges.
fn merge(mut v: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    v.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(last) if s as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn rule(src: u16, dst: u16, proto: Proto, start: u16, end: u16) -> PolicyRule {
        PolicyRule {
            src_tag: src,
            dst_tag: dst,
            proto,
            start,
            end,
        }
    }

    #[test]
    fn lookups() {
        let t = PolicyTable::new(&[
            rule(1, 2, Proto::Tcp, 8080, 8080),
            rule(1, 2, Proto::Tcp, 7000, 7010),
            rule(1, 2, Proto::Tcp, 7005, 7020),
            rule(1, 2, Proto::Udp, 53, 53),
            rule(0, 2, Proto::Tcp, 1, 65535),
        ])
        .unwrap();
        assert!(t.allows(1, 2, Proto::Tcp, 8080));
        assert!(!t.allows(1, 2, Proto::Tcp, 8081));
        assert!(t.allows(1, 2, Proto::Tcp, 7000) && t.allows(1, 2, Proto::Tcp, 7020));
        assert!(!t.allows(1, 2, Proto::Tcp, 6999) && !t.allows(1, 2, Proto::Tcp, 7021));
        assert!(!t.allows(2, 1, Proto::Tcp, 8080), "policies are one-way");
        assert!(!t.allows(1, 2, Proto::Udp, 8080) && t.allows(1, 2, Proto::Udp, 53));
        assert!(!t.allows(0, 2, Proto::Tcp, 80), "tag 0 never matches");
        assert_eq!(t.len(), 5);
        assert!(matches!(
            PolicyTable::new(&[rule(1, 2, Proto::Tcp, 0, 1)]),
            Err(TableError::InvalidPortRange { .. })
        ));
        assert!(matches!(
            PolicyTable::new(&[rule(1, 2, Proto::Tcp, 9, 8)]),
            Err(TableError::InvalidPortRange { .. })
        ));
    }

    #[test]
    fn spilled_keys() {
        let rules: Vec<PolicyRule> = (0..10)
            .map(|i| rule(5, 6, Proto::Udp, 1000 + i * 10, 1000 + i * 10 + 1))
            .chain([rule(5, 7, Proto::Udp, 1, 1)])
            .collect();
        let t = PolicyTable::new(&rules).unwrap();
        assert_eq!(t.spill.len(), 10);
        for i in 0..10 {
            assert!(t.allows(5, 6, Proto::Udp, 1000 + i * 10 + 1));
            assert!(!t.allows(5, 6, Proto::Udp, 1000 + i * 10 + 2));
        }
        assert!(t.allows(5, 7, Proto::Udp, 1) && !t.allows(5, 7, Proto::Udp, 2));
    }

    #[test]
    fn merging() {
        assert_eq!(
            merge(vec![(5, 6), (1, 2), (3, 4), (10, 12), (11, 11)]),
            vec![(1, 6), (10, 12)]
        );
        assert_eq!(merge(vec![(1, 65535), (65535, 65535)]), vec![(1, 65535)]);
    }

    proptest! {
        #[test]
        fn same_answer_as_linear_scan(
            ranges in proptest::collection::vec((1u16..200, 0u16..20, 3u16..6), 0..24),
            port in 0u16..260,
        ) {
            // Several keys (destination tags 3..6), some with more ranges than fit inline.
            let rules: Vec<PolicyRule> = ranges.iter().map(|&(s, l, d)| rule(3, d, Proto::Tcp, s, s.saturating_add(l))).collect();
            let t = PolicyTable::new(&rules).unwrap();
            for d in 3..6 {
                let linear = rules.iter().any(|r| r.dst_tag == d && r.start <= port && port <= r.end);
                prop_assert_eq!(t.allows(3, d, Proto::Tcp, port), linear);
            }
        }
    }
}
