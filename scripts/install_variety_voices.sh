#!/usr/bin/env bash
# Install the speaker-variety voices (glm4voice/train/voices.py VARIETY_VOICES) and wordfreq for
# `glm4voice data variety`. The small voices (5-16 MB each) are also installed by install_data_deps.sh; this adds the
# Russian clunits voice (festvox-ru, 240 MB installed). Idempotent; prints one line.
set -euo pipefail
# shellcheck disable=SC2086
installed=$(bash "$(dirname "$0")/apt_install_missing.sh" festvox-ru)
bash "$(dirname "$0")/install_data_deps.sh" >/dev/null
echo "install_variety_voices: ok (apt installed: ${installed:-nothing})"
