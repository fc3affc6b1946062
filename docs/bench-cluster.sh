#!/bin/bash
# Starts three kvnode and one kvrouter from BINDIR on loopback ports 18001-18003 / 18400, runs
# `kvctl bench` for each workload (256 clients, 10 s, 128-byte values) and prints throughput,
# latency and the CPU each process spent per request (from /proc/PID/stat and /usr/bin/time).
# usage: docs/bench-cluster.sh BINDIR LABEL [workloads...]   (extra bench flags: $BENCH_FLAGS)
BIN=$1; LABEL=$2; shift 2
WORKLOADS=${@:-put get-strong get-eventual}
D=$(mktemp -d ${BENCH_TMP:-/tmp}/kvb.XXXX)
IC=1=127.0.0.1:18001,2=127.0.0.1:18002,3=127.0.0.1:18003
for i in 1 2 3; do
  $BIN/kvnode --id $i --listen 127.0.0.1:1800$i --data-dir $D/n$i --initial-cluster $IC --http 127.0.0.1:1810$i > $D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
done
$BIN/kvrouter --listen 127.0.0.1:18400 --nodes 127.0.0.1:18001,127.0.0.1:18002,127.0.0.1:18003 --http 127.0.0.1:18401 > $D/r.log 2>&1 &
echo $! > $D/r.pid
for t in $(seq 1 100); do curl -sf 127.0.0.1:18401/ready >/dev/null && break; sleep 0.2; done
sleep 2
$BIN/kvctl --router http://127.0.0.1:18400 put warm up >/dev/null || echo "warm put failed"
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for w in $WORKLOADS; do
  declare -A before
  for p in n1 n2 n3 r; do before[$p]=$(ticks $(cat $D/$p.pid)); done
  out=$(/usr/bin/time -f "%U %S" -o $D/kvctl.time $BIN/kvctl --router http://127.0.0.1:18400 bench --workload $w --concurrency 256 --duration 10s --value-size 128 --keys 10000 -o json $BENCH_FLAGS 2>/dev/null | tail -1)
  ops=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ops_per_s"], d["p50_us"], d["p99_us"], d["errors"], d.get("total_ops", d.get("ops","?")))')
  set -- $ops
  total=$(python3 -c "print(int($1*10))")
  cpu=""
  for p in n1 n2 n3 r; do a=$(ticks $(cat $D/$p.pid)); cpu="$cpu $p=$(python3 -c "print(round(($a-${before[$p]})*10000/max($total,1),1))")us"; done
  ct=$(python3 -c "u,s=open('$D/kvctl.time').read().split()[-2:]; print(round((float(u)+float(s))*1e6/max($total,1),1))"); echo "$LABEL $w client=${ct}us ops/s=$1 p50=$2 p99=$3 errors=$4 cpu/op:$cpu"
done
for p in n1 n2 n3 r; do kill -9 $(cat $D/$p.pid); done
wait 2>/dev/null
rm -rf $D
