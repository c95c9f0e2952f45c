// Lets kernels.cu run on the CPU backend (codegen/cpu/backend.rs), after
// host_shim.h. A launch of a grid of G·B threads is split into contiguous
// ranges [lo, hi) of thread indices that run in parallel; a call runs one
// range: SNNC_LOOP visits i = lo, lo + 1, …, below min(n, hi), in order, as
// a plain loop the compiler can vectorise. The last range of a launch has
// hi = LLONG_MAX, so the loops cover every i < n whatever the grid size
// (as the grid-stride loop does on the GPU). Correct because no kernel's
// threads communicate (see kernels.cu).
#pragma once

static thread_local long long snnc_lo, snnc_hi;

#define SNNC_LOOP(i, n)                                                        \
    for (int i = (int)snnc_lo,                                                 \
             i##_end = (int)((long long)(n) < snnc_hi ? (long long)(n) : snnc_hi); \
         i < i##_end; ++i)

template <typename... A>
void snnc_run_range(void (*f)(A...), long long lo, long long hi, void** params) {
    snnc_lo = lo;
    snnc_hi = hi;
    snnc_call(f, params, std::index_sequence_for<A...>{});
}
