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
import os
import tempfile
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
    """Write ``ckpt`` atomically (temp file in the same folder, then ``os.replace``)."""
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(ckpt, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


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
        raise CheckpointError(
            f"{path} was written by a newer napari-sickle (format {ckpt['format_version']})."
        )
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(
            f"{path} holds a {ckpt.get('kind')!r} model ({ckpt.get('arch')}), but a {kind!r} model is needed here."
        )
    return ckpt


def sklearn_to_bytes(model: Any) -> bytes:
    """Serialise a scikit-learn estimator safely with skops."""
    import skops.io as sio

    return sio.dumps(model)


def sklearn_from_bytes(blob: bytes) -> Any:
    """Load a scikit-learn estimator written by :func:`sklearn_to_bytes` (no arbitrary code)."""
    import skops.io as sio

    untrusted = sio.get_untrusted_types(data=blob)
    allowed = [t for t in untrusted if t.startswith(("sklearn.", "numpy.", "scipy."))]
    bad = sorted(set(untrusted) - set(allowed))
    if bad:
        raise CheckpointError(f"Embedded classifier contains untrusted types: {bad}")
    return sio.loads(blob, trusted=allowed)


def as_checkpoint(ckpt_or_path, kind: str, map_location="cpu") -> dict:
    """A checkpoint dict of ``kind`` from a path (loaded and validated) or an already loaded dict."""
    if not isinstance(ckpt_or_path, dict):
        return load_checkpoint(ckpt_or_path, kind=kind, map_location=map_location)
    if ckpt_or_path.get("kind") != kind:
        raise CheckpointError(
            f"This checkpoint holds a {ckpt_or_path.get('kind')!r} model, but a {kind!r} model is needed here."
        )
    return ckpt_or_path
