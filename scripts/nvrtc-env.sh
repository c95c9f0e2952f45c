# shellcheck shell=bash
# Source this file: `source scripts/nvrtc-env.sh [CACHE_DIR]`.
#
# NVRTC, the CUDA runtime headers and ptxas for CUDA 12.9, from PyPI wheels,
# so that CUDA C can be compiled to PTX/CUBIN (and ptxas can report
# registers and spills for sm_90) on a machine with no GPU and no CUDA
# toolkit. The wheels are downloaded once (~134 MB) into CACHE_DIR (default
# $SNNC_CUDA_WHEELS, else $XDG_CACHE_HOME/snnc/cuda-wheels-12.9, else
# ~/.cache/snnc/cuda-wheels-12.9) and only the few files needed are kept.
#
# Exports:
#   LD_LIBRARY_PATH  + the folder with libnvrtc.so.12 and libnvrtc-builtins.so.12.9
#                      (cudarc dlopens libnvrtc.so.12; the builtins library is
#                      found next to it)
#   PATH             + the folder with ptxas 12.9
#   NVRTC_INCLUDE    the CUDA runtime headers (snnc's kernels need none)
# Returns non-zero (and says why) when pip or unzip is missing or a download
# fails; the caller decides whether that is fatal.
_snnc_nvrtc_env() {
    local base="${XDG_CACHE_HOME:-$HOME/.cache}/snnc/cuda-wheels-12.9"
    local c
    c="$(realpath -m "${1:-${SNNC_CUDA_WHEELS:-$base}}")"
    local n=nvidia
    if [ ! -x "$c/$n/cuda_nvcc/bin/ptxas" ] || [ ! -e "$c/$n/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
        command -v unzip >/dev/null || { echo "nvrtc-env: unzip is not installed" >&2; return 1; }
        python3 -m pip --version >/dev/null 2>&1 || { echo "nvrtc-env: python3 -m pip is not available" >&2; return 1; }
        mkdir -p "$c" || return 1
        python3 -m pip download -q --no-deps --no-cache-dir --only-binary=:all: \
            --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_27_x86_64 \
            -d "$c/dl" nvidia-cuda-nvrtc-cu12==12.9.86 nvidia-cuda-nvcc-cu12==12.9.86 nvidia-cuda-runtime-cu12==12.9.79 \
            || { echo "nvrtc-env: pip download failed" >&2; return 1; }
        unzip -qo "$c"/dl/nvidia_cuda_nvrtc_cu12-*.whl "$n/cuda_nvrtc/lib/libnvrtc.so.12" "$n/cuda_nvrtc/lib/libnvrtc-builtins.so.*" -d "$c" &&
            unzip -qo "$c"/dl/nvidia_cuda_runtime_cu12-*.whl "$n/cuda_runtime/include/*" -d "$c" &&
            unzip -qo "$c"/dl/nvidia_cuda_nvcc_cu12-*.whl "$n/cuda_nvcc/bin/ptxas" -d "$c" &&
            chmod +x "$c/$n/cuda_nvcc/bin/ptxas" && rm -rf "$c/dl" ||
            { echo "nvrtc-env: unpacking the wheels failed" >&2; return 1; }
    fi
    export LD_LIBRARY_PATH="$c/$n/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PATH="$c/$n/cuda_nvcc/bin:$PATH"
    export NVRTC_INCLUDE="$c/$n/cuda_runtime/include"
}
_snnc_nvrtc_env "$@"
