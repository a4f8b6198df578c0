// examples/seemoe/train_text.hpp — `seemoe train --text FILE`: a text-only character language
// model (makeMoE's, with --preset makemoe) trained on one UTF-8 text file.
//
// The same run as for images (train.hpp: settings, presets, flags, progress line, metrics.jsonl,
// checkpoints, --resume, --stop-at) with a text data set: the file's first 90% of characters
// train, the last 10% validate (data/text.hpp). Step s trains on --batch windows of block_size
// characters at random starts drawn from (seed, s) alone, so --resume continues with the same
// batches. Every --eval-every steps the val loss is the mean over --eval-batches batches of
// --batch random val windows, drawn once per run (the same windows each time): makeMoE's
// estimate_loss with eval_iters = 200. The final report scores the whole val part, every
// character once, and prints a sample.
//
// metrics.jsonl: {"step", "loss", "lr", "tokens_per_s" (characters), and at evaluations
// "val_loss", "val_bpc"}; the final line {"final": true, "val_loss" (whole val part), "val_bpc",
// "val_loss_estimate" (the periodic estimate), "val_characters", "time_s"}.
#pragma once

#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "train.hpp"

namespace cli {

using TextRunState = BasicRunState<TextModel>;

// The checkpoint in --out holds a text model: restore it (model flags may restate its sizes only).
inline TextRunState restore_text_run(const Args& args, const RunFiles& files) {
    TextRunState run = restore_checkpoint<TextModel>(args, files, load_text_checkpoint);
    VLMConfig requested;
    requested.decoder = run.model.config;
    apply_model_flags(args, requested, /*text_only=*/true);
    if (seemoe::nn::text_config_to_json(requested.decoder) != seemoe::nn::text_config_to_json(run.model.config))
        throw CliError("model size flags differ from the checkpoint in " + files.out.string(),
                       "drop the model size flags when resuming (the model's sizes are fixed)");
    return run;
}

// model.safetensors (a text model: weights, config, vocabulary, step, and the text file's path,
// the default of `seemoe eval`) and training_state.safetensors, as save_checkpoint does for images.
inline void save_text_checkpoint(const RunFiles& files, TextModel& model, const seemoe::AdamW<float>& optimizer,
                                 Index step, const Rng& rng, const CharTokenizer& tokenizer,
                                 const TrainSettings& settings) {
    commit_checkpoint(files, model, optimizer, step, rng, settings, [&](const std::string& path) {
        seemoe::nn::save_text_model(path, model, tokenizer, step, {{"preset", settings.preset}, {"text", settings.text}});
    });
}

inline void print_text_run_table(TextRunState& run, const TextDataset& data, const RunFiles& files,
                                  Index end_step) {
    const TrainSettings& s = run.settings;
    std::vector<std::pair<std::string, std::string>> rows = {
        {"run", run.resumed ? format("resuming from step %lld", static_cast<long long>(run.start_step)) : "new"},
        {"out", files.out.string()},
        {"characters", format("%lld train, %lld val (the last 10%%), vocabulary of %lld",
                              static_cast<long long>(data.ids(TextSplit::train).size()),
                              static_cast<long long>(data.ids(TextSplit::val).size()),
                              static_cast<long long>(data.tokenizer().vocab_size() - CharTokenizer::num_special))},
        describe_text_model(run.model.config),
        {"parameters", format_count(run.model.num_parameters())},
    };
    for (const auto& row : describe_settings(s)) rows.push_back(row);
    rows.push_back({"val loss", format("mean over %lld batches of %lld random val windows (the same each time)",
                                       static_cast<long long>(s.eval_batches), static_cast<long long>(s.batch))});
    if (end_step < s.steps) rows.push_back({"this run stops", format("at step %lld", static_cast<long long>(end_step))});
    rows.push_back({"threads", std::to_string(seemoe::num_threads())});
    print_table("seemoe train --text", rows);
    std::fflush(stdout);
}

inline int run_text_train(const Args& args, const Preset& preset, const RunFiles& files, Index stop_at,
                          Index max_bad_steps, const Stopwatch& wall, Team& team) {
    // Data parallel training is written for the image runs only (train.hpp).
    team.agree([&] {
        if (team.size() > 1)
            throw CliError("text runs (--text) train in one process only",
                           "run 'seemoe train --text ...' without mpirun");
    });
    // ---- check everything: settings, checkpoint, text, model; nothing is written yet -----------
    TextRunState run;
    if (args.flag("--resume")) {
        run = restore_text_run(args, files);
    } else {
        run.settings = new_run(args, preset, files).settings;
    }
    const TrainSettings& settings = run.settings;
    seemoe::nn::DecoderConfig config = run.model.config;
    if (!run.resumed) {
        VLMConfig sized = preset.model;
        apply_model_flags(args, sized, /*text_only=*/true);
        config = sized.decoder;
    }
    const TextDataset data = load_text(settings.text, config.block_size);
    if (run.resumed && data.tokenizer() != run.tokenizer)
        throw CliError("the characters of " + settings.text + " differ from the vocabulary of the checkpoint in " +
                           files.out.string(),
                       "resume with the --text file the run was started with");
    if (!run.resumed) {
        config.vocab_size = data.tokenizer().vocab_size();
        run.rng.seed(settings.seed);  // one stream: initial weights first, then dropout and router noise
        run.model = with_hint("pick other model sizes", [&] { return TextModel(config, run.rng); });
        run.optimizer = std::make_unique<seemoe::AdamW<float>>(run.model.parameters());
    }
    prepare_optimizer(run);
    TextModel& model = run.model;
    seemoe::AdamW<float>& optimizer = *run.optimizer;
    const Index end_step =
        std::max(run.start_step, stop_at > 0 ? std::min(stop_at, settings.steps) : settings.steps);
    const seemoe::LrSchedule schedule =
        seemoe::LrSchedule::cosine(settings.lr, settings.warmup, settings.steps, settings.lr * settings.min_lr_ratio);
    print_text_run_table(run, data, files, end_step);

    // The periodic val windows: drawn once, from the seed alone, so a resumed run measures the same.
    const Index B = settings.batch, T = config.block_size;
    std::vector<TextBatch> val_windows;
    Rng val_rng(settings.seed ^ 0x5DEECE66DULL);
    for (Index i = 0; i < settings.eval_batches; ++i)
        val_windows.push_back(data.random_windows(TextSplit::val, B, val_rng));

    // ---- from here on files are written ------------------------------------------------------
    prepare_out(files, run);
    std::ofstream metrics(files.metrics, std::ios::app);
    const std::vector<Tensor<float>> params = model.parameters();
    Progress progress(settings.log_every);
    ThroughputMeter meter;
    model.train();
    double val_estimate = -1;  // the last periodic val loss
    NumericalGuard guard(max_bad_steps);

    for (Index step = run.start_step + 1; step <= end_step; ++step) {
        Stopwatch step_clock;
        const TextBatch batch = data.step_windows(step - 1, settings.seed, B);  // (B, T) inputs and targets
        const double lr = schedule.lr_at(step - 1);
        const StepResult result =
            train_step([&] { return model.loss(batch.inputs, batch.targets, B, T, run.rng); }, B * T, optimizer,
                       params, lr, settings.grad_clip, team, guard.poison(step));
        const float loss = static_cast<float>(result.total.mean);
        const bool stop = guard.count(result.skipped);

        const double dt = step_clock.seconds();
        meter.add(dt, B * T);
        progress.step(step, settings.steps, loss, lr, meter.tokens_per_second(),
                      meter.seconds_per_step() * static_cast<double>(end_step - step), step == end_step);
        Json row = Json::object();
        row["step"] = step;
        row["loss"] = loss;
        row["lr"] = lr;
        row["tokens_per_s"] = static_cast<Index>(std::lround(static_cast<double>(B * T) / std::max(dt, 1e-9)));
        if (result.skipped) guard.report(step, result, row, progress);
        if (stop) {
            metrics << row.dump() << "\n";
            metrics.flush();
            throw guard.stop_error(step, true);
        }
        if (step % settings.eval_every == 0 || step == settings.steps) {
            val_estimate = text_loss(model, val_windows);
            progress.newline();
            std::printf("step %lld | val loss %.4f | %.3f bits per character\n", static_cast<long long>(step),
                        val_estimate, bits_per_character(val_estimate));
            row["val_loss"] = val_estimate;
            row["val_bpc"] = bits_per_character(val_estimate);
        }
        metrics << row.dump() << "\n";
        if (step % settings.save_every == 0 || step == end_step) {
            metrics.flush();
            save_text_checkpoint(files, model, optimizer, step, run.rng, data.tokenizer(), settings);
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

    // ---- final report: the whole val part, and a sample ----------------------------------------
    if (val_estimate < 0) val_estimate = text_loss(model, val_windows);  // a resumed run that was done
    const double val_loss = text_loss(model, data.covering_batches(TextSplit::val, 64));
    const Index val_characters = static_cast<Index>(data.ids(TextSplit::val).size()) - 1;
    Json report = Json::object();
    report["step"] = end_step;
    report["final"] = true;
    report["val_loss"] = val_loss;
    report["val_bpc"] = bits_per_character(val_loss);
    report["val_loss_estimate"] = val_estimate;
    report["val_characters"] = val_characters;
    report["time_s"] = std::round(wall.seconds() * 10) / 10;  // the whole command, evaluation included
    print_table("final report",
                {{"val loss", format("%.4f (%.3f bits per character), every one of the %lld val characters", val_loss,
                                     bits_per_character(val_loss), static_cast<long long>(val_characters))},
                 {"val estimate", format("%.4f (%lld batches of %lld random windows)", val_estimate,
                                         static_cast<long long>(settings.eval_batches), static_cast<long long>(B))},
                 {"wall time", format_duration(wall.seconds())},
                 {"checkpoint", files.model.string()}});
    metrics << report.dump() << "\n";
    metrics.flush();

    // A taste of the model: 200 sampled characters (temperature 1, the run's seed), from the
    // vocabulary's first character as `seemoe generate` starts without a prompt.
    seemoe::nn::SamplingOptions sampling;
    sampling.max_new_tokens = 200;
    sampling.temperature = 1.0;
    for (Index id = 0; id < CharTokenizer::num_special; ++id) sampling.suppress.push_back(id);
    Rng sample_rng(settings.seed);
    std::printf("sample (seemoe generate --model %s --tokens 200 --seed %llu):\n", files.out.string().c_str(),
                static_cast<unsigned long long>(settings.seed));
    const std::vector<Index> sample = model.generate({CharTokenizer::num_special}, sampling, sample_rng);
    std::printf("%s\n", data.tokenizer().decode(sample).c_str());
    return 0;
}

}  // namespace cli
