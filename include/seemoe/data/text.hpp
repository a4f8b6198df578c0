// seemoe/data/text.hpp — TextDataset: one text file as a character-level language-modelling set.
//
// The whole file is the corpus, read as UTF-8 with one token per character (CharTokenizer; its
// three special tokens never occur in the text). The vocabulary is the file's distinct
// characters, or a given one (a trained model's: then a character outside it is an error naming
// its line). As in makeMoE and nanoGPT's character Shakespeare, the split is by position: the
// first 90% of the characters train, the last 10% validate, so val is text the model never saw.
//
// A window is T = block_size consecutive positions: inputs ids[i, i+T), targets ids[i+1, i+T+1),
// every position predicting the character after it. Training batches are B windows at uniformly
// random starts i in [0, n - T) of the train part (makeMoE's get_batch), drawn from the caller's
// Rng; step_windows() seeds that Rng from (seed, step) alone, so a resumed run redraws the same
// batches. covering_batches() scores every character of a split but its first exactly once: the
// whole-split loss `seemoe eval` reports.
//
// Convention: each part needs at least T + 1 characters (one window and its last target).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "../core/common.hpp"
#include "../core/utf8.hpp"
#include "../io/file.hpp"
#include "tokenizer.hpp"

namespace seemoe::data {

enum class TextSplit { train, val };

inline const char* text_split_name(TextSplit s) { return s == TextSplit::train ? "train" : "val"; }

// B windows of T tokens, row-major (B, T).
struct TextBatch {
    Index batch_size = 0, seq_len = 0;  // B, T
    std::vector<Index> inputs;          // (B, T)
    std::vector<Index> targets;         // (B, T); kIgnoreIndex marks a position that is not scored
};

struct TextOptions {
    Index block_size = 32;        // T, the window length
    double train_fraction = 0.9;  // the first 90% of the characters train, the rest validates
};

class TextDataset {
public:
    TextDataset() = default;

    // Reads the file at `path`; the vocabulary is its characters, or `vocabulary` when given.
    static TextDataset load(const std::string& path, const TextOptions& options = {},
                            const CharTokenizer* vocabulary = nullptr) {
        std::error_code ec;
        SEEMOE_CHECK(std::filesystem::exists(path, ec), "[TextDataset] text file '", path, "' does not exist");
        SEEMOE_CHECK(std::filesystem::is_regular_file(path, ec), "[TextDataset] '", path,
                     "' is not a regular file (a folder?); pass a UTF-8 text file");
        const std::string bytes = io::read_file(path);
        return from_text(bytes, path, options, vocabulary);
    }

    // From text in memory; `name` stands for the file in error messages.
    static TextDataset from_text(std::string_view text, const std::string& name, const TextOptions& options = {},
                                 const CharTokenizer* vocabulary = nullptr) {
        const Index T = options.block_size;
        SEEMOE_CHECK(T >= 1, "[TextDataset] block_size must be at least 1, got ", T);
        SEEMOE_CHECK(options.train_fraction > 0 && options.train_fraction < 1,
                     "[TextDataset] train_fraction must be in (0, 1), got ", options.train_fraction);
        SEEMOE_CHECK(!text.empty(), "[TextDataset] text file '", name, "' is empty");

        // Every code point checked once; the first position of each distinct character kept for
        // the messages below.
        std::map<std::uint32_t, std::size_t> first_seen;
        Index characters = 0;
        for (std::size_t pos = 0; pos < text.size(); ++characters) {
            std::uint32_t cp = 0;
            std::size_t len = 0;
            if (!detail::next_code_point(text, pos, cp, len)) {
                char hex[8];
                std::snprintf(hex, sizeof hex, "0x%02X", static_cast<unsigned>(static_cast<unsigned char>(text[pos])));
                throw Error(detail::concat("[TextDataset] '", name, "' is not valid UTF-8: byte ", hex, " at ",
                                           where(text, pos), " (text files are read as UTF-8; convert it, e.g. "
                                           "with iconv)"));
            }
            first_seen.emplace(cp, pos);
            pos += len;
        }

        TextDataset ds;
        ds.name_ = name;
        ds.options_ = options;
        if (vocabulary) {
            for (const auto& [cp, pos] : first_seen)
                SEEMOE_CHECK(vocabulary->contains(cp), "[TextDataset] character ", printable(cp), " at ",
                             where(text, pos), " of '", name, "' is not in the model's vocabulary of ",
                             vocabulary->vocab_size() - CharTokenizer::num_special, " characters");
            ds.tokenizer_ = *vocabulary;
        } else {
            std::vector<std::string> chars;
            for (const auto& [cp, pos] : first_seen) {
                std::string ch;
                detail::append_utf8(ch, cp);
                chars.push_back(std::move(ch));
            }
            ds.tokenizer_ = CharTokenizer::from_texts(chars);
        }
        const std::vector<Index> ids = ds.tokenizer_.encode(text);  // every character is known now

        const Index n = characters, n_train = train_size(n, options.train_fraction);
        if (n_train < T + 1 || n - n_train < T + 1) {
            Index needed = T + 1;  // the shortest text whose both parts hold one window
            while (train_size(needed, options.train_fraction) < T + 1 ||
                   needed - train_size(needed, options.train_fraction) < T + 1)
                ++needed;
            const bool val_short = n - n_train < T + 1;
            throw Error(detail::concat("[TextDataset] '", name, "' has ", n, " characters: its ",
                                       val_short ? "val" : "train", " part (",
                                       val_short ? n - n_train : n_train, " characters) is shorter than one window of ",
                                       T + 1, " (block_size ", T, " + the character after it); use a text of at least ",
                                       needed, " characters or a smaller block_size"));
        }
        ds.train_.assign(ids.begin(), ids.begin() + n_train);
        ds.val_.assign(ids.begin() + n_train, ids.end());
        return ds;
    }

    const CharTokenizer& tokenizer() const { return tokenizer_; }
    const std::string& name() const { return name_; }
    Index block_size() const { return options_.block_size; }
    Index size() const { return static_cast<Index>(train_.size() + val_.size()); }  // characters
    const std::vector<Index>& ids(TextSplit split) const { return split == TextSplit::train ? train_ : val_; }

    // B windows at uniformly random starts of the split.
    TextBatch random_windows(TextSplit split, Index B, Rng& rng) const {
        SEEMOE_CHECK(B >= 1, "[TextDataset] batch size must be at least 1, got ", B);
        const std::vector<Index>& data = ids(split);
        const Index T = options_.block_size, n = static_cast<Index>(data.size());
        TextBatch batch = empty_batch(B);
        for (Index b = 0; b < B; ++b) {
            const Index start = rng.randint(0, n - T);
            std::copy_n(data.begin() + start, T, batch.inputs.begin() + b * T);
            std::copy_n(data.begin() + start + 1, T, batch.targets.begin() + b * T);
        }
        return batch;
    }

    // The training batch of step `step` (from 0): B windows from an Rng seeded by (seed, step)
    // alone, so any step's batch can be recomputed without replaying the steps before it.
    TextBatch step_windows(Index step, std::uint64_t seed, Index B) const {
        SEEMOE_CHECK(step >= 0, "[TextDataset] step must be >= 0, got ", step);
        Rng rng(seed ^ (0xD1B54A32D192ED03ULL * static_cast<std::uint64_t>(step + 1)));
        return random_windows(TextSplit::train, B, rng);
    }

    // Batches of up to B windows in which every character of the split but the first is a target
    // exactly once: consecutive windows from the start, and, if characters remain, one last
    // window ending at the split's end whose already-scored targets are kIgnoreIndex.
    std::vector<TextBatch> covering_batches(TextSplit split, Index B) const {
        SEEMOE_CHECK(B >= 1, "[TextDataset] batch size must be at least 1, got ", B);
        const std::vector<Index>& data = ids(split);
        const Index T = options_.block_size, n = static_cast<Index>(data.size());
        std::vector<Index> starts;
        for (Index s = 0; s + T + 1 <= n; s += T) starts.push_back(s);
        const Index scored_to = starts.back() + T;  // the consecutive windows score targets 1 .. scored_to
        const bool tail = scored_to < n - 1;         // characters left: one more window, ending at the end
        if (tail) starts.push_back(n - 1 - T);
        const Index count = static_cast<Index>(starts.size());
        std::vector<TextBatch> batches;
        for (Index first = 0; first < count; first += B) {
            const Index rows = std::min(B, count - first);
            TextBatch batch = empty_batch(rows);
            for (Index b = 0; b < rows; ++b) {
                const Index start = starts[static_cast<std::size_t>(first + b)];
                const bool tail_window = tail && first + b == count - 1;
                std::copy_n(data.begin() + start, T, batch.inputs.begin() + b * T);
                for (Index t = 0; t < T; ++t) {
                    const Index target = start + 1 + t;  // its position in the split
                    batch.targets[static_cast<std::size_t>(b * T + t)] =
                        tail_window && target <= scored_to ? kIgnoreIndex : data[static_cast<std::size_t>(target)];
                }
            }
            batches.push_back(std::move(batch));
        }
        return batches;
    }

private:
    // makeMoE's n = int(0.9 * len(data)).
    static Index train_size(Index n, double fraction) {
        return static_cast<Index>(fraction * static_cast<double>(n));
    }

    TextBatch empty_batch(Index B) const {
        TextBatch batch;
        batch.batch_size = B;
        batch.seq_len = options_.block_size;
        batch.inputs.resize(static_cast<std::size_t>(B * batch.seq_len));
        batch.targets.resize(batch.inputs.size());
        return batch;
    }

    // "line 3, column 7 (byte 123)" of the byte at `pos`; columns count characters.
    static std::string where(std::string_view text, std::size_t pos) {
        Index line = 1;
        std::size_t line_start = 0;
        for (std::size_t i = 0; i < pos; ++i)
            if (text[i] == '\n') ++line, line_start = i + 1;
        Index column = 1;
        for (std::size_t i = line_start; i < pos;) {
            const std::size_t len = detail::utf8_sequence_length(text, i);
            i += len ? len : 1;
            ++column;
        }
        return detail::concat("line ", line, ", column ", column, " (byte ", pos, ")");
    }

    // "'é' (U+00E9)", or just "(U+0007)" for a control character.
    static std::string printable(std::uint32_t cp) {
        const std::string code = "(" + detail::code_point_str(cp) + ")";
        if (cp < 0x20 || cp == 0x7F) return code;
        std::string ch;
        detail::append_utf8(ch, cp);
        return "'" + ch + "' " + code;
    }

    std::string name_;
    TextOptions options_;
    CharTokenizer tokenizer_;
    std::vector<Index> train_, val_;
};

}  // namespace seemoe::data
