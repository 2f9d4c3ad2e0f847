"""Region boxes of an image -> normalised inputs of the multi-label classifier.

The crop geometries of :mod:`napari_sickle.models.multilabel` (its ``config["crop"]`` and
``config["split"]``): ``"stretch"`` (:func:`crops_from_boxes`), ``"pad"``
(:func:`padded_crops_from_boxes`) and one input per cell (:func:`cell_crops_from_boxes`),
plus the multiple-instance rule that turns per-cell outputs into per-region ones
(:func:`segment_max`).
"""

from __future__ import annotations

import numpy as np

from ..constants import IMAGENET_MEAN, IMAGENET_STD

#: canvas side (native pixels) of a region for ``crop="pad"``
DEFAULT_MIN_SIDE = 160
#: canvas side (native pixels) of a cell for ``split="cells"`` (see ``models.multilabel.CELL_INPUT_SIZE``)
CELL_MIN_SIDE = 112


def crops_from_boxes(image, boxes, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    """Cut every box out of ``image`` and resize it to ``size`` x ``size`` in one batched call.

    image: (H, W, 3) uint8 (numpy or tensor); boxes: (N, 4) x_min, y_min, x_max, y_max in pixels
    (max exclusive). Returns a normalised float tensor (N, 3, size, size) on ``device``.
    """
    import torch
    from torchvision.ops import roi_align

    img = torch.as_tensor(np.ascontiguousarray(image), device=device)
    img = img.permute(2, 0, 1)[None].float().div_(255.0)
    b = torch.as_tensor(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), device=device)
    if len(b) == 0:
        return torch.zeros((0, 3, size, size), device=device)
    crops = roi_align(img, [b], output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1, aligned=True)
    m = torch.as_tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, device=device).view(1, 3, 1, 1)
    return (crops - m) / s


def padded_crops_from_boxes(
    image, boxes, size: int, min_side: int = DEFAULT_MIN_SIDE, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"
):
    """Like :func:`crops_from_boxes`, but aspect- and scale-preserving: each box (clipped to
    the image) is centred on a square canvas of ``max(w, h, min_side)`` pixels filled with the
    median colour of the box's border pixels, and the canvas is resized (bilinear,
    antialiased) to ``size`` x ``size``."""
    import torch

    img = np.ascontiguousarray(np.asarray(image))
    H, W = img.shape[:2]
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    out = torch.zeros((len(b), 3, size, size), device=device)
    m = torch.as_tensor(mean, device=device, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, device=device, dtype=torch.float32).view(3, 1, 1)
    for i, (x0, y0, x1, y1) in enumerate(b):
        x0, y0 = int(np.clip(np.floor(x0), 0, W - 1)), int(np.clip(np.floor(y0), 0, H - 1))
        x1, y1 = int(np.clip(np.ceil(x1), x0 + 1, W)), int(np.clip(np.ceil(y1), y0 + 1, H))
        reg = img[y0:y1, x0:x1, :3]
        h, w = reg.shape[:2]
        border = np.concatenate([reg[0], reg[-1], reg[:, 0], reg[:, -1]]).reshape(-1, 3)
        side = max(h, w, int(min_side))
        canvas = np.empty((side, side, 3), np.uint8)
        canvas[:] = np.median(border, axis=0).astype(np.uint8)
        oy, ox = (side - h) // 2, (side - w) // 2
        canvas[oy : oy + h, ox : ox + w] = reg
        out[i] = canvas_tensor(canvas, size, m, s, device)
    return out


def canvas_tensor(canvas: np.ndarray, size: int, m, s, device="cpu"):
    """A square uint8 canvas (side, side, 3) resized (bilinear, antialiased) to ``size`` and
    normalised with the (3, 1, 1) tensors ``m`` / ``s``: (3, size, size)."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.ascontiguousarray(canvas), device=device).permute(2, 0, 1)[None].float().div_(255.0)
    if t.shape[-1] != size or t.shape[-2] != size:
        t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (t[0] - m) / s


def cell_crops_from_boxes(
    image,
    boxes,
    size: int,
    min_side: int = CELL_MIN_SIDE,
    params: dict | None = None,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    device="cpu",
    splitter=None,
    occlusion: str = "none",
):
    """One normalised input per *cell* of each box (``models.cells.cell_canvases``).

    Returns ``(crops (M, 3, size, size), owner (M,) int64)``: ``owner[i]`` is the index of the
    box that cell ``i`` belongs to (every box has at least one); with an ``occlusion`` rule,
    ``owner[i] = -1 - j`` marks input ``i`` as the completed reading of input ``j``."""
    import torch

    from .cells import cell_canvases

    img = np.ascontiguousarray(np.asarray(image))
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    m = torch.as_tensor(mean, device=device, dtype=torch.float32).view(3, 1, 1)
    s = torch.as_tensor(std, device=device, dtype=torch.float32).view(3, 1, 1)
    tensors, owner = [], []
    for i, box in enumerate(b):
        partners: list[int] = []
        canvases = cell_canvases(
            img, box, int(min_side), params, splitter=splitter, occlusion=occlusion, partners=partners
        )
        first, n_visible = len(tensors), len(canvases) - len(partners)
        for j, canvas in enumerate(canvases):
            tensors.append(canvas_tensor(canvas, size, m, s, device))
            owner.append(i if j < n_visible else -1 - (first + partners[j - n_visible]))
    if not tensors:
        return torch.zeros((0, 3, size, size), device=device), np.zeros(0, np.int64)
    return torch.stack(tensors), np.asarray(owner, np.int64)


def segment_max(values, owner, n: int):
    """Largest row of ``values`` (M, K) per owner (M,) -> (n, K); the multiple-instance rule
    that turns per-cell logits or probabilities into per-region ones (torch or numpy)."""
    import torch

    as_np = isinstance(values, np.ndarray)
    v = torch.as_tensor(values)
    idx = torch.as_tensor(np.asarray(owner), dtype=torch.int64, device=v.device)
    out = torch.full((int(n), v.shape[1]), float("-inf"), dtype=v.dtype, device=v.device)
    out = out.scatter_reduce(0, idx[:, None].expand(-1, v.shape[1]), v, reduce="amax", include_self=True)
    return out.numpy() if as_np else out


def whole_image_crop(image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu"):
    h, w = image.shape[:2]
    return crops_from_boxes(image, [[0, 0, w, h]], size, mean, std, device)
