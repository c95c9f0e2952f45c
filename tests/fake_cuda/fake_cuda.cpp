// A fake CUDA driver (libcuda.so) and cuBLAS (libcublas.so, with
// -DFAKE_CUBLAS) for tests/cuda_fake_device.rs: enough of both APIs for
// cudarc and snnc's GPU backend (codegen/cuda/device.rs) to run end to end
// on a machine without a GPU.
//
// "Device memory" is host memory; a module is the CPU emulator's kernel
// libraries (codegen/cuda/emu.rs: $SNNC_FAKE_EMU_LIB, a ':'-separated list
// of kernels.cu's library and those of generated modules, whose kernel names
// carry a hash of their code, so a name finds the right code), whatever
// image cuModuleLoadData is given (the real NVRTC's CUBIN); cuLaunchKernel calls
// the emulator's launcher with the kernelParams array exactly as the driver
// would read it. Every copy and every pointer argument is checked against
// the live allocations, launch configurations against the hardware limits,
// GEMM arguments against cuBLAS's rules; a violation is an error return, as
// from the real libraries, plus a line on stderr.
//
// $SNNC_FAKE_CUINIT_FAIL=1 makes cuInit fail (no device).

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <map>
#include <mutex>
#include <string>
#include <time.h>
#include <vector>

typedef int CUresult;
typedef unsigned long long CUdeviceptr;

static std::mutex mu;
// base -> size in bytes
static std::map<CUdeviceptr, size_t> allocs;
static size_t allocated = 0;
static const size_t TOTAL = 80ull << 30;

static CUresult fail(const char* what, CUresult code) {
    std::fprintf(stderr, "fake CUDA: %s\n", what);
    return code;
}

// Is [p, p + bytes) inside one live allocation?
static bool inside(CUdeviceptr p, size_t bytes) {
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return false;
    --it;
    return p >= it->first && p + bytes <= it->first + it->second;
}

#ifndef FAKE_CUBLAS

enum { SUCCESS = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, NOT_INITIALIZED = 3, NO_DEVICE = 100,
       INVALID_HANDLE = 400, NOT_FOUND = 500, LAUNCH_FAILED = 719 };

static bool initialised = false;
static int ctx_token = 0;
static void* current = nullptr;

extern "C" {

CUresult cuInit(unsigned flags) {
    if (flags != 0) return fail("cuInit flags", INVALID_VALUE);
    const char* f = std::getenv("SNNC_FAKE_CUINIT_FAIL");
    if (f && f[0] == '1') return NO_DEVICE;
    initialised = true;
    return SUCCESS;
}

CUresult cuDriverGetVersion(int* v) {
    *v = 13000;
    return SUCCESS;
}

CUresult cuDeviceGetCount(int* n) {
    if (!initialised) return NOT_INITIALIZED;
    *n = 1;
    return SUCCESS;
}

CUresult cuDeviceGet(int* dev, int ordinal) {
    if (!initialised) return NOT_INITIALIZED;
    if (ordinal != 0) return fail("cuDeviceGet: no such device", INVALID_VALUE);
    *dev = 0;
    return SUCCESS;
}

CUresult cuDeviceGetName(char* name, int len, int dev) {
    if (dev != 0) return INVALID_VALUE;
    std::snprintf(name, (size_t)len, "FAKE H200 (tests/fake_cuda)");
    return SUCCESS;
}

CUresult cuDeviceGetAttribute(int* v, int attr, int dev) {
    if (dev != 0) return INVALID_VALUE;
    switch (attr) {
    case 75: *v = 9; return SUCCESS;   // compute capability major
    case 76: *v = 0; return SUCCESS;   // minor
    case 115: *v = 1; return SUCCESS;  // memory pools supported (async alloc)
    default: *v = 0; return SUCCESS;
    }
}

CUresult cuDeviceTotalMem_v2(size_t* bytes, int dev) {
    if (dev != 0) return INVALID_VALUE;
    *bytes = TOTAL;
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRetain(void** ctx, int dev) {
    if (!initialised) return NOT_INITIALIZED;
    if (dev != 0) return INVALID_VALUE;
    *ctx = &ctx_token;
    return SUCCESS;
}

CUresult cuDevicePrimaryCtxRelease_v2(int dev) { return dev == 0 ? SUCCESS : INVALID_VALUE; }

CUresult cuCtxGetCurrent(void** ctx) {
    *ctx = current;
    return SUCCESS;
}

CUresult cuCtxSetCurrent(void* ctx) {
    if (ctx != nullptr && ctx != &ctx_token) return fail("cuCtxSetCurrent: unknown context", INVALID_VALUE);
    current = ctx;
    return SUCCESS;
}

CUresult cuCtxSynchronize() { return SUCCESS; }
CUresult cuStreamSynchronize(void*) { return current ? SUCCESS : fail("no current context", INVALID_VALUE); }

CUresult cuMemGetInfo_v2(size_t* free_b, size_t* total) {
    std::lock_guard<std::mutex> g(mu);
    *free_b = TOTAL - allocated;
    *total = TOTAL;
    return SUCCESS;
}

static CUresult do_alloc(CUdeviceptr* p, size_t bytes) {
    if (!current) return fail("allocation without a current context", INVALID_VALUE);
    if (bytes == 0) return fail("cuMemAlloc of 0 bytes", INVALID_VALUE);
    void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
    if (!m) return OUT_OF_MEMORY;
    std::lock_guard<std::mutex> g(mu);
    *p = (CUdeviceptr)m;
    allocs[*p] = bytes;
    allocated += bytes;
    return SUCCESS;
}

static CUresult do_free(CUdeviceptr p) {
    std::lock_guard<std::mutex> g(mu);
    auto it = allocs.find(p);
    if (it == allocs.end()) return fail("free of an unknown pointer", INVALID_VALUE);
    allocated -= it->second;
    allocs.erase(it);
    std::free((void*)p);
    return SUCCESS;
}

CUresult cuMemAllocAsync(CUdeviceptr* p, size_t bytes, void*) { return do_alloc(p, bytes); }
CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) { return do_alloc(p, bytes); }
CUresult cuMemFreeAsync(CUdeviceptr p, void*) { return do_free(p); }
CUresult cuMemFree_v2(CUdeviceptr p) { return do_free(p); }

CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void* src, size_t n, void*) {
    std::lock_guard<std::mutex> g(mu);
    if (!inside(dst, n)) return fail("host-to-device copy outside an allocation", INVALID_VALUE);
    std::memcpy((void*)dst, src, n);
    return SUCCESS;
}

CUresult cuMemcpyDtoHAsync_v2(void* dst, CUdeviceptr src, size_t n, void*) {
    std::lock_guard<std::mutex> g(mu);
    if (!inside(src, n)) return fail("device-to-host copy outside an allocation", INVALID_VALUE);
    std::memcpy(dst, (const void*)src, n);
    return SUCCESS;
}

CUresult cuMemcpyDtoDAsync_v2(CUdeviceptr dst, CUdeviceptr src, size_t n, void*) {
    std::lock_guard<std::mutex> g(mu);
    if (!inside(src, n) || !inside(dst, n)) return fail("device copy outside an allocation", INVALID_VALUE);
    std::memmove((void*)dst, (const void*)src, n);
    return SUCCESS;
}

CUresult cuMemsetD8Async(CUdeviceptr dst, unsigned char v, size_t n, void*) {
    std::lock_guard<std::mutex> g(mu);
    if (!inside(dst, n)) return fail("memset outside an allocation", INVALID_VALUE);
    std::memset((void*)dst, v, n);
    return SUCCESS;
}

struct Module {
    std::vector<void*> libs;
};

struct Function {
    void (*launch)(unsigned, unsigned, void**);
    std::string sig;
    std::string name;
};

CUresult cuModuleLoadData(void** module, const void* image) {
    if (!current) return fail("module load without a current context", INVALID_VALUE);
    if (!image) return fail("cuModuleLoadData: null image", INVALID_VALUE);
    // A CUBIN is an ELF file; PTX is text starting with a comment or
    // directive. Either is accepted; the kernels come from the emulator.
    const char* paths = std::getenv("SNNC_FAKE_EMU_LIB");
    if (!paths) return fail("SNNC_FAKE_EMU_LIB is not set", NOT_FOUND);
    Module* m = new Module;
    std::string all(paths);
    size_t start = 0;
    while (start <= all.size()) {
        size_t end = all.find(':', start);
        if (end == std::string::npos) end = all.size();
        std::string path = all.substr(start, end - start);
        start = end + 1;
        if (path.empty()) continue;
        void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!lib) {
            delete m;
            return fail(dlerror(), NOT_FOUND);
        }
        m->libs.push_back(lib);
    }
    *module = m;
    return SUCCESS;
}

CUresult cuModuleUnload(void* module) {
    delete (Module*)module;
    return SUCCESS;
}

CUresult cuModuleGetFunction(void** f, void* module, const char* name) {
    Module* m = (Module*)module;
    std::string launcher = std::string("snnc_emu_launch_") + name;
    std::string sig = std::string("snnc_emu_sig_") + name;
    void *l = nullptr, *s = nullptr;
    for (void* lib : m->libs) {
        l = dlsym(lib, launcher.c_str());
        s = dlsym(lib, sig.c_str());
        if (l && s) break;
    }
    if (!l || !s) {
        std::fprintf(stderr, "fake CUDA: no emulated kernel `%s` in $SNNC_FAKE_EMU_LIB\n", name);
        return NOT_FOUND;
    }
    char buf[64] = {0};
    ((void (*)(char*))s)(buf);
    *f = new Function{(void (*)(unsigned, unsigned, void**))l, buf, name};
    return SUCCESS;
}

CUresult cuFuncGetAttribute(int* v, int, void*) {
    *v = 0;
    return SUCCESS;
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shmem, void* stream, void** params, void** extra) {
    (void)stream;
    Function* fn = (Function*)f;
    if (!current) return fail("launch without a current context", INVALID_VALUE);
    if (gx == 0 || gy != 1 || gz != 1 || gx > 2147483647u) return fail("bad grid", INVALID_VALUE);
    if (bx == 0 || bx * by * bz > 1024 || by != 1 || bz != 1) return fail("bad block", INVALID_VALUE);
    if (shmem != 0 || extra != nullptr) return fail("unexpected shared memory or extra", INVALID_VALUE);
    if (!params) return fail("no kernelParams", INVALID_VALUE);
    {
        std::lock_guard<std::mutex> g(mu);
        for (size_t i = 0; i < fn->sig.size(); ++i) {
            if (fn->sig[i] != 'p') continue;
            CUdeviceptr p = *(CUdeviceptr*)params[i];
            if (p != 0 && !inside(p, 1)) {
                std::fprintf(stderr, "fake CUDA: %s: pointer argument %zu is not device memory\n", fn->name.c_str(), i);
                return LAUNCH_FAILED;
            }
        }
    }
    fn->launch(gx, bx, params);
    return SUCCESS;
}

// Events: a launch has finished when cuLaunchKernel returns, so an event
// records the host clock.
struct Event {
    double ms;
};

static double now_ms() {
    timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{0};
    return SUCCESS;
}

CUresult cuEventRecord(void* e, void*) {
    if (!e) return INVALID_HANDLE;
    ((Event*)e)->ms = now_ms();
    return SUCCESS;
}

CUresult cuEventSynchronize(void* e) { return e ? SUCCESS : INVALID_HANDLE; }

CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    if (!a || !b) return INVALID_HANDLE;
    *ms = (float)(((Event*)b)->ms - ((Event*)a)->ms);
    return SUCCESS;
}

CUresult cuEventDestroy_v2(void* e) {
    delete (Event*)e;
    return SUCCESS;
}

// NVRTC opens libcuda.so.1 when there is one and asks it for internal
// tables; a fake has none to give, and says so.
CUresult cuGetExportTable(const void** table, const void*) {
    *table = nullptr;
    return 801;  // CUDA_ERROR_NOT_SUPPORTED
}

CUresult cuGetProcAddress(const char*, void** fn, int, unsigned long long) {
    *fn = nullptr;
    return 500;
}

CUresult cuGetProcAddress_v2(const char*, void** fn, int, unsigned long long, int*) {
    *fn = nullptr;
    return 500;
}

// For the fake cuBLAS, which has no allocation table of its own.
int fake_cuda_inside(CUdeviceptr p, size_t bytes) {
    std::lock_guard<std::mutex> g(mu);
    return inside(p, bytes) ? 1 : 0;
}

CUresult cuGetErrorString(CUresult, const char** s) {
    *s = "fake CUDA error";
    return SUCCESS;
}

CUresult cuGetErrorName(CUresult, const char** s) {
    *s = "CUDA_ERROR_FAKE";
    return SUCCESS;
}

}  // extern "C"

#else  // FAKE_CUBLAS

enum { OK = 0, NOT_INIT = 1, INVALID = 7 };

struct Handle {
    void* stream;
    int math;
};

extern "C" {

int cublasCreate_v2(void** h) {
    *h = new Handle{nullptr, 0};
    return OK;
}

int cublasDestroy_v2(void* h) {
    delete (Handle*)h;
    return OK;
}

int cublasSetStream_v2(void* h, void* stream) {
    ((Handle*)h)->stream = stream;
    return OK;
}

int cublasSetMathMode(void* h, int mode) {
    ((Handle*)h)->math = mode;
    return mode == 0 ? OK : INVALID;
}

// Column-major C = alpha·op(A)·op(B) + beta·C, per batch.
// An f32 rounded to nearest (ties to even) with its low `drop` mantissa
// bits cleared: what the tensor-core compute types read (16 for bf16, 13
// for TF32, 0 for f32).
static float round_bits(float x, int drop) {
    if (drop == 0 || !std::isfinite(x)) return x;
    uint32_t u;
    std::memcpy(&u, &x, 4);
    uint32_t lsb = (u >> drop) & 1u;
    u = (u + ((1u << (drop - 1)) - 1u) + lsb) & ~((1u << drop) - 1u);
    std::memcpy(&x, &u, 4);
    return x;
}

static int gemm(int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda, long long sa,
                const float* B, int ldb, long long sb, const float* beta, float* C, int ldc, long long sc,
                int batch, int drop = 0) {
    if (ta < 0 || ta > 1 || tb < 0 || tb > 1) return INVALID;  // N = 0, T = 1 (C = 2 unused)
    if (m < 0 || n < 0 || k < 0 || batch < 1) return INVALID;
    int ra = ta ? k : m, rb = tb ? n : k;
    if (lda < (ra > 1 ? ra : 1) || ldb < (rb > 1 ? rb : 1) || ldc < (m > 1 ? m : 1)) return INVALID;
    {
        // Every element touched must be device memory (the fake driver's
        // allocation table, already loaded by cudarc).
        void* drv = dlopen("libcuda.so", RTLD_NOW | RTLD_NOLOAD);
        if (!drv) drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
        auto in_dev = drv ? (int (*)(CUdeviceptr, size_t))dlsym(drv, "fake_cuda_inside") : nullptr;
        if (!in_dev) {
            std::fprintf(stderr, "fake cuBLAS: the fake libcuda.so is not loaded\n");
            return INVALID;
        }
        auto span = [&](const float* p, int rows, int cols, int ld, long long s) {
            if (rows == 0 || cols == 0) return true;
            size_t last = (size_t)(rows - 1) + (size_t)(cols - 1) * ld + (size_t)(batch - 1) * s;
            return in_dev((CUdeviceptr)p, (last + 1) * 4) == 1;
        };
        if (!span(A, ta ? k : m, ta ? m : k, lda, sa) || !span(B, tb ? n : k, tb ? k : n, ldb, sb) ||
            !span(C, m, n, ldc, sc)) {
            std::fprintf(stderr, "fake cuBLAS: operand outside device memory\n");
            return INVALID;
        }
    }
    for (int q = 0; q < batch; ++q) {
        const float* a = A + q * sa;
        const float* b = B + q * sb;
        float* c = C + q * sc;
        for (int j = 0; j < n; ++j) {
            for (int i = 0; i < m; ++i) {
                double acc = 0.0;
                for (int p = 0; p < k; ++p) {
                    float av = round_bits(ta ? a[p + (size_t)i * lda] : a[i + (size_t)p * lda], drop);
                    float bv = round_bits(tb ? b[j + (size_t)p * ldb] : b[p + (size_t)j * ldb], drop);
                    acc += (double)av * (double)bv;
                }
                float old = *beta == 0.0f ? 0.0f : *beta * c[i + (size_t)j * ldc];
                c[i + (size_t)j * ldc] = *alpha * (float)acc + old;
            }
        }
    }
    return OK;
}

int cublasSgemm_v2(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A, int lda,
                   const float* B, int ldb, const float* beta, float* C, int ldc) {
    if (!h) return NOT_INIT;
    return gemm(ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

int cublasSgemmStridedBatched(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A,
                              int lda, long long sa, const float* B, int ldb, long long sb, const float* beta,
                              float* C, int ldc, long long sc, int batch) {
    if (!h) return NOT_INIT;
    return gemm(ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc, sc, batch);
}

// cublasGemmEx and its strided-batched form, for f32 matrices only
// (CUDA_R_32F = 0) with the compute types snnc uses: CUBLAS_COMPUTE_32F (68),
// CUBLAS_COMPUTE_32F_FAST_16BF (75) and CUBLAS_COMPUTE_32F_FAST_TF32 (77).
static int dropped_bits(int compute) {
    switch (compute) {
        case 68: return 0;
        case 75: return 16;
        case 77: return 13;
        default: return -1;
    }
}

int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A, int at, int lda,
                 const void* B, int bt, int ldb, const void* beta, void* C, int ct, int ldc, int compute,
                 int algo) {
    if (!h) return NOT_INIT;
    int drop = dropped_bits(compute);
    if (at != 0 || bt != 0 || ct != 0 || drop < 0 || algo != -1) return INVALID;
    return gemm(ta, tb, m, n, k, (const float*)alpha, (const float*)A, lda, 0, (const float*)B, ldb, 0,
                (const float*)beta, (float*)C, ldc, 0, 1, drop);
}

int cublasGemmStridedBatchedEx(void* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                               int at, int lda, long long sa, const void* B, int bt, int ldb, long long sb,
                               const void* beta, void* C, int ct, int ldc, long long sc, int batch, int compute,
                               int algo) {
    if (!h) return NOT_INIT;
    int drop = dropped_bits(compute);
    if (at != 0 || bt != 0 || ct != 0 || drop < 0 || algo != -1) return INVALID;
    return gemm(ta, tb, m, n, k, (const float*)alpha, (const float*)A, lda, sa, (const float*)B, ldb, sb,
                (const float*)beta, (float*)C, ldc, sc, batch, drop);
}

}  // extern "C"

#endif
