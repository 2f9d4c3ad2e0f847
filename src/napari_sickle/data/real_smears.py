"""Real blood smears from several public sources as detection data (one class, "cell region").

``load_real_smears(root)`` reads the training or validation part of the folders under ``root``
(``SICKLE_DATA``) that are present:

* ``bccd/``: Pascal VOC photos, the RBC boxes (zero-size boxes dropped). Split: ``train.txt`` /
  ``val.txt`` as published.
* ``bbbc041seg/``: images + binary cell masks; one box per connected region of cell pixels (the
  paper's region definition; touching cells are separated by thin lines in these masks, so a
  region is mostly one cell). Regions under :data:`BBBC_MIN_AREA` pixels are mask noise and
  dropped. Split: images sorted by name, every 4th (index 3, 7, ...) is validation.
* ``chula-rbc12/``: photos with one labelled point per red cell. Boxes: :func:`boxes_from_points`
  (marker-controlled watershed of the cell foreground with the points as markers). Split: image
  number divisible by 5 is validation.

Every item carries ``source`` and ``diameter`` (``models.scale.estimate_cell_diameter`` of its
image); Chula items also carry their ``points`` (for the points-inside-a-box score).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

SOURCES = ("bccd", "bbbc041seg", "chula-rbc12")
#: BBBC041Seg mask regions smaller than this (pixels, at 1600x1200; cells are ~8000) are noise.
BBBC_MIN_AREA = 200


def data_root(root=None) -> Path:
    """``root``, else ``$SICKLE_DATA``, else ``../shared/data``."""
    return Path(root or os.environ.get("SICKLE_DATA") or "../shared/data").expanduser()


def bbbc_is_val(index: int) -> bool:
    """Validation rule for BBBC041Seg: position in the name-sorted list."""
    return index % 4 == 3


def chula_is_val(name: str) -> bool:
    """Validation rule for Chula RBC-12: image number divisible by 5."""
    stem = Path(name).stem
    return stem.isdigit() and int(stem) % 5 == 0


def read_points(path) -> np.ndarray:
    """Chula label file -> (n, 3) float array of x, y, class id (empty file: (0, 3))."""
    rows = []
    for line in Path(path).read_text().splitlines():
        parts = line.replace(",", " ").split()
        if len(parts) >= 2:
            rows.append([float(parts[0]), float(parts[1]), float(parts[2]) if len(parts) > 2 else 0.0])
    return np.asarray(rows, dtype=np.float64).reshape(-1, 3)


def boxes_from_points(image, points, diameter: float | None = None):
    """Cell boxes of a smear with one point per cell -> (boxes (m, 4) float32, from_point (m,) bool).

    Cell foreground: ``models.scale.cell_foreground`` (darker than Otsu's threshold, holes
    filled). Markers: the points, plus the regional maxima of the foreground's distance
    transform that are at least 0.3 cell diameters deep and 0.6 diameters from every point (the
    cells the annotators left unlabelled - often, but not only, cells cut by the border).
    Marker-controlled watershed on the inverted distance transform inside the foreground: each
    point gets the box of its basin; a point on background (or whose basin is under a tenth of
    a cell disc) gets a square of the cell ``diameter`` (estimated from the image when None)
    centred on it. Unlabelled basins become boxes too (``from_point`` False) when their area is
    0.3-2x the labelled cells' median and at most 15% of their pixels are darker than the
    labelled cells' 2nd gray percentile (white cells, with their dark nuclei, stay background)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    from ..models.scale import cell_foreground, estimate_cell_diameter

    img = np.asarray(image)
    h, w = img.shape[:2]
    gray = img[..., :3].astype(np.float32).mean(axis=2) if img.ndim == 3 else img.astype(np.float32)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)[:, :2] if len(points) else np.zeros((0, 2))
    if diameter is None:
        diameter = estimate_cell_diameter(img) or 40.0
    fg = cell_foreground(img)
    if fg is None:
        fg = np.zeros((h, w), bool)
    n = len(pts)
    markers = np.zeros((h, w), np.int32)
    xi = np.clip(np.round(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.round(pts[:, 1]).astype(int), 0, h - 1)
    dt = ndi.distance_transform_edt(fg)
    # unlabelled cells: deep distance-transform peaks far from every point
    peaks = (dt == ndi.maximum_filter(dt, size=max(3, int(diameter * 0.4)))) & (dt >= 0.3 * diameter)
    if n:
        near = np.ones((h, w), bool)
        near[yi, xi] = False
        near = ndi.distance_transform_edt(near) < 0.6 * diameter
        peaks &= ~near
    plab, n_extra = ndi.label(peaks)
    if n_extra:
        centres = np.round(np.asarray(ndi.center_of_mass(peaks, plab, np.arange(1, n_extra + 1)))).astype(int)
        centres = centres.reshape(-1, 2)
        markers[centres[:, 0], centres[:, 1]] = n + 1 + np.arange(len(centres))
    markers[yi, xi] = np.arange(1, n + 1)
    lab = watershed(-dt, markers, mask=fg | (markers > 0))
    n_all = n + n_extra
    objs = ndi.find_objects(lab, max_label=n_all)
    areas = np.bincount(lab.ravel(), minlength=n_all + 1)[1 : n_all + 1]
    min_area = 0.1 * np.pi * (diameter / 2) ** 2
    r = diameter / 2
    boxes, from_point = [], []
    for k in range(n):
        sl = objs[k]
        if sl is None or areas[k] < min_area:
            x, y = pts[k]
            boxes.append([max(x - r, 0), max(y - r, 0), min(x + r, w), min(y + r, h)])
        else:
            boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        from_point.append(True)
    good = [k for k in range(n) if areas[k] >= min_area]
    if good and n_extra:
        med = float(np.median(areas[good]))
        labelled = (lab > 0) & (lab <= n)
        dark = float(np.percentile(gray[labelled], 2))
        is_dark = (gray < dark).astype(np.float64)
        dark_share = np.asarray(ndi.mean(is_dark, lab, np.arange(1, n_all + 1)))
        for k in range(n, n_all):
            sl = objs[k]
            if sl is not None and 0.3 * med <= areas[k] <= 2.0 * med and dark_share[k] <= 0.15:
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                from_point.append(False)
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(from_point, bool)


def _item(image, boxes, source, name, split, **extra):
    from ..models.scale import estimate_cell_diameter

    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    return {
        "image": image,
        "boxes": b,
        "labels": np.ones(len(b), np.int64),
        "name": f"{source}/{name}",
        "source": source,
        "split": split,
        "diameter": estimate_cell_diameter(image),
        **extra,
    }


def load_real_smears(root=None, split: str = "train", sources=SOURCES, limit: int | None = None, progress=None):
    """Items (dicts as ``training.detector.load_detection_data``) of ``split`` ("train" / "val")
    from the ``sources`` folders present under ``root`` (see the module docstring).
    ``limit``: at most this many images per source (the first ones; for quick checks)."""
    from ..io.images import read_image, to_rgb_uint8

    root = data_root(root)
    items = []

    def want(s):
        return s == split

    for source in sources:
        folder = root / source
        if not folder.is_dir():
            continue
        jobs = []
        if source == "bccd":
            from ..io.datasets import scan_voc

            df = scan_voc(folder)
            for r in df.itertuples(index=False):
                s = getattr(r, "split", "") or "train"
                if want("val" if s == "val" else "train"):
                    jobs.append(("voc", r.image, r.annotation))
        elif source == "bbbc041seg":
            imgs = sorted((folder / "images").glob("*.png"))
            for i, p in enumerate(imgs):
                if want("val" if bbbc_is_val(i) else "train") and (folder / "masks" / p.name).is_file():
                    jobs.append(("mask", p, folder / "masks" / p.name))
        elif source == "chula-rbc12":
            for p in sorted((folder / "Dataset").glob("*.jpg"), key=lambda q: (len(q.stem), q.stem)):
                lab = folder / "Label" / f"{p.stem}.txt"
                if want("val" if chula_is_val(p.name) else "train") and lab.is_file():
                    jobs.append(("points", p, lab))
        if limit is not None:
            jobs = jobs[: int(limit)]
        for k, (kind, img_path, ann) in enumerate(jobs):
            try:
                img = to_rgb_uint8(read_image(img_path))
            except ValueError as exc:
                warnings.warn(f"skipped unreadable image {img_path}: {exc}")
                continue
            name = Path(img_path).name
            if kind == "voc":
                from ..io.formats import read_voc

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = read_voc(ann)
                a = a[a["class"].astype(str) == "RBC"]
                items.append(
                    _item(img, a[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32), source, name, split)
                )
            elif kind == "mask":
                from ..io.masks import mask_to_regions, read_mask

                _, reg = mask_to_regions(read_mask(ann))
                reg = reg[reg["area"] >= BBBC_MIN_AREA]
                items.append(
                    _item(img, reg[["x_min", "y_min", "x_max", "y_max"]].to_numpy(np.float32), source, name, split)
                )
            else:
                pts = read_points(ann)
                it = _item(img, np.zeros((0, 4)), source, name, split, points=pts[:, :2])
                it["boxes"], _ = boxes_from_points(img, pts, it["diameter"])
                it["labels"] = np.ones(len(it["boxes"]), np.int64)
                items.append(it)
            if progress is not None:
                progress(f"load {source}", k + 1, len(jobs))
    return items


def points_in_boxes(boxes, points) -> np.ndarray:
    """(n points, m boxes) bool: point (x, y) lies inside box (x0, y0, x1, y1), edges included."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (
        (p[:, None, 0] >= b[None, :, 0])
        & (p[:, None, 0] <= b[None, :, 2])
        & (p[:, None, 1] >= b[None, :, 1])
        & (p[:, None, 1] <= b[None, :, 3])
    )


def points_inside(boxes, points) -> np.ndarray:
    """(n,) bool: each point (x, y) lies inside at least one box."""
    return points_in_boxes(boxes, points).any(axis=1)
