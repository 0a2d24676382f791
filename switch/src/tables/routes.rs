//! Routes by destination IP: this cell's subnet, remote cells' subnets, the rest of the overlay.

use std::net::Ipv4Addr;

use super::{contains, mask, network, CellConfig, FxHashMap, Prefix, RemoteCell, TableError};

/// Where a destination IP lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// In this cell's subnet (a port may or may not have it).
    Local,
    /// This cell's VTEP address (the subnet's `.0`).
    Vtep,
    /// In a remote cell's subnet.
    Remote(&'a RemoteCell),
    /// Inside the overlay, but no cell holds a lease for it.
    OverlayNoLease,
    /// Outside the overlay.
    Outside,
}

#[derive(Debug, Default)]
pub struct RouteTable {
    remotes: Vec<RemoteCell>,
    /// (network, prefix length) -> index in `remotes`.
    by_subnet: FxHashMap<(u32, u8), usize>,
    /// Distinct prefix lengths in use, longest first (normally one).
    prefix_lens: Vec<u8>,
    /// Underlay IP -> remote cells there (contiguous, sorted by underlay IP).
    by_underlay: FxHashMap<Ipv4Addr, (usize, usize)>,
}

impl RouteTable {
    pub fn new(config: &CellConfig, remotes: Vec<RemoteCell>) -> Result<RouteTable, TableError> {
        let mut t = RouteTable::default();
        let mut remotes: Vec<RemoteCell> = remotes
            .into_iter()
            .map(|mut r| {
                r.subnet.0 = network((r.subnet.0, r.subnet.1.min(32)));
                r
            })
            .collect();
        remotes.sort_by_key(|r| (*r.underlay.ip(), u32::from(r.subnet.0), r.subnet.1));
        for r in &remotes {
            let s: Prefix = r.subnet;
            if s.1 > 32 {
                return Err(TableError::InvalidPrefix {
                    what: "remote cell subnet",
                    prefix: s.1,
                });
            }
            let overlaps_local = contains(config.subnet, s.0) || contains(s, config.subnet.0);
            if s.1 < config.overlay_network.1
                || !contains(config.overlay_network, s.0)
                || overlaps_local
            {
                return Err(TableError::InvalidRemoteSubnet(s));
            }
            let idx = t.remotes.len();
            if t.by_subnet.insert((u32::from(s.0), s.1), idx).is_some() {
                return Err(TableError::DuplicateRemote(s));
            }
            if !t.prefix_lens.contains(&s.1) {
                t.prefix_lens.push(s.1);
            }
            let e = t.by_underlay.entry(*r.underlay.ip()).or_insert((idx, idx));
            e.1 = idx + 1;
            t.remotes.push(*r);
        }
        t.prefix_lens.sort_unstable_by(|a, b| b.cmp(a));
        Ok(t)
    }

    pub fn lookup(&self, config: &CellConfig, dst: Ipv4Addr) -> Route<'_> {
        if contains(config.subnet, dst) {
            return if dst == config.vtep_ip() {
                Route::Vtep
            } else {
                Route::Local
            };
        }
        if !contains(config.overlay_network, dst) {
            return Route::Outside;
        }
        let d = u32::from(dst);
        for &len in &self.prefix_lens {
            if let Some(&i) = self.by_subnet.get(&(d & mask(len), len)) {
                if let Some(r) = self.remotes.get(i) {
                    return Route::Remote(r);
                }
            }
        }
        Route::OverlayNoLease
    }

    pub fn by_underlay(&self, ip: Ipv4Addr) -> &[RemoteCell] {
        match self.by_underlay.get(&ip) {
            Some(&(a, b)) => self.remotes.get(a..b).unwrap_or(&[]),
            None => &[],
        }
    }

    pub fn len(&self) -> usize {
        self.remotes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.remotes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddrV4;

    fn cfg() -> CellConfig {
        CellConfig {
            underlay_ip: Ipv4Addr::new(192, 168, 0, 1),
            vtep_port: 4789,
            vni: 1,
            overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
            subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
        }
    }

    fn remote(third: u8, host: u8) -> RemoteCell {
        RemoteCell {
            subnet: (Ipv4Addr::new(10, 255, third, 0), 24),
            underlay: SocketAddrV4::new(Ipv4Addr::new(192, 168, 0, host), 4789),
        }
    }

    #[test]
    fn lookups() {
        let c = cfg();
        let t = RouteTable::new(&c, vec![remote(2, 2), remote(3, 3), remote(4, 3)]).unwrap();
        assert_eq!(t.lookup(&c, Ipv4Addr::new(10, 255, 1, 5)), Route::Local);
        assert_eq!(t.lookup(&c, Ipv4Addr::new(10, 255, 1, 0)), Route::Vtep);
        assert_eq!(
            t.lookup(&c, Ipv4Addr::new(10, 255, 2, 9)),
            Route::Remote(&remote(2, 2))
        );
        assert_eq!(
            t.lookup(&c, Ipv4Addr::new(10, 255, 4, 9)),
            Route::Remote(&remote(4, 3))
        );
        assert_eq!(
            t.lookup(&c, Ipv4Addr::new(10, 255, 9, 9)),
            Route::OverlayNoLease
        );
        assert_eq!(t.lookup(&c, Ipv4Addr::new(8, 8, 8, 8)), Route::Outside);
        assert_eq!(t.by_underlay(Ipv4Addr::new(192, 168, 0, 3)).len(), 2);
        assert_eq!(
            t.by_underlay(Ipv4Addr::new(192, 168, 0, 2)),
            &[remote(2, 2)]
        );
        assert!(t.by_underlay(Ipv4Addr::new(192, 168, 0, 9)).is_empty());
    }

    #[test]
    fn rejects() {
        let c = cfg();
        assert!(matches!(
            RouteTable::new(&c, vec![remote(1, 2)]),
            Err(TableError::InvalidRemoteSubnet(_))
        ));
        assert!(matches!(
            RouteTable::new(&c, vec![remote(2, 2), remote(2, 3)]),
            Err(TableError::DuplicateRemote(_))
        ));
        let mut outside = remote(2, 2);
        outside.subnet.0 = Ipv4Addr::new(10, 1, 0, 0);
        assert!(matches!(
            RouteTable::new(&c, vec![outside]),
            Err(TableError::InvalidRemoteSubnet(_))
        ));
    }
}
