// examples/seemoe/evaluation.hpp — what train, eval and caption share: loading data and
// checkpoints with errors that say what to do, and measuring a model on a split.
//
// The figures reported everywhere:
//   loss            mean cross-entropy per caption token (characters + <eos>), teacher forced
//   exact match     fraction of images whose greedy caption equals the true caption
//   char accuracy   1 - (edit distance between greedy and true captions) / (true characters),
//                   summed over the split (1 - CER), floored at 0; a caption one character off
//                   still scores nearly 1, where exact match scores it 0
// Evaluation batches group captions of equal length, so no batch holds padding: the loss needs no
// masking and the expert routing counts see only real positions (visual tokens + text).
//
// Convention: every evaluation runs the model in eval mode under NoGradGuard and draws nothing
// from the training Rng, so measuring never changes a training run.
#pragma once

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <seemoe/seemoe.hpp>

#include "cli.hpp"
#include "pictures.hpp"

namespace cli {

namespace fs = std::filesystem;
using seemoe::Rng;
using seemoe::Tensor;
using seemoe::data::Batcher;
using seemoe::data::CaptionDataset;
using seemoe::data::CharTokenizer;
using seemoe::data::Split;
using Model = seemoe::nn::VisionMoELanguageModel<float>;

inline const char* kDefaultData = "data/shapes";

// What to do about a data-loading error, judged from the library's message.
inline std::string data_hint(const std::string& message) {
    auto has = [&](const char* s) { return message.find(s) != std::string::npos; };
    if (has("does not exist"))
        return "pass --data DIR, a folder holding captions.csv and its images (the default is data/shapes, "
               "relative to the current directory)";
    if (has("is empty") || has("no captions.csv"))
        return "put captions.csv (columns image, caption, split) and its images in that folder, or pass "
               "another --data";
    if (has("no column") || has("no image column") || has("no rows"))
        return "captions.csv needs a header row with the columns image, caption and optionally split "
               "(train|val|test), and at least one row";
    if (has("vocabulary"))
        return "the model's vocabulary lacks that character: evaluate on captions written with the "
               "characters it was trained on, or train a model on this data";
    if (has("outside the data folder") || has("the path is absolute"))
        return "keep the images inside the data folder and name them relative to it, or pass "
               "--allow-outside-paths if you trust this captions.csv";
    if (has("not valid UTF-8")) return "save captions.csv as UTF-8";
    if (has(", image "))
        return "replace that image with a readable PNG/JPEG/BMP/GIF/TGA file, or remove its row from "
               "captions.csv";
    return "check the data set given by --data";
}

// The rows of one split, images resized to image_size; errors carry a hint.
inline CaptionDataset load_split(const std::string& path, Split split, Index image_size, bool allow_outside_paths) {
    seemoe::data::DatasetOptions options;
    options.split = split;
    options.image_size = static_cast<int>(image_size);
    options.allow_outside_paths = allow_outside_paths;
    try {
        return CaptionDataset::load(path, options);
    } catch (const seemoe::Error& e) {
        throw CliError(e.what(), data_hint(e.what()));
    }
}

// A batcher over `ds` (encodes every caption now, so an unknown character fails here).
inline Batcher make_batcher(const CaptionDataset& ds, const CharTokenizer& tokenizer, Index batch) {
    seemoe::data::BatcherOptions options;
    options.batch_size = batch;
    try {
        return Batcher(ds, tokenizer, options);
    } catch (const seemoe::Error& e) {
        throw CliError(e.what(), data_hint(e.what()));
    }
}

// Longest caption of the data set, in tokens.
inline Index longest_caption(const CaptionDataset& ds, const CharTokenizer& tokenizer) {
    Index longest = 0;
    for (const auto& c : ds.captions()) longest = std::max(longest, static_cast<Index>(tokenizer.encode(c).size()));
    return longest;
}

// ---- checkpoints -----------------------------------------------------------------------------

struct Checkpoint {
    std::string path;  // model.safetensors
    Model model;
    CharTokenizer tokenizer;
    Index step = 0;
};

// --model may name the file or the folder holding model.safetensors.
inline std::string model_file(const std::string& path) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) return (fs::path(path) / "model.safetensors").string();
    return path;
}

// The "format" entry of the model checkpoint at `path` ("" if it has none or cannot be read: the
// loader then reports what is wrong).
inline std::string checkpoint_format(const std::string& path) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) return "";
    try {
        return seemoe::nn::model_format(seemoe::io::load_safetensors<float>(path).metadata);
    } catch (const seemoe::Error&) {
        return "";
    }
}

// The model, vocabulary and step of a checkpoint (nn/checkpoint.hpp checks they agree).
inline Checkpoint load_checkpoint(const std::string& given) {
    Checkpoint ck;
    ck.path = model_file(given);
    const std::string hint = "pass --model a model.safetensors written by 'seemoe train' (or its folder, e.g. "
                             "runs/demo)";
    std::error_code ec;
    if (!fs::exists(ck.path, ec)) throw CliError("checkpoint " + ck.path + " does not exist", hint);
    seemoe::nn::LoadedModel loaded;
    try {
        loaded = seemoe::nn::load_model(ck.path);
    } catch (const seemoe::Error& e) {
        if (checkpoint_format(ck.path) == seemoe::nn::kTextModelFormat)
            throw CliError(e.what(), "it continues text: run 'seemoe generate --model " + given +
                                         "' (or 'seemoe eval --model " + given + "') instead");
        throw CliError(e.what(), hint);
    }
    ck.model = std::move(loaded.model);
    ck.tokenizer = std::move(loaded.tokenizer);
    ck.step = loaded.step;
    return ck;
}

// ---- measuring a model on a split ------------------------------------------------------------

// Sample indices in batches of equal caption length (no padding), each at most batch_size long.
inline std::vector<std::vector<Index>> equal_length_batches(const CaptionDataset& ds, const CharTokenizer& tokenizer,
                                                            const std::vector<Index>& samples, Index batch_size) {
    std::map<Index, std::vector<Index>> by_length;
    for (Index i : samples)
        by_length[static_cast<Index>(tokenizer.encode(ds.caption(i)).size())].push_back(i);
    std::vector<std::vector<Index>> batches;
    for (const auto& [length, group] : by_length)
        for (std::size_t start = 0; start < group.size(); start += static_cast<std::size_t>(batch_size))
            batches.emplace_back(group.begin() + static_cast<std::ptrdiff_t>(start),
                                 group.begin() + static_cast<std::ptrdiff_t>(
                                                     std::min(group.size(), start + static_cast<std::size_t>(batch_size))));
    return batches;
}

inline std::vector<Index> all_samples(const CaptionDataset& ds) {
    std::vector<Index> out(static_cast<std::size_t>(ds.size()));
    for (Index i = 0; i < ds.size(); ++i) out[static_cast<std::size_t>(i)] = i;
    return out;
}

// routing[layer][expert]: positions each expert received.
using RoutingCounts = std::vector<std::vector<Index>>;

// The busiest expert's share over the mean share (1 = even, E = one expert takes all), averaged
// over the layers of `routing`.
inline double mean_max_over_mean(const RoutingCounts& routing) {
    double total = 0;
    for (const auto& counts : routing) {
        Index sum = 0, most = 0;
        for (Index c : counts) {
            sum += c;
            most = std::max(most, c);
        }
        if (sum > 0) total += static_cast<double>(most) * static_cast<double>(counts.size()) / static_cast<double>(sum);
    }
    return routing.empty() ? 0.0 : total / static_cast<double>(routing.size());
}

// Mean loss per caption token over `samples`; adds the expert routing to *routing when given, and
// to *analysis (reset first) by caption word and modality for the routing pictures.
inline double mean_loss(Model& model, const Batcher& batcher, const std::vector<Index>& samples, Index batch_size,
                        RoutingCounts* routing = nullptr, RoutingAnalysis* analysis = nullptr) {
    if (samples.empty()) return 0.0;
    seemoe::NoGradGuard no_grad;
    const bool was_training = model.is_training();
    model.eval();
    Rng unused(0);  // eval mode draws nothing
    if (routing) {
        routing->assign(model.decoder.blocks.size(), std::vector<Index>(
                                                         static_cast<std::size_t>(model.config.decoder.num_experts), 0));
    }
    const auto layers = static_cast<Index>(model.decoder.blocks.size());
    if (analysis) *analysis = RoutingAnalysis(layers, model.config.decoder.num_experts, model.config.decoder.top_k);
    double total = 0.0;
    Index tokens = 0;
    for (const auto& group : equal_length_batches(batcher.dataset(), batcher.tokenizer(), samples, batch_size)) {
        seemoe::data::Batch batch = batcher.make_batch(group);
        seemoe::nn::MoETrace<float> trace;
        const bool traced = routing || analysis;
        const float loss =
            model.loss(batch.images, batch.input_ids, batch.targets, batch.seq_len, unused, traced ? &trace : nullptr)
                .item();
        const Index n = batch.batch_size * batch.seq_len;  // every target is real: no padding
        total += static_cast<double>(loss) * static_cast<double>(n);
        tokens += n;
        if (routing)
            for (std::size_t l = 0; l < trace.layers.size(); ++l) {
                const auto& counts = trace.layers[l].tokens_per_expert;
                for (std::size_t e = 0; e < counts.size(); ++e) (*routing)[l][e] += counts[e];
            }
        if (analysis) {  // which expert took each position, by caption word and by modality
            const std::vector<std::string> words = words_by_position(batch.captions, batch.seq_len);
            for (Index l = 0; l < layers && l < static_cast<Index>(trace.layers.size()); ++l)
                analysis->add(l, trace.layers[static_cast<std::size_t>(l)].experts, batch.batch_size,
                              model.config.num_visual_tokens(), batch.seq_len, words);
        }
    }
    model.train(was_training);
    return total / static_cast<double>(tokens);
}

// Levenshtein distance between two token sequences.
inline Index edit_distance(const std::vector<Index>& a, const std::vector<Index>& b) {
    std::vector<Index> prev(b.size() + 1), cur(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) prev[j] = static_cast<Index>(j);
    for (std::size_t i = 1; i <= a.size(); ++i) {
        cur[0] = static_cast<Index>(i);
        for (std::size_t j = 1; j <= b.size(); ++j)
            cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
        std::swap(prev, cur);
    }
    return prev[b.size()];
}

struct CaptionScore {
    Index samples = 0;
    Index exact = 0;
    Index edits = 0;        // summed edit distance
    Index characters = 0;   // summed true caption length
    std::vector<std::pair<std::string, std::string>> examples;  // (truth, prediction), in sample order

    double exact_match() const { return samples ? static_cast<double>(exact) / static_cast<double>(samples) : 0.0; }
    double char_accuracy() const {
        if (characters == 0) return 0.0;
        return std::max(0.0, 1.0 - static_cast<double>(edits) / static_cast<double>(characters));
    }
};

// Greedy captions for `samples`, scored against the truth (generated with `weights` storage).
inline CaptionScore score_captions(Model& model, const Batcher& batcher, const std::vector<Index>& samples,
                                   Index batch_size,
                                   seemoe::nn::WeightStorage weights = seemoe::nn::WeightStorage::f32) {
    CaptionScore score;
    if (samples.empty()) return score;
    const CharTokenizer& tok = batcher.tokenizer();
    const CaptionDataset& ds = batcher.dataset();
    Index longest = 0;
    for (Index i : samples) longest = std::max(longest, static_cast<Index>(tok.encode(ds.caption(i)).size()));
    seemoe::nn::SamplingOptions greedy;
    // Room for a few characters too many (still scored), within the model's positions.
    greedy.max_new_tokens =
        std::min(longest + 8, model.config.decoder.block_size - model.config.num_visual_tokens() - 1);
    Rng unused(0);  // greedy decoding draws nothing
    score.examples.resize(samples.size());
    std::vector<std::size_t> slot_of;
    for (std::size_t start = 0; start < samples.size(); start += static_cast<std::size_t>(batch_size)) {
        const std::size_t end = std::min(samples.size(), start + static_cast<std::size_t>(batch_size));
        const std::vector<Index> group(samples.begin() + static_cast<std::ptrdiff_t>(start),
                                       samples.begin() + static_cast<std::ptrdiff_t>(end));
        seemoe::data::Batch batch = batcher.make_batch(group);
        const auto predicted = model.generate(batch.images, greedy, unused, weights);
        for (std::size_t b = 0; b < group.size(); ++b) {
            const std::vector<Index> truth = tok.encode(ds.caption(group[b]));
            score.samples += 1;
            score.exact += predicted[b] == truth ? 1 : 0;
            score.edits += edit_distance(predicted[b], truth);
            score.characters += static_cast<Index>(truth.size());
            score.examples[start + b] = {ds.caption(group[b]), tok.decode(predicted[b])};
        }
    }
    return score;
}

// Which part of the captions a model gets wrong: captions are split into words at spaces, and
// word k of the model's caption is compared with word k of the truth (a missing word is wrong).
// With `names` (e.g. article, size, colour, shape, position) slot k is called names[k] and the
// last name takes all the remaining words together ("at the top left" is one position).
struct WordSlot {
    std::string name;              // "word 3", or the given name
    std::set<std::string> words;   // the truth's words in this slot
    Index total = 0, right = 0;
    double accuracy() const { return total ? static_cast<double>(right) / static_cast<double>(total) : 0.0; }
};

inline std::vector<std::string> split_words(const std::string& caption, std::size_t slots) {
    std::vector<std::string> words;
    std::istringstream in(caption);
    for (std::string w; in >> w;) {
        if (slots > 0 && words.size() == slots) words.back() += " " + w;
        else words.push_back(w);
    }
    return words;
}

inline std::vector<WordSlot> word_accuracy(const CaptionScore& score, const std::vector<std::string>& names = {}) {
    std::vector<WordSlot> slots;
    for (const auto& [truth, prediction] : score.examples) {
        const std::vector<std::string> t = split_words(truth, names.size()), p = split_words(prediction, names.size());
        for (std::size_t k = 0; k < t.size(); ++k) {
            if (slots.size() <= k) {
                slots.emplace_back();
                slots.back().name = k < names.size() ? names[k] : "word " + std::to_string(k + 1);
            }
            slots[k].words.insert(t[k]);
            slots[k].total += 1;
            slots[k].right += k < p.size() && p[k] == t[k] ? 1 : 0;
        }
    }
    return slots;
}

inline void print_word_accuracy(const std::vector<WordSlot>& slots) {
    std::printf("per-word accuracy (word k of the model's caption against word k of the truth)\n");
    for (const WordSlot& slot : slots) {
        std::string words;
        std::size_t shown = 0;
        for (const std::string& w : slot.words) {
            if (shown++ == 8) {
                words += format(", ... (%zu in all)", slot.words.size());
                break;
            }
            words += (words.empty() ? "" : ", ") + w;
        }
        std::printf("  %-10s %7s (%lld/%lld)  %s\n", slot.name.c_str(), format_percent(slot.accuracy()).c_str(),
                    static_cast<long long>(slot.right), static_cast<long long>(slot.total), words.c_str());
    }
}

// "    truth:      a small red circle\n    prediction: a small red square" for the first n examples.
inline void print_examples(const CaptionScore& score, std::size_t n, bool mistakes_only) {
    std::size_t shown = 0;
    for (const auto& [truth, prediction] : score.examples) {
        if (shown == n) break;
        if (mistakes_only && truth == prediction) continue;
        std::printf("    %s  truth: %s\n", truth == prediction ? "ok  " : "MISS", truth.c_str());
        std::printf("          model: %s\n", prediction.c_str());
        ++shown;
    }
}

}  // namespace cli
