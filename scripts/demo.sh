#!/usr/bin/env bash
# Quickstart command 1: set up, then run the main job on the built-in default:
# simulate a 1920x1080 smear and analyse it, and a real Chula RBC-12 smear from the fixtures,
# end to end with the shipped default models (no training step), open everything in a headless napari viewer
# through the plugin's readers, write the layers through the plugin's writers, and save a
# screenshot. Outputs land in out/demo (or the folder given as $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
unset QT_QPA_PLATFORM || true
exec xvfb-run -a -s "-screen 0 1920x1080x24" .venv/bin/python -m napari_sickle.demo --out "${1:-out/demo}"
