"""A learned cell splitter for the multi-label classifier (``split="unet"``).

The rule-based split (:func:`napari_sickle.models.cells.split_cells`, distance-transform
watershed) merges cells that overlap so much that their union has one distance peak; that
was the largest loss on composed multi-cell patches (docs/results.md). This splitter is the
project's small U-Net (:mod:`napari_sickle.models.unet`: background / interior / boundary
per pixel) run on the region at its native scale; the boundary class is drawn where the
outline of one cell crosses another, so overlapping cells get separate interiors. It is
trained (:mod:`napari_sickle.training.splitter`) on patches composed from the *training*
crops, whose instance masks the composer knows, plus the single crops themselves (one cell
each), so it needs no annotation beyond the class folders.

Instances (:func:`napari_sickle.models.unet_processing.unet_probabilities_to_instances`): by
default seeds are the peaks of the distance transform of the interior (interior probability
> 0.7; ``seeds="components"`` takes one seed per connected interior region instead), grown
over the foreground by watershed; then the pieces of neighbouring cells cut by the region's edge are dropped as in the
rule-based split (:func:`napari_sickle.models.cells.drop_foreign_pieces`).

The network's weights live in the classifier's state dict (``net.splitter``), its settings
in the classifier config under ``splitter``. No Qt/napari imports here.
"""

from __future__ import annotations

import numpy as np

#: network and post-processing settings (stored in a classifier's config as ``splitter``)
DEFAULT_SPLITTER = {
    "depth": 3,
    "base_channels": 16,
    "seeds": "distance",
    "seed_threshold": 0.7,
    "min_seed_size": 8,
    "min_size": 30,
    "edge_fraction": 0.4,
    "trained": False,
}


def build_splitter(cfg: dict | None = None):
    """An (untrained) splitter network for the settings ``cfg``."""
    from .unet import build_unet

    c = {**DEFAULT_SPLITTER, **(cfg or {})}
    return build_unet(
        {"depth": int(c["depth"]), "base_channels": int(c["base_channels"]), "in_channels": 3, "n_classes": 3}
    )


def region_tensor(region: np.ndarray, multiple: int):
    """(1, 3, H', W') float32 input of an RGB uint8 region, per-image standardised and padded
    (edge values) to a multiple of ``multiple``; returns (tensor, (H, W))."""
    import torch

    from .unet_processing import normalize_image

    a = normalize_image(np.asarray(region)[..., :3])
    h, w = a.shape[1:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        a = np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(a))[None], (h, w)


def split_probabilities(net, region: np.ndarray) -> np.ndarray:
    """(3, H, W) softmax probabilities (background, interior, boundary) of a region."""
    import torch

    dev = next(net.parameters()).device
    x, (h, w) = region_tensor(region, net.multiple)
    net.eval()
    with torch.inference_mode():
        p = torch.softmax(net(x.to(dev)).float(), 1)[0, :, :h, :w]
    return p.cpu().numpy()


def split_cells_learned(net, region: np.ndarray, cfg: dict | None = None) -> np.ndarray:
    """Instance labels (int32, 0 = background) of the cells of a region image; all zeros
    when no cell is found (the caller then treats the region as one cell)."""
    from .cells import cell_foreground, drop_foreign_pieces
    from .unet_processing import unet_probabilities_to_instances

    c = {**DEFAULT_SPLITTER, **(cfg or {})}
    region = np.asarray(region)
    if region.shape[0] < 8 or region.shape[1] < 8 or not cell_foreground(region).any():
        # no edges, no cell (per-image standardisation would turn a blank region's noise into contrast)
        return np.zeros(region.shape[:2], np.int32)
    probs = split_probabilities(net, region)
    labels = unet_probabilities_to_instances(
        probs,
        min_size=int(c["min_size"]),
        seeds=str(c["seeds"]),
        seed_threshold=float(c["seed_threshold"]),
        min_seed_size=int(c["min_seed_size"]),
    )
    return drop_foreign_pieces(labels, None, float(c["edge_fraction"]))
