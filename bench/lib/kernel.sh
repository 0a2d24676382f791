# The kernel reference: what Silk builds per cell (silk-daemon's VTEP and the CNI plugin's veth,
# route and neighbour entries; no iptables policy rules). Cell i: namespace $PREFIX-k$i on the underlay at
# 198.18.0.$i, a silk-vtep (vxlan id 1 dstport 4789 gbp nolearning) with VTEP IP 10.254.i.0,
# and one container namespace $PREFIX-kc$i with 10.254.i.2/32 behind a veth.

K_OVERLAY=10.254

# vtep_mac A.B.C.D -> ee:ee:aa:bb:cc:dd
vtep_mac() { local IFS=.; set -- $1; printf 'ee:ee:%02x:%02x:%02x:%02x' "$1" "$2" "$3" "$4"; }

# kernel_cell I UNDERLAY_IP
kernel_cell() {
    local i=$1 u=$2
    local ns=$PREFIX-k$i
    local vtep_ip=$K_OVERLAY.$i.0 mtu=$((UNDERLAY_MTU - 50))
    host_add "$ns" "$u" || return 1
    ip -n "$ns" link add silk-vtep type vxlan id 1 dstport 4789 local "$u" dev ul0 nolearning gbp || return 1
    ip -n "$ns" link set silk-vtep address "$(vtep_mac "$vtep_ip")" mtu "$mtu" up || return 1
    ip -n "$ns" addr add "$vtep_ip/16" dev silk-vtep || return 1
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1 || return 1
}

# kernel_container I: container namespace $PREFIX-kc$i with 10.254.i.2/32 on eth0.
kernel_container() {
    local i=$1
    local cns=$PREFIX-kc$i hns=$PREFIX-k$i
    local cip=$K_OVERLAY.$i.2 mtu=$((UNDERLAY_MTU - 50))
    ns_add "$cns" || return 1
    ip -n "$hns" link add "s-c$i" mtu "$mtu" type veth peer name eth0 mtu "$mtu" netns "$cns" || return 1
    ip -n "$hns" addr add 169.254.0.1 peer "$cip/32" dev "s-c$i" || return 1
    ip -n "$hns" link set "s-c$i" up || return 1
    ip -n "$cns" addr add "$cip/32" dev eth0 || return 1
    ip -n "$cns" link set eth0 up || return 1
    ip -n "$cns" route add 169.254.0.1 dev eth0 scope link || return 1
    ip -n "$cns" route add default via 169.254.0.1 dev eth0 || return 1
}

# kernel_peer I J UNDERLAY_IP_OF_J: cell i learns remote cell j as Silk does.
kernel_peer() {
    local i=$1 j=$2 uj=$3 ns=$PREFIX-k$1
    local jvtep=$K_OVERLAY.$j.0
    ip -n "$ns" route add "$K_OVERLAY.$j.0/24" via "$jvtep" dev silk-vtep onlink || return 1
    ip -n "$ns" neigh add "$jvtep" lladdr "$(vtep_mac "$jvtep")" dev silk-vtep nud permanent || return 1
    ip netns exec "$ns" bridge fdb add "$(vtep_mac "$jvtep")" dev silk-vtep dst "$uj" self permanent
}

# kernel_build: two cells, one container each; sets K_CLIENT_NS, K_SERVER_NS, K_SERVER_IP.
kernel_build() {
    kernel_cell 1 198.18.0.1 && kernel_cell 2 198.18.0.2 &&
        kernel_container 1 && kernel_container 2 &&
        kernel_peer 1 2 198.18.0.2 && kernel_peer 2 1 198.18.0.1 || return 1
    K_CLIENT_NS=$PREFIX-kc1
    K_SERVER_NS=$PREFIX-kc2
    K_SERVER_IP=$K_OVERLAY.2.2
}
