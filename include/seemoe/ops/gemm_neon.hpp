// seemoe/ops/gemm_neon.hpp — the NEON float kernels (AArch64: Graviton, Ampere, Apple silicon).
//
// Two kernels, chosen by ops/gemm_kernel.hpp from the shape of the product:
//   * packed: the loop nest and packing of gemm_params.hpp (packed_gemm) around an 8 x 12
//     micro-kernel: 24 accumulators of 4 floats, three registers of B and two of A (eight depth
//     values, used lane by lane with vfmaq_laneq_f32), 29 of the 32 registers;
//   * one row at a time times a weight stored (N, K): the matrix-vector products of generation,
//     four weight rows streamed at once, each dot product kept as 4 partial sums.
// Block sizes come from GemmParams (this machine's caches). Every AArch64 core has NEON, so there
// is nothing to ask the CPU.
//
// Convention: compiled only for AArch64 (SEEMOE_NEON_KERNELS).
#pragma once

#include "gemm_params.hpp"

#if SEEMOE_NEON_KERNELS
#include <arm_neon.h>

namespace seemoe::detail::neon {

inline constexpr Index kMr = 8;   // rows of a micro-tile
inline constexpr Index kNr = 12;  // columns of a micro-tile (three 4-float registers)

// C[0:m, 0:n] (ldc) = (or += when add) a_panel (kc x kMr)^T b_panel (kc x kNr).
inline void micro_kernel(Index kc, const float* a_panel, const float* b_panel, float* c, Index ldc, Index m, Index n,
                         bool add) {
    float32x4_t acc[kMr][3];
    // Every loop over acc is unrolled in full: one left rolled makes GCC keep acc in memory.
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = acc[r][2] = vdupq_n_f32(0.0f);
    for (Index p = 0; p < kc; ++p) {
        const float* bp = b_panel + p * kNr;
        const float32x4_t b0 = vld1q_f32(bp), b1 = vld1q_f32(bp + 4), b2 = vld1q_f32(bp + 8);
        const float32x4_t a_lo = vld1q_f32(a_panel + p * kMr), a_hi = vld1q_f32(a_panel + p * kMr + 4);
#define SEEMOE_NEON_ROW(r, av, lane)                              \
    acc[r][0] = vfmaq_laneq_f32(acc[r][0], b0, av, lane);         \
    acc[r][1] = vfmaq_laneq_f32(acc[r][1], b1, av, lane);         \
    acc[r][2] = vfmaq_laneq_f32(acc[r][2], b2, av, lane);
        SEEMOE_NEON_ROW(0, a_lo, 0)
        SEEMOE_NEON_ROW(1, a_lo, 1)
        SEEMOE_NEON_ROW(2, a_lo, 2)
        SEEMOE_NEON_ROW(3, a_lo, 3)
        SEEMOE_NEON_ROW(4, a_hi, 0)
        SEEMOE_NEON_ROW(5, a_hi, 1)
        SEEMOE_NEON_ROW(6, a_hi, 2)
        SEEMOE_NEON_ROW(7, a_hi, 3)
#undef SEEMOE_NEON_ROW
    }
    if (m == kMr && n == kNr) {
#pragma GCC unroll 8
        for (int r = 0; r < kMr; ++r) {
            float* row = c + r * ldc;
#pragma GCC unroll 3
            for (int q = 0; q < 3; ++q) {
                float32x4_t v = acc[r][q];
                if (add) v = vaddq_f32(vld1q_f32(row + 4 * q), v);
                vst1q_f32(row + 4 * q, v);
            }
        }
        return;
    }
    float tile[kMr * kNr];  // an edge tile: through memory, only its m x n corner stored
#pragma GCC unroll 8
    for (int r = 0; r < kMr; ++r)
#pragma GCC unroll 3
        for (int q = 0; q < 3; ++q) vst1q_f32(tile + r * kNr + 4 * q, acc[r][q]);
    store_edge_tile(tile, kNr, c, ldc, m, n, add);
}

// c[0:cols] (+)= a[0:K] . W[j, 0:K] for `cols` rows of W at w (ldw apart), four rows at a time.
inline void row_times_rows(Index K, const float* a, const float* w, Index ldw, Index cols, float* c, bool add,
                           Index ahead) {
    const Index k_full = K / 4 * 4;
    Index j = 0;
    for (; j + 4 <= cols; j += 4) {
        const float* w0 = w + j * ldw;
        float32x4_t s[4] = {vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f), vdupq_n_f32(0.0f)};
        for (Index k = 0; k < k_full; k += 4) {
            const float32x4_t av = vld1q_f32(a + k);
#pragma GCC unroll 4
            for (int r = 0; r < 4; ++r) {
                __builtin_prefetch(w0 + r * ldw + k + ahead);
                s[r] = vfmaq_f32(s[r], av, vld1q_f32(w0 + r * ldw + k));
            }
        }
        for (int r = 0; r < 4; ++r) {  // s[] stays in registers: the loop above is unrolled
            float t = vaddvq_f32(s[r]);
            for (Index k = k_full; k < K; ++k) t += a[k] * w0[r * ldw + k];
            c[j + r] = add ? c[j + r] + t : t;
        }
    }
    for (; j < cols; ++j) {
        const float* wj = w + j * ldw;
        float32x4_t s = vdupq_n_f32(0.0f);
        for (Index k = 0; k < k_full; k += 4) s = vfmaq_f32(s, vld1q_f32(a + k), vld1q_f32(wj + k));
        float t = vaddvq_f32(s);
        for (Index k = k_full; k < K; ++k) t += a[k] * wj[k];
        c[j] = add ? c[j] + t : t;
    }
}

// C (M x N, ldc) (+)= op(A) op(B) with the packed kernel; M, N, K > 0.
inline void sgemm(const GemmParams& gp, Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b,
                  float* c, Index ldc, bool accumulate) {
    packed_gemm(gp, M, N, K, a, b, c, ldc, accumulate, micro_kernel);
}

// C (M x N, ldc) (+)= A W^T for a few rows of A (lda) and W stored (N, K) (ldw).
inline void rows(const GemmParams& gp, Index M, Index N, Index K, const float* a, Index lda, const float* w,
                 Index ldw, float* c, Index ldc, bool accumulate) {
    for (Index j = 0; j < N; j += 64) {
        const Index cols = std::min<Index>(64, N - j);
        for (Index i = 0; i < M; ++i)
            row_times_rows(K, a + i * lda, w + j * ldw, ldw, cols, c + i * ldc + j, accumulate, gp.prefetch_floats);
    }
}

// The FMA peak loop of `seemoe bench`: 16 chains of 4-float FMAs; 8 FLOPs per chain and step.
inline float fma_loop(long iterations) {
    constexpr int kChains = 16;
    float32x4_t acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = vdupq_n_f32(0.001f * static_cast<float>(c));
    volatile float mul_value = 0.9999999f, add_value = 1e-7f;  // read once: calls cannot be folded
    const float32x4_t mul = vdupq_n_f32(mul_value), add = vdupq_n_f32(add_value);
    for (long i = 0; i < iterations; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = vfmaq_f32(add, acc[c], mul);
    float sum = 0;
    for (int c = 0; c < kChains; ++c) sum += vaddvq_f32(acc[c]);
    return sum;
}

}  // namespace seemoe::detail::neon

#endif  // SEEMOE_NEON_KERNELS
