// seemoe/ops/functional.hpp — the fused, numerically careful ops of a transformer:
// softmax, log_softmax, cross_entropy, layer_norm and dropout.
//
// Each is one graph node with a hand-written backward, never a composition of smaller ops:
// softmax subtracts the row max before exp, cross_entropy is log_softmax + NLL in one pass (its
// backward is softmax - one_hot), layer_norm saves the mean and 1/std of each row. The backward
// closures keep what they need (the input values, those per-row statistics, the dropout mask),
// never the output handle.
//
// Convention: "rows" are everything but the normalised axis. Work is split into blocks of rows
// whose size depends only on the tensor shape (never on the thread count), and sums across
// blocks are added in block order, so results are the same with any number of threads.
//
// Legend: N rows (all leading dims flattened), C channels, V vocabulary.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace seemoe {

namespace detail {

// A block of about this many values is worth one parallel task.
constexpr Index kFunctionalBlockElements = Index(1) << 14;

// `rows` rows of `cols` values each, cut into `count` blocks of `size` rows.
struct RowBlocks {
    Index size, count;
};
inline RowBlocks row_blocks(Index rows, Index cols) {
    const Index size = std::max<Index>(1, kFunctionalBlockElements / std::max<Index>(cols, 1));
    return {size, (rows + size - 1) / size};
}

// Calls body(block, first_row, end_row) for every block, in parallel when there are several.
template <typename Body>
void for_row_blocks(Index rows, Index cols, Body&& body) {
    const RowBlocks blocks = row_blocks(rows, cols);
    parallel_for(blocks.count, [&](Index block) {
        const Index first = block * blocks.size;
        body(block, first, std::min(rows, first + blocks.size));
    });
}

// Softmax or log-softmax along the middle axis of an (outer, size, inner) view of x.
template <typename T>
void softmax_forward(const T* x, T* y, const AxisSplit& s, bool log) {
    if (s.outer * s.size * s.inner == 0) return;
    if (s.inner == 1) {
        // The usual case, the last axis: every row is contiguous.
        for_row_blocks(s.outer, s.size, [&](Index, Index first, Index end) {
            for (Index r = first; r < end; ++r) {
                const auto xr = ConstVectorMap<T>(x + r * s.size, s.size).array();
                auto yr = VectorMap<T>(y + r * s.size, s.size).array();
                const T row_max = xr.maxCoeff();
                yr = (xr - row_max).exp();
                const T total = yr.sum();
                if (log) {
                    yr = xr - (row_max + std::log(total));
                } else {
                    yr /= total;
                }
            }
        });
        return;
    }
    // An inner axis: each outer slice is a (size, inner) matrix normalised down its columns,
    // which keeps the loops contiguous (vectorised across inner).
    using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;
    for_row_blocks(s.outer, s.size * s.inner, [&](Index, Index first, Index end) {
        for (Index o = first; o < end; ++o) {
            const auto xs = ConstMatrixMap<T>(x + o * s.size * s.inner, s.size, s.inner).array();
            auto ys = MatrixMap<T>(y + o * s.size * s.inner, s.size, s.inner).array();
            const RowArray col_max = xs.colwise().maxCoeff();
            ys = (xs.rowwise() - col_max).exp();
            const RowArray total = ys.colwise().sum();
            if (log) {
                ys = xs.rowwise() - (col_max + total.log());
            } else {
                ys.rowwise() /= total;
            }
        }
    });
}

// dx += y * (dy - sum(dy * y))        for softmax      (y = softmax(x))
// dx += dy - exp(y) * sum(dy)         for log_softmax  (y = log_softmax(x))
template <typename T>
void softmax_backward(const T* y, const T* dy, T* dx, const AxisSplit& s, bool log) {
    if (s.outer * s.size * s.inner == 0) return;
    if (s.inner == 1) {
        for_row_blocks(s.outer, s.size, [&](Index, Index first, Index end) {
            for (Index r = first; r < end; ++r) {
                const auto yr = ConstVectorMap<T>(y + r * s.size, s.size).array();
                const auto dyr = ConstVectorMap<T>(dy + r * s.size, s.size).array();
                auto dxr = VectorMap<T>(dx + r * s.size, s.size).array();
                if (log) {
                    dxr += dyr - yr.exp() * dyr.sum();
                } else {
                    dxr += yr * (dyr - (dyr * yr).sum());
                }
            }
        });
        return;
    }
    using RowArray = Eigen::Array<T, 1, Eigen::Dynamic>;
    for_row_blocks(s.outer, s.size * s.inner, [&](Index, Index first, Index end) {
        for (Index o = first; o < end; ++o) {
            const Index offset = o * s.size * s.inner;
            const auto ys = ConstMatrixMap<T>(y + offset, s.size, s.inner).array();
            const auto dys = ConstMatrixMap<T>(dy + offset, s.size, s.inner).array();
            auto dxs = MatrixMap<T>(dx + offset, s.size, s.inner).array();
            if (log) {
                const RowArray dy_sum = dys.colwise().sum();
                dxs += dys - ys.exp().rowwise() * dy_sum;
            } else {
                const RowArray dot = (dys * ys).colwise().sum();
                dxs += ys * (dys.rowwise() - dot);
            }
        }
    });
}

template <typename T>
Tensor<T> softmax_op(const Tensor<T>& a, Index axis, bool log, const char* op) {
    SEEMOE_CHECK(a.dim() >= 1, "[", op, "] needs at least one dimension, got shape ",
                 shape_str(a.shape()));
    SEEMOE_CHECK(axis >= -a.dim() && axis < a.dim(), "[", op, "] axis ", axis,
                 " is out of range for shape ", shape_str(a.shape()));
    const AxisSplit split = split_at_axis(a.shape(), normalize_axis(axis, a.dim(), op));
    Tensor<T> out = make_op_result<T>(a.shape(), op, {&a});  // same shape as a
    softmax_forward(a.data(), out.data(), split, log);
    out.node()->backward_reads_value = true;
    set_backward(out, [a_node = grad_target(a), split, log](Node<T>& self) {
        if (!a_node) return;
        // Both gradients are functions of the output alone, so the input values are not kept.
        softmax_backward(self.value->data(), self.grad->data(), a_node->grad_data(), split, log);
    });
    return out;
}

// keep[i] = 1 with probability 1 - p, one uniform draw per element in order: the dropout mask
// (shared by dropout and the fused MoE experts, so both consume the Rng identically).
inline void draw_dropout_keep(unsigned char* keep, Index n, double p, Rng& rng) {
    // rng.uniform() >= p, decided on the 53 random bits directly: uniform() is bits * 2^-53
    // exactly, so it is >= p exactly when bits >= ceil(p * 2^53) (the same masks, no int->double).
    const double scaled = std::ceil(p * 0x1.0p53);
    const std::uint64_t threshold = scaled >= 0x1.0p53 ? (std::uint64_t(1) << 53) : static_cast<std::uint64_t>(scaled);
    for (Index i = 0; i < n; ++i) keep[i] = (rng.next_u64() >> 11) >= threshold ? 1 : 0;
}

}  // namespace detail

// exp(a) / sum(exp(a)) along `axis` (any axis; the last is the fast path).
template <typename T>
Tensor<T> softmax(const Tensor<T>& a, Index axis = -1) {
    return detail::softmax_op(a, axis, /*log=*/false, "softmax");
}

// a - logsumexp(a) along `axis`: the log of softmax without its underflow.
template <typename T>
Tensor<T> log_softmax(const Tensor<T>& a, Index axis = -1) {
    return detail::softmax_op(a, axis, /*log=*/true, "log_softmax");
}

// Mean negative log-likelihood of `targets` under softmax(logits) over the last axis, like
// F.cross_entropy: logits (..., V), one target class per row (row-major order of the leading
// dims). Rows whose target equals ignore_index add nothing and are not counted; when every row
// is ignored the loss is 0 (torch gives nan) and all gradients are 0.
// label_smoothing = e in [0, 1) trains against (1 - e) one_hot(target) + e / V instead of the
// one-hot target, as F.cross_entropy(label_smoothing=e): per counted row
//   loss = logsumexp(x) - (1 - e) x[target] - e mean(x),
//   d loss / d x = softmax(x) - (1 - e) one_hot(target) - e / V.
template <typename T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const std::vector<Index>& targets,
                        Index ignore_index = kIgnoreIndex, double label_smoothing = 0.0) {
    SEEMOE_CHECK(logits.dim() >= 1 && logits.size(-1) >= 1,
                 "[cross_entropy] logits need a non-empty class axis, got shape ",
                 shape_str(logits.shape()));
    SEEMOE_CHECK(label_smoothing >= 0.0 && label_smoothing < 1.0,
                 "[cross_entropy] label_smoothing must be in [0, 1), got ", label_smoothing);
    const Index V = logits.size(-1);
    const Index N = logits.numel() / V;
    SEEMOE_CHECK(static_cast<Index>(targets.size()) == N, "[cross_entropy] ", targets.size(),
                 " targets for logits of shape ", shape_str(logits.shape()), " (need ", N, ")");
    Index count = 0;
    for (Index r = 0; r < N; ++r) {
        const Index t = targets[r];
        if (t == ignore_index) continue;
        SEEMOE_CHECK(t >= 0 && t < V, "[cross_entropy] target ", t, " at row ", r,
                     " is out of range for logits of shape ", shape_str(logits.shape()),
                     " (classes 0..", V - 1, ", ignore_index ", ignore_index, ")");
        ++count;
    }
    const T eps = static_cast<T>(label_smoothing);

    // Per row: logsumexp (kept for backward) and loss = logsumexp - (1-e) logit[target] - e mean.
    const T* x = logits.data();
    std::vector<T> row_logsumexp(static_cast<std::size_t>(N));  // (N)
    const detail::RowBlocks blocks = detail::row_blocks(N, V);
    std::vector<double> block_loss(static_cast<std::size_t>(blocks.count), 0.0);
    detail::for_row_blocks(N, V, [&](Index block, Index first, Index end) {
        double loss = 0.0;  // summed in double: many float rows lose digits otherwise
        for (Index r = first; r < end; ++r) {
            const auto xr = ConstVectorMap<T>(x + r * V, V).array();
            const T row_max = xr.maxCoeff();
            const T lse = row_max + std::log((xr - row_max).exp().sum());
            row_logsumexp[r] = lse;
            if (targets[r] == ignore_index) continue;
            loss += static_cast<double>(lse - xr[targets[r]]);
            if (eps != T(0)) loss += static_cast<double>(eps * (xr[targets[r]] - xr.mean()));
        }
        block_loss[block] = loss;
    });
    double total = 0.0;
    for (double l : block_loss) total += l;

    Tensor<T> out = detail::make_op_result<T>({}, "cross_entropy", {&logits});  // () scalar
    out.data()[0] = count > 0 ? static_cast<T>(total / static_cast<double>(count)) : T(0);
    if (out.requires_grad()) {
        detail::set_backward(out, [logits_node = detail::grad_target(logits),
                                   values = logits.storage(),
                                   row_logsumexp = std::move(row_logsumexp), targets, ignore_index,
                                   V, N, count, eps](Node<T>& self) {
            if (!logits_node || count == 0) return;
            // d loss / d logits = (softmax(row) - (1-e) one_hot(target) - e/V) / count for
            // counted rows.
            const T scale = self.grad->data()[0] / static_cast<T>(count);
            const T* x = values->data();
            T* dx = logits_node->grad_data();
            detail::for_row_blocks(N, V, [&](Index, Index first, Index end) {
                for (Index r = first; r < end; ++r) {
                    const Index t = targets[r];
                    if (t == ignore_index) continue;
                    VectorMap<T>(dx + r * V, V).array() +=
                        scale * ((ConstVectorMap<T>(x + r * V, V).array() - row_logsumexp[r]).exp() -
                                 eps / static_cast<T>(V));
                    dx[r * V + t] -= scale * (T(1) - eps);
                }
            });
        });
    }
    return out;
}

// Layer normalisation over the last axis, like F.layer_norm(x, (C,), weight, bias, eps):
// y = (x - mean) / sqrt(var + eps) * weight + bias with the biased variance. weight and bias
// are (C) or undefined (Tensor<T>()), each on its own. eps is a non-deduced parameter, so a
// double literal works for float tensors.
template <typename T>
Tensor<T> layer_norm(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias,
                     typename Tensor<T>::Scalar eps = 1e-5) {
    SEEMOE_CHECK(x.dim() >= 1 && x.size(-1) >= 1,
                 "[layer_norm] input needs a non-empty last axis, got shape ", shape_str(x.shape()));
    const Index C = x.size(-1);
    const Index N = x.numel() / C;
    SEEMOE_CHECK(!weight.defined() || weight.shape() == Shape{C}, "[layer_norm] weight shape ",
                 weight.defined() ? shape_str(weight.shape()) : std::string("-"),
                 " does not match input ", shape_str(x.shape()), " (need (", C, ",))");
    SEEMOE_CHECK(!bias.defined() || bias.shape() == Shape{C}, "[layer_norm] bias shape ",
                 bias.defined() ? shape_str(bias.shape()) : std::string("-"),
                 " does not match input ", shape_str(x.shape()), " (need (", C, ",))");
    SEEMOE_CHECK(eps >= 0, "[layer_norm] eps must be >= 0, got ", eps, " for input ",
                 shape_str(x.shape()));

    std::vector<Tensor<T>> inputs{x};
    if (weight.defined()) inputs.push_back(weight);
    if (bias.defined()) inputs.push_back(bias);
    Tensor<T> out = detail::make_op_result<T>(x.shape(), "layer_norm", inputs);  // (..., C)

    std::vector<T> row_mean(static_cast<std::size_t>(N)), row_rstd(static_cast<std::size_t>(N));  // (N)
    const T* xd = x.data();
    const T* w = weight.defined() ? weight.data() : nullptr;
    const T* b = bias.defined() ? bias.data() : nullptr;
    T* yd = out.data();
    detail::for_row_blocks(N, C, [&](Index, Index first, Index end) {
        for (Index r = first; r < end; ++r) {
            const auto xr = ConstVectorMap<T>(xd + r * C, C).array();
            auto yr = VectorMap<T>(yd + r * C, C).array();
            // Two passes (mean, then the centred sum of squares) instead of E[x^2] - E[x]^2,
            // which cancels catastrophically in float when |mean| >> std.
            const T mean = xr.mean();
            yr = xr - mean;
            const T rstd = T(1) / std::sqrt(yr.square().mean() + eps);
            yr *= rstd;
            if (w) yr *= ConstVectorMap<T>(w, C).array();
            if (b) yr += ConstVectorMap<T>(b, C).array();
            row_mean[r] = mean;
            row_rstd[r] = rstd;
        }
    });

    if (!out.requires_grad()) return out;
    auto grad_node = [](const Tensor<T>& t) {
        return t.defined() ? detail::grad_target(t) : std::shared_ptr<Node<T>>();
    };
    detail::set_backward(out, [x_node = grad_node(x), w_node = grad_node(weight),
                               b_node = grad_node(bias), x_values = x.storage(),
                               w_values = weight.defined() ? weight.storage() : nullptr,
                               row_mean = std::move(row_mean), row_rstd = std::move(row_rstd), N,
                               C](Node<T>& self) {
        const T* xd = x_values->data();
        const T* w = w_values ? w_values->data() : nullptr;
        const T* dy = self.grad->data();
        bool assign = false;  // dx holds nothing yet: write it instead of adding (no zero fill)
        T* dx = x_node ? x_node->grad_data_for_write(assign) : nullptr;
        // dweight and dbias sum over all rows: each block sums its rows into its own slot,
        // then the slots are added in block order (deterministic for any thread count).
        const detail::RowBlocks blocks = detail::row_blocks(N, C);
        std::vector<T> block_dw(w_node ? static_cast<std::size_t>(blocks.count * C) : 0, T(0));
        std::vector<T> block_db(b_node ? static_cast<std::size_t>(blocks.count * C) : 0, T(0));
        detail::for_row_blocks(N, C, [&](Index block, Index first, Index end) {
            Eigen::Array<T, Eigen::Dynamic, 1> xhat(C), dxhat(C);  // (C) scratch
            for (Index r = first; r < end; ++r) {
                const auto dyr = ConstVectorMap<T>(dy + r * C, C).array();
                xhat = (ConstVectorMap<T>(xd + r * C, C).array() - row_mean[r]) * row_rstd[r];
                if (w_node) VectorMap<T>(block_dw.data() + block * C, C).array() += dyr * xhat;
                if (b_node) VectorMap<T>(block_db.data() + block * C, C).array() += dyr;
                if (!dx) continue;
                // dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = dy * w
                if (w) {
                    dxhat = dyr * ConstVectorMap<T>(w, C).array();
                } else {
                    dxhat = dyr;
                }
                const T mean_dxhat = dxhat.mean();
                const T mean_dxhat_xhat = (dxhat * xhat).mean();
                if (assign) {
                    VectorMap<T>(dx + r * C, C).array() = row_rstd[r] * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
                } else {
                    VectorMap<T>(dx + r * C, C).array() += row_rstd[r] * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat);
                }
            }
        });
        auto add_blocks = [&](const std::vector<T>& partial, Node<T>& target) {
            auto g = VectorMap<T>(target.grad_data(), C);
            for (Index block = 0; block < blocks.count; ++block)
                g += ConstVectorMap<T>(partial.data() + block * C, C);
        };
        if (w_node) add_blocks(block_dw, *w_node);
        if (b_node) add_blocks(block_db, *b_node);
    });
    return out;
}

// Inverted dropout, like F.dropout: in training each element is zeroed with probability p and
// the survivors are scaled by 1/(1-p), so evaluation needs no rescaling. Returns x itself when
// !training or p == 0; p == 1 gives zeros. The mask comes from `rng`, one draw per element in
// order, so a fixed seed gives a fixed mask; backward reuses the saved mask.
template <typename T>
Tensor<T> dropout(const Tensor<T>& x, typename Tensor<T>::Scalar p, bool training, Rng& rng) {
    SEEMOE_CHECK(p >= 0 && p <= 1, "[dropout] probability must be in [0, 1], got ", p,
                 " for input ", shape_str(x.shape()));
    if (!training || p == 0) return x;
    const Index n = x.numel();
    const T scale = p < 1 ? T(1) / (T(1) - p) : T(0);
    std::vector<unsigned char> keep(static_cast<std::size_t>(n));  // same shape as x, flattened
    detail::draw_dropout_keep(keep.data(), n, static_cast<double>(p), rng);

    Tensor<T> out = detail::make_op_result<T>(x.shape(), "dropout", {&x});  // same shape as x
    const T* xd = x.data();
    T* yd = out.data();
    for (Index i = 0; i < n; ++i) yd[i] = keep[i] ? xd[i] * scale : T(0);
    if (out.requires_grad()) {
        detail::set_backward(out, [x_node = detail::grad_target(x), keep = std::move(keep),
                                   scale](Node<T>& self) {
            if (!x_node) return;
            const Index n = self.numel();
            const T* dy = self.grad->data();
            bool assign = false;  // dx holds nothing yet: write it instead of adding
            T* dx = x_node->grad_data_for_write(assign);
            if (assign) {
                for (Index i = 0; i < n; ++i) dx[i] = keep[i] ? dy[i] * scale : T(0);
            } else {
                for (Index i = 0; i < n; ++i) dx[i] += keep[i] ? dy[i] * scale : T(0);
            }
        });
    }
    return out;
}

}  // namespace seemoe
