// tests/test_cli_moe.cpp — the MoE options of `seemoe train`, end to end on the tiny data: the
// routing flags reach the checkpoint's config and metrics.jsonl, runs and checkpoints made
// before those options existed still load and resume with the defaults, and every bad value is
// refused in one line with exit code 2 before anything is written.
#include <catch2/catch.hpp>

#ifdef SEEMOE_CLI_PATH

#include <seemoe/nn/checkpoint.hpp>

#include "cli_run.hpp"

using namespace cli_test;

namespace {

// The model config stored in a checkpoint, as JSON.
Json stored_config(const fs::path& model) {
    const auto metadata = seemoe::io::load_safetensors<float>(model.string()).metadata;
    return Json::parse(metadata.at("config"));
}

}  // namespace

TEST_CASE("seemoe train: the MoE routing flags reach the checkpoint and metrics.jsonl", "[cli][moe]") {
    const fs::path dir = scratch("moe_flags");
    const std::string flags =
        "--router softmax_topk --shared-experts 1 --capacity-factor 1.0 --eval-capacity-factor 2 --overflow priority "
        "--balance-loss 0.01 --z-loss 0.001";
    const Run train = run_cli(dir, train_tiny(dir / "run", flags));
    INFO(train.out << train.err);
    REQUIRE(train.code == 0);
    CHECK_THAT(train.out, Catch::Contains("router softmax_topk"));
    CHECK_THAT(train.out, Catch::Contains("balance_loss     0.01"));

    // The config carries the routing fields, and the weights the shared expert (no router noise).
    const Json decoder = stored_config(dir / "run" / "model.safetensors").at("decoder");
    CHECK(decoder.at("router").as_string() == "softmax_topk");
    CHECK(decoder.at("num_shared_experts").as_int() == 1);
    CHECK(decoder.at("capacity_factor").as_double() == 1.0);
    CHECK(decoder.at("eval_capacity_factor").as_double() == 2.0);
    CHECK(decoder.at("overflow").as_string() == "priority");
    seemoe::nn::LoadedModel loaded = seemoe::nn::load_model((dir / "run" / "model.safetensors").string());
    CHECK(loaded.config.decoder.router == seemoe::nn::RouterType::SoftmaxTopK);
    const auto names = loaded.model.named_parameters();
    auto has = [&](const std::string& name) {
        for (const auto& [n, p] : names)
            if (n == name) return true;
        return false;
    };
    CHECK(has("decoder.blocks.1.moe.shared_experts.0.fc2.bias"));
    CHECK_FALSE(has("decoder.blocks.1.moe.router.noise.weight"));

    // metrics.jsonl: the auxiliary losses (unweighted) and each layer's routing statistics.
    const std::vector<Json> rows = read_metrics(dir / "run" / "metrics.jsonl");
    REQUIRE(rows.size() == 9);
    for (int i = 0; i < 8; ++i) {
        INFO("step " << i + 1);
        // The balance loss is 1 at perfect balance and at most E = 4.
        CHECK(rows[i].at("balance_loss").as_double() >= 1.0 - 1e-6);
        CHECK(rows[i].at("balance_loss").as_double() <= 4.0 + 1e-6);
        CHECK(rows[i].at("z_loss").as_double() > 0);
        const Json& moe = rows[i].at("moe");
        REQUIRE(moe.size() == 2);  // the tiny preset's two MoE layers
        for (std::size_t l = 0; l < 2; ++l) {
            const Json& layer = moe.at(l);
            REQUIRE(layer.at("tokens_per_expert").size() == 4);
            std::int64_t kept = 0;
            for (std::size_t e = 0; e < 4; ++e) kept += layer.at("tokens_per_expert").at(e).as_int();
            CHECK(kept > 0);
            CHECK(layer.at("max_over_mean").as_double() >= 1.0);
            CHECK(layer.at("entropy").as_double() > 0);
            CHECK(layer.at("drop_fraction").as_double() >= 0);
            CHECK(layer.at("drop_fraction").as_double() < 1);
        }
    }
    CHECK(rows[8].contains("val_max_over_mean_load"));

    // caption and eval read the model with its routing options.
    const std::string image = quote(kTiny + "/test/00000.png");
    CHECK(run_cli(dir, "caption --model " + quote((dir / "run").string()) + " " + image).code == 0);
    CHECK(run_cli(dir, "eval --model " + quote((dir / "run").string()) + " --data " + quote(kTiny)).code == 0);
}

TEST_CASE("seemoe train with the MoE options resumes exactly", "[cli][moe]") {
    const fs::path dir = scratch("moe_resume");
    const std::string flags = "--router topk_softmax --capacity-factor 1.25 --balance-loss 0.02 --z-loss 0.001";
    REQUIRE(run_cli(dir, train_tiny(dir / "full", flags)).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "split", flags + " --stop-at 3")).code == 0);
    // The stored settings and config bring the options back: --resume and the folder suffice.
    const Run second =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "split").string()) + " --data " + quote(kTiny));
    INFO(second.out << second.err);
    REQUIRE(second.code == 0);
    CHECK(losses(dir / "split" / "metrics.jsonl") == losses(dir / "full" / "metrics.jsonl"));
    // The routing fields are model fields: fixed when resuming.
    check_error(run_cli(dir, "train --resume --out " + quote((dir / "split").string()) + " --data " + quote(kTiny) +
                                 " --capacity-factor 2"),
                "model size flags differ from the checkpoint");
}

TEST_CASE("seemoe train without the MoE options writes what it wrote before them", "[cli][moe]") {
    const fs::path dir = scratch("moe_defaults");
    REQUIRE(run_cli(dir, train_tiny(dir / "run")).code == 0);
    // The optional config fields are left out at their defaults, so the JSON is the old one.
    const Json decoder = stored_config(dir / "run" / "model.safetensors").at("decoder");
    for (const char* field : {"router", "num_shared_experts", "capacity_factor", "eval_capacity_factor", "overflow"})
        CHECK_FALSE(decoder.contains(field));
    const std::vector<Json> rows = read_metrics(dir / "run" / "metrics.jsonl");
    REQUIRE(rows.size() == 9);
    CHECK_FALSE(rows[0].contains("balance_loss"));
    CHECK_FALSE(rows[0].contains("z_loss"));
    CHECK(rows[0].at("moe").size() == 2);
    CHECK(rows[0].at("moe").at(0).at("drop_fraction").as_double() == 0.0);  // dropless
}

TEST_CASE("cli: a run saved before the MoE options resumes with their defaults", "[cli][moe]") {
    // tests/data/checkpoint_before_issue14 (step 3 of 3) has neither the routing fields in its config
    // nor balance_loss / z_loss in its settings. Resumed with more steps, it trains on with the
    // seeds' router and no auxiliary losses.
    const fs::path dir = scratch("moe_old_run");
    fs::copy(SEEMOE_SOURCE_DIR "/tests/data/checkpoint_before_issue14", dir / "old", fs::copy_options::recursive);
    const Run run = run_cli(dir, "train --resume --threads 1 --steps 5 --out " + quote((dir / "old").string()) +
                                     " --data " + quote(kTiny));
    INFO(run.out << run.err);
    REQUIRE(run.code == 0);
    CHECK_THAT(run.out, Catch::Contains("resuming from step 3"));
    CHECK_THAT(run.out, Catch::Contains("router noisy_topk"));
    CHECK_THAT(run.out, Catch::Contains("balance_loss     0"));
    const seemoe::nn::LoadedModel resumed = seemoe::nn::load_model((dir / "old" / "model.safetensors").string());
    CHECK(resumed.metadata.at("step") == "5");
    CHECK(resumed.config.decoder.router == seemoe::nn::RouterType::NoisyTopK);
    CHECK(resumed.config.decoder.capacity_factor == 0.0);
}

TEST_CASE("seemoe train refuses bad MoE option values in one line, exit 2, nothing written", "[cli][moe]") {
    const fs::path dir = scratch("moe_bad_flags");
    const fs::path out = dir / "out";
    auto train = [&](const std::string& flags) { return run_cli(dir, train_tiny(out, flags)); };
    check_error(train("--router best"), "--router must be one of noisy_topk|topk_softmax|softmax_topk, got 'best'");
    check_error(train("--shared-experts -1"), "--shared-experts");
    check_error(train("--shared-experts two"), "--shared-experts expects an integer");
    check_error(train("--capacity-factor -0.5"), "--capacity-factor must be in [0, 100], got -0.5");
    check_error(train("--capacity-factor 101"), "--capacity-factor must be in [0, 100]");
    check_error(train("--capacity-factor nan"), "--capacity-factor expects a number");
    check_error(train("--eval-capacity-factor 1e9"), "--eval-capacity-factor must be in [0, 100]");
    check_error(train("--overflow random"), "--overflow must be one of position|priority, got 'random'");
    check_error(train("--balance-loss -1"), "--balance-loss must be in [0, 10], got -1");
    check_error(train("--balance-loss lots"), "--balance-loss expects a number");
    check_error(train("--z-loss 11"), "--z-loss must be in [0, 10], got 11");
    // The auxiliary losses belong to image runs.
    check_error(run_cli(dir, "train --text " + quote(SEEMOE_SOURCE_DIR "/tests/data/tiny_text.txt") + " --out " +
                                 quote(out.string()) + " --balance-loss 0.01"),
                "--balance-loss applies to image runs");
    CHECK_FALSE(fs::exists(out));
}

TEST_CASE("seemoe refuses a checkpoint with a bad MoE routing field, naming the field", "[cli][moe]") {
    const fs::path dir = scratch("moe_bad_checkpoint");
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--steps 2 --capacity-factor 1.5")).code == 0);
    const fs::path model = dir / "run" / "model.safetensors";
    const std::string image = quote(kTiny + "/test/00000.png");
    auto rewrite = [&](const std::string& from, const std::string& to, const fs::path& target) {
        seemoe::io::SafetensorsFile file = seemoe::io::load_safetensors<float>(model.string());
        std::string config = file.metadata.at("config");
        const std::size_t at = config.find(from);
        REQUIRE(at != std::string::npos);
        config.replace(at, from.size(), to);
        file.metadata["config"] = config;
        std::vector<std::pair<std::string, seemoe::Tensor<float>>> tensors(file.tensors.begin(), file.tensors.end());
        seemoe::io::save_safetensors(target.string(), tensors, file.metadata);
    };
    rewrite("\"capacity_factor\":1.5", "\"capacity_factor\":-3", dir / "negative.safetensors");
    Run run = run_cli(dir, "caption --model " + quote((dir / "negative.safetensors").string()) + " " + image);
    check_error(run, "decoder.capacity_factor");
    CHECK_THAT(run.err, Catch::Contains("must be in [0, 100], got -3"));
    rewrite("\"capacity_factor\":1.5", "\"capacity_factor\":1.5,\"overflow\":\"random\"", dir / "overflow.safetensors");
    run = run_cli(dir, "caption --model " + quote((dir / "overflow.safetensors").string()) + " " + image);
    check_error(run, "decoder.overflow");
    CHECK_THAT(run.err, Catch::Contains("unknown overflow 'random' (expected position or priority)"));
}

#endif  // SEEMOE_CLI_PATH
