//! System calls for Tapestry: TAP devices, rtnetlink, network namespaces and UDP offloads.
//!
//! This is the only crate in the workspace that uses `unsafe`; every block carries a
//! `// SAFETY:` comment. Everything else in Tapestry calls the safe wrappers here.
//!
//! - [`netns::run_in_netns`]: run a closure on a thread inside a network namespace.
//! - [`tap::Tap`]: persistent TAP devices (open, re-attach, `open_in_netns`, `open_queue`,
//!   virtio-net header, TUNSETOFFLOAD probing); [`tap::delete_in_netns`].
//! - [`netlink`]: hand-built rtnetlink requests; [`netlink::configure_container_iface`].
//! - [`udp`]: `bind`, `bind_workers` (an exclusive SO_REUSEPORT group, one socket per dataplane
//!   worker, steered by a classic BPF program on the inner flow), `send_gso` (UDP_SEGMENT),
//!   `enable_gro` / `recv_gro`, `recv_batch` / `send_batch` (recvmmsg / sendmmsg over
//!   caller-owned buffers), `probe_udp_offloads`.
//! - [`vnet`]: the virtio-net header.
//! - [`hostsock`]: the local stack's host sockets (TCP connect from the cell's address,
//!   connected UDP, ping or raw ICMP, net-in listeners).
//! - [`packet`]: AF_PACKET ports on a veth's host end (`PACKET_VNET_HDR`, fanout), for hosts
//!   where /dev/net/tun cannot be opened; [`port::PortDev`] is either kind.
//! - [`userns`]: the unprivileged sandbox (user + network + mount namespace).
//! - [`sched`]: the calling thread's nice value (`--dataplane-nice`).
//! - [`process`]: the open-files limit (`raise_nofile_limit`) and a Unix peer's credentials
//!   (`peer_cred`, SO_PEERCRED).
//!
//! Errors ([`Error`]) name the operation and the device or namespace, e.g.
//! `TUNSETIFF eth0 in /var/run/netns/x: Invalid argument (os error 22)`.
//!
//! The crate's lints (`sys/Cargo.toml`): `unsafe_code` allowed here only, `unsafe_op_in_unsafe_fn`
//! denied, `clippy::undocumented_unsafe_blocks` warned (an error under `clippy -D warnings`).

mod error;
pub mod ethtool;
pub mod hostsock;
pub mod netlink;
pub mod netns;
pub mod packet;
pub mod port;
pub mod process;
pub mod sched;
pub mod tap;
pub mod udp;
pub mod userns;
pub mod vnet;

pub use error::{Error, Result};
