// seemoe/data/base64.hpp — base64 (RFC 4648, standard alphabet A-Z a-z 0-9 + /) encode/decode.
//
// Used for the CSV data-set format whose image column holds base64-encoded image files, as in the
// original seeMoE repository. base64_decode is strict where it matters and tolerant where real
// files differ: ASCII whitespace (line breaks of MIME-style base64) is skipped and the trailing
// '=' padding may be omitted, but any other character outside the alphabet, an '=' before the
// end, or a length that cannot come from whole bytes is an Error that says what and where.
//
// Convention: positions in error messages are 0-based offsets into the text as given.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "../core/common.hpp"

namespace seemoe::detail {

inline constexpr char kBase64Alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

// Value of each byte in the alphabet, or -1.
inline const std::array<std::int8_t, 256>& base64_values() {
    static const std::array<std::int8_t, 256> table = [] {
        std::array<std::int8_t, 256> t{};
        t.fill(-1);
        for (int i = 0; i < 64; ++i)
            t[static_cast<unsigned char>(kBase64Alphabet[i])] = static_cast<std::int8_t>(i);
        return t;
    }();
    return table;
}

inline bool is_base64_space(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

// "'!'" for printable characters, "byte 0x07" otherwise.
inline std::string describe_char(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) return std::string("'") + c + "'";
    static const char hex[] = "0123456789ABCDEF";
    return std::string("byte 0x") + hex[u >> 4] + hex[u & 15];
}

}  // namespace seemoe::detail

namespace seemoe::data {

// Standard base64 with '=' padding.
inline std::string base64_encode(const std::uint8_t* bytes, std::size_t n) {
    std::string out;
    out.reserve((n + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        const std::uint32_t v =
            (std::uint32_t(bytes[i]) << 16) | (std::uint32_t(bytes[i + 1]) << 8) | bytes[i + 2];
        out += detail::kBase64Alphabet[(v >> 18) & 63];
        out += detail::kBase64Alphabet[(v >> 12) & 63];
        out += detail::kBase64Alphabet[(v >> 6) & 63];
        out += detail::kBase64Alphabet[v & 63];
    }
    if (n - i == 1) {
        const std::uint32_t v = std::uint32_t(bytes[i]) << 16;
        out += detail::kBase64Alphabet[(v >> 18) & 63];
        out += detail::kBase64Alphabet[(v >> 12) & 63];
        out += "==";
    } else if (n - i == 2) {
        const std::uint32_t v = (std::uint32_t(bytes[i]) << 16) | (std::uint32_t(bytes[i + 1]) << 8);
        out += detail::kBase64Alphabet[(v >> 18) & 63];
        out += detail::kBase64Alphabet[(v >> 12) & 63];
        out += detail::kBase64Alphabet[(v >> 6) & 63];
        out += '=';
    }
    return out;
}
inline std::string base64_encode(const std::vector<std::uint8_t>& bytes) {
    return base64_encode(bytes.data(), bytes.size());
}
inline std::string base64_encode(std::string_view bytes) {
    return base64_encode(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
}

// Decodes base64 text; throws seemoe::Error on invalid input (see the header comment).
inline std::vector<std::uint8_t> base64_decode(std::string_view text) {
    const auto& values = detail::base64_values();
    std::vector<std::uint8_t> out;
    out.reserve(text.size() / 4 * 3 + 3);
    std::uint32_t bits = 0;     // pending bits, most significant first
    int n_bits = 0;             // how many of them
    std::size_t n_symbols = 0;  // alphabet characters seen
    std::size_t n_padding = 0;  // '=' seen (only allowed at the end)
    std::size_t first_pad = 0;
    for (std::size_t i = 0; i < text.size(); ++i) {
        const char c = text[i];
        if (detail::is_base64_space(c)) continue;
        if (c == '=') {
            if (n_padding == 0) first_pad = i;
            ++n_padding;
            continue;
        }
        const int v = values[static_cast<unsigned char>(c)];
        SEEMOE_CHECK(v >= 0, "[base64_decode] invalid character ", detail::describe_char(c), " at position ",
                     i, " (only A-Z a-z 0-9 + / and '=' padding are allowed)");
        SEEMOE_CHECK(n_padding == 0, "[base64_decode] padding '=' at position ", first_pad,
                     " is followed by more data at position ", i);
        bits = (bits << 6) | static_cast<std::uint32_t>(v);
        n_bits += 6;
        ++n_symbols;
        if (n_bits >= 8) {
            n_bits -= 8;
            out.push_back(static_cast<std::uint8_t>(bits >> n_bits));
            bits &= (1u << n_bits) - 1;
        }
    }
    // Groups of 4 symbols give 3 bytes; a final group of 2 or 3 symbols gives 1 or 2 bytes. A
    // lone final symbol carries only 6 bits: not a whole byte, so the text was cut or corrupted.
    const std::size_t tail = n_symbols % 4;
    SEEMOE_CHECK(tail != 1, "[base64_decode] ", n_symbols,
                 " symbols is not a valid length (one symbol too many or three too few): the text "
                 "looks truncated");
    SEEMOE_CHECK(n_padding == 0 || (tail != 0 && tail + n_padding == 4), "[base64_decode] ", n_padding,
                 " padding characters after ", n_symbols, " symbols: padding must fill the last group of 4");
    return out;
}

}  // namespace seemoe::data
