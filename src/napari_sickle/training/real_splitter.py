"""The learned cell splitter of the real-cell classifier (:mod:`napari_sickle.training.real_classifier`).

:func:`fit_splitter` trains it on the training cells (Xu crops and a sample of Chula cells)
during ``prepare --split unet``; :func:`attach_splitter` gives an already trained classifier
that splitter, so its regions are split by it at prediction. No Qt/napari imports here.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

#: learned splitter: network settings, training options, and how many Chula training cells
#: join the Xu training crops it is trained on
SPLITTER_NET = {"base_channels": 16, "scale": 0.5}
SPLITTER_TRAIN = {"n_patches": 600, "n_occluded": 600, "min_visible": 0.5, "steps": 1000}
SPLITTER_CHULA_CELLS = 700


def splitter_recipe(stats: dict | None) -> dict:
    """What a checkpoint's recipe records about its learned splitter."""
    return {"net": SPLITTER_NET, "train": SPLITTER_TRAIN, "chula_cells": SPLITTER_CHULA_CELLS, "stats": stats}


def fit_splitter(clf, xu, ch, cache: Path, seed: int) -> dict:
    """Train ``clf``'s learned splitter on the training cells (Xu crops and a sample of Chula
    cells) and save it as ``cache/splitter.pt``; returns the training stats."""
    import torch

    from ..data.real_cells import to_crops
    from .splitter import fit_classifier_splitter

    rng = np.random.default_rng(seed + 1)
    cs = [x for x in ch if x.split == "train"]
    cs = [cs[i] for i in sorted(rng.choice(len(cs), min(len(cs), SPLITTER_CHULA_CELLS), replace=False))]
    crops = to_crops([x for x in xu if x.split == "train"]) + to_crops(cs)
    stats = fit_classifier_splitter(clf, crops, seed=seed, **SPLITTER_TRAIN)
    torch.save(clf.net.splitter.state_dict(), cache / "splitter.pt")
    return stats


def attach_splitter(classifier, cache, out, *, occlusion: str = "none", log=print) -> dict:
    """Give a trained classifier the learned splitter of ``cache`` (``prepare --split unet``):
    the network and abnormal model stay as trained; at prediction the regions are split by
    the splitter instead of the rule-based split, and half-hidden cells are read by the
    ``occlusion`` rule (:mod:`napari_sickle.models.occlusion`). Writes ``out``; returns the recipe."""
    import torch

    from ..models.checkpoint import save_checkpoint
    from ..models.multilabel import RBCClassifier
    from ..models.occlusion import check_rule
    from ..models.splitter import build_splitter

    prep = json.loads((Path(cache) / "prepare.json").read_text())
    cfg = prep.get("config", {}).get("splitter")
    if prep.get("config", {}).get("split") != "unet" or not cfg:
        raise ValueError(f"{cache} holds no learned splitter: run `prepare --split unet` first")
    clf = RBCClassifier.from_checkpoint(classifier)
    net = build_splitter(cfg)
    net.load_state_dict(torch.load(Path(cache) / "splitter.pt", map_location="cpu", weights_only=True))
    clf.net.splitter = net.eval()
    clf.config["split"] = "unet"
    clf.config["splitter"] = {**cfg, "trained": True}
    clf.config["occlusion"] = check_rule(occlusion)
    clf.recipe = {
        **(clf.recipe or {}),
        "split": "unet",
        "splitter": {**splitter_recipe(prep.get("splitter")), "attached_after_training": True},
        "occlusion": clf.config["occlusion"],
    }
    save_checkpoint(clf.to_checkpoint(), out)
    log(f"wrote {out}: split='unet', occlusion={clf.config['occlusion']!r}")
    return clf.recipe
