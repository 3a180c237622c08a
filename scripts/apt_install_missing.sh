#!/usr/bin/env bash
# Install the Debian packages given as arguments that are not installed yet (apt-get update only when something is
# missing; sudo when not root). Prints the packages it installed (nothing when all were there). Exit 0 without
# apt (non-Debian machine) after a warning, so callers can say how to install by hand.
# Usage: bash scripts/apt_install_missing.sh [--no-install-recommends] PACKAGE...
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
opts=""
if [ "${1:-}" = "--no-install-recommends" ]; then opts="$1"; shift; fi
if ! command -v dpkg >/dev/null || ! command -v apt-get >/dev/null; then
  echo "apt_install_missing: no dpkg/apt-get here; install by hand: $*" >&2
  exit 0
fi
missing=""
for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq $opts $missing >/dev/null
fi
echo "${missing# }"
