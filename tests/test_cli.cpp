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

#include <cmath>
#include <cstdio>

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
    CHECK(fs::exists(run_dir / "checkpoints"));
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
    for (const char* args : {"--help", "train --help", "caption --help", "generate --help", "eval --help"}) {
        const Run run = run_cli(dir, args);
        INFO(args);
        CHECK(run.code == 0);
        CHECK_THAT(run.out, Catch::Contains("usage: seemoe"));
        CHECK(run.err.empty());
    }
    CHECK_THAT(run_cli(dir, "train --help").out, Catch::Contains("data/shapes, relative to the current directory"));
}

// ---- text-only mode ------------------------------------------------------------------------------

namespace {

// The first 3,926 characters of tiny Shakespeare (public domain): 52 distinct characters.
const std::string kTinyText = SEEMOE_SOURCE_DIR "/tests/data/tiny_text.txt";

// A small makemoe-style text model: seconds on one thread.
std::string train_text(const fs::path& out, const std::string& extra = "") {
    return "train --text " + quote(kTinyText) + " --out " + quote(out.string()) +
           " --threads 1 --steps 12 --batch 4 --n-embd 32 --n-layer 2 --heads 2 --experts 4 --block-size 16"
           " --eval-every 6 --eval-batches 2 --log-every 4 " +
           extra;
}

std::string metadata_format(const fs::path& model) {
    return seemoe::io::load_safetensors<float>(model.string()).metadata.at("format");
}

}  // namespace

TEST_CASE("seemoe train --text, generate and eval run end to end on a small text", "[cli]") {
    const fs::path dir = scratch("text_end_to_end");
    const fs::path run_dir = dir / "run";
    const Run train = run_cli(dir, train_text(run_dir));
    INFO(train.out << train.err);
    REQUIRE(train.code == 0);
    CHECK(train.err.empty());
    CHECK_THAT(train.out, Catch::Contains("preset           makemoe"));
    CHECK_THAT(train.out, Catch::Contains("3533 train, 393 val (the last 10%), vocabulary of 52"));
    CHECK_THAT(train.out, Catch::Contains("step 6 | val loss"));
    CHECK_THAT(train.out, Catch::Contains("bits per character"));
    CHECK_THAT(train.out, Catch::Contains("final report"));
    CHECK_THAT(train.out, Catch::Contains("sample (seemoe generate"));
    CHECK(metadata_format(run_dir / "model.safetensors") == seemoe::nn::kTextModelFormat);
    CHECK(fs::exists(run_dir / "checkpoints"));

    // metrics.jsonl: a row per step, val figures every 6 steps, then the final report.
    const std::vector<Json> rows = read_metrics(run_dir / "metrics.jsonl");
    REQUIRE(rows.size() == 13);
    for (int i = 0; i < 12; ++i) {
        CHECK(rows[i].at("step").as_int() == i + 1);
        CHECK(rows[i].at("loss").as_double() > 0);
        CHECK(rows[i].at("tokens_per_s").as_double() > 0);
        CHECK(rows[i].contains("val_loss") == ((i + 1) % 6 == 0));
    }
    const double val_loss = rows[5].at("val_loss").as_double();
    CHECK(rows[5].at("val_bpc").as_double() == Approx(val_loss / std::log(2.0)));
    CHECK(rows[0].at("loss").as_double() == Approx(std::log(55.0)).margin(0.3));  // 52 characters + 3 specials
    const Json& final_row = rows[12];
    CHECK(final_row.at("final").as_bool());
    CHECK(final_row.at("val_characters").as_int() == 392);
    CHECK(final_row.at("val_loss_estimate").as_double() == rows[11].at("val_loss").as_double());

    // eval scores the file the model was trained on (named in the checkpoint) the same way.
    const Run eval = run_cli(dir, "eval --threads 1 --model " + quote(run_dir.string()));
    INFO(eval.out << eval.err);
    REQUIRE(eval.code == 0);
    char expected[64];
    std::snprintf(expected, sizeof expected, "val loss         %.4f per character (392 predicted)",
                  final_row.at("val_loss").as_double());
    CHECK_THAT(eval.out, Catch::Contains(expected));
    CHECK_THAT(eval.out, Catch::Contains("bits per char"));
    CHECK_THAT(eval.out, Catch::Contains("tokens routed to each expert"));

    // generate: the prompt, then exactly --tokens characters; a seed repeats its text.
    const std::string gen = "generate --threads 1 --model " + quote(run_dir.string()) + " --prompt 'First' --tokens 40";
    const Run a = run_cli(dir, gen + " --seed 3"), b = run_cli(dir, gen + " --seed 3"), c = run_cli(dir, gen + " --seed 4");
    INFO(a.out << a.err);
    REQUIRE(a.code == 0);
    CHECK(a.err.empty());
    CHECK(a.out.rfind("First", 0) == 0);
    CHECK(a.out.size() == 5 + 40 + 1);  // the tiny text is ASCII: one byte per character
    CHECK(a.out.back() == '\n');
    CHECK(b.out == a.out);
    CHECK(c.out != a.out);
    const Run greedy = run_cli(dir, gen + " --temperature 0");
    REQUIRE(greedy.code == 0);
    CHECK(greedy.out == run_cli(dir, gen + " --temperature 0 --seed 9").out);  // greedy draws nothing
    const Run no_prompt = run_cli(dir, "generate --threads 1 --model " + quote(run_dir.string()) + " --tokens 7");
    REQUIRE(no_prompt.code == 0);
    CHECK(no_prompt.out.size() == 7 + 1);
}

TEST_CASE("seemoe train --text --resume continues a stopped run exactly", "[cli]") {
    const fs::path dir = scratch("text_resume");
    REQUIRE(run_cli(dir, train_text(dir / "full")).code == 0);
    const Run first = run_cli(dir, train_text(dir / "split", "--stop-at 5"));
    INFO(first.out << first.err);
    REQUIRE(first.code == 0);
    CHECK_THAT(first.out, Catch::Contains("stopped at step 5 of 12"));
    // The checkpoint says it is a text run: --resume and the folder are enough.
    const Run second = run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "split").string()));
    INFO(second.out << second.err);
    REQUIRE(second.code == 0);
    CHECK_THAT(second.out, Catch::Contains("resuming from step 5"));
    const std::vector<double> full = losses(dir / "full" / "metrics.jsonl");
    REQUIRE(full.size() == 12);
    CHECK(losses(dir / "split" / "metrics.jsonl") == full);
    CHECK(read_text(dir / "split" / "model.safetensors") == read_text(dir / "full" / "model.safetensors"));
    check_error(run_cli(dir, "train --resume --out " + quote((dir / "split").string()) + " --n-embd 64"),
                "model size flags differ from the checkpoint");
}

TEST_CASE("seemoe refuses a text model for caption and an image model for generate", "[cli]") {
    const fs::path dir = scratch("text_refusals");
    REQUIRE(run_cli(dir, train_text(dir / "text", "--steps 2")).code == 0);
    const std::string text_model = quote((dir / "text").string());
    const std::string image_model = quote(SEEMOE_SOURCE_DIR "/tests/data/checkpoint_before_issue14");

    Run run = run_cli(dir, "caption --model " + text_model + " " + quote(kTiny + "/test/00000.png"));
    check_error(run, "holds a text-only character language model");
    CHECK_THAT(run.err, Catch::Contains("seemoe generate --model"));
    CHECK(run.out.empty());

    run = run_cli(dir, "generate --model " + image_model);
    check_error(run, "holds a vision-language model (it captions images), not a text-only model");
    CHECK_THAT(run.err, Catch::Contains("seemoe caption --model"));
    CHECK(run.out.empty());

    check_error(run_cli(dir, "eval --model " + image_model + " --text " + quote(kTinyText)),
                "--text applies to text models");
    check_error(run_cli(dir, "eval --model " + text_model + " --split test"), "--split applies to image models");
}

TEST_CASE("seemoe train --text and generate report bad input in one line, exit 2, write nothing", "[cli]") {
    const fs::path dir = scratch("text_errors");
    const fs::path out = dir / "out";
    auto train_on = [&](const fs::path& text, const std::string& extra = "") {
        return "train --text " + quote(text.string()) + " --steps 2 --out " + quote(out.string()) + " " + extra;
    };
    auto write = [&](const std::string& name, const std::string& bytes) {
        std::ofstream(dir / name, std::ios::binary) << bytes;
        return dir / name;
    };

    SECTION("a missing file, an empty file, a folder") {
        check_error(run_cli(dir, train_on(dir / "no_such.txt")), "does not exist");
        check_error(run_cli(dir, train_on(write("empty.txt", ""))), "'" + (dir / "empty.txt").string() + "' is empty");
        check_error(run_cli(dir, train_on(dir)), "is not a regular file");
    }
    SECTION("a file shorter than one window in its val part") {
        const Run run = run_cli(dir, train_on(write("short.txt", std::string(200, 'a') + "\n")));
        check_error(run, "has 201 characters: its val part (21 characters) is shorter than one window of 33");
        CHECK_THAT(run.err, Catch::Contains("or a smaller block_size; --block-size sets block_size"));
    }
    SECTION("invalid UTF-8, named with its line") {
        const Run run = run_cli(dir, train_on(write("latin1.txt", "caf\xE9 au lait\n" + std::string(400, 'x'))));
        check_error(run, "is not valid UTF-8: byte 0xE9 at line 1, column 4 (byte 3)");
        CHECK_THAT(run.err, Catch::Contains("convert it, e.g. with iconv)\n"));  // the advice once, no hint after it
    }
    SECTION("presets and flags of the other kind of run") {
        check_error(run_cli(dir, "train --preset makemoe --out " + quote(out.string())), "needs --text FILE");
        check_error(run_cli(dir, train_on(kTinyText, "--preset demo")), "sizes an image model");
        check_error(run_cli(dir, train_on(kTinyText, "--patch 4")), "--patch sizes the image encoder");
        check_error(run_cli(dir, train_on(kTinyText, "--eval-samples 3")), "--eval-samples applies to image runs");
        check_error(run_cli(dir, "train --preset tiny --eval-batches 3 --out " + quote(out.string())),
                    "--eval-batches applies to text runs");
    }
    SECTION("a prompt with characters the model does not know") {
        REQUIRE(run_cli(dir, train_text(dir / "model", "--steps 2")).code == 0);
        const std::string model = quote((dir / "model").string());
        Run run = run_cli(dir, "generate --model " + model + " --prompt 'First Zebra'");
        check_error(run, "--prompt: character 'Z' (U+005A) at byte 6 is not in the model's vocabulary of 52 characters");
        CHECK(run.out.empty());
        run = run_cli(dir, "generate --model " + model + " --prompt \"$(printf 'tab\\there')\"");
        check_error(run, "character (U+0009) at byte 3");
        run = run_cli(dir, "generate --model " + model + " --tokens 0");
        check_error(run, "--tokens must be at least 1");
        // eval on another text with a character outside the vocabulary names its line.
        run = run_cli(dir, "eval --model " + model + " --text " +
                               quote(write("other.txt", std::string(400, 'a') + "\nZ\n").string()));
        check_error(run, "character 'Z' (U+005A) at line 2, column 1");
        CHECK(run.out.empty());
    }
    CHECK_FALSE(fs::exists(out));
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
