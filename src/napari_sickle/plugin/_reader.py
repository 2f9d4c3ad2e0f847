"""The plugin's npe2 reader: one entry point for every file and folder convention.

``napari_get_reader(path)`` returns a reader function for paths it handles and None
otherwise (see docs/formats.md for the conventions). A claimed file that cannot be read
raises ValueError with a message naming the file and the problem.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import IMAGE_EXTENSIONS
from ..io.images import ImageReadError, is_image_path, read_image

ReaderFunction = Callable[[object], list]


def napari_get_reader(path) -> ReaderFunction | None:
    """Return a reader for ``path`` (str, Path or list of them) or None."""
    if isinstance(path, (list, tuple)):
        if not path:
            return None
        readers = [_reader_for(Path(p)) for p in path]
        if any(r is None for r in readers):
            return None

        def read_many(paths):
            out = []
            for r, p in zip(readers, paths):
                out.extend(r(p))
            return out

        return read_many
    return _reader_for(Path(path))


def _reader_for(p: Path) -> ReaderFunction | None:
    if p.is_dir():
        return _dir_reader(p)
    suffix = p.suffix.lower()
    if not p.exists():
        return None
    if suffix in (*IMAGE_EXTENSIONS, ".xml", ".csv", ".txt") and p.stat().st_size == 0:
        return _wrap(_empty_file)
    if suffix in IMAGE_EXTENSIONS:
        from ..io.masks import is_mask_path

        return _wrap(read_mask_file if is_mask_path(p) else read_image_file)
    if suffix == ".xml":
        from ..io.formats import looks_like_voc

        return _wrap(read_voc_file) if looks_like_voc(p) else None
    if suffix == ".csv":
        from ..io.formats import looks_like_regions_csv

        return _wrap(read_regions_file) if looks_like_regions_csv(p) or _partly_regions_csv(p) else None
    if suffix == ".txt":
        from ..io.formats import looks_like_points

        return _wrap(read_points_file) if looks_like_points(p) else None
    return None


def _partly_regions_csv(p: Path) -> bool:
    """A CSV whose header has a box column and another regions column: a regions CSV with a
    column missing, claimed so that reading it names the missing column."""
    from ..io.formats import BOX_COLUMNS, REGIONS_REQUIRED

    try:
        header = set(pd.read_csv(p, nrows=0).columns)
    except Exception:  # noqa: BLE001
        return False
    return bool(header & set(BOX_COLUMNS)) and len(header & set(REGIONS_REQUIRED)) >= 2


def _dir_reader(d: Path) -> ReaderFunction | None:
    from ..io.datasets import class_folders

    if (d / "images").is_dir() and (d / "masks").is_dir():
        return _wrap(read_pair_folder)
    files = [f for f in d.iterdir() if f.is_file() and is_image_path(f)]
    if any(f.stem.lower().endswith("_mask") for f in files):
        return _wrap(read_pair_folder)
    if _crop_table(d) is not None:
        return _wrap(read_crop_folder)
    if not files and len(class_folders(d)) >= 2:
        return _wrap(read_crop_folder)
    return None


def _wrap(func):
    """Reader function: accepts a path or list; errors become ValueError naming the file."""

    def reader(path):
        p = Path(path[0] if isinstance(path, (list, tuple)) else path)
        try:
            return func(p)
        except (FileExistsError, ValueError) as exc:
            msg = str(exc)
            if str(p) not in msg and p.name not in msg:
                msg = f"{p}: {msg}"
            raise ValueError(msg) from exc
        except OSError as exc:
            raise ValueError(f"{p}: cannot read ({exc})") from exc

    reader.__name__ = func.__name__
    reader.__doc__ = func.__doc__
    return reader


# ------------------------------------------------------------------ single files
def _empty_file(p: Path) -> list:
    """A zero-byte file of a claimed type: say so instead of 'no reader found'."""
    raise ValueError(f"{p}: file is empty (0 bytes)")


def read_image_file(p: Path) -> list:
    """A smear image -> Image layer (``rgb`` for 3/4 channels)."""
    from ..layers.annotations import image_layer

    return [image_layer(read_image(p), name=p.stem, path=str(p))]


def read_mask_file(p: Path) -> list:
    """A mask (``*_mask.*`` or in ``masks/``) -> Labels, one label per connected region."""
    from ..io.masks import mask_to_regions, read_mask
    from ..layers.annotations import labels_layer

    labels, regions = mask_to_regions(read_mask(p))
    return [
        labels_layer(labels, regions, name=f"{p.stem} regions" if p.parent.name == "masks" else p.stem, path=str(p))
    ]


def read_voc_file(p: Path) -> list:
    """Pascal VOC XML -> Shapes rectangles with a ``class`` feature."""
    from ..io.formats import read_voc
    from ..layers.annotations import voc_shapes_layer

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        df = read_voc(p)
    for w in caught:  # re-emit so napari/pytest see them with the right origin
        warnings.warn(str(w.message), w.category, stacklevel=2)
    return [voc_shapes_layer(df, name=f"{p.stem} boxes", path=str(p))]


def read_regions_file(p: Path) -> list:
    """Regions CSV -> Shapes rectangles with every table column as a feature."""
    from ..io.formats import read_regions_csv
    from ..layers.annotations import regions_shapes_layer

    return [regions_shapes_layer(read_regions_csv(p), name=p.stem, path=str(p))]


def read_points_file(p: Path) -> list:
    """Chula-style ``x y class_id`` text -> Points with ``class_id``/``class`` features."""
    from ..io.formats import find_class_names, read_points
    from ..layers.annotations import points_layer

    return [points_layer(read_points(p), name=f"{p.stem} points", class_names=find_class_names(p), path=str(p))]


# ------------------------------------------------------------------ folders
def read_pair_folder(d: Path) -> list:
    """images/ + masks/ (or ``*_img``/``*_mask`` files): Image + Labels per pair.

    When all images share one shape the pairs are stacked into one Image (N, H, W[, C])
    and one Labels (N, H, W) layer whose region ids are unique across slices
    (``features`` add a ``slice`` column); otherwise each pair gives two layers.
    A mask whose size differs from its image raises ValueError naming both files.
    """
    from ..io.datasets import scan_image_mask_pairs
    from ..io.masks import mask_to_regions, read_mask
    from ..layers.annotations import image_layer, labels_layer

    pairs = scan_image_mask_pairs(d)
    images, labels, tables, names = [], [], [], []
    offset = 0
    for i, (ip, mp) in enumerate(zip(pairs["image"], pairs["mask"])):
        img = read_image(ip)
        mask = read_mask(mp)
        if mask.shape != img.shape[:2]:
            raise ValueError(
                f"mask {mp} is {mask.shape[1]}x{mask.shape[0]} (WxH) but its image {ip} is "
                f"{img.shape[1]}x{img.shape[0]}; a mask must match its image"
            )
        lab, reg = mask_to_regions(mask)
        images.append(img)
        labels.append(lab)
        reg = reg.copy()
        reg.insert(0, "slice", i)
        reg.insert(1, "image", Path(ip).name)
        tables.append(reg)
        names.append(Path(ip).stem)
    same = len({(a.shape, a.dtype) for a in images}) == 1
    if len(images) == 1 or not same:
        out = []
        for img, lab, reg, name, ip in zip(images, labels, tables, names, pairs["image"]):
            out.append(image_layer(img, name=name, path=str(ip)))
            out.append(labels_layer(lab, reg.drop(columns=["slice"]), name=f"{name} regions", path=str(ip)))
        return out
    stacked = []
    for lab, reg in zip(labels, tables):
        lab = lab.astype(np.int64)
        lab[lab > 0] += offset
        reg["region_id"] = reg["region_id"] + offset
        offset = int(lab.max()) if lab.max() > 0 else offset
        stacked.append(lab)
    lab_stack = np.stack(stacked)
    dtype = np.int32 if offset < 2**31 - 1 else np.int64
    feats = pd.concat(tables, ignore_index=True)
    files = [str(p) for p in pairs["image"]]
    img_ldt = image_layer(np.stack(images), name=d.name or "images", path=str(d))
    img_ldt[1]["rgb"] = images[0].ndim == 3 and images[0].shape[-1] in (3, 4)
    img_ldt[1]["metadata"]["files"] = files
    lab_ldt = labels_layer(lab_stack.astype(dtype), feats, name=f"{d.name or 'images'} regions", path=str(d))
    lab_ldt[1]["metadata"]["files"] = [str(p) for p in pairs["mask"]]
    return [img_ldt, lab_ldt]


_CLASS_COLUMNS = ("class_name", "class", "label", "pbc_class", "matek_code", "class_id")
_PATH_COLUMNS = ("image", "path", "file")


def _crop_table(d: Path) -> tuple[pd.DataFrame, str, str] | None:
    """(table, path column, class column) of a ``labels.csv`` listing crops, or None."""
    f = d / "labels.csv"
    if not f.is_file():
        return None
    try:
        t = pd.read_csv(f)
    except Exception:  # noqa: BLE001
        return None
    pcol = next((c for c in _PATH_COLUMNS if c in t.columns), None)
    ccol = next((c for c in _CLASS_COLUMNS if c in t.columns), None)
    if pcol is None or ccol is None or not len(t):
        return None
    if not all(is_image_path(str(x)) for x in t[pcol].head(20)):
        return None
    # one row per crop: point tables (e.g. Chula: many rows per smear) are not crop lists
    if t[pcol].duplicated().any():
        return None
    return t, pcol, ccol


def read_crop_folder(d: Path) -> list:
    """Single-cell crops as one padded Image stack with file names and classes in metadata.

    Classes come from a ``labels.csv`` (path column ``image``/``path``/``file`` relative
    to the folder; class column ``class_name``/``class``/``label``/...) when present,
    otherwise from the class sub-folder names. Unreadable crops are skipped with a
    warning; if none is readable a ValueError names the folder.
    """
    from ..layers.annotations import crop_stack_layer

    table = _crop_table(d)
    if table is not None:
        t, pcol, ccol = table
        entries = [(d / str(p), str(c)) for p, c in zip(t[pcol], t[ccol])]
    else:
        from ..io.datasets import scan_class_folders

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = scan_class_folders(d, check=False)
        entries = [(Path(p), c) for p, c in zip(df["path"], df["label"])]
    crops, files, classes, bad = [], [], [], []
    for p, c in entries:
        try:
            crops.append(read_image(p))
        except ImageReadError as exc:
            bad.append(str(exc))
            continue
        files.append(str(p.relative_to(d)) if p.is_relative_to(d) else str(p))
        classes.append(c)
    if bad:
        warnings.warn(f"{d}: skipped {len(bad)} unreadable crop(s): {bad[0]}", UserWarning, stacklevel=2)
    if not crops:
        raise ValueError(f"{d}: no readable crop images ({len(bad)} unreadable)")
    return [crop_stack_layer(crops, files, classes, name=f"{d.name} crops", path=str(d))]
