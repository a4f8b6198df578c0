// seemoe/ops/gemm_params.hpp — what every float matrix-product kernel shares: the operand type,
// the kernel paths, the block sizes derived from the machine's caches, the packing scratch, and
// the packed (Goto / BLIS) loop nest that the AVX2 and NEON paths run their micro-kernels in.
//
// The packed product C (+)= op(A) op(B) walks op(B) in blocks of kc rows by nc columns (packed
// into panels nr columns wide) and op(A) in blocks of mc rows (packed into panels mr rows tall);
// a register-blocked micro-kernel multiplies one A panel by one B panel. The micro-tile mr x nr
// follows from the vector width and the register count of the instruction set; the blocks follow
// from the caches (derive_gemm_params):
//   kc  one B micro-panel (kc x nr floats) fills two thirds of L1, the rest holds the A
//       micro-panel and the C tile;
//   mc  the packed A block (mc x kc) takes an eighth of L2, so it stays there next to the
//       streamed B panels, the C rows and the other thread's work when a core is shared;
//   nc  the packed B block (kc x nc) takes an eighth of L3, which all cores (and in a virtual
//       machine other tenants) share.
// On the AMD EPYC (Zen 5) VM (48 KB L1d, 1 MB L2, 32 MB L3) these give the AVX-512 path kc 256,
// mc 120 and nc 4096, where the constants once tuned by hand there were 256, 144 and 4096 (mc
// between 60 and 480 measured alike within the noise of the shared machine).
//
// Convention: matrices are row-major float; "transposed" means op() reads the stored matrix
// the other way round, without copying it.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <memory>
#include <new>
#include <string>

#include "../core/common.hpp"
#include "../core/cpu.hpp"

// The x86 kernels are compiled for their instruction set even when the build targets plain
// x86-64 (a packaged build): each ISA header wraps its functions in a target region, and the CPU
// is asked at run time which one may run. GCC and Clang only.
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SEEMOE_X86_KERNELS 1
#else
#define SEEMOE_X86_KERNELS 0
#endif
#if defined(__aarch64__) && defined(__ARM_NEON)
#define SEEMOE_NEON_KERNELS 1
#else
#define SEEMOE_NEON_KERNELS 0
#endif

namespace seemoe {

// The code paths of the float products. portable is Eigen's own product (whatever vector
// instructions the build targets); the others are seemoe's kernels.
enum class KernelPath { portable, avx2, avx512, neon };

inline const char* kernel_path_name(KernelPath path) {
    switch (path) {
        case KernelPath::avx2: return "avx2";
        case KernelPath::avx512: return "avx512";
        case KernelPath::neon: return "neon";
        default: return "portable";
    }
}

// Block sizes and tile shapes of one path on this machine (see the top of the file).
struct GemmParams {
    KernelPath path = KernelPath::portable;
    Index vector_floats = 1;                       // floats per vector register
    Index mr = 0, nr = 0;                          // micro-tile of the packed kernel
    Index kc = 0, mc = 0, nc = 0;                  // blocks of the packed kernel
    Index dot_rows = 0, dot_cols = 0, dot_kc = 0;  // unpacked few-row kernel (AVX-512 only)
    Index prefetch_floats = 0;                     // how far ahead the one-row kernel prefetches each weight row
};

}  // namespace seemoe

namespace seemoe::detail {

// One operand of a product: a row-major matrix as stored (leading dimension ld), used as it is or
// transposed. The kernels take float ones (SgemmOperand); attention also builds double ones for
// Eigen's product (ops/gemm_kernel.hpp, strided_gemm).
template <typename T>
struct StridedOperand {
    const T* data;
    Index ld;
    bool transposed;
};
using SgemmOperand = StridedOperand<float>;

inline Index round_down(Index value, Index multiple) { return std::max(multiple, value / multiple * multiple); }

inline GemmParams derive_gemm_params(KernelPath path, const CpuInfo& cpu) {
    GemmParams p;
    p.path = path;
    switch (path) {
        case KernelPath::avx512:  // 32 registers of 16: 12 x 2 accumulators, 2 for B, 1 broadcast
            p.vector_floats = 16, p.mr = 12, p.nr = 32;
            p.dot_rows = 4, p.dot_cols = 6;
            break;
        case KernelPath::avx2:  // 16 registers of 8: 6 x 2 accumulators, 2 for B, 1 broadcast
            p.vector_floats = 8, p.mr = 6, p.nr = 16;
            break;
        case KernelPath::neon:  // 32 registers of 4: 8 x 3 accumulators, 3 for B, 2 for A
            p.vector_floats = 4, p.mr = 8, p.nr = 12;
            break;
        default:
            return p;
    }
    const Index floats_l1 = cpu.l1d / 4, floats_l2 = cpu.l2 / 4, floats_l3 = cpu.l3 / 4;
    p.kc = std::clamp<Index>(round_down(floats_l1 * 2 / 3 / p.nr, 16), 64, 1024);
    p.mc = std::clamp<Index>(round_down(floats_l2 / 8 / p.kc, p.mr), p.mr, 64 * p.mr);
    p.nc = std::clamp<Index>(round_down(floats_l3 / 8 / p.kc, p.nr), 8 * p.nr, 16384);
    if (p.dot_rows > 0)  // a dot tile's rows of A and W (dot_rows + dot_cols rows of dot_kc) in 5/6 of L1
        p.dot_kc = std::clamp<Index>(round_down(floats_l1 * 5 / 6 / (p.dot_rows + p.dot_cols), 16), 256, 4096);
    // The one-row kernel streams 4 weight rows at once; each keeps a sixth of L1 in flight ahead
    // of it, so the prefetched lines (two thirds of L1 in all) are still there when read.
    p.prefetch_floats = std::clamp<Index>(round_down(floats_l1 / 6, 16), 256, 8192);
    return p;
}

// Per-thread scratch for the packed blocks, 64-byte aligned, grown on demand and kept for the
// next product.
struct Scratch {
    struct Free {
        void operator()(float* p) const { ::operator delete(p, std::align_val_t{64}); }
    };
    std::unique_ptr<float, Free> buffer;
    Index capacity = 0;
    float* get(Index n) {
        if (n > capacity) {
            buffer.reset(static_cast<float*>(::operator new(sizeof(float) * static_cast<std::size_t>(n),
                                                            std::align_val_t{64})));
            capacity = n;
        }
        return buffer.get();
    }
};
inline Scratch& a_scratch() {
    thread_local Scratch s;
    return s;
}
inline Scratch& b_scratch() {
    thread_local Scratch s;
    return s;
}

// Rows [i0, i0 + m) x depth [p0, p0 + kc) of op(A) -> panels of mr rows, each stored k-major
// (kc x mr), the last one zero-padded. Plain loops: packing A is one pass per nc columns of work.
inline void pack_a_generic(const SgemmOperand& a, Index mr, Index i0, Index m, Index p0, Index kc, float* out) {
    for (Index ip = 0; ip < m; ip += mr) {
        const Index rows = std::min(mr, m - ip);
        float* panel = out + ip * kc;
        if (a.transposed) {  // stored (K, M): one depth step's rows are contiguous
            for (Index p = 0; p < kc; ++p) {
                const float* src = a.data + (p0 + p) * a.ld + i0 + ip;
                float* dst = panel + p * mr;
                for (Index r = 0; r < rows; ++r) dst[r] = src[r];
                for (Index r = rows; r < mr; ++r) dst[r] = 0.0f;
            }
        } else {  // stored (M, K): each row is read along its storage
            for (Index r = 0; r < rows; ++r) {
                const float* src = a.data + (i0 + ip + r) * a.ld + p0;
                for (Index p = 0; p < kc; ++p) panel[p * mr + r] = src[p];
            }
            for (Index r = rows; r < mr; ++r)
                for (Index p = 0; p < kc; ++p) panel[p * mr + r] = 0.0f;
        }
    }
}

// Depth [p0, p0 + kc) x columns [j0, j0 + n) of op(B) -> panels of nr columns, each stored
// k-major (kc x nr), the last one zero-padded.
inline void pack_b_generic(const SgemmOperand& b, Index nr, Index p0, Index kc, Index j0, Index n, float* out) {
    for (Index jp = 0; jp < n; jp += nr) {
        const Index cols = std::min(nr, n - jp);
        float* panel = out + jp * kc;
        if (!b.transposed) {  // stored (K, N): one depth step is a contiguous run of columns
            for (Index p = 0; p < kc; ++p) {
                const float* src = b.data + (p0 + p) * b.ld + j0 + jp;
                float* dst = panel + p * nr;
                for (Index c = 0; c < cols; ++c) dst[c] = src[c];
                for (Index c = cols; c < nr; ++c) dst[c] = 0.0f;
            }
        } else {  // stored (N, K), e.g. a Linear weight: each column is a stored row
            for (Index c = 0; c < cols; ++c) {
                const float* src = b.data + (j0 + jp + c) * b.ld + p0;
                for (Index p = 0; p < kc; ++p) panel[p * nr + c] = src[p];
            }
            for (Index c = cols; c < nr; ++c)
                for (Index p = 0; p < kc; ++p) panel[p * nr + c] = 0.0f;
        }
    }
}

// The packed loop nest. micro(kc, a_panel, b_panel, c, ldc, m, n, add) computes one m x n
// (<= mr x nr) tile of C from one packed A panel and one packed B panel. K > 0, M > 0, N > 0.
template <typename Micro>
void packed_gemm(const GemmParams& p, Index M, Index N, Index K, const SgemmOperand& a, const SgemmOperand& b,
                 float* c, Index ldc, bool accumulate, Micro&& micro) {
    const Index nc_max = std::min(N, p.nc);
    float* b_packed = b_scratch().get(p.kc * ((nc_max + p.nr - 1) / p.nr * p.nr));
    float* a_packed = a_scratch().get(p.kc * ((std::min(M, p.mc) + p.mr - 1) / p.mr * p.mr));
    for (Index j0 = 0; j0 < N; j0 += p.nc) {
        const Index nc = std::min(p.nc, N - j0);
        for (Index p0 = 0; p0 < K; p0 += p.kc) {
            const Index kc = std::min(p.kc, K - p0);
            const bool add = accumulate || p0 > 0;
            pack_b_generic(b, p.nr, p0, kc, j0, nc, b_packed);
            for (Index i0 = 0; i0 < M; i0 += p.mc) {
                const Index mc = std::min(p.mc, M - i0);
                pack_a_generic(a, p.mr, i0, mc, p0, kc, a_packed);
                for (Index j = 0; j < nc; j += p.nr)
                    for (Index i = 0; i < mc; i += p.mr)
                        micro(kc, a_packed + i * kc, b_packed + j * kc, c + (i0 + i) * ldc + j0 + j, ldc,
                              std::min(p.mr, mc - i), std::min(p.nr, nc - j), add);
            }
        }
    }
}

// Writes an accumulated mr x nr tile (row-major in `tile`) into the m x n corner of C.
inline void store_edge_tile(const float* tile, Index nr, float* c, Index ldc, Index m, Index n, bool add) {
    for (Index r = 0; r < m; ++r)
        for (Index j = 0; j < n; ++j) c[r * ldc + j] = add ? c[r * ldc + j] + tile[r * nr + j] : tile[r * nr + j];
}

}  // namespace seemoe::detail
