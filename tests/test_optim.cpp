// Tests for optim/: SGD, Adam, AdamW, gradient clipping and learning-rate schedules.
//
// Optimiser tests set gradients by hand (through grad_data()) instead of running backward, so
// the numbers depend only on the update formulas. Expected values are derived in the comments and
// were cross-checked against torch.optim (PyTorch 1.13) in float64.
#include <catch2/catch.hpp>
#include <cmath>
#include <seemoe/optim/adam.hpp>
#include <seemoe/optim/clip.hpp>
#include <seemoe/optim/schedule.hpp>
#include <seemoe/optim/sgd.hpp>
#include <vector>

#include "thread_guard.hpp"

using namespace seemoe;

namespace {

template <typename T>
void set_grad(Tensor<T>& p, const std::vector<T>& g) {
    REQUIRE(static_cast<Index>(g.size()) == p.numel());
    std::copy(g.begin(), g.end(), p.grad_data());
}

template <typename T>
Tensor<T> param(const Shape& shape, const std::vector<T>& values) {
    Tensor<T> p = Tensor<T>::from_vector(shape, values);
    p.requires_grad_();
    return p;
}

void check_values(const Tensord& t, const std::vector<double>& expected, double margin = 1e-6) {
    REQUIRE(t.numel() == static_cast<Index>(expected.size()));
    for (Index i = 0; i < t.numel(); ++i) {
        INFO("element " << i);
        CHECK(t.data()[i] == Approx(expected[static_cast<std::size_t>(i)]).epsilon(0).margin(margin));
    }
}

// The fixed problem of the Adam/AdamW tests: w (2,) = [1, -2], b (1,) = [0.5], three steps with
// these gradients, lr 0.1, betas (0.9, 0.999), eps 1e-8, weight_decay 0.1.
const std::vector<std::vector<double>> kGradW = {{0.5, -1.0}, {-0.25, 0.5}, {1.0, 0.0}};
const std::vector<std::vector<double>> kGradB = {{2.0}, {1.0}, {-3.0}};

}  // namespace

TEST_CASE("Adam: three steps match the formula (L2 weight decay in the gradient)", "[optim]") {
    // Adam, per element, step t:  g' = g + 0.1 p;  m = 0.9 m + 0.1 g';  v = 0.999 v + 0.001 g'^2;
    // p -= (0.1 / (1 - 0.9^t)) * m / (sqrt(v) / sqrt(1 - 0.999^t) + 1e-8).
    //
    // w[0], from p = 1:
    //  t=1: g' = 0.5 + 0.1*1 = 0.6; m = 0.06; v = 0.00036; 1-0.9^1 = 0.1; 1-0.999^1 = 0.001;
    //       denom = sqrt(0.00036)/sqrt(0.001) + 1e-8 = 0.6 + 1e-8;
    //       p = 1 - (0.1/0.1) * 0.06/0.60000001 = 0.9000000016666666
    //  t=2: g' = -0.25 + 0.1*0.9000000016666666 = -0.15999999983;
    //       m = 0.9*0.06 + 0.1*g' = 0.03800000002; v = 0.999*0.00036 + 0.001*g'^2 = 0.00038523999995;
    //       1-0.9^2 = 0.19; 1-0.999^2 = 0.001999; denom = sqrt(v/0.001999) + 1e-8 = 0.4389947231;
    //       p = 0.9000000016666666 - (0.1/0.19) * 0.03800000002/0.4389947231 = 0.8544413674617625
    //  t=3: g' = 1 + 0.1*0.8544413674617625 = 1.085444137; m = 0.9*0.038 + 0.1*g' = 0.1427444137;
    //       v = 0.999*0.00038524 + 0.001*g'^2 = 0.001563043734; 1-0.9^3 = 0.271;
    //       1-0.999^3 = 0.002997001; denom = 0.7221744627;
    //       p = 0.8544413674617625 - (0.1/0.271) * 0.1427444137/0.7221744627 = 0.7815043998631658
    // w[1], from p = -2 (g = -1, 0.5, 0), the same arithmetic:
    //  t=1: g' = -1.2;          m = -0.12;          v = 0.00144;
    //       denom = 1.20000001;    p = -1.9000000008333333
    //  t=2: g' = 0.3099999999;  m = -0.07700000001; v = 0.00153466;
    //       denom = 0.8761928295;  p = -1.8537472646427609
    //  t=3: g' = -0.1853747265; m = -0.08783747265; v = 0.001567489129;
    //       denom = 0.7232006884;  p = -1.8089293433495808
    // b[0], from p = 0.5 (g = 2, 1, -3):
    //  t=1: g' = 2.05;          m = 0.205;          v = 0.0042025;
    //       denom = 2.05000001;    p = 0.4000000004878049
    //  t=2: g' = 1.04;          m = 0.2885;         v = 0.0052798975;
    //       denom = 1.62519827;    p = 0.306570104544592
    //  t=3: g' = -2.96934299;   m = -0.03728429895; v = 0.01409161539;
    //       denom = 2.168387768;   p = 0.31291493091573813
    const std::vector<std::vector<double>> expected = {
        {0.9000000016666666, -1.9000000008333333, 0.4000000004878049},
        {0.8544413674617625, -1.8537472646427609, 0.306570104544592},
        {0.7815043998631658, -1.8089293433495808, 0.31291493091573813}};

    Tensord w = param<double>({2}, {1.0, -2.0});
    Tensord b = param<double>({1}, {0.5});
    AdamOptions options;
    options.lr = 0.1;
    options.weight_decay = 0.1;
    Adam<double> opt({w, b}, options);
    for (std::size_t t = 0; t < 3; ++t) {
        set_grad(w, kGradW[t]);
        set_grad(b, kGradB[t]);
        opt.step();
        INFO("after step " << t + 1);
        check_values(w, {expected[t][0], expected[t][1]});
        check_values(b, {expected[t][2]});
    }
    // The state a checkpoint would save.
    CHECK(opt.step_count() == 3);
    CHECK(opt.state()[0].step == 3);
    CHECK(opt.state()[1].step == 3);
    check_values(opt.state()[0].exp_avg, {0.1427444136896176, -0.08783747265392758});
    check_values(opt.state()[0].exp_avg_sq, {0.0015630437339433732, 0.0015674891291600915}, 1e-12);
    check_values(opt.state()[1].exp_avg, {-0.03728429895});
    check_values(opt.state()[1].exp_avg_sq, {0.01409161539}, 1e-10);
}

TEST_CASE("AdamW: three steps match the formula (decoupled weight decay)", "[optim]") {
    // AdamW, per element, step t: p *= 1 - 0.1*0.1 = 0.99 first; then with the raw gradient g:
    // m = 0.9 m + 0.1 g;  v = 0.999 v + 0.001 g^2;
    // p -= (0.1 / (1 - 0.9^t)) * m / (sqrt(v) / sqrt(1 - 0.999^t) + 1e-8).
    //
    // w[0], from p = 1:
    //  t=1: p = 0.99; m = 0.05; v = 0.00025; denom = sqrt(0.00025)/sqrt(0.001) + 1e-8 = 0.50000001;
    //       p = 0.99 - (0.1/0.1) * 0.05/0.50000001 = 0.890000002
    //  t=2: p = 0.99*0.890000002 = 0.88110000198; m = 0.9*0.05 + 0.1*(-0.25) = 0.02;
    //       v = 0.999*0.00025 + 0.001*0.0625 = 0.00031225; denom = sqrt(0.00031225/0.001999) + 1e-8
    //       = 0.3952253907; p = 0.88110000198 - (0.1/0.19) * 0.02/0.3952253907 = 0.8544662986878463
    //  t=3: p = 0.99*0.8544662986878463 = 0.84592163570; m = 0.9*0.02 + 0.1*1 = 0.118;
    //       v = 0.999*0.00031225 + 0.001*1 = 0.00131193775; denom = sqrt(v/0.002997001) + 1e-8
    //       = 0.6616269348; p = 0.84592163570 - (0.1/0.271) * 0.118/0.6616269348 = 0.7801104766702113
    // w[1], from p = -2 (g = -1, 0.5, 0):
    //  t=1: m = -0.1;  v = 0.001;       denom = 1.00000001;   p = -1.98 + 0.1  = -1.880000001
    //  t=2: m = -0.04; v = 0.001249;    denom = 0.7904507714; p = -1.8345662973609032
    //  t=3: m = -0.036; v = 0.001247751; denom = 0.6452388762; p = -1.7956327043478415
    // b[0], from p = 0.5 (g = 2, 1, -3):
    //  t=1: m = 0.2;   v = 0.004;       denom = 2.00000001;   p = 0.495 - 0.1 = 0.3950000005
    //  t=2: m = 0.28;  v = 0.004996;    denom = 1.580901533;  p = 0.2978320372035104
    //  t=3: m = -0.048; v = 0.013991004; denom = 2.160632968; p = 0.30305139657861424
    const std::vector<std::vector<double>> expected = {
        {0.890000002, -1.880000001, 0.3950000005},
        {0.8544662986878463, -1.8345662973609032, 0.2978320372035104},
        {0.7801104766702113, -1.7956327043478415, 0.30305139657861424}};

    Tensord w = param<double>({2}, {1.0, -2.0});
    Tensord b = param<double>({1}, {0.5});
    AdamWOptions options;
    options.lr = 0.1;
    options.weight_decay = 0.1;
    AdamW<double> opt({w, b}, options);
    for (std::size_t t = 0; t < 3; ++t) {
        set_grad(w, kGradW[t]);
        set_grad(b, kGradB[t]);
        opt.step();
        INFO("after step " << t + 1);
        check_values(w, {expected[t][0], expected[t][1]});
        check_values(b, {expected[t][2]});
    }
    check_values(opt.state()[0].exp_avg, {0.118, -0.036}, 1e-12);
    check_values(opt.state()[0].exp_avg_sq, {0.00131193775, 0.001247751}, 1e-12);
    check_values(opt.state()[1].exp_avg, {-0.048}, 1e-12);
    check_values(opt.state()[1].exp_avg_sq, {0.013991004}, 1e-12);
}

TEST_CASE("Adam in float follows the double trajectory", "[optim]") {
    Tensorf w = param<float>({2}, {1.0f, -2.0f});
    Tensorf b = param<float>({1}, {0.5f});
    AdamOptions options;
    options.lr = 0.1;
    options.weight_decay = 0.1;
    Adam<float> opt({w, b}, options);
    for (std::size_t t = 0; t < 3; ++t) {
        set_grad(w, {static_cast<float>(kGradW[t][0]), static_cast<float>(kGradW[t][1])});
        set_grad(b, {static_cast<float>(kGradB[t][0])});
        opt.step();
    }
    // The double results of the test above; float rounding stays far below 1e-5.
    CHECK(w.data()[0] == Approx(0.7815043998631658).epsilon(0).margin(1e-5));
    CHECK(w.data()[1] == Approx(-1.8089293433495808).epsilon(0).margin(1e-5));
    CHECK(b.data()[0] == Approx(0.31291493091573813).epsilon(0).margin(1e-5));
}

TEST_CASE("Adam and AdamW defaults are torch's", "[optim]") {
    const AdamOptions adam;
    CHECK(adam.lr == 1e-3);
    CHECK(adam.beta1 == 0.9);
    CHECK(adam.beta2 == 0.999);
    CHECK(adam.eps == 1e-8);
    CHECK(adam.weight_decay == 0.0);
    const AdamWOptions adamw;
    CHECK(adamw.lr == 1e-3);
    CHECK(adamw.weight_decay == 1e-2);
    const SGDOptions sgd;
    CHECK(sgd.momentum == 0.0);
    CHECK(sgd.dampening == 0.0);
    CHECK(sgd.weight_decay == 0.0);
    CHECK_FALSE(sgd.nesterov);
}

TEST_CASE("Adam skips a parameter without a gradient, zero_grad, lr and step count", "[optim]") {
    Tensord a = param<double>({2}, {1.0, 2.0});
    Tensord frozen = param<double>({3}, {3.0, 4.0, 5.0});
    AdamW<double> opt({a, frozen}, AdamWOptions{0.1, 0.9, 0.999, 1e-8, 0.5});
    set_grad(a, {1.0, -1.0});
    opt.step();
    // a moved (first Adam step is lr * sign(g) after decay 1 - 0.1*0.5), frozen did not.
    check_values(a, {0.95 - 0.1, 1.9 + 0.1}, 1e-6);
    check_values(frozen, {3.0, 4.0, 5.0}, 0.0);
    CHECK_FALSE(frozen.has_grad());
    CHECK(opt.state()[0].step == 1);
    CHECK(opt.state()[1].step == 0);
    check_values(opt.state()[1].exp_avg, {0.0, 0.0, 0.0}, 0.0);

    opt.zero_grad();
    CHECK(a.has_grad());  // the buffer is kept, zeroed
    check_values(a.grad(), {0.0, 0.0}, 0.0);
    CHECK_FALSE(frozen.has_grad());

    CHECK(opt.lr() == 0.1);
    opt.set_lr(0.25);
    CHECK(opt.lr() == 0.25);
    CHECK(opt.options().lr == 0.25);
    CHECK_THROWS_WITH(opt.set_lr(-1.0), Catch::Contains("[AdamW]"));
}

TEST_CASE("Adam state restored into a fresh optimiser continues identically", "[optim]") {
    auto grads_at = [](int t) { return std::vector<double>{0.3 * t - 0.5, 1.0 / (t + 1), -0.2 * t}; };
    Tensord p1 = param<double>({3}, {0.1, -0.2, 0.3});
    Adam<double> first({p1}, AdamOptions{0.05, 0.8, 0.99, 1e-8, 0.01});
    for (int t = 0; t < 2; ++t) {
        set_grad(p1, grads_at(t));
        first.step();
    }
    // "Checkpoint": copy the parameter values and the optimiser state into fresh objects.
    Tensord p2 = p1.clone();
    p2.requires_grad_();
    Adam<double> second({p2}, first.options());
    second.state()[0].exp_avg = first.state()[0].exp_avg.clone();
    second.state()[0].exp_avg_sq = first.state()[0].exp_avg_sq.clone();
    second.state()[0].step = first.state()[0].step;
    second.set_step_count(first.step_count());

    set_grad(p1, grads_at(2));
    set_grad(p2, grads_at(2));
    first.step();
    second.step();
    for (Index i = 0; i < 3; ++i) CHECK(p2.data()[i] == p1.data()[i]);
    CHECK(second.step_count() == 3);

    // A restored state of the wrong shape is caught before anything is written.
    second.state()[0].exp_avg = Tensord::zeros({4});
    CHECK_THROWS_WITH(second.step(), Catch::Contains("[Adam]") && Catch::Contains("(3,)"));
}

TEST_CASE("optimisers on tensors larger than one update block match a per-element reference", "[optim]") {
    // 5001 elements: more than two 2048-element blocks and a ragged tail.
    const Index n = 5001;
    Rng rng(7);
    const Tensord start = Tensord::randn({n}, rng);
    const Tensord grad1 = Tensord::randn({n}, rng);
    const Tensord grad2 = Tensord::randn({n}, rng);

    SECTION("Adam with L2 decay") {
        Tensord p = start.clone();
        p.requires_grad_();
        Adam<double> opt({p}, AdamOptions{0.01, 0.9, 0.99, 1e-6, 0.05});
        for (const Tensord* g : {&grad1, &grad2}) {
            std::copy_n(g->data(), n, p.grad_data());
            opt.step();
        }
        for (Index i = 0; i < n; ++i) {
            double x = start.data()[i], m = 0, v = 0;
            int t = 0;
            for (const Tensord* gt : {&grad1, &grad2}) {
                ++t;
                const double g = gt->data()[i] + 0.05 * x;
                m = 0.9 * m + 0.1 * g;
                v = 0.99 * v + 0.01 * g * g;
                x -= (0.01 / (1 - std::pow(0.9, t))) * m /
                     (std::sqrt(v) / std::sqrt(1 - std::pow(0.99, t)) + 1e-6);
            }
            if (std::fabs(p.data()[i] - x) > 1e-12)
                FAIL("element " << i << ": " << p.data()[i] << " vs " << x);
        }
    }
    SECTION("AdamW") {
        Tensord p = start.clone();
        p.requires_grad_();
        AdamW<double> opt({p}, AdamWOptions{0.01, 0.9, 0.99, 1e-6, 0.05});
        for (const Tensord* g : {&grad1, &grad2}) {
            std::copy_n(g->data(), n, p.grad_data());
            opt.step();
        }
        for (Index i = 0; i < n; ++i) {
            double x = start.data()[i], m = 0, v = 0;
            int t = 0;
            for (const Tensord* gt : {&grad1, &grad2}) {
                ++t;
                x *= 1 - 0.01 * 0.05;
                const double g = gt->data()[i];
                m = 0.9 * m + 0.1 * g;
                v = 0.99 * v + 0.01 * g * g;
                x -= (0.01 / (1 - std::pow(0.9, t))) * m /
                     (std::sqrt(v) / std::sqrt(1 - std::pow(0.99, t)) + 1e-6);
            }
            if (std::fabs(p.data()[i] - x) > 1e-12)
                FAIL("element " << i << ": " << p.data()[i] << " vs " << x);
        }
    }
    SECTION("SGD with Nesterov momentum and L2 decay") {
        Tensord p = start.clone();
        p.requires_grad_();
        SGD<double> opt({p}, SGDOptions{0.1, 0.9, 0.01, 0.0, true});
        for (const Tensord* g : {&grad1, &grad2}) {
            std::copy_n(g->data(), n, p.grad_data());
            opt.step();
        }
        for (Index i = 0; i < n; ++i) {
            double x = start.data()[i], buf = 0;
            bool first = true;
            for (const Tensord* gt : {&grad1, &grad2}) {
                const double g = gt->data()[i] + 0.01 * x;
                buf = first ? g : 0.9 * buf + g;
                first = false;
                x -= 0.1 * (g + 0.9 * buf);
            }
            if (std::fabs(p.data()[i] - x) > 1e-12)
                FAIL("element " << i << ": " << p.data()[i] << " vs " << x);
        }
    }
}

TEST_CASE("SGD with momentum: two steps by hand", "[optim]") {
    // lr 0.1, momentum 0.9, p = [1, -0.5].
    //  step 1: g = [2, 1];  the buffer starts as g: b = [2, 1];
    //          p = [1 - 0.2, -0.5 - 0.1] = [0.8, -0.6]
    //  step 2: g = [1, -3]; b = 0.9 b + g = [1.8 + 1, 0.9 - 3] = [2.8, -2.1];
    //          p = [0.8 - 0.28, -0.6 + 0.21] = [0.52, -0.39]
    Tensord p = param<double>({2}, {1.0, -0.5});
    SGD<double> opt({p}, SGDOptions{0.1, 0.9});
    CHECK_FALSE(opt.momentum_buffers()[0].defined());
    set_grad(p, {2.0, 1.0});
    opt.step();
    check_values(p, {0.8, -0.6}, 1e-12);
    check_values(opt.momentum_buffers()[0], {2.0, 1.0}, 1e-12);
    set_grad(p, {1.0, -3.0});
    opt.step();
    check_values(p, {0.52, -0.39}, 1e-12);
    check_values(opt.momentum_buffers()[0], {2.8, -2.1}, 1e-12);
    CHECK(opt.step_count() == 2);
}

TEST_CASE("SGD variants: plain, Nesterov, dampening, weight decay", "[optim]") {
    // Three steps from p = [1, -0.5] with g = [2, 1], [1, -3], [0.5, 0.5] and lr 0.1; the last
    // values agree with torch.optim.SGD.
    const std::vector<std::vector<double>> grads = {{2.0, 1.0}, {1.0, -3.0}, {0.5, 0.5}};
    auto run = [&](SGDOptions options) {
        Tensord p = param<double>({2}, {1.0, -0.5});
        SGD<double> opt({p}, options);
        for (const auto& g : grads) {
            set_grad(p, g);
            opt.step();
        }
        return p;
    };
    // Plain: p -= 0.1 g each step: 1 - 0.1*(2 + 1 + 0.5) = 0.65, -0.5 - 0.1*(1 - 3 + 0.5) = -0.35.
    check_values(run(SGDOptions{0.1}), {0.65, -0.35}, 1e-12);
    // Nesterov (momentum 0.9): b1 = g1 = [2, 1], d = g1 + 0.9 b1 = [3.8, 1.9], p = [0.62, -0.69];
    // b2 = 0.9 b1 + g2 = [2.8, -2.1], d = [1 + 2.52, -3 - 1.89], p = [0.268, -0.201];
    // b3 = 0.9 b2 + g3 = [3.02, -1.39], d = [0.5 + 2.718, 0.5 - 1.251], p = [-0.0538, -0.1259].
    check_values(run(SGDOptions{0.1, 0.9, 0.0, 0.0, true}), {-0.0538, -0.1259}, 1e-12);
    // Dampening 0.5: b1 = g1 (no dampening on the first step) = [2, 1], p = [0.8, -0.6];
    // b2 = 0.9 b1 + 0.5 g2 = [2.3, -0.6], p = [0.57, -0.54];
    // b3 = 0.9 b2 + 0.5 g3 = [2.32, -0.29], p = [0.338, -0.511].
    check_values(run(SGDOptions{0.1, 0.9, 0.0, 0.5}), {0.338, -0.511}, 1e-12);
    // Weight decay 0.1 with momentum 0.9: g' = g + 0.1 p.
    // g'1 = [2.1, 0.95] = b1, p = [0.79, -0.595];
    // g'2 = [1.079, -3.0595], b2 = [2.969, -2.2045], p = [0.4931, -0.37455];
    // g'3 = [0.54931, 0.462545], b3 = [3.22141, -1.5214], p = [0.170959, -0.2223995].
    check_values(run(SGDOptions{0.1, 0.9, 0.1}), {0.170959, -0.2223995}, 1e-12);
}

TEST_CASE("optimisers reject bad options and bad parameter lists", "[optim]") {
    Tensord p = param<double>({2}, {1.0, 2.0});
    CHECK_THROWS_WITH(SGD<double>({p}, SGDOptions{-0.1}), Catch::Contains("[SGD]"));
    CHECK_THROWS_WITH(SGD<double>({p}, SGDOptions{0.1, 0.0, 0.0, 0.0, true}),
                      Catch::Contains("[SGD]") && Catch::Contains("nesterov"));
    CHECK_THROWS_WITH(SGD<double>({p}, SGDOptions{0.1, 0.9, 0.0, 0.1, true}), Catch::Contains("nesterov"));
    CHECK_THROWS_WITH(SGD<double>({p, p}, SGDOptions{0.1}),
                      Catch::Contains("[SGD]") && Catch::Contains("twice"));
    CHECK_THROWS_WITH(Adam<double>({p}, AdamOptions{0.1, 1.0}), Catch::Contains("[Adam] invalid beta1"));
    CHECK_THROWS_WITH(Adam<double>({p}, AdamOptions{0.1, 0.9, -0.1}),
                      Catch::Contains("[Adam] invalid beta2"));
    CHECK_THROWS_WITH(AdamW<double>({p}, AdamWOptions{0.1, 0.9, 0.999, -1.0}),
                      Catch::Contains("[AdamW] invalid eps"));
    CHECK_THROWS_WITH(AdamW<double>({p}, AdamWOptions{0.1, 0.9, 0.999, 1e-8, -0.1}),
                      Catch::Contains("[AdamW] invalid weight_decay"));
    CHECK_THROWS_WITH(AdamW<double>({p, p}), Catch::Contains("[AdamW]") && Catch::Contains("twice"));
    CHECK_THROWS_WITH(Adam<double>({Tensord()}), Catch::Contains("[Adam]") && Catch::Contains("undefined"));

    // A non-leaf (the result of an op) cannot be optimised.
    Tensord made = detail::make_op_result<double>({2}, "test_copy", {&p});
    detail::set_backward(made, [](Node<double>&) {});
    CHECK_THROWS_WITH(Adam<double>({made}), Catch::Contains("[Adam]") && Catch::Contains("test_copy"));
}

TEST_CASE("clip_grad_norm: known values", "[optim]") {
    // Gradients [3, 4] and [12]: total norm sqrt(9 + 16 + 144) = 13.
    Tensord a = param<double>({2}, {0.0, 0.0});
    Tensord b = param<double>({1}, {0.0});
    Tensord no_grad = param<double>({5}, {1, 2, 3, 4, 5});
    std::vector<Tensord> params = {a, b, no_grad};

    SECTION("below the limit: untouched") {
        set_grad(a, {3.0, 4.0});
        set_grad(b, {12.0});
        CHECK(clip_grad_norm(params, 20.0) == Approx(13.0).epsilon(1e-15));
        check_values(a.grad(), {3.0, 4.0}, 0.0);
        check_values(b.grad(), {12.0}, 0.0);
        CHECK_FALSE(no_grad.has_grad());
    }
    SECTION("above the limit: scaled by max_norm / (norm + 1e-6)") {
        set_grad(a, {3.0, 4.0});
        set_grad(b, {12.0});
        CHECK(clip_grad_norm(params, 6.5) == Approx(13.0).epsilon(1e-15));  // the norm before
        const double coef = 6.5 / (13.0 + 1e-6);                            // 0.49999996...
        check_values(a.grad(), {3.0 * coef, 4.0 * coef}, 1e-15);
        check_values(b.grad(), {12.0 * coef}, 1e-15);
        CHECK(grad_norm(params) == Approx(6.5).epsilon(0).margin(1e-6));
    }
    SECTION("float gradients, no gradients, bad max_norm") {
        Tensorf f = param<float>({2}, {0.0f, 0.0f});
        set_grad(f, {-6.0f, 8.0f});
        CHECK(clip_grad_norm(std::vector<Tensorf>{f}, 1.0) == Approx(10.0).epsilon(1e-6));
        CHECK(f.grad().data()[0] == Approx(-0.6f).epsilon(1e-6));
        CHECK(f.grad().data()[1] == Approx(0.8f).epsilon(1e-6));
        CHECK(clip_grad_norm(std::vector<Tensord>{no_grad}, 1.0) == 0.0);
        CHECK_THROWS_WITH(clip_grad_norm(params, -1.0), Catch::Contains("[clip_grad_norm]"));
    }
}

TEST_CASE("clip_grad_norm: the same norm and gradients on 1 and 2 threads", "[optim]") {
    // Many parameters of different sizes: the per-parameter sums are added in order, whatever
    // thread computed them.
    Rng rng(21);
    std::vector<Tensorf> params;
    for (Index i = 0; i < 40; ++i) {
        Tensorf p = param<float>({1 + 97 * i}, std::vector<float>(static_cast<std::size_t>(1 + 97 * i), 0.0f));
        std::vector<float> g(static_cast<std::size_t>(p.numel()));
        for (float& x : g) x = static_cast<float>(rng.normal());
        set_grad(p, g);
        params.push_back(p);
    }
    auto clone_grads = [&] {
        std::vector<Tensorf> copy;
        for (const Tensorf& p : params) {
            Tensorf c = param<float>(p.shape(), std::vector<float>(static_cast<std::size_t>(p.numel()), 0.0f));
            const Tensorf g = p.grad();
            set_grad(c, std::vector<float>(g.data(), g.data() + g.numel()));
            copy.push_back(c);
        }
        return copy;
    };
    std::vector<Tensorf> other = clone_grads();
    seemoe::testing::ThreadCountGuard guard;
    set_num_threads(1);
    const double one = clip_grad_norm(params, 1.0);
    set_num_threads(2);
    const double two = clip_grad_norm(other, 1.0);
    CHECK(one == two);
    CHECK(one > 1.0);  // so the gradients were scaled
    for (std::size_t i = 0; i < params.size(); ++i) {
        const Tensorf a = params[i].grad(), b = other[i].grad();
        CHECK(std::equal(a.data(), a.data() + a.numel(), b.data()));
    }
}

TEST_CASE("learning-rate schedules: known values", "[optim]") {
    // warmup 10, total 110, base 1e-3, min 1e-4.
    const double base = 1e-3, min = 1e-4;
    auto lr = [&](Index step) { return warmup_cosine(step, 110, 10, base, min); };
    CHECK(lr(0) == Approx(1e-4).epsilon(1e-12));   // base * 1/10
    CHECK(lr(4) == Approx(5e-4).epsilon(1e-12));   // base * 5/10
    CHECK(lr(9) == Approx(1e-3).epsilon(1e-12));   // warmup ends: base * 10/10
    CHECK(lr(10) == Approx(1e-3).epsilon(1e-12));  // decay starts: progress 0, cos 0 = 1
    // progress 25/100: min + 0.5 (base - min)(1 + cos(pi/4)) = 1e-4 + 4.5e-4 * 1.7071067811865475
    CHECK(lr(35) == Approx(8.681980515339464e-4).epsilon(1e-12));
    CHECK(lr(60) == Approx(5.5e-4).epsilon(1e-12));  // midpoint: (base + min) / 2
    // last decay step, progress 99/100: 1e-4 + 4.5e-4 (1 + cos(0.99 pi))
    CHECK(lr(109) == Approx(1e-4 + 4.5e-4 * (1 + std::cos(0.99 * 3.14159265358979323846))).epsilon(1e-12));
    CHECK(lr(109) > min);
    CHECK(lr(110) == min);  // end
    CHECK(lr(1000) == min);
    // No warmup: base at step 0.
    CHECK(warmup_cosine(0, 100, 0, base, min) == base);
    CHECK(warmup_cosine(50, 100, 0, base, min) == Approx(5.5e-4).epsilon(1e-12));

    const LrSchedule cosine = LrSchedule::cosine(base, 10, 110, min);
    CHECK(cosine.lr_at(60) == lr(60));
    const LrSchedule constant = LrSchedule::constant(3e-4);
    CHECK(constant.lr_at(0) == 3e-4);
    CHECK(constant.lr_at(12345) == 3e-4);

    CHECK_THROWS_WITH(warmup_cosine(-1, 100, 10, base, min), Catch::Contains("[warmup_cosine]"));
    CHECK_THROWS_WITH(warmup_cosine(0, 5, 10, base, min), Catch::Contains("[warmup_cosine]"));
    CHECK_THROWS_WITH(LrSchedule::cosine(base, 10, 5, min), Catch::Contains("[LrSchedule]"));
}

TEST_CASE("optimisers minimise a quadratic", "[optim]") {
    // f(x) = sum_i a_i (x_i - c_i)^2 with curvatures a spread over 10x; grad = 2 a (x - c).
    const std::vector<double> a = {0.5, 1.0, 2.0, 5.0};
    const std::vector<double> c = {1.0, -2.0, 0.5, 3.0};
    auto minimise = [&](auto& opt, auto& x, int steps, auto&& lr_at) {
        using T = typename std::decay_t<decltype(x)>::Scalar;
        for (int s = 0; s < steps; ++s) {
            opt.zero_grad();
            T* g = x.grad_data();
            for (std::size_t i = 0; i < a.size(); ++i) g[i] = static_cast<T>(2 * a[i] * (x.data()[i] - c[i]));
            opt.set_lr(lr_at(s));
            opt.step();
        }
        double worst = 0;
        for (std::size_t i = 0; i < a.size(); ++i)
            worst = std::max(worst, std::fabs(static_cast<double>(x.data()[i]) - c[i]));
        return worst;
    };
    SECTION("SGD with momentum") {
        Tensord x = Tensord::zeros({4});
        x.requires_grad_();
        SGD<double> opt({x}, SGDOptions{0.05, 0.9});
        CHECK(minimise(opt, x, 300, [](int) { return 0.05; }) < 1e-6);
    }
    SECTION("Adam with a cosine schedule, float") {
        Tensorf x = Tensorf::zeros({4});
        x.requires_grad_();
        Adam<float> opt({x});
        const LrSchedule schedule = LrSchedule::cosine(0.1, 10, 500, 0.0);
        CHECK(minimise(opt, x, 500, [&](int s) { return schedule.lr_at(s); }) < 1e-3);
    }
    SECTION("AdamW without decay, double") {
        Tensord x = Tensord::zeros({4});
        x.requires_grad_();
        AdamW<double> opt({x}, AdamWOptions{0.1, 0.9, 0.999, 1e-8, 0.0});
        CHECK(minimise(opt, x, 500, [](int s) { return warmup_cosine(s, 500, 10, 0.1, 0.0); }) < 1e-3);
    }
}
