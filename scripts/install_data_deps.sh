#!/usr/bin/env bash
# Install what the data pipeline (glm4voice/train/{texts,tts,corpus,bpe}.py) needs on Debian/Ubuntu.
# Idempotent and quiet: installs only what is missing, prints one line. CI calls it before the tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
# TTS engines and voices (DATA.md), sox for style effects, text sources (countries, fortunes en/zh, WordNet).
APT_PACKAGES="espeak-ng sox libsox-fmt-all festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k flite
  miscfiles fortunes fortunes-min fortunes-zh wordnet-base"
# tokenizers: BPE training; tiktoken: reading it back; soxr/soundfile: resampling and FLAC; chatterbot-corpus: Q/A.
PIP_PACKAGES="tokenizers>=0.15 tiktoken>=0.6 soxr>=0.3 soundfile>=0.12 tqdm>=4.60 pyyaml>=6 chatterbot-corpus>=1.2"
missing=""
if command -v dpkg >/dev/null; then
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "install_data_deps: no dpkg/apt-get; install by hand: $APT_PACKAGES" >&2
fi
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import tokenizers, tiktoken, soxr, soundfile, tqdm, yaml, chatterbot_corpus" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q $PIP_PACKAGES
fi
echo "install_data_deps: ok (apt installed:${missing:- nothing})"
