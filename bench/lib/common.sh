# Shared helpers for bench/dataplane.sh: logging, timeouts, namespaces, background processes,
# cleanup. Everything this creates is named with $PREFIX (tpb-) and removed by bench_cleanup.

PREFIX=${PREFIX:-tpb}
BG_PIDS=()

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# t SECS CMD...: a command with a hard time limit (SIGKILL 5 s after SIGTERM).
t() { local s=$1; shift; timeout -k 5 "$s" "$@"; }

# nsx NS SECS CMD...: a command inside namespace NS with a time limit.
nsx() { local ns=$1 s=$2; shift 2; timeout -k 5 "$s" ip netns exec "$ns" "$@"; }

# bg NS LOGFILE CMD...: starts CMD in NS in the background; its pid (the command itself,
# since `ip netns exec` execs it) is remembered for cleanup and left in $BG_PID.
bg() {
    local ns=$1 logf=$2; shift 2
    ip netns exec "$ns" "$@" >"$logf" 2>&1 </dev/null &
    BG_PID=$!
    BG_PIDS+=("$BG_PID")
}

alive() { kill -0 "$1" 2>/dev/null; }

stop_pid() {
    local p=$1 i
    alive "$p" || return 0
    kill -TERM "$p" 2>/dev/null
    for i in $(seq 1 20); do alive "$p" || return 0; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null
}

our_namespaces() { ip netns list 2>/dev/null | awk '{print $1}' | grep "^${PREFIX}-" || true; }

# Stops every process we started and every process left inside one of our namespaces, then
# deletes the namespaces. Safe to call more than once.
bench_cleanup() {
    local p ns
    for p in "${BG_PIDS[@]}"; do stop_pid "$p"; done
    BG_PIDS=()
    for ns in $(our_namespaces); do
        for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null; done
    done
    for ns in $(our_namespaces); do ip netns del "$ns" 2>/dev/null; done
}

ns_add() {
    ip netns add "$1" && ip -n "$1" link set lo up
}

# The underlay: namespace $PREFIX-ul with bridge br0.
underlay_add() {
    local ul=$PREFIX-ul
    ns_add "$ul" || return 1
    ip -n "$ul" link add br0 mtu "$UNDERLAY_MTU" type bridge || return 1
    ip -n "$ul" link set br0 up
}

UL_PORT=0
# host_add NS IP: namespace NS with IP/24 on ul0, a veth into the underlay bridge.
host_add() {
    local ns=$1 ip=$2 ul=$PREFIX-ul
    UL_PORT=$((UL_PORT + 1))
    ns_add "$ns" || return 1
    ip -n "$ul" link add "p$UL_PORT" mtu "$UNDERLAY_MTU" type veth peer name ul0 mtu "$UNDERLAY_MTU" netns "$ns" || return 1
    ip -n "$ul" link set "p$UL_PORT" master br0 up || return 1
    ip -n "$ns" addr add "$ip/24" dev ul0 || return 1
    ip -n "$ns" link set ul0 up
}

# wait_listen NS PORT SECS [tcp|udp]: waits until something listens on PORT inside NS.
wait_listen() {
    local ns=$1 port=$2 secs=$3 proto=${4:-tcp} flag=-ltn i
    [ "$proto" = udp ] && flag=-lun
    for i in $(seq 1 $((secs * 10))); do
        ip netns exec "$ns" ss "$flag" 2>/dev/null | awk '{print $4}' | grep -q ":$port\$" && return 0
        sleep 0.1
    done
    return 1
}

# wait_tcp NS IP PORT SECS: waits until a TCP connection from NS to IP:PORT is established.
wait_tcp() {
    local ns=$1 ip=$2 port=$3 secs=$4 end
    end=$(( $(date +%s) + secs ))
    while [ "$(date +%s)" -lt "$end" ]; do
        nsx "$ns" 2 bash -c "exec 3<>/dev/tcp/$ip/$port" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}

# median of numbers (one per argument); "n/a" when there are none.
median() {
    printf '%s\n' "$@" | grep -E '^-?[0-9.]+(e[-+]?[0-9]+)?$' | sort -g |
        awk '{a[NR]=$1} END { if (NR==0) print "n/a"; else if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'
}

isnum() { [[ $1 =~ ^-?[0-9]+(\.[0-9]+)?$ ]]; }

# fmt VALUE DECIMALS
fmt() { if isnum "$1"; then printf "%.${2}f" "$1"; else printf '%s' "$1"; fi; }

# ratio T K: T/K as "0.85x", or "n/a".
ratio() {
    if isnum "$1" && isnum "$2" && awk -v k="$2" 'BEGIN{exit !(k>0)}'; then
        awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2fx", a/b}'
    else
        printf 'n/a'
    fi
}

# write_section FILE TITLE SECTION: replaces the "## TITLE" section of the markdown FILE (up to
# the next "## " heading) with SECTION, or appends SECTION when there is none.
write_section() {
    python3 - "$1" "$2" "$3" <<'PY'
import os, re, sys
path, title, section = sys.argv[1], sys.argv[2], sys.argv[3].rstrip() + "\n"
text = open(path).read() if os.path.exists(path) else "# Benchmarks\n"
# The title alone on its line, or followed by ": ..." ("Dataplane" is not "Dataplane (packet ports)").
m = re.search(r"^## " + re.escape(title) + r"(?::[^\n]*)?[ \t]*\n", text, re.M)
if m:
    nxt = re.search(r"^## ", text[m.end():], re.M)
    end = m.end() + nxt.start() if nxt else len(text)
    text = text[:m.start()] + section + ("\n" if nxt else "") + text[end:]
else:
    text = text.rstrip() + "\n\n" + section
open(path, "w").write(text)
PY
    log "wrote the $2 section of $1"
}
