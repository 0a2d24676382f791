//! The smoltcp device of the local stack: two in-memory queues. Packets from containers wait in
//! `rx` until [`super::Stack::poll`] runs the interface; packets the interface sends are
//! written into pooled buffers at [`super::frame::IP_AT`], leaving room for the Ethernet and
//! virtio-net headers, and wait in `tx` until the stack hands them to its caller.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::frame::IP_AT;

/// The device MTU: the largest IPv4 packet. TCP super-frames from a TAP (TSO) go to the
/// stack whole, and the stack's segments to a container may be as large (they are split by
/// the kernel or [`crate::offload`] on the way, at the container's MSS).
pub const MTU: usize = 65535;

#[derive(Debug, Default)]
pub struct Pipe {
    pub rx: VecDeque<Vec<u8>>,
    pub tx: VecDeque<Vec<u8>>,
    pub pool: Vec<Vec<u8>>,
}

/// Buffers kept for reuse at most (each holds up to a 64 KiB frame).
const POOL_MAX: usize = 256;

impl Pipe {
    pub fn buffer(&mut self) -> Vec<u8> {
        self.pool.pop().unwrap_or_default()
    }

    pub fn recycle(&mut self, mut b: Vec<u8>) {
        if self.pool.len() < POOL_MAX {
            b.clear();
            self.pool.push(b);
        }
    }
}

pub struct Rx(Vec<u8>);
pub struct Tx<'a>(&'a mut Pipe);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = self.0.buffer();
        b.clear();
        b.resize(IP_AT + len, 0);
        let r = f(&mut b[IP_AT..]);
        self.0.tx.push_back(b);
        r
    }
}

impl phy::Device for Pipe {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<Tx<'_>> {
        Some(Tx(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        // The containers' TCP checksums are partial (offloaded) on a TAP and are not checked
        // here, as the kernel does not check them on a local delivery either; on the way out
        // they are left to the kernel (NEEDS_CSUM) or completed by crate::offload.
        let mut ck = ChecksumCapabilities::ignored();
        ck.ipv4 = Checksum::Both;
        caps.checksum = ck;
        caps
    }
}
