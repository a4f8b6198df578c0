// seemoe/core/autograd.hpp — the graph and the reverse-mode engine, at tensor granularity.
//
// Every tensor is a handle to a Node. A node made by an op remembers its parents and one
// backward closure. The closure receives the node itself (`self`), reads `self.grad` (dL/dout)
// and ACCUMULATES (+=) into each parent's grad — a parent used twice simply receives two
// contributions. A closure captures the parent nodes it writes to and whatever buffers it needs,
// never the handle of its own output: that would be a cycle and leak the graph.
//
// backward(root): seed d(root)/d(root) = 1, order the nodes with an iterative depth-first
// topological sort (an explicit stack, so a 100,000-op chain cannot overflow the call stack),
// run the closures from the root down, then release the graph — parents and closures are
// dropped, so activations are freed as soon as the loss handle goes away.
//
// Leaves (tensors you made, with requires_grad) keep their .grad and accumulate across
// backward calls until zero_grad(), as in PyTorch; intermediate grads are freed once used.
// NoGradGuard switches graph building off for evaluation and generation.
//
// Writing an op: docs/writing-an-op.md lists the rules a closure follows (what it may read, the
// backward_reads_value flag, buffer reuse, threads, tests), with softmax as the worked example.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_set>
#include <utility>
#include <vector>

#include "shape.hpp"
#include "storage.hpp"

namespace seemoe {

template <typename T>
struct Node {
    using BackwardFn = std::function<void(Node&)>;

    Shape shape;
    std::shared_ptr<Storage<T>> value;  // the forward values, row-major
    std::shared_ptr<Storage<T>> grad;   // dL/d(this), allocated on first use
    bool grad_is_zero = false;          // grad's contents are stale and stand for zeros
    bool requires_grad = false;
    bool retains_grad = false;          // keep grad of a non-leaf (Tensor::retain_grad)
    bool backward_reads_value = false;  // the closure reads self.value (e.g. exp, softmax)
    const char* op = "leaf";
    bool released = false;              // an op result whose graph backward() already freed
    std::atomic<int> handles{0};        // Tensor handles on this node (graph edges not counted)
    std::vector<std::shared_ptr<Node>> parents;
    BackwardFn backward_fn;

    Node() = default;
    Node(const Node&) = delete;
    Node& operator=(const Node&) = delete;

    Index numel() const { return seemoe::numel(shape); }
    bool is_leaf() const { return !backward_fn && !released; }

    // The grad buffer, zero-filled on first request. Backward closures call this on each
    // parent that requires grad and add into it.
    T* grad_data() {
        if (!grad) {
            grad = std::make_shared<Storage<T>>(numel());
            grad_is_zero = true;
        }
        if (grad_is_zero) {
            std::fill_n(grad->data(), numel(), T(0));
            grad_is_zero = false;
        }
        return grad->data();
    }

    // For a closure that produces its whole contribution in one pass: the grad buffer, and in
    // `overwrite` whether it holds nothing yet. Then the closure must WRITE every element
    // (dst = contribution) instead of adding, which saves the zero fill and a read of the
    // buffer; otherwise it adds as usual.
    T* grad_data_for_write(bool& overwrite) {
        if (!grad) {
            grad = std::make_shared<Storage<T>>(numel());
            grad_is_zero = true;
        }
        overwrite = grad_is_zero;
        grad_is_zero = false;
        return grad->data();
    }

    // The value buffer can go once no Tensor handle can reach this node and its own closure
    // does not read it: the closures of its consumers hold (and share) whatever they saved.
    // This is what frees the activations that backward never reads while the graph is alive.
    void drop_value_if_unreachable() {
        if (handles.load(std::memory_order_acquire) == 0 && backward_fn && !backward_reads_value) value.reset();
    }

    // Dropping a long chain by plain recursion (node -> parent -> parent ...) would overflow the
    // stack, so the parents of a dying node are released with an explicit work list. Every node
    // a closure captures is also in `parents` (make_op_result guarantees it), so clearing the
    // closure first never frees a node recursively.
    ~Node() {
        std::vector<std::shared_ptr<Node>> pending = std::move(parents);
        backward_fn = nullptr;
        while (!pending.empty()) {
            std::shared_ptr<Node> n = std::move(pending.back());
            pending.pop_back();
            if (n.use_count() == 1) {
                n->backward_fn = nullptr;
                for (auto& p : n->parents) pending.push_back(std::move(p));
                n->parents.clear();
            }
        }
    }
};

// Graph building on/off, per thread. Use NoGradGuard rather than setting it by hand.
struct GradMode {
    static bool& enabled_flag() {
        thread_local bool enabled = true;
        return enabled;
    }
    static bool is_enabled() { return enabled_flag(); }
    static void set_enabled(bool on) { enabled_flag() = on; }
};

// RAII: no graph is built while one is alive (like torch::NoGradGuard).
class NoGradGuard {
public:
    NoGradGuard() : previous_(GradMode::is_enabled()) { GradMode::set_enabled(false); }
    ~NoGradGuard() { GradMode::set_enabled(previous_); }
    NoGradGuard(const NoGradGuard&) = delete;
    NoGradGuard& operator=(const NoGradGuard&) = delete;

private:
    bool previous_;
};

namespace detail {

// Nodes reachable from `root` through nodes that require grad, parents before children.
template <typename T>
std::vector<Node<T>*> topological_order(Node<T>* root) {
    std::vector<Node<T>*> order;
    std::unordered_set<Node<T>*> visited;
    // Each frame is (node, index of the next parent to visit).
    std::vector<std::pair<Node<T>*, std::size_t>> stack;
    stack.emplace_back(root, 0);
    visited.insert(root);
    while (!stack.empty()) {
        auto& [node, next] = stack.back();
        if (next < node->parents.size()) {
            Node<T>* parent = node->parents[next++].get();
            if (parent->requires_grad && visited.insert(parent).second) stack.emplace_back(parent, 0);
        } else {
            order.push_back(node);
            stack.pop_back();
        }
    }
    return order;
}

// The engine behind Tensor::backward. `seed` is dL/d(root), of root's size, or null for 1s.
template <typename T>
void run_backward(const std::shared_ptr<Node<T>>& root, const T* seed, bool retain_graph) {
    SEEMOE_CHECK(!root->released, "[backward] the graph of this tensor (op '", root->op,
                 "') was already freed by an earlier backward(); pass retain_graph = true to the "
                 "first call to run backward through it again");
    SEEMOE_CHECK(root->requires_grad,
                 "[backward] the tensor does not require grad (op '", root->op,
                 "'): did you build it under NoGradGuard or from tensors without requires_grad?");
    const std::vector<Node<T>*> order = topological_order(root.get());
    // The grads of non-leaf nodes belong to one pass. A node that retain_grad() keeps still
    // holds the previous pass's gradient, which must not flow down again: set it aside and
    // add it back at the end (so it accumulates across passes, as in torch).
    std::vector<std::pair<Node<T>*, std::shared_ptr<Storage<T>>>> earlier_grads;
    for (Node<T>* node : order) {
        if (!node->is_leaf() && node->grad) {
            if (!node->grad_is_zero) earlier_grads.emplace_back(node, std::move(node->grad));
            node->grad.reset();
        }
    }
    T* g = root->grad_data();
    const Index n = root->numel();
    for (Index i = 0; i < n; ++i) g[i] += seed ? seed[i] : T(1);

    // Graph building stays off while closures run: backward of backward is not supported.
    NoGradGuard no_grad;
    for (auto it = order.rbegin(); it != order.rend(); ++it) {
        Node<T>* node = *it;
        if (node->is_leaf()) continue;
        if (node->grad && node->backward_fn) {  // a released node passes nothing on
            if (node->grad_is_zero) node->grad_data();
            node->backward_fn(*node);
        }
        if (!node->retains_grad) node->grad.reset();
        if (!retain_graph) {
            // Every consumer of this node ran before it: its values are needed only by handles.
            const bool reachable = node->handles.load(std::memory_order_acquire) > 0;
            node->backward_fn = nullptr;  // frees the buffers the closure saved
            node->released = true;
            if (!reachable) node->value.reset();
        }
    }
    for (auto& [node, earlier] : earlier_grads) {
        T* now = node->grad_data();
        const T* before = earlier->data();
        for (Index i = 0, m = node->numel(); i < m; ++i) now[i] += before[i];
    }
    if (retain_graph) return;
    // Cut the edges parents-first: a node freed here has had its own edges cut already, so no
    // release cascades and no pointer in `order` is used after its node is gone.
    for (Node<T>* node : order) node->parents.clear();
}

}  // namespace detail
}  // namespace seemoe
