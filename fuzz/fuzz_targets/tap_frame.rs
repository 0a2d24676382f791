//! A frame read from a container's TAP (no virtio-net header): the first byte picks the port
//! (four real ones, two unknown), the rest is the Ethernet frame.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tapestry_fuzz::Harness;

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, frame)) = data.split_first() else {
        return;
    };
    H.with_borrow_mut(|h| {
        h.reset(64);
        h.from_port(sel, frame);
        h.finish();
    });
});
