// seemoe/ops/gemm_avx2.hpp — the AVX2/FMA float kernels (x86-64 from Haswell / Zen 1 on).
//
// Two kernels, chosen by ops/gemm_kernel.hpp from the shape of the product:
//   * packed: the loop nest and packing of gemm_params.hpp (packed_gemm) around a 6 x 16
//     micro-kernel: 12 accumulators of 8 floats, two registers of B and one broadcast element of
//     A, 15 of the 16 registers;
//   * one row at a time times a weight stored (N, K): the matrix-vector products of generation,
//     four weight rows streamed at once, each dot product kept as 8 partial sums and reduced at
//     the end.
// Block sizes come from GemmParams (this machine's caches).
//
// Convention: when the build does not target AVX2 and FMA itself, every function here is
// compiled for them by a target region, and gemm_kernel.hpp calls into it only after the CPU said
// it has both.
#pragma once

#include <cmath>

#include "gemm_params.hpp"

#if SEEMOE_X86_KERNELS
#include <immintrin.h>

#if !(defined(__AVX2__) && defined(__FMA__))
#define SEEMOE_AVX2_TARGET_REGION 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#endif

namespace seemoe::detail::avx2 {

inline constexpr Index kMr = 6;   // rows of a micro-tile
inline constexpr Index kNr = 16;  // columns of a micro-tile (two 8-float registers)

// C[0:m, 0:n] (ldc) = (or += when add) a_panel (kc x kMr)^T b_panel (kc x kNr).
inline void micro_kernel(Index kc, const float* a_panel, const float* b_panel, float* c, Index ldc, Index m, Index n,
                         bool add) {
    __m256 acc[kMr][2];
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (Index p = 0; p < kc; ++p) {
        const __m256 b0 = _mm256_load_ps(b_panel + p * kNr);
        const __m256 b1 = _mm256_load_ps(b_panel + p * kNr + 8);
        const float* a = a_panel + p * kMr;
#pragma GCC unroll 6
        for (int r = 0; r < kMr; ++r) {
            const __m256 av = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    if (m == kMr && n == kNr) {
#pragma GCC unroll 6
        for (int r = 0; r < kMr; ++r) {
            float* row = c + r * ldc;
            __m256 v0 = acc[r][0], v1 = acc[r][1];
            if (add) {
                v0 = _mm256_add_ps(_mm256_loadu_ps(row), v0);
                v1 = _mm256_add_ps(_mm256_loadu_ps(row + 8), v1);
            }
            _mm256_storeu_ps(row, v0);
            _mm256_storeu_ps(row + 8, v1);
        }
        return;
    }
    // An edge tile: through memory, only its m x n corner stored. (Every loop over acc is unrolled
    // in full: one left rolled makes GCC keep acc in memory, stored at every depth step.)
    alignas(32) float tile[kMr * kNr];
#pragma GCC unroll 6
    for (int r = 0; r < kMr; ++r) {
        _mm256_store_ps(tile + r * kNr, acc[r][0]);
        _mm256_store_ps(tile + r * kNr + 8, acc[r][1]);
    }
    store_edge_tile(tile, kNr, c, ldc, m, n, add);
}

// The total of each of four 8-float registers, as one 4-float register.
inline __m128 sum4(__m256 a, __m256 b, __m256 c, __m256 d) {
    const __m256 ab = _mm256_hadd_ps(a, b), cd = _mm256_hadd_ps(c, d);  // pair sums per 128-bit lane
    const __m256 abcd = _mm256_hadd_ps(ab, cd);                          // a b c d, one per lane quarter
    return _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1));
}

// c[0:cols] (+)= a[0:K] . W[j, 0:K] for `cols` rows of W at w (ldw apart): four rows at a time,
// each in storage order with a prefetch `ahead` floats further on (see GemmParams).
inline void row_times_rows(Index K, const float* a, const float* w, Index ldw, Index cols, float* c, bool add,
                           Index ahead) {
    const Index k_full = K / 8 * 8;
    Index j = 0;
    for (; j + 4 <= cols; j += 4) {
        const float* w0 = w + j * ldw;
        __m256 s0 = _mm256_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
        for (Index k = 0; k < k_full; k += 8) {
            const __m256 av = _mm256_loadu_ps(a + k);
            _mm_prefetch(reinterpret_cast<const char*>(w0 + k + ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w0 + ldw + k + ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w0 + 2 * ldw + k + ahead), _MM_HINT_T0);
            _mm_prefetch(reinterpret_cast<const char*>(w0 + 3 * ldw + k + ahead), _MM_HINT_T0);
            s0 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w0 + k), s0);
            s1 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w0 + ldw + k), s1);
            s2 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w0 + 2 * ldw + k), s2);
            s3 = _mm256_fmadd_ps(av, _mm256_loadu_ps(w0 + 3 * ldw + k), s3);
        }
        alignas(16) float total[4];
        _mm_store_ps(total, sum4(s0, s1, s2, s3));
        for (Index k = k_full; k < K; ++k)  // the last few k
            for (int r = 0; r < 4; ++r) total[r] += a[k] * w0[r * ldw + k];
        for (int r = 0; r < 4; ++r) c[j + r] = add ? c[j + r] + total[r] : total[r];
    }
    for (; j < cols; ++j) {
        const float* wj = w + j * ldw;
        __m256 s = _mm256_setzero_ps();
        for (Index k = 0; k < k_full; k += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), _mm256_loadu_ps(wj + k), s);
        alignas(16) float total[4];
        _mm_store_ps(total, sum4(s, _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()));
        float t = total[0];
        for (Index k = k_full; k < K; ++k) t += a[k] * wj[k];
        c[j] = add ? c[j] + t : t;
    }
}

// C (M x N, ldc) (+)= op(A) op(B) with the packed kernel, any M, N, K >= 0 handled by the caller.
inline void sgemm(const GemmParams& gp, Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b,
                  float* c, Index ldc, bool accumulate) {
    packed_gemm(gp, M, N, K, a, b, c, ldc, accumulate, micro_kernel);
}

// C (M x N, ldc) (+)= A W^T for a few rows of A (lda) and W stored (N, K) (ldw): each block of 64
// rows of W is multiplied by every row of A while it sits in L1.
inline void rows(const GemmParams& gp, Index M, Index N, Index K, const float* a, Index lda, const float* w,
                 Index ldw, float* c, Index ldc, bool accumulate) {
    for (Index j = 0; j < N; j += 64) {
        const Index cols = std::min<Index>(64, N - j);
        for (Index i = 0; i < M; ++i)
            row_times_rows(K, a + i * lda, w + j * ldw, ldw, cols, c + i * ldc + j, accumulate, gp.prefetch_floats);
    }
}

// x[0:n] = sqrt(x[0:n]), correctly rounded: the square-root pass of the plain loops that
// run_vectorized compiles for AVX2 (gemm_kernel.hpp; the compiler cannot vectorise std::sqrt).
inline void sqrt_in_place(float* x, Index n) {
    Index i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(x + i, _mm256_sqrt_ps(_mm256_loadu_ps(x + i)));
    for (; i < n; ++i) x[i] = std::sqrt(x[i]);
}

// The FMA peak loop of `seemoe bench`: 16 chains of 8-float FMAs; 16 FLOPs per chain and step.
inline float fma_loop(long iterations) {
    constexpr int kChains = 16;
    __m256 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm256_set1_ps(0.001f * static_cast<float>(c));
    volatile float mul_value = 0.9999999f, add_value = 1e-7f;  // read once: calls cannot be folded
    const __m256 mul = _mm256_set1_ps(mul_value), add = _mm256_set1_ps(add_value);
    for (long i = 0; i < iterations; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm256_fmadd_ps(acc[c], mul, add);
    alignas(32) float lanes[8];
    float sum = 0;
    for (int c = 0; c < kChains; ++c) {
        _mm256_store_ps(lanes, acc[c]);
        for (float v : lanes) sum += v;
    }
    return sum;
}

}  // namespace seemoe::detail::avx2

#if defined(SEEMOE_AVX2_TARGET_REGION)
#undef SEEMOE_AVX2_TARGET_REGION
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#endif  // SEEMOE_X86_KERNELS
