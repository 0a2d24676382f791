#!/usr/bin/env python3
"""TCP request/response round-trip latency over one connection (like netperf TCP_RR).

  tcp_rr.py server PORT [--timeout S]
  tcp_rr.py client HOST PORT [--count N] [--size B] [--warmup N] [--timeout S]

The client sends SIZE bytes, waits for SIZE bytes back, and repeats COUNT times on one
connection with TCP_NODELAY. It prints one JSON line: count, median_us, p99_us, min_us, max_us.
The server echoes every byte until the client closes, then exits.
"""
import json
import socket
import statistics
import sys
import time


def recv_exact(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return bytes(buf)


def server(port, timeout):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("0.0.0.0", port))
    ls.listen(8)
    ls.settimeout(timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            c, _ = ls.accept()
        except socket.timeout:
            return
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.settimeout(timeout)
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except (OSError, ConnectionError):
            pass
        finally:
            c.close()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return float("nan")
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def client(host, port, count, size, warmup, timeout):
    s = socket.create_connection((host, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(timeout)
    msg = b"x" * size
    samples = []
    for i in range(warmup + count):
        t0 = time.perf_counter_ns()
        s.sendall(msg)
        recv_exact(s, size)
        dt = (time.perf_counter_ns() - t0) / 1000.0
        if i >= warmup:
            samples.append(dt)
    s.close()
    samples.sort()
    print(json.dumps({
        "count": len(samples),
        "median_us": round(statistics.median(samples), 1),
        "p99_us": round(percentile(samples, 99), 1),
        "min_us": round(samples[0], 1),
        "max_us": round(samples[-1], 1),
    }))


def opt(args, name, default, conv):
    if name in args:
        i = args.index(name)
        v = conv(args[i + 1])
        del args[i:i + 2]
        return v
    return default


def main():
    args = sys.argv[1:]
    timeout = opt(args, "--timeout", 30.0, float)
    if args[:1] == ["server"] and len(args) == 2:
        server(int(args[1]), timeout)
    elif args[:1] == ["client"]:
        count = opt(args, "--count", 2000, int)
        size = opt(args, "--size", 1, int)
        warmup = opt(args, "--warmup", 100, int)
        if len(args) != 3:
            sys.exit(__doc__)
        client(args[1], int(args[2]), count, size, warmup, timeout)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
