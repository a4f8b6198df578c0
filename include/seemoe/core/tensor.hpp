// seemoe/core/tensor.hpp — Tensor<T>, the handle everything else passes around.
//
// Tensor<T> has pointer semantics, like torch::Tensor: copying a Tensor shares the node (shape,
// values, grad, graph edges); use clone() for a deep copy. Values are contiguous row-major:
// shape (B, T, C) keeps element (b, t, c) at data()[((b*T)+t)*C+c]. T is float for training and
// double for gradient checks (aliases Tensorf, Tensord).
//
// Ops are free functions in the ops/ headers (add, matmul, softmax, ...). Each one builds its
// result with detail::make_op_result, computes the forward, and attaches its backward closure
// right there (see autograd.hpp for the rules a closure follows).
#pragma once

#include <Eigen/Core>
#include <initializer_list>
#include <iomanip>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "autograd.hpp"

namespace seemoe {

template <typename T>
using MatrixRM = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixMap = Eigen::Map<MatrixRM<T>>;
template <typename T>
using ConstMatrixMap = Eigen::Map<const MatrixRM<T>>;
template <typename T>
using VectorMap = Eigen::Map<Eigen::Matrix<T, Eigen::Dynamic, 1>>;
template <typename T>
using ConstVectorMap = Eigen::Map<const Eigen::Matrix<T, Eigen::Dynamic, 1>>;

template <typename T>
class Tensor {
public:
    using Scalar = T;

    Tensor() = default;  // an undefined tensor (defined() == false)
    explicit Tensor(std::shared_ptr<Node<T>> node) : node_(std::move(node)) { acquire(); }

    // Handles are counted on the node, so that an activation nobody can reach any more (and
    // that backward does not read) is freed at once rather than when the graph goes.
    Tensor(const Tensor& other) : node_(other.node_) { acquire(); }
    Tensor(Tensor&& other) noexcept : node_(std::move(other.node_)) {}
    Tensor& operator=(const Tensor& other) {
        if (node_ != other.node_) {
            release();
            node_ = other.node_;
            acquire();
        }
        return *this;
    }
    Tensor& operator=(Tensor&& other) noexcept {
        if (this != &other) {
            release();
            node_ = std::move(other.node_);
        }
        return *this;
    }
    ~Tensor() { release(); }

    // ---- factories -------------------------------------------------------------------------
    // Uninitialised values; for ops that overwrite every element.
    static Tensor empty(const Shape& shape) {
        for (Index s : shape)
            SEEMOE_CHECK(s >= 0, "[Tensor] negative size in shape ", shape_str(shape));
        auto node = std::make_shared<Node<T>>();
        node->shape = shape;
        node->value = std::make_shared<Storage<T>>(seemoe::numel(shape));
        return Tensor(std::move(node));
    }
    static Tensor full(const Shape& shape, T fill) {
        Tensor t = empty(shape);
        std::fill_n(t.data(), t.numel(), fill);
        return t;
    }
    static Tensor zeros(const Shape& shape) { return full(shape, T(0)); }
    static Tensor ones(const Shape& shape) { return full(shape, T(1)); }
    static Tensor scalar(T value) { return full({}, value); }
    // 0, 1, ..., n-1 (or start, start+step, ... below end), as a 1-D tensor.
    static Tensor arange(Index n) { return arange(0, n, 1); }
    static Tensor arange(Index start, Index end, Index step = 1) {
        SEEMOE_CHECK(step != 0, "[arange] step must be nonzero");
        const Index n = std::max<Index>(0, (end - start + step - (step > 0 ? 1 : -1)) / step);
        Tensor t = empty({n});
        for (Index i = 0; i < n; ++i) t.data()[i] = static_cast<T>(start + i * step);
        return t;
    }
    static Tensor from_vector(const Shape& shape, const std::vector<T>& values) {
        SEEMOE_CHECK(static_cast<Index>(values.size()) == seemoe::numel(shape), "[from_vector] ",
                     values.size(), " values do not fill shape ", shape_str(shape));
        Tensor t = empty(shape);
        std::copy(values.begin(), values.end(), t.data());
        return t;
    }
    // N(mean, stddev^2) samples from `rng`.
    static Tensor randn(const Shape& shape, Rng& rng, T mean = T(0), T stddev = T(1)) {
        Tensor t = empty(shape);
        for (Index i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(rng.normal(mean, stddev));
        return t;
    }
    // Uniform in [lo, hi).
    static Tensor rand(const Shape& shape, Rng& rng, T lo = T(0), T hi = T(1)) {
        Tensor t = empty(shape);
        for (Index i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(rng.uniform(lo, hi));
        return t;
    }
    // Integers uniform in [lo, hi), stored as T (indices are passed to ops as std::vector<Index>
    // or as integral-valued tensors).
    static Tensor randint(const Shape& shape, Index lo, Index hi, Rng& rng) {
        Tensor t = empty(shape);
        for (Index i = 0; i < t.numel(); ++i) t.data()[i] = static_cast<T>(rng.randint(lo, hi));
        return t;
    }

    // ---- shape and values ------------------------------------------------------------------
    bool defined() const { return static_cast<bool>(node_); }
    const Shape& shape() const { return checked().shape; }
    Index dim() const { return static_cast<Index>(shape().size()); }
    Index size(Index axis) const { return shape()[normalize_axis(axis, dim(), "size")]; }
    Index numel() const { return checked().numel(); }
    T* data() { return checked().value->data(); }
    const T* data() const { return checked().value->data(); }
    const char* op() const { return checked().op; }

    // Element access for tests and small loops: t.at({b, t, c}).
    T& at(std::initializer_list<Index> index) { return data()[offset(index)]; }
    T at(std::initializer_list<Index> index) const { return data()[offset(index)]; }
    T item() const {
        SEEMOE_CHECK(numel() == 1, "[item] needs a tensor with one element, got shape ",
                     shape_str(shape()));
        return data()[0];
    }
    std::vector<T> to_vector() const { return std::vector<T>(data(), data() + numel()); }

    // The values as a (rows, cols) row-major Eigen map; rows*cols must equal numel().
    MatrixMap<T> matrix(Index rows, Index cols) {
        SEEMOE_CHECK(rows * cols == numel(), "[matrix] ", rows, "x", cols, " does not match shape ",
                     shape_str(shape()));
        return MatrixMap<T>(data(), rows, cols);
    }
    ConstMatrixMap<T> matrix(Index rows, Index cols) const {
        SEEMOE_CHECK(rows * cols == numel(), "[matrix] ", rows, "x", cols, " does not match shape ",
                     shape_str(shape()));
        return ConstMatrixMap<T>(data(), rows, cols);
    }
    VectorMap<T> vector() { return VectorMap<T>(data(), numel()); }
    ConstVectorMap<T> vector() const { return ConstVectorMap<T>(data(), numel()); }

    // ---- autograd --------------------------------------------------------------------------
    bool requires_grad() const { return checked().requires_grad; }
    // Marks a leaf as a parameter/input whose gradient we want.
    Tensor& requires_grad_(bool on = true) {
        SEEMOE_CHECK(is_leaf() || on, "[requires_grad_] can only switch grad off on a leaf");
        checked().requires_grad = on;
        return *this;
    }
    bool is_leaf() const { return checked().is_leaf(); }
    // Keep this non-leaf's gradient after backward (torch's retain_grad()).
    Tensor& retain_grad() {
        checked().retains_grad = true;
        return *this;
    }
    bool has_grad() const { return static_cast<bool>(checked().grad); }
    // The accumulated gradient as a new tensor (zeros if none yet); copies, for inspection.
    Tensor grad() const {
        Tensor g = zeros(shape());
        if (has_grad() && !checked().grad_is_zero) std::copy_n(checked().grad->data(), numel(), g.data());
        return g;
    }
    // Direct access to the gradient buffer (allocated, zero-filled, on first use); optimisers
    // and tests that set a gradient use this.
    T* grad_data() { return checked().grad_data(); }
    const T* grad_data_if_any() const { return has_grad() ? checked().grad_data() : nullptr; }
    // Zeroes the gradient, keeping its buffer. The zero fill is deferred: the next backward that
    // writes the whole gradient overwrites it instead, so a training loop never pays for it.
    void zero_grad() {
        if (has_grad()) checked().grad_is_zero = true;
    }
    // Drop the gradient buffer entirely (torch's zero_grad(set_to_none=True)).
    void reset_grad() { checked().grad.reset(); }

    // Same values (shared, not copied), cut from the graph, requires_grad false.
    Tensor detach() const {
        auto node = std::make_shared<Node<T>>();
        node->shape = shape();
        node->value = checked().value;
        return Tensor(std::move(node));
    }
    // Deep copy of the values, as a new leaf.
    Tensor clone() const {
        Tensor t = empty(shape());
        std::copy_n(data(), numel(), t.data());
        return t;
    }

    // Reverse-mode differentiation from this tensor. A non-scalar needs an explicit seed
    // (dL/dthis, same shape).
    void backward(bool retain_graph = false) const {
        SEEMOE_CHECK(numel() == 1, "[backward] called on shape ", shape_str(shape()),
                     ": backward() without a seed needs a one-element (scalar) loss");
        detail::run_backward<T>(node_, nullptr, retain_graph);
    }
    void backward(const Tensor& seed, bool retain_graph = false) const {
        SEEMOE_CHECK(seed.shape() == shape(), "[backward] seed shape ", shape_str(seed.shape()),
                     " differs from tensor shape ", shape_str(shape()));
        detail::run_backward<T>(node_, seed.data(), retain_graph);
    }

    const std::shared_ptr<Node<T>>& node() const { return node_; }
    std::shared_ptr<Storage<T>> storage() const { return checked().value; }
    bool same_node(const Tensor& other) const { return node_ == other.node_; }

    std::string to_string(Index max_elements = 8) const {
        std::ostringstream out;
        out << "Tensor" << shape_str(shape()) << " [";
        const Index n = std::min(numel(), max_elements);
        for (Index i = 0; i < n; ++i) out << (i ? ", " : "") << std::setprecision(6) << data()[i];
        if (numel() > n) out << ", ...";
        out << "]";
        if (requires_grad()) out << " requires_grad";
        return out.str();
    }

private:
    void acquire() {
        if (node_) node_->handles.fetch_add(1, std::memory_order_relaxed);
    }
    void release() {
        if (node_ && node_->handles.fetch_sub(1, std::memory_order_acq_rel) == 1) node_->drop_value_if_unreachable();
    }

    Node<T>& checked() const {
        SEEMOE_CHECK(node_, "[Tensor] use of an undefined tensor");
        return *node_;
    }
    Index offset(std::initializer_list<Index> index) const {
        const Shape& s = shape();
        SEEMOE_CHECK(index.size() == s.size(), "[at] ", index.size(), " indices for shape ",
                     shape_str(s));
        Index flat = 0, axis = 0;
        for (Index i : index) {
            SEEMOE_CHECK(i >= 0 && i < s[axis], "[at] index ", i, " out of range for axis ", axis,
                         " of shape ", shape_str(s));
            flat = flat * s[axis] + i;
            ++axis;
        }
        return flat;
    }

    std::shared_ptr<Node<T>> node_;
};

using Tensorf = Tensor<float>;
using Tensord = Tensor<double>;

template <typename T>
std::ostream& operator<<(std::ostream& out, const Tensor<T>& t) {
    return out << t.to_string();
}

namespace detail {

// The start of every op: a fresh output of `shape` whose values the op fills in. If grad mode is
// on and any input requires grad, the output requires grad and records the inputs as parents;
// the op then calls set_backward. Closures must capture only nodes listed here as inputs.
template <typename T>
Tensor<T> make_op_result(const Shape& shape, const char* op,
                         std::initializer_list<const Tensor<T>*> inputs) {
    Tensor<T> out = Tensor<T>::empty(shape);
    Node<T>& node = *out.node();
    node.op = op;
    if (!GradMode::is_enabled()) return out;
    for (const Tensor<T>* in : inputs) {
        if (in->requires_grad()) node.requires_grad = true;
    }
    if (node.requires_grad) {
        for (const Tensor<T>* in : inputs) {
            if (in->requires_grad()) node.parents.push_back(in->node());
        }
    }
    return out;
}

// Same, for ops with a variable number of inputs (concat).
template <typename T>
Tensor<T> make_op_result(const Shape& shape, const char* op, const std::vector<Tensor<T>>& inputs) {
    Tensor<T> out = Tensor<T>::empty(shape);
    Node<T>& node = *out.node();
    node.op = op;
    if (!GradMode::is_enabled()) return out;
    for (const Tensor<T>& in : inputs) {
        if (in.requires_grad()) {
            node.requires_grad = true;
            node.parents.push_back(in.node());
        }
    }
    return out;
}

// Attach the backward closure (only if the output takes part in the graph).
template <typename T, typename Fn>
void set_backward(Tensor<T>& out, Fn&& fn) {
    if (out.requires_grad()) out.node()->backward_fn = std::forward<Fn>(fn);
}

// The node to accumulate into, or null when that input needs no gradient. Closures capture
// these (`auto a_node = grad_target(a)`) and test for null.
template <typename T>
std::shared_ptr<Node<T>> grad_target(const Tensor<T>& t) {
    return (GradMode::is_enabled() && t.requires_grad()) ? t.node() : nullptr;
}

// An optimiser's zero_grad: zeroes the gradients that exist and keeps their buffers, or with
// set_to_none drops them (see optim/).
template <typename T>
void zero_grads(std::vector<Tensor<T>>& params, bool set_to_none) {
    for (auto& p : params) {
        if (set_to_none) {
            p.reset_grad();
        } else {
            p.zero_grad();
        }
    }
}

}  // namespace detail
}  // namespace seemoe
