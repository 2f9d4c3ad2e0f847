"""Named, versioned models shipped inside the package (``napari_sickle/weights``).

``weights/manifest.json`` lists each model: a name (``rbc-real-v6``), its task (``rbc``,
``wbc`` or ``unet``), one file per role (``detector`` / ``classifier`` for ``rbc``,
``classifier`` for ``wbc``, ``unet`` for ``unet``) with the file's sha256, a one-line
description of its training data for the GUI, and whether it is the task's default.
Files are verified against their sha256 before every load; nothing is downloaded or trained.
Model cards are in docs/models.md.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

TASKS = ("rbc", "wbc", "unet")
MANIFEST = "manifest.json"


class ModelFileError(ValueError):
    """A shipped model is unknown, missing, or does not match its recorded sha256."""


@dataclass(frozen=True)
class ShippedModel:
    name: str
    task: str
    description: str
    files: dict = field(default_factory=dict)  # role -> {"file": name, "sha256": hex}
    default: bool = False

    def path(self, role: str) -> Path:
        """The verified file for ``role``; raises ModelFileError (one line) when it is
        missing or its sha256 differs from the manifest."""
        if role not in self.files:
            raise ModelFileError(f"model {self.name!r} has no {role!r} file (it has: {', '.join(self.files)})")
        entry = self.files[role]
        p = weights_dir() / entry["file"]
        if not p.is_file():
            raise ModelFileError(f"shipped model file {p} is missing; reinstall napari-sickle")
        digest = sha256_of(p)
        if digest != entry["sha256"]:
            raise ModelFileError(
                f"shipped model file {p} is corrupt or was modified (sha256 {digest[:12]}…, expected "
                f"{entry['sha256'][:12]}…); reinstall napari-sickle"
            )
        return p


def weights_dir() -> Path:
    return Path(str(resources.files("napari_sickle") / "weights"))


def sha256_of(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest() -> dict:
    p = weights_dir() / MANIFEST
    if not p.is_file():
        return {"models": []}
    return json.loads(p.read_text())


def models(task: str | None = None) -> list[ShippedModel]:
    """All shipped models, or those of one task, default first."""
    out = [ShippedModel(**m) for m in _read_manifest().get("models", [])]
    if task is not None:
        out = [m for m in out if m.task == task]
    return sorted(out, key=lambda m: (not m.default, m.name))


#: models no longer shipped, and what replaced them (named in the error for the old name)
RETIRED = {
    "rbc-real-v1": "rbc-real-v6 (its detector trained longer at a 45 px cell diameter; its classifier adds a learned cell splitter and reads half-hidden cells completed; its boxes are not merged by connected cell pixels; uncertain smears are read again with their cell lightness matched)",
    "rbc-real-v2": "rbc-real-v6 (its detector trained longer at a 45 px cell diameter; its classifier reads half-hidden cells completed; its boxes are not merged by connected cell pixels; uncertain smears are read again with their cell lightness matched)",
    "rbc-real-v3": "rbc-real-v6 (the same networks; its classifier also reads each half-hidden cell completed; its boxes are not merged by connected cell pixels; uncertain smears are read again with their cell lightness matched)",
    "rbc-real-v4": "rbc-real-v6 (the same networks; the detector's boxes are kept as regions instead of being merged by connected cell pixels, which joined crowded fields into one box; uncertain smears are read again with their cell lightness matched)",
    "rbc-real-v5": "rbc-real-v6 (the same networks; a smear whose type calls are uncertain, as on another lab's camera, is read again with its cell lightness matched to the training smears)",
}


def get(name: str) -> ShippedModel:
    for m in models():
        if m.name == name:
            return m
    known = ", ".join(m.name for m in models()) or "none"
    if name in RETIRED:
        raise ModelFileError(f"model {name!r} is no longer shipped; use {RETIRED[name]}. Shipped models: {known}")
    raise ModelFileError(f"unknown model {name!r}; shipped models: {known}")


def default(task: str) -> ShippedModel:
    """The task's default shipped model."""
    found = models(task)
    if not found:
        raise ModelFileError(f"no shipped {task} model in this installation")
    return found[0]


def is_model_name(value) -> bool:
    """True when ``value`` names a shipped model (rather than a checkpoint path)."""
    return isinstance(value, str) and any(m.name == value for m in models())


def resolve(value, task: str, role: str) -> Path:
    """A checkpoint path for ``value``: a shipped model name, a path, or None (the task's default)."""
    if value is None or value == "":
        return default(task).path(role)
    if is_model_name(value):
        m = get(value)
        if m.task != task:
            raise ModelFileError(f"model {value!r} is a {m.task} model, not a {task} model")
        return m.path(role)
    return Path(value)


def register(name: str, task: str, description: str, files: dict, default: bool = False) -> ShippedModel:
    """Copy nothing; record files already placed in ``weights_dir()`` with their sha256.

    Used by ``scripts/register_model.py`` when a model is (re)built. A new default for a task
    clears the flag on that task's other models.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    data = _read_manifest()
    entries = [m for m in data.get("models", []) if m["name"] != name]
    if default:
        for m in entries:
            if m["task"] == task:
                m["default"] = False
    rec = {
        "name": name,
        "task": task,
        "description": description,
        "files": {role: {"file": fn, "sha256": sha256_of(weights_dir() / fn)} for role, fn in files.items()},
        "default": bool(default),
    }
    entries.append(rec)
    data["models"] = sorted(entries, key=lambda m: (m["task"], m["name"]))
    (weights_dir() / MANIFEST).write_text(json.dumps(data, indent=2) + "\n")
    return ShippedModel(**rec)
