#!/bin/bash
# The same-run baseline for docs/benchmarks.md: a three-member etcd 3.4 cluster on loopback
# (`apt-get install etcd-server etcd-client`), loaded by docs/etcd-bench (256 clients, 10 s,
# 128-byte values, 10,000 keys, like `kvctl bench`; build it with
# `cd docs/etcd-bench && cargo build --release`, which needs protoc), printing ops/s, p50/p99
# and the CPU per request of the load generator and each member.
# usage: docs/bench-etcd.sh put|get-strong|get-serializable CONNECTIONS [leader-only]
W=$1; C=$2
D=$(mktemp -d /tmp/etcd.XXXX)
IC=e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803
for i in 1 2 3; do
  etcd --name e$i --data-dir $D/e$i --listen-client-urls http://127.0.0.1:2379$i --advertise-client-urls http://127.0.0.1:2379$i \
    --listen-peer-urls http://127.0.0.1:2380$i --initial-advertise-peer-urls http://127.0.0.1:2380$i \
    --initial-cluster $IC --initial-cluster-state new --initial-cluster-token t$$ --log-level error > $D/e$i.log 2>&1 &
  echo $! > $D/e$i.pid
done
sleep 4
EPS=http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793
if [ "$3" = "leader-only" ]; then
  L=$(ETCDCTL_API=3 etcdctl --endpoints=$EPS endpoint status -w json | python3 -c 'import json,sys; d=json.load(sys.stdin); print([e["Endpoint"] for e in d if e["Status"]["header"]["member_id"]==e["Status"]["leader"]][0])')
  EPS=$L
fi
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
declare -A before
for p in e1 e2 e3; do before[$p]=$(ticks $(cat $D/$p.pid)); done
out=$(/usr/bin/time -f "%U %S" -o $D/time ${ETCDBENCH:-docs/etcd-bench/target/release/etcdbench} $EPS $W 256 $C 10)
ops=$(echo "$out" | sed 's/.*ops\/s=\([0-9]*\).*/\1/')
cpu=""
for p in e1 e2 e3; do a=$(ticks $(cat $D/$p.pid)); cpu="$cpu $p=$(python3 -c "print(round(($a-${before[$p]})*10000/max($ops*10,1),1))")us"; done
ct=$(python3 -c "u,s=open('$D/time').read().split()[-2:]; print(round((float(u)+float(s))*1e6/max($ops*10,1),1))")
echo "$out client=${ct}us cpu/op:$cpu"
for p in e1 e2 e3; do kill -9 $(cat $D/$p.pid); done
wait 2>/dev/null; rm -rf $D
