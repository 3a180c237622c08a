#!/usr/bin/env bash
# Install what the data pipeline (glm4voice/train/{texts,tts,corpus,bpe}.py) needs on Debian/Ubuntu.
# Idempotent and quiet: installs only what is missing, prints one line. CI calls it before the tests.
set -euo pipefail
# TTS engines and voices (DATA.md), sox for style effects, text sources (countries, fortunes en/zh, WordNet), and the
# small speaker-variety voices of other languages (voices.VARIETY_VOICES; festvox-ru: install_variety_voices.sh).
APT_PACKAGES="espeak-ng sox libsox-fmt-all festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k flite
  miscfiles fortunes fortunes-min fortunes-zh wordnet-base
  festvox-italp16k festvox-itapc16k festvox-suopuhe-lj festvox-suopuhe-mv festvox-czech-dita festvox-czech-machac
  festvox-czech-ph festvox-ca-ona-hts"
# tokenizers: BPE training; tiktoken: reading it back; soxr/soundfile: resampling and FLAC; chatterbot-corpus: Q/A;
# wordfreq: the variety corpus's words.
PIP_PACKAGES="tokenizers>=0.15 tiktoken>=0.6 soxr>=0.3 soundfile>=0.12 tqdm>=4.60 pyyaml>=6 chatterbot-corpus>=1.2
  wordfreq==3.1.1"
# shellcheck disable=SC2086
installed=$(bash "$(dirname "$0")/apt_install_missing.sh" $APT_PACKAGES)
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import tokenizers, tiktoken, soxr, soundfile, tqdm, yaml, chatterbot_corpus, wordfreq" 2>/dev/null; then
  # shellcheck disable=SC2086
  "$PYTHON" -m pip install -q $PIP_PACKAGES
fi
echo "install_data_deps: ok (apt installed: ${installed:-nothing})"
