// fuzz/fuzz_safetensors.cpp — the safetensors reader (io/safetensors.hpp): header length, JSON
// header, dtypes, shapes, offsets, tiling of the data section, metadata.
// Accepted: saving what was read (as F32) and reading it again gives the same names, shapes,
// bit patterns and metadata; every element count fits in the file. Refused: seemoe::Error only.
#include <cstring>

#include <seemoe/io/safetensors.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string in = (fuzz::scratch() / "in.safetensors").string();
    const std::string out = (fuzz::scratch() / "out.safetensors").string();
    fuzz::write_file(in, fuzz::as_text(data, size));
    seemoe::io::SafetensorsFile file;
    try {
        file = seemoe::io::load_safetensors<float>(in);
    } catch (const seemoe::Error&) {
        return 0;
    }
    // Every dtype takes at least one byte per element, so no tensor can claim more elements than bytes.
    for (const auto& [name, tensor] : file.tensors)
        FUZZ_CHECK(static_cast<std::size_t>(tensor.numel()) <= size, "a tensor has more elements than the file has bytes");
    seemoe::io::save_safetensors(out, file.tensors, file.metadata);
    const seemoe::io::SafetensorsFile again = seemoe::io::load_safetensors<float>(out);
    FUZZ_CHECK(again.metadata == file.metadata, "metadata changed in a round trip");
    FUZZ_CHECK(again.tensors.size() == file.tensors.size(), "tensor count changed in a round trip");
    for (std::size_t i = 0; i < file.tensors.size(); ++i) {
        const auto& [name, tensor] = file.tensors[i];
        const seemoe::Tensor<float>* other = again.find(name);
        FUZZ_CHECK(other != nullptr, "a tensor was lost in a round trip");
        FUZZ_CHECK(other->shape() == tensor.shape(), "a shape changed in a round trip");
        FUZZ_CHECK(tensor.numel() == 0 || std::memcmp(other->data(), tensor.data(),
                                                      static_cast<std::size_t>(tensor.numel()) * sizeof(float)) == 0,
                   "values changed in a round trip");
    }
    return 0;
}
