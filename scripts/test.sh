#!/usr/bin/env bash
# Runs every Tapestry test: unit, property, pipeline, control plane on SQLite and PostgreSQL,
# and (as root) the end-to-end tests in network namespaces. Installs what the tests need.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
for pair in socat:socat iperf3:iperf3 tshark:tshark ip:iproute2 ping:iputils-ping nc:netcat-openbsd \
            dig:dnsutils iptables:iptables curl:curl jq:jq openssl:openssl killall:psmisc ethtool:ethtool; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || need_pkgs+=("$pkg")
done
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
  else
    echo "warning: missing ${need_pkgs[*]} (run as root to install); end-to-end tests will be skipped" >&2
  fi
fi

command -v cargo-nextest >/dev/null 2>&1 || cargo install cargo-nextest --locked

# PostgreSQL for the control-plane store tests: a throwaway cluster on a unix socket + loopback port.
PGBIN=${PGBIN:-/usr/local/bin}
if [ -x "$PGBIN/initdb" ]; then
  PGDATA=$(mktemp -d /tmp/tapestry-pg.XXXXXX)
  PGPORT=${TAPESTRY_PG_PORT:-54329}
  chown -R nobody "$PGDATA" 2>/dev/null || true
  runpg() { if [ "$(id -u)" = 0 ]; then su -s /bin/sh nobody -c "$*"; else sh -c "$*"; fi; }
  runpg "$PGBIN/initdb -D $PGDATA -U postgres --auth=trust >/dev/null"
  runpg "$PGBIN/pg_ctl -D $PGDATA -o '-p $PGPORT -k $PGDATA -c listen_addresses=127.0.0.1 -c max_connections=300' -l $PGDATA/log -w start >/dev/null"
  trap 'runpg "$PGBIN/pg_ctl -D $PGDATA -m fast stop >/dev/null" || true; rm -rf "$PGDATA"' EXIT
  export TAPESTRY_TEST_POSTGRES="postgres://postgres@127.0.0.1:$PGPORT/postgres"
  echo "PostgreSQL for tests at $TAPESTRY_TEST_POSTGRES"
else
  echo "warning: no initdb in $PGBIN; PostgreSQL store tests will be skipped" >&2
fi

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast "$@"
