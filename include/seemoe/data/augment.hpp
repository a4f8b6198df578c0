// seemoe/data/augment.hpp — random image augmentation for training batches.
//
// augment_image makes a randomly altered copy of one 8-bit RGB image (S, S, 3), in this order:
//   1. random crop with padding: the image is padded by `crop_padding` black pixels on every side
//      and an S x S window is cut at a random offset (torchvision's RandomCrop(S, padding) with
//      fill 0), i.e. the picture moves by up to crop_padding pixels in x and y;
//   2. horizontal flip with probability 1/2, only when `horizontal_flip` says the captions allow
//      it (a mirrored "on the left" would need the caption "on the right": leave it off then);
//   3. contrast: every value moves away from (or towards) the image's mean value by a factor
//      drawn from [1 - contrast, 1 + contrast];
//   4. brightness: every value is multiplied by a factor drawn from [1 - brightness,
//      1 + brightness];
// then values are rounded to the nearest integer and clipped to [0, 255]. Each step draws from
// the Rng only when it is on, in the order above, so a seed gives the same images on any
// compiler. Convention: the caller owns the Rng; Batcher (dataset.hpp) gives every sample of a
// training step its own Rng seeded from (seed, step, sample), so an image's augmentation does not
// depend on the batch it is in, the number of ranks or the threads.
//
// drop_words is the caption's counterpart (word dropout, Bowman et al. 2016): each word of the
// decoder's *input* (the characters after <bos>, words split at spaces) is replaced, with
// probability word_dropout, by <pad> characters of the same length; the targets stay whole. The
// decoder then cannot always lean on the words it has written so far (on the bundled shapes, the
// colour word before the shape word) and has to read the image. It draws from the same per-sample
// Rng after the image's draws, one uniform per word, and only when it is on.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../core/common.hpp"

namespace seemoe::data {

struct AugmentOptions {
    int crop_padding = 0;          // shift by up to this many pixels (0: no crop)
    bool horizontal_flip = false;  // mirror left-right with probability 1/2
    double contrast = 0;           // contrast factor drawn from [1 - contrast, 1 + contrast]
    double brightness = 0;         // brightness factor drawn from [1 - brightness, 1 + brightness]
    double word_dropout = 0;       // probability of blanking each word of a caption's input

    // Whether the image is altered at all.
    bool enabled() const { return crop_padding > 0 || horizontal_flip || contrast > 0 || brightness > 0; }
};

// The random choices of one augmentation, drawn by draw_augmentation.
struct AugmentDraw {
    int dx = 0, dy = 0;      // the crop window's offset from the centred position, in [-pad, pad]
    bool flip = false;       // mirror left-right
    double contrast = 1.0;   // factors; 1 leaves the image as it is
    double brightness = 1.0;
};

inline void check_augment_options(const AugmentOptions& o) {
    SEEMOE_CHECK(o.crop_padding >= 0, "[augment] crop_padding must be >= 0, got ", o.crop_padding);
    SEEMOE_CHECK(o.contrast >= 0 && o.contrast <= 1, "[augment] contrast must be in [0, 1], got ", o.contrast);
    SEEMOE_CHECK(o.brightness >= 0 && o.brightness <= 1, "[augment] brightness must be in [0, 1], got ",
                 o.brightness);
    SEEMOE_CHECK(o.word_dropout >= 0 && o.word_dropout < 1, "[augment] word_dropout must be in [0, 1), got ",
                 o.word_dropout);
}

inline AugmentDraw draw_augmentation(const AugmentOptions& o, Rng& rng) {
    check_augment_options(o);
    AugmentDraw d;
    if (o.crop_padding > 0) {
        d.dx = static_cast<int>(rng.randint(-o.crop_padding, o.crop_padding + 1));
        d.dy = static_cast<int>(rng.randint(-o.crop_padding, o.crop_padding + 1));
    }
    if (o.horizontal_flip) d.flip = rng.uniform() < 0.5;
    if (o.contrast > 0) d.contrast = rng.uniform(1.0 - o.contrast, 1.0 + o.contrast);
    if (o.brightness > 0) d.brightness = rng.uniform(1.0 - o.brightness, 1.0 + o.brightness);
    return d;
}

// Applies the choices `d` to `in` (S, S, 3) and writes `out` (S, S, 3); in and out must not
// overlap. Output pixel (y, x) is input pixel (y + dy, x' + dx), x' = S-1-x when flipped, black
// where that falls outside the image.
inline void apply_augmentation(const std::uint8_t* in, int S, const AugmentDraw& d, std::uint8_t* out) {
    const bool photometric = d.contrast != 1.0 || d.brightness != 1.0;
    std::vector<double> values;  // (S, S, 3) when a photometric step follows
    if (photometric) values.resize(static_cast<std::size_t>(S) * S * 3);
    double sum = 0;
    for (int y = 0; y < S; ++y)
        for (int x = 0; x < S; ++x) {
            const int sx = (d.flip ? S - 1 - x : x) + d.dx, sy = y + d.dy;
            const bool inside = sx >= 0 && sx < S && sy >= 0 && sy < S;
            for (int c = 0; c < 3; ++c) {
                const std::uint8_t v = inside ? in[(static_cast<std::size_t>(sy) * S + sx) * 3 + c] : 0;
                const std::size_t at = (static_cast<std::size_t>(y) * S + x) * 3 + c;
                if (photometric) {
                    values[at] = v;
                    sum += v;
                } else {
                    out[at] = v;
                }
            }
        }
    if (!photometric) return;
    const double mean = sum / static_cast<double>(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        const double v = ((values[i] - mean) * d.contrast + mean) * d.brightness;
        out[i] = static_cast<std::uint8_t>(std::clamp(std::nearbyint(v), 0.0, 255.0));
    }
}

// A randomly augmented copy of `in` (S, S, 3) in `out` (S, S, 3), drawn from `rng`.
inline void augment_image(const std::uint8_t* in, int S, std::uint8_t* out, const AugmentOptions& o, Rng& rng) {
    apply_augmentation(in, S, draw_augmentation(o, rng), out);
}

// Word dropout on one caption's input ids `in` (n ids, without <bos>): every maximal run of ids
// other than `space` is, with probability p, overwritten with `blank`. Spaces stay, so the
// decoder still knows where it is in the caption. One rng.uniform() per word when p > 0; none
// otherwise.
inline void drop_words(Index* in, Index n, Index space, Index blank, double p, Rng& rng) {
    if (!(p > 0)) return;
    for (Index start = 0; start < n;) {
        if (in[start] == space) {
            ++start;
            continue;
        }
        Index end = start;
        while (end < n && in[end] != space) ++end;
        if (rng.uniform() < p) std::fill(in + start, in + end, blank);
        start = end;
    }
}

}  // namespace seemoe::data
