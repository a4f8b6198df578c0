#!/usr/bin/env python3
"""Interleaved side-by-side timing: `seemoe bench` builds against the PyTorch anchor.

On a shared machine absolute times drift from minute to minute, so every comparison is a ratio
of runs made back to back. Each round runs every build once and then the anchor once (the order
of the builds alternating from round to round) and the script reports, per build, the median
and the range of its per-round ratios to the anchor (training step, caption), plus the median
and range of each build's ratio to the first build.

  bench/side_by_side.py --rounds 3 \\
      --build native=build/release/seemoe \\
      --build dispatch=build/dispatch/seemoe \\
      --build avx2=SEEMOE_KERNEL=avx2:build/haswell/seemoe \\
      --build bf16="build/release/seemoe --weights bf16" \\
      -- --preset seemore --threads 2 --steps 10

A build is NAME=[VAR=VALUE,...:]PATH [BENCH FLAGS]; the environment assignments (e.g.
SEEMOE_KERNEL=avx2) and the flags after the path (e.g. "--weights bf16") go to that build's runs
only. Everything after `--` goes to `seemoe bench`; the anchor gets the same --steps and --warmup and
its own default threads (one torch thread, two OpenBLAS threads). Needs Debian's
/usr/bin/python3 with python3-torch for the anchor (--anchor to point elsewhere, --no-anchor to
skip it). Prints one JSON object per run as it goes, then the summary table.
"""
import argparse
import json
import shlex
import os
import statistics
import subprocess
import sys

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--build", action="append", required=True, help="NAME=[VAR=VALUE,...:]PATH")
p.add_argument("--anchor", default=os.path.join(here, "torch_anchor.py"))
p.add_argument("--no-anchor", action="store_true")
p.add_argument("bench_args", nargs="*")
args = p.parse_args()

builds = []
for spec in args.build:
    name, _, rest = spec.partition("=")
    env = {}
    if ":" in rest:
        assignments, _, rest = rest.partition(":")
        for a in assignments.split(","):
            k, _, v = a.partition("=")
            env[k] = v
    words = shlex.split(rest)
    builds.append((name, env, words))

steps, warmup = "10", "2"
for i, a in enumerate(args.bench_args):
    if a == "--steps" and i + 1 < len(args.bench_args):
        steps = args.bench_args[i + 1]
    if a == "--warmup" and i + 1 < len(args.bench_args):
        warmup = args.bench_args[i + 1]


def run(cmd, env_extra):
    env = dict(os.environ)
    env.update(env_extra)
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


results = {name: [] for name, _, _ in builds}
anchor = []
for r in range(args.rounds):
    order = builds if r % 2 == 0 else list(reversed(builds))
    for name, env, words in order:
        j = run([words[0], "bench", "--json"] + words[1:] + args.bench_args, env)
        results[name].append(j)
        print(json.dumps({"round": r, "build": name, "step_ms": j["step_ms_median"],
                          "caption_ms": j.get("caption_ms_median"), "kernel": j.get("kernel_isa"),
                          "rss_mb": j.get("peak_rss_mb")}), flush=True)
    if not args.no_anchor:
        a = run(["/usr/bin/python3", args.anchor, "--steps", steps, "--warmup", warmup], {})
        anchor.append(a)
        print(json.dumps({"round": r, "build": "torch anchor", "step_ms": a["step_ms_median"],
                          "caption_ms": a.get("caption_ms_median"), "rss_mb": a.get("peak_rss_mb")}), flush=True)


def span(values):
    return f"{statistics.median(values):.3f} ({min(values):.3f}-{max(values):.3f})"


first = builds[0][0]
print()
print("| build | step ms (median) | caption ms (median) | step / anchor | caption / anchor | step / " + first + " |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name, _, _ in builds:
    rs = results[name]
    step = [x["step_ms_median"] for x in rs]
    cap = [x.get("caption_ms_median", float("nan")) for x in rs]
    to_first = [x["step_ms_median"] / y["step_ms_median"] for x, y in zip(rs, results[first])]
    if anchor:
        step_ratio = span([x["step_ms_median"] / a["step_ms_median"] for x, a in zip(rs, anchor)])
        cap_ratio = span([x["caption_ms_median"] / a["caption_ms_median"] for x, a in zip(rs, anchor)])
    else:
        step_ratio = cap_ratio = "-"
    print(f"| {name} ({rs[0].get('kernel_isa')}) | {statistics.median(step):.1f} | {statistics.median(cap):.2f} | "
          f"{step_ratio} | {cap_ratio} | {span(to_first)} |")
if anchor:
    print(f"| torch anchor | {statistics.median([a['step_ms_median'] for a in anchor]):.1f} | "
          f"{statistics.median([a['caption_ms_median'] for a in anchor]):.2f} | | | |")
sys.exit(0)
