#!/usr/bin/env bash
# Install what the real-browser test of the web UI (tests/test_browser*.py) needs on Debian/Ubuntu:
# the distribution's Chromium (apt) and the Python Playwright driver (pip). Playwright is only used to drive the
# system browser through executable_path; this script never runs `playwright install` (no browser downloads).
# Idempotent and quiet: installs only what is missing, prints one line. CI calls it before the tests.
set -euo pipefail
APT_PACKAGES="chromium chromium-driver"
PIP_PACKAGES="playwright>=1.40"
installed=$(bash "$(dirname "$0")/apt_install_missing.sh" --no-install-recommends $APT_PACKAGES)
PYTHON="${PYTHON:-python3}"
if ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
  # shellcheck disable=SC2086
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 "$PYTHON" -m pip install -q $PIP_PACKAGES
fi
echo "install_browser_deps: ok (apt installed: ${installed:-nothing}; browser: $(command -v chromium || echo none))"
