#!/usr/bin/env bash
# Runs every Tapestry check and test: rustfmt, clippy, the unused-dependency check, then unit,
# property and pipeline tests, the control-plane suite on SQLite and on PostgreSQL, and (as root)
# the end-to-end tests in network namespaces, and before them a short smoke run of every fuzz
# target (scripts/fuzz.sh; TAPESTRY_FUZZ_SECS seconds each, default 15, 0 to leave it out). Installs
# what the tests need. Extra arguments go to
# `cargo nextest run` (e.g. `scripts/test.sh -E 'package(tapestry-switch)'`).
#
# Tests that need something a machine may lack are `#[ignore = "needs ..."]`, so a plain
# `cargo nextest run` reports them as skipped instead of passing without testing:
#   root       (network namespaces, /dev/net/tun)  the e2e_* binaries, tapestry-sys's tap_* binaries
#   PostgreSQL (TAPESTRY_TEST_POSTGRES,             tapestry-policy tests named *postgres*, and
#     TAPESTRY_TEST_PG_BIN)                         tests/postgres_fault.rs (its own cluster)
#   tshark                                          tests named *tshark*
# This script runs them (`--run-ignored all`) wherever their environment is there. As root (CI)
# every environment is required (TAPESTRY_REQUIRE_ROOT=1, TAPESTRY_REQUIRE_POSTGRES=1): a missing
# one, or any skipped test, fails the run. Run without its environment, such a test fails loudly.
set -euo pipefail
cd "$(dirname "$0")/.."

# Each set ends in a test() predicate: nextest then lists the tests it leaves out and counts them
# as skipped (a set of binary() predicates alone drops whole binaries from the count).
ROOT_TESTS='(binary(/^e2e_/) | (package(tapestry-sys) & binary(/^tap_/))) & test(/./)'
POSTGRES_TESTS='(package(tapestry-policy) | binary(/^postgres_fault$/)) & test(/postgres/)'
TSHARK_TESTS='test(/tshark/)'

is_root=0
[ "$(id -u)" = 0 ] && is_root=1
if [ $is_root = 1 ]; then
  : "${TAPESTRY_REQUIRE_ROOT:=1}" "${TAPESTRY_REQUIRE_POSTGRES:=1}"
fi
export TAPESTRY_REQUIRE_ROOT=${TAPESTRY_REQUIRE_ROOT:-0}
export TAPESTRY_REQUIRE_POSTGRES=${TAPESTRY_REQUIRE_POSTGRES:-0}
die() { echo "error: $*" >&2; exit 1; }
have_root=0
[ $is_root = 1 ] && [ -e /dev/net/tun ] && have_root=1
if [ "$TAPESTRY_REQUIRE_ROOT" = 1 ] && [ $have_root = 0 ]; then
  die "TAPESTRY_REQUIRE_ROOT=1 but this is not root with /dev/net/tun"
fi

need_pkgs=()
for pair in socat:socat iperf3:iperf3 tshark:tshark ip:iproute2 ping:iputils-ping nc:netcat-openbsd \
            dig:dnsutils iptables:iptables nft:nftables curl:curl jq:jq openssl:openssl killall:psmisc ethtool:ethtool; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
# tests/e2e_podman.rs: Podman with its CNI backend (Debian's standard plugins in /usr/lib/cni),
# runc, and busybox for the containers' root filesystem.
if [ $is_root = 1 ]; then
  for pair in podman:podman runc:runc busybox:busybox-static; do
    bin=${pair%%:*}; pkg=${pair#*:}
    command -v "$bin" >/dev/null 2>&1 || need_pkgs+=("$pkg")
  done
  [ -x /usr/lib/cni/tuning ] || need_pkgs+=(containernetworking-plugins)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ $is_root = 1 ]; then
    echo "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${need_pkgs[*]} (run as root to install); the tests that need them will be skipped" >&2
  fi
fi

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked
command -v cargo-machete >/dev/null 2>&1 || cargo install cargo-machete --locked

# The rules that tools check: formatting, lints (unsafe_code is forbidden outside sys/ by
# [workspace.lints]), and no unused dependencies.
echo "== cargo fmt --all --check"
cargo fmt --all --check
echo "== cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings
echo "== cargo machete (unused dependencies)"
cargo machete

# Which environments are here; the tests of a missing one are filtered out (shown as skipped).
missing=()
if [ $have_root = 1 ]; then
  echo "root tests: will run"
else
  echo "root tests: skipped (not root)"
  missing+=("$ROOT_TESTS")
fi

source scripts/lib/postgres.sh
if pg_start_for_tests; then
  echo "PostgreSQL tests: will run"
elif [ "$TAPESTRY_REQUIRE_POSTGRES" = 1 ]; then
  die "TAPESTRY_REQUIRE_POSTGRES=1 but PostgreSQL could not be found, installed or started"
else
  echo "PostgreSQL tests: skipped (no PostgreSQL)"
  missing+=("$POSTGRES_TESTS")
fi

if command -v tshark >/dev/null 2>&1; then
  echo "tshark tests: will run"
else
  echo "tshark tests: skipped (no tshark)"
  missing+=("$TSHARK_TESTS")
fi

cargo build --workspace --all-targets

# Every ignored test must belong to one of the environments above, or this script would run it
# where it cannot pass (or never run it).
unknown=$(cargo nextest list --workspace --run-ignored only -T oneline \
  -E "not ($ROOT_TESTS | $POSTGRES_TESTS | $TSHARK_TESTS)" 2>/dev/null)
[ -z "$unknown" ] || die "ignored tests that scripts/test.sh does not know the environment of:
$unknown
(name them after their environment, or add a filterset at the top of scripts/test.sh)"

# The tests of missing environments are left out through a nextest profile's default-filter,
# which (unlike another -E) intersects with any filterset given on the command line.
profile=()
if [ ${#missing[@]} -gt 0 ]; then
  expr=$(printf ' | %s' "${missing[@]}")
  toolcfg=$(mktemp /tmp/tapestry-nextest.XXXXXX)
  printf '[profile.tapestry-env]\ndefault-filter = "not (%s)"\n' "${expr# | }" >"$toolcfg"
  profile=(--tool-config-file "tapestry:$toolcfg" --profile tapestry-env)
fi

# Coverage-guided fuzzing, a short fixed time per target (FUZZING.md records the long runs). Only
# on a whole run: a run narrowed by filters on the command line is for a few tests. It runs
# before the tests, so that nextest's summary closes the output.
fuzz_secs=${TAPESTRY_FUZZ_SECS:-15}
if [ $# -eq 0 ] && [ "$fuzz_secs" != 0 ]; then
  echo "== scripts/fuzz.sh --smoke $fuzz_secs"
  scripts/fuzz.sh --smoke "$fuzz_secs"
fi

log=$(mktemp /tmp/tapestry-test.XXXXXX)
set +e
cargo nextest run --workspace --no-fail-fast --run-ignored all "${profile[@]}" "$@" 2>&1 | tee "$log"
rc=${PIPESTATUS[0]}
set -e
summary=$(grep -E '^ *Summary \[' "$log" | tail -n 1 || true)
rm -f "$log" "${toolcfg:-}"
[ "$rc" = 0 ] || exit "$rc"
skipped=$(sed -nE 's/.* ([0-9]+) skipped.*/\1/p' <<<"$summary")
skipped=${skipped:-0}
if [ "$skipped" != 0 ] && { [ "$TAPESTRY_REQUIRE_ROOT" = 1 ] || [ "$TAPESTRY_REQUIRE_POSTGRES" = 1 ]; }; then
  if [ $# -eq 0 ]; then
    die "$skipped tests were skipped, but every test is required here (TAPESTRY_REQUIRE_ROOT=$TAPESTRY_REQUIRE_ROOT, TAPESTRY_REQUIRE_POSTGRES=$TAPESTRY_REQUIRE_POSTGRES)"
  fi
  echo "note: $skipped tests skipped by the filters given on the command line ($*)"
fi


# Both port kinds pass the overlay suite: the run above used the default (TAP as root), this one
# veth pairs read through AF_PACKET (tests/e2e_unpriv.rs covers packet ports without root).
if [ $# -eq 0 ] && [ $have_root = 1 ] && [ -z "${TAPESTRY_PORT_KIND:-}" ]; then
  echo "== the overlay and offload suites again with packet ports (TAPESTRY_PORT_KIND=packet)"
  TAPESTRY_PORT_KIND=packet cargo nextest run --workspace --no-fail-fast --run-ignored all \
    -E 'binary(e2e_overlay) | binary(e2e_offload)'
fi
