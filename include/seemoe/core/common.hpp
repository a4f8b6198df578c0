// seemoe/core/common.hpp — the few things every other header needs.
//
//   Index         the one index type (signed 64-bit, like torch's int64 sizes)
//   kIgnoreIndex  the target value cross_entropy skips (-100, as in PyTorch)
//   Error         what the library throws on bad input; never exit()/abort()
//   SEEMOE_CHECK  SEEMOE_CHECK(cond, "[op] what went wrong: ", shape_a, " x ", shape_b)
//   SEEMOE_ASAN   1 when compiled with AddressSanitizer (GCC's or Clang's spelling), else 0
//   Rng           the only source of randomness: xoshiro256** plus our own normal sampler,
//                 so the same seed gives the same numbers on every compiler and standard library
//                 (std::normal_distribution differs between libstdc++ and libc++; Eigen's
//                 Random() uses the global rand()).
//
// Convention: error messages start with the op or module name in brackets, then the shapes.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

// GCC defines __SANITIZE_ADDRESS__ under -fsanitize=address; Clang reports it through
// __has_feature. Code that must leave memory to ASan's watch (the buffer cache) tests this.
#if defined(__SANITIZE_ADDRESS__)
#define SEEMOE_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SEEMOE_ASAN 1
#endif
#endif
#ifndef SEEMOE_ASAN
#define SEEMOE_ASAN 0
#endif

namespace seemoe {

using Index = std::int64_t;

// A target equal to this is skipped by cross_entropy (PyTorch's default ignore_index); the
// Batcher marks padding with it.
inline constexpr Index kIgnoreIndex = -100;

class Error : public std::runtime_error {
public:
    explicit Error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <typename... Parts>
std::string concat(const Parts&... parts) {
    std::ostringstream out;
    (out << ... << parts);
    return out.str();
}
}  // namespace detail

}  // namespace seemoe

// Throws seemoe::Error built from the streamed message parts when `cond` is false.
#define SEEMOE_CHECK(cond, ...)                                               \
    do {                                                                      \
        if (!(cond)) throw ::seemoe::Error(::seemoe::detail::concat(__VA_ARGS__)); \
    } while (0)

namespace seemoe {

// xoshiro256** (Blackman & Vigna), seeded through splitmix64 so that any 64-bit seed,
// including 0, gives a well-mixed state.
class Rng {
public:
    explicit Rng(std::uint64_t seed = 0) { this->seed(seed); }

    void seed(std::uint64_t seed) {
        std::uint64_t x = seed;
        for (auto& word : state_) word = splitmix64(x);
        has_spare_normal_ = false;
    }

    // 64 uniformly random bits.
    std::uint64_t next_u64() {
        const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
        const std::uint64_t t = state_[1] << 17;
        state_[2] ^= state_[0];
        state_[3] ^= state_[1];
        state_[1] ^= state_[2];
        state_[0] ^= state_[3];
        state_[2] ^= t;
        state_[3] = rotl(state_[3], 45);
        return result;
    }

    // Uniform in [0, 1) with 53 random bits.
    double uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

    // Uniform integer in [lo, hi). Lemire-style rejection keeps it unbiased.
    Index randint(Index lo, Index hi) {
        SEEMOE_CHECK(hi > lo, "[Rng::randint] empty range [", lo, ", ", hi, ")");
        const std::uint64_t range = static_cast<std::uint64_t>(hi - lo);
        const std::uint64_t limit = UINT64_MAX - UINT64_MAX % range;
        std::uint64_t r;
        do { r = next_u64(); } while (r >= limit);
        return lo + static_cast<Index>(r % range);
    }

    // Standard normal by the Box–Muller transform; the second value of each pair is kept.
    double normal() {
        if (has_spare_normal_) {
            has_spare_normal_ = false;
            return spare_normal_;
        }
        double u1 = uniform();
        while (u1 <= 0.0) u1 = uniform();
        const double u2 = uniform();
        const double radius = std::sqrt(-2.0 * std::log(u1));
        const double angle = 6.283185307179586476925 * u2;
        spare_normal_ = radius * std::sin(angle);
        has_spare_normal_ = true;
        return radius * std::cos(angle);
    }
    double normal(double mean, double stddev) { return mean + stddev * normal(); }

    // The full state, for checkpoints: 4 words + the cached normal.
    struct State {
        std::uint64_t words[4];
        bool has_spare_normal;
        double spare_normal;
    };
    State state() const {
        return {{state_[0], state_[1], state_[2], state_[3]}, has_spare_normal_, spare_normal_};
    }
    void set_state(const State& s) {
        for (int i = 0; i < 4; ++i) state_[i] = s.words[i];
        has_spare_normal_ = s.has_spare_normal;
        spare_normal_ = s.spare_normal;
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    static std::uint64_t splitmix64(std::uint64_t& x) {
        std::uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
    }

    std::uint64_t state_[4];
    bool has_spare_normal_ = false;
    double spare_normal_ = 0.0;
};

}  // namespace seemoe
