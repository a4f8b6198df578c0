// examples/seemoe/caption.hpp — `seemoe caption`: caption image files with a trained model.
//
// Prints one line per image, "IMAGE<TAB>caption", in the order given. Decoding is greedy unless
// --temperature is above 0; sampling then draws from an Rng seeded by --seed, so a seed repeats
// its captions. Every image is read and checked before the first caption is printed, so a bad
// file fails the whole command instead of leaving half an output.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "evaluation.hpp"

namespace cli {

inline const std::vector<FlagSpec>& caption_flags() {
    static const std::vector<FlagSpec> flags = {
        {"--model", "PATH", "model.safetensors written by 'seemoe train', or its folder (required)"},
        {"--temperature", "X", "0 = greedy (default); above 0 samples, higher is more random"},
        {"--top-k", "N", "sample only among the N likeliest characters (0 = all; default 0)"},
        {"--top-p", "X", "sample only within the likeliest characters of total probability X (default 1)"},
        {"--seed", "N", "seed for sampling (default 0)"},
        {"--max-tokens", "N", "at most N characters per caption (default 100, capped by the model)"},
        {"--batch", "N", "images captioned together (default 32)"},
        {"--weights", "f32|bf16", "weight storage for generation: the model's floats (default) or bf16 copies "
                                  "(half the memory traffic, weights rounded to 8 significant bits)"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores)"},
    };
    return flags;
}

inline std::string caption_usage() {
    return "usage: seemoe caption --model PATH [--temperature X --top-k N --top-p X --seed N --max-tokens N\n"
           "                      --weights f32|bf16] IMAGE...\n\n"
           "Captions each image (PNG, JPEG, BMP, GIF, TGA; resized to the model's size) and prints\n"
           "\"IMAGE<TAB>caption\", one line per image.\n\n"
           "flags:\n" +
           flag_help(caption_flags());
}

inline int run_caption(int argc, char** argv) {
    Args args("caption", caption_flags(), argc, argv, 2);
    if (args.help()) {
        std::printf("%s", caption_usage().c_str());
        return 0;
    }
    if (!args.has("--model"))
        throw CliError("caption needs --model PATH", "pass the model.safetensors (or folder) that 'seemoe train' wrote");
    const std::vector<std::string>& files = args.positionals();
    if (files.empty()) throw CliError("no images to caption", "list image files after the flags");
    seemoe::nn::SamplingOptions sampling;
    sampling.temperature = args.get_double("--temperature", 0.0, 0.0, 100.0);
    sampling.top_k = args.get_int("--top-k", 0, 0);
    sampling.top_p = args.get_double("--top-p", 1.0, 1e-6, 1.0);
    const std::uint64_t seed = args.get_seed("--seed", 0);
    const Index max_tokens = args.get_int("--max-tokens", 100, 1);
    const Index batch = args.get_int("--batch", 32, 1);
    seemoe::nn::WeightStorage weights = seemoe::nn::WeightStorage::f32;
    seemoe::nn::weight_storage_from_name(args.get_choice("--weights", "f32", {"f32", "bf16"}), weights);
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));

    Checkpoint ck = load_checkpoint(args.get("--model", ""));
    const Index S = ck.model.config.vision.image_size;
    sampling.max_new_tokens =
        std::min(max_tokens, ck.model.config.decoder.block_size - ck.model.config.num_visual_tokens() - 1);

    // All images first (decoded, resized, 8-bit RGB), so a bad file stops us before any output.
    std::vector<seemoe::data::Image> images;
    images.reserve(files.size());
    for (const std::string& file : files) {
        // The library's message names the file ("cannot open x.png: No such file or directory").
        images.push_back(with_hint("pass readable image files (PNG, JPEG, BMP, GIF, TGA)", [&] {
            return seemoe::data::resize(seemoe::data::load_image(file), static_cast<int>(S), static_cast<int>(S),
                                        seemoe::data::ResizeMode::automatic);
        }));
    }

    Rng rng(seed);
    for (std::size_t start = 0; start < images.size(); start += static_cast<std::size_t>(batch)) {
        const std::size_t end = std::min(images.size(), start + static_cast<std::size_t>(batch));
        const Index B = static_cast<Index>(end - start);
        Tensor<float> pixels = Tensor<float>::empty({B, 3, S, S});  // (B, 3, S, S)
        for (Index b = 0; b < B; ++b)
            seemoe::data::write_chw(images[start + static_cast<std::size_t>(b)], pixels.data() + b * 3 * S * S);
        const auto captions = ck.model.generate(pixels, sampling, rng, weights);
        for (Index b = 0; b < B; ++b)
            std::printf("%s\t%s\n", files[start + static_cast<std::size_t>(b)].c_str(),
                        ck.tokenizer.decode(captions[static_cast<std::size_t>(b)]).c_str());
    }
    return 0;
}

}  // namespace cli
