"""Segmentation comparison results -> napari LayerDataTuples.

One Labels layer per method (``"<image> · <method>"``, drawn as outlines so the cells stay
visible), updated in place on re-run, and a Points layer ``"<image> · merged cells"``: a thin
circle, coloured by method, drawn just outside every prediction that swallows two or more
true cells.
"""

from __future__ import annotations

import numpy as np

from . import spatial_kwargs

METHOD_COLORS = {
    "watershed": "#ff7f0e",
    "unet": "#1f77b4",
    "connected_components": "#2ca02c",
}


def labels_layer_name(image_name: str, method: str) -> str:
    return f"{image_name} · {method}"


def merged_layer_name(image_name: str) -> str:
    return f"{image_name} · merged cells"


def comparison_layers(result, source_layer=None, image_name: str = "image") -> list[tuple]:
    """LayerDataTuples for a :class:`~napari_sickle.analysis.segmentation.ComparisonResult`."""
    sp = spatial_kwargs(source_layer)
    out = []
    for method, lab in result.labels.items():
        meta = {"method": method, "seconds": float(result.seconds.get(method, 0.0))}
        if method in result.metrics:
            meta["metrics"] = result.metrics[method].as_dict()
        out.append(
            (
                lab,
                {"name": labels_layer_name(image_name, method), "opacity": 0.9, "contour": 2, "metadata": meta, **sp},
                "labels",
            )
        )
    if result.metrics:
        out.append(merged_points(result, image_name, sp))
    return out


def merged_points(result, image_name: str, sp: dict) -> tuple:
    """Points at the centre of each merged prediction; size = its diameter; feature ``method``."""
    from scipy import ndimage as ndi

    pts, methods, n_cells, sizes = [], [], [], []
    gt = result.ground_truth
    for method, met in result.metrics.items():
        lab = result.labels[method]
        ids = list(met.merged_ids)
        if not ids:
            continue
        centres = ndi.center_of_mass(np.ones_like(lab, dtype=np.uint8), lab, ids)
        slices = ndi.find_objects(lab)
        for i, c in zip(ids, centres):
            sl = slices[i - 1]
            extent = max(sl[0].stop - sl[0].start, sl[1].stop - sl[1].start)
            pts.append(c)
            methods.append(method)
            sizes.append(1.15 * extent)  # a circle just outside the object
            if gt is not None:
                inside = np.unique(gt[lab == i])
                n_cells.append(int((inside > 0).sum()))
            else:
                n_cells.append(0)
    data = np.asarray(pts, dtype=float).reshape(-1, 2)
    import pandas as pd

    features = pd.DataFrame(
        {
            "method": pd.Categorical(methods, categories=list(result.labels)),
            "n_true_cells": np.asarray(n_cells, dtype=int),
        }
    )
    kwargs = {
        "name": merged_layer_name(image_name),
        "features": features,
        "size": np.asarray(sizes, dtype=float) if sizes else 10,
        "symbol": "disc",
        "face_color": "transparent",
        "border_color": [METHOD_COLORS.get(m, "#d62728") for m in methods] if methods else "red",
        "border_width": 2,  # data pixels: a thin line
        "border_width_is_relative": False,
        "opacity": 1.0,
        "metadata": {"what": "predictions covering two or more true cells"},
        **sp,
    }
    return data, kwargs, "points"


def show_comparison(viewer, result, source_layer=None, image_name: str = "image") -> list:
    """Add/update the comparison layers in ``viewer``; returns the layers."""
    from . import upsert_layer

    return [upsert_layer(viewer, ldt) for ldt in comparison_layers(result, source_layer, image_name)]
