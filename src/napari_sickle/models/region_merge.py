"""Region merge of detections: one box per connected region of cell pixels.

The paper's ground truth is one box per *connected region* of cell pixels, so a touching
group of cells is one box. ``config["region_merge"]`` of a detector checkpoint (off by
default) replaces every detection by the bounding box of the region it sits on
(:func:`merge_into_regions`, cell pixels from :func:`background_deviation_mask`).
"""

from __future__ import annotations

import numpy as np

#: Defaults of the "foreground" region merge (``config["region_merge"]``); see :func:`merge_into_regions`.
REGION_MERGE_DEFAULTS = {
    "method": "foreground",
    "delta": 6.0,
    "close": 0,
    "open": 1,
    "bg_window": 120,
    "max_growth": 16.0,
}


def background_deviation_mask(
    gray: np.ndarray, delta: float = 6.0, close: int = 0, open: int = 1, bg_window: int = 120
) -> np.ndarray:
    """Cell pixels of a brightfield image: pixels that differ from the local background by more
    than ``delta`` gray levels (0-255) either way (dark rims and bright halos both count), closed
    by ``close`` px, holes filled (pale cell centres), then opened by ``open`` px (noise).

    The background is the median of the gray image over ``bg_window`` px windows (computed on an
    8x subsampled image and interpolated back)."""
    from scipy import ndimage as ndi

    g = np.asarray(gray, dtype=np.float32)
    if g.ndim == 3:
        g = g.mean(axis=2)
    h, w = g.shape
    step = 8 if min(h, w) >= 64 else 1
    small = g[::step, ::step]
    bg_small = ndi.median_filter(small, size=max(3, int(bg_window) // step), mode="reflect")
    bg = ndi.zoom(bg_small, (h / bg_small.shape[0], w / bg_small.shape[1]), order=1)[:h, :w]
    fg = np.abs(g - bg) > float(delta)
    if close:
        fg = ndi.binary_closing(fg, iterations=int(close))
    fg = ndi.binary_fill_holes(fg)
    if open:
        fg = ndi.binary_opening(fg, iterations=int(open))
    return fg


def merge_into_regions(boxes, scores, labels, fg, max_growth: float = 16.0):
    """One box per connected region of cell pixels (the paper's ground-truth definition).

    Each detection is assigned the connected component of ``fg`` holding most of the cell pixels
    in its box; detections on the same component become one detection whose box is the
    component's bounding box and whose score is the best of theirs (label: that detection's).
    A detection with no cell pixels in its box, or whose component box would be more than
    ``max_growth`` times its own area (a foreground that failed), is kept as it is.
    Returns (boxes, scores, labels) sorted by score."""
    from scipy import ndimage as ndi

    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    if len(boxes) == 0:
        return boxes, scores, labels
    lab, n = ndi.label(fg)
    if n == 0:
        return boxes, scores, labels
    objs = ndi.find_objects(lab)
    h, w = lab.shape
    best: dict[int, int] = {}  # component -> index of its best detection
    keep_alone = []
    for i, (x0, y0, x1, y1) in enumerate(boxes.astype(np.float64)):
        xa, ya = max(int(np.floor(x0)), 0), max(int(np.floor(y0)), 0)
        xb, yb = min(int(np.ceil(x1)), w), min(int(np.ceil(y1)), h)
        sub = lab[ya:yb, xa:xb]
        ids, counts = np.unique(sub[sub > 0], return_counts=True)
        if len(ids) == 0:
            keep_alone.append(i)
            continue
        k = int(ids[np.argmax(counts)])
        sl = objs[k - 1]
        comp_area = (sl[0].stop - sl[0].start) * (sl[1].stop - sl[1].start)
        if comp_area > max_growth * max((x1 - x0) * (y1 - y0), 1.0):
            keep_alone.append(i)
            continue
        if k not in best or scores[i] > scores[best[k]]:
            best[k] = i
    ks = list(best)
    mb = np.array(
        [[objs[k - 1][1].start, objs[k - 1][0].start, objs[k - 1][1].stop, objs[k - 1][0].stop] for k in ks],
        dtype=np.float32,
    ).reshape(-1, 4)
    out_b = np.concatenate([mb, boxes[keep_alone]])
    out_s = np.concatenate([scores[[best[k] for k in ks]], scores[keep_alone]]).astype(np.float32)
    out_l = np.concatenate([labels[[best[k] for k in ks]], labels[keep_alone]]).astype(np.int64)
    order = np.argsort(-out_s, kind="stable")
    return out_b[order], out_s[order], out_l[order]


def apply_region_merge(image_gray, boxes, scores, labels, setting):
    """Apply ``config["region_merge"]`` (None/False: nothing) to one image's detections."""
    if not setting:
        return boxes, scores, labels
    cfg = {**REGION_MERGE_DEFAULTS, **(setting if isinstance(setting, dict) else {})}
    if cfg["method"] != "foreground":
        raise ValueError(f"Unknown region_merge method {cfg['method']!r}; expected 'foreground'.")
    fg = background_deviation_mask(image_gray, cfg["delta"], cfg["close"], cfg["open"], cfg["bg_window"])
    return merge_into_regions(boxes, scores, labels, fg, cfg["max_growth"])
