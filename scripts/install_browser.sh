#!/usr/bin/env bash
# Install Debian's `chromium` for the dashboard browser test (tests/api/test_dashboard_browser.py).
# Playwright drives this system browser (executable_path=/usr/bin/chromium); it never downloads its own.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "error: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
    SUDO="sudo"
fi

echo "==> apt-get install chromium (for the dashboard browser test)"
$SUDO apt-get update -qq
# fonts-dejavu-core: chromium does not depend on any font; without one the screenshot shows boxes.
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core
command -v chromium
