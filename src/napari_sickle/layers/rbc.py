"""SmearResult -> napari layers: a Shapes layer of region rectangles and a Labels layer of
region masks whose ids match the Shapes rows (row i -> id i + 1)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..constants import RBC_TYPE_LABELS, RBC_TYPES
from . import spatial_kwargs

NORMAL_COLOR = (0.1, 0.9, 0.2, 1.0)
ABNORMAL_COLOR = (1.0, 0.15, 0.15, 1.0)
#: one colour per type (colour-by-type mode uses the most probable type)
TYPE_COLORS = {
    "oval_disc": (0.1, 0.9, 0.2, 1.0),
    "elongated_sickle": (1.0, 0.15, 0.15, 1.0),
    "reticulocyte": (0.2, 0.5, 1.0, 1.0),
    "granular": (1.0, 0.85, 0.1, 1.0),
    "echinocyte": (1.0, 0.4, 1.0, 1.0),
    "stomatocyte": (0.1, 0.95, 0.95, 1.0),
}
COLOR_MODES = ("abnormal", "type")


def regions_name(image_name: str) -> str:
    return f"{image_name} regions"


def masks_name(image_name: str) -> str:
    return f"{image_name} region masks"


def result_features(result) -> pd.DataFrame:
    n = len(result)
    probs = np.asarray(result.probs, dtype=float).reshape(-1, 6)
    labels = np.asarray(result.labels, dtype=int).reshape(-1, 6)
    feats = {"region_id": np.arange(1, n + 1), "score": np.asarray(result.scores, dtype=float)}
    for j, t in enumerate(RBC_TYPES):
        feats[f"p_{t}"] = probs[:, j]
    for j, t in enumerate(RBC_TYPES):
        feats[t] = labels[:, j]
    feats["label"] = result.type_names
    feats["p_abnormal"] = np.asarray(result.p_abnormal, dtype=float)
    feats["abnormal"] = np.asarray(result.abnormal, dtype=bool)
    feats["top_type"] = [RBC_TYPES[int(i)] for i in probs.argmax(axis=1)] if n else []
    return pd.DataFrame(feats)


def edge_colors(features: pd.DataFrame, color_by: str = "abnormal") -> np.ndarray:
    if color_by not in COLOR_MODES:
        raise ValueError(f"color_by must be one of {COLOR_MODES}")
    if len(features) == 0:
        return np.zeros((0, 4))
    if color_by == "abnormal":
        return np.array([ABNORMAL_COLOR if a else NORMAL_COLOR for a in features["abnormal"]], dtype=float)
    return np.array([TYPE_COLORS[t] for t in features["top_type"]], dtype=float)


def rectangles(boxes) -> list[np.ndarray]:
    """(N,4) x_min, y_min, x_max, y_max -> napari rectangles in (row, col) corner order."""
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes, dtype=float).reshape(-1, 4):
        out.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]]))
    return out


def result_to_layers(result, image_name: str, source_layer=None, color_by: str = "abnormal") -> list[tuple]:
    """LayerDataTuples: Shapes ``<image> regions`` and Labels ``<image> region masks``."""
    sp = spatial_kwargs(source_layer)
    feats = result_features(result)
    meta = {"summary": result.summary, "source": image_name, "type_threshold": result.type_threshold,
            "color_by": color_by}
    shapes_kwargs = {
        "name": regions_name(image_name),
        "shape_type": "rectangle",
        "features": feats,
        "edge_color": edge_colors(feats, color_by) if len(feats) else "red",
        "face_color": "transparent",
        "edge_width": 2,
        "text": {"string": "{label}", "size": 8, "color": "white", "anchor": "upper_left"},
        "metadata": meta,
        **sp,
    }
    ids = np.arange(1, len(result) + 1)
    color = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
    for i, a in zip(ids, np.asarray(result.abnormal, dtype=bool)):
        color[int(i)] = ABNORMAL_COLOR if a else NORMAL_COLOR
    labels_kwargs = {
        "name": masks_name(image_name),
        "colormap": color,
        "opacity": 0.4,
        "features": pd.DataFrame({"index": ids, "abnormal": np.asarray(result.abnormal, dtype=bool),
                                  "p_abnormal": np.asarray(result.p_abnormal, dtype=float),
                                  "label": result.type_names}),
        "metadata": {"source": image_name},
        **sp,
    }
    return [
        (rectangles(result.boxes), shapes_kwargs, "shapes"),
        (np.asarray(result.region_masks, dtype=np.int32), labels_kwargs, "labels"),
    ]


def recolor(shapes_layer, color_by: str) -> None:
    """Switch a regions Shapes layer between colour-by-abnormal and colour-by-type in place."""
    feats = shapes_layer.features
    if len(feats):
        shapes_layer.edge_color = edge_colors(feats, color_by)
    shapes_layer.metadata = {**shapes_layer.metadata, "color_by": color_by}


def summary_table(summary: dict) -> dict:
    """{'item': [...], 'value': [...]} (dict of columns) for a magicgui Table from a SmearResult summary."""
    rows = [["regions", str(summary.get("n_regions", 0))]]
    for t in RBC_TYPES:
        rows.append([RBC_TYPE_LABELS[t], str(summary.get("counts", {}).get(t, 0))])
    rows.append(["abnormal", str(summary.get("n_abnormal", 0))])
    rows.append(["abnormal fraction", f"{summary.get('abnormal_fraction', 0.0):.1%}"])
    rows.append(["SCD screening", str(summary.get("scd_call", ""))])
    return {"item": [r[0] for r in rows], "value": [r[1] for r in rows]}
