// tests/test_cli_fashion.cpp — the Fashion-MNIST walkthrough (README "Train on real images"), end
// to end on 100 pictures: seemoe_fashion_mnist converts Debian's dataset-fashion-mnist
// (/usr/share/datasets/fashion-mnist) into a captions folder, `seemoe train --preset fashion`
// trains a few steps on it with the preset's whole recipe (augmentation, label smoothing, the
// best checkpoint) and `seemoe eval` scores the result. Without the data set installed the
// pipeline case says so and checks nothing else; the converter's error cases run either way.
#include <catch2/catch.hpp>

#if defined(SEEMOE_CLI_PATH) && defined(SEEMOE_FASHION_PATH)

#include <cstdio>
#include <set>
#include <string>

#include "cli_run.hpp"

using namespace cli_test;

namespace {

const std::string kFashionSource = "/usr/share/datasets/fashion-mnist";

// Runs the converter with `args` in `dir`, output captured like run_cli.
Run convert(const fs::path& dir, const std::string& args) {
    const fs::path out = dir / "convert_out.txt", err = dir / "convert_err.txt";
    const std::string command =
        quote(SEEMOE_FASHION_PATH) + " " + args + " > " + quote(out.string()) + " 2> " + quote(err.string());
    const int status = std::system(command.c_str());
    Run run;
    run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    run.out = read_text(out);
    run.err = read_text(err);
    return run;
}

}  // namespace

TEST_CASE("fashion: convert 100 pictures, train the fashion preset a few steps, evaluate", "[cli]") {
    std::error_code ec;
    if (!fs::exists(fs::path(kFashionSource) / "train-labels-idx1-ubyte.gz", ec) &&
        !fs::exists(fs::path(kFashionSource) / "train-labels-idx1-ubyte", ec)) {
        WARN("SKIPPED: Fashion-MNIST is not installed in " + kFashionSource +
             " (apt-get install dataset-fashion-mnist); the fashion pipeline was not tested");
        return;
    }
    const fs::path dir = scratch("fashion");
    const fs::path data = dir / "images", run_dir = dir / "run";
    const Run converted = convert(dir, "--out " + quote(data.string()) + " --train 80 --val 10 --test 10");
    INFO(converted.out << converted.err);
    REQUIRE(converted.code == 0);
    CHECK_THAT(converted.out, Catch::Contains("wrote 100 images (80 train, 10 val, 10 test)"));
    const std::string csv = read_text(data / "captions.csv");
    CHECK(csv.rfind("image,caption,split\ntrain/00000.png,ankle boot,train\ntrain/00001.png,t-shirt,train\n", 0) == 0);
    CHECK(fs::exists(data / "val" / "00009.png"));
    CHECK(fs::exists(data / "test" / "00009.png"));
    // A second conversion into the same folder is refused unless --force.
    CHECK(convert(dir, "--out " + quote(data.string()) + " --train 1 --val 0 --test 0").code == 2);

    const Run train = run_cli(dir, "train --preset fashion --data " + quote(data.string()) + " --out " +
                                       quote(run_dir.string()) + " --threads 1 --steps 6 --eval-every 3 --batch 16");
    INFO(train.out << train.err);
    REQUIRE(train.code == 0);
    CHECK_THAT(train.out, Catch::Contains("samples          80 train, 10 val, 10 test"));
    CHECK_THAT(train.out, Catch::Contains("visual_tokens cls"));
    CHECK_THAT(train.out, Catch::Contains("label_smoothing  0.1"));
    CHECK_THAT(train.out, Catch::Contains("flip             horizontal"));
    CHECK_THAT(train.out, Catch::Contains("final report"));
    CHECK(fs::exists(run_dir / "model.safetensors"));
    CHECK(fs::exists(run_dir / "best.safetensors"));
    const std::vector<Json> rows = read_metrics(run_dir / "metrics.jsonl");
    REQUIRE(rows.size() == 7);
    CHECK(rows[2].contains("val_exact_match"));
    CHECK(rows[6].at("test_samples").as_int() == 10);
    CHECK(rows[6].at("val_samples").as_int() == 10);

    const Run eval = run_cli(dir, "eval --model " + quote((run_dir / "best.safetensors").string()) + " --data " +
                                      quote(data.string()) + " --split test");
    INFO(eval.out << eval.err);
    REQUIRE(eval.code == 0);
    CHECK_THAT(eval.out, Catch::Contains("split test (10 captions)"));
    CHECK_THAT(eval.out, Catch::Contains("per-word accuracy"));
}

TEST_CASE("fashion converter: bad flags and a missing data set are one line, exit 2", "[cli]") {
    const fs::path dir = scratch("fashion_errors");
    const Run missing = convert(dir, "--src " + quote((dir / "nowhere").string()) + " --out " + quote((dir / "o").string()));
    CHECK(missing.code == 2);
    CHECK_THAT(missing.err, Catch::Contains("train-images-idx3-ubyte") && Catch::Contains("dataset-fashion-mnist"));
    CHECK_FALSE(fs::exists(dir / "o"));
    const Run too_many = convert(dir, "--train 59000 --val 2000 --out " + quote((dir / "o").string()));
    CHECK(too_many.code == 2);
    CHECK_THAT(too_many.err, Catch::Contains("--train + --val"));
    const Run bad_number = convert(dir, "--test ten");
    CHECK(bad_number.code == 2);
    CHECK_THAT(bad_number.err, Catch::Contains("--test expects a whole number"));
    // A file that is not gzip data is named.
    fs::create_directories(dir / "src");
    std::ofstream(dir / "src" / "train-images-idx3-ubyte.gz") << "not gzip";
    const Run corrupt = convert(dir, "--src " + quote((dir / "src").string()) + " --out " + quote((dir / "o").string()));
    CHECK(corrupt.code == 2);
    CHECK_THAT(corrupt.err, Catch::Contains("train-images-idx3-ubyte.gz") && Catch::Contains("gzip"));
    for (const std::string& err : {missing.err, too_many.err, bad_number.err, corrupt.err})
        CHECK(std::count(err.begin(), err.end(), '\n') == 1);
}

#endif
