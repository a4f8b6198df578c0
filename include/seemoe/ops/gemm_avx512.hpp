// seemoe/ops/gemm_avx512.hpp — the AVX-512 float kernels (x86-64 with AVX-512F).
//
// Three kernels, chosen by ops/gemm_kernel.hpp from the shape of the product (and a square-root
// pass for the plain loops that gemm_kernel.hpp's run_vectorized compiles for AVX-512):
//   * packed (Goto / BLIS): op(B) packed kc rows deep into panels 32 columns wide, op(A) mc rows
//     at a time into panels 12 rows tall, and a micro-kernel that multiplies one A panel by one B
//     panel: 12 x 32 results in 24 of the 32 registers, two FMAs per broadcast element of A.
//     Packing transposes 16 x 16 blocks in registers; edge tiles are written with masked stores.
//     About 80-85% of the FMA peak on the seemore shapes (Eigen's own product: 55-60%).
//   * dot tiles, for a few dozen rows times a weight stored (N, K): nothing packed (one image
//     through the ViT).
//   * one row at a time times a weight stored (N, K): the matrix-vector products of generation.
// The block sizes (kc, mc, nc, the dot tile's depth, the prefetch distance) come from
// GemmParams, derived from this machine's caches; the tile shapes from the 32 registers of 16
// floats. Each output element is a plain sum over k in order within each block of kc, as
// accurate as Eigen's product (not bit-identical: the blocking differs).
//
// Convention: when the build does not target AVX-512 itself (a packaged x86-64 build), every
// function here is compiled for AVX-512 by a target region, and gemm_kernel.hpp calls into it only
// after the CPU said it has AVX-512F.
#pragma once

#include "gemm_params.hpp"

#if SEEMOE_X86_KERNELS
#include <immintrin.h>

#if !defined(__AVX512F__)
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
#endif
#endif

namespace seemoe::detail::avx512 {

inline constexpr Index kMr = 12;  // rows of a micro-tile (broadcast from packed A)
inline constexpr Index kNr = 32;  // columns of a micro-tile (two 16-float registers)

// Transposes the 16 x 16 block held in r[0..15] (row i in r[i]) in place: afterwards r[j] holds
// column j. Three rounds of in-lane unpacks and cross-lane shuffles.
inline void transpose16x16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    // u[4g + q], 128-bit lane L: rows 4g..4g+3 at column 4L + q.
    __m512 u[16];
    for (int g = 0; g < 4; ++g) {
        const __m512d a = _mm512_castps_pd(t[4 * g]), b = _mm512_castps_pd(t[4 * g + 1]);
        const __m512d c = _mm512_castps_pd(t[4 * g + 2]), d = _mm512_castps_pd(t[4 * g + 3]);
        u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    for (int q = 0; q < 4; ++q) {
        const __m512 v = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);   // lanes 0, 2 of rows 0-7
        const __m512 w = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xDD);   // lanes 1, 3 of rows 0-7
        const __m512 x = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
        const __m512 y = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xDD);
        r[q] = _mm512_shuffle_f32x4(v, x, 0x88);
        r[4 + q] = _mm512_shuffle_f32x4(w, y, 0x88);
        r[8 + q] = _mm512_shuffle_f32x4(v, x, 0xDD);
        r[12 + q] = _mm512_shuffle_f32x4(w, y, 0xDD);
    }
}

inline __mmask16 first_lanes(Index n) { return n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u); }

// Reads `count` (<= 16) stored rows of 16 consecutive values each (fewer at the end of a row:
// `len` values, the rest zero) starting at src, rows `ld` apart, and writes them transposed:
// value j of row i goes to dst[j * dst_stride + i], for j < len, with `lanes` values per
// destination row (masked store).
inline void transpose_rows(const float* src, Index ld, Index count, Index len, float* dst, Index dst_stride,
                           __mmask16 lanes) {
    __m512 r[16];
    const __mmask16 load_mask = first_lanes(len);
    for (Index i = 0; i < 16; ++i)
        r[i] = i < count ? _mm512_maskz_loadu_ps(load_mask, src + i * ld) : _mm512_setzero_ps();
    transpose16x16(r);
    for (Index j = 0; j < len; ++j) _mm512_mask_storeu_ps(dst + j * dst_stride, lanes, r[j]);
}

// Rows [i0, i0 + m) x depth [p0, p0 + kc) of op(A) -> panels of kMr rows, each stored k-major
// (kc x kMr), the last one zero-padded.
inline void pack_a(const SgemmOperand& a, Index i0, Index m, Index p0, Index kc, float* out) {
    const __mmask16 panel_lanes = first_lanes(kMr);
    for (Index ip = 0; ip < m; ip += kMr) {
        const Index rows = std::min(kMr, m - ip);
        float* panel = out + ip * kc;
        if (a.transposed) {  // stored (K, M): the kMr values of one depth step are contiguous
            const __mmask16 row_mask = first_lanes(rows);
            for (Index p = 0; p < kc; ++p) {
                const float* src = a.data + (p0 + p) * a.ld + i0 + ip;
                _mm512_mask_storeu_ps(panel + p * kMr, panel_lanes, _mm512_maskz_loadu_ps(row_mask, src));
            }
        } else {  // stored (M, K): transpose 16 depth steps of the panel's rows at a time
            const float* src = a.data + (i0 + ip) * a.ld + p0;
            for (Index p = 0; p < kc; p += 16)
                transpose_rows(src + p, a.ld, rows, std::min<Index>(16, kc - p), panel + p * kMr, kMr, panel_lanes);
        }
    }
}

// Depth [p0, p0 + kc) x columns [j0, j0 + n) of op(B) -> panels of kNr columns, each stored
// k-major (kc x kNr), the last one zero-padded.
inline void pack_b(const SgemmOperand& b, Index p0, Index kc, Index j0, Index n, float* out) {
    for (Index jp = 0; jp < n; jp += kNr) {
        const Index cols = std::min(kNr, n - jp);
        float* panel = out + jp * kc;
        if (!b.transposed) {  // stored (K, N): one depth step is a contiguous run of columns
            const __mmask16 mask0 = first_lanes(cols), mask1 = cols > 16 ? first_lanes(cols - 16) : __mmask16(0);
            for (Index p = 0; p < kc; ++p) {
                const float* src = b.data + (p0 + p) * b.ld + j0 + jp;
                float* dst = panel + p * kNr;
                _mm512_store_ps(dst, _mm512_maskz_loadu_ps(mask0, src));
                _mm512_store_ps(dst + 16, _mm512_maskz_loadu_ps(mask1, src + 16));
            }
        } else {  // stored (N, K), e.g. a Linear weight: transpose 16 columns x 16 depth steps
            for (Index half = 0; half < kNr; half += 16) {
                const Index count = std::min<Index>(16, cols - half);
                if (count <= 0) {  // past the last column: padding
                    for (Index p = 0; p < kc; ++p) _mm512_store_ps(panel + p * kNr + half, _mm512_setzero_ps());
                    continue;
                }
                const float* src = b.data + (j0 + jp + half) * b.ld + p0;
                for (Index p = 0; p < kc; p += 16)
                    transpose_rows(src + p, b.ld, count, std::min<Index>(16, kc - p), panel + p * kNr + half, kNr,
                                   __mmask16(0xFFFF));
            }
        }
    }
}

// C[0:m, 0:n] (row stride ldc) = (or +=, when add) a_panel (kc x kMr)^T b_panel (kc x kNr).
inline void micro_kernel(Index kc, const float* a_panel, const float* b_panel, float* c, Index ldc, Index m,
                         Index n, bool add) {
    __m512 acc[kMr][2];
    for (Index r = 0; r < kMr; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (Index p = 0; p < kc; ++p) {
        const __m512 b0 = _mm512_load_ps(b_panel + p * kNr);
        const __m512 b1 = _mm512_load_ps(b_panel + p * kNr + 16);
        const float* a = a_panel + p * kMr;
        for (Index r = 0; r < kMr; ++r) {
            const __m512 av = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(av, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(av, b1, acc[r][1]);
        }
    }
    const __mmask16 mask0 = n >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1u);
    const __mmask16 mask1 = n >= 32 ? __mmask16(0xFFFF) : n <= 16 ? __mmask16(0) : __mmask16((1u << (n - 16)) - 1u);
    for (Index r = 0; r < m; ++r) {
        float* row = c + r * ldc;
        __m512 v0 = acc[r][0], v1 = acc[r][1];
        if (add) {
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(mask0, row), v0);
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(mask1, row + 16), v1);
        }
        _mm512_mask_storeu_ps(row, mask0, v0);
        _mm512_mask_storeu_ps(row + 16, mask1, v1);
    }
}

// ---- few rows times a weight stored (N, K): dot products, nothing packed ---------------------
//
// With a handful of rows (one image in the ViT, a short prompt) packing op(B) = W^T costs as much
// as the product: every weight is transposed to be used a few dozen times. Here C[i, j] is the
// dot product of row i of A and row j of W, both contiguous along k: a tile of kDotRows x
// kDotCols dot products keeps 16-wide partial sums in 24 registers and reduces them at the end,
// 16 at a time (sum16). Measured on 37 x 512 x 1536 (one image through the seemore ViT): 180
// GFLOP/s on one core, against 69 before the register and reduction fixes below.

inline constexpr Index kDotRows = 4;
inline constexpr Index kDotCols = 6;

// v[j] holds 16 partial sums of result j (j < 16); returns the vector of the 16 totals. Four
// rounds of pairwise adds, each halving the partial sums per result.
inline __m512 sum16(__m512 v[16]) {
    __m512 b[8], c[4], d[2];
    for (int i = 0; i < 8; ++i)  // b[i], in each 128-bit lane: v[2i] at 0, 2 and v[2i+1] at 1, 3
        b[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    for (int i = 0; i < 4; ++i)  // c[i], in each 128-bit lane: v[4i + m] at m
        c[i] = _mm512_add_ps(_mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(b[2 * i], b[2 * i + 1], 0xEE));
    for (int i = 0; i < 2; ++i)  // d[i]: lanes (0+1, 2+3) of c[2i], then of c[2i+1]
        d[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(d[0], d[1], 0x88), _mm512_shuffle_f32x4(d[0], d[1], 0xDD));
}

// Makes the compiler hold v in a register. Left alone, GCC folds each W load into every FMA that
// uses it (one load per FMA instead of one per kDotRows FMAs), and the kernel then runs at the
// speed of the load port: half the speed measured with this barrier.
inline void keep_in_register(__m512& v) {
#if defined(__GNUC__)
    asm("" : "+v"(v));
#else
    (void)v;
#endif
}

// C[0:rows, 0:cols] (+)= A[0:rows, :] W[0:cols, :]^T over k in [0, K); rows <= kDotRows,
// cols <= kDotCols, A rows lda apart, W rows ldw apart. Every loop is unrolled in full so that
// the accumulators live in registers (with a loop left rolled, GCC keeps acc in memory and
// stores all 24 of them at every step). Each step with k in [pf_begin, pf_end) also prefetches
// one line of each of the kDotCols rows of W at next_w (ldw apart).
template <int rows, int cols>
inline void dot_tile(Index K, const float* a, Index lda, const float* w, Index ldw, float* c, Index ldc, bool add,
                     const float* next_w, Index pf_begin, Index pf_end) {
    __m512 acc[rows][cols];
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < cols; ++j) acc[r][j] = _mm512_setzero_ps();
    // Each step loads the rows' 16 values of A once and each W row once; the last step reads
    // only the lanes left (masked loads give zeros beyond K).
    Index k = 0;
    for (; k + 16 <= K; k += 16) {
        __m512 wv[cols];
#pragma GCC unroll 8
        for (int j = 0; j < cols; ++j) {
            wv[j] = _mm512_loadu_ps(w + j * ldw + k);
            keep_in_register(wv[j]);
        }
        if (k >= pf_begin && k < pf_end) {  // a line of each of the next W rows (see dot_kernel)
#pragma GCC unroll 8
            for (int j = 0; j < kDotCols; ++j)
                _mm_prefetch(reinterpret_cast<const char*>(next_w + j * ldw + k), _MM_HINT_NTA);
        }
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) {
            const __m512 av = _mm512_loadu_ps(a + r * lda + k);
#pragma GCC unroll 8
            for (int j = 0; j < cols; ++j) acc[r][j] = _mm512_fmadd_ps(av, wv[j], acc[r][j]);
        }
    }
    if (k < K) {
        const __mmask16 tail = first_lanes(K - k);
        __m512 wv[cols];
#pragma GCC unroll 8
        for (int j = 0; j < cols; ++j) wv[j] = _mm512_maskz_loadu_ps(tail, w + j * ldw + k);
#pragma GCC unroll 8
        for (int r = 0; r < rows; ++r) {
            const __m512 av = _mm512_maskz_loadu_ps(tail, a + r * lda + k);
#pragma GCC unroll 8
            for (int j = 0; j < cols; ++j) acc[r][j] = _mm512_fmadd_ps(av, wv[j], acc[r][j]);
        }
    }
    // Sum each accumulator's 16 lanes, 16 accumulators at a time (sum16: a few shuffles per
    // result rather than a full reduction each), into sums[r * cols + j].
    constexpr int n = rows * cols, groups = (n + 15) / 16;
    alignas(64) float sums[16 * groups];
#pragma GCC unroll 2
    for (int g = 0; g < groups; ++g) {
        __m512 v[16];
#pragma GCC unroll 16
        for (int i = 0; i < 16; ++i) v[i] = 16 * g + i < n ? acc[(16 * g + i) / cols][(16 * g + i) % cols] : _mm512_setzero_ps();
        _mm512_store_ps(sums + 16 * g, sum16(v));
    }
#pragma GCC unroll 8
    for (int r = 0; r < rows; ++r)
#pragma GCC unroll 8
        for (int j = 0; j < cols; ++j) c[r * ldc + j] = add ? c[r * ldc + j] + sums[r * cols + j] : sums[r * cols + j];
}

// Dispatches a tile of any size up to kDotRows x kDotCols to its compiled shape.
template <int rows>
inline void dot_tile_rows(Index cols, Index K, const float* a, Index lda, const float* w, Index ldw, float* c,
                          Index ldc, bool add, const float* next_w, Index pf_begin, Index pf_end) {
    switch (cols) {
        case 1: dot_tile<rows, 1>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
        case 2: dot_tile<rows, 2>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
        case 3: dot_tile<rows, 3>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
        case 4: dot_tile<rows, 4>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
        case 5: dot_tile<rows, 5>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
        default: dot_tile<rows, 6>(K, a, lda, w, ldw, c, ldc, add, next_w, pf_begin, pf_end); break;
    }
}

// C (M x N) (+)= A (M x K, row-major, lda) W^T with W stored (N, K) row-major (ldw).
inline void dot_kernel(Index M, Index N, Index K, const float* a, Index lda, const float* w, Index ldw, float* c,
                       Index ldc, bool add, Index dot_kc) {
    // Depth in blocks of dot_kc, so that a tile's rows of A and W (4 + 6 rows of dot_kc floats;
    // 40 KB of the 48 KB L1 on Zen 5) stay in L1 while the tile is worked on.
    for (Index k0 = 0; k0 < K; k0 += dot_kc) {
        const Index kc = std::min(dot_kc, K - k0);
        const bool acc = add || k0 > 0;
        for (Index j = 0; j < N; j += kDotCols) {
            const Index cols = std::min(kDotCols, N - j);
            // While a column of tiles is worked on, its row tiles prefetch the next column's
            // kDotCols rows of W, each tile a share of the depth, so that few requests are in
            // flight at once. With W in memory (the ViT's weights, read once per caption) the
            // product then waits for no load. Non-temporal: those weights pass through without
            // pushing out of the caches what stays hot between calls (the decoder's). Measured on
            // a caption, 2 threads: encode 3.5 -> 3.0 ms (one thread 5.6 -> 4.5 ms).
            const float* next_w = j + 2 * kDotCols <= N ? w + (j + kDotCols) * ldw + k0 : nullptr;
            const Index tiles = (M + kDotRows - 1) / kDotRows;
            for (Index i = 0; i < M; i += kDotRows) {
                const Index rows = std::min(kDotRows, M - i);
                const Index tile = i / kDotRows;  // prefetches depth [pf_begin, pf_end), none without next_w
                const Index pf_begin = kc * tile / tiles / 16 * 16;
                const Index pf_end = next_w ? (kc * (tile + 1) / tiles + 15) / 16 * 16 : 0;
                const float* ai = a + i * lda + k0;
                const float* wj = w + j * ldw + k0;
                float* cij = c + i * ldc + j;
                switch (rows) {
                    case 1: dot_tile_rows<1>(cols, kc, ai, lda, wj, ldw, cij, ldc, acc, next_w, pf_begin, pf_end); break;
                    case 2: dot_tile_rows<2>(cols, kc, ai, lda, wj, ldw, cij, ldc, acc, next_w, pf_begin, pf_end); break;
                    case 3: dot_tile_rows<3>(cols, kc, ai, lda, wj, ldw, cij, ldc, acc, next_w, pf_begin, pf_end); break;
                    default: dot_tile_rows<4>(cols, kc, ai, lda, wj, ldw, cij, ldc, acc, next_w, pf_begin, pf_end); break;
                }
            }
        }
    }
}

// ---- one row (or a few) times a weight stored (N, K): the generation path ---------------------
//
// With a single token per step every weight is read once per product, so the product is bound by
// streaming W from the caches or memory, not by arithmetic. W is walked four rows at a time, each
// row in storage order: one load of a serves four independent FMA chains, and four streams are in
// flight at once. Each row's dot product is kept as 16 partial sums in a register; the registers
// of 16 rows are then summed across lanes together (sum16): a few shuffles per result instead of
// a full reduction for each one. Measured on one core, fc1 then fc2 of a 128 -> 512 -> 128 expert,
// against one row at a time: 6.5 -> 5.3 us with W in L2, 20.4 -> 13.4 us with W in memory (when
// the memory bandwidth is not taken by other work on the machine; when it is, both are at ~20).

// Ask for the line `ahead` floats further on (GemmParams::prefetch_floats, a sixth of L1: 8 KB
// on a 48 KB L1): the hardware prefetchers alone keep too few lines in flight when W comes from
// memory. Prefetches never fault, so running past the end of W is harmless.
inline void prefetch_ahead(const float* p, Index ahead) {
    _mm_prefetch(reinterpret_cast<const char*>(p + ahead), _MM_HINT_T0);
}

// acc[0:G] = 16 partial sums each of a[0:K] . W[r, 0:K] for the G rows r of W at w, ldw apart.
template <int G>
inline void row_group(Index K, const float* a, const float* w, Index ldw, __m512* acc, Index ahead) {
    __m512 sum[G];
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) sum[r] = _mm512_setzero_ps();
    const Index k_full = K / 16 * 16;
    for (Index k = 0; k < k_full; k += 16) {
        const __m512 av = _mm512_loadu_ps(a + k);
#pragma GCC unroll 4
        for (int r = 0; r < G; ++r) {
            prefetch_ahead(w + r * ldw + k, ahead);
            sum[r] = _mm512_fmadd_ps(av, _mm512_loadu_ps(w + r * ldw + k), sum[r]);
        }
    }
    if (k_full < K) {  // the last few k: masked loads give zeros beyond K
        const __mmask16 tail = first_lanes(K - k_full);
        const __m512 av = _mm512_maskz_loadu_ps(tail, a + k_full);
#pragma GCC unroll 4
        for (int r = 0; r < G; ++r)
            sum[r] = _mm512_fmadd_ps(av, _mm512_maskz_loadu_ps(tail, w + r * ldw + k_full), sum[r]);
    }
#pragma GCC unroll 4
    for (int r = 0; r < G; ++r) acc[r] = sum[r];
}

// c[0:cols] (+)= a[0:K] . W[j, 0:K] for the `cols` (<= 16) rows of W starting at w, ldw apart.
inline void row_times_block(Index K, const float* a, const float* w, Index ldw, Index cols, float* c, bool add,
                            Index ahead) {
    __m512 acc[16];
    Index j = 0;
    for (; j + 4 <= cols; j += 4) row_group<4>(K, a, w + j * ldw, ldw, acc + j, ahead);
    for (; j < cols; ++j) row_group<1>(K, a, w + j * ldw, ldw, acc + j, ahead);
    for (; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    __m512 total = sum16(acc);
    const __mmask16 out = first_lanes(cols);
    if (add) total = _mm512_add_ps(total, _mm512_maskz_loadu_ps(out, c));
    _mm512_mask_storeu_ps(c, out, total);
}

// C (M x N) (+)= A (M x K, lda) W^T, W stored (N, K) (ldw), for a handful of rows M: each block
// of 16 rows of W is multiplied by every row of A while it sits in L1.
inline void rows_kernel(Index M, Index N, Index K, const float* a, Index lda, const float* w, Index ldw, float* c,
                        Index ldc, bool add, Index ahead) {
    for (Index j = 0; j < N; j += 16) {
        const Index cols = std::min<Index>(16, N - j);
        for (Index i = 0; i < M; ++i) row_times_block(K, a + i * lda, w + j * ldw, ldw, cols, c + i * ldc + j, add, ahead);
    }
}

// C (M x N, row stride ldc) = op(A) op(B), or += when `accumulate`, with the packed kernel;
// M, N, K > 0.
inline void packed(const GemmParams& gp, Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b,
                   float* c, Index ldc, bool accumulate) {
    const Index nc_max = std::min(N, gp.nc);
    float* b_packed = b_scratch().get(gp.kc * ((nc_max + kNr - 1) / kNr * kNr));
    float* a_packed = a_scratch().get(gp.kc * ((std::min(M, gp.mc) + kMr - 1) / kMr * kMr));
    for (Index j0 = 0; j0 < N; j0 += gp.nc) {
        const Index nc = std::min(gp.nc, N - j0);
        for (Index p0 = 0; p0 < K; p0 += gp.kc) {
            const Index kc = std::min(gp.kc, K - p0);
            const bool add = accumulate || p0 > 0;
            pack_b(b, p0, kc, j0, nc, b_packed);
            for (Index i0 = 0; i0 < M; i0 += gp.mc) {
                const Index mc = std::min(gp.mc, M - i0);
                pack_a(a, i0, mc, p0, kc, a_packed);
                for (Index j = 0; j < nc; j += kNr) {
                    const Index n = std::min(kNr, nc - j);
                    for (Index i = 0; i < mc; i += kMr) {
                        micro_kernel(kc, a_packed + i * kc, b_packed + j * kc, c + (i0 + i) * ldc + j0 + j, ldc,
                                     std::min(kMr, mc - i), n, add);
                    }
                }
            }
        }
    }
}

// Below this many rows, a product with a weight stored (N, K) skips packing (dot_kernel).
inline constexpr Index kDotMaxRows = 64;

// C (M x N, ldc) (+)= op(A) op(B), any M, N, K >= 0: the dot tiles for a few rows times a stored
// (N, K) weight, the packed kernel otherwise.
inline void sgemm(const GemmParams& gp, Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b,
                  float* c, Index ldc, bool accumulate) {
    if (M < kDotMaxRows && b.transposed && !a.transposed) {
        dot_kernel(M, N, K, a.data, a.ld, b.data, b.ld, c, ldc, accumulate, gp.dot_kc);
    } else {
        packed(gp, M, N, K, a, b, c, ldc, accumulate);
    }
}

// C (M x N, ldc) (+)= A W^T for a few rows of A (lda) and W stored (N, K) (ldw).
inline void rows(const GemmParams& gp, Index M, Index N, Index K, const float* a, Index lda, const float* w,
                 Index ldw, float* c, Index ldc, bool accumulate) {
    rows_kernel(M, N, K, a, lda, w, ldw, c, ldc, accumulate, gp.prefetch_floats);
}

// x[0:n] = sqrt(x[0:n]), correctly rounded: the square-root pass of the plain loops that
// run_vectorized compiles for AVX-512 (gemm_kernel.hpp; the compiler cannot vectorise std::sqrt).
inline void sqrt_in_place(float* x, Index n) {
    Index i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_sqrt_ps(_mm512_loadu_ps(x + i)));
    if (i < n) {
        const __mmask16 tail = first_lanes(n - i);
        _mm512_mask_storeu_ps(x + i, tail, _mm512_sqrt_ps(_mm512_maskz_loadu_ps(tail, x + i)));
    }
}

// `chains` independent chains of 16-float FMAs, `iterations` steps each: the FMA peak loop of
// `seemoe bench`. Returns a sum so the loop cannot be dropped; 32 FLOPs per chain and step.
inline float fma_loop(long iterations) {
    constexpr int kChains = 16;
    __m512 acc[kChains];
    for (int c = 0; c < kChains; ++c) acc[c] = _mm512_set1_ps(0.001f * static_cast<float>(c));
    // x = x * 0.9999999 + 1e-7 stays near its start: no overflow, no denormals.
    // The constants are read through volatile, so two calls cannot be folded into one.
    volatile float mul_value = 0.9999999f, add_value = 1e-7f;
    const __m512 mul = _mm512_set1_ps(mul_value), add = _mm512_set1_ps(add_value);
    for (long i = 0; i < iterations; ++i)
#pragma GCC unroll 16
        for (int c = 0; c < kChains; ++c) acc[c] = _mm512_fmadd_ps(acc[c], mul, add);
    float sum = 0;
    for (int c = 0; c < kChains; ++c) sum += _mm512_reduce_add_ps(acc[c]);
    return sum;
}

}  // namespace seemoe::detail::avx512

#if !defined(__AVX512F__)
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#endif  // SEEMOE_X86_KERNELS
