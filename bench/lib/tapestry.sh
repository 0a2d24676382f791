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

tapestry_build() {
    local bin=$1 w=$2 i
    if [ ! -x "$bin" ]; then TFAIL="no tapestry binary at $bin"; return 1; fi
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

    for i in 1 2; do
        local ns=$PREFIX-t$i u=198.18.0.$((10 + i))
        host_add "$ns" "$u" || { TFAIL="underlay setup failed"; return 1; }
        mkdir -p "$w/t$i"
        bg "$ns" "$w/cell$i.log" "$bin" cell --control "https://$T_CTL_IP:4003" \
            --credentials "$w/control/cell-credentials" --underlay-ip "$u" \
            --state-dir "$w/t$i" --underlay-mtu "$UNDERLAY_MTU" "${CELL_ARGS[@]}"
        T_CELL_PIDS+=("$BG_PID")
    done
    for i in 1 2; do
        local pid=${T_CELL_PIDS[$((i - 1))]} n
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
    done

    local out
    T_IP=()
    for i in 1 2; do
        ns_add "$PREFIX-tc$i" || { TFAIL="netns setup failed"; return 1; }
        local app=bench-a; [ "$i" = 2 ] && app=bench-b
        if ! out=$(t 30 "$bin" container up --cell-socket "$w/t$i/cell.sock" --handle "bench-c$i" \
            --app "$app" --space bench --netns "/var/run/netns/$PREFIX-tc$i" 2>"$w/container-up$i.log"); then
            TFAIL="container up failed: $(last_line "$w/container-up$i.log")"; return 1
        fi
        T_IP[$i]=$(echo "$out" | python3 -c '
import json, sys
text = sys.stdin.read()
j = json.loads(text[text.index("{"):text.rindex("}") + 1])
print(j["container_ip"])' 2>/dev/null)
        [ -n "${T_IP[$i]}" ] || { TFAIL="container up printed no container_ip: $(echo "$out" | tail -n 1 | cut -c1-200)"; return 1; }
    done

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
