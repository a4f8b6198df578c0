// seemoe/ops/gemm_kernel.hpp — the float matrix-product kernels behind matmul and linear, and
// which of them runs on this machine.
//
// Four code paths (KernelPath), each complete and each checked against a reference product by the
// test suite:
//   avx512    ops/gemm_avx512.hpp  x86-64 with AVX-512F
//   avx2      ops/gemm_avx2.hpp    x86-64 with AVX2 and FMA
//   neon      ops/gemm_neon.hpp    AArch64
//   portable  Eigen's own product, for any CPU (and for double everywhere)
// The x86 kernels are compiled into every x86-64 build, whatever -march says (target regions), so
// a packaged build picks the best one the CPU has at run time, as a -march=native build does. The
// block sizes come from this machine's caches (gemm_params.hpp). The environment variable
// SEEMOE_KERNEL=avx512|avx2|neon|portable forces a path (for comparisons; a path the build or the
// CPU lacks is an error), and set_kernel_path() does the same from code.
//
// All kernels run on the calling thread only; ops/matmul.hpp splits big products over threads
// before calling them.
//
// The same choice serves plain loops elsewhere (run_vectorized, at the end): Eigen's vector width
// is fixed when the build is compiled, so in a build for plain x86-64 its expressions stay on
// 4-wide SSE; a plain loop compiled inside an AVX-512 target function runs 16 wide.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/common.hpp"
#include "../core/cpu.hpp"
#include "gemm_avx2.hpp"
#include "gemm_avx512.hpp"
#include "gemm_neon.hpp"
#include "gemm_params.hpp"

namespace seemoe {

// Compiled into this build (not asked of the CPU).
inline bool kernel_path_compiled(KernelPath path) {
    switch (path) {
        case KernelPath::avx2:
        case KernelPath::avx512: return SEEMOE_X86_KERNELS != 0;
        case KernelPath::neon: return SEEMOE_NEON_KERNELS != 0;
        default: return true;
    }
}

// Compiled in and supported by this CPU.
inline bool kernel_path_available(KernelPath path) {
    if (!kernel_path_compiled(path)) return false;
    switch (path) {
        case KernelPath::avx2: return cpu_info().avx2_fma;
        case KernelPath::avx512: return cpu_info().avx512f;
        case KernelPath::neon: return cpu_info().neon;
        default: return true;
    }
}

// Every path this build can run here, fastest first.
inline std::vector<KernelPath> available_kernel_paths() {
    std::vector<KernelPath> paths;
    for (KernelPath p : {KernelPath::avx512, KernelPath::avx2, KernelPath::neon, KernelPath::portable})
        if (kernel_path_available(p)) paths.push_back(p);
    return paths;
}

// SEEMOE_KERNEL's spelling of a path; throws naming the variable for anything else or for a path
// this build or CPU cannot run.
inline KernelPath parse_kernel_path(const std::string& name) {
    for (KernelPath p : {KernelPath::avx512, KernelPath::avx2, KernelPath::neon, KernelPath::portable}) {
        if (name != kernel_path_name(p)) continue;
        SEEMOE_CHECK(kernel_path_available(p), "SEEMOE_KERNEL=", name, ": ",
                     kernel_path_compiled(p) ? "this CPU lacks the instructions of that kernel"
                                             : "this build has no such kernel (another CPU architecture)",
                     "; unset it or use one of the available paths");
        return p;
    }
    throw Error(detail::concat("SEEMOE_KERNEL=", name, ": unknown kernel path (use avx512, avx2, neon or portable)"));
}

// The path to run: SEEMOE_KERNEL when set (non-empty), else the fastest available.
inline KernelPath kernel_path_from_environment() {
    const char* env = std::getenv("SEEMOE_KERNEL");
    if (env != nullptr && *env != '\0') return parse_kernel_path(env);
    return available_kernel_paths().front();
}

namespace detail {
// The chosen path, -1 until the first product asks.
inline std::atomic<int>& kernel_path_slot() {
    static std::atomic<int> slot{-1};
    return slot;
}
}  // namespace detail

// The path float products take now (chosen on first use, see kernel_path_from_environment).
inline KernelPath active_kernel_path() {
    int path = detail::kernel_path_slot().load(std::memory_order_relaxed);
    if (path < 0) {
        path = static_cast<int>(kernel_path_from_environment());
        detail::kernel_path_slot().store(path, std::memory_order_relaxed);
    }
    return static_cast<KernelPath>(path);
}

// Switches every later float product to `path` (tests and benchmarks; not while products run).
inline void set_kernel_path(KernelPath path) {
    SEEMOE_CHECK(kernel_path_available(path), "[set_kernel_path] the ", kernel_path_name(path),
                 " kernel is not available on this build and CPU");
    detail::kernel_path_slot().store(static_cast<int>(path), std::memory_order_relaxed);
}

// The block sizes of `path` on this machine, derived once.
inline const GemmParams& gemm_params(KernelPath path) {
    static const GemmParams params[4] = {
        detail::derive_gemm_params(KernelPath::portable, cpu_info()),
        detail::derive_gemm_params(KernelPath::avx2, cpu_info()),
        detail::derive_gemm_params(KernelPath::avx512, cpu_info()),
        detail::derive_gemm_params(KernelPath::neon, cpu_info()),
    };
    return params[static_cast<int>(path)];
}

namespace detail {

// True: every path computes sgemm_kernel and sgemm_rows (the portable one through Eigen), so
// float callers can always use them.
inline constexpr bool kSgemmKernelAvailable = true;

// Whether float products should go through sgemm_kernel/sgemm_rows rather than the caller's own
// Eigen expression (the portable path is that expression).
inline bool sgemm_kernels_active() { return active_kernel_path() != KernelPath::portable; }

// The portable path (and every double product on strided operands): Eigen's product on strided
// maps of the stored operands.
template <typename T>
void eigen_gemm(Index M, Index N, Index K, const StridedOperand<T>& a, const StridedOperand<T>& b, T* c, Index ldc,
                bool accumulate) {
    using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    using Stored = Eigen::Map<const Matrix, 0, Eigen::OuterStride<>>;
    Eigen::Map<Matrix, 0, Eigen::OuterStride<>> out(c, M, N, Eigen::OuterStride<>(ldc));
    const Stored a_stored(a.data, a.transposed ? K : M, a.transposed ? M : K, Eigen::OuterStride<>(a.ld));
    const Stored b_stored(b.data, b.transposed ? N : K, b.transposed ? K : N, Eigen::OuterStride<>(b.ld));
    auto run = [&](const auto& l, const auto& r) {
        if (accumulate) {
            out.noalias() += l * r;
        } else {
            out.noalias() = l * r;
        }
    };
    if (a.transposed) {
        if (b.transposed) {
            run(a_stored.transpose(), b_stored.transpose());
        } else {
            run(a_stored.transpose(), b_stored);
        }
    } else if (b.transposed) {
        run(a_stored, b_stored.transpose());
    } else {
        run(a_stored, b_stored);
    }
}

// C (M x N, row stride ldc) = op(A) op(B), or += when `accumulate`; op(A) is M x K, op(B) K x N.
// Runs on `path` (default: the active one).
inline void sgemm_kernel(Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b, float* c,
                         Index ldc, bool accumulate, KernelPath path) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (!accumulate)
            for (Index i = 0; i < M; ++i) std::memset(c + i * ldc, 0, sizeof(float) * static_cast<std::size_t>(N));
        return;
    }
    switch (path) {
#if SEEMOE_X86_KERNELS
        case KernelPath::avx512: avx512::sgemm(gemm_params(path), M, N, K, a, b, c, ldc, accumulate); return;
        case KernelPath::avx2: avx2::sgemm(gemm_params(path), M, N, K, a, b, c, ldc, accumulate); return;
#endif
#if SEEMOE_NEON_KERNELS
        case KernelPath::neon: neon::sgemm(gemm_params(path), M, N, K, a, b, c, ldc, accumulate); return;
#endif
        default: eigen_gemm(M, N, K, a, b, c, ldc, accumulate); return;
    }
}
inline void sgemm_kernel(Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b, float* c,
                         Index ldc, bool accumulate) {
    sgemm_kernel(M, N, K, a, b, c, ldc, accumulate, active_kernel_path());
}

// The same for float or double, on one thread: float on `path` (sgemm_kernel), double through
// Eigen whatever the path. For the many small products of callers that split the work over
// threads themselves (attention: a few products per head, the heads side by side).
template <typename T>
void strided_gemm(KernelPath path, Index M, Index N, Index K, const StridedOperand<T>& a, const StridedOperand<T>& b,
                  T* c, Index ldc, bool accumulate) {
    if constexpr (std::is_same_v<T, float>) {
        sgemm_kernel(M, N, K, a, b, c, ldc, accumulate, path);
    } else {
        (void)path;  // double has no kernels of its own
        eigen_gemm(M, N, K, a, b, c, ldc, accumulate);
    }
}

// C (M x N, row stride ldc) = A W^T, or += when `accumulate`, for a few rows M of A (lda) and W
// stored (N, K) (ldw): the matrix-vector products of generation.
inline void sgemm_rows(Index M, Index N, Index K, const float* a, Index lda, const float* w, Index ldw, float* c,
                       Index ldc, bool accumulate, KernelPath path) {
    if (M <= 0 || N <= 0) return;
    switch (path) {
#if SEEMOE_X86_KERNELS
        case KernelPath::avx512: avx512::rows(gemm_params(path), M, N, K, a, lda, w, ldw, c, ldc, accumulate); return;
        case KernelPath::avx2: avx2::rows(gemm_params(path), M, N, K, a, lda, w, ldw, c, ldc, accumulate); return;
#endif
#if SEEMOE_NEON_KERNELS
        case KernelPath::neon: neon::rows(gemm_params(path), M, N, K, a, lda, w, ldw, c, ldc, accumulate); return;
#endif
        default: eigen_gemm<float>(M, N, K, {a, lda, false}, {w, ldw, true}, c, ldc, accumulate); return;
    }
}
inline void sgemm_rows(Index M, Index N, Index K, const float* a, Index lda, const float* w, Index ldw, float* c,
                       Index ldc, bool accumulate) {
    sgemm_rows(M, N, K, a, lda, w, ldw, c, ldc, accumulate, active_kernel_path());
}

// The FP32 FMA peak loop of `path` for `seemoe bench`: independent chains of vector FMAs,
// `iterations` steps; returns a value to keep and sets `flops` to the FLOPs executed.
inline float fma_peak_loop(KernelPath path, long iterations, double& flops) {
    constexpr int kChains = 16;
    switch (path) {
#if SEEMOE_X86_KERNELS
        case KernelPath::avx512: flops = 2.0 * 16 * kChains * static_cast<double>(iterations); return avx512::fma_loop(iterations);
        case KernelPath::avx2: flops = 2.0 * 8 * kChains * static_cast<double>(iterations); return avx2::fma_loop(iterations);
#endif
#if SEEMOE_NEON_KERNELS
        case KernelPath::neon: flops = 2.0 * 4 * kChains * static_cast<double>(iterations); return neon::fma_loop(iterations);
#endif
        default: break;
    }
    // Eigen's packet of the build's own instruction set.
    using Packet = Eigen::internal::packet_traits<float>::type;
    constexpr int kLanes = Eigen::internal::packet_traits<float>::size;
    Packet acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = Eigen::internal::pset1<Packet>(0.001f * static_cast<float>(c));
    volatile float mul_value = 0.9999999f, add_value = 1e-7f;  // read once: calls cannot be folded
    const float mul_read = mul_value, add_read = add_value;
    const Packet mul = Eigen::internal::pset1<Packet>(mul_read), add = Eigen::internal::pset1<Packet>(add_read);
    for (long i = 0; i < iterations; ++i)
        for (int c = 0; c < kChains; ++c) acc[c] = Eigen::internal::pmadd(acc[c], mul, add);
    float sum = 0;
    for (int c = 0; c < kChains; ++c) sum += Eigen::internal::predux(acc[c]);
    flops = 2.0 * kLanes * kChains * static_cast<double>(iterations);
    return sum;
}

// ---- plain loops compiled for the active path's instructions ------------------------------------
//
// run_vectorized(path, body) runs body() inlined into a function compiled for AVX-512 (path
// avx512) or AVX2/FMA (avx2), whatever the build's own flags, so the compiler vectorises body's
// plain loops for those instructions; on every other path body runs as the build compiled it.
// body is a lambda marked SEEMOE_VECTOR_BODY (always inlined: it takes the instructions of the
// function it is inlined into) and should call only functions that are inlined as well, since
// an outlined call runs with the build's instructions. The compiler does not vectorise a loop
// that calls std::sqrt (it may set errno) or std::exp (a library call): sqrt_in_place below is
// the square-root pass for such loops. Results agree with the equivalent Eigen expressions to
// float rounding (the compiler may fuse a multiply and an add; Eigen's float square root is an
// approximation refined once, sqrt_in_place's is exact).
#if defined(__GNUC__) || defined(__clang__)
#define SEEMOE_VECTOR_BODY __attribute__((always_inline))
#else
#define SEEMOE_VECTOR_BODY
#endif

// Each runs a local copy of body: the copy's captured values belong to the function, so the
// compiler knows the loops' stores cannot change them. Run through the caller's closure they
// might (a float store may alias a captured float), and GCC then reloads every coefficient at
// every element and vectorises nothing.
#if SEEMOE_X86_KERNELS
template <typename Body>
__attribute__((target("avx512f,avx2,fma"))) void run_body_avx512(const Body& body) {
    Body local = body;
    local();
}
template <typename Body>
__attribute__((target("avx2,fma"))) void run_body_avx2(const Body& body) {
    Body local = body;
    local();
}
#endif

template <typename Body>
void run_vectorized(KernelPath path, const Body& body) {
    switch (path) {
#if SEEMOE_X86_KERNELS
        case KernelPath::avx512: run_body_avx512(body); return;
        case KernelPath::avx2: run_body_avx2(body); return;
#endif
        default: {
            Body local = body;
            local();
            return;
        }
    }
}

// x[0:n] = sqrt(x[0:n]) with the vector instructions of `path` (float on the x86 paths: exact;
// otherwise Eigen's square root).
template <typename T>
void sqrt_in_place(KernelPath path, T* x, Index n) {
    if constexpr (std::is_same_v<T, float>) {
        switch (path) {
#if SEEMOE_X86_KERNELS
            case KernelPath::avx512: avx512::sqrt_in_place(x, n); return;
            case KernelPath::avx2: avx2::sqrt_in_place(x, n); return;
#endif
            default: break;
        }
    }
    Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>> values(x, n);
    values = values.sqrt();
}

}  // namespace detail

}  // namespace seemoe
