// seemoe/seemoe.hpp — the umbrella header: everything, in reading (= dependency) order.
//
// seemoe is a header-only C++17 tensor + reverse-mode autograd library on Eigen, and the layers of
// a small mixture-of-experts vision-language model (seeMoE) built from it. Include this one header,
// link the CMake target seemoe::seemoe, and see README.md for a tour.
#pragma once

// core: Index, Error, Rng; shapes; the autograd graph; Tensor<T>; the thread pool
#include "core/common.hpp"
#include "core/shape.hpp"
#include "core/autograd.hpp"
#include "core/tensor.hpp"
#include "core/parallel.hpp"

// ops: each op is its checks, forward and backward side by side
#include "ops/elementwise.hpp"
#include "ops/reduce.hpp"
#include "ops/matmul.hpp"
#include "ops/shape_ops.hpp"
#include "ops/indexing.hpp"
#include "ops/functional.hpp"
#include "ops/attention.hpp"
#include "ops/moe.hpp"

// nn: modules named like their PyTorch counterparts
#include "nn/module.hpp"
#include "nn/linear.hpp"
#include "nn/embedding.hpp"
#include "nn/layer_norm.hpp"
#include "nn/mlp.hpp"
#include "nn/attention.hpp"
#include "nn/vision.hpp"
#include "nn/projector.hpp"
#include "nn/moe.hpp"
#include "nn/decoder.hpp"
#include "nn/vlm.hpp"

// optim: SGD, Adam/AdamW, schedules, clipping
#include "optim/sgd.hpp"
#include "optim/adam.hpp"
#include "optim/schedule.hpp"
#include "optim/clip.hpp"

// data: captions.csv folders, images through stb_image, the character tokenizer, batching
#include "data/csv.hpp"
#include "data/base64.hpp"
#include "data/image.hpp"
#include "data/tokenizer.hpp"
#include "data/dataset.hpp"

// io: JSON, safetensors, checkpoints
#include "io/json.hpp"
#include "io/safetensors.hpp"
#include "io/checkpoint.hpp"
