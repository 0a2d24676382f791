#!/usr/bin/env python3
"""Lone DNS queries over UDP, one at a time: the round trip of each, for bench/dns.sh.

    dns_rr.py SERVER QUERYFILE --count N [--timeout S]

QUERYFILE has dnsperf's format ("NAME TYPE" a line); the questions are sent in turn, each after
the previous answer came back (or timed out). Prints one JSON line: median_us, p99_us, answered,
lost. A reply must carry the query's id and have QR set; its rcode is not checked here.
"""
import argparse
import json
import os
import socket
import struct
import sys
import time

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28, "SRV": 33}


def question(name, qtype):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0" + struct.pack("!HH", TYPES[qtype.upper()], 1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("server")
    p.add_argument("queryfile")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--timeout", type=float, default=1.0)
    a = p.parse_args()
    qs = []
    for line in open(a.queryfile):
        f = line.split()
        if len(f) >= 2:
            qs.append(question(f[0], f[1]))
    if not qs:
        sys.exit("no queries in " + a.queryfile)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((a.server, 53))
    s.settimeout(a.timeout)
    rtts, lost = [], 0
    qid = int.from_bytes(os.urandom(2), "big")
    for i in range(a.count):
        qid = (qid + 1) & 0xFFFF
        msg = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qs[i % len(qs)]
        t0 = time.perf_counter_ns()
        s.send(msg)
        while True:
            try:
                r = s.recv(4096)
            except socket.timeout:
                lost += 1
                break
            if len(r) >= 12 and struct.unpack("!H", r[:2])[0] == qid and r[2] & 0x80:
                rtts.append((time.perf_counter_ns() - t0) / 1000)
                break
    if not rtts:
        sys.exit(f"no answer to any of {a.count} queries")
    rtts.sort()
    print(json.dumps({
        "median_us": round(rtts[len(rtts) // 2], 1),
        "p99_us": round(rtts[min(len(rtts) - 1, int(0.99 * len(rtts)))], 1),
        "answered": len(rtts),
        "lost": lost,
    }))


if __name__ == "__main__":
    main()
