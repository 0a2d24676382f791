# Measurements for bench/dataplane.sh. Each function takes a side (k = kernel, t = Tapestry) and
# reads that side's client namespace, server namespace and server IP from ${SIDE}_CLIENT_NS etc.
# Servers are started fresh for every run and stopped after it; every command has a time limit.

HERE_LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HZ=$(getconf CLK_TCK)
declare -A VALS   # "side.metric" -> space-separated samples

side_vars() { # SIDE -> CNS SNS SIP
    local s=${1^^}
    local c=${s}_CLIENT_NS n=${s}_SERVER_NS i=${s}_SERVER_IP
    CNS=${!c}; SNS=${!n}; SIP=${!i}
}

add_val() { VALS[$1.$2]="${VALS[$1.$2]:-} $3"; }

# /proc/stat "cpu" line -> "user nice system idle iowait irq softirq steal"
cpu_line() { awk '/^cpu /{print $2, $3, $4, $5, $6, $7, $8, $9; exit}' /proc/stat; }

cell_ticks() { if [ "$1" = t ]; then tapestry_cell_ticks; else echo 0; fi; }

# integrity SIDE PAYLOAD: sends PAYLOAD with socat, compares sha256 at the far end.
integrity() {
    local side=$1 payload=$2 recv=$W/recv.$1 want got pid
    side_vars "$side"
    rm -f "$recv"
    bg "$SNS" "$W/socat-recv.$side.log" timeout 90 socat -u TCP-LISTEN:5203,reuseaddr "OPEN:$recv,creat,trunc"
    pid=$BG_PID
    wait_listen "$SNS" 5203 10 || { INTEGRITY_ERR="socat receiver did not start"; return 1; }
    if ! nsx "$CNS" 60 socat -u "OPEN:$payload" "TCP:$SIP:5203,connect-timeout=5" 2>"$W/socat-send.$side.log"; then
        stop_pid "$pid"
        INTEGRITY_ERR="socat transfer failed: $(last_line "$W/socat-send.$side.log")"; return 1
    fi
    for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    stop_pid "$pid"
    want=$(sha256sum <"$payload" | cut -d' ' -f1)
    got=$(sha256sum <"$recv" 2>/dev/null | cut -d' ' -f1)
    if [ "$want" != "$got" ]; then
        INTEGRITY_ERR="sha256 mismatch: sent $want, received $got ($(stat -c %s "$recv" 2>/dev/null || echo 0) of $(stat -c %s "$payload") bytes)"
        return 1
    fi
    log "  $side: 50 MB transfer verified at the far end (sha256 $want)"
    rm -f "$recv"
}

# iperf SIDE OUTFILE ARGS...: one iperf3 client run against a fresh one-shot server.
iperf() {
    local side=$1 out=$2 pid rc; shift 2
    side_vars "$side"
    bg "$SNS" "$W/iperf3-server.$side.log" timeout $((DUR + 40)) iperf3 -s -1 -p 5201
    pid=$BG_PID
    wait_listen "$SNS" 5201 10 || { stop_pid "$pid"; return 1; }
    nsx "$CNS" $((DUR + 30)) iperf3 -c "$SIP" -p 5201 -t "$DUR" --connect-timeout 5000 -J "$@" >"$out" 2>&1
    rc=$?
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    stop_pid "$pid"
    return $rc
}

# tcp SIDE FLOWS RUN: throughput in Gbit/s; with one flow also CPU per GiB.
tcp() {
    local side=$1 flows=$2 run=$3 out=$W/iperf-tcp$2.$1.$3.json c0 c1 k0 k1 i0 i1 r
    c0=$(cpu_line); k0=$(cell_ticks "$side"); i0=$(tapestry_cell_ticks)
    if ! iperf "$side" "$out" -P "$flows"; then
        log "  $side tcp x$flows run $run failed: $(head -c 300 "$out" | tr '\n' ' ')"; return 1
    fi
    c1=$(cpu_line); k1=$(cell_ticks "$side"); i1=$(tapestry_cell_ticks)
    r=$(python3 - "$out" "$HZ" "$side" "$c0" "$c1" "$k0" "$k1" "$i0" "$i1" <<'PY'
import json, sys
out, hz, side, c0, c1, k0, k1, i0, i1 = sys.argv[1:]
j = json.load(open(out))
if "error" in j:
    sys.exit(j["error"])
s = j["end"]["sum_received"]
gib = s["bytes"] / 2**30
d = [b - a for a, b in zip(map(int, c0.split()), map(int, c1.split()))]
user, nice, system, idle, iowait, irq, softirq, steal = d
hz = int(hz)
if side == "k":
    dp = (system + softirq) / hz
else:
    dp = (int(k1) - int(k0)) / hz
allcpu = (user + nice + system + irq + softirq) / hz
cells = (int(i1) - int(i0)) / hz / max(s["seconds"], 0.001) * 100
print(f'{s["bits_per_second"] / 1e9:.3f} {dp / gib:.4f} {allcpu / gib:.4f} {cells:.1f}')
PY
) || { log "  $side tcp x$flows run $run: bad iperf3 output: $r"; return 1; }
    set -- $r
    add_val "$side" "tcp$flows" "$1"
    if [ "$flows" = 1 ]; then add_val "$side" cpu_dp "$2"; add_val "$side" cpu_all "$3"; fi
    [ "$side" = k ] && [ ${#T_CELL_PIDS[@]} -gt 0 ] && add_val k cells_idle_pct "$4"
    log "  $side tcp x$flows run $run: $1 Gbit/s$([ "$flows" = 1 ] && echo ", CPU $2 s/GiB (dataplane), $3 s/GiB (machine)")"
}

# udp SIDE RUN: 64-byte UDP payloads, packets per second received.
udp() {
    local side=$1 run=$2 out=$W/iperf-udp.$1.$2.json r
    if ! iperf "$side" "$out" -u -l 64 -b 0; then
        log "  $side udp run $run failed: $(head -c 300 "$out" | tr '\n' ' ')"; return 1
    fi
    r=$(python3 - "$out" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
if "error" in j:
    sys.exit(j["error"])
s = j["end"]["sum"]
received = s["packets"] - s["lost_packets"]
print(f'{received / s["seconds"]:.0f} {s["packets"] / s["seconds"]:.0f} {s["lost_percent"]:.1f}')
PY
) || { log "  $side udp run $run: bad iperf3 output: $r"; return 1; }
    set -- $r
    add_val "$side" udp_pps "$1"
    add_val "$side" udp_sent "$2"
    log "  $side udp 64 B run $run: $1 pkt/s received ($2 sent, $3% lost)"
}

# rr SIDE RUN: TCP request/response round trips (1 byte each way, one connection).
rr() {
    local side=$1 run=$2 pid r
    side_vars "$side"
    bg "$SNS" "$W/rr-server.$side.log" timeout 120 python3 "$HERE_LIB/tcp_rr.py" server 5202 --timeout 60
    pid=$BG_PID
    wait_listen "$SNS" 5202 10 || { stop_pid "$pid"; log "  $side rr: server did not start"; return 1; }
    r=$(nsx "$CNS" 90 python3 "$HERE_LIB/tcp_rr.py" client "$SIP" 5202 --count "$RR_COUNT" --timeout 10 2>&1)
    local rc=$?
    stop_pid "$pid"
    [ $rc = 0 ] || { log "  $side rr run $run failed: $r"; return 1; }
    r=$(echo "$r" | python3 -c 'import json,sys; j=json.loads(sys.stdin.read()); print(j["median_us"], j["p99_us"])') || return 1
    set -- $r
    add_val "$side" rr_med "$1"
    add_val "$side" rr_p99 "$2"
    log "  $side tcp rr run $run: median $1 us, p99 $2 us"
}

# icmp SIDE RUN: ping round trips, median and p99 in microseconds.
icmp() {
    local side=$1 run=$2 r
    side_vars "$side"
    r=$(nsx "$CNS" 60 ping -n -c "$PING_COUNT" -i 0.005 -W 1 "$SIP" 2>&1 | python3 -c '
import re, sys, statistics
v = sorted(float(m) * 1000 for m in re.findall(r"time=([0-9.]+) ms", sys.stdin.read()))
if not v:
    sys.exit("no replies")
print(round(statistics.median(v), 1), round(v[min(len(v) - 1, int(0.99 * len(v)))], 1))
') || { log "  $side ping run $run: $r"; return 1; }
    set -- $r
    add_val "$side" ping_med "$1"
    add_val "$side" ping_p99 "$2"
    log "  $side ping run $run: median $1 us, p99 $2 us"
}
