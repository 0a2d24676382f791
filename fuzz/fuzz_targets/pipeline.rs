//! The pipeline end to end: a sequence of frames from ports and the underlay, and policy
//! changes, against fixed tables. The harness checks after every verdict that nothing denied is
//! forwarded (see `tapestry_fuzz`), so flows, replies, fragments, ICMP errors and revocations are
//! all followed across packets.
//!
//! Input: records of `[op, sel, flags, len_hi, len_lo, bytes...]` (a short last record takes
//! what is left). `op % 4`: 0, 1 a frame from port `sel`; 2 a VXLAN payload from underlay source
//! `sel`; 3 the policy set `sel % 3`. `flags & 1`: recompute the IPv4 header checksum of the
//! (inner) frame first, so mutations get past the checksum.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tapestry_fuzz::{fix_ipv4_checksum, Harness};

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    H.with_borrow_mut(|h| {
        h.reset(4096);
        let mut rest = data;
        let mut frame = Vec::new();
        while rest.len() >= 5 {
            let (op, sel, flags) = (rest[0], rest[1], rest[2]);
            let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
            let body = &rest[5..];
            let n = len.min(body.len());
            frame.clear();
            frame.extend_from_slice(&body[..n]);
            rest = &body[n..];
            match op % 4 {
                0 | 1 => {
                    if flags & 1 != 0 {
                        fix_ipv4_checksum(&mut frame, 14);
                    }
                    h.from_port(sel, &frame);
                }
                2 => {
                    if flags & 1 != 0 {
                        fix_ipv4_checksum(&mut frame, 8 + 14);
                    }
                    h.from_underlay(sel, &frame);
                }
                _ => h.set_policies(sel as usize),
            }
        }
        h.finish();
    });
});
