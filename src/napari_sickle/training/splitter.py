"""Train the learned cell splitter (:mod:`napari_sickle.models.splitter`) from single-cell crops.

Training images: ``n_patches`` multi-cell patches composed from the crops (2-``max_cells``
touching/overlapping cells, with the composer's instance masks), ``n_occluded`` patches of
opaque cells stacked on each other (:func:`napari_sickle.data.compose.compose_occluded`,
every cell at least ``min_visible`` visible; target: each cell's visible part), plus every crop itself as a
one-cell image (its segmented cell; pixels of neighbouring cells at the crop's edge are
ignored by the loss, not taught as background). Targets: background / interior / inner
boundary (:func:`napari_sickle.models.unet_processing.unet_targets`). Random ``size`` px windows with
flips and 90-degree rotations, weighted cross entropy (1, 1, 3), Adam with cosine decay.
No Qt/napari imports here.
"""

from __future__ import annotations

import time

import numpy as np

IGNORE = 255
DEFAULTS = {
    "n_patches": 600,
    "n_occluded": 0,
    "min_visible": 0.6,
    "max_cells": 4,
    "steps": 400,
    "batch": 8,
    "size": 96,
    "lr": 3e-3,
}


def _samples(
    crops, n_patches: int, max_cells: int, seed: int, n_occluded: int = 0, min_visible: float = 0.6, scale: float = 1.0
):
    """(network input (3, h, w) float32 at ``scale``, target (h, w) uint8) pairs."""
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from ..data.compose import compose_occluded, compose_patches
    from ..models.cells import cell_foreground
    from ..models.splitter import scaled_input
    from ..models.unet_processing import unet_targets

    def pair(img, inst, ignore=None):
        x = scaled_input(img, scale)
        t = unet_targets(inst, x.shape[1:])
        if ignore is not None:
            t[resize(ignore, x.shape[1:], order=0, anti_aliasing=False) > 0] = IGNORE
        return x, t

    out = []
    for img, _types, _n, inst in compose_patches(
        crops, n_patches, seed=seed, min_cells=2, max_cells=max_cells, return_masks=True
    ):
        out.append(pair(img, inst))
    if n_occluded:
        for img, _types, _n, inst in compose_occluded(
            crops, n_occluded, seed=seed + 1, max_cells=max_cells, min_visible=min_visible, return_masks=True
        ):
            out.append(pair(img, inst))
    for c in crops:
        mask = np.asarray(c.mask, bool)
        other = cell_foreground(c.image) & ~ndi.binary_dilation(mask, iterations=2)
        out.append(pair(c.image, mask.astype(np.int32), other))
    return out


def _window(x, t, size: int, rng):
    """A random ``size`` x ``size`` window (edge-padded image, ignored padding)."""
    h, w = t.shape
    ph, pw = max(0, size - h), max(0, size - w)
    if ph or pw:
        top, left = int(rng.integers(0, ph + 1)), int(rng.integers(0, pw + 1))
        x = np.pad(x, ((0, 0), (top, ph - top), (left, pw - left)), mode="edge")
        t = np.pad(t, ((top, ph - top), (left, pw - left)), constant_values=0)
        h, w = t.shape
    y0, x0 = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
    x, t = x[:, y0 : y0 + size, x0 : x0 + size], t[y0 : y0 + size, x0 : x0 + size]
    k = int(rng.integers(0, 4))
    x, t = np.rot90(x, k, (1, 2)), np.rot90(t, k)
    if rng.random() < 0.5:
        x, t = x[:, :, ::-1], t[:, ::-1]
    return np.ascontiguousarray(x), np.ascontiguousarray(t)


def train_splitter(crops, *, seed: int = 0, device="cpu", progress=None, net_config=None, **options):
    """Train a splitter network on ``crops`` (:class:`napari_sickle.data.compose.Crop`);
    ``net_config``: the network settings (:data:`napari_sickle.models.splitter.DEFAULT_SPLITTER`).

    Returns ``(net (eval mode, on ``device``), stats)``; ``stats`` holds the options, the
    number of training images, the final loss and the seconds taken. ``progress(stage, done,
    total)`` is called as the images are made and every 10 steps."""
    import torch
    import torch.nn.functional as F

    from ..models.splitter import DEFAULT_SPLITTER, build_splitter

    opts = {**DEFAULTS, **options}
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown splitter option(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    if len(crops) == 0:
        raise ValueError("train_splitter needs at least one crop")
    t0 = time.time()
    if progress is not None:
        progress("splitter data", 0, 1)
    samples = _samples(
        crops,
        int(opts["n_patches"]),
        int(opts["max_cells"]),
        seed,
        int(opts["n_occluded"]),
        float(opts["min_visible"]),
        float({**DEFAULT_SPLITTER, **(net_config or {})}["scale"]),
    )
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = build_splitter(net_config).to(device)
    steps, size, bs = int(opts["steps"]), int(opts["size"]), int(opts["batch"])
    opt = torch.optim.Adam(net.parameters(), lr=float(opts["lr"]))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    weight = torch.tensor([1.0, 1.0, 3.0], device=device)
    net.train()
    loss_value = float("nan")
    for step in range(steps):
        idx = rng.integers(0, len(samples), bs)
        xs, ts = zip(*(_window(*samples[i], size, rng) for i in idx))
        x = torch.from_numpy(np.stack(xs)).to(device)
        t = torch.from_numpy(np.stack(ts).astype(np.int64)).to(device)
        loss = F.cross_entropy(net(x), t, weight=weight, ignore_index=IGNORE)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        loss_value = float(loss.detach())
        if progress is not None and (step % 10 == 9 or step == steps - 1):
            progress("splitter", step + 1, steps)
    net.eval()
    stats = {
        **opts,
        "images": len(samples),
        "final_loss": round(loss_value, 4),
        "seconds": round(time.time() - t0, 1),
        "seed": int(seed),
    }
    return net, stats


def fit_classifier_splitter(clf, crops, *, seed: int = 0, device="cpu", progress=None, **options) -> dict:
    """Train the learned splitter of a ``split="unet"`` classifier on ``crops`` and install it
    (``clf.net.splitter``, ``clf.config["splitter"]["trained"]``); returns the stats."""
    net, stats = train_splitter(
        crops, seed=seed, device=device, progress=progress, net_config=clf.config.get("splitter"), **options
    )
    clf.net.splitter.load_state_dict(net.state_dict())
    clf.config["splitter"]["trained"] = True
    return stats


def split_count_accuracy(net, patches, cfg: dict | None = None) -> dict:
    """How often the learned split finds each composed patch's number of cells:
    ``patches`` are ``compose_patches`` items (image, types, n_cells, ...)."""
    from ..models.splitter import split_cells_learned

    found = np.array([max(1, int(split_cells_learned(net, p[0], cfg).max())) for p in patches])
    cells = np.array([int(p[2]) for p in patches])
    return {
        "n": len(cells),
        "exact": float(np.mean(found == cells)),
        "merged": float(np.mean(found < cells)),
        "cut": float(np.mean(found > cells)),
    }
