#!/usr/bin/env bash
# Two NAT nodes behind a multipath router, in network namespaces: the
# topology of docs/scale-out.md and of
# tests/tests/netns/scale_out.rs, narrated.
#
#   sudo examples/scale-out/demo.sh            # uses target/debug/nat
#   sudo NAT_BIN=/usr/local/sbin/nat examples/scale-out/demo.sh
#
# Needs root, iproute2 with nexthop support (5.3+, resilient groups 5.13+),
# iperf3, a bpffs at /sys/fs/bpf, and a built `nat` (`cargo xtask build`).
# It creates the namespaces so-<pid>-{cl,rt,n0,n1,sv}, runs `nat load` in
# n0 and n1, sends iperf3 streams through them, drains n1 from the group
# and takes it back. Everything it created is removed when it ends, also
# on Ctrl-C. All traffic stays inside its namespaces.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NAT_BIN=${NAT_BIN:-$here/../../target/debug/nat}
[[ $EUID -eq 0 ]] || { echo "demo: run as root" >&2; exit 1; }
[[ -x $NAT_BIN ]] || { echo "demo: no nat binary at $NAT_BIN (cargo xtask build, or set NAT_BIN)" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "demo: iperf3 is missing (apt-get install iperf3)" >&2; exit 1; }
mountpoint -q /sys/fs/bpf || { echo "demo: no bpffs at /sys/fs/bpf (mount -t bpf bpf /sys/fs/bpf)" >&2; exit 1; }

p=so-$$
CL=$p-cl RT=$p-rt SV=$p-sv
NODES=("$p-n0" "$p-n1")
SERVER=198.18.0.2
IDLE_TIMER=3
nat_pids=()
logs=$(mktemp -d)

cleanup() {
    set +e
    for i in "${!NODES[@]}"; do
        # Stops the daemon through its pid file and removes its pins.
        "$NAT_BIN" --netns "${NODES[$i]}" unload --iface veth-ext >/dev/null 2>&1
    done
    for pid in "${nat_pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    for ns in "$CL" "$RT" "$SV" "${NODES[@]}"; do
        ip netns del "$ns" 2>/dev/null
    done
    rm -rf "$logs"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n== %s\n' "$*"; }
nat() { "$NAT_BIN" "$@"; }
run() { printf '$ %s\n' "$*"; "$@"; }

say "namespaces: client $CL, router $RT, nodes ${NODES[*]}, server $SV"
for ns in "$CL" "$RT" "$SV" "${NODES[@]}"; do ip netns add "$ns"; done

# Client: 16 addresses inside the internal prefix, default route via the router.
ip -n "$RT" link add rt-cl type veth peer name veth-cl netns "$CL"
ip -n "$RT" addr add 10.200.1.1/24 dev rt-cl
ip -n "$RT" link set lo up
ip -n "$RT" link set rt-cl up
for i in $(seq 2 17); do ip -n "$CL" addr add 10.200.1.$i/24 dev veth-cl; done
ip -n "$CL" link set lo up
ip -n "$CL" link set veth-cl up
ip -n "$CL" route add default via 10.200.1.1

# Server: its address on lo, one link per node, and a /32 route per node's
# external address: what BGP installs on a real upstream router.
ip -n "$SV" addr add $SERVER/32 dev lo
ip -n "$SV" link set lo up

for i in "${!NODES[@]}"; do
    ns=${NODES[$i]}
    ext=198.19.0.$((i + 1))
    link=198.18.$((10 + i))
    ip -n "$RT" link add rt-n$i type veth peer name veth-in netns "$ns"
    ip -n "$RT" addr add 10.201.$i.1/30 dev rt-n$i
    ip -n "$RT" link set rt-n$i up
    ip -n "$ns" link add veth-ext type veth peer name sv-n$i netns "$SV"
    ip -n "$ns" addr add 10.201.$i.2/30 dev veth-in
    ip -n "$ns" addr add $link.1/24 dev veth-ext
    ip -n "$ns" addr add $ext/32 dev veth-ext
    for dev in lo veth-in veth-ext; do ip -n "$ns" link set $dev up; done
    ip -n "$ns" route add 10.200.1.0/24 via 10.201.$i.1
    ip -n "$ns" route add default via $link.2
    ip netns exec "$ns" sysctl -q -w net.ipv4.ip_forward=1
    ip -n "$SV" addr add $link.2/24 dev sv-n$i
    ip -n "$SV" link set sv-n$i up
    ip -n "$SV" route add $ext/32 via $link.1 src $SERVER
done

say "the internal router spreads flows over the nodes with a resilient nexthop group"
ip netns exec "$RT" sysctl -q -w net.ipv4.ip_forward=1 net.ipv4.fib_multipath_hash_policy=1
run ip -n "$RT" nexthop add id 1 via 10.201.0.2 dev rt-n0
run ip -n "$RT" nexthop add id 2 via 10.201.1.2 dev rt-n1
run ip -n "$RT" nexthop add id 10 group 1/2 type resilient buckets 64 idle_timer $IDLE_TIMER
run ip -n "$RT" route add default nhid 10

buckets() {
    ip -n "$RT" nexthop bucket show id 10 | awk '{for (i = 1; i < NF; i++) if ($i == "nhid") n[$(i + 1)]++}
        END {printf "buckets: node n0 (nexthop 1) %d, node n1 (nexthop 2) %d\n", n[1], n[2]}'
}
buckets

say "each node runs its own NAT with its own external address"
for i in "${!NODES[@]}"; do
    ns=${NODES[$i]}
    log=$logs/nat-$i.log
    printf '$ nat --netns %s load --iface veth-ext --external 198.19.0.%d --internal 10.200.1.0/25\n' "$ns" $((i + 1))
    "$NAT_BIN" --netns "$ns" load --iface veth-ext --external 198.19.0.$((i + 1)) \
        --internal 10.200.1.0/25 >"$log" 2>&1 &
    nat_pids+=($!)
    for _ in $(seq 100); do
        grep -q '^nat: attached' "$log" && break
        kill -0 "${nat_pids[-1]}" 2>/dev/null || { cat "$log"; exit 1; }
        sleep 0.1
    done
    grep '^nat: attached' "$log" || { echo "demo: nat did not attach in $ns"; cat "$log"; exit 1; }
done

# One iperf3 run of 16 parallel TCP streams from client address $1.
traffic() {
    ip netns exec "$SV" iperf3 -s -1 -B $SERVER -p 5201 >/dev/null 2>&1 &
    local server=$!
    sleep 0.5
    ip netns exec "$CL" iperf3 -c $SERVER -B "$1" -p 5201 -P 16 -t 2 -b 20M | tail -3 | head -1
    wait $server || true
}

# Sessions of client address $1 toward the iperf3 server, per node.
spread() {
    for i in "${!NODES[@]}"; do
        n=$("$NAT_BIN" --netns "${NODES[$i]}" sessions | grep -c "^tcp *$1:.*$SERVER:5201" || true)
        printf 'node n%d (external 198.19.0.%d): %d sessions of %s\n' "$i" $((i + 1)) "$n" "$1"
    done
}

say "16 TCP streams from 10.200.1.2: the L4 hash spreads them over both nodes"
traffic 10.200.1.2
spread 10.200.1.2
run nat --netns "${NODES[1]}" sessions

say "drain node n1: take its nexthop out of the group (as a health check would)"
run ip -n "$RT" nexthop replace id 10 group 1 type resilient
buckets
say "16 new streams from 10.200.1.3: all through n0"
traffic 10.200.1.3
spread 10.200.1.3

say "take n1 back: buckets idle for ${IDLE_TIMER}s move to it, busy ones stay"
run ip -n "$RT" nexthop replace id 10 group 1/2 type resilient
sleep $((IDLE_TIMER + 2))
buckets
say "16 new streams from 10.200.1.4: both nodes again"
traffic 10.200.1.4
spread 10.200.1.4

say "done; removing everything"
