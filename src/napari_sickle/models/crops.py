"""Batched classifier inputs cut from one image tensor on the classifier's device.

The per-region path (:mod:`napari_sickle.models.multilabel`: ``padded_crops_from_boxes``,
``cell_crops_from_boxes``) builds each canvas with NumPy and resizes it with its own
``F.interpolate`` call, one region at a time on the host. Here the image goes to the device
once (pinned memory, non-blocking copy) and all canvases of a batch are made there together:

* ``crop="stretch"``: ``torchvision.ops.roi_align`` on the device image (as before, one call).
* ``crop="pad"``: a box centred on a square fill-coloured canvas, resized with antialiased
  bilinear interpolation, is a linear map of the box's pixels. With ``Ry`` / ``Rx`` the
  resize weights of the canvas rows / columns (rows sum to one), the canvas
  ``f + P`` (``P``: box pixels minus ``f``, zero elsewhere) becomes ``f + Ry_box (I_box - f) Rx_box^T``:
  two batched matrix products of each box's window of the image with its weight matrices
  (:func:`resize_weights`, the same weights as ``F.interpolate(..., antialias=True)``). The
  fill colour (median of the box's border pixels) is a batched sort on the device.
* ``split="cells"`` / ``"unet"``: the split into cells (scikit-image watershed or the learned
  splitter) runs per region on the host, the regions of an image on several threads
  (:func:`cell_cuts`); each cell's blended cut is placed and resized on the device in the same
  batched way. The rule-based split can instead run batched on the device
  (:mod:`napari_sickle.models.cells_torch`: ``backend="torch"``, or ``"auto"``: there on CUDA,
  on the host elsewhere); the cuts are then made on the host from its labels.

The results equal the per-region path's to float rounding (tests/test_crops.py). The
per-region path stays available (:func:`region_crops` with ``path="per-region"``) for
comparison. No Qt/napari imports.
"""

from __future__ import annotations

import numpy as np

from ..constants import IMAGENET_MEAN, IMAGENET_STD

#: ``region_crops`` paths: batched on the device (default) or the per-region host path
PATHS = ("batched", "per-region")
#: at most this many window pixels (boxes x height x width) per batched product
WINDOW_PIXELS = 1 << 23
#: at most this many threads split the regions of one image into cells (the GIL caps the gain beyond)
MAX_SPLIT_WORKERS = 8


def _torch():
    import torch

    return torch


def image_to_device(image, device="cpu"):
    """(H, W, 3+) uint8 image -> float32 (3, H, W) tensor in [0, 1] on ``device``; the uint8
    pixels are copied once (pinned, non-blocking on CUDA) and converted on the device."""
    torch = _torch()
    device = torch.device(device)
    if isinstance(image, torch.Tensor):
        t = image
    else:
        t = torch.from_numpy(np.ascontiguousarray(np.asarray(image)[..., :3]))
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory().to(device, non_blocking=True)
    else:
        t = t.to(device)
    return t[..., :3].permute(2, 0, 1).float().div_(255.0)


def _h2d(array, device, dtype=None):
    """A small host array on ``device`` without a stream synchronisation (non-blocking copy)."""
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(array))
    if dtype is not None:
        t = t.to(dtype)
    return t.to(device, non_blocking=True)


def _norm(device, mean, std):
    m = _h2d(np.asarray(mean, np.float32), device).view(1, 3, 1, 1)
    s = _h2d(np.asarray(std, np.float32), device).view(1, 3, 1, 1)
    return m, s


def resize_weights(side, offset, length, window: int, size: int, device="cpu"):
    """Resize weights (N, size, window) of canvas coordinates ``offset + k`` (k < ``length``;
    zero for ``k >= length``) when a canvas of ``side`` px is resized to ``size`` px with
    bilinear antialiased interpolation (``F.interpolate(mode="bilinear", antialias=True,
    align_corners=False)``: the triangle filter widened by the scale when shrinking,
    normalised over the canvas). ``side``, ``offset``, ``length``: (N,) integer host arrays."""
    torch = _torch()
    side, offset, length = (np.asarray(v, np.int64).reshape(-1) for v in (side, offset, length))
    dt = torch.float32 if torch.device(device).type == "mps" else torch.float64  # MPS has no float64
    # row sums over the whole canvas (0 <= j < side), once per distinct side
    sides, inv = np.unique(side, return_inverse=True)
    i = torch.arange(size, dtype=dt, device=device).view(1, -1, 1)

    def taps(sd, j):
        scale = sd / size
        support = torch.clamp(scale, min=1.0)
        return torch.clamp(1.0 - ((j + 0.5 - scale * (i + 0.5)) / support).abs(), min=0.0)

    su = _h2d(sides, device, dt).view(-1, 1, 1)
    j = torch.arange(int(sides.max()), dtype=dt, device=device).view(1, 1, -1)
    total = (taps(su, j) * (j < su)).sum(-1, keepdim=True)[_h2d(inv.reshape(-1), device)]
    sd = _h2d(side, device, dt).view(-1, 1, 1)
    k = torch.arange(window, dtype=dt, device=device).view(1, 1, -1)
    jj = _h2d(offset, device, dt).view(-1, 1, 1) + k
    w = taps(sd, jj) * (k < _h2d(length, device, dt).view(-1, 1, 1))
    return (w / total).float()


def place_and_resize(windows, fill, side, oy, ox, h, w, size: int):
    """Canvases (N, 3, size, size) in [0, 1]: each window (N, 3, Hm, Wm) (its first ``h`` x ``w``
    pixels used) centred at (``oy``, ``ox``) on a square canvas of ``side`` px filled with
    ``fill`` (N, 3), resized to ``size``."""
    dev = windows.device
    n, _, hm, wm = windows.shape
    ry = resize_weights(side, oy, h, hm, size, dev)  # (N, size, Hm)
    rx = resize_weights(side, ox, w, wm, size, dev)  # (N, size, Wm)
    f = fill.view(-1, 3, 1, 1)
    x = (windows - f).reshape(n, 3 * hm, wm)
    x = (x @ rx.transpose(1, 2)).reshape(n, 3, hm, size)  # columns first: (N, 3, Hm, size)
    x = ry[:, None] @ x  # (N, 3, size, size)
    return x + f


def _chunks(h, w, budget: int = WINDOW_PIXELS):
    """Index groups of boxes of similar size (each group is padded to its largest box) whose
    padded windows fit ``budget`` pixels."""
    size = np.maximum(h, w)
    order = np.argsort(size, kind="stable")
    groups, cur, hm, wm, first = [], [], 0, 0, 0
    for i in order:
        nh, nw = max(hm, int(h[i])), max(wm, int(w[i]))
        if cur and ((len(cur) + 1) * nh * nw > budget or size[i] > 1.25 * first + 8):
            groups.append(np.asarray(cur))
            cur, nh, nw = [], int(h[i]), int(w[i])
        if not cur:
            first = int(size[i])
        cur.append(i)
        hm, wm = nh, nw
    if cur:
        groups.append(np.asarray(cur))
    return groups


def _pad_geometry(boxes, H: int, W: int):
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0 = np.clip(np.floor(b[:, 0]), 0, W - 1).astype(np.int64)
    y0 = np.clip(np.floor(b[:, 1]), 0, H - 1).astype(np.int64)
    x1 = np.clip(np.ceil(b[:, 2]), x0 + 1, W).astype(np.int64)
    y1 = np.clip(np.ceil(b[:, 3]), y0 + 1, H).astype(np.int64)
    return x0, y0, x1, y1


def _windows(img, x0, y0, hm: int, wm: int):
    """(N, 3, hm, wm) windows of the (3, H, W) image from (y0, x0) (clamped at the image edge;
    the part beyond each box has zero weight)."""
    torch = _torch()
    H, W = img.shape[-2:]
    dev = img.device
    rows = (_h2d(y0, dev)[:, None] + torch.arange(hm, device=dev)).clamp_(max=H - 1)
    cols = (_h2d(x0, dev)[:, None] + torch.arange(wm, device=dev)).clamp_(max=W - 1)
    return img[:, rows[:, :, None], cols[:, None, :]].permute(1, 0, 2, 3)


def border_median(img, x0, y0, x1, y1):
    """Per-channel median (N, 3) of each box's border pixels (top and bottom rows, left and
    right columns, corners counted twice), rounded down to whole 0-255 levels as the uint8
    canvas of the per-region path; ``img``: (3, H, W) in [0, 1]."""
    torch = _torch()
    dev = img.device
    h, w = y1 - y0, x1 - x0
    n = 2 * w + 2 * h
    L = int(n.max())
    t = np.arange(L)[None, :]
    w_, h_ = w[:, None], h[:, None]
    top, bot, left = t < w_, (t >= w_) & (t < 2 * w_), (t >= 2 * w_) & (t < 2 * w_ + h_)
    ys = np.where(
        top, y0[:, None], np.where(bot, y1[:, None] - 1, y0[:, None] + np.where(left, t - 2 * w_, t - 2 * w_ - h_))
    )
    xs = np.where(
        top, x0[:, None] + t, np.where(bot, x0[:, None] + t - w_, np.where(left, x0[:, None], x1[:, None] - 1))
    )
    valid = t < n[:, None]
    ys = np.where(valid, ys, 0)
    xs = np.where(valid, xs, 0)
    v = img[:, _h2d(ys, dev), _h2d(xs, dev)]  # (3, N, L)
    v = torch.where(_h2d(valid, dev)[None], v * 255.0, torch.full_like(v, float("inf")))
    v = v.sort(-1).values
    nn_ = _h2d(n, dev)
    lo = ((nn_ - 1) // 2)[None, :, None].expand(3, -1, 1)
    hi = (nn_ // 2)[None, :, None].expand(3, -1, 1)
    med = (v.gather(-1, lo) + v.gather(-1, hi)) / 2
    return torch.floor(med[..., 0].T.round(decimals=3)) / 255.0  # (N, 3)


def stretch_crops(img, boxes, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``crop="stretch"``: each box resized to ``size`` x ``size`` (``roi_align``) from the
    (3, H, W) device image, normalised: (N, 3, size, size)."""
    torch = _torch()
    from torchvision.ops import roi_align

    dev = img.device
    b = _h2d(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), dev)
    if len(b) == 0:
        return torch.zeros((0, 3, size, size), device=dev)
    crops = roi_align(img[None], [b], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    m, s = _norm(dev, mean, std)
    return (crops - m) / s


def padded_crops(img, boxes, size: int, min_side: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """``crop="pad"``: the canvases of ``models.multilabel.padded_crops_from_boxes``, made in
    batched matrix products from the (3, H, W) device image: (N, 3, size, size)."""
    torch = _torch()
    dev = img.device
    H, W = img.shape[-2:]
    x0, y0, x1, y1 = _pad_geometry(boxes, H, W)
    n = len(x0)
    out = torch.empty((n, 3, size, size), device=dev)
    if n == 0:
        return out
    h, w = y1 - y0, x1 - x0
    side = np.maximum(np.maximum(h, w), int(min_side))
    oy, ox = (side - h) // 2, (side - w) // 2
    m, s = _norm(dev, mean, std)
    for g in _chunks(h, w):
        fill = border_median(img, x0[g], y0[g], x1[g], y1[g])
        win = _windows(img, x0[g], y0[g], int(h[g].max()), int(w[g].max()))
        can = place_and_resize(win, fill, side[g], oy[g], ox[g], h[g], w[g], size)
        out[_h2d(g, dev)] = (can - m) / s
    return out


def split_workers(n_regions: int, workers: int | None = None) -> int:
    """Threads for the cell split of ``n_regions`` regions: ``workers``, else torch's intra-op
    thread count (1 in each single-threaded analysing process of the batch command, so the
    cores are never oversubscribed), at most :data:`MAX_SPLIT_WORKERS` and ``n_regions``."""
    if workers is None:
        workers = min(_torch().get_num_threads(), MAX_SPLIT_WORKERS)
    return max(1, min(int(workers), int(n_regions)))


def _region_window(box, H: int, W: int, margin: int):
    bx0, by0, bx1, by1 = box
    x0, y0 = int(np.clip(np.floor(bx0) - margin, 0, W - 1)), int(np.clip(np.floor(by0) - margin, 0, H - 1))
    x1, y1 = int(np.clip(np.ceil(bx1) + margin, x0 + 1, W)), int(np.clip(np.ceil(by1) + margin, y0 + 1, H))
    return x0, y0, x1, y1


def _cell_cut(labels, c: int, regf, bg, dilate: int):
    """Blended uint8 cut of cell ``c`` of ``labels``, as ``models.cells.cell_canvases`` makes it
    (mask dilated ``dilate`` px, Gaussian soft edge), computed on a window around the cell: the
    cell's box grown by ``dilate`` (the mask's reach) plus 4 px (the Gaussian's radius at sigma 1,
    truncate 4), clipped to the region. Outside that reach the mask is zero, and where the
    window meets the region's edge both reflect at the same edge, so the cut equals the
    whole-region computation bit for bit (tests/test_crops.py)."""
    from scipy import ndimage as ndi

    ys, xs = np.nonzero(labels == c)
    r = int(dilate) + 4
    h, w = labels.shape
    wy0, wy1 = max(int(ys.min()) - r, 0), min(int(ys.max()) + 1 + r, h)
    wx0, wx1 = max(int(xs.min()) - r, 0), min(int(xs.max()) + 1 + r, w)
    mask = ndi.binary_dilation(labels[wy0:wy1, wx0:wx1] == c, iterations=int(dilate))
    alpha = ndi.gaussian_filter(mask.astype(np.float32), 1.0)
    ys, xs = np.nonzero(mask)
    ya, yb, xa, xb = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    a = alpha[ya:yb, xa:xb, None]
    cut = regf[wy0 + ya : wy0 + yb, wx0 + xa : wx0 + xb] * a + bg * (1 - a)
    return np.clip(np.rint(cut), 0, 255).astype(np.uint8)


def _region_cuts(region, p: dict, splitter=None, labels=None, occlusion: str = "none"):
    """The cell split of one region (or its given ``labels``) and its cells' cuts: ``(cuts,
    fill (3,) uint8, partners)``; the region itself as the only cut when it holds at most one
    cell. With ``occlusion="ellipse-min"`` (:mod:`napari_sickle.models.occlusion`) the cuts of
    the cells it completes follow the visible cuts, ``partners[i]`` naming the visible cut
    (index within the region) the ``i``-th of them completes."""
    from .cells import region_background, split_cells
    from .occlusion import completed

    if labels is None:
        labels = split_cells(region, p) if splitter is None else np.asarray(splitter(region), np.int32)
    regf = region.astype(np.float32)
    bg = region_background(regf, labels > 0)
    fill = np.clip(np.rint(np.asarray(bg, np.float32)), 0, 255).astype(np.uint8)
    k = int(labels.max())
    if k <= 1:
        return [region], fill, []
    d = int(p["dilate"])
    cuts = [_cell_cut(labels, c, regf, bg, d) for c in range(1, k + 1)]
    partners = []
    if occlusion != "none":
        for c in range(1, k + 1):
            # the window covers the cut's reach, so the cut equals the whole region's
            done = completed(labels, c, regf, reach=d + 4)
            if done is not None:
                cuts.append(_cell_cut(done[0], c, done[1], bg, d))
                partners.append(c - 1)
    return cuts, fill, partners


def cell_cuts(
    image,
    boxes,
    min_side: int,
    params: dict | None = None,
    splitter=None,
    workers: int | None = None,
    backend: str = "skimage",
    device=None,
    occlusion: str = "none",
):
    """Host part of the cell split: for every cell of every box, its blended cut (uint8,
    (h, w, 3)) and canvas fill colour, as ``models.cells.cell_canvases`` makes them before
    centring. Returns ``(cuts, fills (M, 3) uint8, owner (M,))``. With an ``occlusion`` rule
    the completed cells' cuts follow each region's cells, ``owner = -1 - j`` pointing at cut
    ``j``, the visible cell they complete (``occlusion.apply_rule`` folds them back).

    The regions are independent, so the rule-based split runs on :func:`split_workers` threads
    (SciPy, scikit-image and NumPy release the GIL in their loops); each region's result is
    the same as computed alone. A learned splitter with a ``many`` method
    (:class:`~napari_sickle.models.splitter.LearnedSplit`) labels all regions in batches first.
    ``backend`` (``models.cells_torch.BACKENDS``) on ``device``: ``"torch"`` labels all regions
    with the rule-based split batched there (:func:`napari_sickle.models.cells_torch.split_windows`),
    ``"auto"`` does so on CUDA only; ``"skimage"``: on the host threads."""
    from .cells import DEFAULT_SPLIT
    from .cells_torch import resolve_backend

    p = {**DEFAULT_SPLIT, **(params or {})}
    img = np.asarray(image)
    H, W = img.shape[:2]
    windows = [_region_window(b, H, W, int(p["margin"])) for b in np.asarray(boxes, np.float64).reshape(-1, 4)]
    regions = [img[y0:y1, x0:x1, :3] for x0, y0, x1, y1 in windows]
    n = split_workers(len(regions), workers) if splitter is None or hasattr(splitter, "many") else 1
    labels = None
    if splitter is not None and hasattr(splitter, "many"):
        labels = splitter.many(regions, workers=n)
    elif splitter is None and regions and resolve_backend(backend, device) == "torch":
        from .cells_torch import split_windows

        labels = split_windows(img, windows, p, device or "cpu")
    if labels is not None:
        per_region = [_region_cuts(r, p, labels=lab, occlusion=occlusion) for r, lab in zip(regions, labels)]
    elif n > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n, thread_name_prefix="cell-split") as ex:
            per_region = list(ex.map(lambda r: _region_cuts(r, p, occlusion=occlusion), regions))
    else:
        per_region = [_region_cuts(r, p, splitter, occlusion=occlusion) for r in regions]
    cuts, fills, owner = [], [], []
    for i, (c, fill, partners) in enumerate(per_region):
        first = len(cuts)
        cuts += c
        fills += [fill] * len(c)
        owner += [i] * (len(c) - len(partners)) + [-1 - (first + j) for j in partners]
    return cuts, np.asarray(fills, np.uint8).reshape(-1, 3), np.asarray(owner, np.int64)


def canvases_from_cuts(cuts, fills, size: int, min_side: int, device="cpu", mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """Each uint8 cut centred on a square canvas of ``max(h, w, min_side)`` px filled with its
    fill colour, resized to ``size`` and normalised, batched on ``device``: (M, 3, size, size).
    The cuts travel in one packed (pinned on CUDA) buffer."""
    torch = _torch()
    dev = torch.device(device)
    n = len(cuts)
    out = torch.empty((n, 3, size, size), device=dev)
    if n == 0:
        return out
    h = np.array([c.shape[0] for c in cuts], np.int64)
    w = np.array([c.shape[1] for c in cuts], np.int64)
    side = np.maximum(np.maximum(h, w), int(min_side))
    oy, ox = (side - h) // 2, (side - w) // 2
    m, s = _norm(dev, mean, std)
    fills_t = _h2d(fills, dev).float() / 255.0
    for g in _chunks(h, w):
        hm, wm = int(h[g].max()), int(w[g].max())
        buf = np.zeros((len(g), hm, wm, 3), np.uint8)
        for r, i in enumerate(g):
            buf[r, : h[i], : w[i]] = cuts[i]
        t = torch.from_numpy(buf)
        t = t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t.to(dev)
        win = t.permute(0, 3, 1, 2).float().div_(255.0)
        gi = _h2d(g, dev)
        can = place_and_resize(win, fills_t[gi], side[g], oy[g], ox[g], h[g], w[g], size)
        out[gi] = (can - m) / s
    return out


def region_crops(classifier, image, boxes, path: str = "batched"):
    """Classifier inputs for region boxes, ``(crops (M, 3, s, s), owner (M,))`` on the
    classifier's device, as ``RBCClassifier.region_crops``: ``path="batched"`` builds them
    here, ``"per-region"`` with the classifier's per-region host path."""
    if path not in PATHS:
        raise ValueError(f"unknown crop path {path!r}; choose one of {PATHS}")
    if path == "per-region":
        return classifier.region_crops_per_region(image, boxes)
    torch = _torch()
    from .region_inputs import CELL_MIN_SIDE

    cfg = classifier.config
    dev = torch.device(classifier.device or "cpu")
    mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
    size = classifier.input_size
    if classifier.split in ("cells", "unet"):
        cuts, fills, owner = cell_cuts(
            image,
            boxes,
            int(cfg.get("min_side", CELL_MIN_SIDE)),
            cfg.get("cell_split"),
            splitter=classifier.splitter_fn(),
            backend=getattr(classifier, "cell_split_backend", "auto"),
            device=dev,
            occlusion=classifier.occlusion,
        )
        return canvases_from_cuts(cuts, fills, size, int(cfg.get("min_side", CELL_MIN_SIDE)), dev, mean, std), owner
    img = image_to_device(image, dev)
    if cfg.get("crop", "stretch") == "pad":
        crops = padded_crops(img, boxes, size, int(cfg.get("min_side", 0)), mean, std)
    else:
        crops = stretch_crops(img, boxes, size, mean, std)
    return crops, np.arange(len(crops), dtype=np.int64)


def batch_region_crops(classifier, images, boxes_list, path: str = "batched"):
    """:func:`region_crops` of several images at once (e.g. the smears of one batch, so that
    one forward pass covers all their regions and views): ``(crops, owner)`` with ``owner``
    numbering the regions of all images in order (image 0's first, then image 1's, ...)."""
    torch = _torch()
    crops, owners, offset, rows = [], [], 0, 0
    for image, boxes in zip(images, boxes_list):
        c, o = region_crops(classifier, image, boxes, path)
        crops.append(c)
        owners.append(np.where(o >= 0, o + offset, o - rows))  # o < 0 points at a row: shift it too
        offset += len(np.asarray(boxes).reshape(-1, 4))
        rows += len(c)
    if not crops:
        s = classifier.input_size
        return torch.zeros((0, 3, s, s)), np.zeros(0, np.int64)
    return torch.cat(crops), np.concatenate(owners)
