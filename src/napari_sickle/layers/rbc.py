"""SmearResult -> napari layers: a Shapes layer of region rectangles, a Labels layer of region
outlines whose ids match the Shapes rows (row i -> id i + 1), and a Points layer of type-code
badges (white text on a dark square, one per region) that stays readable on light smears.

Output names carry a `` · RBC …`` suffix so they never equal an input's name (the sample's
ground truth is ``<image> regions``)."""

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
#: short code shown on each region, and in the widget's legend
TYPE_CODES = {
    "oval_disc": "D",
    "elongated_sickle": "S",
    "reticulocyte": "R",
    "granular": "G",
    "echinocyte": "E",
    "stomatocyte": "St",
}
BADGE_FACE = "#141414c8"  # near-black, 78 % opaque


def regions_name(image_name: str) -> str:
    return f"{image_name} · RBC regions"


def masks_name(image_name: str) -> str:
    return f"{image_name} · RBC outlines"


def codes_name(image_name: str) -> str:
    return f"{image_name} · RBC types"


def type_codes(labels) -> list[str]:
    """'D', 'S+G', … from (N, 6) 0/1 type calls; '?' when no type passed its threshold."""
    out = []
    for row in np.asarray(labels, dtype=int).reshape(-1, 6):
        codes = [TYPE_CODES[t] for t, v in zip(RBC_TYPES, row) if v]
        out.append("+".join(codes) if codes else "?")
    return out


def legend(color_by: str = "abnormal") -> str:
    """Plain-text legend for the widget: what the box colours and the codes mean."""
    codes = ", ".join(f"{TYPE_CODES[t]} {RBC_TYPE_LABELS[t]}" for t in RBC_TYPES)
    if color_by == "abnormal":
        colours = "Boxes: green = normal, red = abnormal."
    else:
        colours = (
            "Boxes coloured by most probable type: "
            + ", ".join(f"{RBC_TYPE_LABELS[t]} {_colour_word(TYPE_COLORS[t])}" for t in RBC_TYPES)
            + "."
        )
    return f"{colours} Codes: {codes}; ? none above threshold."


def _colour_word(rgba) -> str:
    words = {
        (0.1, 0.9, 0.2): "green",
        (1.0, 0.15, 0.15): "red",
        (0.2, 0.5, 1.0): "blue",
        (1.0, 0.85, 0.1): "yellow",
        (1.0, 0.4, 1.0): "magenta",
        (0.1, 0.95, 0.95): "cyan",
    }
    return words.get(tuple(rgba[:3]), "")


def badge_size(boxes) -> float:
    """Badge side in screen pixels: about half a typical region at 100 % zoom, 16-28 px."""
    b = np.asarray(boxes, dtype=float).reshape(-1, 4)
    if not len(b):
        return 20.0
    side = np.median(np.minimum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]))
    return float(np.clip(0.45 * side, 16, 28))


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
    feats["code"] = type_codes(labels)
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
    """LayerDataTuples: Shapes ``<image> · RBC regions`` (features, no text), Labels
    ``<image> · RBC outlines`` (contours, so the cells stay visible) and Points
    ``<image> · RBC types`` (one type-code badge at each box's top-left corner)."""
    sp = spatial_kwargs(source_layer)
    feats = result_features(result)
    meta = {
        "summary": result.summary,
        "source": image_name,
        "type_threshold": result.type_threshold,
        "color_by": color_by,
    }
    shapes_kwargs = {
        "name": regions_name(image_name),
        "shape_type": "rectangle",
        "features": feats,
        "edge_color": edge_colors(feats, color_by) if len(feats) else "red",
        "face_color": "transparent",
        "edge_width": 2,
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
        "opacity": 0.9,
        "contour": 2,
        "features": pd.DataFrame(
            {
                "index": ids,
                "abnormal": np.asarray(result.abnormal, dtype=bool),
                "p_abnormal": np.asarray(result.p_abnormal, dtype=float),
                "label": result.type_names,
            }
        ),
        "metadata": {"source": image_name},
        **sp,
    }
    return [
        (np.asarray(result.region_masks, dtype=np.int32), labels_kwargs, "labels"),
        (rectangles(result.boxes), shapes_kwargs, "shapes"),
        codes_layer(result, feats, image_name, sp, color_by),
    ]


def codes_layer(result, feats: pd.DataFrame, image_name: str, sp: dict, color_by: str = "abnormal") -> tuple:
    """Points at each box's top-left corner: a dark square of fixed screen size with the
    region's type code in white, its border in the box colour."""
    boxes = np.asarray(result.boxes, dtype=float).reshape(-1, 4)
    px = badge_size(boxes)
    data = boxes[:, [1, 0]] if len(boxes) else np.zeros((0, 2))
    kwargs = {
        "name": codes_name(image_name),
        "features": feats[["region_id", "code", "label", "abnormal", "p_abnormal"]].copy(),
        "symbol": "square",
        "size": px,
        "canvas_size_limits": (px, px),  # the same size on screen at every zoom
        "face_color": BADGE_FACE,
        "border_color": edge_colors(feats, color_by) if len(feats) else "white",
        "border_width": 0.1,
        "text": {"string": "{code}", "size": round(px * 0.42, 1), "color": "white", "anchor": "center"},
        "metadata": {"source": image_name},
        **sp,
    }
    return data, kwargs, "points"


def recolor(shapes_layer, color_by: str, codes_layer=None) -> None:
    """Switch a regions Shapes layer (and its badges) between colour-by-abnormal and
    colour-by-type in place."""
    feats = shapes_layer.features
    if len(feats):
        shapes_layer.edge_color = edge_colors(feats, color_by)
        if codes_layer is not None and len(codes_layer.data) == len(feats):
            codes_layer.border_color = edge_colors(feats, color_by)
    shapes_layer.metadata = {**shapes_layer.metadata, "color_by": color_by}


def summary_table(summary: dict) -> dict:
    """{'item': [...], 'value': [...]} (dict of columns) for a magicgui Table from a SmearResult
    summary. Counts are of regions (a region is one cell or a group of touching cells), and
    a region may carry several types."""
    rows = [["regions (cells or clumps)", str(summary.get("n_regions", 0))]]
    for t in RBC_TYPES:
        rows.append([f"{RBC_TYPE_LABELS[t]} ({TYPE_CODES[t]})", str(summary.get("counts", {}).get(t, 0))])
    rows.append(["abnormal", str(summary.get("n_abnormal", 0))])
    rows.append(["abnormal fraction", f"{summary.get('abnormal_fraction', 0.0):.0%}"])
    rows.append(["type uncertainty", f"{summary.get('type_uncertainty', 0.0):.2f}"])
    rows.append(["cell lightness matched", "yes" if summary.get("lightness_matched") else "no"])
    rows.append(["SCD screening", str(summary.get("scd_call", ""))])
    return {"item": [r[0] for r in rows], "value": [r[1] for r in rows]}
