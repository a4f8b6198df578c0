// seemoe/nn/staging.hpp — MoE-LLaVA's staged training: freezing parameters by name, and sparse
// upcycling of a whole vision MoE language model from a dense one.
//
//   set_trainable(model, train_only, freeze)   trainable_parameters(model)   name_matches(pattern, name)
//   upcycle_from(moe_model, dense_model, noise_std, rng)   copy_parameters(to, from)
//
// Freezing. A frozen parameter has requires_grad off: backward neither computes nor stores its
// gradient, and an optimiser built over trainable_parameters() holds no state for it. It is not
// a parameter updated by zero; it takes no part in the optimisation at all.
// Patterns name parameters as named_parameters() does ("decoder.blocks.3.moe.router.route.weight").
// A pattern matches a name when it matches the whole name or a leading part of it that ends at a
// '.', so "projector" is every parameter of the projector (and "decoder.blocks.1" is not
// "decoder.blocks.12"); '*' stands for any characters except '.', so "decoder.blocks.*.moe" is
// every MoE layer: its experts, shared experts and router.
//
// Upcycling (Komatsuzaki et al., "Sparse Upcycling"; MoE-LLaVA's stage 3): each MoE layer of a
// model with E experts takes every expert from the single expert (the dense FFN) of the same layer
// of a model with E = 1, optionally plus a little noise; every other parameter is copied as it is;
// the routers keep their fresh initialisation. Without noise, and with gates that sum to 1
// (noisy top-k, top-k-softmax) and no shared experts, the upcycled model computes exactly what the
// dense one does, whatever its router picks.
#pragma once

#include <algorithm>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "vlm.hpp"

namespace seemoe::nn {

// Whether `pattern` names the parameter `name` (see the top of this file).
inline bool name_matches(std::string_view pattern, std::string_view name) {
    if (pattern.empty()) return name.empty() || name.front() == '.';  // the match ends at a '.'
    if (pattern.front() == '*') {
        // '*' takes 0, 1, ... characters of the current component.
        for (std::size_t n = 0;; ++n) {
            if (name_matches(pattern.substr(1), name.substr(n))) return true;
            if (n == name.size() || name[n] == '.') return false;
        }
    }
    return !name.empty() && name.front() == pattern.front() && name_matches(pattern.substr(1), name.substr(1));
}

// Freezes every parameter of `model` except those `train_only` names (all, when it is empty),
// then also those `freeze` names. Each pattern must name at least one parameter and something
// must stay trainable; otherwise Error, and nothing is changed. Returns the number of trainable
// parameter tensors.
template <typename T>
Index set_trainable(Module<T>& model, const std::vector<std::string>& train_only,
                    const std::vector<std::string>& freeze) {
    auto params = model.named_parameters();
    auto any = [&](const std::vector<std::string>& patterns, const std::string& name) {
        for (const auto& p : patterns)
            if (name_matches(p, name)) return true;
        return false;
    };
    for (const auto* list : {&train_only, &freeze})
        for (const auto& pattern : *list) {
            bool used = false;
            for (const auto& [name, p] : params) used = used || name_matches(pattern, name);
            SEEMOE_CHECK(used, "[freeze] pattern '", pattern, "' names no parameter (names look like '",
                         params.empty() ? std::string("none") : params.front().first, "')");
        }
    std::vector<bool> trainable;
    Index count = 0;
    for (const auto& [name, p] : params) {
        trainable.push_back((train_only.empty() || any(train_only, name)) && !any(freeze, name));
        count += trainable.back() ? 1 : 0;
    }
    SEEMOE_CHECK(count > 0, "[freeze] the patterns freeze every parameter: nothing is left to train");
    for (std::size_t i = 0; i < params.size(); ++i) params[i].second.requires_grad_(trainable[i]);
    return count;
}

// The parameters that are not frozen, in named_parameters() order: what an optimiser should get.
template <typename T>
std::vector<Tensor<T>> trainable_parameters(Module<T>& model) {
    std::vector<Tensor<T>> out;
    for (auto& [name, p] : model.named_parameters())
        if (p.requires_grad()) out.push_back(p);
    return out;
}

// Copies every parameter of `from` into the parameter of the same name of `to`: the two must
// have the same names and shapes (the start of a next stage from a finished one).
template <typename T>
void copy_parameters(Module<T>& to, Module<T>& from) {
    auto source = from.named_parameters();
    auto target = to.named_parameters();
    std::map<std::string, Tensor<T>> by_name(source.begin(), source.end());
    for (auto& [name, p] : target) {
        const auto it = by_name.find(name);
        SEEMOE_CHECK(it != by_name.end(), "[copy_parameters] the source has no parameter '", name, "' ",
                     shape_str(p.shape()), ": a different architecture?");
        SEEMOE_CHECK(it->second.shape() == p.shape(), "[copy_parameters] parameter '", name, "' has shape ",
                     shape_str(it->second.shape()), " in the source, ", shape_str(p.shape()), " here");
        std::copy_n(it->second.data(), p.numel(), p.data());
        by_name.erase(it);
    }
    SEEMOE_CHECK(by_name.empty(), "[copy_parameters] the source has a parameter '",
                 by_name.empty() ? std::string() : by_name.begin()->first, "' that is not here: a different architecture?");
}

// Sparse upcycling of `moe` from `dense` (see the top of this file). `dense` must have one expert
// and top_k 1 per layer, no shared experts, and otherwise the sizes of `moe`. Parameters are
// replaced by new tensors: build the optimiser afterwards.
template <typename T>
void upcycle_from(VisionMoELanguageModel<T>& moe, VisionMoELanguageModel<T>& dense, double noise_std, Rng& rng) {
    const DecoderConfig &d = dense.config.decoder, &m = moe.config.decoder;
    SEEMOE_CHECK(d.num_experts == 1 && d.top_k == 1 && d.num_shared_experts == 0,
                 "[upcycle] the dense model must have 1 expert per layer, top_k 1 and no shared experts; it has ",
                 d.num_experts, " experts, top_k ", d.top_k, ", ", d.num_shared_experts, " shared");
    SEEMOE_CHECK(d.n_layer == m.n_layer && dense.config.visual_tokens == moe.config.visual_tokens &&
                     dense.config.pad_id == moe.config.pad_id && dense.config.bos_id == moe.config.bos_id &&
                     dense.config.eos_id == moe.config.eos_id,
                 "[upcycle] the dense model differs in n_layer, visual_tokens or special token ids");
    SEEMOE_CHECK(noise_std >= 0, "[upcycle] noise_std must be >= 0, got ", noise_std);
    std::map<std::string, Tensor<T>> from;
    for (auto& [name, p] : dense.named_parameters()) from.emplace(name, p);
    // Everything outside the MoE layers, as it is.
    for (auto& [name, p] : moe.named_parameters()) {
        if (name.find(".moe.") != std::string::npos) continue;
        const auto it = from.find(name);
        SEEMOE_CHECK(it != from.end() && it->second.shape() == p.shape(), "[upcycle] parameter '", name, "' ",
                     shape_str(p.shape()), it == from.end() ? " is missing from the dense model"
                                                            : " has shape " + shape_str(it->second.shape()) +
                                                                  " in the dense model");
        std::copy_n(it->second.data(), p.numel(), p.data());
    }
    // Every expert from the layer's dense FFN.
    for (std::size_t l = 0; l < moe.decoder.blocks.size(); ++l)
        moe.decoder.blocks[l].moe.upcycle_from(dense.decoder.blocks[l].moe.experts.front(), noise_std, rng);
}

}  // namespace seemoe::nn
