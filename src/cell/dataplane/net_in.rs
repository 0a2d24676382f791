//! Net-in: the host ports the cell listens on and the container address each one forwards to
//! (CF's DNAT from a host port in 61000-65535, done here through the local stack). The control
//! side says which mappings exist ([`super::DataplaneHandle::set_net_in`]); the stack thread owns
//! the listeners.

use std::net::Ipv4Addr;

/// The transport a mapping forwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NetInProtocol {
    Tcp,
    Udp,
}

/// One mapping: `--net-in-address`:`host_port` forwards to `container_ip`:`container_port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NetInRule {
    pub protocol: NetInProtocol,
    pub host_port: u16,
    pub container_ip: Ipv4Addr,
    pub container_port: u16,
}
