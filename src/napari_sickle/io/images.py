"""Reading smear images by their content, whatever their file name says.

``read_image`` sniffs the first bytes of the file (PNG, JPEG, TIFF, BMP), so a ``.jpg``
that holds PNG data opens. Every failure is an :class:`ImageReadError` whose message
names the file and the problem.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..constants import IMAGE_EXTENSIONS

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),  # BigTIFF
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
)


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the problem."""


def is_image_path(path) -> bool:
    """True if ``path`` has one of the image extensions handled by :func:`read_image`."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def sniff_format(path) -> str | None:
    """'PNG', 'JPEG', 'TIFF' or 'BMP' from the file's first bytes, or None if unknown."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    return None


def read_image(path) -> np.ndarray:
    """Read a 2-D image as (H, W) or (H, W, C), in its original dtype.

    The format is taken from the file's content, not its extension. Leading singleton
    axes are squeezed and channel-first (3|4, H, W) arrays are moved to channel-last.

    Raises
    ------
    ImageReadError
        for a missing, zero-byte, truncated or unsupported file, or an array that is not
        a single 2-D gray/colour image (for example a 4-D TIFF).
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file does not exist or is not a file")
    size = os.path.getsize(path)
    if size == 0:
        raise ImageReadError(f"{path}: file is empty (0 bytes)")
    fmt = sniff_format(path)
    if fmt is None:
        raise ImageReadError(
            f"{path}: unsupported or unrecognised image format (expected PNG, JPEG, TIFF or BMP content)"
        )
    try:
        if fmt == "TIFF":
            import tifffile

            arr = tifffile.imread(path)
        else:
            arr = _read_pillow(path)
    except ImageReadError:
        raise
    except Exception as exc:  # noqa: BLE001 - every decoder error becomes one clear message
        raise ImageReadError(
            f"{path}: cannot decode {fmt} data, the file may be truncated or corrupt ({type(exc).__name__}: {exc})"
        ) from exc
    return _check_shape(np.asarray(arr), path)


def _read_pillow(path: Path) -> np.ndarray:
    from PIL import Image, ImageFile

    ImageFile.LOAD_TRUNCATED_IMAGES = False
    with Image.open(path) as im:
        im.load()
        mode = im.mode
        if mode == "P":
            im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        elif mode == "PA":
            im = im.convert("RGBA")
        elif mode == "CMYK" or mode == "YCbCr":
            im = im.convert("RGB")
        elif mode == "1":
            return np.asarray(im, dtype=bool).astype(np.uint8) * 255
        elif mode.startswith("I;16"):
            return np.asarray(im).astype(np.uint16)
        return np.asarray(im).copy()


def _check_shape(arr: np.ndarray, path: Path) -> np.ndarray:
    while arr.ndim > 2 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[-1] not in (1, 2, 3, 4) and arr.shape[0] in (3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim < 2:
        raise ImageReadError(f"{path}: not an image (array has {arr.ndim} dimension(s))")
    if arr.ndim > 3:
        raise ImageReadError(
            f"{path}: unsupported {arr.ndim}-D array of shape {arr.shape}; "
            "expected a single 2-D gray or colour image (H, W) or (H, W, C)"
        )
    if arr.ndim == 3 and arr.shape[-1] not in (2, 3, 4):
        raise ImageReadError(
            f"{path}: unsupported 3-D array of shape {arr.shape}; a stack of planes is "
            "not a smear image (expected (H, W, 3) RGB or (H, W, 4) RGBA)"
        )
    if 0 in arr.shape:
        raise ImageReadError(f"{path}: image has an empty shape {arr.shape}")
    return arr


def to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 from gray, gray+alpha, RGB or RGBA of any dtype.

    Alpha is dropped. uint8 is kept as is; bool becomes 0/255; floats within [0, 1] are
    multiplied by 255; any other dtype or range is rescaled linearly from its min..max
    to 0..255 (a constant image becomes 0).
    """
    img = np.asarray(img)
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"expected a 2-D image (H, W) or (H, W, C), got shape {img.shape}")
    c = img.shape[-1]
    if c in (1, 2):
        img = np.repeat(img[..., :1], 3, axis=-1)
    elif c >= 3:
        img = img[..., :3]
    return _to_uint8(img)


def _to_uint8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint8:
        return np.ascontiguousarray(img)
    if img.dtype == bool:
        return img.astype(np.uint8) * 255
    f = img.astype(np.float64)
    finite = f[np.isfinite(f)]
    if finite.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = float(finite.min()), float(finite.max())
    if np.issubdtype(img.dtype, np.floating) and lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        return np.zeros(img.shape, np.uint8)
    f = np.nan_to_num((f - lo) / (hi - lo), nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(np.round(f * 255.0), 0, 255).astype(np.uint8)
