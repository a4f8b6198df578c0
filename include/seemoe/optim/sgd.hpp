// seemoe/optim/sgd.hpp — stochastic gradient descent with momentum, as torch.optim.SGD.
//
// The update of one parameter p with gradient g (PyTorch's formulas, same defaults):
//   g  = g + weight_decay * p                          (L2 penalty folded into the gradient)
//   b  = g                                              on the first momentum step,
//   b  = momentum * b + (1 - dampening) * g            afterwards;
//   d  = nesterov ? g + momentum * b : b                (d = g when momentum == 0)
//   p -= lr * d
//
// Convention: the optimiser holds Tensor handles, which share their nodes with the model, so
// step() writes straight into the model's weights. A parameter whose gradient was never
// allocated (it took no part in any backward) is skipped, like a torch parameter whose .grad is
// None. The momentum buffers are public (momentum_buffers()) so a checkpoint can save and restore
// them; a buffer stays undefined until the first step that uses it, as in torch.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cstddef>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"

namespace seemoe {

struct SGDOptions {
    double lr = 1e-3;
    double momentum = 0.0;
    double weight_decay = 0.0;  // L2 penalty, added to the gradient
    double dampening = 0.0;     // scales the new gradient's share of the momentum buffer
    bool nesterov = false;      // needs momentum > 0 and dampening == 0, as in torch
};

template <typename T>
class SGD {
public:
    explicit SGD(std::vector<Tensor<T>> params, SGDOptions options = {})
        : params_(std::move(params)), options_(options), momentum_buffers_(params_.size()) {
        SEEMOE_CHECK(options_.lr >= 0, "[SGD] invalid learning rate ", options_.lr);
        SEEMOE_CHECK(options_.momentum >= 0, "[SGD] invalid momentum ", options_.momentum);
        SEEMOE_CHECK(options_.weight_decay >= 0, "[SGD] invalid weight_decay ", options_.weight_decay);
        SEEMOE_CHECK(!options_.nesterov || (options_.momentum > 0 && options_.dampening == 0),
                     "[SGD] nesterov momentum requires momentum > 0 and zero dampening");
        std::unordered_set<const Node<T>*> seen;
        for (std::size_t i = 0; i < params_.size(); ++i) {
            SEEMOE_CHECK(params_[i].defined(), "[SGD] parameter ", i, " is an undefined tensor");
            SEEMOE_CHECK(params_[i].is_leaf(), "[SGD] parameter ", i, " of shape ",
                         shape_str(params_[i].shape()), " is not a leaf (made by op '", params_[i].op(),
                         "'); only leaves can be optimised");
            SEEMOE_CHECK(seen.insert(params_[i].node().get()).second, "[SGD] parameter ", i, " of shape ",
                         shape_str(params_[i].shape()), " appears twice");
        }
    }

    // Zeroes the gradients that exist and keeps their buffers (torch's set_to_none=False), or
    // with set_to_none drops them (torch's default since 2.0): memory is then free for the
    // activations of the next forward, and a parameter no backward reaches is skipped by step().
    void zero_grad(bool set_to_none = false) { detail::zero_grads(params_, set_to_none); }

    void step() {
        const bool use_momentum = options_.momentum != 0;
        // Serial pre-pass: check restored state and note which buffers start this step, so the
        // parallel update below only touches memory that already exists.
        std::vector<char> first_momentum_step(params_.size(), 0);
        for (std::size_t i = 0; i < params_.size(); ++i) {
            if (!use_momentum || !params_[i].has_grad()) continue;
            Tensor<T>& buf = momentum_buffers_[i];
            if (!buf.defined()) {
                buf = Tensor<T>::empty(params_[i].shape());
                first_momentum_step[i] = 1;
            } else {
                SEEMOE_CHECK(buf.numel() == params_[i].numel(), "[SGD] momentum buffer ", i, " has shape ",
                             shape_str(buf.shape()), " but its parameter has ",
                             shape_str(params_[i].shape()));
            }
        }

        parallel_for_dynamic(static_cast<Index>(params_.size()), [&](Index i) {
            Tensor<T>& p = params_[static_cast<std::size_t>(i)];
            if (!p.has_grad()) return;
            update_one(p, momentum_buffers_[static_cast<std::size_t>(i)],
                       first_momentum_step[static_cast<std::size_t>(i)] != 0);
        });
        ++step_count_;
    }

    double lr() const { return options_.lr; }
    void set_lr(double lr) {
        SEEMOE_CHECK(lr >= 0, "[SGD] invalid learning rate ", lr);
        options_.lr = lr;
    }
    const SGDOptions& options() const { return options_; }
    const std::vector<Tensor<T>>& params() const { return params_; }

    // One per parameter, in params() order; undefined until that parameter's first momentum
    // step. A checkpoint loader may assign tensors of the parameter's shape.
    std::vector<Tensor<T>>& momentum_buffers() { return momentum_buffers_; }
    const std::vector<Tensor<T>>& momentum_buffers() const { return momentum_buffers_; }

    // Number of step() calls so far (restored from checkpoints with set_step_count).
    Index step_count() const { return step_count_; }
    void set_step_count(Index steps) { step_count_ = steps; }

private:
    // Blocks small enough to stay in L1/L2, so the two statements per block read the parameter
    // and gradient from cache: effectively one pass over memory.
    static constexpr Index kBlock = 2048;

    void update_one(Tensor<T>& p, Tensor<T>& buf, bool first_momentum_step) const {
        const Index n = p.numel();
        const T lr = static_cast<T>(options_.lr);
        const T wd = static_cast<T>(options_.weight_decay);
        const T momentum = static_cast<T>(options_.momentum);
        const T keep_new = static_cast<T>(1.0 - options_.dampening);
        T* param = p.data();
        const T* grad = p.grad_data();
        T* buffer = options_.momentum != 0 ? buf.data() : nullptr;

        for (Index start = 0; start < n; start += kBlock) {
            const Index len = std::min(kBlock, n - start);
            VectorMap<T> w(param + start, len);
            ConstVectorMap<T> g_raw(grad + start, len);
            // g + wd * p, evaluated lazily inside each statement (p is read before it is written).
            const auto g = g_raw.array() + wd * w.array();
            if (buffer == nullptr) {  // plain SGD
                w.array() -= lr * g;
                continue;
            }
            VectorMap<T> b(buffer + start, len);
            if (first_momentum_step) {
                b.array() = g;
            } else {
                b.array() = momentum * b.array() + keep_new * g;
            }
            if (options_.nesterov) {
                w.array() -= lr * (g + momentum * b.array());
            } else {
                w.array() -= lr * b.array();
            }
        }
    }

    std::vector<Tensor<T>> params_;
    SGDOptions options_;
    std::vector<Tensor<T>> momentum_buffers_;
    Index step_count_ = 0;
};

}  // namespace seemoe
