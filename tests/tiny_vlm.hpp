// tests/tiny_vlm.hpp — the tiny VisionMoELanguageModel configuration the unit tests build on.
//
// 8x8 images in 4x4 patches (4 patches), ViT and decoder 8 wide with 2 heads, 2 decoder layers of
// 4 experts top-2, a 7-token vocabulary (pad 0, <bos> 1, <eos> 2), no dropout: small enough that a
// double-precision gradient check of the whole model takes milliseconds. Each test sets the fields
// it is about on the returned config.
#pragma once

#include <seemoe/nn/vlm.hpp>

namespace seemoe::testing {

inline nn::VLMConfig tiny_vlm_config() {
    nn::VLMConfig c;
    c.vision.image_size = 8;
    c.vision.patch_size = 4;
    c.vision.dim = 8;
    c.vision.n_blocks = 1;
    c.vision.n_heads = 2;
    c.vision.mlp_ratio = 2;
    c.vision.dropout = 0.0;
    c.decoder.vocab_size = 7;
    c.decoder.n_embd = 8;
    c.decoder.n_head = 2;
    c.decoder.n_layer = 2;
    c.decoder.num_experts = 4;
    c.decoder.top_k = 2;
    c.decoder.expert_ratio = 2;
    c.decoder.block_size = 24;
    c.decoder.dropout = 0.0;
    c.pad_id = 0;
    c.bos_id = 1;
    c.eos_id = 2;
    return c;
}

}  // namespace seemoe::testing
