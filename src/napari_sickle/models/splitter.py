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
    "scale": 1.0,
    "trained": False,
}


def build_splitter(cfg: dict | None = None):
    """An (untrained) splitter network for the settings ``cfg``."""
    from .unet import build_unet

    c = {**DEFAULT_SPLITTER, **(cfg or {})}
    return build_unet(
        {"depth": int(c["depth"]), "base_channels": int(c["base_channels"]), "in_channels": 3, "n_classes": 3}
    )


#: regions are padded to a multiple of this many pixels, so regions of similar size share a batch
BUCKET = 32


def padded_side(n: int, multiple: int) -> int:
    """Padded size of a side of ``n`` px: a multiple of :data:`BUCKET` and of the network's
    ``multiple``. It depends on the region alone, so a region's result does not depend on the
    other regions of its batch."""
    step = int(np.lcm(BUCKET, int(multiple)))
    return -(-int(n) // step) * step


def scaled_input(region: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(3, h, w) float32 network input of an RGB uint8 region: per-image standardised, then
    resized by ``scale`` (bilinear, antialiased). The network sees every region at this scale
    in training and in prediction; a smaller scale makes it cheaper."""
    import torch

    from .unet_processing import normalize_image, resize_chw

    a = normalize_image(np.asarray(region)[..., :3])
    if float(scale) == 1.0:
        return a
    h, w = a.shape[1:]
    size = (max(1, int(round(h * float(scale)))), max(1, int(round(w * float(scale)))))
    return resize_chw(torch.from_numpy(a), size).numpy()


def region_tensor(region: np.ndarray, multiple: int, scale: float = 1.0):
    """(1, 3, H', W') float32 input of an RGB uint8 region (:func:`scaled_input`), padded
    (edge values) to :func:`padded_side`; returns (tensor, (h, w) before padding)."""
    import torch

    a = scaled_input(region, scale)
    h, w = a.shape[1:]
    ph, pw = padded_side(h, multiple) - h, padded_side(w, multiple) - w
    if ph or pw:
        a = np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge")
    return torch.from_numpy(np.ascontiguousarray(a))[None], (h, w)


def split_cells_learned(net, region: np.ndarray, cfg: dict | None = None) -> np.ndarray:
    """Instance labels (int32, 0 = background) of the cells of a region image; all zeros
    when no cell is found (the caller then treats the region as one cell)."""
    return split_many_learned(net, [region], cfg)[0]


def _has_cells(region: np.ndarray) -> bool:
    from .cells import cell_foreground

    # no edges, no cell (per-image standardisation would turn a blank region's noise into contrast)
    return region.shape[0] >= 8 and region.shape[1] >= 8 and bool(cell_foreground(region).any())


def split_many_learned(net, regions, cfg: dict | None = None, batch_pixels: int | None = None, workers: int = 1):
    """:func:`split_cells_learned` of many regions; the post-processing runs on ``workers``
    threads. Regions of the same padded size go through the network together, at most
    ``batch_pixels`` input pixels per call (default: one region per call on the CPU, where
    batching is no faster and a region's labels then do not depend on its batch; 4 M pixels
    on a GPU)."""
    import torch

    c = {**DEFAULT_SPLITTER, **(cfg or {})}
    regions = [np.asarray(r) for r in regions]
    out: list = [np.zeros(r.shape[:2], np.int32) for r in regions]
    todo = [i for i, r in enumerate(regions) if _has_cells(r)]
    dev = next(net.parameters()).device
    if batch_pixels is None:
        batch_pixels = 1 << 22 if dev.type == "cuda" else 1
    net.eval()
    scale = float(c["scale"])
    inputs = {i: region_tensor(regions[i], net.multiple, scale) for i in todo}
    groups: dict = {}
    for i in todo:
        groups.setdefault(tuple(inputs[i][0].shape[-2:]), []).append(i)
    probs: dict = {}
    for (ph, pw), idx in groups.items():
        step = max(1, int(batch_pixels) // (ph * pw))
        for k in range(0, len(idx), step):
            part = idx[k : k + step]
            with torch.inference_mode():
                p = torch.softmax(net(torch.cat([inputs[i][0] for i in part]).to(dev)).float(), 1).cpu()
            for j, i in enumerate(part):
                h, w = inputs[i][1]
                q = p[j, :, :h, :w]
                if scale != 1.0:  # back to the region's pixels
                    q = torch.nn.functional.interpolate(
                        q[None], size=regions[i].shape[:2], mode="bilinear", align_corners=False
                    )[0]
                probs[i] = q.numpy()

    def post(i):
        out[i] = _instances(probs.pop(i), c)

    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(int(workers), len(todo)), thread_name_prefix="cell-split") as ex:
            list(ex.map(post, todo))
    else:
        for i in todo:
            post(i)
    return out


def _instances(probs: np.ndarray, c: dict) -> np.ndarray:
    from .cells import drop_foreign_pieces
    from .unet_processing import unet_probabilities_to_instances

    labels = unet_probabilities_to_instances(
        probs,
        min_size=int(c["min_size"]),
        seeds=str(c["seeds"]),
        seed_threshold=float(c["seed_threshold"]),
        min_seed_size=int(c["min_seed_size"]),
    )
    return drop_foreign_pieces(labels, None, float(c["edge_fraction"]))


class LearnedSplit:
    """``region -> labels`` of a trained splitter network, plus :meth:`many` for a batch of
    regions (what :func:`napari_sickle.models.crops.cell_cuts` uses)."""

    def __init__(self, net, cfg: dict | None = None):
        self.net, self.cfg = net, {**DEFAULT_SPLITTER, **(cfg or {})}

    def __call__(self, region: np.ndarray) -> np.ndarray:
        return split_many_learned(self.net, [region], self.cfg)[0]

    def many(self, regions, workers: int = 1) -> list:
        return split_many_learned(self.net, regions, self.cfg, workers=workers)
