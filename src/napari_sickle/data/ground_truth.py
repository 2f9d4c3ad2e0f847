"""Ground truth of a simulated or composed smear from its instance image: which cells touch,
the per-cell table, the connected regions and their regions-CSV table, and the removal of
cells left (almost) hidden under others."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from ..constants import RBC_TYPE_LABELS, RBC_TYPES


def touching_pairs(instances: np.ndarray) -> set[tuple[int, int]]:
    """Pairs (i < j) of instance ids that touch or overlap.

    Two cells touch when cell i dilated by one pixel (3x3, 8-connectivity) meets cell j,
    i.e. some pixel of i is an 8-neighbour of a pixel of j. Overlapping cells share a border
    in the top-wins instance map, so they count as touching too.
    """
    lab = np.asarray(instances)
    pairs = set()
    H, W = lab.shape
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        a = lab[0 : H - dy, max(0, -dx) : W - max(0, dx)]
        b = lab[dy:H, max(0, dx) : W - max(0, -dx)]
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            u = np.unique(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], 1), axis=0)
            pairs.update((int(i), int(j)) for i, j in u)
    return pairs


def touching_cells(instances: np.ndarray) -> np.ndarray:
    """Sorted ids of cells that touch or overlap at least one other cell."""
    pairs = touching_pairs(instances)
    ids = {i for pr in pairs for i in pr}
    return np.array(sorted(ids), dtype=np.int64)


def cell_table(instances: np.ndarray, region_labels: np.ndarray, cell_types) -> pd.DataFrame:
    """Per-cell table: ``cell_id, type, region_id, x_min, y_min, x_max, y_max, area`` of the
    visible (top-wins) pixels of each cell."""
    from skimage.measure import regionprops_table

    cell_types = np.asarray(cell_types, dtype=np.int64)
    n = len(cell_types)
    props = regionprops_table(instances, properties=("label", "bbox", "area"))
    lab = np.asarray(props["label"], dtype=np.int64)
    flat = np.flatnonzero(instances)
    reg = np.zeros(n + 1, np.int64)
    reg[instances.ravel()[flat]] = region_labels.ravel()[flat]
    return pd.DataFrame(
        {
            "cell_id": lab,
            "type": [RBC_TYPES[int(cell_types[i - 1])] for i in lab],
            "region_id": reg[lab],
            "x_min": np.asarray(props["bbox-1"], np.int64),
            "y_min": np.asarray(props["bbox-0"], np.int64),
            "x_max": np.asarray(props["bbox-3"], np.int64),
            "y_max": np.asarray(props["bbox-2"], np.int64),
            "area": np.asarray(props["area"], np.int64),
        }
    )


def regions_from_instances(
    instances: np.ndarray, cell_types: Sequence[int], image_name: str = "simulated.png"
) -> tuple[np.ndarray, pd.DataFrame]:
    """Connected regions of cell pixels and their regions-CSV table.

    Returns ``(region_labels int32, DataFrame)``; each region's six type columns are the
    union of the types of the cells whose pixels lie in it.
    """
    from skimage.measure import label, regionprops

    instances = np.asarray(instances)
    cell_types = np.asarray(cell_types, dtype=np.int64)
    region_labels = label(instances > 0).astype(np.int32)
    n_regions = int(region_labels.max())
    fg = instances > 0
    rl = region_labels[fg].astype(np.int64)
    inst = instances[fg].astype(np.int64)
    pairs = np.unique(rl * (int(instances.max()) + 1) + inst)
    pr = pairs // (int(instances.max()) + 1)
    pc = pairs % (int(instances.max()) + 1)
    types = np.zeros((n_regions + 1, len(RBC_TYPES)), np.int64)
    types[pr, cell_types[pc - 1]] = 1
    n_cells = np.bincount(pr, minlength=n_regions + 1)
    rows = []
    for rp in regionprops(region_labels):
        r0, c0, r1, c1 = rp.bbox
        rows.append((image_name, int(rp.label), int(c0), int(r0), int(c1), int(r1)))
    df = pd.DataFrame(rows, columns=["image", "region_id", "x_min", "y_min", "x_max", "y_max"])
    ids = df["region_id"].to_numpy(dtype=np.int64)
    for k, t in enumerate(RBC_TYPES):
        df[t] = types[ids, k] if len(ids) else np.zeros(0, np.int64)
    df["n_cells"] = n_cells[ids] if len(ids) else np.zeros(0, np.int64)
    df["label"] = (
        ["+".join(RBC_TYPE_LABELS[t] for t in RBC_TYPES if row[t]) for _, row in df.iterrows()] if len(df) else []
    )
    return region_labels, df


def _drop_hidden(instances, kept_types, rows, min_pixels: int = 30):
    """Remove cells that ended up (almost) hidden and renumber ids 1..N contiguously.

    The few visible pixels of a removed cell go to the neighbouring cell that covers it, so
    the mask still covers every drawn cell pixel."""
    n = len(kept_types)
    counts = np.bincount(instances.ravel(), minlength=n + 1)
    keep = counts[1 : n + 1] >= min_pixels
    if keep.all():
        return instances, kept_types, rows
    objs = ndi.find_objects(instances, max_label=n)
    for k in np.flatnonzero(~keep) + 1:
        sl = objs[k - 1]
        if sl is None:
            continue
        sl = tuple(slice(max(0, q.start - 1), q.stop + 1) for q in sl)
        sub = instances[sl]
        own = sub == k
        nb = sub[ndi.binary_dilation(own) & ~own]
        nb = nb[(nb > 0) & (nb != k) & keep[np.maximum(nb, 1) - 1]]
        sub[own] = np.bincount(nb).argmax() if len(nb) else 0
    lut = np.zeros(n + 1, np.int32)
    lut[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    instances = lut[instances]
    kept_types = [t for t, k in zip(kept_types, keep) if k]
    rows = [(int(lut[r[0]]),) + tuple(r[1:]) for r, k in zip(rows, keep) if k]
    return instances, kept_types, rows
