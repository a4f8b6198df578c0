// examples/seemoe/plot.hpp — a small plotting helper that writes PNG pictures a person can read:
// line plots (loss curves), heatmaps with a colour scale (routing by word) and grouped bar
// charts (routing by modality), each with axes, tick labels, axis titles and a legend.
//
// Why here and not in include/seemoe/: drawing charts is presentation for the example program,
// not tensor or model code, and the library's io/ folder holds file formats only (GUIDE §1). The
// header depends on nothing of the example program, so the tests include it on its own.
//
// How it works: a Canvas is an RGB8 pixel buffer (row-major, (0, 0) at the top left, y grows
// downwards) with a few primitives (rectangles, lines, text). Text uses the 5 x 8 bitmap font
// below (printable ASCII; other characters draw as a hollow box), scaled by an integer factor. A
// chart function lays out its data area, draws into a new Canvas and can report where it put
// things (PlotArea, HeatmapLayout) so that tests can look up known pixels. PNG encoding is
// stb_image_write's, through its declarations only (Debian's libstb carries the implementation,
// as for stb_image), and the file is written atomically with seemoe::io::write_file_atomic.
//
// Bad data never throws: non-finite points are left out of a line (which breaks there), a chart
// with no finite data draws its frame and says "no data", and a non-finite heatmap cell is drawn
// grey. Inconsistent arguments (x and y of different lengths, a row of the wrong width, a canvas
// of zero or huge size) throw seemoe::Error.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include <stb/stb_image_write.h>

#include <seemoe/core/common.hpp>
#include <seemoe/io/file.hpp>

namespace cli::plot {

struct Color {
    std::uint8_t r = 0, g = 0, b = 0;
    friend bool operator==(const Color& a, const Color& b) { return a.r == b.r && a.g == b.g && a.b == b.b; }
    friend bool operator!=(const Color& a, const Color& b) { return !(a == b); }
};

inline constexpr Color kWhite{255, 255, 255};
inline constexpr Color kBlack{0, 0, 0};
inline constexpr Color kGrid{225, 225, 225};      // grid lines behind the data
inline constexpr Color kMissing{190, 190, 190};   // a heatmap cell without a value
inline constexpr Color kTextGrey{90, 90, 90};

// Series colours, in the order charts hand them out: distinct in hue and lightness.
inline Color series_color(std::size_t i) {
    static constexpr std::array<Color, 6> colors = {
        Color{36, 100, 170}, Color{230, 120, 20}, Color{50, 150, 60},
        Color{200, 40, 50},  Color{130, 90, 180}, Color{120, 80, 60}};
    return colors[i % colors.size()];
}

// ---------------------------------------------------------------------------------------------
// The font: 95 glyphs (ASCII 32 ' ' to 126 '~'), each 8 rows of 5 pixels; bit 4 of a row is
// its left column. Rows 0-6 stand on the baseline (row 6), row 7 holds descenders (g j p q y ,).
// Drawn for this project, one glyph per line.
inline constexpr int kGlyphWidth = 5, kGlyphHeight = 8;
inline constexpr int kAdvance = 6;      // glyph width + one column of space
inline constexpr int kLineHeight = 10;  // glyph height + two rows of space

namespace detail {
inline const std::array<std::uint8_t, kGlyphHeight>& glyph(unsigned char c) {
    static constexpr std::array<std::array<std::uint8_t, kGlyphHeight>, 95> font = {{
        {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // space
        {0x04, 0x04, 0x04, 0x04, 0x04, 0x00, 0x04, 0x00},  // !
        {0x0A, 0x0A, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // "
        {0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A, 0x00},  // #
        {0x04, 0x0F, 0x14, 0x0E, 0x05, 0x1E, 0x04, 0x00},  // $
        {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03, 0x00},  // %
        {0x0C, 0x12, 0x14, 0x08, 0x15, 0x12, 0x0D, 0x00},  // &
        {0x04, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // '
        {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02, 0x00},  // (
        {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08, 0x00},  // )
        {0x00, 0x04, 0x15, 0x0E, 0x15, 0x04, 0x00, 0x00},  // *
        {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00, 0x00},  // +
        {0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x04, 0x08},  // ,
        {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00, 0x00},  // -
        {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00},  // .
        {0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10, 0x00},  // /
        {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E, 0x00},  // 0
        {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // 1
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F, 0x00},  // 2
        {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E, 0x00},  // 3
        {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02, 0x00},  // 4
        {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E, 0x00},  // 5
        {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E, 0x00},  // 6
        {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08, 0x00},  // 7
        {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E, 0x00},  // 8
        {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C, 0x00},  // 9
        {0x00, 0x00, 0x04, 0x00, 0x00, 0x04, 0x00, 0x00},  // :
        {0x00, 0x00, 0x04, 0x00, 0x00, 0x04, 0x04, 0x08},  // ;
        {0x02, 0x04, 0x08, 0x10, 0x08, 0x04, 0x02, 0x00},  // <
        {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00, 0x00},  // =
        {0x08, 0x04, 0x02, 0x01, 0x02, 0x04, 0x08, 0x00},  // >
        {0x0E, 0x11, 0x01, 0x02, 0x04, 0x00, 0x04, 0x00},  // ?
        {0x0E, 0x11, 0x17, 0x15, 0x17, 0x10, 0x0E, 0x00},  // @
        {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00},  // A
        {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E, 0x00},  // B
        {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E, 0x00},  // C
        {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C, 0x00},  // D
        {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F, 0x00},  // E
        {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10, 0x00},  // F
        {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F, 0x00},  // G
        {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11, 0x00},  // H
        {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // I
        {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C, 0x00},  // J
        {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11, 0x00},  // K
        {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F, 0x00},  // L
        {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11, 0x00},  // M
        {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x00},  // N
        {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // O
        {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10, 0x00},  // P
        {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D, 0x00},  // Q
        {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11, 0x00},  // R
        {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E, 0x00},  // S
        {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // T
        {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E, 0x00},  // U
        {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // V
        {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A, 0x00},  // W
        {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11, 0x00},  // X
        {0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04, 0x00},  // Y
        {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F, 0x00},  // Z
        {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E, 0x00},  // [
        {0x10, 0x10, 0x08, 0x04, 0x02, 0x01, 0x01, 0x00},  // backslash
        {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E, 0x00},  // ]
        {0x04, 0x0A, 0x11, 0x00, 0x00, 0x00, 0x00, 0x00},  // ^
        {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F, 0x00},  // _
        {0x08, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00},  // `
        {0x00, 0x00, 0x0E, 0x01, 0x0F, 0x11, 0x0F, 0x00},  // a
        {0x10, 0x10, 0x1E, 0x11, 0x11, 0x11, 0x1E, 0x00},  // b
        {0x00, 0x00, 0x0E, 0x10, 0x10, 0x11, 0x0E, 0x00},  // c
        {0x01, 0x01, 0x0F, 0x11, 0x11, 0x11, 0x0F, 0x00},  // d
        {0x00, 0x00, 0x0E, 0x11, 0x1F, 0x10, 0x0E, 0x00},  // e
        {0x06, 0x09, 0x08, 0x1C, 0x08, 0x08, 0x08, 0x00},  // f
        {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // g
        {0x10, 0x10, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // h
        {0x04, 0x00, 0x0C, 0x04, 0x04, 0x04, 0x0E, 0x00},  // i
        {0x02, 0x00, 0x06, 0x02, 0x02, 0x02, 0x12, 0x0C},  // j
        {0x10, 0x10, 0x12, 0x14, 0x18, 0x14, 0x12, 0x00},  // k
        {0x0C, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E, 0x00},  // l
        {0x00, 0x00, 0x1A, 0x15, 0x15, 0x15, 0x15, 0x00},  // m
        {0x00, 0x00, 0x16, 0x19, 0x11, 0x11, 0x11, 0x00},  // n
        {0x00, 0x00, 0x0E, 0x11, 0x11, 0x11, 0x0E, 0x00},  // o
        {0x00, 0x00, 0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10},  // p
        {0x00, 0x00, 0x0F, 0x11, 0x11, 0x0F, 0x01, 0x01},  // q
        {0x00, 0x00, 0x16, 0x19, 0x10, 0x10, 0x10, 0x00},  // r
        {0x00, 0x00, 0x0F, 0x10, 0x0E, 0x01, 0x1E, 0x00},  // s
        {0x08, 0x08, 0x1C, 0x08, 0x08, 0x09, 0x06, 0x00},  // t
        {0x00, 0x00, 0x11, 0x11, 0x11, 0x13, 0x0D, 0x00},  // u
        {0x00, 0x00, 0x11, 0x11, 0x11, 0x0A, 0x04, 0x00},  // v
        {0x00, 0x00, 0x11, 0x11, 0x15, 0x15, 0x0A, 0x00},  // w
        {0x00, 0x00, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x00},  // x
        {0x00, 0x00, 0x11, 0x11, 0x11, 0x0F, 0x01, 0x0E},  // y
        {0x00, 0x00, 0x1F, 0x02, 0x04, 0x08, 0x1F, 0x00},  // z
        {0x02, 0x04, 0x04, 0x08, 0x04, 0x04, 0x02, 0x00},  // {
        {0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04, 0x00},  // |
        {0x08, 0x04, 0x04, 0x02, 0x04, 0x04, 0x08, 0x00},  // }
        {0x00, 0x00, 0x08, 0x15, 0x02, 0x00, 0x00, 0x00},  // ~
    }};
    static constexpr std::array<std::uint8_t, kGlyphHeight> box = {0x1F, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1F, 0x00};
    return c >= 32 && c <= 126 ? font[c - 32] : box;
}

// The glyphs a string draws: printable ASCII as itself, UTF-8 continuation bytes not at all (so
// a multi-byte character draws one box), anything else as a box.
inline std::vector<unsigned char> glyphs_of(std::string_view s) {
    std::vector<unsigned char> out;
    out.reserve(s.size());
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        if (c >= 0x80 && c < 0xC0) continue;
        out.push_back(c);
    }
    return out;
}
}  // namespace detail

// Pixels a string takes at `scale`: width (no trailing space) and height.
inline int text_width(std::string_view s, int scale = 1) {
    const auto n = static_cast<int>(detail::glyphs_of(s).size());
    return n == 0 ? 0 : (n * kAdvance - 1) * scale;
}
inline int text_height(int scale = 1) { return kGlyphHeight * scale; }

// ---------------------------------------------------------------------------------------------
// Canvas: an RGB8 image. Drawing outside it is clipped, never an error.
class Canvas {
public:
    static constexpr int kMaxSide = 8192;

    Canvas(int width, int height, Color background = kWhite) : width_(width), height_(height) {
        SEEMOE_CHECK(width >= 1 && height >= 1 && width <= kMaxSide && height <= kMaxSide, "[plot] a canvas of ",
                     width, " x ", height, " pixels: each side must be in 1..", kMaxSide);
        pixels_.resize(static_cast<std::size_t>(width) * static_cast<std::size_t>(height) * 3);
        fill_rect(0, 0, width, height, background);
    }

    int width() const { return width_; }
    int height() const { return height_; }
    const std::vector<std::uint8_t>& pixels() const { return pixels_; }  // (height, width, 3)

    Color at(int x, int y) const {
        SEEMOE_CHECK(inside(x, y), "[plot] pixel (", x, ", ", y, ") is outside the ", width_, " x ", height_, " canvas");
        const std::uint8_t* p = &pixels_[offset(x, y)];
        return {p[0], p[1], p[2]};
    }

    void set(int x, int y, Color c) {
        if (!inside(x, y)) return;
        std::uint8_t* p = &pixels_[offset(x, y)];
        p[0] = c.r;
        p[1] = c.g;
        p[2] = c.b;
    }

    void fill_rect(int x, int y, int w, int h, Color c) {
        const int x0 = std::max(x, 0), y0 = std::max(y, 0);
        const int x1 = std::min(x + w, width_), y1 = std::min(y + h, height_);
        for (int yy = y0; yy < y1; ++yy)
            for (int xx = x0; xx < x1; ++xx) set(xx, yy, c);
    }

    // The outline of the w x h rectangle whose top left pixel is (x, y), one pixel wide.
    void outline_rect(int x, int y, int w, int h, Color c) {
        fill_rect(x, y, w, 1, c);
        fill_rect(x, y + h - 1, w, 1, c);
        fill_rect(x, y, 1, h, c);
        fill_rect(x + w - 1, y, 1, h, c);
    }

    // A straight line between two points (pixel centres), `thickness` pixels wide: a
    // thickness x thickness square stamped at each step along the longer axis. Non-finite
    // coordinates draw nothing.
    void line(double x0, double y0, double x1, double y1, Color c, int thickness = 1) {
        if (!std::isfinite(x0) || !std::isfinite(y0) || !std::isfinite(x1) || !std::isfinite(y1)) return;
        const double longest = std::max(std::abs(x1 - x0), std::abs(y1 - y0));
        if (longest > 4.0 * kMaxSide) return;  // far outside any canvas: nothing sensible to draw
        const int steps = std::max(1, static_cast<int>(std::ceil(longest)));
        const int half = (thickness - 1) / 2;
        for (int i = 0; i <= steps; ++i) {
            const double t = static_cast<double>(i) / steps;
            const int x = static_cast<int>(std::lround(x0 + (x1 - x0) * t));
            const int y = static_cast<int>(std::lround(y0 + (y1 - y0) * t));
            fill_rect(x - half, y - half, thickness, thickness, c);
        }
    }

    // Text whose first glyph's top left pixel is (x, y); each font pixel becomes a
    // scale x scale block.
    void text(int x, int y, std::string_view s, Color c, int scale = 1) {
        int column = 0;
        for (unsigned char ch : detail::glyphs_of(s)) {
            const auto& rows = detail::glyph(ch);
            for (int r = 0; r < kGlyphHeight; ++r)
                for (int k = 0; k < kGlyphWidth; ++k)
                    if (rows[static_cast<std::size_t>(r)] & (0x10 >> k))
                        fill_rect(x + (column + k) * scale, y + r * scale, scale, scale, c);
            column += kAdvance;
        }
    }

    // Text turned a quarter turn anticlockwise (it reads from bottom to top, as a y-axis title);
    // (x, y) is the top left pixel of the text_height x text_width box it fills.
    void text_up(int x, int y, std::string_view s, Color c, int scale = 1) {
        const int length = text_width(s, 1);
        int column = 0;
        for (unsigned char ch : detail::glyphs_of(s)) {
            const auto& rows = detail::glyph(ch);
            for (int r = 0; r < kGlyphHeight; ++r)
                for (int k = 0; k < kGlyphWidth; ++k)
                    if (rows[static_cast<std::size_t>(r)] & (0x10 >> k))
                        fill_rect(x + r * scale, y + (length - 1 - (column + k)) * scale, scale, scale, c);
            column += kAdvance;
        }
    }

    // The image as PNG file bytes.
    std::string encode_png() const {
        std::string bytes;
        auto append = [](void* context, void* data, int size) {
            static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
        };
        const int ok = stbi_write_png_to_func(append, &bytes, width_, height_, 3, pixels_.data(), width_ * 3);
        SEEMOE_CHECK(ok != 0, "[plot] the PNG encoder failed for a ", width_, " x ", height_, " image");
        return bytes;
    }

    // Writes the PNG file atomically (a temp file renamed over `path`).
    void save_png(const std::string& path) const { seemoe::io::write_file_atomic(path, encode_png()); }

private:
    bool inside(int x, int y) const { return x >= 0 && y >= 0 && x < width_ && y < height_; }
    std::size_t offset(int x, int y) const {
        return (static_cast<std::size_t>(y) * static_cast<std::size_t>(width_) + static_cast<std::size_t>(x)) * 3;
    }

    int width_, height_;
    std::vector<std::uint8_t> pixels_;
};

// ---------------------------------------------------------------------------------------------
// Axes: ticks at round values and their labels.

// About `target` evenly spaced round values (1, 2 or 5 times a power of ten) inside [lo, hi].
inline std::vector<double> nice_ticks(double lo, double hi, int target = 6) {
    if (!std::isfinite(lo) || !std::isfinite(hi)) return {};
    if (!(hi > lo)) return {lo};
    const double raw = (hi - lo) / std::max(target, 1);
    const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
    double step = 10 * magnitude;
    for (double m : {1.0, 2.0, 5.0})
        if (m * magnitude >= raw) {
            step = m * magnitude;
            break;
        }
    std::vector<double> ticks;
    const double first = std::ceil(lo / step - 1e-9);
    for (double i = first; i * step <= hi + step * 1e-9; i += 1) ticks.push_back(i == 0 ? 0.0 : i * step);
    return ticks;
}

// Ticks of a log axis on [lo, hi] (lo > 0): the powers of ten inside it, and their 2x and 5x
// when fewer than three powers fit.
inline std::vector<double> log_ticks(double lo, double hi) {
    if (!(lo > 0) || !std::isfinite(hi) || !(hi >= lo)) return {};
    std::vector<double> ticks;
    const int first = static_cast<int>(std::floor(std::log10(lo))), last = static_cast<int>(std::ceil(std::log10(hi)));
    const bool fine = last - first < 3;
    for (int k = first; k <= last; ++k)
        for (double m : {1.0, 2.0, 5.0}) {
            if (m != 1.0 && !fine) continue;
            const double v = m * std::pow(10.0, k);
            if (v >= lo * (1 - 1e-9) && v <= hi * (1 + 1e-9)) ticks.push_back(v);
        }
    return ticks;
}

// A tick label: as many decimals as the spacing of the ticks needs ("0.25", "1500").
inline std::string tick_label(double v, double spacing) {
    char buffer[64];
    const double a = std::abs(v);
    if (a != 0 && (a >= 1e6 || a < 1e-4)) {
        std::snprintf(buffer, sizeof buffer, "%g", v);
    } else {
        int decimals = 0;
        if (spacing > 0 && spacing < 1) decimals = std::min(6, static_cast<int>(std::ceil(-std::log10(spacing) - 1e-9)));
        std::snprintf(buffer, sizeof buffer, "%.*f", decimals, v);
    }
    return buffer;
}

// Labels for a list of ticks: a log axis shows each value as %g, a linear one with the decimals
// its spacing needs.
inline std::vector<std::string> tick_labels(const std::vector<double>& ticks, bool log) {
    std::vector<std::string> labels;
    const double spacing = ticks.size() > 1 ? ticks[1] - ticks[0] : 1.0;
    for (double t : ticks) {
        if (log) {
            char buffer[64];
            std::snprintf(buffer, sizeof buffer, "%g", t);
            labels.emplace_back(buffer);
        } else {
            labels.push_back(tick_label(t, spacing));
        }
    }
    return labels;
}

// The data area of a chart, in pixels (inclusive bounds): x = left at the axis minimum, right at
// its maximum; y = bottom at the minimum, top at the maximum.
struct PlotArea {
    int left = 0, top = 0, right = 0, bottom = 0;
};

// An axis range and how values map onto [0, 1] along it.
struct AxisRange {
    double lo = 0, hi = 1;
    bool log = false;
    double unit(double v) const {
        if (log) return (std::log10(v) - std::log10(lo)) / (std::log10(hi) - std::log10(lo));
        return (v - lo) / (hi - lo);
    }
    bool accepts(double v) const { return std::isfinite(v) && (!log || v > 0); }
};

namespace detail {
// Widens an empty or single-valued range so that it maps onto a line of pixels.
inline AxisRange widened(double lo, double hi, bool log) {
    if (!(lo <= hi)) return {log ? 0.1 : 0.0, 1.0, log};  // no data
    if (log) {
        if (hi / lo < 1.0001) return {lo / 2, hi * 2, true};
        return {lo, hi, true};
    }
    if (hi - lo <= 1e-12 * std::max(1.0, std::abs(hi))) return {lo - 0.5, hi + 0.5, false};
    return {lo, hi, false};
}

inline int pixel_x(const PlotArea& a, const AxisRange& r, double v) {
    return a.left + static_cast<int>(std::lround(r.unit(v) * (a.right - a.left)));
}
inline int pixel_y(const PlotArea& a, const AxisRange& r, double v) {
    return a.bottom - static_cast<int>(std::lround(r.unit(v) * (a.bottom - a.top)));
}

inline int widest(const std::vector<std::string>& labels, int scale) {
    int w = 0;
    for (const auto& l : labels) w = std::max(w, text_width(l, scale));
    return w;
}

// The frame, the y axis's ticks, labels and grid lines, and the titles, shared by the charts.
inline void draw_y_axis(Canvas& canvas, const PlotArea& area, const AxisRange& y, const std::vector<double>& ticks,
                        int scale) {
    const std::vector<std::string> labels = tick_labels(ticks, y.log);
    for (std::size_t i = 0; i < ticks.size(); ++i) {
        const int py = pixel_y(area, y, ticks[i]);
        canvas.fill_rect(area.left + 1, py, area.right - area.left - 1, 1, kGrid);
        canvas.fill_rect(area.left - 5, py, 5, 1, kBlack);
        canvas.text(area.left - 8 - text_width(labels[i], scale), py - text_height(scale) / 2 + scale, labels[i],
                    kBlack, scale);
    }
}

inline void draw_titles(Canvas& canvas, const PlotArea& area, const std::string& title, const std::string& x_label,
                        const std::string& y_label, int scale, int x_label_top, int y_label_left) {
    const int mid_x = (area.left + area.right) / 2, mid_y = (area.top + area.bottom) / 2;
    // Centred over the data, but kept on the canvas when it is wider.
    const int title_width = text_width(title, scale);
    canvas.text(std::max(2, std::min(mid_x - title_width / 2, canvas.width() - title_width - 2)), 8, title, kBlack, scale);
    canvas.text(mid_x - text_width(x_label, scale) / 2, x_label_top, x_label, kBlack, scale);
    canvas.text_up(y_label_left, mid_y - text_width(y_label, scale) / 2, y_label, kBlack, scale);
}

// How a legend shows an entry: a short line, a filled square (bars) or a dashed line.
enum class Mark { Line, Square, Dashed };
struct LegendEntry {
    std::string name;
    Color color;
    Mark mark = Mark::Line;
};

inline int legend_width(const std::vector<LegendEntry>& entries, int scale) {
    int name_width = 0;
    for (const auto& e : entries) name_width = std::max(name_width, text_width(e.name, scale));
    return entries.empty() ? 0 : 4 * scale + 12 * scale + 4 * scale + name_width + 4 * scale;
}

// A legend box whose top left corner is (x, y): a sample of each entry's mark and its name.
inline void draw_legend(Canvas& canvas, int x, int y, const std::vector<LegendEntry>& entries, int scale) {
    if (entries.empty()) return;
    const int sample = 12 * scale, pad = 4 * scale, row = kLineHeight * scale + 2 * scale;
    const int w = legend_width(entries, scale);
    const int h = pad + row * static_cast<int>(entries.size()) - 2 * scale + pad;
    canvas.fill_rect(x, y, w, h, kWhite);
    canvas.outline_rect(x, y, w, h, kTextGrey);
    for (std::size_t i = 0; i < entries.size(); ++i) {
        const LegendEntry& e = entries[i];
        const int ty = y + pad + static_cast<int>(i) * row;
        const int cy = ty + text_height(scale) / 2 - scale;
        if (e.mark == Mark::Square) {
            canvas.fill_rect(x + pad, ty, sample, text_height(scale) - scale, e.color);
        } else if (e.mark == Mark::Dashed) {
            for (int dx = 0; dx < sample; dx += 6) canvas.fill_rect(x + pad + dx, cy, std::min(4, sample - dx), 1, e.color);
        } else {
            canvas.fill_rect(x + pad, cy - scale / 2, sample, std::max(2, scale), e.color);
        }
        canvas.text(x + pad + sample + pad, ty, e.name, kBlack, scale);
    }
}
}  // namespace detail

// ---------------------------------------------------------------------------------------------
// Line plot.

struct Series {
    std::string name;           // in the legend; an empty name leaves the series out of it
    std::vector<double> x, y;   // points, in drawing order
    Color color = series_color(0);
    bool markers = false;       // a small square on each point (for sparse series)
};

struct LinePlotOptions {
    std::string title, x_label, y_label;
    bool log_y = false;  // a log y axis (loss curves); points <= 0 are then left out
    int width = 720, height = 440;
    int text_scale = 2;  // font pixels per glyph pixel
};

// Draws the series on common axes that fit every finite point. `area`, when given, receives the
// data area.
inline Canvas line_plot(const std::vector<Series>& series, const LinePlotOptions& o, PlotArea* area_out = nullptr) {
    for (const Series& s : series)
        SEEMOE_CHECK(s.x.size() == s.y.size(), "[line_plot] series '", s.name, "' has ", s.x.size(), " x values and ",
                     s.y.size(), " y values");
    const int scale = std::max(1, o.text_scale);
    // The ranges of the points that can be drawn.
    double x_lo = std::numeric_limits<double>::infinity(), x_hi = -x_lo, y_lo = x_lo, y_hi = -x_lo;
    const AxisRange any_y{1, 10, o.log_y};
    for (const Series& s : series)
        for (std::size_t i = 0; i < s.x.size(); ++i)
            if (std::isfinite(s.x[i]) && any_y.accepts(s.y[i])) {
                x_lo = std::min(x_lo, s.x[i]);
                x_hi = std::max(x_hi, s.x[i]);
                y_lo = std::min(y_lo, s.y[i]);
                y_hi = std::max(y_hi, s.y[i]);
            }
    const bool empty = !(x_lo <= x_hi);
    const AxisRange x = detail::widened(x_lo, x_hi, false);
    AxisRange y = detail::widened(y_lo, y_hi, o.log_y);
    if (!empty) {  // a little room above and below the data
        if (o.log_y) y = {y.lo / 1.15, y.hi * 1.15, true};
        else y = {y.lo - 0.04 * (y.hi - y.lo), y.hi + 0.04 * (y.hi - y.lo), false};
    }
    const std::vector<double> x_ticks = nice_ticks(x.lo, x.hi, 6);
    const std::vector<double> y_ticks = o.log_y ? log_ticks(y.lo, y.hi) : nice_ticks(y.lo, y.hi, 6);

    // Layout: title on top, y title and tick labels on the left, x tick labels and title below.
    const int line = kLineHeight * scale;
    const int y_label_width = detail::widest(tick_labels(y_ticks, o.log_y), scale);
    PlotArea a;
    a.left = 10 + line + 8 + y_label_width + 8;
    a.top = 8 + line + 10;
    a.right = o.width - 24;
    a.bottom = o.height - (8 + line + 6 + line + 8);
    SEEMOE_CHECK(a.right - a.left >= 20 && a.bottom - a.top >= 20, "[line_plot] ", o.width, " x ", o.height,
                 " pixels leave no room for the data");
    Canvas canvas(o.width, o.height);

    detail::draw_y_axis(canvas, a, y, y_ticks, scale);
    const std::vector<std::string> x_labels = tick_labels(x_ticks, false);
    for (std::size_t i = 0; i < x_ticks.size(); ++i) {
        const int px = detail::pixel_x(a, x, x_ticks[i]);
        canvas.fill_rect(px, a.top + 1, 1, a.bottom - a.top - 1, kGrid);
        canvas.fill_rect(px, a.bottom + 1, 1, 5, kBlack);
        canvas.text(px - text_width(x_labels[i], scale) / 2, a.bottom + 9, x_labels[i], kBlack, scale);
    }
    // The data, clipped to the area by construction (the ranges hold every drawn point).
    for (const Series& s : series) {
        bool have_last = false;
        int last_x = 0, last_y = 0;
        for (std::size_t i = 0; i < s.x.size(); ++i) {
            if (!std::isfinite(s.x[i]) || !y.accepts(s.y[i])) {
                have_last = false;  // a gap: the line breaks here
                continue;
            }
            const int px = detail::pixel_x(a, x, s.x[i]), py = detail::pixel_y(a, y, s.y[i]);
            if (have_last) canvas.line(last_x, last_y, px, py, s.color, 2);
            if (s.markers) canvas.fill_rect(px - 2 - scale / 2, py - 2 - scale / 2, 5 + scale, 5 + scale, s.color);
            have_last = true;
            last_x = px;
            last_y = py;
        }
    }
    canvas.outline_rect(a.left, a.top, a.right - a.left + 1, a.bottom - a.top + 1, kBlack);
    if (empty) {
        const std::string note = "no data";
        canvas.text((a.left + a.right - text_width(note, scale)) / 2, (a.top + a.bottom) / 2, note, kTextGrey, scale);
    }
    detail::draw_titles(canvas, a, o.title, o.x_label, o.y_label, scale, a.bottom + 9 + line + 6, 10);
    std::vector<detail::LegendEntry> legend;  // inside, top right: loss curves fall away from it
    for (const Series& s : series)
        if (!s.name.empty()) legend.push_back({s.name, s.color, detail::Mark::Line});
    detail::draw_legend(canvas, a.right - detail::legend_width(legend, scale) - 6, a.top + 6, legend, scale);
    if (area_out) *area_out = a;
    return canvas;
}

// ---------------------------------------------------------------------------------------------
// Heatmap with a colour scale.

// The colour scale: t = 0 (the low end) a pale yellow, through green and blue to a dark violet at
// t = 1; lightness falls all the way, so the order reads in grey too. t is clamped to [0, 1];
// NaN gives kMissing.
inline Color colormap(double t) {
    if (std::isnan(t)) return kMissing;
    t = std::clamp(t, 0.0, 1.0);
    static constexpr std::array<Color, 5> stops = {Color{250, 248, 215}, Color{150, 215, 160}, Color{60, 165, 175},
                                                   Color{40, 90, 160}, Color{40, 20, 80}};
    const double pos = t * (stops.size() - 1);
    const auto i = std::min(static_cast<std::size_t>(pos), stops.size() - 2);
    const double f = pos - static_cast<double>(i);
    auto mix = [f](std::uint8_t a, std::uint8_t b) {
        return static_cast<std::uint8_t>(std::lround(a + (static_cast<double>(b) - a) * f));
    };
    return {mix(stops[i].r, stops[i + 1].r), mix(stops[i].g, stops[i + 1].g), mix(stops[i].b, stops[i + 1].b)};
}

struct HeatmapOptions {
    std::string title, x_label, y_label;
    std::string scale_label;  // beside the colour scale (what a colour means)
    // The values at the two ends of the colour scale; NaN: the data's minimum and maximum.
    double vmin = std::numeric_limits<double>::quiet_NaN(), vmax = std::numeric_limits<double>::quiet_NaN();
    int cell_width = 0, cell_height = 0;  // 0: fit the labels
    int text_scale = 2;
};

// Where heatmap() put things: cell (row r, column c) covers
// [left + c * cell_width, left + (c + 1) * cell_width) x [top + r * cell_height, ...); the colour
// bar runs from vmax at bar_top to vmin at its bottom.
struct HeatmapLayout {
    int left = 0, top = 0, cell_width = 0, cell_height = 0, rows = 0, cols = 0;
    int bar_left = 0, bar_top = 0, bar_width = 0, bar_height = 0;
    double vmin = 0, vmax = 1;
};

// values[r][c] is drawn as cell (r, c): rows labelled on the left, columns below.
inline Canvas heatmap(const std::vector<std::vector<double>>& values, const std::vector<std::string>& row_labels,
                      const std::vector<std::string>& col_labels, const HeatmapOptions& o,
                      HeatmapLayout* layout_out = nullptr) {
    SEEMOE_CHECK(values.size() == row_labels.size(), "[heatmap] ", values.size(), " rows of values but ",
                 row_labels.size(), " row labels");
    for (std::size_t r = 0; r < values.size(); ++r)
        SEEMOE_CHECK(values[r].size() == col_labels.size(), "[heatmap] row ", r, " has ", values[r].size(),
                     " values but there are ", col_labels.size(), " column labels");
    const int scale = std::max(1, o.text_scale), line = kLineHeight * scale;
    HeatmapLayout L;
    L.rows = static_cast<int>(values.size());
    L.cols = static_cast<int>(col_labels.size());
    SEEMOE_CHECK(L.rows <= 2000 && L.cols <= 2000, "[heatmap] ", L.rows, " x ", L.cols, " cells is too many to draw");

    // The colour scale's ends.
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (const auto& row : values)
        for (double v : row)
            if (std::isfinite(v)) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
    const bool empty = !(lo <= hi);
    if (std::isfinite(o.vmin)) lo = o.vmin;
    if (std::isfinite(o.vmax)) hi = o.vmax;
    const AxisRange range = detail::widened(lo, hi, false);
    L.vmin = range.lo;
    L.vmax = range.hi;

    // Layout: title; row labels | cells | colour bar, its ticks and its label; column labels and
    // the x title below.
    L.cell_width = o.cell_width > 0 ? o.cell_width : std::max(14 * scale, detail::widest(col_labels, scale) + 4 * scale);
    L.cell_height = o.cell_height > 0 ? o.cell_height : line + 2 * scale;
    const int row_label_width = detail::widest(row_labels, scale);
    L.left = 10 + line + 8 + row_label_width + 8;
    L.top = 8 + line + 12;
    const int grid_w = std::max(L.cols, 1) * L.cell_width, grid_h = std::max(L.rows, 1) * L.cell_height;
    L.bar_left = L.left + grid_w + 16;
    L.bar_top = L.top;
    L.bar_width = 16;
    L.bar_height = std::max(grid_h, 120);
    const std::vector<double> bar_ticks = nice_ticks(L.vmin, L.vmax, 5);
    const std::vector<std::string> bar_labels = tick_labels(bar_ticks, false);
    const int bar_labels_right = L.bar_left + L.bar_width + 8 + detail::widest(bar_labels, scale);
    const int width = std::max(bar_labels_right + 8 + line + 10, L.left + text_width(o.title, scale) + 10);
    const int height = L.top + std::max(grid_h, L.bar_height) + 8 + line + 6 + line + 10;
    Canvas canvas(width, height);

    for (int r = 0; r < L.rows; ++r)
        for (int c = 0; c < L.cols; ++c) {
            const double v = values[static_cast<std::size_t>(r)][static_cast<std::size_t>(c)];
            const Color color = std::isfinite(v) ? colormap(range.unit(v)) : kMissing;
            canvas.fill_rect(L.left + c * L.cell_width, L.top + r * L.cell_height, L.cell_width, L.cell_height, color);
        }
    canvas.outline_rect(L.left - 1, L.top - 1, grid_w + 2, grid_h + 2, kBlack);
    if (empty) {
        const std::string note = "no data";
        canvas.text(L.left + (grid_w - text_width(note, scale)) / 2, L.top + (grid_h - line) / 2, note, kTextGrey,
                    scale);
    }
    for (int r = 0; r < L.rows; ++r) {
        const std::string& label = row_labels[static_cast<std::size_t>(r)];
        canvas.text(L.left - 8 - text_width(label, scale), L.top + r * L.cell_height + (L.cell_height - line) / 2 + scale,
                    label, kBlack, scale);
    }
    for (int c = 0; c < L.cols; ++c) {
        const std::string& label = col_labels[static_cast<std::size_t>(c)];
        canvas.text(L.left + c * L.cell_width + (L.cell_width - text_width(label, scale)) / 2, L.top + grid_h + 8, label,
                    kBlack, scale);
    }
    // The colour bar: vmax at the top, vmin at the bottom, with its ticks.
    for (int i = 0; i < L.bar_height; ++i)
        canvas.fill_rect(L.bar_left, L.bar_top + i, L.bar_width, 1,
                         colormap(1.0 - static_cast<double>(i) / std::max(1, L.bar_height - 1)));
    canvas.outline_rect(L.bar_left - 1, L.bar_top - 1, L.bar_width + 2, L.bar_height + 2, kBlack);
    const PlotArea bar{L.bar_left, L.bar_top, L.bar_left + L.bar_width - 1, L.bar_top + L.bar_height - 1};
    for (std::size_t i = 0; i < bar_ticks.size(); ++i) {
        const int py = detail::pixel_y(bar, range, bar_ticks[i]);
        canvas.fill_rect(L.bar_left + L.bar_width, py, 4, 1, kBlack);
        canvas.text(L.bar_left + L.bar_width + 8, py - text_height(scale) / 2 + scale, bar_labels[i], kBlack, scale);
    }
    canvas.text_up(bar_labels_right + 8, L.bar_top + (L.bar_height - text_width(o.scale_label, scale)) / 2,
                   o.scale_label, kBlack, scale);
    const PlotArea grid{L.left, L.top, L.left + grid_w - 1, L.top + grid_h - 1};
    detail::draw_titles(canvas, grid, o.title, o.x_label, o.y_label, scale, L.top + std::max(grid_h, L.bar_height) + 8 + line + 6,
                        10);
    if (layout_out) *layout_out = L;
    return canvas;
}

// ---------------------------------------------------------------------------------------------
// Grouped bar chart: for each category, one bar per series, side by side.

struct BarSeries {
    std::string name;
    std::vector<double> values;  // one per category; a non-finite value draws no bar
    Color color = series_color(0);
};

struct BarChartOptions {
    std::string title, x_label, y_label;
    // A dashed horizontal reference line (e.g. what an even split would give); NaN: none.
    double reference = std::numeric_limits<double>::quiet_NaN();
    std::string reference_label;  // in the legend
    int height = 440;
    int text_scale = 2;
};

// The y axis starts at 0 (or below, for negative values) and ends above the largest value.
// `area`, when given, receives the data area; category i is centred at
// area.left + (i + 0.5) * (area.right - area.left + 1) / categories.
inline Canvas bar_chart(const std::vector<std::string>& categories, const std::vector<BarSeries>& series,
                        const BarChartOptions& o, PlotArea* area_out = nullptr) {
    for (const BarSeries& s : series)
        SEEMOE_CHECK(s.values.size() == categories.size(), "[bar_chart] series '", s.name, "' has ", s.values.size(),
                     " values for ", categories.size(), " categories");
    SEEMOE_CHECK(categories.size() <= 2000, "[bar_chart] ", categories.size(), " categories is too many to draw");
    const int scale = std::max(1, o.text_scale), line = kLineHeight * scale;
    double lo = 0, hi = -std::numeric_limits<double>::infinity();
    for (const BarSeries& s : series)
        for (double v : s.values)
            if (std::isfinite(v)) {
                lo = std::min(lo, v);
                hi = std::max(hi, v);
            }
    const bool empty = !(hi > -std::numeric_limits<double>::infinity());
    if (std::isfinite(o.reference)) hi = std::max(hi, o.reference);
    AxisRange y = detail::widened(lo, std::max(hi, lo), false);
    if (!empty) y.hi += 0.05 * (y.hi - y.lo);
    const std::vector<double> ticks = nice_ticks(y.lo, y.hi, 6);

    const int n = std::max<int>(1, static_cast<int>(categories.size()));
    const int bars = std::max<int>(1, static_cast<int>(series.size()));
    const int bar_w = 6 * scale;
    const int slot = std::max(bars * bar_w + 6 * scale, detail::widest(categories, scale) + 4 * scale);
    PlotArea a;
    a.left = 10 + line + 8 + detail::widest(tick_labels(ticks, false), scale) + 8;
    a.top = 8 + line + 10;
    a.right = a.left + n * slot - 1;
    a.bottom = a.top + std::max(60, o.height - a.top - (8 + line + 6 + line + 8));
    std::vector<detail::LegendEntry> legend;  // outside, to the right of the bars
    for (const BarSeries& s : series)
        if (!s.name.empty()) legend.push_back({s.name, s.color, detail::Mark::Square});
    if (std::isfinite(o.reference) && !o.reference_label.empty())
        legend.push_back({o.reference_label, kBlack, detail::Mark::Dashed});
    const int legend_w = detail::legend_width(legend, scale);
    const int width = std::max(a.right + 12 + legend_w + 12, text_width(o.title, scale) + 20);
    const double slot_px = static_cast<double>(a.right - a.left + 1) / n;
    Canvas canvas(width, a.bottom + 8 + line + 6 + line + 10);

    detail::draw_y_axis(canvas, a, y, ticks, scale);
    const int zero = detail::pixel_y(a, y, 0.0);
    for (int i = 0; i < static_cast<int>(categories.size()); ++i) {
        const int centre = a.left + static_cast<int>(std::lround((i + 0.5) * slot_px));
        const int first = centre - bars * bar_w / 2;
        for (int k = 0; k < static_cast<int>(series.size()); ++k) {
            const double v = series[static_cast<std::size_t>(k)].values[static_cast<std::size_t>(i)];
            if (!std::isfinite(v)) continue;
            const int top = std::min(zero, detail::pixel_y(a, y, v)), bottom = std::max(zero, detail::pixel_y(a, y, v));
            canvas.fill_rect(first + k * bar_w, top, bar_w - 1, bottom - top + 1, series[static_cast<std::size_t>(k)].color);
        }
        const std::string& label = categories[static_cast<std::size_t>(i)];
        canvas.fill_rect(centre, a.bottom + 1, 1, 5, kBlack);
        canvas.text(centre - text_width(label, scale) / 2, a.bottom + 9, label, kBlack, scale);
    }
    if (std::isfinite(o.reference)) {
        const int py = detail::pixel_y(a, y, o.reference);
        for (int x = a.left + 1; x < a.right; x += 8) canvas.fill_rect(x, py, 4, 1, kBlack);
    }
    canvas.outline_rect(a.left, a.top, a.right - a.left + 1, a.bottom - a.top + 1, kBlack);
    if (empty) {
        const std::string note = "no data";
        canvas.text((a.left + a.right - text_width(note, scale)) / 2, (a.top + a.bottom) / 2, note, kTextGrey, scale);
    }
    detail::draw_titles(canvas, a, o.title, o.x_label, o.y_label, scale, a.bottom + 9 + line + 6, 10);
    detail::draw_legend(canvas, a.right + 12, a.top, legend, scale);
    if (area_out) *area_out = a;
    return canvas;
}

}  // namespace cli::plot
