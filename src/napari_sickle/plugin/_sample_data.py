"""napari sample data: a simulated sickle-cell smear with its ground truth."""

from __future__ import annotations

import numpy as np

from ..constants import RBC_TYPE_LABELS, RBC_TYPES

# One edge colour per region label: abnormal regions stand out from pure Oval/Disc.
_NORMAL_EDGE = "#00c853"
_ABNORMAL_EDGE = "#ff1744"


def _region_rectangles(regions) -> list[np.ndarray]:
    """Regions CSV boxes -> napari rectangles ((4, 2) corners in (row, col))."""
    rects = []
    for y0, x0, y1, x1 in regions[["y_min", "x_min", "y_max", "x_max"]].to_numpy(float):
        rects.append(np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]], dtype=float))
    return rects


def smear_layer_data(smear) -> list[tuple]:
    """LayerDataTuples (image, instance Labels, ground-truth region Shapes) for a smear."""
    import pandas as pd

    name = smear.name.rsplit(".", 1)[0]
    image = (smear.image, {"name": f"{name}", "rgb": smear.image.ndim == 3}, "image")
    cells = smear.cells
    labels_features = pd.DataFrame(
        {
            "index": np.arange(0, smear.n_cells + 1),
            "type": ["background"] + [RBC_TYPES[int(t)] for t in smear.cell_types],
        }
    )
    if len(cells):
        labels_features["region_id"] = np.concatenate([[0], cells["region_id"].to_numpy()])
    labels = (
        smear.instances,
        {"name": f"{name} cells", "opacity": 0.4, "features": labels_features},
        "labels",
    )
    regions = smear.regions
    feats = regions[["region_id", *RBC_TYPES, "n_cells"]].copy().reset_index(drop=True)
    feats["label"] = ["+".join(RBC_TYPE_LABELS[t] for t in RBC_TYPES if row[t]) for _, row in feats.iterrows()]
    feats["abnormal"] = (feats[list(RBC_TYPES[1:])].sum(axis=1) > 0).astype(int)
    edge = [_ABNORMAL_EDGE if a else _NORMAL_EDGE for a in feats["abnormal"]]
    shapes = (
        _region_rectangles(regions),
        {
            "name": f"{name} regions",
            "shape_type": "rectangle",
            "features": feats,
            "edge_color": edge,
            "face_color": "transparent",
            "edge_width": 2,
            "text": {"string": "{label}", "size": 8, "color": "black", "anchor": "upper_left"},
        },
        "shapes",
    )
    return [image, labels, shapes]


def make_sample_smear(seed: int = 0) -> list[tuple]:
    """The napari sample: a 1920x1080 simulated smear in a real smear's stain colours (chosen by the
    seed), its cells (Labels) and region boxes (Shapes)."""
    from ..data.simulate import simulate_smear

    return smear_layer_data(simulate_smear(seed=seed, style="auto"))
