// tests/thread_guard.hpp — ThreadCountGuard: a test that changes seemoe's thread count puts it back.
//
// The thread count is process-wide (set_num_threads), and every test file runs in one process, so
// a test that sets it must restore it however it ends (a failed REQUIRE throws). Declare a guard
// first, then set the count freely:
//   ThreadCountGuard guard;
//   set_num_threads(2);
#pragma once

#include <seemoe/core/parallel.hpp>

namespace seemoe::testing {

struct ThreadCountGuard {
    int saved = num_threads();
    ThreadCountGuard() = default;
    ThreadCountGuard(const ThreadCountGuard&) = delete;
    ThreadCountGuard& operator=(const ThreadCountGuard&) = delete;
    ~ThreadCountGuard() { set_num_threads(saved); }
};

}  // namespace seemoe::testing
