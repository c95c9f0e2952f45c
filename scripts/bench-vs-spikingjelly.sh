#!/usr/bin/env bash
# snnc's BPTT and rate steps beside SpikingJelly's BPTT step on
# fmnist_csnn (scripts/spikingjelly-bench.py), alternating ROUNDS times on
# one machine; a figure is the median over the rounds of each round's
# median step. Ratios: snnc / SpikingJelly.
#
# usage: scripts/bench-vs-spikingjelly.sh [SNNC] [T list]
#   env: PYTHON (a python with torch and spikingjelly), BATCH (128),
#        ROUNDS (3), REPEATS (3)
set -euo pipefail
snnc=${1:-target/release/snnc}
steps=${2:-4,8}
python=${PYTHON:-python3}
batch=${BATCH:-128} rounds=${ROUNDS:-3} repeats=${REPEATS:-3}
model=examples/models/fmnist_csnn.snn

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for _ in $(seq "$rounds"); do
  for t in ${steps//,/ }; do
    for mode in bptt rate; do
      "$snnc" bench "$model" -T "$t" --mode "$mode" --batch "$batch" --repeats "$repeats" --json 2>/dev/null \
        | tail -1 | python3 -c 'import json,sys; print(json.loads(sys.stdin.read())["step_seconds"])' \
        >>"$tmp/snnc-$mode-$t"
    done
  done
  "$python" scripts/spikingjelly-bench.py -T "$steps" --batch "$batch" --repeats "$repeats" \
    | python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print(r["T"], r["median_step_seconds"])
    print(r["framework"], file=open(sys.argv[1], "w"))
' "$tmp/framework" | while read -r t s; do echo "$s" >>"$tmp/sj-$t"; done
done
echo "fmnist_csnn, batch $batch, median over $rounds alternating rounds of $repeats-step medians; $(cat "$tmp/framework")"
printf '%3s %14s %14s %14s %10s %10s\n' T "SJ BPTT ms" "snnc BPTT ms" "snnc rate ms" "BPTT/SJ" "rate/SJ"
for t in ${steps//,/ }; do
  sj=$(median <"$tmp/sj-$t")
  b=$(median <"$tmp/snnc-bptt-$t")
  r=$(median <"$tmp/snnc-rate-$t")
  python3 -c "import sys; sj,b,r=map(float,sys.argv[2:]); print('%3s %14.1f %14.1f %14.1f %10.3f %10.3f' % (sys.argv[1], sj*1e3, b*1e3, r*1e3, b/sj, r/sj))" "$t" "$sj" "$b" "$r"
done
