// Fits y = 2x + 1 with one Linear layer and SGD; prints the weight and bias and checks them.
#include <seemoe/seemoe.hpp>

#include <cmath>
#include <cstdio>

int main() {
    seemoe::Rng rng(0);
    auto x = seemoe::Tensorf::randn({64, 1}, rng);
    auto y = seemoe::add(seemoe::mul(x, 2.0f), 1.0f);  // (64, 1)
    seemoe::nn::Linear<float> fit(1, 1, rng);
    seemoe::SGD<float> opt(fit.parameters(), {/*lr=*/0.1});
    for (int step = 0; step < 200; ++step) {
        opt.zero_grad();
        auto loss = seemoe::mean(seemoe::square(seemoe::sub(fit.forward(x), y)));
        loss.backward();
        opt.step();
    }
    const float w = fit.weight.item(), b = fit.bias.item();
    std::printf("w = %.4f, b = %.4f\n", w, b);
    return (std::fabs(w - 2.0f) < 1e-3f && std::fabs(b - 1.0f) < 1e-3f) ? 0 : 1;
}
