// seemoe/optim/adam.hpp — Adam and AdamW, with torch.optim.Adam / AdamW's exact formulas.
//
// One update of a parameter p with gradient g, at that parameter's step t = 1, 2, ...:
//   AdamW only:  p = p * (1 - lr * weight_decay)       (decoupled decay, before the Adam step)
//   Adam only:   g = g + weight_decay * p               (L2 penalty folded into the gradient)
//   m = beta1 * m + (1 - beta1) * g                     exp_avg
//   v = beta2 * v + (1 - beta2) * g * g                 exp_avg_sq
//   step_size = lr / (1 - beta1^t)
//   denom     = sqrt(v) / sqrt(1 - beta2^t) + eps
//   p = p - step_size * m / denom
// Defaults as torch: lr 1e-3, betas (0.9, 0.999), eps 1e-8, weight_decay 0 for Adam and 1e-2
// for AdamW (hence the two option structs, like torch's C++ AdamOptions / AdamWOptions).
//
// Convention: as in torch, each parameter keeps its own step count, and a parameter whose
// gradient was never allocated is skipped (its moments and step stay put). The state is public,
// per parameter in params() order (exp_avg, exp_avg_sq as tensors of the parameter's shape, and
// step), so a checkpoint can save it by name and write it back before training resumes.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <unordered_set>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "../ops/gemm_kernel.hpp"

namespace seemoe {

struct AdamOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 0.0;  // L2 penalty, added to the gradient
};

struct AdamWOptions {
    double lr = 1e-3;
    double beta1 = 0.9;
    double beta2 = 0.999;
    double eps = 1e-8;
    double weight_decay = 1e-2;  // decoupled: p *= 1 - lr * weight_decay each step
};

// The optimiser state of one parameter.
template <typename T>
struct AdamParamState {
    Tensor<T> exp_avg;     // m, the parameter's shape, zeros before the first step
    Tensor<T> exp_avg_sq;  // v, the parameter's shape
    Index step = 0;        // updates this parameter has received (t in the bias corrections)
};

namespace detail {

// Everything Adam and AdamW share; `decoupled` picks where weight decay goes.
template <typename T, typename Options>
class AdamBase {
public:
    // Zeroes the gradients that exist and keeps their buffers (torch's set_to_none=False), or
    // with set_to_none drops them (torch's default since 2.0): memory is then free for the
    // activations of the next forward, and a parameter no backward reaches is skipped by step().
    void zero_grad(bool set_to_none = false) { detail::zero_grads(params_, set_to_none); }

    void step() {
        // Serial pre-pass: a restored state must match its parameter before we write through it.
        for (std::size_t i = 0; i < params_.size(); ++i) {
            const AdamParamState<T>& s = state_[i];
            SEEMOE_CHECK(s.exp_avg.defined() && s.exp_avg_sq.defined() &&
                             s.exp_avg.numel() == params_[i].numel() &&
                             s.exp_avg_sq.numel() == params_[i].numel(),
                         "[", name_, "] state of parameter ", i, " does not match its shape ",
                         shape_str(params_[i].shape()));
        }
        parallel_for_dynamic(static_cast<Index>(params_.size()), [&](Index i) {
            Tensor<T>& p = params_[static_cast<std::size_t>(i)];
            if (p.has_grad()) update_one(p, state_[static_cast<std::size_t>(i)]);
        });
        ++step_count_;
    }

    double lr() const { return options_.lr; }
    void set_lr(double lr) {
        SEEMOE_CHECK(lr >= 0, "[", name_, "] invalid learning rate ", lr);
        options_.lr = lr;
    }
    const Options& options() const { return options_; }
    const std::vector<Tensor<T>>& params() const { return params_; }

    // Per parameter, in params() order. A checkpoint loader may copy values into the tensors or
    // assign new ones of the same shape, and set each step.
    std::vector<AdamParamState<T>>& state() { return state_; }
    const std::vector<AdamParamState<T>>& state() const { return state_; }

    // Number of step() calls so far (restored from checkpoints with set_step_count). The bias
    // corrections use each parameter's own AdamParamState::step, as torch does.
    Index step_count() const { return step_count_; }
    void set_step_count(Index steps) { step_count_ = steps; }

protected:
    AdamBase(std::vector<Tensor<T>> params, const Options& options, bool decoupled, const char* name)
        : params_(std::move(params)), options_(options), decoupled_(decoupled), name_(name) {
        SEEMOE_CHECK(options_.lr >= 0, "[", name_, "] invalid learning rate ", options_.lr);
        SEEMOE_CHECK(options_.eps >= 0, "[", name_, "] invalid eps ", options_.eps);
        SEEMOE_CHECK(options_.beta1 >= 0 && options_.beta1 < 1, "[", name_, "] invalid beta1 ",
                     options_.beta1, " (need 0 <= beta1 < 1)");
        SEEMOE_CHECK(options_.beta2 >= 0 && options_.beta2 < 1, "[", name_, "] invalid beta2 ",
                     options_.beta2, " (need 0 <= beta2 < 1)");
        SEEMOE_CHECK(options_.weight_decay >= 0, "[", name_, "] invalid weight_decay ",
                     options_.weight_decay);
        std::unordered_set<const Node<T>*> seen;
        state_.reserve(params_.size());
        for (std::size_t i = 0; i < params_.size(); ++i) {
            const Tensor<T>& p = params_[i];
            SEEMOE_CHECK(p.defined(), "[", name_, "] parameter ", i, " is an undefined tensor");
            SEEMOE_CHECK(p.is_leaf(), "[", name_, "] parameter ", i, " of shape ", shape_str(p.shape()),
                         " is not a leaf (made by op '", p.op(), "'); only leaves can be optimised");
            SEEMOE_CHECK(seen.insert(p.node().get()).second, "[", name_, "] parameter ", i, " of shape ",
                         shape_str(p.shape()), " appears twice");
            // Allocated up front (torch does it at the first step; zeros + step 0 is the same
            // thing) so a checkpoint can be loaded into the state before training resumes.
            state_.push_back({Tensor<T>::zeros(p.shape()), Tensor<T>::zeros(p.shape()), 0});
        }
    }

private:
    // Blocks small enough to stay in cache, so the passes over a block read p, g, m and v from
    // L1/L2: effectively one pass over memory.
    static constexpr Index kBlock = 2048;

    void update_one(Tensor<T>& p, AdamParamState<T>& s) const {
        s.step += 1;
        const double t = static_cast<double>(s.step);
        const double bias_correction1 = 1.0 - std::pow(options_.beta1, t);
        const double bias_correction2 = 1.0 - std::pow(options_.beta2, t);
        const T step_size = static_cast<T>(options_.lr / bias_correction1);
        const T bias_correction2_sqrt = static_cast<T>(std::sqrt(bias_correction2));
        const T beta1 = static_cast<T>(options_.beta1);
        const T beta2 = static_cast<T>(options_.beta2);
        const T one_minus_beta1 = static_cast<T>(1.0 - options_.beta1);
        const T one_minus_beta2 = static_cast<T>(1.0 - options_.beta2);
        const T eps = static_cast<T>(options_.eps);
        const T l2 = static_cast<T>(decoupled_ ? 0.0 : options_.weight_decay);
        // AdamW's decoupled decay factor; 1 (an exact no-op) for Adam.
        const T decay = static_cast<T>(decoupled_ ? 1.0 - options_.lr * options_.weight_decay : 1.0);

        const Index n = p.numel();
        T* param = p.data();
        const T* grad = p.grad_data();
        T* m_data = s.exp_avg.data();
        T* v_data = s.exp_avg_sq.data();
        // Plain loops, compiled for the vector instructions of the CPU's kernel path (a build for
        // plain x86-64 still updates 16 floats at a time where the CPU has AVX-512).
        const KernelPath path = std::is_same_v<T, float> ? active_kernel_path() : KernelPath::portable;
        detail::run_vectorized(path, [=]() SEEMOE_VECTOR_BODY {
            T denom[kBlock];  // sqrt(v) of one block
            for (Index start = 0; start < n; start += kBlock) {
                const Index len = std::min(kBlock, n - start);
                T* w = param + start;
                const T* g_raw = grad + start;
                T* m = m_data + start;
                T* v = v_data + start;
                for (Index i = 0; i < len; ++i) {
                    w[i] *= decay;
                    const T g = g_raw[i] + l2 * w[i];  // Adam's L2 gradient (l2 == 0 for AdamW)
                    m[i] = beta1 * m[i] + one_minus_beta1 * g;
                    v[i] = beta2 * v[i] + one_minus_beta2 * (g * g);
                    denom[i] = v[i];
                }
                detail::sqrt_in_place(path, denom, len);
                for (Index i = 0; i < len; ++i) w[i] -= step_size * m[i] / (denom[i] / bias_correction2_sqrt + eps);
            }
        });
    }

    std::vector<Tensor<T>> params_;
    Options options_;
    bool decoupled_;
    const char* name_;
    std::vector<AdamParamState<T>> state_;
    Index step_count_ = 0;
};

}  // namespace detail

// Adam with L2 weight decay added to the gradient (torch.optim.Adam).
template <typename T>
class Adam : public detail::AdamBase<T, AdamOptions> {
public:
    explicit Adam(std::vector<Tensor<T>> params, AdamOptions options = {})
        : detail::AdamBase<T, AdamOptions>(std::move(params), options, false, "Adam") {}
};

// Adam with decoupled weight decay (torch.optim.AdamW): p *= 1 - lr * wd before the Adam step.
template <typename T>
class AdamW : public detail::AdamBase<T, AdamWOptions> {
public:
    explicit AdamW(std::vector<Tensor<T>> params, AdamWOptions options = {})
        : detail::AdamBase<T, AdamWOptions>(std::move(params), options, true, "AdamW") {}
};

}  // namespace seemoe
