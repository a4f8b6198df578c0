// examples/seemoe/eval.hpp — `seemoe eval`: measure a checkpoint on a split of a data set.
//
// Prints the loss, caption exact match and character accuracy (see evaluation.hpp), a few of the
// captions it got wrong, and how many positions each expert of each MoE layer received: a healthy
// router spreads the load; a collapsed one sends nearly everything to one or two experts.
// A text model (train --text) is measured on the val part of a text file instead: its loss and
// bits per character over every val character (text.hpp), and the same routing table.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

#include "evaluation.hpp"
#include "pictures.hpp"
#include "text.hpp"

namespace cli {

inline const std::vector<FlagSpec>& eval_flags() {
    static const std::vector<FlagSpec> flags = {
        {"--model", "PATH", "model.safetensors written by 'seemoe train', or its folder (required)"},
        {"--data", "DIR", "data set folder (default: data/shapes, relative to the current directory)"},
        {"--split", "val|test", "which rows to evaluate (default: val)"},
        {"--text", "FILE", "text models: the text whose last 10% is scored (default: the one it was trained on)"},
        {"--batch", "N", "images (text: windows) per evaluation batch (default: 64)"},
        {"--attributes", "A,B,...",
         "names for the per-word table's slots, the last taking the remaining words (shapes: "
         "article,size,colour,shape,position); default: one slot per word"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores)"},
        {"--weights", "f32|bf16", "weight storage for the captions: the model's floats (default) or bf16 copies"},
        {"--plots", "DIR", "where the PNG pictures go (default: the model's folder)"},
        {"--no-plots", nullptr, "write no pictures"},
        {"--allow-outside-paths", nullptr,
         "let captions.csv name images outside the data folder (absolute paths, '..', symlinks out)"},
    };
    return flags;
}

inline std::string eval_usage() {
    return "usage: seemoe eval --model PATH [--data DIR] [--split val|test]\n"
           "       seemoe eval --model PATH [--text FILE]          (a text model)\n\n"
           "Measures a trained model on a split: loss per caption token, caption exact match,\n"
           "character accuracy (1 - edit distance / caption length), and the positions routed to\n"
           "each expert of each MoE layer, and the accuracy of each word of the captions (word k of\n"
           "the model's caption against word k of the truth: which attribute fails). A text model is\n"
           "scored on the val part (the last 10%) of its text file: loss per character and bits per character (loss / ln 2), every character\n"
           "predicted once from the up to block_size characters before it.\n\n"
           "Pictures (PNG, into --plots DIR, by default the model's folder): loss.png, the train and\n"
           "val loss curves from the metrics.jsonl next to the model (when there is one); for image\n"
           "models, per MoE layer l, routing_SPLIT_words_layerl.png (the share of each caption word's\n"
           "tokens at each expert) and routing_SPLIT_modality_layerl.png (the share of the visual and\n"
           "of the text tokens at each expert).\n\n"
           "flags:\n" +
           flag_help(eval_flags());
}

// Positions each expert of each layer received (count and share). Each position goes to top-k
// experts, so a layer's counts add up to k x positions.
inline void print_routing(const RoutingCounts& routing, Index K) {
    const std::size_t E = routing.empty() ? 0 : routing[0].size();
    std::printf("tokens routed to each expert (count and share of the layer; each token goes to %lld experts)\n",
                static_cast<long long>(K));
    std::printf("  layer");
    for (std::size_t e = 0; e < E; ++e) std::printf("  %13s", format("expert %zu", e).c_str());
    std::printf("\n");
    for (std::size_t l = 0; l < routing.size(); ++l) {
        Index total = 0;
        for (Index c : routing[l]) total += c;
        std::printf("  %5zu", l);
        for (Index c : routing[l])
            std::printf("  %6lld %5.1f%%", static_cast<long long>(c),
                        total ? 100.0 * static_cast<double>(c) / static_cast<double>(total) : 0.0);
        std::printf("\n");
    }
}

// The folder --plots names (checked to exist), the model's folder by default, or "" with --no-plots.
inline std::string plots_folder(const Args& args, const std::string& model_path) {
    if (args.flag("--no-plots")) {
        if (args.has("--plots")) throw CliError("--plots and --no-plots contradict each other", "pass one of them");
        return "";
    }
    const std::string dir = args.get("--plots", fs::path(model_path).parent_path().string());
    std::error_code ec;
    if (!args.has("--plots")) return dir.empty() ? "." : dir;
    if (!fs::is_directory(dir, ec))
        throw CliError("--plots " + dir + " is not a folder", "create it first, or pass --no-plots");
    return dir;
}

// The loss picture of the model's run, if its metrics.jsonl is next to it, and (image models)
// each MoE layer's routing of the split.
inline void write_eval_pictures(const std::string& plots, const std::string& model_path, const std::string& split = "",
                                const RoutingAnalysis* analysis = nullptr) {
    if (plots.empty()) return;
    std::vector<std::string> written;
    const fs::path metrics = fs::path(model_path).parent_path() / "metrics.jsonl";
    const fs::path png = fs::path(plots) / "loss.png";
    if (write_loss_picture(metrics, png, "loss: " + fs::path(model_path).parent_path().string()))
        written.push_back(png.string());
    if (analysis && !analysis->layers().empty())
        for (const std::string& f : write_routing_pictures(plots, split, *analysis)) written.push_back(f);
    for (const std::string& f : written) std::printf("picture: %s\n", f.c_str());
}

// `seemoe eval` on a text model: the val part of its text file, every character once.
inline int run_text_eval(const Args& args) {
    for (const char* flag : {"--data", "--split", "--attributes", "--weights"})
        if (args.has(flag))
            throw CliError(std::string(flag) + " applies to image models; this is a text model",
                           "drop it (pass --text FILE to score another text)");
    const Index batch = args.get_int("--batch", 64, 1);
    TextCheckpoint ck = load_text_checkpoint(args.get("--model", ""));
    const auto trained_on = ck.metadata.find("text");
    const std::string path = args.get("--text", trained_on == ck.metadata.end() ? "" : trained_on->second);
    if (path.empty())
        throw CliError("the checkpoint does not name its text file", "pass --text FILE");
    const TextDataset data = load_text(path, ck.model.config.block_size, &ck.tokenizer);
    const std::string plots = plots_folder(args, ck.path);

    Stopwatch clock;
    RoutingCounts routing;
    const double loss = text_loss(ck.model, data.covering_batches(TextSplit::val, batch), &routing);
    const Index characters = static_cast<Index>(data.ids(TextSplit::val).size()) - 1;
    print_table("seemoe eval",
                {{"model", format("%s (text, step %lld, %s parameters)", ck.path.c_str(),
                                  static_cast<long long>(ck.step), format_count(ck.model.num_parameters()).c_str())},
                 {"text", format("%s, val part: the last %lld characters", path.c_str(),
                                 static_cast<long long>(characters + 1))},
                 {"val loss", format("%.4f per character (%lld predicted)", loss, static_cast<long long>(characters))},
                 {"bits per char", format("%.4f", bits_per_character(loss))},
                 {"time", format_duration(clock.seconds())}});
    print_routing(routing, ck.model.config.top_k);
    write_eval_pictures(plots, ck.path);
    return 0;
}

inline int run_eval(int argc, char** argv) {
    Args args("eval", eval_flags(), argc, argv, 2);
    if (args.help()) {
        std::printf("%s", eval_usage().c_str());
        return 0;
    }
    if (!args.positionals().empty())
        throw CliError("unexpected argument '" + args.positionals().front() + "'",
                       "run 'seemoe eval --help' for usage");
    if (!args.has("--model"))
        throw CliError("eval needs --model PATH", "pass the model.safetensors (or folder) that 'seemoe train' wrote");
    if (is_text_checkpoint(args.get("--model", ""))) {
        if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));
        return run_text_eval(args);
    }
    if (args.has("--text"))
        throw CliError("--text applies to text models; " + model_file(args.get("--model", "")) +
                           " is not one",
                       "drop --text (an image model is measured on --data)");
    const std::string data_path = args.get("--data", kDefaultData);
    const Split split = args.get_choice("--split", "val", {"val", "test"}) == "val" ? Split::val : Split::test;
    const Index batch = args.get_int("--batch", 64, 1);
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));
    seemoe::nn::WeightStorage weights = seemoe::nn::WeightStorage::f32;
    seemoe::nn::weight_storage_from_name(args.get_choice("--weights", "f32", {"f32", "bf16"}), weights);
    std::vector<std::string> attributes;
    if (args.has("--attributes")) {
        std::istringstream list(args.get("--attributes", ""));
        for (std::string name; std::getline(list, name, ',');) {
            if (name.empty())
                throw CliError("--attributes has an empty name", "pass names separated by single commas, e.g. "
                                                                 "article,size,colour,shape,position");
            attributes.push_back(name);
        }
        if (attributes.empty()) throw CliError("--attributes is empty", "pass at least one name");
    }

    Checkpoint ck = load_checkpoint(args.get("--model", ""));
    const CaptionDataset ds = load_split(data_path, split, ck.model.config.vision.image_size, args.flag("--allow-outside-paths"));
    if (ds.empty())
        throw CliError(data_path + " has no " + seemoe::data::split_name(split) + " rows",
                       "choose another --split, or add rows with that split to captions.csv");
    const Batcher batcher = make_batcher(ds, ck.tokenizer, batch);
    const Index needed = ck.model.config.num_visual_tokens() + longest_caption(ds, ck.tokenizer) + 1;
    if (needed > ck.model.config.decoder.block_size)
        throw CliError(format("the longest caption needs %lld positions but the model has %lld",
                              static_cast<long long>(needed),
                              static_cast<long long>(ck.model.config.decoder.block_size)),
                       "evaluate on shorter captions");
    const std::string plots = plots_folder(args, ck.path);

    Stopwatch clock;
    RoutingCounts routing;
    const std::vector<Index> samples = all_samples(ds);
    RoutingAnalysis analysis;
    const double loss = mean_loss(ck.model, batcher, samples, batch, &routing, plots.empty() ? nullptr : &analysis);
    const CaptionScore score = score_captions(ck.model, batcher, samples, batch, weights);

    print_table("seemoe eval",
                {{"model", format("%s (step %lld, %s parameters)", ck.path.c_str(), static_cast<long long>(ck.step),
                                  format_count(ck.model.num_parameters()).c_str())},
                 {"data", format("%s, split %s (%lld captions)", data_path.c_str(), seemoe::data::split_name(split),
                                 static_cast<long long>(ds.size()))},
                 {"loss", format("%.4f", loss)},
                 {"exact match", format("%s (%lld/%lld; %s weights)", format_percent(score.exact_match()).c_str(),
                                        static_cast<long long>(score.exact), static_cast<long long>(score.samples),
                                        seemoe::nn::weight_storage_name(weights))},
                 {"char accuracy", format_percent(score.char_accuracy())},
                 {"time", format_duration(clock.seconds())}});
    if (score.exact < score.samples) {
        std::printf("some captions it got wrong:\n");
        print_examples(score, 5, /*mistakes_only=*/true);
    }
    print_word_accuracy(word_accuracy(score, attributes));

    print_routing(routing, ck.model.config.decoder.top_k);
    write_eval_pictures(plots, ck.path, seemoe::data::split_name(split), &analysis);
    return 0;
}

}  // namespace cli
