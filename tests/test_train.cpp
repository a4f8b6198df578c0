// Learning tests: a tiny seeMoE must overfit a handful of image-caption pairs and then caption
// each image exactly; checkpoints round-trip bit for bit.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

using namespace seemoe;

namespace {

// Four 16x16 images that differ in colour and layout, normalised like real data.
Tensorf synthetic_images() {
    const Index S = 16;
    Tensorf images = Tensorf::zeros({4, 3, S, S});
    for (Index y = 0; y < S; ++y)
        for (Index x = 0; x < S; ++x) {
            images.at({0, 0, y, x}) = 1.5f;                              // red everywhere
            images.at({1, 1, y, x}) = (y < S / 2) ? 1.5f : -1.5f;        // green top half
            images.at({2, 2, y, x}) = (x < S / 2) ? -1.5f : 1.5f;        // blue right half
            images.at({3, 0, y, x}) = images.at({3, 1, y, x}) = ((x + y) % 4 < 2) ? 1.f : -1.f;  // stripes
        }
    return images;
}

nn::VLMConfig tiny_vlm(Index vocab) {
    nn::VLMConfig c;
    c.vision.image_size = 16;
    c.vision.patch_size = 4;
    c.vision.dim = 32;
    c.vision.n_blocks = 1;
    c.vision.n_heads = 2;
    c.vision.dropout = 0.0;
    c.decoder.vocab_size = vocab;
    c.decoder.n_embd = 32;
    c.decoder.n_head = 2;
    c.decoder.n_layer = 2;
    c.decoder.num_experts = 4;
    c.decoder.top_k = 2;
    c.decoder.block_size = 32;
    c.decoder.dropout = 0.0;
    return c;
}

}  // namespace

TEST_CASE("a tiny VLM overfits 4 image-caption pairs and captions them exactly", "[train]") {
    const std::vector<std::string> captions{"a red square", "green on top", "blue right", "stripes"};
    const auto tokenizer = data::CharTokenizer::from_texts(captions);
    Rng rng(0);
    nn::VisionMoELanguageModel<float> model(tiny_vlm(tokenizer.vocab_size()), rng);
    const Tensorf images = synthetic_images();

    // [<bos>, c1..cn, <pad>..] -> [c1..cn, <eos>, -100..]
    Index L = 0;
    for (const auto& c : captions) L = std::max<Index>(L, static_cast<Index>(c.size()) + 1);
    std::vector<Index> inputs(4 * L, tokenizer.pad_id), targets(4 * L, -100);
    for (Index b = 0; b < 4; ++b) {
        const auto ids = tokenizer.encode(captions[b]);
        inputs[b * L] = tokenizer.bos_id;
        for (std::size_t i = 0; i < ids.size(); ++i) {
            inputs[b * L + 1 + i] = ids[i];
            targets[b * L + i] = ids[i];
        }
        targets[b * L + ids.size()] = tokenizer.eos_id;
    }

    AdamW<float> optimizer(model.parameters(), {/*lr=*/3e-3, 0.9, 0.999, 1e-8, /*weight_decay=*/0.0});
    float loss = 0;
    const float initial = model.loss(images, inputs, targets, L, rng).item();
    for (int step = 0; step < 400; ++step) {
        optimizer.zero_grad();
        Tensorf l = model.loss(images, inputs, targets, L, rng);
        l.backward();
        optimizer.step();
        loss = l.item();
        if (loss < 0.02f) break;
    }
    INFO("initial loss " << initial << ", final loss " << loss);
    CHECK(loss < 0.05f);

    nn::SamplingOptions greedy;
    greedy.max_new_tokens = 20;
    const auto generated = model.generate(images, greedy, rng);
    for (Index b = 0; b < 4; ++b) CHECK(tokenizer.decode(generated[b]) == captions[b]);
}

TEST_CASE("checkpoint save -> load is bitwise and reproduces the logits", "[io][train]") {
    const auto dir = std::filesystem::temp_directory_path() / "seemoe_test_checkpoint";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "model.safetensors").string();
    Rng rng(1);
    auto config = tiny_vlm(9);
    config.visual_tokens = nn::VisualTokens::Patches;
    nn::VisionMoELanguageModel<float> model(config, rng);
    model.eval();
    std::vector<std::string> tokens = {"<pad>", "<bos>", "<eos>"};
    for (const char* c : {"a", "b", "c", "d", "e", "f"}) tokens.push_back(c);
    const data::CharTokenizer tokenizer(tokens);
    nn::save_model(path, model, tokenizer, 42, {{"preset", "test"}});

    nn::LoadedModel loaded = nn::load_model(path);
    loaded.model.eval();
    CHECK(nn::config_to_json(loaded.config) == nn::config_to_json(config));
    CHECK(loaded.tokenizer == tokenizer);
    CHECK(loaded.step == 42);
    CHECK(loaded.metadata.at("preset") == "test");
    CHECK(loaded.metadata.at("format") == nn::kModelFormat);
    CHECK_THROWS_WITH(nn::save_model(path, model, data::CharTokenizer(), 1), Catch::Contains("vocab_size"));
    auto original = model.named_parameters();
    auto restored = loaded.model.named_parameters();
    REQUIRE(original.size() == restored.size());
    for (std::size_t i = 0; i < original.size(); ++i) {
        CHECK(original[i].first == restored[i].first);
        REQUIRE(original[i].second.shape() == restored[i].second.shape());
        CHECK(std::memcmp(original[i].second.data(), restored[i].second.data(),
                          sizeof(float) * original[i].second.numel()) == 0);
    }
    Tensorf images = Tensorf::randn({2, 3, 16, 16}, rng);
    const std::vector<Index> ids{1, 3, 4, 1, 5, 6};
    NoGradGuard no_grad;
    CHECK(model.forward(images, ids, 3, rng).to_vector() == loaded.model.forward(images, ids, 3, rng).to_vector());

    // A checkpoint missing a tensor, or with one of the wrong shape, is refused by name.
    auto params = model.named_parameters();
    auto missing = params;
    missing.erase(missing.begin() + 5);
    const std::string missing_path = (dir / "missing.safetensors").string();
    const std::map<std::string, std::string> metadata = {
        {"config", nn::config_to_json(config).dump()}, {"vocab", tokenizer.to_json()}, {"step", "1"}};
    io::save_safetensors(missing_path, missing, metadata);
    CHECK_THROWS_WITH(nn::load_model(missing_path), Catch::Contains(params[5].first));

    auto misshaped = params;
    misshaped[7].second = Tensorf::zeros({3});
    const std::string misshaped_path = (dir / "misshaped.safetensors").string();
    io::save_safetensors(misshaped_path, misshaped, metadata);
    CHECK_THROWS_WITH(nn::load_model(misshaped_path),
                      Catch::Contains(params[7].first) && Catch::Contains("shape"));

    auto extra = params;
    extra.emplace_back("decoder.unexpected.weight", Tensorf::zeros({2}));
    const std::string extra_path = (dir / "extra.safetensors").string();
    io::save_safetensors(extra_path, extra, metadata);
    CHECK_THROWS_WITH(nn::load_model(extra_path), Catch::Contains("decoder.unexpected.weight"));

    std::filesystem::remove_all(dir);
}

TEST_CASE("training state round trip restores AdamW moments, steps and the rng", "[io][train]") {
    const auto dir = std::filesystem::temp_directory_path() / "seemoe_test_state";
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "training_state.safetensors").string();
    Rng rng(2);
    nn::VisionMoELanguageModel<float> model(tiny_vlm(9), rng);
    AdamW<float> optimizer(model.parameters());
    Tensorf images = Tensorf::randn({2, 3, 16, 16}, rng);
    const std::vector<Index> ids{1, 3, 4, 1, 5, 6}, targets{3, 4, 2, 5, 6, 2};
    for (int i = 0; i < 2; ++i) {
        optimizer.zero_grad();
        model.loss(images, ids, targets, 3, rng).backward();
        optimizer.step();
    }
    nn::save_training_state(path, model, optimizer, 2, rng);
    const double next_draw = Rng(rng).uniform();

    AdamW<float> fresh(model.parameters());
    Rng other(99);
    CHECK(nn::load_training_state(path, model, fresh, other) == 2);
    CHECK(other.uniform() == next_draw);
    for (std::size_t i = 0; i < optimizer.state().size(); ++i) {
        CHECK(fresh.state()[i].step == optimizer.state()[i].step);
        CHECK(fresh.state()[i].exp_avg.to_vector() == optimizer.state()[i].exp_avg.to_vector());
        CHECK(fresh.state()[i].exp_avg_sq.to_vector() == optimizer.state()[i].exp_avg_sq.to_vector());
    }
    std::filesystem::remove_all(dir);
}

// Written by `seemoe train --preset tiny --data tests/data/tiny --steps 3 --threads 1 --image-size
// 16 --patch 8 --vit-dim 8 --vit-blocks 1 --heads 2 --n-embd 8 --n-layer 1 --experts 2 --top-k 1`
// at commit 1c4f6c6, before the config and checkpoint code moved (issue 14): the format must
// keep loading, and the config must still write back to the same JSON.
TEST_CASE("a checkpoint written before the layout change loads, and its config JSON is unchanged", "[io][train]") {
    const std::string dir = SEEMOE_SOURCE_DIR "/tests/data/checkpoint_before_issue14";
    nn::LoadedModel loaded = nn::load_model(dir + "/model.safetensors");
    CHECK(loaded.step == 3);
    CHECK(loaded.config.visual_tokens == nn::VisualTokens::Patches);
    CHECK(loaded.config.vision.image_size == 16);
    CHECK(loaded.config.decoder.num_experts == 2);
    CHECK(loaded.tokenizer.vocab_size() == 25);
    CHECK(loaded.metadata.at("preset") == "tiny");
    CHECK(nn::config_to_json(loaded.config).dump() == loaded.metadata.at("config"));

    // The training state restores into a model of that config.
    AdamW<float> optimizer(loaded.model.parameters());
    Rng rng(0);
    CHECK(nn::load_training_state(dir + "/training_state.safetensors", loaded.model, optimizer, rng) == 3);
    CHECK(optimizer.state()[0].step == 3);
}
