// seemoe/nn/checkpoint.hpp — saving and loading a seeMoE model and its training state.
//
// A checkpoint is two safetensors files in one folder:
//   model.safetensors           every parameter by its state-dict name (F32), plus __metadata__
//                               {"format": ..., "config": <VLMConfig as JSON>,
//                                "vocab": <tokenizer JSON>, "step": "1200", ...}
//                               A text-only model (MoEDecoderLanguageModel, a character LM) has
//                               format kTextModelFormat and {"decoder": {...}} as its config; each
//                               loader refuses the other kind by its format, naming it.
//   training_state.safetensors  AdamW moments as "exp_avg.<name>" / "exp_avg_sq.<name>", plus
//                               metadata with the step, the per-parameter step counts and the Rng
// PyTorch reads the first with safetensors.torch.load_file (names match the PyTorch modules').
//
//   save_model(path, model, tokenizer, step, extra)   LoadedModel m = load_model(path);
//   save_training_state(path, model, optimizer, step, rng, extra)   load_training_state(...)
//
// This header is where the model meets the file formats: io/ knows safetensors and JSON, not
// models. The config's JSON is written field by field from for_each_field (nn/vlm.hpp), in a
// fixed order, so the same config always gives the same bytes. Loading is strict: a missing, extra or mis-shaped tensor is refused with its name, so a
// checkpoint never half-loads into the wrong architecture.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <map>
#include <set>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../data/tokenizer.hpp"
#include "../io/json.hpp"
#include "../io/safetensors.hpp"
#include "vlm.hpp"

namespace seemoe::nn {

// The "format" metadata entry of a model checkpoint: an image captioner or a text-only model.
inline constexpr const char* kModelFormat = "seemoe vision MoE language model";
inline constexpr const char* kTextModelFormat = "seemoe MoE character language model";

// The format a model checkpoint's metadata declares ("" when it has none).
inline std::string model_format(const std::map<std::string, std::string>& metadata) {
    const auto it = metadata.find("format");
    return it == metadata.end() ? std::string() : it->second;
}

// Refuses a checkpoint whose metadata declares another format than `expected`, naming both.
inline void check_model_format(const std::map<std::string, std::string>& metadata, const std::string& path,
                               const char* expected) {
    const std::string format = model_format(metadata);
    const bool want_vlm = expected == std::string(kModelFormat);
    if (format == expected) return;
    if (format.empty() && want_vlm) return;  // written before the format entry: always a VLM
    if (format == kModelFormat || format == kTextModelFormat)
        throw Error(seemoe::detail::concat(
            "[checkpoint] '", path, "' holds a ",
            format == kModelFormat ? "vision-language model (it captions images)"
                                   : "text-only character language model (it continues text)",
            ", not a ", want_vlm ? "vision-language model" : "text-only model"));
    SEEMOE_CHECK(!format.empty(), "[checkpoint] '", path, "' has no 'format' in its metadata: an older "
                 "vision-language checkpoint, or not a seemoe model; expected '", expected, "'");
    throw Error(seemoe::detail::concat("[checkpoint] '", path, "' has format '", format, "' in its metadata, not '",
                                       expected, "'"));
}

// A step count stored as text in the metadata.
inline Index parse_step(const std::string& text, const std::string& path) {
    Index step = -1;
    std::size_t used = 0;
    try {
        step = std::stoll(text, &used);
    } catch (const std::exception&) {
        used = 0;
    }
    SEEMOE_CHECK(used == text.size() && !text.empty() && step >= 0, "[checkpoint] '", path,
                 "' has step '", text, "' in its metadata; expected a non-negative integer");
    return step;
}

namespace detail {

// Whether `value` is the default of the decoder field `name`.
template <typename Field>
bool is_default_decoder_field(const char* name, const Field& value) {
    static const DecoderConfig defaults;
    bool same = false;
    for_each_decoder_field(defaults, [&](const char* n, const auto& d) {
        if constexpr (std::is_same_v<std::decay_t<decltype(d)>, Field>)
            if (std::string_view(n) == name) same = d == value;
    });
    return same;
}

// One config field into `target` (enums by name); an optional decoder field at its default is
// left out.
template <typename Field>
void put_field(io::Json& target, bool decoder, const char* name, const Field& field) {
    if (decoder && decoder_field_is_optional(name) && is_default_decoder_field(name, field)) return;
    if constexpr (std::is_enum_v<Field>)
        target[name] = enum_name(field);
    else
        target[name] = field;
}

// One config field from `holder`, which must have it with the right type unless it is an optional
// decoder field (absent: the default). Errors say what is wrong with the value; the callers add
// the field's name.
template <typename Field>
void get_field(const io::Json& holder, bool decoder, const char* name, Field& field) {
    if (decoder && decoder_field_is_optional(name) && !holder.contains(name)) return;
    const io::Json& value = holder.at(name);
    if constexpr (std::is_enum_v<Field>) {
        std::string expected;
        const auto values = enum_values<Field>();
        for (std::size_t i = 0; i < values.size(); ++i)
            expected += (i == 0 ? "" : i + 1 == values.size() ? " or " : ", ") + std::string(enum_name(values[i]));
        SEEMOE_CHECK(enum_from_name(value.as_string(), field), "unknown ", name, " '", value.as_string(),
                     "' (expected ", expected, ")");
    } else if constexpr (std::is_same_v<Field, double>) {
        field = value.as_double();
    } else {
        field = value.as_int();
    }
}

}  // namespace detail

// The config as JSON: {"vision": {...}, "decoder": {...}, "visual_tokens": "cls", "pad_id": 0, ...},
// field by field from for_each_field (nn/vlm.hpp).
inline io::Json config_to_json(const VLMConfig& c) {
    io::Json out = io::Json::object();
    for_each_field(c, [&](const char* section, const char* name, const auto& field) {
        io::Json& target = *section ? out[section] : out;
        if (target.is_null()) target = io::Json::object();
        detail::put_field(target, std::string_view(section) == "decoder", name, field);
    });
    return out;
}

// The config from its JSON; every field must be present, with the right type, except the MoE
// routing fields, which checkpoints older than them lack (then the defaults). Errors name the
// field ("field decoder.n_layer: [json] expected number, got string"); the values are checked by
// check_config (nn/vlm.hpp), which the callers run.
inline VLMConfig config_from_json(const io::Json& j) {
    VLMConfig c;
    SEEMOE_CHECK(j.is_object(), "[checkpoint] the config must be a JSON object");
    for_each_field(c, [&](const char* section, const char* name, auto& field) {
        try {
            detail::get_field(*section ? j.at(section) : j, std::string_view(section) == "decoder", name, field);
        } catch (const Error& e) {
            throw Error(seemoe::detail::concat("field ", *section ? section : "", *section ? "." : "", name, ": ",
                                               e.what()));
        }
    });
    return c;
}

// Runs `parse`, prefixing any Error with "[checkpoint] '<path>': <what>: ".
template <typename Parse>
auto parse_metadata(const std::string& path, const char* what, Parse&& parse) -> decltype(parse()) {
    try {
        return parse();
    } catch (const Error& e) {
        throw Error(seemoe::detail::concat("[checkpoint] '", path, "': ", what, ": ", e.what()));
    }
}

// A u64 written as decimal text (JSON numbers are doubles, so u64s are stored as strings).
inline std::uint64_t parse_u64(const std::string& text) {
    std::uint64_t value = 0;
    SEEMOE_CHECK(!text.empty() && text.size() <= 20, "expected an unsigned integer, got '", text, "'");
    for (char ch : text) {
        SEEMOE_CHECK(ch >= '0' && ch <= '9', "expected an unsigned integer, got '", text, "'");
        const auto digit = static_cast<std::uint64_t>(ch - '0');
        SEEMOE_CHECK(value <= (UINT64_MAX - digit) / 10, "'", text, "' is larger than 2^64 - 1");
        value = value * 10 + digit;
    }
    return value;
}

// Writes `model` to `path` (atomically): every parameter under its dotted name, and in the
// metadata the config, the tokenizer's vocabulary and the training step, plus `extra` strings.
inline void save_model(const std::string& path, VisionMoELanguageModel<float>& model,
                       const data::CharTokenizer& tokenizer, Index step,
                       std::map<std::string, std::string> extra = {}) {
    SEEMOE_CHECK(tokenizer.vocab_size() == model.config.decoder.vocab_size, "[checkpoint] the tokenizer has ",
                 tokenizer.vocab_size(), " tokens but the model's vocab_size is ", model.config.decoder.vocab_size);
    extra["format"] = kModelFormat;
    extra["config"] = config_to_json(model.config).dump();
    extra["vocab"] = tokenizer.to_json();
    extra["step"] = std::to_string(step);
    io::save_safetensors(path, model.named_parameters(), extra);
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
        // A NaN or infinity in a weight would only surface as nonsense captions: refused here.
        SEEMOE_CHECK(std::all_of(stored->data(), stored->data() + stored->numel(), [](float v) { return std::isfinite(v); }),
                     "[checkpoint] tensor '", name, "' in '", file.path, "' holds a NaN or an infinity");
        std::copy_n(stored->data(), param.numel(), param.data());
        used.insert(name);
    }
    for (const auto& [name, tensor] : file.tensors)
        SEEMOE_CHECK(used.count(name), "[checkpoint] '", file.path, "' has an extra tensor '", name,
                     "' ", shape_str(tensor.shape()), " that the model does not have");
}

// A model rebuilt from a checkpoint, with its vocabulary and step.
struct LoadedModel {
    VLMConfig config;
    VisionMoELanguageModel<float> model;
    data::CharTokenizer tokenizer;
    Index step = 0;
    std::map<std::string, std::string> metadata;  // everything, including what save_model's `extra` held
};

inline LoadedModel load_model(const std::string& path) {
    io::SafetensorsFile file = io::load_safetensors<float>(path);
    const auto meta = [&](const char* key) -> const std::string& {
        const auto it = file.metadata.find(key);
        SEEMOE_CHECK(it != file.metadata.end(), "[checkpoint] '", path, "' has no '", key,
                     "' in its metadata: not a seemoe model checkpoint");
        return it->second;
    };
    // Checkpoints written before the format entry existed are vision-language models.
    check_model_format(file.metadata, path, kModelFormat);
    LoadedModel out;
    out.config = parse_metadata(path, "metadata 'config'", [&] { return config_from_json(io::Json::parse(meta("config"))); });
    check_config(out.config, "[checkpoint] '" + path + "'");
    out.tokenizer = parse_metadata(path, "metadata 'vocab'", [&] { return data::CharTokenizer::from_json(meta("vocab")); });
    SEEMOE_CHECK(out.tokenizer.vocab_size() == out.config.decoder.vocab_size, "[checkpoint] '", path, "' has ",
                 out.tokenizer.vocab_size(), " vocabulary tokens but a model for ", out.config.decoder.vocab_size);
    out.step = parse_step(meta("step"), path);
    Rng init_rng(0);  // the initial values are overwritten just below
    out.model = VisionMoELanguageModel<float>(out.config, init_rng);
    load_parameters(file, out.model);
    out.metadata = std::move(file.metadata);
    return out;
}

// ---- text-only models ---------------------------------------------------------------------------

// {"decoder": {"vocab_size": 68, "n_embd": 128, ...}}, the VLM config's decoder section alone.
inline io::Json text_config_to_json(const DecoderConfig& c) {
    io::Json decoder = io::Json::object();
    for_each_decoder_field(c, [&](const char* name, const auto& field) { detail::put_field(decoder, true, name, field); });
    io::Json out = io::Json::object();
    out["decoder"] = decoder;
    return out;
}

inline DecoderConfig text_config_from_json(const io::Json& j) {
    DecoderConfig c;
    for_each_decoder_field(c, [&](const char* name, auto& field) {
        try {
            detail::get_field(j.at("decoder"), true, name, field);
        } catch (const Error& e) {
            throw Error(seemoe::detail::concat("field decoder.", name, ": ", e.what()));
        }
    });
    return c;
}

// Writes a text-only model as save_model does a VLM: parameters, config, vocabulary, step, `extra`.
inline void save_text_model(const std::string& path, MoEDecoderLanguageModel<float>& model,
                            const data::CharTokenizer& tokenizer, Index step,
                            std::map<std::string, std::string> extra = {}) {
    SEEMOE_CHECK(tokenizer.vocab_size() == model.config.vocab_size, "[checkpoint] the tokenizer has ",
                 tokenizer.vocab_size(), " tokens but the model's vocab_size is ", model.config.vocab_size);
    extra["format"] = kTextModelFormat;
    extra["config"] = text_config_to_json(model.config).dump();
    extra["vocab"] = tokenizer.to_json();
    extra["step"] = std::to_string(step);
    io::save_safetensors(path, model.named_parameters(), extra);
}

struct LoadedTextModel {
    DecoderConfig config;
    MoEDecoderLanguageModel<float> model;
    data::CharTokenizer tokenizer;
    Index step = 0;
    std::map<std::string, std::string> metadata;
};

inline LoadedTextModel load_text_model(const std::string& path) {
    io::SafetensorsFile file = io::load_safetensors<float>(path);
    check_model_format(file.metadata, path, kTextModelFormat);
    const auto meta = [&](const char* key) -> const std::string& {
        const auto it = file.metadata.find(key);
        SEEMOE_CHECK(it != file.metadata.end(), "[checkpoint] '", path, "' has no '", key,
                     "' in its metadata: not a seemoe text model checkpoint");
        return it->second;
    };
    LoadedTextModel out;
    out.config =
        parse_metadata(path, "metadata 'config'", [&] { return text_config_from_json(io::Json::parse(meta("config"))); });
    check_decoder_config(out.config, "[checkpoint] '" + path + "'", "decoder.");
    out.tokenizer = parse_metadata(path, "metadata 'vocab'", [&] { return data::CharTokenizer::from_json(meta("vocab")); });
    SEEMOE_CHECK(out.tokenizer.vocab_size() == out.config.vocab_size, "[checkpoint] '", path, "' has ",
                 out.tokenizer.vocab_size(), " vocabulary tokens but a model for ", out.config.vocab_size);
    out.step = parse_step(meta("step"), path);
    Rng init_rng(0);  // the initial values are overwritten just below
    out.model = MoEDecoderLanguageModel<float>(out.config, init_rng);
    load_parameters(file, out.model);
    out.metadata = std::move(file.metadata);
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
    SEEMOE_CHECK(j.is_array() && j.size() == 6, "expected [4 words as text, has_spare, spare]");
    Rng::State s{};
    for (int i = 0; i < 4; ++i) s.words[i] = parse_u64(j.at(static_cast<std::size_t>(i)).as_string());
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
    const Index step = parse_step(file.metadata.at("step"), path);
    const std::vector<Index> param_steps = parse_metadata(path, "metadata 'param_steps'", [&] {
        const io::Json steps = io::Json::parse(file.metadata.at("param_steps"));
        SEEMOE_CHECK(steps.is_array() && steps.size() == params.size(), "expected an array of ", params.size(),
                     " step counts (one per parameter)");
        std::vector<Index> out;
        for (std::size_t i = 0; i < steps.size(); ++i) {
            out.push_back(steps.at(i).as_int());
            SEEMOE_CHECK(out.back() >= 0 && out.back() <= step, "entry ", i, " is ", out.back(),
                         ", outside [0, step ", step, "]");
        }
        return out;
    });
    Rng restored(0);
    parse_metadata(path, "metadata 'rng'", [&] { rng_from_string(restored, file.metadata.at("rng")); });
    for (std::size_t i = 0; i < params.size(); ++i) {
        for (auto [prefix, target] : {std::pair<const char*, Tensor<float>*>{"exp_avg.", &state[i].exp_avg},
                                      {"exp_avg_sq.", &state[i].exp_avg_sq}}) {
            const Tensor<float>& stored = file.at(prefix + params[i].first);
            SEEMOE_CHECK(stored.shape() == params[i].second.shape(), "[checkpoint] '", path, "': '", prefix,
                         params[i].first, "' has shape ", shape_str(stored.shape()), ", expected ",
                         shape_str(params[i].second.shape()));
            SEEMOE_CHECK(std::all_of(stored.data(), stored.data() + stored.numel(),
                                     [&](float v) { return std::isfinite(v) && (target == &state[i].exp_avg || v >= 0); }),
                         "[checkpoint] '", path, "': '", prefix, params[i].first,
                         "' holds a NaN, an infinity or (exp_avg_sq) a negative value");
            *target = stored.clone();
        }
        state[i].step = param_steps[i];
    }
    SEEMOE_CHECK(file.tensors.size() == 2 * params.size(), "[checkpoint] '", path, "' holds ", file.tensors.size(),
                 " tensors; the model's optimiser state has ", 2 * params.size());
    rng = restored;
    return step;
}

}  // namespace seemoe::nn
