// seemoe/core/shape.hpp — shapes and the arithmetic on them.
//
// A Shape is a list of sizes, outermost first, like torch.Size. Storage is always contiguous
// row-major: shape (B, T, C) puts element (b, t, c) at ((b*T)+t)*C+c. Axes may be given
// negative, counting from the end (-1 is the last axis), as in PyTorch.
#pragma once

#include <string>
#include <vector>

#include "common.hpp"

namespace seemoe {

using Shape = std::vector<Index>;

// Number of elements; 1 for the scalar shape {}.
inline Index numel(const Shape& shape) {
    Index n = 1;
    for (Index s : shape) n *= s;
    return n;
}

// "(2, 3, 4)" — the form every error message uses.
inline std::string shape_str(const Shape& shape) {
    std::string out = "(";
    for (std::size_t i = 0; i < shape.size(); ++i) {
        if (i) out += ", ";
        out += std::to_string(shape[i]);
    }
    if (shape.size() == 1) out += ",";
    return out + ")";
}

// Turns a possibly negative axis into 0..ndim-1, or throws naming the op.
inline Index normalize_axis(Index axis, Index ndim, const char* op) {
    SEEMOE_CHECK(axis >= -ndim && axis < ndim, "[", op, "] axis ", axis,
                 " is out of range for a tensor with ", ndim, " dimensions");
    return axis < 0 ? axis + ndim : axis;
}

// Row-major strides in elements: strides({2,3,4}) = {12,4,1}.
inline std::vector<Index> strides_of(const Shape& shape) {
    std::vector<Index> strides(shape.size(), 1);
    for (Index i = static_cast<Index>(shape.size()) - 2; i >= 0; --i)
        strides[i] = strides[i + 1] * shape[i + 1];
    return strides;
}

// Product of the sizes before `axis` (outer), at it, and after it (inner): the three numbers
// a reduction or a concat along `axis` loops over.
struct AxisSplit {
    Index outer, size, inner;
};
inline AxisSplit split_at_axis(const Shape& shape, Index axis) {
    AxisSplit s{1, shape[axis], 1};
    for (Index i = 0; i < axis; ++i) s.outer *= shape[i];
    for (Index i = axis + 1; i < static_cast<Index>(shape.size()); ++i) s.inner *= shape[i];
    return s;
}

}  // namespace seemoe
