// seemoe/ops/reduce.hpp — sum, mean and max, over the whole tensor or along one axis.
//
//   sum(a), mean(a)                    -> a scalar tensor of shape ()
//   sum(a, axis, keepdim), mean(...)   -> the axis removed, or kept with size 1
//   max(a, axis = -1, keepdim)         -> the largest values; the gradient goes to the FIRST
//                                         position holding the maximum (ties are deterministic)
//
// Convention (as in PyTorch): axes may be negative (-1 is the last); keepdim = true leaves a
// size-1 axis so the result broadcasts straight back against the input, e.g.
// sub(x, mean(x, -1, true)). Along an axis the tensor is seen as (outer, size, inner) with the
// reduced axis in the middle; `inner` elements are contiguous, so every loop runs over whole
// contiguous rows.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"

namespace seemoe {
namespace detail {

// `axis` in 0..ndim-1, or an error naming the op and the shape.
inline Index checked_reduce_axis(const Shape& shape, Index axis, const char* op) {
    const Index ndim = static_cast<Index>(shape.size());
    SEEMOE_CHECK(axis >= -ndim && axis < ndim, "[", op, "] axis ", axis, " is out of range for shape ",
                 shape_str(shape));
    return axis < 0 ? axis + ndim : axis;
}

inline Shape reduced_shape(Shape shape, Index axis, bool keepdim) {
    if (keepdim) {
        shape[static_cast<std::size_t>(axis)] = 1;
    } else {
        shape.erase(shape.begin() + static_cast<std::ptrdiff_t>(axis));
    }
    return shape;
}

// sum along `axis`, times `scale` (1 for sum, 1/size for mean).
template <typename T>
Tensor<T> scaled_sum_along(const Tensor<T>& a, Index axis_in, bool keepdim, bool average, const char* op) {
    const Index axis = checked_reduce_axis(a.shape(), axis_in, op);
    const AxisSplit split = split_at_axis(a.shape(), axis);
    SEEMOE_CHECK(!average || split.size > 0, "[", op, "] cannot average over axis ", axis_in,
                 " of size 0 in shape ", shape_str(a.shape()));
    const T scale = average ? T(1) / static_cast<T>(split.size) : T(1);
    Tensor<T> out = make_op_result<T>(reduced_shape(a.shape(), axis, keepdim), op, {&a});  // (outer, inner)
    const T* x = a.data();
    T* y = out.data();
    const Index outer = split.outer, size = split.size, inner = split.inner;
    if (inner == 1) {
        // The last axis (or one followed by 1s): each output is one contiguous row's sum.
        VectorMap<T>(y, outer) = ConstMatrixMap<T>(x, outer, size).rowwise().sum() * scale;
    } else {
        // Add up the `size` contiguous rows of `inner` values under each output row.
        for (Index o = 0; o < outer; ++o) {
            VectorMap<T> y_row(y + o * inner, inner);
            y_row.setZero();
            for (Index s = 0; s < size; ++s) y_row += ConstVectorMap<T>(x + (o * size + s) * inner, inner);
            y_row *= scale;
        }
    }
    set_backward(out, [a_node = grad_target(a), outer, size, inner, scale](Node<T>& self) {
        if (!a_node) return;
        const T* g = self.grad->data();
        T* ga = a_node->grad_data();
        if (inner == 1) {
            MatrixMap<T>(ga, outer, size).colwise() += ConstVectorMap<T>(g, outer) * scale;
            return;
        }
        for (Index o = 0; o < outer; ++o) {
            const auto g_row = ConstVectorMap<T>(g + o * inner, inner) * scale;
            for (Index s = 0; s < size; ++s) VectorMap<T>(ga + (o * size + s) * inner, inner) += g_row;
        }
    });
    return out;
}

template <typename T>
Tensor<T> scaled_sum_all(const Tensor<T>& a, bool average, const char* op) {
    const Index n = a.numel();
    SEEMOE_CHECK(!average || n > 0, "[", op, "] cannot average an empty tensor of shape ", shape_str(a.shape()));
    const T scale = average ? T(1) / static_cast<T>(n) : T(1);
    Tensor<T> out = make_op_result<T>(Shape{}, op, {&a});  // ()
    out.data()[0] = ConstVectorMap<T>(a.data(), n).sum() * scale;
    set_backward(out, [a_node = grad_target(a), scale](Node<T>& self) {
        if (!a_node) return;
        VectorMap<T>(a_node->grad_data(), a_node->numel()).array() += self.grad->data()[0] * scale;
    });
    return out;
}

}  // namespace detail

// Sum of all elements, shape ().
template <typename T>
Tensor<T> sum(const Tensor<T>& a) {
    return detail::scaled_sum_all(a, false, "sum");
}

// Sum along `axis`; keepdim leaves it with size 1.
template <typename T>
Tensor<T> sum(const Tensor<T>& a, Index axis, bool keepdim = false) {
    return detail::scaled_sum_along(a, axis, keepdim, false, "sum");
}

// Mean of all elements, shape (); an empty tensor is an error (torch would return NaN).
template <typename T>
Tensor<T> mean(const Tensor<T>& a) {
    return detail::scaled_sum_all(a, true, "mean");
}

// Mean along `axis`; keepdim leaves it with size 1.
template <typename T>
Tensor<T> mean(const Tensor<T>& a, Index axis, bool keepdim = false) {
    return detail::scaled_sum_along(a, axis, keepdim, true, "mean");
}

// The largest value along `axis`. Ties go to the first (lowest-index) maximum, which alone
// receives the gradient; a NaN counts as the maximum, so NaNs propagate as in torch.
template <typename T>
Tensor<T> max(const Tensor<T>& a, Index axis = -1, bool keepdim = false) {
    const Index ax = detail::checked_reduce_axis(a.shape(), axis, "max");
    const AxisSplit split = split_at_axis(a.shape(), ax);
    SEEMOE_CHECK(split.size > 0, "[max] cannot take the max over axis ", axis, " of size 0 in shape ",
                 shape_str(a.shape()));
    Tensor<T> out = detail::make_op_result<T>(detail::reduced_shape(a.shape(), ax, keepdim), "max", {&a});  // (outer, inner)
    const Index outer = split.outer, size = split.size, inner = split.inner;
    const T* x = a.data();
    T* y = out.data();
    std::vector<Index> argmax(static_cast<std::size_t>(outer * inner), 0);  // position along axis
    // Take a value if it is larger or NaN, unless a NaN is already held; the strict comparison
    // keeps the first of equal values.
    auto better = [](T candidate, T best) { return !std::isnan(best) && !(candidate <= best); };
    if (inner == 1) {
        // The last axis: one contiguous row per output, scanned with the running max in registers.
        for (Index o = 0; o < outer; ++o) {
            const T* row = x + o * size;
            T best = row[0];
            Index best_at = 0;
            for (Index s = 1; s < size; ++s) {
                if (better(row[s], best)) {
                    best = row[s];
                    best_at = s;
                }
            }
            y[o] = best;
            argmax[static_cast<std::size_t>(o)] = best_at;
        }
    } else {
        // Inner axes: compare whole contiguous rows of `inner` values against the running max.
        for (Index o = 0; o < outer; ++o) {
            T* best = y + o * inner;
            Index* best_at = argmax.data() + o * inner;
            const T* block = x + o * size * inner;
            std::copy_n(block, inner, best);
            for (Index s = 1; s < size; ++s) {
                const T* row = block + s * inner;
                for (Index i = 0; i < inner; ++i) {
                    if (better(row[i], best[i])) {
                        best[i] = row[i];
                        best_at[i] = s;
                    }
                }
            }
        }
    }
    detail::set_backward(out, [a_node = detail::grad_target(a), argmax = std::move(argmax), size,
                               inner](Node<T>& self) {
        if (!a_node) return;
        const T* g = self.grad->data();
        T* ga = a_node->grad_data();
        const Index n_out = static_cast<Index>(argmax.size());
        for (Index k = 0; k < n_out; ++k) {
            const Index o = k / inner, i = k % inner;
            ga[(o * size + argmax[static_cast<std::size_t>(k)]) * inner + i] += g[k];
        }
    });
    return out;
}

}  // namespace seemoe
