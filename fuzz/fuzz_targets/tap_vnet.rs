//! A frame read from a TAP opened with IFF_VNET_HDR: the first byte picks the port, the rest is
//! the 10-byte virtio-net header (any flags, GSO type, sizes, checksum offsets) and the frame.
//! The offload code the driver runs on the verdict (TSO/USO segmentation, coalescing) runs too.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use tapestry_fuzz::Harness;

thread_local! {
    static H: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, bytes)) = data.split_first() else {
        return;
    };
    H.with_borrow_mut(|h| {
        h.reset(64);
        h.from_port_vnet(sel, bytes);
        h.finish();
    });
});
