"""Shared set-up of the BCCD diagnostics: the RBC items of $SICKLE_DATA/bccd and the two splits
they score (the 31 validation photos taken from train.txt as in training, and val.txt)."""
import os

from napari_sickle.training.detector import _split_items, load_detection_data


def bccd_splits():
    """(items, class names, {"valtr": indices, "test": indices})"""
    root = os.path.join(os.environ.get("SICKLE_DATA", "../shared/data"), "bccd")
    items, names, splits = load_detection_data(root, classes=["RBC"])
    _tr, va = _split_items(items, splits, 0.15, 0, "train")
    return items, names, {"valtr": va, "test": [i for i, s in enumerate(splits) if s == "val"]}
