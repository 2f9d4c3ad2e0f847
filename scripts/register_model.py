"""Ship a trained checkpoint as a named model: copy it into the package (fp16 storage) and
record its sha256 in weights/manifest.json.

    python scripts/register_model.py NAME --task rbc|wbc|unet [--default] \
        --description "trained on ..." ROLE=CHECKPOINT [ROLE=CHECKPOINT ...]

Roles: ``detector`` and ``classifier`` for rbc, ``classifier`` for wbc, ``unet`` for unet.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from napari_sickle.models import zoo


def to_fp16(obj):
    """Floating tensors to float16 (state dicts only; buffers like BN counts stay as they are)."""
    if isinstance(obj, torch.Tensor):
        return obj.half() if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: to_fp16(v) for k, v in obj.items()}
    return obj


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name")
    ap.add_argument("--task", required=True, choices=zoo.TASKS)
    ap.add_argument("--description", required=True)
    ap.add_argument("--default", action="store_true")
    ap.add_argument("--keep-fp32", action="store_true", help="store float tensors as they are")
    ap.add_argument("files", nargs="+", metavar="ROLE=CHECKPOINT")
    a = ap.parse_args(argv)
    files = {}
    for spec in a.files:
        role, _, src = spec.partition("=")
        ckpt = torch.load(src, map_location="cpu", weights_only=True)
        ckpt.get("extra", {}).pop("optimizer", None)
        if not a.keep_fp32:
            ckpt["state_dict"] = to_fp16(ckpt["state_dict"])
        fn = f"{a.name}-{role}.pt"
        torch.save(ckpt, zoo.weights_dir() / fn)
        files[role] = fn
    m = zoo.register(a.name, a.task, a.description, files, default=a.default)
    for role in m.files:
        p = zoo.weights_dir() / m.files[role]["file"]
        print(f"{m.name} {role}: {p.name} {p.stat().st_size / 1e6:.1f} MB sha256 {m.files[role]['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
