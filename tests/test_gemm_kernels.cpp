// Tests of the float kernel paths (ops/gemm_kernel.hpp): every path this build can run on this
// CPU (AVX-512, AVX2/FMA, NEON, portable) against a double reference on awkward sizes, directly
// and through matmul/linear, attention and the Adam/AdamW update (plain loops run_vectorized
// compiles for the path); the block sizes derived from the caches; choosing a path by name
// (SEEMOE_KERNEL) and the errors for a bad one; reading cache sizes.
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#ifdef SEEMOE_CLI_PATH
#include "cli_run.hpp"
#include "thread_guard.hpp"
#endif

using namespace seemoe;

namespace {

// Restores the kernel path and thread count a test changed.
struct KernelPathGuard {
    seemoe::testing::ThreadCountGuard threads;
    KernelPath saved_path = active_kernel_path();
    ~KernelPathGuard() { set_kernel_path(saved_path); }
};

std::vector<float> uniform(Index n, Rng& rng) {
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& x : v) x = static_cast<float>(rng.uniform() * 2.0 - 1.0);
    return v;
}

// Largest |c - (c0 + op(A) op(B))| / (sum |terms| + 1e-3) over C (M x N, ldc), in double; c0 is
// C's content before the product when `accumulate`, else 0.
double worst_error(Index M, Index N, Index K, const std::vector<float>& a, bool ta, const std::vector<float>& b,
                   bool tb, const std::vector<float>& c0, bool accumulate, const std::vector<float>& c, Index ldc) {
    double worst = 0;
    for (Index i = 0; i < M; ++i)
        for (Index j = 0; j < N; ++j) {
            const double start = accumulate ? c0[static_cast<std::size_t>(i * ldc + j)] : 0.0;
            double ref = start, mag = std::fabs(start);
            for (Index k = 0; k < K; ++k) {
                const double x = ta ? a[static_cast<std::size_t>(k * M + i)] : a[static_cast<std::size_t>(i * K + k)];
                const double y = tb ? b[static_cast<std::size_t>(j * K + k)] : b[static_cast<std::size_t>(k * N + j)];
                ref += x * y;
                mag += std::fabs(x * y);
            }
            worst = std::max(worst, std::fabs(c[static_cast<std::size_t>(i * ldc + j)] - ref) / (mag + 1e-3));
        }
    return worst;
}

}  // namespace

TEST_CASE("every kernel path agrees with a double reference on awkward sizes", "[ops][perf][kernels]") {
    Rng rng(16);
    const std::vector<KernelPath> paths = available_kernel_paths();
    REQUIRE(!paths.empty());
    CHECK(paths.back() == KernelPath::portable);  // always there, always last
    for (KernelPath path : paths) {
        // Rows: one, fewer than a micro-tile, a tile and a bit, many tiles and an edge. Depth 1 and
        // 1500 (more than one depth block on every path). Columns: one, and an edge past 32.
        for (Index M : {1, 7, 33, 511})
            for (Index K : {1, 1500})
                for (Index N : {1, 45})
                    for (int ta = 0; ta < 2; ++ta)
                        for (int tb = 0; tb < 2; ++tb)
                            for (int accumulate = 0; accumulate < 2; ++accumulate) {
                                const std::vector<float> a = uniform(M * K, rng), b = uniform(K * N, rng);
                                const Index ldc = N + 3;  // C rows further apart than N: the kernel keeps to its block
                                const std::vector<float> c0 = uniform(M * ldc, rng);
                                std::vector<float> c = c0;
                                const detail::SgemmOperand op_a{a.data(), ta ? M : K, ta != 0};
                                const detail::SgemmOperand op_b{b.data(), tb ? K : N, tb != 0};
                                detail::sgemm_kernel(M, N, K, op_a, op_b, c.data(), ldc, accumulate != 0, path);
                                INFO("path " << kernel_path_name(path) << " M " << M << " N " << N << " K " << K
                                             << " ta " << ta << " tb " << tb << " accumulate " << accumulate);
                                CHECK(worst_error(M, N, K, a, ta != 0, b, tb != 0, c0, accumulate != 0, c, ldc) < 1e-6);
                                for (Index i = 0; i < M; ++i)  // the 3 columns past N untouched
                                    for (Index j = N; j < ldc; ++j)
                                        CHECK(c[static_cast<std::size_t>(i * ldc + j)] ==
                                              c0[static_cast<std::size_t>(i * ldc + j)]);
                                if (ta == 0 && tb == 1) {  // the few-row kernel of generation, same product
                                    std::vector<float> r = c0;
                                    detail::sgemm_rows(M, N, K, a.data(), K, b.data(), K, r.data(), ldc,
                                                       accumulate != 0, path);
                                    CHECK(worst_error(M, N, K, a, false, b, true, c0, accumulate != 0, r, ldc) < 1e-6);
                                }
                            }
    }
}

TEST_CASE("matmul and linear give the reference product on every kernel path, on 1 and 2 threads",
          "[ops][perf][kernels]") {
    KernelPathGuard guard;
    Rng rng(61);
    for (KernelPath path : available_kernel_paths()) {
        set_kernel_path(path);
        REQUIRE(active_kernel_path() == path);
        for (int threads : {1, 2}) {
            set_num_threads(threads);
            for (Index M : {1, 7, 33, 511}) {
                const Index K = 1500, N = 70;
                const Tensorf x = Tensorf::rand({M, K}, rng, -1.f, 1.f);  // (M, K)
                const Tensorf w = Tensorf::rand({N, K}, rng, -1.f, 1.f);  // (N, K)
                const Tensorf y = linear(x, w, Tensorf());                // (M, N)
                const Tensorf z = matmul(x, w, false, true);              // (M, N)
                const std::vector<float> a = x.to_vector(), b = w.to_vector(), none;
                INFO("path " << kernel_path_name(path) << " threads " << threads << " M " << M);
                CHECK(worst_error(M, N, K, a, false, b, true, none, false, y.to_vector(), N) < 1e-6);
                CHECK(worst_error(M, N, K, a, false, b, true, none, false, z.to_vector(), N) < 1e-6);
            }
        }
    }
}

namespace {

// One attention call's result and input gradients (for the upstream gradient sine_seed), as
// double: what the test below compares between a float kernel path and the double reference.
struct AttentionRun {
    std::vector<double> out, dq, dk, dv;
};

template <typename T>
std::vector<double> as_double(const std::vector<T>& v) {
    return std::vector<double>(v.begin(), v.end());
}

// An upstream gradient that differs element by element: seed[i] = sin(i).
template <typename T>
Tensor<T> sine_seed(const Shape& shape) {
    std::vector<T> seed(static_cast<std::size_t>(seemoe::numel(shape)));
    for (std::size_t i = 0; i < seed.size(); ++i) seed[i] = static_cast<T>(std::sin(static_cast<double>(i)));
    return Tensor<T>::from_vector(shape, seed);
}

// scaled_dot_product_attention on q (B, H, T, D), k (B, H, S, D), v (B, H, S, Dv) given as double
// values, computed in T, then backward with d_out[i] = sin(i).
template <typename T>
AttentionRun run_sdpa(const Shape& qs, const Shape& ks, const Shape& vs, const std::vector<double>& q,
                      const std::vector<double>& k, const std::vector<double>& v, bool causal) {
    auto leaf = [](const Shape& shape, const std::vector<double>& values) {
        Tensor<T> t = Tensor<T>::from_vector(shape, std::vector<T>(values.begin(), values.end()));
        t.requires_grad_();
        return t;
    };
    Tensor<T> tq = leaf(qs, q), tk = leaf(ks, k), tv = leaf(vs, v);
    const Tensor<T> out = scaled_dot_product_attention(tq, tk, tv, causal);  // (B, H, T, Dv)
    out.backward(sine_seed<T>(out.shape()));
    return {as_double(out.to_vector()), as_double(tq.grad().to_vector()), as_double(tk.grad().to_vector()),
            as_double(tv.grad().to_vector())};
}

// Largest |got - want| / (1 + max |want|).
double worst_relative(const std::vector<double>& got, const std::vector<double>& want) {
    double scale = 0, worst = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(got[i] - want[i]));
    return worst / (1.0 + scale);
}

}  // namespace

TEST_CASE("attention's products agree with the double reference on every kernel path", "[ops][perf][kernels]") {
    // Attention runs its per-head products through the kernel path (strided operands read in
    // place, transposed for K^T, P^T, V^T, dS^T); double runs them on Eigen. Sizes: single
    // query/key/dim, more keys than queries (causal, as with a KV cache) and fewer (not causal),
    // rows past the AVX-512 dot-tile limit of 64, head dims below, at and past a 16-float vector,
    // Dv != D.
    struct Case {
        Index B, H, T, S, D, Dv;
        bool causal;
    };
    const Case cases[] = {{1, 1, 1, 1, 1, 1, false}, {2, 3, 7, 33, 17, 5, true}, {2, 3, 33, 7, 16, 32, false},
                          {1, 2, 65, 70, 32, 16, true}, {1, 2, 70, 65, 16, 16, false}, {2, 2, 37, 37, 64, 64, true}};
    KernelPathGuard guard;
    Rng rng(62);
    for (const Case& c : cases) {
        const Shape qs{c.B, c.H, c.T, c.D}, ks{c.B, c.H, c.S, c.D}, vs{c.B, c.H, c.S, c.Dv};
        auto values = [&](const Shape& shape) { return Tensord::randn(shape, rng).to_vector(); };
        const std::vector<double> q = values(qs), k = values(ks), v = values(vs);
        const AttentionRun want = run_sdpa<double>(qs, ks, vs, q, k, v, c.causal);
        for (KernelPath path : available_kernel_paths()) {
            set_kernel_path(path);
            for (int threads : {1, 2}) {
                set_num_threads(threads);
                const AttentionRun got = run_sdpa<float>(qs, ks, vs, q, k, v, c.causal);
                INFO("path " << kernel_path_name(path) << " threads " << threads << " B " << c.B << " H " << c.H
                             << " T " << c.T << " S " << c.S << " D " << c.D << " Dv " << c.Dv << " causal "
                             << c.causal);
                CHECK(worst_relative(got.out, want.out) < 1e-5);
                CHECK(worst_relative(got.dq, want.dq) < 1e-5);
                CHECK(worst_relative(got.dk, want.dk) < 1e-5);
                CHECK(worst_relative(got.dv, want.dv) < 1e-5);
            }
        }
    }
}

TEST_CASE("self_attention reads its heads in place from qkv on every kernel path", "[ops][perf][kernels]") {
    // The heads of qkv (B, T, 3C) are strided slices of its rows (row stride 3C), and their
    // gradients are written, not added, into one fresh buffer: the same results as the double
    // reference on every path.
    KernelPathGuard guard;
    Rng rng(63);
    for (bool causal : {true, false}) {
        const Index B = 2, T = 37, H = 4, C = 4 * 24;
        const Tensord qkv_d = Tensord::randn({B, T, 3 * C}, rng);  // (B, T, 3C)
        Tensord ref = qkv_d.detach().requires_grad_();
        const Tensord out_d = self_attention(ref, H, causal);  // (B, T, C)
        out_d.backward(sine_seed<double>(out_d.shape()));
        for (KernelPath path : available_kernel_paths()) {
            set_kernel_path(path);
            const std::vector<double> values = qkv_d.to_vector();
            Tensorf qkv = Tensorf::from_vector(qkv_d.shape(), std::vector<float>(values.begin(), values.end()));
            qkv.requires_grad_();
            const Tensorf out = self_attention(qkv, H, causal);  // (B, T, C)
            out.backward(sine_seed<float>(out.shape()));
            INFO("path " << kernel_path_name(path) << " causal " << causal);
            CHECK(worst_relative(as_double(out.to_vector()), out_d.to_vector()) < 1e-5);
            CHECK(worst_relative(as_double(qkv.grad().to_vector()), ref.grad().to_vector()) < 1e-5);
        }
    }
}

namespace {

// Three steps of Adam (L2 decay) or AdamW (decoupled decay) from `start` with `grads`, computed in T.
template <typename T>
std::vector<double> adam_steps(const Tensord& start, const std::vector<Tensord>& grads, bool decoupled) {
    const Index n = start.numel();
    Tensor<T> p = Tensor<T>::from_vector(start.shape(), std::vector<T>(start.data(), start.data() + n));
    p.requires_grad_();
    auto run = [&](auto& optimizer) {
        for (const Tensord& g : grads) {
            std::copy_n(g.data(), n, p.grad_data());
            optimizer.step();
        }
    };
    if (decoupled) {
        AdamW<T> optimizer({p}, AdamWOptions{0.01, 0.9, 0.99, 1e-6, 0.05});
        run(optimizer);
    } else {
        Adam<T> optimizer({p}, AdamOptions{0.01, 0.9, 0.99, 1e-6, 0.05});
        run(optimizer);
    }
    return as_double(p.to_vector());
}

}  // namespace

TEST_CASE("Adam and AdamW in float follow the double update on every kernel path", "[optim][perf][kernels]") {
    // The update runs as plain loops compiled for the path's instructions (run_vectorized) with
    // the square roots in a pass of their own (sqrt_in_place): one element, a vector and a bit,
    // two 2048-element blocks and a ragged tail. Double runs the same loops as the build compiled
    // them and is checked against the formula in test_optim.cpp.
    KernelPathGuard guard;
    Rng rng(64);
    for (Index n : {1, 17, 2 * 2048 + 37}) {
        const Tensord start = Tensord::randn({n}, rng);
        std::vector<Tensord> grads;
        for (int t = 0; t < 3; ++t) grads.push_back(Tensord::randn({n}, rng));
        for (bool decoupled : {false, true}) {
            const std::vector<double> want = adam_steps<double>(start, grads, decoupled);
            for (KernelPath path : available_kernel_paths()) {
                set_kernel_path(path);
                INFO("path " << kernel_path_name(path) << " n " << n << " decoupled " << decoupled);
                CHECK(worst_relative(adam_steps<float>(start, grads, decoupled), want) < 1e-6);
            }
        }
    }
}

TEST_CASE("block sizes follow the caches and the vector width", "[ops][kernels]") {
    CpuInfo zen5;  // the AMD EPYC (Zen 5) VM: 48 KB L1d, 1 MB L2, 32 MB L3
    zen5.l1d = 48 * 1024, zen5.l2 = 1024 * 1024, zen5.l3 = 32 * 1024 * 1024;
    const GemmParams p = detail::derive_gemm_params(KernelPath::avx512, zen5);
    // By hand: kc = 12288 floats * 2/3 / 32 = 256; mc = 262144 / 8 / 256 = 128 -> 120 (12s);
    // nc = 8388608 / 8 / 256 = 4096; dot depth = 12288 * 5/6 / 10 = 1024; prefetch 12288 / 6.
    CHECK(p.mr == 12);
    CHECK(p.nr == 32);
    CHECK(p.kc == 256);
    CHECK(p.mc == 120);
    CHECK(p.nc == 4096);
    CHECK(p.dot_kc == 1024);
    CHECK(p.prefetch_floats == 2048);

    CpuInfo small;  // a 32 KB / 256 KB / 8 MB client core
    small.l1d = 32 * 1024, small.l2 = 256 * 1024, small.l3 = 8 * 1024 * 1024;
    for (KernelPath path : {KernelPath::avx512, KernelPath::avx2, KernelPath::neon}) {
        for (const CpuInfo& cpu : {zen5, small}) {
            const GemmParams q = detail::derive_gemm_params(path, cpu);
            INFO(kernel_path_name(path) << " L1 " << cpu.l1d);
            // accumulators + B registers + one for A fit in the register file
            CHECK(q.mr * q.nr / q.vector_floats + q.nr / q.vector_floats + 1 <= (path == KernelPath::avx2 ? 16 : 32));
            CHECK(q.kc % 16 == 0);
            CHECK(q.kc * q.nr * 4 <= cpu.l1d * 2 / 3);  // a B micro-panel in two thirds of L1
            CHECK(q.mc % q.mr == 0);
            CHECK(q.mc * q.kc * 4 <= cpu.l2 / 8);  // the packed A block in an eighth of L2
            CHECK(q.nc % q.nr == 0);
            CHECK(q.nc * q.kc * 4 <= cpu.l3 / 8);
        }
        // A smaller L1 gives a shallower depth block.
        CHECK(detail::derive_gemm_params(path, small).kc < detail::derive_gemm_params(path, zen5).kc);
    }
    CHECK(detail::derive_gemm_params(KernelPath::avx2, zen5).kc == 512);  // 12288 * 2/3 / 16
    CHECK(detail::derive_gemm_params(KernelPath::neon, zen5).kc == 672);  // 12288 * 2/3 / 12 = 682 -> 672
}

TEST_CASE("kernel paths are chosen by name, and a bad name is an error naming SEEMOE_KERNEL", "[ops][kernels]") {
    KernelPathGuard guard;
    for (KernelPath path : available_kernel_paths()) CHECK(parse_kernel_path(kernel_path_name(path)) == path);
    CHECK_THROWS_WITH(parse_kernel_path("avx3"), Catch::Contains("SEEMOE_KERNEL=avx3: unknown kernel path"));
    for (KernelPath path : {KernelPath::avx512, KernelPath::avx2, KernelPath::neon}) {
        if (kernel_path_available(path)) continue;
        CHECK_THROWS_WITH(parse_kernel_path(kernel_path_name(path)), Catch::Contains("SEEMOE_KERNEL="));
        CHECK_THROWS_WITH(set_kernel_path(path), Catch::Contains("[set_kernel_path]"));
    }
#if defined(__x86_64__)
    CHECK(kernel_path_compiled(KernelPath::avx512));  // every x86-64 build carries both x86 kernels
    CHECK(kernel_path_compiled(KernelPath::avx2));
    CHECK(!kernel_path_compiled(KernelPath::neon));
    CHECK(kernel_path_available(KernelPath::avx512) == cpu_info().avx512f);
#elif defined(__aarch64__)
    CHECK(kernel_path_available(KernelPath::neon));
    CHECK(active_kernel_path() != KernelPath::portable);
#endif
    set_kernel_path(KernelPath::portable);
    CHECK(active_kernel_path() == KernelPath::portable);
}

TEST_CASE("cache sizes are read in sysfs spelling, and every level has a size", "[core][kernels]") {
    CHECK(detail::parse_cache_size("48K") == 48 * 1024);
    CHECK(detail::parse_cache_size("1024K") == 1024 * 1024);
    CHECK(detail::parse_cache_size("32M") == 32 * 1024 * 1024);
    CHECK(detail::parse_cache_size("512") == 512);
    CHECK(detail::parse_cache_size("") == 0);
    const CpuInfo& cpu = cpu_info();
    CHECK(cpu.l1d > 0);
    CHECK(cpu.l2 > 0);
    CHECK(cpu.l3 > 0);
    CHECK(!cpu.cache_source.empty());
    CHECK(!cpu.model.empty());
}

#ifdef SEEMOE_CLI_PATH
TEST_CASE("cli: a bad SEEMOE_KERNEL is one error line, exit 2, before anything runs", "[cli][kernels]") {
    using namespace cli_test;
    const fs::path dir = scratch("bad_kernel");
    check_error(run_cli(dir, "bench --preset tiny --steps 1", "SEEMOE_KERNEL=avx3"),
                "SEEMOE_KERNEL=avx3: unknown kernel path");
    check_error(run_cli(dir, train_tiny(dir / "run"), "SEEMOE_KERNEL=fast"), "SEEMOE_KERNEL=fast");
    CHECK(!fs::exists(dir / "run"));
}
#endif
