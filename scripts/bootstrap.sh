#!/usr/bin/env bash
# Create .venv and install imgsearch with everything tests need. Idempotent and offline
# apart from the package registries. torch and torchvision are installed together first,
# pinned, so pip never picks a torchvision that does not match torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# Debian's chromium for the web page's end-to-end tests (Playwright drives it; it never
# downloads a browser). Only when missing; never fatal: without it those tests skip with a reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium (web page end-to-end tests)..." >&2
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    { $SUDO apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $SUDO apt-get update -q >/dev/null 2>&1 && $SUDO apt-get install -y -q chromium >/dev/null 2>&1; }; } \
        || echo "bootstrap: could not install chromium; the web end-to-end tests will skip" >&2
fi
stamp="$VENV/.imgsearch-installed"
want=$(cat pyproject.toml scripts/bootstrap.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
# DejaVu fonts: scripts/build_eval_sets.py renders text with them, and the test that rebuilds
# the committed evaluation sets needs them (it skips with a reason without). Not fatal.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get install -y -q fonts-dejavu-core >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-dejavu-core >/dev/null 2>&1; }; } \
        || echo "bootstrap: could not install fonts-dejavu-core (evaluation-set rebuild test will skip)" >&2
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
echo "installing torch 2.14.1 + torchvision 0.29.1 (large; from local disk where available)..." >&2
"$VENV/bin/python" -m pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch, torchvision, open_clip, pymilvus, imgsearch" \
    || { echo "bootstrap: install is incomplete (see pip output above)" >&2; exit 1; }
echo "$want" > "$stamp"
