// fuzz/fuzz_image.cpp — image decoding (data/image.hpp: the size checks from the header, then
// stb_image for PNG, JPEG, BMP, GIF, TGA, PSD, PNM, HDR) and the resize behind every sample.
// Accepted: the image is within the limits with width * height * 3 bytes; written out as a
// lossless BMP and decoded again it is the same pixels; resized to 5 x 3 it has 5 * 3 * 3 bytes.
// Refused: seemoe::Error only.
// The limits are smaller than the defaults (1024 a side, 16 MiB decoded) so that one input
// cannot take seconds; the code that checks them is the same.
#include <stb/stb_image_write.h>

#include <seemoe/data/image.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    seemoe::data::ImageLimits limits;
    limits.max_side = 1024;
    limits.max_decoded_bytes = std::uint64_t(16) << 20;
    seemoe::data::Image image;
    try {
        image = seemoe::data::decode_image(data, size, "fuzz input", limits);
    } catch (const seemoe::Error&) {
        return 0;
    }
    FUZZ_CHECK(image.width >= 1 && image.height >= 1 && image.width <= limits.max_side &&
                   image.height <= limits.max_side,
               "an image outside the limits was accepted");
    FUZZ_CHECK(image.rgb.size() == static_cast<std::size_t>(image.width) * image.height * 3, "pixel buffer size");

    std::string bmp;
    const int ok = stbi_write_bmp_to_func(
        [](void* context, void* bytes, int n) { static_cast<std::string*>(context)->append(static_cast<char*>(bytes), n); },
        &bmp, image.width, image.height, 3, image.rgb.data());
    FUZZ_CHECK(ok != 0, "stbi_write_bmp failed");
    const seemoe::data::Image again =
        seemoe::data::decode_image(reinterpret_cast<const std::uint8_t*>(bmp.data()), bmp.size(), "bmp", limits);
    FUZZ_CHECK(again.width == image.width && again.height == image.height && again.rgb == image.rgb,
               "a BMP round trip changed the pixels");

    const seemoe::data::Image small = seemoe::data::resize(image, 5, 3);
    FUZZ_CHECK(small.width == 5 && small.height == 3 && small.rgb.size() == 5 * 3 * 3, "resize size");
    return 0;
}
