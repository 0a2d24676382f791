//! Per-flow state for connection tracking: TCP states with their timeouts, UDP replied or not.

use std::time::Duration;

use crate::wire::tcp;

pub const TCP_SYN_SENT_TIMEOUT: Duration = Duration::from_secs(120);
pub const TCP_ESTABLISHED_TIMEOUT: Duration = Duration::from_secs(432_000);
pub const TCP_FIN_TIMEOUT: Duration = Duration::from_secs(120);
pub const TCP_CLOSE_TIMEOUT: Duration = Duration::from_secs(10);
pub const UDP_UNREPLIED_TIMEOUT: Duration = Duration::from_secs(30);
pub const UDP_REPLIED_TIMEOUT: Duration = Duration::from_secs(180);

/// Direction of a packet relative to the entry's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    Original,
    Reply,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    TcpSynSent = 1,
    TcpSynRecv = 2,
    TcpEstablished = 3,
    TcpFinWait = 4,
    TcpClose = 5,
    UdpUnreplied = 6,
    UdpReplied = 7,
    Other = 8,
}

impl State {
    pub(crate) fn from_u8(v: u8) -> State {
        match v {
            1 => State::TcpSynSent,
            2 => State::TcpSynRecv,
            3 => State::TcpEstablished,
            4 => State::TcpFinWait,
            5 => State::TcpClose,
            6 => State::UdpUnreplied,
            7 => State::UdpReplied,
            _ => State::Other,
        }
    }

    pub fn timeout(self) -> Duration {
        match self {
            State::TcpSynSent | State::TcpSynRecv => TCP_SYN_SENT_TIMEOUT,
            State::TcpEstablished => TCP_ESTABLISHED_TIMEOUT,
            State::TcpFinWait => TCP_FIN_TIMEOUT,
            State::TcpClose => TCP_CLOSE_TIMEOUT,
            State::UdpUnreplied | State::Other => UDP_UNREPLIED_TIMEOUT,
            State::UdpReplied => UDP_REPLIED_TIMEOUT,
        }
    }

    /// Established flows are kept when the table is full; others may be evicted.
    pub fn is_established(self) -> bool {
        matches!(self, State::TcpEstablished | State::UdpReplied)
    }

    /// The state a new entry starts in, given its first packet.
    pub fn initial(proto: u8, tcp_flags: u8) -> State {
        match proto {
            crate::wire::ipv4::PROTO_TCP => {
                if tcp_flags & tcp::RST != 0 {
                    State::TcpClose
                } else if tcp_flags & tcp::FIN != 0 {
                    State::TcpFinWait
                } else if tcp_flags & tcp::SYN != 0 {
                    State::TcpSynSent
                } else {
                    // Picked up mid-stream (e.g. after a restart), as conntrack's loose mode.
                    State::TcpEstablished
                }
            }
            crate::wire::ipv4::PROTO_UDP => State::UdpUnreplied,
            _ => State::Other,
        }
    }

    /// The next state after a packet in `dir` with `tcp_flags` (0 for UDP).
    pub fn next(self, dir: Dir, tcp_flags: u8) -> State {
        use State::*;
        match self {
            UdpUnreplied if dir == Dir::Reply => UdpReplied,
            UdpUnreplied | UdpReplied | Other => self,
            _ if tcp_flags & tcp::RST != 0 => TcpClose,
            _ if tcp_flags & tcp::FIN != 0 => TcpFinWait,
            TcpClose | TcpFinWait
                if dir == Dir::Original && tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN =>
            {
                TcpSynSent
            }
            TcpSynSent
                if dir == Dir::Reply
                    && tcp_flags & (tcp::SYN | tcp::ACK) == tcp::SYN | tcp::ACK =>
            {
                TcpSynRecv
            }
            TcpSynRecv if dir == Dir::Original && tcp_flags & (tcp::SYN | tcp::ACK) == tcp::ACK => {
                TcpEstablished
            }
            s => s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ipv4::PROTO_TCP;

    #[test]
    fn tcp_states() {
        use State::*;
        let s = State::initial(PROTO_TCP, tcp::SYN);
        assert_eq!(s, TcpSynSent);
        let s = s.next(Dir::Reply, tcp::SYN | tcp::ACK);
        assert_eq!(s, TcpSynRecv);
        let s = s.next(Dir::Original, tcp::ACK);
        assert_eq!(s, TcpEstablished);
        assert_eq!(s.timeout(), TCP_ESTABLISHED_TIMEOUT);
        let s = s.next(Dir::Original, tcp::FIN | tcp::ACK);
        assert_eq!(s, TcpFinWait);
        assert_eq!(s.next(Dir::Reply, tcp::RST), TcpClose);
        assert_eq!(TcpClose.timeout(), TCP_CLOSE_TIMEOUT);
        assert_eq!(TcpClose.next(Dir::Original, tcp::SYN), TcpSynSent);
        assert_eq!(State::initial(PROTO_TCP, tcp::ACK), TcpEstablished);
        assert_eq!(UdpUnreplied.next(Dir::Original, 0), UdpUnreplied);
        assert_eq!(UdpUnreplied.next(Dir::Reply, 0), UdpReplied);
    }
}
