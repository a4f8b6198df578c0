// seemoe/ops/bf16.hpp — bfloat16 weight storage for inference: weights rounded to bf16 once,
// multiplied by float activations with float products and float sums.
//
// bf16 is the upper half of a float32: the same 8-bit exponent, 7 stored mantissa bits instead of
// 23 (a relative rounding error up to 2^-8 = 0.4%). Generation reads every weight of the decoder
// once per token and does little arithmetic with it, so its speed is the speed of reading the
// weights: half the bytes, up to twice the tokens per second. Only the storage changes: each
// weight widens back to the exact float it stands for (a 16-bit shift) before its fused
// multiply-add, so the one error is the rounding of the weights.
//
//   to_bf16(x), from_bf16(b)          one value (round to nearest even; NaN stays NaN)
//   Bf16Matrix::from(w, rows, cols)   a row-major float matrix, rounded
//   bf16_rows(N, K, a, w, ldw, c, add) c (N) (+)= W a for W (N, K) in bf16: the matrix-vector
//                                     product of one token, on the kernel path of this CPU
//                                     (ops/gemm_kernel.hpp: AVX-512, AVX2, NEON or plain C++)
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "gemm_kernel.hpp"

#if SEEMOE_X86_KERNELS
#include <immintrin.h>
#endif
#if SEEMOE_NEON_KERNELS
#include <arm_neon.h>
#endif

namespace seemoe {

// The bf16 nearest to x (ties to even); a NaN stays a (quiet) NaN.
inline std::uint16_t to_bf16(float x) {
    std::uint32_t bits;
    std::memcpy(&bits, &x, sizeof bits);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);
    bits += 0x7fffu + ((bits >> 16) & 1u);
    return static_cast<std::uint16_t>(bits >> 16);
}

// The float a bf16 stands for (exact).
inline float from_bf16(std::uint16_t b) {
    const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
    float x;
    std::memcpy(&x, &bits, sizeof x);
    return x;
}

// A row-major (rows, cols) matrix stored as bf16.
struct Bf16Matrix {
    Index rows = 0, cols = 0;
    std::vector<std::uint16_t> data;  // (rows, cols)

    static Bf16Matrix from(const float* w, Index rows, Index cols) {
        Bf16Matrix m;
        m.rows = rows, m.cols = cols;
        m.data.resize(static_cast<std::size_t>(rows * cols));
        for (std::size_t i = 0; i < m.data.size(); ++i) m.data[i] = to_bf16(w[i]);
        return m;
    }
};

namespace detail {

// c[j] (+)= sum_k a[k] w[j, k] for j < N, in plain C++ (any CPU; also each kernel's reference).
inline void bf16_rows_portable(Index N, Index K, const float* a, const std::uint16_t* w, Index ldw, float* c,
                               bool add) {
    for (Index j = 0; j < N; ++j) {
        const std::uint16_t* row = w + j * ldw;
        float s = 0;
        for (Index k = 0; k < K; ++k) s += a[k] * from_bf16(row[k]);
        c[j] = add ? c[j] + s : s;
    }
}

#if SEEMOE_X86_KERNELS
// 16 (AVX-512) or 8 (AVX2) bf16 weights widened to floats: zero-extend to 32 bits, shift into the
// upper half. The kernels are compiled for their instruction set whatever the build targets
// (as in gemm_avx512.hpp), and bf16_rows calls one only where the CPU has it.
__attribute__((target("avx512f,avx2,fma"))) inline __m512 bf16_widen16(const std::uint16_t* p) {
    const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

__attribute__((target("avx2,fma"))) inline __m256 bf16_widen8(const std::uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

// Four rows of W at a time share each load of a.
__attribute__((target("avx512f,avx2,fma"))) inline void bf16_rows_avx512(Index N, Index K, const float* a,
                                                                          const std::uint16_t* w, Index ldw,
                                                                          float* c, bool add) {
    const Index k_full = K / 16 * 16;
    Index j = 0;
    for (; j + 4 <= N; j += 4) {
        const std::uint16_t* w0 = w + j * ldw;
        __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps(), s2 = _mm512_setzero_ps(), s3 = _mm512_setzero_ps();
        for (Index k = 0; k < k_full; k += 16) {
            const __m512 av = _mm512_loadu_ps(a + k);
            s0 = _mm512_fmadd_ps(av, bf16_widen16(w0 + k), s0);
            s1 = _mm512_fmadd_ps(av, bf16_widen16(w0 + ldw + k), s1);
            s2 = _mm512_fmadd_ps(av, bf16_widen16(w0 + 2 * ldw + k), s2);
            s3 = _mm512_fmadd_ps(av, bf16_widen16(w0 + 3 * ldw + k), s3);
        }
        float t[4] = {_mm512_reduce_add_ps(s0), _mm512_reduce_add_ps(s1), _mm512_reduce_add_ps(s2),
                      _mm512_reduce_add_ps(s3)};
        for (int r = 0; r < 4; ++r) {
            for (Index k = k_full; k < K; ++k) t[r] += a[k] * from_bf16(w0[r * ldw + k]);
            c[j + r] = add ? c[j + r] + t[r] : t[r];
        }
    }
    for (; j < N; ++j) {
        const std::uint16_t* row = w + j * ldw;
        __m512 s = _mm512_setzero_ps();
        for (Index k = 0; k < k_full; k += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(a + k), bf16_widen16(row + k), s);
        float t = _mm512_reduce_add_ps(s);
        for (Index k = k_full; k < K; ++k) t += a[k] * from_bf16(row[k]);
        c[j] = add ? c[j] + t : t;
    }
}

__attribute__((target("avx2,fma"))) inline float bf16_sum8(__m256 v) {
    const __m128 q = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 d = _mm_add_ps(q, _mm_movehl_ps(q, q));
    return _mm_cvtss_f32(_mm_add_ss(d, _mm_movehdup_ps(d)));
}

__attribute__((target("avx2,fma"))) inline void bf16_rows_avx2(Index N, Index K, const float* a,
                                                               const std::uint16_t* w, Index ldw, float* c,
                                                               bool add) {
    const Index k_full = K / 8 * 8;
    Index j = 0;
    for (; j + 4 <= N; j += 4) {
        const std::uint16_t* w0 = w + j * ldw;
        __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
        for (Index k = 0; k < k_full; k += 8) {
            const __m256 av = _mm256_loadu_ps(a + k);
            s0 = _mm256_fmadd_ps(av, bf16_widen8(w0 + k), s0);
            s1 = _mm256_fmadd_ps(av, bf16_widen8(w0 + ldw + k), s1);
            s2 = _mm256_fmadd_ps(av, bf16_widen8(w0 + 2 * ldw + k), s2);
            s3 = _mm256_fmadd_ps(av, bf16_widen8(w0 + 3 * ldw + k), s3);
        }
        float t[4] = {bf16_sum8(s0), bf16_sum8(s1), bf16_sum8(s2), bf16_sum8(s3)};
        for (int r = 0; r < 4; ++r) {
            for (Index k = k_full; k < K; ++k) t[r] += a[k] * from_bf16(w0[r * ldw + k]);
            c[j + r] = add ? c[j + r] + t[r] : t[r];
        }
    }
    for (; j < N; ++j) {
        const std::uint16_t* row = w + j * ldw;
        __m256 s = _mm256_setzero_ps();
        for (Index k = 0; k < k_full; k += 8) s = _mm256_fmadd_ps(_mm256_loadu_ps(a + k), bf16_widen8(row + k), s);
        float t = bf16_sum8(s);
        for (Index k = k_full; k < K; ++k) t += a[k] * from_bf16(row[k]);
        c[j] = add ? c[j] + t : t;
    }
}
#endif  // SEEMOE_X86_KERNELS

#if SEEMOE_NEON_KERNELS
inline void bf16_rows_neon(Index N, Index K, const float* a, const std::uint16_t* w, Index ldw, float* c, bool add) {
    const Index k_full = K / 4 * 4;
    for (Index j = 0; j < N; ++j) {
        const std::uint16_t* row = w + j * ldw;
        float32x4_t s = vdupq_n_f32(0.0f);
        for (Index k = 0; k < k_full; k += 4) {
            const float32x4_t wf = vreinterpretq_f32_u32(vshlq_n_u32(vmovl_u16(vld1_u16(row + k)), 16));
            s = vfmaq_f32(s, vld1q_f32(a + k), wf);
        }
        float t = vaddvq_f32(s);
        for (Index k = k_full; k < K; ++k) t += a[k] * from_bf16(row[k]);
        c[j] = add ? c[j] + t : t;
    }
}
#endif  // SEEMOE_NEON_KERNELS

}  // namespace detail

// c (N) = W a, or += when `add`, for W (N, K) stored as bf16 with rows ldw apart, on `path`.
inline void bf16_rows(Index N, Index K, const float* a, const std::uint16_t* w, Index ldw, float* c, bool add,
                      KernelPath path) {
    switch (path) {
#if SEEMOE_X86_KERNELS
        case KernelPath::avx512: detail::bf16_rows_avx512(N, K, a, w, ldw, c, add); return;
        case KernelPath::avx2: detail::bf16_rows_avx2(N, K, a, w, ldw, c, add); return;
#endif
#if SEEMOE_NEON_KERNELS
        case KernelPath::neon: detail::bf16_rows_neon(N, K, a, w, ldw, c, add); return;
#endif
        default: detail::bf16_rows_portable(N, K, a, w, ldw, c, add); return;
    }
}
inline void bf16_rows(Index N, Index K, const float* a, const std::uint16_t* w, Index ldw, float* c, bool add) {
    bf16_rows(N, K, a, w, ldw, c, add, active_kernel_path());
}

}  // namespace seemoe
