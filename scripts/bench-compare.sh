#!/usr/bin/env bash
# Side-by-side speed of two snnc binaries (e.g. before and after a change),
# measured in one run on one machine: for each row (T, mode), the two
# binaries alternate ROUNDS times (A B A B …), each round timing REPEATS
# steps after a warm-up; a row's figure is the median over its rounds of
# the round medians, and the ratio is new / old (below 1: the new binary is
# faster). Also prints each binary's planned and measured peak bytes.
#
# usage: scripts/bench-compare.sh OLD_SNNC NEW_SNNC [MODEL] [T list] [modes]
#   env: BATCH (128), ROUNDS (5), REPEATS (3), SCHEDULE (fused)
set -euo pipefail
old=$1 new=$2
model=${3:-examples/models/fmnist_csnn.snn}
steps=${4:-1,8}
modes=${5:-bptt,rate}
batch=${BATCH:-128} rounds=${ROUNDS:-5} repeats=${REPEATS:-3} schedule=${SCHEDULE:-fused}

median() { sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
field() { python3 -c 'import json,sys; r=json.loads(sys.stdin.read().strip().splitlines()[-1]); print(r[sys.argv[1]])' "$1"; }

printf '%-6s %3s %-9s %12s %12s %7s %14s %14s %14s %14s\n' mode T schedule "old ms" "new ms" new/old \
  "old planned" "old measured" "new planned" "new measured"
for mode in ${modes//,/ }; do
  for t in ${steps//,/ }; do
    : >/tmp/bc-old.txt; : >/tmp/bc-new.txt
    for _ in $(seq "$rounds"); do
      for side in old new; do
        bin=$old; [ "$side" = new ] && bin=$new
        out=$("$bin" bench "$model" -T "$t" --mode "$mode" --batch "$batch" --repeats "$repeats" \
          --schedule "$schedule" --json 2>/dev/null)
        echo "$out" | field step_seconds >>"/tmp/bc-$side.txt"
        echo "$out" >"/tmp/bc-$side.json"
      done
    done
    mo=$(median </tmp/bc-old.txt); mn=$(median </tmp/bc-new.txt)
    printf '%-6s %3s %-9s %12.2f %12.2f %7.3f %14s %14s %14s %14s\n' "$mode" "$t" "$schedule" \
      "$(awk "BEGIN {print $mo*1000}")" "$(awk "BEGIN {print $mn*1000}")" "$(awk "BEGIN {print $mn/$mo}")" \
      "$(field planned_peak_bytes </tmp/bc-old.json)" "$(field measured_peak_bytes </tmp/bc-old.json)" \
      "$(field planned_peak_bytes </tmp/bc-new.json)" "$(field measured_peak_bytes </tmp/bc-new.json)"
  done
done
