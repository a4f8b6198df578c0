// tests/test_cli_moe.cpp — the MoE options of `seemoe train`, end to end on the tiny data: the
// routing flags reach the checkpoint's config and metrics.jsonl, runs and checkpoints made
// before those options existed still load and resume with the defaults, and every bad value is
// refused in one line with exit code 2 before anything is written.
#include <catch2/catch.hpp>

#ifdef SEEMOE_CLI_PATH

#include <seemoe/nn/checkpoint.hpp>

#include <algorithm>
#include <cmath>

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
        // The balance loss, summed over the two MoE layers: each is 1 at perfect balance and at most E = 4.
        CHECK(rows[i].at("balance_loss").as_double() > 0);
        CHECK(rows[i].at("balance_loss").as_double() <= 8.0 + 1e-6);
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

TEST_CASE("seemoe train adds the weighted auxiliary losses to the caption loss", "[cli][moe]") {
    // Step 1 sees the same weights, batch and router noise with and without the auxiliary losses,
    // so its logged loss with them is the caption loss plus 0.5 * balance + 0.25 * z (unweighted
    // values as logged). From step 2 on their gradient has changed the weights.
    const fs::path dir = scratch("moe_aux_added");
    REQUIRE(run_cli(dir, train_tiny(dir / "plain")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "aux", "--balance-loss 0.5 --z-loss 0.25")).code == 0);
    const std::vector<Json> plain = read_metrics(dir / "plain" / "metrics.jsonl");
    const std::vector<Json> aux = read_metrics(dir / "aux" / "metrics.jsonl");
    REQUIRE(plain.size() == 9);
    REQUIRE(aux.size() == 9);
    const double balance = aux[0].at("balance_loss").as_double(), z = aux[0].at("z_loss").as_double();
    CHECK(balance > 0);
    CHECK(balance <= 8.0 + 1e-6);  // summed over the two MoE layers, each at most E = 4
    CHECK(z > 0);
    CHECK(aux[0].at("loss").as_double() ==
          Approx(plain[0].at("loss").as_double() + 0.5 * balance + 0.25 * z).epsilon(1e-5));
    // Step 2: the caption loss differs, since step 1's update followed the auxiliary gradient too.
    const double caption2 = aux[1].at("loss").as_double() - 0.5 * aux[1].at("balance_loss").as_double() -
                            0.25 * aux[1].at("z_loss").as_double();
    CHECK(std::abs(caption2 - plain[1].at("loss").as_double()) > 1e-5);
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

namespace {

// The model of a run folder.
seemoe::nn::LoadedModel model_of(const fs::path& run) {
    return seemoe::nn::load_model((run / "model.safetensors").string());
}

// Logits of `model` in eval mode for the tiny set's first test image and a fixed caption prefix.
std::vector<float> eval_logits(seemoe::nn::VisionMoELanguageModel<float>& model) {
    const auto& c = model.config.vision;
    seemoe::Rng data(9);
    const seemoe::Tensor<float> image = seemoe::Tensor<float>::randn({1, 3, c.image_size, c.image_size}, data);
    seemoe::NoGradGuard no_grad;
    model.eval();
    seemoe::Rng unused(0);
    const seemoe::Tensor<float> logits = model.forward(image, {1, 5, 6, 7, 8}, 5, unused);
    return std::vector<float>(logits.data(), logits.data() + logits.numel());
}

}  // namespace

TEST_CASE("seemoe train --init-from --upcycle: at step 0 the model's logits are the dense model's", "[cli][moe]") {
    const fs::path dir = scratch("upcycle");
    REQUIRE(run_cli(dir, train_tiny(dir / "dense", "--experts 1 --top-k 1")).code == 0);
    // --lr 0 leaves every weight as it starts (AdamW's decay is lr * wd too): the step-0 model.
    const Run up = run_cli(dir, train_tiny(dir / "up", "--steps 1 --lr 0 --init-from " + quote((dir / "dense").string()) +
                                                          " --upcycle --experts 4 --top-k 2"));
    INFO(up.out << up.err);
    REQUIRE(up.code == 0);
    CHECK_THAT(up.out, Catch::Contains("upcycled to 4 experts"));
    seemoe::nn::LoadedModel dense = model_of(dir / "dense"), upcycled = model_of(dir / "up");
    CHECK(upcycled.config.decoder.num_experts == 4);
    const std::vector<float> a = eval_logits(dense.model), b = eval_logits(upcycled.model);
    REQUIRE(a.size() == b.size());
    float worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
    CHECK(worst < 1e-6f);
    // It trains on from there, and with noise the experts start apart.
    REQUIRE(run_cli(dir, train_tiny(dir / "noisy", "--init-from " + quote((dir / "dense").string()) +
                                                       " --upcycle --upcycle-noise 0.01")).code == 0);
    CHECK(losses(dir / "noisy" / "metrics.jsonl").size() == 8);
}

TEST_CASE("seemoe train refuses bad --init-from / --upcycle combinations in one line", "[cli][moe]") {
    const fs::path dir = scratch("upcycle_bad");
    const fs::path out = dir / "out";
    REQUIRE(run_cli(dir, train_tiny(dir / "dense", "--steps 2 --experts 1 --top-k 1")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "sparse", "--steps 2")).code == 0);
    const std::string dense = " --init-from " + quote((dir / "dense").string());
    auto train = [&](const std::string& flags) { return run_cli(dir, train_tiny(out, flags)); };
    check_error(train("--upcycle"), "--upcycle needs --init-from");
    check_error(train("--upcycle-noise 0.1"), "--upcycle-noise applies only with --upcycle");
    check_error(train(dense + " --upcycle --upcycle-noise -1"), "--upcycle-noise must be in [0, 1]");
    check_error(train("--upcycle --init-from " + quote((dir / "sparse").string())),
                "--upcycle needs a dense checkpoint (1 expert per layer");
    check_error(train(dense + " --upcycle --experts 1 --top-k 1"), "leaves the model dense");
    check_error(train(dense + " --upcycle --shared-experts 1"), "--upcycle with --shared-experts");
    check_error(train(dense + " --upcycle --router softmax_topk"), "--upcycle with --router softmax_topk");
    check_error(train(dense + " --n-embd 64"), "[copy_parameters]");  // sizes that do not fit the weights
    check_error(train("--init-from " + quote((dir / "missing").string())), "does not exist");
    check_error(run_cli(dir, "train --resume --out " + quote((dir / "dense").string()) + dense), "--init-from starts a new run");
    CHECK_FALSE(fs::exists(out));
}

TEST_CASE("seemoe train --stage / --freeze: frozen weights bitwise unchanged, no optimiser state, exact resume",
          "[cli][moe]") {
    const fs::path dir = scratch("staged");
    // The starting weights of seed 1337: a run with --lr 0 keeps them.
    REQUIRE(run_cli(dir, train_tiny(dir / "init", "--steps 1 --lr 0")).code == 0);
    const Run stage1 = run_cli(dir, train_tiny(dir / "stage1", "--stage 1"));
    INFO(stage1.out << stage1.err);
    REQUIRE(stage1.code == 0);
    CHECK_THAT(stage1.out, Catch::Contains("of them (the others frozen)"));
    seemoe::nn::LoadedModel init = model_of(dir / "init"), trained = model_of(dir / "stage1");
    const auto before = init.model.named_parameters(), after = trained.model.named_parameters();
    REQUIRE(before.size() == after.size());
    int moved = 0;
    for (std::size_t i = 0; i < after.size(); ++i) {
        const bool same = std::equal(before[i].second.data(), before[i].second.data() + before[i].second.numel(),
                                     after[i].second.data());
        if (after[i].first.rfind("projector.", 0) == 0) {
            moved += same ? 0 : 1;
        } else {
            INFO(after[i].first);
            CHECK(same);  // frozen: bit for bit after 8 steps
        }
    }
    CHECK(moved == 4);
    // The training state holds the projector's moments only.
    const auto state = seemoe::io::load_safetensors<float>(
        (dir / "stage1" / "checkpoints" / "step-00000008" / "training_state.safetensors").string());
    CHECK(state.tensors.size() == 8);
    for (const auto& [name, t] : state.tensors) CHECK(name.find(".projector.") != std::string::npos);

    // Stop and resume with frozen parameters: the same losses as in one go.
    REQUIRE(run_cli(dir, train_tiny(dir / "split", "--stage 1 --stop-at 3")).code == 0);
    const Run resumed =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "split").string()) + " --data " + quote(kTiny));
    INFO(resumed.out << resumed.err);
    REQUIRE(resumed.code == 0);
    CHECK(losses(dir / "split" / "metrics.jsonl") == losses(dir / "stage1" / "metrics.jsonl"));

    // Stage 3 from stage 2's model: only the MoE layers move; --freeze takes more away.
    REQUIRE(run_cli(dir, train_tiny(dir / "stage3", "--stage 3 --freeze decoder.blocks.0 --init-from " +
                                                        quote((dir / "stage1").string()))).code == 0);
    seemoe::nn::LoadedModel s3 = model_of(dir / "stage3");
    const auto p3 = s3.model.named_parameters();
    for (std::size_t i = 0; i < p3.size(); ++i) {
        const bool same =
            std::equal(after[i].second.data(), after[i].second.data() + after[i].second.numel(), p3[i].second.data());
        if (p3[i].first.rfind("decoder.blocks.1.moe.", 0) != 0) {
            INFO(p3[i].first);
            CHECK(same);
        }
    }
}

TEST_CASE("seemoe train refuses bad --freeze, --train-only and --stage values in one line", "[cli][moe]") {
    const fs::path dir = scratch("staged_bad");
    const fs::path out = dir / "out";
    auto train = [&](const std::string& flags) { return run_cli(dir, train_tiny(out, flags)); };
    check_error(train("--stage 4"), "--stage must be 1, 2 or 3, got 4");
    check_error(train("--stage -1"), "--stage");
    check_error(train("--stage 1 --train-only projector"), "--stage and --train-only both");
    check_error(train("--freeze vision_encodr"), "pattern 'vision_encodr' names no parameter");
    check_error(train("--train-only projector --freeze projector"), "nothing is left to train");
    check_error(train("--freeze ,"), "--freeze needs at least one parameter-name pattern");
    check_error(run_cli(dir, "train --text " + quote(SEEMOE_SOURCE_DIR "/tests/data/tiny_text.txt") + " --out " +
                                 quote(out.string()) + " --stage 1"),
                "--stage applies to image runs");
    CHECK_FALSE(fs::exists(out));
    // A resumed run keeps its frozen parameters.
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--stage 1 --stop-at 2")).code == 0);
    check_error(run_cli(dir, "train --resume --out " + quote((dir / "run").string()) + " --data " + quote(kTiny) +
                                 " --stage 2"),
                "differ from the run being resumed");
}

#endif  // SEEMOE_CLI_PATH
