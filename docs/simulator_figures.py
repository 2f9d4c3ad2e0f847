"""Make the pictures of docs/simulator.md (run from the repository root):

    .venv/bin/python docs/simulator_figures.py

Writes docs/images/simulated_smear.png (the seed-0 sample smear, downscaled 2x, with its
region boxes) and docs/images/simulated_types.png (a full-resolution crop of the same smear
that holds all six types, with each cell's type written next to it).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from napari_sickle.constants import RBC_TYPE_LABELS, RBC_TYPES  # noqa: E402
from napari_sickle.data.simulate import simulate_smear  # noqa: E402

OUT = Path(__file__).parent / "images"


def best_window(sm, h=360, w=560, step=40):
    """The window holding every type with the most cells (ties: the most types seen)."""
    c = sm.cells
    cy = ((c.y_min + c.y_max) / 2).to_numpy()
    cx = ((c.x_min + c.x_max) / 2).to_numpy()
    types = np.array([RBC_TYPES.index(t) for t in c.type])
    best, key = (0, 0), (-1, -1)
    H, W = sm.instances.shape
    for y in range(0, H - h, step):
        for x in range(0, W - w, step):
            inside = (cy > y + 30) & (cy < y + h - 30) & (cx > x + 30) & (cx < x + w - 30)
            k = (len(set(types[inside])), int(inside.sum()))
            if k > key:
                key, best = k, (y, x)
    return best, key


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    sm = simulate_smear(seed=0)
    H, W = sm.instances.shape
    abnormal = sm.regions[list(RBC_TYPES[1:])].max(axis=1).to_numpy()

    fig = plt.figure(figsize=(9.6, 5.4), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(sm.image, interpolation="lanczos")
    for r, ab in zip(sm.regions.itertuples(index=False), abnormal):
        ax.add_patch(
            Rectangle(
                (r.x_min - 0.5, r.y_min - 0.5),
                r.x_max - r.x_min,
                r.y_max - r.y_min,
                fill=False,
                lw=0.6,
                ec="#d50000" if ab else "#00a040",
            )
        )
    ax.set_axis_off()
    fig.savefig(OUT / "simulated_smear.png", dpi=100)
    plt.close(fig)

    (y, x), key = best_window(sm)
    h, w = 360, 560
    fig = plt.figure(figsize=(w / 50, h / 50), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(sm.image[y : y + h, x : x + w], interpolation="nearest")
    for c in sm.cells.itertuples(index=False):
        cyy, cxx = (c.y_min + c.y_max) / 2 - y, (c.x_min + c.x_max) / 2 - x
        if 10 < cyy < h - 10 and 10 < cxx < w - 10:
            ax.text(
                cxx,
                c.y_min - y - 2,
                RBC_TYPE_LABELS[c.type],
                ha="center",
                va="bottom",
                fontsize=6.5,
                color="black",
                bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7),
            )
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_axis_off()
    fig.savefig(OUT / "simulated_types.png", dpi=100)
    plt.close(fig)
    print(f"window y={y} x={x} types={key[0]} cells={key[1]}")
    for p in ("simulated_smear.png", "simulated_types.png"):
        print(p, (OUT / p).stat().st_size // 1024, "KiB")


if __name__ == "__main__":
    main()
