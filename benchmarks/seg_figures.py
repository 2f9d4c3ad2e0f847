"""Pictures of docs/segmentation.md: watershed vs U-Net vs connected components.

    .venv/bin/python benchmarks/seg_figures.py --model runs/unet_bbbc041/best.pt

Writes docs/images/seg_simulated.png (simulated 1920x1080 smear, seed 7) and
docs/images/seg_bbbc041.png (a held-out BBBC041 image of the model's recipe), and prints
the metrics of each panel as JSON. Outlines: green = ground truth cells, red = predicted
objects; yellow rings = predictions that merge two or more true cells.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def panel(ax, img, lab, gt, title, merged_ids=()):
    import numpy as np
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    o = img[..., :3].copy()
    o[find_boundaries(gt, mode="inner")] = (0, 200, 0)
    if lab is not None:
        o[find_boundaries(lab, mode="inner")] = (230, 0, 0)
    ax.imshow(o)
    if lab is not None and len(merged_ids):
        cs = ndi.center_of_mass(np.ones_like(lab), lab, list(merged_ids))
        ys, xs = zip(*cs)
        ax.scatter(xs, ys, s=260, facecolors="none", edgecolors="yellow", linewidths=2)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def figure(img, gt, res, path, crop):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y0, y1, x0, x1 = crop
    sl = (slice(y0, y1), slice(x0, x1))
    methods = list(res.labels)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(3.2 * (len(methods) + 1), 3.4), dpi=90)
    panel(axes[0], img[sl], None, gt[sl], f"ground truth ({int(gt.max())} cells)")
    for ax, m in zip(axes[1:], methods):
        met = res.metrics[m]
        lab = res.labels[m][sl]
        ids = [i for i in met.merged_ids if (lab == i).any()]
        panel(
            ax,
            img[sl],
            lab,
            gt[sl],
            f"{m.replace('connected_components', 'conn. components')}\n"
            f"Dice {met.dice:.3f}  F1@0.5 {met.instance_f1_50:.3f}  merges {met.merges}",
            ids,
        )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    import torch

    from napari_sickle._paths import sickle_data_dir
    from napari_sickle.analysis.segmentation import _read_pair, compare_segmentations
    from napari_sickle.data.simulate import simulate_smear
    from napari_sickle.models.checkpoint import load_checkpoint

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default="docs/images")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(a.out)
    methods = ["watershed", "unet", "connected_components"]
    report = {}
    sm = simulate_smear(seed=7, shape=(1080, 1920))
    res = compare_segmentations(sm.image, sm.instances, methods=methods, unet_model=a.model, device="cpu")
    report["simulated"] = {m: res.metrics[m].as_dict() for m in methods}
    figure(sm.image, res.ground_truth, res, out / "seg_simulated.png", (0, 450, 0, 700))
    data = Path(a.data) if a.data else sickle_data_dir() / "bbbc041seg"
    stem = load_checkpoint(a.model, kind="unet")["recipe"]["test_images"][0]
    img, gt = _read_pair(data / "images" / f"{stem}.png", data / "masks" / f"{stem}.png", 30)
    res = compare_segmentations(img, gt, methods=methods, unet_model=a.model, device="cpu")
    report["bbbc041:" + stem] = {m: res.metrics[m].as_dict() for m in methods}
    figure(img, res.ground_truth, res, out / "seg_bbbc041.png", (0, 600, 0, 800))
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
