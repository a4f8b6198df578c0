// tests/test_reliability.cpp — what the library refuses, and how: files that are not regular
// files (FIFOs, directories, devices) without blocking, images over the size limits, image paths
// leading out of the data folder, captions that are not UTF-8, configs with a bad field, and
// checkpoints whose metadata or values are corrupt. Every refusal is a seemoe::Error naming the
// file and the row or field.
#include <catch2/catch.hpp>

#include <stb/stb_image_write.h>
#include <sys/stat.h>

#include <seemoe/data/csv.hpp>
#include <seemoe/data/dataset.hpp>
#include <seemoe/data/image.hpp>
#include <seemoe/io/file.hpp>
#include <seemoe/io/safetensors.hpp>
#include <seemoe/nn/checkpoint.hpp>
#include <seemoe/nn/vlm.hpp>

#include "temp_dir.hpp"

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

using seemoe::Error;
using seemoe::Index;

namespace {

namespace fs = std::filesystem;

// Canonical, so the paths in the data-set checks compare as the library resolves them.
struct TempDir : seemoe::testing::TempDir {
    TempDir() : seemoe::testing::TempDir("seemoe_test_reliability_") { path = fs::canonical(path); }
};

void write_bytes(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

std::string png_bytes(int w, int h) {
    std::vector<std::uint8_t> pixels(static_cast<std::size_t>(w * h * 3), 128);
    std::string out;
    auto append = [](void* context, void* data, int size) {
        static_cast<std::string*>(context)->append(static_cast<const char*>(data), static_cast<std::size_t>(size));
    };
    REQUIRE(stbi_write_png_to_func(append, &out, w, h, 3, pixels.data(), w * 3) != 0);
    return out;
}

// A minimal valid 24-bit BMP header claiming w x h pixels, followed by no pixel data.
std::string bmp_header(std::uint32_t w, std::uint32_t h) {
    std::string b(54, '\0');
    auto put32 = [&](std::size_t at, std::uint32_t v) {
        for (int i = 0; i < 4; ++i) b[at + i] = static_cast<char>((v >> (8 * i)) & 0xFF);
    };
    b[0] = 'B', b[1] = 'M';
    put32(2, 54);
    put32(10, 54);
    put32(14, 40);
    put32(18, w);
    put32(22, h);
    b[26] = 1;   // planes
    b[28] = 24;  // bits per pixel
    return b;
}

seemoe::nn::VLMConfig small_config() {
    seemoe::nn::VLMConfig c;
    c.vision.image_size = 8;
    c.vision.patch_size = 4;
    c.vision.dim = 8;
    c.vision.n_blocks = 1;
    c.vision.n_heads = 2;
    c.decoder.vocab_size = 10;
    c.decoder.n_embd = 8;
    c.decoder.n_head = 2;
    c.decoder.n_layer = 1;
    c.decoder.num_experts = 2;
    c.decoder.top_k = 1;
    c.decoder.block_size = 16;
    return c;
}

}  // namespace

TEST_CASE("read_file opens regular files only, refusing FIFOs, directories and devices without blocking",
          "[io][reliability]") {
    TempDir dir;
    write_bytes(dir.file("plain.txt"), "hello");
    CHECK(seemoe::io::read_file(dir.file("plain.txt")) == "hello");
    CHECK_THROWS_WITH(seemoe::io::read_file(dir.file("plain.txt"), 4, "a test file"),
                      Catch::Contains("plain.txt' is 5 bytes, more than the 4 bytes allowed for a test file"));
    CHECK_THROWS_WITH(seemoe::io::read_file(dir.path.string()), Catch::Contains("is a directory"));
    REQUIRE(::mkfifo(dir.file("fifo").c_str(), 0600) == 0);
    // Without O_NONBLOCK this open would wait for a writer forever.
    CHECK_THROWS_WITH(seemoe::io::read_file(dir.file("fifo")), Catch::Contains("fifo' is a FIFO (named pipe)"));
    CHECK_THROWS_WITH(seemoe::io::read_file("/dev/zero"), Catch::Contains("'/dev/zero' is a character device"));
    CHECK_THROWS_WITH(seemoe::io::load_safetensors(dir.file("fifo")),
                      Catch::Contains("[safetensors]") && Catch::Contains("is a FIFO"));
    CHECK_THROWS_WITH(seemoe::data::read_csv(dir.file("fifo")), Catch::Contains("[csv]") && Catch::Contains("FIFO"));
    CHECK_THROWS_WITH(seemoe::data::load_image("/dev/zero"), Catch::Contains("character device"));
    CHECK_THROWS_WITH(seemoe::data::load_image(dir.path.string()), Catch::Contains("is a directory"));
}

TEST_CASE("image limits: file bytes, pixels a side and decoded bytes are checked before decoding",
          "[data][reliability]") {
    TempDir dir;
    write_bytes(dir.file("small.png"), png_bytes(16, 8));
    CHECK(seemoe::data::load_image(dir.file("small.png")).width == 16);

    seemoe::data::ImageLimits limits;
    limits.max_side = 15;
    CHECK_THROWS_WITH(seemoe::data::load_image(dir.file("small.png"), limits),
                      Catch::Contains("small.png is 16x8 pixels, more than allowed (at most 15 a side"));
    limits = {};
    limits.max_file_bytes = 10;
    CHECK_THROWS_WITH(seemoe::data::load_image(dir.file("small.png"), limits),
                      Catch::Contains("more than the 10 bytes allowed for an image file"));
    limits = {};
    limits.max_decoded_bytes = 16 * 8 * 4 - 1;
    CHECK_THROWS_WITH(seemoe::data::load_image(dir.file("small.png"), limits), Catch::Contains("more than allowed"));

    // 54-byte headers claiming more pixels than allowed are refused by the header alone, before
    // stb_image allocates anything: 8193 a side, and 8192 x 8192 x 4 bytes = 256 MiB against a
    // limit one byte lower.
    write_bytes(dir.file("wide.bmp"), bmp_header(8193, 1));
    CHECK_THROWS_WITH(seemoe::data::load_image(dir.file("wide.bmp")), Catch::Contains("8193x1 pixels"));
    const std::string huge = bmp_header(8192, 8192);
    limits = {};
    limits.max_decoded_bytes = (std::uint64_t(256) << 20) - 1;
    CHECK_THROWS_WITH(seemoe::data::decode_image(reinterpret_cast<const std::uint8_t*>(huge.data()), huge.size(),
                                                 "huge.bmp", limits),
                      Catch::Contains("huge.bmp is 8192x8192 pixels, more than allowed"));
}

TEST_CASE("dataset: image paths must stay inside the data folder unless allowed", "[data][reliability]") {
    TempDir dir;
    fs::create_directories(dir.path / "data" / "img");
    write_bytes(dir.file("data/img/in.png"), png_bytes(4, 4));
    write_bytes(dir.file("outside.png"), png_bytes(4, 4));
    fs::create_symlink(dir.path / "outside.png", dir.path / "data" / "img" / "link.png");
    fs::create_symlink(dir.path / "data" / "img" / "in.png", dir.path / "data" / "inner_link.png");
    const std::string csv = dir.file("data/captions.csv");
    const std::string data = dir.file("data");
    seemoe::data::DatasetOptions options;
    options.image_size = 4;

    write_bytes(csv, "image,caption\nimg/in.png,inside\nimg/../img/in.png,also inside\ninner_link.png,a link inside\n");
    CHECK(seemoe::data::CaptionDataset::load(data, options).size() == 3);

    const std::vector<std::pair<std::string, std::string>> escapes = {
        {"/etc/passwd", "the path is absolute"},
        {dir.file("outside.png"), "the path is absolute"},
        {"../outside.png", "outside the data folder"},
        {"img/../../outside.png", "outside the data folder"},
        {"img/link.png", "outside the data folder"},  // a symlink out
        {"/proc/self/environ", "the path is absolute"},
    };
    for (const auto& [cell, message] : escapes) {
        INFO(cell);
        write_bytes(csv, "image,caption\nimg/in.png,fine\n" + cell + ",escape\n");
        CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(data, options),
                          Catch::Contains("captions.csv line 3 (row 2), image \"" + cell + "\"") &&
                              Catch::Contains(message));
    }
    options.allow_outside_paths = true;
    write_bytes(csv, "image,caption\n../outside.png,one\n" + dir.file("outside.png") + ",two\nimg/link.png,three\n");
    CHECK(seemoe::data::CaptionDataset::load(data, options).size() == 3);
    // Still regular files only.
    write_bytes(csv, "image,caption\n/dev/zero,zeros\n");
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(data, options),
                      Catch::Contains("row 1)") && Catch::Contains("character device"));
}

TEST_CASE("dataset: a directory or FIFO named as an image is refused naming the row", "[data][reliability]") {
    TempDir dir;
    fs::create_directories(dir.path / "data" / "sub");
    REQUIRE(::mkfifo(dir.file("data/pipe.png").c_str(), 0600) == 0);
    const std::string csv = dir.file("data/captions.csv");
    write_bytes(csv, "image,caption\nsub,a folder\n");
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(dir.file("data")),
                      Catch::Contains("row 1), image \"sub\"") && Catch::Contains("is a directory"));
    write_bytes(csv, "image,caption\npipe.png,a pipe\n");
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(dir.file("data")),
                      Catch::Contains("row 1), image \"pipe.png\"") && Catch::Contains("FIFO"));
    // The data set path itself.
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(dir.file("data/pipe.png")), Catch::Contains("FIFO"));
}

TEST_CASE("dataset: a caption that is not UTF-8 is refused naming its row", "[data][reliability]") {
    TempDir dir;
    write_bytes(dir.file("a.png"), png_bytes(4, 4));
    write_bytes(dir.file("captions.csv"), "image,caption\na.png,fine\na.png,caf\xE9 latin-1\n");
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::load(dir.path.string()),
                      Catch::Contains("captions.csv line 3 (row 2): the caption is not valid UTF-8 (byte 4"));
    CHECK_THROWS_WITH(seemoe::data::CaptionDataset::read_captions(dir.path.string()),
                      Catch::Contains("line 3 (row 2): the caption is not valid UTF-8"));
}

TEST_CASE("check_config names the field of every bad config", "[nn][reliability]") {
    using seemoe::nn::VLMConfig;
    CHECK_FALSE(seemoe::nn::find_config_issue(small_config()));
    struct Case {
        const char* field;
        void (*edit)(VLMConfig&);
    };
    const std::vector<Case> cases = {
        {"vision.patch_size", [](VLMConfig& c) { c.vision.patch_size = 0; }},
        {"vision.image_size", [](VLMConfig& c) { c.vision.image_size = 0; }},
        {"vision.image_size", [](VLMConfig& c) { c.vision.image_size = 10; }},  // not a multiple of 4
        {"vision.patch_size", [](VLMConfig& c) { c.vision.patch_size = 16; }},  // larger than the image
        {"vision.channels", [](VLMConfig& c) { c.vision.channels = 1; }},
        {"vision.dim", [](VLMConfig& c) { c.vision.dim = 9; }},
        {"vision.n_blocks", [](VLMConfig& c) { c.vision.n_blocks = 0; }},
        {"vision.n_heads", [](VLMConfig& c) { c.vision.n_heads = 0; }},
        {"vision.mlp_ratio", [](VLMConfig& c) { c.vision.mlp_ratio = -1; }},
        {"vision.dropout", [](VLMConfig& c) { c.vision.dropout = 1.0; }},
        {"vision.dropout", [](VLMConfig& c) { c.vision.dropout = std::nan(""); }},
        {"decoder.vocab_size", [](VLMConfig& c) { c.decoder.vocab_size = 2; }},
        {"decoder.n_embd", [](VLMConfig& c) { c.decoder.n_embd = 0; }},
        {"decoder.n_embd", [](VLMConfig& c) { c.decoder.n_embd = 9; }},
        {"decoder.n_head", [](VLMConfig& c) { c.decoder.n_head = 0; }},
        {"decoder.n_layer", [](VLMConfig& c) { c.decoder.n_layer = 0; }},
        {"decoder.num_experts", [](VLMConfig& c) { c.decoder.num_experts = 0; }},
        {"decoder.top_k", [](VLMConfig& c) { c.decoder.top_k = 3; }},
        {"decoder.expert_ratio", [](VLMConfig& c) { c.decoder.expert_ratio = 0; }},
        {"decoder.block_size", [](VLMConfig& c) { c.decoder.block_size = 1; }},
        {"decoder.block_size", [](VLMConfig& c) {
             c.visual_tokens = seemoe::nn::VisualTokens::Patches;  // 4 visual tokens + 2 > 5
             c.decoder.block_size = 5;
         }},
        {"decoder.dropout", [](VLMConfig& c) { c.decoder.dropout = -0.1; }},
        {"eos_id", [](VLMConfig& c) { c.eos_id = 10; }},
        {"pad_id", [](VLMConfig& c) { c.pad_id = -1; }},
        {"eos_id", [](VLMConfig& c) { c.eos_id = c.bos_id; }},
        {"decoder.n_embd", [](VLMConfig& c) {  // 65536 wide x 1024 layers: far past 1e9 parameters
             c.decoder.n_embd = 65536;
             c.decoder.n_layer = 1024;
         }},
    };
    for (const Case& test : cases) {
        VLMConfig c = small_config();
        test.edit(c);
        const seemoe::nn::ConfigIssue issue = seemoe::nn::find_config_issue(c);
        INFO(test.field << ": " << issue.field << " " << issue.problem);
        CHECK(issue.field == test.field);
        CHECK_THROWS_WITH(seemoe::nn::check_config(c, "[where]"),
                          Catch::StartsWith("[where]: config field " + std::string(test.field)));
        seemoe::Rng rng(0);
        CHECK_THROWS_AS(seemoe::nn::VisionMoELanguageModel<float>(c, rng), Error);
    }
}

TEST_CASE("checkpoint: corrupt config, vocabulary, step and values are refused naming the file and the field",
          "[io][reliability]") {
    TempDir dir;
    seemoe::Rng rng(1);
    seemoe::nn::VisionMoELanguageModel<float> model(small_config(), rng);
    const auto tokenizer = seemoe::data::CharTokenizer::from_texts({"abcdefg"});
    REQUIRE(tokenizer.vocab_size() == 10);
    const std::string good = dir.file("good.safetensors");
    seemoe::nn::save_model(good, model, tokenizer, 7);
    REQUIRE(seemoe::nn::load_model(good).step == 7);
    const seemoe::io::SafetensorsFile file = seemoe::io::load_safetensors(good);

    // Rewrites the checkpoint with one metadata entry replaced (or removed, for an empty value).
    auto variant = [&](const std::string& key, const std::string& value, const std::string& name) {
        auto metadata = file.metadata;
        if (value.empty()) metadata.erase(key);
        else metadata[key] = value;
        const std::string path = dir.file(name + ".safetensors");
        seemoe::io::save_safetensors(path, file.tensors, metadata);
        return path;
    };
    const std::string config = file.metadata.at("config");
    auto with = [&](const std::string& from, const std::string& to) {
        const std::size_t at = config.find(from);
        REQUIRE(at != std::string::npos);
        std::string c = config;
        c.replace(at, from.size(), to);
        return c;
    };
    const std::vector<std::pair<std::string, std::string>> cases = {
        {variant("config", with("\"patch_size\":4", "\"patch_size\":0"), "patch0"), "config field vision.patch_size"},
        {variant("config", with("\"n_layer\":1", "\"n_layer\":0"), "layers0"), "config field decoder.n_layer"},
        {variant("config", with("\"eos_id\":2", "\"eos_id\":99"), "eos"), "config field eos_id"},
        {variant("config", with("\"pad_id\":0", "\"pad_id\":-5"), "pad"), "config field pad_id"},
        {variant("config", with("\"n_embd\":8", "\"n_embd\":\"8\""), "type"), "field decoder.n_embd: [json] expected"},
        {variant("config", with("\"n_embd\":8", "\"n_embd\":8.5"), "fraction"), "field decoder.n_embd"},
        {variant("config", with("\"n_embd\":8,", ""), "missing"), "field decoder.n_embd: [json] no key"},
        {variant("config", with("\"visual_tokens\":\"cls\"", "\"visual_tokens\":\"all\""), "visual"),
         "field visual_tokens: unknown visual_tokens 'all'"},
        {variant("config", "{not json", "notjson"), "metadata 'config'"},
        {variant("config", "[]", "array"), "metadata 'config'"},
        {variant("config", "", "noconfig"), "has no 'config'"},
        {variant("vocab", "[1,2]", "vocab"), "metadata 'vocab'"},
        {variant("step", "12x", "step"), "has step '12x'"},
        {variant("step", "-1", "negstep"), "has step '-1'"},
    };
    for (const auto& [path, message] : cases) {
        INFO(path);
        CHECK_THROWS_WITH(seemoe::nn::load_model(path), Catch::Contains(path) && Catch::Contains(message));
    }

    // A NaN in a weight.
    auto tensors = file.tensors;
    tensors[0].second = tensors[0].second.clone();
    tensors[0].second.data()[0] = std::numeric_limits<float>::quiet_NaN();
    seemoe::io::save_safetensors(dir.file("nan.safetensors"), tensors, file.metadata);
    CHECK_THROWS_WITH(seemoe::nn::load_model(dir.file("nan.safetensors")),
                      Catch::Contains("nan.safetensors") && Catch::Contains("holds a NaN or an infinity"));
}
