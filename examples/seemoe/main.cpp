// examples/seemoe/main.cpp — the `seemoe` program: train, caption, generate, eval and bench.
//
//   seemoe train    [--data DIR] [--out DIR] [--preset tiny|demo|seemore] ...  (train.hpp)
//   seemoe train    --text FILE [--preset makemoe] ...                         (train_text.hpp)
//   seemoe caption  --model PATH IMAGE...                                       (caption.hpp)
//   seemoe generate --model PATH [--prompt TEXT] [--tokens N] ...               (generate.hpp)
//   seemoe eval     --model PATH [--data DIR] [--split val|test] [--text FILE]  (eval.hpp)
//   seemoe bench    ...                                                         (bench.hpp)
//
// Everything here is a user of the public library headers; read train.hpp for a complete training
// loop. Errors the user can act on end the program with ONE line on stderr,
//   seemoe: error: <what went wrong>; <what to do>
// and exit code 2 (usage, data, checkpoint and library errors alike); --help exits 0.
#include <csignal>
#include <cstdio>
#include <exception>
#include <new>
#include <filesystem>
#include <string>

#include "bench.hpp"
#include "caption.hpp"
#include "eval.hpp"
#include "generate.hpp"
#include "train.hpp"
#include "train_text.hpp"

namespace {

const char* kUsage =
    "usage: seemoe <command> [flags]\n\n"
    "A small mixture-of-experts vision-language model that learns to caption images, or (with\n"
    "--text) a text-only character language model like makeMoE's.\n\n"
    "commands:\n"
    "  train     train a model on a data set folder (captions.csv + images), or on a text file (--text)\n"
    "  caption   caption image files with a trained model\n"
    "  generate  continue text with a trained text model\n"
    "  eval      measure a trained model on the val or test split\n"
    "  bench     time the model's training step and generation\n\n"
    "Run 'seemoe <command> --help' for its flags. Quick start, from the source tree:\n"
    "  seemoe train                              # preset demo on data/shapes -> runs/demo\n"
    "  seemoe caption --model runs/demo data/shapes/test/00000.png\n"
    "  seemoe eval --model runs/demo --split test\n"
    "Text only (makeMoE):\n"
    "  seemoe train --text tinyshakespeare.txt   # preset makemoe -> runs/makemoe\n"
    "  seemoe generate --model runs/makemoe --prompt 'ROMEO:'\n";

int report(const std::string& message, const std::string& hint) {
    std::fflush(stdout);
    std::fprintf(stderr, "seemoe: error: %s; %s\n", cli::one_line(message).c_str(), hint.c_str());
    return 2;
}

int dispatch(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "%s", kUsage);
        return 2;
    }
    const std::string command = argv[1];
    if (command == "--help" || command == "-h" || command == "help") {
        std::printf("%s", kUsage);
        return 0;
    }
    if (command == "train") return cli::run_train(argc, argv);
    if (command == "caption") return cli::run_caption(argc, argv);
    if (command == "generate") return cli::run_generate(argc, argv);
    if (command == "eval") return cli::run_eval(argc, argv);
    if (command == "bench") return run_bench(argc, argv);
    throw cli::CliError("unknown command '" + command + "'", "use train, caption, generate, eval or bench (see 'seemoe --help')");
}

}  // namespace

int main(int argc, char** argv) {
    // A write past the file-size limit (ulimit -f) then fails with EFBIG, which the writer reports
    // and cleans up after, instead of SIGXFSZ killing the program half way through a checkpoint.
    std::signal(SIGXFSZ, SIG_IGN);
    try {
        return dispatch(argc, argv);
    } catch (const cli::CliError& e) {
        return report(e.what(), e.hint());
    } catch (const seemoe::Error& e) {
        return report(e.what(), "see 'seemoe --help'");
    } catch (const std::filesystem::filesystem_error& e) {
        return report(e.what(), "check the paths and their permissions");
    } catch (const std::bad_alloc&) {
        return report("out of memory", "choose smaller model sizes, batch or images");
    } catch (const std::exception& e) {
        return report(std::string("internal error: ") + e.what(), "please report this with the command line");
    }
}
