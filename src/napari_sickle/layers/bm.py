"""BMResult -> napari LayerDataTuples (heatmap Image layers + a Shapes layer with the table).

Three placements, matching the widget's inputs:

* ``cell``: one 2-D cell; the heatmap has the cell's shape, scale/translate copied.
* ``stack``: N slices; one heatmap per slice in an (N, H, W) layer with the source's
  scale/translate (all non-channel axes).
* ``regions``: cells cut from a larger 2-D image at ``boxes`` (row0, col0, row1, col1 in
  the image's data pixels); one heatmap layer per region, translated by the region offset.

Every placement also returns a Shapes layer ``"<prefix> results"`` with one rectangle per
cell whose ``features`` are :meth:`BMResult.summary` (top-k classes and probabilities,
target, faithfulness) and whose text shows the prediction and faithfulness next to each
heatmap.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HEATMAP_KWARGS = {"colormap": "inferno", "blending": "additive", "opacity": 0.5, "contrast_limits": (0.0, 1.0)}


def _source_geometry(source_layer, ndim: int):
    if source_layer is None:
        return (1.0,) * ndim, (0.0,) * ndim
    scale = tuple(float(s) for s in source_layer.scale)[-ndim:]
    translate = tuple(float(t) for t in source_layer.translate)[-ndim:]
    return scale, translate


def _text(result) -> dict:
    s = "{prediction} {probability:.2f}"
    if result.faithfulness is not None:
        s += " | faith {faithfulness:+.2f}"
    # dark text: smears are bright-field (light background), and so is a heatmap's bright end
    return {"string": s, "color": "#101010", "size": 11, "anchor": "upper_left"}


def heatmap_name(prefix: str, i: int | None = None) -> str:
    return f"{prefix} heatmap" if i is None else f"{prefix} heatmap {i + 1}"


def bm_result_layers(
    result,
    source_layer=None,
    *,
    placement: str = "cell",
    boxes: Sequence[Sequence[int]] | None = None,
    prefix: str = "BM",
) -> list[tuple]:
    """LayerDataTuples for ``result``; see the module docstring for ``placement``."""
    features = result.summary()
    meta = {
        "bm_table": result.top_k_table().to_dict("list"),
        "method": result.method,
        "faithfulness_metric": result.faithfulness_metric,
        "class_names": list(result.class_names),
        "arch": result.model_arch,
    }
    if placement == "cell":
        out, rects, scale, translate = _cell_layers(result, source_layer, meta, prefix)
    elif placement == "stack":
        out, rects, scale, translate = _stack_layers(result, source_layer, meta, prefix)
    elif placement == "regions":
        out, rects, scale, translate = _region_layers(result, source_layer, meta, prefix, boxes)
    else:
        raise ValueError(f"unknown placement {placement!r}")
    out.append(
        (
            rects,
            {
                "name": f"{prefix} results",
                "shape_type": "rectangle",
                "features": features,
                "text": _text(result),
                "edge_color": "cyan",
                "face_color": "transparent",
                "edge_width": 1,
                "scale": scale,
                "translate": translate,
                "metadata": meta,
            },
            "shapes",
        )
    )
    return out


def _heatmap_layer(data, name: str, scale, translate, metadata) -> tuple:
    return (data, dict(HEATMAP_KWARGS, name=name, scale=scale, translate=translate, metadata=metadata), "image")


def _cell_layers(result, source_layer, meta, prefix):
    """placement ``cell``: (heatmap layers, rectangles, scale, translate)."""
    if result.n != 1:
        raise ValueError(f"placement 'cell' needs one cell, got {result.n}")
    scale, translate = _source_geometry(source_layer, 2)
    h, w = result.shapes[0]
    out = []
    if result.heatmaps is not None:
        meta1 = dict(meta, faithfulness=_f(result, 0))
        out.append(_heatmap_layer(result.heatmaps[0], heatmap_name(prefix), scale, translate, meta1))
    rects = [np.array([[0, 0], [h, 0], [h, w], [0, w]], float) - 0.5]
    return out, rects, scale, translate


def _stack_layers(result, source_layer, meta, prefix):
    """placement ``stack``: (one (N, H, W) heatmap layer, rectangles, scale, translate)."""
    scale, translate = _source_geometry(source_layer, 3)
    shapes = set(result.shapes)
    if len(shapes) != 1:
        raise ValueError("placement 'stack' needs cells of one size")
    h, w = result.shapes[0]
    out = []
    if result.heatmaps is not None:
        stack = np.stack(result.heatmaps).astype(np.float32)
        meta1 = dict(
            meta, faithfulness=None if result.faithfulness is None else [float(x) for x in result.faithfulness]
        )
        out.append(_heatmap_layer(stack, heatmap_name(prefix), scale, translate, meta1))
    rects = [np.array([[i, 0, 0], [i, h, 0], [i, h, w], [i, 0, w]], float) - [0, 0.5, 0.5] for i in range(result.n)]
    return out, rects, scale, translate


def _region_layers(result, source_layer, meta, prefix, boxes):
    """placement ``regions``: (one heatmap layer per box, rectangles, scale, translate)."""
    if boxes is None or len(boxes) != result.n:
        raise ValueError("placement 'regions' needs one box per cell")
    scale, translate = _source_geometry(source_layer, 2)
    out, rects = [], []
    for i, (r0, c0, r1, c1) in enumerate(boxes):
        off = (translate[0] + r0 * scale[0], translate[1] + c0 * scale[1])
        if result.heatmaps is not None:
            meta1 = dict(meta, faithfulness=_f(result, i), box=[int(r0), int(c0), int(r1), int(c1)])
            out.append(_heatmap_layer(result.heatmaps[i], heatmap_name(prefix, i), scale, off, meta1))
        rects.append(np.array([[r0, c0], [r1, c0], [r1, c1], [r0, c1]], float) - 0.5)
    return out, rects, scale, translate


def _f(result, i):
    return None if result.faithfulness is None else float(result.faithfulness[i])
