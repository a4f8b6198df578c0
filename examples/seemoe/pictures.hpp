// examples/seemoe/pictures.hpp — the PNG pictures that `seemoe train` (at its end) and
// `seemoe eval` write, drawn with plot.hpp:
//   loss.png                                train loss (mean over windows of steps) and val loss
//                                           against the step, read back from metrics.jsonl
//   routing_<split>_words_layer<l>.png      per MoE layer l (decoder.blocks.l.moe): for each caption
//                                           word, the share of its tokens each expert receives
//                                           (V-MoE's routing analysis, with words for classes)
//   routing_<split>_modality_layer<l>.png   per MoE layer: the share of the visual tokens and of
//                                           the text tokens each expert receives (MoE-LLaVA's)
//
// Convention: a "token" of a word is a decoder position whose input is one of the word's
// characters (a caption "a red circle" has the words a, red, circle; the spaces and <bos> belong
// to no word). A token counts once for each of the K experts it is routed to, so a share is in
// [0, 1], every token at one expert gives 1, and an even router gives K/E. Assignments dropped by
// the expert capacity count for no expert.
#pragma once

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include <seemoe/seemoe.hpp>

#include "cli.hpp"
#include "plot.hpp"

namespace cli {

// ---- the loss curves -------------------------------------------------------------------------

// The train and val losses of a run, from the lines of its metrics.jsonl: {"step", "loss"} per
// step (skipped steps and lines that do not parse are left out) and "val_loss" wherever measured,
// the final line's included.
struct LossHistory {
    std::vector<double> steps, losses;          // training steps
    std::vector<double> val_steps, val_losses;  // evaluations
};

inline LossHistory read_loss_history(const std::string& metrics_text) {
    LossHistory h;
    std::istringstream in(metrics_text);
    std::string line;
    while (std::getline(in, line)) {
        seemoe::io::Json row;
        try {
            row = seemoe::io::Json::parse(line);
        } catch (const seemoe::Error&) {
            continue;  // a line cut short by a crash
        }
        if (!row.is_object() || !row.contains("step") || !row.at("step").is_number()) continue;
        const double step = row.at("step").as_double();
        const bool final_line = row.contains("final");
        const bool skipped = row.contains("skipped");
        if (!final_line && !skipped && row.contains("loss") && row.at("loss").is_number()) {
            h.steps.push_back(step);
            h.losses.push_back(row.at("loss").as_double());
        }
        if (row.contains("val_loss") && row.at("val_loss").is_number()) {
            h.val_steps.push_back(step);
            h.val_losses.push_back(row.at("val_loss").as_double());
        }
    }
    return h;
}

// The loss picture: the training loss as the mean of each window of steps (about 200 points, so
// the step-to-step noise does not hide the trend), the val loss as marked points; log y axis.
inline cli::plot::Canvas loss_picture(const LossHistory& h, const std::string& title) {
    const std::size_t n = h.steps.size();
    const std::size_t window = std::max<std::size_t>(1, static_cast<std::size_t>(std::lround(n / 200.0)));
    cli::plot::Series train;
    train.name = window > 1 ? "train (mean of " + std::to_string(window) + " steps)" : "train";
    train.color = cli::plot::series_color(0);
    for (std::size_t start = 0; start < n; start += window) {
        const std::size_t end = std::min(n, start + window);
        double step_sum = 0, loss_sum = 0;
        for (std::size_t i = start; i < end; ++i) {
            step_sum += h.steps[i];
            loss_sum += h.losses[i];
        }
        train.x.push_back(step_sum / static_cast<double>(end - start));
        train.y.push_back(loss_sum / static_cast<double>(end - start));
    }
    cli::plot::Series val{"val", h.val_steps, h.val_losses, cli::plot::series_color(1), /*markers=*/true};
    cli::plot::LinePlotOptions o;
    o.title = title;
    o.x_label = "step";
    o.y_label = "loss per token (log scale)";
    o.log_y = true;
    return cli::plot::line_plot({train, val}, o);
}

// ---- where each MoE layer sends which tokens -------------------------------------------------

// The word each text position of a caption batch belongs to: words_at[b * L + j] for input
// position j of sample b (j = 0 is <bos>, j = i + 1 the caption's i-th character); "" for <bos>,
// spaces and padding. Characters are UTF-8 code points, as the tokenizer's.
inline std::vector<std::string> words_by_position(const std::vector<std::string>& captions, Index L) {
    std::vector<std::string> words_at(captions.size() * static_cast<std::size_t>(L));
    for (std::size_t b = 0; b < captions.size(); ++b) {
        const std::string& c = captions[b];
        // The code points, then the words they form.
        std::vector<std::string> chars;
        for (std::size_t i = 0; i < c.size(); ++i) {
            const auto byte = static_cast<unsigned char>(c[i]);
            if (byte >= 0x80 && byte < 0xC0 && !chars.empty()) chars.back() += c[i];
            else chars.emplace_back(1, c[i]);
        }
        std::size_t i = 0;
        while (i < chars.size()) {
            if (chars[i] == " ") {
                ++i;
                continue;
            }
            std::size_t end = i;
            std::string word;
            while (end < chars.size() && chars[end] != " ") word += chars[end++];
            for (std::size_t k = i; k < end && static_cast<Index>(k + 1) < L; ++k)
                words_at[b * static_cast<std::size_t>(L) + k + 1] = word;
            i = end;
        }
    }
    return words_at;
}

// What one MoE layer did with the tokens of a split, by word and by modality.
struct LayerRouting {
    std::map<std::string, std::vector<Index>> word_experts;  // word -> (E) its tokens at each expert
    std::map<std::string, Index> word_tokens;                // word -> its tokens
    std::vector<Index> visual, text;                         // (E) visual / text tokens at each expert
    Index visual_tokens = 0, text_tokens = 0;
};

// The routing of every MoE layer over the batches of a split; add() takes one layer's expert
// choices for one batch.
class RoutingAnalysis {
public:
    RoutingAnalysis() = default;
    RoutingAnalysis(Index layers, Index num_experts, Index top_k)
        : E_(num_experts), K_(top_k),
          layers_(static_cast<std::size_t>(layers),
                  LayerRouting{{}, {}, std::vector<Index>(static_cast<std::size_t>(num_experts), 0),
                               std::vector<Index>(static_cast<std::size_t>(num_experts), 0), 0, 0}) {}

    // experts: (B * (Tv + L), K) the expert of each slot of the batch's positions, in (b, t) order
    // (negative: dropped); words_at: (B * L) words_by_position() of the captions. The batch has
    // no padding (evaluation batches group captions of equal length).
    void add(Index layer, const std::vector<Index>& experts, Index B, Index Tv, Index L,
             const std::vector<std::string>& words_at) {
        SEEMOE_CHECK(layer >= 0 && layer < static_cast<Index>(layers_.size()), "[RoutingAnalysis] layer ", layer,
                     " of ", layers_.size());
        SEEMOE_CHECK(static_cast<Index>(experts.size()) == B * (Tv + L) * K_, "[RoutingAnalysis] ", experts.size(),
                     " expert ids for ", B, " x ", Tv + L, " positions and top-k ", K_);
        SEEMOE_CHECK(static_cast<Index>(words_at.size()) == B * L, "[RoutingAnalysis] ", words_at.size(),
                     " words for ", B, " x ", L, " text positions");
        LayerRouting& r = layers_[static_cast<std::size_t>(layer)];
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < Tv + L; ++t) {
                const bool visual = t < Tv;
                const std::string& word = visual ? kNoWord : words_at[static_cast<std::size_t>(b * L + t - Tv)];
                std::vector<Index>* by_word = nullptr;
                if (!word.empty()) {
                    auto [it, fresh] = r.word_experts.try_emplace(word, static_cast<std::size_t>(E_), 0);
                    (void)fresh;
                    by_word = &it->second;
                    ++r.word_tokens[word];
                }
                ++(visual ? r.visual_tokens : r.text_tokens);
                for (Index k = 0; k < K_; ++k) {
                    const Index e = experts[static_cast<std::size_t>((b * (Tv + L) + t) * K_ + k)];
                    if (e < 0 || e >= E_) continue;  // dropped by the capacity
                    ++(visual ? r.visual : r.text)[static_cast<std::size_t>(e)];
                    if (by_word) ++(*by_word)[static_cast<std::size_t>(e)];
                }
            }
    }

    Index num_experts() const { return E_; }
    Index top_k() const { return K_; }
    const std::vector<LayerRouting>& layers() const { return layers_; }

private:
    inline static const std::string kNoWord;
    Index E_ = 0, K_ = 0;
    std::vector<LayerRouting> layers_;
};

// The word heatmap of one layer: rows are the `max_words` most frequent words, ordered by the
// expert that takes the largest share of them (then by that share), so words that share an
// expert stand together; columns are the experts; a cell is the share of the word's tokens
// routed to the expert.
inline cli::plot::Canvas word_routing_picture(const LayerRouting& r, Index E, const std::string& title,
                                              std::size_t max_words = 40,
                                              std::vector<std::string>* row_order = nullptr,
                                              cli::plot::HeatmapLayout* layout = nullptr) {
    std::vector<std::pair<std::string, Index>> words(r.word_tokens.begin(), r.word_tokens.end());
    std::stable_sort(words.begin(), words.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
    if (words.size() > max_words) words.resize(max_words);
    struct Row {
        std::string word;
        std::vector<double> shares;
        Index top = 0;
    };
    std::vector<Row> rows;
    for (const auto& [word, tokens] : words) {
        Row row{word, {}, 0};
        const std::vector<Index>& counts = r.word_experts.at(word);
        for (Index e = 0; e < E; ++e) {
            row.shares.push_back(static_cast<double>(counts[static_cast<std::size_t>(e)]) / static_cast<double>(tokens));
            if (row.shares.back() > row.shares[static_cast<std::size_t>(row.top)]) row.top = e;
        }
        rows.push_back(std::move(row));
    }
    std::stable_sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        if (a.top != b.top) return a.top < b.top;
        return a.shares[static_cast<std::size_t>(a.top)] > b.shares[static_cast<std::size_t>(b.top)];
    });
    std::vector<std::vector<double>> values;
    std::vector<std::string> row_labels, col_labels;
    for (Row& row : rows) {
        values.push_back(std::move(row.shares));
        row_labels.push_back(row.word);
    }
    for (Index e = 0; e < E; ++e) col_labels.push_back(std::to_string(e));
    cli::plot::HeatmapOptions o;
    o.title = title;
    o.x_label = "expert";
    o.y_label = r.word_tokens.size() > max_words
                    ? "caption word (" + std::to_string(max_words) + " most frequent)"
                    : "caption word";
    o.scale_label = "share of the word's tokens";
    o.vmin = 0;
    o.vmax = 1;
    if (row_order) *row_order = row_labels;
    return cli::plot::heatmap(values, row_labels, col_labels, o, layout);
}

// The modality chart of one layer: for each expert, the share of the visual tokens and the share
// of the text tokens it receives; the dashed line is an even router's K/E.
inline cli::plot::Canvas modality_routing_picture(const LayerRouting& r, Index E, Index K, const std::string& title) {
    std::vector<std::string> experts;
    cli::plot::BarSeries visual{"visual tokens", {}, cli::plot::series_color(0)};
    cli::plot::BarSeries text{"text tokens", {}, cli::plot::series_color(1)};
    const double nan = std::numeric_limits<double>::quiet_NaN();
    for (Index e = 0; e < E; ++e) {
        experts.push_back(std::to_string(e));
        const auto i = static_cast<std::size_t>(e);
        visual.values.push_back(r.visual_tokens ? static_cast<double>(r.visual[i]) / static_cast<double>(r.visual_tokens) : nan);
        text.values.push_back(r.text_tokens ? static_cast<double>(r.text[i]) / static_cast<double>(r.text_tokens) : nan);
    }
    cli::plot::BarChartOptions o;
    o.title = title;
    o.x_label = "expert";
    o.y_label = "share of the tokens";
    o.reference = static_cast<double>(K) / static_cast<double>(E);
    o.reference_label = "even (K/E)";
    return cli::plot::bar_chart(experts, {visual, text}, o);
}

// Writes the two routing pictures of every layer into `dir`; returns the files written.
inline std::vector<std::string> write_routing_pictures(const std::filesystem::path& dir, const std::string& split,
                                                       const RoutingAnalysis& analysis) {
    std::vector<std::string> written;
    const std::string hint = "check that " + dir.string() + " is writable and the disk has space";
    for (std::size_t l = 0; l < analysis.layers().size(); ++l) {
        const std::string layer = "decoder.blocks." + std::to_string(l) + ".moe";
        const std::string words = (dir / ("routing_" + split + "_words_layer" + std::to_string(l) + ".png")).string();
        with_hint(hint, [&] {
            word_routing_picture(analysis.layers()[l], analysis.num_experts(), layer + ": experts by word (" + split + ")")
                .save_png(words);
        });
        written.push_back(words);
        const std::string modality =
            (dir / ("routing_" + split + "_modality_layer" + std::to_string(l) + ".png")).string();
        with_hint(hint, [&] {
            modality_routing_picture(analysis.layers()[l], analysis.num_experts(), analysis.top_k(),
                                     layer + ": visual vs text tokens (" + split + ")")
                .save_png(modality);
        });
        written.push_back(modality);
    }
    return written;
}

// Draws loss.png from the metrics.jsonl at `metrics` and writes it to `png`; false (nothing
// written) when there is no such file or no step in it.
inline bool write_loss_picture(const std::filesystem::path& metrics, const std::filesystem::path& png,
                               const std::string& title) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(metrics, ec)) return false;
    const LossHistory h = with_hint("check that " + metrics.string() + " is readable",
                                    [&] { return read_loss_history(seemoe::io::read_file(metrics.string())); });
    if (h.steps.empty() && h.val_steps.empty()) return false;
    with_hint("check that " + png.parent_path().string() + " is writable and the disk has space",
              [&] { loss_picture(h, title).save_png(png.string()); });
    return true;
}

}  // namespace cli
