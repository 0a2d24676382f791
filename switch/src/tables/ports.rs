//! Ports indexed by id and by IP.

use std::net::Ipv4Addr;

use super::{
    contains, gateway_mac, network, CellConfig, FxHashMap, PortConfig, PortId, TableError,
};
use crate::wire::ethernet::Mac;

/// A port as the pipeline sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port {
    pub id: PortId,
    pub mac: Mac,
    pub ip: Ipv4Addr,
    pub tag: u16,
    /// `aa:aa:<port ip>`: what the port's ARP requests are answered with.
    pub gateway_mac: Mac,
}

#[derive(Debug, Default)]
pub struct PortTable {
    ports: Vec<Port>,
    by_id: FxHashMap<u32, usize>,
    by_ip: FxHashMap<Ipv4Addr, usize>,
}

impl PortTable {
    pub fn new(config: &CellConfig, ports: Vec<PortConfig>) -> Result<PortTable, TableError> {
        let mut t = PortTable::default();
        let base = network(config.subnet);
        let bcast = Ipv4Addr::from(u32::from(base) | !super::mask(config.subnet.1));
        for p in ports {
            if !contains(config.subnet, p.ip) {
                return Err(TableError::PortOutsideSubnet {
                    port: p.id.0,
                    ip: p.ip,
                });
            }
            if config.subnet.1 < 31 && (p.ip == base || p.ip == bcast) {
                return Err(TableError::PortReservedIp {
                    port: p.id.0,
                    ip: p.ip,
                });
            }
            let idx = t.ports.len();
            if t.by_id.insert(p.id.0, idx).is_some() {
                return Err(TableError::DuplicatePortId(p.id.0));
            }
            if t.by_ip.insert(p.ip, idx).is_some() {
                return Err(TableError::DuplicatePortIp(p.ip));
            }
            t.ports.push(Port {
                id: p.id,
                mac: p.mac,
                ip: p.ip,
                tag: p.tag,
                gateway_mac: gateway_mac(p.ip),
            });
        }
        Ok(t)
    }

    pub fn by_id(&self, id: PortId) -> Option<&Port> {
        self.by_id.get(&id.0).and_then(|&i| self.ports.get(i))
    }

    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&Port> {
        self.by_ip.get(&ip).and_then(|&i| self.ports.get(i))
    }

    pub fn iter(&self) -> impl Iterator<Item = &Port> {
        self.ports.iter()
    }

    pub fn len(&self) -> usize {
        self.ports.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::container_mac;

    fn cfg() -> CellConfig {
        CellConfig {
            underlay_ip: Ipv4Addr::new(192, 168, 0, 1),
            vtep_port: 4789,
            vni: 1,
            overlay_network: (Ipv4Addr::new(10, 255, 0, 0), 16),
            subnet: (Ipv4Addr::new(10, 255, 1, 0), 24),
        }
    }

    fn port(id: u32, last: u8) -> PortConfig {
        let ip = Ipv4Addr::new(10, 255, 1, last);
        PortConfig {
            id: PortId(id),
            mac: container_mac(ip),
            ip,
            tag: 1,
        }
    }

    #[test]
    fn index_and_errors() {
        let t = PortTable::new(&cfg(), vec![port(1, 1), port(2, 2)]).unwrap();
        assert_eq!(t.by_id(PortId(2)).unwrap().ip, Ipv4Addr::new(10, 255, 1, 2));
        assert_eq!(t.by_ip(Ipv4Addr::new(10, 255, 1, 1)).unwrap().id, PortId(1));
        assert!(t.by_id(PortId(3)).is_none());
        assert_eq!(
            PortTable::new(&cfg(), vec![port(1, 1), port(1, 2)]).err(),
            Some(TableError::DuplicatePortId(1))
        );
        assert!(matches!(
            PortTable::new(&cfg(), vec![port(1, 1), port(2, 1)]),
            Err(TableError::DuplicatePortIp(_))
        ));
        assert!(matches!(
            PortTable::new(&cfg(), vec![port(1, 0)]),
            Err(TableError::PortReservedIp { .. })
        ));
        assert!(matches!(
            PortTable::new(&cfg(), vec![port(1, 255)]),
            Err(TableError::PortReservedIp { .. })
        ));
        let mut p = port(1, 1);
        p.ip = Ipv4Addr::new(10, 255, 2, 1);
        assert!(matches!(
            PortTable::new(&cfg(), vec![p]),
            Err(TableError::PortOutsideSubnet { .. })
        ));
    }
}
