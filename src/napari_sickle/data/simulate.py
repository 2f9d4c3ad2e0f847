"""Procedural brightfield blood-smear simulator (numpy + scipy + scikit-image).

``simulate_smear(seed)`` renders a 1920x1080 (width x height) smear of red blood cells of
the six types in :data:`napari_sickle.constants.RBC_TYPES` and returns the ground truth:

* ``instances`` (H, W) int32 -- 0 background, cell ids 1..N. Where cells overlap the cell
  drawn last (the top cell) owns the pixel.
* ``cell_types`` (N,) -- index into ``RBC_TYPES``; cell id ``i + 1`` has ``cell_types[i]``.
* ``region_labels`` (H, W) int32 -- ``skimage.measure.label(instances > 0)``: one id per
  connected region of cell pixels (a single cell or a touching/overlapping cluster), the
  paper's BFS step.
* ``regions`` -- a DataFrame in the regions CSV schema (``image, region_id, x_min, y_min,
  x_max, y_max`` + six 0/1 type columns = union of the member cells' types, ``n_cells``,
  ``label``). Boxes are pixel coordinates, x = column, max exclusive (regionprops ``bbox``).

Rendering works in optical density: each cell contributes a stain-coloured absorbance map
(thicker rim, central pallor, reticulum, granules ...), overlapping cells add up, and the
image is ``illumination * exp(-OD)`` followed by focus blur and sensor noise.

No Qt/napari imports here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..constants import RBC_TYPE_LABELS, RBC_TYPES, XU_FOLDER_TO_TYPE
from .cell_shapes import _cell_od, _make_cell, _variant
from .ground_truth import _drop_hidden, cell_table, regions_from_instances, touching_cells, touching_pairs
from .placement import paint_instances, paste_add, place_cells

__all__ = [
    "SimulatedSmear",
    "DEFAULT_TYPE_MIX",
    "simulate_smear",
    "simulate_cell",
    "simulate_cell_details",
    "touching_pairs",
    "place_cells",
    "paint_instances",
    "touching_cells",
    "regions_from_instances",
    "cell_table",
    "resolve_type",
]


#: Default SCD-like type mix (fractions of cells), every type present.
DEFAULT_TYPE_MIX: dict[str, float] = {
    "oval_disc": 0.40,
    "elongated_sickle": 0.20,
    "reticulocyte": 0.10,
    "granular": 0.10,
    "echinocyte": 0.10,
    "stomatocyte": 0.10,
}


# Absorbance (optical density) per unit thickness, RGB. Haemoglobin/eosin absorbs green and
# blue -> pink-red cells.
_HB_OD = np.array([0.10, 0.62, 0.50], np.float32)
_BG_TINT = np.array([0.93, 0.90, 0.92], np.float32)

#: Stain styles: (background tint, cell absorbance) measured as the medians of the Otsu background
#: and foreground of real smears (cell OD divided by 0.88, the simulator's mean cell thickness).
#: "pink" is the original simulator look; "auto" picks one style per seed.
STAIN_STYLES: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "pink": ((0.93, 0.90, 0.92), (0.10, 0.62, 0.50)),
    "wright-grey": ((0.77, 0.77, 0.77), (0.11, 0.27, 0.20)),  # BCCD-like: pale cells on grey
    "wright-teal": ((0.55, 0.59, 0.56), (0.25, 0.58, 0.36)),  # Chula RBC-12-like: mauve on grey-teal
    "giemsa-lilac": ((0.99, 0.99, 0.99), (0.65, 0.84, 0.27)),  # BBBC041-like: lilac cells on white
}


@dataclass
class SimulatedSmear:
    """A simulated smear and its ground truth (see module docstring)."""

    image: np.ndarray  # (H, W, 3) uint8, or (H, W) uint8 when rendered with rgb=False
    instances: np.ndarray  # (H, W) int32, 0 background, 1..N
    cell_types: np.ndarray  # (N,) int64 index into RBC_TYPES
    region_labels: np.ndarray  # (H, W) int32
    regions: pd.DataFrame  # regions CSV schema + n_cells, label
    cells: pd.DataFrame = field(default_factory=pd.DataFrame)  # per-cell table
    seed: int | None = None
    name: str = "simulated"
    #: (H, W) uint8 number of cells drawn over each pixel (2+ where cells overlap), or None
    coverage: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_cells(self) -> int:
        return int(len(self.cell_types))

    @property
    def type_names(self) -> list[str]:
        return [RBC_TYPES[int(t)] for t in self.cell_types]

    def cell_type_matrix(self) -> np.ndarray:
        """(N, 6) 0/1 matrix of cell types."""
        m = np.zeros((self.n_cells, len(RBC_TYPES)), np.int64)
        m[np.arange(self.n_cells), self.cell_types] = 1
        return m


# --------------------------------------------------------------------------------------
# Type names
# --------------------------------------------------------------------------------------
def resolve_type(name: str | int) -> int:
    """Index into RBC_TYPES from a type key, display label, Xu folder name, or index."""
    if isinstance(name, (int, np.integer)):
        if 0 <= int(name) < len(RBC_TYPES):
            return int(name)
        raise ValueError(f"type index {name} out of range 0..{len(RBC_TYPES) - 1}")
    key = str(name)
    if key in RBC_TYPES:
        return RBC_TYPES.index(key)
    for k, lab in RBC_TYPE_LABELS.items():
        if key.lower() == lab.lower():
            return RBC_TYPES.index(k)
    if key in XU_FOLDER_TO_TYPE:
        return RBC_TYPES.index(XU_FOLDER_TO_TYPE[key])
    low = key.lower().replace(" ", "_").replace("/", "_")
    for k in RBC_TYPES:
        if low == k or low in k.split("_"):
            return RBC_TYPES.index(k)
    raise ValueError(f"unknown RBC type {name!r}; expected one of {RBC_TYPES}")


def _type_probs(type_mix) -> np.ndarray:
    if type_mix is None:
        type_mix = DEFAULT_TYPE_MIX
    p = np.zeros(len(RBC_TYPES), float)
    if isinstance(type_mix, Mapping):
        for k, v in type_mix.items():
            p[resolve_type(k)] += float(v)
    else:
        arr = np.asarray(type_mix, float)
        if arr.shape != (len(RBC_TYPES),):
            raise ValueError(f"type_mix must have {len(RBC_TYPES)} entries, got {arr.shape}")
        p[:] = arr
    if np.any(p < 0) or p.sum() <= 0:
        raise ValueError(f"type_mix must be non-negative with a positive sum, got {type_mix}")
    return p / p.sum()


# --------------------------------------------------------------------------------------
# Smear
# --------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, shape, rgb_tint: np.ndarray) -> np.ndarray:
    """Illumination field (H, W, 3) in [0, 1]: tint * (gradient + vignette + mottling)."""
    H, W = shape
    yy = np.linspace(-1, 1, H, dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, W, dtype=np.float32)[None, :]
    gx, gy = rng.uniform(-0.08, 0.08, size=2)
    vig = float(rng.uniform(0.0, 0.12))
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    field_ = 1.0 + gx * xx + gy * yy - vig * ((xx - cx) ** 2 + (yy - cy) ** 2) / 2
    # low-frequency mottling of the plasma/background
    small = rng.standard_normal((max(2, H // 64), max(2, W // 64))).astype(np.float32)
    small = ndi.gaussian_filter(small, 1.5)
    mott = ndi.zoom(small, (H / small.shape[0], W / small.shape[1]), order=1)[:H, :W]
    if mott.shape != (H, W):
        mott = np.pad(mott, ((0, H - mott.shape[0]), (0, W - mott.shape[1])), mode="edge")
    field_ = field_ * (1.0 + float(rng.uniform(0.005, 0.02)) * mott)
    return field_[..., None] * rgb_tint[None, None, :]


def _finish(od: np.ndarray, illum: np.ndarray, rng, blur: float, noise: float, rgb: bool) -> np.ndarray:
    img = illum * np.exp(-od)
    if blur > 0:
        img = ndi.gaussian_filter(img, sigma=(blur, blur, 0))
    img = img * 255.0
    if noise > 0:
        img = img + rng.standard_normal(img.shape[:2], dtype=np.float32)[..., None] * noise
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * (noise * 0.5)
    if not rgb:
        img = img @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _style_colours(style: str, seed) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel factors (absorbance, background) that turn the base look into ``style``."""
    if style == "auto":
        names = sorted(STAIN_STYLES)
        style = names[int(np.random.default_rng([0 if seed is None else int(seed), 7]).integers(len(names)))]
    if style not in STAIN_STYLES:
        raise ValueError(f"unknown style {style!r}; expected 'auto' or one of {sorted(STAIN_STYLES)}")
    bg, od = STAIN_STYLES[style]
    return np.asarray(od, np.float32) / _HB_OD, np.asarray(bg, np.float32) / _BG_TINT


def _stain(rng) -> np.ndarray:
    s = _HB_OD * rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    return s * float(rng.uniform(0.9, 1.15))


def _check_smear_args(shape, n_cells, diameter, cluster_fraction, max_overlap) -> tuple[int, int]:
    """ValueError for arguments :func:`simulate_smear` cannot draw; returns (H, W)."""
    if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape}")
    if n_cells is not None and int(n_cells) < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    if not 4 <= float(diameter[0]) <= float(diameter[1]):
        raise ValueError(f"diameter must be (min, max) with 4 <= min <= max, got {diameter}")
    if not 0 <= cluster_fraction <= 1 or not 0 <= max_overlap < 1:
        raise ValueError("cluster_fraction must be in [0, 1] and max_overlap in [0, 1)")
    return int(shape[0]), int(shape[1])


def _draw_cells(rng, probs: np.ndarray, n_cells: int | None, shape, diameter) -> list:
    """The smear's cells (types, diameters, shapes), every type with a positive weight at
    least once when there are enough cells; ~200 per 1920x1080 when ``n_cells`` is None."""
    H, W = shape
    if n_cells is None:
        n_cells = int(round(rng.integers(195, 226) * (H * W) / (1080 * 1920)))
    n_cells = int(n_cells)
    types = rng.choice(len(RBC_TYPES), size=n_cells, p=probs)
    present = np.flatnonzero(probs > 0)
    if n_cells >= len(present):
        missing = [t for t in present if t not in set(types.tolist())]
        if missing:
            slots = rng.choice(n_cells, size=len(missing), replace=False)
            types[slots] = missing
    dmin, dmax = float(diameter[0]), float(diameter[1])
    diam = np.clip(rng.normal((dmin + dmax) / 2, (dmax - dmin) / 5, size=n_cells), dmin, dmax)
    return [_make_cell(int(types[i]), float(diam[i]), rng) for i in range(n_cells)]


def _render_cells(placed, rng, stain: np.ndarray, shape, progress):
    """Add up the placed cells' absorbance: ``(od (H, W, 3), coverage (H, W) uint8, type
    indices, rows (id, type, x, y, diameter))``."""
    H, W = shape
    od = np.zeros((H, W, 3), np.float32)
    coverage = np.zeros((H, W), np.uint8)
    kept_types, rows = [], []
    for k, (cell, top, left) in enumerate(placed):
        cell_stain = stain * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
        cod, _ = _cell_od(cell, rng, cell_stain)
        paste_add(od, cod, top, left)
        paste_add(coverage, cell.mask.astype(np.uint8), top, left)
        kept_types.append(cell.type_index)
        rows.append((k + 1, RBC_TYPES[cell.type_index], left + cell.cx, top + cell.cy, 2 * cell.radius))
        if progress is not None and (k % 20 == 0 or k == len(placed) - 1):
            progress("render cells", k + 1, len(placed))
    return od, coverage, kept_types, rows


def simulate_smear(
    seed: int | None = 0,
    shape: tuple[int, int] = (1080, 1920),
    n_cells: int | None = None,
    *,
    type_mix: Mapping[str, float] | Sequence[float] | None = None,
    diameter: tuple[float, float] = (45.0, 85.0),
    cluster_fraction: float = 0.3,
    max_overlap: float = 0.2,
    edge_cells: bool = False,
    rgb: bool = True,
    blur: float | None = None,
    noise: float | None = None,
    image_name: str | None = None,
    style: str = "pink",
    progress=None,
) -> SimulatedSmear:
    """Render a brightfield smear with its instance mask, cell types and region table.

    Parameters
    ----------
    seed : int
        Everything (cell types, shapes, positions, stain, noise) follows from the seed.
    shape : (H, W)
        Image size in pixels; default 1080 x 1920.
    n_cells : int, optional
        Number of cells to place; default ~200 per 1920x1080 (scaled by area). Cells that
        do not fit are dropped, so the result can hold slightly fewer.
    type_mix : dict type -> weight, or 6 weights, optional
        Cell type frequencies; default :data:`DEFAULT_TYPE_MIX` (40% disc, 20% sickle, 10%
        each other type). Every type with a positive weight is present at least once.
    diameter : (min, max)
        Cell diameter range in pixels (real data: 45-85 px).
    cluster_fraction : float
        Fraction of cells placed touching or overlapping an existing cell.
    max_overlap : float
        Largest fraction of a cell's area another cell may cover.
    edge_cells : bool
        Let cells run off the image edge (cut cells, as in real fields of view); their
        ground truth is the visible part. Off by default (whole cells only).
    rgb : bool
        False renders a grayscale (H, W) uint8 image, like the Xu et al. crops.
    blur, noise : float, optional
        Gaussian focus blur sigma (px) and sensor noise sigma (grey levels); random by default.
    style : str
        Stain and background colours: a key of :data:`STAIN_STYLES`, or "auto" for one chosen
        by the seed. The cell geometry of a seed does not depend on the style.
    """
    style_od, style_bg = _style_colours(style, seed)
    rng = np.random.default_rng(seed)
    H, W = _check_smear_args(shape, n_cells, diameter, cluster_fraction, max_overlap)
    cells = _draw_cells(rng, _type_probs(type_mix), n_cells, (H, W), diameter)
    positions = place_cells(
        cells, (H, W), rng, cluster_fraction, max_overlap, progress=progress, edge_fraction=0.45 if edge_cells else 0.0
    )
    placed = [(cells[i], top, left) for i, top, left in positions]
    stain = _stain(rng) * style_od
    tint = _BG_TINT * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    tint = np.clip(tint, 0.8, 0.99) * style_bg
    illum = _background(rng, (H, W), tint)
    instances = paint_instances([(c.mask, t, l) for c, t, l in placed], (H, W))
    od, coverage, kept_types, rows = _render_cells(placed, rng, stain, (H, W), progress)
    blur_s = float(rng.uniform(0.6, 1.4)) if blur is None else float(blur)
    noise_s = float(rng.uniform(1.5, 4.0)) if noise is None else float(noise)
    image = _finish(od, illum, rng, blur_s, noise_s, rgb)

    name = image_name or (f"simulated_seed{seed}.png" if seed is not None else "simulated.png")
    return _with_ground_truth(image, instances, coverage, kept_types, rows, seed, name)


def _with_ground_truth(image, instances, coverage, kept_types, rows, seed, name: str) -> SimulatedSmear:
    """The smear with its ground truth once (almost) hidden cells are dropped: cell types,
    connected regions and their table, and the per-cell table with drawn centre and diameter."""
    instances, kept_types, rows = _drop_hidden(instances, kept_types, rows)
    cell_types = np.asarray(kept_types, dtype=np.int64)
    region_labels, regions = regions_from_instances(instances, cell_types, name)
    cells = cell_table(instances, region_labels, cell_types)
    cells["x"] = np.array([r[2] for r in rows], float)
    cells["y"] = np.array([r[3] for r in rows], float)
    cells["diameter"] = np.array([r[4] for r in rows], float)
    return SimulatedSmear(
        image=image,
        instances=instances,
        cell_types=cell_types,
        region_labels=region_labels,
        regions=regions,
        cells=cells,
        seed=seed,
        name=name,
        coverage=coverage,
    )


# --------------------------------------------------------------------------------------
# Single cell
# --------------------------------------------------------------------------------------
def simulate_cell(
    type_name: str | int,
    diameter: float,
    rng: np.random.Generator | int | None = None,
    *,
    rgb: bool = True,
    margin: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """One cell centred on a background patch, like a single-cell crop.

    Returns ``(patch uint8 (h, w, 3) -- or (h, w) with rgb=False, mask bool (h, w))``.
    ``type_name`` accepts a key of RBC_TYPES, its display label, or a Xu et al. folder name.
    """
    img, mask, _ = simulate_cell_details(type_name, diameter, rng, rgb=rgb, margin=margin)
    return img, mask


def simulate_cell_details(
    type_name: str | int,
    diameter: float,
    rng: np.random.Generator | int | None = None,
    *,
    rgb: bool = True,
    margin: float = 0.12,
) -> tuple[np.ndarray, np.ndarray, str]:
    """:func:`simulate_cell` plus the Xu et al. folder name of the drawn variant."""
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    ti = resolve_type(type_name)
    cell = _make_cell(ti, float(diameter), rng)
    cod, _ = _cell_od(cell, rng, _stain(rng))
    # crop to the cell's bounding box plus a margin
    ys, xs = np.nonzero(cell.mask)
    m = max(2, int(round(margin * diameter)))
    pad = ((m, m), (m, m))
    mask = np.pad(cell.mask, pad)[ys.min() : ys.max() + 1 + 2 * m, xs.min() : xs.max() + 1 + 2 * m]
    cod = np.pad(cod, pad + ((0, 0),))[ys.min() : ys.max() + 1 + 2 * m, xs.min() : xs.max() + 1 + 2 * m]
    tint = np.clip(np.array([0.93, 0.90, 0.92], np.float32) * rng.uniform(0.96, 1.04, 3).astype(np.float32), 0.8, 0.99)
    illum = np.broadcast_to(tint, cod.shape).astype(np.float32)
    img = _finish(cod, illum, rng, float(rng.uniform(0.5, 1.0)), float(rng.uniform(1.0, 3.0)), rgb)
    return img, mask, _variant(cell)
