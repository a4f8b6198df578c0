// seemoe/data/image.hpp — decode images, resize them, and turn them into normalised tensors.
//
//   Image          width x height 8-bit RGB, always 3 channels, stored (H, W, 3) row-major:
//                  channel c of pixel (y, x) is rgb[(y * width + x) * 3 + c]
//   decode_image   PNG, JPEG, BMP, GIF (first frame) and TGA through stb_image;
//                  grayscale is replicated to R = G = B, alpha is dropped (not blended)
//   resize         bilinear or area, see ResizeMode for the exact sampling conventions
//   write_chw      (3, H, W) floats (x/255 - mean[c]) / std[c] into a caller's buffer, so a batch
//                  is filled in place; to_tensor wraps it for one image. ImageNet mean/std by
//                  default, as torchvision's Normalize in the original seeMoE.
//
// Limits (ImageLimits, checked before decoding, so a hostile or mistaken file cannot make stb_image
// allocate gigabytes): at most 64 MiB of file bytes, 8192 pixels a side, and 256 MiB for the
// largest buffer stb_image allocates while decoding (width * height * 4 bytes). A file over a
// limit is refused with its name.
//
// Fuzzing (fuzz/fuzz_image.cpp) found defects in the stb_image in use (2.27, Debian 12's libstb),
// so the bytes are screened before it sees them (detail::check_known_decoder_defects): the other
// formats stb_image would try (PSD, PIC, PNM, HDR: never promised, and where it overflows integers)
// are refused by their signature; a PNG chunk longer than the rest of the file is refused (stb_image
// would allocate what it declares); a JPEG whose Huffman tables would make it write or read out of
// bounds (too many symbols, a scan using a table never defined) is refused as corrupt, and every
// JPEG is handed to it with all eight tables defined first.
//
// stb_image is used through its declarations only: this header never defines
// STB_IMAGE_IMPLEMENTATION; the implementation comes from the stb library the target links
// (Debian's libstb).
#pragma once

#include <stb/stb_image.h>

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "../core/tensor.hpp"
#include "../io/file.hpp"

namespace seemoe::data {

struct Image {
    int width = 0;
    int height = 0;
    std::vector<std::uint8_t> rgb;  // (H, W, 3)

    bool empty() const { return width == 0 || height == 0; }
    std::uint8_t at(int y, int x, int c) const {
        return rgb[(static_cast<std::size_t>(y) * width + x) * 3 + c];
    }
    std::uint8_t& at(int y, int x, int c) { return rgb[(static_cast<std::size_t>(y) * width + x) * 3 + c]; }
};

// What decode_image and load_image accept; see the header comment.
struct ImageLimits {
    std::uint64_t max_file_bytes = std::uint64_t(64) << 20;      // encoded bytes
    int max_side = 8192;                                          // pixels, width and height
    std::uint64_t max_decoded_bytes = std::uint64_t(256) << 20;  // stb_image's largest buffer
};

}  // namespace seemoe::data

namespace seemoe::detail {

// stb_image 2.27 (Debian 12's libstb) has two JPEG Huffman table defects, both screened here:
//  - it trusts the 16 code counts of a table (DHT segment): counts adding up to more than 256
//    symbols make it write past its 257-entry table. JPEG allows at most 256: refused as corrupt.
//  - a table is built only when a DHT segment defines it, yet a scan (SOS) may name any of the
//    4 DC and 4 AC tables: one that no DHT defined is the decoder's uninitialised memory, and
//    stbi__jpeg_huff_decode then computes a symbol index outside [0, 256) and reads before or
//    past its tables (found by fuzz/fuzz_image.cpp: index -84; stb_image 2.28 added a bound
//    check). A scan that decodes with an undefined table is refused as corrupt, and, so that the
//    guarantee does not rest on this walk reading the file exactly as stb_image does,
//    jpeg_with_default_huffman_tables defines all eight tables before the file's own (below).
// A table that stbi__build_huffman did build (n <= 256 symbols) keeps the index inside [0, n):
// the slow path picks the shortest length k >= 10 whose largest code + 1 (maxcode) exceeds the
// next k bits, so those bits are below the end of the length-k codes and, as they were not
// below maxcode[k - 1] (or, for k = 10, matched no shorter code in the 9-bit fast table), not
// below the first length-k code; the index is the first length-k symbol's plus their distance
// from that code. The one exception, symbol 255 of a 256-symbol table whose code is at most 9
// bits (the fast table's "no entry" mark is 255), gives an index in [252, 256): 256 codes of at
// most s bits need s >= 8.
// The walk follows the marker structure the way stb_image reads it: fill bytes (0xFF 0xFF)
// skipped, segments skipped by their length, entropy-coded data scanned byte by byte for the next
// marker (0xFF 0x00 is a stuffed byte, 0xFF 0xD0-D7 a restart marker), bytes past the end read
// as 0. Which tables a scan decodes with is stb_image's rule: sequential frames (SOF0, SOF1) the
// DC and AC table of every component in the scan; progressive frames (SOF2) the DC table in a
// first DC scan (Ss = 0, Ah = 0), none in a DC refinement scan, the AC table in an AC scan.
// Returns the offset just past the start-of-image marker, or 0 when the bytes are not a JPEG.
inline std::size_t check_jpeg_huffman_tables(const std::uint8_t* bytes, std::size_t n, const std::string& name) {
    const auto at = [&](std::size_t i) -> std::uint8_t { return i < n ? bytes[i] : 0; };
    std::size_t i = 0;
    if (at(0) != 0xFF) return 0;
    while (at(i) == 0xFF && i < n) ++i;
    if (at(i) != 0xD8) return 0;  // no start-of-image marker: not a JPEG
    const std::size_t body = ++i;
    bool defined[2][4] = {};  // [DC = 0, AC = 1][table id]
    int frame = 0;            // the first SOF0/1/2 marker: stb_image decodes by it
    const auto require = [&](int ac, int id) {
        SEEMOE_CHECK(defined[ac][id], "[decode_image] cannot decode ", name, ": a JPEG scan uses ",
                     ac ? "AC" : "DC", " Huffman table ", id,
                     ", which no DHT segment before it defines: corrupt JPEG");
    };
    while (i + 1 < n) {
        if (bytes[i] != 0xFF) {  // entropy-coded data or padding
            ++i;
            continue;
        }
        const std::uint8_t marker = bytes[i + 1];
        if (marker == 0xFF) {  // a fill byte before the marker
            ++i;
            continue;
        }
        if (marker == 0x00 || marker == 0x01 || (marker >= 0xD0 && marker <= 0xD8)) {  // no length field
            i += 2;
            continue;
        }
        if (marker == 0xD9) break;  // end of image
        const std::size_t length = (std::size_t(at(i + 2)) << 8) | at(i + 3);
        if (marker == 0xC4) {  // DHT: tables of (class << 4 | id, 16 counts, symbols)
            std::size_t table = i + 4;
            for (long left = static_cast<long>(length) - 2; left > 0;) {
                std::size_t symbols = 0;
                for (std::size_t k = 1; k <= 16; ++k) symbols += at(table + k);
                SEEMOE_CHECK(symbols <= 256, "[decode_image] cannot decode ", name, ": a JPEG Huffman table lists ",
                             symbols, " symbols (at most 256): corrupt JPEG");
                const int table_class = at(table) >> 4, id = at(table) & 15;
                if (table_class <= 1 && id <= 3) defined[table_class][id] = true;  // else stb_image refuses
                table += 17 + symbols;
                left -= static_cast<long>(17 + symbols);
            }
        } else if (frame == 0 && (marker == 0xC0 || marker == 0xC1 || marker == 0xC2)) {
            frame = marker;
        } else if (marker == 0xDA && frame != 0) {  // SOS: count, (component, DC << 4 | AC) each, Ss, Se, Ah << 4 | Al
            const std::size_t count = at(i + 4);
            const std::uint8_t spectral_start = at(i + 5 + 2 * count), high_bit = at(i + 7 + 2 * count) >> 4;
            for (std::size_t c = 0; c < count; ++c) {
                const int dc = at(i + 6 + 2 * c) >> 4, ac = at(i + 6 + 2 * c) & 15;
                if (dc > 3 || ac > 3) continue;  // stb_image refuses the scan
                const bool progressive = frame == 0xC2;
                if (!progressive || (spectral_start == 0 && high_bit == 0)) require(0, dc);
                if (!progressive || spectral_start != 0) require(1, ac);
            }
        }
        i += 2 + length;
    }
    return body;
}

// The JPEG handed to stb_image: the start-of-image marker, one DHT segment defining all eight
// tables (one symbol, 0, with the 1-bit code 0: a code starting with 1 is "bad huffman code"),
// then the file from `body` (past its own start-of-image marker) on. stb_image processes the
// markers in order, so every table is built before any scan, and a DHT of the file replaces the
// table it defines completely (counts, codes, fast tables, its symbols; symbols past its count
// are never indexed, see above): a file that defines what it uses decodes to the same pixels.
inline std::vector<std::uint8_t> jpeg_with_default_huffman_tables(const std::uint8_t* bytes, std::size_t n,
                                                                  std::size_t body) {
    constexpr std::size_t tables = 8, table_bytes = 1 + 16 + 1;
    constexpr std::size_t segment = 2 + tables * table_bytes;  // the length field counts itself
    std::vector<std::uint8_t> out = {0xFF, 0xD8, 0xFF, 0xC4, std::uint8_t(segment >> 8), std::uint8_t(segment & 0xFF)};
    out.reserve(out.size() + tables * table_bytes + (n - body));
    for (std::uint8_t table_class = 0; table_class <= 1; ++table_class)
        for (std::uint8_t id = 0; id <= 3; ++id) {
            out.push_back(static_cast<std::uint8_t>(table_class << 4 | id));
            out.push_back(1);                       // one code of length 1
            out.insert(out.end(), 15, 0);           // none longer
            out.push_back(0);                       // its symbol
        }
    out.insert(out.end(), bytes + body, bytes + n);
    return out;
}
// stb_image 2.27 grows its buffer for a PNG's compressed data (IDAT chunks) to the length a
// chunk declares before it reads the chunk: a 123-byte file declaring a 1.6 GB chunk made
// it ask for 2 GiB (found by fuzz/fuzz_image.cpp). It reads the chunks one after the other, each
// an 8-byte header (length, type), the data and a 4-byte CRC (not read after IEND), up to IEND.
// A chunk whose data runs past the end of the file is refused here, so the compressed data
// stb_image buffers is never more than the file holds (at most twice that once rounded up).
inline void check_png_chunks(const std::uint8_t* bytes, std::size_t n, const std::string& name) {
    static const std::uint8_t signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n < 8 || std::memcmp(bytes, signature, 8) != 0) return;
    const auto be32 = [&](std::size_t i) {
        return std::uint64_t(bytes[i]) << 24 | std::uint64_t(bytes[i + 1]) << 16 | std::uint64_t(bytes[i + 2]) << 8 |
               bytes[i + 3];
    };
    for (std::size_t i = 8; n - i >= 8;) {
        const std::uint64_t length = be32(i);
        SEEMOE_CHECK(length <= n - i - 8, "[decode_image] cannot decode ", name, ": a PNG chunk at byte ", i,
                     " declares ", length, " bytes of data, more than the ", n - i - 8,
                     " left in the file: corrupt or truncated PNG");
        if (std::memcmp(bytes + i + 4, "IEND", 4) == 0) return;
        i += 12 + static_cast<std::size_t>(length);
        if (i > n) return;  // the CRC cut off: stb_image refuses the file itself
    }
}

// The formats stb_image tries besides the five seemoe reads, by the signature stb_image tests
// them with: refused, so their decoders never run. nullptr for anything else.
inline const char* unsupported_image_format(const std::uint8_t* bytes, std::size_t n) {
    const auto starts = [&](const char* magic, std::size_t len) { return n >= len && std::memcmp(bytes, magic, len) == 0; };
    if (starts("8BPS", 4)) return "a Photoshop (PSD) image";
    if (starts("\x53\x80\xF6\x34", 4)) return "a Softimage PIC image";
    if (starts("P5", 2) || starts("P6", 2)) return "a PNM (PGM/PPM) image";
    if (starts("#?RADIANCE\n", 11) || starts("#?RGBE\n", 7)) return "a Radiance HDR image";
    return nullptr;
}

// Screens `bytes` for the inputs known to make the linked stb_image misbehave (see above).
// Returns check_jpeg_huffman_tables' offset: past the start-of-image marker of a JPEG, else 0.
inline std::size_t check_known_decoder_defects(const std::uint8_t* bytes, std::size_t n, const std::string& name) {
    const char* format = unsupported_image_format(bytes, n);
    SEEMOE_CHECK(format == nullptr, "[decode_image] ", name, " is ", format,
                 "; seemoe reads PNG, JPEG, BMP, GIF and TGA (convert it, e.g. to PNG)");
    check_png_chunks(bytes, n, name);
    return check_jpeg_huffman_tables(bytes, n, name);
}

}  // namespace seemoe::detail

namespace seemoe::data {

// Decodes an image file held in memory; `name` is used in error messages.
inline Image decode_image(const std::uint8_t* bytes, std::size_t n, const std::string& name = "<memory>",
                          const ImageLimits& limits = {}) {
    SEEMOE_CHECK(n > 0, "[decode_image] ", name, ": no bytes to decode (empty file?)");
    SEEMOE_CHECK(n <= limits.max_file_bytes && n <= static_cast<std::size_t>(INT_MAX), "[decode_image] ", name,
                 ": ", n, " bytes is more than the ", std::min<std::uint64_t>(limits.max_file_bytes, INT_MAX),
                 " bytes an image file may have");
    int width = 0, height = 0, channels_in_file = 0;
    const int length = static_cast<int>(n);
    const std::size_t jpeg_body = detail::check_known_decoder_defects(bytes, n, name);
    // The size first, from the header alone, so the limits hold before stb_image allocates.
    SEEMOE_CHECK(stbi_info_from_memory(bytes, length, &width, &height, &channels_in_file) == 1,
                 "[decode_image] cannot decode ", name, ": ", stbi_failure_reason(),
                 " (supported: PNG, JPEG, BMP, GIF, TGA)");
    const std::uint64_t bytes_per_pixel = 4;  // stb_image's largest buffer: RGBA while converting
    SEEMOE_CHECK(width > 0 && height > 0 && width <= limits.max_side && height <= limits.max_side &&
                     static_cast<std::uint64_t>(width) * static_cast<std::uint64_t>(height) * bytes_per_pixel <=
                         limits.max_decoded_bytes,
                 "[decode_image] ", name, " is ", width, "x", height, " pixels, more than allowed (at most ",
                 limits.max_side, " a side and ", limits.max_decoded_bytes >> 20, " MiB decoded)");
    // A JPEG is decoded with every Huffman table defined first (see check_jpeg_huffman_tables):
    // one copy of the encoded bytes, small next to the decoded pixels.
    std::vector<std::uint8_t> jpeg;
    if (jpeg_body != 0) jpeg = detail::jpeg_with_default_huffman_tables(bytes, n, jpeg_body);
    SEEMOE_CHECK(jpeg.size() <= static_cast<std::size_t>(INT_MAX), "[decode_image] ", name, ": ", n,
                 " bytes is more than the ", INT_MAX, " bytes stb_image reads");
    // Asking for 3 channels makes stb_image do the gray -> RGB and RGBA -> RGB conversions.
    std::uint8_t* pixels =
        jpeg.empty() ? stbi_load_from_memory(bytes, length, &width, &height, &channels_in_file, 3)
                     : stbi_load_from_memory(jpeg.data(), static_cast<int>(jpeg.size()), &width, &height,
                                             &channels_in_file, 3);
    SEEMOE_CHECK(pixels != nullptr, "[decode_image] cannot decode ", name, ": ", stbi_failure_reason(),
                 " (supported: PNG, JPEG, BMP, GIF, TGA)");
    Image image;
    image.width = width;
    image.height = height;
    image.rgb.assign(pixels, pixels + static_cast<std::size_t>(width) * height * 3);
    stbi_image_free(pixels);
    return image;
}
inline Image decode_image(const std::vector<std::uint8_t>& bytes, const std::string& name = "<memory>",
                          const ImageLimits& limits = {}) {
    return decode_image(bytes.data(), bytes.size(), name, limits);
}

// Decodes an image file: a regular file (io::read_file refuses FIFOs, directories and devices)
// within the limits.
inline Image load_image(const std::string& path, const ImageLimits& limits = {}) {
    const std::string bytes = io::read_file(path, limits.max_file_bytes, "an image file");
    return decode_image(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size(), path, limits);
}

// How resize samples the source.
//  bilinear   PyTorch's F.interpolate(mode="bilinear", align_corners=False, antialias=False):
//             output pixel x samples the source at (x + 0.5) * in/out - 0.5 (pixel centres
//             aligned, not corners), clamped at the borders; computed in float, rounded to the
//             nearest integer. Good for enlarging; shrinking by more than 2x skips pixels.
//  area       each output pixel is the average of the source area it covers, with fractional
//             pixels weighted by their overlap. Equals PyTorch's mode="area" (adaptive average
//             pooling) when the sizes divide evenly. Right for shrinking.
//  automatic  area when neither side grows, bilinear otherwise.
enum class ResizeMode { bilinear, area, automatic };

}  // namespace seemoe::data

namespace seemoe::detail {

// One axis of a separable resize: output i = sum of weight * input[index] over its taps.
struct ResizeTaps {
    std::vector<int> first;     // (out + 1) offsets into index/weight
    std::vector<int> index;     // source indices
    std::vector<float> weight;  // their weights (sum to 1 per output)
};

inline ResizeTaps bilinear_taps(int in, int out) {
    ResizeTaps taps;
    const double scale = static_cast<double>(in) / out;
    taps.first.push_back(0);
    for (int i = 0; i < out; ++i) {
        const double src = std::max(0.0, (i + 0.5) * scale - 0.5);
        const int i0 = std::min(static_cast<int>(src), in - 1);
        const int i1 = std::min(i0 + 1, in - 1);
        const float w1 = static_cast<float>(src - i0);
        taps.index.insert(taps.index.end(), {i0, i1});
        taps.weight.insert(taps.weight.end(), {1.0f - w1, w1});
        taps.first.push_back(static_cast<int>(taps.index.size()));
    }
    return taps;
}

inline ResizeTaps area_taps(int in, int out) {
    ResizeTaps taps;
    const double scale = static_cast<double>(in) / out;  // source pixels per output pixel
    taps.first.push_back(0);
    for (int i = 0; i < out; ++i) {
        const double lo = i * scale, hi = (i + 1) * scale;
        for (int s = static_cast<int>(lo); s < in && s < hi; ++s) {
            const double overlap = std::min<double>(hi, s + 1) - std::max<double>(lo, s);
            if (overlap <= 0) continue;
            taps.index.push_back(s);
            taps.weight.push_back(static_cast<float>(overlap / scale));
        }
        taps.first.push_back(static_cast<int>(taps.index.size()));
    }
    return taps;
}

}  // namespace seemoe::detail

namespace seemoe::data {

// Resizes to width x height. Same size returns a copy, for every mode.
inline Image resize(const Image& src, int width, int height, ResizeMode mode = ResizeMode::bilinear) {
    SEEMOE_CHECK(width > 0 && height > 0, "[resize] target size must be positive, got ", width, "x", height);
    SEEMOE_CHECK(!src.empty() && src.rgb.size() == static_cast<std::size_t>(src.width) * src.height * 3,
                 "[resize] source image ", src.width, "x", src.height, " has ", src.rgb.size(),
                 " bytes, expected width * height * 3");
    if (width == src.width && height == src.height) return src;
    if (mode == ResizeMode::automatic)
        mode = (width <= src.width && height <= src.height) ? ResizeMode::area : ResizeMode::bilinear;

    const bool area = mode == ResizeMode::area;
    const detail::ResizeTaps tx =
        area ? detail::area_taps(src.width, width) : detail::bilinear_taps(src.width, width);
    const detail::ResizeTaps ty =
        area ? detail::area_taps(src.height, height) : detail::bilinear_taps(src.height, height);
    // Separable: rows first into a float buffer (src.height, width, 3), then columns.
    std::vector<float> rows(static_cast<std::size_t>(src.height) * width * 3);
    for (int y = 0; y < src.height; ++y) {
        const std::uint8_t* in = src.rgb.data() + static_cast<std::size_t>(y) * src.width * 3;
        float* out = rows.data() + static_cast<std::size_t>(y) * width * 3;
        for (int x = 0; x < width; ++x) {
            float acc[3] = {0, 0, 0};
            for (int k = tx.first[x]; k < tx.first[x + 1]; ++k) {
                const std::uint8_t* p = in + static_cast<std::size_t>(tx.index[k]) * 3;
                for (int c = 0; c < 3; ++c) acc[c] += tx.weight[k] * p[c];
            }
            for (int c = 0; c < 3; ++c) out[x * 3 + c] = acc[c];
        }
    }
    Image dst;
    dst.width = width;
    dst.height = height;
    dst.rgb.resize(static_cast<std::size_t>(width) * height * 3);
    const std::size_t row_len = static_cast<std::size_t>(width) * 3;
    std::vector<float> acc(row_len);
    for (int y = 0; y < height; ++y) {
        std::fill(acc.begin(), acc.end(), 0.0f);
        for (int k = ty.first[y]; k < ty.first[y + 1]; ++k) {
            const float w = ty.weight[k];
            const float* in = rows.data() + static_cast<std::size_t>(ty.index[k]) * row_len;
            for (std::size_t i = 0; i < row_len; ++i) acc[i] += w * in[i];
        }
        std::uint8_t* out = dst.rgb.data() + static_cast<std::size_t>(y) * row_len;
        for (std::size_t i = 0; i < row_len; ++i)
            out[i] = static_cast<std::uint8_t>(std::clamp(std::lround(acc[i]), 0L, 255L));
    }
    return dst;
}

// Per-channel normalisation applied by write_chw: (x / 255 - mean[c]) / stddev[c].
struct Normalization {
    std::array<float, 3> mean{0.485f, 0.456f, 0.406f};  // ImageNet, as torchvision
    std::array<float, 3> stddev{0.229f, 0.224f, 0.225f};

    static Normalization imagenet() { return {}; }
    // Plain x / 255 in [0, 1].
    static Normalization unit_range() { return {{0.0f, 0.0f, 0.0f}, {1.0f, 1.0f, 1.0f}}; }
};

// Writes the image as (3, H, W) normalised values into out[0 .. 3*H*W).
template <typename T>
void write_chw(const std::uint8_t* rgb, int width, int height, T* out, const Normalization& norm = {}) {
    for (int c = 0; c < 3; ++c)
        SEEMOE_CHECK(norm.stddev[c] != 0.0f, "[write_chw] stddev of channel ", c, " is zero");
    // 256-entry table per channel: the arithmetic happens once per value, not once per pixel.
    std::array<std::array<T, 256>, 3> table;
    for (int c = 0; c < 3; ++c)
        for (int v = 0; v < 256; ++v)
            table[c][v] = static_cast<T>((static_cast<double>(v) / 255.0 - norm.mean[c]) / norm.stddev[c]);
    const std::size_t plane = static_cast<std::size_t>(width) * height;  // H * W
    for (std::size_t i = 0; i < plane; ++i) {
        out[i] = table[0][rgb[i * 3]];
        out[plane + i] = table[1][rgb[i * 3 + 1]];
        out[2 * plane + i] = table[2][rgb[i * 3 + 2]];
    }
}
template <typename T>
void write_chw(const Image& image, T* out, const Normalization& norm = {}) {
    write_chw(image.rgb.data(), image.width, image.height, out, norm);
}

// One image as a (3, H, W) tensor.
template <typename T = float>
Tensor<T> to_tensor(const Image& image, const Normalization& norm = {}) {
    SEEMOE_CHECK(!image.empty(), "[to_tensor] empty image");
    Tensor<T> out = Tensor<T>::empty({3, image.height, image.width});  // (3, H, W)
    write_chw(image, out.data(), norm);
    return out;
}

}  // namespace seemoe::data
