#!/usr/bin/env bash
# The lab's scale figures: `tapestry lab` with N cells and M containers on both underlays,
# RUNS times each, medians reported (time until every container is reachable by its allowed
# peers, build time, peak memory). No root needed.
#
#   bench/lab.sh [--cells N] [--containers M] [--runs R] [--tapestry PATH] [--no-write]
#
# There is no kernel reference for this one: nothing else starts 50 switches and 500 containers
# in one process. The figure to compare with is the issue's target (under 10 s on 2 cores).

set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
. "$HERE/lib/common.sh"

CELLS=50; CONTAINERS=500; RUNS=5; TAPESTRY=""; WRITE=1
while [ $# -gt 0 ]; do
    case $1 in
        --cells) CELLS=${2:?}; shift ;;
        --containers) CONTAINERS=${2:?}; shift ;;
        --runs) RUNS=${2:?}; shift ;;
        --tapestry) TAPESTRY=${2:?}; shift ;;
        --no-write) WRITE=0 ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "$TAPESTRY" ]; then
    log "building tapestry (cargo build --release --bin tapestry)"
    (cd "$ROOT" && cargo build --release --bin tapestry) >/dev/null 2>&1 || die "build failed"
    TAPESTRY=${CARGO_TARGET_DIR:-$ROOT/target}/release/tapestry
fi

declare -A V
for r in $(seq 1 "$RUNS"); do
    for u in memory loopback; do
        out=$(t 120 "$TAPESTRY" lab --cells "$CELLS" --containers "$CONTAINERS" --underlay "$u" --json) ||
            die "tapestry lab --underlay $u failed: $out"
        for k in ready_ms built_ms peak_rss_kib frames datagrams; do
            V[$u.$k]+="$(jq -r ".$k" <<<"$out") "
        done
        [ "$(jq -r .ok <<<"$out")" = true ] || die "run $r on $u did not converge: $out"
        log "run $r $u: ready after $(jq -r .ready_ms <<<"$out") ms, peak $(jq -r .peak_rss_kib <<<"$out") KiB"
    done
done
med() { median ${V[$1]}; }
row() { printf '| %s | %s | %s |\n' "$1" "$(fmt "$(med memory.$2)" "$3")" "$(fmt "$(med loopback.$2)" "$3")"; }
TABLE=$(
    echo "| Median of $RUNS runs | memory underlay | loopback underlay |"
    echo "|---|---|---|"
    row "Cells, containers and tables built (ms)" built_ms 1
    row "Every container reachable by its allowed peers (ms, from the start)" ready_ms 1
    row "Peak resident memory (KiB)" peak_rss_kib 0
    row "Frames switched" frames 0
    row "Underlay datagrams" datagrams 0
)
SECTION=$(cat <<MD
## Lab: $CELLS cells, $CONTAINERS containers in one process

Produced by \`bench/lab.sh --cells $CELLS --containers $CONTAINERS --runs $RUNS\` on $(date -u '+%Y-%m-%d %H:%M UTC'): Linux $(uname -r), $(nproc) CPUs,
checkout $(git -C "$ROOT" rev-parse --short HEAD), load average at the end $(cut -d' ' -f1-3 /proc/loadavg), as an ordinary process (no privilege).

$TABLE

Each run: $CELLS real switches and $CONTAINERS smoltcp containers; $((CONTAINERS * 2)) policies (each app may reach the next, tcp 8080 and udp 8081); every
container makes one TCP and one UDP exchange with its allowed peer and one TCP attempt at the app after it (denied). "Reachable" is
when the last allowed exchange was answered; every run also checked that no denied attempt got through. No kernel reference: nothing
else runs this topology in one process; the target was under 10 s on 2 cores.
MD
)
echo "$SECTION"
[ $WRITE = 1 ] && write_section "$ROOT/BENCHMARKS.md" "Lab: $CELLS cells, $CONTAINERS containers in one process" "$SECTION"
exit 0
