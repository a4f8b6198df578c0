// tests/cli_run.hpp — helpers for the tests that run the `seemoe` program (SEEMOE_CLI_PATH):
// a scratch folder per case, running the binary with its output captured, and checks of the
// one-line error contract. Included by test_cli.cpp and test_cli_reliability.cpp only when the
// example program is built.
#pragma once

#include <catch2/catch.hpp>

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <seemoe/io/json.hpp>

namespace cli_test {

namespace fs = std::filesystem;
using seemoe::io::Json;

inline const std::string kTiny = SEEMOE_SOURCE_DIR "/tests/data/tiny";

struct Run {
    int code = -1;
    std::string out, err;
};

inline std::string quote(const std::string& s) {
    std::string q = "'";
    for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return q + "'";
}

inline std::string read_text(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// A fresh, empty scratch folder for one test case.
inline fs::path scratch(const std::string& name) {
    const fs::path dir = fs::path(SEEMOE_BINARY_DIR) / "cli_tests" / name;
    fs::remove_all(dir);
    fs::create_directories(dir);
    return dir;
}

// Runs `seemoe <args>` in `dir`; stdout and stderr are captured in files there. `prefix` goes
// before the program ("timeout 60", "SEEMOE_INJECT_NAN=3"); a run killed by a signal has code -1.
inline Run run_cli(const fs::path& dir, const std::string& args, const std::string& prefix = "") {
    const fs::path out = dir / "stdout.txt", err = dir / "stderr.txt";
    const std::string command =
        prefix + (prefix.empty() ? "" : " ") + quote(SEEMOE_CLI_PATH) + " " + args + " > " + quote(out.string()) + " 2> " + quote(err.string());
    const int status = std::system(command.c_str());
    Run run;
    run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    run.out = read_text(out);
    run.err = read_text(err);
    fs::remove(out);
    fs::remove(err);
    return run;
}

inline std::string train_tiny(const fs::path& out, const std::string& extra = "") {
    return "train --preset tiny --data " + quote(kTiny) + " --out " + quote(out.string()) +
           " --threads 1 --steps 8 --eval-every 4 " + extra;
}

inline std::vector<Json> read_metrics(const fs::path& path) {
    std::vector<Json> rows;
    std::ifstream in(path);
    std::string line;
    while (std::getline(in, line)) rows.push_back(Json::parse(line));
    return rows;
}

// The per-step losses of a metrics.jsonl (the final-report line has none).
inline std::vector<double> losses(const fs::path& path) {
    std::vector<double> out;
    for (const Json& row : read_metrics(path))
        if (row.contains("loss")) out.push_back(row.at("loss").as_double());
    return out;
}

inline std::size_t count_lines(const std::string& text) {
    std::size_t n = 0;
    for (char c : text) n += c == '\n';
    return n;
}

// An error run: exit code 2, one line on stderr naming the problem, nothing on stdout.
inline void check_error(const Run& run, const std::string& expected) {
    INFO("stdout: " << run.out << "\nstderr: " << run.err);
    CHECK(run.code == 2);
    CHECK(run.err.rfind("seemoe: error: ", 0) == 0);
    CHECK(count_lines(run.err) == 1);
    CHECK_THAT(run.err, Catch::Contains(expected));
    CHECK_THAT(run.err, !Catch::Contains("internal error"));
}

inline void replace_in_file(const fs::path& path, const std::string& from, const std::string& to) {
    std::string text = read_text(path);
    const std::size_t at = text.find(from);
    REQUIRE(at != std::string::npos);
    text.replace(at, from.size(), to);
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
}


}  // namespace cli_test
