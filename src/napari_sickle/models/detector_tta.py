"""Test-time views of the region detector: flipped and transposed views of an image, the
mapping of their boxes back to the image, and the fusion of the views' detections.

``config["tta"]`` of a detector checkpoint (``"none"``, ``"flips"`` or ``"dihedral"``) picks
the views; :meth:`napari_sickle.models.detector.RegionDetector.detect` runs them.
"""

from __future__ import annotations

import numpy as np

#: Test-time views: (transpose first, flip left-right, flip up-down) applied to the image.
#: "flips": the four flips; "dihedral": the flips of the image and of its transpose (the 8
#: rotations/reflections). A view's boxes are mapped back before fusing.
TTA_VIEWS = {
    "none": ((False, False, False),),
    "flips": ((False, False, False), (False, True, False), (False, False, True), (False, True, True)),
    "dihedral": tuple((t, fx, fy) for t in (False, True) for fx in (False, True) for fy in (False, True)),
}
TTA_MODES = tuple(TTA_VIEWS)
#: Score threshold of each view before fusing (a fused score is the mean over the views).
TTA_VIEW_SCORE = 0.01


def tta_mode(value) -> str:
    """``tta`` setting -> one of ``TTA_MODES`` (None/False: "none", True: "flips")."""
    if value is None or value is False:
        return "none"
    if value is True:
        return "flips"
    v = str(value).lower()
    if v not in TTA_VIEWS:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, not {value!r}")
    return v


def _view(img, view):
    t, fx, fy = view
    if t:
        img = img.transpose(-1, -2)
    if fx:
        img = img.flip(-1)
    if fy:
        img = img.flip(-2)
    return img.contiguous()


def _unview_boxes(boxes, view, h, w):
    """Boxes found on ``_view(image, view)`` mapped back to the (h, w) image."""
    t, fx, fy = view
    b = np.array(boxes, dtype=np.float32).reshape(-1, 4)
    vh, vw = (w, h) if t else (h, w)
    if fx:
        b[:, [0, 2]] = vw - b[:, [2, 0]]
    if fy:
        b[:, [1, 3]] = vh - b[:, [3, 1]]
    if t:
        b = b[:, [1, 0, 3, 2]]
    return b


def fuse_tta(per_view, nms_iou: float = 0.5, match_iou: float = 0.55):
    """Weighted box fusion of the detections of several views of one image.

    per_view: list of (boxes (n,4), scores (n,), labels (n,)) in image coordinates. Cluster
    centres are the boxes NMS keeps (per class, ``nms_iou``) over all views; each centre takes,
    from every view, that view's best box of its class overlapping it with IoU >= ``match_iou``.
    The fused box is the score-weighted mean of those boxes and the fused score their score sum
    divided by the number of views (a box only one view of four finds keeps a quarter of its
    score). Returns (boxes, scores, labels) sorted by score."""
    import torch
    from torchvision.ops import batched_nms, box_iou

    n = len(per_view)
    B = torch.as_tensor(np.concatenate([np.asarray(p[0], np.float32).reshape(-1, 4) for p in per_view]))
    S = torch.as_tensor(np.concatenate([np.asarray(p[1], np.float32).reshape(-1) for p in per_view]))
    L = torch.as_tensor(np.concatenate([np.asarray(p[2], np.int64).reshape(-1) for p in per_view]))
    V = torch.as_tensor(np.concatenate([np.full(len(p[1]), k) for k, p in enumerate(per_view)]).astype(np.int64))
    if len(S) == 0:
        return B.numpy().reshape(0, 4), S.numpy(), L.numpy()
    centres = batched_nms(B, S, L, nms_iou)
    match = (box_iou(B[centres], B) >= match_iou) & (L[centres][:, None] == L[None, :])
    wsum = torch.zeros(len(centres))
    bsum = torch.zeros(len(centres), 4)
    for k in range(n):  # each view contributes its best matching box
        sv = torch.where(match & (V == k)[None, :], S[None, :], torch.full_like(S, -1.0)[None, :])
        best, j = sv.max(dim=1)
        has = best > 0
        wsum += torch.where(has, best, torch.zeros_like(best))
        bsum += torch.where(has[:, None], best[:, None] * B[j], torch.zeros_like(bsum))
    boxes = bsum / wsum.clamp(min=1e-12)[:, None]
    scores = wsum / n
    order = torch.argsort(scores, descending=True)
    return (
        boxes[order].numpy().astype(np.float32),
        scores[order].numpy().astype(np.float32),
        L[centres][order].numpy().astype(np.int64),
    )
