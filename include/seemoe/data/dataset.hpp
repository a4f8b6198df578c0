// seemoe/data/dataset.hpp — image–caption data sets in memory, and the batches a model eats.
//
// CaptionDataset::load(path, options) reads either
//   * a folder holding captions.csv with columns image (a file name relative to the folder),
//     caption and optionally split (train | val | test), or
//   * any CSV file given by its path, with the same columns, or with the column b64string_images
//     holding each image's file bytes in base64 (the format of the original seeMoE repository).
// Every image of the chosen split is decoded once, resized to image_size x image_size and kept as
// 8-bit RGB (S, S, 3); rows of a file without a split column are all "train". Problems are
// reported with the file, line and row (see csv.hpp) and the image involved.
//
// Batcher turns a data set into training batches for next-character prediction:
//   images     (B, 3, S, S) float, normalised (see image.hpp)
//   input_ids  (B, L)  <bos> c1 c2 ... cn <pad> ...
//   targets    (B, L)  c1 c2 ... cn <eos> -100 ...      (-100 = kIgnoreIndex, skipped by the loss)
// so targets are input_ids shifted left by one, and position 0 predicts the first character from
// the image alone. L is the longest caption in the batch + 1, or a fixed max_len. Epochs run in
// data-set order or shuffled from an Rng (start_epoch); a trainer that must resume anywhere asks
// step_samples(step, seed) for the samples of one step.
// Convention: a Batcher keeps a pointer to its data set and tokenizer; both must outlive it.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <numeric>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/parallel.hpp"
#include "../core/tensor.hpp"
#include "../core/utf8.hpp"
#include "augment.hpp"
#include "base64.hpp"
#include "csv.hpp"
#include "image.hpp"
#include "tokenizer.hpp"

namespace seemoe::data {

enum class Split { train, val, test };

inline const char* split_name(Split split) {
    // clang-format off
    switch (split) {
        case Split::train: return "train";
        case Split::val: return "val";
        case Split::test: return "test";
    }
    // clang-format on
    return "?";
}

// "train", "val" (also "valid", "validation"), "test"; case and surrounding spaces ignored.
inline Split parse_split(std::string_view name) {
    std::string s;
    for (char c : name)
        if (!std::isspace(static_cast<unsigned char>(c)))
            s += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (s == "train") return Split::train;
    if (s == "val" || s == "valid" || s == "validation") return Split::val;
    if (s == "test") return Split::test;
    throw Error(detail::concat("[parse_split] unknown split \"", name, "\": expected train, val or test"));
}

struct DatasetOptions {
    Split split = Split::train;                 // which rows to load
    int image_size = 32;                        // images become image_size x image_size
    ResizeMode resize = ResizeMode::automatic;  // area when shrinking, bilinear when enlarging
    ImageLimits limits{};                       // what an image file may be (see image.hpp)
    // Image paths must resolve (symlinks followed) inside the folder of the CSV: no absolute
    // paths, no ".." or symlink leading out. True lifts that rule.
    bool allow_outside_paths = false;
};

}  // namespace seemoe::data

namespace seemoe::detail {

// The CSV behind a data-set path: the file itself, or captions.csv inside a folder.
inline std::filesystem::path caption_csv_path(const std::string& path) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path p(path);
    SEEMOE_CHECK(fs::exists(p, ec), "[CaptionDataset] ", path, " does not exist");
    if (!fs::is_directory(p, ec)) return p;
    SEEMOE_CHECK(!fs::is_empty(p, ec), "[CaptionDataset] folder ", path,
                 " is empty: expected captions.csv and the images it names");
    const fs::path csv = p / "captions.csv";
    if (fs::exists(csv, ec)) return csv;
    std::string others;
    for (const auto& entry : fs::directory_iterator(p, ec))
        if (entry.path().extension() == ".csv")
            others += (others.empty() ? "" : ", ") + entry.path().filename().string();
    throw Error(concat(
        "[CaptionDataset] no captions.csv in folder ", path,
        others.empty() ? std::string() : "; it holds " + others + " — pass that file's path to read it"));
}

// The file an image cell names. Relative paths are taken from `folder`; unless allow_outside, the
// result (symlinks resolved) must lie inside `folder`, so a captions.csv cannot make us read
// /etc/passwd or ../../secret.png.
inline std::filesystem::path resolve_image_path(const std::filesystem::path& folder, const std::string& cell,
                                                bool allow_outside) {
    namespace fs = std::filesystem;
    const fs::path file(cell);
    if (allow_outside) return file.is_relative() ? folder / file : file;
    SEEMOE_CHECK(file.is_relative() && !file.has_root_path(),
                 "the path is absolute; image paths must be relative to the data folder");
    std::error_code ec;
    const fs::path root = fs::weakly_canonical(folder.empty() ? fs::path(".") : folder, ec);
    SEEMOE_CHECK(!ec, "cannot resolve the data folder ", folder.string(), ": ", ec.message());
    const fs::path target = fs::weakly_canonical(root / file, ec);
    SEEMOE_CHECK(!ec, "cannot resolve the path: ", ec.message());
    const fs::path inside = target.lexically_relative(root);
    SEEMOE_CHECK(!inside.empty() && *inside.begin() != ".." && inside != ".", "the path leads to ", target.string(),
                 ", outside the data folder ", root.string());
    return target;
}

// Throws unless `text` is valid UTF-8; `where` names the row.
inline void check_caption_utf8(std::string_view text, const std::string& where) {
    for (std::size_t pos = 0; pos < text.size();) {
        const std::size_t length = utf8_sequence_length(text, pos);
        SEEMOE_CHECK(length > 0, "[CaptionDataset] ", where, ": the caption is not valid UTF-8 (byte ", pos + 1,
                     " of the field); save the file as UTF-8");
        pos += length;
    }
}

// "data:image/png;base64,AAAA" -> "AAAA"; plain base64 is returned as is.
inline std::string_view strip_data_uri(std::string_view cell) {
    if (cell.substr(0, 5) == "data:") {
        const std::size_t comma = cell.find(',');
        if (comma != std::string_view::npos &&
            cell.substr(0, comma).find(";base64") != std::string_view::npos)
            return cell.substr(comma + 1);
    }
    return cell;
}

}  // namespace seemoe::detail

namespace seemoe::data {

class CaptionDataset {
public:
    // An empty data set of image_size x image_size images, to be filled with add().
    explicit CaptionDataset(int image_size = 32) : image_size_(image_size) {
        SEEMOE_CHECK(image_size > 0, "[CaptionDataset] image_size must be positive, got ", image_size);
    }

    // Reads a folder or CSV file (see the header comment); only the rows of options.split.
    static CaptionDataset load(const std::string& path, const DatasetOptions& options = {}) {
        namespace fs = std::filesystem;
        const fs::path csv_path = detail::caption_csv_path(path);
        const CsvTable table = read_csv(csv_path.string());
        const Columns cols = find_columns(table);
        const fs::path folder = csv_path.parent_path();

        CaptionDataset ds(options.image_size);
        std::vector<Index> rows;  // rows of the chosen split, in file order
        for (Index r = 0; r < table.num_rows(); ++r) {
            Split split = Split::train;
            if (cols.split >= 0) {
                try {
                    split = parse_split(table.at(r, cols.split));
                } catch (const Error& e) {
                    throw Error(detail::concat("[CaptionDataset] ", table.where(r), ": ", e.what()));
                }
            }
            if (split != options.split) continue;
            SEEMOE_CHECK(!table.at(r, cols.caption).empty(), "[CaptionDataset] ", table.where(r),
                         ": the caption is empty");
            SEEMOE_CHECK(!table.at(r, cols.image).empty(), "[CaptionDataset] ", table.where(r), ": the ",
                         table.header[static_cast<std::size_t>(cols.image)], " field is empty");
            detail::check_caption_utf8(table.at(r, cols.caption), table.where(r));
            rows.push_back(r);
        }

        const Index n = static_cast<Index>(rows.size());
        const std::size_t image_bytes = ds.image_bytes();
        ds.pixels_.resize(static_cast<std::size_t>(n) * image_bytes);
        // Decoding is most of the load time, so rows are decoded in parallel. Worker bodies must
        // not throw: each records its error and the first one (in file order) is thrown after.
        std::vector<std::string> errors(static_cast<std::size_t>(n));
        parallel_for_dynamic(n, [&](Index i) {
            const Index r = rows[static_cast<std::size_t>(i)];
            const std::string& cell =
                table.rows[static_cast<std::size_t>(r)][static_cast<std::size_t>(cols.image)];
            try {
                Image image;
                if (cols.base64) {
                    const std::vector<std::uint8_t> bytes = base64_decode(detail::strip_data_uri(cell));
                    image = decode_image(bytes, "the base64 image", options.limits);
                } else {
                    const fs::path file = detail::resolve_image_path(folder, cell, options.allow_outside_paths);
                    std::error_code ec;
                    SEEMOE_CHECK(fs::exists(file, ec), "image file ", file.string(), " not found");
                    image = load_image(file.string(), options.limits);  // regular files only
                }
                image = resize(image, options.image_size, options.image_size, options.resize);
                std::copy(image.rgb.begin(), image.rgb.end(),
                          ds.pixels_.begin() +
                              static_cast<std::ptrdiff_t>(static_cast<std::size_t>(i) * image_bytes));
            } catch (const std::exception& e) {
                errors[static_cast<std::size_t>(i)] = detail::concat(
                    "[CaptionDataset] ", table.where(r), ", image ",
                    cols.base64 ? std::string("in column b64string_images") : "\"" + cell + "\"", ": ",
                    e.what());
            }
        });
        for (const std::string& error : errors)
            if (!error.empty()) throw Error(error);

        ds.captions_.reserve(static_cast<std::size_t>(n));
        ds.sources_.reserve(static_cast<std::size_t>(n));
        for (Index r : rows) {
            ds.captions_.push_back(table.at(r, cols.caption));
            ds.sources_.push_back(table.where(r));
        }
        return ds;
    }

    // The captions of every row of a data set, all splits, without decoding any image: for
    // building the vocabulary.
    static std::vector<std::string> read_captions(const std::string& path) {
        const CsvTable table = read_csv(detail::caption_csv_path(path).string());
        const Index caption = find_columns(table).caption;
        std::vector<std::string> captions;
        captions.reserve(static_cast<std::size_t>(table.num_rows()));
        for (Index r = 0; r < table.num_rows(); ++r) {
            detail::check_caption_utf8(table.at(r, caption), table.where(r));
            captions.push_back(table.at(r, caption));
        }
        return captions;
    }

    // Appends one sample, resized to image_size x image_size.
    void add(const Image& image, std::string caption, ResizeMode mode = ResizeMode::automatic) {
        const Image sized = resize(image, image_size_, image_size_, mode);
        pixels_.insert(pixels_.end(), sized.rgb.begin(), sized.rgb.end());
        sources_.push_back(detail::concat("sample ", captions_.size(), " (added in memory)"));
        captions_.push_back(std::move(caption));
    }

    Index size() const { return static_cast<Index>(captions_.size()); }
    bool empty() const { return captions_.empty(); }
    int image_size() const { return image_size_; }
    const std::vector<std::string>& captions() const { return captions_; }
    const std::string& caption(Index i) const { return captions_[checked(i)]; }
    // Where sample i came from, e.g. "data/shapes/captions.csv line 5 (row 4)".
    const std::string& source(Index i) const { return sources_[checked(i)]; }
    // Sample i's pixels, (S, S, 3) 8-bit RGB.
    const std::uint8_t* pixels(Index i) const { return pixels_.data() + checked(i) * image_bytes(); }
    Image image(Index i) const {
        Image out;
        out.width = out.height = image_size_;
        out.rgb.assign(pixels(i), pixels(i) + image_bytes());
        return out;
    }

private:
    struct Columns {
        Index image = -1, caption = -1, split = -1;
        bool base64 = false;
    };
    static Columns find_columns(const CsvTable& table) {
        Columns cols;
        cols.caption = table.column("caption");
        cols.split = table.find_column("split");
        cols.image = table.find_column("image");
        if (cols.image < 0) {
            cols.image = table.find_column("b64string_images");
            cols.base64 = cols.image >= 0;
        }
        SEEMOE_CHECK(cols.image >= 0, "[CaptionDataset] ", table.source,
                     " has no image column: expected \"image\" (file names) or \"b64string_images\" "
                     "(base64 image bytes); its columns are ",
                     table.columns_str());
        SEEMOE_CHECK(table.num_rows() > 0, "[CaptionDataset] ", table.source, " has a header but no rows");
        return cols;
    }
    std::size_t checked(Index i) const {
        SEEMOE_CHECK(i >= 0 && i < size(), "[CaptionDataset] sample ", i, " is out of range for ", size(),
                     " samples");
        return static_cast<std::size_t>(i);
    }
    std::size_t image_bytes() const { return static_cast<std::size_t>(image_size_) * image_size_ * 3; }

    int image_size_;
    std::vector<std::uint8_t> pixels_;  // (N, S, S, 3)
    std::vector<std::string> captions_;
    std::vector<std::string> sources_;
};

struct Batch {
    Tensor<float> images;               // (B, 3, S, S)
    std::vector<Index> input_ids;       // (B, L)  <bos> c1 .. cn <pad> ..
    std::vector<Index> targets;         // (B, L)  c1 .. cn <eos> -100 ..
    Index batch_size = 0;               // B
    Index seq_len = 0;                  // L
    std::vector<std::string> captions;  // (B)
    std::vector<Index> indices;         // (B) the samples' positions in the data set

    Shape ids_shape() const { return {batch_size, seq_len}; }
};

struct BatcherOptions {
    Index batch_size = 16;
    Index max_len = 0;       // 0: L = longest caption in the batch + 1; else a fixed L (the
                             // model's block size), and a longer caption is an error
    bool drop_last = false;  // skip a final batch smaller than batch_size
    Normalization normalization{};
};

class Batcher {
public:
    // Encodes every caption now, so a character missing from the vocabulary fails here, naming
    // the sample, instead of in the middle of training.
    Batcher(const CaptionDataset& dataset, const CharTokenizer& tokenizer, BatcherOptions options = {})
        : dataset_(&dataset), tokenizer_(&tokenizer), options_(std::move(options)) {
        SEEMOE_CHECK(options_.batch_size > 0, "[Batcher] batch_size must be positive, got ",
                     options_.batch_size);
        SEEMOE_CHECK(options_.max_len >= 0, "[Batcher] max_len must be 0 (per batch) or positive, got ",
                     options_.max_len);
        SEEMOE_CHECK(!dataset.empty(), "[Batcher] the data set is empty");
        encoded_.reserve(static_cast<std::size_t>(dataset.size()));
        for (Index i = 0; i < dataset.size(); ++i) {
            try {
                encoded_.push_back(tokenizer.encode(dataset.caption(i)));
            } catch (const Error& e) {
                throw Error(detail::concat("[Batcher] ", dataset.source(i), ": ", e.what()));
            }
            const Index needed = static_cast<Index>(encoded_.back().size()) + 1;
            SEEMOE_CHECK(options_.max_len == 0 || needed <= options_.max_len, "[Batcher] ", dataset.source(i),
                         ": the caption has ", needed - 1, " characters and needs ", needed,
                         " positions, more than max_len = ", options_.max_len,
                         " (raise the block size or shorten the caption)");
        }
        start_epoch();
    }
    // A Batcher points at its data set and tokenizer: temporaries would dangle.
    Batcher(CaptionDataset&&, const CharTokenizer&, BatcherOptions = {}) = delete;
    Batcher(const CaptionDataset&, CharTokenizer&&, BatcherOptions = {}) = delete;

    // A new epoch in data-set order.
    void start_epoch() {
        order_.resize(static_cast<std::size_t>(dataset_->size()));
        std::iota(order_.begin(), order_.end(), Index(0));
        cursor_ = 0;
        seeded_epoch_ = -1;
    }
    // A new epoch in an order drawn from rng (Fisher–Yates from the identity, so the order
    // depends only on the rng state).
    void start_epoch(Rng& rng) {
        start_epoch();
        for (Index i = static_cast<Index>(order_.size()) - 1; i > 0; --i)
            std::swap(order_[static_cast<std::size_t>(i)],
                      order_[static_cast<std::size_t>(rng.randint(0, i + 1))]);
    }

    // The samples of training step `step` (counted from 0) of a run shuffled with `seed`, for a
    // trainer that must be able to resume anywhere: every epoch is shuffled by start_epoch(rng)
    // with an Rng seeded from (seed, epoch) alone, so the batch of any step is recomputed without
    // replaying the steps before it. Only full batches are used; an epoch's remainder waits for
    // a later epoch's shuffle. Moves this Batcher's epoch (next() continues from there).
    std::vector<Index> step_samples(Index step, std::uint64_t seed) {
        const Index B = options_.batch_size, per_epoch = dataset_->size() / B;
        SEEMOE_CHECK(step >= 0, "[Batcher] step must be >= 0, got ", step);
        SEEMOE_CHECK(per_epoch > 0, "[Batcher] batch_size ", B, " is more than the ", dataset_->size(),
                     " samples: no full batch");
        const Index epoch = step / per_epoch, pos = step % per_epoch;
        if (epoch != seeded_epoch_ || seed != seeded_seed_) {
            Rng rng(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(epoch + 1)));
            start_epoch(rng);
            seeded_epoch_ = epoch;
            seeded_seed_ = seed;
        }
        cursor_ = (pos + 1) * B;
        return std::vector<Index>(order_.begin() + pos * B, order_.begin() + (pos + 1) * B);
    }

    // Fills `batch` with the next batch of the epoch; false when the epoch is over.
    bool next(Batch& batch) {
        const Index n = static_cast<Index>(order_.size());
        const Index take = std::min(options_.batch_size, n - cursor_);
        if (take <= 0 || (options_.drop_last && take < options_.batch_size)) return false;
        batch = make_batch(std::vector<Index>(order_.begin() + cursor_, order_.begin() + cursor_ + take));
        cursor_ += take;
        return true;
    }

    // Batches per epoch.
    Index num_batches() const {
        const Index n = dataset_->size(), b = options_.batch_size;
        return options_.drop_last ? n / b : (n + b - 1) / b;
    }

    // A batch of the given samples, in that order.
    Batch make_batch(const std::vector<Index>& samples) const { return make_batch(samples, AugmentOptions{}, 0, 0); }

    // A training batch of the given samples with each image augmented and each caption's input
    // words dropped as `augment` says (augment.hpp). Sample i of
    // step `step` draws from its own Rng(augment_seed(seed, step, i)): the same image at the
    // same step is altered the same way whatever batch, rank or thread takes it.
    Batch make_batch(const std::vector<Index>& samples, const AugmentOptions& augment, std::uint64_t seed,
                     Index step) const {
        SEEMOE_CHECK(!samples.empty(), "[Batcher] make_batch needs at least one sample");
        const Index B = static_cast<Index>(samples.size());
        const Index S = dataset_->image_size();
        Index L = options_.max_len;
        if (L == 0) {
            for (Index i : samples) {
                SEEMOE_CHECK(i >= 0 && i < dataset_->size(), "[Batcher] sample ", i, " is out of range for ",
                             dataset_->size(), " samples");
                L = std::max<Index>(L, static_cast<Index>(encoded_[static_cast<std::size_t>(i)].size()) + 1);
            }
        }

        Batch batch;
        batch.batch_size = B;
        batch.seq_len = L;
        batch.indices = samples;
        batch.images = Tensor<float>::empty({B, 3, S, S});                               // (B, 3, S, S)
        batch.input_ids.assign(static_cast<std::size_t>(B * L), CharTokenizer::pad_id);  // (B, L)
        batch.targets.assign(static_cast<std::size_t>(B * L), kIgnoreIndex);             // (B, L)
        batch.captions.reserve(static_cast<std::size_t>(B));
        check_augment_options(augment);
        std::vector<std::uint8_t> scratch(augment.enabled() ? static_cast<std::size_t>(S * S * 3) : 0);  // (S, S, 3)
        // Word dropout blanks words with <pad>; a caption without spaces is one word.
        const std::vector<Index> space = augment.word_dropout > 0 && tokenizer_->contains(' ')
                                             ? tokenizer_->encode(" ")
                                             : std::vector<Index>{-1};
        for (Index b = 0; b < B; ++b) {
            const Index i = samples[static_cast<std::size_t>(b)];
            SEEMOE_CHECK(i >= 0 && i < dataset_->size(), "[Batcher] sample ", i, " is out of range for ",
                         dataset_->size(), " samples");
            const std::uint8_t* pixels = dataset_->pixels(i);
            Rng rng(augment_seed(seed, step, i));
            if (augment.enabled()) {
                augment_image(pixels, static_cast<int>(S), scratch.data(), augment, rng);
                pixels = scratch.data();
            }
            write_chw(pixels, static_cast<int>(S), static_cast<int>(S), batch.images.data() + b * 3 * S * S,
                      options_.normalization);
            const std::vector<Index>& ids = encoded_[static_cast<std::size_t>(i)];
            const Index n = static_cast<Index>(ids.size());
            Index* in = batch.input_ids.data() + b * L;
            Index* target = batch.targets.data() + b * L;
            in[0] = CharTokenizer::bos_id;
            for (Index t = 0; t < n; ++t) {
                in[t + 1] = ids[static_cast<std::size_t>(t)];
                target[t] = ids[static_cast<std::size_t>(t)];
            }
            target[n] = CharTokenizer::eos_id;
            drop_words(in + 1, n, space[0], CharTokenizer::pad_id, augment.word_dropout, rng);  // input only
            batch.captions.push_back(dataset_->caption(i));
        }
        return batch;
    }

    // The seed of sample `sample`'s augmentation at training step `step` of a run seeded `seed`.
    static std::uint64_t augment_seed(std::uint64_t seed, Index step, Index sample) {
        return seed ^ (0xA0761D6478BD642FULL * static_cast<std::uint64_t>(step + 1)) ^
               (0xE7037ED1A0B428DBULL * static_cast<std::uint64_t>(sample + 1));
    }

    const CaptionDataset& dataset() const { return *dataset_; }
    const CharTokenizer& tokenizer() const { return *tokenizer_; }
    const BatcherOptions& options() const { return options_; }

private:
    const CaptionDataset* dataset_;
    const CharTokenizer* tokenizer_;
    BatcherOptions options_;
    std::vector<std::vector<Index>> encoded_;  // token ids of each caption, no <bos>/<eos>
    std::vector<Index> order_;                 // this epoch's sample order
    Index cursor_ = 0;                         // next position in order_
    Index seeded_epoch_ = -1;                  // the epoch step_samples shuffled order_ for
    std::uint64_t seeded_seed_ = 0;
};

}  // namespace seemoe::data
