// examples/seemoe/text.hpp — what the text-only mode shares: a text file, a text checkpoint, the
// val loss.
//
// A text model is the decoder alone (seemoe::nn::MoEDecoderLanguageModel): a character language
// model like makeMoE's, trained by `seemoe train --text FILE`, run by `seemoe generate`, measured
// by `seemoe eval`. Its checkpoint is model.safetensors like an image model's, with its own format
// entry, so `caption` refuses it and `generate` refuses an image model.
//
// The figures:
//   val loss         mean cross-entropy (nats) per predicted character of the val part (the last
//                    10% of the file)
//   bits per char    the same in bits: val loss / ln 2
// During training the val loss is makeMoE's estimate: the mean over a fixed number of batches of
// random windows (the same windows at every evaluation, so the curve is not noisier than the
// model). `eval` and the final report score the whole val part, every character once.
#pragma once

#include <cmath>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "evaluation.hpp"

namespace cli {

using TextModel = seemoe::nn::MoEDecoderLanguageModel<float>;
using seemoe::data::TextBatch;
using seemoe::data::TextDataset;
using seemoe::data::TextSplit;

inline double bits_per_character(double loss_nats) { return loss_nats / std::log(2.0); }

// What to do about an error from reading a text file, judged from the library's message.
inline std::string text_hint(const std::string& message) {
    auto has = [&](const char* s) { return message.find(s) != std::string::npos; };
    if (has("does not exist") || has("not a regular file") || has("cannot open"))
        return "pass --text FILE, a UTF-8 text file (e.g. tinyshakespeare.txt; see README 'Text only')";
    if (has("is empty")) return "pass a text file with some text in it";
    // These messages already say what to do (convert with iconv; a longer text or a smaller block_size).
    if (has("UTF-8")) return "";
    if (has("shorter than one window")) return "--block-size sets block_size";
    if (has("vocabulary"))
        return "the model knows only the characters of the text it was trained on: evaluate it on text "
               "written with those, or train a model on this file";
    return "check the file given by --text";
}

// The text file split 90/10, windows of block_size; the vocabulary from the file, or `vocabulary`.
inline TextDataset load_text(const std::string& path, Index block_size,
                             const CharTokenizer* vocabulary = nullptr) {
    seemoe::data::TextOptions options;
    options.block_size = block_size;
    try {
        return TextDataset::load(path, options, vocabulary);
    } catch (const seemoe::Error& e) {
        throw CliError(e.what(), text_hint(e.what()));
    }
}

// ---- checkpoints -------------------------------------------------------------------------------

inline bool is_text_checkpoint(const std::string& path) {
    return checkpoint_format(model_file(path)) == seemoe::nn::kTextModelFormat;
}

struct TextCheckpoint {
    std::string path;  // model.safetensors
    TextModel model;
    CharTokenizer tokenizer;
    Index step = 0;
    std::map<std::string, std::string> metadata;  // includes "text": the file it was trained on
};

inline TextCheckpoint load_text_checkpoint(const std::string& given) {
    TextCheckpoint ck;
    ck.path = model_file(given);
    const std::string hint = "pass --model a model.safetensors written by 'seemoe train --text' (or its folder, "
                             "e.g. runs/makemoe)";
    std::error_code ec;
    if (!fs::exists(ck.path, ec)) throw CliError("checkpoint " + ck.path + " does not exist", hint);
    seemoe::nn::LoadedTextModel loaded;
    try {
        loaded = seemoe::nn::load_text_model(ck.path);
    } catch (const seemoe::Error& e) {
        if (checkpoint_format(ck.path) == seemoe::nn::kModelFormat)
            throw CliError(e.what(), "it captions images: run 'seemoe caption --model " + given + " IMAGE...' instead");
        throw CliError(e.what(), hint);
    }
    ck.model = std::move(loaded.model);
    ck.tokenizer = std::move(loaded.tokenizer);
    ck.step = loaded.step;
    ck.metadata = std::move(loaded.metadata);
    return ck;
}

// ---- measuring ---------------------------------------------------------------------------------

// Mean loss per scored target over `batches` (eval mode, no graph, nothing drawn from any Rng);
// adds the expert routing to *routing when given.
inline double text_loss(TextModel& model, const std::vector<TextBatch>& batches, RoutingCounts* routing = nullptr) {
    seemoe::NoGradGuard no_grad;
    const bool was_training = model.is_training();
    model.eval();
    Rng unused(0);  // eval mode draws nothing
    if (routing)
        routing->assign(model.blocks.size(),
                        std::vector<Index>(static_cast<std::size_t>(model.config.num_experts), 0));
    double total = 0.0;
    Index scored = 0;
    for (const TextBatch& batch : batches) {
        Index n = 0;  // targets that count (the rest are kIgnoreIndex)
        for (Index t : batch.targets) n += t != seemoe::kIgnoreIndex ? 1 : 0;
        if (n == 0) continue;
        seemoe::nn::MoETrace<float> trace;
        const float loss =
            model.loss(batch.inputs, batch.targets, batch.batch_size, batch.seq_len, unused, routing ? &trace : nullptr)
                .item();
        total += static_cast<double>(loss) * static_cast<double>(n);
        scored += n;
        if (routing)
            for (std::size_t l = 0; l < trace.layers.size(); ++l) {
                const auto& counts = trace.layers[l].tokens_per_expert;
                for (std::size_t e = 0; e < counts.size(); ++e) (*routing)[l][e] += counts[e];
            }
    }
    model.train(was_training);
    return scored ? total / static_cast<double>(scored) : 0.0;
}

// The text model for the run table: its config as one "name value, ..." row, straight from the
// field list.
inline std::pair<std::string, std::string> describe_text_model(const seemoe::nn::DecoderConfig& c) {
    std::string line;
    seemoe::nn::for_each_decoder_field(c, [&](const char* name, const auto& field) {
        if (!line.empty()) line += ", ";
        if constexpr (std::is_enum_v<std::decay_t<decltype(field)>>)
            line += format("%s %s", name, seemoe::nn::enum_name(field));
        else if constexpr (std::is_same_v<std::decay_t<decltype(field)>, double>)
            line += format("%s %g", name, field);
        else
            line += format("%s %lld", name, static_cast<long long>(field));
    });
    return {"decoder", line};
}

// The token ids of `text` in the model's vocabulary; a character outside it is a CliError naming
// it (`what` says where the text came from, e.g. "--prompt").
inline std::vector<Index> encode_known(const CharTokenizer& tokenizer, const std::string& text, const std::string& what) {
    for (std::size_t pos = 0; pos < text.size();) {
        std::uint32_t cp = 0;
        std::size_t len = 0;
        if (!seemoe::detail::next_code_point(text, pos, cp, len))
            throw CliError(format("%s is not valid UTF-8 at byte %zu", what.c_str(), pos),
                           "write the text in UTF-8");
        if (!tokenizer.contains(cp)) {
            const std::string code = seemoe::detail::code_point_str(cp);
            const std::string shown =
                cp < 0x20 || cp == 0x7F ? "(" + code + ")" : "'" + text.substr(pos, len) + "' (" + code + ")";
            throw CliError(format("%s: character %s at byte %zu is not in the model's vocabulary of %lld characters",
                                  what.c_str(), shown.c_str(), pos,
                                  static_cast<long long>(tokenizer.vocab_size() - CharTokenizer::num_special)),
                           "use only characters of the text the model was trained on");
        }
        pos += len;
    }
    return tokenizer.encode(text);
}

}  // namespace cli
