#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages walkie needs to build and to run its tests.
# Uses sudo when not run as root. Safe to run again.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
# build:  cmake (bundled libopus), pkg-config + libasound2-dev (cpal's ALSA backend), a C toolchain
# tests:  opus-tools (opusinfo/opusdec check our Ogg files), espeak-ng + sox (speech samples)
#         nats-server (the NATS JetStream store's tests run a 3-node cluster: scripts/nats-cluster.sh)
#         pulseaudio + pulseaudio-utils + libasound2-plugins (real-device tests through null sinks:
#         scripts/pulse-setup.sh; paplay/parecord play into the virtual mic and record the speaker)
#         alsa-utils (its /usr/share/sounds/alsa/*.wav: eight short recordings of a human voice,
#         the real speech the lossy-network tests and `cargo bench --bench lossy` score)
#         systemd (systemd-analyze verify checks contrib/walkie-relay.service: tests/contrib.rs)
#         pebble (the ACME test server and its DNS server pebble-challtestsrv: tests/acme.rs)
# app:    libvulkan1 + mesa-vulkan-drivers (wgpu on lavapipe without a GPU), libegl1 + libgl1-mesa-dri (GL
#         fallback), libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 (winit on X11; all loaded at run
#         time), xvfb + xauth (`xvfb-run walkie app` and the app's screenshot on a headless machine),
#         fonts-wqy-microhei (a small font with Chinese, Japanese and Korean glyphs: display names in
#         any script; the app falls back to it and to Noto CJK when installed)
$SUDO apt-get install -y -q --no-install-recommends \
  cmake pkg-config libasound2-dev build-essential \
  opus-tools espeak-ng sox nats-server pulseaudio pulseaudio-utils libasound2-plugins alsa-utils systemd pebble \
  libvulkan1 mesa-vulkan-drivers libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcursor1 libxrandr2 libxi6 xvfb xauth fonts-wqy-microhei
