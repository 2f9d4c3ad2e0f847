"""Multi-cell training data from single-cell crops.

Most labs have single-cell annotations only, but classifying multi-cell regions needs
multi-cell training data. This module turns class folders of single-cell crops (e.g. the
Xu et al. 2017 ``sickle-rbc`` set) into

* multi-label **patches** of 1-4 touching/overlapping cells with their type sets
  (:func:`compose_patches`; a patch is the bounding region of its cells, ready to be
  resized to 224x224), and
* whole **smears** with instance masks, per-cell types and connected-region boxes with
  multi-label type sets (:func:`compose_smear`, returns a
  :class:`~napari_sickle.data.simulate.SimulatedSmear`).

How: each crop is segmented (:func:`segment_crop`: deviation from the crop's border
background, hysteresis threshold, closing, hole filling, the component at the centre, the
edge refined to 40% of the cell's contrast). A cell is
converted to optical density relative to its own crop's background,
``OD = -log(I / I_bg)``, inside its (soft) mask only, so neighbouring cell fragments and
the crop's own background never travel with it. Cells are randomly flipped, rotated and
scaled, placed touching/overlapping (their ODs add, as absorbances do in brightfield), and
rendered on a background whose level and noise are estimated from the crops' borders, with
an illumination gradient. Only the class folder matters; file names are never used.

No Qt/napari imports here.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..constants import RBC_TYPES, XU_FOLDER_TO_TYPE
from .ground_truth import cell_table, regions_from_instances
from .placement import paint_instances, paste_add, place_cells
from .simulate import SimulatedSmear, _background, _finish

__all__ = [
    "Crop",
    "CropList",
    "segment_crop",
    "load_crops",
    "crops_from_arrays",
    "compose_patches",
    "compose_smear",
]


@dataclass
class Crop:
    """One single-cell crop: RGB image, its segmented cell mask, type and source file."""

    image: np.ndarray  # (h, w, 3) uint8
    mask: np.ndarray  # (h, w) bool
    type_index: int  # index into RBC_TYPES
    path: str = ""
    background: np.ndarray = field(default=None, repr=False)  # (3,) float, border median
    noise: float = 0.0  # robust std of the border (grey levels)

    def __post_init__(self):
        if self.background is None:
            self.background, self.noise = _border_stats(self.image, self.mask)

    @property
    def type_name(self) -> str:
        return RBC_TYPES[self.type_index]


class CropList(list):
    """A list of :class:`Crop` with ``skipped`` (unreadable files) and ``skipped_files``."""

    def __init__(self, *args):
        super().__init__(*args)
        self.skipped: int = 0
        self.skipped_files: list[str] = []


# --------------------------------------------------------------------------------------
# Segmentation of a single-cell crop
# --------------------------------------------------------------------------------------
def _border(img: np.ndarray, width: int = 2) -> np.ndarray:
    h, w = img.shape[:2]
    sel = np.zeros((h, w), bool)
    sel[:width] = sel[-width:] = True
    sel[:, :width] = sel[:, -width:] = True
    return sel


def _border_stats(image: np.ndarray, mask: np.ndarray | None = None):
    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None].repeat(3, axis=2)
    sel = _border(img)
    if mask is not None:
        far = ~ndi.binary_dilation(mask, iterations=3)
        if (far & sel).sum() >= 8:
            sel = sel & far
        elif far.sum() >= 8:
            sel = far
    vals = img[sel]
    bg = np.median(vals, axis=0)
    mad = np.median(np.abs(vals - bg), axis=0).mean() * 1.4826
    return bg.astype(np.float32), float(mad)


def segment_crop(image: np.ndarray, min_fraction: float = 0.2) -> np.ndarray:
    """Cell mask of a single-cell crop (the cell is the object at the centre).

    Works for filled (stained, darker than background) cells and for outline-style cells
    (dark rim and bright halo, interior close to the background, as in the Xu et al.
    crops). The deviation of each (lightly smoothed) pixel from the border background is
    thresholded with hysteresis (high = Otsu, low = border noise floor, so faint parts of
    an outline stay connected to strong ones), closed, hole-filled and opened; the
    component at (or nearest to) the centre is kept. A mask that is still an open outline
    (thin, and less than half of its convex hull) is replaced by its convex hull, and one smaller
    than ``min_fraction`` of the crop and thin or tiny (a faint cell found in pieces) by the convex hull of
    the pieces that do not touch the crop border.
    """
    from skimage.filters import apply_hysteresis_threshold, threshold_otsu
    from skimage.morphology import convex_hull_image, disk

    img = np.asarray(image, np.float32)
    if img.ndim == 2:
        img = img[..., None]
    img = img[..., :3]
    h, w = img.shape[:2]
    sm = ndi.gaussian_filter(img, sigma=(1.0, 1.0, 0))
    bg = np.median(sm[_border(sm)], axis=0)
    dev = np.abs(sm - bg).max(axis=2)
    bd = dev[_border(dev)]
    floor = float(np.median(bd) + 3 * 1.4826 * np.median(np.abs(bd - np.median(bd))) + 1.0)
    try:
        high = max(float(threshold_otsu(dev)), floor)
    except ValueError:  # constant image
        return np.zeros((h, w), bool)
    if dev.max() <= floor:
        return np.zeros((h, w), bool)
    fg = apply_hysteresis_threshold(dev, floor, high)
    fg = ndi.binary_closing(np.pad(fg, 4), disk(3))[4:-4, 4:-4]
    fg = ndi.binary_fill_holes(fg)
    fg = ndi.binary_opening(fg, disk(2))
    lab, n = ndi.label(fg)
    if n == 0:
        return np.zeros((h, w), bool)
    # the component nearest the centre (ties: the larger one)
    yy, xx = np.indices((h, w))
    d = np.hypot(yy - (h - 1) / 2, xx - (w - 1) / 2)
    sizes = np.bincount(lab.ravel())
    mind = ndi.minimum(d, lab, index=np.arange(1, n + 1))
    best = int(np.argmin(np.asarray(mind) - 0.01 * np.sqrt(sizes[1:]))) + 1
    mask = lab == best
    hull = convex_hull_image(mask)
    if _thin(mask) and mask.sum() < 0.5 * hull.sum():
        mask = hull
    mask = _refine(img, mask)
    if mask.sum() < min_fraction * h * w and (_thin(mask) or mask.sum() < 0.05 * h * w):
        # a faint cell broken into pieces: the hull of the pieces off the crop border
        from skimage.segmentation import clear_border

        pieces = clear_border(apply_hysteresis_threshold(dev, floor, high))
        if pieces.sum() > mask.sum():
            mask = convex_hull_image(pieces)
    return mask


def _thin(mask: np.ndarray) -> bool:
    """An outline rather than a filled cell: little survives a 2 px erosion."""
    return bool(ndi.binary_erosion(mask, iterations=2).sum() < 0.25 * mask.sum())


def _refine(img: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """Move the boundary of a (generous) coarse mask to 40% of the cell's contrast.

    Hysteresis and closing above find the cell robustly but put its edge on the blur
    skirt (1-2 px outside); here the sharper deviation map (sigma 0.5) is thresholded at
    40% of its 90th percentile inside the coarse mask. Kept only if the refined mask is
    still a filled object (it covers 85% of the coarse mask eroded by 3 px), else the
    coarse one is (an outline that does not close at that level).
    """
    from skimage.morphology import disk

    sm = ndi.gaussian_filter(img, sigma=(0.5, 0.5, 0))
    bg = np.median(sm[_border(sm)], axis=0)
    dev = np.abs(sm - bg).max(axis=2)
    bd = dev[_border(dev)]
    floor = float(np.median(bd) + 3 * 1.4826 * np.median(np.abs(bd - np.median(bd))) + 1.0)
    thr = max(floor, 0.4 * float(np.percentile(dev[coarse], 90)))
    fine = ndi.binary_closing(np.pad(dev > thr, 2), disk(1))[2:-2, 2:-2]
    fine = ndi.binary_fill_holes(fine) & coarse
    lab, n = ndi.label(fine)
    if n == 0:
        return coarse
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    fine = lab == int(sizes.argmax())
    core = ndi.binary_erosion(coarse, iterations=3)
    if core.sum() >= 20:
        ok = (fine & core).sum() >= 0.85 * core.sum()
    else:
        ok = fine.sum() >= 0.75 * coarse.sum()
    return fine if ok else coarse


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------
def load_crops(root, mapping: Mapping[str, str] = XU_FOLDER_TO_TYPE, min_pixels: int = 50) -> CropList:
    """Read and segment every crop in the class folders of ``root``.

    ``mapping`` maps folder names to RBC types (default: the Xu et al. 2017 folders, see
    :data:`napari_sickle.constants.XU_FOLDER_TO_TYPE`); folders whose name is itself an RBC
    type key (``oval_disc`` ...) are accepted too, other folders are ignored with a
    warning. Unreadable images and crops whose segmentation finds no cell are skipped and
    counted (``result.skipped``, ``result.skipped_files``) with a warning.
    Raises :class:`napari_sickle.io.DatasetError` (a ValueError) if the folder does not
    exist or holds no usable crop.
    """
    from ..io.datasets import DatasetError
    from ..io.images import is_image_path, read_image, to_rgb_uint8

    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: crop folder does not exist")
    out = CropList()
    skipped: list[str] = []
    ignored = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        t = mapping.get(folder.name)
        if t is None and folder.name in RBC_TYPES:
            t = folder.name
        if t is None:
            ignored.append(folder.name)
            continue
        ti = RBC_TYPES.index(t)
        for f in sorted(folder.iterdir()):
            if not f.is_file() or f.name.startswith(".") or not is_image_path(f):
                continue
            try:
                img = to_rgb_uint8(read_image(f))
            except Exception:  # noqa: BLE001 -- unreadable files are skipped and counted
                skipped.append(str(f))
                continue
            mask = segment_crop(img)
            if mask.sum() < min_pixels:
                skipped.append(str(f))
                continue
            out.append(Crop(img, mask, ti, str(f)))
    if ignored:
        warnings.warn(f"{root}: ignored folder(s) not mapped to an RBC type: {ignored}", UserWarning, stacklevel=2)
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable or empty crop(s)", UserWarning, stacklevel=2)
    out.skipped = len(skipped)
    out.skipped_files = skipped
    if not out:
        raise DatasetError(
            f"{root}: no usable crops found in class folders (expected folders named like "
            f"{sorted(mapping)[:4]}... or {list(RBC_TYPES)[:2]}...)"
        )
    return out


def crops_from_arrays(items: Sequence[tuple[np.ndarray, int | str]], masks=None) -> CropList:
    """Crops from in-memory ``(image, type)`` pairs (segmented unless ``masks`` are given)."""
    from ..io.images import to_rgb_uint8
    from .simulate import resolve_type

    out = CropList()
    for k, (img, t) in enumerate(items):
        img = to_rgb_uint8(np.asarray(img))
        m = segment_crop(img) if masks is None else np.asarray(masks[k], bool)
        out.append(Crop(img, m, resolve_type(t), f"<array {k}>"))
    out.skipped, out.skipped_files = 0, []
    return out


# --------------------------------------------------------------------------------------
# Augmentation and placement
# --------------------------------------------------------------------------------------
@dataclass
class _Piece:
    """An augmented cell ready to be placed: OD patch, mask and geometry."""

    od: np.ndarray  # (h, w, 3) float32 absorbance relative to its crop background
    mask: np.ndarray  # (h, w) bool
    type_index: int
    cy: float
    cx: float
    radius: float


def _od_patch(crop: Crop) -> np.ndarray:
    """(h, w, 4) float32: the cell's OD (3 channels) and its mask, cropped to the mask's box
    plus 3 px. Cached on the crop."""
    cached = crop.__dict__.get("_od_patch")
    if cached is not None:
        return cached
    img = crop.image.astype(np.float32)
    bg = np.maximum(crop.background, 1.0)
    alpha = ndi.gaussian_filter(crop.mask.astype(np.float32), 0.8)
    alpha = np.maximum(alpha, crop.mask * 0.5)  # keep the rim inside the soft mask
    od = -np.log(np.clip((img + 0.5) / (bg + 0.5), 1e-3, 4.0)) * alpha[..., None]
    ys, xs = np.nonzero(crop.mask)
    m = 3
    y0, y1 = max(0, ys.min() - m), min(img.shape[0], ys.max() + 1 + m)
    x0, x1 = max(0, xs.min() - m), min(img.shape[1], xs.max() + 1 + m)
    out = np.concatenate([od[y0:y1, x0:x1], crop.mask[y0:y1, x0:x1, None].astype(np.float32)], axis=2)
    crop.__dict__["_od_patch"] = out
    return out


def _augment(crop: Crop, rng: np.random.Generator, scale=(0.85, 1.15), rotate: bool = True) -> _Piece:
    """Random flips, scale and rotation (one bilinear affine resampling of OD + mask)."""
    from .cell_shapes import _largest_component

    src = _od_patch(crop)
    if rng.random() < 0.5:
        src = src[:, ::-1]
    if rng.random() < 0.5:
        src = src[::-1]
    s = float(rng.uniform(*scale)) if scale else 1.0
    ang = float(rng.uniform(0, 2 * np.pi)) if rotate else 0.0
    h, w = src.shape[:2]
    c, sn = np.cos(ang), np.sin(ang)
    oh = int(np.ceil((abs(h * c) + abs(w * sn)) * s)) + 2
    ow = int(np.ceil((abs(h * sn) + abs(w * c)) * s)) + 2
    # output (y, x) -> input: R(-ang) (o - oc) / s + ic
    inv = np.array([[c, sn], [-sn, c]]) / s
    matrix = np.eye(3)
    matrix[:2, :2] = inv
    ic = np.array([(h - 1) / 2, (w - 1) / 2])
    oc = np.array([(oh - 1) / 2, (ow - 1) / 2])
    offset = np.zeros(3)
    offset[:2] = ic - inv @ oc
    res = ndi.affine_transform(
        np.ascontiguousarray(src), matrix, offset=offset, output_shape=(oh, ow, 4), order=1, mode="constant", cval=0.0
    )
    od, mask = res[..., :3], res[..., 3] > 0.5
    mask = _largest_component(ndi.binary_fill_holes(mask))
    ys, xs = np.nonzero(mask)
    area = float(mask.sum())
    return _Piece(od.astype(np.float32), mask, crop.type_index, ys.mean(), xs.mean(), np.sqrt(area / np.pi))


def _pick(crops: Sequence[Crop], rng, k: int, type_mix=None) -> list[Crop]:
    if type_mix is None:
        return [crops[int(i)] for i in rng.integers(0, len(crops), size=k)]
    from .simulate import _type_probs

    p = _type_probs(type_mix)
    by_type = {t: [c for c in crops if c.type_index == t] for t in range(len(RBC_TYPES))}
    avail = np.array([len(by_type[t]) > 0 for t in range(len(RBC_TYPES))])
    if not (p[avail] > 0).any():
        raise ValueError("type_mix asks only for types that have no crops")
    p = np.where(avail, p, 0)
    p = p / p.sum()
    ts = rng.choice(len(RBC_TYPES), size=k, p=p)
    return [by_type[t][int(rng.integers(len(by_type[t])))] for t in ts]


def _bg_level(crops: Sequence[Crop]) -> tuple[np.ndarray, float]:
    bgs = np.array([c.background for c in crops], np.float32)
    noise = float(np.median([c.noise for c in crops])) if crops else 2.0
    return np.median(bgs, axis=0), noise


# --------------------------------------------------------------------------------------
# Patches
# --------------------------------------------------------------------------------------
def compose_patches(
    crops: Sequence[Crop],
    n: int,
    seed: int = 0,
    max_cells: int = 4,
    *,
    min_cells: int = 1,
    max_overlap: float = 0.2,
    type_mix=None,
    margin: int = 4,
    return_masks: bool = False,
) -> list[tuple]:
    """``n`` multi-label patches of ``min_cells..max_cells`` touching/overlapping cells.

    Returns a list of ``(patch rgb uint8 (h, w, 3), types (6,) int 0/1, n_cells)``; with
    ``return_masks=True`` each item also carries the (h, w) int32 instance mask of the
    patch. All cells of a patch form one connected region (each new cell is pushed against
    one already placed until it touches it, and about half the time until it overlaps it);
    the patch is the bounding box of that region plus ``margin`` px.
    """
    if not crops:
        raise ValueError("compose_patches needs at least one crop")
    if not 1 <= min_cells <= max_cells:
        raise ValueError(f"need 1 <= min_cells <= max_cells, got {min_cells}, {max_cells}")
    rng = np.random.default_rng(seed)
    bg_all, noise_all = _bg_level(crops)
    out = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 20 * n + 100:
            raise RuntimeError(f"could not compose {n} connected patches from these crops ({len(out)} made)")
        k = int(rng.integers(min_cells, max_cells + 1))
        chosen = _pick(crops, rng, k, type_mix)
        pieces = [_augment(c, rng) for c in chosen]
        size = int(sum(max(p.mask.shape) for p in pieces) * 1.2) + 8
        shape = (size, size)
        # first cell in the middle, the others touching the cluster
        first = pieces[0]
        placed = [(0, (size - first.mask.shape[0]) // 2, (size - first.mask.shape[1]) // 2)]
        rest = place_cells(pieces, shape, rng, cluster_fraction=1.0, max_overlap=max_overlap, preplaced=placed)
        items = [(pieces[i], t, l) for i, t, l in rest]
        inst = paint_instances([(p.mask, t, l) for p, t, l in items], shape)
        regions = ndi.label(inst > 0)[1]
        if len(items) < k or regions != 1:
            continue  # a cell did not fit against the cluster: draw again
        od = np.zeros(shape + (3,), np.float32)
        for p, t, l in items:
            h, w = p.mask.shape
            od[t : t + h, l : l + w] += p.od
        ys, xs = np.nonzero(inst)
        mg = int(margin)
        y0, y1 = max(0, ys.min() - mg), min(size, ys.max() + 1 + mg)
        x0, x1 = max(0, xs.min() - mg), min(size, xs.max() + 1 + mg)
        od = od[y0:y1, x0:x1]
        inst = inst[y0:y1, x0:x1]
        tint = np.clip(bg_all / 255.0 * rng.uniform(0.97, 1.03, 3), 0.05, 1.0).astype(np.float32)
        illum = _background(rng, od.shape[:2], tint)
        img = _finish(od, illum, rng, blur=0.0, noise=max(0.5, noise_all * 0.5), rgb=True)
        # type set = union of the visible cells' types (placement keeps every cell visible)
        visible = [p.type_index for j, (p, _, _) in enumerate(items) if (inst == j + 1).any()]
        types = np.zeros(len(RBC_TYPES), np.int64)
        types[visible] = 1
        item = (img, types, len(visible))
        out.append(item + (inst,) if return_masks else item)
    return out


# --------------------------------------------------------------------------------------
# Smears
# --------------------------------------------------------------------------------------
def compose_smear(
    crops: Sequence[Crop],
    seed: int = 0,
    shape: tuple[int, int] = (1080, 1920),
    n_cells: int | None = None,
    *,
    cluster_fraction: float = 0.3,
    max_overlap: float = 0.2,
    edge_cells: bool = True,
    type_mix=None,
    scale: tuple[float, float] = (0.85, 1.15),
    coverage: float = 0.3,
    image_name: str | None = None,
    progress=None,
) -> SimulatedSmear:
    """A whole smear built from real crops, with the same ground truth as ``simulate_smear``.

    ``n_cells`` defaults to the number of cells that cover about ``coverage`` of the image
    (at least 150 on a 1920x1080 smear of 45-85 px cells). Crops are drawn uniformly (the
    folder's own type mix) unless ``type_mix`` is given. ``edge_cells`` lets cells run off
    the image edge, as in :func:`~napari_sickle.data.simulate.simulate_smear`.
    """
    if not crops:
        raise ValueError("compose_smear needs at least one crop")
    rng = np.random.default_rng(seed)
    H, W = int(shape[0]), int(shape[1])
    if n_cells is None:
        mean_area = float(np.mean([c.mask.sum() for c in crops]))
        n_cells = int(round(coverage * H * W / max(mean_area, 1.0)))
        n_cells = int(np.clip(n_cells, 1, 400 * (H * W) / (1080 * 1920) + 1))
    chosen = _pick(crops, rng, int(n_cells), type_mix)
    pieces = [_augment(c, rng, scale=scale) for c in chosen]
    pos = place_cells(
        pieces, (H, W), rng, cluster_fraction, max_overlap, progress=progress, edge_fraction=0.45 if edge_cells else 0.0
    )
    items = [(pieces[i], t, l) for i, t, l in pos]
    instances = paint_instances([(p.mask, t, l) for p, t, l in items], (H, W))
    od = np.zeros((H, W, 3), np.float32)
    coverage = np.zeros((H, W), np.uint8)
    for p, t, l in items:
        paste_add(od, p.od, t, l)
        paste_add(coverage, p.mask.astype(np.uint8), t, l)
    bg, noise = _bg_level(crops)
    tint = np.clip(bg / 255.0 * rng.uniform(0.97, 1.03, 3), 0.05, 1.0).astype(np.float32)
    illum = _background(rng, (H, W), tint)
    image = _finish(od, illum, rng, blur=float(rng.uniform(0.0, 0.5)), noise=max(0.5, noise * 0.7), rgb=True)
    from .ground_truth import _drop_hidden

    kept = [p.type_index for p, _, _ in items]
    rows = [(k + 1, RBC_TYPES[p.type_index], l + p.cx, t + p.cy, 2 * p.radius) for k, (p, t, l) in enumerate(items)]
    instances, kept, rows = _drop_hidden(instances, kept, rows)
    cell_types = np.asarray(kept, dtype=np.int64)
    name = image_name or f"composed_seed{seed}.png"
    region_labels, regions = regions_from_instances(instances, cell_types, name)
    cells = cell_table(instances, region_labels, cell_types)
    cells["x"] = np.array([r[2] for r in rows], float)
    cells["y"] = np.array([r[3] for r in rows], float)
    cells["diameter"] = np.array([r[4] for r in rows], float)  # equivalent diameter as placed
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


def compose_occluded(
    crops: Sequence[Crop],
    n: int,
    seed: int = 0,
    max_cells: int = 4,
    *,
    min_cells: int = 2,
    min_visible: float = 0.6,
    margin: int = 4,
    scale=(0.85, 1.15),
    return_masks: bool = False,
) -> list[tuple]:
    """``n`` patches of ``min_cells..max_cells`` cells stacked on top of each other.

    A second placement and blending model next to :func:`compose_patches` (whose cells are
    pushed until they touch and whose absorbances add, overlapping at most 20%): here each
    new cell is put at a random distance of 0.45-1.0 times the sum of the radii from a random
    placed cell and painted *over* what is there (opaque, soft edge), so cells hide parts of
    each other; a placement is kept only if every cell keeps at least ``min_visible`` of its
    area visible. Returns ``(patch rgb uint8, types (6,) int 0/1, n_cells)`` like
    :func:`compose_patches`; with ``return_masks=True`` each item also carries the (h, w)
    int32 mask of the visible part of each cell (1..n_cells, the top cell where they overlap)."""
    rng = np.random.default_rng(seed)
    bg_all, noise_all = _bg_level(crops)
    out = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 50 * n + 100:
            raise RuntimeError(f"could not compose {n} occluded patches ({len(out)} made)")
        k = int(rng.integers(min_cells, max_cells + 1))
        pieces = [_augment(c, rng, scale=scale) for c in _pick(crops, rng, k, None)]
        size = int(sum(max(p.mask.shape) for p in pieces) * 2) + 8
        owner = np.zeros((size, size), np.int32)  # which cell is on top (0: none)
        od = np.zeros((size, size, 3), np.float32)
        centres = []
        ok = True
        for j, p in enumerate(pieces):
            h, w = p.mask.shape
            if j == 0:
                cy, cx = size / 2, size / 2
            else:
                i = int(rng.integers(len(centres)))
                d = float(rng.uniform(0.45, 1.0)) * (pieces[i].radius + p.radius)
                a = float(rng.uniform(0, 2 * np.pi))
                cy, cx = centres[i][0] + d * np.sin(a), centres[i][1] + d * np.cos(a)
            top, left = int(round(cy - p.cy)), int(round(cx - p.cx))
            if top < 0 or left < 0 or top + h > size or left + w > size:
                ok = False
                break
            trial = owner.copy()
            sub = trial[top : top + h, left : left + w]
            sub[p.mask] = j + 1
            areas = np.array([pp.mask.sum() for pp in pieces[: j + 1]], np.float64)
            vis = np.bincount(trial.ravel(), minlength=j + 2)[1 : j + 2]
            if (vis < min_visible * areas).any() or (j and ndi.label(trial > 0)[1] != 1):
                ok = False
                break
            owner = trial
            soft = ndi.gaussian_filter(p.mask.astype(np.float32), 0.7)[..., None]
            od[top : top + h, left : left + w] = od[top : top + h, left : left + w] * (1 - soft) + p.od * soft
            centres.append((cy, cx))
        if not ok:
            continue
        ys, xs = np.nonzero(owner)
        y0, y1 = max(0, ys.min() - margin), min(size, ys.max() + 1 + margin)
        x0, x1 = max(0, xs.min() - margin), min(size, xs.max() + 1 + margin)
        od_c = od[y0:y1, x0:x1]
        tint = np.clip(bg_all / 255.0 * rng.uniform(0.97, 1.03, 3), 0.05, 1.0).astype(np.float32)
        img = _finish(
            od_c, _background(rng, od_c.shape[:2], tint), rng, blur=0.0, noise=max(0.5, noise_all * 0.5), rgb=True
        )
        types = np.zeros(len(RBC_TYPES), np.int64)
        types[[p.type_index for p in pieces]] = 1
        item = (img, types, len(pieces))
        out.append(item + (owner[y0:y1, x0:x1].copy(),) if return_masks else item)
    return out
