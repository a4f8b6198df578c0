// seemoe/io/json.hpp — a small JSON value with a strict parser and a compact writer.
//
// Enough JSON for what seemoe reads and writes: safetensors headers, the model config and
// vocabulary stored in checkpoint metadata, and metrics.jsonl lines. A Json is null, a bool, a
// number, a string, an array or an object; objects keep their keys in insertion order, so what
// you write is what you read back. Numbers are written in the shortest form that reads back
// exactly, laid out like Python's repr ("0.1", "2.0", "1e-05"); integers without a ".0".
//
//   Json row;                          // null; operator[] on null makes it an object
//   row["step"] = 100;                 // integers are kept exactly (int64)
//   row["loss"] = 2.5f;                // a float is written in its shortest form ("2.5")
//   std::string line = row.dump();     // {"step":100,"loss":2.5}
//   Json back = Json::parse(line);     // back["step"].as_int() == 100
//
// Convention: strings are UTF-8 bytes. The writer passes UTF-8 through, escapes '"', '\' and
// control characters (\n, \u001f, ...), and throws on invalid UTF-8; NaN and infinities have no
// JSON form and are written as null (as JavaScript does). The parser is strict: the RFC 8259
// grammar only (no comments, trailing commas, NaN or leading zeros), valid UTF-8, no lone
// surrogates, no duplicate keys; its Error names the byte offset:
// "[json] expected ':' after an object key, found character '1' at byte 5".
#pragma once

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <locale>
#include <sstream>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

#include "../core/common.hpp"
#include "../core/utf8.hpp"

namespace seemoe::io {

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };
    using Array = std::vector<Json>;
    using Object = std::vector<std::pair<std::string, Json>>;  // insertion order

    Json() = default;  // null
    Json(std::nullptr_t) {}
    Json(bool value) : value_(value) {}
    Json(double value) : value_(value) {}
    // Stored as the double nearest to the float's shortest decimal form, so 0.1f is written
    // "0.1" rather than "0.10000000149011612"; converting back to float gives the same float.
    Json(float value) : value_(float_as_short_double(value)) {}
    template <typename Int, std::enable_if_t<std::is_integral<Int>::value &&
                                                 !std::is_same<Int, bool>::value, int> = 0>
    Json(Int value) {
        if constexpr (std::is_unsigned<Int>::value) {
            if (static_cast<std::uint64_t>(value) >
                static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) {
                value_ = static_cast<double>(value);  // beyond int64: the nearest double
                return;
            }
        }
        value_ = static_cast<std::int64_t>(value);
    }
    Json(const char* value) : value_(std::string(value)) {}
    Json(std::string value) : value_(std::move(value)) {}
    Json(Array value) : value_(std::move(value)) {}
    Json(Object value) : value_(std::move(value)) {}

    static Json array() { return Json(Array{}); }
    static Json object() { return Json(Object{}); }

    // ---- type ------------------------------------------------------------------------------
    Type type() const {
        switch (value_.index()) {
            case 0: return Type::Null;
            case 1: return Type::Bool;
            case 2: case 3: return Type::Number;
            case 4: return Type::String;
            case 5: return Type::Array;
            default: return Type::Object;
        }
    }
    bool is_null() const { return type() == Type::Null; }
    bool is_bool() const { return type() == Type::Bool; }
    bool is_number() const { return type() == Type::Number; }
    // An integer literal that fits in int64 (or a value built from an integer type).
    bool is_integer() const { return std::holds_alternative<std::int64_t>(value_); }
    bool is_string() const { return type() == Type::String; }
    bool is_array() const { return type() == Type::Array; }
    bool is_object() const { return type() == Type::Object; }
    static const char* type_name(Type type) {
        switch (type) {
            case Type::Null: return "null";
            case Type::Bool: return "bool";
            case Type::Number: return "number";
            case Type::String: return "string";
            case Type::Array: return "array";
            default: return "object";
        }
    }

    // ---- values (each throws seemoe::Error on the wrong type) ------------------------------
    bool as_bool() const { return get<bool>(Type::Bool); }
    double as_double() const {
        if (const auto* i = std::get_if<std::int64_t>(&value_)) return static_cast<double>(*i);
        return get<double>(Type::Number);
    }
    // Any number whose value is an integer in int64 range (so 1e3 gives 1000, 2.5 throws).
    std::int64_t as_int() const {
        if (const auto* i = std::get_if<std::int64_t>(&value_)) return *i;
        const double d = get<double>(Type::Number);
        // 2^63 is exactly representable; every double below it in magnitude fits in int64.
        SEEMOE_CHECK(std::trunc(d) == d && d >= -0x1p63 && d < 0x1p63, "[json] number ",
                     number_text(d), " is not an integer in int64 range");
        return static_cast<std::int64_t>(d);
    }
    const std::string& as_string() const { return get<std::string>(Type::String); }
    const Array& as_array() const { return get<Array>(Type::Array); }
    Array& as_array() { return get<Array>(Type::Array); }
    const Object& as_object() const { return get<Object>(Type::Object); }
    Object& as_object() { return get<Object>(Type::Object); }

    // Elements of an array or members of an object (0 for anything else).
    std::size_t size() const {
        if (const auto* a = std::get_if<Array>(&value_)) return a->size();
        if (const auto* o = std::get_if<Object>(&value_)) return o->size();
        return 0;
    }

    // ---- arrays ----------------------------------------------------------------------------
    const Json& at(std::size_t i) const {
        const Array& a = as_array();
        SEEMOE_CHECK(i < a.size(), "[json] index ", i, " out of range for an array of ", a.size());
        return a[i];
    }
    Json& at(std::size_t i) { return const_cast<Json&>(std::as_const(*this).at(i)); }
    // Bounds-checked like at(); also keeps j[0] from being read as a null key pointer.
    const Json& operator[](std::size_t i) const { return at(i); }
    Json& operator[](std::size_t i) { return at(i); }
    // A null value becomes an empty array first, so `Json list; list.push_back(1);` works.
    void push_back(Json value) {
        if (is_null()) value_ = Array{};
        as_array().push_back(std::move(value));
    }

    // ---- objects (lookups are linear: objects here are small) -------------------------------
    const Json* find(std::string_view key) const {
        for (const auto& member : as_object())
            if (member.first == key) return &member.second;
        return nullptr;
    }
    Json* find(std::string_view key) { return const_cast<Json*>(std::as_const(*this).find(key)); }
    bool contains(std::string_view key) const { return is_object() && find(key) != nullptr; }
    const Json& at(std::string_view key) const {
        const Json* found = find(key);
        SEEMOE_CHECK(found, "[json] no key \"", key, "\" in the object");
        return *found;
    }
    Json& at(std::string_view key) { return const_cast<Json&>(std::as_const(*this).at(key)); }
    // The member named `key`, appended as null if missing; a null value becomes an object first.
    Json& operator[](std::string_view key) {
        if (is_null()) value_ = Object{};
        if (Json* found = find(key)) return *found;
        Object& members = as_object();
        members.emplace_back(std::string(key), Json());
        return members.back().second;
    }
    const Json& operator[](std::string_view key) const { return at(key); }

    // ---- text ------------------------------------------------------------------------------
    // Compact JSON (no spaces, no newline).
    std::string dump() const {
        std::string out;
        dump_to(out);
        return out;
    }
    void dump_to(std::string& out) const;
    // Parses one JSON value; surrounding whitespace is allowed, anything else after it is not.
    static Json parse(std::string_view text);

    // Numbers compare by value (an integer equals the double with the same value).
    friend bool operator==(const Json& a, const Json& b) {
        if (a.is_number() && b.is_number()) {
            if (a.is_integer() && b.is_integer()) return a.as_int() == b.as_int();
            return a.as_double() == b.as_double();
        }
        return a.value_ == b.value_;
    }
    friend bool operator!=(const Json& a, const Json& b) { return !(a == b); }

    // Shortest decimal text that reads back as exactly `value` ("0.1", "2.0", "1e+21").
    static std::string number_text(double value);

private:
    template <typename V>
    const V& get(Type expected) const {
        const V* v = std::get_if<V>(&value_);
        SEEMOE_CHECK(v, "[json] expected ", type_name(expected), ", got ", type_name(type()));
        return *v;
    }
    template <typename V>
    V& get(Type expected) {
        return const_cast<V&>(std::as_const(*this).template get<V>(expected));
    }
    static double float_as_short_double(float value);

    // Integers and doubles are separate alternatives so integers survive a round trip exactly.
    std::variant<std::nullptr_t, bool, std::int64_t, double, std::string, Array, Object> value_;
};

namespace detail {

inline void append_json_string(std::string& out, std::string_view text) {
    static const char hex[] = "0123456789abcdef";
    out += '"';
    std::size_t pos = 0;
    while (pos < text.size()) {
        const unsigned char c = static_cast<unsigned char>(text[pos]);
        if (c >= 0x80) {
            const std::size_t length = seemoe::detail::utf8_sequence_length(text, pos);
            SEEMOE_CHECK(length > 0, "[json] cannot write a string that is not valid UTF-8 "
                         "(bad byte at offset ", pos, " of a ", text.size(), "-byte string)");
            out.append(text.data() + pos, length);
            pos += length;
            continue;
        }
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 0xF];
                } else {
                    out += static_cast<char>(c);
                }
        }
        ++pos;
    }
    out += '"';
}

// Decimal text -> double without depending on the C locale (a German locale would otherwise
// expect "2,5"). `text` is already known to match the JSON number grammar.
inline bool parse_double(std::string_view text, double& value) {
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
    const auto result = std::from_chars(text.data(), text.data() + text.size(), value);
    return result.ec == std::errc() && result.ptr == text.data() + text.size();
#else
    std::istringstream in{std::string(text)};
    in.imbue(std::locale::classic());
    in >> value;
    return !in.fail() && std::isfinite(value);
#endif
}

// The shortest scientific text that reads back as exactly `value`: "-1.2345e+02", "5e-324".
template <typename Float>
std::string shortest_scientific(Float value) {
#if defined(__cpp_lib_to_chars) && __cpp_lib_to_chars >= 201611L
    char buffer[64];
    const auto result =
        std::to_chars(buffer, buffer + sizeof(buffer), value, std::chars_format::scientific);
    return std::string(buffer, result.ptr);
#else
    std::string text;
    for (int precision = 0; precision < std::numeric_limits<Float>::max_digits10; ++precision) {
        std::ostringstream out;
        out.imbue(std::locale::classic());
        out << std::scientific;
        out.precision(precision);
        out << value;
        text = out.str();
        std::istringstream in(text);
        in.imbue(std::locale::classic());
        Float back{};
        in >> back;  // on overflow this stores the largest finite value and sets failbit
        if (!in.fail() && back == value) break;
    }
    return text;
#endif
}

// Shortest round-trip text of a finite number, laid out as Python's repr lays it out: plain
// decimals for exponents -4..15 ("0.0003", "2.0", "-0.0"), scientific otherwise ("1e+16",
// "1e-05"). Integral values keep a ".0" so they read back as doubles, not integers.
template <typename Float>
std::string shortest_float_text(Float value) {
    const std::string scientific = shortest_scientific(value);
    const bool negative = scientific[0] == '-';
    const std::size_t e_pos = scientific.find('e');
    std::string digits;
    for (std::size_t i = negative ? 1 : 0; i < e_pos; ++i)
        if (scientific[i] != '.') digits += scientific[i];
    const int exponent = std::stoi(scientific.substr(e_pos + 1));

    std::string out = negative ? "-" : "";
    if (exponent >= -4 && exponent < 16) {
        if (exponent < 0) {
            out += "0." + std::string(static_cast<std::size_t>(-exponent - 1), '0') + digits;
        } else {
            const auto int_digits = static_cast<std::size_t>(exponent) + 1;
            if (digits.size() < int_digits) digits.append(int_digits - digits.size(), '0');
            const std::string fraction = digits.substr(int_digits);
            out += digits.substr(0, int_digits) + "." + (fraction.empty() ? "0" : fraction);
        }
    } else {
        out += digits.substr(0, 1);
        if (digits.size() > 1) out += "." + digits.substr(1);
        const int magnitude = exponent < 0 ? -exponent : exponent;
        out += exponent < 0 ? "e-" : "e+";
        if (magnitude < 10) out += '0';
        out += std::to_string(magnitude);
    }
    return out;
}

class JsonParser {
public:
    explicit JsonParser(std::string_view text) : text_(text) {}

    Json parse_document() {
        skip_whitespace();
        Json value = parse_value(0);
        skip_whitespace();
        if (pos_ < text_.size()) fail("unexpected ", describe(pos_), " after the JSON value");
        return value;
    }

private:
    // Deep enough for any real document; stops a hostile "[[[[..." from overflowing the stack.
    static constexpr int kMaxDepth = 512;

    template <typename... Parts>
    [[noreturn]] void fail_at(std::size_t at, const Parts&... parts) const {
        throw Error(seemoe::detail::concat("[json] ", parts..., " at byte ", at));
    }
    template <typename... Parts>
    [[noreturn]] void fail(const Parts&... parts) const {
        fail_at(pos_, parts...);
    }
    std::string describe(std::size_t at) const {
        if (at >= text_.size()) return "end of input";
        const unsigned char c = static_cast<unsigned char>(text_[at]);
        if (c >= 0x21 && c < 0x7F) return std::string("character '") + static_cast<char>(c) + "'";
        static const char hex[] = "0123456789abcdef";
        return std::string("byte 0x") + hex[c >> 4] + hex[c & 0xF];
    }

    void skip_whitespace() {
        while (pos_ < text_.size() && (text_[pos_] == ' ' || text_[pos_] == '\t' ||
                                       text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }
    bool at_char(char c) const { return pos_ < text_.size() && text_[pos_] == c; }
    void expect(char c, const char* context) {
        if (!at_char(c)) fail("expected '", c, "' ", context, ", found ", describe(pos_));
        ++pos_;
    }

    Json parse_value(int depth) {
        if (pos_ >= text_.size()) fail("expected a value, found end of input");
        switch (text_[pos_]) {
            case '{': return parse_object(depth + 1);
            case '[': return parse_array(depth + 1);
            case '"': return Json(parse_string());
            case 't': parse_literal("true"); return Json(true);
            case 'f': parse_literal("false"); return Json(false);
            case 'n': parse_literal("null"); return Json();
            default:
                if (text_[pos_] == '-' || (text_[pos_] >= '0' && text_[pos_] <= '9'))
                    return parse_number();
                fail("expected a value, found ", describe(pos_));
        }
    }

    void parse_literal(std::string_view word) {
        if (text_.substr(pos_, word.size()) != word) fail("invalid literal (expected ", word, ")");
        pos_ += word.size();
    }

    Json parse_object(int depth) {
        if (depth > kMaxDepth) fail("nesting deeper than ", kMaxDepth, " levels");
        const std::size_t start = pos_;
        ++pos_;  // '{'
        Json::Object members;
        skip_whitespace();
        if (at_char('}')) {
            ++pos_;
            return Json(std::move(members));
        }
        for (;;) {
            skip_whitespace();
            if (!at_char('"')) fail("expected a string key in the object, found ", describe(pos_));
            std::string key = parse_string();
            skip_whitespace();
            expect(':', "after an object key");
            skip_whitespace();
            members.emplace_back(std::move(key), parse_value(depth));
            skip_whitespace();
            if (at_char(',')) {
                ++pos_;
                continue;
            }
            expect('}', "or ',' in the object");
            break;
        }
        check_unique_keys(members, start);
        return Json(std::move(members));
    }

    // Sorting views of the keys finds duplicates in n log n (headers can hold thousands).
    void check_unique_keys(const Json::Object& members, std::size_t object_start) const {
        if (members.size() < 2) return;
        std::vector<std::string_view> keys;
        keys.reserve(members.size());
        for (const auto& member : members) keys.emplace_back(member.first);
        std::sort(keys.begin(), keys.end());
        const auto dup = std::adjacent_find(keys.begin(), keys.end());
        if (dup != keys.end())
            fail_at(object_start, "duplicate key \"", *dup, "\" in the object starting");
    }

    Json parse_array(int depth) {
        if (depth > kMaxDepth) fail("nesting deeper than ", kMaxDepth, " levels");
        ++pos_;  // '['
        Json::Array elements;
        skip_whitespace();
        if (at_char(']')) {
            ++pos_;
            return Json(std::move(elements));
        }
        for (;;) {
            skip_whitespace();
            elements.push_back(parse_value(depth));
            skip_whitespace();
            if (at_char(',')) {
                ++pos_;
                continue;
            }
            expect(']', "or ',' in the array");
            break;
        }
        return Json(std::move(elements));
    }

    std::uint32_t parse_hex4() {
        std::uint32_t value = 0;
        for (int i = 0; i < 4; ++i, ++pos_) {
            if (pos_ >= text_.size()) fail("unterminated \\u escape");
            const char c = text_[pos_];
            value <<= 4;
            if (c >= '0' && c <= '9') value |= static_cast<std::uint32_t>(c - '0');
            else if (c >= 'a' && c <= 'f') value |= static_cast<std::uint32_t>(c - 'a' + 10);
            else if (c >= 'A' && c <= 'F') value |= static_cast<std::uint32_t>(c - 'A' + 10);
            else fail("invalid hex digit in \\u escape: ", describe(pos_));
        }
        return value;
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        for (;;) {
            if (pos_ >= text_.size()) fail("unterminated string");
            const unsigned char c = static_cast<unsigned char>(text_[pos_]);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (c < 0x20) fail("raw control character ", describe(pos_), " in a string (escape it)");
            if (c >= 0x80) {
                const std::size_t length = seemoe::detail::utf8_sequence_length(text_, pos_);
                if (length == 0) fail("invalid UTF-8 in a string");
                out.append(text_.data() + pos_, length);
                pos_ += length;
                continue;
            }
            if (c != '\\') {
                out += static_cast<char>(c);
                ++pos_;
                continue;
            }
            const std::size_t escape_start = pos_;
            ++pos_;
            if (pos_ >= text_.size()) fail("unterminated string");
            const char e = text_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    std::uint32_t code_point = parse_hex4();
                    if (code_point >= 0xDC00 && code_point <= 0xDFFF)
                        fail_at(escape_start, "lone low surrogate \\u escape");
                    if (code_point >= 0xD800 && code_point <= 0xDBFF) {
                        // Characters beyond the BMP come as a \uD8xx\uDCxx surrogate pair.
                        if (text_.substr(pos_, 2) != "\\u")
                            fail_at(escape_start, "high surrogate \\u escape without its low half");
                        pos_ += 2;
                        const std::uint32_t low = parse_hex4();
                        if (low < 0xDC00 || low > 0xDFFF)
                            fail_at(escape_start, "high surrogate \\u escape without its low half");
                        code_point = 0x10000 + ((code_point - 0xD800) << 10) + (low - 0xDC00);
                    }
                    seemoe::detail::append_utf8(out, code_point);
                    break;
                }
                default: fail_at(escape_start, "invalid escape '\\", e, "' in a string");
            }
        }
    }

    Json parse_number() {
        const std::size_t start = pos_;
        const auto digit = [&] { return pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9'; };
        if (at_char('-')) ++pos_;
        if (at_char('0')) {
            ++pos_;
            if (digit()) fail_at(start, "leading zero in a number");
        } else if (digit()) {
            while (digit()) ++pos_;
        } else {
            fail("expected a digit, found ", describe(pos_));
        }
        bool integral = true;
        if (at_char('.')) {
            integral = false;
            ++pos_;
            if (!digit()) fail("expected a digit after the decimal point, found ", describe(pos_));
            while (digit()) ++pos_;
        }
        if (at_char('e') || at_char('E')) {
            integral = false;
            ++pos_;
            if (at_char('+') || at_char('-')) ++pos_;
            if (!digit()) fail("expected a digit in the exponent, found ", describe(pos_));
            while (digit()) ++pos_;
        }
        const std::string_view literal = text_.substr(start, pos_ - start);
        if (integral && literal != "-0") {
            std::int64_t value = 0;
            const auto result =
                std::from_chars(literal.data(), literal.data() + literal.size(), value);
            if (result.ec == std::errc() && result.ptr == literal.data() + literal.size())
                return Json(value);
            // Too big for int64: fall through and keep it as the nearest double.
        }
        double value = 0.0;
        if (!parse_double(literal, value) || !std::isfinite(value))
            fail_at(start, "number ", literal, " is out of the range of a double");
        return Json(value);
    }

    std::string_view text_;
    std::size_t pos_ = 0;
};

}  // namespace detail

inline Json Json::parse(std::string_view text) { return detail::JsonParser(text).parse_document(); }

inline std::string Json::number_text(double value) { return detail::shortest_float_text(value); }

inline double Json::float_as_short_double(float value) {
    if (!std::isfinite(value)) return static_cast<double>(value);
    double shortened = 0.0;
    detail::parse_double(detail::shortest_float_text(value), shortened);
    return shortened;
}

inline void Json::dump_to(std::string& out) const {
    switch (value_.index()) {
        case 0: out += "null"; break;
        case 1: out += std::get<bool>(value_) ? "true" : "false"; break;
        case 2: out += std::to_string(std::get<std::int64_t>(value_)); break;
        case 3: {
            const double d = std::get<double>(value_);
            out += std::isfinite(d) ? number_text(d) : "null";
            break;
        }
        case 4: detail::append_json_string(out, std::get<std::string>(value_)); break;
        case 5: {
            out += '[';
            bool first = true;
            for (const Json& element : std::get<Array>(value_)) {
                if (!first) out += ',';
                first = false;
                element.dump_to(out);
            }
            out += ']';
            break;
        }
        default: {
            out += '{';
            bool first = true;
            for (const auto& member : std::get<Object>(value_)) {
                if (!first) out += ',';
                first = false;
                detail::append_json_string(out, member.first);
                out += ':';
                member.second.dump_to(out);
            }
            out += '}';
        }
    }
}

}  // namespace seemoe::io
