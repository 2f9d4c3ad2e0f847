"""The Chula aims end to end: the whole pipeline on held-out Chula RBC-12 smears, no options.

    python benchmarks/bench_chula_smears.py [--model NAME] [--detector D] [--classifier C]
                                            [--data $SICKLE_DATA] [--threads 2] [--json out.json]

Each validation smear (image number divisible by 5, as in ``bench_real_classifier.py``) goes
through ``analysis.smear.analyze_smear`` with the shipped default (or ``--model`` /
overrides), exactly as the Analyze button runs it. A labelled point belongs to the region
whose pixels (``region_masks``, the layer a user sees) it falls on. Prints:

* ``points_in_a_region``: the share of labelled cells on some region;
* ``single_cell_regions``: regions holding exactly one labelled point, scored with the
  point's Chula class (``bench_real_classifier.chula_metrics``: exact type match on mapped
  classes, normal called normal, mapped abnormal classes called abnormal, ...);
* ``by_box``: the same with a point belonging to every box that contains it (a region is
  single-cell when its box contains exactly one point);
* the seconds per smear and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def point_regions(result, pts) -> tuple[np.ndarray, np.ndarray]:
    """Per point, the 1-based region id under it (0: none), and the (points, regions) matrix of
    which boxes contain which points."""
    from napari_sickle.data.real_smears import points_in_boxes

    M = result.region_masks
    x = np.clip(np.floor(pts[:, 0]).astype(int), 0, M.shape[1] - 1)
    y = np.clip(np.floor(pts[:, 1]).astype(int), 0, M.shape[0] - 1)
    return M[y, x], points_in_boxes(result.boxes, pts[:, :2])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="shipped RBC model (default: the shipped default)")
    ap.add_argument("--detector", default=None)
    ap.add_argument("--classifier", default=None)
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from bench_real_classifier import chula_metrics, chula_smears

    from napari_sickle.analysis.smear import analyze_smear
    from napari_sickle.models.registry import load_models

    models = load_models(detector=a.detector, classifier=a.classifier, model=a.model)
    by_mask, by_box = [], []  # (class id, probs, abnormal)
    n_points = n_on_region = n_smears = 0
    t0 = time.time()
    for _name, rgb, pts in chula_smears(Path(a.data) / "chula-rbc12"):
        r = analyze_smear(rgb, models)
        n_smears += 1
        n_points += len(pts)
        if not len(r):
            continue
        rid, inside = point_regions(r, pts)
        n_on_region += int((rid > 0).sum())
        per_region = np.bincount(rid, minlength=len(r) + 1)
        per_box = inside.sum(0)
        for k, c in enumerate(pts[:, 2].astype(int)):
            if rid[k] > 0 and per_region[rid[k]] == 1:
                by_mask.append((c, r.probs[rid[k] - 1], bool(r.abnormal[rid[k] - 1])))
            for j in np.flatnonzero(inside[k] & (per_box == 1)):
                by_box.append((c, r.probs[j], bool(r.abnormal[j])))
    seconds = time.time() - t0

    def scores(rows):
        return {
            "n_regions": len(rows),
            **chula_metrics([c for c, _, _ in rows], np.stack([p for _, p, _ in rows]), [x for *_, x in rows]),
        }

    out = {
        "model": a.model or "default",
        "detector": a.detector,
        "classifier": a.classifier,
        "n_smears": n_smears,
        "n_points": n_points,
        "points_in_a_region": round(n_on_region / max(n_points, 1), 4),
        "single_cell_regions": scores(by_mask),
        "by_box": scores(by_box),
        "seconds_per_smear": round(seconds / max(n_smears, 1), 3),
        "threads": a.threads,
        "load_average": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
