// seemoe/core/utf8.hpp — UTF-8: decode one code point with full validation, encode one, name one.
//
// Text in seemoe (captions, vocabularies, JSON strings) is UTF-8 bytes in std::string. Valid means
// RFC 3629: no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF. The JSON
// reader and writer and the character tokenizer all check text with next_code_point, so they
// agree on what is valid.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

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

// "U+00E9"
inline std::string code_point_str(std::uint32_t cp) {
    static const char hex[] = "0123456789ABCDEF";
    std::string digits;
    for (int shift = cp > 0xFFFF ? 20 : 12; shift >= 0; shift -= 4) digits += hex[(cp >> shift) & 15];
    return "U+" + digits;
}

// Length of the valid UTF-8 sequence starting at text[pos], or 0 if it is not one (or pos is
// past the end).
inline std::size_t utf8_sequence_length(std::string_view text, std::size_t pos) {
    if (pos >= text.size()) return 0;
    std::uint32_t cp = 0;
    std::size_t length = 0;
    return next_code_point(text, pos, cp, length) ? length : 0;
}

inline void append_utf8(std::string& out, std::uint32_t code_point) {
    if (code_point < 0x80) {
        out += static_cast<char>(code_point);
    } else if (code_point < 0x800) {
        out += static_cast<char>(0xC0 | (code_point >> 6));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else if (code_point < 0x10000) {
        out += static_cast<char>(0xE0 | (code_point >> 12));
        out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    } else {
        out += static_cast<char>(0xF0 | (code_point >> 18));
        out += static_cast<char>(0x80 | ((code_point >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((code_point >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (code_point & 0x3F));
    }
}

}  // namespace seemoe::detail
