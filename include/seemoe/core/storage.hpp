// seemoe/core/storage.hpp — where tensor memory comes from: Storage<T> and the buffer cache.
//
// A Storage<T> is a flat, 64-byte aligned, uninitialised buffer of T, shared (by shared_ptr)
// between a tensor and its reshapes. Its memory comes from one process-wide cache of freed
// buffers, so a training loop that allocates the same activation and gradient sizes step after
// step reuses warm memory. Buffers of 64 KB and up are mapped from the OS directly (mmap) and
// unmapped when the cache lets them go, so the process's resident memory follows what tensors
// and the cache hold rather than the C allocator's high-water mark. The one knob a user sees is
// set_buffer_cache_limit(); 0 turns the cache off.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <utility>

#include "common.hpp"

// Whether cached-size buffers are pages mapped from the OS (mmap/munmap) or come from the heap:
// mapped on Unix-like systems, except under AddressSanitizer, which watches only the heap.
#if (defined(__unix__) || defined(__APPLE__)) && !SEEMOE_ASAN
#define SEEMOE_MAPPED_BUFFERS 1
#include <sys/mman.h>
#include <unistd.h>
#else
#define SEEMOE_MAPPED_BUFFERS 0
#endif

namespace seemoe {

namespace detail {

// A process-wide cache of freed tensor buffers, so that a training loop, which allocates the
// same activation and gradient sizes step after step, reuses warm memory instead of asking the
// OS for fresh pages (a page fault per 4 KB, then a zero fill, is a large share of a step).
// Buffers from kMinBytes up are rounded up to one of 8 size classes per power of two (at most
// 12.5% slack) and, when freed, parked under their class; a request takes the most recently
// parked buffer of its class or of a class at most 25% bigger. Smaller buffers go straight to
// the heap. Shapes that change from step to step (the tokens each expert receives) would pile
// up buffers of every size, so a request the cache cannot serve first returns the longest-parked
// buffers to the system while live + parked bytes would exceed 33/32 of the largest live total
// seen: the footprint stays within 3% of the largest working set (a training step's parameters,
// AdamW moments, gradients and activations; measured on the seemore preset, a wider margin of
// 1/8 cost 30 MB of resident memory and no speed). Thread-safe (one mutex) and bounded by
// limit() parked bytes. The cache is never destroyed, so buffers freed during static
// destruction still have somewhere to go.
//
// Cached-size buffers come from mmap and go back with munmap: freed to malloc instead, they
// would stay resident in its heap (glibc returns only the top of a heap to the system), and the
// resident set would keep every size the cache ever let go of. The price of the tight margin is
// fresh pages: about 28 MB a step on seemore, which as 4 KB pages (a fault and a zero fill
// each) cost 5% of the step; mappings of 2 MB and up therefore ask for transparent huge pages
// (MADV_HUGEPAGE), one fault per 2 MB, and the step is as fast as with the heap (measured:
// median ratio 0.99, AMD EPYC Zen 5). Small buffers use the heap. Under AddressSanitizer
// everything uses the heap, which ASan watches.
class BufferCache {
public:
    static constexpr std::size_t kMinBytes = std::size_t(1) << 16;
#if SEEMOE_ASAN
    // Under AddressSanitizer the cache is off by default, so a use after free is still caught.
    static constexpr std::size_t kDefaultLimit = 0;
#else
    static constexpr std::size_t kDefaultLimit = std::size_t(1) << 30;
#endif

    static BufferCache& instance() {
        static BufferCache* cache = new BufferCache();
        return *cache;
    }

    // The bytes actually reserved for a request of `bytes`.
    static std::size_t capacity_for(std::size_t bytes) {
        if (bytes < kMinBytes) return (bytes + 63) / 64 * 64;
        std::size_t octave = kMinBytes;
        while (octave * 2 <= bytes) octave *= 2;
        const std::size_t step = octave / 8;
        return (bytes + step - 1) / step * step;
    }

    // A 64-byte aligned buffer of at least `capacity` (= capacity_for(bytes)) bytes. `capacity`
    // is updated to the size of the buffer handed out, which the caller passes back to release().
    void* allocate(std::size_t& capacity) {
        if (capacity >= kMinBytes) {
            std::lock_guard<std::mutex> lock(mutex_);
            auto it = parked_.lower_bound(capacity);
            if (it != parked_.end() && it->first <= capacity + capacity / 4) {
                capacity = it->first;
                void* p = it->second.back().second;
                it->second.pop_back();
                if (it->second.empty()) parked_.erase(it);
                parked_bytes_ -= capacity;
                note_live(capacity);
                return p;
            }
            if (it != parked_.end() && can_split(capacity)) {
                // A much bigger buffer: hand out its head and park the rest as a buffer of its
                // own. Its pages are resident already, where a fresh mapping would fault in
                // every page again (the tokens per expert change each step, so requests do
                // not repeat exactly).
                const std::size_t whole = it->first;
                char* p = static_cast<char*>(it->second.back().second);
                it->second.pop_back();
                if (it->second.empty()) parked_.erase(it);
                parked_bytes_ -= whole;
                const std::size_t rest = whole - capacity;
                if (rest >= kMinBytes) {
                    parked_[rest].emplace_back(++clock_, p + capacity);
                    parked_bytes_ += rest;
                } else {
                    unmap_pages(p + capacity, rest);
                }
                note_live(capacity);
                return p;
            }
            const std::size_t budget = peak_live_ + peak_live_ / 32;
            const std::size_t footprint = live_bytes_ + parked_bytes_ + capacity;
            if (footprint > budget) free_oldest(footprint - budget);
            note_live(capacity);
            return map_pages(capacity);
        }
        return ::operator new(capacity, std::align_val_t{64});
    }

    void release(void* p, std::size_t capacity) {
        if (capacity >= kMinBytes) {
            std::lock_guard<std::mutex> lock(mutex_);
            live_bytes_ -= capacity;
            if (parked_bytes_ + capacity <= limit_) {
                parked_[capacity].emplace_back(++clock_, p);
                parked_bytes_ += capacity;
                return;
            }
            unmap_pages(p, capacity);
            return;
        }
        ::operator delete(p, std::align_val_t{64});
    }

    // Parked bytes allowed; 0 turns the cache off. Lowering it frees what no longer fits.
    void set_limit(std::size_t bytes) {
        std::lock_guard<std::mutex> lock(mutex_);
        limit_ = bytes;
        if (parked_bytes_ > limit_) free_oldest(parked_bytes_ - limit_);
    }
    std::size_t limit() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return limit_;
    }
    std::size_t parked_bytes() const {
        std::lock_guard<std::mutex> lock(mutex_);
        return parked_bytes_;
    }

private:
    BufferCache() = default;

    // Whether a mapped buffer can be cut after `capacity` bytes: only at a page boundary, and
    // never under ASan, where buffers come from the heap.
    static bool can_split(std::size_t capacity) {
#if SEEMOE_MAPPED_BUFFERS
        static const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
        return capacity % page == 0;
#else
        (void)capacity;
        return false;
#endif
    }

    // A cached-size buffer straight from the OS (page aligned, hence 64-byte aligned), and back.
    static void* map_pages(std::size_t bytes) {
#if SEEMOE_MAPPED_BUFFERS
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) throw std::bad_alloc();
#if defined(MADV_HUGEPAGE)
        // Only a hint: where the system has transparent huge pages off, 4 KB pages it is.
        if (bytes >= (std::size_t(2) << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
        return p;
#else
        return ::operator new(bytes, std::align_val_t{64});
#endif
    }
    static void unmap_pages(void* p, std::size_t bytes) {
#if SEEMOE_MAPPED_BUFFERS
        munmap(p, bytes);
#else
        (void)bytes;
        ::operator delete(p, std::align_val_t{64});
#endif
    }

    void note_live(std::size_t capacity) {
        live_bytes_ += capacity;
        peak_live_ = std::max(peak_live_, live_bytes_);
    }

    // Returns at least `bytes` (or everything) of the longest-parked buffers to the system.
    void free_oldest(std::size_t bytes) {
        std::size_t freed = 0;
        while (freed < bytes && !parked_.empty()) {
            auto oldest = parked_.begin();
            for (auto it = parked_.begin(); it != parked_.end(); ++it)
                if (it->second.front().first < oldest->second.front().first) oldest = it;
            unmap_pages(oldest->second.front().second, oldest->first);
            freed += oldest->first;
            parked_bytes_ -= oldest->first;
            oldest->second.pop_front();
            if (oldest->second.empty()) parked_.erase(oldest);
        }
    }

    mutable std::mutex mutex_;
    // capacity -> parked buffers, oldest first, each with the time it was parked
    std::map<std::size_t, std::deque<std::pair<std::uint64_t, void*>>> parked_;
    std::size_t parked_bytes_ = 0;
    std::size_t live_bytes_ = 0;  // handed out and not yet released (cached sizes only)
    std::size_t peak_live_ = 0;
    std::size_t limit_ = kDefaultLimit;
    std::uint64_t clock_ = 0;
};

}  // namespace detail

// Bytes of freed tensor memory seemoe keeps for reuse (default 1 GiB); 0 turns the cache off and
// frees what it holds. Peak memory is the largest working set plus at most this much.
inline void set_buffer_cache_limit(std::size_t bytes) { detail::BufferCache::instance().set_limit(bytes); }
// Bytes currently held by the cache (freed, ready for reuse).
inline std::size_t buffer_cache_bytes() { return detail::BufferCache::instance().parked_bytes(); }

// A flat, 64-byte aligned, uninitialised buffer of T. Shared (by shared_ptr) between a tensor
// and its reshapes/detached views. The memory comes from (and returns to) the buffer cache.
template <typename T>
class Storage {
public:
    explicit Storage(Index n) : size_(n) {
        if (n > 0) {
            capacity_ = detail::BufferCache::capacity_for(sizeof(T) * static_cast<std::size_t>(n));
            data_ = static_cast<T*>(detail::BufferCache::instance().allocate(capacity_));
        }
    }
    ~Storage() {
        if (data_) detail::BufferCache::instance().release(data_, capacity_);
    }
    Storage(const Storage&) = delete;
    Storage& operator=(const Storage&) = delete;

    T* data() { return data_; }
    const T* data() const { return data_; }
    Index size() const { return size_; }

private:
    T* data_ = nullptr;
    Index size_ = 0;
    std::size_t capacity_ = 0;
};

}  // namespace seemoe
