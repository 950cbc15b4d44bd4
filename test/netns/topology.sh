#!/usr/bin/env bash
# A multi-host topology in network namespaces for the scatter tests and bench (root needed).
#
#   PREFIX-br   a Linux bridge br0 with IGMP snooping and querier (IGMPv3)
#   PREFIX-s    the sender: eth0 10.200.0.1/24
#   PREFIX-rI   receiver I (1..N): eth0 10.200.0.(10+I)/24
#
# Every veth is created directly inside its namespaces, so nothing appears in the root
# namespace; addresses exist only inside these namespaces. Everything is named PREFIX-*, and
# `down PREFIX` removes only that.
#
# usage:
#   topology.sh up PREFIX N MTU
#   topology.sh impair PREFIX I LOSS DUP REORDER [REORDER_RATE]   (fractions, e.g. 0.05)
#   topology.sh limit PREFIX RATE                                (sender link, e.g. 1gbit)
#   topology.sh down PREFIX
#
# Impairments without netem (this kernel has no sch_netem): a classic-BPF classifier draws a
# random number per packet (ld rand) and picks an htb class on the receiver's bridge port:
#   loss     -> a class whose leaf is `pfifo limit 0` (drops everything it gets)
#   reorder  -> a slow lane (htb class at REORDER_RATE, default 20mbit): packets sent through it
#               arrive after packets sent later
# and, on the receiver's eth0 ingress, `mirred ingress mirror` back to eth0 duplicates a packet.
# Loss also applies to the receiver's own egress (NACKs, reports), so control traffic is lost too.
set -euo pipefail

die() { echo "topology.sh: $*" >&2; exit 1; }
check_prefix() {
  [[ "$1" =~ ^[a-z][a-z0-9]{1,11}$ ]] || die "prefix must be 2-12 lowercase letters/digits starting with a letter, got '$1'"
}
frac_to_u32() { # fraction -> threshold on a 32-bit random number
  awk -v p="$1" 'BEGIN { if (p < 0 || p > 1) exit 1; v = int(p * 4294967296); if (v > 4294967295) v = 4294967295; printf "%d", v }' || die "bad fraction '$1'"
}
in_ns() { ip netns exec "$1" "${@:2}"; }

host_setup() { # NS ADDR MTU
  local ns=$1 addr=$2
  ip -n "$ns" link set lo up
  ip -n "$ns" addr add "$addr/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" route add 224.0.0.0/4 dev eth0
  in_ns "$ns" sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=0 net.ipv4.conf.default.rp_filter=0
  in_ns "$ns" sysctl -qw net.ipv4.igmp_max_memberships=1024
  # Report IGMPv3 at once on join and leave (robustness 2 = one retransmission).
  in_ns "$ns" sysctl -qw net.ipv4.conf.eth0.force_igmp_version=3
}

cmd_up() {
  local P=$1 N=$2 MTU=$3
  check_prefix "$P"
  [[ "$N" =~ ^[0-9]+$ ]] && (( N >= 1 && N <= 32 )) || die "receivers must be 1..32"
  [[ "$MTU" =~ ^[0-9]+$ ]] && (( MTU >= 576 && MTU <= 65535 )) || die "bad MTU $MTU"
  ip netns add "$P-br"
  ip -n "$P-br" link set lo up
  ip -n "$P-br" link add br0 type bridge mcast_snooping 1 mcast_querier 1 mcast_igmp_version 3
  ip -n "$P-br" link set br0 mtu "$MTU"
  ip netns add "$P-s"
  ip link add eth0 mtu "$MTU" netns "$P-s" type veth peer name p-s mtu "$MTU" netns "$P-br"
  ip -n "$P-br" link set p-s master br0 up
  host_setup "$P-s" 10.200.0.1
  for i in $(seq 1 "$N"); do
    ip netns add "$P-r$i"
    ip link add eth0 mtu "$MTU" netns "$P-r$i" type veth peer name "p-r$i" mtu "$MTU" netns "$P-br"
    ip -n "$P-br" link set "p-r$i" master br0 up
    host_setup "$P-r$i" "10.200.0.$((10 + i))"
  done
  ip -n "$P-br" link set br0 up
}

cmd_impair() {
  local P=$1 I=$2 LOSS=$3 DUP=$4 REORDER=$5 RRATE=${6:-20mbit}
  check_prefix "$P"
  local tl tr td
  tl=$(frac_to_u32 "$LOSS")
  tr=$(frac_to_u32 "$REORDER")
  td=$(frac_to_u32 "$DUP")
  local tlr=$(( tl + tr > 4294967295 ? 4294967295 : tl + tr ))
  # ld rand; A >= tl ? skip : return 1:20 (loss); A >= tl+tr ? skip : return 1:30 (reorder); return 0 (default)
  local prog="6,32 0 0 4294963256,53 1 0 $tl,6 0 0 65568,53 1 0 $tlr,6 0 0 65584,6 0 0 0"
  local br="$P-br" port="p-r$I" host="$P-r$I"
  tc -n "$br" qdisc replace dev "$port" root handle 1: htb default 10
  tc -n "$br" class replace dev "$port" parent 1: classid 1:10 htb rate 10gbit quantum 60000
  tc -n "$br" class replace dev "$port" parent 1: classid 1:20 htb rate 10gbit quantum 60000
  tc -n "$br" qdisc replace dev "$port" parent 1:20 handle 20: pfifo limit 0
  tc -n "$br" class replace dev "$port" parent 1: classid 1:30 htb rate "$RRATE" burst 9000 cburst 9000 quantum 9000
  tc -n "$br" qdisc replace dev "$port" parent 1:30 handle 30: pfifo limit 1000
  tc -n "$br" filter replace dev "$port" parent 1: protocol ip prio 1 handle 1 bpf bytecode "$prog"
  # The receiver's own egress: loss only.
  local up="4,32 0 0 4294963256,53 1 0 $tl,6 0 0 65568,6 0 0 0"
  tc -n "$host" qdisc replace dev eth0 root handle 1: htb default 10
  tc -n "$host" class replace dev eth0 parent 1: classid 1:10 htb rate 10gbit quantum 60000
  tc -n "$host" class replace dev eth0 parent 1: classid 1:20 htb rate 10gbit quantum 60000
  tc -n "$host" qdisc replace dev eth0 parent 1:20 handle 20: pfifo limit 0
  tc -n "$host" filter replace dev eth0 parent 1: protocol ip prio 1 handle 1 bpf bytecode "$up"
  if [[ "$td" != 0 ]]; then
    # ld rand; A >= td ? no match : match -> mirror a copy back into eth0's ingress.
    tc -n "$host" qdisc replace dev eth0 clsact
    tc -n "$host" filter replace dev eth0 ingress protocol ip prio 1 handle 1 bpf bytecode "4,32 0 0 4294963256,53 1 0 $td,6 0 0 1,6 0 0 0" \
      action mirred ingress mirror dev eth0
  fi
}

# The queue holds 1000 packets of the link's MTU, as a NIC's default txqueuelen does. A shorter
# one (latency 20ms: 880 KB at 250 Mbit/s) dropped on the sending host itself, and TCP streams that
# could not get a segment into the full queue spent their window probes on it and were aborted
# with ETIMEDOUT (6-8 of 16 bulk streams in 25-65 s at 250 Mbit/s, with bbr; the 8-stream plain
# migration of bench strategies with cubic too). With this queue, none, and no drops: TCP's own
# small-queue limit keeps its backlog near 2 MB.
cmd_limit() {
  local P=$1 RATE=$2
  check_prefix "$P"
  local mtu
  mtu=$(ip netns exec "$P-s" cat /sys/class/net/eth0/mtu)
  tc -n "$P-s" qdisc replace dev eth0 root tbf rate "$RATE" burst 256kb limit $((1000 * mtu))
}

cmd_down() {
  local P=$1
  check_prefix "$P"
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$P-(br|s|r[0-9]+)\$" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
}

case "${1:-}" in
  up) shift; [[ $# -eq 3 ]] || die "usage: up PREFIX N MTU"; trap 'cmd_down "$1"' ERR; cmd_up "$@" ;;
  impair) shift; [[ $# -ge 5 ]] || die "usage: impair PREFIX I LOSS DUP REORDER [REORDER_RATE]"; cmd_impair "$@" ;;
  limit) shift; [[ $# -eq 2 ]] || die "usage: limit PREFIX RATE"; cmd_limit "$@" ;;
  down) shift; [[ $# -eq 1 ]] || die "usage: down PREFIX"; cmd_down "$@" ;;
  *) die "usage: topology.sh up|impair|limit|down ..." ;;
esac
