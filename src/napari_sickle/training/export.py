"""Turn in-memory annotations (an image plus a label image or boxes) into a dataset
folder in the layout ``python -m napari_sickle.train`` reads. Plain numpy/pandas, no Qt.

Used by the training dock widget to train on "what is in the viewer":

* ``detector`` / ``unet`` + label image  -> ``images/<name>.png`` + ``masks/<name>.png`` (0/255)
* ``detector`` + boxes                   -> Pascal VOC ``JPEGImages/`` + ``Annotations/``
* ``multilabel`` + boxes with the six type columns -> crops + ``labels.csv`` (path + six 0/1 columns)
* ``bm`` + boxes with a ``label``/``class`` column -> class folders of crops
"""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

import numpy as np

from ..constants import RBC_TYPES

CLASS_COLUMNS = ("label", "class", "class_name", "type")


def _rgb(image: np.ndarray) -> np.ndarray:
    try:
        from ..io.images import to_rgb_uint8

        return to_rgb_uint8(image)
    except ImportError:  # pragma: no cover - IO module not present
        img = np.asarray(image)
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = img[..., :3]
        if img.dtype != np.uint8:
            img = img.astype(float)
            lo, hi = float(img.min()), float(img.max())
            img = ((img - lo) / (hi - lo or 1) * 255).astype(np.uint8)
        return img


def _write_png(path: Path, array: np.ndarray) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, array)


def boxes_from_shapes(shapes: list[np.ndarray], shape_hw: tuple[int, int]) -> np.ndarray:
    """Rectangles (napari Shapes data, vertices as (row, col)) -> int boxes x_min,y_min,x_max,y_max."""
    h, w = shape_hw
    out = []
    for verts in shapes:
        v = np.asarray(verts, dtype=float)[:, -2:]
        y0, x0 = np.floor(v.min(0))
        y1, x1 = np.ceil(v.max(0))
        out.append([max(0, x0), max(0, y0), min(w, x1), min(h, y1)])
    return np.asarray(out, dtype=int).reshape(-1, 4)


def _class_column(features) -> str | None:
    if features is None:
        return None
    for c in CLASS_COLUMNS:
        if c in features.columns:
            return c
    return None


def export_dataset(
    kind: str,
    image: np.ndarray,
    out_dir,
    *,
    labels: np.ndarray | None = None,
    shapes: list[np.ndarray] | None = None,
    features=None,
    name: str = "viewer",
) -> Path:
    """Write one annotated image as a training dataset; return the path to pass as ``--data``."""
    import pandas as pd

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rgb = _rgb(np.asarray(image))
    hw = rgb.shape[:2]
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape[-2:] != hw:
            raise ValueError(f"The Labels layer ({labels.shape}) does not match the image ({hw}).")
        if kind not in ("detector", "unet"):
            raise ValueError(
                f"A Labels layer can train 'detector' or 'unet', not {kind!r}; draw boxes (Shapes) instead."
            )
        if not (labels > 0).any():
            raise ValueError("The Labels layer is empty: paint the cells to train on.")
        _write_png(out / "images" / f"{name}.png", rgb)
        _write_png(out / "masks" / f"{name}.png", ((labels > 0) * 255).astype(np.uint8))
        return out
    if not shapes:
        raise ValueError("Choose a Labels or Shapes layer with annotations.")
    boxes = boxes_from_shapes(shapes, hw)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    if features is not None:
        features = features.reset_index(drop=True)[keep]
    boxes = boxes[keep]
    if len(boxes) == 0:
        raise ValueError("The Shapes layer holds no non-empty boxes.")
    ccol = _class_column(features)
    if kind == "detector":
        _write_png(out / "JPEGImages" / f"{name}.png", rgb)
        root = ET.Element("annotation")
        ET.SubElement(root, "filename").text = f"{name}.png"
        size = ET.SubElement(root, "size")
        for tag, v in (("width", hw[1]), ("height", hw[0]), ("depth", 3)):
            ET.SubElement(size, tag).text = str(v)
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            obj = ET.SubElement(root, "object")
            ET.SubElement(obj, "name").text = str(features[ccol].iloc[i]) if ccol else "RBC"
            bb = ET.SubElement(obj, "bndbox")
            for tag, v in (("xmin", x0), ("ymin", y0), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(bb, tag).text = str(int(v))
        (out / "Annotations").mkdir(parents=True, exist_ok=True)
        ET.ElementTree(root).write(out / "Annotations" / f"{name}.xml")
        return out
    if kind == "multilabel":
        missing = [t for t in RBC_TYPES if features is None or t not in features.columns]
        if missing:
            raise ValueError(
                f"The Shapes layer needs the six type columns in its features; missing: {', '.join(missing)}."
            )
        rows = []
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            rel = Path("crops") / f"{name}_{i:04d}.png"
            _write_png(out / rel, rgb[y0:y1, x0:x1])
            rows.append({"path": str(rel), **{t: int(bool(features[t].iloc[i])) for t in RBC_TYPES}})
        csv = out / "labels.csv"
        pd.DataFrame(rows).to_csv(csv, index=False)
        return csv
    if kind == "bm":
        if ccol is None:
            raise ValueError(f"The Shapes layer needs a class column ({', '.join(CLASS_COLUMNS)}) in its features.")
        for i, (x0, y0, x1, y1) in enumerate(boxes):
            cls = str(features[ccol].iloc[i]).strip() or "unknown"
            _write_png(out / cls / f"{name}_{i:04d}.png", rgb[y0:y1, x0:x1])
        return out
    raise ValueError(f"Boxes cannot train a {kind!r} model; use a Labels layer.")
