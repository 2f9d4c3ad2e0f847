"""Cell masks: reading them as booleans and splitting them into connected regions.

A region is a 4-connected set of cell pixels (the paper's breadth-first search over the
binary mask). Touching cells form one region; cells separated by a one-pixel background
line, as in BBBC041Seg, stay apart.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .images import ImageReadError, read_image

REGION_COLUMNS: tuple[str, ...] = ("region_id", "x_min", "y_min", "x_max", "y_max", "area")

MASK_SUFFIX = "_mask"
MASKS_FOLDER = "masks"
IMAGES_FOLDER = "images"


def is_mask_path(path) -> bool:
    """The file-name convention for masks.

    ``<name>_mask.<ext>`` anywhere, or any image inside a ``masks/`` folder that has an
    ``images/`` folder beside it.
    """
    p = Path(path)
    if p.stem.lower().endswith(MASK_SUFFIX):
        return True
    parent = p.parent
    return parent.name.lower() == MASKS_FOLDER and (parent.parent / IMAGES_FOLDER).is_dir()


def mask_from_array(arr: np.ndarray) -> np.ndarray:
    """Cell pixels (any non-zero value; for RGB(A), any non-zero colour channel)."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., : min(3, arr.shape[-1])].max(axis=-1) if arr.shape[-1] != 2 else arr[..., 0]
    return arr > 0


def read_mask(path) -> np.ndarray:
    """Read a cell mask as a (H, W) bool array; RGB-stored and 0/255 masks are handled.

    Any non-zero pixel is a cell pixel, so instance-label images and 3-level masks
    (0 background, 128 cytoplasm, 255 nucleus) also give the cell area.
    """
    arr = read_image(path)
    mask = mask_from_array(arr)
    if not mask.any():
        import warnings

        warnings.warn(f"{path}: mask has no cell pixels", stacklevel=2)
    return mask


def mask_to_regions(mask: np.ndarray, connectivity: int = 1) -> tuple[np.ndarray, pd.DataFrame]:
    """Label each connected region of cell pixels and measure it.

    Parameters
    ----------
    mask : (H, W) array; non-zero = cell.
    connectivity : 1 for 4-neighbour (default, the BFS of the paper), 2 for 8-neighbour.

    Returns
    -------
    labels : (H, W) int32, 0 background, regions 1..N in raster order.
    regions : DataFrame[region_id, x_min, y_min, x_max, y_max, area]; pixel coordinates,
        x is the column, maxima exclusive.
    """
    from skimage.measure import label, regionprops_table

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    labels = label(mask > 0, connectivity=connectivity).astype(np.int32)
    props = regionprops_table(labels, properties=("label", "bbox", "area"))
    df = pd.DataFrame(
        {
            "region_id": np.asarray(props["label"], dtype=np.int64),
            "x_min": np.asarray(props["bbox-1"], dtype=np.int64),
            "y_min": np.asarray(props["bbox-0"], dtype=np.int64),
            "x_max": np.asarray(props["bbox-3"], dtype=np.int64),
            "y_max": np.asarray(props["bbox-2"], dtype=np.int64),
            "area": np.asarray(props["area"], dtype=np.int64),
        },
        columns=list(REGION_COLUMNS),
    )
    return labels, df


def read_mask_regions(path) -> tuple[np.ndarray, pd.DataFrame]:
    """:func:`read_mask` then :func:`mask_to_regions`."""
    return mask_to_regions(read_mask(path))


__all__ = [
    "ImageReadError",
    "REGION_COLUMNS",
    "is_mask_path",
    "mask_from_array",
    "mask_to_regions",
    "read_mask",
    "read_mask_regions",
]
