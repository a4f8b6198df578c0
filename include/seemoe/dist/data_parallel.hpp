// seemoe/dist/data_parallel.hpp — data-parallel training (DDP-style) over a Communicator.
//
// Every rank holds the whole model. One step on R ranks with a global batch of B samples:
//   1. batch_shard(B, rank, R): each rank takes its own contiguous slice of the global batch (all
//      ranks draw the same global batch from the same seed schedule, so the slices are disjoint
//      and together are exactly the batch one process would take);
//   2. forward and backward on the slice, the loss scaled by loss_scale() so that averaging the
//      ranks' gradients gives the gradient of the global batch's mean loss even when the slices
//      hold different numbers of target tokens;
//   3. GradientReducer::average(): the gradients, flattened into buckets of ~4 MB in reverse
//      parameter order (the order backward finishes them), are summed over the ranks with one
//      all-reduce per bucket and divided by R. Bucket i+1 is packed while bucket i is on the wire
//      (non-blocking all-reduce). Our autograd has no per-parameter hook, so reduction starts
//      after backward rather than during it;
//   4. the optimiser steps on identical gradients, so the replicas stay identical; start them
//      identical with broadcast_parameters() from rank 0.
// A parameter keeps "no gradient" (the optimiser skips it) only if it has none on every rank:
// each bucket carries one presence flag per parameter.
//
// Convention: the gradient the optimiser sees is the global batch's, so clipping and AdamW run
// unchanged; in exact arithmetic R ranks compute what one process computes with the whole batch
// (dropout masks and router noise aside: each rank draws its own).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "../core/tensor.hpp"
#include "communicator.hpp"

namespace seemoe::dist {

// A contiguous slice [begin, end) of a global batch of `global_batch` samples for `rank` of
// `size` ranks; the sizes differ by at most one (the first global_batch % size ranks take one more).
struct Shard {
    Index begin = 0, end = 0;
    Index size() const { return end - begin; }
};

inline Shard batch_shard(Index global_batch, int rank, int size) {
    SEEMOE_CHECK(size >= 1 && rank >= 0 && rank < size, "[batch_shard] rank ", rank, " of ", size);
    SEEMOE_CHECK(global_batch >= size, "[batch_shard] a global batch of ", global_batch, " samples cannot give each of ",
                 size, " ranks one; use a batch of at least ", size);
    const Index base = global_batch / size, extra = global_batch % size;
    Shard s;
    s.begin = rank * base + std::min<Index>(rank, extra);
    s.end = s.begin + base + (rank < extra ? 1 : 0);
    return s;
}

// The factor for a rank's mean loss over its `local_count` targets so that the average of the
// ranks' gradients is the gradient of the mean over all targets: local_count * R / global_count.
// Collective (one all-reduce of the counts); returns 0 when no rank has a target.
inline double loss_scale(const Communicator& comm, Index local_count) {
    const std::int64_t global_count = comm.all_reduce_sum(static_cast<std::int64_t>(local_count));
    if (global_count == 0) return 0.0;
    return static_cast<double>(local_count) * comm.size() / static_cast<double>(global_count);
}

// Copies every parameter's values from `root` to the other ranks.
template <typename T>
void broadcast_parameters(const std::vector<Tensor<T>>& params, const Communicator& comm, int root = 0) {
    for (const Tensor<T>& p : params) comm.broadcast(const_cast<Tensor<T>&>(p).data(), p.numel(), root);
}

// What the communication of a run cost, for `bench` and the trainer's summary.
struct CommStats {
    double seconds = 0;       // wall time inside the reducer (packing, MPI, unpacking)
    std::int64_t bytes = 0;   // payload handed to MPI (each rank; see README for the wire)
    std::int64_t remote_bytes = 0;  // of those, bytes addressed to other ranks (all-to-all only)
    std::int64_t calls = 0;   // collective calls
    void reset() { *this = CommStats{}; }
};

template <typename T>
class GradientReducer {
public:
    // `params` in the model's order; buckets of about bucket_bytes are formed from the last one.
    GradientReducer(std::vector<Tensor<T>> params, const Communicator& comm,
                    std::int64_t bucket_bytes = std::int64_t(4) << 20)
        : params_(std::move(params)), comm_(&comm) {
        SEEMOE_CHECK(bucket_bytes > 0, "[GradientReducer] bucket size must be positive, got ", bucket_bytes);
        const Index per_bucket = std::max<Index>(1, bucket_bytes / static_cast<Index>(sizeof(T)));
        Bucket current;
        for (Index i = static_cast<Index>(params_.size()) - 1; i >= 0; --i) {
            const Index n = params_[static_cast<std::size_t>(i)].numel();
            if (!current.members.empty() && current.elements + n > per_bucket) {
                buckets_.push_back(std::move(current));
                current = Bucket{};
            }
            current.members.push_back(i);
            current.elements += n;
        }
        if (!current.members.empty()) buckets_.push_back(std::move(current));
        for (Bucket& b : buckets_)  // the gradients, then one presence flag per parameter
            b.buffer.resize(static_cast<std::size_t>(b.elements + static_cast<Index>(b.members.size())));
    }

    // Replaces every rank's gradients by their average over the ranks. Collective.
    void average() { reduce(T(1) / static_cast<T>(comm_->size())); }

    // Replaces every rank's gradients by their sum over the ranks, times `scale`. Collective.
    void reduce(T scale) {
        const auto start = std::chrono::steady_clock::now();
        std::vector<Request> pending;
        pending.reserve(buckets_.size());
        for (Bucket& b : buckets_) {
            pack(b);
            pending.push_back(comm_->start_all_reduce_sum(b.buffer.data(), static_cast<Index>(b.buffer.size())));
            stats_.bytes += static_cast<std::int64_t>(b.buffer.size() * sizeof(T));
            ++stats_.calls;
        }
        for (std::size_t i = 0; i < buckets_.size(); ++i) {
            pending[i].wait();
            unpack(buckets_[i], scale);
        }
        stats_.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }

    Index num_buckets() const { return static_cast<Index>(buckets_.size()); }
    // The parameter indices of bucket b, in the order they are packed (reverse model order).
    const std::vector<Index>& bucket_members(Index b) const { return buckets_[static_cast<std::size_t>(b)].members; }
    const CommStats& stats() const { return stats_; }
    CommStats& stats() { return stats_; }

private:
    struct Bucket {
        std::vector<Index> members;
        Index elements = 0;
        std::vector<T> buffer;
    };

    void pack(Bucket& b) {
        T* dst = b.buffer.data();
        T* flags = dst + b.elements;
        for (std::size_t j = 0; j < b.members.size(); ++j) {
            const Tensor<T>& p = params_[static_cast<std::size_t>(b.members[j])];
            const Index n = p.numel();
            const T* g = p.grad_data_if_any();  // a zeroed-but-kept buffer counts as a gradient of zeros
            if (g) {
                std::copy_n(g, n, dst);
            } else {
                std::fill_n(dst, n, T(0));
            }
            flags[j] = g ? T(1) : T(0);
            dst += n;
        }
    }

    void unpack(const Bucket& b, T scale) {
        const T* src = b.buffer.data();
        const T* flags = src + b.elements;
        for (std::size_t j = 0; j < b.members.size(); ++j) {
            Tensor<T>& p = params_[static_cast<std::size_t>(b.members[j])];
            const Index n = p.numel();
            if (flags[j] > T(0)) {
                bool fresh = false;
                T* g = p.node()->grad_data_for_write(fresh);
                VectorMap<T>(g, n) = scale * ConstVectorMap<T>(src, n);
            }
            src += n;
        }
    }

    std::vector<Tensor<T>> params_;
    const Communicator* comm_;
    std::vector<Bucket> buckets_;
    CommStats stats_;
};

}  // namespace seemoe::dist
