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
// With --expert-parallel (seemoe/dist/expert_parallel.hpp) start() also splits the experts of every
// MoE layer over the ranks: the reducer then averages only the other parameters, each rank's
// experts' gradients are scaled by 1/N instead (the loss scale above makes the all-to-all backward
// deliver N times the global batch's gradient to the owner), clip_gradients() adds the experts'
// norms over the ranks, and gather_model() broadcasts every expert (and its AdamW state) from its
// owner before rank 0 evaluates or saves.
#pragma once

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <seemoe/dist/communicator.hpp>
#include <seemoe/dist/data_parallel.hpp>
#include <seemoe/dist/expert_parallel.hpp>

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
    MpiTeam() : comm_(seemoe::dist::Communicator::world()) {
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
        if (expert_parallel_)
            return format("expert parallel over %d ranks (MPI; %lld of %lld experts per layer on each), the rest "
                          "data parallel",
                          size(), static_cast<long long>(num_experts_ / size()), static_cast<long long>(num_experts_));
        if (size() == 1) return "single process (MPI, 1 rank)";
        return format("data parallel over %d ranks (MPI)", size());
    }

    void enable_expert_parallel(Index num_experts) override {
        if (size() == 1) Team::enable_expert_parallel(num_experts);
        if (num_experts % size() != 0)
            throw CliError(format("--expert-parallel splits the %lld experts of every MoE layer over the ranks, and "
                                  "%lld experts cannot be split evenly over %d ranks",
                                  static_cast<long long>(num_experts), static_cast<long long>(num_experts), size()),
                           format("start a number of ranks that divides %lld (mpirun -np N), or drop "
                                  "--expert-parallel",
                                  static_cast<long long>(num_experts)));
        expert_parallel_ = true;
        num_experts_ = num_experts;
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

    void start(const std::vector<seemoe::Tensor<float>>& params,
               const std::vector<seemoe::nn::SparseMoE<float>*>& moe_layers) override {
        seemoe::dist::broadcast_parameters(params, comm_, 0);
        if (expert_parallel_) {
            if (moe_layers.empty())
                throw CliError("--expert-parallel needs a model with MoE layers", "drop --expert-parallel");
            experts_ = std::make_unique<seemoe::dist::ExpertParallel<float>>(moe_layers, comm_);
            experts_->attach();
            reducer_ = std::make_unique<seemoe::dist::GradientReducer<float>>(experts_->non_expert_parameters(params),
                                                                             comm_);
        } else {
            reducer_ = std::make_unique<seemoe::dist::GradientReducer<float>>(params, comm_);
        }
    }

    void stop() override {
        experts_.reset();  // detaches the layers' dispatchers while the model is still there
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
        if (experts_) experts_->scale_expert_gradients(1.0f / static_cast<float>(size()));
    }
    double clip_gradients(const std::vector<seemoe::Tensor<float>>& params, double max_norm) override {
        if (experts_) return experts_->clip_grad_norm(params, max_norm);
        return seemoe::clip_grad_norm(params, max_norm);
    }
    void gather_model(seemoe::AdamW<float>* optimizer) override {
        if (experts_) experts_->gather(optimizer);
    }
    void set_alone(bool alone) override {
        if (!experts_) return;
        if (alone) {
            experts_->detach();
        } else {
            experts_->attach();
        }
    }
    void barrier() override { comm_.barrier(); }

    TeamCommStats comm_stats() const override {
        TeamCommStats s;
        if (reducer_) {
            s.seconds = reducer_->stats().seconds;
            s.bytes = reducer_->stats().bytes;
        }
        if (experts_) {
            const seemoe::dist::CommStats& a = experts_->stats();
            s.alltoall_seconds = a.seconds;
            s.alltoall_bytes = a.bytes;
            s.alltoall_remote_bytes = a.remote_bytes;
            s.seconds += a.seconds;
            s.bytes += a.bytes;
        }
        return s;
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
    Index num_experts_ = 0;
    int local_ranks_ = 1;
    std::unique_ptr<seemoe::dist::GradientReducer<float>> reducer_;
    std::unique_ptr<seemoe::dist::ExpertParallel<float>> experts_;
};

}  // namespace cli
