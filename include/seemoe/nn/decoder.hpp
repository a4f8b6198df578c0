// seemoe/nn/decoder.hpp — the MoE decoder: SparseMoEBlock and MoEDecoderLanguageModel.
//
// A decoder block is pre-LN causal attention followed by a sparse MoE in place of the FFN:
//   x = x + attn(ln1(x));  x = x + moe(ln2(x))
// (the original took the FFN residual from ln2's output; here the residual stream stays raw).
// MoEDecoderLanguageModel embeds tokens, adds learned positions, runs the blocks, applies ln_f and
// lm_head. It works on text alone (a makeMoE-style character LM) or with a prefix of embeddings in
// front of the tokens (the VLM's visual tokens); positions count from the start of the prefix.
//
// forward() builds the training graph; forward_cached() is the inference path with one KVCache per
// block: call it once with the prompt, then once per new token. generate() continues a text with
// those caches (see there for what happens once the text is longer than block_size).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../ops/elementwise.hpp"
#include "../ops/functional.hpp"
#include "../ops/shape_ops.hpp"
#include "attention.hpp"
#include "embedding.hpp"
#include "layer_norm.hpp"
#include "moe.hpp"
#include "sampling.hpp"

namespace seemoe::nn {

struct DecoderConfig {
    Index vocab_size = 66;   // V, special tokens included
    Index n_embd = 128;      // C
    Index n_head = 8;        // H (head_dim = C / H)
    Index n_layer = 8;
    Index num_experts = 8;   // E
    Index top_k = 2;         // K
    Index expert_ratio = 4;  // expert hidden = expert_ratio * C
    Index block_size = 1000; // positions, prefix included
    double dropout = 0.1;
    // How the MoE layers route (nn/moe.hpp); the defaults are the seeds' dropless noisy top-k.
    RouterType router = RouterType::NoisyTopK;
    Index num_shared_experts = 0;       // experts every token uses (DeepSeekMoE)
    double capacity_factor = 0.0;       // training: each expert takes ceil(K*S*cf/E) of S tokens; <= 0 dropless
    double eval_capacity_factor = 0.0;  // the same in eval (generation never drops)
    OverflowPolicy overflow = OverflowPolicy::Position;  // who is dropped when an expert is full

    MoEOptions moe_options() const {
        MoEOptions o;
        o.router = router;
        o.num_shared_experts = num_shared_experts;
        o.capacity_factor = capacity_factor;
        o.eval_capacity_factor = eval_capacity_factor;
        o.overflow = overflow;
        return o;
    }
};

// Every field of a DecoderConfig, once, in checkpoint order: fn(name, field). A text model's
// checkpoint JSON and the VLM's "decoder" section (for_each_field in vlm.hpp) both walk it.
template <typename Config, typename Fn>
void for_each_decoder_field(Config& c, Fn&& fn) {
    static_assert(std::is_same_v<std::remove_const_t<Config>, DecoderConfig>,
                  "for_each_decoder_field takes a DecoderConfig");
    fn("vocab_size", c.vocab_size);
    fn("n_embd", c.n_embd);
    fn("n_head", c.n_head);
    fn("n_layer", c.n_layer);
    fn("num_experts", c.num_experts);
    fn("top_k", c.top_k);
    fn("expert_ratio", c.expert_ratio);
    fn("block_size", c.block_size);
    fn("dropout", c.dropout);
    fn("router", c.router);
    fn("num_shared_experts", c.num_shared_experts);
    fn("capacity_factor", c.capacity_factor);
    fn("eval_capacity_factor", c.eval_capacity_factor);
    fn("overflow", c.overflow);
}

// The MoE routing fields came after the first checkpoints: a checkpoint may lack them (then they
// keep their default), and they are written only when they differ from it, so a model that does
// not use them keeps the JSON it always had.
inline bool decoder_field_is_optional(std::string_view name) {
    return name == "router" || name == "num_shared_experts" || name == "capacity_factor" ||
           name == "eval_capacity_factor" || name == "overflow";
}

// The config's enum fields by name, for checkpoints, flags and summaries: enum_name(value),
// enum_values<E>() and enum_from_name(name, out) (false if no value has it). VisualTokens joins
// them in vlm.hpp.
inline const char* enum_name(RouterType r) { return router_type_name(r); }
inline const char* enum_name(OverflowPolicy p) { return overflow_policy_name(p); }
template <typename E>
std::vector<E> enum_values();
template <>
inline std::vector<RouterType> enum_values<RouterType>() {
    return {RouterType::NoisyTopK, RouterType::TopKSoftmax, RouterType::SoftmaxTopK};
}
template <>
inline std::vector<OverflowPolicy> enum_values<OverflowPolicy>() {
    return {OverflowPolicy::Position, OverflowPolicy::Priority};
}
template <typename E>
bool enum_from_name(std::string_view name, E& out) {
    for (E v : enum_values<E>())
        if (name == enum_name(v)) {
            out = v;
            return true;
        }
    return false;
}

// What is wrong with a config: the field, named as in the checkpoint JSON ("decoder.n_layer"),
// and the problem ("must be at least 1, got 0"). An empty field means the config is sound.
struct ConfigIssue {
    std::string field;
    std::string problem;
    explicit operator bool() const { return !field.empty(); }
};

// The largest model a config may describe, in parameters. With the per-field upper bounds of the
// checks below it is generous for this model family, yet small enough that a typo or a corrupt
// checkpoint fails with its field's name instead of in an allocation of terabytes.
inline constexpr double kMaxParameters = 1e9;

namespace detail {
inline ConfigIssue check_range(const std::string& field, Index value, Index lo, Index hi) {
    if (value < lo) return {field, seemoe::detail::concat("must be at least ", lo, ", got ", value)};
    if (value > hi) return {field, seemoe::detail::concat("must be at most ", hi, ", got ", value)};
    return {};
}
}  // namespace detail

// An estimate of the decoder's parameters (embeddings, attention, experts, router, head).
inline double approx_parameter_count(const DecoderConfig& c) {
    const double C = static_cast<double>(c.n_embd), V = static_cast<double>(c.vocab_size);
    const double E = static_cast<double>(c.num_experts + c.num_shared_experts);
    return 2 * V * C + static_cast<double>(c.block_size) * C +
           static_cast<double>(c.n_layer) * (4 * C * C + E * 2 * static_cast<double>(c.expert_ratio) * C * C + C * E);
}

// Checks every field of a decoder config: sizes >= 1 and below sane bounds, n_embd divisible by
// n_head, top_k <= num_experts, dropout in [0, 1), capacity factors in [0, 100], at most
// kMaxParameters. `prefix` goes before
// the field names ("decoder." inside a VLM config).
inline ConfigIssue find_decoder_issue(const DecoderConfig& c, const std::string& prefix = "") {
    for (ConfigIssue issue : {
             detail::check_range(prefix + "vocab_size", c.vocab_size, 3, 0x110000 + 3),
             detail::check_range(prefix + "n_embd", c.n_embd, 1, 65536),
             detail::check_range(prefix + "n_head", c.n_head, 1, std::max<Index>(c.n_embd, 1)),
             detail::check_range(prefix + "n_layer", c.n_layer, 1, 1024),
             detail::check_range(prefix + "num_experts", c.num_experts, 1, 4096),
             detail::check_range(prefix + "top_k", c.top_k, 1, std::max<Index>(c.num_experts, 1)),
             detail::check_range(prefix + "expert_ratio", c.expert_ratio, 1, 64),
             detail::check_range(prefix + "block_size", c.block_size, 2, Index(1) << 20),
             detail::check_range(prefix + "num_shared_experts", c.num_shared_experts, 0, 4096),
         })
        if (issue) return issue;
    if (c.n_embd % c.n_head != 0)
        return {prefix + "n_embd", seemoe::detail::concat("must be divisible by ", prefix, "n_head ", c.n_head,
                                                          ", got ", c.n_embd)};
    if (!(c.dropout >= 0.0 && c.dropout < 1.0))
        return {prefix + "dropout", seemoe::detail::concat("must be in [0, 1), got ", c.dropout)};
    // A capacity factor <= 0 means dropless; above 100 every expert could take every token anyway.
    if (!(c.capacity_factor >= 0.0 && c.capacity_factor <= 100.0))
        return {prefix + "capacity_factor", seemoe::detail::concat("must be in [0, 100], got ", c.capacity_factor)};
    if (!(c.eval_capacity_factor >= 0.0 && c.eval_capacity_factor <= 100.0))
        return {prefix + "eval_capacity_factor",
                seemoe::detail::concat("must be in [0, 100], got ", c.eval_capacity_factor)};
    const double params = approx_parameter_count(c);
    if (params > kMaxParameters)
        return {prefix + "n_embd", seemoe::detail::concat("gives a model of about ", static_cast<long long>(params / 1e6),
                                                          " M parameters with the other sizes; the limit is ",
                                                          static_cast<long long>(kMaxParameters / 1e6), " M")};
    return {};
}

// Throws Error "<where>: config field <field> <problem>" if the decoder config has a problem.
inline void check_decoder_config(const DecoderConfig& c, const std::string& where, const std::string& prefix = "") {
    const ConfigIssue issue = find_decoder_issue(c, prefix);
    SEEMOE_CHECK(!issue, where, ": config field ", issue.field, " ", issue.problem);
}

template <typename T>
class SparseMoEBlock : public Module<T> {
public:
    SparseMoEBlock() = default;
    SparseMoEBlock(const DecoderConfig& c, Rng& rng)
        : ln1(c.n_embd), attn(c.n_embd, c.n_head, /*causal=*/true, static_cast<T>(c.dropout), rng),
          ln2(c.n_embd),
          moe(c.n_embd, c.num_experts, c.top_k, c.expert_ratio * c.n_embd, static_cast<T>(c.dropout), rng,
              c.moe_options()) {}

    // trace, when given, receives this layer's routing statistics (and auxiliary losses, if it
    // asks for them).
    Tensor<T> forward(const Tensor<T>& x, Rng& rng, MoETrace<T>* trace = nullptr) const {  // (B, T, C)
        Tensor<T> h = add(x, attn.forward(ln1.forward(x), rng));             // (B, T, C)
        if (!trace) return add(h, moe.forward(ln2.forward(h), rng));         // (B, T, C)
        MoERequest request;
        request.aux_losses = trace->aux_losses;
        request.entropy = true;
        MoEOutput<T> m = moe.forward_with_stats(ln2.forward(h), rng, request);  // (B, T, C)
        trace->add(m);
        return add(h, m.out);                                                // (B, T, C)
    }

    // Inference: x holds only the new positions (B, Tn, C).
    Tensor<T> forward_cached(const Tensor<T>& x, KVCache<T>& cache) const {
        Rng unused(0);  // eval mode: no dropout, no router noise, so nothing is drawn
        Tensor<T> h = add(x, attn.forward_cached(ln1.forward(x), cache));    // (B, Tn, C)
        MoERequest dropless;  // generation never drops a token, whatever the layer's capacity
        dropless.dropless = true;
        return add(h, moe.forward_with_stats(ln2.forward(h), unused, dropless).out);  // (B, Tn, C)
    }

    LayerNorm<T> ln1;
    MultiHeadAttention<T> attn;
    LayerNorm<T> ln2;
    SparseMoE<T> moe;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "ln1", ln1);
        this->child(v, prefix, "attn", attn);
        this->child(v, prefix, "ln2", ln2);
        this->child(v, prefix, "moe", moe);
    }
};

template <typename T>
class MoEDecoderLanguageModel : public Module<T> {
public:
    MoEDecoderLanguageModel() = default;
    // The config is checked (check_decoder_config) before any layer is built.
    MoEDecoderLanguageModel(const DecoderConfig& config, Rng& rng)
        : config(checked(config)),
          token_embedding(config.vocab_size, config.n_embd, rng, T(0.02)),
          position_embedding(config.block_size, config.n_embd, rng, T(0.02)),
          ln_f(config.n_embd),
          lm_head(config.n_embd, config.vocab_size, rng) {
        for (Index i = 0; i < config.n_layer; ++i) blocks.emplace_back(config, rng);
        // A small output layer starts every logit near 0, so the initial loss is ln(V).
        lm_head.weight = detail::parameter(
            Tensor<T>::randn({config.vocab_size, config.n_embd}, rng, T(0), T(0.02)));
        lm_head.bias = detail::parameter(Tensor<T>::zeros({config.vocab_size}));
    }

    static const DecoderConfig& checked(const DecoderConfig& c) {
        check_decoder_config(c, "[MoEDecoderLanguageModel]");
        return c;
    }

    // ids (B, T) row-major, optional prefix (B, Tp, C) -> logits (B, Tp+T, V). trace, when given,
    // receives every MoE layer's routing statistics.
    Tensor<T> forward(const std::vector<Index>& ids, Index B, Index T_text, Rng& rng,
                      const Tensor<T>& prefix = Tensor<T>(), MoETrace<T>* trace = nullptr) const {
        Tensor<T> x = embed(ids, B, T_text, prefix);                         // (B, L, C)
        x = add(x, slice(position_embedding.weight, 0, 0, x.size(1)));       // (B, L, C)
        for (const auto& block : blocks) x = block.forward(x, rng, trace);   // (B, L, C)
        return lm_head.forward(ln_f.forward(x));                             // (B, L, V)
    }

    // Text alone: mean cross-entropy of ids (B, T) against targets (B, T) (kIgnoreIndex skips a
    // position), the training loss of a character language model.
    Tensor<T> loss(const std::vector<Index>& ids, const std::vector<Index>& targets, Index B, Index T_text,
                   Rng& rng, MoETrace<T>* trace = nullptr) const {
        SEEMOE_CHECK(static_cast<Index>(targets.size()) == B * T_text, "[MoEDecoderLanguageModel] ",
                     targets.size(), " targets do not fill (B, T) = (", B, ", ", T_text, ")");
        return cross_entropy(forward(ids, B, T_text, rng, Tensor<T>(), trace), targets);  // ()
    }

    // Inference with KV caches (one per block, reset by the caller): x (B, Tn, C) are the
    // embeddings of the new positions, which start at caches[0].length.
    Tensor<T> forward_cached(const Tensor<T>& x_new, std::vector<KVCache<T>>& caches) const {
        NoGradGuard no_grad;
        const Index start = caches.at(0).length, Tn = x_new.size(1);
        SEEMOE_CHECK(start + Tn <= config.block_size, "[MoEDecoderLanguageModel] position ", start + Tn,
                     " exceeds block_size ", config.block_size);
        Tensor<T> x = add(x_new, slice(position_embedding.weight, 0, start, start + Tn));  // (B, Tn, C)
        for (std::size_t i = 0; i < blocks.size(); ++i) x = blocks[i].forward_cached(x, caches[i]);
        return lm_head.forward(ln_f.forward(x));                                            // (B, Tn, V)
    }

    // Token embeddings (B, T, C), with the prefix in front when given.
    Tensor<T> embed(const std::vector<Index>& ids, Index B, Index T_text, const Tensor<T>& prefix) const {
        SEEMOE_CHECK(static_cast<Index>(ids.size()) == B * T_text, "[MoEDecoderLanguageModel] ",
                     ids.size(), " ids do not fill (B, T) = (", B, ", ", T_text, ")");
        Tensor<T> x = token_embedding.forward(ids, {B, T_text});             // (B, T, C)
        if (prefix.defined()) {
            SEEMOE_CHECK(prefix.dim() == 3 && prefix.size(0) == B && prefix.size(2) == config.n_embd,
                         "[MoEDecoderLanguageModel] prefix ", shape_str(prefix.shape()),
                         " does not match (B, *, C) = (", B, ", *, ", config.n_embd, ")");
            x = concat(std::vector<Tensor<T>>{prefix, x}, 1);                 // (B, Tp+T, C)
        }
        SEEMOE_CHECK(x.size(1) <= config.block_size, "[MoEDecoderLanguageModel] sequence of ", x.size(1),
                     " positions exceeds block_size ", config.block_size);
        return x;
    }

    // Fresh caches for B sequences of up to max_len positions.
    std::vector<KVCache<T>> make_caches(Index B, Index max_len) const {
        std::vector<KVCache<T>> caches(blocks.size());
        for (auto& c : caches)
            c.reset(B, config.n_head, config.n_embd / config.n_head, std::min(max_len, config.block_size));
        return caches;
    }

    // Continues `prompt` (at least one token) by options.max_new_tokens tokens and returns them;
    // on_token(id) sees each one as soon as it is chosen (to stream it). Each token is predicted
    // from the last block_size tokens, as in training (and as makeMoE's generate crops its
    // context). While the text fits in block_size the KV caches make each step one position of
    // work; after that the window slides every step, and since positions are absolute (the
    // oldest token leaves position 0, every other moves down one) the cached keys no longer
    // apply: the caches are refilled from the window's block_size tokens, one forward of
    // block_size positions per new token.
    template <typename OnToken>
    std::vector<Index> generate(const std::vector<Index>& prompt, const SamplingOptions& options, Rng& rng,
                                OnToken&& on_token) {
        SEEMOE_CHECK(!prompt.empty(), "[MoEDecoderLanguageModel::generate] the prompt needs at least one token");
        for (Index id : prompt)
            SEEMOE_CHECK(id >= 0 && id < config.vocab_size, "[MoEDecoderLanguageModel::generate] prompt token ", id,
                         " is outside the vocabulary of ", config.vocab_size);
        NoGradGuard no_grad;
        const bool was_training = this->is_training();
        this->eval();
        const Index W = config.block_size, V = config.vocab_size;
        std::vector<Index> text = prompt, generated;
        std::vector<KVCache<T>> caches = make_caches(1, W);
        Index start = 0;  // the caches hold the keys of text[start, start + caches[0].length)
        for (Index step = 0; step < options.max_new_tokens; ++step) {
            const Index length = static_cast<Index>(text.size());
            const Index window = std::max<Index>(0, length - W);
            if (window != start) {  // the window slid: its tokens all sit at new positions
                start = window;
                for (auto& cache : caches) cache.length = 0;
            }
            const Index done = start + caches[0].length;
            const std::vector<Index> fresh(text.begin() + done, text.end());
            const Index Tn = static_cast<Index>(fresh.size());
            Tensor<T> logits = forward_cached(embed(fresh, 1, Tn, Tensor<T>()), caches);  // (1, Tn, V)
            const Index next = sample_token(logits.data() + (Tn - 1) * V, V, options, rng);
            text.push_back(next);
            generated.push_back(next);
            on_token(next);
        }
        this->train(was_training);
        return generated;
    }

    std::vector<Index> generate(const std::vector<Index>& prompt, const SamplingOptions& options, Rng& rng) {
        return generate(prompt, options, rng, [](Index) {});
    }

    DecoderConfig config;
    Embedding<T> token_embedding;     // (V, C)
    Embedding<T> position_embedding;  // (block_size, C)
    std::vector<SparseMoEBlock<T>> blocks;
    LayerNorm<T> ln_f;
    Linear<T> lm_head;                // (V, C)

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "token_embedding", token_embedding);
        this->child(v, prefix, "position_embedding", position_embedding);
        this->children(v, prefix, "blocks", blocks);
        this->child(v, prefix, "ln_f", ln_f);
        this->child(v, prefix, "lm_head", lm_head);
    }
};

}  // namespace seemoe::nn
