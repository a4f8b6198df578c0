// examples/seemoe/train.hpp — `seemoe train`: train the vision MoE language model on captions.
//
// One step (train_step): a batch of B images and captions -> teacher-forced cross-entropy ->
// backward -> clip the global gradient norm to 1 -> AdamW at the step's learning rate (linear
// warmup, then cosine decay to a tenth). Around that loop (run_train, at the end of this file):
//   * everything that can be wrong with the flags, the data or the checkpoint is checked before
//     --out is created, so a failed start leaves no files behind;
//   * the epoch order of step s is a function of (seed, epoch) only (Batcher::step_samples), and
//     the one training Rng (dropout, router noise) is saved with the optimiser state, so
//     --resume continues exactly where the checkpoint was taken: same batches, same noise, same
//     numbers;
//   * --out receives model.safetensors (weights, config and vocabulary: all that `caption` and
//     `eval` need), training_state.safetensors (AdamW moments, step, Rng, the run's settings) and
//     metrics.jsonl (one JSON object per step; tokens_per_s counts caption tokens, the targets;
//     "moe" holds each MoE layer's routing statistics).
//   * --init-from starts a new run from another run's weights (--upcycle: a dense model's FFNs
//     become every expert), and --freeze / --train-only / --stage leave parameters out of the
//     optimisation (nn/staging.hpp): MoE-LLaVA's three stages.
// `train --text FILE` trains a text-only character model instead, with the same settings, files,
// progress and --resume: its loop is run_text_train in train_text.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "evaluation.hpp"
#include "pictures.hpp"
#include "presets.hpp"
#include "team.hpp"
#include "text.hpp"

namespace cli {

using seemoe::io::Json;

// The numbers of a run that are not the model's: stored with the checkpoint so --resume can
// continue with them.
struct TrainSettings {
    std::string data = kDefaultData;
    std::string text;  // a text run's file; empty for image runs
    std::string preset = "demo";
    Index steps = 0, batch = 0, warmup = 0;
    double lr = 0, min_lr_ratio = 0.1, weight_decay = 0.01, grad_clip = 1.0;
    std::uint64_t seed = 1337;
    Index eval_every = 0, eval_samples = 200, eval_batches = 200, save_every = 0, log_every = 0;
    // The image recipe (augment.hpp, cross_entropy's label smoothing); off unless a preset or
    // flag turns it on.
    double label_smoothing = 0;
    Index crop_padding = 0;
    std::string flip = "none";  // none | horizontal
    double brightness = 0, contrast = 0;
    double word_dropout = 0;  // caption input words blanked with this probability (augment.hpp)
    // Coefficients of the MoE auxiliary losses added to the training loss (0: off, nothing computed).
    double balance_loss = 0.0, z_loss = 0.0;
    // Staged training (nn/staging.hpp): comma-separated parameter-name patterns, and MoE-LLaVA's
    // stage presets (0: none; 1: the projector only; 2: everything; 3: the MoE layers only).
    std::string freeze, train_only;
    Index stage = 0;

    bool is_text() const { return !text.empty(); }

    seemoe::data::AugmentOptions augment() const {
        seemoe::data::AugmentOptions a;
        a.crop_padding = static_cast<int>(crop_padding);
        a.horizontal_flip = flip == "horizontal";
        a.brightness = brightness;
        a.contrast = contrast;
        a.word_dropout = word_dropout;
        return a;
    }
};

// The settings that mean something only for image runs, or only for text runs: the others are
// refused as flags and left out of the run table.
inline bool image_only_setting(const std::string& name) {
    return name == "data" || name == "eval_samples" || name == "balance_loss" || name == "z_loss" ||
           name == "freeze" || name == "train_only" || name == "stage" || name == "label_smoothing" ||
           name == "crop_padding" || name == "flip" || name == "brightness" || name == "contrast" ||
           name == "word_dropout";
}
inline bool text_only_setting(const std::string& name) { return name == "text" || name == "eval_batches"; }
// Settings added after runs were first stored: a stored run may lack them (then the default: the
// auxiliary losses, staging and the image recipe off, as those runs trained).
inline bool later_setting(const std::string& name) {
    return name == "balance_loss" || name == "z_loss" || name == "freeze" || name == "train_only" ||
           name == "stage" || name == "label_smoothing" || name == "crop_padding" || name == "flip" ||
           name == "brightness" || name == "contrast" || name == "word_dropout";
}

// The flag that sets a setting, and the range its value must be in.
struct SettingFlag {
    FlagSpec spec;
    double min = 0, max = 0;  // max < min: no upper bound
};

// Every field of TrainSettings, once, in checkpoint order: fn(name, field, flag), flag null for
// the fields no flag sets. The JSON in training_state.safetensors, the run table and the flags
// all walk this list.
template <typename Settings, typename Fn>
void for_each_setting(Settings& s, Fn&& fn) {
    static const SettingFlag data{{"--data", "DIR",
                                   "data set folder with captions.csv (default: data/shapes, relative to the "
                                   "current directory)"}};
    static const SettingFlag text{{"--text", "FILE",
                                   "train a text-only character model on FILE (UTF-8) instead: see README "
                                   "'Text only (makeMoE)'"}};
    static const SettingFlag steps{{"--steps", "N", "total optimisation steps"}, 1};
    static const SettingFlag batch{{"--batch", "N", "images (text: windows) per step"}, 1};
    static const SettingFlag warmup{{"--warmup", "N", "linear warmup steps before the cosine decay"}, 0};
    static const SettingFlag lr{{"--lr", "X", "peak learning rate (AdamW)"}, 0, 10};
    static const SettingFlag min_lr_ratio{
        {"--min-lr-ratio", "X", "the cosine decay ends at lr * X (default 0.1)"}, 0, 1};
    static const SettingFlag weight_decay{{"--weight-decay", "X", "AdamW weight decay (default 0.01)"}, 0, 1};
    static const SettingFlag label_smoothing{
        {"--label-smoothing", "X",
         "train against (1-X) one-hot + X/V: softer targets, better calibrated (default 0; fashion 0.1)"},
        0, 0.99};
    static const SettingFlag crop_padding{
        {"--crop-padding", "N",
         "augment: shift each training image by up to N pixels (random crop of the image padded with "
         "black; default 0 = off; fashion 2)"},
        0};
    static const SettingFlag flip{
        {"--flip", "none|horizontal",
         "augment: mirror training images left-right at random; only where captions stay true "
         "(no 'left'/'right' in them; default none; fashion horizontal)"}};
    static const SettingFlag brightness{
        {"--brightness", "X", "augment: multiply pixel values by a factor from [1-X, 1+X] (default 0; fashion 0.2)"},
        0, 1};
    static const SettingFlag contrast{
        {"--contrast", "X",
         "augment: scale values' distance from the image mean by a factor from [1-X, 1+X] (default 0; "
         "fashion 0.2)"},
        0, 1};
    static const SettingFlag word_dropout{
        {"--word-dropout", "X",
         "replace each word of a training caption's decoder input (not its targets) with <pad> with "
         "probability X, so the decoder must read the image rather than the words before (default 0; demo 0.8)"},
        0, 0.95};
    static const SettingFlag seed{{"--seed", "N", "seed of every random number (default 1337)"}};
    static const SettingFlag eval_every{
        {"--eval-every", "N", "validate every N steps (val loss, exact match, sample captions)"}, 1};
    static const SettingFlag eval_samples{
        {"--eval-samples", "N", "val images captioned for the periodic exact match (default 200)"}, 1};
    static const SettingFlag eval_batches{
        {"--eval-batches", "N", "text: val batches of --batch windows in the periodic val loss (default 200)"}, 1};
    static const SettingFlag save_every{
        {"--save-every", "N", "checkpoint every N steps (default: like --eval-every); always at the end"}, 1};
    static const SettingFlag log_every{
        {"--log-every", "N", "progress line every N steps when stdout is not a terminal"}, 1};
    fn("data", s.data, &data);
    fn("text", s.text, &text);
    fn("preset", s.preset, nullptr);  // chosen by --preset, which also picks the defaults
    fn("steps", s.steps, &steps);
    fn("batch", s.batch, &batch);
    fn("warmup", s.warmup, &warmup);
    fn("lr", s.lr, &lr);
    fn("min_lr_ratio", s.min_lr_ratio, &min_lr_ratio);
    fn("weight_decay", s.weight_decay, &weight_decay);
    fn("grad_clip", s.grad_clip, nullptr);
    fn("seed", s.seed, &seed);
    fn("eval_every", s.eval_every, &eval_every);
    fn("eval_samples", s.eval_samples, &eval_samples);
    fn("eval_batches", s.eval_batches, &eval_batches);
    fn("save_every", s.save_every, &save_every);
    fn("log_every", s.log_every, &log_every);
    static const SettingFlag balance_loss{
        {"--balance-loss", "X", "weight of the MoE load-balancing loss E * sum_e f_e P_e, summed over layers (0 = off)"},
        0,
        10};
    static const SettingFlag z_loss{
        {"--z-loss", "X", "weight of the router z-loss mean_s (logsumexp_e logits)^2, summed over layers (0 = off)"},
        0,
        10};
    fn("balance_loss", s.balance_loss, &balance_loss);
    fn("z_loss", s.z_loss, &z_loss);
    fn("label_smoothing", s.label_smoothing, &label_smoothing);
    fn("crop_padding", s.crop_padding, &crop_padding);
    fn("flip", s.flip, &flip);
    fn("brightness", s.brightness, &brightness);
    fn("contrast", s.contrast, &contrast);
    fn("word_dropout", s.word_dropout, &word_dropout);
    static const SettingFlag freeze{
        {"--freeze", "PATTERNS",
         "keep the parameters these comma-separated name patterns match fixed: no gradient, no optimiser "
         "state (e.g. vision_encoder; '*' = any characters but '.')"}};
    static const SettingFlag train_only{
        {"--train-only", "PATTERNS", "train only the parameters these patterns match; freeze the rest"}};
    static const SettingFlag stage{
        {"--stage", "1|2|3",
         "MoE-LLaVA's stages: 1 = the projector only, 2 = everything, 3 = the MoE layers (experts, routers)"},
        0};
    fn("freeze", s.freeze, &freeze);
    fn("train_only", s.train_only, &train_only);
    fn("stage", s.stage, &stage);
}

// The --train-only patterns of a --stage.
inline std::string stage_patterns(Index stage) {
    return stage == 1 ? "projector" : stage == 3 ? "decoder.blocks.*.moe" : "";
}

// "a, b,c" -> {"a", "b", "c"}.
inline std::vector<std::string> split_patterns(const std::string& text) {
    std::vector<std::string> out;
    std::string item;
    std::istringstream in(text);
    while (std::getline(in, item, ',')) {
        const auto first = item.find_first_not_of(' '), last = item.find_last_not_of(' ');
        if (first != std::string::npos) out.push_back(item.substr(first, last - first + 1));
    }
    return out;
}

// Freezes the model's parameters as the settings say (nothing, without --freeze, --train-only
// or --stage); returns the number of trainable parameter tensors. Before the optimiser is built.
template <typename ModelType>
Index apply_freezing(ModelType& model, const TrainSettings& s) {
    const std::string train_only = s.train_only.empty() ? stage_patterns(s.stage) : s.train_only;
    return with_hint("patterns match parameter names such as decoder.blocks.0.moe.experts.3.fc1.weight (README 'Staged training')", [&] {
        return seemoe::nn::set_trainable(model, split_patterns(train_only), split_patterns(s.freeze));
    });
}

inline Json settings_to_json(const TrainSettings& s) {
    Json j = Json::object();
    for_each_setting(s, [&](const char* name, const auto& field, const SettingFlag*) {
        if constexpr (std::is_same_v<std::decay_t<decltype(field)>, std::uint64_t>)
            j[name] = std::to_string(field);  // u64 as text: JSON numbers are doubles
        else
            j[name] = field;
    });
    return j;
}

// What is wrong with a run's settings (the flags' ranges, and sane ranges for the fields no flag
// sets), or "" if nothing is: stored settings are checked like flags.
inline std::string settings_problem(const TrainSettings& s) {
    std::string problem;
    for_each_setting(s, [&](const char* name, const auto& field, const SettingFlag* flag) {
        using Field = std::decay_t<decltype(field)>;
        if (!problem.empty() || !flag) return;
        // The same ranges as the flag's parser: integers have a minimum, numbers [min, max].
        if constexpr (std::is_same_v<Field, Index>) {
            if (field < static_cast<Index>(flag->min))
                problem = format("field %s is %lld, less than %s allows (%g)", name, static_cast<long long>(field),
                                 flag->spec.name, flag->min);
        } else if constexpr (std::is_same_v<Field, double>) {
            if (!(field >= flag->min && field <= flag->max))
                problem = format("field %s is %g, outside the range of %s [%g, %g]", name, field, flag->spec.name,
                                 flag->min, flag->max);
        }
    });
    if (!problem.empty()) return problem;
    if (s.data.empty()) return "field data is empty";
    if (!(s.min_lr_ratio >= 0 && s.min_lr_ratio <= 1)) return format("field min_lr_ratio %g is not in [0, 1]", s.min_lr_ratio);
    if (!(s.weight_decay >= 0 && s.weight_decay <= 1)) return format("field weight_decay %g is not in [0, 1]", s.weight_decay);
    if (!(s.grad_clip > 0 && s.grad_clip <= 1e6)) return format("field grad_clip %g is not in (0, 1e6]", s.grad_clip);
    if (s.warmup > s.steps) return "field warmup is larger than steps";
    if (s.stage > 3) return format("field stage is %lld; expected 0 to 3", static_cast<long long>(s.stage));
    if (s.stage != 0 && !s.train_only.empty()) return "fields stage and train_only are both set";
    if (s.flip != "none" && s.flip != "horizontal") return "field flip is '" + s.flip + "', not none or horizontal";
    return "";
}

// The settings from their JSON: every field present with the right type, then checked.
inline TrainSettings settings_from_json(const Json& j) {
    TrainSettings s;
    for_each_setting(s, [&](const char* name, auto& field, const SettingFlag*) {
        if ((text_only_setting(name) || later_setting(name)) && !j.contains(name)) return;  // saved before they existed
        try {
            const Json& value = j.at(name);
            using Field = std::decay_t<decltype(field)>;
            if constexpr (std::is_same_v<Field, std::string>) field = value.as_string();
            else if constexpr (std::is_same_v<Field, std::uint64_t>) field = seemoe::nn::parse_u64(value.as_string());
            else if constexpr (std::is_same_v<Field, double>) field = value.as_double();
            else field = value.as_int();
        } catch (const seemoe::Error& e) {
            throw seemoe::Error(std::string("field ") + name + ": " + e.what());
        }
    });
    const std::string problem = settings_problem(s);
    if (!problem.empty()) throw seemoe::Error(problem);
    return s;
}

// Flags given on the command line win over the preset (or, when resuming, the stored run). A
// flag of the other kind of run (--eval-samples for text, --eval-batches for images) is refused.
inline void apply_setting_flags(const Args& args, TrainSettings& s) {
    const bool text_run = s.is_text() || args.has("--text");
    for_each_setting(s, [&](const char* setting, auto& field, const SettingFlag* flag) {
        if (!flag) return;
        const std::string name = flag->spec.name;
        if (args.has(name) && (text_run ? image_only_setting(setting) : text_only_setting(setting)))
            throw CliError(name + (text_run ? " applies to image runs, not to a text run (--text)"
                                            : " applies to text runs (--text FILE) only"),
                           "drop " + name);
        using Field = std::decay_t<decltype(field)>;
        if constexpr (std::is_same_v<Field, std::string>) {
            if (name == "--flip") field = args.get_choice(name, field, {"none", "horizontal"});
            else field = args.get(name, field);
        } else if constexpr (std::is_same_v<Field, std::uint64_t>) field = args.get_seed(name, field);
        else if constexpr (std::is_same_v<Field, double>) field = args.get_double(name, field, flag->min, flag->max);
        else field = args.get_int(name, field, static_cast<Index>(flag->min));
    });
    s.warmup = std::min(s.warmup, s.steps);
    if (s.stage > 3)
        throw CliError(format("--stage must be 1, 2 or 3, got %lld", static_cast<long long>(s.stage)),
                       "1 = the projector only, 2 = everything, 3 = the MoE layers");
    if (s.stage != 0 && !s.train_only.empty())
        throw CliError("--stage and --train-only both say what to train", "pass one of them");
    for (const char* name : {"--freeze", "--train-only"})
        if (args.has(name) && split_patterns(args.get(name, "")).empty())
            throw CliError(std::string(name) + " needs at least one parameter-name pattern",
                           std::string("write e.g. ") + name + " vision_encoder");
}

// The settings as run-table rows, "name  value", straight from the field list (those of this
// kind of run).
inline std::vector<std::pair<std::string, std::string>> describe_settings(const TrainSettings& s) {
    std::vector<std::pair<std::string, std::string>> rows;
    for_each_setting(s, [&](const char* name, const auto& field, const SettingFlag*) {
        if (s.is_text() ? image_only_setting(name) : text_only_setting(name)) return;
        using Field = std::decay_t<decltype(field)>;
        if constexpr (std::is_same_v<Field, std::string>) rows.push_back({name, field});
        else if constexpr (std::is_same_v<Field, double>) rows.push_back({name, format("%g", field)});
        else rows.push_back({name, std::to_string(field)});
    });
    return rows;
}

inline std::vector<FlagSpec> run_flags() {
    std::vector<FlagSpec> flags = {
        {"--out", "DIR", "where checkpoints and metrics.jsonl go (default: runs/<preset>)"},
        {"--preset", "NAME", "tiny | demo | fashion | seemore (default: demo); makemoe for --text (its default)"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores); 1 gives bit-identical reruns"},
        {"--resume", nullptr, "continue the run in --out (its settings; flags given here override them)"},
        {"--force", nullptr, "start afresh even if --out already holds a run (its files are replaced)"},
        {"--stop-at", "N", "end this run after step N with a checkpoint; finish later with --resume"},
        {"--keep-checkpoints", "N", "keep the newest N checkpoints in --out/checkpoints (default 3)"},
        {"--max-bad-steps", "N",
         "stop after N steps in a row with a non-finite loss or gradient (each is skipped; default 5)"},
        {"--allow-outside-paths", nullptr,
         "let captions.csv name images outside the data folder (absolute paths, '..', symlinks out)"},
        {"--init-from", "CHECKPOINT",
         "start from the weights of another run's model (a new run: fresh optimiser, step 0)"},
        {"--upcycle", nullptr,
         "with --init-from a dense model (--experts 1): every expert of each MoE layer starts as its FFN"},
        {"--upcycle-noise", "X", "with --upcycle: add N(0, X^2) noise to each expert's copy (default 0)"},
        {"--expert-parallel", nullptr,
         "under mpirun -np N: split the experts of every MoE layer over the N ranks (N must divide them); "
         "the rest is data parallel"},
    };
    TrainSettings defaults;
    for_each_setting(defaults, [&](const char*, const auto&, const SettingFlag* flag) {
        if (flag) flags.push_back(flag->spec);
    });
    return flags;
}

inline std::vector<FlagSpec> train_flags() {
    std::vector<FlagSpec> flags = run_flags();
    for (const FlagSpec& f : model_flags()) flags.push_back(f);
    return flags;
}

inline std::string train_usage() {
    return "usage: seemoe train [--data DIR | --text FILE] [--out DIR] [--preset NAME] [--steps N] [--batch N]\n"
           "                    [--lr X] [--seed N] [--threads N] [--resume] [model size flags]\n"
           "                    [--eval-every N] [--save-every N] [--log-every N]\n\n"
           "Trains the vision MoE language model to caption the images of a data set: a folder with\n"
           "captions.csv (columns image, caption, split = train|val|test) and the images it names.\n"
           "--data defaults to data/shapes RELATIVE TO THE CURRENT DIRECTORY (run from the source\n"
           "tree, or pass the path). The preset sets every number; flags override single ones.\n\n"
           "With --text FILE it trains a text-only character language model on a UTF-8 text file\n"
           "instead (makeMoE's model with the makemoe preset): the first 90% of the characters train,\n"
           "the last 10% validate; every --eval-every steps the val loss is the mean over --eval-batches\n"
           "batches of random val windows (the same windows each time); the final report scores the\n"
           "whole val part. 'seemoe generate' then continues text with it.\n\n"
           "presets:\n"
           "  tiny      seconds; for tests (image 32, patch 8, ViT 32 x 1, decoder 32 x 2, 4 experts)\n"
           "  demo      the default (image 24, patch 4, ViT 96 x 2, decoder 64 x 3, 8 experts top-2,\n"
           "            6000 steps of 32, lr 5e-4): 98% exact on val in 5m25s on a 2-core AVX-512 VM,\n"
           "            11m41s on a 2-core Intel Xeon (Cascade Lake) VM\n"
           "  fashion   Fashion-MNIST from data/fashion/images (seemoe_fashion_mnist writes it): image 28,\n"
           "            patch 4, ViT 96 x 3, CLS token, decoder 64 x 2, 4 experts; 14000 steps of\n"
           "            64 with augmentation and label smoothing (README 'Train on real images')\n"
           "  seemore   the original seeMoE sizes (image 96, patch 16, ViT 512 x 3, decoder 128 x 8)\n"
           "  makemoe   text only, the default with --text FILE: makeMoE's character model (decoder\n"
           "            128 x 8, 8 heads, 8 experts top-2, 32 positions, dropout 0.1; 5000 steps of 16\n"
           "            windows, lr 1e-3)\n\n"
           "flags:\n" +
           flag_help(run_flags()) + "\nmodel size flags (override the preset; fixed when resuming):\n" +
           flag_help(model_flags()) +
           "\nWrites DIR/model.safetensors (weights, config, vocabulary), DIR/training_state.safetensors\n"
           "(AdamW moments, step, rng, settings) and DIR/metrics.jsonl (one JSON object per step: step,\n"
           "loss (with the weighted auxiliary losses when they are on), lr, tokens_per_s = caption tokens\n"
           "(text: characters) per second, balance_loss and z_loss (unweighted) when on, moe = per MoE\n"
           "layer tokens_per_expert, max_over_mean load, router entropy and drop_fraction (image runs),\n"
           "and val figures when measured; then a final line with the val and test figures).\n";
}

// The files of a run in --out: checkpoints/step-N/{model,training_state}.safetensors, each
// committed by one rename (io/checkpoint_folder.hpp), the newest `keep` kept; model.safetensors,
// a hard link to the newest model; metrics.jsonl. A run saved before the checkpoint folders
// existed has model.safetensors and training_state.safetensors side by side (`state`): it still
// resumes, and its first new checkpoint replaces that layout.
struct RunFiles {
    fs::path out, model, state, metrics, best;
    seemoe::io::CheckpointFolder checkpoints;
    Index keep = 3;
    explicit RunFiles(const fs::path& dir, Index keep_checkpoints = 3)
        : out(dir), model(dir / "model.safetensors"), state(dir / "training_state.safetensors"),
          metrics(dir / "metrics.jsonl"), best(dir / "best.safetensors"), checkpoints(dir), keep(keep_checkpoints) {}
};

// best.safetensors: the model (as model.safetensors, readable by caption and eval) of the
// validation with the highest val exact match so far; a later tie does not replace it.
inline void save_best(const RunFiles& files, Model& model, Index step, const CharTokenizer& tokenizer,
                      const TrainSettings& settings) {
    with_hint("check that --out is writable and the disk has space", [&] {
        seemoe::nn::save_model(files.best.string(), model, tokenizer, step, {{"preset", settings.preset}});
    });
}

// The validation with the highest val exact match so far, and the step that reached it.
struct BestSoFar {
    double exact = -1.0;  // -1: none yet
    Index step = 0;
};

// The first highest val_exact_match in a run's metrics.jsonl.
inline BestSoFar best_val_exact_match(const fs::path& path) {
    BestSoFar best;
    std::error_code ec;
    if (!fs::exists(path, ec)) return best;
    std::istringstream in(seemoe::io::read_file(path.string()));
    std::string line;
    while (std::getline(in, line)) {
        try {
            const Json row = Json::parse(line);
            if (row.contains("val_exact_match") && !row.contains("final") &&
                row.at("val_exact_match").as_double() > best.exact)
                best = {row.at("val_exact_match").as_double(), row.at("step").as_int()};
        } catch (const seemoe::Error&) {
            // a line cut short by a crash
        }
    }
    return best;
}

// Commits the checkpoint of `step`: write_model(path) writes the model file, then the training
// state (AdamW moments, step, Rng, the settings) goes beside it, both in one step folder made
// visible by one rename. A failed write leaves the earlier checkpoints untouched and no temporary
// files; the error says why (errno's text: "No space left on device", "File too large").
template <typename ModelType, typename WriteModel>
void commit_checkpoint(const RunFiles& files, ModelType& model, const seemoe::AdamW<float>& optimizer, Index step,
                       const Rng& rng, const TrainSettings& settings, WriteModel&& write_model) {
    // The numerical guard skips non-finite steps, so this cannot fire; checked all the same,
    // because a NaN in a checkpoint would poison every run resumed from it.
    for (const auto& [name, p] : model.named_parameters())
        for (Index i = 0; i < p.numel(); ++i)
            if (!std::isfinite(p.data()[i]))
                throw CliError("parameter " + name + " is not finite at step " + std::to_string(step) +
                                   "; no checkpoint written",
                               "resume from the last checkpoint with a lower --lr");
    with_hint("check that --out is writable and the disk has space (earlier checkpoints are untouched)", [&] {
        files.checkpoints.commit(
            step,
            [&](const fs::path& dir) {
                write_model((dir / "model.safetensors").string());
                seemoe::nn::save_training_state((dir / "training_state.safetensors").string(), model, optimizer, step,
                                                rng, {{"train", settings_to_json(settings).dump()}});
            },
            files.keep);
    });
    std::error_code ec;
    fs::remove(files.state, ec);  // the old side-by-side layout's state, now stale
}

// A checkpoint of an image run (see commit_checkpoint).
inline void save_checkpoint(const RunFiles& files, Model& model, const seemoe::AdamW<float>& optimizer, Index step,
                            const Rng& rng, const CharTokenizer& tokenizer, const TrainSettings& settings) {
    commit_checkpoint(files, model, optimizer, step, rng, settings, [&](const std::string& path) {
        seemoe::nn::save_model(path, model, tokenizer, step, {{"preset", settings.preset}});
    });
}

// Keeps the metrics lines of steps <= `step` (a resumed run rewrites the ones after it).
inline void truncate_metrics(const fs::path& path, Index step) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    // read_file: a FIFO or a directory named metrics.jsonl is refused instead of blocking.
    std::istringstream in(with_hint("remove or rename " + path.string() + " (it should be a regular file)",
                                    [&] { return seemoe::io::read_file(path.string()); }));
    std::string line, kept;
    while (std::getline(in, line)) {
        try {
            const Json row = Json::parse(line);
            // The final-report line of a finished run goes too: the resumed run writes its own.
            if (row.contains("step") && row.at("step").as_int() <= step && !row.contains("final"))
                kept += line + "\n";
        } catch (const seemoe::Error&) {
            // a line cut short by a crash: drop it
        }
    }
    with_hint("check that --out is writable and the disk has space",
              [&] { seemoe::io::write_file_atomic(path.string(), kept); });
}

// Progress output: rewritten in place on a terminal, plain lines every log_every steps otherwise.
class Progress {
public:
    explicit Progress(Index log_every) : tty_(stdout_is_terminal()), log_every_(log_every) {}

    // `last`: the run's final step, always shown.
    void step(Index step, Index total, double loss, double lr, double tokens_per_s, double eta_s, bool last) {
        const std::string line =
            format("step %*lld/%lld | loss %.4f | lr %.2e | %s tok/s | ETA %s", digits(total),
                   static_cast<long long>(step), static_cast<long long>(total), loss, lr,
                   format_count(static_cast<Index>(tokens_per_s)).c_str(), format_duration(eta_s).c_str());
        if (tty_) {
            std::printf("\r%s\x1b[K", line.c_str());
            pending_ = true;
        } else if (step % log_every_ == 0 || last) {
            std::printf("%s\n", line.c_str());
        }
        std::fflush(stdout);
    }
    // Ends an in-place line before other output.
    void newline() {
        if (pending_) std::printf("\n");
        pending_ = false;
    }

private:
    static int digits(Index n) { return static_cast<int>(std::to_string(n).size()); }
    bool tty_;
    Index log_every_;
    bool pending_ = false;
};

// Everything a run has before its first step: fresh from the preset and flags, or restored.
// ModelType: the vision-language Model, or a TextModel for text runs.
template <typename ModelType>
struct BasicRunState {
    TrainSettings settings;
    ModelType model;
    std::unique_ptr<seemoe::AdamW<float>> optimizer;
    Rng rng{0};               // dropout and router noise; saved with the checkpoint
    Index start_step = 0;     // steps already taken
    CharTokenizer tokenizer;  // the checkpoint's vocabulary (resume only)
    bool resumed = false;
    std::string init_note;    // where a new run's weights came from (--init-from), for the run table
};
using RunState = BasicRunState<Model>;

// The settings of a new run, after checking that --out does not hold one already.
inline RunState new_run(const Args& args, const Preset& preset, const RunFiles& files) {
    std::error_code ec;
    if (fs::exists(files.out, ec) && !fs::is_directory(files.out, ec))
        throw CliError("--out " + files.out.string() + " is a file", "choose a folder for --out");
    if (!args.flag("--force") &&
        (fs::exists(files.model, ec) || fs::exists(files.state, ec) || fs::exists(files.metrics, ec) ||
         fs::exists(files.checkpoints.dir(), ec)))
        throw CliError("--out " + files.out.string() + " already holds a training run",
                       "pass --resume to continue it, --force to replace it, or choose another --out");
    RunState run;
    TrainSettings& s = run.settings;
    s.preset = preset.name;
    s.data = preset.data;
    s.steps = preset.steps;
    s.batch = preset.batch;
    s.lr = preset.lr;
    s.warmup = preset.warmup;
    s.eval_every = preset.eval_every;
    s.save_every = 0;  // 0: follow eval_every
    s.log_every = preset.log_every;
    s.eval_samples = preset.eval_samples;
    s.min_lr_ratio = preset.min_lr_ratio;
    s.label_smoothing = preset.label_smoothing;
    s.crop_padding = preset.crop_padding;
    s.flip = preset.flip;
    s.brightness = preset.brightness;
    s.contrast = preset.contrast;
    s.word_dropout = preset.word_dropout;
    apply_setting_flags(args, s);
    if (s.save_every == 0) s.save_every = s.eval_every;
    return run;
}

// Model, optimiser, Rng, step and settings from one checkpoint (model_path and state_path), read
// by load_checkpoint(path) (load_checkpoint or load_text_checkpoint); flags override settings.
template <typename ModelType, typename LoadCheckpoint>
BasicRunState<ModelType> restore_pair(const Args& args, const fs::path& model_path, const fs::path& state_path,
                                      const std::string& hint, LoadCheckpoint&& load_checkpoint) {
    BasicRunState<ModelType> run;
    run.resumed = true;
    decltype(load_checkpoint(model_path.string())) ck;
    try {
        ck = load_checkpoint(model_path.string());
    } catch (const CliError& e) {
        throw CliError(e.what(), hint);
    }
    run.model = std::move(ck.model);
    run.tokenizer = ck.tokenizer;
    // The settings first: they say which parameters are frozen, and so which have optimiser state.
    const auto stored = with_hint(hint, [&] { return seemoe::io::load_safetensors<float>(state_path.string()).metadata; });
    const auto train_json = stored.find("train");
    if (train_json == stored.end()) throw CliError(state_path.string() + " lacks the run's settings", hint);
    run.settings = with_hint(hint, [&] {
        return seemoe::nn::parse_metadata(state_path.string(), "metadata 'train'",
                                          [&] { return settings_from_json(Json::parse(train_json->second)); });
    });
    const TrainSettings stored_settings = run.settings;
    apply_setting_flags(args, run.settings);
    if (run.settings.freeze != stored_settings.freeze || run.settings.train_only != stored_settings.train_only ||
        run.settings.stage != stored_settings.stage)
        throw CliError("--freeze, --train-only or --stage differ from the run being resumed",
                       "drop them when resuming (a run's frozen parameters are fixed); start the next stage as a new "
                       "run with --init-from");
    apply_freezing(run.model, run.settings);
    run.optimizer = std::make_unique<seemoe::AdamW<float>>(seemoe::nn::trainable_parameters(run.model));
    run.start_step = with_hint(hint, [&] {
        return seemoe::nn::load_training_state(state_path.string(), run.model, *run.optimizer, run.rng);
    });
    if (run.start_step != ck.step)
        throw CliError(format("%s is from step %lld but %s from step %lld (written by a seemoe before checkpoint "
                              "folders, interrupted while saving)",
                              model_path.string().c_str(), static_cast<long long>(ck.step),
                              state_path.string().c_str(), static_cast<long long>(run.start_step)),
                       "start afresh with --force");
    return run;
}

// The run in --out at its newest usable checkpoint: the step folders newest first, falling back
// to an older one (with a line saying why) when one does not load; or the side-by-side files of a
// run saved before checkpoint folders existed.
template <typename ModelType, typename LoadCheckpoint>
BasicRunState<ModelType> restore_checkpoint(const Args& args, const RunFiles& files, LoadCheckpoint&& load_checkpoint) {
    const std::string hint = "resume needs a checkpoint from an earlier 'seemoe train --out " + files.out.string() +
                             "'; start without --resume to train afresh";
    const auto steps = files.checkpoints.steps();
    if (steps.empty()) {
        std::error_code ec;
        if (!fs::exists(files.model, ec) || !fs::exists(files.state, ec))
            throw CliError("no checkpoint to resume in " + files.out.string(), hint);
        return restore_pair<ModelType>(args, files.model, files.state, hint, load_checkpoint);
    }
    for (std::size_t i = 0; i < steps.size(); ++i) {
        const fs::path model = steps[i].dir / "model.safetensors", state = steps[i].dir / "training_state.safetensors";
        try {
            BasicRunState<ModelType> run = restore_pair<ModelType>(args, model, state, hint, load_checkpoint);
            if (run.start_step != steps[i].step)
                throw CliError(format("%s holds step %lld", steps[i].dir.string().c_str(),
                                      static_cast<long long>(run.start_step)),
                               hint);
            return run;
        } catch (const CliError& e) {
            if (i + 1 == steps.size()) throw;  // nothing older to fall back on: the newest reason is in it
            std::printf("checkpoint %s cannot be used (%s); trying %s\n", steps[i].dir.string().c_str(),
                        one_line(e.what()).c_str(), steps[i + 1].dir.filename().string().c_str());
        }
    }
    throw CliError("no usable checkpoint in " + files.out.string(), hint);  // not reached
}

inline RunState restore_run(const Args& args, const RunFiles& files) {
    RunState run = restore_checkpoint<Model>(args, files, load_checkpoint);
    // Model flags may restate the checkpoint's sizes but not change them.
    VLMConfig requested = run.model.config;
    apply_model_flags(args, requested);
    if (seemoe::nn::config_to_json(requested) != seemoe::nn::config_to_json(run.model.config))
        throw CliError("model size flags differ from the checkpoint in " + files.out.string(),
                       "drop the model size flags when resuming (the model's sizes are fixed)");
    return run;
}

// The three splits, the vocabulary and their batchers. Not movable: batchers point into the sets.
struct TrainData {
    TrainData(const std::string& path, Index image_size, Index batch, bool allow_outside_paths)
        : train(load_split(path, Split::train, image_size, allow_outside_paths)),
          val(load_split(path, Split::val, image_size, allow_outside_paths)),
          test(load_split(path, Split::test, image_size, allow_outside_paths)) {
        if (train.empty())
            throw CliError(path + " has no rows with split 'train'", "mark training rows with split = train in captions.csv");
        // Every character of every split, so val and test captions can be encoded and scored.
        tokenizer = with_hint(data_hint("vocabulary"),
                              [&] { return CharTokenizer::from_texts(CaptionDataset::read_captions(path)); });
        batch_size = std::min(batch, train.size());
        eval_batch = std::max<Index>(batch_size, 64);
        train_batcher = std::make_unique<Batcher>(make_batcher(train, tokenizer, batch_size));
        if (!val.empty()) val_batcher = std::make_unique<Batcher>(make_batcher(val, tokenizer, eval_batch));
        if (!test.empty()) test_batcher = std::make_unique<Batcher>(make_batcher(test, tokenizer, eval_batch));
        for (const CaptionDataset* ds : {&train, &val, &test})
            longest_caption = std::max(longest_caption, cli::longest_caption(*ds, tokenizer));
    }
    TrainData(const TrainData&) = delete;
    TrainData& operator=(const TrainData&) = delete;

    CaptionDataset train, val, test;
    CharTokenizer tokenizer;
    Index batch_size = 0, eval_batch = 0, longest_caption = 0;
    std::unique_ptr<Batcher> train_batcher, val_batcher, test_batcher;  // val/test: null when empty
};

// The table printed before the first step: what this run is, the model's config and the
// settings (both straight from their field lists), and what is derived from them.
inline void print_run_table(const RunState& run, const TrainData& data, const RunFiles& files, Model& model,
                            Index end_step, const Team& team) {
    const TrainSettings& s = run.settings;
    std::vector<std::pair<std::string, std::string>> rows = {
        {"run", run.resumed ? format("resuming from step %lld", static_cast<long long>(run.start_step)) : "new"},
        {"out", files.out.string()},
        {"samples", format("%lld train, %lld val, %lld test", static_cast<long long>(data.train.size()),
                           static_cast<long long>(data.val.size()), static_cast<long long>(data.test.size()))},
    };
    for (const auto& row : describe_model(model.config)) rows.push_back(row);
    rows.push_back({"parameters", format_count(model.num_parameters())});
    Index trainable = 0;
    for (const Tensor<float>& p : seemoe::nn::trainable_parameters(model)) trainable += p.numel();
    if (trainable < model.num_parameters())
        rows.push_back({"trained", format("%s of them (the others frozen)", format_count(trainable).c_str())});
    if (!run.init_note.empty()) rows.push_back({"init from", run.init_note});
    for (const auto& row : describe_settings(s)) rows.push_back(row);
    if (end_step < s.steps) rows.push_back({"this run stops", format("at step %lld", static_cast<long long>(end_step))});
    if (data.batch_size < s.batch)
        rows.push_back({"batch used", format("%lld (all the training images)", static_cast<long long>(data.batch_size))});
    for (const auto& row : team.describe(data.batch_size)) rows.push_back(row);
    rows.push_back({"threads", team.size() > 1 ? format("%d per rank", seemoe::num_threads())
                                               : std::to_string(seemoe::num_threads())});
    print_table("seemoe train", rows);
    std::fflush(stdout);
}

// Loss, exact match and character accuracy on the full val and test splits: printed, and
// returned as the final metrics.jsonl line.
// The last step competes for best.safetensors too, scored like the periodic validations (on the
// first `subset` val images).
inline Json final_report(Model& model, const TrainData& data, Index step, const Stopwatch& wall,
                         const RunFiles& files, std::size_t subset, BestSoFar best, const TrainSettings& settings,
                         RoutingAnalysis* val_routing = nullptr) {
    Json report = Json::object();
    report["step"] = step;
    report["final"] = true;
    std::vector<std::pair<std::string, std::string>> rows;
    for (const auto& [name, batcher] : {std::pair<std::string, const Batcher*>{"val", data.val_batcher.get()},
                                        {"test", data.test_batcher.get()}}) {
        if (!batcher) {
            rows.push_back({name, "no rows"});
            continue;
        }
        const std::vector<Index> samples = all_samples(batcher->dataset());
        RoutingCounts routing;
        // The val split's routing is also drawn in the run's pictures (write_run_pictures).
        const double loss = mean_loss(model, *batcher, samples, data.eval_batch, &routing,
                                      name == "val" ? val_routing : nullptr);
        const CaptionScore score = score_captions(model, *batcher, samples, data.eval_batch);
        rows.push_back({name, format("loss %.4f | exact match %s (%lld/%lld) | char accuracy %s", loss,
                                     format_percent(score.exact_match()).c_str(), static_cast<long long>(score.exact),
                                     static_cast<long long>(score.samples),
                                     format_percent(score.char_accuracy()).c_str())});
        report[name + "_loss"] = loss;
        report[name + "_exact_match"] = score.exact_match();
        report[name + "_char_accuracy"] = score.char_accuracy();
        report[name + "_samples"] = score.samples;
        // How evenly the experts share the split's positions: max/mean load, mean over the MoE layers.
        report[name + "_max_over_mean_load"] = mean_max_over_mean(routing);
        rows.push_back({name + " expert load",
                        format("max/mean %.3f (mean over the MoE layers; 1 = even)", mean_max_over_mean(routing))});
        if (name == "val") {
            Index exact = 0;
            for (std::size_t i = 0; i < std::min(subset, score.examples.size()); ++i)
                exact += score.examples[i].first == score.examples[i].second ? 1 : 0;
            const double subset_exact = static_cast<double>(exact) / static_cast<double>(std::max<std::size_t>(subset, 1));
            if (subset_exact > best.exact) {
                best = {subset_exact, step};
                save_best(files, model, step, data.tokenizer, settings);
            }
        }
    }
    report["time_s"] = std::round(wall.seconds() * 10) / 10;  // the whole command, evaluation included
    rows.push_back({"wall time", format_duration(wall.seconds())});
    rows.push_back({"checkpoint", files.model.string()});
    if (best.exact >= 0)
        rows.push_back({"best", format("%s (step %lld: exact match %s on %zu val images)", files.best.string().c_str(),
                                       static_cast<long long>(best.step), format_percent(best.exact).c_str(),
                                       subset)});
    print_table("final report", rows);
    return report;
}

// Caption characters + <eos>: the positions of a batch that carry a target.
inline Index target_count(const seemoe::data::Batch& batch) {
    Index tokens = 0;
    for (Index t : batch.targets) tokens += t != seemoe::kIgnoreIndex ? 1 : 0;
    return tokens;
}

// Steps whose gradient gets a NaN on purpose, from the environment variable SEEMOE_INJECT_NAN
// ("3,4,5"): the fault-injection hook the tests use to exercise the numerical guard.
inline std::vector<Index> injected_nan_steps() {
    std::vector<Index> steps;
    const char* text = std::getenv("SEEMOE_INJECT_NAN");
    if (!text) return steps;
    std::istringstream in(text);
    std::string item;
    while (std::getline(in, item, ','))
        if (!item.empty()) steps.push_back(std::strtoll(item.c_str(), nullptr, 10));
    return steps;
}

struct StepResult {
    TeamLoss total;        // the global batch's mean loss (before the update) and target count
    bool skipped = false;  // the loss or the gradient was not finite: nothing was updated
};

// One optimisation step, the loop body of llm.c or nanoGPT: forward and loss (compute_loss(),
// the model's mean loss over this step's `targets` targets), backward, clip the global gradient
// norm, AdamW at the step's learning rate. Image and text runs share it. With a team of several
// ranks compute_loss() covers this rank's slice of the global batch: its loss is scaled by its
// share of the targets and the gradients are averaged over the ranks before clipping, so every
// rank steps with the gradient of the whole global batch (team.hpp, distributed.hpp); with expert
// parallel each rank steps its own experts, and the clipping norm covers every rank's.
// The numerical guard: if the team's loss or the gradient norm is not finite, the step is skipped
// (no update, gradients dropped), so a NaN never reaches the weights, the moments or a
// checkpoint; every rank sees the same loss and norm, so all skip together. NumericalGuard
// counts such steps.
template <typename ComputeLoss>
StepResult train_step(ComputeLoss&& compute_loss, Index targets, seemoe::AdamW<float>& optimizer,
                      const std::vector<Tensor<float>>& params, double lr, double grad_clip, Team& team,
                      bool inject_nan = false) {
    optimizer.set_lr(lr);
    optimizer.zero_grad();
    Tensor<float> loss = compute_loss();  // ()
    StepResult result;
    result.total = team.reduce_loss(loss.item(), targets);
    if (!std::isfinite(result.total.mean)) {
        result.skipped = true;
        return result;
    }
    if (result.total.scale != 1.0) loss = seemoe::mul(loss, static_cast<float>(result.total.scale));  // ()
    loss.backward();
    team.reduce_gradients();
    if (inject_nan && !params.empty() && params.front().has_grad())
        params.front().node()->grad->data()[0] = std::numeric_limits<float>::quiet_NaN();
    const double norm = team.clip_gradients(params, grad_clip);
    if (!std::isfinite(norm)) {
        optimizer.zero_grad();
        result.skipped = true;
        return result;
    }
    optimizer.step();
    return result;
}

// Counts the steps train_step skipped; after `max_in_a_row` in a row (--max-bad-steps) the run
// stops with a message (the weights and the last checkpoint are still finite). Also knows the
// steps SEEMOE_INJECT_NAN poisons.
class NumericalGuard {
public:
    explicit NumericalGuard(Index max_in_a_row) : max_in_a_row_(max_in_a_row), inject_(injected_nan_steps()) {}

    bool poison(Index step) const { return std::find(inject_.begin(), inject_.end(), step) != inject_.end(); }

    // Counts a step; true when the run must stop.
    bool count(bool skipped) {
        if (!skipped) {
            in_a_row_ = 0;
            return false;
        }
        ++in_a_row_;
        ++total_;
        return in_a_row_ >= max_in_a_row_;
    }

    // A skipped step: marked in its metrics row and printed.
    void report(Index step, const StepResult& result, Json& row, Progress& progress) const {
        row["skipped"] = true;
        progress.newline();
        std::printf("step %lld skipped: non-finite %s (%lld in a row, %lld in this run)\n", static_cast<long long>(step),
                    std::isfinite(result.total.mean) ? "gradient" : "loss", static_cast<long long>(in_a_row_),
                    static_cast<long long>(total_));
    }

    AgreedError stop_error(Index step, bool leader) const {
        return AgreedError(format("training stopped at step %lld: %lld steps in a row had a non-finite loss or "
                                  "gradient (each was skipped; the weights and the last checkpoint are finite)",
                                  static_cast<long long>(step), static_cast<long long>(in_a_row_)),
                           "resume from the last checkpoint with a lower --lr (or raise --max-bad-steps)", leader);
    }

private:
    Index max_in_a_row_;
    std::vector<Index> inject_;
    Index in_a_row_ = 0, total_ = 0;
};

// Per MoE layer, for metrics.jsonl: tokens per expert, max/mean load, router entropy, drop rate.
inline Json routing_json(const std::vector<seemoe::nn::RoutingStats>& layers) {
    Json out = Json::array();
    for (const auto& l : layers) {
        Json row = Json::object();
        Json counts = Json::array();
        for (Index c : l.tokens_per_expert) counts.push_back(c);
        row["tokens_per_expert"] = counts;
        row["max_over_mean"] = std::round(l.max_over_mean_load() * 1e4) / 1e4;
        row["entropy"] = std::round(l.router_entropy * 1e4) / 1e4;
        row["drop_fraction"] = std::round(l.drop_fraction() * 1e4) / 1e4;
        out.push_back(row);
    }
    return out;
}

// Caption tokens per second for the progress line: a running mean of step time and tokens over
// the first 20 steps, then an exponential one that follows changes.
class ThroughputMeter {
public:
    void add(double seconds, Index tokens) {
        ++steps_;
        const double alpha = std::max(0.05, 1.0 / static_cast<double>(steps_));
        seconds_ += alpha * (seconds - seconds_);
        tokens_ += alpha * (static_cast<double>(tokens) - tokens_);
    }
    double tokens_per_second() const { return tokens_ / std::max(seconds_, 1e-9); }
    double seconds_per_step() const { return seconds_; }

private:
    Index steps_ = 0;
    double seconds_ = 0, tokens_ = 0;
};

// The periodic validation: val loss on the whole split, exact match and character accuracy on
// `subset`; printed with a few sample captions and added to the step's metrics row.
inline void validate(Model& model, const TrainData& data, const std::vector<Index>& subset, Index step, Json& row) {
    const double val_loss = mean_loss(model, *data.val_batcher, all_samples(data.val), data.eval_batch);
    const CaptionScore score = score_captions(model, *data.val_batcher, subset, data.eval_batch);
    std::printf("step %lld | val loss %.4f | exact match %s (%lld/%lld) | char accuracy %s\n",
                static_cast<long long>(step), val_loss, format_percent(score.exact_match()).c_str(),
                static_cast<long long>(score.exact), static_cast<long long>(score.samples),
                format_percent(score.char_accuracy()).c_str());
    print_examples(score, 3, /*mistakes_only=*/false);
    row["val_loss"] = val_loss;
    row["val_exact_match"] = score.exact_match();
    row["val_char_accuracy"] = score.char_accuracy();
    row["val_samples"] = score.samples;
}

// The run's AdamW with the settings' weight decay, at the run's step.
template <typename Run>
void prepare_optimizer(Run& run) {
    const TrainSettings& settings = run.settings;
    seemoe::AdamWOptions adamw = run.optimizer->options();
    if (adamw.weight_decay != settings.weight_decay) {
        // AdamW's options are fixed at construction: rebuild it around the restored state.
        auto state = run.optimizer->state();
        adamw.weight_decay = settings.weight_decay;
        run.optimizer = std::make_unique<seemoe::AdamW<float>>(seemoe::nn::trainable_parameters(run.model), adamw);
        run.optimizer->state() = state;
    }
    run.optimizer->set_step_count(run.start_step);
}

// --init-from: the checkpoint a new run starts from, and whether it is upcycled.
struct InitFrom {
    Checkpoint ck;
    bool upcycle = false;
    double noise = 0;
};

// Checks --init-from, --upcycle and --upcycle-noise and loads the checkpoint; `config` becomes the
// model the run trains: the checkpoint's config with the model flags applied (with --upcycle the
// number of experts and top-k come from the flags, else the preset). Null without --init-from.
inline std::unique_ptr<InitFrom> read_init_from(const Args& args, const Preset& preset, VLMConfig& config) {
    const bool upcycle = args.flag("--upcycle");
    if (args.has("--upcycle-noise") && !upcycle)
        throw CliError("--upcycle-noise applies only with --upcycle", "drop --upcycle-noise, or add --upcycle");
    if (!args.has("--init-from")) {
        if (upcycle)
            throw CliError("--upcycle needs --init-from CHECKPOINT, a dense model",
                           "train one with --experts 1 --top-k 1, then pass --init-from its folder");
        return nullptr;
    }
    if (args.flag("--resume"))
        throw CliError("--init-from starts a new run and --resume continues one", "pass one of them");
    auto init = std::make_unique<InitFrom>();
    init->upcycle = upcycle;
    init->noise = args.get_double("--upcycle-noise", 0.0, 0.0, 1.0);
    try {
        init->ck = load_checkpoint(args.get("--init-from", ""));
    } catch (const CliError& e) {
        throw CliError(e.what(), "pass --init-from a model.safetensors written by 'seemoe train' (or its folder)");
    }
    config = init->ck.model.config;
    if (upcycle) {
        const seemoe::nn::DecoderConfig& dense = config.decoder;
        if (dense.num_experts != 1 || dense.top_k != 1 || dense.num_shared_experts != 0)
            throw CliError(format("--upcycle needs a dense checkpoint (1 expert per layer, top-k 1, no shared experts); "
                                  "%s has %lld experts per layer, top-k %lld, %lld shared",
                                  init->ck.path.c_str(), static_cast<long long>(dense.num_experts),
                                  static_cast<long long>(dense.top_k), static_cast<long long>(dense.num_shared_experts)),
                           "train the dense model with --experts 1 --top-k 1, or drop --upcycle");
        config.decoder.num_experts = preset.model.decoder.num_experts;
        config.decoder.top_k = preset.model.decoder.top_k;
    }
    apply_model_flags(args, config);
    if (upcycle) {
        if (config.decoder.num_experts < 2)
            throw CliError("--upcycle to 1 expert per layer leaves the model dense", "pass --experts E with E >= 2");
        if (config.decoder.num_shared_experts > 0)
            throw CliError("--upcycle with --shared-experts: each shared expert would add one more copy of the FFN, "
                           "so the upcycled model would not start as the dense one",
                           "drop --shared-experts");
        if (config.decoder.router == seemoe::nn::RouterType::SoftmaxTopK)
            throw CliError("--upcycle with --router softmax_topk: its gates sum to less than 1, so the upcycled model "
                           "would not start as the dense one",
                           "use --router noisy_topk or topk_softmax");
    }
    return init;
}

// The model and optimiser of the run: built from `config` (the preset with the flags applied) and
// the seed, then, with --init-from, given the checkpoint's weights (or upcycled from them); or
// restored. Frozen parameters (--freeze, --train-only, --stage) get no optimiser state. Checked
// against the data (vocabulary, positions) before anything is written.
inline void prepare_model(VLMConfig config, const RunFiles& files, const TrainData& data, RunState& run,
                          InitFrom* init = nullptr) {
    const TrainSettings& settings = run.settings;
    if (run.resumed && data.tokenizer != run.tokenizer)
        throw CliError("the characters of " + settings.data + " differ from the vocabulary of the checkpoint in " +
                           files.out.string(),
                       "resume with the --data the run was started with");
    config.decoder.vocab_size = data.tokenizer.vocab_size();
    const Index needed = config.num_visual_tokens() + data.longest_caption + 1;
    if (needed > config.decoder.block_size)
        throw CliError(format("captions of up to %lld characters and %lld visual tokens need %lld positions, more "
                              "than the model's %lld",
                              static_cast<long long>(data.longest_caption),
                              static_cast<long long>(config.num_visual_tokens()), static_cast<long long>(needed),
                              static_cast<long long>(config.decoder.block_size)),
                       format("pass --block-size %lld or more", static_cast<long long>(needed)));
    if (!run.resumed) {
        run.rng.seed(settings.seed);  // one stream: initial weights first, then dropout and router noise
        run.model = with_hint("pick other model sizes", [&] { return Model(config, run.rng); });
        if (init) {
            if (data.tokenizer != init->ck.tokenizer)
                throw CliError("the characters of " + settings.data + " differ from the vocabulary of " + init->ck.path,
                               "train on the data the --init-from checkpoint was trained on");
            if (init->upcycle) {
                with_hint("pass --init-from a dense model of this run's sizes", [&] {
                    seemoe::nn::upcycle_from(run.model, init->ck.model, init->noise, run.rng);
                });
                run.init_note = format("%s, upcycled to %lld experts (noise %g)", init->ck.path.c_str(),
                                       static_cast<long long>(config.decoder.num_experts), init->noise);
            } else {
                with_hint("drop the model size flags that change the checkpoint's sizes, or add --upcycle",
                          [&] { seemoe::nn::copy_parameters(run.model, init->ck.model); });
                run.init_note = init->ck.path;
            }
        }
        apply_freezing(run.model, settings);
        run.optimizer = std::make_unique<seemoe::AdamW<float>>(seemoe::nn::trainable_parameters(run.model));
    }
    prepare_optimizer(run);
}

// A new run starts with empty metrics and no stale checkpoint; a resumed one keeps the metrics
// of the steps it has.
template <typename Run>
void prepare_out(const RunFiles& files, const Run& run) {
    std::error_code ec;
    fs::create_directories(files.out);
    if (run.resumed) {
        truncate_metrics(files.metrics, run.start_step);
        // What a killed run left half written, and checkpoints after the one resumed (it fell
        // back past them): this run writes them again.
        files.checkpoints.remove_temporaries();
        files.checkpoints.remove_after(run.start_step);
    } else {
        files.checkpoints.clear();  // --force: no stale checkpoint may outlive the new metrics
        fs::remove(files.model, ec);
        fs::remove(files.state, ec);
        fs::remove(fs::path(files.out) / "best.safetensors", ec);
        with_hint("check that --out is writable and the disk has space",
                  [&] { seemoe::io::write_file_atomic(files.metrics.string(), ""); });
    }
}

// The Rng of dropout and router noise on a rank other than 0 for one step: a function of (seed,
// step, rank), so a resumed run draws the same noise without saving every rank's state (rank 0
// uses the run's own Rng, which the checkpoint holds, so one process runs exactly as before).
inline Rng rank_step_rng(std::uint64_t seed, Index step, int rank) {
    return Rng(seed ^ (0xD1B54A32D192ED03ULL * static_cast<std::uint64_t>(step)) ^
               (0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(rank)));
}

// `seemoe train --text FILE` (and --resume of such a run): the text-only loop, in train_text.hpp.
inline int run_text_train(const Args& args, const Preset& preset, const RunFiles& files, Index stop_at,
                          Index max_bad_steps, const Stopwatch& wall, Team& team);

// The pictures of a finished run, next to its metrics (pictures.hpp): the loss curves and, for
// an image run with a val split, each MoE layer's routing of the val tokens.
inline void write_run_pictures(const RunFiles& files, const RoutingAnalysis* val_routing = nullptr) {
    std::vector<std::string> written;
    const fs::path png = files.out / "loss.png";
    if (write_loss_picture(files.metrics, png, "loss: " + files.out.string())) written.push_back(png.string());
    if (val_routing && !val_routing->layers().empty())
        for (const std::string& f : write_routing_pictures(files.out, "val", *val_routing)) written.push_back(f);
    if (!written.empty())
        std::printf("pictures: %zu PNG files in %s (loss.png%s)\n", written.size(), files.out.string().c_str(),
                    written.size() > 1 ? ", routing_val_*.png" : "");
}

inline int run_train(int argc, char** argv, Team& team) {
    Args args("train", train_flags(), argc, argv, 2);
    if (args.help()) {
        std::printf("%s", train_usage().c_str());
        return 0;
    }
    if (!args.positionals().empty())
        throw CliError("unexpected argument '" + args.positionals().front() + "'", "run 'seemoe train --help' for usage");
    Stopwatch wall;
    const Preset preset = make_preset(args.get_choice("--preset", args.has("--text") ? "makemoe" : "demo", preset_names()));
    const RunFiles files(args.get("--out", "runs/" + preset.name), args.get_int("--keep-checkpoints", 3, 1));
    const Index stop_at = args.get_int("--stop-at", 0, 1);
    const Index max_bad_steps = args.get_int("--max-bad-steps", 5, 1);
    if (args.flag("--resume") && args.flag("--force"))
        throw CliError("--resume and --force contradict each other", "pass one of them");
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));
    // A text run: --text FILE, or --resume of a run whose checkpoint holds a text model.
    const bool text = args.has("--text") || (args.flag("--resume") && is_text_checkpoint(files.model.string()));
    if (text && !args.flag("--resume") && !preset.text)
        throw CliError("--preset " + preset.name + " sizes an image model, not a text model",
                       "drop --preset (text runs use makemoe) or pass --preset makemoe");
    if (!text && preset.text && !args.flag("--resume"))
        throw CliError("--preset " + preset.name + " trains a text-only model and needs --text FILE",
                       "pass --text FILE (e.g. tinyshakespeare.txt; see README 'Text only (makeMoE)')");
    for (const char* flag : {"--init-from", "--upcycle", "--upcycle-noise"})
        if (text && args.has(flag))
            throw CliError(std::string(flag) + " applies to image runs, not to a text run (--text)",
                           std::string("drop ") + flag);
    if (text && args.flag("--expert-parallel"))
        throw CliError("--expert-parallel applies to image runs, not to a text run (--text)", "drop --expert-parallel");
    if (text) return run_text_train(args, preset, files, stop_at, max_bad_steps, wall, team);

    // ---- check everything: settings, checkpoint, data, model; nothing is written yet ----------
    // With several ranks, a failure on any of them stops all of them here, with its message.
    RunState run;
    std::unique_ptr<const TrainData> loaded;
    std::unique_ptr<InitFrom> init;
    team.agree([&] {
        run = args.flag("--resume") ? restore_run(args, files) : new_run(args, preset, files);
        VLMConfig config = run.resumed ? run.model.config : preset.model;
        init = read_init_from(args, preset, config);
        if (!run.resumed && !init) apply_model_flags(args, config);
        loaded = std::make_unique<const TrainData>(run.settings.data, config.vision.image_size, run.settings.batch,
                                                   args.flag("--allow-outside-paths"));
        prepare_model(config, files, *loaded, run, init.get());
        if (args.flag("--expert-parallel")) team.enable_expert_parallel(run.model.config.decoder.num_experts);
        if (loaded->batch_size < team.size())
            throw CliError(format("a batch of %lld images cannot give each of the %d ranks one",
                                  static_cast<long long>(loaded->batch_size), team.size()),
                           format("pass --batch %d or more (the global batch, split over the ranks)", team.size()));
    });
    const TrainSettings& settings = run.settings;
    const TrainData& data = *loaded;
    team.check_same(settings_to_json(settings).dump() + seemoe::nn::config_to_json(run.model.config).dump() +
                        data.tokenizer.to_json() + std::to_string(data.train.size()) + std::to_string(run.start_step) +
                        team.mode(),
                    "flags, data or checkpoint");
    Model& model = run.model;
    seemoe::AdamW<float>& optimizer = *run.optimizer;
    // A resumed run already at (or past) its target trains nothing and only reports.
    const Index end_step =
        std::max(run.start_step, stop_at > 0 ? std::min(stop_at, settings.steps) : settings.steps);
    const seemoe::LrSchedule schedule =
        seemoe::LrSchedule::cosine(settings.lr, settings.warmup, settings.steps, settings.lr * settings.min_lr_ratio);
    if (team.leader()) print_run_table(run, data, files, model, end_step, team);

    // ---- from here on files are written (by the leader, rank 0) -----------------------------
    std::ofstream metrics;
    if (team.leader()) {
        prepare_out(files, run);
        metrics.open(files.metrics, std::ios::app);
    }
    std::vector<Index> val_subset = all_samples(data.val);
    val_subset.resize(static_cast<std::size_t>(std::min(settings.eval_samples, data.val.size())));
    const std::vector<Tensor<float>> params = model.parameters();
    const TeamStart started(team, params, moe_layers(model));  // every rank from rank 0's weights
    Progress progress(settings.log_every);
    ThroughputMeter meter;
    model.train();

    NumericalGuard guard(max_bad_steps);
    const seemoe::data::AugmentOptions augment = settings.augment();
    // The best val exact match so far (of the steps kept in metrics.jsonl when resuming):
    // best.safetensors holds the weights that reached it.
    BestSoFar best = team.leader() ? best_val_exact_match(files.metrics) : BestSoFar{};
    for (Index step = run.start_step + 1; step <= end_step; ++step) {
        Stopwatch step_clock;
        // Step s (from 0) takes batch s of the (seed, epoch) shuffle, so --resume continues exactly.
        // With several ranks each takes its slice of that batch.
        const seemoe::data::Batch batch = data.train_batcher->make_batch(
            team.shard(data.train_batcher->step_samples(step - 1, settings.seed)), augment, settings.seed, step - 1);
        const double lr = schedule.lr_at(step - 1);
        Rng rank_rng = rank_step_rng(settings.seed, step, team.rank());
        Rng& rng = team.leader() ? run.rng : rank_rng;
        // The caption loss plus the weighted MoE auxiliary losses when they are on; the trace also
        // brings each MoE layer's routing statistics.
        seemoe::nn::MoETrace<float> trace;
        trace.aux_losses = settings.balance_loss > 0 || settings.z_loss > 0;
        const StepResult result = train_step(
            [&] {
                Tensor<float> loss =
                    model.loss(batch.images, batch.input_ids, batch.targets, batch.seq_len, rng, &trace,
                               settings.label_smoothing);  // ()
                if (!trace.aux_losses) return loss;
                return seemoe::add(loss, seemoe::add(seemoe::mul(trace.balance_loss, static_cast<float>(settings.balance_loss)),
                                                     seemoe::mul(trace.z_loss, static_cast<float>(settings.z_loss))));
            },
            target_count(batch), optimizer, params, lr, settings.grad_clip, team, guard.poison(step));
        const float loss = static_cast<float>(result.total.mean);
        const bool stop = guard.count(result.skipped);  // on every rank: the verdict is the team's
        // What the leader does after this step, known to every rank: with expert parallel, the
        // experts (and for a checkpoint their AdamW state) are gathered first, on every rank.
        const bool evaluate = step % settings.eval_every == 0 && step != settings.steps && data.val_batcher;
        const bool save = step % settings.save_every == 0 || step == end_step;
        if (!stop && (evaluate || save)) team.gather_model(save ? &optimizer : nullptr);
        if (!team.leader()) {
            if (stop) throw guard.stop_error(step, false);
            continue;  // the leader alone reports, evaluates and saves
        }

        const double dt = step_clock.seconds();
        const Index tokens = result.total.targets;
        meter.add(dt, tokens);
        progress.step(step, settings.steps, loss, lr, meter.tokens_per_second(),
                      meter.seconds_per_step() * static_cast<double>(end_step - step), step == end_step);
        Json row = Json::object();
        row["step"] = step;
        row["loss"] = loss;
        row["lr"] = lr;
        row["tokens_per_s"] = static_cast<Index>(std::lround(static_cast<double>(tokens) / std::max(dt, 1e-9)));
        if (result.skipped) guard.report(step, result, row, progress);
        if (stop) {
            metrics << row.dump() << "\n";
            metrics.flush();
            throw guard.stop_error(step, true);
        }
        if (!result.skipped && trace.aux_losses) {
            row["balance_loss"] = trace.balance_loss.item();
            row["z_loss"] = trace.z_loss.item();
        }
        row["moe"] = routing_json(trace.layers);
        // The last step of the whole run is measured by the final report instead.
        if (evaluate) {
            progress.newline();
            LeaderAlone alone(team);
            validate(model, data, val_subset, step, row);
            if (row.at("val_exact_match").as_double() > best.exact) {
                best = {row.at("val_exact_match").as_double(), step};
                save_best(files, model, step, data.tokenizer, settings);
            }
        }
        metrics << row.dump() << "\n";
        if (save) {
            metrics.flush();
            save_checkpoint(files, model, optimizer, step, run.rng, data.tokenizer, settings);
        }
    }
    if (!team.leader()) return 0;
    progress.newline();
    metrics.flush();

    if (end_step < settings.steps) {
        std::printf("stopped at step %lld of %lld after %s; checkpoint in %s (continue with --resume)\n",
                    static_cast<long long>(end_step), static_cast<long long>(settings.steps),
                    format_duration(wall.seconds()).c_str(), files.out.string().c_str());
        return 0;
    }
    LeaderAlone alone(team);  // the model is whole: the last step gathered it, or no step ran
    RoutingAnalysis val_routing;
    metrics << final_report(model, data, end_step, wall, files, val_subset.size(), best, settings, &val_routing).dump()
            << "\n";
    metrics.flush();
    write_run_pictures(files, &val_routing);
    return 0;
}

}  // namespace cli
