#!/usr/bin/env bash
# Idle cell memory (issue 4): one `tapestry cell` with N containers attached (default 254, a full
# /24), RSS read from /proc/PID/status once the cell is idle.
#
#   sudo bench/memory.sh [--tapestry PATH] [--containers N] [--no-offload]
#
# Namespaces are prefixed tpm- and removed on every exit path.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PREFIX=tpm
TAPESTRY=""; N=254; CELL_ARGS=()
while [ $# -gt 0 ]; do
    case $1 in
        --tapestry) TAPESTRY=${2:?}; shift ;;
        --containers) N=${2:?}; shift ;;
        --no-offload) CELL_ARGS+=(--no-offload) ;;
        -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done
UNDERLAY_MTU=1500
. "$HERE/lib/common.sh"
[ "$(id -u)" = 0 ] || die "this needs root (network namespaces)"
if [ -z "$TAPESTRY" ]; then
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

underlay_add || die "underlay"
host_add "$PREFIX-ctl" 198.18.0.10 || die "control host"
bg "$PREFIX-ctl" "$W/control.log" "$TAPESTRY" control --data-dir "$W/control" \
    --listen 198.18.0.10:4002 --internal-listen 198.18.0.10:4003
for _ in $(seq 1 300); do [ -s "$W/control/admin.token" ] && break; sleep 0.1; done
[ -s "$W/control/admin.token" ] || die "control plane did not start: $(tail -n 2 "$W/control.log")"
host_add "$PREFIX-c1" 198.18.0.11 || die "cell host"
mkdir -p "$W/cell"
bg "$PREFIX-c1" "$W/cell.log" "$TAPESTRY" cell --control https://198.18.0.10:4003 \
    --credentials "$W/control/cell-credentials" --underlay-ip 198.18.0.11 --state-dir "$W/cell" "${CELL_ARGS[@]}"
CELL=$BG_PID
for _ in $(seq 1 300); do [ -S "$W/cell/cell.sock" ] && break; sleep 0.1; done
[ -S "$W/cell/cell.sock" ] || die "cell did not start: $(tail -n 2 "$W/cell.log")"
rss() { awk '/^VmRSS/{print $2}' "/proc/$CELL/status"; }
log "cell started: RSS $(rss) KiB; attaching $N containers"
for i in $(seq 1 "$N"); do
    ns_add "$PREFIX-k$i" || die "netns $i"
    t 30 "$TAPESTRY" container up --cell-socket "$W/cell/cell.sock" --handle "m$i" --app "app-$((i % 10))" \
        --space mem --netns "/var/run/netns/$PREFIX-k$i" >/dev/null 2>"$W/up.log" ||
        die "container up $i: $(tail -n 1 "$W/up.log")"
done
sleep 5
R=$(rss)
HWM=$(awk '/^VmHWM/{print $2}' "/proc/$CELL/status")
PORTS=$(ls /proc/$CELL/fd | wc -l)
log "idle cell with $N containers: RSS $R KiB ($((R / 1024)) MiB), peak $HWM KiB, $PORTS open fds"
echo "RSS_KIB=$R HWM_KIB=$HWM CONTAINERS=$N"
