// snnc's library kernels: one per primitive op of src/ir/op.rs that is not
// fused (matmuls and the GEMM part of convolutions are each backend's GEMM).
//
// The same text is compiled three times:
//  - by NVRTC for the GPU (codegen/cuda/nvrtc.rs);
//  - as C++ after host_shim.h and codegen/cpu/shim.h by the host compiler,
//    for the CPU backend (codegen/cpu/backend.rs), which runs each launch
//    as contiguous ranges of the grid in parallel (the shim redefines
//    SNNC_LOOP);
//  - as C++ after host_shim.h, for the CUDA emulator (codegen/cuda/emu.rs),
//    which runs every (block, thread) of a grid in order, so that the CUDA
//    backend's launches can be checked on a machine without a GPU.
// Hence: no shared memory, no __syncthreads, no atomics, no headers, and no
// thread index outside SNNC_LOOP. Every kernel is a grid-stride loop over its
// outputs, so any grid size is correct.
//
// Each kernel computes an element with the same f32 expression, in the same
// order, as src/interp (ops.rs, grad_ops.rs), so most results are
// bit-identical; sums over many terms (channel statistics) accumulate in
// double. Arguments: pointers, `int` sizes (the host checks they fit),
// `float`/`double` constants, `unsigned long long` seeds.

#ifndef SNNC_LOOP
#define SNNC_LOOP(i, n)                                                        \
    for (int i = (int)(blockIdx.x * blockDim.x + threadIdx.x); i < (n);        \
         i += (int)(blockDim.x * gridDim.x))
#endif

typedef unsigned long long snnc_u64;

__device__ __forceinline__ float snnc_neg_inf() { return __int_as_float(0xff800000); }

// ---- fill / copy ----------------------------------------------------------

extern "C" __global__ void snnc_fill(float* out, int n, float v) {
    SNNC_LOOP(i, n) { out[i] = v; }
}

extern "C" __global__ void snnc_copy(const float* x, float* out, int n) {
    SNNC_LOOP(i, n) { out[i] = x[i]; }
}

// ---- elementwise ----------------------------------------------------------
// Rendered from the op table and inserted here (codegen/cuda/elementwise.rs).
// @ELEMENTWISE@

// ---- n-ary sums: Sum and TimeMean -----------------------------------------
// out = (out if accumulate, else 0) + p0 + … + p_{count−1}, then / div.
// The host chains calls of up to 8 operands (accumulate = 1 after the first)
// and passes div = number of operands on the last call of a TimeMean, 1
// otherwise: the interpreter's order and rounding exactly.
extern "C" __global__ void snnc_sum8(float* out, int n, int count, int accumulate, float div,
                                     const float* p0, const float* p1, const float* p2,
                                     const float* p3, const float* p4, const float* p5,
                                     const float* p6, const float* p7) {
    SNNC_LOOP(i, n) {
        float acc = accumulate ? out[i] : 0.0f;
        if (count > 0) acc += p0[i];
        if (count > 1) acc += p1[i];
        if (count > 2) acc += p2[i];
        if (count > 3) acc += p3[i];
        if (count > 4) acc += p4[i];
        if (count > 5) acc += p5[i];
        if (count > 6) acc += p6[i];
        if (count > 7) acc += p7[i];
        out[i] = acc / div;
    }
}

// ---- counter-based random numbers (src/rng.rs, bit for bit) ----------------

__device__ __forceinline__ snnc_u64 snnc_mix64(snnc_u64 z) {
    z += 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

__device__ __forceinline__ double snnc_uniform(snnc_u64 seed, snnc_u64 stream, snnc_u64 i) {
    snnc_u64 h = snnc_mix64(snnc_mix64(snnc_mix64(seed) ^ stream) ^ i);
    return (double)(h >> 40) / 16777216.0;
}

// Poisson: 1 where uniform < clamp(x, 0, 1), compared in double; NaN never fires.
extern "C" __global__ void snnc_poisson(const float* x, float* out, int n, snnc_u64 seed,
                                        snnc_u64 stream) {
    SNNC_LOOP(i, n) {
        double p = (double)x[i];
        p = p < 0.0 ? 0.0 : (p > 1.0 ? 1.0 : p);
        out[i] = snnc_uniform(seed, stream, (snnc_u64)i) < p ? 1.0f : 0.0f;
    }
}

// DropoutMask: keep (= (float)(1/(1−p))) where uniform ≥ p, else 0.
extern "C" __global__ void snnc_dropout_mask(float* out, int n, double p, float keep,
                                             snnc_u64 seed, snnc_u64 stream) {
    SNNC_LOOP(i, n) { out[i] = snnc_uniform(seed, stream, (snnc_u64)i) >= p ? keep : 0.0f; }
}

// TimeSlice: x[B, steps, r] -> out[B, r] at step t. n = B·r.
extern "C" __global__ void snnc_time_slice(const float* x, float* out, int n, int steps, int t,
                                           int r) {
    SNNC_LOOP(i, n) {
        int b = i / r;
        int j = i - b * r;
        out[i] = x[(b * steps + t) * r + j];
    }
}

// ---- pooling (planes of h×w in, ho×wo out; kernel k, stride s, padding p) -
// Window (oy, ox) covers the padded rows oy·s … oy·s + k − 1, i.e. input rows
// oy·s − p + ky; a padded position is skipped (−∞ for max, 0 for average,
// whose divisor stays k²). The interpreter (src/interp/pool.rs) walks the
// same elements in the same order.

// Output i of a pooling (i = (plane·ho + oy)·wo + ox).
__device__ __forceinline__ float snnc_pool_at(const float* x, int i, int h, int w, int ho,
                                              int wo, int k, int s, int p, int is_max) {
    int ox = i % wo;
    int oy = (i / wo) % ho;
    int plane = i / (wo * ho);
    float acc = is_max ? snnc_neg_inf() : 0.0f;
    for (int ky = 0; ky < k; ++ky) {
        int iy = oy * s - p + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < k; ++kx) {
            int ix = ox * s - p + kx;
            if (ix < 0 || ix >= w) continue;
            float v = x[(plane * h + iy) * w + ix];
            acc = is_max ? fmaxf(acc, v) : acc + v;
        }
    }
    return is_max ? acc : acc / (float)(k * k);
}

extern "C" __global__ void snnc_pool(const float* x, float* out, int n, int h, int w, int ho,
                                     int wo, int k, int s, int p, int is_max) {
    SNNC_LOOP(i, n) { out[i] = snnc_pool_at(x, i, h, w, ho, wo, k, s, p, is_max); }
}

// The first output row/column whose window contains padded row/column `y`.
__device__ __forceinline__ int snnc_first_window(int y, int k, int s) {
    return y >= k ? (y - k) / s + 1 : 0;
}

// The last one (clipped to the output).
__device__ __forceinline__ int snnc_last_window(int y, int s, int o) {
    int l = y / s;
    return l < o - 1 ? l : o - 1;
}

// Flat index of the first maximum of window (oy, ox) of `plane` (strict >,
// row-major); its offset ky·k + kx in *off.
__device__ __forceinline__ int snnc_argmax(const float* x, int plane, int oy, int ox, int h,
                                           int w, int k, int s, int p, int* off) {
    int best = -1;
    for (int ky = 0; ky < k; ++ky) {
        int iy = oy * s - p + ky;
        if (iy < 0 || iy >= h) continue;
        for (int kx = 0; kx < k; ++kx) {
            int ix = ox * s - p + kx;
            if (ix < 0 || ix >= w) continue;
            int at = (plane * h + iy) * w + ix;
            if (best < 0 || x[at] > x[best]) {
                best = at;
                *off = ky * k + kx;
            }
        }
    }
    return best;
}

// AvgPoolGrad of input element i (i = (plane·h + iy)·w + ix), the windows in
// (oy, ox) order, as the interpreter scatters them.
__device__ __forceinline__ float snnc_avgpool_grad_at(const float* d, int i, int h, int w,
                                                      int ho, int wo, int k, int s, int p) {
    int py = (i / w) % h + p, px = i % w + p;
    int plane = i / (w * h);
    float area = (float)(k * k);
    float acc = 0.0f;
    int y1 = snnc_last_window(py, s, ho), x1 = snnc_last_window(px, s, wo);
    for (int oy = snnc_first_window(py, k, s); oy <= y1; ++oy) {
        for (int ox = snnc_first_window(px, k, s); ox <= x1; ++ox) {
            acc += d[(plane * ho + oy) * wo + ox] / area;
        }
    }
    return acc;
}

extern "C" __global__ void snnc_avgpool_grad(const float* d, float* out, int n, int h, int w,
                                             int ho, int wo, int k, int s, int p) {
    SNNC_LOOP(i, n) { out[i] = snnc_avgpool_grad_at(d, i, h, w, ho, wo, k, s, p); }
}

// AvgPoolGradMul: AvgPoolGrad times m elementwise, the product rounded as
// snnc_mul rounds it after snnc_avgpool_grad (the full-size gradient is
// not stored).
extern "C" __global__ void snnc_avgpool_grad_mul(const float* d, const float* m, float* out,
                                                 int n, int h, int w, int ho, int wo, int k,
                                                 int s, int p) {
    SNNC_LOOP(i, n) { out[i] = snnc_avgpool_grad_at(d, i, h, w, ho, wo, k, s, p) * m[i]; }
}

// MaxPoolGrad: each window's δ goes to its first maximum; gathered per input.
extern "C" __global__ void snnc_maxpool_grad(const float* x, const float* d, float* out, int n,
                                             int h, int w, int ho, int wo, int k, int s,
                                             int p) {
    SNNC_LOOP(i, n) {
        int py = (i / w) % h + p, px = i % w + p;
        int plane = i / (w * h);
        float acc = 0.0f;
        int off = 0;
        int y1 = snnc_last_window(py, s, ho), x1 = snnc_last_window(px, s, wo);
        for (int oy = snnc_first_window(py, k, s); oy <= y1; ++oy) {
            for (int ox = snnc_first_window(px, k, s); ox <= x1; ++ox) {
                if (snnc_argmax(x, plane, oy, ox, h, w, k, s, p, &off) == i) {
                    acc += d[(plane * ho + oy) * wo + ox];
                }
            }
        }
        out[i] = acc;
    }
}

// MaxPoolMask: 1 where the element is the first maximum of some window.
extern "C" __global__ void snnc_maxpool_mask(const float* x, float* out, int n, int h, int w,
                                             int ho, int wo, int k, int s, int p) {
    SNNC_LOOP(i, n) {
        int py = (i / w) % h + p, px = i % w + p;
        int plane = i / (w * h);
        float m = 0.0f;
        int off = 0;
        int y1 = snnc_last_window(py, s, ho), x1 = snnc_last_window(px, s, wo);
        for (int oy = snnc_first_window(py, k, s); oy <= y1; ++oy) {
            for (int ox = snnc_first_window(px, k, s); ox <= x1; ++ox) {
                if (snnc_argmax(x, plane, oy, ox, h, w, k, s, p, &off) == i) m = 1.0f;
            }
        }
        out[i] = m;
    }
}

// MaxPoolSelect: per window (n = planes·ho·wo), k·k values, 1 at the offset
// of its first maximum.
extern "C" __global__ void snnc_maxpool_select(const float* x, float* out, int n, int h, int w,
                                               int ho, int wo, int k, int s, int p) {
    SNNC_LOOP(i, n) {
        int ox = i % wo;
        int oy = (i / wo) % ho;
        int plane = i / (wo * ho);
        int off = 0;
        snnc_argmax(x, plane, oy, ox, h, w, k, s, p, &off);
        float* o = out + (long long)i * k * k;
        for (int j = 0; j < k * k; ++j) o[j] = j == off ? 1.0f : 0.0f;
    }
}

// MaxPoolRoute: input element i gathers sel[window, its offset]·δ[window]
// over the windows that contain it, in (oy, ox) order.
extern "C" __global__ void snnc_maxpool_route(const float* sel, const float* d, float* out,
                                              int n, int h, int w, int ho, int wo, int k, int s,
                                              int p) {
    SNNC_LOOP(i, n) {
        int py = (i / w) % h + p, px = i % w + p;
        int plane = i / (w * h);
        float acc = 0.0f;
        int y1 = snnc_last_window(py, s, ho), x1 = snnc_last_window(px, s, wo);
        for (int oy = snnc_first_window(py, k, s); oy <= y1; ++oy) {
            for (int ox = snnc_first_window(px, k, s); ox <= x1; ++ox) {
                long long win = ((long long)plane * ho + oy) * wo + ox;
                int off = (py - oy * s) * k + (px - ox * s);
                acc += sel[win * k * k + off] * d[win];
            }
        }
        out[i] = acc;
    }
}

// ---- per-channel reductions (ChannelMean, ChannelVar, ChannelSum) ----------
// Two passes, no shared memory: pass 1 has `parts` threads per channel, thread
// p summing (in double) the channel's elements e ≡ p (mod parts) of one
// operand x[B, C, r] (adjacent threads read adjacent addresses); pass 2 adds
// the partial sums of every operand in a fixed order and divides by `count`.
// With `mean` non-null pass 1 sums (x − mean)² instead (ChannelVar, around
// the graph's own mean node, each square rounded to f32 as in the
// interpreter).
extern "C" __global__ void snnc_chan_partial(const float* x, const float* mean, double* part,
                                             int c, int b, int r, int parts) {
    SNNC_LOOP(t, c * parts) {
        int ch = t / parts;
        int p = t - ch * parts;
        int total = b * r;
        float m = mean ? mean[ch] : 0.0f;
        double acc = 0.0;
        for (int e = p; e < total; e += parts) {
            int bi = e / r;
            int j = e - bi * r;
            float v = x[(bi * c + ch) * r + j];
            if (mean) {
                float dv = v - m;
                acc += (double)(dv * dv);
            } else {
                acc += (double)v;
            }
        }
        part[t] = acc;
    }
}

// Pass 1 of ChannelDot (the CPU lowering's channel_sum(mul(x, y))): the
// partial sums of x·y, each product rounded to f32 as the interpreter's mul.
extern "C" __global__ void snnc_chan_dot_partial(const float* x, const float* y, double* part,
                                                 int c, int b, int r, int parts) {
    SNNC_LOOP(t, c * parts) {
        int ch = t / parts;
        int p = t - ch * parts;
        int total = b * r;
        double acc = 0.0;
        for (int e = p; e < total; e += parts) {
            int bi = e / r;
            int j = e - bi * r;
            int at = (bi * c + ch) * r + j;
            acc += (double)(x[at] * y[at]);
        }
        part[t] = acc;
    }
}

// Pass 1 of a ChannelSum of x and a ChannelDot of x and y in one read of x:
// the partial sums of x (into `sum`, as snnc_chan_partial) and of x·y (into
// `dot`, as snnc_chan_dot_partial).
extern "C" __global__ void snnc_chan_sum_dot_partial(const float* x, const float* y, double* sum,
                                                     double* dot, int c, int b, int r, int parts) {
    SNNC_LOOP(t, c * parts) {
        int ch = t / parts;
        int p = t - ch * parts;
        int total = b * r;
        double a = 0.0, d = 0.0;
        for (int e = p; e < total; e += parts) {
            int bi = e / r;
            int j = e - bi * r;
            int at = (bi * c + ch) * r + j;
            a += (double)x[at];
            d += (double)(x[at] * y[at]);
        }
        sum[t] = a;
        dot[t] = d;
    }
}

// Pass 1 of a ChannelMean whose ChannelVar follows over the same operands:
// the partial sums of x (into `sum`, as snnc_chan_partial) and of x² (into
// `sq`, each square exact in double) in one read of x.
extern "C" __global__ void snnc_chan_moments_partial(const float* x, double* sum, double* sq, int c,
                                                     int b, int r, int parts) {
    SNNC_LOOP(t, c * parts) {
        int ch = t / parts;
        int p = t - ch * parts;
        int total = b * r;
        double a = 0.0, q = 0.0;
        for (int e = p; e < total; e += parts) {
            int bi = e / r;
            int j = e - bi * r;
            double v = (double)x[(bi * c + ch) * r + j];
            a += v;
            q += v * v;
        }
        sum[t] = a;
        sq[t] = q;
    }
}

// Pass 1 of the moments for an operand whose producer summed it while
// writing it (a convolution on the CPU's AMX path): its Σx and Σx² per
// channel (m[ch], m[c + ch]) go to part 0 of its partial sums and the
// other parts hold zero, so pass 2 adds them as it adds a pass 1's.
extern "C" __global__ void snnc_chan_moments_put(const double* m, double* sum, double* sq, int c,
                                                 int parts) {
    SNNC_LOOP(t, c * parts) {
        int ch = t / parts;
        int p = t - ch * parts;
        sum[t] = p == 0 ? m[ch] : 0.0;
        sq[t] = p == 0 ? m[c + ch] : 0.0;
    }
}

// Pass 2 of the moments: the sums of nops operands' partials (x's in
// part[(op·c + ch)·parts + p], x²'s after them at op + nops) in a fixed
// order; out[ch] = Σx / count (the mean, as snnc_chan_finish), and
// moments[ch] = Σx, moments[c + ch] = Σx² for the variance.
extern "C" __global__ void snnc_chan_moments_finish(const double* part, double* moments,
                                                    float* out, int c, int parts, int nops,
                                                    double count) {
    SNNC_LOOP(ch, c) {
        double a = 0.0, q = 0.0;
        for (int op = 0; op < nops; ++op) {
            for (int p = 0; p < parts; ++p) a += part[(op * c + ch) * parts + p];
        }
        for (int op = nops; op < 2 * nops; ++op) {
            for (int p = 0; p < parts; ++p) q += part[(op * c + ch) * parts + p];
        }
        out[ch] = (float)(a / count);
        moments[ch] = a;
        moments[c + ch] = q;
    }
}

// ChannelVar from the moments: Σ(x − m)² / n = (Σx² − 2m·Σx + n·m²) / n
// with m the graph's mean node (f32), in double, never below zero.
extern "C" __global__ void snnc_chan_var_moments(const double* moments, const float* mean,
                                                 float* out, int c, double count) {
    SNNC_LOOP(ch, c) {
        double m = (double)mean[ch];
        double v = (moments[c + ch] - 2.0 * m * moments[ch]) / count + m * m;
        out[ch] = (float)(v > 0.0 ? v : 0.0);
    }
}

// part[(op·c + ch)·parts + p] for nops operands -> out[ch] = Σ / count.
extern "C" __global__ void snnc_chan_finish(const double* part, float* out, int c, int parts,
                                            int nops, double count) {
    SNNC_LOOP(ch, c) {
        double acc = 0.0;
        for (int op = 0; op < nops; ++op) {
            for (int p = 0; p < parts; ++p) acc += part[(op * c + ch) * parts + p];
        }
        out[ch] = (float)(acc / count);
    }
}

// ---- softmax cross-entropy (z, y: [b, k]) ----------------------------------

// The batch-mean loss, by one thread in the interpreter's order (b·k is small).
extern "C" __global__ void snnc_softmax_xent(const float* z, const float* y, float* out, int b,
                                             int k) {
    SNNC_LOOP(t, 1) {
        float loss = 0.0f;
        for (int row = 0; row < b; ++row) {
            const float* zr = z + row * k;
            const float* yr = y + row * k;
            float m = snnc_neg_inf();
            for (int j = 0; j < k; ++j) m = fmaxf(m, zr[j]);
            float s = 0.0f;
            for (int j = 0; j < k; ++j) s += expf(zr[j] - m);
            float lse = logf(s) + m;
            for (int j = 0; j < k; ++j) loss = loss - yr[j] * (zr[j] - lse);
        }
        out[0] = loss / (float)b;
    }
}

// (softmax(z) − y)/b, one thread per row.
extern "C" __global__ void snnc_softmax_xent_grad(const float* z, const float* y, float* out,
                                                  int b, int k) {
    SNNC_LOOP(row, b) {
        const float* zr = z + row * k;
        const float* yr = y + row * k;
        float* o = out + row * k;
        float m = snnc_neg_inf();
        for (int j = 0; j < k; ++j) m = fmaxf(m, zr[j]);
        float s = 0.0f;
        for (int j = 0; j < k; ++j) {
            o[j] = expf(zr[j] - m);
            s += o[j];
        }
        for (int j = 0; j < k; ++j) o[j] = (o[j] / s - yr[j]) / (float)b;
    }
}

// ---- convolution layout kernels (the GEMMs are cuBLAS calls) ---------------
// For a chunk of nb samples of x[nb, ci, h, w], the column matrix is
// col[rows, nb·cols] with rows = ci·k·k (c, ky, kx) and cols = ho·wo: sample
// b's columns are b·cols … b·cols + cols − 1.

extern "C" __global__ void snnc_im2col(const float* x, float* col, int ci, int h, int w, int k,
                                       int s, int pad, int ho, int wo, int nb, int n) {
    int cols = ho * wo;
    int ncol = nb * cols;
    SNNC_LOOP(i, n) {
        int row = i / ncol;
        int q = i - row * ncol;
        int bi = q / cols;
        int p = q - bi * cols;
        int oy = p / wo;
        int ox = p - oy * wo;
        int c = row / (k * k);
        int kk = row - c * k * k;
        int ky = kk / k;
        int kx = kk - ky * k;
        int iy = oy * s + ky - pad;
        int ix = ox * s + kx - pad;
        col[i] = (iy >= 0 && iy < h && ix >= 0 && ix < w) ? x[((bi * ci + c) * h + iy) * w + ix]
                                                          : 0.0f;
    }
}

// The adjoint: dx[nb, ci, h, w] = Σ of the column entries that read each
// input element, gathered (no atomics). n = nb·ci·h·w.
extern "C" __global__ void snnc_col2im(const float* col, float* dx, int ci, int h, int w, int k,
                                       int s, int pad, int ho, int wo, int nb, int n) {
    int cols = ho * wo;
    int ncol = nb * cols;
    SNNC_LOOP(i, n) {
        int ix = i % w;
        int iy = (i / w) % h;
        int c = (i / (w * h)) % ci;
        int bi = i / (w * h * ci);
        float acc = 0.0f;
        for (int ky = 0; ky < k; ++ky) {
            int ty = iy + pad - ky;
            if (ty < 0 || ty % s != 0) continue;
            int oy = ty / s;
            if (oy >= ho) continue;
            for (int kx = 0; kx < k; ++kx) {
                int tx = ix + pad - kx;
                if (tx < 0 || tx % s != 0) continue;
                int ox = tx / s;
                if (ox >= wo) continue;
                acc += col[((c * k + ky) * k + kx) * ncol + bi * cols + oy * wo + ox];
            }
        }
        dx[i] = acc;
    }
}

// [nb, c, r] -> [c, nb, r] (n = nb·c·r), for the weight gradient's GEMM.
extern "C" __global__ void snnc_bc_swap(const float* x, float* out, int nb, int c, int r, int n) {
    SNNC_LOOP(i, n) {
        int j = i % r;
        int bi = (i / r) % nb;
        int ch = i / (r * nb);
        out[i] = x[(bi * c + ch) * r + j];
    }
}

// A convolution that skips the input's zeros: spikes, and pooled spikes,
// are mostly zero, and each nonzero input element contributes one weight
// row per kernel offset (an accumulation of weight rows, the event view of
// a spiking convolution). wt is the weight transposed to [ci·k·k, co].
// Thread i = bi·ho + oy computes the output row out[bi, :, oy, :]; each
// element adds its terms in the order (ky, c, kx), skipping zero inputs,
// which is the order of the CPU form (codegen/cpu/native.h), so both give
// the same bits. n = nb·ho.
extern "C" __global__ void snnc_conv_events(const float* x, const float* wt, float* out, int ci,
                                            int h, int w, int co, int k, int s, int pad, int ho,
                                            int wo, int n) {
    SNNC_LOOP(i, n) {
        int bi = i / ho;
        int oy = i - bi * ho;
        for (int o = 0; o < co; ++o) {
            for (int ox = 0; ox < wo; ++ox) {
                float acc = 0.0f;
                for (int ky = 0; ky < k; ++ky) {
                    int iy = oy * s + ky - pad;
                    if (iy < 0 || iy >= h) continue;
                    for (int c = 0; c < ci; ++c) {
                        const float* row = x + ((long long)(bi * ci + c) * h + iy) * w;
                        for (int kx = 0; kx < k; ++kx) {
                            int ix = ox * s + kx - pad;
                            if (ix < 0 || ix >= w) continue;
                            float v = row[ix];
                            if (v != 0.0f) acc += v * wt[((c * k + ky) * k + kx) * co + o];
                        }
                    }
                }
                out[((long long)(bi * co + o) * ho + oy) * wo + ox] = acc;
            }
        }
    }
}

// ---- the training step's tail: optimizer, running statistics, accuracy -----
// src/runtime/device_step.rs launches these after the step's graph, on the
// parameters and gradients where they already are, so that only the loss
// and the count of right answers come back to the host each step. Each
// update is the f32 (SGD) or f64 (AdamW) expression of
// src/runtime/optim.rs's `OptimConfig::update`, in the same order, so a
// run's parameters do not depend on where its update ran.
//
// One launch covers every parameter: element i of the flat optimizer state
// belongs to the segment s (one parameter tensor) with
// start[s] <= i < start[s + 1]. The segment table holds 64-bit words:
//   [0, ns)            the parameters' addresses
//   [ns, 2ns)          their gradients' addresses
//   [2ns, 3ns]         the segments' starts in the flat state, then its length
//   [3ns + 1, 4ns + 1) 1 where weight decay applies (optim::decays), else 0
// A per-segment flag rather than one launch per decay group: one launch,
// and the flag costs one cached word per element.

// The segment of flat element i: the last s with start[s] <= i (empty
// segments share a start with the next one and are skipped).
__device__ __forceinline__ int snnc_segment(const snnc_u64* start, int ns, int i) {
    int lo = 0, hi = ns - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (start[mid] <= (snnc_u64)i) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

// Flat optimizer element i in the segment table `seg` (ns parameters: their
// addresses, their gradients' addresses, their starts, then a decay flag
// each): its parameter, its gradient times `scale` (when scale ≠ 1, as the
// host), and whether its parameter decays.
struct snnc_opt_elem {
    float* p;
    float g;
    bool decays;
};
__device__ __forceinline__ snnc_opt_elem snnc_opt_at(const snnc_u64* seg, int ns, int i,
                                                     float scale) {
    int s = snnc_segment(seg + 2 * ns, ns, i);
    int j = i - (int)seg[2 * ns + s];
    float g = ((const float*)seg[ns + s])[j];
    if (scale != 1.0f) g = g * scale;
    snnc_opt_elem e = {(float*)seg[s] + j, g, seg[3 * ns + 1 + s] != 0};
    return e;
}

// PyTorch's SGD with momentum, in f32: g' = g·scale (when scale ≠ 1);
// d = g' + wd·p; v = μ·v + d; p = p − lr·v.
extern "C" __global__ void snnc_sgd_step(const snnc_u64* seg, int ns, float* vel, int n,
                                         float lr, float mu, float wd, float scale) {
    SNNC_LOOP(i, n) {
        snnc_opt_elem e = snnc_opt_at(seg, ns, i, scale);
        float* p = e.p;
        float w = e.decays ? wd : 0.0f;
        float d = e.g + w * p[0];
        float v = mu * vel[i] + d;
        vel[i] = v;
        p[0] = p[0] - lr * v;
    }
}

// AdamW (decoupled weight decay) in double with f32 moments, as the host:
// c1 = 1 − β₁ᵗ and c2 = 1 − β₂ᵗ come from the host's `powf`.
extern "C" __global__ void snnc_adamw_step(const snnc_u64* seg, int ns, float* m1, float* m2,
                                           int n, double lr, double b1, double b2, double eps,
                                           double wd, double c1, double c2, float scale) {
    SNNC_LOOP(i, n) {
        snnc_opt_elem e = snnc_opt_at(seg, ns, i, scale);
        float* p = e.p;
        double w = e.decays ? wd : 0.0;
        double gi = (double)e.g;
        float m = (float)(b1 * (double)m1[i] + (1.0 - b1) * gi);
        float v = (float)(b2 * (double)m2[i] + (1.0 - b2) * gi * gi);
        m1[i] = m;
        m2[i] = v;
        double mh = (double)m / c1;
        double vh = (double)v / c2;
        double pi = (double)p[0];
        p[0] = (float)(pi - lr * (mh / (sqrt(vh) + eps) + w * pi));
    }
}

// A batch norm's running statistic, PyTorch's convention:
// r = (1 − m)·r + m·b·unbias (unbias = 1 for the mean, n/(n − 1) for the
// variance; ×1 is exact, so the mean rounds as the host's (1 − m)·r + m·b).
extern "C" __global__ void snnc_running_stat(float* run, const float* batch, int n, float m,
                                             float unbias) {
    SNNC_LOOP(i, n) { run[i] = (1.0f - m) * run[i] + m * batch[i] * unbias; }
}

// How many rows of z[b, k] have their first maximum at the target class
// (targets as floats), as one float in out[0]: the host's argmax (strictly
// greater replaces, from −∞ at class 0). One thread: b·k is a few thousand.
extern "C" __global__ void snnc_count_correct(const float* z, const float* target, float* out,
                                              int b, int k) {
    SNNC_LOOP(t, 1) {
        int right = 0;
        for (int row = 0; row < b; ++row) {
            const float* zr = z + row * k;
            int best = 0;
            float bv = snnc_neg_inf();
            for (int j = 0; j < k; ++j) {
                if (zr[j] > bv) {
                    best = j;
                    bv = zr[j];
                }
            }
            if (best == (int)target[row]) ++right;
        }
        out[0] = (float)right;
    }
}
