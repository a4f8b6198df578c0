// examples/seemoe/distributed.hpp — the MPI team: `mpirun -np N seemoe train|bench ...`.
//
// Compiled only when the example links seemoe::mpi (SEEMOE_WITH_MPI). main() makes an MpiTeam
// when the program was started by a process manager (mpirun, srun, ...), and the trainer talks to
// it through the Team interface of team.hpp:
//   * start(): rank 0's parameters are broadcast to every rank, and the gradient reducer is built
//     (buckets of 4 MB in reverse parameter order, seemoe/dist/data_parallel.hpp);
//   * shard(): each rank trains on its contiguous slice of the global batch, which every rank
//     computes from the same (seed, step) schedule, so the slices are disjoint;
//   * reduce_loss(): one all-reduce of (targets, loss x targets) gives the global batch's loss and
//     this rank's loss scale (its share of the targets, times N);
//   * reduce_gradients(): the bucketed all-reduce that averages the gradients;
//   * agree()/check_same(): a failure on one rank (a missing file, other flags) stops every rank
//     with that rank's message instead of leaving the others waiting in a collective.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <seemoe/dist/communicator.hpp>
#include <seemoe/dist/data_parallel.hpp>

#include "team.hpp"

namespace cli {

// Whether a process manager started this process as one rank of a job (so MPI must be set up):
// the variables Open MPI, MPICH/Hydra, PMIx and Slurm's PMI give their ranks.
inline bool started_by_mpi_launcher() {
    for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK"})
        if (std::getenv(name)) return true;
    return false;
}

class MpiTeam : public Team {
public:
    explicit MpiTeam(bool expert_parallel = false)
        : comm_(seemoe::dist::Communicator::world()), expert_parallel_(expert_parallel) {
        // Ranks that share a machine share its cores: without OMP_NUM_THREADS each takes its part.
        MPI_Comm node = MPI_COMM_NULL;
        MPI_Comm_split_type(comm_.handle(), MPI_COMM_TYPE_SHARED, comm_.rank(), MPI_INFO_NULL, &node);
        int local = 1;
        if (node != MPI_COMM_NULL) {
            MPI_Comm_size(node, &local);
            MPI_Comm_free(&node);
        }
        local_ranks_ = local;
    }

    int rank() const override { return comm_.rank(); }
    int size() const override { return comm_.size(); }
    bool expert_parallel() const override { return expert_parallel_; }
    std::string mode() const override {
        if (size() == 1) return "single process (MPI, 1 rank)";
        return format("data parallel over %d ranks (MPI)", size());
    }
    // Cores per rank on this machine, the default thread count when OMP_NUM_THREADS is not set.
    int default_threads() const {
        const int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
        return std::max(1, cores / local_ranks_);
    }

    void agree(const std::function<void()>& fn) override {
        std::string message, hint = "see 'seemoe --help'";
        bool ok = true;
        try {
            fn();
        } catch (const CliError& e) {
            ok = false;
            message = e.what();
            hint = e.hint();
        } catch (const std::exception& e) {
            ok = false;
            message = e.what();
        }
        // The hint travels with the message, after a separator no message contains.
        try {
            comm_.check_all(ok, message + '\x1f' + hint);
        } catch (const seemoe::Error& e) {
            const std::string text = e.what();
            const std::size_t cut = text.rfind('\x1f');
            throw AgreedError(text.substr(0, cut), cut == std::string::npos ? hint : text.substr(cut + 1), leader());
        }
    }

    void check_same(const std::string& what, const std::string& name) override {
        std::string root = what;
        comm_.broadcast(root, 0);
        agree([&] {
            if (root != what)
                throw CliError(format("rank %d was given other %s than rank 0", rank(), name.c_str()),
                               "give every rank the same command line (and the same data and --out)");
        });
    }

    void start(const std::vector<seemoe::Tensor<float>>& params) override {
        seemoe::dist::broadcast_parameters(params, comm_, 0);
        reducer_ = std::make_unique<seemoe::dist::GradientReducer<float>>(params, comm_);
    }

    std::vector<Index> shard(const std::vector<Index>& global) const override {
        const seemoe::dist::Shard s =
            seemoe::dist::batch_shard(static_cast<Index>(global.size()), comm_.rank(), comm_.size());
        return std::vector<Index>(global.begin() + s.begin, global.begin() + s.end);
    }

    TeamLoss reduce_loss(double loss, Index targets) override {
        double totals[2] = {static_cast<double>(targets), loss * static_cast<double>(targets)};
        comm_.all_reduce_sum(totals, 2);
        const Index all = static_cast<Index>(totals[0]);
        if (all <= 0) return {0.0, 0.0, 0};
        return {totals[1] / totals[0], static_cast<double>(targets) * size() / totals[0], all};
    }

    void reduce_gradients() override {
        if (reducer_) reducer_->average();
    }
    void barrier() override { comm_.barrier(); }

    TeamCommStats comm_stats() const override {
        if (!reducer_) return {};
        return {reducer_->stats().seconds, reducer_->stats().bytes};
    }
    std::int64_t gradient_bytes_per_step() const override {
        if (!reducer_ || reducer_->stats().calls == 0) return 0;
        return reducer_->stats().bytes / (reducer_->stats().calls / reducer_->num_buckets());
    }

    // For failures agree() cannot catch (one rank alone, between collectives): end the whole job.
    [[noreturn]] void abort(int code) const { comm_.abort(code); }

private:
    seemoe::dist::Communicator comm_;
    bool expert_parallel_ = false;
    int local_ranks_ = 1;
    std::unique_ptr<seemoe::dist::GradientReducer<float>> reducer_;
};

}  // namespace cli
