// tests/test_staging.cpp — nn/staging.hpp: parameter-name patterns, freezing (no gradient, no
// optimiser state, bitwise unchanged weights, a training state that saves and resumes only what
// is trained) and the sparse upcycling of a whole model (at step 0 it computes the dense model).
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "temp_dir.hpp"
#include "tiny_vlm.hpp"

using namespace seemoe;

namespace {

nn::VLMConfig staged_vlm(Index num_experts, Index top_k, nn::RouterType router = nn::RouterType::NoisyTopK) {
    nn::VLMConfig c = testing::tiny_vlm_config();
    c.decoder.num_experts = num_experts;
    c.decoder.top_k = top_k;
    c.decoder.router = router;
    c.visual_tokens = nn::VisualTokens::Patches;
    return c;
}

const std::vector<Index> kIds = {1, 3, 4, 5, 1, 5, 6, 3}, kTargets = {3, 4, 5, 2, 5, 6, 3, 2};  // (2, 4)

// N AdamW steps of the caption loss over the trainable parameters.
template <typename Model>
void train_steps(Model& model, AdamW<float>& opt, const Tensorf& images, int steps, Rng& rng) {
    model.train();
    for (int s = 0; s < steps; ++s) {
        opt.zero_grad();
        model.loss(images, kIds, kTargets, 4, rng).backward();
        opt.step();
    }
}

}  // namespace

TEST_CASE("parameter-name patterns match whole components from the start", "[nn][staging]") {
    CHECK(nn::name_matches("projector", "projector.fc1.weight"));
    CHECK(nn::name_matches("projector.fc1.weight", "projector.fc1.weight"));
    CHECK_FALSE(nn::name_matches("projector", "projector2.fc1.weight"));
    CHECK_FALSE(nn::name_matches("projector", "decoder.projector.weight"));  // anchored at the start
    CHECK(nn::name_matches("decoder.blocks.1", "decoder.blocks.1.ln1.weight"));
    CHECK_FALSE(nn::name_matches("decoder.blocks.1", "decoder.blocks.12.ln1.weight"));
    CHECK(nn::name_matches("decoder.blocks.*.moe", "decoder.blocks.12.moe.router.route.weight"));
    CHECK(nn::name_matches("decoder.blocks.*.moe", "decoder.blocks.0.moe.shared_experts.0.fc1.bias"));
    CHECK_FALSE(nn::name_matches("decoder.blocks.*.moe", "decoder.blocks.0.attn.qkv.weight"));
    CHECK(nn::name_matches("*", "vision_encoder.cls_token"));
    CHECK(nn::name_matches("decoder.*.3.moe.experts.*.fc1", "decoder.blocks.3.moe.experts.7.fc1.weight"));
    CHECK_FALSE(nn::name_matches("decoder.*.moe", "decoder.blocks.3.moe.router.route.weight"));  // '*' stops at '.'
    CHECK(nn::name_matches("vision_*", "vision_encoder.layer_norm.bias"));
}

TEST_CASE("frozen parameters get no gradient and no optimiser state and stay bitwise unchanged", "[nn][staging]") {
    Rng rng(70);
    nn::VisionMoELanguageModel<float> model(staged_vlm(4, 2), rng);
    const Tensorf images = Tensorf::randn({2, 3, 8, 8}, rng);
    const auto before = model.named_parameters();
    std::vector<std::vector<float>> values;
    for (const auto& [name, p] : before) values.emplace_back(p.data(), p.data() + p.numel());

    // Stage 3 of MoE-LLaVA: the MoE layers (experts and routers) only, and the first layer's router frozen too.
    const Index trainable = nn::set_trainable(model, {"decoder.blocks.*.moe"}, {"decoder.blocks.0.moe.router"});
    std::vector<Tensorf> params = nn::trainable_parameters(model);
    REQUIRE(static_cast<Index>(params.size()) == trainable);
    AdamW<float> opt(params);
    CHECK(opt.state().size() == params.size());  // the optimiser holds no state for a frozen tensor
    train_steps(model, opt, images, 3, rng);

    Index frozen = 0, moved = 0;
    const auto after = model.named_parameters();
    for (std::size_t i = 0; i < after.size(); ++i) {
        const auto& [name, p] = after[i];
        const bool trains = nn::name_matches("decoder.blocks.*.moe", name) &&
                            !nn::name_matches("decoder.blocks.0.moe.router", name);
        INFO(name);
        CHECK(p.requires_grad() == trains);
        const bool same = std::equal(values[i].begin(), values[i].end(), p.data());
        if (trains) {
            moved += same ? 0 : 1;
        } else {
            ++frozen;
            CHECK_FALSE(p.has_grad());  // backward never wrote one
            CHECK(same);                // bit for bit
        }
    }
    CHECK(frozen + trainable == static_cast<Index>(after.size()));
    CHECK(frozen > 30);
    CHECK(moved > 0);
}

TEST_CASE("the training state holds exactly the trained parameters and resumes with the same freezing",
          "[nn][staging][io]") {
    seemoe::testing::TempDir dir("seemoe_test_staging_");
    const std::string path = dir.file("state.safetensors");
    Rng rng(71);
    nn::VisionMoELanguageModel<float> model(staged_vlm(4, 2), rng);
    const Tensorf images = Tensorf::randn({2, 3, 8, 8}, rng);
    nn::set_trainable(model, {"projector"}, {});
    AdamW<float> opt(nn::trainable_parameters(model));
    train_steps(model, opt, images, 2, rng);
    nn::save_training_state(path, model, opt, 2, rng);

    const io::SafetensorsFile file = io::load_safetensors<float>(path);
    REQUIRE(file.tensors.size() == 8);  // projector fc1/fc2 weight and bias, exp_avg and exp_avg_sq each
    for (const auto& [name, t] : file.tensors) {
        INFO(name);
        CHECK((name.rfind("exp_avg.projector.", 0) == 0 || name.rfind("exp_avg_sq.projector.", 0) == 0));
    }

    // The same freezing resumes: moments and steps come back exactly.
    Rng r2(0);
    nn::VisionMoELanguageModel<float> again(staged_vlm(4, 2), r2);
    nn::copy_parameters(again, model);
    nn::set_trainable(again, {"projector"}, {});
    AdamW<float> opt2(nn::trainable_parameters(again));
    Rng restored(0);
    CHECK(nn::load_training_state(path, again, opt2, restored) == 2);
    REQUIRE(opt2.state().size() == opt.state().size());
    for (std::size_t i = 0; i < opt.state().size(); ++i) {
        CHECK(opt2.state()[i].step == 2);
        CHECK(std::equal(opt.state()[i].exp_avg.data(), opt.state()[i].exp_avg.data() + opt.state()[i].exp_avg.numel(),
                         opt2.state()[i].exp_avg.data()));
    }
    // Other freezing: refused, naming the problem.
    Rng r3(0);
    nn::VisionMoELanguageModel<float> other(staged_vlm(4, 2), r3);
    nn::set_trainable(other, {"projector", "decoder.lm_head"}, {});
    AdamW<float> opt3(nn::trainable_parameters(other));
    CHECK_THROWS_WITH(nn::load_training_state(path, other, opt3, restored),
                      Catch::Contains("holds the optimiser state of 4 parameters; this run trains 6"));
    Rng r4(0);
    nn::VisionMoELanguageModel<float> all(staged_vlm(4, 2), r4);
    AdamW<float> opt4(all.parameters());
    CHECK_THROWS_WITH(nn::load_training_state(path, all, opt4, restored), Catch::Contains("was it saved with other"));
}

TEST_CASE("set_trainable refuses a pattern that names nothing and freezing everything", "[nn][staging]") {
    Rng rng(72);
    nn::VisionMoELanguageModel<float> model(staged_vlm(4, 2), rng);
    CHECK_THROWS_WITH(nn::set_trainable(model, {}, {"vision_encodr"}),
                      Catch::Contains("pattern 'vision_encodr' names no parameter"));
    CHECK_THROWS_WITH(nn::set_trainable(model, {"projector"}, {"projector"}), Catch::Contains("nothing is left to train"));
    for (const auto& [name, p] : model.named_parameters()) CHECK(p.requires_grad());  // nothing changed
    nn::set_trainable(model, {"projector"}, {});
    nn::set_trainable(model, {}, {});  // everything trainable again
    for (const auto& [name, p] : model.named_parameters()) CHECK(p.requires_grad());
}

TEST_CASE("sparse upcycling of a whole model: at step 0 its logits are the dense model's", "[nn][staging][moe]") {
    Rng rng(73);
    nn::VisionMoELanguageModel<double> dense(staged_vlm(1, 1), rng);
    const Tensord images = Tensord::randn({2, 3, 8, 8}, rng);
    for (nn::RouterType router : {nn::RouterType::NoisyTopK, nn::RouterType::TopKSoftmax}) {
        for (Index top_k : {1, 2}) {
            Rng init(74);
            nn::VisionMoELanguageModel<double> moe(staged_vlm(4, top_k, router), init);
            nn::upcycle_from(moe, dense, 0.0, init);
            Rng r1(5), r2(5);
            NoGradGuard no_grad;
            dense.eval();
            moe.eval();
            const Tensord a = dense.forward(images, kIds, 4, r1), b = moe.forward(images, kIds, 4, r2);
            REQUIRE(a.shape() == b.shape());
            double worst = 0;
            for (Index i = 0; i < a.numel(); ++i) worst = std::max(worst, std::abs(a.data()[i] - b.data()[i]));
            INFO("router " << nn::router_type_name(router) << ", top_k " << top_k);
            CHECK(worst < 1e-12);  // the acceptance asks for 1e-6
            // In training too (router noise on: the gates still sum to 1).
            moe.train();
            dense.train();
            Rng r3(6), r4(6);
            const Tensord c = dense.forward(images, kIds, 4, r3), d = moe.forward(images, kIds, 4, r4);
            for (Index i = 0; i < c.numel(); ++i) worst = std::max(worst, std::abs(c.data()[i] - d.data()[i]));
            CHECK(worst < 1e-12);
        }
    }
    // With noise the experts differ from each other and from the FFN, slightly.
    Rng init(75);
    nn::VisionMoELanguageModel<double> noisy(staged_vlm(4, 2), init);
    nn::upcycle_from(noisy, dense, 0.01, init);
    const auto& experts = noisy.decoder.blocks[0].moe.experts;
    const Tensord& w0 = experts[0].fc1.weight;
    const Tensord& w1 = experts[1].fc1.weight;
    const Tensord& dw = dense.decoder.blocks[0].moe.experts[0].fc1.weight;
    double d01 = 0, d0 = 0;
    for (Index i = 0; i < w0.numel(); ++i) {
        d01 = std::max(d01, std::abs(w0.data()[i] - w1.data()[i]));
        d0 = std::max(d0, std::abs(w0.data()[i] - dw.data()[i]));
    }
    CHECK(d01 > 0);
    CHECK(d0 > 0);
    CHECK(d0 < 0.1);
}

TEST_CASE("upcycling and copy_parameters refuse models that do not fit", "[nn][staging][moe]") {
    Rng rng(76);
    nn::VisionMoELanguageModel<float> two(staged_vlm(2, 1), rng), moe(staged_vlm(4, 2), rng);
    CHECK_THROWS_WITH(nn::upcycle_from(moe, two, 0.0, rng), Catch::Contains("must have 1 expert per layer"));
    nn::VLMConfig wider = staged_vlm(1, 1);
    wider.decoder.expert_ratio = 4;
    nn::VisionMoELanguageModel<float> wide(wider, rng);
    CHECK_THROWS_WITH(nn::upcycle_from(moe, wide, 0.0, rng), Catch::Contains("[SparseMoE] upcycling"));
    CHECK_THROWS_WITH(nn::copy_parameters(moe, two), Catch::Contains("[copy_parameters]"));
}
