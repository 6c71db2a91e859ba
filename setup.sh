#!/usr/bin/env bash
# Set up everything CAST Explorer needs: the Python packages, and Debian's Chromium for the
# browser test (tests/app/test_browser.py drives /usr/bin/chromium; `playwright install` is never used).
set -euo pipefail
cd "$(dirname "$0")"

python -m pip install -r requirements.txt

if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "== installing Debian's chromium (browser test)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
  else
    echo "warning: no apt-get; install Chromium at /usr/bin/chromium (or set CAST_TEST_CHROMIUM) for the browser test" >&2
  fi
fi
echo "== setup done"
