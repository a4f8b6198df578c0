// tests/test_cli_reliability.cpp — the `seemoe` program given what a user should not give it:
// FIFOs, directories and devices where files belong, image paths leading out of the data folder,
// bad model sizes, corrupt checkpoints and training states, and NaN gradients (injected through
// SEEMOE_INJECT_NAN). Each must end in one line naming the file and the field or row, exit code
// 2, no "internal error", no signal and no hang (every run that could hang runs under timeout).
#include <catch2/catch.hpp>

#ifdef SEEMOE_CLI_PATH

#include <sys/stat.h>

#include <seemoe/io/safetensors.hpp>
#include <seemoe/nn/checkpoint.hpp>

#include "cli_run.hpp"

using namespace cli_test;
using seemoe::Index;

namespace {

// A run that could block forever without the checks runs under `timeout` (exit code 124 if it hung).
const std::string kTimeout = "timeout -k 5 120";

// Replaces `from` with `to` in the JSON string stored under metadata `key` of a safetensors file.
void edit_metadata(const fs::path& path, const std::string& key, const std::string& from, const std::string& to) {
    seemoe::io::SafetensorsFile file = seemoe::io::load_safetensors(path.string());
    std::string& value = file.metadata.at(key);
    const std::size_t at = value.find(from);
    REQUIRE(at != std::string::npos);
    value.replace(at, from.size(), to);
    seemoe::io::save_safetensors(path.string(), file.tensors, file.metadata);
}

}  // namespace

TEST_CASE("cli: FIFOs, directories and devices as model or image are refused without blocking", "[cli][reliability]") {
    const fs::path dir = scratch("special_files");
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--steps 2")).code == 0);
    REQUIRE(::mkfifo((dir / "pipe").c_str(), 0600) == 0);
    const std::string model = quote((dir / "run").string());
    const std::string image = quote(kTiny + "/test/00000.png");

    check_error(run_cli(dir, "caption --model " + quote((dir / "pipe").string()) + " " + image, kTimeout),
                "is a FIFO");
    check_error(run_cli(dir, "eval --data " + quote(kTiny) + " --model " + quote((dir / "pipe").string()), kTimeout),
                "is a FIFO");
    for (const auto& [file, what] : std::vector<std::pair<std::string, std::string>>{
             {(dir / "pipe").string(), "is a FIFO"},
             {dir.string(), "is a directory"},
             {"/dev/zero", "is a character device"},
             {"/dev/null", "is a character device"}}) {
        INFO(file);
        const Run run = run_cli(dir, "caption --model " + model + " " + image + " " + quote(file), kTimeout);
        check_error(run, what);
        CHECK_THAT(run.err, Catch::Contains(file));
        CHECK(run.out.empty());
    }
    // A data folder whose captions.csv is a FIFO.
    fs::create_directories(dir / "fifo_data");
    REQUIRE(::mkfifo((dir / "fifo_data" / "captions.csv").c_str(), 0600) == 0);
    check_error(run_cli(dir, "train --preset tiny --data " + quote((dir / "fifo_data").string()) + " --out " +
                                 quote((dir / "never").string()),
                        kTimeout),
                "is a FIFO");
    CHECK_FALSE(fs::exists(dir / "never"));
}

TEST_CASE("cli: image paths leading out of the data folder are refused unless --allow-outside-paths",
          "[cli][reliability]") {
    const fs::path dir = scratch("outside_paths");
    fs::copy(kTiny, dir / "data", fs::copy_options::recursive);
    fs::copy_file(dir / "data" / "train" / "00001.png", dir / "secret.png");
    replace_in_file(dir / "data" / "captions.csv", "train/00001.png", "../secret.png");
    const std::string train = "train --preset tiny --steps 2 --threads 1 --data " + quote((dir / "data").string()) +
                              " --out " + quote((dir / "out").string());
    const Run run = run_cli(dir, train);
    check_error(run, "image \"../secret.png\"");
    CHECK_THAT(run.err, Catch::Contains("outside the data folder") && Catch::Contains("--allow-outside-paths"));
    CHECK_FALSE(fs::exists(dir / "out"));
    CHECK(run_cli(dir, train + " --allow-outside-paths").code == 0);

    replace_in_file(dir / "data" / "captions.csv", "../secret.png", "/etc/passwd");
    check_error(run_cli(dir, train + " --force"), "the path is absolute");
}

TEST_CASE("cli: a caption that is not UTF-8 is refused naming the file and the row", "[cli][reliability]") {
    const fs::path dir = scratch("utf8");
    fs::copy(kTiny, dir / "data", fs::copy_options::recursive);
    replace_in_file(dir / "data" / "captions.csv", "a large orange star", "a large orange st\xff" "r");
    const Run run = run_cli(dir, "train --preset tiny --steps 2 --data " + quote((dir / "data").string()) + " --out " +
                                     quote((dir / "out").string()));
    check_error(run, "not valid UTF-8");
    CHECK_THAT(run.err, Catch::Contains("captions.csv line") && Catch::Contains("(row "));
}

TEST_CASE("cli: bad model sizes are refused by flag name in train and bench", "[cli][reliability]") {
    const fs::path dir = scratch("bad_sizes");
    const std::string train = "train --preset tiny --steps 2 --data " + quote(kTiny) + " --out " +
                              quote((dir / "out").string()) + " ";
    check_error(run_cli(dir, train + "--n-layer 0"), "--n-layer must be at least 1");
    check_error(run_cli(dir, train + "--vit-blocks 0"), "--vit-blocks must be at least 1");
    check_error(run_cli(dir, train + "--patch 0"), "--patch must be at least 1");
    check_error(run_cli(dir, train + "--patch 64"), "--patch: vision.patch_size must be at most 32");
    check_error(run_cli(dir, train + "--heads 3"), "must be divisible by");
    check_error(run_cli(dir, train + "--top-k 5"), "--top-k: decoder.top_k must be at most 4");
    check_error(run_cli(dir, train + "--n-embd 1000000"), "--n-embd: decoder.n_embd must be at most 65536");
    check_error(run_cli(dir, train + "--n-embd 32768 --heads 1"), "parameters");
    check_error(run_cli(dir, train + "--block-size 10 --visual-tokens patches"), "--block-size: decoder.block_size");
    CHECK_FALSE(fs::exists(dir / "out"));
    check_error(run_cli(dir, "bench --preset tiny --n-layer 0"), "--n-layer must be at least 1");
    check_error(run_cli(dir, "bench --preset tiny --vocab 1"), "--vocab must be at least 3");
}

TEST_CASE("cli: checkpoints with a bad config or training state are refused naming the file and field",
          "[cli][reliability]") {
    const fs::path dir = scratch("bad_checkpoint_config");
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--steps 2")).code == 0);
    const std::string image = quote(kTiny + "/test/00000.png");
    struct Case {
        const char* file;
        const char* key;
        const char* from;
        const char* to;
        const char* expected;
    };
    const std::vector<Case> cases = {
        {"model.safetensors", "config", "\"patch_size\":8", "\"patch_size\":0", "config field vision.patch_size"},
        {"model.safetensors", "config", "\"n_layer\":2", "\"n_layer\":0", "config field decoder.n_layer"},
        {"model.safetensors", "config", "\"eos_id\":2", "\"eos_id\":1000", "config field eos_id"},
        {"model.safetensors", "config", "\"pad_id\":0", "\"pad_id\":-1", "config field pad_id"},
        {"model.safetensors", "config", "\"image_size\":32", "\"image_size\":1000000000", "vision.image_size"},
        {"model.safetensors", "config", "\"n_head\":2", "\"n_head\":3", "decoder.n_embd must be divisible"},
        {"model.safetensors", "step", "2", "two", "has step 'two'"},
        {"training_state.safetensors", "train", "\"seed\":\"1337\"", "\"seed\":\"x\"", "field seed"},
        {"training_state.safetensors", "train", "\"batch\":8", "\"batch\":0", "field batch"},
        {"training_state.safetensors", "train", "\"lr\":0.003", "\"lr\":\"fast\"", "field lr"},
        {"training_state.safetensors", "train", "\"grad_clip\":1.0", "\"grad_clip\":-1", "grad_clip"},
        {"training_state.safetensors", "rng", "[\"", "[\"z", "metadata 'rng'"},
        {"training_state.safetensors", "param_steps", "[2", "[-7", "metadata 'param_steps'"},
        {"training_state.safetensors", "step", "2", "9999999999999999999999", "has step"},
    };
    for (const Case& c : cases) {
        INFO(c.file << " " << c.key << ": " << c.to);
        fs::remove_all(dir / "copy");
        fs::copy(dir / "run", dir / "copy", fs::copy_options::recursive);
        const fs::path path = dir / "copy" / c.file;
        edit_metadata(path, c.key, c.from, c.to);
        const bool model_file = std::string(c.file) == "model.safetensors";
        const Run run = model_file ? run_cli(dir, "caption --model " + quote((dir / "copy").string()) + " " + image)
                                   : run_cli(dir, "train --resume --out " + quote((dir / "copy").string()) + " --data " +
                                                      quote(kTiny));
        check_error(run, c.expected);
        CHECK_THAT(run.err, Catch::Contains(path.string()));
    }
}

TEST_CASE("cli: non-finite gradients are skipped and counted; too many in a row stop the run", "[cli][reliability]") {
    const fs::path dir = scratch("nan_guard");
    REQUIRE(run_cli(dir, train_tiny(dir / "clean")).code == 0);
    const Run run = run_cli(dir, train_tiny(dir / "nan"), "SEEMOE_INJECT_NAN=3,4");
    INFO(run.out << run.err);
    REQUIRE(run.code == 0);
    CHECK_THAT(run.out, Catch::Contains("step 3 skipped: non-finite gradient (1 in a row, 1 in this run)"));
    CHECK_THAT(run.out, Catch::Contains("step 4 skipped: non-finite gradient (2 in a row, 2 in this run)"));
    std::vector<Index> skipped;
    for (const Json& row : read_metrics(dir / "nan" / "metrics.jsonl"))
        if (row.contains("skipped")) skipped.push_back(row.at("step").as_int());
    CHECK(skipped == std::vector<Index>{3, 4});
    // Steps 1-2 equal the clean run's; skipped steps left the weights alone, so the model is
    // finite (load_model refuses NaN) and differs from the clean one.
    const std::vector<double> clean = losses(dir / "clean" / "metrics.jsonl"), nan = losses(dir / "nan" / "metrics.jsonl");
    REQUIRE(nan.size() == 8);
    CHECK(nan[0] == clean[0]);
    CHECK(nan[1] == clean[1]);
    CHECK_NOTHROW(seemoe::nn::load_model((dir / "nan" / "model.safetensors").string()));

    const Run stop = run_cli(dir, train_tiny(dir / "stop", "--max-bad-steps 3"), "SEEMOE_INJECT_NAN=5,6,7");
    check_error(stop, "training stopped at step 7: 3 steps in a row had a non-finite loss or gradient");
    // The checkpoint of step 4 is the last one, finite and resumable.
    CHECK(seemoe::nn::load_model((dir / "stop" / "model.safetensors").string()).step == 4);
    const Run resumed =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "stop").string()) + " --data " + quote(kTiny));
    INFO(resumed.err);
    CHECK(resumed.code == 0);
    CHECK(losses(dir / "stop" / "metrics.jsonl") == clean);
}

#endif  // SEEMOE_CLI_PATH
