#!/usr/bin/env bash
# Egress and net-in benchmark: a container's TCP to an address outside the overlay, and TCP from
# outside to a container's mapped port, through Tapestry's cell (egress: terminated in the cell's
# local stack and carried on a host socket from the cell's underlay IP, if an ASG allows it;
# net-in: `container up --net-in H:C`, the cell listens on its underlay IP port H) and through the
# kernel as Cloud Foundry does it (iptables MASQUERADE + an ASG chain, DNAT for net-in), in the
# same run on the same machine, with the ratio printed. Measured, each as a median of --runs:
#   egress_tcp     one TCP flow, the container sends to an external host (Gbit/s, CPU per GiB)
#   egress_tcp_rx  the same, the container receives (iperf3 -R: a download)
#   egress_cps     TCP connections per second from the container (bench/src/bin/tcp_cps.rs)
#   netin_tcp      one TCP flow from an external host to CELL_IP:61001 -> container:8080
#
#   sudo bench/egress.sh [--quick] [--tapestry PATH] [--runs N] [--only LIST] [--kernel-only]
#                        [--duration S] [--cps-concurrency N] [--cell-arg A]... [--no-write] [--note TEXT]
#
#   --quick              2 s per run instead of 5 s
#   --tapestry P         use this tapestry binary (default: cargo build --release, then target/release/tapestry)
#   --runs N             runs per measurement (default 3); the median is reported
#   --only LIST          measure only these (comma-separated, names above); implies --no-write
#   --kernel-only        measure the kernel reference alone (no Tapestry); implies --no-write
#   --duration S         seconds per run (iperf3 -t and the connection loop; default 5, 2 with --quick)
#   --cps-concurrency N  connection loops in parallel in the container (default 1)
#   --cell-arg A         pass A to `tapestry cell` (repeatable)
#   --cps-bin P          use this tcp-cps binary (default: cargo build --release -p tapestry-bench --bin tcp-cps)
#   --no-write           print the table and the markdown but leave BENCHMARKS.md alone
#   --note TEXT          a line added to the BENCHMARKS.md section
#
# Topology (namespaces prefixed tpbe-, all removed on every exit path), on one bridge underlay
# (tpbe-ul, 198.18.0.0/24, MTU 1500; containers MTU 1450):
#   kernel:   cell tpbe-k1 (198.18.0.1, ip_forward, iptables) -- veth -- container tpbe-kc1
#             (10.254.1.2); external host tpbe-kx (198.18.0.101)
#   Tapestry: control plane tpbe-tctl (198.18.0.10), cell tpbe-t1 (198.18.0.11, `tapestry cell`),
#             container tpbe-tc1 (`tapestry container up --net-in 61001:8080`), a global running
#             ASG allowing all; external host tpbe-tx (198.18.0.111)
# The external hosts have no route to the overlay: every reply goes back through the cell's NAT
# or socket. Egress: client in the container, server (iperf3 -s; tcp-cps server, which accepts
# and closes) on the external host. Net-in: iperf3 -s on port 8080 in the container, client on
# the external host to CELL_UNDERLAY_IP:61001. Before any number a 50 MB random file goes each
# way (egress: container -> external; net-in: external -> container) and its sha256 is compared.
#
# If a Tapestry measurement cannot be made (build, start-up, no connection, a run failing), the
# kernel side is still measured, the table says why Tapestry is n/a, BENCHMARKS.md is not
# written and the script exits 1 with the reasons. Every command has a time limit.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PREFIX=tpbe

QUICK=0; TAPESTRY=""; RUNS=3; WRITE=1; CELL_ARGS=(); NOTE=""; ONLY=""; KONLY=0; DUR=""
CPS_CONC=1; CPS_BIN=""
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --tapestry) TAPESTRY=${2:?--tapestry needs a path}; shift ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --only) ONLY=",${2:?--only needs a list},"; WRITE=0; shift ;;
        --kernel-only) KONLY=1; WRITE=0 ;;
        --duration) DUR=${2:?--duration needs seconds}; shift ;;
        --cps-concurrency) CPS_CONC=${2:?--cps-concurrency needs a number}; shift ;;
        --cell-arg) CELL_ARGS+=("${2:?--cell-arg needs a value}"); shift ;;
        --cps-bin) CPS_BIN=${2:?--cps-bin needs a path}; shift ;;
        --no-write) WRITE=0 ;;
        --note) NOTE=${2:?--note needs text}; shift ;;
        -h|--help) sed -n '2,44p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for m in ${ONLY//,/ }; do
    case $m in egress_tcp|egress_tcp_rx|egress_cps|netin_tcp) ;; *) echo "--only: unknown measurement $m (egress_tcp,egress_tcp_rx,egress_cps,netin_tcp)" >&2; exit 2 ;; esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
[[ $CPS_CONC =~ ^[1-9][0-9]*$ ]] || { echo "--cps-concurrency must be a positive integer" >&2; exit 2; }
[ -z "$DUR" ] && { if [ $QUICK = 1 ]; then DUR=2; else DUR=5; fi; }
[[ $DUR =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a positive integer" >&2; exit 2; }

SHOWN=()
[ $QUICK = 1 ] && SHOWN+=(--quick)
[ -n "$TAPESTRY" ] && SHOWN+=(--tapestry "$TAPESTRY")
[ "$RUNS" != 3 ] && SHOWN+=(--runs "$RUNS")
[ -n "$ONLY" ] && SHOWN+=(--only "$(echo "$ONLY" | sed 's/^,//; s/,$//')")
[ $KONLY = 1 ] && SHOWN+=(--kernel-only)
if { [ $QUICK = 1 ] && [ "$DUR" != 2 ]; } || { [ $QUICK = 0 ] && [ "$DUR" != 5 ]; }; then SHOWN+=(--duration "$DUR"); fi
[ "$CPS_CONC" != 1 ] && SHOWN+=(--cps-concurrency "$CPS_CONC")
for a in ${CELL_ARGS[@]+"${CELL_ARGS[@]}"}; do SHOWN+=(--cell-arg "$a"); done
CMDLINE="bench/egress.sh${SHOWN[*]:+ ${SHOWN[*]}}"

UNDERLAY_MTU=1500
WATCHDOG_S=$((600 + RUNS * 3 * (DUR + 40)))

. "$HERE/lib/common.sh"
. "$HERE/lib/kernel.sh"
. "$HERE/lib/tapestry.sh"

[ "$(id -u)" = 0 ] || die "this needs root (network namespaces): sudo $CMDLINE"

# Tools
missing=()
for tool in iperf3:iperf3 socat:socat iptables:iptables python3:python3 curl:curl ip:iproute2 ss:iproute2 timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null ||
        { t 300 apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "could not install ${missing[*]}"
fi

W=$(mktemp -d /tmp/tpbe.XXXXXX)
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

wanted() { [ -z "$ONLY" ] || [[ $ONLY == *",$1,"* ]]; }
METRICS=()
for m in egress_tcp egress_tcp_rx egress_cps netin_tcp; do wanted "$m" && METRICS+=("$m"); done

# Tapestry's failure reasons: TF[all] for the whole side, TF[METRIC] for one measurement.
declare -A TF
tfail() { # KEY REASON
    [ -n "${TF[$1]:-}" ] && return 0
    TF[$1]=$2
    log "tapestry: ${1/all/everything} n/a ($2)"
}
tok() { [ $KONLY = 0 ] && [ -z "${TF[all]:-}" ] && [ -z "${TF[$1]:-}" ]; }

# Binaries: tapestry (unless --kernel-only) and tcp-cps, built in release mode unless given.
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ $KONLY = 1 ]; then
    :
elif [ -z "$TAPESTRY" ]; then
    if command -v cargo >/dev/null; then
        log "building tapestry (cargo build --release --bin tapestry)"
        if (cd "$ROOT" && t 1800 cargo build --release --bin tapestry) >"$W/build.log" 2>&1; then
            TAPESTRY=$TDIR/release/tapestry
        else
            tfail all "build failed: $(grep -m1 '^error' "$W/build.log" | cut -c1-160)"
        fi
    else
        tfail all "cargo not found; pass --tapestry PATH"
    fi
fi
[ $KONLY = 0 ] && [ -z "${TF[all]:-}" ] && [ ! -x "$TAPESTRY" ] && tfail all "no tapestry binary at $TAPESTRY"
if wanted egress_cps && [ -z "$CPS_BIN" ]; then
    command -v cargo >/dev/null || die "cargo not found: pass --cps-bin PATH (bench/src/bin/tcp_cps.rs)"
    log "building tcp-cps (cargo build --release -p tapestry-bench --bin tcp-cps)"
    (cd "$ROOT" && t 1800 cargo build --release -p tapestry-bench --bin tcp-cps) >"$W/build-cps.log" 2>&1 ||
        die "building tcp-cps failed: $(grep -m1 '^error' "$W/build-cps.log" | cut -c1-160)"
    CPS_BIN=$TDIR/release/tcp-cps
fi
wanted egress_cps && { [ -x "$CPS_BIN" ] || die "no tcp-cps binary at $CPS_BIN"; }

# (&&: if Ctrl-C kills the sleep too, the watchdog must not go on to signal us mid-cleanup)
( sleep "$WATCHDOG_S" && touch "$W/watchdog" && kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

# Per side: CNS container namespace, XNS external namespace, XIP its address, HIP the cell's
# underlay address and HPORT the host port (net-in target).
NETIN_HOST_PORT=61001 # net-in: cell underlay port ...
NETIN_CPORT=8080      # ... to this container port
K_CNS=$PREFIX-kc1; K_XNS=$PREFIX-kx; K_XIP=198.18.0.101; K_HIP=198.18.0.1; K_HPORT=$NETIN_HOST_PORT
T_CNS=$PREFIX-tc1; T_XNS=$PREFIX-tx; T_XIP=198.18.0.111; T_HIP=198.18.0.11; T_HPORT=$NETIN_HOST_PORT
side_vars() { # SIDE -> CNS XNS XIP HIP HPORT
    local s=${1^^} v
    for v in CNS XNS XIP HIP HPORT; do local n=${s}_$v; printf -v "$v" '%s' "${!n}"; done
}
EGRESS_PORT=5201      # iperf3 on the external host
CPS_PORT=5301         # tcp-cps server on the external host
XFER_PORT=5401        # integrity transfers on the external host
ASG_RULES='[{"protocol":"all","destination":"0.0.0.0/0","description":"bench: everything"}]'

# Both sides: a wide ephemeral port range in the container (the connection loop opens tens of
# thousands of connections; the server closes first, so TIME_WAIT is on the external host).
wide_ports() { ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"; }

# The kernel reference, approximately as silk-cni and garden-external-networker set up one
# container with a wide-open ASG and one net-in mapping.
kernel_egress_build() {
    local ns=$PREFIX-k1 cip=$K_OVERLAY.1.2
    kernel_cell 1 "$K_HIP" && kernel_container 1 && host_add "$K_XNS" "$K_XIP" || return 1
    ipt() { ip netns exec "$ns" iptables -w 5 "$@"; }
    # egress: source NAT to the cell's address for traffic leaving the overlay
    ipt -t nat -A POSTROUTING -s "$cip/32" ! -d "$K_OVERLAY.0.0/16" -j MASQUERADE || return 1
    # the container's ASG chain: established traffic, then the ASG rules, then reject
    ipt -N netout--bench && ipt -A FORWARD -s "$cip/32" -o ul0 -j netout--bench &&
        ipt -A netout--bench -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT &&
        ipt -A netout--bench -m iprange --dst-range 0.0.0.0-255.255.255.255 -j ACCEPT &&
        ipt -A netout--bench -j REJECT --reject-with icmp-port-unreachable || return 1
    # net-in: DNAT from the cell's address and host port to the container
    ipt -t nat -N netin--bench && ipt -t nat -A PREROUTING -j netin--bench &&
        ipt -t nat -A netin--bench -d "$K_HIP/32" -p tcp --dport "$NETIN_HOST_PORT" \
            -j DNAT --to-destination "$cip:$NETIN_CPORT" || return 1
    wide_ports "$K_CNS"
}

t_cli() { # tapestry CLI against the control plane, from the control plane's namespace
    nsx "$PREFIX-tctl" 30 "$TAPESTRY" "$@" --api "http://$T_CTL_IP:4002" --token-file "$W/control/admin.token"
}

# One cell with one container, a global running ASG allowing everything, and (if measured) a
# net-in mapping. The cell listens for net-in on its underlay IP (the default).
T_NETIN_ARGS=()
tapestry_egress_build() {
    local out
    tapestry_control "$TAPESTRY" "$W" && tapestry_cell "$TAPESTRY" "$W" 1 "$T_HIP" &&
        tapestry_cell_wait "$W" 1 "${T_CELL_PIDS[0]}" || { tfail all "$TFAIL"; return 1; }
    echo "$ASG_RULES" >"$W/asg.json"
    out=$(t_cli asg create bench-open "$W/asg.json" 2>&1) || { tfail all "tapestry asg create failed: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
    out=$(t_cli asg bind bench-open --global --lifecycle running 2>&1) || { tfail all "tapestry asg bind failed: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
    wanted netin_tcp && T_NETIN_ARGS=(--net-in "$NETIN_HOST_PORT:$NETIN_CPORT")
    if ! tapestry_container_up "$TAPESTRY" "$W" 1 bench-a ${T_NETIN_ARGS[@]+"${T_NETIN_ARGS[@]}"}; then
        if [ ${#T_NETIN_ARGS[@]} -gt 0 ] && grep -q -- "--net-in" "$W/container-up1.log"; then
            # This tapestry refuses `container up --net-in` (not there yet, or another syntax):
            # net-in is n/a, egress is measured on a container attached without it.
            tfail netin_tcp "\`tapestry container up ... ${T_NETIN_ARGS[*]}\` failed: $(grep -m1 -i 'error' "$W/container-up1.log" | cut -c1-160)"
            ip netns del "$T_CNS" 2>/dev/null
            TFAIL=""
            tapestry_container_up "$TAPESTRY" "$W" 1 bench-a || { tfail all "$TFAIL"; return 1; }
        else
            tfail all "$TFAIL"; return 1
        fi
    fi
    if [ ${#T_NETIN_ARGS[@]} -gt 0 ] && [ -z "${TF[netin_tcp]:-}" ]; then
        # the host port the cell reports for the mapping (the one asked for)
        T_HPORT=$(python3 - "$W/container-up1.out" "$NETIN_CPORT" <<'PY'
import json, sys
text = open(sys.argv[1]).read()
j = json.loads(text[text.index("{"):text.rindex("}") + 1])
print(next((m["HostPort"] for m in j.get("mapped_ports", []) if m.get("ContainerPort") == int(sys.argv[2])), ""))
PY
)
        if [ -z "$T_HPORT" ]; then
            tfail netin_tcp "container up --net-in printed no mapped port for $NETIN_CPORT: $(tail -c 200 "$W/container-up1.out" | tr '\n' ' ')"
        elif [ "$T_HPORT" != "$NETIN_HOST_PORT" ]; then
            log "tapestry: the cell mapped host port $T_HPORT, not $NETIN_HOST_PORT as asked; using $T_HPORT"
        fi
    fi
    host_add "$T_XNS" "$T_XIP" || { tfail all "underlay setup failed"; return 1; }
    wide_ports "$T_CNS"
}

# What the cell says about itself, for failure messages: non-zero drops, ASG errors, the port's ASG.
cell_diag() {
    t 10 "$TAPESTRY" cell status --state-dir "$W/t1" --json >"$W/cell-status.json" 2>/dev/null
    python3 - "$W/cell-status.json" <<'PY' 2>/dev/null | cut -c1-400
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    print("cell status unavailable"); sys.exit()
drops = ", ".join(f"{k}={v}" for k, v in sorted(j.get("drops", {}).items()) if v) or "none"
ports = j.get("ports") or [{}]
asg = json.dumps(ports[0].get("asg"))
print(f"cell drops: {drops}; asg_errors: {j.get('asg_errors')}; the container's asg: {asg}; feed version {j.get('feed_version')}")
PY
}

log "work dir $W; $DUR s per run, $RUNS runs each, median reported; measuring: ${METRICS[*]}"
underlay_add || die "could not create the underlay"
log "kernel reference: cell with MASQUERADE, an ASG chain and a DNAT net-in rule; one container; an external host"
kernel_egress_build || die "could not build the kernel reference topology"
if [ $KONLY = 0 ] && [ -z "${TF[all]:-}" ]; then
    log "tapestry: control plane, one cell, ASG bench-open (all, 0.0.0.0/0, global running), one container$(wanted netin_tcp && echo " with --net-in $NETIN_HOST_PORT:$NETIN_CPORT")"
    tapestry_egress_build || true
fi
SIDES=(k)
[ $KONLY = 0 ] && [ -z "${TF[all]:-}" ] && SIDES+=(t)

# xfer SIDE WHAT LNS LPORT CNS ADDR: a 50 MB random file from the connecting side (CNS, to
# ADDR) to the listening side (LNS, port LPORT), sha256 compared; the listener's view of the
# client's address is left in XFER_PEER. Fails with XFER_ERR.
head -c 50000000 /dev/urandom >"$W/payload"
PAYLOAD_SHA=$(sha256sum <"$W/payload" | cut -d' ' -f1)
xfer() {
    local side=$1 what=$2 lns=$3 lport=$4 cns=$5 addr=$6 recv=$W/recv pid got
    rm -f "$recv"
    bg "$lns" "$W/xfer-recv.$side.$what.log" timeout 90 socat -d -d -u "TCP-LISTEN:$lport,reuseaddr" "OPEN:$recv,creat,trunc"
    pid=$BG_PID
    wait_listen "$lns" "$lport" 10 || { stop_pid "$pid"; XFER_ERR="socat receiver did not start"; return 1; }
    if ! nsx "$cns" 60 socat -u "OPEN:$W/payload" "TCP:$addr,connect-timeout=5" 2>"$W/xfer-send.$side.$what.log"; then
        stop_pid "$pid"
        XFER_ERR="socat transfer to $addr failed: $(last_line "$W/xfer-send.$side.$what.log")"; return 1
    fi
    for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    stop_pid "$pid"
    XFER_PEER=$(grep -o 'accepting connection from AF=2 [0-9.]*' "$W/xfer-recv.$side.$what.log" | awk '{print $NF}' | head -n 1)
    got=$(sha256sum <"$recv" 2>/dev/null | cut -d' ' -f1)
    if [ "$PAYLOAD_SHA" != "$got" ]; then
        XFER_ERR="sha256 mismatch: received $(stat -c %s "$recv" 2>/dev/null || echo 0) of 50000000 bytes"
        return 1
    fi
    rm -f "$recv"
}

# Reachability and integrity before any number. A Tapestry failure names the cell's view.
declare -A PEER
check_side() {
    local side=$1 pid
    side_vars "$side"
    if wanted egress_tcp || wanted egress_tcp_rx || wanted egress_cps; then
        if ! { [ "$side" = t ] && [ -n "${TF[egress]:-}" ]; }; then
            bg "$XNS" "$W/probe.$side.log" timeout 60 python3 "$HERE/lib/tcp_rr.py" server "$XFER_PORT" --timeout 30
            pid=$BG_PID
            wait_listen "$XNS" "$XFER_PORT" 10
            if ! wait_tcp "$CNS" "$XIP" "$XFER_PORT" 20; then
                stop_pid "$pid"
                [ "$side" = k ] && die "kernel reference: no TCP connection from the container to $XIP:$XFER_PORT"
                tfail egress "no egress TCP connection from the container to $XIP:$XFER_PORT within 20 s of binding the ASG ($(cell_diag))"
            else
                stop_pid "$pid"
                if xfer "$side" egress "$XNS" "$XFER_PORT" "$CNS" "$XIP:$XFER_PORT"; then
                    log "  $side: egress: 50 MB container -> external verified (sha256), external saw the client as $XFER_PEER"
                    PEER[$side.egress]=$XFER_PEER
                else
                    [ "$side" = k ] && die "kernel reference: egress integrity check failed: $XFER_ERR"
                    tfail egress "egress integrity check failed: $XFER_ERR"
                fi
            fi
        fi
    fi
    if wanted netin_tcp && ! { [ "$side" = t ] && [ -n "${TF[netin_tcp]:-}" ]; }; then
        bg "$CNS" "$W/probe-netin.$side.log" timeout 60 python3 "$HERE/lib/tcp_rr.py" server "$NETIN_CPORT" --timeout 30
        pid=$BG_PID
        wait_listen "$CNS" "$NETIN_CPORT" 10
        if ! wait_tcp "$XNS" "$HIP" "$HPORT" 20; then
            stop_pid "$pid"
            [ "$side" = k ] && die "kernel reference: no net-in TCP connection from the external host to $HIP:$HPORT"
            tfail netin_tcp "no net-in TCP connection from the external host to $HIP:$HPORT within 20 s ($(cell_diag))"
        else
            stop_pid "$pid"
            if xfer "$side" netin "$CNS" "$NETIN_CPORT" "$XNS" "$HIP:$HPORT"; then
                PEER[$side.netin]=$XFER_PEER
                log "  $side: net-in: 50 MB external -> container verified (sha256), the container saw the client as $XFER_PEER$([ "$XFER_PEER" = "$XIP" ] && echo ' (source preserved)' || echo " (NOT the external host's $XIP)")"
            else
                [ "$side" = k ] && die "kernel reference: net-in integrity check failed: $XFER_ERR"
                tfail netin_tcp "net-in integrity check failed: $XFER_ERR"
            fi
        fi
    fi
}
for side in "${SIDES[@]}"; do check_side "$side"; done
[ -n "${TF[egress]:-}" ] && { TF[egress_tcp]=${TF[egress]}; TF[egress_tcp_rx]=${TF[egress]}; TF[egress_cps]=${TF[egress]}; }

HZ=$(getconf CLK_TCK)
declare -A VALS   # "side.metric" -> space-separated samples
add_val() { VALS[$1.$2]="${VALS[$1.$2]:-} $3"; }
cpu_line() { awk '/^cpu /{print $2, $3, $4, $5, $6, $7, $8, $9; exit}' /proc/stat; }
cell_ticks() { if [ "$1" = t ]; then tapestry_cell_ticks; else echo 0; fi; }

# cpu_per SIDE OUT C0 C1 K0 K1 UNITS: "dataplane machine" CPU seconds per UNITS (of whatever the
# caller divides by): kernel dataplane = system+softirq of all CPUs (/proc/stat), Tapestry
# dataplane = utime+stime of the cell process; machine = user+nice+system+irq+softirq of all CPUs.
cpu_per() {
    python3 - "$@" "$HZ" <<'PY'
import sys
side, c0, c1, k0, k1, units, hz = sys.argv[1:]
hz = int(hz); units = float(units)
d = [b - a for a, b in zip(map(int, c0.split()), map(int, c1.split()))]
user, nice, system, idle, iowait, irq, softirq, steal = d
dp = (system + softirq) / hz if side == "k" else (int(k1) - int(k0)) / hz
allcpu = (user + nice + system + irq + softirq) / hz
print(f"{dp / units:.4f} {allcpu / units:.4f}")
PY
}

# iperf_run SIDE KIND RUN SERVER_NS SERVER_PORT CLIENT_NS ADDR PORT [CLIENT_ARGS...]: one iperf3 single-flow run
# against a fresh one-shot server; adds KIND (Gbit/s) and KIND_cpu_dp / KIND_cpu_all (s/GiB).
iperf_run() {
    local side=$1 kind=$2 run=$3 sns=$4 sport=$5 cns=$6 addr=$7 port=$8
    shift 8
    local out=$W/iperf.$kind.$side.$run.json pid rc c0 c1 k0 k1 r gib
    bg "$sns" "$W/iperf3-server.$kind.$side.log" timeout $((DUR + 40)) iperf3 -s -1 -p "$sport"
    pid=$BG_PID
    wait_listen "$sns" "$sport" 10 || { stop_pid "$pid"; RUN_ERR="iperf3 server did not start"; return 1; }
    c0=$(cpu_line); k0=$(cell_ticks "$side")
    nsx "$cns" $((DUR + 30)) iperf3 -c "$addr" -p "$port" -t "$DUR" --connect-timeout 5000 -J "$@" >"$out" 2>&1
    rc=$?
    c1=$(cpu_line); k1=$(cell_ticks "$side")
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
    stop_pid "$pid"
    r=$(python3 - "$out" <<'PY'
import json, sys
try:
    j = json.load(open(sys.argv[1]))
except Exception:
    sys.exit(open(sys.argv[1]).read().strip().replace("\n", " ")[:200] or "no output")
if "error" in j:
    sys.exit(j["error"])
s = j["end"]["sum_received"]
print(f'{s["bits_per_second"] / 1e9:.3f} {s["bytes"] / 2**30:.6f}')
PY
) || { RUN_ERR="iperf3 (exit $rc): $r"; return 1; }
    set -- $r
    gib=$2
    add_val "$side" "$kind" "$1"
    r=$(cpu_per "$side" "$c0" "$c1" "$k0" "$k1" "$gib")
    set -- "$1" $r
    add_val "$side" "${kind}_cpu_dp" "$2"; add_val "$side" "${kind}_cpu_all" "$3"
    log "  $side $kind run $run: $1 Gbit/s, CPU $2 s/GiB (dataplane), $3 s/GiB (machine)"
}

egress_tcp() { side_vars "$1"; iperf_run "$1" egress_tcp "$2" "$XNS" "$EGRESS_PORT" "$CNS" "$XIP" "$EGRESS_PORT"; }
# the container opens the connection and receives (a download from outside)
egress_tcp_rx() { side_vars "$1"; iperf_run "$1" egress_tcp_rx "$2" "$XNS" "$EGRESS_PORT" "$CNS" "$XIP" "$EGRESS_PORT" -R; }
netin_tcp() { side_vars "$1"; iperf_run "$1" netin_tcp "$2" "$CNS" "$NETIN_CPORT" "$XNS" "$HIP" "$HPORT"; }

# egress_cps SIDE RUN: connections per second from the container to the external host's
# accept-and-close server; also the median connect-to-close time and CPU per 1000 connections.
egress_cps() {
    local side=$1 run=$2 pid out rc c0 c1 k0 k1 r
    side_vars "$side"
    bg "$XNS" "$W/cps-server.$side.log" "$CPS_BIN" server --listen "$XIP:$CPS_PORT" --lifetime-s $((DUR + 60))
    pid=$BG_PID
    wait_listen "$XNS" "$CPS_PORT" 10 || { stop_pid "$pid"; RUN_ERR="tcp-cps server did not start: $(last_line "$W/cps-server.$side.log")"; return 1; }
    c0=$(cpu_line); k0=$(cell_ticks "$side")
    out=$(nsx "$CNS" $((DUR + 20)) "$CPS_BIN" client --connect "$XIP:$CPS_PORT" --duration-s "$DUR" \
        --concurrency "$CPS_CONC" --timeout-ms 2000 2>&1)
    rc=$?
    c1=$(cpu_line); k1=$(cell_ticks "$side")
    stop_pid "$pid"
    r=$(OUT=$out python3 - <<'PY' 2>&1
import json, os
try:
    j = json.loads(os.environ["OUT"].strip().splitlines()[-1])
except Exception:
    raise SystemExit("no result")
print(f"{j['per_second']:.0f} {j['median_us']:.0f} {j['connections']} {j['errors']} {j['first_error'] or ''}".strip())
PY
) || { RUN_ERR="tcp-cps client (exit $rc): $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
    set -- $r
    local cps=$1 med=$2 n=$3 errs=$4; shift 4
    if [ "$rc" != 0 ] || [ "$n" = 0 ]; then RUN_ERR="no connection succeeded ($errs errors: $*)"; return 1; fi
    # more than 1 % failed connections: the rate is not a connection rate
    if [ $((errs * 100)) -gt "$n" ]; then RUN_ERR="$errs of $((n + errs)) connections failed (first: $*)"; return 1; fi
    r=$(cpu_per "$side" "$c0" "$c1" "$k0" "$k1" "$(awk -v n="$n" 'BEGIN{print n / 1000}')")
    set -- $r
    add_val "$side" egress_cps "$cps"; add_val "$side" egress_cps_med "$med"
    add_val "$side" egress_cps_cpu_dp "$1"; add_val "$side" egress_cps_cpu_all "$2"
    log "  $side egress_cps run $run: $cps connections/s ($n, $errs failed), median ${med} us, CPU $1 s per 1000 (dataplane), $2 (machine)"
}

# measure METRIC: RUNS runs of each side, interleaved; a Tapestry run that fails marks the metric n/a.
measure() {
    local m=$1 r side
    for r in $(seq 1 "$RUNS"); do
        for side in "${SIDES[@]}"; do
            [ "$side" = t ] && ! tok "$m" && continue
            RUN_ERR=""
            if ! "$m" "$side" "$r"; then
                [ "$side" = k ] && die "kernel reference: $m run $r failed: $RUN_ERR"
                if ! alive "${T_CELL_PIDS[0]}"; then
                    tfail all "the cell exited during $m: $(last_line "$W/cell1.log")"
                else
                    tfail "$m" "run $r failed: $RUN_ERR ($(cell_diag))"
                fi
            fi
        done
    done
}

LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
for m in "${METRICS[@]}"; do
    case $m in
        egress_tcp) log "egress TCP, one flow, container -> external host" ;;
        egress_tcp_rx) log "egress TCP, one flow, container <- external host (the container connects, iperf3 -R)" ;;
        egress_cps) log "egress TCP connections per second, $CPS_CONC loop(s), container -> external accept-and-close server" ;;
        netin_tcp) log "net-in TCP, one flow, external host -> cell:$NETIN_HOST_PORT -> container:$NETIN_CPORT" ;;
    esac
    measure "$m"
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The table
med() { median ${VALS[$1.$2]:-}; }
# treason METRIC: why Tapestry has no figure for METRIC ("" if it has one)
treason() {
    if [ $KONLY = 1 ]; then echo "not measured (--kernel-only)"
    elif [ -n "${TF[all]:-}" ]; then echo "${TF[all]}"
    else echo "${TF[$1]:-}"; fi
}
SHOWN_REASON=()
row() { # LABEL GROUP METRIC DECIMALS [lower]
    local label=$1 group=$2 metric=$3 dec=$4 k t r why
    wanted "$group" || return 0
    k=$(med k "$metric")
    why=$(treason "$group")
    if [ -n "$why" ]; then
        # each reason once, then plain n/a
        if [[ " ${SHOWN_REASON[*]} " == *" $(echo "$why" | cksum | cut -d' ' -f1) "* ]]; then
            t="n/a"
        else
            t="n/a ($(echo "$why" | tr '|' '/'))"
            SHOWN_REASON+=("$(echo "$why" | cksum | cut -d' ' -f1)")
        fi
    else
        t=$(med t "$metric")
    fi
    r=$(ratio "$t" "$k")
    printf '| %s | %s | %s | %s |\n' "$label" "$(fmt "$k" "$dec")" "$(fmt "$t" "$dec")" "$r"
}

TABLE=$(
    echo "| Metric (median of $RUNS runs) | Kernel (iptables MASQUERADE / DNAT) | Tapestry | Tapestry / kernel |"
    echo "|---|---|---|---|"
    row "Egress TCP, 1 flow, container sends (Gbit/s)" egress_tcp egress_tcp 2
    row "Egress TCP, 1 flow, container receives (Gbit/s)" egress_tcp_rx egress_tcp_rx 2
    row "Egress TCP connections per second" egress_cps egress_cps 0
    row "Egress TCP connect-to-close, median (us)" egress_cps egress_cps_med 0
    row "Net-in TCP, 1 flow (Gbit/s)" netin_tcp netin_tcp 2
    row "CPU s per GiB, egress, dataplane (kernel: system+softirq; Tapestry: cell process)" egress_tcp egress_tcp_cpu_dp 2
    row "CPU s per GiB, egress, whole machine" egress_tcp egress_tcp_cpu_all 2
    row "CPU s per GiB, egress (container receives), dataplane" egress_tcp_rx egress_tcp_rx_cpu_dp 2
    row "CPU s per GiB, egress (container receives), whole machine" egress_tcp_rx egress_tcp_rx_cpu_all 2
    row "CPU s per GiB, net-in, dataplane (kernel: system+softirq; Tapestry: cell process)" netin_tcp netin_tcp_cpu_dp 2
    row "CPU s per GiB, net-in, whole machine" netin_tcp netin_tcp_cpu_all 2
    row "CPU s per 1000 connections, dataplane" egress_cps egress_cps_cpu_dp 3
    row "CPU s per 1000 connections, whole machine" egress_cps egress_cps_cpu_all 3
)

NOTE_LINE=""
[ -n "$NOTE" ] && NOTE_LINE=$'\n'"$NOTE"
BUSY_NOTE=""
if awk -v l="${LOADAVG_START%% *}" -v n="$(nproc)" 'BEGIN{exit !(l > n / 2)}'; then
    BUSY_NOTE=$'\n\n'"**Caution:** the machine was busy with other work when this ran (1-minute load average ${LOADAVG_START%% *} on $(nproc) CPUs), so absolute figures are low and noisy and the CPU rows include that work (all of them but Tapestry's dataplane row are read from /proc/stat); the ratios, measured interleaved in the same run, are the meaningful part."
fi
peer_note() {
    local s=$1 ip=$2
    if [ -z "${PEER[$s.netin]:-}" ]; then echo "not checked"
    elif [ "${PEER[$s.netin]}" = "$ip" ]; then echo "${PEER[$s.netin]} (preserved)"
    else echo "${PEER[$s.netin]}, not the client's $ip"; fi
}
KERNEL=$(uname -r)
CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/{gsub(/^ +/, "", $2); print $2; exit}')
NCPU=$(nproc)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+uncommitted" || true)

SECTION=$(cat <<MD
## Egress and net-in

Produced by \`sudo $CMDLINE\` on $DATE: Linux $KERNEL, $CPU, $NCPU CPUs, checkout $REV$DIRTY
(\`${TAPESTRY:-no tapestry}\`${CELL_ARGS[*]:+ ${CELL_ARGS[*]}}). Load average at start / end of the measurements: $LOADAVG_START / $LOADAVG_END.$NOTE_LINE$BUSY_NOTE

$TABLE

How it is measured (one run builds both sides on one veth/bridge underlay, MTU $UNDERLAY_MTU, containers MTU $((UNDERLAY_MTU - 50)); each side has its own external host on the underlay, with no route to the overlay):
- Kernel: a cell namespace with ip_forward, a veth per container as Silk plumbs it (bench/lib/kernel.sh), and the iptables rules
  silk-cni and garden-external-networker install for one container, approximately: \`nat POSTROUTING -s CIP ! -d overlay -j MASQUERADE\`;
  a \`netout--\` chain from FORWARD (ESTABLISHED/RELATED accept, the ASG as \`-m iprange --dst-range 0.0.0.0-255.255.255.255 -j ACCEPT\`, REJECT);
  a \`netin--\` chain from nat PREROUTING with \`-d CELL_IP -p tcp --dport $NETIN_HOST_PORT -j DNAT --to-destination CIP:$NETIN_CPORT\`.
- Tapestry: \`tapestry control\`, one \`tapestry cell\`, \`tapestry asg create bench-open\` (\`$ASG_RULES\`) and
  \`tapestry asg bind bench-open --global --lifecycle running\`, \`tapestry container up --net-in $NETIN_HOST_PORT:$NETIN_CPORT\`.
- Before any number a 50 MB random file goes container -> external host (egress) and external host -> cell:$NETIN_HOST_PORT -> container (net-in),
  sha256 compared at the far end. The container saw the net-in client as: kernel $(peer_note k "$K_XIP"), Tapestry $(peer_note t "$T_XIP").
- Throughput: iperf3 -t $DUR, one flow, receiver side; egress = client in the container, server on the external host (container sends;
  "container receives" is the same with -R, a download); net-in = server in the container on port $NETIN_CPORT, client on the external
  host to the cell's underlay IP port $NETIN_HOST_PORT, sending.
- Connections per second: bench/src/bin/tcp_cps.rs, $CPS_CONC loop(s) in the container each connecting, waiting for the server's FIN and closing,
  for $DUR s, against an accept-and-close server on the external host (the server closes first, so TIME_WAIT is on the external host).
  A run with more than 1 % failed connections does not count.
- CPU, over each run: kernel "dataplane" = system+softirq time of all CPUs from /proc/stat (this includes the endpoints' own socket work),
  Tapestry "dataplane" = utime+stime of the cell process from /proc/PID/stat; "whole machine" = user+nice+system+irq+softirq of all CPUs
  (endpoints and cell included) compares like with like. Per GiB received by iperf3, or per 1000 successful connections.
- Runs alternate kernel/Tapestry; each figure is the median of $RUNS runs.
MD
)

echo
echo "$SECTION"

FAILS=()
if [ $KONLY = 0 ]; then
    for m in "${METRICS[@]}"; do
        why=$(treason "$m")
        [ -n "$why" ] && FAILS+=("$m: $why")
    done
fi
if [ $WRITE = 1 ] && [ ${#FAILS[@]} -gt 0 ]; then
    log "not writing BENCHMARKS.md: the Tapestry side is incomplete"
elif [ $WRITE = 1 ]; then
    write_section "$ROOT/BENCHMARKS.md" "Egress and net-in" "$SECTION"
fi
if [ ${#FAILS[@]} -gt 0 ]; then
    for f in "${FAILS[@]}"; do log "tapestry: $f"; done
    die "the Tapestry side could not be measured (${#FAILS[@]} of ${#METRICS[@]}); the kernel figures above are complete"
fi
exit 0
