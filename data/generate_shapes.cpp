// data/generate_shapes.cpp — writes the "shapes" image–caption data set that ships with seemoe.
//
// Each image is a small noisy scene with one shape; its caption names the shape's size, colour,
// kind and place on a 3x3 grid: "a small red circle at the top left". Splits:
//   train  every (colour, shape) pair except a fixed held-out set
//   val    new images of the pairs used in train (fresh noise, jitter and placement: no copies)
//   test   only the held-out pairs, so a model must compose attributes it never saw together
// Attribute combinations are drawn in balanced rounds (every combination once per round, in a
// shuffled order), so each split covers its combinations evenly.
//
// Usage: seemoe_generate_shapes --out DIR [--seed N] [--train N] [--val N] [--test N] [--size S]
//                               [--force]
// Writes DIR/{train,val,test}/NNNNN.png and DIR/captions.csv (columns image, caption, split).
// All randomness comes from one seemoe::Rng seeded with --seed; the same seed and counts give
// the same files.
#include <stb/stb_image_write.h>

#include <seemoe/core/common.hpp>
#include <seemoe/data/csv.hpp>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace {

namespace fs = std::filesystem;
using seemoe::Index;
using seemoe::Rng;

struct Colour {
    const char* name;
    std::array<double, 3> rgb;
};
const std::array<Colour, 7> kColours = {{
    {"red", {220, 40, 40}},
    {"green", {40, 190, 60}},
    {"blue", {50, 100, 235}},
    {"yellow", {235, 220, 50}},
    {"purple", {155, 60, 205}},
    {"orange", {245, 140, 30}},
    {"white", {240, 240, 240}},
}};

enum class ShapeKind { circle, square, triangle, star, cross, diamond };
const std::array<const char*, 6> kShapeNames = {"circle", "square", "triangle", "star", "cross", "diamond"};

// (colour, shape) pairs that never appear in train or val: each of the first six colours and
// each shape is held out exactly once, so every word still occurs in training.
const std::array<std::pair<int, ShapeKind>, 6> kHeldOut = {{
    {0, ShapeKind::triangle},  // red triangle
    {1, ShapeKind::star},      // green star
    {2, ShapeKind::cross},     // blue cross
    {3, ShapeKind::diamond},   // yellow diamond
    {4, ShapeKind::circle},    // purple circle
    {5, ShapeKind::square},    // orange square
}};

// Places on the 3x3 grid, row-major from the top left, with the phrase that ends the caption.
// clang-format off
const std::array<const char*, 9> kPlaces = {
    "at the top left",    "at the top",    "at the top right",
    "on the left",        "in the center", "on the right",
    "at the bottom left", "at the bottom", "at the bottom right",
};
// clang-format on

struct Combination {
    int colour;
    ShapeKind shape;
    bool large;
    int place;
};

bool held_out(int colour, ShapeKind shape) {
    for (const auto& [c, s] : kHeldOut)
        if (c == colour && s == shape) return true;
    return false;
}

std::vector<Combination> combinations(bool test_split) {
    std::vector<Combination> out;
    for (int c = 0; c < static_cast<int>(kColours.size()); ++c)
        for (int s = 0; s < static_cast<int>(kShapeNames.size()); ++s) {
            const auto shape = static_cast<ShapeKind>(s);
            if (held_out(c, shape) != test_split) continue;
            for (bool large : {false, true})
                for (int place = 0; place < 9; ++place) out.push_back({c, shape, large, place});
        }
    return out;
}

std::string caption_of(const Combination& k) {
    return std::string("a ") + (k.large ? "large " : "small ") + kColours[k.colour].name + " " +
           kShapeNames[static_cast<int>(k.shape)] + " " + kPlaces[k.place];
}

// ---- rendering -----------------------------------------------------------------------------

struct Point {
    double x, y;
};

// Outline of each polygonal shape in unit coordinates (y up, radius about 1).
std::vector<Point> outline(ShapeKind shape) {
    const double pi = 3.14159265358979323846;
    // clang-format off
    switch (shape) {
        case ShapeKind::square: return {{-0.8, -0.8}, {0.8, -0.8}, {0.8, 0.8}, {-0.8, 0.8}};
        case ShapeKind::diamond: return {{0, 1.05}, {0.72, 0}, {0, -1.05}, {-0.72, 0}};
        case ShapeKind::triangle: return {{0, 1.0}, {-0.95, -0.7}, {0.95, -0.7}};
        case ShapeKind::cross: {
            const double a = 0.32, b = 1.0;  // arm half-width, arm reach
            return {{-a, b}, {a, b}, {a, a}, {b, a}, {b, -a}, {a, -a},
                    {a, -b}, {-a, -b}, {-a, -a}, {-b, -a}, {-b, a}, {-a, a}};
        }
        case ShapeKind::star: {
            std::vector<Point> p;
            for (int i = 0; i < 10; ++i) {
                const double r = (i % 2 == 0) ? 1.1 : 0.48;
                const double angle = pi / 2 + i * pi / 5;
                p.push_back({r * std::cos(angle), r * std::sin(angle)});
            }
            return p;
        }
        case ShapeKind::circle: break;
    }
    // clang-format on
    return {};
}

// Even-odd rule: a ray to the right crosses the outline an odd number of times from inside.
bool inside_polygon(const std::vector<Point>& poly, double x, double y) {
    bool inside = false;
    for (std::size_t i = 0, j = poly.size() - 1; i < poly.size(); j = i++) {
        const Point& a = poly[i];
        const Point& b = poly[j];
        if ((a.y > y) != (b.y > y) && x < (b.x - a.x) * (y - a.y) / (b.y - a.y) + a.x) inside = !inside;
    }
    return inside;
}

// One (size, size, 3) scene for the combination.
std::vector<std::uint8_t> render(const Combination& k, int size, Rng& rng) {
    const double S = size;
    // Background: a dark colour with a gentle left-right gradient.
    std::array<double, 3> bg, bg_slope;
    for (int c = 0; c < 3; ++c) {
        bg[c] = rng.uniform(15, 75);
        bg_slope[c] = rng.uniform(-12, 12);
    }
    // Shape: colour jittered per channel, radius by size class, centre jittered inside its cell,
    // a small rotation (circles are unaffected).
    std::array<double, 3> fg;
    for (int c = 0; c < 3; ++c)
        fg[c] = std::clamp(kColours[k.colour].rgb[c] + rng.uniform(-15, 15), 0.0, 255.0);
    const double radius = S * (k.large ? rng.uniform(0.19, 0.215) : rng.uniform(0.115, 0.135));
    const double cell_centre[3] = {0.235, 0.5, 0.765};
    const double cx = S * (cell_centre[k.place % 3] + rng.uniform(-0.035, 0.035));
    const double cy = S * (cell_centre[k.place / 3] + rng.uniform(-0.035, 0.035));
    const double angle = rng.uniform(-0.2, 0.2);  // radians, about +-11 degrees
    const double cos_a = std::cos(angle), sin_a = std::sin(angle);
    const std::vector<Point> poly = outline(k.shape);

    // Coverage of each pixel from a 4x4 grid of samples, for smooth edges.
    const int sub = 4;
    std::vector<std::uint8_t> rgb(static_cast<std::size_t>(size) * size * 3);
    for (int y = 0; y < size; ++y) {
        for (int x = 0; x < size; ++x) {
            int hits = 0;
            for (int sy = 0; sy < sub; ++sy) {
                for (int sx = 0; sx < sub; ++sx) {
                    // Sample point relative to the centre, in units of the radius, y up, unrotated.
                    const double dx = (x + (sx + 0.5) / sub - cx) / radius;
                    const double dy = -(y + (sy + 0.5) / sub - cy) / radius;
                    const double u = cos_a * dx + sin_a * dy;
                    const double v = -sin_a * dx + cos_a * dy;
                    const bool in = k.shape == ShapeKind::circle ? (u * u + v * v <= 0.95 * 0.95)
                                                                 : inside_polygon(poly, u, v);
                    hits += in;
                }
            }
            const double alpha = static_cast<double>(hits) / (sub * sub);
            for (int c = 0; c < 3; ++c) {
                const double back = bg[c] + bg_slope[c] * (x / S - 0.5);
                const double value = back * (1 - alpha) + fg[c] * alpha + rng.normal(0.0, 3.0);
                rgb[(static_cast<std::size_t>(y) * size + x) * 3 + c] =
                    static_cast<std::uint8_t>(std::clamp(std::lround(value), 0L, 255L));
            }
        }
    }
    return rgb;
}

// ---- the program ---------------------------------------------------------------------------

struct Options {
    std::string out;
    std::uint64_t seed = 1;
    Index train = 4000, val = 250, test = 250;
    int size = 32;
    bool force = false;
};

const char* kUsage =
    "usage: seemoe_generate_shapes --out DIR [--seed N] [--train N] [--val N] [--test N] [--size S] "
    "[--force]\n"
    "  --out DIR    folder to write (DIR/captions.csv and DIR/{train,val,test}/*.png)\n"
    "  --seed N     random seed (default 1)\n"
    "  --train N    training images (default 4000)\n"
    "  --val N      validation images: new images of combinations seen in training (default 250)\n"
    "  --test N     test images: (colour, shape) pairs never seen in training (default 250)\n"
    "  --size S     image side in pixels, 16..256 (default 32)\n"
    "  --force      replace an existing data set in DIR\n";

Options parse_args(int argc, char** argv) {
    Options o;
    auto value = [&](int& i) -> std::string {
        SEEMOE_CHECK(i + 1 < argc, "missing value after ", argv[i]);
        return argv[++i];
    };
    auto number = [&](int& i) -> long long {
        const std::string flag = argv[i];
        const std::string text = value(i);
        char* end = nullptr;
        const long long v = std::strtoll(text.c_str(), &end, 10);
        SEEMOE_CHECK(!text.empty() && *end == '\0' && v >= 0, flag, " needs a non-negative integer, got \"",
                     text, "\"");
        return v;
    };
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--out")
            o.out = value(i);
        else if (arg == "--seed")
            o.seed = static_cast<std::uint64_t>(number(i));
        else if (arg == "--train")
            o.train = number(i);
        else if (arg == "--val")
            o.val = number(i);
        else if (arg == "--test")
            o.test = number(i);
        else if (arg == "--size")
            o.size = static_cast<int>(number(i));
        else if (arg == "--force")
            o.force = true;
        else if (arg == "--help" || arg == "-h") {
            std::fputs(kUsage, stdout);
            std::exit(0);
        } else {
            throw seemoe::Error("unknown argument \"" + arg + "\"");
        }
    }
    SEEMOE_CHECK(!o.out.empty(), "--out DIR is required");
    SEEMOE_CHECK(o.size >= 16 && o.size <= 256, "--size must be between 16 and 256, got ", o.size);
    SEEMOE_CHECK(o.train + o.val + o.test > 0, "nothing to generate: --train, --val and --test are all 0");
    return o;
}

// Draws `count` combinations from `pool` in balanced rounds.
std::vector<Combination> draw(const std::vector<Combination>& pool, Index count, Rng& rng) {
    std::vector<Combination> out;
    std::vector<Combination> round;
    while (static_cast<Index>(out.size()) < count) {
        if (round.empty()) {
            round = pool;
            for (Index i = static_cast<Index>(round.size()) - 1; i > 0; --i)
                std::swap(round[static_cast<std::size_t>(i)],
                          round[static_cast<std::size_t>(rng.randint(0, i + 1))]);
        }
        out.push_back(round.back());
        round.pop_back();
    }
    return out;
}

int run(const Options& o) {
    const fs::path root(o.out);
    const fs::path csv_path = root / "captions.csv";
    if (fs::exists(csv_path)) {
        SEEMOE_CHECK(o.force, csv_path.string(), " already exists: pass --force to replace the data set");
        // Only what this program writes is removed.
        for (const char* split : {"train", "val", "test"}) fs::remove_all(root / split);
        fs::remove(csv_path);
    }
    fs::create_directories(root);

    stbi_write_png_compression_level = 9;
    Rng rng(o.seed);
    std::string csv = seemoe::data::csv_line({"image", "caption", "split"});
    const struct {
        const char* name;
        Index count;
        bool test;
    } splits[] = {{"train", o.train, false}, {"val", o.val, false}, {"test", o.test, true}};
    for (const auto& split : splits) {
        if (split.count == 0) continue;
        fs::create_directories(root / split.name);
        const std::vector<Combination> picks = draw(combinations(split.test), split.count, rng);
        for (Index i = 0; i < split.count; ++i) {
            char name[32];
            std::snprintf(name, sizeof name, "%05lld.png", static_cast<long long>(i));
            const std::string relative = std::string(split.name) + "/" + name;
            const Combination& k = picks[static_cast<std::size_t>(i)];
            const std::vector<std::uint8_t> pixels = render(k, o.size, rng);
            const std::string file = (root / relative).string();
            SEEMOE_CHECK(stbi_write_png(file.c_str(), o.size, o.size, 3, pixels.data(), o.size * 3) != 0,
                         "cannot write ", file);
            csv += seemoe::data::csv_line({relative, caption_of(k), split.name});
        }
    }
    std::ofstream out(csv_path, std::ios::binary);
    out << csv;
    out.close();
    SEEMOE_CHECK(out.good(), "cannot write ", csv_path.string());
    std::printf("wrote %lld train, %lld val and %lld test images (%dx%d, seed %llu) and %s\n",
                static_cast<long long>(o.train), static_cast<long long>(o.val),
                static_cast<long long>(o.test), o.size, o.size, static_cast<unsigned long long>(o.seed),
                csv_path.string().c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(parse_args(argc, argv));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "seemoe_generate_shapes: %s\n(run with --help for usage)\n", e.what());
        return 1;
    }
}
