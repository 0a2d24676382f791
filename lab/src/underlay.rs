//! The lab's underlay between cells: real UDP sockets on loopback, or queues in memory.

use std::collections::VecDeque;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};

/// Which underlay a lab runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnderlayKind {
    /// One UDP socket per cell on 127.0.1.x: the kernel carries every VXLAN datagram.
    Loopback,
    /// Queues in memory and a virtual clock: runs are deterministic for a given seed.
    Memory,
}

impl std::str::FromStr for UnderlayKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "loopback" => Ok(UnderlayKind::Loopback),
            "memory" => Ok(UnderlayKind::Memory),
            o => Err(format!("underlay {o:?} is not one of loopback, memory")),
        }
    }
}

impl std::fmt::Display for UnderlayKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UnderlayKind::Loopback => "loopback",
            UnderlayKind::Memory => "memory",
        })
    }
}

/// The underlay address of cell `i` (127.0.1.1 and up; 127.0.0.0/8 is loopback on Linux).
pub fn cell_address(i: usize) -> Ipv4Addr {
    let n = i as u32 + 1;
    Ipv4Addr::new(127, 0, 1 + (n >> 8) as u8, (n & 0xff) as u8)
}

pub enum Underlay {
    Memory {
        /// Datagrams waiting at each cell: (source, payload).
        queues: Vec<VecDeque<(SocketAddrV4, Vec<u8>)>>,
        addrs: Vec<SocketAddrV4>,
    },
    Loopback {
        sockets: Vec<UdpSocket>,
        addrs: Vec<SocketAddrV4>,
        /// Datagrams the kernel refused (a full socket buffer): lost, as on a real network.
        lost: u64,
    },
}

impl Underlay {
    pub fn new(kind: UnderlayKind, cells: usize, port: u16) -> io::Result<Underlay> {
        let addrs: Vec<SocketAddrV4> = (0..cells)
            .map(|i| SocketAddrV4::new(cell_address(i), port))
            .collect();
        Ok(match kind {
            UnderlayKind::Memory => Underlay::Memory {
                queues: vec![VecDeque::new(); cells],
                addrs,
            },
            UnderlayKind::Loopback => {
                let mut sockets = Vec::with_capacity(cells);
                let mut bound = Vec::with_capacity(cells);
                for a in &addrs {
                    // Port 0: the kernel picks a free port, so several labs can run at once.
                    let s = UdpSocket::bind(SocketAddrV4::new(*a.ip(), 0)).map_err(|e| {
                        io::Error::new(
                            e.kind(),
                            format!("binding the lab underlay on {}: {e}", a.ip()),
                        )
                    })?;
                    s.set_nonblocking(true)?;
                    let SocketAddr::V4(local) = s.local_addr()? else {
                        unreachable!("bound to an IPv4 address")
                    };
                    bound.push(local);
                    sockets.push(s);
                }
                Underlay::Loopback {
                    sockets,
                    addrs: bound,
                    lost: 0,
                }
            }
        })
    }

    /// The underlay address (VTEP) of cell `i`.
    pub fn addr(&self, i: usize) -> SocketAddrV4 {
        match self {
            Underlay::Memory { addrs, .. } | Underlay::Loopback { addrs, .. } => addrs[i],
        }
    }

    /// Sends `payload` from cell `from` to `to`; false if no cell is there.
    pub fn send(&mut self, from: usize, to: SocketAddrV4, payload: &[u8]) -> bool {
        match self {
            Underlay::Memory { queues, addrs } => match addrs.iter().position(|a| *a == to) {
                Some(dst) => {
                    queues[dst].push_back((addrs[from], payload.to_vec()));
                    true
                }
                None => false,
            },
            Underlay::Loopback { sockets, lost, .. } => {
                if sockets[from].send_to(payload, to).is_err() {
                    *lost += 1;
                }
                true
            }
        }
    }

    /// The next datagram that arrived at cell `i`.
    pub fn recv(&mut self, i: usize, buf: &mut Vec<u8>) -> Option<SocketAddrV4> {
        match self {
            Underlay::Memory { queues, .. } => {
                let (src, p) = queues[i].pop_front()?;
                *buf = p;
                Some(src)
            }
            Underlay::Loopback { sockets, .. } => {
                buf.resize(65536, 0);
                match sockets[i].recv_from(buf) {
                    Ok((n, SocketAddr::V4(src))) => {
                        buf.truncate(n);
                        Some(src)
                    }
                    _ => None,
                }
            }
        }
    }

    /// Datagrams the loopback underlay lost.
    pub fn lost(&self) -> u64 {
        match self {
            Underlay::Memory { .. } => 0,
            Underlay::Loopback { lost, .. } => *lost,
        }
    }
}
