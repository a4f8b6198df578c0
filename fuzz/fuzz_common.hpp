// fuzz/fuzz_common.hpp — what every libFuzzer target here shares.
//
// Each target feeds the fuzzer's bytes to one reader and checks two kinds of invariant:
//   refused  -> the reader threw seemoe::Error (anything else escapes the target, and libFuzzer
//               reports it as a crash: std::bad_alloc, std::out_of_range, a signal, a sanitizer
//               report all count as findings);
//   accepted -> what was read is consistent: written back out and read again it is equal.
// FUZZ_CHECK aborts with a message when an invariant fails, so libFuzzer saves the input.
// Readers that take a path get the bytes through a file in a private scratch folder (on /dev/shm
// when it exists, so the many small writes stay in memory).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

#include <seemoe/core/common.hpp>

#define FUZZ_CHECK(cond, what)                                                                   \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            std::fprintf(stderr, "fuzz invariant failed at %s:%d: %s (%s)\n", __FILE__, __LINE__, \
                         what, #cond);                                                           \
            std::abort();                                                                        \
        }                                                                                        \
    } while (0)

namespace fuzz {

// A scratch folder for this process, made on first use and removed at exit.
inline const std::filesystem::path& scratch() {
    static const std::filesystem::path dir = [] {
        namespace fs = std::filesystem;
        std::error_code ec;
        const fs::path base = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
        std::string pattern = (base / "seemoe_fuzz_XXXXXX").string();
        FUZZ_CHECK(::mkdtemp(pattern.data()) != nullptr, "cannot make a scratch folder");
        static const std::string made = pattern;
        std::atexit([] {
            std::error_code ignored;
            std::filesystem::remove_all(made, ignored);
        });
        return fs::path(pattern);
    }();
    return dir;
}

inline void write_file(const std::filesystem::path& path, std::string_view bytes) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    FUZZ_CHECK(out.good(), "cannot write a scratch file");
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

}  // namespace fuzz
