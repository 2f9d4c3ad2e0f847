"""Finding training data on disk in the folder layouts of docs/formats.md.

All scanners return pandas DataFrames of absolute paths and raise :class:`DatasetError`
(a ValueError) with a message naming the folder or file and the problem.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pandas as pd

from ..constants import RBC_TYPES
from .images import IMAGE_EXTENSIONS, is_image_path


class DatasetError(ValueError):
    """A dataset folder or table is missing, empty or malformed."""


def _visible(p: Path) -> bool:
    return not p.name.startswith(".") and not p.name.startswith("__")


def _image_files(folder: Path, recursive: bool = True) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in it if p.is_file() and _visible(p) and is_image_path(p))


def _readable(path: Path) -> bool:
    """Cheap check that an image file is decodable (header + structure, no full decode)."""
    from .images import sniff_format

    try:
        if path.stat().st_size == 0:
            return False
        fmt = sniff_format(path)
        if fmt is None:
            return False
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                return len(tf.pages) > 0
        from PIL import Image

        with Image.open(path) as im:
            im.verify()
        return True
    except Exception:  # noqa: BLE001
        return False


def _require_dir(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return root


def class_folders(root) -> list[Path]:
    """Visible sub-folders of ``root`` that hold at least one image (at any depth)."""
    root = Path(root)
    return [d for d in sorted(root.iterdir()) if d.is_dir() and _visible(d) and _image_files(d)]


def scan_class_folders(root, check: bool = True) -> pd.DataFrame:
    """Single-cell crops stored one class per sub-folder: DataFrame[path, label].

    The label is the sub-folder name; images are collected recursively inside it,
    sorted by path. Sub-folders without images are ignored with a warning.

    Unreadable files (zero-byte, not an image, corrupt header) are skipped when
    ``check`` is true; their count is ``df.attrs['skipped']`` and their paths
    ``df.attrs['skipped_files']``.

    Raises DatasetError when ``root`` is missing or holds no class folder with images.
    """
    root = _require_dir(root)
    rows, skipped = [], []
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and _visible(d)]
    if not subdirs:
        raise DatasetError(f"{root}: no class sub-folders found (expected <root>/<class>/<image>)")
    for d in subdirs:
        files = _image_files(d)
        if not files:
            warnings.warn(f"{d}: class folder holds no images; ignored", UserWarning, stacklevel=2)
            continue
        for f in files:
            if check and not _readable(f):
                skipped.append(str(f))
                continue
            rows.append((str(f.resolve()), d.name))
    if not rows:
        raise DatasetError(
            f"{root}: no readable images in its class sub-folders "
            f"({len(skipped)} unreadable file(s) skipped; extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} unreadable image file(s)", UserWarning, stacklevel=2)
    df = pd.DataFrame(rows, columns=["path", "label"])
    df.attrs["skipped"] = len(skipped)
    df.attrs["skipped_files"] = skipped
    return df


def _mask_stem(stem: str) -> str | None:
    low = stem.lower()
    return stem[: -len("_mask")] if low.endswith("_mask") else None


def _image_key(stem: str) -> str:
    return stem[: -len("_img")] if stem.lower().endswith("_img") else stem


def scan_image_mask_pairs(root) -> pd.DataFrame:
    """Image/mask pairs: DataFrame[image, mask] of absolute paths, sorted.

    Layouts (see docs/formats.md):
    * ``root/images/<name>.<ext>`` + ``root/masks/<name>.<ext>`` (the mask may also be
      ``<name>_mask.<ext>``), matched by file stem;
    * one folder with ``<name>_img.<ext>`` (or ``<name>.<ext>``) + ``<name>_mask.<ext>``.

    Images without a mask (and masks without an image) are left out with a warning.
    Raises DatasetError when no pair is found.
    """
    root = _require_dir(root)
    if (root / "images").is_dir() and (root / "masks").is_dir():
        images = {_image_key(p.stem): p for p in _image_files(root / "images", recursive=False)}
        masks = {}
        for p in _image_files(root / "masks", recursive=False):
            masks[_mask_stem(p.stem) or _image_key(p.stem)] = p
        where = f"{root}/images + {root}/masks"
    else:
        images, masks = {}, {}
        for p in _image_files(root, recursive=False):
            m = _mask_stem(p.stem)
            if m is not None:
                masks[m] = p
            else:
                images[_image_key(p.stem)] = p
        where = str(root)
    keys = sorted(set(images) & set(masks))
    lonely = sorted(set(images) ^ set(masks))
    if not keys:
        raise DatasetError(
            f"{where}: no image/mask pairs found (expected images/ + masks/ with matching "
            "names, or <name>_img.<ext> + <name>_mask.<ext> files)"
        )
    if lonely:
        warnings.warn(
            f"{where}: {len(lonely)} file(s) without a partner left out, e.g. {lonely[:3]}",
            UserWarning,
            stacklevel=2,
        )
    return pd.DataFrame([(str(images[k].resolve()), str(masks[k].resolve())) for k in keys], columns=["image", "mask"])


def scan_voc(root) -> pd.DataFrame:
    """A Pascal VOC folder: DataFrame[image, annotation] (+ ``split`` when split files exist).

    Expects ``root/JPEGImages/`` and ``root/Annotations/`` matched by stem. Split files
    ``train.txt``/``val.txt``/``test.txt`` (in ``root`` or ``root/ImageSets/Main``) list
    stems one per line; rows in none of them get split ``""``.
    """
    root = _require_dir(root)
    img_dir, ann_dir = root / "JPEGImages", root / "Annotations"
    for d in (img_dir, ann_dir):
        if not d.is_dir():
            raise DatasetError(f"{root}: not a Pascal VOC folder, {d.name}/ is missing")
    images = {p.stem: p for p in _image_files(img_dir, recursive=False)}
    anns = {p.stem: p for p in sorted(ann_dir.glob("*.xml")) if _visible(p)}
    keys = sorted(set(images) & set(anns))
    if not keys:
        raise DatasetError(f"{root}: no image in JPEGImages/ has an XML in Annotations/")
    missing = sorted(set(anns) - set(images))
    if missing:
        warnings.warn(
            f"{root}: {len(missing)} annotation(s) without image left out, e.g. {missing[:3]}",
            UserWarning,
            stacklevel=2,
        )
    df = pd.DataFrame(
        [(str(images[k].resolve()), str(anns[k].resolve())) for k in keys], columns=["image", "annotation"]
    )
    split = {}
    for name in ("train", "val", "test"):
        for folder in (root, root / "ImageSets" / "Main"):
            f = folder / f"{name}.txt"
            if f.is_file():
                for line in f.read_text(encoding="utf-8").split():
                    split.setdefault(Path(line.strip()).stem, name)
                break
    if split:
        df["split"] = [split.get(k, "") for k in keys]
    return df


def read_multilabel_table(csv) -> pd.DataFrame:
    """A multi-label table: DataFrame[path, *RBC_TYPES] with 0/1 ints and absolute paths.

    The path column may be named ``path`` or ``image``; relative paths are resolved
    against the CSV's folder. Raises DatasetError naming a missing column, a bad value
    or a missing image file.
    """
    csv = Path(csv)
    if not csv.is_file():
        raise DatasetError(f"{csv}: table does not exist")
    try:
        df = pd.read_csv(csv)
    except Exception as exc:  # noqa: BLE001
        raise DatasetError(f"{csv}: cannot parse CSV ({exc})") from exc
    col = "path" if "path" in df.columns else ("image" if "image" in df.columns else None)
    if col is None:
        raise DatasetError(f"{csv}: missing column 'path' (or 'image') with the crop file names")
    missing = [t for t in RBC_TYPES if t not in df.columns]
    if missing:
        raise DatasetError(f"{csv}: missing type column(s) {missing}; expected all of {list(RBC_TYPES)}")
    if len(df) == 0:
        raise DatasetError(f"{csv}: table has no rows")
    out = pd.DataFrame(
        {"path": [str((csv.parent / str(p)).resolve()) if not Path(str(p)).is_absolute() else str(p) for p in df[col]]}
    )
    for t in RBC_TYPES:
        vals = pd.to_numeric(df[t], errors="coerce")
        bad = ~vals.isin([0, 1])
        if bad.any():
            i = int(bad.to_numpy().nonzero()[0][0])
            raise DatasetError(f"{csv}: column {t!r} must hold 0 or 1, found {df[t].iloc[i]!r} in data row {i + 1}")
        out[t] = vals.astype(int).to_numpy()
    absent = [p for p in out["path"] if not Path(p).is_file()]
    if absent:
        raise DatasetError(f"{csv}: {len(absent)} listed file(s) do not exist, e.g. {absent[0]}")
    return out


__all__ = [
    "DatasetError",
    "class_folders",
    "read_multilabel_table",
    "scan_class_folders",
    "scan_image_mask_pairs",
    "scan_voc",
]
