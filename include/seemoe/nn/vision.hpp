// seemoe/nn/vision.hpp — the ViT image encoder: PatchEmbedding, the pre-LN encoder Block, ViT.
//
// An image (3, S, S) is cut into P = (S/p)^2 non-overlapping p x p patches. PatchEmbedding is
// nn.Conv2d(3, D, kernel=p, stride=p) computed as patchify (ops/shape_ops.hpp) + one GEMM: each patch becomes a row of
// 3*p*p values ordered (channel, row, column) — the order of the flattened Conv2d weight
// (D, 3, p, p) — so weight.reshape(D, 3*p*p) multiplies it directly. Patches are numbered row-major
// over the grid. The ViT prepends a learned CLS token, adds learned positions, runs pre-LN blocks
// (x + attn(ln1(x)); x + mlp(ln2(x)), GELU MLP) and a final LayerNorm. forward_cls() returns the
// CLS feature alone and skips the last block's work on the other rows, which nothing reads then.
#pragma once

#include <string>
#include <vector>

#include "../ops/elementwise.hpp"
#include "../ops/functional.hpp"
#include "../ops/shape_ops.hpp"
#include "attention.hpp"
#include "layer_norm.hpp"
#include "mlp.hpp"

namespace seemoe::nn {

template <typename T>
class PatchEmbedding : public Module<T> {
public:
    PatchEmbedding() = default;
    PatchEmbedding(Index channels, Index patch, Index dim, Rng& rng) : channels(channels), patch(patch) {
        // nn.Conv2d's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = C*p*p.
        const T bound = T(1) / std::sqrt(static_cast<T>(channels * patch * patch));
        weight = detail::parameter(Tensor<T>::rand({dim, channels, patch, patch}, rng, -bound, bound));
        bias = detail::parameter(Tensor<T>::rand({dim}, rng, -bound, bound));
    }

    Tensor<T> forward(const Tensor<T>& images) const {                           // (B, 3, S, S)
        SEEMOE_CHECK(images.dim() == 4 && images.size(1) == channels, "[PatchEmbedding] expected (B, ",
                     channels, ", S, S) images, got ", shape_str(images.shape()));
        Tensor<T> patches = patchify(images, patch);                              // (B, P, 3*p*p)
        Tensor<T> w = reshape(weight, {weight.size(0), channels * patch * patch}); // (D, 3*p*p)
        return linear(patches, w, bias);                                          // (B, P, D)
    }

    Index channels = 3, patch = 16;
    Tensor<T> weight;  // (D, 3, p, p) like nn.Conv2d
    Tensor<T> bias;    // (D)

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->param(v, prefix, "weight", weight);
        this->param(v, prefix, "bias", bias);
    }
};

// Pre-LN transformer block with an MLP feed-forward: x + attn(ln1(x)), then x + mlp(ln2(x)).
template <typename T>
class Block : public Module<T> {
public:
    Block() = default;
    Block(Index dim, Index n_heads, Index mlp_hidden, Activation act, bool causal, T dropout_p, Rng& rng)
        : ln1(dim), attn(dim, n_heads, causal, dropout_p, rng), ln2(dim),
          mlp(dim, mlp_hidden, dim, act, dropout_p, rng) {}

    Tensor<T> forward(const Tensor<T>& x, Rng& rng) const {                        // (B, T, C)
        Tensor<T> h = add(x, attn.forward(ln1.forward(x), rng));                   // (B, T, C)
        return add(h, mlp.forward(ln2.forward(h), rng));                           // (B, T, C)
    }

    // The block's output for token 0 alone (B, 1, C): every token still gives its key and value,
    // but only token 0 asks a query, so proj and the MLP run on one row per image instead of T.
    // Equals slice(forward(x, rng), 1, 0, 1), dropout included: the masks are drawn for all T
    // rows, exactly as forward draws them, and row 0's are applied, so the Rng ends up in the
    // same state. (Only rounding may differ: a product over B rows sums in another order than
    // one over B*T rows.)
    Tensor<T> forward_first_token(const Tensor<T>& x, Rng& rng) const {            // (B, T, C)
        const Index B = x.size(0), T_all = x.size(1), C = x.size(2), H = attn.n_heads, D = C / H;
        const Index keys = attn.causal ? 1 : x.size(1);  // causal: token 0 sees itself only
        Tensor<T> q_k_v = attn.qkv.forward(ln1.forward(x));                        // (B, T, 3C)
        auto heads = [&](Index part, Index rows) {
            Tensor<T> t = narrow(narrow(q_k_v, 1, 0, rows), 2, part * C, C);       // (B, rows, C)
            return permute(reshape(t, {B, rows, H, D}), {0, 2, 1, 3});             // (B, H, rows, D)
        };
        Tensor<T> y = scaled_dot_product_attention(heads(0, 1), heads(1, keys), heads(2, keys),
                                                   false);                          // (B, H, 1, D)
        y = reshape(permute(y, {0, 2, 1, 3}), {B, 1, C});                         // (B, 1, C)
        Tensor<T> h = add(narrow(x, 1, 0, 1), first_token_dropout(attn.proj.forward(y), T_all, attn.drop, rng));
        Tensor<T> m = mlp.fc2.forward(activate(mlp.fc1.forward(ln2.forward(h)), mlp.act));  // (B, 1, C)
        return add(h, first_token_dropout(m, T_all, mlp.drop, rng));               // (B, 1, C)
    }

    LayerNorm<T> ln1;
    MultiHeadAttention<T> attn;
    LayerNorm<T> ln2;
    MLP<T> mlp;

private:
    // Dropout of y (B, 1, C), which stands for row 0 of a (B, T, C) activation: draws the Rng as
    // dropout over the whole (B, T, C) would and applies row 0's mask (a constant factor).
    static Tensor<T> first_token_dropout(const Tensor<T>& y, Index tokens, const Dropout<T>& drop, Rng& rng) {
        if (!drop.is_training() || drop.p == 0) return y;
        const Index B = y.size(0), C = y.size(2);
        std::vector<unsigned char> keep(static_cast<std::size_t>(B * tokens * C));  // (B, T, C)
        seemoe::detail::draw_dropout_keep(keep.data(), B * tokens * C, static_cast<double>(drop.p), rng);
        const T scale = T(1) / (T(1) - drop.p);
        Tensor<T> mask = Tensor<T>::empty({B, 1, C});                              // (B, 1, C)
        for (Index b = 0; b < B; ++b)
            for (Index c = 0; c < C; ++c) mask.data()[b * C + c] = keep[(b * tokens) * C + c] ? scale : T(0);
        return mul(y, mask);                                                       // (B, 1, C)
    }

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "ln1", ln1);
        this->child(v, prefix, "attn", attn);
        this->child(v, prefix, "ln2", ln2);
        this->child(v, prefix, "mlp", mlp);
    }
};

struct ViTConfig {
    Index image_size = 96;   // S: input images are (3, S, S)
    Index patch_size = 16;   // p: S must be a multiple
    Index channels = 3;
    Index dim = 512;         // D: width of the encoder
    Index n_blocks = 3;
    Index n_heads = 8;
    Index mlp_ratio = 4;     // MLP hidden = mlp_ratio * D
    double dropout = 0.1;
    Index num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
};

template <typename T>
class ViT : public Module<T> {
public:
    ViT() = default;
    ViT(const ViTConfig& config, Rng& rng)
        : config(config),
          patch_embedding(config.channels, config.patch_size, config.dim, rng),
          drop(static_cast<T>(config.dropout)),
          layer_norm(config.dim) {
        SEEMOE_CHECK(config.image_size % config.patch_size == 0, "[ViT] image_size ", config.image_size,
                     " is not a multiple of patch_size ", config.patch_size);
        cls_token = detail::parameter(Tensor<T>::zeros({1, 1, config.dim}));
        pos_embedding = detail::parameter(
            Tensor<T>::randn({1, config.num_patches() + 1, config.dim}, rng, T(0), T(0.02)));
        for (Index i = 0; i < config.n_blocks; ++i)
            blocks.emplace_back(config.dim, config.n_heads, config.mlp_ratio * config.dim, Activation::GELU,
                                /*causal=*/false, static_cast<T>(config.dropout), rng);
    }

    // images (B, 3, S, S) -> (B, 1+P, D): the CLS token first, then the patches, after ln.
    Tensor<T> forward(const Tensor<T>& images, Rng& rng) const {
        Tensor<T> patches = patch_embedding.forward(images);                        // (B, P, D)
        const Index B = patches.size(0), D = config.dim;
        Tensor<T> cls = add(Tensor<T>::zeros({B, 1, D}), cls_token);               // (B, 1, D)
        Tensor<T> x = add(concat(std::vector<Tensor<T>>{cls, patches}, 1), pos_embedding);  // (B, 1+P, D)
        x = drop.forward(x, rng);
        for (const auto& block : blocks) x = block.forward(x, rng);                 // (B, 1+P, D)
        return layer_norm.forward(x);                                               // (B, 1+P, D)
    }

    // The CLS feature alone, (B, 1, D) = slice(forward(images, rng), 1, 0, 1), computed with the
    // last block's proj and MLP on the CLS row only (see Block::forward_first_token): about a
    // quarter of the encoder's work is for rows nobody reads when only the CLS token is used.
    Tensor<T> forward_cls(const Tensor<T>& images, Rng& rng) const {
        if (blocks.empty()) return slice(forward(images, rng), 1, 0, 1);          // (B, 1, D)
        Tensor<T> patches = patch_embedding.forward(images);                        // (B, P, D)
        const Index B = patches.size(0), D = config.dim;
        Tensor<T> cls = add(Tensor<T>::zeros({B, 1, D}), cls_token);               // (B, 1, D)
        Tensor<T> x = add(concat(std::vector<Tensor<T>>{cls, patches}, 1), pos_embedding);  // (B, 1+P, D)
        x = drop.forward(x, rng);
        for (std::size_t i = 0; i + 1 < blocks.size(); ++i) x = blocks[i].forward(x, rng);  // (B, 1+P, D)
        x = blocks.back().forward_first_token(x, rng);                              // (B, 1, D)
        return layer_norm.forward(x);                                               // (B, 1, D)
    }

    ViTConfig config;
    PatchEmbedding<T> patch_embedding;
    Tensor<T> cls_token;      // (1, 1, D)
    Tensor<T> pos_embedding;  // (1, 1+P, D)
    Dropout<T> drop;
    std::vector<Block<T>> blocks;
    LayerNorm<T> layer_norm;

protected:
    void visit_members(ModuleVisitor<T>& v, const std::string& prefix) override {
        this->child(v, prefix, "patch_embedding", patch_embedding);
        this->param(v, prefix, "cls_token", cls_token);
        this->param(v, prefix, "pos_embedding", pos_embedding);
        this->child(v, prefix, "drop", drop);
        this->children(v, prefix, "blocks", blocks);
        this->child(v, prefix, "layer_norm", layer_norm);
    }
};

}  // namespace seemoe::nn
