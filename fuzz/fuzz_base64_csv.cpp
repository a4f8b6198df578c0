// fuzz/fuzz_base64_csv.cpp — the base64 CSV data set (column b64string_images, as in the original
// seeMoE repository): base64_decode (data/base64.hpp), the optional data: URI prefix and the image
// decoder behind it, through CaptionDataset::load.
// The input is the CSV text. Every base64 cell the decoder accepts re-encodes (base64_encode) to
// text that decodes to the same bytes. A data set that loads has one caption per row and
// 4 x 4 x 3 pixels per sample. Refused: seemoe::Error only.
// The image limits are smaller than the defaults (1024 a side, 16 MiB decoded), as in
// fuzz_image.cpp: a 20-byte TGA header may claim 4100 x 1089 pixels, which stb_image fills with
// zeros, seconds per input under the sanitizers; the code that checks the limits is the same.
#include <seemoe/core/parallel.hpp>
#include <seemoe/data/base64.hpp>
#include <seemoe/data/csv.hpp>
#include <seemoe/data/dataset.hpp>

#include "fuzz_common.hpp"

namespace {

namespace fs = std::filesystem;

void check_base64(std::string_view cell) {
    std::vector<std::uint8_t> bytes;
    try {
        bytes = seemoe::data::base64_decode(cell);
    } catch (const seemoe::Error&) {
        return;
    }
    const std::string text = seemoe::data::base64_encode(bytes);
    FUZZ_CHECK(text.size() % 4 == 0, "base64_encode wrote a partial group");
    FUZZ_CHECK(seemoe::data::base64_decode(text) == bytes, "base64 round trip changed the bytes");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const fs::path folder = [] {
        fs::create_directories(fuzz::scratch() / "b64");
        seemoe::set_num_threads(1);
        return fuzz::scratch() / "b64";
    }();
    const std::string_view text = fuzz::as_text(data, size);
    seemoe::data::CsvTable table;
    try {
        table = seemoe::data::parse_csv(text, "captions.csv");
    } catch (const seemoe::Error&) {
        return 0;
    }
    const seemoe::Index column = table.find_column("b64string_images");
    if (column >= 0)
        for (const auto& row : table.rows) check_base64(row[static_cast<std::size_t>(column)]);

    fuzz::write_file(folder / "captions.csv", text);
    seemoe::data::DatasetOptions options;
    options.image_size = 4;
    options.limits.max_side = 1024;
    options.limits.max_decoded_bytes = std::uint64_t(16) << 20;
    seemoe::data::CaptionDataset dataset;
    try {
        dataset = seemoe::data::CaptionDataset::load(folder.string(), options);
    } catch (const seemoe::Error&) {
        return 0;
    }
    FUZZ_CHECK(dataset.size() >= 1 && dataset.size() <= table.num_rows(), "sample count out of range");
    for (seemoe::Index i = 0; i < dataset.size(); ++i) {
        FUZZ_CHECK(!dataset.caption(i).empty(), "an empty caption was accepted");
        (void)dataset.pixels(i);
    }
    return 0;
}
