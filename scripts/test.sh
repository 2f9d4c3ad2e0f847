#!/usr/bin/env bash
# Quickstart command 2: set up (venv + Xvfb packages) and run the whole test suite.
# GUI tests run in a real napari viewer on a virtual display started by pytest-xvfb.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SICKLE_DATA="${SICKLE_DATA:-$(cd .. && pwd)/shared/data}"
unset QT_QPA_PLATFORM || true
exec .venv/bin/python -m pytest tests -q -p no:cacheprovider --timeout=900 "$@"
