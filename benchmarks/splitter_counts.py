"""How often the rule-based split and a learned splitter find each region's number of cells.

    python benchmarks/splitter_counts.py CLASSIFIER_OR_SPLITTER [--data $SICKLE_DATA] [--patches 150]

``CLASSIFIER_OR_SPLITTER``: a classifier checkpoint or shipped model name with ``split="unet"``
(its splitter is used), or a ``splitter.pt`` of ``real_classifier prepare --split unet`` (with
the settings of ``training.real_splitter.SPLITTER_NET``). Regions: the held-out Xu patient's
single crops, and 2-4 of those cells composed by ``bench_real_classifier.independent_patches``
with each cell at least 90% (light) / 60% (heavy) visible. Prints one JSON object: per set,
the share of regions with exactly the right number of cells, fewer (merged) and more (cut).
``bbbc041``: the connected mask regions of the held-out BBBC041Seg images (larger cells, no
per-cell truth): the share of regions each split cuts into several cells.
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


def _learned(spec: str):
    import torch

    from napari_sickle.models import zoo
    from napari_sickle.models.multilabel import RBCClassifier
    from napari_sickle.models.splitter import DEFAULT_SPLITTER, LearnedSplit, build_splitter
    from napari_sickle.training.real_splitter import SPLITTER_NET

    if spec.endswith("splitter.pt"):
        cfg = {**DEFAULT_SPLITTER, **SPLITTER_NET, "trained": True}
        net = build_splitter(cfg)
        net.load_state_dict(torch.load(spec, map_location="cpu", weights_only=True))
        return LearnedSplit(net.eval(), cfg)
    path = str(zoo.resolve(spec, "rbc", "classifier")) if zoo.is_model_name(spec) else spec
    return RBCClassifier.from_checkpoint(path).splitter_fn()


def counts(fn, regions) -> dict:
    found = np.array([max(1, int(fn(im).max())) for im, _ in regions])
    true = np.array([k for _, k in regions])
    return {
        "n": len(true),
        "exact": round(float(np.mean(found == true)), 3),
        "merged": round(float(np.mean(found < true)), 3),
        "cut": round(float(np.mean(found > true)), 3),
    }


def bbbc041_multi(root: Path, learned) -> dict | None:
    from scipy import ndimage as ndi

    from napari_sickle.io.images import read_image, to_rgb_uint8
    from napari_sickle.models.cells import split_cells

    if not (root / "images").is_dir():
        return None
    names = sorted(p.name for p in (root / "images").glob("*.png"))[3::4]  # the held-out images
    many = {"rule": [], "learned": []}
    for name in names:
        img = to_rgb_uint8(read_image(root / "images" / name))
        m = np.asarray(read_image(sorted((root / "masks").glob(name.split(".")[0] + "*"))[0]))
        lab, _ = ndi.label((m[..., 0] if m.ndim == 3 else m) > 0)
        for k, sl in enumerate(ndi.find_objects(lab)):
            if sl is None or (lab[sl] == k + 1).sum() < 200:
                continue
            reg = img[max(0, sl[0].start - 4) : sl[0].stop + 4, max(0, sl[1].start - 4) : sl[1].stop + 4]
            many["rule"].append(int(split_cells(reg).max()) > 1)
            many["learned"].append(int(learned(reg).max()) > 1)
    return {"images": len(names), "regions": len(many["rule"])} | {
        f"{k}_several_cells": round(float(np.mean(v)), 3) for k, v in many.items()
    }


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("splitter")
    ap.add_argument("--data", default=os.environ.get("SICKLE_DATA", "../shared/data"))
    ap.add_argument("--patches", type=int, default=150)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    from bench_real_classifier import OVERLAP_SETS, overlap_set

    from napari_sickle.data.real_cells import to_crops, xu_cells
    from napari_sickle.models.cells import split_cells

    t0 = time.time()
    learned = _learned(a.splitter)
    xs = xu_cells(Path(a.data) / "sickle-rbc", split="val")
    sets = {"single": [(c.image, 1) for c in xs]}
    for name in OVERLAP_SETS:
        sets[name] = [(p[0], p[2]) for p in overlap_set(to_crops(xs), a.patches, a.seed, name)]
    out = {"splitter": a.splitter}
    for name, regions in sets.items():
        out[name] = {"rule": counts(split_cells, regions), "learned": counts(learned, regions)}
    out["bbbc041"] = bbbc041_multi(Path(a.data) / "bbbc041seg", learned)
    out["seconds"] = round(time.time() - t0, 1)
    out["loadavg"] = os.getloadavg()
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
