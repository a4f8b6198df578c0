// examples/seemoe/team.hpp — the processes a command runs on, as the trainer and bench see them.
//
// `seemoe train` is written once for one process and for many: everything it needs to know about
// the others goes through a Team. The base class is the single process (rank 0 of 1: the whole
// batch, nothing to exchange). distributed.hpp derives the MPI team (mpirun -np N seemoe ...),
// which shards each global batch, averages the gradients and makes failures collective; it is
// compiled only when the example is built against seemoe::mpi (SEEMOE_WITH_MPI), so this file and
// the rest of the example stay free of MPI.
//
// With --expert-parallel the MPI team also splits the experts of every MoE layer over the ranks
// (enable_expert_parallel, before start): their gradients are then not averaged, the gradient norm
// adds every rank's experts (clip_gradients), and gather_model() brings every expert (and its
// AdamW state) back to every rank before the leader evaluates or saves, inside a LeaderAlone
// scope in which its model runs without the other ranks.
//
// Convention: every method may be collective. All ranks call them in the same order; only the
// leader (rank 0) prints, evaluates and writes files.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "cli.hpp"
#include <seemoe/core/tensor.hpp>
#include <seemoe/nn/moe.hpp>
#include <seemoe/optim/adam.hpp>
#include <seemoe/optim/clip.hpp>

namespace cli {

// A failure every rank of the team knows of (Team::agree): main() reports it once, from the leader,
// and every rank exits with code 2 in good order.
class AgreedError : public CliError {
public:
    AgreedError(const std::string& message, std::string hint, bool leader)
        : CliError(message, std::move(hint)), leader_(leader) {}
    bool leader() const { return leader_; }

private:
    bool leader_;
};

// The loss of a step over the whole team.
struct TeamLoss {
    double mean = 0;   // mean cross-entropy over every rank's targets: the global batch's loss
    double scale = 1;  // multiply this rank's mean loss by it before backward (see Team::reduce_loss)
    Index targets = 0; // the targets of the whole global batch
};

// What communication cost so far (zero for a single process): the gradient all-reduce and, with
// expert parallel, the all-to-all exchanges of the MoE layers.
struct TeamCommStats {
    double seconds = 0;             // both
    std::int64_t bytes = 0;         // handed to MPI, both
    double alltoall_seconds = 0;
    std::int64_t alltoall_bytes = 0, alltoall_remote_bytes = 0;  // handed; addressed to other ranks
};

class Team {
public:
    virtual ~Team() = default;

    virtual int rank() const { return 0; }
    virtual int size() const { return 1; }
    bool leader() const { return rank() == 0; }
    virtual bool expert_parallel() const { return false; }
    virtual std::string mode() const { return "single process"; }

    // Runs fn; with several ranks, a failure on any rank becomes an AgreedError on every rank.
    virtual void agree(const std::function<void()>& fn) { fn(); }
    // Checks that every rank was given the same `what` (the run's settings and model config as
    // JSON): ranks that disagree would train different models and wait for each other forever.
    virtual void check_same(const std::string& /*what*/, const std::string& /*name*/) {}

    // Ends what start() began: the expert split refers to the model's layers, so it must go
    // before the model does (TeamStart below calls this).
    virtual void stop() {}

    // --expert-parallel: split the `num_experts` experts of every MoE layer over the ranks (checked
    // to divide evenly). Call before start().
    virtual void enable_expert_parallel(Index /*num_experts*/) {
        throw CliError("--expert-parallel splits the experts over several processes, and this is one",
                       "start it under mpirun -np N (N dividing the experts per layer), or drop --expert-parallel");
    }

    // Makes every rank's model (parameters; optimiser state is restored from the same files)
    // equal to the leader's, and prepares the gradient exchange for `params`; with expert
    // parallel, the model's MoE layers are split from here on.
    virtual void start(const std::vector<seemoe::Tensor<float>>& /*params*/,
                       const std::vector<seemoe::nn::SparseMoE<float>*>& /*moe_layers*/ = {}) {}
    // The samples of a global batch this rank trains on: all of them for a single process.
    virtual std::vector<Index> shard(const std::vector<Index>& global) const { return global; }
    // The global batch's mean loss from this rank's mean `loss` over `targets` targets, and the
    // factor for this rank's loss that makes the averaged gradient the global batch's gradient.
    virtual TeamLoss reduce_loss(double loss, Index targets) { return {loss, 1.0, targets}; }
    // After backward: every rank's gradients replaced by the team's average (with expert
    // parallel: the shared ones; each rank's experts' are scaled to the global batch's).
    virtual void reduce_gradients() {}
    // Clips the global gradient norm of the whole team's model to max_norm; returns the norm
    // before clipping (the same on every rank).
    virtual double clip_gradients(const std::vector<seemoe::Tensor<float>>& params, double max_norm) {
        return seemoe::clip_grad_norm(params, max_norm);
    }
    // Before the leader evaluates or saves: every rank's model (and, given, the optimiser state)
    // whole and current. Only expert parallel has anything to do.
    virtual void gather_model(seemoe::AdamW<float>* /*optimizer*/) {}
    // While true, the leader's model runs alone (no exchange with ranks that are not running it).
    virtual void set_alone(bool /*alone*/) {}
    // Waits until every rank has come here.
    virtual void barrier() {}

    virtual TeamCommStats comm_stats() const { return {}; }
    // Bytes one step hands to the gradient all-reduce (0 alone).
    virtual std::int64_t gradient_bytes_per_step() const { return 0; }

    // Rows for the run table: ranks, batches, mode.
    std::vector<std::pair<std::string, std::string>> describe(Index global_batch) const {
        std::vector<std::pair<std::string, std::string>> rows;
        rows.push_back({"parallel mode", mode()});
        rows.push_back({"ranks", std::to_string(size())});
        const Index per_rank = global_batch / size(), extra = global_batch % size();
        rows.push_back({"global batch", std::to_string(global_batch)});
        rows.push_back({"per-rank batch", extra == 0 ? std::to_string(per_rank)
                                                     : format("%lld or %lld", static_cast<long long>(per_rank + 1),
                                                              static_cast<long long>(per_rank))});
        return rows;
    }
};

// Team::start on construction, Team::stop when it goes: declare it after the model.
class TeamStart {
public:
    TeamStart(Team& team, const std::vector<seemoe::Tensor<float>>& params,
              const std::vector<seemoe::nn::SparseMoE<float>*>& moe_layers)
        : team_(team) {
        team_.start(params, moe_layers);
    }
    ~TeamStart() { team_.stop(); }
    TeamStart(const TeamStart&) = delete;
    TeamStart& operator=(const TeamStart&) = delete;

private:
    Team& team_;
};

// The leader's model runs without the other ranks while this lives (evaluation, captions).
class LeaderAlone {
public:
    explicit LeaderAlone(Team& team) : team_(team) { team_.set_alone(true); }
    ~LeaderAlone() { team_.set_alone(false); }
    LeaderAlone(const LeaderAlone&) = delete;
    LeaderAlone& operator=(const LeaderAlone&) = delete;

private:
    Team& team_;
};

// The MoE layers of a model's decoder, for Team::start.
template <typename Model>
std::vector<seemoe::nn::SparseMoE<float>*> moe_layers(Model& model) {
    std::vector<seemoe::nn::SparseMoE<float>*> layers;
    for (auto& block : model.decoder.blocks) layers.push_back(&block.moe);
    return layers;
}

}  // namespace cli
