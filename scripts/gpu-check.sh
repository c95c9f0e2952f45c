#!/usr/bin/env bash
# The GPU checks, on a machine with an NVIDIA GPU and a CUDA installation but
# no Rust toolchain: run from the repository root with a release binary built
# elsewhere (x86-64 Linux) at target/release/snnc:
#
#   bash scripts/gpu-check.sh
#
# 1. prints nvidia-smi;
# 2. finds libcuda (driver), libnvrtc and libcublas (ldconfig, the CUDA
#    toolkit, Python wheels such as PyTorch's nvidia-* packages, then a
#    bounded search of /) and exports LD_LIBRARY_PATH. snnc loads them with
#    cudarc, which tries CUDA 12 file names (libnvrtc.so, libnvrtc.so.12, …)
#    but not libnvrtc.so.13, so CUDA 13's libraries are linked under the
#    unversioned names (libnvrtc.so, libcublas.so) in a folder put first on
#    the path;
# 3. snnc cuda-check --require-gpu: every example model on the GPU against the
#    CPU executor (outputs and every step in isolation), running the fusion
#    plan (fused kernels from the generated module); then the time-major
#    fusion plan with batch-norm recompute (one kernel step per launch) for
#    three models, node by node (--no-fuse) for two, and with bf16 GEMMs
#    (--precision bf16; the CPU reference rounds the same operands);
# 4. snnc cuda-check --bandwidth: device-to-device copy bandwidth;
# 5. snnc bench --device cuda: fmnist_csnn and resnet19 (CIFAR-shaped random
#    data), batch 128, T = 1, 2, 4, 8, bptt and rate, the fusion plan
#    layer-major (with the LIF kernels' achieved GB/s against the copy
#    kernel's) and time-major with recompute (--schedule
#    fused-time-major-recompute: its peak device memory at T = 8 against
#    T = 1 is the number the memory plan is for; the summary prints both);
#    with --limits, each row's step by kernel class (GEMM & conv, neuron
#    kernels, batch norm, pooling, other) against the copy kernel's
#    bandwidth and cuBLAS's GEMM on 8192³ in the row's precision; rows in
#    fp32 and in bf16 (--precision fp32,bf16: the GEMMs on the tensor
#    cores, rows `fused/bf16`) side by side;
# 6. snnc train --device cuda: digits_mlp for one epoch, then snnc eval
#    --device cuda of its checkpoint;
# and ends with a summary table. Each step has its own time limit and the
# whole run stays under 8 minutes. Logs go to $OUT (when set) or
# /tmp/snnc-gpu-check. Exit status: 0 when every step passed.
#
# Environment: SNNC_BIN (the binary), SNNC_LIB_DIRS (colon-separated folders
# searched for the libraries first), SNNC_GPU_CHECK_BUDGET (seconds, 470),
# SNNC_GPU_CHECK_SHORT=1 (about three minutes: fewer models, T and repeats),
# SNNC_GPU_CHECK_QUICK=1 (tiny sizes, node by node: a smoke test of this
# script, e.g. against the fake libraries of tests/cuda_fake_device.rs,
# which run a fused plan only when given the emulator library of its
# module).
set -uo pipefail

BIN=${SNNC_BIN:-target/release/snnc}
LOG=${OUT:-/tmp/snnc-gpu-check}
WORK=${SNNC_GPU_CHECK_WORK:-/tmp/snnc-gpu-check-work} # library links, kernel cache
BUDGET=${SNNC_GPU_CHECK_BUDGET:-470} # seconds, all steps together
START=$(date +%s)
mkdir -p "$LOG" "$WORK"
: >"$LOG/summary.txt"

say() { printf '%s\n' "$*" | tee -a "$LOG/setup.log"; }

if [ ! -x "$BIN" ]; then
    echo "gpu-check: $BIN is missing or not executable (build it with: cargo build --release)" >&2
    exit 2
fi

# ---- 1. the GPU ---------------------------------------------------------------
: >"$LOG/setup.log"
say "== nvidia-smi"
if command -v nvidia-smi >/dev/null; then
    timeout 20 nvidia-smi 2>&1 | tee -a "$LOG/setup.log"
else
    say "nvidia-smi: not found"
fi
DRIVER_CUDA=$(timeout 20 nvidia-smi 2>/dev/null | sed -n 's/.*CUDA Version: *\([0-9]*\)\.[0-9]*.*/\1/p' | head -1)
DRIVER_CUDA=${DRIVER_CUDA:-99}
say "driver supports CUDA major version: $DRIVER_CUDA"

# ---- 2. the libraries -------------------------------------------------------------
say "== CUDA libraries"
# Candidate folders, most preferred first: the driver's and toolkit's, then
# Python wheels (PyTorch's nvidia-* packages), then whatever ldconfig knows.
DIRS=()
IFS=: read -r -a EXTRA <<<"${SNNC_LIB_DIRS:-}"
for d in "${EXTRA[@]}"; do
    [ -n "$d" ] && [ -d "$d" ] && DIRS+=("$d")
done
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu /usr/lib64 \
    /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/cuda-*/lib64 \
    /usr/local/cuda-*/targets/x86_64-linux/lib \
    /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib \
    /usr/local/lib/python3*/dist-packages/nvidia/*/lib /usr/lib/python3/dist-packages/nvidia/*/lib; do
    [ -d "$d" ] && DIRS+=("$d")
done
while read -r f; do
    [ -n "$f" ] && DIRS+=("$(dirname "$f")")
done < <(ldconfig -p 2>/dev/null | awk '/lib(cuda|nvrtc|cublas)\.so/ {print $NF}')

# Files named like PATTERN in the candidate folders; a bounded search of /
# when there are none.
find_lib() {
    local pattern=$1 d f found=()
    for d in "${DIRS[@]}"; do
        for f in "$d"/$pattern; do
            [ -e "$f" ] && found+=("$f")
        done
    done
    if [ ${#found[@]} -eq 0 ]; then
        while read -r f; do found+=("$f"); done < <(timeout 20 find / -xdev -maxdepth 10 \
            \( -path /proc -o -path /sys -o -path /dev \) -prune -o -name "$pattern" -print 2>/dev/null)
    fi
    printf '%s\n' "${found[@]}" | awk '!seen[$0]++'
}

# The first file of a library whose major version (the number after .so.) is
# at most the driver's CUDA version: a newer NVRTC or cuBLAS than the driver
# may not run on it.
pick() {
    local f major
    while read -r f; do
        [ -z "$f" ] && continue
        major=$(basename "$f" | sed -n 's/.*\.so\.\([0-9]*\).*/\1/p')
        if [ -z "$major" ] || [ "$major" -le "$DRIVER_CUDA" ]; then
            readlink -f "$f"
            return 0
        fi
    done
    return 1
}

# Highest major version first; among equals, the folder order above.
by_version() {
    awk '{ n = $0; sub(/.*\//, "", n); v = n; sub(/^[^.]*\.so\.?/, "", v); sub(/\..*/, "", v); print (v == "" ? 0 : v) "\t" $0 }' |
        sort -s -t$'\t' -k1,1nr | cut -f2-
}

CUDA_LIB=$(find_lib 'libcuda.so.1' | pick)
NVRTC_LIB=$(find_lib 'libnvrtc.so.[0-9]*' | by_version | pick)
CUBLAS_LIB=$(find_lib 'libcublas.so.[0-9]*' | by_version | pick)
say "libcuda:   ${CUDA_LIB:-not found}"
say "libnvrtc:  ${NVRTC_LIB:-not found}"
say "libcublas: ${CUBLAS_LIB:-not found}"

SHIM="$WORK/libs"
rm -rf "$SHIM" && mkdir -p "$SHIM"
LDP="$SHIM"
add_dir() { case ":$LDP:" in *":$1:"*) ;; *) LDP="$LDP:$1" ;; esac; }
[ -n "$CUDA_LIB" ] && add_dir "$(dirname "$CUDA_LIB")"
if [ -n "$NVRTC_LIB" ]; then
    ln -sf "$NVRTC_LIB" "$SHIM/libnvrtc.so"
    add_dir "$(dirname "$NVRTC_LIB")" # libnvrtc-builtins.so.* lives beside it
fi
if [ -n "$CUBLAS_LIB" ]; then
    ln -sf "$CUBLAS_LIB" "$SHIM/libcublas.so"
    add_dir "$(dirname "$CUBLAS_LIB")" # libcublasLt.so.* lives beside it
fi
export LD_LIBRARY_PATH="$LDP${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
say "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
# The kernels are compiled once per machine and cached here.
export SNNC_CACHE_DIR="${SNNC_CACHE_DIR:-$WORK/cache}"

# ---- 3-5. the checks ---------------------------------------------------------------
FAILED=0
ROWS=()
step() { # name limit-seconds args...
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START)))
    if [ "$left" -lt 10 ]; then
        ROWS+=("$(printf '%-16s %-8s %6s  %s' "$name" "skipped" "-" "out of time")")
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo
    echo "== $name: snnc $* (limit ${limit}s)"
    local t0 rc
    t0=$(date +%s)
    timeout -k 5 "$limit" "$BIN" "$@" 2>&1 | tee "$LOG/$name.log"
    rc=${PIPESTATUS[0]}
    local secs=$(($(date +%s) - t0))
    local status=ok
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        status="timeout"
    elif [ "$rc" -ne 0 ]; then
        status="FAIL($rc)"
    fi
    [ "$status" = ok ] || FAILED=1
    local key
    case $name in
    cuda-check*) key=$(grep -E '^cuda-check: ' "$LOG/$name.log" | tail -1) ;;
    bandwidth) key=$(grep -o '[a-z_ ()]*: [0-9.]* GB x [0-9]* in [0-9.]* ms: [0-9]* GB/s' "$LOG/$name.log" | sed 's/: .*: / /' | paste -sd ';' -) ;;
    bench-*) key=$(bench_key "$LOG/$name.log") ;;
    train) key=$(grep -E '^(test accuracy|epoch +1/)' "$LOG/$name.log" | tail -1) ;;
    eval) key=$(grep -E 'test accuracy' "$LOG/$name.log" | tail -1) ;;
    esac
    [ "$status" = ok ] || key="$key $(grep -m1 -E 'error|panicked' "$LOG/$name.log")"
    ROWS+=("$(printf '%-16s %-8s %6s  %s' "$name" "$status" "$secs" "$key")")
}

# A bench log in one line: rows, and per plan the rate-mode step at T = 8
# and the peak device memory (MiB, measured; arena planned = measured is
# the "plan MiB" and "arena pk" columns) from T = 1 to T = 8.
bench_key() {
    awk '$1 ~ /^(fused|nodes)/ && $2 ~ /^(bptt|rate)$/ {
            rows++
            if (!($1 in seen)) { seen[$1] = 1; plans[++np] = $1 }
            if ($2 == "rate" && $3 == 1) p1[$1] = $9
            if ($2 == "rate" && $3 == 8) { p8[$1] = $9; ms[$1] = $4; lif[$1] = (NF >= 16 ? ", LIF " $15 " GB/s (" $16 " of copy)" : "") }
        }
        END {
            printf "%d rows", rows
            for (i = 1; i <= np; i++) {
                k = plans[i]
                printf "; %s rate T=8: %s ms/step%s, peak %s -> %s MiB", k, ms[k], lif[k], p1[k], p8[k]
                if (p1[k] > 0 && p8[k] != "") printf " (x%.2f)", p8[k] / p1[k]
            }
            print ""
        }' "$1"
}

RUN="$WORK/train-digits"
rm -rf "$RUN"
if [ "${SNNC_GPU_CHECK_SHORT:-0}" = 1 ]; then
    # About three minutes: what a session with little device time left can
    # afford (the example models the issue names, fewer T and repeats).
    step cuda-check 70 cuda-check --require-gpu --models digits_mlp,fmnist_csnn,resnet19 -T 1,3
    step cuda-check-tm 30 cuda-check --require-gpu --schedule fused-time-major-recompute --models digits_mlp,fmnist_csnn -T 1,3
    step bandwidth 15 cuda-check --bandwidth 2048
    step cuda-check-bf16 25 cuda-check --require-gpu --precision bf16 --models digits_mlp,fmnist_csnn -T 1,3
    step bench-fmnist 45 bench examples/models/fmnist_csnn.snn --device cuda -T 1,8 --mode bptt,rate --batch 128 --repeats 3 --schedule fused,fused-time-major-recompute --precision fp32,bf16 --limits
    step bench-resnet19 90 bench examples/models/resnet19.snn --device cuda -T 1,8 --mode bptt,rate --batch 128 --repeats 1 --precision fp32,bf16 --limits
    step train 30 train --device cuda --epochs 1 --out "$RUN"
elif [ "${SNNC_GPU_CHECK_QUICK:-0}" = 1 ]; then
    step cuda-check 180 cuda-check --require-gpu --no-fuse --models digits_mlp,fmnist_csnn -T 1,2
    step bandwidth 40 cuda-check --bandwidth 16
    step bench-fmnist 60 bench examples/models/fmnist_csnn.snn --device cuda --no-fuse -T 1,8 --mode bptt,rate --batch 2 --repeats 1
    step bench-resnet19 150 bench examples/models/digits_mlp.snn --device cuda --no-fuse -T 1,8 --mode bptt,rate --batch 2 --repeats 1
else
    step cuda-check 120 cuda-check --require-gpu
    step cuda-check-tm 50 cuda-check --require-gpu --schedule fused-time-major-recompute --models digits_mlp,fmnist_csnn,resnet19 -T 1,3
    step cuda-check-nodes 30 cuda-check --require-gpu --no-fuse --models digits_mlp,fmnist_csnn -T 1,3
    step cuda-check-bf16 40 cuda-check --require-gpu --precision bf16 --models digits_mlp,fmnist_csnn,resnet19 -T 1,3
    step bandwidth 20 cuda-check --bandwidth 2048
    step bench-fmnist 50 bench examples/models/fmnist_csnn.snn --device cuda -T 1,2,4,8 --mode bptt,rate --batch 128 --repeats 5 --precision fp32,bf16 --limits
    step bench-fmnist-tm 40 bench examples/models/fmnist_csnn.snn --device cuda -T 1,2,4,8 --mode bptt,rate --batch 128 --repeats 5 --schedule fused-time-major-recompute
    step bench-resnet19 100 bench examples/models/resnet19.snn --device cuda -T 1,8 --mode bptt,rate --batch 128 --repeats 2 --precision fp32,bf16 --limits
    step bench-resnet19-tm 60 bench examples/models/resnet19.snn --device cuda -T 1,8 --mode bptt,rate --batch 128 --repeats 2 --schedule fused-time-major-recompute
    step train 45 train --device cuda --epochs 1 --out "$RUN"
    step eval 20 eval "$RUN" --device cuda
fi

{
    echo
    echo "== summary ($(($(date +%s) - START)) s; logs in $LOG)"
    printf '%-16s %-8s %6s  %s\n' "step" "status" "secs" "result"
    printf '%s\n' "${ROWS[@]}"
} | tee "$LOG/summary.txt"
exit "$FAILED"
