// Tests for io/json.hpp and io/safetensors.hpp: JSON round trips, escapes, numbers and strict
// errors; safetensors round trips (bitwise), the exact byte layout, dtype conversion, corrupt
// files and atomic writes.
#include <catch2/catch.hpp>

#include <seemoe/io/file.hpp>
#include <seemoe/io/json.hpp>
#include <seemoe/io/safetensors.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <vector>

#include "temp_dir.hpp"

using seemoe::Error;
using seemoe::Index;
using seemoe::Rng;
using seemoe::Tensord;
using seemoe::Tensorf;
using seemoe::io::Json;

namespace {

namespace fs = std::filesystem;

// A scratch folder per test case, named after this file.
struct TempDir : seemoe::testing::TempDir {
    TempDir() : seemoe::testing::TempDir("seemoe_test_io_") {}
};

// Bytes from a string literal that may contain '\0' (sizeof includes the literal's final NUL).
template <std::size_t N>
std::string bytes_of(const char (&literal)[N]) {
    return std::string(literal, N - 1);
}

// 8-byte little-endian header length + header + data, for hand-made files.
std::string safetensors_bytes(const std::string& header, const std::string& data) {
    std::string out;
    std::uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) out += static_cast<char>((n >> (8 * i)) & 0xFF);
    return out + header + data;
}

bool same_bits(const Tensorf& a, const Tensorf& b) {
    return a.shape() == b.shape() &&
           (a.numel() == 0 ||
            std::memcmp(a.data(), b.data(), static_cast<std::size_t>(a.numel()) * 4) == 0);
}

}  // namespace

// ============================================================================================
// JSON
// ============================================================================================

TEST_CASE("json: parses every kind of value", "[io]") {
    const Json doc = Json::parse(
        " {\"null\": null, \"t\": true, \"f\": false, \"int\": -42, \"real\": 2.5e-3,\n"
        "  \"text\": \"hi\", \"list\": [1, [2, []], {}], \"obj\": {\"k\": \"v\"}}\t\r\n");
    REQUIRE(doc.is_object());
    CHECK(doc.size() == 8);
    CHECK(doc.at("null").is_null());
    CHECK(doc.at("t").as_bool() == true);
    CHECK(doc.at("f").as_bool() == false);
    CHECK(doc.at("int").is_integer());
    CHECK(doc.at("int").as_int() == -42);
    CHECK(doc.at("real").is_number());
    CHECK_FALSE(doc.at("real").is_integer());
    CHECK(doc.at("real").as_double() == 2.5e-3);
    CHECK(doc.at("text").as_string() == "hi");
    const Json& list = doc.at("list");
    REQUIRE(list.size() == 3);
    CHECK(list.at(0).as_int() == 1);
    CHECK(list.at(1).at(1).is_array());
    CHECK(list.at(1).at(1).size() == 0);
    CHECK(list.at(2).is_object());
    CHECK(doc.at("obj").at("k").as_string() == "v");
    CHECK(Json::parse("7").as_int() == 7);  // any value may be the document
    CHECK(Json::parse("\"s\"").as_string() == "s");
}

TEST_CASE("json: integers are exact, other numbers are doubles", "[io]") {
    // 2^53 + 1 has no double; it must survive as an integer.
    const Json big = Json::parse("9007199254740993");
    CHECK(big.is_integer());
    CHECK(big.as_int() == 9007199254740993LL);
    CHECK(big.dump() == "9007199254740993");
    CHECK(Json::parse("9223372036854775807").as_int() == std::numeric_limits<std::int64_t>::max());
    CHECK(Json::parse("-9223372036854775808").as_int() == std::numeric_limits<std::int64_t>::min());
    // One past int64 stays a number, as the nearest double.
    const Json beyond = Json::parse("9223372036854775808");
    CHECK_FALSE(beyond.is_integer());
    CHECK(beyond.as_double() == 9223372036854775808.0);
    CHECK_THROWS_WITH(beyond.as_int(), Catch::Contains("not an integer in int64 range"));

    CHECK_FALSE(Json::parse("1e3").is_integer());
    CHECK(Json::parse("1e3").as_int() == 1000);
    CHECK(Json::parse("1E+2").as_double() == 100.0);
    CHECK(Json::parse("-0.5e-1").as_double() == -0.05);
    CHECK_THROWS_WITH(Json::parse("2.5").as_int(), Catch::Contains("[json] number 2.5"));
    // "-0" keeps its sign, so -0.0 round trips.
    const Json negative_zero = Json::parse("-0");
    CHECK(std::signbit(negative_zero.as_double()));
    CHECK(Json::parse("0").as_int() == 0);

    // Integer constructors: signed, unsigned, and an unsigned beyond int64.
    CHECK(Json(std::uint8_t{200}).as_int() == 200);
    CHECK(Json(-3L).as_int() == -3);
    CHECK(Json(std::numeric_limits<std::uint64_t>::max()).is_integer() == false);
    CHECK(Json(std::uint64_t{1} << 63).as_double() == 9223372036854775808.0);
}

TEST_CASE("json: numbers are written in their shortest exact form", "[io]") {
    CHECK(Json(0.1).dump() == "0.1");
    CHECK(Json(-2.5).dump() == "-2.5");
    CHECK(Json(123.456).dump() == "123.456");
    CHECK(Json(0.0003).dump() == "0.0003");
    CHECK(Json(0.00001).dump() == "1e-05");
    CHECK(Json(1e15).dump() == "1000000000000000.0");
    CHECK(Json(1e16).dump() == "1e+16");
    CHECK(Json(1.5e300).dump() == "1.5e+300");
    CHECK(Json(5e-324).dump() == "5e-324");
    CHECK(Json(-0.0).dump() == "-0.0");
    // Integral doubles keep ".0" and read back as doubles; integers are written bare.
    CHECK(Json(2.0).dump() == "2.0");
    CHECK_FALSE(Json::parse(Json(2.0).dump()).is_integer());
    CHECK(Json(100).dump() == "100");
    CHECK(Json(std::numeric_limits<std::int64_t>::min()).dump() == "-9223372036854775808");
    // A float is written as its own shortest decimal, not its double expansion...
    CHECK(Json(0.1f).dump() == "0.1");
    CHECK(Json(3.4028235e38f).dump() == "3.4028235e+38");
    CHECK(Json(2.25f).dump() == "2.25");
    CHECK(Json(3e-4f).dump() == "0.0003");
    // ...and reads back as the same float.
    const float f = 1.0f / 3.0f;
    CHECK(static_cast<float>(Json::parse(Json(f).dump()).as_double()) == f);
    // Every double round trips exactly.
    for (double d : {1.0 / 3.0, std::sqrt(2.0), 1e-300, -123456.789e200,
                     std::numeric_limits<double>::max(), std::numeric_limits<double>::denorm_min()}) {
        CHECK(Json::parse(Json(d).dump()).as_double() == d);
    }
    CHECK(std::signbit(Json::parse(Json(-0.0).dump()).as_double()));
    // Non-finite numbers have no JSON spelling: null.
    CHECK(Json(std::nan("")).dump() == "null");
    CHECK(Json(-std::numeric_limits<double>::infinity()).dump() == "null");
    CHECK(Json(std::numeric_limits<float>::infinity()).dump() == "null");
}

TEST_CASE("json: string escapes and UTF-8", "[io]") {
    // Every escape the grammar has, plus a \u for U+00E9 and a surrogate pair for U+1F600.
    const Json parsed = Json::parse(R"("q\" b\\ s\/ \b\f\n\r\t \u0041\u00e9\ud83d\ude00 \u0000!")");
    CHECK(parsed.as_string() ==
          bytes_of("q\" b\\ s/ \b\f\n\r\t A\xC3\xA9\xF0\x9F\x98\x80 \0!"));
    CHECK(Json::parse(R"("\u00E9\u20AC")").as_string() == "\xC3\xA9\xE2\x82\xAC");  // upper-case hex

    // The writer escapes quote, backslash and control characters, and nothing else.
    CHECK(Json(bytes_of("a\"b\\c\nd\te\x01\x1f\0/")).dump() == R"("a\"b\\c\nd\te\u0001\u001f\u0000/")");
    CHECK(Json("\b\f\r").dump() == R"("\b\f\r")");
    // UTF-8 passes through unescaped: 2-, 3- and 4-byte sequences.
    const std::string unicode = "caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80";
    CHECK(Json(unicode).dump() == "\"" + unicode + "\"");
    CHECK(Json::parse(Json(unicode).dump()).as_string() == unicode);

    // Every control character and every byte value that UTF-8 allows survives a round trip.
    std::string all;
    for (int c = 0; c < 0x80; ++c) all += static_cast<char>(c);
    CHECK(Json::parse(Json(all).dump()).as_string() == all);

    // Invalid UTF-8 cannot be written (it would make a file no JSON reader accepts).
    CHECK_THROWS_WITH(Json("ab\xFF").dump(), Catch::Contains("not valid UTF-8") &&
                                                 Catch::Contains("offset 2"));
    CHECK_THROWS_WITH(Json("\xC0\x80").dump(), Catch::Contains("not valid UTF-8"));      // overlong
    CHECK_THROWS_WITH(Json("\xED\xA0\x80").dump(), Catch::Contains("not valid UTF-8"));  // surrogate
    CHECK_THROWS_WITH(Json("\xF4\x90\x80\x80").dump(), Catch::Contains("not valid UTF-8"));  // > U+10FFFF
    CHECK_THROWS_WITH(Json("\xE2\x82").dump(), Catch::Contains("not valid UTF-8"));      // truncated
    // Keys are strings too.
    Json bad_key;
    bad_key["\xFE"] = 1;
    CHECK_THROWS_WITH(bad_key.dump(), Catch::Contains("not valid UTF-8"));
}

TEST_CASE("json: round trips keep values and key order", "[io]") {
    Json row;
    row["step"] = 100;
    row["loss"] = 2.25f;
    row["lr"] = 3e-4;
    row["name"] = "run \"a\"";
    row["ok"] = true;
    row["none"] = nullptr;
    row["shape"] = Json(Json::Array{2, 3});
    row["zebra"] = Json::object();
    row["apple"] = Json::array();
    const std::string text =
        R"({"step":100,"loss":2.25,"lr":0.0003,"name":"run \"a\"","ok":true,"none":null,)"
        R"("shape":[2,3],"zebra":{},"apple":[]})";
    CHECK(row.dump() == text);
    const Json back = Json::parse(text);
    CHECK(back == row);
    CHECK(back.dump() == text);
    // Insertion order, not sorted order.
    REQUIRE(back.as_object().size() == 9);
    CHECK(back.as_object()[7].first == "zebra");
    CHECK(back.as_object()[8].first == "apple");

    // Whitespace is accepted on input and never produced on output.
    CHECK(Json::parse(" [ 1 , { \"a\" : [ ] } ] ").dump() == R"([1,{"a":[]}])");
    // Assignment through operator[] replaces a value and keeps its place.
    row["step"] = 101;
    CHECK(row.as_object()[0].first == "step");
    CHECK(row.at("step").as_int() == 101);
    CHECK(row.size() == 9);
    // Numbers compare by value across integer and double.
    CHECK(Json(2) == Json(2.0));
    CHECK(Json(2) != Json(2.5));
    CHECK(Json("2") != Json(2));
}

TEST_CASE("json: access helpers and type errors", "[io]") {
    Json list;
    list.push_back(1);
    list.push_back("two");
    CHECK(list.is_array());
    CHECK(list.dump() == R"([1,"two"])");
    CHECK(list[1].as_string() == "two");
    CHECK_THROWS_WITH(list.at(2), Catch::Contains("[json] index 2 out of range for an array of 2"));
    CHECK_THROWS_WITH(list[5], Catch::Contains("[json] index 5 out of range"));

    Json obj = Json::parse(R"({"a":1})");
    CHECK(obj.contains("a"));
    CHECK_FALSE(obj.contains("b"));
    CHECK(obj.find("b") == nullptr);
    CHECK_THROWS_WITH(obj.at("b"), Catch::Contains("[json] no key \"b\""));
    const Json& const_obj = obj;
    CHECK_THROWS_WITH(const_obj["b"], Catch::Contains("[json] no key \"b\""));
    CHECK_FALSE(Json(3).contains("a"));

    CHECK_THROWS_WITH(obj.at("a").as_string(), Catch::Contains("[json] expected string, got number"));
    CHECK_THROWS_WITH(Json("x").as_double(), Catch::Contains("[json] expected number, got string"));
    CHECK_THROWS_WITH(Json().as_bool(), Catch::Contains("[json] expected bool, got null"));
    CHECK_THROWS_WITH(obj.as_array(), Catch::Contains("[json] expected array, got object"));
    CHECK_THROWS_WITH(list["key"], Catch::Contains("[json] expected object, got array"));
    CHECK_THROWS_WITH(obj.push_back(1), Catch::Contains("[json] expected array, got object"));
}

TEST_CASE("json: the strict parser rejects malformed text with the byte offset", "[io]") {
    struct Case {
        std::string text;
        std::string message;
    };
    const std::vector<Case> cases = {
        {"", "expected a value, found end of input at byte 0"},
        {"   ", "expected a value, found end of input at byte 3"},
        {"[1,]", "expected a value, found character ']' at byte 3"},
        {R"({"a":1,})", "expected a string key in the object, found character '}' at byte 7"},
        {"{a:1}", "expected a string key in the object, found character 'a' at byte 1"},
        {R"({"a" 1})", "expected ':' after an object key, found character '1' at byte 5"},
        {"[1 2]", "expected ']' or ',' in the array, found character '2' at byte 3"},
        {R"({"a":1 "b":2})", "expected '}' or ',' in the object, found character '\"' at byte 7"},
        {"[1", "expected ']' or ',' in the array, found end of input at byte 2"},
        {"01", "leading zero in a number at byte 0"},
        {"-012", "leading zero in a number at byte 0"},
        {"1.", "expected a digit after the decimal point, found end of input at byte 2"},
        {"1.e5", "expected a digit after the decimal point, found character 'e' at byte 2"},
        {"1e", "expected a digit in the exponent, found end of input at byte 2"},
        {"-", "expected a digit, found end of input at byte 1"},
        {"+1", "expected a value, found character '+' at byte 0"},
        {".5", "expected a value, found character '.' at byte 0"},
        {"1e400", "number 1e400 is out of the range of a double at byte 0"},
        {"NaN", "expected a value, found character 'N' at byte 0"},
        {"tru", "invalid literal (expected true) at byte 0"},
        {"nul", "invalid literal (expected null) at byte 0"},
        {"1 2", "unexpected character '2' after the JSON value at byte 2"},
        {"{} x", "unexpected character 'x' after the JSON value at byte 3"},
        {"[1] // comment", "unexpected character '/' after the JSON value at byte 4"},
        {"\"abc", "unterminated string at byte 4"},
        {"\"a\nb\"", "raw control character byte 0x0a in a string (escape it) at byte 2"},
        {R"("\x")", "invalid escape '\\x' in a string at byte 1"},
        {R"("\u12G4")", "invalid hex digit in \\u escape: character 'G' at byte 5"},
        {R"("\u12")", "invalid hex digit in \\u escape: character '\"' at byte 5"},
        {R"("ab\ud800")", "high surrogate \\u escape without its low half at byte 3"},
        {R"("\ud800\u0041")", "high surrogate \\u escape without its low half at byte 1"},
        {R"("\udc00")", "lone low surrogate \\u escape at byte 1"},
        {"\"\xFF\"", "invalid UTF-8 in a string at byte 1"},
        {"\"\xC3\"", "invalid UTF-8 in a string at byte 1"},
        {"\xEF\xBB\xBF{}", "expected a value, found byte 0xef at byte 0"},  // no BOM
        {R"({"a":1,"b":{},"a":2})", "duplicate key \"a\" in the object starting at byte 0"},
        {"[{\"k\":1,\"k\":1}]", "duplicate key \"k\" in the object starting at byte 1"},
        {std::string(600, '['), "nesting deeper than 512 levels at byte 512"},
    };
    for (const Case& c : cases) {
        INFO("input: " << c.text.substr(0, 40));
        CHECK_THROWS_WITH(Json::parse(c.text), Catch::Contains("[json] " + c.message));
    }
    // Nesting up to the limit is fine.
    const std::string deep = std::string(512, '[') + std::string(512, ']');
    CHECK(Json::parse(deep).dump() == deep);
}

// ============================================================================================
// Files and safetensors
// ============================================================================================

TEST_CASE("safetensors: read_file and write_file_atomic round trip binary bytes", "[io]") {
    TempDir dir;
    const std::string path = dir.file("blob.bin");
    std::string bytes;
    for (int i = 0; i < 256; ++i) bytes += static_cast<char>(i);
    bytes += "\r\n\0\r";  // no newline translation
    seemoe::io::write_file_atomic(path, bytes);
    CHECK(seemoe::io::read_file(path) == bytes);
    CHECK_FALSE(fs::exists(path + ".tmp"));
    seemoe::io::write_file_atomic(path, "");
    CHECK(seemoe::io::read_file(path).empty());
    CHECK_THROWS_WITH(seemoe::io::read_file(dir.file("missing.bin")),
                      Catch::Contains("[read_file] cannot open") && Catch::Contains("missing.bin") &&
                          Catch::Contains("No such file"));
}

TEST_CASE("safetensors: save then load is bitwise identical, with metadata", "[io]") {
    TempDir dir;
    const std::string path = dir.file("model.safetensors");
    Rng rng(7);
    Tensorf weight = Tensorf::randn({3, 4}, rng);                             // (3, 4)
    Tensorf bias = Tensorf::randn({5}, rng);                                  // (5,)
    Tensorf scalar = Tensorf::scalar(-1.25f);                                 // ()
    Tensorf empty = Tensorf::zeros({0, 3});                                   // (0, 3)
    Tensorf odd = Tensorf::from_vector({2, 3}, {-0.0f, std::numeric_limits<float>::infinity(),
                                                std::numeric_limits<float>::denorm_min(),
                                                std::numeric_limits<float>::quiet_NaN(),
                                                std::numeric_limits<float>::max(), 1e-30f});  // (2, 3)
    // A NaN with a payload: only a byte copy keeps it.
    const std::uint32_t payload_nan = 0x7FC01234u;
    std::memcpy(odd.data() + 3, &payload_nan, 4);
    weight.requires_grad_();  // saved as plain values; the loaded tensor is a fresh leaf

    // Names in non-sorted order, with dots and unicode; metadata with characters JSON escapes.
    const std::vector<std::pair<std::string, Tensorf>> tensors = {
        {"decoder.blocks.0.fc.weight", weight}, {"bias", bias}, {"scalar", scalar},
        {"empty", empty}, {"odd \xC3\xA9", odd}};
    const std::map<std::string, std::string> metadata = {
        {"config", R"({"n_embd": 64, "name": "see\"moe"})"},
        {"vocab", bytes_of("\n\t ab\"\\\x01\xE2\x82\xAC")},
        {"empty", ""}};
    seemoe::io::save_safetensors(path, tensors, metadata);

    const seemoe::io::SafetensorsFile file = seemoe::io::load_safetensors(path);
    CHECK(file.path == path);
    CHECK(file.metadata == metadata);
    REQUIRE(file.tensors.size() == tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
        INFO("tensor " << tensors[i].first);
        CHECK(file.tensors[i].first == tensors[i].first);  // order kept
        CHECK(same_bits(file.tensors[i].second, tensors[i].second));
        CHECK_FALSE(file.tensors[i].second.requires_grad());
    }
    // The loaded tensors own their values.
    CHECK_FALSE(file.at("bias").storage() == bias.storage());

    // Without metadata there is no __metadata__ key; saving twice replaces the file.
    seemoe::io::save_safetensors(path, {{"only", bias}});
    const auto again = seemoe::io::load_safetensors(path);
    CHECK(again.metadata.empty());
    REQUIRE(again.tensors.size() == 1);
    CHECK(same_bits(again.at("only"), bias));
    CHECK(seemoe::io::read_file(path).find("__metadata__") == std::string::npos);
    CHECK_FALSE(fs::exists(path + ".tmp"));

    // Doubles are written as F64 and read back exactly, or converted to float on request.
    Tensord precise = Tensord::from_vector({3}, {0.1, 1.0 / 3.0, -1e300});  // (3,)
    seemoe::io::save_safetensors(path, {{"p", precise}});
    CHECK(seemoe::io::read_file(path).find("\"dtype\":\"F64\"") != std::string::npos);
    const auto as_double = seemoe::io::load_safetensors<double>(path);
    CHECK(as_double.at("p").to_vector() == precise.to_vector());
    const auto as_float = seemoe::io::load_safetensors(path);
    CHECK(as_float.at("p").to_vector() ==
          std::vector<float>{0.1f, static_cast<float>(1.0 / 3.0), -std::numeric_limits<float>::infinity()});
}

TEST_CASE("safetensors: the file written for a tiny tensor has the exact expected bytes", "[io]") {
    TempDir dir;
    const std::string path = dir.file("tiny.safetensors");
    seemoe::io::save_safetensors(path, {{"w", Tensorf::from_vector({2}, {1.0f, -2.0f})}});
    // 54 bytes of JSON + 2 spaces = 56 = 0x38, a multiple of 8; then 1.0f and -2.0f little-endian.
    const std::string expected = bytes_of(
        "\x38\0\0\0\0\0\0\0"
        R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})"
        "  "
        "\x00\x00\x80\x3f"
        "\x00\x00\x00\xc0");
    CHECK(seemoe::io::read_file(path) == expected);

    // With metadata: __metadata__ comes first; 87 bytes of JSON + 1 space = 88 = 0x58.
    seemoe::io::save_safetensors(path, {{"x", Tensorf::from_vector({2, 1}, {1.5f, -0.25f})}},
                                 {{"format", "pt"}});
    const std::string expected_with_metadata = bytes_of(
        "\x58\0\0\0\0\0\0\0"
        R"({"__metadata__":{"format":"pt"},"x":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}})"
        " "
        "\x00\x00\xc0\x3f"
        "\x00\x00\x80\xbe");
    CHECK(seemoe::io::read_file(path) == expected_with_metadata);
}

TEST_CASE("safetensors: a hand-built file parses to the expected tensors", "[io]") {
    TempDir dir;
    const std::string path = dir.file("hand.safetensors");
    // Header length 0x90 = 144 (143 bytes of JSON + 1 space); two F32 tensors; data is 1.5, -0.25
    // | 2.0 little-endian. Other writers may lay the JSON out differently: spaces, another key
    // order, metadata last.
    const std::string header =
        R"({"b": {"data_offsets": [8, 12], "shape": [], "dtype": "F32"},)"
        R"( "a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}, "__metadata__":{"k":"v"}} )";
    REQUIRE(header.size() == 0x90);
    const std::string bytes = bytes_of(
        "\x90\0\0\0\0\0\0\0"
        R"({"b": {"data_offsets": [8, 12], "shape": [], "dtype": "F32"},)"
        R"( "a":{"dtype":"F32","shape":[2,1],"data_offsets":[0,8]}, "__metadata__":{"k":"v"}} )"
        "\x00\x00\xc0\x3f\x00\x00\x80\xbe"
        "\x00\x00\x00\x40");
    seemoe::io::write_file_atomic(path, bytes);
    const auto file = seemoe::io::load_safetensors(path);
    REQUIRE(file.tensors.size() == 2);
    CHECK(file.tensors[0].first == "b");  // header order
    CHECK(file.tensors[1].first == "a");
    CHECK(file.at("a").shape() == seemoe::Shape{2, 1});
    CHECK(file.at("a").to_vector() == std::vector<float>{1.5f, -0.25f});
    CHECK(file.at("b").shape() == seemoe::Shape{});
    CHECK(file.at("b").item() == 2.0f);
    CHECK(file.metadata == std::map<std::string, std::string>{{"k", "v"}});
}

TEST_CASE("safetensors: other dtypes are converted on load", "[io]") {
    TempDir dir;
    const std::string path = dir.file("dtypes.safetensors");
    const std::string header =
        R"({"f64":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},)"
        R"("i64":{"dtype":"I64","shape":[2],"data_offsets":[8,24]},)"
        R"("f16":{"dtype":"F16","shape":[3],"data_offsets":[24,30]},)"
        R"("bf16":{"dtype":"BF16","shape":[1],"data_offsets":[30,32]},)"
        R"("i32":{"dtype":"I32","shape":[1],"data_offsets":[32,36]},)"
        R"("u8":{"dtype":"U8","shape":[2],"data_offsets":[36,38]},)"
        R"("bool":{"dtype":"BOOL","shape":[2],"data_offsets":[38,40]},)"
        R"("i8":{"dtype":"I8","shape":[1],"data_offsets":[40,41]}})";
    const std::string data = bytes_of(
        "\x9a\x99\x99\x99\x99\x99\xb9\x3f"                   // F64 0.1
        "\xfd\xff\xff\xff\xff\xff\xff\xff\x07\0\0\0\0\0\0\0"  // I64 -3, 7
        "\x00\xbe\x01\x00\x00\x7c"                           // F16 -1.5, 2^-24 (subnormal), +inf
        "\xc0\x3f"                                           // BF16 1.5
        "\x00\x00\x01\x00"                                   // I32 65536
        "\xff\x00"                                           // U8 255, 0
        "\x01\x00"                                           // BOOL true, false
        "\x80");                                             // I8 -128
    seemoe::io::write_file_atomic(path, safetensors_bytes(header, data));
    const auto file = seemoe::io::load_safetensors(path);
    CHECK(file.at("f64").item() == 0.1f);
    CHECK(file.at("i64").to_vector() == std::vector<float>{-3.0f, 7.0f});
    CHECK(file.at("f16").to_vector() ==
          std::vector<float>{-1.5f, std::ldexp(1.0f, -24), std::numeric_limits<float>::infinity()});
    CHECK(file.at("bf16").item() == 1.5f);
    CHECK(file.at("i32").item() == 65536.0f);
    CHECK(file.at("u8").to_vector() == std::vector<float>{255.0f, 0.0f});
    CHECK(file.at("bool").to_vector() == std::vector<float>{1.0f, 0.0f});
    CHECK(file.at("i8").item() == -128.0f);
    // F64 into double is exact.
    CHECK(seemoe::io::load_safetensors<double>(path).at("f64").item() == 0.1);
    // F16 NaN stays NaN.
    CHECK(std::isnan(seemoe::io::detail::half_to_float(0x7E00)));
    CHECK(seemoe::io::detail::half_to_float(0x3C00) == 1.0f);
    CHECK(seemoe::io::detail::half_to_float(0x7BFF) == 65504.0f);
}

TEST_CASE("safetensors: lookup by name", "[io]") {
    TempDir dir;
    const std::string path = dir.file("lookup.safetensors");
    seemoe::io::save_safetensors(path, {{"a", Tensorf::ones({2})}, {"b", Tensorf::zeros({1})}});
    const auto file = seemoe::io::load_safetensors(path);
    CHECK(file.contains("a"));
    CHECK_FALSE(file.contains("c"));
    CHECK(file.find("c") == nullptr);
    CHECK(file.find("b")->shape() == seemoe::Shape{1});
    CHECK_THROWS_WITH(file.at("c"), Catch::Contains("[safetensors] no tensor named 'c'") &&
                                        Catch::Contains("lookup.safetensors") &&
                                        Catch::Contains("holds 2 tensors"));
}

TEST_CASE("safetensors: corrupt files throw an Error naming the file and the problem", "[io]") {
    TempDir dir;
    const std::string path = dir.file("bad.safetensors");
    const auto load_bytes = [&](const std::string& bytes) {
        seemoe::io::write_file_atomic(path, bytes);
        return seemoe::io::load_safetensors(path);
    };
    const std::string good_header = R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
    const std::string good_data(8, '\0');
    REQUIRE_NOTHROW(load_bytes(safetensors_bytes(good_header, good_data)));
    const auto names_file = Catch::Contains("[safetensors] '" + path + "'");

    SECTION("missing file") {
        CHECK_THROWS_WITH(seemoe::io::load_safetensors(dir.file("nope.safetensors")),
                          Catch::Contains("cannot open '") && Catch::Contains("nope.safetensors'"));
    }
    SECTION("file too short") {
        CHECK_THROWS_WITH(load_bytes(bytes_of("\x10\0\0\0")),
                          names_file && Catch::Contains("file too short (4 bytes)"));
        CHECK_THROWS_WITH(load_bytes(""), Catch::Contains("file too short (0 bytes)"));
    }
    SECTION("header length beyond the file") {
        std::string bytes = safetensors_bytes(good_header, good_data);
        bytes[0] = static_cast<char>(0xF0);  // claims 240 header bytes; the file has 70
        CHECK_THROWS_WITH(load_bytes(bytes),
                          names_file && Catch::Contains("header length 240 runs past the end of the 70-byte file"));
        bytes[0] = 0;
        bytes[7] = 1;  // 2^56: absurd
        CHECK_THROWS_WITH(load_bytes(bytes), Catch::Contains("runs past the end"));
    }
    SECTION("truncated data") {
        const std::string bytes = safetensors_bytes(good_header, good_data);
        CHECK_THROWS_WITH(load_bytes(bytes.substr(0, bytes.size() - 3)),
                          names_file && Catch::Contains("tensor 'x'") &&
                              Catch::Contains("past the end of the 5-byte data section"));
    }
    SECTION("header is not JSON") {
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32",})", "")),
                          names_file && Catch::Contains("not valid JSON") &&
                              Catch::Contains("[json] expected a string key") &&
                              Catch::Contains("at byte 20"));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes("[1,2]   ", "")),
                          Catch::Contains("does not start with '{'"));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes("", "")),
                          Catch::Contains("does not start with '{'"));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(R"({"x":1,"x":2})", "")),
                          Catch::Contains("duplicate key \"x\""));
    }
    SECTION("unknown or unsupported dtype") {
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", good_data)),
            names_file && Catch::Contains("tensor 'x' has an unknown dtype \"F99\""));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", std::string(2, '\0'))),
            Catch::Contains("tensor 'x' has dtype F8_E4M3, which seemoe cannot convert"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("tensor 'x' has a dtype that is not a string"));
    }
    SECTION("offsets that do not match shape and dtype") {
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, '\0'))),
            names_file && Catch::Contains("tensor 'x' has data_offsets [0,4] spanning 4 bytes, "
                                          "but dtype F32 and shape (2,) need 8 bytes"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F64","shape":[2],"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("dtype F64 and shape (2,) need 16 bytes"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", good_data)),
            Catch::Contains("tensor 'x' has data_offsets [8,0]; expected [begin, end]"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", good_data)),
            Catch::Contains("tensor 'x' has data_offsets [0]; expected"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("tensor 'x' has an impossibly large shape"));
    }
    SECTION("bad shapes and fields") {
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("tensor 'x' has a shape entry that is not a non-negative integer: -2"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("not a non-negative integer"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", good_data)),
            Catch::Contains("tensor 'x' has a shape that is not an array"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","data_offsets":[0,8]}})", good_data)),
            Catch::Contains("tensor 'x' needs the fields"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"x":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"extra":1}})", good_data)),
            Catch::Contains("tensor 'x' has an unexpected field \"extra\""));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(R"({"x":[1,2]})", "")),
                          Catch::Contains("tensor 'x' must be described by a JSON object, got array"));
    }
    SECTION("metadata that is not strings") {
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(R"({"__metadata__":{"step":5}})", "")),
                          names_file && Catch::Contains("__metadata__ entry 'step' must be a string, got number"));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(R"({"__metadata__":"x"})", "")),
                          Catch::Contains("__metadata__ must be an object of strings"));
    }
    SECTION("overlaps, gaps and trailing bytes") {
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", good_data)),
            names_file && Catch::Contains("tensors 'a' and 'b' overlap"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                                         R"("b":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0'))),
            Catch::Contains("tensors 'a' and 'b' overlap"));
        CHECK_THROWS_WITH(
            load_bytes(safetensors_bytes(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", good_data)),
            Catch::Contains("bytes 0 to 4 of the data section belong to no tensor (before tensor 'a')"));
        CHECK_THROWS_WITH(load_bytes(safetensors_bytes(good_header, good_data + "junk")),
                          Catch::Contains("the last 4 bytes of the data section belong to no tensor"));
    }
}

TEST_CASE("safetensors: empty files and zero-size tensors are valid", "[io]") {
    TempDir dir;
    const std::string path = dir.file("empty.safetensors");
    seemoe::io::save_safetensors(path, std::vector<std::pair<std::string, Tensorf>>{});
    CHECK(seemoe::io::read_file(path) == bytes_of("\x08\0\0\0\0\0\0\0{}      "));
    CHECK(seemoe::io::load_safetensors(path).tensors.empty());
    // A zero-size tensor may sit at the same offset as its neighbour.
    seemoe::io::save_safetensors(path, {{"none", Tensorf::zeros({3, 0})}, {"one", Tensorf::ones({1})}});
    const auto file = seemoe::io::load_safetensors(path);
    CHECK(file.at("none").shape() == seemoe::Shape{3, 0});
    CHECK(file.at("one").item() == 1.0f);
}

TEST_CASE("safetensors: bad input to save throws and writes nothing", "[io]") {
    TempDir dir;
    const std::string path = dir.file("never.safetensors");
    const Tensorf t = Tensorf::ones({2});
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(path, {{"a", t}, {"b", t}, {"a", t}}),
                      Catch::Contains("[safetensors] cannot save") && Catch::Contains("never.safetensors") &&
                          Catch::Contains("tensor name 'a' appears twice"));
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(path, {{"__metadata__", t}}),
                      Catch::Contains("'__metadata__' is reserved"));
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(path, {{"u", Tensorf()}}),
                      Catch::Contains("tensor 'u' is undefined"));
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(path, {{"a", t}}, {{"vocab", "\xFF"}}),
                      Catch::Contains("not valid UTF-8"));
    CHECK(fs::is_empty(dir.path));
}

TEST_CASE("safetensors: writes are atomic and leave no temp file behind", "[io]") {
    TempDir dir;
    const std::string path = dir.file("ckpt.safetensors");
    const Tensorf old_values = Tensorf::full({4}, 3.0f);
    seemoe::io::save_safetensors(path, {{"w", old_values}});
    CHECK_FALSE(fs::exists(path + ".tmp"));
    const std::string old_bytes = seemoe::io::read_file(path);

    // A write that fails half-way removes its temp file and leaves the old file untouched.
    CHECK_THROWS_WITH(seemoe::io::detail::write_atomically(path, "[test]",
                                                           [](std::ostream& out) {
                                                               out << "partial";
                                                               throw Error("[test] disk on fire");
                                                           }),
                      Catch::Contains("disk on fire"));
    CHECK_FALSE(fs::exists(path + ".tmp"));
    CHECK(seemoe::io::read_file(path) == old_bytes);

    // Renaming over a directory fails: Error naming both paths, temp file removed.
    const std::string dir_target = dir.file("a_directory");
    fs::create_directory(dir_target);
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(dir_target, {{"w", old_values}}),
                      Catch::Contains("[safetensors] cannot rename") && Catch::Contains("a_directory.tmp"));
    CHECK_FALSE(fs::exists(dir_target + ".tmp"));

    // A folder that does not exist: the temp file cannot be created.
    CHECK_THROWS_WITH(seemoe::io::save_safetensors(dir.file("no/such/dir/x.safetensors"), {{"w", old_values}}),
                      Catch::Contains("[safetensors] cannot create") &&
                          Catch::Contains("x.safetensors.tmp"));

    // The directory holds exactly the checkpoint and the folder we made: nothing stray.
    std::vector<std::string> names;
    for (const auto& entry : fs::directory_iterator(dir.path)) names.push_back(entry.path().filename().string());
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"a_directory", "ckpt.safetensors"});
}
