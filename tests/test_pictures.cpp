// Tests for examples/seemoe/pictures.hpp, the pictures `seemoe train` and `seemoe eval` write:
// the loss history read back from metrics.jsonl lines, the words of caption positions, the
// routing counts by word and modality from hand-made expert choices, and the pictures' known
// pixels (a word routed to one expert is the darkest cell of its row).
#include <catch2/catch.hpp>

#include <stb/stb_image.h>

#include <string>
#include <vector>

#include "../examples/seemoe/pictures.hpp"
#include "temp_dir.hpp"

using seemoe::Index;

TEST_CASE("pictures: the loss history skips skipped steps, bad lines and the final line's loss", "[plot]") {
    const std::string metrics =
        "{\"step\": 1, \"loss\": 3.0, \"lr\": 0.1}\n"
        "{\"step\": 2, \"loss\": 2.0, \"lr\": 0.1, \"val_loss\": 2.5}\n"
        "{\"step\": 3, \"skipped\": true, \"loss\": null}\n"
        "{\"step\": 4, \"loss\": 1.\n"  // cut short by a crash
        "not json\n"
        "{\"step\": 5, \"loss\": 1.5}\n"
        "{\"step\": 5, \"final\": true, \"val_loss\": 1.75, \"test_loss\": 4}\n";
    const cli::LossHistory h = cli::read_loss_history(metrics);
    CHECK(h.steps == std::vector<double>{1, 2, 5});
    CHECK(h.losses == std::vector<double>{3.0, 2.0, 1.5});
    CHECK(h.val_steps == std::vector<double>{2, 5});
    CHECK(h.val_losses == std::vector<double>{2.5, 1.75});
    CHECK(cli::read_loss_history("").steps.empty());
    // An empty history still draws (a frame that says "no data").
    CHECK(cli::loss_picture(cli::LossHistory(), "loss").width() > 0);
}

TEST_CASE("pictures: each caption position knows its word", "[plot]") {
    // L = 12: <bos> + 11 characters of "a red  dog"; the second caption is shorter (padding).
    const std::vector<std::string> words = cli::words_by_position({"a red  d\xC3\xA9g", "ox"}, 12);
    REQUIRE(words.size() == 24);
    const std::vector<std::string> first(words.begin(), words.begin() + 12);
    CHECK(first == std::vector<std::string>{"", "a", "", "r" "ed", "red", "red", "", "", "d\xC3\xA9g", "d\xC3\xA9g",
                                            "d\xC3\xA9g", ""});
    CHECK(words[13] == "ox");
    CHECK(words[14] == "ox");
    CHECK(words[15] == "");
}

TEST_CASE("pictures: routing counts by word and by modality", "[plot]") {
    // One layer, E = 4, K = 2; a batch of 1 caption "red ox" with Tv = 2 visual tokens:
    // positions: v0 v1 <bos> r e d ' ' o x  (Tv + L = 2 + 7 = 9).
    cli::RoutingAnalysis analysis(1, 4, 2);
    const Index B = 1, Tv = 2, L = 7;
    const std::vector<std::string> words = cli::words_by_position({"red ox"}, L);
    const std::vector<Index> experts = {
        0, 1,   // v0
        0, 2,   // v1
        3, 1,   // <bos>
        2, 0,   // r
        2, 0,   // e
        2, -1,  // d (its second choice dropped by the capacity)
        1, 3,   // ' '
        1, 3,   // o
        1, 3,   // x
    };
    analysis.add(0, experts, B, Tv, L, words);
    const cli::LayerRouting& r = analysis.layers()[0];
    CHECK(r.visual_tokens == 2);
    CHECK(r.text_tokens == 7);
    CHECK(r.visual == std::vector<Index>{2, 1, 1, 0});
    CHECK(r.text == std::vector<Index>{2, 4, 3, 4});
    CHECK(r.word_tokens.at("red") == 3);
    CHECK(r.word_tokens.at("ox") == 2);
    CHECK(r.word_tokens.size() == 2);
    CHECK(r.word_experts.at("red") == std::vector<Index>{2, 0, 3, 0});
    CHECK(r.word_experts.at("ox") == std::vector<Index>{0, 2, 0, 2});
    CHECK_THROWS_AS(analysis.add(0, {0, 1}, B, Tv, L, words), seemoe::Error);
    CHECK_THROWS_AS(analysis.add(1, experts, B, Tv, L, words), seemoe::Error);

    // The word picture: rows ordered by each word's busiest expert (red: 2, ox: 1 -> ox first);
    // a cell's colour is its share on the fixed [0, 1] scale.
    std::vector<std::string> order;
    cli::plot::HeatmapLayout layout;
    const cli::plot::Canvas words_png = cli::word_routing_picture(r, 4, "layer 0", 40, &order, &layout);
    CHECK(order == std::vector<std::string>{"ox", "red"});
    auto cell = [&](int row, int col) {
        return words_png.at(layout.left + col * layout.cell_width + layout.cell_width / 2,
                            layout.top + row * layout.cell_height + layout.cell_height / 2);
    };
    CHECK(cell(0, 1) == cli::plot::colormap(1.0));        // every o and x at expert 1
    CHECK(cell(0, 0) == cli::plot::colormap(0.0));
    CHECK(cell(1, 2) == cli::plot::colormap(1.0));        // every character of red at expert 2
    CHECK(cell(1, 0) == cli::plot::colormap(2.0 / 3.0));  // two of its three at expert 0
    // The modality picture draws, and a layer with no tokens at all too.
    CHECK(cli::modality_routing_picture(r, 4, 2, "layer 0").width() > 0);
    CHECK(cli::modality_routing_picture(cli::RoutingAnalysis(1, 4, 2).layers()[0], 4, 2, "empty").width() > 0);
    CHECK(cli::word_routing_picture(cli::RoutingAnalysis(1, 4, 2).layers()[0], 4, "empty").width() > 0);

    // Written as decodable PNGs, two per layer.
    seemoe::testing::TempDir dir("seemoe_test_pictures_");
    const std::vector<std::string> files = cli::write_routing_pictures(dir.path, "val", analysis);
    REQUIRE(files.size() == 2);
    CHECK(files[0] == dir.file("routing_val_words_layer0.png"));
    CHECK(files[1] == dir.file("routing_val_modality_layer0.png"));
    for (const std::string& f : files) {
        int w = 0, h = 0, n = 0;
        CHECK(stbi_info(f.c_str(), &w, &h, &n) == 1);
        CHECK(w > 100);
    }
}
