// fuzz/fuzz_csv.cpp — captions.csv: the RFC 4180 reader (data/csv.hpp) and the data-set loader
// on top of it (data/dataset.hpp: columns, splits, UTF-8 captions, image paths kept inside the
// data folder).
// The input is the text of captions.csv in a scratch data folder holding one valid image, a.png;
// a second valid image, secret.png, lies just outside the folder.
// Accepted by parse_csv: every row has as many fields as the header, and writing the table back
// with csv_line and parsing it again gives the same header and rows. Accepted by the loader:
// one caption per train row, each valid UTF-8 and non-empty, and no row's image is secret.png
// (paths out of the folder are refused). Refused: seemoe::Error only.
#include <stb/stb_image_write.h>

#include <seemoe/core/parallel.hpp>
#include <seemoe/core/utf8.hpp>
#include <seemoe/data/csv.hpp>
#include <seemoe/data/dataset.hpp>

#include "fuzz_common.hpp"

namespace {

namespace fs = std::filesystem;

// A 4x4 gray PNG.
std::string small_png() {
    std::vector<std::uint8_t> pixels(4 * 4 * 3, 100);
    std::string out;
    stbi_write_png_to_func(
        [](void* context, void* bytes, int n) { static_cast<std::string*>(context)->append(static_cast<char*>(bytes), n); },
        &out, 4, 4, 3, pixels.data(), 4 * 3);
    return out;
}

const fs::path& data_folder() {
    static const fs::path folder = [] {
        const fs::path root = fuzz::scratch() / "csv";
        fs::create_directories(root / "data");
        fuzz::write_file(root / "data" / "a.png", small_png());
        fuzz::write_file(root / "secret.png", small_png());
        seemoe::set_num_threads(1);
        return root / "data";
    }();
    return folder;
}

void check_table(const seemoe::data::CsvTable& table) {
    for (const auto& row : table.rows) FUZZ_CHECK(row.size() == table.header.size(), "a row has the wrong width");
    FUZZ_CHECK(table.lines.size() == table.rows.size(), "one line number per row");
    std::string text = seemoe::data::csv_line(table.header);
    for (const auto& row : table.rows) text += seemoe::data::csv_line(row);
    const seemoe::data::CsvTable again = seemoe::data::parse_csv(text, "again");
    FUZZ_CHECK(again.header == table.header, "the header changed in a round trip");
    FUZZ_CHECK(again.rows == table.rows, "rows changed in a round trip");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string_view text = fuzz::as_text(data, size);
    seemoe::data::CsvTable table;
    try {
        table = seemoe::data::parse_csv(text, "captions.csv");
    } catch (const seemoe::Error&) {
        return 0;
    }
    check_table(table);

    const fs::path& folder = data_folder();
    fuzz::write_file(folder / "captions.csv", text);
    seemoe::data::DatasetOptions options;
    options.image_size = 4;
    seemoe::data::CaptionDataset dataset;
    try {
        dataset = seemoe::data::CaptionDataset::load(folder.string(), options);
    } catch (const seemoe::Error&) {
        return 0;
    }
    const seemoe::Index image = table.find_column("image"), caption = table.find_column("caption");
    FUZZ_CHECK(caption >= 0, "loaded without a caption column");
    for (seemoe::Index i = 0; i < dataset.size(); ++i) {
        const std::string& c = dataset.caption(i);
        FUZZ_CHECK(!c.empty(), "an empty caption was accepted");
        for (std::size_t pos = 0; pos < c.size();) {
            const std::size_t n = seemoe::detail::utf8_sequence_length(c, pos);
            FUZZ_CHECK(n > 0, "a caption that is not UTF-8 was accepted");
            pos += n;
        }
    }
    // "image" wins over "b64string_images"; rows of other splits are not read.
    const seemoe::Index split = table.find_column("split");
    if (image >= 0)
        for (const auto& row : table.rows) {
            if (split >= 0 && seemoe::data::parse_split(row[static_cast<std::size_t>(split)]) !=
                                  seemoe::data::Split::train)
                continue;
            std::error_code ec;
            const fs::path target = fs::weakly_canonical(folder / row[static_cast<std::size_t>(image)], ec);
            FUZZ_CHECK(ec || target != fs::weakly_canonical(folder.parent_path() / "secret.png", ec),
                       "an image outside the data folder was read");
        }
    return 0;
}
