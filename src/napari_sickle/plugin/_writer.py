"""The plugin's npe2 writers. Neither ever overwrites an existing file.

Each file is written to a temporary file in the target folder and moved into place in one
step (:func:`napari_sickle._atomic.atomic_write`): a failed write (full disk, bad data)
leaves nothing behind, so the retry is not refused, and files get the usual permissions.

npe2 single-layer writer convention: ``writer(path, data, attributes) -> [path]``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import RBC_TYPES


def _refuse_existing(path: Path) -> None:
    if path.exists():
        raise FileExistsError(f"{path} already exists; napari-sickle never overwrites a file, choose a new name")


def shapes_to_regions(data, attributes: dict) -> pd.DataFrame:
    """Regions table from Shapes data + layer attributes (features, metadata, name).

    Boxes are the bounding boxes of the shapes; features give the other columns.
    Missing schema columns are filled: ``image`` from metadata['path'] or the layer
    name, ``region_id`` 1..N, type columns 0. Features that the reader derived for
    display (listed in metadata) are left out so a file round-trips unchanged.
    """
    from ..io.formats import BOX_COLUMNS
    from ..layers.annotations import DERIVED_KEY, rectangles_to_boxes

    attributes = attributes or {}
    boxes = rectangles_to_boxes(data)
    feats = attributes.get("features")
    feats = pd.DataFrame(feats).reset_index(drop=True) if feats is not None else pd.DataFrame(index=range(len(boxes)))
    if len(feats) != len(boxes):
        raise ValueError(f"layer has {len(boxes)} shapes but {len(feats)} feature rows")
    meta = attributes.get("metadata") or {}
    derived = [c for c in meta.get(DERIVED_KEY, []) if c in feats.columns]
    feats = feats.drop(columns=derived + [c for c in BOX_COLUMNS if c in feats.columns])
    df = pd.concat([feats, boxes], axis=1)
    n = len(df)
    if "image" not in df.columns:
        src = meta.get("path") or attributes.get("name") or ""
        df["image"] = Path(str(src)).name if src else ""
    if "region_id" not in df.columns:
        df["region_id"] = np.arange(1, n + 1)
    for t in RBC_TYPES:
        if t not in df.columns:
            df[t] = 0
        else:
            df[t] = df[t].astype(float).round().astype(int)
    for c in BOX_COLUMNS:
        v = df[c].to_numpy(dtype=float)
        df[c] = np.round(v).astype(np.int64) if np.allclose(v, np.round(v)) else v
    return df


def write_regions_csv(path: str, data, attributes: dict) -> list[str]:
    """Shapes layer -> regions CSV (docs/formats.md). Refuses an existing file."""
    from ..io.formats import write_regions_csv as _write

    p = Path(path)
    if p.suffix.lower() != ".csv":
        p = p.with_suffix(p.suffix + ".csv") if p.suffix else p.with_suffix(".csv")
    from .._atomic import atomic_write
    from ..io.formats import validate_regions

    _refuse_existing(p)
    df = validate_regions(shapes_to_regions(data, attributes), source=f"table for {p}")
    atomic_write(p, lambda tmp: _write(df, tmp, overwrite=True), overwrite=False)
    return [str(p)]


def write_labels(path: str, data, attributes: dict) -> list[str]:
    """Labels layer -> TIFF (any non-negative ids, any ndim) or PNG (2-D, ids <= 65535, uint16).

    Refuses an existing file, negative ids, and ids or dimensions that PNG cannot hold.
    """
    p = Path(path)
    ext = p.suffix.lower()
    if ext not in (".tif", ".tiff", ".png"):
        raise ValueError(f"{p}: labels can be saved as .tif, .tiff or .png, not {ext or 'no extension'!r}")
    arr = np.asarray(data)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"{p}: labels must be integers, got dtype {arr.dtype}")
    lo = int(arr.min()) if arr.size else 0
    hi = int(arr.max()) if arr.size else 0
    if lo < 0:
        raise ValueError(f"{p}: labels hold negative id {lo}; only ids >= 0 can be saved")
    _refuse_existing(p)
    from .._atomic import atomic_write

    if ext == ".png":
        if arr.ndim != 2:
            raise ValueError(
                f"{p}: PNG holds one 2-D label image, this layer is {arr.ndim}-D {arr.shape}; save as .tif"
            )
        if hi > 65535:
            raise ValueError(f"{p}: label id {hi} does not fit a 16-bit PNG (max 65535); save as .tif")
        from PIL import Image

        out = arr.astype(np.uint16)
        atomic_write(p, lambda tmp: Image.fromarray(out).save(tmp, format="PNG"), overwrite=False)
    else:
        import tifffile

        dtype = np.uint8 if hi < 2**8 else np.uint16 if hi < 2**16 else np.uint32 if hi < 2**32 else np.uint64
        atomic_write(p, lambda tmp: tifffile.imwrite(tmp, arr.astype(dtype), compression="zlib"), overwrite=False)
    return [str(p)]
