// fuzz/fuzz_config.cpp — what a checkpoint's metadata holds besides tensors: the model config
// (vision-language and text-only), the vocabulary, and the training state's step and Rng.
// The first byte picks the reader, the rest is its text:
//   0  config JSON   -> check_config_keys, config_from_json, check_config (the rules of nn/vlm.hpp)
//   1  text config   -> check_config_keys, text_config_from_json, check_decoder_config
//   2  vocabulary    -> CharTokenizer::from_json
//   3  step and Rng  -> parse_step, rng_from_string
// Accepted: written back (config_to_json, to_json, rng_to_string) and read again it is equal,
// and an accepted config passes find_config_issue. Refused: seemoe::Error only.
#include <seemoe/nn/checkpoint.hpp>

#include "fuzz_common.hpp"

namespace {

using seemoe::io::Json;
namespace nn = seemoe::nn;

void vlm_config(std::string_view text) {
    nn::VLMConfig config;
    try {
        const Json j = Json::parse(text);
        nn::check_config_keys(j, nn::vlm_config_keys());
        config = nn::config_from_json(j);
        nn::check_config(config, "[fuzz]");
    } catch (const seemoe::Error&) {
        return;
    }
    FUZZ_CHECK(!nn::find_config_issue(config), "check_config accepted a config with an issue");
    const std::string written = nn::config_to_json(config).dump();
    const nn::VLMConfig again = nn::config_from_json(Json::parse(written));
    FUZZ_CHECK(nn::config_to_json(again).dump() == written, "config changed in a round trip");
}

void text_config(std::string_view text) {
    nn::DecoderConfig config;
    try {
        const Json j = Json::parse(text);
        nn::check_config_keys(j, nn::text_config_keys());
        config = nn::text_config_from_json(j);
        nn::check_decoder_config(config, "[fuzz]", "decoder.");
    } catch (const seemoe::Error&) {
        return;
    }
    const std::string written = nn::text_config_to_json(config).dump();
    const nn::DecoderConfig again = nn::text_config_from_json(Json::parse(written));
    FUZZ_CHECK(nn::text_config_to_json(again).dump() == written, "text config changed in a round trip");
}

void vocabulary(std::string_view text) {
    seemoe::data::CharTokenizer tokenizer;
    try {
        tokenizer = seemoe::data::CharTokenizer::from_json(text);
    } catch (const seemoe::Error&) {
        return;
    }
    FUZZ_CHECK(seemoe::data::CharTokenizer::from_json(tokenizer.to_json()) == tokenizer,
               "vocabulary changed in a round trip");
}

void step_and_rng(std::string_view text) {
    const std::string s(text);
    try {
        const seemoe::Index step = nn::parse_step(s, "fuzz");
        FUZZ_CHECK(step >= 0, "parse_step accepted a negative step");
    } catch (const seemoe::Error&) {
    }
    seemoe::Rng rng(0);
    try {
        nn::rng_from_string(rng, s);
    } catch (const seemoe::Error&) {
        return;
    }
    seemoe::Rng again(1);
    nn::rng_from_string(again, nn::rng_to_string(rng));
    FUZZ_CHECK(nn::rng_to_string(again) == nn::rng_to_string(rng), "Rng state changed in a round trip");
    FUZZ_CHECK(again.next_u64() == rng.next_u64(), "restored Rng draws differently");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    if (size == 0) return 0;
    const std::string_view text = fuzz::as_text(data + 1, size - 1);
    switch (data[0] % 4) {
        case 0: vlm_config(text); break;
        case 1: text_config(text); break;
        case 2: vocabulary(text); break;
        default: step_and_rng(text); break;
    }
    return 0;
}
