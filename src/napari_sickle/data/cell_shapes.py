"""One simulated red blood cell: its shape parameters, mask and stain absorbance.

A cell is drawn in its own patch: :func:`_make_cell` samples the type's shape (disc, oval,
sickle, spiky echinocyte, stomatocyte slit, ...) and its mask; :func:`_cell_od` renders the
optical density of that patch (rim, central pallor, reticulum, granules). The smear
(:mod:`napari_sickle.data.simulate`) places and adds up these patches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from ..constants import RBC_TYPES

# Absorbance per unit thickness, RGB: methylene-blue reticulum absorbs red -> blue; granules
# purple-black.
_RETIC_OD = np.array([0.95, 0.55, 0.12], np.float32)
_GRANULE_OD = np.array([0.95, 1.10, 0.70], np.float32)


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


@dataclass
class _Cell:
    type_index: int
    radius: float  # nominal radius in px (diameter / 2)
    angle: float
    params: dict
    mask: np.ndarray  # local bool mask
    cy: float  # centre inside the local patch
    cx: float


def _make_cell(type_index: int, diameter: float, rng: np.random.Generator) -> _Cell:
    """Sample a cell's shape parameters and its local mask (no position)."""
    t = RBC_TYPES[type_index]
    R = float(diameter) / 2.0
    angle = float(rng.uniform(0, np.pi))
    p: dict = {}
    if t == "oval_disc":
        p["q"] = float(rng.uniform(0.72, 1.0)) if rng.random() < 0.35 else float(rng.uniform(0.9, 1.0))
        p["pallor_depth"] = float(rng.uniform(0.45, 0.7))
        p["pallor_r"] = float(rng.uniform(0.45, 0.6))
        p["density"] = float(rng.uniform(0.8, 1.0))
    elif t == "elongated_sickle":
        p["sickle"] = bool(rng.random() < 0.5)
        if p["sickle"]:
            # crescent = unit disc minus a shifted disc; scale so its length ~ diameter*1.15
            p["cut_r"] = float(rng.uniform(0.85, 1.0))
            p["cut_d"] = float(rng.uniform(0.35, 0.55))
            R = R * float(rng.uniform(1.05, 1.25))
        else:
            p["q"] = float(rng.uniform(0.25, 0.45))
            p["bend"] = float(rng.uniform(-0.25, 0.25))
            R = R * float(rng.uniform(1.1, 1.3))
        p["density"] = float(rng.uniform(1.0, 1.25))
    elif t == "reticulocyte":
        R = R * float(rng.uniform(1.0, 1.12))
        p["q"] = float(rng.uniform(0.85, 1.0))
        p["pallor_depth"] = float(rng.uniform(0.0, 0.2))
        p["pallor_r"] = 0.5
        p["density"] = float(rng.uniform(0.7, 0.9))
        p["retic_amount"] = float(rng.uniform(0.8, 1.3))
    elif t == "granular":
        p["q"] = float(rng.uniform(0.8, 1.0))
        p["harm"] = rng.normal(0, 0.035, size=(4, 2)).astype(float)
        p["density"] = float(rng.uniform(0.95, 1.15))
        p["n_granules"] = int(rng.integers(20, 45))
    elif t == "echinocyte":
        p["n_spikes"] = int(rng.integers(10, 20))
        p["spike_amp"] = float(rng.uniform(0.14, 0.24))
        p["spike_phase"] = float(rng.uniform(0, 2 * np.pi))
        p["spike_jitter"] = rng.uniform(0.7, 1.3, size=p["n_spikes"]).astype(float)
        p["pallor_depth"] = float(rng.uniform(0.1, 0.3))
        p["pallor_r"] = 0.45
        p["density"] = float(rng.uniform(0.9, 1.1))
    elif t == "stomatocyte":
        p["q"] = float(rng.uniform(0.88, 1.0))
        p["slit_len"] = float(rng.uniform(0.45, 0.62))
        p["slit_w"] = float(rng.uniform(0.08, 0.14))
        p["slit_curve"] = float(rng.uniform(-0.25, 0.25))
        p["pallor_depth"] = float(rng.uniform(0.7, 0.85))
        p["density"] = float(rng.uniform(0.85, 1.05))
    extent = 1.3 if t == "echinocyte" else 1.1
    half = int(np.ceil(R * extent)) + 2
    size = 2 * half + 1
    cy = cx = float(half)
    cell = _Cell(type_index, R, angle, p, np.zeros((size, size), bool), cy, cx)
    un, vn = _local_coords(cell, size)
    cell.mask = _largest_component(_shape_inside(cell, un, vn))
    return cell


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 4-connected component (so no cell is split by 4-connectivity)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(sizes.argmax())


def _local_coords(cell: _Cell, size: int):
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    x = xx - cell.cx
    y = yy - cell.cy
    c, s = np.cos(cell.angle), np.sin(cell.angle)
    u = (x * c + y * s) / cell.radius
    v = (-x * s + y * c) / cell.radius
    return u, v


def _shape_inside(cell: _Cell, un: np.ndarray, vn: np.ndarray) -> np.ndarray:
    t = RBC_TYPES[cell.type_index]
    p = cell.params
    if t == "elongated_sickle":
        if p["sickle"]:
            outer = un**2 + vn**2 <= 1.0
            inner = un**2 + (vn - p["cut_d"]) ** 2 <= p["cut_r"] ** 2
            return outer & ~inner
        vb = vn - p["bend"] * (un**2 - 0.5)
        return un**2 + (vb / p["q"]) ** 2 <= 1.0
    if t == "echinocyte":
        r = np.hypot(un, vn)
        th = np.arctan2(vn, un)
        n = p["n_spikes"]
        phase = (th - p["spike_phase"]) % (2 * np.pi)
        k = np.round(phase / (2 * np.pi) * n).astype(int) % n  # nearest spike
        bumps = np.maximum(np.cos(n * phase), 0) ** 6
        rad = 0.88 + p["spike_amp"] * bumps * p["spike_jitter"][k]
        return r <= rad
    if t == "granular":
        r = np.hypot(un, vn / p["q"])
        th = np.arctan2(vn, un)
        rad = 1.0
        for i, (a, b) in enumerate(p["harm"], start=2):
            rad = rad + a * np.cos(i * th) + b * np.sin(i * th)
        return r <= rad
    q = p.get("q", 1.0)
    return un**2 + (vn / q) ** 2 <= 1.0


def _cell_od(cell: _Cell, rng: np.random.Generator, stain: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Absorbance (h, w, 3) float32 and soft coverage alpha (h, w) for a cell patch."""
    t = RBC_TYPES[cell.type_index]
    p = cell.params
    mask = cell.mask
    size = mask.shape[0]
    un, vn = _local_coords(cell, size)
    R = cell.radius
    # soft edge (antialiasing)
    alpha = ndi.gaussian_filter(mask.astype(np.float32), 0.7)
    edt = ndi.distance_transform_edt(mask).astype(np.float32)
    # thickness: thin rolled edge rising to a thicker rim
    rim_w = max(2.0, 0.14 * R)
    thick = 0.55 + 0.45 * (1 - np.exp(-edt / rim_w))
    thick = thick + 0.12 * np.exp(-((edt - rim_w) ** 2) / (2 * (0.6 * rim_w) ** 2))
    pallor = np.zeros_like(edt)
    if t in ("oval_disc", "reticulocyte", "echinocyte"):
        q = p.get("q", 1.0)
        rho = np.hypot(un, vn / q)
        pallor = 1.0 - _smoothstep(0.15, p["pallor_r"] + 0.15, rho)
    elif t == "stomatocyte":
        ub = un
        vb = vn - p["slit_curve"] * (un**2)
        s = (ub / p["slit_len"]) ** 2 + (vb / p["slit_w"]) ** 2
        pallor = np.clip(1.0 - s, 0, 1) ** 0.35
        pallor = ndi.gaussian_filter(pallor, max(0.6, 0.03 * R))
    depth = p.get("pallor_depth", 0.0)
    thick = thick * (1.0 - depth * pallor)
    if t == "elongated_sickle":
        thick = 0.75 + 0.25 * (1 - np.exp(-edt / rim_w))  # dense, no pallor
    tex = 1.0 + 0.05 * ndi.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.5) * 3
    od = (alpha * thick * tex * p["density"])[..., None] * stain[None, None, :]
    if t == "reticulocyte":
        # reticulum: thin blue filaments and dots, mostly in the inner cell
        n = rng.standard_normal(mask.shape).astype(np.float32)
        net = ndi.gaussian_filter(n, 1.2)
        net = np.abs(net) < 0.06 * np.std(net) * 3  # zero-crossing lines -> network
        dots = ndi.gaussian_filter(rng.standard_normal(mask.shape).astype(np.float32), 1.0)
        dots = dots > np.quantile(dots, 0.91)
        inner = edt > 0.28 * R
        keep = (net & (rng.random(mask.shape) < 0.6)) | dots
        ret = ndi.gaussian_filter((keep & inner).astype(np.float32), 0.6)
        od = od + (p["retic_amount"] * 1.1 * ret)[..., None] * _RETIC_OD[None, None, :]
    elif t == "granular":
        g = np.zeros(mask.shape, np.float32)
        ys, xs = np.nonzero(edt > 2.5)
        if len(ys):
            idx = rng.choice(len(ys), size=min(p["n_granules"], len(ys)), replace=False)
            g[ys[idx], xs[idx]] = rng.uniform(0.7, 1.3, size=len(idx))
            g = ndi.gaussian_filter(g, rng.uniform(0.8, 1.2)) * 9.0
        od = od + np.clip(g, 0, 1.6)[..., None] * _GRANULE_OD[None, None, :]
    return od.astype(np.float32), alpha


def _variant(cell: _Cell) -> str:
    """The Xu et al. folder name that fits the drawn cell (Oval vs Discocytes, ...)."""
    t = RBC_TYPES[cell.type_index]
    if t == "oval_disc":
        return "Oval" if cell.params["q"] < 0.85 else "Discocytes"
    if t == "elongated_sickle":
        return "Sickle-ISC" if cell.params["sickle"] else "Elongated"
    return {
        "reticulocyte": "Reticulocytes",
        "granular": "Granular",
        "echinocyte": "Echinocytes",
        "stomatocyte": "Stomatocyte",
    }[t]
