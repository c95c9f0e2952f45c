// Lets kernels.cu compile as plain C++ (g++/clang++) on the host: CUDA's
// qualifiers and thread indices, the parameter-kind check and the unpacking
// of cuLaunchKernel-style parameter arrays. `snnc_launch` is the CUDA
// emulator's (codegen/cuda/emu.rs): it runs every (block, thread) of a 1-D
// grid in order on the calling thread, with blockIdx/threadIdx/blockDim/
// gridDim set as the kernel expects. The CPU backend adds codegen/cpu/shim.h,
// which runs contiguous ranges instead. Both are only correct for kernels
// whose threads do not communicate (no shared memory, barriers or atomics),
// which is how kernels.cu is written.
#pragma once

#include <cstddef>
#include <cstring>
#include <math.h>
#include <type_traits>
#include <utility>

struct snnc_dim3 {
    unsigned x, y, z;
};

static thread_local snnc_dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __constant__
#define __forceinline__ inline
#define __restrict__ __restrict

inline float __int_as_float(int i) {
    float f;
    std::memcpy(&f, &i, sizeof f);
    return f;
}

// One character per kernel parameter, checked by the emulator against the
// arguments the host passes: p pointer, i int, u unsigned long long,
// f float, d double, l long long.
template <typename T> constexpr char snnc_kind() {
    if constexpr (std::is_pointer_v<T>) return 'p';
    else if constexpr (std::is_same_v<T, int>) return 'i';
    else if constexpr (std::is_same_v<T, unsigned long long>) return 'u';
    else if constexpr (std::is_same_v<T, float>) return 'f';
    else if constexpr (std::is_same_v<T, double>) return 'd';
    else if constexpr (std::is_same_v<T, long long>) return 'l';
    else return '?';
}

template <typename... A> void snnc_signature(void (*)(A...), char* out) {
    const char kinds[] = {snnc_kind<A>()..., '\0'};
    std::memcpy(out, kinds, sizeof kinds);
}

// Unpacks cuLaunchKernel-style parameters (an array of pointers to the
// argument values) into a call.
template <typename... A, std::size_t... I>
void snnc_call(void (*f)(A...), void** params, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<A>*>(params[I])...);
}

template <typename... A>
void snnc_launch(void (*f)(A...), unsigned grid, unsigned block, void** params) {
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        for (unsigned t = 0; t < block; ++t) {
            blockIdx = {b, 0, 0};
            threadIdx = {t, 0, 0};
            snnc_call(f, params, std::index_sequence_for<A...>{});
        }
    }
}
