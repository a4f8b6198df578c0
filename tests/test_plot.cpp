// Tests for examples/seemoe/plot.hpp, the PNG plotting helper of the example program: each picture
// is encoded, decoded again with stb_image and checked at pixels whose colour is known (the font's
// glyphs, a chart's frame, a heatmap cell of a known value, the colour bar's ends, a gap where a
// series has a NaN); bad input (empty series, NaN, inconsistent sizes) is handled.
#include <catch2/catch.hpp>

#include <stb/stb_image.h>

#include <cmath>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "../examples/seemoe/plot.hpp"
#include "temp_dir.hpp"

namespace plot = cli::plot;
using plot::Canvas;
using plot::Color;

namespace {

const double kNaN = std::numeric_limits<double>::quiet_NaN();

// An image decoded from PNG bytes, with its pixel colours.
struct Decoded {
    int width = 0, height = 0, channels = 0;
    std::vector<unsigned char> rgb;
    Color at(int x, int y) const {
        const std::size_t i = (static_cast<std::size_t>(y) * static_cast<std::size_t>(width) + static_cast<std::size_t>(x)) * 3;
        return {rgb[i], rgb[i + 1], rgb[i + 2]};
    }
};

Decoded decode(const std::string& png) {
    Decoded d;
    unsigned char* pixels = stbi_load_from_memory(reinterpret_cast<const unsigned char*>(png.data()),
                                                  static_cast<int>(png.size()), &d.width, &d.height, &d.channels, 3);
    REQUIRE(pixels != nullptr);
    d.rgb.assign(pixels, pixels + static_cast<std::size_t>(d.width) * static_cast<std::size_t>(d.height) * 3);
    stbi_image_free(pixels);
    return d;
}

// The letter A of the font, written out here independently of its table.
const char* const kLetterA[8] = {".###.", "#...#", "#...#", "#####", "#...#", "#...#", "#...#", "....."};

bool is(Color a, Color b) { return a == b; }

// Whether `color` is at (x, y) or one of its 8 neighbours: where a line passes, rounding may put
// it one pixel either way.
template <typename Image>
bool near(const Image& image, int x, int y, Color color) {
    for (int dy = -1; dy <= 1; ++dy)
        for (int dx = -1; dx <= 1; ++dx)
            if (is(image.at(x + dx, y + dy), color)) return true;
    return false;
}

}  // namespace

TEST_CASE("plot: a canvas round-trips through PNG with its size and pixels", "[plot]") {
    Canvas c(37, 21, Color{10, 20, 30});
    c.set(0, 0, Color{255, 0, 0});
    c.set(36, 20, Color{0, 255, 0});
    c.set(-1, 5, plot::kBlack);   // outside: clipped, no error
    c.set(37, 5, plot::kBlack);
    c.fill_rect(30, -5, 20, 8, Color{1, 2, 3});  // partly outside
    const Decoded d = decode(c.encode_png());
    CHECK(d.width == 37);
    CHECK(d.height == 21);
    CHECK(d.channels == 3);
    CHECK(is(d.at(0, 0), Color{255, 0, 0}));
    CHECK(is(d.at(36, 20), Color{0, 255, 0}));
    CHECK(is(d.at(10, 10), Color{10, 20, 30}));
    CHECK(is(d.at(36, 2), Color{1, 2, 3}));
    CHECK(is(d.at(29, 2), Color{10, 20, 30}));
    CHECK(is(d.at(30, 3), Color{10, 20, 30}));
    CHECK_THROWS_AS(c.at(37, 0), seemoe::Error);
    CHECK_THROWS_AS(Canvas(0, 10), seemoe::Error);
    CHECK_THROWS_AS(Canvas(10, 100000), seemoe::Error);
}

TEST_CASE("plot: text is drawn glyph pixel by glyph pixel where it was asked", "[plot]") {
    Canvas c(30, 30);
    c.text(3, 4, "A", plot::kBlack);
    const Decoded d = decode(c.encode_png());
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 5; ++k) {
            INFO("glyph row " << r << ", column " << k);
            CHECK(is(d.at(3 + k, 4 + r), kLetterA[r][k] == '#' ? plot::kBlack : plot::kWhite));
        }
    // Nothing outside the glyph's cell.
    int black = 0;
    for (int y = 0; y < 30; ++y)
        for (int x = 0; x < 30; ++x) black += is(d.at(x, y), plot::kBlack);
    CHECK(black == 18);  // the '#' of kLetterA

    // Scale 3: each glyph pixel a 3 x 3 block; the second glyph starts kAdvance * 3 to the right.
    Canvas big(60, 40);
    big.text(2, 2, "AA", plot::kBlack, 3);
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 5; ++k)
            for (int glyph = 0; glyph < 2; ++glyph) {
                const Color want = kLetterA[r][k] == '#' ? plot::kBlack : plot::kWhite;
                const int x = 2 + (glyph * plot::kAdvance + k) * 3, y = 2 + r * 3;
                CHECK(is(big.at(x, y), want));
                CHECK(is(big.at(x + 2, y + 2), want));
            }
}

TEST_CASE("plot: turned text reads from bottom to top", "[plot]") {
    // "A" turned a quarter anticlockwise: glyph row r becomes column x + r, glyph column k
    // becomes row y + 4 - k.
    Canvas c(20, 20);
    c.text_up(5, 6, "A", plot::kBlack);
    for (int r = 0; r < 8; ++r)
        for (int k = 0; k < 5; ++k)
            CHECK(is(c.at(5 + r, 6 + 4 - k), kLetterA[r][k] == '#' ? plot::kBlack : plot::kWhite));
}

TEST_CASE("plot: text width, and characters the font lacks", "[plot]") {
    CHECK(plot::text_width("") == 0);
    CHECK(plot::text_width("a") == 5);
    CHECK(plot::text_width("ab") == 11);
    CHECK(plot::text_width("ab", 2) == 22);
    CHECK(plot::text_width("\xC3\xA9") == 5);  // e-acute: one UTF-8 character, one glyph (a box)
    Canvas c(10, 10);
    c.text(1, 1, "\xC3\xA9", plot::kBlack);
    CHECK(is(c.at(1, 1), plot::kBlack));  // the box's corners
    CHECK(is(c.at(5, 7), plot::kBlack));
    CHECK(is(c.at(3, 4), plot::kWhite));  // its hollow middle
}

TEST_CASE("plot: ticks at round values and their labels", "[plot]") {
    CHECK(plot::nice_ticks(0, 10, 5) == std::vector<double>{0, 2, 4, 6, 8, 10});
    const std::vector<double> small = plot::nice_ticks(0.013, 0.087, 4);
    REQUIRE(small.size() == 4);
    CHECK(small[0] == Approx(0.02));
    CHECK(small[3] == Approx(0.08));
    CHECK(plot::tick_labels(small, false) == std::vector<std::string>{"0.02", "0.04", "0.06", "0.08"});
    CHECK(plot::tick_labels(plot::nice_ticks(0, 6000, 6), false) ==
          std::vector<std::string>{"0", "1000", "2000", "3000", "4000", "5000", "6000"});
    CHECK(plot::log_ticks(0.3, 3) == std::vector<double>{0.5, 1, 2});
    const std::vector<double> decades = plot::log_ticks(0.002, 3);
    REQUIRE(decades.size() == 3);
    CHECK(plot::tick_labels(decades, true) == std::vector<std::string>{"0.01", "0.1", "1"});
    CHECK(plot::nice_ticks(kNaN, 1).empty());
    CHECK(plot::log_ticks(-1, 1).empty());
}

TEST_CASE("plot: a line plot has its frame, its line and a gap at a NaN", "[plot]") {
    plot::Series line{"y = x", {}, {}, Color{200, 30, 40}, false};
    for (int i = 0; i <= 10; ++i) {
        line.x.push_back(i);
        line.y.push_back(i);
    }
    plot::LinePlotOptions o;
    o.title = "title";
    o.x_label = "step";
    o.y_label = "loss";
    plot::PlotArea a;
    const Canvas canvas = plot::line_plot({line}, o, &a);
    const Decoded d = decode(canvas.encode_png());
    CHECK(d.width == o.width);
    CHECK(d.height == o.height);
    const int mid_x = (a.left + a.right) / 2, mid_y = (a.top + a.bottom) / 2;
    // The frame: black along the left and bottom axes.
    CHECK(is(d.at(a.left, mid_y), plot::kBlack));
    CHECK(is(d.at(mid_x, a.bottom), plot::kBlack));
    CHECK(is(d.at(a.right, mid_y), plot::kBlack));
    // y = x through the middle of the data area (the y range is padded evenly), not above-left of it.
    CHECK(near(d, mid_x, mid_y, line.color));
    const int off_x = a.left + (a.right - a.left) / 4, off_y = a.top + (a.bottom - a.top) / 4;
    CHECK(!near(d, off_x, off_y, line.color));
    // Text where the layout puts it: the title in the top strip, the y title in the left strip.
    auto dark_in = [&](int x0, int y0, int x1, int y1) {
        int n = 0;
        for (int y = y0; y < y1; ++y)
            for (int x = x0; x < x1; ++x) n += is(d.at(x, y), plot::kBlack);
        return n;
    };
    CHECK(dark_in(0, 0, d.width, a.top - 4) > 20);
    CHECK(dark_in(0, a.top, 10 + plot::kLineHeight * o.text_scale, a.bottom) > 20);
    CHECK(dark_in(a.left + 1, a.bottom + 8, a.right, d.height) > 20);  // x tick labels and title

    // A NaN in the middle breaks the line between its neighbours.
    plot::Series flat{"flat", {0, 1, 2, 3, 4, 5, 6, 7, 8}, {1, 1, 1, 1, kNaN, 1, 1, 1, 1}, Color{20, 160, 40}, false};
    const Canvas gap = plot::line_plot({flat}, o, &a);
    const int py = (a.top + a.bottom) / 2;  // y = 1 in the middle of the widened range
    auto px = [&](double x) { return a.left + static_cast<int>(std::lround(x / 8.0 * (a.right - a.left))); };
    CHECK(near(gap, px(2), py, flat.color));
    CHECK(!near(gap, px(4), py, flat.color));
    CHECK(near(gap, px(6), py, flat.color));
}

TEST_CASE("plot: a line plot of nothing, or of bad numbers, draws its frame and says so", "[plot]") {
    plot::LinePlotOptions o;
    plot::PlotArea a;
    const std::vector<plot::Series> cases[] = {
        {},
        {plot::Series{"empty", {}, {}, Color{1, 2, 3}, false}},
        {plot::Series{"nan", {0, 1, kNaN}, {kNaN, kNaN, 1}, Color{1, 2, 3}, false}},
    };
    for (const auto& series : cases) {
        const Canvas c = plot::line_plot(series, o, &a);
        CHECK(c.width() == o.width);
        CHECK(is(c.at(a.left, (a.top + a.bottom) / 2), plot::kBlack));
        int grey = 0;  // the "no data" note in the middle
        for (int y = a.top; y < a.bottom; ++y)
            for (int x = a.left + 1; x < a.right; ++x) grey += is(c.at(x, y), plot::kTextGrey);
        CHECK(grey > 20);
    }
    // A log axis leaves out values <= 0 instead of failing.
    o.log_y = true;
    const Canvas c = plot::line_plot({plot::Series{"", {0, 1, 2}, {0, -1, 3}, Color{1, 2, 3}, true}}, o, &a);
    CHECK(c.height() == o.height);
    // x and y of different lengths are a caller's mistake.
    CHECK_THROWS_AS(plot::line_plot({plot::Series{"bad", {0, 1}, {0}, Color{}, false}}, o), seemoe::Error);
}

TEST_CASE("plot: the colour scale runs through its stops and clamps", "[plot]") {
    CHECK(is(plot::colormap(0.0), Color{250, 248, 215}));
    CHECK(is(plot::colormap(0.5), Color{60, 165, 175}));
    CHECK(is(plot::colormap(1.0), Color{40, 20, 80}));
    CHECK(is(plot::colormap(0.125), Color{200, 232, 188}));  // half way between the first two stops
    CHECK(is(plot::colormap(-3), plot::colormap(0)));
    CHECK(is(plot::colormap(7), plot::colormap(1)));
    CHECK(is(plot::colormap(kNaN), plot::kMissing));
    // Darker as the value grows (sum of channels falls), so the order reads without colour.
    int last = 1000;
    for (int i = 0; i <= 20; ++i) {
        const Color c = plot::colormap(i / 20.0);
        const int sum = c.r + c.g + c.b;
        CHECK(sum < last);
        last = sum;
    }
}

TEST_CASE("plot: heatmap cells carry the colour of their value, the bar its ends", "[plot]") {
    const std::vector<std::vector<double>> values = {{0.0, 0.25, 1.0}, {0.5, kNaN, 0.75}};
    plot::HeatmapOptions o;
    o.title = "routing";
    o.scale_label = "share of tokens";
    o.vmin = 0;
    o.vmax = 1;
    plot::HeatmapLayout L;
    const Canvas c = plot::heatmap(values, {"red", "circle"}, {"0", "1", "2"}, o, &L);
    const Decoded d = decode(c.encode_png());
    CHECK(d.width == c.width());
    CHECK(d.height == c.height());
    auto cell = [&](int r, int k) {
        return d.at(L.left + k * L.cell_width + L.cell_width / 2, L.top + r * L.cell_height + L.cell_height / 2);
    };
    CHECK(is(cell(0, 0), plot::colormap(0.0)));
    CHECK(is(cell(0, 1), plot::colormap(0.25)));
    CHECK(is(cell(0, 2), Color{40, 20, 80}));
    CHECK(is(cell(1, 0), Color{60, 165, 175}));
    CHECK(is(cell(1, 1), plot::kMissing));
    CHECK(is(cell(1, 2), plot::colormap(0.75)));
    // The colour bar: vmax at the top, vmin at the bottom.
    CHECK(is(d.at(L.bar_left + L.bar_width / 2, L.bar_top), plot::colormap(1.0)));
    CHECK(is(d.at(L.bar_left + L.bar_width / 2, L.bar_top + L.bar_height - 1), plot::colormap(0.0)));
    // Row labels to the left of the cells.
    int dark = 0;
    for (int y = L.top; y < L.top + 2 * L.cell_height; ++y)
        for (int x = 0; x < L.left - 4; ++x) dark += is(d.at(x, y), plot::kBlack);
    CHECK(dark > 20);

    // Without vmin/vmax the data's range is used: 0 and 1 here, the same colours.
    plot::HeatmapLayout auto_layout;
    plot::heatmap(values, {"red", "circle"}, {"0", "1", "2"}, plot::HeatmapOptions(), &auto_layout);
    CHECK(auto_layout.vmin == 0);
    CHECK(auto_layout.vmax == 1);
}

TEST_CASE("plot: heatmaps of nothing and of the wrong shape", "[plot]") {
    CHECK_NOTHROW(plot::heatmap({}, {}, {"0", "1"}, plot::HeatmapOptions()));
    CHECK_NOTHROW(plot::heatmap({{kNaN, kNaN}}, {"w"}, {"0", "1"}, plot::HeatmapOptions()));
    CHECK_THROWS_AS(plot::heatmap({{1, 2}}, {"w"}, {"0", "1", "2"}, plot::HeatmapOptions()), seemoe::Error);
    CHECK_THROWS_AS(plot::heatmap({{1, 2}}, {}, {"0", "1"}, plot::HeatmapOptions()), seemoe::Error);
}

TEST_CASE("plot: grouped bars stand on zero at their heights", "[plot]") {
    const Color blue{36, 100, 170}, orange{230, 120, 20};
    plot::BarChartOptions o;
    o.reference = 0.25;
    o.reference_label = "even";
    plot::PlotArea a;
    const Canvas c = plot::bar_chart({"0", "1", "2", "3"}, {{"visual", {0.1, 0.4, kNaN, 0.25}, blue},
                                                            {"text", {0.3, 0.2, 0.3, 0.2}, orange}},
                                     o, &a);
    const Decoded d = decode(c.encode_png());
    const double slot = static_cast<double>(a.right - a.left + 1) / 4;
    const int bar_w = 6 * o.text_scale;
    auto centre = [&](int i) { return a.left + static_cast<int>(std::lround((i + 0.5) * slot)); };
    // Category 1: the visual bar (left of centre) reaches higher than the text bar (right of it).
    const int vis_x = centre(1) - bar_w + bar_w / 2, txt_x = centre(1) + bar_w / 2;
    CHECK(is(d.at(vis_x, a.bottom - 3), blue));
    CHECK(is(d.at(txt_x, a.bottom - 3), orange));
    int vis_top = a.bottom, txt_top = a.bottom;
    // (the dashed reference line at 0.25 crosses the visual bar)
    while (is(d.at(vis_x, vis_top - 1), blue) || is(d.at(vis_x, vis_top - 1), plot::kBlack)) --vis_top;
    while (is(d.at(txt_x, txt_top - 1), orange)) --txt_top;
    // Heights in proportion to the values (0.4 and 0.2), to within a pixel.
    CHECK(std::abs((a.bottom - vis_top + 1) - 2 * (a.bottom - txt_top + 1)) <= 2);
    // Category 2's visual value is NaN: no bar.
    CHECK(!is(d.at(centre(2) - bar_w + bar_w / 2, a.bottom - 3), blue));
    CHECK(is(d.at(centre(2) + bar_w / 2, a.bottom - 3), orange));
    CHECK_NOTHROW(plot::bar_chart({}, {}, plot::BarChartOptions()));
    CHECK_THROWS_AS(plot::bar_chart({"0"}, {{"x", {1, 2}, blue}}, o), seemoe::Error);
}

TEST_CASE("plot: save_png writes a file that decodes, or says why it cannot", "[plot]") {
    seemoe::testing::TempDir dir("seemoe_test_plot_");
    const Canvas c = plot::line_plot({plot::Series{"a", {0, 1, 2}, {3, 1, 2}, plot::series_color(1), true}},
                                     plot::LinePlotOptions());
    const std::string path = dir.file("loss.png");
    c.save_png(path);
    int w = 0, h = 0, n = 0;
    std::unique_ptr<unsigned char, void (*)(void*)> pixels(stbi_load(path.c_str(), &w, &h, &n, 3), stbi_image_free);
    REQUIRE(pixels != nullptr);
    CHECK(w == c.width());
    CHECK(h == c.height());
    CHECK_THROWS_AS(c.save_png(dir.file("no/such/folder/loss.png")), seemoe::Error);
}
