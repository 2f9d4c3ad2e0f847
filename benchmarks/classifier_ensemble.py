"""Exact match of several multi-label classifiers, each alone and with their probabilities
averaged, on the Xu sets of ``bench_real_classifier.py`` (held-out patient: single cells,
patches with each cell >= 90% and >= 60% visible).

    python benchmarks/classifier_ensemble.py CLASSIFIER [CLASSIFIER ...] [--data $SICKLE_DATA]

CLASSIFIER: a shipped model name (its classifier) or a checkpoint path. The classifiers should
share their cell split, so that the averaged probabilities are those of the same cells.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _exact(probs, truth) -> float:
    return round(float(np.mean(np.all((probs >= 0.5) == truth, axis=1))), 4)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("classifiers", nargs="+")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patches", type=int, default=300)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from bench_real_classifier import OVERLAP_SETS, overlap_set

    from napari_sickle.data.real_cells import to_crops, xu_cells
    from napari_sickle.models import zoo
    from napari_sickle.models.multilabel import RBCClassifier

    clfs = [RBCClassifier.from_checkpoint(zoo.resolve(c, "rbc", "classifier")) for c in a.classifiers]
    xs = xu_cells(Path(a.data) / "sickle-rbc", split="val")
    crops = to_crops(xs)
    sets = {"xu_single": [(c.image, c.y) for c in xs]}
    for name in OVERLAP_SETS:
        sets[f"xu_multi_{name}"] = [(p, t) for p, t, _ in overlap_set(crops, a.patches, a.seed, name)]
    out = {"classifiers": a.classifiers}
    for name, items in sets.items():
        probs = [
            np.stack(
                [clf.predict_boxes(im, np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32))[0] for im, _ in items]
            )
            for clf in clfs
        ]
        truth = np.stack([np.asarray(y) for _, y in items]) >= 0.5
        out[name] = {
            "each": [_exact(p, truth) for p in probs],
            "mean": _exact(np.mean(probs, axis=0), truth),
            "n": len(items),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
