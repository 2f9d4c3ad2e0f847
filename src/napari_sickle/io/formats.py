"""Tabular annotation formats: the regions CSV, Pascal VOC XML and Chula point files.

Regions CSV schema (see docs/formats.md): required columns
``image, region_id, x_min, y_min, x_max, y_max`` and the six type columns
:data:`napari_sickle.constants.RBC_TYPES` with 0/1 values; optional ``score``,
``p_<type>``, ``abnormal``, ``p_abnormal``, ``n_cells``, ``label``. Boxes are pixel
coordinates, x = column, y = row, maxima exclusive. Other columns are kept as they are.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..constants import BOX_COLUMNS, RBC_TYPES

REGIONS_REQUIRED: tuple[str, ...] = ("image", "region_id", *BOX_COLUMNS, *RBC_TYPES)
REGIONS_OPTIONAL: tuple[str, ...] = (
    "score",
    *(f"p_{t}" for t in RBC_TYPES),
    "abnormal",
    "p_abnormal",
    "n_cells",
    "label",
)
VOC_COLUMNS: tuple[str, ...] = ("image", "class", *BOX_COLUMNS)
POINTS_COLUMNS: tuple[str, ...] = ("x", "y", "class_id")


class FormatError(ValueError):
    """A file in one of the annotation formats is malformed; the message names it."""


# --------------------------------------------------------------------------- regions CSV
def looks_like_regions_csv(path) -> bool:
    """True if the CSV header has the four box columns (cheap: reads the header only)."""
    try:
        header = pd.read_csv(path, nrows=0).columns
    except Exception:  # noqa: BLE001
        return False
    return all(c in header for c in BOX_COLUMNS)


def validate_regions(df: pd.DataFrame, source: str = "regions table") -> pd.DataFrame:
    """Check the schema and return a copy with canonical dtypes and column order."""
    missing = [c for c in REGIONS_REQUIRED if c not in df.columns]
    if missing:
        raise FormatError(f"{source}: missing required column(s) {missing}")
    df = df.copy()
    df["image"] = df["image"].fillna("").astype(str)
    for c in ("region_id", *BOX_COLUMNS):
        vals = pd.to_numeric(df[c], errors="coerce")
        if vals.isna().any():
            bad = int(np.flatnonzero(vals.isna().to_numpy())[0])
            raise FormatError(f"{source}: column {c!r} has a non-numeric value in data row {bad + 1}")
        df[c] = _intify(vals)
    for c in (*RBC_TYPES, *(["abnormal"] if "abnormal" in df.columns else [])):
        vals = pd.to_numeric(df[c], errors="coerce")
        ok = vals.isin([0, 1])
        if not ok.all():
            bad = int(np.flatnonzero(~ok.to_numpy())[0])
            raise FormatError(
                f"{source}: column {c!r} must hold 0 or 1, found {df[c].iloc[bad]!r} in data row {bad + 1}"
            )
        df[c] = vals.astype(np.int64)
    if "n_cells" in df.columns:
        df["n_cells"] = _intify(pd.to_numeric(df["n_cells"], errors="coerce"))
    order = [c for c in REGIONS_REQUIRED] + [c for c in REGIONS_OPTIONAL if c in df.columns]
    order += [c for c in df.columns if c not in order]
    return df[order].reset_index(drop=True)


def _intify(vals: pd.Series) -> pd.Series:
    """Integers stay integers; fractional coordinates stay floats."""
    if vals.isna().any():
        return vals
    if np.allclose(vals.to_numpy(dtype=float), np.round(vals.to_numpy(dtype=float))):
        return vals.round().astype(np.int64)
    return vals.astype(float)


def read_regions_csv(path) -> pd.DataFrame:
    """Read and validate a regions CSV; raises FormatError naming the file and problem."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except pd.errors.EmptyDataError as exc:
        raise FormatError(f"{path}: the file is empty") from exc
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{path}: cannot parse CSV ({exc})") from exc
    return validate_regions(df, source=str(path))


def write_regions_csv(df: pd.DataFrame, path, overwrite: bool = False) -> Path:
    """Write ``df`` in the regions CSV schema; refuses to overwrite (FileExistsError)."""
    path = Path(path)
    df = validate_regions(df, source=f"table for {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "w" if overwrite else "x"
    with open(path, mode, newline="", encoding="utf-8") as fh:
        df.to_csv(fh, index=False)
    return path


# --------------------------------------------------------------------------- Pascal VOC
def looks_like_voc(path) -> bool:
    """True if the XML's root element is ``<annotation>`` (reads only the start)."""
    import xml.etree.ElementTree as ET

    try:
        for _event, elem in ET.iterparse(str(path), events=("start",)):
            return elem.tag == "annotation"
    except Exception:  # noqa: BLE001
        return False
    return False


def read_voc(xml_path) -> pd.DataFrame:
    """Boxes of a Pascal VOC XML file as DataFrame[image, class, x_min, y_min, x_max, y_max].

    Coordinates are the file's ``bndbox`` values as written (VOC pixel coordinates).
    Boxes with zero or negative width/height are dropped with a ``UserWarning`` naming
    the file and the object. ``df.attrs['size']`` holds (height, width, depth) from
    ``<size>`` when present, ``df.attrs['dropped']`` the number of dropped boxes.
    """
    import xml.etree.ElementTree as ET

    xml_path = Path(xml_path)
    if xml_path.stat().st_size == 0:
        raise FormatError(f"{xml_path}: the file is empty (0 bytes)")
    try:
        root = ET.parse(xml_path).getroot()
    except ET.ParseError as exc:
        raise FormatError(f"{xml_path}: not valid XML ({exc})") from exc
    if root.tag != "annotation":
        raise FormatError(f"{xml_path}: root element is <{root.tag}>, expected Pascal VOC <annotation>")
    image = (root.findtext("filename") or "").strip() or xml_path.stem
    rows, dropped = [], 0
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        bb = obj.find("bndbox")
        if bb is None:
            raise FormatError(f"{xml_path}: object {i} ({name!r}) has no <bndbox>")
        try:
            vals = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError) as exc:
            raise FormatError(f"{xml_path}: object {i} ({name!r}) has a missing or non-numeric box coordinate") from exc
        x0, y0, x1, y1 = vals
        if x1 <= x0 or y1 <= y0:
            dropped += 1
            warnings.warn(
                f"{xml_path}: dropped degenerate box of object {i} ({name!r}): "
                f"xmin={x0:g}, ymin={y0:g}, xmax={x1:g}, ymax={y1:g}",
                UserWarning,
                stacklevel=2,
            )
            continue
        rows.append((image, name, x0, y0, x1, y1))
    df = pd.DataFrame(rows, columns=list(VOC_COLUMNS))
    for c in BOX_COLUMNS:
        df[c] = _intify(df[c].astype(float)) if len(df) else df[c].astype(np.int64)
    size = root.find("size")
    if size is not None:
        try:
            df.attrs["size"] = tuple(int(float(size.findtext(k))) for k in ("height", "width", "depth"))
        except (TypeError, ValueError):
            pass
    df.attrs["dropped"] = dropped
    return df


# --------------------------------------------------------------------------- points txt
def _parse_point_line(line: str):
    parts = line.replace(",", " ").split()
    if len(parts) != 3:
        return None
    try:
        x, y, c = (float(p) for p in parts)
    except ValueError:
        return None
    if c != int(c):
        return None
    return x, y, int(c)


def looks_like_points(path, n_lines: int = 5) -> bool:
    """True if the first non-empty lines of a text file are ``x y class_id`` triples."""
    try:
        with open(path, encoding="utf-8", errors="strict") as fh:
            seen = 0
            for line in fh:
                if not line.strip():
                    continue
                if _parse_point_line(line) is None:
                    return False
                seen += 1
                if seen >= n_lines:
                    break
    except (OSError, UnicodeDecodeError):
        return False
    return seen > 0


def read_points(txt_path) -> pd.DataFrame:
    """Point labels (one ``x y class_id`` per line, Chula RBC-12) as DataFrame[x, y, class_id]."""
    txt_path = Path(txt_path)
    rows = []
    with open(txt_path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            rec = _parse_point_line(line)
            if rec is None:
                raise FormatError(f"{txt_path}: line {lineno} is not 'x y class_id': {line.strip()[:60]!r}")
            rows.append(rec)
    df = pd.DataFrame(rows, columns=list(POINTS_COLUMNS))
    df["x"] = _intify(df["x"].astype(float)) if len(df) else df["x"].astype(float)
    df["y"] = _intify(df["y"].astype(float)) if len(df) else df["y"].astype(float)
    df["class_id"] = df["class_id"].astype(np.int64)
    return df


def find_class_names(txt_path) -> dict[int, str]:
    """class_id -> class_name from a ``labels.csv`` in the file's folder or its parent.

    The CSV needs ``class_id`` and ``class_name`` columns (as in Chula RBC-12 here).
    Returns {} when there is none.
    """
    p = Path(txt_path)
    for folder in (p.parent, p.parent.parent):
        cand = folder / "labels.csv"
        if not cand.is_file():
            continue
        try:
            t = pd.read_csv(cand, usecols=["class_id", "class_name"])
        except Exception:  # noqa: BLE001
            continue
        t = t.dropna().drop_duplicates("class_id")
        return {int(k): str(v) for k, v in zip(t["class_id"], t["class_name"])}
    return {}


__all__ = [
    "BOX_COLUMNS",
    "FormatError",
    "POINTS_COLUMNS",
    "REGIONS_OPTIONAL",
    "REGIONS_REQUIRED",
    "VOC_COLUMNS",
    "find_class_names",
    "looks_like_points",
    "looks_like_regions_csv",
    "looks_like_voc",
    "read_points",
    "read_regions_csv",
    "read_voc",
    "validate_regions",
    "write_regions_csv",
]
