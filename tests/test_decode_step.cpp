// Tests of nn/decode_step.hpp (DecoderStep, the fused one-token decoder step of generation):
// in float it gives forward_cached's logits to float rounding on every kernel path, for each
// router type, with shared experts, for two sequences at once; in double it equals the uncached
// forward; it refuses caches that do not fit and a model in training mode. And bf16 weight storage
// (ops/bf16.hpp): the rounding, the product on every kernel path, and the step with bf16 weights
// equal to the float step on weights rounded to bf16.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

using namespace seemoe;

namespace {

// A small decoder: C 32, 4 heads, 3 blocks, 4 experts top-2 of 256 hidden units (two parts in the
// MoE's inference path, so its threads take part).
nn::DecoderConfig step_config(nn::RouterType router, Index shared) {
    nn::DecoderConfig c;
    c.vocab_size = 11;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_layer = 3;
    c.num_experts = 4;
    c.top_k = 2;
    c.expert_ratio = 8;
    c.block_size = 40;
    c.dropout = 0.0;
    c.router = router;
    c.num_shared_experts = shared;
    return c;
}

// The layer norms and the output layer get random weights, so a wrong use of either shows.
template <typename T>
void randomise_norms(nn::MoEDecoderLanguageModel<T>& model, Rng& rng) {
    for (auto& [name, p] : model.named_parameters())
        if (name.find("ln") != std::string::npos || name.find("lm_head") != std::string::npos) {
            const Tensor<T> r = Tensor<T>::randn(p.shape(), rng, T(0.5), T(0.5));
            std::copy_n(r.data(), r.numel(), p.data());
        }
}

const Index kPrompt = 5, kSteps = 20, kBatch = 2;

}  // namespace

TEST_CASE("DecoderStep gives forward_cached's logits to float rounding", "[nn][moe]") {
    struct Case {
        nn::RouterType router;
        Index shared;
    };
    for (Case k : {Case{nn::RouterType::NoisyTopK, 0}, Case{nn::RouterType::SoftmaxTopK, 1},
                   Case{nn::RouterType::TopKSoftmax, 0}}) {
        Rng rng(41);
        const nn::DecoderConfig cfg = step_config(k.router, k.shared);
        nn::MoEDecoderLanguageModel<float> model(cfg, rng);
        randomise_norms(model, rng);
        model.eval();
        REQUIRE(nn::DecoderStep<float>::supports(model));
        const Index V = cfg.vocab_size;
        KernelPath saved = active_kernel_path();
        for (KernelPath path : available_kernel_paths()) {
            set_kernel_path(path);
            INFO("router " << nn::router_type_name(k.router) << ", shared experts " << k.shared << ", kernel "
                           << kernel_path_name(path));
            NoGradGuard no_grad;
            std::vector<Index> prompt(static_cast<std::size_t>(kBatch * kPrompt));
            for (auto& id : prompt) id = rng.randint(0, V);
            auto cached = model.make_caches(kBatch, kPrompt + kSteps);
            auto fused = model.make_caches(kBatch, kPrompt + kSteps);
            // The prompt goes through forward_cached into both sets of caches.
            Tensorf x = model.embed(prompt, kBatch, kPrompt, Tensorf());        // (B, P, C)
            model.forward_cached(x, cached);
            model.forward_cached(x, fused);
            nn::DecoderStep<float> step(model);
            std::vector<Index> ids{prompt[kPrompt - 1], prompt[2 * kPrompt - 1]};
            std::vector<float> logits(static_cast<std::size_t>(kBatch * V));   // (B, V)
            double max_diff = 0, max_logit = 0;
            for (Index s = 0; s + 1 < kSteps; ++s) {
                Tensorf reference = model.forward_cached(model.embed(ids, kBatch, 1, Tensorf()), cached);  // (B, 1, V)
                step.step_tokens(ids, fused, logits.data());
                CHECK(fused[0].length == cached[0].length);
                for (Index i = 0; i < kBatch * V; ++i) {
                    max_diff = std::max(max_diff, double(std::fabs(logits[i] - reference.data()[i])));
                    max_logit = std::max(max_logit, double(std::fabs(reference.data()[i])));
                }
                // Both continue with the reference's greedy tokens.
                for (Index b = 0; b < kBatch; ++b) {
                    const float* row = reference.data() + b * V;
                    ids[b] = std::max_element(row, row + V) - row;
                }
            }
            CHECK(max_logit > 0.1);
            CHECK(max_diff < 2e-5 * max_logit);
            // The fused step also wrote the keys and values forward_cached did.
            for (std::size_t l = 0; l < cached.size(); ++l)
                for (std::size_t i = 0; i < cached[l].keys.size(); ++i) {
                    REQUIRE(std::fabs(fused[l].keys[i] - cached[l].keys[i]) < 1e-4);
                    REQUIRE(std::fabs(fused[l].values[i] - cached[l].values[i]) < 1e-4);
                }
        }
        set_kernel_path(saved);
    }
}

TEST_CASE("DecoderStep in double equals the uncached forward", "[nn][moe]") {
    for (nn::RouterType router : {nn::RouterType::NoisyTopK, nn::RouterType::SoftmaxTopK}) {
        Rng rng(43);
        const nn::DecoderConfig cfg = step_config(router, router == nn::RouterType::SoftmaxTopK ? 1 : 0);
        nn::MoEDecoderLanguageModel<double> model(cfg, rng);
        randomise_norms(model, rng);
        model.eval();
        const Index V = cfg.vocab_size;
        NoGradGuard no_grad;
        std::vector<std::vector<Index>> text(kBatch);
        for (auto& t : text)
            for (Index i = 0; i < kPrompt; ++i)
                t.push_back(rng.randint(0, V));
        std::vector<Index> prompt;
        for (const auto& t : text) prompt.insert(prompt.end(), t.begin(), t.end() - 1);
        auto caches = model.make_caches(kBatch, kPrompt + kSteps);
        model.forward_cached(model.embed(prompt, kBatch, kPrompt - 1, Tensord()), caches);
        nn::DecoderStep<double> step(model);
        std::vector<double> logits(static_cast<std::size_t>(kBatch * V));
        double max_diff = 0;
        for (Index s = 0; s < kSteps; ++s) {
            std::vector<Index> last{text[0].back(), text[1].back()};
            step.step_tokens(last, caches, logits.data());
            // The uncached forward over each whole text, its last position.
            const Index L = static_cast<Index>(text[0].size());
            std::vector<Index> all;
            for (const auto& t : text) all.insert(all.end(), t.begin(), t.end());
            Rng unused(0);
            Tensord full = model.forward(all, kBatch, L, unused);  // (B, L, V)
            for (Index b = 0; b < kBatch; ++b) {
                const double* row = full.data() + (b * L + L - 1) * V;
                for (Index v = 0; v < V; ++v) max_diff = std::max(max_diff, std::fabs(logits[b * V + v] - row[v]));
                text[b].push_back(std::max_element(row, row + V) - row);
            }
        }
        INFO("router " << nn::router_type_name(router));
        CHECK(max_diff < 1e-11);
    }
}

TEST_CASE("DecoderStep refuses caches that do not fit and a model in training mode", "[nn][moe]") {
    Rng rng(47);
    nn::MoEDecoderLanguageModel<float> model(step_config(nn::RouterType::NoisyTopK, 0), rng);
    model.eval();
    nn::DecoderStep<float> step(model);
    std::vector<float> logits(static_cast<std::size_t>(2 * model.config.vocab_size));
    auto one = model.make_caches(1, 4);
    CHECK_THROWS_WITH(step.step_tokens({1, 2}, one, logits.data()), Catch::Contains("KV cache does not fit"));
    auto too_few = model.make_caches(1, 4);
    too_few.pop_back();
    CHECK_THROWS_WITH(step.step_tokens({1}, too_few, logits.data()), Catch::Contains("KV caches for"));
    CHECK_THROWS_WITH(step.step_tokens({99}, one, logits.data()), Catch::Contains("outside the vocabulary"));
    auto full = model.make_caches(1, 1);
    step.step_tokens({1}, full, logits.data());
    CHECK_THROWS_WITH(step.step_tokens({1}, full, logits.data()), Catch::Contains("KV cache does not fit"));
    model.train();
    auto fresh = model.make_caches(1, 4);
    CHECK_THROWS_WITH(step.step_tokens({1}, fresh, logits.data()), Catch::Contains("training mode"));
}

TEST_CASE("bf16: rounding to nearest even, and the bf16 product on every kernel path", "[ops]") {
    CHECK(to_bf16(1.0f) == 0x3f80);
    CHECK(to_bf16(-2.0f) == 0xc000);
    CHECK(to_bf16(1.0f + 0x1p-8f) == 0x3f80);        // halfway: to the even neighbour, down
    CHECK(to_bf16(1.0f + 3 * 0x1p-8f) == 0x3f82);    // halfway: to the even neighbour, up
    CHECK(to_bf16(1.0f + 0x1p-8f + 0x1p-20f) == 0x3f81);  // just above halfway: up
    CHECK(to_bf16(std::numeric_limits<float>::infinity()) == 0x7f80);
    CHECK(std::isnan(from_bf16(to_bf16(std::numeric_limits<float>::quiet_NaN()))));
    CHECK(from_bf16(0x3fc0) == 1.5f);
    Rng rng(53);
    for (int i = 0; i < 1000; ++i) {
        const float x = static_cast<float>(rng.normal() * 100.0);
        CHECK(std::fabs(from_bf16(to_bf16(x)) - x) <= std::fabs(x) * 0x1p-8f);  // half of 2^-7, the spacing at 1
    }

    KernelPath saved = active_kernel_path();
    for (KernelPath path : available_kernel_paths()) {
        for (Index N : {1, 7, 33})
            for (Index K : {1, 15, 17, 1500})
                for (bool add : {false, true}) {
                    INFO("kernel " << kernel_path_name(path) << ", N " << N << ", K " << K << ", add " << add);
                    const Index ldw = K + 3;
                    std::vector<float> a(static_cast<std::size_t>(K)), c(static_cast<std::size_t>(N), 0.5f);
                    std::vector<std::uint16_t> w(static_cast<std::size_t>(N * ldw));
                    for (auto& v : a) v = static_cast<float>(rng.normal());
                    for (auto& v : w) v = to_bf16(static_cast<float>(rng.normal()));
                    bf16_rows(N, K, a.data(), w.data(), ldw, c.data(), add, path);
                    for (Index j = 0; j < N; ++j) {
                        double ref = add ? 0.5 : 0.0, scale = 0;
                        for (Index k = 0; k < K; ++k) {
                            ref += double(a[k]) * double(from_bf16(w[j * ldw + k]));
                            scale += std::fabs(double(a[k]) * double(from_bf16(w[j * ldw + k])));
                        }
                        CHECK(std::fabs(c[j] - ref) <= 1e-6 * (scale + 1));
                    }
                }
    }
    set_kernel_path(saved);
}

TEST_CASE("DecoderStep with bf16 weights equals the float step on weights rounded to bf16", "[nn][moe]") {
    for (Index shared : {0, 1}) {
        const nn::DecoderConfig cfg = step_config(nn::RouterType::NoisyTopK, shared);
        Rng rng_a(59), rng_b(59);
        nn::MoEDecoderLanguageModel<float> model(cfg, rng_a), rounded(cfg, rng_b);  // the same weights
        randomise_norms(model, rng_a);
        randomise_norms(rounded, rng_b);
        // What bf16 storage rounds: qkv, proj and every expert's fc1 and fc2 (not router, norms, biases, lm_head).
        for (auto& [name, p] : rounded.named_parameters()) {
            const bool big = name.find("weight") != std::string::npos &&
                             (name.find("attn.") != std::string::npos || name.find("experts.") != std::string::npos);
            if (big)
                for (Index i = 0; i < p.numel(); ++i) p.data()[i] = from_bf16(to_bf16(p.data()[i]));
        }
        model.eval();
        rounded.eval();
        const Index V = cfg.vocab_size;
        KernelPath saved = active_kernel_path();
        for (KernelPath path : available_kernel_paths()) {
            set_kernel_path(path);
            INFO("shared experts " << shared << ", kernel " << kernel_path_name(path));
            NoGradGuard no_grad;
            auto caches_bf16 = model.make_caches(kBatch, kSteps + 1);
            auto caches_f32 = rounded.make_caches(kBatch, kSteps + 1);
            nn::DecoderStep<float> bf16(model, nn::WeightStorage::bf16), f32(rounded);
            CHECK(bf16.storage() == nn::WeightStorage::bf16);
            std::vector<float> logits_bf16(static_cast<std::size_t>(kBatch * V)), logits_f32(logits_bf16.size());
            std::vector<Index> ids{1, 2};
            double max_diff = 0, max_logit = 0;
            for (Index s = 0; s < kSteps; ++s) {
                bf16.step_tokens(ids, caches_bf16, logits_bf16.data());
                f32.step_tokens(ids, caches_f32, logits_f32.data());
                for (std::size_t i = 0; i < logits_f32.size(); ++i) {
                    max_diff = std::max(max_diff, double(std::fabs(logits_bf16[i] - logits_f32[i])));
                    max_logit = std::max(max_logit, double(std::fabs(logits_f32[i])));
                }
                for (Index b = 0; b < kBatch; ++b) {
                    const float* row = logits_f32.data() + b * V;
                    ids[b] = std::max_element(row, row + V) - row;
                }
            }
            CHECK(max_logit > 0.1);
            CHECK(max_diff < 2e-5 * max_logit);
        }
        set_kernel_path(saved);
    }
}
