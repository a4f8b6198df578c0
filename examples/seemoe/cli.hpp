// examples/seemoe/cli.hpp — the small command-line toolkit the seemoe program is built on.
//
//   CliError     an error the user can fix: a message and what to do about it. main() prints it
//                as one line, "seemoe: error: <message>; <hint>", and exits with code 2.
//   FlagSpec     one flag of a subcommand: its name, its value's placeholder (none for a switch)
//                and a line of help. A subcommand's table of FlagSpecs is both its parser's
//                whitelist and its --help text, so the two cannot drift apart.
//   Args         argv parsed against such a table: "--flag value" or "--flag=value", switches,
//                positionals; typed getters that reject "--steps ten" with the flag's name.
//   with_hint    runs a step and turns a seemoe::Error from the library into a CliError that
//                says what to do.
//
// Convention: everything the program prints for people goes to stdout; errors go to stderr.
#pragma once

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <seemoe/core/common.hpp>

#if defined(_WIN32)
#include <io.h>
#else
#include <unistd.h>
#endif

namespace cli {

using seemoe::Index;

class CliError : public std::runtime_error {
public:
    CliError(const std::string& message, std::string hint)
        : std::runtime_error(message), hint_(std::move(hint)) {}
    const std::string& hint() const { return hint_; }

private:
    std::string hint_;
};

// Library messages may span lines (e.g. a CSV excerpt); the error report is one line.
inline std::string one_line(std::string text) {
    for (char& c : text)
        if (c == '\n' || c == '\r' || c == '\t') c = ' ';
    while (!text.empty() && (text.back() == ' ' || text.back() == '.')) text.pop_back();
    return text;
}

// Runs `step`; a seemoe::Error it throws becomes a CliError carrying `hint`.
template <typename Step>
auto with_hint(const std::string& hint, Step&& step) -> decltype(step()) {
    try {
        return step();
    } catch (const seemoe::Error& e) {
        throw CliError(e.what(), hint);
    }
}

struct FlagSpec {
    const char* name;     // "--steps"
    const char* value;    // "N", or nullptr for a switch such as --resume
    const char* help;     // one line
};

class Args {
public:
    // Parses argv[first..argc) against `flags`; "--help" and "-h" are always accepted.
    Args(const std::string& command, const std::vector<FlagSpec>& flags, int argc, char** argv, int first)
        : command_(command) {
        for (int i = first; i < argc; ++i) {
            std::string token = argv[i];
            if (token == "--help" || token == "-h") {
                help_ = true;
                continue;
            }
            if (token.size() < 2 || token[0] != '-' || token == "-") {
                positionals_.push_back(token);
                continue;
            }
            if (token == "--") {  // everything after is positional (a file named "--x")
                for (++i; i < argc; ++i) positionals_.emplace_back(argv[i]);
                break;
            }
            std::string value;
            bool has_inline_value = false;
            const std::size_t eq = token.find('=');
            if (eq != std::string::npos) {
                value = token.substr(eq + 1);
                token = token.substr(0, eq);
                has_inline_value = true;
            }
            const FlagSpec* spec = find(flags, token);
            if (!spec)
                throw CliError("unknown flag " + token + " for 'seemoe " + command_ + "'",
                               "run 'seemoe " + command_ + " --help' to see its flags");
            if (!spec->value) {
                if (has_inline_value)
                    throw CliError(token + " is a switch and takes no value (got '" + value + "')",
                                   "write just " + token);
                switches_.insert(token);
                continue;
            }
            if (!has_inline_value) {
                if (i + 1 >= argc)
                    throw CliError(token + " needs a value (" + spec->value + ")",
                                   "write " + token + " " + spec->value);
                value = argv[++i];
            }
            values_[token] = value;
        }
    }

    bool help() const { return help_; }
    const std::string& command() const { return command_; }
    bool has(const std::string& flag) const { return values_.count(flag) || switches_.count(flag); }
    bool flag(const std::string& name) const { return switches_.count(name) > 0; }
    const std::vector<std::string>& positionals() const { return positionals_; }

    std::string get(const std::string& flag, const std::string& fallback) const {
        const auto it = values_.find(flag);
        return it == values_.end() ? fallback : it->second;
    }

    // An integer >= min_value.
    Index get_int(const std::string& flag, Index fallback, Index min_value) const {
        const auto it = values_.find(flag);
        if (it == values_.end()) return fallback;
        const std::string& text = it->second;
        errno = 0;
        char* end = nullptr;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        if (text.empty() || *end != '\0' || errno == ERANGE)
            throw CliError(flag + " expects an integer, got '" + text + "'", "write e.g. " + flag + " 100");
        if (v < min_value)
            throw CliError(flag + " must be at least " + std::to_string(min_value) + ", got " + text,
                           "choose a larger value");
        return static_cast<Index>(v);
    }

    std::uint64_t get_seed(const std::string& flag, std::uint64_t fallback) const {
        const auto it = values_.find(flag);
        if (it == values_.end()) return fallback;
        const std::string& text = it->second;
        errno = 0;
        char* end = nullptr;
        const unsigned long long v = std::strtoull(text.c_str(), &end, 10);
        if (text.empty() || text[0] == '-' || *end != '\0' || errno == ERANGE)
            throw CliError(flag + " expects a non-negative integer, got '" + text + "'",
                           "write e.g. " + flag + " 42");
        return static_cast<std::uint64_t>(v);
    }

    // A finite number in [lo, hi].
    double get_double(const std::string& flag, double fallback, double lo, double hi) const {
        const auto it = values_.find(flag);
        if (it == values_.end()) return fallback;
        const std::string& text = it->second;
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (text.empty() || *end != '\0' || !std::isfinite(v))
            throw CliError(flag + " expects a number, got '" + text + "'", "write e.g. " + flag + " 0.001");
        if (v < lo || v > hi)
            throw CliError(flag + " must be in [" + short_number(lo) + ", " + short_number(hi) + "], got " + text,
                           "choose a value in that range");
        return v;
    }

    // One of `choices`.
    std::string get_choice(const std::string& flag, const std::string& fallback,
                           const std::vector<std::string>& choices) const {
        const std::string v = get(flag, fallback);
        for (const auto& c : choices)
            if (c == v) return v;
        std::string list;
        for (const auto& c : choices) list += (list.empty() ? "" : "|") + c;
        throw CliError(flag + " must be one of " + list + ", got '" + v + "'", "write e.g. " + flag + " " +
                                                                                  choices.front());
    }

    static std::string short_number(double v) {
        char buf[32];
        std::snprintf(buf, sizeof buf, "%g", v);
        return buf;
    }

private:
    static const FlagSpec* find(const std::vector<FlagSpec>& flags, const std::string& name) {
        for (const auto& f : flags)
            if (name == f.name) return &f;
        return nullptr;
    }

    std::string command_;
    bool help_ = false;
    std::map<std::string, std::string> values_;
    std::set<std::string> switches_;
    std::vector<std::string> positionals_;
};

// "  --steps N            optimisation steps ..." lines for a usage text.
inline std::string flag_help(const std::vector<FlagSpec>& flags) {
    std::string out;
    for (const auto& f : flags) {
        std::string left = std::string("  ") + f.name + (f.value ? std::string(" ") + f.value : std::string());
        if (left.size() < 26) left.resize(26, ' ');
        else left += "  ";
        out += left + f.help + "\n";
    }
    return out;
}

// ---- small formatting helpers ------------------------------------------------------------------

template <typename... Args>
std::string format(const char* fmt, Args... args) {
    const int n = std::snprintf(nullptr, 0, fmt, args...);
    std::string out(static_cast<std::size_t>(n > 0 ? n : 0), '\0');
    std::snprintf(out.data(), out.size() + 1, fmt, args...);
    return out;
}

// 75 -> "1m15s", 3725 -> "1h02m", 9.5 -> "9.5s"
inline std::string format_duration(double seconds) {
    if (!(seconds >= 0) || !std::isfinite(seconds)) return "?";
    if (seconds < 60) return format("%.1fs", seconds);
    const long s = std::lround(seconds);
    if (s < 3600) return format("%ldm%02lds", s / 60, s % 60);
    return format("%ldh%02ldm", s / 3600, (s % 3600) / 60);
}

inline std::string format_percent(double fraction) { return format("%.1f%%", 100.0 * fraction); }

// 1234567 -> "1.23 M"
inline std::string format_count(Index n) {
    if (n >= 1000000) return format("%.2f M", static_cast<double>(n) / 1e6);
    if (n >= 1000) return format("%.1f k", static_cast<double>(n) / 1e3);
    return std::to_string(n);
}

// A title, then "  key              value" rows.
inline void print_table(const std::string& title, const std::vector<std::pair<std::string, std::string>>& rows) {
    std::printf("%s\n", title.c_str());
    for (const auto& [key, value] : rows) std::printf("  %-16s %s\n", key.c_str(), value.c_str());
}

inline bool stdout_is_terminal() {
#if defined(_WIN32)
    return _isatty(_fileno(stdout)) != 0;
#else
    return isatty(fileno(stdout)) != 0;
#endif
}

// Wall-clock seconds since construction.
class Stopwatch {
public:
    Stopwatch() : start_(std::chrono::steady_clock::now()) {}
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }
    void restart() { start_ = std::chrono::steady_clock::now(); }

private:
    std::chrono::steady_clock::time_point start_;
};

}  // namespace cli
