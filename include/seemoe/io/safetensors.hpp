// seemoe/io/safetensors.hpp — read and write tensors in the safetensors format.
//
// A safetensors file is: 8 bytes, the header length N as a little-endian u64; N bytes of JSON,
//   {"__metadata__":{"key":"value",...},
//    "name":{"dtype":"F32","shape":[2,3],"data_offsets":[begin,end]},...}
// padded with spaces so that N is a multiple of 8; then the data section, each tensor's values
// little-endian and row-major at [begin, end) counted from the start of the data section. This
// is the Hugging Face format, so PyTorch (safetensors.torch.load_file) reads our checkpoints and
// we read theirs. The writer puts __metadata__ first (omitted when empty) and the tensors in the
// order given, back to back.
//
//   save_safetensors("model.safetensors", {{"fc.weight", w}, {"fc.bias", b}}, {{"config", json}});
//   SafetensorsFile file = load_safetensors("model.safetensors");
//   Tensorf w2 = file.at("fc.weight");
//
// Convention: every write is atomic (io/file.hpp: path + ".tmp", renamed over `path` only when
// complete), so a crash never leaves a half-written checkpoint. Reading checks everything
// (sizes, dtypes, offsets that overlap, leave gaps or disagree with the shape) and throws
// seemoe::Error naming the file and the tensor. F32 loads bit for bit; F64, F16, BF16 and the integer dtypes are
// converted to the tensor's scalar type.
#pragma once

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "../core/tensor.hpp"
#include "file.hpp"
#include "json.hpp"

namespace seemoe::io {

namespace detail {

inline bool host_is_little_endian() {
    const std::uint16_t probe = 1;
    unsigned char first_byte = 0;
    std::memcpy(&first_byte, &probe, 1);
    return first_byte == 1;
}

// Unsigned integer of the same width as U, for bit-level little-endian loads and stores.
template <std::size_t Bytes> struct UintOfSize;
template <> struct UintOfSize<1> { using type = std::uint8_t; };
template <> struct UintOfSize<2> { using type = std::uint16_t; };
template <> struct UintOfSize<4> { using type = std::uint32_t; };
template <> struct UintOfSize<8> { using type = std::uint64_t; };

// Reads a U stored little-endian at `bytes`, whatever the host byte order.
template <typename U>
U load_little_endian(const unsigned char* bytes) {
    using Bits = typename UintOfSize<sizeof(U)>::type;
    Bits bits = 0;
    for (std::size_t i = 0; i < sizeof(U); ++i) bits |= static_cast<Bits>(static_cast<Bits>(bytes[i]) << (8 * i));
    U value;
    std::memcpy(&value, &bits, sizeof(U));
    return value;
}

template <typename U>
void store_little_endian(U value, unsigned char* bytes) {
    using Bits = typename UintOfSize<sizeof(U)>::type;
    Bits bits;
    std::memcpy(&bits, &value, sizeof(U));
    for (std::size_t i = 0; i < sizeof(U); ++i) bytes[i] = static_cast<unsigned char>(bits >> (8 * i));
}

// IEEE binary16 -> float (exact: every half is a float).
inline float half_to_float(std::uint16_t h) {
    const bool negative = (h >> 15) != 0;
    const unsigned exponent = (h >> 10) & 0x1Fu;
    const unsigned mantissa = h & 0x3FFu;
    float magnitude;
    if (exponent == 0) {
        magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // zero or subnormal
    } else if (exponent == 31) {
        magnitude = mantissa ? std::numeric_limits<float>::quiet_NaN()
                             : std::numeric_limits<float>::infinity();
    } else {
        const std::uint32_t bits = ((exponent + 112u) << 23) | (mantissa << 13);  // rebias 15->127
        std::memcpy(&magnitude, &bits, 4);
    }
    return negative ? -magnitude : magnitude;
}

// bfloat16 is the top half of a float.
inline float bfloat16_to_float(std::uint16_t b) {
    const std::uint32_t bits = static_cast<std::uint32_t>(b) << 16;
    float value;
    std::memcpy(&value, &bits, 4);
    return value;
}

enum class Dtype { Bool, U8, I8, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64, F8E4M3, F8E5M2 };

struct DtypeInfo {
    Dtype dtype;
    const char* name;  // as spelled in the header
    int size;          // bytes per element
    bool readable;     // whether we convert it (8-bit floats are not)
};

inline const std::vector<DtypeInfo>& dtype_table() {
    static const std::vector<DtypeInfo> table = {
        {Dtype::Bool, "BOOL", 1, true},   {Dtype::U8, "U8", 1, true},
        {Dtype::I8, "I8", 1, true},       {Dtype::I16, "I16", 2, true},
        {Dtype::U16, "U16", 2, true},     {Dtype::F16, "F16", 2, true},
        {Dtype::BF16, "BF16", 2, true},   {Dtype::I32, "I32", 4, true},
        {Dtype::U32, "U32", 4, true},     {Dtype::F32, "F32", 4, true},
        {Dtype::I64, "I64", 8, true},     {Dtype::U64, "U64", 8, true},
        {Dtype::F64, "F64", 8, true},     {Dtype::F8E4M3, "F8_E4M3", 1, false},
        {Dtype::F8E5M2, "F8_E5M2", 1, false},
    };
    return table;
}

inline const DtypeInfo* find_dtype(std::string_view name) {
    for (const DtypeInfo& info : dtype_table())
        if (name == info.name) return &info;
    return nullptr;
}

// The dtype a Tensor<T> is written as.
template <typename T> struct NativeDtype;
template <> struct NativeDtype<float> { static constexpr Dtype value = Dtype::F32; static constexpr const char* name = "F32"; };
template <> struct NativeDtype<double> { static constexpr Dtype value = Dtype::F64; static constexpr const char* name = "F64"; };

// n little-endian elements of `dtype` at `bytes` -> n values of T.
template <typename T>
void convert_elements(Dtype dtype, const unsigned char* bytes, Index n, T* out) {
    const auto each = [&](auto element_type, int size, auto to_value) {
        using E = decltype(element_type);
        for (Index i = 0; i < n; ++i)
            out[i] = static_cast<T>(to_value(load_little_endian<E>(bytes + i * size)));
    };
    const auto same = [](auto v) { return v; };
    switch (dtype) {
        case Dtype::Bool: each(std::uint8_t{}, 1, [](std::uint8_t v) { return v != 0 ? 1 : 0; }); break;
        case Dtype::U8: each(std::uint8_t{}, 1, same); break;
        case Dtype::I8: each(std::int8_t{}, 1, same); break;
        case Dtype::I16: each(std::int16_t{}, 2, same); break;
        case Dtype::U16: each(std::uint16_t{}, 2, same); break;
        case Dtype::F16: each(std::uint16_t{}, 2, half_to_float); break;
        case Dtype::BF16: each(std::uint16_t{}, 2, bfloat16_to_float); break;
        case Dtype::I32: each(std::int32_t{}, 4, same); break;
        case Dtype::U32: each(std::uint32_t{}, 4, same); break;
        case Dtype::F32: each(float{}, 4, same); break;
        case Dtype::I64: each(std::int64_t{}, 8, same); break;
        case Dtype::U64: each(std::uint64_t{}, 8, same); break;
        case Dtype::F64: each(double{}, 8, same); break;
        default: throw Error("[safetensors] internal error: no conversion for this dtype");
    }
}

// What the header says about one tensor, checked against itself.
struct TensorEntry {
    std::string name;
    const DtypeInfo* dtype = nullptr;
    Shape shape;
    std::uint64_t begin = 0, end = 0;
};

// Header sizes above this are refused before allocating (the reference reader's limit too).
constexpr std::uint64_t kMaxHeaderBytes = 100000000;

}  // namespace detail

// A loaded file: tensors in header order, plus the __metadata__ strings.
template <typename T>
struct BasicSafetensorsFile {
    std::vector<std::pair<std::string, Tensor<T>>> tensors;
    std::map<std::string, std::string> metadata;
    std::string path;  // where it was read from, for error messages

    const Tensor<T>* find(std::string_view name) const {
        for (const auto& entry : tensors)
            if (entry.first == name) return &entry.second;
        return nullptr;
    }
    bool contains(std::string_view name) const { return find(name) != nullptr; }
    // The tensor called `name`, or Error naming the file.
    const Tensor<T>& at(std::string_view name) const {
        const Tensor<T>* found = find(name);
        SEEMOE_CHECK(found, "[safetensors] no tensor named '", name, "' in '", path, "' (it holds ",
                     tensors.size(), " tensors)");
        return *found;
    }
};
using SafetensorsFile = BasicSafetensorsFile<float>;

namespace detail {

template <typename T>
std::string safetensors_header(const std::vector<std::pair<std::string, Tensor<T>>>& tensors,
                               const std::map<std::string, std::string>& metadata) {
    Json::Object members;
    members.reserve(tensors.size() + 1);
    if (!metadata.empty()) {
        Json::Object meta;
        for (const auto& [key, value] : metadata) meta.emplace_back(key, Json(value));
        members.emplace_back("__metadata__", Json(std::move(meta)));
    }
    std::int64_t offset = 0;
    for (const auto& [name, tensor] : tensors) {
        Json::Array shape(tensor.shape().begin(), tensor.shape().end());
        const std::int64_t bytes = tensor.numel() * static_cast<std::int64_t>(sizeof(T));
        Json::Object info;
        info.emplace_back("dtype", Json(NativeDtype<T>::name));
        info.emplace_back("shape", Json(std::move(shape)));
        info.emplace_back("data_offsets", Json(Json::Array{Json(offset), Json(offset + bytes)}));
        members.emplace_back(name, Json(std::move(info)));
        offset += bytes;
    }
    std::string header = Json(std::move(members)).dump();
    // Spaces up to a multiple of 8, so the data section starts 8-byte aligned.
    header.append((8 - header.size() % 8) % 8, ' ');
    return header;
}

template <typename T>
void save_safetensors_impl(const std::string& path,
                           const std::vector<std::pair<std::string, Tensor<T>>>& tensors,
                           const std::map<std::string, std::string>& metadata) {
    std::vector<std::string_view> names;
    names.reserve(tensors.size());
    for (const auto& [name, tensor] : tensors) {
        SEEMOE_CHECK(tensor.defined(), "[safetensors] cannot save '", path, "': tensor '", name,
                     "' is undefined");
        SEEMOE_CHECK(name != "__metadata__", "[safetensors] cannot save '", path,
                     "': '__metadata__' is reserved and cannot name a tensor");
        names.emplace_back(name);
    }
    std::sort(names.begin(), names.end());
    const auto dup = std::adjacent_find(names.begin(), names.end());
    SEEMOE_CHECK(dup == names.end(), "[safetensors] cannot save '", path, "': tensor name '",
                 dup == names.end() ? std::string_view() : *dup, "' appears twice");

    // Built before the temp file is opened: a bad metadata string fails without touching disk.
    const std::string header = safetensors_header(tensors, metadata);
    write_atomically(path, "[safetensors]", [&](std::ostream& out) {
        unsigned char length[8];
        store_little_endian<std::uint64_t>(header.size(), length);
        out.write(reinterpret_cast<const char*>(length), 8);
        out.write(header.data(), static_cast<std::streamsize>(header.size()));
        const bool little = host_is_little_endian();
        std::vector<unsigned char> swapped;
        for (const auto& entry : tensors) {
            const Tensor<T>& tensor = entry.second;
            const Index n = tensor.numel();
            if (n == 0) continue;
            if (little) {
                out.write(reinterpret_cast<const char*>(tensor.data()),
                          static_cast<std::streamsize>(n * sizeof(T)));
            } else {
                swapped.resize(static_cast<std::size_t>(n) * sizeof(T));
                for (Index i = 0; i < n; ++i)
                    store_little_endian<T>(tensor.data()[i], swapped.data() + i * sizeof(T));
                out.write(reinterpret_cast<const char*>(swapped.data()),
                          static_cast<std::streamsize>(swapped.size()));
            }
        }
    });
}

// Checks one header entry: an object with exactly dtype, shape and data_offsets, consistent
// with each other and with the size of the data section.
inline TensorEntry parse_tensor_entry(const std::string& where, const std::string& name,
                                      const Json& info, std::uint64_t data_size) {
    const std::string tensor = where + ": tensor '" + name + "'";
    SEEMOE_CHECK(info.is_object(), tensor, " must be described by a JSON object, got ",
                 Json::type_name(info.type()));
    for (const auto& member : info.as_object())
        SEEMOE_CHECK(member.first == "dtype" || member.first == "shape" ||
                         member.first == "data_offsets",
                     tensor, " has an unexpected field \"", member.first, "\"");
    const Json* dtype = info.find("dtype");
    const Json* shape = info.find("shape");
    const Json* offsets = info.find("data_offsets");
    SEEMOE_CHECK(dtype && shape && offsets, tensor,
                 " needs the fields \"dtype\", \"shape\" and \"data_offsets\"");

    TensorEntry entry;
    entry.name = name;
    SEEMOE_CHECK(dtype->is_string(), tensor, " has a dtype that is not a string");
    entry.dtype = find_dtype(dtype->as_string());
    SEEMOE_CHECK(entry.dtype, tensor, " has an unknown dtype \"", dtype->as_string(), "\"");
    SEEMOE_CHECK(entry.dtype->readable, tensor, " has dtype ", entry.dtype->name,
                 ", which seemoe cannot convert");

    SEEMOE_CHECK(shape->is_array(), tensor, " has a shape that is not an array");
    std::uint64_t count = 1;
    bool overflow = false;
    for (const Json& dim : shape->as_array()) {
        SEEMOE_CHECK(dim.is_integer() && dim.as_int() >= 0, tensor,
                     " has a shape entry that is not a non-negative integer: ", dim.dump());
        entry.shape.push_back(dim.as_int());
    }
    // Multiplied with an overflow check (a hostile header could claim [2^40, 2^40]); a zero
    // anywhere makes the tensor empty whatever the other sizes are.
    if (std::find(entry.shape.begin(), entry.shape.end(), 0) != entry.shape.end()) {
        count = 0;
    } else {
        for (Index dim : entry.shape) {
            const auto d = static_cast<std::uint64_t>(dim);
            if (count > std::numeric_limits<std::uint64_t>::max() / 8 / d) overflow = true;
            else count *= d;
        }
    }
    SEEMOE_CHECK(!overflow && count <= static_cast<std::uint64_t>(std::numeric_limits<Index>::max()),
                 tensor, " has an impossibly large shape ", shape->dump());

    SEEMOE_CHECK(offsets->is_array() && offsets->size() == 2 && offsets->at(0).is_integer() &&
                     offsets->at(1).is_integer() && offsets->at(0).as_int() >= 0 &&
                     offsets->at(1).as_int() >= offsets->at(0).as_int(),
                 tensor, " has data_offsets ", offsets->dump(),
                 "; expected [begin, end] with 0 <= begin <= end");
    entry.begin = static_cast<std::uint64_t>(offsets->at(0).as_int());
    entry.end = static_cast<std::uint64_t>(offsets->at(1).as_int());
    const std::uint64_t expected = count * static_cast<std::uint64_t>(entry.dtype->size);
    SEEMOE_CHECK(entry.end - entry.begin == expected, tensor, " has data_offsets ", offsets->dump(),
                 " spanning ", entry.end - entry.begin, " bytes, but dtype ", entry.dtype->name,
                 " and shape ", shape_str(entry.shape), " need ", expected, " bytes");
    SEEMOE_CHECK(entry.end <= data_size, tensor, " has data_offsets ", offsets->dump(),
                 " past the end of the ", data_size, "-byte data section (truncated file?)");
    return entry;
}

// Like the reference implementation, the tensors must tile the data section exactly: no
// overlaps (two names, one buffer) and no unclaimed bytes (room for hidden content).
inline void check_tiling(const std::string& where, std::vector<const TensorEntry*> entries,
                         std::uint64_t data_size) {
    std::sort(entries.begin(), entries.end(), [](const TensorEntry* a, const TensorEntry* b) {
        return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
    });
    std::uint64_t covered = 0;
    const TensorEntry* previous = nullptr;
    for (const TensorEntry* entry : entries) {
        SEEMOE_CHECK(entry->begin >= covered, where, ": tensors '", previous ? previous->name : "",
                     "' and '", entry->name, "' overlap (bytes ", entry->begin, " to ", covered,
                     " of the data section)");
        SEEMOE_CHECK(entry->begin == covered, where, ": bytes ", covered, " to ", entry->begin,
                     " of the data section belong to no tensor (before tensor '", entry->name,
                     "')");
        covered = entry->end;
        previous = entry;
    }
    SEEMOE_CHECK(covered == data_size, where, ": the last ", data_size - covered,
                 " bytes of the data section belong to no tensor");
}

}  // namespace detail

// Writes `tensors` (float as F32, double as F64) and the `metadata` strings to `path`,
// atomically. Names must be unique; the order is kept.
inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, Tensor<float>>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    detail::save_safetensors_impl(path, tensors, metadata);
}
inline void save_safetensors(const std::string& path,
                             const std::vector<std::pair<std::string, Tensor<double>>>& tensors,
                             const std::map<std::string, std::string>& metadata = {}) {
    detail::save_safetensors_impl(path, tensors, metadata);
}

// Reads a safetensors file into Tensor<T> leaves (requires_grad off), converting other dtypes.
template <typename T = float>
BasicSafetensorsFile<T> load_safetensors(const std::string& path) {
    const std::string where = "[safetensors] '" + path + "'";
    const InputFile in(path, "[safetensors]");
    const std::uint64_t file_size = in.size();
    SEEMOE_CHECK(file_size >= 8, where, ": file too short (", file_size,
                 " bytes) to hold the 8-byte header length");

    unsigned char length_bytes[8];
    in.read_at(0, length_bytes, 8);
    const auto header_size = detail::load_little_endian<std::uint64_t>(length_bytes);
    SEEMOE_CHECK(header_size <= file_size - 8, where, ": header length ", header_size,
                 " runs past the end of the ", file_size, "-byte file (truncated or not safetensors)");
    SEEMOE_CHECK(header_size <= detail::kMaxHeaderBytes, where, ": header length ", header_size,
                 " exceeds the limit of ", detail::kMaxHeaderBytes, " bytes");

    std::string header(static_cast<std::size_t>(header_size), '\0');
    in.read_at(8, header.data(), header.size());
    SEEMOE_CHECK(!header.empty() && header[0] == '{', where,
                 ": the header does not start with '{' (not a safetensors file?)");
    Json root;
    try {
        root = Json::parse(header);
    } catch (const Error& e) {
        throw Error(seemoe::detail::concat(where, ": the header is not valid JSON (byte offsets "
                                                  "count from the header start): ", e.what()));
    }

    const std::uint64_t data_start = 8 + header_size;
    const std::uint64_t data_size = file_size - data_start;
    BasicSafetensorsFile<T> file;
    file.path = path;
    std::vector<detail::TensorEntry> entries;
    entries.reserve(root.size());
    for (const auto& [key, value] : root.as_object()) {
        if (key == "__metadata__") {
            SEEMOE_CHECK(value.is_object(), where, ": __metadata__ must be an object of strings");
            for (const auto& [meta_key, meta_value] : value.as_object()) {
                SEEMOE_CHECK(meta_value.is_string(), where, ": __metadata__ entry '", meta_key,
                             "' must be a string, got ", Json::type_name(meta_value.type()));
                file.metadata.emplace(meta_key, meta_value.as_string());
            }
            continue;
        }
        entries.push_back(detail::parse_tensor_entry(where, key, value, data_size));
    }
    std::vector<const detail::TensorEntry*> pointers;
    for (const auto& entry : entries) pointers.push_back(&entry);
    detail::check_tiling(where, std::move(pointers), data_size);

    // F32 into Tensor<float> (or F64 into Tensor<double>) on a little-endian host reads straight
    // into the tensor; everything else goes through a byte buffer and a conversion.
    const bool direct_ok = detail::host_is_little_endian();
    std::vector<unsigned char> bytes;
    file.tensors.reserve(entries.size());
    for (const detail::TensorEntry& entry : entries) {
        Tensor<T> tensor = Tensor<T>::empty(entry.shape);
        const auto span = static_cast<std::size_t>(entry.end - entry.begin);
        if (span > 0) {
            const bool direct = direct_ok && entry.dtype->dtype == detail::NativeDtype<T>::value;
            if (!direct) bytes.resize(static_cast<std::size_t>(span));
            char* target = direct ? reinterpret_cast<char*>(tensor.data())
                                  : reinterpret_cast<char*>(bytes.data());
            in.read_at(data_start + entry.begin, target, span);
            if (!direct)
                detail::convert_elements<T>(entry.dtype->dtype, bytes.data(), tensor.numel(),
                                            tensor.data());
        }
        file.tensors.emplace_back(entry.name, std::move(tensor));
    }
    return file;
}

}  // namespace seemoe::io
