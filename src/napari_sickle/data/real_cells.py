"""Real single cells for the default RBC classifier: Xu et al. crops and Chula RBC-12 cells.

* **Xu et al. 2017** (``sickle-rbc``): grayscale single-cell crops in class folders, file
  prefix = patient. Folders map onto the six types with ``constants.XU_FOLDER_TO_TYPE``.
  Validation split *by patient*: the patients in :data:`XU_VAL_PATIENTS` are validation,
  every other patient is training.
* **Chula RBC-12** (``chula-rbc12``): Wright-stained colour smears with one point label
  (``x y class_id``) per red cell. Five of its 13 classes have a counterpart among the six
  types (:data:`CHULA_TO_TYPE`: normal and ovalocyte -> Oval/Disc, elliptocyte ->
  Elongated/Sickle, stomatocyte -> Stomatocyte, burr cell -> Echinocyte). The other eight
  (macrocyte, microcyte, spherocyte, target cell, teardrop, schistocyte, uncategorised,
  hypochromia) are **left out of training** (:func:`chula_type` returns None): none of the
  six heads may be set for them, and "no type" would teach the heads that round cells which
  look like discocytes (spherocytes, macro-/microcytes, hypochromic cells) are not Oval/Disc;
  as "abnormal" rows for the gradient-boosting model they would force it to call abnormal
  regions whose six outputs look normal, which costs the normal-cell specificity. They are
  only reported (fraction called abnormal) by ``benchmarks/bench_real_classifier.py``.
  Validation split *by image*: image ``<n>.jpg`` is validation when ``n % 5 == 0``.

Each Chula cell is cut from its smear with a marker watershed of the smear's foreground
(every labelled point is a marker, so neighbours get their own territory); the crop is the
cell's box plus a margin, with the pixels of every other cell painted over with the smear's
background colour, i.e. a single-cell crop like the Xu ones.
No Qt/napari imports here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..constants import RBC_TYPES

#: Chula RBC-12 class ids -> names (Naruenatthanaset et al. 2021)
CHULA_CLASSES: dict[int, str] = {
    0: "normal",
    1: "macrocyte",
    2: "microcyte",
    3: "spherocyte",
    4: "target cell",
    5: "stomatocyte",
    6: "ovalocyte",
    7: "teardrop",
    8: "burr cell",
    9: "schistocyte",
    10: "uncategorised",
    11: "hypochromia",
    12: "elliptocyte",
}
#: Chula classes with a counterpart among the six types; the others are unmapped (None)
CHULA_TO_TYPE: dict[int, str] = {
    0: "oval_disc",
    6: "oval_disc",
    12: "elongated_sickle",
    5: "stomatocyte",
    8: "echinocyte",
}
#: Xu et al. patients held out for validation (the rest train)
XU_VAL_PATIENTS: tuple[str, ...] = ("JH1766915",)
#: Chula image ``<n>`` is validation when ``n % CHULA_VAL_MOD == 0``
CHULA_VAL_MOD = 5


def chula_type(class_id: int) -> str | None:
    """The six-type name of a Chula class id, or None for a class without a counterpart."""
    return CHULA_TO_TYPE.get(int(class_id))


def chula_type_row(class_id: int) -> np.ndarray | None:
    """One-hot (6,) float32 type row of a Chula class, or None when it is unmapped."""
    t = chula_type(class_id)
    if t is None:
        return None
    y = np.zeros(len(RBC_TYPES), np.float32)
    y[RBC_TYPES.index(t)] = 1
    return y


def xu_patient(path) -> str:
    stem = Path(path).stem
    return stem.split("_")[0] if "_" in stem else stem


def xu_is_val(path) -> bool:
    """Validation rule of the Xu crops: by patient (:data:`XU_VAL_PATIENTS`)."""
    return xu_patient(path) in XU_VAL_PATIENTS


def chula_is_val(image_id) -> bool:
    """Validation rule of the Chula smears: by image, ``n % CHULA_VAL_MOD == 0``."""
    stem = Path(str(image_id)).stem
    return stem.isdigit() and int(stem) % CHULA_VAL_MOD == 0


def split_of(is_val: bool) -> str:
    return "val" if is_val else "train"


def read_chula_points(path) -> np.ndarray:
    """(n, 3) int64 ``x y class_id`` rows of a Chula label file (blank lines ignored)."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3:
            rows.append([int(float(parts[0])), int(float(parts[1])), int(float(parts[2]))])
    return np.asarray(rows, np.int64).reshape(-1, 3)


@dataclass
class RealCell:
    """One cell: crop (h, w, 3) uint8, its mask, source class, six-type row (None: unmapped)."""

    image: np.ndarray
    mask: np.ndarray
    class_name: str
    y: np.ndarray | None
    source: str  # "xu" | "chula"
    group: str  # patient (Xu) or image id (Chula)
    split: str  # "train" | "val"
    name: str = ""


def smear_cell_labels(rgb: np.ndarray, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell territories of a smear: (labels (H, W) int32, 0 background, ``k + 1`` for point
    ``k``; background colour (3,)). Foreground is Otsu on the grey level with holes filled;
    the watershed of its distance map from the labelled points splits touching cells."""
    from skimage.filters import threshold_otsu
    from skimage.segmentation import watershed

    gray = rgb.astype(np.float32).mean(axis=2)
    t = threshold_otsu(gray)
    fg = ndi.binary_opening(ndi.binary_fill_holes(gray < t), iterations=1)
    fg = ndi.binary_fill_holes(ndi.binary_closing(fg, iterations=2))
    bg_px = rgb[~ndi.binary_dilation(fg, iterations=3)]
    bg = np.median(bg_px.reshape(-1, 3), axis=0) if len(bg_px) else np.median(rgb.reshape(-1, 3), axis=0)
    H, W = gray.shape
    markers = np.zeros((H, W), np.int32)
    for k, (x, y, _c) in enumerate(points):
        markers[int(np.clip(y, 0, H - 1)), int(np.clip(x, 0, W - 1))] = k + 1
    dist = ndi.distance_transform_edt(fg)
    labels = watershed(-dist, markers, mask=fg | (markers > 0)).astype(np.int32)
    return labels, bg.astype(np.float32)


def cut_cell(rgb: np.ndarray, labels: np.ndarray, k: int, bg: np.ndarray, margin: int = 4):
    """The crop of cell ``k`` (label ``k + 1``) with its mask, other cells painted over with
    ``bg`` (soft edge); None when the territory is empty."""
    m = labels == k + 1
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    H, W = m.shape
    y0, y1 = max(0, ys.min() - margin), min(H, ys.max() + 1 + margin)
    x0, x1 = max(0, xs.min() - margin), min(W, xs.max() + 1 + margin)
    own = ndi.binary_dilation(m[y0:y1, x0:x1], iterations=1)
    alpha = ndi.gaussian_filter(own.astype(np.float32), 0.7)
    alpha = np.maximum(alpha, own * 0.6)
    sub = rgb[y0:y1, x0:x1].astype(np.float32)
    out = sub * alpha[..., None] + bg * (1 - alpha[..., None])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), m[y0:y1, x0:x1]


def chula_cells(
    root,
    *,
    split: str | None = None,
    mapped_only: bool = False,
    min_area_fraction: float = 0.3,
    max_area_fraction: float = 2.5,
    progress=None,
    images=None,
) -> list[RealCell]:
    """Single-cell crops of the labelled Chula cells (``split``: "train" / "val" / None for both).

    Cells whose territory is under ``min_area_fraction`` or over ``max_area_fraction`` of the
    smear's median cell area (a point off its cell, or a cell merged with unlabelled border
    cells) are skipped. ``mapped_only`` drops the unmapped classes; otherwise they come with
    ``y = None``."""
    from ..io.images import read_image, to_rgb_uint8

    root = Path(root)
    label_dir, img_dir = root / "Label", root / "Dataset"
    files = sorted(label_dir.glob("*.txt"), key=lambda p: (len(p.stem), p.stem))
    if images is not None:
        keep = {str(i) for i in images}
        files = [f for f in files if f.stem in keep]
    out: list[RealCell] = []
    for i, lf in enumerate(files):
        sp = split_of(chula_is_val(lf.stem))
        if split is not None and sp != split:
            continue
        pts = read_chula_points(lf)
        if mapped_only:
            if not any(chula_type(c) is not None for c in pts[:, 2]):
                continue
        img_path = next((p for p in (img_dir / f"{lf.stem}.jpg", img_dir / f"{lf.stem}.png") if p.exists()), None)
        if img_path is None or len(pts) == 0:
            continue
        rgb = to_rgb_uint8(read_image(img_path))
        labels, bg = smear_cell_labels(rgb, pts)
        areas = np.bincount(labels.ravel(), minlength=len(pts) + 1)[1:]
        med = float(np.median(areas[areas > 0])) if (areas > 0).any() else 0.0
        for k, (x, y, c) in enumerate(pts):
            yrow = chula_type_row(c)
            if mapped_only and yrow is None:
                continue
            if med <= 0 or not (min_area_fraction * med <= areas[k] <= max_area_fraction * med):
                continue
            cut = cut_cell(rgb, labels, k, bg)
            if cut is None:
                continue
            out.append(
                RealCell(
                    cut[0],
                    cut[1],
                    CHULA_CLASSES.get(int(c), str(c)),
                    yrow,
                    "chula",
                    lf.stem,
                    sp,
                    f"chula:{lf.stem}:{k}",
                )
            )
        if progress is not None:
            progress("chula", i + 1, len(files))
    return out


def xu_cells(root, *, split: str | None = None) -> list[RealCell]:
    """The Xu et al. crops (segmented as in ``data.compose.load_crops``) as :class:`RealCell`."""
    from .compose import load_crops

    out = []
    for c in load_crops(root):
        sp = split_of(xu_is_val(c.path))
        if split is not None and sp != split:
            continue
        y = np.zeros(len(RBC_TYPES), np.float32)
        y[c.type_index] = 1
        out.append(RealCell(c.image, c.mask, Path(c.path).parent.name, y, "xu", xu_patient(c.path), sp, c.path))
    return out


def to_crops(cells: list[RealCell]):
    """:class:`napari_sickle.data.compose.Crop` objects of mapped cells (for composing patches)."""
    from .compose import Crop, CropList

    out = CropList()
    for c in cells:
        if c.y is None:
            continue
        out.append(Crop(c.image, c.mask, int(np.argmax(c.y)), c.name))
    out.skipped, out.skipped_files = 0, []
    return out


# ------------------------------------------------------------------------------------------
# colour / stain augmentation
# ------------------------------------------------------------------------------------------
def stain_jitter(img: np.ndarray, rng: np.random.Generator, p_gray: float = 0.3, p_tint: float = 0.5) -> np.ndarray:
    """Random stain/colour change of an RGB uint8 image (H, W, 3) or a batch (N, H, W, 3).

    In optical density (``-log I/I_bg``, background = brightest percentile): per-channel gain
    (a gray image gets a random pink/purple stain tint with probability ``p_tint``), overall
    contrast and brightness; then, with probability ``p_gray``, conversion to grayscale. So
    gray crops look like stained smears and stained smears like gray ones."""
    x = img.astype(np.float32)
    bgv = np.percentile(x.reshape(-1, 3), 97, axis=0) + 1.0
    od = -np.log(np.clip((x + 1.0) / bgv, 1e-3, 1.5))
    is_gray = float(np.abs(x[..., 0] - x[..., 1]).mean() + np.abs(x[..., 1] - x[..., 2]).mean()) < 2.0
    if is_gray and rng.random() < p_tint:
        gain = np.array([rng.uniform(0.5, 0.9), rng.uniform(1.0, 1.6), rng.uniform(0.6, 1.1)], np.float32)
    else:
        gain = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    od = od * gain * rng.uniform(0.75, 1.3)
    bg_new = bgv * rng.uniform(0.85, 1.05) * rng.uniform(0.96, 1.04, 3)
    out = np.clip(bg_new * np.exp(-od) - 1.0, 0, 255)
    if rng.random() < p_gray:
        out = np.repeat(out.mean(axis=-1, keepdims=True), 3, axis=-1)
    return np.rint(out).astype(np.uint8)
