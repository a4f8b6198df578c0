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
//
// Built against seemoe::mpi (SEEMOE_WITH_MPI), the program started by mpirun is one rank of a team
// (distributed.hpp): `mpirun -np 4 seemoe train ...` trains data parallel; rank 0 alone prints.
// A failure every rank agreed on is reported once and every rank exits 2; a failure on one rank
// alone ends the whole job (MPI_Abort with code 2) so that no rank waits forever.
#include <csignal>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <string>

#include "bench.hpp"
#include "caption.hpp"
#include "eval.hpp"
#include "generate.hpp"
#include "team.hpp"
#include "train.hpp"
#include "train_text.hpp"
#ifdef SEEMOE_WITH_MPI
#include "distributed.hpp"
#endif

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
    // A library message that already says what to do comes with an empty hint.
    if (hint.empty())
        std::fprintf(stderr, "seemoe: error: %s\n", cli::one_line(message).c_str());
    else
        std::fprintf(stderr, "seemoe: error: %s; %s\n", cli::one_line(message).c_str(), hint.c_str());
    return 2;
}

int dispatch(int argc, char** argv, cli::Team& team) {
    if (argc < 2) {
        std::fprintf(stderr, "%s", kUsage);
        return 2;
    }
    const std::string command = argv[1];
    if (command == "--help" || command == "-h" || command == "help") {
        std::printf("%s", kUsage);
        return 0;
    }
    // A bad SEEMOE_KERNEL (the kernel path forced by hand) is reported before anything runs.
    (void)seemoe::active_kernel_path();
    if (command == "train") return cli::run_train(argc, argv, team);
    if (command == "caption") return cli::run_caption(argc, argv);
    if (command == "generate") return cli::run_generate(argc, argv);
    if (command == "eval") return cli::run_eval(argc, argv);
    if (command == "bench") return run_bench(argc, argv, team);
    throw cli::CliError("unknown command '" + command + "'", "use train, caption, generate, eval or bench (see 'seemoe --help')");
}

// Reports an error that only this rank knows of; with other ranks running, ends the whole job.
int report_alone(const cli::Team& team, const std::string& message, const std::string& hint) {
    const int code = report(team.size() > 1 ? "rank " + std::to_string(team.rank()) + ": " + message : message, hint);
#ifdef SEEMOE_WITH_MPI
    if (team.size() > 1) static_cast<const cli::MpiTeam&>(team).abort(code);
#endif
    return code;
}

int run(int argc, char** argv, cli::Team& team) {
    try {
        return dispatch(argc, argv, team);
    } catch (const cli::AgreedError& e) {
        if (!e.leader()) return 2;  // the leader reports it
        return report(e.what(), e.hint());
    } catch (const cli::CliError& e) {
        return report_alone(team, e.what(), e.hint());
    } catch (const seemoe::Error& e) {
        return report_alone(team, e.what(), "see 'seemoe --help'");
    } catch (const std::filesystem::filesystem_error& e) {
        return report_alone(team, e.what(), "check the paths and their permissions");
    } catch (const std::bad_alloc&) {
        return report_alone(team, "out of memory", "choose smaller model sizes, batch or images");
    } catch (const std::exception& e) {
        return report_alone(team, std::string("internal error: ") + e.what(), "please report this with the command line");
    }
}

}  // namespace

int main(int argc, char** argv) {
    // A write past the file-size limit (ulimit -f) then fails with EFBIG, which the writer reports
    // and cleans up after, instead of SIGXFSZ killing the program half way through a checkpoint.
    std::signal(SIGXFSZ, SIG_IGN);
#ifdef SEEMOE_WITH_MPI
    if (cli::started_by_mpi_launcher()) {
        std::optional<seemoe::dist::Environment> mpi;
        std::unique_ptr<cli::MpiTeam> team;
        try {
            mpi.emplace(argc, argv);
            team = std::make_unique<cli::MpiTeam>();
        } catch (const std::exception& e) {
            return report(e.what(), "check the MPI installation and the mpirun command line");
        }
        // Ranks sharing a machine share its cores (--threads or OMP_NUM_THREADS override this).
        if (!std::getenv("OMP_NUM_THREADS")) seemoe::set_num_threads(team->default_threads());
        // Only rank 0 prints; the others' errors still reach stderr.
        if (!team->leader() && !std::freopen("/dev/null", "w", stdout)) std::fclose(stdout);
        return run(argc, argv, *team);
    }
#endif
    cli::Team alone;
    return run(argc, argv, alone);
}
