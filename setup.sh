#!/usr/bin/env bash
# Set up everything CAST Explorer needs: the Python packages, Label Studio in its own virtualenv (for
# the integration tests), and Debian's Chromium for the browser test (tests/app/test_browser.py
# drives /usr/bin/chromium; `playwright install` is never used).
set -euo pipefail
cd "$(dirname "$0")"

python -m pip install -r requirements.txt
# Ray Data for `cast segment --engine ray` and its tests (an extra of the library; the Space does not install it)
python -m pip install "ray[data]>=2.40,<3"
python -c "import cv2, sys; sys.exit(0 if hasattr(cv2, 'ximgproc') else 'OpenCV lost its contrib modules (SEEDS)')"

# Label Studio, for the checks against a live server (tests/labelstudio/): in its own virtualenv,
# because label-studio pins its own opencv and numpy (never in the project's Python).
LS_VERSION="1.23.2"
LS_VENV=".venv-labelstudio"
if ! "$LS_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('label-studio') != '$LS_VERSION')" 2>/dev/null; then
  echo "== installing Label Studio $LS_VERSION into $LS_VENV (for the integration tests)"
  python -m venv "$LS_VENV"
  "$LS_VENV/bin/python" -m pip install -q --upgrade pip
  "$LS_VENV/bin/python" -m pip install -q "label-studio==$LS_VERSION"
fi

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
