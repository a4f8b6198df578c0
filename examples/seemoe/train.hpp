// examples/seemoe/train.hpp — `seemoe train`: train the vision MoE language model on captions.
//
// One step: a batch of B images and captions -> teacher-forced cross-entropy -> backward ->
// clip the global gradient norm to 1 -> AdamW at the step's learning rate (linear warmup, then
// cosine decay to a tenth). Around that loop:
//   * everything that can be wrong with the flags, the data or the checkpoint is checked before
//     --out is created, so a failed start leaves no files behind;
//   * the epoch order of step s is a function of (seed, epoch) only, and the one training Rng
//     (dropout, router noise) is saved with the optimiser state, so --resume continues exactly
//     where the checkpoint was taken: same batches, same noise, same numbers;
//   * --out receives model.safetensors (weights, config and vocabulary: all that `caption` and
//     `eval` need), training_state.safetensors (AdamW moments, step, Rng, the run's settings) and
//     metrics.jsonl (one JSON object per step; tokens_per_s counts caption tokens, the targets).
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "evaluation.hpp"
#include "presets.hpp"

namespace cli {

using seemoe::io::Json;

inline std::vector<FlagSpec> run_flags() {
    return {
        {"--data", "DIR", "data set folder with captions.csv (default: data/shapes, relative to the current directory)"},
        {"--out", "DIR", "where checkpoints and metrics.jsonl go (default: runs/<preset>)"},
        {"--preset", "NAME", "tiny | demo | seemore (default: demo)"},
        {"--steps", "N", "total optimisation steps"},
        {"--batch", "N", "images per step"},
        {"--lr", "X", "peak learning rate (AdamW, weight decay 0.01)"},
        {"--warmup", "N", "linear warmup steps before the cosine decay"},
        {"--seed", "N", "seed of every random number (default 1337)"},
        {"--threads", "N", "threads (default: OMP_NUM_THREADS or all cores); 1 gives bit-identical reruns"},
        {"--resume", nullptr, "continue the run in --out (its settings; flags given here override them)"},
        {"--force", nullptr, "start afresh even if --out already holds a run (its files are replaced)"},
        {"--eval-every", "N", "validate every N steps (val loss, exact match, sample captions)"},
        {"--eval-samples", "N", "val images captioned for the periodic exact match (default 200)"},
        {"--save-every", "N", "checkpoint every N steps (default: like --eval-every); always at the end"},
        {"--log-every", "N", "progress line every N steps when stdout is not a terminal"},
        {"--stop-at", "N", "end this run after step N with a checkpoint; finish later with --resume"},
    };
}

inline std::vector<FlagSpec> train_flags() {
    std::vector<FlagSpec> flags = run_flags();
    for (const FlagSpec& f : model_flags()) flags.push_back(f);
    return flags;
}

inline std::string train_usage() {
    return "usage: seemoe train [--data DIR] [--out DIR] [--preset tiny|demo|seemore] [--steps N] [--batch N]\n"
           "                    [--lr X] [--seed N] [--threads N] [--resume] [model size flags]\n"
           "                    [--eval-every N] [--save-every N] [--log-every N]\n\n"
           "Trains the vision MoE language model to caption the images of a data set: a folder with\n"
           "captions.csv (columns image, caption, split = train|val|test) and the images it names.\n"
           "--data defaults to data/shapes RELATIVE TO THE CURRENT DIRECTORY (run from the source\n"
           "tree, or pass the path). The preset sets every number; flags override single ones.\n\n"
           "presets:\n"
           "  tiny      seconds; for tests (image 32, patch 8, ViT 32 x 1, decoder 32 x 2, 4 experts)\n"
           "  demo      the default (image 24, patch 4, ViT 96 x 2, decoder 64 x 3, 8 experts top-2,\n"
           "            6000 steps of 32, lr 5e-4): about 5 minutes on 2 cores, 98% exact on val\n"
           "  seemore   the original seeMoE sizes (image 96, patch 16, ViT 512 x 3, decoder 128 x 8)\n\n"
           "flags:\n" +
           flag_help(run_flags()) + "\nmodel size flags (override the preset; fixed when resuming):\n" +
           flag_help(model_flags()) +
           "\nWrites DIR/model.safetensors (weights, config, vocabulary), DIR/training_state.safetensors\n"
           "(AdamW moments, step, rng, settings) and DIR/metrics.jsonl (one JSON object per step: step,\n"
           "loss, lr, tokens_per_s = caption tokens per second, and val figures when measured; then a\n"
           "final line with the val and test figures).\n";
}

// The numbers of a run that are not the model's: stored with the checkpoint so --resume can
// continue with them.
struct TrainSettings {
    std::string data = kDefaultData;
    std::string preset = "demo";
    Index steps = 0, batch = 0, warmup = 0;
    double lr = 0, min_lr_ratio = 0.1, weight_decay = 0.01, grad_clip = 1.0;
    std::uint64_t seed = 1337;
    Index eval_every = 0, eval_samples = 200, save_every = 0, log_every = 0;

    Json to_json() const {
        Json j = Json::object();
        j["data"] = data;
        j["preset"] = preset;
        j["steps"] = steps;
        j["batch"] = batch;
        j["warmup"] = warmup;
        j["lr"] = lr;
        j["min_lr_ratio"] = min_lr_ratio;
        j["weight_decay"] = weight_decay;
        j["grad_clip"] = grad_clip;
        j["seed"] = std::to_string(seed);  // u64 as text: JSON numbers are doubles
        j["eval_every"] = eval_every;
        j["eval_samples"] = eval_samples;
        j["save_every"] = save_every;
        j["log_every"] = log_every;
        return j;
    }
    static TrainSettings from_json(const Json& j) {
        TrainSettings s;
        s.data = j.at("data").as_string();
        s.preset = j.at("preset").as_string();
        s.steps = j.at("steps").as_int();
        s.batch = j.at("batch").as_int();
        s.warmup = j.at("warmup").as_int();
        s.lr = j.at("lr").as_double();
        s.min_lr_ratio = j.at("min_lr_ratio").as_double();
        s.weight_decay = j.at("weight_decay").as_double();
        s.grad_clip = j.at("grad_clip").as_double();
        s.seed = std::stoull(j.at("seed").as_string());
        s.eval_every = j.at("eval_every").as_int();
        s.eval_samples = j.at("eval_samples").as_int();
        s.save_every = j.at("save_every").as_int();
        s.log_every = j.at("log_every").as_int();
        return s;
    }

    // Flags given on the command line win over the preset (or, when resuming, the stored run).
    void apply_flags(const Args& args) {
        data = args.get("--data", data);
        steps = args.get_int("--steps", steps, 1);
        batch = args.get_int("--batch", batch, 1);
        lr = args.get_double("--lr", lr, 0.0, 10.0);
        warmup = args.get_int("--warmup", warmup, 0);
        seed = args.get_seed("--seed", seed);
        eval_every = args.get_int("--eval-every", eval_every, 1);
        eval_samples = args.get_int("--eval-samples", eval_samples, 1);
        save_every = args.get_int("--save-every", save_every, 1);
        log_every = args.get_int("--log-every", log_every, 1);
        warmup = std::min(warmup, steps);
    }
};

// The sample order of one epoch: a Fisher–Yates shuffle from an Rng seeded by (seed, epoch), so
// the batch of any step can be recomputed after a restart without replaying the ones before.
inline std::vector<Index> epoch_order(Index n, std::uint64_t seed, Index epoch) {
    Rng rng(seed ^ (0x9E3779B97F4A7C15ULL * static_cast<std::uint64_t>(epoch + 1)));
    std::vector<Index> order(static_cast<std::size_t>(n));
    std::iota(order.begin(), order.end(), Index(0));
    for (Index i = n - 1; i > 0; --i)
        std::swap(order[static_cast<std::size_t>(i)], order[static_cast<std::size_t>(rng.randint(0, i + 1))]);
    return order;
}

// Writes `text` to `path` through a temporary file and a rename, so readers never see half of it.
inline void write_text_atomically(const fs::path& path, const std::string& text) {
    const fs::path tmp = path.string() + ".tmp";
    {
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        out << text;
        if (!out.flush())
            throw CliError("cannot write " + tmp.string(), "check that --out is writable and the disk has space");
    }
    fs::rename(tmp, path);
}

struct RunFiles {
    fs::path out, model, state, metrics;
    explicit RunFiles(const fs::path& dir)
        : out(dir), model(dir / "model.safetensors"), state(dir / "training_state.safetensors"),
          metrics(dir / "metrics.jsonl") {}
};

inline void save_checkpoint(const RunFiles& files, Model& model, const seemoe::AdamW<float>& optimizer, Index step,
                            const Rng& rng, const CharTokenizer& tokenizer, const TrainSettings& settings) {
    const std::string step_text = std::to_string(step);
    // Model first: a crash between the two writes leaves a newer model than state, which resume
    // detects by comparing their steps.
    seemoe::nn::save_model(files.model.string(), model,
                           {{"format", "seemoe vision MoE language model"},
                            {"config", seemoe::nn::config_to_json(model.config).dump()},
                            {"vocab", tokenizer.to_json()},
                            {"step", step_text},
                            {"preset", settings.preset}});
    seemoe::nn::save_training_state(files.state.string(), model, optimizer, step, rng,
                                    {{"train", settings.to_json().dump()}});
}

// Keeps the metrics lines of steps <= `step` (a resumed run rewrites the ones after it).
inline void truncate_metrics(const fs::path& path, Index step) {
    std::error_code ec;
    if (!fs::exists(path, ec)) return;
    std::ifstream in(path);
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
    in.close();
    write_text_atomically(path, kept);
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
struct RunState {
    TrainSettings settings;
    Model model;
    std::unique_ptr<seemoe::AdamW<float>> optimizer;
    Rng rng{0};               // dropout and router noise; saved with the checkpoint
    Index start_step = 0;     // steps already taken
    CharTokenizer tokenizer;  // the checkpoint's vocabulary (resume only)
    bool resumed = false;
};

// The settings of a new run, after checking that --out does not hold one already.
inline RunState new_run(const Args& args, const Preset& preset, const RunFiles& files) {
    std::error_code ec;
    if (fs::exists(files.out, ec) && !fs::is_directory(files.out, ec))
        throw CliError("--out " + files.out.string() + " is a file", "choose a folder for --out");
    if (!args.flag("--force") &&
        (fs::exists(files.model, ec) || fs::exists(files.state, ec) || fs::exists(files.metrics, ec)))
        throw CliError("--out " + files.out.string() + " already holds a training run",
                       "pass --resume to continue it, --force to replace it, or choose another --out");
    RunState run;
    TrainSettings& s = run.settings;
    s.preset = preset.name;
    s.steps = preset.steps;
    s.batch = preset.batch;
    s.lr = preset.lr;
    s.warmup = preset.warmup;
    s.eval_every = preset.eval_every;
    s.save_every = 0;  // 0: follow eval_every
    s.log_every = preset.log_every;
    s.apply_flags(args);
    if (s.save_every == 0) s.save_every = s.eval_every;
    return run;
}

// Model, optimiser, Rng, step and settings from the checkpoint in --out; flags override settings.
inline RunState restore_run(const Args& args, const RunFiles& files) {
    const std::string hint = "resume needs model.safetensors and training_state.safetensors from an earlier "
                             "'seemoe train --out " +
                             files.out.string() + "'; start without --resume to train afresh";
    std::error_code ec;
    if (!fs::exists(files.model, ec) || !fs::exists(files.state, ec))
        throw CliError("no checkpoint to resume in " + files.out.string(), hint);
    RunState run;
    run.resumed = true;
    Checkpoint ck;
    try {
        ck = load_checkpoint(files.model.string());
    } catch (const CliError& e) {
        throw CliError(e.what(), hint);
    }
    run.model = std::move(ck.model);
    run.tokenizer = ck.tokenizer;
    run.optimizer = std::make_unique<seemoe::AdamW<float>>(run.model.parameters());
    run.start_step = with_hint(hint, [&] {
        return seemoe::nn::load_training_state(files.state.string(), run.model, *run.optimizer, run.rng);
    });
    if (run.start_step != ck.step)
        throw CliError(format("%s is from step %lld but %s from step %lld (interrupted while saving?)",
                              files.model.string().c_str(), static_cast<long long>(ck.step),
                              files.state.string().c_str(), static_cast<long long>(run.start_step)),
                       "start afresh with --force");
    const auto stored = seemoe::io::load_safetensors<float>(files.state.string()).metadata;
    const auto train_json = stored.find("train");
    if (train_json == stored.end()) throw CliError(files.state.string() + " lacks the run's settings", hint);
    run.settings = with_hint(hint, [&] { return TrainSettings::from_json(Json::parse(train_json->second)); });
    run.settings.apply_flags(args);
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
    TrainData(const std::string& path, Index image_size, Index batch)
        : train(load_split(path, Split::train, image_size)),
          val(load_split(path, Split::val, image_size)),
          test(load_split(path, Split::test, image_size)) {
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

inline void print_run_table(const RunState& run, const TrainData& data, const RunFiles& files, Model& model,
                            Index end_step) {
    const TrainSettings& s = run.settings;
    std::vector<std::pair<std::string, std::string>> rows = {
        {"run", run.resumed ? format("resuming from step %lld", static_cast<long long>(run.start_step)) : "new"},
        {"data", format("%s (%lld train, %lld val, %lld test)", s.data.c_str(), static_cast<long long>(data.train.size()),
                        static_cast<long long>(data.val.size()), static_cast<long long>(data.test.size()))},
        {"out", files.out.string()},
        {"preset", s.preset},
    };
    for (const auto& row : describe_model(model.config)) rows.push_back(row);
    rows.push_back({"parameters", format_count(model.num_parameters())});
    std::string steps = std::to_string(s.steps);
    if (end_step < s.steps) steps += format(" (this run stops at %lld)", static_cast<long long>(end_step));
    rows.push_back({"steps", steps});
    rows.push_back({"batch", format("%lld images%s", static_cast<long long>(data.batch_size),
                                    data.batch_size < s.batch ? " (all the training images)" : "")});
    rows.push_back({"optimiser", format("AdamW, lr %g, warmup %lld then cosine to %g, weight decay %g, clip %g", s.lr,
                                        static_cast<long long>(s.warmup), s.lr * s.min_lr_ratio, s.weight_decay,
                                        s.grad_clip)});
    rows.push_back({"seed", std::to_string(s.seed)});
    rows.push_back({"threads", std::to_string(seemoe::num_threads())});
    rows.push_back({"eval / save", format("every %lld / %lld steps, exact match on %lld val images",
                                          static_cast<long long>(s.eval_every), static_cast<long long>(s.save_every),
                                          static_cast<long long>(std::min(s.eval_samples, data.val.size())))});
    print_table("seemoe train", rows);
    std::fflush(stdout);
}

// Loss, exact match and character accuracy on the full val and test splits: printed, and
// returned as the final metrics.jsonl line.
inline Json final_report(Model& model, const TrainData& data, Index step, const Stopwatch& wall,
                         const RunFiles& files) {
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
        const double loss = mean_loss(model, *batcher, samples, data.eval_batch);
        const CaptionScore score = score_captions(model, *batcher, samples, data.eval_batch);
        rows.push_back({name, format("loss %.4f | exact match %s (%lld/%lld) | char accuracy %s", loss,
                                     format_percent(score.exact_match()).c_str(), static_cast<long long>(score.exact),
                                     static_cast<long long>(score.samples),
                                     format_percent(score.char_accuracy()).c_str())});
        report[name + "_loss"] = loss;
        report[name + "_exact_match"] = score.exact_match();
        report[name + "_char_accuracy"] = score.char_accuracy();
        report[name + "_samples"] = score.samples;
    }
    report["time_s"] = std::round(wall.seconds() * 10) / 10;  // the whole command, evaluation included
    rows.push_back({"wall time", format_duration(wall.seconds())});
    rows.push_back({"checkpoint", files.model.string()});
    print_table("final report", rows);
    return report;
}

inline int run_train(int argc, char** argv) {
    Args args("train", train_flags(), argc, argv, 2);
    if (args.help()) {
        std::printf("%s", train_usage().c_str());
        return 0;
    }
    if (!args.positionals().empty())
        throw CliError("unexpected argument '" + args.positionals().front() + "'", "run 'seemoe train --help' for usage");
    Stopwatch wall;
    const Preset preset = make_preset(args.get_choice("--preset", "demo", preset_names()));
    const RunFiles files(args.get("--out", "runs/" + preset.name));
    const Index stop_at = args.get_int("--stop-at", 0, 1);
    if (args.flag("--resume") && args.flag("--force"))
        throw CliError("--resume and --force contradict each other", "pass one of them");
    if (args.has("--threads")) seemoe::set_num_threads(static_cast<int>(args.get_int("--threads", 1, 1)));

    // ---- check everything: settings, checkpoint, data, model; nothing is written yet ----------
    RunState run = args.flag("--resume") ? restore_run(args, files) : new_run(args, preset, files);
    TrainSettings& settings = run.settings;
    VLMConfig config = run.resumed ? run.model.config : preset.model;
    if (!run.resumed) apply_model_flags(args, config);
    const TrainData data(settings.data, config.vision.image_size, settings.batch);
    if (run.resumed && data.tokenizer != run.tokenizer)
        throw CliError("the characters of " + settings.data + " differ from the vocabulary of the checkpoint in " +
                           files.out.string(),
                       "resume with the --data the run was started with");
    config.decoder.vocab_size = data.tokenizer.vocab_size();
    const Index needed = visual_token_count(config) + data.longest_caption + 1;
    if (needed > config.decoder.block_size)
        throw CliError(format("captions of up to %lld characters and %lld visual tokens need %lld positions, more "
                              "than the model's %lld",
                              static_cast<long long>(data.longest_caption),
                              static_cast<long long>(visual_token_count(config)), static_cast<long long>(needed),
                              static_cast<long long>(config.decoder.block_size)),
                       format("pass --block-size %lld or more", static_cast<long long>(needed)));
    Model& model = run.model;
    Rng& rng = run.rng;
    if (!run.resumed) {
        rng.seed(settings.seed);  // one stream: initial weights first, then dropout and router noise
        model = with_hint("pick other model sizes", [&] { return Model(config, rng); });
        run.optimizer = std::make_unique<seemoe::AdamW<float>>(model.parameters());
    }
    seemoe::AdamWOptions adamw = run.optimizer->options();
    if (adamw.weight_decay != settings.weight_decay) {
        // AdamW's options are fixed at construction: rebuild it around the restored state.
        auto state = run.optimizer->state();
        adamw.weight_decay = settings.weight_decay;
        run.optimizer = std::make_unique<seemoe::AdamW<float>>(model.parameters(), adamw);
        run.optimizer->state() = state;
    }
    seemoe::AdamW<float>& optimizer = *run.optimizer;
    optimizer.set_step_count(run.start_step);
    // A resumed run already at (or past) its target trains nothing and only reports.
    const Index end_step =
        std::max(run.start_step, stop_at > 0 ? std::min(stop_at, settings.steps) : settings.steps);
    const seemoe::LrSchedule schedule =
        seemoe::LrSchedule::cosine(settings.lr, settings.warmup, settings.steps, settings.lr * settings.min_lr_ratio);
    print_run_table(run, data, files, model, end_step);

    // ---- from here on files are written ------------------------------------------------------
    std::error_code ec;
    fs::create_directories(files.out);
    if (run.resumed) {
        truncate_metrics(files.metrics, run.start_step);
    } else {
        fs::remove(files.model, ec);  // --force: no stale checkpoint may outlive the new metrics
        fs::remove(files.state, ec);
        write_text_atomically(files.metrics, "");
    }
    std::ofstream metrics(files.metrics, std::ios::app);

    std::vector<Index> val_subset = all_samples(data.val);
    val_subset.resize(static_cast<std::size_t>(std::min(settings.eval_samples, data.val.size())));
    const std::vector<seemoe::Tensor<float>> params = model.parameters();
    const Index B = data.batch_size;
    const Index per_epoch = data.train.size() / B;  // the remainder waits for a later epoch's shuffle
    Index order_epoch = -1;
    std::vector<Index> order;
    Progress progress(settings.log_every);
    model.train();

    double step_time_ema = 0, tokens_ema = 0;
    for (Index step = run.start_step + 1; step <= end_step; ++step) {
        Stopwatch step_clock;
        const Index s = step - 1, epoch = s / per_epoch, pos = s % per_epoch;
        if (epoch != order_epoch) {
            order = epoch_order(data.train.size(), settings.seed, epoch);
            order_epoch = epoch;
        }
        const std::vector<Index> samples(order.begin() + pos * B, order.begin() + (pos + 1) * B);
        const seemoe::data::Batch batch = data.train_batcher->make_batch(samples);  // images (B, 3, S, S)
        const double lr = schedule.lr_at(s);
        optimizer.set_lr(lr);
        optimizer.zero_grad();
        seemoe::Tensor<float> loss = model.loss(batch.images, batch.input_ids, batch.targets, batch.seq_len, rng);  // ()
        const float loss_value = loss.item();
        if (!std::isfinite(loss_value))
            throw CliError(format("training diverged at step %lld (loss %g)", static_cast<long long>(step),
                                  static_cast<double>(loss_value)),
                           "lower --lr, or resume from the last checkpoint with a lower --lr");
        loss.backward();
        seemoe::clip_grad_norm(params, settings.grad_clip);
        optimizer.step();

        Index tokens = 0;  // caption characters + <eos>: the positions that carry a target
        for (Index t : batch.targets) tokens += t != seemoe::data::ignore_index ? 1 : 0;
        const double dt = step_clock.seconds();
        // A running mean over the first 20 steps, then an exponential one that follows changes.
        const double alpha = std::max(0.05, 1.0 / static_cast<double>(step - run.start_step));
        step_time_ema += alpha * (dt - step_time_ema);
        tokens_ema += alpha * (static_cast<double>(tokens) - tokens_ema);
        progress.step(step, settings.steps, loss_value, lr, tokens_ema / std::max(step_time_ema, 1e-9),
                      step_time_ema * static_cast<double>(end_step - step), step == end_step);

        Json row = Json::object();
        row["step"] = step;
        row["loss"] = loss_value;
        row["lr"] = lr;
        row["tokens_per_s"] = static_cast<Index>(std::lround(static_cast<double>(tokens) / std::max(dt, 1e-9)));
        // The last step of the whole run is measured by the final report instead.
        if (step % settings.eval_every == 0 && step != settings.steps && data.val_batcher) {
            const double val_loss = mean_loss(model, *data.val_batcher, all_samples(data.val), data.eval_batch);
            const CaptionScore score = score_captions(model, *data.val_batcher, val_subset, data.eval_batch);
            progress.newline();
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
        metrics << row.dump() << "\n";
        if (step % settings.save_every == 0 || step == end_step) {
            metrics.flush();
            save_checkpoint(files, model, optimizer, step, rng, data.tokenizer, settings);
        }
    }
    progress.newline();
    metrics.flush();

    if (end_step < settings.steps) {
        std::printf("stopped at step %lld of %lld after %s; checkpoint in %s (continue with --resume)\n",
                    static_cast<long long>(end_step), static_cast<long long>(settings.steps),
                    format_duration(wall.seconds()).c_str(), files.out.string().c_str());
        return 0;
    }
    metrics << final_report(model, data, end_step, wall, files).dump() << "\n";
    return 0;
}

}  // namespace cli
