"""One checkpoint format for every model kind.

A checkpoint is a ``torch.save``-d dict of tensors and plain Python values only, so it
loads with ``torch.load(..., weights_only=True)``: opening a file runs no code.
Non-tensor objects (e.g. the scikit-learn abnormal classifier) are stored as bytes in a
safe format (skops) under ``extra``.

Keys:
    format          "napari-sickle-checkpoint"
    format_version  int
    kind            "detector" | "multilabel" | "bm" | "unet"
    arch            architecture name (e.g. "mobilenet-v3", "resnet18")
    config          dict: class_names, input_size, mean, std and anything needed to rebuild
    recipe          dict: the training recipe (optimiser, lr, epochs, augmentations, seed, data)
    metrics         dict: validation metrics of this checkpoint
    state_dict      the model's state dict
    extra           dict: optional extra state (optimizer state for --resume, epoch, bytes blobs)
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path
from typing import Any

FORMAT = "napari-sickle-checkpoint"
FORMAT_VERSION = 1
KINDS = ("detector", "multilabel", "bm", "unet")


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or of the wrong kind."""


def make_checkpoint(
    kind: str,
    arch: str,
    state_dict: dict,
    config: dict | None = None,
    recipe: dict | None = None,
    metrics: dict | None = None,
    extra: dict | None = None,
) -> dict:
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "arch": arch,
        "config": dict(config or {}),
        "recipe": dict(recipe or {}),
        "metrics": dict(metrics or {}),
        "state_dict": state_dict,
        "extra": dict(extra or {}),
    }


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> Path:
    """Write ``ckpt`` atomically (temp file in the same folder, then ``os.replace``), with the
    usual file permissions (umask)."""
    import torch

    from .._atomic import atomic_write

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(ckpt, fh)

    return atomic_write(path, write)


def load_checkpoint(path: str | os.PathLike, kind: str | None = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint; ``kind`` checks the model kind. Raises CheckpointError."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes).")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code, ...
        raise CheckpointError(
            f"Checkpoint {path} could not be read as a napari-sickle checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})."
        ) from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a napari-sickle checkpoint (no '{FORMAT}' header).")
    if ckpt.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer napari-sickle (format {ckpt['format_version']}).")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {ckpt.get('kind')!r} model ({ckpt.get('arch')}), but a {kind!r} model is needed here."
        )
    return ckpt


#: The only types an embedded scikit-learn classifier may hold: what ``fit_abnormal_model``
#: stores (gradient boosting on the six outputs, or a constant classifier when training saw
#: one class) and the objects inside them. Exact ``module.Class`` names, no prefixes: skops
#: would otherwise import and call whatever a crafted file names.
SKLEARN_ALLOWED_TYPES: frozenset[str] = frozenset(
    {
        "sklearn.ensemble._gb.GradientBoostingClassifier",
        "sklearn.dummy.DummyClassifier",
        "sklearn.tree._classes.DecisionTreeRegressor",
        "sklearn.tree._tree.Tree",
        "sklearn._loss.loss.HalfBinomialLoss",
        "sklearn._loss._loss.CyHalfBinomialLoss",
        "sklearn._loss.link.LogitLink",
        "sklearn._loss.link.Interval",
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.random.mtrand.RandomState",
        "numpy.random._mt19937.MT19937",
        "builtins.dict",
        "builtins.list",
        "builtins.tuple",
        "builtins.str",
        "builtins.int",
        "builtins.float",
        "builtins.bool",
        "builtins.NoneType",
        "builtins.bytes",
    }
)
#: Types of the estimator itself (the top-level object).
SKLEARN_ALLOWED_ROOTS = ("sklearn.ensemble._gb.GradientBoostingClassifier", "sklearn.dummy.DummyClassifier")
_NUMPY_SCALARS = {
    "bool",
    "bool_",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "float32",
    "float64",
    "longlong",
    "ulonglong",
    "intc",
    "uintc",
    "str_",
    "object_",
}


def sklearn_to_bytes(model: Any) -> bytes:
    """Serialise a scikit-learn estimator safely with skops (only the allowed types)."""
    import skops.io as sio

    blob = sio.dumps(model)
    sklearn_types(blob, source="classifier to be saved")  # refuse now what could not be loaded
    return blob


def _allowed(name: str) -> bool:
    if name in SKLEARN_ALLOWED_TYPES:
        return True
    mod, _, cls = name.rpartition(".")
    return mod in ("numpy", "numpy.dtypes") and (cls in _NUMPY_SCALARS or cls.endswith("DType"))


def sklearn_types(blob: bytes, source: str = "checkpoint") -> list[str]:
    """Every ``module.Class`` named in a skops blob (its ``schema.json``, every node);
    CheckpointError naming ``source`` and the type if one is not in the allow-list."""
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as zf:
            schema = json.loads(zf.read("schema.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{source}: the embedded classifier is not a readable skops file ({exc})") from exc
    names: list[str] = []

    def walk(node) -> None:
        if isinstance(node, dict):
            if "__class__" in node or "__module__" in node:
                names.append(f"{node.get('__module__')}.{node.get('__class__')}")
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    root = f"{schema.get('__module__')}.{schema.get('__class__')}" if isinstance(schema, dict) else "?"
    bad = sorted({name for name in names if not _allowed(name)})
    if bad:
        raise CheckpointError(
            f"{source}: the embedded classifier holds type(s) {', '.join(bad)}, which "
            "napari-sickle never stores; refusing to load it (it could run code)"
        )
    if root not in SKLEARN_ALLOWED_ROOTS:
        raise CheckpointError(
            f"{source}: the embedded classifier is a {root}, not one napari-sickle stores; refusing to load it"
        )
    return sorted(set(names))


def sklearn_from_bytes(blob: bytes, source: str = "checkpoint") -> Any:
    """Load a scikit-learn estimator written by :func:`sklearn_to_bytes`.

    Every type named anywhere in the blob must be in :data:`SKLEARN_ALLOWED_TYPES`, and skops
    is told to trust exactly the allowed ones it asks about (``get_untrusted_types``), nothing
    by prefix. Anything else raises CheckpointError naming ``source`` and the type."""
    import skops.io as sio

    sklearn_types(blob, source)
    try:
        untrusted = sio.get_untrusted_types(data=blob)
    except Exception as exc:  # noqa: BLE001 - a malformed blob
        raise CheckpointError(f"{source}: the embedded classifier cannot be read ({type(exc).__name__})") from exc
    bad = sorted(t for t in untrusted if not _allowed(t))
    if bad:
        raise CheckpointError(
            f"{source}: the embedded classifier holds type(s) {', '.join(bad)}, which "
            "napari-sickle never stores; refusing to load it (it could run code)"
        )
    try:
        return sio.loads(blob, trusted=list(untrusted))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{source}: the embedded classifier cannot be loaded ({type(exc).__name__}: {_first_line(exc)})"
        ) from exc


def _first_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def load_state(model, state_dict: dict, source: str, what: str) -> None:
    """``model.load_state_dict(state_dict)``; a mismatch raises CheckpointError in one line
    naming ``source``, ``what`` it should be and a few of the missing / unexpected / wrong-size keys
    (torch's own message lists every key, several KB for a whole network)."""
    try:
        model.load_state_dict(state_dict)
        return
    except RuntimeError as exc:
        own = model.state_dict()
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        shape = [
            k
            for k in own
            if k in state_dict and hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape)
        ]
        parts = [
            f"{len(v)} {label} (e.g. {v[0]})"
            for label, v in (("missing keys", missing), ("unexpected keys", unexpected), ("size mismatches", shape))
            if v
        ]
        detail = "; ".join(parts) or _first_line(exc)
        raise CheckpointError(f"{source}: does not fit {what}: {detail}") from exc


def as_checkpoint(ckpt_or_path, kind: str, map_location="cpu") -> dict:
    """A checkpoint dict of ``kind`` from a path (loaded and validated) or an already loaded dict."""
    if not isinstance(ckpt_or_path, dict):
        return load_checkpoint(ckpt_or_path, kind=kind, map_location=map_location)
    if ckpt_or_path.get("kind") != kind:
        raise CheckpointError(
            f"This checkpoint holds a {ckpt_or_path.get('kind')!r} model, but a {kind!r} model is needed here."
        )
    return ckpt_or_path
