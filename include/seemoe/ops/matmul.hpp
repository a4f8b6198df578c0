// seemoe/ops/matmul.hpp — matrix products: matmul (plain and batched) and linear (x W^T + b).
//
// Every product goes through detail::gemm, straight on the tensors' own buffers: a transposed
// operand is read in its stored layout, so nothing is copied. gemm cuts a big product into one
// block of the result per thread (seemoe's pool, core/parallel.hpp; Eigen's own threading stays
// off) and computes each float block with the kernel gemm_kernel.hpp picked for this CPU
// (AVX-512, AVX2/FMA or NEON), or with an Eigen product (`.noalias()`, no temporary) for double
// and on the portable path.
// A product of a few rows (one token in generation) runs as one matrix-vector product per row.
// Backward is two more GEMMs per product, accumulated straight into the parents' grads.
//
// Convention: transpose_a / transpose_b mean the LAST TWO axes of that operand are stored the
// other way round, so matmul(a, b, true) is torch.matmul(a.mT, b). Leading axes are batch axes:
// (..., M, K) x (..., K, N) with equal leading axes, or a 2-D b shared by the whole batch (then
// the batch is folded into the rows of a single GEMM whenever a is not transposed).
// linear(x, W, b) is torch.nn.functional.linear: W is (out, in), and all leading axes of x go
// through one GEMM.
//
// Shape legend: M, K, N the rows, inner size and columns of a product; N_rows all leading axes
// of a linear's input flattened together.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <memory>
#include <string>
#include <type_traits>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "gemm_kernel.hpp"

namespace seemoe {
namespace detail {

// Multiply-adds per GEMM below which a batch of GEMMs is spread over the threads one whole GEMM
// per task; bigger ones run one after the other, each split by gemm() once it has
// kGemmWorkPerThread per thread.
inline constexpr Index kSmallGemmWork = Index(1) << 17;
// Multiply-adds of a whole batch below which starting threads costs more than it saves.
inline constexpr Index kParallelBatchWork = Index(1) << 15;

// One operand of a product: a row-major (rows, cols) matrix as stored, used either as it is or
// transposed.
template <typename T>
struct GemmOperand {
    const T* data;
    Index rows, cols;  // as stored
    bool transposed;

    Index product_rows() const { return transposed ? cols : rows; }
    Index product_cols() const { return transposed ? rows : cols; }
    GemmOperand t() const { return {data, rows, cols, !transposed}; }
};

// Calls fn with the operand's map or with its transpose; both are free expressions, no copy.
template <typename T, typename Fn>
void with_gemm_operand(const GemmOperand<T>& op, Fn&& fn) {
    ConstMatrixMap<T> m(op.data, op.rows, op.cols);
    if (op.transposed) {
        fn(m.transpose());
    } else {
        fn(m);
    }
}

// Multiply-adds each thread should get before a product is split over threads: below that the
// fork and join cost more than they save.
inline constexpr Index kGemmWorkPerThread = Index(1) << 20;
// Products with fewer result rows than this run as one matrix-vector product per row.
inline constexpr Index kSmallGemmRows = 8;
// A matrix-vector product is bound by reading the matrix, not by arithmetic, and a second core
// brings a second path to the caches: splitting one pays from about this much work per thread
// (measured: a 512 x 128 product, 65k multiply-adds, is slower on two threads than on one; a
// 1536 x 512 one is 1.4x faster).
inline constexpr Index kFewRowsWorkPerThread = Index(1) << 17;

// How many threads one product of `work` multiply-adds is split over (1 inside a parallel
// region: regions never nest).
inline Index gemm_threads(Index work, Index per_thread = kGemmWorkPerThread) {
    if (in_parallel_region()) return 1;
    return std::max<Index>(1, std::min<Index>(num_threads(), work / per_thread));
}

// dst = lhs * rhs, or dst += lhs * rhs when `accumulate`; dst is row-major and contiguous.
// A big product is cut into one block of the result per thread, each computed on its thread
// alone: one fork and one join per product. (Eigen's own threading synchronises the threads with
// spin-waits after every packed panel, which collapses when the cores are shared with other
// work, so seemoe keeps it switched off; see core/parallel.hpp.) The cut goes across the bigger
// operand, so each thread packs only its share of it and the whole of the smaller one. Float
// products use the kernel path of gemm_kernel.hpp chosen for this CPU, double products Eigen.
template <typename T>
void gemm(T* dst, const GemmOperand<T>& lhs, const GemmOperand<T>& rhs, bool accumulate) {
    const Index M = lhs.product_rows(), K = lhs.product_cols(), N = rhs.product_cols();
    // Float products run on seemoe's kernel for this CPU unless the portable path (this Eigen
    // code) is chosen; the path is read once per product, so all blocks take the same one.
    const KernelPath path = std::is_same_v<T, float> ? active_kernel_path() : KernelPath::portable;
    const bool kernels = path != KernelPath::portable;
    // Rows [r0, r0 + rows) x columns [c0, c0 + cols) of the result.
    auto block = [&](Index r0, Index rows, Index c0, Index cols) {
        if constexpr (std::is_same_v<T, float>) {
            if (kernels && rows < kSmallGemmRows && rhs.transposed && !lhs.transposed) {
                sgemm_rows(rows, cols, K, lhs.data + r0 * lhs.cols, lhs.cols, rhs.data + c0 * rhs.cols, rhs.cols,
                           dst + r0 * N + c0, N, accumulate, path);
                return;
            }
            if (kernels && rows >= kSmallGemmRows) {
                // Row r0 of op(A) and column c0 of op(B), in each operand's stored layout.
                const SgemmOperand a{lhs.transposed ? lhs.data + r0 : lhs.data + r0 * lhs.cols, lhs.cols,
                                     lhs.transposed};
                const SgemmOperand b{rhs.transposed ? rhs.data + c0 * rhs.cols : rhs.data + c0, rhs.cols,
                                     rhs.transposed};
                sgemm_kernel(rows, cols, K, a, b, dst + r0 * N + c0, N, accumulate, path);
                return;
            }
        }
        if (rows < kSmallGemmRows) {
            // A few rows (a token at a time in generation): packing op(B) would cost as much as
            // the product itself, so each row is one matrix-vector product straight from op(B).
            MatrixMap<T> out(dst, M, N);
            with_gemm_operand(lhs, [&](const auto& l) {
                with_gemm_operand(rhs, [&](const auto& r) {
                    for (Index i = r0; i < r0 + rows; ++i) {
                        auto o = out.row(i).segment(c0, cols);
                        if (accumulate) {
                            o.noalias() += l.row(i) * r.middleCols(c0, cols);
                        } else {
                            o.noalias() = l.row(i) * r.middleCols(c0, cols);
                        }
                    }
                });
            });
        } else {
            MatrixMap<T> out(dst, M, N);
            with_gemm_operand(lhs, [&](const auto& l) {
                with_gemm_operand(rhs, [&](const auto& r) {
                    auto o = out.block(r0, c0, rows, cols);
                    if (accumulate) {
                        o.noalias() += l.middleRows(r0, rows) * r.middleCols(c0, cols);
                    } else {
                        o.noalias() = l.middleRows(r0, rows) * r.middleCols(c0, cols);
                    }
                });
            });
        }
    };
    const Index threads = gemm_threads(M * K * N, M < kSmallGemmRows ? kFewRowsWorkPerThread : kGemmWorkPerThread);
    if (threads <= 1) {
        block(0, M, 0, N);
        return;
    }
    const bool split_cols = N > M;  // rhs (K, N) is the bigger operand
    const Index extent = split_cols ? N : M;
    // Column blocks start on whole cache lines (16 floats) so every thread writes its own lines.
    const Index align = split_cols ? 16 : 1;
    const Index chunk = ((extent + threads - 1) / threads + align - 1) / align * align;
    parallel_for(threads, [&](Index t) {
        const Index start = std::min(extent, t * chunk), len = std::min(extent, start + chunk) - start;
        if (len <= 0) return;
        if (split_cols) {
            block(0, M, start, len);
        } else {
            block(start, len, 0, N);
        }
    });
}

// Runs body(i) for each of `batch` independent GEMMs: small ones spread over the threads when
// there are enough of them, large ones one after the other so that gemm() splits each (never
// both: no nested regions).
template <typename Body>
void for_each_gemm(Index batch, Index work_per_gemm, Body&& body) {
    if (work_per_gemm < kSmallGemmWork && batch * work_per_gemm >= kParallelBatchWork) {
        parallel_for(batch, body);
    } else {
        for (Index i = 0; i < batch; ++i) body(i);
    }
}

inline std::string transpose_note(bool transpose_a, bool transpose_b) {
    if (!transpose_a && !transpose_b) return "";
    return concat(" (transpose_a=", transpose_a ? "true" : "false",
                  ", transpose_b=", transpose_b ? "true" : "false", ")");
}

}  // namespace detail

// a (..., M, K) x b (..., K, N) -> (..., M, N); with transpose_a, a is stored (..., K, M), with
// transpose_b, b is stored (..., N, K). b is either 2-D (shared by every batch item) or has
// exactly a's leading axes.
template <typename T>
Tensor<T> matmul(const Tensor<T>& a, const Tensor<T>& b, bool transpose_a = false,
                 bool transpose_b = false) {
    const Shape& as = a.shape();
    const Shape& bs = b.shape();
    SEEMOE_CHECK(a.dim() >= 2 && b.dim() >= 2, "[matmul] needs operands with at least 2 dimensions: ",
                 shape_str(as), " x ", shape_str(bs));
    const Index nd = a.dim();
    const bool b_shared = b.dim() == 2;
    SEEMOE_CHECK(b_shared || (b.dim() == nd && std::equal(as.begin(), as.end() - 2, bs.begin())),
                 "[matmul] batch dimensions differ: ", shape_str(as), " x ", shape_str(bs),
                 " (b must be 2-D or have exactly a's leading dimensions)");
    const Index a_rows = as[nd - 2], a_cols = as[nd - 1];
    const Index b_rows = bs[b.dim() - 2], b_cols = bs.back();
    const Index M = transpose_a ? a_cols : a_rows;
    const Index K = transpose_a ? a_rows : a_cols;
    const Index N = transpose_b ? b_rows : b_cols;
    SEEMOE_CHECK(K == (transpose_b ? b_cols : b_rows), "[matmul] inner dimensions differ: ",
                 shape_str(as), " x ", shape_str(bs), detail::transpose_note(transpose_a, transpose_b));

    Shape out_shape(as.begin(), as.end() - 2);
    Index batch = 1;
    for (Index s : out_shape) batch *= s;
    out_shape.push_back(M);
    out_shape.push_back(N);
    Tensor<T> out = detail::make_op_result<T>(out_shape, "matmul", {&a, &b});  // (..., M, N)

    // A shared b with an untransposed a is one (batch*M, K) x (K, N) GEMM: fold the batch into
    // the rows. Otherwise each batch item is its own GEMM.
    const bool fold = b_shared && !transpose_a;
    const Index gemms = fold ? 1 : batch;
    const Index a_stored_rows = fold ? batch * a_rows : a_rows;
    const Index c_rows = fold ? batch * M : M;
    const Index a_step = a_rows * a_cols;
    const Index b_step = b_shared ? 0 : b_rows * b_cols;
    const Index c_step = M * N;
    const Index work = c_rows * K * N;
    {
        const T* A = a.data();
        const T* B = b.data();
        T* C = out.data();
        detail::for_each_gemm(gemms, work, [&](Index i) {
            const detail::GemmOperand<T> op_a{A + i * a_step, a_stored_rows, a_cols, transpose_a};
            const detail::GemmOperand<T> op_b{B + i * b_step, b_rows, b_cols, transpose_b};
            detail::gemm(C + i * c_step, op_a, op_b, false);
        });
    }

    auto a_node = detail::grad_target(a);
    auto b_node = detail::grad_target(b);
    // dA needs B's values and dB needs A's: keep only what backward will read.
    auto a_values = b_node ? a.storage() : nullptr;
    auto b_values = a_node ? b.storage() : nullptr;
    detail::set_backward(out, [=](Node<T>& self) {
        const T* dC = self.grad->data();
        // With C = op(A) op(B):  d op(A) = dC op(B)^T  and  d op(B) = op(A)^T dC; an operand
        // stored transposed receives the transpose of that, which swaps the factors.
        // A grad that holds nothing yet is written rather than added to (no zero fill).
        if (a_node) {
            bool overwrite = false;
            T* dA = a_node->grad_data_for_write(overwrite);
            const T* B = b_values->data();
            detail::for_each_gemm(gemms, work, [&](Index i) {
                const detail::GemmOperand<T> d_c{dC + i * c_step, c_rows, N, false};
                const detail::GemmOperand<T> op_b{B + i * b_step, b_rows, b_cols, transpose_b};
                if (transpose_a) {
                    detail::gemm(dA + i * a_step, op_b, d_c.t(), !overwrite);  // (K, M)
                } else {
                    detail::gemm(dA + i * a_step, d_c, op_b.t(), !overwrite);  // (M, K)
                }
            });
        }
        if (b_node) {
            bool overwrite = false;
            T* dB = b_node->grad_data_for_write(overwrite);
            const T* A = a_values->data();
            auto one_item = [&](Index i, bool add) {
                const detail::GemmOperand<T> d_c{dC + i * c_step, c_rows, N, false};
                const detail::GemmOperand<T> op_a{A + i * a_step, a_stored_rows, a_cols, transpose_a};
                if (transpose_b) {
                    detail::gemm(dB + i * b_step, d_c.t(), op_a, add);  // (N, K)
                } else {
                    detail::gemm(dB + i * b_step, op_a.t(), d_c, add);  // (K, N)
                }
            };
            if (b_shared) {
                // Every item adds into the same dB, so the items run one after the other.
                for (Index i = 0; i < gemms; ++i) one_item(i, !overwrite || i > 0);
                if (gemms == 0 && overwrite) std::fill_n(dB, b_rows * b_cols, T(0));
            } else {
                detail::for_each_gemm(gemms, work, [&](Index i) { one_item(i, !overwrite); });
            }
        }
    });
    return out;
}

namespace detail {

// y (rows, out) = x (rows, in) W^T + b for a weight stored (out, in) and an optional bias (nullptr:
// none), all row-major and contiguous: the forward of linear, shared with the fused MoE experts.
// The rows start from the bias and the GEMM adds onto them, one pass fewer than adding it after.
template <typename T>
void affine_rows(T* y, const T* x, Index rows, Index in, const T* weight, Index out, const T* bias) {
    const GemmOperand<T> x_op{x, rows, in, false};          // (rows, in)
    const GemmOperand<T> w_transposed{weight, out, in, true};  // (in, out)
    if (bias) {
        MatrixMap<T>(y, rows, out).rowwise() = ConstVectorMap<T>(bias, out).transpose();
        gemm(y, x_op, w_transposed, true);
    } else {
        gemm(y, x_op, w_transposed, false);
    }
}

}  // namespace detail

// torch.nn.functional.linear: x (..., in), weight (out, in), bias (out) or an undefined
// Tensor<T>() -> (..., out) = x weight^T + bias, one GEMM over all leading axes of x.
template <typename T>
Tensor<T> linear(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias = Tensor<T>()) {
    SEEMOE_CHECK(weight.dim() == 2, "[linear] weight must be 2-D (out, in), got ",
                 shape_str(weight.shape()));
    const Index out_features = weight.size(0);
    const Index in_features = weight.size(1);
    SEEMOE_CHECK(x.dim() >= 1 && x.shape().back() == in_features,
                 "[linear] input features differ: x ", shape_str(x.shape()), " vs weight (out, in) ",
                 shape_str(weight.shape()));
    const bool has_bias = bias.defined();
    if (has_bias) {
        SEEMOE_CHECK(bias.dim() == 1 && bias.size(0) == out_features, "[linear] bias ",
                     shape_str(bias.shape()), " does not match weight (out, in) ",
                     shape_str(weight.shape()));
    }
    Shape out_shape = x.shape();
    out_shape.back() = out_features;
    Tensor<T> y = has_bias
                      ? detail::make_op_result<T>(out_shape, "linear", {&x, &weight, &bias})
                      : detail::make_op_result<T>(out_shape, "linear", {&x, &weight});  // (..., out)
    Index n_rows = 1;  // all leading axes of x together
    for (Index i = 0; i + 1 < x.dim(); ++i) n_rows *= x.shape()[i];

    detail::affine_rows(y.data(), x.data(), n_rows, in_features, weight.data(), out_features,
                        has_bias ? bias.data() : nullptr);  // (N_rows, out)

    auto x_node = detail::grad_target(x);
    auto w_node = detail::grad_target(weight);
    auto b_node = has_bias ? detail::grad_target(bias) : nullptr;
    auto x_values = w_node ? x.storage() : nullptr;
    auto w_values = x_node ? weight.storage() : nullptr;
    detail::set_backward(y, [=](Node<T>& self) {
        const T* dY = self.grad->data();
        const detail::GemmOperand<T> d_y{dY, n_rows, out_features, false};  // (N_rows, out)
        // A grad that holds nothing yet is written rather than added to (no zero fill).
        bool overwrite = false;
        if (x_node) {
            // dX = dY W: (N_rows, out) x (out, in)
            const detail::GemmOperand<T> w{w_values->data(), out_features, in_features, false};
            T* dX = x_node->grad_data_for_write(overwrite);
            detail::gemm(dX, d_y, w, !overwrite);
        }
        if (w_node) {
            // dW = dY^T X: (out, N_rows) x (N_rows, in)
            const detail::GemmOperand<T> x_in{x_values->data(), n_rows, in_features, false};
            T* dW = w_node->grad_data_for_write(overwrite);
            detail::gemm(dW, d_y.t(), x_in, !overwrite);
        }
        if (b_node) {
            // db = column sums of dY, summed row by row so every add is a contiguous vector add.
            VectorMap<T> db(b_node->grad_data_for_write(overwrite), out_features);
            if (overwrite) db.setZero();
            const ConstMatrixMap<T> dy(dY, n_rows, out_features);
            for (Index r = 0; r < n_rows; ++r) db += dy.row(r).transpose();
        }
    });
    return y;
}

}  // namespace seemoe
