"""File formats in and out (no Qt, no napari): images, masks, annotation tables, datasets.

Sub-modules: ``images`` (read_image, to_rgb_uint8), ``masks`` (read_mask,
mask_to_regions), ``formats`` (regions CSV, Pascal VOC, point files), ``datasets``
(training-folder scanners). The names below are importable from here lazily.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImageReadError": "images",
    "read_image": "images",
    "to_rgb_uint8": "images",
    "read_mask": "masks",
    "mask_to_regions": "masks",
    "FormatError": "formats",
    "read_regions_csv": "formats",
    "write_regions_csv": "formats",
    "read_voc": "formats",
    "read_points": "formats",
    "DatasetError": "datasets",
    "scan_class_folders": "datasets",
    "scan_image_mask_pairs": "datasets",
    "scan_voc": "datasets",
    "read_multilabel_table": "datasets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
