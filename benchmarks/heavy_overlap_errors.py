"""Where a classifier goes wrong on heavily overlapped patches of held-out Xu cells.

    python benchmarks/heavy_overlap_errors.py [CLASSIFIER] [--data $SICKLE_DATA] [--views hflip flip4 d4]

The 300 patches of ``bench_real_classifier.py``'s ``xu_multi_heavy`` set (2-4 cells of the
held-out patient, each at least 60% visible). Prints, per test-time view setting, the exact
match; for the first setting also the exact match of the patches the split finds right,
merged or cut, and the false / missed calls of each type. ``--ceiling`` also scores the same
patches with every cell classified fully visible (alone, pasted the same way) and a region's
types the union of its cells' calls: what a perfect split with the hidden parts restored
could reach; and how many of the patches with a false Elongated/Sickle call are right that way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("classifier", nargs="?", default="rbc-real-v6")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--views", nargs="+", default=["hflip", "flip4", "d4"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ceiling", action="store_true", help="also score each cell fully visible")
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from bench_real_classifier import overlap_set

    from napari_sickle.constants import RBC_TYPES
    from napari_sickle.data.real_cells import to_crops, xu_cells
    from napari_sickle.models import zoo
    from napari_sickle.models.cells import split_cells
    from napari_sickle.models.multilabel import RBCClassifier
    from napari_sickle.models.occlusion import SHAPE_TYPE

    path = str(zoo.resolve(a.classifier, "rbc", "classifier")) if zoo.is_model_name(a.classifier) else a.classifier
    clf = RBCClassifier.from_checkpoint(path)
    xs = xu_cells(Path(a.data) / "sickle-rbc", split="val")
    pats = overlap_set(to_crops(xs), 300, 7, "heavy", keep_cells=True)  # the benchmark's heavy set
    Y = np.stack([t for _, t, _, _ in pats]) >= 0.5
    SHAPE = RBC_TYPES.index(SHAPE_TYPE)
    split = clf.splitter_fn() or split_cells
    for j, views in enumerate(a.views):
        clf.config["tta"] = views
        P = np.stack(
            [clf.predict_boxes(p, np.array([[0, 0, p.shape[1], p.shape[0]]], np.float32))[0] for p, _, _, _ in pats]
        )
        ok = np.all((P >= 0.5) == Y, axis=1)
        print(f"views {views}: exact match {ok.mean():.3f} (n={len(ok)})")
        if j:
            continue
        false_shape = (P[:, SHAPE] >= 0.5) & ~Y[:, SHAPE]
        k = np.array([n for _, _, n, _ in pats])
        found = np.array([max(1, int(split(p).max())) for p, _, _, _ in pats])
        for name, m in (("split right", found == k), ("merged", found < k), ("cut", found > k)):
            print(f"  {name}: {int(m.sum())} patches, exact match {ok[m].mean():.3f}")
        for t, fp, fn, n in zip(RBC_TYPES, ((P >= 0.5) & ~Y).sum(0), ((P < 0.5) & Y).sum(0), Y.sum(0)):
            print(f"  {t}: {int(fp)} false, {int(fn)} missed, in {int(n)} patches")
    if a.ceiling:
        clf.config["tta"] = a.views[0]

        def types(im):
            return clf.predict_boxes(im, np.array([[0, 0, im.shape[1], im.shape[0]]], np.float32))[0]

        P = np.stack([np.max([types(c) for c in cells], axis=0) for _, _, _, cells in pats])
        alone_ok = np.all((P >= 0.5) == Y, axis=1)
        print(f"each cell fully visible ({a.views[0]}): exact match {alone_ok.mean():.3f}")
        print(
            f"  patches with a false Elongated/Sickle call: {int(false_shape.sum())}, "
            f"right with each cell fully visible: {int((false_shape & alone_ok).sum())}"
        )
    print("loadavg", os.getloadavg())


if __name__ == "__main__":
    main()
