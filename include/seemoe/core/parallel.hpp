// seemoe/core/parallel.hpp — the threads, in one place: parallel_for over a small thread pool.
//
// Hot ops split their outermost loop (batch x heads in attention, experts in the MoE, row blocks,
// the blocks of a big matrix product) with parallel_for. Regions are never nested: parallel_for
// runs serially when called from inside another one. Eigen's own GEMM threading stays off
// (Eigen::setNbThreads(1)): ops/matmul.hpp splits big products over the threads itself.
//
// Why a pool of our own rather than OpenMP: a training step opens hundreds of short parallel
// regions, and an OpenMP runtime spins its idle threads for up to milliseconds after each one.
// On a machine whose cores are shared with other work, those spinning threads take the cores the
// working ones need, and a step can run several times slower with 2 threads than with 1. Here an
// idle worker spins for a few microseconds only, then sleeps on a condition variable; and the
// chunks of a loop are claimed, not assigned, so a thread that is late to wake up (its core is
// busy elsewhere) simply finds its share already done by the others.
//
// Thread count: OMP_NUM_THREADS if set, else every core; set_num_threads() (the example's
// --threads flag) changes it. Bodies must not throw.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
#include <immintrin.h>
#endif

#include "common.hpp"

namespace seemoe {

namespace detail {

// Eigen threads a big product itself when built with OpenMP; seemoe splits products itself.
inline void keep_eigen_single_threaded() {
    static const bool done = [] {
        Eigen::setNbThreads(1);
        return true;
    }();
    (void)done;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__) || defined(_M_X64)
    _mm_pause();
#endif
}

// True while this thread runs the body of a parallel_for.
inline bool& in_region_flag() {
    thread_local bool in_region = false;
    return in_region;
}

inline int default_thread_count() {
    if (const char* env = std::getenv("OMP_NUM_THREADS")) {
        const long n = std::strtol(env, nullptr, 10);  // "4" or the first entry of "4,2"
        if (n >= 1) return static_cast<int>(n);
    }
    const unsigned cores = std::thread::hardware_concurrency();
    return cores > 0 ? static_cast<int>(cores) : 1;
}

// The pool behind parallel_for: threads() - 1 workers plus the calling thread. One loop runs at
// a time; a loop started while another runs (from a second user thread) runs serially.
//
// A loop of n items is cut into K contiguous chunks (K = threads, or up to n for dynamic
// scheduling). The claim word packs (generation, K, next chunk) so that a worker which wakes up
// late can never claim a chunk of a finished loop: its compare-and-swap fails on the generation.
// A successful claim keeps the loop open (the caller waits for every chunk to finish), so the
// body pointer it then reads is still valid.
class ThreadPool {
public:
    static ThreadPool& instance() {
        static ThreadPool* pool = new ThreadPool();  // never destroyed: workers may still sleep at exit
        return *pool;
    }

    int threads() const { return threads_.load(std::memory_order_relaxed); }

    void set_threads(int n) {
        std::lock_guard<std::mutex> run_lock(run_mutex_);
        threads_.store(n, std::memory_order_relaxed);
        if (static_cast<int>(workers_.size()) > n - 1) stop_workers();
    }

    template <typename Body>
    void run(Index n, Body& body, bool dynamic) {
        std::unique_lock<std::mutex> run_lock(run_mutex_, std::try_to_lock);
        const int threads = this->threads();
        if (!run_lock.owns_lock() || threads <= 1 || n <= 1) {
            for (Index i = 0; i < n; ++i) body(i);
            return;
        }
        start_workers(threads - 1);
        const Index chunks = dynamic ? std::min<Index>(n, kMaxChunks) : std::min<Index>(n, threads);
        items_ = n;
        call_ = [](void* context, Index first, Index end) {
            Body& b = *static_cast<Body*>(context);
            for (Index i = first; i < end; ++i) b(i);
        };
        context_ = const_cast<void*>(static_cast<const void*>(&body));
        done_chunks_.store(0, std::memory_order_relaxed);
        generation_ = (generation_ + 1) & kGenerationMask;
        // Publishing the claim word releases the fields above to whoever claims a chunk.
        claim_.store(pack(generation_, static_cast<std::uint64_t>(chunks), 0), std::memory_order_seq_cst);
        if (sleeping_.load(std::memory_order_seq_cst) > 0) {
            { std::lock_guard<std::mutex> lock(wake_mutex_); }
            wake_.notify_all();
        }
        work_on(generation_);
        // Wait for chunks other threads claimed: spin briefly, then yield the core.
        const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
        for (int i = 0; done_chunks_.load(std::memory_order_acquire) < chunks; ++i) {
            if (i < 64 || std::chrono::steady_clock::now() < spin_until) {
                cpu_relax();
            } else {
                std::this_thread::yield();
            }
        }
    }

private:
    static constexpr int kSpinMicros = 50;
    static constexpr Index kMaxChunks = (Index(1) << 20) - 1;
    static constexpr std::uint64_t kGenerationMask = (std::uint64_t(1) << 24) - 1;

    static std::uint64_t pack(std::uint64_t generation, std::uint64_t chunks, std::uint64_t next) {
        return (generation << 40) | (chunks << 20) | next;
    }

    ThreadPool() : threads_(default_thread_count()) {}

    // Claims and runs chunks of loop `generation` until none is left.
    void work_on(std::uint64_t generation) {
        bool& in_region = in_region_flag();
        in_region = true;
        std::uint64_t word = claim_.load(std::memory_order_acquire);
        for (;;) {
            if ((word >> 40) != generation) break;
            const std::uint64_t chunks = (word >> 20) & 0xFFFFF, next = word & 0xFFFFF;
            if (next >= chunks) break;
            if (!claim_.compare_exchange_weak(word, word + 1, std::memory_order_acq_rel)) continue;
            const Index first = items_ * static_cast<Index>(next) / static_cast<Index>(chunks);
            const Index end = items_ * static_cast<Index>(next + 1) / static_cast<Index>(chunks);
            call_(context_, first, end);
            done_chunks_.fetch_add(1, std::memory_order_acq_rel);
            word = claim_.load(std::memory_order_acquire);
        }
        in_region = false;
    }

    void worker_loop(std::uint64_t seen) {
        for (;;) {
            // Spin a little: the next loop usually starts within microseconds.
            const auto spin_until = std::chrono::steady_clock::now() + std::chrono::microseconds(kSpinMicros);
            std::uint64_t word = claim_.load(std::memory_order_acquire);
            for (int i = 0; (word >> 40) == seen && !stop_.load(std::memory_order_relaxed); ++i) {
                if ((i & 63) == 63 && std::chrono::steady_clock::now() >= spin_until) break;
                cpu_relax();
                word = claim_.load(std::memory_order_acquire);
            }
            if ((word >> 40) == seen && !stop_.load(std::memory_order_relaxed)) {
                std::unique_lock<std::mutex> lock(wake_mutex_);
                sleeping_.fetch_add(1, std::memory_order_seq_cst);
                wake_.wait(lock, [&] {
                    return (claim_.load(std::memory_order_seq_cst) >> 40) != seen ||
                           stop_.load(std::memory_order_relaxed);
                });
                sleeping_.fetch_sub(1, std::memory_order_relaxed);
                word = claim_.load(std::memory_order_acquire);
            }
            if (stop_.load(std::memory_order_relaxed)) return;
            seen = word >> 40;
            work_on(seen);
        }
    }

    // Called with run_mutex_ held.
    void start_workers(int count) {
        while (static_cast<int>(workers_.size()) < count) {
            const std::uint64_t current = claim_.load(std::memory_order_relaxed) >> 40;
            workers_.emplace_back([this, current] { worker_loop(current); });
        }
    }
    void stop_workers() {
        {
            std::lock_guard<std::mutex> lock(wake_mutex_);
            stop_.store(true);
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
        stop_.store(false);
    }

    std::atomic<int> threads_;
    std::mutex run_mutex_;                // one loop at a time
    std::vector<std::thread> workers_;
    std::atomic<std::uint64_t> claim_{0};  // generation (24 bits) | chunks (20) | next chunk (20)
    std::atomic<Index> done_chunks_{0};
    std::atomic<int> sleeping_{0};
    std::atomic<bool> stop_{false};
    std::mutex wake_mutex_;
    std::condition_variable wake_;
    // The current loop; written before claim_ is published, read only by a chunk's claimant.
    std::uint64_t generation_ = 0;
    Index items_ = 0;
    void (*call_)(void*, Index, Index) = nullptr;
    void* context_ = nullptr;
};

}  // namespace detail

inline int num_threads() { return detail::ThreadPool::instance().threads(); }

inline void set_num_threads(int n) {
    SEEMOE_CHECK(n >= 1, "[set_num_threads] need at least one thread, got ", n);
    detail::keep_eigen_single_threaded();
    detail::ThreadPool::instance().set_threads(n);
}

inline bool in_parallel_region() { return detail::in_region_flag(); }

// Calls body(i) for i in [0, n), split into one contiguous chunk per thread when there is more
// than one item and we are not already inside a parallel region. `body` must not throw.
template <typename Body>
void parallel_for(Index n, Body&& body) {
    detail::keep_eigen_single_threaded();
    if (n > 1 && !in_parallel_region()) {
        detail::ThreadPool::instance().run(n, body, /*dynamic=*/false);
        return;
    }
    for (Index i = 0; i < n; ++i) body(i);
}

// Same, handing out one item at a time: for items of very different cost (experts with uneven
// loads, parameters of very different sizes).
template <typename Body>
void parallel_for_dynamic(Index n, Body&& body) {
    detail::keep_eigen_single_threaded();
    if (n > 1 && !in_parallel_region()) {
        detail::ThreadPool::instance().run(n, body, /*dynamic=*/true);
        return;
    }
    for (Index i = 0; i < n; ++i) body(i);
}

}  // namespace seemoe
