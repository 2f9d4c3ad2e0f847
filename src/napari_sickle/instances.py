"""Instance label images (int, 0 = background): relabel, drop small objects, typical size.

Plain numpy/scipy/scikit-image; used by the U-Net post-processing (models), the
segmentation methods (analysis) and the metrics.
"""

from __future__ import annotations

import numpy as np


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Zero the objects of a label image (or a bool mask's components) below ``min_size`` px."""
    a = np.asarray(labels)
    if a.dtype == bool:
        from skimage.measure import label

        return remove_small(label(a, connectivity=1), min_size) > 0
    if min_size <= 0 or a.max() <= 0:
        return a
    areas = np.bincount(a.ravel().astype(np.int64))
    small = areas < int(min_size)
    small[0] = False
    return np.where(small[a], 0, a).astype(a.dtype)


def relabel(labels: np.ndarray) -> np.ndarray:
    """Sequential int32 labels 1..N of a non-negative integer label image (fast, bincount)."""
    a = np.asarray(labels)
    if a.size == 0 or a.max() <= 0:
        return np.zeros(a.shape, np.int32)
    present = np.bincount(a.ravel().astype(np.int64)) > 0
    present[0] = False
    lut = np.zeros(present.size, np.int32)
    lut[present] = np.arange(1, int(present.sum()) + 1, dtype=np.int32)
    return lut[a]


def typical_sizes(fg: np.ndarray) -> tuple[float, int]:
    """Typical cell radius and a minimum object size from a foreground mask's components.

    The lower part of the component areas (40th percentile) is taken as one cell, since
    clusters of touching cells are the large components.
    """
    from skimage.measure import label

    lab = label(fg, connectivity=1)
    areas = np.bincount(lab.ravel())[1:]
    areas = areas[areas >= 30]
    if areas.size == 0:
        return 5.0, 30
    typical = float(np.percentile(areas, 40))
    radius = float(np.sqrt(typical / np.pi))
    return radius, int(max(30, 0.15 * typical))
