// examples/seemoe/bench.hpp — `seemoe bench`: how fast is a training step, and a caption?
//
// Builds the vision MoE language model of a preset (default seemore: the original seeMoE sizes),
// feeds it random images and tokens of the training shapes, and times
//   * full training steps: zero_grad + forward + loss + backward + AdamW step, after warm-up;
//   * caption generation: one image, greedy, KV cache, exactly --gen-tokens new tokens (the cached
//     decoder loop, the fused DecoderStep as in generate, is driven directly, so an early <eos>
//     cannot shorten it; the image encode is also timed alone);
// then prints one JSON object (--json) or a table: step times, tokens/s, model FLOP/s, the share
// of the machine's FP32 FMA peak that is, caption latency, peak RSS.
//
// Convention: every number is comparable with bench/torch_anchor.py (the PyTorch anchor of the
// same model family, in this repository) run on the same machine: the same size flags (--batch,
// --text-len, --img, ...), the same FLOP count (the anchor's forward_flops() formula, matrix
// products only, times 3 for forward + backward), medians over the timed steps. Compare ratios
// measured side by side; absolute times on a shared machine drift. The formula counts work
// seemoe skips (the last ViT block's rows other than CLS, which nothing reads), so the JSON also
// reports the FLOPs really executed ("executed_*").
#pragma once

#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include <seemoe/seemoe.hpp>

#include "presets.hpp"
#include "team.hpp"

namespace cli {

inline std::vector<FlagSpec> bench_flags() {
    std::vector<FlagSpec> flags = {
        {"--preset", "NAME", "seemore | demo | tiny: the model sizes (default: seemore)"},
        {"--batch", "N", "images per training step (default 16)"},
        {"--text-len", "N", "caption tokens per image (default 32; + the visual tokens)"},
        {"--img", "S", "image size S x S (torch_anchor.py's name for --image-size)"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores)"},
        {"--steps", "N", "timed training steps (default 10)"},
        {"--warmup", "N", "untimed training steps first (default 2)"},
        {"--gen-tokens", "N", "tokens per timed caption; 0 skips generation (default 32)"},
        {"--gen-reps", "N", "timed captions (default 5)"},
        {"--weights", "f32|bf16", "weight storage of the timed captions (default f32; see 'caption --weights')"},
        {"--seed", "N", "seed of the weights and the random inputs (default 0)"},
        {"--json", nullptr, "print one JSON object instead of the table"},
        {"--expert-parallel", nullptr, "under mpirun -np N: split the experts of every MoE layer over the ranks"},
        {"--vocab", "V", "vocabulary size (default 66)"},
    };
    for (const FlagSpec& f : model_flags()) flags.push_back(f);  // the model sizes, as in train
    return flags;
}

inline std::string bench_usage() {
    return "usage: seemoe bench [--preset seemore|demo|tiny] [size flags] [--threads N] [--steps N]\n"
           "                    [--warmup N] [--gen-tokens N] [--json]\n\n"
           "Times training steps (forward + backward + AdamW) and KV-cached greedy captioning on random\n"
           "inputs, and reports model FLOP/s against the measured FP32 FMA peak of this machine. The\n"
           "numbers line up with torch_anchor.py (same flags, same FLOP formula), so the two can be\n"
           "compared side by side.\n\n"
           "flags:\n" +
           flag_help(bench_flags());
}

namespace bench {

// Median and minimum of a list of durations (ms).
struct Timing {
    double median = 0, min = 0;
};
inline Timing summarize(std::vector<double> ms) {
    Timing t;
    if (ms.empty()) return t;
    std::sort(ms.begin(), ms.end());
    t.median = ms[ms.size() / 2];  // the upper median, as the anchor takes it
    t.min = ms.front();
    return t;
}

inline double now_ms() {
    using Clock = std::chrono::steady_clock;
    return std::chrono::duration<double, std::milli>(Clock::now().time_since_epoch()).count();
}

// The anchor's forward_flops(): multiply-add FLOPs (2 per MAC) of one forward pass over the batch,
// matrix products only. T counts the decoder positions (visual tokens + text).
inline double forward_flops(const seemoe::nn::VLMConfig& m, Index batch, Index T) {
    const double B = static_cast<double>(batch), d = static_cast<double>(m.decoder.n_embd);
    const double D = static_cast<double>(m.vision.dim), P = static_cast<double>(m.vision.num_patches());
    const double p = static_cast<double>(m.vision.patch_size), Td = static_cast<double>(T);
    const double blocks = static_cast<double>(m.vision.n_blocks), layers = static_cast<double>(m.decoder.n_layer);
    const double E = static_cast<double>(m.decoder.num_experts), K = static_cast<double>(m.decoder.top_k);
    const double V = static_cast<double>(m.decoder.vocab_size);
    double vit = B * P * 3 * p * p * D * 2;
    vit += blocks * B * (P + 1) * (4 * D * D + 8 * D * D) * 2 + blocks * B * 2 * (P + 1) * (P + 1) * D * 2;
    const double proj = B * (D * 4 * D + 4 * D * d) * 2;
    double dec = layers * B * Td * (4 * d * d + 2 * d * E + K * 8 * d * d) * 2;
    dec += layers * B * 2 * Td * Td * d * 2 + B * Td * d * V * 2;
    return vit + proj + dec;
}

// The part of forward_flops() seemoe does not execute: with the CLS feature as the only visual
// token, the last ViT block runs proj, the MLP and the attention queries for the CLS row alone
// (ViT::forward_cls), so the other P rows' share of that block is skipped.
inline double skipped_forward_flops(const seemoe::nn::VLMConfig& m, Index batch) {
    if (m.visual_tokens != seemoe::nn::VisualTokens::CLS || m.vision.n_blocks == 0) return 0;
    const double B = static_cast<double>(batch), D = static_cast<double>(m.vision.dim);
    const double P = static_cast<double>(m.vision.num_patches());
    return B * P * (D * D + 8 * D * D) * 2 + B * 2 * P * (P + 1) * D * 2;
}

// FP32 FMA throughput of this machine in GFLOP/s on `threads` threads, with the vector
// instructions of the kernel path in use (AVX-512, AVX2, NEON, or the build's own for the portable
// path): every thread runs independent chains of vector FMAs (enough to cover the FMA latency on
// every pipe), so the loop is bound by FMA issue alone. Best of a few tries.
inline double fma_peak_gflops(int threads) {
    constexpr long kIterations = 1'500'000;  // ~3 ms: short tries catch a core that is not shared
    const seemoe::KernelPath path = seemoe::active_kernel_path();
    double best = 0;
    std::vector<float> sinks(static_cast<std::size_t>(threads));
    std::vector<double> flops(static_cast<std::size_t>(threads));
    for (int attempt = 0; attempt < 15; ++attempt) {
        const double start = now_ms();
        seemoe::parallel_for(threads, [&](Index t) {
            const auto i = static_cast<std::size_t>(t);
            sinks[i] = seemoe::detail::fma_peak_loop(path, kIterations, flops[i]);
        });
        const double seconds = (now_ms() - start) / 1e3;
        best = std::max(best, flops[0] * threads / seconds / 1e9);
    }
    volatile float sink = sinks[0];
    (void)sink;
    return best;
}

// The machine and the kernel choices, for the report: figures from different machines can only
// be compared knowing both.
struct MachineReport {
    std::string cpu, isa, paths, caches, kernel, build;
};

inline std::string build_isa() {
#if defined(__AVX512F__)
    return "avx512";
#elif defined(__AVX2__)
    return "avx2";
#elif defined(__aarch64__)
    return "aarch64";
#elif defined(__x86_64__)
    return "x86-64 baseline";
#else
    return "baseline";
#endif
}

inline MachineReport machine_report() {
    const seemoe::CpuInfo& cpu = seemoe::cpu_info();
    const seemoe::KernelPath path = seemoe::active_kernel_path();
    const seemoe::GemmParams& p = seemoe::gemm_params(path);
    MachineReport r;
    r.cpu = cpu.model + " (" + cpu.arch + ")";
    r.isa = seemoe::kernel_path_name(path);
    for (seemoe::KernelPath q : seemoe::available_kernel_paths())
        r.paths += (r.paths.empty() ? "" : " ") + std::string(seemoe::kernel_path_name(q));
    r.caches = format("L1d %lld KB, L2 %lld KB, L3 %lld KB (%s)", static_cast<long long>(cpu.l1d / 1024),
                      static_cast<long long>(cpu.l2 / 1024), static_cast<long long>(cpu.l3 / 1024),
                      cpu.cache_source.c_str());
    if (path == seemoe::KernelPath::portable) {
        r.kernel = "Eigen's product (its own blocking)";
    } else {
        r.kernel = format("%lld-float vectors, micro-tile %lld x %lld, kc %lld, mc %lld, nc %lld",
                          static_cast<long long>(p.vector_floats), static_cast<long long>(p.mr),
                          static_cast<long long>(p.nr), static_cast<long long>(p.kc), static_cast<long long>(p.mc),
                          static_cast<long long>(p.nc));
        if (p.dot_kc > 0)
            r.kernel += format(", dot tile %lld x %lld depth %lld", static_cast<long long>(p.dot_rows),
                               static_cast<long long>(p.dot_cols), static_cast<long long>(p.dot_kc));
        r.kernel += format(", prefetch %lld KB ahead", static_cast<long long>(p.prefetch_floats * 4 / 1024));
    }
    r.build = build_isa();
    return r;
}

// Peak resident set size of this process so far, in MB (Linux reports ru_maxrss in KB).
inline double peak_rss_mb() {
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    return static_cast<double>(usage.ru_maxrss) / 1024.0;
}

inline double round_to(double value, int decimals) {
    const double scale = std::pow(10.0, decimals);
    return std::round(value * scale) / scale;
}

}  // namespace bench

inline int run_bench(int argc, char** argv, Team& team) {
    using seemoe::Tensor;
    const std::vector<FlagSpec> flags = bench_flags();
    Args args("bench", flags, argc, argv, 2);
    if (args.help()) {
        std::printf("%s", bench_usage().c_str());
        return 0;
    }
    if (!args.positionals().empty())
        throw CliError("unexpected argument '" + args.positionals().front() + "'",
                       "run 'seemoe bench --help' for usage");

    // ---- configuration: the preset, then single sizes from the flags --------------------------
    const std::string preset_name = args.get_choice("--preset", "seemore", preset_names());
    VLMConfig m = make_preset(preset_name).model;
    m.vision.image_size = args.get_int("--img", m.vision.image_size, 1);
    apply_model_flags(args, m);  // --image-size (wins over --img), --patch, ... and their checks
    m.decoder.vocab_size = args.get_int("--vocab", 66, 3);
    check_model_config(args, m, {{"--vocab", "decoder.vocab_size"}});
    const Index batch = args.get_int("--batch", 16, 1);
    const Index text_len = args.get_int("--text-len", 32, 1);
    const Index steps = args.get_int("--steps", 10, 1);
    const Index warmup = args.get_int("--warmup", 2, 0);
    // With several ranks the cores are shared by them: caption latency and the FMA peak, which one
    // process measures, are left out unless asked for.
    const Index gen_tokens = args.get_int("--gen-tokens", team.size() > 1 ? 0 : 32, 0);
    const Index gen_reps = args.get_int("--gen-reps", 5, 1);
    seemoe::nn::WeightStorage weights = seemoe::nn::WeightStorage::f32;
    seemoe::nn::weight_storage_from_name(args.get_choice("--weights", "f32", {"f32", "bf16"}), weights);
    const std::uint64_t seed = args.get_seed("--seed", 0);
    const bool json = args.flag("--json");
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));
    const int threads = seemoe::num_threads();

    seemoe::Rng rng(seed);
    seemoe::nn::VisionMoELanguageModel<float> model(m, rng);
    const Index Tv = model.num_visual_tokens(), T = Tv + text_len;
    const Index positions = std::max(T, gen_tokens > 0 ? Tv + 1 + gen_tokens : 0);
    if (positions > m.decoder.block_size)
        throw CliError(format("%lld decoder positions exceed the block size %lld", static_cast<long long>(positions),
                              static_cast<long long>(m.decoder.block_size)),
                       "use a smaller --text-len or --gen-tokens");
    const Index params = model.num_parameters();

    // ---- training steps -----------------------------------------------------------------------
    const Index S = m.vision.image_size, V = m.decoder.vocab_size;
    Tensor<float> images = Tensor<float>::randn({batch, 3, S, S}, rng);  // (B, 3, S, S)
    std::vector<Index> input_ids(static_cast<std::size_t>(batch * text_len));   // (B, L)
    std::vector<Index> targets(input_ids.size());                               // (B, L)
    for (auto& id : input_ids) id = rng.randint(0, V);
    for (auto& id : targets) id = rng.randint(0, V);
    seemoe::AdamW<float> optimizer(model.parameters());
    model.train();
    // With several ranks each trains on its slice of the batch and the gradients are averaged.
    if (batch < team.size())
        throw CliError(format("a batch of %lld cannot give each of the %d ranks one", static_cast<long long>(batch),
                              team.size()),
                       format("pass --batch %d or more", team.size()));
    std::vector<Index> everyone(static_cast<std::size_t>(batch));
    std::iota(everyone.begin(), everyone.end(), Index(0));
    const std::vector<Index> mine = team.shard(everyone);
    const Index local = static_cast<Index>(mine.size()), first = mine.front();
    Tensor<float> local_images = seemoe::slice(images, 0, first, first + local);  // (b, 3, S, S)
    const std::vector<Index> local_ids(input_ids.begin() + first * text_len,
                                       input_ids.begin() + (first + local) * text_len);  // (b, L)
    const std::vector<Index> local_targets(targets.begin() + first * text_len,
                                           targets.begin() + (first + local) * text_len);  // (b, L)
    if (args.flag("--expert-parallel")) team.enable_expert_parallel(m.decoder.num_experts);
    const TeamStart started(team, model.parameters(), moe_layers(model));
    std::vector<double> step_ms, comm_ms, alltoall_ms;
    TeamCommStats timed_start;
    double last_loss = 0;
    for (Index s = 0; s < warmup + steps; ++s) {
        const double start = bench::now_ms();
        const TeamCommStats before = team.comm_stats();
        if (s == warmup) timed_start = before;
        optimizer.zero_grad(/*set_to_none=*/true);  // as the anchor does
        Tensor<float> loss = model.loss(local_images, local_ids, local_targets, text_len, rng);  // ()
        const TeamLoss total = team.reduce_loss(loss.item(), local * text_len);
        if (total.scale != 1.0) loss = seemoe::mul(loss, static_cast<float>(total.scale));  // ()
        loss.backward();
        team.reduce_gradients();
        optimizer.step();
        const double elapsed = bench::now_ms() - start;
        if (s >= warmup) {
            step_ms.push_back(elapsed);
            const TeamCommStats after = team.comm_stats();
            comm_ms.push_back((after.seconds - before.seconds) * 1e3);
            alltoall_ms.push_back((after.alltoall_seconds - before.alltoall_seconds) * 1e3);
        }
        last_loss = total.mean;
    }
    const bench::Timing step = bench::summarize(step_ms);
    const bench::Timing comm = bench::summarize(comm_ms);
    const bench::Timing alltoall = bench::summarize(alltoall_ms);
    const TeamCommStats timed_end = team.comm_stats();
    // The MoE layers' all-to-all exchanges per timed step: bytes handed to MPI and, of those, the
    // ones addressed to the other ranks (expert parallel only).
    const std::int64_t alltoall_bytes = (timed_end.alltoall_bytes - timed_start.alltoall_bytes) / steps;
    const std::int64_t alltoall_remote = (timed_end.alltoall_remote_bytes - timed_start.alltoall_remote_bytes) / steps;
    // In a step the exchange also waits for the slowest rank to finish backward; the gradient
    // all-reduce alone, every rank starting together, is timed here.
    std::vector<double> reduce_ms;
    for (Index r = 0; team.size() > 1 && r < 5; ++r) {
        team.barrier();
        const double start = bench::now_ms();
        team.reduce_gradients();
        reduce_ms.push_back(bench::now_ms() - start);
    }
    const bench::Timing reduce_alone = bench::summarize(reduce_ms);
    const double train_flops = 3 * bench::forward_flops(m, batch, T);
    const double executed_flops = train_flops - 3 * bench::skipped_forward_flops(m, batch);

    // ---- caption generation: batch 1, greedy, KV cache, exactly gen_tokens tokens -------------
    // As VisionMoELanguageModel::generate does it: the image encoded once, the visual tokens and
    // <bos> through forward_cached, every later token through the fused DecoderStep. The encode's
    // share is timed on its own too, so the figure says where a caption's time goes.
    bench::Timing caption, caption_encode;
    if (gen_tokens > 0) {
        model.eval();
        Tensor<float> one = seemoe::slice(images, 0, 0, 1);  // (1, 3, S, S)
        const bool fusable = seemoe::nn::DecoderStep<float>::supports(model.decoder);
        std::unique_ptr<seemoe::nn::DecoderStep<float>> fused;
        if (fusable) fused = std::make_unique<seemoe::nn::DecoderStep<float>>(model.decoder, weights);
        if (!fusable && weights != seemoe::nn::WeightStorage::f32)
            throw CliError("--weights bf16 needs the fused decoder step, which this model's MoE layers do not allow",
                           "drop --weights");
        std::vector<float> step_logits(static_cast<std::size_t>(V));  // (V)
        double encode_ms = 0;
        auto caption_once = [&] {
            seemoe::NoGradGuard no_grad;
            const double start = bench::now_ms();
            Tensor<float> visual = model.encode_images(one, rng);                   // (1, Tv, C)
            encode_ms = bench::now_ms() - start;
            auto caches = model.decoder.make_caches(1, Tv + 1 + gen_tokens);
            Tensor<float> logits = model.decoder.forward_cached(model.decoder.embed({m.bos_id}, 1, 1, visual),
                                                                caches);              // (1, Tv+1, V)
            const float* last = logits.data() + (logits.size(1) - 1) * V;
            Index checksum = 0;
            for (Index t = 0; t < gen_tokens; ++t) {
                const Index next = static_cast<Index>(std::max_element(last, last + V) - last);
                checksum += next;
                if (t + 1 == gen_tokens) break;
                if (fused) {
                    fused->step_tokens({next}, caches, step_logits.data());
                    last = step_logits.data();
                } else {
                    logits = model.decoder.forward_cached(model.decoder.embed({next}, 1, 1, Tensor<float>()),
                                                          caches);                    // (1, 1, V)
                    last = logits.data();
                }
            }
            return checksum;
        };
        caption_once();  // warm-up
        std::vector<double> caption_ms, encode_times;
        for (Index r = 0; r < gen_reps; ++r) {
            const double start = bench::now_ms();
            caption_once();
            caption_ms.push_back(bench::now_ms() - start);
            encode_times.push_back(encode_ms);
        }
        caption = bench::summarize(caption_ms);
        caption_encode = bench::summarize(encode_times);
    }
    const double rss = bench::peak_rss_mb();  // before the peak kernel, which allocates nothing

    if (!team.leader()) return 0;  // rank 0 reports
    const bool measure_peak = team.size() == 1;
    const double peak_core = measure_peak ? bench::fma_peak_gflops(1) : 0.0;
    const double peak_all = !measure_peak ? 0.0 : threads > 1 ? bench::fma_peak_gflops(threads) : peak_core;
    const double gflops = train_flops / step.median / 1e6;

    seemoe::io::Json out;
    out["impl"] = "seemoe";
    const bench::MachineReport machine = bench::machine_report();
    const seemoe::CpuInfo& cpu = seemoe::cpu_info();
    const seemoe::GemmParams& gp = seemoe::gemm_params(seemoe::active_kernel_path());
    out["cpu_model"] = cpu.model;
    out["kernel_isa"] = machine.isa;
    out["kernel_paths_available"] = machine.paths;
    out["build_isa"] = machine.build;
    out["cache_l1d_kb"] = static_cast<std::int64_t>(cpu.l1d / 1024);
    out["cache_l2_kb"] = static_cast<std::int64_t>(cpu.l2 / 1024);
    out["cache_l3_kb"] = static_cast<std::int64_t>(cpu.l3 / 1024);
    out["cache_source"] = cpu.cache_source;
    out["gemm_vector_floats"] = static_cast<std::int64_t>(gp.vector_floats);
    out["gemm_mr"] = static_cast<std::int64_t>(gp.mr);
    out["gemm_nr"] = static_cast<std::int64_t>(gp.nr);
    out["gemm_kc"] = static_cast<std::int64_t>(gp.kc);
    out["gemm_mc"] = static_cast<std::int64_t>(gp.mc);
    out["gemm_nc"] = static_cast<std::int64_t>(gp.nc);
    out["gemm_dot_kc"] = static_cast<std::int64_t>(gp.dot_kc);
    out["gemm_prefetch_floats"] = static_cast<std::int64_t>(gp.prefetch_floats);
    out["preset"] = preset_name;
    out["threads"] = static_cast<std::int64_t>(threads);  // per rank
    out["ranks"] = static_cast<std::int64_t>(team.size());
    out["parallel_mode"] = team.mode();
    out["params"] = static_cast<std::int64_t>(params);
    out["loss"] = bench::round_to(last_loss, 4);
    out["step_ms_median"] = bench::round_to(step.median, 2);
    out["step_ms_min"] = bench::round_to(step.min, 2);
    out["train_tokens_per_s"] = bench::round_to(static_cast<double>(batch * T) / step.median * 1e3, 1);
    out["train_gflop_per_step"] = bench::round_to(train_flops / 1e9, 2);
    out["train_gflop_per_s"] = bench::round_to(gflops, 1);
    if (team.size() > 1) {
        // Rank 0's time communicating per step: the gradient exchange (packing, all-reduce,
        // unpacking) and, with expert parallel, the MoE layers' all-to-all exchanges (which also
        // wait for the other ranks to reach them).
        out["comm_ms_median"] = bench::round_to(comm.median, 2);
        out["comm_share_pct"] = bench::round_to(100.0 * comm.median / step.median, 1);
        out["comm_bytes_per_step"] = team.gradient_bytes_per_step() + alltoall_bytes;
        out["allreduce_bytes_per_step"] = team.gradient_bytes_per_step();
        out["allreduce_alone_ms_median"] = bench::round_to(reduce_alone.median, 2);
        if (team.expert_parallel()) {
            out["alltoall_ms_median"] = bench::round_to(alltoall.median, 2);
            out["alltoall_bytes_per_step"] = alltoall_bytes;
            out["alltoall_remote_bytes_per_step"] = alltoall_remote;
        }
    }
    // What the step actually computes (the anchor's formula counts rows seemoe skips; see above).
    out["executed_gflop_per_step"] = bench::round_to(executed_flops / 1e9, 2);
    out["executed_gflop_per_s"] = bench::round_to(executed_flops / step.median / 1e6, 1);
    if (measure_peak) {
        out["fma_peak_gflop_per_s_core"] = bench::round_to(peak_core, 1);
        out["fma_peak_gflop_per_s"] = bench::round_to(peak_all, 1);
        out["peak_fraction_pct"] = bench::round_to(100.0 * gflops / peak_all, 1);
        out["executed_peak_fraction_pct"] = bench::round_to(100.0 * executed_flops / step.median / 1e6 / peak_all, 1);
    }
    if (gen_tokens > 0) {
        out["caption_ms_median"] = bench::round_to(caption.median, 2);
        out["caption_encode_ms_median"] = bench::round_to(caption_encode.median, 2);
        out["caption_weights"] = seemoe::nn::weight_storage_name(weights);
        out["gen_tokens_per_s"] = bench::round_to(static_cast<double>(gen_tokens) / caption.median * 1e3, 1);
    }
    out["peak_rss_mb"] = bench::round_to(rss, 1);
    if (json) {
        std::printf("%s\n", out.dump().c_str());
        return 0;
    }
    std::vector<std::pair<std::string, std::string>> rows = {
        {"cpu", machine.cpu},
        {"kernels", format("%s chosen (available: %s; build targets %s)", machine.isa.c_str(), machine.paths.c_str(),
                           machine.build.c_str())},
        {"caches", machine.caches},
        {"gemm blocks", machine.kernel},
        {"model", format("preset %s, %s parameters", preset_name.c_str(), format_count(params).c_str())},
        {"shapes", format("batch %lld, %lld x %lld images, %lld positions", static_cast<long long>(batch),
                          static_cast<long long>(S), static_cast<long long>(S), static_cast<long long>(T))},
        {"threads", team.size() > 1 ? format("%d per rank", threads) : std::to_string(threads)},
        {"parallel mode", team.mode()},
        {"training step", format("%.1f ms median, %.1f ms min (%lld steps after %lld warm-up)", step.median,
                                 step.min, static_cast<long long>(steps), static_cast<long long>(warmup))},
        {"throughput", format("%.0f tokens/s, %.1f GFLOP/s of %.1f GFLOP/step", batch * T / step.median * 1e3,
                              gflops, train_flops / 1e9)},
    };
    if (measure_peak) {
        rows.push_back({"FMA peak", format("%.0f GFLOP/s per core, %.0f on %d threads: %.1f%% reached", peak_core,
                                           peak_all, threads, 100.0 * gflops / peak_all)});
        rows.push_back({"executed", format("%.1f GFLOP/step really computed (%.1f GFLOP/s, %.1f%% of peak)",
                                           executed_flops / 1e9, executed_flops / step.median / 1e6,
                                           100.0 * executed_flops / step.median / 1e6 / peak_all)});
    } else {
        rows.push_back({"communication", format("%.1f ms median per step (%.1f%% of the step), %.1f MB of gradients",
                                                comm.median, 100.0 * comm.median / step.median,
                                                static_cast<double>(team.gradient_bytes_per_step()) / 1e6)});
        if (team.expert_parallel())
            rows.push_back({"all-to-all", format("%.1f ms median per step, %.1f MB handed (%.1f MB to other ranks)",
                                                 alltoall.median, static_cast<double>(alltoall_bytes) / 1e6,
                                                 static_cast<double>(alltoall_remote) / 1e6)});
        rows.push_back({"all-reduce alone", format("%.1f ms median (every rank starting together)", reduce_alone.median)});
    }
    if (gen_tokens > 0)
        rows.push_back({"caption", format("%.1f ms median for %lld tokens (%.0f tokens/s; image encode %.1f ms; %s weights)",
                                          caption.median, static_cast<long long>(gen_tokens),
                                          gen_tokens / caption.median * 1e3, caption_encode.median,
                                          seemoe::nn::weight_storage_name(weights))});
    rows.push_back({"peak RSS", format("%.0f MB", rss)});
    print_table("seemoe bench", rows);
    std::printf("%s\n", out.dump().c_str());
    return 0;
}

}  // namespace cli

using cli::run_bench;
