#!/usr/bin/env bash
# Idempotent setup: Debian packages for a virtual display (Xvfb) and Qt, then the venv.
# Usage: source-free; run `bash scripts/setup.sh`. Re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS="xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-image0 libxcb-render-util0 libxcb-xinerama0 libxcb-cursor0 libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1"
missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "[setup] installing Debian packages:$missing"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.napari-sickle-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing napari-sickle with its test dependencies (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i "location\|warning" || true
  .venv/bin/python -m pip install -q -e '.[testing]' 2>&1 | grep -v -i "is ignored: it is neither\|BuildBackendWarning\|^ *!!\|\*\*\*\*\|Please use\|By 2027\|See https\|corresp(\|remove deprecated\|^ *$" || true
  .venv/bin/python -c "import napari_sickle, torch, torchvision, napari" 
  echo "$want" > "$stamp"
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch,napari;print("torch",torch.__version__,"napari",napari.__version__)')"
