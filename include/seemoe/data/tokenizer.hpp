// seemoe/data/tokenizer.hpp — CharTokenizer: one token per character of the captions.
//
// Vocabulary: <pad> = 0, <bos> = 1, <eos> = 2, then every distinct character of the training
// captions in ascending Unicode code point order (what Python's sorted(set(text)) gives). A
// "character" is one UTF-8 encoded code point, so "é" is one token; text that is not valid UTF-8
// is rejected with its byte offset. encode() never adds <bos>/<eos>: the batcher does that.
//
// The vocabulary travels with a checkpoint as a JSON array of the token strings, in id order:
//   ["<pad>","<bos>","<eos>"," ","a","b",...]
// (to_json / from_json, through io/json.hpp).
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
#include "../core/utf8.hpp"
#include "../io/json.hpp"

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

    // Whether the vocabulary has the character with this code point.
    bool contains(std::uint32_t code_point) const { return find(code_point) >= 0; }

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
        io::Json list = io::Json::array();
        for (const std::string& token : tokens_) list.push_back(io::Json(token));
        return list.dump();
    }
    static CharTokenizer from_json(std::string_view json) {
        io::Json list;
        try {
            list = io::Json::parse(json);
        } catch (const Error& e) {
            throw Error(detail::concat("[CharTokenizer::from_json] invalid vocabulary JSON: ", e.what()));
        }
        SEEMOE_CHECK(list.is_array(), "[CharTokenizer::from_json] the vocabulary must be a JSON array of strings");
        std::vector<std::string> tokens;
        for (std::size_t i = 0; i < list.size(); ++i) {
            SEEMOE_CHECK(list.at(i).is_string(), "[CharTokenizer::from_json] entry ", i, " is not a string");
            tokens.push_back(list.at(i).as_string());
        }
        return CharTokenizer(std::move(tokens));
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
                         "[CharTokenizer] token ", i, " (\"", t, "\") is not exactly one UTF-8 character");
            SEEMOE_CHECK(find(cp) < 0, "[CharTokenizer] token ", i, " (\"", t, "\") appears twice in the vocabulary");
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
