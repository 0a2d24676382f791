#!/usr/bin/env bash
# What a full cell costs (issue 15): one `tapestry cell` with N containers attached (default 254,
# a full /24), next to a kernel Silk-style reference with the same number of veth containers,
# measured in the same run on the same machine. For each it reports, in total and per container:
#   - kernel memory: the change in unreclaimable slab (SUnreclaim in /proc/meminfo), in kernel
#     memory that is not slab (VmallocUsed + Percpu: queue arrays, per-CPU device statistics) and
#     in used memory (MemTotal - MemAvailable; noisy on a shared machine, since every other
#     process counts), for the namespaces alone and then for the attachment (TAP or veth,
#     queues, qdiscs, addresses, routes);
#   - user memory: the cell's RSS (the kernel reference has no process on the data path);
#   - the cell's open file descriptors.
#
#   sudo bench/memory.sh [--tapestry PATH] [--containers N] [--no-offload] [--cell-arg ARG]...
#                        [--only tapestry|kernel]
#
# Namespaces are prefixed tpm- and removed on every exit path.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PREFIX=tpm
TAPESTRY=""; N=254; CELL_ARGS=(); ONLY=""
while [ $# -gt 0 ]; do
    case $1 in
        --tapestry) TAPESTRY=${2:?}; shift ;;
        --containers) N=${2:?}; shift ;;
        --no-offload) CELL_ARGS+=(--no-offload) ;;
        --cell-arg) CELL_ARGS+=("${2:?}"); shift ;;
        --only) ONLY=${2:?}; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
case $ONLY in ""|tapestry|kernel) ;; *) echo "--only tapestry|kernel" >&2; exit 2 ;; esac
[ "$N" -ge 1 ] && [ "$N" -le 254 ] 2>/dev/null || { echo "--containers must be 1-254" >&2; exit 2; }
UNDERLAY_MTU=1500
. "$HERE/lib/common.sh"
. "$HERE/lib/kernel.sh"
[ "$(id -u)" = 0 ] || die "this needs root (network namespaces)"
if [ -z "$TAPESTRY" ] && [ "$ONLY" != kernel ]; then
    (cd "$ROOT" && cargo build --release --bin tapestry >&2) || die "build failed"
    TAPESTRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/tapestry
fi

W=$(mktemp -d /tmp/tpm.XXXXXX)
on_exit() {
    local rc=$?
    trap - EXIT; trap '' INT TERM
    bench_cleanup
    rm -rf "$W"
    exit $rc
}
trap on_exit EXIT
trap 'exit 130' INT TERM
bench_cleanup

# meminfo FIELD: kB.
meminfo() { awk -v f="$1:" '$1 == f {print $2}' /proc/meminfo; }
slab() { meminfo SUnreclaim; }
used() { echo $(( $(meminfo MemTotal) - $(meminfo MemAvailable) )); }
kother() { echo $(( $(meminfo VmallocUsed) + $(meminfo Percpu) )); }
# settle: waits (up to 30 s) until SUnreclaim moves by less than 512 kB in a second, so that
# namespaces deleted earlier (the kernel frees them from a work queue) are not counted.
settle() {
    local a b i
    a=$(slab)
    for i in $(seq 1 30); do
        sleep 1; b=$(slab)
        [ $(( a > b ? a - b : b - a )) -lt 512 ] && return 0
        a=$b
    done
}
per() { awk -v t="$1" -v n="$N" 'BEGIN { printf "%.0f", t / n }'; }

# Results, filled in by each side: *_NS_* namespaces alone, *_AT_* the attachment.
declare -A R

# measure SIDE NSNAME ATTACH: creates N namespaces NSNAME1..NSNAMEN, then calls `ATTACH i` for
# each, and records in R[SIDE_ns_*] (the namespaces alone) and R[SIDE_at_*] (the attachments)
# the change in SUnreclaim (slab), VmallocUsed + Percpu (other) and used memory (used).
measure() {
    local side=$1 nsname=$2 attach=$3 i s0 u0 v0 s1 u1 v1 s2 u2 v2
    settle; s0=$(slab); u0=$(used); v0=$(kother)
    for i in $(seq 1 "$N"); do ns_add "$nsname$i" || die "netns $i"; done
    settle; s1=$(slab); u1=$(used); v1=$(kother)
    log "$side: attaching $N containers"
    for i in $(seq 1 "$N"); do "$attach" "$i"; done
    sleep 2; settle; s2=$(slab); u2=$(used); v2=$(kother)
    R[${side}_ns_slab]=$((s1 - s0)); R[${side}_ns_other]=$((v1 - v0)); R[${side}_ns_used]=$((u1 - u0))
    R[${side}_at_slab]=$((s2 - s1)); R[${side}_at_other]=$((v2 - v1)); R[${side}_at_used]=$((u2 - u1))
}

# tapestry_attach I: `tapestry container up` into namespace $PREFIX-tI.
tapestry_attach() {
    local i=$1
    t 30 "$TAPESTRY" container up --cell-socket "$W/cell/cell.sock" --handle "m$i" --app "app-$((i % 10))" \
        --space mem --netns "/var/run/netns/$PREFIX-t$i" >/dev/null 2>"$W/up.log" ||
        die "container up $i: $(tail -n 1 "$W/up.log")"
}

# kernel_attach I: container $PREFIX-kcI behind a veth of the kernel cell $PREFIX-k1, as Silk
# plumbs it: host end 169.254.0.1 peer IP/32, container end with its /32, a link route to the
# gateway and the default route (cf. bench/lib/kernel.sh).
kernel_attach() {
    local i=$1 hns=$PREFIX-k1 cns=$PREFIX-kc$1 cip=$K_OVERLAY.1.$1 mtu=$((UNDERLAY_MTU - 50))
    {
        ip -n "$hns" link add "s-c$i" mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$cns" &&
        ip -n "$hns" addr add 169.254.0.1 peer "$cip/32" dev "s-c$i" &&
        ip -n "$hns" link set "s-c$i" up &&
        ip -n "$cns" addr add "$cip/32" dev eth0 &&
        ip -n "$cns" link set eth0 up &&
        ip -n "$cns" route add 169.254.0.1 dev eth0 scope link &&
        ip -n "$cns" route add default via 169.254.0.1 dev eth0
    } || die "veth container $i"
}

run_tapestry() {
    underlay_add || die "underlay"
    host_add "$PREFIX-ctl" 198.18.0.10 || die "control host"
    bg "$PREFIX-ctl" "$W/control.log" "$TAPESTRY" control --data-dir "$W/control" \
        --listen 198.18.0.10:4002 --internal-listen 198.18.0.10:4003
    for _ in $(seq 1 300); do [ -s "$W/control/admin.token" ] && break; sleep 0.1; done
    [ -s "$W/control/admin.token" ] || die "control plane did not start: $(tail -n 2 "$W/control.log")"
    host_add "$PREFIX-c1" 198.18.0.11 || die "cell host"
    mkdir -p "$W/cell"
    "$TAPESTRY" control cell-credentials --data-dir "$W/control" --underlay-ip 198.18.0.11 \
        --out "$W/cell-creds" >/dev/null || die "issuing the cell's credentials"
    bg "$PREFIX-c1" "$W/cell.log" "$TAPESTRY" cell --control https://198.18.0.10:4003 \
        --credentials "$W/cell-creds" --underlay-ip 198.18.0.11 --state-dir "$W/cell" \
        "${CELL_ARGS[@]}"
    local cell=$BG_PID
    for _ in $(seq 1 300); do [ -S "$W/cell/cell.sock" ] && break; sleep 0.1; done
    [ -S "$W/cell/cell.sock" ] || die "cell did not start: $(tail -n 2 "$W/cell.log")"
    local workers
    workers=$("$TAPESTRY" cell status --state-dir "$W/cell" --json | jq -r '.workers')
    local rss0 fd0
    rss0=$(awk '/^VmRSS/{print $2}' "/proc/$cell/status"); fd0=$(ls "/proc/$cell/fd" | wc -l)
    log "tapestry: cell started ($workers workers, RSS $rss0 KiB); $N namespaces"
    measure t "$PREFIX-t" tapestry_attach
    local rss hwm fds
    rss=$(awk '/^VmRSS/{print $2}' "/proc/$cell/status")
    hwm=$(awk '/^VmHWM/{print $2}' "/proc/$cell/status")
    fds=$(ls "/proc/$cell/fd" | wc -l)
    local q
    q=$(tc -n "$PREFIX-t$N" qdisc show dev eth0 | awk '$1 == "qdisc" {print $2}' | sort | uniq -c | tr -s ' ' | paste -sd, -)
    R[t_rss]=$rss; R[t_rss0]=$rss0; R[t_hwm]=$hwm; R[t_fds]=$fds; R[t_fd0]=$fd0; R[t_workers]=$workers
    log "tapestry: qdiscs on a container TAP:$q"
    bench_cleanup
}

run_kernel() {
    # Silk's cell: silk-vtep (vxlan gbp) in the host namespace, a veth pair per container.
    underlay_add || die "underlay"
    kernel_cell 1 198.18.0.1 || die "kernel cell"
    measure k "$PREFIX-kc" kernel_attach
    bench_cleanup
}

[ "$ONLY" = kernel ] || run_tapestry
settle
[ "$ONLY" = tapestry ] || run_kernel

row() { # name total_kb
    printf '| %-50s | %10s | %9s |\n' "$1" "$2" "$(per "$2")"
}
{
    echo
    echo "$N containers, $(uname -r), $(nproc) CPUs; kB (1024 bytes)"
    printf '| %-50s | %10s | %9s |\n' "what" "total kB" "per cont."
    printf '|%s|%s|%s|\n' "----------------------------------------------------" "------------" "-----------"
    if [ "$ONLY" != kernel ]; then
        row "Tapestry: SUnreclaim, TAPs attached" "${R[t_at_slab]}"
        row "Tapestry: VmallocUsed+Percpu, TAPs attached" "${R[t_at_other]}"
        row "Tapestry: kernel memory (the two above)" "$((R[t_at_slab] + R[t_at_other]))"
        row "Tapestry: used memory, TAPs attached" "${R[t_at_used]}"
        row "Tapestry: cell RSS growth (idle cell ${R[t_rss0]} kB)" "$((R[t_rss] - R[t_rss0]))"
        row "Tapestry: cell fds growth (idle cell ${R[t_fd0]})" "$((R[t_fds] - R[t_fd0]))"
        row "Tapestry: SUnreclaim, empty namespaces" "${R[t_ns_slab]}"
    fi
    if [ "$ONLY" != tapestry ]; then
        row "kernel (Silk-style): SUnreclaim, veths attached" "${R[k_at_slab]}"
        row "kernel (Silk-style): VmallocUsed+Percpu, veths attached" "${R[k_at_other]}"
        row "kernel (Silk-style): kernel memory (the two above)" "$((R[k_at_slab] + R[k_at_other]))"
        row "kernel (Silk-style): used memory, veths attached" "${R[k_at_used]}"
        row "kernel (Silk-style): SUnreclaim, empty namespaces" "${R[k_ns_slab]}"
    fi
    if [ -z "$ONLY" ] && [ "${R[k_at_slab]}" -gt 0 ]; then
        awk -v t="$((R[t_at_slab] + R[t_at_other]))" -v k="$((R[k_at_slab] + R[k_at_other]))" \
            'BEGIN { printf "kernel memory of the attachments, Tapestry / kernel: %.2fx\n", t / k }'
    fi
    [ "$ONLY" = kernel ] || echo "cell: ${R[t_workers]} workers, RSS ${R[t_rss]} kB (peak ${R[t_hwm]} kB), ${R[t_fds]} fds"
} | tee "$W/result"
echo "RESULT containers=$N t_at_slab_kb=${R[t_at_slab]:-} t_at_other_kb=${R[t_at_other]:-} k_at_other_kb=${R[k_at_other]:-} t_at_used_kb=${R[t_at_used]:-} t_rss_kb=${R[t_rss]:-} t_fds=${R[t_fds]:-} k_at_slab_kb=${R[k_at_slab]:-} k_at_used_kb=${R[k_at_used]:-}"
