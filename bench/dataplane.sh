#!/usr/bin/env bash
# Dataplane benchmark (issue 4): the Linux kernel VXLAN-GBP dataplane as Silk builds it and
# Tapestry's userspace dataplane, on the same topology in one run, with the ratio printed.
#
#   sudo bench/dataplane.sh [--quick] [--tapestry PATH] [--no-offload] [--port-kind tap|packet] [--cell-arg A]... [--runs N] [--no-write]
#
#   --quick        3 s per throughput run instead of 10 s, fewer latency samples
#   --tapestry P   use this tapestry binary (default: cargo build --release, then target/release/tapestry)
#   --no-offload   start the cells with --no-offload
#   --port-kind K  container ports of kind K (tap, the default, or packet: veth + AF_PACKET); the
#                  result goes to the section "Dataplane" or "Dataplane (packet ports)"
#   --cell-arg A   pass A to both `tapestry cell` processes (repeatable), e.g. --cell-arg --busy-poll-us=0
#   --runs N       runs per measurement (default 3); the median is reported
#   --no-write     print the table but leave BENCHMARKS.md alone
#   --note TEXT    a line added to the BENCHMARKS.md section (e.g. how the binary was built)
#   --only LIST    measure only these (comma-separated: tcp1,tcp4,udp,rr,ping), for experiments;
#                  implies --no-write
#
# Topology (namespaces prefixed tpb-, all removed on every exit path): a bridge underlay
# (tpb-ul, 198.18.0.0/24); kernel cells tpb-k1/tpb-k2 (198.18.0.1/.2) with a silk-vtep each and
# containers tpb-kc1/tpb-kc2; Tapestry control plane tpb-tctl (198.18.0.10), cells tpb-t1/tpb-t2
# (198.18.0.11/.12) and containers tpb-tc1/tpb-tc2. The client runs in container 1, the server in
# container 2 (the other cell). Before any number, a 50 MB random file is sent with socat and its
# sha256 compared at the far end. If Tapestry cannot be built or started, the kernel side is still
# measured and Tapestry's column says why it is n/a.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")

QUICK=0; TAPESTRY=""; RUNS=3; WRITE=1; CELL_ARGS=(); NOTE=""; ONLY=""; PORT_KIND=tap
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --tapestry) TAPESTRY=${2:?--tapestry needs a path}; shift ;;
        --no-offload) CELL_ARGS+=(--no-offload) ;;
        --port-kind) PORT_KIND=${2:?--port-kind needs tap or packet}; shift
            case $PORT_KIND in tap|packet) ;; *) echo "--port-kind $PORT_KIND: not tap or packet" >&2; exit 2 ;; esac
            CELL_ARGS+=(--port-kind "$PORT_KIND") ;;
        --cell-arg) CELL_ARGS+=("${2:?--cell-arg needs a value}"); shift ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --no-write) WRITE=0 ;;
        --note) NOTE=${2:?--note needs text}; shift ;;
        --only) ONLY=",${2:?--only needs a list},"; WRITE=0; shift ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

SHOWN=()
[ $QUICK = 1 ] && SHOWN+=(--quick)
[ -n "$TAPESTRY" ] && SHOWN+=(--tapestry "$TAPESTRY")
for a in ${CELL_ARGS[@]+"${CELL_ARGS[@]}"}; do
    case $a in
        --no-offload|--port-kind|tap|packet) SHOWN+=("$a") ;;
        *) SHOWN+=(--cell-arg "$a") ;;
    esac
done
[ "$RUNS" != 3 ] && SHOWN+=(--runs "$RUNS")
CMDLINE="bench/dataplane.sh${SHOWN[*]:+ ${SHOWN[*]}}"

UNDERLAY_MTU=1500
if [ $QUICK = 1 ]; then DUR=3; RR_COUNT=2000; PING_COUNT=200; WATCHDOG_S=900
else DUR=10; RR_COUNT=10000; PING_COUNT=1000; WATCHDOG_S=1800; fi

. "$HERE/lib/common.sh"
. "$HERE/lib/kernel.sh"
. "$HERE/lib/tapestry.sh"
. "$HERE/lib/measure.sh"

[ "$(id -u)" = 0 ] || die "this needs root (network namespaces): sudo $CMDLINE"

# Tools
missing=()
for tool in iperf3:iperf3 socat:socat python3:python3 curl:curl ip:iproute2 bridge:iproute2 ping:iputils-ping ss:iproute2 timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null ||
        { t 300 apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "could not install ${missing[*]}"
fi

W=$(mktemp -d /tmp/tpb.XXXXXX)
WATCHDOG=""
on_exit() {
    local rc=$?
    trap - EXIT
    trap '' INT TERM   # cleanup must not be cut short by a second signal
    [ -n "$WATCHDOG" ] && { pkill -P "$WATCHDOG" 2>/dev/null; kill "$WATCHDOG" 2>/dev/null; }
    bench_cleanup
    if [ "${KEEP_WORKDIR:-0}" = 1 ]; then log "logs kept in $W"; else rm -rf "$W"; fi
    exit $rc
}
trap on_exit EXIT
trap '[ -e "$W/watchdog" ] && log "watchdog: still running after $WATCHDOG_S s, stopped" || log "interrupted"; exit 130' INT TERM

bench_cleanup   # namespaces left by an earlier run that was killed -9

# The Tapestry binary: built in release mode unless given.
TFAIL=""
if [ -z "$TAPESTRY" ]; then
    if command -v cargo >/dev/null; then
        log "building tapestry (cargo build --release --bin tapestry)"
        if (cd "$ROOT" && t 1800 cargo build --release --bin tapestry) >"$W/build.log" 2>&1; then
            TAPESTRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/tapestry
        else
            TFAIL="build failed: $(grep -m1 '^error' "$W/build.log" | cut -c1-160)"
        fi
    else
        TFAIL="cargo not found; pass --tapestry PATH"
    fi
fi
[ -z "$TFAIL" ] && [ ! -x "$TAPESTRY" ] && TFAIL="no tapestry binary at $TAPESTRY"

# (&&: if Ctrl-C kills the sleep too, the watchdog must not go on to signal us mid-cleanup)
( sleep "$WATCHDOG_S" && touch "$W/watchdog" && kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

log "work dir $W; ${DUR} s per throughput run, $RUNS runs each, median reported"
underlay_add || die "could not create the underlay"
log "kernel reference: two cells with silk-vtep (vxlan id 1 dstport 4789 gbp nolearning), one container each"
kernel_build || die "could not build the kernel reference topology"
if [ -z "$TFAIL" ]; then
    log "tapestry: control plane, two cells, one container each ($TAPESTRY ${CELL_ARGS[*]})"
    tapestry_build "$TAPESTRY" "$W" || true
fi
[ -n "$TFAIL" ] && log "tapestry: n/a ($TFAIL)"

SIDES=(k)
if [ -z "$TFAIL" ]; then
    SIDES+=(t)
fi

# Reachability, then integrity, before any number.
head -c 50000000 /dev/urandom >"$W/payload"
for side in "${SIDES[@]}"; do
    side_vars "$side"
    bg "$SNS" "$W/probe.$side.log" timeout 60 python3 "$HERE/lib/tcp_rr.py" server 5202 --timeout 30
    probe=$BG_PID
    wait_listen "$SNS" 5202 10
    if ! wait_tcp "$CNS" "$SIP" 5202 20; then
        stop_pid "$probe"
        [ "$side" = k ] && die "kernel reference: no TCP connection from $CNS to $SIP:5202"
        TFAIL="no TCP connection from container 1 to $SIP:5202 within 20 s of creating the policy"
        log "tapestry: n/a ($TFAIL)"
        continue
    fi
    stop_pid "$probe"
    if ! integrity "$side" "$W/payload"; then
        [ "$side" = k ] && die "kernel reference: integrity check failed: $INTEGRITY_ERR"
        TFAIL="integrity check failed: $INTEGRITY_ERR"
        log "tapestry: n/a ($TFAIL)"
    fi
done
[ -n "$TFAIL" ] && SIDES=(k)

# sides_ok: the sides still being measured (Tapestry drops out with a reason if it breaks).
measure() { # FUNCTION ARGS... for each side, RUNS times, interleaved to spread any drift
    local f=$1 r side; shift
    for r in $(seq 1 "$RUNS"); do
        for side in "${SIDES[@]}"; do
            if ! "$f" "$side" "$@" "$r" && [ "$side" = t ]; then
                if ! alive "${T_CELL_PIDS[0]}" || ! alive "${T_CELL_PIDS[1]}"; then
                    TFAIL="a cell exited during the $f measurement: $(last_line "$W/cell1.log") / $(last_line "$W/cell2.log")"
                    log "tapestry: n/a ($TFAIL)"
                    SIDES=(k)
                fi
            fi
        done
    done
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
wanted() { [ -z "$ONLY" ] || [[ $ONLY == *",$1,"* ]]; }
wanted tcp1 && { log "TCP, one flow"; measure tcp 1; }
wanted tcp4 && { log "TCP, 4 flows";  measure tcp 4; }
wanted udp && { log "UDP, 64-byte payloads"; measure udp; }
wanted rr && { log "TCP request/response"; measure rr; }
if wanted ping; then
    log "ping (kernel; Tapestry denies ICMP echo by design)"
    for r in $(seq 1 "$RUNS"); do icmp k "$r"; done
    if [[ " ${SIDES[*]} " == *" t "* ]] && nsx "$T_CLIENT_NS" 5 ping -n -c 2 -W 1 "$T_SERVER_IP" >/dev/null 2>&1; then
        for r in $(seq 1 "$RUNS"); do icmp t "$r"; done
    fi
fi
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The table
med() { median ${VALS[$1.$2]:-}; }
TNA="n/a"
[ -n "$TFAIL" ] && TNA="n/a ($(echo "$TFAIL" | tr '|' '/'))"

row() { # LABEL METRIC DECIMALS [latency]
    local k t r
    k=$(med k "$2")
    if [ -n "$TFAIL" ]; then t=$TNA; TNA="n/a"; else t=$(med t "$2"); fi
    r=$(ratio "$t" "$k")
    if [ "${4:-}" = latency ] && isnum "$t" && isnum "$k"; then
        r="$r ($(awk -v a="$t" -v b="$k" 'BEGIN{printf "%+.0f us", a-b}'))"
    fi
    printf '| %s | %s | %s | %s |\n' "$1" "$(fmt "$k" "$3")" "$(fmt "$t" "$3")" "$r"
}

TABLE=$(
    echo "| Metric (median of $RUNS runs) | Kernel VXLAN-GBP (Silk topology) | Tapestry | Tapestry / kernel |"
    echo "|---|---|---|---|"
    row "TCP, 1 flow (Gbit/s)" tcp1 2
    row "TCP, 4 flows (Gbit/s)" tcp4 2
    row "UDP, 64 B payload, received (packets/s)" udp_pps 0
    row "UDP, 64 B payload, sent (packets/s)" udp_sent 0
    row "TCP request/response, median (us)" rr_med 1 latency
    row "TCP request/response, p99 (us)" rr_p99 1 latency
    if [ -n "${VALS[t.ping_med]:-}" ]; then
        row "ping, median (us)" ping_med 1 latency
        row "ping, p99 (us)" ping_p99 1 latency
    else
        printf '| ping, median (us) | %s | n/a (ICMP echo denied by design) | n/a |\n' "$(fmt "$(med k ping_med)" 1)"
        printf '| ping, p99 (us) | %s | n/a (ICMP echo denied by design) | n/a |\n' "$(fmt "$(med k ping_p99)" 1)"
    fi
    row "CPU s per GiB, dataplane (kernel: system+softirq; Tapestry: cell processes)" cpu_dp 2
    row "CPU s per GiB, whole machine (user+system+softirq)" cpu_all 2
)

CELLS_IDLE_NOTE=""
if [ -n "${VALS[k.cells_idle_pct]:-}" ]; then
    CELLS_IDLE_NOTE=$'\n'"- The idle Tapestry cells used $(median ${VALS[k.cells_idle_pct]}) % of one CPU while the kernel side was measured (both topologies exist for the whole run)."
fi
NOTE_LINE=""
[ -n "$NOTE" ] && NOTE_LINE=$'\n'"$NOTE"
BUSY_NOTE=""
if awk -v l="${LOADAVG_START%% *}" -v n="$(nproc)" 'BEGIN{exit !(l > n / 2)}'; then
    BUSY_NOTE=$'\n\n'"**Caution:** the machine was busy with other work when this ran (1-minute load average ${LOADAVG_START%% *} on $(nproc) CPUs), so absolute figures are low and noisy and the whole-machine CPU row includes that work; the ratios, measured interleaved in the same run, are the meaningful part."
fi
KERNEL=$(uname -r)
CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/{gsub(/^ +/, "", $2); print $2; exit}')
NCPU=$(nproc)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+uncommitted" || true)

TITLE="Dataplane"
[ "$PORT_KIND" = packet ] && TITLE="Dataplane (packet ports)"
SECTION=$(cat <<MD
## $TITLE

Produced by \`sudo $CMDLINE\` on $DATE: Linux $KERNEL, $CPU, $NCPU CPUs, checkout $REV$DIRTY
(\`${TAPESTRY:-not built}\`${CELL_ARGS[*]:+ ${CELL_ARGS[*]}}). Load average at start / end of the measurements: $LOADAVG_START / $LOADAVG_END.$NOTE_LINE$BUSY_NOTE

$TABLE

How it is measured (one run builds both sides on the same veth/bridge underlay, MTU $UNDERLAY_MTU, containers MTU $((UNDERLAY_MTU - 50))):
- Kernel: per cell a \`vxlan id 1 dstport 4789 gbp nolearning\` silk-vtep with MAC ee:ee:<VTEP IP>, VTEP IP = the subnet's .0,
  a veth per container (host side \`169.254.0.1 peer CIP/32\`), route + permanent neighbour + fdb entry per remote cell, ip_forward on,
  as Silk builds a cell (bench/lib/kernel.sh). No iptables policy rules (so this is a lower bound on Silk's per-packet cost).
- Tapestry: \`tapestry control\`, two \`tapestry cell\` processes, \`tapestry container up\`, one policy allowing the bench ports (tcp+udp 5201-5210).
- Client in the container on cell 1, server in the container on cell 2. Before any number a 50 MB random file goes across with socat
  and its sha256 is compared at the far end. Runs alternate kernel/Tapestry; each figure is the median of $RUNS runs.
- Throughput: iperf3 $( [ $QUICK = 1 ] && echo "-t 3" || echo "-t 10"), receiver side. UDP: \`iperf3 -u -l 64 -b 0\`, packets received per second (sent minus lost);
  the "sent" row is how fast the sender got rid of them (a write into a TAP is cheaper than the kernel forwarding in line), the received row is what counts.
- Latency: bench/lib/tcp_rr.py, 1-byte request and response on one TCP connection with TCP_NODELAY, $RR_COUNT round trips per run;
  ping ($PING_COUNT echoes at 5 ms) for the kernel only, since Tapestry denies ICMP echo by design.
- CPU per GiB, during the single-flow TCP runs: kernel = system+softirq time of all CPUs from /proc/stat; Tapestry = utime+stime of
  both cell processes from /proc/PID/stat. The whole-machine row (user+system+softirq, all CPUs, iperf3 included) compares like with like.$CELLS_IDLE_NOTE
MD
)

echo
echo "$SECTION"

if [ $WRITE = 1 ]; then
    write_section "$ROOT/BENCHMARKS.md" "$TITLE" "$SECTION"
fi
