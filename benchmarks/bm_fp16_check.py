"""Does the shipped (fp16-stored) white-cell model predict what its fp32 checkpoint predicts?

    .venv/bin/python benchmarks/bm_fp16_check.py --checkpoint runs/ship/best.pt [--model wbc-zheng-v1]

Classifies every Zheng crop and the PBC fixture crops with both (the test-time
views of the model's recipe, as ``evaluate bm``) and prints the number of differing labels and the largest softmax difference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def main(argv=None) -> int:
    root = Path(os.environ.get("SICKLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--model", default=None, help="shipped model name (default: the shipped default)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    from napari_sickle.analysis.bm import classify_cells
    from napari_sickle.io.images import read_image, to_rgb_uint8
    from napari_sickle.models.bm import load_bm_model
    from napari_sickle.models.zoo import resolve, sha256_of

    torch.set_num_threads(a.threads)
    z = pd.read_csv(root / "wbc-zheng2018" / "labels.csv")
    paths = [root / "wbc-zheng2018" / p for p in z["image"]]
    pbc = pd.read_csv(root / "fixtures" / "pbc-wbc" / "labels.csv")
    paths += [root / "fixtures" / "pbc-wbc" / p for p in pbc["image"]]
    cells = [to_rgb_uint8(read_image(p)) for p in paths]
    probs = []
    for ref in (a.checkpoint, a.model):
        m = load_bm_model(ref)
        probs.append(classify_cells(cells, m, device="cpu").probabilities)
    shipped = resolve(a.model, "wbc", "classifier")
    print(
        json.dumps(
            {
                "cells": len(cells),
                "labels_differing": int((probs[0].argmax(1) != probs[1].argmax(1)).sum()),
                "max_abs_softmax_difference": float(np.abs(probs[0] - probs[1]).max()),
                "shipped_file": shipped.name,
                "bytes": shipped.stat().st_size,
                "sha256": sha256_of(shipped),
                "checkpoint_bytes": Path(a.checkpoint).stat().st_size,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
