#!/usr/bin/env bash
# Runs every libFuzzer target of the `fuzz` preset on its committed seed corpus, one after the
# other, and prints one line per target with its executions and outcome. Fails if any target
# finds a crash, a leak, a timeout or a sanitizer report (the input is saved in the output folder).
#   fuzz/run_all.sh -max_total_time=60          # CI: a bounded time each
#   fuzz/run_all.sh -runs=1000000               # the figures in the README
# Extra arguments go to every target. Build first: cmake --preset fuzz && cmake --build --preset fuzz
set -uo pipefail
cd "$(dirname "$0")/.."
bin=build/fuzz/fuzz
out=build/fuzz/runs
mkdir -p "$out"
status=0
for name in json config safetensors csv base64_csv image; do
  mkdir -p "$out/$name"
  "$bin/fuzz_$name" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 -artifact_prefix="$out/$name-" \
    "$@" "$out/$name" "fuzz/corpus/$name" > "$out/$name.log" 2>&1
  code=$?
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$out/$name.log" | grep -o '[0-9]*$')
  secs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$out/$name.log" | grep -o 'in [0-9]*' | grep -o '[0-9]*')
  if [ "$code" = 0 ]; then
    echo "fuzz_$name: ${runs:-?} executions in ${secs:-?} s, no finding"
  else
    echo "fuzz_$name: FINDING (exit $code), see $out/$name.log"
    grep -m3 -E 'ERROR|invariant|runtime error' "$out/$name.log"
    status=1
  fi
done
exit $status
