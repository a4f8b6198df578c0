// examples/seemoe/generate.hpp — `seemoe generate`: continue text with a trained text model.
//
// Prints the prompt, then each new character the moment it is chosen (stdout is flushed per
// character), then a newline. Sampling draws from an Rng seeded by --seed, so a seed repeats its
// text; --temperature 0 is greedy. Without --prompt, generation starts from the vocabulary's first
// character (the lowest code point: a newline for most texts, as makeMoE starts from id 0), which
// is not printed. The model's special tokens never occur in its text and are never chosen.
// Generation is KV-cached (see MoEDecoderLanguageModel::generate for the sliding window).
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "text.hpp"

namespace cli {

inline const std::vector<FlagSpec>& generate_flags() {
    static const std::vector<FlagSpec> flags = {
        {"--model", "PATH", "model.safetensors written by 'seemoe train --text', or its folder (required)"},
        {"--prompt", "TEXT", "text to continue (default: start from the vocabulary's first character)"},
        {"--tokens", "N", "characters to generate (default 500)"},
        {"--temperature", "X", "1 samples from the model's distribution (default); 0 = greedy; higher is more random"},
        {"--top-k", "K", "sample only among the K likeliest characters (0 = all; default 0)"},
        {"--top-p", "X", "sample only within the likeliest characters of total probability X (default 1)"},
        {"--seed", "N", "seed for sampling (default 0)"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores)"},
    };
    return flags;
}

inline std::string generate_usage() {
    return "usage: seemoe generate --model PATH [--prompt TEXT] [--tokens N] [--temperature X] [--top-k K]\n"
           "                       [--top-p X] [--seed N]\n\n"
           "Continues the prompt with a text model (trained by 'seemoe train --text FILE'), printing each\n"
           "character as it is generated.\n\n"
           "flags:\n" +
           flag_help(generate_flags());
}

inline int run_generate(int argc, char** argv) {
    Args args("generate", generate_flags(), argc, argv, 2);
    if (args.help()) {
        std::printf("%s", generate_usage().c_str());
        return 0;
    }
    if (!args.positionals().empty())
        throw CliError("unexpected argument '" + args.positionals().front() + "'",
                       "pass the prompt with --prompt TEXT (run 'seemoe generate --help' for usage)");
    if (!args.has("--model"))
        throw CliError("generate needs --model PATH",
                       "pass the model.safetensors (or folder) that 'seemoe train --text' wrote");
    seemoe::nn::SamplingOptions sampling;
    sampling.max_new_tokens = args.get_int("--tokens", 500, 1);
    sampling.temperature = args.get_double("--temperature", 1.0, 0.0, 100.0);
    sampling.top_k = args.get_int("--top-k", 0, 0);
    sampling.top_p = args.get_double("--top-p", 1.0, 1e-6, 1.0);
    const std::uint64_t seed = args.get_seed("--seed", 0);
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));

    TextCheckpoint ck = load_text_checkpoint(args.get("--model", ""));
    const std::string prompt = args.get("--prompt", "");
    std::vector<Index> ids = encode_known(ck.tokenizer, prompt, "--prompt");
    if (ids.empty()) ids.push_back(CharTokenizer::num_special);  // the first character of the vocabulary
    for (Index id = 0; id < CharTokenizer::num_special; ++id) sampling.suppress.push_back(id);

    std::printf("%s", prompt.c_str());
    std::fflush(stdout);
    Rng rng(seed);
    const std::vector<std::string>& tokens = ck.tokenizer.tokens();
    ck.model.generate(ids, sampling, rng, [&](Index id) {
        std::fputs(tokens[static_cast<std::size_t>(id)].c_str(), stdout);
        std::fflush(stdout);
    });
    std::printf("\n");
    return 0;
}

}  // namespace cli
