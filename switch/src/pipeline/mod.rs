//! The sans-IO pipeline: a frame and `now` in, a [`Verdict`] out; the frame to send is left in
//! the caller's [`PacketBuf`].

mod decide;
pub mod events;
pub mod extension;
pub mod flow;
pub mod frag;
pub mod probe;
pub mod trace;

use std::net::SocketAddrV4;
use std::sync::Arc;
use std::time::Instant;

use crate::buf::PacketBuf;
use crate::counters::{Counters, DropReason};
use crate::offload::{self, L4Checksum};
use crate::tables::conntrack::Conntrack;
use crate::tables::{container_mac, contains, network, Port, PortId, Route, Snapshot, Tables};
use crate::wire::ethernet::{self, Frame, Mac};
use crate::wire::{arp, ipv4, virtio_net, vxlan_gbp};
use decide::Ctx;
use events::{FlowEvent, FlowEvents};
use frag::FragTable;

/// What to do with the frame now in the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write `pkt.data()` (an Ethernet frame) to this port.
    ToPort(PortId),
    /// Send `pkt.data()` (VXLAN-GBP header + inner frame) as a UDP payload to this address.
    ToUnderlay(SocketAddrV4),
    /// An IPv4 packet leaving the overlay (or to the gateway's services): hand
    /// `pkt.data()[ethernet::HEADER_LEN..]` to the cell's local stack ([`crate::stack`]), which
    /// makes the egress (ASG) decision and answers.
    ToStack,
    /// A TCP segment to port 61443 of this local port, admitted by policy: hand
    /// `pkt.data()[ethernet::HEADER_LEN..]` to the local stack's TLS terminator for that port
    /// ([`crate::stack::Stack::to_service`]).
    ToService(PortId),
    /// Nothing to send; the reason has been counted.
    Drop(DropReason),
}

/// One pipeline per worker thread; the tables, connection tracker and counters are shared.
#[derive(Debug)]
pub struct Switch {
    tables: Arc<Tables>,
    conntrack: Arc<Conntrack>,
    counters: Arc<Counters>,
    frags: FragTable,
    ingress_step: Option<Arc<dyn extension::IngressStep>>,
    /// New-flow events, collected only while the flow log is on.
    events: FlowEvents,
    flow_log: bool,
}

impl Switch {
    pub fn new(tables: Arc<Tables>, conntrack: Arc<Conntrack>, counters: Arc<Counters>) -> Switch {
        Switch {
            tables,
            conntrack,
            counters,
            frags: FragTable::default(),
            ingress_step: None,
            events: FlowEvents::default(),
            flow_log: false,
        }
    }

    /// Replaces the ingress decision's step for new flows with `step` (see
    /// [`extension::IngressStep`]); `None` restores the policy alone.
    pub fn set_ingress_step(&mut self, step: Option<Arc<dyn extension::IngressStep>>) {
        self.ingress_step = step;
    }

    /// The context of one decision: this worker's fragment table, the shared tracker and counters.
    fn ctx<'a>(&'a mut self, snap: &'a Snapshot, now: Instant) -> Ctx<'a> {
        Ctx {
            snap,
            ct: self.conntrack.pin(),
            counters: &self.counters,
            frags: &mut self.frags,
            now,
            ingress_step: self.ingress_step.as_deref(),
            dry: false,
            trace: None,
            events: if self.flow_log {
                Some(&mut self.events)
            } else {
                None
            },
        }
    }

    /// Turns the reporting of new flows ([`FlowEvent`]) on or off. Off (the default), nothing
    /// is collected; turning it off drops what was not collected yet.
    pub fn set_flow_log(&mut self, on: bool) {
        self.flow_log = on;
        if !on {
            self.events = FlowEvents::default();
        }
    }

    /// Moves the new-flow events reported since the last call into `out`; returns how many
    /// did not fit in the switch's bounded list ([`events::EVENTS_MAX`]) and were lost.
    pub fn take_flow_events(&mut self, out: &mut Vec<FlowEvent>) -> u64 {
        self.events.drain_into(out)
    }

    pub fn tables(&self) -> &Arc<Tables> {
        &self.tables
    }
    pub fn conntrack(&self) -> &Arc<Conntrack> {
        &self.conntrack
    }
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A frame (plain Ethernet) read from a port.
    pub fn from_port(&mut self, port: PortId, pkt: &mut PacketBuf, now: Instant) -> Verdict {
        let len = pkt.len();
        self.counters.port_rx(port, len);
        let snap = self.tables.load();
        let mut cx = self.ctx(&snap, now);
        let v = from_port(&mut cx, port, pkt).unwrap_or_else(Verdict::Drop);
        drop(cx);
        self.account(v, Some(port), len, pkt.len());
        v
    }

    /// A frame read from a port opened with IFF_VNET_HDR: `pkt.data()` starts with the 10-byte
    /// virtio-net header. The decisions are those of [`Switch::from_port`], made once on the
    /// (super-)frame's headers. After the call:
    /// - `ToPort`: `pkt.data()` is the header followed by the rewritten frame, for a TAP that
    ///   also has IFF_VNET_HDR (super-frames go TAP to TAP whole);
    /// - `ToUnderlay`: `pkt.data()` is the VXLAN payload carrying the inner super-frame; split it
    ///   with [`crate::offload::segment_vxlan`] and the returned header (which also completes a
    ///   NEEDS_CSUM checksum when there is no GSO).
    pub fn from_port_vnet(
        &mut self,
        port: PortId,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> (Verdict, virtio_net::Repr) {
        let hdr = virtio_net::Packet::new_checked(pkt.data())
            .and_then(|p| virtio_net::Repr::parse(&p))
            .map_err(|_| DropReason::Truncated)
            .and_then(|hdr| {
                let frame = &pkt.data()[virtio_net::HEADER_LEN..];
                let gso_ok = match hdr.gso_kind() {
                    virtio_net::GSO_NONE => true,
                    virtio_net::GSO_TCPV4 => {
                        hdr.gso_size > 0 && crate::offload::TcpV4Layout::parse(frame).is_ok()
                    }
                    virtio_net::GSO_UDP_L4 => {
                        hdr.gso_size > 0 && crate::offload::UdpV4Layout::parse(frame).is_ok()
                    }
                    _ => false,
                };
                if gso_ok && hdr.check_csum_fields(frame.len()).is_ok() {
                    Ok(hdr)
                } else {
                    Err(DropReason::BadOffload)
                }
            });
        let hdr = match hdr {
            Ok(h) => h,
            Err(r) => {
                self.counters.port_rx(port, pkt.len());
                self.counters.dropped(r, Some(port), pkt.len());
                return (Verdict::Drop(r), virtio_net::Repr::default());
            }
        };
        pkt.pull_front(virtio_net::HEADER_LEN);
        let v = self.from_port(port, pkt, now);
        if let Verdict::ToPort(_) = v {
            hdr.emit(&mut virtio_net::Packet::new_unchecked(
                pkt.push_front(virtio_net::HEADER_LEN),
            ));
        }
        (v, hdr)
    }

    /// The ingress decision alone, as [`Switch::from_underlay`] and same-cell delivery make it
    /// after parsing: may a packet of `flow` (IP payload `l4`) from a source with `src_tag` reach
    /// local port `dst`? Records an admitted flow. For benchmarks and simulations that want the
    /// policy and connection-tracking cost without decapsulation and header checks.
    pub fn decide_ingress(
        &mut self,
        dst: PortId,
        src_tag: u16,
        flow: &flow::Flow,
        l4: &[u8],
        now: Instant,
    ) -> Result<(), DropReason> {
        let snap = self.tables.load();
        let port = snap.port(dst).ok_or(DropReason::NoSuchPort)?;
        let mut cx = self.ctx(&snap, now);
        cx.ingress(port, src_tag, flow, l4)
    }

    /// A UDP payload (VXLAN-GBP header + inner Ethernet frame) received from `src`.
    pub fn from_underlay(
        &mut self,
        src: SocketAddrV4,
        pkt: &mut PacketBuf,
        now: Instant,
    ) -> Verdict {
        let len = pkt.len();
        self.counters.underlay_rx(len);
        let snap = self.tables.load();
        let mut cx = self.ctx(&snap, now);
        let mut dst_port = None;
        let v = from_underlay(&mut cx, src, pkt, &mut dst_port).unwrap_or_else(Verdict::Drop);
        drop(cx);
        self.account(v, dst_port, len, pkt.len());
        v
    }

    fn account(&self, v: Verdict, drop_port: Option<PortId>, in_len: usize, out_len: usize) {
        match v {
            Verdict::ToPort(p) => self.counters.port_tx(p, out_len),
            Verdict::ToUnderlay(_) => self.counters.underlay_tx(out_len),
            Verdict::ToStack | Verdict::ToService(_) => {}
            Verdict::Drop(r) => {
                tracing::trace!(reason = r.as_str(), "drop");
                self.counters.dropped(r, drop_port, in_len)
            }
        }
    }
}

/// The checked IPv4 packet inside an Ethernet frame.
fn ethernet_ipv4(data: &[u8]) -> Result<ipv4::Packet<&[u8]>, DropReason> {
    flow::check_ipv4(
        data.get(ethernet::HEADER_LEN..)
            .ok_or(DropReason::Truncated)?,
    )
}

/// Rewrites the MACs and decrements the TTL of a checked Ethernet/IPv4 frame.
fn rewrite(data: &mut [u8], src: Mac, dst: Mac) {
    let mut eth = Frame::new_unchecked(&mut data[..]);
    eth.set_src(src);
    eth.set_dst(dst);
    if let Ok(mut ip) = ipv4::Packet::new_checked(eth.payload_mut()) {
        ip.decrement_ttl();
    }
}

fn from_port(cx: &mut Ctx<'_>, id: PortId, pkt: &mut PacketBuf) -> Result<Verdict, DropReason> {
    let snap: &Snapshot = cx.snap;
    let Some(&port) = snap.port(id) else {
        cx.note("in_port", || format!("port {} is not in the tables", id.0));
        return Err(DropReason::UnknownPort);
    };
    cx.note("in_port", || {
        format!(
            "port {}: {} {}, tag {}{}",
            id.0,
            port.ip,
            trace::mac_text(&port.mac),
            port.tag,
            trace::app_text(snap, port.tag)
        )
    });
    let eth = Frame::new_checked(pkt.data()).map_err(|_| DropReason::Truncated)?;
    if eth.src() != port.mac {
        cx.note("anti_spoof", || {
            format!(
                "source MAC {} is not the port's {}",
                trace::mac_text(&eth.src()),
                trace::mac_text(&port.mac)
            )
        });
        return Err(DropReason::SpoofedMac);
    }
    match eth.ethertype() {
        ethernet::ETHERTYPE_ARP => return arp_reply(&port, pkt.data_mut()),
        ethernet::ETHERTYPE_IPV4 if !ethernet::is_group(&eth.dst()) => {}
        _ if ethernet::is_group(&eth.dst()) => return Err(DropReason::Multicast),
        _ => return Err(DropReason::UnsupportedEthertype),
    }
    let ip = ethernet_ipv4(pkt.data())?;
    if ip.src() != port.ip {
        cx.note("anti_spoof", || {
            format!("source IP {} is not the port's {}", ip.src(), port.ip)
        });
        return Err(DropReason::SpoofedIp);
    }
    cx.note("anti_spoof", || "source MAC and IP are the port's".into());
    if ip.ttl() <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let f = flow::parse(&ip)?;
    let route = snap.route(ip.dst());
    cx.note("route", || trace::route_text(snap, ip.dst(), &route));
    match route {
        Route::Local => {
            let dst = *snap.port_by_ip(ip.dst()).ok_or(DropReason::NoSuchPort)?;
            // Ingress first, so a denied flow leaves no egress record behind.
            cx.ingress(&dst, port.tag, &f, ip.payload())?;
            cx.egress(&port, &f)?;
            if is_tls(&f) {
                return Ok(Verdict::ToService(dst.id));
            }
            rewrite(pkt.data_mut(), dst.gateway_mac, dst.mac);
            Ok(Verdict::ToPort(dst.id))
        }
        Route::Remote(remote) => {
            cx.egress(&port, &f)?;
            let remote_vtep = container_mac(network(remote.subnet));
            rewrite(pkt.data_mut(), snap.vtep_mac(), remote_vtep);
            if pkt.headroom() < vxlan_gbp::HEADER_LEN {
                return Err(DropReason::FrameTooLarge);
            }
            let repr = vxlan_gbp::Repr {
                vni: snap.config().vni,
                // As the kernel: the G bit only with a non-zero tag.
                group_policy_id: (port.tag != 0).then_some(port.tag),
                dont_learn: false,
                policy_applied: false,
            };
            cx.note("encap", || {
                format!(
                    "VXLAN-GBP VNI {}, group policy ID {} (the source's tag), to {}; the \
                     destination cell makes the ingress decision",
                    repr.vni, port.tag, remote.underlay
                )
            });
            repr.emit(&mut vxlan_gbp::Packet::new_unchecked(
                pkt.push_front(vxlan_gbp::HEADER_LEN),
            ));
            Ok(Verdict::ToUnderlay(remote.underlay))
        }
        Route::Vtep => Err(DropReason::ToVtep),
        Route::OverlayNoLease => Err(DropReason::NoLease),
        // The local stack counts what it refuses; a driver without one counts OutsideOverlay.
        Route::Outside => Ok(Verdict::ToStack),
    }
}

/// Answers the port's ARP request for any address but its own with its gateway MAC, in place.
fn arp_reply(port: &Port, data: &mut [u8]) -> Result<Verdict, DropReason> {
    let payload = data
        .get_mut(ethernet::HEADER_LEN..)
        .ok_or(DropReason::Truncated)?;
    let p = arp::Packet::new_checked(&payload[..]).map_err(|_| DropReason::ArpDropped)?;
    let req = arp::Repr::parse(&p).map_err(|_| DropReason::ArpDropped)?;
    if req.oper != arp::OP_REQUEST
        || req.spa != port.ip
        || req.sha != port.mac
        || req.tpa == port.ip
    {
        return Err(DropReason::ArpDropped);
    }
    let reply = arp::Repr {
        oper: arp::OP_REPLY,
        sha: port.gateway_mac,
        spa: req.tpa,
        tha: port.mac,
        tpa: port.ip,
    };
    reply.emit(&mut arp::Packet::new_unchecked(&mut payload[..]));
    let mut eth = Frame::new_unchecked(data);
    eth.set_dst(port.mac);
    eth.set_src(port.gateway_mac);
    Ok(Verdict::ToPort(port.id))
}

fn from_underlay(
    cx: &mut Ctx<'_>,
    src: SocketAddrV4,
    pkt: &mut PacketBuf,
    dst_port: &mut Option<PortId>,
) -> Result<Verdict, DropReason> {
    let snap: &Snapshot = cx.snap;
    let remotes = snap.remotes_at(*src.ip());
    if remotes.is_empty() {
        cx.note("underlay", || {
            format!("{} holds no lease: not a known VTEP", src.ip())
        });
        return Err(DropReason::UnknownVtep);
    }
    cx.note("underlay", || {
        let subnets: Vec<String> = remotes
            .iter()
            .map(|r| format!("{}/{}", r.subnet.0, r.subnet.1))
            .collect();
        format!("from VTEP {src}, the cell of {}", subnets.join(", "))
    });
    let vx = vxlan_gbp::Packet::new_checked(pkt.data()).map_err(|_| DropReason::MalformedVxlan)?;
    let repr = vxlan_gbp::Repr::parse(&vx).map_err(|_| DropReason::MalformedVxlan)?;
    if repr.vni != snap.config().vni {
        return Err(DropReason::WrongVni);
    }
    let tag = repr.group_policy_id.unwrap_or(0);
    cx.note("decap", || {
        format!(
            "VNI {}, group policy ID {tag}{}",
            repr.vni,
            trace::app_text(snap, tag)
        )
    });
    pkt.pull_front(vxlan_gbp::HEADER_LEN);
    let eth = Frame::new_checked(pkt.data()).map_err(|_| DropReason::Truncated)?;
    if eth.ethertype() != ethernet::ETHERTYPE_IPV4 {
        return Err(DropReason::UnsupportedEthertype);
    }
    if eth.dst() != snap.vtep_mac() {
        return Err(DropReason::WrongVtepMac);
    }
    let ip = ethernet_ipv4(pkt.data())?;
    if !remotes.iter().any(|r| contains(r.subnet, ip.src())) {
        cx.note("anti_spoof", || {
            format!(
                "inner source {} is not in the sending cell's subnet",
                ip.src()
            )
        });
        return Err(DropReason::SpoofedRemoteIp);
    }
    cx.note("anti_spoof", || {
        format!("inner source {} is in the sending cell's subnet", ip.src())
    });
    let route = snap.route(ip.dst());
    cx.note("route", || trace::route_text(snap, ip.dst(), &route));
    let dst = match route {
        Route::Local => *snap.port_by_ip(ip.dst()).ok_or(DropReason::NoSuchPort)?,
        Route::Vtep => return Err(DropReason::ToVtep),
        _ => return Err(DropReason::NotLocal),
    };
    *dst_port = Some(dst.id);
    if ip.ttl() <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let f = flow::parse(&ip)?;
    // Before the ingress decision, so a corrupted packet leaves no connection state. A kernel
    // VTEP's partial checksum is completed here (see offload::partial).
    match offload::verify_or_complete(&mut pkt.data_mut()[ethernet::HEADER_LEN..]) {
        L4Checksum::Valid | L4Checksum::Unchecked => {}
        L4Checksum::Completed if !cx.dry => cx.counters.partial_checksum_completed(),
        L4Checksum::Completed => {}
        L4Checksum::Bad => return Err(DropReason::BadL4Checksum),
        L4Checksum::Malformed => return Err(DropReason::MalformedL4),
    }
    let ip = ipv4::Packet::new_unchecked(&pkt.data()[ethernet::HEADER_LEN..]);
    cx.ingress(&dst, tag, &f, ip.payload())?;
    if is_tls(&f) {
        return Ok(Verdict::ToService(dst.id));
    }
    rewrite(pkt.data_mut(), dst.gateway_mac, dst.mac);
    Ok(Verdict::ToPort(dst.id))
}

/// A segment to the TLS terminator's port, which the local stack serves for every container.
fn is_tls(f: &flow::Flow) -> bool {
    f.proto == ipv4::PROTO_TCP
        && f.dport == crate::stack::tls::TLS_PORT
        && f.frag != flow::Frag::Later
}
