// seemoe/ops/indexing.hpp — picking entries by integer index: embedding, index_select, index_add,
// gather and topk.
//
// Indices are plain std::vector<Index>, never tensors: they carry no gradient, and the ops that
// take them are differentiable only in their float inputs. Every index is checked before any work
// is done, and a bad one throws naming the op, the index, its position and the shape.
//
// Convention: picking is a copy, so its backward is a scatter-ADD — an entry picked twice
// (a token id repeated in a batch, an expert chosen by many tokens) receives the sum of both
// gradients, as in torch. topk orders each row largest first and breaks ties toward the lower
// index, so the result never depends on the sorting algorithm or the thread count.
//
// Shape legend: V vocabulary (rows of a table), C channels, K top-k, N the size of the last axis.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace seemoe {
namespace detail {

// Elements moved below which a row copy or a top-k stays on one thread.
inline constexpr Index kIndexingParallelMin = Index(1) << 15;

// Position of the first index outside [0, limit), or -1 if all are valid.
inline Index first_bad_index(const std::vector<Index>& idx, Index limit) {
    for (std::size_t i = 0; i < idx.size(); ++i) {
        if (idx[i] < 0 || idx[i] >= limit) return static_cast<Index>(i);
    }
    return -1;
}

// dst[o, j, :] = src[o, idx[j], :] for a source laid out (outer, src_size, inner) and a
// destination (outer, idx.size(), inner). Each destination row is written once: parallel-safe.
template <typename T>
void copy_rows(const T* src, Index src_size, const std::vector<Index>& idx, T* dst, Index outer,
               Index inner) {
    const Index picked = static_cast<Index>(idx.size());
    auto one_row = [&](Index row) {  // row = o * picked + j
        const Index o = row / picked, j = row - o * picked;
        std::copy_n(src + (o * src_size + idx[j]) * inner, inner, dst + row * inner);
    };
    const Index rows = outer * picked;
    if (rows * inner >= kIndexingParallelMin) {
        parallel_for(rows, one_row);
    } else {
        for (Index r = 0; r < rows; ++r) one_row(r);
    }
}

// dst[o, idx[j], :] += src[o, j, :], the reverse of copy_rows. Repeated indices add into the same
// row, so this runs on one thread.
template <typename T>
void add_rows(const T* src, const std::vector<Index>& idx, T* dst, Index dst_size, Index outer,
              Index inner) {
    const Index picked = static_cast<Index>(idx.size());
    for (Index o = 0; o < outer; ++o) {
        for (Index j = 0; j < picked; ++j) {
            VectorMap<T>(dst + (o * dst_size + idx[j]) * inner, inner) +=
                ConstVectorMap<T>(src + (o * picked + j) * inner, inner);
        }
    }
}

// out[r, j] = a[r, idx[r*k + j]] over the last axis; idx is already checked.
template <typename T>
Tensor<T> gather_checked(const Tensor<T>& a, std::vector<Index> idx, Index k, const char* op) {
    const Index n = a.shape().back();
    Shape out_shape = a.shape();
    out_shape.back() = k;
    Tensor<T> out = make_op_result<T>(out_shape, op, {&a});  // (..., K)
    const Index rows = k > 0 ? out.numel() / k : 0;
    {
        const T* src = a.data();
        T* dst = out.data();
        for (Index r = 0; r < rows; ++r) {
            for (Index j = 0; j < k; ++j) dst[r * k + j] = src[r * n + idx[r * k + j]];
        }
    }
    // Each output row scatters into its own input row, so a repeated index within a row only
    // ever meets itself: a plain loop is race-free and correct.
    set_backward(out, [a_node = grad_target(a), idx = std::move(idx), rows, n, k](Node<T>& self) {
        if (!a_node) return;
        T* da = a_node->grad_data();
        const T* g = self.grad->data();
        for (Index r = 0; r < rows; ++r) {
            for (Index j = 0; j < k; ++j) da[r * n + idx[r * k + j]] += g[r * k + j];
        }
    });
    return out;
}

// "Greater" for top-k with NaN above everything (as torch.topk does), which keeps the order a
// strict weak ordering even when NaNs appear.
template <typename T>
bool topk_greater(T x, T y) {
    if (std::isnan(x)) return !std::isnan(y);
    return x > y;
}

}  // namespace detail

// Rows of a (V, C) table: out[..., :] = weight[ids[...], :]. ids holds numel(ids_shape) ids,
// row-major -> ids_shape + (C). Backward adds each output row into its table row.
template <typename T>
Tensor<T> embedding(const Tensor<T>& weight, const std::vector<Index>& ids, const Shape& ids_shape) {
    SEEMOE_CHECK(weight.dim() == 2, "[embedding] weight must be 2-D (V, C), got ",
                 shape_str(weight.shape()));
    SEEMOE_CHECK(static_cast<Index>(ids.size()) == numel(ids_shape), "[embedding] ", ids.size(),
                 " ids do not fill ids_shape ", shape_str(ids_shape));
    const Index vocab = weight.size(0), channels = weight.size(1);
    const Index bad = detail::first_bad_index(ids, vocab);
    SEEMOE_CHECK(bad < 0, "[embedding] id ", ids[bad], " at position ", bad,
                 " is out of range for a table of ", vocab, " rows, weight shape ",
                 shape_str(weight.shape()));
    Shape out_shape = ids_shape;
    out_shape.push_back(channels);
    Tensor<T> out = detail::make_op_result<T>(out_shape, "embedding", {&weight});  // (..., C)
    detail::copy_rows(weight.data(), vocab, ids, out.data(), 1, channels);
    auto w_node = detail::grad_target(weight);
    if (w_node) {
        detail::set_backward(out, [w_node, ids, vocab, channels](Node<T>& self) {
            detail::add_rows(self.grad->data(), ids, w_node->grad_data(), vocab, 1, channels);
        });
    }
    return out;
}

// Entries idx of `axis` (torch.index_select): the axis becomes idx.size() long; repeats allowed.
template <typename T>
Tensor<T> index_select(const Tensor<T>& a, Index axis, const std::vector<Index>& idx) {
    const Index at = normalize_axis(axis, a.dim(), "index_select");
    const AxisSplit split = split_at_axis(a.shape(), at);
    const Index bad = detail::first_bad_index(idx, split.size);
    SEEMOE_CHECK(bad < 0, "[index_select] index ", idx[bad], " at position ", bad,
                 " is out of range for axis ", axis, " of size ", split.size, " in shape ",
                 shape_str(a.shape()));
    Shape out_shape = a.shape();
    out_shape[at] = static_cast<Index>(idx.size());
    Tensor<T> out = detail::make_op_result<T>(out_shape, "index_select", {&a});
    detail::copy_rows(a.data(), split.size, idx, out.data(), split.outer, split.inner);
    auto a_node = detail::grad_target(a);
    if (a_node) {
        detail::set_backward(out, [a_node, idx, split](Node<T>& self) {
            detail::add_rows(self.grad->data(), idx, a_node->grad_data(), split.size, split.outer,
                             split.inner);
        });
    }
    return out;
}

// A copy of a with src's entries added at idx along `axis` (torch.index_add, out of place):
// out[..., idx[j], ...] += src[..., j, ...]; repeated indices accumulate. src has a's shape
// except that `axis` is idx.size() long. Differentiable in a and src.
template <typename T>
Tensor<T> index_add(const Tensor<T>& a, Index axis, const std::vector<Index>& idx, const Tensor<T>& src) {
    const Index at = normalize_axis(axis, a.dim(), "index_add");
    Shape expected = a.shape();
    expected[at] = static_cast<Index>(idx.size());
    SEEMOE_CHECK(src.shape() == expected, "[index_add] src ", shape_str(src.shape()), " should be ",
                 shape_str(expected), " for a ", shape_str(a.shape()), " and ", idx.size(),
                 " indices along axis ", axis);
    const AxisSplit split = split_at_axis(a.shape(), at);
    const Index bad = detail::first_bad_index(idx, split.size);
    SEEMOE_CHECK(bad < 0, "[index_add] index ", idx[bad], " at position ", bad,
                 " is out of range for axis ", axis, " of size ", split.size, " in shape ",
                 shape_str(a.shape()));
    Tensor<T> out = detail::make_op_result<T>(a.shape(), "index_add", {&a, &src});  // (a's shape)
    std::copy_n(a.data(), a.numel(), out.data());
    detail::add_rows(src.data(), idx, out.data(), split.size, split.outer, split.inner);

    auto a_node = detail::grad_target(a);
    auto src_node = detail::grad_target(src);
    auto src_idx = src_node ? idx : std::vector<Index>{};
    detail::set_backward(out, [a_node, src_node, idx = std::move(src_idx), split](Node<T>& self) {
        const T* g = self.grad->data();
        if (a_node) {
            const Index n = self.numel();
            VectorMap<T>(a_node->grad_data(), n) += ConstVectorMap<T>(g, n);
        }
        if (src_node) {
            // src[j] went to out[idx[j]], so its gradient is picked from there: a row gather.
            // copy_rows overwrites, so gather into a scratch buffer and add it.
            const Index picked = static_cast<Index>(idx.size());
            const Index n = split.outer * picked * split.inner;
            std::vector<T> picked_grad(static_cast<std::size_t>(n));
            detail::copy_rows(g, split.size, idx, picked_grad.data(), split.outer, split.inner);
            VectorMap<T>(src_node->grad_data(), n) += ConstVectorMap<T>(picked_grad.data(), n);
        }
    });
    return out;
}

// Per-row picks along the last axis (torch.gather(a, -1, idx)): a (..., N), idx holds k indices
// per row, row-major -> (..., k) with out[r, j] = a[r, idx[r*k + j]].
template <typename T>
Tensor<T> gather(const Tensor<T>& a, const std::vector<Index>& idx, Index k) {
    SEEMOE_CHECK(a.dim() >= 1, "[gather] needs at least 1 dimension, got a 0-d tensor");
    SEEMOE_CHECK(k >= 0, "[gather] k must be >= 0, got ", k);
    const Index n = a.shape().back();
    Index rows = 1;
    for (Index i = 0; i + 1 < a.dim(); ++i) rows *= a.shape()[i];
    SEEMOE_CHECK(static_cast<Index>(idx.size()) == rows * k, "[gather] ", idx.size(),
                 " indices, but shape ", shape_str(a.shape()), " with k = ", k, " needs ", rows * k);
    const Index bad = detail::first_bad_index(idx, n);
    SEEMOE_CHECK(bad < 0, "[gather] index ", idx[bad], " at position ", bad,
                 " is out of range for the last axis of size ", n, " in shape ", shape_str(a.shape()));
    return detail::gather_checked(a, idx, k, "gather");
}

// The k largest entries of each row (last axis), largest first.
template <typename T>
struct TopK {
    Tensor<T> values;            // (..., K), differentiable
    std::vector<Index> indices;  // (..., K) row-major: positions along the last axis
};

// Top-k over the last axis: values sorted descending, ties broken toward the lower index, NaN
// counted as the largest value. Gradients flow to the picked entries only.
template <typename T>
TopK<T> topk(const Tensor<T>& a, Index k) {
    SEEMOE_CHECK(a.dim() >= 1, "[topk] needs at least 1 dimension, got a 0-d tensor");
    const Index n = a.shape().back();
    SEEMOE_CHECK(k >= 0 && k <= n, "[topk] k = ", k, " is out of range for the last axis of size ", n,
                 " in shape ", shape_str(a.shape()));
    Index rows = 1;
    for (Index i = 0; i + 1 < a.dim(); ++i) rows *= a.shape()[i];

    std::vector<Index> indices(static_cast<std::size_t>(rows * k));
    const T* x = a.data();
    // Rows are split into one contiguous range per thread so that each range reuses one buffer.
    auto rank_rows = [&](Index first_row, Index end_row) {
        std::vector<Index> order(static_cast<std::size_t>(n));
        for (Index r = first_row; r < end_row; ++r) {
            const T* row = x + r * n;
            std::iota(order.begin(), order.end(), Index(0));
            std::partial_sort(order.begin(), order.begin() + k, order.end(), [row](Index i, Index j) {
                if (detail::topk_greater(row[i], row[j])) return true;
                if (detail::topk_greater(row[j], row[i])) return false;
                return i < j;
            });
            std::copy_n(order.begin(), k, indices.begin() + r * k);
        }
    };
    const Index ranges = rows * n >= detail::kIndexingParallelMin ? std::min<Index>(rows, num_threads()) : 1;
    parallel_for(ranges, [&](Index c) { rank_rows(rows * c / ranges, rows * (c + 1) / ranges); });

    Tensor<T> values = detail::gather_checked(a, indices, k, "topk");  // (..., K)
    return TopK<T>{std::move(values), std::move(indices)};
}

}  // namespace seemoe
