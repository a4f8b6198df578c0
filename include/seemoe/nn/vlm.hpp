// seemoe/nn/vlm.hpp — VisionMoELanguageModel: ViT -> projector -> visual tokens -> MoE decoder.
//
// Data flow for a batch of B images and captions padded to L characters:
//   images (B, 3, S, S) --ViT--> (B, 1+P, D) --pick--> (B, Tv, D) --projector--> (B, Tv, C)
//   input ids [<bos>, c1..cn, <pad>..] (B, L) --embed--> (B, L, C)
//   decoder over [visual tokens | text] (B, Tv+L, C) --> logits (B, Tv+L, V)
// Tv = 1 with VisualTokens::CLS (the CLS feature only, as the original seeMoE), Tv = P with
// VisualTokens::Patches (every patch feature, LLaVA-style), or Tv = 1 with VisualTokens::Mean (the
// average of the P patch features after the ViT's final layer norm: global average pooling, which
// "Better plain ViT baselines" (Beyer et al. 2022) prefers to the CLS token for small ViTs). Targets are [c1..cn, <eos>, ignored..];
// visual positions are ignored in the loss, so the first character is predicted from the image
// through <bos>.
//
// generate() captions images with a KV cache: the image is encoded once, then one token per step
// (the fused DecoderStep), greedy or sampled (temperature, top-k, top-p) with an explicit Rng.
#pragma once

#include <algorithm>
#include <cmath>
#include <memory>
#include <numeric>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../data/tokenizer.hpp"
#include "../ops/functional.hpp"
#include "../ops/reduce.hpp"
#include "decode_step.hpp"
#include "decoder.hpp"
#include "projector.hpp"
#include "sampling.hpp"
#include "vision.hpp"

namespace seemoe::nn {

enum class VisualTokens { CLS, Patches, Mean };

// The names of VisualTokens in configs, checkpoints and flags: "cls", "patches" and "mean".
inline const char* visual_tokens_name(VisualTokens v) {
    return v == VisualTokens::CLS ? "cls" : v == VisualTokens::Patches ? "patches" : "mean";
}
// The VisualTokens called `name`; false if there is none.
inline bool visual_tokens_from_name(std::string_view name, VisualTokens& out) {
    for (VisualTokens v : {VisualTokens::CLS, VisualTokens::Patches, VisualTokens::Mean})
        if (name == visual_tokens_name(v)) {
            out = v;
            return true;
        }
    return false;
}

inline const char* enum_name(VisualTokens v) { return visual_tokens_name(v); }
template <>
inline std::vector<VisualTokens> enum_values<VisualTokens>() {
    return {VisualTokens::CLS, VisualTokens::Patches, VisualTokens::Mean};
}

struct VLMConfig {
    ViTConfig vision;
    DecoderConfig decoder;
    VisualTokens visual_tokens = VisualTokens::CLS;
    // The tokenizer's special tokens (the model starts captions with bos and stops at eos).
    Index pad_id = data::CharTokenizer::pad_id;
    Index bos_id = data::CharTokenizer::bos_id;
    Index eos_id = data::CharTokenizer::eos_id;

    // Visual tokens per image: every patch, or one (the CLS feature or the patches' mean).
    Index num_visual_tokens() const { return visual_tokens == VisualTokens::Patches ? vision.num_patches() : 1; }
};

// Every field of a VLMConfig, once, in checkpoint order: fn(section, name, field) with section
// "vision", "decoder" or "" (top level). The checkpoint's JSON (nn/checkpoint.hpp) and the
// example's summary and flags all walk this list, so a new field is added in one place.
template <typename Config, typename Fn>
void for_each_field(Config& c, Fn&& fn) {
    static_assert(std::is_same_v<std::remove_const_t<Config>, VLMConfig>, "for_each_field takes a VLMConfig");
    fn("vision", "image_size", c.vision.image_size);
    fn("vision", "patch_size", c.vision.patch_size);
    fn("vision", "channels", c.vision.channels);
    fn("vision", "dim", c.vision.dim);
    fn("vision", "n_blocks", c.vision.n_blocks);
    fn("vision", "n_heads", c.vision.n_heads);
    fn("vision", "mlp_ratio", c.vision.mlp_ratio);
    fn("vision", "dropout", c.vision.dropout);
    for_each_decoder_field(c.decoder, [&](const char* name, auto& field) { fn("decoder", name, field); });
    fn("", "visual_tokens", c.visual_tokens);
    fn("", "pad_id", c.pad_id);
    fn("", "bos_id", c.bos_id);
    fn("", "eos_id", c.eos_id);
}

// An estimate of the parameters a config builds (weights of every matrix and embedding; norms
// and biases are a rounding error).
inline double approx_parameter_count(const VLMConfig& c) {
    const double D = static_cast<double>(c.vision.dim), C = static_cast<double>(c.decoder.n_embd);
    const double p = static_cast<double>(c.vision.patch_size), P = static_cast<double>(c.vision.num_patches());
    const double vit = 3 * p * p * D + (P + 1) * D +
                       static_cast<double>(c.vision.n_blocks) * (4 + 2 * static_cast<double>(c.vision.mlp_ratio)) * D * D;
    return vit + D * C + C * C + approx_parameter_count(c.decoder);
}

// Checks every field of a config before anything is built: the decoder's (find_decoder_issue,
// nn/decoder.hpp), the ViT's sizes >= 1 and below sane bounds, the image a whole number of
// patches, enough positions for the visual tokens, special ids inside the vocabulary and
// distinct, at most kMaxParameters in all. The one validation behind the model's constructor,
// checkpoints, the trainer's flags and bench.
inline ConfigIssue find_config_issue(const VLMConfig& c) {
    const auto fmt = [](auto... parts) { return seemoe::detail::concat(parts...); };
    const Index S = c.vision.image_size, p = c.vision.patch_size;
    for (ConfigIssue issue : {
             detail::check_range("vision.image_size", S, 1, 8192),
             detail::check_range("vision.patch_size", p, 1, std::max<Index>(S, 1)),
             detail::check_range("vision.channels", c.vision.channels, 3, 3),
             detail::check_range("vision.dim", c.vision.dim, 1, 65536),
             detail::check_range("vision.n_blocks", c.vision.n_blocks, 1, 1024),
             detail::check_range("vision.n_heads", c.vision.n_heads, 1, std::max<Index>(c.vision.dim, 1)),
             detail::check_range("vision.mlp_ratio", c.vision.mlp_ratio, 1, 64),
             find_decoder_issue(c.decoder, "decoder."),
         })
        if (issue) return issue;
    if (S % p != 0) return {"vision.image_size", fmt("must be a multiple of vision.patch_size ", p, ", got ", S)};
    if (c.vision.dim % c.vision.n_heads != 0)
        return {"vision.dim", fmt("must be divisible by vision.n_heads ", c.vision.n_heads, ", got ", c.vision.dim)};
    if (!(c.vision.dropout >= 0.0 && c.vision.dropout < 1.0))
        return {"vision.dropout", fmt("must be in [0, 1), got ", c.vision.dropout)};
    if (c.decoder.block_size < c.num_visual_tokens() + 2)
        return {"decoder.block_size", fmt("must be at least ", c.num_visual_tokens() + 2, " (", c.num_visual_tokens(),
                                          " visual tokens, <bos> and one character), got ", c.decoder.block_size)};
    for (auto [field, value] : {std::pair<const char*, Index>{"pad_id", c.pad_id}, {"bos_id", c.bos_id},
                                {"eos_id", c.eos_id}})
        if (value < 0 || value >= c.decoder.vocab_size)
            return {field, fmt("must be a token id in [0, ", c.decoder.vocab_size, "), got ", value)};
    if (c.pad_id == c.bos_id || c.pad_id == c.eos_id || c.bos_id == c.eos_id)
        return {"eos_id", fmt("pad_id, bos_id and eos_id must differ, got ", c.pad_id, ", ", c.bos_id, ", ", c.eos_id)};
    const double params = approx_parameter_count(c);
    if (params > kMaxParameters)
        return {"vision.dim", fmt("gives a model of about ", static_cast<long long>(params / 1e6),
                                  " M parameters with the other sizes; the limit is ",
                                  static_cast<long long>(kMaxParameters / 1e6), " M")};
    return {};
}

// Throws Error "<where>: config field <field> <problem>" if the config has a problem.
inline void check_config(const VLMConfig& c, const std::string& where) {
    const ConfigIssue issue = find_config_issue(c);
    SEEMOE_CHECK(!issue, where, ": config field ", issue.field, " ", issue.problem);
}

template <typename T>
class VisionMoELanguageModel : public Module<T> {
public:
    VisionMoELanguageModel() = default;
    // The config is checked (check_config) before any layer is built.
    VisionMoELanguageModel(const VLMConfig& config, Rng& rng)
        : config(checked(config)),
          vision_encoder(config.vision, rng),
          projector(config.vision.dim, config.decoder.n_embd, static_cast<T>(config.decoder.dropout), rng),
          decoder(config.decoder, rng) {}

    Index num_visual_tokens() const { return config.num_visual_tokens(); }

    static const VLMConfig& checked(const VLMConfig& c) {
        check_config(c, "[VisionMoELanguageModel]");
        return c;
    }

    // images (B, 3, S, S) -> visual tokens (B, Tv, C)
    Tensor<T> encode_images(const Tensor<T>& images, Rng& rng) const {
        Tensor<T> features;
        if (config.visual_tokens == VisualTokens::CLS) {
            features = vision_encoder.forward_cls(images, rng);              // (B, 1, D)
        } else {
            features = vision_encoder.forward(images, rng);                  // (B, 1+P, D)
            features = slice(features, 1, 1, features.size(1));              // (B, P, D)
            // The CLS row still runs through the encoder (its attention mixes it into the
            // patches) but is not part of the average.
            if (config.visual_tokens == VisualTokens::Mean)
                features = mean(features, 1, /*keepdim=*/true);              // (B, 1, D)
        }
        return projector.forward(features, rng);                             // (B, Tv, C)
    }

    // logits (B, Tv+L, V) for input ids (B, L); trace, when given, receives every MoE layer's
    // routing statistics.
    Tensor<T> forward(const Tensor<T>& images, const std::vector<Index>& input_ids, Index L, Rng& rng,
                      MoETrace<T>* trace = nullptr) const {
        const Index B = images.size(0);
        Tensor<T> visual = encode_images(images, rng);                       // (B, Tv, C)
        return decoder.forward(input_ids, B, L, rng, visual, trace);         // (B, Tv+L, V)
    }

    // Mean cross-entropy over the caption targets (B, L); kIgnoreIndex (-100) marks padding.
    // label_smoothing: see cross_entropy (functional.hpp); 0 is the plain loss.
    Tensor<T> loss(const Tensor<T>& images, const std::vector<Index>& input_ids,
                   const std::vector<Index>& targets, Index L, Rng& rng, MoETrace<T>* trace = nullptr,
                   double label_smoothing = 0.0) const {
        const Index B = images.size(0), Tv = num_visual_tokens();
        SEEMOE_CHECK(static_cast<Index>(targets.size()) == B * L, "[VisionMoELanguageModel] ",
                     targets.size(), " targets do not fill (B, L) = (", B, ", ", L, ")");
        Tensor<T> logits = forward(images, input_ids, L, rng, trace);        // (B, Tv+L, V)
        std::vector<Index> full_targets(static_cast<std::size_t>(B * (Tv + L)), kIgnoreIndex);
        for (Index b = 0; b < B; ++b)
            std::copy_n(targets.begin() + b * L, L, full_targets.begin() + b * (Tv + L) + Tv);
        return cross_entropy(logits, full_targets, kIgnoreIndex, label_smoothing);  // ()
    }

    // Captions for every image in the batch (token ids without <bos>/<eos>), KV-cached: the visual
    // tokens and <bos> go through forward_cached, every later token through the fused one-token
    // step (DecoderStep, nn/decode_step.hpp) when the decoder's MoE layers allow it. `weights`
    // bf16 runs that step on bf16 copies of the big matrices (made for this call).
    std::vector<std::vector<Index>> generate(const Tensor<T>& images, const SamplingOptions& options,
                                             Rng& rng, WeightStorage weights = WeightStorage::f32) {
        NoGradGuard no_grad;
        const bool was_training = this->is_training();
        this->eval();
        const Index B = images.size(0), V = config.decoder.vocab_size;
        Rng unused(0);
        Tensor<T> visual = encode_images(images, unused);                    // (B, Tv, C)
        const Index Tv = visual.size(1);
        auto caches = decoder.make_caches(B, Tv + 1 + options.max_new_tokens);
        std::vector<Index> step_ids(static_cast<std::size_t>(B), config.bos_id);
        std::vector<std::vector<Index>> captions(static_cast<std::size_t>(B));
        std::vector<bool> done(static_cast<std::size_t>(B), false);
        std::unique_ptr<DecoderStep<T>> fused;
        SEEMOE_CHECK(weights == WeightStorage::f32 || DecoderStep<T>::supports(decoder),
                     "[VisionMoELanguageModel::generate] bf16 weights need the fused decoder step, which this "
                     "model's MoE layers do not allow");
        if (DecoderStep<T>::supports(decoder)) fused = std::make_unique<DecoderStep<T>>(decoder, weights);
        std::vector<T> step_logits(static_cast<std::size_t>(B * V));        // (B, V)
        Tensor<T> logits;                                                    // (B, Tn, V)
        for (Index step = 0; step < options.max_new_tokens; ++step) {
            // Row b's logits of the newest position.
            const T* last = nullptr;
            Index stride = V;
            if (step > 0 && fused) {
                fused->step_tokens(step_ids, caches, step_logits.data());
                last = step_logits.data();
            } else {
                Tensor<T> x = step == 0 ? decoder.embed(step_ids, B, 1, visual)   // (B, Tv+1, C)
                                        : decoder.embed(step_ids, B, 1, Tensor<T>());  // (B, 1, C)
                logits = decoder.forward_cached(x, caches);                   // (B, Tn, V)
                const Index Tn = logits.size(1);
                last = logits.data() + (Tn - 1) * V;
                stride = Tn * V;
            }
            bool all_done = true;
            for (Index b = 0; b < B; ++b) {
                const Index next = sample_token(last + b * stride, V, options, rng);
                step_ids[b] = next;
                if (done[b]) continue;
                if (next == config.eos_id) done[b] = true;
                else captions[b].push_back(next);
                all_done = all_done && done[b];
            }
            if (all_done) break;
        }
        this->train(was_training);
        return captions;
    }

    VLMConfig config;
    ViT<T> vision_encoder;
    MultiModalProjector<T> projector;
    MoEDecoderLanguageModel<T> decoder;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "vision_encoder", vision_encoder);
        this->child(v, prefix, "projector", projector);
        this->child(v, prefix, "decoder", decoder);
    }
};

}  // namespace seemoe::nn
