// data/fashion/convert_fashion_mnist.cpp — turns the Fashion-MNIST data set (as Debian's
// dataset-fashion-mnist installs it) into a seemoe captions folder.
//
// Fashion-MNIST is 70,000 grayscale 28 x 28 pictures of clothing in 10 classes, stored as four
// IDX files (gzipped by Debian). Each picture becomes a PNG and one row of captions.csv whose
// caption is its class name ("t-shirt", "trouser", ..., "ankle boot"):
//   train  the first --train pictures of the training file (default 55,000)
//   val    the last --val pictures of the training file (default 5,000): for choosing the best
//          checkpoint; never trained on
//   test   the first --test pictures of the test file (default all 10,000), as in the data
//          set's own benchmark
// Usage: seemoe_fashion_mnist [--src DIR] [--out DIR] [--train N] [--val N] [--test N] [--force]
// The IDX files may be plain or gzipped (NAME or NAME.gz). Nothing here is random: the same
// files and counts give the same folder. Gzipped files are inflated by the system's gzip.
#include <stb/stb_image_write.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;

// One line for the user, exit code 2 (see main).
struct Failure : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// The class names, in label order (the data set's README calls them T-shirt/top, Trouser,
// Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot).
const char* const kClassNames[10] = {"t-shirt", "trouser", "pullover", "dress", "coat",
                                     "sandal",  "shirt",   "sneaker",  "bag",   "ankle boot"};

std::vector<unsigned char> read_bytes(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw Failure("cannot open " + path.string());
    return std::vector<unsigned char>(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The bytes of a gzipped file, inflated by the system's gzip (part of every Debian system:
// "Essential: yes"). stb_image's inflater, which seemoe links anyway, refuses some valid deflate
// streams (t10k-labels-idx1-ubyte.gz among them), and zlib's headers are one more package.
std::vector<unsigned char> gunzip(const fs::path& path) {
    std::string quoted = "'";
    for (char c : path.string()) quoted += c == '\'' ? std::string("'\\''") : std::string(1, c);
    quoted += "'";
    FILE* pipe = popen(("gzip -dc -- " + quoted + " 2>/dev/null").c_str(), "r");
    if (!pipe) throw Failure("cannot run gzip to read " + path.string());
    std::vector<unsigned char> out;
    unsigned char buffer[1 << 16];
    for (std::size_t n; (n = std::fread(buffer, 1, sizeof buffer, pipe)) > 0;) out.insert(out.end(), buffer, buffer + n);
    if (pclose(pipe) != 0) throw Failure(path.string() + " is not a readable gzip file (gzip -dc failed)");
    return out;
}

std::uint32_t big_endian(const std::vector<unsigned char>& b, std::size_t at) {
    return (static_cast<std::uint32_t>(b[at]) << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3];
}

// An IDX file of unsigned bytes: its dimensions and data. `dims` is 3 for images, 1 for labels.
struct Idx {
    std::vector<std::uint32_t> shape;
    std::vector<unsigned char> bytes;  // the whole file; data from `offset`
    std::size_t offset = 0;
};

Idx read_idx(const fs::path& src, const std::string& stem, std::size_t dims) {
    const fs::path plain = src / stem, gz = src / (stem + ".gz");
    std::error_code ec;
    Idx idx;
    std::string name;
    if (fs::exists(plain, ec)) {
        name = plain.string();
        idx.bytes = read_bytes(plain);
    } else if (fs::exists(gz, ec)) {
        name = gz.string();
        idx.bytes = gunzip(gz);
    } else {
        throw Failure("neither " + plain.string() + " nor " + gz.string() +
                      " exists (install it with 'apt-get install dataset-fashion-mnist', or pass --src DIR)");
    }
    const std::size_t header = 4 + 4 * dims;
    if (idx.bytes.size() < header) throw Failure(name + " is too short for an IDX header");
    // Magic: two zero bytes, the type (0x08 = unsigned byte) and the number of dimensions.
    if (idx.bytes[0] != 0 || idx.bytes[1] != 0 || idx.bytes[2] != 8 || idx.bytes[3] != dims)
        throw Failure(name + " is not an IDX file of unsigned bytes with " + std::to_string(dims) + " dimensions");
    std::size_t count = 1;
    for (std::size_t d = 0; d < dims; ++d) {
        idx.shape.push_back(big_endian(idx.bytes, 4 + 4 * d));
        count *= idx.shape.back();
    }
    idx.offset = header;
    if (idx.bytes.size() != header + count)
        throw Failure(name + " holds " + std::to_string(idx.bytes.size() - header) + " data bytes, its header says " +
                      std::to_string(count));
    return idx;
}

// Images (N, 28, 28) and labels (N) of one file pair, checked against each other.
struct Part {
    Idx images, labels;
    std::uint32_t count() const { return labels.shape[0]; }
    std::uint32_t label(std::size_t i) const { return labels.bytes[labels.offset + i]; }
    const unsigned char* pixels(std::size_t i) const {
        return images.bytes.data() + images.offset + i * images.shape[1] * images.shape[2];
    }
};

Part read_part(const fs::path& src, const std::string& prefix) {
    Part p{read_idx(src, prefix + "-images-idx3-ubyte", 3), read_idx(src, prefix + "-labels-idx1-ubyte", 1)};
    if (p.images.shape[0] != p.labels.shape[0])
        throw Failure(prefix + ": " + std::to_string(p.images.shape[0]) + " images but " +
                      std::to_string(p.labels.shape[0]) + " labels");
    for (std::size_t i = 0; i < p.count(); ++i)
        if (p.label(i) > 9) throw Failure(prefix + "-labels: label " + std::to_string(p.label(i)) + " at item " +
                                          std::to_string(i) + " is not a class 0..9");
    return p;
}

// "--train 100" -> 100; the value must be a whole number in [0, max].
long parse_count(const char* flag, const char* value, long max) {
    char* end = nullptr;
    const long n = std::strtol(value, &end, 10);
    if (!*value || *end || n < 0 || n > max)
        throw Failure(std::string(flag) + " expects a whole number from 0 to " + std::to_string(max) + ", got '" +
                      value + "'");
    return n;
}

int run(int argc, char** argv) {
    fs::path src = "/usr/share/datasets/fashion-mnist", out = "data/fashion/images";
    long n_train = 55000, n_val = 5000, n_test = 10000;
    bool force = false;
    for (int i = 1; i < argc; ++i) {
        const std::string flag = argv[i];
        if (flag == "--help" || flag == "-h") {
            std::printf(
                "usage: seemoe_fashion_mnist [--src DIR] [--out DIR] [--train N] [--val N] [--test N] [--force]\n\n"
                "Converts Fashion-MNIST (Debian: apt-get install dataset-fashion-mnist) into a seemoe captions\n"
                "folder: OUT/captions.csv (image, caption = class name, split) and OUT/{train,val,test}/NNNNN.png.\n"
                "  --src DIR   the IDX files, plain or .gz (default /usr/share/datasets/fashion-mnist)\n"
                "  --out DIR   the folder to write (default data/fashion/images, relative to the current directory)\n"
                "  --train N   the first N training pictures train (default 55000)\n"
                "  --val N     the last N training pictures validate (default 5000); train + val <= 60000\n"
                "  --test N    the first N test pictures test (default 10000)\n"
                "  --force     replace an existing captions.csv in --out\n");
            return 0;
        }
        if (flag == "--force") {
            force = true;
            continue;
        }
        if (i + 1 >= argc) throw Failure("unknown flag or missing value: " + flag + " (see --help)");
        const char* value = argv[++i];
        if (flag == "--src") src = value;
        else if (flag == "--out") out = value;
        else if (flag == "--train") n_train = parse_count("--train", value, 60000);
        else if (flag == "--val") n_val = parse_count("--val", value, 60000);
        else if (flag == "--test") n_test = parse_count("--test", value, 10000);
        else throw Failure("unknown flag " + flag + " (see --help)");
    }
    if (n_train + n_val > 60000)
        throw Failure("--train + --val is " + std::to_string(n_train + n_val) + ", more than the 60000 training pictures");

    const Part train = read_part(src, "train"), test = read_part(src, "t10k");
    if (train.count() < n_train + n_val || test.count() < n_test)
        throw Failure("the files hold " + std::to_string(train.count()) + " training and " +
                      std::to_string(test.count()) + " test pictures, fewer than asked for");
    std::error_code ec;
    if (!force && fs::exists(out / "captions.csv", ec))
        throw Failure(out.string() + " already holds captions.csv (pass --force to replace it)");

    std::string csv = "image,caption,split\n";
    long written = 0;
    auto write = [&](const Part& part, std::size_t first, long n, const char* split) {
        fs::create_directories(out / split, ec);
        if (ec) throw Failure("cannot create " + (out / split).string() + ": " + ec.message());
        for (long k = 0; k < n; ++k) {
            char name[32];
            std::snprintf(name, sizeof name, "%s/%05ld.png", split, k);
            const std::size_t i = first + static_cast<std::size_t>(k);
            const int w = static_cast<int>(part.images.shape[2]), h = static_cast<int>(part.images.shape[1]);
            if (!stbi_write_png((out / name).string().c_str(), w, h, 1, part.pixels(i), w))
                throw Failure("cannot write " + (out / name).string() + " (is --out writable?)");
            csv += std::string(name) + "," + kClassNames[part.label(i)] + "," + split + "\n";
            ++written;
        }
    };
    write(train, 0, n_train, "train");
    write(train, train.count() - static_cast<std::size_t>(n_val), n_val, "val");
    write(test, 0, n_test, "test");
    // captions.csv last (through a temporary file and a rename): a folder with it is complete.
    const fs::path tmp = out / "captions.csv.tmp";
    {
        std::ofstream f(tmp, std::ios::binary);
        f << csv;
        if (!f.flush()) throw Failure("cannot write " + tmp.string());
    }
    fs::rename(tmp, out / "captions.csv", ec);
    if (ec) throw Failure("cannot rename " + tmp.string() + ": " + ec.message());
    std::printf("wrote %ld images (%ld train, %ld val, %ld test) and %s\n", written, n_train, n_val, n_test,
                (out / "captions.csv").string().c_str());
    return 0;
}

}  // namespace

int main(int argc, char** argv) {
    try {
        return run(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "seemoe_fashion_mnist: error: %s\n", e.what());
        return 2;
    }
}
