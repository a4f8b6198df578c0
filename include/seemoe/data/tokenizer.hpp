// seemoe/data/tokenizer.hpp — CharTokenizer: one token per character of the captions.
//
// Vocabulary: <pad> = 0, <bos> = 1, <eos> = 2, then every distinct character of the training
// captions in ascending Unicode code point order (what Python's sorted(set(text)) gives). A
// "character" is one UTF-8 encoded code point, so "é" is one token; text that is not valid UTF-8
// is rejected with its byte offset. encode() never adds <bos>/<eos>: the batcher does that.
//
// The vocabulary travels with a checkpoint as a JSON array of the token strings, in id order:
//   ["<pad>","<bos>","<eos>"," ","a","b",...]
// (to_json / from_json; JSON escapes for quote, backslash and control characters, UTF-8 kept as
// is, \uXXXX including surrogate pairs accepted on input).
//
// Convention: ids are seemoe::Index; id i is tokens()[i].
#pragma once

#include <array>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "../core/common.hpp"

namespace seemoe::detail {

// Decodes the UTF-8 code point starting at text[pos]; sets `length` to its byte count. Returns
// false for a malformed sequence (bad lead or continuation byte, overlong form, surrogate, or
// beyond U+10FFFF).
inline bool next_code_point(std::string_view text, std::size_t pos, std::uint32_t& cp, std::size_t& length) {
    const auto byte = [&](std::size_t i) { return static_cast<unsigned char>(text[i]); };
    const unsigned char lead = byte(pos);
    std::uint32_t min_value;
    if (lead < 0x80) {
        cp = lead;
        length = 1;
        return true;
    } else if ((lead & 0xE0) == 0xC0) {
        cp = lead & 0x1Fu, length = 2, min_value = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
        cp = lead & 0x0Fu, length = 3, min_value = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
        cp = lead & 0x07u, length = 4, min_value = 0x10000;
    } else {
        return false;
    }
    if (pos + length > text.size()) return false;
    for (std::size_t k = 1; k < length; ++k) {
        if ((byte(pos + k) & 0xC0) != 0x80) return false;
        cp = (cp << 6) | (byte(pos + k) & 0x3Fu);
    }
    return cp >= min_value && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF);
}

inline void append_utf8(std::string& out, std::uint32_t cp) {
    if (cp < 0x80) {
        out += static_cast<char>(cp);
    } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
    }
}

// "U+00E9"
inline std::string code_point_str(std::uint32_t cp) {
    static const char hex[] = "0123456789ABCDEF";
    std::string digits;
    for (int shift = cp > 0xFFFF ? 20 : 12; shift >= 0; shift -= 4) digits += hex[(cp >> shift) & 15];
    return "U+" + digits;
}

// JSON string literal, quotes included.
inline std::string json_quote(std::string_view s) {
    static const char hex[] = "0123456789abcdef";
    std::string out = "\"";
    for (char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        // clang-format off
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
                    out += hex[c & 15];
                } else {
                    out += ch;  // UTF-8 bytes pass through: JSON text is UTF-8
                }
        }
        // clang-format on
    }
    return out + "\"";
}

// A reader for exactly one JSON value: an array of strings.
class JsonStringArrayReader {
public:
    JsonStringArrayReader(std::string_view text, const char* who) : text_(text), who_(who) {}

    std::vector<std::string> read() {
        std::vector<std::string> items;
        skip_space();
        expect('[');
        skip_space();
        if (peek() == ']') {
            ++pos_;
        } else {
            for (;;) {
                skip_space();
                items.push_back(read_string());
                skip_space();
                const char c = take();
                if (c == ']') break;
                if (c != ',') fail(std::string("expected ',' or ']' but found ") + shown(c));
            }
        }
        skip_space();
        if (pos_ != text_.size()) fail("unexpected text after the closing ']'");
        return items;
    }

private:
    [[noreturn]] void fail(const std::string& what) const {
        throw Error(concat("[", who_, "] invalid vocabulary JSON at offset ", pos_, ": ", what));
    }
    static std::string shown(char c) {
        return c == '\0' ? std::string("the end of the text") : std::string("'") + c + "'";
    }
    char peek() const { return pos_ < text_.size() ? text_[pos_] : '\0'; }
    char take() {
        if (pos_ >= text_.size()) fail("unexpected end of the text");
        return text_[pos_++];
    }
    void expect(char c) {
        if (peek() != c) fail(std::string("expected '") + c + "' but found " + shown(peek()));
        ++pos_;
    }
    void skip_space() {
        while (pos_ < text_.size() &&
               (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }
    std::uint32_t read_hex4() {
        std::uint32_t v = 0;
        for (int k = 0; k < 4; ++k) {
            const char c = take();
            // Digits 0-9 a-f sit at their value; A-F at 16..21, six past theirs.
            const std::size_t at = std::string_view("0123456789abcdefABCDEF").find(c);
            if (at == std::string_view::npos)
                fail(std::string("bad hex digit ") + shown(c) + " in a \\u escape");
            v = (v << 4) | static_cast<std::uint32_t>(at < 16 ? at : at - 6);
        }
        return v;
    }
    std::string read_string() {
        expect('"');
        std::string s;
        for (;;) {
            const char c = take();
            if (c == '"') return s;
            if (static_cast<unsigned char>(c) < 0x20) fail("raw control character inside a string");
            if (c != '\\') {
                s += c;
                continue;
            }
            const char e = take();
            // clang-format off
            switch (e) {
                case '"': s += '"'; break;
                case '\\': s += '\\'; break;
                case '/': s += '/'; break;
                case 'b': s += '\b'; break;
                case 'f': s += '\f'; break;
                case 'n': s += '\n'; break;
                case 'r': s += '\r'; break;
                case 't': s += '\t'; break;
                case 'u': {
                    std::uint32_t cp = read_hex4();
                    if (cp >= 0xD800 && cp <= 0xDBFF) {  // high surrogate: a low one must follow
                        if (take() != '\\' || take() != 'u') fail("unpaired surrogate in a \\u escape");
                        const std::uint32_t low = read_hex4();
                        if (low < 0xDC00 || low > 0xDFFF) fail("unpaired surrogate in a \\u escape");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        fail("unpaired surrogate in a \\u escape");
                    }
                    append_utf8(s, cp);
                    break;
                }
                default: fail(std::string("unknown escape \\") + e);
            }
            // clang-format on
        }
    }

    std::string_view text_;
    const char* who_;
    std::size_t pos_ = 0;
};

}  // namespace seemoe::detail

namespace seemoe::data {

class CharTokenizer {
public:
    static constexpr Index pad_id = 0;
    static constexpr Index bos_id = 1;
    static constexpr Index eos_id = 2;
    static constexpr Index num_special = 3;

    // Only the three special tokens.
    CharTokenizer() : CharTokenizer(std::vector<std::string>{}, true) {}

    // From the full token list in id order, e.g. as stored in a checkpoint: the first three must
    // be <pad>, <bos>, <eos>; every other token one character, each at most once.
    explicit CharTokenizer(std::vector<std::string> tokens) : CharTokenizer(std::move(tokens), false) {}

    // The vocabulary of a set of texts: specials, then their characters in code point order.
    static CharTokenizer from_texts(const std::vector<std::string>& texts) {
        std::set<std::uint32_t> chars;
        for (const std::string& text : texts) {
            for (std::size_t pos = 0; pos < text.size();) {
                std::uint32_t cp;
                std::size_t len;
                check_utf8(text, pos, cp, len, "from_texts");
                chars.insert(cp);
                pos += len;
            }
        }
        std::vector<std::string> tokens;
        for (std::uint32_t cp : chars) {
            std::string s;
            detail::append_utf8(s, cp);
            tokens.push_back(std::move(s));
        }
        return CharTokenizer(std::move(tokens), true);
    }

    Index vocab_size() const { return static_cast<Index>(tokens_.size()); }
    const std::vector<std::string>& tokens() const { return tokens_; }
    static const std::array<const char*, 3>& special_tokens() {
        static const std::array<const char*, 3> names = {"<pad>", "<bos>", "<eos>"};
        return names;
    }

    // The id of each character of `text` (no <bos>/<eos>). Throws naming the first character
    // that is not in the vocabulary.
    std::vector<Index> encode(std::string_view text) const {
        std::vector<Index> ids;
        ids.reserve(text.size());
        for (std::size_t pos = 0; pos < text.size();) {
            std::uint32_t cp;
            std::size_t len;
            check_utf8(text, pos, cp, len, "encode");
            const Index id = find(cp);
            if (id < 0) {
                const std::string ch(text.substr(pos, len));
                throw Error(detail::concat("[CharTokenizer::encode] character ",
                                           cp >= 0x20 && cp != 0x7F ? "'" + ch + "' " : std::string(), "(",
                                           detail::code_point_str(cp), ") at byte ", pos, " of \"", text,
                                           "\" is not in the vocabulary of ", vocab_size(),
                                           " tokens (build the tokenizer from texts that contain it)"));
            }
            ids.push_back(id);
            pos += len;
        }
        return ids;
    }

    // Text of the ids. Special tokens are dropped unless skip_special is false, in which case they
    // appear by name ("<eos>").
    std::string decode(const std::vector<Index>& ids, bool skip_special = true) const {
        std::string text;
        for (Index id : ids) {
            SEEMOE_CHECK(id >= 0 && id < vocab_size(), "[CharTokenizer::decode] id ", id,
                         " is outside the vocabulary of ", vocab_size(), " tokens");
            if (id < num_special && skip_special) continue;
            text += tokens_[static_cast<std::size_t>(id)];
        }
        return text;
    }

    // The token list as a JSON array (for checkpoint metadata).
    std::string to_json() const {
        std::string out = "[";
        for (std::size_t i = 0; i < tokens_.size(); ++i) {
            if (i) out += ',';
            out += detail::json_quote(tokens_[i]);
        }
        return out + "]";
    }
    static CharTokenizer from_json(std::string_view json) {
        return CharTokenizer(detail::JsonStringArrayReader(json, "CharTokenizer::from_json").read());
    }

    bool operator==(const CharTokenizer& other) const { return tokens_ == other.tokens_; }
    bool operator!=(const CharTokenizer& other) const { return tokens_ != other.tokens_; }

private:
    // `characters_only`: the list holds just the characters and the specials are put in front.
    CharTokenizer(std::vector<std::string> tokens, bool characters_only) {
        ascii_.fill(-1);
        if (characters_only) {
            tokens_.assign(special_tokens().begin(), special_tokens().end());
            tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
        } else {
            SEEMOE_CHECK(tokens.size() >= 3 && tokens[0] == special_tokens()[0] &&
                             tokens[1] == special_tokens()[1] && tokens[2] == special_tokens()[2],
                         "[CharTokenizer] a vocabulary must start with \"<pad>\", \"<bos>\", \"<eos>\" (got ",
                         tokens.size(), " tokens", tokens.empty() ? "" : ", the first is \"",
                         tokens.empty() ? "" : tokens[0], tokens.empty() ? "" : "\"", ")");
            tokens_ = std::move(tokens);
        }
        for (std::size_t i = num_special; i < tokens_.size(); ++i) {
            const std::string& t = tokens_[i];
            std::uint32_t cp = 0;
            std::size_t len = 0;
            SEEMOE_CHECK(!t.empty() && detail::next_code_point(t, 0, cp, len) && len == t.size(),
                         "[CharTokenizer] token ", i, " (", detail::json_quote(t),
                         ") is not exactly one UTF-8 character");
            SEEMOE_CHECK(find(cp) < 0, "[CharTokenizer] token ", i, " (", detail::json_quote(t),
                         ") appears twice in the vocabulary");
            if (cp < 0x80) {
                ascii_[cp] = static_cast<Index>(i);
            } else {
                other_.emplace(cp, static_cast<Index>(i));
            }
        }
    }

    Index find(std::uint32_t cp) const {
        if (cp < 0x80) return ascii_[cp];
        const auto it = other_.find(cp);
        return it == other_.end() ? -1 : it->second;
    }

    static void check_utf8(std::string_view text, std::size_t pos, std::uint32_t& cp, std::size_t& len,
                           const char* who) {
        SEEMOE_CHECK(detail::next_code_point(text, pos, cp, len), "[CharTokenizer::", who,
                     "] invalid UTF-8 at byte ", pos, " of \"", text, "\"");
    }

    std::vector<std::string> tokens_;
    std::array<Index, 128> ascii_{};                  // id of each ASCII character, or -1
    std::unordered_map<std::uint32_t, Index> other_;  // ids of the other code points
};

}  // namespace seemoe::data
