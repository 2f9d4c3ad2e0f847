"""Reader outputs -> napari LayerDataTuples (no napari import needed to build them)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from ..constants import BOX_COLUMNS, RBC_TYPE_LABELS, RBC_TYPES

#: features a reader adds for display only; the regions writer leaves them out.
DERIVED_KEY = "napari_sickle_derived_features"


def image_layer(img: np.ndarray, name: str, path: str | None = None, **extra) -> tuple:
    """Image layer; ``rgb`` is True exactly for (H, W, 3|4) arrays."""
    img = np.asarray(img)
    rgb = img.ndim == 3 and img.shape[-1] in (3, 4)
    if img.ndim == 3 and img.shape[-1] == 2:  # gray + alpha: show the gray plane
        img = img[..., 0]
    kwargs = {"name": name, "rgb": rgb, "metadata": {"path": path} if path else {}}
    if img.dtype != np.uint8 and img.dtype != bool and img.size:
        lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
        if hi > lo:
            kwargs["contrast_limits"] = (lo, hi)
    kwargs.update(extra)
    return (img, kwargs, "image")


def labels_layer(labels: np.ndarray, regions: pd.DataFrame, name: str, path: str | None = None, **extra) -> tuple:
    """Labels layer with ``features`` (index = label id) holding area and bounding box."""
    feats = regions.copy()
    feats.insert(0, "index", feats["region_id"].to_numpy())
    kwargs = {"name": name, "features": feats.reset_index(drop=True), "metadata": {"path": path} if path else {}}
    kwargs.update(extra)
    return (np.asarray(labels), kwargs, "labels")


def boxes_to_rectangles(df: pd.DataFrame) -> list[np.ndarray]:
    """(4, 2) rectangle corners in napari (row, col) order from x/y min/max columns."""
    out = []
    for x0, y0, x1, y1 in df[list(BOX_COLUMNS)].to_numpy(dtype=float):
        out.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float))
    return out


def rectangles_to_boxes(data: Sequence[np.ndarray]) -> pd.DataFrame:
    """x_min, y_min, x_max, y_max of each shape's bounding box (last two axes = row, col)."""
    rows = []
    for verts in data:
        v = np.asarray(verts, dtype=float)[:, -2:]
        (r0, c0), (r1, c1) = v.min(0), v.max(0)
        rows.append((c0, r0, c1, r1))
    return pd.DataFrame(rows, columns=list(BOX_COLUMNS), dtype=float)


def voc_shapes_layer(df: pd.DataFrame, name: str, path: str | None = None) -> tuple:
    """Shapes rectangles of VOC boxes with a ``class`` feature, coloured and labelled by it."""
    feats = df.drop(columns=list(BOX_COLUMNS)).reset_index(drop=True)
    classes = sorted(feats["class"].unique()) if len(feats) else []
    palette = ["#ff4040", "#40a0ff", "#ffd040", "#40ff80", "#ff40ff", "#40ffff", "#ff9040", "#a0a0a0"]
    cmap = {c: palette[i % len(palette)] for i, c in enumerate(classes)}
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": feats,
        "edge_color": [cmap[c] for c in feats["class"]] if len(feats) else "red",
        "face_color": "transparent",
        "edge_width": 2,
        "text": {"string": "{class}", "size": 8, "color": "white", "anchor": "upper_left"},
        "metadata": {"path": path, "classes": classes, "size": df.attrs.get("size")} if path else {"classes": classes},
    }
    return (boxes_to_rectangles(df), kwargs, "shapes")


def regions_label_strings(df: pd.DataFrame) -> list[str]:
    """'Oval/Disc', 'Elongated/Sickle+Granular', ... from the six 0/1 type columns."""
    out = []
    for row in df[list(RBC_TYPES)].to_numpy():
        names = [RBC_TYPE_LABELS[t] for t, v in zip(RBC_TYPES, row) if v]
        out.append("+".join(names) if names else "none")
    return out


def regions_shapes_layer(df: pd.DataFrame, name: str, path: str | None = None) -> tuple:
    """Shapes rectangles of a regions table; every non-box column becomes a feature.

    A ``label`` feature is derived from the type columns when the table has none (the
    regions writer does not write it back); abnormal regions get a red edge.
    """
    feats = df.drop(columns=list(BOX_COLUMNS)).reset_index(drop=True)
    derived = []
    if "label" not in feats.columns:
        feats["label"] = regions_label_strings(df)
        derived.append("label")
    elif feats["label"].isna().any():  # an empty label cell reads back as NaN
        feats["label"] = feats["label"].fillna(pd.Series(regions_label_strings(df)))
    if "abnormal" in df.columns:
        abnormal = df["abnormal"].to_numpy().astype(bool)
    else:
        abnormal = df[list(RBC_TYPES[1:])].to_numpy().any(axis=1)
    meta = {DERIVED_KEY: derived}
    if path:
        meta["path"] = path
    kwargs = {
        "name": name,
        "shape_type": "rectangle",
        "features": feats,
        "edge_color": ["#ff3030" if a else "#30ff60" for a in abnormal] if len(feats) else "#30ff60",
        "face_color": "transparent",
        "edge_width": 2,
        "text": {"string": "{label}", "size": 8, "color": "white", "anchor": "upper_left"},
        "metadata": meta,
    }
    return (boxes_to_rectangles(df), kwargs, "shapes")


def points_layer(
    df: pd.DataFrame, name: str, class_names: dict[int, str] | None = None, path: str | None = None
) -> tuple:
    """Points (row, col) with ``class_id`` and ``class`` features (names if known)."""
    class_names = class_names or {}
    feats = pd.DataFrame(
        {
            "class_id": df["class_id"].to_numpy(dtype=np.int64),
            "class": [class_names.get(int(c), str(int(c))) for c in df["class_id"]],
        }
    )
    data = (
        np.column_stack([df["y"].to_numpy(dtype=float), df["x"].to_numpy(dtype=float)]) if len(df) else np.zeros((0, 2))
    )
    kwargs = {
        "name": name,
        "features": feats,
        "face_color": "class" if len(feats) else "white",
        "size": 10,
        "metadata": {"path": path, "class_names": class_names} if path else {"class_names": class_names},
    }
    return (data, kwargs, "points")


def crop_stack_layer(
    crops: Sequence[np.ndarray], files: Sequence[str], classes: Sequence[str], name: str, path: str | None = None
) -> tuple:
    """One Image stack (N, H, W[, 3]) of crops padded with 0 to the largest size, centred.

    ``metadata`` holds per-slice lists ``files``, ``classes``, ``shapes`` (original H, W)
    and ``offsets`` (row, col of the crop inside the padded slice), plus ``table``, a
    DataFrame with the same columns.
    """
    if not crops:
        raise ValueError(f"{name}: no crops to stack")
    any_rgb = any(c.ndim == 3 for c in crops)
    arrs = []
    for c in crops:
        c = np.asarray(c)
        if c.ndim == 3:
            c = c[..., :3] if c.shape[-1] >= 3 else np.repeat(c[..., :1], 3, axis=-1)
        elif any_rgb:
            c = np.repeat(c[..., None], 3, axis=-1)
        arrs.append(c)
    dtype = np.result_type(*[a.dtype for a in arrs])
    H = max(a.shape[0] for a in arrs)
    W = max(a.shape[1] for a in arrs)
    stack = np.zeros((len(arrs), H, W, *arrs[0].shape[2:]), dtype=dtype)
    offsets = []
    for i, a in enumerate(arrs):
        r0, c0 = (H - a.shape[0]) // 2, (W - a.shape[1]) // 2
        stack[i, r0 : r0 + a.shape[0], c0 : c0 + a.shape[1]] = a
        offsets.append((r0, c0))
    table = pd.DataFrame(
        {
            "file": list(files),
            "class": list(classes),
            "height": [a.shape[0] for a in arrs],
            "width": [a.shape[1] for a in arrs],
            "row_offset": [o[0] for o in offsets],
            "col_offset": [o[1] for o in offsets],
        }
    )
    meta = {
        "files": list(files),
        "classes": list(classes),
        "shapes": [tuple(a.shape[:2]) for a in arrs],
        "offsets": offsets,
        "table": table,
    }
    if path:
        meta["path"] = path
    kwargs = {"name": name, "rgb": any_rgb, "metadata": meta}
    return (stack, kwargs, "image")


__all__ = [
    "DERIVED_KEY",
    "boxes_to_rectangles",
    "crop_stack_layer",
    "image_layer",
    "labels_layer",
    "points_layer",
    "rectangles_to_boxes",
    "regions_label_strings",
    "regions_shapes_layer",
    "voc_shapes_layer",
]
