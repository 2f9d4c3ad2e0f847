"""Where Grad-CAM looks on real white cells: heatmap mass on the cell and on its nucleus.

The Zheng 2018 crops come with expert masks (0 background, 128 cytoplasm, 255 nucleus). For
each crop, ``analysis.bm.explain`` (Grad-CAM, predicted class) gives a heatmap at the crop's
size; its mass on the cell is ``sum(heatmap * (mask > 0)) / sum(heatmap)``, on the nucleus
``sum(heatmap * (mask == 255)) / sum(heatmap)``. The cell's and nucleus' share of the crop area
(what a uniform heatmap would score) is printed next to them.

    .venv/bin/python benchmarks/bm_gradcam_mass.py [--model NAME|best.pt] [--split heldout|all]
        [--figure docs/images/bm_gradcam.png]

``--model`` defaults to the shipped default white-cell model. ``--split heldout`` keeps the
crops the checkpoint's training run held out (its recipe's ``val_paths``); the shipped model is
trained on every crop, so it has none and is measured with ``--split all``.
Prints one JSON line per class and an ``all`` line; ``--figure`` saves crops with heatmaps.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def data_root() -> Path:
    return Path(os.environ.get("SICKLE_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


def mass_fractions(heatmap, mask):
    import numpy as np

    h = np.asarray(heatmap, dtype=np.float64)
    tot = h.sum()
    if tot <= 0:
        return float("nan"), float("nan")
    return float((h * (mask > 0)).sum() / tot), float((h * (mask == 255)).sum() / tot)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(data_root() / "wbc-zheng2018"))
    ap.add_argument("--model", default=None, help="shipped model name or checkpoint (default: shipped default)")
    ap.add_argument("--split", choices=("heldout", "all"), default="all")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--figure", default=None, help="save a figure of 8 crops with their heatmaps")
    a = ap.parse_args(argv)
    import numpy as np
    import pandas as pd
    import torch

    from napari_sickle.analysis.bm import explain
    from napari_sickle.io.images import read_image, to_rgb_uint8
    from napari_sickle.models.bm import load_bm_model

    torch.set_num_threads(a.threads)
    model = load_bm_model(a.model)
    root = Path(a.data)
    df = pd.read_csv(root / "labels.csv")
    df["path"] = [str((root / p).resolve()) for p in df["image"]]
    if a.split == "heldout":
        keep = set(model.recipe.get("val_paths") or [])
        if not keep:
            raise SystemExit(f"{model.source}: no held-out crops recorded (trained on every crop); use --split all")
        df = df[df["path"].isin(keep)]
    images = [to_rgb_uint8(read_image(p)) for p in df["path"]]
    masks = []
    for p in df["mask"]:
        m = np.asarray(read_image(root / p))
        masks.append(m[..., 0] if m.ndim == 3 else m)
    t0 = time.perf_counter()
    res = explain(images, model, method="gradcam", faithfulness=None, device="cpu")
    secs = time.perf_counter() - t0
    rows = []
    for i, (h, m) in enumerate(zip(res.heatmaps, masks)):
        cell, nuc = mass_fractions(h, m)
        rows.append(
            {
                "class": df["class_name"].iloc[i],
                "cell": cell,
                "nucleus": nuc,
                "cell_area": float((m > 0).mean()),
                "nucleus_area": float((m == 255).mean()),
                "correct": res.class_names[res.predicted[i]] == df["class_name"].iloc[i],
            }
        )
    t = pd.DataFrame(rows)
    for name, g in list(t.groupby("class")) + [("all", t)]:
        print(
            json.dumps(
                {
                    "class": name,
                    "n": len(g),
                    "mass_on_cell": round(g["cell"].mean(), 4),
                    "mass_on_cell_min": round(g["cell"].min(), 4),
                    "mass_on_nucleus": round(g["nucleus"].mean(), 4),
                    "cell_area_share": round(g["cell_area"].mean(), 4),
                    "nucleus_area_share": round(g["nucleus_area"].mean(), 4),
                    "share_with_cell_mass_ge_0.8": round(float((g["cell"] >= 0.8).mean()), 4),
                    "accuracy": round(float(g["correct"].mean()), 4),
                }
            )
        )
    print(
        json.dumps(
            {
                "model": model.source,
                "split": a.split,
                "crops": len(t),
                "explain_seconds": round(secs, 1),
                "load": os.getloadavg()[0],
            }
        )
    )
    if a.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        pick = []
        for c in sorted(t["class"].unique()):
            pick += list(np.flatnonzero(t["class"].values == c)[:2])
        fig, axes = plt.subplots(2, len(pick), figsize=(1.6 * len(pick), 3.5))
        for j, i in enumerate(pick):
            axes[0, j].imshow(images[i])
            axes[0, j].contour(masks[i] > 0, levels=[0.5], colors="cyan", linewidths=0.7)
            axes[0, j].set_title(f"{t['class'].iloc[i][:5]}\ncell {t['cell'].iloc[i]:.0%}", fontsize=7)
            axes[1, j].imshow(images[i])
            axes[1, j].imshow(res.heatmaps[i], cmap="inferno", alpha=0.55, vmin=0, vmax=1)
            axes[1, j].set_title(f"pred {res.class_names[res.predicted[i]][:5]}", fontsize=7)
            for ax in axes[:, j]:
                ax.axis("off")
        fig.tight_layout()
        Path(a.figure).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.figure, dpi=110)
        print(json.dumps({"figure": a.figure}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
