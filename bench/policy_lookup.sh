#!/usr/bin/env bash
# Policy lookup micro-benchmark (issue 4): the per-packet ingress decision (policy lookup +
# connection tracking) with 1k, 100k and 1M policies, as ns per lookup and instructions per lookup.
#
#   bench/policy_lookup.sh [--sizes 1000,100000,1000000] [--reps 5] [--established 96000]
#                          [--binary PATH] [--no-count]
#
# Builds `policy-lookup` (bench/src/bin/policy_lookup/, which describes the cases and paths) in
# release mode, runs its timing mode (median of --reps repetitions, wall clock over 1M lookups,
# 200k for new flows), then counts instructions under valgrind's callgrind: for every case it runs
# K1 = 50k and K2 = 200k lookups between marks and reports (Ir(K2) - Ir(K1)) / (K2 - K1), so
# building the tables cancels out. Hardware counters (`perf stat -e instructions`) are not used
# because they are not available in the VMs this runs on; callgrind counts every instruction.
# Needs no network and no root; temporary files are removed on exit.

set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
SIZES=1000,100000,1000000
REPS=5
ESTABLISHED=96000
K1=50000
K2=200000
BIN=""
COUNT=1
while [ $# -gt 0 ]; do
    case $1 in
        --sizes) SIZES=${2:?}; shift ;;
        --reps) REPS=${2:?}; shift ;;
        --established) ESTABLISHED=${2:?}; shift ;;
        --binary) BIN=${2:?}; shift ;;
        --no-count) COUNT=0 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

if [ -z "$BIN" ]; then
    (cd "$ROOT" && cargo build --release --offline -p tapestry-bench --bin policy-lookup >&2)
    TD=${CARGO_TARGET_DIR:-target}
    case $TD in /*) ;; *) TD=$ROOT/$TD ;; esac
    BIN=$TD/release/policy-lookup
fi
[ -x "$BIN" ] || { echo "no binary at $BIN" >&2; exit 1; }

TMP=$(mktemp -d "${TMPDIR:-/tmp}/policy-lookup.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

CPU=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(uname -sr), $CPU, $(nproc) CPUs," \
    "checkout $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "# load average before: $(cut -d' ' -f1-3 /proc/loadavg)"

"$BIN" --sizes "$SIZES" --reps "$REPS" --established "$ESTABLISHED" >"$TMP/time.tsv"
echo "# load average after timing: $(cut -d' ' -f1-3 /proc/loadavg)"

: >"$TMP/ir.tsv"
if [ "$COUNT" = 1 ]; then
    if command -v valgrind >/dev/null; then
        for n in ${SIZES//,/ }; do
            valgrind --tool=callgrind --dump-before='*interval_mark*' \
                --callgrind-out-file="$TMP/cg.$n" "$BIN" --count --size "$n" \
                --k1 "$K1" --k2 "$K2" --established "$ESTABLISHED" \
                >"$TMP/count.$n" 2>"$TMP/valgrind.$n.log" \
                || { cat "$TMP/valgrind.$n.log" >&2; exit 1; }
            ir() { sed -n 's/^summary: //p' "$TMP/cg.$n.$1"; }
            while IFS=$'\t' read -r _ size path case k1 k2 d1 d2; do
                a=$(ir "$d1"); b=$(ir "$d2")
                printf '%s\t%s\t%s\t%s\n' "$size" "$path" "$case" \
                    "$(( (b - a + (k2 - k1) / 2) / (k2 - k1) ))" >>"$TMP/ir.tsv"
            done <"$TMP/count.$n"
        done
    else
        echo "# valgrind not found (apt-get install valgrind): no instruction counts" >&2
    fi
fi

echo
echo "| N policies | path | case | ns/lookup, median of $REPS (min-max) | instructions/lookup |"
echo "|---:|---|---|---:|---:|"
awk -F'\t' -v OFS='\t' '
    FILENAME == ARGV[1] { ir[$1 FS $2 FS $3] = $4; next }
    $1 == "time" {
        k = $2 FS $3 FS $4
        printf "| %d | %s | %s | %.0f (%.0f-%.0f) | %s |\n", $2, $3, $4, $5, $6, $7, (k in ir ? ir[k] : "n/a")
    }' "$TMP/ir.tsv" "$TMP/time.tsv"
