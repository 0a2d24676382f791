//! The device behind a container's port: a persistent TAP in the container's namespace, or
//! (`--port-kind packet`) a veth pair whose host end, in the cell's namespace, the dataplane
//! reads through AF_PACKET sockets. Either way the container sees an `eth0` with the same MAC,
//! MTU, address and routes, and the dataplane gets one queue per worker.

use std::sync::Arc;

use anyhow::{Context, Result};
use tapestry_switch::tables::{container_mac, gateway_mac};
use tapestry_sys::netlink::{self, IfaceConfig};
use tapestry_sys::packet::{self, PacketPort};
use tapestry_sys::port::{PortDev, PortKind};
use tapestry_sys::tap::{self, Tap, TapOptions};

use super::state::ContainerRecord;
use super::{Cell, GATEWAY};

/// TUNSETOFFLOAD sets tried in order; the first the kernel accepts is used.
const OFFLOAD_CANDIDATES: [u32; 4] = [
    tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6 | tap::TUN_F_USO4 | tap::TUN_F_USO6,
    tap::TUN_F_CSUM | tap::TUN_F_TSO4 | tap::TUN_F_TSO6,
    tap::TUN_F_CSUM | tap::TUN_F_TSO4,
    tap::TUN_F_CSUM,
];

/// The name of an attachment's veth host end in the cell's namespace: `tpv` and 12 hex digits
/// of a hash of the attachment key (handle and ifname), so a restarted cell finds it again.
pub fn veth_host_name(key: &str) -> String {
    // FNV-1a, 64 bits: stable across versions and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("tpv{:012x}", h & 0xffff_ffff_ffff)
}

impl Cell {
    /// Opens the container's TAP. With offloads on: IFF_VNET_HDR and the richest TUNSETOFFLOAD
    /// set the kernel accepts (checksum, TSO4/6 and, on kernels that have it, USO4/6), so
    /// the container's stack hands over 64 KiB TCP super-frames. If the header cannot be had the
    /// TAP is opened plain. With `--no-offload`, or on a re-opened persistent TAP that had
    /// offloads, all offloads are cleared: frames must arrive whole and checksummed.
    ///
    /// With several dataplane workers the TAP is multiqueue, one queue per worker. The kernel
    /// allocates a multiqueue TAP with 256 transmit queues whatever we ask (TUNSETIFF has no
    /// queue count, and tun refuses creation over rtnetlink); only as many are in use as there
    /// are workers, and with the `noqueue` root (see [`Cell::plumb`]) the unused ones cost no
    /// rings. With one worker the TAP is single-queue. A persistent
    /// TAP made by a cell with another worker setting keeps its kind (the kernel does not let a
    /// device change it): a single-queue TAP is then served by worker 0 alone.
    fn open_tap(&self, rec: &ContainerRecord) -> Result<Vec<Tap>> {
        let workers = self.dataplane.workers();
        let open = |vnet_hdr| -> Result<Vec<Tap>> {
            let open1 = |multi_queue| {
                Tap::open_in_netns(
                    &rec.netns,
                    &rec.ifname,
                    TapOptions {
                        vnet_hdr,
                        multi_queue,
                    },
                )
            };
            // A persistent TAP keeps the kind it was made with: try the other one on failure.
            let first = open1(workers > 1)
                .or_else(|_| open1(workers <= 1))
                .with_context(|| {
                    format!("creating TAP {} in {}", rec.ifname, rec.netns.display())
                })?;
            let mut queues = vec![first];
            let extra = if queues[0].options().multi_queue {
                workers - 1
            } else {
                0
            };
            for i in 1..=extra {
                let q = queues[0].open_queue().with_context(|| {
                    format!(
                        "opening queue {i} of TAP {} in {}",
                        rec.ifname,
                        rec.netns.display()
                    )
                })?;
                queues.push(q);
            }
            Ok(queues)
        };
        if self.config.offload {
            match open(true) {
                Ok(queues) => {
                    let tap = &queues[0];
                    let mut accepted = 0;
                    for flags in OFFLOAD_CANDIDATES {
                        match tap.set_offload(flags) {
                            Ok(()) => {
                                accepted = flags;
                                break;
                            }
                            Err(e) => tracing::debug!("{e}; trying fewer offloads"),
                        }
                    }
                    if accepted == 0 {
                        let _ = tap.set_offload(0);
                    }
                    tracing::debug!(ifname = %rec.ifname, offloads = format!("{accepted:#x}"), queues = queues.len(), "TAP with virtio-net header");
                    return Ok(queues);
                }
                Err(e) => tracing::warn!("{e:#}; opening it without offloads"),
            }
        }
        let queues = open(false)?;
        queues[0]
            .set_offload(0)
            .with_context(|| format!("clearing offloads of {}", rec.ifname))?;
        Ok(queues)
    }

    /// `--port-kind packet`: the veth pair (made now, or found again after a restart) and one
    /// packet socket on its host end per worker, in one fanout group. A container end left
    /// without its host end (a TAP of an earlier `--port-kind tap` run) is replaced.
    fn open_veth(&self, rec: &ContainerRecord) -> Result<Vec<PortDev>> {
        let host = veth_host_name(&rec.key());
        if netlink::ifindex(&host)?.is_none() {
            if netlink::link_exists(&rec.netns, &rec.ifname)? {
                tap::delete_in_netns(&rec.netns, &rec.ifname).with_context(|| {
                    format!(
                        "replacing the earlier {} in {}",
                        rec.ifname,
                        rec.netns.display()
                    )
                })?;
            }
            packet::create_veth(&host, &rec.ifname, &rec.netns, self.config.container_mtu())
                .with_context(|| {
                    format!(
                        "creating veth {host} <-> {} in {}",
                        rec.ifname,
                        rec.netns.display()
                    )
                })?;
        }
        if !self.config.offload {
            // Without the virtio-net header the switch must get whole frames with complete
            // checksums, as TUNSETOFFLOAD 0 gives on a TAP.
            tapestry_sys::ethtool::disable_offloads_in_netns(&rec.netns, &rec.ifname)
                .with_context(|| format!("turning off offloads of {}", rec.ifname))?;
        }
        let workers = self.dataplane.workers();
        let index =
            netlink::ifindex(&host)?.with_context(|| format!("veth host end {host} vanished"))?;
        // A fanout group id is per namespace; the ifindex is unique in it.
        let fanout = (workers > 1).then_some((index & 0xffff) as u16);
        (0..workers.max(1))
            .map(|i| {
                PacketPort::open(&host, self.config.offload, fanout)
                    .map(PortDev::from)
                    .with_context(|| format!("opening packet socket {i} on {host}"))
            })
            .collect()
    }

    /// Removes the veth pair of `rec` if there is one (`--port-kind tap` after a packet run).
    fn remove_veth(&self, rec: &ContainerRecord) -> Result<()> {
        let host = veth_host_name(&rec.key());
        if netlink::ifindex(&host)?.is_some() {
            netlink::delete_link(&host).with_context(|| format!("deleting veth {host}"))?;
        }
        Ok(())
    }

    /// Creates (or re-opens) the container's port (a TAP, or a veth pair with packet sockets on
    /// its host end, after `--port-kind`) and configures its side of the link. The root
    /// qdisc is `noqueue`, set before the device comes up; a persistent TAP made by an older
    /// version (with the default `mq` root and a `pfifo_fast` per transmit queue) has its root
    /// replaced when it is re-opened, which frees those queues' rings.
    pub(super) fn plumb(&self, rec: &ContainerRecord) -> Result<Vec<Arc<PortDev>>> {
        let queues: Vec<PortDev> = match self.config.port_kind {
            PortKind::Tap => {
                self.remove_veth(rec)?;
                self.open_tap(rec)?.into_iter().map(PortDev::from).collect()
            }
            PortKind::Packet => self.open_veth(rec)?,
        };
        self.configure_iface(rec)?;
        Ok(queues.into_iter().map(Arc::new).collect())
    }

    /// Configures the container side of `rec`'s port (idempotent): MAC, MTU, txqueuelen, the
    /// `noqueue` root, up, its address, the link route to the gateway and the default route.
    pub(super) fn configure_iface(&self, rec: &ContainerRecord) -> Result<()> {
        netlink::configure_container_iface(
            &rec.netns,
            &IfaceConfig {
                name: rec.ifname.clone(),
                mac: container_mac(rec.ip),
                mtu: self.config.container_mtu(),
                ip: rec.ip,
                gateway: GATEWAY,
                gateway_mac: Some(gateway_mac(rec.ip)),
                txqueuelen: Some(self.config.tap_txqueuelen),
                noqueue: true,
            },
        )
        .with_context(|| format!("configuring {} in {}", rec.ifname, rec.netns.display()))
    }
}
