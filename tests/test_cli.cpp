// tests/test_cli.cpp — the `seemoe` program, end to end: the real binary run on the tiny data set.
//
// Each case runs the executable (SEEMOE_CLI_PATH) through std::system with stdout and stderr sent
// to files in its own scratch folder under SEEMOE_BINARY_DIR/cli_tests, then checks exit codes,
// printed text and the files written. Training uses the tiny preset and one thread, so runs take
// a fraction of a second and are bit-for-bit repeatable. Without the example program (configured
// with SEEMOE_BUILD_EXAMPLES=OFF) this file compiles to nothing.
#include <catch2/catch.hpp>

#ifdef SEEMOE_CLI_PATH

#include <seemoe/nn/checkpoint.hpp>
#include <seemoe/io/json.hpp>

#include "cli_run.hpp"

using namespace cli_test;

TEST_CASE("seemoe train, caption and eval run end to end on the tiny data", "[cli]") {
    const fs::path dir = scratch("end_to_end");
    const fs::path run_dir = dir / "run";
    const Run train = run_cli(dir, train_tiny(run_dir));
    INFO(train.out << train.err);
    REQUIRE(train.code == 0);
    CHECK(train.err.empty());
    CHECK_THAT(train.out, Catch::Contains("preset           tiny"));
    CHECK_THAT(train.out, Catch::Contains("val loss"));
    CHECK_THAT(train.out, Catch::Contains("final report"));
    CHECK(fs::exists(run_dir / "model.safetensors"));
    CHECK(fs::exists(run_dir / "training_state.safetensors"));
    CHECK_FALSE(fs::exists(run_dir / "model.safetensors.tmp"));

    // metrics.jsonl: one object per step, val figures at the eval step, then the final report.
    const std::vector<Json> rows = read_metrics(run_dir / "metrics.jsonl");
    REQUIRE(rows.size() == 9);
    for (int i = 0; i < 8; ++i) {
        CHECK(rows[i].at("step").as_int() == i + 1);
        CHECK(rows[i].at("loss").as_double() > 0);
        CHECK(rows[i].at("lr").as_double() > 0);
        CHECK(rows[i].at("tokens_per_s").as_double() > 0);
    }
    CHECK(rows[3].contains("val_loss"));
    CHECK(rows[3].contains("val_exact_match"));
    CHECK_FALSE(rows[2].contains("val_loss"));
    CHECK(rows[0].at("loss").as_double() > rows[7].at("loss").as_double());  // it learns
    CHECK(rows[8].at("final").as_bool());
    for (const char* key : {"val_loss", "val_exact_match", "val_char_accuracy", "test_loss", "test_exact_match",
                            "test_char_accuracy"})
        CHECK(rows[8].contains(key));

    // The checkpoint carries its config and vocabulary and loads into the library.
    const seemoe::nn::LoadedModel loaded = seemoe::nn::load_model((run_dir / "model.safetensors").string());
    CHECK(loaded.config.vision.image_size == 32);
    CHECK(loaded.config.decoder.n_layer == 2);
    CHECK(loaded.metadata.count("vocab") == 1);
    CHECK(loaded.metadata.at("step") == "8");

    // caption: one "IMAGE<TAB>caption" line per image, in order.
    const std::string img0 = kTiny + "/test/00000.png", img1 = kTiny + "/test/00001.png";
    const Run caption = run_cli(dir, "caption --model " + quote(run_dir.string()) + " " + quote(img0) + " " + quote(img1));
    INFO(caption.err);
    REQUIRE(caption.code == 0);
    std::istringstream lines(caption.out);
    std::string line;
    std::vector<std::string> got;
    while (std::getline(lines, line)) got.push_back(line);
    REQUIRE(got.size() == 2);
    CHECK(got[0].rfind(img0 + "\t", 0) == 0);
    CHECK(got[1].rfind(img1 + "\t", 0) == 0);
    // Greedy is the default and repeats; sampling with a seed repeats too.
    CHECK(run_cli(dir, "caption --model " + quote(run_dir.string()) + " " + quote(img0) + " " + quote(img1)).out ==
          caption.out);
    const std::string sample = "caption --model " + quote(run_dir.string()) + " --temperature 1 --top-k 5 --seed 7 " +
                               quote(img0);
    const Run sampled = run_cli(dir, sample);
    CHECK(sampled.code == 0);
    CHECK(run_cli(dir, sample).out == sampled.out);

    // eval: loss, exact match, character accuracy and the routing of every layer.
    const Run eval = run_cli(dir, "eval --model " + quote((run_dir / "model.safetensors").string()) + " --data " +
                                     quote(kTiny) + " --split test");
    INFO(eval.out << eval.err);
    REQUIRE(eval.code == 0);
    CHECK_THAT(eval.out, Catch::Contains("split test (3 captions)"));
    CHECK_THAT(eval.out, Catch::Contains("exact match"));
    CHECK_THAT(eval.out, Catch::Contains("char accuracy"));
    CHECK_THAT(eval.out, Catch::Contains("expert 3"));  // 4 experts: 0..3
    CHECK_THAT(eval.out, Catch::Contains("tokens routed to each expert"));
    std::istringstream eval_lines(eval.out);
    int layer_rows = 0;
    while (std::getline(eval_lines, line))
        if (line.rfind("      0 ", 0) == 0 || line.rfind("      1 ", 0) == 0) ++layer_rows;
    CHECK(layer_rows == 2);
}

TEST_CASE("seemoe train: the same seed twice on one thread gives identical losses", "[cli]") {
    const fs::path dir = scratch("determinism");
    REQUIRE(run_cli(dir, train_tiny(dir / "a")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "b")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "c", "--seed 99")).code == 0);
    const std::vector<double> a = losses(dir / "a" / "metrics.jsonl");
    REQUIRE(a.size() == 8);
    CHECK(losses(dir / "b" / "metrics.jsonl") == a);
    CHECK(losses(dir / "c" / "metrics.jsonl") != a);  // the seed matters
}

TEST_CASE("seemoe train --resume continues a stopped run exactly", "[cli]") {
    const fs::path dir = scratch("resume");
    REQUIRE(run_cli(dir, train_tiny(dir / "full")).code == 0);

    const Run first = run_cli(dir, train_tiny(dir / "split", "--stop-at 3"));
    INFO(first.out << first.err);
    REQUIRE(first.code == 0);
    CHECK_THAT(first.out, Catch::Contains("stopped at step 3 of 8"));
    CHECK(losses(dir / "split" / "metrics.jsonl").size() == 3);

    // The settings come from the checkpoint: --resume and the folder are enough.
    const Run second =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "split").string()) + " --data " + quote(kTiny));
    INFO(second.out << second.err);
    REQUIRE(second.code == 0);
    CHECK_THAT(second.out, Catch::Contains("resuming from step 3"));
    CHECK(losses(dir / "split" / "metrics.jsonl") == losses(dir / "full" / "metrics.jsonl"));

    // Model sizes are fixed by the checkpoint.
    const Run conflict = run_cli(dir, "train --resume --out " + quote((dir / "split").string()) + " --data " +
                                         quote(kTiny) + " --n-embd 64");
    check_error(conflict, "model size flags differ from the checkpoint");

    // Resuming needs a checkpoint; starting over an existing run needs --resume or --force.
    check_error(run_cli(dir, train_tiny(dir / "none", "--resume")), "no checkpoint to resume");
    CHECK_FALSE(fs::exists(dir / "none"));
    check_error(run_cli(dir, train_tiny(dir / "full")), "already holds a training run");
    CHECK(run_cli(dir, train_tiny(dir / "full", "--force")).code == 0);
}

TEST_CASE("seemoe reports bad input in one line, exits 2 and writes nothing", "[cli]") {
    const fs::path dir = scratch("errors");
    const fs::path out = dir / "out";
    auto train_on = [&](const fs::path& data) {
        return "train --preset tiny --steps 2 --data " + quote(data.string()) + " --out " + quote(out.string());
    };

    SECTION("an unknown flag") {
        check_error(run_cli(dir, "train --bogus 3 --out " + quote(out.string())), "unknown flag --bogus");
        check_error(run_cli(dir, "frobnicate"), "unknown command 'frobnicate'");
        check_error(run_cli(dir, "train --steps ten --out " + quote(out.string())), "--steps expects an integer");
    }
    SECTION("a missing data folder") {
        check_error(run_cli(dir, train_on(dir / "no_such_folder")), "does not exist");
    }
    SECTION("an empty data folder") {
        fs::create_directories(dir / "empty");
        check_error(run_cli(dir, train_on(dir / "empty")), "is empty");
    }
    SECTION("a captions.csv without the needed columns") {
        fs::create_directories(dir / "columns");
        std::ofstream(dir / "columns" / "captions.csv") << "file,text\ntrain/00000.png,a red circle\n";
        check_error(run_cli(dir, train_on(dir / "columns")), "no column \"caption\"");
    }
    SECTION("a corrupt image, named with its row") {
        fs::copy(kTiny, dir / "corrupt", fs::copy_options::recursive);
        std::ofstream(dir / "corrupt" / "train" / "00003.png", std::ios::trunc) << "not a png";
        const Run run = run_cli(dir, train_on(dir / "corrupt"));
        check_error(run, "train/00003.png");
        CHECK_THAT(run.err, Catch::Contains("row 4"));
    }
    SECTION("a missing or corrupt checkpoint") {
        const std::string image = quote(kTiny + "/test/00000.png");
        Run run = run_cli(dir, "caption --model " + quote((dir / "missing.safetensors").string()) + " " + image);
        check_error(run, "does not exist");
        CHECK(run.out.empty());
        std::ofstream(dir / "corrupt.safetensors") << "this is not a checkpoint";
        run = run_cli(dir, "eval --data " + quote(kTiny) + " --model " + quote((dir / "corrupt.safetensors").string()));
        check_error(run, "safetensors");
        CHECK(run.out.empty());
    }
    SECTION("eval on captions with characters the checkpoint's vocabulary lacks") {
        REQUIRE(run_cli(dir, train_tiny(dir / "model", "--steps 2")).code == 0);
        fs::copy(kTiny, dir / "other", fs::copy_options::recursive);
        replace_in_file(dir / "other" / "captions.csv", "a large orange star at the bottom right",
                        "a large orange QUASAR at the bottom right");
        const Run run =
            run_cli(dir, "eval --model " + quote((dir / "model").string()) + " --data " + quote((dir / "other").string()));
        check_error(run, "'Q'");
        CHECK_THAT(run.err, Catch::Contains("not in the vocabulary"));
        CHECK(run.out.empty());
    }
    CHECK_FALSE(fs::exists(out));
}

TEST_CASE("seemoe --help and <command> --help print usage and exit 0", "[cli]") {
    const fs::path dir = scratch("help");
    for (const char* args : {"--help", "train --help", "caption --help", "eval --help"}) {
        const Run run = run_cli(dir, args);
        INFO(args);
        CHECK(run.code == 0);
        CHECK_THAT(run.out, Catch::Contains("usage: seemoe"));
        CHECK(run.err.empty());
    }
    CHECK_THAT(run_cli(dir, "train --help").out, Catch::Contains("data/shapes, relative to the current directory"));
}

#endif  // SEEMOE_CLI_PATH

TEST_CASE("cli: a checkpoint from before the layout change captions as it did then", "[cli]") {
    // tests/data/checkpoint_before_issue14 was written by the seemoe of commit 1c4f6c6, which
    // captioned tests/data/tiny/test/00000.png greedily as the stored text.
    const fs::path dir = scratch("old_checkpoint");
    const std::string old_dir = SEEMOE_SOURCE_DIR "/tests/data/checkpoint_before_issue14";
    const std::string image = kTiny + "/test/00000.png";
    const Run caption = run_cli(dir, "caption --threads 1 --model " + quote(old_dir) + " " + quote(image));
    INFO(caption.err);
    REQUIRE(caption.code == 0);
    CHECK(caption.out == image + "\t" + read_text(old_dir + "/expected_caption_test_00000.txt"));
}
