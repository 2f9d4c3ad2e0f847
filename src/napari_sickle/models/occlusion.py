"""Occlusion rule of the per-cell classifier: a half-hidden round cell is not a sickle cell.

A cell partly hidden by a neighbour shows a crescent-like visible part: its own outline plus
the neighbour's outline. Classified as it is, a hidden disc reads as Elongated/Sickle. With
``occlusion="ellipse-min"`` (a classifier's ``config``) each cell of a multi-cell region that
borders another cell is also classified *completed*: an ellipse is fitted to the cell's own
outline (the part not shared with a neighbour), the ellipse's pixels that lie on neighbouring
cells are given to the cell and painted in the cell's median colour. The cell's
Elongated/Sickle probability is the smaller of the two readings, every other type is read
from the visible cell: a cell is called elongated only when its completed shape is elongated
too. Measured in docs/models.md (``rbc-real-v4``, whose networks ``rbc-real-v6`` ships). No Qt/napari imports here.
"""

from __future__ import annotations

import numpy as np

#: ``config["occlusion"]`` values: ``"none"`` (classify the visible part only) or the rule above
OCCLUSION_RULES = ("none", "ellipse-min")
#: the type (Elongated/Sickle) read as the smaller of the visible and the completed cell's probabilities
SHAPE_TYPE = "elongated_sickle"
#: a cell is completed only when at least this share of its outline touches another cell
MIN_SHARED = 0.1
#: ... and at least this many outline pixels are its own (the ellipse is fitted to them)
MIN_OWN_EDGE = 15


def check_rule(rule) -> str:
    """``rule`` as a valid occlusion rule name (None -> ``"none"``), else ValueError."""
    rule = "none" if rule is None else str(rule)
    if rule not in OCCLUSION_RULES:
        raise ValueError(f"unknown occlusion rule {rule!r}; expected one of {OCCLUSION_RULES}")
    return rule


def _window(mask: np.ndarray, pad: int):
    """Slices of ``mask``'s box grown by ``pad`` px, clipped to the array."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        slice(max(int(ys.min()) - pad, 0), min(int(ys.max()) + 1 + pad, h)),
        slice(max(int(xs.min()) - pad, 0), min(int(xs.max()) + 1 + pad, w)),
    )


def hidden_part(labels: np.ndarray, c: int):
    """``(rows, cols)`` of the pixels of other cells that cell ``c`` of ``labels`` would cover
    if it were the ellipse fitted to its own outline; None when the cell touches no other
    cell, shares too little of its outline, or no plausible ellipse fits (area 0.8-2.2x the
    visible part, holding at least 85% of it). The outline is found on the cell's box only."""
    from scipy import ndimage as ndi
    from skimage.draw import ellipse
    from skimage.measure import EllipseModel

    own_full = labels == c
    n_own = int(own_full.sum())
    if n_own < 30:
        return None
    win = _window(own_full, 4)
    lab = labels[win]
    own = lab == c
    others = (lab > 0) & ~own
    if not others.any():
        return None
    edge = own & ~ndi.binary_erosion(own)
    near = ndi.binary_dilation(others, iterations=2)
    natural = edge & ~near
    if (edge & near).sum() < MIN_SHARED * edge.sum() or natural.sum() < MIN_OWN_EDGE:
        return None
    ys, xs = np.nonzero(natural)
    model = EllipseModel.from_estimate(np.column_stack([xs + win[1].start, ys + win[0].start]).astype(float))
    if not model:
        return None
    (xc, yc), (a, b), theta = model.center, model.axis_lengths, model.theta
    area = np.pi * a * b
    if not np.isfinite(area) or area > n_own / 0.45 or area < n_own * 0.8:
        return None
    for r_row, r_col in ((a, b), (b, a)):  # the axis order of the fit and of skimage.draw differ by case
        rr, cc = ellipse(yc, xc, r_row, r_col, shape=labels.shape, rotation=theta)
        if own_full[rr, cc].sum() >= 0.85 * n_own:
            on = labels[rr, cc]
            keep = (on > 0) & (on != c)
            return rr[keep], cc[keep]
    return None


def completed(labels: np.ndarray, c: int, region: np.ndarray, reach: int = 0):
    """Cell ``c`` completed: its :func:`hidden_part` labelled ``c`` and painted in the median
    colour of the cell's inner pixels, on the window of the completed cell grown by ``reach``
    px: ``(labels, region, (row slice, col slice))``, or None when it is not completed."""
    from scipy import ndimage as ndi

    add = hidden_part(labels, c)
    if add is None or len(add[0]) == 0:
        return None
    own = labels == c
    full = own.copy()
    full[add] = True
    win = _window(full, reach + 2)
    inner = ndi.binary_erosion(own[win], iterations=2)
    if inner.sum() < 10:
        inner = own[win]
    lab = np.array(labels[win], copy=True)
    reg = np.array(region[win], dtype=np.float32, copy=True)
    local = (add[0] - win[0].start, add[1] - win[1].start)
    lab[local] = c
    reg[local] = np.median(reg[inner], axis=0)
    return lab, reg, win


def apply_rule(probs: np.ndarray, owner: np.ndarray, types) -> tuple[np.ndarray, np.ndarray]:
    """Fold the completed cells' rows into their visible cells' rows: ``owner[i] < 0`` marks
    row ``i`` as the completed reading of row ``-owner[i] - 1``. Returns the visible rows with
    :data:`SHAPE_TYPE` the smaller of both readings, and their owners."""
    probs = np.asarray(probs)
    owner = np.asarray(owner, np.int64)
    extra = owner < 0
    if not extra.any():
        return probs, owner
    out = probs.copy()
    j = list(types).index(SHAPE_TYPE)
    partner = -owner[extra] - 1
    np.minimum.at(out[:, j], partner, probs[extra, j])
    keep = ~extra
    return out[keep], owner[keep]
