// tests/dist/test_dist.cpp — the MPI layer, run as `mpirun -np 2 seemoe_dist_tests` (see CMakeLists.txt).
//
// Every rank runs every test case, in the same order, so collectives meet. Checks are CHECK (never
// REQUIRE) around collectives: a failed check must not make one rank skip a collective the other
// waits in. The data-parallel cases train a small model for 5 AdamW steps twice on each rank: once
// data parallel over the communicator, once alone with the whole global batch (the reference), and
// compare the two.
//
// `seemoe_dist_tests bad-input` is not a Catch2 run: rank 1 gets a malformed batch, and every rank
// must print the message and exit 2 (tests/dist/expect_failure.cmake checks the output and code).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <seemoe/dist/communicator.hpp>
#include <seemoe/dist/data_parallel.hpp>
#include <seemoe/dist/expert_parallel.hpp>
#include <seemoe/seemoe.hpp>
#include <string>
#include <vector>

using seemoe::Index;
using seemoe::Rng;
using seemoe::Tensor;
namespace dist = seemoe::dist;

namespace {

const dist::Communicator& world() {
    static const dist::Communicator comm = dist::Communicator::world();
    return comm;
}

// ---- a small problem: a tiny vision MoE language model and 5 global batches -------------------

seemoe::nn::VLMConfig tiny_config() {
    seemoe::nn::VLMConfig c;
    c.vision.image_size = 16;
    c.vision.patch_size = 8;
    c.vision.dim = 16;
    c.vision.n_blocks = 1;
    c.vision.n_heads = 2;
    c.vision.dropout = 0.0;
    c.decoder.vocab_size = 12;
    c.decoder.n_embd = 16;
    c.decoder.n_head = 2;
    c.decoder.n_layer = 2;
    c.decoder.num_experts = 4;
    c.decoder.top_k = 2;
    c.decoder.block_size = 32;
    c.decoder.dropout = 0.0;
    c.visual_tokens = seemoe::nn::VisualTokens::Patches;
    return c;
}

template <typename T>
struct Batch {
    Tensor<T> images;                 // (B, 3, S, S)
    std::vector<Index> ids, targets;  // (B, L) each; targets -100 past each caption's end
    Index B = 0, L = 0;

    // Samples [begin, end) of the batch.
    Batch slice(Index begin, Index end) const {
        Batch out;
        out.B = end - begin;
        out.L = L;
        const Index image = images.numel() / B;
        Tensor<T> part = Tensor<T>::empty({out.B, images.size(1), images.size(2), images.size(3)});
        std::copy_n(images.data() + begin * image, out.B * image, part.data());  // (b, 3, S, S)
        out.images = part;
        out.ids.assign(ids.begin() + begin * L, ids.begin() + end * L);
        out.targets.assign(targets.begin() + begin * L, targets.begin() + end * L);
        return out;
    }
    Index target_count() const {
        return static_cast<Index>(std::count_if(targets.begin(), targets.end(), [](Index t) { return t >= 0; }));
    }
};

// Global batches of B samples whose captions have different lengths (so the ranks' slices hold
// different numbers of targets, which the loss scale must account for).
template <typename T>
std::vector<Batch<T>> make_batches(const seemoe::nn::VLMConfig& c, Index n_batches, Index B, Index L) {
    Rng rng(77);
    std::vector<Batch<T>> out;
    for (Index i = 0; i < n_batches; ++i) {
        Batch<T> b;
        b.B = B;
        b.L = L;
        const Index S = c.vision.image_size;
        b.images = Tensor<T>::randn({B, 3, S, S}, rng);  // (B, 3, S, S)
        b.ids.assign(static_cast<std::size_t>(B * L), c.pad_id);
        b.targets.assign(static_cast<std::size_t>(B * L), -100);
        for (Index s = 0; s < B; ++s) {
            const Index length = rng.randint(1, L);  // caption characters; then <eos>
            b.ids[s * L] = c.bos_id;
            for (Index t = 0; t < length; ++t) {
                const Index ch = rng.randint(3, c.decoder.vocab_size);
                b.targets[s * L + t] = ch;
                b.ids[s * L + t + 1] = ch;
            }
            b.targets[s * L + length] = c.eos_id;
        }
        out.push_back(std::move(b));
    }
    return out;
}

template <typename T>
struct Trained {
    std::vector<double> losses;
    std::vector<Tensor<T>> params;
};

// 5 AdamW steps (clip 1) with every rank's whole batch, no communication: the reference.
template <typename T>
Trained<T> train_alone(const std::vector<Batch<T>>& batches) {
    Rng rng(5);
    seemoe::nn::VisionMoELanguageModel<T> model(tiny_config(), rng);
    model.eval();  // no dropout, no router noise: the computation is deterministic
    seemoe::AdamW<T> opt(model.parameters(), {1e-3, 0.9, 0.999, 1e-8, 1e-2});
    Trained<T> out;
    for (const Batch<T>& b : batches) {
        opt.zero_grad();
        Tensor<T> loss = model.loss(b.images, b.ids, b.targets, b.L, rng);  // ()
        out.losses.push_back(static_cast<double>(loss.item()));
        loss.backward();
        seemoe::clip_grad_norm(model.parameters(), 1.0);
        opt.step();
    }
    out.params = model.parameters();
    return out;
}

// The same 5 steps data parallel: each rank its slice, loss scaled, gradients averaged.
template <typename T>
Trained<T> train_data_parallel(const std::vector<Batch<T>>& batches, const dist::Communicator& comm) {
    // Ranks other than 0 start from other weights: broadcast_parameters must make them equal.
    Rng rng(comm.rank() == 0 ? 5 : 1000 + comm.rank());
    seemoe::nn::VisionMoELanguageModel<T> model(tiny_config(), rng);
    model.eval();
    dist::broadcast_parameters(model.parameters(), comm);
    seemoe::AdamW<T> opt(model.parameters(), {1e-3, 0.9, 0.999, 1e-8, 1e-2});
    // Small buckets, so that the test covers several of them.
    dist::GradientReducer<T> reducer(model.parameters(), comm, 4096);
    Trained<T> out;
    for (const Batch<T>& global : batches) {
        const dist::Shard shard = dist::batch_shard(global.B, comm.rank(), comm.size());
        const Batch<T> b = global.slice(shard.begin, shard.end);
        const Index count = b.target_count();
        const double scale = dist::loss_scale(comm, count);
        opt.zero_grad();
        Tensor<T> loss = model.loss(b.images, b.ids, b.targets, b.L, rng);  // (), mean over this slice
        const double weighted = static_cast<double>(loss.item()) * static_cast<double>(count);
        out.losses.push_back(comm.all_reduce_sum(weighted) /
                             static_cast<double>(comm.all_reduce_sum(static_cast<std::int64_t>(count))));
        seemoe::mul(loss, static_cast<T>(scale)).backward();
        reducer.average();
        seemoe::clip_grad_norm(model.parameters(), 1.0);
        opt.step();
    }
    out.params = model.parameters();
    return out;
}

// max over tensors of max|a - b| / max|b|: the relative difference of each tensor, at its worst.
template <typename T>
double max_relative_difference(const std::vector<Tensor<T>>& a, const std::vector<Tensor<T>>& b) {
    double worst = 0;
    for (std::size_t i = 0; i < a.size(); ++i) {
        const double scale = b[i].vector().template cast<double>().cwiseAbs().maxCoeff();
        const double diff = (a[i].vector().template cast<double>() - b[i].vector().template cast<double>())
                                .cwiseAbs()
                                .maxCoeff();
        worst = std::max(worst, diff / std::max(scale, 1e-30));
    }
    return worst;
}

template <typename T>
void check_data_parallel_equals_one_process(double tolerance) {
    const dist::Communicator& comm = world();
    const auto batches = make_batches<T>(tiny_config(), 5, 5, 10);  // B = 5: uneven slices on 2 ranks
    const Trained<T> alone = train_alone(batches);
    const Trained<T> parallel = train_data_parallel(batches, comm);
    REQUIRE(parallel.losses.size() == 5);
    for (std::size_t s = 0; s < 5; ++s) {
        INFO("step " << s + 1 << ": " << parallel.losses[s] << " vs " << alone.losses[s]);
        CHECK(std::abs(parallel.losses[s] - alone.losses[s]) <= tolerance * std::abs(alone.losses[s]));
    }
    const double diff = max_relative_difference(parallel.params, alone.params);
    INFO("rank " << comm.rank() << ": max relative parameter difference " << diff);
    CHECK(diff <= tolerance);
    // The replicas are identical to each other, bit for bit: rank 0's sum of every parameter.
    double checksum = 0;
    for (const auto& p : parallel.params) checksum += p.vector().template cast<double>().sum();
    double root = checksum;
    comm.broadcast(&root, 1, 0);
    CHECK(checksum == root);
    // And training moved them: the test would pass trivially if no step changed anything.
    Rng rng(5);
    seemoe::nn::VisionMoELanguageModel<T> initial(tiny_config(), rng);
    CHECK(max_relative_difference(parallel.params, initial.parameters()) > 1e3 * tolerance);
}

}  // namespace

TEST_CASE("Communicator: rank, size, broadcast, all-reduce, all-gather", "[dist]") {
    const dist::Communicator& comm = world();
    const int r = comm.rank(), n = comm.size();
    CHECK(n >= 2);
    CHECK(r >= 0);
    CHECK(r < n);
    std::vector<double> values = {r == 0 ? 1.5 : -7.0, r == 0 ? 2.5 : -7.0};
    comm.broadcast(values.data(), 2, 0);
    CHECK(values == std::vector<double>{1.5, 2.5});
    std::string text = r == 1 ? "from rank one" : "";
    comm.broadcast(text, 1);
    CHECK(text == "from rank one");
    std::vector<float> sum = {float(r + 1), float(10 * (r + 1))};
    comm.all_reduce_sum(sum.data(), 2);
    CHECK(sum == std::vector<float>{float(n * (n + 1) / 2), float(10 * n * (n + 1) / 2)});
    std::int64_t biggest = r * 3;
    comm.all_reduce_max(&biggest, 1);
    CHECK(biggest == 3 * (n - 1));
    const std::vector<int> gathered = comm.all_gather(&r, 1);
    for (int q = 0; q < n; ++q) CHECK(gathered[q] == q);
    comm.barrier();
}

TEST_CASE("Communicator: all_to_all_v with uneven counts", "[dist]") {
    const dist::Communicator& comm = world();
    const int r = comm.rank(), n = comm.size();
    // Rank r sends q + r + 1 values to rank q, each 100 * r + q.
    std::vector<Index> send_counts(n), recv_counts(n);
    std::vector<double> send;
    for (int q = 0; q < n; ++q) {
        send_counts[q] = q + r + 1;
        recv_counts[q] = r + q + 1;  // what rank q sends to r
        for (Index i = 0; i < send_counts[q]; ++i) send.push_back(100.0 * r + q);
    }
    Index total = 0;
    for (Index c : recv_counts) total += c;
    std::vector<double> recv(static_cast<std::size_t>(total), -1);
    comm.all_to_all_v(send.data(), send_counts, recv.data(), recv_counts);
    std::vector<double> expected;
    for (int q = 0; q < n; ++q)
        for (Index i = 0; i < recv_counts[q]; ++i) expected.push_back(100.0 * q + r);
    CHECK(recv == expected);
    CHECK_THROWS_WITH(comm.all_to_all_v(send.data(), {1}, recv.data(), recv_counts),
                      Catch::Contains("MPI_Alltoallv") && Catch::Contains("one count per rank"));
}

TEST_CASE("Communicator: MPI errors become seemoe::Error naming the call", "[dist]") {
    const dist::Communicator& comm = world();
    double x = 0;
    CHECK_THROWS_WITH(comm.broadcast(&x, 1, comm.size() + 3),  // no such root
                      Catch::StartsWith("[dist] MPI_Bcast failed: "));
    comm.barrier();  // still usable afterwards
}

TEST_CASE("Communicator: split into sub-communicators", "[dist]") {
    const dist::Communicator& comm = world();
    const dist::Communicator alone = comm.split(comm.rank(), 0);  // one communicator per rank
    CHECK(alone.size() == 1);
    CHECK(alone.rank() == 0);
    const dist::Communicator reversed = comm.split(0, -comm.rank());  // everyone, order reversed
    CHECK(reversed.size() == comm.size());
    CHECK(reversed.rank() == comm.size() - 1 - comm.rank());
    CHECK(reversed.all_reduce_sum(1) == comm.size());
}

TEST_CASE("agree: a failure on one rank becomes the same Error on every rank", "[dist]") {
    const dist::Communicator& comm = world();
    CHECK_NOTHROW(comm.agree([] {}));
    CHECK_THROWS_WITH(comm.agree([&] {
        SEEMOE_CHECK(comm.rank() != 1, "[test] rank one was given bad input");
    }),
                      "rank 1: [test] rank one was given bad input");
    // The lowest failing rank's message wins.
    CHECK_THROWS_WITH(comm.agree([&] { SEEMOE_CHECK(false, "[test] failed on rank ", comm.rank()); }),
                      "rank 0: [test] failed on rank 0");
}

TEST_CASE("batch_shard: contiguous, disjoint, covering, sizes differ by at most one", "[dist]") {
    const dist::Shard a = dist::batch_shard(5, 0, 2), b = dist::batch_shard(5, 1, 2);
    CHECK(a.begin == 0);
    CHECK(a.end == 3);
    CHECK(b.begin == 3);
    CHECK(b.end == 5);
    Index next = 0;
    for (int r = 0; r < 4; ++r) {
        const dist::Shard s = dist::batch_shard(10, r, 4);
        CHECK(s.begin == next);
        CHECK(s.size() == (r < 2 ? 3 : 2));
        next = s.end;
    }
    CHECK(next == 10);
    CHECK_THROWS_WITH(dist::batch_shard(1, 0, 2), Catch::Contains("use a batch of at least 2"));
}

TEST_CASE("GradientReducer: buckets in reverse order, averages, keeps 'no gradient'", "[dist]") {
    const dist::Communicator& comm = world();
    const int r = comm.rank(), n = comm.size();
    // Four parameters of 3, 5, 2 and 4 doubles; buckets of at most 6 doubles (48 bytes).
    std::vector<Tensor<double>> params;
    for (Index size : {3, 5, 2, 4}) params.push_back(Tensor<double>::zeros({size}).requires_grad_());
    dist::GradientReducer<double> reducer(params, comm, 48);
    REQUIRE(reducer.num_buckets() == 3);
    CHECK(reducer.bucket_members(0) == std::vector<Index>{3, 2});
    CHECK(reducer.bucket_members(1) == std::vector<Index>{1});
    CHECK(reducer.bucket_members(2) == std::vector<Index>{0});
    // Parameter i element j has gradient (r + 1) * (10 i + j) on every rank; parameter 2 has a
    // gradient on rank 1 only; parameter 3 on no rank.
    for (Index i = 0; i < 2; ++i)
        for (Index j = 0; j < params[i].numel(); ++j) params[i].grad_data()[j] = (r + 1) * (10.0 * i + j);
    if (r == 1)
        for (Index j = 0; j < 2; ++j) params[2].grad_data()[j] = 5.0 + j;
    reducer.average();
    const double mean_factor = (n + 1) / 2.0;  // mean of r + 1 over the ranks
    for (Index i = 0; i < 2; ++i)
        for (Index j = 0; j < params[i].numel(); ++j) CHECK(params[i].grad_data()[j] == mean_factor * (10.0 * i + j));
    REQUIRE(params[2].has_grad());
    CHECK(params[2].grad_data()[0] == 5.0 / n);
    CHECK(params[2].grad_data()[1] == 6.0 / n);
    CHECK_FALSE(params[3].has_grad());
    CHECK(reducer.stats().calls == 3);
    CHECK(reducer.stats().bytes == static_cast<std::int64_t>((14 + 4) * sizeof(double)));
}

TEST_CASE("Data parallel equals one process with the global batch (float, 5 AdamW steps)", "[dist]") {
    check_data_parallel_equals_one_process<float>(1e-5);
}

TEST_CASE("Data parallel equals one process with the global batch (double, 5 AdamW steps)", "[dist]") {
    check_data_parallel_equals_one_process<double>(1e-12);
}

// Expert parallel: a SparseMoE layer (4 experts, top 2) whose experts are split over the ranks,
// trained 5 AdamW steps on each rank's slice of 7 tokens, against one process running the same
// layer (the fused single-process op) on all 7 tokens. Loss: sum over tokens of out . w.
template <typename T>
void check_expert_parallel_equals_one_process(double tolerance) {
    const dist::Communicator& comm = world();
    const Index C = 8, N = 7, E = 4, steps = 5;
    Rng data_rng(11);
    std::vector<Tensor<T>> xs, ws;
    for (Index s = 0; s < steps; ++s) {
        xs.push_back(Tensor<T>::randn({N, C}, data_rng));  // (N, C)
        ws.push_back(Tensor<T>::randn({N, C}, data_rng));  // (N, C)
    }
    auto make_layer = [&] {
        Rng rng(3);
        seemoe::nn::SparseMoE<T> moe(C, E, 2, 4 * C, T(0), rng);
        moe.eval();  // no router noise: the routing is a function of the tokens
        return moe;
    };
    auto rows = [](const Tensor<T>& t, Index begin, Index end) {  // (end - begin, C)
        const Index C = t.size(1);
        return Tensor<T>::from_vector({end - begin, C}, std::vector<T>(t.data() + begin * C, t.data() + end * C));
    };

    // One process, all tokens.
    seemoe::nn::SparseMoE<T> alone = make_layer();
    seemoe::AdamW<T> alone_opt(alone.parameters(), {1e-3, 0.9, 0.999, 1e-8, 1e-2});
    std::vector<std::vector<Index>> routed(steps, std::vector<Index>(E, 0));  // tokens per expert
    Rng unused(0);
    for (Index s = 0; s < steps; ++s) {
        alone_opt.zero_grad();
        for (Index e : alone.router.forward(xs[s], unused).experts) ++routed[s][e];
        seemoe::sum(seemoe::mul(alone.forward(xs[s], unused), ws[s])).backward();
        alone_opt.step();
    }

    // Expert parallel over the ranks, each with its slice of the tokens.
    seemoe::nn::SparseMoE<T> layer = make_layer();
    seemoe::AdamW<T> opt(layer.parameters(), {1e-3, 0.9, 0.999, 1e-8, 1e-2});
    dist::GradientReducer<T> reducer(layer.parameters(), comm);
    const dist::Shard shard = dist::batch_shard(N, comm.rank(), comm.size());
    const Index El = E / comm.size();
    for (Index s = 0; s < steps; ++s) {
        opt.zero_grad();
        dist::ExpertParallelStats stats;
        Tensor<T> out = dist::sparse_moe_expert_parallel(layer, rows(xs[s], shard.begin, shard.end), unused, comm,
                                                         &stats);  // (n, C)
        // Every expert received exactly the tokens the single-process routing sends it.
        for (Index l = 0; l < El; ++l) {
            INFO("step " << s << ", expert " << comm.rank() * El + l);
            CHECK(stats.rows_per_local_expert[l] == routed[s][comm.rank() * El + l]);
        }
        seemoe::sum(seemoe::mul(out, rows(ws[s], shard.begin, shard.end))).backward();
        reducer.reduce(T(1));  // the loss is a sum over tokens: the ranks' gradients add up
        opt.step();
    }
    const double diff = max_relative_difference(layer.parameters(), alone.parameters());
    INFO("rank " << comm.rank() << ": max relative parameter difference " << diff);
    CHECK(diff <= tolerance);
    CHECK(max_relative_difference(layer.parameters(), make_layer().parameters()) > 1e3 * tolerance);
}

TEST_CASE("Expert parallel equals one process, every expert gets its tokens (float, 5 AdamW steps)", "[dist]") {
    check_expert_parallel_equals_one_process<float>(1e-5);
}

TEST_CASE("Expert parallel equals one process, every expert gets its tokens (double, 5 AdamW steps)", "[dist]") {
    check_expert_parallel_equals_one_process<double>(1e-12);
}

// The bad-input scenario: rank 1's batch has targets that do not fill (B, L). Every rank must end
// with the message and exit code 2, without a hang.
static int run_bad_input() {
    const dist::Communicator& comm = world();
    try {
        const auto batches = make_batches<float>(tiny_config(), 1, 4, 6);
        Rng rng(5);
        seemoe::nn::VisionMoELanguageModel<float> model(tiny_config(), rng);
        dist::GradientReducer<float> reducer(model.parameters(), comm);
        const dist::Shard shard = dist::batch_shard(4, comm.rank(), comm.size());
        Batch<float> b = batches[0].slice(shard.begin, shard.end);
        if (comm.rank() == 1) b.targets.pop_back();  // the bad input
        Tensor<float> loss;
        comm.agree([&] { loss = model.loss(b.images, b.ids, b.targets, b.L, rng); });
        loss.backward();
        reducer.average();
        std::printf("rank %d: no error\n", comm.rank());
        return 0;
    } catch (const seemoe::Error& e) {
        std::printf("rank %d stops: %s\n", comm.rank(), e.what());
        return 2;
    }
}

int main(int argc, char** argv) {
    dist::Environment env(argc, argv);
    if (argc == 2 && std::strcmp(argv[1], "bad-input") == 0) return run_bad_input();
    return Catch::Session().run(argc, argv);
}
