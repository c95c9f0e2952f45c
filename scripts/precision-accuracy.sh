#!/usr/bin/env bash
# Issue 13's accuracy check of `--precision bf16` on the CPU: Fashion-MNIST,
# fmnist_csnn, T = 4, 5 epochs, batch 128, seed 1, in both modes, fp32 and
# bf16 (the CPU rounds every GEMM operand to bf16 and accumulates in f32,
# as the GPU's tensor cores do). Prints each run's final test accuracy and
# the bf16 − fp32 difference; the target is |difference| ≤ 0.3 points.
#
#   scripts/precision-accuracy.sh OUT_DIR
#
# Needs Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist, where
# snnc finds it by default) and a release build (cargo build --release; or
# SNNC=path/to/snnc).
# About an hour on an idle 2-core machine (BPTT is the longer half).
set -euo pipefail
out=${1:?usage: scripts/precision-accuracy.sh OUT_DIR}
snnc=${SNNC:-target/release/snnc}
mkdir -p "$out"
for mode in rate bptt; do
  for p in fp32 bf16; do
    run="$out/$mode-$p"
    if [ -f "$run/metrics.jsonl" ] && [ "$(wc -l < "$run/metrics.jsonl")" -ge 5 ]; then
      continue
    fi
    if [ -d "$run" ]; then
      "$snnc" train --resume "$run" --json > "$out/$mode-$p.log" 2>&1
    else
      "$snnc" train examples/models/fmnist_csnn.snn --data fashion-mnist -T 4 --epochs 5 --batch 128 --mode "$mode" \
        --seed 1 --precision "$p" --out "$run" --json > "$out/$mode-$p.log" 2>&1
    fi
  done
done
acc() { tail -1 "$1/metrics.jsonl" | sed -E 's/.*"test_acc":([0-9.]+).*/\1/'; }
secs() { sed -E 's/.*"seconds":([0-9.]+).*/\1/' "$1/metrics.jsonl" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
printf '| mode | fp32 test %% | bf16 test %% | bf16 − fp32 (points) | fp32 s/epoch | bf16 s/epoch |\n|---|---|---|---|---|---|\n'
for mode in rate bptt; do
  f=$(acc "$out/$mode-fp32"); b=$(acc "$out/$mode-bf16")
  awk -v m="$mode" -v f="$f" -v b="$b" -v sf="$(secs "$out/$mode-fp32")" -v sb="$(secs "$out/$mode-bf16")" \
    'BEGIN { printf "| %s | %.2f | %.2f | %+.2f | %.0f | %.0f |\n", m, 100*f, 100*b, 100*(b-f), sf, sb }'
done
