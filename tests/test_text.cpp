// Text-only mode: the text data set (split, windows, covering batches, errors), the text model's
// loss and KV-cached generation (equal to the uncached forward, inside and past block_size), a
// tiny model that overfits a short text and regenerates it exactly, and text checkpoints (round
// trip, and each loader refusing the other kind of model).
#include <seemoe/seemoe.hpp>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

using namespace seemoe;
using data::TextDataset;
using data::TextSplit;

namespace {

// A text whose first character occurs only there and in which no 16-character run repeats, so
// each character is determined by the up to 16 before it.
const std::string kVerse =
    "#Shall I compare thee to a summer's day? Thou art more lovely and more temperate: rough winds do "
    "shake the darling buds of May, and summer's lease hath all too short a date.";

// n different characters (U+0100, U+0101, ...): each one tells where in the text it is.
std::string distinct_text(Index n) {
    std::string text;
    for (Index i = 0; i < n; ++i) detail::append_utf8(text, static_cast<std::uint32_t>(0x100 + i));
    return text;
}

data::TextOptions windows_of(Index T) {
    data::TextOptions o;
    o.block_size = T;
    return o;
}

nn::DecoderConfig tiny_text_config(Index vocab, Index block) {
    nn::DecoderConfig c;
    c.vocab_size = vocab;
    c.n_embd = 32;
    c.n_head = 4;
    c.n_layer = 2;
    c.num_experts = 4;
    c.top_k = 2;
    c.block_size = block;
    c.dropout = 0.0;
    return c;
}

// The reference generate(): every step runs the uncached forward over the last block_size tokens
// and picks from its last row, with the same sampling and Rng as generate().
template <typename T>
std::vector<Index> generate_uncached(nn::MoEDecoderLanguageModel<T>& lm, std::vector<Index> text,
                                     const nn::SamplingOptions& options, Rng& rng) {
    NoGradGuard no_grad;
    lm.eval();
    Rng unused(0);
    const Index W = lm.config.block_size, V = lm.config.vocab_size;
    std::vector<Index> out;
    for (Index s = 0; s < options.max_new_tokens; ++s) {
        const Index n = std::min<Index>(W, static_cast<Index>(text.size()));
        const std::vector<Index> window(text.end() - n, text.end());
        Tensor<T> logits = lm.forward(window, 1, n, unused);  // (1, n, V)
        const Index next = nn::sample_token(logits.data() + (n - 1) * V, V, options, rng);
        text.push_back(next);
        out.push_back(next);
    }
    return out;
}

std::string temp_path(const std::string& name) {
    return (std::filesystem::temp_directory_path() / ("seemoe_test_text_" + name)).string();
}

}  // namespace

TEST_CASE("text: vocabulary from the file, 90/10 split by position", "[data]") {
    const TextDataset ds = TextDataset::from_text(kVerse, "verse.txt", windows_of(8));
    const data::CharTokenizer& tok = ds.tokenizer();
    CHECK(tok.tokens()[3] == " ");  // the lowest code point first, after the three specials
    CHECK(tok.decode(tok.encode(kVerse)) == kVerse);
    const Index n = static_cast<Index>(kVerse.size()), n_train = static_cast<Index>(0.9 * static_cast<double>(n));
    CHECK(ds.size() == n);
    REQUIRE(static_cast<Index>(ds.ids(TextSplit::train).size()) == n_train);
    CHECK(tok.decode(ds.ids(TextSplit::train)) == kVerse.substr(0, static_cast<std::size_t>(n_train)));
    CHECK(tok.decode(ds.ids(TextSplit::val)) == kVerse.substr(static_cast<std::size_t>(n_train)));

    // UTF-8: one token per character, counted in characters.
    const TextDataset accents = TextDataset::from_text(std::string(40, 'a') + "\xC3\xA9t\xC3\xA9", "x", windows_of(2));
    CHECK(accents.size() == 43);
    CHECK(accents.tokenizer().vocab_size() == 3 + 3);
}

TEST_CASE("text: random windows are inputs and the same text shifted by one", "[data]") {
    const TextDataset ds = TextDataset::from_text(distinct_text(300), "distinct.txt", windows_of(8));
    const std::vector<Index>& train = ds.ids(TextSplit::train);
    Rng rng(3);
    const data::TextBatch batch = ds.random_windows(TextSplit::train, 50, rng);
    REQUIRE(batch.inputs.size() == 50 * 8);
    std::set<Index> starts;
    for (Index b = 0; b < 50; ++b) {
        // Find where the window starts: its 8 inputs appear there in the train part.
        const auto it = std::search(train.begin(), train.end(), batch.inputs.begin() + b * 8,
                                    batch.inputs.begin() + (b + 1) * 8);
        REQUIRE(it != train.end());
        const Index start = it - train.begin();
        starts.insert(start);
        CHECK(start + 8 < static_cast<Index>(train.size()));  // its last target is inside the part
        for (Index t = 0; t < 8; ++t) CHECK(batch.targets[b * 8 + t] == train[start + 1 + t]);
    }
    CHECK(starts.size() > 20);  // spread over the text, not one place

    // step_windows depends on (seed, step) only.
    const data::TextBatch a = ds.step_windows(7, 42, 4), b = ds.step_windows(7, 42, 4);
    CHECK(a.inputs == b.inputs);
    CHECK(a.targets == b.targets);
    CHECK(ds.step_windows(8, 42, 4).inputs != a.inputs);
    CHECK(ds.step_windows(7, 43, 4).inputs != a.inputs);
}

TEST_CASE("text: covering batches score every character of a split but the first, once", "[data]") {
    for (Index T : {1, 3, 8, 15}) {
        const TextDataset ds = TextDataset::from_text(distinct_text(173), "distinct.txt", windows_of(T));
        for (TextSplit split : {TextSplit::train, TextSplit::val}) {
            const std::vector<Index>& ids = ds.ids(split);
            const Index n = static_cast<Index>(ids.size());
            std::vector<int> scored(static_cast<std::size_t>(n), 0);
            for (const data::TextBatch& batch : ds.covering_batches(split, 4)) {
                CHECK(batch.batch_size <= 4);
                for (Index b = 0; b < batch.batch_size; ++b) {
                    // The window's inputs are a run of the split; targets follow them or are ignored.
                    const auto it = std::search(ids.begin(), ids.end(), batch.inputs.begin() + b * T,
                                                batch.inputs.begin() + (b + 1) * T);
                    REQUIRE(it != ids.end());
                    const Index start = it - ids.begin();
                    for (Index t = 0; t < T; ++t) {
                        const Index target = batch.targets[b * T + t];
                        if (target == kIgnoreIndex) continue;
                        CHECK(target == ids[start + 1 + t]);
                        scored[start + 1 + t] += 1;
                    }
                }
            }
            CHECK(scored[0] == 0);
            CHECK(std::all_of(scored.begin() + 1, scored.end(), [](int c) { return c == 1; }));
        }
    }
}

TEST_CASE("text: bad files are refused with one clear message", "[data]") {
    using Catch::Contains;
    CHECK_THROWS_WITH(TextDataset::from_text("", "empty.txt"), Contains("'empty.txt' is empty"));
    // 100 characters split 90/10: val has 10 < 33 for a window of 32 and its target.
    CHECK_THROWS_WITH(TextDataset::from_text(std::string(100, 'x'), "short.txt", windows_of(32)),
                      Contains("'short.txt' has 100 characters: its val part (10 characters) is shorter than one "
                               "window of 33") &&
                          Contains("at least 321 characters"));  // int(0.9 * 321) = 288 train, 33 val
    CHECK_NOTHROW(TextDataset::from_text(std::string(321, 'x'), "enough.txt", windows_of(32)));
    CHECK_THROWS_WITH(TextDataset::from_text(std::string(320, 'x'), "almost.txt", windows_of(32)),
                      Contains("val part (32 characters)"));
    data::TextOptions mostly_val = windows_of(8);
    mostly_val.train_fraction = 0.05;
    CHECK_THROWS_WITH(TextDataset::from_text(std::string(100, 'x'), "odd.txt", mostly_val),
                      Contains("its train part (5 characters) is shorter than one window of 9"));
    // Invalid UTF-8 names the byte, the line and the column.
    std::string bad = "first line\nsecond \xFF line\n" + std::string(400, 'x');
    CHECK_THROWS_WITH(TextDataset::from_text(bad, "latin1.txt", windows_of(8)),
                      Contains("'latin1.txt' is not valid UTF-8: byte 0xFF at line 2, column 8 (byte 18)"));
    std::string truncated = std::string(400, 'x') + "\xC3";
    CHECK_THROWS_WITH(TextDataset::from_text(truncated, "cut.txt", windows_of(8)), Contains("byte 0xC3 at line 1"));
    // A given vocabulary: a character outside it is named with its line.
    const data::CharTokenizer vocab = data::CharTokenizer::from_texts({"abc\n"});
    CHECK_THROWS_WITH(TextDataset::from_text("abc\nab\xC3\xA9" + std::string(400, 'a'), "other.txt", windows_of(8), &vocab),
                      Contains("character '\xC3\xA9' (U+00E9) at line 2, column 3 (byte 6) of 'other.txt' is not in "
                               "the model's vocabulary of 4 characters"));
    // Files: missing, a folder.
    CHECK_THROWS_WITH(TextDataset::load(temp_path("missing.txt")), Contains("does not exist"));
    CHECK_THROWS_WITH(TextDataset::load(std::filesystem::temp_directory_path().string()),
                      Contains("is not a regular file"));
    const std::string path = temp_path("verse.txt");
    {
        std::ofstream out(path, std::ios::binary);
        out << kVerse;
    }
    CHECK(TextDataset::load(path, windows_of(8)).size() == static_cast<Index>(kVerse.size()));
    std::remove(path.c_str());
}

TEST_CASE("text model: loss() is the cross-entropy of forward()", "[nn]") {
    Rng rng(2);
    nn::MoEDecoderLanguageModel<double> lm(tiny_text_config(9, 8), rng);
    lm.eval();
    const std::vector<Index> ids{3, 4, 5, 6, 7, 8}, targets{4, 5, kIgnoreIndex, 7, 8, 3};
    const double expected = cross_entropy(lm.forward(ids, 2, 3, rng), targets).item();
    CHECK(lm.loss(ids, targets, 2, 3, rng).item() == expected);
    CHECK_THROWS_WITH(lm.loss(ids, std::vector<Index>{1, 2}, 2, 3, rng), Catch::Contains("2 targets do not fill"));
}

TEST_CASE("text model: cached generation equals the uncached forward, inside and past block_size", "[nn]") {
    const Index W = 6, V = 11;
    Rng init(5);
    nn::MoEDecoderLanguageModel<double> lm(tiny_text_config(V, W), init);
    nn::SamplingOptions greedy;
    greedy.max_new_tokens = 3 * W;  // the window slides for the last 2W steps
    nn::SamplingOptions sampled = greedy;
    sampled.temperature = 1.0;
    sampled.top_k = 6;
    for (const auto& options : {greedy, sampled}) {
        for (const std::vector<Index>& prompt : {std::vector<Index>{4}, std::vector<Index>{3, 9, 4, 4},
                                                 std::vector<Index>{5, 6, 7, 8, 9, 10, 3, 4}}) {
            Rng a(17), b(17);
            std::vector<Index> streamed;
            const std::vector<Index> cached = lm.generate(prompt, options, a, [&](Index id) { streamed.push_back(id); });
            const std::vector<Index> uncached = generate_uncached(lm, prompt, options, b);
            CHECK(cached.size() == static_cast<std::size_t>(3 * W));
            CHECK(cached == uncached);
            CHECK(streamed == cached);
        }
    }
    // Suppressed ids are never chosen, even where they are the argmax.
    nn::SamplingOptions banned = greedy;
    Rng c(1);
    const std::vector<Index> free_run = lm.generate({4}, greedy, c);
    banned.suppress = {free_run[0]};
    const std::vector<Index> out = lm.generate({4}, banned, c);
    CHECK(std::find(out.begin(), out.end(), free_run[0]) == out.end());
    CHECK_THROWS_WITH(lm.generate({}, greedy, c), Catch::Contains("at least one token"));
    CHECK_THROWS_WITH(lm.generate({V}, greedy, c), Catch::Contains("outside the vocabulary"));
}

TEST_CASE("a tiny text model overfits a short text and regenerates it exactly, greedy", "[train]") {
    // Windows of 16 over a 173-character text: generation from its first character goes on well
    // past the first window, so the sliding-window path is exercised too.
    const Index W = 16;
    const data::CharTokenizer tok = data::CharTokenizer::from_texts({kVerse});
    const std::vector<Index> ids = tok.encode(kVerse);
    const Index n = static_cast<Index>(ids.size());
    Rng rng(11);
    nn::MoEDecoderLanguageModel<float> lm(tiny_text_config(tok.vocab_size(), W), rng);
    // Every window of the text, each step: the whole text is the training set.
    std::vector<Index> inputs, targets;
    for (Index s = 0; s + W < n; ++s) {
        inputs.insert(inputs.end(), ids.begin() + s, ids.begin() + s + W);
        targets.insert(targets.end(), ids.begin() + s + 1, ids.begin() + s + W + 1);
    }
    const Index B = n - W;
    AdamWOptions options;
    options.lr = 1e-2;
    options.weight_decay = 0.0;
    AdamW<float> opt(lm.parameters(), options);
    float loss = 0;
    for (int step = 0; step < 500; ++step) {
        opt.zero_grad();
        Tensorf l = lm.loss(inputs, targets, B, W, rng);
        loss = l.item();
        l.backward();
        opt.step();
    }
    // The first positions of a window see one or two characters, whose successors differ across
    // the text: their loss cannot reach 0. Generation starts from the one '#', so it is exact.
    INFO("final training loss " << loss);
    CHECK(loss < 0.3);

    nn::SamplingOptions greedy;
    greedy.max_new_tokens = n - 1;
    Rng unused(0);
    const std::vector<Index> out = lm.generate({ids[0]}, greedy, unused);
    CHECK(tok.decode({ids[0]}) + tok.decode(out) == kVerse);
}

TEST_CASE("text checkpoints round trip, and each loader refuses the other kind of model", "[io][train]") {
    const data::CharTokenizer tok = data::CharTokenizer::from_texts({kVerse});
    Rng rng(4);
    nn::MoEDecoderLanguageModel<float> lm(tiny_text_config(tok.vocab_size(), 8), rng);
    const std::string path = temp_path("model.safetensors");
    nn::save_text_model(path, lm, tok, 123, {{"text", "verse.txt"}});
    const nn::LoadedTextModel loaded = nn::load_text_model(path);
    CHECK(loaded.step == 123);
    CHECK(loaded.tokenizer == tok);
    CHECK(loaded.metadata.at("text") == "verse.txt");
    CHECK(loaded.metadata.at("format") == nn::kTextModelFormat);
    CHECK(nn::text_config_to_json(loaded.config) == nn::text_config_to_json(lm.config));
    auto a = lm.named_parameters();
    auto b = const_cast<nn::MoEDecoderLanguageModel<float>&>(loaded.model).named_parameters();
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) {
        CHECK(a[i].first == b[i].first);
        CHECK(std::equal(a[i].second.data(), a[i].second.data() + a[i].second.numel(), b[i].second.data()));
    }
    CHECK_THROWS_WITH(nn::load_model(path), Catch::Contains("holds a text-only character language model") &&
                                                Catch::Contains("not a vision-language model"));

    nn::VLMConfig vc;
    vc.vision.image_size = 8;
    vc.vision.patch_size = 4;
    vc.vision.dim = 8;
    vc.vision.n_blocks = 1;
    vc.vision.n_heads = 2;
    vc.decoder = tiny_text_config(tok.vocab_size(), 16);
    nn::VisionMoELanguageModel<float> vlm(vc, rng);
    nn::save_model(path, vlm, tok, 5);
    CHECK_THROWS_WITH(nn::load_text_model(path), Catch::Contains("holds a vision-language model") &&
                                                     Catch::Contains("not a text-only model"));
    std::remove(path.c_str());
}
