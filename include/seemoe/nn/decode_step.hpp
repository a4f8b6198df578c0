// seemoe/nn/decode_step.hpp — DecoderStep: one new token through the whole MoE decoder, fused.
//
// Generation spends its time on one position at a time. MoEDecoderLanguageModel::forward_cached
// does that with the ordinary ops, which is correct but makes a few dozen tensors per layer and
// per token (layer norms, the qkv row, the router's logits, top-k, gates, routing statistics).
// DecoderStep does the same arithmetic on buffers it sizes once: for each block
//   h = ln1(x); qkv = Wqkv h; append k, v to the block's KVCache; a = attention of q over the cache;
//   x += Wproj a + b; h = ln2(x); route h (eval: no noise); x += sum_k gate_k expert_k(h)
// then logits = lm_head(ln_f(x)). Each weight is read once per token; the chosen experts run on the
// threads as in the MoE's own inference path (detail::moe_experts_inference, ops/moe.hpp), the
// rest on the calling thread. Nothing is allocated per token.
//
// Weight storage: WeightStorage::bf16 (float models only) keeps a bf16 copy (ops/bf16.hpp) of the
// big matrices (qkv, proj and every expert's fc1 and fc2) and multiplies with those: generation
// reads its weights once per token, so half the bytes is up to twice the speed, at the price of
// rounding each weight to 8 significant bits. The router, the norms, the biases and lm_head stay
// float (they are small, and the router's choice is the most sensitive step).
//
// Convention: the caller owns the KV caches (make_caches) and fills them with the prompt through
// forward_cached; step() then appends one position per call, at caches[0].length, for each of the
// B sequences, and returns the logits (B, V). The model must be in eval mode (no dropout, no router
// noise) and stay alive, unchanged in shape, while the DecoderStep is used. step() gives the logits
// of forward_cached up to float rounding (tested, and in double against the uncached forward).
//
// Legend: B sequences, C channels, H heads, D head dim, S cached positions, E experts, K top-k,
// Hd expert hidden units, V vocabulary.
#pragma once

#include <algorithm>
#include <cmath>
#include <string_view>
#include <type_traits>
#include <vector>

#include "../ops/bf16.hpp"
#include "../ops/moe.hpp"
#include "decoder.hpp"

namespace seemoe::nn {

// How DecoderStep stores the decoder's big matrices: as the model's floats, or rounded to bf16.
enum class WeightStorage { f32, bf16 };

inline const char* weight_storage_name(WeightStorage w) { return w == WeightStorage::f32 ? "f32" : "bf16"; }
// The WeightStorage called `name` ("f32" or "bf16"); false if there is none.
inline bool weight_storage_from_name(std::string_view name, WeightStorage& out) {
    for (WeightStorage w : {WeightStorage::f32, WeightStorage::bf16})
        if (name == weight_storage_name(w)) {
            out = w;
            return true;
        }
    return false;
}

template <typename T>
class DecoderStep {
public:
    // Whether the fused step covers this model: ReLU experts of one size with one dropout (the
    // MoE's fused op) and no expert dispatcher (expert parallelism runs the ordinary path).
    static bool supports(const MoEDecoderLanguageModel<T>& model) {
        for (const auto& block : model.blocks)
            if (!block.moe.fusable() || block.moe.dispatcher) return false;
        return !model.blocks.empty();
    }

    explicit DecoderStep(const MoEDecoderLanguageModel<T>& model, WeightStorage storage = WeightStorage::f32)
        : model_(&model), storage_(storage) {
        SEEMOE_CHECK(supports(model), "[DecoderStep] the model's MoE layers are not ReLU experts of one size "
                                      "run in this process; use forward_cached");
        SEEMOE_CHECK(storage == WeightStorage::f32 || (std::is_same_v<T, float>),
                     "[DecoderStep] bf16 weight storage is for float models");
        const DecoderConfig& c = model.config;
        const Index C = c.n_embd, E = model.blocks.front().moe.num_experts();
        x_.resize(static_cast<std::size_t>(C));
        h_.resize(static_cast<std::size_t>(C));
        qkv_.resize(static_cast<std::size_t>(3 * C));
        att_.resize(static_cast<std::size_t>(C));
        moe_out_.resize(static_cast<std::size_t>(C));
        router_logits_.resize(static_cast<std::size_t>(E));
        order_.resize(static_cast<std::size_t>(E));
        gates_.resize(static_cast<std::size_t>(c.top_k));
        experts_.resize(static_cast<std::size_t>(c.top_k));
        // The experts' tensors as references, made once (the MoE builds them on every forward).
        for (const auto& block : model.blocks) {
            routed_.push_back(refs(block.moe.experts));
            shared_.push_back(refs(block.moe.shared_experts));
            shared_ids_.push_back(std::vector<Index>(block.moe.shared_experts.size()));
            for (std::size_t s = 0; s < block.moe.shared_experts.size(); ++s) shared_ids_.back()[s] = Index(s);
            shared_gates_.push_back(std::vector<T>(block.moe.shared_experts.size(), T(1)));
            if (storage == WeightStorage::bf16) bf16_.push_back(Bf16Block::from(block));
        }
    }

    WeightStorage storage() const { return storage_; }

    // x (B, C): the input embeddings of each sequence's next position (a token's embedding, or a
    // visual token; the position embedding is added here). Appends them to the caches and writes
    // the logits (B, V) to `logits`.
    void step(const T* x, Index B, std::vector<KVCache<T>>& caches, T* logits) {
        const MoEDecoderLanguageModel<T>& m = *model_;
        const DecoderConfig& c = m.config;
        const Index C = c.n_embd, V = c.vocab_size;
        SEEMOE_CHECK(caches.size() == m.blocks.size(), "[DecoderStep] ", caches.size(), " KV caches for ",
                     m.blocks.size(), " blocks");
        SEEMOE_CHECK(!m.is_training(), "[DecoderStep] the model is in training mode; call eval() first");
        const Index pos = caches.front().length;
        SEEMOE_CHECK(pos + 1 <= c.block_size, "[DecoderStep] position ", pos + 1, " exceeds block_size ",
                     c.block_size);
        for (const auto& cache : caches)
            SEEMOE_CHECK(cache.batch == B && cache.heads == c.n_head && cache.head_dim == C / c.n_head &&
                             cache.length == pos && pos < cache.capacity,
                         "[DecoderStep] a KV cache does not fit: batch ", cache.batch, " for B = ", B, ", length ",
                         cache.length, " of ", cache.capacity, " (expected ", pos, ")");
        scores_.resize(static_cast<std::size_t>(caches.front().capacity));  // allocates once
        const T* position = m.position_embedding.weight.data() + pos * C;  // (C)
        for (Index b = 0; b < B; ++b) {
            for (Index i = 0; i < C; ++i) x_[i] = x[b * C + i] + position[i];
            for (std::size_t l = 0; l < m.blocks.size(); ++l) block(l, b, pos, caches[l]);
            layer_norm_row(h_.data(), x_.data(), m.ln_f, C);
            linear_row(logits + b * V, h_.data(), m.lm_head);                       // (V)
        }
        for (auto& cache : caches) cache.length = pos + 1;
    }

    // The same for token ids (B): their embeddings are looked up here.
    void step_tokens(const std::vector<Index>& ids, std::vector<KVCache<T>>& caches, T* logits) {
        const MoEDecoderLanguageModel<T>& m = *model_;
        const Index C = m.config.n_embd, B = static_cast<Index>(ids.size());
        tokens_.resize(static_cast<std::size_t>(B * C));  // no allocation once B has been seen
        for (Index b = 0; b < B; ++b) {
            SEEMOE_CHECK(ids[b] >= 0 && ids[b] < m.config.vocab_size, "[DecoderStep] token ", ids[b],
                         " is outside the vocabulary of ", m.config.vocab_size);
            std::copy_n(m.token_embedding.weight.data() + ids[b] * C, C, tokens_.data() + b * C);
        }
        step(tokens_.data(), B, caches, logits);
    }

private:
    // The bf16 copies of one block's big matrices.
    struct Bf16Expert {
        Bf16Matrix fc1, fc2;  // (Hd, C), (C, Hd)
    };
    struct Bf16Block {
        Bf16Matrix qkv, proj;  // (3C, C), (C, C)
        std::vector<Bf16Expert> experts, shared;
        static Bf16Matrix of(const Linear<T>& lin) {
            if constexpr (std::is_same_v<T, float>) {
                return Bf16Matrix::from(lin.weight.data(), lin.weight.size(0), lin.weight.size(1));
            } else {
                return Bf16Matrix();  // never: bf16 storage is refused for other types
            }
        }
        static std::vector<Bf16Expert> of(const std::vector<Expert<T>>& list) {
            std::vector<Bf16Expert> out;
            for (const auto& e : list) out.push_back({of(e.fc1), of(e.fc2)});
            return out;
        }
        static Bf16Block from(const SparseMoEBlock<T>& b) {
            return {of(b.attn.qkv), of(b.attn.proj), of(b.moe.experts), of(b.moe.shared_experts)};
        }
    };

    // out (N) = W a (+ bias) with W (N, K) = lin's weight, or its bf16 copy `bf` when given.
    static void linear_row(T* out, const T* a, const Linear<T>& lin, const Bf16Matrix* bf) {
        if constexpr (std::is_same_v<T, float>) {
            if (bf) {
                const bool bias = lin.bias.defined();
                if (bias) std::copy_n(lin.bias.data(), bf->rows, out);
                bf16_rows(bf->rows, bf->cols, a, bf->data.data(), bf->cols, out, bias);
                return;
            }
        }
        linear_row(out, a, lin);
    }

    // out (C) = sum_k gates[k] expert_{ids[k]}(h) with the experts' bf16 copies: the hidden units
    // cut into parts of 128 run on the threads, as detail::moe_experts_inference does in float,
    // and the parts' shares are added in order on this thread.
    void experts_bf16(T* out, const T* h, const T* gates, const std::vector<Index>& ids, Index K,
                      const std::vector<Expert<T>>& list, const std::vector<Bf16Expert>& bf) {
        const Index C = model_->config.n_embd, Hd = list.front().fc1.weight.size(0);
        const Index parts = std::max<Index>(1, Hd / seemoe::detail::kMoEInferencePartWidth);
        hidden_.resize(static_cast<std::size_t>(K * Hd));       // allocates on the first token only
        shares_.resize(static_cast<std::size_t>(parts * K * C));
        T* hidden = hidden_.data();
        T* shares = shares_.data();
        auto part = [&](Index p) {
            const Index h0 = Hd * p / parts, width = Hd * (p + 1) / parts - h0;
            for (Index s = 0; s < K; ++s) {
                const Expert<T>& e = list[ids[s]];
                const Bf16Expert& w = bf[ids[s]];
                T* hs = hidden + s * Hd + h0;  // (width)
                linear_slice(hs, h, w.fc1, h0, width, C, e.fc1.bias, h0);
                for (Index i = 0; i < width; ++i) hs[i] = std::max(hs[i], T(0));
                T* y = shares + (p * K + s) * C;  // (C): fc2 over this part's hidden units
                const bool b2 = p == 0 && e.fc2.bias.defined();
                if (b2) std::copy_n(e.fc2.bias.data(), C, y);
                if constexpr (std::is_same_v<T, float>)
                    bf16_rows(C, width, hs, w.fc2.data.data() + h0, Hd, y, b2);
            }
        };
        if (parts > 1) {
            parallel_for(parts, part);
        } else {
            part(0);
        }
        VectorMap<T> o(out, C);
        o.setZero();
        for (Index s = 0; s < K; ++s)
            for (Index p = 0; p < parts; ++p) o += gates[s] * ConstVectorMap<T>(shares + (p * K + s) * C, C);
    }

    // out (rows) = W[r0 : r0 + rows, :] a (+ bias[b0 : b0 + rows]) for a bf16 W (., K).
    static void linear_slice(T* out, const T* a, const Bf16Matrix& w, Index r0, Index rows, Index K,
                             const Tensor<T>& bias, Index b0) {
        if constexpr (std::is_same_v<T, float>) {
            const bool has_bias = bias.defined();
            if (has_bias) std::copy_n(bias.data() + b0, rows, out);
            bf16_rows(rows, K, a, w.data.data() + r0 * K, K, out, has_bias);
        }
    }

    static std::vector<ExpertWeightRefs<T>> refs(const std::vector<Expert<T>>& list) {
        std::vector<ExpertWeightRefs<T>> r;
        for (const auto& e : list) r.push_back({&e.fc1.weight, &e.fc1.bias, &e.fc2.weight, &e.fc2.bias});
        return r;
    }

    // out (C) = layer_norm(x) as ops/functional.hpp computes it: two passes, biased variance.
    static void layer_norm_row(T* out, const T* x, const LayerNorm<T>& ln, Index C) {
        const ConstVectorMap<T> xr(x, C);
        VectorMap<T> y(out, C);
        const T mean = xr.mean();
        y = xr.array() - mean;
        const T rstd = T(1) / std::sqrt(y.squaredNorm() / static_cast<T>(C) + ln.eps);
        y = (y.array() * rstd * ConstVectorMap<T>(ln.weight.data(), C).array() +
             ConstVectorMap<T>(ln.bias.data(), C).array()).matrix();
    }

    // out (out_features) = W a + bias, W stored (out, in) as Linear keeps it.
    static void linear_row(T* out, const T* a, const Linear<T>& lin) {
        const Index N = lin.weight.size(0), K = lin.weight.size(1);
        const bool bias = lin.bias.defined();
        if (bias) std::copy_n(lin.bias.data(), N, out);
        seemoe::detail::weight_slice_times(out, a, lin.weight.data(), N, K, K, bias);
    }

    // Sequence b's row x_ through block l, its keys and values written at position pos.
    void block(std::size_t l, Index b, Index pos, KVCache<T>& cache) {
        const SparseMoEBlock<T>& blk = model_->blocks[l];
        const DecoderConfig& c = model_->config;
        const Index C = c.n_embd, H = c.n_head, D = C / H, S = pos + 1;

        // ---- attention over the cache ---------------------------------------------------------
        layer_norm_row(h_.data(), x_.data(), blk.ln1, C);
        const Bf16Block* bf = storage_ == WeightStorage::bf16 ? &bf16_[l] : nullptr;
        linear_row(qkv_.data(), h_.data(), blk.attn.qkv, bf ? &bf->qkv : nullptr);  // (3C) q | k | v
        for (Index hd = 0; hd < H; ++hd) {
            std::copy_n(qkv_.data() + C + hd * D, D, cache.key(b, hd, pos));
            std::copy_n(qkv_.data() + 2 * C + hd * D, D, cache.value(b, hd, pos));
        }
        const T scale = T(1) / std::sqrt(static_cast<T>(D));
        for (Index hd = 0; hd < H; ++hd) {
            // Keys (and values) of one head are rows D apart: scores = K q, out = V^T p.
            const ConstMatrixMap<T> keys(cache.key(b, hd, 0), S, D);               // (S, D)
            const ConstMatrixMap<T> values(cache.value(b, hd, 0), S, D);           // (S, D)
            VectorMap<T> score(scores_.data(), S);
            score.noalias() = keys * ConstVectorMap<T>(qkv_.data() + hd * D, D);
            score *= scale;
            score = (score.array() - score.maxCoeff()).exp().matrix();
            score /= score.sum();
            VectorMap<T>(att_.data() + hd * D, D).noalias() = values.transpose() * score;
        }
        linear_row(h_.data(), att_.data(), blk.attn.proj, bf ? &bf->proj : nullptr);  // (C)
        VectorMap<T>(x_.data(), C) += ConstVectorMap<T>(h_.data(), C);

        // ---- the sparse MoE -------------------------------------------------------------------
        const SparseMoE<T>& moe = blk.moe;
        layer_norm_row(h_.data(), x_.data(), blk.ln2, C);
        linear_row(router_logits_.data(), h_.data(), moe.router.route);             // (E)
        route(moe.router);
        const Index Hd = moe.experts.front().fc1.weight.size(0), K = moe.router.top_k;
        if (bf) {
            experts_bf16(moe_out_.data(), h_.data(), gates_.data(), experts_, K, moe.experts, bf->experts);
        } else {
            seemoe::detail::moe_experts_inference(moe_out_.data(), h_.data(), gates_.data(), experts_, Index(1), C,
                                                  K, Hd, ExpertWeightsView<T>(routed_[l]));
        }
        VectorMap<T>(x_.data(), C) += ConstVectorMap<T>(moe_out_.data(), C);
        if (!moe.shared_experts.empty()) {
            const Index Sh = static_cast<Index>(moe.shared_experts.size());
            const Index Hs = moe.shared_experts.front().fc1.weight.size(0);
            if (bf) {
                experts_bf16(moe_out_.data(), h_.data(), shared_gates_[l].data(), shared_ids_[l], Sh,
                             moe.shared_experts, bf->shared);
            } else {
                seemoe::detail::moe_experts_inference(moe_out_.data(), h_.data(), shared_gates_[l].data(),
                                                      shared_ids_[l], Index(1), C, Sh, Hs,
                                                      ExpertWeightsView<T>(shared_[l]));
            }
            VectorMap<T>(x_.data(), C) += ConstVectorMap<T>(moe_out_.data(), C);
        }
    }

    // gates_ and experts_ (K) from router_logits_ (E), as TopkRouter does in eval: the K largest
    // (ties toward the lower index, like topk), then softmax over those K (NoisyTopK, TopKSoftmax)
    // or softmax over all E first and the K largest probabilities as they are (SoftmaxTopK).
    void route(const TopkRouter<T>& router) {
        const Index E = static_cast<Index>(router_logits_.size()), K = router.top_k;
        const T* l = router_logits_.data();
        for (Index e = 0; e < E; ++e) order_[e] = e;
        std::partial_sort(order_.begin(), order_.begin() + K, order_.end(),
                          [l](Index i, Index j) { return l[i] > l[j] || (l[i] == l[j] && i < j); });
        const T top = l[order_[0]];
        T sum = 0;
        if (router.type == RouterType::SoftmaxTopK) {
            for (Index e = 0; e < E; ++e) sum += std::exp(l[e] - top);
        } else {
            for (Index k = 0; k < K; ++k) sum += std::exp(l[order_[k]] - top);
        }
        for (Index k = 0; k < K; ++k) {
            experts_[k] = order_[k];
            gates_[k] = std::exp(l[order_[k]] - top) / sum;
        }
    }

    const MoEDecoderLanguageModel<T>* model_;
    WeightStorage storage_;
    std::vector<Bf16Block> bf16_;  // per block, with bf16 storage
    std::vector<T> x_, h_, qkv_, att_, moe_out_, router_logits_, gates_, scores_, tokens_;  // scratch
    std::vector<T> hidden_, shares_;                                                        // bf16 experts
    std::vector<Index> order_, experts_;
    std::vector<std::vector<ExpertWeightRefs<T>>> routed_, shared_;  // per block
    std::vector<std::vector<Index>> shared_ids_;
    std::vector<std::vector<T>> shared_gates_;
};

}  // namespace seemoe::nn
