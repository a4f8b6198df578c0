// seemoe/optim/schedule.hpp — learning-rate schedules: constant, and linear warmup + cosine decay.
//
// Convention: `step` counts optimiser steps from 0 and names the step ABOUT to be taken, so a
// training loop does `opt.set_lr(schedule.lr_at(step)); opt.step();`. warmup_cosine is:
//
//   step <  warmup:          lr = base_lr * (step + 1) / warmup          (reaches base_lr at
//                                                                          step warmup - 1)
//   warmup <= step < total:  progress = (step - warmup) / (total - warmup)        in [0, 1)
//                            lr = min_lr + 0.5 * (base_lr - min_lr) * (1 + cos(pi * progress))
//   step >= total:           lr = min_lr
//
// so lr = base_lr at step warmup, (base_lr + min_lr) / 2 halfway through the decay, and min_lr
// from step total on (the nanoGPT recipe). warmup = 0 means no warmup.
#pragma once

#include <cmath>

#include "../core/common.hpp"

namespace seemoe {

// The same learning rate at every step.
inline double constant_lr(Index step, double base_lr) {
    SEEMOE_CHECK(step >= 0, "[constant_lr] step must be >= 0, got ", step);
    return base_lr;
}

// Linear warmup over `warmup` steps, then cosine decay to min_lr at step `total` (see above).
inline double warmup_cosine(Index step, Index total, Index warmup, double base_lr, double min_lr) {
    SEEMOE_CHECK(step >= 0, "[warmup_cosine] step must be >= 0, got ", step);
    SEEMOE_CHECK(warmup >= 0 && total >= warmup, "[warmup_cosine] need 0 <= warmup <= total, got warmup ",
                 warmup, " and total ", total);
    if (step < warmup) return base_lr * static_cast<double>(step + 1) / static_cast<double>(warmup);
    if (step >= total) return min_lr;
    const double progress = static_cast<double>(step - warmup) / static_cast<double>(total - warmup);
    const double pi = 3.14159265358979323846;
    return min_lr + 0.5 * (base_lr - min_lr) * (1.0 + std::cos(pi * progress));
}

// A schedule as a value, for configs and checkpoints: LrSchedule::constant(3e-4) or
// LrSchedule::cosine(3e-4, warmup, total, min_lr); then lr_at(step).
struct LrSchedule {
    enum class Kind { constant, warmup_cosine };
    Kind kind = Kind::constant;
    double base_lr = 1e-3;
    double min_lr = 0.0;  // warmup_cosine only
    Index warmup = 0;     // warmup_cosine only
    Index total = 0;      // warmup_cosine only

    static LrSchedule constant(double lr) {
        LrSchedule s;
        s.base_lr = lr;
        return s;
    }
    static LrSchedule cosine(double base_lr, Index warmup, Index total, double min_lr) {
        SEEMOE_CHECK(warmup >= 0 && total >= warmup, "[LrSchedule] need 0 <= warmup <= total, got warmup ",
                     warmup, " and total ", total);
        LrSchedule s;
        s.kind = Kind::warmup_cosine;
        s.base_lr = base_lr;
        s.min_lr = min_lr;
        s.warmup = warmup;
        s.total = total;
        return s;
    }

    double lr_at(Index step) const {
        return kind == Kind::constant ? constant_lr(step, base_lr)
                                      : warmup_cosine(step, total, warmup, base_lr, min_lr);
    }
};

}  // namespace seemoe
