// tests/test_cli_reliability.cpp — the `seemoe` program given what a user should not give it:
// FIFOs, directories and devices where files belong, image paths leading out of the data folder,
// bad model sizes, corrupt checkpoints and training states, and NaN gradients (injected through
// SEEMOE_INJECT_NAN). Each must end in one line naming the file and the field or row, exit code
// 2, no "internal error", no signal and no hang (every run that could hang runs under timeout).
#include <catch2/catch.hpp>

#ifdef SEEMOE_CLI_PATH

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <limits>
#include <map>
#include <thread>

#include <seemoe/io/checkpoint_folder.hpp>
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

// Starts `seemoe <args>` as a child process, stdout and stderr into out_file / err_file, with the
// file-size limit `fsize` (bytes) when given. Returns its pid.
pid_t spawn(const std::vector<std::string>& args, const fs::path& out_file, const fs::path& err_file,
            rlim_t fsize = RLIM_INFINITY) {
    std::vector<std::string> argv_strings = {SEEMOE_CLI_PATH};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (std::string& a : argv_strings) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {  // the child: only async-signal-safe calls until exec
        const int out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ::dup2(out, 1);
        ::dup2(err, 2);
        if (fsize != RLIM_INFINITY) {
            const struct rlimit limit = {fsize, fsize};
            ::setrlimit(RLIMIT_FSIZE, &limit);
        }
        ::execv(argv[0], argv.data());
        ::_exit(127);
    }
    return pid;
}

// Waits up to `ms` milliseconds for `pid`: its wait status, or -1 if it is still running.
int wait_for(pid_t pid, double ms) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double, std::milli>(ms);
    for (;;) {
        int status = 0;
        if (::waitpid(pid, &status, WNOHANG) == pid) return status;
        if (std::chrono::steady_clock::now() >= deadline) return -1;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
}

std::vector<std::string> tiny_args(const fs::path& out, Index steps, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"train", "--preset", "tiny", "--data", kTiny, "--out", out.string(), "--threads",
                                     "1", "--steps", std::to_string(steps), "--save-every", "1", "--eval-every",
                                     "1000"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

// Every file under `dir` whose name ends in ".tmp".
std::vector<std::string> temporaries(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& entry : fs::recursive_directory_iterator(dir)) {
        const std::string name = entry.path().filename().string();
        if (name.size() >= 4 && name.compare(name.size() - 4, 4, ".tmp") == 0) out.push_back(entry.path().string());
    }
    return out;
}

std::string step_dir(Index step) { return seemoe::io::CheckpointFolder::step_name(step); }

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
    check_error(run_cli(dir, train + "--visual-tokens average"), "--visual-tokens");
    check_error(run_cli(dir, train + "--word-dropout 1"), "--word-dropout");
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
        // The model through its stable name; the training state inside the step folder.
        const bool model_file = std::string(c.file) == "model.safetensors";
        const fs::path path = model_file ? dir / "copy" / c.file : dir / "copy" / "checkpoints" / "step-00000002" / c.file;
        edit_metadata(path, c.key, c.from, c.to);
        const Run run = model_file ? run_cli(dir, "caption --model " + quote((dir / "copy").string()) + " " + image)
                                   : run_cli(dir, "train --resume --out " + quote((dir / "copy").string()) + " --data " +
                                                      quote(kTiny));
        check_error(run, c.expected);
        CHECK_THAT(run.err, Catch::Contains(path.string()));
    }
}

TEST_CASE("cli: non-finite gradients are skipped and counted, too many in a row stop the run", "[cli][reliability]") {
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

TEST_CASE("cli: a run killed at 20+ random moments resumes every time and ends byte-identical", "[cli][reliability]") {
    const fs::path dir = scratch("kill");
    const Index steps = 30;
    // The uninterrupted run, timed to place the kills inside a run's lifetime.
    const auto start = std::chrono::steady_clock::now();
    const pid_t reference = spawn(tiny_args(dir / "full", steps), dir / "full.out", dir / "full.err");
    const int reference_status = wait_for(reference, 600000);
    const double run_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    INFO(read_text(dir / "full.err"));
    REQUIRE((WIFEXITED(reference_status) && WEXITSTATUS(reference_status) == 0));

    const fs::path out = dir / "killed";
    seemoe::Rng rng(2024);
    int kills = 0, restarts = 0, resumed = 0;
    for (bool done = false; !done;) {
        const bool has_checkpoint = !seemoe::io::CheckpointFolder(out).steps().empty();
        std::vector<std::string> extra = {has_checkpoint ? "--resume" : "--force"};
        // Kill moments uniform over one run's length; after 20 kills the run may finish.
        const double delay = kills < 20 ? rng.uniform() * run_ms : 600000;
        const pid_t pid = spawn(tiny_args(out, steps, extra), dir / "attempt.out", dir / "attempt.err");
        ++restarts;
        const int status = wait_for(pid, delay);
        const std::string printed = read_text(dir / "attempt.out"), errors = read_text(dir / "attempt.err");
        INFO("attempt " << restarts << " after " << kills << " kills\nstdout: " << printed << "\nstderr: " << errors);
        if (status == -1) {
            REQUIRE(::kill(pid, SIGKILL) == 0);
            REQUIRE(::waitpid(pid, nullptr, 0) == pid);
            ++kills;
        } else {
            REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));
            done = kills >= 20;  // finished before enough kills: start over
        }
        CHECK(errors.empty());  // no restart was refused
        if (has_checkpoint && !printed.empty()) {
            CHECK_THAT(printed, Catch::Contains("resuming from step"));
            ++resumed;
        }
        if (!done && status != -1) fs::remove_all(out);
    }
    CHECK(kills >= 20);
    CHECK(resumed >= 1);
    UNSCOPED_INFO(kills << " kills, " << restarts << " starts, " << resumed << " printed 'resuming'");
    for (const std::string file : {"model.safetensors", "training_state.safetensors"})
        CHECK(read_text(out / "checkpoints" / step_dir(steps) / file) ==
              read_text(dir / "full" / "checkpoints" / step_dir(steps) / file));
    CHECK(read_text(out / "model.safetensors") == read_text(dir / "full" / "model.safetensors"));
    CHECK(losses(out / "metrics.jsonl") == losses(dir / "full" / "metrics.jsonl"));
    CHECK(temporaries(out).empty());
}

TEST_CASE("cli: a checkpoint write over the file-size limit fails cleanly, the previous checkpoint resumes",
          "[cli][reliability]") {
    const fs::path dir = scratch("fsize");
    const pid_t reference = spawn(tiny_args(dir / "full", 4), dir / "ref.out", dir / "ref.err");
    REQUIRE(wait_for(reference, 600000) == 0);
    const pid_t first = spawn(tiny_args(dir / "run", 4, {"--stop-at", "2"}), dir / "a.out", dir / "a.err");
    REQUIRE(wait_for(first, 600000) == 0);

    // 16 KiB: room for metrics.jsonl, not for a model file (the tiny model is larger).
    REQUIRE(fs::file_size(dir / "run" / "model.safetensors") > 16384);
    const pid_t limited = spawn(tiny_args(dir / "run", 4, {"--resume"}), dir / "b.out", dir / "b.err", 16384);
    const int status = wait_for(limited, 600000);
    const std::string err = read_text(dir / "b.err");
    INFO(err);
    REQUIRE(WIFEXITED(status));  // not killed by SIGXFSZ
    CHECK(WEXITSTATUS(status) == 2);
    CHECK_THAT(err, Catch::StartsWith("seemoe: error: ") && Catch::Contains("File too large") &&
                        Catch::Contains("earlier checkpoints are untouched"));
    CHECK(count_lines(err) == 1);
    CHECK(temporaries(dir / "run").empty());
    CHECK(seemoe::io::CheckpointFolder(dir / "run").steps().front().step == 2);

    const pid_t resumed = spawn(tiny_args(dir / "run", 4, {"--resume"}), dir / "c.out", dir / "c.err");
    REQUIRE(wait_for(resumed, 600000) == 0);
    CHECK_THAT(read_text(dir / "c.out"), Catch::Contains("resuming from step 2"));
    CHECK(read_text(dir / "run" / "model.safetensors") == read_text(dir / "full" / "model.safetensors"));
}

TEST_CASE("cli: --resume falls back past an unusable newest checkpoint, with none left it refuses naming the file",
          "[cli][reliability]") {
    const fs::path dir = scratch("fallback");
    REQUIRE(run_cli(dir, train_tiny(dir / "full", "--save-every 1")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--save-every 1 --stop-at 5")).code == 0);
    CHECK(seemoe::io::CheckpointFolder(dir / "run").steps().size() == 3);  // --keep-checkpoints 3
    const fs::path newest = dir / "run" / "checkpoints" / step_dir(5) / "model.safetensors";
    fs::resize_file(newest, fs::file_size(newest) / 2);
    const Run run =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "run").string()) + " --data " + quote(kTiny));
    INFO(run.out << run.err);
    REQUIRE(run.code == 0);
    CHECK_THAT(run.out, Catch::Contains(step_dir(5) + " cannot be used") && Catch::Contains("truncated"));
    CHECK_THAT(run.out, Catch::Contains("resuming from step 4"));
    CHECK(read_text(dir / "run" / "model.safetensors") == read_text(dir / "full" / "model.safetensors"));

    // One checkpoint only (--keep-checkpoints 1), damaged in five ways: each refused naming the file.
    struct Damage {
        const char* name;
        const char* file;
        void (*apply)(const fs::path& step_folder, const fs::path& file);
        const char* expected;
    };
    const std::vector<Damage> damages = {
        {"truncated model", "model.safetensors",
         [](const fs::path&, const fs::path& f) { fs::resize_file(f, fs::file_size(f) - 100); }, "truncated"},
        {"truncated state", "training_state.safetensors",
         [](const fs::path&, const fs::path& f) { fs::resize_file(f, 40); }, "training_state.safetensors"},
        {"missing state", "training_state.safetensors", [](const fs::path&, const fs::path& f) { fs::remove(f); },
         "cannot open"},
        {"garbage model", "model.safetensors",
         [](const fs::path&, const fs::path& f) { std::ofstream(f, std::ios::trunc) << "garbage garbage garbage"; },
         "safetensors"},
        {"state a directory", "training_state.safetensors",
         [](const fs::path&, const fs::path& f) {
             fs::remove(f);
             fs::create_directory(f);
         },
         "is a directory"},
    };
    for (const Damage& d : damages) {
        INFO(d.name);
        const fs::path run_dir = dir / "single";
        fs::remove_all(run_dir);
        REQUIRE(run_cli(dir, train_tiny(run_dir, "--save-every 1 --stop-at 2 --keep-checkpoints 1")).code == 0);
        REQUIRE(seemoe::io::CheckpointFolder(run_dir).steps().size() == 1);
        const fs::path folder = run_dir / "checkpoints" / step_dir(2);
        d.apply(folder, folder / d.file);
        const Run refused = run_cli(dir, "train --resume --out " + quote(run_dir.string()) + " --data " + quote(kTiny),
                                    kTimeout);
        check_error(refused, d.expected);
        CHECK_THAT(refused.err, Catch::Contains((folder / d.file).string()));
    }
}

TEST_CASE("cli: a run saved in the side-by-side layout of before still resumes", "[cli][reliability]") {
    const fs::path dir = scratch("old_layout");
    REQUIRE(run_cli(dir, train_tiny(dir / "full")).code == 0);
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--stop-at 3")).code == 0);
    // Rebuild the layout of a run saved before checkpoint folders: the two files side by side.
    const fs::path folder = dir / "run" / "checkpoints" / step_dir(3);
    fs::remove(dir / "run" / "model.safetensors");
    fs::copy_file(folder / "model.safetensors", dir / "run" / "model.safetensors");
    fs::copy_file(folder / "training_state.safetensors", dir / "run" / "training_state.safetensors");
    fs::remove_all(dir / "run" / "checkpoints");
    const Run run =
        run_cli(dir, "train --resume --threads 1 --out " + quote((dir / "run").string()) + " --data " + quote(kTiny));
    INFO(run.out << run.err);
    REQUIRE(run.code == 0);
    CHECK_THAT(run.out, Catch::Contains("resuming from step 3"));
    CHECK(losses(dir / "run" / "metrics.jsonl") == losses(dir / "full" / "metrics.jsonl"));
    CHECK_FALSE(fs::exists(dir / "run" / "training_state.safetensors"));  // replaced by the folders
}

namespace {

// A safetensors file taken apart at the byte level, so that a variant can break what
// save_safetensors would never write: the 8-byte header length, the JSON header, the data.
struct RawSafetensors {
    Json header;
    std::string data;

    static RawSafetensors read(const fs::path& path) {
        const std::string bytes = read_text(path);
        REQUIRE(bytes.size() >= 8);
        std::uint64_t n = 0;
        for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(bytes[static_cast<std::size_t>(i)]);
        REQUIRE(8 + n <= bytes.size());
        return {Json::parse(bytes.substr(8, n)), bytes.substr(8 + n)};
    }
    // Writes the header (its length first, little-endian) and the data.
    void write(const fs::path& path) const { write_with_length(path, header.dump(), header.dump().size()); }
    void write_with_length(const fs::path& path, const std::string& text, std::uint64_t length) const {
        std::string bytes(8, '\0');
        for (int i = 0; i < 8; ++i) bytes[static_cast<std::size_t>(i)] = static_cast<char>((length >> (8 * i)) & 0xFF);
        std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes << text << data;
    }
    // The first tensor entry (not __metadata__).
    Json& first_tensor() {
        for (auto& [name, value] : header.as_object())
            if (name != "__metadata__") return value;
        FAIL("no tensor");
        return header;
    }
    std::string first_tensor_name() const {
        for (const auto& [name, value] : header.as_object())
            if (name != "__metadata__") return name;
        return "";
    }
    Json& metadata() { return header.as_object().front().first == "__metadata__" ? header.as_object().front().second
                                                                                  : header["__metadata__"]; }
    // Replaces `from` with `to` in metadata entry `key` (a JSON string held as text).
    void edit_metadata(const std::string& key, const std::string& from, const std::string& to) {
        std::string text = metadata().at(key).as_string();
        const std::size_t at = text.find(from);
        REQUIRE(at != std::string::npos);
        text.replace(at, from.size(), to);
        metadata()[key] = Json(text);
    }
    // Writes the float `value` over element `index` of tensor `name`.
    void set_float(const std::string& name, std::size_t index, float value) {
        const std::size_t begin = static_cast<std::size_t>(header.at(name).at("data_offsets").at(0).as_int());
        std::memcpy(&data[begin + 4 * index], &value, 4);
    }
};

// The 8-byte little-endian header length at the start of a safetensors file, read and written.
std::uint64_t length_of(const std::string& b) {
    std::uint64_t n = 0;
    for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(b[static_cast<std::size_t>(i)]);
    return n;
}
void set_length(std::string& b, std::uint64_t n) {
    for (int i = 0; i < 8; ++i) b[static_cast<std::size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xFF);
}

// Every file under `dir` with its size: what "nothing written" compares.
std::map<std::string, std::uintmax_t> listing(const fs::path& dir) {
    std::map<std::string, std::uintmax_t> out;
    for (const auto& entry : fs::recursive_directory_iterator(dir))
        out[entry.path().string()] = entry.is_regular_file() ? entry.file_size() : 0;
    return out;
}

}  // namespace

TEST_CASE("cli: 30+ corrupted checkpoints and training states are each refused naming the file, writing nothing",
          "[cli][reliability]") {
    const fs::path dir = scratch("corrupted");
    // One checkpoint only, so --resume has nothing to fall back on and must refuse.
    REQUIRE(run_cli(dir, train_tiny(dir / "run", "--steps 2 --save-every 1 --keep-checkpoints 1")).code == 0);
    const std::string image = quote(kTiny + "/test/00000.png");
    using Edit = std::function<void(const fs::path&)>;
    auto raw = [](std::function<void(RawSafetensors&)> change) -> Edit {
        return [change](const fs::path& path) {
            RawSafetensors file = RawSafetensors::read(path);
            change(file);
            file.write(path);
        };
    };
    auto bytes = [](std::function<void(std::string&)> change) -> Edit {
        return [change](const fs::path& path) {
            std::string b = read_text(path);
            change(b);
            std::ofstream(path, std::ios::binary | std::ios::trunc) << b;
        };
    };
    static const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
    struct Variant {
        const char* name;
        bool state;  // the training state (read by --resume) rather than the model (read by caption)
        Edit edit;
        const char* expected;
    };
    const std::vector<Variant> variants = {
        // The container: length field, header, data section.
        {"empty file", false, bytes([](std::string& b) { b.clear(); }), "file too short"},
        {"7 bytes", false, bytes([](std::string& b) { b.resize(7); }), "file too short"},
        {"cut inside the header", false, bytes([](std::string& b) { b.resize(200); }), "runs past the end"},
        {"cut inside the data", false, bytes([](std::string& b) { b.resize(b.size() - 100); }), "past the end"},
        {"one byte appended", false, bytes([](std::string& b) { b += 'x'; }), "belong to no tensor"},
        {"header length 0", false, bytes([](std::string& b) { std::fill(b.begin(), b.begin() + 8, '\0'); }),
         "does not start with '{'"},
        {"header length 2^63", false, bytes([](std::string& b) { b[7] = static_cast<char>(0x80); }), "runs past the end"},
        {"header length 9 short", false, bytes([](std::string& b) { set_length(b, length_of(b) - 9); }),
         "not valid JSON"},
        {"header not JSON", false, bytes([](std::string& b) { b[8] = '['; }), "does not start with '{'"},
        {"header JSON cut", false, bytes([](std::string& b) { b[9] = '}'; }), "not valid JSON"},
        {"dtype unknown", false, raw([](RawSafetensors& f) { f.first_tensor()["dtype"] = Json("F99"); }),
         "unknown dtype"},
        {"dtype F64 for F32 data", false, raw([](RawSafetensors& f) { f.first_tensor()["dtype"] = Json("F64"); }),
         "need"},
        {"dtype F16 for F32 data", false, raw([](RawSafetensors& f) { f.first_tensor()["dtype"] = Json("F16"); }),
         "need"},
        {"dtype not a string", false, raw([](RawSafetensors& f) { f.first_tensor()["dtype"] = Json(32); }),
         "not a string"},
        {"offset end out of range", false,
         raw([](RawSafetensors& f) { f.first_tensor()["data_offsets"].as_array()[1] = Json(std::int64_t(1) << 40); }),
         "data_offsets"},
        {"offsets reversed", false, raw([](RawSafetensors& f) {
             Json& o = f.first_tensor()["data_offsets"];
             std::swap(o.as_array()[0], o.as_array()[1]);
         }),
         "expected [begin, end]"},
        {"offsets not numbers", false,
         raw([](RawSafetensors& f) { f.first_tensor()["data_offsets"].as_array()[0] = Json("0"); }), "data_offsets"},
        {"shape too large", false,
         raw([](RawSafetensors& f) { f.first_tensor()["shape"].as_array()[0] = Json(std::int64_t(1) << 40); }),
         "data_offsets"},
        {"shape negative", false, raw([](RawSafetensors& f) { f.first_tensor()["shape"].as_array()[0] = Json(-4); }),
         "not a non-negative integer"},
        {"tensor field missing", false, raw([](RawSafetensors& f) { f.first_tensor().as_object().pop_back(); }),
         "needs the fields"},
        {"tensor field extra", false, raw([](RawSafetensors& f) { f.first_tensor()["scale"] = Json(2); }),
         "unexpected field"},
        {"NaN in a weight", false, raw([](RawSafetensors& f) { f.set_float(f.first_tensor_name(), 3, nan); }),
         "holds a NaN or an infinity"},
        {"infinity in a weight", false, raw([](RawSafetensors& f) { f.set_float(f.first_tensor_name(), 0, -inf); }),
         "holds a NaN or an infinity"},
        {"tensor renamed", false, raw([](RawSafetensors& f) {
             auto& members = f.header.as_object();
             for (auto& m : members)
                 if (m.first != "__metadata__") {
                     m.first = "decoder.unknown.weight";
                     break;
                 }
         }),
         "has no tensor"},
        {"metadata not strings", false, raw([](RawSafetensors& f) { f.metadata()["step"] = Json(2); }),
         "must be a string"},
        // The metadata: format, config, vocabulary, step.
        {"format wrong", false, raw([](RawSafetensors& f) { f.metadata()["format"] = Json("pytorch"); }), "format"},
        {"config missing", false, raw([](RawSafetensors& f) {
             auto& m = f.metadata().as_object();
             m.erase(std::remove_if(m.begin(), m.end(), [](const auto& p) { return p.first == "config"; }), m.end());
         }),
         "has no 'config'"},
        {"config not JSON", false, raw([](RawSafetensors& f) { f.metadata()["config"] = Json("{\"vision\":"); }),
         "metadata 'config'"},
        {"config field missing", false, raw([](RawSafetensors& f) { f.edit_metadata("config", "\"n_head\":2,", ""); }),
         "field decoder.n_head"},
        {"config field extra", false,
         raw([](RawSafetensors& f) { f.edit_metadata("config", "\"n_head\":2,", "\"n_head\":2,\"n_heads_kv\":1,"); }),
         "field decoder.n_heads_kv: unknown field"},
        {"config field not a number", false,
         raw([](RawSafetensors& f) { f.edit_metadata("config", "\"n_layer\":2", "\"n_layer\":\"two\""); }),
         "field decoder.n_layer"},
        {"config top-k over experts", false,
         raw([](RawSafetensors& f) { f.edit_metadata("config", "\"top_k\":2", "\"top_k\":9"); }), "decoder.top_k"},
        {"config sizes disagree with tensors", false,
         raw([](RawSafetensors& f) { f.edit_metadata("config", "\"n_layer\":2", "\"n_layer\":3"); }), "has no tensor"},
        {"vocabulary not an array", false, raw([](RawSafetensors& f) { f.metadata()["vocab"] = Json("{}"); }),
         "metadata 'vocab'"},
        {"vocabulary one token short", false,
         raw([](RawSafetensors& f) { f.edit_metadata("vocab", "\"a\",", ""); }), "vocabulary tokens"},
        {"step not a number", false, raw([](RawSafetensors& f) { f.metadata()["step"] = Json("2.5"); }),
         "has step '2.5'"},
        // The training state: moments, step counts, Rng, the run's settings.
        {"state cut", true, bytes([](std::string& b) { b.resize(b.size() / 2); }), "past the end"},
        {"state NaN moment", true, raw([](RawSafetensors& f) { f.set_float(f.first_tensor_name(), 0, nan); }),
         "holds a NaN"},
        {"state negative second moment", true, raw([](RawSafetensors& f) {
             for (const auto& [name, value] : f.header.as_object())
                 if (name.rfind("exp_avg_sq.", 0) == 0) return f.set_float(name, 0, -1.0f);
         }),
         "negative"},
        {"state moment missing", true, raw([](RawSafetensors& f) {
             auto& members = f.header.as_object();
             const auto it = std::find_if(members.begin(), members.end(),
                                          [](const auto& m) { return m.first != "__metadata__"; });
             members.erase(it);  // its bytes stay, claimed by no tensor
         }),
         "belong to no tensor"},
        {"state step not a number", true, raw([](RawSafetensors& f) { f.metadata()["step"] = Json("abc"); }),
         "has step 'abc'"},
        {"state step from another checkpoint", true, raw([](RawSafetensors& f) { f.metadata()["step"] = Json("1"); }),
         "step 1"},
        {"state param_steps not JSON", true, raw([](RawSafetensors& f) { f.metadata()["param_steps"] = Json("[2,"); }),
         "metadata 'param_steps'"},
        {"state param_steps too few", true, raw([](RawSafetensors& f) { f.metadata()["param_steps"] = Json("[2]"); }),
         "metadata 'param_steps'"},
        {"state rng too short", true, raw([](RawSafetensors& f) { f.metadata()["rng"] = Json("[\"1\"]"); }),
         "metadata 'rng'"},
        {"state rng word over 2^64", true,
         raw([](RawSafetensors& f) { f.edit_metadata("rng", "[\"", "[\"99999999999999999999"); }), "metadata 'rng'"},
        {"state settings missing", true, raw([](RawSafetensors& f) {
             auto& m = f.metadata().as_object();
             m.erase(std::remove_if(m.begin(), m.end(), [](const auto& p) { return p.first == "train"; }), m.end());
         }),
         "lacks the run's settings"},
        {"state setting not a number", true,
         raw([](RawSafetensors& f) { f.edit_metadata("train", "\"batch\":8", "\"batch\":\"eight\""); }), "field batch"},
        {"state setting out of range", true,
         raw([](RawSafetensors& f) { f.edit_metadata("train", "\"batch\":8", "\"batch\":-8"); }), "batch"},
    };
    REQUIRE(variants.size() >= 30);
    const fs::path folder = dir / "copy" / "checkpoints" / step_dir(2);
    for (const Variant& v : variants) {
        INFO(v.name);
        fs::remove_all(dir / "copy");
        fs::copy(dir / "run", dir / "copy", fs::copy_options::recursive);
        const fs::path file = folder / (v.state ? "training_state.safetensors" : "model.safetensors");
        fs::remove(dir / "copy" / "model.safetensors");  // the hard link would share the edit
        v.edit(file);
        const auto before = listing(dir / "copy");
        const Run run =
            v.state ? run_cli(dir, "train --resume --out " + quote((dir / "copy").string()) + " --data " + quote(kTiny),
                              kTimeout)
                    : run_cli(dir, "caption --model " + quote(file.string()) + " " + image, kTimeout);
        check_error(run, v.expected);
        CHECK_THAT(run.err, Catch::Contains(file.string()));
        CHECK(listing(dir / "copy") == before);  // nothing written, nothing removed
        // The model corruptions are refused by --resume as well, naming the same file.
        if (!v.state) {
            const Run resume =
                run_cli(dir, "train --resume --out " + quote((dir / "copy").string()) + " --data " + quote(kTiny), kTimeout);
            check_error(resume, v.expected);
            CHECK_THAT(resume.err, Catch::Contains(file.string()));
            CHECK(listing(dir / "copy") == before);
        }
    }
}

#endif  // SEEMOE_CLI_PATH
