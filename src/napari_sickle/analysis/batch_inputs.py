"""Inputs of the batch analysis (:mod:`napari_sickle.analysis.batch`): the list of images
(files, folders, simulated smears), the pixel limit read from the file's header before
anything is decoded, and :class:`SmearImages`, the ``torch.utils.data.Dataset`` its
DataLoader reads them through (decoding, RGB conversion and the cell-pixel mask happen in the
reader workers). No Qt/napari imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np

from ..constants import IMAGE_EXTENSIONS

IMAGE_SUFFIXES = frozenset(IMAGE_EXTENSIONS)
#: Largest image (width x height) analysed by default; larger ones are refused before decoding.
MAX_PIXELS = 50_000_000


class InputError(ValueError):
    """The inputs cannot be analysed as given (e.g. two files would write the same results)."""


def max_pixels(value: int | None = None) -> int:
    """The pixel limit: ``value``, else ``NAPARI_SICKLE_MAX_PIXELS``, else :data:`MAX_PIXELS`."""
    if value is None:
        env = os.environ.get("NAPARI_SICKLE_MAX_PIXELS", "").strip()
        try:
            value = int(float(env)) if env else MAX_PIXELS
        except ValueError:
            raise InputError(f"NAPARI_SICKLE_MAX_PIXELS={env!r} is not a number of pixels") from None
    if int(value) < 1:
        raise InputError(f"the pixel limit must be at least 1, got {value}")
    return int(value)


_pixel_limit = max_pixels  # for functions whose ``max_pixels`` argument hides the name


def image_pixels(path) -> int | None:
    """Width x height from the file's header (nothing is decoded); None if it cannot be told."""
    import warnings

    from ..io.images import sniff_format

    try:
        fmt = sniff_format(path)
        if fmt == "TIFF":
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape if tf.series else tf.pages[0].shape
            dims = [d for d in shape if d > 4] or list(shape)
            return int(np.prod(dims[-2:])) if len(dims) >= 2 else None
        if fmt is None:
            return None
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the limit here is ours
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                with Image.open(path) as im:
                    w, h = im.size
            finally:
                Image.MAX_IMAGE_PIXELS = saved
        return int(w) * int(h)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the decoder
        return None


def check_pixels(path, limit: int | None = None) -> None:
    """ImageReadError naming the file when its header says it exceeds the pixel limit."""
    from ..io.images import ImageReadError

    limit = max_pixels(limit)
    n = image_pixels(path)
    if n is not None and n > limit:
        raise ImageReadError(
            f"{path}: {n / 1e6:.1f} megapixels exceeds the limit of {limit / 1e6:g} megapixels "
            "(memory grows with the image; raise it with --max-pixels or "
            "NAPARI_SICKLE_MAX_PIXELS, see docs/reliability.md)"
        )


# ------------------------------------------------------------------------------ inputs
def _inside(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        Path(path).resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def list_inputs(items: Iterable[str], exclude=None) -> list[tuple[str, object]]:
    """(name, source) per input: image files, the images of folders (sorted), and
    ``simulated`` / ``simulated:SEED`` (source ``("simulated", seed)``).

    ``name`` is the file name with its extension, so ``x.png`` and ``x.jpg`` get separate
    results. Files and folders inside ``exclude`` (the output folder) are left out: a run never
    reads its own overlays. The same file given twice counts once; two different files with
    the same name (from two folders) raise :class:`InputError`."""
    out = []
    excl = Path(exclude).resolve() if exclude is not None else None
    for it in items:
        if it == "simulated" or it.startswith("simulated:"):
            seed = int(it.split(":", 1)[1]) if ":" in it else 0
            out.append((f"simulated_seed{seed}", ("simulated", seed)))
            continue
        p = Path(it)
        if _inside(p, excl):
            continue
        if p.is_dir():
            out += [
                (f.name, f)
                for f in sorted(p.iterdir())
                if f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith(".") and not _inside(f, excl)
            ]
        else:
            out.append((p.name, p))
    seen: dict[str, object] = {}
    unique = []
    for name, src in out:
        if name in seen:
            if isinstance(src, tuple) or Path(src).resolve() == Path(seen[name]).resolve():
                continue  # the same input twice
            raise InputError(
                f"{seen[name]} and {src} have the same file name and would write the same "
                "results; analyse them into separate --out folders"
            )
        seen[name] = src
        unique.append((name, src))
    return unique


def load_image(src, limit: int | None = None) -> np.ndarray:
    """The image of an input; files above the pixel limit (:func:`max_pixels`) are refused
    with ImageReadError before they are decoded."""
    if isinstance(src, tuple):
        from ..data.simulate import simulate_smear

        return simulate_smear(seed=src[1]).image
    from ..io.images import read_image

    check_pixels(src, limit)
    return np.asarray(read_image(src))


def display_name(name: str, src) -> str:
    """The ``image`` value of the regions CSV (file name) and of the summary (path)."""
    return name if isinstance(src, tuple) else Path(src).name


def summary_image(name: str, src) -> str:
    return name if isinstance(src, tuple) else str(src)


class SmearImages:
    """``torch.utils.data.Dataset`` of smears: item ``i`` -> dict(index, rgb (H,W,3) uint8,
    fg (H,W) bool cell-pixel mask) or dict(index, error) when the file cannot be read."""

    def __init__(self, inputs: list[tuple[str, object]], limit: int | None = None):
        self.inputs = list(inputs)
        self.limit = max_pixels(limit)

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, i: int) -> dict:
        from ..io.images import to_rgb_uint8
        from .smear import _oriented, foreground_mask, prepare_image

        _, src = self.inputs[i]
        try:
            img = load_image(src, self.limit)
            rgb = prepare_image(img)
        except (ValueError, OSError) as exc:
            return {"index": i, "error": " ".join(str(exc).split()) or type(exc).__name__}
        if rgb is None:  # too small to hold a cell: an empty result
            return {"index": i, "small": True, "rgb": to_rgb_uint8(_oriented(img))}
        return {"index": i, "rgb": rgb, "fg": foreground_mask(rgb)}


def _worker_init(_):
    import torch

    torch.set_num_threads(1)
