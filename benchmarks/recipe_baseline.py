"""Tiny seeded training runs of every trainer; their losses and metrics as JSON.

    python benchmarks/recipe_baseline.py [--out FILE] [--only detector,multilabel,unet,bm,protocol,real_classifier]

Each run is a few optimiser steps on small simulated (or generated class-folder) inputs, one
CPU thread, fixed seeds, so the numbers are reproducible on one machine and torch version.
``tests/test_recipes.py`` compares a fresh run against ``tests/data/recipe_baseline.json``:
a refactoring of the trainers must leave these numbers unchanged.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path


def _numbers(obj, prefix=""):
    """Flatten the numeric leaves of nested dicts/lists into {"a.b.0": value}."""
    out = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            out.update(_numbers(v, f"{prefix}{i}."))
    elif isinstance(obj, bool):
        out[prefix[:-1]] = float(obj)
    elif isinstance(obj, (int, float)):
        out[prefix[:-1]] = None if isinstance(obj, float) and not math.isfinite(obj) else float(obj)
    elif hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        out.update(_numbers(obj.item(), prefix))
    return out


_SKIP = ("seconds", "step_time", "wall", "time", "lr_range_test")


def _summary(result: dict) -> dict:
    """The numbers of a trainer's result that do not depend on the clock."""
    keep = {"history": result.get("history", []), "metrics": result.get("metrics", {})}
    return {k: v for k, v in _numbers(keep).items() if not any(s in k for s in _SKIP)}


def _cell(rng, elongated: bool):
    import numpy as np

    yy, xx = np.mgrid[:24, :24] - 11.5
    a, b = (10, 4) if elongated else (8, 8)
    inside = (xx / a) ** 2 + (yy / b) ** 2 <= 1
    img = np.full((24, 24), 200, np.uint8)
    img[inside] = 90
    return np.clip(img + rng.integers(-10, 10, img.shape), 0, 255).astype(np.uint8)


def _crop_folders(root: Path) -> Path:
    """Xu et al. class folders, 6 generated crops each, from two 'patients'."""
    import imageio.v3 as iio
    import numpy as np

    rng = np.random.default_rng(0)
    for folder, elong in (("Discocytes", False), ("Elongated", True)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(6):
            iio.imwrite(root / folder / f"P{i % 2}_{i}.png", _cell(rng, elong))
    return root


def run_detector(tmp: Path) -> dict:
    from napari_sickle.training.detector import train_detector

    kw = dict(device="cpu", iters_per_epoch=2, batch_size=1, crop_size=96, n_smears=3, smear_shape=(128, 160))
    plain = train_detector("simulated", tmp / "d1", epochs=2, pretrained=False, **kw)
    options = train_detector(
        "simulated",
        tmp / "d2",
        epochs=2,
        pretrained=False,
        scale_jitter=0.2,
        min_visible=0.5,
        rot90=True,
        color_aug=True,
        ema=0.5,
        tta="flips",
        region_merge={"delta": 8.0},
        rpn_batch_size_per_image=128,
        **kw,
    )
    resumed = train_detector("simulated", tmp / "d3", epochs=3, pretrained=False, resume=tmp / "d2" / "last.pt", **kw)
    return {"plain": _summary(plain), "options": _summary(options), "resumed": _summary(resumed)}


def run_multilabel(tmp: Path) -> dict:
    from napari_sickle.training.multilabel import train_multilabel

    sim = train_multilabel(
        "simulated",
        tmp / "m1",
        epochs=2,
        device="cpu",
        n_smears=2,
        smear_shape=(240, 360),
        input_size=32,
        batch_size=16,
        pretrained=False,
        folds=2,
    )
    crops = _crop_folders(tmp / "crops")
    folders = train_multilabel(
        str(crops), tmp / "m2", epochs=2, device="cpu", input_size=32, batch_size=16, pretrained=False, compose=6
    )
    resumed = train_multilabel(
        str(crops),
        tmp / "m3",
        epochs=3,
        device="cpu",
        input_size=32,
        batch_size=16,
        pretrained=False,
        compose=6,
        resume=tmp / "m2" / "last.pt",
    )
    return {"simulated": _summary(sim), "folders": _summary(folders), "resumed": _summary(resumed)}


def run_unet(tmp: Path) -> dict:
    from napari_sickle.training.unet import train_unet

    kw = dict(
        device="cpu",
        n_simulated=3,
        simulated_shape=(160, 160),
        steps_per_epoch=2,
        batch_size=2,
        crop=64,
        scale=0.5,
        base_channels=8,
        depth=2,
        val_every=1,
    )
    first = train_unet("simulated", tmp / "u1", epochs=2, **kw)
    resumed = train_unet("simulated", tmp / "u1", epochs=3, resume=tmp / "u1" / "last.pt", **kw)
    return {"simulated": _summary(first), "resumed": _summary(resumed)}


def run_bm(tmp: Path) -> dict:
    from napari_sickle.training.bm import train_bm

    kw = dict(device="cpu", n_per_class=5, input_size=32, batch_size=8)
    cosine = train_bm("simulated", tmp / "b1", epochs=2, backbone="tiny_regnet", **kw)
    plateau = train_bm(
        "simulated",
        tmp / "b2",
        epochs=2,
        backbone="tiny_vgg",
        schedule="plateau",
        lr_test_steps=8,
        warmup_epochs=1,
        **kw,
    )
    return {"cosine": _summary(cosine), "plateau": _summary(plateau)}


def run_protocol(tmp: Path) -> dict:
    from napari_sickle.training.protocol import run_protocol

    crops = _crop_folders(tmp / "crops")
    res = run_protocol(
        str(crops),
        tmp / "p",
        folds=2,
        epochs=3,
        device="cpu",
        input_size=32,
        n_train_patches=8,
        n_test_patches=4,
    )
    return {"table1": _summary(res)}


def run_real_classifier(tmp: Path) -> dict:
    """The fine-tuning of the real-cell classifier on a random canvas cache (as
    tests/test_real_classifier.py builds one): two epochs, then one more resumed."""
    import numpy as np

    from napari_sickle.training import real_classifier as rc

    rng = np.random.default_rng(0)
    s = rc.INPUT_SIZE
    for split, n in (("train", 12), ("val", 6)):
        X = rng.integers(0, 255, (n + 2, 3, s, s), dtype=np.uint8)
        owner = np.concatenate([np.arange(n), [0, 1]])
        order = np.argsort(owner, kind="stable")
        np.savez(
            tmp / f"{split}.npz",
            X=X[order],
            owner=owner[order],
            Y=np.eye(6, dtype=np.float32)[np.arange(n) % 6],
            source=np.array(["xu", "chula"] * (n // 2)),
            kind=np.array(["single", "patch"] * (n // 2)),
        )
    kw = dict(regions_per_epoch=8, batch_regions=4, threads=1, log=lambda *_: None)
    rc.train(tmp, epochs=2, total_epochs=3, **kw)
    res = rc.train(tmp, epochs=1, resume=True, **kw)
    return {"fine_tune": _summary(res)}


RUNS = {
    "detector": run_detector,
    "multilabel": run_multilabel,
    "unet": run_unet,
    "bm": run_bm,
    "protocol": run_protocol,
    "real_classifier": run_real_classifier,
}


def run(only=None) -> dict:
    """{trainer: {run: {key: number}}} for the trainers in ``only`` (default all)."""
    import torch

    torch.set_num_threads(1)
    out = {}
    for name, fn in RUNS.items():
        if only and name not in only:
            continue
        with tempfile.TemporaryDirectory(prefix=f"recipe-{name}-") as tmp:
            out[name] = fn(Path(tmp))
    return out


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=None, help="write the JSON here (default: stdout)")
    ap.add_argument("--only", default=None, help="comma-separated trainers")
    a = ap.parse_args(argv)
    res = {"torch": torch.__version__, "runs": run(a.only.split(",") if a.only else None)}
    text = json.dumps(res, indent=1, sort_keys=True)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
