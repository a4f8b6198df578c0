// tests/temp_dir.hpp — a fresh scratch directory per test case, for the tests that write files.
//
// mkdir is atomic, so parallel test processes never share one; it is removed with everything in
// it when the TempDir goes out of scope.
#pragma once

#include <filesystem>
#include <string>
#include <system_error>

namespace seemoe::testing {

struct TempDir {
    std::filesystem::path path;
    // `prefix` names the test file, e.g. "seemoe_test_io_", so a leftover folder says who made it.
    explicit TempDir(const std::string& prefix) {
        const std::filesystem::path base = std::filesystem::temp_directory_path();
        for (int n = 0;; ++n) {
            path = base / (prefix + std::to_string(n));
            if (std::filesystem::create_directory(path)) break;
        }
    }
    ~TempDir() {
        std::error_code ignored;
        std::filesystem::remove_all(path, ignored);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string file(const std::string& name) const { return (path / name).string(); }
};

}  // namespace seemoe::testing
