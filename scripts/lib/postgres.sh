# PostgreSQL for the control-plane store tests, sourced by scripts/test.sh: a throwaway cluster
# on a unix socket and a loopback port, stopped and removed when the calling shell exits.
#
#   source scripts/lib/postgres.sh
#   pg_start_for_tests          # sets and exports TAPESTRY_TEST_POSTGRES, or returns 1
#
# It also exports TAPESTRY_TEST_PG_BIN, the directory of initdb and pg_ctl, for tests that run
# a cluster of their own (tests/postgres_fault.rs restarts its server; this one stays up).
#
# Where the server binaries come from, first found wins:
#   1. $PGBIN (default /usr/local/bin), if it has initdb;
#   2. Debian/Ubuntu's packages: /usr/lib/postgresql/VERSION/bin, the newest version;
#   3. as root: `apt-get install postgresql`, then 2 again.
# TAPESTRY_PG_PORT (default 54329) is the loopback port.

# Prints the directory holding initdb and pg_ctl, or returns 1.
pg_find_bin() {
  local dir=${PGBIN:-/usr/local/bin}
  if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
    echo "$dir"
    return 0
  fi
  dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$dir" ] && [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
    echo "$dir"
    return 0
  fi
  return 1
}

# Finds (or, as root, installs) PostgreSQL and starts a throwaway cluster for the tests.
pg_start_for_tests() {
  local bin
  if ! bin=$(pg_find_bin); then
    if [ "$(id -u)" != 0 ]; then
      echo "warning: no PostgreSQL (no initdb in ${PGBIN:-/usr/local/bin} or /usr/lib/postgresql/*/bin;" \
           "run as root to install it, or apt-get install postgresql)" >&2
      return 1
    fi
    echo "no initdb in ${PGBIN:-/usr/local/bin} or /usr/lib/postgresql/*/bin: installing Debian's postgresql package"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bin=$(pg_find_bin) || { echo "error: apt-get installed postgresql but no initdb was found" >&2; return 1; }
  fi
  PG_TEST_BIN=$bin
  PG_TEST_DATA=$(mktemp -d /tmp/tapestry-pg.XXXXXX)
  local port=${TAPESTRY_PG_PORT:-54329}
  # PostgreSQL refuses to run as root: as root, the cluster belongs to nobody.
  if [ "$(id -u)" = 0 ]; then chown -R nobody "$PG_TEST_DATA"; fi
  _pg_run "$bin/initdb -D $PG_TEST_DATA -U postgres --auth=trust >/dev/null" \
    || { echo "error: initdb failed" >&2; rm -rf "$PG_TEST_DATA"; return 1; }
  _pg_run "$bin/pg_ctl -D $PG_TEST_DATA -o '-p $port -k $PG_TEST_DATA -c listen_addresses=127.0.0.1 -c max_connections=300' -l $PG_TEST_DATA/log -w start >/dev/null" \
    || { echo "error: PostgreSQL did not start; its log:" >&2; cat "$PG_TEST_DATA/log" >&2; return 1; }
  trap pg_stop_for_tests EXIT
  export TAPESTRY_TEST_POSTGRES="postgres://postgres@127.0.0.1:$port/postgres"
  export TAPESTRY_TEST_PG_BIN=$bin
  echo "PostgreSQL ($bin) for tests at $TAPESTRY_TEST_POSTGRES"
}

pg_stop_for_tests() {
  [ -n "${PG_TEST_DATA:-}" ] || return 0
  _pg_run "$PG_TEST_BIN/pg_ctl -D $PG_TEST_DATA -m fast stop >/dev/null" || true
  rm -rf "$PG_TEST_DATA"
  PG_TEST_DATA=
}

_pg_run() {
  if [ "$(id -u)" = 0 ]; then su -s /bin/sh nobody -c "$*"; else sh -c "$*"; fi
}
