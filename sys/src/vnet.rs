//! virtio-net header constants.
