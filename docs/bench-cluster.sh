#!/bin/bash
# Starts three kvnode and one kvrouter from BINDIR on loopback ports 18001-18003 / 18400, runs
# `kvctl bench` for each workload (256 clients, 10 s, 128-byte values) and prints throughput,
# latency and the CPU each process spent per request (from /proc/PID/stat and /usr/bin/time).
# usage: docs/bench-cluster.sh BINDIR LABEL [workloads...]   (extra bench flags: $BENCH_FLAGS)
# TLS=1: TLS on every hop (certificates from kvctl certs create); AUTH=1: authentication on,
# the bench running as the bootstrap admin (a token).
BIN=$1; LABEL=$2; shift 2
WORKLOADS=${@:-put get-strong get-eventual}
D=$(mktemp -d ${BENCH_TMP:-/tmp}/kvb.XXXX)
IC=1=127.0.0.1:18001,2=127.0.0.1:18002,3=127.0.0.1:18003
NODE_FLAGS=""; ROUTER_FLAGS=""; KVCTL="$BIN/kvctl --router http://127.0.0.1:18400"
if [ "${TLS:-0}" = 1 ]; then
  $BIN/kvctl certs create --dir $D/certs >/dev/null
  tls() { echo "--tls-cert $D/certs/$1.pem --tls-key $D/certs/$1-key.pem --tls-ca $D/certs/ca.pem"; }
  NODE_FLAGS="$(tls node)"; ROUTER_FLAGS="$(tls router)"
  KVCTL="$BIN/kvctl --router https://127.0.0.1:18400 --tls-ca $D/certs/ca.pem"
fi
if [ "${AUTH:-0}" = 1 ]; then
  $BIN/kvctl auth token-new --file $D/admin.token >/dev/null
  NODE_FLAGS="$NODE_FLAGS --bootstrap-admin-token-file $D/admin.token"
  KVCTL="$KVCTL --token $(cat $D/admin.token)"
fi
for i in 1 2 3; do
  $BIN/kvnode --id $i --listen 127.0.0.1:1800$i --data-dir $D/n$i --initial-cluster $IC --http 127.0.0.1:1810$i $NODE_FLAGS > $D/n$i.log 2>&1 &
  echo $! > $D/n$i.pid
done
$BIN/kvrouter --listen 127.0.0.1:18400 --nodes 127.0.0.1:18001,127.0.0.1:18002,127.0.0.1:18003 --http 127.0.0.1:18401 $ROUTER_FLAGS > $D/r.log 2>&1 &
echo $! > $D/r.pid
for t in $(seq 1 100); do curl -sf 127.0.0.1:18401/ready >/dev/null && break; sleep 0.2; done
sleep 2
$KVCTL put warm up >/dev/null || echo "warm put failed"
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
for w in $WORKLOADS; do
  declare -A before
  for p in n1 n2 n3 r; do before[$p]=$(ticks $(cat $D/$p.pid)); done
  out=$(/usr/bin/time -f "%U %S" -o $D/kvctl.time $KVCTL bench --workload $w --concurrency 256 --duration 10s --value-size 128 --keys 10000 -o json $BENCH_FLAGS 2>/dev/null | tail -1)
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
