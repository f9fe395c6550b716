#!/usr/bin/env bash
# Whole-program codec comparison: `walkie encode`/`walkie decode` against opus-tools'
# `opusenc`/`opusdec` on the same 10-minute 48 kHz mono WAV (alternating runs, median wall
# time, ratio walkie/opus-tools), then 200 short clips: one `walkie encode --out-dir` (every
# core) against a loop of `opusenc` calls (and the same loop run on every core with xargs -P),
# in files per second. Prints markdown tables.
#
# Usage: scripts/bench-codec.sh            (RUNS=5 CLIPS=200 MINUTES=10 by default)
#        RUNS=7 scripts/bench-codec.sh     (more alternating runs)
# Runs as root on a fresh Debian box: installs opus-tools and sox if they are missing.
# As root, every timed command runs at nice -10 (BENCH_NICE=0 to turn off) so that other
# jobs on a shared machine disturb both sides less; CPU time (user+sys, children included)
# is reported beside wall time because it hardly depends on that other load.
# Settings matched as far as the tools allow: 24 kb/s VBR, complexity 10, 20 ms frames.
# walkie's encoder is libopus in VOIP mode; opusenc always uses AUDIO mode, and its
# --speech flag sets the voice signal hint, the closest match.
set -euo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-5}
CLIPS=${CLIPS:-200}
MINUTES=${MINUTES:-10}

need() {
  # need COMMAND DEBIAN_PACKAGE
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "installing $2 (for $1)" >&2
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    DEBIAN_FRONTEND=noninteractive $sudo apt-get update -q >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "$2" >&2
  fi
}
need opusenc opus-tools
need opusdec opus-tools
need sox sox

echo "building walkie (release) ..." >&2
cargo build --release --quiet --bin walkie
WALKIE="$(cargo metadata --format-version 1 --no-deps 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/release/walkie"
[ -x "$WALKIE" ] || WALKIE=target/release/walkie

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The signal: samples/*.wav at 48 kHz mono 16-bit, concatenated and repeated to MINUTES.
SECS=$((MINUTES * 60))
sox samples/*.wav -r 48000 -c 1 -b 16 "$WORK/base.wav"
BASE=$(soxi -D "$WORK/base.wav")
REPEAT=$(awk -v s="$SECS" -v b="$BASE" 'BEGIN { print int(s / b) + 1 }')
sox "$WORK/base.wav" "$WORK/long.wav" repeat "$REPEAT" trim 0 "$SECS"
echo "signal: $(soxi -D "$WORK/long.wav") s, $(soxi -r "$WORK/long.wav") Hz, $(soxi -c "$WORK/long.wav") ch" >&2

NICE=()
if [ "$(id -u)" -eq 0 ] && [ "${BENCH_NICE:--10}" != 0 ]; then NICE=(nice -n "${BENCH_NICE:--10}"); fi
median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.4f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

# time_cmd FILE CMD...: runs CMD quietly, appends "wall user sys" (seconds) to FILE.
time_cmd() {
  local out=$1
  shift
  local TIMEFORMAT='%R %U %S'
  { time "${NICE[@]}" "$@" >/dev/null 2>&1; } 2>>"$out"
}

# alternate NAME_A NAME_B: runs "$A_CMD" and "$B_CMD" (arrays) RUNS times, flipping the order each run.
alternate() {
  : >"$WORK/$1.t"
  : >"$WORK/$2.t"
  for i in $(seq 1 "$RUNS"); do
    if [ $((i % 2)) -eq 1 ]; then
      time_cmd "$WORK/$1.t" "${A_CMD[@]}"
      time_cmd "$WORK/$2.t" "${B_CMD[@]}"
    else
      time_cmd "$WORK/$2.t" "${B_CMD[@]}"
      time_cmd "$WORK/$1.t" "${A_CMD[@]}"
    fi
  done
}
med() { awk 'NF == 3 { print $1 }' "$WORK/$1.t" | median; }
cpu() { awk 'NF == 3 { print $2 + $3 }' "$WORK/$1.t" | median; }

echo "whole file: encode x$RUNS ..." >&2
A_CMD=("$WALKIE" encode "$WORK/long.wav" "$WORK/walkie.opus" --bitrate 24000 --complexity 10 --frame-ms 20)
B_CMD=(opusenc --quiet --bitrate 24 --vbr --comp 10 --framesize 20 --speech "$WORK/long.wav" "$WORK/opusenc.opus")
alternate walkie_enc opusenc
echo "whole file: decode x$RUNS ..." >&2
A_CMD=("$WALKIE" decode "$WORK/walkie.opus" "$WORK/walkie-dec.wav")
B_CMD=(opusdec --quiet --rate 48000 "$WORK/walkie.opus" "$WORK/opusdec.wav")
alternate walkie_dec opusdec
A_CMD=("$WALKIE" decode "$WORK/walkie.opus" "$WORK/walkie-dec.wav")
B_CMD=(opusdec --quiet --rate 48000 --no-dither "$WORK/walkie.opus" "$WORK/opusdec-nd.wav")
alternate walkie_dec2 opusdec_nd

size() { stat -c %s "$1"; }
AUDIO=$(soxi -D "$WORK/long.wav")
xrt() { awk -v a="$AUDIO" -v t="$1" 'BEGIN { printf "%.0f", a / t }'; }

# 200 short clips of 2-8 s cut from the signal.
mkdir -p "$WORK/clips"
for i in $(seq 1 "$CLIPS"); do
  len=$(awk -v i="$i" 'BEGIN { printf "%.2f", 2 + (i * 37 % 61) / 10 }')
  off=$(awk -v i="$i" -v s="$SECS" 'BEGIN { printf "%.2f", (i * 7.31) % (s - 10) }')
  sox "$WORK/long.wav" "$WORK/clips/c$(printf %03d "$i").wav" trim "$off" "$len"
done
CLIP_AUDIO=$(for f in "$WORK"/clips/*.wav; do soxi -D "$f"; done | awk '{ s += $1 } END { printf "%.0f", s }')
NPROC=$(nproc)

opusenc_loop() {
  for f in "$WORK"/clips/*.wav; do
    opusenc --quiet --bitrate 24 --vbr --comp 10 --framesize 20 --speech "$f" "$WORK/out-o/$(basename "$f" .wav).opus"
  done
}
opusenc_xargs() {
  printf '%s\n' "$WORK"/clips/*.wav | xargs -P "$NPROC" -I{} sh -c \
    'opusenc --quiet --bitrate 24 --vbr --comp 10 --framesize 20 --speech "$1" "$2/$(basename "$1" .wav).opus"' _ {} "$WORK/out-x"
}
opusdec_loop() {
  for f in "$WORK"/out-w/*.opus; do
    opusdec --quiet --rate 48000 "$f" "$WORK/dec-o/$(basename "$f" .opus).wav"
  done
}
opusdec_xargs() {
  printf '%s\n' "$WORK"/out-w/*.opus | xargs -P "$NPROC" -I{} sh -c \
    'opusdec --quiet --rate 48000 "$1" "$2/$(basename "$1" .opus).wav"' _ {} "$WORK/dec-x"
}
mkdir -p "$WORK/out-w" "$WORK/out-o" "$WORK/out-x" "$WORK/dec-w" "$WORK/dec-o" "$WORK/dec-x"
export -f opusenc_loop opusenc_xargs opusdec_loop opusdec_xargs
export WORK NPROC

echo "$CLIPS clips: encode x$RUNS ..." >&2
A_CMD=("$WALKIE" encode --out-dir "$WORK/out-w" "$WORK"/clips/*.wav)
B_CMD=(bash -c opusenc_loop)
alternate batch_w batch_o
A_CMD=("$WALKIE" encode --out-dir "$WORK/out-w" "$WORK"/clips/*.wav)
B_CMD=(bash -c opusenc_xargs)
alternate batch_w2 batch_x
echo "$CLIPS clips: decode x$RUNS ..." >&2
A_CMD=("$WALKIE" decode --out-dir "$WORK/dec-w" "$WORK"/out-w/*.opus)
B_CMD=(bash -c opusdec_loop)
alternate dbatch_w dbatch_o
A_CMD=("$WALKIE" decode --out-dir "$WORK/dec-w" "$WORK"/out-w/*.opus)
B_CMD=(bash -c opusdec_xargs)
alternate dbatch_w2 dbatch_x
[ "$(ls "$WORK/out-w" | wc -l)" -eq "$CLIPS" ] || { echo "walkie encode --out-dir wrote $(ls "$WORK/out-w" | wc -l) files, expected $CLIPS" >&2; exit 1; }
[ "$(ls "$WORK/dec-w" | wc -l)" -eq "$CLIPS" ] || { echo "walkie decode --out-dir wrote $(ls "$WORK/dec-w" | wc -l) files, expected $CLIPS" >&2; exit 1; }

fps() { awk -v n="$CLIPS" -v t="$1" 'BEGIN { printf "%.1f", n / t }'; }

WE=$(med walkie_enc); OE=$(med opusenc); WEc=$(cpu walkie_enc); OEc=$(cpu opusenc)
WD=$(med walkie_dec); OD=$(med opusdec); WDc=$(cpu walkie_dec); ODc=$(cpu opusdec)
WD2=$(med walkie_dec2); ODN=$(med opusdec_nd); WD2c=$(cpu walkie_dec2); ODNc=$(cpu opusdec_nd)
BW=$(med batch_w); BO=$(med batch_o); BW2=$(med batch_w2); BX=$(med batch_x)
BWc=$(cpu batch_w); BOc=$(cpu batch_o); BW2c=$(cpu batch_w2); BXc=$(cpu batch_x)
DW=$(med dbatch_w); DO=$(med dbatch_o); DW2=$(med dbatch_w2); DX=$(med dbatch_x)
DWc=$(cpu dbatch_w); DOc=$(cpu dbatch_o); DW2c=$(cpu dbatch_w2); DXc=$(cpu dbatch_x)

cat <<EOF

## walkie vs opus-tools: one ${MINUTES}-minute WAV (48 kHz mono 16-bit speech), $RUNS alternating runs, median wall time

$(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), load average at the end $(cut -d' ' -f1-3 /proc/loadavg), ${NICE[*]:-no nice}; $(opusenc --version 2>&1 | head -1), $("$WALKIE" --version)

| task | walkie wall (x RT) | opus-tools wall (x RT) | walkie / opus-tools, wall | CPU s walkie / opus-tools | walkie / opus-tools, CPU | output |
|---|---|---|---|---|---|---|
| encode 24 kb/s VBR, complexity 10, 20 ms | ${WE} s ($(xrt "$WE")x) | opusenc ${OE} s ($(xrt "$OE")x) | $(ratio "$WE" "$OE") | ${WEc} / ${OEc} | $(ratio "$WEc" "$OEc") | walkie $(size "$WORK/walkie.opus") B, opusenc $(size "$WORK/opusenc.opus") B |
| decode to 48 kHz 16-bit WAV | ${WD} s ($(xrt "$WD")x) | opusdec ${OD} s ($(xrt "$OD")x) | $(ratio "$WD" "$OD") | ${WDc} / ${ODc} | $(ratio "$WDc" "$ODc") | same .opus input (walkie's) |
| decode, opusdec --no-dither | ${WD2} s ($(xrt "$WD2")x) | opusdec ${ODN} s ($(xrt "$ODN")x) | $(ratio "$WD2" "$ODN") | ${WD2c} / ${ODNc} | $(ratio "$WD2c" "$ODNc") | walkie does not dither |

## $CLIPS short clips (2-8 s, ${CLIP_AUDIO} s in all): files per second, $RUNS alternating runs, median

| task | walkie (one process, --out-dir, $NPROC threads) | opus-tools | walkie / opus-tools, wall | CPU s walkie / opus-tools |
|---|---|---|---|---|
| encode vs a loop of opusenc calls | ${BW} s, $(fps "$BW") files/s | ${BO} s, $(fps "$BO") files/s | $(ratio "$BW" "$BO") | ${BWc} / ${BOc} |
| encode vs opusenc via xargs -P $NPROC | ${BW2} s, $(fps "$BW2") files/s | ${BX} s, $(fps "$BX") files/s | $(ratio "$BW2" "$BX") | ${BW2c} / ${BXc} |
| decode vs a loop of opusdec calls | ${DW} s, $(fps "$DW") files/s | ${DO} s, $(fps "$DO") files/s | $(ratio "$DW" "$DO") | ${DWc} / ${DOc} |
| decode vs opusdec via xargs -P $NPROC | ${DW2} s, $(fps "$DW2") files/s | ${DX} s, $(fps "$DX") files/s | $(ratio "$DW2" "$DX") | ${DW2c} / ${DXc} |

Commands: \`walkie encode IN.wav OUT.opus --bitrate 24000 --complexity 10 --frame-ms 20\`;
\`opusenc --quiet --bitrate 24 --vbr --comp 10 --framesize 20 --speech IN.wav OUT.opus\`;
\`walkie decode IN.opus OUT.wav\`; \`opusdec --quiet --rate 48000 [--no-dither] IN.opus OUT.wav\`;
\`walkie encode --out-dir DIR clips/*.wav\`; \`walkie decode --out-dir DIR out/*.opus\`.
EOF
