// seemoe/seemoe.hpp — the umbrella header: everything, in reading (= dependency) order.
//
// seemoe is a header-only C++17 tensor + reverse-mode autograd library on Eigen, and the layers of
// a small mixture-of-experts vision-language model (seeMoE) built from it. Include this one header,
// link the CMake target seemoe::seemoe, and see README.md for a tour.
//
// Layers: core <- ops, optim <- nn. io (file formats) and data (data sets) use core and each other
// only; nn/checkpoint.hpp, the model's checkpoint, is where a model meets the file formats.
#pragma once

// core: Index, Error, Rng; shapes; UTF-8; buffers; the autograd graph; Tensor<T>; the thread pool
#include "core/common.hpp"
#include "core/shape.hpp"
#include "core/utf8.hpp"
#include "core/storage.hpp"
#include "core/autograd.hpp"
#include "core/tensor.hpp"
#include "core/parallel.hpp"
#include "core/cpu.hpp"

// ops: each op is its checks, forward and backward side by side
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/gemm_kernel.hpp"
#include "ops/bf16.hpp"
#include "ops/matmul.hpp"
#include "ops/shape_ops.hpp"
#include "ops/indexing.hpp"
#include "ops/functional.hpp"
#include "ops/attention.hpp"
#include "ops/moe.hpp"

// optim: SGD, Adam/AdamW, schedules, clipping
#include "optim/sgd.hpp"
#include "optim/adam.hpp"
#include "optim/schedule.hpp"
#include "optim/clip.hpp"

// io: file formats only: whole files and atomic writes, JSON, safetensors
#include "io/file.hpp"
#include "io/checkpoint_folder.hpp"
#include "io/json.hpp"
#include "io/safetensors.hpp"

// data: captions.csv folders, images through stb_image, the character tokenizer, batching
#include "data/csv.hpp"
#include "data/base64.hpp"
#include "data/image.hpp"
#include "data/tokenizer.hpp"
#include "data/dataset.hpp"
#include "data/text.hpp"

// nn: modules named like their PyTorch counterparts, the model, and its checkpoint
#include "nn/module.hpp"
#include "nn/linear.hpp"
#include "nn/embedding.hpp"
#include "nn/layer_norm.hpp"
#include "nn/mlp.hpp"
#include "nn/attention.hpp"
#include "nn/vision.hpp"
#include "nn/projector.hpp"
#include "nn/moe.hpp"
#include "nn/sampling.hpp"
#include "nn/decoder.hpp"
#include "nn/decode_step.hpp"
#include "nn/vlm.hpp"
#include "nn/checkpoint.hpp"
#include "nn/staging.hpp"
