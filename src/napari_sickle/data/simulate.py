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
# blue -> pink-red cells; methylene-blue reticulum absorbs red -> blue; granules purple-black.
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
_RETIC_OD = np.array([0.95, 0.55, 0.12], np.float32)
_GRANULE_OD = np.array([0.95, 1.10, 0.70], np.float32)


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
# Single-cell geometry and appearance
# --------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------
# Which cells touch (also used by the tests)
# --------------------------------------------------------------------------------------
def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i < j) of instance ids that touch or overlap.

    Two cells touch when cell i dilated by one pixel (3x3, 8-connectivity) meets cell j,
    i.e. some pixel of i is an 8-neighbour of a pixel of j. Overlapping cells share a border
    in the top-wins instance map, so they count as touching too.
    """
    lab = np.asarray(instances)
    pairs = set()
    H, W = lab.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = lab[0 : H - dy, max(0, -dx) : W - max(0, dx)]
        b = lab[dy:H, max(0, dx) : W - max(0, -dx)]
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            u = np.unique(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], 1), axis=0)
            pairs.update((int(i), int(j)) for i, j in u)
    return pairs


def touching_cells(instances: np.ndarray) -> np.ndarray:
    """Sorted ids of cells that touch or overlap at least one other cell."""
    pairs = touching_pairs(instances)
    ids = {i for pr in pairs for i in pr}
    return np.array(sorted(ids), dtype=np.int64)


def cell_table(instances: np.ndarray, region_labels: np.ndarray, cell_types) -> pd.DataFrame:
    """Per-cell table: ``cell_id, type, region_id, x_min, y_min, x_max, y_max, area`` of the
    visible (top-wins) pixels of each cell."""
    from skimage.measure import regionprops_table

    cell_types = np.asarray(cell_types, dtype=np.int64)
    n = len(cell_types)
    props = regionprops_table(instances, properties=("label", "bbox", "area"))
    lab = np.asarray(props["label"], dtype=np.int64)
    flat = np.flatnonzero(instances)
    reg = np.zeros(n + 1, np.int64)
    reg[instances.ravel()[flat]] = region_labels.ravel()[flat]
    return pd.DataFrame(
        {
            "cell_id": lab,
            "type": [RBC_TYPES[int(cell_types[i - 1])] for i in lab],
            "region_id": reg[lab],
            "x_min": np.asarray(props["bbox-1"], np.int64),
            "y_min": np.asarray(props["bbox-0"], np.int64),
            "x_max": np.asarray(props["bbox-3"], np.int64),
            "y_max": np.asarray(props["bbox-2"], np.int64),
            "area": np.asarray(props["area"], np.int64),
        }
    )


def regions_from_instances(
    instances: np.ndarray, cell_types: Sequence[int], image_name: str = "simulated.png"
) -> tuple[np.ndarray, pd.DataFrame]:
    """Connected regions of cell pixels and their regions-CSV table.

    Returns ``(region_labels int32, DataFrame)``; each region's six type columns are the
    union of the types of the cells whose pixels lie in it.
    """
    from skimage.measure import label, regionprops

    instances = np.asarray(instances)
    cell_types = np.asarray(cell_types, dtype=np.int64)
    region_labels = label(instances > 0).astype(np.int32)
    n_regions = int(region_labels.max())
    fg = instances > 0
    rl = region_labels[fg].astype(np.int64)
    inst = instances[fg].astype(np.int64)
    pairs = np.unique(rl * (int(instances.max()) + 1) + inst)
    pr = pairs // (int(instances.max()) + 1)
    pc = pairs % (int(instances.max()) + 1)
    types = np.zeros((n_regions + 1, len(RBC_TYPES)), np.int64)
    types[pr, cell_types[pc - 1]] = 1
    n_cells = np.bincount(pr, minlength=n_regions + 1)
    rows = []
    for rp in regionprops(region_labels):
        r0, c0, r1, c1 = rp.bbox
        rows.append((image_name, int(rp.label), int(c0), int(r0), int(c1), int(r1)))
    df = pd.DataFrame(rows, columns=["image", "region_id", "x_min", "y_min", "x_max", "y_max"])
    ids = df["region_id"].to_numpy(dtype=np.int64)
    for k, t in enumerate(RBC_TYPES):
        df[t] = types[ids, k] if len(ids) else np.zeros(0, np.int64)
    df["n_cells"] = n_cells[ids] if len(ids) else np.zeros(0, np.int64)
    df["label"] = (
        ["+".join(RBC_TYPE_LABELS[t] for t in RBC_TYPES if row[t]) for _, row in df.iterrows()] if len(df) else []
    )
    return region_labels, df


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
    if len(shape) != 2 or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (height, width) with positive sizes, got {shape}")
    H, W = int(shape[0]), int(shape[1])
    if n_cells is not None and int(n_cells) < 0:
        raise ValueError(f"n_cells must be >= 0, got {n_cells}")
    if not 4 <= float(diameter[0]) <= float(diameter[1]):
        raise ValueError(f"diameter must be (min, max) with 4 <= min <= max, got {diameter}")
    if not 0 <= cluster_fraction <= 1 or not 0 <= max_overlap < 1:
        raise ValueError("cluster_fraction must be in [0, 1] and max_overlap in [0, 1)")
    probs = _type_probs(type_mix)
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

    cells = [_make_cell(int(types[i]), float(diam[i]), rng) for i in range(n_cells)]
    positions = place_cells(
        cells, (H, W), rng, cluster_fraction, max_overlap, progress=progress, edge_fraction=0.45 if edge_cells else 0.0
    )
    placed = [(cells[i], top, left) for i, top, left in positions]

    # ---- render ------------------------------------------------------------------------
    stain = _stain(rng) * style_od
    tint = _BG_TINT * rng.uniform(0.96, 1.04, size=3).astype(np.float32)
    tint = np.clip(tint, 0.8, 0.99) * style_bg
    illum = _background(rng, (H, W), tint)
    od = np.zeros((H, W, 3), np.float32)
    instances = paint_instances([(c.mask, t, l) for c, t, l in placed], (H, W))
    coverage = np.zeros((H, W), np.uint8)
    kept_types, rows = [], []
    for k, (cell, top, left) in enumerate(placed):
        cell_stain = stain * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
        cod, alpha = _cell_od(cell, rng, cell_stain)
        paste_add(od, cod, top, left)
        paste_add(coverage, cell.mask.astype(np.uint8), top, left)
        kept_types.append(cell.type_index)
        rows.append((k + 1, RBC_TYPES[cell.type_index], left + cell.cx, top + cell.cy, 2 * cell.radius))
        if progress is not None and (k % 20 == 0 or k == len(placed) - 1):
            progress("render cells", k + 1, len(placed))
    blur_s = float(rng.uniform(0.6, 1.4)) if blur is None else float(blur)
    noise_s = float(rng.uniform(1.5, 4.0)) if noise is None else float(noise)
    image = _finish(od, illum, rng, blur_s, noise_s, rgb)

    instances, kept_types, rows = _drop_hidden(instances, kept_types, rows)
    cell_types = np.asarray(kept_types, dtype=np.int64)
    name = image_name or (f"simulated_seed{seed}.png" if seed is not None else "simulated.png")
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


def _clip(top: int, left: int, h: int, w: int, H: int, W: int):
    """(image slices, patch slices) of the overlap of a patch at (top, left) with an image."""
    y0, x0 = max(0, top), max(0, left)
    y1, x1 = min(H, top + h), min(W, left + w)
    if y0 >= y1 or x0 >= x1:
        return None
    return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))


def paste_add(dst: np.ndarray, src: np.ndarray, top: int, left: int) -> None:
    """``dst[top:top+h, left:left+w] += src``, clipped to ``dst``."""
    c = _clip(top, left, src.shape[0], src.shape[1], dst.shape[0], dst.shape[1])
    if c is not None:
        dst[c[0]] += src[c[1]]


def place_cells(
    cells,
    shape,
    rng,
    cluster_fraction=0.3,
    max_overlap=0.2,
    gap=2,
    tries=40,
    progress=None,
    preplaced=(),
    edge_fraction: float = 0.0,
):
    """Place cell masks on an (H, W) image; returns ``[(index, top, left), ...]`` in order.

    Each item of ``cells`` needs ``mask`` (bool, local), ``cy``, ``cx`` (centre in the local
    patch) and ``radius``. With probability ``cluster_fraction`` a cell is pushed against a
    randomly chosen placed cell until it touches it (shares a 4-connected border) and, half
    of the time, further until it overlaps it; it never covers more than ``max_overlap`` of
    its own or another cell's area. Otherwise it goes to a free spot at least ``gap`` px
    from every other cell. Cells that fit nowhere are left out. ``preplaced`` lists
    ``(index, top, left)`` positions fixed in advance.

    ``edge_fraction`` > 0 lets cells run off the image edge (as in real fields of view) by
    up to that fraction of their patch size; ``top``/``left`` may then be negative. A cell
    cut by the edge keeps at least 40% of its area in one 4-connected piece.
    """
    H, W = int(shape[0]), int(shape[1])
    P = 0
    if edge_fraction > 0 and len(cells):
        P = int(max(max(c.mask.shape) for c in cells) * edge_fraction) + 2
    occupancy = np.zeros((H + 2 * P, W + 2 * P), bool)  # padded canvas, image at [P:P+H, P:P+W]
    placed: list = []  # (cell, top, left) in padded coordinates
    out = []
    fixed = set()
    for i, top, left in preplaced:
        m = cells[i].mask
        occupancy[top + P : top + P + m.shape[0], left + P : left + P + m.shape[1]] |= m
        placed.append((cells[i], top + P, left + P))
        out.append((i, top, left))
        fixed.add(i)
    foot = np.ones((2 * gap + 1, 2 * gap + 1), bool)

    def visible_ok(mask, top, left):  # padded coordinates
        h, w = mask.shape
        if P == 0:
            return top >= 0 and left >= 0 and top + h <= H and left + w <= W
        if top < 0 or left < 0 or top + h > H + 2 * P or left + w > W + 2 * P:
            return False
        c = _clip(top - P, left - P, h, w, H, W)
        if c is None:
            return False
        vis = mask[c[1]]
        if vis.sum() == mask.sum():
            return True
        if vis.sum() < 0.4 * mask.sum():
            return False
        return ndi.label(vis)[1] == 1

    for i, cell in enumerate(cells):
        if i in fixed:
            continue
        h, w = cell.mask.shape
        pos = None
        if placed and rng.random() < cluster_fraction:
            pos = _place_touching(cell, placed, occupancy, rng, max_overlap, visible_ok)
        if pos is None:
            dil = ndi.binary_dilation(cell.mask, foot)
            lo_y, hi_y = (P - int(edge_fraction * h), P + H - h + int(edge_fraction * h)) if P else (0, H - h)
            lo_x, hi_x = (P - int(edge_fraction * w), P + W - w + int(edge_fraction * w)) if P else (0, W - w)
            if hi_y >= lo_y and hi_x >= lo_x:
                for _ in range(tries):
                    top = int(rng.integers(lo_y, hi_y + 1))
                    left = int(rng.integers(lo_x, hi_x + 1))
                    if not visible_ok(cell.mask, top, left):
                        continue
                    if not (occupancy[top : top + h, left : left + w] & dil).any():
                        pos = (top, left)
                        break
        if pos is not None:
            top, left = pos
            occupancy[top : top + h, left : left + w] |= cell.mask
            placed.append((cell, top, left))
            out.append((i, top - P, left - P))
        if progress is not None and (i % 20 == 0 or i == len(cells) - 1):
            progress("place cells", i + 1, len(cells))
    return out


def paint_instances(items, shape) -> np.ndarray:
    """Instance image from ``[(mask, top, left), ...]``; later items are on top (ids 1..N).

    Diagonal-only contacts between cell pixels are bridged with one pixel so that connected
    regions are the same under 4- and 8-connectivity (readers may use either).
    """
    inst = np.zeros(shape, np.int32)
    for k, (mask, top, left) in enumerate(items):
        c = _clip(top, left, mask.shape[0], mask.shape[1], shape[0], shape[1])
        if c is not None:
            inst[c[0]][mask[c[1]]] = k + 1
    return _merge_fragments(_bridge_diagonals(inst))


def _merge_fragments(inst: np.ndarray) -> np.ndarray:
    """Give each cell one 4-connected piece: occlusion can cut a cell's visible part into
    pieces (e.g. spike tips beyond an overlapping cell); the smaller pieces go to the cell
    that surrounds them most."""
    for k, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        sl = tuple(slice(max(0, s.start - 1), s.stop + 1) for s in sl)
        sub = inst[sl]
        lab, n = ndi.label(sub == k)
        if n <= 1:
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        main = int(sizes.argmax())
        for j in range(1, n + 1):
            if j == main:
                continue
            frag = lab == j
            ring = ndi.binary_dilation(frag) & ~frag
            nb = sub[ring]
            nb = nb[(nb > 0) & (nb != k)]
            if len(nb):
                sub[frag] = np.bincount(nb).argmax()
    return inst


def _bridge_diagonals(inst: np.ndarray) -> np.ndarray:
    for _ in range(10):
        fg = inst > 0
        a, b, c, d = fg[:-1, :-1], fg[:-1, 1:], fg[1:, :-1], fg[1:, 1:]
        diag = a & d & ~b & ~c  # pixels (y,x) and (y+1,x+1)
        anti = b & c & ~a & ~d  # pixels (y,x+1) and (y+1,x)
        if not (diag.any() or anti.any()):
            break
        ys, xs = np.nonzero(diag)
        inst[ys, xs + 1] = inst[ys, xs]  # fill the upper-right gap pixel
        ys, xs = np.nonzero(anti)
        inst[ys, xs] = inst[ys, xs + 1]  # fill the upper-left gap pixel
    return inst


def _place_touching(cell, placed, occupancy, rng, max_overlap: float, visible_ok):
    """Position (top, left) where the cell touches/overlaps an existing cell, or None."""
    H, W = occupancy.shape
    h, w = cell.mask.shape
    area = int(cell.mask.sum())
    ring = ndi.binary_dilation(cell.mask)  # 4-connected one-pixel ring
    for _ in range(6):
        other, otop, oleft = placed[int(rng.integers(len(placed)))]
        ocy, ocx = otop + other.cy, oleft + other.cx
        theta = rng.uniform(0, 2 * np.pi)
        dirv = np.array([np.sin(theta), np.cos(theta)])
        d = (cell.radius + other.radius) * 1.3
        want_overlap = rng.random() < 0.5
        extra = int(rng.integers(1, max(2, int(0.35 * cell.radius)))) if want_overlap else 0
        touched_at = None
        while d > 0.2 * (cell.radius + other.radius):
            cy, cx = ocy + dirv[0] * d, ocx + dirv[1] * d
            top, left = int(round(cy - cell.cy)), int(round(cx - cell.cx))
            if not visible_ok(cell.mask, top, left):
                break
            sub = occupancy[top : top + h, left : left + w]
            ov = int((sub & cell.mask).sum())
            if ov > max_overlap * area:
                break
            if touched_at is None and (sub & ring).any():
                touched_at = d
            if touched_at is not None and touched_at - d >= extra:
                if _others_ok(top, left, cell.mask, max_overlap, placed):
                    return top, left
                break
            d -= 1.0
    return None


def _others_ok(top, left, mask, max_overlap, placed) -> bool:
    """The new cell may not cover more than max_overlap of any already placed cell."""
    h, w = mask.shape
    for cell, ot, ol in placed:
        oh, ow = cell.mask.shape
        y0, y1 = max(top, ot), min(top + h, ot + oh)
        x0, x1 = max(left, ol), min(left + w, ol + ow)
        if y0 >= y1 or x0 >= x1:
            continue
        a = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        b = cell.mask[y0 - ot : y1 - ot, x0 - ol : x1 - ol]
        if int((a & b).sum()) > max_overlap * cell.mask.sum():
            return False
    return True


def _drop_hidden(instances, kept_types, rows, min_pixels: int = 30):
    """Remove cells that ended up (almost) hidden and renumber ids 1..N contiguously.

    The few visible pixels of a removed cell go to the neighbouring cell that covers it, so
    the mask still covers every drawn cell pixel."""
    n = len(kept_types)
    counts = np.bincount(instances.ravel(), minlength=n + 1)
    keep = counts[1 : n + 1] >= min_pixels
    if keep.all():
        return instances, kept_types, rows
    objs = ndi.find_objects(instances, max_label=n)
    for k in np.flatnonzero(~keep) + 1:
        sl = objs[k - 1]
        if sl is None:
            continue
        sl = tuple(slice(max(0, q.start - 1), q.stop + 1) for q in sl)
        sub = instances[sl]
        own = sub == k
        nb = sub[ndi.binary_dilation(own) & ~own]
        nb = nb[(nb > 0) & (nb != k) & keep[np.maximum(nb, 1) - 1]]
        sub[own] = np.bincount(nb).argmax() if len(nb) else 0
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    instances = lut[instances]
    kept_types = [t for t, k in zip(kept_types, keep) if k]
    rows = [(int(lut[r[0]]),) + tuple(r[1:]) for r, k in zip(rows, keep) if k]
    return instances, kept_types, rows


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
