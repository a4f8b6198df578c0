// seemoe/nn/sampling.hpp — choosing the next token from a row of logits: greedy or sampled.
//
// Greedy (temperature 0) takes the argmax. Otherwise the logits are divided by the temperature,
// optionally cut to the top_k likeliest tokens and then to the smallest set whose probability
// reaches top_p (nucleus), and one token is drawn from what is left with the caller's Rng, so a
// seed repeats its text. `suppress` lists ids that are never chosen (a text model's special
// tokens, which never occur in its text).
//
// Convention: probabilities are computed in double from logits relative to the largest, so a
// large logit cannot overflow exp().
#pragma once

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "../core/common.hpp"

namespace seemoe::nn {

struct SamplingOptions {
    Index max_new_tokens = 64;
    double temperature = 0.0;    // 0: greedy (argmax)
    Index top_k = 0;             // 0: no top-k filter
    double top_p = 1.0;          // 1: no nucleus filter
    std::vector<Index> suppress; // ids never chosen
};

// Picks the next token from one row of logits (V).
template <typename T>
Index sample_token(const T* logits, Index V, const SamplingOptions& options, Rng& rng) {
    std::vector<T> filtered;
    if (!options.suppress.empty()) {  // a copy with the suppressed ids at -inf
        filtered.assign(logits, logits + V);
        for (Index id : options.suppress) {
            SEEMOE_CHECK(id >= 0 && id < V, "[sample_token] suppressed id ", id, " is outside the vocabulary of ", V);
            filtered[static_cast<std::size_t>(id)] = -std::numeric_limits<T>::infinity();
        }
        SEEMOE_CHECK(static_cast<Index>(options.suppress.size()) < V ||
                         std::any_of(filtered.begin(), filtered.end(), [](T x) { return std::isfinite(x); }),
                     "[sample_token] every one of the ", V, " tokens is suppressed");
        logits = filtered.data();
    }
    if (options.temperature <= 0.0) return static_cast<Index>(std::max_element(logits, logits + V) - logits);
    std::vector<Index> order(static_cast<std::size_t>(V));
    std::iota(order.begin(), order.end(), Index(0));
    std::stable_sort(order.begin(), order.end(), [&](Index a, Index b) { return logits[a] > logits[b]; });
    Index keep = (options.top_k > 0) ? std::min(options.top_k, V) : V;
    std::vector<double> probs(static_cast<std::size_t>(keep));
    double total = 0.0;
    for (Index i = 0; i < keep; ++i) {
        probs[i] = std::exp((static_cast<double>(logits[order[i]]) - logits[order[0]]) / options.temperature);
        total += probs[i];
    }
    if (options.top_p < 1.0) {  // smallest prefix whose probability reaches top_p
        double mass = 0.0;
        Index cut = 0;
        while (cut < keep) {
            mass += probs[cut++] / total;
            if (mass >= options.top_p) break;
        }
        keep = cut;
        total = std::accumulate(probs.begin(), probs.begin() + keep, 0.0);
    }
    double u = rng.uniform() * total;
    for (Index i = 0; i < keep; ++i) {
        u -= probs[i];
        if (u < 0) return order[i];
    }
    return order[keep - 1];
}

}  // namespace seemoe::nn
