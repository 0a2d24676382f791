#!/usr/bin/env bash
# TLS benchmark: port 61443 terminated by Tapestry's cell (rustls in the cell's local stack, the
# container's instance identity certificate, plaintext forwarded to CONTAINER_IP:8080) and by
# nginx's stream module (the SAME certificate and key, proxy_pass to the same backend app on 8080),
# in the same run on the same machine, with the ratio printed. Each figure is a median of --runs:
#   hs    TLS 1.3 full handshakes per second (bench/src/bin/tls_bench.rs `handshakes`: no session
#         resumption, no early data; every connection: TCP connect, handshake, one byte to the app
#         and its answer back, close_notify, close), latency of each, CPU per 1000 handshakes
#   bulk  one TLS connection streaming a fixed payload into the app (a sink) for --duration
#         seconds: Gbit/s as counted by the app, CPU per GiB
#
#   sudo bench/tls.sh [--quick] [--tapestry PATH] [--tls-bin PATH] [--runs N] [--only LIST]
#                     [--duration S] [--concurrency N] [--streams N] [--chunk N] [--nginx-workers N]
#                     [--cell-arg A]... [--no-write] [--note TEXT]
#
#   --quick            3 s per run instead of 10 s
#   --tapestry P       use this tapestry binary (default: cargo build --release, then target/release/tapestry)
#   --tls-bin P        use this tls-bench binary (default: cargo build --release -p tapestry-bench --bin tls-bench)
#   --runs N           runs per measurement (default 3); the median is reported
#   --only LIST        measure only these (comma-separated: hs,bulk); implies --no-write
#   --duration S       seconds per run (default 10, 3 with --quick)
#   --concurrency N    handshake loops in parallel (default 4)
#   --streams N        bulk: TLS connections in parallel (default 1)
#   --chunk N          bulk: bytes per write (default 65536)
#   --nginx-workers N  nginx worker_processes (default 1, as the cell terminates on one stack thread)
#   --cell-arg A       pass A to `tapestry cell` (repeatable)
#   --no-write         print the table and the markdown but leave BENCHMARKS.md alone
#   --note TEXT        a line added to the BENCHMARKS.md section
#
# Topology (namespaces prefixed tpbt-, all removed on every exit path):
#   Tapestry: control plane tpbt-tctl (198.18.0.10) and one cell tpbt-t1 (198.18.0.11) on a bridge
#             underlay tpbt-ul; the app container tpbt-tw (app-web, handle bench-web; the backend
#             on CONTAINER_IP:8080) and the client container tpbt-tc1 (app-client) on that cell;
#             a policy app-client -> app-web tcp 61443. The client connects to CONTAINER_IP:61443;
#             the cell terminates TLS and opens CONTAINER_IP:8080.
#   nginx:    a "cell" namespace tpbt-k1 with CONTAINER_IP (the same address, so the certificate's
#             IP SAN matches) on lo, nginx listening there; client namespace tpbt-kc1 (10.254.1.2)
#             and app namespace tpbt-kc2 (10.254.2.2, the same backend on 8080) each behind a
#             veth, plumbed as Silk plumbs a container (bench/lib/kernel.sh).
# Both sides present the same certificate (checked: its SHA-256 fingerprint as served, and the
# chain with openssl s_client -CAfile ca.crt -verify_ip); the client pins it.
#
# If a Tapestry measurement cannot be made (build, start-up, TLS not answering, a run failing),
# the nginx side is still measured (with a certificate made by openssl if Tapestry issued none),
# the table says why Tapestry is n/a, BENCHMARKS.md is not written and the script exits 1 with
# the reasons. Every command has a time limit.

set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
PREFIX=tpbt

QUICK=0; TAPESTRY=""; TLS_BIN=""; RUNS=3; WRITE=1; CELL_ARGS=(); NOTE=""; ONLY=""; DUR=""
CONC=4; STREAMS=1; NGX_WORKERS=1; CHUNK=65536
while [ $# -gt 0 ]; do
    case $1 in
        --quick) QUICK=1 ;;
        --tapestry) TAPESTRY=${2:?--tapestry needs a path}; shift ;;
        --tls-bin) TLS_BIN=${2:?--tls-bin needs a path}; shift ;;
        --runs) RUNS=${2:?--runs needs a number}; shift ;;
        --only) ONLY=",${2:?--only needs a list},"; WRITE=0; shift ;;
        --duration) DUR=${2:?--duration needs seconds}; shift ;;
        --concurrency) CONC=${2:?--concurrency needs a number}; shift ;;
        --streams) STREAMS=${2:?--streams needs a number}; shift ;;
        --chunk) CHUNK=${2:?--chunk needs a number}; shift ;;
        --nginx-workers) NGX_WORKERS=${2:?--nginx-workers needs a number}; shift ;;
        --cell-arg) CELL_ARGS+=("${2:?--cell-arg needs a value}"); shift ;;
        --no-write) WRITE=0 ;;
        --note) NOTE=${2:?--note needs text}; shift ;;
        -h|--help) sed -n '2,46p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
for m in ${ONLY//,/ }; do
    case $m in hs|bulk) ;; *) echo "--only: unknown measurement $m (hs,bulk)" >&2; exit 2 ;; esac
done
for v in RUNS CONC STREAMS NGX_WORKERS CHUNK; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || { echo "--$(echo "$v" | tr 'A-Z_' 'a-z-' | sed 's/^conc$/concurrency/; s/^ngx-/nginx-/') must be a positive integer" >&2; exit 2; }
done
[ -z "$DUR" ] && { if [ $QUICK = 1 ]; then DUR=3; else DUR=10; fi; }
[[ $DUR =~ ^[1-9][0-9]*$ ]] || { echo "--duration must be a positive integer" >&2; exit 2; }

SHOWN=()
[ $QUICK = 1 ] && SHOWN+=(--quick)
[ -n "$TAPESTRY" ] && SHOWN+=(--tapestry "$TAPESTRY")
[ -n "$TLS_BIN" ] && SHOWN+=(--tls-bin "$TLS_BIN")
[ "$RUNS" != 3 ] && SHOWN+=(--runs "$RUNS")
[ -n "$ONLY" ] && SHOWN+=(--only "$(echo "$ONLY" | sed 's/^,//; s/,$//')")
if { [ $QUICK = 1 ] && [ "$DUR" != 3 ]; } || { [ $QUICK = 0 ] && [ "$DUR" != 10 ]; }; then SHOWN+=(--duration "$DUR"); fi
[ "$CONC" != 4 ] && SHOWN+=(--concurrency "$CONC")
[ "$STREAMS" != 1 ] && SHOWN+=(--streams "$STREAMS")
[ "$CHUNK" != 65536 ] && SHOWN+=(--chunk "$CHUNK")
[ "$NGX_WORKERS" != 1 ] && SHOWN+=(--nginx-workers "$NGX_WORKERS")
for a in ${CELL_ARGS[@]+"${CELL_ARGS[@]}"}; do SHOWN+=(--cell-arg "$a"); done
CMDLINE="bench/tls.sh${SHOWN[*]:+ ${SHOWN[*]}}"

UNDERLAY_MTU=1500
WATCHDOG_S=$((600 + RUNS * 2 * 2 * (DUR + 40)))

. "$HERE/lib/common.sh"
. "$HERE/lib/kernel.sh"
. "$HERE/lib/tapestry.sh"

[ "$(id -u)" = 0 ] || die "this needs root (network namespaces): sudo $CMDLINE"

# Tools (Debian packages); the stream module is a separate package.
NGX_MOD=/usr/lib/nginx/modules/ngx_stream_module.so
missing=()
for tool in nginx:nginx openssl:openssl python3:python3 curl:curl ip:iproute2 ss:iproute2 timeout:coreutils; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
[ -e "$NGX_MOD" ] || missing+=(libnginx-mod-stream)
if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null ||
        { t 300 apt-get update -q >/dev/null; DEBIAN_FRONTEND=noninteractive t 600 apt-get install -y -q "${missing[@]}" >/dev/null; } ||
        die "could not install ${missing[*]}"
fi
[ -e "$NGX_MOD" ] || die "no nginx stream module at $NGX_MOD (Debian package libnginx-mod-stream)"
NGINX=$(command -v nginx)

W=$(mktemp -d /tmp/tpbt.XXXXXX)
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
# bulk first: it uses a handful of connections, while the handshake runs leave thousands of
# closed connections behind on each side (TIME_WAIT), which must not weigh on the bulk figures.
for m in bulk hs; do wanted "$m" && METRICS+=("$m"); done

# Tapestry's failure reasons: TF[all] for the whole side, TF[METRIC] for one measurement.
declare -A TF
tfail() { # KEY REASON
    [ -n "${TF[$1]:-}" ] && return 0
    TF[$1]=$2
    log "tapestry: ${1/all/everything} n/a ($2)"
}
tok() { [ -z "${TF[all]:-}" ] && [ -z "${TF[$1]:-}" ]; }

# Binaries, built in release mode unless given.
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
if [ -z "$TLS_BIN" ]; then
    command -v cargo >/dev/null || die "cargo not found; pass --tls-bin PATH"
    log "building tls-bench (cargo build --release -p tapestry-bench --bin tls-bench)"
    (cd "$ROOT" && t 1800 cargo build --release -p tapestry-bench --bin tls-bench) >"$W/build-tls.log" 2>&1 ||
        die "building tls-bench failed: $(grep -m1 '^error' "$W/build-tls.log" | cut -c1-160)"
    TLS_BIN=$TDIR/release/tls-bench
fi
[ -x "$TLS_BIN" ] || die "no tls-bench binary at $TLS_BIN"

# (&&: if Ctrl-C kills the sleep too, the watchdog must not go on to signal us mid-cleanup)
( sleep "$WATCHDOG_S" && touch "$W/watchdog" && kill -TERM $$ ) 2>/dev/null &
WATCHDOG=$!

TLS_PORT=61443
APP_PORT=8080
K_CNS=$PREFIX-kc1      # nginx side: client namespace
K_ANS=$PREFIX-kc2      # nginx side: the app's namespace
K_AIP=$K_OVERLAY.2.2   # and its address
T_CNS=$PREFIX-tc1      # Tapestry side: client container
T_ANS=$PREFIX-tw       # Tapestry side: the app container
T_HIP=198.18.0.11      # the cell's underlay address
T_AIP=""               # the app container's IP (also nginx's listening address)
CERTS=$W/certs         # what both sides serve: instance.crt, instance.key, ca.crt
mkdir -p "$CERTS"

t_container() { # NS HANDLE APP: namespace NS attached to cell 1; its IP in T_CIP
    local ns=$1 handle=$2 app=$3 out
    ns_add "$ns" || { TFAIL="netns setup failed"; return 1; }
    if ! out=$(t 30 "$TAPESTRY" container up --cell-socket "$W/t1/cell.sock" --handle "$handle" \
        --app "$app" --space bench --netns "/var/run/netns/$ns" 2>"$W/container-up.$handle.log"); then
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

# Control plane, one cell, the app and client containers, the policy, the app's backend; then
# the instance credentials copied to $CERTS.
T_APP_PID=""
tapestry_tls_build() {
    local out i dir pol
    tapestry_control "$TAPESTRY" "$W" && tapestry_cell "$TAPESTRY" "$W" 1 "$T_HIP" &&
        tapestry_cell_wait "$W" 1 "${T_CELL_PIDS[0]}" || { tfail all "$TFAIL"; return 1; }
    t_container "$T_ANS" bench-web app-web || { tfail all "$TFAIL"; return 1; }
    T_AIP=$T_CIP
    t_container "$T_CNS" bench-client app-client || { tfail all "$TFAIL"; return 1; }
    pol='{"policies":[{"source":{"id":"app-client"},"destination":{"id":"app-web","protocol":"tcp","ports":{"start":'$TLS_PORT',"end":'$TLS_PORT'}}}]}'
    if ! out=$(t_api POST /networking/v1/external/policies "$pol" 2>&1) || [ "$(echo "$out" | tr -d '[:space:]')" != "{}" ]; then
        tfail all "creating the policy failed: $(echo "$out" | cut -c1-200)"; return 1
    fi
    bg "$T_ANS" "$W/app.t.log" "$TLS_BIN" backend --listen "$T_AIP:$APP_PORT" --lifetime-s "$WATCHDOG_S"
    T_APP_PID=$BG_PID
    wait_listen "$T_ANS" "$APP_PORT" 10 || { tfail all "the backend did not start: $(last_line "$W/app.t.log")"; return 1; }
    dir=$W/t1/instances/bench-web
    for i in $(seq 1 100); do
        [ -s "$dir/ca.crt" ] && [ -s "$dir/instance.crt" ] && [ -s "$dir/instance.key" ] && break
        sleep 0.1
    done
    [ -s "$dir/ca.crt" ] || { tfail all "no instance credentials in $dir after 10 s"; return 1; }
    cp "$dir/instance.crt" "$dir/instance.key" "$dir/ca.crt" "$CERTS/" || { tfail all "could not copy $dir"; return 1; }
}

# Without Tapestry's credentials (its side failed): an ECDSA P-256 CA and certificate made with
# openssl for the same address, so that the nginx side is still measured.
own_certs() {
    T_AIP=${T_AIP:-10.255.1.2}
    {
        t 20 openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/ca.key" &&
        t 20 openssl req -x509 -new -key "$CERTS/ca.key" -subj /CN=bench-ca -days 2 -out "$CERTS/ca.crt" &&
        t 20 openssl ecparam -name prime256v1 -genkey -noout -out "$CERTS/instance.key" &&
        t 20 openssl req -new -key "$CERTS/instance.key" -subj /CN=bench-web -out "$CERTS/instance.csr" &&
        t 20 openssl x509 -req -in "$CERTS/instance.csr" -CA "$CERTS/ca.crt" -CAkey "$CERTS/ca.key" -days 2 \
            -extfile <(echo "subjectAltName=IP:$T_AIP") -out "$CERTS/instance.crt"
    } >"$W/own-certs.log" 2>&1 || die "could not make a certificate for the nginx side: $(last_line "$W/own-certs.log")"
}

# The nginx reference: "cell" namespace k1 with T_AIP on lo and nginx (stream module) there;
# client kc1 and app kc2 each behind a veth from k1.
K_NGX_PID=""; K_APP_PID=""
nginx_build() {
    local hns=$PREFIX-k1
    ns_add "$hns" && ip netns exec "$hns" sysctl -qw net.ipv4.ip_forward=1 && kernel_container 1 || return 1
    # the app namespace, plumbed like kernel_container but behind the same "cell"
    ns_add "$K_ANS" || return 1
    ip -n "$hns" link add s-c2 mtu $((UNDERLAY_MTU - 50)) type veth peer name eth0 mtu $((UNDERLAY_MTU - 50)) netns "$K_ANS" || return 1
    ip -n "$hns" addr add 169.254.0.1 peer "$K_AIP/32" dev s-c2 && ip -n "$hns" link set s-c2 up || return 1
    ip -n "$K_ANS" addr add "$K_AIP/32" dev eth0 && ip -n "$K_ANS" link set eth0 up || return 1
    ip -n "$K_ANS" route add 169.254.0.1 dev eth0 scope link && ip -n "$K_ANS" route add default via 169.254.0.1 dev eth0 || return 1
    ip -n "$hns" addr add "$T_AIP/32" dev lo || return 1
    bg "$K_ANS" "$W/app.k.log" "$TLS_BIN" backend --listen "$K_AIP:$APP_PORT" --lifetime-s "$WATCHDOG_S"
    K_APP_PID=$BG_PID
    wait_listen "$K_ANS" "$APP_PORT" 10 || { log "the backend did not start: $(last_line "$W/app.k.log")"; return 1; }
    mkdir -p "$W/nginx/logs"
    cat >"$W/nginx/nginx.conf" <<CONF
load_module $NGX_MOD;
# one worker by default: the cell terminates TLS on one thread (its stack thread)
worker_processes $NGX_WORKERS;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 8192; }
stream {
    server {
        listen $T_AIP:$TLS_PORT ssl backlog=4096;
        ssl_certificate $CERTS/instance.crt;
        ssl_certificate_key $CERTS/instance.key;
        ssl_protocols TLSv1.3;
        ssl_session_cache off;
        ssl_session_tickets off;
        proxy_pass $K_AIP:$APP_PORT;
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }
}
CONF
    nsx "$hns" 10 "$NGINX" -t -p "$W/nginx/" -e "$W/nginx/error.log" -c "$W/nginx/nginx.conf" >"$W/nginx-t.log" 2>&1 ||
        { log "nginx -t: $(last_line "$W/nginx-t.log")"; return 1; }
    bg "$hns" "$W/nginx.log" "$NGINX" -p "$W/nginx/" -e "$W/nginx/error.log" -c "$W/nginx/nginx.conf" -g 'daemon off;'
    K_NGX_PID=$BG_PID
    wait_listen "$hns" "$TLS_PORT" 10 || { log "nginx did not start: $(last_line "$W/nginx/error.log")"; return 1; }
}

# served SIDE: "sha256-fingerprint verify-result" of the certificate served at T_AIP:61443, the
# chain checked against ca.crt for the IP.
served() {
    local ns=$K_CNS
    [ "$1" = t ] && ns=$T_CNS
    nsx "$ns" 10 openssl s_client -connect "$T_AIP:$TLS_PORT" -CAfile "$CERTS/ca.crt" -verify_return_error \
        -verify_ip "$T_AIP" -tls1_3 </dev/null >"$W/s_client.$1.txt" 2>&1
    printf '%s %s\n' "$(openssl x509 -noout -fingerprint -sha256 <"$W/s_client.$1.txt" 2>/dev/null | cut -d= -f2)" \
        "$(grep -m1 -o 'Verify return code: [0-9]* ([^)]*)' "$W/s_client.$1.txt" | sed 's/Verify return code: //')"
}

log "work dir $W; $DUR s per run, $RUNS runs each, median reported; measuring: ${METRICS[*]}"
underlay_add || die "could not create the underlay"
if [ -z "${TF[all]:-}" ]; then
    log "tapestry: control plane, one cell, app-web (backend on :$APP_PORT) and app-client containers, policy app-client -> app-web tcp $TLS_PORT"
    tapestry_tls_build || true
fi
[ -s "$CERTS/instance.crt" ] || { log "no Tapestry credentials: nginx gets a certificate made by openssl"; own_certs; }
log "nginx reference: stream module, $NGX_WORKERS worker(s), listening on $T_AIP:$TLS_PORT, proxy_pass $K_AIP:$APP_PORT"
nginx_build || die "could not set up the nginx reference"
SIDES=(k)
[ -z "${TF[all]:-}" ] && SIDES+=(t)

# Before any number: the same certificate, verified, on both sides. Tapestry: the policy and the
# credentials reach the cell through the control plane, so wait (20 s at most) for TLS first.
WANT_FP=$(openssl x509 -noout -fingerprint -sha256 -in "$CERTS/instance.crt" | cut -d= -f2)
read -r fp vr <<<"$(served k)"
[ "$fp" = "$WANT_FP" ] && [[ $vr == "0 (ok)"* ]] ||
    die "nginx reference: served certificate ${fp:-none} (verify: ${vr:-none}), expected $WANT_FP verified; $(last_line "$W/s_client.k.txt")"
log "  k: serves the instance certificate (sha256 ${WANT_FP:0:23}...), chain verified for $T_AIP"
if [ -z "${TF[all]:-}" ]; then
    end=$(( $(date +%s) + 20 ))
    while :; do
        read -r fp vr <<<"$(served t)"
        [ "$fp" = "$WANT_FP" ] && [[ $vr == "0 (ok)"* ]] && break
        if [ "$(date +%s)" -ge "$end" ] || ! alive "${T_CELL_PIDS[0]}"; then
            tfail all "no verified TLS on $T_AIP:$TLS_PORT after 20 s: served ${fp:-nothing} (verify: ${vr:-none}); $(last_line "$W/s_client.t.txt")"; break
        fi
        sleep 0.2
    done
    [ -z "${TF[all]:-}" ] && log "  t: serves the instance certificate, chain verified for $T_AIP"
fi
[ -n "${TF[all]:-}" ] && SIDES=(k)

# The clients open tens of thousands of connections and close first (TIME_WAIT on their side):
# with the default port range the kernel's search for a free port soon costs more than the
# handshake, so both client namespaces get the whole range and TIME_WAIT reuse, as load generators do;
# so does nginx's namespace, whose connections to the app are in the same position (nginx closes them).
for ns in "$K_CNS" "$PREFIX-k1" $([ -z "${TF[all]:-}" ] && echo "$T_CNS"); do
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 ||
        die "could not set the client's port range in $ns"
done

HZ=$(getconf CLK_TCK)
declare -A VALS   # "side.metric" -> space-separated samples
declare -A NEGO   # side -> "suite group"
declare -A FIRST_ERR   # side -> the first failed handshake run's "N% failed, first: ERROR"
add_val() { VALS[$1.$2]="${VALS[$1.$2]:-} $3"; }
cpu_line() { awk '/^cpu /{print $2, $3, $4, $5, $6, $7, $8, $9; exit}' /proc/stat; }
pid_ticks() { # utime+stime of a process (all its threads) so far
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    set -- $s
    echo $(( ${12} + ${13} ))
}
nginx_ticks() { # nginx's master and workers
    local p sum=0
    for p in "$K_NGX_PID" $(pgrep -P "$K_NGX_PID" 2>/dev/null); do sum=$((sum + $(pid_ticks "$p"))); done
    echo "$sum"
}
server_ticks() { if [ "$1" = t ]; then tapestry_cell_ticks; else nginx_ticks; fi; }
app_ticks() { if [ "$1" = t ]; then pid_ticks "$T_APP_PID"; else pid_ticks "$K_APP_PID"; fi; }

# client SIDE KEY RUN ARGS...: one tls-bench client run from the side's client namespace, with the
# CPU of the terminator, the app, the client and the machine over it. Leaves in R: the client's
# JSON line, then "server app client machine" seconds.
client() {
    local side=$1 key=$2 run=$3 ns=$K_CNS out c0 c1 s0 s1 a0 a1 rc; shift 3
    [ "$side" = t ] && ns=$T_CNS
    out=$W/$key.$side.$run.json
    c0=$(cpu_line); s0=$(server_ticks "$side"); a0=$(app_ticks "$side")
    # (a subshell, so that `times` reports the client's CPU alone)
    (
        nsx "$ns" $((DUR + 30)) "$TLS_BIN" "$@" --connect "$T_AIP:$TLS_PORT" --pin "$CERTS/instance.crt" \
            --duration-s "$DUR" >"$out" 2>"$out.err"
        echo $? >"$out.rc"
        times >"$out.times"
    )
    rc=$(cat "$out.rc" 2>/dev/null || echo '?')
    c1=$(cpu_line); s1=$(server_ticks "$side"); a1=$(app_ticks "$side")
    R=$(python3 - "$out" "$HZ" "$c0" "$c1" "$s0" "$s1" "$a0" "$a1" "$out.times" <<'PY'
import json, re, sys
out, hz, c0, c1, s0, s1, a0, a1, times = sys.argv[1:]
j = json.loads(open(out).read().strip().splitlines()[-1])
hz = int(hz)
d = [b - a for a, b in zip(map(int, c0.split()), map(int, c1.split()))]
user, nice, system, idle, iowait, irq, softirq, steal = d
t = re.findall(r"([0-9]+)m([0-9.]+)s", open(times).read().splitlines()[-1])
client = sum(int(m) * 60 + float(s) for m, s in t) if len(t) == 2 else -1
print(json.dumps(j))
print((int(s1) - int(s0)) / hz, (int(a1) - int(a0)) / hz, client, (user + nice + system + irq + softirq) / hz)
PY
) || { RUN_ERR="tls-bench (exit $rc): $(tail -c 300 "$out.err" "$out" 2>/dev/null | tr '\n' ' ')"; return 1; }
}

# hs SIDE RUN: full handshakes per second.
hs() {
    local side=$1 run=$2 j r
    client "$side" hs "$run" handshakes --concurrency "$CONC" || return 1
    j=$(echo "$R" | head -n 1)
    r=$(python3 - "$j" 2>"$W/hs-errors.$side.$run" <<'PY'
import json, sys
j = json.loads(sys.argv[1])
if not j["connections"] or j["errors"] > j["connections"]:
    sys.exit(f'{j["connections"]} handshakes, {j["errors"]} failed connections: {j["first_error"]}')
print(round(j["per_second"]), j["median_us"], j["p99_us"], j["connections"], j["errors"], j["suite"], j["group"])
if j["errors"]:
    print(f'{j["errors"] / (j["errors"] + j["connections"]) * 100:.2f}% failed, first: {j["first_error"]}', file=sys.stderr)
PY
) || { RUN_ERR="$(cat "$W/hs-errors.$side.$run")"; return 1; }
    if [ -s "$W/hs-errors.$side.$run" ]; then
        FIRST_ERR[$side]=${FIRST_ERR[$side]:-$(cat "$W/hs-errors.$side.$run")}
        log "  $side handshakes run $run: $(cat "$W/hs-errors.$side.$run")"
    fi
    set -- $r $(echo "$R" | tail -n 1)
    local n=$4 k
    add_val "$side" hs_rate "$1"; add_val "$side" hs_med "$2"; add_val "$side" hs_p99 "$3"
    add_val "$side" hs_err "$(awk -v e="$5" -v n="$n" 'BEGIN{printf "%.2f", e / (e + n) * 100}')"
    NEGO[$side]="$6 $7"
    k=$(awk -v s="$8" -v a="$9" -v c="${10}" -v m="${11}" -v n="$n" 'BEGIN{f=1000/n; printf "%.4f %.4f %.4f %.4f", s*f, a*f, c*f, m*f}')
    set -- "$@" $k
    add_val "$side" hs_cpu "${12}"; add_val "$side" hs_cpu_app "${13}"; add_val "$side" hs_cpu_client "${14}"; add_val "$side" hs_cpu_all "${15}"
    log "  $side handshakes run $run: $1/s ($n, $5 errors), latency median $2 us p99 $3 us; CPU s per 1000: ${12} terminator, ${14} client, ${15} machine; $6 $7"
}

# bulk SIDE RUN: a stream into the app, Gbit/s as the app counts it.
bulk() {
    local side=$1 run=$2 j r lines0 app=$W/app.$1.log
    lines0=$(wc -l <"$app")
    client "$side" bulk "$run" bulk --streams "$STREAMS" --chunk "$CHUNK" || return 1
    # the app's report comes when it sees the EOF
    for _ in $(seq 1 50); do [ "$(wc -l <"$app")" -ge $((lines0 + STREAMS)) ] && break; sleep 0.1; done
    j=$(echo "$R" | head -n 1)
    r=$(python3 - "$app" "$lines0" "$STREAMS" "$j" 2>&1 <<'PY'
import json, sys
app, lines0, streams, j = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
if j["errors"] or j["streams"] != streams:
    sys.exit(f'{j["streams"]} streams, {j["errors"]} errors: {j["first_error"]}')
rep = [json.loads(l) for l in open(app).read().splitlines()[lines0:] if l.startswith("{")]
if len(rep) < streams:
    sys.exit(f"the app reported {len(rep)} of {streams} streams")
b = sum(r["bytes"] for r in rep)
if b + 1 < j["bytes"]:
    sys.exit(f'the app received {b} of the {j["bytes"]} bytes sent')
s = max(r["seconds"] for r in rep)
print(f'{b * 8 / s / 1e9:.3f} {b / 2**30:.4f} {j["gbit_per_second"]:.3f} {j["suite"]} {j["group"]}')
PY
) || { RUN_ERR=$r; return 1; }
    set -- $r $(echo "$R" | tail -n 1)
    local k
    add_val "$side" bulk_gbps "$1"
    NEGO[$side]="$4 $5"
    k=$(awk -v s="$6" -v a="$7" -v c="$8" -v m="$9" -v g="$2" 'BEGIN{printf "%.4f %.4f %.4f %.4f", s/g, a/g, c/g, m/g}')
    set -- "$@" $k
    add_val "$side" bulk_cpu "${10}"; add_val "$side" bulk_cpu_app "${11}"; add_val "$side" bulk_cpu_client "${12}"; add_val "$side" bulk_cpu_all "${13}"
    log "  $side bulk run $run: $1 Gbit/s at the app ($2 GiB; client wrote $3 Gbit/s); CPU s per GiB: ${10} terminator, ${12} client, ${13} machine; $4 $5"
}

# measure METRIC: RUNS runs of each side, interleaved; a Tapestry run that fails marks the metric n/a.
measure() {
    local m=$1 r side
    for r in $(seq 1 "$RUNS"); do
        for side in "${SIDES[@]}"; do
            [ "$side" = t ] && ! tok "$m" && continue
            RUN_ERR=""
            if ! "$m" "$side" "$r"; then
                [ "$side" = k ] && die "nginx reference: $m run $r failed: $RUN_ERR ($(last_line "$W/nginx/error.log"))"
                if ! alive "${T_CELL_PIDS[0]}"; then
                    tfail all "the cell exited during $m: $(last_line "$W/cell1.log")"
                else
                    tfail "$m" "run $r failed: $RUN_ERR"
                fi
            fi
        done
        alive "$K_NGX_PID" || die "nginx exited during $m: $(last_line "$W/nginx/error.log")"
    done
}

# cell status --json: its numeric counters ("totals" and "drops") as "key=n ...", "" if unavailable.
cell_counters() {
    [ -n "${TF[all]:-}" ] && return 0
    t 10 "$TAPESTRY" cell status --state-dir "$W/t1" --json >"$W/cell-status.json" 2>/dev/null || return 0
    python3 - "$W/cell-status.json" <<'PY' 2>/dev/null
import json, sys
j = json.load(open(sys.argv[1]))
out = []
for sect in ("totals", "drops"):
    for k, v in sorted((j.get(sect) or {}).items()):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(f"{sect}.{k}={v}")
print(" ".join(out))
PY
}
counters_delta() { # BEFORE AFTER: the counters that changed, "key +n, ..."
    python3 - "$1" "$2" <<'PY'
import sys
def parse(s):
    return {k: float(v) for k, v in (x.split("=", 1) for x in s.split())}
a, b = parse(sys.argv[1]), parse(sys.argv[2])
d = [f"{k} {b[k] - a.get(k, 0):+g}" for k in sorted(b) if b[k] != a.get(k, 0)]
print(", ".join(d) or "none")
PY
}
declare -A COUNTERS
LOADAVG_START=$(cut -d' ' -f1-3 /proc/loadavg)
for m in "${METRICS[@]}"; do
    case $m in
        hs) log "full TLS 1.3 handshakes, $CONC loops, $DUR s" ;;
        bulk) log "bulk: $STREAMS TLS stream(s) into the app, $DUR s" ;;
    esac
    c0=$(cell_counters)
    measure "$m"
    if [ -n "$c0" ]; then
        COUNTERS[$m]=$(counters_delta "$c0" "$(cell_counters)")
        log "  cell counters that changed during $m: ${COUNTERS[$m]}"
    fi
done
LOADAVG_END=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${NEGO[t]:-}" ] && [ "${NEGO[t]}" != "${NEGO[k]:-}" ]; then
    log "note: negotiated differently: nginx ${NEGO[k]:-?}, Tapestry ${NEGO[t]}"
fi

# The table
med() { median ${VALS[$1.$2]:-}; }
treason() { if [ -n "${TF[all]:-}" ]; then echo "${TF[all]}"; else echo "${TF[$1]:-}"; fi; }
SHOWN_REASON=()
row() { # LABEL GROUP METRIC DECIMALS [latency]
    local label=$1 group=$2 metric=$3 dec=$4 k t r why
    wanted "$group" || return 0
    k=$(med k "$metric")
    why=$(treason "$group")
    if [ -n "$why" ]; then
        if [[ " ${SHOWN_REASON[*]} " == *" $(echo "$why" | cksum | cut -d' ' -f1) "* ]]; then
            t="n/a"
        else
            t="n/a ($(echo "$why" | tr '|' '/'))"
            SHOWN_REASON+=("$(echo "$why" | cksum | cut -d' ' -f1)")
        fi
    else
        t=$(med t "$metric")
    fi
    if [ "${5:-}" = pct ]; then r=""; else r=$(ratio "$t" "$k"); fi
    if [ "${5:-}" = latency ] && isnum "$t" && isnum "$k"; then
        r="$r ($(awk -v a="$t" -v b="$k" 'BEGIN{printf "%+.0f us", a-b}'))"
    fi
    printf '| %s | %s | %s | %s |\n' "$label" "$(fmt "$k" "$dec")" "$(fmt "$t" "$dec")" "$r"
}

TABLE=$(
    echo "| Metric (median of $RUNS runs) | nginx stream ($NGX_WORKERS worker$([ "$NGX_WORKERS" = 1 ] || echo s)) | Tapestry cell | Tapestry / nginx |"
    echo "|---|---|---|---|"
    row "Full TLS 1.3 handshakes per second ($CONC loops)" hs hs_rate 0
    row "Connections that failed (%)" hs hs_err 2 pct
    row "Handshake + one byte to the app and back, median (us)" hs hs_med 0 latency
    row "Handshake + one byte to the app and back, p99 (us)" hs hs_p99 0 latency
    row "CPU s per 1000 handshakes, terminator (nginx master+worker / cell process)" hs hs_cpu 3
    row "CPU s per 1000 handshakes, client (tls-bench)" hs hs_cpu_client 3
    row "CPU s per 1000 handshakes, app (backend)" hs hs_cpu_app 3
    row "CPU s per 1000 handshakes, whole machine" hs hs_cpu_all 3
    row "Bulk into the app, $STREAMS stream$([ "$STREAMS" = 1 ] || echo s) (Gbit/s)" bulk bulk_gbps 2
    row "CPU s per GiB, terminator (nginx master+worker / cell process)" bulk bulk_cpu 3
    row "CPU s per GiB, client (tls-bench)" bulk bulk_cpu_client 3
    row "CPU s per GiB, app (backend)" bulk bulk_cpu_app 3
    row "CPU s per GiB, whole machine" bulk bulk_cpu_all 3
)

NOTE_LINE=""
[ -n "$NOTE" ] && NOTE_LINE=$'\n'"$NOTE"
BUSY_NOTE=""
if awk -v l="${LOADAVG_START%% *}" -v n="$(nproc)" 'BEGIN{exit !(l > n / 2)}'; then
    BUSY_NOTE=$'\n\n'"**Caution:** the machine was busy with other work when this ran (1-minute load average ${LOADAVG_START%% *} on $(nproc) CPUs), so absolute figures are low and noisy and the whole-machine CPU rows include that work; the ratios, measured interleaved in the same run, are the meaningful part."
fi
if [ "$NGX_WORKERS" = 1 ]; then
    NGX_WHY="One nginx worker (\`worker_processes 1\`), because the cell terminates TLS on one thread, its stack thread (the cell's TAP workers only carry the frames); \`--nginx-workers 2\` measures nginx on both CPUs."
else
    NGX_WHY="$NGX_WORKERS nginx workers (\`--nginx-workers $NGX_WORKERS\`), while the cell terminates TLS on one thread (its stack thread)."
fi
KERNEL=$(uname -r)
CPU=$(lscpu 2>/dev/null | awk -F: '/^Model name/{gsub(/^ +/, "", $2); print $2; exit}')
NCPU=$(nproc)
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
REV=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain 2>/dev/null | grep -qv '^??' && echo "+uncommitted" || true)
NGINX_V=$("$NGINX" -v 2>&1 | sed 's/.*nginx\///')
OPENSSL_V=$(openssl version | awk '{print $2}')

SECTION=$(cat <<MD
## TLS on 61443

Produced by \`sudo $CMDLINE\` on $DATE: Linux $KERNEL, $CPU, $NCPU CPUs, checkout $REV$DIRTY
(\`${TAPESTRY:-no tapestry}\`${CELL_ARGS[*]:+ ${CELL_ARGS[*]}}; nginx ${NGINX_V:-?} with the stream module, OpenSSL ${OPENSSL_V:-?}). Load average at start / end of the measurements: $LOADAVG_START / $LOADAVG_END.$NOTE_LINE$BUSY_NOTE

$TABLE

How it is measured (one run builds both sides; runs alternate nginx/Tapestry; each figure is the median of $RUNS runs of $DUR s):
- Both terminators serve the same files: the instance identity certificate and key that the cell issued to the app container
  (ECDSA P-256, \`STATE_DIR/instances/bench-web/instance.{crt,key}\`), copied for nginx; before any number \`openssl s_client\`
  checks on each side that this certificate (SHA-256 fingerprint) is served and verifies against \`ca.crt\` for the container's IP.
  Negotiated: nginx ${NEGO[k]:-?}, Tapestry ${NEGO[t]:-n/a} (TLS 1.3 only on both).
- Client: bench/src/bin/tls_bench.rs (rustls 0.23, ring) in a client container: TLS 1.3 only, session resumption and early data off,
  so every connection is a full handshake (ECDHE + the server's ECDSA signature); the client pins the instance certificate (it
  checks that exact certificate and the server's signature over the handshake, not the chain again, to keep the client's own CPU
  down on a $NCPU-CPU machine it shares with the server).
  Handshakes: $CONC loops, each connection = TCP connect, handshake, one byte through the terminator to the app and one byte back
  (so the terminator finished the handshake and opened the app's 8080), close_notify, close; latency = that whole exchange.
  A connection that fails (refused, reset, timed out after 5 s) counts in "failed" and its loop pauses 10 ms; a run counts unless
  more connections failed than succeeded. First failure seen: nginx ${FIRST_ERR[k]:-none}; Tapestry ${FIRST_ERR[t]:-none}.
  Bulk: $STREAMS connection(s) writing $CHUNK-byte buffers of a fixed pseudo-random payload for $DUR s into the app, which discards them;
  Gbit/s = bytes the app received / the app's first-to-last-byte time.
- The app: \`tls-bench backend\` on port 8080 (answers the first byte, then reads and discards), the same binary on both sides.
- Tapestry: \`tapestry control\`, one \`tapestry cell\`, \`tapestry container up\` for app-web (bench-web) and app-client on that cell,
  policy app-client -> app-web tcp $TLS_PORT; the client connects to the app container's IP:$TLS_PORT, the cell's local stack
  terminates TLS (rustls) and opens the container's IP:8080.
- nginx: \`worker_processes $NGX_WORKERS\`, \`stream { server { listen IP:$TLS_PORT ssl; ssl_protocols TLSv1.3; ssl_session_cache off;
  ssl_session_tickets off; proxy_pass APP:8080; } }\`, listening on the same IP in a "cell" namespace that the client namespace and the
  app namespace each reach through one veth, plumbed as Silk plumbs a container (bench/lib/kernel.sh). $NGX_WHY
- CPU over each run from /proc: "terminator" = utime+stime of nginx's master and workers, or of the whole cell process (TAP workers
  carrying the client's and the app's frames, the stack thread with TCP and TLS, control sync; the cell busy-polls for 200 us after its
  last packet unless told otherwise); on the nginx side the veths' packet work is kernel softirq charged to no process, so the
  terminator rows favour nginx and the whole-machine rows (user+nice+system+irq+softirq of all CPUs) are the even comparison.
  "client" = tls-bench's user+system time; "app" = the backend's.
- Both client namespaces and nginx's have \`net.ipv4.ip_local_port_range = 1024 65535\` and \`net.ipv4.tcp_tw_reuse = 1\` (the usual proxy
  tuning): the client closes first and nginx closes its connection to the app, and without them the TIME_WAIT sockets of earlier runs
  make the kernel's search for a free port the bottleneck (seen: 1500/s falling to 200/s). The cell's stack picks its own ports.
- Bulk runs first, then handshakes: the handshake runs leave thousands of closed connections behind, which must not weigh on bulk.
  The cell's counters (\`tapestry cell status --json\` totals and drops) that changed: bulk: ${COUNTERS[bulk]:-not read}; handshakes: ${COUNTERS[hs]:-not read}.
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
    write_section "$ROOT/BENCHMARKS.md" "TLS on 61443" "$SECTION"
fi
if [ ${#FAILS[@]} -gt 0 ]; then
    for f in "${FAILS[@]}"; do log "tapestry: $f"; done
    die "the Tapestry side could not be measured (${#FAILS[@]} of ${#METRICS[@]}); the nginx figures above are complete"
fi
exit 0
