// seemoe/ops/shape_ops.hpp — reshaping, permuting, joining and cutting tensors.
//
// Every tensor is contiguous row-major, so shape ops come in two kinds:
//   views   reshape, flatten, unsqueeze, squeeze (and a permute that keeps the element order):
//           the element order does not change, so the result SHARES the input's value buffer —
//           writing through one is seen by the other, as with torch views — and backward hands
//           the gradient through unchanged.
//   copies  permute, transpose, concat, slice, narrow, select, patchify: the result is a fresh
//           contiguous tensor, and backward adds each gradient element back where its value
//           came from.
//
// Convention: axes and positions may be negative, counting from the end, and ranges are
// half-open [start, end), as in PyTorch. Out-of-range ranges throw instead of being clipped.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <initializer_list>
#include <memory>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace seemoe {
namespace detail {

// Elements below which a permute copy stays on one thread: the fork costs more than it saves.
inline constexpr Index kPermuteParallelMin = Index(1) << 15;

// A new tensor of `shape` over a's own value buffer. Its gradient is a's gradient element for
// element, so backward adds it straight in.
template <typename T>
Tensor<T> make_view(const Tensor<T>& a, Shape shape, const char* op) {
    auto node = std::make_shared<Node<T>>();
    node->shape = std::move(shape);
    node->value = a.storage();
    node->op = op;
    Tensor<T> out(std::move(node));
    auto a_node = grad_target(a);
    if (a_node) {
        out.node()->requires_grad = true;
        out.node()->parents.push_back(a_node);
        set_backward(out, [a_node](Node<T>& self) {
            const Index n = self.numel();
            if (!a_node->grad && !self.retains_grad) {
                // The first contribution: hand the buffer over instead of copying it.
                a_node->grad = std::move(self.grad);
                a_node->grad_is_zero = false;
                return;
            }
            bool overwrite = false;
            T* da = a_node->grad_data_for_write(overwrite);
            if (overwrite) {
                std::copy_n(self.grad->data(), n, da);
            } else {
                VectorMap<T>(da, n) += ConstVectorMap<T>(self.grad->data(), n);
            }
        });
    }
    return out;
}

// out = a with its axes reordered by `perm` (out axis i is a's axis perm[i]); perm is valid.
template <typename T>
Tensor<T> permute_checked(const Tensor<T>& a, const std::vector<Index>& perm, const char* op) {
    const Shape& in_shape = a.shape();
    const Index nd = a.dim();
    Shape out_shape(nd);
    for (Index i = 0; i < nd; ++i) out_shape[i] = in_shape[perm[i]];

    // Axes of size 1 can move anywhere without changing the element order; if the others keep
    // their relative order, the permute is a reshape and shares the buffer.
    Index last_moved = -1;
    bool keeps_order = true;
    for (Index i = 0; i < nd; ++i) {
        if (in_shape[perm[i]] == 1) continue;
        if (perm[i] < last_moved) keeps_order = false;
        last_moved = perm[i];
    }
    if (keeps_order) return make_view(a, out_shape, op);

    Tensor<T> out = make_op_result<T>(out_shape, op, {&a});
    // Source stride of each output axis: walking the output in order, element (i0, ..., i_last)
    // comes from sum_k i_k * src_stride[k].
    const std::vector<Index> in_strides = strides_of(in_shape);
    std::vector<Index> src_stride(nd);
    for (Index i = 0; i < nd; ++i) src_stride[i] = in_strides[perm[i]];
    const Index row_len = out_shape.back();
    const Index rows = row_len > 0 ? out.numel() / row_len : 0;

    // Calls fn(row, source offset of the row's first element) for every output row (the last
    // output axis); the source elements of a row are src_stride.back() apart.
    auto for_each_row = [out_shape, src_stride, nd, rows](Index numel, auto&& fn) {
        auto one_row = [&](Index row) {
            Index rest = row, src = 0;
            for (Index k = nd - 2; k >= 0; --k) {
                src += (rest % out_shape[k]) * src_stride[k];
                rest /= out_shape[k];
            }
            fn(row, src);
        };
        if (numel >= kPermuteParallelMin) {
            parallel_for(rows, one_row);
        } else {
            for (Index r = 0; r < rows; ++r) one_row(r);
        }
    };

    const Index step = src_stride.back();
    {
        const T* src = a.data();
        T* dst = out.data();
        for_each_row(out.numel(), [&](Index row, Index from) {
            T* d = dst + row * row_len;
            for (Index j = 0; j < row_len; ++j) d[j] = src[from + j * step];
        });
    }
    // Rows of the output come from disjoint source elements, so backward may split rows over
    // threads like the forward does.
    set_backward(out, [a_node = grad_target(a), for_each_row, row_len, step](Node<T>& self) {
        if (!a_node) return;
        T* da = a_node->grad_data();
        const T* g = self.grad->data();
        for_each_row(self.numel(), [&](Index row, Index to) {
            const T* gr = g + row * row_len;
            for (Index j = 0; j < row_len; ++j) da[to + j * step] += gr[j];
        });
    });
    return out;
}

// out = a[..., start:start+length, ...] along `axis`, with the given shape (select drops the axis,
// slice and narrow keep it; the element order is the same either way).
template <typename T>
Tensor<T> narrow_checked(const Tensor<T>& a, Index axis, Index start, Index length,
                         Shape out_shape, const char* op) {
    const AxisSplit split = split_at_axis(a.shape(), axis);
    Tensor<T> out = make_op_result<T>(out_shape, op, {&a});
    const Index block = length * split.inner;  // contiguous run kept from each outer index
    const Index skip = start * split.inner;
    const Index in_step = split.size * split.inner;
    {
        const T* src = a.data();
        T* dst = out.data();
        for (Index o = 0; o < split.outer; ++o) std::copy_n(src + o * in_step + skip, block, dst + o * block);
    }
    set_backward(out, [a_node = grad_target(a), outer = split.outer, block, skip, in_step](Node<T>& self) {
        if (!a_node) return;
        T* da = a_node->grad_data();
        const T* g = self.grad->data();
        for (Index o = 0; o < outer; ++o)
            VectorMap<T>(da + o * in_step + skip, block) += ConstVectorMap<T>(g + o * block, block);
    });
    return out;
}

}  // namespace detail

// The same values in a new shape; one size may be -1 (inferred). Shares a's value buffer.
template <typename T>
Tensor<T> reshape(const Tensor<T>& a, Shape shape) {
    Index inferred_axis = -1, known = 1;
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (shape[i] == -1) {
            SEEMOE_CHECK(inferred_axis < 0, "[reshape] only one size may be -1, got ", shape_str(shape),
                         " for ", shape_str(a.shape()));
            inferred_axis = static_cast<Index>(i);
        } else {
            SEEMOE_CHECK(shape[i] >= 0, "[reshape] invalid size ", shape[i], " in ", shape_str(shape));
            known *= shape[i];
        }
    }
    const Index n = a.numel();
    if (inferred_axis >= 0) {
        SEEMOE_CHECK(known > 0 && n % known == 0, "[reshape] cannot infer the -1 in ", shape_str(shape),
                     " for ", shape_str(a.shape()), " (", n, " elements)");
        shape[inferred_axis] = n / known;
    }
    SEEMOE_CHECK(numel(shape) == n, "[reshape] cannot reshape ", shape_str(a.shape()), " (", n,
                 " elements) into ", shape_str(shape), " (", numel(shape), " elements)");
    return detail::make_view(a, std::move(shape), "reshape");
}

// Merges axes start_axis..end_axis (inclusive) into one, like torch.flatten. A scalar becomes (1,).
template <typename T>
Tensor<T> flatten(const Tensor<T>& a, Index start_axis = 0, Index end_axis = -1) {
    if (a.dim() == 0) return detail::make_view(a, Shape{1}, "flatten");
    const Index first = normalize_axis(start_axis, a.dim(), "flatten");
    const Index last = normalize_axis(end_axis, a.dim(), "flatten");
    SEEMOE_CHECK(first <= last, "[flatten] start_axis ", start_axis, " comes after end_axis ", end_axis,
                 " for shape ", shape_str(a.shape()));
    const Shape& s = a.shape();
    Shape out_shape(s.begin(), s.begin() + first);
    Index merged = 1;
    for (Index i = first; i <= last; ++i) merged *= s[i];
    out_shape.push_back(merged);
    out_shape.insert(out_shape.end(), s.begin() + last + 1, s.end());
    return detail::make_view(a, std::move(out_shape), "flatten");
}

// Inserts an axis of size 1 at `axis` (in -(dim+1)..dim). Shares a's value buffer.
template <typename T>
Tensor<T> unsqueeze(const Tensor<T>& a, Index axis) {
    const Index at = normalize_axis(axis, a.dim() + 1, "unsqueeze");
    Shape out_shape = a.shape();
    out_shape.insert(out_shape.begin() + at, 1);
    return detail::make_view(a, std::move(out_shape), "unsqueeze");
}

// Removes `axis`, which must have size 1 (torch silently ignores other sizes; we throw, since
// that is almost always a shape bug). Shares a's value buffer.
template <typename T>
Tensor<T> squeeze(const Tensor<T>& a, Index axis) {
    const Index at = normalize_axis(axis, a.dim(), "squeeze");
    SEEMOE_CHECK(a.shape()[at] == 1, "[squeeze] axis ", axis, " has size ", a.shape()[at],
                 ", not 1, in shape ", shape_str(a.shape()));
    Shape out_shape = a.shape();
    out_shape.erase(out_shape.begin() + at);
    return detail::make_view(a, std::move(out_shape), "squeeze");
}

// Reorders the axes: output axis i is a's axis dims[i] (torch.permute). Copies into a new
// contiguous tensor unless the element order is unchanged.
template <typename T>
Tensor<T> permute(const Tensor<T>& a, const std::vector<Index>& dims) {
    const Index nd = a.dim();
    std::vector<Index> perm(dims.size());
    std::vector<bool> seen(static_cast<std::size_t>(nd), false);
    bool valid = static_cast<Index>(dims.size()) == nd;
    for (std::size_t i = 0; valid && i < dims.size(); ++i) {
        const Index d = dims[i] < 0 ? dims[i] + nd : dims[i];
        valid = d >= 0 && d < nd && !seen[d];
        if (valid) {
            seen[d] = true;
            perm[i] = d;
        }
    }
    SEEMOE_CHECK(valid, "[permute] dims ", shape_str(dims), " are not a permutation of the ", nd,
                 " axes of shape ", shape_str(a.shape()));
    return detail::permute_checked(a, perm, "permute");
}

// Swaps two axes (torch.transpose); a copy, like permute.
template <typename T>
Tensor<T> transpose(const Tensor<T>& a, Index d0, Index d1) {
    const Index first = normalize_axis(d0, a.dim(), "transpose");
    const Index second = normalize_axis(d1, a.dim(), "transpose");
    std::vector<Index> perm(a.dim());
    for (Index i = 0; i < a.dim(); ++i) perm[i] = i;
    std::swap(perm[first], perm[second]);
    return detail::permute_checked(a, perm, "transpose");
}

// Joins tensors along `axis` (torch.cat); all sizes must agree except along `axis`.
template <typename T>
Tensor<T> concat(const std::vector<Tensor<T>>& tensors, Index axis) {
    SEEMOE_CHECK(!tensors.empty(), "[concat] needs at least one tensor");
    const Shape& first = tensors[0].shape();
    SEEMOE_CHECK(!first.empty(), "[concat] cannot join 0-d tensors; unsqueeze them first");
    const Index at = normalize_axis(axis, static_cast<Index>(first.size()), "concat");
    std::vector<Index> sizes;  // each input's size along `axis`
    Index total = 0;
    for (std::size_t k = 0; k < tensors.size(); ++k) {
        const Shape& s = tensors[k].shape();
        bool matches = s.size() == first.size();
        for (std::size_t i = 0; matches && i < s.size(); ++i)
            matches = static_cast<Index>(i) == at || s[i] == first[i];
        SEEMOE_CHECK(matches, "[concat] tensor ", k, " has shape ", shape_str(s), " but tensor 0 has ",
                     shape_str(first), ": sizes must match except along axis ", at);
        sizes.push_back(s[at]);
        total += s[at];
    }
    Shape out_shape = first;
    out_shape[at] = total;
    Tensor<T> out = detail::make_op_result<T>(out_shape, "concat", tensors);  // (..., sum of sizes, ...)

    const AxisSplit split = split_at_axis(out_shape, at);
    const Index out_step = total * split.inner;
    {
        T* dst = out.data();
        Index offset = 0;  // where tensor k starts inside one outer block of the output
        for (std::size_t k = 0; k < tensors.size(); ++k) {
            const Index block = sizes[k] * split.inner;
            const T* src = tensors[k].data();
            for (Index o = 0; o < split.outer; ++o) std::copy_n(src + o * block, block, dst + o * out_step + offset);
            offset += block;
        }
    }
    std::vector<std::shared_ptr<Node<T>>> targets;
    for (const Tensor<T>& t : tensors) targets.push_back(detail::grad_target(t));
    detail::set_backward(out, [targets = std::move(targets), sizes = std::move(sizes), outer = split.outer,
                               inner = split.inner, out_step](Node<T>& self) {
        const T* g = self.grad->data();
        Index offset = 0;
        for (std::size_t k = 0; k < targets.size(); ++k) {
            const Index block = sizes[k] * inner;
            if (targets[k]) {
                T* dt = targets[k]->grad_data();
                for (Index o = 0; o < outer; ++o)
                    VectorMap<T>(dt + o * block, block) += ConstVectorMap<T>(g + o * out_step + offset, block);
            }
            offset += block;
        }
    });
    return out;
}

// concat({a, b}, axis): a braced list deduces T, which a std::vector parameter cannot.
template <typename T>
Tensor<T> concat(std::initializer_list<Tensor<T>> tensors, Index axis) {
    return concat(std::vector<Tensor<T>>(tensors), axis);
}

// a[..., start:end, ...] along `axis` (end exclusive; negative positions count from the end).
template <typename T>
Tensor<T> slice(const Tensor<T>& a, Index axis, Index start, Index end) {
    const Index at = normalize_axis(axis, a.dim(), "slice");
    const Index size = a.shape()[at];
    const Index from = start < 0 ? start + size : start;
    const Index to = end < 0 ? end + size : end;
    SEEMOE_CHECK(from >= 0 && from <= to && to <= size, "[slice] range [", start, ", ", end,
                 ") is out of bounds for axis ", axis, " of size ", size, " in shape ", shape_str(a.shape()));
    Shape out_shape = a.shape();
    out_shape[at] = to - from;
    return detail::narrow_checked(a, at, from, to - from, std::move(out_shape), "slice");
}

// `length` entries of `axis` starting at `start` (torch.narrow).
template <typename T>
Tensor<T> narrow(const Tensor<T>& a, Index axis, Index start, Index length) {
    const Index at = normalize_axis(axis, a.dim(), "narrow");
    const Index size = a.shape()[at];
    const Index from = start < 0 ? start + size : start;
    SEEMOE_CHECK(from >= 0 && length >= 0 && from + length <= size, "[narrow] start ", start,
                 " length ", length, " is out of bounds for axis ", axis, " of size ", size, " in shape ",
                 shape_str(a.shape()));
    Shape out_shape = a.shape();
    out_shape[at] = length;
    return detail::narrow_checked(a, at, from, length, std::move(out_shape), "narrow");
}

// Entry `index` of `axis`, with that axis removed (torch.select): (B, T, C) select(1, t) -> (B, C).
template <typename T>
Tensor<T> select(const Tensor<T>& a, Index axis, Index index) {
    const Index at = normalize_axis(axis, a.dim(), "select");
    const Index size = a.shape()[at];
    const Index i = index < 0 ? index + size : index;
    SEEMOE_CHECK(i >= 0 && i < size, "[select] index ", index, " is out of range for axis ", axis,
                 " of size ", size, " in shape ", shape_str(a.shape()));
    Shape out_shape = a.shape();
    out_shape.erase(out_shape.begin() + at);
    return detail::narrow_checked(a, at, i, 1, std::move(out_shape), "select");
}

// images (B, C, S, S) -> patches (B, P, C*p*p): the P = (S/p)^2 non-overlapping p x p patches,
// numbered row-major over the grid, each flattened in (channel, row, column) order, the order of
// a flattened Conv2d weight (D, C, p, p). A copy; backward adds each gradient back to its pixel.
template <typename T>
Tensor<T> patchify(const Tensor<T>& images, Index patch) {
    SEEMOE_CHECK(images.dim() == 4 && images.size(2) == images.size(3),
                 "[patchify] expected square images (B, C, S, S), got ", shape_str(images.shape()));
    const Index B = images.size(0), C = images.size(1), S = images.size(2);
    SEEMOE_CHECK(patch > 0 && S % patch == 0, "[patchify] image size ", S,
                 " is not a multiple of the patch size ", patch);
    const Index grid = S / patch, P = grid * grid, row_len = C * patch * patch;
    Tensor<T> out = detail::make_op_result<T>({B, P, row_len}, "patchify", {&images});  // (B, P, C*p*p)
    // Walks (b, patch, c, ky) and copies one run of `patch` contiguous pixels; `scatter` copies the
    // other way (adding), for backward.
    auto walk = [=](auto&& copy_run) {
        for (Index b = 0; b < B; ++b)
            for (Index gy = 0; gy < grid; ++gy)
                for (Index gx = 0; gx < grid; ++gx)
                    for (Index c = 0; c < C; ++c)
                        for (Index ky = 0; ky < patch; ++ky) {
                            const Index pixel = ((b * C + c) * S + gy * patch + ky) * S + gx * patch;
                            const Index row = ((b * P + gy * grid + gx) * C + c) * patch + ky;
                            copy_run(pixel, row * patch);
                        }
    };
    const T* src = images.data();
    T* dst = out.data();
    walk([&](Index pixel, Index slot) { std::copy_n(src + pixel, patch, dst + slot); });
    detail::set_backward(out, [img = detail::grad_target(images), walk, patch](Node<T>& self) {
        T* g_img = img->grad_data();
        const T* g_out = self.grad->data();
        walk([&](Index pixel, Index slot) {
            for (Index i = 0; i < patch; ++i) g_img[pixel + i] += g_out[slot + i];
        });
    });
    return out;
}

}  // namespace seemoe
