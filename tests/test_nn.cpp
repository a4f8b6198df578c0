// Tests of the seeMoE modules (include/seemoe/nn): gradient checks in double for every module,
// equivalences (patch embedding = convolution, sparse MoE = dense reference, cached generation =
// uncached), the reference parameter count and the initial loss.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cmath>

#include "gradcheck.hpp"
#include "tiny_vlm.hpp"

using namespace seemoe;
using seemoe::testing::grad_input;
using seemoe::testing::gradcheck;

namespace {

// A tiny VLM for checks (tiny_vlm.hpp) with room for 32 positions.
nn::VLMConfig tiny_config(nn::VisualTokens visual = nn::VisualTokens::CLS) {
    nn::VLMConfig c = testing::tiny_vlm_config();
    c.decoder.block_size = 32;
    c.visual_tokens = visual;
    return c;
}

// Gradcheck of a whole module: the inputs are the extra tensors followed by the module's
// parameters. The handles share nodes with the module, so perturbing an input perturbs the module.
// Up to 24 random elements of each tensor are checked.
template <typename M, typename Fn>
testing::GradcheckResult module_gradcheck(M& module, std::vector<Tensord> extra, Fn&& forward) {
    std::vector<Tensord> inputs = extra;
    for (auto& p : module.parameters()) inputs.push_back(p);
    return gradcheck(forward, inputs, 1e-5, 1234, /*max_per_input=*/24);
}

}  // namespace

TEST_CASE("Linear, LayerNorm and Embedding have the torch layouts and correct gradients", "[nn]") {
    Rng rng(1);
    nn::Linear<double> fc(5, 3, rng);
    CHECK(fc.weight.shape() == Shape{3, 5});
    CHECK(fc.bias.shape() == Shape{3});
    auto names = fc.named_parameters();
    REQUIRE(names.size() == 2);
    CHECK(names[0].first == "weight");
    CHECK(names[1].first == "bias");
    for (double w : fc.weight.to_vector()) CHECK(std::fabs(w) <= 1.0 / std::sqrt(5.0));
    auto x = grad_input({2, 4, 5}, rng);
    CHECK_GRADCHECK(module_gradcheck(fc, {x}, [&](const std::vector<Tensord>& in) {
        return fc.forward(in[0]);
    }));

    nn::LayerNorm<double> ln(5);
    ln.weight = nn::detail::parameter(Tensord::randn({5}, rng));
    ln.bias = nn::detail::parameter(Tensord::randn({5}, rng));
    CHECK_GRADCHECK(module_gradcheck(ln, {x}, [&](const std::vector<Tensord>& in) {
        return ln.forward(in[0]);
    }));

    nn::Embedding<double> emb(6, 3, rng);
    const std::vector<Index> ids{0, 5, 2, 5};
    CHECK_GRADCHECK(module_gradcheck(emb, {}, [&](const std::vector<Tensord>&) {
        return emb.forward(ids, {2, 2});
    }));
    CHECK_THROWS_WITH(emb.forward({6}, {1}), Catch::Contains("[embedding]"));
}

TEST_CASE("MLP and MultiHeadAttention gradients", "[nn]") {
    Rng rng(2);
    nn::MLP<double> mlp(6, 10, 4, nn::Activation::GELU, 0.0, rng);
    auto names = mlp.named_parameters();
    CHECK(names[0].first == "fc1.weight");
    CHECK(names[3].first == "fc2.bias");
    auto x = grad_input({2, 3, 6}, rng);
    CHECK_GRADCHECK(module_gradcheck(mlp, {x}, [&](const std::vector<Tensord>& in) {
        return mlp.forward(in[0], rng);
    }));

    for (bool causal : {true, false}) {
        nn::MultiHeadAttention<double> attn(6, 3, causal, 0.0, rng);
        CHECK(attn.qkv.weight.shape() == Shape{18, 6});
        CHECK_FALSE(attn.qkv.bias.defined());
        CHECK_GRADCHECK(module_gradcheck(attn, {x}, [&](const std::vector<Tensord>& in) {
            return attn.forward(in[0], rng);
        }));
    }
    CHECK_THROWS_WITH(nn::MultiHeadAttention<double>(6, 4, true, 0.0, rng),
                      Catch::Contains("[MultiHeadAttention]"));
}

TEST_CASE("PatchEmbedding equals a direct convolution with kernel = stride = patch", "[nn]") {
    Rng rng(3);
    const Index B = 2, C = 3, S = 8, p = 4, D = 5, G = S / p;
    nn::PatchEmbedding<double> pe(C, p, D, rng);
    CHECK(pe.weight.shape() == Shape{D, C, p, p});
    auto images = grad_input({B, C, S, S}, rng);
    Tensord out = pe.forward(images);  // (B, P, D)
    REQUIRE(out.shape() == Shape{B, G * G, D});
    for (Index b = 0; b < B; ++b)
        for (Index gy = 0; gy < G; ++gy)
            for (Index gx = 0; gx < G; ++gx)
                for (Index d = 0; d < D; ++d) {
                    double acc = pe.bias.at({d});
                    for (Index c = 0; c < C; ++c)
                        for (Index ky = 0; ky < p; ++ky)
                            for (Index kx = 0; kx < p; ++kx)
                                acc += pe.weight.at({d, c, ky, kx}) * images.at({b, c, gy * p + ky, gx * p + kx});
                    CHECK(out.at({b, gy * G + gx, d}) == Approx(acc).epsilon(1e-12));
                }
    CHECK_GRADCHECK(module_gradcheck(pe, {images}, [&](const std::vector<Tensord>& in) {
        return pe.forward(in[0]);
    }));
    CHECK_THROWS_WITH(pe.forward(Tensord::zeros({1, 3, 6, 6})), Catch::Contains("[patchify]"));
}

TEST_CASE("encoder Block, ViT and projector gradients", "[nn]") {
    Rng rng(4);
    auto cfg = tiny_config();
    nn::Block<double> block(8, 2, 16, nn::Activation::GELU, false, 0.0, rng);
    auto x = grad_input({2, 3, 8}, rng);
    CHECK_GRADCHECK(module_gradcheck(block, {x}, [&](const std::vector<Tensord>& in) {
        return block.forward(in[0], rng);
    }));

    nn::ViT<double> vit(cfg.vision, rng);
    vit.cls_token = nn::detail::parameter(Tensord::randn({1, 1, 8}, rng));
    auto images = grad_input({2, 3, 8, 8}, rng);
    Tensord features = vit.forward(images, rng);
    CHECK(features.shape() == Shape{2, 5, 8});
    CHECK_GRADCHECK(module_gradcheck(vit, {images}, [&](const std::vector<Tensord>& in) {
        return vit.forward(in[0], rng);
    }));

    nn::MultiModalProjector<double> proj(8, 6, 0.0, rng);
    CHECK(proj.fc1.weight.shape() == Shape{32, 8});
    auto f = grad_input({2, 1, 8}, rng);
    CHECK_GRADCHECK(module_gradcheck(proj, {f}, [&](const std::vector<Tensord>& in) {
        return proj.forward(in[0], rng);
    }));
}

namespace {
// Dense reference for the sparse MoE: every expert on every token, weighted by the (N, E) gate
// matrix that is zero except at the router's top-k choices.
Tensord dense_moe_reference(const nn::SparseMoE<double>& moe, const Tensord& x, Rng& rng) {
    const Index C = x.size(-1), N = x.numel() / C, E = moe.num_experts();
    Tensord tokens = reshape(x, {N, C});
    auto routing = moe.router.forward(tokens, rng);
    const Index K = routing.top_k;
    // Gate matrix (N, E) built differentiably: index_add of the K gates into their expert columns.
    std::vector<Index> flat_positions;
    for (Index n = 0; n < N; ++n)
        for (Index k = 0; k < K; ++k) flat_positions.push_back(n * E + routing.experts[n * K + k]);
    Tensord gate_matrix = index_add(Tensord::zeros({N * E}), 0, flat_positions,
                                    reshape(routing.gates, {N * K}));   // (N*E)
    gate_matrix = reshape(gate_matrix, {N, E});                          // (N, E)
    Tensord out = Tensord::zeros({N, C});
    for (Index e = 0; e < E; ++e) {
        Tensord y = moe.experts[e].forward(tokens, rng);                 // (N, C)
        Tensord g = slice(gate_matrix, 1, e, e + 1);                     // (N, 1)
        out = add(out, mul(y, g));
    }
    return reshape(out, x.shape());
}
}  // namespace

TEST_CASE("SparseMoE equals the dense reference, gates are sparse and sum to 1", "[nn][moe]") {
    Rng rng(5);
    nn::SparseMoE<double> moe(6, 4, 2, 12, 0.0, rng);
    auto x = grad_input({2, 5, 6}, rng);
    for (bool training : {true, false}) {
        moe.train(training);
        // The same seed gives the same router noise in both computations.
        Rng r1(77), r2(77);
        Tensord sparse = moe.forward(x, r1);
        Tensord dense = dense_moe_reference(moe, x, r2);
        for (Index i = 0; i < sparse.numel(); ++i)
            CHECK(sparse.data()[i] == Approx(dense.data()[i]).epsilon(1e-12).margin(1e-12));

        // Gradients of both paths agree for the input and every parameter.
        auto params = moe.parameters();
        auto grads_of = [&](auto&& run) {
            x.reset_grad();
            for (auto& p : params) p.reset_grad();
            Rng r(77);
            Tensord out = run(r);
            Rng wr(9);
            out.backward(Tensord::randn(out.shape(), wr));
            std::vector<std::vector<double>> g{x.grad().to_vector()};
            for (auto& p : params) g.push_back(p.grad().to_vector());
            return g;
        };
        auto g_sparse = grads_of([&](Rng& r) { return moe.forward(x, r); });
        auto g_dense = grads_of([&](Rng& r) { return dense_moe_reference(moe, x, r); });
        for (std::size_t t = 0; t < g_sparse.size(); ++t)
            for (std::size_t i = 0; i < g_sparse[t].size(); ++i)
                CHECK(g_sparse[t][i] == Approx(g_dense[t][i]).epsilon(1e-10).margin(1e-12));
    }

    moe.eval();
    Rng r(3);
    auto routing = moe.router.forward(reshape(x, {10, 6}), r);
    REQUIRE(routing.gates.shape() == Shape{10, 2});
    for (Index n = 0; n < 10; ++n) {
        CHECK(routing.gates.at({n, 0}) + routing.gates.at({n, 1}) == Approx(1.0).epsilon(1e-14));
        CHECK(routing.experts[n * 2] != routing.experts[n * 2 + 1]);
        CHECK(routing.gates.at({n, 0}) >= routing.gates.at({n, 1}));
    }
    // Eval mode is deterministic: bit-identical outputs on repeated calls, whatever the rng.
    Rng ra(1), rb(2);
    CHECK(moe.forward(x, ra).to_vector() == moe.forward(x, rb).to_vector());
    // Training mode draws router noise.
    moe.train();
    Rng rc(1), rd(2);
    CHECK(moe.forward(x, rc).to_vector() != moe.forward(x, rd).to_vector());
}

TEST_CASE("router, SparseMoE and SparseMoEBlock gradients", "[nn][moe]") {
    Rng rng(6);
    auto cfg = tiny_config().decoder;
    nn::SparseMoE<double> moe(8, 4, 2, 16, 0.0, rng);
    auto x = grad_input({2, 3, 8}, rng);
    for (bool training : {true, false}) {
        moe.train(training);
        CHECK_GRADCHECK(module_gradcheck(moe, {x}, [&](const std::vector<Tensord>& in) {
            Rng fixed(11);  // same noise in every evaluation
            return moe.forward(in[0], fixed);
        }));
    }
    nn::SparseMoEBlock<double> block(cfg, rng);
    auto names = block.named_parameters();
    CHECK(names.back().first == "moe.experts.3.fc2.bias");
    CHECK_GRADCHECK(module_gradcheck(block, {x}, [&](const std::vector<Tensord>& in) {
        Rng fixed(12);
        return block.forward(in[0], fixed);
    }));
}

TEST_CASE("the whole VisionMoELanguageModel passes a gradient check", "[nn]") {
    for (auto visual : {nn::VisualTokens::CLS, nn::VisualTokens::Patches, nn::VisualTokens::Mean}) {
        CAPTURE(nn::visual_tokens_name(visual));
        Rng rng(7);
        nn::VisionMoELanguageModel<double> model(tiny_config(visual), rng);
        auto images = grad_input({2, 3, 8, 8}, rng);
        const std::vector<Index> ids{1, 3, 4, 5, 1, 6, 3, 0};
        const std::vector<Index> targets{3, 4, 5, 2, 6, 3, 2, -100};
        CHECK_GRADCHECK(module_gradcheck(model, {images}, [&](const std::vector<Tensord>& in) {
            Rng fixed(13);  // router noise is on in training mode; the same draws every time
            return model.loss(in[0], ids, targets, 4, fixed);
        }));
    }
}

TEST_CASE("visual_tokens mean gives one token: the projected average of the patch features", "[nn]") {
    Rng rng(7);
    nn::VisionMoELanguageModel<double> model(tiny_config(nn::VisualTokens::Mean), rng);
    model.eval();
    CHECK(model.num_visual_tokens() == 1);
    const Index P = model.config.vision.num_patches(), D = model.config.vision.dim;
    REQUIRE(P > 1);
    Tensord images = Tensord::randn({2, 3, 8, 8}, rng);
    Rng unused(0);
    const Tensord visual = model.encode_images(images, unused);             // (2, 1, C)
    REQUIRE(visual.shape() == Shape{2, 1, model.config.decoder.n_embd});
    // By hand: the encoder's patch rows (not the CLS row 0) summed and divided by P, then the
    // projector.
    const Tensord features = model.vision_encoder.forward(images, unused);   // (2, 1+P, D)
    Tensord pooled = Tensord::zeros({2, 1, D});
    for (Index b = 0; b < 2; ++b)
        for (Index d = 0; d < D; ++d) {
            double s = 0;
            for (Index p = 1; p <= P; ++p) s += features.at({b, p, d});
            pooled.data()[b * D + d] = s / static_cast<double>(P);
        }
    const Tensord expected = model.projector.forward(pooled, unused);        // (2, 1, C)
    for (Index i = 0; i < expected.numel(); ++i) CHECK(visual.data()[i] == Approx(expected.data()[i]).epsilon(1e-12));
    // The CLS feature is a different token: the two modes must not coincide.
    // (The same seed builds the same weights: visual_tokens changes no parameter.)
    Rng same(7);
    nn::VisionMoELanguageModel<double> cls_model(tiny_config(nn::VisualTokens::CLS), same);
    REQUIRE(cls_model.vision_encoder.pos_embedding.at({0, 1, 0}) == model.vision_encoder.pos_embedding.at({0, 1, 0}));
    cls_model.eval();
    const Tensord cls_visual = cls_model.encode_images(images, unused);
    double diff = 0;
    for (Index i = 0; i < visual.numel(); ++i) diff = std::max(diff, std::abs(visual.data()[i] - cls_visual.data()[i]));
    CHECK(diff > 1e-6);
    // The name round-trips (configs, checkpoints and --visual-tokens all use it).
    nn::VisualTokens parsed = nn::VisualTokens::CLS;
    CHECK(std::string(nn::visual_tokens_name(nn::VisualTokens::Mean)) == "mean");
    CHECK(nn::visual_tokens_from_name("mean", parsed));
    CHECK(parsed == nn::VisualTokens::Mean);
}

TEST_CASE("text-only decoder works as a character LM", "[nn]") {
    Rng rng(8);
    nn::MoEDecoderLanguageModel<double> lm(tiny_config().decoder, rng);
    const std::vector<Index> ids{1, 2, 3, 4, 5, 6};
    Tensord logits = lm.forward(ids, 2, 3, rng);
    CHECK(logits.shape() == Shape{2, 3, 7});
    CHECK_GRADCHECK(module_gradcheck(lm, {}, [&](const std::vector<Tensord>&) {
        Rng fixed(14);
        return cross_entropy(lm.forward(ids, 2, 3, fixed), std::vector<Index>{2, 3, 4, 5, 6, 1});
    }));
    CHECK_THROWS_WITH(lm.forward(std::vector<Index>(2 * 40, 1), 2, 40, rng),
                      Catch::Contains("block_size"));
}

TEST_CASE("the original seeMoE hyperparameters give 20,300,354 parameters", "[nn]") {
    // 96x96 images, patch 16, ViT 512 x 3 blocks, 8 heads; decoder 128 x 8 layers, 8 experts,
    // top-2, vocab 66, 1000 positions. Our fixes change no parameter count: the fused qkv Linear
    // has no bias, like the original's per-head key/query/value Linears.
    nn::VLMConfig c;
    Rng rng(0);
    nn::VisionMoELanguageModel<float> model(c, rng);
    CHECK(model.num_parameters() == 20300354);
    auto names = model.named_parameters();
    bool found = false;
    for (auto& [name, p] : names)
        if (name == "decoder.blocks.3.moe.experts.5.fc1.weight") {
            found = true;
            CHECK(p.shape() == Shape{512, 128});
        }
    CHECK(found);
    CHECK(names.front().first == "vision_encoder.patch_embedding.weight");
    CHECK(names.front().second.shape() == Shape{512, 3, 16, 16});
}

TEST_CASE("initial loss is within 0.1 of ln(vocab)", "[nn]") {
    Rng rng(9);
    nn::VLMConfig c;
    c.vision.image_size = 32;
    c.vision.patch_size = 8;
    c.vision.dim = 64;
    c.vision.n_blocks = 2;
    c.decoder.vocab_size = 40;
    c.decoder.n_embd = 64;
    c.decoder.n_layer = 4;
    c.decoder.block_size = 64;
    nn::VisionMoELanguageModel<float> model(c, rng);
    const Index B = 8, L = 20;
    Tensorf images = Tensorf::randn({B, 3, 32, 32}, rng);
    std::vector<Index> ids(B * L), targets(B * L);
    for (auto& i : ids) i = rng.randint(0, 40);
    for (auto& t : targets) t = rng.randint(0, 40);
    const float loss = model.loss(images, ids, targets, L, rng).item();
    CHECK(std::fabs(loss - std::log(40.0f)) < 0.1f);
}

TEST_CASE("cached generation equals step-by-step argmax over the uncached forward", "[nn]") {
    Rng rng(10);
    auto cfg = tiny_config();
    cfg.decoder.block_size = 80;
    nn::VisionMoELanguageModel<float> model(cfg, rng);
    model.eval();
    Tensorf images = Tensorf::randn({2, 3, 8, 8}, rng);
    const Index steps = 64, V = cfg.decoder.vocab_size;
    // Uncached: run the full forward over the growing sequence each step, argmax at the end.
    // <eos> is not special here (we compare raw tokens), so generation runs all 64 steps.
    std::vector<std::vector<Index>> seqs(2, std::vector<Index>{cfg.bos_id});
    std::vector<std::vector<float>> uncached_logits(2);
    for (Index s = 0; s < steps; ++s) {
        const Index L = static_cast<Index>(seqs[0].size());
        std::vector<Index> ids;
        for (auto& q : seqs) ids.insert(ids.end(), q.begin(), q.end());
        NoGradGuard no_grad;
        Tensorf logits = model.forward(images, ids, L, rng);  // (2, 1+L, V)
        for (Index b = 0; b < 2; ++b) {
            const float* row = logits.data() + (b * (1 + L) + L) * V;
            uncached_logits[b].insert(uncached_logits[b].end(), row, row + V);
            seqs[b].push_back(std::max_element(row, row + V) - row);
        }
    }
    // Cached: the same steps through the KV cache.
    NoGradGuard no_grad;
    Tensorf visual = model.encode_images(images, rng);
    auto caches = model.decoder.make_caches(2, 1 + steps + 1);
    std::vector<Index> step_ids{cfg.bos_id, cfg.bos_id};
    Tensorf x = model.decoder.embed(step_ids, 2, 1, visual);
    double max_diff = 0;
    for (Index s = 0; s < steps; ++s) {
        Tensorf logits = model.decoder.forward_cached(x, caches);
        const Index Tn = logits.size(1);
        for (Index b = 0; b < 2; ++b) {
            const float* row = logits.data() + (b * Tn + Tn - 1) * V;
            for (Index v = 0; v < V; ++v)
                max_diff = std::max(max_diff, double(std::fabs(row[v] - uncached_logits[b][s * V + v])));
            step_ids[b] = std::max_element(row, row + V) - row;
            CHECK(step_ids[b] == seqs[b][s + 1]);
        }
        x = model.decoder.embed(step_ids, 2, 1, Tensorf());
    }
    CHECK(max_diff < 1e-5);

    // generate() gives the argmax tokens up to the first <eos>.
    nn::SamplingOptions greedy;
    greedy.max_new_tokens = steps;
    auto captions = model.generate(images, greedy, rng);
    for (Index b = 0; b < 2; ++b) {
        std::vector<Index> expected;
        for (Index s = 1; s <= steps; ++s) {
            if (seqs[b][s] == cfg.eos_id) break;
            expected.push_back(seqs[b][s]);
        }
        CHECK(captions[b] == expected);
    }
}

TEST_CASE("sampling: temperature, top-k and top-p behave", "[nn]") {
    const std::vector<float> logits{0.0f, 3.0f, 1.0f, 2.9f};
    nn::SamplingOptions greedy;
    Rng rng(1);
    CHECK(nn::sample_token(logits.data(), 4, greedy, rng) == 1);
    nn::SamplingOptions top1;
    top1.temperature = 1.0;
    top1.top_k = 1;
    for (int i = 0; i < 20; ++i) CHECK(nn::sample_token(logits.data(), 4, top1, rng) == 1);
    nn::SamplingOptions top2;
    top2.temperature = 1.0;
    top2.top_k = 2;
    std::vector<int> counts(4, 0);
    for (int i = 0; i < 2000; ++i) counts[nn::sample_token(logits.data(), 4, top2, rng)]++;
    CHECK(counts[0] == 0);
    CHECK(counts[2] == 0);
    CHECK(counts[1] > 900);  // p = e^0.1 / (1 + e^0.1) = 0.525
    CHECK(counts[3] > 800);
    nn::SamplingOptions nucleus;
    nucleus.temperature = 1.0;
    nucleus.top_p = 0.5;  // the top token alone has 0.47 < 0.5, so the top two are kept
    std::fill(counts.begin(), counts.end(), 0);
    for (int i = 0; i < 2000; ++i) counts[nn::sample_token(logits.data(), 4, nucleus, rng)]++;
    CHECK(counts[0] + counts[2] == 0);
    CHECK(counts[3] > 0);
    // The same seed gives the same samples.
    nn::SamplingOptions warm;
    warm.temperature = 1.5;
    Rng a(42), b(42);
    for (int i = 0; i < 50; ++i)
        CHECK(nn::sample_token(logits.data(), 4, warm, a) == nn::sample_token(logits.data(), 4, warm, b));
}
