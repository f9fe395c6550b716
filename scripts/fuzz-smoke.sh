#!/usr/bin/env bash
# Bounded fuzzing for CI: builds the cargo-fuzz targets of fuzz/ once, runs each for
# FUZZ_SECONDS (default 25) starting from its seed corpus, prints the executions per target,
# and exits non-zero if any target crashes, leaks, times out or runs out of memory (libFuzzer
# leaves the input in fuzz/artifacts/<target>/).
#
# Settings (environment):
#   FUZZ_SECONDS    seconds of fuzzing per target (default 25)
#   FUZZ_TARGETS    space-separated targets (default: all eight)
#   FUZZ_SANITIZER  address (default) or none
#
# Works on the stable toolchain: cargo fuzz passes nightly-only rustc flags (-Zsanitizer=...),
# which RUSTC_BOOTSTRAP=1 lets stable rustc accept. New inputs found during the run go to a
# temporary directory, never into the committed corpus.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-25}"
targets="${FUZZ_TARGETS:-wire_frames ogg_reader wav_reader clip_ingest upload_core message picture live_datagram}"
sanitizer="${FUZZ_SANITIZER:-address}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz-smoke: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
# Release speed, with overflow checks and debug assertions on: arithmetic on peer-controlled
# numbers must not overflow.
flags=(--release --debug-assertions --sanitizer "$sanitizer")

build_start=$SECONDS
cargo fuzz build "${flags[@]}"
echo "fuzz-smoke: built the targets in $((SECONDS - build_start)) s"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
summary=()
for t in $targets; do
  mkdir -p "$work/$t"
  log="$work/$t.log"
  start=$SECONDS
  set +e
  cargo fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  took=$((SECONDS - start))
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)"
  found="$(grep -o 'stat::new_units_added: *[0-9]*' "$log" | tail -1 | grep -o '[0-9]*$' || true)"
  seeds="$(find "fuzz/corpus/$t" -maxdepth 1 -type f ! -name '.*' | wc -l)"
  line="$t: ${execs:-?} executions in ${took} s (${rate:-?}/s) from ${seeds} seeds, ${found:-?} new inputs"
  if [ "$rc" -eq 0 ]; then
    passed=$((passed + 1))
    summary+=("ok     $line")
  else
    failed=$((failed + 1))
    summary+=("FAILED $line (exit $rc)")
    echo "fuzz-smoke: $t FAILED; the end of its log:"
    tail -n 60 "$log"
    artifact="$(grep -Eo "fuzz/artifacts/$t/[a-z-]+-[0-9a-f]+" "$log" | tail -1 || true)"
    if [ -n "$artifact" ]; then
      echo "fuzz-smoke: reproduce with: RUSTC_BOOTSTRAP=1 cargo fuzz run ${flags[*]} $t $artifact"
      echo "fuzz-smoke: or on stable without cargo-fuzz: FUZZ_REPLAY=\"$t $artifact\" cargo test --test fuzz_corpus -- --ignored replay_files --nocapture"
    fi
  fi
  echo "fuzz-smoke: ${summary[-1]}"
done

echo "fuzz-smoke: summary (${seconds} s per target, sanitizer ${sanitizer})"
printf '  %s\n' "${summary[@]}"
echo "fuzz-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
