// CPU versions of the library kernels whose GPU form is slow on a CPU:
// (after shim.h; same signatures as kernels.cu, checked at load). The GPU
// form computes every element's coordinates with divisions and walks memory
// in the order that suits adjacent GPU threads; these walk a range
// [snnc_lo, snnc_hi) of the same index space row by row, with the
// coordinates computed once per row, so the inner loops are copies and
// strided reads the compiler can vectorise. Each element is computed from
// the same terms added in the same order as the GPU form, so the results
// are bit for bit the same (tests: the fused plans against the reference
// interpreter, tests/fused_exec.rs; and against the CUDA emulator's
// launches, tests/cpu_backend.rs).
#pragma once

#include <algorithm>
#include <vector>

// The range of this call, clipped to n.
static inline void snnc_range(long long n, long long* lo, long long* hi) {
    *lo = snnc_lo;
    *hi = snnc_hi < n ? snnc_hi : n;
}

static inline int snnc_min_i(long long a, long long b) { return (int)(a < b ? a : b); }

// im2col: i = row·(nb·cols) + b·cols + oy·wo + ox; one output row
// (row, b, oy) at a time, the coordinates advanced like an odometer (the
// divisions are done once per call).
extern "C" void snnc_cpu_im2col(const float* x, float* col, int ci, int h, int w, int k, int s,
                                int pad, int ho, int wo, int nb, int n) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    if (i >= hi) return;
    const int cols = ho * wo, ncol = nb * cols;
    int row = (int)(i / ncol);
    const int q = (int)(i - (long long)row * ncol);
    int bi = q / cols;
    const int p = q - bi * cols;
    int oy = p / wo, ox0 = p - oy * wo;
    int c = -1, ky = 0, kx = 0, off = 0, a_row = 0, b_row = 0;
    while (i < hi) {
        if (c < 0) {
            // A new row of the column matrix: its (c, ky, kx) and the
            // output columns whose ix = ox·s + off lies in [0, w): [a, b).
            c = row / (k * k);
            const int kk = row - c * k * k;
            ky = kk / k;
            kx = kk - ky * k;
            off = kx - pad;
            a_row = off >= 0 ? 0 : (-off + s - 1) / s;
            b_row = w - off > 0 ? (w - off + s - 1) / s : 0;
            if (a_row > wo) a_row = wo;
            if (b_row > wo) b_row = wo;
            if (b_row < a_row) b_row = a_row;
        }
        // A whole segment (row, bi) of a stride-1 convolution as wide as
        // its input (wo = w, "same" padding): its ho·wo values are the
        // input plane shifted by (dy, off) = (ky − pad, kx − pad), so the
        // valid output rows are one copy, and only the columns that the
        // shift wraps into the neighbouring row and the rows outside the
        // input are zeros: one memcpy instead of ho runs.
        if (s == 1 && wo == w && ox0 == 0 && oy == 0 && hi - i >= cols) {
            const int dy = ky - pad;
            const int oy_a = dy < 0 ? snnc_min_i(-dy, ho) : 0;
            const int oy_b = std::max(oy_a, snnc_min_i(h - dy, ho));
            float* dst = col + i;
            const float* plane = x + (long long)(bi * ci + c) * h * w;
            const int q_a = oy_a * w + std::max(-off, 0);
            const int q_b = std::max(q_a, oy_b * w - std::max(off, 0));
            // Input index of output q: q + shift (in the plane for q in
            // [q_a, q_b), so no pointer outside it is formed).
            const long long shift = (long long)dy * w + off;
            std::fill(dst, dst + std::min(q_a, cols), 0.0f);
            if (q_b > q_a) std::copy(plane + (shift + q_a), plane + (shift + q_b), dst + q_a);
            if (q_b < cols) std::fill(dst + q_b, dst + cols, 0.0f);
            // The wrapped columns of the copied rows.
            for (int r = oy_a; r < oy_b; ++r) {
                for (int x0 = 0; x0 < -off; ++x0) dst[r * w + x0] = 0.0f;
                for (int x0 = w - off; x0 < w; ++x0) dst[r * w + x0] = 0.0f;
            }
            i += cols;
            if (++bi == nb) {
                bi = 0;
                ++row;
                c = -1;
            }
            continue;
        }
        const int iy = oy * s + ky - pad;
        const int len = snnc_min_i(wo - ox0, hi - i);
        float* dst = col + i;
        if (iy < 0 || iy >= h) {
            for (int j = 0; j < len; ++j) dst[j] = 0.0f;
        } else {
            // [a, b) relative to ox0, clipped to the segment.
            int a = a_row - ox0, b = b_row - ox0;
            a = a < 0 ? 0 : (a > len ? len : a);
            b = b < 0 ? 0 : (b > len ? len : b);
            if (b < a) b = a;
            const float* src = x + ((long long)(bi * ci + c) * h + iy) * w + off + ox0 * s;
            for (int j = 0; j < a; ++j) dst[j] = 0.0f;
            if (s == 1) {
                for (int j = a; j < b; ++j) dst[j] = src[j];
            } else {
                for (int j = a; j < b; ++j) dst[j] = src[j * s];
            }
            for (int j = b; j < len; ++j) dst[j] = 0.0f;
        }
        i += len;
        ox0 += len;
        if (ox0 == wo) {
            ox0 = 0;
            if (++oy == ho) {
                oy = 0;
                if (++bi == nb) {
                    bi = 0;
                    ++row;
                    c = -1;
                }
            }
        }
    }
}

// col2im: i = ((b·ci + c)·h + iy)·w + ix; per input row (an odometer over
// (b, c, iy)), the terms in (ky, kx) order as the GPU form adds them.
extern "C" void snnc_cpu_col2im(const float* col, float* dx, int ci, int h, int w, int k, int s,
                                int pad, int ho, int wo, int nb, int n) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    if (i >= hi) return;
    const int cols = ho * wo, ncol = nb * cols;
    // The coordinates of i, advanced row by row below.
    const long long r = i / w;
    int ix0 = (int)(i - r * w);
    int iy = (int)(r % h);
    int c = (int)((r / h) % ci);
    int bi = (int)(r / ((long long)h * ci));
    while (i < hi) {
        const int len = snnc_min_i(w - ix0, hi - i);
        float* out = dx + i;
        for (int j = 0; j < len; ++j) out[j] = 0.0f;
        for (int ky = 0; ky < k; ++ky) {
            const int ty = iy + pad - ky;
            if (ty < 0 || ty % s != 0) continue;
            const int oy = ty / s;
            if (oy >= ho) continue;
            if (s == 1) {
                // ox = ix + pad − kx: the valid j form one run.
                for (int kx = 0; kx < k; ++kx) {
                    const int off = ix0 + pad - kx;
                    const float* src =
                        col + (long long)((c * k + ky) * k + kx) * ncol + bi * cols + oy * wo + off;
                    const int ja = off < 0 ? -off : 0;
                    const int jb = wo - off < len ? wo - off : len;
                    for (int j = ja; j < jb; ++j) out[j] += src[j];
                }
                continue;
            }
            for (int kx = 0; kx < k; ++kx) {
                const float* src =
                    col + (long long)((c * k + ky) * k + kx) * ncol + bi * cols + oy * wo;
                for (int j = 0; j < len; ++j) {
                    const int tx = ix0 + j + pad - kx;
                    if (tx < 0 || tx % s != 0) continue;
                    const int ox = tx / s;
                    if (ox < wo) out[j] += src[ox];
                }
            }
        }
        i += len;
        ix0 += len;
        if (ix0 == w) {
            ix0 = 0;
            if (++iy == h) {
                iy = 0;
                if (++c == ci) {
                    c = 0;
                    ++bi;
                }
            }
        }
    }
}

// [nb, c, r] -> [c, nb, r]: i = (ch·nb + b)·r + j; runs of r are copies.
extern "C" void snnc_cpu_bc_swap(const float* x, float* out, int nb, int c, int r, int n) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    while (i < hi) {
        const long long q = i / r;
        const int j0 = (int)(i - q * r);
        const int bi = (int)(q % nb), ch = (int)(q / nb);
        const int len = snnc_min_i(r - j0, hi - i);
        const float* src = x + ((long long)bi * c + ch) * r + j0;
        for (int j = 0; j < len; ++j) out[i + j] = src[j];
        i += len;
    }
}

// Pass 1 of a channel reduction, for the threads t = ch·parts + p of the
// range: element e = bi·r + j of a channel goes into part e mod parts, so
// each part adds its elements in increasing e, as the GPU thread does.
// The range's channels go in groups whose partial sums fit in L1 (`acc`),
// each group read one batch row bi at a time: its channels' rows are
// adjacent in memory, one long stream for the prefetcher instead of rows
// of r elements c·r apart. Row bi starts at part (bi·r) mod parts in every
// channel. KIND 0: x; 1: (x − mean)²; 2: x·y; 3: x and x² (two sums);
// 4: x and x·y (two sums).
template <int KIND>
static inline double snnc_cpu_chan_term(const float* x, const float* y, long long at, float m) {
    if (KIND == 0) return (double)x[at];
    if (KIND == 1) {
        const float dv = x[at] - m;
        return (double)(dv * dv);
    }
    return (double)(x[at] * y[at]);
}

template <int KIND>
static inline void snnc_cpu_chan(const float* x, const float* y, const float* mean, double* part,
                                 int c, int b, int r, int parts, double* part2 = nullptr) {
    // KIND 3 (moments): part gets the sums of x, part2 those of x² (each
    // square exact in double), in one read of x. KIND 4: part gets the sums
    // of x, part2 those of x·y, in one read of x (KIND 0's and 2's sums).
    const bool two = KIND == 3 || KIND == 4;
    long long t, hi;
    snnc_range((long long)c * parts, &t, &hi);
    if (t >= hi) return;
    const int ACC = 4096;
    if (parts > ACC) {
        // More parts than `acc` holds: each thread as the GPU form.
        for (; t < hi; ++t) {
            const int ch = (int)(t / parts), p = (int)(t - (long long)ch * parts);
            const float m = KIND == 1 ? mean[ch] : 0.0f;
            double s = 0.0, s2 = 0.0;
            for (long long e = p; e < (long long)b * r; e += parts) {
                const long long bi = e / r;
                const long long at = (bi * c + ch) * r + (e - bi * r);
                if (KIND == 3) {
                    const double v = (double)x[at];
                    s += v;
                    s2 += v * v;
                } else if (KIND == 4) {
                    s += (double)x[at];
                    s2 += (double)(x[at] * y[at]);
                } else {
                    s += snnc_cpu_chan_term<KIND>(x, y, at, m);
                }
            }
            part[t] = s;
            if (two) part2[t] = s2;
        }
        return;
    }
    double acc[ACC];
    double acc2[KIND == 3 || KIND == 4 ? ACC : 1];
    const int group = ACC / parts;
    const int ch_end = (int)((hi - 1) / parts) + 1;
    for (int g0 = (int)(t / parts); g0 < ch_end; g0 += group) {
        const int g1 = snnc_min_i(ch_end, (long long)g0 + group);
        for (int q = 0; q < (g1 - g0) * parts; ++q) acc[q] = 0.0;
        if (two) {
            for (int q = 0; q < (g1 - g0) * parts; ++q) acc2[q] = 0.0;
        }
        int p_row = 0;
        for (int bi = 0; bi < b; ++bi) {
            for (int ch = g0; ch < g1; ++ch) {
                const long long at = ((long long)bi * c + ch) * r;
                const float m = KIND == 1 ? mean[ch] : 0.0f;
                double* a_ch = acc + (ch - g0) * parts;
                // Runs that stay within the row and one turn of the parts.
                for (int j = 0, p = p_row; j < r;) {
                    const int len = snnc_min_i(parts - p, r - j);
                    const float* xs = x + at + j;
                    double* a = a_ch + p;
                    if (KIND == 0) {
                        for (int q = 0; q < len; ++q) a[q] += (double)xs[q];
                    } else if (KIND == 1) {
                        for (int q = 0; q < len; ++q) {
                            const float dv = xs[q] - m;
                            a[q] += (double)(dv * dv);
                        }
                    } else if (KIND == 3) {
                        double* a2 = acc2 + (ch - g0) * parts + p;
                        for (int q = 0; q < len; ++q) {
                            const double v = (double)xs[q];
                            a[q] += v;
                            a2[q] += v * v;
                        }
                    } else if (KIND == 4) {
                        double* a2 = acc2 + (ch - g0) * parts + p;
                        const float* ys = y + at + j;
                        for (int q = 0; q < len; ++q) {
                            a[q] += (double)xs[q];
                            a2[q] += (double)(xs[q] * ys[q]);
                        }
                    } else {
                        const float* ys = y + at + j;
                        for (int q = 0; q < len; ++q) a[q] += (double)(xs[q] * ys[q]);
                    }
                    j += len;
                    p += len;
                    if (p == parts) p = 0;
                }
            }
            p_row = (int)((p_row + (long long)r) % parts);
        }
        // The group's parts that belong to this range.
        const long long lo_g = (long long)g0 * parts, hi_g = (long long)g1 * parts;
        for (long long u = lo_g > t ? lo_g : t; u < hi_g && u < hi; ++u) {
            part[u] = acc[u - lo_g];
            if (two) part2[u] = acc2[u - lo_g];
        }
    }
}

extern "C" void snnc_cpu_chan_partial(const float* x, const float* mean, double* part, int c,
                                      int b, int r, int parts) {
    if (mean) {
        snnc_cpu_chan<1>(x, nullptr, mean, part, c, b, r, parts);
    } else {
        snnc_cpu_chan<0>(x, nullptr, nullptr, part, c, b, r, parts);
    }
}

extern "C" void snnc_cpu_chan_moments_partial(const float* x, double* sum, double* sq, int c,
                                              int b, int r, int parts) {
    snnc_cpu_chan<3>(x, nullptr, nullptr, sum, c, b, r, parts, sq);
}

extern "C" void snnc_cpu_chan_dot_partial(const float* x, const float* y, double* part, int c,
                                          int b, int r, int parts) {
    snnc_cpu_chan<2>(x, y, nullptr, part, c, b, r, parts);
}

extern "C" void snnc_cpu_chan_sum_dot_partial(const float* x, const float* y, double* sum,
                                              double* dot, int c, int b, int r, int parts) {
    snnc_cpu_chan<4>(x, y, nullptr, sum, c, b, r, parts, dot);
}

// Pooling forward: i = (plane·ho + oy)·wo + ox; per output row (an
// odometer over (plane, oy)); 2×2 average pooling with stride 2 (the
// common case) with its window unrolled, in the GPU form's order.
template <bool IS_MAX>
static inline void snnc_cpu_pool_rows(const float* x, float* out, long long i, long long hi, int h,
                                      int w, int ho, int wo, int k, int s) {
    const long long q = i / wo;
    int ox0 = (int)(i - q * wo);
    int oy = (int)(q % ho);
    long long plane = q / ho;
    const bool avg22 = !IS_MAX && k == 2 && s == 2;
    while (i < hi) {
        const int len = snnc_min_i(wo - ox0, hi - i);
        const float* base = x + (plane * h + oy * s) * w + ox0 * s;
        float* o = out + i;
        if (avg22) {
            for (int j = 0; j < len; ++j) {
                const float* r0 = base + 2 * j;
                const float* r1 = r0 + w;
                float acc = 0.0f;
                acc = acc + r0[0];
                acc = acc + r0[1];
                acc = acc + r1[0];
                acc = acc + r1[1];
                o[j] = acc / 4.0f;
            }
        } else {
            for (int j = 0; j < len; ++j) {
                float acc = IS_MAX ? snnc_neg_inf() : 0.0f;
                for (int ky = 0; ky < k; ++ky) {
                    const float* row = base + (long long)ky * w + j * s;
                    for (int kx = 0; kx < k; ++kx) {
                        acc = IS_MAX ? fmaxf(acc, row[kx]) : acc + row[kx];
                    }
                }
                o[j] = IS_MAX ? acc : acc / (float)(k * k);
            }
        }
        i += len;
        ox0 += len;
        if (ox0 == wo) {
            ox0 = 0;
            if (++oy == ho) {
                oy = 0;
                ++plane;
            }
        }
    }
}

extern "C" void snnc_cpu_pool(const float* x, float* out, int n, int h, int w, int ho, int wo,
                              int k, int s, int p, int is_max) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    if (i >= hi) return;
    if (p != 0) {
        // Padded windows (the ImageNet stem's max-pool): the GPU form.
        for (; i < hi; ++i) out[i] = snnc_pool_at(x, (int)i, h, w, ho, wo, k, s, p, is_max);
    } else if (is_max) {
        snnc_cpu_pool_rows<true>(x, out, i, hi, h, w, ho, wo, k, s);
    } else {
        snnc_cpu_pool_rows<false>(x, out, i, hi, h, w, ho, wo, k, s);
    }
}

// AvgPoolGrad: i = (plane·h + iy)·w + ix; per input row, the windows in
// (oy, ox) order.
static void snnc_cpu_avgpool_grad_rows(const float* d, float* out, long long i, long long hi,
                                       int h, int w, int ho, int wo, int k, int s);

extern "C" void snnc_cpu_avgpool_grad(const float* d, float* out, int n, int h, int w, int ho,
                                      int wo, int k, int s, int p) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    if (p != 0) {
        for (; i < hi; ++i) out[i] = snnc_avgpool_grad_at(d, (int)i, h, w, ho, wo, k, s, p);
        return;
    }
    if (k == 2 && s == 2 && h == 2 * ho && w == 2 * wo) {
        // 2×2 windows tiling the map (the pooling after a spiking layer):
        // the range's whole pairs of rows, each from one row of d, without
        // a division per row; the cut pairs at its ends row by row.
        const long long pair = 2LL * w;
        const long long first = (i + pair - 1) / pair, last = hi / pair;
        if (first < last) {
            snnc_cpu_avgpool_grad_rows(d, out, i, first * pair, h, w, ho, wo, k, s);
            for (long long r = first; r < last; ++r) {
                const float* src = d + r * wo;
                float* top = out + r * pair;
                float* bottom = top + w;
                for (int ox = 0; ox < wo; ++ox) {
                    const float v = 0.0f + src[ox] / 4.0f;
                    top[2 * ox] = v;
                    top[2 * ox + 1] = v;
                    bottom[2 * ox] = v;
                    bottom[2 * ox + 1] = v;
                }
            }
            snnc_cpu_avgpool_grad_rows(d, out, last * pair, hi, h, w, ho, wo, k, s);
            return;
        }
    }
    snnc_cpu_avgpool_grad_rows(d, out, i, hi, h, w, ho, wo, k, s);
}

// AvgPoolGradMul: AvgPoolGrad times m, as snnc_cpu_avgpool_grad then
// snnc_mul round it. For 2×2 windows tiling the map, the range's whole
// pairs of rows each from one row of d; the rest element by element.
extern "C" void snnc_cpu_avgpool_grad_mul(const float* d, const float* m, float* out, int n,
                                          int h, int w, int ho, int wo, int k, int s, int p) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    const long long pair = 2LL * w;
    const bool tiles = p == 0 && k == 2 && s == 2 && h == 2 * ho && w == 2 * wo;
    const long long first = tiles ? (i + pair - 1) / pair : hi, last = tiles ? hi / pair : hi;
    if (first < last) {
        for (long long j = i; j < first * pair; ++j) {
            out[j] = snnc_avgpool_grad_at(d, (int)j, h, w, ho, wo, k, s, p) * m[j];
        }
        for (long long r = first; r < last; ++r) {
            const float* src = d + r * wo;
            const long long top = r * pair, bottom = top + w;
            for (int ox = 0; ox < wo; ++ox) {
                const float v = 0.0f + src[ox] / 4.0f;
                out[top + 2 * ox] = v * m[top + 2 * ox];
                out[top + 2 * ox + 1] = v * m[top + 2 * ox + 1];
                out[bottom + 2 * ox] = v * m[bottom + 2 * ox];
                out[bottom + 2 * ox + 1] = v * m[bottom + 2 * ox + 1];
            }
        }
        i = last * pair;
    }
    for (; i < hi; ++i) out[i] = snnc_avgpool_grad_at(d, (int)i, h, w, ho, wo, k, s, p) * m[i];
}

// Elements [i, hi) of an unpadded AvgPoolGrad, one input row at a time.
static void snnc_cpu_avgpool_grad_rows(const float* d, float* out, long long i, long long hi,
                                       int h, int w, int ho, int wo, int k, int s) {
    const float area = (float)(k * k);
    while (i < hi) {
        const long long q = i / w;
        const int ix0 = (int)(i - q * w);
        const int iy = (int)(q % h), plane = (int)(q / h);
        const int len = snnc_min_i(w - ix0, hi - i);
        if (k == s) {
            // Tiling windows: each input in at most one, (iy / s, ix / s).
            const int oy = iy / s;
            const bool row_in = oy < ho;
            const float* row = d + ((long long)plane * ho + oy) * wo;
            int ox = ix0 / s, rem = ix0 - ox * s, j = 0;
            // A window cut by the range's start, element by element; then
            // whole windows, one quotient stored s times (no test per
            // element); then what is left (a cut window, or the inputs past
            // the last window).
            for (; j < len && rem != 0; ++j) {
                out[i + j] = (row_in && ox < wo) ? 0.0f + row[ox] / area : 0.0f;
                if (++rem == s) {
                    rem = 0;
                    ++ox;
                }
            }
            if (row_in) {
                const int whole = std::max(0, snnc_min_i((len - j) / s, wo - ox));
                float* dst = out + i + j;
                if (s == 2) {
                    for (int t = 0; t < whole; ++t) {
                        const float v = 0.0f + row[ox + t] / area;
                        dst[2 * t] = v;
                        dst[2 * t + 1] = v;
                    }
                } else {
                    for (int t = 0; t < whole; ++t) {
                        const float v = 0.0f + row[ox + t] / area;
                        for (int r = 0; r < s; ++r) dst[t * s + r] = v;
                    }
                }
                j += whole * s;
                ox += whole;
            }
            for (; j < len; ++j) {
                out[i + j] = (row_in && ox < wo) ? 0.0f + row[ox] / area : 0.0f;
                if (++rem == s) {
                    rem = 0;
                    ++ox;
                }
            }
            i += len;
            continue;
        }
        const int y0 = snnc_first_window(iy, k, s), y1 = snnc_last_window(iy, s, ho);
        for (int j = 0; j < len; ++j) {
            const int ix = ix0 + j;
            const int x0 = snnc_first_window(ix, k, s), x1 = snnc_last_window(ix, s, wo);
            float acc = 0.0f;
            for (int oy = y0; oy <= y1; ++oy) {
                const float* row = d + ((long long)plane * ho + oy) * wo;
                for (int ox = x0; ox <= x1; ++ox) acc += row[ox] / area;
            }
            out[i + j] = acc;
        }
        i += len;
    }
}

// The event convolution, one output row (bi, oy) per thread of the range:
// the row's sums for every (ox, o) in acc[ox·co + o], each nonzero input of
// the rows it reads added as one weight row per kernel offset (a run of co
// multiply-adds the compiler vectorises), then stored transposed. Input
// element ix reaches output ox = (ix + pad − kx)/s for the kx that divide
// evenly; for a fixed (ox, o) the terms arrive in the order (ky, c, kx)
// (ix ascending is kx ascending), the GPU form's order.
extern "C" void snnc_cpu_conv_events(const float* x, const float* wt, float* out, int ci, int h,
                                     int w, int co, int k, int s, int pad, int ho, int wo, int n) {
    long long i, hi;
    snnc_range(n, &i, &hi);
    if (i >= hi) return;
    std::vector<float> acc((size_t)wo * co);
    for (; i < hi; ++i) {
        const int bi = (int)(i / ho), oy = (int)(i - (long long)bi * ho);
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int ky = 0; ky < k; ++ky) {
            const int iy = oy * s + ky - pad;
            if (iy < 0 || iy >= h) continue;
            for (int c = 0; c < ci; ++c) {
                const float* row = x + ((long long)(bi * ci + c) * h + iy) * w;
                const float* wrow = wt + (long long)(c * k + ky) * k * co;
                for (int ix = 0; ix < w; ++ix) {
                    const float v = row[ix];
                    if (v == 0.0f) continue;
                    for (int kx = 0; kx < k; ++kx) {
                        const int num = ix + pad - kx;
                        if (num < 0) break;
                        if (num % s != 0) continue;
                        const int ox = num / s;
                        if (ox >= wo) continue;
                        float* a = acc.data() + (size_t)ox * co;
                        const float* wv = wrow + (long long)kx * co;
                        for (int o = 0; o < co; ++o) a[o] += v * wv[o];
                    }
                }
            }
        }
        for (int o = 0; o < co; ++o) {
            float* dst = out + ((long long)(bi * co + o) * ho + oy) * wo;
            for (int ox = 0; ox < wo; ++ox) dst[ox] = acc[(size_t)ox * co + o];
        }
    }
}

