#!/usr/bin/env bash
# Installs Debian's chromium for the dashboard browser test (no browser downloads from elsewhere).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || { echo "error: chromium is missing; install it: apt-get install chromium"; exit 1; }
  SUDO="sudo"
fi
echo "==> installing chromium (Debian package) for the dashboard browser test"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
chromium --version
