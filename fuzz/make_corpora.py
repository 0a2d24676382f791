#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets (fuzz/corpus/TARGET/NAME).

Real inputs for the tables in fuzz/src/lib.rs: frames from the cell's containers (ARP, a TCP
handshake allowed by policy, a denied one, UDP DNS, an ICMP error, fragments), the same with the
virtio-net header (plain, NEEDS_CSUM, a TSO super-frame), VXLAN-GBP datagrams from the remote
cells, the pipeline records that string them into conversations, CNI invocations, external API
bodies in Cloud Foundry's format and feed responses. Run from anywhere: python3 fuzz/make_corpora.py
"""
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "corpus")


def ip(s):
    return bytes(int(x) for x in s.split("."))


def container_mac(a):
    return b"\xee\xee" + ip(a)


def gateway_mac(a):
    return b"\xaa\xaa" + ip(a)


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def ipv4(src, dst, proto, l4, ident=0x1234, mf=False, offset=0, ttl=64):
    flags = (0x2000 if mf else 0) | (offset >> 3)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, flags, ttl, proto, 0, ip(src), ip(dst))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + l4


def pseudo(src, dst, proto, l4):
    return ip(src) + ip(dst) + struct.pack("!BBH", 0, proto, len(l4)) + l4


def tcp(src, dst, sport, dport, flags, payload=b"", seq=1000, ack=0):
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    c = csum(pseudo(src, dst, 6, t))
    return t[:16] + struct.pack("!H", c) + t[18:]


def udp(src, dst, sport, dport, payload):
    u = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    c = csum(pseudo(src, dst, 17, u)) or 0xFFFF
    return u[:6] + struct.pack("!H", c) + u[8:]


def icmp(typ, code, data):
    m = struct.pack("!BBHI", typ, code, 0, 0) + data
    return m[:2] + struct.pack("!H", csum(m)) + m[4:]


def eth(dst_mac, src_mac, ethertype, payload):
    return dst_mac + src_mac + struct.pack("!H", ethertype) + payload


def from_ctr(src, dst, proto, l4, **kw):
    """A frame container `src` sends to its gateway."""
    return eth(gateway_mac(src), container_mac(src), 0x0800, ipv4(src, dst, proto, l4, **kw))


def arp_request(src, target):
    a = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + container_mac(src) + ip(src) + b"\0" * 6 + ip(target)
    return eth(b"\xff" * 6, container_mac(src), 0x0806, a)


VTEP_MAC = container_mac("10.255.1.0")  # this cell's VTEP (network of 10.255.1.0/24)


def vxlan(tag, inner, vni=1):
    flags = 0x08 | (0x80 if tag else 0)
    return struct.pack("!BBH", flags, 0, tag or 0) + struct.pack("!I", vni << 8) + inner


def from_remote(src, dst, proto, l4, remote_vtep_mac, tag, **kw):
    """A VXLAN payload a remote cell sends to this cell for local container `dst`."""
    return vxlan(tag, eth(VTEP_MAC, remote_vtep_mac, 0x0800, ipv4(src, dst, proto, l4, **kw)))


def vnet(frame, flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset) + frame


# Ports (fuzz/src/lib.rs): PORT_CHOICES index 0..3 are ports 1..4 at 10.255.1.1-4, tags 1, 2, 3, 0.
A, B, C, D = "10.255.1.1", "10.255.1.2", "10.255.1.3", "10.255.1.4"
SEL = {A: 0, B: 1, C: 2, D: 3}
R1 = "10.255.2.7"  # on remote cell 1 (VTEP 192.168.0.2, UNDERLAY_CHOICES index 0)
R3 = "10.255.4.9"  # on remote cell 3 (VTEP 192.168.0.4, index 2)
R1_VTEP_MAC = container_mac("10.255.2.0")
R3_VTEP_MAC = container_mac("10.255.4.0")
SYN, ACK, SYNACK, PSHACK, RST = 0x02, 0x10, 0x12, 0x18, 0x04


def frames():
    """(name, sel, frame) from local ports."""
    syn = from_ctr(A, B, 6, tcp(A, B, 40000, 8080, SYN))
    big = b"x" * 1200
    return [
        ("arp_gateway", SEL[A], arp_request(A, "10.255.1.254")),
        ("tcp_syn_allowed", SEL[A], syn),
        ("tcp_syn_denied", SEL[A], from_ctr(A, B, 6, tcp(A, B, 40000, 22, SYN))),
        ("tcp_synack_reply", SEL[B], from_ctr(B, A, 6, tcp(B, A, 8080, 40000, SYNACK))),
        ("udp_dns_local", SEL[A], from_ctr(A, C, 17, udp(A, C, 5353, 53, b"\x12\x34\x01\x00\x00\x01"))),
        ("udp_to_remote", SEL[C], from_ctr(C, R1, 17, udp(C, R1, 5000, 5001, b"hello"))),
        ("tcp_to_remote_untagged", SEL[D], from_ctr(D, R3, 6, tcp(D, R3, 40001, 80, SYN))),
        ("icmp_unreachable", SEL[B], from_ctr(B, A, 1, icmp(3, 3, ipv4(A, B, 6, tcp(A, B, 40000, 8080, SYN)[:8])))),
        ("icmp_echo", SEL[A], from_ctr(A, B, 1, icmp(8, 0, b"ping"))),
        ("frag_first", SEL[A], from_ctr(A, C, 17, udp(A, C, 4000, 53, big)[:1208], mf=True, ident=7)),
        ("frag_later", SEL[A], from_ctr(A, C, 17, big[:64], offset=1208, ident=7)),
        ("spoofed_ip", SEL[A], eth(gateway_mac(A), container_mac(A), 0x0800, ipv4(B, C, 17, udp(B, C, 1, 53, b"")))),
        ("ipv6", SEL[A], eth(gateway_mac(A), container_mac(A), 0x86DD, b"\x60" + b"\0" * 39)),
    ]


def datagrams():
    """(name, sel, VXLAN payload) from the underlay."""
    return [
        ("tcp_syn_tag5", 0, from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 5)),
        ("tcp_syn_denied_tag7", 0, from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 7)),
        ("udp_tag6", 2, from_remote(R3, C, 17, udp(R3, C, 6000, 5050, b"data"), R3_VTEP_MAC, 6)),
        ("udp_reply_untagged", 0, from_remote(R1, C, 17, udp(R1, C, 5001, 5000, b"reply"), R1_VTEP_MAC, 0)),
        ("spoofed_inner_source", 2, from_remote(R1, B, 6, tcp(R1, B, 1, 80, SYN), R3_VTEP_MAC, 5)),
        ("icmp_frag_needed", 0, from_remote(R1, C, 1, icmp(3, 4, ipv4(C, R1, 17, udp(C, R1, 5000, 5001, b"")[:8])), R1_VTEP_MAC, 0)),
        ("unknown_vtep", 4, from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 5)),
        ("wrong_vni", 0, from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 5)[:4] + struct.pack("!I", 2 << 8) + from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 5)[8:]),
    ]


def vnet_frames():
    t = tcp(A, R1, 40000, 9000, PSHACK, b"y" * 3000)
    tso = from_ctr(A, R1, 6, t)
    # NEEDS_CSUM with the checksum left to the device: start at the TCP header, offset 16.
    partial = from_ctr(A, B, 6, tcp(A, B, 40000, 8080, SYN))
    return [
        ("plain", SEL[A], vnet(from_ctr(A, B, 6, tcp(A, B, 40000, 8080, SYN)))),
        ("needs_csum", SEL[A], vnet(partial, flags=1, csum_start=34, csum_offset=16)),
        ("tso_to_remote", SEL[A], vnet(tso, flags=1, gso_type=1, hdr_len=54, gso_size=1400, csum_start=34, csum_offset=16)),
        ("uso_udp", SEL[C], vnet(from_ctr(C, R1, 17, udp(C, R1, 5000, 5001, b"z" * 2500)), flags=1, gso_type=5, hdr_len=42, gso_size=1000, csum_start=34, csum_offset=6)),
        ("arp", SEL[B], vnet(arp_request(B, A))),
    ]


def record(op, sel, frame, fix=0):
    return struct.pack("!BBBH", op, sel, fix, len(frame)) + frame


def conversations():
    """Pipeline inputs: several packets in order, with policy changes."""
    syn = from_ctr(A, B, 6, tcp(A, B, 40000, 8080, SYN))
    synack = from_ctr(B, A, 6, tcp(B, A, 8080, 40000, SYNACK))
    ack = from_ctr(A, B, 6, tcp(A, B, 40000, 8080, ACK))
    to_r1 = from_ctr(C, R1, 17, udp(C, R1, 5000, 5001, b"q"))
    r1_reply = from_remote(R1, C, 17, udp(R1, C, 5001, 5000, b"r"), R1_VTEP_MAC, 0)
    inbound = from_remote(R1, B, 6, tcp(R1, B, 41000, 80, SYN), R1_VTEP_MAC, 5)
    answer = from_ctr(B, R1, 6, tcp(B, R1, 80, 41000, SYNACK))
    big = b"x" * 1200
    f1 = from_ctr(A, C, 17, udp(A, C, 4000, 53, big)[:1208], mf=True, ident=9)
    f2 = from_ctr(A, C, 17, big[:64], offset=1208, ident=9)
    err = from_ctr(B, A, 1, icmp(3, 3, ipv4(A, B, 6, tcp(A, B, 40000, 8080, SYN)[:8])))
    return [
        ("handshake", record(0, SEL[A], syn) + record(0, SEL[B], synack) + record(0, SEL[A], ack)),
        ("handshake_then_revoke", record(0, SEL[A], syn) + record(0, SEL[B], synack) + record(3, 2, b"") + record(0, SEL[A], ack) + record(0, SEL[B], synack)),
        ("revoke_regrant", record(0, SEL[A], syn) + record(3, 1, b"") + record(0, SEL[A], ack) + record(3, 0, b"") + record(0, SEL[A], ack)),
        ("remote_reply", record(0, SEL[C], to_r1) + record(2, 0, r1_reply) + record(2, 0, r1_reply)),
        ("inbound_and_answer", record(2, 0, inbound) + record(0, SEL[B], answer) + record(3, 2, b"") + record(2, 0, inbound) + record(0, SEL[B], answer)),
        ("fragments", record(0, SEL[A], f2) + record(0, SEL[A], f1) + record(0, SEL[A], f2)),
        ("icmp_error_related", record(0, SEL[A], syn) + record(0, SEL[B], err)),
        ("arp_then_flow", record(1, SEL[D], arp_request(D, "10.255.1.254")) + record(0, SEL[D], from_ctr(D, R3, 6, tcp(D, R3, 40001, 80, SYN)))),
    ]


def cni_inputs():
    def env(cmd, cid="c1", netns="/var/run/netns/c1", ifname="eth0"):
        return "CNI_COMMAND=%s\nCNI_CONTAINERID=%s\nCNI_NETNS=%s\nCNI_IFNAME=%s\n\n" % (cmd, cid, netns, ifname)

    conf = {
        "cniVersion": "1.0.0",
        "name": "tapestry",
        "type": "tapestry-cni",
        "cell_socket": "/var/vcap/data/tapestry/cell.sock",
        "metadata": {"policy_group_id": "app-a", "space_id": "s1", "org_id": "o1", "instance_index": 2},
    }
    garden = dict(conf, cniVersion="0.3.1", metadata={"app_id": "app-b", "instance_index": "3"})
    return [
        ("add", env("ADD") + json.dumps(conf)),
        ("add_garden_0.3.1", env("ADD") + json.dumps(garden)),
        ("del", env("DEL") + json.dumps(conf)),
        ("check", env("CHECK") + json.dumps(conf)),
        ("version", env("VERSION")),
        ("bad_type", env("ADD") + json.dumps(dict(conf, type="bridge"))),
        ("negative_index", env("ADD") + json.dumps(dict(conf, metadata={"policy_group_id": "a", "instance_index": -1}))),
    ]


def api_inputs():
    # first byte: 0 v1 policies, 1 v0 policies, 2 create ASG, 3 update ASG, 4 route, 5 lease
    v1 = {"policies": [
        {"source": {"id": "app-a"}, "destination": {"id": "app-b", "protocol": "tcp", "ports": {"start": 8080, "end": 8090}}},
        {"source": {"id": "app-c"}, "destination": {"id": "app-a", "protocol": "udp", "ports": {"start": 53}}},
    ]}
    v0 = {"policies": [{"source": {"id": "app-a"}, "destination": {"id": "app-b", "protocol": "tcp", "port": 8080}}]}
    asg = {
        "name": "public-networks",
        "rules": [
            {"protocol": "tcp", "destination": "0.0.0.0-9.255.255.255,11.0.0.0-169.253.255.255", "ports": "80,443"},
            {"protocol": "udp", "destination": "10.0.0.53", "ports": "53", "log": True, "description": "dns"},
            {"protocol": "icmp", "destination": "192.168.0.0/16", "type": 0, "code": -1},
            {"protocol": "all", "destination": "172.16.0.0/12"},
        ],
        "globally_enabled": {"running": True, "staging": False},
        "running_spaces": ["space-1"],
        "staging_spaces": [],
    }
    update = {k: v for k, v in asg.items() if k != "name"}
    return [
        ("policies_v1", b"\x00" + json.dumps(v1).encode()),
        ("policies_v1_bad_port", b"\x00" + json.dumps({"policies": [{"source": {"id": "a"}, "destination": {"id": "b", "protocol": "tcp", "ports": {"start": 0, "end": 70000}}}]}).encode()),
        ("policies_v0", b"\x01" + json.dumps(v0).encode()),
        ("asg_create", b"\x02" + json.dumps(asg).encode()),
        ("asg_update_without_name", b"\x03" + json.dumps(update).encode()),
        ("route", b"\x04" + json.dumps({"host": "Backend.apps.internal.", "app_id": "app-b"}).encode()),
        ("lease", b"\x05" + json.dumps({"underlay_ip": "192.168.0.9", "overlay_subnet": "10.255.9.0/24"}).encode()),
    ]


def feed_inputs():
    with open(os.path.join(HERE, "src", "seed_feed.json")) as f:
        snap = json.load(f)
    compact = json.dumps(snap).encode()
    changes = {"version": 9, "snapshot": None, "changes": [
        {"version": 6, "op": "put", "kind": "tag", "value": {"id": "app-d", "type": "app", "tag": "0004"}},
        {"version": 7, "op": "put", "kind": "policy", "value": {"source": {"id": "app-d"}, "destination": {"id": "app-b", "protocol": "udp", "ports": {"start": 1, "end": 65535}}}},
        {"version": 8, "op": "delete", "kind": "lease", "value": snap["snapshot"]["leases"][1]},
        {"version": 9, "op": "put", "kind": "route", "value": {"host": "d.apps.internal", "app_id": "app-d"}},
    ]}
    bad = {"version": 10, "snapshot": None, "changes": [{"version": 10, "op": "put", "kind": "lease", "value": {"underlay_ip": "nope"}}]}
    persisted = {"version": 5, "synced": True, "snapshot": snap["snapshot"]}
    return [
        ("snapshot", b"\x00" + compact),
        ("changes_on_seeded", b"\x01" + json.dumps(changes).encode()),
        ("bad_change_skipped", b"\x01" + json.dumps(bad).encode()),
        ("empty_long_poll", b"\x01" + json.dumps({"version": 5, "snapshot": None, "changes": []}).encode()),
        ("persisted_view", b"\x02" + json.dumps(persisted).encode()),
    ]


def write(target, items):
    d = os.path.join(OUT, target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for name, data in items:
        if isinstance(data, str):
            data = data.encode()
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def main():
    write("tap_frame", [(n, bytes([s]) + f) for n, s, f in frames()])
    write("tap_vnet", [(n, bytes([s]) + f) for n, s, f in vnet_frames()])
    write("underlay", [(n, bytes([s]) + p) for n, s, p in datagrams()])
    write("pipeline", conversations())
    write("cni_config", cni_inputs())
    write("api_bodies", api_inputs())
    write("feed", feed_inputs())


if __name__ == "__main__":
    main()
