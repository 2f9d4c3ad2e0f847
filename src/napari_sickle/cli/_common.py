"""What the command-line programs share: user errors reported in one line, ``-o
KEY=VALUE`` options, strict one-line JSON, and the input checks that give a clear message
before any heavy import."""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
from pathlib import Path
from typing import Any

from ..constants import IMAGE_EXTENSIONS

#: The multi-label protocol run of ``python -m napari_sickle.train``.
PROTOCOL = "multilabel-protocol"

#: Exit code for bad input (argparse uses 2 as well).
EXIT_USAGE = 2
EXIT_FAILED = 1

_IMAGE_EXTS = frozenset(IMAGE_EXTENSIONS)


class UsageError(ValueError):
    """Bad input detected before or during a run: reported in one line, exit code 2."""


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
def user_error_types() -> tuple[type, ...]:
    """Exception types reported as bad input (exit code 2) rather than as a failure."""
    # OSError: environment problems (full disk, no permission) are reported like bad input
    types: list[type] = [UsageError, OSError]
    for mod, name in (
        ("napari_sickle.io.datasets", "DatasetError"),
        ("napari_sickle.io.images", "ImageReadError"),
        ("napari_sickle.models.checkpoint", "CheckpointError"),
    ):
        try:
            types.append(getattr(importlib.import_module(mod), name))
        except Exception:
            pass
    return tuple(types)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (its type name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    return " ".join(text.split())


def debug_requested(args: argparse.Namespace) -> bool:
    """``--debug`` or ``NAPARI_SICKLE_DEBUG``: print the traceback after the one-line error."""
    return bool(getattr(args, "debug", False) or os.environ.get("NAPARI_SICKLE_DEBUG"))


def on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    """SIGTERM ends a run like Ctrl-C (one line, exit code 130)."""
    raise KeyboardInterrupt


# ---------------------------------------------------------------------------------------
# options
# ---------------------------------------------------------------------------------------
def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> ``(key, value)`` as ``training.recipes.parse_option`` reads it, with
    argparse's error type so a malformed ``-o`` is a usage error."""
    from ..training.recipes import RecipeError
    from ..training.recipes import parse_option as _parse

    try:
        return _parse(text)
    except RecipeError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_option_argument(p: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``-o/--option KEY=VALUE`` argument (collected in ``args.options``)."""
    p.add_argument(
        "-o",
        "--option",
        dest="options",
        action="append",
        type=parse_option,
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )


# ---------------------------------------------------------------------------------------
# JSON
# ---------------------------------------------------------------------------------------
def _jsonable(obj: Any):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item"):
        try:
            return obj.item()
        except Exception:
            pass
    return str(obj)


def to_json(obj: dict) -> str:
    """One line of strict JSON (NaN/inf become null, numpy values become Python)."""
    return json.dumps(_replace_nan(obj), default=_jsonable)


def _replace_nan(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _replace_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_replace_nan(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------
# input checks
# ---------------------------------------------------------------------------------------
def is_image_file(p: Path) -> bool:
    """A file with an image extension (:data:`napari_sickle.constants.IMAGE_EXTENSIONS`)."""
    return p.is_file() and p.suffix.lower() in _IMAGE_EXTS


def check_data(data: str, kind: str) -> None:
    """Raise :class:`UsageError` for input that cannot possibly train (``kind`` a training
    kind) or be evaluated (``kind`` "eval")."""
    if data == "simulated":
        return
    if kind in ("detector", "eval") and data.split(":", 1)[0] in ("composed", "composed-test") and ":" in data:
        data = data.split(":", 1)[1]  # composed smears from this folder of crops
        if not Path(data).expanduser().is_dir():
            raise UsageError(f"--data composed:{data}: no such folder of crops.")
        return
    if kind in ("detector", "eval") and (data == "real" or data.startswith("real:")):
        from ..data.real_smears import data_root

        root = data_root(data.split(":", 1)[1] if ":" in data else None)
        if not root.is_dir():
            raise UsageError(f"--data {data}: no such folder {root} (set SICKLE_DATA or use real:<folder>).")
        return
    path = Path(data).expanduser()
    if not path.exists():
        raise UsageError(f"--data {data}: no such file or folder.")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise UsageError(f"--data {data}: expected a folder or a .csv table, got a {path.suffix or 'plain'} file.")
        if path.stat().st_size == 0:
            raise UsageError(f"--data {data}: the CSV file is empty.")
        if kind == "multilabel":
            from ..io.datasets import read_multilabel_table

            read_multilabel_table(path)  # DatasetError naming a missing column / file
        return
    entries = [p for p in path.iterdir() if not p.name.startswith(".")]
    if not entries:
        raise UsageError(f"--data {data}: the folder is empty.")
    names = {p.name for p in entries}
    if {"images", "masks"} <= names or {"JPEGImages", "Annotations"} <= names:
        for sub in ("images", "JPEGImages"):
            if (path / sub).is_dir() and not any(is_image_file(p) for p in (path / sub).iterdir()):
                raise UsageError(f"--data {data}: {sub}/ holds no images.")
        return
    subdirs = sorted(p for p in entries if p.is_dir())
    if kind == "bm" and (
        "labels.csv" in names or any(n.startswith("Class Labels of ") and n.endswith(".csv") for n in names)
    ):
        return  # a table names the classes (wbc-zheng2018 layout, or the Zheng folder as published)
    if subdirs and kind in ("multilabel", "bm", PROTOCOL):
        counts = {d.name: sum(1 for p in d.rglob("*") if is_image_file(p)) for d in subdirs}
        if sum(counts.values()) == 0:
            raise UsageError(f"--data {data}: none of the class folders ({', '.join(counts)}) holds an image.")
        if len(counts) == 1:
            raise UsageError(
                f"--data {data}: only one class folder ('{subdirs[0].name}'); a classifier needs at "
                "least two classes (its AUCs would be undefined)."
            )
        for name, n in counts.items():
            if n == 0:
                raise UsageError(f"--data {data}: class folder '{name}' is empty.")
            if n == 1:
                raise UsageError(
                    f"--data {data}: class folder '{name}' has only one image; every class needs at "
                    "least two (one to train on, one to validate)."
                )
        return
    if not subdirs and not any(is_image_file(p) for p in entries) and not any(p.suffix == ".csv" for p in entries):
        raise UsageError(f"--data {data}: the folder holds no images, class folders or dataset layout.")
