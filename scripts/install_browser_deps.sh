#!/usr/bin/env bash
# Install what the real-browser test of the web UI (tests/test_browser*.py) needs on Debian/Ubuntu:
# the distribution's Chromium (apt) and the Python Playwright driver (pip). Playwright is only used to drive the
# system browser through executable_path; this script never runs `playwright install` (no browser downloads).
# Idempotent and quiet: installs only what is missing, prints one line. CI calls it before the tests.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
APT_PACKAGES="chromium chromium-driver"
PIP_PACKAGES="playwright>=1.40"
missing=""
if command -v dpkg >/dev/null; then
  for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
  fi
else
  echo "install_browser_deps: no dpkg/apt-get; install Chromium by hand and set GLM4VOICE_CHROMIUM" >&2
fi
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
  # shellcheck disable=SC2086
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PYTHON" -m pip install -q $PIP_PACKAGES
fi
echo "install_browser_deps: ok (apt installed:${missing:- nothing}; browser: $(command -v chromium || echo none))"
