//! A UDP datagram from the underlay: the first byte picks the source (the three known VTEPs,
//! this cell, a stranger; bit 7 a source port other than 4789), the rest is the VXLAN-GBP
//! header and the inner Ethernet frame.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tapestry_fuzz::Harness;

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, payload)) = data.split_first() else {
        return;
    };
    H.with_borrow_mut(|h| {
        h.reset(64);
        h.from_underlay(sel, payload);
        h.finish();
    });
});
