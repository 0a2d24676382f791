# The same topology on Tapestry: a control plane ($PREFIX-tctl, 198.18.0.10), two cells
# ($PREFIX-t1/-t2 at 198.18.0.11/.12, each a `tapestry cell` process) and a container namespace
# per cell ($PREFIX-tc1/-tc2) attached with `tapestry container up`. On any failure the reason
# is left in TFAIL and the function returns non-zero.

T_CTL_IP=198.18.0.10
T_CELL_PIDS=()
TFAIL=""

# last meaningful line of a log, for error messages
last_line() { grep -v '^\s*$' "$1" 2>/dev/null | tail -n 1 | cut -c1-200; }

t_api() { # METHOD PATH [JSON]
    local m=$1 p=$2 body=${3:-}
    local args=(-sS --max-time 10 -X "$m" -H "Authorization: Bearer $T_TOKEN")
    [ -n "$body" ] && args+=(-H 'Content-Type: application/json' -d "$body")
    nsx "$PREFIX-tctl" 15 curl "${args[@]}" "http://$T_CTL_IP:4002$p"
}

# tapestry_control BIN W: the control plane in $PREFIX-tctl at $T_CTL_IP, data in W/control;
# sets T_CTL_PID and T_TOKEN once its API answers.
tapestry_control() {
    local bin=$1 w=$2 i
    host_add "$PREFIX-tctl" "$T_CTL_IP" || { TFAIL="underlay setup failed"; return 1; }
    bg "$PREFIX-tctl" "$w/control.log" "$bin" control --data-dir "$w/control" \
        --listen "$T_CTL_IP:4002" --internal-listen "$T_CTL_IP:4003"
    T_CTL_PID=$BG_PID
    for i in $(seq 1 300); do
        [ -s "$w/control/admin.token" ] && break
        alive "$T_CTL_PID" || break
        sleep 0.1
    done
    if [ ! -s "$w/control/admin.token" ]; then
        TFAIL="control plane failed to start: $(last_line "$w/control.log")"; return 1
    fi
    T_TOKEN=$(tr -d '[:space:]' <"$w/control/admin.token")
    for i in $(seq 1 100); do
        t_api GET /health >/dev/null 2>&1 && break
        sleep 0.2
    done
    t_api GET /health >/dev/null 2>&1 || { TFAIL="control plane API not answering: $(last_line "$w/control.log")"; return 1; }
}

# tapestry_cell BIN W I UNDERLAY_IP [ARGS...]: starts `tapestry cell` in $PREFIX-t$I (state in
# W/tI, log W/cellI.log) with CELL_ARGS and ARGS; its pid is appended to T_CELL_PIDS. Does not wait.
tapestry_cell() {
    local bin=$1 w=$2 i=$3 u=$4; shift 4
    local ns=$PREFIX-t$i
    host_add "$ns" "$u" || { TFAIL="underlay setup failed"; return 1; }
    mkdir -p "$w/t$i"
    "$bin" control cell-credentials --data-dir "$w/control" --underlay-ip "$u" --out "$w/creds$i" >/dev/null \
        || { TFAIL="issuing cell $i's credentials failed"; return 1; }
    bg "$ns" "$w/cell$i.log" "$bin" cell --control "https://$T_CTL_IP:4003" \
        --credentials "$w/creds$i" --underlay-ip "$u" \
        --state-dir "$w/t$i" --underlay-mtu "$UNDERLAY_MTU" ${CELL_ARGS[@]+"${CELL_ARGS[@]}"} "$@"
    T_CELL_PIDS+=("$BG_PID")
}

# tapestry_cell_wait W I PID: waits (30 s at most) for cell I's socket.
tapestry_cell_wait() {
    local w=$1 i=$2 pid=$3 n
    for n in $(seq 1 300); do
        [ -S "$w/t$i/cell.sock" ] && break
        alive "$pid" || break
        sleep 0.1
    done
    if ! alive "$pid"; then
        TFAIL="cell failed to start: $(last_line "$w/cell$i.log")"; return 1
    fi
    if [ ! -S "$w/t$i/cell.sock" ]; then
        TFAIL="cell failed to start: no $w/t$i/cell.sock after 30 s ($(last_line "$w/cell$i.log"))"; return 1
    fi
}

# tapestry_container_up BIN W I APP [ARGS...]: namespace $PREFIX-tcI attached to cell I with
# `tapestry container up` (space bench, handle bench-cI, extra ARGS); sets T_IP[I] and leaves what
# it printed in W/container-upI.out.
T_IP=()
tapestry_container_up() {
    local bin=$1 w=$2 i=$3 app=$4 out; shift 4
    ns_add "$PREFIX-tc$i" || { TFAIL="netns setup failed"; return 1; }
    if ! out=$(t 30 "$bin" container up --cell-socket "$w/t$i/cell.sock" --handle "bench-c$i" \
        --app "$app" --space bench --netns "/var/run/netns/$PREFIX-tc$i" "$@" 2>"$w/container-up$i.log"); then
        TFAIL="container up failed: $(last_line "$w/container-up$i.log")"; return 1
    fi
    echo "$out" >"$w/container-up$i.out"
    T_IP[$i]=$(echo "$out" | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):text.rindex("}") + 1])
print(j["container_ip"])' 2>/dev/null)
    [ -n "${T_IP[$i]}" ] || { TFAIL="container up printed no container_ip: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
}

tapestry_build() {
    local bin=$1 w=$2 i out
    if [ ! -x "$bin" ]; then TFAIL="no tapestry binary at $bin"; return 1; fi
    tapestry_control "$bin" "$w" || return 1
    for i in 1 2; do
        tapestry_cell "$bin" "$w" "$i" "198.18.0.$((10 + i))" || return 1
    done
    for i in 1 2; do
        tapestry_cell_wait "$w" "$i" "${T_CELL_PIDS[$((i - 1))]}" || return 1
    done
    tapestry_container_up "$bin" "$w" 1 bench-a || return 1
    tapestry_container_up "$bin" "$w" 2 bench-b || return 1

    local pol='{"policies":[
      {"source":{"id":"bench-a"},"destination":{"id":"bench-b","protocol":"tcp","ports":{"start":5201,"end":5210}}},
      {"source":{"id":"bench-a"},"destination":{"id":"bench-b","protocol":"udp","ports":{"start":5201,"end":5210}}}]}'
    if ! out=$(t_api POST /networking/v1/external/policies "$pol" 2>&1) || [ "$(echo "$out" | tr -d '[:space:]')" != "{}" ]; then
        TFAIL="creating the bench policy failed: $(echo "$out" | cut -c1-200)"; return 1
    fi
    T_CLIENT_NS=$PREFIX-tc1
    T_SERVER_NS=$PREFIX-tc2
    T_SERVER_IP=${T_IP[2]}
}

# CPU ticks (utime+stime) used so far by all tapestry cell processes.
tapestry_cell_ticks() {
    local p s sum=0
    for p in "${T_CELL_PIDS[@]}"; do
        s=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        s=${s##*) }
        set -- $s
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
