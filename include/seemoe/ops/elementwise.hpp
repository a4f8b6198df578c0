// seemoe/ops/elementwise.hpp — arithmetic and pointwise functions, each with its gradient.
//
//   binary   add, sub, mul, div between two tensors, or a tensor and a scalar; + - * / and unary -
//   unary    neg, exp, log, sqrt, pow, square, tanh, sigmoid, relu, gelu (erf form), softplus
//   masking  masked_fill(a, mask, value)
//
// Convention: binary ops broadcast like numpy and PyTorch. Shapes are aligned from the right,
// a missing leading axis counts as size 1, and each pair of sizes must be equal or one of them 1:
// (B, T, C) + (C) adds a bias to every token, (B, T, C) * (B, T, 1) scales each token. The
// gradient of a broadcast input is summed over the axes it was repeated along, so every input's
// grad has that input's own shape.
//
// Speed: the layouts training meets (equal shapes, a bias-like suffix, one value per row, a
// one-element tensor) run as whole rows of vectorised Eigen array expressions; any other
// broadcast walks the output with per-input strides. Unary ops are one Eigen expression over the
// whole buffer.
#pragma once

#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>  // Array::erf() for gelu (vectorised for float)
#include <algorithm>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"

namespace seemoe {
namespace detail {

template <typename T>
using ElemArray = Eigen::Map<Eigen::Array<T, Eigen::Dynamic, 1>>;
template <typename T>
using ConstElemArray = Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>>;

// The scalar parameter of `add(a, 2)` and friends: not used to deduce T (T comes from the
// tensor), so an int or double literal converts to the tensor's type as in PyTorch.
template <typename T>
struct NonDeduced {
    using type = T;
};
template <typename T>
using ScalarOf = typename NonDeduced<T>::type;

// ---- broadcasting ---------------------------------------------------------------------------

// How one input of a binary op covers the output, the output seen as a row-major
// (rows, cols) matrix:
//   Full  the input has the output's shape (up to leading 1s)
//   Row   one row of `cols` values, repeated for every row    (a bias (C) onto (B*T, C))
//   Col   one value per row, repeated along the row            ((B, T, 1) onto (B*T, C))
//   One   a single value                                       (a scalar tensor)
enum class Cover { Full, Row, Col, One };

struct BroadcastPlan {
    Shape out;                   // the broadcast shape
    Index rows = 1, cols = 1;    // the (rows, cols) view of `out` when !strided
    Cover a = Cover::Full, b = Cover::Full;
    bool strided = false;        // no (rows, cols) view fits both inputs: walk with strides
    std::vector<Index> a_strides, b_strides;  // per output axis, 0 along repeated axes
};

// Fits one input (padded with leading 1s to the output's rank) to a cover. `split` receives the
// axis where a Row or Col cover cuts the output into (rows, cols), or -1 when any cut works.
inline bool fit_cover(const Shape& padded, const Shape& out, Cover& cover, Index& split) {
    const Index rank = static_cast<Index>(out.size());
    auto all_ones = [](auto first, auto last) {
        return std::all_of(first, last, [](Index s) { return s == 1; });
    };
    split = -1;
    if (numel(padded) == numel(out)) {
        cover = Cover::Full;
        return true;
    }
    if (numel(padded) == 1) {
        cover = Cover::One;
        return true;
    }
    Index k = rank;  // Row: sizes equal to the output's from axis k on, 1 before it
    while (k > 0 && padded[k - 1] == out[k - 1]) --k;
    if (all_ones(padded.begin(), padded.begin() + k)) {
        cover = Cover::Row;
        split = k;
        return true;
    }
    k = 0;  // Col: sizes equal to the output's before axis k, 1 from it on
    while (k < rank && padded[k] == out[k]) ++k;
    if (all_ones(padded.begin() + k, padded.end())) {
        cover = Cover::Col;
        split = k;
        return true;
    }
    return false;
}

// The broadcast of shapes a and b and the cheapest way to walk it; throws naming `op` and both
// shapes when they do not broadcast.
inline BroadcastPlan plan_broadcast(const Shape& a, const Shape& b, const char* op) {
    const std::size_t rank = std::max(a.size(), b.size());
    Shape pa(rank, 1), pb(rank, 1);
    std::copy(a.begin(), a.end(), pa.begin() + static_cast<std::ptrdiff_t>(rank - a.size()));
    std::copy(b.begin(), b.end(), pb.begin() + static_cast<std::ptrdiff_t>(rank - b.size()));

    BroadcastPlan plan;
    plan.out.resize(rank);
    for (std::size_t d = 0; d < rank; ++d) {
        SEEMOE_CHECK(pa[d] == pb[d] || pa[d] == 1 || pb[d] == 1, "[", op,
                     "] cannot broadcast shapes ", shape_str(a), " and ", shape_str(b),
                     ": sizes ", pa[d], " and ", pb[d], " meet at axis ", d, " of ", rank,
                     " (aligned from the right)");
        plan.out[d] = pa[d] == 1 ? pb[d] : pa[d];
    }
    if (numel(plan.out) == 0) {  // nothing to compute, nothing to differentiate
        plan.rows = plan.cols = 0;
        return plan;
    }

    Index split_a = -1, split_b = -1;
    const bool fits = fit_cover(pa, plan.out, plan.a, split_a) && fit_cover(pb, plan.out, plan.b, split_b);
    if (fits && (split_a < 0 || split_b < 0 || split_a == split_b)) {
        // At least one input is Full or Row, so every row is a vector expression.
        const Index split = std::max({split_a, split_b, Index(0)});
        plan.rows = 1;
        for (Index d = 0; d < split; ++d) plan.rows *= plan.out[d];
        plan.cols = numel(plan.out) / plan.rows;
        return plan;
    }

    plan.strided = true;
    const std::vector<Index> sa = strides_of(pa), sb = strides_of(pb);
    plan.a_strides.resize(rank);
    plan.b_strides.resize(rank);
    for (std::size_t d = 0; d < rank; ++d) {
        plan.a_strides[d] = pa[d] == 1 ? 0 : sa[d];
        plan.b_strides[d] = pb[d] == 1 ? 0 : sb[d];
    }
    return plan;
}

// Calls body(k, ia, ib) for every output element k, with the offsets of the a and b elements
// it reads. The last axis is the inner loop; the other axes advance like an odometer.
template <typename Body>
void for_each_strided(const BroadcastPlan& plan, Body&& body) {
    const Index rank = static_cast<Index>(plan.out.size());
    const Index total = numel(plan.out);
    if (total == 0) return;
    const Index inner = plan.out[rank - 1];
    const Index step_a = plan.a_strides[rank - 1], step_b = plan.b_strides[rank - 1];
    std::vector<Index> counter(rank, 0);
    Index ia = 0, ib = 0;
    for (Index k0 = 0; k0 < total; k0 += inner) {
        for (Index j = 0; j < inner; ++j) body(k0 + j, ia + j * step_a, ib + j * step_b);
        for (Index d = rank - 2; d >= 0; --d) {
            ia += plan.a_strides[d];
            ib += plan.b_strides[d];
            if (++counter[d] < plan.out[d]) break;
            ia -= plan.a_strides[d] * plan.out[d];
            ib -= plan.b_strides[d] * plan.out[d];
            counter[d] = 0;
        }
    }
}

// Calls body(i, x, z) for each row i of the (rows, cols) view, where x and z are what a and b
// contribute to that row: an array map of `cols` values (Full, Row) or one scalar (Col, One).
template <typename T, typename Body>
void for_each_row(const BroadcastPlan& plan, const T* a, const T* b, Body&& body) {
    const Index cols = plan.cols;
    auto row_of = [cols](const T* p, Cover cover, Index i) {
        return ConstElemArray<T>(cover == Cover::Full ? p + i * cols : p, cols);
    };
    auto value_of = [](const T* p, Cover cover, Index i) { return cover == Cover::Col ? p[i] : p[0]; };
    const bool a_is_row = plan.a == Cover::Full || plan.a == Cover::Row;
    const bool b_is_row = plan.b == Cover::Full || plan.b == Cover::Row;
    if (a_is_row && b_is_row) {
        for (Index i = 0; i < plan.rows; ++i) body(i, row_of(a, plan.a, i), row_of(b, plan.b, i));
    } else if (a_is_row) {
        for (Index i = 0; i < plan.rows; ++i) body(i, row_of(a, plan.a, i), value_of(b, plan.b, i));
    } else {
        for (Index i = 0; i < plan.rows; ++i) body(i, value_of(a, plan.a, i), row_of(b, plan.b, i));
    }
}

// Adds one row of gradient into an input's grad, summing over the axes the input was repeated
// along (a Row input collects every row; Col and One inputs collect whole rows into one value).
template <typename T, typename RowExpr>
void accumulate_row(T* grad, Cover cover, Index i, Index cols, const RowExpr& row, bool assign = false) {
    switch (cover) {
        case Cover::Full:
            if (assign) {
                ElemArray<T>(grad + i * cols, cols) = row;
            } else {
                ElemArray<T>(grad + i * cols, cols) += row;
            }
            break;
        case Cover::Row: ElemArray<T>(grad, cols) += row; break;
        case Cover::Col: grad[i] += row.sum(); break;
        case Cover::One: grad[0] += row.sum(); break;
    }
}

// The four arithmetic ops as policies. forward/grad_a/grad_b take Eigen arrays or scalars in
// any mix; grad_x(g, x, z) is dL/dx given dL/dout = g. needs_values says whether backward reads
// x and z at all (add and sub do not, so they keep no inputs alive).
struct AddOp {
    static constexpr const char* name = "add";
    static constexpr bool needs_values = false;
    template <typename X, typename Z>
    static auto forward(const X& x, const Z& z) { return x + z; }
    template <typename G, typename X, typename Z>
    static auto grad_a(const G& g, const X&, const Z&) { return g; }
    template <typename G, typename X, typename Z>
    static auto grad_b(const G& g, const X&, const Z&) { return g; }
};

struct SubOp {
    static constexpr const char* name = "sub";
    static constexpr bool needs_values = false;
    template <typename X, typename Z>
    static auto forward(const X& x, const Z& z) { return x - z; }
    template <typename G, typename X, typename Z>
    static auto grad_a(const G& g, const X&, const Z&) { return g; }
    template <typename G, typename X, typename Z>
    static auto grad_b(const G& g, const X&, const Z&) { return -g; }
};

struct MulOp {
    static constexpr const char* name = "mul";
    static constexpr bool needs_values = true;
    template <typename X, typename Z>
    static auto forward(const X& x, const Z& z) { return x * z; }
    template <typename G, typename X, typename Z>
    static auto grad_a(const G& g, const X&, const Z& z) { return g * z; }
    template <typename G, typename X, typename Z>
    static auto grad_b(const G& g, const X& x, const Z&) { return g * x; }
};

struct DivOp {
    static constexpr const char* name = "div";
    static constexpr bool needs_values = true;
    template <typename X, typename Z>
    static auto forward(const X& x, const Z& z) { return x / z; }
    template <typename G, typename X, typename Z>
    static auto grad_a(const G& g, const X&, const Z& z) { return g / z; }
    // d(x/z)/dz = -x / z^2
    template <typename G, typename X, typename Z>
    static auto grad_b(const G& g, const X& x, const Z& z) { return -(g * x) / (z * z); }
};

template <typename Op, typename T>
void binary_forward(const BroadcastPlan& plan, const T* a, const T* b, T* y) {
    if (numel(plan.out) == 0) return;
    if (plan.strided) {
        for_each_strided(plan, [&](Index k, Index ia, Index ib) { y[k] = Op::forward(a[ia], b[ib]); });
        return;
    }
    const Index cols = plan.cols;
    for_each_row(plan, a, b, [&](Index i, const auto& x, const auto& z) {
        ElemArray<T>(y + i * cols, cols) = Op::forward(x, z);
    });
}

// grad += dL/da (for_a) or dL/db, reduced to that input's shape. `a` and `b` are the input
// values, null when Op does not need them.
template <typename Op, bool for_a, typename T>
void binary_backward(const BroadcastPlan& plan, const T* g, const T* a, const T* b, Node<T>& target) {
    // A grad that holds nothing yet is written rather than added to where each element gets
    // exactly one contribution (the input had the output's shape); elsewhere it starts at zero.
    const Cover cover = for_a ? plan.a : plan.b;
    bool assign = false;
    T* grad = target.grad_data_for_write(assign);
    if (assign && (plan.strided || cover != Cover::Full || numel(plan.out) == 0)) {
        std::fill_n(grad, target.numel(), T(0));
        assign = false;
    }
    if (numel(plan.out) == 0) return;
    auto partial = [](const auto& dy, const auto& x, const auto& z) {
        if constexpr (for_a) {
            return Op::grad_a(dy, x, z);
        } else {
            return Op::grad_b(dy, x, z);
        }
    };
    if (plan.strided) {
        for_each_strided(plan, [&](Index k, Index ia, Index ib) {
            const T x = Op::needs_values ? a[ia] : T(0);
            const T z = Op::needs_values ? b[ib] : T(0);
            grad[for_a ? ia : ib] += partial(g[k], x, z);
        });
        return;
    }
    const Index cols = plan.cols;
    auto g_row = [g, cols](Index i) { return ConstElemArray<T>(g + i * cols, cols); };
    if constexpr (Op::needs_values) {
        for_each_row(plan, a, b, [&](Index i, const auto& x, const auto& z) {
            accumulate_row(grad, cover, i, cols, partial(g_row(i), x, z), assign);
        });
    } else {
        for (Index i = 0; i < plan.rows; ++i)
            accumulate_row(grad, cover, i, cols, partial(g_row(i), T(0), T(0)), assign);
    }
}

template <typename Op, typename T>
Tensor<T> binary_op(const Tensor<T>& a, const Tensor<T>& b) {
    BroadcastPlan plan = plan_broadcast(a.shape(), b.shape(), Op::name);
    Tensor<T> out = make_op_result<T>(plan.out, Op::name, {&a, &b});  // broadcast of a and b
    binary_forward<Op>(plan, a.data(), b.data(), out.data());
    std::shared_ptr<Storage<T>> a_values, b_values;
    if constexpr (Op::needs_values) {
        a_values = a.storage();
        b_values = b.storage();
    }
    set_backward(out, [plan = std::move(plan), a_node = grad_target(a), b_node = grad_target(b),
                       a_values, b_values](Node<T>& self) {
        const T* g = self.grad->data();
        const T* x = a_values ? a_values->data() : nullptr;
        const T* z = b_values ? b_values->data() : nullptr;
        if (a_node) binary_backward<Op, true>(plan, g, x, z, *a_node);
        if (b_node) {
            // The residual add's second input takes dL/dout as it is: hand the buffer over.
            if (std::is_same_v<Op, AddOp> && plan.b == Cover::Full && !plan.strided && !b_node->grad &&
                !self.retains_grad && b_node->numel() == self.numel()) {
                b_node->grad = std::move(self.grad);
                b_node->grad_is_zero = false;
                return;
            }
            binary_backward<Op, false>(plan, g, x, z, *b_node);
        }
    });
    return out;
}

// ---- unary ----------------------------------------------------------------------------------

// What a unary op's backward reads besides dL/dy: the input x, the output y (free: the node
// keeps its own values, so nothing extra stays alive), or nothing at all (x + s, x * s, -x): then
// the output's values can be freed as soon as no handle reaches them, while the graph lives.
enum class UnaryKeeps { Input, Output, Nothing };

// The skeleton of every pointwise op: forward(y, x) fills the output map y from the input map x;
// grad(dx, dy, saved) adds dL/dx into the map dx given dL/dy, where `saved` is x or y as `keeps`
// says (with Nothing it is dy again, and unused); a functor taking a fourth argument, `assign`, is
// told when it may write dx instead. Both work on whole-buffer Eigen array maps. (Eigen
// vectorises arithmetic, exp, log, tanh, erf, ... but not comparisons or select(), which run one
// scalar at a time; ops that branch per element do so in plain loops the compiler can vectorise.)
template <typename T, typename Forward, typename Grad>
Tensor<T> elementwise_unary(const Tensor<T>& a, const char* name, UnaryKeeps keeps, Forward forward,
                            Grad grad) {
    Tensor<T> out = make_op_result<T>(a.shape(), name, {&a});  // same shape as a
    const Index n = a.numel();
    ElemArray<T> y(out.data(), n);
    forward(y, ConstElemArray<T>(a.data(), n));
    std::shared_ptr<Storage<T>> input = keeps == UnaryKeeps::Input ? a.storage() : nullptr;
    out.node()->backward_reads_value = keeps == UnaryKeeps::Output;
    const bool reads_output = keeps == UnaryKeeps::Output;
    set_backward(out, [a_node = grad_target(a), input = std::move(input), reads_output, grad](Node<T>& self) {
        if (!a_node) return;
        const Index count = self.numel();
        const T* saved = input ? input->data() : reads_output ? self.value->data() : self.grad->data();
        const ConstElemArray<T> dy(self.grad->data(), count), kept(saved, count);
        if constexpr (std::is_invocable_v<Grad&, ElemArray<T>&, const ConstElemArray<T>&,
                                          const ConstElemArray<T>&, bool>) {
            // The functor can write dx outright when it holds nothing yet (no zero fill).
            bool assign = false;
            ElemArray<T> dx(a_node->grad_data_for_write(assign), count);
            grad(dx, dy, kept, assign);
        } else {
            ElemArray<T> dx(a_node->grad_data(), count);
            grad(dx, dy, kept);
        }
    });
    return out;
}

}  // namespace detail

// ---- tensor (op) tensor, broadcasting ---------------------------------------------------------

template <typename T>
Tensor<T> add(const Tensor<T>& a, const Tensor<T>& b) {
    return detail::binary_op<detail::AddOp>(a, b);
}
template <typename T>
Tensor<T> sub(const Tensor<T>& a, const Tensor<T>& b) {
    return detail::binary_op<detail::SubOp>(a, b);
}
template <typename T>
Tensor<T> mul(const Tensor<T>& a, const Tensor<T>& b) {
    return detail::binary_op<detail::MulOp>(a, b);
}
template <typename T>
Tensor<T> div(const Tensor<T>& a, const Tensor<T>& b) {
    return detail::binary_op<detail::DivOp>(a, b);
}

// ---- tensor (op) scalar -----------------------------------------------------------------------

template <typename T>
Tensor<T> add(const Tensor<T>& a, detail::ScalarOf<T> s) {
    return detail::elementwise_unary(
        a, "add", detail::UnaryKeeps::Nothing, [s](auto& y, const auto& x) { y = x + s; },
        [](auto& dx, const auto& dy, const auto&) { dx += dy; });
}
template <typename T>
Tensor<T> add(detail::ScalarOf<T> s, const Tensor<T>& a) {
    return add(a, s);
}
template <typename T>
Tensor<T> sub(const Tensor<T>& a, detail::ScalarOf<T> s) {
    return detail::elementwise_unary(
        a, "sub", detail::UnaryKeeps::Nothing, [s](auto& y, const auto& x) { y = x - s; },
        [](auto& dx, const auto& dy, const auto&) { dx += dy; });
}
template <typename T>
Tensor<T> sub(detail::ScalarOf<T> s, const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "sub", detail::UnaryKeeps::Nothing, [s](auto& y, const auto& x) { y = s - x; },
        [](auto& dx, const auto& dy, const auto&) { dx -= dy; });
}
template <typename T>
Tensor<T> mul(const Tensor<T>& a, detail::ScalarOf<T> s) {
    return detail::elementwise_unary(
        a, "mul", detail::UnaryKeeps::Nothing, [s](auto& y, const auto& x) { y = x * s; },
        [s](auto& dx, const auto& dy, const auto&) { dx += dy * s; });
}
template <typename T>
Tensor<T> mul(detail::ScalarOf<T> s, const Tensor<T>& a) {
    return mul(a, s);
}
template <typename T>
Tensor<T> div(const Tensor<T>& a, detail::ScalarOf<T> s) {
    return detail::elementwise_unary(
        a, "div", detail::UnaryKeeps::Nothing, [s](auto& y, const auto& x) { y = x / s; },
        [s](auto& dx, const auto& dy, const auto&) { dx += dy / s; });
}
// s / x; d/dx = -s / x^2.
template <typename T>
Tensor<T> div(detail::ScalarOf<T> s, const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "div", detail::UnaryKeeps::Input, [s](auto& y, const auto& x) { y = s / x; },
        [s](auto& dx, const auto& dy, const auto& x) { dx -= dy * s / x.square(); });
}

// ---- operators --------------------------------------------------------------------------------

template <typename T>
Tensor<T> operator+(const Tensor<T>& a, const Tensor<T>& b) { return add(a, b); }
template <typename T>
Tensor<T> operator-(const Tensor<T>& a, const Tensor<T>& b) { return sub(a, b); }
template <typename T>
Tensor<T> operator*(const Tensor<T>& a, const Tensor<T>& b) { return mul(a, b); }
template <typename T>
Tensor<T> operator/(const Tensor<T>& a, const Tensor<T>& b) { return div(a, b); }

template <typename T>
Tensor<T> operator+(const Tensor<T>& a, detail::ScalarOf<T> s) { return add(a, s); }
template <typename T>
Tensor<T> operator+(detail::ScalarOf<T> s, const Tensor<T>& a) { return add(s, a); }
template <typename T>
Tensor<T> operator-(const Tensor<T>& a, detail::ScalarOf<T> s) { return sub(a, s); }
template <typename T>
Tensor<T> operator-(detail::ScalarOf<T> s, const Tensor<T>& a) { return sub(s, a); }
template <typename T>
Tensor<T> operator*(const Tensor<T>& a, detail::ScalarOf<T> s) { return mul(a, s); }
template <typename T>
Tensor<T> operator*(detail::ScalarOf<T> s, const Tensor<T>& a) { return mul(s, a); }
template <typename T>
Tensor<T> operator/(const Tensor<T>& a, detail::ScalarOf<T> s) { return div(a, s); }
template <typename T>
Tensor<T> operator/(detail::ScalarOf<T> s, const Tensor<T>& a) { return div(s, a); }

// ---- unary ------------------------------------------------------------------------------------

template <typename T>
Tensor<T> neg(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "neg", detail::UnaryKeeps::Nothing, [](auto& y, const auto& x) { y = -x; },
        [](auto& dx, const auto& dy, const auto&) { dx -= dy; });
}
template <typename T>
Tensor<T> operator-(const Tensor<T>& a) { return neg(a); }

// d e^x = e^x dx, read back from the output.
template <typename T>
Tensor<T> exp(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "exp", detail::UnaryKeeps::Output, [](auto& y, const auto& x) { y = x.exp(); },
        [](auto& dx, const auto& dy, const auto& y) { dx += dy * y; });
}

// Natural log; d log x = dx / x.
template <typename T>
Tensor<T> log(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "log", detail::UnaryKeeps::Input, [](auto& y, const auto& x) { y = x.log(); },
        [](auto& dx, const auto& dy, const auto& x) { dx += dy / x; });
}

// d sqrt(x) = dx / (2 sqrt(x)), from the output.
template <typename T>
Tensor<T> sqrt(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "sqrt", detail::UnaryKeeps::Output, [](auto& y, const auto& x) { y = x.sqrt(); },
        [](auto& dx, const auto& dy, const auto& y) { dx += T(0.5) * dy / y; });
}

// x^p for a scalar exponent; d x^p = p x^(p-1) dx, and no gradient at all for p = 0 (where
// 0 * x^-1 would make NaN at x = 0).
template <typename T>
Tensor<T> pow(const Tensor<T>& a, detail::ScalarOf<T> p) {
    return detail::elementwise_unary(
        a, "pow", detail::UnaryKeeps::Input, [p](auto& y, const auto& x) { y = x.pow(p); },
        [p](auto& dx, const auto& dy, const auto& x) {
            if (p != T(0)) dx += dy * p * x.pow(p - T(1));
        });
}

// x^2; d x^2 = 2x dx.
template <typename T>
Tensor<T> square(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "square", detail::UnaryKeeps::Input, [](auto& y, const auto& x) { y = x.square(); },
        [](auto& dx, const auto& dy, const auto& x) { dx += T(2) * dy * x; });
}

// d tanh x = (1 - tanh^2 x) dx, from the output.
template <typename T>
Tensor<T> tanh(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "tanh", detail::UnaryKeeps::Output, [](auto& y, const auto& x) { y = x.tanh(); },
        [](auto& dx, const auto& dy, const auto& y) { dx += dy * (T(1) - y.square()); });
}

// 1 / (1 + e^-x): e^-x overflows to inf for very negative x, giving exactly 0, never NaN.
// d sigmoid = y (1 - y) dx, from the output.
template <typename T>
Tensor<T> sigmoid(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "sigmoid", detail::UnaryKeeps::Output,
        [](auto& y, const auto& x) { y = (T(1) + (-x).exp()).inverse(); },
        [](auto& dx, const auto& dy, const auto& y) { dx += dy * y * (T(1) - y); });
}

// max(x, 0); the gradient passes where the output is positive (x > 0).
template <typename T>
Tensor<T> relu(const Tensor<T>& a) {
    return detail::elementwise_unary(
        a, "relu", detail::UnaryKeeps::Output, [](auto& y, const auto& x) { y = x.max(T(0)); },
        [](auto& dx, const auto& dy, const auto& y) {
            for (Index i = 0; i < dx.size(); ++i) dx[i] += y[i] > T(0) ? dy[i] : T(0);
        });
}

// x * Phi(x) with Phi the standard normal CDF, Phi(x) = (1 + erf(x / sqrt 2)) / 2: the exact
// GELU of nn.GELU(), not the tanh approximation. d gelu = (Phi(x) + x phi(x)) dx, phi the pdf.
template <typename T>
Tensor<T> gelu(const Tensor<T>& a) {
    const T inv_sqrt2 = T(0.70710678118654752440);
    const T inv_sqrt_2pi = T(0.39894228040143267794);
    return detail::elementwise_unary(
        a, "gelu", detail::UnaryKeeps::Input,
        [inv_sqrt2](auto& y, const auto& x) { y = T(0.5) * x * (T(1) + (x * inv_sqrt2).erf()); },
        [inv_sqrt2, inv_sqrt_2pi](auto& dx, const auto& dy, const auto& x, bool assign) {
            const auto slope = T(0.5) * (T(1) + (x * inv_sqrt2).erf()) + x * inv_sqrt_2pi * (T(-0.5) * x.square()).exp();
            if (assign) {
                dx = dy * slope;
            } else {
                dx += dy * slope;
            }
        });
}

// log(1 + e^x) as F.softplus (beta 1, threshold 20): computed as max(x, 0) + log1p(e^-|x|),
// which never overflows and keeps tiny values exact for very negative x, then x itself above
// the threshold, as torch does. d softplus = sigmoid(x) dx, exactly dx above the threshold.
template <typename T>
Tensor<T> softplus(const Tensor<T>& a) {
    const T threshold = T(20);
    return detail::elementwise_unary(
        a, "softplus", detail::UnaryKeeps::Input,
        [threshold](auto& y, const auto& x) {
            y = x.max(T(0)) + (-x.abs()).exp().log1p();
            for (Index i = 0; i < y.size(); ++i) y[i] = x[i] > threshold ? x[i] : y[i];
        },
        [threshold](auto& dx, const auto& dy, const auto& x) {
            Eigen::Array<T, Eigen::Dynamic, 1> slope = (T(1) + (-x).exp()).inverse();  // sigmoid(x)
            for (Index i = 0; i < slope.size(); ++i) slope[i] = x[i] > threshold ? T(1) : slope[i];
            dx += dy * slope;
        });
}

// ---- masking ----------------------------------------------------------------------------------

// a with every element where mask != 0 replaced by `value`; mask broadcasts to a's shape (as in
// add) and is not differentiated. Filled elements pass no gradient back to a.
template <typename T>
Tensor<T> masked_fill(const Tensor<T>& a, const Tensor<T>& mask, detail::ScalarOf<T> value) {
    detail::BroadcastPlan plan = detail::plan_broadcast(a.shape(), mask.shape(), "masked_fill");
    SEEMOE_CHECK(plan.out == a.shape(), "[masked_fill] mask of shape ", shape_str(mask.shape()),
                 " does not broadcast to the input shape ", shape_str(a.shape()));
    Tensor<T> out = detail::make_op_result<T>(a.shape(), "masked_fill", {&a});  // same shape as a
    const T* x = a.data();
    const T* m = mask.data();
    T* y = out.data();
    const Index cols = plan.cols;
    // a has the output's shape, so it is always Full; the mask may be any cover.
    const bool mask_is_row = plan.b == detail::Cover::Full || plan.b == detail::Cover::Row;
    if (plan.strided) {
        detail::for_each_strided(plan, [&](Index k, Index ia, Index im) { y[k] = m[im] != T(0) ? value : x[ia]; });
    } else if (mask_is_row) {
        for (Index i = 0; i < plan.rows; ++i) {
            const T* m_row = plan.b == detail::Cover::Full ? m + i * cols : m;
            const T* x_row = x + i * cols;
            T* y_row = y + i * cols;
            for (Index j = 0; j < cols; ++j) y_row[j] = m_row[j] != T(0) ? value : x_row[j];
        }
    } else {
        for (Index i = 0; i < plan.rows; ++i) {
            const bool fill = m[plan.b == detail::Cover::Col ? i : 0] != T(0);
            detail::ElemArray<T> y_row(y + i * cols, cols);
            if (fill) {
                y_row.setConstant(value);
            } else {
                y_row = detail::ConstElemArray<T>(x + i * cols, cols);
            }
        }
    }
    detail::set_backward(out, [plan = std::move(plan), a_node = detail::grad_target(a),
                               mask_values = mask.storage()](Node<T>& self) {
        if (!a_node || numel(plan.out) == 0) return;
        const T* g = self.grad->data();
        const T* mv = mask_values->data();
        T* ga = a_node->grad_data();
        const Index c = plan.cols;
        if (plan.strided) {
            detail::for_each_strided(plan, [&](Index k, Index ia, Index im) {
                if (mv[im] == T(0)) ga[ia] += g[k];
            });
        } else if (plan.b == detail::Cover::Full || plan.b == detail::Cover::Row) {
            for (Index i = 0; i < plan.rows; ++i) {
                const T* m_row = plan.b == detail::Cover::Full ? mv + i * c : mv;
                const T* g_row = g + i * c;
                T* ga_row = ga + i * c;
                for (Index j = 0; j < c; ++j) ga_row[j] += m_row[j] != T(0) ? T(0) : g_row[j];
            }
        } else {
            for (Index i = 0; i < plan.rows; ++i) {
                if (mv[plan.b == detail::Cover::Col ? i : 0] == T(0))
                    detail::ElemArray<T>(ga + i * c, c) += detail::ConstElemArray<T>(g + i * c, c);
            }
        }
    });
    return out;
}

}  // namespace seemoe
