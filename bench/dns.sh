#!/usr/bin/env bash
# DNS benchmark: queries per second answered by the cell's responder at 169.254.0.2 (names under
# apps.internal from internal routes and the app's running instances) and by unbound serving the
# same records as local-data, in the same run on the same machine, with the ratio printed.
# Measured with dnsperf from a container namespace, each as a median of --runs:
#   udp   dnsperf over UDP: queries per second, average latency, queries lost, CPU per 100k queries
#   lat   UDP one query at a time (bench/lib/dns_rr.py): median and p99 round trip of a lone query
#   tcp   the same as udp with `dnsperf -m tcp` (persistent connections, queries pipelined), shorter
#
#   sudo bench/dns.sh [--quick] [--tapestry PATH] [--runs N] [--only LIST] [--duration S]
#                     [--clients N] [--outstanding N] [--unbound-threads N] [--cell-arg A]...
#                     [--no-write] [--note TEXT]
#
#   --quick          3 s per UDP run instead of 10 s (TCP: 2 s instead of 5 s), 1000 lone queries instead of 5000
#   --tapestry P     use this tapestry binary (default: cargo build --release, then target/release/tapestry)
#   --runs N         runs per measurement (default 3); the median is reported
#   --only LIST      measure only these (comma-separated: udp,lat,tcp); implies --no-write
#   --duration S     seconds per UDP run (default 10, 3 with --quick); TCP runs take half
#   --clients N      dnsperf -c: UDP source ports / TCP connections (default 4)
#   --outstanding N  dnsperf -q: queries in flight at most (default 200)
#   --unbound-threads N  unbound's num-threads (default 1, as the cell answers on one thread)
#   --cell-arg A     pass A to `tapestry cell` (repeatable)
#   --no-write       print the table and the markdown but leave BENCHMARKS.md alone
#   --note TEXT      a line added to the BENCHMARKS.md section
#
# Topology (namespaces prefixed tpbd-, all removed on every exit path):
#   unbound:  namespace tpbd-k1 with 169.254.0.2/32 on lo, unbound listening there (single thread);
#             client namespace tpbd-kc1 (10.254.1.2/32) behind a veth, as Silk plumbs a container
#             (host side 169.254.0.1 peer 10.254.1.2/32, default route via 169.254.0.1)
#   Tapestry: control plane tpbd-tctl (198.18.0.10) and one cell tpbd-t1 (198.18.0.11) on a bridge
#             underlay tpbd-ul; the route web.apps.internal -> app-web; three instances of app-web
#             (tpbd-tw0..2, `container up --app app-web --index 0..2`); client container tpbd-tc1
#             (app-client). The cell's upstream is 127.0.0.1:53 in its own namespace (nothing
#             there): no query leaves the bench namespaces.
# Both clients send the same query file (web.apps.internal A, 0.web.apps.internal A,
# nope.apps.internal A -> NXDOMAIN, web.apps.internal AAAA -> NODATA) to 169.254.0.2 across one
# hop (veth / the container's TAP). Before any number each side's answers are checked with dig.
#
# If a Tapestry measurement cannot be made (build, start-up, wrong answers, a run failing), the
# unbound side is still measured, the table says why Tapestry is n/a, BENCHMARKS.md is not
# written and the script exits 1 with the reasons. Every command has a time limit.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PREFIX=tpbd

QUICK=0; TAPESTRY=""; RUNS=3; WRITE=1; CELL_ARGS=(); NOTE=""; ONLY=""; DUR=""
CLIENTS=4; OUTSTANDING=200; UB_THREADS=1
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --tapestry) TAPESTRY=${2:?--tapestry needs a path}; shift ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --only) ONLY=",${2:?--only needs a list},"; WRITE=0; shift ;;
        --duration) DUR=${2:?--duration needs seconds}; shift ;;
        --clients) CLIENTS=${2:?--clients needs a number}; shift ;;
        --outstanding) OUTSTANDING=${2:?--outstanding needs a number}; shift ;;
        --unbound-threads) UB_THREADS=${2:?--unbound-threads needs a number}; shift ;;
        --cell-arg) CELL_ARGS+=("${2:?--cell-arg needs a value}"); shift ;;
        --no-write) WRITE=0 ;;
        --note) NOTE=${2:?--note needs text}; shift ;;
        -h|--help) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for m in ${ONLY//,/ }; do
    case $m in udp|lat|tcp) ;; *) echo "--only: unknown measurement $m (udp,lat,tcp)" >&2; exit 2 ;; esac
done
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "--runs must be a positive integer" >&2; exit 2; }
[[ $CLIENTS =~ ^[1-9][0-9]*$ ]] || { echo "--clients must be a positive integer" >&2; exit 2; }
[[ $OUTSTANDING =~ ^[1-9][0-9]*$ ]] || { echo "--outstanding must be a positive integer" >&2; exit 2; }
[[ $UB_THREADS =~ ^[1-9][0-9]*$ ]] || { echo "--unbound-threads must be a positive integer" >&2; exit 2; }
[ -z "$DUR" ] && { if [ $QUICK = 1 ]; then DUR=3; else DUR=10; fi; }
[[ $DUR =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a positive integer" >&2; exit 2; }
TCP_DUR=$(( (DUR + 1) / 2 ))
if [ $QUICK = 1 ]; then RR_COUNT=1000; else RR_COUNT=5000; fi
# Lone queries take well under a second a run, so a passing slow phase of the machine (another
# process, a CPU waking) would land on one side only: each run is LAT_ROUNDS rounds that alternate
# the sides, and the figures are medians over all rounds.
LAT_ROUNDS=5

SHOWN=()
[ $QUICK = 1 ] && SHOWN+=(--quick)
[ -n "$TAPESTRY" ] && SHOWN+=(--tapestry "$TAPESTRY")
[ "$RUNS" != 3 ] && SHOWN+=(--runs "$RUNS")
[ -n "$ONLY" ] && SHOWN+=(--only "$(echo "$ONLY" | sed 's/^,//; s/,$//')")
if { [ $QUICK = 1 ] && [ "$DUR" != 3 ]; } || { [ $QUICK = 0 ] && [ "$DUR" != 10 ]; }; then SHOWN+=(--duration "$DUR"); fi
[ "$CLIENTS" != 4 ] && SHOWN+=(--clients "$CLIENTS")
[ "$OUTSTANDING" != 200 ] && SHOWN+=(--outstanding "$OUTSTANDING")
[ "$UB_THREADS" != 1 ] && SHOWN+=(--unbound-threads "$UB_THREADS")
for a in ${CELL_ARGS[@]+"${CELL_ARGS[@]}"}; do SHOWN+=(--cell-arg "$a"); done
CMDLINE="bench/dns.sh${SHOWN[*]:+ ${SHOWN[*]}}"

UNDERLAY_MTU=1500
WATCHDOG_S=$((600 + RUNS * 2 * (DUR + TCP_DUR + 60)))

. "$HERE/lib/common.sh"
. "$HERE/lib/kernel.sh"
. "$HERE/lib/tapestry.sh"

[ "$(id -u)" = 0 ] || die "this needs root (network namespaces): sudo $CMDLINE"

# Tools (Debian packages)
missing=()
for tool in dnsperf:dnsperf unbound:unbound dig:dnsutils python3:python3 curl:curl ip:iproute2 ss:iproute2 timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null ||
        { t 300 apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "could not install ${missing[*]}"
fi
UNBOUND=$(command -v unbound)

W=$(mktemp -d /tmp/tpbd.XXXXXX)
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
for m in udp lat tcp; do wanted "$m" && METRICS+=("$m"); done

# Tapestry's failure reasons: TF[all] for the whole side, TF[METRIC] for one measurement.
declare -A TF
tfail() { # KEY REASON
    [ -n "${TF[$1]:-}" ] && return 0
    TF[$1]=$2
    log "tapestry: ${1/all/everything} n/a ($2)"
}
tok() { [ -z "${TF[all]:-}" ] && [ -z "${TF[$1]:-}" ]; }

# The tapestry binary, built in release mode unless given.
TDIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -z "$TAPESTRY" ]; then
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
[ -z "${TF[all]:-}" ] && [ ! -x "$TAPESTRY" ] && tfail all "no tapestry binary at $TAPESTRY"

# (&&: if Ctrl-C kills the sleep too, the watchdog must not go on to signal us mid-cleanup)
( sleep "$WATCHDOG_S" && touch "$W/watchdog" && kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

DNS_IP=169.254.0.2
ROUTE_HOST=web.apps.internal
ROUTE_APP=app-web
INSTANCES=3
K_CNS=$PREFIX-kc1    # unbound side: client namespace
T_CNS=$PREFIX-tc1    # Tapestry side: client container
T_HIP=198.18.0.11    # the cell's underlay address
# The records: the Tapestry instances' addresses once they are up; the unbound side serves the
# same addresses (it never sends anything to them), so both answers have the same size.
WEB_IPS=()
for i in $(seq 0 $((INSTANCES - 1))); do WEB_IPS+=("10.255.$((i + 1)).2"); done

# The query file: every name the responder answers itself, in equal shares.
QUERIES=$W/queries.txt
printf '%s\n' "$ROUTE_HOST A" "0.$ROUTE_HOST A" "nope.apps.internal A" "$ROUTE_HOST AAAA" >"$QUERIES"

# dig_q NS NAME TYPE: "STATUS ip,ip,..." (answers sorted), or "" if dig got no answer.
dig_q() {
    nsx "$1" 10 dig "@$DNS_IP" +time=2 +tries=2 +noall +comments +answer "$2" "$3" 2>/dev/null | python3 -c '
import re, sys
text = sys.stdin.read()
m = re.search(r"status: ([A-Z]+)", text)
if not m:
    sys.exit()
ans = sorted(l.split()[-1] for l in text.splitlines() if l.strip() and not l.startswith(";"))
print(m.group(1), ",".join(ans))'
}

# check_answers NS: the four questions of the query file get the answers they should, from the
# responder in front of NS. Fails with CHECK_ERR.
check_answers() {
    local ns=$1 want got all
    all=$(printf '%s\n' "${WEB_IPS[@]}" | sort | paste -sd, -)
    for q in "$ROUTE_HOST A|NOERROR $all" "0.$ROUTE_HOST A|NOERROR ${WEB_IPS[0]}" \
             "nope.apps.internal A|NXDOMAIN " "$ROUTE_HOST AAAA|NOERROR "; do
        want=${q#*|}
        got=$(dig_q "$ns" ${q%|*})
        [ "$got" = "$want" ] || { CHECK_ERR="${q%|*}: got '${got:-no answer}', expected '$want'"; return 1; }
    done
}

# The unbound reference: a "cell" namespace with 169.254.0.2 on lo and a container namespace
# behind a veth, plumbed as Silk does (bench/lib/kernel.sh).
K_UNBOUND_PID=""
unbound_build() {
    ns_add "$PREFIX-k1" && kernel_container 1 &&
        ip -n "$PREFIX-k1" addr add "$DNS_IP/32" dev lo || return 1
    mkdir -p "$W/unbound"
    {
        cat <<CONF
server:
    # one thread by default: the cell answers on its one stack thread
    num-threads: $UB_THREADS
    interface: $DNS_IP
    port: 53
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 0.0.0.0/0 allow
    username: ""
    chroot: ""
    directory: "$W/unbound"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    log-queries: no
    use-systemd: no
    do-daemonize: no
    # local-data is answered from the local zone, never from the caches; nothing is recursed
    prefetch: no
    serve-expired: no
    rrset-roundrobin: yes
    minimal-responses: yes
    ip-ratelimit: 0
    ratelimit: 0
    incoming-num-tcp: 64
    local-zone: "apps.internal." static
CONF
        for i in "${!WEB_IPS[@]}"; do
            echo "    local-data: \"$ROUTE_HOST. 0 IN A ${WEB_IPS[$i]}\""
            echo "    local-data: \"$i.$ROUTE_HOST. 0 IN A ${WEB_IPS[$i]}\""
        done
        cat <<CONF
remote-control:
    control-enable: no
CONF
    } >"$W/unbound.conf"
    t 10 unbound-checkconf "$W/unbound.conf" >"$W/unbound-checkconf.log" 2>&1 ||
        { log "unbound-checkconf: $(last_line "$W/unbound-checkconf.log")"; return 1; }
    bg "$PREFIX-k1" "$W/unbound.log" "$UNBOUND" -d -c "$W/unbound.conf"
    K_UNBOUND_PID=$BG_PID
    wait_listen "$PREFIX-k1" 53 10 udp || { log "unbound did not start: $(last_line "$W/unbound.log")"; return 1; }
}

t_cli() { # tapestry CLI against the control plane, from the control plane's namespace
    nsx "$PREFIX-tctl" 30 "$TAPESTRY" "$@" --api "http://$T_CTL_IP:4002" --token-file "$W/control/admin.token"
}

# t_container NS HANDLE APP [ARGS...]: namespace NS attached to cell 1; its IP in T_CIP.
t_container() {
    local ns=$1 handle=$2 app=$3 out; shift 3
    ns_add "$ns" || { TFAIL="netns setup failed"; return 1; }
    if ! out=$(t 30 "$TAPESTRY" container up --cell-socket "$W/t1/cell.sock" --handle "$handle" \
        --app "$app" --space bench --netns "/var/run/netns/$ns" "$@" 2>"$W/container-up.$handle.log"); then
        TFAIL="container up ($handle) failed: $(last_line "$W/container-up.$handle.log")"; return 1
    fi
    echo "$out" >"$W/container-up.$handle.out"
    T_CIP=$(echo "$out" | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):text.rindex("}") + 1])
print(j["container_ip"])' 2>/dev/null)
    [ -n "$T_CIP" ] || { TFAIL="container up ($handle) printed no container_ip: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
}

# Control plane, one cell, the route, INSTANCES instances of app-web and the client container.
tapestry_dns_build() {
    local out i
    tapestry_control "$TAPESTRY" "$W" && tapestry_cell "$TAPESTRY" "$W" 1 "$T_HIP" --dns-upstream 127.0.0.1:53 &&
        tapestry_cell_wait "$W" 1 "${T_CELL_PIDS[0]}" || { tfail all "$TFAIL"; return 1; }
    out=$(t_cli route map "$ROUTE_HOST" "$ROUTE_APP" 2>&1) ||
        { tfail all "tapestry route map failed: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
    for i in $(seq 0 $((INSTANCES - 1))); do
        t_container "$PREFIX-tw$i" "bench-web$i" "$ROUTE_APP" --index "$i" || { tfail all "$TFAIL"; return 1; }
        WEB_IPS[$i]=$T_CIP
    done
    t_container "$T_CNS" bench-client app-client || { tfail all "$TFAIL"; return 1; }
}

# cell status --json: the drop counters as "reason=n ...", or "" if unavailable.
cell_drops() {
    t 10 "$TAPESTRY" cell status --state-dir "$W/t1" --json >"$W/cell-status.json" 2>/dev/null || return 0
    python3 - "$W/cell-status.json" <<'PY' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
print(" ".join(f"{k}={v}" for k, v in sorted(j.get("drops", {}).items())))
PY
}
# the non-zero ones, for messages
cell_drops_nz() { local d; d=$(cell_drops | tr ' ' '\n' | grep -v '=0$' | paste -sd' ' -); echo "${d:-none}"; }
# drops_delta BEFORE AFTER: the counters that grew, "reason +n, ..." ("none" if none did).
drops_delta() {
    python3 - "$1" "$2" <<'PY'
import sys
def parse(s):
    return {k: int(v) for k, v in (x.split("=", 1) for x in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
d = [f"{k} +{b[k] - a.get(k, 0)}" for k in sorted(b) if b[k] > a.get(k, 0)]
print(", ".join(d) or "none")
PY
}

log "work dir $W; UDP $DUR s, TCP $TCP_DUR s per run, $RUNS runs each, median reported; measuring: ${METRICS[*]}"
underlay_add || die "could not create the underlay"
if [ -z "${TF[all]:-}" ]; then
    log "tapestry: control plane, one cell, route $ROUTE_HOST -> $ROUTE_APP, $INSTANCES instances, a client container"
    tapestry_dns_build || true
fi
log "unbound reference: $DNS_IP in a namespace behind a veth from the client namespace, the same records as local-data"
unbound_build || die "could not set up the unbound reference"
SIDES=(k)
[ -z "${TF[all]:-}" ] && SIDES+=(t)

# Answers before any number. Tapestry: the route and instances reach the cell through the
# control plane's feed, so wait (20 s at most) for the full answer first.
check_answers "$K_CNS" || die "unbound reference: wrong answer: $CHECK_ERR"
log "  k: answers checked with dig (A x$INSTANCES, N.host A, NXDOMAIN, NODATA)"
if [ -z "${TF[all]:-}" ]; then
    end=$(( $(date +%s) + 20 ))
    until check_answers "$T_CNS"; do
        if [ "$(date +%s)" -ge "$end" ] || ! alive "${T_CELL_PIDS[0]}"; then
            tfail all "wrong answer from the cell after 20 s: $CHECK_ERR (cell drops: $(cell_drops_nz))"; break
        fi
        sleep 0.2
    done
    [ -z "${TF[all]:-}" ] && log "  t: answers checked with dig (A x$INSTANCES, N.host A, NXDOMAIN, NODATA): $(printf '%s ' "${WEB_IPS[@]}")"
fi
[ -n "${TF[all]:-}" ] && SIDES=(k)

HZ=$(getconf CLK_TCK)
declare -A VALS   # "side.metric" -> space-separated samples
add_val() { VALS[$1.$2]="${VALS[$1.$2]:-} $3"; }
cpu_line() { awk '/^cpu /{print $2, $3, $4, $5, $6, $7, $8, $9; exit}' /proc/stat; }
# pid_ticks PID: utime+stime of a process (all its threads) so far.
pid_ticks() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    set -- $s
    echo $(( ${12} + ${13} ))
}
server_ticks() { if [ "$1" = t ]; then tapestry_cell_ticks; else pid_ticks "$K_UNBOUND_PID"; fi; }

# dnsperf_run SIDE KEY MODE RUN SECS CLIENTS OUTSTANDING: one dnsperf run from the side's client
# namespace; adds KEY_qps, KEY_lat (us), KEY_lost (%), KEY_cpu (server CPU s per 100k queries),
# KEY_cpu_client (dnsperf's) and KEY_cpu_all (machine).
dnsperf_run() {
    local side=$1 key=$2 mode=$3 run=$4 secs=$5 clients=$6 outstanding=$7 ns out c0 c1 k0 k1 r rc
    if [ "$side" = t ]; then ns=$T_CNS; else ns=$K_CNS; fi
    out=$W/dnsperf.$key.$side.$run.txt
    c0=$(cpu_line); k0=$(server_ticks "$side")
    # (a subshell, so that `times` reports dnsperf's CPU alone: it is the subshell's only waited-for child)
    (
        nsx "$ns" $((secs + 30)) dnsperf -m "$mode" -s "$DNS_IP" -d "$QUERIES" -l "$secs" \
            -c "$clients" -q "$outstanding" -T 1 -t 2 >"$out" 2>&1
        echo $? >"$out.rc"
        times >"$out.times"
    )
    rc=$(cat "$out.rc" 2>/dev/null || echo '?')
    c1=$(cpu_line); k1=$(server_ticks "$side")
    r=$(python3 - "$out" "$HZ" "$c0" "$c1" "$k0" "$k1" "$out.times" <<'PY'
import re, sys
path, hz, c0, c1, k0, k1, times = sys.argv[1:]
text = open(path).read()
def num(pat):
    m = re.search(pat, text)
    return float(m.group(1)) if m else None
qps, done = num(r"Queries per second:\s+([0-9.]+)"), num(r"Queries completed:\s+([0-9]+)")
sent, lost = num(r"Queries sent:\s+([0-9]+)"), num(r"Queries lost:\s+([0-9]+)")
lat = num(r"Average Latency \(s\):\s+([0-9.]+)")
if qps is None or not done:
    sys.exit(" ".join(text.split())[-200:] or "no output")
codes = dict((c, int(n)) for c, n in re.findall(r"([A-Z]+) ([0-9]+) \(", text.split("Response codes:", 1)[1].splitlines()[0])) if "Response codes:" in text else {}
bad = {c: n for c, n in codes.items() if c not in ("NOERROR", "NXDOMAIN")}
if bad:
    sys.exit(f"unexpected response codes: {bad}")
nx = codes.get("NXDOMAIN", 0) / done * 100
size = re.search(r"Average packet size:\s+request ([0-9]+), response ([0-9]+)", text)
hz = int(hz)
d = [b - a for a, b in zip(map(int, c0.split()), map(int, c1.split()))]
user, nice, system, idle, iowait, irq, softirq, steal = d
server = (int(k1) - int(k0)) / hz / (done / 1e5)
allcpu = (user + nice + system + irq + softirq) / hz / (done / 1e5)
# `times`: the shell's own line, then its children's: "0m1.234s 0m0.567s"
t = re.findall(r"([0-9]+)m([0-9.]+)s", open(times).read().splitlines()[-1])
client = sum(int(m) * 60 + float(s) for m, s in t) / (done / 1e5) if len(t) == 2 else "?"
client = f"{client:.3f}" if client != "?" else client
print(f"{qps:.0f} {lat * 1e6:.0f} {lost / sent * 100:.3f} {server:.3f} {allcpu:.3f} {nx:.1f} "
      f"{size.group(1) if size else '?'} {size.group(2) if size else '?'} {int(done)} {client}")
PY
) || { RUN_ERR="dnsperf (exit $rc): $r"; return 1; }
    set -- $r
    add_val "$side" "${key}_qps" "$1"; add_val "$side" "${key}_lat" "$2"; add_val "$side" "${key}_lost" "$3"
    add_val "$side" "${key}_cpu" "$4"; add_val "$side" "${key}_cpu_all" "$5"; add_val "$side" "${key}_cpu_client" "${10}"
    SIZES[$side]="$7/$8"
    log "  $side $key run $run: $1 queries/s, avg latency $2 us, lost $3 %, CPU s per 100k: $4 server, ${10} dnsperf, $5 machine; NXDOMAIN $6 %, $9 answered, request/response $7/$8 bytes"
}
declare -A SIZES
udp() { dnsperf_run "$1" udp udp "$2" "$DUR" "$CLIENTS" "$OUTSTANDING"; }
# lat SIDE RUN: lone UDP queries one at a time (bench/lib/dns_rr.py), median and p99 round trip.
lat() {
    local side=$1 run=$2 ns r
    if [ "$side" = t ]; then ns=$T_CNS; else ns=$K_CNS; fi
    r=$(nsx "$ns" 120 python3 "$HERE/lib/dns_rr.py" "$DNS_IP" "$QUERIES" --count $((RR_COUNT / LAT_ROUNDS)) --timeout 1 2>&1) ||
        { RUN_ERR="dns_rr.py: $(echo "$r" | tail -n 1 | cut -c1-200)"; return 1; }
    r=$(echo "$r" | python3 -c 'import json,sys; j=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(j["median_us"], j["p99_us"], j["answered"], j["lost"])') ||
        { RUN_ERR="dns_rr.py printed no result"; return 1; }
    set -- $r
    [ $(($4 * 100)) -gt $(($3 + $4)) ] && { RUN_ERR="$4 of $(($3 + $4)) lone queries unanswered"; return 1; }
    add_val "$side" lat_med "$1"; add_val "$side" lat_p99 "$2"
    log "  $side lat round $run: median $1 us, p99 $2 us ($3 answered, $4 lost)"
}
tcp() { dnsperf_run "$1" tcp tcp "$2" "$TCP_DUR" "$CLIENTS" "$OUTSTANDING"; }

# measure METRIC: RUNS runs of each side, interleaved; a Tapestry run that fails marks the metric n/a.
measure() {
    local m=$1 r side n=$RUNS
    [ "$m" = lat ] && n=$((RUNS * LAT_ROUNDS))
    for r in $(seq 1 "$n"); do
        for side in "${SIDES[@]}"; do
            [ "$side" = t ] && ! tok "$m" && continue
            RUN_ERR=""
            if ! "$m" "$side" "$r"; then
                [ "$side" = k ] && die "unbound reference: $m run $r failed: $RUN_ERR"
                if ! alive "${T_CELL_PIDS[0]}"; then
                    tfail all "the cell exited during $m: $(last_line "$W/cell1.log")"
                else
                    tfail "$m" "run $r failed: $RUN_ERR (cell drops: $(cell_drops_nz))"
                fi
            fi
        done
        alive "$K_UNBOUND_PID" || die "unbound exited during $m: $(last_line "$W/unbound.log")"
    done
}

declare -A DROPS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
for m in "${METRICS[@]}"; do
    case $m in
        udp) log "dnsperf over UDP, $DUR s, -c $CLIENTS -q $OUTSTANDING" ;;
        lat) log "lone UDP queries, one at a time (bench/lib/dns_rr.py), $RR_COUNT per run in $LAT_ROUNDS rounds of $((RR_COUNT / LAT_ROUNDS))" ;;
        tcp) log "dnsperf over TCP (-m tcp), $TCP_DUR s, -c $CLIENTS connections -q $OUTSTANDING" ;;
    esac
    d0=""; [ -z "${TF[all]:-}" ] && d0=$(cell_drops)
    measure "$m"
    if [ -z "${TF[all]:-}" ]; then
        DROPS[$m]=$(drops_delta "$d0" "$(cell_drops)")
        log "  cell drop counters that grew during $m: ${DROPS[$m]}"
    fi
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)

# The table
med() { median ${VALS[$1.$2]:-}; }
treason() { # METRIC: why Tapestry has no figure for it ("" if it has one)
    if [ -n "${TF[all]:-}" ]; then echo "${TF[all]}"; else echo "${TF[$1]:-}"; fi
}
SHOWN_REASON=()
row() { # LABEL GROUP METRIC DECIMALS [latency]
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
    if [ "${5:-}" = pct ]; then r=""
    else
        r=$(ratio "$t" "$k")
        if [ "${5:-}" = latency ] && isnum "$t" && isnum "$k"; then
            r="$r ($(awk -v a="$t" -v b="$k" 'BEGIN{printf "%+.0f us", a-b}'))"
        fi
    fi
    printf '| %s | %s | %s | %s |\n' "$label" "$(fmt "$k" "$dec")" "$(fmt "$t" "$dec")" "$r"
}

TABLE=$(
    echo "| Metric (median of $RUNS runs) | unbound (local-data, $UB_THREADS thread$([ "$UB_THREADS" = 1 ] || echo s)) | Tapestry cell | Tapestry / unbound |"
    echo "|---|---|---|---|"
    row "UDP queries per second" udp udp_qps 0
    row "UDP average latency (us)" udp udp_lat 0 latency
    row "UDP queries lost (%)" udp udp_lost 3 pct
    row "CPU s per 100k UDP queries, server (unbound / cell process)" udp udp_cpu 3
    row "CPU s per 100k UDP queries, client (dnsperf)" udp udp_cpu_client 3
    row "CPU s per 100k UDP queries, whole machine" udp udp_cpu_all 3
    row "UDP, one query at a time: round trip, median (us)" lat lat_med 1 latency
    row "UDP, one query at a time: round trip, p99 (us)" lat lat_p99 1 latency
    row "TCP queries per second ($CLIENTS connections)" tcp tcp_qps 0
    row "TCP average latency (us)" tcp tcp_lat 0 latency
    row "TCP queries lost (%)" tcp tcp_lost 3 pct
    row "CPU s per 100k TCP queries, server (unbound / cell process)" tcp tcp_cpu 3
    row "CPU s per 100k TCP queries, client (dnsperf)" tcp tcp_cpu_client 3
    row "CPU s per 100k TCP queries, whole machine" tcp tcp_cpu_all 3
)

NOTE_LINE=""
[ -n "$NOTE" ] && NOTE_LINE=$'\n'"$NOTE"
BUSY_NOTE=""
if awk -v l="${LOADAVG_START%% *}" -v n="$(nproc)" 'BEGIN{exit !(l > n / 2)}'; then
    BUSY_NOTE=$'\n\n'"**Caution:** the machine was busy with other work when this ran (1-minute load average ${LOADAVG_START%% *} on $(nproc) CPUs), so absolute figures are low and noisy and the whole-machine CPU rows include that work; the ratios, measured interleaved in the same run, are the meaningful part."
fi
DROPS_LINE="not read"
if [ -z "${TF[all]:-}" ]; then
    DROPS_LINE=""
    for m in "${METRICS[@]}"; do DROPS_LINE+="${DROPS_LINE:+; }$m: ${DROPS[$m]:-not read}"; done
fi
if [ "$UB_THREADS" = 1 ]; then
    UB_WHY="One unbound thread, because the cell answers DNS on one thread (its stack thread; the cell's TAP workers, one per CPU, only carry the frames), and on $(nproc) CPUs a second unbound thread would mostly compete with dnsperf and the packet path for the CPUs (\`--unbound-threads 2\` measures that)."
else
    UB_WHY="$UB_THREADS unbound threads (\`--unbound-threads $UB_THREADS\`), while the cell answers DNS on one thread (its stack thread)."
fi
KERNEL=$(uname -r)
CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/{gsub(/^ +/, "", $2); print $2; exit}')
NCPU=$(nproc)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+uncommitted" || true)
UNBOUND_V=$("$UNBOUND" -V 2>/dev/null | awk '/^Version/{print $2; exit}')
DNSPERF_V=$(dnsperf -h 2>&1 | awk '/^Version/{print $2; exit}')

SECTION=$(cat <<MD
## DNS

Produced by \`sudo $CMDLINE\` on $DATE: Linux $KERNEL, $CPU, $NCPU CPUs, checkout $REV$DIRTY
(\`${TAPESTRY:-no tapestry}\`${CELL_ARGS[*]:+ ${CELL_ARGS[*]}}; unbound ${UNBOUND_V:-?}, dnsperf ${DNSPERF_V:-?}). Load average at start / end of the measurements: $LOADAVG_START / $LOADAVG_END.$NOTE_LINE$BUSY_NOTE

$TABLE

How it is measured (one run builds both sides; runs alternate unbound/Tapestry; each figure is the median of $RUNS runs):
- Queries: dnsperf from a container namespace to $DNS_IP:53, cycling through \`$ROUTE_HOST A\` ($INSTANCES addresses), \`0.$ROUTE_HOST A\`,
  \`nope.apps.internal A\` (NXDOMAIN) and \`$ROUTE_HOST AAAA\` (NODATA) in equal shares; \`-c $CLIENTS -q $OUTSTANDING -T 1 -t 2\`, UDP for $DUR s,
  TCP (\`-m tcp\`: $CLIENTS persistent connections, queries pipelined on them) for $TCP_DUR s. Under that load the average latency is mostly
  queueing (about outstanding / rate); "one query at a time" is bench/lib/dns_rr.py: queries from the same file, each sent when the
  previous answer arrived, the round trip of each timed in Python (the same client overhead on both sides); $RUNS x $LAT_ROUNDS rounds of
  $((RR_COUNT / LAT_ROUNDS)) queries alternating the sides, the figures are the medians of the rounds' medians and p99s. These are a few
  microseconds and move with the machine's state (whether the server's CPU sleeps between queries, what else runs). Average request/response size: unbound ${SIZES[k]:-?} bytes,
  Tapestry ${SIZES[t]:-n/a} bytes. A run counts only if every answer is NOERROR or NXDOMAIN. Before any number, dig checks each side's four answers.
- Tapestry: \`tapestry control\`, one \`tapestry cell --dns-upstream 127.0.0.1:53\` (nothing is forwarded: every name is under apps.internal),
  \`tapestry route map $ROUTE_HOST $ROUTE_APP\`, $INSTANCES \`tapestry container up --app $ROUTE_APP --index N\` and a client container (app-client).
  The queries go through the client's TAP into the cell process, whose stack thread answers them (A records TTL 0, shuffled).
- unbound: \`unbound -d\` with \`num-threads: $UB_THREADS\`, \`local-zone: "apps.internal." static\` and the same records as \`local-data\` (TTL 0, the
  Tapestry instances' addresses), \`rrset-roundrobin: yes\`, \`prefetch: no\`, no rate limits, listening on $DNS_IP in a namespace that the
  client namespace reaches through one veth, plumbed as Silk plumbs a container (bench/lib/kernel.sh). $UB_WHY
  local-data is answered from the local zone, so unbound's caches play no part.
- CPU, over each run, per 100k answered queries: "server" = utime+stime of the unbound process or of the whole cell process (TAP workers,
  stack thread, control sync; the cell busy-polls for 200 us after its last packet unless told otherwise) from /proc/PID/stat; "client" =
  dnsperf's user+system time; "whole machine" = user+nice+system+irq+softirq of all CPUs from /proc/stat, which also holds the kernel's
  softirq packet work (charged to no process) and anything else running on the machine.
- The cell's drop counters (\`tapestry cell status --json\` "drops") that grew during the measurements: $DROPS_LINE.
MD
)

echo
echo "$SECTION"

FAILS=()
for m in "${METRICS[@]}"; do
    why=$(treason "$m")
    [ -n "$why" ] && FAILS+=("$m: $why")
done
if [ $WRITE = 1 ] && [ ${#FAILS[@]} -gt 0 ]; then
    log "not writing BENCHMARKS.md: the Tapestry side is incomplete"
elif [ $WRITE = 1 ]; then
    write_section "$ROOT/BENCHMARKS.md" "DNS" "$SECTION"
fi
if [ ${#FAILS[@]} -gt 0 ]; then
    for f in "${FAILS[@]}"; do log "tapestry: $f"; done
    die "the Tapestry side could not be measured (${#FAILS[@]} of ${#METRICS[@]}); the unbound figures above are complete"
fi
exit 0
