"""Where models are cached. Override with the NAPARI_SICKLE_CACHE environment variable."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    env = os.environ.get("NAPARI_SICKLE_CACHE")
    if env:
        p = Path(env).expanduser()
    else:
        from platformdirs import user_cache_dir

        p = Path(user_cache_dir("napari-sickle"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def sickle_data_dir() -> Path | None:
    """The SICKLE_DATA folder (real datasets for tests/benchmarks) or None if absent."""
    env = os.environ.get("SICKLE_DATA")
    cands = [Path(env)] if env else []
    cands.append(Path(__file__).resolve().parents[3] / "shared" / "data")
    cands.append(Path.cwd().parent / "shared" / "data")
    for c in cands:
        if c.is_dir():
            return c
    return None
