//! System calls for Tapestry: TAP devices, rtnetlink, network namespaces and UDP offloads.
//!
//! This is the only crate in the workspace that uses `unsafe`; every block carries a
//! `// SAFETY:` comment. Everything else in Tapestry calls the safe wrappers here.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod error;
pub mod netlink;
pub mod netns;
pub mod tap;
pub mod udp;
pub mod vnet;

pub use error::{Error, Result};
