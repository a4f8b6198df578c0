// seemoe/nn/module.hpp — the Module base every layer derives from.
//
// A module is a plain struct: its parameters (Tensor<T>) and submodules (held by value, lists
// in std::vector) are named members. The one method a module writes to take part is
// visit_members, which names each parameter and child exactly as the equivalent PyTorch module's
// state_dict() would ("weight", "blocks.3.moe.experts.5.fc1.weight"). Everything else —
// named_parameters(), parameters(), num_parameters(), train()/eval(), zero_grad() — walks that.
//
// Convention: forward() of a module that draws random numbers (dropout, router noise) takes an
// explicit Rng&; in eval mode it draws nothing, so eval outputs are deterministic.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"

namespace seemoe::nn {

template <typename T>
class Module;

// What a walk over a module tree does at each parameter and each module.
template <typename T>
struct ModuleVisitor {
    std::function<void(const std::string& name, Tensor<T>& parameter)> on_parameter;
    std::function<void(Module<T>& module)> on_module;
};

template <typename T>
class Module {
public:
    virtual ~Module() = default;

    // Walks this module and its children, depth first, in declaration order.
    void visit(ModuleVisitor<T>& visitor, const std::string& prefix = "") {
        if (visitor.on_module) visitor.on_module(*this);
        visit_members(visitor, prefix);
    }

    std::vector<std::pair<std::string, Tensor<T>>> named_parameters() {
        std::vector<std::pair<std::string, Tensor<T>>> out;
        ModuleVisitor<T> v;
        v.on_parameter = [&](const std::string& name, Tensor<T>& p) { out.emplace_back(name, p); };
        visit(v);
        return out;
    }
    std::vector<Tensor<T>> parameters() {
        std::vector<Tensor<T>> out;
        for (auto& [name, p] : named_parameters()) out.push_back(p);
        return out;
    }
    Index num_parameters() {
        Index n = 0;
        for (auto& [name, p] : named_parameters()) n += p.numel();
        return n;
    }
    void zero_grad() {
        for (auto& [name, p] : named_parameters()) p.zero_grad();
    }

    // Dropout and router noise are active only in training mode.
    void train(bool on = true) {
        ModuleVisitor<T> v;
        v.on_module = [on](Module<T>& m) { m.training_ = on; };
        visit(v);
    }
    void eval() { train(false); }
    bool is_training() const { return training_; }

    // Calls fn(module) on every module of the tree (e.g. a custom initialisation).
    void apply(const std::function<void(Module<T>&)>& fn) {
        ModuleVisitor<T> v;
        v.on_module = fn;
        visit(v);
    }

protected:
    // Names every parameter (param) and child (child) of this module.
    virtual void visit_members(ModuleVisitor<T>& visitor, const std::string& prefix) = 0;

    static void param(ModuleVisitor<T>& visitor, const std::string& prefix, const char* name,
                      Tensor<T>& parameter) {
        if (visitor.on_parameter && parameter.defined()) visitor.on_parameter(prefix + name, parameter);
    }
    static void child(ModuleVisitor<T>& visitor, const std::string& prefix, const std::string& name,
                      Module<T>& module) {
        module.visit(visitor, prefix + name + ".");
    }
    template <typename M>
    static void children(ModuleVisitor<T>& visitor, const std::string& prefix, const std::string& name,
                         std::vector<M>& modules) {
        for (std::size_t i = 0; i < modules.size(); ++i)
            modules[i].visit(visitor, prefix + name + "." + std::to_string(i) + ".");
    }

private:
    bool training_ = true;
};

namespace detail {
// A parameter: a leaf that requires grad.
template <typename T>
Tensor<T> parameter(Tensor<T> t) {
    t.requires_grad_();
    return t;
}
}  // namespace detail

}  // namespace seemoe::nn
