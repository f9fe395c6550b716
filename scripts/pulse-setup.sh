#!/usr/bin/env bash
# Starts PulseAudio with two virtual devices for the real-device tests, idempotently:
#   mic  a null sink you play speech into (`paplay -d mic speech.wav`); walkie captures its
#        monitor, mic.monitor, as the default input
#   spk  a null sink walkie plays into as the default output; record it with
#        `parecord -d spk.monitor`
# walkie reaches PulseAudio through cpal's native PulseAudio host, which finds the server
# from $PULSE_SERVER, $PULSE_RUNTIME_PATH or $XDG_RUNTIME_DIR; without those (root in CI),
# export the PULSE_SERVER line this script prints last. Devices are then PulseAudio's sink
# and source names (spk, mic.monitor); the defaults are set to spk and mic.monitor. Without
# the native host, cpal's ALSA host reaches the same defaults through libasound2-plugins
# (the ALSA devices "default" and "pulse"), but the ALSA plugin path misbehaves under load.
# Safe to run again; exits non-zero with a reason if PulseAudio cannot be started. Works as
# root (PulseAudio warns about it, harmlessly).
set -euo pipefail

need() {
  if ! command -v "$1" >/dev/null 2>&1; then
    echo "pulse-setup: $1 not found; install pulseaudio pulseaudio-utils libasound2-plugins (scripts/install-deps.sh)" >&2
    exit 1
  fi
}
need pulseaudio
need pactl

if [ ! -e /usr/share/alsa/alsa.conf.d/50-pulseaudio.conf ] && [ ! -e /etc/alsa/conf.d/50-pulseaudio.conf ]; then
  echo "pulse-setup: the ALSA PulseAudio plugin is missing; install libasound2-plugins" >&2
  exit 1
fi

if ! pactl info >/dev/null 2>&1; then
  # -n: no default.pa (no real hardware, no idle suspend); never exit when idle.
  pulseaudio --daemonize=yes --exit-idle-time=-1 -n \
    --load=module-native-protocol-unix 2>/dev/null || true
  for _ in $(seq 50); do
    pactl info >/dev/null 2>&1 && break
    sleep 0.1
  done
fi
if ! pactl info >/dev/null 2>&1; then
  echo "pulse-setup: PulseAudio did not start (try: pulseaudio -n -vvv --load=module-native-protocol-unix)" >&2
  exit 1
fi

sinks=$(pactl list short sinks | awk '{print $2}')
for name in spk mic; do
  if ! grep -qx "$name" <<<"$sinks"; then
    # 48 kHz: the rate walkie runs at, so PulseAudio need not resample walkie's audio.
    pactl load-module module-null-sink sink_name="$name" rate=48000 \
      sink_properties=device.description="walkie-$name" >/dev/null
  fi
done
pactl set-default-sink spk
pactl set-default-source mic.monitor

# Keep both null sinks awake. A null sink with no low-latency stream renders in blocks of up
# to 2 s, so a new stream (paplay into mic, walkie's playback, parecord of spk.monitor) waited
# a random 0-2 s before its audio moved, which cut the start or the end of what the tests
# play and record. A 10 ms recorder on each monitor, discarding what it reads, keeps them
# rendering in small blocks. Started once (pid files in the runtime dir), detached.
runtime_dir=$(pactl info | sed -n 's/^Server String: //p' | sed 's#^unix:##; s#/native$##')
[ -d "$runtime_dir" ] || runtime_dir=${TMPDIR:-/tmp}
for name in spk mic; do
  pidfile="$runtime_dir/walkie-keepawake-$name.pid"
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    continue
  fi
  setsid parecord -d "$name.monitor" --raw --latency-msec=10 --rate=48000 --channels=1 /dev/null \
    </dev/null >/dev/null 2>&1 &
  echo $! >"$pidfile"
done

echo "pulse-setup: PulseAudio $(pactl info | sed -n 's/^Server Version: //p') ready;" \
  "default sink $(pactl get-default-sink), default source $(pactl get-default-source)"
server=$(pactl info | sed -n 's/^Server String: //p')
case "$server" in
  unix:*) echo "PULSE_SERVER=$server" ;;
  /*) echo "PULSE_SERVER=unix:$server" ;;
  *) echo "PULSE_SERVER=$server" ;;
esac
