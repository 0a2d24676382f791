#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of untrusted bytes (fuzz/, cargo-fuzz + libFuzzer).
#
#   scripts/fuzz.sh --smoke SECS        run each target for SECS seconds; fail on any crash
#   scripts/fuzz.sh --long N            run each target for N executions; print executions and
#                                       crashes per target (FUZZING.md records such a run)
#   options: --targets "a b"            only these targets (default: all, see `cargo fuzz list`)
#            --max-time SECS            with --long: stop a target after SECS even before N runs
#            --jobs-nice N              nice level for the fuzzing processes (default 10)
#
# Installs what is missing: cargo-fuzz (`cargo install cargo-fuzz --locked`) and the nightly
# toolchain (`rustup toolchain install nightly --profile minimal`).
#
# The targets are built without a sanitizer (`-s none`): all the code they reach is safe Rust
# (unsafe is confined to sys/, which no target reaches), so AddressSanitizer would only slow them
# down; debug assertions (overflow checks) stay on. Each run starts from the committed seeds in
# fuzz/corpus/TARGET and writes what it discovers to fuzz/target/corpus/TARGET (not committed);
# a crashing input lands in fuzz/artifacts/TARGET/.
set -euo pipefail

cd "$(dirname "$0")/.."

mode=""
amount=""
targets=""
max_time=""
nice_level=10
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke | --long)
            mode="${1#--}"
            amount="${2:?$1 needs a number}"
            shift 2
            ;;
        --targets)
            targets="${2:?--targets needs a list}"
            shift 2
            ;;
        --max-time)
            max_time="${2:?--max-time needs seconds}"
            shift 2
            ;;
        --jobs-nice)
            nice_level="${2:?--jobs-nice needs a number}"
            shift 2
            ;;
        -h | --help)
            sed -n '2,19p' "$0"
            exit 0
            ;;
        *)
            echo "fuzz.sh: unknown argument '$1' (see --help)" >&2
            exit 2
            ;;
    esac
done
if [ -z "$mode" ] || ! [[ "$amount" =~ ^[0-9]+$ ]]; then
    echo "usage: scripts/fuzz.sh --smoke SECS | --long RUNS [--targets \"a b\"] [--max-time SECS]" >&2
    exit 2
fi

if ! rustup run nightly rustc --version > /dev/null 2>&1; then
    echo "fuzz.sh: installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version > /dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if [ -z "$targets" ]; then
    targets="$(cd fuzz && cargo +nightly fuzz list)"
fi

echo "fuzz.sh: building the targets (nightly, no sanitizer)"
nice -n "$nice_level" cargo +nightly fuzz build -s none

logs=fuzz/target/logs
mkdir -p "$logs"
failed=()
summary=()
for t in $targets; do
    work=fuzz/target/corpus/$t
    mkdir -p "$work" "fuzz/artifacts/$t"
    args=(-print_final_stats=1)
    case "$mode" in
        smoke) args+=(-max_total_time="$amount") ;;
        long)
            args+=(-runs="$amount")
            [ -n "$max_time" ] && args+=(-max_total_time="$max_time")
            ;;
    esac
    echo "fuzz.sh: $t (${args[*]})"
    before=$(find "fuzz/artifacts/$t" -type f | wc -l)
    start=$(date +%s)
    set +e
    nice -n "$nice_level" cargo +nightly fuzz run -s none "$t" "$work" "fuzz/corpus/$t" -- "${args[@]}" \
        > "$logs/$t.log" 2>&1
    rc=$?
    set -e
    secs=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$t.log" | tail -1)
    crashes=$(($(find "fuzz/artifacts/$t" -type f | wc -l) - before))
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        crashes=$((crashes > 0 ? crashes : 1))
        tail -40 "$logs/$t.log" >&2
    fi
    line="$t: ${execs:-?} executions, ${crashes} crashes, ${secs}s, $(sed -n 's/^stat::peak_rss_mb: *//p' "$logs/$t.log" | tail -1) MB peak RSS"
    echo "fuzz.sh: $line"
    summary+=("$line")
done

echo
echo "fuzz.sh: summary ($mode $amount)"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz.sh: CRASH in: ${failed[*]} (inputs in fuzz/artifacts/, logs in $logs/)" >&2
    exit 1
fi
