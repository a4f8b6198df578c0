// fuzz/fuzz_json.cpp — the strict JSON parser (io/json.hpp), which reads every safetensors header,
// checkpoint config, vocabulary and training state.
// Accepted: dump() parses back to an equal value, and dumping that gives the same text (the
// written form is canonical). Refused: seemoe::Error only.
#include <seemoe/io/json.hpp>

#include "fuzz_common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using seemoe::io::Json;
    Json value;
    try {
        value = Json::parse(fuzz::as_text(data, size));
    } catch (const seemoe::Error&) {
        return 0;
    }
    const std::string text = value.dump();
    Json again;
    try {
        again = Json::parse(text);
    } catch (const seemoe::Error& e) {
        std::fprintf(stderr, "%s\n", e.what());
        FUZZ_CHECK(false, "the dump of an accepted value does not parse");
    }
    FUZZ_CHECK(again == value, "parse(dump(v)) differs from v");
    FUZZ_CHECK(again.dump() == text, "dump is not canonical");
    return 0;
}
