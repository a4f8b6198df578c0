// seemoe/nn/checkpoint.hpp — saving and loading a seeMoE model and its training state.
//
// A checkpoint is two safetensors files in one folder:
//   model.safetensors           every parameter by its state-dict name (F32), plus __metadata__
//                               {"config": <VLMConfig as JSON>, "vocab": <tokenizer JSON>, ...}
//   training_state.safetensors  AdamW moments as "exp_avg.<name>" / "exp_avg_sq.<name>", plus
//                               metadata with the step, the per-parameter step counts and the Rng
// PyTorch reads the first with safetensors.torch.load_file (names match the PyTorch modules').
// Loading is strict: a missing, extra or mis-shaped tensor is refused with its name, so a
// checkpoint never half-loads into the wrong architecture.
#pragma once

#include <map>
#include <set>
#include <string>
#include <vector>

#include "../io/json.hpp"
#include "../io/safetensors.hpp"
#include "vlm.hpp"

namespace seemoe::nn {

inline io::Json config_to_json(const VLMConfig& c) {
    io::Json vision = io::Json::object();
    vision["image_size"] = c.vision.image_size;
    vision["patch_size"] = c.vision.patch_size;
    vision["channels"] = c.vision.channels;
    vision["dim"] = c.vision.dim;
    vision["n_blocks"] = c.vision.n_blocks;
    vision["n_heads"] = c.vision.n_heads;
    vision["mlp_ratio"] = c.vision.mlp_ratio;
    vision["dropout"] = c.vision.dropout;
    io::Json decoder = io::Json::object();
    decoder["vocab_size"] = c.decoder.vocab_size;
    decoder["n_embd"] = c.decoder.n_embd;
    decoder["n_head"] = c.decoder.n_head;
    decoder["n_layer"] = c.decoder.n_layer;
    decoder["num_experts"] = c.decoder.num_experts;
    decoder["top_k"] = c.decoder.top_k;
    decoder["expert_ratio"] = c.decoder.expert_ratio;
    decoder["block_size"] = c.decoder.block_size;
    decoder["dropout"] = c.decoder.dropout;
    io::Json out = io::Json::object();
    out["vision"] = vision;
    out["decoder"] = decoder;
    out["visual_tokens"] = c.visual_tokens == VisualTokens::CLS ? "cls" : "patches";
    out["pad_id"] = c.pad_id;
    out["bos_id"] = c.bos_id;
    out["eos_id"] = c.eos_id;
    return out;
}

inline VLMConfig config_from_json(const io::Json& j) {
    VLMConfig c;
    const io::Json& v = j.at("vision");
    c.vision.image_size = v.at("image_size").as_int();
    c.vision.patch_size = v.at("patch_size").as_int();
    c.vision.channels = v.at("channels").as_int();
    c.vision.dim = v.at("dim").as_int();
    c.vision.n_blocks = v.at("n_blocks").as_int();
    c.vision.n_heads = v.at("n_heads").as_int();
    c.vision.mlp_ratio = v.at("mlp_ratio").as_int();
    c.vision.dropout = v.at("dropout").as_double();
    const io::Json& d = j.at("decoder");
    c.decoder.vocab_size = d.at("vocab_size").as_int();
    c.decoder.n_embd = d.at("n_embd").as_int();
    c.decoder.n_head = d.at("n_head").as_int();
    c.decoder.n_layer = d.at("n_layer").as_int();
    c.decoder.num_experts = d.at("num_experts").as_int();
    c.decoder.top_k = d.at("top_k").as_int();
    c.decoder.expert_ratio = d.at("expert_ratio").as_int();
    c.decoder.block_size = d.at("block_size").as_int();
    c.decoder.dropout = d.at("dropout").as_double();
    const std::string visual = j.at("visual_tokens").as_string();
    SEEMOE_CHECK(visual == "cls" || visual == "patches", "[checkpoint] unknown visual_tokens '", visual, "'");
    c.visual_tokens = visual == "cls" ? VisualTokens::CLS : VisualTokens::Patches;
    c.pad_id = j.at("pad_id").as_int();
    c.bos_id = j.at("bos_id").as_int();
    c.eos_id = j.at("eos_id").as_int();
    return c;
}

// Writes every parameter of `model` under its dotted name, with `metadata`, atomically.
inline void save_model(const std::string& path, Module<float>& model,
                       const std::map<std::string, std::string>& metadata = {}) {
    io::save_safetensors(path, model.named_parameters(), metadata);
}

// Copies the tensors of a loaded file into `model`'s parameters, strictly by name and shape.
inline void load_parameters(const io::SafetensorsFile& file, Module<float>& model) {
    std::set<std::string> used;
    for (auto& [name, param] : model.named_parameters()) {
        const Tensor<float>* stored = file.find(name);
        SEEMOE_CHECK(stored, "[checkpoint] '", file.path, "' has no tensor '", name,
                     "' that the model needs: was it saved from a different architecture?");
        SEEMOE_CHECK(stored->shape() == param.shape(), "[checkpoint] tensor '", name, "' in '", file.path,
                     "' has shape ", shape_str(stored->shape()), " but the model expects ",
                     shape_str(param.shape()));
        std::copy_n(stored->data(), param.numel(), param.data());
        used.insert(name);
    }
    for (const auto& [name, tensor] : file.tensors)
        SEEMOE_CHECK(used.count(name), "[checkpoint] '", file.path, "' has an extra tensor '", name,
                     "' ", shape_str(tensor.shape()), " that the model does not have");
}

// A model rebuilt from a checkpoint: its config from the metadata, then the weights.
struct LoadedModel {
    VLMConfig config;
    VisionMoELanguageModel<float> model;
    std::map<std::string, std::string> metadata;
};

inline LoadedModel load_model(const std::string& path) {
    io::SafetensorsFile file = io::load_safetensors<float>(path);
    auto it = file.metadata.find("config");
    SEEMOE_CHECK(it != file.metadata.end(), "[checkpoint] '", path,
                 "' has no 'config' in its metadata: not a seemoe model checkpoint");
    LoadedModel out;
    out.config = config_from_json(io::Json::parse(it->second));
    Rng init_rng(0);  // the initial values are overwritten just below
    out.model = VisionMoELanguageModel<float>(out.config, init_rng);
    load_parameters(file, out.model);
    out.metadata = file.metadata;
    return out;
}

// ---- training state: AdamW moments, step counts, the Rng --------------------------------------

inline std::string rng_to_string(const Rng& rng) {
    const Rng::State s = rng.state();
    io::Json j = io::Json::array();
    // u64 as text: JSON numbers are doubles
    for (auto w : s.words) j.push_back(io::Json(std::to_string(w)));
    j.push_back(io::Json(s.has_spare_normal));
    j.push_back(io::Json(s.spare_normal));
    return j.dump();
}

inline void rng_from_string(Rng& rng, const std::string& text) {
    const io::Json j = io::Json::parse(text);
    SEEMOE_CHECK(j.size() == 6, "[checkpoint] malformed rng state");
    Rng::State s{};
    for (int i = 0; i < 4; ++i) s.words[i] = std::stoull(j.at(static_cast<std::size_t>(i)).as_string());
    s.has_spare_normal = j.at(4).as_bool();
    s.spare_normal = j.at(5).as_double();
    rng.set_state(s);
}

template <typename Optimizer>
void save_training_state(const std::string& path, Module<float>& model, const Optimizer& optimizer,
                         Index step, const Rng& rng, std::map<std::string, std::string> metadata = {}) {
    const auto params = model.named_parameters();
    const auto& state = optimizer.state();
    SEEMOE_CHECK(state.size() == params.size(), "[checkpoint] optimiser has ", state.size(),
                 " parameter states but the model has ", params.size(), " parameters");
    std::vector<std::pair<std::string, Tensor<float>>> tensors;
    io::Json steps = io::Json::array();
    for (std::size_t i = 0; i < params.size(); ++i) {
        tensors.emplace_back("exp_avg." + params[i].first, state[i].exp_avg);
        tensors.emplace_back("exp_avg_sq." + params[i].first, state[i].exp_avg_sq);
        steps.push_back(io::Json(static_cast<std::int64_t>(state[i].step)));
    }
    metadata["step"] = std::to_string(step);
    metadata["param_steps"] = steps.dump();
    metadata["rng"] = rng_to_string(rng);
    io::save_safetensors(path, tensors, metadata);
}

// Restores the optimiser moments and the rng; returns the training step to continue from.
template <typename Optimizer>
Index load_training_state(const std::string& path, Module<float>& model, Optimizer& optimizer, Rng& rng) {
    io::SafetensorsFile file = io::load_safetensors<float>(path);
    const auto params = model.named_parameters();
    auto& state = optimizer.state();
    SEEMOE_CHECK(state.size() == params.size(), "[checkpoint] optimiser/model mismatch while resuming");
    for (const char* key : {"step", "param_steps", "rng"})
        SEEMOE_CHECK(file.metadata.count(key), "[checkpoint] '", path, "' lacks '", key, "' in its metadata");
    const io::Json steps = io::Json::parse(file.metadata.at("param_steps"));
    SEEMOE_CHECK(steps.size() == params.size(), "[checkpoint] '", path, "' holds state for ", steps.size(),
                 " parameters, the model has ", params.size());
    for (std::size_t i = 0; i < params.size(); ++i) {
        for (auto [prefix, target] : {std::pair<const char*, Tensor<float>*>{"exp_avg.", &state[i].exp_avg},
                                      {"exp_avg_sq.", &state[i].exp_avg_sq}}) {
            const Tensor<float>& stored = file.at(prefix + params[i].first);
            SEEMOE_CHECK(stored.shape() == params[i].second.shape(), "[checkpoint] '", prefix, params[i].first,
                         "' has shape ", shape_str(stored.shape()), ", expected ",
                         shape_str(params[i].second.shape()));
            *target = stored.clone();
        }
        state[i].step = steps.at(i).as_int();
    }
    rng_from_string(rng, file.metadata.at("rng"));
    return std::stoll(file.metadata.at("step"));
}

}  // namespace seemoe::nn
