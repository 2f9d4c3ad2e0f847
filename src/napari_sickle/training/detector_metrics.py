"""Scores of the region detector: Pascal VOC AP50 and per-source scores on real smears."""

from __future__ import annotations

import numpy as np


def average_precision(dets: list[tuple[np.ndarray, np.ndarray]], gts: list[np.ndarray], iou_threshold: float = 0.5):
    """Pascal VOC all-point AP for one class.

    dets: per image (boxes (n,4), scores (n,)); gts: per image boxes (m,4) (x_min, y_min,
    x_max, y_max). Detections of all images are ranked by score; each is a true positive if it
    overlaps a not-yet-matched ground-truth box of its image with IoU >= ``iou_threshold``
    (the best-overlapping one), else a false positive. AP is the area under the precision
    envelope (precision made monotone) over recall. Returns (ap, n_gt); AP is None if n_gt == 0.
    """
    n_gt = int(sum(len(g) for g in gts))
    recs = []
    for i, (b, s) in enumerate(dets):
        for j in range(len(s)):
            recs.append((float(s[j]), i, j))
    if n_gt == 0:
        return None, 0
    if not recs:
        return 0.0, n_gt
    recs.sort(key=lambda r: -r[0])
    matched = [np.zeros(len(g), bool) for g in gts]
    tp = np.zeros(len(recs))
    for k, (_, i, j) in enumerate(recs):
        g = np.asarray(gts[i], dtype=np.float64).reshape(-1, 4)
        if len(g) == 0:
            continue
        ious = _iou_one(np.asarray(dets[i][0][j], dtype=np.float64), g)
        ious[matched[i]] = -1
        m = int(np.argmax(ious))
        if ious[m] >= iou_threshold:
            matched[i][m] = True
            tp[k] = 1
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-12)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1])), n_gt


def _iou_one(box, boxes):
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    a = (box[2] - box[0]) * (box[3] - box[1])
    b = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(a + b - inter, 1e-12)


def ap50(predictions, targets, class_names) -> dict:
    """AP50 per class and their mean.

    predictions: per image (boxes, scores, labels 1-based); targets: per image (boxes, labels
    1-based). Returns {"ap50", "ap50_per_class", "n_images"}."""
    per = {}
    for c, name in enumerate(class_names, start=1):
        dets = [(np.asarray(b)[np.asarray(lab) == c], np.asarray(s)[np.asarray(lab) == c]) for b, s, lab in predictions]
        gts = [np.asarray(b).reshape(-1, 4)[np.asarray(lab) == c] for b, lab in targets]
        ap, n_gt = average_precision(dets, gts, 0.5)
        if ap is not None:
            per[name] = ap
    return {
        "ap50": float(np.mean(list(per.values()))) if per else None,
        "ap50_per_class": per,
        "n_images": int(len(targets)),
    }


def score_real(preds, items, score_threshold: float = 0.5) -> dict:
    """Per-source scores of detections on ``data.real_smears`` items: AP50 (all detections,
    Pascal VOC), recall and precision at IoU 0.5 of the boxes scoring >= ``score_threshold``,
    and for items with point labels (Chula) the share of points inside such a box.
    ``aim``: the figure the source is judged by (points inside for point-labelled sources, else
    AP50). Two checks on the labels themselves (BCCD leaves many red cells unboxed):
    ``n_images_without_boxes`` and ``ap50_images_with_boxes`` (AP50 over the images with at
    least one annotated box), and ``kept_touching_no_box``, the share of kept boxes that overlap
    no annotated box at all (an unannotated cell, or a box on no cell)."""
    from ..data.real_smears import points_inside

    out = {}
    for src in dict.fromkeys(it["source"] for it in items):
        idx = [i for i, it in enumerate(items) if it["source"] == src]
        p = [preds[i] for i in idx]
        gts = [items[i]["boxes"] for i in idx]
        ap, n_gt = average_precision([(b, sc) for b, sc, _ in p], gts, 0.5)
        boxed = [k for k, g in enumerate(gts) if len(np.asarray(g).reshape(-1, 4))]
        ap_boxed, _ = average_precision([(p[k][0], p[k][1]) for k in boxed], [gts[k] for k in boxed], 0.5)
        tp = fn = n_det = alone = 0
        pin, n_pts = 0, 0
        for (b, sc, _), it in zip(p, (items[i] for i in idx)):
            kb = np.asarray(b).reshape(-1, 4)[np.asarray(sc) >= score_threshold]
            n_det += len(kb)
            g = np.asarray(it["boxes"], dtype=np.float64).reshape(-1, 4)
            if len(g) and len(kb):
                iou = np.stack([_iou_one(np.asarray(x, np.float64), g) for x in kb])
                found = iou.max(axis=0) >= 0.5
                tp += int(found.sum())
                fn += int((~found).sum())
                alone += int((iou.max(axis=1) <= 0).sum())
            else:
                fn += len(g)
                alone += len(kb)
            if it.get("points") is not None:
                pin += int(points_inside(kb, it["points"]).sum())
                n_pts += len(it["points"])
        rec = {"n_images": len(idx), "n_boxes": n_gt, "ap50": ap, "recall": tp / max(tp + fn, 1), "n_detections": n_det}
        rec["n_images_without_boxes"] = len(idx) - len(boxed)
        rec["ap50_images_with_boxes"] = ap_boxed
        rec["kept_touching_no_box"] = alone / max(n_det, 1)
        if n_pts:
            rec["points_inside"] = pin / n_pts
            rec["n_points"] = n_pts
        rec["aim"] = rec.get("points_inside", ap if ap is not None else 0.0)
        out[src] = rec
    return out
