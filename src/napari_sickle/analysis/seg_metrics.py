"""Segmentation metrics: foreground Dice/IoU, instance F1 at IoU 0.5, counts, merges, splits.

Definitions (``pred`` and ``gt`` are instance label images, 0 = background; a binary mask
is turned into instances by 4-connected components):

- ``dice`` = 2|P∩G| / (|P|+|G|) and ``iou`` = |P∩G| / |P∪G| on the foreground (label > 0).
  Both are 1.0 when both images are empty.
- ``instance_f1_50``: predictions and true cells are matched one-to-one by maximum total IoU
  (``scipy.optimize.linear_sum_assignment`` on the IoU matrix); a match counts when IoU >= 0.5.
  F1 = 2·TP / (n_pred + n_true).
- ``count_pred``, ``count_true``, ``count_error`` = |count_pred - count_true|.
- **merge**: one prediction that covers two or more true cells, a true cell being covered when
  at least half of its pixels lie in that prediction. ``merges`` counts such predictions,
  ``merged_cells`` the true cells they swallow.
- **split**: one true cell covered by two or more predictions, each of which lies at least
  half inside that cell and covers at least 10 % of it. ``splits`` counts such true cells.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..instances import relabel, remove_small


def as_instances(mask_or_labels: np.ndarray, min_size: int = 0) -> np.ndarray:
    """int32 instance labels. Binary input (bool, or two values) -> 4-connected components."""
    from skimage.measure import label

    a = np.asarray(mask_or_labels)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D mask or label image, got shape {a.shape}")
    if a.dtype == bool or np.unique(a).size <= 2:
        lab = label(a > 0, connectivity=1)
    else:
        if np.issubdtype(a.dtype, np.floating):
            a = np.rint(a)
        lab = a.astype(np.int64)
        lab[lab < 0] = 0
    if min_size > 0 and lab.max() > 0:
        lab = remove_small(lab, min_size)
    return relabel(lab)


def _overlaps(pred: np.ndarray, gt: np.ndarray):
    """Contingency table (n_gt+1, n_pred+1) of pixel overlaps, and object areas."""
    n_p = int(pred.max()) if pred.size else 0
    n_g = int(gt.max()) if gt.size else 0
    idx = gt.astype(np.int64).ravel() * (n_p + 1) + pred.astype(np.int64).ravel()
    table = np.bincount(idx, minlength=(n_g + 1) * (n_p + 1)).reshape(n_g + 1, n_p + 1)
    return table, table.sum(axis=0), table.sum(axis=1)


@dataclass
class SegmentationMetrics:
    dice: float
    iou: float
    instance_f1_50: float
    precision_50: float
    recall_50: float
    count_pred: int
    count_true: int
    count_error: int
    merges: int
    merged_cells: int
    splits: int
    merged_ids: list = field(default_factory=list)  # prediction ids that are merges
    split_ids: list = field(default_factory=list)  # true-cell ids that are split

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("merged_ids")
        d.pop("split_ids")
        return d


def foreground_dice_iou(pred_fg: np.ndarray, gt_fg: np.ndarray) -> tuple[float, float]:
    p = np.asarray(pred_fg) > 0
    g = np.asarray(gt_fg) > 0
    inter = np.logical_and(p, g).sum()
    s = p.sum() + g.sum()
    union = s - inter
    dice = 1.0 if s == 0 else 2.0 * inter / s
    iou = 1.0 if union == 0 else inter / union
    return float(dice), float(iou)


def segmentation_metrics(pred: np.ndarray, gt: np.ndarray, iou_threshold: float = 0.5) -> SegmentationMetrics:
    """All metrics of ``pred`` (instance labels or mask) against ``gt`` (instance labels or mask)."""
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.shape != gt.shape:
        raise ValueError(
            f"prediction shape {pred.shape} and ground truth shape {gt.shape} differ; "
            "the ground truth must have the image's height and width"
        )
    pred = as_instances(pred)
    gt = as_instances(gt)
    dice, iou = foreground_dice_iou(pred, gt)
    table, area_p, area_g = _overlaps(pred, gt)
    inter = table[1:, 1:].astype(float)  # (n_g, n_p)
    n_g, n_p = inter.shape
    tp = 0
    if n_g and n_p:
        union = area_g[1:, None] + area_p[None, 1:] - inter
        ious = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        rows, cols = linear_sum_assignment(-ious)
        tp = int((ious[rows, cols] >= iou_threshold).sum())
    f1 = 1.0 if n_g + n_p == 0 else 2.0 * tp / (n_g + n_p)
    precision = (tp / n_p) if n_p else (1.0 if n_g == 0 else 0.0)
    recall = (tp / n_g) if n_g else (1.0 if n_p == 0 else 0.0)

    merged_ids: list[int] = []
    merged_cells = 0
    split_ids: list[int] = []
    if n_g and n_p:
        frac_of_gt = inter / np.maximum(area_g[1:, None], 1)  # share of each true cell in each pred
        frac_of_pred = inter / np.maximum(area_p[None, 1:], 1)
        covered = frac_of_gt >= 0.5
        per_pred = covered.sum(axis=0)
        merged = np.flatnonzero(per_pred >= 2)
        merged_ids = [int(i) + 1 for i in merged]
        merged_cells = int(per_pred[merged].sum())
        pieces = (frac_of_pred >= 0.5) & (frac_of_gt >= 0.1)
        split_ids = [int(i) + 1 for i in np.flatnonzero(pieces.sum(axis=1) >= 2)]
    return SegmentationMetrics(
        dice=dice,
        iou=iou,
        instance_f1_50=float(f1),
        precision_50=float(precision),
        recall_50=float(recall),
        count_pred=n_p,
        count_true=n_g,
        count_error=abs(n_p - n_g),
        merges=len(merged_ids),
        merged_cells=merged_cells,
        splits=len(split_ids),
        merged_ids=merged_ids,
        split_ids=split_ids,
    )


def merged_mask(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Label image holding only the predictions that merge two or more true cells."""
    pred_i = as_instances(pred)
    m = segmentation_metrics(pred_i, gt)
    out = np.where(np.isin(pred_i, m.merged_ids), pred_i, 0).astype(np.int32)
    return out
