"""Simulated single cells whose class depends only on a feature at a known place.

Used by the Grad-CAM sanity test and by ``train_bm(data="simulated")``. Every image shows
a pale cell body on a noisy background with two small round "granules" of the same size
at random places inside the cell: one *marker* whose colour sets the class, and one
*distractor* of a neutral colour that every class has. The marker's centre and radius
are returned, so a test can check that a heatmap's peak lands on the marker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: marker colour of each simulated class (RGB uint8)
SIM_CLASS_COLOURS = {
    "red_granule": (200, 30, 40),
    "blue_granule": (40, 50, 200),
    "yellow_granule": (225, 205, 30),
    "dark_granule": (50, 20, 70),
}
DISTRACTOR_COLOUR = (120, 140, 120)
SIM_CLASS_NAMES = tuple(SIM_CLASS_COLOURS)


@dataclass
class SimulatedCells:
    images: np.ndarray  # (N, S, S, 3) uint8
    labels: np.ndarray  # (N,) int index into class_names
    class_names: tuple[str, ...]
    marker_centres: np.ndarray  # (N, 2) (row, col) of the class-defining feature
    distractor_centres: np.ndarray  # (N, 2)
    marker_radius: float


def _disk(rr, cc, centre, radius):
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def simulate_bm_cells(
    n_per_class: int = 64, size: int = 64, seed: int = 0, marker_radius: float | None = None, grid: int | None = None
) -> SimulatedCells:
    """``n_per_class`` cells per class, ``size`` x ``size`` RGB, reproducible from ``seed``.

    ``grid``: snap the marker's centre to the centre of a ``grid`` x ``grid`` tile (e.g. the
    patch size of a ViT), so that the class-defining feature lies in one patch."""
    rng = np.random.default_rng(seed)
    r_mark = float(marker_radius if marker_radius is not None else max(3.0, size / 8))
    rr, cc = np.mgrid[0:size, 0:size].astype(np.float32)
    names = SIM_CLASS_NAMES
    n = n_per_class * len(names)
    labels = np.repeat(np.arange(len(names)), n_per_class)
    rng.shuffle(labels)
    images = np.empty((n, size, size, 3), np.uint8)
    mk = np.empty((n, 2), np.float32)
    ds = np.empty((n, 2), np.float32)
    for i in range(n):
        img = np.empty((size, size, 3), np.float32)
        img[:] = np.array([225, 205, 215], np.float32) + rng.normal(0, 6, 3)
        centre = size / 2 + rng.normal(0, size * 0.03, 2)
        r_cell = size * rng.uniform(0.38, 0.46)
        body = _disk(rr, cc, centre, r_cell)
        img[body] = np.array([235, 180, 190], np.float32) + rng.normal(0, 6, 3)
        # two non-overlapping granule positions inside the cell body
        # marker and distractor on opposite sides of the centre, at least 2.5 radii apart
        ang = rng.uniform(0, 2 * np.pi)
        reach = max(r_cell - r_mark - 1, 1.3 * r_mark)
        rad_m, rad_d = rng.uniform(0.65, 1.0, 2) * reach
        u = np.array([np.sin(ang), np.cos(ang)])
        m = centre + rad_m * u
        if grid:
            m = np.clip(np.floor(m / grid), 0, size // grid - 1) * grid + (grid - 1) / 2
        d = centre - rad_d * np.array([np.sin(ang + rng.uniform(-0.6, 0.6)), np.cos(ang + rng.uniform(-0.6, 0.6))])
        img[_disk(rr, cc, m, r_mark)] = SIM_CLASS_COLOURS[names[labels[i]]]
        img[_disk(rr, cc, d, r_mark)] = DISTRACTOR_COLOUR
        img += rng.normal(0, 8, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
        mk[i], ds[i] = m, d
    return SimulatedCells(images, labels, names, mk, ds, r_mark)
