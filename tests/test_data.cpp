// Tests for data/: the CSV reader, base64, image decoding in every supported format and colour type,
// resizing and normalisation against hand-computed values, the character tokenizer and its JSON
// form, the caption data set (folder, base64 CSV, splits, errors) and the batcher.
#include <catch2/catch.hpp>

#include <stb/stb_image_write.h>

#include <seemoe/data/base64.hpp>
#include <seemoe/data/csv.hpp>
#include <seemoe/data/dataset.hpp>
#include <seemoe/data/image.hpp>
#include <seemoe/data/tokenizer.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "temp_dir.hpp"

using seemoe::Error;
using seemoe::Index;
using seemoe::Rng;
using namespace seemoe::data;

namespace {

namespace fs = std::filesystem;

// A scratch folder per test case, named after this file.
struct TempDir : seemoe::testing::TempDir {
    TempDir() : seemoe::testing::TempDir("seemoe_test_data_") {}
};

void write_text(const std::string& path, const std::string& text) {
    std::ofstream out(path, std::ios::binary);
    out << text;
}

std::vector<std::uint8_t> png_bytes(int w, int h, int comp, const std::vector<std::uint8_t>& pixels) {
    std::vector<std::uint8_t> out;
    auto append = [](void* context, void* data, int size) {
        auto* bytes = static_cast<std::vector<std::uint8_t>*>(context);
        bytes->insert(bytes->end(), static_cast<std::uint8_t*>(data),
                      static_cast<std::uint8_t*>(data) + size);
    };
    REQUIRE(stbi_write_png_to_func(append, &out, w, h, comp, pixels.data(), w * comp) != 0);
    return out;
}

// A 3x2 test pattern, RGB.
// clang-format off
const std::vector<std::uint8_t> kPattern = {
    255, 0,   0,   0,  255, 0,   0,   0,   255,  // red   green  blue
    10,  20,  30,  200, 150, 100, 255, 255, 255,  // dark  tan    white
};
// clang-format on

Image make_image(int w, int h, const std::vector<std::uint8_t>& rgb) {
    Image image;
    image.width = w;
    image.height = h;
    image.rgb = rgb;
    return image;
}

std::string source_dir() {
    return SEEMOE_SOURCE_DIR;
}

}  // namespace

// ---- csv -----------------------------------------------------------------------------------

TEST_CASE("csv: plain rows, header lookup and column errors", "[data]") {
    const CsvTable t = parse_csv("image,caption\na.png,a red circle\nb.png,a blue square\n", "c.csv");
    REQUIRE(t.num_rows() == 2);
    CHECK(t.header == std::vector<std::string>{"image", "caption"});
    CHECK(t.column("caption") == 1);
    CHECK(t.find_column("split") == -1);
    CHECK(t.at(1, t.column("image")) == "b.png");
    CHECK(t.lines == std::vector<Index>{2, 3});
    CHECK(t.where(1) == "c.csv line 3 (row 2)");
    CHECK_THROWS_WITH(t.column("split"), Catch::Contains("[csv] c.csv has no column \"split\"") &&
                                             Catch::Contains("\"image\", \"caption\""));
}

TEST_CASE("csv: RFC 4180 quoting, line endings, BOM and blank lines", "[data]") {
    const std::string text =
        "\xEF\xBB\xBF"
        "name,text,n\r\n"
        "\"a,b\",\"she said \"\"hi\"\"\",1\r\n"
        "\r\n"
        "x,\"two\nlines\",2\r\n"
        "\"\",,3\n"
        "y,5\" screen,4";  // no final line break; a quote inside an unquoted field is literal
    const CsvTable t = parse_csv(text, "q.csv");
    REQUIRE(t.header == std::vector<std::string>{"name", "text", "n"});
    REQUIRE(t.num_rows() == 4);
    CHECK(t.rows[0] == std::vector<std::string>{"a,b", "she said \"hi\"", "1"});
    CHECK(t.rows[1] == std::vector<std::string>{"x", "two\nlines", "2"});
    CHECK(t.rows[2] == std::vector<std::string>{"", "", "3"});
    CHECK(t.rows[3] == std::vector<std::string>{"y", "5\" screen", "4"});
    // Line numbers count physical lines, including the blank one and the one inside quotes.
    CHECK(t.lines == std::vector<Index>{2, 4, 6, 7});

    // A lone CR ends a line too; CR LF inside quotes is kept verbatim.
    const CsvTable cr = parse_csv("a,b\r1,\"x\r\ny\"\r", "cr.csv");
    REQUIRE(cr.num_rows() == 1);
    CHECK(cr.rows[0][1] == "x\r\ny");
}

TEST_CASE("csv: errors name the file, the line and the row", "[data]") {
    CHECK_THROWS_WITH(parse_csv("a,b\n1,2\n3\n", "f.csv"),
                      Catch::Contains("f.csv line 3 (row 2)") && Catch::Contains("expected 2 fields"));
    CHECK_THROWS_WITH(parse_csv("a,b\n1,2\n3,\"open\n\n", "f.csv"),
                      Catch::Contains("f.csv line 3 (row 2)") && Catch::Contains("never closed"));
    CHECK_THROWS_WITH(parse_csv("a,b\n\"x\"y,2\n", "f.csv"),
                      Catch::Contains("f.csv line 2 (row 1)") && Catch::Contains("after a closing quote"));
    CHECK_THROWS_WITH(parse_csv("", "empty.csv"), Catch::Contains("empty.csv is empty"));
    CHECK_THROWS_WITH(read_csv("/nonexistent/seemoe/x.csv"),
                      Catch::Contains("cannot open '/nonexistent/seemoe/x.csv'"));
}

TEST_CASE("csv: csv_line escapes what needs it and parses back", "[data]") {
    const std::vector<std::string> fields = {"plain", "with,comma", "with \"quote\"", "two\nlines", ""};
    CHECK(csv_escape("plain") == "plain");
    CHECK(csv_escape("a\"b") == "\"a\"\"b\"");
    const CsvTable t = parse_csv(csv_line({"1", "2", "3", "4", "5"}) + csv_line(fields));
    REQUIRE(t.num_rows() == 1);
    CHECK(t.rows[0] == fields);
}

// ---- base64 --------------------------------------------------------------------------------

TEST_CASE("base64: RFC 4648 vectors, round trip, whitespace and missing padding", "[data]") {
    const auto text = [](const std::vector<std::uint8_t>& b) { return std::string(b.begin(), b.end()); };
    CHECK(text(base64_decode("TWFu")) == "Man");
    // clang-format off
    const std::vector<std::pair<std::string, std::string>> vectors = {
        {"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="},
        {"foobar", "Zm9vYmFy"}};
    // clang-format on
    for (const auto& [plain, encoded] : vectors) {
        CHECK(base64_encode(plain) == encoded);
        CHECK(text(base64_decode(encoded)) == plain);
    }
    std::vector<std::uint8_t> all(256);
    for (int i = 0; i < 256; ++i) all[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(255 - i);
    CHECK(base64_decode(base64_encode(all)) == all);
    CHECK(base64_encode(all).find_first_of("+/") != std::string::npos);  // both extra symbols used
    CHECK(text(base64_decode("Zm9v\r\nYmE=\n")) == "fooba");
    CHECK(text(base64_decode("Zm8")) == "fo");
}

TEST_CASE("base64: invalid input is rejected with a clear message", "[data]") {
    CHECK_THROWS_WITH(base64_decode("Zm9v!mFy"),
                      Catch::Contains("[base64_decode] invalid character '!' at position 4"));
    CHECK_THROWS_WITH(base64_decode("Zm9v\x01"), Catch::Contains("byte 0x01 at position 4"));
    CHECK_THROWS_WITH(base64_decode("Zm9vY"),
                      Catch::Contains("[base64_decode]") && Catch::Contains("truncated"));
    CHECK_THROWS_WITH(base64_decode("Zg==Zg=="), Catch::Contains("padding '=' at position 2"));
    CHECK_THROWS_WITH(base64_decode("Zg==="), Catch::Contains("padding must fill"));
    CHECK_THROWS_WITH(base64_decode("Zm9v===="), Catch::Contains("padding must fill"));
    CHECK_THROWS_AS(base64_decode("Zm-v"), Error);  // URL-safe alphabet is not standard base64
}

// ---- image decoding ------------------------------------------------------------------------

TEST_CASE("image: PNG, BMP and TGA decode to the exact RGB values", "[data]") {
    TempDir dir;
    REQUIRE(stbi_write_png(dir.file("p.png").c_str(), 3, 2, 3, kPattern.data(), 9) != 0);
    REQUIRE(stbi_write_bmp(dir.file("p.bmp").c_str(), 3, 2, 3, kPattern.data()) != 0);
    stbi_write_tga_with_rle = 1;
    REQUIRE(stbi_write_tga(dir.file("rle.tga").c_str(), 3, 2, 3, kPattern.data()) != 0);
    stbi_write_tga_with_rle = 0;
    REQUIRE(stbi_write_tga(dir.file("raw.tga").c_str(), 3, 2, 3, kPattern.data()) != 0);
    stbi_write_tga_with_rle = 1;
    for (const char* name : {"p.png", "p.bmp", "rle.tga", "raw.tga"}) {
        INFO(name);
        const Image image = load_image(dir.file(name));
        CHECK(image.width == 3);
        CHECK(image.height == 2);
        CHECK(image.rgb == kPattern);
        CHECK(image.at(1, 1, 0) == 200);  // (y, x, c) indexing
    }
}

TEST_CASE("image: gray, gray+alpha and RGBA become RGB with alpha dropped", "[data]") {
    TempDir dir;
    // 2x1 gray: 0, 200
    REQUIRE(stbi_write_png(dir.file("g.png").c_str(), 2, 1, 1, std::vector<std::uint8_t>{0, 200}.data(), 2) !=
            0);
    // 2x1 gray+alpha: (50, alpha 0), (250, alpha 128)
    REQUIRE(stbi_write_png(dir.file("ga.png").c_str(), 2, 1, 2,
                           std::vector<std::uint8_t>{50, 0, 250, 128}.data(), 4) != 0);
    // 2x1 RGBA: (10, 20, 30, alpha 0), (40, 50, 60, alpha 255)
    REQUIRE(stbi_write_png(dir.file("rgba.png").c_str(), 2, 1, 4,
                           std::vector<std::uint8_t>{10, 20, 30, 0, 40, 50, 60, 255}.data(), 8) != 0);
    // A 32-bit BMP with alpha, and a gray TGA.
    REQUIRE(stbi_write_bmp(dir.file("rgba.bmp").c_str(), 2, 1, 4,
                           std::vector<std::uint8_t>{10, 20, 30, 0, 40, 50, 60, 255}.data()) != 0);
    REQUIRE(stbi_write_tga(dir.file("g.tga").c_str(), 2, 1, 1, std::vector<std::uint8_t>{0, 200}.data()) !=
            0);

    CHECK(load_image(dir.file("g.png")).rgb == std::vector<std::uint8_t>{0, 0, 0, 200, 200, 200});
    CHECK(load_image(dir.file("ga.png")).rgb == std::vector<std::uint8_t>{50, 50, 50, 250, 250, 250});
    CHECK(load_image(dir.file("rgba.png")).rgb == std::vector<std::uint8_t>{10, 20, 30, 40, 50, 60});
    CHECK(load_image(dir.file("rgba.bmp")).rgb == std::vector<std::uint8_t>{10, 20, 30, 40, 50, 60});
    CHECK(load_image(dir.file("g.tga")).rgb == std::vector<std::uint8_t>{0, 0, 0, 200, 200, 200});
}

TEST_CASE("image: JPEG decodes to approximately the written colours", "[data]") {
    TempDir dir;
    // Flat 16x16 images: JPEG is lossy, but a flat block survives to within a few levels.
    std::vector<std::uint8_t> rgb(16 * 16 * 3), gray(16 * 16, 90);
    for (std::size_t i = 0; i < rgb.size(); i += 3) {
        rgb[i] = 200;
        rgb[i + 1] = 100;
        rgb[i + 2] = 50;
    }
    REQUIRE(stbi_write_jpg(dir.file("c.jpg").c_str(), 16, 16, 3, rgb.data(), 95) != 0);
    REQUIRE(stbi_write_jpg(dir.file("g.jpg").c_str(), 16, 16, 1, gray.data(), 95) != 0);
    const Image c = load_image(dir.file("c.jpg"));
    const Image g = load_image(dir.file("g.jpg"));
    REQUIRE(c.width == 16);
    REQUIRE(c.height == 16);
    REQUIRE(g.rgb.size() == 16 * 16 * 3);
    for (std::size_t i = 0; i < c.rgb.size(); ++i) {
        CHECK(std::abs(int(c.rgb[i]) - int(rgb[i])) <= 4);
        CHECK(std::abs(int(g.rgb[i]) - 90) <= 2);
    }
}

TEST_CASE("image: a hand-written 2x2 GIF decodes to its palette colours", "[data]") {
    // GIF89a, 2x2, global palette red/green/blue/white, one image whose LZW stream (minimum code
    // size 2) is clear, 0, 1, 2 in 3-bit codes, then 3 and end-of-information in 4-bit codes.
    // clang-format off
    const std::vector<std::uint8_t> gif = {
        'G', 'I', 'F', '8', '9', 'a', 2, 0, 2, 0, 0x91, 0, 0,       // header + screen descriptor
        0xFF, 0, 0, 0, 0xFF, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF,       // palette
        0x2C, 0, 0, 0, 0, 2, 0, 2, 0, 0,                            // image descriptor
        2, 3, 0x44, 0x34, 0x05, 0,                                  // LZW data
        0x3B};                                                      // trailer
    // clang-format on
    const Image image = decode_image(gif, "tiny.gif");
    REQUIRE(image.width == 2);
    REQUIRE(image.height == 2);
    CHECK(image.rgb == std::vector<std::uint8_t>{255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 255});
}

TEST_CASE("image: undecodable, empty and missing files throw naming them", "[data]") {
    const std::vector<std::uint8_t> junk = {'n', 'o', 't', ' ', 'a', 'n', ' ', 'i', 'm', 'a', 'g', 'e'};
    CHECK_THROWS_WITH(decode_image(junk, "junk.png"),
                      Catch::Contains("[decode_image] cannot decode junk.png"));
    CHECK_THROWS_WITH(decode_image(std::vector<std::uint8_t>{}, "void.png"),
                      Catch::Contains("[decode_image] void.png: no bytes"));
    std::vector<std::uint8_t> truncated = png_bytes(3, 2, 3, kPattern);
    truncated.resize(truncated.size() / 2);
    CHECK_THROWS_WITH(decode_image(truncated, "half.png"), Catch::Contains("cannot decode half.png"));
    CHECK_THROWS_WITH(load_image("/nonexistent/seemoe/a.png"),
                      Catch::Contains("cannot open '/nonexistent/seemoe/a.png'"));
}

namespace {

// JPEG bytes written by stb_image_write (baseline, quality 90).
std::vector<std::uint8_t> jpg_bytes(int w, int h, int comp, const std::vector<std::uint8_t>& pixels) {
    std::vector<std::uint8_t> out;
    auto append = [](void* context, void* data, int size) {
        auto* bytes = static_cast<std::vector<std::uint8_t>*>(context);
        bytes->insert(bytes->end(), static_cast<std::uint8_t*>(data), static_cast<std::uint8_t*>(data) + size);
    };
    REQUIRE(stbi_write_jpg_to_func(append, &out, w, h, comp, pixels.data(), 90) != 0);
    return out;
}

// The offsets of the segments with `marker` before the first scan of a JPEG without fill bytes.
std::vector<std::size_t> jpeg_segments(const std::vector<std::uint8_t>& jpg, std::uint8_t marker) {
    std::vector<std::size_t> found;
    for (std::size_t i = 2; i + 3 < jpg.size() && jpg[i] == 0xFF && jpg[i + 1] != 0xDA;
         i += 2 + (std::size_t(jpg[i + 2]) << 8 | jpg[i + 3]))
        if (jpg[i + 1] == marker) found.push_back(i);
    return found;
}

// What stb_image decodes from the bytes as they are, without seemoe's screen.
std::vector<std::uint8_t> stb_pixels(const std::vector<std::uint8_t>& bytes) {
    int w = 0, h = 0, c = 0;
    std::uint8_t* p = stbi_load_from_memory(bytes.data(), static_cast<int>(bytes.size()), &w, &h, &c, 3);
    REQUIRE(p != nullptr);
    std::vector<std::uint8_t> rgb(p, p + static_cast<std::size_t>(w) * h * 3);
    stbi_image_free(p);
    return rgb;
}

std::vector<std::uint8_t> read_bytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    REQUIRE(in.good());
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

TEST_CASE("image: JPEGs decode to stb_image's own pixels through seemoe's Huffman table screen", "[data]") {
    // decode_image hands stb_image every JPEG with all eight Huffman tables defined first; a file
    // that defines the tables it uses must decode exactly as stb_image decodes it unscreened.
    std::vector<std::uint8_t> rgb(24 * 16 * 3), gray(24 * 16);
    for (std::size_t i = 0; i < rgb.size(); ++i) rgb[i] = static_cast<std::uint8_t>((i * 37) % 251);
    for (std::size_t i = 0; i < gray.size(); ++i) gray[i] = static_cast<std::uint8_t>((i * 11) % 256);
    // progressive.jpg: Pillow's progressive JPEG (9x7), whose first scan names AC table 0 before
    // any DHT defines it (a DC scan does not use it: must not be refused).
    const std::vector<std::vector<std::uint8_t>> files = {
        jpg_bytes(24, 16, 3, rgb), jpg_bytes(24, 16, 1, gray),
        read_bytes(source_dir() + "/tests/data/jpeg/progressive.jpg")};
    for (std::size_t f = 0; f < files.size(); ++f) {
        INFO("file " << f);
        const Image image = decode_image(files[f], "ok.jpg");
        CHECK(image.rgb == stb_pixels(files[f]));
        // Fill bytes before the start-of-image marker are allowed (stb_image skips them).
        std::vector<std::uint8_t> filled = {0xFF, 0xFF};
        filled.insert(filled.end(), files[f].begin(), files[f].end());
        CHECK(decode_image(filled, "filled.jpg").rgb == image.rgb);
    }
}

TEST_CASE("image: JPEG Huffman tables stb_image 2.27 mishandles are refused naming the file", "[data]") {
    // undefined_huffman_table.jpg: found by fuzz/fuzz_image.cpp (a mutated progressive.jpg). Its
    // third scan decodes with AC table 1, defined only later in the file; stb_image 2.27 reads
    // that table's uninitialised memory and indexed its symbols at -84 in the fuzz run.
    CHECK_THROWS_WITH(
        decode_image(read_bytes(source_dir() + "/tests/data/jpeg/undefined_huffman_table.jpg"), "fuzzed.jpg"),
        Catch::Contains("cannot decode fuzzed.jpg: a JPEG scan uses AC Huffman table 1, which no DHT segment "
                        "before it defines: corrupt JPEG"));

    // A baseline JPEG without its DHT segments: its scan needs DC table 0 first.
    const std::vector<std::uint8_t> jpg = jpg_bytes(8, 8, 3, std::vector<std::uint8_t>(8 * 8 * 3, 120));
    const std::vector<std::size_t> dht = jpeg_segments(jpg, 0xC4);
    REQUIRE(!dht.empty());
    std::vector<std::uint8_t> no_tables;
    std::size_t from = 0;
    for (const std::size_t at : dht) {
        no_tables.insert(no_tables.end(), jpg.begin() + from, jpg.begin() + at);
        from = at + 2 + (std::size_t(jpg[at + 2]) << 8 | jpg[at + 3]);
    }
    no_tables.insert(no_tables.end(), jpg.begin() + from, jpg.end());
    CHECK_THROWS_WITH(decode_image(no_tables, "bare.jpg"),
                      Catch::Contains("bare.jpg: a JPEG scan uses DC Huffman table 0, which no DHT segment"));

    // Counts adding up to more than 256 symbols (stb_image 2.27 would write past its table): the
    // first table's 16-bit count raised by 255.
    std::vector<std::uint8_t> too_many = jpg;
    std::size_t symbols = 0;
    for (int k = 1; k <= 16; ++k) symbols += too_many[dht[0] + 4 + k];
    too_many[dht[0] + 4 + 16] = static_cast<std::uint8_t>(too_many[dht[0] + 4 + 16] + 255);
    REQUIRE(too_many[dht[0] + 4 + 16] == 255);  // it was 0: the sum is now symbols + 255
    CHECK_THROWS_WITH(decode_image(too_many, "many.jpg"),
                      Catch::Contains("many.jpg: a JPEG Huffman table lists " + std::to_string(symbols + 255) +
                                      " symbols (at most 256): corrupt JPEG"));

    // Formats stb_image would try besides the five seemoe reads are refused by their signature.
    CHECK_THROWS_WITH(decode_image(std::vector<std::uint8_t>{'P', '6', '\n', '1', ' ', '1', '\n', '2', '5', '5', '\n', 1, 2, 3},
                                   "a.ppm"),
                      Catch::Contains("a.ppm is a PNM (PGM/PPM) image; seemoe reads PNG, JPEG, BMP, GIF and TGA"));
}

TEST_CASE("image: a PNG chunk longer than the rest of the file is refused before stb_image allocates it", "[data]") {
    // oversized_chunk.png: found by fuzz/fuzz_image.cpp, 123 bytes whose second IDAT chunk
    // declares 1711276061 bytes; stb_image 2.27 asked for 2 GiB before reading it.
    CHECK_THROWS_WITH(decode_image(read_bytes(source_dir() + "/tests/data/png/oversized_chunk.png"), "fuzzed.png"),
                      Catch::Contains("cannot decode fuzzed.png: a PNG chunk at byte 74 declares 1711276061 bytes "
                                      "of data, more than the 41 left in the file: corrupt or truncated PNG"));
    // The same in a PNG written here: the first chunk after IHDR (at byte 33) claims one byte more
    // than the file holds.
    const std::vector<std::uint8_t> png = png_bytes(3, 2, 3, kPattern);
    std::vector<std::uint8_t> longer = png;
    const std::size_t left = png.size() - 33 - 8;
    for (int k = 0; k < 4; ++k) longer[33 + k] = static_cast<std::uint8_t>((left + 1) >> (24 - 8 * k));
    CHECK_THROWS_WITH(decode_image(longer, "long.png"),
                      Catch::Contains("long.png: a PNG chunk at byte 33 declares " + std::to_string(left + 1) +
                                      " bytes of data, more than the " + std::to_string(left) + " left"));
    // stb_image does not read the CRC after IEND: a file without it still decodes, unchanged.
    const std::vector<std::uint8_t> no_crc(png.begin(), png.end() - 4);
    CHECK(decode_image(no_crc, "short.png").rgb == kPattern);
    CHECK(decode_image(png, "whole.png").rgb == kPattern);
}

// ---- resize and normalisation --------------------------------------------------------------

TEST_CASE("resize: bilinear 2x2 -> 4x4 matches hand-computed values (align_corners=False)", "[data]") {
    // Channel 0 is linear (0 80 / 160 240), so bilinear reproduces it exactly at the source
    // positions -0.25 -> 0 (clamped), 0.25, 0.75, 1.25 -> 1 (clamped) of each axis: weights
    // (1, 0), (0.75, 0.25), (0.25, 0.75), (0, 1). Channel 1 is 160 at one corner only, so it is
    // 160 * wx * wy. Channel 2 is constant.
    const Image src = make_image(2, 2, {0, 0, 7, 80, 0, 7, 160, 0, 7, 240, 160, 7});
    const Image out = resize(src, 4, 4, ResizeMode::bilinear);
    REQUIRE(out.width == 4);
    REQUIRE(out.height == 4);
    const int expected0[4][4] = {
        {0, 20, 60, 80}, {40, 60, 100, 120}, {120, 140, 180, 200}, {160, 180, 220, 240}};
    const int expected1[4][4] = {{0, 0, 0, 0}, {0, 10, 30, 40}, {0, 30, 90, 120}, {0, 40, 120, 160}};
    for (int y = 0; y < 4; ++y)
        for (int x = 0; x < 4; ++x) {
            INFO("y=" << y << " x=" << x);
            CHECK(int(out.at(y, x, 0)) == expected0[y][x]);
            CHECK(int(out.at(y, x, 1)) == expected1[y][x]);
            CHECK(int(out.at(y, x, 2)) == 7);
        }
}

TEST_CASE("resize: shrinking, area averaging and identity", "[data]") {
    // Bilinear 4 -> 2 samples at 0.5 and 2.5: the mean of each pair.
    const Image row4 = make_image(4, 1, {10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40});
    CHECK(resize(row4, 2, 1, ResizeMode::bilinear).rgb == std::vector<std::uint8_t>{15, 15, 15, 35, 35, 35});
    // Area 3 -> 2: each output covers 1.5 source pixels: (30 + 0.5*60)/1.5 = 40, (0.5*60 + 90)/1.5 = 80.
    const Image row3 = make_image(3, 1, {30, 0, 0, 60, 0, 0, 90, 0, 0});
    CHECK(resize(row3, 2, 1, ResizeMode::area).rgb == std::vector<std::uint8_t>{40, 0, 0, 80, 0, 0});
    CHECK(resize(row3, 2, 1, ResizeMode::automatic).rgb == resize(row3, 2, 1, ResizeMode::area).rgb);
    CHECK(resize(row3, 2, 1, ResizeMode::bilinear).rgb != resize(row3, 2, 1, ResizeMode::area).rgb);
    // Area 4x4 -> 2x2 averages 2x2 blocks.
    std::vector<std::uint8_t> rgb;
    for (int v : {0, 4, 100, 104, 8, 12, 108, 112, 200, 204, 40, 44, 208, 212, 48, 52})
        rgb.insert(rgb.end(), {std::uint8_t(v), std::uint8_t(v), std::uint8_t(255 - v)});
    const Image block = resize(make_image(4, 4, rgb), 2, 2, ResizeMode::area);
    CHECK(block.rgb == std::vector<std::uint8_t>{6, 6, 249, 106, 106, 149, 206, 206, 49, 46, 46, 209});
    // Same size is the identity in every mode.
    const Image pattern = make_image(3, 2, kPattern);
    for (ResizeMode mode : {ResizeMode::bilinear, ResizeMode::area, ResizeMode::automatic})
        CHECK(resize(pattern, 3, 2, mode).rgb == kPattern);
    CHECK_THROWS_WITH(resize(pattern, 0, 2), Catch::Contains("[resize] target size must be positive"));
    CHECK_THROWS_WITH(resize(Image{}, 2, 2), Catch::Contains("[resize] source image 0x0"));
}

TEST_CASE("to_tensor: (3, H, W) layout and ImageNet normalisation", "[data]") {
    const Image image = make_image(2, 1, {255, 0, 128, 0, 51, 255});
    const seemoe::Tensorf t = to_tensor(image);
    REQUIRE(t.shape() == seemoe::Shape{3, 1, 2});
    // (x/255 - mean) / std, by hand
    CHECK(t.at({0, 0, 0}) == Approx((1.0 - 0.485) / 0.229));
    CHECK(t.at({0, 0, 1}) == Approx((0.0 - 0.485) / 0.229));
    CHECK(t.at({1, 0, 0}) == Approx((0.0 - 0.456) / 0.224));
    CHECK(t.at({1, 0, 1}) == Approx((0.2 - 0.456) / 0.224));
    CHECK(t.at({2, 0, 0}) == Approx((128.0 / 255.0 - 0.406) / 0.225));
    CHECK(t.at({2, 0, 1}) == Approx((1.0 - 0.406) / 0.225));
    CHECK(t.at({0, 0, 0}) == Approx(2.2489083).epsilon(1e-6));

    // unit_range is x / 255; write_chw fills a caller's buffer at an offset, in double too.
    std::vector<double> buffer(2 + 6, -1.0);
    write_chw(image, buffer.data() + 2, Normalization::unit_range());
    CHECK(buffer[0] == -1.0);
    CHECK(buffer[2] == Approx(1.0));
    CHECK(buffer[3] == Approx(0.0));
    CHECK(buffer[5] == Approx(0.2));
    CHECK(buffer[6] == Approx(128.0 / 255.0));
    Normalization zero_std;
    zero_std.stddev[1] = 0.0f;
    CHECK_THROWS_WITH(write_chw(image, buffer.data(), zero_std),
                      Catch::Contains("[write_chw] stddev of channel 1"));
}

// ---- tokenizer -----------------------------------------------------------------------------

TEST_CASE("tokenizer: vocabulary, encode/decode round trip and unknown characters", "[data]") {
    const CharTokenizer tok = CharTokenizer::from_texts({"ba", "cab "});
    REQUIRE(tok.vocab_size() == 7);
    CHECK(tok.tokens() == std::vector<std::string>{"<pad>", "<bos>", "<eos>", " ", "a", "b", "c"});
    CHECK(tok.encode("abc ") == std::vector<Index>{4, 5, 6, 3});
    CHECK(tok.decode(tok.encode("a cab")) == "a cab");
    CHECK(tok.decode({CharTokenizer::bos_id, 4, 5, CharTokenizer::eos_id, 0, 0}) == "ab");
    CHECK(tok.decode({1, 4, 5, 2, 0}, /*skip_special=*/false) == "<bos>ab<eos><pad>");
    CHECK_THROWS_WITH(tok.encode("abz"),
                      Catch::Contains("[CharTokenizer::encode] character 'z' (U+007A) at byte 2") &&
                          Catch::Contains("vocabulary of 7 tokens"));
    CHECK_THROWS_WITH(tok.decode({7}), Catch::Contains("[CharTokenizer::decode] id 7"));
    CHECK(CharTokenizer().vocab_size() == 3);
}

TEST_CASE("tokenizer: UTF-8 characters are single tokens in code point order", "[data]") {
    const CharTokenizer tok = CharTokenizer::from_texts({"caf\xC3\xA9 \xF0\x9F\x98\x80", "z"});
    // ' ' < 'a' < 'c' < 'f' < 'z' < U+00E9 < U+1F600
    CHECK(tok.tokens() == std::vector<std::string>{"<pad>", "<bos>", "<eos>", " ", "a", "c", "f", "z",
                                                   "\xC3\xA9", "\xF0\x9F\x98\x80"});
    CHECK(tok.encode("\xC3\xA9z") == std::vector<Index>{8, 7});
    CHECK(tok.decode(tok.encode("caf\xC3\xA9")) == "caf\xC3\xA9");
    CHECK_THROWS_WITH(tok.encode("\xC3\xB1"), Catch::Contains("U+00F1"));
    CHECK_THROWS_WITH(tok.encode("a\xFF"), Catch::Contains("invalid UTF-8 at byte 1"));
    CHECK_THROWS_WITH(CharTokenizer::from_texts({"\xC0\xAF"}),
                      Catch::Contains("invalid UTF-8"));  // overlong '/'
}

TEST_CASE("tokenizer: JSON round trip, escapes and invalid vocabularies", "[data]") {
    CHECK(CharTokenizer::from_texts({"ab "}).to_json() == R"(["<pad>","<bos>","<eos>"," ","a","b"])");
    const CharTokenizer tricky = CharTokenizer::from_texts({"\"\\\n\t/\x01\xC3\xA9\xF0\x9F\x98\x80"});
    const std::string json = tricky.to_json();
    CHECK(json.find(R"("\"")") != std::string::npos);
    CHECK(json.find(R"("\\")") != std::string::npos);
    CHECK(json.find(R"("\n")") != std::string::npos);
    CHECK(json.find(R"("\u0001")") != std::string::npos);
    CHECK(CharTokenizer::from_json(json) == tricky);
    // \u escapes, a surrogate pair and whitespace are accepted on input.
    const CharTokenizer parsed = CharTokenizer::from_json(
        " [ \"<pad>\", \"<bos>\",\"<eos>\",\n \"\\u00E9\", \"\\ud83d\\ude00\", \"\\/\" ] ");
    CHECK(parsed.tokens() ==
          std::vector<std::string>{"<pad>", "<bos>", "<eos>", "\xC3\xA9", "\xF0\x9F\x98\x80", "/"});
    CHECK(parsed.encode("/\xC3\xA9") == std::vector<Index>{5, 3});

    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["a","b"])"), Catch::Contains("must start with \"<pad>\""));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>","<eos>","a","a"])"),
                      Catch::Contains("token 4 (\"a\") appears twice"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>","<eos>","ab"])"),
                      Catch::Contains("not exactly one UTF-8 character"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>","<eos>"] x)"),
                      Catch::Contains("[CharTokenizer::from_json] invalid vocabulary JSON"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>")"),
                      Catch::Contains("[CharTokenizer::from_json] invalid vocabulary JSON"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>","<eos>","\u00g9"])"),
                      Catch::Contains("invalid hex digit"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"(["<pad>","<bos>","<eos>","\ud83d"])"),
                      Catch::Contains("surrogate"));
    CHECK_THROWS_WITH(CharTokenizer::from_json(R"({"a": 1})"), Catch::Contains("JSON array of strings"));
}

// ---- data set ------------------------------------------------------------------------------

TEST_CASE("dataset: the tiny committed set loads with its splits", "[data]") {
    const std::string tiny = source_dir() + "/tests/data/tiny";
    DatasetOptions options;
    options.image_size = 32;
    std::map<Split, CaptionDataset> sets;
    for (Split split : {Split::train, Split::val, Split::test}) {
        options.split = split;
        sets.emplace(split, CaptionDataset::load(tiny, options));
    }
    CHECK(sets.at(Split::train).size() == 10);
    CHECK(sets.at(Split::val).size() == 3);
    CHECK(sets.at(Split::test).size() == 3);
    CHECK(CaptionDataset::read_captions(tiny).size() == 16);
    const CaptionDataset& train = sets.at(Split::train);
    CHECK(train.image_size() == 32);
    CHECK(train.caption(0).rfind("a ", 0) == 0);
    CHECK(train.source(0) == tiny + "/captions.csv line 2 (row 1)");
    // The stored pixels are the file's pixels (32x32 already, so no resampling).
    const Image first = load_image(tiny + "/train/00000.png");
    CHECK(train.image(0).rgb == first.rgb);
    // An explicit CSV path works like the folder; a smaller image size resizes (by area).
    options.split = Split::train;
    options.image_size = 16;
    const CaptionDataset small = CaptionDataset::load(tiny + "/captions.csv", options);
    REQUIRE(small.size() == 10);
    CHECK(small.image(0).rgb == resize(first, 16, 16, ResizeMode::area).rgb);
}

TEST_CASE("dataset: the bundled shapes set keeps held-out pairs out of training", "[data]") {
    const CsvTable table = read_csv(source_dir() + "/data/shapes/captions.csv");
    const Index caption = table.column("caption"), split = table.column("split");
    std::map<std::string, Index> counts;
    std::set<std::string> train_pairs, val_pairs, test_pairs;
    for (Index r = 0; r < table.num_rows(); ++r) {
        std::istringstream words(table.at(r, caption));
        std::string a, size, colour, shape;
        words >> a >> size >> colour >> shape;
        const std::string pair = colour + " " + shape;
        const std::string& s = table.at(r, split);
        ++counts[s];
        (s == "train" ? train_pairs : s == "val" ? val_pairs : test_pairs).insert(pair);
    }
    CHECK(counts["train"] >= 4000);
    CHECK(counts["val"] > 0);
    CHECK(counts["test"] > 0);
    CHECK(train_pairs.size() == 36);
    CHECK(test_pairs.size() == 6);
    for (const std::string& pair : test_pairs) CHECK(train_pairs.count(pair) == 0);
    for (const std::string& pair : val_pairs) CHECK(train_pairs.count(pair) == 1);
}

TEST_CASE("dataset: the base64 CSV format (b64string_images) loads, all rows train", "[data]") {
    TempDir dir;
    const std::vector<std::uint8_t> png = png_bytes(3, 2, 3, kPattern);
    std::vector<std::uint8_t> gray_pixels(3 * 2, 77);
    const std::vector<std::uint8_t> gray_png = png_bytes(3, 2, 1, gray_pixels);
    std::string csv = csv_line({"b64string_images", "caption"});
    csv += csv_line({base64_encode(png), "a pattern, with a comma"});
    csv += csv_line({"data:image/png;base64," + base64_encode(gray_png), "gray"});
    write_text(dir.file("inputs.csv"), csv);

    DatasetOptions options;
    options.image_size = 3;
    options.resize = ResizeMode::area;
    // 3x2 -> 3x3: one side grows, so check against the same resize.
    const CaptionDataset data = CaptionDataset::load(dir.file("inputs.csv"), options);
    REQUIRE(data.size() == 2);
    CHECK(data.caption(0) == "a pattern, with a comma");
    CHECK(data.image(0).rgb == resize(make_image(3, 2, kPattern), 3, 3, ResizeMode::area).rgb);
    CHECK(data.image(1).rgb == std::vector<std::uint8_t>(27, 77));
    options.split = Split::val;
    CHECK(CaptionDataset::load(dir.file("inputs.csv"), options).size() == 0);
}

TEST_CASE("dataset: errors name the folder, the file, the row and the image", "[data]") {
    TempDir dir;
    CHECK_THROWS_WITH(CaptionDataset::load(dir.file("absent")), Catch::Contains("absent does not exist"));
    fs::create_directory(dir.path / "empty");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.file("empty")),
                      Catch::Contains("folder") && Catch::Contains("is empty"));
    fs::create_directory(dir.path / "other");
    write_text(dir.file("other/inputs.csv"), "a,b\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.file("other")),
                      Catch::Contains("no captions.csv in folder") && Catch::Contains("inputs.csv"));

    const std::vector<std::uint8_t> png = png_bytes(3, 2, 3, kPattern);
    {
        std::ofstream out(dir.file("good.png"), std::ios::binary);
        out.write(reinterpret_cast<const char*>(png.data()), static_cast<std::streamsize>(png.size()));
    }
    write_text(dir.file("bad.png"), "this is not a png");
    const std::string csv_path = dir.file("captions.csv");

    write_text(csv_path, "image,text\ngood.png,a caption\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()), Catch::Contains("has no column \"caption\""));
    write_text(csv_path, "picture,caption\ngood.png,a caption\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()),
                      Catch::Contains("has no image column") && Catch::Contains("\"picture\", \"caption\""));
    write_text(csv_path, "image,caption\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()), Catch::Contains("has a header but no rows"));
    write_text(csv_path, "image,caption\ngood.png,one\nbad.png,two\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()),
                      Catch::Contains("captions.csv line 3 (row 2), image \"bad.png\"") &&
                          Catch::Contains("cannot decode"));
    write_text(csv_path, "image,caption\ngood.png,one\ngood.png,two\nmissing.png,three\n");
    CHECK_THROWS_WITH(
        CaptionDataset::load(dir.path.string()),
        Catch::Contains("line 4 (row 3), image \"missing.png\"") && Catch::Contains("not found"));
    write_text(csv_path, "image,caption,split\ngood.png,one,train\ngood.png,two,dev\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()),
                      Catch::Contains("line 3 (row 2)") && Catch::Contains("unknown split \"dev\""));
    write_text(csv_path, "image,caption\ngood.png,\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()),
                      Catch::Contains("row 1): the caption is empty"));
    write_text(csv_path, "b64string_images,caption\n" + base64_encode(png) + ",ok\nnot*base64,bad\n");
    CHECK_THROWS_WITH(CaptionDataset::load(dir.path.string()),
                      Catch::Contains("line 3 (row 2), image in column b64string_images") &&
                          Catch::Contains("invalid character '*'"));
    // The good rows load; other splits' rows are not even decoded.
    write_text(csv_path, "image,caption,split\ngood.png,one,Train\nbad.png,two,test\n");
    CHECK(CaptionDataset::load(dir.path.string()).size() == 1);
}

// ---- batcher -------------------------------------------------------------------------------

namespace {

CaptionDataset five_samples() {
    CaptionDataset data(2);
    const std::vector<std::string> captions = {"ab", "b", "abc", "ca", "a"};
    for (std::size_t i = 0; i < captions.size(); ++i) {
        const auto v = static_cast<std::uint8_t>(40 * i);
        data.add(make_image(2, 2, std::vector<std::uint8_t>(12, v)), captions[i]);
    }
    return data;
}

std::vector<Index> epoch_order(Batcher& batcher) {
    std::vector<Index> order;
    Batch batch;
    while (batcher.next(batch)) order.insert(order.end(), batch.indices.begin(), batch.indices.end());
    return order;
}

}  // namespace

TEST_CASE("batcher: ids are <bos>+caption, targets the same shifted left with <eos> and -100", "[data]") {
    const CaptionDataset data = five_samples();
    const CharTokenizer tok = CharTokenizer::from_texts(data.captions());  // a=3 b=4 c=5
    BatcherOptions options;
    options.batch_size = 2;
    const Batcher batcher(data, tok, options);
    const Batch batch = batcher.make_batch({0, 1});  // "ab", "b"
    REQUIRE(batch.batch_size == 2);
    REQUIRE(batch.seq_len == 3);
    CHECK(batch.ids_shape() == seemoe::Shape{2, 3});
    CHECK(batch.input_ids == std::vector<Index>{1, 3, 4, 1, 4, 0});
    CHECK(batch.targets == std::vector<Index>{3, 4, 2, 4, 2, -100});
    CHECK(batch.captions == std::vector<std::string>{"ab", "b"});
    REQUIRE(batch.images.shape() == seemoe::Shape{2, 3, 2, 2});
    std::vector<float> expected(2 * 12);
    write_chw(data.pixels(0), 2, 2, expected.data());
    write_chw(data.pixels(1), 2, 2, expected.data() + 12);
    CHECK(batch.images.to_vector() == expected);

    // A fixed length pads every row to it; the shift holds everywhere.
    options.max_len = 6;
    const Batch fixed = Batcher(data, tok, options).make_batch({2, 4});
    CHECK(fixed.seq_len == 6);
    CHECK(fixed.input_ids == std::vector<Index>{1, 3, 4, 5, 0, 0, 1, 3, 0, 0, 0, 0});
    CHECK(fixed.targets == std::vector<Index>{3, 4, 5, 2, -100, -100, 3, 2, -100, -100, -100, -100});
    for (Index b = 0; b < 2; ++b)
        for (Index t = 0; t + 1 < 6; ++t) {
            const Index target = fixed.targets[static_cast<std::size_t>(b * 6 + t)];
            if (target >= CharTokenizer::num_special)
                CHECK(fixed.input_ids[static_cast<std::size_t>(b * 6 + t + 1)] == target);
        }

    options.max_len = 3;  // "abc" needs 4 positions
    CHECK_THROWS_WITH(Batcher(data, tok, options), Catch::Contains("[Batcher] sample 2 (added in memory)") &&
                                                       Catch::Contains("more than max_len = 3"));
    const CharTokenizer without_c = CharTokenizer::from_texts({"ab"});
    CHECK_THROWS_WITH(Batcher(data, without_c),
                      Catch::Contains("[Batcher] sample 2 (added in memory)") && Catch::Contains("'c'"));
    const CaptionDataset empty(2);
    CHECK_THROWS_WITH(Batcher(empty, tok), Catch::Contains("[Batcher] the data set is empty"));
}

TEST_CASE("batcher: the same seed gives the same order, every epoch covers every sample once", "[data]") {
    const CaptionDataset data = five_samples();
    const CharTokenizer tok = CharTokenizer::from_texts(data.captions());
    BatcherOptions options;
    options.batch_size = 2;
    Batcher a(data, tok, options), b(data, tok, options);
    CHECK(a.num_batches() == 3);
    CHECK(epoch_order(a) == std::vector<Index>{0, 1, 2, 3, 4});  // no shuffle: data-set order

    Rng rng_a(42), rng_b(42);
    std::vector<std::vector<Index>> orders_a, orders_b;
    for (int epoch = 0; epoch < 3; ++epoch) {
        a.start_epoch(rng_a);
        b.start_epoch(rng_b);
        orders_a.push_back(epoch_order(a));
        orders_b.push_back(epoch_order(b));
        std::vector<Index> sorted = orders_a.back();
        std::sort(sorted.begin(), sorted.end());
        CHECK(sorted == std::vector<Index>{0, 1, 2, 3, 4});
    }
    CHECK(orders_a == orders_b);
    CHECK(orders_a[0] != orders_a[1]);  // a new permutation each epoch
    Rng other(7);
    a.start_epoch(other);
    CHECK(epoch_order(a) != orders_a[0]);

    options.drop_last = true;
    Batcher dropping(data, tok, options);
    CHECK(dropping.num_batches() == 2);
    CHECK(epoch_order(dropping).size() == 4);
}

TEST_CASE("batcher: step_samples depends only on (seed, step), uses full batches, covers each epoch", "[data]") {
    const CaptionDataset data = five_samples();
    const CharTokenizer tok = CharTokenizer::from_texts(data.captions());
    BatcherOptions options;
    options.batch_size = 2;
    Batcher a(data, tok, options), b(data, tok, options);
    // Epoch e is start_epoch(rng) with rng seeded from (seed, e): steps 0-1 are epoch 0, 2-3 epoch 1.
    Rng epoch1(uint64_t{9} ^ (0x9E3779B97F4A7C15ULL * 2));
    Batcher reference(data, tok, options);
    reference.start_epoch(epoch1);
    const std::vector<Index> order1 = epoch_order(reference);
    CHECK(a.step_samples(3, 9) == std::vector<Index>{order1[2], order1[3]});
    // Any step in any order gives the same samples as a fresh Batcher walking up to it.
    for (Index step : {0, 5, 1, 3, 2, 4}) CHECK(a.step_samples(step, 9) == b.step_samples(step, 9));
    // Within one epoch the two full batches are disjoint; the fifth sample waits.
    std::vector<Index> epoch0 = a.step_samples(0, 9), second = a.step_samples(1, 9);
    epoch0.insert(epoch0.end(), second.begin(), second.end());
    std::sort(epoch0.begin(), epoch0.end());
    CHECK(std::adjacent_find(epoch0.begin(), epoch0.end()) == epoch0.end());
    CHECK(a.step_samples(0, 9) != a.step_samples(0, 10));  // another seed, another order
    CHECK_THROWS_WITH(a.step_samples(-1, 9), Catch::Contains("[Batcher] step"));
    options.batch_size = 6;
    Batcher too_big(data, tok, options);
    CHECK_THROWS_WITH(too_big.step_samples(0, 9), Catch::Contains("no full batch"));
}

// ---- augmentation (augment.hpp) -----------------------------------------------------------------

namespace {
// A 3 x 3 RGB image whose pixel (y, x) has values (10 (3y + x) + 10, +1, +2): every pixel distinct.
std::vector<std::uint8_t> numbered_image() {
    std::vector<std::uint8_t> im(27);
    for (int p = 0; p < 9; ++p)
        for (int c = 0; c < 3; ++c) im[static_cast<std::size_t>(p * 3 + c)] = static_cast<std::uint8_t>(10 * p + 10 + c);
    return im;
}
// Channel 0 of an augmented 3 x 3 image, row by row.
std::vector<int> red(const std::vector<std::uint8_t>& im) {
    std::vector<int> out;
    for (std::size_t p = 0; p < 9; ++p) out.push_back(im[p * 3]);
    return out;
}
}  // namespace

TEST_CASE("augment: crop with padding and flip move pixels as stated, black outside", "[data]") {
    const std::vector<std::uint8_t> in = numbered_image();
    std::vector<std::uint8_t> out(27);
    AugmentDraw d;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(out == in);  // nothing drawn: a copy
    d.dx = 1;  // output (y, x) = input (y, x + 1): the picture moves left by one
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(red(out) == std::vector<int>{20, 30, 0, 50, 60, 0, 80, 90, 0});
    d.dx = 0;
    d.dy = -1;  // output (y, x) = input (y - 1, x): down by one
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(red(out) == std::vector<int>{0, 0, 0, 10, 20, 30, 40, 50, 60});
    d.dy = 0;
    d.flip = true;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(red(out) == std::vector<int>{30, 20, 10, 60, 50, 40, 90, 80, 70});
    CHECK(out[1] == 31);  // channels move together
    CHECK(out[2] == 32);
    d.dx = 1;  // output x reads input column (S-1-x) + dx: the mirrored column, one further right
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(red(out) == std::vector<int>{0, 30, 20, 0, 60, 50, 0, 90, 80});
}

TEST_CASE("augment: contrast around the image mean, then brightness, rounded and clipped", "[data]") {
    // Values 10..92, mean 51 over the 27 values.
    const std::vector<std::uint8_t> in = numbered_image();
    std::vector<std::uint8_t> out(27);
    AugmentDraw d;
    d.contrast = 1.25;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(out[0] == 0);         // (10 - 51) * 1.25 + 51 = -0.25 -> 0
    CHECK(out[15] == 62);       // value 60: 9 * 1.25 + 51 = 62.25
    CHECK(out[26] == 102);      // value 92: 41 * 1.25 + 51 = 102.25
    d.contrast = 0.5;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(out[1] == 31);        // value 11: -40 * 0.5 + 51
    CHECK(out[25] == 71);       // value 91: 40 * 0.5 + 51
    d.contrast = 1.0;
    d.brightness = 0.5;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(out[0] == 5);         // 10 * 0.5
    CHECK(out[1] == 6);         // 11 * 0.5 = 5.5, to even
    CHECK(out[26] == 46);
    d.brightness = 3.0;
    apply_augmentation(in.data(), 3, d, out.data());
    CHECK(out[0] == 30);
    CHECK(out[26] == 255);      // 276 clipped
}

TEST_CASE("augment: draws stay in range, follow the seed and leave switched-off steps alone", "[data]") {
    AugmentOptions o;
    o.crop_padding = 2;
    o.horizontal_flip = true;
    o.contrast = 0.2;
    o.brightness = 0.1;
    Rng a(5), b(5);
    std::set<int> shifts;
    int flips = 0;
    for (int i = 0; i < 400; ++i) {
        const AugmentDraw d = draw_augmentation(o, a), e = draw_augmentation(o, b);
        CHECK(d.dx == e.dx);  // same seed, same draws
        CHECK(d.dy == e.dy);
        CHECK(d.flip == e.flip);
        CHECK(d.contrast == e.contrast);
        CHECK(d.brightness == e.brightness);
        CHECK(d.dx >= -2);
        CHECK(d.dx <= 2);
        CHECK(d.contrast >= 0.8);
        CHECK(d.contrast <= 1.2);
        CHECK(d.brightness >= 0.9);
        CHECK(d.brightness <= 1.1);
        shifts.insert(d.dx);
        flips += d.flip ? 1 : 0;
    }
    CHECK(shifts.size() == 5);  // every shift in [-2, 2] occurs
    CHECK(flips > 150);
    CHECK(flips < 250);
    // Flip off: never flipped; nothing on: nothing drawn (the Rng is untouched).
    AugmentOptions no_flip = o;
    no_flip.horizontal_flip = false;
    Rng c(5);
    for (int i = 0; i < 50; ++i) CHECK_FALSE(draw_augmentation(no_flip, c).flip);
    Rng d(9), untouched(9);
    draw_augmentation(AugmentOptions{}, d);
    CHECK(d.next_u64() == untouched.next_u64());
    AugmentOptions bad;
    bad.contrast = 1.5;
    CHECK_THROWS_WITH(draw_augmentation(bad, d), Catch::Contains("[augment]") && Catch::Contains("contrast"));
}

// Six 8 x 8 images of seeded random pixels, captioned `odd` and `even` in turn.
static CaptionDataset noise_images_dataset(const char* odd, const char* even) {
    CaptionDataset ds(8);
    Rng fill(3);
    for (int i = 0; i < 6; ++i) {
        Image im;
        im.width = im.height = 8;
        im.rgb.resize(8 * 8 * 3);
        for (auto& v : im.rgb) v = static_cast<std::uint8_t>(fill.randint(0, 256));
        ds.add(im, i % 2 ? odd : even);
    }
    return ds;
}

TEST_CASE("augment: a training batch is the same for the same (seed, step) and differs for another", "[data]") {
    const CaptionDataset ds = noise_images_dataset("a cat", "a dog");
    const CharTokenizer tok = CharTokenizer::from_texts(ds.captions());
    BatcherOptions bo;
    bo.batch_size = 3;
    const Batcher batcher(ds, tok, bo);
    AugmentOptions o;
    o.crop_padding = 2;
    o.horizontal_flip = true;
    o.brightness = 0.2;
    const Batch plain = batcher.make_batch({4, 1, 2});
    const Batch first = batcher.make_batch({4, 1, 2}, o, 7, 10);
    const Batch again = batcher.make_batch({4, 1, 2}, o, 7, 10);
    const Batch alone = batcher.make_batch({2}, o, 7, 10);  // sample 2 in another batch
    const Batch next_step = batcher.make_batch({4, 1, 2}, o, 7, 11);
    const Batch other_seed = batcher.make_batch({4, 1, 2}, o, 8, 10);
    CHECK(first.images.to_vector() == again.images.to_vector());
    CHECK(first.images.to_vector() != plain.images.to_vector());
    CHECK(first.images.to_vector() != next_step.images.to_vector());
    CHECK(first.images.to_vector() != other_seed.images.to_vector());
    const std::vector<float> all = first.images.to_vector(), one = alone.images.to_vector();
    CHECK(std::vector<float>(all.begin() + 2 * 192, all.end()) == one);
    CHECK(first.input_ids == plain.input_ids);  // captions untouched
    CHECK(first.targets == plain.targets);
    // With every option off, the batch equals the plain one.
    CHECK(batcher.make_batch({4, 1, 2}, AugmentOptions{}, 7, 10).images.to_vector() == plain.images.to_vector());
}

TEST_CASE("word dropout blanks whole words of the caption input, follows the seed, keeps the targets", "[data]") {
    // drop_words on its own: words are the runs between spaces (id 9 here).
    std::vector<Index> ids{3, 4, 9, 5, 5, 5, 9, 6};  // "ab ccc d"
    Rng none(1), untouched(1);
    std::vector<Index> same = ids;
    drop_words(same.data(), 8, 9, 0, 0.0, none);
    CHECK(same == ids);
    CHECK(none.next_u64() == untouched.next_u64());  // off: nothing drawn
    int blanked_words = 0, words = 0;
    std::set<std::vector<Index>> seen;
    for (int trial = 0; trial < 300; ++trial) {
        Rng rng(100 + trial), again(100 + trial);
        std::vector<Index> a = ids, b = ids;
        drop_words(a.data(), 8, 9, 0, 0.5, rng);
        drop_words(b.data(), 8, 9, 0, 0.5, again);
        CHECK(a == b);  // same seed, same words
        CHECK(a[2] == 9);  // spaces stay
        CHECK(a[6] == 9);
        // Each word is either whole or all <pad>.
        for (auto [lo, hi] : {std::pair<int, int>{0, 2}, {3, 6}, {7, 8}}) {
            const bool blank = a[static_cast<std::size_t>(lo)] == 0;
            for (int k = lo; k < hi; ++k)
                CHECK(a[static_cast<std::size_t>(k)] == (blank ? 0 : ids[static_cast<std::size_t>(k)]));
            blanked_words += blank ? 1 : 0;
            ++words;
        }
        seen.insert(a);
    }
    CHECK(seen.size() == 8);  // all 2^3 patterns occur
    CHECK(blanked_words > words * 4 / 10);
    CHECK(blanked_words < words * 6 / 10);

    // In a batch: only the input after <bos> changes, the targets and images do not, and the
    // same (seed, step) gives the same batch.
    const CaptionDataset ds = noise_images_dataset("a big cat", "a small dog");
    const CharTokenizer tok = CharTokenizer::from_texts(ds.captions());
    BatcherOptions bo;
    bo.batch_size = 6;
    const Batcher batcher(ds, tok, bo);
    AugmentOptions o;
    o.word_dropout = 0.5;
    const std::vector<Index> all{0, 1, 2, 3, 4, 5};
    const Batch plain = batcher.make_batch(all);
    Batch first = batcher.make_batch(all, o, 7, 10);
    CHECK(first.input_ids == batcher.make_batch(all, o, 7, 10).input_ids);
    CHECK(first.targets == plain.targets);
    CHECK(first.images.to_vector() == plain.images.to_vector());
    CHECK(first.input_ids != plain.input_ids);
    const Index L = plain.seq_len, space = tok.encode(" ")[0];
    for (Index b = 0; b < 6; ++b) {
        CHECK(first.input_ids[static_cast<std::size_t>(b * L)] == CharTokenizer::bos_id);
        for (Index t = 1; t < L; ++t) {
            const Index got = first.input_ids[static_cast<std::size_t>(b * L + t)];
            const Index was = plain.input_ids[static_cast<std::size_t>(b * L + t)];
            CHECK((got == was || (got == CharTokenizer::pad_id && was != space)));
        }
    }
    o.word_dropout = 1.0;
    CHECK_THROWS_WITH(batcher.make_batch(all, o, 7, 10), Catch::Contains("word_dropout"));
}
